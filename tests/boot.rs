//! Boots the real guests built with the VMM (`guest-kernel/`): printed text compared
//! exactly, exact exit counts, faults, the watchdog, refused images, the example OS.
//!
//! Ring-0 guest code is interpreted on kvm_pvm, so the runs are kept short.

mod common;

use std::time::Duration;

use common::{code, pvkit, temp_file};
use pvkit_abi::call::Hypercall;
use pvkit_vmm::exit::ledger::{ExitKind, LedgerSnapshot};
use pvkit_vmm::guests;
use pvkit_vmm::{run, ConsoleKind, KernelSource, RunOutcome, StopReason, VmConfig};

/// Whether the guests this file boots are built and KVM is usable (under CI: must be).
fn ready() -> bool {
    common::builtin_ready()
}

fn boot(console: ConsoleKind, cmdline: &str) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 32,
        cmdline: cmdline.into(),
        console: Some(console),
        capture_console: true,
        timeout: Duration::from_secs(30),
        ..VmConfig::default()
    };
    run(&cfg).expect("run the guest kernel")
}

/// The guest workspace's version, as the banner prints it.
fn guest_version() -> String {
    let toml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-kernel/Cargo.toml"
    ))
    .expect("read guest-kernel/Cargo.toml");
    toml.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
        .expect("a version in guest-kernel/Cargo.toml")
}

#[test]
fn banner_on_each_console() {
    if !ready() {
        return;
    }
    for console in [ConsoleKind::Pv, ConsoleKind::Uart] {
        let o = boot(console, "");
        assert_eq!(o.stop, StopReason::Exit(0), "{console:?}");
        let expected = format!(
            "pvkit guest kernel {} (ABI 2.0) console={}\n",
            guest_version(),
            console.name()
        );
        assert_eq!(String::from_utf8_lossy(&o.console), expected, "{console:?}");
        assert!(o.timings.to_first_hypercall.is_some());
    }
}

/// `after - before` as (kind, count) pairs, zero counts left out.
fn extra(after: &LedgerSnapshot, before: &LedgerSnapshot) -> Vec<(ExitKind, u64)> {
    after.since(before).counts.into_iter().collect()
}

#[test]
fn uart_exit_counts_are_exact() {
    if !ready() {
        return;
    }
    let base = boot(ConsoleKind::Uart, "print=0");
    assert_eq!(base.stop, StopReason::Exit(0));
    assert!(base.console.is_empty());
    for n in [1u64, 37] {
        let o = boot(ConsoleKind::Uart, &format!("print={n}"));
        assert_eq!(o.stop, StopReason::Exit(0));
        assert_eq!(o.console, vec![b'x'; n as usize]);
        assert_eq!(
            extra(&o.ledger, &base.ledger),
            vec![
                (ExitKind::PortRead(0x3fd), n),
                (ExitKind::PortWrite(0x3f8), n)
            ],
            "print={n}: exactly one LSR read and one THR write per byte"
        );
        assert_eq!(o.ledger.total, base.ledger.total + 2 * n);
    }
}

#[test]
fn pv_exit_counts_are_exact() {
    if !ready() {
        return;
    }
    let base = boot(ConsoleKind::Pv, "print=0");
    assert_eq!(base.stop, StopReason::Exit(0));
    assert_eq!(
        base.ledger
            .count(ExitKind::Hypercall(Hypercall::ConsoleWrite)),
        0
    );
    for (n, writes) in [(1usize, 1u64), (100, 1), (10, 3)] {
        let o = boot(ConsoleKind::Pv, &format!("print={n} writes={writes}"));
        assert_eq!(o.stop, StopReason::Exit(0));
        assert_eq!(o.console, vec![b'x'; n * writes as usize]);
        assert_eq!(
            extra(&o.ledger, &base.ledger),
            vec![(ExitKind::Hypercall(Hypercall::ConsoleWrite), writes)],
            "print={n} writes={writes}: one console_write hypercall per write"
        );
    }
}

