//! `pv_block`: arbitrary `BlockRequest`s against `BlockDevice<MemBackend>` over 1 MiB of
//! guest RAM (flat, or with adjacent regions and a hole), by value (`handle`) and through
//! guest memory at arbitrary GPAs (`handle_gpa`).
//!
//! The harness computes the expected outcome of every request from the rules documented
//! on `pvkit_abi::block::BlockRequest` (an independent oracle: op, segment count, segment
//! lengths, total bytes, disk range, guest ranges, in that order) and the expected RAM and
//! disk contents, then compares all of them.
//!
//! Invariants:
//! - no panic;
//! - the status and byte count are the oracle's;
//! - a rejected request changes neither the disk nor guest RAM;
//! - a read changes guest RAM exactly in its segments (in order; later segments win) and
//!   leaves the disk alone; a write changes the disk exactly at `sector..` with the
//!   gathered segments and leaves RAM alone; a flush changes nothing.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::block::{BlockRequest, BlockSegment, MAX_REQUEST_BYTES, MAX_SEGMENTS, SECTOR_SIZE};
use pvkit_abi::Status;
use pvkit_devices::MemBackend;
use pvkit_pv::{BlockDevice, Wire};
use vm_memory::ByteValued;

use crate::mem::{Gpa, Layout, Ram, RamSetup};
use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 12;
/// Size of a `BlockRequest` in guest memory.
pub const REQUEST_BYTES: u64 = core::mem::size_of::<BlockRequest>() as u64;

/// The disk.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskSize {
    /// `n` sectors plus `tail % 512` bytes.
    Small(u8, u16),
    /// 2048 sectors: room for a `MAX_REQUEST_BYTES` request.
    Big,
}
encode_enum!(DiskSize, 2; DiskSize::Small(n, t) => 0 [n, t], DiskSize::Big => 1 []);

/// Setup.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSetup {
    /// Guest RAM.
    pub ram: RamSetup,
    /// The disk.
    pub disk: DiskSize,
}
encode_struct!(BlockSetup { ram, disk });

/// The `op` field.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpSel {
    /// 1.
    Read,
    /// 2.
    Write,
    /// 3.
    Flush,
    /// Anything.
    Raw(u32),
}
encode_enum!(OpSel, 4;
    OpSel::Read => 0 [],
    OpSel::Write => 1 [],
    OpSel::Flush => 2 [],
    OpSel::Raw(v) => 3 [v],
);

/// A count or length field: usually small, sometimes anything.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Num32 {
    /// `v`.
    Small(u8),
    /// `v * 512`.
    Sectors(u8),
    /// Anything.
    Raw(u32),
}
encode_enum!(Num32, 3;
    Num32::Small(v) => 0 [v],
    Num32::Sectors(v) => 1 [v],
    Num32::Raw(v) => 2 [v],
);

impl Num32 {
    /// The value.
    pub fn get(self) -> u32 {
        match self {
            Num32::Small(v) => u32::from(v),
            Num32::Sectors(v) => u32::from(v) * 512,
            Num32::Raw(v) => v,
        }
    }
}

/// A sector number.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorSel {
    /// Near the start and end of a small disk.
    Small(u16),
    /// Anything.
    Raw(u64),
}
encode_enum!(SectorSel, 2; SectorSel::Small(v) => 0 [v], SectorSel::Raw(v) => 1 [v]);

/// One segment.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegSpec {
    /// Buffer address.
    pub addr: Gpa,
    /// Buffer length.
    pub len: Num32,
    /// The reserved field.
    pub reserved: u8,
}
encode_struct!(SegSpec {
    addr,
    len,
    reserved
});

/// A request, field by field.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqSpec {
    /// `id`.
    pub id: u64,
    /// `op`.
    pub op: OpSel,
    /// `nr_segments`.
    pub nr: Num32,
    /// `sector`.
    pub sector: SectorSel,
    /// `segments`.
    pub segs: [SegSpec; MAX_SEGMENTS],
}
encode_struct!(ReqSpec {
    id,
    op,
    nr,
    sector,
    segs
});

