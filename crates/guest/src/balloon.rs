//! The memory balloon driver ([`pvkit_abi::balloon`]): gives ranges of free guest pages to
//! the host (inflate) and takes them back (deflate), batched: ranges are queued in a
//! caller-provided array of up to [`BALLOON_MAX_RANGES`] entries and sent with one
//! hypercall when the array is full or on [`Batch::flush`]. A range may be any number of
//! pages, so the cost is `⌈ranges / 512⌉` exits, at most one per 2 MiB when every range
//! is a single 4 KiB page.
//!
//! The batching is independent of how a call reaches the host ([`Submit`]): on x86_64
//! [`Hypercalls`] makes the real calls; tests substitute a recorder.
//!
//! [`BalloonDriver`] follows the host-set target (`BalloonTarget`, feature
//! `BALLOON_TARGET`): a step a kernel calls from its idle loop or a timer, which reads the
//! target (one exit) and inflates or deflates toward it by at most a bounded batch (one
//! more exit), over a region of RAM the kernel set aside for the balloon.

use core::ops::Range;

use pvkit_abi::balloon::{BalloonRange, BalloonTarget, BALLOON_MAX_RANGES, BALLOON_PAGE_SIZE};
use pvkit_abi::Status;

/// Inflate, deflate, or hint free pages (the same range arrays).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Give pages to the host.
    Inflate,
    /// Take ballooned pages back.
    Deflate,
    /// Tell the host the pages are free, so a live migration need not send them
    /// (`FreePageHint`, feature `FREE_PAGE_HINT`); the pages stay the guest's.
    Hint,
}

/// Sends one call's ranges to the host; returns the pages it took.
pub trait Submit {
    /// One inflate or deflate call carrying `ranges` (at most [`BALLOON_MAX_RANGES`]).
    fn submit(&mut self, op: Op, ranges: &[BalloonRange]) -> Result<u64, Status>;
}

/// The real hypercalls.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Hypercalls;

#[cfg(target_arch = "x86_64")]
impl Submit for Hypercalls {
    fn submit(&mut self, op: Op, ranges: &[BalloonRange]) -> Result<u64, Status> {
        let call = match op {
            Op::Inflate => pvkit_abi::Hypercall::BalloonInflate,
            Op::Deflate => pvkit_abi::Hypercall::BalloonDeflate,
            Op::Hint => pvkit_abi::Hypercall::FreePageHint,
        };
        let gpa = crate::addr::virt_to_phys(ranges.as_ptr());
        // SAFETY: the host reads the array (borrowed for the call, physically contiguous
        // as every buffer handed to the host, see `addr`) and writes no guest memory. The
        // pages named are the caller's to give (see `Batch::push`).
        unsafe { pvkit_abi::guest::call(call, [gpa, ranges.len() as u64, 0, 0]) }.into_result()
    }
}

/// Reads the host-set balloon target.
pub trait ReadTarget {
    /// One `BalloonTarget` call.
    fn read_target(&mut self) -> Result<BalloonTarget, Status>;
}

#[cfg(target_arch = "x86_64")]
impl ReadTarget for Hypercalls {
    fn read_target(&mut self) -> Result<BalloonTarget, Status> {
        // SAFETY: touches no guest memory.
        unsafe { pvkit_abi::guest::call(pvkit_abi::Hypercall::BalloonTarget, [0; 4]) }
            .into_result()
            .map(BalloonTarget::from_u64)
    }
}

/// What one [`BalloonDriver::follow`] step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowStep {
    /// The target as read.
    pub target: BalloonTarget,
    /// The target's generation differs from the previous step's (a new request).
    pub new_request: bool,
    /// Pages inflated by this step.
    pub inflated: u64,
    /// Pages deflated by this step.
    pub deflated: u64,
    /// Pages the driver holds ballooned after the step.
    pub ballooned: u64,
    /// The target is more than the region can give: the driver stops at the region's size.
    pub capped: bool,
    /// The range inflated or deflated by this step, if any (deflated pages read as zero
    /// until written).
    pub moved: Option<BalloonRange>,
}

impl FollowStep {
    /// The driver holds as many pages as it will for this target (nothing left to do).
    pub fn settled(&self) -> bool {
        self.inflated == 0 && self.deflated == 0
    }
}

/// Follows the host-set target over a region of guest RAM the kernel gives to the balloon.
///
/// The region `[start, start + len)` is the balloon's to take: the driver inflates from
/// its top down, so the kernel may use [`BalloonDriver::usable`] (the region's low part
/// that is not ballooned) and must not touch the rest. Each [`BalloonDriver::follow`]
/// reads the target and moves toward it by at most `batch` pages, as one range in one
/// inflate or deflate call: a step costs at most two exits and `batch` pages of host work,
/// whatever the target. A target above the region's size stops at the region's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonDriver {
    start: u64,
    pages: u64,
    batch: u64,
    ballooned: u64,
    generation: Option<u32>,
}

