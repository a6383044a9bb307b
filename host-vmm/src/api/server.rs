//! The control API server: a Unix socket, one JSON request per line ([`super::request`]),
//! served on one thread, one connection at a time, against a [`VmControl`].
//!
//! Bounds: a request line is at most [`MAX_REQUEST`] bytes (a longer one is answered with
//! an error and the connection closed); a connection may send at most
//! [`MAX_REQUESTS_PER_CONNECTION`] requests and must send each within [`IDLE_TIMEOUT`];
//! connections are served one at a time and at most [`BACKLOG`] wait to be accepted. The
//! server thread ends when the VM's vCPU thread has ended.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::request::{
    parse, BalloonReply, Request, Response, SnapshotReply, StatsReply, MAX_REQUEST,
};
use crate::devices::pv::balloon::{BalloonStats, TargetStatus};
use crate::runtime::seccomp::{Confinement, SeccompError, ThreadKind};
use crate::vm::control::VmControl;

/// Most requests on one connection.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 64;
/// How long a connection may stay silent.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections waiting to be accepted.
pub const BACKLOG: i32 = 8;
/// How often the accept loop looks whether the VM has ended.
const POLL: Duration = Duration::from_millis(20);

/// Why the API socket could not be set up.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Something is at the path already.
    #[error("the API socket path {0} exists; remove it or choose another")]
    Exists(PathBuf),
    /// The API thread's seccomp filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Binding or configuring the socket failed.
    #[error("cannot serve the API on {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound API socket, not yet serving (bind early to report errors before the VM runs).
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiServer {
    /// Binds `path` (which must not exist) with a backlog of [`BACKLOG`].
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiError::Exists(path.to_owned()));
        }
        let err = |source| ApiError::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        // SAFETY: `listen` on the listener's own open socket fd; it only changes the backlog.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves `ctl` on a thread (`pvkit-api`) until the VM ends; the socket file is removed
    /// then. With `confine`, the thread first confines itself with the API filter
    /// ([`ThreadKind::Api`]: no new sockets, no `exec`, only the KVM state reads).
    pub fn serve(
        self,
        ctl: Arc<VmControl>,
        confine: bool,
    ) -> Result<std::thread::JoinHandle<()>, ApiError> {
        let confinement = match confine {
            true => Some(Confinement::new(ThreadKind::Api)?),
            false => None,
        };
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("pvkit-api".into())
            .spawn(move || {
                if let Some(c) = confinement {
                    if let Err(e) = c.apply() {
                        eprintln!("pvkit: API thread: {e}; the API is off");
                        return;
                    }
                }
                self.run(&ctl)
            })
            .map_err(|source| ApiError::Bind { path, source })
    }

    fn run(self, ctl: &VmControl) {
        while !ctl.is_stopped() {
            match self.listener.accept() {
                Ok((stream, _)) => serve_connection(stream, ctl),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(_) => std::thread::sleep(POLL),
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the requests of one connection (bounded in count, size and idle time).
fn serve_connection(stream: UnixStream, ctl: &VmControl) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IDLE_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let mut line = Vec::new();
        // One byte past the limit tells a too-long line from a full one.
        let limit = MAX_REQUEST as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        let (reply, close) = match (complete, line.len() >= MAX_REQUEST) {
            (_, true) => (Response::err(super::request::RequestError::TooLong), true),
            // End of stream without a newline: still one request.
            _ => (handle_line(&line, ctl), !complete),
        };
        let mut text = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        text.push(b'\n');
        let written = out.write_all(&text);
        // A migrated VM stops only now, after its reply is out (the process ends with it).
        ctl.apply_deferred_stop();
        if written.is_err() || close {
            return;
        }
    }
}

/// Parses and carries out one request line.
pub fn handle_line(line: &[u8], ctl: &VmControl) -> Response {
    match parse(line) {
        Ok(req) => handle(&req, ctl),
        Err(e) => Response::err(e),
    }
}

/// Carries out a checked request.
pub fn handle(req: &Request, ctl: &VmControl) -> Response {
    match req {
        Request::Pause => match ctl.pause() {
            Ok(t) => Response {
                paused_in_us: Some(u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
                ..Response::ok()
            },
            Err(e) => Response::err(e),
        },
        Request::Resume => match ctl.resume() {
            Ok(()) => Response::ok(),
            Err(e) => Response::err(e),
        },
        Request::Snapshot { dir } => match ctl.snapshot(dir) {
            Ok(r) => Response {
                snapshot: Some(SnapshotReply {
                    dir: dir.clone(),
                    ram_bytes: r.stats.memory.ram_bytes,
                    written_bytes: r.stats.memory.written_bytes,
                    zero_pages: r.stats.memory.zero_pages,
                    ballooned_pages: r.stats.memory.ballooned_pages,
                    state_bytes: r.stats.state_bytes,
                    pause_us: u64::try_from(r.pause.as_micros()).unwrap_or(u64::MAX),
                    write_us: u64::try_from(r.write.as_micros()).unwrap_or(u64::MAX),
                }),
                ..Response::ok()
            },
            Err(e) => Response::err(e),
        },
        Request::Stats => {
            let s = ctl.stats();
            Response {
                stats: Some(StatsReply {
                    paused: s.paused,
                    uptime_ms: u64::try_from(s.uptime.as_millis()).unwrap_or(u64::MAX),
                    exits_at_last_pause: s.ledger_total,
                    vm_clock_ns: s.vm_clock_ns,
                    mem_bytes: s.mem_bytes,
                    ballooned_pages: s.balloon.map(|b| b.ballooned_pages),
                    balloon: s.balloon.zip(s.balloon_target).map(balloon_reply),
                }),
                ..Response::ok()
            }
        }
        Request::Balloon { target_mib } => match ctl.set_balloon_target(*target_mib) {
            // The target as set (the guest has not read it yet) with the actual size now.
            Ok(target) => Response {
                balloon: ctl.stats().balloon.map(|b| balloon_reply((b, target))),
                ..Response::ok()
            },
            Err(e) => Response::err(format!("balloon: {e}")),
        },
        Request::Migrate { dest } => migrate(dest, ctl),
    }
}

/// The balloon's target and actual size in the reply's form.
fn balloon_reply((stats, target): (BalloonStats, TargetStatus)) -> BalloonReply {
    const PAGES_PER_MIB: u64 = 256;
    BalloonReply {
        target_pages: target.pages(),
        target_mib: target.pages() / PAGES_PER_MIB,
        actual_pages: stats.ballooned_pages,
        actual_mib: stats.ballooned_pages / PAGES_PER_MIB,
        generation: target.target.generation,
        target_read: target.read,
        inflate_calls: stats.inflate_calls,
        deflate_calls: stats.deflate_calls,
    }
}

/// `migrate`: live-migrates the VM to `dest` (resolved here); the reply comes after the
/// hand-over, when the VM runs on the target (or runs on here after an error).
fn migrate(dest: &str, ctl: &VmControl) -> Response {
    // An address, not a name: resolving a name here would need system calls the thread's
    // filter refuses (`pvkit ctl` resolves names before it sends the request).
    let addr: std::net::SocketAddr = match dest.parse() {
        Ok(a) => a,
        Err(_) => {
            return Response::err(format!(
                "migrate: {dest} is not an IP address and port (names are resolved by the client)"
            ))
        }
    };
    let config = crate::migration::precopy::PrecopyConfig::default();
    match crate::vm::migrate::migrate_then_reply(ctl, addr, config) {
        Ok(r) => {
            let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            Response {
                migration: Some(super::request::MigrationReply {
                    to: r.to.clone(),
                    total_us: us(r.total),
                    downtime_us: us(r.downtime),
                    bytes: r.bytes,
                    rounds: r.ram.rounds.len() as u64,
                    data_pages: r.ram.data_pages(),
                    hinted_pages: r.ram.hinted_pages(),
                    final_round_pages: r.ram.rounds.last().map_or(0, |x| x.dirty),
                    state_bytes: r.state_bytes,
                }),
                ..Response::ok()
            }
        }
        Err(e) => Response::err(format!("migrate: {e} (the VM runs on)")),
    }
}
