//! hello-os: a custom OS on the pvkit guest runtime, in a few lines.
//!
//! It shares nothing with the pvkit guest kernel. Its one dependency, `pvkit-guest` with
//! the `runtime` feature, supplies the entry point, a guarded boot stack, exception
//! reporting, the panic handler and `println!` (PV console, or the 16550 UART without
//! one). It prints one line and exits 42.
//!
//! The command line selects a deliberate failure, to show what the runtime reports:
//! `overflow` (a runaway recursion: "stack overflow"), `pagefault` (a read of unmapped
//! memory: vector 14 with its CR2), `panic`.
#![no_std]
#![no_main]

use pvkit_guest::{println, rt::BootInfo};

pvkit_guest::entry!(main);

/// The address `pagefault` reads: above the 4 GiB boot identity map, so not mapped.
const UNMAPPED: u64 = 0x1_2345_6000;

fn main(boot: &'static BootInfo) -> i32 {
    match boot.cmdline() {
        Ok("overflow") => {
            println!("recursing");
            return recurse(0) as i32;
        }
        Ok("pagefault") => {
            // SAFETY: deliberately faulting: the address is not mapped, so the read raises
            // #PF, which the runtime reports; it never completes.
            return unsafe { (UNMAPPED as *const u64).read_volatile() } as i32;
        }
        Ok("panic") => panic!("hello-os was asked to panic"),
        _ => {}
    }
    println!("hello from a custom OS over the pvkit PV console");
    42
}

/// Recurses until the stack runs out (each frame keeps a 256-byte buffer alive).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let buf = core::hint::black_box([depth; 32]);
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + buf[7]
}
