//! The local APIC of each CPU in x2APIC mode: enable, EOI, and the interrupt command
//! register (ICR, MSR `0x830`) for emulated IPIs. On KVM with the in-kernel irqchip every
//! access here is handled in the kernel: no exit to the VMM (docs/PLATFORM.md).

/// `IA32_APIC_BASE` and its enable bits: xAPIC (bit 11), x2APIC (bit 10).
const APIC_BASE_MSR: u32 = 0x1b;
const APIC_ENABLE: u64 = 1 << 11;
const X2APIC_ENABLE: u64 = 1 << 10;
/// x2APIC MSRs: EOI, spurious-interrupt vector, ICR.
const EOI: u32 = 0x80b;
const SVR: u32 = 0x80f;
const ICR: u32 = 0x830;
/// ICR: level assert (bit 14); destination shorthand "all excluding self" (bits 18–19).
const ICR_ASSERT: u64 = 1 << 14;
const ICR_ALL_BUT_SELF: u64 = 3 << 18;

/// The spurious-interrupt vector (its gate only returns).
pub const SPURIOUS_VECTOR: u8 = 0xff;

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
/// `msr` must be a LAPIC register whose write with `value` keeps memory safety.
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: per the caller.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
            in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
    }
}

/// Whether the CPU offers x2APIC (CPUID.1:ECX bit 21).
pub fn x2apic_offered() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 21) != 0
}

/// Enables this CPU's LAPIC in x2APIC mode with [`SPURIOUS_VECTOR`] (call with interrupts
/// off, after checking [`x2apic_offered`]).
pub fn enable_x2apic() {
    let base = rdmsr(APIC_BASE_MSR);
    // SAFETY: enabling the LAPIC in x2APIC mode and setting its SVR only changes how
    // interrupts are delivered; none is taken before `sti`.
    unsafe {
        wrmsr(APIC_BASE_MSR, base | APIC_ENABLE | X2APIC_ENABLE);
        wrmsr(SVR, 0x100 | u64::from(SPURIOUS_VECTOR));
    }
}

/// Acknowledges the interrupt being handled.
#[inline]
pub fn eoi() {
    // SAFETY: the x2APIC EOI register; writing 0 acknowledges.
    unsafe { wrmsr(EOI, 0) };
}

/// Sends fixed interrupt `vector` to the CPU with x2APIC ID `cpu` (one ICR write).
#[inline]
pub fn send(cpu: u32, vector: u8) {
    // SAFETY: an ICR write only sends an interrupt, whose handler is installed.
    unsafe { wrmsr(ICR, (u64::from(cpu) << 32) | ICR_ASSERT | u64::from(vector)) };
}

/// Sends fixed interrupt `vector` to every CPU but this one (one ICR write, shorthand).
#[inline]
pub fn send_all_but_self(vector: u8) {
    // SAFETY: as in `send`.
    unsafe { wrmsr(ICR, ICR_ALL_BUT_SELF | ICR_ASSERT | u64::from(vector)) };
}
