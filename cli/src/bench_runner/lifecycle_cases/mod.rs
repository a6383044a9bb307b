//! `pvkit bench --only snapshot` and `--only migrate`: the VM lifecycle of
//! [`crate::lifecycle`] as report cases. The VMM does the work here, not the guest, so
//! these cases are timed by the host clock and carry no guest cycles; their exact counts
//! are bytes and pages (written, sent, skipped), rounds and steps, in `bytes` and the
//! notes, and for a snapshot the exits its pause cost the guest. A measurement whose check
//! failed is a FAILED case with the reason.
//!
//! - `snapshot`: `snapshot-<RAM>` (pause + capture + sparse write + resume of the
//!   running guest), `restore-to-running` (up to the vCPU's first `KVM_RUN`, then the
//!   guest's continuation checked), `clone-x<N>` (N restores at once sharing the memory
//!   file, each on its own copy-on-write disk).
//! - `migrate`: `live-<RAM>`, the PV pair: `hints-off` (the guest stands for an unmodified
//!   one, the baseline) against `free-page-hints`; total time, bytes, rounds and downtime;
//!   and `live-<RAM>-authenticated`: `hints-off-authenticated`, the baseline with a
//!   migration key on both sides. Named with `--only` ([`LifecycleBench::EmulatedMigrate`]),
//!   also `emulated-devices`: the unmodified guest itself (UART, PIT, ATA, NE2000), which
//!   takes seconds of ticks.

use std::collections::BTreeMap;
use std::time::Duration;

use pvkit_report::{Case, Kind, LatencyMethod};
use pvkit_vmm::bench::percentile;

use super::cases::failed_case;
use super::BenchConfig;
use crate::lifecycle::LifecycleError;

mod migrate;
mod snapshot;

use migrate::{emulated_migrate_cases, migrate_cases};
use snapshot::snapshot_cases;
pub use snapshot::snapshot_report;

/// A lifecycle benchmark `pvkit bench` runs besides the device boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LifecycleBench {
    /// Snapshot, restore and clones of a running 128 MiB guest.
    Snapshot,
    /// Live migration of a 128 MiB guest over loopback, with free-page hints and without.
    Migrate,
    /// Live migration of the unmodified guest on emulated devices only (`emuload`): its
    /// ticks take seconds, so it runs only when `migrate` is named (`--only migrate`), not
    /// in the default run.
    EmulatedMigrate,
}

impl LifecycleBench {
    /// The default run's, in run order.
    pub const ALL: [LifecycleBench; 2] = [LifecycleBench::Snapshot, LifecycleBench::Migrate];

    /// What `--only NAME` runs (`NAME` is `snapshot` or `migrate`), in run order.
    pub fn named(name: &str) -> &'static [LifecycleBench] {
        match name {
            "snapshot" => &[LifecycleBench::Snapshot],
            "migrate" => &[LifecycleBench::Migrate, LifecycleBench::EmulatedMigrate],
            _ => &[],
        }
    }

    /// The name in `--only` and in reports (the cases' device).
    pub fn name(self) -> &'static str {
        match self {
            LifecycleBench::Snapshot => "snapshot",
            LifecycleBench::Migrate | LifecycleBench::EmulatedMigrate => "migrate",
        }
    }

    /// Cases it reports (for the progress bar).
    pub fn expected_cases(self) -> u64 {
        match self {
            LifecycleBench::Snapshot => 3,
            LifecycleBench::Migrate => 2,
            LifecycleBench::EmulatedMigrate => 1,
        }
    }
}

/// Ticks (≥ 1 ms each) the workload still has to run when the migration starts: the
/// source must still run the guest at the stop-and-copy, so these cover the whole
/// pre-copy (all of RAM without hints: ~0.15 s on the idle machine in a release build,
/// up to ~0.9 s seen under load) with room.
pub const MIGRATION_ROOM_TICKS: u64 = 3000;

/// Ticks of the emulated guest (≥ [`crate::lifecycle::migrate::EMU_TICK_MS`] ms each,
/// about 7 ms of work on this machine) after the migration starts: ≥ 2.4 s of room for
/// the pre-copy of all its RAM (3.2 s seen on a loaded machine is covered by the retry with
/// 4× the room).
pub const EMU_MIGRATION_ROOM_TICKS: u64 = 600;

