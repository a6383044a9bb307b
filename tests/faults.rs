//! Fault injection through the `pvkit` binary: every way a guest or the host can end a run
//! badly ends the VMM process with its own exit status and a message, never a hang or a
//! crash of the VMM.
//!
//! Already covered elsewhere (not repeated here): a spinning guest under `--timeout` → 124
//! (`boot.rs::process_spin_times_out_with_124`), a guest fault → 125
//! (`boot.rs::process_fault_ud_exits_125`), triple fault and panic through the library
//! (`boot.rs::exit_code_fault_and_panic`, `synthetic.rs::triple_fault_is_a_shutdown`),
//! `hlt` with nothing to wake it → 123 (`synthetic.rs::hlt_without_wakeup`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{code, pvkit, temp_file};

/// The hostile guest ELF built with the VMM.
const HOSTILE: &str = common::HOSTILE_ELF;

/// Whether the guests this file boots are built and KVM is usable (under CI: must be).
fn ready() -> bool {
    common::builtin_ready() && common::hostile_ready()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn hostile(case: &str, timeout: &str) -> Output {
    pvkit(&[
        "run",
        HOSTILE,
        "--mem",
        "16",
        "--timeout",
        timeout,
        "--",
        &format!("case={case}"),
    ])
}

#[test]
fn triple_fault_exits_126() {
    if !ready() {
        return;
    }
    let o = pvkit(&["run", "--console", "pv", "--", "triple"]);
    assert_eq!(code(&o), 126, "{o:?}");
    assert!(text(&o.stderr).contains("triple fault"), "{o:?}");
}

#[test]
fn guest_panic_exits_125() {
    if !ready() {
        return;
    }
    let o = pvkit(&["run", "--console", "pv", "--", "panic"]);
    assert_eq!(code(&o), 125, "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.starts_with("guest panic:") && err.contains("requested panic"),
        "{o:?}"
    );
}

#[test]
fn unreadable_fault_report_exits_125() {
    if !ready() {
        return;
    }
    let o = hostile("report-fault", "20");
    assert_eq!(code(&o), 125, "{o:?}");
    assert!(
        text(&o.stderr).contains("report at 0x1001000 is not inside guest RAM"),
        "{o:?}"
    );
    assert!(!text(&o.stdout).contains("survived"), "{o:?}");
}

#[test]
fn the_first_exit_call_stops_the_vm() {
    if !ready() {
        return;
    }
    let o = hostile("exit-loop", "20");
    assert_eq!(code(&o), 7, "{o:?}");
    assert!(!text(&o.stdout).contains("survived"), "{o:?}");
    assert!(o.stderr.is_empty(), "{o:?}");
}

/// A guest that does nothing but exit to the VMM (null-port writes, or hypercalls) is
/// still stopped by the watchdog on time: the kick is not lost among the exits.
#[test]
fn exit_storms_are_stopped_by_the_watchdog() {
    if !ready() {
        return;
    }
    for case in ["null-loop", "hc-loop"] {
        let t0 = Instant::now();
        let o = hostile(case, "1");
        let took = t0.elapsed();
        assert_eq!(code(&o), 124, "{case}: {o:?}");
        assert!(text(&o.stderr).contains("watchdog"), "{case}: {o:?}");
        // Expected ~1 s (the timeout); the bound only catches a lost kick.
        assert!(took < Duration::from_secs(20), "{case}: took {took:?}");
    }
}

#[test]
fn disk_paths_that_are_not_disks_are_refused_at_start() {
    if !ready() {
        return;
    }
    let dir = temp_file("faults-dir-probe", b"").with_file_name("faults-not-a-disk.d");
    std::fs::create_dir_all(&dir).expect("create a directory");
    let dir = dir.to_str().expect("utf-8 path").to_owned();
    // A FIFO opened read-only used to block `pvkit` in open(2) for ever.
    let fifo = temp_file("faults-fifo-probe", b"").with_file_name("faults-not-a-disk.fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
    let fifo = fifo.to_str().expect("utf-8 path").to_owned();
    for args in [
        vec!["--disk", "/nonexistent/pvkit.img"],
        vec!["--disk", &dir],
        // Read-only used to open a directory and hand the guest a disk that failed every
        // read; now refused like the rest.
        vec!["--disk", &dir, "--disk-ro"],
        vec!["--disk", &fifo, "--disk-ro"],
    ] {
        let mut all = vec!["run"];
        all.extend(&args);
        all.extend(["--", "exit=3"]);
        let o = pvkit(&all);
        assert_eq!(code(&o), 1, "{args:?}: {o:?}");
        assert!(
            text(&o.stderr).contains("cannot open the disk image"),
            "{args:?}: {o:?}"
        );
        assert!(
            o.stdout.is_empty(),
            "{args:?}: the guest must not run: {o:?}"
        );
    }
}

/// Unmounts (and removes) a tmpfs mount point on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a 1 MiB tmpfs, or says why not.
    fn mount() -> Result<Self, String> {
        let dir =
            temp_file("faults-probe", b"").with_file_name(format!("tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir: {e}"))?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("mount failed: {}", text(&o.stderr).trim()));
        }
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The host filesystem fills up under a sparse image: PV block writes get ENOSPC, an ATA
/// write gets ERR/ABRT, reads and flushes keep working, the guest exits normally.
#[test]
fn host_enospc_reaches_the_guest_as_a_status() {
    if !ready() {
        return;
    }
    let fs = match Tmpfs::mount() {
        Ok(fs) => fs,
        Err(why) if !common::ci() => {
            eprintln!("note: skipping the ENOSPC test: cannot mount a tmpfs ({why})");
            return;
        }
        Err(why) => panic!("CI=true but a tmpfs cannot be mounted for the ENOSPC test: {why}"),
    };
    let img = fs.path().join("sparse.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("create an 8 MiB sparse image on the 1 MiB tmpfs");
    let o = pvkit(&[
        "run",
        HOSTILE,
        "--mem",
        "32",
        "--timeout",
        "20",
        "--disk",
        img.to_str().expect("utf-8 path"),
        "--",
        "case=enospc",
    ]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{o:?}");
    for check in [
        "check enospc.pv-write status=ENOSPC ok",
        "check enospc.read-still-ok status=OK ok",
        "check enospc.ata-write-err val=0x51 ok",
        "check enospc.ata-write-abrt val=0x4 ok",
    ] {
        assert!(out.contains(check), "{check}\n{out}");
    }
    assert!(out.contains("summary checks=6 failed=0"), "{out}");
}

/// hello-os (on the `pvkit-guest` runtime) with `mode` on its command line.
fn hello_os(mode: &str) -> Output {
    let path = pvkit_vmm::guests::example_guest_path().expect("example guest path");
    pvkit(&["run", path, "--timeout", "60", "--", mode])
}

#[test]
fn runtime_reports_a_stack_overflow() {
    if !common::builtin_ready() {
        return;
    }
    let o = hello_os("overflow");
    assert_eq!(code(&o), 125, "{o:?}");
    assert_eq!(text(&o.stdout), "recursing\n", "{o:?}");
    let err = text(&o.stderr);
    // The overflowing push faults on the guard page, the #PF cannot be delivered on that
    // stack, and the double fault (on its IST stack) names the cause.
    assert!(
        err.starts_with("guest fault: #DF double fault (vector 8)")
            && err.contains("stack overflow"),
        "{o:?}"
    );
}

#[test]
fn runtime_reports_a_page_fault_with_cr2() {
    if !common::builtin_ready() {
        return;
    }
    let o = hello_os("pagefault");
    assert_eq!(code(&o), 125, "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.starts_with("guest fault: #PF page fault (vector 14)")
            && err.contains(", cr2 0x123456000:")
            && err.contains("in ring 0")
            && !err.contains("stack overflow"),
        "{o:?}"
    );
}

#[test]
fn runtime_reports_a_panic() {
    if !common::builtin_ready() {
        return;
    }
    let o = hello_os("panic");
    assert_eq!(code(&o), 125, "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.starts_with("guest panic: panicked at examples/hello-os/src/main.rs:")
            && err.contains("hello-os was asked to panic"),
        "{o:?}"
    );
}
