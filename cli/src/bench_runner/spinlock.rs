//! The spinlock cases: one boot per case, `--vcpus N` with the guest's
//! `lock=<plain|pv> cpus=N iters=K lock_bench`, N = 2, 4, 8 on whatever the host has (2
//! cores on the reference machine: 1×, 2× and 4× overcommit).
//!
//! The phase markers are made by vCPU 0 and its ledger sees only its own exits, while
//! every vCPU makes `LockWait` and `LockKick` calls. A spinlock boot runs exactly one case
//! and makes no other `LockWait`/`LockKick`, so the case's exits are taken from the VM's
//! merged ledger ([`attribute_exits`]); the guest counts its calls too (`extra` of its
//! sample) and [`super::cases`] requires the two to agree.

use std::collections::BTreeMap;

use pvkit_abi::bench::Device;
use pvkit_abi::Hypercall;
use pvkit_vmm::exit::ledger::{ExitKind, LedgerSnapshot};

use super::cases::Measurement;

/// One spinlock boot: vCPUs, the guest's lock, acquisitions per vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinlockBoot {
    /// vCPUs (= CPUs contending).
    pub vcpus: u32,
    /// `plain` or `pv`.
    pub lock: &'static str,
    /// Acquisitions per vCPU.
    pub iters: u64,
}

/// Acquisitions per vCPU by vCPU count, full and `--quick`. Each vCPU's loop must outlast
/// several host time slices for overcommit to show (a shorter loop often runs to its end
/// in one slice, without contention: at 500 per vCPU the 4-vCPU plain lock collapsed in
/// one run and not in the next); the plain lock's collapsed boots took 40–90 s each on
/// the loaded 2-core reference host, hence [`DEFAULT_TIMEOUT`].
const ITERS: [(u32, u64, u64); 3] = [(2, 1000, 200), (4, 1000, 200), (8, 200, 60)];

/// The watchdog of a spinlock boot unless `--timeout` is given.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The boots of the spinlock device, in run order (plain before PV at each size).
pub fn boots(quick: bool) -> Vec<SpinlockBoot> {
    ITERS
        .iter()
        .flat_map(|&(vcpus, full, small)| {
            ["plain", "pv"].map(|lock| SpinlockBoot {
                vcpus,
                lock,
                iters: if quick { small } else { full },
            })
        })
        .collect()
}

impl SpinlockBoot {
    /// The guest command line (with `extra`, e.g. `iters=` from `bench --cmdline`, last so
    /// it wins).
    pub fn cmdline(&self, extra: &str) -> String {
        let mut s = format!(
            "lock={} cpus={} iters={} lock_bench",
            self.lock, self.vcpus, self.iters
        );
        if !extra.trim().is_empty() {
            s.push(' ');
            s.push_str(extra.trim());
        }
        s
    }
}

/// The `LockWait` and `LockKick` exits of the whole VM, as a ledger delta.
pub fn lock_exits(ledger: &LedgerSnapshot) -> LedgerSnapshot {
    let mut counts = BTreeMap::new();
    for h in [Hypercall::LockWait, Hypercall::LockKick] {
        let n = ledger.count(ExitKind::Hypercall(h));
        if n != 0 {
            counts.insert(ExitKind::Hypercall(h), n);
        }
    }
    LedgerSnapshot {
        total: counts.values().sum(),
        counts,
        notifications: BTreeMap::new(),
        kernel: BTreeMap::new(),
    }
}

/// Replaces the exits of the spinlock phases in `ms` with the VM's `LockWait` and
/// `LockKick` exits (see the module documentation).
pub fn attribute_exits(ms: &mut [Measurement], ledger: &LedgerSnapshot) {
    let exits = lock_exits(ledger);
    for m in ms.iter_mut().filter(|m| m.case.device == Device::Spinlock) {
        if let Some(p) = &mut m.phase {
            p.exits = exits.clone();
        }
    }
}

