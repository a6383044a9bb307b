//! The PV clock page: time with zero exits, version-guarded like KVM's pvclock.
//!
//! The guest registers a 4 KiB page with [`crate::Hypercall::RegisterRegion`]
//! ([`CLOCK_PAGE`], a page of the CPU class); the host writes one [`PvClock`] at offset 0.
//! With [`crate::ring::REGION_PER_VCPU`] in the flags the page is the calling vCPU's (each
//! vCPU registers its own, as with kvmclock); without it, the VM's one page. To
//! read the time the guest (ring 0, or ring 3 through a vDSO-style read-only mapping):
//!
//! 1. reads `version`; if odd, the host is updating: retry;
//! 2. reads the other fields and `rdtsc`;
//! 3. reads `version` again; if it changed, retry;
//! 4. computes [`PvClock::nanoseconds`]: `system_time + (delta × tsc_to_system_mul) >> 32`,
//!    where the product `delta × tsc_to_system_mul` needs 96 bits: compute it in 128 bits
//!    (or as two 64-bit halves), never in 64, or the time wraps after a few seconds.
//!
//! The `RegisterRegion` flags argument (arg3) for the clock page is 0 or
//! [`crate::ring::REGION_PER_VCPU`]; other values are `EINVAL`.
//!
//! System time is nanoseconds of the host's `CLOCK_MONOTONIC` since the VM started.

use crate::assert_layout;
use crate::call::DeviceClass;
use crate::ring::PageId;

/// The clock page's region id: page 0 of the CPU class.
pub const CLOCK_PAGE: PageId = PageId::new(DeviceClass::Cpu, 0);
/// [`CLOCK_PAGE`] as arg0 of `RegisterRegion` (a literal, for the C header).
pub const CLOCK_PAGE_REGION: u64 = 0x4_8000;
const _: () = assert!(CLOCK_PAGE_REGION == crate::ring::RegionId::Page(CLOCK_PAGE).to_u64());

/// `PvClock::flags`: the TSC is stable and synchronized across vCPUs.
pub const TSC_STABLE: u8 = 1 << 0;

/// The clock record. Same layout as KVM's `pvclock_vcpu_time_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvClock {
    /// Odd while the host updates the record.
    pub version: u32,
    /// Zero.
    pub pad0: u32,
    /// Guest TSC value at which `system_time` was taken.
    pub tsc_timestamp: u64,
    /// Nanoseconds at `tsc_timestamp`.
    pub system_time: u64,
    /// Multiplier, a 32.32 fixed-point fraction applied after `tsc_shift`.
    pub tsc_to_system_mul: u32,
    /// Shift applied to a TSC delta before the multiply (negative: right shift).
    pub tsc_shift: i8,
    /// [`TSC_STABLE`].
    pub flags: u8,
    /// Zero.
    pub pad: [u8; 2],
}
assert_layout!(
    PvClock,
    size = 32,
    version @ 0,
    tsc_timestamp @ 8,
    system_time @ 16,
    tsc_to_system_mul @ 24,
    tsc_shift @ 28,
    flags @ 29,
);

impl PvClock {
    /// Nanoseconds at guest TSC value `tsc` (integer-only: no SSE, no floats). Total over
    /// every field value: a corrupt record gives a wrong time, never a panic (a shift of 64
    /// or more in either direction yields a zero delta).
    pub const fn nanoseconds(&self, tsc: u64) -> u64 {
        let raw = tsc.wrapping_sub(self.tsc_timestamp);
        let shift = self.tsc_shift as i32;
        let delta = if shift < 0 {
            match raw.checked_shr(shift.unsigned_abs()) {
                Some(d) => d,
                None => 0,
            }
        } else {
            match raw.checked_shl(shift as u32) {
                Some(d) => d,
                None => 0,
            }
        };
        let scaled = ((delta as u128 * self.tsc_to_system_mul as u128) >> 32) as u64;
        self.system_time.wrapping_add(scaled)
    }

    /// The (`tsc_to_system_mul`, `tsc_shift`) pair for a TSC of `tsc_khz` kHz, as Linux's
    /// `kvm_get_time_scale` computes it. Meaningful for `1..=u32::MAX` kHz; 0 gives
    /// `(0, 0)` (a clock that never advances) and larger values saturate, never panic.
    pub const fn scale_for_khz(tsc_khz: u64) -> (u32, i8) {
        if tsc_khz == 0 {
            return (0, 0);
        }
        let scaled_hz: u64 = 1_000_000_000;
        let mut base_hz = tsc_khz.saturating_mul(1000);
        let mut shift: i8 = 0;
        let mut tps64 = base_hz;
        let mut tps32: u32;
        while tps64 > scaled_hz * 2 || tps64 >> 32 != 0 {
            tps64 >>= 1;
            shift -= 1;
        }
        tps32 = tps64 as u32;
        while (tps32 as u64) <= scaled_hz || tps32 & 0x8000_0000 == 0 {
            if scaled_hz & 0xffff_ffff_0000_0000 != 0 || tps32 & 0x8000_0000 != 0 {
                break;
            }
            if tps32 as u64 * 2 > u32::MAX as u64 {
                break;
            }
            tps32 <<= 1;
            shift += 1;
        }
        base_hz = tps32 as u64;
        let mul = ((scaled_hz << 32) / base_hz) as u32;
        (mul, shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock_for(khz: u64) -> PvClock {
        let (mul, shift) = PvClock::scale_for_khz(khz);
        PvClock {
            tsc_to_system_mul: mul,
            tsc_shift: shift,
            ..PvClock::default()
        }
    }

    #[test]
    fn one_second_of_ticks_is_one_second() {
        for khz in [1_000_000u64, 2_596_000, 3_000_000, 4_500_000] {
            let c = clock_for(khz);
            let ns = c.nanoseconds(khz * 1000);
            let err = ns.abs_diff(1_000_000_000);
            assert!(err < 1_000, "{khz} kHz: {ns} ns for one second of ticks");
        }
    }

    #[test]
    fn corrupt_records_and_extreme_inputs_do_not_panic() {
        // Fuzzing findings F-1 and F-2 (crates/fuzz/FINDINGS.md).
        for shift in [i8::MIN, -64, -63, 63, 64, i8::MAX] {
            let c = PvClock {
                tsc_shift: shift,
                tsc_to_system_mul: u32::MAX,
                ..PvClock::default()
            };
            let _ = c.nanoseconds(u64::MAX);
        }
        assert_eq!(PvClock::scale_for_khz(0), (0, 0));
        let _ = PvClock::scale_for_khz(u64::MAX / 1000 + 1);
        let _ = PvClock::scale_for_khz(u64::MAX);
    }

    #[test]
    fn offsets_apply() {
        let c = PvClock {
            tsc_timestamp: 1000,
            system_time: 5,
            ..clock_for(1_000_000)
        };
        assert_eq!(c.nanoseconds(1000), 5);
        assert!(c.nanoseconds(2000) >= 1004 && c.nanoseconds(2000) <= 1006);
    }

    #[test]
    fn monotonic_over_a_range() {
        let c = clock_for(2_596_000);
        let mut last = 0;
        for tsc in (0..10_000_000u64).step_by(977) {
            let ns = c.nanoseconds(tsc);
            assert!(ns >= last);
            last = ns;
        }
    }
}
