//! The PV rings on the host I/O event loop ([`crate::io::event_loop`]): a [`Subscriber`]
//! that serves the rings whose doorbells are ioeventfds ([`Transport::DoorbellEventfd`])
//! and polls the rings registered with [`Transport::HostPoll`], and the [`IoThread`] handle
//! the PV devices use to (un)register them.
//!
//! For each eventfd signal the subscriber reads the counter (the number of guest doorbell
//! writes KVM absorbed since the last read), adds it to the ring's in-kernel notification
//! counter in the ledger, then services the ring; the ring consumer re-arms `req_event`
//! and re-checks `req_prod`. While a ring is polled the loop spins, peeking at `req_prod`
//! (one load) each step, and once no step found work for a while it sleeps between steps
//! (`crate::io::poll_pacer`): a poller that never blocks would take the core from the vCPU
//! it serves on a loaded host.
//!
//! Each service is bounded by the ring's budget (`crate::devices::pv::rings::SERVICE_REQUESTS`,
//! `SERVICE_BYTES`). An eventfd ring left with work at its budget is remembered
//! ([`Busy::pending`]) and continued on the next turn of the loop; a polled one by the next
//! poll step. The stop flag is checked before every service, so [`IoThread::stop`] joins
//! the thread after one budget at most.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::Arc;

#[cfg(doc)]
use pvkit_abi::ring::Transport;

use crate::devices::pv::rings::{QueueIndex, RingSet};
use crate::io::event_loop::{Busy, EventLoop, LoopControl, Subscriber, SubscriberId};

pub use crate::io::event_loop::{Stopper as IoStopper, EPOLL_EVERY};

/// The rings served by the I/O thread, as one event-loop subscriber.
struct RingSubscriber {
    rings: Arc<RingSet>,
    /// Eventfd rings whose last service stopped at its budget with work left: continued on
    /// the next turn, after the stop flag was looked at, without waiting for a doorbell the
    /// guest has no reason to ring (its `req_event` was not re-armed).
    pending: u32,
    /// The polled rings of this turn.
    polled: u32,
}

fn ring_ids(mask: u32) -> impl Iterator<Item = QueueIndex> {
    (0..u32::BITS).filter(move |id| mask & (1 << id) != 0)
}

fn bit(id: QueueIndex) -> u32 {
    1u32.checked_shl(id).unwrap_or(0)
}

impl Subscriber for RingSubscriber {
    fn ready(&mut self, token: u32, ctl: &LoopControl) -> io::Result<()> {
        if token < self.rings.len() && !ctl.stopping() && self.rings.eventfd_fired(token)? {
            self.pending |= bit(token);
        }
        Ok(())
    }

    fn woken(&mut self, ctl: &LoopControl) -> io::Result<()> {
        // New registrations: serve what was published before them.
        for id in 0..self.rings.len() {
            if ctl.stopping() {
                return Ok(());
            }
            if self.rings.service_io_ring(id) {
                self.pending |= bit(id);
            }
        }
        Ok(())
    }

    fn busy(&mut self) -> Busy {
        self.polled = self.rings.polled();
        Busy {
            pending: self.pending != 0,
            polling: self.polled != 0,
        }
    }

    fn resume(&mut self, ctl: &LoopControl) -> io::Result<()> {
        for id in ring_ids(std::mem::take(&mut self.pending)) {
            if ctl.stopping() {
                return Ok(());
            }
            if self.rings.service_pending(id) {
                self.pending |= bit(id);
            }
        }
        Ok(())
    }

    fn poll(&mut self, ctl: &LoopControl) -> bool {
        let mut worked = false;
        for id in ring_ids(self.polled) {
            if ctl.stopping() {
                return worked;
            }
            worked |= self.rings.poll_step(id);
        }
        worked
    }
}

/// The VM's I/O thread as the PV devices see it: the event loop with the ring subscriber.
pub struct IoThread {
    events: EventLoop,
    rings: SubscriberId,
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread")
            .field("started", &self.events.is_started())
            .finish_non_exhaustive()
    }
}

impl IoThread {
    /// Creates the event loop with the ring subscriber; starts no thread.
    pub(crate) fn new(
        rings: Arc<RingSet>,
        on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    ) -> io::Result<Self> {
        let mut events = EventLoop::new("pvkit-io", on_fatal)?;
        let rings = events.subscribe(Box::new(RingSubscriber {
            rings,
            pending: 0,
            polled: 0,
        }))?;
        Ok(Self { events, rings })
    }

    /// Whether the thread was started.
    pub fn is_started(&self) -> bool {
        self.events.is_started()
    }

    /// Starts the thread unless it runs already (or was stopped: then an error).
    pub(crate) fn ensure_started(&mut self) -> io::Result<()> {
        self.events.ensure_started()
    }

    /// Watches `fd`, the eventfd of ring `id`.
    pub(crate) fn watch(&self, fd: RawFd, id: QueueIndex) -> io::Result<()> {
        self.events.watch(fd, self.rings, id)
    }

    /// Stops watching `fd` (before it is closed).
    pub(crate) fn unwatch(&self, fd: RawFd) {
        self.events.unwatch(fd);
    }

    /// Wakes the thread: it services its rings once and re-reads which rings to poll.
    pub(crate) fn wake(&self) {
        self.events.wake();
    }

    /// A stop handle.
    pub fn stopper(&self) -> IoStopper {
        self.events.stopper()
    }

    /// Stops and joins the thread. Returns the failure that ended it early, if any.
    pub fn stop(&mut self) -> Result<(), String> {
        self.events.stop()
    }
}
