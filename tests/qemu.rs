//! The same guest on a stock hypervisor: the guest kernel built into `pvkit` boots under
//! `qemu-system-x86_64 -kernel` through its PVH entry note, finds no pvkit CPUID signature and
//! no feature bits, and runs on emulated devices only: 16550 console, ATA PIO on QEMU's IDE
//! disk, the PIT for time, `isa-debug-exit` to end the VM (QEMU's exit status is
//! `(code << 1) | 1`). The same disk check also runs on pvkit, for comparison.
//!
//! QEMU comes from Debian's `qemu-system-x86` (`scripts/test` installs it). Without it the
//! QEMU tests are skipped with a note, except under `CI=true`, where they fail. QEMU runs
//! with `-accel kvm`; only if KVM refuses does a test fall back to `-accel tcg`, and says so.

mod common;

use common::scaffold;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
/// Generous: a QEMU boot takes ~3 s of SeaBIOS and a few seconds of guest here.
const TIMEOUT: Duration = Duration::from_secs(180);
/// The kernel's failure status on a stock hypervisor (`pvkit_guest::pvh::FAILURE_EXIT` = 0x7f), as QEMU
/// reports it: `(0x7f << 1) | 1`.
const QEMU_FAILURE: i32 = 255;
/// Disk image size: 2048 sectors.
const DISK_BYTES: usize = 1 << 20;
const SECTOR: usize = 512;

/// Whether QEMU tests can run: QEMU is installed and the guest kernel was built. Under CI a
/// missing QEMU fails the test.
fn qemu_ready() -> bool {
    if pvkit_vmm::guests::builtin_kernel().is_none() {
        return common::builtin_ready();
    }
    match Command::new(QEMU).arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => format!("`{QEMU} --version` failed: {:?}", o.status),
                Err(e) => format!("{QEMU} not found: {e}"),
            };
            if common::ci() {
                panic!("CI=true but {why}; install Debian's qemu-system-x86 (scripts/test does)");
            }
            eprintln!("note: skipping a QEMU test: {why} (scripts/test installs qemu-system-x86)");
            false
        }
    }
}

/// A fresh directory for one test's files.
fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("qemu-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// Pseudo-random bytes from a fixed seed (xorshift64*), so a failure can be reproduced.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-1a 64, the hash the guest prints (docs/DESIGN.md "Booting on QEMU").
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Byte `i` of sector `lba` as the disk check writes it (docs/DESIGN.md "Booting on QEMU").
fn pattern(lba: usize, i: usize) -> u8 {
    (lba as u8).wrapping_mul(31) ^ (i as u8) ^ ((i >> 8) as u8).wrapping_mul(0x55)
}

/// What a QEMU run left behind.
struct Run {
    status: i32,
    serial: String,
    stderr: String,
    accel: &'static str,
}

/// Boots the built-in guest under QEMU with `cmdline` (and the disk image, if any), waits
/// up to [`TIMEOUT`], and returns its exit status and serial output. KVM first; TCG only
/// when QEMU reports that KVM cannot be used.
fn run_qemu(dir: &Path, cmdline: &str, disk: Option<&Path>) -> Run {
    let elf = dir.join("guest.elf");
    let kernel = pvkit_vmm::guests::builtin_kernel().expect("built-in guest");
    std::fs::write(&elf, kernel).expect("write guest.elf");
    run_qemu_elf(dir, &elf, cmdline, disk)
}

/// Boots the kernel `elf` under QEMU, as [`run_qemu`].
fn run_qemu_elf(dir: &Path, elf: &Path, cmdline: &str, disk: Option<&Path>) -> Run {
    let first = run_qemu_with(dir, elf, cmdline, disk, "kvm");
    let kvm_refused = first.status == 1
        && (first.stderr.contains("failed to initialize kvm")
            || first.stderr.contains("Could not access KVM")
            || first.stderr.contains("kvm accelerator not found")
            || first.stderr.contains("-accel kvm"));
    if !kvm_refused {
        return first;
    }
    eprintln!(
        "note: QEMU refused -accel kvm, falling back to -accel tcg: {}",
        first.stderr.trim()
    );
    run_qemu_with(dir, elf, cmdline, disk, "tcg")
}

fn run_qemu_with(
    dir: &Path,
    elf: &Path,
    cmdline: &str,
    disk: Option<&Path>,
    accel: &'static str,
) -> Run {
    let serial = dir.join(format!("serial-{accel}.txt"));
    let _ = std::fs::remove_file(&serial);
    let mut cmd = Command::new(QEMU);
    cmd.args(["-machine", "pc", "-accel", accel, "-m", "128"])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(elf)
        .args(["-append", cmdline])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()));
    if let Some(disk) = disk {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=ide", disk.display()));
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-system-x86_64");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let serial = std::fs::read_to_string(&serial).unwrap_or_default();
            panic!("QEMU ({accel}) did not exit within {TIMEOUT:?}; serial so far:\n{serial}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let serial = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    eprintln!(
        "qemu -accel {accel}: {cmdline:?} -> status {:?} in {:.1} s",
        status.code(),
        start.elapsed().as_secs_f64()
    );
    Run {
        status: status
            .code()
            .unwrap_or_else(|| panic!("QEMU died by a signal: {status:?}\n{stderr}")),
        serial,
        stderr,
        accel,
    }
}

