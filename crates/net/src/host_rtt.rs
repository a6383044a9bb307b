//! UDP echo round trips originated by the host and timed by the host clock: the loopback
//! peer as a client of the guest's UDP echo responder (`pvkit bench`'s `udp-echo-host-64B`).
//!
//! The guest starts a run with one UDP datagram to the peer's [`HOST_RTT_PORT`] whose
//! payload is [`START_MAGIC`], the bench case id (`u64` LE), the number of requests (`u32`
//! LE, 1 to [`MAX_RTT_REQUESTS`]) and the request's UDP payload length (`u16` LE, 4 to
//! [`MAX_RTT_PAYLOAD`]). The peer then sends request 0 to the guest's UDP echo port
//! ([`GUEST_ECHO_PORT`]) and request k+1 when echo k arrives; each request's payload is its
//! sequence number (`u32` LE) and a pattern derived from it. An echo is exact when it is the
//! request byte for byte with the MACs, IPv4 addresses and UDP ports swapped (what the
//! guest's responder does). Each round trip is timed from the moment the request is queued
//! for the guest to the moment its echo is handed to the backend. After the last echo the
//! peer sends one datagram to the guest's [`GUEST_CONTROL_PORT`] (the guest's "done") and
//! appends the run to the shared [`HostRttLog`].
//!
//! Bounded: a run holds at most [`MAX_RTT_REQUESTS`] samples, allocated when it starts, one
//! run at a time per peer, and the log keeps at most [`MAX_RTT_RUNS`] runs (later starts
//! are ignored and counted).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    UdpPacket, UdpRepr,
};

use crate::backend::{ETH_HEADER_LEN, MAX_FRAME_LEN};

/// The peer's UDP port for host round trips: the start datagram goes here, and the
/// requests come from it.
pub const HOST_RTT_PORT: u16 = 7200;
/// The guest's UDP echo port the requests go to.
pub const GUEST_ECHO_PORT: u16 = 7;
/// The guest's port that ends its wait ("done") when a datagram arrives.
pub const GUEST_CONTROL_PORT: u16 = 9999;
/// First bytes of a start datagram's payload.
pub const START_MAGIC: [u8; 4] = *b"RTT1";
/// Length of a start datagram's payload.
pub const START_LEN: usize = 4 + 8 + 4 + 2;
/// Most requests in one run.
pub const MAX_RTT_REQUESTS: u32 = 4096;
/// Most runs one log keeps.
pub const MAX_RTT_RUNS: usize = 64;
/// Largest request payload: a 1514-byte frame.
pub const MAX_RTT_PAYLOAD: u16 = (MAX_FRAME_LEN - ETH_HEADER_LEN - 20 - 8) as u16;

const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TTL: u8 = 64;

/// One finished (or abandoned) run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RttRun {
    /// The bench case id the guest named.
    pub case: u64,
    /// Requests asked for.
    pub requests: u32,
    /// Round-trip times in nanoseconds, one per echo received, in order.
    pub samples_ns: Vec<u64>,
    /// Echoes that were the request byte for byte (addresses and ports swapped).
    pub exact: u32,
    /// Echoes that were not.
    pub mismatched: u32,
    /// Requests that could not be queued for the guest (its receive queue was full): the
    /// run stops there.
    pub lost: u32,
}

/// Runs finished by the loopback peers of one VM, shared with whoever reads them (the
/// bench runner). Cheap to clone; equal when it is the same log.
#[derive(Debug, Clone, Default)]
pub struct HostRttLog(Arc<Mutex<Vec<RttRun>>>);

impl PartialEq for HostRttLog {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for HostRttLog {}

impl HostRttLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The runs so far.
    pub fn runs(&self) -> Vec<RttRun> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn is_full(&self) -> bool {
        self.0.lock().map_or(true, |r| r.len() >= MAX_RTT_RUNS)
    }

    fn push(&self, run: RttRun) {
        if let Ok(mut r) = self.0.lock() {
            if r.len() < MAX_RTT_RUNS {
                r.push(run);
            }
        }
    }
}

