//! KVM structures as raw bytes ([`KvmBlob`]) and back.

use super::state::KvmBlob;

/// A KVM structure that is plain C data: no pointers, no padding-sensitive invariants, and
/// every bit pattern a valid value.
///
/// # Safety
/// Implement only for `#[repr(C)]` kvm-bindings structures made of integers, integer
/// arrays and unions of those.
pub unsafe trait KvmPod: Sized {}

// SAFETY: each is a `#[repr(C)]` kvm-bindings structure of integers, arrays of integers and
// unions of those (the irqchip), with no pointers: any bytes are a valid value.
unsafe impl KvmPod for kvm_bindings::kvm_regs {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_bindings::kvm_sregs {}
// SAFETY: as above (`region` is `[u32; 1024]`; the flexible array after it is empty).
unsafe impl KvmPod for kvm_bindings::kvm_xsave {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_bindings::kvm_xcrs {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_bindings::kvm_lapic_state {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_bindings::kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_bindings::kvm_irqchip {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_bindings::kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_bindings::kvm_clock_data {}

/// The bytes of `value`.
pub fn to_blob<T: KvmPod>(value: &T) -> KvmBlob {
    let n = std::mem::size_of::<T>();
    // SAFETY: `value` is a live `T` of `n` bytes; `KvmPod` types are plain data, so reading
    // their bytes (padding included: kvm-bindings zero-initialises with `Default`, and KVM
    // wrote the rest) is reading initialised memory as `u8`.
    let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), n) };
    KvmBlob(bytes.to_vec())
}

/// The `T` in `blob`, or `None` if its size is not `T`'s.
pub fn from_blob<T: KvmPod>(blob: &KvmBlob) -> Option<T> {
    if blob.0.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the buffer holds exactly `size_of::<T>()` bytes and every bit pattern is a
    // valid `T` (`KvmPod`); `read_unaligned` copes with the `Vec`'s alignment.
    Some(unsafe { std::ptr::read_unaligned(blob.0.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size_check() {
        let r = kvm_bindings::kvm_regs {
            rip: 0x1234,
            rflags: 2,
            ..Default::default()
        };
        let b = to_blob(&r);
        assert_eq!(b.0.len(), std::mem::size_of::<kvm_bindings::kvm_regs>());
        let back: kvm_bindings::kvm_regs = from_blob(&b).unwrap();
        assert_eq!(back.rip, 0x1234);
        assert!(from_blob::<kvm_bindings::kvm_sregs>(&b).is_none());
    }
}
