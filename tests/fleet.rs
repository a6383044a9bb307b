//! `pvkit fleet`: many guests, each a `pvkit run` process, on one bridge in a network
//! namespace pvkit creates, with real TAP devices, on real KVM.
//!
//! * 8 guests (small enough for 2 cores) start, report their memory and all exit 0.
//! * A ring of 3 guests, over the PV NIC and over the NE2000: every member adds its id in
//!   turn and the last verifies the sum.
//! * The balloon gives touched memory back: the host backs at least the touched amount
//!   less per VM with `--give-back`.
//! * Bad options are refused before anything starts.
//!
//! Needs root (namespace, bridge, TAP devices); without it they skip with a note, except
//! under `CI=true`, where they fail.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const PVKIT: &str = env!("CARGO_BIN_EXE_pvkit");

/// Whether the fleet tests can run here: the built-in guest, KVM and root.
fn ready() -> bool {
    if !common::builtin_ready() {
        return false;
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !common::ci(),
            "CI=true but the fleet tests need root (namespace, bridge, TAP devices)"
        );
        eprintln!("note: skipping a fleet test (needs root)");
        return false;
    }
    true
}

/// Runs `pvkit fleet ARGS --json FILE`; returns the exit status, stdout and the JSON.
fn fleet(tag: &str, args: &[&str]) -> (Option<i32>, String, Value) {
    let json = std::env::temp_dir().join(format!("pvkit-fleet-{}-{tag}.json", std::process::id()));
    let start = Instant::now();
    let out = Command::new(PVKIT)
        .arg("fleet")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run pvkit fleet");
    // Each guest is ready in well under a second on this machine; 10x and more.
    assert!(
        start.elapsed() < Duration::from_secs(240),
        "pvkit fleet took {:?}",
        start.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}\n{stderr}"));
    let _ = std::fs::remove_file(&json);
    (
        out.status.code(),
        stdout,
        serde_json::from_str(&text).unwrap(),
    )
}

