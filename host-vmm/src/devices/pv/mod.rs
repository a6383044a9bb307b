//! The paravirtual devices: each one type behind [`PvDevice`], registered on the
//! [`HypercallBus`], which maps hypercall numbers, pages and queues (each named by its
//! device class and index, [`PageId`], [`QueueId`]) to them as the port bus maps ports to
//! port devices.
//!
//! | file                 | device                                                        |
//! |----------------------|---------------------------------------------------------------|
//! | [`console`]          | `ConsoleWrite` and the console ring                           |
//! | [`block`]            | `BlockCapacity`, `BlockIo` and the block ring                 |
//! | [`net`]              | `NetInfo`, `NetSend`, the net TX and RX rings over a backend  |
//! | [`net_rx`]           | the PV NIC of a running VM: its backend's fd on an event loop |
//! | [`clock`]            | the PV clock page (and the kvmclock feature bit)              |
//! | [`balloon`]          | the memory balloon: `BalloonInflate`, `BalloonDeflate`, `BalloonInfo` |
//! | [`ring_irq`]         | completion interrupts of the rings: irqfd lines, `QueueInterrupt` |
//! | [`free_page_hint`]   | `FreePageHint`: pages a migration need not send               |
//! | [`rings`]            | the registered rings of every device, serviced on three transports |
//! | [`doorbell`]         | the doorbell port and its per-queue ioeventfds (datamatch)    |
//! | [`vcpu_up`]          | `VcpuUp`: PV start of the other vCPUs (with `--vcpus` > 1)   |
//! | [`ipi`]              | `SendIpi`: PV IPIs to a bitmap of vCPUs (with `--vcpus` > 1) |
//! | [`spinlock`]         | `LockWait`, `LockKick`: PV spinlock wait and kick (with `--vcpus` > 1) |
//! | [`steal`]            | the per-vCPU steal-time page                                  |
//! | [`hypercall_bus`]    | the bus: numbers → devices, features, `RegisterRegion`, `RingKick` |
//!
//! The benchmark markers are a device too ([`crate::devices::pseudo::markers`]). The core
//! calls (`AbiVersion`, `Features`, `Exit`, `ReportFault`) stay in
//! [`crate::hypercall::dispatch`], which hands every other number to the bus.
//!
//! Every handler takes `&self`: a device keeps its mutable state behind its own locks and
//! may be called from several vCPU threads at once.

pub mod balloon;
pub mod block;
pub mod clock;
pub mod console;
pub mod doorbell;
pub mod free_page_hint;
pub mod hypercall_bus;
pub mod ipi;
pub mod net;
#[cfg(test)]
mod net_hostile;
pub mod net_rx;
pub mod ring_irq;
pub mod rings;
pub mod spinlock;
pub mod steal;
#[cfg(test)]
mod tests;
pub mod vcpu_up;

use std::sync::{Mutex, MutexGuard};

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::{PageId, QueueId, BLOCK_QUEUE, CONSOLE_QUEUE, NET_RX_QUEUE, NET_TX_QUEUE};
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

/// Whose a registered page is: the VM's, or one vCPU's
/// ([`pvkit_abi::ring::REGION_PER_VCPU`], keyed by the calling vCPU's index from
/// [`CallCtx::vcpu`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegionOwner {
    /// One region for the whole VM.
    Vm,
    /// The region of vCPU `n`.
    Vcpu(u32),
}

/// A queue (ring) a device accepts: its id (device class and index; the doorbell value),
/// the feature bit that announces it, and the ledger name of its in-kernel notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue.
    pub queue: QueueId,
    /// Offered when the VM has rings ([`HypercallBus`] with a [`RingsConfig`]).
    pub feature: Features,
    /// Ledger name of its ioeventfd notifications
    /// ([`crate::exit::ledger::LedgerSnapshot::notifications`]).
    pub notifier: &'static str,
}

/// One paravirtual device.
///
/// A device states what it offers (feature bits), which hypercall numbers it answers,
/// which pages and which queues it accepts; the [`HypercallBus`] routes to it. Every
/// method gets guest-controlled values and must validate them; none may panic.
pub trait PvDevice: Send + Sync {
    /// A short name for errors and debugging, e.g. `"block"`.
    fn name(&self) -> &'static str;

    /// The feature bits the device itself offers (its queues' bits come from
    /// [`PvDevice::queues`]).
    fn features(&self) -> Features;

    /// The hypercall numbers the device answers ([`PvDevice::call`]).
    fn hypercalls(&self) -> &'static [Hypercall] {
        &[]
    }

    /// The pages (regions other than rings) the device accepts
    /// ([`PvDevice::register_page`]).
    fn pages(&self) -> &'static [PageId] {
        &[]
    }

    /// The queues the device accepts ([`PvDevice::open_queue`]).
    fn queues(&self) -> &'static [QueueSpec] {
        &[]
    }

    /// Handles hypercall `call` (one of [`PvDevice::hypercalls`]) with its raw arguments.
    fn call(&self, _ctx: &CallCtx<'_>, _call: Hypercall, _args: [u64; 4]) -> CallReturn {
        CallReturn::err(Status::EOPNOTSUPP)
    }

    /// Registers page `page` (one of [`PvDevice::pages`]) for `owner`: the VM, or the
    /// calling vCPU when the guest asked for a per-vCPU region. A device with no per-vCPU
    /// form of the page answers `EINVAL` for [`RegionOwner::Vcpu`].
    fn register_page(
        &self,
        _ctx: &CallCtx<'_>,
        _page: PageId,
        _owner: RegionOwner,
        _addr: u64,
        _len: u64,
    ) -> Result<u64, Status> {
        Err(Status::EOPNOTSUPP)
    }

    /// Whether the device wants [`PvDevice::before_run`] before every guest entry.
    fn hooks_entry(&self) -> bool {
        false
    }

    /// Called on vCPU `vcpu`'s thread before each `KVM_RUN` (only for devices whose
    /// [`PvDevice::hooks_entry`] is true). Must be cheap: it is on every exit's path.
    fn before_run(&self, _mem: &GuestRam, _vcpu: u32) {}

    /// Called once on vCPU `vcpu`'s thread when it starts, before its seccomp filter is
    /// applied (the place to open a per-thread file).
    fn vcpu_thread_started(&self, _vcpu: u32) {}

    /// Validates queue `queue` (one of [`PvDevice::queues`]) at `addr` and returns its
    /// consumer, which the rings then service on the transport the guest chose.
    fn open_queue(
        &self,
        _mem: &GuestRam,
        _queue: QueueId,
        _addr: u64,
        _len: u64,
    ) -> Result<Box<dyn Queue>, Status> {
        Err(Status::EOPNOTSUPP)
    }
}

/// The ledger name of a queue's in-kernel notification counter, for the queues this VMM
/// has (`None` for any other).
pub fn notifier_name(queue: QueueId) -> Option<&'static str> {
    match queue {
        CONSOLE_QUEUE => Some(console::NOTIFY_CONSOLE_RING),
        BLOCK_QUEUE => Some(block::NOTIFY_BLOCK_RING),
        NET_TX_QUEUE => Some(net::NOTIFY_NET_TX_RING),
        NET_RX_QUEUE => Some(net::NOTIFY_NET_RX_RING),
        _ => None,
    }
}
