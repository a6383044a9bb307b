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

/// The device class a hypercall number, a queue or a page belongs to: bits 8–11 of a
/// call number ([`DeviceClass::of_call`]) and bits 16–31 of a queue or region id
/// ([`crate::ring::QueueId`], [`crate::ring::RegionId`]).
///
/// | class      | id    | call numbers      |
/// |------------|-------|-------------------|
/// | `Core`     | `0x0` | `0x001`–`0x0ff`   |
/// | `Console`  | `0x1` | `0x100`–`0x1ff`   |
/// | `Block`    | `0x2` | `0x200`–`0x2ff`   |
/// | `Net`      | `0x3` | `0x300`–`0x3ff`   |
/// | `Cpu`      | `0x4` | `0x400`–`0x4ff`   |
/// | `Memory`   | `0x5` | `0x500`–`0x5ff`   |
/// | `Bench`    | `0xf` | `0xf00`–`0xfff`   |
///
/// Numbers `0x600`–`0xeff` and above `0xfff` belong to no class (reserved).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceClass {
    /// Discovery, stop, faults, and the generic region and ring calls.
    Core = 0x0,
    /// The PV console.
    Console = 0x1,
    /// The PV block device.
    Block = 0x2,
    /// The PV network device.
    Net = 0x3,
    /// Per-CPU state: the clock page; SMP, steal time and PV EOI will live here.
    Cpu = 0x4,
    /// Guest memory: the balloon.
    Memory = 0x5,
    /// Benchmark markers and debugging.
    Bench = 0xf,
}

/// Call numbers of one class share this many low bits: the class is `nr >> CLASS_SHIFT`.
pub const CLASS_SHIFT: u32 = 8;

impl DeviceClass {
    /// Every class, in id order.
    ///
    /// cbindgen:ignore
    pub const ALL: &'static [DeviceClass] = &[
        DeviceClass::Core,
        DeviceClass::Console,
        DeviceClass::Block,
        DeviceClass::Net,
        DeviceClass::Cpu,
        DeviceClass::Memory,
        DeviceClass::Bench,
    ];

    /// The first call number of the class's range.
    pub const fn first_call(self) -> u32 {
        (self as u32) << CLASS_SHIFT
    }

    /// The last call number of the class's range.
    pub const fn last_call(self) -> u32 {
        self.first_call() | ((1 << CLASS_SHIFT) - 1)
    }

    /// The class whose range holds call number `nr`, if any (it need not be a known call).
    pub const fn of_call(nr: u32) -> Option<DeviceClass> {
        match nr >> CLASS_SHIFT {
            0x0 => Some(DeviceClass::Core),
            0x1 => Some(DeviceClass::Console),
            0x2 => Some(DeviceClass::Block),
            0x3 => Some(DeviceClass::Net),
            0x4 => Some(DeviceClass::Cpu),
            0x5 => Some(DeviceClass::Memory),
            0xf => Some(DeviceClass::Bench),
            _ => None,
        }
    }

    /// A short lower-case name, e.g. `"block"`.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceClass::Core => "core",
            DeviceClass::Console => "console",
            DeviceClass::Block => "block",
            DeviceClass::Net => "net",
            DeviceClass::Cpu => "cpu",
            DeviceClass::Memory => "memory",
            DeviceClass::Bench => "bench",
        }
    }
}

impl TryFrom<u16> for DeviceClass {
    type Error = u16;

    fn try_from(v: u16) -> Result<Self, u16> {
        match v {
            0x0 => Ok(DeviceClass::Core),
            0x1 => Ok(DeviceClass::Console),
            0x2 => Ok(DeviceClass::Block),
            0x3 => Ok(DeviceClass::Net),
            0x4 => Ok(DeviceClass::Cpu),
            0x5 => Ok(DeviceClass::Memory),
            0xf => Ok(DeviceClass::Bench),
            other => Err(other),
        }
    }
}

