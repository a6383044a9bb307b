//! Snapshot, restore and clones of a running guest, timed and checked.
//!
//! The guest is the built-in kernel in `counter` mode (a step every millisecond of PV
//! clock time: a PV block read-back of the previous step's record, a write of this one, a
//! console line) with a 1 MiB disk:
//!
//! 1. **Snapshots**: `snapshots` times pause, capture, write `vm.mem` (sparse) and
//!    `vm.state`, resume, while the guest counts. Checked: the guest counted on across all
//!    of them (every step once, in order, the clock never back).
//! 2. The last snapshot is of the paused guest, which is then stopped: its disk is the
//!    snapshot's disk (the base of the restores' overlays).
//! 3. **Restores**: `restores` times, one after the other, the snapshot restored with its
//!    own copy-on-write disk over the base ([`super::clone_disk`]), timed up to the vCPU's
//!    first `KVM_RUN`, run until the guest wrote its next step, stopped. Checked: the guest
//!    went on at the step after the snapshot's, its disk holds its own last step.
//! 4. **Clones**: `clones` restores of the snapshot at once, each with its own disk; the
//!    mappings of `vm.mem` are measured while all run (shared page cache against pages
//!    copied on write). Checked: as a restore, each; every clone's disk holds a record of
//!    its own; the base image is unchanged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::io::disk::{DiskConfig, OverlayKind};
use pvkit_vmm::{ConsoleKind, KernelSource, RunOutcome, StopReason, VmConfig};

use super::counter::{self, Step};
use super::smaps::{self, FileMappings};
use super::{clone_disk, wait_until, LifecycleError, Running};

/// How long the guest may take to reach a step (boot, or a restore's next step); far
/// above the milliseconds it takes.
const STEP_WAIT: Duration = Duration::from_secs(30);
/// Least time between two timed snapshots: the guest counts in between.
const BETWEEN_SNAPSHOTS: Duration = Duration::from_millis(20);
/// Bytes of the guest's disk.
const DISK_BYTES: usize = 1 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Snapshots of the running guest to time (≥ 1).
    pub snapshots: u32,
    /// Restores to time, one after the other (≥ 1).
    pub restores: u32,
    /// Clones running at once (≥ 1).
    pub clones: u32,
    /// Where the snapshot, the disk and the overlays go (created if missing).
    pub dir: PathBuf,
    /// Confine the VMs' threads with seccomp.
    pub seccomp: bool,
    /// Watchdog of each VM.
    pub timeout: Duration,
}

/// One timed snapshot of the running guest.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotSample {
    /// Pause, capture, write, resume: the whole request.
    pub total: Duration,
    /// Of which pausing.
    pub pause: Duration,
    /// Bytes of RAM data written (the memory file is sparse).
    pub written: u64,
    /// Pages left as holes because they were zero.
    pub zero_pages: u64,
    /// Bytes of the state file.
    pub state_bytes: u64,
}

/// One timed restore.
#[derive(Clone, Copy, Debug)]
pub struct RestoreSample {
    /// From the start of the restore to the vCPU's first `KVM_RUN`.
    pub to_running: Duration,
    /// To the restored guest's first exit (it ran guest code).
    pub to_first_exit: Option<Duration>,
    /// Steps the restored guest made (checked continuous).
    pub steps: u64,
}

/// The clones.
#[derive(Clone, Debug)]
pub struct CloneSample {
    /// Per clone, as a restore (times from the start of the first clone).
    pub clones: Vec<RestoreSample>,
    /// How the clones' disks were made.
    pub overlay: OverlayKind,
    /// The mappings of the snapshot's memory file while all clones ran.
    pub memory: Option<FileMappings>,
}

/// Everything measured, all checks passed.
#[derive(Clone, Debug)]
pub struct SnapshotResults {
    /// Per snapshot.
    pub snapshots: Vec<SnapshotSample>,
    /// Per restore.
    pub restores: Vec<RestoreSample>,
    /// The clones.
    pub clones: CloneSample,
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// The original guest's exits of kind `Interrupted` (each pause kicks its vCPU out of
    /// `KVM_RUN`) over its run: the timed snapshots and the last one.
    pub pause_exits: u64,
    /// Steps the original made (checked continuous across the timed snapshots).
    pub original_steps: u64,
    /// The guest's TSC rate, if known.
    pub tsc_khz: Option<u32>,
}

