//! The progress bar on stderr: one tick per finished benchmark phase.
//!
//! Hidden when stderr is not a terminal or under CI (`CI` set), so logs and tests see only
//! the report.
//!
//! The VM's phase observer runs on the vCPU thread, inside the `End` marker's exit, and that
//! thread is confined by seccomp to the system calls the VMM itself makes. So the observer
//! ([`Progress::observer`]) only bumps two atomics; a ticker thread started here (by the
//! unconfined caller) redraws the bar from them every 100 ms.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pvkit_abi::bench::CaseId;

use super::names;
use pvkit_vmm::bench::{PhaseObserver, PhaseRecord};

/// How often the ticker redraws.
const TICK: Duration = Duration::from_millis(100);

/// What the observer writes and the ticker reads.
#[derive(Debug, Default)]
struct Shared {
    /// Phases finished in all boots so far.
    phases: AtomicU64,
    /// The packed id of the last finished case (0: none yet).
    last: AtomicU64,
    /// Tells the ticker to stop.
    stop: AtomicBool,
}

/// Whether a bar should be drawn: stderr is a terminal and `CI` is not set.
pub fn wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

/// The bar (possibly hidden) and its ticker.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    shared: Arc<Shared>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Progress {
    /// A bar of `total` phases, drawn only if `visible`.
    pub fn new(visible: bool, total: u64) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let style = ProgressStyle::with_template(
            "{elapsed:>4} [{bar:30}] {pos}/{len} phases  {prefix:8} {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let shared = Arc::new(Shared::default());
        let ticker = visible
            .then(|| {
                let (bar, shared) = (bar.clone(), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name("pvkit-progress".into())
                    .spawn(move || tick(&bar, &shared))
                    .ok()
            })
            .flatten();
        Self {
            bar,
            shared,
            ticker: Mutex::new(ticker),
        }
    }

    /// The phase observer for a VM: bumps the counters, nothing else (no system calls).
    pub fn observer(&self) -> PhaseObserver {
        let shared = Arc::clone(&self.shared);
        PhaseObserver(Arc::new(move |p: &PhaseRecord| {
            shared.last.store(p.case.to_u64(), Ordering::Relaxed);
            shared.phases.fetch_add(1, Ordering::Release);
        }))
    }

    /// Phases counted so far.
    pub fn phases(&self) -> u64 {
        self.shared.phases.load(Ordering::Acquire)
    }

    /// A device's boot starts.
    pub fn device(&self, name: &str) {
        self.bar.set_prefix(name.to_owned());
        self.bar.set_message("booting");
    }

    /// A boot ended after `phases` phases, of which the observer counted `observed`; the
    /// rest are counted now, and a device that ran fewer phases than `expected` shortens
    /// the bar.
    pub fn boot_done(&self, phases: u64, observed: u64, expected: u64) {
        self.shared
            .phases
            .fetch_add(phases.saturating_sub(observed), Ordering::Release);
        if phases < expected {
            let len = self.bar.length().unwrap_or(0);
            self.bar.set_length(len.saturating_sub(expected - phases));
        }
        redraw(&self.bar, &self.shared);
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }

    /// Stops the ticker and removes the bar.
    pub fn finish(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let ticker = self
            .ticker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = ticker {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn tick(bar: &ProgressBar, shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        redraw(bar, shared);
        std::thread::sleep(TICK);
    }
}

fn redraw(bar: &ProgressBar, shared: &Shared) {
    let pos = shared.phases.load(Ordering::Acquire);
    if bar.length().is_some_and(|len| pos > len) {
        bar.set_length(pos);
    }
    bar.set_position(pos);
    if let Ok(c) = CaseId::try_from(shared.last.load(Ordering::Relaxed)) {
        bar.set_message(format!(
            "last done: {}/{}",
            names::variant_name(c.variant),
            names::workload_name(c.workload)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_abi::bench::{Device, Variant, Workload};
    use pvkit_vmm::exit::ledger::LedgerSnapshot;

    #[test]
    fn observer_counts_and_boot_done_fills_in() {
        let p = Progress::new(false, 10);
        let obs = p.observer();
        let rec = PhaseRecord {
            case: CaseId {
                device: Device::Exit,
                variant: Variant::PortOut,
                workload: Workload::RoundTrip,
            },
            ops: 1,
            exits: LedgerSnapshot::default(),
            host_time: Duration::ZERO,
        };
        (obs.0)(&rec);
        (obs.0)(&rec);
        assert_eq!(p.phases(), 2);
        // A VM that did not call the observer for one of its 3 phases.
        p.boot_done(3, 2, 4);
        assert_eq!(p.phases(), 3);
        assert_eq!(p.bar.length(), Some(9));
        p.finish();
    }
}
