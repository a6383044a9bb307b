//! Benchmark phase markers and samples: how a guest workload tells the host what it ran.
//!
//! A workload brackets each case with [`crate::Hypercall::BenchPhase`] `Begin` / `End`
//! markers; the host snapshots its exit ledger at each marker so the exits in between are
//! attributed to the case (the two marker exits themselves are excluded). The guest then
//! sends one [`BenchSample`] with its own cycle measurements, and optionally an op log
//! ([`OpRecord`]) so the host can verify the data itself: for reads, that each guest buffer
//! holds what the disk holds at the logged sector; for writes, that the disk now holds what
//! the logged source buffer holds. Verifying on the host keeps the guest's ring-0 loop short.

use crate::assert_layout;

/// The device a case exercises.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// Console output.
    Console = 1,
    /// Block storage.
    Block = 2,
    /// Time source reads.
    Clock = 3,
    /// Bare exit round trips (calibration).
    Exit = 4,
    /// Network frames (the NE2000 against the PV NIC).
    Net = 5,
    /// Inter-processor interrupts (a 4-vCPU boot).
    Ipi = 9,
    /// Application-processor bring-up (a 4-vCPU boot per variant).
    Smp = 10,
    /// Giving freed guest memory back to the host (a boot per variant).
    Balloon = 11,
    /// Interrupt delivery and acknowledge (one interrupt raised, handled and acknowledged
    /// per operation).
    Irq = 6,
    /// One spinlock contended by several vCPUs (`--vcpus N`, one boot per case).
    Spinlock = 12,
}

/// How the device is reached.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Emulated 16550 UART, LSR poll + THR write per byte.
    Uart = 1,
    /// One synchronous hypercall per request.
    PvHypercall = 2,
    /// Request ring, doorbell served by the VMM in userspace.
    PvRing = 3,
    /// Request ring, doorbell through ioeventfd to a host I/O thread.
    PvEventfd = 4,
    /// Request ring polled by a host thread.
    PvPoll = 5,
    /// Emulated ATA disk, PIO.
    AtaPio = 6,
    /// Emulated 8254 PIT, latch and read counter 0.
    Pit = 7,
    /// pvkit PV clock page.
    PvClock = 8,
    /// KVM's kvmclock.
    KvmClock = 9,
    /// Raw `out` to an unused port handled by the VMM.
    PortOut = 10,
    /// Emulated NE2000 NIC: port I/O, remote DMA, IRQ 9.
    Ne2000 = 11,
    /// Request rings with doorbells, completions by interrupt (the guest halts).
    PvIrq = 12,
    /// x2APIC ICR writes to KVM's in-kernel LAPIC.
    X2Apic = 19,
    /// INIT-SIPI-SIPI through the in-kernel LAPIC, the AP climbing from real mode.
    InitSipi = 20,
    /// The unmodified guest: freed memory stays on its free list, the host keeps it.
    NoBalloon = 21,
    /// A self-IPI (x2APIC `SELF_IPI` MSR) acknowledged by the x2APIC EOI MSR write.
    X2apicEoi = 24,
    /// A self-IPI acknowledged by KVM's PV EOI (`MSR_KVM_PV_EOI_EN`): the handler clears
    /// the flag KVM set on injection instead of writing the EOI register, and falls back
    /// to the x2APIC EOI when KVM did not set it.
    PvEoi = 25,
    /// A legacy IRQ raised by the VMM through an irqfd ([`crate::ports::IRQ_TEST`]),
    /// delivered by the IOAPIC and acknowledged by the LAPIC EOI.
    IoapicEoi = 26,
    /// A legacy IRQ raised by the VMM through an irqfd ([`crate::ports::IRQ_TEST`]),
    /// delivered by the 8259 PIC (ExtINT) and acknowledged by a PIC EOI port write.
    PicEoi = 27,
    /// A plain ticket spinlock: waiters spin (the baseline).
    TicketSpin = 28,
    /// The PV ticket spinlock: bounded spin, then `LockWait`; the unlocker `LockKick`s.
    PvSpinlock = 29,
}

