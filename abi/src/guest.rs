//! Guest-side hypercall stubs (feature `guest`, x86_64).
//!
//! Each stub is one `out dx, eax` to [`crate::ports::HYPERCALL`] following the calling
//! convention in [`crate::call`]. They work in ring 0, and in ring 3 when IOPL is 3.

use crate::{call::Hypercall, ports, Status};

/// The raw result of a hypercall: `RAX` decoded, and `RDX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawResult {
    /// `RAX`, decoded. A value that is not a known status decodes as `EIO`.
    pub status: Status,
    /// `RDX`.
    pub value: u64,
}

impl RawResult {
    /// `Ok(value)` on success, `Err(status)` otherwise.
    pub fn into_result(self) -> Result<u64, Status> {
        match self.status {
            Status::Ok => Ok(self.value),
            s => Err(s),
        }
    }
}

/// Issues hypercall `nr` with four arguments.
///
/// # Safety
///
/// The host may read or write guest memory named by the arguments as the call's contract
/// says; the caller must make sure such memory is valid for that access for the duration of
/// the call (the host completes every access before the instruction retires). `Exit` and
/// `ReportFault` do not return control in a meaningful state.
#[inline(always)]
pub unsafe fn hypercall4(nr: u32, a0: u64, a1: u64, a2: u64, a3: u64) -> RawResult {
    let rax: u64;
    let rdx: u64;
    // SAFETY: a port write to the pvkit hypercall port. It traps to the VMM, which follows
    // the calling convention: only RAX and RDX change; memory effects are the caller's
    // responsibility per this function's contract.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            inout("rax") nr as u64 => rax,
            inout("rdx") ports::HYPERCALL as u64 => rdx,
            in("rdi") a0,
            in("rsi") a1,
            in("r8") a2,
            in("r9") a3,
            options(nostack, preserves_flags),
        );
    }
    // Success first: decoding any other status is a call and a jump table, a dozen
    // instructions where guest ring 0 is interpreted (~1 µs each on kvm_pvm).
    let status = if rax == 0 {
        Status::Ok
    } else {
        Status::try_from(rax).unwrap_or(Status::EIO)
    };
    RawResult { status, value: rdx }
}

/// Issues a hypercall with no memory arguments.
///
/// # Safety
///
/// As [`hypercall4`]: only for calls that touch no guest memory, or whose memory arguments
/// are valid.
#[inline(always)]
pub unsafe fn call(call: Hypercall, args: [u64; 4]) -> RawResult {
    // SAFETY: forwarded to the caller's contract.
    unsafe { hypercall4(call as u32, args[0], args[1], args[2], args[3]) }
}

/// The host's ABI version.
pub fn abi_version() -> crate::AbiVersion {
    // SAFETY: touches no guest memory.
    let r = unsafe { call(Hypercall::AbiVersion, [0; 4]) };
    crate::AbiVersion::from_u64(r.value)
}

/// The host's feature bits.
pub fn features() -> crate::cpuid::Features {
    // SAFETY: touches no guest memory.
    let r = unsafe { call(Hypercall::Features, [0; 4]) };
    crate::cpuid::Features::from_bits_truncate(r.value)
}

/// Stops the VM with `code` as the VMM's exit status.
pub fn exit(code: u8) -> ! {
    // SAFETY: touches no guest memory; the VMM stops the vCPU.
    unsafe { call(Hypercall::Exit, [code as u64, 0, 0, 0]) };
    // The host never resumes us; if a broken host does, stop here.
    loop {
        // SAFETY: halting with interrupts as they are is always sound.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Marks a benchmark phase.
pub fn bench_phase(case: crate::bench::CaseId, mark: crate::bench::PhaseMark, ops: u64) {
    // SAFETY: touches no guest memory.
    unsafe { call(Hypercall::BenchPhase, [case.to_u64(), mark as u64, ops, 0]) };
}
