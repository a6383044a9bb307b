//! The `snapshot` cases: snapshot of the running guest, restore to running, clones.

use std::path::PathBuf;
use std::time::Duration;

use pvkit_report::{Case, Kind};

use super::{fail, host_case, mib, ms, LifecycleOutcome, LifecycleSizes};
use crate::bench_runner::BenchConfig;
use crate::lifecycle::median;
use crate::lifecycle::snapshot::{self, SnapshotConfig, SnapshotResults};

pub(super) fn snapshot_cases(
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