/// What the case does.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// 64-byte console writes.
    Write64 = 1,
    /// 4 KiB console writes.
    Write4K = 2,
    /// 4 KiB random reads.
    RandRead4K = 3,
    /// 4 KiB random writes.
    RandWrite4K = 4,
    /// 1 MiB sequential reads.
    SeqRead1M = 5,
    /// 1 MiB sequential writes.
    SeqWrite1M = 6,
    /// One time read.
    ClockRead = 7,
    /// One exit round trip.
    RoundTrip = 8,
    /// Transmit 64-byte frames.
    Tx64 = 9,
    /// Transmit 1514-byte frames (1500-byte IP packets).
    Tx1500 = 10,
    /// Receive 64-byte frames (a pipelined UDP echo stream: each also costs its request).
    Rx64 = 11,
    /// Receive 1514-byte frames (as [`Workload::Rx64`]).
    Rx1500 = 12,
    /// One UDP echo round trip of a 64-byte frame.
    UdpEcho64 = 13,
    /// One UDP echo round trip of a 64-byte frame originated by the host's loopback peer
    /// and timed by the host clock; the guest serves its UDP echo responder.
    HostEcho64 = 30,
    /// An IPI from CPU 0 to CPU 1 and its answer back (a round trip).
    PingPong = 19,
    /// One IPI from CPU 0 to every other CPU, all acknowledged.
    OneToAll = 20,
    /// Start one application processor until it reports in.
    ApBringUp = 21,
    /// Free touched guest memory; an op is one MiB.
    Release = 22,
    /// One interrupt raised, delivered, handled and acknowledged.
    Interrupt = 16,
    /// One lock acquisition (critical section: a shared counter) by 2 vCPUs.
    Contend2 = 24,
    /// As [`Workload::Contend2`] with 4 vCPUs.
    Contend4 = 25,
    /// As [`Workload::Contend2`] with 8 vCPUs.
    Contend8 = 26,
}

macro_rules! decode_u16 {
    ($ty:ident { $($v:ident),* $(,)? }) => {
        impl TryFrom<u16> for $ty {
            type Error = u16;
            fn try_from(v: u16) -> Result<Self, u16> {
                $( if v == $ty::$v as u16 { return Ok($ty::$v); } )*
                Err(v)
            }
        }
    };
}
decode_u16!(Device {
    Console,
    Block,
    Clock,
    Exit,
    Net,
    Ipi,
    Smp,
    Balloon,
    Irq,
    Spinlock
});
decode_u16!(Variant {
    Uart,
    PvHypercall,
    PvRing,
    PvEventfd,
    PvPoll,
    AtaPio,
    Pit,
    PvClock,
    KvmClock,
    PortOut,
    Ne2000,
    PvIrq,
    X2Apic,
    InitSipi,
    NoBalloon,
    X2apicEoi,
    PvEoi,
    IoapicEoi,
    PicEoi,
    TicketSpin,
    PvSpinlock
});
decode_u16!(Workload {
    Write64,
    Write4K,
    RandRead4K,
    RandWrite4K,
    SeqRead1M,
    SeqWrite1M,
    ClockRead,
    RoundTrip,
    Tx64,
    Tx1500,
    Rx64,
    Rx1500,
    UdpEcho64,
    HostEcho64,
    PingPong,
    OneToAll,
    ApBringUp,
    Release,
    Interrupt,
    Contend2,
    Contend4,
    Contend8
});

/// A benchmark case: device, variant, workload. On the wire, packed into one `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CaseId {
    /// The device.
    pub device: Device,
    /// The variant.
    pub variant: Variant,
    /// The workload.
    pub workload: Workload,
}

impl CaseId {
    /// `device | variant << 16 | workload << 32`.
    pub const fn to_u64(self) -> u64 {
        self.device as u64 | (self.variant as u64) << 16 | (self.workload as u64) << 32
    }
}

/// A packed case id whose parts are not all known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownCase(pub u64);

impl TryFrom<u64> for CaseId {
    type Error = UnknownCase;

    fn try_from(v: u64) -> Result<Self, UnknownCase> {
        if v >> 48 != 0 {
            return Err(UnknownCase(v));
        }
        let device = Device::try_from(v as u16).map_err(|_| UnknownCase(v))?;
        let variant = Variant::try_from((v >> 16) as u16).map_err(|_| UnknownCase(v))?;
        let workload = Workload::try_from((v >> 32) as u16).map_err(|_| UnknownCase(v))?;
        Ok(CaseId {
            device,
            variant,
            workload,
        })
    }
}

/// arg1 of [`crate::Hypercall::BenchPhase`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseMark {
    /// The case starts after this call.
    Begin = 1,
    /// The case ended before this call.
    End = 2,
}

impl TryFrom<u64> for PhaseMark {
    type Error = u64;

    fn try_from(v: u64) -> Result<Self, u64> {
        match v {
            1 => Ok(PhaseMark::Begin),
            2 => Ok(PhaseMark::End),
            other => Err(other),
        }
    }
}

