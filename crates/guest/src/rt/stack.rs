//! The boot stack and its guard page.
//!
//! `_start` (emitted by [`crate::entry!`]) switches to [`BOOT_STACK`]: [`GUARD_SIZE`] bytes
//! of guard page, then [`STACK_SIZE`] bytes of stack, all in `.bss` (zero-filled by the
//! loader, nothing is written in software). [`protect`] unmaps the guard page: the 2 MiB
//! page of the boot identity map that holds it is split into 4 KiB pages (one page table,
//! 512 entries, written once) and the guard's entry is cleared. A stack overflow then
//! faults on the guard page instead of running into whatever lies below the stack, and the
//! exception handlers ([`super::trap`]) report it as a stack overflow.

use core::cell::UnsafeCell;

/// Usable size of the boot stack.
pub const STACK_SIZE: usize = 64 * 1024;
/// Size of the guard page below it.
pub const GUARD_SIZE: usize = 4096;

/// The guard page and the boot stack, 4 KiB aligned. Used only through `RSP`.
#[repr(C, align(4096))]
pub struct BootStack(UnsafeCell<[u8; GUARD_SIZE + STACK_SIZE]>);
// SAFETY: Rust code never reads or writes the stack through this value; only the CPU uses
// it, through `RSP`.
unsafe impl Sync for BootStack {}

/// The boot stack (`_start` sets `RSP` to its end).
pub static BOOT_STACK: BootStack = BootStack(UnsafeCell::new([0; GUARD_SIZE + STACK_SIZE]));

/// A page table (512 entries, 4 KiB aligned).
#[repr(C, align(4096))]
struct PageTable(UnsafeCell<[u64; 512]>);
// SAFETY: written only by `protect`, once, on the boot CPU before anything else runs.
unsafe impl Sync for PageTable {}

/// The 4 KiB page table that replaces the 2 MiB page holding the guard page.
static GUARD_TABLE: PageTable = PageTable(UnsafeCell::new([0; 512]));

const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const HUGE_ADDR_MASK: u64 = 0x000f_ffff_ffe0_0000;
/// Present, writable, user, write-through, cache-disable, global, no-execute.
const KEPT_FLAGS: u64 = 0x1f | 1 << 8 | 1 << 63;

fn guard_base() -> u64 {
    BOOT_STACK.0.get() as u64
}

/// The usable boot stack, `(lowest address, top)`.
pub fn range() -> (u64, u64) {
    let lo = guard_base() + GUARD_SIZE as u64;
    (lo, lo + STACK_SIZE as u64)
}

/// Whether `addr` lies in the guard page.
pub fn in_guard(addr: u64) -> bool {
    let base = guard_base();
    addr >= base && addr < base + GUARD_SIZE as u64
}

/// Why the guard page could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardError {
    /// The page tables are not identity-mapped below 4 GiB as the boot contract says.
    TablesNotIdentityMapped(u64),
    /// A level of the walk is not present.
    NotMapped(u64),
    /// The stack is mapped by a 1 GiB page (not split by the runtime).
    GiantPage,
}

/// Reads the 8-byte entry `index` of the table at physical (= virtual) `table`.
///
/// # Safety
///
/// `table` must be a page table under the identity map.
unsafe fn entry(table: u64, index: u64) -> *mut u64 {
    (table + index * 8) as *mut u64
}

/// Unmaps the guard page (see the module documentation). Runs once, at boot, with
/// interrupts disabled, before anything else uses the pages involved.
pub fn protect() -> Result<(), GuardError> {
    let va = guard_base();
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let ident = |phys: u64| {
        if phys < pvkit_abi::boot::IDENTITY_MAP_SIZE {
            Ok(phys)
        } else {
            Err(GuardError::TablesNotIdentityMapped(phys))
        }
    };
    let pml4 = ident(cr3 & ADDR_MASK)?;
    // SAFETY: the tables are identity-mapped (checked above for each level) and only this
    // CPU uses them; entries are read and written with volatile accesses, and the TLB is
    // flushed after the change. The new page table maps every 4 KiB page of the 2 MiB
    // page to the same frame with the same flags, except the guard page, which is in
    // `.bss` and not otherwise used.
    unsafe {
        let e = entry(pml4, va >> 39 & 511).read_volatile();
        if e & PRESENT == 0 {
            return Err(GuardError::NotMapped(va));
        }
        let pdpt = ident(e & ADDR_MASK)?;
        let e = entry(pdpt, va >> 30 & 511).read_volatile();
        if e & PRESENT == 0 {
            return Err(GuardError::NotMapped(va));
        }
        if e & HUGE != 0 {
            return Err(GuardError::GiantPage);
        }
        let pd = ident(e & ADDR_MASK)?;
        let pde_ptr = entry(pd, va >> 21 & 511);
        let pde = pde_ptr.read_volatile();
        if pde & PRESENT == 0 {
            return Err(GuardError::NotMapped(va));
        }
        let index = va >> 12 & 511;
        if pde & HUGE != 0 {
            let table = GUARD_TABLE.0.get();
            let frame = pde & HUGE_ADDR_MASK;
            let flags = pde & KEPT_FLAGS;
            for i in 0..512u64 {
                (*table)[i as usize] = (frame + i * 4096) | flags;
            }
            (*table)[index as usize] &= !PRESENT;
            let table_phys = ident(table as u64)?;
            pde_ptr.write_volatile(table_phys | (pde & 0x1f));
            core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
        } else {
            let pt = ident(pde & ADDR_MASK)?;
            let pte = entry(pt, index);
            pte.write_volatile(pte.read_volatile() & !PRESENT);
            core::arch::asm!("invlpg [{}]", in(reg) va, options(nostack));
        }
    }
    Ok(())
}
