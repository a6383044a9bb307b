//! Block cases: 4 KiB random and 1 MiB sequential reads and writes on the emulated ATA
//! disk (PIO), with the `BlockIo` hypercall, and over the block ring (three transports).
//!
//! # Disk area and addresses
//!
//! Only the first `min(capacity, 64 MiB)` of the disk is used (the host pre-fills its image
//! with a pattern). Random operations are 4 KiB aligned: operation `i` picks a random
//! 4 KiB block (xorshift64, seeded per case) in stripe `i % 32` of the area, so the
//! requests of one ring batch never overlap and their order cannot matter. Sequential
//! operation `i` is at `i MiB` (modulo the area).
//!
//! # The plan is the op log
//!
//! Before the phase begins, the case's operations are written into the op log
//! ([`OpRecord`]: sector, buffer GPA, length, direction), and the
//! timed loop only reads its next record: address generation and logging cost nothing
//! inside the phase, which is what the benchmark measures (the interpreted ring-0 path of
//! one request). A case of more than [`MAX_OP_LOG`] operations cycles through a plan of
//! `MAX_OP_LOG` records, starting at the offset that makes its last `MAX_OP_LOG`
//! operations exactly the plan in order: the log the host replays. After a failed
//! operation the case stops and only the completed prefix is logged (nothing when the plan
//! cycled).
//!
//! # Buffers
//!
//! Static, page aligned, zero-filled by the loader: for random operations an arena of
//! [`SLOTS`] 4 KiB slots per direction (operation `i` uses slot `i % 64`, so the 32
//! requests of a batch have 32 distinct slots), for sequential ones a 1 MiB buffer per
//! direction. Write sources are tagged once, before the first case: the first quadword of
//! every 512-byte sector is `"pvki" << 32 | buffer << 24 | sector index`, so a write that
//! lands in the wrong place or from the wrong slot is visible to the host's check. Buffers
//! are never touched except by logged operations.
//!
//! # Variants
//!
//! | variant | per operation | timed |
//! |---|---|---|
//! | `ata-pio` | one command: 4 KiB = 23 port accesses (reads: 23 exits; writes: 2063, as each word of a `rep outsw` exits), 1 MiB (one EXT command) = 4107 accesses (reads: 4107 exits; writes: 526 347) (see [`crate::ata`]) | per operation |
//! | `pv-hypercall` | one `BlockIo` exit (1 MiB = one request of 8 × 128 KiB segments) | per operation |
//! | `pv-ring`, `pv-ioeventfd`, `pv-poll` | ring of 64 slots; 4 KiB: batches of 32 requests, 1 MiB: one request per batch (its single buffer); one publish and at most one doorbell per batch, then spin on `rsp_prod` | per batch |
//!
//! Checks: every operation must complete without an ATA error / with status OK and all
//! bytes moved (`SAMPLE_VERIFIED`; otherwise `SAMPLE_FAILED` and the case stops). After
//! the phase of a write case (unbilled), the disk is flushed and the flush checked too.

use super::{begin, case, end, Outcome, Runner, Scratch, RING_VARIANTS};
use crate::statics::{Exclusive, Pages};
use pvkit_abi::bench::{
    CaseId, Device, OpRecord, Variant, Workload, MAX_OP_LOG, OP_READ, OP_WRITE,
};
use pvkit_abi::block::{BlockOp, SECTOR_SIZE};
use pvkit_abi::cpuid::Features;
use pvkit_abi::Status;
use pvkit_guest::addr::virt_to_phys;
use pvkit_guest::ata::Ata;
use pvkit_guest::block::{self, BlockRing, PvBlock};
use pvkit_guest::port::Pio;
use pvkit_guest::tsc::rdtsc;

/// The synchronous PV variant.
const PV_VARIANT: Variant = Variant::PvHypercall;

