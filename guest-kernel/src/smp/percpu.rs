//! Per-CPU data: one [`PerCpu`] per CPU, reached through the CPU's `GS` base (`gs:[0]` holds
//! the block's own address, `gs:[8]` the CPU index), and for each application processor its
//! own GDT and TSS (with its own double-fault and NMI stacks) and PV clock page. The IDT is
//! shared: its IST slots name stacks of whichever TSS the CPU has loaded.
//!
//! The bootstrap processor keeps the runtime's GDT and TSS ([`pvkit_guest::rt::gdt`]) and
//! only gets its `GS` base ([`init_bsp`]). Everything here is written by the CPU it belongs
//! to (tables before they are loaded, counters atomically), so no lock is needed.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use pvkit_guest::clock::{ClockPage, ClockReader};
use pvkit_guest::rt::gdt::CpuTables;

use super::MAX_CPUS;

/// `IA32_GS_BASE`.
const GS_BASE_MSR: u32 = 0xc000_0101;
/// Size of each AP's IST stacks (double fault, NMI).
const IST_SIZE: usize = 8 * 1024;

/// One CPU's data. `self_ptr` and `index` come first: `gs:[0]`, `gs:[8]`.
#[repr(C, align(64))]
pub struct PerCpu {
    self_ptr: UnsafeCell<u64>,
    index: UnsafeCell<u64>,
    /// IPIs this CPU's handler ran for.
    pub received: AtomicU64,
    /// An AP's own GDT and TSS (the BSP uses the runtime's).
    tables: UnsafeCell<CpuTables>,
}

// SAFETY: `self_ptr`, `index` and `tables` are written only by the CPU the block belongs
// to, before it publishes itself (its `GS` base, then `UP`); afterwards they are only read.
// The counter is atomic.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> Self {
        Self {
            self_ptr: UnsafeCell::new(0),
            index: UnsafeCell::new(0),
            received: AtomicU64::new(0),
            tables: UnsafeCell::new(CpuTables::new()),
        }
    }
}

/// Every CPU's block, by index.
pub static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
/// Every CPU's PV clock page (the BSP's is unused: the kernel registers its own where a
/// mode needs one).
static CLOCKS: [ClockPage; MAX_CPUS] = [const { ClockPage::new() }; MAX_CPUS];

/// A 16-byte aligned stack used only through the TSS.
#[repr(C, align(16))]
struct IstStack(UnsafeCell<[u8; IST_SIZE]>);
// SAFETY: only the CPU uses the stack, through the TSS; Rust code never reads or writes it.
unsafe impl Sync for IstStack {}

/// Two IST stacks per CPU: `[cpu][0]` double fault, `[cpu][1]` NMI and machine check.
static IST_STACKS: [[IstStack; 2]; MAX_CPUS] =
    [const { [const { IstStack(UnsafeCell::new([0; IST_SIZE])) }; 2] }; MAX_CPUS];

fn ist_top(cpu: usize, slot: usize) -> u64 {
    IST_STACKS[cpu][slot].0.get() as u64 + IST_SIZE as u64
}

/// Points this CPU's `GS` base at `CPUS[cpu]` after filling its first two words.
fn set_gs(cpu: usize) {
    let block = &CPUS[cpu];
    // SAFETY: see `impl Sync for PerCpu`: this CPU owns the block and has not published
    // it yet.
    unsafe {
        *block.self_ptr.get() = block as *const PerCpu as u64;
        *block.index.get() = cpu as u64;
    }
    let addr = block as *const PerCpu as u64;
    // SAFETY: `IA32_GS_BASE` only changes what `gs:` addresses; nothing else in this
    // kernel uses `GS`.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") GS_BASE_MSR, in("eax") addr as u32,
            in("edx") (addr >> 32) as u32, options(nostack, preserves_flags));
    }
}

/// The BSP's part: its `GS` base (its tables are the runtime's).
pub fn init_bsp() {
    set_gs(0);
}

/// The calling CPU's index (from `gs:[8]`). Only after [`init_bsp`] or [`init_ap`] ran on
/// this CPU.
#[inline]
pub fn current() -> usize {
    let index: u64;
    // SAFETY: `GS` points at this CPU's `PerCpu`, whose second word is its index.
    unsafe {
        core::arch::asm!("mov {}, gs:[8]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index as usize
}

/// The calling CPU's block.
#[inline]
pub fn this() -> &'static PerCpu {
    &CPUS[current()]
}

/// An AP's part, on the AP itself with interrupts off: builds and loads its own GDT and TSS
/// (its own IST stacks), loads the shared IDT, sets its `GS` base.
pub fn init_ap(cpu: usize) {
    // SAFETY: see `impl Sync for PerCpu`: only this AP touches its tables, which are in a
    // 'static block, as are its IST stacks; interrupts are off. No `RSP0`: APs never run
    // ring 3.
    unsafe { CpuTables::load(CPUS[cpu].tables.get(), 0, ist_top(cpu, 0), ist_top(cpu, 1)) };
    pvkit_guest::rt::trap::load();
    set_gs(cpu);
}

/// Registers CPU `cpu`'s own PV clock page (`REGION_PER_VCPU`, one exit) and returns its
/// reader once the host has written it, or `None` (no clock offered, or refused).
pub fn register_clock(cpu: usize) -> Option<ClockReader> {
    let reader = pvkit_guest::clock::register(&CLOCKS[cpu]).ok()?;
    (reader.version() != 0).then_some(reader)
}

/// IPIs received by CPU `cpu`.
pub fn received(cpu: usize) -> u64 {
    CPUS[cpu].received.load(Ordering::Acquire)
}
