//! The spinlock workload under overcommit (`lock=plain|pv cpus=N iters=K [spin=S]`):
//! `N` CPUs (vCPUs started with `VcpuUp`) each take one lock `K` times and add one to a
//! shared counter inside it (a read and a write, not an atomic add: a lost update shows as
//! a short count). The lock is a plain ticket lock or the PV ticket lock of
//! [`pvkit_guest::spinlock`] (spin `S` times, then `LockWait`; the unlocker `LockKick`s
//! the next ticket's CPU).
//!
//! The loop runs in ring 0, where kernels run their spinlocks; on kvm_pvm ring 0 is
//! interpreted (~1 µs per instruction), which makes an acquisition cost tens of
//! microseconds instead of tens of nanoseconds, but leaves it far shorter than a host
//! scheduler time slice (milliseconds), the cost that overcommit adds and that the PV lock
//! removes. Ring 3 would spin natively but cannot make the hypercall (port I/O from ring 3
//! raises #GP on kvm_pvm): every `LockWait` would need a ring transition costing
//! 100–300 µs here (see [`crate::user`]).
//!
//! Each CPU registers its steal-time page first (when the host offers
//! [`Features::STEAL_TIME`]) and reports the steal time of its loop.
//!
//! Output, one line (plus `lock: cpu N steal_us=…` per CPU):
//! `lock: kind=pv cpus=4 iters=K counter=C expected=E time_us=T acq_per_s=A spins=S
//! waits=W kicks=K steal_us=U steal_total_us=V steal_backwards=B`. `waits` and `kicks`
//! are the `LockWait` and `LockKick` calls made (one exit each); `steal_us` is the steal
//! time of all CPUs during their loops, `steal_total_us` since each CPU started, and
//! `steal_backwards` counts reads of a steal page lower than the read before (each CPU
//! reads its page every [`STEAL_CHECK_EVERY`] acquisitions). Exit 0 if
//! `counter == expected`, else 1.
//!
//! `lock_bad` first makes refused calls (bad flags, bad target) and prints their status;
//! `lock_hang` makes every CPU call `LockWait` for ever (the host's stop must still end
//! the VM).

mod cpus;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::smp::MAX_CPUS;
use pvkit_abi::bench::{
    BenchSample, CaseId, Device, PhaseMark, Variant, Workload, SAMPLE_FAILED, SAMPLE_VERIFIED,
};
use pvkit_abi::boot::BootInfo;
use pvkit_abi::cpuid::Features;
use pvkit_abi::{Hypercall, Status};
use pvkit_guest::spinlock::{Acquired, Guarded, HypercallKicker, PvTicketLock, TicketLock};
use pvkit_guest::steal::StealPage;
use pvkit_guest::tsc::rdtsc;

/// Which lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// [`TicketLock`].
    Plain,
    /// [`PvTicketLock`].
    Pv,
}

impl LockKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            LockKind::Plain => "plain",
            LockKind::Pv => "pv",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "plain" => Some(LockKind::Plain),
            "pv" => Some(LockKind::Pv),
            _ => None,
        }
    }
}

/// `lock=` and its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockArgs {
    /// The lock.
    pub kind: LockKind,
    /// CPUs taking part (1..=[`MAX_CPUS`]).
    pub cpus: usize,
    /// Acquisitions per CPU.
    pub iters: u64,
    /// PV: spins before each wait.
    pub spin: u32,
    /// Make refused calls first.
    pub bad: bool,
    /// Wait for ever.
    pub hang: bool,
    /// `lock_bench`: bracket the loop with benchmark markers and report a sample
    /// (`pvkit bench`'s spinlock cases).
    pub bench: bool,
}

/// Acquisitions per CPU unless `iters=` says otherwise.
pub const DEFAULT_ITERS: u64 = 200;

/// PV spins before each wait unless `spin=` says otherwise: on kvm_pvm one interpreted
/// spin costs a few microseconds, so 16 spins cover about one hold of the lock (tens of
/// microseconds); measured best of 4/16/128 at 4 vCPUs (docs/BENCHMARKS.md).
pub const DEFAULT_SPIN: u32 = 16;

