//! The benchmark workloads: paired emulated and PV devices, run case by case and reported
//! to the host.
//!
//! # Command line
//!
//! `bench=<list> [quick] [ops=N]`, where `<list>` is `all` or a comma-separated list of
//! items, each a device (`console`, `block`, `clock`, `exit`, `net`, `ipi`, `smp`, `balloon`,
//! `irq`: all its variants) or a
//! `device/variant` pair with the variant names below (e.g. `block/ata-pio,clock/pit`).
//! `quick` selects the small counts below; `ops=N` (N ≥ 1) sets the operation count of
//! every case. Cases run in the fixed order of the table, whatever the order of the list;
//! variants not selected are neither run nor reported as skipped.
//!
//! # Cases and counts
//!
//! | device | variants | workloads | default ops | `quick` |
//! |---|---|---|---|---|
//! | console | `uart`, `pv-hypercall`, `pv-ring`, `pv-ioeventfd`, `pv-poll` | `Write64` / `Write4K` | 64 / 8 | 8 / 2 |
//! | block | `ata-pio`, `pv-hypercall`, `pv-ring`, `pv-ioeventfd`, `pv-poll` | `RandRead4K`, `RandWrite4K` / `SeqRead1M`, `SeqWrite1M` | 128 / 4 (`ata-pio/seqwrite1m`: 1) | 16 / 1 |
//! | clock | `pit` / `pv-clock`, `kvmclock` | `ClockRead` | 500 / 100 000 | 50 / 10 000 |
//! | exit | `port-out` | `RoundTrip` | 1000 | 100 |
//! | net | `ne2000`, `pv-hypercall`, `pv-ring`, `pv-ioeventfd`, `pv-poll`, `pv-irq` | `Tx64`, `Tx1500`, `Rx64`, `Rx1500`, `UdpEcho64`, `HostEcho64` | see [`net`] | see [`net`] |
//! | ipi | `x2apic`, `pv-hypercall` | `PingPong`, `OneToAll` ([`ipi`]; 4 CPUs) | 200 | 20 |
//! | smp | `init-sipi` / `pv-hypercall` (one per boot) | `ApBringUp` ([`smp`]; 4 CPUs) | 3 APs | 3 APs |
//! | balloon | `none` / `pv-hypercall` (one per boot) | `Release` ([`balloon`]; an op is 1 MiB) | 256 MiB | 64 MiB |
//! | irq | `x2apic-eoi`, `pv-eoi`, `ioapic-eoi`, `pic-eoi` | `Interrupt` | 1000 | 100 |
//!
//! # Protocol of one case
//!
//! Set-up outside the phase (ring registration, buffer patterns, device probes), then the
//! **latency pass** (below), then `BenchPhase(case, Begin)`, the **timed loop**,
//! `BenchPhase(case, End, ops)`, then checks that must not be billed to the case (a flush,
//! the clock-agreement measurement), then `BenchResult(sample, op_log, len)`.
//!
//! - The timed loop reads the TSC once before and once after all its operations and nothing
//!   in between: `sample.cycles_total` is the cycles between the two markers (excluding
//!   them; the ring-3 cases, clock reads and `pv-poll`, measure around their loop in ring
//!   3, leaving out the one-time ring switch), and the host's wall time between the markers
//!   is its ns/op. Only the timed loop is inside the markers, so the exits the host
//!   attributes to the case are exactly those of its `ops` operations.
//! - The latency pass runs the same operations (at most [`LATENCY_OPS`] of them for the
//!   exiting ring-0 cases; see each module) *before* the `Begin` marker, reading the TSC
//!   around each operation (exiting ring-0 operations) or each batch (ring batches, the
//!   null port, clock reads in ring 3, each divided by its batch size). Its raw samples go
//!   to `samples_addr` (up to [`MAX_SAMPLES`]; percentiles are left to the host:
//!   `cycles_median = cycles_p99 = 0`) and the sample carries
//!   [`pvkit_abi::bench::SAMPLE_LATENCY_PASS`]. Its exits fall outside every phase; its
//!   console bytes are a filler the host's pattern check skips; its block operations come
//!   before the logged ones, so the op log's last operation on each buffer and sector still
//!   decides what the host's check compares.
//!
//! Flags: [`SAMPLE_VERIFIED`] when every check the guest can make passed (a status and
//! length per operation, clock monotonicity and agreement), [`SAMPLE_FAILED`] when one
//! failed; [`pvkit_abi::bench::SAMPLE_RING3`] when the timed loop ran in ring 3 (the
//! `pv-poll` rings and the vDSO-style clocks), which the host's report notes.
//!
//! A variant whose host feature bit is missing (or whose device does not answer: ATA, PIT,
//! kvmclock) is skipped with a `bench ... skipped (...)` line and no markers. A variant the
//! host advertises but refuses at set-up is reported with `ops = 0` and `SAMPLE_FAILED`.
//!
//! # Timing
//!
//! `rdtsc` in ring 0 costs 4k–17k cycles on kvm_pvm (interpreted): about 6 µs, as much as
//! half an exit. Read around every operation of the timed loop, it would be billed to every
//! operation's host ns/op; that is why the timed loop reads it only at its ends and the
//! per-operation distribution comes from the separate latency pass, whose samples each
//! carry the cost of one `rdtsc`.
//!
//! After the last case the kernel exits 0, or 1 if any case failed.

