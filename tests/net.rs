//! The emulated NE2000 end to end on real KVM: the built-in guest's `net=` modes
//! (guest-kernel/src/net) with the in-kernel irqchip and an irqfd for IRQ 9.
//!
//! * loopback backend (no privileges): UDP round trips by interrupt, interrupts raised on
//!   the host (irqfd writes) equal to the interrupts the guest handled; exact port exits
//!   per transmitted frame.
//! * TAP backend in a namespace the test creates (root): the host pings the guest and gets
//!   replies, a UDP echo from a host socket comes back. Without root they skip with a
//!   note, except under `CI=true`, where they fail.

mod common;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use pvkit_net::ping::Pinger;
use pvkit_vmm::devices::legacy::ne2000::{NetBackendConfig, NetConfig, GUEST_IP};
use pvkit_vmm::exit::ledger::{ExitKind, LedgerSnapshot};
use pvkit_vmm::{run, ConsoleKind, KernelSource, RunOutcome, StopReason, VmConfig};

fn boot(cmdline: &str, backend: NetBackendConfig) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 32,
        cmdline: cmdline.into(),
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: Duration::from_secs(120),
        net: Some(NetConfig {
            backend,
            mac: None,
            host_rtt: None,
        }),
        ..VmConfig::default()
    };
    run(&cfg).expect("run the guest kernel with a NIC")
}

/// The value of `key=` on the guest's `net: done` line.
fn done_value(console: &str, key: &str) -> u64 {
    let line = console
        .lines()
        .find(|l| l.starts_with("net: done "))
        .unwrap_or_else(|| panic!("no `net: done` line in {console:?}"));
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap()
}

/// Port exits in the NE2000's range `0x300..=0x31f`.
fn nic_exits(l: &LedgerSnapshot) -> u64 {
    l.counts
        .iter()
        .filter(|(k, _)| {
            matches!(k, ExitKind::PortRead(p) | ExitKind::PortWrite(p) if (0x300..=0x31f).contains(p))
        })
        .map(|(_, n)| n)
        .sum()
}

fn console(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.console).into_owned()
}

#[test]
fn udp_round_trips_with_the_loopback_backend_by_interrupt() {
    if !common::builtin_ready() {
        return;
    }
    let o = boot("net=echo count=20 size=32", NetBackendConfig::Loopback);
    let out = console(&o);
    assert_eq!(o.stop, StopReason::Exit(0), "{out}");
    assert!(
        out.contains("net: echoed 20 datagrams of 32 bytes"),
        "{out}"
    );
    let net = o.net.expect("NIC stats");
    // The ARP reply and 20 echoes, each one interrupt: the handler drains the ring and
    // acknowledges PRX before the next transmit.
    assert_eq!(done_value(&out, "echoes"), 20);
    assert_eq!(done_value(&out, "frames"), 21);
    assert_eq!(net.model.rx_frames, 21);
    assert_eq!(net.backend.tx_frames, 21);
    assert_eq!(net.irqs_raised, 21, "irqfd writes");
    assert_eq!(
        done_value(&out, "irqs"),
        net.irqs_raised,
        "raised == handled"
    );
    // Delivery and EOI are in-kernel: no hlt exit, no MMIO exit.
    assert_eq!(o.ledger.count(ExitKind::Hlt), 0);
}

/// One transmitted frame of `len >= 60` bytes costs the driver's 12 register accesses plus
/// one exit per word of its `rep outsw` (pvkit_guest::ne2000): measured as the difference
/// between two runs that differ only in the number of frames.
#[test]
fn ne2000_transmit_costs_exactly_12_plus_one_exit_per_word() {
    if !common::builtin_ready() {
        return;
    }
    // (UDP payload, frame length): the minimum frame and a 242-byte one.
    for (size, frame) in [(18u64, 60u64), (200, 242)] {
        let a = boot(
            &format!("net=send count=5 size={size}"),
            NetBackendConfig::Loopback,
        );
        let b = boot(
            &format!("net=send count=25 size={size}"),
            NetBackendConfig::Loopback,
        );
        for o in [&a, &b] {
            assert_eq!(o.stop, StopReason::Exit(0), "{}", console(o));
            // Only the ARP reply is received: one interrupt, handled.
            assert_eq!(o.net.unwrap().irqs_raised, 1);
            assert_eq!(done_value(&console(o), "irqs"), 1);
        }
        assert_eq!(b.net.unwrap().backend.tx_frames, 26);
        let per_frame = (nic_exits(&b.ledger) - nic_exits(&a.ledger)) / 20;
        assert_eq!(
            nic_exits(&b.ledger) - nic_exits(&a.ledger),
            20 * (12 + frame / 2),
            "{per_frame} exits per {frame}-byte frame"
        );
    }
}

// ---- TAP ------------------------------------------------------------------------------

