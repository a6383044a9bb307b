//! The PV devices of ABI v1 wired to the VM: the block device (`BlockCapacity`, `BlockIo`),
//! the console and block rings with their three transports, and the PV clock page.
//! [`PvBackend`] implements [`PvDevices`]; the ring servicing itself is `pvkit-pv`'s.
//!
//! # Who touches what
//!
//! | transport                     | the ring is serviced by                                        |
//! |-------------------------------|----------------------------------------------------------------|
//! | [`Transport::Doorbell`]       | the vCPU thread, in the exit of the doorbell port write ([`DoorbellPorts`]) |
//! | [`Transport::DoorbellEventfd`]| the I/O thread, woken by KVM's ioeventfd on the doorbell port  |
//! | [`Transport::HostPoll`]       | the I/O thread, spinning on `req_prod` while `HOST_POLLING` is set |
//!
//! `RingKick` services any registered ring on the vCPU thread. Each ring sits in its own
//! mutex ([`RingSet`]) with its transport and ioeventfd; the block device and the disk have
//! their own. Lock order: ring slot, then block device, then disk.
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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use pvkit_abi::call::CallReturn;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::{doorbell, DOORBELL_BASE, DOORBELL_END};
use pvkit_abi::ring::{offsets, RegionKind, RingId, Transport};
use pvkit_abi::Status;
pub use pvkit_pv::ring::{SERVICE_BYTES, SERVICE_REQUESTS};
use pvkit_pv::{
    console, Batch, BlockDevice, BlockRing, ClockSample, ConsoleRing, PvClockPage, RingError,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::PortDevice;
use crate::devices::legacy::vm_clock::{VmClock, VmTime};
use crate::exit::ledger::{ExitLedger, NotifyCounter};
use crate::hypercall::{call_return, PvDevices};
use crate::io::console_out::Console;
use crate::io::disk::SharedDisk;
use crate::iothread::{IoStopper, IoThread};
use crate::runtime::sync::lock;
use crate::vstate::memory::GuestRam;

/// Ledger name of the console ring's in-kernel notifications (ioeventfd signals).
pub const NOTIFY_CONSOLE_RING: &str = "console ring";
/// Ledger name of the block ring's in-kernel notifications (ioeventfd signals).
pub const NOTIFY_BLOCK_RING: &str = "block ring";

/// The ledger name of a ring's in-kernel notification counter
/// ([`crate::exit::ledger::LedgerSnapshot::notifications`]).
pub fn notifier_name(ring: RingId) -> &'static str {
    match ring {
        RingId::Console => NOTIFY_CONSOLE_RING,
        RingId::Block => NOTIFY_BLOCK_RING,
    }
}

/// Number of rings in ABI v1.
const RINGS: usize = 2;

/// The guest TSC and the VM's monotonic time at one instant, for the PV clock page.
pub trait ClockSource: Send + Sync {
    /// A sample taken now, or `None` if the guest TSC cannot be read.
    fn sample(&self) -> Option<ClockSample>;
}

/// The guest TSC as the host TSC plus a fixed offset (no TSC scaling: the guest runs at the
/// host rate), paired with [`VmClock`] time.
#[derive(Clone, Copy, Debug)]
pub struct TscClock {
    time: VmClock,
    tsc_khz: u32,
    offset: u64,
}

impl TscClock {
    /// A clock for a guest whose TSC is `host TSC + offset` (wrapping) and runs at `tsc_khz`.
    /// See [`crate::vcpu::Vcpu::guest_tsc_offset`].
    pub fn new(time: VmClock, tsc_khz: u32, offset: u64) -> Self {
        Self {
            time,
            tsc_khz,
            offset,
        }
    }
}

pub use crate::arch::x86_64::tsc::host_tsc;

impl ClockSource for TscClock {
    fn sample(&self) -> Option<ClockSample> {
        // Bracket the clock read with two TSC reads (tens of ns apart) and pair it with
        // their midpoint.
        let a = host_tsc();
        let ns = self.time.now_ns();
        let b = host_tsc();
        let host = a.wrapping_add(b.wrapping_sub(a) / 2);
        Some(ClockSample {
            tsc: host.wrapping_add(self.offset),
            system_ns: ns,
            tsc_khz: u64::from(self.tsc_khz),
            stable: true,
        })
    }
}

