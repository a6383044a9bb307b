//! The results model: the schema of `results.json`.
//!
//! The VMM's `pvkit bench` fills a [`Report`], calls [`Report::compute_speedups`] and then
//! hands it to the renderers ([`crate::markdown`], [`crate::chart`], [`crate::json`]).
//!
//! Field names are a contract: other crates' tests read `results.json` and look for
//! `device`, `variant`, `kind`, `workload`, `ops`, `userspace_exits_per_op`,
//! `guest_cycles_per_op_median`, `ns_per_op`, `throughput` and `verified` on every case.
//!
//! Non-finite measurements (`NaN`, `±inf`) are written by `serde_json` as `null`; every
//! `f64` field of the model reads `null` back as `NaN`, so such a report still round-trips.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

/// Errors of the model module.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The system clock is before the Unix epoch, so no RFC 3339 UTC time can be formed.
    #[error("system clock is before the Unix epoch")]
    ClockBeforeEpoch,
}

/// A whole benchmark run: where it ran, every measured case and host reference numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The host and build the run happened on.
    pub platform: Platform,
    /// Every measured (device, variant, workload) combination, in the order they ran.
    pub cases: Vec<Case>,
    /// Host-side reference measurements (e.g. a page-cache read of the disk image).
    #[serde(default)]
    pub baselines: Vec<Baseline>,
    /// The command line that produced the run, e.g. `pvkit bench --all`.
    pub command: String,
    /// Start of the run, RFC 3339 in UTC, e.g. `2026-11-26T18:33:35Z` (see [`rfc3339_utc`]).
    pub started_at: String,
    /// Wall-clock duration of the whole run, in seconds.
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub duration_s: f64,
}

/// The host and build the run happened on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// `"kvm_pvm"` (software virtualization), `"kvm_intel"`, `"kvm_amd"` or `"unknown"`.
    pub kind: String,
    /// Whether KVM runs the guest on hardware virtualization (VMX/SVM).
    pub hardware_virtualization: bool,
    /// Host CPU model name, as in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Guest TSC frequency in kHz (converts guest cycles to time).
    pub tsc_khz: u64,
    /// Host kernel release, as `uname -r` prints it.
    pub host_kernel: String,
    /// Version of the pvkit build that ran the benchmarks.
    pub pvkit_version: String,
    /// Git commit of the pvkit build (may carry a `-dirty` suffix).
    pub git_commit: String,
    /// Version of the guest/host PV ABI in use.
    pub abi_version: String,
}

impl Platform {
    /// The [`Platform::kind`] of software virtualization (KVM PVM).
    pub const KIND_PVM: &'static str = "kvm_pvm";
    /// The [`Platform::kind`] of hardware KVM on Intel VMX.
    pub const KIND_INTEL: &'static str = "kvm_intel";
    /// The [`Platform::kind`] of hardware KVM on AMD SVM.
    pub const KIND_AMD: &'static str = "kvm_amd";
    /// The [`Platform::kind`] when the platform could not be determined.
    pub const KIND_UNKNOWN: &'static str = "unknown";

    /// Whether this is software virtualization (`kvm_pvm`), where guest ring 0 is interpreted
    /// and exit counts, not times, are the primary metric.
    pub fn is_software_virtualization(&self) -> bool {
        self.kind == Self::KIND_PVM
    }
}

/// Whether a case measures an emulated device or a paravirtual one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A faithfully emulated legacy device (UART, ATA PIO, PIT); the speedup baseline.
    Emulated,
    /// A paravirtual device (hypercall, ring, ioeventfd, polled ring, PV clock).
    Pv,
}

