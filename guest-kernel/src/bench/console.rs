//! Console cases: 64-byte and 4 KiB writes of [`PATTERN`] through the emulated 16550, the
//! `ConsoleWrite` hypercall and the console ring (three transports).
//!
//! The payload is a `.rodata` pattern (`b'a' + i % 26`) built at compile time, so no case
//! fills a buffer; the host captures the console output of each phase and checks it.
//!
//! | variant | per write | timed |
//! |---|---|---|
//! | `uart` | per byte: 1 LSR read + 1 THR write (128 / 8192 exits) | per write |
//! | `pv-hypercall` | 1 `ConsoleWrite` exit | per write |
//! | `pv-ring`, `pv-ioeventfd`, `pv-poll` | batches of [`QUEUE_DEPTH`]: push, one publish, at most one doorbell, wait for the responses | per batch |
//!
//! Checks: every PV write must return OK with all bytes written (else `SAMPLE_FAILED`;
//! all OK gives `SAMPLE_VERIFIED`). The UART has nothing to check.

use super::{begin, case, end, Outcome, Runner, Scratch, RING_VARIANTS};
use crate::statics::{Exclusive, Pages};
use pvkit_abi::bench::{Device, Variant, Workload};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::COM1;
use pvkit_abi::ring::Transport;
use pvkit_abi::Status;
use pvkit_guest::console_ring::ConsoleRing;
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
        let t0 = begin(id);
        for _ in 0..ops {
            let s = rdtsc();
            uart.write(bytes);
            samples.push(rdtsc() - s);
        }
        let cycles_total = end(id, t0, ops);
        let outcome = Outcome {
            ops,
            bytes: ops * len as u64,
            cycles_total,
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
        let t0 = begin(id);
        for _ in 0..ops {
            let s = rdtsc();
            let written = console.write(bytes);
            samples.push(rdtsc() - s);
            failed |= written != Ok(len);
        }
        let cycles_total = end(id, t0, ops);
        let outcome = Outcome {
            ops,
            bytes: ops * len as u64,
            cycles_total,
            flags: Outcome::checked(failed),
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
    for (workload, len, default, quick) in WORKLOADS {
        let id = case(Device::Console, variant, workload);
        let ops = r.count(default, quick);
        let bytes: &'static [u8] = &PATTERN[..len];
        let mut samples = scratch.samples();
        let mut failed = false;
        let mut done = 0;
        let t0 = begin(id);
        while done < ops && !failed {
            let batch = QUEUE_DEPTH.min(ops - done);
            let s = rdtsc();
            for _ in 0..batch {
                failed |= ring.queue(bytes).is_err();
            }
            ring.submit();
            let waited = ring.wait(timeout, |rsp| {
                failed |= rsp.status != Status::Ok as i64 || rsp.written as usize != len;
            });
            samples.push((rdtsc() - s) / batch);
            failed |= waited.is_err();
            done += batch;
        }
        let cycles_total = end(id, t0, done);
        let outcome = Outcome {
            ops: done,
            bytes: done * len as u64,
            cycles_total,
            flags: Outcome::checked(failed),
            samples: samples.len(),
            ..Outcome::default()
        };
        r.report(id, &outcome, scratch);
    }
}