impl ReqSpec {
    /// The request.
    pub fn build(&self) -> BlockRequest {
        let mut segments = [BlockSegment::default(); MAX_SEGMENTS];
        for (s, spec) in segments.iter_mut().zip(&self.segs) {
            *s = BlockSegment {
                addr: spec.addr.get(),
                len: spec.len.get(),
                reserved: u32::from(spec.reserved),
            };
        }
        BlockRequest {
            id: self.id,
            op: match self.op {
                OpSel::Read => 1,
                OpSel::Write => 2,
                OpSel::Flush => 3,
                OpSel::Raw(v) => v,
            },
            nr_segments: self.nr.get(),
            sector: match self.sector {
                SectorSel::Small(v) => u64::from(v),
                SectorSel::Raw(v) => v,
            },
            segments,
        }
    }
}

/// One step.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStep {
    /// `handle(mem, &req)`.
    Handle(ReqSpec),
    /// The guest stores `req` at `at` (the bytes that land in RAM), then `handle_gpa(at)`.
    Gpa {
        /// Where the request is (and is looked up).
        at: Gpa,
        /// Whether the guest stores `req` there first.
        place: bool,
        /// The request.
        req: ReqSpec,
    },
}
encode_enum!(BlockStep, 2;
    BlockStep::Handle(r) => 0 [r],
    BlockStep::Gpa { at, place, req } => 1 [at, place, req],
);

/// What a request must do, per the documented rules.
#[derive(Debug, PartialEq, Eq)]
pub enum Expect {
    /// Rejected with this status; nothing changes.
    Reject(Status),
    /// Flush: `Ok`, 0 bytes, nothing changes.
    Flush,
    /// Read `total` bytes at disk `offset` into the segments.
    Read {
        /// Disk byte offset.
        offset: u64,
        /// The segments `(addr, len)`.
        segs: Vec<(u64, usize)>,
    },
    /// Write the gathered segments at disk `offset`.
    Write {
        /// Disk byte offset.
        offset: u64,
        /// The segments `(addr, len)`.
        segs: Vec<(u64, usize)>,
    },
}

/// The oracle: the rules of `BlockRequest`, in their documented order.
pub fn expect(layout: Layout, capacity_sectors: u64, req: &BlockRequest) -> Expect {
    let op = match req.op {
        1 | 2 => req.op,
        3 => return Expect::Flush,
        _ => return Expect::Reject(Status::EINVAL),
    };
    let n = req.nr_segments;
    if n == 0 {
        return Expect::Reject(Status::EINVAL);
    }
    if n as usize > MAX_SEGMENTS {
        return Expect::Reject(Status::E2BIG);
    }
    let segs = &req.segments[..n as usize];
    if segs
        .iter()
        .any(|s| s.len == 0 || u64::from(s.len) % SECTOR_SIZE != 0)
    {
        return Expect::Reject(Status::EINVAL);
    }
    let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    if total > MAX_REQUEST_BYTES {
        return Expect::Reject(Status::E2BIG);
    }
    let sectors = total / SECTOR_SIZE;
    if req
        .sector
        .checked_add(sectors)
        .is_none_or(|end| end > capacity_sectors)
    {
        return Expect::Reject(Status::ERANGE);
    }
    if segs
        .iter()
        .any(|s| !layout.contains(s.addr, u64::from(s.len)))
    {
        return Expect::Reject(Status::EFAULT);
    }
    let offset = req.sector * SECTOR_SIZE;
    let segs = segs.iter().map(|s| (s.addr, s.len as usize)).collect();
    if op == 1 {
        Expect::Read { offset, segs }
    } else {
        Expect::Write { offset, segs }
    }
}

/// Checks one request's outcome against the oracle and updates the models.
///
/// `ram.image` must equal guest RAM before the call; `disk` must equal the backend.
pub fn check_outcome(
    ram: &mut Ram,
    disk: &mut [u8],
    backend: &[u8],
    req: &BlockRequest,
    got: (Status, u64),
) {
    let capacity = disk.len() as u64 / SECTOR_SIZE;
    let e = expect(ram.layout, capacity, req);
    match &e {
        Expect::Reject(s) => assert_eq!(got, (*s, 0), "{req:x?}"),
        Expect::Flush => assert_eq!(got, (Status::Ok, 0), "{req:x?}"),
        Expect::Read { segs, offset } | Expect::Write { segs, offset } => {
            let total: usize = segs.iter().map(|s| s.1).sum();
            assert_eq!(got, (Status::Ok, total as u64), "{req:x?}");
            let mut at = *offset as usize;
            if matches!(e, Expect::Read { .. }) {
                for &(addr, len) in segs {
                    let a = addr as usize;
                    ram.image[a..a + len].copy_from_slice(&disk[at..at + len]);
                    at += len;
                }
            } else {
                // The device gathers everything before writing: RAM as it was before.
                let mut data = Vec::with_capacity(total);
                for &(addr, len) in segs {
                    data.extend_from_slice(ram.model(addr, len));
                }
                disk[at..at + total].copy_from_slice(&data);
            }
        }
    }
    ram.check(&[], "block request");
    assert!(
        backend == &disk[..],
        "disk differs from the model after {req:x?} ({e:?})"
    );
}

