//! The memory balloon under real KVM with the built-in guest (`balloon=MIB`, see
//! guest-kernel/src/balloon.rs): the VMM's RSS drops by the ballooned amount, deflated
//! pages come back zero-filled and usable, exact inflate/deflate exits for the batching
//! (`⌈ranges / 512⌉` calls), and invalid ranges refused through a real guest.
//!
//! The tests run one at a time: the RSS the balloon reports is this process's.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pvkit_abi::call::Hypercall;
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::{run, ConsoleKind, KernelSource, RunOutcome, StopReason, VmConfig};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn boot(mem_mib: u64, cmdline: &str) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib,
        cmdline: cmdline.into(),
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: Duration::from_secs(300),
        ..VmConfig::default()
    };
    let o = run(&cfg).expect("run the guest kernel");
    assert_eq!(
        o.stop,
        StopReason::Exit(0),
        "{}",
        String::from_utf8_lossy(&o.console)
    );
    o
}

fn calls(o: &RunOutcome, h: Hypercall) -> u64 {
    o.ledger.count(ExitKind::Hypercall(h))
}

fn console(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.console).into_owned()
}

#[test]
fn inflate_256_mib_releases_the_rss_and_deflated_pages_work() {
    if !common::builtin_ready() {
        return;
    }
    let _s = serial();
    let o = boot(512, "balloon=256");
    let text = console(&o);
    let pages = 256 * 256;
    assert!(
        text.contains(&format!(
            "balloon: inflated {pages} pages in 1 calls (ranges of 2048 KiB); host: {pages} pages ballooned\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "balloon: deflated {pages} pages in 1 calls; host: 0 pages ballooned\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "balloon: after deflate {pages} of {pages} pages read zero; pattern read back on {pages} of {pages}\n"
        )),
        "{text}"
    );
    // 128 ranges of 2 MiB: one call each way; two BalloonInfo calls.
    assert_eq!(calls(&o, Hypercall::BalloonInflate), 1);
    assert_eq!(calls(&o, Hypercall::BalloonDeflate), 1);
    assert_eq!(calls(&o, Hypercall::BalloonInfo), 2);
    let b = o.balloon.expect("the VM has a balloon");
    assert_eq!((b.pages_inflated, b.pages_deflated), (pages, pages));
    assert_eq!((b.ballooned_pages, b.peak_ballooned_pages), (0, pages));
    assert_eq!(b.refused_calls, 0);
    // The kernel's count of this process's resident set, before and after the inflate.
    assert!(
        b.rss_released_kib >= 230 * 1024,
        "only {} KiB of RSS released: {b:?}",
        b.rss_released_kib
    );
    let (before, after) = (
        b.rss_before_first_inflate_kib.unwrap(),
        b.rss_after_last_inflate_kib.unwrap(),
    );
    assert!(before >= after + 230 * 1024, "{b:?}");
}

#[test]
fn a_gib_in_single_pages_costs_512_calls_and_in_2_mib_ranges_one() {
    if !common::builtin_ready() {
        return;
    }
    let _s = serial();
    let pages = 1024 * 256;
    for (range_kib, expected) in [(4u64, 512u64), (2048, 1)] {
        let o = boot(1100, &format!("balloon=1024 balloon_range={range_kib}"));
        assert_eq!(
            calls(&o, Hypercall::BalloonInflate),
            expected,
            "{range_kib} KiB ranges"
        );
        assert_eq!(
            calls(&o, Hypercall::BalloonDeflate),
            expected,
            "{range_kib} KiB ranges"
        );
        let b = o.balloon.unwrap();
        assert_eq!((b.inflate_calls, b.pages_inflated), (expected, pages));
        assert_eq!((b.deflate_calls, b.pages_deflated), (expected, pages));
        // ≤ 1 exit per 2 MiB.
        assert!(expected <= 1024 / 2);
        let text = console(&o);
        assert!(
            text.contains(&format!("pattern read back on {pages} of {pages}")),
            "{text}"
        );
    }
}

#[test]
fn bad_ranges_through_a_guest_are_refused_and_change_nothing() {
    if !common::builtin_ready() {
        return;
    }
    let _s = serial();
    let o = boot(64, "balloon=4 balloon_bad");
    let text = console(&o);
    for (name, status) in [
        ("outside-ram", "EFAULT"),
        ("kernel-image", "EPERM"),
        ("boot-area", "EPERM"),
        ("duplicate", "EINVAL"),
        ("overlap", "EINVAL"),
        ("unaligned", "EINVAL"),
        ("deflate-not-ballooned", "EINVAL"),
    ] {
        let line = format!("balloon: bad {name}: {status}, 0 pages ballooned\n");
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    let b = o.balloon.unwrap();
    assert_eq!(b.refused_calls, 7);
    // The good check after them still works.
    assert_eq!((b.inflate_calls, b.pages_inflated), (1, 1024));
    assert_eq!(calls(&o, Hypercall::BalloonInflate), 6 + 1);
    assert_eq!(calls(&o, Hypercall::BalloonDeflate), 1 + 1);
    assert_eq!(calls(&o, Hypercall::BalloonInfo), 7 + 2);
}
