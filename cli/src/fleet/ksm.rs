//! The host's KSM (kernel same-page merging, /sys/kernel/mm/ksm): whether it runs, how many
//! pages it shares, waiting for it to settle, and — only when the user asks with
//! `--enable-ksm` — switching it on for one run and back to what it was afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

/// KSM's sysfs directory.
pub const KSM_DIR: &str = "/sys/kernel/mm/ksm";

fn read_u64(name: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new(KSM_DIR).join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether KSM runs (`run` is 1); `None` when the kernel has no KSM.
pub fn running() -> Option<bool> {
    read_u64("run").map(|v| v == 1)
}

/// Pages KSM currently shares (`pages_sharing`: mappings that point at a merged page).
pub fn pages_sharing() -> Option<u64> {
    read_u64("pages_sharing")
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum KsmError {
    /// The kernel has no KSM.
    #[error("this kernel has no KSM ({KSM_DIR} is missing)")]
    Missing,
    /// Writing the switch failed.
    #[error("cannot write {KSM_DIR}/run (needs root): {0}")]
    Write(std::io::Error),
}

/// KSM switched on for the life of this value; dropping it writes back the previous state.
#[derive(Debug)]
pub struct KsmOn {
    previous: u64,
}

impl KsmOn {
    /// Switches KSM on (`run = 1`), remembering what it was.
    pub fn enable() -> Result<Self, KsmError> {
        let previous = read_u64("run").ok_or(KsmError::Missing)?;
        std::fs::write(Path::new(KSM_DIR).join("run"), "1").map_err(KsmError::Write)?;
        Ok(Self { previous })
    }
}

impl Drop for KsmOn {
    fn drop(&mut self) {
        if self.previous != 1 {
            // Best effort: the error cannot be returned from a drop; the report says KSM
            // was switched on for the run.
            let _ = std::fs::write(Path::new(KSM_DIR).join("run"), self.previous.to_string());
        }
    }
}

/// Full passes KSM makes before its merging can be complete: a page is merged only once
/// it was seen unchanged on one pass (unstable tree) and matched on a later one.
pub const SETTLE_SCANS: u64 = 2;
/// How long `pages_sharing` must stay the same, after [`SETTLE_SCANS`] passes, to count as
/// settled (with `smart_scan` a "full scan" skips pages, so passes alone are not enough).
pub const SETTLE_STILL: Duration = Duration::from_secs(5);

/// Waits until KSM has settled: [`SETTLE_SCANS`] more full passes (`full_scans`) and
/// `pages_sharing` unchanged for [`SETTLE_STILL`], polling every `poll`, or until
/// `deadline`; returns `pages_sharing` then.
pub fn wait_settled(poll: Duration, deadline: Instant) -> u64 {
    let start = read_u64("full_scans").unwrap_or(0);
    let mut last = pages_sharing().unwrap_or(0);
    let mut since = Instant::now();
    while Instant::now() + poll < deadline && pvkit_vmm::runtime::signals::pending().is_none() {
        std::thread::sleep(poll);
        let now = pages_sharing().unwrap_or(0);
        if now != last {
            last = now;
            since = Instant::now();
        }
        let scans = read_u64("full_scans").unwrap_or(0);
        if scans >= start + SETTLE_SCANS && since.elapsed() >= SETTLE_STILL {
            break;
        }
    }
    last
}
