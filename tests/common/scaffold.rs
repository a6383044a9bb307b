//! `pvkit new` as a user runs it: scaffold a guest crate into a fresh directory and build
//! it with a plain `cargo build --release` there (tests/new_guest.rs, tests/qemu.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh directory for one test under cargo's per-target temp dir. That directory lies
/// inside the pvkit checkout (with the default target dir), so the scaffold's own
/// `[workspace]` is exercised too: without it cargo refuses to build a package inside
/// another workspace it is not a member of.
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pvkit-new-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create the test dir");
    d
}

/// Runs `pvkit ARGS` in `dir`.
pub fn pvkit_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run pvkit")
}

/// The standard error of `o`, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cargo build --release --offline` in `dir`, as a user would run it there: nothing of
/// the outer `cargo test` (its toolchain override, its RUSTFLAGS) leaks in, so the
/// scaffold's own rust-toolchain.toml and .cargo/config.toml decide. Offline: the crates
/// it needs (those of guest-kernel/Cargo.lock, which the scaffold copies) are already in
/// cargo's cache, because host-vmm's build script built the guest kernel.
pub fn cargo_build(dir: &Path, target_dir: &Path) -> Output {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release", "--offline"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_NONE_LINKER",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run cargo")
}

/// `pvkit new NAME` in `tmp`, then `cargo build --release` of it (target dir `tmp/target`).
/// Returns the built kernel's path; panics with cargo's output if a step fails.
pub fn scaffold_and_build(tmp: &Path, name: &str) -> PathBuf {
    let o = pvkit_in(tmp, &["new", name]);
    assert_eq!(super::code(&o), 0, "pvkit new: {o:?}");
    let b = cargo_build(&tmp.join(name), &tmp.join("target"));
    assert!(
        b.status.success(),
        "cargo build of the scaffold failed: {}",
        stderr(&b)
    );
    tmp.join("target/x86_64-unknown-none/release").join(name)
}
