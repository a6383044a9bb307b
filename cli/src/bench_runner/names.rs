//! The names a report uses for the ABI's benchmark cases, and what each case's throughput is
//! measured in. One place maps [`pvkit_abi::bench`] numbers to the `pvkit-report`
//! conventions (`"uart"`, `"pv-hypercall"`, `"write-4KiB"`, …).

use std::fmt;

use pvkit_abi::bench::{CaseId, Device, Variant, Workload};
use pvkit_abi::ports;
use pvkit_report::Kind;

use pvkit_vmm::exit::ledger::ExitKind;

/// A device `pvkit bench` boots a guest for (one boot per device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BenchDevice {
    /// Console writes: UART against the PV console variants.
    Console,
    /// Block I/O: ATA PIO against the PV block variants.
    Block,
    /// Time reads: PIT against the PV clock page and kvmclock.
    Clock,
    /// Bare exit round trips (calibration).
    Exit,
    /// Network frames: the NE2000 against the PV NIC variants (one boot with both NICs on
    /// loopback backends).
    Net,
    /// IPIs: x2APIC ICR against the PV `SendIpi` (a boot with [`IPI_VCPUS`] vCPUs).
    Ipi,
    /// AP bring-up: INIT-SIPI-SIPI against `VcpuUp` (one boot per variant, each with
    /// [`IPI_VCPUS`] vCPUs).
    Smp,
    /// Freed memory: the unmodified guest against the balloon (one boot per variant, each
    /// with [`BALLOON_MEM_MIB`] of RAM; the host RSS at the end of the phase is noted).
    Balloon,
    /// Interrupt delivery and acknowledge: emulated EOIs against KVM's PV EOI.
    Irq,
    /// One spinlock contended by 2, 4 and 8 vCPUs: plain ticket lock against the PV one
    /// (one boot per case, [`super::spinlock`]).
    Spinlock,
}

/// Guest RAM of the balloon boots: room for the 256 MiB the guest touches and frees.
pub const BALLOON_MEM_MIB: u64 = 512;

/// vCPUs of the IPI and SMP boots (IPI: CPU 0 sends; CPU 1 answers the ping-pong; 1–3
/// take the one-to-all. SMP: CPU 0 starts 1–3).
pub const IPI_VCPUS: u32 = 4;

impl BenchDevice {
    /// Every device, in run order.
    pub const ALL: [BenchDevice; 10] = [
        BenchDevice::Console,
        BenchDevice::Block,
        BenchDevice::Clock,
        BenchDevice::Exit,
        BenchDevice::Net,
        BenchDevice::Ipi,
        BenchDevice::Smp,
        BenchDevice::Balloon,
        BenchDevice::Irq,
        BenchDevice::Spinlock,
    ];

