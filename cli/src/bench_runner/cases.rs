//! From what the guests reported (phases, samples, captured console) to report [`Case`]s.
//!
//! A phase ([`PhaseRecord`]: exits between the markers, host wall time, ops) is paired with
//! the next [`SampleRecord`] of the same case (guest cycles, bytes, flags, op-log
//! verification). Pairs of the same case from several boots (`--iterations`) are pooled:
//! ops, exits, notifications, bytes and host time are summed, raw cycle samples are pooled
//! before taking the median and p99.
//!
//! A case is verified only if nothing failed and the check that proves its data passed:
//! host op-log verification for block, the console capture for console, the guest's own
//! check (`SAMPLE_VERIFIED`) for clocks, and for exit round trips the guest's flag or the
//! ledger (exactly one userspace exit per op). A failed case carries the reason and no
//! numbers (`NaN`, written as `null`).

use std::collections::BTreeMap;

use pvkit_abi::bench::{
    CaseId, Device, Variant, Workload, SAMPLE_LATENCY_PASS, SAMPLE_RING3, SAMPLE_VERIFIED,
};
use pvkit_abi::call::Hypercall;
use pvkit_abi::ports;
use pvkit_report::{Case, Kind, LatencyMethod};

use super::console_check::{self, Expected};
use super::names;
use pvkit_vmm::bench::{percentile, PhaseRecord, SampleRecord, Verification};
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::vm::RunOutcome;

/// One phase and its sample from one boot. Either may be missing if the guest misbehaved.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The case.
    pub case: CaseId,
    /// The phase markers' record.
    pub phase: Option<PhaseRecord>,
    /// The guest's sample.
    pub sample: Option<SampleRecord>,
    /// The console check (console cases only).
    pub console: Option<Result<(), String>>,
    /// What the guest said about the case on its console when it gave up on it
    /// (`bench <case>: set-up failed: <why>`).
    pub guest_says: Option<String>,
}

/// Pairs the phases of one boot with its samples, and checks console cases against the
/// captured console. Also returns problems that belong to no case (samples with an unknown
/// case id).
pub fn measurements(outcome: &RunOutcome) -> (Vec<Measurement>, Vec<String>) {
    let mut problems = Vec::new();
    let mut used = vec![false; outcome.samples.len()];
    let mut out: Vec<Measurement> = Vec::new();
    for phase in &outcome.phases {
        let id = phase.case.to_u64();
        let sample = outcome
            .samples
            .iter()
            .zip(used.iter_mut())
            .find(|(s, u)| !**u && s.sample.case == id)
            .map(|(s, u)| {
                *u = true;
                s.clone()
            });
        out.push(Measurement {
            case: phase.case,
            phase: Some(phase.clone()),
            sample,
            console: None,
            guest_says: None,
        });
    }
    for (s, _) in outcome.samples.iter().zip(&used).filter(|(_, u)| !**u) {
        match CaseId::try_from(s.sample.case) {
            Ok(case) => out.push(Measurement {
                case,
                phase: None,
                sample: Some(s.clone()),
                console: None,
                guest_says: None,
            }),
            Err(_) => problems.push(format!(
                "the guest reported a sample for an unknown case id {:#x}",
                s.sample.case
            )),
        }
    }
    check_console(outcome, &mut out);
    let said = super::expected::guest_lines(&outcome.console, ": set-up failed:");
    for m in &mut out {
        m.guest_says = said
            .iter()
            .find(|(c, _)| *c == m.case)
            .map(|(_, why)| format!("set-up failed: {why}"));
    }
    (out, problems)
}

/// Fills [`Measurement::console`] for the console cases that have a phase, in phase order.
fn check_console(outcome: &RunOutcome, ms: &mut [Measurement]) {
    let mut idx = Vec::new();
    let mut expected = Vec::new();
    for (i, m) in ms.iter().enumerate() {
        let (Some(p), Some(len)) = (&m.phase, names::console_write_len(m.case.workload)) else {
            continue;
        };
        if m.case.device != Device::Console {
            continue;
        }
        idx.push(i);
        expected.push(Expected {
            write_len: len,
            ops: p.ops,
        });
    }
    let results = console_check::verify(&outcome.console, outcome.console_dropped, &expected);
    for (i, r) in idx.into_iter().zip(results) {
        if let Some(m) = ms.get_mut(i) {
            m.console = Some(r);
        }
    }
}

