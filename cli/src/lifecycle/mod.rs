//! The VM lifecycle measured and checked: snapshot, restore and clones of a running
//! built-in guest in `counter` mode ([`snapshot`]), and live migration over loopback TCP of
//! the migration workload with free-page hints and without, and of the unmodified guest on
//! emulated devices only ([`migrate`]). `pvkit bench
//! --only snapshot` and `--only migrate` turn the results into report cases
//! (`bench_runner::lifecycle_cases`).
//!
//! Everything runs in this process through the library (`pvkit_vmm`): the VMs run on their
//! own threads, so a restore's time does not include starting a `pvkit` process. Every
//! measurement is checked before it counts ([`counter`], [`workload`], [`emuload`]: the guest continued
//! where it stopped, its counter and disk are continuous, clones are isolated, the exits of
//! a migrated run are exactly the guest's, hints saved at least the free fraction); a check
//! that fails is an error, never a number.

pub mod counter;
pub mod emuload;
pub mod migrate;
pub mod smaps;
pub mod snapshot;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pvkit_vmm::io::disk::{create_overlay, DiskConfig, OverlayKind};
use pvkit_vmm::vm::control::VmControl;
use pvkit_vmm::vm::ControlHook;
use pvkit_vmm::{RunOutcome, VmConfig, VmError};
use thiserror::Error;

/// How long a VM of these measurements may take to start and hand over its control handle.
const START_WAIT: Duration = Duration::from_secs(60);

/// Why a lifecycle measurement failed (it yields no figures).
#[derive(Debug, Error)]
pub enum LifecycleError {
    /// A file of the measurement could not be made or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A VM could not run, or its thread died.
    #[error("the VM could not run: {0}")]
    Vm(String),
    /// A control request (pause, snapshot, migrate) failed.
    #[error("{0}")]
    Control(String),
    /// A clone's disk could not be made.
    #[error("cannot create the overlay {overlay} over {base}: {reason}")]
    Overlay {
        /// The clone's disk.
        overlay: PathBuf,
        /// The image it is made over.
        base: PathBuf,
        /// Why.
        reason: String,
    },
    /// The guest's workload ended before the measurement could finish (a migration whose
    /// pre-copy outlasted the workload): a longer workload measures it.
    #[error("the workload ended before the stop-and-copy ({0}); it needs more ticks")]
    WorkloadEnded(String),
    /// What was measured did not check out: the path is broken.
    #[error("check failed: {0}")]
    Check(String),
}

impl LifecycleError {
    /// An [`LifecycleError::Io`] maker for `map_err`.
    pub fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| LifecycleError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// The thread a VM runs on.
type VmThread = std::thread::JoinHandle<Result<RunOutcome, VmError>>;

/// A VM running on its own thread, with its control handle. Dropped before
/// [`Running::finish`] (an early error), it stops the VM and waits for it, so no guest
/// outlives its measurement.
pub struct Running {
    ctl: Arc<VmControl>,
    thread: Option<VmThread>,
}

impl Running {
    /// Starts `cfg` on its own thread and waits until the VM is built (its control handle
    /// arrives).
    pub fn start(cfg: VmConfig) -> Result<Self, LifecycleError> {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let cfg = VmConfig {
            control: Some(ControlHook(Arc::new(move |ctl| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(ctl);
                }
            }))),
            ..cfg
        };
        let thread = std::thread::spawn(move || pvkit_vmm::run(&cfg));
        match rx.recv_timeout(START_WAIT) {
            Ok(ctl) => Ok(Self {
                ctl,
                thread: Some(thread),
            }),
            // The thread ended without a handle: its error says why.
            Err(_) => Err(LifecycleError::Vm(match join(thread) {
                Err(e) => e.to_string(),
                Ok(o) => format!("it stopped before it started: {}", o.stop),
            })),
        }
    }

    /// The VM's control handle.
    pub fn ctl(&self) -> &Arc<VmControl> {
        &self.ctl
    }

    /// Waits for the VM to end (it was stopped, or ends by itself); its outcome.
    pub fn finish(mut self) -> Result<RunOutcome, LifecycleError> {
        match self.thread.take() {
            Some(t) => join(t),
            None => Err(LifecycleError::Vm("the VM was already finished".into())),
        }
    }

    /// Stops the VM and waits for it.
    pub fn stop(self) -> Result<RunOutcome, LifecycleError> {
        self.ctl.request_stop();
        self.finish()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.ctl.request_stop();
            let _ = t.join();
        }
    }
}

fn join(vm: VmThread) -> Result<RunOutcome, LifecycleError> {
    vm.join()
        .map_err(|_| LifecycleError::Vm("the VM thread panicked".into()))?
        .map_err(|e| LifecycleError::Vm(e.to_string()))
}

/// Polls `done` every millisecond until it returns `Some` or `within` passed (then
/// [`LifecycleError::Check`] with `what`).
pub fn wait_until<T>(
    within: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<Option<T>, LifecycleError>,
) -> Result<T, LifecycleError> {
    let t = Instant::now();
    loop {
        if let Some(v) = done()? {
            return Ok(v);
        }
        if t.elapsed() > within {
            return Err(LifecycleError::Check(format!("{what} within {within:?}")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A clone's disk: `overlay` (which must not exist) made copy-on-write over `base` with
/// [`create_overlay`] (a reflink where the filesystem offers it, else a block-level
/// overlay), as the [`DiskConfig`] a restore uses, and how it was made.
pub fn clone_disk(
    base: &Path,
    overlay: &Path,
) -> Result<(DiskConfig, OverlayKind), LifecycleError> {
    let kind = create_overlay(base, overlay).map_err(|e| LifecycleError::Overlay {
        overlay: overlay.to_owned(),
        base: base.to_owned(),
        reason: e.to_string(),
    })?;
    let disk = DiskConfig {
        path: overlay.to_owned(),
        read_only: false,
        base: (kind == OverlayKind::Block).then(|| base.to_owned()),
    };
    Ok((disk, kind))
}

/// The median of `v` (the upper one of an even count; zero for none).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