fn config(cfg: &SnapshotConfig, disk: DiskConfig) -> VmConfig {
    VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: cfg.mem_mib,
        // Counts for ever: the host stops it.
        cmdline: "counter=1000000000 counter_ms=1".into(),
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: cfg.timeout,
        seccomp: cfg.seccomp,
        disk: Some(disk),
        ..VmConfig::default()
    }
}

/// The steps of a VM stopped by the host (a guest fault or exit is an error).
fn stopped_steps(o: &RunOutcome, who: &str) -> Result<Vec<Step>, LifecycleError> {
    let console = String::from_utf8_lossy(&o.console);
    if !matches!(o.stop, StopReason::Timeout { .. }) {
        return Err(LifecycleError::Check(format!(
            "the {who} stopped by itself: {}; console: {}",
            o.stop,
            console.lines().last().unwrap_or("")
        )));
    }
    Ok(counter::steps(&console))
}

/// Runs the snapshots, restores and clones.
pub fn run(cfg: &SnapshotConfig) -> Result<SnapshotResults, LifecycleError> {
    std::fs::create_dir_all(&cfg.dir).map_err(LifecycleError::io("directory", &cfg.dir))?;
    let dir = cfg
        .dir
        .canonicalize()
        .map_err(LifecycleError::io("directory", &cfg.dir))?;
    let base = dir.join("disk.img");
    std::fs::write(&base, vec![0u8; DISK_BYTES])
        .map_err(LifecycleError::io("disk image", &base))?;
    let disk = DiskConfig {
        path: base.clone(),
        read_only: false,
        base: None,
    };
    let vm = Running::start(config(cfg, disk))?;
    wait_until(STEP_WAIT, "the guest made no step", || {
        Ok(counter::read_record(&base)?.filter(|r| r.0 >= 2))
    })?;

    let mut snapshots = Vec::new();
    let timed = dir.join("snap-timed");
    for _ in 0..cfg.snapshots {
        let t = Instant::now();
        let r = vm
            .ctl()
            .snapshot(&timed)
            .map_err(|e| LifecycleError::Control(format!("snapshot: {e}")))?;
        snapshots.push(SnapshotSample {
            total: t.elapsed(),
            pause: r.pause,
            written: r.stats.memory.written_bytes,
            zero_pages: r.stats.memory.zero_pages,
            state_bytes: r.stats.state_bytes,
        });
        std::thread::sleep(BETWEEN_SNAPSHOTS);
    }
    let _ = std::fs::remove_dir_all(&timed);
    // The snapshot to restore: of the paused guest, which then stops, so that the disk
    // stays as the snapshot has it.
    let snap = dir.join("snap");
    vm.ctl()
        .pause()
        .map_err(|e| LifecycleError::Control(format!("pause: {e}")))?;
    vm.ctl()
        .snapshot(&snap)
        .map_err(|e| LifecycleError::Control(format!("snapshot: {e}")))?;
    let original = vm.stop()?;
    let before_steps = stopped_steps(&original, "original guest")?;
    counter::check_continued((0, 0), &before_steps)
        .map_err(|e| LifecycleError::Check(format!("across the snapshots: {e}")))?;
    let before = *before_steps
        .last()
        .ok_or_else(|| LifecycleError::Check("the original printed no step".into()))?;
    let base_bytes = std::fs::read(&base).map_err(LifecycleError::io("disk image", &base))?;
    // The guest writes a step's record before its line: the base holds step `before` or
    // the next. A restore has printed a line of its own once its disk holds the step after
    // that.
    let on_base = counter::record(&base_bytes)
        .ok_or_else(|| LifecycleError::Check("the snapshot's disk holds no record".into()))?;
    let ran = Ran {
        before,
        floor: on_base.0 + 1,
    };

    let mut restores = Vec::new();
    for i in 0..cfg.restores {
        let overlay = dir.join(format!("restore{i}.img"));
        let (disk, _) = clone_disk(&base, &overlay)?;
        let t0 = Instant::now();
        let vm = Running::start(restore_config(cfg, &snap, disk, t0))?;
        let sample = run_restored(vm, &overlay, ran)?;
        restores.push(sample);
        let _ = std::fs::remove_file(&overlay);
    }

    let clones = run_clones(cfg, &dir, &snap, &base, ran)?;
    let now = std::fs::read(&base).map_err(LifecycleError::io("disk image", &base))?;
    if now != base_bytes {
        return Err(LifecycleError::Check(
            "the base image changed under the restores and clones".into(),
        ));
    }
    let _ = std::fs::remove_dir_all(&snap);
    Ok(SnapshotResults {
        snapshots,
        restores,
        clones,
        ram_bytes: cfg.mem_mib << 20,
        pause_exits: original.ledger.count(ExitKind::Interrupted),
        original_steps: before_steps.len() as u64,
        tsc_khz: original.platform.tsc_khz,
    })
}

