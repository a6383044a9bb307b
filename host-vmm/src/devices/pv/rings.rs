//! The registered rings of every PV device and their three transports. A device opens a
//! ring's consumer ([`super::PvDevice::open_queue`], a [`Queue`]); [`Rings`] keeps it in
//! the ring's slot, attaches its doorbell transport and serves it; the ring protocol
//! itself is `pvkit-pv`'s.
//!
//! # Who touches what
//!
//! | transport                     | the ring is serviced by                                        |
//! |-------------------------------|----------------------------------------------------------------|
//! | [`Transport::Doorbell`]       | the vCPU thread, in the exit of the doorbell port write ([`super::doorbell::DoorbellPort`]) |
//! | [`Transport::DoorbellEventfd`]| the I/O thread, woken by KVM's ioeventfd on the doorbell port (datamatch: the queue's id) |
//! | [`Transport::HostPoll`]       | the I/O thread, polling `req_prod` while `HOST_POLLING` is set (spinning while requests come, sleeping in short steps when idle) |
//!
//! `RingKick` services any registered ring on the vCPU thread. Each ring sits in its own
//! mutex ([`RingSet`]) with its transport and ioeventfd; the block device and the disk have
//! their own. Lock order: ring slot, then device (e.g. the block device), then disk.
//!
//! # Service budgets
//!
//! Every service of a ring is bounded: at most [`SERVICE_REQUESTS`] requests and
//! [`SERVICE_BYTES`] bytes (set at registration). A ring whose requests keep refilling it
//! (reads that land on its own header and slots) is left with work pending at the budget:
//! the guest's next doorbell or `RingKick` continues it on the vCPU, the I/O thread comes
//! back to an eventfd ring after checking its stop flag, and a polled ring is continued by
//! the next poll round. So the vCPU always returns to `KVM_RUN` (where the watchdog's kick
//! lands) within one budget, and the I/O thread checks its stop flag between budgets. A
//! vCPU that needs a lock the I/O thread holds announces itself ([`RingSet`]'s waiter
//! count); the I/O thread starts no new service while one waits, so the vCPU waits for
//! one budget at most.
//!
//! # The guest is hostile
//!
//! Every region is validated by `pvkit-pv` at registration (alignment, RAM, ring size and
//! indices); a failed registration changes nothing. A ring the guest corrupts is marked
//! `BROKEN` and is not serviced again until it is registered anew; nothing a guest writes
//! can panic the VMM or make it allocate.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pvkit_abi::ports::DOORBELL;
use pvkit_abi::ring::{offsets, QueueId, Transport};
use pvkit_abi::Status;
pub use pvkit_pv::ring::{SERVICE_BYTES, SERVICE_REQUESTS};
use pvkit_pv::{AbiPod, Batch, RingConsumer, RingError, RingState};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::doorbell::IoEventRegistrar;
use super::ring_irq::{RingIrqLine, RingIrqs};
use super::QueueSpec;
use crate::exit::ledger::{ExitLedger, NotifyCounter};
use crate::iothread::{IoStopper, IoThread};
use crate::runtime::sync::lock;
use crate::vstate::memory::GuestRam;

/// Most services of one ring when [`Rings::frozen`] drains it before a snapshot (each at
/// most [`SERVICE_REQUESTS`] requests and [`SERVICE_BYTES`] bytes); a ring left with work
/// after them is saved as it is.
pub const DRAIN_SERVICES: usize = 16;

/// Most rings one VM may have (the I/O thread keeps them in a 32-bit mask).
pub const MAX_QUEUES: usize = 32;

/// The index of a ring's slot in its [`RingSet`] (the order the devices declared them).
pub type QueueIndex = u32;

