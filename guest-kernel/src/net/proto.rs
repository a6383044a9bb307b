//! A minimal IPv4 peer on Ethernet: answers ARP requests for its address, ICMP echo
//! requests and UDP datagrams to the echo port (all in place: the request buffer becomes
//! the reply), learns the peer's MAC from its ARP reply, counts the UDP echoes the peer
//! sends back, and builds the ARP request and UDP datagrams the client modes send.
//!
//! Checks: lengths, EtherType, IPv4 version and a 20-byte header, our address, no
//! fragments. Checksums are not verified (a few thousand interpreted instructions per frame
//! on kvm_pvm); replies keep them valid without recomputing: swapping addresses and ports
//! leaves the IPv4 and UDP sums unchanged, and the ICMP type change is an incremental
//! update (RFC 1624). Datagrams the guest originates carry UDP checksum 0 ("none", IPv4).

/// UDP port echoed by `net=serve` (RFC 862).
pub const ECHO_PORT: u16 = 7;
/// UDP discard port (RFC 863): `net=send` targets it, nobody answers.
pub const DISCARD_PORT: u16 = 9;
/// A datagram to this UDP port ends `net=serve`.
pub const CONTROL_PORT: u16 = 9999;
/// The loopback peer's port for round trips it originates (`pvkit_net::host_rtt`): a
/// start datagram goes there.
pub const HOST_RTT_PORT: u16 = 7200;
/// First bytes of a start datagram to [`HOST_RTT_PORT`] (then case id `u64` LE, requests
/// `u32` LE, request payload length `u16` LE).
pub const HOST_RTT_MAGIC: [u8; 4] = *b"RTT1";
/// Payload length of a start datagram.
pub const HOST_RTT_START_LEN: usize = 18;
/// The source port of the datagrams the guest sends.
pub const CLIENT_PORT: u16 = 40000;
/// The UDP port of `net=ring` ([`super::ring`]): datagrams of exactly [`RING_MSG_LEN`]
/// payload bytes to it are kept (the last one) for the ring to read.
pub const RING_PORT: u16 = 7100;
/// The payload length of a ring message.
pub const RING_MSG_LEN: usize = 16;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;
const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const PROTO_ICMP: u8 = 1;
const PROTO_UDP: u8 = 17;
/// Offsets in the frame.
const IP: usize = ETH_HLEN;
const L4: usize = ETH_HLEN + IP_HLEN;
/// Largest UDP payload in one 1514-byte frame.
pub const MAX_UDP_PAYLOAD: usize = 1514 - L4 - UDP_HLEN;
/// Offset of the UDP payload in a frame built by [`Proto::udp_datagram`].
pub const UDP_PAYLOAD: usize = L4 + UDP_HLEN;

/// What the peer counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// ARP requests answered.
    pub arp: u64,
    /// ICMP echo requests answered.
    pub icmp: u64,
    /// UDP datagrams echoed.
    pub udp: u64,
    /// UDP echoes received from the peer (client modes).
    pub echoes: u64,
    /// Frames that got no reply (echoes and ARP replies included).
    pub no_reply: u64,
}

