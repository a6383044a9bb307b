//! The PV network device: `NetInfo`, `NetSend` and the transmit and receive rings, over a
//! host network backend ([`pvkit_net::NetBackend`]: the TAP device or the loopback
//! responder). The frame handling is `pvkit-pv`'s ([`pvkit_pv::NetDevice`]); this file wires
//! it to the bus and to the backend.
//!
//! # Registration (for the VMM builder)
//!
//! ```ignore
//! let net = Arc::new(PvNet::new(backend, mac));
//! bus.insert(net.clone())?;              // before `with_rings`
//! // if `net.raw_fd()` is Some (TAP): when it is readable, call
//! net.poll_backend(&mem);                // pulls frames, fills posted RX buffers
//! ```
//!
//! # Where received frames come from
//!
//! The device owns both ring consumers (the [`Queue`]s it hands to the rings are handles
//! to them), so that every service can move frames both ways: a transmit service (doorbell,
//! eventfd, poll, `RingKick`) and `NetSend` pull whatever the backend has ready afterwards
//! and fill posted receive buffers — a loopback reply is in the guest's buffer when the
//! doorbell `out` completes. A receive service (the guest kicks the RX queue, or a polled
//! RX ring) pulls from the backend too, if it has no file descriptor (loopback). A backend
//! with one (TAP) is read only by the VMM's event loop, through [`PvNet::poll_backend`]
//! (the vCPU threads' seccomp filter allows no read of it); a receive service then only
//! fills posted buffers with the frames already waiting.
//!
//! Lock order: the ring's slot, then the device.
//!
//! A registration the rings then refuse (e.g. no ioeventfd could be attached) still
//! replaced the device's consumer: the guest was told the registration failed and must
//! register again before using the ring.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::net::{NetInfo, MTU};
use pvkit_abi::ring::{QueueId, NET_RX_QUEUE, NET_TX_QUEUE};
use pvkit_abi::Status;
use pvkit_net::{NetBackend, NetCounters};
use pvkit_pv::{Batch, NetDevice, NetRxRing, NetStats, NetTxRing, RingError, RingState};

use super::net_rx::PvNetStats;
use super::ring_irq::RingIrqLine;
use super::rings::Queue;
use super::{CallCtx, PvDevice, QueueSpec};
use crate::runtime::sync::lock;
use crate::vstate::memory::GuestRam;

/// Ledger name of the transmit ring's in-kernel notifications (ioeventfd signals).
pub const NOTIFY_NET_TX_RING: &str = "net tx ring";
/// Ledger name of the receive ring's in-kernel notifications (ioeventfd signals).
pub const NOTIFY_NET_RX_RING: &str = "net rx ring";

const QUEUES: &[QueueSpec] = &[
    QueueSpec {
        queue: NET_TX_QUEUE,
        feature: Features::NET_RING,
        notifier: NOTIFY_NET_TX_RING,
    },
    QueueSpec {
        queue: NET_RX_QUEUE,
        feature: Features::NET_RING,
        notifier: NOTIFY_NET_RX_RING,
    },
];

/// The device state behind one lock: frames, backend and both rings.
struct NetShared {
    dev: NetDevice,
    backend: Box<dyn NetBackend>,
    tx: Option<NetTxRing>,
    rx: Option<NetRxRing>,
    /// The completion interrupts the guest bound the rings to.
    tx_irq: Option<Arc<RingIrqLine>>,
    rx_irq: Option<Arc<RingIrqLine>>,
    /// Edges raised on them.
    irqs_raised: u64,
}

impl NetShared {
    /// Pulls what a synchronous backend (no fd: the loopback responder, whose answers exist
    /// as soon as the frame was sent) has ready. A backend with an fd (TAP) is read only by
    /// the event loop ([`PvNet::poll_backend`]): never on a vCPU thread, whose seccomp
    /// filter does not allow it.
    fn pull_sync(&mut self) -> u64 {
        if self.backend.raw_fd().is_some() {
            return 0;
        }
        self.pull()
    }

    /// Pulls what the backend has ready into the wait queue (bounded).
    fn pull(&mut self) -> u64 {
        let backend = &mut self.backend;
        self.dev
            .pull_rx(&mut |buf| backend.recv(buf).ok().flatten())
    }

