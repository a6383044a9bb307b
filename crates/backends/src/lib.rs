//! Host I/O backends for pvkit's device models: the byte stores and host endpoints that do
//! real I/O, kept out of the I/O-free `pvkit-devices` (whose [`pvkit_devices::BlockBackend`]
//! trait they implement).
//!
//! * [`file`]: [`FileBackend`], a raw disk image file or host block device (positional
//!   I/O straight into guest memory, `fdatasync` on flush).
//!
//! TAP network backends go here next.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod file;
pub mod overlay;

pub use file::FileBackend;
pub use overlay::{create_overlay, OverlayBackend, OverlayKind};
