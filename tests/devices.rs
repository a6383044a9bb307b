//! Emulated and PV devices under real KVM, with hand-assembled ring-0 guests
//! (`pvkit_vmm::testing::programs`): exact userspace exits per operation for the ATA disk
//! and the PIT, one exit per synchronous PV request, at most one per batch for a doorbell
//! ring, none for an eventfd or polled ring (with exact in-kernel notification counts),
//! data integrity through the op-log verifier on a real disk image, the PV clock page and
//! kvmclock, and `pvkit run --disk`.
//!
//! The tests run one at a time (a polled ring keeps a host core busy; this machine has two).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{code, kvm_available, pvkit, temp_file};
use pvkit_abi::bench::{CaseId, Device, Variant, Workload, OP_READ, OP_WRITE};
use pvkit_abi::call::Hypercall;
use pvkit_abi::clock::{PvClock, TSC_STABLE};
use pvkit_abi::ring::{Transport, BLOCK_QUEUE, CONSOLE_QUEUE};
use pvkit_vmm::bench::{PhaseRecord, Verification};
use pvkit_vmm::devices::pv::block::NOTIFY_BLOCK_RING;
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::testing::programs::{self, with_params};
use pvkit_vmm::testing::ElfBuilder;
use pvkit_vmm::{run, DiskConfig, KernelSource, PhaseObserver, RunOutcome, StopReason, VmConfig};

const LOAD: u64 = 0x10_0000;
/// Where a program's parameters (and the data the test prepares) start in guest memory.
const PARAMS: u64 = LOAD + programs::PARAMS as u64;
/// Guest buffers that need no initial content: above the image.
const BUF: u64 = 0x40_0000;
const SECTOR: usize = 512;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A raw disk image that is removed when dropped. Byte `i` of sector `n` is
/// `(n * 7 + i / 2) as u8 ^ (i as u8)`: every sector differs from its neighbours.
struct TempImage(PathBuf);

fn sector_bytes(n: u64) -> Vec<u8> {
    (0..SECTOR)
        .map(|i| ((n as usize * 7 + i / 2) as u8) ^ (i as u8))
        .collect()
}

impl TempImage {
    fn new(name: &str, sectors: u64) -> Self {
        let bytes: Vec<u8> = (0..sectors).flat_map(sector_bytes).collect();
        Self(temp_file(name, &bytes))
    }

    fn read(&self, sector: u64, count: usize) -> Vec<u8> {
        let all = std::fs::read(&self.0).expect("read image");
        let at = sector as usize * SECTOR;
        all[at..at + count * SECTOR].to_vec()
    }

