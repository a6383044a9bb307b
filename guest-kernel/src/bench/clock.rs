//! Clock cases: time reads from the emulated 8254 PIT (ring 0, three exits per read) and
//! from the PV clock page and kvmclock (ring 3, vDSO-style, no exit).
//!
//! | variant | per read | timed loop | latency pass (before the phase) |
//! |---|---|---|---|
//! | `pit` | latch + LSB + MSB of counter 0: 3 exits, in ring 0 | `rdtsc` at its ends only | ≤ [`super::LATENCY_OPS`] reads, each timed |
//! | `pv-clock` | version / record / `lfence; rdtsc` / version, in ring 3 ([`crate::user`]) | `rdtsc` at its ends only, in ring 3: `cycles_total` is measured around all the reads, without the one-time switch into and out of ring 3 | as many reads, in ring 3, one sample per batch of 1000 reads (more when `ops` exceeds 1000 × `MAX_SAMPLES`) |
//! | `kvmclock` | the same on KVM's page (`MSR_KVM_SYSTEM_TIME_NEW`), if offered | same | same |
//!
//! Checks of `pv-clock` and `kvmclock` (their flags: `SAMPLE_VERIFIED` if both pass,
//! `SAMPLE_FAILED` otherwise):
//! - **monotonic**: no read returns less than the read before it (all reads of both
//!   passes, and the two reads of the agreement check);
//! - **agreement with the PIT**, after the phase (unbilled): one interval of
//!   [`INTERVAL_NS`] (20 ms) is measured with the clock (read in ring 3) and with the
//!   PIT-extended counter (polled in ring 0); they must differ by at most **2 % of the
//!   interval + 1 ms** ([`tolerance_ns`]: the clocks come from different host sources and
//!   each read of either side takes tens of µs here). Up to 3 intervals are measured and the
//!   best one counts (a preempted vCPU skews one interval; a wrong clock skews all of them).
//!   `extra` = the smallest difference in ns.
//!   Without a PIT only monotonicity is checked.
//!
//! The `pit` case has nothing to check (flags 0).

use super::{begin, case, end, latency_ops, Outcome, Runner, Scratch};
use crate::user;
use pvkit_abi::bench::{CaseId, Device, Variant, Workload, SAMPLE_LATENCY_PASS, SAMPLE_RING3};
use pvkit_abi::cpuid::Features;
use pvkit_guest::clock::{self, kvm, ClockPage, ClockReader};
use pvkit_guest::pit::{ticks_to_ns, PitClock};
use pvkit_guest::port::Pio;
use pvkit_guest::tsc::rdtsc;

/// The interval of the agreement check.
pub const INTERVAL_NS: u64 = 20_000_000;

/// The largest disagreement accepted over an interval of `interval_ns`: 2 % + 1 ms.
pub const fn tolerance_ns(interval_ns: u64) -> u64 {
    interval_ns / 50 + 1_000_000
}

/// Intervals the agreement check may take before it fails (the best one counts).
const AGREEMENT_ATTEMPTS: u32 = 3;

/// Reads per sample in ring 3.
const READS_PER_BATCH: u64 = 1000;

static PV_PAGE: ClockPage = ClockPage::new();
static KVM_PAGE: ClockPage = ClockPage::new();

/// Runs every clock case.
pub fn run(r: &mut Runner, scratch: &mut Scratch) {
    let mut pit = crate::pit::probe();
    pit_case(r, scratch, pit.as_mut());
    pv_case(r, scratch, pit.as_mut());
    kvm_case(r, scratch, pit.as_mut());
}

