//! Renderings of fleet results: Markdown for people, JSON (serde) for tools.

use std::fmt::Write;

use super::FleetOutcome;

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// What the host's KSM switch says, in words.
pub fn ksm_words(ksm: Option<bool>) -> &'static str {
    match ksm {
        Some(true) => "KSM is on (/sys/kernel/mm/ksm/run = 1)",
        Some(false) => {
            "KSM is off (/sys/kernel/mm/ksm/run = 0): no page sharing measured; pvkit does \
             not turn it on"
        }
        None => "this kernel has no KSM: no page sharing measured",
    }
}

/// One fleet run as Markdown: a summary table and the verdict.
pub fn markdown(o: &FleetOutcome) -> String {
    let mut s = String::new();
    let workload = if o.touch_mib == 0 {
        "no memory workload".to_owned()
    } else if o.give_back {
        format!(
            "each touched {} MiB, freed it and gave it back through the balloon",
            o.touch_mib
        )
    } else {
        format!("each touched {} MiB and freed it (no balloon)", o.touch_mib)
    };
    let nic = match o.nic {
        super::FleetNic::Pv => "PV NIC (pvnet=irq)",
        super::FleetNic::Ne2000 => "emulated NE2000",
    };
    let _ = writeln!(
        s,
        "{} guests of {} MiB, {workload}; {nic} on a TAP device each, one bridge\n",
        o.vms, o.mem_mib
    );
    let _ = writeln!(s, "| metric | value |\n|---|---|");
    let _ = writeln!(
        s,
        "| start: first spawn to all ready | {:.2} s ({:.1} VMs/s); median per VM {} |",
        o.start_s,
        o.start_rate,
        o.median_ready_s()
            .map_or("n/a".into(), |t| format!("{:.2} s", t))
    );
    let _ = writeln!(s, "| PSS per VM (mean) | {} MiB |", mib(o.mean_pss_kib()));
    let _ = writeln!(
        s,
        "| guest RAM the host backs per VM (mean) | {} MiB |",
        mib(o.mean_guest_ram_kib())
    );
    let _ = writeln!(
        s,
        "| VMM overhead per VM (PSS − guest RAM): mean / max | {} / {} MiB |",
        mib(o.mean_overhead_kib()),
        mib(o.max_overhead_kib())
    );
    let _ = writeln!(
        s,
        "| host kernel memory per VM (Δ slab, stacks, page tables, vmalloc) | {} MiB |",
        mib(o.kernel_per_vm_kib)
    );
    let _ = writeln!(
        s,
        "| host memory per VM (PSS + kernel) | {} MiB |",
        mib(o.host_kib_per_vm())
    );
    let ring = match (o.ring, o.ring_s) {
        (Some(t), Some(secs)) => format!(
            "{} hops, sum {} (expected {}), {:.3} s",
            t.hops,
            t.sum,
            u64::from(o.vms) * (u64::from(o.vms) + 1) / 2,
            secs
        ),
        _ => "did not complete".into(),
    };
    let _ = writeln!(s, "| UDP ring host → 1 → … → {} → host | {ring} |", o.vms);
    let _ = writeln!(s, "| clean exits | {} of {} |", o.clean_exits, o.vms);
    let _ = writeln!(s, "\n{}.", ksm_words(o.ksm_running));
    if o.mergeable {
        let _ = writeln!(
            s,
            "Guest RAM was MADV_MERGEABLE; KSM shared {} pages when the host measured.",
            o.ksm_pages_sharing.map_or("no".into(), |p| p.to_string())
        );
    }
    if o.passed() {
        let _ = writeln!(
            s,
            "\nPASSED: every guest started, the ring verified, every guest exited 0."
        );
    } else {
        let _ = writeln!(s, "\nFAILED:");
        for p in &o.problems {
            let _ = writeln!(s, "- {p}");
        }
    }
    s
}

/// The density comparison: how many guests of each run's host memory per VM fit in
/// `budget_mib`. `runs` are (name, outcome) pairs of the same guest size and workload.
pub fn density_markdown(runs: &[(&str, &FleetOutcome)], budget_mib: u64) -> String {
    let mut s = String::new();
    let Some((_, first)) = runs.first() else {
        return s;
    };
    let _ = writeln!(
        s,
        "Density: {} MiB guests that touched {} MiB and freed it, in a host budget of {budget_mib} MiB \
         (host memory per VM = mean PSS + kernel memory per VM, while idle after the work; {} \
         guests per run)\n",
        first.mem_mib, first.touch_mib, first.vms
    );
    let _ = writeln!(
        s,
        "| | PSS per VM | kernel per VM | guests in {budget_mib} MiB |\n|---|---|---|---|"
    );
    for (name, o) in runs {
        let _ = writeln!(
            s,
            "| {name} | {} MiB | {} MiB | {} |",
            mib(o.mean_pss_kib()),
            mib(o.kernel_per_vm_kib),
            o.vms_in_budget(budget_mib)
                .map_or("n/a".into(), |n| n.to_string())
        );
    }
    let _ = writeln!(
        s,
        "\nHost before the runs: {}.",
        ksm_words(first.ksm_running)
    );
    for (name, o) in runs.iter().filter(|(_, o)| o.mergeable) {
        let _ = writeln!(
            s,
            "{name}: guest RAM MADV_MERGEABLE, KSM {} during the run, {} pages shared when \
             measured.",
            if o.ksm_running == Some(true) {
                "on"
            } else {
                "off"
            },
            o.ksm_pages_sharing.map_or("no".into(), |p| p.to_string())
        );
    }
    s
}

/// JSON of any serializable result.
pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
