//! The host-set balloon target under real KVM: `pvkit ctl PATH balloon MIB` (the control
//! API's `balloon`) sets the target, the built-in guest's `counter=N balloon_follow`
//! (guest-kernel/src/counter.rs, pvkit-guest's `BalloonDriver`) reads it with
//! `BalloonTarget` and inflates or deflates toward it in batches, and `stats` reports
//! target and actual. Refused targets (above RAM, malformed) change nothing; a guest that
//! does not follow keeps its memory and `stats` says it never read the target; a snapshot
//! keeps the target across a restore.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::api_vm::ApiVm;
use pvkit_vmm::api::client::send_raw;
use pvkit_vmm::api::request::{BalloonReply, Request, Response};

/// Wall-clock bound for waits (≥ 10× what they take on this machine: 64 MiB is 8 guest
/// steps of 20 ms).
const WAIT: Duration = Duration::from_secs(60);
/// 64 MiB in 4 KiB pages.
const PAGES_64_MIB: u64 = 64 * 256;
/// The guest's default batch (`balloon_batch`, guest-kernel/src/counter.rs).
const BATCH: u64 = 2048;

/// A `pvkit run --api` VM of these tests ([`ApiVm`]).
type Vm = ApiVm;

impl ApiVm {
    /// `pvkit run --api DIR/NAME.sock ARGS`.
    fn start_named(dir: &Path, name: &str, args: &[&str]) -> Self {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        Self::start(dir.join(format!("{name}.sock")), 240, &args, WAIT)
    }

    /// Boots the counter with `extra` guest tokens.
    fn boot(dir: &Path, name: &str, extra: &str) -> Self {
        let cmdline = format!("counter=100000 counter_ms=20 {extra}");
        let mut args = vec!["--console", "pv", "--"];
        args.extend(cmdline.trim().split(' '));
        Self::start_named(dir, name, &args)
    }

    fn balloon(&self) -> BalloonReply {
        let r = self.api(&Request::Stats);
        assert!(r.ok, "{r:?}");
        let s = r.stats.unwrap();
        let b = s.balloon.expect("the VM has a balloon");
        assert_eq!(s.ballooned_pages, Some(b.actual_pages));
        b
    }

    fn set(&self, mib: u64) -> Response {
        self.api(&Request::Balloon { target_mib: mib })
    }

