//! Why a guest stopped, and the guest fault report as the host understands it.

use std::fmt;

use pvkit_abi::fault::{vector_name, FaultReport, MESSAGE_MAX, VECTOR_PANIC};

use crate::runtime::signals::{DiskFlush, StopSignal};

/// A fault or panic reported by the guest, validated and decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFault {
    /// Exception vector, or [`VECTOR_PANIC`].
    pub vector: u32,
    /// The exception's error code.
    pub error_code: u64,
    /// `RIP` at the fault (0 for a panic).
    pub rip: u64,
    /// `CR2` (page faults).
    pub cr2: u64,
    /// The guest's message (length clamped to [`MESSAGE_MAX`], invalid UTF-8 replaced).
    pub message: String,
}

impl GuestFault {
    /// Decodes a report read from guest memory. Nothing in it is trusted: the length is
    /// clamped and the text is decoded lossily.
    pub fn from_report(report: &FaultReport) -> Self {
        let len = usize::try_from(report.message_len)
            .unwrap_or(MESSAGE_MAX)
            .min(MESSAGE_MAX);
        let text = report.message.get(..len).unwrap_or_default();
        Self {
            vector: report.vector,
            error_code: report.error_code,
            rip: report.rip,
            cr2: report.cr2,
            message: String::from_utf8_lossy(text).into_owned(),
        }
    }

    /// Whether this is a panic rather than a CPU exception.
    pub fn is_panic(&self) -> bool {
        self.vector == VECTOR_PANIC
    }
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message is guest text: show control characters escaped, never raw.
        let msg = self.message.escape_debug();
        if self.is_panic() {
            return write!(f, "guest panic: {msg}");
        }
        write!(
            f,
            "guest fault: {} (vector {}) at rip {:#x}, error code {:#x}",
            vector_name(self.vector),
            self.vector,
            self.rip,
            self.error_code
        )?;
        if self.vector == 14 {
            write!(f, ", cr2 {:#x}", self.cr2)?;
        }
        write!(f, ": {msg}")
    }
}

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest called `exit(code)`.
    Exit(u8),
    /// The guest reported a fault or a panic.
    Fault(GuestFault),
    /// The guest called `report_fault` with a report the host could not read.
    UnreadableFault {
        /// The address the guest passed.
        addr: u64,
    },
    /// Triple fault (or another shutdown).
    Shutdown {
        /// `RIP` after the shutdown, if the host could read it.
        rip: Option<u64>,
    },
    /// The watchdog expired.
    Timeout {
        /// The last `RIP`, if the host could read it.
        rip: Option<u64>,
        /// Whether the disk was flushed afterwards (as after a signal; [`DiskFlush::NoDisk`]
        /// until the VM is torn down).
        disk: DiskFlush,
    },
    /// `hlt` with interrupts that can never wake the vCPU (no interrupt sources in v1).
    Halted {
        /// `RIP` after the `hlt`.
        rip: Option<u64>,
    },
    /// KVM could not run the guest (emulation failure, failed entry, unexpected exit).
    InternalError {
        /// What KVM reported.
        detail: String,
    },
    /// `pvkit` received SIGINT or SIGTERM ([`crate::runtime::signals`]) and stopped the guest.
    Signal {
        /// Which signal.
        signal: StopSignal,
        /// Whether the disk was flushed afterwards.
        disk: DiskFlush,
    },
    /// The VM was live-migrated ([`crate::migration`]): the target runs the guest now.
    /// Process exit status 0: the hand-over succeeded.
    Migrated {
        /// The target's address.
        to: String,
        /// The migration's figures (time, downtime, bytes, rounds).
        summary: String,
    },
}

/// Process exit status: VMM error (bad ELF, ABI mismatch, no usable `/dev/kvm`).
pub const STATUS_VMM_ERROR: u8 = 1;
/// Process exit status: usage error.
pub const STATUS_USAGE: u8 = 2;
/// Process exit status: KVM internal error, or `hlt` with no possible wakeup.
pub const STATUS_INTERNAL: u8 = 123;
/// Process exit status: watchdog expired.
pub const STATUS_TIMEOUT: u8 = 124;
/// Process exit status: guest fault or panic reported.
pub const STATUS_FAULT: u8 = 125;
/// Process exit status: triple fault / shutdown.
pub const STATUS_SHUTDOWN: u8 = 126;