mod balloon;
mod block;
mod clock;
mod console;
mod exit;
mod ipi;
mod irq;
mod net;
mod ring_pass;
mod smp;

use crate::cmdline::Bench;
use crate::statics::Exclusive;
use core::fmt;
use pvkit_abi::bench::{
    BenchSample, CaseId, Device, OpRecord, PhaseMark, Variant, Workload, MAX_OP_LOG, MAX_SAMPLES,
    SAMPLE_FAILED, SAMPLE_VERIFIED,
};
use pvkit_abi::boot::BootInfo;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::Transport;
use pvkit_guest::{addr::virt_to_phys, hypercall, tsc::rdtsc};

/// The variants `bench=` selects: per device, a bit per [`Variant`] (bit = wire number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection([u64; 9]);

/// The devices in run order, with their variants.
const DEVICES: [(Device, &[Variant]); 9] = [
    (
        Device::Console,
        &[
            Variant::Uart,
            Variant::PvHypercall,
            Variant::PvRing,
            Variant::PvEventfd,
            Variant::PvPoll,
        ],
    ),
    (
        Device::Block,
        &[
            Variant::AtaPio,
            Variant::PvHypercall,
            Variant::PvRing,
            Variant::PvEventfd,
            Variant::PvPoll,
        ],
    ),
    (
        Device::Clock,
        &[Variant::Pit, Variant::PvClock, Variant::KvmClock],
    ),
    (Device::Exit, &[Variant::PortOut]),
    (
        Device::Net,
        &[
            Variant::Ne2000,
            Variant::PvHypercall,
            Variant::PvRing,
            Variant::PvEventfd,
            Variant::PvPoll,
            Variant::PvIrq,
        ],
    ),
    (Device::Ipi, &[Variant::X2Apic, Variant::PvHypercall]),
    (Device::Smp, &[Variant::InitSipi, Variant::PvHypercall]),
    (Device::Balloon, &[Variant::NoBalloon, Variant::PvHypercall]),
    (
        Device::Irq,
        &[
            Variant::X2apicEoi,
            Variant::PvEoi,
            Variant::IoapicEoi,
            Variant::PicEoi,
        ],
    ),
];

impl Selection {
    /// Parses `all` or a comma-separated list of `device` and `device/variant` items; the
    /// error is the item that names no device or variant of this kernel.
    pub fn parse(list: &str) -> Result<Selection, &str> {
        let mut sel = Selection::default();
        for item in list.split(',') {
            let (dev, var) = match item.split_once('/') {
                Some((d, v)) => (d, Some(v)),
                None => (item, None),
            };
            let mut found = false;
            for (i, &(device, variants)) in DEVICES.iter().enumerate() {
                if dev != "all" && dev != device_name(device) {
                    continue;
                }
                for &v in variants {
                    if var.is_none_or(|name| name == variant_name(v)) {
                        sel.0[i] |= 1 << v as u64;
                        found = true;
                    }
                }
            }
            if !found || (dev == "all" && var.is_some()) {
                return Err(item);
            }
        }
        Ok(sel)
    }

    /// Whether any variant of `device` is selected.
    pub fn any(&self, device: Device) -> bool {
        self.mask(device) != 0
    }

