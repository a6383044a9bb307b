//! Steal time: the per-vCPU page where the host publishes how long this vCPU was runnable
//! but not running ([`pvkit_abi::spinlock::StealTime`]).
//!
//! Each CPU registers its own page (`RegisterRegion(STEAL_PAGE, gpa, 4096,
//! REGION_PER_VCPU)`, one exit, made on that CPU); reading costs no exit and follows the
//! version protocol of the clock page.

use core::cell::UnsafeCell;
use pvkit_abi::spinlock::StealTime;

/// A 4 KiB page holding the steal record at offset 0, written by the host once registered.
#[repr(C, align(4096))]
pub struct StealPage {
    record: UnsafeCell<StealTime>,
    _rest: [u8; 4096 - size_of::<StealTime>()],
}
const _: () = assert!(size_of::<StealPage>() == 4096);

// SAFETY: the guest only reads the record (volatile, in `read`); the host writes it under
// the version protocol; `_rest` is never accessed.
unsafe impl Sync for StealPage {}

impl Default for StealPage {
    fn default() -> Self {
        Self::new()
    }
}

impl StealPage {
    /// A zeroed page (version 0: never written).
    pub const fn new() -> Self {
        StealPage {
            record: UnsafeCell::new(StealTime {
                version: 0,
                flags: 0,
                steal_ns: 0,
                run_ns: 0,
                updates: 0,
            }),
            _rest: [0; 4096 - size_of::<StealTime>()],
        }
    }

    /// A consistent copy of the record (retrying while the host writes it).
    pub fn read(&self) -> StealTime {
        let p = self.record.get();
        loop {
            // SAFETY: `p` points at the record inside this page; the reads are volatile
            // because the host writes the page behind the compiler's back.
            let (v0, rec, v1) = unsafe {
                let v0 = core::ptr::read_volatile(&raw const (*p).version);
                core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
                let rec = core::ptr::read_volatile(p);
                core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
                (v0, rec, core::ptr::read_volatile(&raw const (*p).version))
            };
            if v0 & 1 == 0 && v0 == v1 {
                return rec;
            }
            core::hint::spin_loop();
        }
    }

    /// Registers this page as the calling vCPU's steal page. Fails with the host's status
    /// (`EOPNOTSUPP` without [`pvkit_abi::cpuid::Features::STEAL_TIME`]).
    #[cfg(target_arch = "x86_64")]
    pub fn register(&'static self) -> Result<(), pvkit_abi::Status> {
        // SAFETY: the page is 'static; the host writes only the record at its start, under
        // the version protocol, and the guest only reads it.
        unsafe {
            crate::hypercall::register_region(
                pvkit_abi::ring::RegionId::Page(pvkit_abi::spinlock::STEAL_PAGE),
                crate::addr::virt_to_phys(self as *const Self),
                4096,
                pvkit_abi::ring::REGION_PER_VCPU,
            )
        }
    }
}
