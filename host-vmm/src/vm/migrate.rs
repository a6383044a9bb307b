//! Live migration of a running VM, on its control handle ([`VmControl`]): the source side
//! ([`migrate`], from the control API's `migrate` request or [`MigrateAfter`]) and the
//! target side ([`run_incoming`], `pvkit run --incoming ADDR`). The protocol and the
//! pre-copy loop are [`crate::migration`]'s.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::VmFd;
use thiserror::Error;

use super::control::VmControl;
use super::{ControlHook, RunOutcome, StartGate, VmConfig, VmError};
use crate::devices::pv::free_page_hint::PvFreePageHint;
use crate::migration::auth::MigrationKey;
use crate::migration::precopy::PrecopyConfig;
use crate::migration::source::{migrate_to, MigrationError, MigrationReport, MigrationSource};
use crate::migration::stream::Received;
use crate::migration::target::{receive, Incoming, TargetError};
use crate::runtime::seccomp::{Confinement, SeccompError, ThreadKind};
use crate::runtime::sync::lock;
use crate::vstate::memory::GuestRam;
use crate::StopReason;

/// A [`VmControl`] as the migration sees it.
struct Source<'a> {
    ctl: &'a VmControl,
    /// Leave the stop to [`VmControl::apply_deferred_stop`].
    defer: bool,
}

impl MigrationSource for Source<'_> {
    fn vm_fd(&self) -> Option<Arc<VmFd>> {
        self.ctl.vm().fd.clone()
    }
    fn mem(&self) -> &GuestRam {
        self.ctl.vm().mem()
    }
    fn migration_key(&self) -> Option<Arc<MigrationKey>> {
        self.ctl.migration_key()
    }
    fn hints(&self) -> Option<Arc<PvFreePageHint>> {
        self.ctl.free_page_hint()
    }
    fn pause(&self) -> Result<(), String> {
        self.ctl
            .pause_for_migration()
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn resume(&self) -> Result<(), String> {
        self.ctl.resume().map_err(|e| e.to_string())
    }
    fn capture_state(&self) -> Result<Vec<u8>, String> {
        self.ctl.capture_state_file().map_err(|e| e.to_string())
    }
    fn finish(&self, report: &MigrationReport) {
        let stop = StopReason::Migrated {
            to: report.to.clone(),
            summary: report.summary(),
        };
        match self.defer {
            true => self.ctl.defer_stop(stop),
            false => self.ctl.finish_migrated(stop),
        }
    }
}

/// Live-migrates the VM of `ctl` to `to`. On success the VM has stopped
/// ([`StopReason::Migrated`]); on an error it runs on.
pub fn migrate(
    ctl: &VmControl,
    to: SocketAddr,
    config: PrecopyConfig,
) -> Result<MigrationReport, MigrationError> {
    ctl.check_migratable()
        .map_err(|e| MigrationError::Unsupported(e.to_string()))?;
    migrate_to(&Source { ctl, defer: false }, to, config)
}

/// [`migrate`] for a caller that must answer before the VM stops (the control API): on
/// success the VM stays paused, and stops for good at the caller's
/// [`VmControl::apply_deferred_stop`].
pub fn migrate_then_reply(
    ctl: &VmControl,
    to: SocketAddr,
    config: PrecopyConfig,
) -> Result<MigrationReport, MigrationError> {
    ctl.check_migratable()
        .map_err(|e| MigrationError::Unsupported(e.to_string()))?;
    migrate_to(&Source { ctl, defer: true }, to, config)
}

/// Migrates the VM a while after it starts (`pvkit run --migrate-to ADDR
/// --migrate-after-ms N`): a [`ControlHook`] that starts a thread which waits `after`, then
/// calls [`migrate`] and prints the outcome on stderr.
#[derive(Clone, Debug)]
pub struct MigrateAfter {
    /// The target.
    pub to: SocketAddr,
    /// How long after the start.
    pub after: Duration,
    /// Rounds and threshold.
    pub precopy: PrecopyConfig,
    /// Where the report goes (also printed on stderr).
    pub report: Arc<Mutex<Option<Result<MigrationReport, String>>>>,
    /// Confine the migration thread with its seccomp filter ([`ThreadKind::Migrate`]).
    pub seccomp: bool,
}

impl MigrateAfter {
    /// The hook for [`VmConfig::control`].
    pub fn hook(self) -> ControlHook {
        ControlHook(Arc::new(move |ctl: Arc<VmControl>| {
            let me = self.clone();
            let confinement = match Confinement::when(me.seccomp, ThreadKind::Migrate) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pvkit: cannot start the migration thread: {e}");
                    return;
                }
            };
            let spawned = std::thread::Builder::new()
                .name("pvkit-migrate".into())
                .spawn(move || {
                    // Confined before it waits: the stream carries guest memory out.
                    if let Some(c) = confinement {
                        if let Err(e) = c.apply() {
                            eprintln!("pvkit: migration failed, the VM runs on: {e}");
                            *lock(&me.report) = Some(Err(e.to_string()));
                            return;
                        }
                    }
                    std::thread::sleep(me.after);
                    let r = migrate(&ctl, me.to, me.precopy);
                    match &r {
                        Ok(rep) => eprintln!("pvkit: {}", rep.summary()),
                        Err(e) => eprintln!("pvkit: migration failed, the VM runs on: {e}"),
                    }
                    *lock(&me.report) = Some(r.map_err(|e| e.to_string()));
                });
            if let Err(e) = spawned {
                eprintln!("pvkit: cannot start the migration thread: {e}");
            }
        }))
    }
}

