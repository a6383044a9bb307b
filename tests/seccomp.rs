//! Seccomp confinement (`host-vmm/src/runtime/seccomp.rs`, docs/SECURITY.md "Confinement"):
//!
//! - a forbidden system call on a thread confined with the vCPU (or I/O) filter is refused:
//!   the process ends at once with status 159 and one line naming the thread and the call,
//!   while the allowed calls (output, memory, locks, starting a thread) keep working; the
//!   same for the filters of the threads the main thread starts (console writer, network,
//!   gdb, migration, incoming migration, output reader). Each case runs in a child process
//!   (this test binary, re-executed), since the refusal ends the whole process;
//! - the threads of a running `pvkit` really carry the filters (`/proc/PID/task/*/status`):
//!   3 programs on the vCPU thread, 5 on the I/O thread (its own two on top of the inherited
//!   ones), none on the main thread; none with `--no-seccomp`;
//! - real boots under seccomp (the default): the built-in kernel's banner and exit code, a
//!   large captured console (the allocator's `mremap`), and the quick benchmark of the
//!   console and block devices (every ring transport, disk reads, writes and flushes) with
//!   every case verified.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::threads::{threads, ThreadStatus};
use common::{code, kvm_available, temp_file};
use pvkit_cli::bench_runner::{self as runner, BenchConfig, BenchDevice};
use pvkit_vmm::runtime::seccomp::{self, Confinement, ThreadKind, STATUS_SECCOMP};
use pvkit_vmm::testing::ElfBuilder;
use pvkit_vmm::{run, ConsoleKind, KernelSource, PhaseObserver, StopReason, VmConfig};

/// Set in a child process: the case it runs ([`child_process`]).
const CHILD_CASE: &str = "PVKIT_SECCOMP_TEST_CASE";

/// The line a child prints once the allowed calls have worked under the filter.
const ALLOWED_OK: &str = "allowed system calls work under the filter";

/// Whether the guests this file boots are built and KVM is usable (under CI: must be).
fn ready() -> bool {
    common::builtin_ready()
}

// ---------------------------------------------------------------------------------------
// Forbidden system calls, in child processes.

/// Runs `case` in a child process: this test binary, only [`child_process`].
fn in_child(case: &str) -> Output {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_CASE, case)
        .output()
        .expect("run the child")
}

/// The body of a child process (a no-op in the normal test run).
#[test]
fn child_process() {
    let Ok(case) = std::env::var(CHILD_CASE) else {
        return;
    };
    let (kind, call) = case.split_once(':').expect("kind:call");
    let kind = match kind {
        "vcpu" => ThreadKind::Vcpu,
        "io" => ThreadKind::Io,
        "console" => ThreadKind::Console,
        "net" => ThreadKind::Net,
        "gdb" => ThreadKind::Gdb,
        "migrate" => ThreadKind::Migrate,
        "incoming" => ThreadKind::Incoming,
        "output-reader" => ThreadKind::OutputReader,
        other => panic!("unknown thread kind {other}"),
    };
    let call = call.to_owned();
    if call == "heap-churn" {
        // What `vm::run` does before it starts a confined thread.
        seccomp::use_main_arena_only();
    }
    // A thread of its own, like the VMM's: the filter applies to it alone.
    let t = std::thread::Builder::new()
        .name("confined".into())
        .spawn(move || {
            Confinement::new(kind)
                .expect("build")
                .apply()
                .expect("apply");
            assert_eq!(seccomp::confined(), Some(kind));
            if call == "openat-readonly" {
                // glibc's shape of a read-only open (`check_may_shrink_heap`): refused with
                // `EACCES`, the thread goes on (and reports through the join: not every
                // thread may write to stdout).
                let f = std::fs::File::open("/proc/sys/vm/overcommit_memory");
                return f.err().and_then(|e| e.raw_os_error()) == Some(libc::EACCES);
            }
            if call.starts_with("heap-churn") {
                heap_churn();
                println!("{HEAP_CHURN_OK}");
                return false;
            }
            allowed_calls_work(kind);
            forbidden(&call);
            // Not reached for a forbidden call: the SIGSYS handler ends the process.
            false
        })
        .expect("spawn");
    if t.join().expect("the confined thread") {
        println!("{OPEN_REFUSED_OK}");
    }
}

