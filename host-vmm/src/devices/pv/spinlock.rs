//! PV spinlocks: `LockWait` blocks the calling vCPU's thread until `LockKick` names it or
//! a bounded timeout passes (the `KVM_HC_KICK_CPU` idea, [`pvkit_abi::spinlock`]).
//!
//! One [`KickSlot`] per vCPU: a pending-kick bit and a "blocked in `LockWait`" bit behind
//! a mutex, with a condition variable. The transitions are the pure functions of
//! [`KickState`] (tested without threads); [`PvSpinlock`] adds the blocking.
//!
//! Bounds: a wait lasts at most [`pvkit_abi::spinlock::LOCK_WAIT_MAX_US`], so a vCPU
//! blocked here returns to `KVM_RUN` within that time and sees the VMM's stop kick (the
//! watchdog, SIGINT/SIGTERM, another vCPU's `Exit`); a kick is one bit, so a flood of
//! kicks costs no memory. Arguments are validated: an unknown flag or a target out of
//! range is `EINVAL` and changes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::spinlock::LOCK_WAIT_MAX_US;
use pvkit_abi::Status;

use super::{CallCtx, PvDevice};
use crate::runtime::sync::lock;

/// One vCPU's kick state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KickState {
    /// A kick arrived while the vCPU was not waiting: its next wait returns at once.
    pub pending: bool,
    /// The vCPU is blocked in `LockWait`.
    pub waiting: bool,
}

impl KickState {
    /// `LockWait` begins: `true` if a pending kick ends it at once (the kick is consumed);
    /// else the vCPU is now waiting.
    pub fn begin_wait(&mut self) -> bool {
        if std::mem::take(&mut self.pending) {
            return true;
        }
        self.waiting = true;
        false
    }

    /// A kick arrives: returns whether it woke a waiting vCPU (else it is left pending).
    pub fn kick(&mut self) -> bool {
        self.pending = true;
        self.waiting
    }

    /// `LockWait` ends (woken, timed out, or stopping): `true` if a kick ended it (the
    /// kick is consumed).
    pub fn end_wait(&mut self) -> bool {
        self.waiting = false;
        std::mem::take(&mut self.pending)
    }
}

/// A vCPU's slot: its [`KickState`] and the condition variable its thread waits on.
#[derive(Debug, Default)]
struct KickSlot {
    state: Mutex<KickState>,
    wake: Condvar,
}

/// Counters of the device, read after a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpinlockStats {
    /// `LockWait` calls accepted.
    pub waits: u64,
    /// Waits ended by a kick (pending or arriving).
    pub woken: u64,
    /// Waits that ended by the timeout.
    pub timeouts: u64,
    /// `LockKick` calls accepted.
    pub kicks: u64,
    /// Kicks that found their target blocked in `LockWait`.
    pub kicks_to_waiters: u64,
}

/// The PV spinlock device of a VM with a fixed number of vCPUs.
#[derive(Debug)]
pub struct PvSpinlock {
    slots: Vec<KickSlot>,
    max_wait: Duration,
    waits: AtomicU64,
    woken: AtomicU64,
    timeouts: AtomicU64,
    kicks: AtomicU64,
    kicks_to_waiters: AtomicU64,
}

impl PvSpinlock {
    /// The device for `count` vCPUs, waits bounded by
    /// [`pvkit_abi::spinlock::LOCK_WAIT_MAX_US`].
    pub fn new(count: u32) -> Self {
        Self::with_max_wait(count, Duration::from_micros(LOCK_WAIT_MAX_US))
    }

