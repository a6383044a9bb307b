//! An ICMP echo client over a raw IPv4 socket (feature `test-utils`): the host end of the
//! TAP tests' pings (crates/net/tests/tap.rs against the responder, tests/net.rs against the
//! guest kernel). The request is built here independently of the responder (RFC 792).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| match *w {
            [a, b] => u32::from(u16::from_be_bytes([a, b])),
            [a] => u32::from(a) << 8,
            _ => 0,
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (type 8) with `ident`, `seq` and `data`, checksummed.
pub fn echo_request(ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut p = vec![8, 0];
    let mut rest = Vec::with_capacity(4 + data.len());
    rest.extend_from_slice(&ident.to_be_bytes());
    rest.extend_from_slice(&seq.to_be_bytes());
    rest.extend_from_slice(data);
    let c = checksum(&[&p[..], &[0, 0], &rest[..]].concat());
    p.extend_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&rest);
    p
}

/// A raw ICMP socket (needs `CAP_NET_RAW`), opened in the caller's network namespace.
#[derive(Debug)]
pub struct Pinger {
    sock: OwnedFd,
}

impl Pinger {
    /// Opens the socket.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { sock })
    }

    /// Sends one echo request to `dst`.
    pub fn send(&self, dst: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) -> std::io::Result<()> {
        let req = echo_request(ident, seq, data);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sendto(2) with a live buffer and a valid sockaddr_in of the given size.
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n != req.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `wait` for the echo reply (type 0) from `from` with `ident` and `seq`;
    /// returns its data, or `None` if none came. Other packets are skipped.
    pub fn reply(
        &self,
        from: Ipv4Addr,
        ident: u16,
        seq: u16,
        wait: Duration,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let start = Instant::now();
        let mut want = [0u8; 4];
        want[..2].copy_from_slice(&ident.to_be_bytes());
        want[2..].copy_from_slice(&seq.to_be_bytes());
        while start.elapsed() < wait {
            let mut p = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one live pollfd; the result only paces the loop.
            unsafe { libc::poll(&mut p, 1, 10) };
            let mut b = [0u8; 2048];
            // SAFETY: recv(2) into a live buffer of the given length, non-blocking.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    b.as_mut_ptr().cast(),
                    b.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            if let Some(data) = b.get(..n as usize).and_then(|p| echo_reply(p, from, want)) {
                return Ok(Some(data.to_vec()));
            }
        }
        Ok(None)
    }

    /// [`Pinger::send`], then [`Pinger::reply`].
    pub fn ping(
        &self,
        dst: Ipv4Addr,
        ident: u16,
        seq: u16,
        data: &[u8],
        wait: Duration,
    ) -> std::io::Result<Option<Vec<u8>>> {
        self.send(dst, ident, seq, data)?;
        self.reply(dst, ident, seq, wait)
    }
}

/// The data of `pkt` (an IPv4 packet) if it is an echo reply from `from` whose identifier
/// and sequence are `want`.
fn echo_reply(pkt: &[u8], from: Ipv4Addr, want: [u8; 4]) -> Option<&[u8]> {
    let ihl = usize::from(pkt.first()? & 0xf) * 4;
    let icmp = pkt.get(ihl..)?;
    (pkt.get(12..16)? == from.octets() && *icmp.first()? == 0 && icmp.get(4..8)? == want)
        .then(|| icmp.get(8..))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checksums_to_zero() {
        let r = echo_request(0x7076, 3, b"odd length");
        assert_eq!(&r[..2], &[8, 0]);
        assert_eq!(&r[4..8], &[0x70, 0x76, 0, 3]);
        assert_eq!(checksum(&r), 0);
        assert_eq!(&r[8..], b"odd length");
        // RFC 1071's example words sum to 0xddf2; the checksum is its complement.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