    fn disk(&self, read_only: bool) -> DiskConfig {
        DiskConfig {
            path: self.0.clone(),
            read_only,
            base: None,
        }
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Guest memory from [`PARAMS`] up, as the test lays it out before boot.
struct Mem(Vec<u8>);

impl Mem {
    fn new() -> Self {
        Self(vec![0; 0x8000])
    }

    fn put(&mut self, gpa: u64, bytes: &[u8]) -> &mut Self {
        let at = (gpa - PARAMS) as usize;
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn u32(&mut self, gpa: u64, v: u32) -> &mut Self {
        self.put(gpa, &v.to_le_bytes())
    }

    fn u64(&mut self, gpa: u64, v: u64) -> &mut Self {
        self.put(gpa, &v.to_le_bytes())
    }
}

fn block_request(id: u64, op: u32, sector: u64, addr: u64, len: u32) -> Vec<u8> {
    let mut r = vec![0u8; 152];
    r[0..8].copy_from_slice(&id.to_le_bytes());
    r[8..12].copy_from_slice(&op.to_le_bytes());
    r[12..16].copy_from_slice(&1u32.to_le_bytes());
    r[16..24].copy_from_slice(&sector.to_le_bytes());
    r[24..32].copy_from_slice(&addr.to_le_bytes());
    r[32..36].copy_from_slice(&len.to_le_bytes());
    r
}

fn op_record(op: u32, sector: u64, addr: u64, len: u32) -> Vec<u8> {
    [
        &sector.to_le_bytes()[..],
        &addr.to_le_bytes(),
        &len.to_le_bytes(),
        &op.to_le_bytes(),
    ]
    .concat()
}

fn sample(case: CaseId, ops: u64) -> Vec<u8> {
    let mut s = vec![0u8; 72];
    s[0..8].copy_from_slice(&case.to_u64().to_le_bytes());
    s[8..16].copy_from_slice(&ops.to_le_bytes());
    s
}

fn console_request(addr: u64, len: u32, id: u32) -> Vec<u8> {
    [
        &addr.to_le_bytes()[..],
        &len.to_le_bytes(),
        &id.to_le_bytes(),
    ]
    .concat()
}

/// A fresh ring header: indices 0, `size` slots.
fn ring_header(size: u32) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[16..20].copy_from_slice(&size.to_le_bytes());
    h
}

fn case(device: Device, variant: Variant, workload: Workload) -> CaseId {
    CaseId {
        device,
        variant,
        workload,
    }
}

fn boot(code: &[u8], mem: &Mem, disk: Option<DiskConfig>) -> RunOutcome {
    boot_with(code, mem, disk, None)
}

fn boot_with(
    code: &[u8],
    mem: &Mem,
    disk: Option<DiskConfig>,
    observer: Option<PhaseObserver>,
) -> RunOutcome {
    let image = with_params(code, &mem.0);
    let cfg = VmConfig {
        kernel: KernelSource::Bytes(ElfBuilder::new(LOAD, &image).build()),
        mem_mib: 16,
        capture_console: true,
        timeout: Duration::from_secs(20),
        disk,
        phase_observer: observer,
        ..VmConfig::default()
    };
    run(&cfg).expect("run")
}

fn only_phase(o: &RunOutcome) -> &PhaseRecord {
    assert_eq!(o.phases.len(), 1, "{:?}", o.phases);
    let p = &o.phases[0];
    // Shown with `--nocapture`: what each operation cost here.
    let ops = p.ops.max(1);
    eprintln!(
        "{:?}/{:?}/{:?}: {} ops, {:.2} userspace exits/op, {:.2} in-kernel notifications/op, \
         {:.1} us/op host time",
        p.case.device,
        p.case.variant,
        p.case.workload,
        p.ops,
        p.exits.total as f64 / ops as f64,
        p.exits.notifications.values().sum::<u64>() as f64 / ops as f64,
        p.host_time.as_secs_f64() * 1e6 / ops as f64,
    );
    p
}

#[test]
fn ata_4k_read_costs_2n_plus_7_exits_and_reads_the_image() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("ata.img", 2048);
    let c = case(Device::Block, Variant::AtaPio, Workload::RandRead4K);
    let (lba, nsect, reads) = (37u32, 8u32, 3u32);
    let mut m = Mem::new();
    m.u32(PARAMS, lba)
        .u32(PARAMS + 4, nsect)
        .u32(PARAMS + 8, reads)
        .u64(PARAMS + 16, BUF)
        .u64(PARAMS + 24, BUF + 0x10_000)
        .u64(PARAMS + 32, c.to_u64());
    let o = boot(programs::ATA_READ, &m, Some(img.disk(true)));
    assert_eq!(o.stop, StopReason::Exit(0), "{:?}", o.ledger);

    // IDENTIFY: the disk's size in LBA28 words 60-61; then the data, exactly the image's.
    let (id, data) = o.console.split_at(512);
    assert_eq!(u32::from_le_bytes(id[120..124].try_into().unwrap()), 2048);
    assert_eq!(data, img.read(u64::from(lba), nsect as usize));

    // Per 4 KiB read: 6 task-file writes, 8 × (status read + one `rep insw` exit of a whole
    // sector), 1 completion status read = 2n + 7 = 23 exits, every one named by its port.
    let p = only_phase(&o);
    let n = u64::from(nsect);
    let r = u64::from(reads);
    assert_eq!(p.ops, r);
    assert_eq!(p.exits.total, r * (2 * n + 7), "{:?}", p.exits);
    for port in [0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7] {
        assert_eq!(p.exits.count(ExitKind::PortWrite(port)), r, "out {port:#x}");
    }
    assert_eq!(p.exits.count(ExitKind::PortRead(0x1f7)), r * (n + 1));
    assert_eq!(
        p.exits.count(ExitKind::PortRead(0x1f0)),
        r * n,
        "KVM batches a 512-byte `rep insw` into one exit"
    );
    // The whole run: IDENTIFY's 5, the reads, 2 markers, 2 console writes, exit.
    assert_eq!(o.ledger.total, 5 + r * (2 * n + 7) + 2 + 2 + 1);
}

#[test]
fn pit_read_costs_3_exits_and_counts_in_real_time() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let c = case(Device::Clock, Variant::Pit, Workload::ClockRead);
    let reads = 200u32;
    let mut m = Mem::new();
    m.u32(PARAMS, reads)
        .u64(PARAMS + 8, c.to_u64())
        .u64(PARAMS + 16, BUF);
    let o = boot(programs::PIT_READ, &m, None);
    assert_eq!(o.stop, StopReason::Exit(0));
    let p = only_phase(&o);
    let r = u64::from(reads);
    assert_eq!(p.exits.total, 3 * r, "{:?}", p.exits);
    assert_eq!(p.exits.count(ExitKind::PortWrite(0x43)), r);
    assert_eq!(p.exits.count(ExitKind::PortRead(0x40)), 2 * r);
    // The counter runs down at 1.193182 MHz of host time: the ticks between the first and
    // the last read match the phase's host time.
    let values: Vec<u16> = o
        .console
        .chunks(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect();
    assert_eq!(values.len(), reads as usize);
    let ticks: u64 = values
        .windows(2)
        .map(|w| u64::from(w[0].wrapping_sub(w[1])))
        .sum();
    let pit_ns = ticks * 1_000_000_000 / 1_193_182;
    let host_ns = p.host_time.as_nanos() as u64;
    assert!(
        pit_ns <= host_ns && pit_ns * 2 >= host_ns,
        "PIT {pit_ns} ns vs host {host_ns} ns"
    );
}

/// Layout of the block cases: requests, op log, sample and ring in the image.
const REQS: u64 = PARAMS + 0x1000;
const OPLOG: u64 = PARAMS + 0x2000;
const SAMPLE: u64 = PARAMS + 0x2800;
const RING: u64 = PARAMS + 0x3000;

#[test]
fn block_io_is_one_exit_per_request_and_verified_on_the_image() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("pvblk.img", 512);
    let c = case(Device::Block, Variant::PvHypercall, Workload::RandWrite4K);
    let mut m = Mem::new();
    let mut log = Vec::new();
    // 4 writes of 4 KiB from buffers in the image (a pattern), then 4 reads into BUF.
    let count = 8u32;
    for i in 0..4u64 {
        let src = PARAMS + 0x4000 + i * 0x1000;
        if i < 3 {
            m.put(src, &vec![0xa0 + i as u8; 4096]);
        }
        let sector = 100 + 8 * i;
        m.put(REQS + i * 152, &block_request(i, 2, sector, src, 4096));
        log.extend(op_record(OP_WRITE, sector, src, 4096));
    }
    for i in 0..4u64 {
        let (sector, dst) = (16 * i + 1, BUF + i * 0x1000);
        m.put(
            REQS + (4 + i) * 152,
            &block_request(4 + i, 1, sector, dst, 4096),
        );
        log.extend(op_record(OP_READ, sector, dst, 4096));
    }
    m.u32(PARAMS, count)
        .u64(PARAMS + 8, REQS)
        .u64(PARAMS + 16, c.to_u64())
        .u64(PARAMS + 24, SAMPLE)
        .u64(PARAMS + 32, OPLOG)
        .u32(PARAMS + 40, 8)
        .put(OPLOG, &log)
        .put(SAMPLE, &sample(c, u64::from(count)));
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = Arc::clone(&seen);
    let obs = PhaseObserver::from(Arc::new(move |p: &PhaseRecord| {
        s2.fetch_add(p.ops, Ordering::Relaxed);
    }));
    let o = boot_with(programs::BLOCK_IO, &m, Some(img.disk(false)), Some(obs));
    assert_eq!(o.stop, StopReason::Exit(0), "{:?}", o.ledger);
    let p = only_phase(&o);
    assert_eq!(p.exits.total, u64::from(count));
    assert_eq!(
        p.exits.count(ExitKind::Hypercall(Hypercall::BlockIo)),
        u64::from(count)
    );
    assert_eq!(
        seen.load(Ordering::Relaxed),
        8,
        "the observer saw the phase"
    );
    assert_eq!(o.samples.len(), 1);
    assert_eq!(o.samples[0].verification, Verification::Passed);
    // The image file itself holds the writes (the 4th source buffer was zeros).
    for i in 0..4u64 {
        let want = if i < 3 { 0xa0 + i as u8 } else { 0 };
        assert!(img.read(100 + 8 * i, 8).iter().all(|&b| b == want));
    }
}