/// Bytes of a random operation.
const SMALL: usize = 4096;
/// Bytes of a sequential operation.
const LARGE: usize = 1 << 20;
/// Slots of the random-operation arenas.
const SLOTS: usize = 64;
/// Sectors of the area used: 64 MiB.
const AREA_SECTORS: u64 = (64 << 20) / SECTOR_SIZE;
/// Stripes of the area (one per request of a ring batch).
const STRIPES: u64 = 32;
/// Ring slots.
const RING_SIZE: u32 = 64;
/// Requests per ring batch for 4 KiB operations.
const QUEUE_DEPTH: u64 = 32;
/// Bytes of one ring region.
const RING_BYTES: usize = 12 * 1024;
const _: () = assert!(matches!(BlockRing::bytes(RING_SIZE), Some(n) if n <= RING_BYTES));

static RAND_READ: Exclusive<Pages<{ SLOTS * SMALL }>> = Exclusive::new(Pages::zeroed());
static RAND_WRITE: Exclusive<Pages<{ SLOTS * SMALL }>> = Exclusive::new(Pages::zeroed());
static SEQ_READ: Exclusive<Pages<LARGE>> = Exclusive::new(Pages::zeroed());
static SEQ_WRITE: Exclusive<Pages<LARGE>> = Exclusive::new(Pages::zeroed());
/// One ring region per transport: a registration never reuses another's memory.
static RINGS: [Exclusive<Pages<RING_BYTES>>; 3] = [
    Exclusive::new(Pages::zeroed()),
    Exclusive::new(Pages::zeroed()),
    Exclusive::new(Pages::zeroed()),
];

/// A workload: what, how big, and how many.
#[derive(Clone, Copy)]
struct Work {
    workload: Workload,
    op: BlockOp,
    len: usize,
    default: u64,
    quick: u64,
    /// The default on the ATA disk (see [`Work::ops`]).
    ata_default: u64,
}

impl Work {
    /// Operations of this workload on `variant`: `ops=`, else the quick or default count.
    /// ATA PIO writes move every 16-bit word with its own exit (KVM handles each element
    /// of a `rep outsw` separately, unlike `rep insw`): 1 MiB is 526 000 exits, ~10 s
    /// here, so `ata-pio/seqwrite1m` does one operation by default instead of four.
    fn ops(&self, r: &Runner, variant: Variant) -> u64 {
        let default = if variant == Variant::AtaPio {
            self.ata_default
        } else {
            self.default
        };
        r.count(default, self.quick)
    }
}

const WORKS: [Work; 4] = [
    Work {
        workload: Workload::RandRead4K,
        op: BlockOp::Read,
        len: SMALL,
        default: 128,
        quick: 16,
        ata_default: 128,
    },
    Work {
        workload: Workload::RandWrite4K,
        op: BlockOp::Write,
        len: SMALL,
        default: 128,
        quick: 16,
        ata_default: 128,
    },
    Work {
        workload: Workload::SeqRead1M,
        op: BlockOp::Read,
        len: LARGE,
        default: 4,
        quick: 1,
        ata_default: 4,
    },
    Work {
        workload: Workload::SeqWrite1M,
        op: BlockOp::Write,
        len: LARGE,
        default: 4,
        quick: 1,
        ata_default: 1,
    },
];

/// The four buffers.
struct Buffers {
    rand_read: &'static mut [u8],
    rand_write: &'static mut [u8],
    seq_read: &'static mut [u8],
    seq_write: &'static mut [u8],
}

impl Buffers {
    /// Takes the static buffers and tags the write sources (once).
    fn take() -> Buffers {
        let b = Buffers {
            rand_read: &mut RAND_READ.take().0,
            rand_write: &mut RAND_WRITE.take().0,
            seq_read: &mut SEQ_READ.take().0,
            seq_write: &mut SEQ_WRITE.take().0,
        };
        tag(b.rand_write, 1);
        tag(b.seq_write, 2);
        b
    }

    /// The buffer a workload uses.
    fn for_work(&mut self, w: &Work) -> &mut [u8] {
        match (w.op, w.len) {
            (BlockOp::Read, SMALL) => self.rand_read,
            (BlockOp::Write, SMALL) => self.rand_write,
            (BlockOp::Read, _) => self.seq_read,
            _ => self.seq_write,
        }
    }
}

