//! `pvkit bench`: boot the guest kernel once per device in benchmark mode, turn its phase
//! markers, samples and op logs into a [`pvkit_report::Report`], and write the results.
//!
//! ```text
//! BenchConfig ──run()──▶ one VM per device (bench=<device>, console captured, disk for block;
//!                        the spinlock: one VM per case, --vcpus N, see [`spinlock`])
//!                           │ phases (ledger delta, host time), samples (cycles, op-log check)
//!                           ▼
//!                 cases::measurements → cases::build_cases → Report (+ host baselines)
//!                           ▼
//!                 write_outputs(): results.json, results.md, chart.svg, chart.png
//! ```
//!
//! Isolation: each device gets its own boot, so a device whose guest crashes or hangs (the
//! watchdog stops it) loses only its own cases; it is reported as a failed case with the
//! stop reason and makes [`BenchOutcome::passed`] false.
//!
//! Method and caveats: `docs/BENCHMARKS.md`.

pub mod cases;
pub mod console_check;
pub mod disk;
pub mod expected;
pub mod host_rtt;
pub mod lifecycle_cases;
pub mod names;
pub mod progress;
pub mod rss;
pub mod spinlock;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pvkit_report::{Baseline, Case, Kind, Platform, Report};
use thiserror::Error;

use pvkit_vmm::arch::x86_64::cpuid::{pv_eoi_offered, supported_cpuid};
use pvkit_vmm::devices::legacy::ne2000::{NetBackendConfig, NetConfig};
use pvkit_vmm::devices::NicModel;
use pvkit_vmm::io::disk::DiskConfig;
use pvkit_vmm::runtime::stop::StopReason;
use pvkit_vmm::vm::{ConsoleKind, KernelSource, RunOutcome, VmConfig};
use pvkit_vmm::vstate::kvm::{open_kvm, PlatformError, PlatformKind};

pub use lifecycle_cases::LifecycleBench;
pub use names::BenchDevice;
use progress::Progress;

/// Fills each case's latency percentiles in ns (`ns_per_op_p50`/`p99`) from its guest
/// cycle percentiles and the TSC frequency. The host only times whole phases (the timed
/// loops); the guest's per-operation (or per-batch) TSC samples of its separate latency
/// pass are the latency distribution.
fn latency_from_cycles(cases: &mut [Case], tsc_khz: u64) {
    if tsc_khz == 0 {
        return;
    }
    let ns =
        |cycles: f64| (cycles.is_finite() && cycles > 0.0).then(|| cycles * 1e6 / tsc_khz as f64);
    for c in cases
        .iter_mut()
        .filter(|c| c.latency_method != Some(pvkit_report::LatencyMethod::HostClock))
    {
        c.ns_per_op_p50 = ns(c.guest_cycles_per_op_median);
        c.ns_per_op_p99 = ns(c.guest_cycles_per_op_p99);
    }
}

/// Default watchdog per guest boot.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// Default watchdog per guest boot with `quick`.
pub const DEFAULT_QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default guest RAM (MiB): room for the 1 MiB block buffers, rings and op logs.
pub const DEFAULT_MEM_MIB: u64 = 128;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The devices, each in its own boot, in this order.
    pub devices: Vec<BenchDevice>,
    /// The lifecycle benchmarks (snapshot, migrate), run after the devices
    /// ([`lifecycle_cases`]).
    pub lifecycle: Vec<LifecycleBench>,
    /// Pass `quick` to the guest (fewer ops per case).
    pub quick: bool,
    /// Boots per device; the cases of all boots are pooled.
    pub iterations: u32,
    /// An existing raw image for the block cases (written to!); `None`: a temporary image
    /// of [`BenchConfig::disk_bytes`] that is removed at the end.
    pub disk: Option<PathBuf>,
    /// Size of the temporary image.
    pub disk_bytes: u64,
    /// Watchdog per boot.
    pub timeout: Duration,
    /// Watchdog of each spinlock boot (the plain lock under overcommit runs for minutes).
    pub spinlock_timeout: Duration,
    /// Guest RAM per boot, MiB.
    pub mem_mib: u64,
    /// The guest kernel (default: the built-in one).
    pub kernel: KernelSource,
    /// More guest command-line tokens (e.g. `ops=N`).
    pub extra_cmdline: String,
    /// Draw a progress bar on stderr (it is hidden anyway when stderr is not a terminal or
    /// under CI).
    pub progress: bool,
    /// The command line recorded in the report.
    pub command: String,
    /// Confine each boot's vCPU and I/O threads with seccomp ([`VmConfig::seccomp`]).
    pub seccomp: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            devices: BenchDevice::ALL.to_vec(),
            lifecycle: LifecycleBench::ALL.to_vec(),
            quick: false,
            iterations: 1,
            disk: None,
            disk_bytes: disk::DEFAULT_DISK_BYTES,
            timeout: DEFAULT_TIMEOUT,
            spinlock_timeout: spinlock::DEFAULT_TIMEOUT,
            mem_mib: DEFAULT_MEM_MIB,
            kernel: KernelSource::Builtin,
            extra_cmdline: String::new(),
            progress: true,
            command: "pvkit bench".into(),
            seccomp: true,
        }
    }
}

