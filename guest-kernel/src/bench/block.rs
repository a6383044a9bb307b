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
//! requests of a batch have 32 distinct slots; on the rings, whose 64 slots match, the
//! buffer slot of an operation is its ring slot: persistent per-slot buffers, as with Xen
//! blkfront's persistent grants), for sequential ones a 1 MiB buffer per direction. Write sources are tagged once, before the first case: the first quadword of
//! every 512-byte sector is `"pvki" << 32 | buffer << 24 | sector index`, so a write that
//! lands in the wrong place or from the wrong slot is visible to the host's check. Buffers
//! are never touched except by logged operations.
//!
//! # Variants
//!
//! | variant | per operation | latency pass (before the phase, not logged) |
//! |---|---|---|
//! | `ata-pio` | one command: 4 KiB = 23 port accesses (reads: 23 exits; writes: 2063, as each word of a `rep outsw` exits), 1 MiB (one EXT command) = 4107 accesses (reads: 4107 exits; writes: 526 347) (see [`crate::ata`]) | ≤ [`super::LATENCY_OPS`] operations, each timed (start to next start); random writes at most 16, 1 MiB writes none ([`Work::latency_ops`]) |
//! | `pv-hypercall` | one `BlockIo` exit (1 MiB = one request of 8 × 128 KiB segments) | ≤ [`super::LATENCY_OPS`] operations, each timed (start to next start) |
//! | `pv-ring`, `pv-ioeventfd`, `pv-poll` | ring of 64 slots; 4 KiB: batches of 32 requests, 1 MiB: one request per batch (its single buffer); one publish and at most one doorbell per batch, then spin on `rsp_prod` | as many operations as the timed loop, each batch timed |
//!
//! The timed loop between the markers reads the TSC only at its ends. The latency pass runs
//! the plan's first operations (on the rings: a plan of its own, aligned to the ring index it
//! starts at) before the `Begin` marker and is not logged: the logged operations all come
//! after it, so their last write to each sector and last read into each buffer still decide
//! what the host's check compares.
//!
//! # The hot loops
//!
//! Both PV drivers reuse request templates, as a real driver keeps its request
//! structures: [`PvBlock`] rewrites only the sector and, when the buffer moves, the
//! segment address; on the rings every slot is pre-filled once per workload
//! ([`BlockRing::set_template`]: op, segment lengths, the slot's own buffer, the slot
//! number as id), so a batch stores only a sector per request ([`fill`]: a load and a
//! store, unrolled by four), is pushed with one commit, and its responses are checked with
//! one `or` chain (`status | bytes ^ len`: about five instructions each, loop included).
//! That matters where ring 0 is interpreted (kvm_pvm: ~1 µs per instruction): queueing a
//! 4 KiB request took about 44 instructions (`objdump -d`), now about 3, plus about 150 per
//! batch.
//!
//! | variant | where the timed loop runs |
//! |---|---|
//! | `ata-pio`, `pv-hypercall`, `pv-ring`, `pv-ioeventfd` | ring 0 (a port write, the hypercall or the doorbell, needs it) |
//! | `pv-poll` | **ring 3** ([`crate::user`]), like a process polling an io_uring with `SQPOLL` or an SPDK queue mapped into it: it fills requests and polls `rsp_prod` while a host I/O thread polls `req_prod`; no exit, natively on kvm_pvm; the sample carries [`SAMPLE_RING3`] |
//!
//! The loop itself ([`ring_loop`]) is the same code in both rings. For `pv-poll`,
//! `cycles_total` is measured in ring 3 around the loop, as in the ring-3 clock cases:
//! without the one-time switch into and out of ring 3 (an `iretq` and an exception:
//! 100–300 µs on kvm_pvm, paid once per case like a process pays its first entry into user
//! mode), which the host's wall time between the ring-0 markers does include. (The markers
//! cannot move into ring 3: on kvm_pvm a port write from ring 3 faults even with IOPL 3.)
//! The host never asks for a doorbell while it polls; should it, ring-3 code cannot ring
//! (IOPL 0): it returns to ring 0, which rings and re-enters.
//!
//! Checks: every operation must complete without an ATA error / with status OK and all
//! bytes moved (`SAMPLE_VERIFIED`; otherwise `SAMPLE_FAILED` and the case stops). After
//! the phase of a write case (unbilled), the disk is flushed and the flush checked too.

