//! Interface configuration by ioctl on an `AF_INET` socket (`SIOCSIFADDR`,
//! `SIOCSIFNETMASK`, `SIOCSIFHWADDR`, `SIOCSIFFLAGS`), so no `ip` binary is needed. The
//! socket is opened by the calling thread, so these act on the network namespace that
//! thread is in.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `IFNAMSIZ`: interface names are at most 15 bytes plus the NUL.
pub(crate) const IFNAMSIZ: usize = 16;

/// `struct ifreq`: the name, then a 24-byte union (sockaddr, flags, MTU, ...).
#[repr(C, align(8))]
pub(crate) struct IfReq {
    pub(crate) name: [u8; IFNAMSIZ],
    pub(crate) data: [u8; 24],
}

impl IfReq {
    /// An `ifreq` for interface `name` with a zeroed union; `InvalidInput` if the name does
    /// not fit or contains a NUL.
    pub(crate) fn new(name: &str) -> io::Result<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} must be 1..=15 bytes without NUL"),
            ));
        }
        let mut req = Self {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        if let Some(dst) = req.name.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        Ok(req)
    }

    /// The interface name the kernel wrote back (up to the first NUL).
    pub(crate) fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(self.name.get(..end).unwrap_or(&[])).into_owned()
    }

    /// Writes a `short` (flags) at the start of the union.
    pub(crate) fn set_short(&mut self, v: i16) {
        let b = v.to_ne_bytes();
        self.data[0] = b[0];
        self.data[1] = b[1];
    }

    /// Reads the `short` at the start of the union.
    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    /// Writes a `struct sockaddr_in` for `addr` (port 0) into the union.
    fn set_sockaddr_in(&mut self, addr: Ipv4Addr) {
        self.data = [0; 24];
        let family = (libc::AF_INET as u16).to_ne_bytes();
        self.data[0] = family[0];
        self.data[1] = family[1];
        self.data[4..8].copy_from_slice(&addr.octets());
    }

    /// Writes a `struct sockaddr` of family `ARPHRD_ETHER` holding `mac` into the union.
    fn set_hwaddr(&mut self, mac: [u8; 6]) {
        self.data = [0; 24];
        let family = libc::ARPHRD_ETHER.to_ne_bytes();
        self.data[0] = family[0];
        self.data[1] = family[1];
        self.data[2..8].copy_from_slice(&mac);
    }
}

/// A datagram socket in the calling thread's network namespace, for interface ioctls.
fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments; the result is checked before
    // it is wrapped, and the new descriptor is owned by nobody else.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issues interface ioctl `req` with `ifr` on `sock`.
fn ioctl(sock: &OwnedFd, req: libc::Ioctl, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: every SIOC[GS]IF* request used here reads/writes one `struct ifreq`, and
    // `ifr` is a live, properly sized and aligned `IfReq` (40 bytes, 8-aligned, as the C
    // struct); the return value is checked.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), req, ifr as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `IFF_UP` (and keeps the other flags) on interface `name`.
pub(crate) fn set_up(name: &str) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS as libc::Ioctl, &mut ifr)?;
    let flags = ifr.short() | libc::IFF_UP as i16;
    ifr.set_short(flags);
    ioctl(&sock, libc::SIOCSIFFLAGS as libc::Ioctl, &mut ifr)
}

/// Gives interface `name` the address `addr/prefix_len`.
pub(crate) fn set_ipv4(name: &str, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    if prefix_len == 0 || prefix_len > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("prefix length /{prefix_len} must be 1..=32"),
        ));
    }
    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix_len)));
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifr.set_sockaddr_in(addr);
    ioctl(&sock, libc::SIOCSIFADDR as libc::Ioctl, &mut ifr)?;
    let mut ifr = IfReq::new(name)?;
    ifr.set_sockaddr_in(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK as libc::Ioctl, &mut ifr)
}

/// Sets the MAC address of interface `name`.
pub(crate) fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ifr.set_hwaddr(mac);
    ioctl(&sock, libc::SIOCSIFHWADDR as libc::Ioctl, &mut ifr)
}

/// `SIOCBRADDBR` (linux/sockios.h): create a bridge; the argument is its name.
const SIOCBRADDBR: libc::Ioctl = 0x89a0;
/// `SIOCBRADDIF`: enslave the interface `ifr_ifindex` to the bridge `ifr_name`.
const SIOCBRADDIF: libc::Ioctl = 0x89a2;

/// The index of interface `name`.
pub(crate) fn ifindex(name: &str) -> io::Result<i32> {
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(name)?;
    ioctl(&sock, libc::SIOCGIFINDEX as libc::Ioctl, &mut ifr)?;
    Ok(i32::from_ne_bytes([
        ifr.data[0],
        ifr.data[1],
        ifr.data[2],
        ifr.data[3],
    ]))
}

/// Creates the bridge `name` (down, no ports, STP off: ports forward at once).
pub(crate) fn add_bridge(name: &str) -> io::Result<()> {
    let sock = ctl_socket()?;
    // `IfReq::new` checks the length and NULs; its name field is NUL-terminated.
    let ifr = IfReq::new(name)?;
    // SAFETY: SIOCBRADDBR reads one NUL-terminated name of at most IFNAMSIZ bytes from the
    // pointer; `ifr.name` is such a buffer and lives across the call. The result is checked.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR, ifr.name.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes interface `port` a port of the bridge `bridge`.
pub(crate) fn bridge_add_port(bridge: &str, port: &str) -> io::Result<()> {
    let index = ifindex(port)?;
    let sock = ctl_socket()?;
    let mut ifr = IfReq::new(bridge)?;
    ifr.data[..4].copy_from_slice(&index.to_ne_bytes());
    ioctl(&sock, SIOCBRADDIF, &mut ifr)
}