#[test]
fn op_log_mismatch_fails_the_sample() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("pvblk-bad.img", 64);
    let c = case(Device::Block, Variant::PvHypercall, Workload::RandRead4K);
    let mut m = Mem::new();
    m.put(REQS, &block_request(1, 1, 3, BUF, 4096));
    // The log claims sector 4 was read into BUF: the verifier must catch it.
    m.put(OPLOG, &op_record(OP_READ, 4, BUF, 4096));
    m.u32(PARAMS, 1)
        .u64(PARAMS + 8, REQS)
        .u64(PARAMS + 16, c.to_u64())
        .u64(PARAMS + 24, SAMPLE)
        .u64(PARAMS + 32, OPLOG)
        .u32(PARAMS + 40, 1)
        .put(SAMPLE, &sample(c, 1));
    let o = boot(programs::BLOCK_IO, &m, Some(img.disk(true)));
    assert_eq!(o.stop, StopReason::Exit(0));
    assert!(
        matches!(&o.samples[0].verification, Verification::Failed(why) if why.contains("mismatch")),
        "{:?}",
        o.samples[0].verification
    );
    assert!(o.samples[0].failed());
}

struct RingRun {
    outcome: RunOutcome,
    batches: u64,
}

/// Boots [`programs::RING_BATCHES`] on the block ring: `batches` batches of `k` 4 KiB reads,
/// verified by the op log.
fn block_ring(transport: Transport, k: u32, batches: u32, img: &TempImage) -> RingRun {
    let variant = match transport {
        Transport::Doorbell => Variant::PvRing,
        Transport::DoorbellEventfd => Variant::PvEventfd,
        Transport::HostPoll => Variant::PvPoll,
    };
    let c = case(Device::Block, variant, Workload::RandRead4K);
    let mut m = Mem::new();
    m.put(RING, &ring_header(k));
    let mut log = Vec::new();
    for i in 0..u64::from(k) {
        let (sector, dst) = (8 * i + 3, BUF + i * 0x1000);
        m.put(RING + 64 + i * 152, &block_request(i, 1, sector, dst, 4096));
        log.extend(op_record(OP_READ, sector, dst, 4096));
    }
    m.u32(PARAMS, BLOCK_QUEUE.to_u32())
        .u32(PARAMS + 4, transport as u32)
        .u64(PARAMS + 8, RING)
        .u64(PARAMS + 16, 0x1000)
        .u32(PARAMS + 24, k)
        .u32(PARAMS + 28, batches)
        .u64(PARAMS + 32, c.to_u64())
        .u32(PARAMS + 40, u32::from(pvkit_abi::ports::DOORBELL))
        .u32(PARAMS + 44, BLOCK_QUEUE.to_u32())
        .u64(PARAMS + 48, SAMPLE)
        .u64(PARAMS + 56, OPLOG)
        .u32(PARAMS + 64, k)
        .put(OPLOG, &log)
        .put(SAMPLE, &sample(c, u64::from(k * batches)));
    let o = boot(programs::RING_BATCHES, &m, Some(img.disk(true)));
    assert_eq!(o.stop, StopReason::Exit(0), "{transport:?}: {:?}", o.ledger);
    assert_eq!(o.samples.len(), 1);
    assert_eq!(
        o.samples[0].verification,
        Verification::Passed,
        "{transport:?}"
    );
    RingRun {
        outcome: o,
        batches: u64::from(batches),
    }
}

