//! A kernel on pvkit, made by `pvkit new`.
//!
//! `pvkit-guest`'s runtime supplies the entry point (`_start`, which calls `main` with the
//! `BootInfo` the VMM passes), a boot stack with a guard page (an overflow is reported as
//! such), an IDT that reports every exception to the host, the panic handler and
//! `println!` (the PV console, or the 16550 UART without one).
//!
//! `pvh` adds the PVH entry note: the same ELF boots with `qemu-system-x86_64 -kernel`.
//! There (no pvkit CPUID signature) `println!` uses the 16550 UART and the value `main`
//! returns ends the VM through `isa-debug-exit` (QEMU exits with `(code << 1) | 1`).
#![no_std]
#![no_main]

use pvkit_guest::{println, rt::BootInfo};

pvkit_guest::entry!(main, pvh);

fn main(boot: &'static BootInfo) -> i32 {
    // `pvkit run KERNEL -- words` passes the words as the command line.
    let cmdline = boot.cmdline().unwrap_or("");
    println!(
        "hello from {}: {} MiB of RAM, command line {:?}",
        env!("CARGO_PKG_NAME"),
        boot.mem_size >> 20,
        cmdline
    );
    // `pvkit run` exits with this status (QEMU with `(42 << 1) | 1`).
    42
}
