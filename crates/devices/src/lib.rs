//! I/O-free device models for pvkit.
//!
//! Every device here is a pure state machine in the style of `vm-superio`: the VMM's run
//! loop hands it a port access (and, for timers, the current time) and it answers from
//! its registers. Devices own no threads, no KVM handles and no timers; the only I/O is
//! the disk [`BlockBackend`] a disk model is constructed with. That keeps them trivially
//! unit-testable with plain values and a fake clock.
//!
//! # The guest is hostile
//!
//! Every value that comes from the guest (port numbers, access sizes, register values,
//! sector counts, LBAs) is validated before use: address ranges are checked with
//! overflow-safe arithmetic before any backend I/O, nothing guest-derived is used for
//! unchecked indexing, `unwrap`/`expect` never touch guest input, and malformed or
//! out-of-order command sequences end in a device-level error the guest can observe
//! (for ATA, `ERR` with `ABRT`/`IDNF`), never a panic.
//!
//! # Devices
//!
//! * [`block_backend`]: [`BlockBackend`] with [`MemBackend`] (the image file backend,
//!   which does I/O, is `pvkit_backends::FileBackend`).
//! * [`ata`]: [`Ata`], the primary-channel ATA master disk, PIO only.
//! * [`pit`]: [`Pit`], the Intel 8254 interval timer.
//! * [`ne2000`]: [`Ne2000`], an NE2000 (DP8390) network card on ISA I/O `0x300`: remote
//!   DMA, receive ring, transmit; frames in and out through the VMM's network backend.
//! * [`uart`]: [`UartState`], the saved state of the 16550 UART (the model is vm-superio's).
//! * [`state`]: the rules of saved device state, [`StateError`] and [`VmClockState`].
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

pub mod ata;
pub mod block_backend;
pub mod ne2000;
pub mod pit;
pub mod state;
pub mod uart;

pub use ata::{
    Ata, AtaState, ATA_PRIMARY_CMD_BASE, ATA_PRIMARY_CMD_LEN, ATA_PRIMARY_CTRL, SECTOR_SIZE,
};
pub use block_backend::{BackendError, BlockBackend, MemBackend};
pub use ne2000::{Ne2000, Ne2000State, Ne2000Stats, RxOutcome, NE2000_IO_BASE, NE2000_IO_LEN};
pub use pit::{Pit, PitState, PIT_FREQ_HZ};
pub use state::{StateError, VmClockState};
pub use uart::UartState;
