//! A Linux bridge inside a network namespace: the host-side switch that connects the TAP
//! devices of many guests (`pvkit fleet`), made by ioctl (`SIOCBRADDBR`, `SIOCBRADDIF`) so
//! no `ip` or `brctl` binary is needed. The bridge holds the host's address on the guests'
//! subnet; each guest's TAP device ([`crate::tap::TapConfig::bridge`]) becomes one of its
//! ports and has no address of its own. STP is off, so a new port forwards at once.

use std::io;
use std::net::Ipv4Addr;

use crate::ifconfig;
use crate::netns::{NetNs, NetNsError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The caller lacks the privilege for `op`.
    #[error("{op}: permission denied; a bridge needs root or CAP_NET_ADMIN")]
    PermissionDenied {
        /// The operation that failed.
        op: &'static str,
    },
    /// Entering the namespace failed.
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

pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> BridgeError {
    move |source| match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => BridgeError::PermissionDenied { op },
        _ => BridgeError::Io { op, source },
    }
}

/// Creates bridge `name` in `netns` with MAC address `mac` and the host address
/// `ip/prefix_len`, and brings it up. It lives as long as the namespace.
///
/// The MAC is set explicitly because a bridge without one takes the lowest MAC of its
/// ports and changes it when that port goes away: a guest that resolved the host's address
/// just before another guest's TAP device closed would then send to a MAC nobody has.
pub fn create(
    netns: &NetNs,
    name: &str,
    mac: [u8; 6],
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), BridgeError> {
    netns.run_in(|| -> Result<(), BridgeError> {
        ifconfig::add_bridge(name).map_err(os("create the bridge (SIOCBRADDBR)"))?;
        ifconfig::set_mac(name, mac).map_err(os("set the bridge's MAC address"))?;
        ifconfig::set_ipv4(name, ip, prefix_len).map_err(os("set the bridge's IPv4 address"))?;
        ifconfig::set_up(name).map_err(os("bring the bridge up"))
    })?
}

/// Makes interface `port` (in the calling thread's namespace) a port of bridge `bridge`.
pub(crate) fn add_port(bridge: &str, port: &str) -> io::Result<()> {
    ifconfig::bridge_add_port(bridge, port)
}
