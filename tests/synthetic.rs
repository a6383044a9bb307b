//! Boots hand-assembled ring-0 programs (no guest kernel needed) to check the VMM's own
//! paths: boot state, hypercall register access, UART, PV console, stops, the watchdog,
//! and the `pvkit` process interface.

mod common;

use std::time::Duration;

use common::{code, kvm_available, pvkit, temp_file};
use pvkit_abi::call::Hypercall;
use pvkit_abi::AbiVersion;
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::runtime::signals::DiskFlush;
use pvkit_vmm::testing::{programs, ElfBuilder};
use pvkit_vmm::vstate::vcpu::RegAccess;
use pvkit_vmm::{run, KernelSource, RunOutcome, StopReason, VmConfig};

const LOAD: u64 = 0x10_0000;

fn boot(code: &[u8], access: Option<RegAccess>, timeout: Duration) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Bytes(ElfBuilder::new(LOAD, code).build()),
        mem_mib: 16,
        capture_console: true,
        timeout,
        reg_access: access,
        ..VmConfig::default()
    };
    run(&cfg).expect("run")
}

#[test]
fn sync_regs_return_values_reach_the_guest() {
    if !kvm_available() {
        return;
    }
    let o = boot(programs::VERSION_CHECK, None, Duration::from_secs(20));
    assert_eq!(
        o.reg_access,
        RegAccess::SyncRegs,
        "sync regs expected on this host"
    );
    assert_eq!(o.stop, StopReason::Exit(7), "the guest did not see RAX/RDX");
    assert_eq!(
        o.ledger.count(ExitKind::Hypercall(Hypercall::AbiVersion)),
        1
    );
    assert_eq!(o.ledger.count(ExitKind::Hypercall(Hypercall::Exit)), 1);
    assert_eq!(o.ledger.total, 2);
}

#[test]
fn ioctl_register_access_works_too() {
    if !kvm_available() {
        return;
    }
    let o = boot(
        programs::VERSION_CHECK,
        Some(RegAccess::Ioctl),
        Duration::from_secs(20),
    );
    assert_eq!(o.stop, StopReason::Exit(7));
}

#[test]
fn pv_console_write() {
    if !kvm_available() {
        return;
    }
    let o = boot(programs::PV_HELLO, None, Duration::from_secs(20));
    assert_eq!(o.stop, StopReason::Exit(0));
    assert_eq!(o.console, b"hello, pvkit");
    assert_eq!(
        o.ledger.count(ExitKind::Hypercall(Hypercall::ConsoleWrite)),
        1
    );
    assert!(o.timings.to_first_hypercall.is_some());
}

#[test]
fn uart_output_and_exact_exits() {
    if !kvm_available() {
        return;
    }
    let o = boot(programs::UART_AB, None, Duration::from_secs(20));
    assert_eq!(o.stop, StopReason::Exit(0));
    assert_eq!(o.console, b"ab\n");
    assert_eq!(o.ledger.count(ExitKind::PortRead(0x3fd)), 3);
    assert_eq!(o.ledger.count(ExitKind::PortWrite(0x3f8)), 3);
    assert_eq!(o.ledger.total, 7);
}

#[test]
fn triple_fault_is_a_shutdown() {
    if !kvm_available() {
        return;
    }
    let o = boot(programs::TRIPLE_FAULT, None, Duration::from_secs(20));
    assert!(
        matches!(o.stop, StopReason::Shutdown { .. }),
        "{:?}",
        o.stop
    );
    assert_eq!(o.stop.exit_status(), 126);
}

#[test]
fn hlt_without_wakeup() {
    if !kvm_available() {
        return;
    }
    let o = boot(programs::HLT, None, Duration::from_secs(20));
    assert!(matches!(o.stop, StopReason::Halted { .. }), "{:?}", o.stop);
    assert_eq!(o.stop.exit_status(), 123);
}

#[test]
fn watchdog_stops_a_spinning_guest() {
    if !kvm_available() {
        return;
    }
    let o = boot(programs::SPIN, None, Duration::from_millis(700));
    assert_eq!(
        o.stop,
        StopReason::Timeout {
            rip: Some(LOAD),
            disk: DiskFlush::NoDisk
        }
    );
    assert!(o.timings.to_stop >= Duration::from_millis(700));
    // Expected just over the 0.7 s timeout; the bound (> 10×) only catches a lost kick.
    assert!(o.timings.to_stop < Duration::from_secs(15));
}