/// A report case for something that could not be measured at all (a crashed or unavailable
/// device): every number `NaN`, `failure` set.
pub fn failed_case(device: &str, variant: &str, workload: &str, reason: String) -> Case {
    Case {
        device: device.into(),
        variant: variant.into(),
        kind: Kind::Pv,
        workload: workload.into(),
        ops: 0,
        bytes: 0,
        userspace_exits_per_op: f64::NAN,
        exits_by_kind: BTreeMap::new(),
        in_kernel_notifications_per_op: f64::NAN,
        kernel_exits_per_op: BTreeMap::new(),
        guest_cycles_per_op: f64::NAN,
        guest_cycles_per_op_median: f64::NAN,
        guest_cycles_per_op_p99: f64::NAN,
        ns_per_op: f64::NAN,
        ns_per_op_p50: None,
        ns_per_op_p99: None,
        latency_method: None,
        latency_samples: 0,
        throughput: f64::NAN,
        throughput_unit: String::new(),
        verified: false,
        failure: Some(reason),
        speedup: None,
        notes: Vec::new(),
    }
}

/// Groups measurements by case (in order of first appearance) and builds one [`Case`] each.
pub fn build_cases(ms: &[Measurement]) -> Vec<Case> {
    let mut order: Vec<CaseId> = Vec::new();
    for m in ms {
        if !order.contains(&m.case) {
            order.push(m.case);
        }
    }
    order
        .into_iter()
        .map(|c| {
            let group: Vec<&Measurement> = ms.iter().filter(|m| m.case == c).collect();
            build_case(c, &group)
        })
        .collect()
}

/// Why one measurement failed, or `Ok(positive)` where `positive` says whether the check
/// that proves this case's data passed.
fn check(m: &Measurement) -> Result<bool, String> {
    let (Some(p), Some(s)) = (&m.phase, &m.sample) else {
        return Err(match m.phase {
            None => "the guest sent a BenchResult without BenchPhase markers".into(),
            Some(_) => "the guest sent no BenchResult for the phase".into(),
        });
    };
    if s.sample.ops != p.ops {
        return Err(format!(
            "the BenchResult says {} ops, the End marker {}",
            s.sample.ops, p.ops
        ));
    }
    if s.failed() {
        if let Verification::Failed(why) = &s.verification {
            return Err(format!("host op-log verification: {why}"));
        }
        return Err(match m.case.device {
            Device::Clock => format!(
                "the guest's own check failed (SAMPLE_FAILED): a read went backwards, or the \
                 clock and the PIT disagree over 20 ms (by {} ns)",
                s.sample.extra
            ),
            _ => match &m.guest_says {
                Some(why) => format!("the guest's own check failed (SAMPLE_FAILED): {why}"),
                None => "the guest's own check failed (SAMPLE_FAILED)".into(),
            },
        });
    }
    if p.ops == 0 {
        return Err("the phase ended with 0 ops".into());
    }
    let guest_ok = s.sample.flags & SAMPLE_VERIFIED != 0;
    match m.case.device {
        Device::Block => match &s.verification {
            Verification::Passed => Ok(true),
            Verification::NoLog => Err("no op log: the data cannot be verified on the host".into()),
            Verification::NotVerifiable(why) => Err(format!("op log not verifiable: {why}")),
            Verification::Failed(why) => Err(format!("host op-log verification: {why}")),
        },
        Device::Console => match &m.console {
            Some(Ok(())) => Ok(true),
            Some(Err(why)) => Err(why.clone()),
            None => Err("the console output was not checked".into()),
        },
        Device::Clock | Device::Exit => Ok(guest_ok || ledger_proves(m.case, p)),
        // The guest's check: no transmit or receive error, every echo back.
        Device::Net => Ok(guest_ok),
        // Both: every round completed (the guest) and the sender's exits are exactly the
        // design's (the ledger).
        Device::Ipi | Device::Smp | Device::Balloon => Ok(guest_ok && ledger_proves(m.case, p)),
        // Both: every interrupt was handled once (the guest) and the userspace exits are
        // exactly those of the raising (the ledger).
        Device::Irq if !guest_ok => Err(match &m.guest_says {
            Some(why) => format!("the guest did not verify the interrupt count: {why}"),
            None => "the guest did not verify the interrupt count (SAMPLE_VERIFIED not set)".into(),
        }),
        Device::Irq => match ledger_proves(m.case, p) {
            true => Ok(true),
            false => Err(format!(
                "userspace exits not exactly those of raising the interrupts: {} exits for {} \
                 interrupts ({:?})",
                p.exits.total, p.ops, p.exits.counts
            )),
        },
        // The exact counter (the guest's check), and the exits the host attributed to the
        // case (every LockWait and LockKick of the boot) are the calls the guest counted.
        Device::Spinlock => match p.exits.total == s.sample.extra {
            true => Ok(guest_ok),
            false => Err(format!(
                "the guest counted {} LockWait/LockKick calls, the host {} exits",
                s.sample.extra, p.exits.total
            )),
        },
    }
}