/// The peer's state.
#[derive(Debug)]
pub struct Proto {
    /// Our MAC.
    pub mac: [u8; 6],
    /// Our IPv4 address.
    pub ip: [u8; 4],
    /// The peer's IPv4 address (client modes).
    pub peer_ip: [u8; 4],
    /// The peer's MAC, once its ARP reply came.
    pub peer_mac: Option<[u8; 6]>,
    /// A datagram to [`CONTROL_PORT`] arrived.
    pub done: bool,
    /// The payload of the last datagram to [`RING_PORT`] not yet taken.
    pub ring_msg: Option<[u8; RING_MSG_LEN]>,
    /// Counters.
    pub counts: Counts,
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn swap(f: &mut [u8], a: usize, b: usize, n: usize) {
    for i in 0..n {
        f.swap(a + i, b + i);
    }
}

/// One's-complement sum of `data` (even length), folded.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 1624: checksum `hc` after a 16-bit word changed from `old` to `new`.
fn checksum_update(hc: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Proto {
    /// A peer at `mac`/`ip` talking to `peer_ip`.
    pub const fn new(mac: [u8; 6], ip: [u8; 4], peer_ip: [u8; 4]) -> Self {
        Self {
            mac,
            ip,
            peer_ip,
            peer_mac: None,
            done: false,
            ring_msg: None,
            counts: Counts {
                arp: 0,
                icmp: 0,
                udp: 0,
                echoes: 0,
                no_reply: 0,
            },
        }
    }

    /// Handles a received frame; when it asks for a reply, turns `frame` into it and
    /// returns the reply's length.
    pub fn handle(&mut self, frame: &mut [u8]) -> Option<usize> {
        let r = self.dispatch(frame);
        if r.is_none() {
            self.counts.no_reply += 1;
        }
        r
    }

    fn dispatch(&mut self, f: &mut [u8]) -> Option<usize> {
        if f.len() < ETH_HLEN {
            return None;
        }
        match be16(f, 12) {
            ETHERTYPE_ARP => self.arp(f),
            ETHERTYPE_IPV4 => self.ipv4(f),
            _ => None,
        }
    }

    fn arp(&mut self, f: &mut [u8]) -> Option<usize> {
        if f.len() < ETH_HLEN + ARP_LEN || f[14..20] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let op = be16(f, 20);
        let (sha, spa, tpa) = (22, 28, 38);
        if op == 2 {
            // A reply: learn the peer's MAC (a hit for our own request, or an update).
            if f[spa..spa + 4] == self.peer_ip {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&f[sha..sha + 6]);
                self.peer_mac = Some(mac);
            }
            return None;
        }
        if op != 1 || f[tpa..tpa + 4] != self.ip {
            return None;
        }
        // Request for us: reply in place.
        put16(f, 20, 2);
        f.copy_within(sha..sha + 10, 32); // tha, tpa <- sha, spa
        f[sha..sha + 6].copy_from_slice(&self.mac);
        f[spa..spa + 4].copy_from_slice(&self.ip);
        f.copy_within(6..12, 0);
        f[6..12].copy_from_slice(&self.mac);
        self.counts.arp += 1;
        Some(ETH_HLEN + ARP_LEN)
    }

    fn ipv4(&mut self, f: &mut [u8]) -> Option<usize> {
        if f.len() < L4 || f[IP] != 0x45 || f[IP + 16..IP + 20] != self.ip {
            return None;
        }
        let total = usize::from(be16(f, IP + 2));
        // No fragments: MF clear and offset 0.
        if total < IP_HLEN || ETH_HLEN + total > f.len() || be16(f, IP + 6) & 0x3fff != 0 {
            return None;
        }
        let len = ETH_HLEN + total;
        match f[IP + 9] {
            PROTO_ICMP if total >= IP_HLEN + 8 && f[L4] == 8 && f[L4 + 1] == 0 => {
                f[L4] = 0;
                let c = checksum_update(be16(f, L4 + 2), 0x0800, 0x0000);
                put16(f, L4 + 2, c);
                self.reflect(f, false);
                self.counts.icmp += 1;
                Some(len)
            }
            PROTO_UDP if total >= IP_HLEN + UDP_HLEN => {
                let dport = be16(f, L4 + 2);
                let sport = be16(f, L4);
                match dport {
                    ECHO_PORT => {
                        self.reflect(f, true);
                        self.counts.udp += 1;
                        Some(len)
                    }
                    CONTROL_PORT => {
                        self.done = true;
                        None
                    }
                    RING_PORT
                        if usize::from(be16(f, L4 + 4)) == UDP_HLEN + RING_MSG_LEN
                            && total >= IP_HLEN + UDP_HLEN + RING_MSG_LEN =>
                    {
                        let mut msg = [0u8; RING_MSG_LEN];
                        msg.copy_from_slice(&f[UDP_PAYLOAD..UDP_PAYLOAD + RING_MSG_LEN]);
                        self.ring_msg = Some(msg);
                        None
                    }
                    CLIENT_PORT if sport == ECHO_PORT && f[IP + 12..IP + 16] == self.peer_ip => {
                        self.counts.echoes += 1;
                        None
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Swaps MACs and IPv4 addresses (and UDP ports): the frame goes back where it came
    /// from. No checksum changes.
    fn reflect(&self, f: &mut [u8], ports: bool) {
        f.copy_within(6..12, 0);
        f[6..12].copy_from_slice(&self.mac);
        swap(f, IP + 12, IP + 16, 4);
        if ports {
            swap(f, L4, L4 + 2, 2);
        }
    }

    /// Builds an ARP request for the peer's address into `f`; returns its length.
    pub fn arp_request(&self, f: &mut [u8]) -> usize {
        f[0..6].fill(0xff);
        f[6..12].copy_from_slice(&self.mac);
        put16(f, 12, ETHERTYPE_ARP);
        f[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
        put16(f, 20, 1);
        f[22..28].copy_from_slice(&self.mac);
        f[28..32].copy_from_slice(&self.ip);
        f[32..38].fill(0);
        f[38..42].copy_from_slice(&self.peer_ip);
        ETH_HLEN + ARP_LEN
    }

    /// Builds a UDP datagram of `payload` bytes (whatever `f` holds there) from [`CLIENT_PORT`] to
    /// the peer's `port` into `f`; returns the frame's length. Needs the peer's MAC.
    pub fn udp_datagram(&self, f: &mut [u8], port: u16, payload: usize, id: u16) -> usize {
        let payload = payload.min(MAX_UDP_PAYLOAD);
        f[0..6].copy_from_slice(&self.peer_mac.unwrap_or([0xff; 6]));
        f[6..12].copy_from_slice(&self.mac);
        put16(f, 12, ETHERTYPE_IPV4);
        let total = IP_HLEN + UDP_HLEN + payload;
        f[IP] = 0x45;
        f[IP + 1] = 0;
        put16(f, IP + 2, total as u16);
        put16(f, IP + 4, id);
        put16(f, IP + 6, 0x4000);
        f[IP + 8] = 64;
        f[IP + 9] = PROTO_UDP;
        put16(f, IP + 10, 0);
        f[IP + 12..IP + 16].copy_from_slice(&self.ip);
        f[IP + 16..IP + 20].copy_from_slice(&self.peer_ip);
        let c = checksum(&f[IP..IP + IP_HLEN]);
        put16(f, IP + 10, c);
        put16(f, L4, CLIENT_PORT);
        put16(f, L4 + 2, port);
        put16(f, L4 + 4, (UDP_HLEN + payload) as u16);
        put16(f, L4 + 6, 0);
        ETH_HLEN + total
    }
}
