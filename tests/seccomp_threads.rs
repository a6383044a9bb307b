//! Every thread of a running `pvkit` that handles guest-controlled or network data runs
//! under its own seccomp filter (docs/SECURITY.md, "Confinement", the thread table), and the
//! VM still works under them. Each test starts `pvkit run` with the threads it is about,
//! makes each of them do its job, then reads `/proc/PID/task/*/status`: every thread but
//! the main thread (`pvkit`, documented as unconfined) shows `Seccomp: 2`; kernel workers
//! in the thread group (KVM's `kvm-nx-lpage-re`) are reported, not judged.
//!
//! - NE2000 on a TAP device in a namespace the test creates, `--gdb`, `--api`, the console
//!   writer: a gdb client reads the registers and continues, a console line arrives, a
//!   ping over TAP is answered, an API request is served; SIGTERM still stops it with 143.
//! - the PV NIC on TAP (`pvkit-pvnet`), the same checks but gdb; and `--no-seccomp`, under
//!   which no thread is confined.
//! - `--migrate-to`: the migration thread is confined while it waits, and the migration
//!   still succeeds (the target takes over, the source exits 0).
//! - `pvkit fleet`: the readers of the members' output are confined while they run.
//!
//! The TAP tests need root (to create the namespace): without it they skip with a note,
//! except under `CI=true`, where they fail.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::threads::{describe, threads, ThreadStatus};
use pvkit_net::ping::Pinger;
use pvkit_vmm::api::client::send;
use pvkit_vmm::api::request::Request;

/// Generous bound for anything a test waits for (expected: well under a second each, a
/// boot to the guest's first line about a second on kvm_pvm).
const WAIT: Duration = Duration::from_secs(60);

/// The main thread's name: documented as unconfined (docs/SECURITY.md, "Limits").
const MAIN_THREAD: &str = "pvkit";

/// A running `pvkit` with its stdout and stderr read line by line.
struct Running {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    seen_out: Vec<String>,
    seen_err: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pvkit");
        let out = common::line_channel(child.stdout.take().expect("stdout"));
        let err = common::line_channel(child.stderr.take().expect("stderr"));
        Self {
            child,
            out,
            err,
            seen_out: Vec::new(),
            seen_err: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stdout (`stderr` false) or stderr line starting with `prefix`.
    fn wait_line(&mut self, stderr: bool, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (rx, seen) = match stderr {
                true => (&self.err, &mut self.seen_err),
                false => (&self.out, &mut self.seen_out),
            };
            match rx.recv_timeout(left) {
                Ok(l) => {
                    seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(e) => panic!(
                    "no line {prefix:?} on {} ({e}); stdout {:?}; stderr {:?}",
                    if stderr { "stderr" } else { "stdout" },
                    self.seen_out,
                    self.seen_err
                ),
            }
        }
    }

    /// SIGTERM, then waits for the end: the exit status and all of stderr.
    fn terminate(mut self) -> (i32, String) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            assert!(t.elapsed() < WAIT, "pvkit ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(l) = self.err.recv_timeout(Duration::from_secs(5)) {
            self.seen_err.push(l);
        }
        let err = self.seen_err.join("\n");
        let code = status
            .code()
            .unwrap_or_else(|| panic!("pvkit died by a signal: {status}; {err}"));
        (code, err)
    }
}

/// Asserts that every thread named in `expected` exists, and that every thread but the
/// main thread and kernel workers is confined (`Seccomp: 2`); the main thread is not.
fn assert_confined(ts: &[ThreadStatus], expected: &[&str]) {
    let all = describe(ts);
    for name in expected {
        assert!(
            ts.iter().any(|t| t.name == *name),
            "no thread {name}; threads: {all}"
        );
    }
    let unconfined: Vec<&str> = ts
        .iter()
        .filter(|t| t.name != MAIN_THREAD && !t.kernel_worker && t.mode != 2)
        .map(|t| t.name.as_str())
        .collect();
    assert!(
        unconfined.is_empty(),
        "threads without a seccomp filter: {unconfined:?}; threads: {all}"
    );
    let main: Vec<&ThreadStatus> = ts.iter().filter(|t| t.name == MAIN_THREAD).collect();
    assert_eq!(main.len(), 1, "one main thread; threads: {all}");
    assert_eq!(main[0].mode, 0, "the main thread is not confined; {all}");
}

