//! Saved state of the PV clock page: [`PvClockState`], [`PvClockPage::state`] and
//! [`PvClockPage::from_state`].
//!
//! The host keeps where the record is and the seqlock version it last published; the
//! record itself is in guest RAM. The time the page publishes comes from the VM clock
//! (`system_ns`) and the guest TSC, both restored by the VMM: resume the VM clock from its
//! saved [`pvkit_devices::VmClockState`] so that `system_time` never goes backwards.

use core::mem::size_of;

use pvkit_abi::clock::PvClock;
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemory;

use super::PvClockPage;
use crate::guest_range::GuestRange;
use crate::ring::REGION_ALIGN;
use crate::state::{ensure, StateError};

const DEVICE: &str = "PV clock";

/// Saved state of a [`PvClockPage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvClockState {
    /// Guest-physical address of the record (4 KiB aligned).
    pub gpa: u64,
    /// The seqlock version last published (even).
    pub seq: u32,
}

impl PvClockPage {
    /// The host-private state of the page.
    pub fn state(&self) -> PvClockState {
        PvClockState {
            gpa: self.record.addr(),
            seq: self.version,
        }
    }

    /// Rebuilds the page over the restored guest RAM `mem`, checking `state` as a
    /// registration is checked; nothing is read or written in guest memory.
    pub fn from_state<M: GuestMemory + ?Sized>(
        mem: &M,
        state: &PvClockState,
    ) -> Result<Self, StateError> {
        ensure(
            DEVICE,
            state.gpa.is_multiple_of(REGION_ALIGN),
            "address not 4 KiB aligned",
        )?;
        ensure(
            DEVICE,
            state.seq.is_multiple_of(2),
            "odd (mid-update) version",
        )?;
        let record =
            GuestRange::new(mem, state.gpa, size_of::<PvClock>() as u64).map_err(|source| {
                StateError::Region {
                    device: DEVICE,
                    source,
                }
            })?;
        Ok(Self {
            record,
            version: state.seq,
            scale: None,
        })
    }
}