/// The lines the disk check prints for `image` (as it was before the run).
fn expected_disk_lines(image: &[u8]) -> [String; 3] {
    [
        format!("disk: ata {} sectors lba48=true", image.len() / SECTOR),
        format!(
            "disk: read lba 0+4 fnv1a64={:016x}",
            fnv1a64(&image[..4 * SECTOR])
        ),
        "disk: wrote lba 8+4, flushed, read back equal".to_string(),
    ]
}

/// The image after the check: sectors 8..12 hold the pattern, every other byte is as before.
fn assert_disk_written(before: &[u8], after: &[u8]) {
    assert_eq!(after.len(), before.len(), "the image changed size");
    for lba in 0..before.len() / SECTOR {
        let (b, a) = (
            &before[lba * SECTOR..][..SECTOR],
            &after[lba * SECTOR..][..SECTOR],
        );
        if (8..12).contains(&lba) {
            let want: Vec<u8> = (0..SECTOR).map(|i| pattern(lba, i)).collect();
            assert_eq!(a, &want[..], "sector {lba} does not hold the pattern");
        } else {
            assert_eq!(a, b, "sector {lba} was changed");
        }
    }
}

/// A line of `text` that starts with `prefix`.
fn line_starting<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn the_guest_kernel_boots_on_qemu_and_checks_its_ide_disk() {
    if !qemu_ready() {
        return;
    }
    let dir = test_dir("disk");
    let image = noise(DISK_BYTES, 0x5eed_0001);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, &image).expect("write disk.img");

    let run = run_qemu(&dir, "disk exit=21", Some(&disk));
    let s = &run.serial;
    assert_eq!(
        run.status,
        (21 << 1) | 1,
        "QEMU status (isa-debug-exit, (21 << 1) | 1) on {}; serial:\n{s}\nstderr:\n{}",
        run.accel,
        run.stderr
    );
    // No pvkit signature: the console defaults to the UART.
    assert!(
        s.contains("pvkit guest kernel ") && s.contains("console=uart\n"),
        "banner with console=uart; serial:\n{s}"
    );
    for want in expected_disk_lines(&image) {
        assert!(
            s.lines().any(|l| l == want),
            "missing {want:?}; serial:\n{s}"
        );
    }
    // No feature bits, so no PV clock: the read is timed with the PIT.
    let timed = line_starting(s, "disk: read back in ").unwrap_or_else(|| panic!("{s}"));
    assert!(timed.ends_with(" us (clock=pit)"), "{timed}");
    assert!(!s.contains("PANIC") && !s.contains("EXCEPTION"), "{s}");
    assert_disk_written(&image, &std::fs::read(&disk).expect("read disk.img"));
}

#[test]
fn a_panic_on_qemu_is_printed_on_the_uart_and_fails_the_vm() {
    if !qemu_ready() {
        return;
    }
    let dir = test_dir("panic");
    let run = run_qemu(&dir, "panic", None);
    assert_eq!(run.status, QEMU_FAILURE, "serial:\n{}", run.serial);
    assert!(
        run.serial.contains("PANIC: panicked at src/modes.rs")
            && run.serial.contains("requested panic"),
        "serial:\n{}",
        run.serial
    );
}

#[test]
fn pv_paths_check_their_features_on_qemu() {
    if !qemu_ready() {
        return;
    }
    // `console=pv` without the PV console falls back to the UART; the console ring is
    // refused before any hypercall is tried (there is no host to take one).
    let dir = test_dir("features");
    let run = run_qemu(&dir, "console=pv print=4 ring=doorbell", None);
    assert_eq!(run.status, QEMU_FAILURE, "serial:\n{}", run.serial);
    assert!(
        run.serial
            .contains("ring=Doorbell: the host does not offer the console ring (CONSOLE_RING)"),
        "serial:\n{}",
        run.serial
    );
    // `bench=` needs the BENCH markers: refused with exit status 1.
    let run = run_qemu(&dir, "bench=exit quick", None);
    assert_eq!(run.status, (1 << 1) | 1, "serial:\n{}", run.serial);
    assert!(
        run.serial
            .contains("bench: the host does not offer benchmark markers (feature BENCH)"),
        "serial:\n{}",
        run.serial
    );
}

