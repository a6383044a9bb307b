//! Running code in ring 3, the way a real OS runs vDSO code on behalf of a process.
//!
//! [`run_user`] saves the kernel's callee-saved registers and stack pointer, builds an
//! interrupt frame (`SS` = user data `0x1b`, `RSP` = the user stack, `RFLAGS` = `0x2`:
//! interrupts off, IOPL 0, `CS` = user code `0x23`, `RIP` = a trampoline) and `iretq`s. In
//! ring 3 the trampoline calls the entry function with its argument; when it returns, the
//! trampoline executes `ud2` at a known address, `pvkit_user_exit`. The #UD goes through
//! the IDT to the kernel's exception path like any exception from ring 3 (on the TSS's
//! `RSP0` stack), which hands it to [`trap_return`]: a #UD from ring 3 at exactly that
//! address is the return, not a fault. `trap_return` rewrites the saved frame so that the
//! exception path's `iretq` resumes, in ring 0 on the saved kernel stack,
//! `pvkit_user_resume`, which restores `DS`/`ES` and the callee-saved registers and returns
//! the entry function's result (`RAX`, saved and restored by the exception path) to
//! [`run_user`]'s caller. (Linux's `BUG()` traps through `ud2` the same way.)
//!
//! Why a trapping instruction and not a gate or `syscall`: on kvm_pvm an `int n` from ring
//! 3 raises #UD even through a DPL-3 gate, and `syscall` jumps to `LSTAR` without leaving
//! ring 3 (both measured here); an exception from ring 3 is delivered correctly there and
//! on hardware alike.
//!
//! **This benchmark kernel does not isolate user mode.** The boot identity map sets the
//! USER bit on every page (see `pvkit_abi::boot`), so ring-3 code can read and write the
//! whole kernel: it runs kernel-image code and reads the clock pages in place, exactly what
//! the benchmarks need (time read the way a vDSO reads it, natively in ring 3 on kvm_pvm,
//! where ring 0 is interpreted). What ring 3 cannot do is what IOPL 0 forbids: port I/O,
//! hence hypercalls, and privileged instructions. Any other fault in ring 3 is reported to
//! the host like any exception and stops the VM.
//!
//! Costs: one `iretq` into ring 3 and one exception plus `iretq` back per call (a few
//! dozen instructions, interpreted on kvm_pvm, and two privilege switches: together
//! 100–300 µs there); the entry function itself runs at native speed on kvm_pvm. (Port I/O
//! from ring 3 is not an option there even with IOPL 3 in the `iretq` frame: kvm_pvm
//! raises #GP, measured with the benchmark markers.)

use crate::gdt::{KERNEL_CODE, KERNEL_DATA, USER_CODE, USER_DATA};
use crate::interrupts::TrapFrame;
use core::sync::atomic::{AtomicBool, Ordering};
use pvkit_guest::clock::ClockReader;

/// The #UD vector.
const INVALID_OPCODE: u64 = 6;

/// `RFLAGS` in ring 3: reserved bit 1 only (IF = 0, IOPL = 0).
const USER_RFLAGS: u64 = 0x2;

/// Size of the user stack [`call`] uses.
const USER_STACK_SIZE: usize = 64 * 1024;

/// The kernel `RSP` saved by `pvkit_run_user`, restored through [`trap_return`]. Only
/// ever accessed from that assembly (never through Rust references).
static mut KERNEL_RSP: u64 = 0;

/// The stack of [`call`]; only used through `RSP` in ring 3.
static mut USER_STACK: crate::Stack<USER_STACK_SIZE> = crate::Stack([0; USER_STACK_SIZE]);
/// Whether [`call`] is running (ring-3 calls do not nest).
static IN_USER: AtomicBool = AtomicBool::new(false);

core::arch::global_asm!(
    ".pushsection .text.pvkit_user, \"ax\", @progbits",
    // extern "C" fn(entry: RDI, arg: RSI, user_rsp: RDX, rflags: RCX) -> RAX
    ".global pvkit_run_user",
    "pvkit_run_user:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rip + {saved}], rsp",
    "    push {user_ss}",
    "    push rdx",
    "    push rcx",
    "    push {user_cs}",
    "    lea rax, [rip + pvkit_user_trampoline]",
    "    push rax",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    mov rsi, rax",
    "    iretq",
    // Ring 3: RDI = arg, RSI = entry, RSP = the user stack top (16-byte aligned).
    "pvkit_user_trampoline:",
    "    call rsi",
    ".global pvkit_user_exit",
    "pvkit_user_exit:",
    "    ud2",
    // Ring 0, on the saved kernel stack (see `trap_return`), RAX = the result.
    ".global pvkit_user_resume",
    "pvkit_user_resume:",
    "    mov ecx, {kernel_ds}",
    "    mov ds, ecx",
    "    mov es, ecx",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    ".popsection",
    saved = sym KERNEL_RSP,
    user_ss = const USER_DATA,
    user_cs = const USER_CODE,
    kernel_ds = const KERNEL_DATA,
);

