//! Plain-old-data access to the ABI structures in guest memory.
//!
//! `pvkit-abi` is `no_std` and must not depend on vm-memory, so its structures do not
//! implement [`ByteValued`]. The orphan rule also forbids implementing that foreign trait for
//! foreign types here. Instead this module defines a local marker, [`AbiPod`], implemented
//! for exactly the ABI structures this crate reads or writes, and one transparent newtype,
//! [`Wire`], that is `ByteValued` for every `AbiPod` type. Code that copies an ABI structure
//! in or out of guest memory goes through `Wire<T>`; everything else handles the plain `T`.

use core::mem::size_of;

use pvkit_abi::bench::{BenchSample, OpRecord};
use pvkit_abi::block::{BlockRequest, BlockResponse, BlockSegment, MAX_SEGMENTS};
use pvkit_abi::clock::PvClock;
use pvkit_abi::console::{ConsoleRequest, ConsoleResponse};
use pvkit_abi::fault::{FaultReport, MESSAGE_MAX};
use pvkit_abi::net::{NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse};
use pvkit_abi::ring::RingHeader;
use vm_memory::ByteValued;

/// An ABI structure that may be copied to and from guest memory as raw bytes.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]` (or `#[repr(transparent)]`), consist only of integer
/// fields and arrays of integers (every bit pattern is a valid value), and contain no
/// padding bytes, so that reading a value from arbitrary guest bytes is sound and writing
/// one never exposes uninitialized host memory to the guest.
pub unsafe trait AbiPod: Copy + Default + Send + Sync + 'static {}

/// Asserts at compile time that a structure's size is the sum of its field sizes, i.e. that
/// the compiler inserted no padding. Complements the ABI crate's offset asserts.
macro_rules! assert_no_padding {
    ($ty:ty { $($field:ty),+ $(,)? }) => {
        const _: () = assert!(size_of::<$ty>() == 0 $(+ size_of::<$field>())+);
    };
}

assert_no_padding!(RingHeader { u32, u32, u32, u32, u32, u32, [u32; 10] });
assert_no_padding!(BlockSegment { u64, u32, u32 });
assert_no_padding!(BlockRequest { u64, u32, u32, u64, [BlockSegment; MAX_SEGMENTS] });
assert_no_padding!(BlockResponse { u64, i64, u64 });
assert_no_padding!(ConsoleRequest { u64, u32, u32 });
assert_no_padding!(ConsoleResponse { i64, u32, u32 });
assert_no_padding!(NetTxRequest { u64, u32, u32 });
assert_no_padding!(NetTxResponse { i64, u32, u32 });
assert_no_padding!(NetRxRequest { u64, u32, u32 });
assert_no_padding!(NetRxResponse { i64, u32, u32 });
assert_no_padding!(PvClock { u32, u32, u64, u64, u32, i8, u8, [u8; 2] });
assert_no_padding!(FaultReport { u32, u32, u64, u64, u64, [u8; MESSAGE_MAX] });
assert_no_padding!(BenchSample {
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u32,
    u32,
    u64,
    u64
});
assert_no_padding!(OpRecord { u64, u64, u32, u32 });

// SAFETY: `RingHeader` is `#[repr(C)]`, all fields are `u32` or `[u32; 10]`, and it has no
// padding (asserted above and by the ABI crate's layout asserts).
unsafe impl AbiPod for RingHeader {}
// SAFETY: `BlockSegment` is `#[repr(C)]` with fields `u64, u32, u32` and no padding
// (asserted above).
unsafe impl AbiPod for BlockSegment {}
// SAFETY: `BlockRequest` is `#[repr(C)]`, its fields are integers and an array of
// `BlockSegment` (itself plain integers), and it has no padding (asserted above).
unsafe impl AbiPod for BlockRequest {}
// SAFETY: `BlockResponse` is `#[repr(C)]` with fields `u64, i64, u64` and no padding.
unsafe impl AbiPod for BlockResponse {}
// SAFETY: `ConsoleRequest` is `#[repr(C)]` with fields `u64, u32, u32` and no padding.
unsafe impl AbiPod for ConsoleRequest {}
// SAFETY: `ConsoleResponse` is `#[repr(C)]` with fields `i64, u32, u32` and no padding.
unsafe impl AbiPod for ConsoleResponse {}
// SAFETY: `NetTxRequest` is `#[repr(C)]` with fields `u64, u32, u32` and no padding.
unsafe impl AbiPod for NetTxRequest {}
// SAFETY: `NetTxResponse` is `#[repr(C)]` with fields `i64, u32, u32` and no padding.
unsafe impl AbiPod for NetTxResponse {}
// SAFETY: `NetRxRequest` is `#[repr(C)]` with fields `u64, u32, u32` and no padding.
unsafe impl AbiPod for NetRxRequest {}
// SAFETY: `NetRxResponse` is `#[repr(C)]` with fields `i64, u32, u32` and no padding.
unsafe impl AbiPod for NetRxResponse {}
// SAFETY: `PvClock` is `#[repr(C)]`, every field is an integer or an integer array
// (`u32, u32, u64, u64, u32, i8, u8, [u8; 2]`) and it has no padding (asserted above).
unsafe impl AbiPod for PvClock {}
// SAFETY: `FaultReport` is `#[repr(C)]` with fields `u32, u32, u64, u64, u64, [u8; 256]`
// and no padding (asserted above).
unsafe impl AbiPod for FaultReport {}
// SAFETY: `BenchSample` is `#[repr(C)]`, every field is a `u64` or `u32`, and it has no
// padding (asserted above).
unsafe impl AbiPod for BenchSample {}
// SAFETY: `OpRecord` is `#[repr(C)]` with fields `u64, u64, u32, u32` and no padding.
unsafe impl AbiPod for OpRecord {}

/// An ABI structure as it travels through guest memory: `ByteValued` for vm-memory's
/// `read_obj`/`write_obj`, with exactly the layout of `T`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wire<T: AbiPod>(pub T);

// SAFETY: `Wire<T>` is `#[repr(transparent)]` over `T`, and `T: AbiPod` guarantees that `T`
// is `#[repr(C)]`, made only of plain integers (any bit pattern is valid) and free of
// padding. `Copy + Send + Sync` hold because `AbiPod` requires them of `T`.
unsafe impl<T: AbiPod> ByteValued for Wire<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_has_the_abi_layout() {
        assert_eq!(size_of::<Wire<BlockRequest>>(), size_of::<BlockRequest>());
        assert_eq!(
            core::mem::align_of::<Wire<PvClock>>(),
            core::mem::align_of::<PvClock>()
        );
        let rsp = BlockResponse {
            id: 0x0102_0304_0506_0708,
            status: -22,
            bytes: 512,
        };
        let bytes = Wire(rsp).as_slice().to_vec();
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &(-22i64).to_le_bytes());
    }
}
