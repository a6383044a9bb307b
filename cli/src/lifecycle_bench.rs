//! `pvkit snapshot-bench`: how long a snapshot of a running guest takes (pause, capture,
//! memory and state files written, resume) and how long a restore takes until the guest
//! runs again (state file read and checked, memory file mapped copy-on-write, KVM and device
//! state set, up to the vCPU's first `KVM_RUN`), with the built-in guest's `counter` mode.
//!
//! Everything runs in this process through the library, so the restore time does not
//! include starting a `pvkit` process.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use pvkit_vmm::vm::control::VmControl;
use pvkit_vmm::vm::ControlHook;
use pvkit_vmm::{ConsoleKind, DiskConfig, KernelSource, VmConfig};

/// What to run.
#[derive(Clone, Debug)]
pub struct LifecycleBench {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Snapshots and restores to time.
    pub iterations: u32,
    /// Where the snapshots go.
    pub dir: PathBuf,
    /// Confine the vCPU threads.
    pub seccomp: bool,
}

/// One timed snapshot.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotSample {
    /// Pause, capture, write, resume: the whole request.
    pub total: Duration,
    /// Of which pausing.
    pub pause: Duration,
    /// Bytes of RAM written.
    pub written: u64,
}

/// One timed restore.
#[derive(Clone, Copy, Debug)]
pub struct RestoreSample {
    /// From the start of the restore to the vCPU's first `KVM_RUN`.
    pub to_running: Duration,
    /// To the restored guest's first exit (it ran guest code).
    pub to_first_exit: Option<Duration>,
}

/// The results.
#[derive(Clone, Debug)]
pub struct LifecycleResults {
    /// Per snapshot.
    pub snapshots: Vec<SnapshotSample>,
    /// Per restore.
    pub restores: Vec<RestoreSample>,
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
}

fn config(bench: &LifecycleBench, disk: &Path) -> VmConfig {
    VmConfig {
        kernel: KernelSource::Builtin,
        mem_mib: bench.mem_mib,
        cmdline: "counter=100000000 counter_ms=1".into(),
        console: Some(ConsoleKind::Pv),
        capture_console: true,
        timeout: Duration::from_secs(120),
        seccomp: bench.seccomp,
        disk: Some(DiskConfig {
            path: disk.to_owned(),
            read_only: false,
            base: None,
        }),
        ..VmConfig::default()
    }
}

/// The thread a VM runs on.
type VmThread = std::thread::JoinHandle<Result<pvkit_vmm::RunOutcome, pvkit_vmm::VmError>>;

/// A VM on its own thread, with its control handle.
fn start(cfg: VmConfig) -> anyhow::Result<(Arc<VmControl>, VmThread)> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let cfg = VmConfig {
        control: Some(ControlHook(Arc::new(move |ctl| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(ctl);
            }
        }))),
        ..cfg
    };
    let vm = std::thread::spawn(move || pvkit_vmm::run(&cfg));
    let ctl = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the VM did not start")?;
    Ok((ctl, vm))
}

/// Runs the benchmark.
pub fn run(bench: &LifecycleBench) -> anyhow::Result<LifecycleResults> {
    std::fs::create_dir_all(&bench.dir)
        .with_context(|| format!("cannot create {}", bench.dir.display()))?;
    let disk = bench.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).context("cannot write the disk image")?;
    let (ctl, vm) = start(config(bench, &disk))?;
    // Let the guest boot and count.
    std::thread::sleep(Duration::from_millis(300));
    let mut snapshots = Vec::new();
    let snap = bench.dir.join("snap");
    for _ in 0..bench.iterations {
        let t = Instant::now();
        let r = ctl.snapshot(&snap)?;
        snapshots.push(SnapshotSample {
            total: t.elapsed(),
            pause: r.pause,
            written: r.stats.memory.written_bytes,
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    // The last snapshot is restored: stop the original so the disk stays as it was then.
    ctl.pause()?;
    ctl.snapshot(&snap)?;
    ctl.request_stop();
    let o = vm
        .join()
        .map_err(|_| anyhow::anyhow!("the VM thread panicked"))??;
    let ram_bytes = bench.mem_mib << 20;
    let console = String::from_utf8_lossy(&o.console);
    anyhow::ensure!(
        console.contains("counter 1 "),
        "the guest did not count: {console}"
    );

    let mut restores = Vec::new();
    for _ in 0..bench.iterations {
        let cfg = VmConfig {
            restore: Some(snap.clone()),
            started_at: Some(Instant::now()),
            ..config(bench, &disk)
        };
        let (ctl, vm) = start(cfg)?;
        std::thread::sleep(Duration::from_millis(20));
        ctl.request_stop();
        let o = vm
            .join()
            .map_err(|_| anyhow::anyhow!("the VM thread panicked"))??;
        restores.push(RestoreSample {
            to_running: o.timings.to_guest_entry,
            to_first_exit: o.timings.to_first_exit,
        });
    }
    Ok(LifecycleResults {
        snapshots,
        restores,
        ram_bytes,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

impl LifecycleResults {
    /// A short table for the terminal.
    pub fn render(&self) -> String {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        let snap: Vec<_> = self.snapshots.iter().map(|s| s.total).collect();
        let pause: Vec<_> = self.snapshots.iter().map(|s| s.pause).collect();
        let run: Vec<_> = self.restores.iter().map(|r| r.to_running).collect();
        let first: Vec<_> = self
            .restores
            .iter()
            .filter_map(|r| r.to_first_exit)
            .collect();
        let written = self.snapshots.last().map_or(0, |s| s.written);
        let range = |v: &[Duration]| {
            let min = v.iter().min().copied().unwrap_or_default();
            let max = v.iter().max().copied().unwrap_or_default();
            format!("min {} max {}", ms(min), ms(max))
        };
        format!(
            "guest RAM {} MiB, memory file {} KiB written (sparse)\n\
             snapshot (pause + capture + write + resume): median {} ({}) over {}\n\
             \x20 of which pause:                         median {}\n\
             restore to running (first KVM_RUN):         median {} ({}) over {}\n\
             restore to the guest's first exit:          median {}\n",
            self.ram_bytes >> 20,
            written / 1024,
            ms(median(snap.clone())),
            range(&snap),
            snap.len(),
            ms(median(pause)),
            ms(median(run.clone())),
            range(&run),
            run.len(),
            ms(median(first)),
        )
    }
}
