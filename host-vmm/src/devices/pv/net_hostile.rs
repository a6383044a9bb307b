//! The PV network device ([`super::net::PvNet`]) against a hostile guest and a hostile host
//! side, over in-memory guest RAM and the real hypercall bus: corrupt ring indices,
//! oversize and undersize descriptors, buffers outside RAM, a guest that never posts
//! receive buffers while the host floods, and frames longer than the MTU from the backend.
//! Each case asserts a clear status, that the device keeps serving what is valid, and
//! that the work and memory of each service are bounded (`SERVICE_FRAMES`,
//! `RX_QUEUE_FRAMES`).

use std::sync::{Arc, Mutex};

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::net::{NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse};
use pvkit_abi::ring::{offsets, RegionId, Transport, BROKEN, NET_RX_QUEUE, NET_TX_QUEUE};
use pvkit_abi::Status;
use pvkit_net::{BackendError, NetBackend, NetCounters, TxOutcome, MAX_FRAME_LEN};
use pvkit_pv::net::{RX_QUEUE_FRAMES, SERVICE_FRAMES};
use pvkit_pv::test_utils::GuestProducer;
use vm_memory::{Bytes, GuestAddress};

use super::net::PvNet;
use crate::devices::pv::{HypercallBus, RingsConfig};
use crate::exit::ledger::ExitLedger;
use crate::vstate::memory::{create_ram, GuestRam};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Guest RAM: 8 MiB.
const RAM: u64 = 8 << 20;
const TX: u64 = 0x10_0000;
const RX: u64 = 0x11_0000;
const FRAME: u64 = 0x20_0000;
const BUF: u64 = 0x21_0000;

/// What the backend does when the device asks it for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Nothing to receive.
    Quiet,
    /// A 60-byte broadcast frame, every time, without end (a flooding peer).
    Flood,
    /// Claims a frame of this many bytes (a backend that lies about the length).
    Claims(usize),
}

/// A backend that records what the guest sent and receives per [`Source`].
#[derive(Debug)]
struct Hostile {
    source: Source,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    recv_calls: Arc<Mutex<u64>>,
}

impl NetBackend for Hostile {
    fn send(&mut self, frame: &[u8]) -> TxOutcome {
        self.sent.lock().unwrap().push(frame.to_vec());
        TxOutcome::Sent
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        *self.recv_calls.lock().unwrap() += 1;
        match self.source {
            Source::Quiet => Ok(None),
            Source::Flood => {
                let f = buf.get_mut(..60).expect("a frame buffer");
                f.fill(0x5a);
                f[..6].fill(0xff);
                Ok(Some(60))
            }
            Source::Claims(n) => Ok(Some(n)),
        }
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn counters(&self) -> NetCounters {
        NetCounters::default()
    }
}

struct H {
    mem: GuestRam,
    bus: HypercallBus,
    ledger: ExitLedger,
    net: Arc<PvNet>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    recv_calls: Arc<Mutex<u64>>,
}

type TxP = GuestProducer<NetTxRequest, NetTxResponse>;
type RxP = GuestProducer<NetRxRequest, NetRxResponse>;

impl H {
    fn new(source: Source) -> Self {
        let mem = create_ram(RAM >> 20).unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let recv_calls = Arc::new(Mutex::new(0));
        let backend = Hostile {
            source,
            sent: Arc::clone(&sent),
            recv_calls: Arc::clone(&recv_calls),
        };
        let net = Arc::new(PvNet::new(Box::new(backend), MAC));
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
        Self {
            mem,
            bus,
            ledger,
            net,
            sent,
            recv_calls,
        }
    }

    fn call(&self, h: Hypercall, args: [u64; 4]) -> CallReturn {
        self.bus.dispatch(&self.mem, &self.ledger, 0, h, args)
    }

    /// Both rings registered, 8 slots each, doorbell transport.
    fn rings(&self) -> (TxP, RxP) {
        let tx = TxP::init(&self.mem, TX, 8, 0).unwrap();
        let rx = RxP::init(&self.mem, RX, 8, 0).unwrap();
        for (q, gpa) in [(NET_TX_QUEUE, TX), (NET_RX_QUEUE, RX)] {
            let r = self.call(
                Hypercall::RegisterRegion,
                [
                    RegionId::Queue(q).to_u64(),
                    gpa,
                    0x1000,
                    Transport::Doorbell as u64,
                ],
            );
            assert_eq!(r, CallReturn::ok(0));
        }
        (tx, rx)
    }

    fn kick_tx(&self) -> CallReturn {
        self.call(
            Hypercall::RingKick,
            [u64::from(NET_TX_QUEUE.to_u32()), 0, 0, 0],
        )
    }

    fn kick_rx(&self) -> CallReturn {
        self.call(
            Hypercall::RingKick,
            [u64::from(NET_RX_QUEUE.to_u32()), 0, 0, 0],
        )
    }

