//! SMP (`smp=emulated|pv cpus=N`): the bootstrap processor starts vCPUs 1..N-1, each sets
//! itself up and reports in once, and the BSP prints how long the bring-up of all of them
//! took (one `rdtsc` before the first start, one after the last report). With `ipi=` the
//! BSP then runs the IPI workload ([`ipi`]).
//!
//! - `emulated`: INIT-SIPI-SIPI through the xAPIC ICR (MMIO at `0xfee00300`/`0x310`, the
//!   in-kernel LAPIC) with start page [`TRAMPOLINE`] (vector `0x80`). The AP begins in real
//!   mode in the trampoline copied there, which climbs to protected mode (its own GDT),
//!   then to long mode over the boot page tables, takes its stack by its APIC ID and
//!   jumps to [`ap_main`].
//! - `pv`: one `VcpuUp` hypercall per AP: the VMM starts it in long mode at [`ap_main`]
//!   on its stack with `RDI` = its index.
//!
//! [`TRAMPOLINE`] = `0x8_0000`: the first page above the boot stack
//! (`BOOT_STACK_TOP`, [`pvkit_abi::boot`]), below the legacy video hole at `0xa_0000`; the
//! kernel does not use the boot area after entry and the heap lies above the kernel.
//!
//! Each AP, in [`ap_main`]: loads its own GDT and TSS and the shared IDT and sets its `GS`
//! base ([`percpu`]), registers its own PV clock page (one `RegisterRegion` exit, when the
//! host offers the clock), enables its LAPIC in x2APIC mode ([`lapic`]), writes
//! `[cpuN] up, clock page ok|none` with one `ConsoleWrite`, adds one to [`UP`] and halts
//! with interrupts on (`sti; hlt`: in the in-kernel LAPIC, no exit) to serve IPIs.
//!
//! From the start of the bring-up every console line carries its CPU's prefix
//! (`[cpu0] `, `[cpu1] `, ...; [`crate::console`]), in the same single write as the line.

pub mod ipi;
pub mod lapic;
pub mod percpu;

use core::sync::atomic::{AtomicU32, Ordering};

use crate::Stack;
use pvkit_abi::boot::{BootInfo, PAGE_TABLES};
use pvkit_guest::tsc::rdtsc;

/// How the APs are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpMode {
    /// INIT-SIPI-SIPI, real-mode trampoline.
    Emulated,
    /// The `VcpuUp` hypercall.
    Pv,
}

impl SmpMode {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            SmpMode::Emulated => "emulated",
            SmpMode::Pv => "pv",
        }
    }
}

/// The most CPUs the kernel has stacks for.
pub const MAX_CPUS: usize = 8;
/// Stack size per AP.
const AP_STACK_SIZE: usize = 16 * 1024;
/// The SIPI start page (guest-physical; vector [`TRAMPOLINE`] >> 12).
pub const TRAMPOLINE: u64 = 0x8_0000;
/// The xAPIC MMIO base.
const APIC: u64 = 0xfee0_0000;

/// The APs' stacks, by CPU index (index 0 unused: the BSP has its own). Only used
/// through `RSP`.
static mut AP_STACKS: [Stack<AP_STACK_SIZE>; MAX_CPUS] =
    [const { Stack([0; AP_STACK_SIZE]) }; MAX_CPUS];

/// APs that reported in.
pub static UP: AtomicU32 = AtomicU32::new(0);

/// The initial `RSP` of CPU `cpu`'s stack (aligned as just after a `call`).
pub(crate) fn stack_top(cpu: usize) -> u64 {
    (&raw const AP_STACKS) as u64 + ((cpu + 1) * AP_STACK_SIZE) as u64 - 8
}

/// An AP's first Rust code (both ways), with `RDI` = its CPU index (below [`MAX_CPUS`]:
/// the trampoline checks the APIC ID, `VcpuUp` passes the index the BSP chose).
extern "C" fn ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    percpu::init_ap(cpu);
    let clock = percpu::register_clock(cpu);
    let x2apic = lapic::x2apic_offered();
    if x2apic {
        lapic::enable_x2apic();
    }
    println!(
        "up, clock page {}",
        if clock.is_some() { "ok" } else { "none" }
    );
    UP.fetch_add(1, Ordering::AcqRel);
    ipi::ap_idle(x2apic)
}

/// The calling CPU's index, for the console prefix.
pub fn current_cpu() -> usize {
    percpu::current()
}