use super::ring_pass::{drive, BatchSamples, RingPass};
use super::{begin, case, end, latency_ops, Outcome, Runner, Samples, Scratch, RING_VARIANTS};
use crate::statics::{Exclusive, Pages};
use pvkit_abi::bench::{
    CaseId, Device, OpRecord, Variant, Workload, MAX_OP_LOG, OP_READ, OP_WRITE,
    SAMPLE_LATENCY_PASS, SAMPLE_RING3,
};
use pvkit_abi::block::{BlockOp, BlockRequest, SECTOR_SIZE};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::{QueueId, BLOCK_QUEUE};
use pvkit_abi::Status;
use pvkit_guest::addr::virt_to_phys;
use pvkit_guest::ata::Ata;
use pvkit_guest::block::{self, set_segment_addrs, BlockRing, PvBlock, SEGMENT_BYTES};
use pvkit_guest::port::Pio;
use pvkit_guest::ring::kick;
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
    /// Most operations of the latency pass on the ATA disk (see [`Work::latency_ops`]).
    ata_latency: u64,
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

    /// Operations of the latency pass of a synchronous case of `ops` operations:
    /// [`latency_ops`], and on the ATA disk at most `ata_latency`, because ATA PIO writes
    /// are slow (see [`Work::ops`]): 16 random 4 KiB writes (1 s here), and no 1 MiB write
    /// (one takes ~10 s; the case then has no latency samples and the host reports its
    /// phase mean).
    fn latency_ops(&self, variant: Variant, ops: u64) -> u64 {
        let n = latency_ops(ops);
        if variant == Variant::AtaPio {
            n.min(self.ata_latency)
        } else {
            n
        }
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
        ata_latency: 64,
    },
    Work {
        workload: Workload::RandWrite4K,
        op: BlockOp::Write,
        len: SMALL,
        default: 128,
        quick: 16,
        ata_default: 128,
        ata_latency: 16,
    },
    Work {
        workload: Workload::SeqRead1M,
        op: BlockOp::Read,
        len: LARGE,
        default: 4,
        quick: 1,
        ata_default: 4,
        ata_latency: 4,
    },
    Work {
        workload: Workload::SeqWrite1M,
        op: BlockOp::Write,
        len: LARGE,
        default: 4,
        quick: 1,
        ata_default: 1,
        ata_latency: 0,
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
#[derive(Clone)]
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
/// the plan index of operation 0 (see the module documentation). Plan record `i` uses slot
/// `(i + slot_offset) % slots` of the buffer at `base` (GPA).
fn plan(
    log: &mut [OpRecord],
    mut addrs: Addresses,
    w: &Work,
    ops: u64,
    (base, slots, slot_offset): (u64, usize, usize),
) -> (usize, usize) {
    let n = ops.min(MAX_OP_LOG) as usize;
    let op = match w.op {
        BlockOp::Read => OP_READ,
        _ => OP_WRITE,
    };
    for (i, rec) in log[..n].iter_mut().enumerate() {
        *rec = OpRecord {
            sector: addrs.sector(i as u64),
            addr: base + (((i + slot_offset) % slots) * w.len) as u64,
            len: w.len as u32,
            op,
        };
    }
    (n, (n - (ops % n as u64) as usize) % n)
}

/// The plan index of operation 0 of a case of `ops` operations (see [`plan`]), computed
/// before the plan itself.
fn plan_start(ops: u64) -> usize {
    let n = ops.min(MAX_OP_LOG);
    ((n - ops % n) % n) as usize
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
        let (n, start) = plan(log, addrs, w, ops, (virt_to_phys(buf.as_ptr()), slots, 0));
        let plan = &log[..n];
        // The latency pass: the plan's first operations, each timed, not logged (the
        // logged ones come later and decide what the host compares).
        let latency = w.latency_ops(variant, ops);
        let latency_done = sync_loop::<D, true>(dev, w.op, plan, 0, latency, &mut samples);
        let t0 = begin(id);
        let done = sync_loop::<D, false>(dev, w.op, plan, start, ops, &mut samples);
        let cycles_total = end(id, t0, done);
        let mut failed = done != ops || latency_done != latency;
        if w.op == BlockOp::Write && !failed {
            failed = !dev.flush();
        }
        let outcome = Outcome {
            ops: done,
            bytes: done * w.len as u64,
            cycles_total,
            flags: Outcome::checked(failed) | SAMPLE_LATENCY_PASS,
            extra: 0,
            samples: samples.len(),
            log: logged(done, ops, n, start),
        };
        r.report(id, &outcome, scratch);
    }
}

