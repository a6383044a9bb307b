//! The PV NIC end to end on real KVM (`VmConfig::nic = NicModel::Pv`): the built-in
//! guest's `net=` modes over `pvkit_guest::pv_net` on every path (`pvnet=`), with exact
//! exit counts per path, completion interrupts raised == handled on the loopback backend,
//! and, over a TAP device in a namespace the test creates (root), the host pinging the
//! guest and getting UDP echoes back. Without root the TAP test skips with a note, except
//! under `CI=true`, where it fails.

mod common;

use std::time::Duration;

use pvkit_vmm::devices::legacy::ne2000::{NetBackendConfig, NetConfig};
use pvkit_vmm::exit::ledger::{ExitKind, LedgerSnapshot};
use pvkit_vmm::{run, ConsoleKind, KernelSource, NicModel, RunOutcome, StopReason, VmConfig};

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
        nic: NicModel::Pv,
        ..VmConfig::default()
    };
    run(&cfg).expect("run the guest kernel with the PV NIC")
}

fn console(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.console).into_owned()
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

/// Doorbell port writes (exits to userspace).
fn doorbells(l: &LedgerSnapshot) -> u64 {
    l.count(ExitKind::PortWrite(pvkit_abi::ports::DOORBELL))
}

fn net_sends(l: &LedgerSnapshot) -> u64 {
    l.count(ExitKind::Hypercall(pvkit_abi::Hypercall::NetSend))
}

#[test]
fn udp_echo_works_on_every_pv_path_over_loopback() {
    if !common::builtin_ready() {
        return;
    }
    for path in ["hypercall", "doorbell", "eventfd", "poll", "irq"] {
        let o = boot(
            &format!("net=echo count=20 size=32 pvnet={path}"),
            NetBackendConfig::Loopback,
        );
        let out = console(&o);
        assert_eq!(o.stop, StopReason::Exit(0), "{path}: {out}");
        assert!(
            out.contains(&format!("path {path}"))
                && out.contains("net: echoed 20 datagrams of 32 bytes"),
            "{path}: {out}"
        );
        assert_eq!(done_value(&out, "echoes"), 20, "{path}");
        assert_eq!(
            done_value(&out, "frames"),
            21,
            "{path}: ARP reply + 20 echoes"
        );
        assert_eq!(done_value(&out, "errors"), 0, "{path}");
        let s = o.pv_net.expect("PV NIC stats");
        assert!(o.net.is_none(), "no NE2000 with --nic pv");
        assert_eq!((s.device.tx_frames, s.device.rx_frames), (21, 21), "{path}");
        assert_eq!(s.device.rx_dropped_no_buffer, 0, "{path}");
        // No NE2000 port was touched.
        assert_eq!(
            o.ledger
                .counts
                .iter()
                .filter(
                    |(k, _)| matches!(k, ExitKind::PortRead(p) | ExitKind::PortWrite(p)
                    if (0x300..=0x31f).contains(p))
                )
                .count(),
            0,
            "{path}"
        );
    }
}

/// Exact exits of `net=send`: `N` datagrams queued back to back into a 32-slot ring are
/// published in batches of 32 (the guest flushes when the ring is full and after the
/// last), each batch one doorbell at most.
#[test]
fn pv_ring_exits_are_one_per_batch_and_zero_when_polled() {
    if !common::builtin_ready() {
        return;
    }
    let send = |n: u64, path: &str| {
        let o = boot(
            &format!("net=send count={n} size=18 pvnet={path}"),
            NetBackendConfig::Loopback,
        );
        assert_eq!(o.stop, StopReason::Exit(0), "{}", console(&o));
        let s = o.pv_net.unwrap();
        assert_eq!(s.device.tx_frames, n + 1, "{path}: ARP + {n} datagrams");
        o
    };
    for n in [64u64, 320] {
        // Doorbell: 1 (RX buffers posted) + 1 (the ARP request) + one per batch of 32.
        let o = send(n, "doorbell");
        assert_eq!(
            doorbells(&o.ledger),
            2 + n.div_ceil(32),
            "doorbell, {n} frames"
        );
        assert_eq!(net_sends(&o.ledger), 0);
        // Hypercall: one NetSend per frame (the Solo5 baseline), 1 doorbell (RX posted).
        let o = send(n, "hypercall");
        assert_eq!(net_sends(&o.ledger), n + 1, "hypercall, {n} frames");
        assert_eq!(doorbells(&o.ledger), 1);
        // Polled by the host: no doorbell, no NetSend.
        let o = send(n, "poll");
        assert_eq!((doorbells(&o.ledger), net_sends(&o.ledger)), (0, 0), "poll");
    }
}

