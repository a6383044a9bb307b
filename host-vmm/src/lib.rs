//! # pvkit VMM
//!
//! A small KVM-based VMM for pvkit guests: it loads an ELF kernel that carries the pvkit
//! ABI note, boots it in long mode on one vCPU, serves the hypercalls of
//! [`pvkit_abi::call`] and an emulated 16550 UART, and counts every exit.
//!
//! Modules, one job each:
//! - [`platform`]: which KVM, CPU, TSC rate; opening `/dev/kvm`.
//! - [`memory`]: guest RAM and the boot area ([`pvkit_abi::boot`]).
//! - [`elf`]: the validating ELF loader and ABI-note check.
//! - [`vcpu`]: VM and vCPU creation, boot registers, CPUID, one `KVM_RUN` step.
//! - [`exit`]: exit handling as a plain function ([`exit::handle_exit`]).
//! - [`ledger`]: exit counts by kind, snapshots and deltas.
//! - [`bus`]: port I/O routing. [`emulated`]: the ATA disk and the PIT on the bus.
//! - [`disk`]: the disk image shared by the ATA disk and the PV block device.
//! - [`paravirt`]: the PV block device, rings and clock page ([`hypercall::PvDevices`]);
//!   [`iothread`]: the thread serving ioeventfd doorbells and polled rings.
//! - [`serial`]: the COM1 UART; [`console`]: the output sink it shares with the PV console.
//! - [`hypercall`]: hypercall decoding and dispatch; [`mod@bench`]: phase/sample records.
//! - [`stop`]: why a guest stopped, and the process exit status for it.
//! - [`watchdog`]: kicking the vCPU out of `KVM_RUN`. [`signals`]: SIGINT/SIGTERM stop the VM.
//! - [`seccomp`]: the per-thread system call filters of the vCPU and I/O threads.
//! - [`vm`]: [`vm::VmConfig`] → [`vm::run`] → [`vm::RunOutcome`].
//! - [`stats`]: the `--stats` report. [`guests`]: the guests built with the VMM.
//! - [`sync`]: the one poison-tolerant mutex lock.
//! - [`testing`]: synthetic guest images for tests.
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

pub mod bench;
pub mod bus;
pub mod console;
pub mod disk;
pub mod elf;
pub mod emulated;
pub mod exit;
pub mod guests;
pub mod hypercall;
pub mod iothread;
pub mod ledger;
pub mod memory;
pub mod paravirt;
pub mod platform;
#[cfg(test)]
mod proptests;
pub mod runner;
pub mod seccomp;
pub mod serial;
pub mod signals;
pub mod stats;
pub mod stop;
pub mod sync;
pub mod testing;
pub mod vcpu;
pub mod vm;
pub mod watchdog;

pub use bench::PhaseObserver;
pub use disk::DiskConfig;
pub use stop::StopReason;
pub use vm::{run, ConsoleKind, KernelSource, RunOutcome, VmConfig, VmError};
