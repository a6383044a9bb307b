//! `print!` and `println!`: the PV console when the host offers it, else the 16550 UART.
//!
//! The choice is made once at start-up (before `main`) from the `BootInfo` feature bits (no exit):
//! with [`pvkit_abi::cpuid::Features::CONSOLE`] a line costs one `ConsoleWrite` hypercall
//! (pieces are formatted into a 256-byte stack buffer first); without it the UART at COM1
//! is initialized and each byte costs one LSR read and one THR write. `\n` is sent as is.
//! Before `init`, output is dropped.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};
use pvkit_abi::ports::COM1;

use crate::{BufferedWriter, PvConsole, Uart16550};

const NONE: u8 = 0;
const PV: u8 = 1;
const UART: u8 = 2;

/// Which device `print!` uses.
static ACTIVE: AtomicU8 = AtomicU8::new(NONE);

/// Picks the console: the PV console if `pv` (the host has the `CONSOLE` feature), else the
/// UART, which is initialized here.
pub(super) fn init(pv: bool) {
    if pv {
        ACTIVE.store(PV, Ordering::Release);
    } else {
        // SAFETY: the runtime runs in ring 0 and owns COM1; a UART has no DMA.
        unsafe { Uart16550::new(COM1) }.init();
        ACTIVE.store(UART, Ordering::Release);
    }
}

/// Brings up the UART if no console was chosen yet (a panic before `init`, on a stock
/// hypervisor), so that a report can still be printed.
pub(super) fn ensure_uart() {
    if ACTIVE.load(Ordering::Acquire) == NONE {
        init(false);
    }
}

/// Whether `print!` goes to the PV console (rather than the UART, or nowhere yet).
pub fn is_pv() -> bool {
    ACTIVE.load(Ordering::Acquire) == PV
}

/// Formats `args` to the console; errors have nowhere to go and drop the text. Used by
/// [`crate::print!`].
pub fn print_fmt(args: fmt::Arguments<'_>) {
    match ACTIVE.load(Ordering::Acquire) {
        PV => {
            let mut w = BufferedWriter::<_, 256>::new(PvConsole::new());
            let _ = w.write_fmt(args);
            let _ = w.flush();
        }
        UART => {
            // SAFETY: as in `init`; the UART has no state beyond its registers, and this
            // single-CPU runtime runs with interrupts disabled, so writes do not interleave.
            let _ = unsafe { Uart16550::new(COM1) }.write_fmt(args);
        }
        _ => {}
    }
}

/// Prints to the runtime's console (feature `runtime`).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::rt::console::print_fmt(::core::format_args!($($arg)*))
    };
}

/// Prints to the runtime's console with a `\n` (feature `runtime`).
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::rt::console::print_fmt(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}
