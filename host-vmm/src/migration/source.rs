//! The source of a migration ([`migrate_to`]): connect, track dirty pages, pre-copy while
//! the guest runs, pause, final round, VM state, end record, then the hand-over of
//! [`super::target`]. Any failure before the target's `READY` resumes the VM and switches
//! tracking off: a failed migration leaves the source running. After `READY` the source
//! sends `GO` and its VM must stop ([`MigrationSource::finish`]).

use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use thiserror::Error;

use super::precopy::{send_ram, PrecopyConfig, PrecopyError, RamStats};
use super::stream::{Header, StreamError, StreamWriter};
use super::target::{read_verdict, Verdict, GO, HANDOVER_TIMEOUT};
use crate::devices::pv::free_page_hint::PvFreePageHint;
use crate::vstate::dirty::{DirtyLog, FreePageHints, NoHints};
use crate::vstate::memory::{ram_size, GuestRam};

/// How long to wait for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait, after tracking starts, for the first hint of a guest that hints
/// (one that made a `FreePageHint` call before): hints from before tracking do not count.
pub const HINT_WAIT: Duration = Duration::from_millis(200);

/// What the migration needs from the running VM (implemented by the VM's control handle).
pub trait MigrationSource {
    /// The KVM VM fd (for the dirty log).
    fn vm_fd(&self) -> Option<Arc<VmFd>>;
    /// Guest RAM.
    fn mem(&self) -> &GuestRam;
    /// The free-page hint device, if the VM has one.
    fn hints(&self) -> Option<Arc<PvFreePageHint>>;
    /// Pauses the vCPUs and device threads at a clean point.
    fn pause(&self) -> Result<(), String>;
    /// Lets a paused VM continue (a failed migration).
    fn resume(&self) -> Result<(), String>;
    /// The paused VM's state as a snapshot state file (disk flushed).
    fn capture_state(&self) -> Result<Vec<u8>, String>;
    /// The target runs the guest now: stop this VM for good (the report names the target
    /// and the figures).
    fn finish(&self, report: &MigrationReport);
}

