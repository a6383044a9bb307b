//! Ticket spinlocks for any `no_std` kernel: a plain one ([`TicketLock`]) and a
//! paravirtual one ([`PvTicketLock`]) that stops spinning after a bounded number of tries
//! and blocks its vCPU on the host until the unlocker kicks it (the ABI's
//! [`pvkit_abi::spinlock`], the `KVM_HC_KICK_CPU` idea).
//!
//! Both are FIFO: `next` hands out tickets, `owner` is the ticket being served. Under
//! overcommit (more vCPUs than host CPUs) FIFO is what hurts a plain lock: when the vCPU
//! holding the next ticket is preempted on the host, every other waiter spins through its
//! whole host time slice and nobody can take the lock. The PV lock lets waiters give their
//! host CPU away instead ([`Kicker::wait`]), so the preempted vCPU can run.
//!
//! # PV protocol
//!
//! A waiter that spun [`PvTicketLock::spin_limit`] times publishes `ticket + 1` in its
//! CPU's slot and counts itself in `waiters`, re-checks `owner`, and only then waits. The
//! unlocker advances `owner`, and if `waiters` is non-zero scans the slots for the CPU that
//! published the new owner ticket and kicks it. Both sides store then load with
//! sequentially consistent ordering (a Dekker pair): either the waiter sees the new owner
//! and does not wait, or the unlocker sees the slot and kicks (the host remembers a kick
//! that arrives before the wait). A wait ends at the latest after the host's bound, and
//! the waiter re-checks the lock after every return.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

/// What the PV lock asks of the hypervisor.
pub trait Kicker {
    /// Blocks this CPU until kicked or a bounded time passed (`LockWait`).
    fn wait(&self);
    /// Wakes CPU `cpu` from [`Kicker::wait`] (`LockKick`).
    fn kick(&self, cpu: usize);
}

/// The pvkit hypercalls as a [`Kicker`].
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, Default)]
pub struct HypercallKicker;

#[cfg(target_arch = "x86_64")]
impl Kicker for HypercallKicker {
    fn wait(&self) {
        // A refused call (no PV_SPINLOCK) just returns: the lock keeps spinning.
        let _ = crate::hypercall::lock_wait();
    }

    fn kick(&self, cpu: usize) {
        let _ = crate::hypercall::lock_kick(cpu as u64);
    }
}

/// What one acquisition cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acquired {
    /// Times the lock word was read without success.
    pub spins: u64,
    /// [`Kicker::wait`] calls.
    pub waits: u64,
}

/// A plain FIFO ticket spinlock.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct TicketLock {
    next: AtomicU32,
    owner: AtomicU32,
}

impl TicketLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
            owner: AtomicU32::new(0),
        }
    }

    /// Takes a ticket and spins until it is served.
    pub fn lock(&self) -> Acquired {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let mut spins = 0;
        while self.owner.load(Ordering::Acquire) != ticket {
            spins += 1;
            core::hint::spin_loop();
        }
        Acquired { spins, waits: 0 }
    }

    /// Releases the lock (the caller must hold it).
    pub fn unlock(&self) {
        // Only the holder writes `owner`.
        let next = self.owner.load(Ordering::Relaxed).wrapping_add(1);
        self.owner.store(next, Ordering::Release);
    }
}

/// A PV FIFO ticket spinlock for up to `CPUS` CPUs, numbered `0..CPUS`.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct PvTicketLock<const CPUS: usize> {
    next: AtomicU32,
    owner: AtomicU32,
    /// CPUs that published a ticket (the unlocker scans only when non-zero).
    waiters: AtomicU32,
    spin_limit: AtomicU32,
    /// Per CPU: `ticket + 1` it waits for, or 0.
    slots: [AtomicU32; CPUS],
}

impl<const CPUS: usize> Default for PvTicketLock<CPUS> {
    fn default() -> Self {
        Self::new(Self::DEFAULT_SPIN_LIMIT)
    }
}

impl<const CPUS: usize> PvTicketLock<CPUS> {
    /// Spins before the first wait unless set otherwise.
    pub const DEFAULT_SPIN_LIMIT: u32 = 128;