impl StopReason {
    /// The `pvkit` process exit status for this stop (see `pvkit run --help`).
    pub fn exit_status(&self) -> u8 {
        match self {
            StopReason::Exit(code) => *code,
            StopReason::Fault(_) | StopReason::UnreadableFault { .. } => STATUS_FAULT,
            StopReason::Shutdown { .. } => STATUS_SHUTDOWN,
            // As for a signal: a failed flush is an I/O error.
            StopReason::Timeout {
                disk: DiskFlush::Failed(_),
                ..
            } => STATUS_VMM_ERROR,
            StopReason::Timeout { .. } => STATUS_TIMEOUT,
            StopReason::Halted { .. } | StopReason::InternalError { .. } => STATUS_INTERNAL,
            // A failed flush is an I/O error: the guest's completed writes may be lost.
            StopReason::Signal {
                disk: DiskFlush::Failed(_),
                ..
            } => STATUS_VMM_ERROR,
            StopReason::Signal { signal, .. } => signal.exit_status(),
            StopReason::Migrated { .. } => 0,
        }
    }
}

struct Rip(Option<u64>);

impl fmt::Display for Rip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(rip) => write!(f, "rip {rip:#x}"),
            None => f.write_str("rip unknown"),
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Exit(code) => write!(f, "guest exited with code {code}"),
            StopReason::Fault(fault) => fault.fmt(f),
            StopReason::UnreadableFault { addr } => write!(
                f,
                "guest fault: the guest reported a fault but its report at {addr:#x} is not \
                 inside guest RAM"
            ),
            StopReason::Shutdown { rip } => {
                write!(f, "guest shut down (triple fault) at {}", Rip(*rip))
            }
            StopReason::Timeout { rip, disk } => {
                write!(
                    f,
                    "watchdog: the guest did not stop in time (last {}); raise --timeout if \
                     it needs longer",
                    Rip(*rip)
                )?;
                match disk {
                    DiskFlush::NoDisk => Ok(()),
                    disk => write!(f, "; {disk}"),
                }
            }
            StopReason::Halted { rip } => write!(
                f,
                "guest halted with nothing to wake it (hlt at {})",
                Rip(*rip)
            ),
            StopReason::InternalError { detail } => write!(f, "KVM internal error: {detail}"),
            StopReason::Signal {
                signal,
                disk: DiskFlush::NoDisk,
            } => write!(f, "stopped by {signal}"),
            StopReason::Signal { signal, disk } => write!(f, "stopped by {signal}; {disk}"),
            StopReason::Migrated { to, summary } => {
                write!(
                    f,
                    "the VM was live-migrated to {to} and runs there ({summary})"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(vector: u32, len: u32, text: &[u8]) -> FaultReport {
        let mut message = [0u8; MESSAGE_MAX];
        message[..text.len()].copy_from_slice(text);
        FaultReport {
            vector,
            message_len: len,
            error_code: 0,
            rip: 0x1234,
            cr2: 0,
            message,
        }
    }

    #[test]
    fn fault_message_format() {
        let f = GuestFault::from_report(&report(6, 5, b"boom!"));
        assert_eq!(
            f.to_string(),
            "guest fault: #UD invalid opcode (vector 6) at rip 0x1234, error code 0x0: boom!"
        );
        assert_eq!(StopReason::Fault(f).exit_status(), STATUS_FAULT);
    }

    #[test]
    fn length_is_clamped_and_text_is_lossy() {
        let f = GuestFault::from_report(&report(VECTOR_PANIC, u32::MAX, b"\xffok"));
        assert_eq!(f.message.chars().count(), MESSAGE_MAX);
        assert!(f.message.starts_with("\u{fffd}ok"));
        assert!(f.to_string().starts_with("guest panic: \u{fffd}ok"));
    }

    #[test]
    fn statuses() {
        assert_eq!(StopReason::Exit(42).exit_status(), 42);
        let timeout = |disk| StopReason::Timeout { rip: None, disk };
        assert_eq!(timeout(DiskFlush::NoDisk).exit_status(), 124);
        assert_eq!(timeout(DiskFlush::Flushed).exit_status(), 124);
        assert_eq!(timeout(DiskFlush::Failed("EIO".into())).exit_status(), 1);
        assert!(timeout(DiskFlush::Flushed)
            .to_string()
            .ends_with("raise --timeout if it needs longer; disk flushed"));
        assert!(timeout(DiskFlush::NoDisk)
            .to_string()
            .ends_with("raise --timeout if it needs longer"));
        assert_eq!(StopReason::Shutdown { rip: None }.exit_status(), 126);
        assert_eq!(StopReason::Halted { rip: None }.exit_status(), 123);
        let term = |disk| StopReason::Signal {
            signal: StopSignal::Term,
            disk,
        };
        assert_eq!(term(DiskFlush::Flushed).exit_status(), 143);
        assert_eq!(term(DiskFlush::NoDisk).exit_status(), 143);
        assert_eq!(term(DiskFlush::Failed("EIO".into())).exit_status(), 1);
        assert_eq!(
            term(DiskFlush::Flushed).to_string(),
            "stopped by SIGTERM; disk flushed"
        );
        assert_eq!(term(DiskFlush::NoDisk).to_string(), "stopped by SIGTERM");
    }
}
