//! Property tests: hostile block requests and hostile ring headers.

use proptest::prelude::*;
use pvkit_abi::block::{BlockRequest, BlockSegment, MAX_REQUEST_BYTES, MAX_SEGMENTS, SECTOR_SIZE};
use pvkit_abi::console::{ConsoleRequest, ConsoleResponse};
use pvkit_abi::ring::HEADER_SIZE;
use pvkit_abi::Status;
use pvkit_devices::MemBackend;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::block::BlockDevice;
use crate::ring::{RingConsumer, RingError};
use crate::test_utils::GuestProducer;

const RAM: u64 = 1 << 20;
const DISK_SECTORS: u64 = 256; // 128 KiB

fn guest() -> GuestMemoryMmap<()> {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    static FILL: OnceLock<Vec<u8>> = OnceLock::new();
    let fill = FILL.get_or_init(|| (0..RAM).map(|i| (i ^ (i >> 9)) as u8).collect());
    m.write_slice(fill, GuestAddress(0)).unwrap();
    m
}

fn snapshot(m: &GuestMemoryMmap<()>) -> Vec<u8> {
    let mut v = vec![0u8; RAM as usize];
    m.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

fn disk() -> MemBackend {
    static DISK: OnceLock<Vec<u8>> = OnceLock::new();
    let n = (DISK_SECTORS * SECTOR_SIZE) as usize;
    MemBackend::from_vec(
        DISK.get_or_init(|| (0..n).map(|i| (i * 13 + i / 512) as u8).collect())
            .clone(),
    )
}

fn addr_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0..RAM / 512).prop_map(|p| p * 512),
        2 => 0..RAM,
        2 => (RAM - 8192)..(RAM + 8192),
        1 => any::<u64>(),
        1 => (0..8192u64).prop_map(|d| u64::MAX - d),
    ]
}

fn len_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => (1..=16u32).prop_map(|k| k * 512),
        1 => Just(0u32),
        1 => 0..4096u32,
        1 => any::<u32>(),
        1 => prop_oneof![Just(1u32 << 20), Just((1u32 << 20) + 512), Just(u32::MAX - 511)],
    ]
}

fn segment_strategy() -> impl Strategy<Value = BlockSegment> {
    (addr_strategy(), len_strategy(), any::<u32>()).prop_map(|(addr, len, reserved)| BlockSegment {
        addr,
        len,
        reserved,
    })
}

fn request_strategy() -> impl Strategy<Value = BlockRequest> {
    let op = prop_oneof![8 => 1..=3u32, 1 => any::<u32>()];
    let nr = prop_oneof![8 => 0..=(MAX_SEGMENTS as u32 + 2), 1 => any::<u32>()];
    let sector = prop_oneof![
        4 => 0..DISK_SECTORS,
        2 => (DISK_SECTORS - 40)..(DISK_SECTORS + 40),
        1 => any::<u64>(),
        1 => (0..64u64).prop_map(|d| u64::MAX / 512 - 32 + d),
    ];
    (
        any::<u64>(),
        op,
        nr,
        sector,
        proptest::array::uniform8(segment_strategy()),
    )
        .prop_map(|(id, op, nr_segments, sector, segments)| BlockRequest {
            id,
            op,
            nr_segments,
            sector,
            segments,
        })
}

/// The rules of the `BlockRequest` doc comment, restated with u128 arithmetic.
fn expected_status(req: &BlockRequest) -> Status {
    match req.op {
        1 | 2 => {}
        3 => return Status::Ok,
        _ => return Status::EINVAL,
    }
    if req.nr_segments == 0 {
        return Status::EINVAL;
    }
    if req.nr_segments as usize > MAX_SEGMENTS {
        return Status::E2BIG;
    }
    let segs = &req.segments[..req.nr_segments as usize];
    if segs.iter().any(|s| s.len == 0 || s.len % 512 != 0) {
        return Status::EINVAL;
    }
    let total: u128 = segs.iter().map(|s| s.len as u128).sum();
    if total > MAX_REQUEST_BYTES as u128 {
        return Status::E2BIG;
    }
    if req.sector as u128 + total / 512 > DISK_SECTORS as u128 {
        return Status::ERANGE;
    }
    if segs
        .iter()
        .any(|s| s.addr as u128 + s.len as u128 > RAM as u128)
    {
        return Status::EFAULT;
    }
    Status::Ok
}

