//! hostile-os: a guest that attacks the pvkit VMM through every input it has.
//!
//! Like hello-os it links only `pvkit-abi` and `pvkit-guest`. The command line picks a
//! scenario (`case=<name>`); each scenario makes calls, port accesses and ring updates
//! that a well-behaved guest never makes, and prints one `check <name> … ok|FAIL` line per
//! observed outcome (see [`out`]). The guest exits with the number of mismatches (capped at
//! 100), so 0 means every outcome was the one the ABI defines. The host tests
//! (`tests/hostile.rs`, `tests/faults.rs`, `tests/durability.rs`) also assert on the lines
//! and on what the VMM did (exit ledger, disk image, exit status).
//!
//! | `case=`        | what                                                                |
//! |----------------|---------------------------------------------------------------------|
//! | `hypercalls`   | unknown numbers, bad console/bench/region/block arguments           |
//! | `rings`        | block and console rings: bad slots, rewritten slots, corrupt indices |
//! | `devices`      | ATA, UART and PIT register nonsense, unclaimed and reserved ports   |
//! | `all`          | the three above, in one boot                                        |
//! | `report-fault` | `ReportFault` with a pointer outside RAM (the VM stops)             |
//! | `exit-loop`    | `Exit` in a loop (the first one must stop the VM)                   |
//! | `null-loop`    | null-port writes forever (the watchdog must stop the VM)            |
//! | `hc-loop`      | `AbiVersion` hypercalls forever (the watchdog must stop the VM)     |
//! | `durability`   | `via=pv\|ring\|ata`: rounds of writes + flush, `flushed <k>` lines   |
//! | `enospc`       | PV block and ATA writes until the host filesystem is full           |
//! | `ring-chain`   | `via=…` `then=…`: a block ring that reloads itself from the disk    |
//! | `net`          | NE2000 register nonsense and an undrained ring (needs `--net`)      |
//! | `cpu-mem`      | `VcpuUp`, `SendIpi`, `LockWait`/`LockKick`, balloon (`--vcpus 2`)   |
//! | `ap-garbage`   | vCPU 1 started at an unmapped address (the VM must stop, 126)       |
//! | `qirq`         | `QueueInterrupt` nonsense: bad queues, flags and GSIs, storms (with and without `--net --nic pv`) |
//!
//! Ring 0 is interpreted on kvm_pvm (~1 µs per instruction), so no scenario loops over
//! more than a few thousand instructions except the deliberate infinite loops.
#![no_std]
#![no_main]

mod chain;
mod cpumem;
mod devices;
mod disk;
mod hcalls;
mod net;
mod out;
mod qirq;
mod raw;
mod rings;
mod spin;

use pvkit_abi::boot::{BootInfo, BOOT_MAGIC};
use pvkit_abi::cpuid::Features;
use pvkit_guest::cmdline::Cmdline;
use pvkit_guest::hypercall;

use out::{say, Checks, Line};

pvkit_abi::abi_note!();

/// Bytes per page.
pub const PAGE: usize = 4096;
/// Pages of static, page-aligned scratch memory.
pub const PAGES: usize = 24;

/// Page-aligned memory for rings, requests and data buffers. Only ever accessed through
/// raw pointers ([`page`]), never through Rust references, because the host reads and
/// writes it behind the compiler's back.
#[repr(C, align(4096))]
pub struct Pages([[u8; PAGE]; PAGES]);

static mut MEMORY: Pages = Pages([[0; PAGE]; PAGES]);

/// The page-aligned scratch page `i` (guest-physical = virtual: identity map).
pub fn page(i: usize) -> *mut u8 {
    assert!(i < PAGES);
    // SAFETY: `i < PAGES`, so the offset stays inside the static; no reference is created.
    unsafe { (&raw mut MEMORY).cast::<u8>().add(i * PAGE) }
}

/// The first `len` bytes of page `p` on, as a slice for string port I/O.
pub fn bytes(p: usize, len: usize) -> &'static mut [u8] {
    assert!(p < PAGES && len <= (PAGES - p) * PAGE);
    // SAFETY: inside `MEMORY` (checked above). Each such slice lives only for one string
    // port instruction, while nothing else (host or guest) accesses those pages.
    unsafe { core::slice::from_raw_parts_mut(page(p), len) }
}

/// Where the synchronous `BlockIo` requests are built: page 8 + 0x100.
pub fn req_at() -> *mut u8 {
    page(8).wrapping_add(0x100)
}

/// The guest-physical address of a pointer into [`MEMORY`] (identity map).
pub fn gpa(p: *const u8) -> u64 {
    pvkit_guest::addr::virt_to_phys(p)
}

/// What every scenario needs.
pub struct Ctx {
    /// Bytes of RAM (one range from 0).
    pub mem: u64,
    /// The host's feature bits.
    pub features: Features,
    /// TSC cycles per millisecond (from `BootInfo`; a guess if the host did not know).
    pub tsc_per_ms: u64,
    /// The command line.
    pub cmdline: Cmdline<'static>,
    /// The check ledger.
    pub checks: Checks,
}

/// The entry point: align the stack as after a `call`, keep `RDI`.
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!("and rsp, -16", "call {main}", "ud2", main = sym main)
}

extern "C" fn main(boot: &'static BootInfo) -> ! {
    if boot.magic != BOOT_MAGIC {
        hypercall::exit(200);
    }
    let len = (boot.cmdline_len as usize).min(4095);
    // SAFETY: the boot contract: `cmdline_len` bytes at `cmdline_addr` are the command
    // line, in the boot area, never written again.
    let bytes = unsafe { core::slice::from_raw_parts(boot.cmdline_addr as *const u8, len) };
    let cmdline = Cmdline::from_bytes(bytes).unwrap_or(Cmdline::new(""));
    let mut ctx = Ctx {
        mem: boot.mem_size,
        features: Features::from_bits_truncate(boot.features),
        tsc_per_ms: if boot.tsc_khz == 0 {
            3_000_000
        } else {
            boot.tsc_khz
        },
        cmdline,
        checks: Checks::new(),
    };
    let case = cmdline.get("case").unwrap_or("");
    Line::new().s("hostile-os case=").s(case).emit();
    match case {
        "hypercalls" => hcalls::run(&mut ctx),
        "rings" => rings::run(&mut ctx),
        "devices" => devices::run(&mut ctx),
        "all" => {
            hcalls::run(&mut ctx);
            rings::run(&mut ctx);
            devices::run(&mut ctx);
        }
        "report-fault" => hcalls::report_fault_wild(&ctx),
        "exit-loop" => hcalls::exit_loop(),
        "null-loop" => hcalls::null_loop(),
        "hc-loop" => hcalls::hypercall_loop(),
        "durability" => disk::durability(&mut ctx),
        "enospc" => disk::enospc(&mut ctx),
        "ring-chain" => chain::run(&mut ctx),
        "net" => net::run(&mut ctx),
        "cpu-mem" => cpumem::run(&mut ctx),
        "ap-garbage" => cpumem::ap_garbage(&mut ctx),
        "qirq" => qirq::run(&mut ctx),
        _ => {
            say("unknown case");
            hypercall::exit(201);
        }
    }
    ctx.checks.summary();
    hypercall::exit(ctx.checks.failed.min(100) as u8)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    pvkit_guest::fault::report_panic(info)
}