/// The run in progress.
#[derive(Debug)]
struct Active {
    run: RttRun,
    guest_mac: EthernetAddress,
    guest_ip: Ipv4Addr,
    payload: usize,
    /// The request in flight and when it was queued.
    request: Vec<u8>,
    sent_at: Instant,
}

/// What [`HostPinger::on_frame`] did with a frame from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingerAction {
    /// Not a frame for the pinger: the responder should look at it.
    NotMine,
    /// Taken (a start, an echo, or a refused start).
    Taken,
}

/// The host side of the round trips of one loopback peer (see the module documentation).
#[derive(Debug)]
pub struct HostPinger {
    log: HostRttLog,
    mac: EthernetAddress,
    ip: Ipv4Addr,
    active: Option<Active>,
    /// Start datagrams refused (malformed, out of range, a run already active, log full).
    pub refused: u64,
}

impl HostPinger {
    /// A pinger that plays the host at `mac`/`ip` and appends its runs to `log`.
    pub fn new(log: HostRttLog, mac: [u8; 6], ip: Ipv4Addr) -> Self {
        Self {
            log,
            mac: EthernetAddress(mac),
            ip,
            active: None,
            refused: 0,
        }
    }

    /// Looks at one frame from the guest; when it is a start or an echo, acts on it and
    /// pushes what the guest gets next with `queue` (which returns false when the guest's
    /// queue is full).
    pub fn on_frame(&mut self, frame: &[u8], queue: &mut dyn FnMut(&[u8]) -> bool) -> PingerAction {
        let Some((src_mac, src_ip, sport, payload)) = self.udp_to_us(frame) else {
            return PingerAction::NotMine;
        };
        if sport == GUEST_ECHO_PORT && self.active.is_some() {
            self.echo(frame, queue);
        } else if !self.start(src_mac, src_ip, payload, queue) {
            self.refused = self.refused.saturating_add(1);
        }
        PingerAction::Taken
    }

