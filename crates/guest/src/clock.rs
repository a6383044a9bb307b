//! Time without exits: the pvkit PV clock page and KVM's kvmclock, read the pvclock way.
//!
//! Both put the same 32-byte record ([`PvClock`], KVM's `pvclock_vcpu_time_info`) in a
//! guest page that the host updates; a reader combines it with the TSC. The page is
//! registered once (PV clock: `RegisterRegion(Clock, gpa, 4096, 0)`, one exit; kvmclock:
//! one `wrmsr` of `MSR_KVM_SYSTEM_TIME_NEW`, handled by KVM in the kernel), after which a
//! read costs no exit at all.
//!
//! [`ClockReader::nanoseconds`] is the vDSO-style reader: no privileged instruction, no
//! lock, no write to shared memory, so it runs in ring 3 (as a real OS's vDSO does; the
//! page only has to be readable there) as well as in ring 0. It follows the version
//! protocol: read `version` (retry while odd: the host is writing), read the record and the
//! TSC, read `version` again (retry if it moved).

use core::cell::UnsafeCell;
use pvkit_abi::clock::PvClock;

/// A 4 KiB page holding a clock record at offset 0, written by the host once registered.
#[repr(C, align(4096))]
pub struct ClockPage {
    record: UnsafeCell<PvClock>,
    _rest: [u8; 4096 - size_of::<PvClock>()],
}
const _: () = assert!(size_of::<ClockPage>() == 4096);

// SAFETY: the guest only ever reads the record (volatile, through `ClockReader`), the host
// writes it under the version protocol; `_rest` is never accessed.
unsafe impl Sync for ClockPage {}

impl ClockPage {
    /// A zeroed page (version 0: never written).
    pub const fn new() -> Self {
        ClockPage {
            record: UnsafeCell::new(PvClock {
                version: 0,
                pad0: 0,
                tsc_timestamp: 0,
                system_time: 0,
                tsc_to_system_mul: 0,
                tsc_shift: 0,
                flags: 0,
                pad: [0; 2],
            }),
            _rest: [0; 4096 - size_of::<PvClock>()],
        }
    }

    /// A reader of this page.
    pub fn reader(&'static self) -> ClockReader {
        ClockReader {
            record: self.record.get(),
        }
    }

    /// The page's guest-physical address.
    pub fn gpa(&'static self) -> u64 {
        crate::addr::virt_to_phys(self as *const Self)
    }
}

impl Default for ClockPage {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a clock record under the version protocol. `Copy`, and usable from ring 3.
#[derive(Clone, Copy, Debug)]
pub struct ClockReader {
    record: *const PvClock,
}

// SAFETY: the reader only performs volatile reads of a record that lives for 'static (or
// as long as the `from_ptr` contract says); reading from several CPUs is what it is for.
unsafe impl Send for ClockReader {}
// SAFETY: as above.
unsafe impl Sync for ClockReader {}

impl ClockReader {
    /// A reader of the record at `record` (e.g. a vDSO-style mapping of the clock page).
    ///
    /// # Safety
    ///
    /// `record` must point at a `PvClock` readable for as long as the reader is used.
    pub const unsafe fn from_ptr(record: *const PvClock) -> Self {
        ClockReader { record }
    }

    /// The record's current `version` (0: the host never wrote it).
    #[inline(always)]
    pub fn version(&self) -> u32 {
        // SAFETY: the record is readable (constructor contracts); volatile because the host
        // writes it behind the compiler's back.
        unsafe { core::ptr::addr_of!((*self.record).version).read_volatile() }
    }

