//! The exit ledger: every VM exit counted by kind, with snapshots for attributing exits to
//! a benchmark phase.
//!
//! The run loop records each exit once, before it is handled. Keys are bounded (ports,
//! known hypercalls, a fixed set of MMIO regions), so a hostile guest cannot grow the ledger
//! without bound. Notifications that never reach the vCPU thread (ioeventfd signals served
//! by other threads) are counted through shared [`NotifyCounter`]s and appear in every
//! snapshot next to the exits.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pvkit_abi::call::Hypercall;

/// One kind of VM exit, as the ledger counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    /// A port read (`in`) from this port.
    PortRead(u16),
    /// A port write (`out`) to this port that was not a hypercall.
    PortWrite(u16),
    /// A hypercall with a known number.
    Hypercall(Hypercall),
    /// A hypercall whose number this host does not know (answered `ENOSYS`).
    UnknownHypercall,
    /// An MMIO read in the named region.
    MmioRead(&'static str),
    /// An MMIO write in the named region.
    MmioWrite(&'static str),
    /// `hlt` with interrupts that can never wake the vCPU.
    Hlt,
    /// Triple fault or other shutdown.
    Shutdown,
    /// KVM could not emulate an instruction or enter the guest.
    InternalError,
    /// `KVM_RUN` was interrupted by a signal (the watchdog).
    Interrupted,
    /// Any other exit reason.
    Other,
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::PortRead(p) => write!(f, "port {p:#06x} read"),
            ExitKind::PortWrite(p) => write!(f, "port {p:#06x} write"),
            ExitKind::Hypercall(h) => write!(f, "hypercall {}", h.name()),
            ExitKind::UnknownHypercall => f.write_str("hypercall unknown"),
            ExitKind::MmioRead(r) => write!(f, "mmio {r} read"),
            ExitKind::MmioWrite(r) => write!(f, "mmio {r} write"),
            ExitKind::Hlt => f.write_str("hlt"),
            ExitKind::Shutdown => f.write_str("shutdown"),
            ExitKind::InternalError => f.write_str("internal error"),
            ExitKind::Interrupted => f.write_str("interrupted (signal)"),
            ExitKind::Other => f.write_str("other"),
        }
    }
}

/// A counter of notifications served outside the vCPU thread (e.g. ioeventfd signals).
/// The serving thread increments it; the ledger reads it in every snapshot.
pub type NotifyCounter = Arc<AtomicU64>;

/// Counters the kernel keeps for one vCPU, including exits handled in the kernel that never
/// reach userspace (KVM's binary statistics, `KVM_GET_STATS_FD`). The ledger reads them in
/// every snapshot, next to its own counts.
pub trait KernelCounters: Send + Sync + fmt::Debug {
    /// The current values by name, a small fixed set; an empty list if they cannot be read.
    fn read(&self) -> Vec<(&'static str, u64)>;
}

impl KernelCounters for crate::vstate::stats::VcpuStats {
    fn read(&self) -> Vec<(&'static str, u64)> {
        crate::vstate::stats::VcpuStats::read(self)
    }
}

/// Counts of every exit by kind, plus registered notification counters and, where set, the
/// kernel's own counters of the vCPU ([`ExitLedger::set_kernel_counters`]).
#[derive(Debug, Default)]
pub struct ExitLedger {
    counts: BTreeMap<ExitKind, u64>,
    total: u64,
    notifiers: Vec<(&'static str, NotifyCounter)>,
    last: Option<ExitKind>,
    kernel: Option<Box<dyn KernelCounters>>,
}

/// The ledger's counts at one moment, or the difference between two moments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerSnapshot {
    /// Exits by kind (kinds with a zero count are absent).
    pub counts: BTreeMap<ExitKind, u64>,
    /// Total exits.
    pub total: u64,
    /// Notification counters by source name.
    pub notifications: BTreeMap<&'static str, u64>,
    /// The kernel's counters of the vCPU by name ([`KernelCounters`]; empty where the
    /// ledger has none): in a delta, e.g. `exits` counts every exit including those KVM
    /// handled without returning to userspace.
    pub kernel: BTreeMap<&'static str, u64>,
}

impl ExitLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one exit.
    pub fn record(&mut self, kind: ExitKind) {
        *self.counts.entry(kind).or_insert(0) += 1;
        self.total += 1;
        self.last = Some(kind);
    }

