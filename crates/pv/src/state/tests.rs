//! Round trips of the PV device states: drive a device, save its state (through JSON),
//! rebuild it over a copy of guest RAM (and of the disk), then drive the original and the
//! rebuilt device with the same next requests; they must answer identically.

use std::sync::atomic::Ordering;

use proptest::prelude::*;
use pvkit_abi::block::{BlockOp, BlockRequest, BlockResponse, BlockSegment, MAX_SEGMENTS};
use pvkit_abi::clock::PvClock;
use pvkit_abi::console::{ConsoleRequest, ConsoleResponse};
use pvkit_abi::ring::{offsets, BROKEN, HOST_POLLING};
use pvkit_devices::MemBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::clock::{ClockSample, PvClockPage};
use crate::console::service_ring;
use crate::ring::RingConsumer;
use crate::test_utils::GuestProducer;
use crate::wire::Wire;

const RAM: usize = 1 << 20;
const RING: u64 = 0x1_0000;
const DATA: u64 = 0x4_0000;

type Mem = GuestMemoryMmap<()>;

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
}

fn ram(m: &Mem) -> Vec<u8> {
    let mut v = vec![0; RAM];
    m.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

fn through_json<T: Serialize + for<'de> Deserialize<'de>>(t: &T) -> T {
    serde_json::from_str(&serde_json::to_string(t).unwrap()).unwrap()
}

/// A guest step on a console ring.
#[derive(Debug, Clone)]
enum RingOp {
    /// Push `n` requests (as many as fit), then publish them.
    Produce(u8),
    /// The host services the ring.
    Poll,
    /// The guest takes the responses.
    Take,
    /// The host sets or clears `HOST_POLLING`.
    Polling(bool),
    /// The guest scribbles `req_prod` (a hostile guest; breaks the ring if far ahead).
    Scribble(u32),
}

fn ring_op() -> impl Strategy<Value = RingOp> {
    prop_oneof![
        (1u8..10).prop_map(RingOp::Produce),
        Just(RingOp::Poll),
        Just(RingOp::Take),
        any::<bool>().prop_map(RingOp::Polling),
        prop_oneof![1 => any::<u32>(), 3 => 0u32..4].prop_map(RingOp::Scribble),
    ]
}

type Producer = GuestProducer<ConsoleRequest, ConsoleResponse>;
type Ring = RingConsumer<ConsoleRequest, ConsoleResponse>;

/// One guest with its RAM, the guest half of a ring and the host consumer.
struct World {
    mem: Mem,
    producer: Producer,
    ring: Ring,
    next: u32,
}

impl World {
    fn new(size: u32, start: u32) -> Self {
        let mem = mem();
        let producer = Producer::init(&mem, RING, size, start).unwrap();
        let ring = Ring::new(&mem, RING, 4096).unwrap();
        Self {
            mem,
            producer,
            ring,
            next: 0,
        }
    }

    /// Applies `op` and returns what the guest and host saw, as text.
    fn apply(&mut self, op: &RingOp) -> String {
        match *op {
            RingOp::Produce(n) => {
                let mut pushed = 0;
                for _ in 0..n {
                    let id = self.next;
                    let r = ConsoleRequest {
                        addr: u64::from(id),
                        len: id,
                        id,
                    };
                    if self.producer.push(&self.mem, r).is_err() {
                        break;
                    }
                    self.next += 1;
                    pushed += 1;
                }
                format!(
                    "pushed {pushed}, notify {:?}",
                    self.producer.publish(&self.mem)
                )
            }
            RingOp::Poll => {
                let r = self.ring.poll(&self.mem, |q| ConsoleResponse {
                    status: 0,
                    id: q.id,
                    written: q.len.wrapping_mul(3),
                });
                format!("{r:?}")
            }
            RingOp::Take => format!("{:?}", self.producer.take_responses(&self.mem)),
            RingOp::Polling(on) => format!("{:?}", self.ring.set_polling(&self.mem, on)),
            RingOp::Scribble(ahead) => {
                let at = GuestAddress(RING + offsets::REQ_PROD);
                let v = self.ring.consumed().wrapping_add(ahead);
                self.mem.store(v, at, Ordering::Relaxed).unwrap();
                String::new()
            }
        }
    }
}

proptest! {
    /// Two identical guests run the same steps; at the save point the second one's
    /// consumer is replaced by one rebuilt from the first's saved state. From then on both
    /// must see the same polls, notifications and responses, and end with the same RAM.
    #[test]
    fn rebuilt_ring_behaves_like_the_original(
        size in prop::sample::select(vec![1u32, 2, 4, 8]),
        start in prop_oneof![Just(0u32), Just(u32::MAX - 3), any::<u32>()],
        before in prop::collection::vec(ring_op(), 0..25),
        after in prop::collection::vec(ring_op(), 1..25),
    ) {
        let mut original = World::new(size, start);
        let mut copy = World::new(size, start);
        for op in &before {
            prop_assert_eq!(copy.apply(op), original.apply(op));
        }
        prop_assert!(ram(&copy.mem) == ram(&original.mem));
        let state = through_json(&ConsoleState::save(Some(&original.ring)));
        copy.ring = state.restore(&copy.mem).unwrap().unwrap();
        prop_assert_eq!(copy.ring.state(), original.ring.state());
        for op in &after {
            prop_assert_eq!(copy.apply(op), original.apply(op), "{:?}", op);
        }
        prop_assert!(ram(&copy.mem) == ram(&original.mem));
    }
}

#[test]
fn a_ring_between_polls_is_quiescent() {
    let mut w = World::new(8, 5);
    assert!(w.ring.is_quiescent(&w.mem).unwrap());
    w.apply(&RingOp::Produce(3));
    // Requests waiting are not a lack of quiescence: none was consumed yet.
    assert!(w.ring.is_quiescent(&w.mem).unwrap());
    w.apply(&RingOp::Poll);
    assert!(w.ring.is_quiescent(&w.mem).unwrap());
    // A guest scribbling on the host's rsp_prod makes the saved RAM disagree.
    w.mem
        .store(
            0u32,
            GuestAddress(RING + offsets::RSP_PROD),
            Ordering::Relaxed,
        )
        .unwrap();
    assert!(!w.ring.is_quiescent(&w.mem).unwrap());
}

#[test]
fn console_output_continues_after_a_restore() {
    let mut original = World::new(4, 0);
    let mut copy = World::new(4, 0);
    let text = b"before and after";
    for w in [&mut original, &mut copy] {
        w.mem.write_slice(text, GuestAddress(DATA)).unwrap();
        w.producer
            .push(
                &w.mem,
                ConsoleRequest {
                    addr: DATA,
                    len: 7,
                    id: 1,
                },
            )
            .unwrap();
        w.producer.publish(&w.mem).unwrap();
    }
    let mut out = Vec::new();
    service_ring(&original.mem, &mut original.ring, &mut out).unwrap();
    service_ring(&copy.mem, &mut copy.ring, &mut Vec::new()).unwrap();
    let state = through_json(&ConsoleState::save(Some(&original.ring)));
    copy.ring = state.restore(&copy.mem).unwrap().unwrap();
    let mut outs = [Vec::new(), Vec::new()];
    for (w, sink) in [&mut original, &mut copy].into_iter().zip(outs.iter_mut()) {
        w.producer
            .push(
                &w.mem,
                ConsoleRequest {
                    addr: DATA + 7,
                    len: 9,
                    id: 2,
                },
            )
            .unwrap();
        w.producer.publish(&w.mem).unwrap();
        let b = service_ring(&w.mem, &mut w.ring, sink).unwrap();
        assert_eq!(b.requests, 1);
    }
    assert_eq!(out, b"before ");
    assert_eq!(outs[0], b"and after");
    assert_eq!(outs[1], outs[0]);
    assert_eq!(
        copy.producer.take_responses(&copy.mem).unwrap(),
        original.producer.take_responses(&original.mem).unwrap()
    );
    // No ring registered: nothing to rebuild.
    assert!(ConsoleState::save(None).restore(&mem()).unwrap().is_none());
}

#[test]
fn corrupt_ring_states_are_refused() {
    let w = World::new(8, 0);
    let good = w.ring.state();
    let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let refused = |s: RingState, m: &Mem| Ring::from_state(m, &s).unwrap_err();
    let invalid = [
        RingState {
            gpa: RING + 8,
            ..good.clone()
        },
        RingState {
            size: 0,
            ..good.clone()
        },
        RingState {
            size: 3,
            ..good.clone()
        },
        RingState {
            size: 512,
            ..good.clone()
        },
        RingState {
            host_flags: 4,
            ..good.clone()
        },
        RingState {
            broken: true,
            ..good.clone()
        },
        RingState {
            host_flags: BROKEN | HOST_POLLING,
            ..good.clone()
        },
    ];
    for s in invalid {
        assert!(
            matches!(refused(s.clone(), &w.mem), StateError::Model(_)),
            "{s:?}"
        );
    }
    // RAM that does not hold the ring.
    assert!(matches!(
        refused(good.clone(), &small),
        StateError::Region { .. }
    ));
    let far = RingState {
        gpa: u64::MAX - 4095,
        ..good.clone()
    };
    assert!(matches!(refused(far, &w.mem), StateError::Region { .. }));
    // A broken ring stays broken.
    let broken = RingState {
        host_flags: BROKEN,
        broken: true,
        ..good.clone()
    };
    let mut r = Ring::from_state(&w.mem, &broken).unwrap();
    assert!(r.is_broken());
    assert!(matches!(
        r.poll(&w.mem, |_| ConsoleResponse::default()),
        Err(crate::RingError::Broken)
    ));
    let future = ConsoleState {
        version: 7,
        ring: Some(good),
    };
    assert!(matches!(future.restore(&w.mem), Err(StateError::Model(_))));
}

/// A guest of the block ring: RAM, producer, device over an in-memory disk, ring.
struct Disk {
    mem: Mem,
    producer: GuestProducer<BlockRequest, BlockResponse>,
    dev: BlockDevice<MemBackend>,
    ring: BlockRing,
}

impl Disk {
    fn new() -> Self {
        let mem = mem();
        let producer = GuestProducer::init(&mem, RING, 4, 0).unwrap();
        let ring = BlockRing::new(&mem, RING, 0x2000).unwrap();
        let image = (0..64 * 512).map(|i| (i / 512) as u8).collect();
        let dev = BlockDevice::new(MemBackend::from_vec(image));
        Self {
            mem,
            producer,
            dev,
            ring,
        }
    }

    /// Submits one request and services the ring; returns the responses.
    fn submit(&mut self, op: BlockOp, sector: u64, sectors: u32, fill: u8) -> Vec<BlockResponse> {
        let len = sectors * 512;
        self.mem
            .write_slice(&vec![fill; len as usize], GuestAddress(DATA))
            .unwrap();
        let mut segments = [BlockSegment::default(); MAX_SEGMENTS];
        segments[0] = BlockSegment {
            addr: DATA,
            len,
            reserved: 0,
        };
        let req = BlockRequest {
            id: sector,
            op: op as u32,
            nr_segments: 1,
            sector,
            segments,
        };
        self.producer.push(&self.mem, req).unwrap();
        self.producer.publish(&self.mem).unwrap();
        self.dev.service_ring(&self.mem, &mut self.ring).unwrap();
        self.producer.take_responses(&self.mem).unwrap()
    }
}

proptest! {
    /// The PV block device and its ring, rebuilt over copies of RAM and disk, answer the
    /// next requests as the original does and leave the same disk and RAM.
    #[test]
    fn rebuilt_block_device_behaves_like_the_original(
        reqs in prop::collection::vec(
            (prop::sample::select(vec![BlockOp::Read, BlockOp::Write, BlockOp::Flush]),
             0u64..70, 1u32..4, any::<u8>()),
            2..16),
        split in 0usize..16,
    ) {
        let mut original = Disk::new();
        let mut copy = Disk::new();
        let split = split.min(reqs.len() - 1);
        for &(op, sector, n, fill) in &reqs[..split] {
            prop_assert_eq!(copy.submit(op, sector, n, fill), original.submit(op, sector, n, fill));
        }
        let state = through_json(&original.dev.state(Some(&original.ring)));
        let disk = MemBackend::from_vec(original.dev.backend().as_slice().to_vec());
        let (dev, ring) = BlockDevice::from_state(&state, disk, &copy.mem).unwrap();
        copy.dev = dev;
        copy.ring = ring.unwrap();
        for &(op, sector, n, fill) in &reqs[split..] {
            prop_assert_eq!(copy.submit(op, sector, n, fill), original.submit(op, sector, n, fill));
        }
        prop_assert!(copy.dev.backend().as_slice() == original.dev.backend().as_slice());
        prop_assert!(ram(&copy.mem) == ram(&original.mem));
    }
}

#[test]
fn block_state_checks_the_disk_size() {
    let d = Disk::new();
    let state = d.dev.state(Some(&d.ring));
    assert_eq!(state.capacity_sectors, 64);
    let e = BlockDevice::from_state(&state, MemBackend::new(63 * 512), &d.mem).unwrap_err();
    assert!(matches!(
        e,
        StateError::Model(pvkit_devices::StateError::DiskSize {
            saved: 64,
            attached: 63,
            ..
        })
    ));
    let (_, ring) = BlockDevice::from_state(
        &BlockState {
            ring: None,
            ..state.clone()
        },
        MemBackend::new(64 * 512),
        &d.mem,
    )
    .unwrap();
    assert!(ring.is_none());
    let future = BlockState {
        version: 2,
        ..state
    };
    assert!(BlockDevice::from_state(&future, MemBackend::new(64 * 512), &d.mem).is_err());
}

fn sample(tsc: u64, ns: u64) -> ClockSample {
    ClockSample {
        tsc,
        system_ns: ns,
        tsc_khz: 2_596_000,
        stable: true,
    }
}

fn record(m: &Mem, gpa: u64) -> PvClock {
    m.read_obj::<Wire<PvClock>>(GuestAddress(gpa)).unwrap().0
}

#[test]
fn rebuilt_clock_page_publishes_like_the_original() {
    let (a, b) = (mem(), mem());
    let gpa = 0x5000;
    let mut original = PvClockPage::new(&a, gpa, 4096).unwrap();
    let mut other = PvClockPage::new(&b, gpa, 4096).unwrap();
    for i in 0..3 {
        original.update(&a, sample(i * 1000, i * 7)).unwrap();
        other.update(&b, sample(i * 1000, i * 7)).unwrap();
    }
    let state = through_json(&original.state());
    assert_eq!(state.seq, 6);
    let mut rebuilt = PvClockPage::from_state(&b, &state).unwrap();
    for (tsc, ns) in [(5000, 40), (9000, 70), (u64::MAX, u64::MAX)] {
        let want = original.update(&a, sample(tsc, ns)).unwrap();
        assert_eq!(rebuilt.update(&b, sample(tsc, ns)).unwrap(), want);
        assert_eq!(record(&b, gpa), record(&a, gpa));
    }
    assert_eq!(record(&b, gpa).version, 12);
}

#[test]
fn corrupt_clock_states_are_refused() {
    let m = mem();
    let good = PvClockState {
        gpa: 0x5000,
        seq: 4,
    };
    PvClockPage::from_state(&m, &good).unwrap();
    for bad in [
        PvClockState { seq: 5, ..good },
        PvClockState {
            gpa: 0x5008,
            ..good
        },
    ] {
        assert!(matches!(
            PvClockPage::from_state(&m, &bad),
            Err(StateError::Model(_))
        ));
    }
    for gpa in [RAM as u64, u64::MAX - 4095] {
        let s = PvClockState { gpa, ..good };
        assert!(matches!(
            PvClockPage::from_state(&m, &s),
            Err(StateError::Region { .. })
        ));
    }
}