fn active(req: &BlockRequest) -> &[BlockSegment] {
    &req.segments[..(req.nr_segments as usize).min(MAX_SEGMENTS)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn hostile_block_requests(req in request_strategy()) {
        let m = guest();
        let ram_before = snapshot(&m);
        let mut dev = BlockDevice::new(disk());
        let disk_before = dev.backend().as_slice().to_vec();

        let (status, bytes) = dev.handle(&m, &req);
        prop_assert_eq!(status, expected_status(&req));

        let disk_after = dev.backend().as_slice().to_vec();
        let ram_after = snapshot(&m);
        if status != Status::Ok {
            prop_assert_eq!(bytes, 0);
            prop_assert!(disk_after == disk_before, "rejected request changed the disk");
            prop_assert!(ram_after == ram_before, "rejected request changed guest RAM");
            return Ok(());
        }
        let segs = active(&req);
        let total: usize = if req.op == 3 { 0 } else { segs.iter().map(|s| s.len as usize).sum() };
        prop_assert_eq!(bytes, total as u64);
        let off = req.sector.wrapping_mul(SECTOR_SIZE) as usize; // in range unless a flush
        match req.op {
            1 => {
                prop_assert!(disk_after == disk_before);
                let mut want = ram_before.clone();
                let mut pos = off;
                for s in segs {
                    let (a, l) = (s.addr as usize, s.len as usize);
                    want[a..a + l].copy_from_slice(&disk_before[pos..pos + l]);
                    pos += l;
                }
                prop_assert!(ram_after == want, "read delivered the wrong bytes");
            }
            2 => {
                prop_assert!(ram_after == ram_before);
                let written: Vec<u8> = segs
                    .iter()
                    .flat_map(|s| ram_before[s.addr as usize..(s.addr + s.len as u64) as usize].to_vec())
                    .collect();
                let mut want = disk_before.clone();
                want[off..off + total].copy_from_slice(&written);
                prop_assert!(disk_after == want, "write stored the wrong bytes");
                // Read it back through the device into a fresh buffer.
                let back = BlockRequest {
                    id: 1,
                    op: 1,
                    nr_segments: 1,
                    sector: req.sector,
                    segments: [BlockSegment { addr: 0, len: total as u32, reserved: 0 }; MAX_SEGMENTS],
                };
                prop_assert_eq!(dev.handle(&m, &back), (Status::Ok, total as u64));
                let mut got = vec![0u8; total];
                m.read_slice(&mut got, GuestAddress(0)).unwrap();
                prop_assert!(got == written, "write did not read back identically");
            }
            _ => {
                prop_assert!(disk_after == disk_before);
                prop_assert!(ram_after == ram_before);
            }
        }
    }

    #[test]
    fn block_request_through_guest_memory(gpa in addr_strategy(), req in request_strategy()) {
        let m = guest();
        let mut dev = BlockDevice::new(disk());
        let disk_before = dev.backend().as_slice().to_vec();
        let placed = m.write_obj(crate::wire::Wire(req), GuestAddress(gpa)).is_ok();
        let (status, _) = dev.handle_gpa(&m, gpa);
        if !placed {
            prop_assert_eq!(status, Status::EFAULT);
            prop_assert!(dev.backend().as_slice() == disk_before.as_slice());
        }
    }
}

/// One step of a hostile guest against a ring.
#[derive(Clone, Debug)]
enum Step {
    /// Push and publish this many requests (as far as the producer has room).
    Push(u8),
    /// Overwrite the header word at this index (0..16) with this value.
    Corrupt(u8, u32),
    /// Overwrite bytes somewhere in the slot area.
    Scribble(u16, Vec<u8>),
    /// The host services the ring.
    Poll,
    /// The host flips HOST_POLLING.
    Polling(bool),
    /// The guest re-registers the ring (with whatever header is there now).
    Reregister,
    /// The guest re-initializes the header with indices at this value and registers it.
    Reinit(u32),
    /// The guest takes its responses.
    Take,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..12u8).prop_map(Step::Push),
        2 => (0..16u8, prop_oneof![any::<u32>(), 0..600u32]).prop_map(|(w, v)| Step::Corrupt(w, v)),
        1 => (0..0x3000u16, proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(o, b)| Step::Scribble(o, b)),
        4 => Just(Step::Poll),
        1 => any::<bool>().prop_map(Step::Polling),
        1 => Just(Step::Reregister),
        1 => any::<u32>().prop_map(Step::Reinit),
        2 => Just(Step::Take),
    ]
}

const RING_GPA: u64 = 0x4_0000;
const RING_LEN: u64 = 0x3000;

type Ring = RingConsumer<ConsoleRequest, ConsoleResponse>;

fn echo(r: ConsoleRequest) -> ConsoleResponse {
    ConsoleResponse {
        status: 0,
        id: r.id,
        written: r.len,
    }
}

