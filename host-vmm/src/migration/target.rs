//! The target of a migration: one TCP connection, the stream read into a snapshot
//! directory ([`receive`]: the memory file written page by page as rounds arrive, the
//! state file from the stream's state record), then the hand-over: the VM is rebuilt from
//! that directory by the ordinary restore path and the target says [`Incoming::ready`];
//! only after the source's go does the guest run. A refused stream gets
//! [`Incoming::refuse`] (or a dropped connection) and nothing runs.
//!
//! Before the stream the target sends its [`Hello`] (with a challenge when it has a key)
//! and, once the header (and handshake answer) is admitted, replies [`ACCEPT`] with its own
//! proof of the key as the message (empty without a key), or [`REFUSED`] with why.
//!
//! The hand-over after the end record, target → source: one byte, [`READY`] or
//! [`REFUSED`], then a `u32` length and that many bytes of UTF-8 message (at most
//! [`MAX_MESSAGE`]). Source → target: one byte, [`GO`]. The target runs the guest only on
//! `GO`; the source stops its VM only after sending it. A connection lost in between
//! leaves neither running (never both).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::auth::{target_proof, Hello, MigrationKey, RecordMac};
use super::stream::{
    admit_keyed, read_stream_with, Gate, Header, NoKey, PageSink, Received, StreamError, PAGE_SIZE,
    VERSION,
};
use crate::snapshot::{MEMORY_FILE, STATE_FILE};
use crate::vstate::dirty::PageBitmap;

/// The target rebuilt the VM and waits for [`GO`].
pub const READY: u8 = b'R';
/// The target refused the stream or could not rebuild the VM; a message follows.
pub const REFUSED: u8 = b'X';
/// The header (and the handshake) is admitted: records may follow.
pub const ACCEPT: u8 = b'A';
/// The source has stopped its VM: run.
pub const GO: u8 = b'G';
/// Longest hand-over message.
pub const MAX_MESSAGE: u32 = 1024;
/// How long each side waits for the other's hand-over byte.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the target waits for the next bytes of the stream before it refuses it (the
/// source sends continuously until the hand-over; its stop-and-copy takes milliseconds).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a refusal the target still reads, and drops, what the source sends for at most
/// this long: a socket closed with unread data resets the connection, and a source still
/// writing its stream would see the reset instead of the verdict.
pub const REFUSAL_DRAIN_TIME: Duration = Duration::from_secs(2);
/// ... and at most this many bytes (the stream of a large VM is not read to its end).
pub const REFUSAL_DRAIN_BYTES: u64 = 256 << 20;

/// Errors of the target.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The stream was refused.
    #[error("incoming migration refused: {0}")]
    Stream(#[from] StreamError),
    /// The snapshot directory could not be written.
    #[error("incoming migration: cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The hand-over with the source failed (the guest does not run).
    #[error("incoming migration: hand-over with the source failed: {0}")]
    Handover(String),
}

/// Received pages into the memory file: the file starts sparse (all zero), so a zero run
/// only rewrites pages the stream wrote earlier.
struct FileSink {
    file: File,
    written: PageBitmap,
}

impl PageSink for FileSink {
    fn page(&mut self, page: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, page * PAGE_SIZE)?;
        self.written.set(page);
        Ok(())
    }

    fn zeros(&mut self, first: u64, count: u64) -> std::io::Result<()> {
        let zero = [0u8; PAGE_SIZE as usize];
        for p in first..first.saturating_add(count) {
            if self.written.get(p) {
                self.file.write_all_at(&zero, p * PAGE_SIZE)?;
                self.written.clear(p);
            }
        }
        Ok(())
    }
}

/// A stream received completely into a snapshot directory, the connection kept for the
/// hand-over.
#[derive(Debug)]
pub struct Incoming {
    conn: TcpStream,
    /// The snapshot directory (memory file and state file).
    pub dir: PathBuf,
    /// What the stream carried.
    pub received: Received,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> TargetError + '_ {
    move |source| TargetError::Write {
        path: path.to_owned(),
        source,
    }
}

/// The target's [`Gate`]: the key check (or none), then [`ACCEPT`] with the target's proof.
struct Admit<'a> {
    conn: &'a TcpStream,
    key: Option<&'a MigrationKey>,
    challenge: [u8; 32],
}

impl Gate for Admit<'_> {
    fn admit(
        &mut self,
        header: &Header,
        raw: &[u8; 32],
        more: &mut dyn FnMut(&mut [u8]) -> Result<(), StreamError>,
    ) -> Result<Option<RecordMac>, StreamError> {
        let (mac, proof) = match self.key {
            Some(k) => {
                let a = admit_keyed(k, &self.challenge, header, raw, more)?;
                let proof = target_proof(k, &self.challenge, &a.source_nonce, raw);
                (Some(a.mac), proof.to_vec())
            }
            None => (NoKey.admit(header, raw, more)?, Vec::new()),
        };
        send_reply(self.conn, ACCEPT, &proof)?;
        Ok(mac)
    }
}

/// Reads one migration stream from `conn` for a VM of `ram_bytes` into `dir` (created;
/// existing snapshot files replaced), authenticated with `key` when given (then a stream
/// without a key, with another key or replayed is refused). On an error the source is
/// told ([`REFUSED`]) and the directory's files are removed.
pub fn receive(
    conn: TcpStream,
    ram_bytes: u64,
    dir: &Path,
    key: Option<&MigrationKey>,
) -> Result<Incoming, TargetError> {
    receive_with_idle_limit(conn, ram_bytes, dir, key, STREAM_IDLE_TIMEOUT)
}

