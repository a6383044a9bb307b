//! The in-VMM loopback backend: a network peer that lives inside the VMM and needs no
//! privileges (the default of `pvkit bench`).
//!
//! In [`LoopbackMode::Responder`] it plays a host at a configured IPv4/MAC address: it
//! answers ARP requests for that address, ICMP echo requests to it, and echoes UDP
//! datagrams sent to one port back to their sender (MACs, addresses and ports swapped,
//! checksums recomputed). [`LoopbackMode::Reflect`] sends every frame straight back (MACs
//! swapped) and [`LoopbackMode::Sink`] discards every frame: the two throughput modes.
//!
//! Replies wait in a [`FrameQueue`] of fixed capacity, allocated once; when it is full the
//! reply is dropped and counted ([`crate::DropReason::QueueFull`]), so a guest that never
//! drains its receive side costs nothing but counters.
//!
//! Parsing and building go through smoltcp's checked `wire` accessors; only well-formed
//! requests with valid checksums, addressed to the configured host, are answered.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Message, Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, UdpPacket,
};

use crate::backend::{
    check_frame_len, BackendError, DropReason, NetBackend, NetCounters, TxOutcome, ETH_HEADER_LEN,
    MAX_FRAME_LEN,
};
use crate::host_rtt::{HostPinger, HostRttLog, PingerAction};

/// TTL of the IPv4 packets the responder builds.
pub const REPLY_TTL: u8 = 64;
/// Default capacity of the reply queue, in frames.
pub const DEFAULT_QUEUE_FRAMES: usize = 256;

/// Errors of this module: a configuration the loopback backend cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoopbackError {
    /// The queue capacity must be at least one frame.
    #[error("loopback queue capacity must be at least 1 frame")]
    ZeroCapacity,
    /// The responder's MAC must be a unicast address (bit 0 of the first byte clear).
    #[error("responder MAC {0:02x?} is not a unicast address")]
    MacNotUnicast([u8; 6]),
    /// The responder's IPv4 address must be a unicast address.
    #[error("responder address {0} is not a unicast IPv4 address")]
    IpNotUnicast(Ipv4Addr),
}

/// The host the responder plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponderConfig {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// The UDP port whose datagrams are echoed back.
    pub udp_echo_port: u16,
}

/// What the loopback backend does with each frame from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackMode {
    /// Answer ARP, ICMP echo and UDP echo for the configured host; ignore everything else.
    Responder(ResponderConfig),
    /// Send every frame back with source and destination MAC swapped.
    Reflect,
    /// Take every frame and answer nothing.
    Sink,
}

/// The reply a [`Responder`] built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// An ARP reply of this many bytes.
    Arp(usize),
    /// An ICMP echo reply of this many bytes.
    IcmpEcho(usize),
    /// A UDP echo of this many bytes.
    UdpEcho(usize),
}

impl Reply {
    /// Length of the reply frame.
    pub fn len(self) -> usize {
        match self {
            Reply::Arp(n) | Reply::IcmpEcho(n) | Reply::UdpEcho(n) => n,
        }
    }

    /// Always false: a reply has at least an Ethernet header (for clippy's `len_without_is_empty`).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// Why a [`Responder`] built no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Truncated, inconsistent lengths, bad checksum, fragment, or a bad field.
    Malformed,
    /// Well-formed but addressed to another host (MAC, IP or UDP port).
    NotForUs,
    /// A protocol or message the responder does not answer.
    Unsupported,
}

/// The request/reply logic of [`LoopbackMode::Responder`], a pure function of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responder {
    config: ResponderConfig,
}

