//! `balloon/none/release` against `balloon/pv-hypercall/release`: the guest touches `N` MiB
//! (one write per 4 KiB page, so the host backs them), then frees them. An op is one MiB.
//!
//! - `none`, the unmodified guest: freeing puts the pages on its own free list; the host
//!   is not told and keeps them. The phase is empty (0 exits, no time): its cost is the
//!   memory the host still holds.
//! - `pv-hypercall`: the balloon ([`pvkit_guest::balloon`]): `BalloonInflate` with 2 MiB
//!   ranges, 512 per call, so `⌈N / 1024⌉` exits; the host `madvise`s them away.
//!
//! `pvkit bench` boots once per variant (the host RSS it reads at the end of the phase is
//! the boot's) and notes the RSS of each. Verified (`SAMPLE_VERIFIED`): `none` always (there
//! is nothing to check), PV when the host inflated every page and says so (`BalloonInfo`,
//! after the phase). One variant per boot: the first selected; any other is skipped.

use super::{begin, case, end, Outcome, Runner, Scratch};
use crate::statics::Exclusive;
use pvkit_abi::balloon::{BalloonRange, BALLOON_MAX_RANGES, BALLOON_PAGE_SIZE};
use pvkit_abi::bench::{Device, Variant, Workload};
use pvkit_abi::boot::{BootInfo, IDENTITY_MAP_SIZE};
use pvkit_abi::cpuid::Features;
use pvkit_guest::balloon::{ballooned_pages, Batch, Hypercalls, Op};

/// Bytes per range of an inflate call.
const RANGE_BYTES: u64 = 2 << 20;

/// The batch array of the inflate calls.
static RANGES: Exclusive<[BalloonRange; BALLOON_MAX_RANGES as usize]> =
    Exclusive::new([BalloonRange { gpa: 0, pages: 0 }; BALLOON_MAX_RANGES as usize]);

/// Runs the first selected variant.
pub fn run(r: &mut Runner, scratch: &mut Scratch, boot: &BootInfo) {
    let mut done = false;
    for variant in [Variant::NoBalloon, Variant::PvHypercall] {
        if !r.wants(Device::Balloon, variant) {
            continue;
        }
        let id = case(Device::Balloon, variant, Workload::Release);
        if done {
            r.skip(
                id,
                format_args!("one variant per boot (the boot's RSS is the result)"),
            );
            continue;
        }
        if variant == Variant::PvHypercall && !r.has(Features::BALLOON) {
            r.skip(id, format_args!("no BALLOON feature"));
            continue;
        }
        done = true;
        let mib = r.count(256, 64);
        let start = crate::balloon::free_region_start();
        let len = mib << 20;
        let top = boot.mem_size.min(IDENTITY_MAP_SIZE);
        if start.checked_add(len).is_none_or(|end| end > top) {
            r.fail_setup(
                id,
                format_args!("{mib} MiB from {start:#x} is beyond RAM ({top:#x})"),
                scratch,
            );
            continue;
        }
        let pages = len / BALLOON_PAGE_SIZE;
        for i in 0..pages {
            let p = (start + i * BALLOON_PAGE_SIZE) as *mut u64;
            // SAFETY: `p` is inside RAM above the heap and the kernel, under the identity
            // map; nothing else uses this memory.
            unsafe { p.write_volatile(i | 1) };
        }
        let t0 = begin(id);
        let inflated = match variant {
            Variant::PvHypercall => {
                let mut b = Batch::new(Op::Inflate, RANGES.take(), Hypercalls);
                match b
                    .push_region(start, len, RANGE_BYTES)
                    .and_then(|()| b.flush())
                {
                    Ok(()) => b.pages,
                    Err(_) => 0,
                }
            }
            _ => 0,
        };
        let cycles_total = end(id, t0, mib);
        let ok = match variant {
            Variant::PvHypercall => inflated == pages && ballooned_pages() == Ok(pages),
            _ => true,
        };
        let outcome = Outcome {
            ops: mib,
            bytes: len,
            cycles_total,
            flags: Outcome::checked(!ok),
            extra: inflated,
            ..Outcome::default()
        };
        r.report(id, &outcome, scratch);
    }
}
