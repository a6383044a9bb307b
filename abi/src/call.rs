//! Hypercall numbers and the calling convention.
//!
//! # Calling convention (x86_64)
//!
//! A hypercall is one 32-bit port write: `out dx, eax` with
//!
//! | register | on entry                                   | on return                      |
//! |----------|--------------------------------------------|--------------------------------|
//! | `DX`     | [`crate::ports::HYPERCALL`] (`0x0500`)     | clobbered: second return value |
//! | `EAX`    | call number ([`Hypercall`]); upper half 0  | [`crate::Status`] (`RAX`)      |
//! | `RDI`    | argument 0                                 | preserved                      |
//! | `RSI`    | argument 1                                 | preserved                      |
//! | `R8`     | argument 2                                 | preserved                      |
//! | `R9`     | argument 3                                 | preserved                      |
//!
//! On return `RAX` holds a status: `0` ([`crate::Status::Ok`]) or a negative errno
//! ([`crate::Status`]), and `RDX` holds the call's value (0 when the call has none). Every
//! other register, the flags and memory not named by the call are preserved. Arguments that
//! a call does not use are ignored. Addresses are guest-physical; a range that is not
//! entirely inside guest RAM fails with [`crate::Status::EFAULT`] and nothing is read or
//! written. A call number the host does not know returns [`crate::Status::ENOSYS`].
//!
//! A hypercall costs exactly one VM exit to the VMM. The same instruction works at any
//! privilege level that may access the port (ring 0, or ring 3 with IOPL 3).

/// A hypercall number, placed in `EAX`. The discriminant is the wire number.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hypercall {
    /// `RDX` ← the host's ABI version ([`crate::AbiVersion::to_u64`]). No arguments.
    AbiVersion = 1,
    /// `RDX` ← the host's feature bits ([`crate::cpuid::Features`]). No arguments.
    Features = 2,
    /// Write bytes to the host console. arg0 = GPA of the bytes, arg1 = length
    /// (at most [`crate::console::MAX_WRITE`]). `RDX` ← bytes written.
    ConsoleWrite = 3,
    /// Stop the VM; the VMM process exits with arg0 & 0xff as its status. Does not return.
    Exit = 4,
    /// Report a fatal guest fault or panic and stop the VM. arg0 = GPA of a
    /// [`crate::fault::FaultReport`]. Does not return (if the report itself is unreadable,
    /// the VM is still stopped and the VMM says so).
    ReportFault = 5,
    /// Mark the beginning or end of a benchmark phase so the host can attribute exits to it.
    /// arg0 = phase id ([`crate::bench::CaseId`] packed), arg1 = [`crate::bench::PhaseMark`],
    /// arg2 = operations done in the phase (at `End`).
    BenchPhase = 6,
    /// Report a benchmark sample. arg0 = GPA of a [`crate::bench::BenchSample`]; optionally
    /// arg1 = GPA of an op log (`[crate::bench::OpRecord]`) and arg2 = its length
    /// (≤ [`crate::bench::MAX_OP_LOG`]; 0 = no log) for host-side data verification.
    BenchResult = 7,
    /// Register a shared-memory region. arg0 = [`crate::ring::RegionKind`], arg1 = GPA
    /// (4 KiB aligned), arg2 = length in bytes, arg3 = kind-specific flags (for rings, the
    /// [`crate::ring::Transport`]). Registering the same kind again replaces the region.
    RegisterRegion = 8,
    /// `RDX` ← capacity of the PV block device in 512-byte sectors. No arguments.
    BlockCapacity = 9,
    /// One synchronous block request. arg0 = GPA of a [`crate::block::BlockRequest`].
    /// `RDX` ← bytes transferred. The request's status is the call's status.
    BlockIo = 10,
    /// Ask the host to service a registered ring now (the synchronous doorbell, usable when
    /// the ring's transport is a doorbell served in userspace). arg0 = [`crate::ring::RingId`].
    RingKick = 11,
}

/// The call number in `EAX` is not a [`Hypercall`]. The host answers `ENOSYS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownHypercall(pub u32);

impl TryFrom<u32> for Hypercall {
    type Error = UnknownHypercall;

    fn try_from(nr: u32) -> Result<Self, Self::Error> {
        Ok(match nr {
            1 => Hypercall::AbiVersion,
            2 => Hypercall::Features,
            3 => Hypercall::ConsoleWrite,
            4 => Hypercall::Exit,
            5 => Hypercall::ReportFault,
            6 => Hypercall::BenchPhase,
            7 => Hypercall::BenchResult,
            8 => Hypercall::RegisterRegion,
            9 => Hypercall::BlockCapacity,
            10 => Hypercall::BlockIo,
            11 => Hypercall::RingKick,
            _ => return Err(UnknownHypercall(nr)),
        })
    }
}

impl Hypercall {
    /// Every call of this ABI version, in wire-number order.
    ///
    /// cbindgen:ignore
    pub const ALL: [Hypercall; 11] = [
        Hypercall::AbiVersion,
        Hypercall::Features,
        Hypercall::ConsoleWrite,
        Hypercall::Exit,
        Hypercall::ReportFault,
        Hypercall::BenchPhase,
        Hypercall::BenchResult,
        Hypercall::RegisterRegion,
        Hypercall::BlockCapacity,
        Hypercall::BlockIo,
        Hypercall::RingKick,
    ];

    /// A short lower-case name for reports, e.g. `"console_write"`.
    pub const fn name(self) -> &'static str {
        match self {
            Hypercall::AbiVersion => "abi_version",
            Hypercall::Features => "features",
            Hypercall::ConsoleWrite => "console_write",
            Hypercall::Exit => "exit",
            Hypercall::ReportFault => "report_fault",
            Hypercall::BenchPhase => "bench_phase",
            Hypercall::BenchResult => "bench_result",
            Hypercall::RegisterRegion => "register_region",
            Hypercall::BlockCapacity => "block_capacity",
            Hypercall::BlockIo => "block_io",
            Hypercall::RingKick => "ring_kick",
        }
    }
}

/// The register state of a hypercall as the host sees it: the raw input, before decoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCall {
    /// `EAX`: the call number.
    pub nr: u32,
    /// `RDI`, `RSI`, `R8`, `R9`.
    pub args: [u64; 4],
}

/// What the host puts back: `RAX` and `RDX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallReturn {
    /// Goes to `RAX`.
    pub status: crate::Status,
    /// Goes to `RDX`.
    pub value: u64,
}

impl CallReturn {
    /// Success with a value.
    pub const fn ok(value: u64) -> Self {
        Self {
            status: crate::Status::Ok,
            value,
        }
    }

    /// Failure with a status and no value.
    pub const fn err(status: crate::Status) -> Self {
        Self { status, value: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_round_trips() {
        for (i, call) in Hypercall::ALL.iter().enumerate() {
            assert_eq!(*call as u32, i as u32 + 1, "wire numbers are dense from 1");
            assert_eq!(Hypercall::try_from(*call as u32), Ok(*call));
        }
    }

    #[test]
    fn unknown_numbers_are_errors() {
        for nr in [0, 12, 0x100, u32::MAX] {
            assert_eq!(Hypercall::try_from(nr), Err(UnknownHypercall(nr)));
        }
    }
}
