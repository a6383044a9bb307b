//! `smp/init-sipi/ap-bringup` against `smp/pv-hypercall/ap-bringup`: starting the 3 APs
//! of a 4-vCPU boot ([`crate::smp::bring_up`]) until each has reported in (its own GDT,
//! TSS, IDT, `GS`, clock page and LAPIC set up, its line written). An op is one AP.
//!
//! A boot can start its APs only once, so a boot runs one variant: the first selected;
//! any other selected one is skipped with a line saying so (`pvkit bench` boots once per
//! variant). The phase's exits are CPU 0's (the markers count the calling vCPU's ledger):
//! `VcpuUp` per AP for PV, none for INIT-SIPI-SIPI (in-kernel LAPIC); each AP's own
//! start-up exits are on its vCPU (tests/smp.rs asserts them). Verified when every AP
//! reported in.

use super::{begin, case, end, Outcome, Runner, Scratch};
use crate::smp::{self, SmpMode};
use pvkit_abi::bench::{Device, Variant, Workload};
use pvkit_abi::boot::BootInfo;

/// CPUs the case starts (the runner boots this many vCPUs).
pub const CPUS: usize = 4;

/// Runs the first selected bring-up variant.
pub fn run(r: &mut Runner, scratch: &mut Scratch, boot: &BootInfo) {
    let mut done = false;
    for (variant, mode) in [
        (Variant::InitSipi, SmpMode::Emulated),
        (Variant::PvHypercall, SmpMode::Pv),
    ] {
        if !r.wants(Device::Smp, variant) {
            continue;
        }
        let id = case(Device::Smp, variant, Workload::ApBringUp);
        if done {
            r.skip(
                id,
                format_args!("the APs are already up: one bring-up per boot"),
            );
            continue;
        }
        done = true;
        let aps = (CPUS - 1) as u64;
        let t0 = begin(id);
        let (up, _) = smp::bring_up(mode, CPUS, boot);
        let cycles_total = end(id, t0, aps);
        let outcome = Outcome {
            ops: aps,
            cycles_total,
            flags: Outcome::checked(u64::from(up) != aps),
            extra: u64::from(up),
            ..Outcome::default()
        };
        r.report(id, &outcome, scratch);
    }
}
