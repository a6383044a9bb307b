//! The host's resident set at the end of each phase, for the cases whose result is memory
//! (the balloon): a [`PhaseObserver`] that reads `/proc/self/statm` (opened before the VM
//! starts: the vCPU thread that ends a phase is confined and may only `pread64` it) and
//! passes the phase on to the next observer (the progress bar).
//!
//! The figure is the whole `pvkit` process's (the VM runs in-process): the same overhead in
//! every boot, so boots of one device compare.

use std::fs::File;
use std::sync::{Arc, Mutex};

use pvkit_abi::bench::CaseId;
use pvkit_vmm::bench::PhaseRecord;
use pvkit_vmm::devices::pv::balloon::read_rss_kib;
use pvkit_vmm::PhaseObserver;

/// RSS (KiB) at the end of each phase, in order.
pub type RssLog = Arc<Mutex<Vec<(CaseId, u64)>>>;

/// An observer that logs the RSS into `log`, then calls `next`. `None` if `statm` cannot be
/// opened (no RSS figures, the run goes on).
pub fn observer(next: PhaseObserver, log: RssLog) -> Option<PhaseObserver> {
    let statm = File::open("/proc/self/statm").ok()?;
    let f = move |rec: &PhaseRecord| {
        if let Some(kib) = read_rss_kib(&statm) {
            if let Ok(mut l) = log.lock() {
                l.push((rec.case, kib));
            }
        }
        (next.0)(rec);
    };
    Some(PhaseObserver(Arc::new(f)))
}

/// The note of a case with the RSS at the end of its phase in each boot.
pub fn note(kib: &[u64]) -> String {
    let list: Vec<String> = kib
        .iter()
        .map(|k| format!("{:.1}", *k as f64 / 1024.0))
        .collect();
    format!(
        "host RSS (whole pvkit process) at the end of the phase: {} MiB",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_list_every_boot_in_mib() {
        assert_eq!(
            note(&[1024, 2560]),
            "host RSS (whole pvkit process) at the end of the phase: 1.0, 2.5 MiB"
        );
    }
}
