//! A realistic sample [`Report`], for tests, examples and trying out the renderers without
//! running the benchmarks.
//!
//! The numbers are made up but shaped like a software-virtualization (`kvm_pvm`) run: an
//! emulated UART costs two exits per byte, ATA PIO one exit per 16-bit data word, an exit
//! about 10 µs; paravirtual devices need one exit (hypercall, doorbell) or none (ioeventfd,
//! polling, PV clock page) per request.

use std::collections::BTreeMap;

use crate::model::{Baseline, Case, Kind, LatencyMethod, Platform, Report};

/// Guest TSC frequency of the sample platform, in kHz.
const TSC_KHZ: u64 = 2_500_000;

/// A sample report: 35 cases over the console, block, clock and exit devices (one of them
/// failed), three host baselines, speedups not yet computed.
pub fn sample_report() -> Report {
    let mut cases = Vec::new();

    // Console: UART (2 exits per byte: THR write + LSR poll) against the PV variants.
    for (workload, bytes) in [("write-64B", 64u64), ("write-4KiB", 4096)] {
        let per_byte_ns = 9_800.0;
        cases.push(measured(
            Spec::new("console", "uart", Kind::Emulated, workload, bytes, "MB/s")
                .ns(per_byte_ns * bytes as f64)
                .exits(&[
                    ("port-out 0x3f8", bytes as f64),
                    ("port-in 0x3fd", bytes as f64),
                ]),
        ));
        let copy_ns = bytes as f64 * 0.5;
        cases.push(measured(
            Spec::new("console", "pv-hypercall", Kind::Pv, workload, bytes, "MB/s")
                .ns(28_000.0 + copy_ns)
                .exits(&[("hypercall CONSOLE_WRITE", 1.0)]),
        ));
        cases.push(measured(
            Spec::new("console", "pv-ring", Kind::Pv, workload, bytes, "MB/s")
                .ns(21_000.0 + copy_ns)
                .exits(&[("port-out 0x510 (doorbell)", 1.0)]),
        ));
        cases.push(measured(
            Spec::new("console", "pv-ioeventfd", Kind::Pv, workload, bytes, "MB/s")
                .ns(11_000.0 + copy_ns)
                .notifications(1.0),
        ));
        cases.push(
            measured(
                Spec::new("console", "pv-poll", Kind::Pv, workload, bytes, "MB/s")
                    .ns(4_000.0 + copy_ns),
            )
            .with_note("host polls the ring on a dedicated thread"),
        );
    }

    // Block: ATA PIO (one exit per data word, plus command and status registers) against PV.
    for (workload, bytes, unit) in [
        ("randread-4KiB", 4096u64, "IOPS"),
        ("randwrite-4KiB", 4096, "IOPS"),
        ("seqread-1MiB", 1 << 20, "MB/s"),
        ("seqwrite-1MiB", 1 << 20, "MB/s"),
    ] {
        let write = workload.contains("write");
        let sectors = bytes / 512;
        let commands = sectors.div_ceil(256);
        let data_words = (sectors * 256) as f64;
        let data_port = if write {
            "port-out 0x1f0"
        } else {
            "port-in 0x1f0"
        };
        let ata_exits = [
            (data_port, data_words),
            ("port-out 0x1f2..0x1f7", 7.0 * commands as f64),
            ("port-in 0x1f7", 2.0 * sectors as f64 + commands as f64),
        ];
        let ata_total: f64 = ata_exits.iter().map(|(_, n)| n).sum();
        cases.push(measured(
            Spec::new("block", "ata-pio", Kind::Emulated, workload, bytes, unit)
                .ops(if bytes > 4096 { 4 } else { 200 })
                .ns(ata_total * 9_700.0)
                .exits(&ata_exits),
        ));
        let io_ns = bytes as f64 * 0.35;
        cases.push(measured(
            Spec::new("block", "pv-hypercall", Kind::Pv, workload, bytes, unit)
                .ns(38_000.0 + io_ns)
                .exits(&[("hypercall BLOCK_SUBMIT", 1.0)]),
        ));
        cases.push(measured(
            Spec::new("block", "pv-ring", Kind::Pv, workload, bytes, unit)
                .ns(31_000.0 + io_ns)
                .exits(&[("port-out 0x520 (doorbell)", 1.0)]),
        ));
        cases.push(measured(
            Spec::new("block", "pv-ioeventfd", Kind::Pv, workload, bytes, unit)
                .ns(17_000.0 + io_ns)
                .notifications(1.0),
        ));
        let mut poll = measured(
            Spec::new("block", "pv-poll", Kind::Pv, workload, bytes, unit).ns(9_000.0 + io_ns),
        )
        .with_note("host polls the ring on a dedicated thread");
        if workload == "randwrite-4KiB" {
            poll.verified = false;
            poll.failure = Some("read-back mismatch at sector 8 (expected 0x5a, got 0x00)".into());
        }
        cases.push(poll);
    }

    // Clock: PIT latch + two counter reads against the PV clock page and kvmclock.
    cases.push(measured(
        Spec::new("clock", "pit", Kind::Emulated, "read", 0, "reads/s")
            .ops(10_000)
            .ns(29_500.0)
            .exits(&[("port-out 0x43", 1.0), ("port-in 0x40", 2.0)]),
    ));
    cases.push(measured(
        Spec::new("clock", "pvclock", Kind::Pv, "read", 0, "reads/s")
            .ops(1_000_000)
            .ns(38.0),
    ));
    cases.push(measured(
        Spec::new("clock", "kvmclock", Kind::Pv, "read", 0, "reads/s")
            .ops(1_000_000)
            .ns(44.0),
    ));

    // Exit: the bare cost of one round trip to the VMM.
    cases.push(measured(
        Spec::new("exit", "port-io", Kind::Emulated, "roundtrip", 0, "IOPS")
            .ops(100_000)
            .ns(9_600.0)
            .exits(&[("port-out 0x80", 1.0)]),
    ));
    cases.push(measured(
        Spec::new("exit", "pv-hypercall", Kind::Pv, "roundtrip", 0, "IOPS")
            .ops(100_000)
            .ns(8_100.0)
            .exits(&[("hypercall NOP", 1.0)]),
    ));

    Report {
        platform: Platform {
            kind: Platform::KIND_PVM.into(),
            hardware_virtualization: false,
            cpu_model: "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz".into(),
            tsc_khz: TSC_KHZ,
            host_kernel: "6.7.0-pvm".into(),
            pvkit_version: "0.1.0".into(),
            git_commit: "3f9c2ab".into(),
            abi_version: "1.0".into(),
        },
        cases,
        baselines: vec![
            Baseline {
                name: "host page-cache read of the image, 1 MiB".into(),
                value: 9_800.0,
                unit: "MB/s".into(),
            },
            Baseline {
                name: "host write(2) of 4 KiB to a pipe".into(),
                value: 1_450.0,
                unit: "ns".into(),
            },
            Baseline {
                name: "host clock_gettime(CLOCK_MONOTONIC)".into(),
                value: 21.0,
                unit: "ns".into(),
            },
        ],
        command: "pvkit bench --all --out results/".into(),
        started_at: "2026-11-26T18:33:35Z".into(),
        duration_s: 412.7,
    }
}

