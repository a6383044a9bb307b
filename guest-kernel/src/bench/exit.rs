//! `exit/port-out/roundtrip`: the bare cost of one exit to the VMM, a byte `out` to the
//! null port ([`pvkit_abi::ports::NULL`]), which the host counts and ignores.
//!
//! Timed per batch of [`BATCH`] `out`s (one sample per batch, already divided by the batch
//! size), so the interpreted `rdtsc` is amortized.

use super::{begin, case, end, Outcome, Runner, Scratch};
use pvkit_abi::bench::{Device, Variant, Workload};
use pvkit_abi::ports::NULL;
use pvkit_guest::tsc::rdtsc;

/// `out`s per sample.
const BATCH: u64 = 10;

/// One `out` to the null port: one exit.
#[inline(always)]
fn null_out() {
    // SAFETY: a port write to the pvkit null port, which has no effect but the exit; it
    // touches no memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") NULL, in("al") 0u8,
            options(nomem, nostack, preserves_flags));
    }
}

/// Runs the case.
pub fn run(r: &mut Runner, scratch: &mut Scratch) {
    let id = case(Device::Exit, Variant::PortOut, Workload::RoundTrip);
    let ops = r.count(1000, 100);
    let mut samples = scratch.samples();
    let t0 = begin(id);
    let mut done = 0;
    while done < ops {
        let n = BATCH.min(ops - done);
        let s = rdtsc();
        for _ in 0..n {
            null_out();
        }
        samples.push((rdtsc() - s) / n);
        done += n;
    }
    let cycles_total = end(id, t0, ops);
    let outcome = Outcome {
        ops,
        cycles_total,
        samples: samples.len(),
        ..Outcome::default()
    };
    r.report(id, &outcome, scratch);
}