impl BenchConfig {
    /// The guest command line for `device` (the console is PV so that anything the guest
    /// prints outside the phases costs little).
    pub fn cmdline(&self, device: BenchDevice) -> String {
        self.cmdline_for(device.name())
    }

    /// The guest command line for the selection `bench=<selection>`.
    pub fn cmdline_for(&self, selection: &str) -> String {
        let mut s = format!("bench={selection}");
        if self.quick {
            s.push_str(" quick");
        }
        if !self.extra_cmdline.trim().is_empty() {
            s.push(' ');
            s.push_str(self.extra_cmdline.trim());
        }
        s
    }
}

/// One boot of one device.
#[derive(Debug)]
pub struct DeviceRun {
    /// The device.
    pub device: BenchDevice,
    /// 0-based iteration.
    pub iteration: u32,
    /// The guest command line.
    pub cmdline: String,
    /// The outcome, or why the VM could not run.
    pub result: Result<RunOutcome, String>,
    /// Wall time of the boot.
    pub wall: Duration,
    /// The host RSS (KiB) at the end of each phase, for devices whose result is memory.
    pub rss_at_end: Vec<(pvkit_abi::bench::CaseId, u64)>,
    /// The round trips the loopback peers originated and timed ([`host_rtt`]).
    pub host_rtt: Vec<pvkit_net::host_rtt::RttRun>,
}

/// Everything a bench run produced.
#[derive(Debug)]
pub struct BenchOutcome {
    /// The report, speedups computed.
    pub report: Report,
    /// Every boot.
    pub runs: Vec<DeviceRun>,
    /// Problems that make the run fail: crashed devices, devices that ran nothing, stray
    /// samples.
    pub problems: Vec<String>,
    /// Cases the guest did not run (skipped for a missing host feature or device): listed,
    /// not failures.
    pub unavailable: Vec<expected::Unavailable>,
}

impl BenchOutcome {
    /// Whether every case verified and every device's guest ran to a clean exit.
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.report.cases.iter().all(|c| !c.is_failed())
    }

    /// The Markdown report: [`pvkit_report::render_markdown`] plus the unavailable cases.
    pub fn markdown(&self) -> String {
        let mut md = pvkit_report::render_markdown(&self.report);
        md.push_str(&expected::markdown(&self.unavailable));
        md
    }

    /// The failed cases as `device/variant/workload: reason` lines.
    pub fn failures(&self) -> Vec<String> {
        self.report
            .cases
            .iter()
            .filter(|c| c.is_failed())
            .map(|c| {
                format!(
                    "{}/{}/{}: {}",
                    c.device,
                    c.variant,
                    c.workload,
                    c.failure_reason().unwrap_or("not verified")
                )
            })
            .collect()
    }
}