    /// A consistent copy of the record and the TSC value `tsc()` returned while it was
    /// current.
    #[inline(always)]
    pub fn snapshot_with(&self, mut tsc: impl FnMut() -> u64) -> (PvClock, u64) {
        loop {
            let v1 = self.version();
            // x86 keeps loads in order; the compiler must too.
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Acquire);
            // SAFETY: as in `version`.
            let record = unsafe { self.record.read_volatile() };
            let now = tsc();
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Acquire);
            if v1 & 1 == 0 && self.version() == v1 {
                return (record, now);
            }
            core::hint::spin_loop();
        }
    }

    /// Nanoseconds, with the TSC read by `tsc` (ring-0 callers on an interpreting
    /// hypervisor pass [`crate::tsc::rdtsc`]; see [`crate::tsc::rdtsc_ordered`]).
    #[inline(always)]
    pub fn read_with(&self, tsc: impl FnMut() -> u64) -> u64 {
        let (record, now) = self.snapshot_with(tsc);
        record.nanoseconds(now)
    }

    /// Nanoseconds of the clock (host `CLOCK_MONOTONIC` since VM start for the PV clock;
    /// kvmclock's own epoch for kvmclock). Uses `lfence; rdtsc`
    /// ([`crate::tsc::rdtsc_ordered`]); works in any ring.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn nanoseconds(&self) -> u64 {
        self.read_with(crate::tsc::rdtsc_ordered)
    }
}

/// Registers `page` as the calling vCPU's PV clock page
/// (`RegisterRegion(CLOCK_PAGE, gpa, 4096, REGION_PER_VCPU)`, one exit) and returns its
/// reader. Fails with the host's status (`EOPNOTSUPP` without the
/// `CLOCK` feature). Check [`ClockReader::version`] is non-zero before trusting the time.
#[cfg(target_arch = "x86_64")]
pub fn register(page: &'static ClockPage) -> Result<ClockReader, pvkit_abi::Status> {
    // SAFETY: the page is 'static; the host writes only the record at its start, under the
    // version protocol, and the guest only reads it.
    unsafe {
        crate::hypercall::register_region(
            pvkit_abi::ring::RegionId::Page(pvkit_abi::clock::CLOCK_PAGE),
            page.gpa(),
            4096,
            pvkit_abi::ring::REGION_PER_VCPU,
        )
    }?;
    Ok(page.reader())
}

/// KVM's kvmclock: the same record, registered with an MSR that KVM handles in the kernel.
pub mod kvm {
    use super::{ClockPage, ClockReader};

    /// The KVM hypervisor CPUID signature (EBX, ECX, EDX).
    pub const SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";
    /// `MSR_KVM_SYSTEM_TIME_NEW`: write `gpa | 1` to enable kvmclock at `gpa`, 0 to stop.
    pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    /// `KVM_FEATURE_CLOCKSOURCE2` in EAX of the KVM features leaf (base + 1).
    pub const FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
    /// Where KVM's leaves may be: stock KVM's base, and the base pvkit uses when it offers
    /// kvmclock next to its own leaves ([`pvkit_abi::cpuid::KVM_LEAF_BASE`]).
    pub const LEAF_BASES: [u32; 2] = [pvkit_abi::cpuid::KVM_LEAF_BASE, 0x4000_0000];

