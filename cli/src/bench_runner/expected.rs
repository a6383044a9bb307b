//! The cases each device should produce, and the ones a guest skipped.
//!
//! The guest skips a variant whose host feature bit is missing or whose device does not
//! answer (no markers, no result) and says so on its console:
//! `bench <device>/<variant>/<workload>: skipped (<why>)`. Such cases are *unavailable*, not
//! failed: they are listed under the report (with the guest's reason) and do not fail the
//! run. A case that is neither measured nor skipped is listed as "not run by the guest".

use pvkit_abi::bench::{CaseId, Device, Variant, Workload};

use super::names::{self, BenchDevice};

/// Every case `device` is designed to run, in the guest's order.
pub fn expected(device: BenchDevice) -> Vec<CaseId> {
    let (variants, workloads): (&[Variant], &[Workload]) = match device {
        BenchDevice::Console => (
            &[
                Variant::Uart,
                Variant::PvHypercall,
                Variant::PvRing,
                Variant::PvEventfd,
                Variant::PvPoll,
            ],
            &[Workload::Write64, Workload::Write4K],
        ),
        BenchDevice::Block => (
            &[
                Variant::AtaPio,
                Variant::PvHypercall,
                Variant::PvRing,
                Variant::PvEventfd,
                Variant::PvPoll,
            ],
            &[
                Workload::RandRead4K,
                Workload::RandWrite4K,
                Workload::SeqRead1M,
                Workload::SeqWrite1M,
            ],
        ),
        BenchDevice::Clock => (
            &[Variant::Pit, Variant::PvClock, Variant::KvmClock],
            &[Workload::ClockRead],
        ),
        BenchDevice::Exit => (&[Variant::PortOut], &[Workload::RoundTrip]),
        BenchDevice::Net => (
            &[
                Variant::Ne2000,
                Variant::PvHypercall,
                Variant::PvRing,
                Variant::PvEventfd,
                Variant::PvPoll,
                Variant::PvIrq,
            ],
            &[
                Workload::Tx64,
                Workload::Tx1500,
                Workload::Rx64,
                Workload::Rx1500,
                Workload::UdpEcho64,
                Workload::HostEcho64,
            ],
        ),
        BenchDevice::Ipi => (
            &[Variant::X2Apic, Variant::PvHypercall],
            &[Workload::PingPong, Workload::OneToAll],
        ),
        BenchDevice::Smp => (
            &[Variant::InitSipi, Variant::PvHypercall],
            &[Workload::ApBringUp],
        ),
        BenchDevice::Balloon => (
            &[Variant::NoBalloon, Variant::PvHypercall],
            &[Workload::Release],
        ),
        BenchDevice::Irq => (
            &[
                Variant::X2apicEoi,
                Variant::PvEoi,
                Variant::IoapicEoi,
                Variant::PicEoi,
            ],
            &[Workload::Interrupt],
        ),
        BenchDevice::Spinlock => (
            &[Variant::TicketSpin, Variant::PvSpinlock],
            &[Workload::Contend2, Workload::Contend4, Workload::Contend8],
        ),
    };
    let device = device.abi();
    variants
        .iter()
        .flat_map(|&variant| {
            workloads.iter().map(move |&workload| CaseId {
                device,
                variant,
                workload,
            })
        })
        // pv-irq transmits as pv-ring does: only its receive workloads are cases.
        .filter(|c| {
            !(c.variant == Variant::PvIrq
                && matches!(c.workload, Workload::Tx64 | Workload::Tx1500))
        })
        .collect()
}

/// The guest's names (its log lines) for a case's parts.
fn guest_variant(s: &str) -> Option<Variant> {
    Some(match s {
        "uart" => Variant::Uart,
        "pv-hypercall" => Variant::PvHypercall,
        "pv-ring" => Variant::PvRing,
        "pv-ioeventfd" => Variant::PvEventfd,
        "pv-poll" => Variant::PvPoll,
        "ata-pio" => Variant::AtaPio,
        "pit" => Variant::Pit,
        "pv-clock" | "pvclock" => Variant::PvClock,
        "kvmclock" => Variant::KvmClock,
        "port-out" | "null-port" => Variant::PortOut,
        "ne2000" => Variant::Ne2000,
        "pv-irq" => Variant::PvIrq,
        "x2apic" => Variant::X2Apic,
        "init-sipi" => Variant::InitSipi,
        "none" => Variant::NoBalloon,
        "x2apic-eoi" => Variant::X2apicEoi,
        "pv-eoi" => Variant::PvEoi,
        "ioapic-eoi" => Variant::IoapicEoi,
        "pic-eoi" => Variant::PicEoi,
        _ => return None,
    })
}

