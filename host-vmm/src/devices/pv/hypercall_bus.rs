//! The hypercall bus: maps hypercall numbers, pages and queues to the [`PvDevice`]s
//! that registered them, as the port bus maps ports to port devices, and derives the
//! feature bits the guest sees from what is registered ([`HypercallBus::features`], the
//! one place they are computed).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
#[cfg(doc)]
use pvkit_abi::ring::Transport;
use pvkit_abi::ring::{
    QueueId, RegionId, REGION_FLAGS_KNOWN, REGION_PER_VCPU, REGION_TRANSPORT_MASK,
};
use pvkit_abi::Status;

use super::doorbell::{DoorbellPort, IoEventRegistrar};
use super::ring_irq::RingIrqs;
use super::rings::Rings;
use super::{CallCtx, PvDevice, QueueSpec, RegionOwner};
use crate::exit::ledger::ExitLedger;
use crate::hypercall::call_return;
use crate::iothread::IoStopper;
use crate::vstate::memory::GuestRam;

/// A device could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices answer the same hypercall number.
    #[error("hypercall {call} is answered by both {first} and {second}")]
    CallTaken {
        /// The call.
        call: &'static str,
        /// The device registered first.
        first: &'static str,
        /// The device refused.
        second: &'static str,
    },
    /// Two devices accept the same page or queue.
    #[error("region {region:?} is accepted by both {first} and {second}")]
    RegionTaken {
        /// The page or queue.
        region: RegionId,
        /// The device registered first.
        first: &'static str,
        /// The device refused.
        second: &'static str,
    },
    /// A device was added after the rings were set up (its rings would have no slot).
    #[error("device {0} added after the rings were set up")]
    Late(&'static str),
    /// The rings (their I/O thread's epoll set) could not be created.
    #[error("cannot set up the rings: {0}")]
    Rings(#[source] io::Error),
}

/// How the VM's rings are served (see [`HypercallBus::with_rings`]).
pub struct RingsConfig {
    /// Where doorbell ioeventfds are registered; `None`: no [`Transport::DoorbellEventfd`].
    pub ioevents: Option<Arc<dyn IoEventRegistrar>>,
    /// Called (from the I/O thread) if the I/O thread fails or panics; the VM must stop.
    pub on_fatal: Arc<dyn Fn(String) + Send + Sync>,
}

/// The PV devices of one VM and the routes to them.
#[derive(Default)]
pub struct HypercallBus {
    devices: Vec<Arc<dyn PvDevice>>,
    calls: BTreeMap<u32, usize>,
    pages: Vec<(pvkit_abi::ring::PageId, usize)>,
    queues: Vec<(QueueSpec, usize)>,
    /// The devices that asked for [`PvDevice::before_run`].
    entry_hooks: Vec<usize>,
    rings: Option<Rings>,
}

impl std::fmt::Debug for HypercallBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.devices.iter().map(|d| d.name()).collect();
        f.debug_struct("HypercallBus")
            .field("devices", &names)
            .field("rings", &self.rings)
            .finish_non_exhaustive()
    }
}

impl HypercallBus {
    /// A bus with no devices and no rings: every device call is `EOPNOTSUPP`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device`: its hypercall numbers, pages and queues. Refused if another
    /// device already answers one of them, or once the rings are set up.
    pub fn insert(&mut self, device: Arc<dyn PvDevice>) -> Result<(), BusError> {
        if self.rings.is_some() {
            return Err(BusError::Late(device.name()));
        }
        let idx = self.devices.len();
        let name_of = |i: usize| self.devices.get(i).map_or("?", |d| d.name());
        for &h in device.hypercalls() {
            if let Some(&other) = self.calls.get(&(h as u32)) {
                return Err(BusError::CallTaken {
                    call: h.name(),
                    first: name_of(other),
                    second: device.name(),
                });
            }
        }
        let regions = device
            .pages()
            .iter()
            .map(|&p| RegionId::Page(p))
            .chain(device.queues().iter().map(|q| RegionId::Queue(q.queue)));
        for region in regions {
            let taken = match region {
                RegionId::Page(p) => self.pages.iter().find(|(k, _)| *k == p).map(|r| r.1),
                RegionId::Queue(q) => self.queue_route(q).map(|r| r.1),
            };
            if let Some(other) = taken {
                return Err(BusError::RegionTaken {
                    region,
                    first: name_of(other),
                    second: device.name(),
                });
            }
        }
        for &h in device.hypercalls() {
            self.calls.insert(h as u32, idx);
        }
        self.pages.extend(device.pages().iter().map(|&p| (p, idx)));
        self.queues
            .extend(device.queues().iter().map(|&q| (q, idx)));
        if device.hooks_entry() {
            self.entry_hooks.push(idx);
        }
        self.devices.push(device);
        Ok(())
    }