/// Writes the tag of every 512-byte sector of `buf` into its first quadword.
fn tag(buf: &mut [u8], buffer: u64) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR_SIZE as usize).enumerate() {
        let tag = u64::from_be_bytes(*b"pvki\0\0\0\0") | buffer << 24 | i as u64;
        sector[..8].copy_from_slice(&tag.to_le_bytes());
    }
}

/// The sectors of the operations of one case.
struct Addresses {
    random: bool,
    area: u64,
    state: u64,
}

impl Addresses {
    /// For a case of `w` on a disk area of `area` sectors; `None` if the area is too small.
    fn new(id: CaseId, w: &Work, area: u64) -> Option<Addresses> {
        let sectors = (w.len as u64) / SECTOR_SIZE;
        let needed = if w.len == SMALL {
            STRIPES * sectors
        } else {
            sectors
        };
        (area >= needed).then_some(Addresses {
            random: w.len == SMALL,
            area,
            // xorshift64 needs a non-zero seed.
            state: id.to_u64() ^ 0x9E37_79B9_7F4A_7C15,
        })
    }

    /// The first sector of operation `i`.
    fn sector(&mut self, i: u64) -> u64 {
        if self.random {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            let blocks = self.area / 8 / STRIPES; // 4 KiB blocks per stripe
            ((i % STRIPES) * blocks + x % blocks) * 8
        } else {
            let per_op = (LARGE as u64) / SECTOR_SIZE;
            (i * per_op) % (self.area - self.area % per_op)
        }
    }
}

/// The plan of a case of `ops` operations of `w` into `log`: returns the plan length and
/// the plan index of operation 0 (see the module documentation). Operation `i` of the plan
/// uses slot `i % slots` of the buffer at `base` (GPA).
fn plan(
    log: &mut [OpRecord],
    mut addrs: Addresses,
    w: &Work,
    ops: u64,
    base: u64,
    slots: usize,
) -> (usize, usize) {
    let n = ops.min(MAX_OP_LOG) as usize;
    let op = match w.op {
        BlockOp::Read => OP_READ,
        _ => OP_WRITE,
    };
    for (i, rec) in log[..n].iter_mut().enumerate() {
        *rec = OpRecord {
            sector: addrs.sector(i as u64),
            addr: base + ((i % slots) * w.len) as u64,
            len: w.len as u32,
            op,
        };
    }
    (n, (n - (ops % n as u64) as usize) % n)
}

/// The op-log entries to send after `done` of `ops` operations of a plan of `n` records
/// starting at `start`: all of them, or after a failure the completed prefix when the plan
/// did not cycle.
fn logged(done: u64, ops: u64, n: usize, start: usize) -> usize {
    if done == ops {
        n
    } else if start == 0 && done <= n as u64 {
        done as usize
    } else {
        0
    }
}

/// A synchronous block device: one call per operation.
trait SyncDevice {
    /// One operation on the buffer at guest-physical `gpa`; whether it completed in full.
    ///
    /// # Safety
    ///
    /// `gpa..gpa + len` must be a block buffer of this module (identity mapped) that
    /// nothing else uses during the call.
    unsafe fn op(&mut self, op: BlockOp, sector: u64, gpa: u64, len: u32) -> bool;

    /// Makes the writes durable; whether it succeeded.
    fn flush(&mut self) -> bool;
}

impl SyncDevice for Ata<Pio> {
    #[inline(always)]
    unsafe fn op(&mut self, op: BlockOp, sector: u64, gpa: u64, len: u32) -> bool {
        // SAFETY: the kernel runs on the boot identity map (virtual = guest-physical), and
        // the caller vouches that the buffer is ours and unused meanwhile.
        let buf = unsafe { core::slice::from_raw_parts_mut(gpa as *mut u8, len as usize) };
        match op {
            BlockOp::Read => self.read(sector, buf).is_ok(),
            _ => self.write(sector, buf).is_ok(),
        }
    }

