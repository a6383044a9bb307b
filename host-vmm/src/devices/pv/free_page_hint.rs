//! Free-page hints for live migration (`FreePageHint`, Memory class 0x503, feature
//! [`Features::FREE_PAGE_HINT`]): the guest names page ranges it does not use, and a
//! migration in progress does not send them unless they are written after the hint.
//!
//! A hint is a promise about content, not a release: the pages stay mapped and the guest
//! may use them again at any time; the write makes them dirty, and reading the dirty log
//! drops the hint ([`FreePageHints::clear_dirtied`]), so they are sent after all. Hints
//! count only while a migration tracks dirty pages ([`PvFreePageHint::start_tracking`]):
//! before that no write could drop them, so the call returns 0 and records nothing.
//!
//! Validation is the balloon's range rules ([`pvkit_abi::balloon`]): at most
//! [`BALLOON_MAX_RANGES`] ranges, page aligned, not empty, inside RAM, not in the boot
//! area or the kernel image; the whole call is checked before anything is recorded.
//! Overlapping ranges and ballooned pages are allowed (a hint is idempotent).

use std::ops::Range;
use std::sync::Mutex;

use pvkit_abi::balloon::{BalloonRange, BALLOON_MAX_RANGES, BALLOON_PAGE_SIZE};
use pvkit_abi::boot::KERNEL_MIN_ADDR;
use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::Status;

use super::balloon::PvBalloon;
use super::{CallCtx, PvDevice};
use crate::hypercall::call_return;
use crate::runtime::sync::lock;
use crate::vstate::dirty::{FreePageHints, PageBitmap};
use crate::vstate::memory::{ram_size, GuestRam};

const CALLS: &[Hypercall] = &[Hypercall::FreePageHint];

/// What the hints did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintStats {
    /// Calls that recorded hints (a migration was tracking).
    pub recorded_calls: u64,
    /// Calls answered 0 because no migration was tracking.
    pub idle_calls: u64,
    /// Calls refused with a status.
    pub refused_calls: u64,
    /// Pages named in recorded calls.
    pub pages_hinted: u64,
}

struct State {
    tracking: bool,
    hinted: PageBitmap,
    stats: HintStats,
}

/// The free-page hint device.
pub struct PvFreePageHint {
    ram: u64,
    kernel: Range<u64>,
    state: Mutex<State>,
}

impl std::fmt::Debug for PvFreePageHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvFreePageHint")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Checks a call's ranges; the page ranges they cover.
fn validate(
    ranges: &[BalloonRange],
    ram: u64,
    kernel: &Range<u64>,
) -> Result<Vec<Range<u64>>, Status> {
    if ranges.len() as u64 > BALLOON_MAX_RANGES {
        return Err(Status::E2BIG);
    }
    let kernel_start = kernel.start & !(BALLOON_PAGE_SIZE - 1);
    let kernel_end = kernel
        .end
        .checked_add(BALLOON_PAGE_SIZE - 1)
        .map_or(u64::MAX, |e| e & !(BALLOON_PAGE_SIZE - 1));
    ranges
        .iter()
        .map(|r| {
            if !r.gpa.is_multiple_of(BALLOON_PAGE_SIZE) || r.pages == 0 {
                return Err(Status::EINVAL);
            }
            let end = r.end().ok_or(Status::EFAULT)?;
            if end > ram {
                return Err(Status::EFAULT);
            }
            if r.gpa < KERNEL_MIN_ADDR || (r.gpa < kernel_end && end > kernel_start) {
                return Err(Status::EPERM);
            }
            Ok(r.gpa / BALLOON_PAGE_SIZE..end / BALLOON_PAGE_SIZE)
        })
        .collect()
}

impl PvFreePageHint {
    /// Hints over `mem`, refusing the boot area and the kernel image `kernel`.
    pub fn new(mem: &GuestRam, kernel: Range<u64>) -> Self {
        let ram = ram_size(mem);
        Self {
            ram,
            kernel,
            state: Mutex::new(State {
                tracking: false,
                hinted: PageBitmap::new(ram / BALLOON_PAGE_SIZE),
                stats: HintStats::default(),
            }),
        }
    }

    /// What the hints did so far.
    pub fn stats(&self) -> HintStats {
        lock(&self.state).stats
    }

    /// A migration starts tracking dirty pages: hints count from now on (none from before).
    pub fn start_tracking(&self) {
        let mut s = lock(&self.state);
        s.tracking = true;
        s.hinted = PageBitmap::new(self.ram / BALLOON_PAGE_SIZE);
    }

    /// The migration ended: hints are dropped and no longer recorded.
    pub fn stop_tracking(&self) {
        let mut s = lock(&self.state);
        s.tracking = false;
        s.hinted = PageBitmap::new(self.ram / BALLOON_PAGE_SIZE);
    }

    /// Pages hinted now.
    pub fn hinted_pages(&self) -> u64 {
        lock(&self.state).hinted.count()
    }

