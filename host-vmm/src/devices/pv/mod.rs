//! The paravirtual devices: each one type behind [`PvDevice`], registered on the
//! [`HypercallBus`], which maps hypercall numbers, region kinds and rings to them as the
//! port bus maps ports to port devices.
//!
//! | file                 | device                                                        |
//! |----------------------|---------------------------------------------------------------|
//! | [`console`]          | `ConsoleWrite` and the console ring                           |
//! | [`block`]            | `BlockCapacity`, `BlockIo` and the block ring                 |
//! | [`clock`]            | the PV clock page (and the kvmclock feature bit)              |
//! | [`rings`]            | the registered rings of every device, serviced on three transports |
//! | [`doorbell`]         | the doorbell ports and their ioeventfds                       |
//! | [`hypercall_bus`]    | the bus: numbers → devices, features, `RegisterRegion`, `RingKick` |
//!
//! The benchmark markers are a device too ([`crate::devices::pseudo::markers`]). The core
//! calls (`AbiVersion`, `Features`, `Exit`, `ReportFault`) stay in
//! [`crate::hypercall::dispatch`], which hands every other number to the bus.
//!
//! Every handler takes `&self`: a device keeps its mutable state behind its own locks and
//! may be called from several vCPU threads at once.

pub mod block;
pub mod clock;
pub mod console;
pub mod doorbell;
pub mod hypercall_bus;
pub mod rings;
#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard};

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::{RegionKind, RingId};
use pvkit_abi::Status;

pub use hypercall_bus::{BusError, HypercallBus, RingsConfig};
pub use rings::Queue;

use crate::exit::ledger::ExitLedger;
use crate::vstate::memory::GuestRam;

/// What a device handler gets besides its arguments.
pub struct CallCtx<'a> {
    /// Guest RAM.
    pub mem: &'a GuestRam,
    /// The exit ledger (already counting this call's exit).
    pub ledger: &'a ExitLedger,
    /// The index of the vCPU that made the call.
    pub vcpu: u32,
    /// The rings' lock-waiter count, if the VM has rings ([`CallCtx::vcpu_lock`]).
    pub(crate) waiters: Option<&'a rings::LockWaiters>,
}

impl CallCtx<'_> {
    /// Locks `m` for this vCPU thread: if the I/O thread holds it (serving a ring), the
    /// wait is announced so that the I/O thread starts no further service until the vCPU
    /// had its turn (one service budget at most).
    pub fn vcpu_lock<'m, T>(&self, m: &'m Mutex<T>) -> MutexGuard<'m, T> {
        match self.waiters {
            Some(w) => w.vcpu_lock(m),
            None => crate::runtime::sync::lock(m),
        }
    }
}

/// A ring a device accepts: its id (and doorbell), the region kind that registers it, the
/// feature bit that announces it, and the ledger name of its in-kernel notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// The ring.
    pub ring: RingId,
    /// The [`Hypercall::RegisterRegion`] kind that registers it.
    pub region: RegionKind,
    /// Offered when the VM has rings ([`HypercallBus`] with a [`RingsConfig`]).
    pub feature: Features,
    /// Ledger name of its ioeventfd notifications
    /// ([`crate::exit::ledger::LedgerSnapshot::notifications`]).
    pub notifier: &'static str,
}

/// One paravirtual device.
///
/// A device states what it offers (feature bits), which hypercall numbers it answers,
/// which non-ring regions and which rings it accepts; the [`HypercallBus`] routes to it.
/// Every method gets guest-controlled values and must validate them; none may panic.
pub trait PvDevice: Send + Sync {
    /// A short name for errors and debugging, e.g. `"block"`.
    fn name(&self) -> &'static str;

    /// The feature bits the device itself offers (its rings' bits come from
    /// [`PvDevice::queues`]).
    fn features(&self) -> Features;

    /// The hypercall numbers the device answers ([`PvDevice::call`]).
    fn hypercalls(&self) -> &'static [Hypercall] {
        &[]
    }

    /// The region kinds (other than rings) the device accepts
    /// ([`PvDevice::register_region`]).
    fn regions(&self) -> &'static [RegionKind] {
        &[]
    }

    /// The rings the device accepts ([`PvDevice::open_queue`]).
    fn queues(&self) -> &'static [QueueSpec] {
        &[]
    }

    /// Handles hypercall `call` (one of [`PvDevice::hypercalls`]) with its raw arguments.
    fn call(&self, _ctx: &CallCtx<'_>, _call: Hypercall, _args: [u64; 4]) -> CallReturn {
        CallReturn::err(Status::EOPNOTSUPP)
    }

    /// Registers a region of `kind` (one of [`PvDevice::regions`]).
    fn register_region(
        &self,
        _ctx: &CallCtx<'_>,
        _kind: RegionKind,
        _addr: u64,
        _len: u64,
        _flags: u64,
    ) -> Result<u64, Status> {
        Err(Status::EOPNOTSUPP)
    }

    /// Validates ring `ring` (one of [`PvDevice::queues`]) at `addr` and returns its
    /// consumer, which the rings then service on the transport the guest chose.
    fn open_queue(
        &self,
        _mem: &GuestRam,
        _ring: RingId,
        _addr: u64,
        _len: u64,
    ) -> Result<Box<dyn Queue>, Status> {
        Err(Status::EOPNOTSUPP)
    }
}

/// The ledger name of a ring's in-kernel notification counter.
pub fn notifier_name(ring: RingId) -> &'static str {
    match ring {
        RingId::Console => console::NOTIFY_CONSOLE_RING,
        RingId::Block => block::NOTIFY_BLOCK_RING,
    }
}