impl BalloonDriver {
    /// A driver over `[start, start + len)` (4 KiB aligned, `len` a whole number of pages)
    /// moving at most `batch` (≥ 1) pages a step. `EINVAL` otherwise.
    pub fn new(start: u64, len: u64, batch: u64) -> Result<Self, Status> {
        let aligned =
            start.is_multiple_of(BALLOON_PAGE_SIZE) && len.is_multiple_of(BALLOON_PAGE_SIZE);
        if !aligned || batch == 0 || start.checked_add(len).is_none() {
            return Err(Status::EINVAL);
        }
        Ok(Self {
            start,
            pages: len / BALLOON_PAGE_SIZE,
            batch,
            ballooned: 0,
            generation: None,
        })
    }

    /// Pages the driver holds ballooned.
    pub fn ballooned_pages(&self) -> u64 {
        self.ballooned
    }

    /// The region's pages.
    pub fn capacity_pages(&self) -> u64 {
        self.pages
    }

    /// The part of the region the kernel may use now (the ballooned top is the host's).
    pub fn usable(&self) -> Range<u64> {
        self.start..self.start + (self.pages - self.ballooned) * BALLOON_PAGE_SIZE
    }

    /// One step toward the host's target (see the type's doc). On an error the driver's
    /// count is unchanged (a refused call changes nothing on the host either).
    pub fn follow<H: ReadTarget + Submit>(&mut self, host: &mut H) -> Result<FollowStep, Status> {
        let target = host.read_target()?;
        let new_request = self.generation != Some(target.generation);
        self.generation = Some(target.generation);
        let want = u64::from(target.pages).min(self.pages);
        let mut step = FollowStep {
            target,
            new_request,
            capped: u64::from(target.pages) > self.pages,
            ..FollowStep::default()
        };
        if want > self.ballooned {
            let n = (want - self.ballooned).min(self.batch);
            // The next `n` pages below the ballooned top.
            let gpa = self.start + (self.pages - self.ballooned - n) * BALLOON_PAGE_SIZE;
            let got = host.submit(Op::Inflate, &[BalloonRange { gpa, pages: n }])?;
            self.ballooned += got.min(n);
            step.inflated = got.min(n);
            step.moved = Some(BalloonRange { gpa, pages: n });
        } else if want < self.ballooned {
            let n = (self.ballooned - want).min(self.batch);
            // The lowest `n` ballooned pages.
            let gpa = self.start + (self.pages - self.ballooned) * BALLOON_PAGE_SIZE;
            let got = host.submit(Op::Deflate, &[BalloonRange { gpa, pages: n }])?;
            self.ballooned -= got.min(n);
            step.deflated = got.min(n);
            step.moved = Some(BalloonRange { gpa, pages: n });
        }
        step.ballooned = self.ballooned;
        Ok(step)
    }
}

/// Pages currently ballooned, as the host counts them.
#[cfg(target_arch = "x86_64")]
pub fn ballooned_pages() -> Result<u64, Status> {
    // SAFETY: touches no guest memory.
    unsafe { pvkit_abi::guest::call(pvkit_abi::Hypercall::BalloonInfo, [0; 4]) }.into_result()
}

/// Ranges queued for one operation, sent in calls of up to `array.len()` (≤ 512) ranges.
pub struct Batch<'a, S: Submit> {
    op: Op,
    array: &'a mut [BalloonRange],
    queued: usize,
    submit: S,
    /// Calls made so far.
    pub calls: u64,
    /// Pages the host took so far.
    pub pages: u64,
}

impl<'a, S: Submit> Batch<'a, S> {
    /// A batch for `op` over `array` (its first 512 entries are used).
    pub fn new(op: Op, array: &'a mut [BalloonRange], submit: S) -> Self {
        let n = array.len().min(BALLOON_MAX_RANGES as usize);
        Self {
            op,
            array: &mut array[..n],
            queued: 0,
            submit,
            calls: 0,
            pages: 0,
        }
    }

    /// Queues `pages` pages at `gpa` (a call is made first if the array is full). For an
    /// inflate the caller gives up the pages: it must not touch them until it deflated
    /// them. Errors are the host's statuses of the call that failed (the ranges of a
    /// refused call are dropped; the host changed nothing for them).
    pub fn push(&mut self, gpa: u64, pages: u64) -> Result<(), Status> {
        if self.array.is_empty() {
            return Err(Status::EINVAL);
        }
        if self.queued == self.array.len() {
            self.flush()?;
        }
        self.array[self.queued] = BalloonRange { gpa, pages };
        self.queued += 1;
        Ok(())
    }