/// What the guest's summary line (`lock: kind=… cpus=N … spins=S waits=W kicks=K
/// steal_us=U …`) says, as `(kind, cpus, note)`; `None` if the console has no such line.
/// Console text is guest data: numbers that do not parse are left out.
pub fn guest_note(console: &[u8]) -> Option<(String, u32, String)> {
    let text = String::from_utf8_lossy(console);
    let line = text.lines().rev().find(|l| l.starts_with("lock: kind="))?;
    let get = |key: &str| {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
    };
    let num = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok());
    let kind = get("kind")?.to_owned();
    let cpus = u32::try_from(num("cpus")?).ok()?;
    let mut parts = Vec::new();
    if let Some(n) = num("spins") {
        parts.push(format!("{n} failed lock reads (spins)"));
    }
    if let (Some(w), Some(k)) = (num("waits"), num("kicks")) {
        parts.push(format!("{w} LockWait / {k} LockKick"));
    }
    if let Some(us) = num("steal_us") {
        parts.push(format!(
            "steal time {:.1} ms (all vCPUs, during the loop)",
            us as f64 / 1000.0
        ));
    }
    Some((kind, cpus, format!("guest: {}", parts.join(", "))))
}

/// Adds the note of each spinlock boot (from its captured console) to its case in `cases`.
pub fn add_guest_notes<'a>(
    cases: &mut [pvkit_report::Case],
    consoles: impl IntoIterator<Item = &'a [u8]>,
) {
    for console in consoles {
        let Some((kind, cpus, note)) = guest_note(console) else {
            continue;
        };
        let variant = match kind.as_str() {
            "plain" => "ticket-spin",
            "pv" => "pv-spinlock",
            _ => continue,
        };
        let workload = format!("contend-{cpus}vcpu");
        if let Some(c) = cases
            .iter_mut()
            .find(|c| c.device == "spinlock" && c.variant == variant && c.workload == workload)
        {
            c.notes.push(note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boots_cover_both_locks_at_2_4_8_vcpus() {
        let b = boots(false);
        assert_eq!(b.len(), 6);
        assert_eq!(
            b.iter().map(|b| (b.vcpus, b.lock)).collect::<Vec<_>>(),
            [
                (2, "plain"),
                (2, "pv"),
                (4, "plain"),
                (4, "pv"),
                (8, "plain"),
                (8, "pv")
            ]
        );
        assert!(boots(true).iter().zip(&b).all(|(q, f)| q.iters < f.iters));
        assert_eq!(
            b[2].cmdline(" iters=5 "),
            "lock=plain cpus=4 iters=1000 lock_bench iters=5"
        );
    }

    #[test]
    fn the_guest_line_becomes_a_note_and_garbage_does_not() {
        let line = b"lock: cpu 0 steal_us=5\nlock: kind=pv cpus=4 iters=5 counter=20 \
            expected=20 time_us=1 acq_per_s=1 spins=17 waits=3 kicks=2 steal_us=2500\n";
        let (kind, cpus, note) = guest_note(line).unwrap();
        assert_eq!((kind.as_str(), cpus), ("pv", 4));
        assert_eq!(
            note,
            "guest: 17 failed lock reads (spins), 3 LockWait / 2 LockKick, steal time 2.5 ms \
             (all vCPUs, during the loop)"
        );
        assert_eq!(guest_note(b"lock: kind=pv cpus=x\n"), None);
        assert_eq!(guest_note(b"nothing\n"), None);
        let (_, _, partial) = guest_note(b"lock: kind=plain cpus=2 spins=zz\n").unwrap();
        assert_eq!(partial, "guest: ");
    }

    #[test]
    fn only_lock_calls_are_attributed() {
        let mut l = LedgerSnapshot::default();
        l.counts.insert(ExitKind::Hypercall(Hypercall::LockWait), 7);
        l.counts.insert(ExitKind::Hypercall(Hypercall::LockKick), 5);
        l.counts
            .insert(ExitKind::Hypercall(Hypercall::ConsoleWrite), 9);
        l.total = 21;
        let e = lock_exits(&l);
        assert_eq!(e.total, 12);
        assert_eq!(e.count(ExitKind::Hypercall(Hypercall::ConsoleWrite)), 0);
    }
}