/// A hypercall number, placed in `EAX`. The discriminant is the wire number; it lies in
/// the range of its [`DeviceClass`] ([`Hypercall::class`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hypercall {
    /// `RDX` ← the host's ABI version ([`crate::AbiVersion::to_u64`]). No arguments.
    AbiVersion = 0x001,
    /// `RDX` ← the host's feature bits ([`crate::cpuid::Features`]). No arguments.
    Features = 0x002,
    /// Stop the VM; the VMM process exits with arg0 & 0xff as its status. Does not return.
    Exit = 0x003,
    /// Report a fatal guest fault or panic and stop the VM. arg0 = GPA of a
    /// [`crate::fault::FaultReport`]. Does not return (if the report itself is unreadable,
    /// the VM is still stopped and the VMM says so).
    ReportFault = 0x004,
    /// Register a shared-memory region of a device. arg0 = [`crate::ring::RegionId`] (a
    /// device's queue, or one of its pages), arg1 = GPA (4 KiB aligned), arg2 = length in
    /// bytes, arg3 = flags: for a queue the [`crate::ring::Transport`] in bits 0–7;
    /// [`crate::ring::REGION_PER_VCPU`] registers the region for the calling vCPU. Other
    /// bits are reserved (`EINVAL`). Registering the same region again replaces it.
    RegisterRegion = 0x005,
    /// Ask the host to service a registered queue now (the synchronous doorbell, usable
    /// when the queue's transport is a doorbell served in userspace). arg0 =
    /// [`crate::ring::QueueId`] (the value a doorbell write carries).
    RingKick = 0x006,
    /// Bind a queue's completions to an interrupt (or back to polling), offered with
    /// [`crate::cpuid::Features::RING_IRQ`]. arg0 = [`crate::ring::QueueId`], arg1 = GSI
    /// (an IOAPIC pin in [`crate::ring::RING_IRQ_GSI_FIRST`]`..`
    /// [`crate::ring::RING_IRQ_GSI_FIRST`]` + `[`crate::ring::RING_IRQ_GSIS`]; 0 = no
    /// interrupt, back to polling), arg2 = flags (0; others `EINVAL`). Once bound, the host
    /// raises one edge on the GSI after publishing responses when the guest's `rsp_event`
    /// lies in the newly published range (the event-index rule, [`crate::ring`]). The
    /// binding outlives re-registrations of the queue. `EOPNOTSUPP`: no such queue or no
    /// interrupts; `EINVAL`: GSI outside the range or unknown flags.
    QueueInterrupt = 0x007,
    /// Write bytes to the host console. arg0 = GPA of the bytes, arg1 = length
    /// (at most [`crate::console::MAX_WRITE`]). `RDX` ← bytes written.
    ConsoleWrite = 0x100,
    /// `RDX` ← capacity of the PV block device in 512-byte sectors. No arguments.
    BlockCapacity = 0x200,
    /// One synchronous block request. arg0 = GPA of a [`crate::block::BlockRequest`].
    /// `RDX` ← bytes transferred. The request's status is the call's status.
    BlockIo = 0x201,
    /// `RDX` ← the PV network device's MAC address and MTU ([`crate::net::NetInfo`]). No
    /// arguments.
    NetInfo = 0x300,
    /// Send one Ethernet frame synchronously (one exit per frame, the Solo5 `net_write`
    /// baseline). arg0 = GPA of the frame, arg1 = its length
    /// ([`crate::net::MIN_FRAME_LEN`]`..=`[`crate::net::MAX_FRAME_LEN`]: `EINVAL` below,
    /// `E2BIG` above). `RDX` ← bytes sent. A frame the host backend drops is still `Ok`.
    NetSend = 0x301,
    /// Start another vCPU already in 64-bit mode (PV vCPU bring-up). arg0 = target vCPU
    /// index, arg1 = entry `RIP`, arg2 = `RSP`, arg3 = the target's `RDI`. The target runs
    /// on the boot GDT and page tables of [`crate::boot`] with interrupts off. `EINVAL`:
    /// the target is the caller, out of range, or `RIP`/`RSP` are not canonical; `EBUSY`:
    /// the target was already started (by this call or by INIT-SIPI).
    VcpuUp = 0x400,
    /// Send one fixed-delivery interrupt to each vCPU of a bitmap (PV IPI, one exit for any
    /// number of targets; [`crate::cpuid::Features::PV_IPI`]). arg0 = bitmap (bit `i` targets
    /// vCPU `arg2 + i`), arg1 = vector (`0x20`–`0xff`), arg2 = the vCPU of bit 0, arg3 = 0
    /// (reserved). `EINVAL`: an empty bitmap, a target that does not exist, a vector below
    /// `0x20` or above `0xff`, arg3 ≠ 0; nothing is sent then. `RDX` ← interrupts delivered.
    SendIpi = 0x401,
    /// PV spinlock slow path: block the calling vCPU's thread on the host until another
    /// vCPU kicks it ([`Hypercall::LockKick`]) or a bounded host timeout
    /// ([`crate::spinlock::LOCK_WAIT_MAX_US`]) passes, then return. A kick that arrived
    /// before the call (and after the previous `LockWait` returned) is remembered, one per
    /// vCPU, and makes the call return at once. arg0 = flags (none defined: must be 0,
    /// else `EINVAL`). `RDX` ← 1 if a kick ended the wait, 0 on timeout. The guest must
    /// re-check its lock after every return ([`crate::spinlock`]).
    LockWait = 0x402,
    /// Wake vCPU arg0 from [`Hypercall::LockWait`] (or make its next `LockWait` return at
    /// once). arg1 = flags (must be 0). `EINVAL`: the target is out of range or flags are
    /// set. `RDX` ← 1 if the target was blocked in `LockWait`, 0 if the kick was left
    /// pending.
    LockKick = 0x403,
    /// Give pages back to the host (the balloon, [`crate::balloon`]). arg0 = GPA of an
    /// array of [`crate::balloon::BalloonRange`], arg1 = its count (at most
    /// [`crate::balloon::BALLOON_MAX_RANGES`]). All ranges are validated before any is
    /// acted on. `RDX` ← pages inflated.
    BalloonInflate = 0x500,
    /// Take ballooned pages back (zero-filled). Arguments as [`Hypercall::BalloonInflate`];
    /// every page must be ballooned. `RDX` ← pages deflated.
    BalloonDeflate = 0x501,
    /// `RDX` ← the number of 4 KiB pages currently ballooned. No arguments.
    BalloonInfo = 0x502,
    /// Free-page hint for live migration ([`crate::balloon`]): the pages of an array of
    /// [`crate::balloon::BalloonRange`] (arg0 = its GPA, arg1 = its count, at most
    /// [`crate::balloon::BALLOON_MAX_RANGES`]) are free, so a migration need not send them
    /// unless the guest writes them after the hint. The pages stay the guest's (nothing is
    /// released); their content after a migration is undefined until written. Ranges follow
    /// the balloon's rules, overlaps and ballooned pages allowed. `RDX` ← pages recorded:
    /// 0 when no migration is tracking dirty pages (the hint is dropped; hint again later).
    FreePageHint = 0x503,
    /// The host's balloon target ([`crate::balloon::BalloonTarget`], offered with
    /// [`crate::cpuid::Features::BALLOON_TARGET`]): `RDX` ← the target in 4 KiB pages
    /// (bits 0–31) and its generation (bits 32–63), which the host increments on every
    /// target it sets, the same value included. arg0 = flags (0; any other value is
    /// `EINVAL`, reserved for a change-interrupt binding). The target is advice: the
    /// guest inflates or deflates toward it when it can (virtio-balloon's `num_pages`);
    /// the host only counts ([`crate::balloon`] "The host-set target").
    BalloonTarget = 0x504,
    /// Mark the beginning or end of a benchmark phase so the host can attribute exits to it.
    /// arg0 = phase id ([`crate::bench::CaseId`] packed), arg1 = [`crate::bench::PhaseMark`],
    /// arg2 = operations done in the phase (at `End`).
    BenchPhase = 0xf00,
    /// Report a benchmark sample. arg0 = GPA of a [`crate::bench::BenchSample`]; optionally
    /// arg1 = GPA of an op log (`[crate::bench::OpRecord]`) and arg2 = its length
    /// (≤ [`crate::bench::MAX_OP_LOG`]; 0 = no log) for host-side data verification.
    BenchResult = 0xf01,
}