    /// `(source MAC, source IP, source port, payload)` of a well-formed UDP datagram to
    /// this host's [`HOST_RTT_PORT`].
    fn udp_to_us<'a>(&self, frame: &'a [u8]) -> Option<(EthernetAddress, Ipv4Addr, u16, &'a [u8])> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4
            || eth.dst_addr() != self.mac
            || !eth.src_addr().is_unicast()
        {
            return None;
        }
        let ip = Ipv4Packet::new_checked(frame.get(ETH_HEADER_LEN..)?).ok()?;
        if ip.version() != 4
            || !ip.verify_checksum()
            || ip.next_header() != IpProtocol::Udp
            || ip.dst_addr() != self.ip
            || ip.more_frags()
            || ip.frag_offset() != 0
        {
            return None;
        }
        let src = ip.src_addr();
        if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
            return None;
        }
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        if udp.dst_port() != HOST_RTT_PORT
            || !udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(self.ip))
        {
            return None;
        }
        let sport = udp.src_port();
        let payload_at = ETH_HEADER_LEN + usize::from(ip.header_len()) + UDP_HLEN;
        let payload_len = usize::from(udp.len()).checked_sub(UDP_HLEN)?;
        let payload = frame.get(payload_at..payload_at + payload_len)?;
        Some((eth.src_addr(), src, sport, payload))
    }

    fn start(
        &mut self,
        guest_mac: EthernetAddress,
        guest_ip: Ipv4Addr,
        p: &[u8],
        queue: &mut dyn FnMut(&[u8]) -> bool,
    ) -> bool {
        if self.active.is_some() || p.len() != START_LEN || p.get(..4) != Some(&START_MAGIC[..]) {
            return false;
        }
        let field = |at: usize, n: usize| {
            p.get(at..at + n).map(|b| {
                b.iter()
                    .rev()
                    .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
            })
        };
        let (Some(case), Some(requests), Some(payload)) = (field(4, 8), field(12, 4), field(16, 2))
        else {
            return false;
        };
        let requests = requests as u32;
        let payload = payload as u16;
        if requests == 0
            || requests > MAX_RTT_REQUESTS
            || !(4..=MAX_RTT_PAYLOAD).contains(&payload)
            || self.log.is_full()
        {
            return false;
        }
        let mut active = Active {
            run: RttRun {
                case,
                requests,
                samples_ns: Vec::with_capacity(requests as usize),
                exact: 0,
                mismatched: 0,
                lost: 0,
            },
            guest_mac,
            guest_ip,
            payload: usize::from(payload),
            request: Vec::with_capacity(MAX_FRAME_LEN),
            sent_at: Instant::now(),
        };
        self.build_request(&mut active, 0);
        self.active = Some(active);
        self.send_request(queue);
        true
    }

    /// Builds request `seq` of `a` into `a.request`.
    fn build_request(&self, a: &mut Active, seq: u32) {
        let data: Vec<u8> = seq
            .to_le_bytes()
            .into_iter()
            .chain((4..a.payload).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8))
            .collect();
        let ip_repr = Ipv4Repr {
            src_addr: self.ip,
            dst_addr: a.guest_ip,
            next_header: IpProtocol::Udp,
            payload_len: UDP_HLEN + data.len(),
            hop_limit: TTL,
        };
        let len = ETH_HEADER_LEN + IP_HLEN + UDP_HLEN + data.len();
        a.request.clear();
        a.request.resize(len, 0);
        let Ok(mut eth) = EthernetFrame::new_checked(&mut a.request[..]) else {
            return;
        };
        eth.set_dst_addr(a.guest_mac);
        eth.set_src_addr(self.mac);
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let caps = ChecksumCapabilities::default();
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip_repr.emit(&mut ip, &caps);
        UdpRepr {
            src_port: HOST_RTT_PORT,
            dst_port: GUEST_ECHO_PORT,
        }
        .emit(
            &mut UdpPacket::new_unchecked(ip.payload_mut()),
            &IpAddress::Ipv4(self.ip),
            &IpAddress::Ipv4(a.guest_ip),
            data.len(),
            |p| p.copy_from_slice(&data),
            &caps,
        );
    }

    fn send_request(&mut self, queue: &mut dyn FnMut(&[u8]) -> bool) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        a.sent_at = Instant::now();
        if !queue(&a.request) {
            a.run.lost = a.run.lost.saturating_add(1);
            self.finish(queue);
        }
    }

    fn echo(&mut self, frame: &[u8], queue: &mut dyn FnMut(&[u8]) -> bool) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let rtt = a.sent_at.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        a.run.samples_ns.push(rtt);
        if is_exact_echo(&a.request, frame) {
            a.run.exact = a.run.exact.saturating_add(1);
        } else {
            a.run.mismatched = a.run.mismatched.saturating_add(1);
        }
        let next = a.run.samples_ns.len() as u32;
        if next >= a.run.requests {
            self.finish(queue);
            return;
        }
        let mut a = match self.active.take() {
            Some(a) => a,
            None => return,
        };
        self.build_request(&mut a, next);
        self.active = Some(a);
        self.send_request(queue);
    }

    /// Ends the run: logs it and tells the guest (a datagram to its control port).
    fn finish(&mut self, queue: &mut dyn FnMut(&[u8]) -> bool) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        let run = std::mem::take(&mut a.run);
        self.log.push(run);
        self.build_request(&mut a, u32::MAX);
        // The "done" datagram: the last request's frame, to the control port.
        if let Ok(mut eth) = EthernetFrame::new_checked(&mut a.request[..]) {
            let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
            let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
            udp.set_dst_port(GUEST_CONTROL_PORT);
            udp.fill_checksum(&IpAddress::Ipv4(self.ip), &IpAddress::Ipv4(a.guest_ip));
        }
        // A full queue loses the "done": the guest's watchdog then ends the boot.
        let _ = queue(&a.request);
    }
}

