//! Live migration under real KVM over loopback TCP, with the built-in guest's migration
//! workload (guest-kernel/src/workload.rs: a printed counter, a dirtied working set, PV
//! block writes acknowledged on the console, free-page hints with `hints`).
//!
//! The source is `pvkit run --api SOCK` (the migration is the control API's `migrate`
//! request, as `pvkit ctl SOCK migrate HOST:PORT` sends it), the target `pvkit run
//! --incoming ADDR --stats`. Checked: the counter continues on the target with no gap and
//! no repeat; every acknowledged disk write is on the disk at the end; the exits of the
//! whole run (source up to the pause + target, the ledger travels with the state) are
//! exactly what the guest did; the source exits 0 only after the hand-over; with hints the
//! bytes sent drop by at least the guest's free fraction. A truncated or corrupt stream is
//! refused by the target, which runs nothing, and a refused migration leaves the source
//! running to its normal end.

mod common;

use common::net_echo::{assert_echoes_continued, net_done};

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::running::{free_port, Running, WAIT};
use pvkit_cli::lifecycle::workload;

use pvkit_vmm::api::client::send;
use pvkit_vmm::api::request::{MigrationReply, Request};
use pvkit_vmm::migration::stream::{Header, StreamWriter};

/// Ticks of the workload, each at least [`TICK_MS`] of PV clock time: the migration comes
/// after [`MIGRATE_AT`] of them and the guest needs seconds for the rest whatever the
/// host's speed, so the migration happens mid-run.
const TICKS: u64 = 4000;
const TICK_MS: u64 = 1;
const MIGRATE_AT: u64 = 300;
const MEM_MIB: u64 = 128;

fn dir(name: &str) -> PathBuf {
    common::fresh_dir("pvkit-migrate", name)
}

/// The ticks printed, in order.
fn ticks(lines: &[String]) -> Vec<u64> {
    workload::ticks(&lines.join("\n"))
}

/// `ack TICK lba LBA` lines: the last acknowledged tick per sector.
fn acks(lines: &[String]) -> BTreeMap<u64, u64> {
    workload::acks(&lines.join("\n"))
}