/// For cases with no data to check (the null-port round trip, a PIT read): whether the
/// ledger shows exactly the exits one operation consists of, and nothing else.
fn ledger_proves(c: CaseId, p: &PhaseRecord) -> bool {
    let ops = p.ops;
    let e = &p.exits;
    match (c.device, c.variant) {
        (Device::Exit, Variant::PortOut) => {
            e.total == ops && e.count(ExitKind::PortWrite(ports::NULL)) == ops
        }
        // A self-IPI and every acknowledge stay in the kernel.
        (Device::Irq, Variant::X2apicEoi | Variant::PvEoi) => e.total == 0,
        // The one write to the interrupt test port that raises the interrupt.
        (Device::Irq, Variant::IoapicEoi | Variant::PicEoi) => {
            e.total == ops && e.count(ExitKind::PortWrite(ports::IRQ_TEST)) == ops
        }
        // Latch counter 0 (mode/command port), then its LSB and MSB.
        // In-kernel LAPIC: no userspace exit on the sender.
        (Device::Ipi, Variant::X2Apic) => e.total == 0,
        // One SendIpi per op on the sender (the ping-pong's answer is on the other vCPU).
        (Device::Ipi, Variant::PvHypercall) => {
            e.total == ops && e.count(ExitKind::Hypercall(Hypercall::SendIpi)) == ops
        }
        // The unmodified guest tells the host nothing.
        (Device::Balloon, Variant::NoBalloon) => e.total == 0,
        // 2 MiB ranges, 512 per call: one BalloonInflate per GiB begun.
        (Device::Balloon, Variant::PvHypercall) => {
            let calls = ops.div_ceil(1024);
            e.total == calls && e.count(ExitKind::Hypercall(Hypercall::BalloonInflate)) == calls
        }
        // INIT-SIPI-SIPI through the in-kernel LAPIC: no userspace exit on CPU 0.
        (Device::Smp, Variant::InitSipi) => e.total == 0,
        // One VcpuUp per AP on CPU 0.
        (Device::Smp, Variant::PvHypercall) => {
            e.total == ops && e.count(ExitKind::Hypercall(Hypercall::VcpuUp)) == ops
        }
        (Device::Clock, Variant::Pit) => {
            e.total == 3 * ops
                && e.count(ExitKind::PortWrite(PIT_COMMAND)) == ops
                && e.count(ExitKind::PortRead(PIT_COUNTER0)) == 2 * ops
        }
        _ => false,
    }
}

/// The note of a case whose timed loop ran in guest ring 3 (`SAMPLE_RING3`).
pub const RING3_NOTE: &str = "hot loop in guest ring 3 (vDSO/io_uring-style)";

/// The 8254's mode/command port.
const PIT_COMMAND: u16 = 0x43;
/// The 8254's counter 0 data port.
const PIT_COUNTER0: u16 = 0x40;

