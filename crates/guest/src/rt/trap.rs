//! The IDT and the exception entry stubs.
//!
//! Stable Rust has no `extern "x86-interrupt"`, so the entry path is assembly: one stub per
//! vector pushes a zero error code where the CPU does not push one, then the vector, and
//! jumps to a common path that saves every general register into a [`TrapFrame`] and calls
//! the dispatcher with it. Should the dispatcher return, the common path restores the
//! registers, drops vector and error code and `iretq`s.
//!
//! Every exception (vectors 0–31) is reported to the host with `ReportFault`: vector, error
//! code, `RIP`, `CR2` (page faults), and a message naming the vector, the ring, `CS`, `SS`
//! and `RSP`. The double fault runs on its own IST stack, NMI and machine check on another,
//! so an exception on an overflowed stack is still reported. A page fault or double fault
//! whose `CR2` or `RSP` lies in the boot stack's guard page is reported as a **stack
//! overflow**. A kernel can claim exceptions before they are reported with [`set_hook`].
//!
//! Stack alignment: the CPU aligns `RSP` to 16 before pushing its 5-word frame; error code,
//! vector and 15 registers make 22 words in all, so `RSP` is 16-byte aligned at the `call`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};
use pvkit_abi::fault::vector_name;

/// Number of exception vectors (0–31), each with a stub.
pub const EXCEPTIONS: usize = 32;
/// Vector of a page fault (`CR2` holds the faulting address).
pub const PAGE_FAULT: u64 = 14;
/// Vector of a double fault.
pub const DOUBLE_FAULT: u64 = 8;
/// Vector of a non-maskable interrupt.
const NMI: usize = 2;
/// Vector of a machine check.
const MACHINE_CHECK: usize = 18;

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
    "pvkit_rt_trap_\\vec:",
    "    push 0",
    "    push \\vec",
    "    jmp pvkit_rt_trap_common",
    ".endm",
    ".macro TRAP_ERR vec",
    ".balign 16",
    "pvkit_rt_trap_\\vec:",
    "    push \\vec",
    "    jmp pvkit_rt_trap_common",
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
    "pvkit_rt_trap_common:",
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
    ".global pvkit_rt_trap_table",
    "pvkit_rt_trap_table:",
    "    .quad pvkit_rt_trap_0",
    "    .quad pvkit_rt_trap_1",
    "    .quad pvkit_rt_trap_2",
    "    .quad pvkit_rt_trap_3",
    "    .quad pvkit_rt_trap_4",
    "    .quad pvkit_rt_trap_5",
    "    .quad pvkit_rt_trap_6",
    "    .quad pvkit_rt_trap_7",
    "    .quad pvkit_rt_trap_8",
    "    .quad pvkit_rt_trap_9",
    "    .quad pvkit_rt_trap_10",
    "    .quad pvkit_rt_trap_11",
    "    .quad pvkit_rt_trap_12",
    "    .quad pvkit_rt_trap_13",
    "    .quad pvkit_rt_trap_14",
    "    .quad pvkit_rt_trap_15",
    "    .quad pvkit_rt_trap_16",
    "    .quad pvkit_rt_trap_17",
    "    .quad pvkit_rt_trap_18",
    "    .quad pvkit_rt_trap_19",
    "    .quad pvkit_rt_trap_20",
    "    .quad pvkit_rt_trap_21",
    "    .quad pvkit_rt_trap_22",
    "    .quad pvkit_rt_trap_23",
    "    .quad pvkit_rt_trap_24",
    "    .quad pvkit_rt_trap_25",
    "    .quad pvkit_rt_trap_26",
    "    .quad pvkit_rt_trap_27",
    "    .quad pvkit_rt_trap_28",
    "    .quad pvkit_rt_trap_29",
    "    .quad pvkit_rt_trap_30",
    "    .quad pvkit_rt_trap_31",
    ".popsection",
    dispatch = sym trap_dispatch,
);

extern "C" {
    /// The entry stub of each exception vector, emitted by the assembly above.
    static pvkit_rt_trap_table: [u64; EXCEPTIONS];
}