/// The call number in `EAX` is not a [`Hypercall`]. The host answers `ENOSYS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownHypercall(pub u32);

impl TryFrom<u32> for Hypercall {
    type Error = UnknownHypercall;

    fn try_from(nr: u32) -> Result<Self, Self::Error> {
        Ok(match nr {
            0x001 => Hypercall::AbiVersion,
            0x002 => Hypercall::Features,
            0x003 => Hypercall::Exit,
            0x004 => Hypercall::ReportFault,
            0x005 => Hypercall::RegisterRegion,
            0x006 => Hypercall::RingKick,
            0x007 => Hypercall::QueueInterrupt,
            0x100 => Hypercall::ConsoleWrite,
            0x200 => Hypercall::BlockCapacity,
            0x201 => Hypercall::BlockIo,
            0x300 => Hypercall::NetInfo,
            0x301 => Hypercall::NetSend,
            0x500 => Hypercall::BalloonInflate,
            0x501 => Hypercall::BalloonDeflate,
            0x502 => Hypercall::BalloonInfo,
            0x503 => Hypercall::FreePageHint,
            0x504 => Hypercall::BalloonTarget,
            0x400 => Hypercall::VcpuUp,
            0x401 => Hypercall::SendIpi,
            0x402 => Hypercall::LockWait,
            0x403 => Hypercall::LockKick,
            0xf00 => Hypercall::BenchPhase,
            0xf01 => Hypercall::BenchResult,
            _ => return Err(UnknownHypercall(nr)),
        })
    }
}

