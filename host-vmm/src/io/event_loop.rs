//! The VM's host I/O event loop: one thread per VM waiting in `epoll_wait` on the fds its
//! subscribers registered (ring doorbell eventfds today; TAP fds and timerfds next), with a
//! stop request honoured between events.
//!
//! A [`Subscriber`] is a callback object: the loop calls [`Subscriber::ready`] with the
//! token of each fd that became readable, [`Subscriber::woken`] when someone called
//! [`EventLoop::wake`] (a registration changed), and, while the subscriber reports itself
//! [`Busy`], [`Subscriber::resume`] (work left at a budget, continued every turn) or
//! [`Subscriber::poll`] (a polled source: the loop polls instead of waiting in `epoll_wait`,
//! looks at the fds — one non-blocking `epoll_wait` — every [`EPOLL_EVERY`] spins and after
//! each sleep, and yields the core every [`EPOLL_EVERY`] spins; a poll step that found no
//! work is followed by a short sleep, see [`super::poll_pacer`]).
//! Subscribers check [`LoopControl::stopping`] between units of work, so [`EventLoop::stop`]
//! joins the thread after one unit at most.
//!
//! Subscribers are added before the thread starts ([`EventLoop::subscribe`]); fds may be
//! watched and unwatched at any time from any thread ([`EventLoop::watch`]). The thread
//! starts on demand ([`EventLoop::ensure_started`]) and applies its seccomp filter before
//! its first event: the one given with [`EventLoop::confine_with`] (a loop started by the
//! unconfined main thread, e.g. a network backend's), else, started by a confined thread,
//! the I/O thread's on top of the filter it inherits ([`Confinement::for_new_io_thread`]).
//!
//! A failure (an epoll error, or an error a subscriber returns) or a panic ends the thread,
//! is recorded, and is reported through the `on_fatal` callback so the VM stops with the
//! message; it never leaves a vCPU waiting on a device nobody serves.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::poll_pacer::{Pace, PollPacer};
use crate::runtime::seccomp::Confinement;
use crate::runtime::sync::lock;

/// While a subscriber polls, the fds are checked (one non-blocking `epoll_wait`) every this
/// many spins.
pub const EPOLL_EVERY: u32 = 64;

/// The epoll token of the wake eventfd; subscriber fds use (subscriber, token) pairs.
const WAKE_TOKEN: u64 = u64::MAX;

/// A subscriber's handle in its loop (the order of [`EventLoop::subscribe`] calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberId(u32);

fn epoll_token(id: SubscriberId, token: u32) -> u64 {
    (u64::from(id.0) << 32) | u64::from(token)
}

/// What a subscriber needs from the loop besides fd events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Busy {
    /// Work is left (e.g. at a service budget): call [`Subscriber::resume`] next turn,
    /// without waiting for an event.
    pub pending: bool,
    /// A polled source: call [`Subscriber::poll`] every turn instead of waiting for events
    /// (again at once after a step that found work, after a short sleep otherwise).
    pub polling: bool,
}

/// What the loop tells a subscriber while it works.
#[derive(Debug)]
pub struct LoopControl {
    stop: AtomicBool,
    wake: EventFd,
    epoll: Epoll,
    failure: Mutex<Option<String>>,
}

impl LoopControl {
    /// Whether the loop was asked to stop: a subscriber returns before its next unit of
    /// work.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A source of host I/O events served on the loop's thread.
pub trait Subscriber: Send {
    /// The fd registered with `token` ([`EventLoop::watch`]) is readable.
    fn ready(&mut self, token: u32, ctl: &LoopControl) -> io::Result<()>;
    /// [`EventLoop::wake`] was called (a registration changed).
    fn woken(&mut self, _ctl: &LoopControl) -> io::Result<()> {
        Ok(())
    }
    /// What the subscriber needs on this turn of the loop (asked once per turn).
    fn busy(&mut self) -> Busy {
        Busy::default()
    }
    /// Continues work left pending (when [`Busy::pending`]).
    fn resume(&mut self, _ctl: &LoopControl) -> io::Result<()> {
        Ok(())
    }
    /// One poll step (when [`Busy::polling`]). Returns whether it found work: the loop
    /// spins while work comes, and sleeps between steps once it stopped coming
    /// ([`PollPacer`]).
    fn poll(&mut self, _ctl: &LoopControl) -> bool {
        false
    }
}

/// Stops the loop's thread (sets the stop flag and wakes it). Cloneable and `Send`, for the
/// watchdog when a vCPU thread cannot be joined.
#[derive(Clone, Debug)]
pub struct Stopper(Arc<LoopControl>);

impl Stopper {
    /// Asks the loop to stop; it does within one unit of work or one wakeup.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
        let _ = self.0.wake.write(1);
    }
}

