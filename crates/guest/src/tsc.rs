//! The time-stamp counter: the cycle clock of benchmarks and of the PV clocks.
//!
//! Both readers work in any ring (CR4.TSD is clear under pvkit). Costs differ wildly by
//! ring on kvm_pvm: in ring 3 `rdtsc` runs natively (~20 ns); in ring 0 it is interpreted
//! (4k–17k cycles), so ring-0 code should read the TSC around batches of operations, not
//! around each one.

/// Reads the TSC (`rdtsc`). Not ordered with earlier instructions: the CPU may execute it
/// before loads that precede it. Good enough around a batch of operations that end in an
/// exit (an exit serializes); use [`rdtsc_ordered`] when the value must not be taken early.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads the TSC into EDX:EAX; it touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads the TSC after every earlier instruction has completed locally (`lfence; rdtsc`,
/// as Linux's `rdtsc_ordered`). This is what a clock read needs: the TSC value must not be
/// taken before the clock record it is combined with was read.
///
/// Works in every ring, including the interpreted ring 0 of kvm_pvm.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn rdtsc_ordered() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `lfence; rdtsc` touches no memory; the result is in EDX:EAX. No `nomem`, so
    // the compiler cannot move loads of the clock record across it either.
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi,
            options(nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// TSC cycles in `ms` milliseconds at `tsc_khz` (saturating).
pub const fn cycles_for_ms(tsc_khz: u64, ms: u64) -> u64 {
    tsc_khz.saturating_mul(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_moves_forward() {
        let a = rdtsc();
        let b = rdtsc_ordered();
        assert!(b >= a);
        assert_eq!(cycles_for_ms(2_596_000, 10), 25_960_000);
    }
}