/// Attaches ioeventfds to doorbell ports (KVM's `KVM_IOEVENTFD`; a fake in tests).
pub trait IoEventRegistrar: Send + Sync {
    /// Makes any guest write to `port` signal `fd` in the kernel instead of exiting.
    fn register(&self, fd: &EventFd, port: u16) -> io::Result<()>;
    /// Undoes [`IoEventRegistrar::register`].
    fn unregister(&self, fd: &EventFd, port: u16) -> io::Result<()>;
}

/// KVM's ioeventfds on the VM.
#[derive(Debug, Clone)]
pub struct KvmIoEvents(pub Arc<VmFd>);

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, port: u16) -> io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Pio(u64::from(port)), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, port: u16) -> io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Pio(u64::from(port)), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// A registered ring of either kind.
#[derive(Debug)]
pub(crate) enum AnyRing {
    Console(ConsoleRing),
    Block(BlockRing),
}

impl AnyRing {
    fn gpa(&self) -> u64 {
        match self {
            AnyRing::Console(r) => r.gpa(),
            AnyRing::Block(r) => r.gpa(),
        }
    }

    fn consumed(&self) -> u32 {
        match self {
            AnyRing::Console(r) => r.consumed(),
            AnyRing::Block(r) => r.consumed(),
        }
    }

    fn is_broken(&self) -> bool {
        match self {
            AnyRing::Console(r) => r.is_broken(),
            AnyRing::Block(r) => r.is_broken(),
        }
    }

    /// Bounds every service of the ring: [`SERVICE_REQUESTS`] and [`SERVICE_BYTES`].
    fn set_service_budget(&mut self) {
        match self {
            AnyRing::Console(r) => {
                r.set_budget(Some(SERVICE_REQUESTS));
                r.set_byte_budget(Some(SERVICE_BYTES));
            }
            AnyRing::Block(r) => {
                r.set_budget(Some(SERVICE_REQUESTS));
                r.set_byte_budget(Some(SERVICE_BYTES));
            }
        }
    }

    fn set_polling(&mut self, mem: &GuestRam, on: bool) -> Result<(), RingError> {
        match self {
            AnyRing::Console(r) => r.set_polling(mem, on),
            AnyRing::Block(r) => r.set_polling(mem, on),
        }
    }
}

/// One ring's registration: the consumer, its transport, and the ioeventfd on its doorbell
/// port (transport [`Transport::DoorbellEventfd`] only).
#[derive(Debug)]
pub(crate) struct RingSlot {
    pub(crate) ring: Option<AnyRing>,
    pub(crate) transport: Transport,
    pub(crate) eventfd: Option<EventFd>,
}

/// Why a ring could not be serviced.
#[derive(Debug)]
pub(crate) enum ServiceError {
    /// No ring of this kind is registered (or its device is absent).
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

/// The state shared by the vCPU thread (hypercalls, doorbell exits) and the I/O thread:
/// guest memory, the console sink, the block device and the two ring slots.
pub struct RingSet {
    pub(crate) mem: GuestRam,
    console: Console,
    block: Option<Mutex<BlockDevice<SharedDisk>>>,
    slots: [Mutex<RingSlot>; RINGS],
    notify: [NotifyCounter; RINGS],
    /// Bit `id` set: ring `id` is registered with [`Transport::HostPoll`] and not broken.
    polled: AtomicU32,
    /// vCPU threads waiting for a lock of this set ([`RingSet::vcpu_lock`]): while any
    /// waits, the I/O thread starts no service.
    vcpu_waiting: AtomicU32,
}

impl std::fmt::Debug for RingSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingSet")
            .field("block", &self.block.is_some())
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

impl RingSet {
    pub(crate) fn slot(&self, id: RingId) -> &Mutex<RingSlot> {
        match id {
            RingId::Console => &self.slots[0],
            RingId::Block => &self.slots[1],
        }
    }

