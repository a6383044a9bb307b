//! The VM's host I/O thread: serves the rings whose doorbells are ioeventfds
//! ([`Transport::DoorbellEventfd`]) and polls the rings registered with
//! [`Transport::HostPoll`].
//!
//! One thread per VM, started on the first registration that needs it, stopped and joined
//! when the VM stops. It waits in `epoll_wait` on the rings' eventfds and a wake eventfd;
//! while a ring is polled it spins instead (`std::hint::spin_loop`), peeking at `req_prod`
//! (one load), looking at the eventfds and yielding the core (`sched_yield`, free when
//! nothing else waits for it) every [`EPOLL_EVERY`] spins. For each eventfd
//! signal it reads the counter (the number of guest doorbell writes KVM absorbed since the
//! last read), adds it to the ring's in-kernel notification counter in the ledger, then
//! services the ring; the ring consumer re-arms `req_event` and re-checks `req_prod`.
//!
//! Each service is bounded by the ring's budget (`crate::devices::pv::rings::SERVICE_REQUESTS`,
//! `SERVICE_BYTES`). An eventfd ring left with work at its budget is remembered and
//! continued on the next turn of the loop; a polled one by the next poll step. The stop flag
//! is checked before every service, so [`IoThread::stop`] joins the thread after one budget
//! at most.
//!
//! A failure (an epoll or eventfd error) or a panic ends the thread, is recorded, and is
//! reported through the `on_fatal` callback so the VM stops with the message; it never
//! leaves a vCPU spinning on a ring nobody serves.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[cfg(doc)]
use pvkit_abi::ring::Transport;

use crate::devices::pv::rings::{QueueIndex, RingSet};
use crate::seccomp::Confinement;

/// While polling, the eventfds are checked (one non-blocking `epoll_wait`) every this many
/// spins.
pub const EPOLL_EVERY: u32 = 64;

/// The epoll token of the wake eventfd; ring eventfds use their slot index.
const WAKE_TOKEN: u64 = u64::MAX;

/// The part of the I/O thread shared with it: the stop flag, the wake eventfd, the epoll
/// set and the first failure.
#[derive(Debug)]
struct IoControl {
    stop: AtomicBool,
    wake: EventFd,
    epoll: Epoll,
    failure: Mutex<Option<String>>,
}

/// Stops the I/O thread (sets the stop flag and wakes it). Cloneable and `Send`, for the
/// watchdog when a vCPU thread cannot be joined.
#[derive(Clone, Debug)]
pub struct IoStopper(Arc<IoControl>);

impl IoStopper {
    /// Asks the I/O thread to stop; it does within one poll step or one wakeup.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
        let _ = self.0.wake.write(1);
    }
}

/// The I/O thread of one VM (possibly not started yet).
pub struct IoThread {
    ctl: Arc<IoControl>,
    rings: Arc<RingSet>,
    on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread")
            .field("started", &self.handle.is_some())
            .finish_non_exhaustive()
    }
}

