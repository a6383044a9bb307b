//! How a polling event loop paces itself between poll steps: it polls again at once while
//! the steps find work, and sleeps for short, growing intervals between steps that find
//! none.
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
//! Measured (docs/BENCHMARKS.md): even a short spin window after the last work (KVM's
//! halt polling spins 200 µs) made things worse on the loaded 2-core host, since the
//! vCPU cannot publish its next request while the poller holds the core; so idle steps
//! sleep at once. [`PollPacer`] is a pure state machine, tested without threads.

use std::time::Duration;

/// The first sleep after a poll step that found no work.
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
    /// The next sleep after an idle step.
    next_sleep: Duration,
}

impl Default for PollPacer {
    fn default() -> Self {
        Self::new()
    }
}

impl PollPacer {
    /// A pacer whose next idle step sleeps [`FIRST_SLEEP`].
    pub const fn new() -> Self {
        Self {
            next_sleep: FIRST_SLEEP,
        }
    }

    /// After a poll step that found work (`worked`: poll again at once, and the next idle
    /// step sleeps [`FIRST_SLEEP`]) or found none (sleep; each idle step in a row twice
    /// as long, up to [`MAX_SLEEP`]).
    pub fn step(&mut self, worked: bool) -> Pace {
        if worked {
            self.next_sleep = FIRST_SLEEP;
            return Pace::Spin;
        }
        let sleep = self.next_sleep;
        self.next_sleep = (sleep * 2).min(MAX_SLEEP);
        Pace::Sleep(sleep)
    }

    /// Starts over (polling stopped): the next idle step sleeps [`FIRST_SLEEP`].
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_steps_sleep_twice_as_long_each_up_to_the_bound() {
        let mut p = PollPacer::new();
        let sleeps: Vec<Duration> = (0..12)
            .map(|_| match p.step(false) {
                Pace::Sleep(d) => d,
                Pace::Spin => panic!("an idle step spun"),
            })
            .collect();
        assert_eq!(sleeps[0], FIRST_SLEEP);
        for w in sleeps.windows(2) {
            assert_eq!(w[1], (w[0] * 2).min(MAX_SLEEP), "{sleeps:?}");
        }
        assert_eq!(*sleeps.last().unwrap(), MAX_SLEEP);
        assert!(sleeps.iter().all(|d| *d <= MAX_SLEEP));
    }

    #[test]
    fn work_polls_again_at_once_and_restarts_the_sleeps() {
        let mut p = PollPacer::new();
        assert_eq!(p.step(false), Pace::Sleep(FIRST_SLEEP));
        assert_eq!(p.step(false), Pace::Sleep(FIRST_SLEEP * 2));
        assert_eq!(p.step(true), Pace::Spin);
        assert_eq!(p.step(true), Pace::Spin);
        assert_eq!(
            p.step(false),
            Pace::Sleep(FIRST_SLEEP),
            "short again after work"
        );
        p.step(false);
        p.reset();
        assert_eq!(p.step(false), Pace::Sleep(FIRST_SLEEP));
    }
}