    /// Why kvmclock cannot be used.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Unavailable {
        /// No CPUID leaf spells `"KVMKVMKVM\0\0\0"`.
        NoSignature,
        /// KVM's leaves have no features leaf.
        NoFeatureLeaf,
        /// `KVM_FEATURE_CLOCKSOURCE2` is clear.
        NoClocksource2,
        /// The `wrmsr` faulted (the MSR is filtered or unknown).
        MsrRejected,
        /// The MSR was accepted but KVM never wrote the record (version still 0).
        NotUpdated,
    }

    impl Unavailable {
        /// A short explanation for logs.
        pub const fn reason(self) -> &'static str {
            match self {
                Unavailable::NoSignature => "no KVM CPUID signature at 0x40000100/0x40000000",
                Unavailable::NoFeatureLeaf => "KVM CPUID leaves have no features leaf",
                Unavailable::NoClocksource2 => "KVM_FEATURE_CLOCKSOURCE2 not offered",
                Unavailable::MsrRejected => "wrmsr MSR_KVM_SYSTEM_TIME_NEW faulted",
                Unavailable::NotUpdated => "KVM accepted the MSR but never wrote the record",
            }
        }
    }

    /// Whether EBX, ECX, EDX spell [`SIGNATURE`].
    pub fn matches_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&ebx.to_le_bytes());
        b[4..8].copy_from_slice(&ecx.to_le_bytes());
        b[8..].copy_from_slice(&edx.to_le_bytes());
        b == SIGNATURE
    }

    /// Finds KVM's CPUID leaves and checks for `KVM_FEATURE_CLOCKSOURCE2`. Returns the
    /// base leaf and KVM's feature bits. Costs up to four `cpuid`s (no exit to the VMM).
    #[cfg(target_arch = "x86_64")]
    pub fn detect() -> Result<(u32, u32), Unavailable> {
        use core::arch::x86_64::__cpuid;
        let base = LEAF_BASES
            .into_iter()
            .find(|&base| {
                let r = __cpuid(base);
                matches_signature(r.ebx, r.ecx, r.edx)
            })
            .ok_or(Unavailable::NoSignature)?;
        let max = __cpuid(base).eax;
        // KVM leaves EAX 0 in its base leaf on old kernels, meaning "base + 1".
        if max != 0 && max < base + 1 {
            return Err(Unavailable::NoFeatureLeaf);
        }
        let features = __cpuid(base + 1).eax;
        if features & FEATURE_CLOCKSOURCE2 == 0 {
            return Err(Unavailable::NoClocksource2);
        }
        Ok((base, features))
    }

    /// Enables kvmclock on `page`: [`detect`], then `wrmsr(MSR_KVM_SYSTEM_TIME_NEW,
    /// gpa | 1)` through `wrmsr` (which returns `false` if the write faulted; a kernel
    /// passes its fault-tolerant `wrmsr`), then checks that KVM wrote the record.
    ///
    /// # Safety
    ///
    /// Ring 0. From the `wrmsr` on, KVM writes the record at any time until kvmclock is
    /// disabled ([`disable`]): the page must stay valid and be used for nothing else.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn enable(
        page: &'static ClockPage,
        wrmsr: impl FnOnce(u32, u64) -> bool,
    ) -> Result<ClockReader, Unavailable> {
        detect()?;
        if !wrmsr(MSR_KVM_SYSTEM_TIME_NEW, page.gpa() | 1) {
            return Err(Unavailable::MsrRejected);
        }
        let reader = page.reader();
        // KVM writes the record before the vCPU next enters the guest, i.e. before the
        // instruction after the `wrmsr`. Give a slow host a few more tries (each `cpuid`
        // is a trip through KVM).
        for _ in 0..16 {
            if reader.version() != 0 {
                return Ok(reader);
            }
            core::arch::x86_64::__cpuid(0);
        }
        Err(Unavailable::NotUpdated)
    }

    /// Stops KVM from updating the kvmclock page (`wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0)`).
    ///
    /// # Safety
    ///
    /// Ring 0; `wrmsr` as for [`enable`].
    pub unsafe fn disable(wrmsr: impl FnOnce(u32, u64) -> bool) {
        wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PAGE: ClockPage = ClockPage::new();

    #[test]
    fn reads_a_record_and_applies_the_scale() {
        let reader = PAGE.reader();
        assert_eq!(reader.version(), 0);
        let (mul, shift) = PvClock::scale_for_khz(1_000_000); // 1 GHz: 1 ns per tick
        let record = PvClock {
            version: 2,
            tsc_timestamp: 1_000,
            system_time: 5_000,
            tsc_to_system_mul: mul,
            tsc_shift: shift,
            ..PvClock::default()
        };
        // SAFETY: test only: the "host" writes the record while nobody reads it.
        unsafe { PAGE.record.get().write_volatile(record) };
        assert_eq!(reader.version(), 2);
        let ns = reader.read_with(|| 3_000);
        assert!(ns.abs_diff(7_000) <= 1, "{ns}");
        let (copy, tsc) = reader.snapshot_with(|| 42);
        assert_eq!((copy, tsc), (record, 42));
    }

    #[test]
    fn kvm_signature() {
        let w = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let s = kvm::SIGNATURE;
        assert!(kvm::matches_signature(w(&s[0..]), w(&s[4..]), w(&s[8..])));
        let p = pvkit_abi::cpuid::signature_registers();
        assert!(!kvm::matches_signature(p[0], p[1], p[2]));
    }
}
