//! The core hypercall dispatcher, over guest memory and a small context; no KVM needed.
//!
//! The core calls (`AbiVersion`, `Features`, `Exit`, `ReportFault`) are answered here;
//! every other number goes to the device that registered it on the
//! [`HypercallBus`](crate::devices::pv::HypercallBus).
//!
//! The guest is hostile: every argument is validated, every guest range is checked with
//! [`guest_range`] before it is touched, and every failure becomes a status in `RAX`
//! (see [`pvkit_abi::call`]); nothing a guest passes can panic the host.

use pvkit_abi::call::{CallReturn, Hypercall, RawCall};
use pvkit_abi::fault::FaultReport;
use pvkit_abi::{Status, ABI_VERSION};
use pvkit_pv::wire::{AbiPod, Wire};
use std::mem::size_of;
use vm_memory::Bytes;

use crate::devices::pv::HypercallBus;
use crate::exit::ledger::ExitLedger;
use crate::runtime::stop::{GuestFault, StopReason};
use crate::vstate::memory::{guest_range, GuestRam};

/// What a hypercall needs from the VM besides guest memory.
pub struct HypercallContext<'a> {
    /// The exit ledger (already counting this hypercall's exit).
    pub ledger: &'a ExitLedger,
    /// The PV devices.
    pub bus: &'a HypercallBus,
    /// The index of the calling vCPU.
    pub vcpu: u32,
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

/// Reads one ABI structure at a guest address through its typed wire layout
/// ([`Wire`]), or `EFAULT` unless all of it is in RAM.
pub fn read_wire<T: AbiPod>(mem: &GuestRam, addr: u64) -> Result<T, Status> {
    let at = guest_range(mem, addr, size_of::<T>() as u64).ok_or(Status::EFAULT)?;
    mem.read_obj::<Wire<T>>(at)
        .map(|w| w.0)
        .map_err(|_| Status::EFAULT)
}

/// Decodes and executes one hypercall: unknown numbers are `ENOSYS`, the core calls are
/// answered here, the rest by the bus.
pub fn dispatch(mem: &GuestRam, raw: RawCall, ctx: &HypercallContext<'_>) -> Outcome {
    let Ok(call) = Hypercall::try_from(raw.nr) else {
        return CallReturn::err(Status::ENOSYS).into();
    };
    let [a0, ..] = raw.args;
    match call {
        Hypercall::AbiVersion => CallReturn::ok(ABI_VERSION.to_u64()).into(),
        Hypercall::Features => CallReturn::ok(ctx.bus.features().bits()).into(),
        Hypercall::Exit => Outcome::Stop(StopReason::Exit((a0 & 0xff) as u8)),
        Hypercall::ReportFault => match read_wire::<FaultReport>(mem, a0) {
            Ok(report) => Outcome::Stop(StopReason::Fault(GuestFault::from_report(&report))),
            Err(_) => Outcome::Stop(StopReason::UnreadableFault { addr: a0 }),
        },
        _ => ctx
            .bus
            .dispatch(mem, ctx.ledger, ctx.vcpu, call, raw.args)
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pseudo::markers::BenchMarkers;
    use crate::exit::ledger::ExitKind;
    use crate::io::console_out::Console;
    use crate::vstate::memory::create_ram;
    use pvkit_abi::bench::{
        BenchSample, CaseId, Device, OpRecord, Variant, Workload, MAX_OP_LOG, MAX_SAMPLES,
    };
    use pvkit_abi::console::MAX_WRITE;
    use pvkit_abi::cpuid::Features;
    use pvkit_abi::fault::{MESSAGE_MAX, VECTOR_PANIC};
    use std::sync::Arc;
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
        bench: Arc<BenchMarkers>,
        pv: HypercallBus,
    }

    impl Harness {
        /// The devices every VM has (console, bench markers), no rings, no block device.
        fn new() -> Self {
            Self::with_pv_console(true)
        }

        /// As [`Harness::new`], the PV console left out when `pv_console` is false.
        fn with_pv_console(pv_console: bool) -> Self {
            let console = Console::capture();
            let mut ledger = ExitLedger::new();
            let devices = crate::devices::assemble(
                crate::devices::PvConfig::core(console.clone(), pv_console),
                &mut ledger,
            )
            .unwrap();
            Self {
                mem: create_ram(MIB).unwrap(),
                console,
                ledger,
                bench: devices.bench,
                pv: devices.bus,
            }
        }

        fn call(&mut self, nr: Hypercall, args: [u64; 4]) -> Outcome {
            self.raw(nr as u32, args)
        }

        fn raw(&mut self, nr: u32, args: [u64; 4]) -> Outcome {
            if let Ok(h) = Hypercall::try_from(nr) {
                self.ledger.record(ExitKind::Hypercall(h));
            }
            let ctx = HypercallContext {
                ledger: &self.ledger,
                bus: &self.pv,
                vcpu: 0,
            };
            dispatch(&self.mem, RawCall { nr, args }, &ctx)
        }
    }

    fn ret(status: Status, value: u64) -> Outcome {
        Outcome::Return(CallReturn { status, value })
    }

    fn err(status: Status) -> Outcome {
        ret(status, 0)
    }

    #[test]
    fn unknown_numbers_are_enosys() {
        let mut h = Harness::new();
        // Unknown numbers in every class's range, between ranges and above them.
        for nr in [
            0,
            8,
            0xff,
            0x101,
            0x202,
            0x302,
            0x4ff,
            0x505,
            0x600,
            0xf02,
            0x1000,
            u32::MAX,
        ] {
            assert_eq!(h.raw(nr, [u64::MAX; 4]), err(Status::ENOSYS));
        }
    }

    #[test]
    fn version_and_features() {
        let mut h = Harness::new();
        assert_eq!(
            h.call(Hypercall::AbiVersion, [9; 4]),
            ret(Status::Ok, 2 << 32)
        );
        assert_eq!(
            h.call(Hypercall::Features, [0; 4]),
            ret(Status::Ok, (Features::CONSOLE | Features::BENCH).bits())
        );
    }

    /// `--no-pv-console`: no `CONSOLE` bit, and `ConsoleWrite` writes nothing.
    #[test]
    fn without_the_pv_console_there_is_no_console_call() {
        let mut h = Harness::with_pv_console(false);
        assert_eq!(
            h.call(Hypercall::Features, [0; 4]),
            ret(Status::Ok, Features::BENCH.bits())
        );
        h.mem.write_slice(b"hi", GuestAddress(0x20_0000)).unwrap();
        assert_eq!(
            h.call(Hypercall::ConsoleWrite, [0x20_0000, 2, 0, 0]),
            err(Status::EOPNOTSUPP)
        );
        assert!(h.console.captured().is_empty());
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
        let phases = h.bench.phases();
        let p = &phases[0];
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
        let samples = h.bench.samples();
        let got = &samples[0];
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
        let samples = h.bench.samples();
        let got = &samples[0];
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
        let samples = h.bench.samples();
        let got = &samples[0];
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
