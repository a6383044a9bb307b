//! SMP on real KVM (`--vcpus 4`, the built-in guest's `smp=emulated|pv ipi=emulated|pv`):
//!
//! - bring-up: every AP reports in exactly once both ways, on its own CPU prefix; the PV
//!   way costs exactly one `VcpuUp` hypercall, one wake-up of the AP's thread, the AP's
//!   `RegisterRegion` of its own clock page and its one `ConsoleWrite` per AP;
//! - IPIs: each CPU counts what its handler received, and after the delivery check CPU `k`
//!   has exactly `k + 1` and CPU 0 none, both ways; a PV `SendIpi` costs exactly one exit
//!   whatever its number of targets, an x2APIC IPI none; bad bitmaps and vectors are
//!   refused.

mod common;

use std::time::Duration;

use pvkit_abi::Hypercall;
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::{run, ConsoleKind, KernelSource, RunOutcome, StopReason, VmConfig};

fn boot(vcpus: u32, cmdline: &str) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 32,
        cmdline: cmdline.into(),
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: Duration::from_secs(60),
        vcpus,
        ..VmConfig::default()
    };
    run(&cfg).expect("run the built-in guest")
}

/// The `smp:` summary line's `up=` value (the BSP's line, `[cpu0] smp: mode=...`).
fn reported_up(console: &str) -> Option<u32> {
    let line = console
        .lines()
        .find(|l| l.starts_with("[cpu0] smp: mode="))?;
    line.split_whitespace()
        .find_map(|t| t.strip_prefix("up="))?
        .parse()
        .ok()
}

/// Each of CPUs 1..4 reported `[cpuN] up, ...` exactly once, and nothing else did.
fn assert_each_ap_once(console: &str) {
    for cpu in 1..4 {
        let prefix = format!("[cpu{cpu}] up, clock page ");
        assert_eq!(
            console.lines().filter(|l| l.starts_with(&prefix)).count(),
            1,
            "{prefix}: {console}"
        );
    }
    assert_eq!(
        console.lines().filter(|l| l.contains("] up, ")).count(),
        3,
        "{console}"
    );
}

#[test]
fn four_vcpus_boot_all_aps_the_pv_way_with_exact_exits() {
    if !common::builtin_ready() {
        return;
    }
    let base = boot(4, "");
    let o = boot(4, "smp=pv cpus=4");
    assert_eq!(o.stop, StopReason::Exit(0), "{o:?}");
    let console = String::from_utf8_lossy(&o.console);
    assert_each_ap_once(&console);
    assert_eq!(reported_up(&console), Some(3), "{console}");
    assert!(
        console.contains("[cpu0] smp: mode=pv cpus=4 up=3"),
        "{console}"
    );
    let (b, s) = (&base.ledger, &o.ledger);
    let d = |k: ExitKind| s.count(k) - b.count(k);
    // Per AP: the BSP's VcpuUp, the kick that wakes its thread, its clock page, its
    // ConsoleWrite; plus the BSP's one summary line.
    assert_eq!(d(ExitKind::Hypercall(Hypercall::VcpuUp)), 3);
    assert_eq!(d(ExitKind::Interrupted), 3);
    assert_eq!(d(ExitKind::Hypercall(Hypercall::RegisterRegion)), 3);
    assert_eq!(d(ExitKind::Hypercall(Hypercall::ConsoleWrite)), 3 + 1);
    assert_eq!(s.total - b.total, 3 * 4 + 1, "{s:?}\n{b:?}");
}

#[test]
fn four_vcpus_boot_all_aps_through_init_sipi_sipi() {
    if !common::builtin_ready() {
        return;
    }
    let o = boot(4, "smp=emulated cpus=4");
    assert_eq!(o.stop, StopReason::Exit(0), "{o:?}");
    let console = String::from_utf8_lossy(&o.console);
    assert_each_ap_once(&console);
    assert_eq!(reported_up(&console), Some(3), "{console}");
    assert!(
        console.contains("[cpu0] smp: mode=emulated cpus=4 up=3"),
        "{console}"
    );
    // No VcpuUp on this path: the in-kernel LAPIC started the APs.
    assert_eq!(o.ledger.count(ExitKind::Hypercall(Hypercall::VcpuUp)), 0);
    assert_eq!(
        o.ledger
            .count(ExitKind::Hypercall(Hypercall::RegisterRegion)),
        3
    );
}

