//! Benchmark bookkeeping: phases marked by the guest ([`pvkit_abi::Hypercall::BenchPhase`])
//! with the exits attributed to each, and the samples it reports
//! ([`pvkit_abi::Hypercall::BenchResult`]): percentiles computed from raw cycle samples
//! when the guest leaves them to the host, and host-side verification of block data from
//! an op log ([`verify_op_log`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvkit_abi::bench::{BenchSample, CaseId, OpRecord, OP_READ, OP_WRITE, SAMPLE_FAILED};
use pvkit_abi::block::{MAX_REQUEST_BYTES, SECTOR_SIZE};
use pvkit_abi::call::Hypercall;
use pvkit_abi::Status;
use vm_memory::Bytes;

use crate::exit::ledger::{ExitKind, ExitLedger, LedgerSnapshot};
use crate::io::disk::SharedDisk;
use crate::vstate::memory::{guest_range, GuestRam};

/// Most phases (and, separately, samples) kept per run; more are refused with `ENOMEM`.
pub const MAX_RECORDS: usize = 1 << 16;
/// Most phases open at once; more are refused with `EBUSY`.
pub const MAX_OPEN: usize = 16;
/// Most distinct exit kinds one phase may touch. A phase that touched more is closed
/// without a record and its `End` answered `E2BIG` (a real case touches a handful of ports).
pub const MAX_PHASE_KINDS: usize = 256;
/// Most bytes the phase bookkeeping holds at once (the starting snapshots of the open
/// phases plus the finished records, estimated by [`snapshot_bytes`]). A `Begin` or `End`
/// that would pass it is refused with `ENOMEM` and nothing is stored.
pub const MAX_PHASE_BYTES: usize = 16 << 20;
/// Most raw cycle samples kept over a whole run (32 MiB); more are refused with `ENOMEM`.
pub const MAX_RAW_CYCLES: usize = 1 << 22;
/// Most 512-byte chunks an op log may name for verification (512 MiB of I/O); a larger
/// log is recorded as not verifiable.
pub const MAX_VERIFY_SECTORS: u64 = 1 << 20;

/// The kernel counters ([`LedgerSnapshot::kernel`]) that count the `End` marker's own exit
/// once, which a phase excludes as it excludes the marker from its userspace exits.
pub const MARKER_KERNEL_COUNTERS: [&str; 2] = ["exits", "io_exits"];

/// One finished phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseRecord {
    /// The case.
    pub case: CaseId,
    /// Operations the guest says it did (arg2 of the `End` marker).
    pub ops: u64,
    /// The ledger delta between the markers (the marker exits themselves excluded):
    /// userspace exits by kind in `counts` (ports are named: `PortRead(0x1f0)` vs
    /// `PortRead(0x1f7)`, doorbells are `PortWrite(0x510)`, one port for every queue), their sum in `total`,
    /// and in `notifications` the in-kernel notifications per queue (ioeventfd doorbell
    /// writes that never left the kernel, by [`crate::devices::pv::notifier_name`]).
    pub exits: LedgerSnapshot,
    /// Host wall time between the two markers.
    pub host_time: Duration,
}

impl PhaseRecord {
    /// In-kernel notifications of queue `queue` during the phase.
    pub fn notifications(&self, queue: pvkit_abi::ring::QueueId) -> u64 {
        crate::devices::pv::notifier_name(queue)
            .and_then(|name| self.exits.notifications.get(name))
            .copied()
            .unwrap_or(0)
    }
}

/// Called with each phase as it ends (on the vCPU thread, inside the `End` marker's exit:
/// keep it short). `pvkit bench` drives its progress bar with it.
#[derive(Clone)]
pub struct PhaseObserver(pub Arc<dyn Fn(&PhaseRecord) + Send + Sync>);

impl std::fmt::Debug for PhaseObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhaseObserver(..)")
    }
}

impl<F: Fn(&PhaseRecord) + Send + Sync + 'static> From<Arc<F>> for PhaseObserver {
    fn from(f: Arc<F>) -> Self {
        Self(f)
    }
}

impl From<Arc<dyn Fn(&PhaseRecord) + Send + Sync>> for PhaseObserver {
    fn from(f: Arc<dyn Fn(&PhaseRecord) + Send + Sync>) -> Self {
        Self(f)
    }
}

