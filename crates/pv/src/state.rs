//! Saved state of the PV devices: the ring consumers, the PV console, the PV block device
//! and the PV clock page.
//!
//! The rules are those of [`pvkit_devices::state`]: a plain serde structure per model,
//! versioned; what the model does I/O through (guest RAM, the console sink, the disk
//! backend) is re-attached on rebuild; a state is hostile input, validated as a guest
//! registration is (alignment, inside the re-attached RAM, ring size), and refused with
//! [`StateError`], never a panic.
//!
//! Rebuilding writes nothing to guest memory: guest RAM is restored as it was saved, and a
//! ring is saved only while it is quiescent (`rsp_prod == req_cons`, see
//! [`RingConsumer::is_quiescent`]), which a [`RingConsumer`] always is between two polls.

use pvkit_devices::state::check_version;
use pvkit_devices::BlockBackend;
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemory;

use crate::block::{BlockDevice, BlockRing};
pub use crate::clock::state::PvClockState;
use crate::console::ConsoleRing;
use crate::guest_range::RangeError;
pub use crate::ring::state::RingState;
#[cfg(doc)]
use crate::ring::RingConsumer;

/// Why a saved PV device state was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The version or a field is invalid (see [`pvkit_devices::StateError`]).
    #[error(transparent)]
    Model(#[from] pvkit_devices::StateError),
    /// A saved region is not inside the guest RAM it was re-attached to; restore the RAM
    /// the state was saved with.
    #[error("{device} state: saved region not in guest RAM: {source}")]
    Region {
        /// The model.
        device: &'static str,
        /// Why the range is not in RAM.
        source: RangeError,
    },
}

/// `Err(Invalid)` for `device` unless `rule` holds.
pub(crate) fn ensure(
    device: &'static str,
    rule: bool,
    what: &'static str,
) -> Result<(), StateError> {
    Ok(pvkit_devices::state::ensure(device, rule, what)?)
}

/// Saved state of the PV console: its ring, if the guest registered one. The sink (the
/// VMM's console) is re-attached by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// [`ConsoleState::VERSION`].
    pub version: u32,
    /// The console ring.
    pub ring: Option<RingState>,
}

impl ConsoleState {
    /// The version of this structure.
    pub const VERSION: u32 = 1;

    /// The state of a console whose ring is `ring`.
    pub fn save(ring: Option<&ConsoleRing>) -> Self {
        Self {
            version: Self::VERSION,
            ring: ring.map(ConsoleRing::state),
        }
    }

    /// Rebuilds the console ring over the restored guest RAM `mem`.
    pub fn restore<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
    ) -> Result<Option<ConsoleRing>, StateError> {
        check_version("PV console", self.version, Self::VERSION)?;
        self.ring
            .as_ref()
            .map(|r| ConsoleRing::from_state(mem, r))
            .transpose()
    }
}

/// Saved state of the PV block device: the disk size it served and its ring, if any. The
/// backend is re-attached by the caller and must have the same size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// [`BlockState::VERSION`].
    pub version: u32,
    /// Capacity in 512-byte sectors when saved.
    pub capacity_sectors: u64,
    /// The block ring.
    pub ring: Option<RingState>,
}

impl BlockState {
    /// The version of this structure.
    pub const VERSION: u32 = 1;
}

impl<B: BlockBackend> BlockDevice<B> {
    /// The state of the device and of its ring (`ring`, if the guest registered one).
    pub fn state(&self, ring: Option<&BlockRing>) -> BlockState {
        BlockState {
            version: BlockState::VERSION,
            capacity_sectors: self.capacity_sectors(),
            ring: ring.map(BlockRing::state),
        }
    }

    /// Rebuilds the device over `backend` (the same disk: its size is checked) and its
    /// ring over the restored guest RAM `mem`.
    pub fn from_state<M: GuestMemory + ?Sized>(
        state: &BlockState,
        backend: B,
        mem: &M,
    ) -> Result<(Self, Option<BlockRing>), StateError> {
        const DEVICE: &str = "PV block";
        check_version(DEVICE, state.version, BlockState::VERSION)?;
        let device = Self::new(backend);
        let attached = device.capacity_sectors();
        if attached != state.capacity_sectors {
            return Err(pvkit_devices::StateError::DiskSize {
                device: DEVICE,
                saved: state.capacity_sectors,
                attached,
            }
            .into());
        }
        let ring = state
            .ring
            .as_ref()
            .map(|r| BlockRing::from_state(mem, r))
            .transpose()?;
        Ok((device, ring))
    }
}

#[cfg(test)]
mod tests;