/// A pass of a synchronous case: `ops` operations of `op` from plan record `start` on
/// (wrapping); returns the operations completed (the loop stops at the first failure).
/// `TIMED` (the latency pass): one `rdtsc` per operation (each is 4k–17k cycles in an
/// interpreted ring 0), an operation's sample running from its start to the next one's, so
/// that it includes one `rdtsc` and the loop step. Not `TIMED` (the timed loop between the
/// markers): no time read at all. The plan is walked in runs up to its end, so there is no
/// index wrap per operation.
#[inline(never)]
fn sync_loop<D: SyncDevice, const TIMED: bool>(
    dev: &mut D,
    op: BlockOp,
    plan: &[OpRecord],
    start: usize,
    ops: u64,
    samples: &mut Samples<'_>,
) -> u64 {
    let mut done = 0;
    let mut k = start;
    let mut prev = if TIMED { rdtsc() } else { 0 };
    while done < ops {
        let left = usize::try_from(ops - done).unwrap_or(usize::MAX);
        let run = plan.get(k..).unwrap_or_default();
        let run = &run[..run.len().min(left)];
        if run.is_empty() {
            break;
        }
        for rec in run {
            // SAFETY: the plan names slots of this workload's buffer, untouched otherwise.
            let ok = unsafe { dev.op(op, rec.sector, rec.addr, rec.len) };
            if TIMED {
                let now = rdtsc();
                samples.push(now - prev);
                prev = now;
            }
            if !ok {
                return done;
            }
            done += 1;
        }
        k = 0;
    }
    done
}

/// What a batch stores per request on top of the template ([`BlockRing::set_template`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Fill {
    /// The sector only: the template already names the operation's buffer (every case
    /// here: per-slot buffers, see `ring_cases`).
    Sector,
    /// The sector and the one segment's address (one-segment requests whose buffer is not
    /// the slot's own).
    SectorAddr,
    /// The sector and every segment address (several segments, buffer not the slot's).
    SectorSegments,
}

/// Writes the plan's operations from record `k` on (wrapping at the end of the plan)
/// into `slots`, storing only what `how` says on top of the template; returns the plan
/// index after them. Out of line so that its instructions can be counted
/// (`objdump -d`): per request of a `SectorAddr` batch, two loads, two stores and the
/// loop step.
#[inline(never)]
fn fill(slots: &mut [BlockRequest], plan: &[OpRecord], mut k: usize, how: Fill) -> usize {
    let mut slots = slots;
    while !slots.is_empty() {
        let recs = plan.get(k..).unwrap_or_default();
        if recs.is_empty() {
            break;
        }
        let m = slots.len().min(recs.len());
        let (now, rest) = slots.split_at_mut(m);
        match how {
            Fill::Sector => {
                for (req, rec) in now.iter_mut().zip(recs) {
                    req.sector = rec.sector;
                }
            }
            Fill::SectorAddr => {
                // Four requests per step: the loop overhead is then a quarter of an
                // instruction per request (LLVM unrolls this zip only by two).
                let mut reqs = now.chunks_exact_mut(4);
                let mut quads = recs.chunks_exact(4);
                for (r4, p4) in (&mut reqs).zip(&mut quads) {
                    for (req, rec) in r4.iter_mut().zip(p4) {
                        req.sector = rec.sector;
                        req.segments[0].addr = rec.addr;
                    }
                }
                for (req, rec) in reqs.into_remainder().iter_mut().zip(quads.remainder()) {
                    req.sector = rec.sector;
                    req.segments[0].addr = rec.addr;
                }
            }
            Fill::SectorSegments => {
                for (req, rec) in now.iter_mut().zip(recs) {
                    req.sector = rec.sector;
                    set_segment_addrs(req, rec.addr);
                }
            }
        }
        slots = rest;
        k += m;
        if k >= plan.len() {
            k = 0;
        }
    }
    k
}