/// The outcome of host-side data verification for one sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The guest sent no op log.
    NoLog,
    /// The guest sent an op log but the VMM has no disk to check it against, or the log is
    /// too large to check.
    NotVerifiable(String),
    /// Every logged buffer and sector matched.
    Passed,
    /// A mismatch or an invalid log entry; the case must be reported FAILED.
    Failed(String),
}

/// One reported sample, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleRecord {
    /// The sample; `cycles_median`/`cycles_p99` are filled in from `cycles` when the guest
    /// left them at 0.
    pub sample: BenchSample,
    /// The raw per-operation cycle samples the guest passed (may be empty).
    pub cycles: Vec<u64>,
    /// Entries in the op log.
    pub op_log_len: usize,
    /// Host-side data verification.
    pub verification: Verification,
}

impl SampleRecord {
    /// Whether the case failed (the guest said so, or host verification failed).
    pub fn failed(&self) -> bool {
        self.sample.flags & SAMPLE_FAILED != 0
            || matches!(self.verification, Verification::Failed(_))
    }
}

/// Reads sectors of the disk a benchmark ran against, for [`verify_op_log`].
pub trait DiskReader: Send {
    /// Fills `buf` with sector `sector`.
    fn read_sector(
        &mut self,
        sector: u64,
        buf: &mut [u8; SECTOR_SIZE as usize],
    ) -> Result<(), String>;
}

/// The disk image is read for op-log verification (under its lock, like every access).
impl DiskReader for SharedDisk {
    fn read_sector(
        &mut self,
        sector: u64,
        buf: &mut [u8; pvkit_abi::block::SECTOR_SIZE as usize],
    ) -> Result<(), String> {
        let offset = sector
            .checked_mul(pvkit_abi::block::SECTOR_SIZE)
            .ok_or_else(|| format!("sector {sector} is past the end of the disk"))?;
        pvkit_devices::BlockBackend::read_at(self, offset, buf).map_err(|e| e.to_string())
    }
}

/// The nearest-rank percentile `p` (0–100) of `sorted` (ascending, non-empty).
pub fn percentile(sorted: &[u64], p: u32) -> u64 {
    let n = sorted.len() as u64;
    // rank = ceil(p/100 · n), at least 1.
    let rank = (u64::from(p) * n).div_ceil(100).clamp(1, n.max(1));
    sorted
        .get(usize::try_from(rank - 1).unwrap_or(0))
        .copied()
        .unwrap_or(0)
}

const CHUNK: u64 = SECTOR_SIZE;

