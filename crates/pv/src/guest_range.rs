//! Validation of guest-physical address ranges: the one place that turns a guest's
//! `(addr, len)` into a range the host may access.
//!
//! Every address the guest hands the host (hypercall arguments, ring registrations, block
//! segments, console buffers) goes through [`GuestRange::new`] before anything is read or
//! written. A range is valid when `addr + len` does not wrap around the 64-bit address space
//! and every byte of it is backed by guest RAM (it may span adjacent RAM regions, but not a
//! hole). An empty range must still point into RAM or one past the end of a RAM region.
//! Anything else is [`Status::EFAULT`], as the hypercall convention requires (docs/ABI.md,
//! "Guest ranges").

use pvkit_abi::Status;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

/// Errors from [`GuestRange::new`]. Both map to [`Status::EFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// `addr + len` overflows the 64-bit guest-physical address space; pass a range that
    /// ends at or below `u64::MAX`.
    #[error("guest range {addr:#x}+{len:#x} wraps around the address space")]
    Overflow {
        /// First byte of the range.
        addr: u64,
        /// Length of the range in bytes.
        len: u64,
    },
    /// Part of `[addr, addr + len)` is not guest RAM; pass a buffer inside guest memory.
    #[error("guest range {addr:#x}+{len:#x} is not entirely inside guest RAM")]
    NotInRam {
        /// First byte of the range.
        addr: u64,
        /// Length of the range in bytes.
        len: u64,
    },
}

impl RangeError {
    /// The status returned to the guest: always [`Status::EFAULT`].
    pub const fn status(&self) -> Status {
        Status::EFAULT
    }
}

impl From<RangeError> for Status {
    fn from(e: RangeError) -> Status {
        e.status()
    }
}

/// A guest-physical range `[addr, addr + len)` that was checked to lie inside guest RAM
/// (at the time of the check, for the memory it was checked against).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    addr: u64,
    len: usize,
}

impl GuestRange {
    /// Validates `[addr, addr + len)` against `mem`.
    ///
    /// A non-empty range must not wrap (`addr + len` computed with `checked_add`) and must be
    /// entirely backed by guest RAM. An empty range (`len == 0`) accesses nothing but is held
    /// to the same place: `addr` must be a RAM byte or one past the end of a RAM region, so
    /// `(1 << 40, 0)` is `EFAULT` on a small guest, by hypercall and by ring alike.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, addr: u64, len: u64) -> Result<Self, RangeError> {
        let overflow = RangeError::Overflow { addr, len };
        if addr.checked_add(len).is_none() {
            return Err(overflow);
        }
        let len_usize = usize::try_from(len).map_err(|_| overflow)?;
        let in_ram =
            |at: u64, n: usize| mem.check_range(GuestAddress(at), n, Permissions::ReadWrite);
        let ok = if len_usize == 0 {
            in_ram(addr, 1) || addr.checked_sub(1).is_some_and(|last| in_ram(last, 1))
        } else {
            in_ram(addr, len_usize)
        };
        if !ok {
            return Err(RangeError::NotInRam { addr, len });
        }
        Ok(Self {
            addr,
            len: len_usize,
        })
    }

    /// First byte of the range.
    pub const fn addr(&self) -> u64 {
        self.addr
    }

    /// First byte of the range, as a vm-memory address.
    pub const fn guest_addr(&self) -> GuestAddress {
        GuestAddress(self.addr)
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last byte (never wraps: checked at construction).
    pub const fn end(&self) -> u64 {
        // Cannot overflow: `new` checked `addr + len` and `len` came from that same `u64`.
        self.addr.wrapping_add(self.len as u64)
    }

    /// The sub-range `[addr + offset, addr + offset + len)`, if it lies inside this range.
    pub fn subrange(&self, offset: u64, len: usize) -> Option<GuestRange> {
        let len64 = u64::try_from(len).ok()?;
        let end_off = offset.checked_add(len64)?;
        if end_off > self.len as u64 {
            return None;
        }
        Some(GuestRange {
            addr: self.addr.checked_add(offset)?,
            len,
        })
    }

    /// Whether `[addr, addr + len)` lies inside this range.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match (addr.checked_sub(self.addr), addr.checked_add(len)) {
            (Some(_), Some(end)) => end <= self.end(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        // Two adjacent regions and a hole: [0, 64K) [64K, 128K) hole [256K, 260K).
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x1_0000), 0x1_0000),
            (GuestAddress(0x4_0000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn inside_ram() {
        let m = mem();
        let r = GuestRange::new(&m, 0x100, 0x200).unwrap();
        assert_eq!((r.addr(), r.len(), r.end()), (0x100, 0x200, 0x300));
        assert!(GuestRange::new(&m, 0, 0x2_0000).is_ok(), "adjacent regions");
        assert!(GuestRange::new(&m, 0x4_0000, 0x1000).is_ok());
    }

    #[test]
    fn outside_ram_is_efault() {
        let m = mem();
        for (addr, len) in [
            (0x1_ff00, 0x200), // runs into the hole
            (0x2_0000, 1),     // in the hole
            (0x4_0fff, 2),     // past the end
            (0x3_ffff, 2),     // starts in the hole
            (u64::MAX - 1, 1), // far away
        ] {
            let e = GuestRange::new(&m, addr, len).unwrap_err();
            assert_eq!(e, RangeError::NotInRam { addr, len });
            assert_eq!(Status::from(e), Status::EFAULT);
        }
    }

    #[test]
    fn wrapping_is_efault() {
        let m = mem();
        let e = GuestRange::new(&m, u64::MAX, 2).unwrap_err();
        assert!(matches!(e, RangeError::Overflow { .. }));
        assert_eq!(e.status(), Status::EFAULT);
        assert!(GuestRange::new(&m, 0x100, u64::MAX).is_err());
    }

    #[test]
    fn empty_ranges_must_touch_ram() {
        let m = mem();
        // In RAM, at the end of a region (also before a hole), at the end of RAM.
        for addr in [0, 0x100, 0x1_0000, 0x2_0000, 0x4_0000, 0x4_1000] {
            assert!(
                GuestRange::new(&m, addr, 0).unwrap().is_empty(),
                "{addr:#x}"
            );
        }
        // Inside the hole, past the end, far away, the last address.
        for addr in [0x2_0001, 0x3_ffff, 0x4_1001, 1 << 40, u64::MAX] {
            assert_eq!(
                GuestRange::new(&m, addr, 0),
                Err(RangeError::NotInRam { addr, len: 0 }),
                "{addr:#x}"
            );
        }
    }

    #[test]
    fn subranges() {
        let m = mem();
        let r = GuestRange::new(&m, 0x1000, 0x100).unwrap();
        assert_eq!(r.subrange(0x10, 0x20).map(|s| s.addr()), Some(0x1010));
        assert!(r.subrange(0xf0, 0x10).is_some());
        assert!(r.subrange(0xf0, 0x11).is_none());
        assert!(r.subrange(u64::MAX, 2).is_none());
        assert!(r.contains(0x1000, 0x100));
        assert!(!r.contains(0xfff, 1));
        assert!(!r.contains(0x10ff, 2));
        assert!(!r.contains(u64::MAX, 2));
    }
}