    /// Pulls from the backend and fills posted receive buffers; no ring: nothing.
    fn receive(&mut self, mem: &GuestRam) -> Result<Batch, RingError> {
        self.pull_sync();
        self.fill_rx(mem)
    }

    /// Copies waiting frames into posted receive buffers and raises the RX interrupt if
    /// the guest asked for one; no (or a broken) ring: nothing.
    fn fill_rx(&mut self, mem: &GuestRam) -> Result<Batch, RingError> {
        let batch = match self.rx.as_mut() {
            Some(rx) if !rx.is_broken() => self.dev.service_rx(mem, rx)?,
            Some(_) => return Err(RingError::Broken),
            None => return Ok(Batch::default()),
        };
        if batch.notify {
            Self::raise(&self.rx_irq, &mut self.irqs_raised);
        }
        Ok(batch)
    }

    fn raise(line: &Option<Arc<RingIrqLine>>, count: &mut u64) {
        if let Some(l) = line {
            l.raise();
            *count = count.saturating_add(1);
        }
    }

    /// Serves the transmit ring, then delivers what the backend answered.
    fn transmit(&mut self, mem: &GuestRam) -> Result<Batch, RingError> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(RingError::Broken);
        };
        let backend = &mut self.backend;
        let batch = self.dev.service_tx(mem, tx, &mut |f| {
            // A dropped frame is a lost packet; the backend counts it.
            let _ = backend.send(f);
        });
        if batch.as_ref().is_ok_and(|b| b.notify) {
            Self::raise(&self.tx_irq, &mut self.irqs_raised);
        }
        // Replies go out even if the TX ring just broke.
        let _ = self.receive(mem);
        batch
    }

    fn ring_mut(&mut self, dir: Dir) -> Option<RingRef<'_>> {
        match dir {
            Dir::Tx => self.tx.as_mut().map(RingRef::Tx),
            Dir::Rx => self.rx.as_mut().map(RingRef::Rx),
        }
    }
}

enum RingRef<'a> {
    Tx(&'a mut NetTxRing),
    Rx(&'a mut NetRxRing),
}

impl RingRef<'_> {
    fn gpa(&self) -> u64 {
        match self {
            RingRef::Tx(r) => r.gpa(),
            RingRef::Rx(r) => r.gpa(),
        }
    }

    fn consumed(&self) -> u32 {
        match self {
            RingRef::Tx(r) => r.consumed(),
            RingRef::Rx(r) => r.consumed(),
        }
    }

    fn is_broken(&self) -> bool {
        match self {
            RingRef::Tx(r) => r.is_broken(),
            RingRef::Rx(r) => r.is_broken(),
        }
    }

    fn set_polling(&mut self, mem: &GuestRam, on: bool) -> Result<(), RingError> {
        match self {
            RingRef::Tx(r) => r.set_polling(mem, on),
            RingRef::Rx(r) => r.set_polling(mem, on),
        }
    }
}

/// Which ring a [`NetQueue`] handle stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Tx,
    Rx,
}

/// The [`Queue`] the rings keep for a net ring: a handle to the device's consumer.
struct NetQueue {
    shared: Arc<Mutex<NetShared>>,
    dir: Dir,
}

