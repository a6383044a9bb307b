//! Snapshot, restore and live migration of guests on emulated devices and on the TAP
//! backend, under real KVM, with real disk files and TAP devices in namespaces the tests
//! create.
//!
//! The unmodified guest is the built-in kernel's `emuload=N` (guest-kernel/src/emuload.rs):
//! UART lines, PIT time, ATA PIO writes read back at the next tick, NE2000 UDP echoes to the
//! loopback responder, and no hypercall but the final exit. Checked: the tick lines
//! continue across the hand-over with no gap and no repeat (a line the pause cut in two is
//! joined), every acknowledged write is on the disk, every echo came back exactly once and
//! none had to be resent (the NE2000's receive ring and card memory travel in the state),
//! and the exits of the whole run are exact where the guest's work fixes them: every byte
//! printed is one UART write, every ATA command one command-port write, every NE2000 frame
//! sent and read exactly once, whichever host ran it. A TAP-backed guest (NE2000 or PV
//! NIC) restored from a snapshot answers pings and UDP from its namespace again, and a
//! TAP-backed NE2000 guest live-migrated to a TAP device in another namespace answers from
//! there; a restore naming another NIC or MAC is refused and changes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::running::{free_port, Running};
use pvkit_cli::lifecycle::emuload::{check_continuity, exact_exits, joined};
use pvkit_vmm::api::client::send;
use pvkit_vmm::api::request::Request;

/// Ticks of the workload, each at least [`TICK_MS`] of PIT time (about 7 ms of work on this
/// machine anyway): the hand-over is asked for after [`AT`] of them, at least 11 s of guest
/// time before the end (a loaded machine's pre-copy took 3.2 s).
const TICKS: u64 = 3000;
const TICK_MS: u64 = 4;
const AT: u64 = 200;

fn dir(name: &str) -> PathBuf {
    common::fresh_dir("pvkit-emu", name)
}

fn disk(d: &Path) -> PathBuf {
    let p = d.join("disk.img");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p
}

fn cmdline() -> String {
    format!("emuload={TICKS} emuload_ms={TICK_MS}")
}