    /// An unlocked lock whose waiters spin `spin_limit` times before each wait.
    pub const fn new(spin_limit: u32) -> Self {
        Self {
            next: AtomicU32::new(0),
            owner: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            spin_limit: AtomicU32::new(spin_limit),
            slots: [const { AtomicU32::new(0) }; CPUS],
        }
    }

    /// Spins before each wait.
    pub fn spin_limit(&self) -> u32 {
        self.spin_limit.load(Ordering::Relaxed)
    }

    /// Sets the spins before each wait (only while nobody uses the lock).
    pub fn set_spin_limit(&self, n: u32) {
        self.spin_limit.store(n, Ordering::Relaxed);
    }

    /// Takes a ticket as CPU `cpu` (< `CPUS`; a larger number never waits, it only
    /// spins) and waits until it is served.
    pub fn lock(&self, cpu: usize, kicker: &impl Kicker) -> Acquired {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let mut got = Acquired::default();
        let limit = u64::from(self.spin_limit());
        loop {
            let mut n = 0;
            while n < limit || cpu >= CPUS {
                if self.owner.load(Ordering::Acquire) == ticket {
                    got.spins += n;
                    return got;
                }
                n += 1;
                core::hint::spin_loop();
            }
            got.spins += n;
            let Some(slot) = self.slots.get(cpu) else {
                continue;
            };
            self.waiters.fetch_add(1, Ordering::SeqCst);
            slot.store(ticket.wrapping_add(1), Ordering::SeqCst);
            let served = self.owner.load(Ordering::SeqCst) == ticket;
            if !served {
                got.waits += 1;
                kicker.wait();
            }
            slot.store(0, Ordering::Relaxed);
            self.waiters.fetch_sub(1, Ordering::Release);
            if served || self.owner.load(Ordering::Acquire) == ticket {
                return got;
            }
        }
    }

    /// Releases the lock (the caller must hold it) and kicks the CPU waiting for the
    /// next ticket, if one published it. Returns whether it kicked.
    pub fn unlock(&self, kicker: &impl Kicker) -> bool {
        let next = self.owner.load(Ordering::Relaxed).wrapping_add(1);
        self.owner.store(next, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let want = next.wrapping_add(1);
        match self
            .slots
            .iter()
            .position(|s| s.load(Ordering::SeqCst) == want)
        {
            Some(cpu) => {
                kicker.kick(cpu);
                true
            }
            None => false,
        }
    }
}

/// A value only touched under a lock the caller holds (the workloads' shared counter).
#[derive(Debug, Default)]
pub struct Guarded<T>(UnsafeCell<T>);

// SAFETY: every access goes through `with`, whose contract is that the caller holds the
// lock that guards the value: accesses are serialized.
unsafe impl<T: Send> Sync for Guarded<T> {}

impl<T> Guarded<T> {
    /// A guarded value.
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    /// Runs `f` on the value.
    ///
    /// # Safety
    ///
    /// The caller holds the lock that guards this value (no other `with` runs at once).
    pub unsafe fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: exclusive by the caller's contract.
        f(unsafe { &mut *self.0.get() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Condvar, Mutex};

    /// A host-thread kicker: one pending-kick bit per CPU, like the VMM's.
    struct ThreadKicker {
        pending: Vec<(Mutex<bool>, Condvar)>,
        kicks: AtomicU64,
        bound: std::time::Duration,
    }

    impl ThreadKicker {
        /// Waits bounded by 10 ms, as the VMM's.
        fn new(n: usize) -> Self {
            Self::with_bound(n, std::time::Duration::from_millis(10))
        }

        fn with_bound(n: usize, bound: std::time::Duration) -> Self {
            Self {
                pending: (0..n)
                    .map(|_| (Mutex::new(false), Condvar::new()))
                    .collect(),
                kicks: AtomicU64::new(0),
                bound,
            }
        }
    }

    thread_local!(static CPU: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });

    impl Kicker for ThreadKicker {
        fn wait(&self) {
            let (m, c) = &self.pending[CPU.get()];
            let g = m.lock().unwrap();
            let (mut g, _) = c.wait_timeout_while(g, self.bound, |p| !*p).unwrap();
            *g = false;
        }