fn build_case(c: CaseId, group: &[&Measurement]) -> Case {
    let unit = names::unit(c.workload);
    let mut case = failed_case(
        names::device_name(c.device),
        names::variant_name(c.variant),
        names::workload_name(c.workload),
        String::new(),
    );
    case.kind = names::kind(c.variant);
    case.throughput_unit = unit.as_str().into();
    if group.len() > 1 {
        case.notes.push(format!("{} boots pooled", group.len()));
    }
    match c.variant {
        Variant::PvPoll => case
            .notes
            .push("host polls the ring on a dedicated thread".into()),
        Variant::PvEventfd => case
            .notes
            .push("doorbell is an ioeventfd served by a host I/O thread".into()),
        Variant::PvIrq => case.notes.push(
            "received frames announced by a completion interrupt (irqfd); the guest halts".into(),
        ),
        _ => {}
    }

    let mut failures = Vec::new();
    let mut all_positive = true;
    for m in group {
        match check(m) {
            Ok(positive) => all_positive &= positive,
            Err(why) => failures.push(why),
        }
    }
    let phases: Vec<&PhaseRecord> = group.iter().filter_map(|m| m.phase.as_ref()).collect();
    let samples: Vec<&SampleRecord> = group.iter().filter_map(|m| m.sample.as_ref()).collect();
    // Where the guest ran the timed loop (`SAMPLE_RING3`); rings default to ring 0.
    if samples.iter().any(|s| s.sample.flags & SAMPLE_RING3 != 0) {
        case.notes.push(RING3_NOTE.into());
    } else if matches!(
        c.variant,
        Variant::PvRing | Variant::PvEventfd | Variant::PvPoll
    ) {
        case.notes.push("hot loop in guest ring 0".into());
    }
    case.ops = phases.iter().map(|p| p.ops).sum();
    case.bytes = samples.iter().map(|s| s.sample.bytes).sum();
    if failures.is_empty() && !all_positive {
        failures.push(match c.device {
            Device::Exit | Device::Clock => "neither the guest's check (SAMPLE_VERIFIED) nor the \
                 ledger (exactly the exits of one operation per op) proves the case"
                .into(),
            Device::Ipi => "the guest's check (every round completed, SAMPLE_VERIFIED) or the \
                 sender's ledger (x2apic: no exit; pv: one SendIpi per op) failed"
                .into(),
            Device::Smp => "the guest's check (every AP reported in, SAMPLE_VERIFIED) or CPU 0's \
                 ledger (init-sipi: no exit; pv: one VcpuUp per AP) failed"
                .into(),
            Device::Balloon => "the guest's check (every page inflated, SAMPLE_VERIFIED) or the \
                 ledger (none: no exit; pv: one BalloonInflate per GiB begun) failed"
                .into(),
            _ => "the guest did not verify the case (SAMPLE_VERIFIED not set)".into(),
        });
    }
    if !failures.is_empty() {
        failures.dedup();
        case.failure = Some(failures.join("; "));
        return case;
    }

    let ops = case.ops as f64;
    let mut by_kind: BTreeMap<ExitKind, u64> = BTreeMap::new();
    let mut total_exits = 0u64;
    let mut notifications = 0u64;
    let mut host_ns = 0u128;
    let mut kernel: BTreeMap<&'static str, u64> = BTreeMap::new();
    // KVM's counters only if every phase has them (else the sum would be short).
    let kernel_everywhere = phases.iter().all(|p| !p.exits.kernel.is_empty());
    for p in &phases {
        for (name, n) in &p.exits.kernel {
            *kernel.entry(name).or_insert(0) += n;
        }
        for (k, n) in &p.exits.counts {
            *by_kind.entry(*k).or_insert(0) += n;
        }
        total_exits += p.exits.total;
        notifications += p.exits.notifications.values().sum::<u64>();
        host_ns += p.host_time.as_nanos();
    }
    case.userspace_exits_per_op = total_exits as f64 / ops;
    case.exits_by_kind = by_kind
        .into_iter()
        .map(|(k, n)| (names::exit_key(k), n as f64 / ops))
        .collect();
    case.in_kernel_notifications_per_op = notifications as f64 / ops;
    if kernel_everywhere {
        case.kernel_exits_per_op = kernel
            .into_iter()
            .map(|(name, n)| (name.to_owned(), n as f64 / ops))
            .collect();
    }
    case.ns_per_op = host_ns as f64 / ops;
    case.throughput = unit.throughput(case.ops, case.bytes, host_ns as f64);

    let total: u64 = samples.iter().map(|s| s.sample.cycles_total).sum();
    case.guest_cycles_per_op = if total == 0 {
        f64::NAN
    } else {
        total as f64 / ops
    };
    let latency = guest_cycles(&samples, case.ops);
    case.guest_cycles_per_op_median = latency.median;
    case.guest_cycles_per_op_p99 = latency.p99;
    case.latency_method = latency.method;
    case.latency_samples = latency.samples;
    if let Some(how) = latency.note {
        case.notes.push(how.into());
    }
    if group.len() > 1 {
        let per_boot: Vec<f64> = phases
            .iter()
            .filter(|p| p.ops > 0)
            .map(|p| p.host_time.as_nanos() as f64 / p.ops as f64)
            .collect();
        let lo = per_boot.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_boot.iter().copied().fold(0.0, f64::max);
        case.notes
            .push(format!("host ns/op per boot: {lo:.0} to {hi:.0}"));
    }
    if let Some(note) = irq_note(c.variant, case.ops, &samples) {
        case.notes.push(note);
    }
    if c.device == Device::Clock && matches!(c.variant, Variant::PvClock | Variant::KvmClock) {
        if let Some(worst) = samples.iter().map(|s| s.sample.extra).max() {
            case.notes.push(format!(
                "guest check: agrees with the PIT over 20 ms within {worst} ns"
            ));
        }
    }
    if c.device == Device::Balloon {
        case.notes.push(match c.variant {
            Variant::NoBalloon => "the unmodified guest cannot give memory back: its phase is \
                 empty (throughput meaningless); compare the host RSS"
                .into(),
            _ => "throughput = inflate MiB/s of guest RAM released to the host; the speedup \
                 against the empty baseline is meaningless: compare the host RSS"
                .into(),
        });
    }
    if c.device == Device::Smp {
        case.notes.push(
            "exits counted on CPU 0's vCPU; each AP's own start-up exits (its clock page and \
             line; PV: the wake-up of its thread) are on its vCPU"
                .into(),
        );
    }
    if c.device == Device::Ipi {
        let extra: u64 = samples.iter().map(|s| s.sample.extra).sum();
        match (c.variant, c.workload) {
            (Variant::PvHypercall, Workload::PingPong) => case.notes.push(format!(
                "exits counted on CPU 0's vCPU; CPU 1's answer adds {:.2} SendIpi exit per round \
                 trip on its own vCPU (guest count)",
                extra as f64 / ops
            )),
            (_, Workload::PingPong) => case
                .notes
                .push("round trip CPU 0 → CPU 1 → CPU 0, both in the in-kernel LAPIC".into()),
            _ => case.notes.push(format!(
                "{} targets per op, all acknowledged",
                extra / samples.len().max(1) as u64
            )),
        }
    }
    case.verified = true;
    case.failure = None;
    case
}

