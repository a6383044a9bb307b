//! How a polling event loop paces itself between poll steps: it polls again at once while
//! the steps find work and for a short window after, then sleeps for short, growing
//! intervals between steps that find none.
//!
//! # Why a poller must not spin while idle
//!
//! A ring polled by the host ([`pvkit_abi::ring::Transport::HostPoll`]) is usually
//! waited on by a guest that spins too (it polls `rsp_prod`). On a host with a core to
//! spare both spin side by side and a request is served within a poll step. On a loaded
//! host the poller and the vCPU share a core with each other (and with other work): two
//! threads that never block are, to the scheduler, two equal CPU hogs, and neither
//! `sched_yield` nor a spin hint makes it run the other one sooner. Every hand-over, the
//! guest's request to the poller and the response back to the guest, then waits for the
//! running thread's time slice to end: one request per slice (milliseconds) instead of
//! one per microseconds — slow enough that a guest echoing 20 000 datagrams ran into its
//! test's watchdog, which looked like a hang. A poller that sleeps when idle leaves the
//! core to the vCPU, and its timer wake-up (that of a thread that slept) preempts the
//! spinning guest: a hand-over costs one sleep interval, not a time slice.
//!
//! Measured (docs/DESIGN.md, "Polled rings on a loaded host"): a fixed spin window as
//! long as KVM's halt polling (200 µs after the last work) made things worse on the
//! loaded 2-core host, where the built-in ring-0 guest needs hundreds of microseconds
//! between requests and cannot publish the next one while the poller holds the core;
//! without any window, a ring-3 benchmark loop that publishes its next request some tens
//! of microseconds after a response paid a sleep per request. So the window adapts as
//! KVM's halt-polling window does (`halt_poll_ns` grow/shrink): work that came after the
//! window had expired but within [`MAX_WINDOW`] of the last work doubles it (a longer
//! window would have caught it without a sleep); an idle period longer than
//! [`MAX_WINDOW`] halves it (polling through it would have been wasted), down to
//! [`MIN_WINDOW`]. [`PollPacer`] is a pure state machine (the caller passes the time in),
//! tested without threads.

use std::time::{Duration, Instant};

/// The shortest spin window (and the first one): how long the loop keeps polling without
/// a pause after the last poll step that found work.
pub const MIN_WINDOW: Duration = Duration::from_micros(10);

/// The longest spin window: KVM's default halt-polling window (`halt_poll_ns`, 200 µs).
pub const MAX_WINDOW: Duration = Duration::from_micros(200);

/// The first sleep after the spin window.
pub const FIRST_SLEEP: Duration = Duration::from_micros(10);

/// The longest sleep: a request published on an idle ring waits this long (plus the
/// kernel's timer slack, 50 µs by default) at most. The sleeps double from
/// [`FIRST_SLEEP`] up to it.
pub const MAX_SLEEP: Duration = Duration::from_micros(500);

/// What the loop does after a poll step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Poll again at once.
    Spin,
    /// Sleep this long, then poll again.
    Sleep(Duration),
}

/// The pacing state of one polling loop.
#[derive(Clone, Copy, Debug)]
pub struct PollPacer {
    /// When a poll step last found work (or polling started).
    last_work: Option<Instant>,
    /// The current spin window.
    window: Duration,
    /// The next sleep, once the spin window has passed.
    next_sleep: Duration,
    /// The window expired in this idle period (the loop slept).
    expired: bool,
    /// This idle period already shrank the window.
    shrunk: bool,
}

impl Default for PollPacer {
    fn default() -> Self {
        Self::new()
    }
}

impl PollPacer {
    /// A pacer that has seen no poll step yet: it spins for [`MIN_WINDOW`] from the first.
    pub const fn new() -> Self {
        Self {
            last_work: None,
            window: MIN_WINDOW,
            next_sleep: FIRST_SLEEP,
            expired: false,
            shrunk: false,
        }
    }

    /// The current spin window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// After a poll step at `now` that found work (`worked`) or not: spin within the
    /// window of the last work, else sleep ([`FIRST_SLEEP`], doubling up to
    /// [`MAX_SLEEP`]). Work restarts the sleeps and adapts the window (module docs).
    pub fn step(&mut self, worked: bool, now: Instant) -> Pace {
        let Some(last) = self.last_work else {
            self.last_work = Some(now);
            return Pace::Spin;
        };
        let idle = now.saturating_duration_since(last);
        if worked {
            if self.expired && idle <= MAX_WINDOW {
                self.window = (self.window * 2).min(MAX_WINDOW);
            }
            self.last_work = Some(now);
            self.next_sleep = FIRST_SLEEP;
            self.expired = false;
            self.shrunk = false;
            return Pace::Spin;
        }
        if idle < self.window {
            return Pace::Spin;
        }
        if idle > MAX_WINDOW && !self.shrunk {
            self.window = (self.window / 2).max(MIN_WINDOW);
            self.shrunk = true;
        }
        self.expired = true;
        let sleep = self.next_sleep;
        self.next_sleep = (sleep * 2).min(MAX_SLEEP);
        Pace::Sleep(sleep)
    }