/// The state of one pass of a ring case, shared by ring 0 and [`ring_loop`], which may
/// run in ring 3 (everything here is reachable there: the identity map is user-accessible).
#[repr(C)]
struct RingLoop {
    ring: *mut BlockRing,
    plan: *const OpRecord,
    /// Plan records.
    n: usize,
    /// The next plan record.
    k: usize,
    ops: u64,
    done: u64,
    queue_depth: u64,
    how: Fill,
    /// Bytes per operation (what each response must report).
    len: u64,
    /// Ring time-out in TSC cycles.
    timeout: u64,
    /// The latency pass's samples ([`BatchSamples::NONE`] in the timed loop).
    samples: BatchSamples,
    /// Requests of the batch published and not yet answered (0: none).
    in_flight: u64,
    /// TSC cycles spent in [`ring_loop`] (summed over its calls).
    cycles: u64,
    failed: bool,
    /// The loop runs in ring 3 (IOPL 0): a doorbell needs ring 0.
    user: bool,
    /// Set on return: ring the block doorbell and call [`ring_loop`] again.
    kick: bool,
}

/// The batches of a ring pass, until `ops` are done, one fails, or (in ring 3) the host
/// wants a doorbell. Per batch: fill the slots from the plan ([`fill`]), commit, publish,
/// ring if asked (ring 0), spin until every response is in, check them all with one `or`
/// chain, and in the latency pass record the cycles per request ([`BatchSamples`]). `arg`
/// is the address of a [`RingLoop`].
///
/// The same function runs in ring 0 and, called through [`crate::user::call`], in ring 3:
/// there it uses no port I/O and touches only the ring, the plan, the samples and the
/// `RingLoop` (all in the user-accessible identity map). A doorbell the host asks for (it
/// never does while it polls) is left to ring 0: the loop returns with `kick` set and the
/// batch in flight, and ring 0 rings and calls it again.
extern "C" fn ring_loop(arg: u64) -> u64 {
    // SAFETY: `arg` is the address of a `RingLoop` that `ring_cases` owns and does not
    // touch during this call.
    let l = unsafe { &mut *(arg as *mut RingLoop) };
    // SAFETY: `l.ring` points to the `BlockRing` `ring_cases` borrows mutably for the case
    // and does not use during this call; `l.plan` to `l.n` records of the op log, which
    // nothing writes during the phase.
    let (ring, plan) = unsafe { (&mut *l.ring, core::slice::from_raw_parts(l.plan, l.n)) };
    // The loop state lives in registers (where ring 0 is interpreted, every load and
    // store of `l` costs), and goes back into `l` on return.
    let (ops, depth, how, len, timeout) = (l.ops, l.queue_depth, l.how, l.len, l.timeout);
    let (mut done, mut k, mut failed, mut samples) = (l.done, l.k, l.failed, l.samples);
    let mut in_flight = l.in_flight;
    let start = rdtsc();
    // Latency pass: one `rdtsc` per batch; a batch's sample runs from the end of the one
    // before (or the start of this call) to its own end.
    samples.resume(in_flight, start);
    let mut kick_needed = false;
    loop {
        if in_flight == 0 {
            if done >= ops || failed {
                break;
            }
            let batch = depth.min(ops - done);
            match ring.slots_mut(batch as u32) {
                // One request whose template names its buffer (the 1 MiB cases): its
                // sector is all there is to store.
                Ok(([req], [])) if how == Fill::Sector && k < plan.len() => {
                    req.sector = plan[k].sector;
                    k += 1;
                    if k == plan.len() {
                        k = 0;
                    }
                }
                Ok((a, b)) => {
                    k = fill(a, plan, k, how);
                    if !b.is_empty() {
                        k = fill(b, plan, k, how);
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            // SAFETY: the slots now name slots of this workload's 'static buffer (4 KiB:
            // `batch` ≤ 32 consecutive plan records, so no slot twice; 1 MiB: the one
            // buffer, one request per batch), which Rust code does not touch until the
            // batch's responses are consumed below.
            failed |= unsafe { ring.commit(batch as u32) }.is_err();
            in_flight = batch;
            if ring.publish() {
                if l.user {
                    kick_needed = true;
                    break;
                }
                kick(BLOCK_QUEUE);
            }
        }
        let mut bad = 0u64;
        let waited = ring.wait(timeout, |rsp| {
            bad |= rsp.status as u64 | (rsp.bytes ^ len);
        });
        samples.batch_done(in_flight);
        if bad != 0 || waited.is_err() {
            failed = true;
        } else {
            done += in_flight;
        }
        in_flight = 0;
    }
    l.cycles += rdtsc() - start;
    (l.done, l.k, l.failed, l.samples) = (done, k, failed, samples);
    (l.in_flight, l.kick) = (in_flight, kick_needed);
    0
}

impl RingPass for RingLoop {
    const BODY: extern "C" fn(u64) -> u64 = ring_loop;
    const QUEUE: QueueId = BLOCK_QUEUE;

    fn user(&self) -> bool {
        self.user
    }

    fn wants_kick(&self) -> bool {
        self.kick
    }
}

/// What every pass of one ring case shares.
struct RingCase<'a> {
    work: &'a Work,
    /// The operations' sectors (every pass starts from the same sequence).
    addrs: Addresses,
    /// GPA and slots of the workload's buffer.
    base: u64,
    slots: usize,
    /// Whether ring slot `s` always uses buffer slot `s % slots` (see `ring_cases`).
    per_slot: bool,
    queue_depth: u64,
    timeout: u64,
    user: bool,
}

impl RingCase<'_> {
    /// A pass of `ops` operations: writes its plan into `log` and returns the loop state
    /// (recording no samples), the plan length and its start (see [`plan`]). The plan's
    /// buffer slots are shifted to match the ring index the pass starts at.
    fn pass(&self, ring: &mut BlockRing, log: &mut [OpRecord], ops: u64) -> (RingLoop, usize) {
        let w = self.work;
        let slots = self.slots;
        let (how, slot_offset) = match (self.per_slot, w.len as u32 > SEGMENT_BYTES) {
            (true, _) => {
                let first = ring.ring().next_index() as usize % slots;
                (
                    Fill::Sector,
                    (first + slots - plan_start(ops) % slots) % slots,
                )
            }
            (false, false) => (Fill::SectorAddr, 0),
            (false, true) => (Fill::SectorSegments, 0),
        };
        let (n, start) = plan(
            log,
            self.addrs.clone(),
            w,
            ops,
            (self.base, slots, slot_offset),
        );
        let l = RingLoop {
            ring: &raw mut *ring,
            plan: log.as_ptr(),
            n,
            k: start,
            ops,
            done: 0,
            queue_depth: self.queue_depth,
            how,
            len: w.len as u64,
            timeout: self.timeout,
            samples: BatchSamples::NONE,
            in_flight: 0,
            cycles: 0,
            failed: false,
            user: self.user,
            kick: false,
        };
        (l, start)
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
    let user = variant == Variant::PvPoll;
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
        let base = virt_to_phys(buf.as_ptr());
        // Persistent per-slot buffers (as Xen blkfront's persistent grants): when the ring
        // size is a multiple of the buffer's slots, ring slot `s` always uses buffer slot
        // `s % slots`, so its template already holds the buffer address and a request
        // stores only its sector (batches of ≤ 32 consecutive ring slots still never share
        // a buffer slot).
        let c = RingCase {
            work: w,
            addrs,
            base,
            slots,
            per_slot: (RING_SIZE as usize).is_multiple_of(slots),
            queue_depth: if w.len == SMALL { QUEUE_DEPTH } else { 1 },
            timeout,
            user,
        };
        // The templates (set-up, unbilled). A case that stopped with requests in flight
        // leaves slots that cannot be templated: fail this one rather than send stale
        // requests.
        let slot_gpa = |slot: u32| base + (slot as usize % slots * w.len) as u64;
        if ring.ring().outstanding() != 0 || ring.set_template(w.op, len, slot_gpa).is_err() {
            r.fail_setup(id, format_args!("the ring is not idle"), scratch);
            continue;
        }
        let (mut samples, log) = scratch.split();
        // The latency pass: as many operations, each batch timed, not logged (the logged
        // ones come later and decide what the host compares).
        let (mut lat, _) = c.pass(ring, log, ops);
        lat.samples = BatchSamples::into(&mut samples);
        drive(&mut lat);
        samples.set_len(lat.samples.n);
        if lat.failed || lat.done != ops {
            r.fail_setup(id, format_args!("the latency pass failed"), scratch);
            continue;
        }
        // The timed loop: no time read but at its ends.
        let (mut l, start) = c.pass(ring, log, ops);
        let n = l.n;
        let t0 = begin(id);
        drive(&mut l);
        let phase = end(id, t0, l.done);
        // In ring 3, the loop's own time (as in the ring-3 clock cases): without the
        // one-time switch into and out of ring 3, which the host's wall time includes.
        let cycles_total = if user { l.cycles } else { phase };
        let done = l.done;
        let mut failed = l.failed;
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
            flags: Outcome::checked(failed)
                | SAMPLE_LATENCY_PASS
                | if user { SAMPLE_RING3 } else { 0 },
            extra: 0,
            samples: samples.len(),
            log: logged(done, ops, n, start),
        };
        r.report(id, &outcome, scratch);
    }
}