impl Kind {
    /// The serialized name: `"emulated"` or `"pv"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Emulated => "emulated",
            Kind::Pv => "pv",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measured (device, variant, workload) combination.
///
/// All `*_per_op` numbers are divided by [`Case::ops`]. For a failed case
/// ([`Case::is_failed`]) the measurements are meaningless and renderers never show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Device class: `"console"`, `"block"`, `"clock"` or `"exit"`.
    pub device: String,
    /// Implementation, e.g. `"uart"`, `"pv-hypercall"`, `"pv-ring"`, `"pv-ioeventfd"`,
    /// `"pv-poll"`, `"ata-pio"`, `"pit"`, `"pvclock"`, `"kvmclock"`.
    pub variant: String,
    /// Emulated or paravirtual; serialized as `"emulated"` / `"pv"`.
    pub kind: Kind,
    /// Workload, e.g. `"write-64B"`, `"write-4KiB"`, `"randread-4KiB"`, `"randwrite-4KiB"`,
    /// `"seqread-1MiB"`, `"seqwrite-1MiB"`, `"read"`.
    pub workload: String,
    /// Number of operations measured.
    pub ops: u64,
    /// Payload bytes moved in total (0 for workloads without payload, e.g. clock reads).
    pub bytes: u64,
    /// Exits to the VMM (userspace) per operation.
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub userspace_exits_per_op: f64,
    /// Exits per operation broken down by kind, e.g. `"port-out 0x3f8" → 64.0`.
    #[serde(default, deserialize_with = "de_f64_map_or_nan")]
    pub exits_by_kind: BTreeMap<String, f64>,
    /// Notifications handled inside the kernel (ioeventfd/irqfd) per operation.
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub in_kernel_notifications_per_op: f64,
    /// The kernel's own per-vCPU counters per operation (KVM's binary statistics, e.g.
    /// `"exits"`: every exit from the guest including those KVM handled without returning
    /// to userspace; `"irq_injections"`, `"halt_exits"`). Empty where the platform does not
    /// offer them (`KVM_GET_STATS_FD`).
    #[serde(default, deserialize_with = "de_f64_map_or_nan")]
    pub kernel_exits_per_op: BTreeMap<String, f64>,
    /// Guest TSC cycles of the timed loop divided by [`Case::ops`]: the throughput cost of
    /// one operation, measured with no per-operation time read.
    #[serde(default = "nan", deserialize_with = "de_f64_or_nan")]
    pub guest_cycles_per_op: f64,
    /// Median guest TSC cycles per operation in the latency distribution (see
    /// [`Case::latency_method`]).
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub guest_cycles_per_op_median: f64,
    /// 99th percentile of guest TSC cycles per operation in the latency distribution.
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub guest_cycles_per_op_p99: f64,
    /// Host wall time of the timed loop divided by [`Case::ops`], in nanoseconds.
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub ns_per_op: f64,
    /// Median latency per operation in nanoseconds (the guest cycle median at the TSC
    /// rate), when there is a latency distribution.
    #[serde(default)]
    pub ns_per_op_p50: Option<f64>,
    /// 99th percentile latency per operation in nanoseconds, as [`Case::ns_per_op_p50`].
    #[serde(default)]
    pub ns_per_op_p99: Option<f64>,
    /// Where the latency distribution (the median and p99 fields) comes from; `None` if
    /// unknown (a report from before the field existed).
    #[serde(default)]
    pub latency_method: Option<LatencyMethod>,
    /// Samples the latency distribution was taken from (each one operation, or the mean of
    /// one batch of operations).
    #[serde(default)]
    pub latency_samples: u64,
    /// Throughput in [`Case::throughput_unit`].
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub throughput: f64,
    /// `"MB/s"`, `"IOPS"`, `"reads/s"` or `"writes/s"`.
    pub throughput_unit: String,
    /// Whether the guest's and host's checks of the transferred data passed.
    pub verified: bool,
    /// Why the case failed, if it did.
    #[serde(default)]
    pub failure: Option<String>,
    /// Speedup over the emulated case of the same device and workload; filled by
    /// [`Report::compute_speedups`], `None` for emulated and failed cases.
    #[serde(default)]
    pub speedup: Option<f64>,
    /// Free-form remarks (e.g. "host polls the ring on a dedicated thread").
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Case {
    /// Whether the case failed: not verified, or a failure was recorded.
    pub fn is_failed(&self) -> bool {
        !self.verified || self.failure.is_some()
    }

    /// Why the case failed (`None` if it did not): the recorded failure, or
    /// `"not verified"` when only the verification flag is down.
    pub fn failure_reason(&self) -> Option<&str> {
        match (&self.failure, self.verified) {
            (Some(reason), _) => Some(reason.as_str()),
            (None, false) => Some("not verified"),
            (None, true) => None,
        }
    }
}

/// Where a case's latency distribution comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyMethod {
    /// A separate latency pass outside the timed loop, timing each operation (or batch):
    /// the timed loop, and so throughput and ns/op, carries no per-operation time read.
    SeparatePass,
    /// Samples taken inside the timed loop (they add their own cost to it).
    TimedLoop,
    /// No per-operation samples: median and p99 are the timed loop's mean.
    PhaseMean,
    /// Host clock per operation, taken by the host (a round trip the host originated and
    /// timed): the ns percentiles; the guest cycle fields are the timed loop's mean.
    HostClock,
}

