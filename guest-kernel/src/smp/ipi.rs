//! IPIs between the CPUs (`ipi=emulated|pv` with `smp=`): the emulated way is one x2APIC
//! ICR write per target (or one with the "all but self" shorthand), handled by KVM's
//! in-kernel LAPIC with no exit to the VMM; the PV way is one `SendIpi` hypercall with a CPU
//! bitmap, one exit however many targets.
//!
//! Every CPU's handler for [`IPI_VECTOR`] counts the IPI in its [`PerCpu`] block, then:
//! during the ping-pong an AP answers CPU 0 the same way and CPU 0 counts the answer; at
//! other times the receiver adds one to a shared acknowledgement counter. The BSP runs, in
//! order:
//!
//! 1. (PV only) three invalid calls, each refused with `EINVAL` and sending nothing.
//! 2. The delivery check: for `j` in `1..cpus`, one send to the CPUs `j..cpus` (a bitmap:
//!    one call PV, one ICR write per target emulated), then one send to all others, each
//!    send waiting for its acknowledgements (a fixed IPI merges with the same vector still
//!    pending at the target, as on hardware). CPU `k` must have received exactly `k + 1`
//!    and CPU 0 none: `ipi: received cpu0=0 cpu1=2 ...`.
//! 3. The ping-pong with CPU 1: `rounds` round trips, timed with one `rdtsc` before and one
//!    after (`ipi: ... pingpong ...`).
//! 4. One-to-all: `rounds` sends to all other CPUs, each waiting for every acknowledgement
//!    (`ipi: ... broadcast ...`).
//!
//! [`PerCpu`]: super::percpu::PerCpu

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use pvkit_abi::boot::BootInfo;
use pvkit_guest::tsc::rdtsc;

use super::{lapic, percpu, SmpMode};

/// The vector every IPI here uses.
pub const IPI_VECTOR: u8 = 0xf0;

/// How IPIs are sent now: [`SmpMode`] as `u8` (0 emulated, 1 PV).
static METHOD: AtomicU8 = AtomicU8::new(0);
/// Whether APs answer CPU 0 (the ping-pong) instead of acknowledging.
static PINGPONG: AtomicU8 = AtomicU8::new(0);
/// Answers CPU 0 received during the ping-pong.
static PONGS: AtomicU64 = AtomicU64::new(0);
/// Acknowledgements of the other phases.
static ACKS: AtomicU64 = AtomicU64::new(0);

/// `ipi=` with its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpiArgs {
    /// Emulated (x2APIC ICR) or PV (`SendIpi`).
    pub mode: SmpMode,
    /// Ping-pong round trips and broadcasts (`ipi_rounds=`, default [`DEFAULT_ROUNDS`]).
    pub rounds: u32,
}

/// Round trips and broadcasts without `ipi_rounds=`.
pub const DEFAULT_ROUNDS: u32 = 50;

fn pv() -> bool {
    METHOD.load(Ordering::Relaxed) == 1
}

/// Sends [`IPI_VECTOR`] to every CPU of `mask` (bit `i` = CPU `i`).
fn send_mask(mask: u64) {
    if pv() {
        let _ = pvkit_guest::hypercall::send_ipi(mask, IPI_VECTOR, 0);
    } else {
        for cpu in 0..64 {
            if mask & (1 << cpu) != 0 {
                lapic::send(cpu, IPI_VECTOR);
            }
        }
    }
}

/// Sends [`IPI_VECTOR`] to CPUs `0..cpus` except the caller.
fn send_others(cpus: usize, me: usize) {
    if pv() {
        let mask = ((1u64 << cpus) - 1) & !(1 << me);
        let _ = pvkit_guest::hypercall::send_ipi(mask, IPI_VECTOR, 0);
    } else {
        lapic::send_all_but_self(IPI_VECTOR);
    }
}

/// The handler of [`IPI_VECTOR`], on any CPU, interrupts off.
extern "C" fn ipi_interrupt() {
    let cpu = percpu::current();
    percpu::this().received.fetch_add(1, Ordering::AcqRel);
    if PINGPONG.load(Ordering::Acquire) != 0 {
        if cpu == 0 {
            PONGS.fetch_add(1, Ordering::AcqRel);
        } else {
            send_mask(1);
        }
    } else {
        ACKS.fetch_add(1, Ordering::AcqRel);
    }
    lapic::eoi();
}

// The entry stub (`crate::interrupts::interrupt_entry`).
crate::interrupts::interrupt_entry!(pvkit_ipi_entry, ipi_interrupt);
crate::interrupts::spurious_entry!(pvkit_ipi_spurious_entry);

/// Points [`IPI_VECTOR`] and the spurious vector at their entries in the shared IDT. On
/// the BSP before any AP starts.
pub fn install() {
    // SAFETY: both entries are complete interrupt entries (they keep every register the
    // interrupted code may hold, end in `iretq`); IST 0: the current stack. No AP runs
    // yet and the BSP has interrupts off, so no CPU reads the gates while they change.
    unsafe {
        pvkit_guest::rt::trap::set_gate(IPI_VECTOR, pvkit_ipi_entry as *const () as u64, 0);
        pvkit_guest::rt::trap::set_gate(
            lapic::SPURIOUS_VECTOR,
            pvkit_ipi_spurious_entry as *const () as u64,
            0,
        );
    }
}