#[test]
fn process_exit_codes() {
    if !kvm_available() {
        return;
    }
    let good = temp_file(
        "version.elf",
        &ElfBuilder::new(LOAD, programs::VERSION_CHECK).build(),
    );
    let o = pvkit(&["run", good.to_str().unwrap()]);
    assert_eq!(code(&o), 7, "{o:?}");

    let spin = temp_file("spin.elf", &ElfBuilder::new(LOAD, programs::SPIN).build());
    let o = pvkit(&["run", spin.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(code(&o), 124, "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("watchdog") && err.contains("rip 0x100000"),
        "{err}"
    );

    let triple = temp_file(
        "triple.elf",
        &ElfBuilder::new(LOAD, programs::TRIPLE_FAULT).build(),
    );
    assert_eq!(code(&pvkit(&["run", triple.to_str().unwrap()])), 126);
}

#[test]
fn refused_images_exit_1_with_a_message() {
    // These fail before KVM is touched, so they run everywhere.
    let mut bad = ElfBuilder::new(LOAD, programs::SPIN).build();
    bad.truncate(70);
    let p = temp_file("truncated.elf", &bad);
    let o = pvkit(&["run", p.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // A guest of ABI 1.0 (before the 2.0 break) and one of a future major are refused.
    for (major, want) in [
        (1, "guest was built for pvkit ABI 1.0, this VMM speaks 2.0"),
        (3, "guest was built for pvkit ABI 3.0, this VMM speaks 2.0"),
    ] {
        let elf = ElfBuilder::new(LOAD, programs::SPIN)
            .note(Some(AbiVersion { major, minor: 0 }))
            .build();
        let p = temp_file(&format!("abi{major}.elf"), &elf);
        let o = pvkit(&["run", p.to_str().unwrap()]);
        assert_eq!(code(&o), 1);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{err}");
    }

    let o = pvkit(&["run", "/nonexistent/kernel.elf"]);
    assert_eq!(code(&o), 1);

    let o = pvkit(&["run", "--mem", "lots"]);
    assert_eq!(code(&o), 2, "usage error");
    let o = pvkit(&["run", "--help"]);
    assert_eq!(code(&o), 0);
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "--console",
        "--mem",
        "--timeout",
        "--stats",
        "124",
        "125",
        "126",
        "123",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
}

#[test]
fn stats_report() {
    if !kvm_available() {
        return;
    }
    let p = temp_file(
        "uart.elf",
        &ElfBuilder::new(LOAD, programs::UART_AB).build(),
    );
    let o = pvkit(&["run", p.to_str().unwrap(), "--stats"]);
    assert_eq!(code(&o), 0);
    assert_eq!(o.stdout, b"ab\n");
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "platform:",
        "port 0x03fd read",
        "total exits:       7",
        "peak rss:",
        "to first hypercall",
    ] {
        assert!(err.contains(needle), "stats lack {needle}: {err}");
    }
}

#[test]
fn calibration_loops_count_exactly() {
    if !kvm_available() {
        return;
    }
    let o = boot(programs::HYPERCALL_LOOP_2000, None, Duration::from_secs(30));
    assert_eq!(o.stop, StopReason::Exit(0));
    assert_eq!(
        o.ledger.count(ExitKind::Hypercall(Hypercall::AbiVersion)),
        2000
    );
    assert_eq!(o.ledger.total, 2001);
    let o = boot(programs::NULL_PORT_LOOP_2000, None, Duration::from_secs(30));
    assert_eq!(o.stop, StopReason::Exit(0));
    assert_eq!(
        o.ledger.count(ExitKind::PortWrite(pvkit_abi::ports::NULL)),
        2000
    );
    assert_eq!(o.ledger.total, 2001);
    // Keep the images for manual timing runs (`pvkit run <file> --stats`).
    temp_file(
        "hypercall-loop.elf",
        &ElfBuilder::new(LOAD, programs::HYPERCALL_LOOP_2000).build(),
    );
    temp_file(
        "null-loop.elf",
        &ElfBuilder::new(LOAD, programs::NULL_PORT_LOOP_2000).build(),
    );
}
