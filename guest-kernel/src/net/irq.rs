//! Device interrupts in the guest: the LAPIC (x2APIC when CPUID offers it, else xAPIC
//! MMIO), the IOAPIC redirection entry of an ISA IRQ, the legacy PIC masked, and an IDT
//! entry stub that calls a Rust handler.
//!
//! On KVM with the in-kernel irqchip every access here (x2APIC MSRs, xAPIC and IOAPIC MMIO,
//! PIC ports) is handled in the kernel: no exit to the VMM (docs/PLATFORM.md).

use core::cell::UnsafeCell;

/// `IA32_APIC_BASE`.
const APIC_BASE_MSR: u32 = 0x1b;
/// `IA32_APIC_BASE` enable bits: xAPIC (bit 11) and x2APIC (bit 10).
const APIC_ENABLE: u64 = 1 << 11;
const X2APIC_ENABLE: u64 = 1 << 10;
/// x2APIC MSRs: EOI, spurious-interrupt vector, LVT LINT0.
const X2APIC_EOI: u32 = 0x80b;
const X2APIC_SVR: u32 = 0x80f;
const X2APIC_LVT0: u32 = 0x835;
/// xAPIC MMIO base and register offsets.
const XAPIC_BASE: u64 = 0xfee0_0000;
const XAPIC_EOI: u64 = 0xb0;
const XAPIC_SVR: u64 = 0xf0;
const XAPIC_LVT0: u64 = 0x350;
/// IOAPIC MMIO: register select and window.
const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOAPIC_WIN: u64 = 0x10;
/// First redirection-table register.
const IOAPIC_REDTBL: u32 = 0x10;
/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;

/// The spurious-interrupt vector (its stub only returns).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Which LAPIC mode is in use.
static X2APIC: Flag = Flag(UnsafeCell::new(false));

struct Flag(UnsafeCell<bool>);
// SAFETY: written once by `init_lapic` before interrupts are enabled, then only read.
unsafe impl Sync for Flag {}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads an architectural MSR that exists on every CPU with a LAPIC.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// `msr` must be an MSR whose write with `value` keeps memory safety (LAPIC registers).
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: per the caller.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
            in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
    }
}

fn mmio_write(addr: u64, value: u32) {
    // SAFETY: `addr` is a LAPIC or IOAPIC register inside the boot identity map; the
    // write has no effect on memory Rust uses.
    unsafe { (addr as *mut u32).write_volatile(value) }
}

fn x2apic_offered() -> bool {
    // CPUID.1:ECX bit 21.
    let ecx = core::arch::x86_64::__cpuid(1).ecx;
    ecx & (1 << 21) != 0
}

/// Masks the legacy 8259 PICs (their IRQs go nowhere; the IOAPIC delivers instead).
fn mask_pic() {
    // SAFETY: ports 0x21 and 0xa1 are the PICs' mask registers; masking every line
    // cannot affect memory.
    unsafe {
        core::arch::asm!("out 0x21, al", "out 0xa1, al", in("al") 0xffu8,
            options(nomem, nostack, preserves_flags));
    }
}

/// Enables the LAPIC (x2APIC mode if offered), with the spurious vector
/// [`SPURIOUS_VECTOR`] and LINT0 (the PIC's ExtINT) masked; masks the PIC. Returns whether
/// x2APIC is used.
pub fn init_lapic() -> bool {
    mask_pic();
    let x2 = x2apic_offered();
    let base = rdmsr(APIC_BASE_MSR);
    // SAFETY: enabling the LAPIC (and x2APIC mode) and programming its SVR and LVT0 only
    // changes how interrupts are delivered; no handler runs before `sti`.
    unsafe {
        if x2 {
            wrmsr(APIC_BASE_MSR, base | APIC_ENABLE | X2APIC_ENABLE);
            wrmsr(X2APIC_SVR, 0x100 | u64::from(SPURIOUS_VECTOR));
            wrmsr(X2APIC_LVT0, u64::from(LVT_MASKED));
        } else {
            wrmsr(APIC_BASE_MSR, base | APIC_ENABLE);
            mmio_write(XAPIC_BASE + XAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
            mmio_write(XAPIC_BASE + XAPIC_LVT0, LVT_MASKED);
        }
        *X2APIC.0.get() = x2;
    }
    x2
}

/// Acknowledges the interrupt being handled (LAPIC EOI).
pub fn eoi() {
    // SAFETY: read-only after `init_lapic`.
    let x2 = unsafe { *X2APIC.0.get() };
    if x2 {
        // SAFETY: the x2APIC EOI register; writing 0 acknowledges.
        unsafe { wrmsr(X2APIC_EOI, 0) };
    } else {
        mmio_write(XAPIC_BASE + XAPIC_EOI, 0);
    }
}

/// Routes ISA IRQ `irq` (IOAPIC pin `irq`) to `vector` on APIC 0: fixed delivery,
/// physical destination, active high, edge-triggered, unmasked.
pub fn route_irq(irq: u8, vector: u8) {
    let reg = IOAPIC_REDTBL + 2 * u32::from(irq);
    mmio_write(IOAPIC_BASE, reg + 1);
    mmio_write(IOAPIC_BASE + IOAPIC_WIN, 0);
    mmio_write(IOAPIC_BASE, reg);
    mmio_write(IOAPIC_BASE + IOAPIC_WIN, u32::from(vector));
}

/// Masks IOAPIC pin `irq` (its redirection entry keeps vector 0, masked, as at reset).
pub fn mask_irq(irq: u8) {
    let reg = IOAPIC_REDTBL + 2 * u32::from(irq);
    mmio_write(IOAPIC_BASE, reg + 1);
    mmio_write(IOAPIC_BASE + IOAPIC_WIN, 0);
    mmio_write(IOAPIC_BASE, reg);
    mmio_write(IOAPIC_BASE + IOAPIC_WIN, LVT_MASKED);
}

// The entry stub (`crate::interrupts::interrupt_entry`).
crate::interrupts::interrupt_entry!(pvkit_net_irq_entry, super::nic_interrupt);
crate::interrupts::spurious_entry!(pvkit_spurious_entry);

/// Points `vector` at the NIC's entry stub and [`SPURIOUS_VECTOR`] at its own.
pub fn install(vector: u8) {
    // SAFETY: both stubs are complete interrupt entries (they preserve every register the
    // interrupted code may hold and end in `iretq`); IST 0: the current stack, which has
    // room as every handler runs with interrupts disabled (no nesting).
    unsafe {
        pvkit_guest::rt::trap::set_gate(vector, pvkit_net_irq_entry as *const () as u64, 0);
        pvkit_guest::rt::trap::set_gate(
            SPURIOUS_VECTOR,
            pvkit_spurious_entry as *const () as u64,
            0,
        );
    }
}

/// Enables interrupts and halts until one arrives (`sti; hlt`: no interrupt can slip in
/// between, thanks to `sti`'s one-instruction shadow), then disables them again.
pub fn wait_for_interrupt() {
    // SAFETY: the handlers are installed; they return here after `hlt`. Not `nomem`: the
    // handler changes memory the caller reads next (a compiler barrier).
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
}

/// Disables interrupts.
pub fn cli() {
    // SAFETY: only masks interrupts (a compiler barrier too).
    unsafe { core::arch::asm!("cli", options(nostack)) };
}
