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
//!   one, the baseline) against `free-page-hints`; total time, bytes, rounds and downtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pvkit_report::{Case, Kind, LatencyMethod};
use pvkit_vmm::bench::percentile;

use super::cases::failed_case;
use super::BenchConfig;
use crate::lifecycle::migrate::{self, MigrateConfig, MigrationSample};
use crate::lifecycle::snapshot::{self, SnapshotConfig, SnapshotResults};
use crate::lifecycle::{median, LifecycleError};

/// A lifecycle benchmark `pvkit bench` runs besides the device boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LifecycleBench {
    /// Snapshot, restore and clones of a running 128 MiB guest.
    Snapshot,
    /// Live migration of a 128 MiB guest over loopback, with free-page hints and without.
    Migrate,
}

impl LifecycleBench {
    /// Both, in run order.
    pub const ALL: [LifecycleBench; 2] = [LifecycleBench::Snapshot, LifecycleBench::Migrate];

    /// The name in `--only` and in reports (the cases' device).
    pub fn name(self) -> &'static str {
        match self {
            LifecycleBench::Snapshot => "snapshot",
            LifecycleBench::Migrate => "migrate",
        }
    }

    /// Cases it reports (for the progress bar).
    pub fn expected_cases(self) -> u64 {
        match self {
            LifecycleBench::Snapshot => 3,
            LifecycleBench::Migrate => 2,
        }
    }
}

