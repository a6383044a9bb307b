//! Console output never blocks the VMM on its stdout (issue 7, finding 5;
//! `host-vmm/src/io/console_out.rs`): `pvkit` runs with stdout a pipe that nobody reads (shrunk to
//! one page, so it is full within a few hundred bytes of guest output) while the built-in
//! guest writes without end through the UART, the PV console hypercall and the console ring
//! over doorbell exits and over an ioeventfd. The watchdog still ends the run with 124,
//! SIGTERM with 143, and the bytes that could not be written are counted, reported by
//! `--stats`, and add up exactly with the bytes that reached the pipe.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the built-in guest is built and KVM is usable (under CI: must be).
fn ready() -> bool {
    common::builtin_ready()
}

/// The most any run here may take. Expected: the timeout (2 s) plus the console's finish
/// grace (0.5 s) plus start-up, so ~3 s; 30 s is ≥ 10x that.
const BOUND: Duration = Duration::from_secs(30);

/// The four ways the guest floods the console: (name, `pvkit run` options, guest tokens).
const FLOODS: [(&str, &[&str], &[&str]); 4] = [
    ("uart", &["--console", "uart"], &["print=4096", "flood"]),
    (
        "pv hypercall",
        &["--console", "pv"],
        &["print=65536", "flood"],
    ),
    (
        "ring doorbell",
        &[],
        &["print=1048576", "flood", "ring=doorbell"],
    ),
    (
        "ring ioeventfd",
        &[],
        &["print=1048576", "flood", "ring=eventfd"],
    ),
];

/// Starts `pvkit run [opts] -- [guest]` with stdout a one-page pipe nobody reads (yet).
fn start(opts: &[&str], guest: &[&str]) -> (Child, ChildStdout) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(["run", "--mem", "16"])
        .args(opts)
        .arg("--")
        .args(guest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvkit");
    let out = child.stdout.take().expect("stdout");
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; no memory is passed.
    let r = unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        r >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    (child, out)
}

/// Waits for the exit without reading stdout: (status code, stderr, time taken).
fn wait(mut child: Child, t0: Instant) -> (Option<i32>, String, Duration) {
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let took = t0.elapsed();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err, took);
        }
        if t0.elapsed() > BOUND {
            let _ = child.kill();
            panic!("pvkit did not stop within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `console dropped:` figure of a `--stats` report.
fn stats_dropped(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("console dropped:"))
        .and_then(|r| r.trim().strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no console dropped line: {stderr}"))
}

fn watchdog_ends_a_flood(which: usize) {
    if !ready() {
        return;
    }
    let (name, opts, guest) = FLOODS[which];
    let t0 = Instant::now();
    let (child, out) = start(&[opts, &["--timeout", "2", "--stats"]].concat(), guest);
    let (code, err, took) = wait(child, t0);
    drop(out);
    assert_eq!(code, Some(124), "{name}: {err}");
    assert!(!err.contains("vCPU did not stop"), "{name}: {err}");
    assert!(took >= Duration::from_secs(2), "{name}: {took:?}");
    assert!(took < BOUND, "{name}: {took:?}");
    // The guest wrote far more than the pipe and the buffer hold (except maybe the UART,
    // at two exits per byte): the rest was dropped and counted.
    let dropped = stats_dropped(&err);
    if which != 0 {
        assert!(dropped > 0, "{name}: {err}");
        assert!(
            err.contains(&format!("pvkit: {dropped} console bytes dropped")),
            "{name}: {err}"
        );
    }
}

#[test]
fn the_watchdog_ends_a_uart_flood_into_a_full_pipe() {
    watchdog_ends_a_flood(0);
}

#[test]
fn the_watchdog_ends_a_pv_console_flood_into_a_full_pipe() {
    watchdog_ends_a_flood(1);
}

#[test]
fn the_watchdog_ends_a_doorbell_ring_flood_into_a_full_pipe() {
    watchdog_ends_a_flood(2);
}

#[test]
fn the_watchdog_ends_an_ioeventfd_ring_flood_into_a_full_pipe() {
    watchdog_ends_a_flood(3);
}

#[test]
fn sigterm_ends_a_flood_into_a_full_pipe_with_143() {
    if !ready() {
        return;
    }
    let mut runs = Vec::new();
    for (name, opts, guest) in FLOODS {
        let (child, out) = start(&[opts, &["--timeout", "60"]].concat(), guest);
        runs.push((name, child, out));
    }
    // Let every guest fill its pipe and buffer (the ring and PV floods do in milliseconds).
    std::thread::sleep(Duration::from_secs(1));
    for (name, child, out) in runs {
        let t0 = Instant::now();
        // SAFETY: signalling our own child process.
        let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0);
        let (code, err, took) = wait(child, t0);
        drop(out);
        assert_eq!(code, Some(143), "{name}: {err}");
        assert!(
            err.lines().any(|l| l == "pvkit: stopped by SIGTERM"),
            "{name}: {err}"
        );
        assert!(took < BOUND, "{name}: {took:?}");
    }
}

#[test]
fn bytes_written_and_dropped_add_up_once_the_pipe_is_read() {
    if !ready() {
        return;
    }
    // 4 MiB in 64 writes of 64 KiB, then exit 0: far more than the pipe (4 KiB) and the
    // console buffer hold, so most is dropped; the pipe is read only after the exit.
    const TOTAL: u64 = 64 * 65536;
    for (name, opts, guest) in [
        (
            "pv hypercall",
            &["--console", "pv"][..],
            &["print=65536", "writes=64"][..],
        ),
        (
            "ring doorbell",
            &[],
            &["print=65536", "writes=64", "ring=doorbell"],
        ),
        (
            "ring ioeventfd",
            &[],
            &["print=65536", "writes=64", "ring=eventfd"],
        ),
    ] {
        let t0 = Instant::now();
        let (child, mut out) = start(&[opts, &["--stats"]].concat(), guest);
        let (code, err, took) = wait(child, t0);
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(took < BOUND, "{name}: {took:?}");
        let mut got = Vec::new();
        out.read_to_end(&mut got).expect("read stdout");
        assert!(got.iter().all(|b| *b == b'x'), "{name}");
        let dropped = stats_dropped(&err);
        assert!(dropped > 0, "{name}: {err}");
        assert_eq!(got.len() as u64 + dropped, TOTAL, "{name}: {err}");
    }
    // Less than the console buffer, read as it comes: nothing is dropped.
    let o = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(["run", "--mem", "16", "--stats", "--console", "pv", "--"])
        .args(["print=65536", "writes=2"])
        .output()
        .expect("run pvkit");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(o.stdout.len(), 2 * 65536, "{err}");
    assert_eq!(stats_dropped(&err), 0, "{err}");
}