        fn kick(&self, cpu: usize) {
            self.kicks.fetch_add(1, Ordering::Relaxed);
            let (m, c) = &self.pending[cpu];
            *m.lock().unwrap() = true;
            c.notify_one();
        }
    }

    fn contend<L: Send + Sync + 'static>(
        lock: Arc<L>,
        threads: usize,
        iters: u64,
        body: fn(&L, usize, &Guarded<u64>) -> Acquired,
    ) -> (u64, Acquired) {
        let counter = Arc::new(Guarded::new(0u64));
        let total = Arc::new(Mutex::new(Acquired::default()));
        let start = Arc::new(std::sync::Barrier::new(threads));
        let hs: Vec<_> = (0..threads)
            .map(|cpu| {
                let (lock, counter, total) = (lock.clone(), counter.clone(), total.clone());
                let start = start.clone();
                std::thread::spawn(move || {
                    CPU.set(cpu);
                    start.wait();
                    let mut sum = Acquired::default();
                    for _ in 0..iters {
                        let a = body(&lock, cpu, &counter);
                        sum.spins += a.spins;
                        sum.waits += a.waits;
                    }
                    let mut t = total.lock().unwrap();
                    t.spins += sum.spins;
                    t.waits += sum.waits;
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        // SAFETY: every thread ended; nobody else touches the counter.
        let n = unsafe { counter.with(|c| *c) };
        let t = *total.lock().unwrap();
        (n, t)
    }

    #[test]
    fn the_plain_lock_loses_no_update() {
        let (n, _) = contend(Arc::new(TicketLock::new()), 4, 2000, |l, _, c| {
            let a = l.lock();
            // SAFETY: held.
            unsafe { c.with(|v| *v += 1) };
            l.unlock();
            a
        });
        assert_eq!(n, 8000);
    }

    static KICKER: std::sync::OnceLock<ThreadKicker> = std::sync::OnceLock::new();

    #[test]
    fn the_pv_lock_loses_no_update_and_waits_and_kicks() {
        let k = KICKER.get_or_init(|| ThreadKicker::new(4));
        let lock = Arc::new(PvTicketLock::<4>::new(1));
        let (n, t) = contend(lock, 4, 20_000, |l, cpu, c| {
            let k = KICKER.get().unwrap();
            let a = l.lock(cpu, k);
            // SAFETY: held.
            unsafe { c.with(|v| *v += 1) };
            l.unlock(k);
            a
        });
        assert_eq!(
            n,
            80_000,
            "{t:?}, {} kicks",
            k.kicks.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn the_unlocker_kicks_the_waiter_that_published_the_next_ticket() {
        static K: std::sync::OnceLock<ThreadKicker> = std::sync::OnceLock::new();
        // Waits end only by the kick (a minute is a hang, not a timeout).
        let k = K.get_or_init(|| ThreadKicker::with_bound(2, std::time::Duration::from_secs(60)));
        let lock = Arc::new(PvTicketLock::<2>::new(1));
        assert_eq!(lock.lock(0, k), Acquired::default());
        let waiter = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                CPU.set(1);
                let got = lock.lock(1, K.get().unwrap());
                lock.unlock(K.get().unwrap());
                got
            })
        };
        // Hold the lock until CPU 1 published ticket 1 (+ 1) in its slot.
        while lock.slots[1].load(Ordering::SeqCst) != 2 {
            std::thread::yield_now();
        }
        assert!(lock.unlock(k), "the release must kick CPU 1");
        let got = waiter.join().unwrap();
        assert!(got.waits >= 1 && got.spins >= 1, "{got:?}");
        assert_eq!(k.kicks.load(Ordering::Relaxed), 1);
        assert_eq!(lock.waiters.load(Ordering::SeqCst), 0);
        assert_eq!(lock.slots[1].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_uncontended_pv_lock_never_waits_or_kicks() {
        let k = ThreadKicker::new(1);
        let l = PvTicketLock::<1>::new(0);
        for _ in 0..10 {
            assert_eq!(l.lock(0, &k), Acquired::default());
            assert!(!l.unlock(&k));
        }
        assert_eq!(k.kicks.load(Ordering::Relaxed), 0);
    }
}