/// Ticks (≥ 1 ms each) the workload still has to run when the migration starts: the
/// source must still run the guest at the stop-and-copy, so these cover the whole
/// pre-copy (all of RAM without hints: ~0.15 s on the idle machine in a release build,
/// up to ~0.9 s seen under load) with room.
pub const MIGRATION_ROOM_TICKS: u64 = 3000;

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
            },
            false => Self {
                snapshots: 10 * n,
                clones: 4,
                migrations: n,
                ticks: 200 + MIGRATION_ROOM_TICKS,
                migrate_at: 200,
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
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn mib(bytes: u64) -> String {
    format!("{}MiB", bytes >> 20)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A case timed by the host clock: `samples` are the operations' times.
fn host_case(
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

fn fail(
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

fn snapshot_cases(
    cfg: &BenchConfig,
    sizes: &LifecycleSizes,
    dir: PathBuf,
    out: &mut LifecycleOutcome,
) {
    let run = snapshot::run(&SnapshotConfig {
        mem_mib: cfg.mem_mib,
        snapshots: sizes.snapshots,
        restores: sizes.snapshots,
        clones: sizes.clones,
        dir,
        seccomp: cfg.seccomp,
        timeout: cfg.timeout,
    });
    let ram = cfg.mem_mib << 20;
    match run {
        Ok(r) => {
            out.tsc_khz = out.tsc_khz.or(r.tsc_khz);
            out.cases.extend(snapshot_report(&r));
        }
        Err(e) => fail(
            out,
            "snapshot",
            &[("sparse-file", Kind::Pv), ("map-private", Kind::Pv)],
            &format!("snapshot-{}", mib(ram)),
            &e,
        ),
    }
}

/// The three snapshot cases of a run whose checks passed.
pub fn snapshot_report(r: &SnapshotResults) -> Vec<Case> {
    let device = "snapshot";
    let snaps: Vec<Duration> = r.snapshots.iter().map(|s| s.total).collect();
    let written: u64 = r.snapshots.iter().map(|s| s.written).sum();
    let last = r.snapshots.last();
    let mut snap = host_case(
        device,
        "sparse-file",
        Kind::Pv,
        format!("snapshot-{}", mib(r.ram_bytes)),
        &snaps,
        written,
        "snapshots/s",
    );
    // What a snapshot costs the guest in exits: its pause kicks the vCPU out of KVM_RUN
    // (one `Interrupted` exit, a second if a re-kick was needed). The last pause (of the
    // snapshot restored below) counts too.
    let pauses = r.snapshots.len() as f64 + 1.0;
    snap.userspace_exits_per_op = r.pause_exits as f64 / pauses;
    snap.exits_by_kind.insert(
        pvkit_vmm::exit::ledger::ExitKind::Interrupted.to_string(),
        snap.userspace_exits_per_op,
    );
    snap.notes.push(format!(
        "pause + capture + disk fdatasync + vm.mem + vm.state + resume of the running guest; \
         pause median {}",
        ms(median(r.snapshots.iter().map(|s| s.pause).collect()))
    ));
    if let Some(s) = last {
        snap.notes.push(format!(
            "memory file: {} KiB of data written of {} MiB ({} zero pages left as holes), \
             state file {} bytes",
            s.written / 1024,
            r.ram_bytes >> 20,
            s.zero_pages,
            s.state_bytes
        ));
    }
    snap.notes.push(format!(
        "checked: the guest counted on across all {} snapshots ({} steps, each once, clock \
         monotonic); exits/op: {} Interrupted exits over {pauses} pauses",
        r.snapshots.len(),
        r.original_steps,
        r.pause_exits,
    ));

    let runs: Vec<Duration> = r.restores.iter().map(|s| s.to_running).collect();
    let mut restore = host_case(
        device,
        "map-private",
        Kind::Pv,
        "restore-to-running".into(),
        &runs,
        0,
        "restores/s",
    );
    restore.notes.push(format!(
        "state file read and checked, vm.mem mapped MAP_PRIVATE, VM, vCPU and devices built, \
         KVM state set, up to the vCPU's first KVM_RUN; to the guest's first exit median {}",
        ms(median(
            r.restores.iter().filter_map(|s| s.to_first_exit).collect()
        ))
    ));
    restore.notes.push(format!(
        "checked: each restore went on at the step after the snapshot's ({} steps in all, \
         clock monotonic) on its own copy-on-write disk, which held its own last step",
        r.restores.iter().map(|s| s.steps).sum::<u64>()
    ));

    let c = &r.clones;
    let times: Vec<Duration> = c.clones.iter().map(|s| s.to_running).collect();
    let all = times.iter().max().copied().unwrap_or_default();
    let mut clone = host_case(
        device,
        "map-private",
        Kind::Pv,
        format!("clone-x{}", c.clones.len()),
        &times,
        0,
        "clones/s",
    );
    // One start after the other from one instant: the rate is N over the time to all.
    clone.throughput = if all.is_zero() {
        f64::NAN
    } else {
        c.clones.len() as f64 / all.as_secs_f64()
    };
    clone.notes.push(format!(
        "{} restores of one snapshot started at once, all running after {}; each disk a {}",
        c.clones.len(),
        ms(all),
        c.overlay
    ));
    if let Some(m) = &c.memory {
        clone.notes.push(format!(
            "vm.mem mapped {} times while all ran: {} KiB resident, {} KiB of it shared, {} \
             KiB copied on write",
            m.mappings, m.rss_kib, m.shared_kib, m.private_dirty_kib
        ));
    }
    clone.notes.push(
        "checked: each clone went on at the step after the snapshot's; every clone's disk \
         holds a record of its own (no clone saw another's writes); the base image is \
         unchanged"
            .into(),
    );
    vec![snap, restore, clone]
}

fn migrate_cases(
    cfg: &BenchConfig,
    sizes: &LifecycleSizes,
    dir: PathBuf,
    out: &mut LifecycleOutcome,
) {
    let mc = MigrateConfig {
        mem_mib: cfg.mem_mib,
        ticks: sizes.ticks,
        migrate_at: sizes.migrate_at,
        dir,
        seccomp: cfg.seccomp,
        timeout: cfg.timeout,
    };
    let workload = format!("live-{}", mib(cfg.mem_mib << 20));
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut failed: [Option<LifecycleError>; 2] = [None, None];
    for _ in 0..sizes.migrations {
        for (hints, samples) in [(false, &mut without), (true, &mut with)] {
            if failed[usize::from(hints)].is_some() {
                continue;
            }
            // A pre-copy slower than the room (a loaded machine) is measured again with a
            // longer workload, once.
            let longer = MigrateConfig {
                ticks: mc.migrate_at + 4 * (mc.ticks - mc.migrate_at),
                ..mc.clone()
            };
            let r = match migrate::run_one(&mc, hints) {
                Err(LifecycleError::WorkloadEnded(_)) => migrate::run_one(&longer, hints),
                r => r,
            };
            match r {
                Ok(s) => samples.push(s),
                Err(e) => failed[usize::from(hints)] = Some(e),
            }
        }
    }
    let [off_err, on_err] = failed;
    let mut off = match off_err {
        Some(e) => {
            fail(
                out,
                "migrate",
                &[("hints-off", Kind::Emulated)],
                &workload,
                &e,
            );
            None
        }
        None => Some(migrate_case(
            "hints-off",
            Kind::Emulated,
            &workload,
            &without,
        )),
    };
    let mut on = match on_err {
        Some(e) => {
            fail(
                out,
                "migrate",
                &[("free-page-hints", Kind::Pv)],
                &workload,
                &e,
            );
            None
        }
        None => Some(migrate_case("free-page-hints", Kind::Pv, &workload, &with)),
    };
    // The pair: every run with hints against every run without.
    if let (Some(c), Some(_)) = (&mut on, &off) {
        let bad = with
            .iter()
            .flat_map(|w| without.iter().map(move |o| migrate::check_pair(w, o)))
            .find_map(Result::err);
        match bad {
            Some(why) => {
                out.problems.push(format!("migrate: {why}"));
                c.failure = Some(why);
                c.verified = false;
            }
            None => c.notes.push(format!(
                "checked: bytes with hints ≤ bytes without × (1 − free fraction {:.3})",
                with.first().map_or(0.0, MigrationSample::free_fraction)
            )),
        }
    }
    out.tsc_khz = out
        .tsc_khz
        .or(with.iter().chain(&without).find_map(|s| s.tsc_khz));
    out.cases.extend(off.take());
    out.cases.extend(on.take());
}

fn migrate_case(variant: &str, kind: Kind, workload: &str, runs: &[MigrationSample]) -> Case {
    let totals: Vec<Duration> = runs.iter().map(|s| s.report.total).collect();
    let bytes = runs.iter().map(|s| s.report.bytes).sum();
    let mut c = host_case(
        "migrate",
        variant,
        kind,
        workload.into(),
        &totals,
        bytes,
        "migrations/s",
    );
    let list =
        |f: &dyn Fn(&MigrationSample) -> String| runs.iter().map(f).collect::<Vec<_>>().join(", ");
    c.notes.push(format!(
        "downtime (pause → target's go) {}: pause / final round / state capture / target \
         rebuild µs {}",
        list(&|s| ms(s.report.downtime)),
        list(&|s| {
            let p = &s.report.downtime_parts;
            format!(
                "{}/{}/{}/{}",
                p.pause.as_micros(),
                p.final_round.as_micros(),
                p.capture.as_micros(),
                p.target.as_micros()
            )
        })
    ));
    c.notes.push(format!(
        "bytes sent {}; rounds {}; pages with content {}; pages skipped as hinted free {}; \
         zero pages {}; state {} bytes",
        list(&|s| s.report.bytes.to_string()),
        list(&|s| s.report.ram.rounds.len().to_string()),
        list(&|s| s.report.ram.data_pages().to_string()),
        list(&|s| s.report.ram.hinted_pages().to_string()),
        list(&|s| s
            .report
            .ram
            .rounds
            .iter()
            .map(|r| r.zero_pages)
            .sum::<u64>()
            .to_string()),
        list(&|s| s.report.state_bytes.to_string()),
    ));
    if let Some(s) = runs.first() {
        c.notes.push(format!(
            "checked: {} ticks once each across both hosts ({} on the source), every \
             acknowledged write on the disk, exits of the whole run exact, both ends counted \
             the same bytes; guest free RAM {} of {} MiB",
            s.ticks, s.ticks_on_source, s.free_mib, s.mem_mib
        ));
    }
    c
}