    fn flush(&mut self) -> bool {
        Ata::flush(self).is_ok()
    }
}

impl SyncDevice for PvBlock {
    #[inline(always)]
    unsafe fn op(&mut self, op: BlockOp, sector: u64, gpa: u64, len: u32) -> bool {
        // SAFETY: forwarded: the host reads or writes only the caller's buffer.
        unsafe { self.request(op, sector, gpa, len) }.is_ok()
    }

    fn flush(&mut self) -> bool {
        PvBlock::flush(self).is_ok()
    }
}

/// Runs every block case.
pub fn run(r: &mut Runner, scratch: &mut Scratch) {
    let mut buffers = Buffers::take();

    if r.wants(Device::Block, Variant::AtaPio) {
        match crate::ata::probe() {
            Ok(mut ata) => {
                let area = ata.sectors().min(AREA_SECTORS);
                sync_cases(r, scratch, &mut buffers, Variant::AtaPio, &mut ata, area);
            }
            Err(e) => {
                for w in &WORKS {
                    let id = case(Device::Block, Variant::AtaPio, w.workload);
                    r.skip(id, format_args!("no ATA disk: {e:?}"));
                }
            }
        }
    }

    let pv_wanted = [
        PV_VARIANT,
        RING_VARIANTS[0].0,
        RING_VARIANTS[1].0,
        RING_VARIANTS[2].0,
    ]
    .into_iter()
    .any(|v| r.wants(Device::Block, v));
    let capacity = if r.has(Features::BLOCK) && pv_wanted {
        Some(block::capacity())
    } else {
        None
    };
    let area = match capacity {
        Some(Ok(sectors)) => sectors.min(AREA_SECTORS),
        _ => 0,
    };
    if r.wants(Device::Block, PV_VARIANT) {
        match capacity {
            Some(Ok(_)) => {
                let mut pv = PvBlock::new();
                sync_cases(r, scratch, &mut buffers, PV_VARIANT, &mut pv, area);
            }
            Some(Err(s)) => {
                for w in &WORKS {
                    let id = case(Device::Block, PV_VARIANT, w.workload);
                    r.fail_setup(id, format_args!("BlockCapacity: {s}"), scratch);
                }
            }
            None => {
                for w in &WORKS {
                    let id = case(Device::Block, PV_VARIANT, w.workload);
                    r.skip(id, format_args!("host lacks BLOCK"));
                }
            }
        }
    }

    for (i, &(variant, transport, extra)) in RING_VARIANTS.iter().enumerate() {
        if !r.wants(Device::Block, variant) {
            continue;
        }
        let needs = Features::BLOCK | Features::BLOCK_RING | extra;
        if !r.has(needs) {
            for w in &WORKS {
                let id = case(Device::Block, variant, w.workload);
                r.skip(
                    id,
                    format_args!("host lacks {:?}", needs.difference(r.features)),
                );
            }
            continue;
        }
        if !matches!(capacity, Some(Ok(_))) {
            for w in &WORKS {
                let id = case(Device::Block, variant, w.workload);
                r.fail_setup(id, format_args!("BlockCapacity failed"), scratch);
            }
            continue;
        }
        match BlockRing::register(&mut RINGS[i].take().0, RING_SIZE, transport) {
            Ok(mut ring) => ring_cases(r, scratch, &mut buffers, variant, &mut ring, area),
            Err(e) => {
                for w in &WORKS {
                    let id = case(Device::Block, variant, w.workload);
                    r.fail_setup(id, format_args!("registering the ring: {e:?}"), scratch);
                }
            }
        }
    }
}

