//! SMP bring-up on real KVM (`--vcpus 4`, the built-in guest's `smp=emulated|pv`): every
//! AP reports in exactly once both ways; the PV way costs exactly one `VcpuUp` hypercall,
//! one wake-up of the AP's thread and the AP's one `ConsoleWrite` per AP.

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

/// The `smp:` summary line's `up=` value.
fn reported_up(console: &str) -> Option<u32> {
    let line = console.lines().find(|l| l.starts_with("smp: mode="))?;
    line.split_whitespace()
        .find_map(|t| t.strip_prefix("up="))?
        .parse()
        .ok()
}

/// Each of CPUs 1..4 reported `cpu N up` exactly once, and nothing else did.
fn assert_each_ap_once(console: &str) {
    for cpu in 1..4 {
        let line = format!("cpu {cpu} up");
        assert_eq!(
            console.lines().filter(|l| *l == line).count(),
            1,
            "{line}: {console}"
        );
    }
    assert_eq!(
        console.lines().filter(|l| l.ends_with(" up")).count(),
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
    assert!(console.contains("smp: mode=pv cpus=4 up=3"), "{console}");
    let (b, s) = (&base.ledger, &o.ledger);
    let d = |k: ExitKind| s.count(k) - b.count(k);
    // Per AP: the BSP's VcpuUp, the kick that wakes its thread, its ConsoleWrite; plus the
    // BSP's one summary line.
    assert_eq!(d(ExitKind::Hypercall(Hypercall::VcpuUp)), 3);
    assert_eq!(d(ExitKind::Interrupted), 3);
    assert_eq!(d(ExitKind::Hypercall(Hypercall::ConsoleWrite)), 3 + 1);
    assert_eq!(s.total - b.total, 3 * 3 + 1, "{s:?}\n{b:?}");
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
        console.contains("smp: mode=emulated cpus=4 up=3"),
        "{console}"
    );
    // No VcpuUp on this path: the in-kernel LAPIC started the APs.
    assert_eq!(o.ledger.count(ExitKind::Hypercall(Hypercall::VcpuUp)), 0);
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
            console.contains(&format!("smp: vcpu_up({cpu}) failed: EOPNOTSUPP")),
            "{console}"
        );
    }
    assert_eq!(reported_up(&console), Some(0), "{console}");
    // Two vCPUs, the guest asks for four: CPU 1 comes up, 2 and 3 do not exist.
    let o = boot(2, "smp=pv cpus=4");
    let console = String::from_utf8_lossy(&o.console);
    assert_eq!(o.stop, StopReason::Exit(0), "{o:?}");
    assert_eq!(console.lines().filter(|l| *l == "cpu 1 up").count(), 1);
    for cpu in 2..4 {
        assert!(
            console.contains(&format!("smp: vcpu_up({cpu}) failed: EINVAL")),
            "{console}"
        );
    }
    assert_eq!(reported_up(&console), Some(1), "{console}");
}
