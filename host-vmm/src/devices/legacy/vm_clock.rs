//! The VM clock: monotonic VM time for the time-dependent device models (the PIT, the PV
//! clock), restorable from a saved state so a restored VM's time never goes backwards.

use std::time::Instant;

use pvkit_devices::{StateError, VmClockState};

/// Monotonic nanoseconds since the VM started, for the PIT and the PV clock.
pub trait VmTime: Send + Sync {
    /// Nanoseconds since the VM started (host `CLOCK_MONOTONIC`).
    fn now_ns(&self) -> u64;
}

/// The VM's clock: host `CLOCK_MONOTONIC` (`Instant`) since the VM was created, plus the
/// VM time it was resumed from ([`VmClock::resume`]).
#[derive(Clone, Copy, Debug)]
pub struct VmClock {
    start: Instant,
    /// VM time at `start`: 0, or the saved time of a restored VM.
    base_ns: u64,
}

impl VmClock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            base_ns: 0,
        }
    }

    /// The clock's state (its current time), for a snapshot. Save it after the devices.
    pub fn state(&self) -> VmClockState {
        VmClockState::new(self.now_ns())
    }

    /// A clock continuing from a saved state: it reads the saved time now and counts on
    /// from there, so a restored VM's time never goes backwards.
    pub fn resume(state: &VmClockState) -> Result<Self, StateError> {
        Ok(Self {
            start: Instant::now(),
            base_ns: state.resume_ns()?,
        })
    }

    /// The host instant the clock started (or resumed) counting at.
    pub fn started_at(&self) -> Instant {
        self.start
    }
}

impl VmTime for VmClock {
    fn now_ns(&self) -> u64 {
        // Saturates after 584 years.
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_clock_is_monotonic_from_zero() {
        let c = VmClock::start();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        assert!(a < 1_000_000_000);
        assert!(c.started_at() <= Instant::now());
    }

    #[test]
    fn resumed_vm_clock_continues_from_the_saved_time() {
        let c = VmClock::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let saved = c.state();
        assert!(saved.now_ns >= 2_000_000);
        let r = VmClock::resume(&saved).unwrap();
        let (a, b) = (r.now_ns(), r.now_ns());
        assert!(a >= saved.now_ns && b >= a);
        // Generous: the resumed clock did not jump ahead either.
        assert!(a - saved.now_ns < 10_000_000_000);
        let future = VmClockState {
            version: 9,
            ..saved
        };
        assert!(VmClock::resume(&future).is_err());
    }
}
