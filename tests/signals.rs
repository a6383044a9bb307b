//! SIGINT and SIGTERM to `pvkit` (`host-vmm/src/runtime/signals.rs`): the guest is stopped, the
//! disk flushed, and the process exits with 128 + the signal number (130, 143) and one line
//! on stderr, within a couple of seconds, also for a guest that spins forever.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::temp_file;

/// Whether the guests this file boots are built and KVM is usable (under CI: must be).
fn ready() -> bool {
    common::builtin_ready()
}

/// How long `pvkit` may take from the signal to its exit: a bound that only catches a lost
/// signal (then the guest's 60 s timeout would stop it, with status 124). Expected: well
/// under a second; 3 s failed once in three loaded runs, so the bound is generous and the
/// tests assert the status and the message.
const PROMPT: Duration = Duration::from_secs(30);

/// Starts `pvkit run [extra] -- spin` and returns once the guest printed its banner (so it
/// runs, and the handlers are installed).
fn spinning(extra: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .arg("run")
        .args(["--mem", "16", "--timeout", "60", "--console", "pv"])
        .args(extra)
        .args(["--", "spin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvkit");
    let out = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(out)
        .read_line(&mut first)
        .expect("read the banner");
    assert!(
        first.starts_with("pvkit guest kernel "),
        "no banner: {first:?}"
    );
    child
}

/// Sends `signal` and waits for the exit: (status code, stderr, time taken).
fn signal_and_wait(mut child: Child, signal: libc::c_int) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let took = t0.elapsed();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err, took);
        }
        if t0.elapsed() > PROMPT + Duration::from_secs(15) {
            let _ = child.kill();
            panic!("pvkit did not stop within {PROMPT:?} of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_stops_a_spinning_guest_with_143() {
    if !ready() {
        return;
    }
    let (code, err, took) = signal_and_wait(spinning(&[]), libc::SIGTERM);
    assert_eq!(code, Some(143), "{err}");
    assert_eq!(err.trim_end(), "pvkit: stopped by SIGTERM", "{err}");
    assert!(took < PROMPT, "took {took:?}");
}

#[test]
fn sigint_stops_a_spinning_guest_with_130() {
    if !ready() {
        return;
    }
    let (code, err, took) = signal_and_wait(spinning(&[]), libc::SIGINT);
    assert_eq!(code, Some(130), "{err}");
    assert_eq!(err.trim_end(), "pvkit: stopped by SIGINT", "{err}");
    assert!(took < PROMPT, "took {took:?}");
}

#[test]
fn the_disk_is_flushed_before_the_exit() {
    if !ready() {
        return;
    }
    let img = temp_file("signals-disk.img", &vec![0u8; 1 << 20]);
    let disk = img.to_str().expect("utf-8 path");
    for (signal, code, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "SIGINT"),
    ] {
        let (got, err, took) = signal_and_wait(spinning(&["--disk", disk]), signal);
        assert_eq!(got, Some(code), "{err}");
        assert_eq!(
            err.trim_end(),
            format!("pvkit: stopped by {name}; disk flushed"),
            "{err}"
        );
        assert!(took < PROMPT, "took {took:?}");
    }
    // Also without seccomp (the signal path does not depend on it).
    let (got, err, _) = signal_and_wait(spinning(&["--disk", disk, "--no-seccomp"]), libc::SIGTERM);
    assert_eq!(got, Some(143), "{err}");
    assert!(err.contains("disk flushed"), "{err}");
    let _ = std::fs::remove_file(&img);
}

fn out_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pvkit-signals-{}-{name}", std::process::id()))
}

/// Whether `dir` holds any file.
fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn sigint_stops_a_benchmark_run_without_results() {
    if !ready() {
        return;
    }
    let dir = out_dir("bench");
    let _ = std::fs::remove_dir_all(&dir);
    let child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(["bench", "--only", "block,console", "--out"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvkit bench");
    // Let it get into its first boot (the handlers are installed first thing).
    std::thread::sleep(Duration::from_millis(500));
    let (code, err, took) = signal_and_wait(child, libc::SIGINT);
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("pvkit: bench stopped by SIGINT; no results written"),
        "{err}"
    );
    assert!(took < PROMPT, "took {took:?}");
    assert!(
        !has_files(&dir),
        "results were written to {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