/// The count of one exit kind in a `--stats` report (0 if absent).
fn stat(stderr: &str, kind: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let (n, k) = l.trim().split_once("  ")?;
            (k.trim() == kind).then(|| n.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Checks a whole run (`all` its joined lines, `stats` the last host's `--stats`) and the
/// disk it wrote; `resumed` the lines the restored or migrated guest printed.
fn check_run(all: &[String], resumed: &[String], stats: &str, disk: &Path) {
    // Every tick once and in order, no restart, every echo once and none resent, every
    // acknowledged write on the disk (pvkit_cli::lifecycle::emuload).
    let image = std::fs::read(disk).unwrap();
    if let Err(why) = check_continuity(all, resumed, TICKS, &image) {
        panic!("{why}");
    }
    // Exact exits over both hosts (the ledger travels in the state): no hypercall but the
    // exit; per byte printed (the lines and their newlines) a UART status read and a data
    // write; ATA commands; each NE2000 frame sent and read once ([`exact_exits`]).
    let hypercalls: Vec<&str> = stats
        .lines()
        .filter(|l| {
            l.trim().split_once("  ").is_some_and(|(n, k)| {
                k.trim().starts_with("hypercall ") && n.trim().parse::<u64>().is_ok_and(|n| n > 0)
            })
        })
        .collect();
    assert_eq!(hypercalls.len(), 1, "{hypercalls:?}");
    let bytes: u64 = all.iter().map(|l| l.len() as u64 + 1).sum();
    for (kind, n) in exact_exits(TICKS, bytes) {
        assert_eq!(stat(stats, &kind.to_string()), n, "{kind}: {stats}");
    }
}

#[test]
fn the_emulated_guest_migrates_with_disk_writes_and_ne2000_echoes_running() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("migrate");
    let disk = disk(&d);
    let api = d.join("api.sock");
    let to = free_port().to_string();
    let mut target = Running::start(&[
        "run",
        "--incoming",
        &to,
        "--net",
        "loopback",
        "--stats",
        "--timeout",
        "120",
    ]);
    target.wait_listening();
    let cmd = cmdline();
    let mut source = start_emuload(&disk, &api, &cmd);
    source.wait_for(&format!("tick {AT} "));
    let reply = send(&api, &Request::Migrate { dest: to.clone() }).expect("API reply");
    assert!(reply.ok, "{reply:?}");
    let (scode, before, serr) = source.finish();
    assert_eq!(scode, 0, "{serr}");
    assert!(serr.contains("live-migrated to"), "{serr}");
    let (tcode, after, terr) = target.finish();
    assert_eq!(tcode, 0, "{terr}\n{after:?}");
    eprintln!("{:?}", reply.migration);
    check_run(&joined(&before, &after), &after, &terr, &disk);
}

/// `pvkit run` of the emulated-device guest `cmd` (UART console, ATA `disk`, NE2000 on the
/// loopback backend) with its control API on `api`.
fn start_emuload(disk: &Path, api: &Path, cmd: &str) -> Running {
    Running::start(&[
        "run",
        "--console",
        "uart",
        "--disk",
        disk.to_str().unwrap(),
        "--net",
        "loopback",
        "--api",
        api.to_str().unwrap(),
        "--timeout",
        "120",
        "--",
        cmd,
    ])
}

/// Boots `emuload` with the API, snapshots it after tick [`AT`] into `d/snap` and ends it.
/// Returns the snapshot directory and the lines printed.
fn snapshot_emuload(d: &Path, disk: &Path) -> (PathBuf, Vec<String>) {
    let api = d.join("api.sock");
    let snap = d.join("snap");
    let cmd = cmdline();
    let mut vm = start_emuload(disk, &api, &cmd);
    vm.wait_for(&format!("tick {AT} "));
    assert!(send(&api, &Request::Pause).unwrap().ok);
    let r = send(&api, &Request::Snapshot { dir: snap.clone() }).unwrap();
    assert!(r.ok, "{r:?}");
    // The paused guest never runs again: its disk stays as the snapshot names it.
    vm.terminate();
    let (_, lines, _) = vm.finish();
    (snap, lines)
}

#[test]
fn an_ne2000_guest_restores_from_a_snapshot_and_another_nic_or_mac_is_refused() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("snapshot");
    let disk = disk(&d);
    let (snap, before) = snapshot_emuload(&d, &disk);
    let image = std::fs::read(&disk).unwrap();
    let snap_s = snap.to_str().unwrap();
    // Another NIC, another MAC, no NIC, another backend: refused, nothing runs, the disk
    // is untouched, and the message says what to give.
    for (nic, why) in [
        (&["--net", "loopback", "--nic", "pv"][..], "--nic ne2000"),
        (
            &["--net", "loopback", "--mac", "52:54:00:00:00:99"][..],
            "--mac 52:54:00:12:34:56",
        ),
        (&[][..], "--net loopback --nic ne2000"),
        (
            &["--net", "tap", "--netns", "pvkit-emu-none"][..],
            "--net loopback",
        ),
    ] {
        let mut args = vec!["run", "--restore", snap_s, "--timeout", "60"];
        args.extend(nic);
        let (code, out, err) = Running::start(&args).finish();
        assert_eq!(code, 1, "{nic:?}: {err}");
        assert!(out.is_empty(), "{nic:?}: the guest ran: {out:?}");
        assert!(err.contains(why), "{nic:?}: {err}");
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            image,
            "{nic:?} wrote the disk"
        );
    }
    let (code, after, err) = Running::start(&[
        "run",
        "--restore",
        snap_s,
        "--net",
        "loopback",
        "--stats",
        "--timeout",
        "120",
    ])
    .finish();
    assert_eq!(code, 0, "{err}\n{after:?}");
    check_run(&joined(&before, &after), &after, &err, &disk);
}

