//! # pvkit-guest-kernel — the pvkit test and benchmark guest
//!
//! A small `no_std` kernel for the pvkit VMM. The VMM enters `_start` in long mode with
//! `RDI` = the guest-physical address of a [`BootInfo`] (see [`pvkit_abi::boot`]); the kernel
//! switches to its own stack, loads its GDT/TSS and IDT, validates the boot information,
//! parses the command line, brings up the chosen console and the heap, runs the mode the
//! command line asks for ([`modes`]) and exits through the `Exit` hypercall.
//!
//! The same ELF also boots on a stock hypervisor through its PVH entry ([`pvh`]): there it
//! has no feature bits, uses only emulated devices and exits through `isa-debug-exit`.
//!
//! Ring-0 code here is interpreted by KVM on kvm_pvm (~1 µs per instruction), so start-up
//! does only what the modes need: no memory is zeroed in software (the loader zero-fills
//! `.bss`), the heap is one free-list node, and the command line is parsed in one pass.
//!
//! One job per module: [`gdt`], [`interrupts`], [`msr`] (a fault-tolerant `wrmsr`),
//! [`user`] (ring-3 calls), [`heap`], [`statics`] (page-aligned static buffers),
//! [`console`], [`cmdline`], [`modes`], [`ata`] and [`pit`] (the emulated devices'
//! instances), [`mod@bench`] (the benchmark workloads). Drivers (UART, PV console, PV block,
//! rings, clocks, ATA, PIT, hypercalls, fault reports) come from `pvkit-guest`.
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod console;
mod ata;
mod balloon;
mod bench;
mod blkirq;
mod cmdline;
mod counter;
mod diskcheck;
mod emuload;
mod gdt;
mod heap;
mod interrupts;
mod lock;
mod modes;
mod msr;
mod net;
mod pit;
mod pvh;
mod smp;
mod statics;
mod user;
mod workload;

use pvkit_abi::boot::{BootInfo, CMDLINE_MAX, IDENTITY_MAP_SIZE};
use pvkit_abi::cpuid::Features;
use pvkit_guest::cmdline::Cmdline;

pvkit_abi::abi_note!();

/// The kernel's version, printed in the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Size of the kernel stack `_start` switches to.
const STACK_SIZE: usize = 64 * 1024;

/// A 16-byte aligned stack in `.bss`.
#[repr(C, align(16))]
pub struct Stack<const N: usize>([u8; N]);

/// The kernel stack. Only ever used through `RSP` (set by `_start`), never through Rust
/// references.
static mut KERNEL_STACK: Stack<STACK_SIZE> = Stack([0; STACK_SIZE]);

// The entry point. The VMM enters with `RSP = 0x7_fff8` (`ENTRY_RSP`: aligned as just after a
// `call`, docs/ABI.md "Boot contract") on a boot stack in low memory that the kernel does not
// own. So: switch to our own 64 KiB stack and `call` into Rust, keeping `RDI`.
core::arch::global_asm!(
    ".pushsection .text._start, \"ax\", @progbits",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "    lea rsp, [rip + {stack} + {size}]",
    "    xor ebp, ebp",
    "    call {main}",
    "    ud2",
    ".size _start, . - _start",
    ".popsection",
    stack = sym KERNEL_STACK,
    size = const STACK_SIZE,
    main = sym kernel_main,
);

/// The Rust entry point, called by `_start` with `RDI` from the VMM.
extern "C" fn kernel_main(boot_info: *const BootInfo) -> ! {
    // First the tables that make faults reportable: anything before this triple-faults.
    gdt::init();
    interrupts::init();

    let boot = pvkit_guest::rt::validate_boot_info(boot_info);
    kernel_run(boot)
}

/// The kernel after its entry (pvkit's `_start` or the PVH entry, [`pvh`]) set up the GDT,
/// the IDT and a [`BootInfo`]: command line, console, heap, the mode.
fn kernel_run(boot: &'static BootInfo) -> ! {
    let cmdline = boot_cmdline(boot);
    let args = match cmdline::parse(&cmdline) {
        Ok(args) => args,
        Err(bad) => panic!("bad command line value {bad:?} in {:?}", cmdline.as_str()),
    };

    // Every PV path checks its feature bit: `console=pv` without the PV console (e.g. on
    // QEMU) falls back to the UART.
    let features = Features::from_bits_truncate(boot.features);
    let requested = args
        .console
        .filter(|&k| k != console::ConsoleKind::Pv || features.contains(Features::CONSOLE));
    let console = console::init(requested);
    heap::init(boot);
    modes::run(&args, console, boot)
}

/// The command line named by `BootInfo`, or an empty one if there is none. Panics if it
/// lies outside guest RAM or is not UTF-8.
fn boot_cmdline(boot: &BootInfo) -> Cmdline<'static> {
    let (addr, len) = (boot.cmdline_addr, boot.cmdline_len);
    if addr == 0 || len == 0 {
        return Cmdline::new("");
    }
    let ram = boot.mem_size.min(IDENTITY_MAP_SIZE);
    if len >= CMDLINE_MAX || addr > ram || len > ram - addr {
        panic!("bad command line at {addr:#x}, {len} bytes");
    }
    // SAFETY: the range was just checked to lie inside guest RAM under the identity map; the
    // VMM wrote the command line there before entry and nothing writes it afterwards.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
    match Cmdline::from_bytes(bytes) {
        Some(c) => c,
        None => panic!("command line is not UTF-8"),
    }
}

/// Ends the VM with `code`: the `Exit` hypercall on pvkit; on a stock hypervisor (booted
/// through [`pvh`]) QEMU's `isa-debug-exit` device.
pub fn exit(code: u8) -> ! {
    if pvkit_guest::pvh::stock_host() {
        pvkit_guest::pvh::debug_exit(code)
    }
    pvkit_guest::hypercall::exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if pvkit_guest::pvh::stock_host() {
        // No pvkit host to report to: say it on the UART (brought up if the panic came
        // before the console) and exit with a failure status.
        console::ensure_uart();
        println!("PANIC: {info}");
        pvkit_guest::pvh::debug_exit(pvkit_guest::pvh::FAILURE_EXIT)
    }
    pvkit_guest::fault::report_panic(info)
}