    /// The name on the guest command line (`bench=<name>`) and in reports.
    pub fn name(self) -> &'static str {
        device_name(self.abi())
    }

    /// The ABI device.
    pub fn abi(self) -> Device {
        match self {
            BenchDevice::Console => Device::Console,
            BenchDevice::Block => Device::Block,
            BenchDevice::Clock => Device::Clock,
            BenchDevice::Exit => Device::Exit,
            BenchDevice::Net => Device::Net,
            BenchDevice::Ipi => Device::Ipi,
            BenchDevice::Smp => Device::Smp,
            BenchDevice::Balloon => Device::Balloon,
            BenchDevice::Irq => Device::Irq,
            BenchDevice::Spinlock => Device::Spinlock,
        }
    }

    /// vCPUs of this device's boots (the spinlock boots set their own, [`super::spinlock`]).
    pub fn vcpus(self) -> u32 {
        match self {
            BenchDevice::Ipi | BenchDevice::Smp => IPI_VCPUS,
            _ => 1,
        }
    }

    /// What each of this device's boots selects (`bench=<selection>`): the device, or for
    /// SMP (whose APs start once per boot) one boot per variant.
    pub fn selections(self) -> Vec<String> {
        match self {
            BenchDevice::Smp => vec!["smp/init-sipi".into(), "smp/pv-hypercall".into()],
            BenchDevice::Balloon => vec!["balloon/none".into(), "balloon/pv-hypercall".into()],
            d => vec![d.name().into()],
        }
    }

    /// Whether this device's boot needs a disk image.
    pub fn needs_disk(self) -> bool {
        self == BenchDevice::Block
    }

    /// Whether this device's boot needs the NICs (both, on loopback backends).
    pub fn needs_nics(self) -> bool {
        self == BenchDevice::Net
    }

    /// Whether this device's boot needs the in-kernel irqchip and the interrupt test port
    /// ([`pvkit_vmm::vm::VmConfig::irq_test`]).
    pub fn needs_irq_test(self) -> bool {
        self == BenchDevice::Irq
    }

    /// How many cases the guest is expected to run for this device (for the progress bar
    /// only; the report lists whatever the guest actually ran).
    pub fn expected_cases(self) -> u64 {
        match self {
            // uart, pv-hypercall, pv-ring, pv-ioeventfd, pv-poll × 64 B, 4 KiB.
            BenchDevice::Console => 10,
            // ata-pio + 4 PV variants × 4 workloads.
            BenchDevice::Block => 20,
            // pit, pvclock, kvmclock.
            BenchDevice::Clock => 3,
            // null port.
            BenchDevice::Exit => 1,
            // ne2000 + 4 PV variants × 6 workloads, pv-irq × 2 receive and 2 round-trip
            // workloads.
            BenchDevice::Net => 34,
            // x2apic, pv-hypercall × ping-pong, one-to-all.
            BenchDevice::Ipi => 4,
            // One variant per boot.
            BenchDevice::Smp | BenchDevice::Balloon => 1,
            // x2apic-eoi, pv-eoi, ioapic-eoi, pic-eoi.
            BenchDevice::Irq => 4,
            // ticket-spin, pv-spinlock × 2, 4, 8 vCPUs.
            BenchDevice::Spinlock => 6,
        }
    }
}

impl fmt::Display for BenchDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The device of `case` as a [`BenchDevice`].
pub fn bench_device(device: Device) -> BenchDevice {
    match device {
        Device::Console => BenchDevice::Console,
        Device::Block => BenchDevice::Block,
        Device::Clock => BenchDevice::Clock,
        Device::Exit => BenchDevice::Exit,
        Device::Net => BenchDevice::Net,
        Device::Ipi => BenchDevice::Ipi,
        Device::Smp => BenchDevice::Smp,
        Device::Balloon => BenchDevice::Balloon,
        Device::Irq => BenchDevice::Irq,
        Device::Spinlock => BenchDevice::Spinlock,
    }
}

/// `"console"`, `"block"`, `"clock"`, `"exit"`.
pub fn device_name(d: Device) -> &'static str {
    match d {
        Device::Console => "console",
        Device::Block => "block",
        Device::Clock => "clock",
        Device::Exit => "exit",
        Device::Net => "net",
        Device::Ipi => "ipi",
        Device::Smp => "smp",
        Device::Balloon => "balloon",
        Device::Irq => "irq",
        Device::Spinlock => "spinlock",
    }
}

/// The report's variant name.
pub fn variant_name(v: Variant) -> &'static str {
    match v {
        Variant::Uart => "uart",
        Variant::PvHypercall => "pv-hypercall",
        Variant::PvRing => "pv-ring",
        Variant::PvEventfd => "pv-ioeventfd",
        Variant::PvPoll => "pv-poll",
        Variant::AtaPio => "ata-pio",
        Variant::Pit => "pit",
        Variant::PvClock => "pvclock",
        Variant::KvmClock => "kvmclock",
        Variant::PortOut => "null-port",
        Variant::Ne2000 => "ne2000",
        Variant::PvIrq => "pv-irq",
        Variant::X2Apic => "x2apic",
        Variant::InitSipi => "init-sipi",
        Variant::NoBalloon => "none",
        Variant::X2apicEoi => "x2apic-eoi",
        Variant::PvEoi => "pv-eoi",
        Variant::IoapicEoi => "ioapic-eoi",
        Variant::PicEoi => "pic-eoi",
        Variant::TicketSpin => "ticket-spin",
        Variant::PvSpinlock => "pv-spinlock",
    }
}