#[test]
fn block_ring_doorbell_is_one_exit_per_batch() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("ring-db.img", 256);
    let r = block_ring(Transport::Doorbell, 4, 6, &img);
    let p = only_phase(&r.outcome);
    assert_eq!(p.ops, 24);
    // The protocol asks for a doorbell on each batch (the host is idle in between): one
    // exit per batch, none per request.
    assert_eq!(p.exits.total, r.batches, "{:?}", p.exits);
    assert_eq!(p.exits.count(ExitKind::PortWrite(0x510)), r.batches);
    assert_eq!(p.notifications(BLOCK_QUEUE), 0);
}

#[test]
fn block_ring_eventfd_makes_no_userspace_exits() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("ring-efd.img", 256);
    let r = block_ring(Transport::DoorbellEventfd, 4, 6, &img);
    let p = only_phase(&r.outcome);
    assert_eq!(p.exits.total, 0, "{:?}", p.exits);
    // Each doorbell is one in-kernel ioeventfd signal, counted exactly by the I/O thread
    // before it answers the batch. The guest rings once per batch, unless the I/O thread
    // is still working when it publishes the next one (it then picks that one up without
    // a doorbell): at most one per batch.
    let n = p.notifications(BLOCK_QUEUE);
    assert!(
        (1..=r.batches).contains(&n),
        "{n} for {} batches",
        r.batches
    );
    assert_eq!(p.exits.notifications.get(NOTIFY_BLOCK_RING), Some(&n));
}