/// `clock/pit/read`.
fn pit_case(r: &mut Runner, scratch: &mut Scratch, pit: Option<&mut PitClock<Pio>>) {
    let id = case(Device::Clock, Variant::Pit, Workload::ClockRead);
    if !r.wants(id.device, id.variant) {
        return;
    }
    let Some(pit) = pit else {
        r.skip(id, format_args!("no PIT answers at 0x40-0x43"));
        return;
    };
    let ops = r.count(500, 50);
    let mut samples = scratch.samples();
    for _ in 0..latency_ops(ops) {
        let s = rdtsc();
        pit.ticks();
        samples.push(rdtsc() - s);
    }
    let t0 = begin(id);
    for _ in 0..ops {
        pit.ticks();
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

/// `clock/pv-clock/read`.
fn pv_case(r: &mut Runner, scratch: &mut Scratch, pit: Option<&mut PitClock<Pio>>) {
    let id = case(Device::Clock, Variant::PvClock, Workload::ClockRead);
    if !r.wants(id.device, id.variant) {
        return;
    }
    if !r.has(Features::CLOCK) {
        r.skip(id, format_args!("host lacks CLOCK"));
        return;
    }
    match clock::register(&PV_PAGE) {
        Ok(reader) if reader.version() != 0 => read_case(r, scratch, id, reader, pit),
        Ok(_) => r.fail_setup(
            id,
            format_args!("the host registered the clock page but never wrote it"),
            scratch,
        ),
        Err(s) => r.fail_setup(id, format_args!("RegisterRegion(Clock): {s}"), scratch),
    }
}

/// `clock/kvmclock/read`.
fn kvm_case(r: &mut Runner, scratch: &mut Scratch, pit: Option<&mut PitClock<Pio>>) {
    let id = case(Device::Clock, Variant::KvmClock, Workload::ClockRead);
    if !r.wants(id.device, id.variant) {
        return;
    }
    if !r.has(Features::KVMCLOCK) {
        r.skip(id, format_args!("host lacks KVMCLOCK"));
        return;
    }
    // SAFETY: ring 0; the page is a 'static page used for nothing else, and kvmclock is
    // disabled again below before anything could reuse it.
    let wrmsr = |msr, value| unsafe { crate::msr::wrmsr_safe(msr, value) };
    // SAFETY: as above.
    match unsafe { kvm::enable(&KVM_PAGE, wrmsr) } {
        Ok(reader) => {
            read_case(r, scratch, id, reader, pit);
            // SAFETY: as above.
            unsafe { kvm::disable(wrmsr) };
        }
        Err(why) => r.skip(id, format_args!("{}", why.reason())),
    }
}

/// What the ring-3 read loop needs and reports.
#[repr(C)]
struct ReadLoop {
    reader: ClockReader,
    ops: u64,
    per_batch: u64,
    samples: *mut u64,
    max_samples: u64,
    // Results.
    cycles: u64,
    n_samples: u64,
    backwards: u64,
    last: u64,
}

/// Ring 3: `ops` clock reads, counting reads that went backwards. With `max_samples` 0 (the
/// timed loop) the TSC is read only before and after all of them; otherwise (the latency
/// pass) the reads go in batches of `per_batch`, one cycle sample per batch. `arg` is the
/// address of a [`ReadLoop`].
extern "C" fn read_loop(arg: u64) -> u64 {
    // SAFETY: `arg` is the address of a `ReadLoop` the caller owns for the duration of the
    // ring-3 call and does not touch meanwhile; its `samples` has `max_samples` entries.
    let l = unsafe { &mut *(arg as *mut ReadLoop) };
    let reader = l.reader;
    let mut prev = reader.nanoseconds();
    // `last` on entry: the last read of an earlier pass (0: none).
    let mut backwards = u64::from(prev < l.last);
    let mut done = 0;
    let mut n = 0;
    let start = rdtsc();
    if l.max_samples == 0 {
        for _ in 0..l.ops {
            let now = reader.nanoseconds();
            backwards += u64::from(now < prev);
            prev = now;
        }
        done = l.ops;
    }
    while done < l.ops {
        let batch = l.per_batch.min(l.ops - done);
        let s = rdtsc();
        for _ in 0..batch {
            let now = reader.nanoseconds();
            backwards += u64::from(now < prev);
            prev = now;
        }
        let cycles = (rdtsc() - s) / batch;
        if n < l.max_samples {
            // SAFETY: `n < max_samples`, inside the caller's samples array.
            unsafe { l.samples.add(n as usize).write(cycles) };
            n += 1;
        }
        done += batch;
    }
    l.cycles = rdtsc() - start;
    l.n_samples = n;
    l.backwards = backwards;
    l.last = prev;
    backwards
}

/// The read case of a vDSO-style clock, then its checks.
fn read_case(
    r: &mut Runner,
    scratch: &mut Scratch,
    id: CaseId,
    reader: ClockReader,
    pit: Option<&mut PitClock<Pio>>,
) {
    let ops = r.count(100_000, 10_000);
    let mut samples = scratch.samples();
    let pass = |max_samples: usize, samples: *mut u64| ReadLoop {
        reader,
        ops,
        per_batch: READS_PER_BATCH.max(ops.div_ceil(max_samples.max(1) as u64)),
        samples,
        max_samples: max_samples as u64,
        cycles: 0,
        n_samples: 0,
        backwards: 0,
        last: 0,
    };
    // The latency pass, then the timed loop.
    let mut lat = pass(samples.capacity(), samples.as_mut_ptr());
    user::call(read_loop, &raw mut lat as u64);
    samples.set_len(lat.n_samples as usize);
    let samples = samples.len();
    let mut l = pass(0, core::ptr::null_mut());
    l.last = lat.last;
    let t0 = begin(id);
    user::call(read_loop, &raw mut l as u64);
    end(id, t0, ops);
    // The reads' own time, measured in ring 3: without the one-time ring switch (an
    // `iretq` in and an exception out, 100–300 µs on kvm_pvm), which a process pays
    // once, not per read.
    let cycles_total = l.cycles;
    // Both passes (the timed loop checked its first read against the pass's last).
    l.backwards += lat.backwards;
    let mut failed = l.backwards != 0;
    let mut extra = 0;
    if let Some(pit) = pit {
        // Each attempt is one interval. A vCPU preempted between a PIT read and a clock
        // read (the host is a shared 2-core machine) inflates one attempt's difference by
        // the preemption; a wrong clock is wrong in every attempt. So: the best of up to
        // AGREEMENT_ATTEMPTS, as clocksource watchdogs retry a skewed read.
        let mut best = u64::MAX;
        let mut tolerance = 0;
        let mut attempts = 0;
        while attempts < AGREEMENT_ATTEMPTS && best > tolerance {
            attempts += 1;
            let p0 = pit.ticks();
            let c0 = user::read_clock(&reader);
            let p1 = pit.wait_until(p0, INTERVAL_NS);
            let c1 = user::read_clock(&reader);
            let pit_ns = ticks_to_ns(p1 - p0);
            let clock_ns = c1.wrapping_sub(c0);
            failed |= c0 < l.last || c1 < c0;
            let diff = pit_ns.abs_diff(clock_ns);
            if diff < best {
                best = diff;
                tolerance = tolerance_ns(pit_ns);
            }
            println!(
                "bench clock: attempt {attempts}: {clock_ns} ns by the clock vs {pit_ns} ns by the PIT: differ by {diff} ns (tolerance {} ns)",
                tolerance_ns(pit_ns)
            );
        }
        extra = best;
        failed |= best > tolerance;
        println!(
            "bench clock: best of {attempts} differs by {best} ns (tolerance {tolerance} ns); {} reads went backwards",
            l.backwards
        );
    } else {
        println!(
            "bench clock: no PIT, agreement not checked; {} reads went backwards",
            l.backwards
        );
    }
    let outcome = Outcome {
        ops,
        cycles_total,
        // The reads ran in ring 3, as through a vDSO.
        flags: Outcome::checked(failed) | SAMPLE_RING3 | SAMPLE_LATENCY_PASS,
        extra,
        samples,
        ..Outcome::default()
    };
    r.report(id, &outcome, scratch);
}