/// Replays an op log against guest memory and the disk, in order: for each 512-byte
/// buffer chunk and each sector, the last operation that touched it decides what must
/// match — a read buffer must hold what the disk holds at its sector (unless a later write
/// changed that sector), and the disk must hold what a write's source buffer holds (unless
/// a later read overwrote that buffer).
pub fn verify_op_log(mem: &GuestRam, log: &[OpRecord], disk: &mut dyn DiskReader) -> Verification {
    let mut total = 0u64;
    for (i, r) in log.iter().enumerate() {
        let bad = |why: &str| Verification::Failed(format!("op log entry {i}: {why}"));
        if r.op != OP_READ && r.op != OP_WRITE {
            return bad("unknown op");
        }
        let len = u64::from(r.len);
        if len == 0 || len % CHUNK != 0 || len > MAX_REQUEST_BYTES {
            return bad("length is not a non-zero multiple of 512 up to 1 MiB");
        }
        if guest_range(mem, r.addr, len).is_none() {
            return bad("buffer is not inside guest RAM");
        }
        if r.sector.checked_add(len / CHUNK).is_none() {
            return bad("sector range overflows");
        }
        total += len / CHUNK;
    }
    if total > MAX_VERIFY_SECTORS {
        return Verification::NotVerifiable(format!(
            "the op log names {total} sectors; at most {MAX_VERIFY_SECTORS} are verified"
        ));
    }
    // Last operation per sector and per buffer chunk. B-trees, not hash maps: the keys are
    // the guest's, so no hash-flooding, and no random hash seed (which the vCPU thread's
    // seccomp filter would refuse: `getrandom`); they also iterate in order.
    let mut last_sector: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last_chunk: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, r) in log.iter().enumerate() {
        for k in 0..u64::from(r.len) / CHUNK {
            last_sector.insert(r.sector + k, i);
            last_chunk.insert(r.addr + k * CHUNK, i);
        }
    }
    let op = |i: usize| log.get(i).map_or(0, |r| r.op);
    let mut from_mem = [0u8; CHUNK as usize];
    let mut from_disk = [0u8; CHUNK as usize];
    let mut compare = |i: usize, chunk: u64, sector: u64, what: &str| -> Result<(), String> {
        mem.read_slice(&mut from_mem, vm_memory::GuestAddress(chunk))
            .map_err(|e| format!("op log entry {i}: cannot read the buffer: {e}"))?;
        disk.read_sector(sector, &mut from_disk)
            .map_err(|e| format!("op log entry {i}: cannot read sector {sector}: {e}"))?;
        if from_mem != from_disk {
            return Err(format!(
                "op log entry {i} ({what} sector {sector}, buffer {chunk:#x}): data mismatch"
            ));
        }
        Ok(())
    };
    for (&chunk, &i) in &last_chunk {
        let Some(r) = log.get(i).filter(|r| r.op == OP_READ) else {
            continue;
        };
        let sector = r.sector + (chunk - r.addr) / CHUNK;
        // A later write to this sector changed the disk: nothing to compare.
        let later = last_sector.get(&sector).copied().unwrap_or(i);
        if later != i && op(later) == OP_WRITE {
            continue;
        }
        if let Err(e) = compare(i, chunk, sector, "read") {
            return Verification::Failed(e);
        }
    }
    for (&sector, &i) in &last_sector {
        let Some(r) = log.get(i).filter(|r| r.op == OP_WRITE) else {
            continue;
        };
        let chunk = r.addr + (sector - r.sector) * CHUNK;
        // A later read into this buffer overwrote the source data.
        let later = last_chunk.get(&chunk).copied().unwrap_or(i);
        if later != i && op(later) == OP_READ {
            continue;
        }
        if let Err(e) = compare(i, chunk, sector, "write") {
            return Verification::Failed(e);
        }
    }
    Verification::Passed
}

