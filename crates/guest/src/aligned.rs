//! [`Aligned4K`]: 4 KiB-aligned memory for rings, clock pages and block buffers, usable in
//! a plain `static` (no `static mut`).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A `T` at a 4 KiB-aligned address, handed out mutably exactly once for `'static`.
///
/// Ring regions ([`crate::ring`]) and other memory shared with the host must be page
/// aligned. Declare the memory as a `static` and [`take`](Aligned4K::take) it once:
///
/// ```
/// use pvkit_guest::{Aligned4K, RingMemory};
///
/// static RING: RingMemory<8192> = RingMemory::zeroed();
///
/// let mem: &'static mut [u8; 8192] = RING.take();
/// assert_eq!(mem.as_ptr() as usize % 4096, 0);
/// ```
///
/// A zero-initialized `static` sits in `.bss`, which the loader zero-fills: it costs
/// nothing at start-up. A second `take` panics.
#[repr(C, align(4096))]
pub struct Aligned4K<T> {
    value: UnsafeCell<T>,
    taken: AtomicBool,
}

// SAFETY: the value is reachable only through the single `&'static mut` that `take` hands
// out (the flag guarantees at most one), so sharing the cell itself is harmless.
unsafe impl<T: Send> Sync for Aligned4K<T> {}

/// `N` bytes of page-aligned memory, e.g. for a ring ([`crate::ring`]).
pub type RingMemory<const N: usize> = Aligned4K<[u8; N]>;

impl<T> Aligned4K<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Aligned4K {
            value: UnsafeCell::new(value),
            taken: AtomicBool::new(false),
        }
    }

    /// The address of the value (4 KiB aligned), without borrowing it.
    pub const fn as_ptr(&self) -> *mut T {
        self.value.get()
    }

    /// The value, mutably, for ever. Panics on the second call.
    // A `&'static mut` out of `&'static self` is this type's purpose: the flag makes it
    // unique, as `Box::leak` or `static_cell` do.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> &'static mut T {
        assert!(
            !self.taken.swap(true, Ordering::AcqRel),
            "Aligned4K taken twice"
        );
        // SAFETY: the flag was clear, so this is the only reference ever created.
        unsafe { &mut *self.value.get() }
    }
}

impl<const N: usize> Aligned4K<[u8; N]> {
    /// `N` zero bytes.
    pub const fn zeroed() -> Self {
        Self::new([0; N])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PAGE: RingMemory<4096> = RingMemory::zeroed();
    static VALUE: Aligned4K<u64> = Aligned4K::new(7);

    #[test]
    fn aligned_and_taken_once() {
        assert_eq!(PAGE.as_ptr() as usize % 4096, 0);
        assert_eq!(VALUE.as_ptr() as usize % 4096, 0);
        let p = PAGE.take();
        p[0] = 1;
        assert_eq!(p.len(), 4096);
        assert!(std::panic::catch_unwind(|| PAGE.take()).is_err());
        assert_eq!(*VALUE.take(), 7);
    }
}
