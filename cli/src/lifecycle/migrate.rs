//! Live migration over loopback TCP, timed and checked, with free-page hints and without.
//!
//! A 128 MiB guest runs the migration workload (guest-kernel/src/workload.rs: a printed
//! tick every millisecond of PV clock time, 8 working-set pages dirtied per tick, a PV
//! block write every 4th tick acknowledged on the console, ~100 MiB of free RAM that holds
//! old data; with `hints` a `FreePageHint` call per tick). Once the workload wrote the disk
//! at tick [`MigrateConfig::migrate_at`], it migrates from a VM on one thread to a
//! target on another ([`pvkit_vmm::vm::migrate::run_incoming`] on a loopback port, as
//! `pvkit run --incoming` does), the same pre-copy as `pvkit ctl PATH migrate`; the target
//! runs the workload to its end. Without `hints` the same guest stands for an unmodified
//! one.
//!
//! Checked ([`super::workload`]): the source stopped as migrated and the target's guest
//! exited 0; every tick once and in order across both; every acknowledged write on the
//! disk; the exits of the whole run exactly the guest's; both ends counted the same stream
//! bytes; pages skipped as hinted free only with hints. The pair ([`check_pair`]): bytes
//! with hints at most those without times the free fraction left over.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use pvkit_vmm::io::disk::DiskConfig;
use pvkit_vmm::migration::precopy::PrecopyConfig;
use pvkit_vmm::migration::source::MigrationReport;
use pvkit_vmm::vm::migrate::{default_incoming_dir, migrate, run_incoming, IncomingOutcome};
use pvkit_vmm::{ConsoleKind, KernelSource, StopReason, VmConfig};

use super::workload;
use super::{wait_until, LifecycleError, Running};

/// Bytes of the guest's disk.
const DISK_BYTES: usize = 1 << 20;
/// How long the workload may take to reach the migration's tick (it needs
/// [`MigrateConfig::migrate_at`] ms of guest time after its boot).
const REACH_WAIT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Clone, Debug)]
pub struct MigrateConfig {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Ticks of the workload (≥ 1 ms each): the target runs those after the migration.
    pub ticks: u64,
    /// The migration starts once the workload wrote the disk at this tick (a multiple of
    /// [`workload::DISK_EVERY`], `0 < migrate_at < ticks`).
    pub migrate_at: u64,
    /// Where the disks go (created if missing).
    pub dir: PathBuf,
    /// Confine the VMs' threads with seccomp.
    pub seccomp: bool,
    /// Watchdog of each VM.
    pub timeout: Duration,
    /// Authenticate the stream with this key on both sides (`--migration-key`).
    pub key: Option<std::sync::Arc<pvkit_vmm::migration::auth::MigrationKey>>,
}

/// One migration, all checks passed.
#[derive(Clone, Debug)]
pub struct MigrationSample {
    /// The guest hinted its free pages.
    pub hints: bool,
    /// The source's figures.
    pub report: MigrationReport,
    /// MiB of RAM the guest declared free.
    pub free_mib: u64,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Ticks the source ran before the hand-over.
    pub ticks_on_source: u64,
    /// Ticks of the whole run.
    pub ticks: u64,
    /// The guest's TSC rate, if known.
    pub tsc_khz: Option<u32>,
}

impl MigrationSample {
    /// The guest's free RAM as a fraction of its RAM.
    pub fn free_fraction(&self) -> f64 {
        self.free_mib as f64 / self.mem_mib.max(1) as f64
    }
}

/// The PV pair checked: hints cut the bytes by at least the free fraction.
pub fn check_pair(with: &MigrationSample, without: &MigrationSample) -> Result<(), String> {
    workload::check_hints_saved(
        with.report.bytes,
        without.report.bytes,
        with.free_fraction(),
    )
}

fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), LifecycleError> {
    match ok {
        true => Ok(()),
        false => Err(LifecycleError::Check(why())),
    }
}