/// Heap bytes a [`LedgerSnapshot`] of `kinds` exit kinds and `notifiers` notification
/// counters costs, generously estimated: three times the entry size per B-tree entry (nodes
/// are at least about half full, plus their links), plus the fixed part.
pub fn snapshot_bytes(kinds: usize, notifiers: usize) -> usize {
    let entry = 3 * std::mem::size_of::<(ExitKind, u64)>();
    let note = 3 * std::mem::size_of::<(&'static str, u64)>();
    std::mem::size_of::<PhaseRecord>()
        .saturating_add(kinds.saturating_mul(entry))
        .saturating_add(notifiers.saturating_mul(note))
}

fn snapshot_cost(s: &LedgerSnapshot) -> usize {
    snapshot_bytes(s.counts.len(), s.notifications.len())
}

/// Open phases, finished phases and samples of one run.
#[derive(Default)]
pub struct BenchRecorder {
    open: Vec<(CaseId, LedgerSnapshot, Instant)>,
    phases: Vec<PhaseRecord>,
    /// Estimated bytes held by `open` and `phases` ([`snapshot_bytes`]).
    phase_bytes: usize,
    samples: Vec<SampleRecord>,
    raw_cycles: usize,
    disk: Option<Box<dyn DiskReader>>,
    observer: Option<PhaseObserver>,
}

impl std::fmt::Debug for BenchRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchRecorder")
            .field("open", &self.open.len())
            .field("phases", &self.phases.len())
            .field("samples", &self.samples.len())
            .field("disk", &self.disk.is_some())
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl BenchRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the recorder the disk that op logs are verified against.
    pub fn set_disk(&mut self, disk: Box<dyn DiskReader>) {
        self.disk = Some(disk);
    }

    /// Calls `observer` with every phase as it ends.
    pub fn set_observer(&mut self, observer: PhaseObserver) {
        self.observer = Some(observer);
    }

    /// Starts `case`. The ledger must already count the marker's own exit (it is then part
    /// of the snapshot and excluded from the phase). Beginning an open case restarts it.
    /// `EBUSY` with [`MAX_OPEN`] phases open, `ENOMEM` if the starting snapshot would take
    /// the bookkeeping past [`MAX_PHASE_BYTES`]; either way nothing changes.
    pub fn begin(&mut self, case: CaseId, ledger: &ExitLedger) -> Result<(), Status> {
        let need = snapshot_bytes(ledger.kinds(), ledger.notifier_count());
        let slot = self.open.iter().position(|(c, _, _)| *c == case);
        if slot.is_none() && self.open.len() >= MAX_OPEN {
            return Err(Status::EBUSY);
        }
        // Restarting frees the old snapshot.
        let freed = slot
            .and_then(|i| self.open.get(i))
            .map_or(0, |(_, s, _)| snapshot_cost(s));
        let used = self.phase_bytes.saturating_sub(freed);
        if used.saturating_add(need) > MAX_PHASE_BYTES {
            return Err(Status::ENOMEM);
        }
        // Estimated from the ledger before copying it: nothing is allocated past the cap.
        let snap = ledger.snapshot();
        self.phase_bytes = used.saturating_add(snapshot_cost(&snap));
        match slot.and_then(|i| self.open.get_mut(i)) {
            Some(open) => *open = (case, snap, Instant::now()),
            None => self.open.push((case, snap, Instant::now())),
        }
        Ok(())
    }

    /// Ends `case`; `EINVAL` if it was not begun. The `End` marker's own exit (already in
    /// the ledger) is excluded. An ended phase is closed whatever the status; it is
    /// recorded only on `OK`: `E2BIG` if it touched more than [`MAX_PHASE_KINDS`] exit
    /// kinds, `ENOMEM` past [`MAX_RECORDS`] records or [`MAX_PHASE_BYTES`].
    pub fn end(&mut self, case: CaseId, ops: u64, ledger: &ExitLedger) -> Result<(), Status> {
        let i = self
            .open
            .iter()
            .position(|(c, _, _)| *c == case)
            .ok_or(Status::EINVAL)?;
        let (_, snap, start) = self.open.swap_remove(i);
        let host_time = start.elapsed();
        self.phase_bytes = self.phase_bytes.saturating_sub(snapshot_cost(&snap));
        if self.phases.len() >= MAX_RECORDS {
            return Err(Status::ENOMEM);
        }
        // The marker itself is one more kind in the delta: allow for it.
        let mut exits = ledger
            .delta_bounded(&snap, MAX_PHASE_KINDS.saturating_add(1))
            .ok_or(Status::E2BIG)?;
        exits.remove_one(ExitKind::Hypercall(Hypercall::BenchPhase));
        // The kernel counted the `End` marker's exit too (a port-I/O exit to userspace).
        for name in MARKER_KERNEL_COUNTERS {
            if let Some(v) = exits.kernel.get_mut(name) {
                *v = v.saturating_sub(1);
            }
        }
        if exits.counts.len() > MAX_PHASE_KINDS {
            return Err(Status::E2BIG);
        }
        let cost = snapshot_cost(&exits);
        if self.phase_bytes.saturating_add(cost) > MAX_PHASE_BYTES {
            return Err(Status::ENOMEM);
        }
        let record = PhaseRecord {
            case,
            ops,
            exits,
            host_time,
        };
        if let Some(obs) = &self.observer {
            (obs.0)(&record);
        }
        self.phase_bytes += cost;
        self.phases.push(record);
        Ok(())
    }

    /// Whether `n` more raw cycle samples may be stored.
    pub fn has_room_for_cycles(&self, n: usize) -> bool {
        self.samples.len() < MAX_RECORDS && self.raw_cycles.saturating_add(n) <= MAX_RAW_CYCLES
    }

    /// Stores a sample: fills in the percentiles the guest left at 0 from `cycles`, and
    /// verifies `log` against the disk if there is one.
    pub fn sample(
        &mut self,
        mem: &GuestRam,
        mut sample: BenchSample,
        cycles: Vec<u64>,
        log: &[OpRecord],
    ) -> Result<(), Status> {
        if !self.has_room_for_cycles(cycles.len()) {
            return Err(Status::ENOMEM);
        }
        if !cycles.is_empty() && (sample.cycles_median == 0 || sample.cycles_p99 == 0) {
            let mut sorted = cycles.clone();
            sorted.sort_unstable();
            if sample.cycles_median == 0 {
                sample.cycles_median = percentile(&sorted, 50);
            }
            if sample.cycles_p99 == 0 {
                sample.cycles_p99 = percentile(&sorted, 99);
            }
        }
        let verification = match (&mut self.disk, log.is_empty()) {
            (_, true) => Verification::NoLog,
            (None, false) => Verification::NotVerifiable("this VM has no disk".into()),
            (Some(disk), false) => verify_op_log(mem, log, disk.as_mut()),
        };
        self.raw_cycles += cycles.len();
        self.samples.push(SampleRecord {
            sample,
            cycles,
            op_log_len: log.len(),
            verification,
        });
        Ok(())
    }

    /// Finished phases, in the order they ended.
    pub fn phases(&self) -> &[PhaseRecord] {
        &self.phases
    }

    /// Samples, in the order they were reported.
    pub fn samples(&self) -> &[SampleRecord] {
        &self.samples
    }

    /// Consumes the recorder, returning phases and samples.
    pub fn into_parts(self) -> (Vec<PhaseRecord>, Vec<SampleRecord>) {
        (self.phases, self.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_ram;
    use pvkit_abi::bench::{Device, Variant, Workload};
    use vm_memory::GuestAddress;

    const CASE: CaseId = CaseId {
        device: Device::Console,
        variant: Variant::Uart,
        workload: Workload::Write64,
    };

    #[test]
    fn phase_excludes_both_markers() {
        let mut l = ExitLedger::new();
        let mut r = BenchRecorder::new();
        l.record(ExitKind::Hypercall(Hypercall::BenchPhase));
        r.begin(CASE, &l).unwrap();
        l.record(ExitKind::PortWrite(0x3f8));
        l.record(ExitKind::PortRead(0x3fd));
        l.record(ExitKind::Hypercall(Hypercall::BenchPhase));
        r.end(CASE, 1, &l).unwrap();
        let p = &r.phases()[0];
        assert_eq!(p.exits.total, 2);
        assert_eq!(p.exits.count(ExitKind::Hypercall(Hypercall::BenchPhase)), 0);
        assert_eq!(p.ops, 1);
    }

    #[test]
    fn observer_sees_each_phase_as_it_ends() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let mut r = BenchRecorder::new();
        r.set_observer(PhaseObserver::from(Arc::new(move |p: &PhaseRecord| {
            s2.lock().unwrap().push((p.case, p.ops, p.exits.total));
        })));
        let mut l = ExitLedger::new();
        let n = l.notifier(crate::devices::pv::block::NOTIFY_BLOCK_RING);
        r.begin(CASE, &l).unwrap();
        l.record(ExitKind::PortRead(0x40));
        n.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        r.end(CASE, 5, &l).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(CASE, 5, 1)]);
        let p = &r.phases()[0];
        assert_eq!(p.notifications(pvkit_abi::ring::BLOCK_QUEUE), 2);
        assert_eq!(p.notifications(pvkit_abi::ring::CONSOLE_QUEUE), 0);
        assert_eq!(format!("{:?}", r.observer.unwrap()), "PhaseObserver(..)");
    }

    #[test]
    fn end_without_begin_and_restart() {
        let l = ExitLedger::new();
        let mut r = BenchRecorder::new();
        assert_eq!(r.end(CASE, 0, &l), Err(Status::EINVAL));
        r.begin(CASE, &l).unwrap();
        r.begin(CASE, &l).unwrap();
        assert_eq!(r.open.len(), 1, "re-begin restarts");
    }

    #[test]
    fn phases_touching_too_many_kinds_are_refused_and_closed() {
        let mut l = ExitLedger::new();
        let mut r = BenchRecorder::new();
        l.record(ExitKind::Hypercall(Hypercall::BenchPhase));
        r.begin(CASE, &l).unwrap();
        for p in 0..MAX_PHASE_KINDS as u16 {
            l.record(ExitKind::PortRead(p));
        }
        l.record(ExitKind::Hypercall(Hypercall::BenchPhase));
        // Exactly MAX_PHASE_KINDS kinds (the marker excluded): recorded.
        r.end(CASE, 0, &l).unwrap();
        assert_eq!(r.phases()[0].exits.counts.len(), MAX_PHASE_KINDS);
        r.begin(CASE, &l).unwrap();
        for p in 0..=MAX_PHASE_KINDS as u16 {
            l.record(ExitKind::PortWrite(p));
        }
        assert_eq!(r.end(CASE, 0, &l), Err(Status::E2BIG));
        assert_eq!(r.phases().len(), 1, "nothing recorded");
        assert!(r.open.is_empty(), "the refused phase is closed");
        assert_eq!(r.end(CASE, 0, &l), Err(Status::EINVAL));
        assert_eq!(r.phase_bytes, snapshot_cost(&r.phases()[0].exits));
    }

    #[test]
    fn phase_bookkeeping_is_capped_in_bytes() {
        let mut l = ExitLedger::new();
        // A ledger so large that a few starting snapshots fill the budget.
        for p in 0..=u16::MAX {
            l.record(ExitKind::PortRead(p));
            l.record(ExitKind::PortWrite(p));
        }
        let each = snapshot_bytes(l.kinds(), 0);
        let fit = MAX_PHASE_BYTES / each;
        assert!((1..MAX_OPEN).contains(&fit), "{fit} snapshots fit");
        let mut r = BenchRecorder::new();
        let case = |i: u16| CaseId {
            device: Device::Console,
            variant: Variant::Uart,
            workload: [Workload::Write64, Workload::Write4K][usize::from(i % 2)],
        };
        // Distinct valid case ids: vary the variant too.
        let cases: Vec<CaseId> = [Variant::Uart, Variant::PvHypercall, Variant::PvRing]
            .into_iter()
            .flat_map(|v| {
                (0..2).map(move |i| CaseId {
                    variant: v,
                    ..case(i)
                })
            })
            .collect();
        let mut ok = 0;
        for c in &cases {
            match r.begin(*c, &l) {
                Ok(()) => ok += 1,
                Err(s) => assert_eq!(s, Status::ENOMEM),
            }
        }
        assert_eq!(ok, fit.min(cases.len()));
        assert!(r.phase_bytes <= MAX_PHASE_BYTES);
        // Restarting an open case reuses its share; ending frees it.
        r.begin(cases[0], &l).unwrap();
        let before = r.phase_bytes;
        r.end(cases[0], 0, &l).unwrap();
        assert!(r.phase_bytes < before);
        assert_eq!(r.phases()[0].exits.total, 0);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&v, 100), 100);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[1, 2], 50), 1);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn samples_get_host_percentiles_unless_given() {
        let mem = create_ram(4).unwrap();
        let mut r = BenchRecorder::new();
        let s = BenchSample {
            case: CASE.to_u64(),
            ..Default::default()
        };
        r.sample(&mem, s, vec![5, 1, 3, 2, 4], &[]).unwrap();
        let given = BenchSample {
            cycles_median: 77,
            ..s
        };
        r.sample(&mem, given, vec![5, 1, 3], &[]).unwrap();
        r.sample(&mem, s, vec![], &[]).unwrap();
        let got: Vec<_> = r
            .samples()
            .iter()
            .map(|x| (x.sample.cycles_median, x.sample.cycles_p99))
            .collect();
        assert_eq!(got, vec![(3, 5), (77, 5), (0, 0)]);
        assert_eq!(r.samples()[0].verification, Verification::NoLog);
        assert!(!r.samples()[0].failed());
    }

    struct MemDisk(Vec<u8>);
    impl DiskReader for MemDisk {
        fn read_sector(&mut self, sector: u64, buf: &mut [u8; 512]) -> Result<(), String> {
            let at = usize::try_from(sector * 512).map_err(|e| e.to_string())?;
            let s = self.0.get(at..at + 512).ok_or("past the end of the disk")?;
            buf.copy_from_slice(s);
            Ok(())
        }
    }

    fn rec(op: u32, sector: u64, addr: u64, len: u32) -> OpRecord {
        OpRecord {
            sector,
            addr,
            len,
            op,
        }
    }

    fn setup() -> (GuestRam, MemDisk) {
        let mem = create_ram(4).unwrap();
        let disk: Vec<u8> = (0..16 * 512).map(|i| (i / 512) as u8).collect();
        (mem, MemDisk(disk))
    }

    #[test]
    fn op_log_reads_and_writes_verify() {
        let (mem, mut disk) = setup();
        // Read sectors 2..4 into 0x10000: the buffer holds what the disk holds.
        mem.write_slice(&disk.0[1024..2048], GuestAddress(0x10000))
            .unwrap();
        // Write 0x20000 to sector 5: the disk holds the source buffer.
        mem.write_slice(&[0xee; 512], GuestAddress(0x20000))
            .unwrap();
        disk.0[5 * 512..6 * 512].fill(0xee);
        let log = [
            rec(OP_READ, 2, 0x10000, 1024),
            rec(OP_WRITE, 5, 0x20000, 512),
        ];
        assert_eq!(verify_op_log(&mem, &log, &mut disk), Verification::Passed);
        // Corrupt the read buffer.
        mem.write_slice(&[9], GuestAddress(0x10000 + 600)).unwrap();
        assert!(matches!(
            verify_op_log(&mem, &log, &mut disk),
            Verification::Failed(m) if m.contains("entry 0") && m.contains("sector 3")
        ));
    }

    #[test]
    fn op_log_later_operations_decide() {
        let (mem, mut disk) = setup();
        // Read sector 1 into B, then write sector 1 from C: the read is superseded.
        mem.write_slice(&[0xaa; 512], GuestAddress(0x30000))
            .unwrap(); // stale B
        mem.write_slice(&[0xcc; 512], GuestAddress(0x40000))
            .unwrap();
        disk.0[512..1024].fill(0xcc);
        let log = [
            rec(OP_READ, 1, 0x30000, 512),
            rec(OP_WRITE, 1, 0x40000, 512),
        ];
        assert_eq!(verify_op_log(&mem, &log, &mut disk), Verification::Passed);
        // Write sector 7 from D, then read sector 8 into D: the write's source is gone.
        mem.write_slice(&disk.0[8 * 512..9 * 512], GuestAddress(0x50000))
            .unwrap();
        disk.0[7 * 512..8 * 512].fill(0x77);
        let log = [
            rec(OP_WRITE, 7, 0x50000, 512),
            rec(OP_READ, 8, 0x50000, 512),
        ];
        assert_eq!(verify_op_log(&mem, &log, &mut disk), Verification::Passed);
    }

    #[test]
    fn op_log_invalid_entries_fail() {
        let (mem, mut disk) = setup();
        for r in [
            rec(3, 0, 0x1000, 512),
            rec(OP_READ, 0, 0x1000, 0),
            rec(OP_READ, 0, 0x1000, 100),
            rec(OP_READ, 0, 0x1000, 2 << 20),
            rec(OP_READ, 0, (4 << 20) - 256, 512),
            rec(OP_READ, 0, u64::MAX - 100, 512),
            rec(OP_READ, u64::MAX, 0x1000, 512),
        ] {
            assert!(
                matches!(
                    verify_op_log(&mem, &[r], &mut disk),
                    Verification::Failed(_)
                ),
                "{r:?}"
            );
        }
        // Past the end of the disk: a disk read error is a failure, not a panic.
        assert!(matches!(
            verify_op_log(&mem, &[rec(OP_READ, 100, 0x1000, 512)], &mut disk),
            Verification::Failed(_)
        ));
    }

    #[test]
    fn no_disk_means_not_verifiable() {
        let mem = create_ram(4).unwrap();
        let mut r = BenchRecorder::new();
        let s = BenchSample {
            case: CASE.to_u64(),
            ..Default::default()
        };
        r.sample(&mem, s, vec![], &[rec(OP_READ, 0, 0x1000, 512)])
            .unwrap();
        assert!(matches!(
            r.samples()[0].verification,
            Verification::NotVerifiable(_)
        ));
        let (mem, disk) = setup();
        r.set_disk(Box::new(disk));
        // The buffer holds zeros, sector 3 holds 3s.
        r.sample(&mem, s, vec![], &[rec(OP_READ, 3, 0x1000, 512)])
            .unwrap();
        assert!(r.samples()[1].failed());
    }
}