impl LatencyMethod {
    /// A short label for tables and notes.
    pub fn label(self) -> &'static str {
        match self {
            LatencyMethod::SeparatePass => "separate latency pass",
            LatencyMethod::TimedLoop => "sampled inside the timed loop",
            LatencyMethod::PhaseMean => "timed-loop mean (no per-op samples)",
            LatencyMethod::HostClock => "host clock per round trip, originated by the host",
        }
    }
}

/// A host-side reference measurement, listed under the tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// What was measured, e.g. `"host page-cache read of the image, 1 MiB"`.
    pub name: String,
    /// The measured value, in [`Baseline::unit`].
    #[serde(deserialize_with = "de_f64_or_nan")]
    pub value: f64,
    /// Unit of [`Baseline::value`], e.g. `"MB/s"` or `"ns"`.
    pub unit: String,
}

/// Canonical order of the known devices in tables and charts; others follow alphabetically.
pub const DEVICE_ORDER: [&str; 4] = ["console", "block", "clock", "exit"];

impl Report {
    /// Fills [`Case::speedup`] for every case.
    ///
    /// Cases are grouped by (device, workload). In each group the first emulated case that
    /// did not fail is the baseline; every PV case that did not fail gets
    /// `baseline.ns_per_op / case.ns_per_op` (or, when either time is unusable, the
    /// throughput ratio). Emulated cases, failed cases and groups without a usable baseline
    /// get `None`. Calling it again recomputes from scratch.
    pub fn compute_speedups(&mut self) {
        let mut baselines: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
        for case in &self.cases {
            if case.kind == Kind::Emulated && !case.is_failed() {
                baselines
                    .entry((case.device.clone(), case.workload.clone()))
                    .or_insert((case.ns_per_op, case.throughput));
            }
        }
        for case in &mut self.cases {
            case.speedup = None;
            if case.kind != Kind::Pv || case.is_failed() {
                continue;
            }
            let key = (case.device.clone(), case.workload.clone());
            let Some(&(base_ns, base_tput)) = baselines.get(&key) else {
                continue;
            };
            case.speedup =
                ratio(base_ns, case.ns_per_op).or_else(|| ratio(case.throughput, base_tput));
        }
    }

    /// The devices present, in [`DEVICE_ORDER`] followed by any others alphabetically.
    pub fn devices(&self) -> Vec<&str> {
        let mut devices: Vec<&str> = Vec::new();
        for case in &self.cases {
            if !devices.contains(&case.device.as_str()) {
                devices.push(&case.device);
            }
        }
        devices.sort_by_key(|d| {
            let rank = DEVICE_ORDER
                .iter()
                .position(|known| known == d)
                .unwrap_or(DEVICE_ORDER.len());
            (rank, *d)
        });
        devices
    }

