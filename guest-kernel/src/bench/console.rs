//! Console cases: 64-byte and 4 KiB writes of [`PATTERN`] through the emulated 16550, the
//! `ConsoleWrite` hypercall and the console ring (three transports).
//!
//! The payload is a `.rodata` pattern (`b'a' + i % 26`) built at compile time, so no case
//! fills a buffer; the host captures the console output of each phase and checks it.
//!
//! | variant | per write | timed loop | latency pass (before the phase) |
//! |---|---|---|---|
//! | `uart` | per byte: 1 LSR read + 1 THR write (128 / 8192 exits) | `rdtsc` at its ends only | ≤ [`super::LATENCY_OPS`] writes, each timed |
//! | `pv-hypercall` | 1 `ConsoleWrite` exit | `rdtsc` at its ends only | ≤ [`super::LATENCY_OPS`] writes, each timed |
//! | `pv-ring`, `pv-ioeventfd`, `pv-poll` | batches of [`QUEUE_DEPTH`]: push, one publish, at most one doorbell, wait for the responses | `rdtsc` at its ends only | as many writes as the timed loop, each batch timed |
//!
//! The latency pass writes [`FILLER`] (`'.'`), not the pattern: same length, same path,
//! and the host's check of the phase's pattern bytes skips it.
//!
//! Where the timed loop runs: ring 0, except `pv-poll`, whose batches run in **ring 3**
//! ([`crate::user`]) the way a process writes into an io_uring polled by the kernel
//! (`SQPOLL`): it queues and polls the responses natively on kvm_pvm while a host thread
//! polls `req_prod`; no exit, no doorbell; its sample carries `SAMPLE_RING3`, and its
//! `cycles_total` is measured in ring 3 around the loop (the one-time ring switch is in
//! the host's wall time only). The loop ([`ring_loop`]) is the same code in both rings; in
//! ring 3 a doorbell the host asks for (it never does while it polls) is left to ring 0.
//!
//! Checks: every PV write (both passes) must return OK with all bytes written (else
//! `SAMPLE_FAILED`; all OK gives `SAMPLE_VERIFIED`). The UART has nothing to check.

use super::ring_pass::{drive, BatchSamples, RingPass};
use super::{begin, case, end, latency_ops, Outcome, Runner, Scratch, RING_VARIANTS};
use crate::statics::{Exclusive, Pages};
use pvkit_abi::bench::{Device, Variant, Workload, SAMPLE_LATENCY_PASS, SAMPLE_RING3};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::COM1;
use pvkit_abi::ring::{QueueId, Transport, CONSOLE_QUEUE};
use pvkit_guest::console_ring::ConsoleRing;
use pvkit_guest::ring::kick;
use pvkit_guest::tsc::rdtsc;
use pvkit_guest::{PvConsole, Uart16550};

/// Bytes of the largest write.
const PATTERN_LEN: usize = 4096;

/// The payload: `b'a' + i % 26`, built by the compiler.
static PATTERN: [u8; PATTERN_LEN] = pattern();

const fn pattern() -> [u8; PATTERN_LEN] {
    let mut p = [0; PATTERN_LEN];
    let mut i = 0;
    while i < PATTERN_LEN {
        p[i] = b'a' + (i % 26) as u8;
        i += 1;
    }
    p
}

/// The latency pass's payload: as long as the largest write, and no run of [`PATTERN`].
static FILLER: [u8; PATTERN_LEN] = [b'.'; PATTERN_LEN];

/// Requests in flight per batch on the ring variants.
const QUEUE_DEPTH: u64 = 16;
/// Ring slots (more than the queue depth, as a driver would size it).
const RING_SIZE: u32 = 32;

/// One ring region per transport: a registration never reuses another's memory.
static RINGS: [Exclusive<Pages<4096>>; 3] = [
    Exclusive::new(Pages::zeroed()),
    Exclusive::new(Pages::zeroed()),
    Exclusive::new(Pages::zeroed()),
];
const _: () = assert!(matches!(ConsoleRing::bytes(RING_SIZE), Some(n) if n <= 4096));

/// The two workloads: (workload, bytes per write, default ops, quick ops).
const WORKLOADS: [(Workload, usize, u64, u64); 2] = [
    (Workload::Write64, 64, 64, 8),
    (Workload::Write4K, 4096, 8, 2),
];

/// Runs every console case.
pub fn run(r: &mut Runner, scratch: &mut Scratch) {
    uart(r, scratch);
    hypercall(r, scratch);
    for (i, &(variant, transport, extra)) in RING_VARIANTS.iter().enumerate() {
        ring(r, scratch, variant, transport, extra, &RINGS[i]);
    }
}

