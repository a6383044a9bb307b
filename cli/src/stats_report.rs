//! The `--stats` report: platform, exits by kind, the guest code locations with the most
//! exits, console bytes dropped, timings, peak RSS.

use std::fmt::Write as _;
use std::time::Duration;

use pvkit_vmm::vm::RunOutcome;

/// Peak resident set size of this process in KiB (`VmHWM` in `/proc/self/status`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// Extracts `VmHWM` (KiB) from `/proc/<pid>/status` text.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix("VmHWM:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// How many guest code locations the report lists.
pub const TOP_LOCATIONS: usize = 10;

/// The report printed by `pvkit run --stats`.
pub fn report(o: &RunOutcome, peak_rss_kib: Option<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "pvkit stats");
    let _ = writeln!(s, "  platform:          {}", o.platform.kind);
    let _ = writeln!(s, "  cpu:               {}", o.platform.cpu_model);
    let _ = match o.platform.tsc_khz {
        Some(k) => writeln!(s, "  tsc:               {k} kHz"),
        None => writeln!(s, "  tsc:               unknown"),
    };
    let _ = writeln!(s, "  guest abi:         {}", o.guest_abi);
    let _ = writeln!(s, "  hypercall regs:    {}", o.reg_access.name());
    let _ = writeln!(s, "  stop:              {}", o.stop);
    let _ = writeln!(s, "  exits by kind:");
    for (kind, n) in o.ledger.by_count() {
        let _ = writeln!(s, "    {n:>10}  {kind}");
    }
    for (name, n) in &o.ledger.notifications {
        let _ = writeln!(s, "    {n:>10}  notify {name} (in-kernel)");
    }
    let _ = writeln!(s, "  total exits:       {}", o.ledger.total);
    if let Some(all) = o.kvm_exits {
        let _ = writeln!(
            s,
            "  kvm exits:         {all} (every exit from guest mode, in-kernel ones included; \
             KVM_GET_STATS_FD)"
        );
    }
    if let Some(p) = &o.exit_profile {
        let _ = writeln!(s, "  top exit locations (guest rip):");
        for (rip, n) in p.top(TOP_LOCATIONS) {
            let _ = writeln!(s, "    {n:>10}  {rip:#x} {}", o.symbols.locate(rip));
        }
        if p.overflow > 0 {
            let _ = writeln!(
                s,
                "    {:>10}  at further addresses (more than {} distinct)",
                p.overflow,
                pvkit_vmm::exit::record::MAX_RIPS
            );
        }
        if p.unknown > 0 {
            let _ = writeln!(s, "    {:>10}  rip unreadable", p.unknown);
        }
    }
    if let Some(b) = o
        .balloon
        .filter(|b| b.inflate_calls + b.deflate_calls + b.refused_calls > 0)
    {
        let _ = writeln!(
            s,
            "  balloon:           {:.1} MiB ballooned (peak {:.1} MiB), {} inflate / {} deflate calls, {} refused",
            b.ballooned_mib(),
            (b.peak_ballooned_pages * 4096) as f64 / 1048576.0,
            b.inflate_calls,
            b.deflate_calls,
            b.refused_calls
        );
        let kib = |k: Option<u64>| k.map_or_else(|| "?".to_owned(), |k| format!("{k} KiB"));
        let _ = writeln!(
            s,
            "  balloon rss:       {} before the first inflate, {} after the last; {} KiB released",
            kib(b.rss_before_first_inflate_kib),
            kib(b.rss_after_last_inflate_kib),
            b.rss_released_kib
        );
        let mib = (b.pages_inflated * 4096) as f64 / 1048576.0;
        let secs = b.release_ns as f64 / 1e9;
        let _ = writeln!(
            s,
            "  balloon release:   {mib:.1} MiB in {:.3} ms of madvise ({:.0} MiB/s)",
            secs * 1e3,
            if secs > 0.0 { mib / secs } else { 0.0 }
        );
    }
    let _ = writeln!(s, "  console dropped:   {} bytes", o.console_dropped);
    let _ = writeln!(s, "  to guest entry:    {}", ms(o.timings.to_guest_entry));
    let _ = match o.timings.to_first_exit {
        Some(d) => writeln!(s, "  to first exit:     {}", ms(d)),
        None => writeln!(s, "  to first exit:     none"),
    };
    let _ = match o.timings.to_first_hypercall {
        Some(d) => writeln!(s, "  to first hypercall: {}", ms(d)),
        None => writeln!(s, "  to first hypercall: none made"),
    };
    let _ = writeln!(s, "  to stop:           {}", ms(o.timings.to_stop));
    let _ = match peak_rss_kib {
        Some(k) => writeln!(s, "  peak rss:          {k} KiB"),
        None => writeln!(s, "  peak rss:          unknown"),
    };
    if !o.phases.is_empty() {
        let _ = writeln!(s, "  bench phases:      {}", o.phases.len());
    }
    if !o.samples.is_empty() {
        let _ = writeln!(s, "  bench samples:     {}", o.samples.len());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm() {
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmHWM:\t   5120 kB\nVmRSS: 1 kB\n"),
            Some(5120)
        );
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
        assert!(peak_rss_kib().is_some());
    }
}