impl IoThread {
    /// Creates the epoll set and the wake eventfd; starts no thread.
    pub(crate) fn new(
        rings: Arc<RingSet>,
        on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE_TOKEN),
        )?;
        Ok(Self {
            ctl: Arc::new(IoControl {
                stop: AtomicBool::new(false),
                wake,
                epoll,
                failure: Mutex::new(None),
            }),
            rings,
            on_fatal,
            handle: None,
        })
    }

    /// Whether the thread was started.
    pub fn is_started(&self) -> bool {
        self.handle.is_some()
    }

    /// Starts the thread unless it runs already (or was stopped: then an error).
    pub(crate) fn ensure_started(&mut self) -> io::Result<()> {
        if self.handle.is_some() {
            return Ok(());
        }
        if self.ctl.stop.load(Ordering::Acquire) {
            return Err(io::Error::other("the I/O thread was stopped"));
        }
        let ctl = Arc::clone(&self.ctl);
        let rings = Arc::clone(&self.rings);
        let on_fatal = Arc::clone(&self.on_fatal);
        // Started by a confined vCPU thread, the new thread inherits its seccomp filter and
        // narrows it to the I/O thread's own (src/seccomp.rs).
        let confine = Confinement::for_new_io_thread().map_err(io::Error::other)?;
        let handle = std::thread::Builder::new()
            .name("pvkit-io".into())
            .spawn(move || thread_main(&ctl, &rings, on_fatal.as_ref(), confine))?;
        self.handle = Some(handle);
        Ok(())
    }

    /// Watches `fd`, the eventfd of ring slot `id`.
    pub(crate) fn watch(&self, fd: RawFd, id: QueueIndex) -> io::Result<()> {
        self.ctl.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, u64::from(id)),
        )
    }

    /// Stops watching `fd` (before it is closed).
    pub(crate) fn unwatch(&self, fd: RawFd) {
        let _ = self
            .ctl
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Wakes the thread: it services its rings once and re-reads which rings to poll.
    pub(crate) fn wake(&self) {
        let _ = self.ctl.wake.write(1);
    }

    /// A stop handle.
    pub fn stopper(&self) -> IoStopper {
        IoStopper(Arc::clone(&self.ctl))
    }

    /// Stops and joins the thread. Returns the failure that ended it early, if any.
    pub fn stop(&mut self) -> Result<(), String> {
        self.stopper().stop();
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                // Unreachable in practice: the body catches panics.
                record(&self.ctl, "the I/O thread panicked".into());
            }
        }
        match self
            .ctl
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn record(ctl: &IoControl, msg: String) {
    ctl.failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert(msg);
}

fn thread_main(
    ctl: &IoControl,
    rings: &RingSet,
    on_fatal: &(dyn Fn(String) + Send + Sync),
    confine: Option<Confinement>,
) {
    let body = move || {
        if let Some(c) = confine {
            c.apply().map_err(io::Error::other)?;
        }
        io_loop(ctl, rings)
    };
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("the host I/O thread failed: {e}"),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown payload".into());
            format!("the host I/O thread panicked: {what}")
        }
    };
    record(ctl, failure.clone());
    on_fatal(failure);
}

fn ring_ids(mask: u32) -> impl Iterator<Item = QueueIndex> {
    (0..u32::BITS).filter(move |id| mask & (1 << id) != 0)
}

fn bit(id: QueueIndex) -> u32 {
    1u32.checked_shl(id).unwrap_or(0)
}

fn io_loop(ctl: &IoControl, rings: &RingSet) -> io::Result<()> {
    let stopping = || ctl.stop.load(Ordering::Acquire);
    let mut events = [EpollEvent::default(); 4];
    let mut spins: u32 = 0;
    // Eventfd rings whose last service stopped at its budget with work left: they are
    // continued below, after the stop flag was looked at, without waiting for a doorbell
    // the guest has no reason to ring (its `req_event` was not re-armed).
    let mut pending: u32 = 0;
    loop {
        if stopping() {
            return Ok(());
        }
        let polled = rings.polled();
        let busy = polled != 0 || pending != 0;
        let n = if !busy || pending != 0 || spins.is_multiple_of(EPOLL_EVERY) {
            let timeout = if busy { 0 } else { -1 };
            match ctl.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        for ev in events.iter().take(n) {
            if ev.data() == WAKE_TOKEN {
                match ctl.wake.read() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // New registrations: serve what was published before them.
                for id in 0..rings.len() {
                    if stopping() {
                        return Ok(());
                    }
                    if rings.service_io_ring(id) {
                        pending |= bit(id);
                    }
                }
                continue;
            }
            let id = u32::try_from(ev.data()).ok().filter(|v| *v < rings.len());
            if let Some(id) = id {
                if stopping() {
                    return Ok(());
                }
                if rings.eventfd_fired(id)? {
                    pending |= bit(id);
                }
            }
        }
        if pending != 0 {
            // Give the core to a vCPU that waits for one of the locks before taking them
            // again (the waiter count makes the services below step aside meanwhile).
            std::thread::yield_now();
            for id in ring_ids(std::mem::take(&mut pending)) {
                if stopping() {
                    return Ok(());
                }
                if rings.service_pending(id) {
                    pending |= bit(id);
                }
            }
        }
        if polled != 0 {
            for id in ring_ids(polled) {
                if stopping() {
                    return Ok(());
                }
                rings.poll_step(id);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(EPOLL_EVERY) {
                // If the vCPU thread waits for this core (a loaded host), let it run: a
                // spinning poller must not starve the guest it serves.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}