/// A TAP-backed guest (`nic`: `ne2000` or `pv`) serving pings: answered from its
/// namespace, snapshotted, ended (its TAP device goes away), restored on a new TAP device
/// in the same namespace: the pings and UDP echoes from the namespace are answered again
/// by the same guest, which then ends on "bye".
fn tap_guest_restores(nic: &str) {
    let Some(ns) = common::tap_peer::netns("pvkit-emu", nic) else {
        return;
    };
    let name = ns.name().unwrap_or_default().to_owned();
    let d = dir(&format!("tap-{nic}"));
    let api = d.join("api.sock");
    let snap = d.join("snap");
    let net = ["--net", "tap", "--netns", &name, "--nic", nic];
    let mut args = vec!["run", "--api", api.to_str().unwrap(), "--timeout", "120"];
    args.extend(net);
    args.extend(["--", "net=serve"]);
    let vm = Running::start(&args);
    let answered = ns
        .run_in(|| {
            let p = pvkit_net::ping::Pinger::new().expect("a raw ICMP socket");
            (1..=600u16).find(|&seq| common::tap_peer::ping(&p, seq, Duration::from_millis(200)))
        })
        .unwrap();
    assert!(answered.is_some(), "{nic}: the guest never answered a ping");
    assert!(send(&api, &Request::Pause).unwrap().ok);
    let r = send(&api, &Request::Snapshot { dir: snap.clone() }).unwrap();
    assert!(r.ok, "{nic}: {r:?}");
    vm.terminate();
    let (_, before, _) = vm.finish();
    let mut args = vec![
        "run",
        "--restore",
        snap.to_str().unwrap(),
        "--timeout",
        "120",
    ];
    args.extend(net);
    let restored = Running::start(&args);
    let host = ns.run_in(|| common::tap_peer::host_side(b'r')).unwrap();
    let (code, after, err) = restored.finish();
    assert_served_on(nic, host, code, &before, &after, &err);
}

#[test]
fn a_tap_backed_guest_restores_and_its_namespace_pings_it_again() {
    if !common::builtin_ready() {
        return;
    }
    tap_guest_restores("ne2000");
    tap_guest_restores("pv");
}

/// A TAP-backed NE2000 guest serving pings from namespace A live-migrates to a target whose
/// TAP device is in namespace B (both devices exist during the hand-over, so they cannot
/// share a namespace and address): the same guest answers pings and UDP echoes from B, then
/// ends on "bye".
#[test]
fn a_tap_backed_ne2000_guest_live_migrates_to_a_tap_device_in_another_namespace() {
    if !common::builtin_ready() {
        return;
    }
    let (Some(a), Some(b)) = (
        common::tap_peer::netns("pvkit-emu", "from"),
        common::tap_peer::netns("pvkit-emu", "to"),
    ) else {
        return;
    };
    let (name_a, name_b) = (
        a.name().unwrap_or_default().to_owned(),
        b.name().unwrap_or_default().to_owned(),
    );
    let d = dir("tap-migrate");
    let api = d.join("api.sock");
    let to = free_port().to_string();
    let mut target = Running::start(&[
        "run",
        "--incoming",
        &to,
        "--net",
        "tap",
        "--netns",
        &name_b,
        "--timeout",
        "120",
    ]);
    target.wait_listening();
    let source = Running::start(&[
        "run",
        "--api",
        api.to_str().unwrap(),
        "--net",
        "tap",
        "--netns",
        &name_a,
        "--timeout",
        "120",
        "--",
        "net=serve",
    ]);
    let answered = a
        .run_in(|| {
            let p = pvkit_net::ping::Pinger::new().expect("a raw ICMP socket");
            (1..=600u16).find(|&seq| common::tap_peer::ping(&p, seq, Duration::from_millis(200)))
        })
        .unwrap();
    assert!(answered.is_some(), "the guest never answered a ping from A");
    let reply = send(&api, &Request::Migrate { dest: to }).expect("API reply");
    assert!(reply.ok, "{reply:?}");
    let (scode, before, serr) = source.finish();
    assert_eq!(scode, 0, "{serr}");
    assert!(serr.contains("live-migrated to"), "{serr}");
    let host = b.run_in(|| common::tap_peer::host_side(b'm')).unwrap();
    let (tcode, after, terr) = target.finish();
    assert_served_on("from B", host, tcode, &before, &after, &terr);
}

/// The continued `net=serve` guest (`after`, its exit `code` and stderr `err`) answered the
/// host side's 5 pings and 3 UDP echoes (`host`), ended its run and did not start over
/// (none of its lines is the original's first, `before`).
fn assert_served_on(
    what: &str,
    host: (u32, u32),
    code: i32,
    before: &[String],
    after: &[String],
    err: &str,
) {
    assert_eq!(
        host,
        (5, 3),
        "{what}: ping replies and UDP echoes: {after:?} {err}"
    );
    assert_eq!(code, 0, "{what}: {err}");
    assert!(
        after.iter().any(|l| l.starts_with("net: done")),
        "{what}: {after:?}"
    );
    assert!(
        !after.iter().any(|l| before.first() == Some(l)),
        "{what}: the guest started over: {after:?}"
    );
}