/// Waits until the threads named in `names` all exist (a thread names itself as it
/// starts and confines itself right after), then returns the threads' status.
fn threads_once_started(pid: u32, names: &[&str]) -> Vec<ThreadStatus> {
    let t = Instant::now();
    loop {
        let ts = threads(pid);
        if names.iter().all(|n| ts.iter().any(|t| t.name == *n)) {
            // Each confines itself first thing: give the last one a moment.
            std::thread::sleep(Duration::from_millis(200));
            return threads(pid);
        }
        assert!(
            t.elapsed() < WAIT,
            "threads {names:?} never appeared: {}",
            describe(&ts)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pings the guest (in the current thread's namespace) until it answers.
fn ping_until_answered() -> bool {
    let p = Pinger::new().expect("a raw ICMP socket");
    let t = Instant::now();
    let mut seq = 0u16;
    while t.elapsed() < WAIT {
        seq = seq.wrapping_add(1);
        if common::tap_peer::ping(&p, seq, Duration::from_millis(500)) {
            return true;
        }
    }
    false
}

/// A minimal GDB remote-protocol client: `$data#cs` packets, acknowledged.
struct Rsp(TcpStream);

impl Rsp {
    fn connect(addr: &str) -> Self {
        let s = TcpStream::connect(addr).expect("connect to pvkit's gdb server");
        s.set_read_timeout(Some(WAIT)).unwrap();
        Self(s)
    }

    fn send(&mut self, data: &str) {
        let cs = data.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.0, "${data}#{cs:02x}").unwrap();
        let mut ack = [0u8];
        self.0.read_exact(&mut ack).expect("the ack");
        assert_eq!(ack[0], b'+', "ack of {data}");
    }

    /// The next packet's data (run-length encoding left as it is).
    fn recv(&mut self) -> String {
        let mut b = [0u8];
        loop {
            self.0.read_exact(&mut b).expect("a reply");
            if b[0] == b'$' {
                break;
            }
        }
        let mut data = Vec::new();
        loop {
            self.0.read_exact(&mut b).expect("a reply");
            if b[0] == b'#' {
                break;
            }
            data.push(b[0]);
        }
        let mut cs = [0u8; 2];
        self.0.read_exact(&mut cs).expect("the checksum");
        self.0.write_all(b"+").unwrap();
        String::from_utf8(data).expect("ASCII reply")
    }

    fn ask(&mut self, data: &str) -> String {
        self.send(data);
        self.recv()
    }
}

/// Sends one `stats` request to the API socket: answered by the confined API thread.
fn api_stats(api: &Path) {
    let reply = send(api, &Request::Stats).expect("an API reply");
    assert!(reply.ok, "{reply:?}");
}

#[test]
fn console_tap_gdb_and_api_threads_are_confined_and_work() {
    if !common::builtin_ready() {
        return;
    }
    let Some(ns) = common::tap_peer::netns("pvkit-sct", "ne") else {
        return;
    };
    let nsname = ns.name().expect("a named namespace").to_owned();
    let api = common::fresh_dir("pvkit-sct", "ne").join("api.sock");
    let mut vm = Running::start(&[
        "run",
        "--net",
        "tap",
        "--netns",
        &nsname,
        "--api",
        api.to_str().unwrap(),
        "--gdb",
        "127.0.0.1:0",
        "--timeout",
        "120",
        "--",
        "net=serve",
    ]);
    let line = vm.wait_line(true, "pvkit: gdb: waiting for a connection on ");
    let addr = line.rsplit(' ').next().expect("an address").to_owned();
    // The gdb thread: the stop reason and the registers (vCPU ioctls on its duplicate fd)
    // under its filter, then continue.
    let mut gdb = Rsp::connect(&addr);
    let why = gdb.ask("?");
    assert!(why.starts_with('S') || why.starts_with('T'), "{why}");
    let regs = gdb.ask("g");
    // Run-length encoded: at least the 16 general registers in some form, not an error.
    assert!(regs.len() > 16 && !regs.starts_with('E'), "{regs}");
    gdb.send("c");
    // The console writer thread: the guest's first line reaches stdout.
    vm.wait_line(false, "net: ");
    // The TAP event loop (`pvkit-net`): the guest answers a ping.
    assert!(
        ns.run_in(ping_until_answered)
            .expect("run in the namespace"),
        "the guest never answered a ping over TAP"
    );
    // The API thread.
    api_stats(&api);
    let ts = threads_once_started(
        vm.pid(),
        &[
            "pvkit-vcpu0",
            "pvkit-console",
            "pvkit-net",
            "pvkit-gdb",
            "pvkit-api",
        ],
    );
    assert_confined(
        &ts,
        &[
            "pvkit-vcpu0",
            "pvkit-console",
            "pvkit-net",
            "pvkit-gdb",
            "pvkit-api",
        ],
    );
    // A second ping after the look: the filters hold while the VM keeps working.
    assert!(ns
        .run_in(ping_until_answered)
        .expect("run in the namespace"));
    let (code, err) = vm.terminate();
    assert_eq!(code, 143, "{err}");
    assert!(err.contains("pvkit: stopped by SIGTERM"), "{err}");
    assert!(!err.contains("seccomp:"), "{err}");
    // The client hears of the end: the gdb thread's `X` (terminated), or the connection
    // closed by the process's exit if that came first (nothing waits for the gdb thread).
    let mut rest = Vec::new();
    let _ = gdb.0.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("$X") || rest.starts_with("$W"),
        "{rest}"
    );
}

/// Starts the PV NIC on TAP with the API, pings the guest, reads the threads, stops it.
fn pv_nic_run(tag: &str, extra: &[&str]) -> Option<(Vec<ThreadStatus>, i32, String)> {
    let ns = common::tap_peer::netns("pvkit-sct", tag)?;
    let nsname = ns.name().expect("a named namespace").to_owned();
    let api = common::fresh_dir("pvkit-sct", tag).join("api.sock");
    let mut args = vec![
        "run",
        "--net",
        "tap",
        "--nic",
        "pv",
        "--netns",
        &nsname,
        "--api",
        api.to_str().unwrap(),
        "--timeout",
        "120",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "net=serve"]);
    let mut vm = Running::start(&args);
    vm.wait_line(false, "net: ");
    assert!(
        ns.run_in(ping_until_answered)
            .expect("run in the namespace"),
        "the guest never answered a ping over TAP (PV NIC)"
    );
    api_stats(&api);
    let ts = threads_once_started(
        vm.pid(),
        &["pvkit-vcpu0", "pvkit-console", "pvkit-pvnet", "pvkit-api"],
    );
    let (code, err) = vm.terminate();
    Some((ts, code, err))
}

#[test]
fn the_pv_nic_thread_is_confined_and_no_seccomp_confines_nothing() {
    if !common::builtin_ready() {
        return;
    }
    let Some((ts, code, err)) = pv_nic_run("pv", &[]) else {
        return;
    };
    assert_confined(
        &ts,
        &["pvkit-vcpu0", "pvkit-console", "pvkit-pvnet", "pvkit-api"],
    );
    assert_eq!(code, 143, "{err}");
    assert!(!err.contains("seccomp:"), "{err}");

    let Some((ts, code, err)) = pv_nic_run("pv-off", &["--no-seccomp"]) else {
        return;
    };
    let confined: Vec<&ThreadStatus> = ts.iter().filter(|t| t.mode != 0).collect();
    assert!(
        confined.is_empty(),
        "confined under --no-seccomp: {}",
        describe(&ts)
    );
    assert_eq!(code, 143, "{err}");
}

/// A free TCP port on loopback.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn the_migration_thread_is_confined_and_the_migration_succeeds() {
    if !common::builtin_ready() {
        return;
    }
    let to = free_port().to_string();
    let mut target = Running::start(&["run", "--incoming", &to, "--mem", "32", "--timeout", "120"]);
    target.wait_line(true, "pvkit: incoming migration: waiting on");
    let mut source = Running::start(&[
        "run",
        "--mem",
        "32",
        "--migrate-to",
        &to,
        "--migrate-after-ms",
        "1500",
        "--timeout",
        "120",
        "--",
        "spin",
    ]);
    // The migration thread confines itself before its wait.
    let ts = threads_once_started(source.pid(), &["pvkit-vcpu0", "pvkit-migrate"]);
    assert_confined(&ts, &["pvkit-vcpu0", "pvkit-console", "pvkit-migrate"]);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = source.child.try_wait().expect("wait") {
            break st;
        }
        assert!(t.elapsed() < WAIT, "the source did not end");
        std::thread::sleep(Duration::from_millis(10));
    };
    while let Ok(l) = source.err.recv_timeout(Duration::from_secs(5)) {
        source.seen_err.push(l);
    }
    let err = source.seen_err.join("\n");
    assert_eq!(status.code(), Some(0), "{err}");
    // The main thread's stop line (the migration thread's own summary line may be cut
    // off by the exit).
    assert!(
        err.contains(&format!("pvkit: the VM was live-migrated to {to}")),
        "{err}"
    );
    assert!(!err.contains("seccomp:"), "{err}");
    // The target runs the spinning guest on; SIGTERM ends it as any VM.
    let (code, err) = target.terminate();
    assert_eq!(code, 143, "{err}");
}