    /// Starts over (polling stopped): the next step opens a [`MIN_WINDOW`].
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Idle steps from `t` on until the first sleep; returns the time of that step.
    fn until_sleep(p: &mut PollPacer, mut t: Instant) -> (Instant, Duration) {
        loop {
            match p.step(false, t) {
                Pace::Spin => t += us(1),
                Pace::Sleep(d) => return (t, d),
            }
        }
    }

    #[test]
    fn spins_within_the_window_then_sleeps_longer_up_to_the_bound() {
        let t0 = Instant::now();
        let mut p = PollPacer::new();
        assert_eq!(
            p.step(false, t0),
            Pace::Spin,
            "the first step opens a window"
        );
        assert_eq!(p.step(false, t0 + MIN_WINDOW - us(1)), Pace::Spin);
        let mut t = t0 + MIN_WINDOW;
        let mut sleeps = Vec::new();
        for _ in 0..12 {
            match p.step(false, t) {
                Pace::Sleep(d) => {
                    sleeps.push(d);
                    t += d;
                }
                Pace::Spin => panic!("spun after the window at {:?}", t - t0),
            }
        }
        assert_eq!(sleeps[0], FIRST_SLEEP);
        for w in sleeps.windows(2) {
            assert_eq!(w[1], (w[0] * 2).min(MAX_SLEEP), "{sleeps:?}");
        }
        assert_eq!(*sleeps.last().unwrap(), MAX_SLEEP);
    }

    #[test]
    fn work_just_after_the_window_grows_it_up_to_the_bound() {
        let mut t = Instant::now();
        let mut p = PollPacer::new();
        p.step(true, t);
        let mut windows = vec![p.window()];
        for _ in 0..8 {
            // The guest publishes 150 µs after each response: past the window, within
            // MAX_WINDOW.
            let (_, d) = until_sleep(&mut p, t);
            assert_eq!(d, FIRST_SLEEP, "the sleeps start short after work");
            t += us(150);
            assert_eq!(p.step(true, t), Pace::Spin);
            windows.push(p.window());
        }
        assert_eq!(windows[1], MIN_WINDOW * 2);
        assert!(windows.windows(2).all(|w| w[1] >= w[0]), "{windows:?}");
        assert_eq!(*windows.last().unwrap(), MAX_WINDOW);
        // Now that request comes within the window: no sleep before it.
        for i in 1..150 {
            assert_eq!(p.step(false, t + us(i)), Pace::Spin);
        }
        assert_eq!(p.step(true, t + us(150)), Pace::Spin);
        assert_eq!(p.window(), MAX_WINDOW);
    }

    #[test]
    fn long_idle_periods_shrink_the_window_to_the_minimum() {
        let mut t = Instant::now();
        let mut p = PollPacer::new();
        p.step(true, t);
        // Grow it first (work 100 µs after the last, each time after a sleep).
        for _ in 0..6 {
            until_sleep(&mut p, t);
            t += us(100);
            p.step(true, t);
        }
        assert!(p.window() > MIN_WINDOW * 4, "{:?}", p.window());
        // The built-in ring-0 guest on a shared core: the next request 600 µs later.
        for _ in 0..12 {
            let before = p.window();
            let (at, _) = until_sleep(&mut p, t);
            let polled = at - t;
            assert!(
                polled >= before && polled < before + us(1),
                "polled {polled:?} for a window of {before:?}"
            );
            // Idle steps past MAX_WINDOW shrink it once per idle period.
            p.step(false, t + MAX_WINDOW + us(1));
            p.step(false, t + MAX_WINDOW + us(300));
            assert_eq!(p.window(), (before / 2).max(MIN_WINDOW));
            t += us(600);
            p.step(true, t);
        }
        assert_eq!(p.window(), MIN_WINDOW);
        p.reset();
        assert_eq!(p.window(), MIN_WINDOW);
    }

    #[test]
    fn a_clock_that_goes_backwards_keeps_spinning() {
        let t0 = Instant::now() + MAX_WINDOW * 4;
        let mut p = PollPacer::new();
        p.step(true, t0);
        assert_eq!(p.step(false, t0 - MAX_WINDOW * 2), Pace::Spin);
    }
}