    /// Sets up the rings of every registered device (one slot each, their notification
    /// counters in `ledger`): from now on they can be registered and kicked.
    pub fn with_rings(
        &mut self,
        mem: GuestRam,
        config: RingsConfig,
        ledger: &mut ExitLedger,
    ) -> Result<(), BusError> {
        let specs = self.queues.iter().map(|(q, _)| *q).collect();
        let rings = Rings::new(mem, specs, config.ioevents, config.on_fatal, ledger)
            .map_err(BusError::Rings)?;
        self.rings = Some(rings);
        Ok(())
    }

    /// The feature bits the guest is told about (CPUID, boot info, `Features`): the bits
    /// of every registered device; with rings, the bit of every ring and the transports'
    /// ([`Features::RING_POLL`], and [`Features::RING_EVENTFD`] with ioeventfds).
    pub fn features(&self) -> Features {
        let mut f = self
            .devices
            .iter()
            .fold(Features::empty(), |f, d| f | d.features());
        if let Some(rings) = &self.rings {
            f |= Features::RING_POLL;
            if rings.has_ioevents() {
                f |= Features::RING_EVENTFD;
            }
            if rings.irqs().is_some() {
                f |= Features::RING_IRQ;
            }
            for (q, _) in &self.queues {
                f |= q.feature;
            }
        }
        f
    }

    /// The rings, if set up.
    pub fn rings(&self) -> Option<&Rings> {
        self.rings.as_ref()
    }

    /// The doorbell port device to put on the port bus at
    /// [`super::doorbell::DOORBELL_PORTS`] (`None` without rings).
    pub fn doorbell_ports(&self) -> Option<DoorbellPort> {
        self.rings.as_ref().map(|r| DoorbellPort {
            rings: Arc::clone(r.set()),
        })
    }

    /// A handle that stops the I/O thread, if there are rings.
    pub fn stopper(&self) -> Option<IoStopper> {
        self.rings.as_ref().map(Rings::stopper)
    }

    /// Handles device call `call` (any but the core calls) from vCPU `vcpu`.
    pub fn dispatch(
        &self,
        mem: &GuestRam,
        ledger: &ExitLedger,
        vcpu: u32,
        call: Hypercall,
        args: [u64; 4],
    ) -> CallReturn {
        let ctx = CallCtx {
            mem,
            ledger,
            vcpu,
            waiters: self.rings.as_ref().map(|r| r.set().waiters()),
        };
        match call {
            Hypercall::RegisterRegion => call_return(self.register_region(&ctx, args)),
            Hypercall::RingKick => call_return(self.ring_kick(args)),
            Hypercall::QueueInterrupt => call_return(self.queue_interrupt(args)),
            _ => match self
                .calls
                .get(&(call as u32))
                .and_then(|&i| self.devices.get(i))
            {
                Some(dev) => dev.call(&ctx, call, args),
                None => CallReturn::err(Status::EOPNOTSUPP),
            },
        }
    }

    fn queue_route(&self, queue: QueueId) -> Option<&(QueueSpec, usize)> {
        self.queues.iter().find(|(q, _)| q.queue == queue)
    }

    /// `RegisterRegion`: the device that accepts the page or queue opens it; a page is kept
    /// for its owner (the VM, or the calling vCPU with `REGION_PER_VCPU`); a queue is
    /// attached to its transport. An unknown device class or flag is `EINVAL`; a region no
    /// registered device accepts is `EOPNOTSUPP`.
    fn register_region(&self, ctx: &CallCtx<'_>, args: [u64; 4]) -> Result<u64, Status> {
        let [region, addr, len, flags] = args;
        if self.rings.is_none() && self.pages.is_empty() {
            return Err(Status::EOPNOTSUPP);
        }
        let region = RegionId::from_u64(region).map_err(|_| Status::EINVAL)?;
        if flags & !REGION_FLAGS_KNOWN != 0 {
            return Err(Status::EINVAL);
        }
        match region {
            RegionId::Page(page) => {
                if flags & REGION_TRANSPORT_MASK != 0 {
                    return Err(Status::EINVAL);
                }
                let owner = if flags & REGION_PER_VCPU != 0 {
                    RegionOwner::Vcpu(ctx.vcpu)
                } else {
                    RegionOwner::Vm
                };
                let &(_, i) = self
                    .pages
                    .iter()
                    .find(|(p, _)| *p == page)
                    .ok_or(Status::EOPNOTSUPP)?;
                let dev = self.devices.get(i).ok_or(Status::EOPNOTSUPP)?;
                dev.register_page(ctx, page, owner, addr, len)
            }
            RegionId::Queue(queue) => {
                // Queues are the VM's in this version.
                if flags & REGION_PER_VCPU != 0 {
                    return Err(Status::EINVAL);
                }
                let &(spec, i) = self.queue_route(queue).ok_or(Status::EOPNOTSUPP)?;
                let rings = self.rings.as_ref().ok_or(Status::EOPNOTSUPP)?;
                let dev = self.devices.get(i).ok_or(Status::EOPNOTSUPP)?;
                let transport = rings.transport(flags & REGION_TRANSPORT_MASK)?;
                let consumer = dev.open_queue(ctx.mem, spec.queue, addr, len)?;
                rings.register(spec.queue, consumer, transport)
            }
        }
    }