extern "C" {
    fn pvkit_run_user(entry: extern "C" fn(u64) -> u64, arg: u64, rsp: u64, rflags: u64) -> u64;
    /// The trampoline's `ud2` (never called from Rust).
    fn pvkit_user_exit();
    /// Where the kernel resumes after the `ud2` (never called from Rust).
    fn pvkit_user_resume();
}

/// Called by the exception path first: if `frame` is the #UD of `pvkit_user_exit` in ring
/// 3, rewrites it to resume `pvkit_user_resume` in ring 0 on the kernel stack saved by
/// `pvkit_run_user` (interrupts off) and returns `true`; the exception path's `iretq` then
/// completes [`run_user`]. Otherwise returns `false` and changes nothing.
pub fn trap_return(frame: &mut TrapFrame) -> bool {
    if frame.vector != INVALID_OPCODE
        || frame.cs & 3 != 3
        || frame.rip != pvkit_user_exit as *const () as u64
    {
        return false;
    }
    frame.rip = pvkit_user_resume as *const () as u64;
    frame.cs = u64::from(KERNEL_CODE);
    frame.ss = u64::from(KERNEL_DATA);
    // SAFETY: a plain read of a static that only `pvkit_run_user` writes, which it did
    // before entering ring 3 (the only way to reach `pvkit_user_exit` in ring 3).
    frame.rsp = unsafe { (&raw const KERNEL_RSP).read() };
    frame.rflags = USER_RFLAGS;
    true
}

/// Runs `entry(arg)` in ring 3 on the stack whose top is `user_stack_top` and returns its
/// result. Interrupts stay off; IOPL is 0.
///
/// # Safety
///
/// `user_stack_top` must be the 16-byte aligned top of a stack that nothing else uses
/// while `entry` runs and that is big enough for it. `entry` must not use port I/O or
/// privileged instructions (they fault, which stops the VM). Not reentrant: `entry` cannot
/// call `run_user` (it could not anyway: `run_user` is ring-0 code that executes `iretq`).
pub unsafe fn run_user(entry: extern "C" fn(u64) -> u64, arg: u64, user_stack_top: u64) -> u64 {
    debug_assert!(user_stack_top.is_multiple_of(16));
    // SAFETY: the assembly saves and restores every callee-saved register and the stack,
    // and returns like an `extern "C"` function (through `trap_return`); the caller vouches
    // for the user stack and for `entry`.
    unsafe { pvkit_run_user(entry, arg, user_stack_top, USER_RFLAGS) }
}

/// [`run_user`] on the kernel's user stack (64 KiB). Panics if called while a ring-3 call
/// is already running (it cannot be: see [`run_user`]).
pub fn call(entry: extern "C" fn(u64) -> u64, arg: u64) -> u64 {
    assert!(
        !IN_USER.swap(true, Ordering::Acquire),
        "user::call is not reentrant"
    );
    let top = (&raw mut USER_STACK) as u64 + USER_STACK_SIZE as u64;
    // SAFETY: the user stack is 16-byte aligned (`Stack` is `align(16)` and its size is a
    // multiple of 16), used by nothing else (the flag above), and 64 KiB is enough for
    // the small functions run there.
    let result = unsafe { run_user(entry, arg, top) };
    IN_USER.store(false, Ordering::Release);
    result
}

/// Ring 3: one read of a vDSO-style clock; `arg` is the address of a [`ClockReader`].
extern "C" fn read_clock_entry(arg: u64) -> u64 {
    // SAFETY: `arg` is the address of a `ClockReader` that `read_clock` keeps alive for the
    // call.
    let reader = unsafe { *(arg as *const ClockReader) };
    reader.nanoseconds()
}

/// Reads `reader` once in ring 3, as a process reads the time through its vDSO.
pub fn read_clock(reader: &ClockReader) -> u64 {
    call(read_clock_entry, reader as *const ClockReader as u64)
}
