//! The benchmark markers as a device on the hypercall bus: `BenchPhase` and `BenchResult`
//! ([`pvkit_abi::bench`]), recorded by a [`BenchRecorder`].

use std::sync::Mutex;

use pvkit_abi::bench::{BenchSample, CaseId, OpRecord, PhaseMark, MAX_OP_LOG, MAX_SAMPLES};
use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::Status;
use pvkit_pv::wire::Wire;
use std::mem::size_of;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::bench::{BenchRecorder, DiskReader, PhaseObserver, PhaseRecord, SampleRecord};
use crate::devices::pv::{CallCtx, PvDevice};
use crate::hypercall::{call_return, read_wire};
use crate::runtime::sync::lock;
use crate::vstate::memory::{guest_range, GuestRam};

/// The benchmark markers.
#[derive(Debug, Default)]
pub struct BenchMarkers {
    rec: Mutex<BenchRecorder>,
}

impl BenchMarkers {
    /// Markers with an empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the recorder the disk that op logs are verified against.
    pub fn set_disk(&self, disk: Box<dyn DiskReader>) {
        lock(&self.rec).set_disk(disk);
    }

    /// Calls `observer` with every phase as it ends.
    pub fn set_observer(&self, observer: PhaseObserver) {
        lock(&self.rec).set_observer(observer);
    }

    /// The phases finished so far.
    pub fn phases(&self) -> Vec<PhaseRecord> {
        lock(&self.rec).phases().to_vec()
    }

    /// The samples reported so far.
    pub fn samples(&self) -> Vec<SampleRecord> {
        lock(&self.rec).samples().to_vec()
    }

    /// Takes the phases and samples (the recorder is left empty).
    pub fn take(&self) -> (Vec<PhaseRecord>, Vec<SampleRecord>) {
        std::mem::take(&mut *lock(&self.rec)).into_parts()
    }
}

impl PvDevice for BenchMarkers {
    fn name(&self) -> &'static str {
        "bench"
    }

    fn features(&self) -> Features {
        Features::BENCH
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        &[Hypercall::BenchPhase, Hypercall::BenchResult]
    }

    fn call(&self, ctx: &CallCtx<'_>, call: Hypercall, args: [u64; 4]) -> CallReturn {
        let [a0, a1, a2, _] = args;
        call_return(match call {
            Hypercall::BenchPhase => self.phase(ctx, a0, a1, a2),
            Hypercall::BenchResult => self.result(ctx.mem, a0, a1, a2),
            _ => Err(Status::EOPNOTSUPP),
        })
    }
}

impl BenchMarkers {
    fn phase(&self, ctx: &CallCtx<'_>, case: u64, mark: u64, ops: u64) -> Result<u64, Status> {
        let case = CaseId::try_from(case).map_err(|_| Status::EINVAL)?;
        let mut rec = lock(&self.rec);
        match PhaseMark::try_from(mark).map_err(|_| Status::EINVAL)? {
            PhaseMark::Begin => rec.begin(case, ctx.ledger)?,
            PhaseMark::End => rec.end(case, ops, ctx.ledger)?,
        }
        Ok(0)
    }

    fn result(
        &self,
        mem: &GuestRam,
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
        let mut rec = lock(&self.rec);
        if !rec.has_room_for_cycles(count as usize) {
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
        rec.sample(mem, sample, cycles, &log)?;
        Ok(0)
    }
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
