//! Guest-virtual → guest-physical translation for buffers handed to the host.
//!
//! The pvkit ABI passes guest-physical addresses (GPAs). A kernel that runs on the boot
//! identity map (virtual = physical) needs nothing here. A kernel that maps RAM elsewhere
//! sets the translation once, before its first hypercall that carries a buffer:
//!
//! - [`set_offset`]: RAM is mapped linearly at `virtual = physical + offset` (a
//!   Linux-style direct map);
//! - [`set_translate`]: any other scheme, through a function.
//!
//! Every driver in this crate translates the *start* of a buffer with [`virt_to_phys`] and
//! hands the host `(gpa, len)`; the buffer must therefore be physically contiguous. That
//! holds for the identity map and for any linear map; a kernel with scattered pages must
//! pass buffers that do not straddle a discontinuity (or bounce them).
//!
//! The lookup costs two relaxed loads and a subtraction (plus a call when a function is
//! installed): cheap enough for every hypercall on an interpreted ring-0 path.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A translation function: guest-virtual address → guest-physical address.
pub type Translate = fn(usize) -> u64;

/// `virtual - physical` for linearly mapped RAM. 0 = identity.
static OFFSET: AtomicU64 = AtomicU64::new(0);
/// A [`Translate`] function pointer as an integer, or 0 for none.
static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Declares that RAM is mapped at `virtual = physical + offset`.
///
/// # Safety
///
/// Every buffer later passed to a driver of this crate must be mapped that way, over its
/// whole length. A wrong offset makes the host read or write the wrong guest memory.
pub unsafe fn set_offset(offset: u64) {
    OFFSET.store(offset, Ordering::Relaxed);
}

/// Installs a translation function; it takes precedence over [`set_offset`].
///
/// # Safety
///
/// `f` must return the guest-physical address backing the virtual address it is given, and
/// every buffer later passed to a driver of this crate must be physically contiguous from
/// that address over its whole length. A wrong answer makes the host read or write the
/// wrong guest memory.
pub unsafe fn set_translate(f: Translate) {
    HOOK.store(f as usize, Ordering::Release);
}

/// The guest-physical address of `ptr` under the current translation.
#[inline]
pub fn virt_to_phys<T: ?Sized>(ptr: *const T) -> u64 {
    let va = ptr as *const u8 as usize;
    let hook = HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: `HOOK` is only ever written by `set_translate`, with a `Translate`
        // function pointer converted to `usize`; 0 (no function) was excluded above. Function
        // pointers and `usize` have the same size on every target this crate supports.
        let f: Translate = unsafe { core::mem::transmute::<usize, Translate>(hook) };
        return f(va);
    }
    (va as u64).wrapping_sub(OFFSET.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The translation is global state: one test exercises every mode in order so that
    // parallel tests cannot observe each other's settings.
    #[test]
    fn identity_then_offset_then_hook() {
        assert_eq!(virt_to_phys(0x1234 as *const u8), 0x1234);

        // SAFETY: test only; no buffer is handed to a host.
        unsafe { set_offset(0xffff_8000_0000_0000) };
        assert_eq!(
            virt_to_phys(0xffff_8000_0010_0000usize as *const u8),
            0x10_0000
        );

        fn low_bits(va: usize) -> u64 {
            (va & 0xffff) as u64
        }
        // SAFETY: test only; no buffer is handed to a host.
        unsafe { set_translate(low_bits) };
        assert_eq!(virt_to_phys(0xabcd_1234usize as *const u8), 0x1234);
    }
}