    /// Polls `stats` until the actual size equals `pages` (the target).
    fn wait_actual(&self, pages: u64) -> BalloonReply {
        let deadline = Instant::now() + WAIT;
        loop {
            let b = self.balloon();
            if b.actual_pages == pages {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "the balloon did not reach {pages} pages in {WAIT:?}: {b:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The VMM process's resident set in KiB (`VmRSS`).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

/// Refused requests, well-formed (above RAM, above the largest RAM) and malformed: each
/// gets an error and the target, its generation and the actual size stay as they were.
fn refusals_change_nothing(vm: &Vm) {
    let before = vm.balloon();
    let r = vm.set(129);
    assert!(!r.ok, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.contains("larger than the guest's RAM of"), "{e}");
    assert!(e.contains("nothing changed"), "{e}");
    let malformed: &[&[u8]] = &[
        b"{\"op\":\"balloon\"}\n",
        b"{\"op\":\"balloon\",\"target_mib\":\"64\"}\n",
        b"{\"op\":\"balloon\",\"target_mib\":-1}\n",
        b"{\"op\":\"balloon\",\"target_mib\":64,\"now\":true}\n",
        b"{\"op\":\"balloon\",\"target_mib\":99999999}\n",
        b"{\"op\":\"balloon\",\"target_mib\":1.5}\n",
    ];
    for m in malformed {
        let reply = send_raw(&vm.api, m).unwrap();
        let r: Response = serde_json::from_str(&reply).unwrap();
        assert!(!r.ok && r.error.is_some(), "{reply}");
    }
    let after = vm.balloon();
    assert_eq!(
        (after.target_pages, after.generation, after.actual_pages),
        (before.target_pages, before.generation, before.actual_pages)
    );
}

/// `balloon: target T gen G: +I -D, B ballooned` lines the guest printed: (T, G, I, D, B).
fn moves(lines: &[String]) -> Vec<(u64, u64, u64, u64, u64)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("balloon: target ")?;
            let n: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            match n[..] {
                [t, g, i, d, b, ..] => Some((t, g, i, d, b)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn the_guest_follows_the_host_target_and_a_restore_keeps_it() {
    if !common::builtin_ready() {
        return;
    }
    let d = common::fresh_dir("pvkit-balloon-target", "follow");
    // `balloon_touch`: the guest writes every page of its balloon region first, so the
    // host backs it and the inflates give real memory back.
    let mut vm = Vm::boot(&d, "a", "balloon_follow balloon_touch");
    vm.wait_for("balloon: touched ");
    vm.wait_for("counter 2 ");
    let rss_before = vm.rss_kib();
    let b = vm.balloon();
    assert_eq!((b.target_pages, b.actual_pages, b.generation), (0, 0, 0));
    assert!(b.target_read, "the follower reads the (initial) target");

    // 64 MiB: accepted, and the guest inflates to it in batches of 2048 pages.
    let r = vm.set(64);
    assert!(r.ok, "{r:?}");
    let set = r.balloon.unwrap();
    assert_eq!(
        (set.target_pages, set.target_mib, set.generation),
        (PAGES_64_MIB, 64, 1)
    );
    let b = vm.wait_actual(PAGES_64_MIB);
    assert_eq!((b.target_pages, b.actual_mib), (PAGES_64_MIB, 64));
    assert!(b.target_read);
    // Exactly ⌈16384 / 2048⌉ inflate calls, no deflate.
    assert_eq!(
        (b.inflate_calls, b.deflate_calls),
        (PAGES_64_MIB / BATCH, 0)
    );
    // The host got the memory back: the VMM's RSS fell by at least 90 % of 64 MiB.
    let rss_after = vm.rss_kib();
    assert!(
        rss_before.saturating_sub(rss_after) >= 64 * 1024 * 9 / 10,
        "RSS {rss_before} KiB before, {rss_after} KiB after 64 MiB were ballooned"
    );
    refusals_change_nothing(&vm);

    // A snapshot keeps the target (and the ballooned pages, which are holes).
    assert!(vm.api(&Request::Pause).ok);
    let snap = d.join("snap");
    let r = vm.api(&Request::Snapshot { dir: snap.clone() });
    assert!(r.ok, "{r:?}");
    assert_eq!(r.snapshot.unwrap().ballooned_pages, PAGES_64_MIB);
    let lines = vm.terminate();
    let m = moves(&lines);
    assert_eq!(
        m.iter().filter(|x| x.1 == 1).map(|x| x.2).sum::<u64>(),
        PAGES_64_MIB,
        "{m:?}"
    );
    assert!(m.iter().all(|x| x.2 <= BATCH && x.3 == 0), "{m:?}");

    // The restored guest sees the same target and generation; 0 deflates it all (the guest
    // checks that every deflated page reads zero, else it panics and prints no more moves).
    let snap_arg = snap.to_str().unwrap();
    let mut vm = Vm::start_named(&d, "b", &["--restore", snap_arg]);
    let b = vm.balloon();
    assert_eq!(
        (b.target_pages, b.generation, b.actual_pages),
        (PAGES_64_MIB, 1, PAGES_64_MIB)
    );
    let r = vm.set(0);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.balloon.unwrap().generation, 2);
    let b = vm.wait_actual(0);
    assert_eq!(b.target_pages, 0);
    // The restored VM's counts start at zero: exactly 8 deflates, no inflate.
    assert_eq!(
        (b.inflate_calls, b.deflate_calls),
        (0, PAGES_64_MIB / BATCH)
    );
    refusals_change_nothing(&vm);
    vm.wait_for("balloon: target 0 gen 2: +0 -2048");
    let lines = vm.terminate();
    let m = moves(&lines);
    assert_eq!(
        m.iter().filter(|x| x.1 == 2).map(|x| x.3).sum::<u64>(),
        PAGES_64_MIB,
        "{m:?}"
    );
    assert_eq!(m.last().map(|x| x.4), Some(0), "{m:?}");
}

#[test]
fn a_guest_that_does_not_follow_keeps_its_memory() {
    if !common::builtin_ready() {
        return;
    }
    let d = common::fresh_dir("pvkit-balloon-target", "nofollow");
    let mut vm = Vm::boot(&d, "a", "");
    vm.wait_for("counter 2 ");
    let r = vm.set(64);
    assert!(
        r.ok,
        "a target is accepted whether or not the guest follows: {r:?}"
    );
    // Ten more steps (≥ 200 ms of guest time) in which a follower would have moved.
    vm.wait_for("counter 12 ");
    let b = vm.balloon();
    assert_eq!((b.target_pages, b.actual_pages), (PAGES_64_MIB, 0));
    assert!(
        !b.target_read,
        "stats says the guest never read the target: {b:?}"
    );
    assert_eq!((b.inflate_calls, b.deflate_calls), (0, 0));
    let lines = vm.terminate();
    assert!(moves(&lines).is_empty());
}