/// Decodes a request from its wire bytes (independent of vm-memory's `read_obj`).
pub fn parse_request(b: &[u8]) -> BlockRequest {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let mut segments = [BlockSegment::default(); MAX_SEGMENTS];
    for (i, s) in segments.iter_mut().enumerate() {
        let o = 24 + 16 * i;
        *s = BlockSegment {
            addr: u64_at(o),
            len: u32_at(o + 8),
            reserved: u32_at(o + 12),
        };
    }
    BlockRequest {
        id: u64_at(0),
        op: u32_at(8),
        nr_segments: u32_at(12),
        sector: u64_at(16),
        segments,
    }
}

/// Disk contents: a window of the RAM pattern (so never all zeros), `len <= 1 MiB`.
pub fn disk_pattern_ref(len: usize, seed: u8) -> &'static [u8] {
    let p = crate::mem::pattern();
    let off = 255 - usize::from(seed);
    &p[off..off + len]
}

/// [`disk_pattern_ref`], owned.
pub fn disk_pattern(len: usize, seed: u8) -> Vec<u8> {
    disk_pattern_ref(len, seed).to_vec()
}

thread_local! {
    static DISK_MODEL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Devices of earlier executions, reused when the disk size matches: each holds a
    /// 1 MiB bounce buffer whose allocation would otherwise dominate the run time.
    static DEVICES: std::cell::RefCell<Vec<BlockDevice<MemBackend>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A device over a disk holding exactly `disk`.
pub fn device(disk: &[u8]) -> BlockDevice<MemBackend> {
    let reused = DEVICES.with(|d| {
        let mut d = d.borrow_mut();
        let i = d
            .iter()
            .position(|x| x.backend().as_slice().len() == disk.len())?;
        Some(d.swap_remove(i))
    });
    match reused {
        Some(mut dev) => {
            use pvkit_devices::BlockBackend;
            dev.backend_mut().write_at(0, disk).expect("same size");
            dev
        }
        None => BlockDevice::new(MemBackend::from_vec(disk.to_vec())),
    }
}

/// Returns a device to the pool.
pub fn recycle(dev: BlockDevice<MemBackend>) {
    DEVICES.with(|d| {
        let mut d = d.borrow_mut();
        if d.len() >= 8 {
            d.remove(0);
        }
        d.push(dev);
    });
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = BlockSetup::arbitrary(&mut u) else {
        return;
    };
    let mut ram = Ram::new(setup.ram.layout, setup.ram.seed);
    let len = match setup.disk {
        DiskSize::Small(n, tail) => usize::from(n) * 512 + usize::from(tail % 512),
        DiskSize::Big => 2048 * 512,
    };
    // The model of the disk, in a reused buffer (a fresh 1 MiB allocation page-faults).
    let mut disk = DISK_MODEL.with(|d| std::mem::take(&mut *d.borrow_mut()));
    disk.clear();
    disk.extend_from_slice(disk_pattern_ref(len, setup.ram.seed));
    let mut dev = device(&disk);
    assert_eq!(dev.capacity_sectors(), len as u64 / 512);
    crate::for_each_op(&mut u, MAX_OPS, |step: BlockStep| match step {
        BlockStep::Handle(spec) => {
            let req = spec.build();
            let got = dev.handle(ram.mem, &req);
            check_outcome(&mut ram, &mut disk, dev.backend().as_slice(), &req, got);
        }
        BlockStep::Gpa { at, place, req } => {
            let at = at.get();
            if place {
                ram.guest_write(at, Wire(req.build()).as_slice());
            }
            let got = dev.handle_gpa(ram.mem, at);
            if !ram.layout.contains(at, REQUEST_BYTES) {
                assert_eq!(got, (Status::EFAULT, 0), "request at {at:#x}");
                ram.check(&[], "rejected handle_gpa");
                assert!(dev.backend().as_slice() == &disk[..]);
                return;
            }
            let req = parse_request(ram.model(at, REQUEST_BYTES as usize));
            check_outcome(&mut ram, &mut disk, dev.backend().as_slice(), &req, got);
        }
    });
    recycle(dev);
    DISK_MODEL.with(|d| *d.borrow_mut() = disk);
}

/// Seeds: a scattered read, a gathered write through `handle_gpa`, a flush, a request that
/// straddles the hole, and the largest request.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    let seg = |page: u8, sectors: u8| SegSpec {
        addr: Gpa::Page(page, 0),
        len: Num32::Sectors(sectors),
        reserved: 0,
    };
    let none = seg(0, 0);
    let req = |op, nr: u8, sector: u16, first: &[SegSpec]| {
        let mut segs = [none; MAX_SEGMENTS];
        segs[..first.len()].copy_from_slice(first);
        ReqSpec {
            id: 7,
            op,
            nr: Num32::Small(nr),
            sector: SectorSel::Small(sector),
            segs,
        }
    };
    let flat = BlockSetup {
        ram: RamSetup {
            layout: Layout::Flat,
            seed: 1,
        },
        disk: DiskSize::Small(128, 0),
    };
    let holes = BlockSetup {
        ram: RamSetup {
            layout: Layout::Holes,
            seed: 2,
        },
        disk: DiskSize::Small(64, 100),
    };
    let big = BlockSetup {
        ram: RamSetup {
            layout: Layout::Flat,
            seed: 3,
        },
        disk: DiskSize::Big,
    };
    let read = [BlockStep::Handle(req(
        OpSel::Read,
        2,
        3,
        &[seg(8, 2), seg(2, 1)],
    ))];
    let write = [
        BlockStep::Gpa {
            at: Gpa::Page(1, 0x100),
            place: true,
            req: req(OpSel::Write, 2, 1, &[seg(16, 2), seg(3, 1)]),
        },
        BlockStep::Handle(req(OpSel::Flush, 0, 0, &[])),
        BlockStep::Handle(req(OpSel::Read, 1, 1, &[seg(32, 3)])),
    ];
    let mut straddle = req(OpSel::Read, 1, 0, &[seg(0, 1)]);
    straddle.segs[0].addr = Gpa::Near(crate::mem::Anchor::HoleStart, -512);
    straddle.segs[0].len = Num32::Sectors(2);
    let mut adjacent = straddle;
    adjacent.segs[0].addr = Gpa::Near(crate::mem::Anchor::Adjacent, -512);
    let straddle = [BlockStep::Handle(straddle), BlockStep::Handle(adjacent)];
    let largest = [BlockStep::Handle(req(
        OpSel::Write,
        8,
        0,
        &[
            seg(0, 255),
            seg(64, 255),
            seg(128, 255),
            seg(192, 255),
            seg(0, 8),
        ],
    ))];
    vec![
        ("read_scatter", program(&flat, &read)),
        ("write_gpa_flush_read", program(&flat, &write)),
        ("hole_and_adjacent", program(&holes, &straddle)),
        ("largest", program(&big, &largest)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::decode_program;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let (_, ops): (BlockSetup, Vec<BlockStep>) = decode_program(&bytes, MAX_OPS);
            assert!(!ops.is_empty(), "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn parse_request_matches_wire_layout() {
        let spec = seeds();
        let (_, ops): (BlockSetup, Vec<BlockStep>) = decode_program(&spec[0].1, MAX_OPS);
        let BlockStep::Handle(r) = ops[0] else {
            panic!()
        };
        let req = r.build();
        assert_eq!(parse_request(Wire(req).as_slice()), req);
    }

    #[test]
    fn oracle_statuses() {
        let l = Layout::Holes;
        let mut r = BlockRequest {
            op: 2,
            nr_segments: 1,
            ..Default::default()
        };
        r.segments[0] = BlockSegment {
            addr: 0,
            len: 512,
            reserved: 0,
        };
        assert!(matches!(expect(l, 1, &r), Expect::Write { .. }));
        r.segments[0].addr = 2 * crate::mem::RAM_END / 4 - 256;
        assert_eq!(expect(l, 1, &r), Expect::Reject(Status::EFAULT));
        assert_eq!(expect(l, 0, &r), Expect::Reject(Status::ERANGE));
    }
}