/// The count of one exit kind in a `--stats` report on stderr (0 if absent).
fn stat(stderr: &str, kind: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let (n, k) = l.trim().split_once("  ")?;
            (k.trim() == kind).then(|| n.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// `workload: free START..END MIB MiB hints=…` → MiB.
fn free_mib(lines: &[String]) -> u64 {
    workload::free_mib(&lines.join("\n")).expect("the workload's free line")
}

struct Migrated {
    reply: MigrationReply,
    source: Vec<String>,
    target: Vec<String>,
    target_err: String,
    disk: PathBuf,
}

/// A migration key file in `d`: 32 bytes from `seed`, mode 600.
fn key_file(d: &Path, seed: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = d.join(format!("key{seed}"));
    let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ seed).collect();
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// `--migration-key FILE`, or nothing.
fn key_args(key: Option<&Path>) -> Vec<&str> {
    match key {
        Some(k) => vec!["--migration-key", k.to_str().unwrap()],
        None => Vec::new(),
    }
}

/// Source with the workload, target waiting; migrates after [`MIGRATE_AT`] ticks. With
/// `key`, both sides are started with it.
fn migrate_pair(name: &str, hints: bool, key: Option<&Path>) -> Migrated {
    let d = dir(name);
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let api = d.join("api.sock");
    let to = free_port();
    let to_s = to.to_string();
    let mut target_args = vec!["run", "--incoming", &to_s, "--stats", "--timeout", "120"];
    target_args.extend(key_args(key));
    let mut target = Running::start(&target_args);
    target.wait_listening();
    let cmdline = format!(
        "workload={TICKS} workload_ms={TICK_MS} workload_disk{}",
        if hints { " hints" } else { "" }
    );
    let mut source_args = vec![
        "run",
        "--console",
        "pv",
        "--disk",
        disk.to_str().unwrap(),
        "--api",
        api.to_str().unwrap(),
        "--timeout",
        "120",
    ];
    source_args.extend(key_args(key));
    source_args.extend(["--", &cmdline]);
    let mut source = Running::start(&source_args);
    source.wait_for(&format!("tick {MIGRATE_AT}"));
    let reply = send(&api, &Request::Migrate { dest: to_s.clone() }).expect("API reply");
    assert!(reply.ok, "{reply:?}");
    let reply = reply.migration.expect("the migration's figures");
    let (scode, source, serr) = source.finish();
    assert_eq!(scode, 0, "{serr}");
    assert!(serr.contains("live-migrated to"), "{serr}");
    eprintln!("{name}: {}", serr.trim());
    let (tcode, target, target_err) = target.finish();
    assert_eq!(tcode, 0, "{target_err}");
    assert_eq!(
        target_err.contains("unauthenticated"),
        key.is_none(),
        "the target warns exactly when it has no key: {target_err}"
    );
    Migrated {
        reply,
        source,
        target,
        target_err,
        disk,
    }
}

fn check(m: &Migrated, hints: bool) {
    // The counter: every tick exactly once, in order, across both hosts.
    let mut all = ticks(&m.source);
    let first_here = ticks(&m.target);
    assert!(!first_here.is_empty(), "the target printed no tick");
    let last_there = *all.last().unwrap();
    assert!(last_there >= MIGRATE_AT);
    assert_eq!(
        first_here[0],
        last_there + 1,
        "a gap or a repeat at the hand-over"
    );
    all.extend(&first_here);
    assert_eq!(all, (0..TICKS).collect::<Vec<_>>());
    assert_eq!(m.target.last().unwrap(), &format!("workload: done {TICKS}"));
    // Every acknowledged write, on either host, is on the disk (the last per sector).
    let mut acked = acks(&m.source);
    acked.extend(acks(&m.target));
    assert_eq!(acked.len(), 64, "every sector slot written");
    let disk = std::fs::read(&m.disk).unwrap();
    for (lba, tick) in &acked {
        let at = (*lba * 512) as usize;
        let want: Vec<u8> = tick.to_le_bytes().repeat(64);
        assert_eq!(
            disk[at..at + 512],
            want[..],
            "sector {lba}, acknowledged at tick {tick}"
        );
    }
    // Exact exits of the whole run: the ledger travels in the state, the target counts on.
    let acks_total = TICKS.div_ceil(4);
    let lines = TICKS + acks_total + 3; // + banner, free line, done line
    let e = &m.target_err;
    assert_eq!(stat(e, "hypercall console_write"), lines, "{e}");
    assert_eq!(stat(e, "hypercall block_io"), acks_total, "{e}");
    assert_eq!(
        stat(e, "hypercall free_page_hint"),
        if hints { TICKS } else { 0 },
        "{e}"
    );
    assert_eq!(stat(e, "hypercall exit"), 1, "{e}");
    // The PV clock page the paced ticks read.
    assert_eq!(stat(e, "hypercall register_region"), 1, "{e}");
    // The figures.
    let r = &m.reply;
    assert!(r.rounds >= 2 && r.rounds <= 9, "{r:?}");
    assert!(r.downtime_us > 0 && r.downtime_us <= r.total_us, "{r:?}");
    assert_eq!(r.hinted_pages == 0, !hints, "{r:?}");
}

#[test]
fn the_workload_migrates_with_and_without_free_page_hints() {
    if !common::builtin_ready() {
        return;
    }
    let with = migrate_pair("hints", true, None);
    check(&with, true);
    let without = migrate_pair("nohints", false, None);
    check(&without, false);
    let free = free_mib(&with.source) as f64 / MEM_MIB as f64;
    let (b_with, b_without) = (with.reply.bytes as f64, without.reply.bytes as f64);
    eprintln!(
        "free fraction {free:.3}; bytes with hints {b_with}, without {b_without}; \
         with: {:?}; without: {:?}",
        with.reply, without.reply
    );
    assert!(
        b_with <= b_without * (1.0 - free),
        "hints saved less than the free fraction {free:.3}: {b_with} vs {b_without}"
    );
}

#[test]
fn the_workload_migrates_with_a_migration_key_on_both_sides() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("keyed-files");
    let key = key_file(&d, 1);
    let m = migrate_pair("keyed", true, Some(&key));
    check(&m, true);
}

/// A source started with `source_key` asks to migrate to a target with `target_key`:
/// the reply names `source_says`, the target exits 1 naming `target_says` and runs
/// nothing, and the source is not paused.
fn key_refused(api: &Path, target_key: Option<&Path>, source_says: &str, target_says: &str) {
    let to_s = free_port().to_string();
    let mut target_args = vec!["run", "--incoming", &to_s, "--timeout", "60"];
    target_args.extend(key_args(target_key));
    let mut target = Running::start(&target_args);
    target.wait_listening();
    let reply = send(api, &Request::Migrate { dest: to_s }).expect("API reply");
    assert!(!reply.ok, "{reply:?}");
    let msg = reply.error.unwrap();
    assert!(
        msg.contains(source_says) && msg.contains("runs on"),
        "{msg}"
    );
    let (tcode, tout, terr) = target.finish();
    assert_eq!(tcode, 1, "{terr}");
    assert!(tout.is_empty(), "the guest ran on the target: {tout:?}");
    assert!(
        terr.contains(target_says) && terr.contains("refused"),
        "{terr}"
    );
    let st = send(api, &Request::Stats)
        .expect("API reply")
        .stats
        .unwrap();
    assert!(!st.paused, "a refused migration leaves the source running");
}

#[test]
fn a_wrong_key_or_a_key_on_one_side_only_is_refused_and_the_source_runs_on() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("key-refused");
    let (key, other) = (key_file(&d, 1), key_file(&d, 2));
    for source_key in [Some(&key), None] {
        let api = d.join(format!("api-{}.sock", source_key.is_some()));
        let mut args = vec!["run", "--console", "pv", "--api", api.to_str().unwrap()];
        args.extend(key_args(source_key.map(PathBuf::as_path)));
        args.extend(["--timeout", "120", "--", "workload=3000 workload_ms=1"]);
        let mut source = Running::start(&args);
        source.wait_for("tick 200");
        match source_key {
            Some(_) => {
                key_refused(
                    &api,
                    Some(&other),
                    "wrong migration key",
                    "wrong migration key",
                );
                key_refused(&api, None, "started without one", "this target has none");
            }
            None => key_refused(
                &api,
                Some(&key),
                "requires a migration key",
                "carries no MAC",
            ),
        }
        let (scode, sout, serr) = source.finish();
        assert_eq!(scode, 0, "{serr}");
        assert_eq!(
            ticks(&sout),
            (0..3000).collect::<Vec<_>>(),
            "the source's counter"
        );
    }
    // A key file others may read, or too short, is refused at start with the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let to_s = free_port().to_string();
    let args = [
        "run",
        "--incoming",
        &to_s,
        "--migration-key",
        other.to_str().unwrap(),
    ];
    let (code, _, err) = Running::start(&args).finish();
    assert_ne!(code, 0);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::write(&other, [1u8; 16]).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = Running::start(&args).finish();
    assert_ne!(code, 0);
    assert!(err.contains("head -c 32 /dev/urandom"), "{err}");
}