    /// The cases of one device grouped by workload: workloads in order of first appearance,
    /// and within a workload emulated cases first, otherwise in run order.
    pub fn workload_groups(&self, device: &str) -> Vec<WorkloadGroup<'_>> {
        let mut groups: Vec<WorkloadGroup<'_>> = Vec::new();
        for case in self.cases.iter().filter(|c| c.device == device) {
            match groups.iter_mut().find(|g| g.workload == case.workload) {
                Some(group) => group.cases.push(case),
                None => groups.push(WorkloadGroup {
                    device: &case.device,
                    workload: &case.workload,
                    cases: vec![case],
                }),
            }
        }
        for group in &mut groups {
            // Stable: keeps run order within each kind.
            group.cases.sort_by_key(|c| c.kind);
        }
        groups
    }
}

/// The cases of one (device, workload) pair, as returned by [`Report::workload_groups`].
#[derive(Debug, Clone)]
pub struct WorkloadGroup<'a> {
    /// The device all cases share.
    pub device: &'a str,
    /// The workload all cases share.
    pub workload: &'a str,
    /// The cases, emulated first.
    pub cases: Vec<&'a Case>,
}

/// `num / den` if both are finite and positive and the result is finite.
fn ratio(num: f64, den: f64) -> Option<f64> {
    let usable = |v: f64| v.is_finite() && v > 0.0;
    if usable(num) && usable(den) {
        Some(num / den).filter(|r| r.is_finite())
    } else {
        None
    }
}

/// Formats a time as RFC 3339 in UTC with second precision, e.g. `2026-11-26T18:33:35Z`.
///
/// Fails only if `time` is before the Unix epoch.
pub fn rfc3339_utc(time: SystemTime) -> Result<String, ModelError> {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| ModelError::ClockBeforeEpoch)?
        .as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    ))
}

