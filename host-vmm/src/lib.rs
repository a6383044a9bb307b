//! # pvkit VMM
//!
//! A small KVM-based VMM for pvkit guests: it loads an ELF kernel that carries the pvkit
//! ABI note, boots it in long mode on vCPU 0, serves the hypercalls of
//! [`pvkit_abi::call`] and an emulated 16550 UART, and counts every exit.
//!
//! Modules, in layers from the bottom up (a module imports only modules of lower layers;
//! the `layering` unit test fails on an import cycle between top-level modules, and
//! docs/DESIGN.md draws the picture):
//! - [`runtime`]: why a guest stopped ([`runtime::stop`]), the watchdog, SIGINT/SIGTERM,
//!   the seccomp filters, the one poison-tolerant lock. [`arch`] (x86_64): CPUID, boot
//!   registers, the boot area in RAM, the host TSC.
//! - [`vstate`]: KVM state, one file per KVM object: `/dev/kvm` and the platform, the VM fd
//!   and memory slots, a vCPU and one `KVM_RUN` step handed out as an
//!   [`Exit`](vstate::vcpu::Exit) value, guest RAM.
//! - [`loader`]: the validating ELF loader. [`bus`]: the port and MMIO buses (`u64`
//!   addresses, `&self` devices). [`io`]: host I/O: the console output sink, the disk
//!   image, the event loop.
//! - [`exit`]: exit handling ([`exit::handle_exit`]: exit value → action, through the buses
//!   and a hypercall handler) and the exit ledger ([`exit::ledger`]).
//! - [`devices`]: the legacy devices ([`devices::legacy`]: UART, ATA, PIT, VM clock), the PV
//!   devices, each one type behind [`devices::pv::PvDevice`] on the
//!   [`devices::pv::HypercallBus`] (console, block, clock, rings and doorbells), and the
//!   pseudo-devices (bench markers, null port); [`devices::assemble`] registers them.
//!   [`hypercall`]: the core hypercall dispatcher (the rest goes to the bus); [`iothread`]:
//!   the rings as a subscriber of the I/O event loop.
//! - [`vm`]: [`vm::VmConfig`] → [`vm::builder`] (assembles a [`vm::machine::Vm`], shared by
//!   the vCPU threads) → [`vm::run`] (runs vCPU 0, parks the others, supervises) →
//!   [`vm::RunOutcome`].
//! - [`guests`]: the guests built with the VMM. [`testing`]: synthetic guest images for tests.
//!
//! Not here: the `pvkit` command line, the `pvkit bench` runner and the `--stats` report
//! live in the `pvkit` crate (`cli/`); this library depends on no CLI, progress-bar or
//! report crate.
//!
//! Trust boundary: everything the guest controls (memory, registers, port data) is hostile
//! input. It is validated before use and errors go back to the guest as status codes;
//! the VMM never panics on guest data.
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod api;
pub mod arch;
pub mod bus;
pub mod debug;
pub mod devices;
pub mod exit;
pub mod guests;
pub mod hypercall;
pub mod io;
pub mod iothread;
#[cfg(test)]
mod layering;
pub mod loader;
pub mod migration;
#[cfg(test)]
mod proptests;
pub mod runtime;
pub mod snapshot;
pub mod testing;
pub mod vm;
pub mod vstate;

/// The benchmark records under their old path (`crate::bench`); they live with the bench
/// markers in [`devices::pseudo`].
pub use devices::pseudo::bench;

pub use bench::PhaseObserver;
pub use io::disk::DiskConfig;
pub use runtime::stop::StopReason;
pub use vm::{run, ConsoleKind, KernelSource, NicModel, RunOutcome, VmConfig, VmError};
