//! Large statics (buffers, rings, clock pages) handed out once as `&'static mut`.
//!
//! The loader zero-fills `.bss`, so these cost nothing at start-up, where a heap
//! allocation of the same size would at least have to be carved out and, for DMA-like
//! sharing with the host, kept alive for ever anyway.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A static value that can be borrowed mutably exactly once, for `'static`.
pub struct Exclusive<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reachable only through the single `&'static mut` that `take` hands
// out (the flag guarantees there is at most one), so sharing the cell itself is harmless.
unsafe impl<T: Send> Sync for Exclusive<T> {}

impl<T> Exclusive<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Exclusive {
            taken: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, mutably, for ever. Panics on the second call.
    // A `&'static mut` out of `&'static self` is this type's purpose: the flag makes it
    // unique, as `Box::leak` or `static_cell` do.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> &'static mut T {
        assert!(
            !self.taken.swap(true, Ordering::AcqRel),
            "static buffer taken twice"
        );
        // SAFETY: the flag was clear, so this is the only reference ever created.
        unsafe { &mut *self.value.get() }
    }
}

/// `N` bytes aligned to 4 KiB (ring regions and block buffers must be page aligned).
#[repr(C, align(4096))]
pub struct Pages<const N: usize>(pub [u8; N]);

impl<const N: usize> Pages<N> {
    /// Zeroed pages.
    pub const fn zeroed() -> Self {
        Pages([0; N])
    }
}