/// What one CPU measured.
struct CpuStats {
    spins: AtomicU64,
    waits: AtomicU64,
    kicks: AtomicU64,
    steal_ns: AtomicU64,
    /// Times the steal time read lower than the read before (must stay 0).
    steal_backwards: AtomicU64,
}

static STATS: [CpuStats; MAX_CPUS] = [const {
    CpuStats {
        spins: AtomicU64::new(0),
        waits: AtomicU64::new(0),
        kicks: AtomicU64::new(0),
        steal_ns: AtomicU64::new(0),
        steal_backwards: AtomicU64::new(0),
    }
}; MAX_CPUS];

static STEAL: [StealPage; MAX_CPUS] = [const { StealPage::new() }; MAX_CPUS];
static PLAIN: TicketLock = TicketLock::new();
static PV: PvTicketLock<MAX_CPUS> = PvTicketLock::new(PvTicketLock::<MAX_CPUS>::DEFAULT_SPIN_LIMIT);
static COUNTER: Guarded<u64> = Guarded::new(0);

/// The round's parameters, set by the BSP before it starts the APs.
static KIND_PV: AtomicBool = AtomicBool::new(false);
static ITERS: AtomicU64 = AtomicU64::new(0);
static HANG: AtomicBool = AtomicBool::new(false);
static STEAL_ON: AtomicBool = AtomicBool::new(false);
/// APs that registered and wait for [`START`].
static READY: AtomicU32 = AtomicU32::new(0);
static START: AtomicBool = AtomicBool::new(false);
/// CPUs (the BSP included) done with their loop.
static DONE: AtomicU32 = AtomicU32::new(0);

/// Each CPU reads its steal time every this many acquisitions (checking it never
/// decreases).
const STEAL_CHECK_EVERY: u64 = 16;

/// The steal time CPU `cpu` has now (0 without a registered page).
fn steal_now(cpu: usize) -> u64 {
    match (STEAL_ON.load(Ordering::Relaxed), STEAL.get(cpu)) {
        (true, Some(p)) => p.read().steal_ns,
        _ => 0,
    }
}

/// One CPU's part: `ITERS` acquisitions, then its counts into [`STATS`].
fn work(cpu: usize) {
    if HANG.load(Ordering::Relaxed) {
        loop {
            let _ = pvkit_guest::hypercall::lock_wait();
        }
    }
    let pv = KIND_PV.load(Ordering::Relaxed);
    let iters = ITERS.load(Ordering::Relaxed);
    let steal0 = steal_now(cpu);
    let (mut spins, mut waits, mut kicks) = (0, 0, 0);
    let (mut last_steal, mut backwards) = (steal0, 0);
    for i in 0..iters {
        if i % STEAL_CHECK_EVERY == 0 {
            let now = steal_now(cpu);
            backwards += u64::from(now < last_steal);
            last_steal = now;
        }
        let got: Acquired = if pv {
            PV.lock(cpu, &HypercallKicker)
        } else {
            PLAIN.lock()
        };
        // SAFETY: the lock is held.
        unsafe {
            COUNTER.with(|c| {
                let v = core::ptr::read_volatile(c);
                core::ptr::write_volatile(c, v + 1);
            })
        };
        let kicked = if pv {
            PV.unlock(&HypercallKicker)
        } else {
            PLAIN.unlock();
            false
        };
        spins += got.spins;
        waits += got.waits;
        kicks += u64::from(kicked);
    }
    if let Some(s) = STATS.get(cpu) {
        s.spins.store(spins, Ordering::Relaxed);
        s.waits.store(waits, Ordering::Relaxed);
        s.kicks.store(kicks, Ordering::Relaxed);
        let end = steal_now(cpu);
        backwards += u64::from(end < last_steal);
        s.steal_ns
            .store(end.saturating_sub(steal0), Ordering::Relaxed);
        s.steal_backwards.store(backwards, Ordering::Relaxed);
    }
    DONE.fetch_add(1, Ordering::AcqRel);
}

/// Registers CPU `cpu`'s steal page if the host offers one.
fn register_steal(cpu: usize) {
    if STEAL_ON.load(Ordering::Relaxed) {
        if let Some(p) = STEAL.get(cpu) {
            if let Err(s) = p.register() {
                println!("lock: cpu {cpu}: steal page refused: {s:?}");
            }
        }
    }
}