/// A registered ring: the device's consumer and how one service of it runs.
pub trait Queue: Send + std::fmt::Debug {
    /// Services the available requests, up to the budgets.
    fn service(&mut self, mem: &GuestRam) -> Result<Batch, RingError>;
    /// The ring's guest-physical address.
    fn gpa(&self) -> u64;
    /// Requests consumed so far (free-running).
    fn consumed(&self) -> u32;
    /// Whether the ring was found corrupt.
    fn is_broken(&self) -> bool;
    /// Bounds every service: [`SERVICE_REQUESTS`] requests and [`SERVICE_BYTES`] bytes.
    fn set_service_budget(&mut self);
    /// Sets or clears `HOST_POLLING` in the ring header.
    fn set_polling(&mut self, mem: &GuestRam, on: bool) -> Result<(), RingError>;
    /// Binds the queue's completions to `line` (`None`: polling only): after a service
    /// whose responses crossed the guest's `rsp_event`, the line is raised once.
    fn set_interrupt(&mut self, line: Option<Arc<RingIrqLine>>);
    /// The consumer's saved state and the ring's length in bytes, for a snapshot; `None`:
    /// this queue cannot be saved.
    fn save(&self) -> Option<(RingState, u64)> {
        None
    }
    /// Continues from a saved state (the queue was just opened at the saved address): the
    /// consumer's index and flags, republished in the ring header.
    fn restore(&mut self, _mem: &GuestRam, _state: &RingState) -> Result<(), String> {
        Err("this queue cannot be restored".into())
    }
}

/// A registered ring as a snapshot keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRing {
    /// The queue id (`QueueId` as its raw value).
    pub queue: u32,
    /// The transport (`Transport` as its raw value).
    pub transport: u64,
    /// Bytes the ring occupies.
    pub len: u64,
    /// The consumer.
    pub ring: RingState,
    /// The GSI the guest bound the ring's completions to (`QueueInterrupt`); 0: none
    /// (and in state files written before bindings were saved).
    #[serde(default)]
    pub irq_gsi: u32,
}

/// A [`Queue`] made of a `pvkit-pv` ring consumer and the device's service function.
pub struct RingQueue<Req: AbiPod, Rsp: AbiPod, S> {
    ring: RingConsumer<Req, Rsp>,
    service: S,
    irq: Option<Arc<RingIrqLine>>,
}

impl<Req: AbiPod, Rsp: AbiPod, S> RingQueue<Req, Rsp, S>
where
    S: FnMut(&GuestRam, &mut RingConsumer<Req, Rsp>) -> Result<Batch, RingError> + Send,
{
    /// A queue serving `ring` with `service`.
    pub fn new(ring: RingConsumer<Req, Rsp>, service: S) -> Self {
        Self {
            ring,
            service,
            irq: None,
        }
    }
}

impl<Req: AbiPod, Rsp: AbiPod, S> std::fmt::Debug for RingQueue<Req, Rsp, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingQueue")
            .field("gpa", &self.ring.gpa())
            .field("size", &self.ring.size())
            .finish_non_exhaustive()
    }
}

impl<Req, Rsp, S> Queue for RingQueue<Req, Rsp, S>
where
    Req: AbiPod + Send,
    Rsp: AbiPod + Send,
    S: FnMut(&GuestRam, &mut RingConsumer<Req, Rsp>) -> Result<Batch, RingError> + Send,
{
    fn service(&mut self, mem: &GuestRam) -> Result<Batch, RingError> {
        let batch = (self.service)(mem, &mut self.ring)?;
        if batch.notify {
            if let Some(irq) = &self.irq {
                irq.raise();
            }
        }
        Ok(batch)
    }

    fn gpa(&self) -> u64 {
        self.ring.gpa()
    }

    fn consumed(&self) -> u32 {
        self.ring.consumed()
    }

    fn is_broken(&self) -> bool {
        self.ring.is_broken()
    }

    fn set_service_budget(&mut self) {
        self.ring.set_budget(Some(SERVICE_REQUESTS));
        self.ring.set_byte_budget(Some(SERVICE_BYTES));
    }

    fn set_polling(&mut self, mem: &GuestRam, on: bool) -> Result<(), RingError> {
        self.ring.set_polling(mem, on)
    }

    fn set_interrupt(&mut self, line: Option<Arc<RingIrqLine>>) {
        self.irq = line;
    }

    fn save(&self) -> Option<(RingState, u64)> {
        Some((self.ring.state(), self.ring.ring_bytes() as u64))
    }

    fn restore(&mut self, mem: &GuestRam, state: &RingState) -> Result<(), String> {
        let ring = RingConsumer::from_state(mem, state).map_err(|e| e.to_string())?;
        ring.publish_host_flags(mem).map_err(|e| e.to_string())?;
        self.ring = ring;
        self.set_service_budget();
        Ok(())
    }
}

/// vCPU threads waiting for a lock the I/O thread may hold ([`LockWaiters::vcpu_lock`]):
/// while any waits, the I/O thread starts no service.
#[derive(Debug, Default)]
pub struct LockWaiters(AtomicU32);

