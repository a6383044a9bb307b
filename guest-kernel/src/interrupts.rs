//! The IDT and the exception entry stubs.
//!
//! Stable Rust has no `extern "x86-interrupt"`, so the entry path is assembly: one 16-byte
//! stub per vector pushes a zero error code where the CPU does not push one, then the vector,
//! and jumps to a common path that saves every general register into a [`TrapFrame`] and
//! calls [`trap_dispatch`] with it. Should the handler return, the common path restores the
//! registers, drops vector and error code and `iretq`s — ready for the interrupt handlers
//! (PIT, PV devices) later work adds; today every vector is a CPU exception and is fatal.
//!
//! Each exception is reported to the host with `ReportFault` (vector, error code, `RIP`,
//! `CR2` for #PF, and a message) and the VM stops. The double fault runs on its own IST
//! stack ([`crate::gdt::DOUBLE_FAULT_IST`]) so a kernel stack overflow is reported too.
//!
//! Stack alignment: the CPU aligns `RSP` to 16 before pushing its 5-word frame; error code,
//! vector and 15 registers make 22 words in all, so `RSP` is 16-byte aligned at the `call`.

use core::cell::UnsafeCell;
use pvkit_abi::fault::vector_name;
use x86_64::{
    instructions::{segmentation::Segment, tables::lidt},
    registers::control::Cr2,
    structures::DescriptorTablePointer,
    VirtAddr,
};

/// Number of exception vectors (0–31), each with a stub.
pub const EXCEPTIONS: usize = 32;
/// Vector of a page fault (`CR2` holds the faulting address).
const PAGE_FAULT: u64 = 14;
/// Vector of a double fault.
const DOUBLE_FAULT: usize = 8;
/// Vector of a general-protection fault.
const GENERAL_PROTECTION: u64 = 13;

/// The registers saved by the entry path, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// Saved `R15`.
    pub r15: u64,
    /// Saved `R14`.
    pub r14: u64,
    /// Saved `R13`.
    pub r13: u64,
    /// Saved `R12`.
    pub r12: u64,
    /// Saved `R11`.
    pub r11: u64,
    /// Saved `R10`.
    pub r10: u64,
    /// Saved `R9`.
    pub r9: u64,
    /// Saved `R8`.
    pub r8: u64,
    /// Saved `RBP`.
    pub rbp: u64,
    /// Saved `RDI`.
    pub rdi: u64,
    /// Saved `RSI`.
    pub rsi: u64,
    /// Saved `RDX`.
    pub rdx: u64,
    /// Saved `RCX`.
    pub rcx: u64,
    /// Saved `RBX`.
    pub rbx: u64,
    /// Saved `RAX`.
    pub rax: u64,
    /// The vector, pushed by the stub.
    pub vector: u64,
    /// The CPU's error code, or 0 pushed by the stub.
    pub error_code: u64,
    /// The interrupted `RIP` (for faults: the faulting instruction).
    pub rip: u64,
    /// The interrupted `CS`.
    pub cs: u64,
    /// The interrupted `RFLAGS`.
    pub rflags: u64,
    /// The interrupted `RSP`.
    pub rsp: u64,
    /// The interrupted `SS`.
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

