//! Safe wrappers around the pvkit hypercalls ([`pvkit_abi::call`]).
//!
//! Each wrapper is one `out dx, eax` to the hypercall port — one VM exit — plus the
//! translation of any buffer address with [`crate::addr::virt_to_phys`]. Buffers are
//! borrowed for the duration of the call, which is all the host needs: it completes every
//! access before the instruction retires.

use crate::addr::virt_to_phys;
use pvkit_abi::{
    bench::{BenchSample, CaseId, PhaseMark},
    console::MAX_WRITE,
    cpuid::Features,
    fault::FaultReport,
    guest, AbiVersion, Hypercall, Status,
};

/// Writes up to [`MAX_WRITE`] bytes of `bytes` to the host console in one call and returns
/// how many the host took. Longer buffers are cut at `MAX_WRITE` (like `write(2)`, the
/// caller writes the rest; [`crate::console::PvConsole::write`] does).
pub fn console_write(bytes: &[u8]) -> Result<usize, Status> {
    let len = bytes.len().min(MAX_WRITE as usize);
    let gpa = virt_to_phys(bytes.as_ptr());
    // SAFETY: the host reads `len` bytes at the buffer's guest-physical address; the buffer
    // is borrowed, so it is valid and unchanged for the whole call.
    let r = unsafe { guest::call(Hypercall::ConsoleWrite, [gpa, len as u64, 0, 0]) };
    r.into_result().map(|n| (n as usize).min(len))
}

/// Stops the VM; the VMM process exits with `code`.
pub fn exit(code: u8) -> ! {
    guest::exit(code)
}

/// Sends `report` to the host, which prints it and stops the VM with a failure status.
/// Without a pvkit host (the call is a no-op port write) this CPU halts.
pub fn report_fault(report: &FaultReport) -> ! {
    // SAFETY: the host reads `size_of::<FaultReport>()` bytes at the report's address; the
    // report is borrowed for the call.
    unsafe { guest::call(Hypercall::ReportFault, [virt_to_phys(report), 0, 0, 0]) };
    crate::halt_forever()
}

/// Marks the beginning or end of benchmark case `case`; at [`PhaseMark::End`], `ops` is the
/// number of operations done in the phase.
pub fn bench_phase(case: CaseId, mark: PhaseMark, ops: u64) {
    guest::bench_phase(case, mark, ops);
}

/// Sends one case's guest-side measurements.
pub fn bench_result(sample: &BenchSample) -> Result<(), Status> {
    // SAFETY: the host reads `size_of::<BenchSample>()` bytes at the sample's address; the
    // sample is borrowed for the call.
    let r = unsafe { guest::call(Hypercall::BenchResult, [virt_to_phys(sample), 0, 0, 0]) };
    r.into_result().map(drop)
}

/// The host's ABI version (also in `BootInfo` and CPUID, which cost no exit to the VMM).
pub fn abi_version() -> AbiVersion {
    guest::abi_version()
}

/// The host's feature bits (also in `BootInfo` and CPUID, which cost no exit to the VMM).
pub fn features() -> Features {
    guest::features()
}