#[test]
fn host_pings_the_guest_and_gets_udp_echoes_over_tap() {
    if !common::builtin_ready() {
        return;
    }
    let Some(ns) = common::tap_peer::netns("pvkit-nic", "tap") else {
        return;
    };
    let name = ns.name().unwrap_or_default().to_owned();
    let backend = NetBackendConfig::Tap {
        netns: Some(name.clone()),
        bridge: None,
    };
    std::thread::scope(|s| {
        let vm = s.spawn(|| boot("net=serve", backend));
        let host = ns.run_in(|| common::tap_peer::host_side(b'k')).unwrap();
        let o = vm.join().unwrap();
        let out = console(&o);
        assert_eq!(host, (5, 3), "ping replies and UDP echoes: {out}");
        assert_eq!(o.stop, StopReason::Exit(0), "{out}");
        assert_eq!(done_value(&out, "udp"), 3);
        assert!(done_value(&out, "icmp") >= 6);
        let raised = o.net.unwrap().irqs_raised;
        assert!(raised >= 1, "{raised} interrupts");
        // Over TAP frames arrive on the host's schedule: two edges raised close together
        // (the second while the first is still pending in the LAPIC, or while the guest is
        // stopping after "bye") are delivered as one interrupt, as on hardware; the guest
        // drains every frame per interrupt. So: every delivered interrupt was raised, and
        // every frame was handled (the exact raised == handled count is asserted over the
        // synchronous loopback backend above).
        let handled = done_value(&out, "irqs");
        assert!(
            handled >= 1 && handled <= raised,
            "raised {raised}, handled {handled}: {out}"
        );
        let frames = done_value(&out, "frames");
        let parts = done_value(&out, "arp") + done_value(&out, "icmp") + done_value(&out, "udp");
        assert!(
            frames > parts,
            "every frame handled, the last one \"bye\": {out}"
        );
    });
}

/// The name of the TAP device (`pvtap…`) in the current thread's namespace.
fn tap_ifname() -> Option<String> {
    // SAFETY: if_nameindex(3) returns a list terminated by a zero entry (or null), freed
    // below with if_freenameindex once; the names are read before that.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return None;
        }
        let mut found = None;
        let mut p = list;
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            if name.starts_with("pvtap") {
                found = Some(name);
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        found
    }
}

/// Raises the MTU of `ifname` in the current thread's namespace.
fn set_mtu(ifname: &str, mtu: i32) {
    #[repr(C, align(8))]
    struct IfReq {
        name: [u8; 16],
        mtu: i32,
        pad: [u8; 20],
    }
    let mut r = IfReq {
        name: [0; 16],
        mtu,
        pad: [0; 20],
    };
    r.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: socket(2) with constant arguments; checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0);
    // SAFETY: SIOCSIFMTU reads one struct ifreq; `r` has its size and alignment.
    let rc = unsafe { libc::ioctl(s, libc::SIOCSIFMTU as _, &mut r as *mut IfReq) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closes the socket opened above, once.
    unsafe { libc::close(s) };
    assert_eq!(rc, 0, "SIOCSIFMTU: {err}");
}

/// Frames larger than the MTU from the host over TAP: the host side raises its MTU to
/// 9000 and sends the guest a 4000-byte datagram. The backend drops and counts it; it
/// never reaches the NE2000 model; the guest keeps answering (a UDP echo right after).
#[test]
fn oversize_frames_from_the_host_over_tap_are_dropped_and_the_guest_keeps_serving() {
    if !common::builtin_ready() {
        return;
    }
    let Some(ns) = common::tap_peer::netns("pvkit-nic", "jumbo") else {
        return;
    };
    let backend = NetBackendConfig::Tap {
        netns: Some(ns.name().unwrap_or_default().to_owned()),
        bridge: None,
    };
    std::thread::scope(|s| {
        let vm = s.spawn(|| boot("net=serve", backend));
        let echoed = ns
            .run_in(|| {
                let sock = Pinger::new().expect("a raw ICMP socket");
                // Until the guest answers (its MAC is then in the host's ARP table).
                let start = Instant::now();
                let mut seq = 0u16;
                while !common::tap_peer::ping(&sock, seq, Duration::from_millis(500)) {
                    seq += 1;
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "the guest never answered a ping"
                    );
                }
                set_mtu(&tap_ifname().expect("the VMM's TAP device"), 9000);
                let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
                udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let guest = SocketAddrV4::new(GUEST_IP, 7);
                udp.send_to(&[0xab; 4000], guest).unwrap();
                udp.send_to(b"after the jumbo", guest).unwrap();
                let mut b = [0u8; 4096];
                let echoed =
                    matches!(udp.recv_from(&mut b), Ok((n, _)) if &b[..n] == b"after the jumbo");
                udp.send_to(b"bye", SocketAddrV4::new(GUEST_IP, 9999))
                    .unwrap();
                echoed
            })
            .unwrap();
        let o = vm.join().unwrap();
        let out = console(&o);
        assert!(echoed, "the datagram after the jumbo was echoed: {out}");
        assert_eq!(o.stop, StopReason::Exit(0), "{out}");
        let nic = o.net.expect("NIC stats");
        assert_eq!(nic.backend.dropped_oversize, 1, "{nic:?}");
        assert_eq!(nic.model.rx_oversize, 0, "{nic:?}");
        assert_eq!(done_value(&out, "udp"), 1, "{out}");
    });
}
