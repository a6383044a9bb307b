//! Builds the guest workspace (`guest-kernel/`) for `x86_64-unknown-none` and exposes the
//! binaries to the crate:
//! - `PVKIT_GUEST_KERNEL_ELF`: path of `pvkit-guest-kernel` (embedded as the built-in guest);
//! - `PVKIT_EXAMPLE_GUEST_ELF`: path of `hello-os`;
//! - `PVKIT_HOSTILE_GUEST_ELF`: path of `hostile-os` (the security tests' guest);
//! - `PVKIT_GUEST_STATUS`: `built`, or why there is no built-in guest.
//!
//! The guest build runs from `guest-kernel/` (its `.cargo/config.toml` applies only there),
//! into `$OUT_DIR/guest-target`, with the outer build's compiler wrappers and flags removed.
//! When `guest-kernel/` does not exist yet, the host still builds: the built-in guest is
//! then empty and `pvkit run` without an ELF says so.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};

const TARGET: &str = "x86_64-unknown-none";
const KERNEL_BIN: &str = "pvkit-guest-kernel";
const EXAMPLE_BIN: &str = "hello-os";

fn rerun_tree(dir: &Path) {
    // Everything in the guest workspace except build output.
    let Ok(entries) = fs::read_dir(dir) else {
        println!("cargo:rerun-if-changed={}", dir.display());
        return;
    };
    println!("cargo:rerun-if-changed={}", dir.display());
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "target"
            || name.starts_with("target-")
            || name.starts_with('.') && name != ".cargo"
        {
            continue;
        }
        println!("cargo:rerun-if-changed={}", e.path().display());
    }
}

fn target_installed(rustc: &str) -> bool {
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    if let Ok(out) = libdir {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if Path::new(&dir).is_dir() {
                return true;
            }
        }
    }
    false
}

fn ensure_target(rustc: &str) {
    if target_installed(rustc) {
        return;
    }
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !added || !target_installed(rustc) {
        eprintln!("error: the {TARGET} target is missing; run: rustup target add {TARGET}");
        exit(1);
    }
}

fn placeholder(out_dir: &Path, why: &str) {
    let empty = out_dir.join("no-guest.elf");
    if fs::write(&empty, b"").is_err() {
        eprintln!("error: cannot write {}", empty.display());
        exit(1);
    }
    println!("cargo:rustc-env=PVKIT_GUEST_KERNEL_ELF={}", empty.display());
    println!(
        "cargo:rustc-env=PVKIT_EXAMPLE_GUEST_ELF={}",
        empty.display()
    );
    println!(
        "cargo:rustc-env=PVKIT_HOSTILE_GUEST_ELF={}",
        empty.display()
    );
    println!("cargo:rustc-env=PVKIT_GUEST_STATUS={why}");
    println!("cargo:warning=pvkit: no built-in guest: {why}");
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let repo = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    let guest_ws = repo.join("guest-kernel");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PVKIT_SKIP_GUEST_BUILD");
    rerun_tree(&guest_ws);
    rerun_tree(&repo.join("crates").join("guest"));
    rerun_tree(&repo.join("abi"));

    if env::var_os("PVKIT_SKIP_GUEST_BUILD").is_some() {
        placeholder(&out_dir, "PVKIT_SKIP_GUEST_BUILD is set");
        return;
    }
    if !guest_ws.join("Cargo.toml").is_file() {
        placeholder(&out_dir, "guest-kernel/Cargo.toml does not exist");
        return;
    }

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    ensure_target(&rustc);

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let target_dir = out_dir.join("guest-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_ws)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--workspace",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Nothing of the outer (host) build may leak into the guest build.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_FEATURE_")
            || k.starts_with("CARGO_ENCODED_")
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("DEP_")
        {
            cmd.env_remove(k.as_ref());
        }
    }
    for k in [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
        "RUSTC_LINKER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(k);
    }
    let status = cmd.status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!(
                "error: building the guest workspace ({}) failed with {s}; run \
                 `cargo build --release --target {TARGET}` in guest-kernel/ to see why",
                guest_ws.display()
            );
            exit(1);
        }
        Err(e) => {
            eprintln!("error: cannot run cargo to build the guest workspace: {e}");
            exit(1);
        }
    }
    let bin_dir = target_dir.join(TARGET).join("release");
    let kernel = bin_dir.join(KERNEL_BIN);
    let example = bin_dir.join(EXAMPLE_BIN);
    for b in [&kernel, &example] {
        if !b.is_file() {
            eprintln!(
                "error: the guest build succeeded but {} is missing (expected binaries \
                 {KERNEL_BIN} and {EXAMPLE_BIN})",
                b.display()
            );
            exit(1);
        }
    }
    println!(
        "cargo:rustc-env=PVKIT_GUEST_KERNEL_ELF={}",
        kernel.display()
    );
    println!(
        "cargo:rustc-env=PVKIT_EXAMPLE_GUEST_ELF={}",
        example.display()
    );
    // The hostile guest of tests/hostile.rs, tests/faults.rs and tests/durability.rs.
    println!(
        "cargo:rustc-env=PVKIT_HOSTILE_GUEST_ELF={}",
        bin_dir.join("hostile-os").display()
    );
    println!("cargo:rustc-env=PVKIT_GUEST_STATUS=built");
}
