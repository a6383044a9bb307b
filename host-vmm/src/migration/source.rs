//! The source of a migration ([`migrate_to`]): connect, track dirty pages, pre-copy while
//! the guest runs, pause, final round, VM state, end record, then the hand-over of
//! [`super::target`]. Any failure before the target's `READY` resumes the VM and switches
//! tracking off: a failed migration leaves the source running. After `READY` the source
//! sends `GO` and its VM must stop ([`MigrationSource::finish`]).
//!
//! Before any of that, the handshake ([`super::auth`]): the target's hello, the header
//! (with the answer to the target's challenge when the VM has a migration key), the
//! target's accept (with its proof of the key). A key on one side only, a wrong key or a
//! target that does not prove the key ends the migration before tracking starts.

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use thiserror::Error;

use super::auth::{source_proof, tags_equal, target_proof, Hello, MigrationKey, RecordMac};
use super::precopy::{send_ram, PrecopyConfig, PrecopyError, RamStats};
use super::stream::{Header, StreamError, StreamWriter, VERSION};
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
    /// The key the VM was started with (`--migration-key`), if any.
    fn migration_key(&self) -> Option<Arc<MigrationKey>>;
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
    /// The handshake failed: not a pvkit target, another version, a key on one side only,
    /// or a target that cannot prove the key.
    #[error("migration handshake with {addr}: {why}")]
    Handshake {
        /// The target.
        addr: String,
        /// Why.
        why: String,
    },
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

enum Shake {
    Fail(String),
    Refused(String),
    Stream(StreamError),
}

impl From<StreamError> for Shake {
    fn from(e: StreamError) -> Self {
        Shake::Stream(e)
    }
}

impl From<std::io::Error> for Shake {
    fn from(e: std::io::Error) -> Self {
        Shake::Fail(format!(
            "no answer from the target ({e}); is it a pvkit of this version?"
        ))
    }
}

/// The source's side of the handshake: the target's hello, the header (and the answer to
/// its challenge), the target's accept; returns the writer, authenticating records when
/// both sides have the key.
fn handshake<W: Write>(
    conn: &TcpStream,
    out: W,
    header: Header,
    key: Option<&MigrationKey>,
) -> Result<StreamWriter<W>, Shake> {
    let mut c = conn;
    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut b = [0u8; super::auth::HELLO_LEN];
    c.read_exact(&mut b)?;
    let hello = Hello::decode(&b)
        .ok_or_else(|| Shake::Fail("the peer is not a pvkit migration target".into()))?;
    if hello.version != VERSION {
        return Err(Shake::Fail(format!(
            "the target reads migration stream version {}, this pvkit writes version {VERSION}",
            hello.version
        )));
    }
    let raw = header.encode();
    let mut w = StreamWriter::new(out, header)?;
    match (key, hello.keyed) {
        (None, false) => w.flush()?,
        (Some(k), true) => {
            let ns = k.nonce();
            w.answer(&hello.nonce, &ns, &source_proof(k, &hello.nonce, &ns, &raw))?;
            w.authenticate(RecordMac::new(k, &hello.nonce, &ns));
            let c = conn;
            return match read_verdict(&mut &*c)? {
                Verdict::Accepted(p) => {
                    let want = target_proof(k, &hello.nonce, &ns, &raw);
                    match <[u8; 32]>::try_from(p.as_slice()) {
                        Ok(p) if tags_equal(&p, &want) => Ok(w),
                        _ => Err(Shake::Fail(
                            "the target did not prove the migration key (a wrong key, or \
                             not the target you meant); nothing was sent"
                                .into(),
                        )),
                    }
                }
                Verdict::Refused(why) => Err(Shake::Refused(why)),
                Verdict::Ready => Err(Shake::Fail("unexpected hand-over byte".into())),
            };
        }
        // The header goes out anyway, so that the target can name the mismatch too.
        (None, true) => {
            w.flush()?;
            return Err(Shake::Fail(
                "the target requires a migration key and this VM has none: start it with \
                 --migration-key and the target's key file"
                    .into(),
            ));
        }
        (Some(_), false) => {
            w.flush()?;
            return Err(Shake::Fail(
                "this VM has a migration key but the target was started without one: start \
                 the target with --migration-key and the same key file (it would accept the \
                 stream unauthenticated)"
                    .into(),
            ));
        }
    }
    match read_verdict(&mut &*conn)? {
        Verdict::Accepted(p) if p.is_empty() => Ok(w),
        Verdict::Refused(why) => Err(Shake::Refused(why)),
        _ => Err(Shake::Fail("unexpected reply to the header".into())),
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
    let key = src.migration_key();
    let header = Header {
        ram_bytes: ram_size(src.mem()),
        authenticated: key.is_some(),
    };
    let out = BufWriter::with_capacity(1 << 20, &conn);
    let mut w = handshake(&conn, out, header, key.as_deref()).map_err(|e| match e {
        Shake::Fail(why) => MigrationError::Handshake {
            addr: to.clone(),
            why,
        },
        Shake::Refused(why) => MigrationError::Refused(why),
        Shake::Stream(e) => MigrationError::Stream(e),
    })?;
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
            Verdict::Accepted(_) => {
                return Err(MigrationError::Handover("unexpected accept".into()))
            }
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