#[test]
fn an_exception_on_qemu_is_printed_on_the_uart_and_fails_the_vm() {
    if !qemu_ready() {
        return;
    }
    let dir = test_dir("fault");
    let run = run_qemu(&dir, "fault=ud", None);
    assert_eq!(run.status, QEMU_FAILURE, "serial:\n{}", run.serial);
    assert!(
        run.serial
            .contains("EXCEPTION: vector 6 error code 0x0 at rip 0x"),
        "serial:\n{}",
        run.serial
    );
}

#[test]
fn the_same_disk_check_runs_on_pvkit() {
    if !common::builtin_ready() {
        return;
    }
    let dir = test_dir("pvkit");
    let image = noise(DISK_BYTES, 0x5eed_0002);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, &image).expect("write disk.img");
    let disk_arg = disk.to_str().expect("utf-8 path");
    let out = common::pvkit(&["run", "--disk", disk_arg, "--", "disk", "exit=21"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        common::code(&out),
        21,
        "stdout:\n{s}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.contains("console=pv\n"), "{s}");
    for want in expected_disk_lines(&image) {
        assert!(
            s.lines().any(|l| l == want),
            "missing {want:?}; stdout:\n{s}"
        );
    }
    // pvkit offers the PV clock, so the check uses it.
    let timed = line_starting(&s, "disk: read back in ").unwrap_or_else(|| panic!("{s}"));
    assert!(timed.ends_with(" us (clock=pv)"), "{timed}");
    assert_disk_written(&image, &std::fs::read(&disk).expect("read disk.img"));
}

/// The kernel `pvkit new` scaffolds (`entry!(main, pvh)`) boots on QEMU too: the runtime
/// finds no pvkit CPUID signature, prints on the 16550 UART and ends the VM with `main`'s
/// value through `isa-debug-exit`. A panic and an exception in such a kernel are printed
/// on the UART and fail the VM.
#[test]
fn a_scaffolded_guest_boots_on_qemu() {
    if !qemu_ready() {
        return;
    }
    let tmp = scaffold::fresh_dir("qemu");
    let elf = scaffold::scaffold_and_build(&tmp, "qemu-os");
    let run = run_qemu_elf(&tmp, &elf, "from qemu", None);
    assert_eq!(
        run.status,
        (42 << 1) | 1,
        "QEMU status ((42 << 1) | 1) on {}; serial:\n{}\nstderr:\n{}",
        run.accel,
        run.serial,
        run.stderr
    );
    // SeaBIOS prints first; the kernel's line follows. QEMU's memory map ends RAM just
    // below the `-m 128` MiB (the firmware keeps the top few hundred KiB).
    let out = &run.serial[run
        .serial
        .find("hello from qemu-os: ")
        .unwrap_or_else(|| panic!("no greeting; serial:\n{}", run.serial))..];
    let mib: u64 = out["hello from qemu-os: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no RAM size in {out:?}"));
    assert!((120..=128).contains(&mib), "{out:?}");
    assert_eq!(
        out,
        format!("hello from qemu-os: {mib} MiB of RAM, command line \"from qemu\"\n")
    );

    // The same kernel, made to panic or fault on request.
    let main_rs = tmp.join("qemu-os/src/main.rs");
    std::fs::write(
        &main_rs,
        r#"#![no_std]
#![no_main]
use pvkit_guest::{println, rt::BootInfo};

pvkit_guest::entry!(main, pvh);

fn main(boot: &'static BootInfo) -> i32 {
    match boot.cmdline().unwrap_or("") {
        "panic" => panic!("requested panic"),
        // SAFETY: a deliberate #UD, reported by the runtime.
        "fault" => unsafe { core::arch::asm!("ud2") },
        other => println!("asked for {other:?}"),
    }
    7
}
"#,
    )
    .expect("write main.rs");
    let b = scaffold::cargo_build(&tmp.join("qemu-os"), &tmp.join("target"));
    assert!(b.status.success(), "{}", scaffold::stderr(&b));
    let run = run_qemu_elf(&tmp, &elf, "panic", None);
    assert_eq!(run.status, QEMU_FAILURE, "serial:\n{}", run.serial);
    assert!(
        run.serial.contains("PANIC: panicked at src/main.rs:9:")
            && run.serial.ends_with("requested panic\n"),
        "serial:\n{}",
        run.serial
    );
    let run = run_qemu_elf(&tmp, &elf, "fault", None);
    assert_eq!(run.status, QEMU_FAILURE, "serial:\n{}", run.serial);
    assert!(
        run.serial
            .contains("EXCEPTION: vector 6 error code 0x0 at rip 0x")
            && run.serial.contains("invalid opcode")
            && run.serial.contains("in ring 0"),
        "serial:\n{}",
        run.serial
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
