//! The memory balloon: the guest gives free RAM back to the host and takes it back later.
//!
//! [`crate::Hypercall::BalloonInflate`] and [`crate::Hypercall::BalloonDeflate`] carry the
//! guest-physical address and the count of an array of [`BalloonRange`]s (at most
//! [`BALLOON_MAX_RANGES`] per call). A range is any number of whole 4 KiB pages
//! ([`BALLOON_PAGE_SIZE`]), so one call releases from 4 KiB (one page) to any amount; with
//! fully fragmented memory (every range one page) one call still carries
//! `512 × 4 KiB = 2 MiB`: **a 1 GiB inflate costs at most 512 exits** (one per 2 MiB), and
//! exactly `⌈ranges / 512⌉`.
//!
//! The host validates every range of a call before it acts on any: a call with one bad
//! range is refused with a status and changes nothing. Rules, in the order they are
//! checked (the first failing rule gives the status):
//!
//! | rule                                                                  | status      |
//! |-----------------------------------------------------------------------|-------------|
//! | count ≤ [`BALLOON_MAX_RANGES`]                                        | `E2BIG`     |
//! | the array lies inside guest RAM                                       | `EFAULT`    |
//! | each range: `gpa` 4 KiB aligned, `pages` ≥ 1                          | `EINVAL`    |
//! | each range lies inside guest RAM (no overflow)                        | `EFAULT`    |
//! | no range touches the boot area (below `KERNEL_MIN_ADDR`) or the kernel image (its span as loaded, rounded out to pages) | `EPERM` |
//! | no two ranges of the call overlap (duplicates included)               | `EINVAL`    |
//! | inflate: no page is already ballooned                                 | `EBUSY`     |
//! | deflate: every page is ballooned                                      | `EINVAL`    |
//!
//! On success `RDX` ← the pages inflated (deflated) by the call. A count of 0 succeeds and
//! does nothing.
//!
//! After an inflate the host has released the pages' memory; the guest must not touch
//! them until it deflated them (a touch is not an error: the host backs the page again,
//! which costs host memory, and its content is unspecified). After a deflate the pages read
//! as zero until written (if the guest did not touch them while ballooned).
//!
//! # The host-set target
//!
//! With [`crate::cpuid::Features::BALLOON_TARGET`] the host also says how many pages it
//! would like ballooned, as Firecracker's balloon (`amount_mib`) and virtio-balloon's
//! `num_pages` do. [`crate::Hypercall::BalloonTarget`] returns it packed in `RDX`
//! ([`BalloonTarget::from_u64`]): the target in 4 KiB pages (bits 0–31) and a generation
//! (bits 32–63, wrapping) that the host increments each time a target is set, so a guest
//! that remembers the last generation it acted on knows whether a new request came. The
//! target starts at 0 (generation 0) and is at most the RAM outside the boot area and the
//! kernel image. The guest polls the call (one exit, no memory access; arg0 = flags, 0,
//! else `EINVAL`: reserved for binding a change interrupt later); there is no change
//! interrupt yet.
//!
//! The target is advice: the guest moves its balloon toward it with ordinary inflate and
//! deflate calls (in bounded batches, when it can spare the pages), and the host only
//! compares ("target" and "actual" in the control API's `stats`). A guest that ignores
//! the target keeps its memory.

use crate::assert_layout;

/// The balloon's page size: ranges are counted in 4 KiB pages.
pub const BALLOON_PAGE_SIZE: u64 = 4096;

/// Most ranges one inflate or deflate call carries (`E2BIG` beyond).
pub const BALLOON_MAX_RANGES: u64 = 512;

/// One range of guest-physical pages in an inflate or deflate call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonRange {
    /// Guest-physical address of the first page (4 KiB aligned).
    pub gpa: u64,
    /// Number of 4 KiB pages (at least 1).
    pub pages: u64,
}
assert_layout!(BalloonRange, size = 16, gpa @ 0, pages @ 8);

impl BalloonRange {
    /// The range's end address (exclusive), or `None` on overflow.
    pub const fn end(&self) -> Option<u64> {
        match self.pages.checked_mul(BALLOON_PAGE_SIZE) {
            Some(len) => self.gpa.checked_add(len),
            None => None,
        }
    }
}

/// The host's balloon target as [`crate::Hypercall::BalloonTarget`] returns it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonTarget {
    /// Pages the host would like ballooned.
    pub pages: u32,
    /// Incremented (wrapping) on every target the host sets.
    pub generation: u32,
}

impl BalloonTarget {
    /// The packed `RDX` value: `pages | generation << 32`.
    pub const fn to_u64(self) -> u64 {
        self.pages as u64 | (self.generation as u64) << 32
    }

    /// Unpacks an `RDX` value.
    pub const fn from_u64(v: u64) -> Self {
        Self {
            pages: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// The most calls an inflate (or deflate) of `ranges` ranges costs: `⌈ranges / 512⌉`.
pub const fn calls_for_ranges(ranges: u64) -> u64 {
    ranges.div_ceil(BALLOON_MAX_RANGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_checks_overflow() {
        let r = BalloonRange {
            gpa: 0x10_0000,
            pages: 2,
        };
        assert_eq!(r.end(), Some(0x10_2000));
        let r = BalloonRange {
            gpa: u64::MAX - 0xfff,
            pages: 1,
        };
        assert_eq!(r.end(), None);
        let r = BalloonRange {
            gpa: 0,
            pages: u64::MAX / 2,
        };
        assert_eq!(r.end(), None);
    }

    #[test]
    fn target_packs_pages_low_and_generation_high() {
        let t = BalloonTarget {
            pages: 16384,
            generation: 3,
        };
        assert_eq!(t.to_u64(), 16384 | 3 << 32);
        assert_eq!(BalloonTarget::from_u64(t.to_u64()), t);
        let max = BalloonTarget {
            pages: u32::MAX,
            generation: u32::MAX,
        };
        assert_eq!(max.to_u64(), u64::MAX);
        assert_eq!(BalloonTarget::from_u64(u64::MAX), max);
    }

    #[test]
    fn a_gib_of_single_pages_costs_one_call_per_2_mib() {
        let pages = (1u64 << 30) / BALLOON_PAGE_SIZE;
        assert_eq!(calls_for_ranges(pages), 512);
        assert_eq!(calls_for_ranges(1), 1);
        assert_eq!(calls_for_ranges(0), 0);
        assert_eq!(calls_for_ranges(513), 2);
    }
}
