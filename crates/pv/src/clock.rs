//! The PV clock writer: fills the guest's [`PvClock`] page with the version protocol.
//!
//! The guest reads the record without exiting (see [`pvkit_abi::clock`]): version, fields,
//! version again, retrying while the version is odd or changed. The host side is the
//! writer half of that seqlock:
//!
//! 1. store `version + 1` (odd: "update in progress");
//! 2. release fence — the odd version is ordered before every field store;
//! 3. store the fields;
//! 4. store `version + 2` (even) with release ordering — every field store is ordered
//!    before it.
//!
//! A reader that sees the same even version before and after its field reads therefore
//! saw fields from exactly one update. On x86 both fences are compiler barriers only (TSO
//! keeps stores in order), which is exactly what KVM's `smp_wmb()` is there. The version
//! counter is host-private after registration (seeded from the page so a guest that
//! re-registers never sees the version go backwards), so a guest scribbling on its own
//! page cannot make the host publish an even version mid-update.

use core::mem::{offset_of, size_of};
use std::sync::atomic::{fence, Ordering};

use pvkit_abi::clock::{PvClock, TSC_STABLE};
use pvkit_abi::Status;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::guest_range::{GuestRange, RangeError};
use crate::ring::REGION_ALIGN;
use crate::wire::Wire;

pub(crate) mod state;

/// Highest TSC frequency accepted, in kHz (about 4.3 THz): keeps the scale computation
/// free of overflow.
pub const MAX_TSC_KHZ: u64 = u32::MAX as u64;

/// Errors from registering or updating the clock page.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The page is not 4 KiB aligned (`EINVAL`); register a page-aligned address.
    #[error("clock page address {gpa:#x} is not 4 KiB aligned")]
    Misaligned {
        /// The registered address.
        gpa: u64,
    },
    /// The registered length cannot hold a [`PvClock`] (`EINVAL`).
    #[error("clock region of {len} bytes cannot hold the 32-byte PvClock")]
    TooSmall {
        /// The registered length.
        len: u64,
    },
    /// The page is not inside guest RAM (`EFAULT`).
    #[error("clock page: {0}")]
    Range(#[from] RangeError),
    /// The TSC frequency is zero or above [`MAX_TSC_KHZ`]; pass the value from
    /// `KVM_GET_TSC_KHZ`.
    #[error("TSC frequency of {0} kHz is not in 1..={MAX_TSC_KHZ}")]
    BadFrequency(u64),
    /// Writing the page failed (the memory map changed) (`EFAULT`).
    #[error("clock page access failed: {0}")]
    Memory(#[from] GuestMemoryError),
}

impl ClockError {
    /// The status reported to the guest (for the registration hypercall).
    pub fn status(&self) -> Status {
        match self {
            ClockError::Misaligned { .. } | ClockError::TooSmall { .. } => Status::EINVAL,
            ClockError::Range(_) | ClockError::Memory(_) => Status::EFAULT,
            // A host configuration problem, not the guest's.
            ClockError::BadFrequency(_) => Status::EIO,
        }
    }
}

/// One time sample to publish: a guest TSC value and the host time it corresponds to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    /// Guest TSC value at the sample.
    pub tsc: u64,
    /// Host `CLOCK_MONOTONIC` nanoseconds since the VM started, at the same instant.
    pub system_ns: u64,
    /// Guest TSC frequency in kHz.
    pub tsc_khz: u64,
    /// Whether the TSC is stable and synchronized across vCPUs ([`TSC_STABLE`]).
    pub stable: bool,
}

/// The guest's registered clock page.
#[derive(Debug)]
pub struct PvClockPage {
    /// `[gpa, gpa + size_of::<PvClock>())`.
    record: GuestRange,
    /// The last version published (even).
    version: u32,
    /// `(tsc_khz, mul, shift)` of the last update, to skip recomputing the scale.
    scale: Option<(u64, u32, i8)>,
}