    /// The kind of the last exit counted (for the exit recorder, [`super::record`]).
    pub fn last(&self) -> Option<ExitKind> {
        self.last
    }

    /// Reads `counters` in every snapshot from now on (one vCPU's, on that vCPU's ledger).
    pub fn set_kernel_counters(&mut self, counters: Box<dyn KernelCounters>) {
        self.kernel = Some(counters);
    }

    fn kernel_now(&self) -> BTreeMap<&'static str, u64> {
        self.kernel
            .as_ref()
            .map(|k| k.read().into_iter().collect())
            .unwrap_or_default()
    }

    /// Registers a notification source and returns the counter its thread increments.
    /// Registering the same name again returns the existing counter.
    pub fn notifier(&mut self, name: &'static str) -> NotifyCounter {
        if let Some((_, c)) = self.notifiers.iter().find(|(n, _)| *n == name) {
            return Arc::clone(c);
        }
        let c = NotifyCounter::default();
        self.notifiers.push((name, Arc::clone(&c)));
        c
    }

    /// A ledger for another vCPU of the same VM: no exits yet, the same notification
    /// counters. Each vCPU thread counts its own exits in its shard; [`LedgerSnapshot::merge`]
    /// adds the shards up for reports.
    pub fn shard(&self) -> ExitLedger {
        ExitLedger {
            counts: BTreeMap::new(),
            total: 0,
            notifiers: self.notifiers.clone(),
            last: None,
            kernel: None,
        }
    }

    /// Exits of one kind so far.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Total exits so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The current counts.
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            counts: self.counts.clone(),
            total: self.total,
            notifications: self
                .notifiers
                .iter()
                .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
                .collect(),
            kernel: self.kernel_now(),
        }
    }

    /// What happened since `earlier` (a snapshot of this ledger).
    pub fn delta(&self, earlier: &LedgerSnapshot) -> LedgerSnapshot {
        self.snapshot().since(earlier)
    }

    /// Distinct exit kinds counted so far (the size of a [`ExitLedger::snapshot`]).
    pub fn kinds(&self) -> usize {
        self.counts.len()
    }

    /// Registered notification sources.
    pub fn notifier_count(&self) -> usize {
        self.notifiers.len()
    }

    /// [`ExitLedger::delta`] without copying the ledger first, giving up (`None`) as soon as
    /// more than `max_kinds` kinds changed: the work and the memory are bounded by the
    /// ledger's size and `max_kinds`, whatever the guest touched.
    pub fn delta_bounded(
        &self,
        earlier: &LedgerSnapshot,
        max_kinds: usize,
    ) -> Option<LedgerSnapshot> {
        let mut counts = BTreeMap::new();
        for (k, v) in &self.counts {
            let d = v.saturating_sub(earlier.counts.get(k).copied().unwrap_or(0));
            if d > 0 {
                if counts.len() >= max_kinds {
                    return None;
                }
                counts.insert(*k, d);
            }
        }
        let notifications = self
            .notifiers
            .iter()
            .map(|(n, c)| {
                let now = c.load(Ordering::Relaxed);
                (
                    *n,
                    now.saturating_sub(earlier.notifications.get(n).copied().unwrap_or(0)),
                )
            })
            .collect();
        Some(LedgerSnapshot {
            counts,
            total: self.total.saturating_sub(earlier.total),
            notifications,
            kernel: counter_delta(&self.kernel_now(), &earlier.kernel),
        })
    }
}

/// `now - earlier` for the counters present in `now` (saturating).
fn counter_delta(
    now: &BTreeMap<&'static str, u64>,
    earlier: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    now.iter()
        .map(|(n, v)| (*n, v.saturating_sub(earlier.get(n).copied().unwrap_or(0))))
        .collect()
}

impl LedgerSnapshot {
    /// The kernel counter `name` ([`LedgerSnapshot::kernel`]), if the ledger read it.
    pub fn kernel_count(&self, name: &str) -> Option<u64> {
        self.kernel.get(name).copied()
    }