// The real-mode trampoline, assembled at its link address and copied to TRAMPOLINE: every
// address in it is computed relative to `ap_tramp_start` plus TRAMPOLINE.
core::arch::global_asm!(
    ".pushsection .text.ap_trampoline, \"ax\", @progbits",
    ".global ap_tramp_start",
    ".global ap_tramp_end",
    ".code16",
    "ap_tramp_start:",
    "    cli",
    "    mov ax, cs",
    "    mov ds, ax",
    // lgdt [disp16] (DS = the trampoline's segment): LLVM takes no label difference in a
    // memory operand.
    "    .byte 0x0f, 0x01, 0x16",
    "    .word 2f - ap_tramp_start",
    "    mov eax, cr0",
    "    or eax, 1",
    "    mov cr0, eax",
    // ljmpl 0x08:pm32
    "    .byte 0x66, 0xea",
    "    .long 3f - ap_tramp_start + {tramp}",
    "    .word 0x08",
    ".code32",
    "3:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    mov eax, cr4",
    "    or eax, 0x20",
    "    mov cr4, eax",
    "    mov eax, {pml4}",
    "    mov cr3, eax",
    "    mov ecx, 0xc0000080",
    "    rdmsr",
    "    or eax, 0x900",
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000000",
    "    mov cr0, eax",
    // ljmp 0x18:lm64
    "    .byte 0xea",
    "    .long 4f - ap_tramp_start + {tramp}",
    "    .word 0x18",
    ".code64",
    "4:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    mov eax, 1",
    "    cpuid",
    "    shr ebx, 24",
    "    cmp ebx, {max}",
    "    jae 5f",
    "    mov edi, ebx",
    "    lea eax, [ebx + 1]",
    "    imul eax, eax, {size}",
    "    mov rsp, offset {stacks}",
    "    add rsp, rax",
    "    sub rsp, 8",
    "    mov rax, offset {main}",
    "    jmp rax",
    "5:  cli",
    "    hlt",
    "    jmp 5b",
    "    .balign 8",
    "1:  .quad 0",
    "    .quad 0x00cf9a000000ffff",
    "    .quad 0x00cf92000000ffff",
    "    .quad 0x00af9a000000ffff",
    "2:  .word 31",
    "    .long 1b - ap_tramp_start + {tramp}",
    "ap_tramp_end:",
    ".popsection",
    tramp = const TRAMPOLINE,
    pml4 = const PAGE_TABLES,
    max = const MAX_CPUS,
    size = const AP_STACK_SIZE,
    stacks = sym AP_STACKS,
    main = sym ap_main,
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
}

/// Writes `v` to the xAPIC register at offset `reg`.
fn apic_write(reg: u64, v: u32) {
    // SAFETY: the LAPIC's MMIO page, identity-mapped by the boot page tables; KVM's
    // in-kernel LAPIC serves it.
    unsafe { core::ptr::write_volatile((APIC + reg) as *mut u32, v) };
}

/// Starts CPU `cpu` with INIT-SIPI-SIPI.
fn init_sipi(cpu: usize) {
    let dest = (cpu as u32) << 24;
    let vector = (TRAMPOLINE >> 12) as u32;
    for icr in [0x4500, 0x8500, 0x4600 | vector, 0x4600 | vector] {
        apic_write(0x310, dest);
        apic_write(0x300, icr);
    }
}

/// Brings up CPUs 1..`cpus` the `mode` way and prints the time and the count; then runs
/// the IPI workload `ipi` if asked.
pub fn run(mode: SmpMode, cpus: usize, ipi: Option<ipi::IpiArgs>, boot: &BootInfo) {
    let (up, cycles) = bring_up(mode, cpus, boot);
    let us = match boot.tsc_khz {
        0 => 0,
        khz => cycles * 1000 / khz,
    };
    println!(
        "smp: mode={} cpus={} up={up} time_us={us} cycles={cycles}",
        mode.name(),
        cpus.clamp(1, MAX_CPUS)
    );
    if let Some(args) = ipi {
        ipi::run(args, 1 + up as usize, boot);
    }
}

/// Brings up CPUs 1..`cpus` (at most [`MAX_CPUS`]) the `mode` way: sets up the BSP's
/// per-CPU data, the IPI gates and the console prefix, starts the APs and waits (about
/// 10 s at most) until they have reported in. Returns how many did and the TSC cycles from
/// the first start to the last report.
pub fn bring_up(mode: SmpMode, cpus: usize, boot: &BootInfo) -> (u32, u64) {
    let cpus = cpus.clamp(1, MAX_CPUS);
    percpu::init_bsp();
    ipi::install();
    crate::console::enable_cpu_prefix();
    // The APs to wait for: all with INIT-SIPI (no answer), those the VMM accepted with PV.
    let mut aps = (cpus - 1) as u32;
    if mode == SmpMode::Emulated {
        // SAFETY: copy the trampoline (a few hundred bytes of .text) to the free page at
        // TRAMPOLINE, below 1 MiB in the identity map; nothing else uses that page.
        unsafe {
            let start = &raw const ap_tramp_start;
            let len = (&raw const ap_tramp_end) as usize - start as usize;
            core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        }
        // Software-enable the BSP's LAPIC (spurious vector 0xff).
        apic_write(0xf0, 0x1ff);
    }
    let t0 = rdtsc();
    for cpu in 1..cpus {
        match mode {
            SmpMode::Emulated => init_sipi(cpu),
            SmpMode::Pv => {
                if let Err(s) = pvkit_guest::hypercall::vcpu_up(
                    cpu as u64,
                    ap_main as *const () as u64,
                    stack_top(cpu),
                    cpu as u64,
                ) {
                    println!("smp: vcpu_up({cpu}) failed: {s:?}");
                    aps -= 1;
                }
            }
        }
    }
    // Bounded wait: about 10 s of TSC (or 2^34 cycles without a rate).
    let limit = match boot.tsc_khz {
        0 => 1 << 34,
        khz => khz * 10_000_000 / 1000,
    };
    let mut t1 = t0;
    while UP.load(Ordering::Acquire) < aps && t1.wrapping_sub(t0) < limit {
        core::hint::spin_loop();
        t1 = rdtsc();
    }
    let t1 = rdtsc().max(t1);
    (UP.load(Ordering::Acquire), t1.wrapping_sub(t0))
}