/// Errors of the target.
#[derive(Debug, Error)]
pub enum IncomingError {
    /// No connection came.
    #[error("incoming migration: cannot accept a connection: {0}")]
    Accept(std::io::Error),
    /// The stream was refused, or the hand-over failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The VM could not be rebuilt from what arrived (the source was told and runs on),
    /// or it ran and failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The receiving thread could not be confined with its seccomp filter.
    #[error("incoming migration: {0}")]
    Seccomp(#[from] SeccompError),
    /// The receiving thread could not be started, or panicked.
    #[error("incoming migration: the receiving thread: {0}")]
    Thread(std::io::Error),
}

/// What the target did: the stream, then the guest's run.
#[derive(Debug)]
pub struct IncomingOutcome {
    /// What the stream carried.
    pub received: Received,
    /// The guest's run on this host.
    pub outcome: RunOutcome,
}

/// The directory an incoming VM's memory and state files go to: under `/dev/shm` when it
/// exists (RAM-backed, like the RAM it stands for), else the temp dir.
pub fn default_incoming_dir() -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = match base.is_dir() {
        true => base.to_owned(),
        false => std::env::temp_dir(),
    };
    base.join(format!("pvkit-incoming-{}", std::process::id()))
}

/// The target: accepts one connection on `listener`, receives a VM of `ram_bytes` into
/// `dir` (authenticated with `config.migration_key` when set), rebuilds it with `config` (whose `restore` and `start_gate` are set here),
/// tells the source, and on its go runs the guest to the end. The directory's files are
/// removed once the VM is built (RAM is mapped from the memory file, which stays alive
/// while mapped).
pub fn run_incoming(
    listener: &TcpListener,
    ram_bytes: u64,
    config: &VmConfig,
    dir: &Path,
) -> Result<IncomingOutcome, IncomingError> {
    let (conn, _) = listener.accept().map_err(IncomingError::Accept)?;
    let _ = conn.set_nodelay(true);
    let key = config.migration_key.clone();
    let incoming = receive_confined(conn, ram_bytes, dir, key, config.seccomp)?;
    let received = incoming.received.clone();
    let slot: Arc<Mutex<Option<Incoming>>> = Arc::new(Mutex::new(Some(incoming)));
    let gate_slot = Arc::clone(&slot);
    let gate_dir = dir.to_owned();
    let mut cfg = config.clone();
    cfg.restore = Some(dir.to_owned());
    // The watchdog and the timings count from the arrival, not from the wait.
    cfg.started_at = Some(std::time::Instant::now());
    cfg.start_gate = Some(StartGate(Arc::new(move || {
        remove_snapshot_files(&gate_dir);
        let mut inc = lock(&gate_slot).take().ok_or("the hand-over ran twice")?;
        inc.ready().map_err(|e| e.to_string())
    })));
    let r = super::run(&cfg);
    remove_snapshot_files(dir);
    match r {
        Ok(outcome) => Ok(IncomingOutcome { received, outcome }),
        Err(e) => {
            // Built or not, the guest did not run here: the source must run on.
            if let Some(inc) = lock(&slot).take() {
                inc.refuse(&e.to_string());
            }
            Err(e.into())
        }
    }
}

/// [`receive`] on its own thread, `pvkit-incoming`, which confines itself first with the
/// incoming migration's filter when `seccomp` is set ([`ThreadKind::Incoming`]): the
/// stream is hostile input from whoever connected, parsed before any VM exists.
fn receive_confined(
    conn: std::net::TcpStream,
    ram_bytes: u64,
    dir: &Path,
    key: Option<Arc<MigrationKey>>,
    seccomp: bool,
) -> Result<Incoming, IncomingError> {
    let confinement = Confinement::when(seccomp, ThreadKind::Incoming)?;
    let dir = dir.to_owned();
    let thread = std::thread::Builder::new()
        .name("pvkit-incoming".into())
        .spawn(move || -> Result<Incoming, IncomingError> {
            if let Some(c) = confinement {
                c.apply()?;
            }
            Ok(receive(conn, ram_bytes, &dir, key.as_deref())?)
        })
        .map_err(IncomingError::Thread)?;
    thread
        .join()
        .map_err(|_| IncomingError::Thread(std::io::Error::other("it panicked")))?
}

fn remove_snapshot_files(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(crate::snapshot::MEMORY_FILE));
    let _ = std::fs::remove_file(dir.join(crate::snapshot::STATE_FILE));
    let _ = std::fs::remove_dir(dir);
}
