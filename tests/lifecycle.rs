//! VM lifecycle under real KVM with the built-in guest's `counter=N` mode
//! (guest-kernel/src/counter.rs: a step every `counter_ms`, the PV clock checked monotonic
//! and the disk's sector 0 checked to hold the previous step's record, by the guest):
//! pause and snapshot through the control API (`pvkit run --api`), restore
//! (`pvkit run --restore`) continuing exactly where the guest stopped, clones with their
//! own copy-on-write disks (block-level overlays here, reflink copies on a loop-mounted XFS
//! with reflinks), refused state files and refused API requests.

mod common;

use common::net_echo::{assert_echoes_continued, net_done};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::api_vm::ApiVm;
use pvkit_cli::lifecycle::counter;
use pvkit_vmm::api::client::send_raw;
use pvkit_vmm::api::request::{Request, Response};

const PVKIT: &str = env!("CARGO_BIN_EXE_pvkit");
/// Wall-clock bound for waits (≥ 10× what they take on this machine).
const WAIT: Duration = Duration::from_secs(60);

fn dir(name: &str) -> PathBuf {
    common::fresh_dir("pvkit-lifecycle", name)
}

/// A `pvkit run --api` VM of these tests ([`ApiVm`]).
type Running = ApiVm;

impl ApiVm {
    /// The counter guest `cmdline` on the PV console with `disk`.
    fn start_counter(dir: &Path, disk: &Path, cmdline: &str) -> Self {
        Self::start_with(dir, &["--disk".as_ref(), disk.as_os_str()], cmdline)
    }

    /// A VM with more `pvkit run` options (`extra`).
    fn start_with(dir: &Path, extra: &[&std::ffi::OsStr], cmdline: &str) -> Self {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--console".as_ref(), "pv".as_ref()];
        args.extend_from_slice(extra);
        args.push("--".as_ref());
        args.extend(cmdline.split(' ').map(std::ffi::OsStr::new));
        Self::start(dir.join("api.sock"), 120, &args, WAIT)
    }
}

/// The `counter I t=NS` lines as (I, NS) (the parser `pvkit bench --only snapshot` checks
/// with).
fn steps(lines: &[String]) -> Vec<(u64, u64)> {
    counter::steps(&lines.join("\n"))
}

/// Sector 0's counter record (step, time).
fn disk_record(path: &Path) -> (u64, u64) {
    counter::read_record(path)
        .unwrap()
        .unwrap_or_else(|| panic!("no counter record in {}", path.display()))
}

/// Boots the counter, pauses it after step `at`, snapshots into `dir/snap`, terminates it.
/// Returns the snapshot directory and the steps the original printed.
fn snapshot_at(dir: &Path, disk: &Path, steps_total: u64, at: u64) -> (PathBuf, Vec<(u64, u64)>) {
    snapshot_with(dir, disk, steps_total, at, "")
}

/// [`snapshot_at`] with more guest command-line tokens (`extra`, may be empty).
fn snapshot_with(
    dir: &Path,
    disk: &Path,
    steps_total: u64,
    at: u64,
    extra: &str,
) -> (PathBuf, Vec<(u64, u64)>) {
    let cmdline = format!("counter={steps_total} counter_ms=20 {extra}");
    let mut vm = Running::start_counter(dir, disk, cmdline.trim());
    vm.wait_for(&format!("counter {at} "));
    let r = vm.api(&Request::Pause);
    assert!(r.ok, "{r:?}");
    let snap = dir.join("snap");
    let r = vm.api(&Request::Snapshot { dir: snap.clone() });
    assert!(r.ok, "{r:?}");
    let s = r.snapshot.unwrap();
    assert_eq!(s.ram_bytes, 128 << 20);
    // Sparse: only the pages the guest wrote (kernel, stacks, heap) are data.
    assert!(s.written_bytes < s.ram_bytes / 8, "{s:?}");
    assert!(s.zero_pages > 0);
    let st = vm.api(&Request::Stats).stats.unwrap();
    assert!(st.paused, "a snapshot of a paused VM leaves it paused");
    assert!(st.exits_at_last_pause > 0);
    let printed = steps(&vm.terminate());
    (snap, printed)
}