impl LockWaiters {
    /// Locks `m` for a vCPU thread. If it is held (by the I/O thread, serving a ring), the
    /// waiter is counted so that the I/O thread starts no further service until the vCPU
    /// had its turn: the wait is one service budget at most.
    pub fn vcpu_lock<'a, T>(&self, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        match m.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.0.fetch_add(1, Ordering::AcqRel);
                let g = lock(m);
                self.0.fetch_sub(1, Ordering::AcqRel);
                g
            }
        }
    }

    /// Whether a vCPU waits.
    fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }
}

/// One ring's registration: the consumer, its transport, and the ioeventfd on its doorbell
/// port (transport [`Transport::DoorbellEventfd`] only).
#[derive(Debug)]
pub(crate) struct RingSlot {
    pub(crate) queue: Option<Box<dyn Queue>>,
    pub(crate) transport: Transport,
    pub(crate) eventfd: Option<EventFd>,
    /// The completion interrupt the guest bound the queue to (kept across registrations).
    pub(crate) irq: Option<Arc<RingIrqLine>>,
}

/// Why a ring could not be serviced.
#[derive(Debug)]
pub(crate) enum ServiceError {
    /// The ring is not registered.
    NotRegistered,
    /// The ring is broken or its memory failed.
    Ring(RingError),
}

impl ServiceError {
    fn status(&self) -> Status {
        match self {
            ServiceError::NotRegistered => Status::EINVAL,
            ServiceError::Ring(e) => e.status(),
        }
    }
}

/// A declared ring: its spec, slot and notification counter.
#[derive(Debug)]
struct QueueSlot {
    spec: QueueSpec,
    slot: Mutex<RingSlot>,
    notify: NotifyCounter,
}

/// The state shared by the vCPU threads (hypercalls, doorbell exits) and the I/O thread:
/// guest memory and one slot per ring the devices declared.
pub struct RingSet {
    pub(crate) mem: GuestRam,
    queues: Vec<QueueSlot>,
    /// Bit `i` set: ring `i` is registered with [`Transport::HostPoll`] and not broken.
    polled: AtomicU32,
    waiters: LockWaiters,
    /// Doorbell writes that named no queue of the VM (or had the wrong width).
    pub(crate) unknown_doorbells: AtomicU64,
}

impl std::fmt::Debug for RingSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingSet")
            .field("queues", &self.queues.len())
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

impl RingSet {
    /// The number of ring slots.
    pub(crate) fn len(&self) -> QueueIndex {
        self.queues.len() as QueueIndex
    }

    /// The slot index of queue `queue`, if a device declared it.
    pub(crate) fn index_of(&self, queue: QueueId) -> Option<QueueIndex> {
        self.queues
            .iter()
            .position(|q| q.spec.queue == queue)
            .map(|i| i as QueueIndex)
    }

    fn queue(&self, i: QueueIndex) -> Option<&QueueSlot> {
        self.queues.get(i as usize)
    }

    pub(crate) fn waiters(&self) -> &LockWaiters {
        &self.waiters
    }

    /// Whether any ring is registered (a snapshot cannot hold ring state yet).
    pub fn any_registered(&self) -> bool {
        self.queues
            .iter()
            .any(|q| crate::runtime::sync::lock(&q.slot).queue.is_some())
    }

    /// The rings registered for the I/O thread to poll, as a bit mask of slot indices.
    pub(crate) fn polled(&self) -> u32 {
        self.polled.load(Ordering::Acquire)
    }