/// `console/uart/*`: the 16550 driver, LSR poll + THR write per byte.
fn uart(r: &mut Runner, scratch: &mut Scratch) {
    if !r.wants(Device::Console, Variant::Uart) {
        return;
    }
    // SAFETY: ring 0; COM1 is the emulated UART, which has no DMA. When it is also the
    // kernel console, no line is printed while a phase runs, so bytes do not interleave.
    let mut uart = unsafe { Uart16550::new(COM1) };
    uart.init();
    for (workload, len, default, quick) in WORKLOADS {
        let id = case(Device::Console, Variant::Uart, workload);
        let ops = r.count(default, quick);
        let bytes = &PATTERN[..len];
        let mut samples = scratch.samples();
        for _ in 0..latency_ops(ops) {
            let s = rdtsc();
            uart.write(&FILLER[..len]);
            samples.push(rdtsc() - s);
        }
        let t0 = begin(id);
        for _ in 0..ops {
            uart.write(bytes);
        }
        let cycles_total = end(id, t0, ops);
        let outcome = Outcome {
            ops,
            bytes: ops * len as u64,
            cycles_total,
            flags: SAMPLE_LATENCY_PASS,
            samples: samples.len(),
            ..Outcome::default()
        };
        r.report(id, &outcome, scratch);
    }
}

/// `console/pv-hypercall/*`: one `ConsoleWrite` per write.
fn hypercall(r: &mut Runner, scratch: &mut Scratch) {
    if !r.wants(Device::Console, Variant::PvHypercall) {
        return;
    }
    for (workload, len, default, quick) in WORKLOADS {
        let id = case(Device::Console, Variant::PvHypercall, workload);
        if !r.has(Features::CONSOLE) {
            r.skip(id, format_args!("host lacks CONSOLE"));
            continue;
        }
        let ops = r.count(default, quick);
        let bytes = &PATTERN[..len];
        let mut samples = scratch.samples();
        let mut failed = false;
        let console = PvConsole::new();
        for _ in 0..latency_ops(ops) {
            let s = rdtsc();
            let written = console.write(&FILLER[..len]);
            samples.push(rdtsc() - s);
            failed |= written != Ok(len);
        }
        let t0 = begin(id);
        for _ in 0..ops {
            failed |= console.write(bytes) != Ok(len);
        }
        let cycles_total = end(id, t0, ops);
        let outcome = Outcome {
            ops,
            bytes: ops * len as u64,
            cycles_total,
            flags: Outcome::checked(failed) | SAMPLE_LATENCY_PASS,
            samples: samples.len(),
            ..Outcome::default()
        };
        r.report(id, &outcome, scratch);
    }
}

/// `console/pv-ring|pv-ioeventfd|pv-poll/*`: the console ring with `transport`.
fn ring(
    r: &mut Runner,
    scratch: &mut Scratch,
    variant: Variant,
    transport: Transport,
    extra: Features,
    memory: &'static Exclusive<Pages<4096>>,
) {
    if !r.wants(Device::Console, variant) {
        return;
    }
    let needs = Features::CONSOLE_RING | extra;
    if !r.has(needs) {
        for (workload, ..) in WORKLOADS {
            r.skip(
                case(Device::Console, variant, workload),
                format_args!("host lacks {:?}", needs.difference(r.features)),
            );
        }
        return;
    }
    let mut ring = match ConsoleRing::register(&mut memory.take().0, RING_SIZE, transport) {
        Ok(ring) => ring,
        Err(e) => {
            for (workload, ..) in WORKLOADS {
                let id = case(Device::Console, variant, workload);
                r.fail_setup(id, format_args!("registering the ring: {e:?}"), scratch);
            }
            return;
        }
    };
    let timeout = r.ring_timeout();
    let user = variant == Variant::PvPoll;
    for (workload, len, default, quick) in WORKLOADS {
        let id = case(Device::Console, variant, workload);
        let ops = r.count(default, quick);
        let mut samples = scratch.samples();
        // The latency pass: as many writes of the filler, each batch timed.
        let mut lat = RingLoop::new(&raw mut ring, &FILLER[..len], ops, timeout, user);
        lat.samples = BatchSamples::into(&mut samples);
        drive(&mut lat);
        samples.set_len(lat.samples.n);
        if lat.failed || lat.done != ops {
            r.fail_setup(id, format_args!("the latency pass failed"), scratch);
            continue;
        }
        // The timed loop: no time read but at its ends.
        let mut l = RingLoop::new(&raw mut ring, &PATTERN[..len], ops, timeout, user);
        let t0 = begin(id);
        drive(&mut l);
        let phase = end(id, t0, l.done);
        let done = l.done;
        let outcome = Outcome {
            ops: done,
            bytes: done * len as u64,
            // In ring 3, the loop's own time, without the one-time ring switch.
            cycles_total: if user { l.cycles } else { phase },
            flags: Outcome::checked(l.failed)
                | SAMPLE_LATENCY_PASS
                | if user { SAMPLE_RING3 } else { 0 },
            samples: samples.len(),
            ..Outcome::default()
        };
        r.report(id, &outcome, scratch);
    }
}

