//! A fault-tolerant `wrmsr`, the way Linux's `wrmsr_safe` works: the `wrmsr` instruction
//! has an exception-table entry, and a #GP it raises resumes at a fixup that reports the
//! failure instead of being fatal ([`crate::interrupts`] asks [`fixup`] first).
//!
//! Used to enable kvmclock: a host may filter `MSR_KVM_SYSTEM_TIME_NEW`, or the
//! hypervisor may not know it, and the kernel must then skip kvmclock, not die.

core::arch::global_asm!(
    ".pushsection .text.pvkit_wrmsr_safe, \"ax\", @progbits",
    ".global pvkit_wrmsr_safe",
    ".type pvkit_wrmsr_safe, @function",
    // extern "C" fn(msr: u32 (EDI), lo: u32 (ESI), hi: u32 (EDX)) -> u32 (0 ok, 1 #GP)
    "pvkit_wrmsr_safe:",
    "    mov ecx, edi",
    "    mov eax, esi",
    "pvkit_wrmsr_insn:",
    "    wrmsr",
    "    xor eax, eax",
    "    ret",
    "pvkit_wrmsr_fixup:",
    "    mov eax, 1",
    "    ret",
    ".size pvkit_wrmsr_safe, . - pvkit_wrmsr_safe",
    ".popsection",
    ".pushsection .rodata.pvkit_extable, \"a\", @progbits",
    ".balign 8",
    "pvkit_extable:",
    "    .quad pvkit_wrmsr_insn, pvkit_wrmsr_fixup",
    ".popsection",
);

extern "C" {
    fn pvkit_wrmsr_safe(msr: u32, lo: u32, hi: u32) -> u32;
    /// The exception table: (faulting instruction, resume address) pairs.
    static pvkit_extable: [[u64; 2]; 1];
}

/// Writes `value` to MSR `msr`; `false` if the write raised #GP (nothing was written).
///
/// # Safety
///
/// Ring 0. Writing an MSR can change anything about the machine: the caller must know
/// what this MSR does (and that, say, any memory it hands to the hypervisor stays valid).
pub unsafe fn wrmsr_safe(msr: u32, value: u64) -> bool {
    // SAFETY: the caller vouches for the MSR's effect; a #GP is recovered by the fixup.
    unsafe { pvkit_wrmsr_safe(msr, value as u32, (value >> 32) as u32) == 0 }
}

/// The resume address for a #GP at `rip`, if `rip` is an instruction with a fixup.
pub fn fixup(rip: u64) -> Option<u64> {
    // SAFETY: the table is initialized, read-only data emitted by the assembly above.
    let table = unsafe { &pvkit_extable };
    table
        .iter()
        .find(|entry| entry[0] == rip)
        .map(|entry| entry[1])
}
