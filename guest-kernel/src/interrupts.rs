//! Exceptions: the guest runtime's IDT ([`pvkit_guest::rt::trap`]) with this kernel's hook.
//!
//! The runtime's entry stubs save every register into a [`TrapFrame`] and report each
//! exception to the host with `ReportFault` (vector, error code, `RIP`, `CR2` for #PF, and
//! a message naming the ring, `CS`, `SS` and `RSP`); the double fault runs on its own IST
//! stack. Before that, [`hook`] lets the kernel resume from the exceptions it expects.

use x86_64::{instructions::tables::lidt, structures::DescriptorTablePointer, VirtAddr};

pub use pvkit_guest::rt::trap::TrapFrame;

/// Defines the interrupt entry stub `$entry` (a global symbol, declared here as an
/// `extern "C" fn()` for [`pvkit_guest::rt::trap::set_gate`]): it saves the caller-saved
/// registers, calls `$handler` (an `extern "C" fn()`) with the direction flag clear,
/// restores them and returns with `iretq`. The CPU aligned `RSP` to 16 and pushed 5 words;
/// the 9 pushes leave it 16-byte aligned at the `call`.
macro_rules! interrupt_entry {
    ($entry:ident, $handler:path) => {
        core::arch::global_asm!(
            concat!(".pushsection .text.", stringify!($entry), ", \"ax\", @progbits"),
            ".balign 16",
            concat!(".global ", stringify!($entry)),
            concat!(stringify!($entry), ":"),
            "    push rax",
            "    push rcx",
            "    push rdx",
            "    push rsi",
            "    push rdi",
            "    push r8",
            "    push r9",
            "    push r10",
            "    push r11",
            "    cld",
            "    call {handler}",
            "    pop r11",
            "    pop r10",
            "    pop r9",
            "    pop r8",
            "    pop rdi",
            "    pop rsi",
            "    pop rdx",
            "    pop rcx",
            "    pop rax",
            "    iretq",
            ".popsection",
            handler = sym $handler,
        );
        extern "C" {
            fn $entry();
        }
    };
}
pub(crate) use interrupt_entry;

/// Defines the spurious-interrupt entry `$entry`: it only returns (a spurious interrupt
/// takes no EOI).
macro_rules! spurious_entry {
    ($entry:ident) => {
        core::arch::global_asm!(
            concat!(
                ".pushsection .text.",
                stringify!($entry),
                ", \"ax\", @progbits"
            ),
            ".balign 16",
            concat!(".global ", stringify!($entry)),
            concat!(stringify!($entry), ":"),
            "    iretq",
            ".popsection",
        );
        extern "C" {
            fn $entry();
        }
    };
}
pub(crate) use spurious_entry;

/// Vector of a general-protection fault.
const GENERAL_PROTECTION: u64 = 13;

/// Loads the runtime's IDT and installs [`hook`]. Call after [`crate::gdt::init`].
pub fn init() {
    pvkit_guest::rt::trap::init();
    pvkit_guest::rt::trap::set_hook(hook);
}

/// On a stock hypervisor ([`crate::pvh`]) there is no host to report an exception to: it
/// is printed on the UART and the VM exits with [`pvkit_guest::pvh::FAILURE_EXIT`].
///
/// The #UD that ends a ring-3 call ([`crate::user::trap_return`]) resumes the kernel; a #GP
/// raised by an instruction with a fixup ([`crate::msr::fixup`], e.g. a `wrmsr` the host
/// refused) resumes at the fixup; anything else is left to the runtime, which reports it.
fn hook(frame: &mut TrapFrame) -> bool {
    if crate::user::trap_return(frame) {
        return true;
    }
    if frame.vector == GENERAL_PROTECTION {
        if let Some(resume) = crate::msr::fixup(frame.rip) {
            frame.rip = resume;
            return true;
        }
    }
    if pvkit_guest::pvh::stock_host() {
        crate::console::ensure_uart();
        println!(
            "EXCEPTION: vector {} error code {:#x} at rip {:#x} rsp {:#x}",
            frame.vector, frame.error_code, frame.rip, frame.rsp
        );
        pvkit_guest::pvh::debug_exit(pvkit_guest::pvh::FAILURE_EXIT);
    }
    false
}

/// Loads an empty IDT and executes `ud2`: the #UD cannot be delivered, nor the #GP that
/// causes, nor the double fault after it: the CPU shuts down (a triple fault).
///
/// `ud2` rather than `int3`: on kvm_pvm, `int3` in ring 0 stops the vCPU with a KVM internal
/// error instead of raising #BP.
pub fn triple_fault() -> ! {
    let empty = DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::zero(),
    };
    // SAFETY: deliberately fatal: after this no exception can be delivered, and the `ud2`
    // that follows ends the VM. Nothing returns into Rust code that relies on the IDT.
    unsafe {
        lidt(&empty);
        core::arch::asm!("ud2", options(nomem, nostack));
    }
    pvkit_guest::halt_forever()
}