/// What an interrupt case's numbers mean: for PV EOI, how many acknowledges KVM's flag
/// made unnecessary (the guest's `extra`), which says whether PV EOI is effective on this
/// platform; for the device-raised variants, where their one userspace exit comes from.
pub fn irq_note(v: Variant, ops: u64, samples: &[&SampleRecord]) -> Option<String> {
    match v {
        Variant::PvEoi => {
            let skipped: u64 = samples.iter().map(|s| s.sample.extra).sum();
            Some(if skipped == 0 {
                format!(
                    "PV EOI offered and accepted but not effective: KVM set the PV EOI flag \
                     for 0 of {ops} interrupts, every acknowledge was an x2APIC EOI"
                )
            } else {
                format!("PV EOI effective: {skipped} of {ops} acknowledges needed no EOI write")
            })
        }
        Variant::IoapicEoi | Variant::PicEoi => Some(
            "1 userspace exit per interrupt: the write to the interrupt test port that raises \
             it (irqfd); the acknowledge stays in the kernel"
                .into(),
        ),
        Variant::X2apicEoi => Some("self-IPI (x2APIC SELF_IPI)".into()),
        _ => None,
    }
}

/// A case's latency distribution in guest cycles per op.
struct Latency {
    median: f64,
    p99: f64,
    method: Option<LatencyMethod>,
    samples: u64,
    note: Option<&'static str>,
}