    /// Locks `m` for a vCPU thread. If it is held (by the I/O thread, serving a ring), the
    /// waiter is counted so that the I/O thread starts no further service until the vCPU
    /// had its turn: the wait is one service budget at most.
    pub(crate) fn vcpu_lock<'a, T>(&self, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        match m.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.vcpu_waiting.fetch_add(1, Ordering::AcqRel);
                let g = lock(m);
                self.vcpu_waiting.fetch_sub(1, Ordering::AcqRel);
                g
            }
        }
    }

    /// Whether a vCPU waits for a lock of this set: the I/O thread then defers its work.
    fn vcpu_waits(&self) -> bool {
        self.vcpu_waiting.load(Ordering::Acquire) != 0
    }

    /// The rings registered for the I/O thread to poll, as a bit mask of ring ids.
    pub(crate) fn polled(&self) -> u32 {
        self.polled.load(Ordering::Acquire)
    }

    fn set_polled(&self, id: RingId, on: bool) {
        let bit = 1u32 << (id as u32);
        if on {
            self.polled.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.polled.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Services the available requests of the ring in `slot`, up to its budget
    /// ([`Batch::budget_exhausted`]: work is left).
    pub(crate) fn service_slot(&self, slot: &mut RingSlot) -> Result<Batch, ServiceError> {
        let r = match slot.ring.as_mut() {
            None => return Err(ServiceError::NotRegistered),
            Some(AnyRing::Console(ring)) => {
                let mut sink = self.console.clone();
                console::service_ring(&self.mem, ring, &mut sink)
            }
            Some(AnyRing::Block(ring)) => {
                let dev = self.block.as_ref().ok_or(ServiceError::NotRegistered)?;
                lock(dev).service_ring(&self.mem, ring)
            }
        };
        r.map_err(ServiceError::Ring)
    }

    /// Services ring `id` now, on the vCPU thread (doorbell exit, `RingKick`): one budget.
    pub(crate) fn service(&self, id: RingId) -> Result<Batch, ServiceError> {
        self.service_slot(&mut self.vcpu_lock(self.slot(id)))
    }

    /// One service of the ring in `slot` on the I/O thread. Returns whether work is left
    /// for later: the service stopped at its budget, or it was not started because a vCPU
    /// waits for a lock. A ring that failed (broken) has nothing left.
    fn io_service(&self, slot: &mut RingSlot) -> bool {
        if self.vcpu_waits() {
            return true;
        }
        matches!(self.service_slot(slot), Ok(b) if b.budget_exhausted)
    }

    /// The I/O thread's eventfd for ring `id` fired: counts the notifications (the
    /// eventfd's counter: signals since the last read) and services the ring (one budget).
    /// Returns whether work is left ([`RingSet::service_pending`] continues it); an error
    /// only if the eventfd itself failed.
    pub(crate) fn eventfd_fired(&self, id: RingId) -> io::Result<bool> {
        let mut slot = lock(self.slot(id));
        let Some(fd) = slot.eventfd.as_ref() else {
            // Replaced by a re-registration since the event was reported.
            return Ok(false);
        };
        if self.count_notifications(id, fd)? == 0 {
            return Ok(false);
        }
        if slot.transport == Transport::DoorbellEventfd {
            // A broken ring stays unserviced; the guest sees BROKEN.
            return Ok(self.io_service(&mut slot));
        }
        Ok(false)
    }

    /// Continues eventfd ring `id` whose last service left work (one more budget). Returns
    /// whether work is still left. Nothing if the ring was re-registered with another
    /// transport meanwhile (its new transport serves it).
    pub(crate) fn service_pending(&self, id: RingId) -> bool {
        let mut slot = lock(self.slot(id));
        if slot.transport != Transport::DoorbellEventfd || slot.ring.is_none() {
            return false;
        }
        self.io_service(&mut slot)
    }

    /// Reads `fd`'s counter (signals since the last read) into ring `id`'s notification
    /// counter and returns it (0 when there was none).
    pub(crate) fn count_notifications(&self, id: RingId, fd: &EventFd) -> io::Result<u64> {
        match fd.read() {
            Ok(n) => {
                if let Some(c) = self.notify.get(id as usize) {
                    c.fetch_add(n, Ordering::AcqRel);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// One polling step for ring `id`: services it (one budget) if `req_prod` moved. Cheap
    /// when idle: one lock and one load. Work left at the budget is taken up by the next
    /// step.
    pub(crate) fn poll_step(&self, id: RingId) {
        if self.vcpu_waits() {
            return;
        }
        let mut slot = lock(self.slot(id));
        if slot.transport != Transport::HostPoll {
            return;
        }
        let Some(ring) = slot.ring.as_ref() else {
            return;
        };
        if ring.is_broken() {
            self.set_polled(id, false);
            return;
        }
        let at = GuestAddress(ring.gpa().wrapping_add(offsets::REQ_PROD));
        let busy = match self.mem.load::<u32>(at, Ordering::Acquire) {
            Ok(prod) => prod != ring.consumed(),
            // Let the consumer see (and mark) the failure.
            Err(_) => true,
        };
        if busy && self.service_slot(&mut slot).is_err() {
            self.set_polled(id, false);
        }
    }

    /// Services ring `id` once (one budget) if the I/O thread owns it (eventfd or polled).
    /// Returns whether an eventfd ring has work left ([`RingSet::service_pending`]); a
    /// polled ring's is taken up by the next poll step.
    pub(crate) fn service_io_ring(&self, id: RingId) -> bool {
        let mut slot = lock(self.slot(id));
        let ours = matches!(
            slot.transport,
            Transport::DoorbellEventfd | Transport::HostPoll
        );
        if !ours || slot.ring.is_none() {
            return false;
        }
        let left = self.io_service(&mut slot);
        left && slot.transport == Transport::DoorbellEventfd
    }
}

/// The doorbell ports `0x510 + ring id` on the bus: a write services the ring when its
/// transport is [`Transport::Doorbell`], before the vCPU resumes. Writes for rings with
/// other transports (a guest that rings although the host polls) and for unknown rings
/// are counted by the ledger and otherwise ignored.
#[derive(Debug)]
pub struct DoorbellPorts {
    rings: Arc<RingSet>,
}

/// First doorbell port and the number of doorbell ports.
pub const DOORBELL_PORTS: (u16, u16) = (DOORBELL_BASE, DOORBELL_END - DOORBELL_BASE);

impl PortDevice for DoorbellPorts {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u16, _data: &[u8]) {
        let Ok(id) = RingId::try_from(u32::from(offset)) else {
            return;
        };
        let mut slot = self.rings.vcpu_lock(self.rings.slot(id));
        if slot.transport == Transport::Doorbell {
            // One budget; a ring left with work is continued by the next doorbell.
            let _ = self.rings.service_slot(&mut slot);
        }
    }
}

/// What a [`PvBackend`] is built from.
pub struct PvConfig {
    /// Guest RAM (the I/O thread keeps a clone).
    pub mem: GuestRam,
    /// The console sink for the console ring.
    pub console: Console,
    /// The disk behind the PV block device; `None`: no block device, no block ring.
    pub disk: Option<SharedDisk>,
    /// The time source of the PV clock page; `None`: no clock page.
    pub clock: Option<Arc<dyn ClockSource>>,
    /// Where doorbell ioeventfds are registered; `None`: no [`Transport::DoorbellEventfd`].
    pub ioevents: Option<Arc<dyn IoEventRegistrar>>,
    /// KVM's kvmclock is available to the guest (advertised as [`Features::KVMCLOCK`]).
    pub kvmclock: bool,
    /// Called (from the I/O thread) if the I/O thread fails or panics; the VM must stop.
    pub on_fatal: Arc<dyn Fn(String) + Send + Sync>,
}

impl std::fmt::Debug for PvConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvConfig")
            .field("disk", &self.disk)
            .field("clock", &self.clock.is_some())
            .field("ioevents", &self.ioevents.is_some())
            .field("kvmclock", &self.kvmclock)
            .finish_non_exhaustive()
    }
}

/// The feature bits a [`PvBackend`] with these capabilities offers.
pub fn offered_features(block: bool, eventfd: bool, clock: bool, kvmclock: bool) -> Features {
    let mut f = Features::CONSOLE_RING | Features::RING_POLL;
    if block {
        f |= Features::BLOCK | Features::BLOCK_RING;
    }
    if eventfd {
        f |= Features::RING_EVENTFD;
    }
    if clock {
        f |= Features::CLOCK;
    }
    if kvmclock {
        f |= Features::KVMCLOCK;
    }
    f
}

/// The PV devices of one VM.
pub struct PvBackend {
    rings: Arc<RingSet>,
    clock: Option<Arc<dyn ClockSource>>,
    clock_page: Option<PvClockPage>,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    kvmclock: bool,
    io: IoThread,
}

impl std::fmt::Debug for PvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvBackend")
            .field("rings", &self.rings)
            .field("clock_page", &self.clock_page)
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl PvBackend {
    /// The devices of `config`; registers the rings' notification counters in `ledger`.
    /// No thread is started until a ring asks for the I/O thread.
    pub fn new(config: PvConfig, ledger: &mut ExitLedger) -> io::Result<Self> {
        let notify = [
            ledger.notifier(NOTIFY_CONSOLE_RING),
            ledger.notifier(NOTIFY_BLOCK_RING),
        ];
        let empty = || {
            Mutex::new(RingSlot {
                ring: None,
                transport: Transport::Doorbell,
                eventfd: None,
            })
        };
        let rings = Arc::new(RingSet {
            mem: config.mem,
            console: config.console,
            block: config.disk.map(|d| Mutex::new(BlockDevice::new(d))),
            slots: [empty(), empty()],
            notify,
            polled: AtomicU32::new(0),
            vcpu_waiting: AtomicU32::new(0),
        });
        let io = IoThread::new(Arc::clone(&rings), config.on_fatal)?;
        Ok(Self {
            rings,
            clock: config.clock,
            clock_page: None,
            ioevents: config.ioevents,
            kvmclock: config.kvmclock,
            io,
        })
    }

    /// The doorbell port device to put on the bus at [`DOORBELL_PORTS`].
    pub fn doorbell_ports(&self) -> DoorbellPorts {
        DoorbellPorts {
            rings: Arc::clone(&self.rings),
        }
    }

    /// A handle that stops the I/O thread (for a VM whose vCPU thread cannot be joined).
    pub fn stopper(&self) -> IoStopper {
        self.io.stopper()
    }

    /// Whether the I/O thread has been started.
    pub fn io_thread_running(&self) -> bool {
        self.io.is_started()
    }

    /// The clock page last registered, if any.
    pub fn clock_page(&self) -> Option<&PvClockPage> {
        self.clock_page.as_ref()
    }

    fn register_clock(&mut self, mem: &GuestRam, addr: u64, len: u64) -> Result<u64, Status> {
        let source = self.clock.as_ref().ok_or(Status::EOPNOTSUPP)?;
        let mut page = PvClockPage::new(mem, addr, len).map_err(|e| e.status())?;
        // The guest TSC and the host time at the moment of the call.
        let sample = source.sample().ok_or(Status::EIO)?;
        page.update(mem, sample).map_err(|e| e.status())?;
        self.clock_page = Some(page);
        Ok(0)
    }

    fn register_ring(
        &mut self,
        mem: &GuestRam,
        id: RingId,
        addr: u64,
        len: u64,
        flags: u64,
    ) -> Result<u64, Status> {
        if id == RingId::Block && self.rings.block.is_none() {
            return Err(Status::EOPNOTSUPP);
        }
        let transport = Transport::try_from(flags).map_err(|_| Status::EINVAL)?;
        if transport == Transport::DoorbellEventfd && self.ioevents.is_none() {
            return Err(Status::EOPNOTSUPP);
        }
        let mut ring = match id {
            RingId::Console => ConsoleRing::new(mem, addr, len).map(AnyRing::Console),
            RingId::Block => BlockRing::new(mem, addr, len).map(AnyRing::Block),
        }
        .map_err(|e| e.status())?;
        ring.set_service_budget();
        if transport != Transport::Doorbell {
            self.io.ensure_started().map_err(|_| Status::EAGAIN)?;
        }
        if transport == Transport::HostPoll {
            // Before the guest learns the registration succeeded: it must never ring.
            ring.set_polling(mem, true).map_err(|e| e.status())?;
        }

        let rings = Arc::clone(&self.rings);
        let mut slot = rings.vcpu_lock(rings.slot(id));
        let port = doorbell(id);
        let eventfd = match (slot.eventfd.take(), transport) {
            // Still registered on the port and watched by the I/O thread: keep it.
            (Some(fd), Transport::DoorbellEventfd) => Some(fd),
            (None, Transport::DoorbellEventfd) => Some(self.attach_eventfd(id, port)?),
            (Some(fd), _) => {
                self.detach_eventfd(&fd, id);
                None
            }
            (None, _) => None,
        };
        slot.ring = Some(ring);
        slot.transport = transport;
        slot.eventfd = eventfd;
        rings.set_polled(id, transport == Transport::HostPoll);
        if transport == Transport::Doorbell {
            // Requests published before the registration would otherwise wait for a
            // doorbell the guest may never ring.
            let _ = rings.service_slot(&mut slot);
        }
        drop(slot);
        if transport != Transport::Doorbell {
            // The I/O thread services the ring once and starts polling it if asked.
            self.io.wake();
        }
        Ok(0)
    }

    fn attach_eventfd(&self, id: RingId, port: u16) -> Result<EventFd, Status> {
        let reg = self.ioevents.as_ref().ok_or(Status::EOPNOTSUPP)?;
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|_| Status::EAGAIN)?;
        reg.register(&fd, port).map_err(|_| Status::EIO)?;
        if self.io.watch(fd.as_raw_fd(), id).is_err() {
            let _ = reg.unregister(&fd, port);
            return Err(Status::EIO);
        }
        Ok(fd)
    }

    /// Unregisters ring `id`'s ioeventfd; doorbells it absorbed that the I/O thread has not
    /// read yet are still counted.
    fn detach_eventfd(&self, fd: &EventFd, id: RingId) {
        self.io.unwatch(fd.as_raw_fd());
        if let Some(reg) = &self.ioevents {
            let _ = reg.unregister(fd, doorbell(id));
        }
        let _ = self.rings.count_notifications(id, fd);
    }

    fn ring_id(ring: u64) -> Result<RingId, Status> {
        u32::try_from(ring)
            .ok()
            .and_then(|r| RingId::try_from(r).ok())
            .ok_or(Status::EINVAL)
    }
}

impl PvDevices for PvBackend {
    fn features(&self) -> Features {
        offered_features(
            self.rings.block.is_some(),
            self.ioevents.is_some(),
            self.clock.is_some(),
            self.kvmclock,
        )
    }

    fn register_region(
        &mut self,
        mem: &GuestRam,
        kind: u64,
        addr: u64,
        len: u64,
        flags: u64,
    ) -> CallReturn {
        let r = match RegionKind::try_from(kind) {
            Err(_) => Err(Status::EINVAL),
            Ok(k) => match k.ring() {
                Some(id) => self.register_ring(mem, id, addr, len, flags),
                None => self.register_clock(mem, addr, len),
            },
        };
        call_return(r)
    }

    fn block_capacity(&mut self) -> CallReturn {
        match &self.rings.block {
            Some(dev) => CallReturn::ok(self.rings.vcpu_lock(dev).capacity_sectors()),
            None => CallReturn::err(Status::EOPNOTSUPP),
        }
    }

    fn block_io(&mut self, mem: &GuestRam, addr: u64) -> CallReturn {
        let Some(dev) = &self.rings.block else {
            return CallReturn::err(Status::EOPNOTSUPP);
        };
        // A ring service on the I/O thread may hold the device: one budget at most.
        let (status, bytes) = self.rings.vcpu_lock(dev).handle_gpa(mem, addr);
        CallReturn {
            status,
            value: if status == Status::Ok { bytes } else { 0 },
        }
    }

    fn ring_kick(&mut self, _mem: &GuestRam, ring: u64) -> CallReturn {
        let r = Self::ring_id(ring).and_then(|id| {
            if id == RingId::Block && self.rings.block.is_none() {
                return Err(Status::EOPNOTSUPP);
            }
            self.rings
                .service(id)
                .map(|b| b.requests)
                .map_err(|e| e.status())
        });
        call_return(r)
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let r = self.io.stop();
        for id in [RingId::Console, RingId::Block] {
            let fd = lock(self.rings.slot(id)).eventfd.take();
            if let Some(fd) = fd {
                self.detach_eventfd(&fd, id);
            }
        }
        r
    }
}

impl Drop for PvBackend {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests;
