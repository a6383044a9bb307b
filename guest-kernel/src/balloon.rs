//! `balloon=MIB [balloon_range=KIB] [balloon_bad]`: the memory balloon check.
//!
//! Takes `MIB` MiB of RAM above the heap (2 MiB aligned), writes one word in every 4 KiB
//! page (so the host backs it), gives it to the host with batched inflate calls
//! ([`pvkit_guest::balloon`], ranges of `KIB` KiB, default 2048: one call per 512 ranges),
//! reports what the host says is ballooned, deflates it the same way, then checks that
//! every page reads zero (first and last word) and that a pattern written to each page
//! reads back. Prints one line per step. Panics (reported to the host) on any failure.
//!
//! With `balloon_bad`, first sends a series of invalid calls (each one range, or two for
//! duplicates and overlaps) and prints each status: the host must refuse them all and
//! balloon nothing.

use crate::heap::MAX_HEAP;
use crate::statics::Exclusive;
use pvkit_abi::balloon::{BalloonRange, BALLOON_MAX_RANGES, BALLOON_PAGE_SIZE};
use pvkit_abi::boot::{BootInfo, IDENTITY_MAP_SIZE};
use pvkit_abi::cpuid::Features;
use pvkit_abi::Status;
use pvkit_guest::balloon::{ballooned_pages, Batch, Hypercalls, Op, Submit};

/// The `balloon=` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonArgs {
    /// MiB to balloon.
    pub mib: u64,
    /// Size of each range in KiB.
    pub range_kib: u64,
    /// Send the invalid calls first.
    pub bad: bool,
}

/// The batch array, one per call.
static RANGES: Exclusive<[BalloonRange; BALLOON_MAX_RANGES as usize]> =
    Exclusive::new([BalloonRange { gpa: 0, pages: 0 }; BALLOON_MAX_RANGES as usize]);

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

const PATTERN: u64 = 0x5eed_ba11_0000_0000;

/// The first 2 MiB boundary above the kernel image and the heap: RAM nothing else uses (the
/// balloon check and [`touch_then_stop_using`] use it).
pub fn free_region_start() -> u64 {
    let kernel_end = (&raw const __kernel_end) as u64;
    const TWO_MIB: u64 = 2 << 20;
    (kernel_end + MAX_HEAP).div_ceil(TWO_MIB) * TWO_MIB
}

/// A workload's memory use for `net=ring touch=MIB [give_back]` ([`crate::net::ring`]):
/// writes one word in every 4 KiB page of `mib` MiB of free RAM (so the host backs it),
/// then stops using it, as a program that frees its buffers; with `give_back` the freed
/// memory goes to the host through the balloon (inflate; the host discards the pages).
/// Panics when it does not fit in RAM, or when `give_back` has no balloon to use.
pub fn touch_then_stop_using(mib: u64, give_back: bool, boot: &BootInfo) {
    let start = free_region_start();
    let len = mib.saturating_mul(1 << 20);
    let top = boot.mem_size.min(IDENTITY_MAP_SIZE);
    if start.saturating_add(len) > top {
        panic!("touch={mib}: {start:#x} + {len:#x} is beyond RAM ({top:#x})");
    }
    if give_back && !Features::from_bits_truncate(boot.features).contains(Features::BALLOON) {
        panic!("give_back: the host offers no balloon (BALLOON)");
    }
    let pages = len / BALLOON_PAGE_SIZE;
    for i in 0..pages {
        let p = (start + i * BALLOON_PAGE_SIZE) as *mut u64;
        // SAFETY: `p` is inside RAM above the heap and the kernel, under the identity map;
        // nothing else uses this memory.
        unsafe { p.write_volatile(PATTERN | i) };
    }
    if !give_back {
        println!("mem: touched {mib} MiB and stopped using it ({pages} pages kept by the host)");
        return;
    }
    let mut b = Batch::new(Op::Inflate, RANGES.take(), Hypercalls);
    let r = b
        .push_region(start, len, 2048 << 10)
        .and_then(|()| b.flush());
    if let Err(s) = r {
        panic!("give_back: inflate failed: {s}");
    }
    println!(
        "mem: touched {mib} MiB and stopped using it; gave {} pages back in {} calls",
        b.pages, b.calls
    );
}