/// The event loop of one VM and its thread (possibly not started yet).
pub struct EventLoop {
    ctl: Arc<LoopControl>,
    /// Taken by the thread when it starts.
    subscribers: Vec<Box<dyn Subscriber>>,
    count: u32,
    on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    name: String,
    handle: Option<JoinHandle<()>>,
    /// The filter the thread applies when it starts ([`EventLoop::confine_with`]).
    confinement: Option<Confinement>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("name", &self.name)
            .field("subscribers", &self.count)
            .field("started", &self.handle.is_some())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Creates the epoll set and the wake eventfd; starts no thread. The thread will be
    /// named `name`; `on_fatal` hears about its failure.
    pub fn new(name: &str, on_fatal: Arc<dyn Fn(String) + Send + Sync>) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE_TOKEN),
        )?;
        Ok(Self {
            ctl: Arc::new(LoopControl {
                stop: AtomicBool::new(false),
                wake,
                epoll,
                failure: Mutex::new(None),
            }),
            subscribers: Vec::new(),
            count: 0,
            on_fatal,
            name: name.to_owned(),
            handle: None,
            confinement: None,
        })
    }

    /// Adds a subscriber (before the thread starts).
    pub fn subscribe(&mut self, s: Box<dyn Subscriber>) -> io::Result<SubscriberId> {
        if self.handle.is_some() {
            return Err(io::Error::other(
                "subscribers join the event loop before it starts",
            ));
        }
        let id = SubscriberId(self.count);
        self.count = self
            .count
            .checked_add(1)
            .filter(|c| u64::from(*c) < WAKE_TOKEN >> 32)
            .ok_or_else(|| io::Error::other("too many subscribers"))?;
        self.subscribers.push(s);
        Ok(id)
    }

    /// The seccomp filter the thread applies first thing when it starts (`None`: as
    /// [`Confinement::for_new_io_thread`] decides when it starts).
    pub fn confine_with(&mut self, confinement: Option<Confinement>) {
        self.confinement = confinement;
    }

    /// Whether the thread was started.
    pub fn is_started(&self) -> bool {
        self.handle.is_some()
    }

    /// Starts the thread unless it runs already (or was stopped: then an error).
    pub fn ensure_started(&mut self) -> io::Result<()> {
        if self.handle.is_some() {
            return Ok(());
        }
        if self.ctl.stopping() {
            return Err(io::Error::other("the I/O thread was stopped"));
        }
        let ctl = Arc::clone(&self.ctl);
        let mut subs = std::mem::take(&mut self.subscribers);
        let on_fatal = Arc::clone(&self.on_fatal);
        // A filter given by the owner, else: started by a confined vCPU thread, the new
        // thread inherits its seccomp filter and narrows it to the I/O thread's own
        // (src/runtime/seccomp.rs).
        let confine = match self.confinement.take() {
            Some(c) => Some(c),
            None => Confinement::for_new_io_thread().map_err(io::Error::other)?,
        };
        let handle = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || thread_main(&ctl, &mut subs, on_fatal.as_ref(), confine))?;
        self.handle = Some(handle);
        Ok(())
    }

    /// Watches `fd` (readable) for subscriber `id`, which gets `token` with its events.
    pub fn watch(&self, fd: RawFd, id: SubscriberId, token: u32) -> io::Result<()> {
        self.ctl.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, epoll_token(id, token)),
        )
    }

    /// Stops watching `fd` (before it is closed).
    pub fn unwatch(&self, fd: RawFd) {
        let _ = self
            .ctl
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Wakes the thread: every subscriber's [`Subscriber::woken`] runs once.
    pub fn wake(&self) {
        let _ = self.ctl.wake.write(1);
    }

    /// A stop handle.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.ctl))
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
        match lock(&self.ctl.failure).clone() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn record(ctl: &LoopControl, msg: String) {
    lock(&ctl.failure).get_or_insert(msg);
}

fn thread_main(
    ctl: &LoopControl,
    subs: &mut [Box<dyn Subscriber>],
    on_fatal: &(dyn Fn(String) + Send + Sync),
    confine: Option<Confinement>,
) {
    let body = move || {
        if let Some(c) = confine {
            c.apply().map_err(io::Error::other)?;
        }
        run_loop(ctl, subs)
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

fn run_loop(ctl: &LoopControl, subs: &mut [Box<dyn Subscriber>]) -> io::Result<()> {
    let mut events = [EpollEvent::default(); 8];
    let mut spins: u32 = 0;
    let mut pacer = PollPacer::new();
    let mut slept = false;
    loop {
        if ctl.stopping() {
            return Ok(());
        }
        let busy: Vec<Busy> = subs.iter_mut().map(|s| s.busy()).collect();
        let pending = busy.iter().any(|b| b.pending);
        let polling = busy.iter().any(|b| b.polling);
        // Look at the fds every turn unless only polling, then every EPOLL_EVERY spins and
        // after each sleep.
        let n = if pending || !polling || slept || spins.is_multiple_of(EPOLL_EVERY) {
            let timeout = if pending || polling { 0 } else { -1 };
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
                for s in subs.iter_mut() {
                    if ctl.stopping() {
                        return Ok(());
                    }
                    s.woken(ctl)?;
                }
                continue;
            }
            let index = usize::try_from(ev.data() >> 32).unwrap_or(usize::MAX);
            if let Some(s) = subs.get_mut(index) {
                if ctl.stopping() {
                    return Ok(());
                }
                s.ready(ev.data() as u32, ctl)?;
            }
        }
        if subs.iter_mut().any(|s| s.busy().pending) {
            // Give the core to a vCPU that waits for one of the subscribers' locks before
            // taking them again.
            std::thread::yield_now();
            for s in subs.iter_mut() {
                if ctl.stopping() {
                    return Ok(());
                }
                if s.busy().pending {
                    s.resume(ctl)?;
                }
            }
        }
        if polling {
            let mut worked = false;
            for (s, b) in subs.iter_mut().zip(&busy) {
                if ctl.stopping() {
                    return Ok(());
                }
                if b.polling {
                    worked |= s.poll(ctl);
                }
            }
            spins = spins.wrapping_add(1);
            slept = false;
            match pacer.step(worked, Instant::now()) {
                // Idle past the spin window: leave the core (to the vCPU this loop serves,
                // on a loaded host) until the next step; see `poll_pacer`.
                Pace::Sleep(d) => {
                    std::thread::sleep(d);
                    slept = true;
                }
                Pace::Spin if spins.is_multiple_of(EPOLL_EVERY) => std::thread::yield_now(),
                Pace::Spin => std::hint::spin_loop(),
            }
        } else {
            pacer.reset();
            slept = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::poll_pacer::MAX_SLEEP;
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};
    use vmm_sys_util::timerfd::TimerFd;

    /// Counts timer expirations.
    struct Timer(TimerFd, Arc<AtomicU64>);
    impl Subscriber for Timer {
        fn ready(&mut self, token: u32, _ctl: &LoopControl) -> io::Result<()> {
            assert_eq!(token, 7);
            let n = self.0.wait()?;
            self.1.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Counts eventfd signals and wakeups; asks to stop the loop at signal `stop_at`.
    struct Bell {
        fd: EventFd,
        signals: Arc<AtomicU64>,
        woken: Arc<AtomicU64>,
    }
    impl Subscriber for Bell {
        fn ready(&mut self, _token: u32, _ctl: &LoopControl) -> io::Result<()> {
            let n = self.fd.read()?;
            self.signals.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }
        fn woken(&mut self, _ctl: &LoopControl) -> io::Result<()> {
            self.woken.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn no_fatal() -> Arc<dyn Fn(String) + Send + Sync> {
        Arc::new(|msg| panic!("unexpected failure: {msg}"))
    }

    #[test]
    fn timerfd_and_eventfd_subscribers_share_the_loop() {
        let mut el = EventLoop::new("pvkit-io-test", no_fatal()).unwrap();
        let mut timer = TimerFd::new().unwrap();
        timer
            .reset(Duration::from_millis(2), Some(Duration::from_millis(2)))
            .unwrap();
        let timer_fd = timer.as_raw_fd();
        let ticks = Arc::new(AtomicU64::new(0));
        let t = el
            .subscribe(Box::new(Timer(timer, Arc::clone(&ticks))))
            .unwrap();
        let bell_fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let ring = bell_fd.try_clone().unwrap();
        let (signals, woken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let b = el
            .subscribe(Box::new(Bell {
                fd: bell_fd,
                signals: Arc::clone(&signals),
                woken: Arc::clone(&woken),
            }))
            .unwrap();
        el.watch(timer_fd, t, 7).unwrap();
        el.watch(ring.as_raw_fd(), b, 1).unwrap();
        el.ensure_started().unwrap();
        // Late subscribers are refused.
        assert!(el
            .subscribe(Box::new(Timer(TimerFd::new().unwrap(), Arc::default())))
            .is_err());
        for _ in 0..5 {
            ring.write(2).unwrap();
        }
        wait_for("10 eventfd signals", || {
            signals.load(Ordering::Relaxed) == 10
        });
        wait_for("5 timer ticks", || ticks.load(Ordering::Relaxed) >= 5);
        el.wake();
        wait_for("a wakeup", || woken.load(Ordering::Relaxed) == 1);
        assert_eq!(el.stop(), Ok(()));
        // Stopped: no more events are served, and it does not start again.
        ring.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(signals.load(Ordering::Relaxed), 10);
        assert!(el.ensure_started().is_err());
    }

    /// A polling subscriber that never finishes: the stop request still ends the loop.
    struct Spinner(Arc<AtomicU64>);
    impl Subscriber for Spinner {
        fn ready(&mut self, _token: u32, _ctl: &LoopControl) -> io::Result<()> {
            Ok(())
        }
        fn busy(&mut self) -> Busy {
            Busy {
                pending: true,
                polling: true,
            }
        }
        fn resume(&mut self, _ctl: &LoopControl) -> io::Result<()> {
            Ok(())
        }
        fn poll(&mut self, _ctl: &LoopControl) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    #[test]
    fn stop_is_honoured_while_a_subscriber_is_busy() {
        let mut el = EventLoop::new("pvkit-io-test", no_fatal()).unwrap();
        let polls = Arc::new(AtomicU64::new(0));
        el.subscribe(Box::new(Spinner(Arc::clone(&polls)))).unwrap();
        el.ensure_started().unwrap();
        wait_for("polls", || polls.load(Ordering::Relaxed) > 100);
        let stopper = el.stopper();
        stopper.stop();
        assert_eq!(el.stop(), Ok(()));
        let after = polls.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(polls.load(Ordering::Relaxed), after);
    }

    /// Counts its poll steps and never finds work.
    struct Idle(Arc<AtomicU64>);
    impl Subscriber for Idle {
        fn ready(&mut self, _token: u32, _ctl: &LoopControl) -> io::Result<()> {
            Ok(())
        }
        fn busy(&mut self) -> Busy {
            Busy {
                pending: false,
                polling: true,
            }
        }
        fn poll(&mut self, _ctl: &LoopControl) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    #[test]
    fn an_idle_poller_sleeps_between_steps() {
        let mut el = EventLoop::new("pvkit-io-test", no_fatal()).unwrap();
        let polls = Arc::new(AtomicU64::new(0));
        el.subscribe(Box::new(Idle(Arc::clone(&polls)))).unwrap();
        let t = Instant::now();
        el.ensure_started().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let n = polls.load(Ordering::Relaxed);
        let elapsed = t.elapsed();
        // After the spin window (a few steps), idle steps sleep FIRST_SLEEP, doubling to
        // MAX_SLEEP, and a sleep lasts at least as long as asked: the steps are bounded
        // by the time (a spinning loop made 27 648 in 100 ms).
        let bound = 1000 + (elapsed.as_micros() / MAX_SLEEP.as_micros()) as u64;
        assert!(n >= 1, "it polled");
        assert!(n <= bound, "{n} idle steps in {elapsed:?}");
        // Sleeping, it still stops when asked.
        assert_eq!(el.stop(), Ok(()));
    }

    struct Failing;
    impl Subscriber for Failing {
        fn ready(&mut self, _token: u32, _ctl: &LoopControl) -> io::Result<()> {
            Err(io::Error::other("device gone"))
        }
    }

    #[test]
    fn a_subscriber_error_ends_the_thread_and_is_reported() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let on_fatal: Arc<dyn Fn(String) + Send + Sync> = Arc::new(move |m| {
            let _ = lock(&tx).send(m);
        });
        let mut el = EventLoop::new("pvkit-io-test", on_fatal).unwrap();
        let id = el.subscribe(Box::new(Failing)).unwrap();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        el.watch(fd.as_raw_fd(), id, 0).unwrap();
        el.ensure_started().unwrap();
        fd.write(1).unwrap();
        let msg = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(msg, "the host I/O thread failed: device gone");
        assert_eq!(el.stop(), Err(msg));
    }
}
