//! `pvkit bench --only fleet`: the fleet's benchmark, three fleet runs.
//!
//! 1. Start and footprint: `vms` guests of 64 MiB with no memory workload (start rate,
//!    PSS and VMM overhead per VM, the ring).
//! 2. and 3. Density: `density_vms` guests of 128 MiB that each touch 96 MiB and stop using
//!    it, without and then with the balloon giving it back; the host memory per VM of each
//!    run says how many such guests fit in `budget_mib` MiB.
//! 4. When KSM runs (or `enable_ksm` switches it on for the run): the run without the
//!    balloon again with guest RAM `MADV_MERGEABLE`, measured once KSM has settled. The
//!    guests touch identical pages, so this is KSM's best case. When KSM is off the report
//!    says so and this run is skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{report, FleetConfig, FleetError, FleetOutcome};

/// Guest RAM of the start run, in MiB.
pub const START_MEM_MIB: u64 = 64;
/// Guest RAM of the density runs, in MiB.
pub const DENSITY_MEM_MIB: u64 = 128;
/// What each density guest touches, in MiB.
pub const DENSITY_TOUCH_MIB: u64 = 96;

/// What to run.
#[derive(Clone, Debug)]
pub struct FleetBenchConfig {
    /// The `pvkit` binary.
    pub pvkit: PathBuf,
    /// Guests of the start run.
    pub vms: u32,
    /// Guests of each density run.
    pub density_vms: u32,
    /// The host memory budget of the density figure, in MiB.
    pub budget_mib: u64,
    /// Bound on each run.
    pub timeout: Duration,
    /// Confine the VMM threads with seccomp.
    pub seccomp: bool,
    /// Switch KSM on for the KSM run (and back afterwards).
    pub enable_ksm: bool,
}

/// The runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FleetBench {
    /// The host memory budget of the density figure, in MiB.
    pub budget_mib: u64,
    /// The start run.
    pub start: FleetOutcome,
    /// Density without the balloon.
    pub density_without_balloon: FleetOutcome,
    /// Density with the balloon.
    pub density_with_balloon: FleetOutcome,
    /// Density without the balloon, guest RAM mergeable, KSM on (`None`: KSM was off).
    pub density_with_ksm: Option<FleetOutcome>,
    /// KSM was switched on by this run (`--enable-ksm`) and back off after.
    pub ksm_enabled_for_run: bool,
    /// Guests that fit in the budget without the balloon.
    pub vms_in_budget_without_balloon: Option<u64>,
    /// Guests that fit in the budget with the balloon.
    pub vms_in_budget_with_balloon: Option<u64>,
}

impl FleetBench {
    /// Every run passed.
    pub fn passed(&self) -> bool {
        self.start.passed()
            && self.density_without_balloon.passed()
            && self.density_with_balloon.passed()
            && self
                .density_with_ksm
                .as_ref()
                .is_none_or(FleetOutcome::passed)
    }

    /// The report.
    pub fn markdown(&self) -> String {
        let mut runs = vec![
            ("without balloon", &self.density_without_balloon),
            ("with balloon (give back)", &self.density_with_balloon),
        ];
        if let Some(k) = &self.density_with_ksm {
            runs.push(("without balloon, MADV_MERGEABLE + KSM", k));
        }
        let mut verdicts: Vec<String> = runs
            .iter()
            .map(|(name, o)| format!("{name}: {}", verdict(o)))
            .collect();
        if self.ksm_enabled_for_run {
            verdicts
                .push("KSM was switched on for the KSM run (--enable-ksm) and back after".into());
        }
        format!(
            "## Fleet: start and footprint\n\n{}\n## Fleet: density\n\n{}\nRuns: {}.\n",
            report::markdown(&self.start),
            report::density_markdown(&runs, self.budget_mib),
            verdicts.join("; "),
        )
    }

    /// Writes `fleet.json` and `fleet.md` into `dir` (created if missing); returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("fleet.json");
        let md = dir.join("fleet.md");
        std::fs::write(&json, report::json(self))?;
        std::fs::write(&md, self.markdown())?;
        Ok((json, md))
    }
}

fn verdict(o: &FleetOutcome) -> String {
    if o.passed() {
        "passed".into()
    } else {
        format!("FAILED ({})", o.problems.join("; "))
    }
}

/// Runs the three fleets one after the other.
pub fn run(cfg: &FleetBenchConfig) -> Result<FleetBench, FleetError> {
    let base = |vms, mem| {
        let mut c = FleetConfig::new(cfg.pvkit.clone(), vms, mem);
        c.timeout = cfg.timeout;
        c.seccomp = cfg.seccomp;
        c
    };
    let start = super::run(&base(cfg.vms, START_MEM_MIB))?;
    let mut d = base(cfg.density_vms, DENSITY_MEM_MIB);
    d.touch_mib = DENSITY_TOUCH_MIB;
    let without = super::run(&d)?;
    d.give_back = true;
    let with = super::run(&d)?;
    d.give_back = false;
    d.mergeable = true;
    let switch = if cfg.enable_ksm {
        Some(super::ksm::KsmOn::enable().map_err(|e| FleetError::Config(e.to_string()))?)
    } else {
        None
    };
    let with_ksm = match super::ksm::running() {
        Some(true) => Some(super::run(&d)?),
        _ => None,
    };
    let ksm_enabled_for_run = switch.is_some();
    drop(switch);
    Ok(FleetBench {
        density_with_ksm: with_ksm,
        ksm_enabled_for_run,
        budget_mib: cfg.budget_mib,
        vms_in_budget_without_balloon: without.vms_in_budget(cfg.budget_mib),
        vms_in_budget_with_balloon: with.vms_in_budget(cfg.budget_mib),
        start,
        density_without_balloon: without,
        density_with_balloon: with,
    })
}
