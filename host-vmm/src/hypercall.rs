//! Hypercall decoding and dispatch, over guest memory and a small context; no KVM needed.
//!
//! The guest is hostile: every argument is validated, every guest range is checked with
//! [`guest_range`] before it is touched, and every failure becomes a status in `RAX`
//! (see [`pvkit_abi::call`]); nothing a guest passes can panic the host.

use pvkit_abi::bench::{BenchSample, CaseId, OpRecord, PhaseMark, MAX_OP_LOG, MAX_SAMPLES};
use pvkit_abi::call::{CallReturn, Hypercall, RawCall, UnknownHypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::fault::FaultReport;
use pvkit_abi::{Status, ABI_VERSION};
use pvkit_pv::wire::{AbiPod, Wire};
use std::mem::size_of;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::bench::BenchRecorder;
use crate::exit::ledger::ExitLedger;
use crate::io::console_out::Console;
use crate::runtime::stop::{GuestFault, StopReason};
use crate::vstate::memory::{guest_range, GuestRam};

/// A decoded hypercall with its arguments named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// [`Hypercall::AbiVersion`].
    AbiVersion,
    /// [`Hypercall::Features`].
    Features,
    /// [`Hypercall::ConsoleWrite`].
    ConsoleWrite {
        /// GPA of the bytes.
        addr: u64,
        /// Number of bytes.
        len: u64,
    },
    /// [`Hypercall::Exit`].
    Exit {
        /// The exit status (arg0 & 0xff).
        code: u8,
    },
    /// [`Hypercall::ReportFault`].
    ReportFault {
        /// GPA of the [`FaultReport`].
        addr: u64,
    },
    /// [`Hypercall::BenchPhase`].
    BenchPhase {
        /// The packed [`CaseId`].
        case: u64,
        /// The raw [`PhaseMark`].
        mark: u64,
        /// Operations done (at `End`).
        ops: u64,
    },
    /// [`Hypercall::BenchResult`].
    BenchResult {
        /// GPA of the [`BenchSample`].
        addr: u64,
        /// GPA of the op log (`[OpRecord]`).
        log_addr: u64,
        /// Entries in the op log (0 = none).
        log_len: u64,
    },
    /// [`Hypercall::RegisterRegion`].
    RegisterRegion {
        /// The raw region kind.
        kind: u64,
        /// GPA of the region.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// Kind-specific flags.
        flags: u64,
    },
    /// [`Hypercall::BlockCapacity`].
    BlockCapacity,
    /// [`Hypercall::BlockIo`].
    BlockIo {
        /// GPA of the block request.
        addr: u64,
    },
    /// [`Hypercall::RingKick`].
    RingKick {
        /// The raw ring id.
        ring: u64,
    },
}

impl Call {
    /// The call's number.
    pub fn hypercall(&self) -> Hypercall {
        match self {
            Call::AbiVersion => Hypercall::AbiVersion,
            Call::Features => Hypercall::Features,
            Call::ConsoleWrite { .. } => Hypercall::ConsoleWrite,
            Call::Exit { .. } => Hypercall::Exit,
            Call::ReportFault { .. } => Hypercall::ReportFault,
            Call::BenchPhase { .. } => Hypercall::BenchPhase,
            Call::BenchResult { .. } => Hypercall::BenchResult,
            Call::RegisterRegion { .. } => Hypercall::RegisterRegion,
            Call::BlockCapacity => Hypercall::BlockCapacity,
            Call::BlockIo { .. } => Hypercall::BlockIo,
            Call::RingKick { .. } => Hypercall::RingKick,
        }
    }
}

impl TryFrom<RawCall> for Call {
    type Error = UnknownHypercall;

    fn try_from(raw: RawCall) -> Result<Self, UnknownHypercall> {
        let [a0, a1, a2, a3] = raw.args;
        Ok(match Hypercall::try_from(raw.nr)? {
            Hypercall::AbiVersion => Call::AbiVersion,
            Hypercall::Features => Call::Features,
            Hypercall::ConsoleWrite => Call::ConsoleWrite { addr: a0, len: a1 },
            Hypercall::Exit => Call::Exit {
                code: (a0 & 0xff) as u8,
            },
            Hypercall::ReportFault => Call::ReportFault { addr: a0 },
            Hypercall::BenchPhase => Call::BenchPhase {
                case: a0,
                mark: a1,
                ops: a2,
            },
            Hypercall::BenchResult => Call::BenchResult {
                addr: a0,
                log_addr: a1,
                log_len: a2,
            },
            Hypercall::RegisterRegion => Call::RegisterRegion {
                kind: a0,
                addr: a1,
                len: a2,
                flags: a3,
            },
            Hypercall::BlockCapacity => Call::BlockCapacity,
            Hypercall::BlockIo => Call::BlockIo { addr: a0 },
            Hypercall::RingKick => Call::RingKick { ring: a0 },
        })
    }
}

