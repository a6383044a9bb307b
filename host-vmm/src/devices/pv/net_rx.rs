//! The PV NIC of a running VM: the device and, for a backend with a file descriptor (TAP),
//! the event loop (`pvkit-pvnet` thread) that moves received frames into the guest's
//! posted receive buffers without the guest asking ([`PvNet::poll_backend`]).
//!
//! The fd is level-triggered: one readable event pulls at most
//! `pvkit_pv::net::SERVICE_FRAMES` frames, and frames left in the TAP device make the next
//! turn (after the stop flag) take them. A guest that never drains its receive ring makes
//! frames wait in the device's fixed queue, then be dropped and counted
//! (`NetStats::rx_dropped_no_buffer`): the thread never blocks, nothing grows.

use std::io;
use std::sync::Arc;

use pvkit_net::NetCounters;
use pvkit_pv::NetStats;

use super::net::PvNet;
use crate::io::event_loop::{EventLoop, LoopControl, Subscriber};
use crate::runtime::seccomp::{Confinement, ThreadKind};
use crate::vstate::memory::GuestRam;

/// What the PV NIC counted in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvNetStats {
    /// The device's counters (frames through rings and `NetSend`, drops).
    pub device: NetStats,
    /// The backend's counters.
    pub backend: NetCounters,
    /// Completion interrupts raised (irqfd writes) by the TX and RX rings.
    pub irqs_raised: u64,
    /// Readable events of the backend's fd served by the event loop.
    pub backend_events: u64,
}

/// Serves the backend's fd on the event loop.
struct BackendSubscriber {
    net: Arc<PvNet>,
    mem: GuestRam,
}

impl Subscriber for BackendSubscriber {
    fn ready(&mut self, _token: u32, ctl: &LoopControl) -> io::Result<()> {
        if ctl.stopping() {
            return Ok(());
        }
        self.net.poll_backend(&self.mem);
        Ok(())
    }
}

/// The PV NIC of a running VM and the event loop serving its backend (if it has an fd).
pub struct PvNetRunning {
    net: Arc<PvNet>,
    event_loop: Option<EventLoop>,
}

impl std::fmt::Debug for PvNetRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvNetRunning")
            .field("event_loop", &self.event_loop)
            .finish_non_exhaustive()
    }
}

impl PvNetRunning {
    /// Starts serving `net`'s backend fd (if any) on a `pvkit-pvnet` event loop, confined
    /// with the network thread's filter ([`ThreadKind::Net`]) when `seccomp` is set;
    /// `on_fatal` hears about the thread's failure.
    pub fn start(
        net: Arc<PvNet>,
        mem: GuestRam,
        on_fatal: Arc<dyn Fn(String) + Send + Sync>,
        seccomp: bool,
    ) -> io::Result<Self> {
        let event_loop = match net.raw_fd() {
            Some(fd) => {
                let mut l = EventLoop::new("pvkit-pvnet", on_fatal)?;
                l.confine_with(
                    Confinement::when(seccomp, ThreadKind::Net).map_err(io::Error::other)?,
                );
                let id = l.subscribe(Box::new(BackendSubscriber {
                    net: Arc::clone(&net),
                    mem,
                }))?;
                l.watch(fd, id, 0)?;
                l.ensure_started()?;
                Some(l)
            }
            None => None,
        };
        Ok(Self { net, event_loop })
    }

    /// The device.
    pub fn device(&self) -> &Arc<PvNet> {
        &self.net
    }

    /// What the NIC counted so far.
    pub fn stats(&self) -> PvNetStats {
        self.net.run_stats()
    }

    /// Stops and joins the event loop (if any). Returns its failure, if it had one.
    pub fn stop(&mut self) -> Result<(), String> {
        match self.event_loop.as_mut() {
            Some(l) => l.stop(),
            None => Ok(()),
        }
    }
}