impl Hypercall {
    /// Every call of this ABI version, in wire-number order.
    ///
    /// cbindgen:ignore
    pub const ALL: &'static [Hypercall] = &[
        Hypercall::AbiVersion,
        Hypercall::Features,
        Hypercall::Exit,
        Hypercall::ReportFault,
        Hypercall::RegisterRegion,
        Hypercall::RingKick,
        Hypercall::QueueInterrupt,
        Hypercall::ConsoleWrite,
        Hypercall::BlockCapacity,
        Hypercall::BlockIo,
        Hypercall::NetInfo,
        Hypercall::NetSend,
        Hypercall::VcpuUp,
        Hypercall::SendIpi,
        Hypercall::LockWait,
        Hypercall::LockKick,
        Hypercall::BalloonInflate,
        Hypercall::BalloonDeflate,
        Hypercall::BalloonInfo,
        Hypercall::FreePageHint,
        Hypercall::BalloonTarget,
        Hypercall::BenchPhase,
        Hypercall::BenchResult,
    ];

    /// The device class whose number range holds this call.
    pub const fn class(self) -> DeviceClass {
        match self {
            Hypercall::AbiVersion
            | Hypercall::Features
            | Hypercall::Exit
            | Hypercall::ReportFault
            | Hypercall::RegisterRegion
            | Hypercall::RingKick
            | Hypercall::QueueInterrupt => DeviceClass::Core,
            Hypercall::ConsoleWrite => DeviceClass::Console,
            Hypercall::BlockCapacity | Hypercall::BlockIo => DeviceClass::Block,
            Hypercall::NetInfo | Hypercall::NetSend => DeviceClass::Net,
            Hypercall::BalloonInflate
            | Hypercall::BalloonDeflate
            | Hypercall::BalloonInfo
            | Hypercall::FreePageHint
            | Hypercall::BalloonTarget => DeviceClass::Memory,
            Hypercall::VcpuUp | Hypercall::SendIpi | Hypercall::LockWait | Hypercall::LockKick => {
                DeviceClass::Cpu
            }
            Hypercall::BenchPhase | Hypercall::BenchResult => DeviceClass::Bench,
        }
    }

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
            Hypercall::QueueInterrupt => "queue_interrupt",
            Hypercall::NetInfo => "net_info",
            Hypercall::NetSend => "net_send",
            Hypercall::BalloonInflate => "balloon_inflate",
            Hypercall::BalloonDeflate => "balloon_deflate",
            Hypercall::BalloonInfo => "balloon_info",
            Hypercall::FreePageHint => "free_page_hint",
            Hypercall::BalloonTarget => "balloon_target",
            Hypercall::VcpuUp => "vcpu_up",
            Hypercall::SendIpi => "send_ipi",
            Hypercall::LockWait => "lock_wait",
            Hypercall::LockKick => "lock_kick",
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
    fn every_call_lies_in_its_class_range_and_round_trips() {
        for (i, &call) in Hypercall::ALL.iter().enumerate() {
            let nr = call as u32;
            let class = call.class();
            assert!(
                (class.first_call()..=class.last_call()).contains(&nr),
                "{} ({nr:#x}) outside the {} range",
                call.name(),
                class.name()
            );
            assert_eq!(DeviceClass::of_call(nr), Some(class));
            assert_eq!(Hypercall::try_from(nr), Ok(call));
            assert_ne!(nr, 0, "0 is never a call");
            // Unique, and ALL is in wire-number order.
            if let Some(next) = Hypercall::ALL.get(i + 1) {
                assert!(nr < *next as u32, "{} and {}", call.name(), next.name());
            }
        }
    }

    #[test]
    fn class_ranges_are_disjoint_and_decode() {
        for (i, &c) in DeviceClass::ALL.iter().enumerate() {
            assert_eq!(DeviceClass::try_from(c as u16), Ok(c));
            assert_eq!(c.last_call() - c.first_call(), 0xff);
            if let Some(next) = DeviceClass::ALL.get(i + 1) {
                assert!(c.last_call() < next.first_call());
            }
        }
        assert_eq!(DeviceClass::try_from(0x6), Err(0x6));
        assert_eq!(DeviceClass::of_call(0x600), None);
        assert_eq!(DeviceClass::of_call(0x1000), None);
    }

    #[test]
    fn unknown_numbers_in_every_range_are_errors() {
        let known = |nr: u32| Hypercall::ALL.iter().any(|&h| h as u32 == nr);
        for &c in DeviceClass::ALL {
            for nr in c.first_call()..=c.last_call() {
                if !known(nr) {
                    assert_eq!(Hypercall::try_from(nr), Err(UnknownHypercall(nr)));
                }
            }
        }
        for nr in [
            0,
            8,
            0x101,
            0x202,
            0x302,
            0x4ff,
            0x505,
            0x5ff,
            0x600,
            0xf02,
            0x1000,
            u32::MAX,
        ] {
            assert_eq!(Hypercall::try_from(nr), Err(UnknownHypercall(nr)));
        }
    }
}