/// What every confined thread does all the time: allocate, lock, read the clock, print.
fn allowed_calls_work(kind: ThreadKind) {
    // Large enough for mmap, then grown (mremap), then freed (munmap).
    let mut v = vec![1u8; 4 << 20];
    v.resize(16 << 20, 2);
    assert_eq!(
        v.iter().map(|b| u64::from(*b)).sum::<u64>(),
        (4 << 20) + (24 << 20)
    );
    drop(v);
    let m = Arc::new(Mutex::new(0u32));
    *m.lock().expect("lock") += 1;
    let _ = Instant::now().elapsed();
    if kind == ThreadKind::Vcpu {
        // The vCPU thread starts the I/O thread: clone3 is answered ENOSYS, glibc falls
        // back to clone with thread flags, which the filter lets through.
        let m2 = Arc::clone(&m);
        std::thread::spawn(move || *m2.lock().expect("lock") += 1)
            .join()
            .expect("a thread started under the vCPU filter");
        assert_eq!(*m.lock().expect("lock"), 2);
    }
    // Every filter lets a thread write to stderr; only some to stdout.
    eprintln!("{ALLOWED_OK}");
}

/// The line a child prints once a read-only open was refused with `EACCES`.
const OPEN_REFUSED_OK: &str = "read-only open refused with EACCES";

/// The line a child prints once heap churn survived the filter.
const HEAP_CHURN_OK: &str = "heap grown and trimmed under the filter";

/// Grows the calling thread's heap by ~32 MiB of small blocks and frees them all, so the
/// allocator trims its heap (what a long benchmark does to the vCPU thread).
fn heap_churn() {
    for _ in 0..2 {
        let blocks: Vec<Vec<u8>> = (0..32 * 1024).map(|i| vec![i as u8; 1000]).collect();
        assert_eq!(blocks.len(), 32 * 1024);
        drop(blocks);
    }
}

/// Makes the forbidden call `call`.
fn forbidden(call: &str) {
    // SAFETY: each arm is a plain system call with valid (or deliberately invalid but
    // harmless) arguments and pointers to live locals; none of them is expected to return.
    unsafe {
        match call {
            "none" => return,
            "socket" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "openat" => {
                // Opening for writing: no filter lets that through (a read-only open is
                // answered `EACCES` on the threads that open no files: `openat-readonly`).
                libc::openat(
                    libc::AT_FDCWD,
                    c"/etc/passwd".as_ptr(),
                    libc::O_RDWR | libc::O_CLOEXEC,
                );
            }
            "execve" => {
                let path = c"/bin/true".as_ptr();
                let argv = [path, std::ptr::null()];
                let envp = [std::ptr::null::<libc::c_char>()];
                libc::execve(path, argv.as_ptr(), envp.as_ptr());
            }
            "fork" => {
                // clone without CLONE_THREAD: a new process.
                libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
            }
            "ioctl-create-vm" => {
                // A KVM ioctl the vCPU thread never makes (the fd does not matter: the
                // filter looks at the request number first).
                libc::ioctl(-1, 0xae01, 0);
            }
            "ioctl-run" => {
                libc::ioctl(-1, seccomp::KVM_RUN as _, 0);
            }
            "mmap-exec" => {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            }
            "ptrace" => {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            }
            "thread" => {
                let _ = std::thread::Builder::new().spawn(|| {});
            }
            "write-stdout" => {
                libc::write(libc::STDOUT_FILENO, b"x".as_ptr().cast(), 1);
            }
            "write-fd" => {
                // Not a descriptor of this process: the filter refuses before the kernel
                // would say EBADF.
                libc::write(1000, b"x".as_ptr().cast(), 1);
            }
            other => panic!("unknown call {other}"),
        }
    }
    // Reached only if the call was allowed: say so, with a status no refusal uses.
    eprintln!("the call {call} was NOT refused");
    std::process::exit(3);
}