/// How much to run: small enough that the default `pvkit bench` stays short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleSizes {
    /// Timed snapshots, and timed restores.
    pub snapshots: u32,
    /// Clones at once.
    pub clones: u32,
    /// Migrations each way.
    pub migrations: u32,
    /// Workload ticks of each migration (≥ 1 ms each).
    pub ticks: u64,
    /// The tick the migration starts at.
    pub migrate_at: u64,
    /// Ticks of each migration of the emulated guest.
    pub emu_ticks: u64,
    /// The tick its migration starts at.
    pub emu_migrate_at: u64,
}

impl LifecycleSizes {
    /// The sizes for `quick` and `iterations` (which multiplies the snapshots, restores and
    /// migrations).
    pub fn new(quick: bool, iterations: u32) -> Self {
        let n = iterations.max(1);
        match quick {
            true => Self {
                snapshots: 3 * n,
                clones: 2,
                migrations: n,
                ticks: 100 + MIGRATION_ROOM_TICKS,
                migrate_at: 100,
                emu_ticks: 100 + EMU_MIGRATION_ROOM_TICKS,
                emu_migrate_at: 100,
            },
            false => Self {
                snapshots: 10 * n,
                clones: 4,
                migrations: n,
                ticks: 200 + MIGRATION_ROOM_TICKS,
                migrate_at: 200,
                emu_ticks: 200 + EMU_MIGRATION_ROOM_TICKS,
                emu_migrate_at: 200,
            },
        }
    }
}

/// What the lifecycle benchmarks produced.
#[derive(Debug, Default)]
pub struct LifecycleOutcome {
    /// The cases.
    pub cases: Vec<Case>,
    /// Why cases failed, as `device: reason` lines.
    pub problems: Vec<String>,
    /// The guests' TSC rate, if a VM ran.
    pub tsc_khz: Option<u32>,
}

/// Runs `which` with the sizes of `cfg` in a temporary directory (removed after).
pub fn run(
    which: &[LifecycleBench],
    cfg: &BenchConfig,
    on_start: &dyn Fn(&str),
) -> LifecycleOutcome {
    let sizes = LifecycleSizes::new(cfg.quick, cfg.iterations);
    let dir = std::env::temp_dir().join(format!("pvkit-bench-lifecycle-{}", std::process::id()));
    let mut out = LifecycleOutcome::default();
    for &b in which {
        on_start(b.name());
        match b {
            LifecycleBench::Snapshot => snapshot_cases(cfg, &sizes, dir.join("snapshot"), &mut out),
            LifecycleBench::Migrate => migrate_cases(cfg, &sizes, dir.join("migrate"), &mut out),
            LifecycleBench::EmulatedMigrate => {
                emulated_migrate_cases(cfg, &sizes, dir.join("migrate-emu"), &mut out)
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

pub(super) fn mib(bytes: u64) -> String {
    format!("{}MiB", bytes >> 20)
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A case timed by the host clock: `samples` are the operations' times.
pub(super) fn host_case(
    device: &str,
    variant: &str,
    kind: Kind,
    workload: String,
    samples: &[Duration],
    bytes: u64,
    unit: &str,
) -> Case {
    let mut ns: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
    ns.sort_unstable();
    let total: u64 = ns.iter().sum();
    let ops = ns.len() as u64;
    let mean = total as f64 / ops.max(1) as f64;
    Case {
        device: device.into(),
        variant: variant.into(),
        kind,
        workload,
        ops,
        bytes,
        userspace_exits_per_op: f64::NAN,
        exits_by_kind: BTreeMap::new(),
        in_kernel_notifications_per_op: 0.0,
        kernel_exits_per_op: BTreeMap::new(),
        guest_cycles_per_op: f64::NAN,
        guest_cycles_per_op_median: f64::NAN,
        guest_cycles_per_op_p99: f64::NAN,
        ns_per_op: mean,
        ns_per_op_p50: Some(percentile(&ns, 50) as f64),
        ns_per_op_p99: Some(percentile(&ns, 99) as f64),
        latency_method: Some(LatencyMethod::HostClock),
        latency_samples: ops,
        throughput: if total > 0 {
            ops as f64 * 1e9 / total as f64
        } else {
            f64::NAN
        },
        throughput_unit: unit.into(),
        verified: true,
        failure: None,
        speedup: None,
        notes: Vec::new(),
    }
}

pub(super) fn fail(
    out: &mut LifecycleOutcome,
    device: &str,
    variants: &[(&str, Kind)],
    workload: &str,
    e: &LifecycleError,
) {
    out.problems.push(format!("{device}: {e}"));
    for (variant, kind) in variants {
        let mut c = failed_case(device, variant, workload, e.to_string());
        c.kind = *kind;
        out.cases.push(c);
    }
}
