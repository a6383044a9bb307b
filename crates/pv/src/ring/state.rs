//! Saved state of a ring consumer: [`RingState`], [`RingConsumer::state`] and
//! [`RingConsumer::from_state`].
//!
//! Everything the host keeps privately: where the ring is, its size (read once at
//! registration and never again), the consumer index, the host's `host_flags` and whether
//! the ring was found broken. The guest-owned header words and the slots are in guest RAM,
//! which is restored separately. The service budget is host policy, not state: a rebuilt
//! consumer has none until the caller sets it.

use core::marker::PhantomData;
use core::mem::size_of;
use std::sync::atomic::Ordering;

use pvkit_abi::ring::{offsets, ring_bytes, BROKEN, HOST_POLLING};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestMemory};

use super::{RingConsumer, RingError, REGION_ALIGN};
use crate::guest_range::GuestRange;
use crate::state::{ensure, StateError};
use crate::wire::AbiPod;

const DEVICE: &str = "ring";

/// Saved state of a [`RingConsumer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingState {
    /// Guest-physical address of the ring (4 KiB aligned).
    pub gpa: u64,
    /// Number of slots: a power of two in `1..=MAX_RING_SIZE`.
    pub size: u32,
    /// The host's consumer index (`req_cons`), which is also `rsp_prod`.
    pub consumed: u32,
    /// The host's `host_flags` (`HOST_POLLING`, `BROKEN`).
    pub host_flags: u32,
    /// The ring was found corrupt and is not serviced.
    pub broken: bool,
}

impl<Req: AbiPod, Rsp: AbiPod> RingConsumer<Req, Rsp> {
    /// The host-private state of the ring.
    pub fn state(&self) -> RingState {
        RingState {
            gpa: self.region.addr(),
            size: self.size,
            consumed: self.consumed,
            host_flags: self.host_flags,
            broken: self.broken,
        }
    }

    /// Rebuilds a consumer over the restored guest RAM `mem`, checking `state` as
    /// [`RingConsumer::new`] checks a registration (alignment, size, inside RAM) but
    /// reading and writing nothing in guest memory.
    pub fn from_state<M: GuestMemory + ?Sized>(
        mem: &M,
        state: &RingState,
    ) -> Result<Self, StateError> {
        ensure(
            DEVICE,
            state.gpa.is_multiple_of(REGION_ALIGN),
            "address not 4 KiB aligned",
        )?;
        let bytes = ring_bytes(state.size, size_of::<Req>(), size_of::<Rsp>()).ok_or(
            pvkit_devices::StateError::Invalid {
                device: DEVICE,
                what: "size not a power of two in 1..=256",
            },
        )?;
        ensure(
            DEVICE,
            state.host_flags & !(HOST_POLLING | BROKEN) == 0,
            "unknown host_flags bits",
        )?;
        ensure(
            DEVICE,
            state.broken == (state.host_flags & BROKEN != 0),
            "broken flag and BROKEN bit disagree",
        )?;
        let region =
            GuestRange::new(mem, state.gpa, bytes as u64).map_err(|source| StateError::Region {
                device: DEVICE,
                source,
            })?;
        Ok(Self {
            region,
            size: state.size,
            consumed: state.consumed,
            host_flags: state.host_flags,
            broken: state.broken,
            budget: None,
            byte_budget: None,
            _types: PhantomData,
        })
    }

    /// Whether the ring is quiescent: `rsp_prod == req_cons`, every request the host
    /// consumed has its response published. Only a quiescent ring's state is complete.
    pub fn is_quiescent<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<bool, RingError> {
        let rsp_prod: u32 = mem.load(self.field(offsets::RSP_PROD), Ordering::Acquire)?;
        Ok(rsp_prod == self.consumed)
    }
}