fn restore(snap: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(PVKIT);
    c.args(["run", "--timeout", "120", "--restore"])
        .arg(snap)
        .args(extra);
    c
}

#[test]
fn snapshot_restore_continues_counter_clock_and_disk() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("continue");
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (snap, before) = snapshot_at(&d, &disk, 40, 10);
    let &(k, t_k) = before.last().unwrap();
    assert!(k >= 10, "{before:?}");
    // The original was paused after step k's line, or after step k + 1's disk write and
    // before its line (the guest writes the disk first).
    let at_pause = disk_record(&disk);
    assert!(
        at_pause == (k, t_k) || at_pause.0 == k + 1,
        "{at_pause:?} after step {k}"
    );

    let o = restore(&snap, &[]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let after = steps(&lines);
    // The counter continues at k + 1, step by step, to the end.
    let want: Vec<u64> = (k + 1..=40).collect();
    assert_eq!(after.iter().map(|s| s.0).collect::<Vec<_>>(), want, "{out}");
    assert_eq!(lines.last().map(String::as_str), Some("counter done"));
    // The clock continued from the paused time and never went back (the guest checks
    // every read; this checks the printed times across the restore).
    if at_pause.0 == k + 1 {
        // Step k + 1's line, printed by the restored guest, has the time it wrote before.
        assert_eq!(after.first(), Some(&at_pause));
    }
    let mut last = t_k;
    for &(i, t) in &after {
        assert!(t >= last, "step {i}: {t} < {last}");
        last = t;
    }
    // The guest found step k's record on the disk (else it panics) and left step 40's.
    assert_eq!(disk_record(&disk), *after.last().unwrap());
}

