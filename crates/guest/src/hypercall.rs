//! Safe wrappers around the pvkit hypercalls ([`pvkit_abi::call`]).
//!
//! Each wrapper is one `out dx, eax` to the hypercall port — one VM exit — plus the
//! translation of any buffer address with [`crate::addr::virt_to_phys`]. Buffers are
//! borrowed for the duration of the call, which is all the host needs: it completes every
//! access before the instruction retires.

use crate::addr::virt_to_phys;
use pvkit_abi::{
    bench::{BenchSample, CaseId, OpRecord, PhaseMark, MAX_OP_LOG},
    block::BlockRequest,
    console::MAX_WRITE,
    cpuid::Features,
    fault::FaultReport,
    guest,
    ring::{QueueId, RegionId},
    AbiVersion, Hypercall, Status,
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
    bench_result_with_log(sample, &[])
}

/// Sends one case's guest-side measurements with its op log, for the host to verify the
/// data. At most [`MAX_OP_LOG`] records are sent (the first ones; callers that log more
/// keep the last `MAX_OP_LOG` themselves). The samples named by `sample.samples_addr` and
/// the buffers named by the log must be valid: the host reads them during the call.
pub fn bench_result_with_log(sample: &BenchSample, log: &[OpRecord]) -> Result<(), Status> {
    let n = log.len().min(MAX_OP_LOG as usize);
    let log_gpa = if n == 0 {
        0
    } else {
        virt_to_phys(log.as_ptr())
    };
    // SAFETY: the host reads the sample, its samples array and the log (all borrowed, or
    // named by them, for the call) and, to verify, the guest buffers the log names; it
    // writes nothing.
    let r = unsafe {
        guest::call(
            Hypercall::BenchResult,
            [virt_to_phys(sample), log_gpa, n as u64, 0],
        )
    };
    r.into_result().map(drop)
}

/// Registers a shared region of `len` bytes at guest-physical `gpa` (4 KiB aligned) as
/// `region` (a device's queue or page); `flags` holds the transport for a queue, and
/// [`pvkit_abi::ring::REGION_PER_VCPU`] for a region of the calling vCPU.
///
/// # Safety
///
/// From this call on the host reads and writes the region as the ABI says for `region`, at
/// any time, until it is replaced: the memory must stay valid and must only be accessed
/// the way the ABI allows (atomics on shared fields).
pub unsafe fn register_region(
    region: RegionId,
    gpa: u64,
    len: u64,
    flags: u64,
) -> Result<(), Status> {
    // SAFETY: forwarded to the caller's contract.
    let r = unsafe {
        guest::call(
            Hypercall::RegisterRegion,
            [region.to_u64(), gpa, len, flags],
        )
    };
    r.into_result().map(drop)
}

/// The capacity of the PV block device in 512-byte sectors.
pub fn block_capacity() -> Result<u64, Status> {
    // SAFETY: touches no guest memory.
    unsafe { guest::call(Hypercall::BlockCapacity, [0; 4]) }.into_result()
}

/// The PV NIC's MAC address and MTU (`NetInfo`).
pub fn net_info() -> Result<pvkit_abi::net::NetInfo, Status> {
    // SAFETY: touches no guest memory.
    let v = unsafe { guest::call(Hypercall::NetInfo, [0; 4]) }.into_result()?;
    pvkit_abi::net::NetInfo::from_u64(v).map_err(|_| Status::EIO)
}

/// Sends one Ethernet frame synchronously (`NetSend`: one exit); returns the bytes sent.
pub fn net_send(frame: &[u8]) -> Result<u64, Status> {
    let gpa = crate::addr::virt_to_phys(frame.as_ptr());
    // SAFETY: the host only reads `frame`, which is borrowed for the call.
    unsafe { guest::call(Hypercall::NetSend, [gpa, frame.len() as u64, 0, 0]) }.into_result()
}

/// One synchronous block request; returns the bytes transferred.
///
/// # Safety
///
/// The host reads `req`, and reads (write requests) or writes (read requests) every
/// segment it names before the call returns: each segment must be valid for that access
/// and not be used by Rust code meanwhile (it is not, during the call, on a single CPU).
#[inline]
pub unsafe fn block_io(req: &BlockRequest) -> Result<u64, Status> {
    // SAFETY: forwarded to the caller's contract; `req` is borrowed for the call.
    unsafe { guest::call(Hypercall::BlockIo, [virt_to_phys(req), 0, 0, 0]) }.into_result()
}