/// Migrates the workload once, with free-page hints or without.
pub fn run_one(cfg: &MigrateConfig, hints: bool) -> Result<MigrationSample, LifecycleError> {
    check(
        cfg.migrate_at > 0
            && cfg.migrate_at < cfg.ticks
            && cfg.migrate_at.is_multiple_of(workload::DISK_EVERY),
        || format!("migrate_at {} with {} ticks", cfg.migrate_at, cfg.ticks),
    )?;
    let dir = cfg.dir.join(if hints { "hints" } else { "nohints" });
    std::fs::create_dir_all(&dir).map_err(LifecycleError::io("directory", &dir))?;
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; DISK_BYTES])
        .map_err(LifecycleError::io("disk image", &disk))?;

    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(LifecycleError::io("loopback listener", &dir))?;
    let to = listener
        .local_addr()
        .map_err(LifecycleError::io("loopback listener", &dir))?;
    let target_cfg = VmConfig {
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: cfg.timeout,
        seccomp: cfg.seccomp,
        migration_key: cfg.key.clone(),
        ..VmConfig::default()
    };
    let ram_bytes = cfg.mem_mib << 20;
    let target = std::thread::spawn(move || {
        run_incoming(&listener, ram_bytes, &target_cfg, &default_incoming_dir())
            .map_err(|e| e.to_string())
    });
    let cmdline = format!(
        "workload={} workload_ms=1 workload_disk{}",
        cfg.ticks,
        if hints { " hints" } else { "" }
    );
    let source_cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: cfg.mem_mib,
        cmdline,
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: cfg.timeout,
        seccomp: cfg.seccomp,
        disk: Some(DiskConfig {
            path: disk.clone(),
            read_only: false,
            base: None,
        }),
        migration_key: cfg.key.clone(),
        ..VmConfig::default()
    };
    let result = Running::start(source_cfg).and_then(|source| {
        let at = cfg.migrate_at;
        let image = File::open(&disk).map_err(LifecycleError::io("disk image", &disk))?;
        wait_until(
            REACH_WAIT,
            &format!("the workload did not reach tick {at}"),
            || {
                let mut sector = [0u8; 512];
                image
                    .read_exact_at(&mut sector, workload::sector_of(at) * 512)
                    .map_err(LifecycleError::io("disk image", &disk))?;
                let tick = u64::from_le_bytes(sector[..8].try_into().unwrap_or_default());
                Ok((tick >= at).then_some(()))
            },
        )?;
        let report =
            migrate(source.ctl(), to, PrecopyConfig::default()).map_err(|e| {
                match source.ctl().is_stopped() {
                    true => LifecycleError::WorkloadEnded(e.to_string()),
                    false => LifecycleError::Control(format!("migration: {e}")),
                }
            })?;
        Ok((report, source.finish()?))
    });
    if result.is_err() {
        // A target still waiting for a connection gets one that closes at once (it
        // refuses the empty stream and ends).
        let _ = std::net::TcpStream::connect(to);
    }
    let target = target
        .join()
        .map_err(|_| LifecycleError::Vm("the target thread panicked".into()))?;
    let (report, source) = result?;
    let IncomingOutcome { received, outcome } =
        target.map_err(|e| LifecycleError::Vm(format!("target: {e}")))?;

    let before = String::from_utf8_lossy(&source.console).into_owned();
    let after = String::from_utf8_lossy(&outcome.console).into_owned();
    check(matches!(source.stop, StopReason::Migrated { .. }), || {
        format!("the source stopped with: {}", source.stop)
    })?;
    check(matches!(outcome.stop, StopReason::Exit(0)), || {
        format!(
            "the target's guest stopped with: {}; last line: {}",
            outcome.stop,
            after.lines().last().unwrap_or("")
        )
    })?;
    let image = std::fs::read(&disk).map_err(LifecycleError::io("disk image", &disk))?;
    workload::check_continuity(&before, &after, cfg.ticks, &image)
        .map_err(LifecycleError::Check)?;
    workload::check_exits(&outcome.ledger, cfg.ticks, hints).map_err(LifecycleError::Check)?;
    check(received.bytes == report.bytes, || {
        format!(
            "the source sent {} bytes, the target received {}",
            report.bytes, received.bytes
        )
    })?;
    check((report.ram.hinted_pages() > 0) == hints, || {
        format!(
            "{} pages skipped as hinted free with hints {}",
            report.ram.hinted_pages(),
            if hints { "on" } else { "off" }
        )
    })?;
    let free_mib = workload::free_mib(&before)
        .ok_or_else(|| LifecycleError::Check("the workload printed no free line".into()))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(MigrationSample {
        hints,
        report,
        free_mib,
        mem_mib: cfg.mem_mib,
        ticks_on_source: workload::ticks(&before).len() as u64,
        ticks: cfg.ticks,
        tsc_khz: outcome.platform.tsc_khz,
    })
}