    fn host_flags(&self, ring: u64) -> u32 {
        self.mem
            .read_obj(GuestAddress(ring + offsets::HOST_FLAGS))
            .unwrap()
    }

    fn sent(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
}

fn tx_req(addr: u64, len: u32, id: u32) -> NetTxRequest {
    NetTxRequest { addr, len, id }
}

/// A `req_prod` that runs more than the ring's size ahead of what the host consumed breaks
/// the ring: the kick answers an error, the ring says `BROKEN`, nothing is sent, later
/// kicks stay refused without work, and a NetSend still works (the device survives).
#[test]
fn corrupt_tx_index_breaks_only_that_ring() {
    let h = H::new(Source::Quiet);
    let (_tx, _rx) = h.rings();
    h.mem
        .write_obj(1000u32, GuestAddress(TX + offsets::REQ_PROD))
        .unwrap();
    let r = h.kick_tx();
    assert_ne!(r.status, Status::Ok, "{r:?}");
    assert_ne!(h.host_flags(TX) & BROKEN, 0, "the ring is marked broken");
    assert_eq!(h.sent(), 0);
    for _ in 0..3 {
        assert_eq!(h.kick_tx(), r, "a broken ring stays refused, the same way");
    }
    // The RX ring and the synchronous path are untouched.
    assert_eq!(h.host_flags(RX) & BROKEN, 0);
    h.mem.write_slice(&[0xab; 60], GuestAddress(FRAME)).unwrap();
    assert_eq!(
        h.call(Hypercall::NetSend, [FRAME, 60, 0, 0]),
        CallReturn::ok(60)
    );
    assert_eq!(h.sent(), 1);
}

/// The same for the receive ring: a corrupt RX `req_prod` (here `u32::MAX`, a wrap far
/// behind) breaks it; no frame is written anywhere in guest RAM.
#[test]
fn corrupt_rx_index_breaks_the_receive_ring() {
    let h = H::new(Source::Flood);
    let (_tx, _rx) = h.rings();
    h.mem
        .write_obj(u32::MAX, GuestAddress(RX + offsets::REQ_PROD))
        .unwrap();
    let r = h.kick_rx();
    assert_ne!(r.status, Status::Ok, "{r:?}");
    assert_ne!(h.host_flags(RX) & BROKEN, 0);
    assert_eq!(h.net.stats().0.rx_frames, 0);
}

/// Transmit descriptors: oversize (1515, 64 KiB, `u32::MAX`), undersize (0, 13) and
/// outside RAM (past the end, straddling it, `u64::MAX`) each get an error response with
/// their id; the valid one among them is sent byte-exact; the backend sees only it.
#[test]
fn bad_tx_descriptors_get_error_responses_and_valid_ones_still_go_out() {
    let h = H::new(Source::Quiet);
    let (mut tx, _rx) = h.rings();
    let good: Vec<u8> = (0..100u8).collect();
    h.mem.write_slice(&good, GuestAddress(FRAME)).unwrap();
    let reqs = [
        tx_req(FRAME, 1515, 1),
        tx_req(FRAME, 65536, 2),
        tx_req(FRAME, u32::MAX, 3),
        tx_req(FRAME, 0, 4),
        tx_req(FRAME, 13, 5),
        tx_req(RAM, 60, 6),
        tx_req(RAM - 30, 60, 7),
        tx_req(u64::MAX - 10, 60, 8),
    ];
    for r in reqs.iter().take(7) {
        tx.push(&h.mem, *r).unwrap();
    }
    tx.push(&h.mem, tx_req(FRAME, 100, 9)).unwrap();
    tx.publish(&h.mem).unwrap();
    assert_eq!(h.kick_tx(), CallReturn::ok(8));
    let mut rsp = tx.take_responses(&h.mem).unwrap();
    tx.push(&h.mem, reqs[7]).unwrap();
    tx.publish(&h.mem).unwrap();
    assert_eq!(h.kick_tx(), CallReturn::ok(1));
    rsp.extend(tx.take_responses(&h.mem).unwrap());
    let status = |id: u32| {
        let r = rsp.iter().find(|r| r.id == id).expect("a response per id");
        r.status().ok()
    };
    for id in [1, 2, 3] {
        assert_eq!(status(id), Some(Status::E2BIG), "id {id}: {rsp:?}");
    }
    for id in [4, 5] {
        assert_eq!(status(id), Some(Status::EINVAL), "id {id}: {rsp:?}");
    }
    for id in [6, 7, 8] {
        assert_eq!(status(id), Some(Status::EFAULT), "id {id}: {rsp:?}");
    }
    assert_eq!(status(9), Some(Status::Ok));
    assert_eq!(*h.sent.lock().unwrap(), vec![good]);
    let (dev, _) = h.net.stats();
    assert_eq!((dev.tx_frames, dev.tx_refused), (1, 8));
}

/// Receive buffers outside RAM or too small for the frame: the frame is dropped and
/// counted (`rx_dropped_bad_buffer`), the buffer answered with an error; nothing outside
/// the one valid buffer changes.
#[test]
fn bad_rx_buffers_drop_the_frame_and_answer_an_error() {
    let h = H::new(Source::Flood);
    let (_tx, mut rx) = h.rings();
    let before: Vec<u8> = {
        let mut b = vec![0u8; 0x1000];
        h.mem.read_slice(&mut b, GuestAddress(BUF)).unwrap();
        b
    };
    let bufs = [
        NetRxRequest {
            addr: RAM - 10,
            capacity: 1514,
            id: 1,
        },
        NetRxRequest {
            addr: u64::MAX - 100,
            capacity: 1514,
            id: 2,
        },
        NetRxRequest {
            addr: BUF,
            capacity: 10,
            id: 3,
        },
        NetRxRequest {
            addr: BUF + 0x800,
            capacity: 1514,
            id: 4,
        },
    ];
    for b in bufs {
        rx.push(&h.mem, b).unwrap();
    }
    rx.publish(&h.mem).unwrap();
    let r = h.kick_rx();
    assert_eq!(r.status, Status::Ok, "{r:?}");
    let rsp = rx.take_responses(&h.mem).unwrap();
    assert_eq!(rsp.len(), 4, "{rsp:?}");
    for x in rsp.iter().filter(|x| x.id != 4) {
        assert_ne!(x.status, 0, "buffer {} must be refused: {rsp:?}", x.id);
    }
    let ok: Vec<&NetRxResponse> = rsp.iter().filter(|x| x.id == 4).collect();
    assert_eq!((ok[0].status, ok[0].len), (0, 60));
    let mut after = vec![0u8; 0x1000];
    h.mem.read_slice(&mut after, GuestAddress(BUF)).unwrap();
    assert_eq!(
        after[..0x800],
        before[..0x800],
        "the too-small buffer is untouched"
    );
    let (dev, _) = h.net.stats();
    assert_eq!((dev.rx_frames, dev.rx_dropped_bad_buffer), (1, 3));
}

/// A guest that never posts receive buffers while the host floods: every poll returns
/// after at most `SERVICE_FRAMES` pulls, at most `RX_QUEUE_FRAMES` frames wait, the rest
/// are dropped and counted; nothing blocks and nothing grows.
#[test]
fn a_guest_that_never_drains_costs_bounded_work_and_memory() {
    let h = H::new(Source::Flood);
    let (_tx, _rx) = h.rings();
    for _ in 0..20 {
        let before = *h.recv_calls.lock().unwrap();
        let p = h.net.poll_backend(&h.mem);
        let calls = *h.recv_calls.lock().unwrap() - before;
        assert!(
            p.pulled <= SERVICE_FRAMES && calls <= SERVICE_FRAMES,
            "{p:?}"
        );
        assert_eq!(p.delivered, 0);
        assert!(p.waiting <= RX_QUEUE_FRAMES, "{p:?}");
    }
    // Every frame the flood handed in (one per receive call) is waiting or was dropped
    // and counted; the wait queue is full.
    let (dev, _) = h.net.stats();
    let handed_in = *h.recv_calls.lock().unwrap();
    assert_eq!(dev.rx_frames, 0);
    assert!(handed_in >= 20 * SERVICE_FRAMES, "{handed_in}");
    assert_eq!(
        dev.rx_dropped_no_buffer + RX_QUEUE_FRAMES as u64,
        handed_in,
        "{dev:?}"
    );
    // Kicking the empty RX ring is harmless and still finds no buffer.
    assert_eq!(h.kick_rx(), CallReturn::ok(0));
}

/// A backend that claims frames longer than the MTU (or longer than the buffer it was
/// given): each is dropped for its length and counted, never copied to the guest; polls
/// stay bounded.
#[test]
fn frames_longer_than_the_mtu_from_the_host_are_dropped_and_counted() {
    for claim in [MAX_FRAME_LEN + 1, 9000, usize::MAX] {
        let h = H::new(Source::Claims(claim));
        let (_tx, mut rx) = h.rings();
        rx.push(
            &h.mem,
            NetRxRequest {
                addr: BUF,
                capacity: 1514,
                id: 1,
            },
        )
        .unwrap();
        rx.publish(&h.mem).unwrap();
        let p = h.net.poll_backend(&h.mem);
        assert!(p.pulled <= SERVICE_FRAMES, "{claim}: {p:?}");
        assert_eq!((p.delivered, p.waiting), (0, 0), "{claim}: {p:?}");
        let (dev, _) = h.net.stats();
        assert_eq!(dev.rx_frames, 0, "{claim}");
        assert!(dev.rx_dropped_len >= 1, "{claim}: {dev:?}");
        assert!(rx.take_responses(&h.mem).unwrap().is_empty());
    }
}