fn guest_workload(s: &str) -> Option<Workload> {
    Some(match s {
        "write64" | "write-64B" => Workload::Write64,
        "write4k" | "write-4KiB" => Workload::Write4K,
        "randread4k" | "randread-4KiB" => Workload::RandRead4K,
        "randwrite4k" | "randwrite-4KiB" => Workload::RandWrite4K,
        "seqread1m" | "seqread-1MiB" => Workload::SeqRead1M,
        "seqwrite1m" | "seqwrite-1MiB" => Workload::SeqWrite1M,
        "read" => Workload::ClockRead,
        "roundtrip" | "round-trip" => Workload::RoundTrip,
        "tx64" | "tx-64B" => Workload::Tx64,
        "tx1500" | "tx-1500B" => Workload::Tx1500,
        "rx64" | "rx-64B" => Workload::Rx64,
        "rx1500" | "rx-1500B" => Workload::Rx1500,
        "udpecho64" | "udp-echo-64B" => Workload::UdpEcho64,
        "hostecho64" | "udp-echo-host-64B" => Workload::HostEcho64,
        "pingpong" | "ping-pong" => Workload::PingPong,
        "one-to-all" => Workload::OneToAll,
        "ap-bringup" => Workload::ApBringUp,
        "release" | "release-MiB" => Workload::Release,
        "interrupt" => Workload::Interrupt,
        _ => return None,
    })
}

fn guest_device(s: &str) -> Option<Device> {
    Some(match s {
        "console" => Device::Console,
        "block" => Device::Block,
        "clock" => Device::Clock,
        "exit" => Device::Exit,
        "net" => Device::Net,
        "ipi" => Device::Ipi,
        "smp" => Device::Smp,
        "balloon" => Device::Balloon,
        "irq" => Device::Irq,
        _ => return None,
    })
}

/// The cases the guest said it skipped, with its reasons, from its console output.
/// Lines that do not parse are ignored (console output is guest data: never trusted beyond
/// a reason string, which is cut to 200 characters).
pub fn skipped(console: &[u8]) -> Vec<(CaseId, String)> {
    guest_lines(console, ": skipped")
        .into_iter()
        .map(|(case, why)| {
            let why = why
                .strip_prefix('(')
                .and_then(|w| w.strip_suffix(')'))
                .map(str::to_owned)
                .unwrap_or(why);
            (case, why)
        })
        .collect()
}

/// The guest's lines `bench <device>/<variant>/<workload><marker> <text>`, as (case, text
/// trimmed and cut to 200 characters).
pub fn guest_lines(console: &[u8], marker: &str) -> Vec<(CaseId, String)> {
    let text = String::from_utf8_lossy(console);
    text.lines()
        .filter_map(|line| {
            // An SMP guest's lines carry their CPU's prefix (`[cpu0] `).
            let line = match line.strip_prefix("[cpu") {
                Some(rest) => rest.split_once("] ").map_or(line, |(_, l)| l),
                None => line,
            };
            let rest = line.strip_prefix("bench ")?;
            let (name, why) = rest.split_once(marker)?;
            let mut parts = name.split('/');
            let case = CaseId {
                device: guest_device(parts.next()?)?,
                variant: guest_variant(parts.next()?)?,
                workload: guest_workload(parts.next()?)?,
            };
            Some((case, why.trim().chars().take(200).collect()))
        })
        .collect()
}

/// The reason of an unavailable case the guest neither ran nor skipped.
pub const NOT_RUN: &str = "not run by the guest";

/// A case the run should have measured but did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// The case.
    pub case: CaseId,
    /// The guest's reason, or "not run by the guest".
    pub reason: String,
}