/// Snapshots the counter in `d` on a fresh base disk, restores 3 clones of it at once,
/// each with its own `--overlay` in `d`, runs them to the end and checks that each went on
/// where the snapshot stopped with a disk of its own (a write in one clone is invisible to
/// the others and to the base). Returns each clone's overlay and stderr.
fn clones_apart(d: &Path) -> Vec<(PathBuf, String)> {
    let disk = d.join("base.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (snap, before) = snapshot_at(d, &disk, 20, 5);
    let base_before = std::fs::read(&disk).unwrap();
    let &(k, t_k) = before.last().unwrap();

    let clones: Vec<_> = (0..3)
        .map(|i| {
            let overlay = d.join(format!("clone{i}.img"));
            let child = restore(&snap, &["--overlay", overlay.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (overlay, child)
        })
        .collect();
    let mut lasts = Vec::new();
    let mut done = Vec::new();
    for (overlay, child) in clones {
        let o = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        let s = steps(&lines);
        assert_eq!(s.first().map(|s| s.0), Some(k + 1), "{out}");
        assert_eq!(s.last().map(|s| s.0), Some(20));
        // Each clone's disk holds its own last record (its own clock time).
        assert_eq!(disk_record(&overlay), *s.last().unwrap());
        lasts.push(s.last().unwrap().1);
        done.push((overlay, err));
    }
    // Three clones, three different last records: no clone saw another's writes (the
    // guests check each step's read-back too), and the base is untouched.
    lasts.sort_unstable();
    lasts.dedup();
    assert_eq!(lasts.len(), 3, "clones wrote identical records: {lasts:?}");
    assert_eq!(std::fs::read(&disk).unwrap(), base_before);
    let base = disk_record(&disk);
    assert!(
        base == (k, t_k) || base.0 == k + 1,
        "{base:?} after step {k}"
    );
    done
}

#[test]
fn clones_share_the_snapshot_and_keep_their_disks_apart() {
    if !common::builtin_ready() {
        return;
    }
    clones_apart(&dir("clones"));
}

/// The reflink path of clones: on XFS with reflinks (a loop-mounted image,
/// [`common::loop_fs`]) each clone's disk is a `FICLONE` copy, an ordinary image sharing
/// the base's blocks; the clones are as isolated as on the block-level overlay, and only
/// the block each clone wrote (sector 0's record) stopped being shared.
#[test]
fn clones_on_a_reflink_filesystem_are_reflink_copies_and_stay_apart() {
    if !common::builtin_ready() {
        return;
    }
    let Some(fs) = common::loop_fs::ReflinkFs::mount_or_skip(&dir("reflink")) else {
        return;
    };
    let clones = clones_apart(fs.path());
    for (overlay, err) in &clones {
        assert!(
            err.contains(&format!(
                "pvkit: disk {}: reflink copy over",
                overlay.display()
            )),
            "{err}"
        );
        // A reflink copy is a plain image of the base's size (no block-level overlay).
        assert_eq!(std::fs::metadata(overlay).unwrap().len(), 1 << 20);
        // Written back first: XFS moves a copied-on-write block into the file at writeback.
        std::fs::File::open(overlay).unwrap().sync_all().unwrap();
        let ext = common::loop_fs::extents(overlay);
        assert!(!ext.is_empty(), "no extents: {ext:?}");
        // Block 0 (the clone's own record) is its own; the rest still the base's.
        let first = ext.iter().find(|e| e.0 == 0).expect("an extent at block 0");
        assert!(!first.2, "the written block is still shared: {ext:?}");
        let shared: u64 = ext.iter().filter(|e| e.2).map(|e| e.1 - e.0 + 1).sum();
        assert!(
            shared >= 255 - 1,
            "{shared} of 256 blocks still shared with the base: {ext:?}"
        );
    }
    drop(fs);
}

#[test]
fn corrupt_and_foreign_state_files_are_refused() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("refused");
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (snap, _) = snapshot_at(&d, &disk, 1000, 2);
    let state = std::fs::read(snap.join("vm.state")).unwrap();
    let disk_before = std::fs::read(&disk).unwrap();
    let try_state = |name: &str, bytes: &[u8], want: &str| {
        let bad = d.join(name);
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("vm.state"), bytes).unwrap();
        std::os::unix::fs::symlink(snap.join("vm.mem"), bad.join("vm.mem")).unwrap();
        let o = restore(&bad, &[]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(want), "{name}: `{want}` not in: {err}");
        assert!(o.stdout.is_empty(), "{name}: the guest ran");
    };
    let mut b = state.clone();
    let n = b.len();
    b[n - 10] ^= 0x20;
    try_state("crc", &b, "corrupt");
    let mut b = state.clone();
    b[8] = 7;
    try_state("version", &b, "format version 7");
    try_state("truncated", &state[..state.len() / 2], "payload length");
    try_state(
        "magic",
        b"ELF\x7f and not a state file at all, no",
        "bad magic",
    );
    try_state("empty", b"", "truncated");
    // A memory file of the wrong size.
    let bad = d.join("memsize");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("vm.state"), &state).unwrap();
    std::fs::write(bad.join("vm.mem"), vec![0u8; 4096]).unwrap();
    let o = restore(&bad, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the state says"));
    // Nothing was run: the disk is as the snapshot left it.
    assert_eq!(std::fs::read(&disk).unwrap(), disk_before);
}

#[test]
fn malformed_api_requests_are_refused_and_change_nothing() {
    if !common::builtin_ready() {
        return;
    }
    let d = dir("api");
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut vm = Running::start_counter(&d, &disk, "counter=60 counter_ms=20");
    vm.wait_for("counter 2 ");
    let api = vm.api.clone();
    // The API thread serves under its own seccomp filter (mode 2).
    let status = std::fs::read_dir(format!("/proc/{}/task", vm.child.id()))
        .unwrap()
        .filter_map(Result::ok)
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "pvkit-api")
        })
        .map(|t| std::fs::read_to_string(t.path().join("status")).unwrap())
        .expect("a pvkit-api thread");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "{status}"
    );
    let long = format!(
        "{{\"op\":\"snapshot\",\"dir\":\"/{}\"}}\n",
        "a".repeat(8192)
    );
    let bad: Vec<Vec<u8>> = vec![
        b"garbage\n".to_vec(),
        b"{}\n".to_vec(),
        b"{\"op\":\"reboot\"}\n".to_vec(),
        b"{\"op\":\"pause\",\"now\":true}\n".to_vec(),
        b"{\"op\":\"snapshot\",\"dir\":\"relative/dir\"}\n".to_vec(),
        b"{\"op\":\"balloon\",\"target_mib\":-5}\n".to_vec(),
        b"\xff\xff\xff\n".to_vec(),
        long.into_bytes(),
    ];
    for b in &bad {
        let reply = send_raw(&api, b).unwrap();
        let r: Response = serde_json::from_str(&reply).unwrap();
        assert!(!r.ok && r.error.is_some(), "{reply}");
    }
    // Well-formed but refused: resume of a running VM, a snapshot into a file, a balloon
    // target above the guest's 128 MiB and migrate (nobody listens there).
    let file = d.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for req in [
        Request::Resume,
        Request::Snapshot {
            dir: file.join("sub"),
        },
        Request::Balloon { target_mib: 1024 },
        Request::Migrate {
            dest: "127.0.0.1:4000".into(),
        },
    ] {
        let r = vm.api(&req);
        assert!(!r.ok, "{req:?}: {r:?}");
    }
    // Nothing changed: the VM runs (not paused) and finishes its count.
    let st = vm.api(&Request::Stats).stats.unwrap();
    assert!(!st.paused);
    let b = st.balloon.expect("a balloon");
    assert_eq!((b.target_pages, b.generation, b.actual_pages), (0, 0, 0));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // A pause/resume round trip continues the count without a gap.
    assert!(vm.api(&Request::Pause).ok);
    assert!(
        !vm.api(&Request::Pause).ok,
        "pause of a paused VM is refused"
    );
    assert!(vm.api(&Request::Resume).ok);
    let (code, lines) = vm.wait_exit();
    assert_eq!(code, 0, "{lines:?}");
    let s: Vec<u64> = steps(&lines).iter().map(|s| s.0).collect();
    assert_eq!(s, (1..=60).collect::<Vec<_>>());
    assert!(!api.exists(), "the socket is removed when the VM ends");
}

