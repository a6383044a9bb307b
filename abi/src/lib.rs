//! # pvkit ABI v2 — the wire contract between a paravirtualized guest and the pvkit VMM
//!
//! This crate is the specification in code. Everything a guest and the host exchange is
//! defined here, once: the hypercall calling convention ([`call`]), the status codes
//! ([`status`]), discovery through CPUID and feature bits ([`cpuid`]), the boot contract
//! ([`boot`]), the ELF note that stamps the ABI version into a guest ([`note`]), the shared
//! request/response ring ([`ring`]) and the structures carried by each device
//! ([`console`], [`block`], [`net`], [`clock`], [`balloon`], [`fault`], [`mod@bench`]).
//!
//! Rules that hold for every item:
//! - Every shared structure is `#[repr(C)]`, has only fixed-width integer fields with no
//!   implicit padding, and its size and field offsets are asserted at compile time.
//! - Every number on the wire has a typed form with `TryFrom`; unknown values decode to an
//!   error, never to a panic.
//! - The ABI version ([`ABI_VERSION`]) is independent of this crate's semver. A change that
//!   an old peer cannot understand bumps the major version; additions bump the minor version.
//!   Within a major, feature bits are the only gate.
//! - Hypercall numbers, queues and pages are grouped by device class
//!   ([`call::DeviceClass`]).
//!
//! With the `guest` feature, [`guest`] provides the call stubs for x86_64 guests.
//!
//! The human-readable form of this contract is `docs/ABI.md`.
#![no_std]

pub mod balloon;
pub mod bench;
pub mod block;
pub mod boot;
pub mod call;
pub mod clock;
pub mod console;
pub mod cpuid;
pub mod fault;
#[cfg(all(feature = "guest", target_arch = "x86_64"))]
pub mod guest;
pub mod net;
pub mod note;
pub mod ports;
pub mod ring;
pub mod spinlock;
pub mod status;
mod version;

pub use call::Hypercall;
pub use status::Status;
pub use version::{AbiVersion, ABI_VERSION, ABI_VERSION_MAJOR, ABI_VERSION_MINOR};

/// Asserts at compile time that `$ty` is exactly `$size` bytes and that each listed field
/// sits at the given offset. Used for every structure in this crate.
#[macro_export]
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr $(, $field:ident @ $off:expr)* $(,)?) => {
        const _: () = {
            assert!(::core::mem::size_of::<$ty>() == $size);
            $( assert!(::core::mem::offset_of!($ty, $field) == $off); )*
        };
    };
}
