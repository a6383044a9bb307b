//! Snapshots: a paused VM as two files in a directory, and a VM rebuilt from them.
//!
//! - [`state`]: [`state::VmState`], everything but RAM (vCPU registers and KVM's in-kernel
//!   state, every device model, the ledger), in a versioned, checksummed file.
//! - [`capture`]: reading that state from a paused VM and writing a snapshot directory.
//! - [`memory_file`]: guest RAM as a sparse file, and RAM mapped from it copy-on-write.
//! - [`restore`]: reading a state file back and setting KVM state into a new VM.
//!
//! Pausing the vCPUs at a clean point is [`crate::vm::control`]'s job; the builder rebuilds
//! a VM from a snapshot (`VmConfig::restore`). docs/DESIGN.md ("Lifecycle") has the picture.

mod blob;
pub mod capture;
pub mod memory_file;
pub mod restore;
pub mod state;

pub use capture::{MEMORY_FILE, STATE_FILE};
pub use state::VmState;
