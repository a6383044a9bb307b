//! Saved device state: the rules every model's `state()` / `from_state()` follow, the
//! error they share and the state of the VM clock the timers count from.
//!
//! A saved state is a plain serde structure: registers, indices and timestamps, never a
//! pointer, a file descriptor or guest memory. What a model does I/O through (a disk
//! backend, a console sink, guest RAM) is re-attached by the caller of `from_state`.
//!
//! A state comes from a file, so it is hostile input: `from_state` checks the version and
//! every invariant the model relies on (ranges, enum encodings, consistency with the
//! re-attached backend) and answers [`StateError`] for anything a running model could not
//! have produced. It never panics, and a model rebuilt from an accepted state never panics
//! later either.
//!
//! # Time
//!
//! Timers (the PIT, the PV clock) take their time from the VM clock: nanoseconds since the
//! VM started. Their states hold times on that clock, so a restored VM must resume the
//! clock at (or after) the time it was saved at, [`VmClockState::now_ns`]. Save the clock
//! after the devices: every time in a device state is then at or before it, and time as
//! the restored devices see it never goes backwards.

use serde::{Deserialize, Serialize};

/// Why a saved state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The state was written by a format this build does not read; save it again with a
    /// matching pvkit or convert it.
    #[error(
        "{device} state version {found} is not supported (this build reads version {supported})"
    )]
    Version {
        /// The model.
        device: &'static str,
        /// The version in the state.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A field holds a value the model cannot have produced: the state is corrupt.
    #[error("{device} state is corrupt: {what}")]
    Invalid {
        /// The model.
        device: &'static str,
        /// The rule the state breaks.
        what: &'static str,
    },
    /// The disk re-attached to a restored disk model does not have the size the state was
    /// saved with; attach the same image.
    #[error("{device} state was saved with a {saved}-sector disk, the disk attached has {attached} sectors")]
    DiskSize {
        /// The model.
        device: &'static str,
        /// Sectors when the state was saved.
        saved: u64,
        /// Sectors of the disk attached now.
        attached: u64,
    },
}

/// `Ok` if `found` is the version `device` reads.
pub fn check_version(device: &'static str, found: u32, supported: u32) -> Result<(), StateError> {
    if found == supported {
        Ok(())
    } else {
        Err(StateError::Version {
            device,
            found,
            supported,
        })
    }
}

/// `Ok` if `rule` holds, else [`StateError::Invalid`] naming it.
pub fn ensure(device: &'static str, rule: bool, what: &'static str) -> Result<(), StateError> {
    if rule {
        Ok(())
    } else {
        Err(StateError::Invalid { device, what })
    }
}

/// The saved VM clock: the VM time at the moment of saving.
///
/// The VMM's clock reads "nanoseconds since the VM started"; a restored VM's clock starts
/// counting at [`now_ns`](Self::now_ns) instead of 0, so the PIT counters and the PV clock
/// continue from where they were and never see time go backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmClockState {
    /// [`VmClockState::VERSION`].
    pub version: u32,
    /// VM time when the state was saved, in nanoseconds since the VM started.
    pub now_ns: u64,
}

impl VmClockState {
    /// The version of this structure.
    pub const VERSION: u32 = 1;

    /// The state of a clock reading `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Self {
            version: Self::VERSION,
            now_ns,
        }
    }

    /// The VM time to resume from, after checking the version.
    pub fn resume_ns(&self) -> Result<u64, StateError> {
        check_version("VM clock", self.version, Self::VERSION)?;
        Ok(self.now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_state_round_trips_and_checks_its_version() {
        let s = VmClockState::new(123_456_789);
        let json = serde_json::to_string(&s).unwrap();
        let back: VmClockState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.resume_ns(), Ok(123_456_789));
        let future = VmClockState { version: 2, ..s };
        assert!(matches!(
            future.resume_ns(),
            Err(StateError::Version { found: 2, .. })
        ));
    }
}