/// Errors that stop a bench run before or after the guests (a guest's own failure is a
/// failed case instead).
#[derive(Debug, Error)]
pub enum RunnerError {
    /// KVM is not usable.
    #[error(transparent)]
    Kvm(#[from] PlatformError),
    /// No device was selected.
    #[error("no device selected")]
    NoDevices,
    /// `--iterations 0`.
    #[error("--iterations must be at least 1")]
    NoIterations,
    /// The disk image could not be created or read.
    #[error("disk image {path}: {error}")]
    Disk {
        /// The image.
        path: PathBuf,
        /// Why (not a `source`: the message already says it).
        error: std::io::Error,
    },
    /// An output file could not be written.
    #[error("cannot write {path}: {reason}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The clock is before 1970.
    #[error(transparent)]
    Clock(#[from] pvkit_report::ModelError),
}

/// The disk image of a run: a temporary one (removed when this is dropped) or the user's.
enum Image {
    Temp(disk::TempDisk),
    User(PathBuf),
}

impl Image {
    fn path(&self) -> &Path {
        match self {
            Image::Temp(t) => t.path(),
            Image::User(p) => p,
        }
    }
}

/// Runs the benchmarks. Problems with single devices become failed cases; only problems
/// with the whole run (no KVM, no disk image) are errors.
pub fn run(cfg: &BenchConfig) -> Result<BenchOutcome, RunnerError> {
    if cfg.devices.is_empty() && cfg.lifecycle.is_empty() {
        return Err(RunnerError::NoDevices);
    }
    if cfg.iterations == 0 {
        return Err(RunnerError::NoIterations);
    }
    let t0 = Instant::now();
    let started_at = pvkit_report::now_rfc3339_utc()?;
    // KVM's own answer to "is PV EOI offered", for the pv-eoi case's note.
    let pv_eoi_offered = {
        let kvm = open_kvm()?;
        supported_cpuid(&kvm)
            .ok()
            .map(|c| pv_eoi_offered(c.as_slice()))
    };
    // Gathered before the guests run (the TSC rate comes from the first vCPU below).
    let mut platform = platform(None);

    let expected: u64 = cfg
        .devices
        .iter()
        .map(|d| d.expected_cases() * d.selections().len() as u64 * u64::from(cfg.iterations))
        .sum::<u64>()
        + cfg
            .lifecycle
            .iter()
            .map(|l| l.expected_cases())
            .sum::<u64>();
    let bar = Progress::new(cfg.progress && progress::wanted(), expected);

    // The disk (and its baseline) only if a block boot will run.
    let mut baselines = Vec::new();
    let image = if cfg.devices.iter().any(|d| d.needs_disk()) {
        let image = match &cfg.disk {
            Some(p) => {
                std::fs::metadata(p).map_err(|error| RunnerError::Disk {
                    path: p.clone(),
                    error,
                })?;
                bar.println(&format!(
                    "warning: the block cases write to {} (--disk): its contents will change",
                    p.display()
                ));
                Image::User(p.clone())
            }
            None => Image::Temp(disk::TempDisk::create(cfg.disk_bytes).map_err(|error| {
                RunnerError::Disk {
                    path: std::env::temp_dir(),
                    error,
                }
            })?),
        };
        let read = disk::page_cache_read(image.path()).map_err(|error| RunnerError::Disk {
            path: image.path().to_path_buf(),
            error,
        })?;
        baselines.push(Baseline {
            name: "host page-cache read of the image, 1 MiB preads".into(),
            value: read.mb_per_s,
            unit: "MB/s".into(),
        });
        Some(image)
    } else {
        None
    };

    let mut runs = Vec::new();
    for iteration in 0..cfg.iterations {
        for &device in &cfg.devices {
            for spec in boot_specs(cfg, device) {
                bar.device(&spec.label);
                let run = boot(
                    cfg,
                    device,
                    iteration,
                    spec,
                    image.as_ref().map(Image::path),
                    &bar,
                );
                runs.push(run);
            }
        }
    }
    // The temporary image is removed here (and on every early return above).
    drop(image);
    let lifecycle = lifecycle_cases::run(&cfg.lifecycle, cfg, &|name| bar.device(name));
    bar.finish();

    let (mut cases, mut problems, unavailable) = collect(&runs);
    let lifecycle_cases::LifecycleOutcome {
        cases: lifecycle_cases,
        problems: lifecycle_problems,
        tsc_khz: lifecycle_tsc,
    } = lifecycle;
    cases.extend(lifecycle_cases);
    problems.extend(lifecycle_problems);
    let tsc_khz = runs
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .find_map(|o| o.platform.tsc_khz)
        .or(lifecycle_tsc);
    platform.tsc_khz = tsc_khz.map_or(0, u64::from);
    latency_from_cycles(&mut cases, platform.tsc_khz);
    let mut report = Report {
        platform,
        cases,
        baselines,
        command: cfg.command.clone(),
        started_at,
        duration_s: 0.0,
    };
    add_exit_baselines(&mut report);
    report.compute_speedups();
    pv_eoi_notes(&mut report, pv_eoi_offered);
    report.duration_s = t0.elapsed().as_secs_f64();
    Ok(BenchOutcome {
        report,
        runs,
        problems,
        unavailable,
    })
}

/// What one boot runs: its name on the progress bar, the guest command line, the vCPUs
/// and the cases it should report.
struct BootSpec {
    label: String,
    cmdline: String,
    vcpus: u32,
    cases: u64,
}

/// The boots of `device`: one per selection (`bench=<selection>`,
/// [`BenchDevice::selections`]), or for the spinlock one per case (`lock=`, its own vCPU
/// count, [`spinlock::boots`]).
fn boot_specs(cfg: &BenchConfig, device: BenchDevice) -> Vec<BootSpec> {
    match device {
        BenchDevice::Spinlock => spinlock::boots(cfg.quick)
            .into_iter()
            .map(|b| BootSpec {
                label: format!("spinlock/{}/{}vcpu", b.lock, b.vcpus),
                cmdline: b.cmdline(&cfg.extra_cmdline),
                vcpus: b.vcpus,
                cases: 1,
            })
            .collect(),
        _ => device
            .selections()
            .into_iter()
            .map(|selection| BootSpec {
                cmdline: cfg.cmdline_for(&selection),
                label: selection,
                vcpus: device.vcpus(),
                cases: device.expected_cases(),
            })
            .collect(),
    }
}

/// One boot of one device.
fn boot(
    cfg: &BenchConfig,
    device: BenchDevice,
    iteration: u32,
    spec: BootSpec,
    disk: Option<&Path>,
    bar: &Progress,
) -> DeviceRun {
    let cmdline = spec.cmdline;
    let rss_log = rss::RssLog::default();
    let rtt_log = pvkit_net::host_rtt::HostRttLog::new();
    let observer = match device {
        BenchDevice::Balloon => {
            rss::observer(bar.observer(), rss_log.clone()).unwrap_or_else(|| bar.observer())
        }
        _ => bar.observer(),
    };
    let vm = VmConfig {
        kernel: cfg.kernel.clone(),
        mem_mib: match device {
            BenchDevice::Balloon => cfg.mem_mib.max(names::BALLOON_MEM_MIB),
            _ => cfg.mem_mib,
        },
        cmdline: cmdline.clone(),
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: match device {
            BenchDevice::Spinlock => cfg.spinlock_timeout,
            _ => cfg.timeout,
        },
        seccomp: cfg.seccomp,
        // Block only: the other boots have no ATA ports and no PV block device.
        disk: disk.filter(|_| device.needs_disk()).map(|path| DiskConfig {
            path: path.to_path_buf(),
            read_only: false,
            base: None,
        }),
        // Net only: both NICs, each on its own in-VMM loopback peer (no privileges).
        net: device.needs_nics().then(|| NetConfig {
            backend: NetBackendConfig::Loopback,
            mac: None,
            host_rtt: Some(rtt_log.clone()),
        }),
        nic: NicModel::Both,
        phase_observer: Some(observer),
        vcpus: spec.vcpus,
        irq_test: device.needs_irq_test(),
        ..VmConfig::default()
    };
    let before = bar.phases();
    let start = Instant::now();
    let result = pvkit_vmm::vm::run(&vm).map_err(|e| e.to_string());
    let wall = start.elapsed();
    let phases = result.as_ref().map_or(0, |o| o.phases.len() as u64);
    bar.boot_done(phases, bar.phases() - before, spec.cases);
    let rss_at_end = rss_log.lock().map(|l| l.clone()).unwrap_or_default();
    DeviceRun {
        device,
        iteration,
        cmdline,
        result,
        wall,
        rss_at_end,
        host_rtt: rtt_log.runs(),
    }
}

/// Turns all boots into cases, run-level problems and unavailable cases.
fn collect(runs: &[DeviceRun]) -> (Vec<Case>, Vec<String>, Vec<expected::Unavailable>) {
    let mut all = Vec::new();
    let mut problems = Vec::new();
    let mut failed_cases = Vec::new();
    let mut skips = Vec::new();
    for r in runs {
        let name = r.device.name();
        let boot = if runs.iter().filter(|x| x.device == r.device).count() > 1 {
            format!("{name} (boot {}, `{}`)", r.iteration + 1, r.cmdline)
        } else {
            name.to_owned()
        };
        let o = match &r.result {
            Ok(o) => o,
            Err(e) => {
                let why = format!("the VM could not run: {e}");
                problems.push(format!("{boot}: {why}"));
                failed_cases.push(cases::failed_case(name, "guest", "boot", why));
                continue;
            }
        };
        let (mut ms, stray) = cases::measurements(o);
        if r.device == BenchDevice::Spinlock {
            spinlock::attribute_exits(&mut ms, &o.ledger);
        }
        problems.extend(stray.into_iter().map(|p| format!("{boot}: {p}")));
        let skipped = expected::skipped(&o.console);
        let ran = ms
            .iter()
            .any(|m| names::bench_device(m.case.device) == r.device);
        let why = match &o.stop {
            StopReason::Exit(0) => None,
            // The guest's verdict: it exits 1 when one of its cases failed (that case is
            // reported FAILED with its own reason).
            StopReason::Exit(code) => Some(format!(
                "the guest exited with code {code} (it counted a failed case)"
            )),
            other => Some(format!(
                "the guest stopped after {} phase(s): {other}",
                o.phases.len()
            )),
        };
        if let Some(why) = why {
            problems.push(format!("{boot}: {why}"));
            if !matches!(o.stop, StopReason::Exit(_)) {
                failed_cases.push(cases::failed_case(name, "guest", "boot", why));
            }
        } else if !ran && skipped.is_empty() {
            let why = format!(
                "the guest ran no {name} cases and skipped none: `{}` is not supported by \
                 this guest build",
                r.cmdline
            );
            problems.push(format!("{boot}: {why}"));
            failed_cases.push(cases::failed_case(name, "guest", "boot", why));
        }
        skips.extend(skipped);
        all.extend(ms);
    }
    let measured: Vec<pvkit_abi::bench::CaseId> = all.iter().map(|m| m.case).collect();
    let mut devices: Vec<BenchDevice> = Vec::new();
    for r in runs {
        if !devices.contains(&r.device) {
            devices.push(r.device);
        }
    }
    let unavailable = devices
        .into_iter()
        .filter(|d| runs.iter().any(|r| r.device == *d && r.result.is_ok()))
        .flat_map(|d| {
            let clean = runs.iter().filter(|r| r.device == d).all(|r| {
                r.result
                    .as_ref()
                    .is_ok_and(|o| matches!(o.stop, StopReason::Exit(_)))
            });
            let mut list = expected::unavailable(d, &measured, &skips);
            if !clean {
                for u in list.iter_mut().filter(|u| u.reason == expected::NOT_RUN) {
                    u.reason = "not run: the guest stopped before it".into();
                }
            }
            list
        })
        .collect();
    let mut out = cases::build_cases(&all);
    let rtt: Vec<_> = runs
        .iter()
        .flat_map(|r| r.host_rtt.iter().cloned())
        .collect();
    host_rtt::apply(&mut out, &rtt);
    for c in out.iter_mut() {
        let kib: Vec<u64> = runs
            .iter()
            .flat_map(|r| &r.rss_at_end)
            .filter(|(case, _)| {
                names::case_label(*case) == format!("{}/{}/{}", c.device, c.variant, c.workload)
            })
            .map(|(_, k)| *k)
            .collect();
        if !kib.is_empty() {
            c.notes.push(rss::note(&kib));
        }
    }
    spinlock::add_guest_notes(
        &mut out,
        runs.iter()
            .filter(|r| r.device == BenchDevice::Spinlock)
            .filter_map(|r| r.result.as_ref().ok())
            .map(|o| o.console.as_slice()),
    );
    out.extend(failed_cases);
    (out, problems, unavailable)
}

/// Notes on the `pv-eoi` case: what `KVM_GET_SUPPORTED_CPUID` says (`offered`, `None` if
/// it could not be read), and, when PV EOI never took effect, no speedup: every interrupt
/// was acknowledged with the x2APIC EOI, the path of `x2apic-eoi`, so any "speedup" would
/// be noise.
fn pv_eoi_notes(report: &mut Report, offered: Option<bool>) {
    for c in report.cases.iter_mut() {
        if c.device != "irq" || c.variant != "pv-eoi" || c.is_failed() {
            continue;
        }
        c.notes.push(match offered {
            Some(true) => "KVM_GET_SUPPORTED_CPUID offers KVM_FEATURE_PV_EOI".into(),
            Some(false) => "KVM_GET_SUPPORTED_CPUID lacks KVM_FEATURE_PV_EOI".into(),
            None => "KVM_GET_SUPPORTED_CPUID could not be read".into(),
        });
        if c.notes.iter().any(|n| n.contains("not effective")) {
            c.speedup = None;
            c.notes
                .push("no speedup shown: the same acknowledge path as x2apic-eoi".into());
        }
    }
}

/// Adds the null-port round trip as a baseline and relates PV 1 MiB reads to the host's
/// page-cache read.
fn add_exit_baselines(report: &mut Report) {
    let ok = |c: &&Case| !c.is_failed();
    if let Some(c) = report
        .cases
        .iter()
        .filter(ok)
        .find(|c| c.device == "exit" && c.variant == "null-port")
    {
        let (ns, cycles) = (c.ns_per_op, c.guest_cycles_per_op);
        report.baselines.push(Baseline {
            name: "null-port exit round trip, host wall time per exit".into(),
            value: ns,
            unit: "ns".into(),
        });
        report.baselines.push(Baseline {
            name: "null-port exit round trip, guest cycles per exit (timed loop)".into(),
            value: cycles,
            unit: "cycles".into(),
        });
    }
    let Some(host) = report
        .baselines
        .iter()
        .find(|b| b.name.starts_with("host page-cache read"))
        .map(|b| b.value)
    else {
        return;
    };
    for c in report.cases.iter_mut() {
        let pv_seqread = c.device == "block" && c.workload == "seqread-1MiB" && c.kind == Kind::Pv;
        if pv_seqread && !c.is_failed() && host > 0.0 {
            let pct = c.throughput / host * 100.0;
            c.notes.push(format!(
                "{pct:.1}% of the host page-cache read ({host:.0} MB/s); target ≥ 50%"
            ));
        }
    }
}

/// The host kernel release (`/proc/sys/kernel/osrelease`, as `uname -r` prints it).
pub fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The git commit of the source tree this binary was built from, if that tree is still
/// there: `git rev-parse --short HEAD` in it, `-dirty` if tracked files changed; else
/// `"unknown"`.
pub fn git_commit() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty()) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{commit}-dirty"),
        _ => commit,
    }
}