/// A minimal verified case with the given host time per op and everything else neutral
/// (1000 ops, no exits, 4 KiB per op, IOPS).
#[cfg(test)]
pub(crate) fn case(device: &str, variant: &str, kind: Kind, workload: &str, ns: f64) -> Case {
    measured(Spec::new(device, variant, kind, workload, 4096, "IOPS").ns(ns))
}

/// What [`measured`] derives a case from.
struct Spec<'a> {
    device: &'a str,
    variant: &'a str,
    kind: Kind,
    workload: &'a str,
    bytes_per_op: u64,
    unit: &'a str,
    ops: u64,
    ns: f64,
    exits: Vec<(&'a str, f64)>,
    notifications: f64,
}

impl<'a> Spec<'a> {
    fn new(
        device: &'a str,
        variant: &'a str,
        kind: Kind,
        workload: &'a str,
        bytes_per_op: u64,
        unit: &'a str,
    ) -> Self {
        Spec {
            device,
            variant,
            kind,
            workload,
            bytes_per_op,
            unit,
            ops: 1000,
            ns: 1000.0,
            exits: Vec::new(),
            notifications: 0.0,
        }
    }
    fn ops(mut self, ops: u64) -> Self {
        self.ops = ops;
        self
    }
    fn ns(mut self, ns: f64) -> Self {
        self.ns = ns;
        self
    }
    fn exits(mut self, exits: &[(&'a str, f64)]) -> Self {
        self.exits = exits.to_vec();
        self
    }
    fn notifications(mut self, n: f64) -> Self {
        self.notifications = n;
        self
    }
}

/// Builds a case from a spec, deriving throughput and guest cycles from the host time.
fn measured(spec: Spec<'_>) -> Case {
    let throughput = match spec.unit {
        "MB/s" => spec.bytes_per_op as f64 / spec.ns * 1e3,
        _ => 1e9 / spec.ns,
    };
    let cycles_per_ns = TSC_KHZ as f64 / 1e6;
    let exits_by_kind: BTreeMap<String, f64> = spec
        .exits
        .iter()
        .map(|(name, n)| ((*name).to_string(), *n))
        .collect();
    Case {
        device: spec.device.into(),
        variant: spec.variant.into(),
        kind: spec.kind,
        workload: spec.workload.into(),
        ops: spec.ops,
        bytes: spec.ops * spec.bytes_per_op,
        userspace_exits_per_op: exits_by_kind.values().fold(0.0, |a, b| a + b),
        exits_by_kind,
        in_kernel_notifications_per_op: spec.notifications,
        kernel_exits_per_op: BTreeMap::new(),
        guest_cycles_per_op: (spec.ns * cycles_per_ns * 0.97).round(),
        guest_cycles_per_op_median: (spec.ns * cycles_per_ns * 0.93).round(),
        guest_cycles_per_op_p99: (spec.ns * cycles_per_ns * 1.7).round(),
        ns_per_op: spec.ns,
        ns_per_op_p50: Some(spec.ns * 0.95),
        ns_per_op_p99: Some(spec.ns * 1.8),
        latency_method: Some(LatencyMethod::SeparatePass),
        latency_samples: spec.ops.min(64),
        throughput,
        throughput_unit: spec.unit.into(),
        verified: true,
        failure: None,
        speedup: None,
        notes: Vec::new(),
    }
}

trait WithNote {
    fn with_note(self, note: &str) -> Self;
}

impl WithNote for Case {
    fn with_note(mut self, note: &str) -> Self {
        self.notes.push(note.into());
        self
    }
}
