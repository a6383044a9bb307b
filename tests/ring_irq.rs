//! PV block completions by interrupt on real KVM (`QueueInterrupt`, feature `RING_IRQ`):
//! the built-in guest's `blkirq=N` mode binds the block ring to an IOAPIC GSI, submits
//! batches of reads of a real disk file and halts until each batch's completion
//! interrupt. The event index makes that exactly one interrupt per batch, raised by the
//! host (irqfd writes) and handled by the guest.

mod common;

use std::time::Duration;

use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::{run, ConsoleKind, DiskConfig, KernelSource, RunOutcome, StopReason, VmConfig};

fn boot(cmdline: &str, irqchip: bool) -> RunOutcome {
    let disk = common::temp_file("ring-irq.img", &vec![0x5a; 1 << 20]);
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 32,
        cmdline: cmdline.into(),
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: Duration::from_secs(120),
        disk: Some(DiskConfig {
            path: disk,
            read_only: true,
            base: None,
        }),
        irqchip,
        ..VmConfig::default()
    };
    run(&cfg).expect("run the guest kernel with a disk")
}

fn done_value(out: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("blkirq: done "))
        .unwrap_or_else(|| panic!("no `blkirq: done` line in {out:?}"));
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn block_completions_by_interrupt_one_per_batch_raised_equal_handled() {
    if !common::builtin_ready() {
        return;
    }
    for (transport, token) in [("doorbell", ""), ("eventfd", " blkirq_transport=eventfd")] {
        let o = boot(&format!("blkirq=25{token}"), true);
        let out = String::from_utf8_lossy(&o.console).into_owned();
        assert_eq!(o.stop, StopReason::Exit(0), "{transport}: {out}");
        assert_eq!(done_value(&out, "requests"), 100, "{transport}");
        assert_eq!(done_value(&out, "errors"), 0, "{transport}");
        // One interrupt per batch of 4 reads, each raised once and handled once.
        assert_eq!(o.ring_irqs_raised, Some(25), "{transport}: {out}");
        assert_eq!(
            done_value(&out, "irqs"),
            25,
            "{transport}: raised == handled"
        );
        // Delivery and EOI are in-kernel: the guest halts without exiting.
        assert_eq!(o.ledger.count(ExitKind::Hlt), 0, "{transport}");
        let doorbells = o
            .ledger
            .count(ExitKind::PortWrite(pvkit_abi::ports::DOORBELL));
        match transport {
            // One doorbell per batch.
            "doorbell" => assert_eq!(doorbells, 25),
            // Absorbed in the kernel by the ioeventfd.
            _ => assert_eq!(doorbells, 0),
        }
    }
}

#[test]
fn without_an_irqchip_there_is_no_ring_interrupt() {
    if !common::builtin_ready() {
        return;
    }
    let o = boot("blkirq=1", false);
    assert_eq!(o.ring_irqs_raised, None);
    // The guest refuses (no RING_IRQ feature) and reports it.
    assert!(
        matches!(o.stop, StopReason::Fault(ref f) if f.message.contains("RING_IRQ")),
        "{:?}",
        o.stop
    );
}
