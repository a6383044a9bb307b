//! The `migrate` cases: the PV pair, live migration with free-page hints against without;
//! and, when `migrate` is named (`pvkit bench --only migrate`), the unmodified guest on
//! emulated devices only (`emulated-devices`).

use std::path::PathBuf;
use std::time::Duration;

use pvkit_report::{Case, Kind};

use super::{fail, host_case, mib, ms, LifecycleOutcome, LifecycleSizes};
use crate::bench_runner::BenchConfig;
use crate::lifecycle::migrate::{self, MigrateConfig, MigratingGuest, MigrationSample};
use crate::lifecycle::LifecycleError;

pub(super) fn migrate_cases(
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
        key: None,
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
            match run_with_room(&mc, MigratingGuest::Workload { hints }) {
                Ok(s) => samples.push(s),
                Err(e) => failed[usize::from(hints)] = Some(e),
            }
        }
    }
    let [off_err, on_err] = failed;
    let off = match off_err {
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
    out.cases.extend(off);
    out.cases.extend(on);
    keyed_case(&mc, sizes, &workload, out);
}

/// `hints-off-authenticated`: the hints-off migration with a migration key on both sides
/// (a key file written and loaded as `--migration-key` does): the cost of the handshake
/// and of HMAC-SHA256 over every byte of RAM sent.
fn keyed_case(
    mc: &MigrateConfig,
    sizes: &LifecycleSizes,
    workload: &str,
    out: &mut LifecycleOutcome,
) {
    let variant = [("hints-off-authenticated", Kind::Emulated)];
    // Its own workload: the PV pair's (one emulated, one PV case) stays a pair.
    let workload = &format!("{workload}-authenticated");
    let key = match write_key(&mc.dir) {
        Ok(k) => k,
        Err(e) => return fail(out, "migrate", &variant, workload, &e),
    };
    let keyed = MigrateConfig {
        key: Some(std::sync::Arc::new(key)),
        ..mc.clone()
    };
    let mut runs = Vec::new();
    for _ in 0..sizes.migrations {
        let longer = MigrateConfig {
            ticks: keyed.migrate_at + 4 * (keyed.ticks - keyed.migrate_at),
            ..keyed.clone()
        };
        let r = match migrate::run_one(&keyed, MigratingGuest::Workload { hints: false }) {
            Err(LifecycleError::WorkloadEnded(_)) => {
                migrate::run_one(&longer, MigratingGuest::Workload { hints: false })
            }
            r => r,
        };
        match r {
            Ok(s) => runs.push(s),
            Err(e) => return fail(out, "migrate", &variant, workload, &e),
        }
    }
    let mut c = migrate_case(variant[0].0, variant[0].1, workload, &runs);
    c.notes.push(
        "stream authenticated: challenge-response and a HMAC-SHA256 tag per record \
         (--migration-key on both sides; not encrypted)"
            .into(),
    );
    out.cases.push(c);
}

fn write_key(
    dir: &std::path::Path,
) -> Result<pvkit_vmm::migration::auth::MigrationKey, LifecycleError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(LifecycleError::io("directory", dir))?;
    let path = dir.join("migration.key");
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(LifecycleError::io("random bytes", &path))?;
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .map_err(LifecycleError::io("migration key", &path))?;
    pvkit_vmm::migration::auth::MigrationKey::load(&path)
        .map_err(|e| LifecycleError::Check(e.to_string()))
}

/// Migrates `guest` with `mc`; a pre-copy slower than the room (a loaded machine) is
/// measured again with a workload whose room is 4× longer, once.
fn run_with_room(
    mc: &MigrateConfig,
    guest: MigratingGuest,
) -> Result<MigrationSample, LifecycleError> {
    let longer = MigrateConfig {
        ticks: mc.migrate_at + 4 * (mc.ticks - mc.migrate_at),
        ..mc.clone()
    };
    match migrate::run_one(mc, guest) {
        Err(LifecycleError::WorkloadEnded(_)) => migrate::run_one(&longer, guest),
        r => r,
    }
}

/// `migrate / emulated-devices / live-<RAM>`: the unmodified guest itself (`emuload`, on the
/// UART, PIT, ATA disk and NE2000), migrated `sizes.migrations` times.
pub(super) fn emulated_migrate_cases(
    cfg: &BenchConfig,
    sizes: &LifecycleSizes,
    dir: PathBuf,
    out: &mut LifecycleOutcome,
) {
    let mc = MigrateConfig {
        mem_mib: cfg.mem_mib,
        ticks: sizes.emu_ticks,
        migrate_at: sizes.emu_migrate_at,
        dir,
        seccomp: cfg.seccomp,
        timeout: cfg.timeout,
        key: None,
    };
    let workload = format!("live-{}", mib(cfg.mem_mib << 20));
    let variant = "emulated-devices";
    let mut runs = Vec::new();
    for _ in 0..sizes.migrations {
        match run_with_room(&mc, MigratingGuest::Emulated) {
            Ok(s) => runs.push(s),
            Err(e) => {
                fail(out, "migrate", &[(variant, Kind::Emulated)], &workload, &e);
                return;
            }
        }
    }
    out.tsc_khz = out.tsc_khz.or(runs.iter().find_map(|s| s.tsc_khz));
    out.cases
        .push(migrate_case(variant, Kind::Emulated, &workload, &runs));
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
    match runs.first() {
        Some(s) if s.guest == MigratingGuest::Emulated => c.notes.push(format!(
            "checked: {} ticks once each across both hosts ({} on the source), every \
             acknowledged ATA write on the disk, every NE2000 UDP echo answered exactly once \
             and none resent, exits of the whole run exact (UART bytes, ATA commands, NE2000 \
             frames, one exit, no other hypercall), no page skipped, both ends counted the \
             same bytes; the guest declares no free RAM",
            s.ticks, s.ticks_on_source
        )),
        Some(s) => c.notes.push(format!(
            "checked: {} ticks once each across both hosts ({} on the source), every \
             acknowledged write on the disk, exits of the whole run exact, both ends counted \
             the same bytes; guest free RAM {} of {} MiB",
            s.ticks, s.ticks_on_source, s.free_mib, s.mem_mib
        )),
        None => {}
    }
    c
}