fn restore_config(cfg: &SnapshotConfig, snap: &Path, disk: DiskConfig, t0: Instant) -> VmConfig {
    VmConfig {
        restore: Some(snap.to_owned()),
        started_at: Some(t0),
        ..config(cfg, disk)
    }
}

/// Where the snapshot left the guest.
#[derive(Clone, Copy, Debug)]
struct Ran {
    /// The last step the original printed.
    before: Step,
    /// A restore has printed a step of its own once its disk holds a step above this.
    floor: u64,
}

/// Waits until the restored guest made a step of its own, stops it and checks what it did.
fn run_restored(vm: Running, overlay: &Path, ran: Ran) -> Result<RestoreSample, LifecycleError> {
    wait_for_step(overlay, ran)?;
    check_restored(vm.stop()?, overlay, ran)
}

fn wait_for_step(overlay: &Path, ran: Ran) -> Result<(), LifecycleError> {
    wait_until(STEP_WAIT, "the restored guest made no step", || {
        Ok(counter::read_record(overlay)?
            .filter(|r| r.0 > ran.floor)
            .map(drop))
    })
}

fn check_restored(
    o: RunOutcome,
    overlay: &Path,
    ran: Ran,
) -> Result<RestoreSample, LifecycleError> {
    let after = stopped_steps(&o, "restored guest")?;
    let check = |r: Result<(), String>| r.map_err(LifecycleError::Check);
    check(counter::check_continued(ran.before, &after))?;
    let last = *after
        .last()
        .ok_or_else(|| LifecycleError::Check("the restored guest printed no step".into()))?;
    check(counter::check_record(counter::read_record(overlay)?, last))?;
    Ok(RestoreSample {
        to_running: o.timings.to_guest_entry,
        to_first_exit: o.timings.to_first_exit,
        steps: after.len() as u64,
    })
}

fn run_clones(
    cfg: &SnapshotConfig,
    dir: &Path,
    snap: &Path,
    base: &Path,
    ran: Ran,
) -> Result<CloneSample, LifecycleError> {
    let t0 = Instant::now();
    let mut running = Vec::new();
    let mut kinds = Vec::new();
    for i in 0..cfg.clones {
        let overlay = dir.join(format!("clone{i}.img"));
        let _ = std::fs::remove_file(&overlay);
        let (disk, kind) = clone_disk(base, &overlay)?;
        kinds.push(kind);
        running.push((
            Running::start(restore_config(cfg, snap, disk, t0))?,
            overlay,
        ));
    }
    for (_, overlay) in &running {
        wait_for_step(overlay, ran)?;
    }
    let memory = smaps::of_file(&snap.join(pvkit_vmm::snapshot::MEMORY_FILE));
    for (vm, _) in &running {
        vm.ctl().request_stop();
    }
    let mut clones = Vec::new();
    let mut records = Vec::new();
    for (vm, overlay) in running {
        clones.push(check_restored(vm.finish()?, &overlay, ran)?);
        records.extend(counter::read_record(&overlay)?);
        let _ = std::fs::remove_file(&overlay);
    }
    counter::check_isolated(&records).map_err(LifecycleError::Check)?;
    let overlay = kinds.first().copied().unwrap_or(OverlayKind::Block);
    if kinds.iter().any(|k| *k != overlay) {
        return Err(LifecycleError::Check(format!(
            "the clones' disks were made in different ways: {kinds:?}"
        )));
    }
    Ok(CloneSample {
        clones,
        overlay,
        memory,
    })
}