/// [`receive`], a source silent for `idle` dropped.
pub(crate) fn receive_with_idle_limit(
    conn: TcpStream,
    ram_bytes: u64,
    dir: &Path,
    key: Option<&MigrationKey>,
    idle: Duration,
) -> Result<Incoming, TargetError> {
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mem_path = dir.join(MEMORY_FILE);
    let state_path = dir.join(STATE_FILE);
    let cleanup = || {
        let _ = std::fs::remove_file(&mem_path);
        let _ = std::fs::remove_file(&state_path);
    };
    let r = (|| -> Result<Received, TargetError> {
        let file = File::create(&mem_path).map_err(write_err(&mem_path))?;
        file.set_len(ram_bytes).map_err(write_err(&mem_path))?;
        let mut sink = FileSink {
            file,
            written: PageBitmap::new(ram_bytes / PAGE_SIZE),
        };
        // A source that stops sending is dropped, not waited for (bounded in time).
        conn.set_read_timeout(Some(idle)).map_err(StreamError::Io)?;
        let challenge = key.map_or([0; 32], MigrationKey::nonce);
        let hello = Hello {
            version: VERSION,
            keyed: key.is_some(),
            nonce: challenge,
        };
        (&conn)
            .write_all(&hello.encode())
            .map_err(StreamError::Io)?;
        let mut gate = Admit {
            conn: &conn,
            key,
            challenge,
        };
        let reader = BufReader::with_capacity(1 << 20, &conn);
        let received = read_stream_with(reader, ram_bytes, &mut sink, &mut gate)?;
        std::fs::write(&state_path, &received.state).map_err(write_err(&state_path))?;
        Ok(received)
    })()
    .map_err(|e| match e {
        TargetError::Stream(StreamError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            TargetError::Stream(StreamError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the source sent nothing for {idle:?}"),
            )))
        }
        other => other,
    });
    match r {
        Ok(received) => Ok(Incoming {
            conn,
            dir: dir.to_owned(),
            received,
        }),
        Err(e) => {
            cleanup();
            refuse_on(conn, &e.to_string());
            Err(e)
        }
    }
}

/// Sends [`REFUSED`] with `why`, ends the target's side of the connection (the source reads
/// the verdict, then end of stream) and drains the source's side within
/// [`REFUSAL_DRAIN_TIME`] and [`REFUSAL_DRAIN_BYTES`] before closing, so that the close
/// does not reset the connection under a source still writing its stream.
fn refuse_on(mut conn: TcpStream, why: &str) {
    if send_verdict(&mut conn, REFUSED, why).is_err() {
        return;
    }
    let _ = conn.shutdown(Shutdown::Write);
    drain(&mut conn, REFUSAL_DRAIN_TIME, REFUSAL_DRAIN_BYTES);
}

/// Reads and drops what `conn` delivers until its end, `within` passed or `max` bytes were
/// read, whichever comes first. Returns the bytes dropped.
fn drain(conn: &mut TcpStream, within: Duration, max: u64) -> u64 {
    let until = Instant::now() + within;
    let mut buf = vec![0u8; 64 << 10];
    let mut dropped = 0u64;
    while dropped < max {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let want = buf
            .len()
            .min(usize::try_from(max - dropped).unwrap_or(usize::MAX));
        let Some(chunk) = buf.get_mut(..want) else {
            break;
        };
        match conn.read(chunk) {
            Ok(0) => break,
            Ok(n) => dropped += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    dropped
}

fn send_verdict(conn: &mut TcpStream, code: u8, msg: &str) -> std::io::Result<()> {
    send_reply(conn, code, msg.as_bytes())
}

fn send_reply(mut conn: &TcpStream, code: u8, msg: &[u8]) -> std::io::Result<()> {
    let msg = msg.get(..MAX_MESSAGE as usize).unwrap_or(msg);
    let mut out = vec![code];
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(msg);
    conn.write_all(&out)?;
    conn.flush()
}

impl Incoming {
    /// The VM is rebuilt: tells the source and waits for its [`GO`]. `Ok` means run.
    pub fn ready(&mut self) -> Result<(), TargetError> {
        let fail = |e: std::io::Error| TargetError::Handover(e.to_string());
        send_verdict(&mut self.conn, READY, "").map_err(fail)?;
        self.conn
            .set_read_timeout(Some(HANDOVER_TIMEOUT))
            .map_err(fail)?;
        let mut b = [0u8; 1];
        self.conn.read_exact(&mut b).map_err(fail)?;
        if b[0] != GO {
            return Err(TargetError::Handover(format!(
                "expected the source's go, got byte {:#04x}",
                b[0]
            )));
        }
        Ok(())
    }

    /// The VM could not be rebuilt: tells the source (which resumes its VM).
    pub fn refuse(self, why: &str) {
        refuse_on(self.conn, why);
    }
}

/// The target's verdict as the source reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Header admitted, with the target's proof of the key (empty without a key).
    Accepted(Vec<u8>),
    /// Rebuilt, waiting for go.
    Ready,
    /// Refused, with the target's reason.
    Refused(String),
}

/// Reads the target's verdict (bounded message).
pub fn read_verdict(conn: &mut impl Read) -> std::io::Result<Verdict> {
    let mut h = [0u8; 5];
    conn.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "hand-over message too long",
        ));
    }
    let mut msg = vec![0u8; len as usize];
    conn.read_exact(&mut msg)?;
    match h[0] {
        ACCEPT => Ok(Verdict::Accepted(msg)),
        READY => Ok(Verdict::Ready),
        REFUSED => Ok(Verdict::Refused(String::from_utf8_lossy(&msg).into_owned())),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown hand-over byte {other:#04x}"),
        )),
    }
}
