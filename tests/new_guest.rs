//! `pvkit new`: the scaffolded crate builds with a plain `cargo build --release` and boots
//! with `pvkit run`; bad names and non-empty directories are refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::scaffold::{cargo_build, fresh_dir, pvkit_in, stderr};
use common::{code, pvkit};

#[test]
fn scaffolded_guest_builds_and_boots() {
    let tmp = fresh_dir("boot");
    let o = pvkit_in(&tmp, &["new", "test-os"]);
    assert_eq!(code(&o), 0, "{o:?}");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("from the pvkit checkout {}", repo.display())),
        "{o:?}"
    );
    assert!(
        out.contains("pvkit run target/x86_64-unknown-none/release/test-os"),
        "{o:?}"
    );
    let crate_dir = tmp.join("test-os");

    let b = cargo_build(&crate_dir, &tmp.join("target"));
    assert!(
        b.status.success(),
        "cargo build of the scaffold failed: {}",
        stderr(&b)
    );
    let elf = tmp.join("target/x86_64-unknown-none/release/test-os");
    let bytes = std::fs::read(&elf).expect("the built kernel");
    // ET_EXEC (2), not the target's default PIE (ET_DYN, 3).
    assert_eq!(bytes.get(16..18), Some([2u8, 0].as_slice()), "e_type");

    if !common::kvm_available() {
        return;
    }
    let elf = elf.to_str().expect("utf-8 path");
    let o = pvkit(&[
        "run",
        elf,
        "--mem",
        "64",
        "--timeout",
        "60",
        "--",
        "from",
        "the",
        "test",
    ]);
    assert_eq!(code(&o), 42, "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from test-os: 64 MiB of RAM, command line \"from the test\"\n",
        "{o:?}"
    );

    // Without the PV console the runtime prints through the 16550 UART: same text.
    let o = pvkit(&["run", elf, "--mem", "64", "--no-pv-console", "--", "uart"]);
    assert_eq!(code(&o), 42, "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from test-os: 64 MiB of RAM, command line \"uart\"\n",
        "{o:?}"
    );
    let o = pvkit(&["run", elf, "--console", "pv", "--no-pv-console"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(stderr(&o).contains("--no-pv-console hides"), "{o:?}");
    uart_fallback_exit_counts_are_exact(Path::new(elf));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The scaffolded kernel with and without the PV console: the same line, and exactly the
/// exits that differ — one `ConsoleWrite` on the PV console; without it, the UART's
/// initialization (7 register writes) and one LSR read and one THR write per byte.
fn uart_fallback_exit_counts_are_exact(elf: &Path) {
    use pvkit_abi::call::Hypercall;
    use pvkit_vmm::exit::ledger::ExitKind;
    let boot = |pv_console: bool| {
        let cfg = pvkit_vmm::VmConfig {
            kernel: pvkit_vmm::KernelSource::Path(elf.to_path_buf()),
            mem_mib: 64,
            cmdline: "counted".into(),
            capture_console: true,
            pv_console,
            ..pvkit_vmm::VmConfig::default()
        };
        pvkit_vmm::run(&cfg).expect("run the scaffolded kernel")
    };
    let pv = boot(true);
    let uart = boot(false);
    let line = "hello from test-os: 64 MiB of RAM, command line \"counted\"\n";
    for o in [&pv, &uart] {
        assert_eq!(o.stop, pvkit_vmm::StopReason::Exit(42));
        assert_eq!(String::from_utf8_lossy(&o.console), line);
    }
    let n = line.len() as u64;
    let mut expected = pv.ledger.counts.clone();
    assert_eq!(
        expected.remove(&ExitKind::Hypercall(Hypercall::ConsoleWrite)),
        Some(1),
        "one ConsoleWrite on the PV console"
    );
    for (kind, count) in [
        (ExitKind::PortRead(0x3fd), n),      // LSR, once per byte
        (ExitKind::PortWrite(0x3f8), n + 1), // THR per byte, and DLL
        (ExitKind::PortWrite(0x3f9), 2),     // IER, DLM
        (ExitKind::PortWrite(0x3fa), 1),     // FCR
        (ExitKind::PortWrite(0x3fb), 2),     // LCR with DLAB, then 8N1
        (ExitKind::PortWrite(0x3fc), 1),     // MCR
    ] {
        *expected.entry(kind).or_default() += count;
    }
    assert_eq!(uart.ledger.counts, expected);
    assert_eq!(uart.ledger.total, pv.ledger.total - 1 + 2 * n + 7);
}

#[test]
fn refuses_bad_names_and_non_empty_directories() {
    let tmp = fresh_dir("refuse");
    let o = pvkit_in(&tmp, &["new", "2fast"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert_eq!(
        stderr(&o),
        "error: `2fast` is not a valid crate name: it must start with a letter or `_`\n"
    );
    let o = pvkit_in(&tmp, &["new", "my os"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(stderr(&o).contains("' ' is not allowed"), "{o:?}");
    assert_eq!(std::fs::read_dir(&tmp).expect("read tmp").count(), 0);

    std::fs::create_dir(tmp.join("taken")).expect("mkdir");
    std::fs::write(tmp.join("taken/notes.txt"), b"keep me").expect("write");
    let o = pvkit_in(&tmp, &["new", "os", "--path", "taken"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        stderr(&o).contains("taken already exists and is not empty"),
        "{o:?}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.join("taken")).expect("read").count(),
        1
    );

    // An empty existing directory is filled.
    std::fs::create_dir(tmp.join("empty")).expect("mkdir");
    let o = pvkit_in(&tmp, &["new", "os", "--path", "empty"]);
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(tmp.join("empty/src/main.rs").is_file());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Whether gcc can be run (as tests/c_guest.rs: skipped without it, except under CI).
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
    eprintln!("note: skipping the PIE refusal test: no gcc (Debian: apt-get install -y gcc)");
    false
}

/// A real position-independent executable, the default of `x86_64-unknown-none` (a Rust
/// PIE with the guest runtime does not even link, so gcc makes this one): refused with the
/// build fix, not just "e_type is 0x3".
#[test]
fn a_pie_is_refused_with_the_fix() {
    if !gcc_available() || !common::kvm_available() {
        return;
    }
    let tmp = fresh_dir("pie");
    let src = tmp.join("pie.c");
    std::fs::write(&src, "void _start(void) { for (;;) { } }\n").expect("write pie.c");
    let elf = tmp.join("pie");
    let o = Command::new("gcc")
        .args([
            "-O2",
            "-ffreestanding",
            "-nostdlib",
            "-fpie",
            "-static-pie",
            "-o",
        ])
        .arg(&elf)
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(o.status.success(), "gcc: {}", stderr(&o));
    let bytes = std::fs::read(&elf).expect("the PIE");
    assert_eq!(bytes.get(16..18), Some([3u8, 0].as_slice()), "ET_DYN");

    let o = pvkit(&["run", elf.to_str().expect("utf-8 path")]);
    assert_eq!(code(&o), 1, "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains(
            "e_type is 0x3 (ET_DYN, a position-independent executable), expected 2 (ET_EXEC"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "build with -C relocation-model=static (x86_64-unknown-none makes a PIE by default) \
             and link at a fixed address ≥ 1 MiB, see `pvkit new`"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A kernel linked below 1 MiB is told to link higher; more --mem would not help.
#[test]
fn a_kernel_below_1_mib_is_told_to_link_higher() {
    if !common::kvm_available() {
        return;
    }
    let elf = pvkit_vmm::testing::ElfBuilder::new(0x8_0000, &[0xf4]).build();
    let path = common::temp_file("low.elf", &elf);
    let o = pvkit(&["run", path.to_str().expect("utf-8 path")]);
    assert_eq!(code(&o), 1, "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains("does not fit guest RAM")
            && err.contains("link at or above 0x100000 (1 MiB); the boot area lies below it"),
        "{err}"
    );
    assert!(!err.contains("--mem"), "{err}");
}
