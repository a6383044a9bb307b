//! The kernel's GDT and TSS: the guest runtime's ([`pvkit_guest::rt::gdt`]).
//!
//! | selector | descriptor                  |
//! |----------|-----------------------------|
//! | `0x08`   | kernel code (64-bit, DPL 0) |
//! | `0x10`   | kernel data (DPL 0)         |
//! | `0x1b`   | user data (DPL 3)           |
//! | `0x23`   | user code (64-bit, DPL 3)   |
//! | `0x28`   | TSS (16 bytes)              |
//!
//! The user pair is ordered data-then-code so that `SYSRET` works with
//! `STAR[63:48] = 0x10`; [`crate::user`] enters ring 3 with `iretq` and these selectors. The
//! TSS gives the double fault its own IST stack (so a kernel stack overflow is still
//! reported) and provides `RSP0`, the stack the CPU switches to on an exception from ring 3.
//! There is no I/O permission bitmap, so ring 3 reaches ports only through IOPL.

pub use pvkit_guest::rt::gdt::{init, KERNEL_CODE, KERNEL_DATA, USER_CODE, USER_DATA};
