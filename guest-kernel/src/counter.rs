//! `counter=N`: a workload for snapshot, restore and clone tests. It counts from 1 to `N`,
//! one step every `counter_ms=M` milliseconds (default 20) of PV clock time, and prints
//! `counter I t=NS` at each step, then `counter done` and exits 0.
//!
//! What it checks itself (a failure panics, which the host reports as a guest fault):
//! - the PV clock never goes backwards, across a snapshot and restore included;
//! - with a PV block disk: at each step it first reads sector 0 and requires the record it
//!   wrote at the previous step (`PVCNT`, step, time), then writes this step's record. A
//!   restored guest thus proves its disk holds exactly what it wrote before the snapshot,
//!   and a clone proves no other clone wrote to its disk meanwhile (each record carries
//!   its own clock time, which differs from clone to clone).
//!
//! With `balloon_follow` ([`CounterArgs::balloon_batch`]) each step first follows the
//! host-set balloon target ([`pvkit_guest::balloon::BalloonDriver`], one `BalloonTarget`
//! call a step and at most one inflate or deflate of `balloon_batch` pages) over the free
//! RAM above the heap ([`crate::balloon::free_region_start`] to the top of RAM), and prints
//! `balloon: target T gen G: +I -D, B ballooned` whenever it moved or a new target came.
//! It checks that every page it deflates reads zero (first word: the host dropped it).
//! With `balloon_touch` it first writes one word in every page of that RAM, so that the
//! host backs it and an inflate gives real host memory back.
//!
//! With `cpus=N` (N ≥ 2, the VM started with at least N vCPUs) the counter is an SMP
//! guest ([`smp_start`]): before counting, CPU 0 starts CPU 1 and CPUs 2..N with one
//! `VcpuUp` each. CPU 1 is the partner: at every step CPU 0 posts the step number and waits
//! (at most [`PARTNER_WAIT_NS`] of PV clock time) until CPU 1 has answered it, and CPU 1's
//! running sum of all steps it answered, kept in its own registers and stack, must be
//! `1 + 2 + … + i`: a restored CPU 1 must continue from its saved registers, not start
//! over, and must run at all. CPUs 2..N halt with interrupts off (their MP state is
//! `HALTED`; nothing wakes them). Neither exits: the ledger gains one `VcpuUp` per AP (and
//! the wake-up of its thread) and one console line, `counter cpu1 sum=S`, before
//! `counter done`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pvkit_abi::boot::BootInfo;
use pvkit_abi::cpuid::Features;
use pvkit_guest::block::PvBlock;
use pvkit_guest::clock::ClockPage;

use crate::statics::{Exclusive, Pages};
use pvkit_abi::boot::IDENTITY_MAP_SIZE;
use pvkit_abi::ring::Transport;
use pvkit_guest::balloon::{BalloonDriver, Hypercalls};
use pvkit_guest::console_ring::ConsoleRing;

static RING: Exclusive<Pages<4096>> = Exclusive::new(Pages::zeroed());
static LINE: Exclusive<Pages<128>> = Exclusive::new(Pages::zeroed());

/// A line of text in a fixed buffer.
struct LineBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for LineBuf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes `counter I t=NS` through the console ring and waits for the host's answer.
fn ring_line(ring: &mut ConsoleRing, line: &mut [u8], i: u64, now: u64) {
    use core::fmt::Write;
    let mut b = LineBuf { buf: line, len: 0 };
    if writeln!(b, "counter {i} t={now}").is_err() {
        panic!("counter: line too long");
    }
    let (ptr, len) = (b.buf.as_ptr(), b.len);
    // SAFETY: `line` is a static buffer; the host reads these bytes only until it answers
    // the request, and `wait` below returns only after that answer, before the buffer is
    // written again.
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(ptr, len) };
    if ring.queue(bytes).is_err() {
        panic!("counter: console ring full");
    }
    ring.submit();
    let mut written = 0usize;
    let waited = ring.wait(u64::MAX, |rsp| {
        if rsp.status == 0 {
            written += rsp.written as usize;
        }
    });
    if waited.is_err() || written != len {
        panic!("counter: console ring write failed ({written} of {len} bytes)");
    }
}

/// `counter=` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterArgs {
    /// Steps.
    pub steps: u64,
    /// Milliseconds of PV clock time per step.
    pub step_ms: u64,
    /// Print through the console ring with this transport (`ring=`) instead of the
    /// `ConsoleWrite` call: a snapshot then holds a registered ring.
    pub ring: Option<Transport>,
    /// `balloon_follow`: follow the host's balloon target, at most this many pages a step.
    pub balloon_batch: Option<u64>,
    /// `balloon_touch`: with `balloon_follow`, write every page of the region first.
    pub balloon_touch: bool,
    /// CPUs taking part (`cpus=`, default 1): see the module doc.
    pub cpus: usize,
}

/// Pages a `balloon_follow` step moves at most (8 MiB).
pub const DEFAULT_BALLOON_BATCH: u64 = 2048;

