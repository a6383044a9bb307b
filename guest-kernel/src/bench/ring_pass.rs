//! What the console and block ring cases share: per-batch latency samples
//! ([`BatchSamples`]) and running a ring pass to its end, in ring 0 or ring 3, with the
//! doorbell rung from ring 0 ([`drive`]).

use super::Samples;
use crate::user;
use pvkit_abi::ring::QueueId;
use pvkit_guest::ring::kick;
use pvkit_guest::tsc::rdtsc;

/// Where a ring pass records cycles per request, one entry per batch. Inactive (null, no
/// room) in the timed loop, where no time is read per batch. `Copy`, so a loop keeps it in
/// registers (every load and store costs where ring 0 is interpreted) and writes it back on
/// return. Usable from ring 3: a raw pointer into the user-accessible identity map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BatchSamples {
    samples: *mut u64,
    max: usize,
    /// Samples recorded.
    pub n: usize,
    /// The TSC when the batch in flight started.
    batch_start: u64,
}

impl BatchSamples {
    /// Records nothing (the timed loop).
    pub const NONE: Self = Self {
        samples: core::ptr::null_mut(),
        max: 0,
        n: 0,
        batch_start: 0,
    };

    /// Records into the spare capacity of `samples` (the latency pass); afterwards
    /// `samples.set_len(self.n)`.
    pub fn into(samples: &mut Samples<'_>) -> Self {
        Self {
            samples: samples.as_mut_ptr(),
            max: samples.capacity(),
            ..Self::NONE
        }
    }

    /// At the start of a call of the loop at TSC `start`: unless a batch is in flight (the
    /// loop returned for a doorbell), the next batch's sample starts now.
    #[inline(always)]
    pub fn resume(&mut self, in_flight: u64, start: u64) {
        if in_flight == 0 {
            self.batch_start = start;
        }
    }

    /// After a batch of `in_flight` (≥ 1) requests was answered: in the latency pass, one
    /// `rdtsc`, and the batch's cycles per request (from the end of the batch before, or
    /// the start of the call) recorded while there is room.
    #[inline(always)]
    pub fn batch_done(&mut self, in_flight: u64) {
        if self.max == 0 {
            return;
        }
        let now = rdtsc();
        if self.n < self.max {
            // SAFETY: `n < max`: inside the spare capacity `into` took, which nothing else
            // uses during the pass.
            unsafe {
                self.samples
                    .add(self.n)
                    .write((now - self.batch_start) / in_flight)
            };
            self.n += 1;
        }
        self.batch_start = now;
    }
}

/// One pass of a ring case, run by [`drive`].
pub trait RingPass {
    /// The loop over the pass's batches, called with the pass's address; returns with
    /// [`RingPass::wants_kick`] set when the host wants a doorbell that ring 3 cannot ring.
    const BODY: extern "C" fn(u64) -> u64;
    /// The queue whose doorbell the pass rings.
    const QUEUE: QueueId;
    /// Whether the loop runs in ring 3.
    fn user(&self) -> bool;
    /// Whether the loop returned for a doorbell.
    fn wants_kick(&self) -> bool;
}

/// Runs the pass to its end, in ring 3 if it says so, ringing the doorbell from ring 0
/// whenever the loop asks for it.
pub fn drive<P: RingPass>(pass: &mut P) {
    loop {
        let arg = &raw mut *pass as u64;
        if pass.user() {
            user::call(P::BODY, arg);
        } else {
            (P::BODY)(arg);
        }
        if !pass.wants_kick() {
            break;
        }
        kick(P::QUEUE);
    }
}