/// Runs the check.
pub fn run(a: BalloonArgs, boot: &BootInfo) {
    if !Features::from_bits_truncate(boot.features).contains(Features::BALLOON) {
        panic!("balloon: the host offers no balloon (BALLOON)");
    }
    let kernel_start = (&raw const __kernel_start) as u64;
    let start = free_region_start();
    let len = a.mib << 20;
    let top = boot.mem_size.min(IDENTITY_MAP_SIZE);
    if start + len > top {
        panic!(
            "balloon={}: {start:#x} + {len:#x} is beyond RAM ({top:#x})",
            a.mib
        );
    }
    if a.bad {
        bad_calls(boot, kernel_start, start);
    }
    let pages = len / BALLOON_PAGE_SIZE;
    let array = RANGES.take();
    // Touch every page so the host backs it.
    for i in 0..pages {
        let p = (start + i * BALLOON_PAGE_SIZE) as *mut u64;
        // SAFETY: `p` is inside RAM above the heap and the kernel, under the identity map;
        // nothing else uses this memory.
        unsafe { p.write_volatile(PATTERN | i) };
    }
    println!(
        "balloon: touched {} MiB at {start:#x} ({pages} pages)",
        a.mib
    );

    let range = a.range_kib << 10;
    let mut b = Batch::new(Op::Inflate, array, Hypercalls);
    let r = b.push_region(start, len, range).and_then(|()| b.flush());
    if let Err(s) = r {
        panic!("balloon: inflate failed: {s}");
    }
    let (inflated, inflate_calls) = (b.pages, b.calls);
    let host = ballooned_pages().unwrap_or_else(|s| panic!("balloon: info failed: {s}"));
    println!(
        "balloon: inflated {} pages in {} calls (ranges of {} KiB); host: {host} pages ballooned",
        inflated, inflate_calls, a.range_kib
    );
    assert_eq!((inflated, host), (pages, pages), "balloon: inflate count");

    let mut d = Batch::new(Op::Deflate, array, Hypercalls);
    let r = d.push_region(start, len, range).and_then(|()| d.flush());
    if let Err(s) = r {
        panic!("balloon: deflate failed: {s}");
    }
    let host = ballooned_pages().unwrap_or_else(|s| panic!("balloon: info failed: {s}"));
    println!(
        "balloon: deflated {} pages in {} calls; host: {host} pages ballooned",
        d.pages, d.calls
    );
    assert_eq!((d.pages, host), (pages, 0), "balloon: deflate count");

    let mut zero = 0u64;
    for i in 0..pages {
        let p = (start + i * BALLOON_PAGE_SIZE) as *mut u64;
        // SAFETY: as above; the page is the guest's again after the deflate. The last
        // word of the page is `p + 511`.
        unsafe {
            if p.read_volatile() == 0 && p.add(511).read_volatile() == 0 {
                zero += 1;
            }
            p.write_volatile(PATTERN | i);
            p.add(511).write_volatile(!(PATTERN | i));
        }
    }
    let mut good = 0u64;
    for i in 0..pages {
        let p = (start + i * BALLOON_PAGE_SIZE) as *const u64;
        // SAFETY: as above.
        let ok = unsafe {
            p.read_volatile() == PATTERN | i && p.add(511).read_volatile() == !(PATTERN | i)
        };
        good += u64::from(ok);
    }
    println!("balloon: after deflate {zero} of {pages} pages read zero; pattern read back on {good} of {pages}");
    assert_eq!((zero, good), (pages, pages), "balloon: pages after deflate");
}

/// One call of `ranges`, returning its status.
fn one(op: Op, ranges: &[BalloonRange]) -> Status {
    match Hypercalls.submit(op, ranges) {
        Ok(_) => Status::Ok,
        Err(s) => s,
    }
}

/// The invalid calls of `balloon_bad`; each must be refused and balloon nothing.
fn bad_calls(boot: &BootInfo, kernel_start: u64, free: u64) {
    let r = |gpa, pages| BalloonRange { gpa, pages };
    let cases: [(&str, Op, [BalloonRange; 2], usize); 7] = [
        (
            "outside-ram",
            Op::Inflate,
            [r(boot.mem_size, 1), r(0, 0)],
            1,
        ),
        (
            "kernel-image",
            Op::Inflate,
            [r(kernel_start, 1), r(0, 0)],
            1,
        ),
        ("boot-area", Op::Inflate, [r(0x1000, 1), r(0, 0)], 1),
        ("duplicate", Op::Inflate, [r(free, 1), r(free, 1)], 2),
        ("overlap", Op::Inflate, [r(free, 4), r(free + 0x3000, 4)], 2),
        ("unaligned", Op::Inflate, [r(free + 8, 1), r(0, 0)], 1),
        (
            "deflate-not-ballooned",
            Op::Deflate,
            [r(free, 1), r(0, 0)],
            1,
        ),
    ];
    for (name, op, ranges, n) in cases {
        let s = one(op, &ranges[..n]);
        let host = ballooned_pages().unwrap_or_else(|s| panic!("balloon: info failed: {s}"));
        println!("balloon: bad {name}: {s}, {host} pages ballooned");
    }
}