    /// One call: the array at `addr` of `count` ranges. Pages recorded.
    pub fn hint(&self, mem: &GuestRam, addr: u64, count: u64) -> Result<u64, Status> {
        let r = self.hint_checked(mem, addr, count);
        let mut s = lock(&self.state);
        match r {
            Err(e) => {
                s.stats.refused_calls += 1;
                Err(e)
            }
            Ok(_) if !s.tracking => {
                s.stats.idle_calls += 1;
                Ok(0)
            }
            Ok(pages) => {
                let mut total = 0;
                for p in pages {
                    total += p.end - p.start;
                    s.hinted.set_range(p.start, p.end - p.start);
                }
                s.stats.recorded_calls += 1;
                s.stats.pages_hinted += total;
                Ok(total)
            }
        }
    }

    fn hint_checked(
        &self,
        mem: &GuestRam,
        addr: u64,
        count: u64,
    ) -> Result<Vec<Range<u64>>, Status> {
        if count > BALLOON_MAX_RANGES {
            return Err(Status::E2BIG);
        }
        let ranges = PvBalloon::read_ranges(mem, addr, count)?;
        validate(&ranges, self.ram, &self.kernel)
    }
}

impl FreePageHints for PvFreePageHint {
    fn is_hinted(&self, page: u64) -> bool {
        lock(&self.state).hinted.get(page)
    }

    fn clear_dirtied(&self, dirty: &PageBitmap) {
        lock(&self.state).hinted.subtract(dirty);
    }
}

impl PvDevice for PvFreePageHint {
    fn name(&self) -> &'static str {
        "free_page_hint"
    }

    fn features(&self) -> Features {
        Features::FREE_PAGE_HINT
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        CALLS
    }

    fn call(&self, ctx: &CallCtx<'_>, call: Hypercall, args: [u64; 4]) -> CallReturn {
        match call {
            Hypercall::FreePageHint => call_return(self.hint(ctx.mem, args[0], args[1])),
            _ => CallReturn::err(Status::EOPNOTSUPP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_ram;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;
    const ARRAY: u64 = 0x8_0000;

    fn call(h: &PvFreePageHint, mem: &GuestRam, ranges: &[(u64, u64)]) -> Result<u64, Status> {
        let bytes: Vec<u8> = ranges
            .iter()
            .flat_map(|&(g, p)| [g.to_le_bytes(), p.to_le_bytes()].concat())
            .collect();
        mem.write_slice(&bytes, GuestAddress(ARRAY)).unwrap();
        h.hint(mem, ARRAY, ranges.len() as u64)
    }

    #[test]
    fn hints_count_only_while_tracking_and_dirty_pages_lose_them() {
        let mem = create_ram(16).unwrap();
        let h = PvFreePageHint::new(&mem, 2 * MIB..3 * MIB);
        assert_eq!(call(&h, &mem, &[(8 * MIB, 16)]), Ok(0), "not tracking");
        assert_eq!(h.hinted_pages(), 0);
        h.start_tracking();
        assert_eq!(
            call(&h, &mem, &[(8 * MIB, 16), (8 * MIB + 8192, 4)]),
            Ok(20)
        );
        assert_eq!(h.hinted_pages(), 16, "overlap counted once in the bitmap");
        let first = 8 * MIB / 4096;
        assert!(h.is_hinted(first) && h.is_hinted(first + 15) && !h.is_hinted(first + 16));
        let mut dirty = PageBitmap::new(16 * MIB / 4096);
        dirty.set(first + 3);
        h.clear_dirtied(&dirty);
        assert!(!h.is_hinted(first + 3) && h.is_hinted(first + 4));
        h.stop_tracking();
        assert_eq!(h.hinted_pages(), 0);
        let s = h.stats();
        assert_eq!((s.idle_calls, s.recorded_calls, s.pages_hinted), (1, 1, 20));
    }

    #[test]
    fn bad_calls_are_refused_and_record_nothing() {
        let mem = create_ram(16).unwrap();
        let h = PvFreePageHint::new(&mem, 2 * MIB..3 * MIB);
        h.start_tracking();
        let good = (8 * MIB, 1);
        for (ranges, status) in [
            (vec![good, (8 * MIB + 1, 1)], Status::EINVAL),
            (vec![good, (9 * MIB, 0)], Status::EINVAL),
            (vec![good, (16 * MIB - 4096, 2)], Status::EFAULT),
            (vec![good, (!4095, 1)], Status::EFAULT),
            (vec![good, (0x1000, 1)], Status::EPERM),
            (vec![good, (2 * MIB + 4096, 1)], Status::EPERM),
        ] {
            assert_eq!(call(&h, &mem, &ranges), Err(status), "{ranges:?}");
        }
        assert_eq!(
            h.hint(&mem, ARRAY, BALLOON_MAX_RANGES + 1),
            Err(Status::E2BIG)
        );
        assert_eq!(h.hint(&mem, 16 * MIB - 8, 1), Err(Status::EFAULT));
        assert_eq!(h.hinted_pages(), 0);
        assert_eq!(h.stats().refused_calls, 8);
    }
}
