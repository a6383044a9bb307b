//! Issue 7's bounds on guest-driven host work, against the real VMM: benchmark phase
//! records are capped in kinds and bytes (the VMM's peak RSS stays bounded while a guest
//! sweeps every port under 16 overlapping phases), the ELF note walk is bounded (a 64 MiB
//! file of overlapping empty notes is refused in well under a second), the guest ELF path
//! takes only a regular file no larger than guest RAM (a FIFO, `/dev/zero` and a sparse
//! oversize file are refused at once), and a string `outsd` to the hypercall port is not a
//! call. docs/SECURITY.md lists them.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kvm_available, temp_file};
use pvkit_abi::call::Hypercall;
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::testing::{note_bomb, programs, ElfBuilder};
use pvkit_vmm::{run, KernelSource, StopReason, VmConfig};

const LOAD: u64 = 0x10_0000;

/// Runs `pvkit args`, killing it after `limit`: (status code, stdout, stderr, time taken).
/// A `pvkit` still running at `limit` fails the test (the point is that it must not hang).
/// Its output is drained while it runs (`--stats` can exceed a pipe's buffer).
fn pvkit_within(args: &[&str], limit: Duration) -> (i32, Vec<u8>, String, Duration) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pvkit");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = String::new();
        stderr.read_to_string(&mut v).unwrap();
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pvkit {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let code = status
        .code()
        .unwrap_or_else(|| panic!("died by a signal: {status:?}"));
    (code, out, err, took)
}

fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pvkit-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn phase_records_are_capped_and_peak_rss_stays_bounded() {
    if !kvm_available() {
        return;
    }
    // Three rounds: 16 phases open while every port is read, then ended. Uncapped, each
    // ended phase stored a 65,536-kind delta and each begin copied the whole ledger
    // (~50 MB per round here); capped, every sweeping phase is refused at
    // its end (E2BIG) and begins past the byte budget are refused (ENOMEM).
    let mut params = vec![0u8; 48];
    params[0..4].copy_from_slice(&3u32.to_le_bytes());
    let image = ElfBuilder::new(
        LOAD,
        &programs::with_params(programs::PHASE_PORT_SWEEP, &params),
    )
    .build();
    let elf = temp_file("phase-port-sweep.elf", &image);
    let (code, out, err, _) = pvkit_within(
        &["run", s(&elf), "--mem", "16", "--stats", "--timeout", "120"],
        Duration::from_secs(180),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 40, "five counters expected: {out:?}");
    let n = |i: usize| u64::from_le_bytes(out[i * 8..i * 8 + 8].try_into().unwrap());
    let (begin_ok, begin_enomem, end_ok, end_e2big, end_einval) = (n(0), n(1), n(2), n(3), n(4));
    assert_eq!(
        begin_ok + begin_enomem,
        48,
        "every begin answered OK or ENOMEM"
    );
    assert!(begin_ok >= 16, "the first round's begins fit: {begin_ok}");
    assert!(begin_enomem > 0, "later begins hit the byte cap");
    assert_eq!(end_ok, 0, "a phase that swept every port is never recorded");
    assert_eq!(end_e2big, begin_ok, "every begun phase refused at its end");
    assert_eq!(end_einval, begin_enomem, "phases never begun cannot end");
    let rss_kib: u64 = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("peak rss:"))
        .and_then(|v| v.trim().trim_end_matches("KiB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak rss in --stats: {err}"));
    // Capped: ~17 MiB (the ledger's 65,536+ kinds, two starting snapshots, the VMM itself).
    // Uncapped, this run peaked at ~156 MiB and grows with every further round.
    assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB");
}

#[test]
fn a_file_of_overlapping_empty_notes_is_refused_quickly() {
    if !kvm_available() {
        return;
    }
    // 64 MiB, 1023 note sections over the same empty notes: unbounded, ~21 s of CPU.
    let elf = temp_file(
        "note-bomb.elf",
        &note_bomb(LOAD, programs::HLT, 64 << 20, 1023),
    );
    let (code, _, err, took) =
        pvkit_within(&["run", s(&elf), "--mem", "128"], Duration::from_secs(120));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("times the file's size of notes"), "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let fifo = scratch_dir().join("kernel.fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Nobody opens the other end: a blocking open would never return.
    let (code, _, err, took) = pvkit_within(&["run", s(&fifo)], Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn dev_zero_is_refused_without_reading() {
    let (code, _, err, took) = pvkit_within(&["run", "/dev/zero"], Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("/dev/zero as the guest kernel: it is a character device"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn an_elf_larger_than_guest_ram_is_refused_without_reading() {
    // A valid image, made sparse and 1.5 GiB long: larger than 16 MiB of guest RAM.
    let elf = scratch_dir().join("sparse.elf");
    std::fs::write(&elf, ElfBuilder::new(LOAD, programs::HLT).build()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&elf)
        .unwrap()
        .set_len(3 << 29)
        .unwrap();
    let (code, _, err, took) =
        pvkit_within(&["run", s(&elf), "--mem", "16"], Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is 1610612736 bytes, larger than guest RAM (16777216 bytes)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The library refuses it the same way, before any KVM work.
    let cfg = VmConfig {
        kernel: KernelSource::Path(elf),
        mem_mib: 16,
        ..VmConfig::default()
    };
    assert!(matches!(
        run(&cfg),
        Err(pvkit_vmm::VmError::KernelTooLarge {
            len: 1610612736,
            limit: 16777216,
            ..
        })
    ));
}

#[test]
fn a_string_outsd_to_the_hypercall_port_is_not_a_call() {
    if !kvm_available() {
        return;
    }
    let cfg = VmConfig {
        kernel: KernelSource::Bytes(ElfBuilder::new(LOAD, programs::OUTSD_HYPERCALL).build()),
        mem_mib: 16,
        capture_console: true,
        timeout: Duration::from_secs(30),
        ..VmConfig::default()
    };
    let o = run(&cfg).expect("run");
    // Taken as a call, the dword in memory (exit) would have stopped the guest with 9.
    assert_eq!(o.stop, StopReason::Exit(0));
    assert_eq!(o.ledger.count(ExitKind::PortWrite(0x500)), 1);
    assert_eq!(o.ledger.count(ExitKind::Hypercall(Hypercall::Exit)), 1);
    assert_eq!(o.ledger.total, 2);
}