impl std::fmt::Debug for NetQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetQueue")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Queue for NetQueue {
    fn service(&mut self, mem: &GuestRam) -> Result<Batch, RingError> {
        let mut s = lock(&self.shared);
        match self.dir {
            Dir::Tx => s.transmit(mem),
            Dir::Rx => {
                if s.rx.is_none() {
                    return Err(RingError::Broken);
                }
                s.receive(mem)
            }
        }
    }

    fn gpa(&self) -> u64 {
        lock(&self.shared).ring_mut(self.dir).map_or(0, |r| r.gpa())
    }

    fn consumed(&self) -> u32 {
        lock(&self.shared)
            .ring_mut(self.dir)
            .map_or(0, |r| r.consumed())
    }

    fn is_broken(&self) -> bool {
        lock(&self.shared)
            .ring_mut(self.dir)
            .is_none_or(|r| r.is_broken())
    }

    fn set_service_budget(&mut self) {
        // `NetDevice` bounds every service itself (`SERVICE_FRAMES`, below the rings'
        // `SERVICE_REQUESTS`).
    }

    fn set_polling(&mut self, mem: &GuestRam, on: bool) -> Result<(), RingError> {
        match lock(&self.shared).ring_mut(self.dir) {
            Some(mut r) => r.set_polling(mem, on),
            None => Err(RingError::Broken),
        }
    }

    fn set_interrupt(&mut self, line: Option<Arc<RingIrqLine>>) {
        let mut s = lock(&self.shared);
        match self.dir {
            Dir::Tx => s.tx_irq = line,
            Dir::Rx => s.rx_irq = line,
        }
    }

    fn save(&self) -> Option<(RingState, u64)> {
        let mut s = lock(&self.shared);
        match s.ring_mut(self.dir)? {
            RingRef::Tx(r) => Some((r.state(), r.ring_bytes() as u64)),
            RingRef::Rx(r) => Some((r.state(), r.ring_bytes() as u64)),
        }
    }

    fn restore(&mut self, mem: &GuestRam, state: &RingState) -> Result<(), String> {
        let mut s = lock(&self.shared);
        match self.dir {
            Dir::Tx => {
                let ring = NetTxRing::from_state(mem, state).map_err(|e| e.to_string())?;
                ring.publish_host_flags(mem).map_err(|e| e.to_string())?;
                s.tx = Some(ring);
            }
            Dir::Rx => {
                let ring = NetRxRing::from_state(mem, state).map_err(|e| e.to_string())?;
                ring.publish_host_flags(mem).map_err(|e| e.to_string())?;
                s.rx = Some(ring);
            }
        }
        Ok(())
    }
}

/// The PV network device over one host backend.
pub struct PvNet {
    shared: Arc<Mutex<NetShared>>,
    info: NetInfo,
    fd: Option<RawFd>,
    backend_events: AtomicU64,
}

impl std::fmt::Debug for PvNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvNet")
            .field("info", &self.info)
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

/// What a [`PvNet::poll_backend`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetPoll {
    /// Frames taken from the backend (queued or dropped).
    pub pulled: u64,
    /// Frames delivered into guest buffers.
    pub delivered: u64,
    /// Frames still waiting for guest buffers.
    pub waiting: usize,
}

impl PvNet {
    /// The PV NIC with MAC address `mac` (unicast) over `backend`. Register it on the
    /// [`super::HypercallBus`] before the rings are set up.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        let fd = backend.raw_fd();
        Self {
            shared: Arc::new(Mutex::new(NetShared {
                dev: NetDevice::new(),
                backend,
                tx: None,
                rx: None,
                tx_irq: None,
                rx_irq: None,
                irqs_raised: 0,
            })),
            info: NetInfo {
                mac,
                mtu: MTU as u16,
            },
            fd,
            backend_events: AtomicU64::new(0),
        }
    }

    /// The backend's file descriptor, readable when frames may be waiting (TAP); `None`
    /// when frames appear only in answer to transmitted ones (loopback).
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd
    }

    /// For the event loop when [`PvNet::raw_fd`] is readable (or periodically): pulls the
    /// frames the backend has ready (at most `pvkit_pv::net::SERVICE_FRAMES`) and copies
    /// waiting frames into the guest's posted receive buffers. Never blocks. A broken or
    /// unregistered receive ring leaves the frames waiting (and later ones dropped).
    pub fn poll_backend(&self, mem: &GuestRam) -> NetPoll {
        self.backend_events.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.shared);
        let pulled = s.pull();
        let delivered = s.fill_rx(mem).map_or(0, |b| b.requests);
        NetPoll {
            pulled,
            delivered,
            waiting: s.dev.rx_waiting(),
        }
    }

    /// The device's counters and the backend's.
    pub fn stats(&self) -> (NetStats, NetCounters) {
        let s = lock(&self.shared);
        (s.dev.stats(), s.backend.counters())
    }

    /// The counters of a run ([`PvNetStats`]).
    pub fn run_stats(&self) -> PvNetStats {
        let s = lock(&self.shared);
        PvNetStats {
            device: s.dev.stats(),
            backend: s.backend.counters(),
            irqs_raised: s.irqs_raised,
            backend_events: self.backend_events.load(Ordering::Relaxed),
        }
    }

    /// The MAC address and MTU the guest is told.
    pub fn info(&self) -> NetInfo {
        self.info
    }
}