/// An AP's life after reporting in: halt with interrupts on, for ever (handlers do the
/// work). Without the in-kernel LAPIC in x2APIC mode there is nothing to wait for.
pub fn ap_idle(x2apic: bool) -> ! {
    loop {
        if x2apic {
            // SAFETY: the IDT has the IPI gate; the handler returns here after `hlt`.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
        } else {
            // SAFETY: stop this CPU for good.
            unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }
}

/// Spins until `counter` reaches `want` or about 10 s of TSC pass; whether it did.
fn wait_for(counter: &AtomicU64, want: u64, limit: u64) -> bool {
    let t0 = rdtsc();
    while counter.load(Ordering::Acquire) < want {
        if rdtsc().wrapping_sub(t0) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// `cycles / n` in cycles and nanoseconds.
fn per(cycles: u64, n: u32, tsc_khz: u64) -> (u64, u64) {
    let c = cycles / u64::from(n.max(1));
    let ns = match tsc_khz {
        0 => 0,
        khz => c * 1_000_000 / khz,
    };
    (c, ns)
}

/// Makes the BSP ready to send IPIs the `mode` way (its LAPIC in x2APIC mode). Call
/// after [`lapic::x2apic_offered`] (and, for PV, checking `PV_IPI`).
pub fn use_method(mode: SmpMode) {
    lapic::enable_x2apic();
    METHOD.store(u8::from(mode == SmpMode::Pv), Ordering::Release);
}

/// Answers CPU 0 has received in ping-pongs so far.
pub fn answers() -> u64 {
    PONGS.load(Ordering::Acquire)
}

/// `rounds` round trips with CPU 1: CPU 0 sends, CPU 1's handler answers, CPU 0 halts
/// until the answer arrives. Returns with interrupts off.
pub fn pingpong(rounds: u32) {
    PINGPONG.store(1, Ordering::Release);
    let start = PONGS.load(Ordering::Acquire);
    for round in 1..=u64::from(rounds) {
        send_mask(1 << 1);
        loop {
            // SAFETY: only masks interrupts (a compiler barrier too).
            unsafe { core::arch::asm!("cli", options(nostack)) };
            if PONGS.load(Ordering::Acquire) >= start + round {
                break;
            }
            // SAFETY: the IPI gate is installed; its handler returns here after `hlt`
            // (`sti`'s shadow: no interrupt slips in between).
            unsafe { core::arch::asm!("sti", "hlt", options(nostack)) };
        }
    }
    PINGPONG.store(0, Ordering::Release);
}

/// `rounds` sends from CPU 0 to CPUs `1..cpus`, each waiting until all of them have
/// acknowledged (or `limit` TSC cycles passed). Returns the rounds completed.
pub fn one_to_all(cpus: usize, rounds: u32, limit: u64) -> u32 {
    let start = ACKS.load(Ordering::Acquire);
    let others = (cpus - 1) as u64;
    let mut done = 0;
    for round in 1..=u64::from(rounds) {
        send_others(cpus, 0);
        if !wait_for(&ACKS, start + round * others, limit) {
            break;
        }
        done += 1;
    }
    done
}

/// Runs the IPI workload on the BSP with `cpus` CPUs up (see the module documentation).
pub fn run(args: IpiArgs, cpus: usize, boot: &BootInfo) {
    let name = args.mode.name();
    if cpus < 2 {
        println!("ipi: needs at least 2 CPUs up");
        return;
    }
    if !lapic::x2apic_offered() {
        println!("ipi: no x2APIC");
        return;
    }
    if args.mode == SmpMode::Pv
        && !pvkit_abi::cpuid::Features::from_bits_truncate(boot.features)
            .contains(pvkit_abi::cpuid::Features::PV_IPI)
    {
        println!("ipi: no PV_IPI");
        return;
    }
    use_method(args.mode);
    let limit = match boot.tsc_khz {
        0 => 1 << 34,
        khz => khz * 10_000,
    };

    if args.mode == SmpMode::Pv {
        for (what, bitmap, vector) in [
            ("empty bitmap", 0, IPI_VECTOR),
            ("absent cpu", 1u64 << cpus, IPI_VECTOR),
            ("exception vector", 1u64 << 1, 0x10),
        ] {
            match pvkit_guest::hypercall::send_ipi(bitmap, vector, 0) {
                Err(s) => println!("ipi: bad {what} refused: {s:?}"),
                Ok(n) => println!("ipi: bad {what} accepted: {n}"),
            }
        }
    }

    // The delivery check. Each send waits for its acknowledgements before the next: a
    // fixed IPI to a CPU whose vector is still pending merges with it (as on hardware).
    let mut expected = 0;
    let mut complete = true;
    for j in 1..cpus {
        let mask = ((1u64 << cpus) - 1) & !((1u64 << j) - 1);
        send_mask(mask);
        expected += (cpus - j) as u64;
        complete &= wait_for(&ACKS, expected, limit);
    }
    send_others(cpus, 0);
    expected += (cpus - 1) as u64;
    complete &= wait_for(&ACKS, expected, limit);
    // One line, one write (each `print!` would carry its own CPU prefix).
    let mut line = alloc::string::String::new();
    for cpu in 0..cpus {
        let _ = write!(line, " cpu{cpu}={}", percpu::received(cpu));
    }
    let late = if complete { "" } else { " (timed out)" };
    println!("ipi: mode={name} received{line}{late}");

    // The ping-pong with CPU 1.
    let t0 = rdtsc();
    pingpong(args.rounds);
    let (c, ns) = per(rdtsc().wrapping_sub(t0), args.rounds, boot.tsc_khz);
    println!(
        "ipi: mode={name} pingpong rounds={} cycles_per_round_trip={c} ns_per_round_trip={ns}",
        args.rounds
    );

    // One-to-all.
    let t0 = rdtsc();
    let done = one_to_all(cpus, args.rounds, limit);
    let (c, ns) = per(rdtsc().wrapping_sub(t0), done, boot.tsc_khz);
    println!(
        "ipi: mode={name} broadcast targets={} rounds={done} cycles_per_broadcast={c} \
         ns_per_broadcast={ns}",
        cpus - 1
    );
}