/// The report's workload name.
pub fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Write64 => "write-64B",
        Workload::Write4K => "write-4KiB",
        Workload::RandRead4K => "randread-4KiB",
        Workload::RandWrite4K => "randwrite-4KiB",
        Workload::SeqRead1M => "seqread-1MiB",
        Workload::SeqWrite1M => "seqwrite-1MiB",
        Workload::ClockRead => "read",
        Workload::RoundTrip => "round-trip",
        Workload::Tx64 => "tx-64B",
        Workload::Tx1500 => "tx-1500B",
        Workload::Rx64 => "rx-64B",
        Workload::Rx1500 => "rx-1500B",
        Workload::UdpEcho64 => "udp-echo-64B",
        Workload::HostEcho64 => "udp-echo-host-64B",
        Workload::PingPong => "ping-pong",
        Workload::OneToAll => "one-to-all",
        Workload::ApBringUp => "ap-bringup",
        Workload::Release => "release-MiB",
        Workload::Interrupt => "interrupt",
        Workload::Contend2 => "contend-2vcpu",
        Workload::Contend4 => "contend-4vcpu",
        Workload::Contend8 => "contend-8vcpu",
    }
}

/// Emulated (the speedup baseline: UART, ATA PIO, PIT, the x2APIC, INIT-SIPI-SIPI, the
/// unmodified guest without a balloon, and the bare null-port exit) or PV.
pub fn kind(v: Variant) -> Kind {
    match v {
        Variant::Uart
        | Variant::Ne2000
        | Variant::AtaPio
        | Variant::Pit
        | Variant::PortOut
        | Variant::X2Apic
        | Variant::InitSipi
        | Variant::NoBalloon
        | Variant::X2apicEoi
        | Variant::IoapicEoi
        | Variant::PicEoi
        | Variant::TicketSpin => Kind::Emulated,
        Variant::PvEoi
        | Variant::PvIrq
        | Variant::PvHypercall
        | Variant::PvRing
        | Variant::PvEventfd
        | Variant::PvPoll
        | Variant::PvClock
        | Variant::KvmClock
        | Variant::PvSpinlock => Kind::Pv,
    }
}

/// What a case's throughput is measured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Payload megabytes (10⁶ bytes) per second.
    MBps,
    /// Operations per second (4 KiB block requests).
    Iops,
    /// Clock reads per second.
    ReadsPerSec,
    /// Port writes per second (exit round trips).
    WritesPerSec,
    /// Frames (or UDP round trips) per second.
    PacketsPerSec,
    /// IPI round trips, one-to-all sends or APs started per second.
    OpsPerSec,
    /// Interrupts raised, handled and acknowledged per second.
    InterruptsPerSec,
    /// Lock acquisitions per second, all vCPUs together.
    AcqPerSec,
}

impl Unit {
    /// The report's unit string.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::MBps => "MB/s",
            Unit::Iops => "IOPS",
            Unit::ReadsPerSec => "reads/s",
            Unit::WritesPerSec => "writes/s",
            Unit::PacketsPerSec => "packets/s",
            Unit::OpsPerSec => "ops/s",
            Unit::InterruptsPerSec => "interrupts/s",
            Unit::AcqPerSec => "acquisitions/s",
        }
    }

    /// The throughput of `ops` operations moving `bytes` bytes in `ns` nanoseconds; NaN when
    /// the time is unusable.
    pub fn throughput(self, ops: u64, bytes: u64, ns: f64) -> f64 {
        if !(ns.is_finite() && ns > 0.0) {
            return f64::NAN;
        }
        match self {
            Unit::MBps => bytes as f64 / ns * 1e3,
            Unit::Iops
            | Unit::ReadsPerSec
            | Unit::WritesPerSec
            | Unit::PacketsPerSec
            | Unit::OpsPerSec
            | Unit::InterruptsPerSec
            | Unit::AcqPerSec => ops as f64 / ns * 1e9,
        }
    }
}

