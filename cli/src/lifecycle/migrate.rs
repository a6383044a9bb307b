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
//! one. [`MigratingGuest::Emulated`] migrates the unmodified guest itself instead: the
//! built-in kernel's `emuload` (guest-kernel/src/emuload.rs) on the UART, the PIT, the ATA
//! disk and an NE2000 on the loopback backend, with no hypercall but its exit.
//!
//! Checked ([`super::workload`]): the source stopped as migrated and the target's guest
//! exited 0; every tick once and in order across both; every acknowledged write on the
//! disk; the exits of the whole run exactly the guest's; both ends counted the same stream
//! bytes; pages skipped as hinted free only with hints. The pair ([`check_pair`]): bytes
//! with hints at most those without times the free fraction left over. The emulated guest
//! ([`super::emuload`]): every tick once across both hosts, every acknowledged ATA write on
//! the disk, every UDP echo answered exactly once and none resent, the exits of the whole
//! run exact (UART bytes, ATA commands, NE2000 frames, one exit), no page skipped.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use pvkit_vmm::devices::legacy::ne2000::{NetBackendConfig, NetConfig};
use pvkit_vmm::io::disk::DiskConfig;
use pvkit_vmm::migration::precopy::PrecopyConfig;
use pvkit_vmm::migration::source::MigrationReport;
use pvkit_vmm::vm::migrate::{default_incoming_dir, migrate, run_incoming, IncomingOutcome};
use pvkit_vmm::{ConsoleKind, KernelSource, StopReason, VmConfig};

use super::{emuload, workload};
use super::{wait_until, LifecycleError, Running};

/// Bytes of the guest's disk.
const DISK_BYTES: usize = 1 << 20;
/// How long the workload may take to reach the migration's tick (it needs
/// [`MigrateConfig::migrate_at`] ms of guest time after its boot).
const REACH_WAIT: Duration = Duration::from_secs(60);
/// Least PIT milliseconds per tick of the emulated guest (a tick is about 7 ms of work on
/// this machine anyway).
pub const EMU_TICK_MS: u64 = 4;

/// The guest that migrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigratingGuest {
    /// The PV migration workload (`workload=`, PV console and block), with free-page hints
    /// or without (then it stands for an unmodified guest).
    Workload {
        /// A `FreePageHint` call per tick.
        hints: bool,
    },
    /// The unmodified guest on emulated devices only (`emuload=`: UART, PIT, ATA, NE2000
    /// on the loopback backend).
    Emulated,
}

impl MigratingGuest {
    fn hints(self) -> bool {
        self == MigratingGuest::Workload { hints: true }
    }

    fn dir_name(self) -> &'static str {
        match self {
            MigratingGuest::Workload { hints: true } => "hints",
            MigratingGuest::Workload { hints: false } => "nohints",
            MigratingGuest::Emulated => "emulated",
        }
    }

    /// The sector whose write at tick `at` shows the workload reached it.
    fn sector_of(self, at: u64) -> u64 {
        match self {
            MigratingGuest::Workload { .. } => workload::sector_of(at),
            MigratingGuest::Emulated => emuload::sector_of(at),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct MigrateConfig {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Ticks of the workload (≥ 1 ms each): the target runs those after the migration.
    pub ticks: u64,
    /// The migration starts once the workload wrote the disk at this tick (`0 < migrate_at
    /// < ticks`; for [`MigratingGuest::Workload`] a multiple of [`workload::DISK_EVERY`]).
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
    /// The guest that migrated.
    pub guest: MigratingGuest,
    /// The source's figures.
    pub report: MigrationReport,
    /// MiB of RAM the guest declared free (0: the emulated guest declares nothing).
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

/// Migrates `guest` once.
pub fn run_one(
    cfg: &MigrateConfig,
    guest: MigratingGuest,
) -> Result<MigrationSample, LifecycleError> {
    let hints = guest.hints();
    let emulated = guest == MigratingGuest::Emulated;
    check(
        cfg.migrate_at > 0
            && cfg.migrate_at < cfg.ticks
            && (emulated || cfg.migrate_at.is_multiple_of(workload::DISK_EVERY)),
        || format!("migrate_at {} with {} ticks", cfg.migrate_at, cfg.ticks),
    )?;
    let dir = cfg.dir.join(guest.dir_name());
    std::fs::create_dir_all(&dir).map_err(LifecycleError::io("directory", &dir))?;
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; DISK_BYTES])
        .map_err(LifecycleError::io("disk image", &disk))?;

    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(LifecycleError::io("loopback listener", &dir))?;
    let to = listener
        .local_addr()
        .map_err(LifecycleError::io("loopback listener", &dir))?;
    let (console, net, cmdline) = match guest {
        MigratingGuest::Workload { hints } => (
            ConsoleKind::Pv,
            None,
            format!(
                "workload={} workload_ms=1 workload_disk{}",
                cfg.ticks,
                if hints { " hints" } else { "" }
            ),
        ),
        MigratingGuest::Emulated => (
            ConsoleKind::Uart,
            Some(NetConfig {
                backend: NetBackendConfig::Loopback,
                mac: None,
                host_rtt: None,
            }),
            format!("emuload={} emuload_ms={EMU_TICK_MS}", cfg.ticks),
        ),
    };
    let target_cfg = VmConfig {
        console: Some(console),
        capture_console: true,
        timeout: cfg.timeout,
        seccomp: cfg.seccomp,
        net: net.clone(),
        migration_key: cfg.key.clone(),
        ..VmConfig::default()
    };
    let ram_bytes = cfg.mem_mib << 20;
    let target = std::thread::spawn(move || {
        run_incoming(&listener, ram_bytes, &target_cfg, &default_incoming_dir())
            .map_err(|e| e.to_string())
    });
    let source_cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: cfg.mem_mib,
        cmdline,
        console: Some(console),
        net,
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
                    .read_exact_at(&mut sector, guest.sector_of(at) * 512)
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
    let (free_mib, ticks_on_source) = match guest {
        MigratingGuest::Workload { .. } => {
            workload::check_continuity(&before, &after, cfg.ticks, &image)
                .map_err(LifecycleError::Check)?;
            workload::check_exits(&outcome.ledger, cfg.ticks, hints)
                .map_err(LifecycleError::Check)?;
            let free = workload::free_mib(&before)
                .ok_or_else(|| LifecycleError::Check("the workload printed no free line".into()))?;
            (free, workload::ticks(&before).len() as u64)
        }
        MigratingGuest::Emulated => {
            let (b, a) = (emuload::lines(&before), emuload::lines(&after));
            let all = emuload::joined(&b, &a);
            emuload::check_continuity(&all, &a, cfg.ticks, &image)
                .map_err(LifecycleError::Check)?;
            // Each byte printed is one UART write, on whichever host printed it.
            let uart_bytes = (source.console.len() + outcome.console.len()) as u64;
            emuload::check_exits(&outcome.ledger, cfg.ticks, uart_bytes)
                .map_err(LifecycleError::Check)?;
            let on_source = b.iter().filter(|l| emuload::tick(l).is_some()).count();
            (0, on_source as u64)
        }
    };
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
    let _ = std::fs::remove_dir_all(&dir);
    Ok(MigrationSample {
        guest,
        report,
        free_mib,
        mem_mib: cfg.mem_mib,
        ticks_on_source,
        ticks: cfg.ticks,
        tsc_khz: outcome.platform.tsc_khz,
    })
}
