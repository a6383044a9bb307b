//! The C example guest (`guest-kernel/examples/c-hello`), built with gcc against the
//! generated ABI header (`abi/include/pvkit_abi.h`) and booted: it prints through the PV
//! console, reads the PV clock page and exits 42.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code, pvkit};

/// The flags a freestanding pvkit guest needs: no SSE (ring 0 has no SSE state), no red
/// zone (exceptions push onto the stack), a fixed-address ET_EXEC at 1 MiB.
const CFLAGS: &[&str] = &[
    "-O2",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffreestanding",
    "-fno-pie",
    "-no-pie",
    "-mno-sse",
    "-mno-mmx",
    "-mno-red-zone",
    "-mcmodel=kernel",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-nostdlib",
    "-static",
    "-Wl,--build-id=none",
    "-Wl,--no-warn-rwx-segments",
];

/// Whether gcc can be run. Without it the test is skipped with a note, except under CI,
/// where it fails with the fix.
fn gcc_available() -> bool {
    if Command::new("gcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    if common::ci() {
        panic!("CI=true but gcc is missing: install it (Debian: apt-get install -y gcc)");
    }
    eprintln!("note: skipping the C guest test: no gcc (Debian: apt-get install -y gcc)");
    false
}

/// Builds the C guest into the test's temp dir and returns the ELF's path.
fn build_c_hello() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = repo.join("guest-kernel/examples/c-hello");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-hello");
    std::fs::create_dir_all(&out_dir).expect("create the output dir");
    let elf = out_dir.join("c-hello");
    let o = Command::new("gcc")
        .args(CFLAGS)
        .arg("-I")
        .arg(repo.join("abi/include"))
        .arg("-T")
        .arg(src.join("linker.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(src.join("hello.c"))
        .output()
        .expect("run gcc");
    assert!(
        o.status.success(),
        "gcc failed to build c-hello: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    elf
}

#[test]
fn c_guest_prints_reads_the_pv_clock_and_exits_42() {
    if !gcc_available() || !common::kvm_available() {
        return;
    }
    let elf = build_c_hello();
    let o = pvkit(&["run", elf.to_str().expect("utf-8 path"), "--timeout", "60"]);
    assert_eq!(code(&o), 42, "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("hello from C over the pvkit PV console"),
        "{o:?}"
    );
    // "pv clock: <ns> ns since boot, monotonic": a time after boot, and not absurdly late
    // (the guest reads it within milliseconds; 60 s is the watchdog).
    let clock = lines.next().unwrap_or_default();
    let ns: u64 = clock
        .strip_prefix("pv clock: ")
        .and_then(|r| r.strip_suffix(" ns since boot, monotonic"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected clock line {clock:?}: {o:?}"));
    assert!(ns > 0 && ns < 60_000_000_000, "{o:?}");
    assert_eq!(lines.next(), None, "{o:?}");
}
