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
        })
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
