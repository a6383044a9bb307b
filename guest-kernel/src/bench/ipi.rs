//! `ipi/x2apic/*` against `ipi/pv-hypercall/*`: inter-processor interrupts in a 4-vCPU
//! boot. The APs are started once with `VcpuUp` ([`crate::smp::bring_up`]); then, per
//! variant, the workloads of [`crate::smp::ipi`]:
//!
//! - `PingPong`: CPU 0 sends to CPU 1, whose handler answers the same way; an op is one
//!   round trip (CPU 0 halts until the answer).
//! - `OneToAll`: CPU 0 sends to every other CPU (x2APIC: one ICR write with the "all but
//!   self" shorthand; PV: one `SendIpi` with their bitmap) and waits for every
//!   acknowledgement; an op is one such send.
//!
//! The phase's exits are those of CPU 0's vCPU (the markers count the calling vCPU's
//! ledger): for the PV ping-pong CPU 1's answer is one more `SendIpi` exit per round trip on
//! its own vCPU, which the sample's `extra` carries (the answers CPU 1 sent in the timed
//! loop; tests/smp.rs asserts the VM-wide count). No latency pass: an `rdtsc` per round
//! trip would cost 5–10 % of it; the cycles per op are the timed loop's mean.
//! Verified (`SAMPLE_VERIFIED`) when every round completed.

use super::{begin, case, end, Outcome, Runner, Scratch};
use crate::smp::{self, ipi, SmpMode};
use pvkit_abi::bench::{Device, Variant, Workload};
use pvkit_abi::boot::BootInfo;
use pvkit_abi::cpuid::Features;

/// CPUs the case starts (the runner boots this many vCPUs).
pub const CPUS: usize = 4;

/// Runs the selected IPI cases.
pub fn run(r: &mut Runner, scratch: &mut Scratch, boot: &BootInfo) {
    let variants = [
        (Variant::X2Apic, SmpMode::Emulated, Features::empty()),
        (Variant::PvHypercall, SmpMode::Pv, Features::PV_IPI),
    ];
    if !variants.iter().any(|(v, _, _)| r.wants(Device::Ipi, *v)) {
        return;
    }
    let (up, _) = smp::bring_up(SmpMode::Pv, CPUS, boot);
    let cpus = 1 + up as usize;
    for (variant, mode, needs) in variants {
        if !r.wants(Device::Ipi, variant) {
            continue;
        }
        let why = if cpus < 2 {
            Some("fewer than 2 CPUs came up")
        } else if !smp::lapic::x2apic_offered() {
            Some("no x2APIC")
        } else if !r.has(needs) {
            Some("no PV_IPI feature")
        } else {
            None
        };
        for workload in [Workload::PingPong, Workload::OneToAll] {
            let id = case(Device::Ipi, variant, workload);
            if let Some(why) = why {
                r.skip(id, format_args!("{why}"));
                continue;
            }
            ipi::use_method(mode);
            let ops = r.count(200, 20);
            let outcome = match workload {
                Workload::PingPong => {
                    let answers = ipi::answers();
                    let t0 = begin(id);
                    ipi::pingpong(ops as u32);
                    let cycles_total = end(id, t0, ops);
                    let answered = ipi::answers() - answers;
                    Outcome {
                        ops,
                        cycles_total,
                        flags: Outcome::checked(answered != ops),
                        extra: if mode == SmpMode::Pv { answered } else { 0 },
                        ..Outcome::default()
                    }
                }
                _ => {
                    let t0 = begin(id);
                    let done = ipi::one_to_all(cpus, ops as u32, r.ring_timeout());
                    let cycles_total = end(id, t0, ops);
                    Outcome {
                        ops,
                        cycles_total,
                        flags: Outcome::checked(u64::from(done) != ops),
                        extra: (cpus - 1) as u64,
                        ..Outcome::default()
                    }
                }
            };
            r.report(id, &outcome, scratch);
        }
    }
}