#[test]
fn block_ring_host_poll_makes_no_exits_and_no_notifications() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("ring-poll.img", 256);
    let r = block_ring(Transport::HostPoll, 4, 6, &img);
    let p = only_phase(&r.outcome);
    assert_eq!(p.exits.total, 0, "{:?}", p.exits);
    assert_eq!(p.notifications(BLOCK_QUEUE), 0);
}

#[test]
fn console_ring_over_each_transport() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    for transport in [
        Transport::Doorbell,
        Transport::DoorbellEventfd,
        Transport::HostPoll,
    ] {
        let c = case(Device::Console, Variant::PvRing, Workload::Write64);
        let mut m = Mem::new();
        let text = PARAMS + 0x4000;
        m.put(text, b"ring!\n").put(RING, &ring_header(2));
        m.put(RING + 64, &console_request(text, 3, 1));
        m.put(RING + 64 + 16, &console_request(text + 3, 3, 2));
        m.u32(PARAMS, CONSOLE_QUEUE.to_u32())
            .u32(PARAMS + 4, transport as u32)
            .u64(PARAMS + 8, RING)
            .u64(PARAMS + 16, 0x1000)
            .u32(PARAMS + 24, 2)
            .u32(PARAMS + 28, 3)
            .u64(PARAMS + 32, c.to_u64())
            .u32(PARAMS + 40, u32::from(pvkit_abi::ports::DOORBELL))
            .u32(PARAMS + 44, CONSOLE_QUEUE.to_u32());
        let o = boot(programs::RING_BATCHES, &m, None);
        assert_eq!(o.stop, StopReason::Exit(0), "{transport:?}");
        assert_eq!(o.console, b"ring!\nring!\nring!\n", "{transport:?}");
        let p = only_phase(&o);
        // 3 batches: a doorbell exit each (serviced inside the exit, so the host is idle at
        // every publish), or up to one in-kernel notification each, or nothing.
        let (exits, notes) = match transport {
            Transport::Doorbell => (3..=3, 0..=0),
            Transport::DoorbellEventfd => (0..=0, 1..=3),
            Transport::HostPoll => (0..=0, 0..=0),
        };
        assert!(
            exits.contains(&p.exits.total),
            "{transport:?}: {:?}",
            p.exits
        );
        assert_eq!(
            p.exits.count(ExitKind::PortWrite(0x510)),
            p.exits.total,
            "{transport:?}"
        );
        let n = p.notifications(CONSOLE_QUEUE);
        assert!(notes.contains(&n), "{transport:?}: {n}");
    }
}

fn pvclock(b: &[u8]) -> PvClock {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    PvClock {
        version: u32_at(0),
        pad0: 0,
        tsc_timestamp: u64_at(8),
        system_time: u64_at(16),
        tsc_to_system_mul: u32_at(24),
        tsc_shift: b[28] as i8,
        flags: b[29],
        pad: [0; 2],
    }
}