/// The restored VM's ledger continues the snapshot's: over the guest's whole life (boot,
/// pause, snapshot, restore, end) every exit is counted exactly once.
#[test]
fn the_ledger_counts_on_across_a_restore() {
    use pvkit_abi::call::Hypercall;
    use pvkit_vmm::exit::ledger::ExitKind;
    if !common::builtin_ready() {
        return;
    }
    let d = dir("ledger");
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    const N: u64 = 12;
    let (snap, _) = snapshot_at(&d, &disk, N, 4);
    let o = pvkit_vmm::run(&pvkit_vmm::VmConfig {
        restore: Some(snap),
        capture_console: true,
        timeout: Duration::from_secs(120),
        ..pvkit_vmm::VmConfig::default()
    })
    .expect("restore");
    assert_eq!(
        o.stop,
        pvkit_vmm::StopReason::Exit(0),
        "{}",
        String::from_utf8_lossy(&o.console)
    );
    let l = &o.ledger;
    let hc = |h| l.count(ExitKind::Hypercall(h));
    // Boot: the clock page and the disk size; per step: read and write sector 0 and one
    // console line; then `counter done` and `Exit`. The pause for the snapshot: one
    // interrupted `KVM_RUN`.
    assert_eq!(hc(Hypercall::RegisterRegion), 1);
    assert_eq!(hc(Hypercall::BlockCapacity), 1);
    assert_eq!(hc(Hypercall::BlockIo), 2 * N);
    assert_eq!(hc(Hypercall::ConsoleWrite), N + 1);
    assert_eq!(hc(Hypercall::Exit), 1);
    assert_eq!(l.count(ExitKind::Interrupted), 1);
    assert_eq!(l.total, 3 * N + 5, "{:?}", l.by_count());
}

