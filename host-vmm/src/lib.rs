//! # pvkit VMM
//!
//! A small KVM-based VMM for pvkit guests: it loads an ELF kernel that carries the pvkit
//! ABI note, boots it in long mode on vCPU 0, serves the hypercalls of
//! [`pvkit_abi::call`] and an emulated 16550 UART, and counts every exit.
//!
//! Modules, from the bottom up ([`arch`] imports nothing of this crate; [`vstate`] imports
//! [`arch`], and [`exit`] for the `KVM_RUN` step; [`vm`] assembles everything):
//! - [`arch`] (x86_64): the CPUID table ([`arch::x86_64::cpuid`]), the long-mode boot
//!   registers ([`arch::x86_64::regs`]), the boot area in RAM — GDT, page tables, boot info
//!   ([`arch::x86_64::layout`]) — and the host TSC ([`arch::x86_64::tsc`]).
//! - [`vstate`]: KVM state, one file per KVM object: opening `/dev/kvm` and the platform
//!   ([`vstate::kvm`]), the VM fd and memory slots ([`vstate::vm`]), a vCPU and one
//!   `KVM_RUN` step ([`vstate::vcpu`]), guest RAM ([`vstate::memory`]).
//! - [`elf`]: the validating ELF loader and ABI-note check.
//! - [`exit`]: exit handling as a plain function ([`exit::handle_exit`]).
//! - [`ledger`]: exit counts by kind, snapshots and deltas.
//! - [`bus`]: port I/O routing. [`emulated`]: the ATA disk and the PIT on the bus.
//! - [`disk`]: the disk image shared by the ATA disk and the PV block device.
//! - [`devices`]: the PV devices, each one type behind [`devices::pv::PvDevice`] on the
//!   [`devices::pv::HypercallBus`] (console, block, clock, rings and doorbells), and the
//!   pseudo-devices (bench markers, null port); [`devices::assemble`] registers them.
//!   [`iothread`]: the thread serving ioeventfd doorbells and polled rings.
//! - [`serial`]: the COM1 UART; [`console`]: the output sink it shares with the PV console.
//! - [`hypercall`]: the core hypercall dispatcher (the rest goes to the bus).
//! - [`stop`]: why a guest stopped, and the process exit status for it.
//! - [`watchdog`]: kicking the vCPU out of `KVM_RUN`. [`signals`]: SIGINT/SIGTERM stop the VM.
//! - [`seccomp`]: the per-thread system call filters of the vCPU and I/O threads.
//! - [`vm`]: [`vm::VmConfig`] → [`vm::run`] → [`vm::RunOutcome`]: assembles a VM, runs
//!   vCPU 0 and parks the others ([`vm::VmConfig::vcpus`]).
//! - [`sync`]: the one poison-tolerant mutex lock.
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

pub mod arch;
pub mod bus;
pub mod console;
pub mod devices;
pub mod disk;
pub mod elf;
pub mod emulated;
pub mod exit;
pub mod guests;
pub mod hypercall;
pub mod iothread;
pub mod ledger;
#[cfg(test)]
mod proptests;
pub mod seccomp;
pub mod serial;
pub mod signals;
pub mod stop;
pub mod sync;
pub mod testing;
pub mod vm;
pub mod vstate;
pub mod watchdog;

/// The benchmark records under their old path (`crate::bench`); they live with the bench
/// markers in [`devices::pseudo`].
pub use devices::pseudo::bench;

/// Guest RAM under its old path (`crate::memory`), which the device and hypercall modules
/// still import; new code names [`vstate::memory`].
pub use vstate::memory;

pub use bench::PhaseObserver;
pub use disk::DiskConfig;
pub use stop::StopReason;
pub use vm::{run, ConsoleKind, KernelSource, RunOutcome, VmConfig, VmError};