/// The balloon driver of `balloon_follow` over the free RAM above the heap, or `None` (with
/// a line saying why) when the host offers no target.
fn balloon_driver(
    batch: u64,
    touch_first: bool,
    features: Features,
    boot: &BootInfo,
) -> Option<BalloonDriver> {
    if !features.contains(Features::BALLOON | Features::BALLOON_TARGET) {
        println!("balloon: the host offers no balloon target (BALLOON_TARGET); not following");
        return None;
    }
    let start = crate::balloon::free_region_start();
    let top = boot.mem_size.min(IDENTITY_MAP_SIZE) & !0xfff;
    let len = top.saturating_sub(start);
    match BalloonDriver::new(start, len, batch) {
        Ok(d) => {
            println!(
                "balloon: following the host's target over {} pages at {start:#x}, {batch} a step",
                d.capacity_pages()
            );
            if touch_first {
                touch(&d);
            }
            Some(d)
        }
        Err(s) => panic!("balloon: region {start:#x}+{len:#x}: {s}"),
    }
}

/// Writes one word in every page of the balloon's region (`balloon_touch`).
fn touch(d: &BalloonDriver) {
    let region = d.usable();
    let mut at = region.start;
    while at < region.end {
        // SAFETY: the region is free RAM above the heap and the kernel under the identity
        // map, given to the balloon driver and not ballooned yet; nothing else uses it.
        unsafe { (at as *mut u64).write_volatile(at | 1) };
        at += 4096;
    }
    println!("balloon: touched {} pages", d.capacity_pages());
}

/// Panics unless the first word of every page of a deflated range reads zero.
fn check_zero(r: pvkit_abi::balloon::BalloonRange) {
    for i in 0..r.pages {
        let p = (r.gpa + i * 4096) as *const u64;
        // SAFETY: the page was just deflated: it is the guest's again, inside the
        // driver's region (free RAM under the identity map).
        let v = unsafe { p.read_volatile() };
        if v != 0 {
            panic!(
                "balloon: deflated page {:#x} reads {v:#x}, not zero",
                r.gpa + i * 4096
            );
        }
    }
}

/// One `balloon_follow` step: prints what it did when it moved or a new target came.
fn balloon_step(d: &mut BalloonDriver) {
    let step = d.follow(&mut Hypercalls);
    if let Ok(s) = &step {
        if let (Some(r), true) = (s.moved, s.deflated > 0) {
            check_zero(r);
        }
    }
    match step {
        Ok(s) if s.new_request || !s.settled() => println!(
            "balloon: target {} gen {}: +{} -{}, {} ballooned{}",
            s.target.pages,
            s.target.generation,
            s.inflated,
            s.deflated,
            s.ballooned,
            if s.capped { " (capped)" } else { "" }
        ),
        Ok(_) => {}
        Err(e) => panic!("balloon: following the target: {e}"),
    }
}

/// How long CPU 0 waits for CPU 1's answer to a step, in PV clock nanoseconds.
pub const PARTNER_WAIT_NS: u64 = 30_000_000_000;

/// The step CPU 0 asks CPU 1 to answer (0: none yet).
static ASK: AtomicU64 = AtomicU64::new(0);
/// The last step CPU 1 answered.
static ANSWER: AtomicU64 = AtomicU64::new(0);
/// CPU 1's sum of the steps it answered, published with each answer.
static SUM: AtomicU64 = AtomicU64::new(0);
/// APs that reached their loop (CPU 1) or are about to halt (CPUs 2..).
static READY: AtomicU32 = AtomicU32::new(0);

/// CPU 1's loop: answers each step CPU 0 asks for, keeping its running sum in its own
/// registers. No exits.
extern "C" fn partner(cpu: u64) -> ! {
    crate::smp::percpu::init_ap(cpu as usize);
    READY.fetch_add(1, Ordering::AcqRel);
    let mut answered = 0u64;
    let mut sum = 0u64;
    loop {
        let ask = ASK.load(Ordering::Acquire);
        if ask != answered {
            sum = sum.wrapping_add(ask);
            answered = ask;
            SUM.store(sum, Ordering::Relaxed);
            ANSWER.store(ask, Ordering::Release);
        }
        core::hint::spin_loop();
    }
}