fn members(v: &Value) -> &Vec<Value> {
    v["members"].as_array().expect("members")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn eight_guests_start_report_their_memory_and_all_exit_cleanly() {
    if !ready() {
        return;
    }
    let (status, stdout, v) = fleet("eight", &["8", "--mem", "64"]);
    assert_eq!(status, Some(0), "{stdout}");
    assert!(stdout.contains("PASSED"), "{stdout}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(u(&v["clean_exits"]), 8);
    assert_eq!(v["nic"], "pv", "the PV NIC is the default");
    let ms = members(&v);
    assert_eq!(ms.len(), 8);
    let mut pids: Vec<u64> = ms.iter().map(|m| u(&m["pid"])).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 8, "one process per VM");
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(u(&m["id"]), i as u64 + 1);
        assert_eq!(m["exit"], 0, "{m}");
        let pss = u(&m["pss_kib"]);
        let ram = u(&m["guest_ram_kib"]);
        // The guest ran, so the host backs some of its RAM; the VMM has memory of its own
        // beyond that; the guest touched far less than its 64 MiB.
        assert!(ram > 0 && ram < 64 * 1024, "guest RAM {ram} KiB");
        assert!(pss > ram, "PSS {pss} KiB, guest RAM {ram} KiB");
        assert!(m["ready_s"].as_f64().unwrap() > 0.0);
    }
    assert!(v["start_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(v["ring"]["hops"], 8);
    assert_eq!(v["ring"]["sum"], 36);
    assert!(stdout.contains("VMM overhead per VM"), "{stdout}");
    assert!(stdout.contains("KSM is"), "{stdout}");
}

#[test]
fn a_ring_of_three_guests_adds_every_id_in_turn_and_the_last_verifies_the_sum() {
    if !ready() {
        return;
    }
    for nic in ["pv", "ne2000"] {
        let (status, stdout, v) =
            fleet(&format!("ring-{nic}"), &["3", "--mem", "32", "--nic", nic]);
        assert_eq!(status, Some(0), "{nic}: {stdout}");
        assert_eq!(v["nic"], nic);
        let ms = members(&v);
        for (k, m) in ms.iter().enumerate() {
            let k = k as u64 + 1;
            let console = m["console"].as_str().unwrap();
            let nic_line = if nic == "pv" {
                "net: PV NIC"
            } else {
                "net: NE2000"
            };
            assert!(console.contains(nic_line), "{console}");
            assert!(
                console.contains(&format!("ip 10.88.0.{} ", 10 + k)),
                "{console}"
            );
            assert!(
                console.contains(&format!("ring: ready id={k} members=3")),
                "{console}"
            );
            if k < 3 {
                let sum = k * (k + 1) / 2;
                assert!(
                    console.contains(&format!("ring: member {k} passed hops={k} sum={sum} on")),
                    "{console}"
                );
            } else {
                assert!(
                    console.contains("ring: verified sum=6 over 3 members"),
                    "{console}"
                );
            }
            assert!(!console.contains("WRONG"), "{console}");
        }
        // The host got it back from the last member, with the same sum.
        assert_eq!(v["ring"]["hops"], 3);
        assert_eq!(v["ring"]["sum"], 6);
    }
}

#[test]
fn the_balloon_gives_the_touched_memory_back_to_the_host() {
    if !ready() {
        return;
    }
    let touch_kib = 32 * 1024;
    let (s1, out1, kept) = fleet("kept", &["3", "--mem", "64", "--touch", "32"]);
    let (s2, out2, given) = fleet(
        "given",
        &["3", "--mem", "64", "--touch", "32", "--give-back"],
    );
    assert_eq!((s1, s2), (Some(0), Some(0)), "{out1}\n{out2}");
    for m in members(&given) {
        let console = m["console"].as_str().unwrap();
        assert!(
            console.contains("mem: touched 32 MiB and stopped using it; gave 8192 pages back"),
            "{console}"
        );
    }
    let ram =
        |v: &Value| -> Vec<u64> { members(v).iter().map(|m| u(&m["guest_ram_kib"])).collect() };
    let (kept, given) = (ram(&kept), ram(&given));
    let least_kept = *kept.iter().min().unwrap();
    let most_given = *given.iter().max().unwrap();
    // Without the balloon the host still backs every touched page; with it, none of them
    // (the rest of the guest's pages are the same in both runs, give or take the page of
    // the balloon's call array and a page or two that differ from member to member: the
    // members of one run differ by up to 2 pages, and this compares the extremes).
    assert!(least_kept >= touch_kib, "kept {kept:?} KiB");
    assert!(
        most_given + touch_kib <= least_kept + 16,
        "given back {given:?} KiB, kept {kept:?} KiB"
    );
}

#[test]
fn bad_fleet_options_are_refused_before_anything_starts() {
    for (args, what) in [
        (vec!["fleet", "0"], "0 guests"),
        (vec!["fleet", "1001"], "too many guests"),
        (vec!["fleet", "2", "--give-back"], "give-back without touch"),
        (
            vec!["run", "--net", "tap", "--mac", "01:00:00:00:00:01"],
            "multicast MAC",
        ),
        (
            vec!["run", "--net", "tap", "--mac", "52:54:00:00:01"],
            "short MAC",
        ),
        (
            vec!["run", "--net", "tap", "--bridge", "br0"],
            "bridge without netns",
        ),
    ] {
        let out = Command::new(PVKIT).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
    }
    // A touch as large as the guest's RAM is a VMM-side refusal (status 1), no namespace made.
    let out = Command::new(PVKIT)
        .args(["fleet", "2", "--mem", "32", "--touch", "32"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--touch must be less than --mem"));
}

/// One ring member on a bridge the test makes, fed by the test: a message without the
/// magic and one of the wrong length are ignored; one out of turn ends the member with
/// status 1 and passes nothing on.
#[test]
fn a_member_ignores_foreign_messages_and_refuses_one_out_of_turn() {
    use std::io::{BufRead, BufReader};
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    use std::process::Stdio;

    if !ready() {
        return;
    }
    let name = format!("pvkit-ringt-{}", std::process::id());
    let ns = pvkit_net::netns::NetNs::create(&name).expect("namespace");
    let host = Ipv4Addr::new(10, 77, 0, 1);
    let guest = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 12), 7100);
    pvkit_net::bridge::create(&ns, "br0", [0x52, 0x54, 0, 0x77, 0, 1], host, 24).expect("bridge");
    let sock = ns
        .run_in(|| UdpSocket::bind(SocketAddrV4::new(host, 7100)))
        .unwrap()
        .expect("host socket");
    let mut child = Command::new(PVKIT)
        .args([
            "run",
            "--mem",
            "32",
            "--timeout",
            "120",
            "--net",
            "tap",
            "--netns",
            &name,
            "--bridge",
            "br0",
            "--mac",
            "52:54:00:77:00:02",
            "--",
            "net=ring",
            "ip=10.77.0.12",
            "peer=10.77.0.1",
            "id=2",
            "members=2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ring: ready") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the member got ready");
    let msg = |magic: &[u8; 4], hops: u32, len: usize| {
        let mut m = magic.to_vec();
        m.extend_from_slice(&hops.to_be_bytes());
        m.extend_from_slice(&0u64.to_be_bytes());
        m.truncate(len);
        m
    };
    sock.send_to(&msg(b"XXXX", 5, 16), guest).unwrap();
    sock.send_to(&msg(b"PVRG", 6, 15), guest).unwrap();
    sock.send_to(&msg(b"PVRG", 0, 16), guest).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the member never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let console = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{console}");
    assert!(
        console.contains("ring: WRONG turn: member 2 got the message after 0 hops"),
        "{console}"
    );
    assert!(!console.contains("passed"), "{console}");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 64];
    assert!(sock.recv_from(&mut b).is_err(), "nothing was passed on");
}
