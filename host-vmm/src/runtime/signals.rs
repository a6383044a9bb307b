//! SIGINT and SIGTERM: stop the guest, flush the disk, exit with 128 + the signal number.
//!
//! [`install`] (called by `pvkit`, not by the library on its own: the handlers are
//! process-wide) sets handlers that only record the signal in an atomic, which is
//! async-signal-safe. The watchdog loop in [`crate::vm`] looks at [`pending`] at least every
//! [`POLL_INTERVAL`] while the handlers are installed and, when a signal is pending, stops
//! the vCPU with the watchdog's own kick (stop flag, then the kick signal until `KVM_RUN`
//! returns). Then the VM is torn down as after any stop (the I/O thread joined), the disk
//! is flushed (`fdatasync`), and the stop reason is
//! [`StopReason::Signal`](crate::StopReason::Signal): `pvkit` prints
//! `pvkit: stopped by SIGTERM; disk flushed` and exits with 143 (130 for SIGINT).
//!
//! The signal stays pending once received: every VM the process starts afterwards stops at
//! once (so `pvkit bench` ends after the current boot). A second SIGINT or SIGTERM while the
//! first is being handled ends the process at once with the same status, without flushing.

use std::fmt;
use std::io;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use thiserror::Error;

/// How often the watchdog looks for a pending signal while the handlers are installed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A signal that stops `pvkit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopSignal {
    /// `SIGINT` (Ctrl-C).
    Int,
    /// `SIGTERM`.
    Term,
}

impl StopSignal {
    /// All of them.
    pub const ALL: [StopSignal; 2] = [StopSignal::Int, StopSignal::Term];

    /// The signal number.
    pub fn number(self) -> c_int {
        match self {
            StopSignal::Int => libc::SIGINT,
            StopSignal::Term => libc::SIGTERM,
        }
    }

    /// The signal for `number`, if it is one of these.
    pub fn from_number(number: c_int) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.number() == number)
    }

    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Int => "SIGINT",
            StopSignal::Term => "SIGTERM",
        }
    }

    /// The process exit status: 128 + the signal number (130, 143), as a shell reports a
    /// process killed by the signal.
    pub fn exit_status(self) -> u8 {
        match self {
            StopSignal::Int => 130,
            StopSignal::Term => 143,
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to the disk when a signal stopped the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskFlush {
    /// The VM had no disk.
    NoDisk,
    /// `fdatasync` succeeded: every write the guest completed is on stable storage.
    Flushed,
    /// The flush failed.
    Failed(String),
}

impl fmt::Display for DiskFlush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskFlush::NoDisk => f.write_str("no disk"),
            DiskFlush::Flushed => f.write_str("disk flushed"),
            DiskFlush::Failed(e) => write!(f, "disk flush FAILED: {e}"),
        }
    }
}

/// The handlers could not be installed.
#[derive(Debug, Error)]
#[error("cannot install the {signal} handler: {source}")]
pub struct SignalError {
    /// Which signal.
    pub signal: StopSignal,
    /// Why.
    pub source: io::Error,
}

/// The pending signal's number, 0 if none.
static PENDING: AtomicI32 = AtomicI32::new(0);
/// Whether [`install`] succeeded.
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(num: c_int, _info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // Only atomics and, for a second signal, `write` + `_exit`: all async-signal-safe.
    if PENDING.swap(num, Ordering::AcqRel) == 0 {
        return;
    }
    let msg: &[u8] = b"pvkit: second stop signal; exiting without flushing the disk\n";
    let status = StopSignal::from_number(num).map_or(1, |s| c_int::from(s.exit_status()));
    // SAFETY: `write` and `_exit` are async-signal-safe; `msg` is a valid byte slice.
    unsafe {
        libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len());
        libc::_exit(status);
    }
}

/// Installs the SIGINT and SIGTERM handlers (once per process). For the `pvkit` binary: a
/// library user that installs them hands these signals to every VM of its process.
pub fn install() -> Result<(), SignalError> {
    static RESULT: OnceLock<Result<(), (StopSignal, i32)>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            for s in StopSignal::ALL {
                // SAFETY: a zeroed `sigaction` is a valid value (empty mask, no flags).
                let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
                act.sa_sigaction = on_signal as *const () as usize;
                // SA_RESTART: system calls the signal interrupts on other threads resume;
                // KVM_RUN and epoll_wait return EINTR regardless, which both loops handle.
                act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                // SAFETY: `act` is fully initialized and `on_signal` has the SA_SIGINFO
                // signature; the old action is not requested. The return value is checked.
                let r = unsafe {
                    libc::sigemptyset(&mut act.sa_mask);
                    libc::sigaction(s.number(), &act, std::ptr::null_mut())
                };
                if r != 0 {
                    return Err((s, io::Error::last_os_error().raw_os_error().unwrap_or(0)));
                }
            }
            INSTALLED.store(true, Ordering::Release);
            Ok(())
        })
        .map_err(|(signal, errno)| SignalError {
            signal,
            source: io::Error::from_raw_os_error(errno),
        })
}

/// Whether the handlers are installed (the watchdog then wakes every [`POLL_INTERVAL`]).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// The stop signal received, if any. It stays pending.
pub fn pending() -> Option<StopSignal> {
    StopSignal::from_number(PENDING.load(Ordering::Acquire))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_128_plus_the_signal() {
        for s in StopSignal::ALL {
            assert_eq!(i32::from(s.exit_status()), 128 + s.number());
            assert_eq!(StopSignal::from_number(s.number()), Some(s));
        }
        assert_eq!(StopSignal::Int.exit_status(), 130);
        assert_eq!(StopSignal::Term.exit_status(), 143);
        assert_eq!(StopSignal::from_number(libc::SIGHUP), None);
        assert_eq!(StopSignal::from_number(0), None);
    }

    #[test]
    fn flush_outcomes_read_well() {
        assert_eq!(DiskFlush::Flushed.to_string(), "disk flushed");
        assert_eq!(
            DiskFlush::Failed("EIO".into()).to_string(),
            "disk flush FAILED: EIO"
        );
    }

    #[test]
    fn nothing_is_pending_without_a_signal() {
        // The library never installs the handlers by itself.
        assert!(!installed());
        assert_eq!(pending(), None);
    }
}
