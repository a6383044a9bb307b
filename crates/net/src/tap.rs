//! The TAP backend: a `/dev/net/tun` device in `IFF_TAP | IFF_NO_PI` mode, non-blocking,
//! opened inside a network namespace, with an IPv4 address on its host side. The host's own
//! Linux network stack in that namespace talks to the guest through it: frames the stack
//! sends out of the interface are [`NetBackend::recv`]'d for the guest, frames the guest
//! transmits are written to the device and arrive at the stack.
//!
//! Needs root, or `CAP_NET_ADMIN` plus `CAP_SYS_ADMIN` for the namespace; missing
//! privileges and a missing `/dev/net/tun` are reported as such ([`TapError`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::backend::{
    check_frame_len, BackendError, DropReason, NetBackend, NetCounters, TxOutcome, MAX_FRAME_LEN,
};
use crate::ifconfig::{self, IfReq};
use crate::netns::{NetNs, NetNsError};

/// The clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The interface name template used when none is given (the kernel fills in `%d`).
pub const DEFAULT_IFNAME: &str = "pvtap%d";
/// Frames [`NetBackend::recv`] reads and drops (oversize/undersize) in one call before it
/// returns `Ok(None)`, so a flood of bad frames cannot keep the caller busy forever.
pub const MAX_DROPS_PER_RECV: usize = 64;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` does not exist.
    #[error(
        "{TUN_PATH} does not exist: load the tun module (`modprobe tun`) or, in a container, \
         pass the device through (`--device /dev/net/tun`)"
    )]
    TunMissing,
    /// The caller lacks the privilege for `op`.
    #[error("{op}: permission denied; the TAP backend needs root or CAP_NET_ADMIN")]
    PermissionDenied {
        /// The operation that failed.
        op: &'static str,
    },
    /// Creating or entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetNsError),
    /// Another system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The error from the kernel.
        source: io::Error,
    },
}

fn os(op: &'static str) -> impl FnOnce(io::Error) -> TapError {
    move |source| match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { op },
        _ => TapError::Io { op, source },
    }
}

/// How to set up the host side of the TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name or template (`%d` is filled in by the kernel); at most 15 bytes.
    pub ifname: String,
    /// The host side's IPv4 address.
    pub host_ip: Ipv4Addr,
    /// Its prefix length (1..=32).
    pub prefix_len: u8,
    /// The host side's MAC address; `None` keeps the random one the kernel assigns.
    pub host_mac: Option<[u8; 6]>,
    /// A bridge in the namespace ([`crate::bridge`]) to make the device a port of; then the
    /// device gets no address (`host_ip` and `prefix_len` are not used): the bridge has it.
    pub bridge: Option<String>,
}

impl TapConfig {
    /// The default template name with `host_ip/prefix_len` and a kernel-assigned MAC.
    pub fn new(host_ip: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            ifname: DEFAULT_IFNAME.to_owned(),
            host_ip,
            prefix_len,
            host_mac: None,
            bridge: None,
        }
    }
}

/// A TAP device in a network namespace (see the module documentation).
#[derive(Debug)]
pub struct TapBackend {
    // Field order is drop order: the device closes before the namespace is deleted.
    file: File,
    ifname: String,
    netns: NetNs,
    /// Where the part of a frame beyond [`MAX_FRAME_LEN`] lands, so an oversize frame
    /// is recognised (and dropped) instead of silently truncated.
    overflow: Box<[u8]>,
    counters: NetCounters,
}

/// Room for the largest frame a TAP device can deliver (MTU up to 65535, no GSO without
/// `IFF_VNET_HDR`), beyond the caller's [`MAX_FRAME_LEN`] bytes.
const OVERFLOW_LEN: usize = 65536;

impl TapBackend {
    /// Opens a TAP device inside `netns`, gives its host side `config`'s address (and MAC),
    /// or makes it a port of `config`'s bridge, and brings it up. The backend owns `netns`: a namespace it created is deleted when
    /// the backend is dropped.
    pub fn open(netns: NetNs, config: &TapConfig) -> Result<Self, TapError> {
        if !Path::new(TUN_PATH).exists() {
            return Err(TapError::TunMissing);
        }
        let config = config.clone();
        let (file, ifname) = netns.run_in(move || -> Result<(File, String), TapError> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(TUN_PATH)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => TapError::TunMissing,
                    _ => os("open /dev/net/tun")(e),
                })?;
            let mut ifr = IfReq::new(&config.ifname).map_err(os("interface name"))?;
            ifr.set_short((libc::IFF_TAP | libc::IFF_NO_PI) as i16);
            // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a live,
            // correctly sized and aligned `IfReq`, and `file` is the open clone device.
            // The result is checked.
            let rc =
                unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr as *mut IfReq) };
            if rc < 0 {
                return Err(os("ioctl(TUNSETIFF)")(io::Error::last_os_error()));
            }
            let ifname = ifr.name();
            if let Some(mac) = config.host_mac {
                ifconfig::set_mac(&ifname, mac).map_err(os("set the TAP MAC address"))?;
            }
            match &config.bridge {
                Some(bridge) => crate::bridge::add_port(bridge, &ifname)
                    .map_err(os("add the TAP device to the bridge (SIOCBRADDIF)"))?,
                None => ifconfig::set_ipv4(&ifname, config.host_ip, config.prefix_len)
                    .map_err(os("set the TAP IPv4 address"))?,
            }
            ifconfig::set_up(&ifname).map_err(os("bring the TAP interface up"))?;
            Ok((file, ifname))
        })??;
        Ok(Self {
            file,
            ifname,
            netns,
            overflow: vec![0u8; OVERFLOW_LEN].into_boxed_slice(),
            counters: NetCounters::default(),
        })
    }

    /// The interface's name inside the namespace.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The namespace the device lives in.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    fn drop_frame(&mut self, reason: DropReason) -> TxOutcome {
        self.counters.count_drop(reason);
        TxOutcome::Dropped(reason)
    }
}

impl NetBackend for TapBackend {
    fn send(&mut self, frame: &[u8]) -> TxOutcome {
        if let Err(reason) = check_frame_len(frame.len()) {
            return self.drop_frame(reason);
        }
        match self.file.write(frame) {
            Ok(n) if n == frame.len() => {
                self.counters.count_tx(n);
                TxOutcome::Sent
            }
            Ok(_) => self.drop_frame(DropReason::BackendError),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => self.drop_frame(DropReason::QueueFull),
                _ => self.drop_frame(DropReason::BackendError),
            },
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let Some(head) = buf.get_mut(..MAX_FRAME_LEN) else {
            return Err(BackendError::BufferTooSmall { len: buf.len() });
        };
        for _ in 0..MAX_DROPS_PER_RECV {
            let iov = [
                libc::iovec {
                    iov_base: head.as_mut_ptr().cast(),
                    iov_len: head.len(),
                },
                libc::iovec {
                    iov_base: self.overflow.as_mut_ptr().cast(),
                    iov_len: self.overflow.len(),
                },
            ];
            // SAFETY: readv(2) into two live, writable buffers whose lengths are given
            // exactly; the kernel writes at most that many bytes. The result is checked.
            let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), 2) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(None),
                    Some(libc::EINTR) => continue,
                    _ => Err(BackendError::Io(e)),
                };
            }
            let n = n as usize;
            match check_frame_len(n) {
                Ok(()) => {
                    self.counters.count_rx(n);
                    return Ok(Some(n));
                }
                Err(reason) => self.counters.count_drop(reason),
            }
        }
        Ok(None)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn counters(&self) -> NetCounters {
        self.counters
    }
}