/// A target that gets `bytes` and then the connection closes: it must refuse, exit 1 and
/// run nothing.
fn refused_stream(name: &str, bytes: &[u8], why: &str) {
    let to = free_port();
    let to_s = to.to_string();
    let target = Running::start(&["run", "--incoming", &to_s, "--timeout", "60"]);
    let t = Instant::now();
    let mut c = loop {
        match TcpStream::connect(to) {
            Ok(c) => break c,
            Err(_) if t.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{name}: {e}"),
        }
    };
    c.write_all(bytes).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (code, out, err) = target.finish();
    assert_eq!(code, 1, "{name}: {err}");
    assert!(out.is_empty(), "{name}: the guest ran: {out:?}");
    assert!(err.contains(why), "{name}: {err}");
    assert!(err.contains("refused"), "{name}: {err}");
    assert!(err.contains("unauthenticated"), "{name}: no warning: {err}");
}

#[test]
fn a_truncated_or_corrupt_stream_is_refused_and_a_refused_migration_leaves_the_source_running() {
    if !common::builtin_ready() {
        return;
    }
    let mut w = StreamWriter::new(
        Vec::new(),
        Header {
            ram_bytes: MEM_MIB << 20,
            authenticated: false,
        },
    )
    .unwrap();
    w.pages(0x300, &[0x5a; 8192]).unwrap();
    w.round(1, 2).unwrap();
    w.state(b"not a real state file").unwrap();
    let (good, _) = w.end().unwrap();
    refused_stream("truncated", &good[..good.len() / 2], "truncated");
    let mut corrupt = good.clone();
    corrupt[100] ^= 1;
    refused_stream("corrupt", &corrupt, "checksum");
    refused_stream(
        "garbage",
        b"GET / HTTP/1.1\r\n\r\n and some more bytes",
        "magic",
    );

    // A real source, a target with another RAM size: refused, and the source runs on.
    let d = dir("refused");
    let api = d.join("api.sock");
    let to = free_port();
    let to_s = to.to_string();
    let mut target = Running::start(&["run", "--incoming", &to_s, "--mem", "64"]);
    target.wait_listening();
    let mut source = Running::start(&[
        "run",
        "--console",
        "pv",
        "--api",
        api.to_str().unwrap(),
        "--timeout",
        "120",
        "--",
        "workload=3000 workload_ms=1 hints",
    ]);
    source.wait_for("tick 200");
    let reply = send(&api, &Request::Migrate { dest: to_s }).expect("API reply");
    assert!(!reply.ok, "{reply:?}");
    let msg = reply.error.unwrap();
    assert!(msg.contains("RAM") && msg.contains("runs on"), "{msg}");
    let (tcode, tout, terr) = target.finish();
    assert_eq!(tcode, 1, "{terr}");
    assert!(tout.is_empty());
    // Nobody listening any more: refused at connect, the source still runs.
    let reply = send(
        &api,
        &Request::Migrate {
            dest: to.to_string(),
        },
    )
    .expect("API reply");
    assert!(
        !reply.ok && reply.error.as_deref().unwrap_or("").contains("connect"),
        "{reply:?}"
    );
    let (scode, sout, serr) = source.finish();
    assert_eq!(scode, 0, "{serr}");
    assert_eq!(
        ticks(&sout),
        (0..3000).collect::<Vec<_>>(),
        "the source's counter"
    );
    assert_eq!(sout.last().unwrap(), "workload: done 3000");
}