/// Median and p99 guest cycles per op: from the pooled raw samples when the guest sent them
/// (from its separate latency pass if every sample says so, `SAMPLE_LATENCY_PASS`, else
/// from inside the timed loop, noted), else from the guest's own percentiles, else the
/// phase mean (with a note saying so).
fn guest_cycles(samples: &[&SampleRecord], ops: u64) -> Latency {
    let mut raw: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.cycles.iter().copied())
        .collect();
    let separate = samples
        .iter()
        .all(|s| s.sample.flags & SAMPLE_LATENCY_PASS != 0);
    let (method, note) = if separate {
        (LatencyMethod::SeparatePass, None)
    } else {
        (
            LatencyMethod::TimedLoop,
            Some("latency: sampled inside the timed loop (its time reads are in ns/op)"),
        )
    };
    if !raw.is_empty() {
        raw.sort_unstable();
        return Latency {
            median: percentile(&raw, 50) as f64,
            p99: percentile(&raw, 99) as f64,
            method: Some(method),
            samples: raw.len() as u64,
            note,
        };
    }
    let given: Vec<&SampleRecord> = samples
        .iter()
        .copied()
        .filter(|s| s.sample.cycles_median != 0)
        .collect();
    if !given.is_empty() {
        let mut med: Vec<u64> = given.iter().map(|s| s.sample.cycles_median).collect();
        med.sort_unstable();
        let p99 = given.iter().map(|s| s.sample.cycles_p99).max().unwrap_or(0);
        return Latency {
            median: percentile(&med, 50) as f64,
            p99: p99 as f64,
            method: Some(method),
            samples: 0,
            note: Some("guest cycles: the guest's own percentiles"),
        };
    }
    let total: u64 = samples.iter().map(|s| s.sample.cycles_total).sum();
    if total == 0 || ops == 0 {
        return Latency {
            median: f64::NAN,
            p99: f64::NAN,
            method: None,
            samples: 0,
            note: Some("no guest cycle measurement"),
        };
    }
    let mean = total as f64 / ops as f64;
    Latency {
        median: mean,
        p99: mean,
        method: Some(LatencyMethod::PhaseMean),
        samples: 0,
        note: Some("guest cycles: phase mean (no per-op samples)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_abi::bench::{BenchSample, Workload, SAMPLE_FAILED};
    use pvkit_abi::call::Hypercall;
    use pvkit_vmm::exit::ledger::LedgerSnapshot;
    use std::time::Duration;

    fn id(device: Device, variant: Variant, workload: Workload) -> CaseId {
        CaseId {
            device,
            variant,
            workload,
        }
    }

    fn phase(case: CaseId, ops: u64, exits: &[(ExitKind, u64)], ns: u64) -> PhaseRecord {
        let counts: BTreeMap<ExitKind, u64> = exits.iter().copied().collect();
        PhaseRecord {
            case,
            ops,
            exits: LedgerSnapshot {
                total: counts.values().sum(),
                counts,
                notifications: BTreeMap::new(),
                kernel: BTreeMap::new(),
            },
            host_time: Duration::from_nanos(ns),
        }
    }

    fn sample(case: CaseId, ops: u64, bytes: u64, flags: u32, cycles: Vec<u64>) -> SampleRecord {
        SampleRecord {
            sample: BenchSample {
                case: case.to_u64(),
                ops,
                bytes,
                flags,
                cycles_total: 1000 * ops,
                ..BenchSample::default()
            },
            cycles,
            op_log_len: 0,
            verification: Verification::NoLog,
        }
    }

    #[test]
    fn exit_case_numbers() {
        let c = id(Device::Exit, Variant::PortOut, Workload::RoundTrip);
        let m = Measurement {
            case: c,
            phase: Some(phase(
                c,
                100,
                &[(ExitKind::PortWrite(0x501), 100)],
                1_000_000,
            )),
            sample: Some(sample(c, 100, 0, 0, (1..=100).collect())),
            console: None,
            guest_says: None,
        };
        let cases = build_cases(&[m]);
        let k = &cases[0];
        assert!(k.verified && k.failure.is_none(), "{k:?}");
        assert_eq!(
            (k.device.as_str(), k.variant.as_str(), k.workload.as_str()),
            ("exit", "null-port", "round-trip")
        );
        assert_eq!(k.kind, Kind::Emulated);
        assert_eq!(k.userspace_exits_per_op, 1.0);
        assert_eq!(k.exits_by_kind["port-out 0x501 (null)"], 1.0);
        assert_eq!(k.ns_per_op, 10_000.0);
        assert_eq!(k.guest_cycles_per_op_median, 50.0);
        assert_eq!(k.guest_cycles_per_op_p99, 99.0);
        assert!((k.throughput - 100_000.0).abs() < 1e-6);
        assert_eq!(k.throughput_unit, "writes/s");
    }

    #[test]
    fn throughput_cycles_come_from_the_timed_loop_and_latency_is_labelled() {
        let c = id(Device::Clock, Variant::Pit, Workload::ClockRead);
        let build = |flags: u32, cycles: Vec<u64>| {
            let mut s = sample(c, 10, 0, SAMPLE_VERIFIED | flags, cycles);
            s.sample.cycles_total = 123_450;
            build_cases(&[Measurement {
                case: c,
                phase: Some(phase(c, 10, &[(ExitKind::PortRead(0x40), 20)], 1000)),
                sample: Some(s),
                console: None,
                guest_says: None,
            }])
            .remove(0)
        };
        let k = build(SAMPLE_LATENCY_PASS, vec![9, 1, 5]);
        assert_eq!(k.guest_cycles_per_op, 12_345.0);
        assert_eq!(k.guest_cycles_per_op_median, 5.0);
        assert_eq!(k.latency_method, Some(LatencyMethod::SeparatePass));
        assert_eq!(k.latency_samples, 3);
        assert!(!k.notes.iter().any(|n| n.starts_with("latency")), "{k:?}");
        let k = build(0, vec![9, 1, 5]);
        assert_eq!(k.latency_method, Some(LatencyMethod::TimedLoop));
        assert!(k.notes.iter().any(|n| n.contains("inside the timed loop")));
        let k = build(SAMPLE_LATENCY_PASS, vec![]);
        assert_eq!(k.latency_method, Some(LatencyMethod::PhaseMean));
        assert_eq!(k.guest_cycles_per_op_median, 12_345.0);
    }

    /// An interrupt case: `handled_ok` is the guest's verdict, `extra` its PV EOI count.
    fn irq(variant: Variant, exits: &[(ExitKind, u64)], ok: bool, extra: u64) -> Case {
        let c = id(Device::Irq, variant, Workload::Interrupt);
        let flags = if ok { SAMPLE_VERIFIED } else { SAMPLE_FAILED };
        let mut p = phase(c, 10, exits, 1000);
        p.exits.kernel = [("exits", 20), ("irq_injections", 10)]
            .into_iter()
            .collect();
        let mut s = sample(c, 10, 0, flags, vec![]);
        s.sample.extra = extra;
        build_cases(&[Measurement {
            case: c,
            phase: Some(p),
            sample: Some(s),
            console: None,
            guest_says: None,
        }])
        .remove(0)
    }

    #[test]
    fn interrupt_cases_need_the_guests_count_and_exactly_the_raising_exits() {
        let trigger = ExitKind::PortWrite(ports::IRQ_TEST);
        let k = irq(Variant::IoapicEoi, &[(trigger, 10)], true, 0);
        assert!(k.verified, "{k:?}");
        assert_eq!(k.userspace_exits_per_op, 1.0);
        assert_eq!(k.kernel_exits_per_op["exits"], 2.0);
        assert_eq!(k.kernel_exits_per_op["irq_injections"], 1.0);
        assert_eq!(k.throughput_unit, "interrupts/s");
        assert_eq!(k.kind, Kind::Emulated);
        // One exit too many, or another kind: not proved.
        let k = irq(Variant::PicEoi, &[(trigger, 11)], true, 0);
        assert!(
            k.failure.as_deref().is_some_and(|f| f.contains("exactly")),
            "{k:?}"
        );
        let k = irq(Variant::X2apicEoi, &[(ExitKind::Hlt, 1)], true, 0);
        assert!(k.is_failed(), "{k:?}");
        // The guest counted a lost interrupt.
        let k = irq(Variant::X2apicEoi, &[], false, 0);
        assert!(k.is_failed(), "{k:?}");
        assert!(irq(Variant::X2apicEoi, &[], true, 0).verified);
    }

    #[test]
    fn pv_eoi_says_whether_kvm_set_its_flag() {
        let k = irq(Variant::PvEoi, &[], true, 0);
        assert!(k.verified && k.kind == Kind::Pv, "{k:?}");
        assert!(k.notes.iter().any(|n| n.contains("not effective")), "{k:?}");
        let k = irq(Variant::PvEoi, &[], true, 7);
        assert!(
            k.notes.iter().any(|n| n.contains("effective: 7 of 10")),
            "{k:?}"
        );
    }

    #[test]
    fn pit_and_null_port_are_proved_by_the_ledger() {
        let c = id(Device::Clock, Variant::Pit, Workload::ClockRead);
        let m = |exits: &[(ExitKind, u64)]| Measurement {
            case: c,
            phase: Some(phase(c, 10, exits, 1000)),
            sample: Some(sample(c, 10, 0, 0, vec![])),
            console: None,
            guest_says: None,
        };
        let good = [
            (ExitKind::PortWrite(0x43), 10),
            (ExitKind::PortRead(0x40), 20),
        ];
        assert!(build_cases(&[m(&good)])[0].verified);
        let extra = [
            (ExitKind::PortWrite(0x43), 10),
            (ExitKind::PortRead(0x40), 20),
            (ExitKind::PortRead(0x61), 1),
        ];
        let k = &build_cases(&[m(&extra)])[0];
        assert!(k.failure.as_ref().unwrap().contains("ledger"), "{k:?}");
    }

    #[test]
    fn iterations_pool() {
        let c = id(Device::Clock, Variant::Pit, Workload::ClockRead);
        let ms: Vec<Measurement> = [(10u64, 30_000u64), (30, 150_000)]
            .into_iter()
            .map(|(ops, ns)| Measurement {
                case: c,
                phase: Some(phase(c, ops, &[(ExitKind::PortRead(0x40), 2 * ops)], ns)),
                sample: Some(sample(c, ops, 0, SAMPLE_VERIFIED, vec![])),
                console: None,
                guest_says: None,
            })
            .collect();
        let k = &build_cases(&ms)[0];
        assert!(k.verified, "{k:?}");
        assert_eq!(k.ops, 40);
        assert_eq!(k.userspace_exits_per_op, 2.0);
        assert_eq!(k.ns_per_op, 180_000.0 / 40.0);
        // No raw samples and no guest percentiles: the phase mean, with a note.
        assert_eq!(k.guest_cycles_per_op_median, 1000.0);
        assert!(k.notes.iter().any(|n| n.contains("phase mean")));
        assert!(k.notes.iter().any(|n| n.contains("2 boots")));
    }

    #[test]
    fn the_ring_of_the_hot_loop_is_noted() {
        let note = |variant, flags| {
            let c = id(Device::Clock, variant, Workload::ClockRead);
            let k = &build_cases(&[Measurement {
                case: c,
                phase: Some(phase(c, 10, &[], 1000)),
                sample: Some(sample(c, 10, 0, flags, vec![])),
                console: None,
                guest_says: None,
            }])[0];
            k.notes
                .iter()
                .filter(|n| n.starts_with("hot loop"))
                .cloned()
                .collect::<Vec<_>>()
        };
        let ring3 = SAMPLE_VERIFIED | SAMPLE_RING3;
        assert_eq!(note(Variant::PvClock, ring3), [RING3_NOTE]);
        assert_eq!(note(Variant::PvPoll, ring3), [RING3_NOTE]);
        assert_eq!(
            note(Variant::PvRing, SAMPLE_VERIFIED),
            ["hot loop in guest ring 0"]
        );
        assert!(note(Variant::Pit, SAMPLE_VERIFIED).is_empty());
    }

    #[test]
    fn failures_carry_reasons_and_no_numbers() {
        let c = id(Device::Block, Variant::PvRing, Workload::RandRead4K);
        let ok_phase = phase(c, 4, &[(ExitKind::PortWrite(0x510), 4)], 100);
        let mut bad = sample(c, 4, 16384, 0, vec![]);
        bad.verification = Verification::Failed("entry 2: data mismatch".into());
        let cases = build_cases(&[Measurement {
            case: c,
            phase: Some(ok_phase.clone()),
            sample: Some(bad),
            console: None,
            guest_says: None,
        }]);
        let k = &cases[0];
        assert!(!k.verified);
        assert!(k.failure.as_ref().unwrap().contains("data mismatch"));
        assert!(k.ns_per_op.is_nan() && k.userspace_exits_per_op.is_nan());

        // A block case without an op log is not verified.
        let cases = build_cases(&[Measurement {
            case: c,
            phase: Some(ok_phase.clone()),
            sample: Some(sample(c, 4, 16384, SAMPLE_VERIFIED, vec![])),
            console: None,
            guest_says: None,
        }]);
        assert!(cases[0].failure.as_ref().unwrap().contains("no op log"));

        // Guest failure flag, missing sample, ops mismatch.
        for (s, why) in [
            (
                Some(sample(c, 4, 0, SAMPLE_FAILED, vec![])),
                "SAMPLE_FAILED",
            ),
            (None, "no BenchResult"),
            (Some(sample(c, 5, 0, 0, vec![])), "5 ops"),
        ] {
            let k = &build_cases(&[Measurement {
                case: c,
                phase: Some(ok_phase.clone()),
                sample: s,
                console: None,
                guest_says: None,
            }])[0];
            assert!(k.failure.as_ref().unwrap().contains(why), "{k:?}");
        }
    }

    #[test]
    fn set_up_failures_carry_the_guests_reason() {
        let c = id(Device::Block, Variant::PvPoll, Workload::SeqRead1M);
        let k = &build_cases(&[Measurement {
            case: c,
            phase: Some(phase(c, 0, &[], 10)),
            sample: Some(sample(c, 0, 0, SAMPLE_FAILED, vec![])),
            console: None,
            guest_says: Some("set-up failed: EOPNOTSUPP".into()),
        }])[0];
        assert!(
            k.failure
                .as_ref()
                .unwrap()
                .ends_with("set-up failed: EOPNOTSUPP"),
            "{k:?}"
        );
    }

    #[test]
    fn console_cases_need_the_capture_check() {
        let c = id(Device::Console, Variant::PvHypercall, Workload::Write64);
        let m = |console| Measurement {
            case: c,
            phase: Some(phase(
                c,
                8,
                &[(ExitKind::Hypercall(Hypercall::ConsoleWrite), 8)],
                80_000,
            )),
            sample: Some(sample(c, 8, 512, SAMPLE_VERIFIED, vec![7; 8])),
            console,
            guest_says: None,
        };
        let k = &build_cases(&[m(Some(Ok(())))])[0];
        assert!(k.verified);
        assert_eq!(k.exits_by_kind["hypercall console_write"], 1.0);
        assert!((k.throughput - 6.4).abs() < 1e-9, "{}", k.throughput);
        let k = &build_cases(&[m(Some(Err("short".into())))])[0];
        assert_eq!(k.failure.as_deref(), Some("short"));
        let k = &build_cases(&[m(None)])[0];
        assert!(!k.verified);
    }
}
