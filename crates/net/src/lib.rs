//! # pvkit-net — host network backends
//!
//! The host end of a guest NIC (emulated NE2000 or PV net): whatever the guest transmits is
//! handed to a [`NetBackend`], and whatever the backend receives is delivered to the guest.
//! Two backends:
//!
//! | module       | backend                                                                 |
//! |--------------|-------------------------------------------------------------------------|
//! | [`tap`]      | [`tap::TapBackend`]: a real TAP device (`/dev/net/tun`) inside a network namespace, with an address on the host side; needs root or `CAP_NET_ADMIN` |
//! | [`loopback`] | [`loopback::LoopbackBackend`]: an in-VMM peer that answers ARP, ICMP echo and UDP echo, or reflects/sinks every frame; needs no privileges |
//!
//! [`host_rtt`] makes the loopback peer a UDP echo client of the guest, timed by the host
//! clock (the bench's host-side round trips).
//!
//! [`netns`] creates, names, enters and deletes network namespaces without an external
//! `ip` binary; [`bridge`] makes the host bridge that connects many guests' TAP devices.
//!
//! # Trust boundary
//!
//! Frames from the guest are hostile, and so are frames from the host side of a TAP device
//! (anything in the namespace can send them). Every frame is length-checked against
//! [`MAX_FRAME_LEN`] before it goes anywhere; the loopback responder parses with smoltcp's
//! checked wire accessors and answers only well-formed requests with valid checksums.
//! Nothing blocks: a backend that cannot take a frame drops it and counts the drop
//! ([`NetCounters`]); queues are fixed-size, allocated once.
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

pub mod backend;
pub mod bridge;
pub mod host_rtt;
mod ifconfig;
pub mod loopback;
pub mod netns;
#[cfg(feature = "test-utils")]
pub mod ping;
pub mod tap;

pub use backend::{
    BackendError, DropReason, NetBackend, NetCounters, TxOutcome, ETH_HEADER_LEN, MAX_FRAME_LEN,
    MIN_FRAME_LEN, MTU,
};
