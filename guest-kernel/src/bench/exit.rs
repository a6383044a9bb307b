//! `exit/port-out/roundtrip`: the bare cost of one exit to the VMM, a byte `out` to the
//! null port ([`pvkit_abi::ports::NULL`]), which the host counts and ignores.
//!
//! The timed loop reads the TSC only at its ends. The latency pass before it (at most
//! [`LATENCY_SAMPLES`] × [`BATCH`] `out`s) takes one sample per batch of [`BATCH`] `out`s,
//! already divided by the batch size, so the interpreted `rdtsc` is amortized.

use super::{begin, case, end, Outcome, Runner, Scratch, LATENCY_OPS};
use pvkit_abi::bench::{Device, Variant, Workload, SAMPLE_LATENCY_PASS};
use pvkit_abi::ports::NULL;
use pvkit_guest::tsc::rdtsc;

/// `out`s per sample.
const BATCH: u64 = 10;
/// Most samples of the latency pass.
const LATENCY_SAMPLES: u64 = LATENCY_OPS;

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
    let latency = ops.min(LATENCY_SAMPLES * BATCH);
    let mut done = 0;
    while done < latency {
        let n = BATCH.min(latency - done);
        let s = rdtsc();
        for _ in 0..n {
            null_out();
        }
        samples.push((rdtsc() - s) / n);
        done += n;
    }
    let t0 = begin(id);
    for _ in 0..ops {
        null_out();
    }
    let cycles_total = end(id, t0, ops);
    let outcome = Outcome {
        ops,
        cycles_total,
        flags: SAMPLE_LATENCY_PASS,
        samples: samples.len(),
        ..Outcome::default()
    };
    r.report(id, &outcome, scratch);
}