#[test]
fn pv_clock_pairs_the_guest_tsc_with_host_time_and_stays_monotonic() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let mut m = Mem::new();
    m.u64(PARAMS, 0x30_0000)
        .u64(PARAMS + 8, 0x30_1000)
        .u64(PARAMS + 16, BUF);
    let o = boot(programs::PV_CLOCK, &m, None);
    assert_eq!(o.stop, StopReason::Exit(0));
    assert_eq!(o.console.len(), 80);
    let tsc1 = u64::from_le_bytes(o.console[0..8].try_into().unwrap());
    let a = pvclock(&o.console[8..40]);
    let tsc2 = u64::from_le_bytes(o.console[40..48].try_into().unwrap());
    let b = pvclock(&o.console[48..80]);
    let khz = u64::from(o.platform.tsc_khz.expect("KVM knows the TSC rate"));
    for c in [&a, &b] {
        assert!(c.version.is_multiple_of(2));
        assert_eq!(c.flags, TSC_STABLE);
        assert_eq!(
            (c.tsc_to_system_mul, c.tsc_shift),
            PvClock::scale_for_khz(khz)
        );
        assert!(c.system_time < o.timings.to_stop.as_nanos() as u64);
    }
    // The guest read its TSC just after the registration returned: the PV time of that
    // read is a little after the page's time (one exit's return: tens of µs, more on a
    // loaded host).
    let t1 = a.nanoseconds(tsc1);
    let (ta, tb) = (a.nanoseconds(tsc2), b.nanoseconds(tsc2));
    eprintln!(
        "pv clock: guest TSC read {} ns after the page's time; pages differ by {} ns",
        t1.wrapping_sub(a.system_time) as i64,
        ta.abs_diff(tb)
    );
    assert!(
        t1 >= a.system_time && t1 - a.system_time < 100_000_000,
        "{t1} vs {}",
        a.system_time
    );
    // Monotonic across the re-registration, and both pages tell the same time (each pairs
    // a TSC value with the host clock within tens of ns).
    assert!(b.system_time >= t1, "{} < {t1}", b.system_time);
    assert!(ta.abs_diff(tb) < 20_000, "pages disagree: {ta} vs {tb}");
    // No exit for reading the time: two registrations, one console write, exit.
    assert_eq!(
        o.ledger
            .count(ExitKind::Hypercall(Hypercall::RegisterRegion)),
        2
    );
    assert_eq!(o.ledger.total, 4, "{:?}", o.ledger);
}

#[test]
fn kvmclock_is_served_in_the_kernel() {
    if !kvm_available() {
        return;
    }
    let kvm = pvkit_vmm::vstate::kvm::open_kvm().unwrap();
    let supported = pvkit_vmm::arch::x86_64::cpuid::supported_cpuid(&kvm).unwrap();
    if !pvkit_vmm::arch::x86_64::cpuid::kvmclock_available(supported.as_slice()) {
        eprintln!("note: skipping: KVM offers no kvmclock here");
        return;
    }
    let _s = serial();
    let mut m = Mem::new();
    m.u64(PARAMS, 0x30_0000);
    let o = boot(programs::KVMCLOCK, &m, None);
    assert_eq!(o.stop, StopReason::Exit(0));
    let c = pvclock(&o.console);
    assert!(c.version > 0 && c.version.is_multiple_of(2), "{c:?}");
    assert_ne!(c.tsc_to_system_mul, 0, "{c:?}");
    // The `wrmsr` never reached the VMM: one console write and the exit.
    assert_eq!(o.ledger.total, 2, "{:?}", o.ledger);
}