impl Responder {
    /// A responder for `config`; the MAC and IP must be unicast.
    pub fn new(config: ResponderConfig) -> Result<Self, LoopbackError> {
        if !EthernetAddress(config.mac).is_unicast() {
            return Err(LoopbackError::MacNotUnicast(config.mac));
        }
        let ip = config.ip;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(LoopbackError::IpNotUnicast(ip));
        }
        Ok(Self { config })
    }

    /// The host it plays.
    pub fn config(&self) -> ResponderConfig {
        self.config
    }

    /// Builds the reply to `frame` into `out` (which must hold [`MAX_FRAME_LEN`] bytes for
    /// every reply to fit), or says why there is none.
    pub fn respond(&self, frame: &[u8], out: &mut [u8]) -> Result<Reply, Ignored> {
        check_frame_len(frame.len()).map_err(|_| Ignored::Malformed)?;
        let eth = EthernetFrame::new_checked(frame).map_err(|_| Ignored::Malformed)?;
        let dst = eth.dst_addr();
        let src = eth.src_addr();
        if !src.is_unicast() {
            return Err(Ignored::Malformed);
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                if dst != EthernetAddress(self.config.mac) && !dst.is_broadcast() {
                    return Err(Ignored::NotForUs);
                }
                self.arp(eth.payload(), out).map(Reply::Arp)
            }
            EthernetProtocol::Ipv4 => {
                if dst != EthernetAddress(self.config.mac) {
                    return Err(Ignored::NotForUs);
                }
                self.ipv4(frame, out)
            }
            _ => Err(Ignored::Unsupported),
        }
    }

    fn arp(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, Ignored> {
        let packet = ArpPacket::new_checked(payload).map_err(|_| Ignored::Malformed)?;
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = ArpRepr::parse(&packet).map_err(|_| Ignored::Unsupported)?
        else {
            return Err(Ignored::Unsupported);
        };
        if operation != ArpOperation::Request {
            return Err(Ignored::Unsupported);
        }
        if !source_hardware_addr.is_unicast() {
            return Err(Ignored::Malformed);
        }
        if target_protocol_addr != self.config.ip {
            return Err(Ignored::NotForUs);
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(self.config.mac),
            source_protocol_addr: self.config.ip,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let len = ETH_HEADER_LEN + reply.buffer_len();
        let out = out.get_mut(..len).ok_or(Ignored::Malformed)?;
        // The slot holds an older frame: `ArpPacket::new_checked` reads the hardware and
        // protocol lengths from the buffer, so stale bytes there would refuse the reply.
        out.fill(0);
        let mut eth = EthernetFrame::new_checked(&mut *out).map_err(|_| Ignored::Malformed)?;
        eth.set_dst_addr(source_hardware_addr);
        eth.set_src_addr(EthernetAddress(self.config.mac));
        eth.set_ethertype(EthernetProtocol::Arp);
        let mut arp = ArpPacket::new_checked(eth.payload_mut()).map_err(|_| Ignored::Malformed)?;
        reply.emit(&mut arp);
        Ok(len)
    }

    fn ipv4(&self, frame: &[u8], out: &mut [u8]) -> Result<Reply, Ignored> {
        let payload = frame.get(ETH_HEADER_LEN..).ok_or(Ignored::Malformed)?;
        let ip = Ipv4Packet::new_checked(payload).map_err(|_| Ignored::Malformed)?;
        if ip.version() != 4 || !ip.verify_checksum() {
            return Err(Ignored::Malformed);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            // Fragments are not reassembled.
            return Err(Ignored::Unsupported);
        }
        if ip.dst_addr() != self.config.ip {
            return Err(Ignored::NotForUs);
        }
        let peer = ip.src_addr();
        if peer.is_unspecified() || peer.is_broadcast() || peer.is_multicast() {
            return Err(Ignored::Malformed);
        }
        let proto = ip.next_header();
        let l4 = ip.payload();
        match proto {
            IpProtocol::Icmp => {
                let icmp = Icmpv4Packet::new_checked(l4).map_err(|_| Ignored::Malformed)?;
                if !icmp.verify_checksum() {
                    return Err(Ignored::Malformed);
                }
                if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
                    return Err(Ignored::Unsupported);
                }
            }
            IpProtocol::Udp => {
                let udp = UdpPacket::new_checked(l4).map_err(|_| Ignored::Malformed)?;
                if !udp.verify_checksum(&IpAddress::Ipv4(peer), &IpAddress::Ipv4(self.config.ip)) {
                    return Err(Ignored::Malformed);
                }
                if udp.dst_port() != self.config.udp_echo_port {
                    return Err(Ignored::NotForUs);
                }
            }
            _ => return Err(Ignored::Unsupported),
        }
        // The request is valid: the reply is the same packet (without any Ethernet padding)
        // with its addresses swapped and its checksums recomputed.
        let len = ETH_HEADER_LEN + usize::from(ip.total_len());
        let out = out.get_mut(..len).ok_or(Ignored::Malformed)?;
        out.copy_from_slice(frame.get(..len).ok_or(Ignored::Malformed)?);
        let mut eth = EthernetFrame::new_checked(&mut *out).map_err(|_| Ignored::Malformed)?;
        let peer_mac = eth.src_addr();
        eth.set_dst_addr(peer_mac);
        eth.set_src_addr(EthernetAddress(self.config.mac));
        let mut ip = Ipv4Packet::new_checked(eth.payload_mut()).map_err(|_| Ignored::Malformed)?;
        ip.set_src_addr(self.config.ip);
        ip.set_dst_addr(peer);
        ip.set_hop_limit(REPLY_TTL);
        ip.fill_checksum();
        let l4 = ip.payload_mut();
        let reply = match proto {
            IpProtocol::Icmp => {
                let mut icmp = Icmpv4Packet::new_checked(l4).map_err(|_| Ignored::Malformed)?;
                icmp.set_msg_type(Icmpv4Message::EchoReply);
                icmp.fill_checksum();
                Reply::IcmpEcho(len)
            }
            _ => {
                let mut udp = UdpPacket::new_checked(l4).map_err(|_| Ignored::Malformed)?;
                let (sport, dport) = (udp.src_port(), udp.dst_port());
                udp.set_src_port(dport);
                udp.set_dst_port(sport);
                udp.fill_checksum(&IpAddress::Ipv4(self.config.ip), &IpAddress::Ipv4(peer));
                Reply::UdpEcho(len)
            }
        };
        Ok(reply)
    }
}