impl PvClockPage {
    /// Validates the clock region `[gpa, gpa + len)` the guest registered: 4 KiB aligned,
    /// at least one [`PvClock`] long, entirely inside guest RAM. Nothing is written.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, len: u64) -> Result<Self, ClockError> {
        if !gpa.is_multiple_of(REGION_ALIGN) {
            return Err(ClockError::Misaligned { gpa });
        }
        if len < size_of::<PvClock>() as u64 {
            return Err(ClockError::TooSmall { len });
        }
        let region = GuestRange::new(mem, gpa, len)?;
        let record = region
            .subrange(0, size_of::<PvClock>())
            .ok_or(ClockError::TooSmall { len })?;
        let current: u32 = mem.load(record.guest_addr(), Ordering::Relaxed)?;
        // Continue from the page's version, rounded up to even, so that a reader in the
        // middle of a read across re-registration sees the version change.
        let version = current.wrapping_add(1) & !1;
        Ok(Self {
            record,
            version,
            scale: None,
        })
    }

    /// Guest-physical address of the record.
    pub fn gpa(&self) -> u64 {
        self.record.addr()
    }

    /// The version last published (even).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Publishes `sample` with the version protocol and returns the record written.
    pub fn update<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        sample: ClockSample,
    ) -> Result<PvClock, ClockError> {
        let (mul, shift) = self.scale(sample.tsc_khz)?;
        let odd = self.version.wrapping_add(1);
        let even = odd.wrapping_add(1);
        let record = PvClock {
            version: even,
            pad0: 0,
            tsc_timestamp: sample.tsc,
            system_time: sample.system_ns,
            tsc_to_system_mul: mul,
            tsc_shift: shift,
            flags: if sample.stable { TSC_STABLE } else { 0 },
            pad: [0; 2],
        };
        let version_at = self.record.guest_addr();
        // Everything after `version`: `pad0` through `pad`.
        let body_off = offset_of!(PvClock, pad0);
        let wire = Wire(record);
        let body = wire.as_slice().get(body_off..).unwrap_or_default();
        let body_at = GuestAddress(self.record.addr().wrapping_add(body_off as u64));

        mem.store(odd, version_at, Ordering::Relaxed)?;
        // The odd version is ordered before the field stores below.
        fence(Ordering::Release);
        mem.write_slice(body, body_at)?;
        // Release: the field stores are ordered before the even version.
        mem.store(even, version_at, Ordering::Release)?;
        self.version = even;
        Ok(record)
    }

    fn scale(&mut self, tsc_khz: u64) -> Result<(u32, i8), ClockError> {
        if tsc_khz == 0 || tsc_khz > MAX_TSC_KHZ {
            return Err(ClockError::BadFrequency(tsc_khz));
        }
        match self.scale {
            Some((khz, mul, shift)) if khz == tsc_khz => Ok((mul, shift)),
            _ => {
                let (mul, shift) = PvClock::scale_for_khz(tsc_khz);
                self.scale = Some((tsc_khz, mul, shift));
                Ok((mul, shift))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const RAM: usize = 1 << 20;
    const GPA: u64 = 0x5000;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    fn read(m: &GuestMemoryMmap<()>) -> PvClock {
        m.read_obj::<Wire<PvClock>>(GuestAddress(GPA)).unwrap().0
    }

    fn sample(tsc: u64, ns: u64) -> ClockSample {
        ClockSample {
            tsc,
            system_ns: ns,
            tsc_khz: 2_596_000,
            stable: true,
        }
    }

    #[test]
    fn publishes_a_readable_record() {
        let m = mem();
        let mut page = PvClockPage::new(&m, GPA, 4096).unwrap();
        let written = page.update(&m, sample(1_000_000, 77)).unwrap();
        let c = read(&m);
        assert_eq!(c, written);
        assert_eq!(c.version % 2, 0);
        assert_eq!(c.flags, TSC_STABLE);
        assert_eq!(c.nanoseconds(1_000_000), 77);
        let one_second = c.nanoseconds(1_000_000 + 2_596_000_000) - 77;
        assert!(one_second.abs_diff(1_000_000_000) < 1_000);
    }

    #[test]
    fn version_advances_by_two_from_the_page_value() {
        let m = mem();
        m.store(7u32, GuestAddress(GPA), Ordering::Relaxed).unwrap();
        let mut page = PvClockPage::new(&m, GPA, 32).unwrap();
        assert_eq!(page.version(), 8);
        page.update(&m, sample(0, 0)).unwrap();
        assert_eq!(read(&m).version, 10);
        // The guest scribbling on the version does not steer the host.
        m.store(3u32, GuestAddress(GPA), Ordering::Relaxed).unwrap();
        page.update(&m, sample(0, 0)).unwrap();
        assert_eq!(read(&m).version, 12);
        let mut stale = ClockSample {
            stable: false,
            ..sample(0, 0)
        };
        stale.tsc_khz = 1_000_000;
        assert_eq!(page.update(&m, stale).unwrap().flags, 0);
        assert_eq!(read(&m).version, 14);
    }

    #[test]
    fn version_wraps() {
        let m = mem();
        m.store(u32::MAX - 1, GuestAddress(GPA), Ordering::Relaxed)
            .unwrap();
        let mut page = PvClockPage::new(&m, GPA, 32).unwrap();
        page.update(&m, sample(0, 0)).unwrap();
        assert_eq!(read(&m).version, 0);
    }

    #[test]
    fn registration_errors() {
        let m = mem();
        let e = PvClockPage::new(&m, GPA + 8, 4096).unwrap_err();
        assert!(matches!(e, ClockError::Misaligned { .. }));
        assert_eq!(e.status(), Status::EINVAL);
        assert!(matches!(
            PvClockPage::new(&m, GPA, 31),
            Err(ClockError::TooSmall { len: 31 })
        ));
        let e = PvClockPage::new(&m, RAM as u64, 4096).unwrap_err();
        assert_eq!(e.status(), Status::EFAULT);
        assert!(PvClockPage::new(&m, RAM as u64 - 4096, 8192).is_err());
        assert!(PvClockPage::new(&m, u64::MAX - 4095, 8192).is_err());
        assert!(PvClockPage::new(&m, RAM as u64 - 4096, 4096).is_ok());
    }

    #[test]
    fn bad_frequency_writes_nothing() {
        let m = mem();
        let mut page = PvClockPage::new(&m, GPA, 4096).unwrap();
        for khz in [0, MAX_TSC_KHZ + 1, u64::MAX] {
            let s = ClockSample {
                tsc_khz: khz,
                ..sample(1, 1)
            };
            assert!(matches!(
                page.update(&m, s),
                Err(ClockError::BadFrequency(_))
            ));
        }
        assert_eq!(read(&m), PvClock::default());
        // The extremes of the accepted range compute a scale without overflow.
        for khz in [1, MAX_TSC_KHZ] {
            let s = ClockSample {
                tsc_khz: khz,
                ..sample(1, 1)
            };
            page.update(&m, s).unwrap();
        }
    }

    /// A reader thread following the ABI's read protocol never sees a torn record.
    #[test]
    fn concurrent_reader_never_sees_a_torn_record() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        let m = Arc::new(mem());
        let mut page = PvClockPage::new(&*m, GPA, 4096).unwrap();
        page.update(&*m, sample(0, 0)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (rm, rdone) = (Arc::clone(&m), Arc::clone(&done));
        let reader = std::thread::spawn(move || {
            let mut consistent = 0u64;
            while !rdone.load(Ordering::Relaxed) {
                let v1: u32 = rm.load(GuestAddress(GPA), Ordering::Acquire).unwrap();
                if v1 % 2 == 1 {
                    continue;
                }
                let c = rm.read_obj::<Wire<PvClock>>(GuestAddress(GPA)).unwrap().0;
                fence(Ordering::Acquire);
                let v2: u32 = rm.load(GuestAddress(GPA), Ordering::Relaxed).unwrap();
                if v1 == v2 {
                    assert_eq!(c.system_time, c.tsc_timestamp * 3, "torn read at {v1}");
                    consistent += 1;
                }
            }
            consistent
        });
        for i in 1..200_000u64 {
            page.update(&*m, sample(i, i * 3)).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}