/// Whether `echo` is `request` with MACs, IPv4 addresses and UDP ports swapped and every
/// other byte equal (no Ethernet padding beyond the 60-byte minimum, which must be zero).
pub fn is_exact_echo(request: &[u8], echo: &[u8]) -> bool {
    let n = request.len();
    if echo.len() < n || (echo.len() > n && echo.len() > 60) {
        return false;
    }
    let (Some(body), Some(pad)) = (echo.get(..n), echo.get(n..)) else {
        return false;
    };
    if pad.iter().any(|&b| b != 0) {
        return false;
    }
    let ip = ETH_HEADER_LEN;
    let l4 = ip + IP_HLEN;
    let mut want = request.to_vec();
    for (a, b, len) in [(0, 6, 6), (ip + 12, ip + 16, 4), (l4, l4 + 2, 2)] {
        let swapped = (|| {
            let x = request.get(a..a + len)?;
            let y = request.get(b..b + len)?;
            want.get_mut(a..a + len)?.copy_from_slice(y);
            want.get_mut(b..b + len)?.copy_from_slice(x);
            Some(())
        })();
        if swapped.is_none() {
            return false;
        }
    }
    body == want.as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn start_frame(case: u64, requests: u32, payload: u16) -> Vec<u8> {
        let mut data = START_MAGIC.to_vec();
        data.extend_from_slice(&case.to_le_bytes());
        data.extend_from_slice(&requests.to_le_bytes());
        data.extend_from_slice(&payload.to_le_bytes());
        let ip_repr = Ipv4Repr {
            src_addr: GUEST_IP,
            dst_addr: HOST_IP,
            next_header: IpProtocol::Udp,
            payload_len: UDP_HLEN + data.len(),
            hop_limit: 64,
        };
        let mut f = vec![0u8; ETH_HEADER_LEN + IP_HLEN + UDP_HLEN + data.len()];
        f[..6].copy_from_slice(&HOST_MAC);
        f[6..12].copy_from_slice(&GUEST_MAC);
        f[12..14].copy_from_slice(&[8, 0]);
        let caps = ChecksumCapabilities::default();
        let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]);
        ip_repr.emit(&mut ip, &caps);
        UdpRepr {
            src_port: 40000,
            dst_port: HOST_RTT_PORT,
        }
        .emit(
            &mut UdpPacket::new_unchecked(ip.payload_mut()),
            &IpAddress::Ipv4(GUEST_IP),
            &IpAddress::Ipv4(HOST_IP),
            data.len(),
            |p| p.copy_from_slice(&data),
            &caps,
        );
        f
    }

    /// What the guest's responder does: swap MACs, addresses and ports.
    fn reflect(f: &[u8]) -> Vec<u8> {
        let mut e = f.to_vec();
        e[..6].copy_from_slice(&f[6..12]);
        e[6..12].copy_from_slice(&f[..6]);
        e[26..30].copy_from_slice(&f[30..34]);
        e[30..34].copy_from_slice(&f[26..30]);
        e[34..36].copy_from_slice(&f[36..38]);
        e[36..38].copy_from_slice(&f[34..36]);
        e
    }

    #[test]
    fn a_run_sends_each_request_after_the_previous_echo_and_logs_every_sample() {
        let log = HostRttLog::new();
        let mut p = HostPinger::new(log.clone(), HOST_MAC, HOST_IP);
        let out: RefCell<Vec<Vec<u8>>> = RefCell::new(Vec::new());
        let mut q = |f: &[u8]| {
            out.borrow_mut().push(f.to_vec());
            true
        };
        assert_eq!(
            p.on_frame(&start_frame(42, 3, 22), &mut q),
            PingerAction::Taken
        );
        for k in 0..3u32 {
            let req = out.borrow().last().unwrap().clone();
            assert_eq!(req.len(), 64);
            assert_eq!(&req[42..46], &k.to_le_bytes());
            // A request is a valid UDP datagram to the guest's echo port.
            let ip = Ipv4Packet::new_checked(&req[14..]).unwrap();
            assert!(ip.verify_checksum());
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(udp.dst_port(), GUEST_ECHO_PORT);
            assert!(udp.verify_checksum(&IpAddress::Ipv4(HOST_IP), &IpAddress::Ipv4(GUEST_IP)));
            assert_eq!(p.on_frame(&reflect(&req), &mut q), PingerAction::Taken);
        }
        // Three requests and the "done" datagram to the control port.
        let out = out.borrow();
        assert_eq!(out.len(), 4);
        let done = Ipv4Packet::new_checked(&out[3][14..]).unwrap();
        assert_eq!(
            UdpPacket::new_checked(done.payload()).unwrap().dst_port(),
            GUEST_CONTROL_PORT
        );
        let runs = log.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (
                runs[0].case,
                runs[0].requests,
                runs[0].samples_ns.len(),
                runs[0].exact
            ),
            (42, 3, 3, 3)
        );
        assert_eq!((runs[0].mismatched, runs[0].lost), (0, 0));
    }

    #[test]
    fn a_wrong_echo_is_counted_as_mismatched() {
        let log = HostRttLog::new();
        let mut p = HostPinger::new(log.clone(), HOST_MAC, HOST_IP);
        let last = RefCell::new(Vec::new());
        let mut q = |f: &[u8]| {
            *last.borrow_mut() = f.to_vec();
            true
        };
        p.on_frame(&start_frame(1, 1, 22), &mut q);
        let mut echo = reflect(&last.borrow());
        echo[50] ^= 1;
        // Fix the UDP checksum so the echo is well-formed but not the request.
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut echo[14..]);
            let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
            udp.fill_checksum(&IpAddress::Ipv4(GUEST_IP), &IpAddress::Ipv4(HOST_IP));
        }
        p.on_frame(&echo, &mut q);
        let run = &log.runs()[0];
        assert_eq!((run.exact, run.mismatched, run.samples_ns.len()), (0, 1, 1));
    }

    #[test]
    fn bad_starts_are_refused_and_start_nothing() {
        let log = HostRttLog::new();
        let mut p = HostPinger::new(log.clone(), HOST_MAC, HOST_IP);
        let n = Cell::new(0);
        let mut q = |_: &[u8]| {
            n.set(n.get() + 1);
            true
        };
        for (req, pay) in [
            (0, 22),
            (MAX_RTT_REQUESTS + 1, 22),
            (5, 3),
            (5, MAX_RTT_PAYLOAD + 1),
        ] {
            assert_eq!(
                p.on_frame(&start_frame(1, req, pay), &mut q),
                PingerAction::Taken
            );
        }
        let mut bad_magic = start_frame(1, 1, 22);
        bad_magic[42] = b'X';
        let mut ip = Ipv4Packet::new_unchecked(&mut bad_magic[14..]);
        UdpPacket::new_unchecked(ip.payload_mut())
            .fill_checksum(&IpAddress::Ipv4(GUEST_IP), &IpAddress::Ipv4(HOST_IP));
        p.on_frame(&bad_magic, &mut q);
        assert_eq!(p.refused, 5);
        assert_eq!(n.get(), 0);
        assert!(log.runs().is_empty());
        // Not to our port: not the pinger's.
        let mut other = start_frame(1, 1, 22);
        other[36..38].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(p.on_frame(&other, &mut q), PingerAction::NotMine);
    }

    #[test]
    fn a_full_guest_queue_ends_the_run_with_the_loss_counted() {
        let log = HostRttLog::new();
        let mut p = HostPinger::new(log.clone(), HOST_MAC, HOST_IP);
        let mut q = |_: &[u8]| false;
        p.on_frame(&start_frame(9, 10, 22), &mut q);
        let run = &log.runs()[0];
        assert_eq!((run.lost, run.samples_ns.len()), (1, 0));
    }
}