    /// The device with a custom bound on a wait (tests).
    pub fn with_max_wait(count: u32, max_wait: Duration) -> Self {
        Self {
            slots: (0..count).map(|_| KickSlot::default()).collect(),
            max_wait,
            waits: AtomicU64::new(0),
            woken: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            kicks_to_waiters: AtomicU64::new(0),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> SpinlockStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SpinlockStats {
            waits: r(&self.waits),
            woken: r(&self.woken),
            timeouts: r(&self.timeouts),
            kicks: r(&self.kicks),
            kicks_to_waiters: r(&self.kicks_to_waiters),
        }
    }

    fn slot(&self, index: u64) -> Option<&KickSlot> {
        self.slots.get(usize::try_from(index).ok()?)
    }

    /// `LockWait` from vCPU `caller`: `Ok(true)` if a kick ended the wait, `Ok(false)` on
    /// timeout.
    pub fn wait(&self, caller: u32, flags: u64) -> Result<bool, Status> {
        if flags != 0 {
            return Err(Status::EINVAL);
        }
        let slot = self.slot(u64::from(caller)).ok_or(Status::EINVAL)?;
        self.waits.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&slot.state);
        if s.begin_wait() {
            self.woken.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        let deadline = Instant::now() + self.max_wait;
        while !s.pending {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = slot
                .wake
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let kicked = s.end_wait();
        drop(s);
        let counter = if kicked { &self.woken } else { &self.timeouts };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(kicked)
    }

    /// `LockKick` of vCPU `target`: `Ok(true)` if the target was blocked in `LockWait`.
    pub fn kick(&self, target: u64, flags: u64) -> Result<bool, Status> {
        if flags != 0 {
            return Err(Status::EINVAL);
        }
        let slot = self.slot(target).ok_or(Status::EINVAL)?;
        self.kicks.fetch_add(1, Ordering::Relaxed);
        let woke = lock(&slot.state).kick();
        if woke {
            self.kicks_to_waiters.fetch_add(1, Ordering::Relaxed);
            slot.wake.notify_one();
        }
        Ok(woke)
    }
}

impl PvDevice for PvSpinlock {
    fn name(&self) -> &'static str {
        "spinlock"
    }

    fn features(&self) -> Features {
        Features::PV_SPINLOCK
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        &[Hypercall::LockWait, Hypercall::LockKick]
    }

    fn call(&self, ctx: &CallCtx<'_>, call: Hypercall, args: [u64; 4]) -> CallReturn {
        let r = match call {
            Hypercall::LockWait => self.wait(ctx.vcpu, args[0]),
            Hypercall::LockKick => self.kick(args[0], args[1]),
            _ => Err(Status::EOPNOTSUPP),
        };
        match r {
            Ok(b) => CallReturn::ok(u64::from(b)),
            Err(s) => CallReturn::err(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_kick_before_the_wait_is_remembered_once() {
        let mut s = KickState::default();
        assert!(!s.kick(), "nobody waiting");
        assert!(!s.kick(), "a second kick is the same one bit");
        assert!(s.begin_wait(), "the pending kick ends the wait at once");
        assert!(!s.begin_wait(), "consumed: this one waits");
        assert!(s.kick(), "wakes the waiter");
        assert!(s.end_wait());
        assert_eq!(s, KickState::default());
        assert!(!s.begin_wait());
        assert!(!s.end_wait(), "timed out");
    }

    #[test]
    fn bad_arguments_are_refused_and_change_nothing() {
        let d = PvSpinlock::with_max_wait(2, Duration::from_millis(1));
        assert_eq!(d.kick(2, 0), Err(Status::EINVAL), "out of range");
        assert_eq!(d.kick(u64::MAX, 0), Err(Status::EINVAL));
        assert_eq!(d.kick(1, 1), Err(Status::EINVAL), "flags");
        assert_eq!(d.wait(0, 1 << 63), Err(Status::EINVAL), "flags");
        assert_eq!(d.wait(5, 0), Err(Status::EINVAL), "caller out of range");
        assert_eq!(d.stats(), SpinlockStats::default());
        // Nothing was left pending: the wait times out.
        assert_eq!(d.wait(1, 0), Ok(false));
        assert_eq!(d.stats().timeouts, 1);
    }

    #[test]
    fn a_pending_kick_ends_the_next_wait_and_a_kick_wakes_a_blocked_waiter() {
        let d = Arc::new(PvSpinlock::with_max_wait(2, Duration::from_secs(30)));
        assert_eq!(d.kick(1, 0), Ok(false));
        assert_eq!(d.wait(1, 0), Ok(true));
        let t0 = Instant::now();
        let waiter = {
            let d = Arc::clone(&d);
            std::thread::spawn(move || d.wait(1, 0))
        };
        // Kick until the kick finds the waiter blocked (it is then woken).
        while d.kick(1, 0) != Ok(true) {
            // The kick was left pending: the waiter consumed it or will; wait for the
            // thread to be blocked again only if it has not finished.
            if waiter.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(waiter.join().unwrap(), Ok(true));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "woken, not timed out"
        );
        assert_eq!(d.stats().timeouts, 0);
    }

    #[test]
    fn a_wait_without_a_kick_is_bounded() {
        let d = PvSpinlock::with_max_wait(1, Duration::from_millis(20));
        let t0 = Instant::now();
        assert_eq!(d.wait(0, 0), Ok(false));
        let e = t0.elapsed();
        assert!(
            e >= Duration::from_millis(20) && e < Duration::from_secs(2),
            "{e:?}"
        );
    }
}
