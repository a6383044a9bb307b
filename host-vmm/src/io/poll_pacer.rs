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
//! Measured (docs/DESIGN.md, "Polled rings on a loaded host"): a spin window as long as
//! KVM's halt polling (200 µs after the last work) made things worse on the loaded 2-core
//! host, since the vCPU cannot publish its next request while the poller holds the core.
//! The window is therefore short ([`SPIN_WINDOW`]): long enough for a guest that
//! publishes its next request right after reading a response (ring-3 code, microseconds),
//! too short to matter on a shared core. [`PollPacer`] is a pure state machine (the caller
//! passes the time in), tested without threads.

use std::time::{Duration, Instant};

/// How long the loop keeps polling without a pause after the last poll step that found
/// work: a guest that publishes its next request within it is served at once.
pub const SPIN_WINDOW: Duration = Duration::from_micros(20);

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
    /// The next sleep, once the spin window has passed.
    next_sleep: Duration,
}

impl Default for PollPacer {
    fn default() -> Self {
        Self::new()
    }
}

impl PollPacer {
    /// A pacer that has seen no poll step yet: it spins for a window from the first one.
    pub const fn new() -> Self {
        Self {
            last_work: None,
            next_sleep: FIRST_SLEEP,
        }
    }

    /// After a poll step at `now` that found work (`worked`) or not: spin within
    /// [`SPIN_WINDOW`] of the last work, else sleep ([`FIRST_SLEEP`], doubling up to
    /// [`MAX_SLEEP`]). Work resets both.
    pub fn step(&mut self, worked: bool, now: Instant) -> Pace {
        let last = match self.last_work {
            Some(t) if !worked => t,
            _ => {
                self.last_work = Some(now);
                self.next_sleep = FIRST_SLEEP;
                return Pace::Spin;
            }
        };
        if now.saturating_duration_since(last) < SPIN_WINDOW {
            return Pace::Spin;
        }
        let sleep = self.next_sleep;
        self.next_sleep = (sleep * 2).min(MAX_SLEEP);
        Pace::Sleep(sleep)
    }

    /// Forgets the last work: the next step starts a new spin window (polling stopped, or
    /// an event other than a poll step brought work).
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

    #[test]
    fn spins_within_the_window_then_sleeps_longer_up_to_the_bound() {
        let t0 = Instant::now();
        let mut p = PollPacer::new();
        assert_eq!(
            p.step(false, t0),
            Pace::Spin,
            "the first step opens a window"
        );
        assert_eq!(p.step(false, t0 + SPIN_WINDOW - us(1)), Pace::Spin);
        let mut t = t0 + SPIN_WINDOW;
        let mut sleeps = Vec::new();
        for _ in 0..10 {
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
    fn work_reopens_the_window_and_restarts_the_sleeps() {
        let t0 = Instant::now();
        let mut p = PollPacer::new();
        p.step(true, t0);
        let t = t0 + SPIN_WINDOW * 3;
        assert_eq!(p.step(false, t), Pace::Sleep(FIRST_SLEEP));
        assert_eq!(p.step(false, t), Pace::Sleep(FIRST_SLEEP * 2));
        assert_eq!(p.step(true, t), Pace::Spin);
        assert_eq!(p.step(false, t + SPIN_WINDOW / 2), Pace::Spin);
        assert_eq!(
            p.step(false, t + SPIN_WINDOW),
            Pace::Sleep(FIRST_SLEEP),
            "the sleeps start short again"
        );
        p.reset();
        assert_eq!(p.step(false, t + SPIN_WINDOW * 5), Pace::Spin);
    }

    #[test]
    fn a_clock_that_goes_backwards_keeps_spinning() {
        let t0 = Instant::now() + SPIN_WINDOW * 4;
        let mut p = PollPacer::new();
        p.step(true, t0);
        assert_eq!(p.step(false, t0 - SPIN_WINDOW * 2), Pace::Spin);
    }
}