/// Handlers for the PV block device and the shared rings.
///
/// [`crate::paravirt::PvBackend`] implements it over the `pvkit-pv` backends;
/// [`NoPvDevices`] answers `EOPNOTSUPP` to every call. Each method receives guest memory
/// and the raw arguments, and must validate them itself. Methods run on the vCPU thread.
pub trait PvDevices: Send {
    /// The feature bits these devices add (e.g. [`Features::BLOCK`]).
    fn features(&self) -> Features {
        Features::empty()
    }
    /// [`Hypercall::RegisterRegion`].
    fn register_region(
        &mut self,
        _mem: &GuestRam,
        _kind: u64,
        _addr: u64,
        _len: u64,
        _flags: u64,
    ) -> CallReturn {
        CallReturn::err(Status::EOPNOTSUPP)
    }
    /// [`Hypercall::BlockCapacity`].
    fn block_capacity(&mut self) -> CallReturn {
        CallReturn::err(Status::EOPNOTSUPP)
    }
    /// [`Hypercall::BlockIo`].
    fn block_io(&mut self, _mem: &GuestRam, _addr: u64) -> CallReturn {
        CallReturn::err(Status::EOPNOTSUPP)
    }
    /// [`Hypercall::RingKick`].
    fn ring_kick(&mut self, _mem: &GuestRam, _ring: u64) -> CallReturn {
        CallReturn::err(Status::EOPNOTSUPP)
    }
    /// Stops the devices' threads when the VM stops (called once, after the vCPU thread
    /// ended). Returns why a device thread failed during the run, if one did: the run is
    /// then reported as a host failure.
    fn shutdown(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// No PV block device and no rings: every such call returns `EOPNOTSUPP`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPvDevices;

impl PvDevices for NoPvDevices {}

/// Feature bits offered by the VMM itself (without PV devices).
pub const BASE_FEATURES: Features = Features::CONSOLE.union(Features::BENCH);

/// What a hypercall needs from the VM besides guest memory.
pub struct HypercallContext<'a> {
    /// The console sink shared with the UART.
    pub console: &'a Console,
    /// The exit ledger (already counting this hypercall's exit).
    pub ledger: &'a ExitLedger,
    /// Benchmark phases and samples.
    pub bench: &'a mut BenchRecorder,
    /// PV block and ring devices.
    pub pv: &'a mut dyn PvDevices,
}

impl HypercallContext<'_> {
    /// The feature bits the guest is told about.
    pub fn features(&self) -> Features {
        BASE_FEATURES | self.pv.features()
    }
}

/// The result of a hypercall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Put the values in `RAX`/`RDX` and resume the guest.
    Return(CallReturn),
    /// Stop the VM.
    Stop(StopReason),
}

impl From<CallReturn> for Outcome {
    fn from(r: CallReturn) -> Self {
        Outcome::Return(r)
    }
}

/// A call's result as `RAX`/`RDX`: the value with `OK`, or the status with no value.
pub fn call_return(r: Result<u64, Status>) -> CallReturn {
    match r {
        Ok(v) => CallReturn::ok(v),
        Err(s) => CallReturn::err(s),
    }
}

fn status_of(r: Result<u64, Status>) -> Outcome {
    Outcome::Return(call_return(r))
}

/// Reads one ABI structure at a guest address through its typed wire layout
/// ([`Wire`]), or `EFAULT` unless all of it is in RAM.
pub fn read_wire<T: AbiPod>(mem: &GuestRam, addr: u64) -> Result<T, Status> {
    let at = guest_range(mem, addr, size_of::<T>() as u64).ok_or(Status::EFAULT)?;
    mem.read_obj::<Wire<T>>(at)
        .map(|w| w.0)
        .map_err(|_| Status::EFAULT)
}