/// Errors of a migration; the source VM runs on after every one of them.
#[derive(Debug, Error)]
pub enum MigrationError {
    /// No connection to the target.
    #[error("cannot connect to the migration target {addr}: {source}")]
    Connect {
        /// The target.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The VM cannot be migrated (no KVM VM, state capture failed).
    #[error("cannot migrate this VM: {0}")]
    Unsupported(String),
    /// Dirty tracking or the pre-copy failed.
    #[error(transparent)]
    Precopy(#[from] PrecopyError),
    /// The stream could not be written.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The target refused the VM.
    #[error("the migration target refused the VM: {0}")]
    Refused(String),
    /// The hand-over failed.
    #[error("migration hand-over failed: {0}")]
    Handover(String),
}

/// What a successful migration did.
#[derive(Clone, Debug)]
pub struct MigrationReport {
    /// The target.
    pub to: String,
    /// From the request to `GO` sent.
    pub total: Duration,
    /// From the pause to `GO` sent: the guest ran on neither side.
    pub downtime: Duration,
    /// Bytes of the stream.
    pub bytes: u64,
    /// Per-round figures (the last is stop-and-copy).
    pub ram: RamStats,
    /// Bytes of the VM state.
    pub state_bytes: u64,
    /// Parts of the downtime: pausing the vCPU, the final round, capturing the state, and
    /// from the end record to the target's `READY` (it writes the state, rebuilds the VM).
    pub downtime_parts: DowntimeParts,
}

/// Where the downtime went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DowntimeParts {
    /// `pause` itself (vCPU out of `KVM_RUN`), counted before the downtime starts.
    pub pause: Duration,
    /// The stop-and-copy round (dirty-log read and pages).
    pub final_round: Duration,
    /// Capturing and encoding the VM state (disk flush included).
    pub capture: Duration,
    /// End record written → `READY` read: the target rebuilding the VM.
    pub target: Duration,
}

impl MigrationReport {
    /// One line for logs and the control API.
    pub fn summary(&self) -> String {
        format!(
            "migrated to {}: total {:.1} ms, downtime {:.2} ms, {} bytes sent, {} rounds, \
             {} pages with content, {} hinted pages skipped, final round {} pages, state {} \
             bytes, dirty-log read {} us at most; downtime: pause {} us, final round {} us, \
             state capture {} us, target rebuild {} us; rounds (dirty/data/zero/hinted pages, \
             ms): {}",
            self.to,
            self.total.as_secs_f64() * 1e3,
            self.downtime.as_secs_f64() * 1e3,
            self.bytes,
            self.ram.rounds.len(),
            self.ram.data_pages(),
            self.ram.hinted_pages(),
            self.ram.rounds.last().map_or(0, |r| r.dirty),
            self.state_bytes,
            self.ram
                .rounds
                .iter()
                .map(|r| r.fetch.as_micros())
                .max()
                .unwrap_or(0),
            self.downtime_parts.pause.as_micros(),
            self.downtime_parts.final_round.as_micros(),
            self.downtime_parts.capture.as_micros(),
            self.downtime_parts.target.as_micros(),
            self.ram
                .rounds
                .iter()
                .map(|r| format!(
                    "{}/{}/{}/{} {:.1}",
                    r.dirty,
                    r.data_pages,
                    r.zero_pages,
                    r.hinted_pages,
                    r.elapsed.as_secs_f64() * 1e3
                ))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }
}

/// Migrates the VM of `src` to `addr`. On success the VM was stopped with
/// [`MigrationSource::finish`]; on any error it runs on.
pub fn migrate_to(
    src: &dyn MigrationSource,
    addr: SocketAddr,
    config: PrecopyConfig,
) -> Result<MigrationReport, MigrationError> {
    let t0 = Instant::now();
    let to = addr.to_string();
    let fd = src
        .vm_fd()
        .ok_or_else(|| MigrationError::Unsupported("no KVM VM".into()))?;
    let conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|source| {
        MigrationError::Connect {
            addr: to.clone(),
            source,
        }
    })?;
    let _ = conn.set_nodelay(true);
    let hint_dev = src.hints();
    let hinting_guest = hint_dev.as_ref().is_some_and(|h| h.stats().idle_calls > 0);
    let hinted_before = hint_dev.as_ref().map_or(0, |h| h.stats().recorded_calls);
    if let Some(h) = &hint_dev {
        h.start_tracking();
    }
    let stop_tracking = |log: Option<DirtyLog>| {
        if let Some(h) = &hint_dev {
            h.stop_tracking();
        }
        if let Some(l) = log {
            let _ = l.stop();
        }
    };
    let mut log = match DirtyLog::start(fd, src.mem()) {
        Ok(l) => l,
        Err(e) => {
            stop_tracking(None);
            return Err(PrecopyError::from(e).into());
        }
    };
    if hinting_guest {
        if let Some(h) = &hint_dev {
            let t = Instant::now();
            while h.stats().recorded_calls == hinted_before && t.elapsed() < HINT_WAIT {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let no_hints = NoHints;
    let hints: &dyn FreePageHints = match &hint_dev {
        Some(h) => h.as_ref(),
        None => &no_hints,
    };
    let mut paused = false;
    let result = (|| {
        let out = BufWriter::with_capacity(1 << 20, &conn);
        let header = Header {
            ram_bytes: ram_size(src.mem()),
        };
        let mut w = StreamWriter::new(out, header)?;
        let mut parts = DowntimeParts::default();
        let mut pause = || {
            let t = Instant::now();
            src.pause()?;
            parts.pause = t.elapsed();
            paused = true;
            Ok(())
        };
        let ram = send_ram(src.mem(), &mut log, hints, &mut w, config, &mut pause)?;
        parts.final_round = ram.rounds.last().map_or(Duration::ZERO, |r| r.elapsed);
        let t = Instant::now();
        let state = src.capture_state().map_err(MigrationError::Unsupported)?;
        parts.capture = t.elapsed();
        w.state(&state)?;
        let (_, bytes) = w.end()?;
        let t = Instant::now();
        let mut c = &conn;
        c.set_read_timeout(Some(HANDOVER_TIMEOUT))
            .map_err(|e| MigrationError::Handover(e.to_string()))?;
        match read_verdict(&mut c).map_err(|e| MigrationError::Handover(e.to_string()))? {
            Verdict::Refused(why) => return Err(MigrationError::Refused(why)),
            Verdict::Ready => {}
        }
        parts.target = t.elapsed();
        c.write_all(&[GO])
            .and_then(|()| c.flush())
            .map_err(|e| MigrationError::Handover(e.to_string()))?;
        let paused_at = ram.paused_at.unwrap_or(t0);
        Ok(MigrationReport {
            to: to.clone(),
            total: t0.elapsed(),
            downtime: paused_at.elapsed(),
            bytes,
            ram,
            state_bytes: state.len() as u64,
            downtime_parts: parts,
        })
    })();
    match result.map_err(|e| refusal_behind(&conn, e)) {
        Ok(report) => {
            src.finish(&report);
            stop_tracking(Some(log));
            Ok(report)
        }
        Err(e) => {
            stop_tracking(Some(log));
            if paused {
                if let Err(r) = src.resume() {
                    return Err(MigrationError::Handover(format!(
                        "{e}; and the VM could not be resumed: {r}"
                    )));
                }
            }
            Err(e)
        }
    }
}

/// How long the source waits for a verdict after its stream could not be written.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// A stream write that failed because the target refused the stream and closed (it sends
/// its verdict first, so the verdict may wait in the socket even when the close reset the
/// connection): that refusal, else `e` itself.
pub(super) fn refusal_behind(conn: &TcpStream, e: MigrationError) -> MigrationError {
    let write_failed = matches!(
        e,
        MigrationError::Stream(StreamError::Io(_))
            | MigrationError::Precopy(PrecopyError::Stream(StreamError::Io(_)))
    );
    let mut c = conn;
    if !write_failed || c.set_read_timeout(Some(REFUSAL_WAIT)).is_err() {
        return e;
    }
    match read_verdict(&mut c) {
        Ok(Verdict::Refused(why)) => MigrationError::Refused(why),
        _ => e,
    }
}