/// A FIFO of frames with a fixed number of [`MAX_FRAME_LEN`]-byte slots, allocated once.
#[derive(Debug)]
pub struct FrameQueue {
    slots: Box<[[u8; MAX_FRAME_LEN]]>,
    lens: Box<[usize]>,
    head: usize,
    len: usize,
}

impl FrameQueue {
    /// A queue of `capacity` frames.
    pub fn new(capacity: usize) -> Result<Self, LoopbackError> {
        if capacity == 0 {
            return Err(LoopbackError::ZeroCapacity);
        }
        Ok(Self {
            slots: vec![[0u8; MAX_FRAME_LEN]; capacity].into_boxed_slice(),
            lens: vec![0; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        })
    }

    /// Capacity in frames.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no slot is free.
    pub fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    /// The free slot at the tail, to build a frame in place; `None` when full.
    pub fn tail_slot(&mut self) -> Option<&mut [u8; MAX_FRAME_LEN]> {
        if self.is_full() {
            return None;
        }
        let tail = (self.head + self.len) % self.slots.len();
        self.slots.get_mut(tail)
    }

    /// Commits the frame of `len` bytes built in [`tail_slot`](Self::tail_slot). Returns
    /// false (and commits nothing) when the queue is full or `len` is out of range.
    pub fn commit_tail(&mut self, len: usize) -> bool {
        if self.is_full() || len > MAX_FRAME_LEN {
            return false;
        }
        let tail = (self.head + self.len) % self.slots.len();
        match self.lens.get_mut(tail) {
            Some(l) => *l = len,
            None => return false,
        }
        self.len += 1;
        true
    }

    /// Copies `frame` to the tail; false (nothing queued) when full or too long.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let n = frame.len();
        match self.tail_slot().and_then(|s| s.get_mut(..n)) {
            Some(dst) => dst.copy_from_slice(frame),
            None => return false,
        }
        self.commit_tail(n)
    }

    /// Moves the head frame into `buf` and returns its length; `None` when empty or when
    /// `buf` is too short (the frame then stays queued).
    pub fn pop_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let n = *self.lens.get(self.head)?;
        let src = self.slots.get(self.head)?.get(..n)?;
        buf.get_mut(..n)?.copy_from_slice(src);
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        Some(n)
    }
}

/// What the responder did, beyond the [`NetCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopbackStats {
    /// ARP replies built.
    pub arp_replies: u64,
    /// ICMP echo replies built.
    pub icmp_replies: u64,
    /// UDP echoes built.
    pub udp_replies: u64,
    /// Frames taken but not answered: malformed, for another host, or unsupported.
    pub ignored: u64,
}

