//! Diagnostics on real guests: fault reports that name the faulting function and the
//! stack, `--stats`' exit profile by guest code location, and `--trace`'s Chrome
//! trace-event JSON.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{code, pvkit, temp_file};
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::exit::record::RecordConfig;
use pvkit_vmm::vstate::vcpu::RegAccess;
use pvkit_vmm::{run, ConsoleKind, KernelSource, RunOutcome, VmConfig};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn triple_fault_names_the_function_and_the_registers() {
    if !common::builtin_ready() {
        return;
    }
    let o = pvkit(&["run", "--console", "pv", "--", "triple"]);
    assert_eq!(code(&o), 126, "{o:?}");
    let err = text(&o.stderr);
    // `triple_fault` loads an empty IDT and executes `ud2` (guest-kernel/src/interrupts.rs).
    assert!(
        err.contains(" in pvkit_guest_kernel::interrupts::triple_fault+0x"),
        "{err}"
    );
    // The kernel runs on its own stack symbol, not the boot contract's stack.
    assert!(
        err.contains("  rsp 0x") && err.contains("inside pvkit_guest_kernel::KERNEL_STACK"),
        "{err}"
    );
    assert!(err.contains(", cr3 0x9000"), "{err}");
    assert!(!err.contains("stack overflow"), "{err}");
}

#[test]
fn a_stack_overflow_is_named_with_the_overflowing_function() {
    if !common::builtin_ready() {
        return;
    }
    let path = pvkit_vmm::guests::example_guest_path().expect("example guest path");
    let o = pvkit(&["run", path, "--timeout", "60", "--", "overflow"]);
    assert_eq!(code(&o), 125, "{o:?}");
    let err = text(&o.stderr);
    assert!(err.contains(" in hello_os::recurse+0x"), "{err}");
    assert!(
        err.contains("guard page) of pvkit_guest::rt::stack::BOOT_STACK")
            && err.contains("likely stack overflow"),
        "{err}"
    );
    // The #PF on the guard page became the #DF: the vCPU's CR2 still holds its address.
    assert!(err.contains("the vCPU's cr2 is 0x"), "{err}");
}

fn uart_print(n: u32, access: RegAccess) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 32,
        cmdline: format!("print={n} exit=5"),
        console: Some(ConsoleKind::Uart),
        capture_console: true,
        timeout: Duration::from_secs(60),
        reg_access: Some(access),
        record: RecordConfig {
            rips: true,
            trace: false,
        },
        ..VmConfig::default()
    };
    run(&cfg).expect("run the guest kernel")
}

/// `print=300` over the UART: per byte one LSR poll (`in` from 0x3fd) and one THR write
/// (`out` to 0x3f8), each at one instruction, so those two addresses lead with exactly
/// 300 exits each, whatever the register access.
#[test]
fn exit_profile_finds_the_uart_loop_with_exact_counts() {
    if !common::builtin_ready() {
        return;
    }
    const N: u64 = 300;
    let mut tops = Vec::new();
    for access in [RegAccess::SyncRegs, RegAccess::Ioctl] {
        let o = uart_print(N as u32, access);
        assert_eq!(o.stop, pvkit_vmm::StopReason::Exit(5), "{access:?}");
        assert_eq!(o.console, vec![b'x'; N as usize], "{access:?}");
        let p = o.exit_profile.expect("a profile was asked for");
        assert_eq!(p.total(), o.ledger.total, "{access:?}");
        assert_eq!((p.overflow, p.unknown), (0, 0), "{access:?}");
        let top = p.top(3);
        assert_eq!(top[0].1, N, "{access:?}: {top:x?}");
        assert_eq!(top[1].1, N, "{access:?}: {top:x?}");
        assert!(top[2].1 < N, "{access:?}: {top:x?}");
        for (rip, _) in &top[..2] {
            let s = o.symbols.lookup(*rip).expect("the loop has a symbol");
            assert!(s.name.starts_with("pvkit_guest_kernel::"), "{}", s.name);
        }
        tops.push(top);
    }
    // The same guest code, the same addresses, with or without sync regs.
    assert_eq!(tops[0], tops[1]);

    // Through the command line: the report lists them, symbolized.
    let o = pvkit(&["run", "--console", "uart", "--stats", "--", "print=300"]);
    assert_eq!(code(&o), 0, "{o:?}");
    let err = text(&o.stderr);
    let section = err
        .split("top exit locations (guest rip):\n")
        .nth(1)
        .expect("the report has the section");
    let lines: Vec<&str> = section.lines().take(2).collect();
    for (line, (rip, _)) in lines.iter().zip(&tops[0]) {
        let want = format!("{N:>10}  {rip:#x} pvkit_guest_kernel::");
        assert!(line.starts_with(&format!("    {want}")), "{line}\n{err}");
    }
}