/// The current time as RFC 3339 UTC (see [`rfc3339_utc`]), for [`Report::started_at`].
pub fn now_rfc3339_utc() -> Result<String, ModelError> {
    rfc3339_utc(SystemTime::now())
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, restricted to non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Reads an `f64` that `serde_json` may have written as `null` (for `NaN`/`±inf`).
fn de_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The default of a missing measurement: `NaN`.
fn nan() -> f64 {
    f64::NAN
}

/// Like [`de_f64_or_nan`] for the values of a map.
fn de_f64_map_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let map = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{case, sample_report};
    use std::time::Duration;

    fn speedup_of(report: &Report, device: &str, variant: &str, workload: &str) -> Option<f64> {
        report
            .cases
            .iter()
            .find(|c| c.device == device && c.variant == variant && c.workload == workload)
            .and_then(|c| c.speedup)
    }

    #[test]
    fn speedup_is_baseline_time_over_case_time() {
        let mut report = sample_report();
        report.cases = vec![
            case(
                "console",
                "uart",
                Kind::Emulated,
                "write-4KiB",
                80_000_000.0,
            ),
            case("console", "pv-hypercall", Kind::Pv, "write-4KiB", 30_000.0),
            case("console", "pv-poll", Kind::Pv, "write-4KiB", 8_000.0),
            case("console", "uart", Kind::Emulated, "write-64B", 1_000_000.0),
            case("console", "pv-hypercall", Kind::Pv, "write-64B", 20_000.0),
        ];
        report.compute_speedups();
        let s = speedup_of(&report, "console", "pv-hypercall", "write-4KiB").unwrap();
        assert!((s - 80_000_000.0 / 30_000.0).abs() < 1e-9);
        let s = speedup_of(&report, "console", "pv-poll", "write-4KiB").unwrap();
        assert!((s - 10_000.0).abs() < 1e-9);
        // Grouped by workload: the 64 B write compares with the 64 B UART write.
        let s = speedup_of(&report, "console", "pv-hypercall", "write-64B").unwrap();
        assert!((s - 50.0).abs() < 1e-9);
        // The baseline itself carries no number.
        assert_eq!(speedup_of(&report, "console", "uart", "write-4KiB"), None);
    }

    #[test]
    fn failed_cases_never_get_a_speedup() {
        let mut report = sample_report();
        let mut unverified = case("block", "pv-ring", Kind::Pv, "randread-4KiB", 10_000.0);
        unverified.verified = false;
        let mut with_failure = case("block", "pv-poll", Kind::Pv, "randread-4KiB", 5_000.0);
        with_failure.failure = Some("guest timed out".into());
        with_failure.speedup = Some(99.0); // stale value must be cleared
        report.cases = vec![
            case(
                "block",
                "ata-pio",
                Kind::Emulated,
                "randread-4KiB",
                1_000_000.0,
            ),
            unverified,
            with_failure,
            case("block", "pv-hypercall", Kind::Pv, "randread-4KiB", 50_000.0),
        ];
        report.compute_speedups();
        assert_eq!(
            speedup_of(&report, "block", "pv-ring", "randread-4KiB"),
            None
        );
        assert_eq!(
            speedup_of(&report, "block", "pv-poll", "randread-4KiB"),
            None
        );
        assert_eq!(
            speedup_of(&report, "block", "pv-hypercall", "randread-4KiB"),
            Some(20.0)
        );
    }

    #[test]
    fn no_verified_baseline_means_no_speedup() {
        let mut report = sample_report();
        let mut failed_base = case("block", "ata-pio", Kind::Emulated, "seqread-1MiB", 1e9);
        failed_base.failure = Some("DRQ never set".into());
        report.cases = vec![
            failed_base,
            case("block", "pv-ring", Kind::Pv, "seqread-1MiB", 1e6),
            // No emulated case at all in this group.
            case("clock", "pvclock", Kind::Pv, "read", 40.0),
        ];
        report.compute_speedups();
        assert!(report.cases.iter().all(|c| c.speedup.is_none()));
    }

    #[test]
    fn speedup_falls_back_to_throughput_ratio() {
        let mut report = sample_report();
        let mut base = case("block", "ata-pio", Kind::Emulated, "seqwrite-1MiB", 0.0);
        base.throughput = 2.0;
        let mut pv = case("block", "pv-ring", Kind::Pv, "seqwrite-1MiB", f64::NAN);
        pv.throughput = 500.0;
        report.cases = vec![base, pv];
        report.compute_speedups();
        assert_eq!(report.cases[1].speedup, Some(250.0));
    }

    #[test]
    fn sample_report_speedups_are_large_for_pv() {
        let mut report = sample_report();
        report.compute_speedups();
        let s = speedup_of(&report, "console", "pv-hypercall", "write-4KiB").unwrap();
        assert!(s > 100.0, "{s}");
    }

    #[test]
    fn devices_and_groups_are_ordered() {
        let mut report = sample_report();
        report.cases.reverse();
        assert_eq!(report.devices(), ["console", "block", "clock", "exit"]);
        for device in report.devices() {
            for group in report.workload_groups(device) {
                assert!(group.cases.iter().all(|c| c.device == device));
                assert!(group.cases.iter().all(|c| c.workload == group.workload));
                let first_pv = group.cases.iter().position(|c| c.kind == Kind::Pv);
                if let Some(i) = first_pv {
                    assert!(group.cases[i..].iter().all(|c| c.kind == Kind::Pv));
                }
            }
        }
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH).unwrap(), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661); // 2000-02-29 01:01:01
        assert_eq!(rfc3339_utc(t).unwrap(), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_329_215);
        assert_eq!(rfc3339_utc(t).unwrap(), "2026-12-26T23:53:35Z");
        assert!(now_rfc3339_utc().unwrap().ends_with('Z'));
    }
}