/// A kernel's own exception handling, run before the report: returns `true` when it
/// handled the exception (the frame, possibly modified, is resumed with `iretq`), `false`
/// to let the runtime report it.
pub type Hook = fn(&mut TrapFrame) -> bool;

/// The installed [`Hook`] as a `usize` (0 = none).
static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs `hook`, run on every exception before it is reported (replacing any earlier
/// hook). Used by kernels that resume from some exceptions (fixups, returns from ring 3).
pub fn set_hook(hook: Hook) {
    HOOK.store(hook as usize, Ordering::Release);
}

/// Reads `CR2`.
fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects; the runtime runs in ring 0.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

/// Called by the entry path with the saved state. Runs the hook, then reports the
/// exception to the host (never returning).
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let hook = HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: `HOOK` only ever holds 0 or a `Hook` stored by `set_hook`.
        let hook: Hook = unsafe { core::mem::transmute::<usize, Hook>(hook) };
        if hook(frame) {
            return;
        }
    }
    let cr2 = if frame.vector == PAGE_FAULT || frame.vector == DOUBLE_FAULT {
        cr2()
    } else {
        0
    };
    let vector = frame.vector as u32;
    let overflow = (frame.vector == PAGE_FAULT || frame.vector == DOUBLE_FAULT)
        && (super::stack::in_guard(cr2) || super::stack::in_guard(frame.rsp));
    if overflow {
        let (lo, hi) = super::stack::range();
        super::report::exception(
            vector,
            frame.error_code,
            frame.rip,
            if frame.vector == PAGE_FAULT { cr2 } else { 0 },
            format_args!(
                "stack overflow: {} with rsp {:#x}, cr2 {:#x} in the guard page below the \
                 boot stack {lo:#x}..{hi:#x} (raise STACK_SIZE or use less stack)",
                vector_name(vector),
                frame.rsp,
                cr2
            ),
        )
    }
    super::report::exception(
        vector,
        frame.error_code,
        frame.rip,
        if frame.vector == PAGE_FAULT { cr2 } else { 0 },
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

/// The IDT: all 256 vectors, so a kernel can add interrupt gates with [`set_gate`].
#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: the table is written only by `init` and `set_gate`, on the only CPU, with
// interrupts disabled; otherwise only the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));

/// Fills the exception gates (double fault, NMI and machine check on IST stacks) and loads
/// the IDT. Call after [`super::gdt::init`].
pub fn init() {
    // SAFETY: the table is initialized data emitted by the assembly above, never written.
    let stubs = unsafe { &pvkit_rt_trap_table };
    for (vector, &stub) in stubs.iter().enumerate() {
        let ist = match vector {
            v if v == DOUBLE_FAULT as usize => super::gdt::DOUBLE_FAULT_IST,
            NMI | MACHINE_CHECK => super::gdt::NMI_IST,
            _ => 0,
        };
        // SAFETY: single CPU, interrupts disabled; the stub is code in this image.
        unsafe { set_gate(vector as u8, stub, ist) };
    }
    load();
}

/// Loads the IDT [`init`] filled on this CPU (another CPU of an SMP kernel shares it: its
/// IST slots name the stacks of that CPU's own TSS).
pub fn load() {
    #[repr(C, packed(2))]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is 'static and every present gate points at a stub above.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack)) };
}

/// Points gate `vector` at `handler` (an interrupt gate, DPL 0, kernel code segment), on
/// IST slot `ist` (0 = none).
///
/// # Safety
///
/// `handler` must be the address of an entry stub that follows the interrupt-frame
/// convention (ends in `iretq`); interrupts must be disabled while the gate is written.
pub unsafe fn set_gate(vector: u8, handler: u64, ist: u8) {
    // SAFETY: see `impl Sync for Idt`; the caller guarantees interrupts are disabled.
    unsafe {
        (*IDT.0.get())[usize::from(vector)] = Gate::interrupt(handler, super::gdt::KERNEL_CODE, ist)
    };
}
