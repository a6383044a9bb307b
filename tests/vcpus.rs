//! `--vcpus N` / [`VmConfig::vcpus`]: N KVM vCPUs, vCPU 0 running the guest and the others
//! parked on their own threads. The guest sees and does exactly what it does with one vCPU.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{code, kvm_available, pvkit, temp_file};
use pvkit_vmm::testing::{programs, ElfBuilder};
use pvkit_vmm::{run, ConsoleKind, KernelSource, RunOutcome, StopReason, VmConfig};

const LOAD: u64 = 0x10_0000;

fn boot_builtin(console: ConsoleKind, vcpus: u32) -> RunOutcome {
    let cfg = VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 32,
        cmdline: "print=5 writes=2".into(),
        console: Some(console),
        capture_console: true,
        timeout: Duration::from_secs(60),
        vcpus,
        ..VmConfig::default()
    };
    run(&cfg).expect("run the built-in guest")
}

#[test]
fn two_vcpus_boot_the_builtin_guest_with_identical_exit_counts() {
    if !common::builtin_ready() {
        return;
    }
    for console in [ConsoleKind::Uart, ConsoleKind::Pv] {
        let one = boot_builtin(console, 1);
        let two = boot_builtin(console, 2);
        assert_eq!(one.stop, StopReason::Exit(0), "{console:?}: {one:?}");
        assert_eq!(two.stop, StopReason::Exit(0), "{console:?}: {two:?}");
        assert!(!one.console.is_empty());
        assert_eq!(two.console, one.console, "{console:?}");
        assert_eq!(two.ledger.counts, one.ledger.counts, "{console:?}");
        assert_eq!(two.ledger.total, one.ledger.total, "{console:?}");
    }
}

/// `(thread name, Seccomp mode)` of every thread of process `pid`.
fn threads(pid: u32) -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let task = e.ok()?.path();
        let name = std::fs::read_to_string(task.join("comm")).ok()?;
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))?
            .trim()
            .parse()
            .ok()?;
        Some((name.trim().to_owned(), mode))
    })
    .collect()
}

/// The KVM vCPU fds of process `pid`, as their links read (`anon_inode:kvm-vcpu:N`).
fn vcpu_fds(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<String> = dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("anon_inode:kvm-vcpu:"))
        .collect();
    fds.sort();
    fds
}

/// Starts `pvkit run ELF --vcpus N [extra]` and waits until the threads of all N vCPUs
/// exist.
fn start(elf: &Path, vcpus: u32, extra: &[&str]) -> Child {
    let n = vcpus.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .arg("run")
        .arg(elf)
        .args(["--mem", "16", "--timeout", "60", "--vcpus", &n])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvkit");
    let t0 = Instant::now();
    loop {
        let ts = threads(child.id());
        let all = (0..vcpus).all(|i| ts.iter().any(|(t, _)| *t == format!("pvkit-vcpu{i}")));
        if all {
            // A parked thread confines itself right after it starts: give it a moment.
            std::thread::sleep(Duration::from_millis(200));
            return child;
        }
        if t0.elapsed() > Duration::from_secs(30) || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let o = child.wait_with_output().expect("wait");
            panic!("the vCPU threads never appeared: {ts:?}; {o:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigterm(child: Child) -> std::process::Output {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait_with_output().expect("wait for pvkit")
}

#[test]
fn pvkit_run_vcpus_3_creates_three_kvm_vcpus_two_parked_and_confined() {
    if !kvm_available() {
        return;
    }
    let elf = temp_file(
        "vcpus-spin.elf",
        &ElfBuilder::new(LOAD, programs::SPIN).build(),
    );
    let child = start(&elf, 3, &[]);
    let pid = child.id();
    let fds = vcpu_fds(pid);
    let ts = threads(pid);
    let o = sigterm(child);
    assert_eq!(
        fds,
        [
            "anon_inode:kvm-vcpu:0",
            "anon_inode:kvm-vcpu:1",
            "anon_inode:kvm-vcpu:2"
        ],
        "{ts:?}"
    );
    for i in 0..3 {
        let name = format!("pvkit-vcpu{i}");
        let modes: Vec<u32> = ts.iter().filter(|(t, _)| *t == name).map(|t| t.1).collect();
        // Mode 2: a seccomp filter, as on vCPU 0.
        assert_eq!(modes, [2], "{name}: {ts:?}");
    }
    assert_eq!(code(&o), 143, "{}", String::from_utf8_lossy(&o.stderr));

    // One vCPU: one vCPU fd and one vCPU thread, as before `--vcpus` existed.
    let child = start(&elf, 1, &["--no-seccomp"]);
    let pid = child.id();
    let fds = vcpu_fds(pid);
    let ts = threads(pid);
    let o = sigterm(child);
    assert_eq!(fds, ["anon_inode:kvm-vcpu:0"]);
    assert_eq!(
        ts.iter()
            .filter(|(t, _)| t.starts_with("pvkit-vcpu"))
            .count(),
        1,
        "{ts:?}"
    );
    assert_eq!(code(&o), 143, "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn vcpu_counts_outside_the_limits_are_refused() {
    let o = pvkit(&["run", "--vcpus", "0"]);
    assert_eq!(code(&o), 2, "usage error: {o:?}");
    if !kvm_available() {
        return;
    }
    let elf = temp_file(
        "vcpus-hlt.elf",
        &ElfBuilder::new(LOAD, programs::HLT).build(),
    );
    let elf = elf.to_str().expect("utf-8 temp path");
    let o = pvkit(&["run", elf, "--vcpus", "4000000000"]);
    assert_eq!(code(&o), 1, "VMM error: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot create 4000000000 vCPUs: KVM supports 1 to"),
        "{err}"
    );
}