    /// Whether `variant` of `device` is selected.
    pub fn has(&self, device: Device, variant: Variant) -> bool {
        self.mask(device) & 1 << variant as u64 != 0
    }

    fn mask(&self, device: Device) -> u64 {
        DEVICES
            .iter()
            .position(|&(d, _)| d == device)
            .map_or(0, |i| self.0[i])
    }
}

/// Most operations of the latency pass of an exiting ring-0 case (see the module
/// documentation); fewer where a module says so.
pub const LATENCY_OPS: u64 = 64;

/// The per-case raw samples and op log, reused by every case.
pub struct Scratch {
    samples: [u64; MAX_SAMPLES as usize],
    log: [OpRecord; MAX_OP_LOG as usize],
}

static SCRATCH: Exclusive<Scratch> = Exclusive::new(Scratch {
    samples: [0; MAX_SAMPLES as usize],
    log: [OpRecord {
        sector: 0,
        addr: 0,
        len: 0,
        op: 0,
    }; MAX_OP_LOG as usize],
});

/// The ring variants, their transports and the feature each needs beyond the ring's own.
const RING_VARIANTS: [(Variant, Transport, Features); 3] = [
    (Variant::PvRing, Transport::Doorbell, Features::empty()),
    (
        Variant::PvEventfd,
        Transport::DoorbellEventfd,
        Features::RING_EVENTFD,
    ),
    (Variant::PvPoll, Transport::HostPoll, Features::RING_POLL),
];

/// State shared by all cases: what the host offers, the counts asked for, the tally.
pub struct Runner {
    selection: Selection,
    features: Features,
    quick: bool,
    ops: Option<u64>,
    tsc_khz: u64,
    failed: u32,
    passed: u32,
    skipped: u32,
}

/// What a case measured, for [`Runner::report`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Operations done.
    pub ops: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// TSC cycles of the operations: between the markers (ring-3 clock cases: around the
    /// reads, in ring 3).
    pub cycles_total: u64,
    /// [`SAMPLE_VERIFIED`] / [`SAMPLE_FAILED`].
    pub flags: u32,
    /// Case-specific value.
    pub extra: u64,
    /// Valid entries of the scratch samples.
    pub samples: usize,
    /// Valid entries of the scratch op log.
    pub log: usize,
}

impl Outcome {
    /// `SAMPLE_FAILED` if `failed`, else `SAMPLE_VERIFIED`.
    pub fn checked(failed: bool) -> u32 {
        if failed {
            SAMPLE_FAILED
        } else {
            SAMPLE_VERIFIED
        }
    }
}

/// Appends raw cycle samples, keeping the first [`MAX_SAMPLES`].
pub struct Samples<'a> {
    buf: &'a mut [u64],
    n: usize,
}

impl<'a> Samples<'a> {
    /// An empty list over the scratch samples.
    pub fn new(buf: &'a mut [u64]) -> Self {
        Samples { buf, n: 0 }
    }

    /// Records `cycles` (dropped once the list is full).
    #[inline(always)]
    pub fn push(&mut self, cycles: u64) {
        if let Some(slot) = self.buf.get_mut(self.n) {
            *slot = cycles;
            self.n += 1;
        }
    }

    /// Entries recorded.
    pub fn len(&self) -> usize {
        self.n
    }

    /// The raw entries (for a ring-3 loop that fills them itself).
    pub fn as_mut_ptr(&mut self) -> *mut u64 {
        self.buf.as_mut_ptr()
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Declares that the first `n` entries were filled through [`Samples::as_mut_ptr`].
    pub fn set_len(&mut self, n: usize) {
        self.n = n.min(self.buf.len());
    }
}

impl Scratch {
    /// An empty sample list.
    pub fn samples(&mut self) -> Samples<'_> {
        Samples::new(&mut self.samples)
    }

    /// An empty sample list and the op log (to fill with a case's plan).
    pub fn split(&mut self) -> (Samples<'_>, &mut [OpRecord]) {
        (Samples::new(&mut self.samples), &mut self.log)
    }
}

/// A case id.
pub const fn case(device: Device, variant: Variant, workload: Workload) -> CaseId {
    CaseId {
        device,
        variant,
        workload,
    }
}

/// Operations of the latency pass of a case of `ops` operations: at most [`LATENCY_OPS`].
pub const fn latency_ops(ops: u64) -> u64 {
    if ops < LATENCY_OPS {
        ops
    } else {
        LATENCY_OPS
    }
}