/// MB/s for cases that move payload (console writes, 1 MiB block I/O), IOPS for 4 KiB block
/// requests, reads/s for clocks, writes/s for exit round trips (each is one port write).
pub fn unit(w: Workload) -> Unit {
    match w {
        Workload::Write64
        | Workload::Write4K
        | Workload::SeqRead1M
        | Workload::SeqWrite1M
        | Workload::Release => Unit::MBps,
        Workload::RandRead4K | Workload::RandWrite4K => Unit::Iops,
        Workload::ClockRead => Unit::ReadsPerSec,
        Workload::RoundTrip => Unit::WritesPerSec,
        Workload::Tx64
        | Workload::Tx1500
        | Workload::Rx64
        | Workload::Rx1500
        | Workload::UdpEcho64
        | Workload::HostEcho64 => Unit::PacketsPerSec,
        Workload::PingPong | Workload::OneToAll | Workload::ApBringUp => Unit::OpsPerSec,
        Workload::Interrupt => Unit::InterruptsPerSec,
        Workload::Contend2 | Workload::Contend4 | Workload::Contend8 => Unit::AcqPerSec,
    }
}

/// Payload bytes of one operation of a console workload (`None` for other devices).
pub fn console_write_len(w: Workload) -> Option<usize> {
    match w {
        Workload::Write64 => Some(64),
        Workload::Write4K => Some(4096),
        _ => None,
    }
}

/// `"console/pv-hypercall/write-64B"`.
pub fn case_label(c: CaseId) -> String {
    format!(
        "{}/{}/{}",
        device_name(c.device),
        variant_name(c.variant),
        workload_name(c.workload)
    )
}

/// The key of an exit kind in [`pvkit_report::Case::exits_by_kind`]: `"port-out 0x3f8"`,
/// `"port-in 0x3fd"`, `"port-out 0x510 (doorbell)"`, `"port-out 0x501 (null)"`,
/// `"hypercall console_write"`, …
pub fn exit_key(k: ExitKind) -> String {
    let port_note = |p: u16| {
        if p == ports::NULL {
            " (null)"
        } else if p == ports::DOORBELL {
            " (doorbell)"
        } else {
            ""
        }
    };
    match k {
        ExitKind::PortRead(p) => format!("port-in {p:#x}{}", port_note(p)),
        ExitKind::PortWrite(p) => format!("port-out {p:#x}{}", port_note(p)),
        ExitKind::Hypercall(h) => format!("hypercall {}", h.name()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_abi::call::Hypercall;

    #[test]
    fn names_follow_the_report_conventions() {
        let c = CaseId {
            device: Device::Block,
            variant: Variant::PvEventfd,
            workload: Workload::SeqRead1M,
        };
        assert_eq!(case_label(c), "block/pv-ioeventfd/seqread-1MiB");
        assert_eq!(variant_name(Variant::PortOut), "null-port");
        assert_eq!(workload_name(Workload::RoundTrip), "round-trip");
        assert_eq!(kind(Variant::Pit), Kind::Emulated);
        assert_eq!(kind(Variant::KvmClock), Kind::Pv);
        for d in BenchDevice::ALL {
            assert_eq!(bench_device(d.abi()), d);
        }
        assert_eq!(BenchDevice::Clock.name(), "clock");
    }

    #[test]
    fn units_and_throughput() {
        assert_eq!(unit(Workload::Write64), Unit::MBps);
        assert_eq!(unit(Workload::RandWrite4K), Unit::Iops);
        // 1 MB in 1 ms = 1000 MB/s; 10 ops in 1 µs = 10 M/s.
        assert!((Unit::MBps.throughput(1, 1_000_000, 1e6) - 1000.0).abs() < 1e-9);
        assert!((Unit::Iops.throughput(10, 0, 1e3) - 1e7).abs() < 1e-3);
        assert!(Unit::Iops.throughput(10, 0, 0.0).is_nan());
    }

    #[test]
    fn exit_keys() {
        assert_eq!(exit_key(ExitKind::PortWrite(0x3f8)), "port-out 0x3f8");
        assert_eq!(exit_key(ExitKind::PortRead(0x3fd)), "port-in 0x3fd");
        assert_eq!(
            exit_key(ExitKind::PortWrite(0x510)),
            "port-out 0x510 (doorbell)"
        );
        assert_eq!(
            exit_key(ExitKind::PortWrite(0x501)),
            "port-out 0x501 (null)"
        );
        assert_eq!(
            exit_key(ExitKind::Hypercall(Hypercall::BlockIo)),
            "hypercall block_io"
        );
    }
}