/// `BenchSample::flags`: the guest verified the data of this case and it was right.
pub const SAMPLE_VERIFIED: u32 = 1 << 0;
/// `BenchSample::flags`: the guest's verification failed; the case must be reported FAILED.
pub const SAMPLE_FAILED: u32 = 1 << 1;
/// `BenchSample::flags`: the case's timed loop ran in guest ring 3 (a vDSO-style clock read,
/// a ring polled from user mode as with io_uring `SQPOLL`), not in ring 0. Informational:
/// a host that does not know the bit ignores it.
pub const SAMPLE_RING3: u32 = 1 << 2;
/// `BenchSample::flags`: the raw cycle samples come from a separate latency pass run outside
/// the phase markers, not from the timed loop between them (whose cost `cycles_total` then
/// is, with no per-operation time reads inside). Informational: a host that does not know
/// the bit ignores it.
pub const SAMPLE_LATENCY_PASS: u32 = 1 << 3;

/// Most per-operation cycle samples the host reads from one [`BenchSample`].
pub const MAX_SAMPLES: u32 = 8192;

/// One case's guest-side measurements ([`crate::Hypercall::BenchResult`]).
///
/// Percentiles are expensive to compute where guest ring 0 is interpreted, so a guest may
/// leave `cycles_median`/`cycles_p99` at 0 and hand the host its raw samples instead
/// (`samples_addr`, `sample_count`): the host then computes both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchSample {
    /// [`CaseId::to_u64`].
    pub case: u64,
    /// Operations done.
    pub ops: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Guest TSC cycles for the whole phase.
    pub cycles_total: u64,
    /// Median guest cycles per operation, or 0 if the host should compute it from samples.
    pub cycles_median: u64,
    /// 99th percentile guest cycles per operation, or 0 (as above).
    pub cycles_p99: u64,
    /// [`SAMPLE_VERIFIED`], [`SAMPLE_FAILED`], [`SAMPLE_RING3`], [`SAMPLE_LATENCY_PASS`];
    /// other bits 0.
    pub flags: u32,
    /// Number of `u64` entries at `samples_addr` (≤ [`MAX_SAMPLES`]; 0 = none).
    pub sample_count: u32,
    /// GPA of `[u64; sample_count]`: guest cycles per operation, one entry per operation or
    /// per batch of operations (each already divided by the batch size).
    pub samples_addr: u64,
    /// Case-specific value (e.g. maximum clock disagreement in ns).
    pub extra: u64,
}
assert_layout!(
    BenchSample,
    size = 72,
    case @ 0,
    ops @ 8,
    bytes @ 16,
    cycles_total @ 24,
    cycles_median @ 32,
    cycles_p99 @ 40,
    flags @ 48,
    sample_count @ 52,
    samples_addr @ 56,
    extra @ 64,
);

/// Most entries of an op log the host reads ([`crate::Hypercall::BenchResult`] a2).
pub const MAX_OP_LOG: u64 = 8192;

/// `OpRecord::op`: the guest read `len` bytes at `sector` into `addr`.
pub const OP_READ: u32 = 1;
/// `OpRecord::op`: the guest wrote `len` bytes from `addr` to `sector`.
pub const OP_WRITE: u32 = 2;

/// One logged block operation, for host-side verification. Buffers named by a log must not
/// be modified by the guest between the operation and the `BenchResult` call, except by
/// later logged operations (the host replays the log in order: the last operation on each
/// buffer and each sector decides what must match).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpRecord {
    /// First sector on disk.
    pub sector: u64,
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Bytes (a multiple of [`crate::block::SECTOR_SIZE`]).
    pub len: u32,
    /// [`OP_READ`] or [`OP_WRITE`].
    pub op: u32,
}
assert_layout!(OpRecord, size = 24, sector @ 0, addr @ 8, len @ 16, op @ 20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_round_trip() {
        let c = CaseId {
            device: Device::Block,
            variant: Variant::PvPoll,
            workload: Workload::SeqRead1M,
        };
        assert_eq!(CaseId::try_from(c.to_u64()), Ok(c));
    }

    #[test]
    fn unknown_cases() {
        assert!(CaseId::try_from(0).is_err());
        assert!(CaseId::try_from(1 | 99 << 16 | 1 << 32).is_err());
        assert!(CaseId::try_from(1 | 1 << 16 | 1 << 32 | 1 << 50).is_err());
        assert_eq!(PhaseMark::try_from(3), Err(3));
    }
}