impl PvDevice for PvNet {
    fn name(&self) -> &'static str {
        "net"
    }

    fn features(&self) -> Features {
        Features::NET
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        &[Hypercall::NetInfo, Hypercall::NetSend]
    }

    fn queues(&self) -> &'static [QueueSpec] {
        QUEUES
    }

    fn call(&self, ctx: &CallCtx<'_>, call: Hypercall, args: [u64; 4]) -> CallReturn {
        let [addr, len, _, _] = args;
        match call {
            Hypercall::NetInfo => CallReturn::ok(self.info.to_u64()),
            Hypercall::NetSend => {
                let mut guard = ctx.vcpu_lock(&self.shared);
                let s = &mut *guard;
                let backend = &mut s.backend;
                let r = s.dev.send(ctx.mem, addr, len, &mut |f| {
                    let _ = backend.send(f);
                });
                // Deliver what the backend answered into posted buffers, if any.
                let _ = s.receive(ctx.mem);
                match r {
                    Ok(n) => CallReturn::ok(u64::from(n)),
                    Err(e) => CallReturn::err(e.status()),
                }
            }
            _ => CallReturn::err(Status::EOPNOTSUPP),
        }
    }

    fn open_queue(
        &self,
        mem: &GuestRam,
        queue: QueueId,
        addr: u64,
        len: u64,
    ) -> Result<Box<dyn Queue>, Status> {
        let dir = match queue {
            NET_TX_QUEUE => Dir::Tx,
            NET_RX_QUEUE => Dir::Rx,
            _ => return Err(Status::EOPNOTSUPP),
        };
        let mut s = lock(&self.shared);
        match dir {
            Dir::Tx => s.tx = Some(NetTxRing::new(mem, addr, len).map_err(|e| e.status())?),
            Dir::Rx => s.rx = Some(NetRxRing::new(mem, addr, len).map_err(|e| e.status())?),
        }
        Ok(Box::new(NetQueue {
            shared: Arc::clone(&self.shared),
            dir,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use pvkit_abi::net::{NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse};
    use pvkit_abi::ring::{RegionId, Transport};
    use pvkit_net::loopback::{LoopbackBackend, LoopbackMode, ResponderConfig};
    use pvkit_pv::test_utils::GuestProducer;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::pv::ring_irq::RingIrqs;
    use crate::devices::pv::{HypercallBus, RingsConfig};
    use crate::exit::ledger::ExitLedger;
    use crate::vstate::memory::create_ram;
    use pvkit_abi::ring::BLOCK_QUEUE;

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    const TX: u64 = 0x10_0000;
    const RX: u64 = 0x11_0000;
    const FRAME: u64 = 0x20_0000;
    const BUF: u64 = 0x21_0000;

    /// An ARP request from the guest (10.0.0.2) for 10.0.0.1, written out by hand.
    fn arp_request() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f
    }

    /// The reply the host 10.0.0.1 at HOST_MAC must send, written out by hand.
    fn arp_reply() -> Vec<u8> {
        let mut f = GUEST_MAC.to_vec();
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f
    }

    struct H {
        mem: GuestRam,
        bus: HypercallBus,
        ledger: ExitLedger,
        net: Arc<PvNet>,
    }

    impl H {
        fn call(&self, h: Hypercall, args: [u64; 4]) -> CallReturn {
            self.bus.dispatch(&self.mem, &self.ledger, 0, h, args)
        }
    }

    fn harness() -> H {
        harness_on(create_ram(8).unwrap())
    }

    /// A device and bus over `mem` (a restore: the same guest RAM, a new VMM side).
    fn harness_on(mem: GuestRam) -> H {
        let backend = LoopbackBackend::new(
            LoopbackMode::Responder(ResponderConfig {
                mac: HOST_MAC,
                ip: Ipv4Addr::new(10, 0, 0, 1),
                udp_echo_port: 7,
            }),
            16,
        )
        .unwrap();
        let net = Arc::new(PvNet::new(Box::new(backend), GUEST_MAC));
        let mut bus = HypercallBus::new();
        bus.insert(net.clone()).unwrap();
        let mut ledger = ExitLedger::new();
        bus.with_rings(
            mem.clone(),
            RingsConfig {
                ioevents: None,
                on_fatal: Arc::new(|m| panic!("{m}")),
            },
            &mut ledger,
        )
        .unwrap();
        H {
            mem,
            bus,
            ledger,
            net,
        }
    }

    type TxP = GuestProducer<NetTxRequest, NetTxResponse>;
    type RxP = GuestProducer<NetRxRequest, NetRxResponse>;

    fn rings(h: &H) -> (TxP, RxP) {
        let tx = TxP::init(&h.mem, TX, 8, 0).unwrap();
        let rx = RxP::init(&h.mem, RX, 8, 0).unwrap();
        let doorbell = Transport::Doorbell as u64;
        for (q, gpa) in [(NET_TX_QUEUE, TX), (NET_RX_QUEUE, RX)] {
            let r = h.call(
                Hypercall::RegisterRegion,
                [RegionId::Queue(q).to_u64(), gpa, 0x1000, doorbell],
            );
            assert_eq!(r, CallReturn::ok(0));
        }
        (tx, rx)
    }

    #[test]
    fn features_and_info() {
        let h = harness();
        assert!(h
            .bus
            .features()
            .contains(Features::NET | Features::NET_RING));
        let r = h.call(Hypercall::NetInfo, [0; 4]);
        assert_eq!(r, CallReturn::ok(0x05dc_5634_1200_5452));
        assert_eq!(h.net.raw_fd(), None);
    }

    #[test]
    fn arp_through_the_tx_ring_comes_back_in_a_posted_rx_buffer() {
        let h = harness();
        let (mut tx, mut rx) = rings(&h);
        rx.push(
            &h.mem,
            NetRxRequest {
                addr: BUF,
                capacity: 1514,
                id: 7,
            },
        )
        .unwrap();
        // The ring is empty of frames: the first post after registration notifies.
        assert!(rx.publish(&h.mem).unwrap());
        let req = arp_request();
        h.mem.write_slice(&req, GuestAddress(FRAME)).unwrap();
        tx.push(
            &h.mem,
            NetTxRequest {
                addr: FRAME,
                len: req.len() as u32,
                id: 1,
            },
        )
        .unwrap();
        assert!(tx.publish(&h.mem).unwrap());
        // The doorbell (here: RingKick, the same service on the vCPU thread).
        let r = h.call(
            Hypercall::RingKick,
            [u64::from(NET_TX_QUEUE.to_u32()), 0, 0, 0],
        );
        assert_eq!(r, CallReturn::ok(1));
        let t = tx.take_responses(&h.mem).unwrap();
        assert_eq!(
            t,
            vec![NetTxResponse {
                status: 0,
                id: 1,
                len: 42
            }]
        );
        let got = rx.take_responses(&h.mem).unwrap();
        assert_eq!(
            got,
            vec![NetRxResponse {
                status: 0,
                id: 7,
                len: 42
            }]
        );
        let mut buf = vec![0u8; 42];
        h.mem.read_slice(&mut buf, GuestAddress(BUF)).unwrap();
        assert_eq!(buf, arp_reply());
        let (dev, backend) = h.net.stats();
        assert_eq!((dev.tx_frames, dev.rx_frames), (1, 1));
        assert_eq!((backend.tx_frames, backend.rx_frames), (1, 1));
    }

    /// One ARP round trip through the rings: a posted RX buffer `id`, a TX frame `id`.
    fn arp_round_trip(h: &H, tx: &mut TxP, rx: &mut RxP, id: u32) {
        rx.push(
            &h.mem,
            NetRxRequest {
                addr: BUF,
                capacity: 1514,
                id,
            },
        )
        .unwrap();
        rx.publish(&h.mem).unwrap();
        let req = arp_request();
        h.mem.write_slice(&req, GuestAddress(FRAME)).unwrap();
        tx.push(
            &h.mem,
            NetTxRequest {
                addr: FRAME,
                len: req.len() as u32,
                id,
            },
        )
        .unwrap();
        tx.publish(&h.mem).unwrap();
        let r = h.call(
            Hypercall::RingKick,
            [u64::from(NET_TX_QUEUE.to_u32()), 0, 0, 0],
        );
        assert_eq!(r, CallReturn::ok(1));
        let t = tx.take_responses(&h.mem).unwrap();
        assert_eq!(t.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
        let got = rx.take_responses(&h.mem).unwrap();
        assert_eq!(
            got.iter().map(|r| (r.id, r.len)).collect::<Vec<_>>(),
            vec![(id, 42)]
        );
    }

    #[test]
    fn both_rings_are_saved_and_a_new_device_continues_them() {
        let h = harness();
        let (mut tx, mut rx) = rings(&h);
        arp_round_trip(&h, &mut tx, &mut rx, 1);
        let saved = h.bus.rings().unwrap().frozen(|s| s).unwrap();
        assert_eq!(saved.len(), 2, "{saved:?}");
        assert!(saved.iter().all(|s| s.ring.consumed == 1 && s.irq_gsi == 0));
        // The restored side: a new device and bus over the same RAM, the rings reopened
        // through the device; the guest's producers go on as if nothing happened.
        let h2 = harness_on(h.mem.clone());
        for s in &saved {
            h2.bus.restore_ring(&h2.mem, s).unwrap();
        }
        arp_round_trip(&h2, &mut tx, &mut rx, 2);
        let (dev, _) = h2.net.stats();
        assert_eq!((dev.tx_frames, dev.rx_frames), (1, 1), "counters restart");
        // A saved ring that does not fit (not 4 KiB aligned) is refused.
        let mut bad = saved[0].clone();
        bad.ring.gpa += 8;
        let h3 = harness_on(h.mem.clone());
        assert!(h3.bus.restore_ring(&h3.mem, &bad).is_err());
    }

    #[test]
    fn net_send_delivers_the_reply_later_when_buffers_are_posted() {
        let h = harness();
        let (_tx, mut rx) = rings(&h);
        let req = arp_request();
        h.mem.write_slice(&req, GuestAddress(FRAME)).unwrap();
        let r = h.call(Hypercall::NetSend, [FRAME, 42, 0, 0]);
        assert_eq!(r, CallReturn::ok(42));
        // No buffer posted yet: the reply waits on the host.
        assert_eq!(
            h.net.poll_backend(&h.mem),
            NetPoll {
                pulled: 0,
                delivered: 0,
                waiting: 1
            }
        );
        rx.push(
            &h.mem,
            NetRxRequest {
                addr: BUF,
                capacity: 1514,
                id: 3,
            },
        )
        .unwrap();
        assert!(rx.publish(&h.mem).unwrap());
        let r = h.call(
            Hypercall::RingKick,
            [u64::from(NET_RX_QUEUE.to_u32()), 0, 0, 0],
        );
        assert_eq!(r, CallReturn::ok(1));
        let got = rx.take_responses(&h.mem).unwrap();
        assert_eq!(
            got,
            vec![NetRxResponse {
                status: 0,
                id: 3,
                len: 42
            }]
        );
        let mut buf = vec![0u8; 42];
        h.mem.read_slice(&mut buf, GuestAddress(BUF)).unwrap();
        assert_eq!(buf, arp_reply());
    }

    #[test]
    fn rx_interrupt_is_raised_once_per_armed_batch_and_binding_is_checked() {
        let mut h = harness();
        let irqs = Arc::new(RingIrqs::unconnected().unwrap());
        h.bus.set_ring_irqs(Arc::clone(&irqs));
        assert!(h.bus.features().contains(Features::RING_IRQ));
        let rx_id = u64::from(NET_RX_QUEUE.to_u32());
        // Outside the GSI range, unknown flags, unknown queue.
        for (args, status) in [
            ([rx_id, 15, 0, 0], Status::EINVAL),
            ([rx_id, 24, 0, 0], Status::EINVAL),
            ([rx_id, 16, 1, 0], Status::EINVAL),
            (
                [u64::from(BLOCK_QUEUE.to_u32()), 16, 0, 0],
                Status::EOPNOTSUPP,
            ),
        ] {
            assert_eq!(
                h.call(Hypercall::QueueInterrupt, args),
                CallReturn::err(status)
            );
        }
        // Bound before the ring is registered: the binding applies to the registration.
        assert_eq!(
            h.call(Hypercall::QueueInterrupt, [rx_id, 17, 0, 0]),
            CallReturn::ok(0)
        );
        let (_tx, mut rx) = rings(&h);
        for id in 0..4 {
            rx.push(
                &h.mem,
                NetRxRequest {
                    addr: BUF + u64::from(id) * 0x800,
                    capacity: 1514,
                    id,
                },
            )
            .unwrap();
        }
        rx.publish(&h.mem).unwrap();
        let req = arp_request();
        h.mem.write_slice(&req, GuestAddress(FRAME)).unwrap();
        // rsp_event starts armed (rsp_prod + 1): two replies in one service, one edge.
        for _ in 0..2 {
            h.call(Hypercall::NetSend, [FRAME, 42, 0, 0]);
        }
        let line = irqs.line(17).unwrap();
        assert_eq!(line.take_signals(), 1);
        assert_eq!(h.net.run_stats().irqs_raised, 1);
        // Not re-armed: silent.
        h.call(Hypercall::NetSend, [FRAME, 42, 0, 0]);
        assert_eq!(line.take_signals(), 0);
        // Unbound (GSI 0): silent even when armed.
        assert_eq!(
            h.call(Hypercall::QueueInterrupt, [rx_id, 0, 0, 0]),
            CallReturn::ok(0)
        );
        h.mem
            .store(
                4u32,
                GuestAddress(RX + pvkit_abi::ring::offsets::RSP_EVENT),
                std::sync::atomic::Ordering::SeqCst,
            )
            .unwrap();
        h.call(Hypercall::NetSend, [FRAME, 42, 0, 0]);
        assert_eq!(line.take_signals(), 0);
        assert_eq!(irqs.raised(), 1);
        assert_eq!(rx.take_responses(&h.mem).unwrap().len(), 4);
    }

    #[test]
    fn a_guest_that_never_posts_rx_buffers_costs_a_bounded_queue_and_a_counter() {
        let h = harness();
        let (_tx, _rx) = rings(&h);
        let req = arp_request();
        h.mem.write_slice(&req, GuestAddress(FRAME)).unwrap();
        // Every ARP request gets a reply; no buffer is ever posted.
        let sent = pvkit_pv::net::RX_QUEUE_FRAMES as u64 + 36;
        for _ in 0..sent {
            assert_eq!(
                h.call(Hypercall::NetSend, [FRAME, 42, 0, 0]),
                CallReturn::ok(42)
            );
        }
        let p = h.net.poll_backend(&h.mem);
        assert_eq!(p.waiting, pvkit_pv::net::RX_QUEUE_FRAMES);
        let s = h.net.run_stats();
        assert_eq!(s.device.rx_frames, 0);
        assert_eq!(s.device.rx_dropped_no_buffer, 36);
        assert_eq!(s.device.tx_frames, sent);
        assert_eq!(s.backend_events, 1);
    }

    #[test]
    fn net_send_refuses_bad_frames() {
        let h = harness();
        assert_eq!(
            h.call(Hypercall::NetSend, [FRAME, 1515, 0, 0]),
            CallReturn::err(Status::E2BIG)
        );
        assert_eq!(
            h.call(Hypercall::NetSend, [FRAME, 13, 0, 0]),
            CallReturn::err(Status::EINVAL)
        );
        assert_eq!(
            h.call(Hypercall::NetSend, [u64::MAX - 8, 60, 0, 0]),
            CallReturn::err(Status::EFAULT)
        );
        let (dev, backend) = h.net.stats();
        assert_eq!((dev.tx_refused, backend.tx_frames), (3, 0));
    }
}