/// UDP echoes over the PV NIC (loopback peer, `pvnet=path`) migrated mid-run: the target,
/// given the same NIC, finishes them, each answered exactly once.
fn echo_migrates(path: &str) {
    const COUNT: u64 = 20_000;
    let d = dir(&format!("pv-nic-{path}"));
    let api = d.join("api.sock");
    let to = free_port();
    let to_s = to.to_string();
    let nic = ["--net", "loopback", "--nic", "pv"];
    let mut target_args = vec!["run", "--incoming", &to_s, "--timeout", "120"];
    target_args.extend(nic);
    let mut target = Running::start(&target_args);
    target.wait_listening();
    let cmdline = format!("net=echo count={COUNT} pvnet={path}");
    let mut source_args = vec!["run", "--api", api.to_str().unwrap(), "--timeout", "120"];
    source_args.extend(nic);
    source_args.extend(["--", &cmdline]);
    let mut source = Running::start(&source_args);
    source.wait_for("net: PV NIC ");
    // Mid-run: ~2500-3500 echoes a second here, COUNT take seconds.
    std::thread::sleep(Duration::from_millis(300));
    let reply = send(&api, &Request::Migrate { dest: to_s.clone() }).expect("API reply");
    assert!(reply.ok, "{path}: {reply:?}");
    let (scode, before, serr) = source.finish();
    assert_eq!(scode, 0, "{path}: {serr}");
    assert!(serr.contains("live-migrated to"), "{path}: {serr}");
    assert!(
        net_done(&before).is_none(),
        "{path}: migrated after the echoes ended: {before:?}"
    );
    let (tcode, after, terr) = target.finish();
    assert_eq!(tcode, 0, "{path}: {terr}\n{after:?}");
    assert_echoes_continued(path, &after, COUNT);
}

#[test]
fn udp_echoes_over_the_pv_nic_continue_on_the_target() {
    if !common::builtin_ready() {
        return;
    }
    for path in ["doorbell", "eventfd", "poll", "irq"] {
        echo_migrates(path);
    }
}