/// The cases of `device` missing from `measured`, with reasons from `skips`.
pub fn unavailable(
    device: BenchDevice,
    measured: &[CaseId],
    skips: &[(CaseId, String)],
) -> Vec<Unavailable> {
    expected(device)
        .into_iter()
        .filter(|c| !measured.contains(c))
        .map(|case| Unavailable {
            case,
            reason: skips.iter().find(|(c, _)| *c == case).map_or_else(
                || NOT_RUN.to_owned(),
                |(_, why)| format!("skipped by the guest ({why})"),
            ),
        })
        .collect()
}

/// The list grouped by device, variant and reason, in first-appearance order:
/// `"block/ata-pio/{randread-4KiB,seqread-1MiB}: skipped by the guest (no ATA disk)"`.
pub fn grouped(list: &[Unavailable]) -> Vec<String> {
    let mut groups: Vec<(Device, Variant, &str, Vec<Workload>)> = Vec::new();
    for u in list {
        let c = u.case;
        match groups
            .iter_mut()
            .find(|g| g.0 == c.device && g.1 == c.variant && g.2 == u.reason)
        {
            Some(g) => g.3.push(c.workload),
            None => groups.push((c.device, c.variant, &u.reason, vec![c.workload])),
        }
    }
    groups
        .into_iter()
        .map(|(d, v, why, ws)| {
            let ws: Vec<&str> = ws.into_iter().map(names::workload_name).collect();
            let ws = match ws.as_slice() {
                [one] => (*one).to_owned(),
                many => format!("{{{}}}", many.join(",")),
            };
            format!(
                "{}/{}/{ws}: {why}",
                names::device_name(d),
                names::variant_name(v)
            )
        })
        .collect()
}

/// A Markdown section listing unavailable cases, appended under the report's tables.
pub fn markdown(list: &[Unavailable]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Unavailable cases\n\nNot measured in this run (not failures: the host or guest \
         does not offer them):\n\n",
    );
    for line in grouped(list) {
        s.push_str(&format!("- {line}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_sizes_match_the_progress_estimate() {
        for d in BenchDevice::ALL {
            let boots = d.selections().len() as u64;
            assert_eq!(expected(d).len() as u64, d.expected_cases() * boots, "{d}");
            assert!(expected(d).iter().all(|c| c.device == d.abi()));
        }
    }

    #[test]
    fn skip_lines_parse() {
        let console = b"abcabc\nbench console/pv-poll/write4k: skipped (host lacks RING_POLL)\n\
bench block/ata-pio/seqread1m: skipped (no ATA device)\nbench nonsense: skipped (x)\n\
bench clock/pv-clock/read: 10 ops, verified\n";
        let s = skipped(console);
        assert_eq!(s.len(), 2);
        assert_eq!(names::case_label(s[0].0), "console/pv-poll/write-4KiB");
        assert_eq!(s[0].1, "host lacks RING_POLL");
        let measured: Vec<CaseId> = expected(BenchDevice::Console)
            .into_iter()
            .filter(|c| c.variant != Variant::PvPoll)
            .collect();
        let u = unavailable(BenchDevice::Console, &measured, &s);
        assert_eq!(u.len(), 2);
        assert_eq!(u[1].reason, "skipped by the guest (host lacks RING_POLL)");
        assert_eq!(u[0].reason, "not run by the guest");
        assert!(markdown(&u).contains("- console/pv-poll/write-64B: not run"));
        let all = unavailable(BenchDevice::Console, &[], &[]);
        let g = grouped(&all);
        assert_eq!(g.len(), 5);
        assert_eq!(
            g[0],
            "console/uart/{write-64B,write-4KiB}: not run by the guest"
        );
        let s = skipped(b"bench exit/port-out/roundtrip: skipped (lacks Features(A | B))\n");
        assert_eq!(s[0].1, "lacks Features(A | B)");
        let f = guest_lines(
            b"bench block/pv-ring/seqread1m: set-up failed: EOPNOTSUPP\n",
            ": set-up failed:",
        );
        assert_eq!(f[0].1, "EOPNOTSUPP");
        assert_eq!(f[0].0.variant, Variant::PvRing);
        assert_eq!(markdown(&[]), "");
    }
}