/// `pvkit fleet`: the readers of the members' output (`pvkit-fleet-rd`, two per member)
/// are confined while they run; the fleet still ends cleanly.
#[test]
fn the_fleet_output_readers_are_confined() {
    if !common::builtin_ready() {
        return;
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!common::ci(), "CI=true but the fleet needs root");
        eprintln!("note: skipping the fleet test (needs root)");
        return;
    }
    let json = common::fresh_dir("pvkit-sct", "fleet").join("fleet.json");
    let mut fleet = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(["fleet", "2", "--json", json.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvkit fleet");
    let err = common::line_channel(fleet.stderr.take().expect("stderr"));
    // Every look at the readers while the fleet runs (they live as long as the members).
    let mut looks: std::collections::BTreeMap<u32, Vec<ThreadStatus>> = Default::default();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = fleet.try_wait().expect("wait") {
            break st;
        }
        assert!(t.elapsed() < WAIT * 4, "pvkit fleet did not end");
        for r in threads(fleet.id()) {
            if r.name == "pvkit-fleet-rd" {
                looks.entry(r.tid).or_default().push(r);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err: Vec<String> = err.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{err:?}");
    let all: Vec<ThreadStatus> = looks.values().flatten().cloned().collect();
    assert!(!looks.is_empty(), "no reader seen");
    // A reader names itself as it starts and confines itself right after: only a look in
    // between (microseconds) may see it unconfined, so a reader's last look must see the
    // filter once it was seen twice.
    for (tid, ls) in &looks {
        let last = ls.last().expect("a look");
        assert!(
            ls.len() < 2 || last.mode == 2,
            "reader {tid} not confined: {}",
            describe(&all)
        );
    }
    assert!(
        all.iter().any(|r| r.mode == 2),
        "no reader confined: {}",
        describe(&all)
    );
}