/// An AP's entry (from [`cpus::start`]), `RDI` = its CPU index.
extern "C" fn ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    register_steal(cpu);
    READY.fetch_add(1, Ordering::AcqRel);
    while !START.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    work(cpu);
    loop {
        // SAFETY: this CPU is done for good; nothing is shared with it any more.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Waits (bounded: about `secs` seconds of TSC) until `done()`.
fn wait_until(boot: &BootInfo, secs: u64, done: impl Fn() -> bool) -> bool {
    let limit = match boot.tsc_khz {
        0 => 1 << 36,
        khz => khz * 1000 * secs,
    };
    let t0 = rdtsc();
    while !done() {
        if rdtsc().wrapping_sub(t0) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// `lock_bad`: calls the host must refuse, with their statuses printed.
fn bad_calls(cpus: usize) {
    let calls: [(&str, Hypercall, [u64; 4]); 4] = [
        ("wait flags", Hypercall::LockWait, [1, 0, 0, 0]),
        ("kick flags", Hypercall::LockKick, [0, 1, 0, 0]),
        ("kick target", Hypercall::LockKick, [cpus as u64, 0, 0, 0]),
        ("kick target max", Hypercall::LockKick, [u64::MAX, 0, 0, 0]),
    ];
    for (what, call, args) in calls {
        let s: Status = pvkit_guest::hypercall::lock_call_raw(call, args);
        println!("lock: bad {what}: {s:?}");
    }
}

/// What the workload measured on all CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// The counter at the end.
    pub counter: u64,
    /// What it must be.
    pub expected: u64,
    /// Guest TSC cycles from the start to the last CPU done.
    pub cycles: u64,
    /// Failed reads of the lock word, all CPUs.
    pub spins: u64,
    /// `LockWait` calls.
    pub waits: u64,
    /// `LockKick` calls.
    pub kicks: u64,
    /// Steal time during the loop, all CPUs, ns.
    pub steal_ns: u64,
    /// Steal time since each CPU started, all CPUs, ns (read after the loop).
    pub steal_total_ns: u64,
    /// Reads of a steal page lower than the read before (must be 0).
    pub steal_backwards: u64,
}

/// The benchmark case of `args`: the lock's variant and the workload of its CPU count
/// (2, 4 or 8).
fn bench_case(args: &LockArgs) -> Option<CaseId> {
    let workload = match args.cpus {
        2 => Workload::Contend2,
        4 => Workload::Contend4,
        8 => Workload::Contend8,
        _ => return None,
    };
    let variant = match args.kind {
        LockKind::Plain => Variant::TicketSpin,
        LockKind::Pv => Variant::PvSpinlock,
    };
    Some(CaseId {
        device: Device::Spinlock,
        variant,
        workload,
    })
}

/// Runs the workload (the APs are started here) and returns what it measured, or a
/// message saying why it could not run. With `case`, the loop (start of the CPUs to the
/// last one done) is bracketed by its benchmark markers.
pub fn measure(
    args: &LockArgs,
    boot: &BootInfo,
    case: Option<CaseId>,
) -> Result<Outcome, &'static str> {
    let features = Features::from_bits_truncate(boot.features);
    let cpus = args.cpus.clamp(1, MAX_CPUS);
    if args.kind == LockKind::Pv && !features.contains(Features::PV_SPINLOCK) {
        return Err("the host offers no PV spinlock (PV_SPINLOCK)");
    }
    KIND_PV.store(args.kind == LockKind::Pv, Ordering::Relaxed);
    ITERS.store(args.iters, Ordering::Relaxed);
    HANG.store(args.hang, Ordering::Relaxed);
    STEAL_ON.store(features.contains(Features::STEAL_TIME), Ordering::Relaxed);
    PV.set_spin_limit(args.spin);
    register_steal(0);
    if cpus::start(cpus).is_err() {
        return Err("VcpuUp refused a CPU (fewer vCPUs than cpus=?)");
    }
    let aps = (cpus - 1) as u32;
    if !wait_until(boot, 30, || READY.load(Ordering::Acquire) == aps) {
        return Err("the APs did not report in");
    }
    if args.hang {
        println!("lock: every CPU waits in LockWait for ever");
    }
    if let Some(c) = case {
        pvkit_guest::hypercall::bench_phase(c, PhaseMark::Begin, 0);
    }
    let t0 = rdtsc();
    START.store(true, Ordering::Release);
    work(0);
    if !wait_until(boot, 600, || DONE.load(Ordering::Acquire) == cpus as u32) {
        return Err("the CPUs did not finish");
    }
    let cycles = rdtsc().wrapping_sub(t0);
    if let Some(c) = case {
        pvkit_guest::hypercall::bench_phase(c, PhaseMark::End, args.iters * cpus as u64);
    }
    let mut out = Outcome {
        // SAFETY: every CPU is done with the lock; nobody touches the counter any more.
        counter: unsafe { COUNTER.with(|c| core::ptr::read_volatile(c)) },
        expected: args.iters * cpus as u64,
        cycles,
        ..Outcome::default()
    };
    for s in STATS.iter().take(cpus) {
        out.spins += s.spins.load(Ordering::Relaxed);
        out.waits += s.waits.load(Ordering::Relaxed);
        out.kicks += s.kicks.load(Ordering::Relaxed);
        out.steal_ns += s.steal_ns.load(Ordering::Relaxed);
        out.steal_backwards += s.steal_backwards.load(Ordering::Relaxed);
    }
    out.steal_total_ns = (0..cpus).map(steal_now).sum();
    Ok(out)
}

/// The steal time CPU `cpu` had during its loop, ns.
pub fn cpu_steal_ns(cpu: usize) -> u64 {
    STATS
        .get(cpu)
        .map_or(0, |s| s.steal_ns.load(Ordering::Relaxed))
}

/// Sends the case's [`BenchSample`]: the guest's verdict is the exact counter;
/// `extra` = the `LockWait` and `LockKick` calls made (each one exit), which the host
/// compares with its ledger.
fn report_sample(case: CaseId, out: &Outcome) {
    let sample = BenchSample {
        case: case.to_u64(),
        ops: out.expected,
        bytes: 0,
        cycles_total: out.cycles,
        cycles_median: 0,
        cycles_p99: 0,
        flags: if out.counter == out.expected {
            SAMPLE_VERIFIED
        } else {
            SAMPLE_FAILED
        },
        sample_count: 0,
        samples_addr: 0,
        extra: out.waits + out.kicks,
    };
    if let Err(s) = pvkit_guest::hypercall::bench_result(&sample) {
        println!("lock: BenchResult refused: {s:?}");
    }
}

/// `lock=`: runs the workload, prints the result and ends the VM.
pub fn run(args: &LockArgs, boot: &BootInfo) -> ! {
    if args.bad {
        bad_calls(args.cpus);
    }
    let case = if args.bench {
        match bench_case(args) {
            Some(c) => Some(c),
            None => {
                println!("lock: lock_bench needs cpus=2, 4 or 8");
                crate::exit(2)
            }
        }
    } else {
        None
    };
    let out = match measure(args, boot, case) {
        Ok(o) => o,
        Err(why) => {
            println!("lock: kind={} skipped: {why}", args.kind.name());
            crate::exit(2)
        }
    };
    if let Some(c) = case {
        report_sample(c, &out);
    }
    let cpus = args.cpus.clamp(1, MAX_CPUS);
    let us = match boot.tsc_khz {
        0 => 0,
        khz => out.cycles * 1000 / khz,
    };
    let per_s = (out.expected * 1_000_000).checked_div(us).unwrap_or(0);
    for cpu in 0..cpus {
        println!("lock: cpu {cpu} steal_us={}", cpu_steal_ns(cpu) / 1000);
    }
    println!(
        "lock: kind={} cpus={cpus} iters={} counter={} expected={} time_us={us} \
         acq_per_s={per_s} spins={} waits={} kicks={} steal_us={} steal_total_us={} \
         steal_backwards={}",
        args.kind.name(),
        args.iters,
        out.counter,
        out.expected,
        out.spins,
        out.waits,
        out.kicks,
        out.steal_ns / 1000,
        out.steal_total_ns / 1000,
        out.steal_backwards
    );
    crate::exit(u8::from(out.counter != out.expected))
}