impl RingPass for RingLoop {
    const BODY: extern "C" fn(u64) -> u64 = ring_loop;
    const QUEUE: QueueId = CONSOLE_QUEUE;

    fn user(&self) -> bool {
        self.user
    }

    fn wants_kick(&self) -> bool {
        self.kick
    }
}

/// The state of one pass of a console ring case, shared by ring 0 and [`ring_loop`],
/// which may run in ring 3 (all of it is in the user-accessible identity map).
#[repr(C)]
struct RingLoop {
    ring: *mut ConsoleRing,
    bytes: &'static [u8],
    ops: u64,
    done: u64,
    /// Ring time-out in TSC cycles.
    timeout: u64,
    /// The latency pass's samples ([`BatchSamples::NONE`] in the timed loop).
    samples: BatchSamples,
    /// Writes of the batch published and not yet answered (0: none).
    in_flight: u64,
    /// TSC cycles spent in [`ring_loop`] (summed over its calls).
    cycles: u64,
    failed: bool,
    /// The loop runs in ring 3 (IOPL 0): a doorbell needs ring 0.
    user: bool,
    /// Set on return: ring the console doorbell and call [`ring_loop`] again.
    kick: bool,
}

impl RingLoop {
    /// A pass of `ops` writes of `bytes`, recording no samples.
    fn new(
        ring: *mut ConsoleRing,
        bytes: &'static [u8],
        ops: u64,
        timeout: u64,
        user: bool,
    ) -> Self {
        RingLoop {
            ring,
            bytes,
            ops,
            done: 0,
            timeout,
            samples: BatchSamples::NONE,
            in_flight: 0,
            cycles: 0,
            failed: false,
            user,
            kick: false,
        }
    }
}

/// The batches of a console ring pass: queue up to [`QUEUE_DEPTH`] writes of `bytes`,
/// publish, ring if asked (ring 0; from ring 3, return with `kick` set and the batch in
/// flight), wait for every response and check it; in the latency pass, record the cycles
/// per write of each batch ([`BatchSamples`]). Stops after `ops` writes or the first
/// failed batch. `arg` is the address of a [`RingLoop`]. Runs in either ring: no port I/O
/// in ring 3.
extern "C" fn ring_loop(arg: u64) -> u64 {
    // SAFETY: `arg` is the address of a `RingLoop` that `ring` owns and does not touch
    // during this call.
    let l = unsafe { &mut *(arg as *mut RingLoop) };
    // SAFETY: `l.ring` points to the `ConsoleRing` of `ring`, not used elsewhere meanwhile.
    let ring = unsafe { &mut *l.ring };
    // The loop state lives in registers and goes back into `l` on return.
    let (bytes, ops, timeout) = (l.bytes, l.ops, l.timeout);
    let (mut done, mut failed, mut samples) = (l.done, l.failed, l.samples);
    let mut in_flight = l.in_flight;
    let len = bytes.len() as u64;
    let start = rdtsc();
    // Latency pass: one `rdtsc` per batch; a batch's sample runs from the end of the one
    // before (or the start of this call) to its own end.
    samples.resume(in_flight, start);
    let mut kick_needed = false;
    loop {
        if in_flight == 0 {
            if done >= ops || failed {
                break;
            }
            let batch = QUEUE_DEPTH.min(ops - done);
            for _ in 0..batch {
                failed |= ring.queue(bytes).is_err();
            }
            in_flight = batch;
            if ring.publish() {
                if l.user {
                    kick_needed = true;
                    break;
                }
                kick(CONSOLE_QUEUE);
            }
        }
        let mut bad = 0u64;
        let waited = ring.wait(timeout, |rsp| {
            bad |= rsp.status as u64 | (u64::from(rsp.written) ^ len);
        });
        samples.batch_done(in_flight);
        failed |= bad != 0 || waited.is_err();
        // As before: a batch counts once waited for (the host's console check then sees
        // every byte it reports).
        done += in_flight;
        in_flight = 0;
    }
    l.cycles += rdtsc() - start;
    (l.done, l.failed, l.samples) = (done, failed, samples);
    (l.in_flight, l.kick) = (in_flight, kick_needed);
    0
}