/// The report's platform block. `tsc_khz` comes from a vCPU (0 if unknown).
pub fn platform(tsc_khz: Option<u32>) -> Platform {
    let info = pvkit_vmm::vstate::kvm::info(tsc_khz);
    Platform {
        kind: info.kind.name().into(),
        // Everything but kvm_pvm runs the guest on VMX/SVM.
        hardware_virtualization: info.kind != PlatformKind::KvmPvm,
        cpu_model: info.cpu_model,
        tsc_khz: tsc_khz.map_or(0, u64::from),
        host_kernel: host_kernel(),
        pvkit_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: git_commit(),
        abi_version: pvkit_abi::ABI_VERSION.to_string(),
    }
}

/// The files [`write_outputs`] wrote.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// `results.json`.
    pub json: PathBuf,
    /// `results.md`.
    pub markdown: PathBuf,
    /// `chart.svg`.
    pub svg: PathBuf,
    /// `chart.png`.
    pub png: PathBuf,
}

/// Writes `results.json`, `results.md` ([`BenchOutcome::markdown`]), `chart.svg` and
/// `chart.png` into `dir` (created if missing).
pub fn write_outputs(outcome: &BenchOutcome, dir: &Path) -> Result<Outputs, RunnerError> {
    let report = &outcome.report;
    let err = |path: &Path, e: &dyn std::fmt::Display| RunnerError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
    let out = Outputs {
        json: dir.join("results.json"),
        markdown: dir.join("results.md"),
        svg: dir.join("chart.svg"),
        png: dir.join("chart.png"),
    };
    pvkit_report::write_json(report, &out.json).map_err(|e| err(&out.json, &e))?;
    std::fs::write(&out.markdown, outcome.markdown()).map_err(|e| err(&out.markdown, &e))?;
    pvkit_report::write_svg(report, &out.svg).map_err(|e| err(&out.svg, &e))?;
    pvkit_report::write_png(report, &out.png).map_err(|e| err(&out.png, &e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_guest_cycles() {
        let mut c = cases::failed_case("block", "pv-ring", "randread-4KiB", String::new());
        c.guest_cycles_per_op_median = 2_000_000.0;
        c.guest_cycles_per_op_p99 = 4_000_000.0;
        let mut failed = cases::failed_case("block", "ata-pio", "randread-4KiB", "x".into());
        failed.guest_cycles_per_op_median = f64::NAN;
        let mut all = [c, failed];
        latency_from_cycles(&mut all, 2_000_000);
        assert_eq!(all[0].ns_per_op_p50, Some(1_000_000.0));
        assert_eq!(all[0].ns_per_op_p99, Some(2_000_000.0));
        assert_eq!(all[1].ns_per_op_p50, None);
        latency_from_cycles(&mut all, 0);
        assert_eq!(
            all[0].ns_per_op_p50,
            Some(1_000_000.0),
            "unknown TSC: left as is"
        );
    }

    #[test]
    fn cmdlines() {
        let mut c = BenchConfig::default();
        assert_eq!(c.cmdline(BenchDevice::Block), "bench=block");
        c.quick = true;
        c.extra_cmdline = " ops=5 ".into();
        assert_eq!(c.cmdline(BenchDevice::Exit), "bench=exit quick ops=5");
    }

    #[test]
    fn platform_block() {
        let p = platform(Some(2_300_000));
        assert_eq!(p.tsc_khz, 2_300_000);
        assert_eq!(p.abi_version, "2.0");
        assert_eq!(p.hardware_virtualization, p.kind != "kvm_pvm");
        assert!(!p.git_commit.is_empty());
    }

    #[test]
    fn outputs_are_written() {
        let dir = std::env::temp_dir().join(format!("pvkit-runner-out-{}", std::process::id()));
        let mut report = pvkit_report::sample::sample_report();
        report.compute_speedups();
        let outcome = BenchOutcome {
            report,
            runs: Vec::new(),
            problems: Vec::new(),
            unavailable: expected::unavailable(BenchDevice::Clock, &[], &[]),
        };
        let o = write_outputs(&outcome, &dir).unwrap();
        let md = std::fs::read_to_string(&o.markdown).unwrap();
        assert!(md.contains("## Unavailable cases") && md.contains("clock/pit/read"));
        for p in [&o.json, &o.markdown, &o.svg, &o.png] {
            assert!(std::fs::metadata(p).unwrap().len() > 0, "{}", p.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
