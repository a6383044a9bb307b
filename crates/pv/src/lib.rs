//! # pvkit-pv — host-side backends of the pvkit PV devices
//!
//! Pure functions and state machines over guest memory: no KVM, no threads, no I/O of
//! their own beyond the [`pvkit_devices::BlockBackend`] and the `std::io::Write` console
//! sink they are handed. The VMM calls them from its exit handler (hypercalls, doorbells)
//! or from an I/O thread (eventfd doorbells, polled rings).
//!
//! | module          | serves                                                            |
//! |-----------------|-------------------------------------------------------------------|
//! | [`guest_range`] | the one validation of every guest `(addr, len)`: no wrap, in RAM  |
//! | [`wire`]        | `ByteValued` access to the ABI structures ([`wire::Wire`])        |
//! | [`ring`]        | the host consumer of an ABI ring ([`ring::RingConsumer`])         |
//! | [`block`]       | `BlockIo`, `BlockCapacity` and the block ring                     |
//! | [`console`]     | `ConsoleWrite` and the console ring                               |
//! | [`net`]         | `NetSend` and the network transmit and receive rings              |
//! | [`clock`]       | the PV clock page                                                 |
//! | [`state`]       | saved state of the rings and PV devices, rebuilt over restored RAM |
//!
//! # Trust boundary
//!
//! Guest memory is hostile and concurrently mutable. Every value read from it is copied
//! once into host memory and validated there; errors go back to the guest as
//! [`pvkit_abi::Status`] codes, never as panics. Every access goes through vm-memory's
//! bounds- and overflow-checked `Bytes` interface, after an explicit
//! [`guest_range::GuestRange`] check, so a rejected request has no side effect. No
//! allocation is sized by a guest value: the block device bounces through one
//! `MAX_REQUEST_BYTES` buffer allocated at creation, the console through a 4 KiB stack
//! buffer, and the ring consumer copies one fixed-size slot at a time.
//!
//! With the `test-utils` feature, `test_utils::GuestProducer` is a reference
//! implementation of the guest side of a ring, for other crates' tests.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Guest data is hostile: no panic on it (the same deny set as pvkit-vmm).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod block;
pub mod clock;
pub mod console;
pub mod guest_range;
pub mod net;
pub mod ring;
pub mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod wire;

#[cfg(test)]
mod proptests;

pub use block::{BlockDevice, BlockError, BlockRing};
pub use clock::{ClockError, ClockSample, PvClockPage};
pub use console::{ConsoleError, ConsoleRing};
pub use guest_range::{GuestRange, RangeError};
pub use net::{NetDevice, NetError, NetRxRing, NetStats, NetTxRing};
pub use ring::{Batch, RingConsumer, RingError, REGION_ALIGN};
pub use state::{BlockState, ConsoleState, PvClockState, RingState, StateError};
pub use wire::{AbiPod, Wire};
