//! The memory balloon driver ([`pvkit_abi::balloon`]): gives ranges of free guest pages to
//! the host (inflate) and takes them back (deflate), batched: ranges are queued in a
//! caller-provided array of up to [`BALLOON_MAX_RANGES`] entries and sent with one
//! hypercall when the array is full or on [`Batch::flush`]. A range may be any number of
//! pages, so the cost is `⌈ranges / 512⌉` exits, at most one per 2 MiB when every range
//! is a single 4 KiB page.
//!
//! The batching is independent of how a call reaches the host ([`Submit`]): on x86_64
//! [`Hypercalls`] makes the real calls; tests substitute a recorder.

use pvkit_abi::balloon::{BalloonRange, BALLOON_MAX_RANGES, BALLOON_PAGE_SIZE};
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