fn elf_file(name: &str, code: &[u8], mem: &Mem) -> PathBuf {
    temp_file(
        name,
        &ElfBuilder::new(LOAD, &with_params(code, &mem.0)).build(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn pvkit_run_with_a_disk() {
    if !kvm_available() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("cli.img", 64);
    let mut m = Mem::new();
    m.u32(PARAMS, 2)
        .u32(PARAMS + 4, 1)
        .u32(PARAMS + 8, 1)
        .u64(PARAMS + 16, BUF)
        .u64(PARAMS + 24, BUF + 0x10_000)
        .u64(
            PARAMS + 32,
            case(Device::Block, Variant::AtaPio, Workload::RandRead4K).to_u64(),
        );
    let elf = elf_file("ata-cli.elf", programs::ATA_READ, &m);
    let o = pvkit(&[
        "run",
        path_str(&elf),
        "--disk",
        path_str(&img.0),
        "--disk-ro",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(&o.stdout[512..], &img.read(2, 1)[..]);
    // Without a disk the ATA bus floats: the guest sees an error and says so.
    let o = pvkit(&["run", path_str(&elf)]);
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
    // A missing image is a VMM error naming it.
    let o = pvkit(&["run", path_str(&elf), "--disk", "/nonexistent/pvkit.img"]);
    assert_eq!(code(&o), 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/pvkit.img"), "{err}");
    // --disk-ro needs --disk.
    assert_eq!(code(&pvkit(&["run", path_str(&elf), "--disk-ro"])), 2);
}

// ---- The real guest kernel's benchmark workloads (`bench=...` on its command line). ----

/// Whether the built-in guest kernel is there (and KVM is usable).
fn guest_ready() -> bool {
    if pvkit_vmm::guests::builtin_kernel().is_none() {
        eprintln!(
            "note: skipping: no built-in guest ({})",
            pvkit_vmm::guests::BUILD_STATUS
        );
        return false;
    }
    kvm_available()
}

fn bench_boot(cmdline: &str, disk: Option<DiskConfig>) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 64,
        cmdline: cmdline.into(),
        console: Some(pvkit_vmm::ConsoleKind::Pv),
        capture_console: true,
        timeout: Duration::from_secs(50),
        disk,
        ..VmConfig::default()
    };
    let o = run(&cfg).expect("run the guest kernel");
    assert_eq!(
        o.stop,
        StopReason::Exit(0),
        "{cmdline}: {}",
        String::from_utf8_lossy(&o.console)
            .lines()
            .filter(|l| l.starts_with("bench"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    o
}

fn phase(o: &RunOutcome, variant: Variant, workload: Workload) -> &PhaseRecord {
    let p = o
        .phases
        .iter()
        .find(|p| p.case.variant == variant && p.case.workload == workload)
        .unwrap_or_else(|| panic!("no phase {variant:?}/{workload:?}"));
    let ops = p.ops.max(1) as f64;
    eprintln!(
        "{:?}/{:?}/{:?}: {} ops, {:.2} exits/op, {:.2} notifications/op, {:.1} us/op",
        p.case.device,
        variant,
        workload,
        p.ops,
        p.exits.total as f64 / ops,
        p.exits.notifications.values().sum::<u64>() as f64 / ops,
        p.host_time.as_secs_f64() * 1e6 / ops
    );
    assert!(p.ops > 0, "{variant:?}/{workload:?} ran no operation");
    p
}

fn sample_ok(o: &RunOutcome, c: CaseId) {
    let s = o
        .samples
        .iter()
        .find(|s| s.sample.case == c.to_u64())
        .unwrap_or_else(|| panic!("no sample for {c:?}"));
    assert!(!s.failed(), "{c:?}: {:?}", s.verification);
}

#[test]
fn guest_block_bench_exact_exits_and_verified_data() {
    if !guest_ready() {
        return;
    }
    let _s = serial();
    let img = TempImage::new("bench-block.img", 16 << 11); // 16 MiB
    let o = bench_boot("bench=block quick", Some(img.disk(false)));
    for s in &o.samples {
        assert_eq!(
            s.verification,
            Verification::Passed,
            "{:?}",
            CaseId::try_from(s.sample.case)
        );
        assert!(!s.failed());
    }
    // The ATA driver's documented sequence (guest-kernel/src/ata.rs): 6 task-file writes
    // (LBA48: 10), per sector one status read and one string instruction, one completion
    // status read. KVM batches a sector's `rep insw` into one exit, but exits on every
    // word of a `rep outsw`.
    for (workload, sectors, lba48, write) in [
        (Workload::RandRead4K, 8u64, false, false),
        (Workload::RandWrite4K, 8, false, true),
        (Workload::SeqRead1M, 2048, true, false),
        (Workload::SeqWrite1M, 2048, true, true),
    ] {
        let p = phase(&o, Variant::AtaPio, workload);
        let string_exits = if write { 256 } else { 1 };
        let per_op = if lba48 { 10 } else { 6 } + sectors * (1 + string_exits) + 1;
        assert_eq!(p.exits.total, per_op * p.ops, "{workload:?}: {:?}", p.exits);
        let data = if write {
            ExitKind::PortWrite(0x1f0)
        } else {
            ExitKind::PortRead(0x1f0)
        };
        assert_eq!(p.exits.count(data), sectors * string_exits * p.ops);
        assert_eq!(
            p.exits.count(ExitKind::PortRead(0x1f7)),
            (sectors + 1) * p.ops
        );
    }
    for workload in [
        Workload::RandRead4K,
        Workload::RandWrite4K,
        Workload::SeqRead1M,
        Workload::SeqWrite1M,
    ] {
        let small = matches!(workload, Workload::RandRead4K | Workload::RandWrite4K);
        // Exactly one exit per synchronous request.
        let p = phase(&o, Variant::PvHypercall, workload);
        assert_eq!(p.exits.total, p.ops);
        assert_eq!(
            p.exits.count(ExitKind::Hypercall(Hypercall::BlockIo)),
            p.ops
        );
        // The guest's batches: 32 requests of 4 KiB, or one 1 MiB request.
        let batches = if small { p.ops.div_ceil(32) } else { p.ops };
        let p = phase(&o, Variant::PvRing, workload);
        assert!(
            (1..=batches).contains(&p.exits.total),
            "{workload:?} doorbell: {} exits for {batches} batches",
            p.exits.total
        );
        assert_eq!(p.exits.count(ExitKind::PortWrite(0x510)), p.exits.total);
        let p = phase(&o, Variant::PvEventfd, workload);
        assert_eq!(p.exits.total, 0, "{workload:?} eventfd: {:?}", p.exits);
        let n = p.notifications(BLOCK_QUEUE);
        assert!(
            (1..=batches).contains(&n),
            "{workload:?}: {n} notifications for {batches} batches"
        );
        let p = phase(&o, Variant::PvPoll, workload);
        assert_eq!(p.exits.total, 0, "{workload:?} poll: {:?}", p.exits);
        assert_eq!(p.notifications(BLOCK_QUEUE), 0);
    }
}

#[test]
fn guest_clock_exit_and_console_bench_exact_exits() {
    if !guest_ready() {
        return;
    }
    let _s = serial();
    let o = bench_boot("bench=console,clock,exit quick", None);
    let clock = |v| case(Device::Clock, v, Workload::ClockRead);
    // PIT: latch, LSB, MSB.
    let p = phase(&o, Variant::Pit, Workload::ClockRead);
    assert_eq!(p.exits.total, 3 * p.ops);
    assert_eq!(p.exits.count(ExitKind::PortWrite(0x43)), p.ops);
    assert_eq!(p.exits.count(ExitKind::PortRead(0x40)), 2 * p.ops);
    sample_ok(&o, clock(Variant::Pit));
    // PV time: no exit at all, monotonic and agreeing with the PIT (the guest checks both;
    // a failure sets SAMPLE_FAILED).
    for v in [Variant::PvClock, Variant::KvmClock] {
        let p = phase(&o, v, Workload::ClockRead);
        assert_eq!(p.exits.total, 0, "{v:?}: {:?}", p.exits);
        sample_ok(&o, clock(v));
    }
    // The null port: one exit per round trip.
    let p = phase(&o, Variant::PortOut, Workload::RoundTrip);
    assert_eq!(p.exits.total, p.ops);
    assert_eq!(p.exits.count(ExitKind::PortWrite(0x501)), p.ops);
    // Console: the UART costs an LSR read and a THR write per byte; the PV variants as the
    // block ones (batches of 16).
    for (workload, len) in [(Workload::Write64, 64u64), (Workload::Write4K, 4096)] {
        let p = phase(&o, Variant::Uart, workload);
        assert_eq!(
            p.exits.total,
            2 * len * p.ops,
            "{workload:?}: {:?}",
            p.exits
        );
        let p = phase(&o, Variant::PvHypercall, workload);
        assert_eq!(p.exits.total, p.ops);
        let batches = p.ops.div_ceil(16);
        let p = phase(&o, Variant::PvRing, workload);
        assert!((1..=batches).contains(&p.exits.total), "{:?}", p.exits);
        assert_eq!(p.exits.count(ExitKind::PortWrite(0x510)), p.exits.total);
        let p = phase(&o, Variant::PvEventfd, workload);
        assert_eq!(p.exits.total, 0, "{:?}", p.exits);
        assert!((1..=batches).contains(&p.notifications(CONSOLE_QUEUE)));
        let p = phase(&o, Variant::PvPoll, workload);
        assert_eq!((p.exits.total, p.notifications(CONSOLE_QUEUE)), (0, 0));
    }
    for s in &o.samples {
        assert!(!s.failed(), "{:?}", CaseId::try_from(s.sample.case));
    }
}