#[test]
fn exit_code_fault_and_panic() {
    if !ready() {
        return;
    }
    assert_eq!(boot(ConsoleKind::Pv, "exit=9").stop, StopReason::Exit(9));
    let o = boot(ConsoleKind::Pv, "fault=pf");
    let StopReason::Fault(f) = &o.stop else {
        panic!("expected a fault, got {:?}", o.stop);
    };
    assert_eq!(f.vector, 14);
    assert_eq!(f.cr2, 0x10_0000_0000);
    let o = boot(ConsoleKind::Pv, "panic");
    assert!(
        matches!(&o.stop, StopReason::Fault(f) if f.is_panic() && f.message.contains("requested panic")),
        "{:?}",
        o.stop
    );
    let o = boot(ConsoleKind::Pv, "triple");
    assert!(
        matches!(o.stop, StopReason::Shutdown { .. }),
        "{:?}",
        o.stop
    );
}

#[test]
fn process_fault_ud_exits_125() {
    if !ready() {
        return;
    }
    let o = pvkit(&["run", "--console", "pv", "--", "fault=ud"]);
    assert_eq!(code(&o), 125, "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("guest fault: #UD invalid opcode (vector 6) at rip 0x"),
        "{err}"
    );
}

#[test]
fn process_spin_times_out_with_124() {
    if !ready() {
        return;
    }
    let o = pvkit(&["run", "--timeout", "2", "--", "spin"]);
    assert_eq!(code(&o), 124, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("watchdog"));
}

#[test]
fn process_example_os_exits_42() {
    if !ready() {
        return;
    }
    let path = guests::example_guest_path().expect("example guest path");
    let o = pvkit(&["run", path]);
    assert_eq!(code(&o), 42, "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from a custom OS over the pvkit PV console\n"
    );
}

#[test]
fn process_prints_each_cause_of_an_error_once() {
    // No KVM needed: the kernel file is read first.
    let o = pvkit(&["run", "/nonexistent/pvkit-kernel.elf"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: cannot run the guest: cannot read the guest kernel \
         /nonexistent/pvkit-kernel.elf: No such file or directory (os error 2)\n"
    );
}

/// Finds the ABI note's descriptor in an ELF image (name "pvkit\0\0\0", type 1).
fn note_desc_offset(elf: &[u8]) -> usize {
    let needle: Vec<u8> = [6u32, 8, 1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(*b"pvkit\0\0\0")
        .collect();
    elf.windows(needle.len())
        .position(|w| w == needle)
        .expect("the pvkit note in the guest kernel")
        + needle.len()
}

#[test]
fn process_refuses_a_kernel_for_another_abi() {
    if guests::builtin_kernel().is_none() {
        eprintln!(
            "note: skipping: no built-in guest ({})",
            guests::BUILD_STATUS
        );
        return;
    }
    // The built-in kernel restamped as ABI 1.0 (the old major) and as 3.0: refused.
    for major in [1u32, 3] {
        let mut elf = guests::builtin_kernel().unwrap_or_default().to_vec();
        let at = note_desc_offset(&elf);
        elf[at..at + 4].copy_from_slice(&major.to_le_bytes());
        let p = temp_file(&format!("kernel-abi{major}.elf"), &elf);
        let o = pvkit(&["run", p.to_str().unwrap()]);
        assert_eq!(code(&o), 1, "{o:?}");
        let want = format!("guest was built for pvkit ABI {major}.0, this VMM speaks 2.0");
        assert!(String::from_utf8_lossy(&o.stderr).contains(&want), "{o:?}");
    }

    let mut broken = guests::builtin_kernel().unwrap_or_default().to_vec();
    broken[18] = 0xb7; // e_machine = AArch64
    let p = temp_file("kernel-arm.elf", &broken);
    let o = pvkit(&["run", p.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("e_machine"),
        "{o:?}"
    );
}