#[test]
fn a_target_without_the_sources_nic_refuses_the_vm() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("pv-nic-missing");
    let api = d.join("api.sock");
    let to = free_port();
    let to_s = to.to_string();
    let mut target = Running::start(&["run", "--incoming", &to_s, "--timeout", "60"]);
    target.wait_listening();
    let mut source = Running::start(&[
        "run",
        "--api",
        api.to_str().unwrap(),
        "--timeout",
        "120",
        "--net",
        "loopback",
        "--nic",
        "pv",
        "--",
        "net=echo count=2000000",
    ]);
    source.wait_for("net: PV NIC ");
    let reply = send(&api, &Request::Migrate { dest: to_s }).expect("API reply");
    assert!(!reply.ok, "{reply:?}");
    let (tcode, _, terr) = target.finish();
    assert_ne!(tcode, 0);
    assert!(terr.contains("--net loopback --nic pv"), "{terr}");
    // The source runs on: it still answers and is not paused.
    let st = send(&api, &Request::Stats)
        .expect("API reply")
        .stats
        .unwrap();
    assert!(!st.paused, "a refused migration leaves the source running");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(source.child.id() as i32, libc::SIGTERM) };
    let _ = source.finish();
}

/// `counter I t=NS` lines (the built-in guest's `counter=` mode): the steps, in order.
fn counter_steps(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix("counter ")?
                .split_once(" t=")?
                .0
                .parse()
                .ok()
        })
        .collect()
}

/// A 2-vCPU VM (the counter with `cpus=2`: CPU 1 answers every step from its own running
/// sum, which the guest checks at every step) migrates mid-run: both vCPUs are paused,
/// captured and restored on the target, where CPU 1 goes on answering from the same sum.
/// Checked: every step exactly once across both hosts, CPU 1's final sum, and the exact
/// exits of the whole run.
#[test]
fn a_two_vcpu_guest_migrates_with_both_vcpus() {
    if !common::builtin_ready() {
        return;
    }
    // Steps of at least 5 ms of PV clock time: seconds left after the migration starts.
    const STEPS: u64 = 1000;
    const AT: u64 = 40;
    let d = dir("smp");
    let api = d.join("api.sock");
    let to_s = free_port().to_string();
    let mut target = Running::start(&["run", "--incoming", &to_s, "--stats", "--timeout", "120"]);
    target.wait_listening();
    let cmdline = format!("counter={STEPS} counter_ms=5 cpus=2");
    let mut source = Running::start(&[
        "run",
        "--console",
        "pv",
        "--vcpus",
        "2",
        "--api",
        api.to_str().unwrap(),
        "--timeout",
        "120",
        "--",
        &cmdline,
    ]);
    source.wait_for(&format!("counter {AT} "));
    let reply = send(&api, &Request::Migrate { dest: to_s }).expect("API reply");
    assert!(reply.ok, "{reply:?}");
    let figures = reply.migration.expect("the migration's figures");
    eprintln!("2 vCPUs: {figures:?}");
    assert!(figures.downtime_us > 0 && figures.downtime_us <= figures.total_us);
    let (scode, source, serr) = source.finish();
    assert_eq!(scode, 0, "{serr}");
    assert!(serr.contains("live-migrated to"), "{serr}");
    let (tcode, target, e) = target.finish();
    assert_eq!(tcode, 0, "{e}");
    let (there, here) = (counter_steps(&source), counter_steps(&target));
    assert!(!here.is_empty(), "the target printed no step");
    assert!(*there.last().unwrap() >= AT);
    let mut all = there;
    all.extend(&here);
    assert_eq!(all, (1..=STEPS).collect::<Vec<_>>(), "a gap or a repeat");
    let sum = format!("counter cpu1 sum={}", STEPS * (STEPS + 1) / 2);
    assert_eq!(target[target.len() - 2..], [sum, "counter done".to_owned()]);
    // The exits of the whole run (the ledger travels with the state): the clock page, one
    // `VcpuUp` and the wake-up of CPU 1's thread, a line per step, the sum and `counter
    // done`, `Exit`; the migration's pause costs one interrupted `KVM_RUN` per vCPU.
    assert_eq!(stat(&e, "hypercall console_write"), STEPS + 2, "{e}");
    assert_eq!(stat(&e, "hypercall vcpu_up"), 1, "{e}");
    assert_eq!(stat(&e, "hypercall register_region"), 1, "{e}");
    assert_eq!(stat(&e, "hypercall exit"), 1, "{e}");
    assert_eq!(stat(&e, "interrupted (signal)"), 1 + 2, "{e}");
    let total: u64 = e
        .lines()
        .find_map(|l| l.trim().strip_prefix("total exits:")?.trim().parse().ok())
        .expect("the total in the --stats report");
    assert_eq!(total, STEPS + 8, "{e}");
}