#[test]
fn completion_interrupts_raised_equal_handled_over_loopback() {
    if !common::builtin_ready() {
        return;
    }
    let o = boot(
        "net=echo count=30 size=100 pvnet=irq",
        NetBackendConfig::Loopback,
    );
    let out = console(&o);
    assert_eq!(o.stop, StopReason::Exit(0), "{out}");
    let s = o.pv_net.unwrap();
    // The ARP reply and 30 echoes, each announced by one interrupt the guest waited for.
    assert_eq!(s.irqs_raised, 31, "{out}");
    assert_eq!(done_value(&out, "irqs"), s.irqs_raised, "raised == handled");
    assert_eq!(o.ring_irqs_raised, Some(31));
    // Delivery and EOI are in-kernel (irqfd, IOAPIC, LAPIC): no hlt exit, no MMIO exit.
    assert_eq!(o.ledger.count(ExitKind::Hlt), 0);
    // Send only: one interrupt (the ARP reply), none per transmitted frame.
    let o = boot(
        "net=send count=100 size=18 pvnet=irq",
        NetBackendConfig::Loopback,
    );
    let out = console(&o);
    assert_eq!(o.stop, StopReason::Exit(0), "{out}");
    assert_eq!(o.pv_net.unwrap().irqs_raised, 1);
    assert_eq!(done_value(&out, "irqs"), 1);
}

// ---- TAP ------------------------------------------------------------------------------

/// The host pings the guest over TAP and gets UDP echoes, with the PV NIC polled
/// (`doorbell`: frames land in the RX ring from the VMM's event loop) and by completion
/// interrupt (`irq`: the guest halts between frames).
#[test]
fn host_pings_the_pv_nic_and_gets_udp_echoes_over_tap() {
    if !common::builtin_ready() {
        return;
    }
    for path in ["doorbell", "irq"] {
        let Some(ns) = common::tap_peer::netns("pvkit-pvnic", path) else {
            return;
        };
        let name = ns.name().unwrap_or_default().to_owned();
        let backend = NetBackendConfig::Tap {
            netns: Some(name.clone()),
            bridge: None,
        };
        std::thread::scope(|s| {
            let vm = s.spawn(|| boot(&format!("net=serve pvnet={path}"), backend));
            let host = ns.run_in(|| common::tap_peer::host_side(b'n')).unwrap();
            let o = vm.join().unwrap();
            let out = console(&o);
            assert_eq!(host, (5, 3), "{path}: ping replies and UDP echoes: {out}");
            assert_eq!(o.stop, StopReason::Exit(0), "{path}: {out}");
            assert_eq!(done_value(&out, "udp"), 3, "{path}");
            assert!(done_value(&out, "icmp") >= 6, "{path}");
            let s = o.pv_net.unwrap();
            assert!(
                s.backend_events >= 1,
                "{path}: the event loop served the TAP fd"
            );
            assert_eq!(s.device.rx_frames, done_value(&out, "frames"), "{path}");
            if path == "irq" {
                // Over TAP frames arrive on the host's schedule: an edge raised while the
                // previous one is still pending in the LAPIC is delivered with it (as on
                // hardware), so 1 <= handled <= raised.
                let handled = done_value(&out, "irqs");
                assert!(
                    handled >= 1 && handled <= s.irqs_raised,
                    "raised {}, handled {handled}: {out}",
                    s.irqs_raised
                );
                assert_eq!(o.ledger.count(ExitKind::Hlt), 0);
            } else {
                assert_eq!(s.irqs_raised, 0);
            }
        });
    }
}

/// Seconds `pvkit run --net loopback --nic pv -- net=echo count=N pvnet=PATH` takes with
/// every thread of the VMM on one CPU (the vCPU and the poller share a core, as on a
/// loaded host); panics unless every echo came back.
fn echo_on_one_core(path: &str, count: u64) -> f64 {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(common::running::PVKIT);
    cmd.args([
        "run",
        "--net",
        "loopback",
        "--nic",
        "pv",
        "--timeout",
        "120",
        "--",
    ])
    .arg(format!("net=echo count={count} pvnet={path}"));
    // SAFETY: between fork and exec only sched_setaffinity (async-signal-safe) runs, on a
    // CPU set built here.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = std::time::Instant::now();
    let o = cmd.output().expect("run pvkit");
    let secs = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{path}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!("echoes={count} ")),
        "{path}: not every echo came back: {out}"
    );
    secs
}

/// The poll path's watchdog stops under load (docs/DESIGN.md, "Polled rings on a loaded
/// host"): with the poller and the vCPU on one core, a poller that never slept handed
/// each request over only at the end of a scheduler time slice, 6-10x slower than the
/// eventfd transport (whose I/O thread sleeps until the doorbell) in the same place;
/// pacing its idle steps with short sleeps makes it about as fast. Both paths alternate,
/// so a change of the host's load hits both.
#[test]
fn polled_nic_keeps_up_with_the_eventfd_nic_on_one_shared_core() {
    if !common::builtin_ready() {
        return;
    }
    const COUNT: u64 = 1000;
    let (mut poll, mut eventfd) = (0.0, 0.0);
    for _ in 0..2 {
        eventfd += echo_on_one_core("eventfd", COUNT);
        poll += echo_on_one_core("poll", COUNT);
    }
    assert!(
        poll <= 3.0 * eventfd,
        "{COUNT} echoes on one core, twice: poll {poll:.2} s, eventfd {eventfd:.2} s"
    );
}