    fn set_polled(&self, i: QueueIndex, on: bool) {
        let bit = 1u32 << i;
        if on {
            self.polled.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.polled.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Services the available requests of the ring in `slot`, up to its budget
    /// ([`Batch::budget_exhausted`]: work is left).
    pub(crate) fn service_slot(&self, slot: &mut RingSlot) -> Result<Batch, ServiceError> {
        match slot.queue.as_mut() {
            None => Err(ServiceError::NotRegistered),
            Some(q) => q.service(&self.mem).map_err(ServiceError::Ring),
        }
    }

    /// Services ring `i` now, on the vCPU thread (doorbell exit, `RingKick`): one budget.
    pub(crate) fn service(&self, i: QueueIndex) -> Result<Batch, ServiceError> {
        let q = self.queue(i).ok_or(ServiceError::NotRegistered)?;
        self.service_slot(&mut self.waiters.vcpu_lock(&q.slot))
    }

    /// A doorbell write for ring `i` exited to userspace: services the ring when its
    /// transport is [`Transport::Doorbell`] (one budget; a ring left with work is
    /// continued by the next doorbell). Other transports and unknown rings: nothing.
    pub(crate) fn doorbell(&self, i: QueueIndex) {
        let Some(q) = self.queue(i) else {
            return;
        };
        let mut slot = self.waiters.vcpu_lock(&q.slot);
        if slot.transport == Transport::Doorbell {
            let _ = self.service_slot(&mut slot);
        }
    }

    /// One service of the ring in `slot` on the I/O thread. Returns whether work is left
    /// for later: the service stopped at its budget, or it was not started because a vCPU
    /// waits for a lock. A ring that failed (broken) has nothing left.
    fn io_service(&self, slot: &mut RingSlot) -> bool {
        if self.waiters.any() {
            return true;
        }
        matches!(self.service_slot(slot), Ok(b) if b.budget_exhausted)
    }

    /// The I/O thread's eventfd for ring `i` fired: counts the notifications (the
    /// eventfd's counter: signals since the last read) and services the ring (one budget).
    /// Returns whether work is left ([`RingSet::service_pending`] continues it); an error
    /// only if the eventfd itself failed.
    pub(crate) fn eventfd_fired(&self, i: QueueIndex) -> io::Result<bool> {
        let Some(q) = self.queue(i) else {
            return Ok(false);
        };
        let mut slot = lock(&q.slot);
        let Some(fd) = slot.eventfd.as_ref() else {
            // Replaced by a re-registration since the event was reported.
            return Ok(false);
        };
        if self.count_notifications(i, fd)? == 0 {
            return Ok(false);
        }
        if slot.transport == Transport::DoorbellEventfd {
            // A broken ring stays unserviced; the guest sees BROKEN.
            return Ok(self.io_service(&mut slot));
        }
        Ok(false)
    }

    /// Continues eventfd ring `i` whose last service left work (one more budget). Returns
    /// whether work is still left. Nothing if the ring was re-registered with another
    /// transport meanwhile (its new transport serves it).
    pub(crate) fn service_pending(&self, i: QueueIndex) -> bool {
        let Some(q) = self.queue(i) else {
            return false;
        };
        let mut slot = lock(&q.slot);
        if slot.transport != Transport::DoorbellEventfd || slot.queue.is_none() {
            return false;
        }
        self.io_service(&mut slot)
    }

    /// Reads `fd`'s counter (signals since the last read) into ring `i`'s notification
    /// counter and returns it (0 when there was none).
    pub(crate) fn count_notifications(&self, i: QueueIndex, fd: &EventFd) -> io::Result<u64> {
        match fd.read() {
            Ok(n) => {
                if let Some(q) = self.queue(i) {
                    q.notify.fetch_add(n, Ordering::AcqRel);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// One polling step for ring `i`: services it (one budget) if `req_prod` moved. Cheap
    /// when idle: one lock and one load. Work left at the budget is taken up by the next
    /// step. Returns whether the step found work: requests served, or work left (the
    /// polling loop sleeps between steps once they stop finding any,
    /// `crate::io::poll_pacer`). A net receive ring whose posted buffers wait for frames
    /// is not work.
    pub(crate) fn poll_step(&self, i: QueueIndex) -> bool {
        if self.waiters.any() {
            // A vCPU waits for a lock: it is served next, not slept on.
            return true;
        }
        let Some(q) = self.queue(i) else {
            return false;
        };
        let mut slot = lock(&q.slot);
        if slot.transport != Transport::HostPoll {
            return false;
        }
        let Some(ring) = slot.queue.as_ref() else {
            return false;
        };
        if ring.is_broken() {
            self.set_polled(i, false);
            return false;
        }
        let at = GuestAddress(ring.gpa().wrapping_add(offsets::REQ_PROD));
        let busy = match self.mem.load::<u32>(at, Ordering::Acquire) {
            Ok(prod) => prod != ring.consumed(),
            // Let the consumer see (and mark) the failure.
            Err(_) => true,
        };
        if !busy {
            return false;
        }
        match self.service_slot(&mut slot) {
            Ok(b) => b.requests != 0 || b.budget_exhausted,
            Err(_) => {
                self.set_polled(i, false);
                false
            }
        }
    }

    /// Services ring `i` once (one budget) if the I/O thread owns it (eventfd or polled).
    /// Returns whether an eventfd ring has work left ([`RingSet::service_pending`]); a
    /// polled ring's is taken up by the next poll step.
    pub(crate) fn service_io_ring(&self, i: QueueIndex) -> bool {
        let Some(q) = self.queue(i) else {
            return false;
        };
        let mut slot = lock(&q.slot);
        let ours = matches!(
            slot.transport,
            Transport::DoorbellEventfd | Transport::HostPoll
        );
        if !ours || slot.queue.is_none() {
            return false;
        }
        let left = self.io_service(&mut slot);
        left && slot.transport == Transport::DoorbellEventfd
    }
}

/// The rings of one VM: the [`RingSet`] shared with the I/O thread, the I/O thread, and
/// where doorbell ioeventfds are registered.
pub struct Rings {
    set: Arc<RingSet>,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    io: Mutex<IoThread>,
    irqs: Option<Arc<RingIrqs>>,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings")
            .field("set", &self.set)
            .field("ioevents", &self.ioevents.is_some())
            .finish_non_exhaustive()
    }
}

impl Rings {
    /// One slot per ring in `specs` (at most [`MAX_QUEUES`]), with its notification counter
    /// registered in `ledger`. No thread is started until a ring asks for the I/O thread.
    pub(crate) fn new(
        mem: GuestRam,
        specs: Vec<QueueSpec>,
        ioevents: Option<Arc<dyn IoEventRegistrar>>,
        on_fatal: Arc<dyn Fn(String) + Send + Sync>,
        ledger: &mut ExitLedger,
    ) -> io::Result<Self> {
        if specs.len() > MAX_QUEUES {
            return Err(io::Error::other("too many rings"));
        }
        let queues = specs
            .into_iter()
            .map(|spec| QueueSlot {
                spec,
                slot: Mutex::new(RingSlot {
                    queue: None,
                    transport: Transport::Doorbell,
                    eventfd: None,
                    irq: None,
                }),
                notify: ledger.notifier(spec.notifier),
            })
            .collect();
        let set = Arc::new(RingSet {
            mem,
            queues,
            polled: AtomicU32::new(0),
            waiters: LockWaiters::default(),
            unknown_doorbells: AtomicU64::new(0),
        });
        let io = IoThread::new(Arc::clone(&set), on_fatal)?;
        Ok(Self {
            set,
            ioevents,
            io: Mutex::new(io),
            irqs: None,
        })
    }

    /// Offers completion interrupts on `irqs` ([`Rings::bind_interrupt`]).
    pub(crate) fn set_irqs(&mut self, irqs: Arc<RingIrqs>) {
        self.irqs = Some(irqs);
    }

    /// The completion interrupt lines, if offered.
    pub fn irqs(&self) -> Option<&Arc<RingIrqs>> {
        self.irqs.as_ref()
    }

    /// `QueueInterrupt`: binds queue `id`'s completions to GSI `gsi` (0: unbinds). Kept in
    /// the ring's slot, so it applies to later registrations too. `EOPNOTSUPP` without
    /// interrupts or for an undeclared queue, `EINVAL` for a GSI outside the range.
    pub(crate) fn bind_interrupt(&self, id: QueueId, gsi: u64) -> Result<u64, Status> {
        let irqs = self.irqs.as_ref().ok_or(Status::EOPNOTSUPP)?;
        let i = self.set.index_of(id).ok_or(Status::EOPNOTSUPP)?;
        let q = self.set.queue(i).ok_or(Status::EOPNOTSUPP)?;
        let line = match gsi {
            0 => None,
            g => Some(irqs.line(g).ok_or(Status::EINVAL)?),
        };
        let mut slot = self.set.waiters.vcpu_lock(&q.slot);
        if let Some(queue) = slot.queue.as_mut() {
            queue.set_interrupt(line.clone());
        }
        slot.irq = line;
        Ok(0)
    }

    /// The shared ring state.
    pub(crate) fn set(&self) -> &Arc<RingSet> {
        &self.set
    }

    /// Whether doorbells can be ioeventfds ([`Transport::DoorbellEventfd`]).
    pub fn has_ioevents(&self) -> bool {
        self.ioevents.is_some()
    }

    /// A handle that stops the I/O thread (for a VM whose vCPU thread cannot be joined).
    pub fn stopper(&self) -> IoStopper {
        lock(&self.io).stopper()
    }

    /// Doorbell writes so far that named no queue of the VM or were not 32 bits wide
    /// (counted and ignored).
    pub fn unknown_doorbells(&self) -> u64 {
        self.set.unknown_doorbells.load(Ordering::Relaxed)
    }

    /// Whether any ring is registered.
    pub fn any_registered(&self) -> bool {
        self.set.any_registered()
    }

    /// Holds every ring still (all slot locks: no thread services one meanwhile), drains
    /// each registered ring ([`DRAIN_SERVICES`]), saves it and calls `f` with them (a
    /// snapshot writes guest RAM there, so rings and RAM agree). Call with the vCPUs
    /// paused: no new request or doorbell then arrives, and every service that was running
    /// has ended once its lock is taken.
    ///
    /// The drain (as QEMU drains block I/O before it stops a VM) serves the requests the
    /// guest posted before the pause whatever their transport: a polled ring or an
    /// ioeventfd already signalled would otherwise be served by the paused VM's I/O thread
    /// after the capture, and a restored copy would serve the same requests again (or, for
    /// the ioeventfd, wait for a signal the snapshot does not hold). `Err` if a registered
    /// ring cannot be saved.
    pub fn frozen<R>(&self, f: impl FnOnce(Vec<SavedRing>) -> R) -> Result<R, String> {
        let mut guards: Vec<_> = self.set.queues.iter().map(|q| lock(&q.slot)).collect();
        for slot in guards.iter_mut().filter(|s| s.queue.is_some()) {
            for _ in 0..DRAIN_SERVICES {
                match self.set.service_slot(slot) {
                    Ok(b) if b.budget_exhausted => continue,
                    _ => break,
                }
            }
        }
        let mut saved = Vec::new();
        for (q, slot) in self.set.queues.iter().zip(&guards) {
            if let Some(queue) = &slot.queue {
                let (ring, len) = queue
                    .save()
                    .ok_or_else(|| format!("ring {:?} cannot be saved", q.spec.queue))?;
                saved.push(SavedRing {
                    queue: q.spec.queue.to_u32(),
                    transport: slot.transport as u64,
                    len,
                    ring,
                    irq_gsi: slot.irq.as_ref().map_or(0, |l| l.gsi()),
                });
            }
        }
        let r = f(saved);
        drop(guards);
        Ok(r)
    }

    /// Registers `queue` (opened by its device at the saved address) continuing from
    /// `saved`, as the guest had registered it.
    pub(crate) fn restore(
        &self,
        mut queue: Box<dyn Queue>,
        saved: &SavedRing,
    ) -> Result<(), String> {
        let id = QueueId::from_u32(saved.queue).map_err(|_| "bad queue id".to_owned())?;
        let transport = self
            .transport(saved.transport)
            .map_err(|s| format!("transport {}: {s:?}", saved.transport))?;
        queue.restore(&self.set.mem, &saved.ring)?;
        if saved.irq_gsi != 0 {
            // The binding as the guest made it; `register` hands it to the queue.
            let line = self
                .irqs
                .as_ref()
                .and_then(|irqs| irqs.line(saved.irq_gsi.into()))
                .ok_or_else(|| {
                    format!(
                        "ring {id:?}: no completion interrupt at GSI {}",
                        saved.irq_gsi
                    )
                })?;
            let i = self.set.index_of(id).ok_or("undeclared queue")?;
            let q = self.set.queue(i).ok_or("undeclared queue")?;
            lock(&q.slot).irq = Some(line);
        }
        self.register(id, queue, transport)
            .map(drop)
            .map_err(|s| format!("re-registering ring {id:?}: {s:?}"))
    }

    /// Whether the I/O thread has been started.
    pub fn io_thread_running(&self) -> bool {
        lock(&self.io).is_started()
    }

    /// The transport named by a registration's `flags`: `EINVAL` if unknown, `EOPNOTSUPP`
    /// for [`Transport::DoorbellEventfd`] without ioeventfds. Checked before the ring.
    pub(crate) fn transport(&self, flags: u64) -> Result<Transport, Status> {
        let transport = Transport::try_from(flags).map_err(|_| Status::EINVAL)?;
        if transport == Transport::DoorbellEventfd && self.ioevents.is_none() {
            return Err(Status::EOPNOTSUPP);
        }
        Ok(transport)
    }

    /// Registers `queue` (just opened by its device) as queue `id` with `transport`
    /// ([`Rings::transport`]), replacing any earlier registration. A failure changes
    /// nothing.
    pub(crate) fn register(
        &self,
        id: QueueId,
        mut queue: Box<dyn Queue>,
        transport: Transport,
    ) -> Result<u64, Status> {
        let i = self.set.index_of(id).ok_or(Status::EOPNOTSUPP)?;
        let q = self.set.queue(i).ok_or(Status::EOPNOTSUPP)?;
        queue.set_service_budget();
        if transport != Transport::Doorbell {
            lock(&self.io)
                .ensure_started()
                .map_err(|_| Status::EAGAIN)?;
        }
        if transport == Transport::HostPoll {
            // Before the guest learns the registration succeeded: it must never ring.
            queue
                .set_polling(&self.set.mem, true)
                .map_err(|e| e.status())?;
        }

        let mut slot = self.set.waiters.vcpu_lock(&q.slot);
        queue.set_interrupt(slot.irq.clone());
        let eventfd = match (slot.eventfd.take(), transport) {
            // Still registered on the port and watched by the I/O thread: keep it.
            (Some(fd), Transport::DoorbellEventfd) => Some(fd),
            (None, Transport::DoorbellEventfd) => Some(self.attach_eventfd(i, id)?),
            (Some(fd), _) => {
                self.detach_eventfd(&fd, i, id);
                None
            }
            (None, _) => None,
        };
        slot.queue = Some(queue);
        slot.transport = transport;
        slot.eventfd = eventfd;
        self.set.set_polled(i, transport == Transport::HostPoll);
        if transport == Transport::Doorbell {
            // Requests published before the registration would otherwise wait for a
            // doorbell the guest may never ring.
            let _ = self.set.service_slot(&mut slot);
        }
        drop(slot);
        if transport != Transport::Doorbell {
            // The I/O thread services the ring once and starts polling it if asked.
            lock(&self.io).wake();
        }
        Ok(0)
    }

    /// `RingKick`: services queue `queue` now on the vCPU thread (one budget); the number
    /// of requests serviced. `EOPNOTSUPP` if no device declared the queue, `EINVAL` if it
    /// is not registered.
    pub(crate) fn kick(&self, queue: QueueId) -> Result<u64, Status> {
        let i = self.set.index_of(queue).ok_or(Status::EOPNOTSUPP)?;
        self.set
            .service(i)
            .map(|b| b.requests)
            .map_err(|e| e.status())
    }

    /// An ioeventfd for queue `id` in slot `i`: on the doorbell port, matching the
    /// queue's id, watched by the I/O thread.
    fn attach_eventfd(&self, i: QueueIndex, id: QueueId) -> Result<EventFd, Status> {
        let reg = self.ioevents.as_ref().ok_or(Status::EOPNOTSUPP)?;
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|_| Status::EAGAIN)?;
        reg.register(&fd, DOORBELL, id.to_u32())
            .map_err(|_| Status::EIO)?;
        if lock(&self.io).watch(fd.as_raw_fd(), i).is_err() {
            let _ = reg.unregister(&fd, DOORBELL, id.to_u32());
            return Err(Status::EIO);
        }
        Ok(fd)
    }

    /// Unregisters ring `i`'s ioeventfd; doorbells it absorbed that the I/O thread has not
    /// read yet are still counted.
    fn detach_eventfd(&self, fd: &EventFd, i: QueueIndex, id: QueueId) {
        lock(&self.io).unwatch(fd.as_raw_fd());
        if let Some(reg) = &self.ioevents {
            let _ = reg.unregister(fd, DOORBELL, id.to_u32());
        }
        let _ = self.set.count_notifications(i, fd);
    }

    /// Stops the I/O thread and detaches every ioeventfd (after the vCPU threads ended).
    /// Returns why the I/O thread failed during the run, if it did.
    pub fn shutdown(&self) -> Result<(), String> {
        let r = lock(&self.io).stop();
        for (i, q) in self.set.queues.iter().enumerate() {
            let fd = lock(&q.slot).eventfd.take();
            if let Some(fd) = fd {
                self.detach_eventfd(&fd, i as QueueIndex, q.spec.queue);
            }
        }
        r
    }
}

impl Drop for Rings {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