/// Marks the start of `id` and returns the TSC (read after the marker).
#[inline(always)]
pub fn begin(id: CaseId) -> u64 {
    hypercall::bench_phase(id, PhaseMark::Begin, 0);
    rdtsc()
}

/// Reads the TSC, marks the end of `id` after `ops` operations, returns cycles since `t0`.
#[inline(always)]
pub fn end(id: CaseId, t0: u64, ops: u64) -> u64 {
    let t1 = rdtsc();
    hypercall::bench_phase(id, PhaseMark::End, ops);
    t1.wrapping_sub(t0)
}

impl Runner {
    /// Operations for a case: `ops=`, else the quick or default count.
    pub fn count(&self, default: u64, quick: u64) -> u64 {
        self.ops.unwrap_or(if self.quick { quick } else { default })
    }

    /// Whether `bench=` selected `variant` of `device`.
    pub fn wants(&self, device: Device, variant: Variant) -> bool {
        self.selection.has(device, variant)
    }

    /// Whether the host offers every feature of `f`.
    pub fn has(&self, f: Features) -> bool {
        self.features.contains(f)
    }

    /// TSC cycles to wait for a ring before giving up (10 s).
    pub fn ring_timeout(&self) -> u64 {
        pvkit_guest::tsc::cycles_for_ms(self.tsc_khz, 10_000)
    }

    /// Skips `id`: a line, no markers.
    pub fn skip(&mut self, id: CaseId, why: fmt::Arguments<'_>) {
        self.skipped += 1;
        println!("bench {}: skipped ({why})", Name(id));
    }

    /// Reports a variant the host advertised but that failed at set-up: empty markers and a
    /// failed result, so the host's report shows it.
    pub fn fail_setup(&mut self, id: CaseId, why: fmt::Arguments<'_>, scratch: &Scratch) {
        println!("bench {}: set-up failed: {why}", Name(id));
        let t0 = begin(id);
        let cycles_total = end(id, t0, 0);
        self.report(
            id,
            &Outcome {
                cycles_total,
                flags: SAMPLE_FAILED,
                ..Outcome::default()
            },
            scratch,
        );
    }

    /// Sends the result of `id` to the host and prints a line.
    pub fn report(&mut self, id: CaseId, o: &Outcome, scratch: &Scratch) {
        let samples = &scratch.samples[..o.samples];
        let sample = BenchSample {
            case: id.to_u64(),
            ops: o.ops,
            bytes: o.bytes,
            cycles_total: o.cycles_total,
            cycles_median: 0,
            cycles_p99: 0,
            flags: o.flags,
            sample_count: samples.len() as u32,
            samples_addr: virt_to_phys(samples.as_ptr()),
            extra: o.extra,
        };
        let sent = hypercall::bench_result_with_log(&sample, &scratch.log[..o.log]);
        let failed = o.flags & SAMPLE_FAILED != 0 || sent.is_err();
        if failed {
            self.failed += 1;
        } else {
            self.passed += 1;
        }
        let verdict = if failed {
            "FAILED"
        } else if o.flags & SAMPLE_VERIFIED != 0 {
            "verified"
        } else {
            "ok"
        };
        // A console case leaves its last payload line unterminated: start a new line, so
        // that every `bench` line starts one (the host parses them by line).
        let sep = if id.device == Device::Console {
            "\n"
        } else {
            ""
        };
        println!(
            "{sep}bench {}: {} ops, {} bytes, {} cycles/op, extra {}, {verdict}{}",
            Name(id),
            o.ops,
            o.bytes,
            o.cycles_total.checked_div(o.ops).unwrap_or(0),
            o.extra,
            match sent {
                Ok(()) => "",
                Err(_) => " (host refused the result)",
            }
        );
    }
}