    /// Adds the snapshot of another shard of the same VM's ledger ([`ExitLedger::shard`]):
    /// exit counts and totals add up kind by kind; notification counters, shared by the
    /// shards, are read once (the larger reading, as a later snapshot of a shared counter
    /// can only be larger).
    pub fn merge(&mut self, other: &LedgerSnapshot) {
        for (k, v) in &other.counts {
            *self.counts.entry(*k).or_insert(0) += v;
        }
        self.total += other.total;
        for (n, v) in &other.notifications {
            let e = self.notifications.entry(n).or_insert(0);
            *e = (*e).max(*v);
        }
        // Per-vCPU counters: each shard has its own, they add up.
        for (n, v) in &other.kernel {
            *self.kernel.entry(n).or_insert(0) += v;
        }
    }

    /// `self - earlier`, kind by kind (saturating; kinds that end at zero are dropped).
    pub fn since(&self, earlier: &LedgerSnapshot) -> LedgerSnapshot {
        let counts = self
            .counts
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(earlier.counts.get(k).copied().unwrap_or(0));
                (d > 0).then_some((*k, d))
            })
            .collect();
        let notifications = self
            .notifications
            .iter()
            .map(|(n, v)| {
                (
                    *n,
                    v.saturating_sub(earlier.notifications.get(n).copied().unwrap_or(0)),
                )
            })
            .collect();
        LedgerSnapshot {
            counts,
            total: self.total.saturating_sub(earlier.total),
            notifications,
            kernel: counter_delta(&self.kernel, &earlier.kernel),
        }
    }

    /// Exits of one kind.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Removes one exit of `kind` (used to exclude a marker exit from a phase).
    pub fn remove_one(&mut self, kind: ExitKind) {
        if let Some(v) = self.counts.get_mut(&kind) {
            if *v > 0 {
                *v -= 1;
                self.total = self.total.saturating_sub(1);
            }
            if *v == 0 {
                self.counts.remove(&kind);
            }
        }
    }

    /// The counts sorted by count, largest first (ties by kind).
    pub fn by_count(&self) -> Vec<(ExitKind, u64)> {
        let mut v: Vec<_> = self.counts.iter().map(|(k, c)| (*k, *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_total() {
        let mut l = ExitLedger::new();
        l.record(ExitKind::PortWrite(0x3f8));
        l.record(ExitKind::PortWrite(0x3f8));
        l.record(ExitKind::PortRead(0x3fd));
        l.record(ExitKind::Hypercall(Hypercall::ConsoleWrite));
        assert_eq!(l.count(ExitKind::PortWrite(0x3f8)), 2);
        assert_eq!(l.count(ExitKind::PortRead(0x3fd)), 1);
        assert_eq!(l.count(ExitKind::PortRead(0x3f8)), 0);
        assert_eq!(l.count(ExitKind::Hypercall(Hypercall::ConsoleWrite)), 1);
        assert_eq!(l.total(), 4);
    }

    #[test]
    fn delta_attributes_only_new_exits() {
        let mut l = ExitLedger::new();
        l.record(ExitKind::Hlt);
        l.record(ExitKind::PortRead(0x3fd));
        let snap = l.snapshot();
        l.record(ExitKind::PortRead(0x3fd));
        l.record(ExitKind::PortWrite(0x3f8));
        let d = l.delta(&snap);
        assert_eq!(d.total, 2);
        assert_eq!(d.count(ExitKind::PortRead(0x3fd)), 1);
        assert_eq!(d.count(ExitKind::PortWrite(0x3f8)), 1);
        assert_eq!(d.count(ExitKind::Hlt), 0);
        assert!(!d.counts.contains_key(&ExitKind::Hlt));
    }

    #[test]
    fn bounded_delta_matches_delta_or_gives_up() {
        let mut l = ExitLedger::new();
        let c = l.notifier("n");
        l.record(ExitKind::Hlt);
        let snap = l.snapshot();
        for p in 0..10u16 {
            l.record(ExitKind::PortRead(p));
        }
        l.record(ExitKind::Hlt);
        c.fetch_add(4, Ordering::Relaxed);
        assert_eq!(l.kinds(), 11);
        assert_eq!(l.notifier_count(), 1);
        assert_eq!(l.delta_bounded(&snap, 11), Some(l.delta(&snap)));
        assert_eq!(l.delta_bounded(&snap, 10), None);
        assert_eq!(
            l.delta_bounded(&l.snapshot(), 0),
            Some(l.delta(&l.snapshot()))
        );
    }

    #[test]
    fn notifications_are_part_of_snapshots() {
        let mut l = ExitLedger::new();
        let c = l.notifier("block doorbell");
        assert!(Arc::ptr_eq(&c, &l.notifier("block doorbell")));
        c.fetch_add(3, Ordering::Relaxed);
        let snap = l.snapshot();
        c.fetch_add(2, Ordering::Relaxed);
        assert_eq!(l.delta(&snap).notifications.get("block doorbell"), Some(&2));
        assert_eq!(l.snapshot().notifications.get("block doorbell"), Some(&5));
    }

    /// Kernel counters read through a shared cell, as KVM's stats file would give them.
    #[derive(Debug, Default)]
    struct FakeKernel(Arc<AtomicU64>);

    impl KernelCounters for FakeKernel {
        fn read(&self) -> Vec<(&'static str, u64)> {
            let v = self.0.load(Ordering::Relaxed);
            vec![("exits", v), ("irq_injections", v / 2)]
        }
    }

    #[test]
    fn kernel_counters_are_part_of_snapshots_and_deltas() {
        let mut l = ExitLedger::new();
        assert!(l.snapshot().kernel.is_empty(), "no counters, none read");
        let cell = Arc::new(AtomicU64::new(10));
        l.set_kernel_counters(Box::new(FakeKernel(Arc::clone(&cell))));
        let snap = l.snapshot();
        assert_eq!(snap.kernel_count("exits"), Some(10));
        cell.store(30, Ordering::Relaxed);
        l.record(ExitKind::Hlt);
        let d = l.delta(&snap);
        assert_eq!(d.kernel_count("exits"), Some(20));
        assert_eq!(d.kernel_count("irq_injections"), Some(10));
        assert_eq!(d.kernel_count("halt_exits"), None);
        assert_eq!(l.delta_bounded(&snap, 4), Some(d.clone()));
        // A shard reads none of vCPU 0's counters; merged snapshots add per-vCPU counters.
        assert!(l.shard().snapshot().kernel.is_empty());
        let mut m = d.clone();
        m.merge(&d);
        assert_eq!(m.kernel_count("exits"), Some(40));
    }

    #[test]
    fn remove_one_and_sorting() {
        let mut l = ExitLedger::new();
        for _ in 0..3 {
            l.record(ExitKind::PortRead(1));
        }
        l.record(ExitKind::Hypercall(Hypercall::BenchPhase));
        let mut s = l.snapshot();
        assert_eq!(s.by_count()[0], (ExitKind::PortRead(1), 3));
        s.remove_one(ExitKind::Hypercall(Hypercall::BenchPhase));
        s.remove_one(ExitKind::Hlt);
        assert_eq!(s.total, 3);
        assert_eq!(s.counts.len(), 1);
    }

    #[test]
    fn display_names() {
        assert_eq!(ExitKind::PortRead(0x3fd).to_string(), "port 0x03fd read");
        assert_eq!(
            ExitKind::Hypercall(Hypercall::ConsoleWrite).to_string(),
            "hypercall console_write"
        );
    }

    #[test]
    fn shards_merge_to_the_exact_counts() {
        let mut a = ExitLedger::new();
        let note = a.notifier("ring");
        let mut b = a.shard();
        let mut c = b.shard();
        for _ in 0..3 {
            a.record(ExitKind::PortWrite(0x3f8));
        }
        b.record(ExitKind::PortWrite(0x3f8));
        b.record(ExitKind::Hlt);
        c.record(ExitKind::Hypercall(Hypercall::Exit));
        note.fetch_add(5, Ordering::Relaxed);
        // The shards share the notification counter.
        assert_eq!(b.notifier("ring").load(Ordering::Relaxed), 5);
        let mut all = a.snapshot();
        all.merge(&b.snapshot());
        all.merge(&c.snapshot());
        assert_eq!(all.count(ExitKind::PortWrite(0x3f8)), 4);
        assert_eq!(all.count(ExitKind::Hlt), 1);
        assert_eq!(all.count(ExitKind::Hypercall(Hypercall::Exit)), 1);
        assert_eq!(all.total, 6);
        assert_eq!(all.counts.values().sum::<u64>(), all.total);
        // Counted once, not once per shard.
        assert_eq!(all.notifications.get("ring"), Some(&5));
        // A single shard merged into an empty snapshot is itself.
        let mut one = LedgerSnapshot::default();
        one.merge(&a.snapshot());
        assert_eq!(one, a.snapshot());
    }
}
