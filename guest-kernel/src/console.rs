//! The kernel console: the 16550 UART or the PV console, chosen once at boot.
//!
//! `print!`/`println!` cost, per line: on the PV console one hypercall (the pieces are
//! formatted into a 256-byte stack buffer first); on the UART one LSR read and one THR
//! write per byte, no `\n` translation. [`write()`] hands a whole buffer to the device in a
//! single driver call.
//!
//! Locking: the UART has state (and bytes of concurrent lines must not interleave), so it
//! lives in a `spin::Mutex`. The PV console is stateless and each hypercall carries a whole
//! buffer, so it is used without a lock: that keeps the interpreted ring-0 path of a write
//! down to a load, a branch and the driver. Interrupts stay disabled in this kernel, so the
//! lock is never re-entered; fault and panic reports go to the host directly, never here.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use pvkit_abi::{ports::COM1, Status};
use pvkit_guest::{port::Pio, BufferedWriter, PvConsole, Uart16550};
use spin::Mutex;

/// Which console device to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConsoleKind {
    /// The emulated 16550 UART at COM1.
    Uart = 1,
    /// The pvkit PV console (`ConsoleWrite` hypercall).
    Pv = 2,
}

impl ConsoleKind {
    /// The name used on the command line and in the banner.
    pub const fn name(self) -> &'static str {
        match self {
            ConsoleKind::Uart => "uart",
            ConsoleKind::Pv => "pv",
        }
    }
}

/// The active [`ConsoleKind`] as its `u8`; 0 until [`init`] (output is dropped).
static ACTIVE: AtomicU8 = AtomicU8::new(0);
/// Whether lines carry their CPU's prefix (`[cpuN] `), from the start of SMP on.
static CPU_PREFIX: AtomicBool = AtomicBool::new(false);
/// The UART, when it is the console.
static UART: Mutex<Option<Uart16550<Pio>>> = Mutex::new(None);

/// Brings up the console `requested` on the command line, or the default: the PV console
/// when the pvkit CPUID signature is present (one `cpuid`, no exit to the VMM), else the
/// UART. Returns the kind chosen. The UART costs its initialization port writes here.
pub fn init(requested: Option<ConsoleKind>) -> ConsoleKind {
    let kind = requested.unwrap_or_else(|| {
        if pvkit_guest::cpuid::signature().is_some() {
            ConsoleKind::Pv
        } else {
            ConsoleKind::Uart
        }
    });
    if kind == ConsoleKind::Uart {
        // SAFETY: the kernel runs in ring 0 and COM1 belongs to this console only; a UART
        // has no DMA, so its port accesses cannot touch memory.
        let mut uart = unsafe { Uart16550::new(COM1) };
        uart.init();
        *UART.lock() = Some(uart);
    }
    ACTIVE.store(kind as u8, Ordering::Release);
    kind
}

/// Makes the UART the console unless it already is (for a panic report on a stock
/// hypervisor, which may come before [`init`] or with no console at all).
pub fn ensure_uart() {
    if ACTIVE.load(Ordering::Acquire) != ConsoleKind::Uart as u8 {
        init(Some(ConsoleKind::Uart));
    }
}

/// Writes `bytes` in one driver call: one hypercall on the PV console (per 64 KiB), two
/// port accesses per byte on the UART.
#[inline]
pub fn write(bytes: &[u8]) -> Result<(), Status> {
    match ACTIVE.load(Ordering::Acquire) {
        k if k == ConsoleKind::Pv as u8 => PvConsole::new().write(bytes).map(drop),
        k if k == ConsoleKind::Uart as u8 => {
            if let Some(uart) = &mut *UART.lock() {
                uart.write(bytes);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// From now on every `print!` starts with the calling CPU's prefix, `[cpuN] ` (call on
/// the BSP once its per-CPU data is set, [`crate::smp::percpu::init_bsp`]).
pub fn enable_cpu_prefix() {
    CPU_PREFIX.store(true, Ordering::Release);
}

/// Writes the CPU prefix to `w` if it is enabled.
fn prefix(w: &mut impl Write) {
    if CPU_PREFIX.load(Ordering::Acquire) {
        let _ = write!(w, "[cpu{}] ", crate::smp::current_cpu());
    }
}

/// Formats `args` to the console, after the CPU prefix if enabled: on the PV console in
/// one hypercall (per 256 bytes). Used by `print!`. Console errors have nowhere to go: the
/// text is dropped.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    match ACTIVE.load(Ordering::Acquire) {
        k if k == ConsoleKind::Pv as u8 => {
            let mut w = BufferedWriter::<_, 256>::new(PvConsole::new());
            prefix(&mut w);
            let _ = w.write_fmt(args);
            let _ = w.flush();
        }
        k if k == ConsoleKind::Uart as u8 => {
            if let Some(uart) = &mut *UART.lock() {
                prefix(uart);
                let _ = uart.write_fmt(args);
            }
        }
        _ => {}
    }
}

/// Prints to the kernel console.
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::print_fmt(format_args!($($arg)*))
    };
}

/// Prints to the kernel console, with a `\n` (sent as is, one byte).
macro_rules! println {
    () => {
        print!("\n")
    };
    ($($arg:tt)*) => {
        print!("{}\n", format_args!($($arg)*))
    };
}