    /// Queues `[start, start + len)` as ranges of `range_bytes` (a multiple of 4 KiB; the
    /// last range may be shorter).
    pub fn push_region(&mut self, start: u64, len: u64, range_bytes: u64) -> Result<(), Status> {
        let step = range_bytes.max(BALLOON_PAGE_SIZE) / BALLOON_PAGE_SIZE * BALLOON_PAGE_SIZE;
        let mut at = start;
        let end = start.checked_add(len).ok_or(Status::EINVAL)?;
        while at < end {
            let n = step.min(end - at);
            self.push(at, n / BALLOON_PAGE_SIZE)?;
            at += n;
        }
        Ok(())
    }

    /// Sends the queued ranges (no call if none are queued).
    pub fn flush(&mut self) -> Result<(), Status> {
        if self.queued == 0 {
            return Ok(());
        }
        let n = self.queued;
        self.queued = 0;
        self.calls += 1;
        let got = self.submit.submit(self.op, &self.array[..n])?;
        self.pages += got;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    #[derive(Default)]
    struct Rec(Vec<(Op, Vec<BalloonRange>)>);

    impl Submit for &mut Rec {
        fn submit(&mut self, op: Op, ranges: &[BalloonRange]) -> Result<u64, Status> {
            self.0.push((op, ranges.to_vec()));
            Ok(ranges.iter().map(|r| r.pages).sum())
        }
    }

    #[test]
    fn a_gib_costs_one_call_of_2_mib_ranges_or_512_calls_of_pages() {
        let mut arr = [BalloonRange::default(); 512];
        let mut rec = Rec::default();
        let mut b = Batch::new(Op::Inflate, &mut arr, &mut rec);
        b.push_region(0x100_0000, 1 << 30, 2 << 20).unwrap();
        b.flush().unwrap();
        assert_eq!((b.calls, b.pages), (1, (1 << 30) / 4096));
        assert_eq!(rec.0.len(), 1);
        assert_eq!(rec.0[0].1.len(), 512);
        assert_eq!(
            rec.0[0].1[1],
            BalloonRange {
                gpa: 0x100_0000 + (2 << 20),
                pages: 512
            }
        );

        let mut rec = Rec::default();
        let mut b = Batch::new(Op::Deflate, &mut arr, &mut rec);
        b.push_region(0x100_0000, 1 << 30, 4096).unwrap();
        b.flush().unwrap();
        assert_eq!((b.calls, b.pages), (512, (1 << 30) / 4096));
        assert!(rec
            .0
            .iter()
            .all(|(op, r)| *op == Op::Deflate && r.len() == 512));
    }

    /// A host model: a target and the set of ballooned pages, checking each call as the
    /// real host does (inflate of a ballooned page or deflate of one that is not: refused).
    struct FakeHost {
        target: BalloonTarget,
        ballooned: std::collections::BTreeSet<u64>,
        calls: Vec<(Op, BalloonRange)>,
        reads: u64,
    }

    impl FakeHost {
        fn new() -> Self {
            Self {
                target: BalloonTarget::default(),
                ballooned: Default::default(),
                calls: Vec::new(),
                reads: 0,
            }
        }

        fn set(&mut self, pages: u32) {
            self.target = BalloonTarget {
                pages,
                generation: self.target.generation + 1,
            };
        }
    }

    impl ReadTarget for FakeHost {
        fn read_target(&mut self) -> Result<BalloonTarget, Status> {
            self.reads += 1;
            Ok(self.target)
        }
    }

    impl Submit for FakeHost {
        fn submit(&mut self, op: Op, ranges: &[BalloonRange]) -> Result<u64, Status> {
            assert_eq!(ranges.len(), 1, "one range per step");
            let r = ranges[0];
            self.calls.push((op, r));
            let pages = (0..r.pages).map(|i| r.gpa / 4096 + i);
            match op {
                Op::Inflate if pages.clone().any(|p| self.ballooned.contains(&p)) => {
                    Err(Status::EBUSY)
                }
                Op::Deflate if !pages.clone().all(|p| self.ballooned.contains(&p)) => {
                    Err(Status::EINVAL)
                }
                Op::Inflate => {
                    self.ballooned.extend(pages);
                    Ok(r.pages)
                }
                Op::Deflate => {
                    pages.for_each(|p| {
                        self.ballooned.remove(&p);
                    });
                    Ok(r.pages)
                }
                Op::Hint => Err(Status::EINVAL),
            }
        }
    }

    const START: u64 = 0x40_0000;

    #[test]
    fn the_driver_follows_the_target_in_bounded_steps() {
        // A 64 MiB region, 2048 pages (8 MiB) a step.
        let mut d = BalloonDriver::new(START, 64 << 20, 2048).unwrap();
        let mut host = FakeHost::new();
        // Target 0: one read, no call, settled.
        let s = d.follow(&mut host).unwrap();
        assert!(s.settled() && s.new_request && !s.capped);
        assert!(host.calls.is_empty());
        host.set(5000);
        let mut steps = 0;
        loop {
            let s = d.follow(&mut host).unwrap();
            assert!(s.inflated <= 2048 && s.deflated == 0);
            assert_eq!(s.new_request, steps == 0);
            if s.settled() {
                break;
            }
            steps += 1;
        }
        // ⌈5000 / 2048⌉ = 3 inflates; the host holds exactly the driver's pages, the top
        // of the region.
        assert_eq!(steps, 3);
        assert_eq!(host.calls.len(), 3);
        assert_eq!(d.ballooned_pages(), 5000);
        assert_eq!(host.ballooned.len(), 5000);
        let top = (START + (64 << 20)) / 4096;
        assert!(host.ballooned.iter().all(|&p| p >= top - 5000 && p < top));
        assert_eq!(d.usable(), START..(top - 5000) * 4096);
        // Down to 1000: deflates the lowest ballooned pages, 2048 then 1952.
        host.set(1000);
        let a = d.follow(&mut host).unwrap();
        let b = d.follow(&mut host).unwrap();
        assert_eq!((a.deflated, b.deflated), (2048, 1952));
        assert_eq!(
            a.moved,
            Some(BalloonRange {
                gpa: (top - 5000) * 4096,
                pages: 2048
            })
        );
        assert!(d.follow(&mut host).unwrap().settled());
        assert_eq!(host.ballooned.len(), 1000);
        assert!(host.ballooned.iter().all(|&p| p >= top - 1000));
        // 0: everything back.
        host.set(0);
        while !d.follow(&mut host).unwrap().settled() {}
        assert!(host.ballooned.is_empty());
        assert_eq!(d.ballooned_pages(), 0);
        assert_eq!(d.usable(), START..START + (64 << 20));
    }

    #[test]
    fn a_target_above_the_region_stops_at_the_region() {
        let mut d = BalloonDriver::new(START, 16 * 4096, 10).unwrap();
        let mut host = FakeHost::new();
        host.set(1 << 20);
        let mut n = 0;
        while !d.follow(&mut host).unwrap().settled() {
            n += 1;
        }
        assert_eq!(n, 2);
        let s = d.follow(&mut host).unwrap();
        assert!(s.capped && !s.new_request);
        assert_eq!((s.ballooned, host.ballooned.len()), (16, 16));
        assert!(d.usable().is_empty());
    }

    #[test]
    fn a_refused_call_changes_nothing_and_bad_regions_are_refused() {
        let mut d = BalloonDriver::new(START, 8 * 4096, 8).unwrap();
        let mut host = FakeHost::new();
        // The host already holds a page of the region (e.g. a stale balloon): EBUSY.
        host.ballooned.insert(START / 4096 + 7);
        host.set(4);
        assert_eq!(d.follow(&mut host), Err(Status::EBUSY));
        assert_eq!(d.ballooned_pages(), 0);
        assert_eq!(BalloonDriver::new(START + 1, 4096, 1), Err(Status::EINVAL));
        assert_eq!(BalloonDriver::new(START, 4095, 1), Err(Status::EINVAL));
        assert_eq!(BalloonDriver::new(START, 4096, 0), Err(Status::EINVAL));
        assert_eq!(BalloonDriver::new(!0xfff, 8192, 1), Err(Status::EINVAL));
    }

    #[test]
    fn partial_last_range_and_empty_flush() {
        let mut arr = [BalloonRange::default(); 4];
        let mut rec = Rec::default();
        let mut b = Batch::new(Op::Inflate, &mut arr, &mut rec);
        b.flush().unwrap();
        assert_eq!(b.calls, 0);
        b.push_region(0x10_0000, 5 * 4096, 2 * 4096).unwrap();
        b.flush().unwrap();
        assert_eq!(b.calls, 1);
        assert_eq!(
            rec.0[0].1.iter().map(|r| r.pages).collect::<Vec<_>>(),
            [2, 2, 1]
        );
    }
}