#[test]
fn vcpu_up_refuses_bad_targets_and_one_vcpu_has_no_vcpu_up() {
    if !common::builtin_ready() {
        return;
    }
    // One vCPU: the call is not there; the guest says so and nothing comes up.
    let o = boot(1, "smp=pv cpus=4");
    assert_eq!(o.stop, StopReason::Exit(0), "{o:?}");
    let console = String::from_utf8_lossy(&o.console);
    for cpu in 1..4 {
        assert!(
            console.contains(&format!("[cpu0] smp: vcpu_up({cpu}) failed: EOPNOTSUPP")),
            "{console}"
        );
    }
    assert_eq!(reported_up(&console), Some(0), "{console}");
    // Two vCPUs, the guest asks for four: CPU 1 comes up, 2 and 3 do not exist.
    let o = boot(2, "smp=pv cpus=4");
    let console = String::from_utf8_lossy(&o.console);
    assert_eq!(o.stop, StopReason::Exit(0), "{o:?}");
    assert_eq!(
        console
            .lines()
            .filter(|l| l.starts_with("[cpu1] up, "))
            .count(),
        1
    );
    for cpu in 2..4 {
        assert!(
            console.contains(&format!("[cpu0] smp: vcpu_up({cpu}) failed: EINVAL")),
            "{console}"
        );
    }
    assert_eq!(reported_up(&console), Some(1), "{console}");
}

/// Round trips and broadcasts of the IPI runs (small: CI time).
const ROUNDS: u64 = 5;

/// The IPI lines of `mode` in `console`: the delivery check, ping-pong and broadcast.
fn assert_ipi_lines(console: &str, mode: &str) {
    let check = format!("[cpu0] ipi: mode={mode} received cpu0=0 cpu1=2 cpu2=3 cpu3=4\n");
    assert!(console.contains(&check), "{console}");
    let pp = format!("[cpu0] ipi: mode={mode} pingpong rounds={ROUNDS} ");
    assert!(console.contains(&pp), "{console}");
    let bc = format!("[cpu0] ipi: mode={mode} broadcast targets=3 rounds={ROUNDS} ");
    assert!(console.contains(&bc), "{console}");
}

#[test]
fn pv_ipis_reach_exactly_their_targets_with_one_exit_per_send_ipi() {
    if !common::builtin_ready() {
        return;
    }
    let base = boot(4, "smp=pv cpus=4");
    let o = boot(4, &format!("smp=pv cpus=4 ipi=pv ipi_rounds={ROUNDS}"));
    assert_eq!(o.stop, StopReason::Exit(0), "{o:?}");
    let console = String::from_utf8_lossy(&o.console);
    assert_ipi_lines(&console, "pv");
    for bad in ["empty bitmap", "absent cpu", "exception vector"] {
        let line = format!("[cpu0] ipi: bad {bad} refused: EINVAL\n");
        assert!(console.contains(&line), "{console}");
    }
    let (b, s) = (&base.ledger, &o.ledger);
    let d = |k: ExitKind| s.count(k) - b.count(k);
    // 3 refused calls; the check's 3 bitmaps (6 targets) and 1 to all others; each round
    // trip one call each way; each broadcast one call for 3 targets.
    assert_eq!(
        d(ExitKind::Hypercall(Hypercall::SendIpi)),
        3 + 3 + 1 + 2 * ROUNDS + ROUNDS
    );
    // The three result lines and the three refusals.
    assert_eq!(d(ExitKind::Hypercall(Hypercall::ConsoleWrite)), 6);
    assert_eq!(
        s.total - b.total,
        3 + 3 + 1 + 3 * ROUNDS + 6,
        "{s:?}\n{b:?}"
    );
}

#[test]
fn x2apic_ipis_reach_exactly_their_targets_with_no_exit() {
    if !common::builtin_ready() {
        return;
    }
    let base = boot(4, "smp=emulated cpus=4");
    let o = boot(
        4,
        &format!("smp=emulated cpus=4 ipi=emulated ipi_rounds={ROUNDS}"),
    );
    assert_eq!(o.stop, StopReason::Exit(0), "{o:?}");
    let console = String::from_utf8_lossy(&o.console);
    assert_ipi_lines(&console, "emulated");
    let (b, s) = (&base.ledger, &o.ledger);
    // Only the three result lines: every ICR write and EOI stays in the kernel.
    assert_eq!(s.count(ExitKind::Hypercall(Hypercall::SendIpi)), 0);
    let d = |k: ExitKind| s.count(k) - b.count(k);
    assert_eq!(d(ExitKind::Hypercall(Hypercall::ConsoleWrite)), 3);
    let less_kicks =
        |l: &pvkit_vmm::exit::ledger::LedgerSnapshot| l.total - l.count(ExitKind::Interrupted);
    assert_eq!(less_kicks(s) - less_kicks(b), 3, "{s:?}\n{b:?}");
}