/// The in-VMM loopback backend (see the module documentation).
#[derive(Debug)]
pub struct LoopbackBackend {
    mode: LoopbackMode,
    responder: Option<Responder>,
    queue: FrameQueue,
    /// Where a reply is built when the queue is full, only to learn that one was due.
    scratch: Box<[u8; MAX_FRAME_LEN]>,
    counters: NetCounters,
    stats: LoopbackStats,
    /// Host-originated round trips (responder mode only), see [`crate::host_rtt`].
    pinger: Option<HostPinger>,
}

impl LoopbackBackend {
    /// A loopback backend in `mode` whose reply queue holds `queue_frames` frames.
    pub fn new(mode: LoopbackMode, queue_frames: usize) -> Result<Self, LoopbackError> {
        let responder = match mode {
            LoopbackMode::Responder(cfg) => Some(Responder::new(cfg)?),
            LoopbackMode::Reflect | LoopbackMode::Sink => None,
        };
        Ok(Self {
            mode,
            responder,
            queue: FrameQueue::new(queue_frames)?,
            scratch: Box::new([0u8; MAX_FRAME_LEN]),
            counters: NetCounters::default(),
            stats: LoopbackStats::default(),
            pinger: None,
        })
    }

    /// Makes the responder also a UDP echo client of the guest whose runs, timed by the
    /// host clock, go to `log` ([`crate::host_rtt`]). No effect in the other modes.
    pub fn with_host_rtt(mut self, log: HostRttLog) -> Self {
        if let Some(r) = self.responder {
            let c = r.config();
            self.pinger = Some(HostPinger::new(log, c.mac, c.ip));
        }
        self
    }

    /// The mode it runs in.
    pub fn mode(&self) -> LoopbackMode {
        self.mode
    }

    /// What the responder answered and ignored.
    pub fn stats(&self) -> LoopbackStats {
        self.stats
    }

    /// Frames waiting for the guest.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    fn drop_frame(&mut self, reason: DropReason) -> TxOutcome {
        self.counters.count_drop(reason);
        TxOutcome::Dropped(reason)
    }
}

impl NetBackend for LoopbackBackend {
    fn send(&mut self, frame: &[u8]) -> TxOutcome {
        if let Err(reason) = check_frame_len(frame.len()) {
            return self.drop_frame(reason);
        }
        match self.mode {
            LoopbackMode::Sink => {}
            LoopbackMode::Reflect => {
                let Some(slot) = self.queue.tail_slot() else {
                    return self.drop_frame(DropReason::QueueFull);
                };
                let n = frame.len();
                let (Some(dst), Some(src_mac), Some(dst_mac), Some(rest)) = (
                    slot.get_mut(..n),
                    frame.get(6..12),
                    frame.get(..6),
                    frame.get(12..),
                ) else {
                    return self.drop_frame(DropReason::Undersize);
                };
                let (head, tail) = dst.split_at_mut(12);
                let (d, s) = head.split_at_mut(6);
                d.copy_from_slice(src_mac);
                s.copy_from_slice(dst_mac);
                tail.copy_from_slice(rest);
                self.queue.commit_tail(n);
            }
            LoopbackMode::Responder(_) => {
                let Some(responder) = self.responder else {
                    return self.drop_frame(DropReason::BackendError);
                };
                if let Some(pinger) = self.pinger.as_mut() {
                    let queue = &mut self.queue;
                    if pinger.on_frame(frame, &mut |f| queue.push(f)) == PingerAction::Taken {
                        self.counters.count_tx(frame.len());
                        return TxOutcome::Sent;
                    }
                }
                let full = self.queue.is_full();
                let out: &mut [u8] = match self.queue.tail_slot() {
                    Some(slot) => slot,
                    None => self.scratch.as_mut_slice(),
                };
                match responder.respond(frame, out) {
                    Ok(reply) => {
                        if full {
                            return self.drop_frame(DropReason::QueueFull);
                        }
                        self.queue.commit_tail(reply.len());
                        let c = match reply {
                            Reply::Arp(_) => &mut self.stats.arp_replies,
                            Reply::IcmpEcho(_) => &mut self.stats.icmp_replies,
                            Reply::UdpEcho(_) => &mut self.stats.udp_replies,
                        };
                        *c = c.saturating_add(1);
                    }
                    Err(_) => self.stats.ignored = self.stats.ignored.saturating_add(1),
                }
            }
        }
        self.counters.count_tx(frame.len());
        TxOutcome::Sent
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        if buf.len() < MAX_FRAME_LEN {
            return Err(BackendError::BufferTooSmall { len: buf.len() });
        }
        let n = self.queue.pop_into(buf);
        if let Some(n) = n {
            self.counters.count_rx(n);
        }
        Ok(n)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    fn counters(&self) -> NetCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv4Repr, Ipv4Repr, UdpRepr};