core::arch::global_asm!(
    ".pushsection .text.pvkit_traps, \"ax\", @progbits",
    ".macro TRAP_NOERR vec",
    ".balign 16",
    "pvkit_trap_\\vec:",
    "    push 0",
    "    push \\vec",
    "    jmp pvkit_trap_common",
    ".endm",
    ".macro TRAP_ERR vec",
    ".balign 16",
    "pvkit_trap_\\vec:",
    "    push \\vec",
    "    jmp pvkit_trap_common",
    ".endm",
    "TRAP_NOERR 0",
    "TRAP_NOERR 1",
    "TRAP_NOERR 2",
    "TRAP_NOERR 3",
    "TRAP_NOERR 4",
    "TRAP_NOERR 5",
    "TRAP_NOERR 6",
    "TRAP_NOERR 7",
    "TRAP_ERR 8",
    "TRAP_NOERR 9",
    "TRAP_ERR 10",
    "TRAP_ERR 11",
    "TRAP_ERR 12",
    "TRAP_ERR 13",
    "TRAP_ERR 14",
    "TRAP_NOERR 15",
    "TRAP_NOERR 16",
    "TRAP_ERR 17",
    "TRAP_NOERR 18",
    "TRAP_NOERR 19",
    "TRAP_NOERR 20",
    "TRAP_ERR 21",
    "TRAP_NOERR 22",
    "TRAP_NOERR 23",
    "TRAP_NOERR 24",
    "TRAP_NOERR 25",
    "TRAP_NOERR 26",
    "TRAP_NOERR 27",
    "TRAP_NOERR 28",
    "TRAP_ERR 29",
    "TRAP_ERR 30",
    "TRAP_NOERR 31",
    ".balign 16",
    "pvkit_trap_common:",
    "    push rax",
    "    push rbx",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push rbp",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov rdi, rsp",
    "    cld",
    "    call {dispatch}",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rbp",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rbx",
    "    pop rax",
    "    add rsp, 16",
    "    iretq",
    ".purgem TRAP_NOERR",
    ".purgem TRAP_ERR",
    ".popsection",
    ".pushsection .rodata.pvkit_traps, \"a\", @progbits",
    ".balign 8",
    ".global pvkit_trap_table",
    "pvkit_trap_table:",
    "    .quad pvkit_trap_0",
    "    .quad pvkit_trap_1",
    "    .quad pvkit_trap_2",
    "    .quad pvkit_trap_3",
    "    .quad pvkit_trap_4",
    "    .quad pvkit_trap_5",
    "    .quad pvkit_trap_6",
    "    .quad pvkit_trap_7",
    "    .quad pvkit_trap_8",
    "    .quad pvkit_trap_9",
    "    .quad pvkit_trap_10",
    "    .quad pvkit_trap_11",
    "    .quad pvkit_trap_12",
    "    .quad pvkit_trap_13",
    "    .quad pvkit_trap_14",
    "    .quad pvkit_trap_15",
    "    .quad pvkit_trap_16",
    "    .quad pvkit_trap_17",
    "    .quad pvkit_trap_18",
    "    .quad pvkit_trap_19",
    "    .quad pvkit_trap_20",
    "    .quad pvkit_trap_21",
    "    .quad pvkit_trap_22",
    "    .quad pvkit_trap_23",
    "    .quad pvkit_trap_24",
    "    .quad pvkit_trap_25",
    "    .quad pvkit_trap_26",
    "    .quad pvkit_trap_27",
    "    .quad pvkit_trap_28",
    "    .quad pvkit_trap_29",
    "    .quad pvkit_trap_30",
    "    .quad pvkit_trap_31",
    ".popsection",
    dispatch = sym trap_dispatch,
);

extern "C" {
    /// The entry stub of each exception vector, emitted by the assembly above.
    static pvkit_trap_table: [u64; EXCEPTIONS];
}

/// Called by the entry path with the saved state. Every vector is a CPU exception. The
/// #UD that ends a ring-3 call ([`crate::user::trap_return`]) resumes the kernel; a #GP
/// raised by an instruction with a fixup ([`crate::msr::fixup`], e.g. a `wrmsr` the host
/// refused) resumes at the fixup; any other exception is reported to the host and never
/// returns.
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if crate::user::trap_return(frame) {
        return;
    }
    if frame.vector == GENERAL_PROTECTION {
        if let Some(resume) = crate::msr::fixup(frame.rip) {
            frame.rip = resume;
            return;
        }
    }
    let cr2 = if frame.vector == PAGE_FAULT {
        Cr2::read_raw()
    } else {
        0
    };
    let vector = frame.vector as u32;
    pvkit_guest::fault::report_exception(
        vector,
        frame.error_code,
        frame.rip,
        cr2,
        format_args!(
            "{} in ring {} (cs {:#x}, ss {:#x}, rsp {:#x})",
            vector_name(vector),
            frame.cs & 3,
            frame.cs,
            frame.ss,
            frame.rsp
        ),
    )
}

/// An IDT gate descriptor (64-bit interrupt gate).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(core::mem::size_of::<Gate>() == 16);

impl Gate {
    /// Not present: delivering it raises #NP, which is reported.
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present interrupt gate (interrupts stay disabled in the handler) at DPL 0.
    const fn interrupt(handler: u64, selector: u16, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist,
            attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// The IDT: all 256 vectors, so interrupt handlers added later need no resizing.
#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: the table is written only by `init`, on the only CPU, with interrupts disabled
// and before any exception can use it; afterwards only the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));

/// Fills the exception gates (double fault on its IST stack) and loads the IDT. Call after
/// [`crate::gdt::init`] (the gates name the current `CS` and the TSS's IST).
pub fn init() {
    // SAFETY: the table is initialized data emitted by the assembly above and never
    // written.
    let stubs = unsafe { &pvkit_trap_table };
    let cs = x86_64::instructions::segmentation::CS::get_reg().0;
    let idt = IDT.0.get();
    for (vector, &stub) in stubs.iter().enumerate() {
        let ist = if vector == DOUBLE_FAULT {
            crate::gdt::DOUBLE_FAULT_IST
        } else {
            0
        };
        // SAFETY: see `impl Sync for Idt`: single CPU, interrupts disabled, and the table
        // is not loaded yet (first call) or only read by the CPU on an exception, which
        // cannot happen while this loop runs.
        unsafe { (*idt)[vector] = Gate::interrupt(stub, cs, ist) };
    }
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT is 'static and every present gate points at a stub above.
    unsafe { lidt(&pointer) };
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