/// Reads `count` (already bounded by the caller) values of `T` at `addr`: `EFAULT` unless
/// the whole array is in RAM, checked before the first read.
fn read_array<T: ByteValued>(mem: &GuestRam, addr: u64, count: u64) -> Result<Vec<T>, Status> {
    let size = size_of::<T>() as u64;
    let len = count.checked_mul(size).ok_or(Status::E2BIG)?;
    let at = guest_range(mem, addr, len).ok_or(Status::EFAULT)?;
    // `i * size < len` and `addr + len` was checked not to wrap.
    (0..count)
        .map(|i| mem.read_obj::<T>(GuestAddress(at.0.wrapping_add(i * size))))
        .collect::<Result<_, _>>()
        .map_err(|_| Status::EFAULT)
}

/// Lends the shared console to [`pvkit_pv::console::write`], which wants an `io::Write`.
struct ConsoleSink<'a>(&'a Console);

impl std::io::Write for ConsoleSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_bytes(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `ConsoleWrite`: the same code and rules as a console ring request
/// ([`pvkit_pv::console::write`]).
fn console_write(
    ctx: &HypercallContext<'_>,
    mem: &GuestRam,
    addr: u64,
    len: u64,
) -> Result<u64, Status> {
    let n = pvkit_pv::console::write(mem, addr, len, &mut ConsoleSink(ctx.console))?;
    Ok(n as u64)
}

fn bench_phase(
    ctx: &mut HypercallContext<'_>,
    case: u64,
    mark: u64,
    ops: u64,
) -> Result<u64, Status> {
    let case = CaseId::try_from(case).map_err(|_| Status::EINVAL)?;
    match PhaseMark::try_from(mark).map_err(|_| Status::EINVAL)? {
        PhaseMark::Begin => ctx.bench.begin(case, ctx.ledger)?,
        PhaseMark::End => ctx.bench.end(case, ops, ctx.ledger)?,
    }
    Ok(0)
}

fn bench_result(
    mem: &GuestRam,
    ctx: &mut HypercallContext<'_>,
    addr: u64,
    log_addr: u64,
    log_len: u64,
) -> Result<u64, Status> {
    let sample: BenchSample = read_wire(mem, addr)?;
    CaseId::try_from(sample.case).map_err(|_| Status::EINVAL)?;
    if sample.sample_count > MAX_SAMPLES || log_len > MAX_OP_LOG {
        return Err(Status::E2BIG);
    }
    let count = u64::from(sample.sample_count);
    if !ctx.bench.has_room_for_cycles(count as usize) {
        return Err(Status::ENOMEM);
    }
    let cycles: Vec<u64> = if count == 0 {
        Vec::new()
    } else {
        read_array::<u64>(mem, sample.samples_addr, count)?
    };
    let log: Vec<OpRecord> = if log_len == 0 {
        Vec::new()
    } else {
        read_array::<Wire<OpRecord>>(mem, log_addr, log_len)?
            .into_iter()
            .map(|w| w.0)
            .collect()
    };
    ctx.bench.sample(mem, sample, cycles, &log)?;
    Ok(0)
}

/// Executes one decoded call.
pub fn execute(mem: &GuestRam, call: Call, ctx: &mut HypercallContext<'_>) -> Outcome {
    match call {
        Call::AbiVersion => CallReturn::ok(ABI_VERSION.to_u64()).into(),
        Call::Features => CallReturn::ok(ctx.features().bits()).into(),
        Call::ConsoleWrite { addr, len } => status_of(console_write(ctx, mem, addr, len)),
        Call::Exit { code } => Outcome::Stop(StopReason::Exit(code)),
        Call::ReportFault { addr } => match read_wire::<FaultReport>(mem, addr) {
            Ok(report) => Outcome::Stop(StopReason::Fault(GuestFault::from_report(&report))),
            Err(_) => Outcome::Stop(StopReason::UnreadableFault { addr }),
        },
        Call::BenchPhase { case, mark, ops } => status_of(bench_phase(ctx, case, mark, ops)),
        Call::BenchResult {
            addr,
            log_addr,
            log_len,
        } => status_of(bench_result(mem, ctx, addr, log_addr, log_len)),
        // The PV block/ring devices (`PvDevices`); without them these calls return
        // EOPNOTSUPP.
        Call::RegisterRegion {
            kind,
            addr,
            len,
            flags,
        } => ctx.pv.register_region(mem, kind, addr, len, flags).into(),
        Call::BlockCapacity => ctx.pv.block_capacity().into(),
        Call::BlockIo { addr } => ctx.pv.block_io(mem, addr).into(),
        Call::RingKick { ring } => ctx.pv.ring_kick(mem, ring).into(),
    }
}

/// Decodes and executes a raw call; an unknown number returns `ENOSYS`.
pub fn dispatch(mem: &GuestRam, raw: RawCall, ctx: &mut HypercallContext<'_>) -> Outcome {
    match Call::try_from(raw) {
        Ok(call) => execute(mem, call, ctx),
        Err(UnknownHypercall(_)) => CallReturn::err(Status::ENOSYS).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ledger::ExitKind;
    use crate::vstate::memory::create_ram;
    use pvkit_abi::bench::{Device, Variant, Workload};
    use pvkit_abi::console::MAX_WRITE;
    use pvkit_abi::fault::{MESSAGE_MAX, VECTOR_PANIC};
    use vm_memory::GuestAddress;

    const MIB: u64 = 4;
    const END: u64 = MIB << 20;
    /// `FaultReport` and `BenchSample` sizes as docs/ABI.md states them.
    const FAULT_REPORT_SIZE: usize = 288;
    const BENCH_SAMPLE_SIZE: usize = 72;

    struct Harness {
        mem: GuestRam,
        console: Console,
        ledger: ExitLedger,
        bench: BenchRecorder,
        pv: NoPvDevices,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                mem: create_ram(MIB).unwrap(),
                console: Console::capture(),
                ledger: ExitLedger::new(),
                bench: BenchRecorder::new(),
                pv: NoPvDevices,
            }
        }

        fn call(&mut self, nr: Hypercall, args: [u64; 4]) -> Outcome {
            self.raw(nr as u32, args)
        }

        fn raw(&mut self, nr: u32, args: [u64; 4]) -> Outcome {
            if let Ok(h) = Hypercall::try_from(nr) {
                self.ledger.record(ExitKind::Hypercall(h));
            }
            let mut ctx = HypercallContext {
                console: &self.console,
                ledger: &self.ledger,
                bench: &mut self.bench,
                pv: &mut self.pv,
            };
            dispatch(&self.mem, RawCall { nr, args }, &mut ctx)
        }
    }

    fn ret(status: Status, value: u64) -> Outcome {
        Outcome::Return(CallReturn { status, value })
    }

    fn err(status: Status) -> Outcome {
        ret(status, 0)
    }

    #[test]
    fn decode_every_call_and_unknowns() {
        for h in Hypercall::ALL {
            let c = Call::try_from(RawCall {
                nr: h as u32,
                args: [1, 2, 3, 4],
            })
            .unwrap();
            assert_eq!(c.hypercall(), h);
        }
        for nr in [0, 12, 0x500, u32::MAX] {
            assert_eq!(
                Call::try_from(RawCall { nr, args: [0; 4] }),
                Err(UnknownHypercall(nr))
            );
        }
        assert_eq!(
            Call::try_from(RawCall {
                nr: 4,
                args: [0x1_2345, 0, 0, 0]
            }),
            Ok(Call::Exit { code: 0x45 })
        );
    }

    #[test]
    fn unknown_numbers_are_enosys() {
        let mut h = Harness::new();
        for nr in [0, 12, 99, u32::MAX] {
            assert_eq!(h.raw(nr, [u64::MAX; 4]), err(Status::ENOSYS));
        }
    }

    #[test]
    fn version_and_features() {
        let mut h = Harness::new();
        assert_eq!(
            h.call(Hypercall::AbiVersion, [9; 4]),
            ret(Status::Ok, 1 << 32)
        );
        assert_eq!(
            h.call(Hypercall::Features, [0; 4]),
            ret(Status::Ok, (Features::CONSOLE | Features::BENCH).bits())
        );
    }

    #[test]
    fn console_write_ok_and_empty() {
        let mut h = Harness::new();
        h.mem
            .write_slice(b"hello\n", GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(
            h.call(Hypercall::ConsoleWrite, [0x20_0000, 6, 0, 0]),
            ret(Status::Ok, 6)
        );
        assert_eq!(
            h.call(Hypercall::ConsoleWrite, [0x20_0000, 0, 0, 0]),
            ret(Status::Ok, 0)
        );
        // The very last byte of RAM.
        h.mem.write_slice(b"!", GuestAddress(END - 1)).unwrap();
        assert_eq!(
            h.call(Hypercall::ConsoleWrite, [END - 1, 1, 0, 0]),
            ret(Status::Ok, 1)
        );
        // An empty write at the end of RAM is still inside the rule.
        assert_eq!(
            h.call(Hypercall::ConsoleWrite, [END, 0, 0, 0]),
            ret(Status::Ok, 0)
        );
        assert_eq!(h.console.captured(), b"hello\n!");
    }

    #[test]
    fn console_write_bad_ranges() {
        let mut h = Harness::new();
        for (addr, len, status) in [
            (END, 1, Status::EFAULT),               // beyond RAM
            (END - 1, 2, Status::EFAULT),           // crosses the end of RAM
            (u64::MAX, 2, Status::EFAULT),          // wraps around 2^64
            (u64::MAX - 15, 64, Status::EFAULT),    // wraps around 2^64
            (1 << 40, 16, Status::EFAULT),          // far beyond RAM
            (1 << 40, 0, Status::EFAULT),           // empty, but far beyond RAM (as a ring)
            (END + 1, 0, Status::EFAULT),           // empty, past the end of RAM
            (0, MAX_WRITE + 1, Status::E2BIG),      // too long
            (0, u64::MAX, Status::E2BIG),           // huge
            (END - 8, u64::MAX - 4, Status::E2BIG), // huge and wrapping
        ] {
            assert_eq!(
                h.call(Hypercall::ConsoleWrite, [addr, len, 0, 0]),
                err(status),
                "addr {addr:#x} len {len:#x}"
            );
        }
        assert_eq!(
            h.call(Hypercall::ConsoleWrite, [END - MAX_WRITE, MAX_WRITE, 0, 0]),
            ret(Status::Ok, MAX_WRITE)
        );
        assert_eq!(h.console.captured().len() as u64, MAX_WRITE);
    }

    #[test]
    fn exit_stops_with_the_low_byte() {
        let mut h = Harness::new();
        assert_eq!(
            h.call(Hypercall::Exit, [0x1ff, 0, 0, 0]),
            Outcome::Stop(StopReason::Exit(0xff))
        );
    }

    #[test]
    fn report_fault_reads_and_clamps() {
        let mut h = Harness::new();
        let mut report = vec![0u8; FAULT_REPORT_SIZE];
        report[0..4].copy_from_slice(&14u32.to_le_bytes());
        report[4..8].copy_from_slice(&10_000u32.to_le_bytes());
        report[8..16].copy_from_slice(&2u64.to_le_bytes());
        report[16..24].copy_from_slice(&0xdead_beefu64.to_le_bytes());
        report[24..32].copy_from_slice(&0x42u64.to_le_bytes());
        report[32..35].copy_from_slice(b"pf\xff");
        h.mem.write_slice(&report, GuestAddress(0x30_0000)).unwrap();
        let Outcome::Stop(StopReason::Fault(f)) =
            h.call(Hypercall::ReportFault, [0x30_0000, 0, 0, 0])
        else {
            panic!("expected a fault stop");
        };
        assert_eq!(
            (f.vector, f.error_code, f.rip, f.cr2),
            (14, 2, 0xdead_beef, 0x42)
        );
        assert_eq!(f.message.chars().count(), MESSAGE_MAX);
        assert!(f.message.starts_with("pf\u{fffd}"));
    }

    #[test]
    fn report_fault_unreadable_still_stops() {
        let mut h = Harness::new();
        for addr in [END - 8, u64::MAX - 4, END] {
            assert_eq!(
                h.call(Hypercall::ReportFault, [addr, 0, 0, 0]),
                Outcome::Stop(StopReason::UnreadableFault { addr })
            );
        }
    }

    #[test]
    fn panic_report() {
        let mut h = Harness::new();
        let mut report = vec![0u8; FAULT_REPORT_SIZE];
        report[0..4].copy_from_slice(&VECTOR_PANIC.to_le_bytes());
        report[4..8].copy_from_slice(&3u32.to_le_bytes());
        report[32..36].copy_from_slice(b"oops");
        let at = END - FAULT_REPORT_SIZE as u64;
        h.mem.write_slice(&report, GuestAddress(at)).unwrap();
        let out = h.call(Hypercall::ReportFault, [at, 0, 0, 0]);
        let Outcome::Stop(StopReason::Fault(f)) = out else {
            panic!("expected a fault stop");
        };
        assert!(f.is_panic());
        assert_eq!(f.message, "oop");
    }

    fn case() -> CaseId {
        CaseId {
            device: Device::Console,
            variant: Variant::PvHypercall,
            workload: Workload::Write64,
        }
    }

    #[test]
    fn bench_phases_attribute_exits() {
        let mut h = Harness::new();
        let c = case().to_u64();
        assert_eq!(
            h.call(Hypercall::BenchPhase, [c, 1, 0, 0]),
            ret(Status::Ok, 0)
        );
        h.mem.write_slice(b"x", GuestAddress(0x1000)).unwrap();
        for _ in 0..3 {
            h.call(Hypercall::ConsoleWrite, [0x1000, 1, 0, 0]);
        }
        assert_eq!(
            h.call(Hypercall::BenchPhase, [c, 2, 3, 0]),
            ret(Status::Ok, 0)
        );
        let p = &h.bench.phases()[0];
        assert_eq!(p.case, case());
        assert_eq!(p.ops, 3);
        assert_eq!(p.exits.total, 3);
        assert_eq!(
            p.exits.count(ExitKind::Hypercall(Hypercall::ConsoleWrite)),
            3
        );
    }

    #[test]
    fn bench_phase_bad_arguments() {
        let mut h = Harness::new();
        let c = case().to_u64();
        assert_eq!(
            h.call(Hypercall::BenchPhase, [0, 1, 0, 0]),
            err(Status::EINVAL)
        );
        assert_eq!(
            h.call(Hypercall::BenchPhase, [u64::MAX, 1, 0, 0]),
            err(Status::EINVAL)
        );
        assert_eq!(
            h.call(Hypercall::BenchPhase, [c, 3, 0, 0]),
            err(Status::EINVAL)
        );
        assert_eq!(
            h.call(Hypercall::BenchPhase, [c, 2, 0, 0]),
            err(Status::EINVAL)
        );
    }

    fn sample_bytes(case: u64, count: u32, samples_addr: u64) -> Vec<u8> {
        let mut s = vec![0u8; BENCH_SAMPLE_SIZE];
        s[0..8].copy_from_slice(&case.to_le_bytes());
        s[8..16].copy_from_slice(&1000u64.to_le_bytes());
        s[48..52].copy_from_slice(&1u32.to_le_bytes());
        s[52..56].copy_from_slice(&count.to_le_bytes());
        s[56..64].copy_from_slice(&samples_addr.to_le_bytes());
        s[64..72].copy_from_slice(&7u64.to_le_bytes());
        s
    }

    #[test]
    fn bench_result_stores_and_validates() {
        let mut h = Harness::new();
        let s = sample_bytes(case().to_u64(), 0, 0);
        h.mem.write_slice(&s, GuestAddress(0x2000)).unwrap();
        assert_eq!(
            h.call(Hypercall::BenchResult, [0x2000, 0, 0, 0]),
            ret(Status::Ok, 0)
        );
        let got = &h.bench.samples()[0];
        assert_eq!(
            (got.sample.ops, got.sample.flags, got.sample.extra),
            (1000, 1, 7)
        );
        assert_eq!(got.sample.case, case().to_u64());
        // Bad case id, bad pointers.
        h.mem.write_slice(&[0u8; 8], GuestAddress(0x2000)).unwrap();
        assert_eq!(
            h.call(Hypercall::BenchResult, [0x2000, 0, 0, 0]),
            err(Status::EINVAL)
        );
        for addr in [END - 71, u64::MAX - 8, END] {
            assert_eq!(
                h.call(Hypercall::BenchResult, [addr, 0, 0, 0]),
                err(Status::EFAULT)
            );
        }
        assert_eq!(h.bench.samples().len(), 1);
    }

    #[test]
    fn bench_result_raw_samples() {
        let mut h = Harness::new();
        let cycles: Vec<u8> = [30u64, 10, 20]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        h.mem.write_slice(&cycles, GuestAddress(0x3000)).unwrap();
        let c = case().to_u64();
        h.mem
            .write_slice(&sample_bytes(c, 3, 0x3000), GuestAddress(0x2000))
            .unwrap();
        assert_eq!(
            h.call(Hypercall::BenchResult, [0x2000, 0, 0, 0]),
            ret(Status::Ok, 0)
        );
        let got = &h.bench.samples()[0];
        assert_eq!(got.cycles, vec![30, 10, 20]);
        assert_eq!((got.sample.cycles_median, got.sample.cycles_p99), (20, 30));
        // Too many samples, samples outside RAM, wrapping sample ranges.
        for (count, at, status) in [
            (MAX_SAMPLES + 1, 0x3000, Status::E2BIG),
            (u32::MAX, 0x3000, Status::E2BIG),
            (2, END - 8, Status::EFAULT),
            (8, u64::MAX - 16, Status::EFAULT),
        ] {
            h.mem
                .write_slice(&sample_bytes(c, count, at), GuestAddress(0x2000))
                .unwrap();
            assert_eq!(
                h.call(Hypercall::BenchResult, [0x2000, 0, 0, 0]),
                err(status),
                "count {count} at {at:#x}"
            );
        }
        assert_eq!(h.bench.samples().len(), 1);
    }

    #[test]
    fn bench_result_op_log() {
        let mut h = Harness::new();
        let c = case().to_u64();
        h.mem
            .write_slice(&sample_bytes(c, 0, 0), GuestAddress(0x2000))
            .unwrap();
        let mut rec = vec![0u8; 24];
        rec[8..16].copy_from_slice(&0x5000u64.to_le_bytes());
        rec[16..20].copy_from_slice(&512u32.to_le_bytes());
        rec[20..24].copy_from_slice(&1u32.to_le_bytes());
        h.mem.write_slice(&rec, GuestAddress(0x4000)).unwrap();
        assert_eq!(
            h.call(Hypercall::BenchResult, [0x2000, 0x4000, 1, 0]),
            ret(Status::Ok, 0)
        );
        let got = &h.bench.samples()[0];
        assert_eq!(got.op_log_len, 1);
        assert!(matches!(
            got.verification,
            crate::bench::Verification::NotVerifiable(_)
        ));
        for (at, len, status) in [
            (0x4000, MAX_OP_LOG + 1, Status::E2BIG),
            (0x4000, u64::MAX, Status::E2BIG),
            (END - 24, 2, Status::EFAULT),
            (u64::MAX - 10, 1, Status::EFAULT),
        ] {
            assert_eq!(
                h.call(Hypercall::BenchResult, [0x2000, at, len, 0]),
                err(status),
                "log at {at:#x} len {len}"
            );
        }
    }

    #[test]
    fn pv_calls_are_not_supported_yet() {
        let mut h = Harness::new();
        for nr in [
            Hypercall::RegisterRegion,
            Hypercall::BlockCapacity,
            Hypercall::BlockIo,
            Hypercall::RingKick,
        ] {
            assert_eq!(h.call(nr, [u64::MAX; 4]), err(Status::EOPNOTSUPP));
        }
    }

    #[test]
    fn typed_reads_follow_the_documented_offsets() {
        // Encoded by hand at docs/ABI.md's offsets, read back through `Wire<T>`.
        let h = Harness::new();
        let mut rec = Vec::new();
        rec.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes()); // sector @0
        rec.extend_from_slice(&0x9000u64.to_le_bytes()); // addr @8
        rec.extend_from_slice(&4096u32.to_le_bytes()); // len @16
        rec.extend_from_slice(&2u32.to_le_bytes()); // op @20
        h.mem.write_slice(&rec, GuestAddress(0x5000)).unwrap();
        assert_eq!(
            read_wire::<OpRecord>(&h.mem, 0x5000),
            Ok(OpRecord {
                sector: 0x1122_3344_5566_7788,
                addr: 0x9000,
                len: 4096,
                op: 2
            })
        );
        let s: Vec<u8> = (1..=9u64).flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(s.len(), BENCH_SAMPLE_SIZE);
        h.mem.write_slice(&s, GuestAddress(0x6000)).unwrap();
        let got: BenchSample = read_wire(&h.mem, 0x6000).unwrap();
        // flags/sample_count are the two u32 halves of the seventh u64 (7 at @48, 0 at @52).
        assert_eq!(
            (got.case, got.cycles_p99, got.flags, got.sample_count),
            (1, 6, 7, 0)
        );
        assert_eq!((got.samples_addr, got.extra), (8, 9));
        assert_eq!(read_wire::<OpRecord>(&h.mem, END - 23), Err(Status::EFAULT));
        assert_eq!(
            read_wire::<BenchSample>(&h.mem, u64::MAX - 8),
            Err(Status::EFAULT)
        );
    }
}