/// Asks the host to service queue `queue` now (the synchronous doorbell); returns the
/// number of requests serviced.
pub fn ring_kick(queue: QueueId) -> Result<u64, Status> {
    // SAFETY: the host accesses only the registered ring, which its registration allows.
    unsafe { guest::call(Hypercall::RingKick, [u64::from(queue.to_u32()), 0, 0, 0]) }.into_result()
}

/// Binds queue `queue`'s completions to interrupt line `gsi` (an IOAPIC pin in
/// `RING_IRQ_GSI_FIRST..+RING_IRQ_GSIS`; 0: unbind, back to polling), `QueueInterrupt`.
/// The guest then arms `rsp_event` ([`crate::ring::Ring::arm_responses`]) when it wants
/// the next interrupt, and routes the pin to a vector itself (IOAPIC).
pub fn queue_interrupt(queue: QueueId, gsi: u32) -> Result<(), Status> {
    // SAFETY: touches no guest memory.
    unsafe {
        guest::call(
            Hypercall::QueueInterrupt,
            [u64::from(queue.to_u32()), u64::from(gsi), 0, 0],
        )
    }
    .into_result()
    .map(|_| ())
}

/// The host's ABI version (also in `BootInfo` and CPUID, which cost no exit to the VMM).
pub fn abi_version() -> AbiVersion {
    guest::abi_version()
}

/// The host's feature bits (also in `BootInfo` and CPUID, which cost no exit to the VMM).
pub fn features() -> Features {
    guest::features()
}

/// Starts vCPU `cpu` in 64-bit mode at `entry` with `RSP` = `stack` and `RDI` = `arg`
/// (`VcpuUp`, one VM exit). `EINVAL` for the caller itself, a vCPU that does not exist or
/// a non-canonical address, `EBUSY` for a vCPU already started, `EOPNOTSUPP` when the VM
/// has a single vCPU.
pub fn vcpu_up(cpu: u64, entry: u64, stack: u64, arg: u64) -> Result<(), Status> {
    // SAFETY: the call reads no guest memory; the started vCPU runs `entry` on `stack`,
    // which the caller chose.
    unsafe { guest::call(Hypercall::VcpuUp, [cpu, entry, stack, arg]) }
        .into_result()
        .map(|_| ())
}

/// Sends interrupt `vector` to every vCPU `base + i` whose bit `i` is set in `bitmap`
/// (`SendIpi`, one VM exit for all of them). Returns how many were delivered. `EINVAL`
/// for an empty bitmap, a vCPU that does not exist or a vector outside `0x20..=0xff`
/// (nothing is sent); `EOPNOTSUPP` when the VM has a single vCPU.
pub fn send_ipi(bitmap: u64, vector: u8, base: u64) -> Result<u64, Status> {
    // SAFETY: the call reads no guest memory; the interrupt runs the targets' handlers,
    // which the caller installed.
    unsafe { guest::call(Hypercall::SendIpi, [bitmap, u64::from(vector), base, 0]) }.into_result()
}

/// PV spinlock slow path: blocks this vCPU on the host until a [`lock_kick`] names it (or
/// one already did since its last wait) or the host's bound passes
/// ([`pvkit_abi::spinlock::LOCK_WAIT_MAX_US`]). `Ok(true)`: a kick ended the wait.
pub fn lock_wait() -> Result<bool, Status> {
    // SAFETY: the call reads no guest memory; it only blocks this vCPU for a bounded time.
    let r = unsafe { guest::call(Hypercall::LockWait, [0, 0, 0, 0]) };
    r.into_result().map(|v| v != 0)
}

/// Wakes vCPU `cpu` from [`lock_wait`] (or leaves the kick pending for its next one).
/// `Ok(true)`: it was blocked.
pub fn lock_kick(cpu: u64) -> Result<bool, Status> {
    // SAFETY: the call reads no guest memory.
    let r = unsafe { guest::call(Hypercall::LockKick, [cpu, 0, 0, 0]) };
    r.into_result().map(|v| v != 0)
}

/// A raw `LockWait`/`LockKick` with every argument as given (hostile-input checks):
/// returns the status.
pub fn lock_call_raw(call: Hypercall, args: [u64; 4]) -> Status {
    match call {
        Hypercall::LockWait | Hypercall::LockKick => {
            // SAFETY: LockWait and LockKick read no guest memory whatever the arguments.
            unsafe { guest::call(call, args) }.status
        }
        _ => Status::EINVAL,
    }
}