fn outside_ring_unchanged(before: &[u8], m: &GuestMemoryMmap<()>) -> bool {
    let after = snapshot(m);
    let (lo, hi) = (RING_GPA as usize, (RING_GPA + RING_LEN) as usize);
    after[..lo] == before[..lo] && after[hi..] == before[hi..]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hostile_ring_headers(
        size_log in 0..=8u32,
        start in prop_oneof![any::<u32>(), (0..16u32).prop_map(|d| u32::MAX - d)],
        steps in proptest::collection::vec(step_strategy(), 1..40),
    ) {
        let m = guest();
        let before = snapshot(&m);
        let size = 1u32 << size_log;
        let mut p = GuestProducer::<ConsoleRequest, ConsoleResponse>::init(&m, RING_GPA, size, start)
            .unwrap();
        let mut ring = Some(Ring::new(&m, RING_GPA, RING_LEN).unwrap());
        let mut next = 0u32;
        for step in steps {
            match step {
                Step::Push(n) => {
                    for _ in 0..n {
                        let r = ConsoleRequest { addr: u64::from(next), len: next, id: next };
                        if p.push(&m, r).is_err() {
                            break;
                        }
                        next = next.wrapping_add(1);
                    }
                    let _ = p.publish(&m);
                }
                Step::Corrupt(word, value) => {
                    let at = GuestAddress(RING_GPA + u64::from(word) * 4);
                    m.store(value, at, Ordering::Relaxed).unwrap();
                }
                Step::Scribble(off, bytes) => {
                    let off = u64::from(off).max(HEADER_SIZE as u64);
                    let len = (bytes.len() as u64).min(RING_LEN - off) as usize;
                    m.write_slice(&bytes[..len], GuestAddress(RING_GPA + off)).unwrap();
                }
                Step::Poll => {
                    if let Some(r) = ring.as_mut() {
                        let broken_before = r.is_broken();
                        let slots = r.size();
                        match r.poll(&m, echo) {
                            Ok(b) => {
                                prop_assert!(!broken_before);
                                // Single-threaded: nothing is published during the poll.
                                prop_assert!(b.requests <= u64::from(slots));
                            }
                            Err(RingError::Overrun { .. }) => prop_assert!(r.is_broken()),
                            Err(RingError::Broken) => prop_assert!(broken_before),
                            Err(e) => prop_assert!(false, "unexpected error {e}"),
                        }
                    }
                }
                Step::Polling(on) => {
                    if let Some(r) = ring.as_mut() {
                        r.set_polling(&m, on).unwrap();
                    }
                }
                Step::Reregister => {
                    ring = Ring::new(&m, RING_GPA, RING_LEN).ok();
                    if let Some(r) = &ring {
                        prop_assert!(r.ring_bytes() as u64 <= RING_LEN);
                    }
                }
                Step::Reinit(start) => {
                    // The guest re-initializes its ring and registers it again.
                    p = GuestProducer::init(&m, RING_GPA, size, start).unwrap();
                    ring = Some(Ring::new(&m, RING_GPA, RING_LEN).unwrap());
                }
                Step::Take => {
                    let _ = p.take_responses(&m);
                }
            }
            prop_assert!(outside_ring_unchanged(&before, &m), "host wrote outside the ring");
        }
    }

    #[test]
    fn random_headers_and_regions(
        header in proptest::collection::vec(any::<u8>(), HEADER_SIZE),
        gpa in prop_oneof![
            (0..(RAM / 4096)).prop_map(|p| p * 4096),
            (RAM - 3 * 4096)..(RAM + 4096),
            any::<u64>(),
        ],
        len in prop_oneof![0..0x3000u64, any::<u64>()],
        polls in 1..4usize,
    ) {
        let m = guest();
        let _ = m.write_slice(&header, GuestAddress(gpa));
        let before = snapshot(&m);
        if let Ok(mut r) = Ring::new(&m, gpa, len) {
            prop_assert_eq!(gpa % 4096, 0);
            prop_assert!(r.ring_bytes() as u64 <= len);
            prop_assert!(gpa + r.ring_bytes() as u64 <= RAM);
            for _ in 0..polls {
                let _ = r.poll(&m, echo);
            }
            let after = snapshot(&m);
            let (lo, hi) = (gpa as usize, gpa as usize + r.ring_bytes());
            prop_assert!(after[..lo] == before[..lo] && after[hi..] == before[hi..]);
        } else {
            prop_assert!(snapshot(&m) == before, "failed registration wrote guest memory");
        }
    }
}
