//! Shared helpers of the KVM integration tests.
#![allow(dead_code)]

pub mod api_vm;
pub mod loop_fs;
pub mod net_echo;
pub mod running;
pub mod scaffold;
pub mod tap_peer;
pub mod threads;

use std::path::PathBuf;
use std::process::Output;

/// Whether KVM tests can run. Without a usable /dev/kvm they are skipped with a note, except
/// under CI (`CI=true`), where they fail: a CI runner without KVM must not look green.
pub fn kvm_available() -> bool {
    match pvkit_vmm::vstate::kvm::open_kvm() {
        Ok(_) => true,
        Err(e) => {
            if ci() {
                panic!("CI=true but KVM is unusable, so the KVM tests cannot run: {e}");
            }
            eprintln!("note: skipping a KVM test: {e}");
            false
        }
    }
}

/// Whether tests that boot the guest kernel built into `pvkit` can run: the guest was built
/// and KVM is usable. Under CI a missing guest or KVM fails the test instead of skipping it.
pub fn builtin_ready() -> bool {
    guest_ready(
        pvkit_vmm::guests::builtin_kernel().is_some(),
        "the built-in guest",
    )
}

/// The hostile test guest (`guest-kernel/examples/hostile-os`), built by host-vmm's build.rs.
pub const HOSTILE_ELF: &str = pvkit_vmm::guests::HOSTILE_GUEST_ELF;

/// Whether tests that boot the hostile guest can run (as [`builtin_ready`]).
pub fn hostile_ready() -> bool {
    guest_ready(
        std::fs::metadata(HOSTILE_ELF).is_ok_and(|m| m.len() > 0),
        "the hostile guest",
    )
}

/// Whether `CI=true`.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn guest_ready(built: bool, what: &str) -> bool {
    if !built {
        let status = pvkit_vmm::guests::BUILD_STATUS;
        if ci() {
            panic!("CI=true but pvkit was built without {what}: {status}");
        }
        eprintln!("note: skipping: no {what} ({status})");
        return false;
    }
    kvm_available()
}

/// An empty directory `<prefix>-<pid>-<name>` under the target's temp dir (what an earlier
/// run left there is removed first).
pub fn fresh_dir(prefix: &str, name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The lines `out` yields (a child's stdout), sent on the returned channel by a thread as
/// they are printed; the channel closes with the pipe.
pub fn line_channel(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    lines
}

/// Writes `bytes` to a fresh file under the target's temp dir and returns its path.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pvkit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

/// Runs the `pvkit` binary with `args`.
pub fn pvkit(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(args)
        .output()
        .expect("run pvkit")
}

/// The status code of a finished process (panics on a signal death).
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("pvkit died by a signal: {o:?}"))
}
