//! Markdown rendering of a [`Report`]: header, one table per device, host baselines and
//! per-group "exits per op by kind" tables.
//!
//! A failed case ([`Case::is_failed`]) shows `FAILED` in place of every measured number.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::model::{Case, Kind, LatencyMethod, Report};
use crate::numfmt;

/// Errors of the Markdown module.
#[derive(Debug, thiserror::Error)]
pub enum MarkdownError {
    /// Writing the Markdown file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a failed case shows in place of each measured number.
const FAILED: &str = "FAILED";

/// Renders the whole report as GitHub-flavoured Markdown.
pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = render_into(report, &mut out);
    out
}

/// Renders the report with [`render_markdown`] and writes it to `path`.
pub fn write_markdown(report: &Report, path: impl AsRef<Path>) -> Result<(), MarkdownError> {
    let path = path.as_ref();
    std::fs::write(path, render_markdown(report)).map_err(|source| MarkdownError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn render_into(report: &Report, out: &mut String) -> fmt::Result {
    header(report, out)?;
    for device in report.devices() {
        device_table(report, device, out)?;
    }
    baselines(report, out)?;
    exits_by_kind(report, out)
}

fn header(report: &Report, out: &mut String) -> fmt::Result {
    let p = &report.platform;
    writeln!(out, "# pvkit benchmark results")?;
    writeln!(out)?;
    let platform_note = if p.is_software_virtualization() {
        "(software virtualization: guest ring 0 is interpreted; exit counts are the primary metric)"
    } else {
        "(hardware KVM)"
    };
    writeln!(out, "- **Platform:** {} {platform_note}", inline(&p.kind))?;
    writeln!(
        out,
        "- **Hardware virtualization:** {}",
        if p.hardware_virtualization {
            "yes"
        } else {
            "no"
        }
    )?;
    writeln!(out, "- **CPU:** {}", inline(&p.cpu_model))?;
    writeln!(
        out,
        "- **TSC frequency:** {} kHz ({} GHz)",
        numfmt::count(p.tsc_khz),
        numfmt::num(p.tsc_khz as f64 / 1e6)
    )?;
    writeln!(out, "- **Host kernel:** {}", inline(&p.host_kernel))?;
    writeln!(
        out,
        "- **pvkit:** {} (commit {})",
        inline(&p.pvkit_version),
        code(&p.git_commit)
    )?;
    writeln!(out, "- **ABI version:** {}", inline(&p.abi_version))?;
    writeln!(out, "- **Command:** {}", code(&report.command))?;
    writeln!(
        out,
        "- **Date:** {} (run took {} s)",
        inline(&report.started_at),
        numfmt::num(report.duration_s)
    )?;
    writeln!(out, "- **Method:** {METHOD}")?;
    writeln!(out)
}

/// How the numbers of the tables were taken (the header's method line).
pub const METHOD: &str = "host ns/op, throughput and guest cycles/op come from each case's \
    timed loop, which reads no clock per operation (one TSC read before and one after it); \
    latency p50 / p99 come from a separate latency pass of the same operations outside the \
    timed loop (one TSC read per operation, or per batch for rings, the null port and \
    clock reads in ring 3), unless the cell says otherwise.";

/// The latency percentiles in µs (`—` when unknown), marked when they do not come from a
/// separate latency pass.
fn latency_cell(case: &Case) -> String {
    let mark = match case.latency_method {
        Some(LatencyMethod::SeparatePass) | None => "",
        Some(LatencyMethod::TimedLoop) => " (in loop)",
        Some(LatencyMethod::PhaseMean) => " (mean)",
        Some(LatencyMethod::HostClock) => " (host clock)",
    };
    match (case.ns_per_op_p50, case.ns_per_op_p99) {
        (Some(p50), Some(p99)) => format!(
            "{} / {}{mark}",
            numfmt::num(p50 / 1000.0),
            numfmt::num(p99 / 1000.0)
        ),
        _ => "—".into(),
    }
}

fn device_table(report: &Report, device: &str, out: &mut String) -> fmt::Result {
    writeln!(out, "## {}", inline(device))?;
    writeln!(out)?;
    writeln!(
        out,
        "| variant | kind | workload | ops | exits/op (userspace) | in-kernel notifications/op \
         | guest cycles/op (timed loop) | latency µs (p50 / p99, latency pass) | host ns/op \
         | throughput \
         | speedup vs emulated | status |"
    )?;
    writeln!(out, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")?;
    let groups = report.workload_groups(device);
    for case in groups.iter().flat_map(|g| g.cases.iter()) {
        let cells: [String; 12] = if case.is_failed() {
            let reason = case.failure_reason().unwrap_or("not verified");
            [
                cell(&case.variant),
                case.kind.to_string(),
                cell(&case.workload),
                FAILED.into(),
                FAILED.into(),
                FAILED.into(),
                FAILED.into(),
                FAILED.into(),
                FAILED.into(),
                FAILED.into(),
                FAILED.into(),
                format!("FAILED: {}", cell(reason)),
            ]
        } else {
            [
                cell(&case.variant),
                case.kind.to_string(),
                cell(&case.workload),
                numfmt::count(case.ops),
                numfmt::num(case.userspace_exits_per_op),
                numfmt::num(case.in_kernel_notifications_per_op),
                numfmt::num(case.guest_cycles_per_op),
                latency_cell(case),
                numfmt::num(case.ns_per_op),
                format!(
                    "{} {}",
                    numfmt::num(case.throughput),
                    cell(&case.throughput_unit)
                ),
                speedup_cell(case),
                "ok".into(),
            ]
        };
        writeln!(out, "| {} |", cells.join(" | "))?;
    }
    writeln!(out)?;

    let noted: Vec<&Case> = groups
        .iter()
        .flat_map(|g| g.cases.iter().copied())
        .filter(|c| !c.notes.is_empty())
        .collect();
    if !noted.is_empty() {
        writeln!(out, "Notes:")?;
        writeln!(out)?;
        for case in noted {
            for note in &case.notes {
                writeln!(
                    out,
                    "- {} / {}: {}",
                    inline(&case.variant),
                    inline(&case.workload),
                    inline(note)
                )?;
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

fn speedup_cell(case: &Case) -> String {
    match (case.kind, case.speedup) {
        (_, Some(s)) => numfmt::speedup(s),
        (Kind::Emulated, None) => "baseline".into(),
        (Kind::Pv, None) => "—".into(),
    }
}

fn baselines(report: &Report, out: &mut String) -> fmt::Result {
    if report.baselines.is_empty() {
        return Ok(());
    }
    writeln!(out, "## Host baselines")?;
    writeln!(out)?;
    for b in &report.baselines {
        writeln!(
            out,
            "- {}: {} {}",
            inline(&b.name),
            numfmt::num(b.value),
            inline(&b.unit)
        )?;
    }
    writeln!(out)
}

fn exits_by_kind(report: &Report, out: &mut String) -> fmt::Result {
    let groups: Vec<_> = report
        .devices()
        .into_iter()
        .flat_map(|d| report.workload_groups(d))
        .filter(|g| {
            g.cases.iter().any(|c| {
                !c.exits_by_kind.is_empty()
                    || c.in_kernel_notifications_per_op != 0.0
                    || !c.kernel_exits_per_op.is_empty()
            })
        })
        .collect();
    if groups.is_empty() {
        return Ok(());
    }
    writeln!(out, "## Exits per op by kind")?;
    writeln!(out)?;
    writeln!(
        out,
        "Userspace exits per operation, by exit kind, for each variant (— = none). Rows \
         in italics are not userspace exits: notifications KVM delivered to a host thread, \
         and *KVM* rows, KVM's own per-vCPU counters per operation where the platform \
         offers them (`exits` counts every exit, those KVM handled itself included)."
    )?;
    writeln!(out)?;
    for group in groups {
        writeln!(
            out,
            "### {} · {}",
            inline(group.device),
            inline(group.workload)
        )?;
        writeln!(out)?;
        let mut kinds: Vec<&str> = Vec::new();
        for case in &group.cases {
            for kind in case.exits_by_kind.keys() {
                if !kinds.contains(&kind.as_str()) {
                    kinds.push(kind);
                }
            }
        }
        kinds.sort_unstable();

        let variants: Vec<String> = group.cases.iter().map(|c| cell(&c.variant)).collect();
        writeln!(out, "| exit kind | {} |", variants.join(" | "))?;
        writeln!(out, "|---|{}", "--:|".repeat(variants.len()))?;
        // `zero`: what a zero count shows ("—" in the per-kind rows, "0" in the total).
        let row = |out: &mut String,
                   label: &str,
                   zero: &str,
                   value: &dyn Fn(&Case) -> f64|
         -> fmt::Result {
            let cells: Vec<String> = group
                .cases
                .iter()
                .map(|c| {
                    if c.is_failed() {
                        FAILED.to_string()
                    } else {
                        let v = value(c);
                        if v == 0.0 {
                            zero.to_string()
                        } else {
                            numfmt::num(v)
                        }
                    }
                })
                .collect();
            writeln!(out, "| {label} | {} |", cells.join(" | "))
        };
        for kind in &kinds {
            row(out, &cell(kind), "—", &|c: &Case| {
                c.exits_by_kind.get(*kind).copied().unwrap_or(0.0)
            })?;
        }
        row(out, "**total userspace exits**", "0", &|c: &Case| {
            c.userspace_exits_per_op
        })?;
        row(out, "*in-kernel notifications*", "0", &|c: &Case| {
            c.in_kernel_notifications_per_op
        })?;
        // KVM's own counters (all exits, including those handled in the kernel), where
        // the platform offers them.
        let mut counters: Vec<&str> = Vec::new();
        for case in &group.cases {
            for name in case.kernel_exits_per_op.keys() {
                if !counters.contains(&name.as_str()) {
                    counters.push(name);
                }
            }
        }
        for name in &counters {
            row(out, &format!("*KVM `{}`*", cell(name)), "0", &|c: &Case| {
                c.kernel_exits_per_op.get(*name).copied().unwrap_or(0.0)
            })?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Text for a table cell: no line breaks, `|` escaped.
fn cell(s: &str) -> String {
    inline(s).replace('|', "\\|")
}

/// Text on one line.
fn inline(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Inline code, with a fence long enough for any backticks in `s`.
fn code(s: &str) -> String {
    let s = inline(s);
    let mut longest = 0;
    let mut run = 0;
    for ch in s.chars() {
        if ch == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest + 1);
    let pad = if longest > 0 { " " } else { "" };
    format!("{fence}{pad}{s}{pad}{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Platform;
    use crate::sample::sample_report;

    /// The table row of a case, split into trimmed cells.
    fn row_cells<'a>(md: &'a str, variant: &str, workload: &str) -> Vec<&'a str> {
        md.lines()
            .find(|l| l.starts_with(&format!("| {variant} | ")) && l.contains(workload))
            .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
            .unwrap_or_default()
    }

    #[test]
    fn failed_case_shows_failed_and_no_number() {
        let mut report = sample_report();
        report.compute_speedups();
        let md = render_markdown(&report);
        let cells = row_cells(&md, "pv-poll", "randwrite-4KiB");
        assert_eq!(cells.len(), 12, "{cells:?}");
        assert_eq!(cells[0], "pv-poll");
        assert_eq!(cells[2], "randwrite-4KiB");
        for c in &cells[3..11] {
            assert_eq!(*c, "FAILED", "{cells:?}");
        }
        assert!(
            cells[11].starts_with("FAILED: read-back mismatch"),
            "{cells:?}"
        );
        // No measured number anywhere in the measured columns.
        assert!(cells[3..11]
            .iter()
            .all(|c| !c.chars().any(|ch| ch.is_ascii_digit())));
        // The failed case's numbers do not leak into the exits-by-kind table either.
        let section = md.split("### block · randwrite-4KiB").nth(1).unwrap();
        let header = section
            .lines()
            .find(|l| l.starts_with("| exit kind"))
            .unwrap();
        let col = header
            .trim_matches('|')
            .split(" | ")
            .position(|c| c.trim() == "pv-poll")
            .unwrap();
        let rows = section
            .lines()
            .skip_while(|l| !l.starts_with("| exit kind"))
            .skip(2)
            .take_while(|l| l.starts_with('|'));
        for line in rows {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells[col], "FAILED", "{line}");
        }
    }

    #[test]
    fn unverified_without_reason_says_not_verified() {
        let mut report = sample_report();
        let case = &mut report.cases[1];
        case.verified = false;
        let (variant, workload) = (case.variant.clone(), case.workload.clone());
        let md = render_markdown(&report);
        let cells = row_cells(&md, &variant, &workload);
        assert_eq!(cells[11], "FAILED: not verified");
    }

    #[test]
    fn ok_rows_are_formatted_readably() {
        let mut report = sample_report();
        report.compute_speedups();
        let md = render_markdown(&report);
        let uart = row_cells(&md, "uart", "write-4KiB");
        assert_eq!(uart[1], "emulated");
        assert_eq!(uart[4], "8,192");
        assert!(uart[7].contains(" / "), "latency p50 / p99: {uart:?}");
        assert_eq!(uart[10], "baseline");
        assert_eq!(uart[11], "ok");
        let hc = row_cells(&md, "pv-hypercall", "write-4KiB");
        assert_eq!(hc[1], "pv");
        assert_eq!(hc[4], "1");
        assert!(hc[10].ends_with('×') && hc[10].contains(','), "{hc:?}");
        let poll = row_cells(&md, "pv-poll", "write-4KiB");
        assert_eq!(poll[4], "0");
    }

    #[test]
    fn header_names_the_platform() {
        let mut report = sample_report();
        let md = render_markdown(&report);
        assert!(md.contains("kvm_pvm (software virtualization: guest ring 0 is interpreted"));
        assert!(md.contains("Intel(R) Xeon(R) Platinum 8375C"));
        assert!(md.contains("2,500,000 kHz"));
        assert!(md.contains("0.1.0 (commit `3f9c2ab`)"));
        assert!(md.contains("`pvkit bench --all --out results/`"));
        assert!(md.contains("2026-11-26T18:33:35Z"));
        assert!(md.contains("## Host baselines"));
        assert!(md.contains("- host page-cache read of the image, 1 MiB: 9,800 MB/s"));
        assert!(md.contains("### console · write-4KiB"));
        assert!(md.contains("| port-out 0x3f8 | 4,096 | — | — | — | — |"));
        assert!(md.contains("| **total userspace exits** | 8,192 | 1 | 1 | 0 | 0 |"));
        for device in ["## console", "## block", "## clock", "## exit"] {
            assert!(md.contains(device), "{device}");
        }
        report.platform.kind = Platform::KIND_INTEL.into();
        assert!(render_markdown(&report).contains("kvm_intel (hardware KVM)"));
    }

    #[test]
    fn method_and_latency_source_are_labelled() {
        let mut report = sample_report();
        report.cases[0].guest_cycles_per_op = 123_456.0;
        report.cases[1].latency_method = Some(LatencyMethod::TimedLoop);
        report.cases[2].latency_method = Some(LatencyMethod::PhaseMean);
        let md = render_markdown(&report);
        assert!(md.contains(&format!("- **Method:** {METHOD}")));
        assert!(md.contains("guest cycles/op (timed loop) | latency µs (p50 / p99, latency pass)"));
        let row = |c: &Case| row_cells(&md, &c.variant, &c.workload);
        let first = row(&report.cases[0]);
        assert_eq!(first[6], "123,456", "{first:?}");
        assert!(
            !first[7].contains('('),
            "a separate pass is the default: {first:?}"
        );
        assert!(row(&report.cases[1])[7].ends_with(" (in loop)"));
        assert!(row(&report.cases[2])[7].ends_with(" (mean)"));
    }

    #[test]
    fn kvm_counters_get_their_own_rows_per_variant() {
        let mut report = sample_report();
        report.cases[0]
            .kernel_exits_per_op
            .insert("irq_injections".into(), 1.0);
        report.cases[0]
            .kernel_exits_per_op
            .insert("exits".into(), 2.5);
        let md = render_markdown(&report);
        let row = md
            .lines()
            .find(|l| l.starts_with("| *KVM `exits`*"))
            .unwrap_or_else(|| panic!("no KVM exits row: {md}"));
        assert!(row.contains("2.5"), "{row}");
        assert!(md.contains("| *KVM `irq_injections`* |"), "{md}");
        // JSON carries them too, and reads them back.
        let json = crate::to_json_string(&report).unwrap();
        let back = crate::from_json_str(&json).unwrap();
        assert_eq!(back.cases[0].kernel_exits_per_op["exits"], 2.5);
    }

    #[test]
    fn cells_are_escaped() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(code("x `y`"), "`` x `y` ``");
    }
}