/// Runs the benchmarks `args` selects and exits: 0 if no case failed, else 1.
pub fn run(args: &Bench, boot: &BootInfo) -> ! {
    let features = Features::from_bits_truncate(boot.features);
    if !features.contains(Features::BENCH) {
        println!("bench: the host does not offer benchmark markers (feature BENCH)");
        crate::exit(1);
    }
    let mut r = Runner {
        selection: args.selection,
        features,
        quick: args.quick,
        ops: args.ops,
        // A TSC rate is only needed for time-outs: guess 3 GHz if the host does not say.
        tsc_khz: if boot.tsc_khz != 0 {
            boot.tsc_khz
        } else {
            3_000_000
        },
        failed: 0,
        passed: 0,
        skipped: 0,
    };
    let scratch = SCRATCH.take();
    if args.selection.any(Device::Console) {
        console::run(&mut r, scratch);
    }
    if args.selection.any(Device::Block) {
        block::run(&mut r, scratch);
    }
    if args.selection.any(Device::Clock) {
        clock::run(&mut r, scratch);
    }
    if args.selection.any(Device::Exit) {
        exit::run(&mut r, scratch);
    }
    if args.selection.any(Device::Net) {
        net::run(&mut r, scratch);
    }
    if args.selection.any(Device::Ipi) {
        ipi::run(&mut r, scratch, boot);
    }
    if args.selection.any(Device::Smp) {
        smp::run(&mut r, scratch, boot);
    }
    if args.selection.any(Device::Balloon) {
        balloon::run(&mut r, scratch, boot);
    }
    if args.selection.any(Device::Irq) {
        irq::run(&mut r, scratch);
    }
    println!(
        "bench done: {} passed, {} failed, {} skipped",
        r.passed, r.failed, r.skipped
    );
    hypercall::exit(u8::from(r.failed != 0))
}

/// The name of a device on the command line and in log lines.
pub const fn device_name(device: Device) -> &'static str {
    match device {
        Device::Console => "console",
        Device::Block => "block",
        Device::Clock => "clock",
        Device::Exit => "exit",
        Device::Net => "net",
        Device::Ipi => "ipi",
        Device::Smp => "smp",
        Device::Balloon => "balloon",
        Device::Irq => "irq",
        Device::Spinlock => "spinlock",
    }
}

/// The name of a variant on the command line and in log lines.
pub const fn variant_name(variant: Variant) -> &'static str {
    match variant {
        Variant::Uart => "uart",
        Variant::PvHypercall => "pv-hypercall",
        Variant::PvRing => "pv-ring",
        Variant::PvEventfd => "pv-ioeventfd",
        Variant::PvPoll => "pv-poll",
        Variant::AtaPio => "ata-pio",
        Variant::Pit => "pit",
        Variant::PvClock => "pv-clock",
        Variant::KvmClock => "kvmclock",
        Variant::PortOut => "port-out",
        Variant::Ne2000 => "ne2000",
        Variant::PvIrq => "pv-irq",
        Variant::X2Apic => "x2apic",
        Variant::InitSipi => "init-sipi",
        Variant::NoBalloon => "none",
        Variant::X2apicEoi => "x2apic-eoi",
        Variant::PvEoi => "pv-eoi",
        Variant::IoapicEoi => "ioapic-eoi",
        Variant::PicEoi => "pic-eoi",
        Variant::TicketSpin => "ticket-spin",
        Variant::PvSpinlock => "pv-spinlock",
    }
}

/// The name of a workload in log lines.
pub const fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Write64 => "write64",
        Workload::Write4K => "write4k",
        Workload::RandRead4K => "randread4k",
        Workload::RandWrite4K => "randwrite4k",
        Workload::SeqRead1M => "seqread1m",
        Workload::SeqWrite1M => "seqwrite1m",
        Workload::ClockRead => "read",
        Workload::RoundTrip => "roundtrip",
        Workload::Tx64 => "tx64",
        Workload::Tx1500 => "tx1500",
        Workload::Rx64 => "rx64",
        Workload::Rx1500 => "rx1500",
        Workload::UdpEcho64 => "udpecho64",
        Workload::HostEcho64 => "hostecho64",
        Workload::PingPong => "pingpong",
        Workload::OneToAll => "one-to-all",
        Workload::ApBringUp => "ap-bringup",
        Workload::Release => "release",
        Workload::Interrupt => "interrupt",
        Workload::Contend2 => "contend2",
        Workload::Contend4 => "contend4",
        Workload::Contend8 => "contend8",
    }
}

/// `device/variant/workload` for log lines.
struct Name(CaseId);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.0;
        write!(
            f,
            "{}/{}/{}",
            device_name(id.device),
            variant_name(id.variant),
            workload_name(id.workload)
        )
    }
}