/// Parses the `exits by kind` section of a `--stats` report.
fn stats_by_kind(err: &str) -> (BTreeMap<String, u64>, u64) {
    let mut kinds = BTreeMap::new();
    let mut total = None;
    let mut in_kinds = false;
    for line in err.lines() {
        if line.trim() == "exits by kind:" {
            in_kinds = true;
            continue;
        }
        if let Some(t) = line.trim().strip_prefix("total exits:") {
            total = Some(t.trim().parse().expect("total"));
            in_kinds = false;
        }
        if in_kinds {
            let (n, kind) = line.trim().split_once("  ").expect("count  kind");
            if !kind.starts_with("notify ") {
                kinds.insert(kind.trim().to_owned(), n.parse().expect("count"));
            }
        }
    }
    (kinds, total.expect("total exits line"))
}

#[test]
fn trace_has_one_event_per_exit_with_matching_kinds() {
    if !common::builtin_ready() {
        return;
    }
    let path = temp_file("diag-trace.json", b"");
    let o = pvkit(&[
        "run",
        "--console",
        "uart",
        "--stats",
        "--trace",
        path.to_str().expect("utf-8 path"),
        "--",
        "print=40",
        "exit=3",
    ]);
    assert_eq!(code(&o), 3, "{o:?}");
    let (kinds, total) = stats_by_kind(&text(&o.stderr));
    assert_eq!(kinds.values().sum::<u64>(), total);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read the trace")).expect("JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents");
    assert_eq!(events.len() as u64, total);
    assert_eq!(json["otherData"]["dropped_events"], 0);
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_ts = 0;
    for e in events {
        *by_name
            .entry(e["name"].as_str().expect("name").to_owned())
            .or_default() += 1;
        assert_eq!(e["ph"], "i");
        assert_eq!(e["pid"], 1);
        assert_eq!(e["tid"], 0);
        let ts = e["ts"].as_u64().expect("ts");
        assert!(ts >= last_ts, "events in time order");
        last_ts = ts;
        let rip = e["args"]["rip"].as_str().expect("rip");
        assert!(rip.starts_with("0x"));
        assert!(
            e["args"]["sym"]
                .as_str()
                .expect("sym")
                .starts_with("pvkit_"),
            "{e}"
        );
        assert!(e["args"]["port"].as_str().is_some(), "{e}");
    }
    assert_eq!(by_name, kinds);
    // 40 bytes through THR, plus the UART set-up's writes to 0x3f8 (divisor latch).
    let thr = ExitKind::PortWrite(0x3f8).to_string();
    assert!(by_name[&thr] >= 40, "{by_name:?}");
    assert_eq!(by_name["hypercall exit"], 1);
}

#[test]
fn an_unwritable_trace_path_fails_before_the_guest_runs() {
    if !common::builtin_ready() {
        return;
    }
    let o = pvkit(&["run", "--trace", "/nonexistent/dir/t.json", "--", "exit=4"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        text(&o.stderr).contains("cannot create the trace file"),
        "{o:?}"
    );
    assert!(o.stdout.is_empty(), "{o:?}");
}