/// CPUs 2..: halt for good (interrupts off: their MP state stays `HALTED`).
extern "C" fn halter(cpu: u64) -> ! {
    crate::smp::percpu::init_ap(cpu as usize);
    READY.fetch_add(1, Ordering::AcqRel);
    loop {
        // SAFETY: `cli; hlt` only stops this CPU; nothing it owns is left inconsistent.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Starts CPU 1 ([`partner`]) and CPUs 2..`cpus` ([`halter`]) with `VcpuUp` and waits
/// until all are in their loops (bounded by [`PARTNER_WAIT_NS`]).
fn smp_start(cpus: usize, clock: &pvkit_guest::clock::ClockReader) {
    let cpus = cpus.min(crate::smp::MAX_CPUS);
    for cpu in 1..cpus {
        let entry = match cpu {
            1 => partner as *const () as u64,
            _ => halter as *const () as u64,
        };
        let stack = crate::smp::stack_top(cpu);
        if let Err(s) = pvkit_guest::hypercall::vcpu_up(cpu as u64, entry, stack, cpu as u64) {
            panic!("counter: starting CPU {cpu} failed: {s:?} (fewer vCPUs than cpus=?)");
        }
    }
    let t0 = clock.nanoseconds();
    while READY.load(Ordering::Acquire) < (cpus - 1) as u32 {
        if clock.nanoseconds().saturating_sub(t0) > PARTNER_WAIT_NS {
            panic!("counter: the APs did not come up");
        }
        core::hint::spin_loop();
    }
}

/// Asks CPU 1 to answer step `i` and checks its answer and its running sum.
fn partner_step(i: u64, clock: &pvkit_guest::clock::ClockReader) {
    ASK.store(i, Ordering::Release);
    let t0 = clock.nanoseconds();
    while ANSWER.load(Ordering::Acquire) != i {
        if clock.nanoseconds().saturating_sub(t0) > PARTNER_WAIT_NS {
            panic!("counter: CPU 1 did not answer step {i}");
        }
        core::hint::spin_loop();
    }
    let sum = SUM.load(Ordering::Relaxed);
    let want = i * (i + 1) / 2;
    if sum != want {
        panic!("counter: CPU 1's sum after step {i} is {sum}, not {want}");
    }
}

static CLOCK: ClockPage = ClockPage::new();
static SECTOR: Exclusive<Pages<4096>> = Exclusive::new(Pages::zeroed());
const MAGIC: &[u8; 5] = b"PVCNT";

fn record(buf: &mut [u8], step: u64, t: u64) {
    buf.fill(0);
    buf[..5].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&step.to_le_bytes());
    buf[16..24].copy_from_slice(&t.to_le_bytes());
}

/// Runs the counter (see the module doc) and exits.
pub fn run(args: CounterArgs, boot: &BootInfo) -> ! {
    let features = Features::from_bits_truncate(boot.features);
    if !features.contains(Features::CLOCK) {
        panic!("counter: needs the PV clock");
    }
    let clock = match pvkit_guest::clock::register(&CLOCK) {
        Ok(r) => r,
        Err(e) => panic!("counter: clock registration failed: {e:?}"),
    };
    let disk =
        features.contains(Features::BLOCK) && pvkit_guest::block::capacity().is_ok_and(|c| c > 0);
    let mut block = PvBlock::new();
    let buf = &mut SECTOR.take().0[..512];
    let step_ns = args.step_ms.saturating_mul(1_000_000);
    let mut ring = args
        .ring
        .map(|t| match ConsoleRing::register(&mut RING.take().0, 32, t) {
            Ok(r) => r,
            Err(e) => panic!("counter: registering the console ring ({t:?}): {e:?}"),
        });
    let line = &mut LINE.take().0;
    let mut balloon = args
        .balloon_batch
        .and_then(|b| balloon_driver(b, args.balloon_touch, features, boot));
    if args.cpus > 1 {
        smp_start(args.cpus, &clock);
    }
    let mut last = clock.nanoseconds();
    let mut prev: Option<(u64, u64)> = None;
    for i in 1..=args.steps {
        let deadline = last.saturating_add(step_ns);
        let mut now = clock.nanoseconds();
        while now < deadline {
            let t = clock.nanoseconds();
            if t < now {
                panic!("counter: clock went back from {now} to {t}");
            }
            now = t;
        }
        if now < last {
            panic!("counter: clock went back from {last} to {now}");
        }
        if let Some(d) = &mut balloon {
            balloon_step(d);
        }
        if disk {
            if let Err(e) = block.read(0, buf) {
                panic!("counter: disk read failed: {e:?}");
            }
            if let Some((step, t)) = prev {
                let mut want = [0u8; 512];
                record(&mut want, step, t);
                if buf[..24] != want[..24] {
                    let word = |r: core::ops::Range<usize>| {
                        u64::from_le_bytes(buf[r].try_into().unwrap_or([0; 8]))
                    };
                    panic!(
                        "counter: step {i}: sector 0 holds ({}, {}), not step {step}'s record ({step}, {t})",
                        word(8..16),
                        word(16..24)
                    );
                }
            }
            record(buf, i, now);
            if let Err(e) = block.write(0, buf) {
                panic!("counter: disk write failed: {e:?}");
            }
            prev = Some((i, now));
        }
        if args.cpus > 1 {
            partner_step(i, &clock);
        }
        match &mut ring {
            Some(r) => ring_line(r, line, i, now),
            None => println!("counter {i} t={now}"),
        }
        last = now;
    }
    if args.cpus > 1 {
        println!("counter cpu1 sum={}", SUM.load(Ordering::Relaxed));
    }
    println!("counter done");
    crate::exit(0)
}
