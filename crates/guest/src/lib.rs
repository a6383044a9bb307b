//! # pvkit-guest — guest-side pvkit drivers for any `no_std` x86_64 kernel
//!
//! Everything a kernel needs to run over the pvkit VMM, without the kernel itself:
//!
//! - [`addr`]: the guest-virtual → guest-physical translation used for every buffer handed
//!   to the host (identity by default);
//! - [`hypercall`]: safe wrappers around the calls of [`pvkit_abi::call`];
//! - [`cpuid`]: detection of pvkit through the CPUID hypervisor leaves;
//! - [`console`]: the PV console ([`console::PvConsole`]), one hypercall per buffer;
//! - [`uart16550`]: a real 8250/16550 UART driver, for the emulated console and for hardware;
//! - [`port`]: the port-I/O seam the UART is written against (tests substitute a recorder);
//! - [`writer`]: the [`writer::ByteSink`] trait both consoles implement, and a fixed-buffer
//!   [`writer::BufferedWriter`] that turns one formatted line into one device write;
//! - [`fault`]: building a [`pvkit_abi::fault::FaultReport`] without allocation, reporting
//!   CPU exceptions and panics;
//! - [`cmdline`]: tokenizing the boot command line (`key=value` and bare flags);
//! - [`ring`]: the guest end of a request/response ring (producer, notification rule,
//!   doorbell, response polling), generic over the device's types;
//! - [`block`]: the PV block device, synchronous ([`block::PvBlock`]) or over its ring
//!   ([`block::BlockRing`]);
//! - [`console_ring`]: the PV console over its ring;
//! - [`balloon`]: the memory balloon, inflate and deflate batched up to 512 ranges a call;
//! - [`clock`]: the PV clock page and kvmclock, read vDSO-style (usable from ring 3);
//! - [`tsc`]: `rdtsc`, plain and ordered;
//! - [`ata`]: a polling ATA PIO driver (the emulated disk, or hardware);
//! - [`pit`]: the 8254 PIT as a time source, extended to a monotonic tick count;
//! - [`pv_net`]: the PV network device over its TX and RX rings, and `NetSend`;
//! - [`ne2000`]: a polling NE2000 (DP8390) network driver (the emulated NIC, or hardware).
//! - `rt` (feature `runtime`): a guest runtime — entry macro (`entry!`), guarded boot
//!   stack, GDT/TSS/IDT reporting every exception, panic handler, `print!`/`println!`,
//!   and with feature `heap` a global allocator;
//! - [`pvh`]: the PVH entry note and 32-bit trampoline ([`pvh_entry!`]), so the same ELF
//!   boots with `qemu-system-x86_64 -kernel`, and `isa-debug-exit` for the exit code;
//! - [`Aligned4K`]: 4 KiB-aligned memory for rings and shared pages, usable in a `static`.
//!
//! Nothing here allocates, and nothing here assumes a particular kernel layout. The crate
//! also builds for the host target (it is part of the host workspace), where its pure parts
//! are unit-tested; the parts that execute `in`/`out`/`cpuid` are x86_64 only.
//!
//! ## Cost model
//!
//! On kvm_pvm, guest ring-0 code is interpreted (~1 µs per instruction), so the hot paths
//! here are kept short: a console write is one hypercall with no copy, a UART byte is
//! exactly one LSR read and one THR write when the transmitter is ready, and nothing
//! loops over a buffer in software that a single instruction can do.
#![cfg_attr(not(test), no_std)]

pub mod addr;
mod aligned;
pub mod ata;
pub mod balloon;
pub mod block;
pub mod clock;
pub mod cmdline;
#[cfg(target_arch = "x86_64")]
pub mod console;
pub mod console_ring;
#[cfg(target_arch = "x86_64")]
pub mod cpuid;
pub mod fault;
#[cfg(target_arch = "x86_64")]
pub mod hypercall;
pub mod ne2000;
pub mod pit;
pub mod port;
pub mod pv_net;
pub mod pvh;
pub mod ring;
#[cfg(all(feature = "runtime", target_arch = "x86_64"))]
pub mod rt;
pub mod spinlock;
pub mod steal;
#[cfg(target_arch = "x86_64")]
pub mod tsc;
pub mod uart16550;
pub mod writer;

pub use aligned::{Aligned4K, RingMemory};
/// The ABI crate this crate speaks (re-exported so guests need only one dependency).
pub use pvkit_abi;

#[cfg(target_arch = "x86_64")]
pub use console::PvConsole;
pub use uart16550::Uart16550;
pub use writer::{BufferedWriter, ByteSink};

/// Stops this CPU for good: interrupts off, `hlt` forever.
///
/// The last resort after a call that must not return (exit, fault report) did return, which
/// only a broken host does, or when running without a pvkit host at all.
#[cfg(target_arch = "x86_64")]
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` touches no memory and no stack. With interrupts disabled the
        // CPU stays halted (an NMI resumes it, and the loop halts it again).
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