    /// Re-registers a ring saved by a snapshot ([`Rings::frozen`]) over the restored RAM
    /// `mem`: its device opens it at the saved address, the consumer continues from the
    /// saved state, and it is registered with the saved transport.
    pub fn restore_ring(
        &self,
        mem: &GuestRam,
        saved: &super::rings::SavedRing,
    ) -> Result<(), String> {
        let queue = QueueId::from_u32(saved.queue).map_err(|q| format!("bad queue id {q}"))?;
        let &(spec, i) = self
            .queue_route(queue)
            .ok_or_else(|| format!("no device serves ring {queue:?}"))?;
        let rings = self.rings.as_ref().ok_or("this VM has no rings")?;
        let dev = self.devices.get(i).ok_or("no device")?;
        let consumer = dev
            .open_queue(mem, spec.queue, saved.ring.gpa, saved.len)
            .map_err(|s| format!("reopening ring {queue:?}: {s:?}"))?;
        rings.restore(consumer, saved)
    }

    /// `RingKick`: services a registered queue now.
    fn ring_kick(&self, args: [u64; 4]) -> Result<u64, Status> {
        let [queue, ..] = args;
        let rings = self.rings.as_ref().ok_or(Status::EOPNOTSUPP)?;
        let queue = u32::try_from(queue)
            .ok()
            .and_then(|q| QueueId::from_u32(q).ok())
            .ok_or(Status::EINVAL)?;
        rings.kick(queue)
    }

    /// `QueueInterrupt`: binds a queue's completions to a GSI (0: back to polling).
    fn queue_interrupt(&self, args: [u64; 4]) -> Result<u64, Status> {
        let [queue, gsi, flags, _] = args;
        let rings = self
            .rings
            .as_ref()
            .filter(|r| r.irqs().is_some())
            .ok_or(Status::EOPNOTSUPP)?;
        let queue = u32::try_from(queue)
            .ok()
            .and_then(|q| QueueId::from_u32(q).ok())
            .ok_or(Status::EINVAL)?;
        if flags != 0 {
            return Err(Status::EINVAL);
        }
        rings.bind_interrupt(queue, gsi)
    }

    /// Offers completion interrupts on `irqs` (`Features::RING_IRQ`); after
    /// [`HypercallBus::with_rings`], nothing without rings.
    pub fn set_ring_irqs(&mut self, irqs: Arc<RingIrqs>) {
        if let Some(r) = self.rings.as_mut() {
            r.set_irqs(irqs);
        }
    }

    /// Runs the entry hooks of the devices that asked for one, on vCPU `vcpu`'s thread
    /// before it enters the guest.
    pub fn before_run(&self, mem: &GuestRam, vcpu: u32) {
        for d in self.entry_hooks.iter().filter_map(|&i| self.devices.get(i)) {
            d.before_run(mem, vcpu);
        }
    }

    /// Tells every device that vCPU `vcpu`'s thread started (before its seccomp filter).
    pub fn vcpu_thread_started(&self, vcpu: u32) {
        for d in &self.devices {
            d.vcpu_thread_started(vcpu);
        }
    }

    /// Stops the devices' threads when the VM stops (after the vCPU threads ended).
    /// Returns why a device thread failed during the run, if one did: the run is then
    /// reported as a host failure.
    pub fn shutdown(&self) -> Result<(), String> {
        match &self.rings {
            Some(r) => r.shutdown(),
            None => Ok(()),
        }
    }
}