    const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const ECHO_PORT: u16 = 7;

    /// An ARP request from PEER for HOST, by hand.
    fn arp_request_frame() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&PEER_IP.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&HOST_IP.octets());
        f
    }

    #[test]
    fn arp_is_answered_in_a_queue_slot_that_held_a_large_frame() {
        // A 1-slot queue: the ARP reply is built where an older frame lay.
        let mut b = LoopbackBackend::new(LoopbackMode::Reflect, 1).unwrap();
        let mut big = vec![0xa5u8; MAX_FRAME_LEN];
        big[..6].copy_from_slice(&HOST_MAC);
        big[6..12].copy_from_slice(&PEER_MAC);
        assert_eq!(b.send(&big), TxOutcome::Sent);
        let mut buf = [0u8; MAX_FRAME_LEN];
        assert_eq!(b.recv(&mut buf).unwrap(), Some(MAX_FRAME_LEN));
        // Same slot memory, now in responder mode.
        b.mode = LoopbackMode::Responder(cfg());
        b.responder = Some(Responder::new(cfg()).unwrap());
        assert_eq!(b.send(&arp_request_frame()), TxOutcome::Sent);
        assert_eq!(b.stats().arp_replies, 1, "{:?}", b.stats());
        assert_eq!(b.recv(&mut buf).unwrap(), Some(42));
    }

    fn cfg() -> ResponderConfig {
        ResponderConfig {
            mac: HOST_MAC,
            ip: HOST_IP,
            udp_echo_port: ECHO_PORT,
        }
    }

    fn responder() -> LoopbackBackend {
        LoopbackBackend::new(LoopbackMode::Responder(cfg()), 8).unwrap()
    }

    /// RFC 1071 one's-complement sum, written independently of smoltcp: 0 over a block
    /// whose checksum field is right.
    fn inet_sum(chunks: &[&[u8]]) -> u16 {
        let mut sum: u32 = 0;
        for c in chunks {
            for pair in c.chunks(2) {
                let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
                sum += u32::from(w);
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An ARP request from the peer for `target`, written byte by byte (RFC 826 layout).
    fn arp_request(target: Ipv4Addr, op: u16) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&PEER_MAC);
        a.extend_from_slice(&PEER_IP.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        eth([0xff; 6], 0x0806, &a)
    }

    fn ipv4_frame(proto: IpProtocol, l4: &[u8], dst_ip: Ipv4Addr) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: PEER_IP,
            dst_addr: dst_ip,
            next_header: proto,
            payload_len: l4.len(),
            hop_limit: 17,
        };
        let mut ip = vec![0u8; repr.buffer_len() + l4.len()];
        let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
        repr.emit(&mut p, &ChecksumCapabilities::default());
        p.payload_mut().copy_from_slice(l4);
        eth(HOST_MAC, 0x0800, &ip)
    }

    fn icmp_echo(ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        let repr = Icmpv4Repr::EchoRequest {
            ident,
            seq_no: seq,
            data,
        };
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut b[..]),
            &ChecksumCapabilities::default(),
        );
        b
    }

    fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
        let repr = UdpRepr { src_port, dst_port };
        let mut b = vec![0u8; 8 + data.len()];
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut b[..]),
            &IpAddress::Ipv4(PEER_IP),
            &IpAddress::Ipv4(HOST_IP),
            data.len(),
            |p| p.copy_from_slice(data),
            &ChecksumCapabilities::default(),
        );
        b
    }

    fn recv_one(b: &mut LoopbackBackend) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = b.recv(&mut buf).unwrap().expect("a reply is queued");
        buf[..n].to_vec()
    }

    fn assert_empty(b: &mut LoopbackBackend) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        assert_eq!(b.recv(&mut buf).unwrap(), None);
    }

    #[test]
    fn arp_request_for_the_host_gets_a_reply() {
        let mut b = responder();
        assert_eq!(b.send(&arp_request(HOST_IP, 1)), TxOutcome::Sent);
        let r = recv_one(&mut b);
        let mut want = Vec::new();
        want.extend_from_slice(&PEER_MAC); // to the requester
        want.extend_from_slice(&HOST_MAC);
        want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        want.extend_from_slice(&HOST_MAC);
        want.extend_from_slice(&HOST_IP.octets());
        want.extend_from_slice(&PEER_MAC);
        want.extend_from_slice(&PEER_IP.octets());
        assert_eq!(r, want);
        assert_eq!(b.stats().arp_replies, 1);
        let c = b.counters();
        assert_eq!(
            (c.tx_frames, c.tx_bytes, c.rx_frames, c.rx_bytes),
            (1, 42, 1, 42)
        );
        assert_empty(&mut b);
    }

    #[test]
    fn arp_for_another_address_or_arp_reply_is_ignored() {
        let mut b = responder();
        assert_eq!(
            b.send(&arp_request(Ipv4Addr::new(10, 0, 2, 3), 1)),
            TxOutcome::Sent
        );
        assert_eq!(b.send(&arp_request(HOST_IP, 2)), TxOutcome::Sent);
        assert_empty(&mut b);
        assert_eq!(b.stats().ignored, 2);
        let r = Responder::new(cfg()).unwrap();
        let mut out = [0u8; MAX_FRAME_LEN];
        assert_eq!(
            r.respond(&arp_request(Ipv4Addr::new(10, 0, 2, 3), 1), &mut out),
            Err(Ignored::NotForUs)
        );
        assert_eq!(
            r.respond(&arp_request(HOST_IP, 2), &mut out),
            Err(Ignored::Unsupported)
        );
    }

    #[test]
    fn icmp_echo_request_gets_a_reply_with_valid_checksums() {
        let mut b = responder();
        let data: Vec<u8> = (0..56u8).collect();
        let req = ipv4_frame(IpProtocol::Icmp, &icmp_echo(0x1234, 7, &data), HOST_IP);
        assert_eq!(b.send(&req), TxOutcome::Sent);
        let r = recv_one(&mut b);
        assert_eq!(r.len(), req.len());
        assert_eq!(&r[..6], &PEER_MAC);
        assert_eq!(&r[6..12], &HOST_MAC);
        assert_eq!(&r[12..14], &[0x08, 0x00]);
        let ip = &r[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(ip[8], REPLY_TTL);
        assert_eq!(ip[9], 1);
        assert_eq!(&ip[12..16], &HOST_IP.octets());
        assert_eq!(&ip[16..20], &PEER_IP.octets());
        assert_eq!(inet_sum(&[ip]), 0, "IPv4 header checksum");
        let icmp = &r[34..];
        assert_eq!(icmp[0], 0, "echo reply");
        assert_eq!(icmp[1], 0);
        assert_eq!(&icmp[4..8], &[0x12, 0x34, 0, 7], "ident and sequence kept");
        assert_eq!(&icmp[8..], &data[..]);
        assert_eq!(inet_sum(&[icmp]), 0, "ICMP checksum");
        assert_eq!(b.stats().icmp_replies, 1);
    }

    #[test]
    fn corrupt_checksums_fragments_and_foreign_addresses_get_no_reply() {
        let r = Responder::new(cfg()).unwrap();
        let mut out = [0u8; MAX_FRAME_LEN];
        let good = ipv4_frame(IpProtocol::Icmp, &icmp_echo(1, 1, b"abc"), HOST_IP);
        assert!(r.respond(&good, &mut out).is_ok());
        let mut bad_icmp = good.clone();
        *bad_icmp.last_mut().unwrap() ^= 0xff;
        assert_eq!(r.respond(&bad_icmp, &mut out), Err(Ignored::Malformed));
        let mut bad_ip = good.clone();
        bad_ip[14 + 8] = 1; // TTL changed, header checksum not
        assert_eq!(r.respond(&bad_ip, &mut out), Err(Ignored::Malformed));
        let mut frag = good.clone();
        frag[14 + 6] = 0x20; // more fragments
        frag[14 + 10] = 0;
        frag[14 + 11] = 0;
        let s = inet_sum(&[&frag[14..34]]);
        frag[14 + 10..14 + 12].copy_from_slice(&s.to_be_bytes());
        assert_eq!(r.respond(&frag, &mut out), Err(Ignored::Unsupported));
        let other = ipv4_frame(
            IpProtocol::Icmp,
            &icmp_echo(1, 1, b"abc"),
            Ipv4Addr::new(10, 0, 2, 9),
        );
        assert_eq!(r.respond(&other, &mut out), Err(Ignored::NotForUs));
        let mut other_mac = good.clone();
        other_mac[5] = 0x77;
        assert_eq!(r.respond(&other_mac, &mut out), Err(Ignored::NotForUs));
        let tcp = ipv4_frame(IpProtocol::Tcp, &[0u8; 20], HOST_IP);
        assert_eq!(r.respond(&tcp, &mut out), Err(Ignored::Unsupported));
        let ipv6 = eth(HOST_MAC, 0x86dd, &[0u8; 40]);
        assert_eq!(r.respond(&ipv6, &mut out), Err(Ignored::Unsupported));
    }

    #[test]
    fn udp_to_the_echo_port_is_echoed_with_ports_swapped() {
        let mut b = responder();
        let data = b"pvkit udp echo";
        let req = ipv4_frame(IpProtocol::Udp, &udp(40000, ECHO_PORT, data), HOST_IP);
        assert_eq!(b.send(&req), TxOutcome::Sent);
        let r = recv_one(&mut b);
        assert_eq!(r.len(), req.len());
        assert_eq!(&r[..6], &PEER_MAC);
        assert_eq!(&r[6..12], &HOST_MAC);
        let ip = &r[14..34];
        assert_eq!(inet_sum(&[ip]), 0);
        assert_eq!(&ip[12..16], &HOST_IP.octets());
        assert_eq!(&ip[16..20], &PEER_IP.octets());
        let u = &r[34..];
        assert_eq!(&u[0..2], &ECHO_PORT.to_be_bytes());
        assert_eq!(&u[2..4], &40000u16.to_be_bytes());
        assert_eq!(&u[8..], data);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&HOST_IP.octets());
        pseudo.extend_from_slice(&PEER_IP.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(u.len() as u16).to_be_bytes());
        assert_eq!(
            inet_sum(&[&pseudo, u]),
            0,
            "UDP checksum over the pseudo-header"
        );
        assert_eq!(b.stats().udp_replies, 1);

        // Another port: no echo. No checksum (0): still echoed.
        b.send(&ipv4_frame(IpProtocol::Udp, &udp(40000, 9, data), HOST_IP));
        assert_empty(&mut b);
        let mut no_sum = udp(40001, ECHO_PORT, data);
        no_sum[6] = 0;
        no_sum[7] = 0;
        b.send(&ipv4_frame(IpProtocol::Udp, &no_sum, HOST_IP));
        let r = recv_one(&mut b);
        assert_eq!(&r[34 + 2..34 + 4], &40001u16.to_be_bytes());
        assert_eq!(b.stats().ignored, 1);
    }

    #[test]
    fn ethernet_padding_is_not_echoed() {
        let mut b = responder();
        let mut req = ipv4_frame(IpProtocol::Udp, &udp(5, ECHO_PORT, b"x"), HOST_IP);
        let unpadded = req.len();
        req.resize(60, 0xee);
        b.send(&req);
        assert_eq!(recv_one(&mut b).len(), unpadded);
    }

    #[test]
    fn oversize_and_undersize_frames_are_dropped_and_counted() {
        let mut b = LoopbackBackend::new(LoopbackMode::Reflect, 4).unwrap();
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert_eq!(b.send(&big), TxOutcome::Dropped(DropReason::Oversize));
        assert_eq!(
            b.send(&[0u8; 13]),
            TxOutcome::Dropped(DropReason::Undersize)
        );
        let max = vec![0x11u8; MAX_FRAME_LEN];
        assert_eq!(b.send(&max), TxOutcome::Sent);
        let c = b.counters();
        assert_eq!(
            (c.dropped_oversize, c.dropped_undersize, c.tx_frames),
            (1, 1, 1)
        );
        assert_eq!(recv_one(&mut b).len(), MAX_FRAME_LEN);
    }

    #[test]
    fn garbage_never_panics_and_is_ignored() {
        let mut b = responder();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = [0u8; MAX_FRAME_LEN];
        for i in 0..2000 {
            let len = 14 + (i * 7) % (MAX_FRAME_LEN - 13);
            let mut f: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Half of them addressed to the host, as IPv4 or ARP, to reach the parsers.
            if i % 2 == 0 {
                f[..6].copy_from_slice(&HOST_MAC);
                f[6] = 0x02;
                f[12..14].copy_from_slice(if i % 4 == 0 { &[8, 0] } else { &[8, 6] });
            }
            assert_eq!(b.send(&f), TxOutcome::Sent);
            while b.recv(&mut buf).unwrap().is_some() {}
        }
        let s = b.stats();
        assert_eq!(
            s.ignored + s.arp_replies + s.icmp_replies + s.udp_replies,
            2000
        );
        assert_eq!(s.ignored, 2000, "random bytes never form a valid request");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let mut b = LoopbackBackend::new(LoopbackMode::Reflect, 4).unwrap();
        let f = eth(HOST_MAC, 0x88b5, &[0u8; 50]);
        let start = std::time::Instant::now();
        let outcomes: Vec<TxOutcome> = (0..10_000).map(|_| b.send(&f)).collect();
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(
            outcomes.iter().filter(|o| **o == TxOutcome::Sent).count(),
            4
        );
        let c = b.counters();
        assert_eq!(
            (c.tx_frames, c.dropped_queue_full, b.pending()),
            (4, 9996, 4)
        );
        // Reflected: MACs swapped, rest unchanged.
        let r = recv_one(&mut b);
        assert_eq!(&r[..6], &PEER_MAC);
        assert_eq!(&r[6..12], &HOST_MAC);
        assert_eq!(&r[12..], &f[12..]);
        assert_eq!(b.send(&f), TxOutcome::Sent, "a drained slot is reused");
        let mut n = 0;
        let mut buf = [0u8; MAX_FRAME_LEN];
        while b.recv(&mut buf).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        assert_eq!(b.counters().rx_frames, 5);

        // Responder: a request whose reply does not fit is dropped and counted as well.
        let mut r = LoopbackBackend::new(LoopbackMode::Responder(cfg()), 2).unwrap();
        let req = arp_request(HOST_IP, 1);
        assert_eq!(r.send(&req), TxOutcome::Sent);
        assert_eq!(r.send(&req), TxOutcome::Sent);
        assert_eq!(r.send(&req), TxOutcome::Dropped(DropReason::QueueFull));
        // A frame that needs no reply is still taken when the queue is full.
        assert_eq!(r.send(&arp_request(HOST_IP, 2)), TxOutcome::Sent);
        let c = r.counters();
        assert_eq!(
            (c.tx_frames, c.dropped_queue_full, r.stats().arp_replies),
            (3, 1, 2)
        );
    }

    #[test]
    fn sink_takes_everything_and_answers_nothing() {
        let mut b = LoopbackBackend::new(LoopbackMode::Sink, 1).unwrap();
        for _ in 0..100 {
            assert_eq!(b.send(&arp_request(HOST_IP, 1)), TxOutcome::Sent);
        }
        assert_empty(&mut b);
        assert_eq!(b.counters().tx_frames, 100);
        assert_eq!(b.counters().dropped(), 0);
    }

    #[test]
    fn a_short_receive_buffer_is_refused_and_the_frame_kept() {
        let mut b = responder();
        b.send(&arp_request(HOST_IP, 1));
        let mut small = [0u8; 64];
        assert!(matches!(
            b.recv(&mut small),
            Err(BackendError::BufferTooSmall { len: 64 })
        ));
        assert_eq!(recv_one(&mut b).len(), 42);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut c = cfg();
        c.mac = [0x01, 0, 0x5e, 0, 0, 1];
        assert_eq!(Responder::new(c), Err(LoopbackError::MacNotUnicast(c.mac)));
        let mut c = cfg();
        c.ip = Ipv4Addr::BROADCAST;
        assert_eq!(Responder::new(c), Err(LoopbackError::IpNotUnicast(c.ip)));
        assert!(matches!(
            LoopbackBackend::new(LoopbackMode::Sink, 0),
            Err(LoopbackError::ZeroCapacity)
        ));
    }
}