/// Asserts that `case` ends the child with the seccomp status and names `call` and the
/// thread, after the allowed calls worked.
fn assert_refused(case: &str, thread: &str, call: &str) {
    let o = in_child(case);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(
        o.status.code(),
        Some(i32::from(STATUS_SECCOMP)),
        "{case}: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        o.status
    );
    assert!(stderr.contains(ALLOWED_OK), "{case}: {stderr}");
    let want = format!("pvkit: seccomp: the {thread} thread made a forbidden system call: {call}");
    assert!(
        stderr.contains(&want),
        "{case}: want {want:?} in:\n{stderr}"
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Regression: glibc's thread-arena trim path (`shrink_heap`) opens
/// `/proc/sys/vm/overcommit_memory` read-only; on a confined thread that once killed the
/// vCPU thread in a long block benchmark. `seccomp::use_main_arena_only` (called by
/// `vm::run`) keeps confined threads on the main arena, which trims with allowed calls; and
/// a thread that opens no files has that open answered `EACCES` (glibc then trims with
/// `madvise`), which covers a VM run in a process whose threads already made arenas (this
/// harness, the lifecycle bench). Both cases must survive the churn: without the refusal,
/// the own-arena case ended with SIGSYS on `openat`.
#[test]
fn heap_trimming_on_a_confined_thread_is_allowed() {
    // The incoming-migration thread may open files: there the open succeeds and glibc's
    // read must be allowed (it once killed that thread in the in-process lifecycle bench).
    for case in [
        "vcpu:heap-churn",
        "vcpu:heap-churn-own-arena",
        "incoming:heap-churn-own-arena",
    ] {
        let o = in_child(case);
        let stdout = text(&o.stdout);
        assert_eq!(code(&o), 0, "{case}: {stdout}\n{}", text(&o.stderr));
        assert!(stdout.contains(HEAP_CHURN_OK), "{case}: {stdout}");
    }
}

/// On every thread that opens no files, glibc's read-only open is answered `EACCES` and the
/// thread goes on; any other open still ends the process (`forbidden_calls_…`).
#[test]
fn a_read_only_open_is_refused_with_eacces_where_no_file_is_opened() {
    for kind in [
        "vcpu",
        "io",
        "console",
        "net",
        "gdb",
        "migrate",
        "output-reader",
    ] {
        let case = format!("{kind}:openat-readonly");
        let o = in_child(&case);
        let stdout = text(&o.stdout);
        assert_eq!(code(&o), 0, "{case}: {stdout}\n{}", text(&o.stderr));
        assert!(stdout.contains(OPEN_REFUSED_OK), "{case}: {stdout}");
    }
}

#[test]
fn the_filters_let_the_threads_work() {
    for case in [
        "vcpu:none",
        "io:none",
        "console:none",
        "net:none",
        "gdb:none",
        "migrate:none",
        "incoming:none",
        "output-reader:none",
    ] {
        let o = in_child(case);
        let stderr = text(&o.stderr);
        assert_eq!(code(&o), 0, "{case}: {}\n{stderr}", text(&o.stdout));
        assert!(stderr.contains(ALLOWED_OK), "{case}: {stderr}");
    }
}

/// The threads the main thread starts (docs/SECURITY.md, "The threads and their filters"):
/// each refuses what only other threads may do.
#[test]
fn forbidden_calls_on_the_other_threads_are_refused() {
    for (case, thread, call) in [
        ("console:socket", "console writer", "socket (41)"),
        ("console:openat", "console writer", "openat (257)"),
        ("console:ioctl-run", "console writer", "ioctl (16)"),
        ("console:write-fd", "console writer", "write (1)"),
        ("net:socket", "network", "socket (41)"),
        ("net:openat", "network", "openat (257)"),
        ("net:ioctl-run", "network", "ioctl (16)"),
        ("net:fork", "network", "clone (56)"),
        ("gdb:ioctl-run", "gdb", "ioctl (16)"),
        ("gdb:ioctl-create-vm", "gdb", "ioctl (16)"),
        ("gdb:socket", "gdb", "socket (41)"),
        ("gdb:openat", "gdb", "openat (257)"),
        ("gdb:write-stdout", "gdb", "write (1)"),
        ("migrate:openat", "migration", "openat (257)"),
        ("migrate:ioctl-run", "migration", "ioctl (16)"),
        ("migrate:execve", "migration", "execve (59)"),
        ("migrate:write-stdout", "migration", "write (1)"),
        ("incoming:socket", "incoming migration", "socket (41)"),
        ("incoming:ioctl-run", "incoming migration", "ioctl (16)"),
        ("incoming:execve", "incoming migration", "execve (59)"),
        ("incoming:mmap-exec", "incoming migration", "mmap (9)"),
        ("output-reader:openat", "output reader", "openat (257)"),
        ("output-reader:socket", "output reader", "socket (41)"),
        ("output-reader:write-stdout", "output reader", "write (1)"),
        ("output-reader:ptrace", "output reader", "ptrace (101)"),
    ] {
        assert_refused(case, thread, call);
    }
}

#[test]
fn forbidden_calls_on_a_vcpu_thread_are_refused() {
    for (case, call) in [
        ("vcpu:socket", "socket (41)"),
        ("vcpu:openat", "openat (257)"),
        ("vcpu:execve", "execve (59)"),
        ("vcpu:fork", "clone (56)"),
        ("vcpu:ioctl-create-vm", "ioctl (16)"),
        ("vcpu:mmap-exec", "mmap (9)"),
        ("vcpu:ptrace", "ptrace (101)"),
    ] {
        assert_refused(case, "vCPU", call);
    }
}

#[test]
fn forbidden_calls_on_an_io_thread_are_refused() {
    for (case, call) in [
        // No ioctl at all: KVM_RUN is the vCPU thread's.
        ("io:ioctl-run", "ioctl (16)"),
        // No new threads or processes.
        ("io:fork", "clone (56)"),
        ("io:openat", "openat (257)"),
    ] {
        assert_refused(case, "I/O", call);
    }
}

#[test]
fn a_refusal_with_sigsys_blocked_is_a_kill() {
    // glibc blocks every signal around `clone3` while it creates a thread, and the I/O
    // filter refuses `clone3`: the kernel cannot deliver SIGSYS to the handler, so it kills
    // the process with it instead (no message; a shell reports 128 + 31 = 159 all the same).
    // A thread that blocks SIGSYS gains nothing.
    use std::os::unix::process::ExitStatusExt;
    let o = in_child("io:thread");
    assert_eq!(o.status.signal(), Some(libc::SIGSYS), "{o:?}");
    assert!(text(&o.stderr).contains(ALLOWED_OK));
}

// ---------------------------------------------------------------------------------------
// The threads of a running pvkit.

/// Guest load address of the synthetic program.
const LOAD: u64 = 0x10_0000;
/// Guest address of the console ring (the program's parameter page).
const RING: u64 = LOAD + 0x1000;

/// Registers a console ring of 2 slots at [`RING`] with the ioeventfd transport (so the
/// VMM starts its I/O thread), then spins; `exit(9)` if the registration failed.
///
/// ```text
/// mov edi, 0x10000      ; CONSOLE_QUEUE
/// mov esi, RING
/// mov r8d, 0x1000
/// mov r9d, 2            ; Transport::DoorbellEventfd
/// mov eax, 5            ; RegisterRegion
/// mov edx, 0x500
/// out dx, eax
/// test rax, rax
/// jnz fail
/// jmp $
/// fail: mov edi, 9; mov eax, 3; mov edx, 0x500; out dx, eax; hlt
/// ```
fn ring_then_spin_elf() -> Vec<u8> {
    let ring = u32::try_from(RING).expect("below 4 GiB").to_le_bytes();
    let mut code = vec![0xbf, 0, 0, 1, 0, 0xbe];
    code.extend_from_slice(&ring);
    code.extend_from_slice(&[
        0x41, 0xb8, 0x00, 0x10, 0x00, 0x00, // mov r8d, 0x1000
        0x41, 0xb9, 0x02, 0x00, 0x00, 0x00, // mov r9d, 2
        0xb8, 0x05, 0x00, 0x00, 0x00, // mov eax, 5
        0xba, 0x00, 0x05, 0x00, 0x00, // mov edx, 0x500
        0xef, // out dx, eax
        0x48, 0x85, 0xc0, // test rax, rax
        0x75, 0x02, // jnz fail
        0xeb, 0xfe, // jmp $
        0xbf, 0x09, 0x00, 0x00, 0x00, // fail: mov edi, 9
        0xb8, 0x03, 0x00, 0x00, 0x00, // mov eax, 3
        0xba, 0x00, 0x05, 0x00, 0x00, // mov edx, 0x500
        0xef, // out dx, eax
        0xf4, // hlt
    ]);
    // The ring header: indices 0, 2 slots (`size` at +16).
    let mut header = vec![0u8; 64];
    header[16..20].copy_from_slice(&2u32.to_le_bytes());
    let image = pvkit_vmm::testing::programs::with_params(&code, &header);
    ElfBuilder::new(LOAD, &image).build()
}

/// Starts `pvkit run ELF [extra]` and waits until both its vCPU and I/O threads exist;
/// returns the child and the threads' status.
fn start_and_inspect(elf: &Path, extra: &[&str]) -> (Child, Vec<ThreadStatus>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvkit"));
    cmd.arg("run")
        .arg(elf)
        .args(["--mem", "16", "--timeout", "30"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start pvkit");
    let t0 = Instant::now();
    loop {
        let ts = threads(child.id());
        let has = |n: &str| ts.iter().any(|t| t.name == n);
        if has("pvkit-vcpu0") && has("pvkit-io") {
            // The I/O thread confines itself right after it starts: give it a moment.
            std::thread::sleep(Duration::from_millis(100));
            let ts = threads(child.id());
            return (child, ts);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let o = child.wait_with_output().expect("wait");
            panic!("the vCPU and I/O threads never appeared: {ts:?}; {o:?}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            let o = child.wait_with_output().expect("wait");
            panic!("pvkit ended early ({status}): {}", text(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stop(mut child: Child) -> Output {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            // Expected well under a second; below the guest's 30 s timeout.
            t0.elapsed() < Duration::from_secs(25),
            "pvkit ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// `Seccomp` (mode) and `Seccomp_filters` of the thread called `name`.
fn status_of(ts: &[ThreadStatus], name: &str) -> (u32, u32) {
    ts.iter()
        .find(|t| t.name == name)
        .map(|t| (t.mode, t.filters))
        .unwrap_or_else(|| panic!("no thread {name} in {ts:?}"))
}

#[test]
fn a_running_vm_has_confined_vcpu_and_io_threads() {
    if !kvm_available() {
        return;
    }
    let elf = temp_file("seccomp-ring-spin.elf", &ring_then_spin_elf());
    let (child, ts) = start_and_inspect(&elf, &[]);
    let o = stop(child);
    // Mode 2 = filter. The vCPU thread: the clone3 program, the read-only-open refusal and
    // its allowlist. The I/O thread: those three, inherited, and its own two (refusal and
    // allowlist). The main thread (the watchdog): none.
    assert_eq!(status_of(&ts, "pvkit-vcpu0"), (2, 3), "{ts:?}");
    assert_eq!(status_of(&ts, "pvkit-io"), (2, 5), "{ts:?}");
    assert_eq!(status_of(&ts, "pvkit"), (0, 0), "{ts:?}");
    assert_eq!(code(&o), 143, "{}", text(&o.stderr));

    let (child, ts) = start_and_inspect(&elf, &["--no-seccomp"]);
    let o = stop(child);
    for t in &ts {
        assert_eq!(
            (t.mode, t.filters),
            (0, 0),
            "{} is confined under --no-seccomp: {ts:?}",
            t.name
        );
    }
    assert_eq!(code(&o), 143, "{}", text(&o.stderr));
}

// ---------------------------------------------------------------------------------------
// Real boots under seccomp (the default).

fn builtin(console: ConsoleKind, cmdline: &str) -> VmConfig {
    VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: 32,
        cmdline: cmdline.into(),
        console: Some(console),
        capture_console: true,
        timeout: Duration::from_secs(30),
        ..VmConfig::default()
    }
}

#[test]
fn the_builtin_kernel_boots_under_seccomp() {
    if !ready() {
        return;
    }
    assert!(VmConfig::default().seccomp, "seccomp is on by default");
    for console in [ConsoleKind::Uart, ConsoleKind::Pv] {
        let o = run(&builtin(console, "exit=3")).expect("run");
        assert_eq!(o.stop, StopReason::Exit(3), "{console:?}");
        let out = text(&o.console);
        assert!(
            out.starts_with("pvkit guest kernel "),
            "{console:?}: {out:?}"
        );
    }
    // The binary, printing to its stdout.
    let o = common::pvkit(&["run", "--console", "uart", "--", "exit=5"]);
    assert_eq!(code(&o), 5, "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("pvkit guest kernel "));
}

#[test]
fn a_large_captured_console_grows_under_seccomp() {
    if !ready() {
        return;
    }
    // 8 MiB in 64 KiB PV console writes: the capture buffer is reallocated many times on
    // the vCPU thread (mmap, mremap, munmap).
    let o = run(&builtin(ConsoleKind::Pv, "print=65536 writes=128")).expect("run");
    assert_eq!(o.stop, StopReason::Exit(0));
    assert_eq!(o.console.len(), 65536 * 128);
    assert!(o.console.iter().all(|b| *b == b'x'));
}

#[test]
fn phases_are_observed_on_the_confined_vcpu_thread() {
    if !ready() {
        return;
    }
    let seen: Arc<Mutex<Vec<Option<ThreadKind>>>> = Arc::default();
    let s2 = Arc::clone(&seen);
    let cfg = VmConfig {
        phase_observer: Some(PhaseObserver(Arc::new(move |_| {
            s2.lock().expect("lock").push(seccomp::confined());
        }))),
        ..builtin(ConsoleKind::Pv, "bench=exit quick")
    };
    let o = run(&cfg).expect("run");
    assert_eq!(o.stop, StopReason::Exit(0));
    let seen = seen.lock().expect("lock");
    assert!(!seen.is_empty(), "no phases");
    assert!(
        seen.iter().all(|k| *k == Some(ThreadKind::Vcpu)),
        "{seen:?}"
    );
}

#[test]
fn console_and_block_benchmarks_verify_under_seccomp() {
    if !ready() {
        return;
    }
    // Every console and block variant: UART, ATA PIO, PV hypercalls, and the rings over
    // doorbell exits, ioeventfds (I/O thread) and host polling (I/O thread), with disk
    // reads, writes and flushes checked against the image.
    let cfg = BenchConfig {
        devices: vec![BenchDevice::Console, BenchDevice::Block],
        quick: true,
        progress: false,
        timeout: Duration::from_secs(60),
        ..BenchConfig::default()
    };
    assert!(cfg.seccomp, "seccomp is on by default");
    let outcome = runner::run(&cfg).expect("run the benchmarks");
    assert!(
        outcome.passed(),
        "problems: {:?}\nfailures: {:?}",
        outcome.problems,
        outcome.failures()
    );
    let variants: Vec<String> = outcome
        .report
        .cases
        .iter()
        .map(|c| format!("{}/{}", c.device, c.variant))
        .collect();
    for want in [
        "console/uart",
        "block/ata-pio",
        "console/pv-ring",
        "block/pv-ring",
        "console/pv-ioeventfd",
        "block/pv-ioeventfd",
        "console/pv-poll",
        "block/pv-poll",
    ] {
        assert!(variants.iter().any(|v| v == want), "{want}: {variants:?}");
    }
}