/// The four workloads on a synchronous device (`ata-pio`, `pv-hypercall`).
fn sync_cases<D: SyncDevice>(
    r: &mut Runner,
    scratch: &mut Scratch,
    buffers: &mut Buffers,
    variant: Variant,
    dev: &mut D,
    area: u64,
) {
    for w in &WORKS {
        let id = case(Device::Block, variant, w.workload);
        let Some(addrs) = Addresses::new(id, w, area) else {
            r.skip(id, format_args!("disk area of {area} sectors is too small"));
            continue;
        };
        let ops = w.ops(r, variant);
        let buf = buffers.for_work(w);
        let slots = buf.len() / w.len;
        let (mut samples, log) = scratch.split();
        let (n, start) = plan(log, addrs, w, ops, virt_to_phys(buf.as_ptr()), slots);
        let plan = &log[..n];
        let mut k = start;
        let mut done = 0;
        let t0 = begin(id);
        while done < ops {
            let rec = &plan[k];
            let s = rdtsc();
            // SAFETY: the plan names slots of this workload's buffer, untouched otherwise.
            let ok = unsafe { dev.op(w.op, rec.sector, rec.addr, rec.len) };
            samples.push(rdtsc() - s);
            if !ok {
                break;
            }
            done += 1;
            k += 1;
            if k == n {
                k = 0;
            }
        }
        let cycles_total = end(id, t0, done);
        let mut failed = done != ops;
        if w.op == BlockOp::Write && !failed {
            failed = !dev.flush();
        }
        let outcome = Outcome {
            ops: done,
            bytes: done * w.len as u64,
            cycles_total,
            flags: Outcome::checked(failed),
            extra: 0,
            samples: samples.len(),
            log: logged(done, ops, n, start),
        };
        r.report(id, &outcome, scratch);
    }
}

/// The four workloads over a block ring.
fn ring_cases(
    r: &mut Runner,
    scratch: &mut Scratch,
    buffers: &mut Buffers,
    variant: Variant,
    ring: &mut BlockRing,
    area: u64,
) {
    let timeout = r.ring_timeout();
    for w in &WORKS {
        let id = case(Device::Block, variant, w.workload);
        let Some(addrs) = Addresses::new(id, w, area) else {
            r.skip(id, format_args!("disk area of {area} sectors is too small"));
            continue;
        };
        let ops = w.ops(r, variant);
        let buf = buffers.for_work(w);
        let slots = buf.len() / w.len;
        let len = w.len as u32;
        let queue_depth = if w.len == SMALL { QUEUE_DEPTH } else { 1 };
        let (mut samples, log) = scratch.split();
        let (n, start) = plan(log, addrs, w, ops, virt_to_phys(buf.as_ptr()), slots);
        let plan = &log[..n];
        let mut k = start;
        let mut done = 0;
        let mut failed = false;
        let t0 = begin(id);
        while done < ops && !failed {
            let batch = queue_depth.min(ops - done);
            let s = rdtsc();
            for req in done..done + batch {
                let rec = &plan[k];
                // SAFETY: the plan names slots of this workload's 'static buffer, which
                // Rust code does not touch until `wait` has returned the batch; a batch
                // (≤ 32 requests, consecutive plan records) never uses a slot twice.
                failed |= unsafe { ring.queue(req, w.op, rec.sector, rec.addr, len) }.is_err();
                k += 1;
                if k == n {
                    k = 0;
                }
            }
            ring.submit();
            let waited = ring.wait(timeout, |rsp| {
                failed |= rsp.status != Status::Ok as i64 || rsp.bytes != u64::from(len);
            });
            samples.push((rdtsc() - s) / batch);
            failed |= waited.is_err();
            if !failed {
                done += batch;
            }
        }
        let cycles_total = end(id, t0, done);
        if w.op == BlockOp::Write && !failed {
            failed = ring.queue_flush(u64::MAX).is_err();
            ring.submit();
            let waited = ring.wait(timeout, |rsp| {
                failed |= rsp.status != Status::Ok as i64;
            });
            failed |= waited.is_err();
        }
        let outcome = Outcome {
            ops: done,
            bytes: done * w.len as u64,
            cycles_total,
            flags: Outcome::checked(failed),
            extra: 0,
            samples: samples.len(),
            log: logged(done, ops, n, start),
        };
        r.report(id, &outcome, scratch);
    }
}