/// A guest printing through the console ring (each transport: doorbell exits, ioeventfd
/// with the I/O thread, I/O-thread polling) is snapshotted with its ring registered, and the
/// restored guest goes on printing through it: the consumer's index and flags are restored
/// and the ring re-registered with its transport.
#[test]
fn registered_rings_are_saved_and_restored() {
    if !common::builtin_ready() {
        return;
    }
    for transport in ["doorbell", "eventfd", "poll"] {
        let d = dir(&format!("ring-{transport}"));
        let disk = d.join("disk.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let (snap, before) = snapshot_with(&d, &disk, 20, 5, &format!("ring={transport}"));
        let k = before.last().unwrap().0;
        let o = restore(&snap, &[]).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{transport}: {out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        let after: Vec<u64> = steps(&lines).iter().map(|s| s.0).collect();
        assert_eq!(
            after,
            (k + 1..=20).collect::<Vec<_>>(),
            "{transport}: {out}"
        );
    }
}

#[test]
fn pv_nic_on_loopback_keeps_echoing_across_a_restore() {
    if !common::builtin_ready() {
        return;
    }
    // Every way the guest drives the PV NIC; `irq` binds the receive ring to a GSI
    // (`QueueInterrupt`), a binding the snapshot keeps.
    for path in ["doorbell", "eventfd", "poll", "irq"] {
        echo_across_a_restore(path);
    }
}

/// `net=echo` over the PV NIC driven as `pvnet=path`, snapshotted mid-run and restored.
fn echo_across_a_restore(path: &str) {
    const COUNT: u64 = 20_000;
    let d = dir(&format!("pv-nic-{path}"));
    let nic = ["--net", "loopback", "--nic", "pv"].map(std::ffi::OsStr::new);
    let cmdline = format!("net=echo count={COUNT} pvnet={path}");
    let mut vm = Running::start_with(&d, &nic, &cmdline);
    vm.wait_for("net: PV NIC ");
    // Mid-run: the guest echoes ~2500-3500 datagrams a second here, COUNT take seconds.
    std::thread::sleep(Duration::from_millis(300));
    let r = vm.api(&Request::Pause);
    assert!(r.ok, "{path}: {r:?}");
    let snap = d.join("snap");
    let r = vm.api(&Request::Snapshot { dir: snap.clone() });
    assert!(r.ok, "{path}: a PV NIC on loopback is saved: {r:?}");
    let before = vm.terminate();
    assert!(
        net_done(&before).is_none(),
        "{path}: the snapshot was taken after the echoes ended: {before:?}"
    );

    // Restoring without the NIC, or with another MAC, is refused with a clear error.
    let o = restore(&snap, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("--net loopback --nic pv"), "{path}: {err}");
    let other_mac = [
        "--net",
        "loopback",
        "--nic",
        "pv",
        "--mac",
        "52:54:00:12:34:99",
    ];
    let o = restore(&snap, &other_mac).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("MAC address differs"), "{path}: {err}");

    // With the NIC given again the guest continues its echoes where it stopped: every one
    // of the COUNT answered exactly once (a lost frame would hang it, a duplicate would
    // count twice), one ARP reply before them.
    let o = restore(&snap, &["--net", "loopback", "--nic", "pv"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{path}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_echoes_continued(path, &lines, COUNT);
}

/// An SMP guest (`--vcpus 4`, the counter with `cpus=3`: CPU 1 answers every step from its
/// own running sum, CPU 2 halted, vCPU 3 never started) is paused and resumed, then
/// snapshotted: the state file holds all four vCPUs with their MP states. The restored VM
/// is snapshotted again mid-run (its restored APs park like the original's), and the
/// second restore continues on every vCPU (CPU 1's sum checked by the guest at every step,
/// and once more here), its counter, clock and disk continuing, its ledger exact over the
/// guest's whole life.
#[test]
fn an_smp_guest_pauses_snapshots_and_restores_with_every_vcpu() {
    use pvkit_abi::call::Hypercall;
    use pvkit_vmm::exit::ledger::ExitKind;
    use pvkit_vmm::snapshot::restore::read_state;
    if !common::builtin_ready() {
        return;
    }
    const N: u64 = 60;
    let d = dir("smp");
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let extra = [
        "--disk".as_ref(),
        disk.as_os_str(),
        "--vcpus".as_ref(),
        "4".as_ref(),
    ];
    let mut vm = Running::start_with(&d, &extra, &format!("counter={N} counter_ms=20 cpus=3"));
    vm.wait_for("counter 3 ");
    // A pause holds every vCPU; a resume lets all of them go on.
    let r = vm.api(&Request::Pause);
    assert!(r.ok, "{r:?}");
    assert!(vm.api(&Request::Stats).stats.unwrap().paused);
    let r = vm.api(&Request::Resume);
    assert!(r.ok, "{r:?}");
    vm.wait_for("counter 8 ");
    let r = vm.api(&Request::Pause);
    assert!(r.ok, "{r:?}");
    let snap = d.join("snap");
    let r = vm.api(&Request::Snapshot { dir: snap.clone() });
    assert!(r.ok, "{r:?}");
    // SIGTERM stops the paused VM (every vCPU thread leaves the gate) with the disk
    // flushed: status 128 + 15.
    let (code, lines) = vm.terminate_with_code();
    assert_eq!(code, 143);
    let before = steps(&lines);
    let &(k, t_k) = before.last().unwrap();
    assert!(k >= 8, "{before:?}");

    // Every vCPU's state, each with what it was doing (KVM's `KVM_MP_STATE_*` values).
    const RUNNABLE: u32 = 0;
    const UNINITIALIZED: u32 = 1;
    const HALTED: u32 = 3;
    let state = read_state(&snap).unwrap();
    assert_eq!(state.vcpus.len(), 4);
    let mp: Vec<u32> = state.vcpus.iter().map(|v| v.mp_state).collect();
    assert_eq!(mp[0], RUNNABLE, "{mp:?}");
    assert_eq!(mp[1], RUNNABLE, "{mp:?}");
    assert_eq!(mp[2], HALTED, "{mp:?}");
    assert_eq!(mp[3], UNINITIALIZED, "{mp:?}");
    assert!(state.vcpus.iter().all(|v| v.lapic.is_some()));
    use pvkit_vmm::snapshot::state::SavedStartSlot as Slot;
    assert_eq!(
        state.devices.vcpu_starts,
        [Slot::Running, Slot::Running, Slot::Running, Slot::Waiting]
    );

    // The first restore runs ~200 ms, then is paused and snapshotted through its control
    // handle, and stopped.
    let (tx, rx) = mpsc::channel();
    let hook = pvkit_vmm::vm::ControlHook(std::sync::Arc::new(move |ctl| {
        let _ = tx.send(ctl);
    }));
    let snap2 = d.join("snap2");
    let taker = {
        let snap2 = snap2.clone();
        std::thread::spawn(move || {
            let ctl: std::sync::Arc<pvkit_vmm::vm::control::VmControl> =
                rx.recv_timeout(WAIT).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            ctl.pause().unwrap();
            ctl.snapshot(&snap2).unwrap();
            ctl.request_stop();
        })
    };
    let o = pvkit_vmm::run(&pvkit_vmm::VmConfig {
        restore: Some(snap),
        capture_console: true,
        timeout: Duration::from_secs(120),
        control: Some(hook),
        ..pvkit_vmm::VmConfig::default()
    })
    .expect("first restore");
    taker.join().unwrap();
    let out = String::from_utf8_lossy(&o.console).into_owned();
    assert!(
        matches!(o.stop, pvkit_vmm::StopReason::Timeout { .. }),
        "stopped by the controller: {:?}\n{out}",
        o.stop
    );
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert!(!lines.iter().any(|l| l == "counter done"), "{out}");
    let o = pvkit_vmm::run(&pvkit_vmm::VmConfig {
        restore: Some(snap2),
        capture_console: true,
        timeout: Duration::from_secs(120),
        ..pvkit_vmm::VmConfig::default()
    })
    .expect("second restore");
    let out = String::from_utf8_lossy(&o.console).into_owned();
    assert_eq!(o.stop, pvkit_vmm::StopReason::Exit(0), "{out}");
    lines.extend(out.lines().map(str::to_owned));
    let after = steps(&lines);
    // Every step once across the two restores.
    let want: Vec<u64> = (k + 1..=N).collect();
    assert_eq!(after.iter().map(|s| s.0).collect::<Vec<_>>(), want, "{out}");
    let mut last = t_k;
    for &(i, t) in &after {
        assert!(t >= last, "step {i}: {t} < {last}");
        last = t;
    }
    let sum = format!("counter cpu1 sum={}", N * (N + 1) / 2);
    assert_eq!(
        lines[lines.len() - 2..],
        [sum, "counter done".to_owned()],
        "{out}"
    );
    assert_eq!(disk_record(&disk), *after.last().unwrap());

    // The ledger: boot (the clock page, the disk size, one `VcpuUp` per AP and the wake-up
    // of its thread), per step two disk requests and a line, the sum and `counter done`
    // lines and `Exit`; each of the three pauses, one interrupted `KVM_RUN` per vCPU. CPU 1
    // and CPU 2 never exit; the stop of the paused first restore costs nothing.
    let l = &o.ledger;
    let hc = |h| l.count(ExitKind::Hypercall(h));
    assert_eq!(hc(Hypercall::RegisterRegion), 1);
    assert_eq!(hc(Hypercall::BlockCapacity), 1);
    assert_eq!(hc(Hypercall::VcpuUp), 2);
    assert_eq!(hc(Hypercall::BlockIo), 2 * N);
    assert_eq!(hc(Hypercall::ConsoleWrite), N + 2);
    assert_eq!(hc(Hypercall::Exit), 1);
    assert_eq!(l.count(ExitKind::Interrupted), 2 + 3 * 4);
    assert_eq!(l.total, 3 * N + 21, "{:?}", l.by_count());
}

/// The watchdog still ends a paused SMP VM: every vCPU thread (CPU 1 spinning, CPU 2 halted,
/// vCPU 3 never started, all parked) leaves the gate and the run stops with the timeout.
#[test]
fn the_watchdog_stops_a_paused_smp_vm() {
    if !common::builtin_ready() {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let hook = pvkit_vmm::vm::ControlHook(std::sync::Arc::new(move |ctl| {
        let _ = tx.send(ctl);
    }));
    let pauser = std::thread::spawn(move || {
        let ctl: std::sync::Arc<pvkit_vmm::vm::control::VmControl> = rx.recv_timeout(WAIT).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        ctl.pause().unwrap();
        assert!(ctl.stats().paused);
    });
    let t = Instant::now();
    let o = pvkit_vmm::run(&pvkit_vmm::VmConfig {
        cmdline: "counter=100000 counter_ms=20 cpus=3".into(),
        console: Some(pvkit_vmm::ConsoleKind::Pv),
        capture_console: true,
        vcpus: 4,
        timeout: Duration::from_secs(3),
        control: Some(hook),
        ..pvkit_vmm::VmConfig::default()
    })
    .expect("run");
    pauser.join().unwrap();
    assert!(
        matches!(o.stop, pvkit_vmm::StopReason::Timeout { .. }),
        "{:?}",
        o.stop
    );
    // The deadline plus the kick grace at most.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    use pvkit_vmm::exit::ledger::ExitKind;
    // The wake-ups of CPUs 1 and 2, and the pause: one per vCPU.
    assert_eq!(o.ledger.count(ExitKind::Interrupted), 2 + 4);
}
