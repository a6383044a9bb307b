//! The fleet's network: a network namespace `pvkit-fleet-<pid>` that pvkit creates (and
//! deletes at the end) holding the bridge [`BRIDGE`] with the host's address
//! [`HOST_IP`]/16; each guest's TAP device becomes a port of it. Guest `k` (1-based) gets
//! [`guest_ip`]`(k)` on its command line and [`guest_mac`]`(k)` on its NIC, so up to
//! [`MAX_VMS`] guests share one subnet.
//!
//! The host takes part in the ring ([`crate::fleet`]): it starts the message at member 1
//! and receives it back from the last member on [`RING_PORT`] of a UDP socket bound inside
//! the namespace.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use pvkit_net::netns::{NetNs, NetNsError};

/// The bridge's name inside the namespace.
pub const BRIDGE: &str = "pvbr0";
/// The bridge's MAC address (outside the guests' `52:54:00:88:00:01`..`03:e8`).
pub const BRIDGE_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x88, 0xff, 0xfe];
/// The host's address on the bridge.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The subnet's prefix length.
pub const PREFIX_LEN: u8 = 16;
/// Most guests one fleet connects.
pub const MAX_VMS: u32 = 1000;
/// The UDP port of the ring (the guest kernel's `net::proto::RING_PORT`).
pub const RING_PORT: u16 = 7100;
/// The source port of datagrams a guest sends (`net::proto::CLIENT_PORT`).
pub const GUEST_PORT: u16 = 40000;
/// The payload length of a ring message.
pub const RING_MSG_LEN: usize = 16;
/// The magic at the start of a ring message.
pub const RING_MAGIC: [u8; 4] = *b"PVRG";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace could not be created or entered.
    #[error("cannot set up the fleet's network namespace: {0}")]
    Netns(#[from] NetNsError),
    /// The bridge could not be made.
    #[error("cannot set up the fleet's bridge: {0}")]
    Bridge(#[from] pvkit_net::bridge::BridgeError),
    /// The host's ring socket failed.
    #[error("the host's ring socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Guest `k`'s address: `10.88.0.(10 + k)` and on into `10.88.1.x` …
pub fn guest_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 88, 0, 10)) + k)
}

/// Guest `k`'s MAC address: `52:54:00:88:HH:LL` with `k` in the last two bytes.
pub fn guest_mac(k: u32) -> String {
    format!("52:54:00:88:{:02x}:{:02x}", (k >> 8) & 0xff, k & 0xff)
}

/// A ring message: members passed and the sum of their ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    /// Members passed.
    pub hops: u32,
    /// Sum of their ids.
    pub sum: u64,
}

impl Token {
    /// The payload.
    pub fn encode(&self) -> [u8; RING_MSG_LEN] {
        let mut b = [0u8; RING_MSG_LEN];
        b[..4].copy_from_slice(&RING_MAGIC);
        b[4..8].copy_from_slice(&self.hops.to_be_bytes());
        b[8..].copy_from_slice(&self.sum.to_be_bytes());
        b
    }

    /// Decodes a payload: exactly [`RING_MSG_LEN`] bytes with the magic.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != RING_MSG_LEN || b[..4] != RING_MAGIC {
            return None;
        }
        Some(Self {
            hops: u32::from_be_bytes(b[4..8].try_into().ok()?),
            sum: u64::from_be_bytes(b[8..16].try_into().ok()?),
        })
    }
}

/// The namespace with its bridge and the host's ring socket; dropping it deletes the
/// namespace (the guests' TAP devices go with their processes).
#[derive(Debug)]
pub struct FleetNet {
    // Field order is drop order: the socket closes before the namespace goes.
    socket: UdpSocket,
    ns: NetNs,
}

impl FleetNet {
    /// Creates the namespace `pvkit-fleet-<pid>`, its bridge and the host's socket.
    pub fn create() -> Result<Self, NetworkError> {
        let ns = NetNs::create(&format!("pvkit-fleet-{}", std::process::id()))?;
        pvkit_net::bridge::create(&ns, BRIDGE, BRIDGE_MAC, HOST_IP, PREFIX_LEN)?;
        let socket = ns.run_in(|| UdpSocket::bind(SocketAddrV4::new(HOST_IP, RING_PORT)))??;
        Ok(Self { socket, ns })
    }

    /// The namespace's name (for `pvkit run --netns`).
    pub fn netns_name(&self) -> &str {
        self.ns.name().unwrap_or_default()
    }

    /// Sends the ring's first message (`hops = 0, sum = 0`) to member 1.
    pub fn start_ring(&self) -> Result<(), NetworkError> {
        let start = Token { hops: 0, sum: 0 };
        self.socket
            .send_to(&start.encode(), SocketAddrV4::new(guest_ip(1), RING_PORT))?;
        Ok(())
    }

    /// Waits up to `wait` for the ring's message to come back from member `last`;
    /// datagrams from elsewhere or without the magic are ignored. `Ok(None)`: none came.
    pub fn ring_result(&self, last: u32, wait: Duration) -> Result<Option<Token>, NetworkError> {
        let deadline = std::time::Instant::now() + wait;
        let from = SocketAddr::V4(SocketAddrV4::new(guest_ip(last), GUEST_PORT));
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, src)) if src == from => {
                    if let Some(t) = buf.get(..n).and_then(Token::decode) {
                        return Ok(Some(t));
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if pvkit_vmm::runtime::signals::pending().is_some() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_on_the_subnet() {
        assert_eq!(guest_ip(1), Ipv4Addr::new(10, 88, 0, 11));
        assert_eq!(guest_ip(300), Ipv4Addr::new(10, 88, 1, 54));
        assert_eq!(guest_ip(MAX_VMS).octets()[..2], [10, 88]);
        assert_eq!(guest_mac(1), "52:54:00:88:00:01");
        assert_eq!(guest_mac(258), "52:54:00:88:01:02");
    }

    #[test]
    fn tokens_round_trip_and_need_the_magic() {
        let t = Token { hops: 3, sum: 6 };
        assert_eq!(Token::decode(&t.encode()), Some(t));
        let mut bad = t.encode();
        bad[0] = b'X';
        assert_eq!(Token::decode(&bad), None);
        assert_eq!(Token::decode(&t.encode()[..15]), None);
    }
}
