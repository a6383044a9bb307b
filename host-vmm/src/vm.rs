//! The library entry point: configure a VM, run it to the end under the watchdog, get a
//! [`RunOutcome`].
//!
//! [`builder`] assembles the VM from a [`VmConfig`]; [`machine`] holds the [`machine::Vm`]
//! the vCPU threads share and the state each owns. Threads: the caller's thread builds the
//! VM, then waits as the watchdog; the guest runs on a dedicated vCPU thread (vCPU 0) with
//! its [`machine::VcpuState`], handed back when the guest stops; the other vCPUs (APs) run
//! on their own threads, waiting in `KVM_RUN` until the guest starts them. A pause
//! ([`control`]) parks every vCPU thread in its seat of the [`control::PauseGate`]. Their
//! ledgers are merged for the [`RunOutcome`].

pub mod builder;
pub mod control;
pub mod diag;
pub mod machine;
pub mod migrate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pvkit_abi::AbiVersion;
use thiserror::Error;

use crate::arch::x86_64::cpuid::CpuidError;
use crate::arch::x86_64::layout::LayoutError;
use crate::bench::{PhaseObserver, PhaseRecord, SampleRecord};
use crate::bus::BusError;
use crate::devices::legacy::irq::IrqError;
use crate::devices::legacy::ne2000::{NetConfig, NetError, NicStats};
use crate::devices::pv::balloon::BalloonStats;
use crate::devices::pv::net_rx::PvNetStats;
use crate::devices::pv::vcpu_up::VcpuUp;
pub use crate::devices::NicModel;
use crate::exit::ledger::LedgerSnapshot;
use crate::exit::record::{ExitRecorder, RecordConfig, RipProfile, Trace};
use crate::io::disk::{DiskConfig, DiskError, SharedDisk};
use crate::loader::elf::ElfError;
use crate::loader::symbols::SymbolTable;
use crate::runtime::seccomp::{Confinement, SeccompError, ThreadKind};
use crate::runtime::signals::{self, DiskFlush};
use crate::runtime::stop::StopReason;
use crate::runtime::watchdog::{self, ArmGuard, WatchdogError};
use crate::vstate::kvm::{PlatformError, PlatformInfo};
use crate::vstate::memory::{MemoryError, DEFAULT_MEM_MIB};
use crate::vstate::vcpu::{RegAccess, Vcpu, VcpuError};
use crate::vstate::vm::VmFdError;
use diag::StopRegs;
use machine::{merge_ledgers, run_vcpu, VcpuEnd, VcpuState, Vm};

/// Where the guest kernel comes from.
#[derive(Clone, Debug)]
pub enum KernelSource {
    /// The kernel embedded in the VMM at build time.
    Builtin,
    /// An ELF file on disk.
    Path(PathBuf),
    /// ELF bytes.
    Bytes(Vec<u8>),
}

/// Which console the guest should use (passed as `console=uart|pv` on its command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKind {
    /// The emulated 16550 UART.
    Uart,
    /// The PV console hypercall.
    Pv,
}

impl ConsoleKind {
    /// The command-line value.
    pub fn name(self) -> &'static str {
        match self {
            ConsoleKind::Uart => "uart",
            ConsoleKind::Pv => "pv",
        }
    }
}

/// How to run a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The guest kernel.
    pub kernel: KernelSource,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// The kernel command line (without the `console=` token).
    pub cmdline: String,
    /// The console to ask for; `None` leaves the choice to the guest.
    pub console: Option<ConsoleKind>,
    /// Keep console output in [`RunOutcome::console`] instead of printing it.
    pub capture_console: bool,
    /// The watchdog: the guest is stopped after this long.
    pub timeout: Duration,
    /// Force a register access method (default: sync regs when available).
    pub reg_access: Option<RegAccess>,
    /// The instant timings are measured from (default: when [`run`] is called). `pvkit`
    /// passes its process start.
    pub started_at: Option<Instant>,
    /// The disk image behind both the emulated ATA disk and the PV block device (the same
    /// bytes for both); `None`: no disk, no ATA ports, no PV block device.
    pub disk: Option<DiskConfig>,
    /// Called with each benchmark phase as it ends (on the vCPU thread).
    pub phase_observer: Option<PhaseObserver>,
    /// Confine the vCPU and I/O threads with their seccomp filters ([`crate::runtime::seccomp`];
    /// default `true`; `pvkit --no-seccomp` turns it off).
    pub seccomp: bool,
    /// How many KVM vCPUs to create (default 1; at most what KVM supports). vCPU 0 runs
    /// the guest from the entry point. Each other vCPU runs on its own thread,
    /// `pvkit-vcpu{i}` (confined like vCPU 0), waiting in `KVM_RUN` until the guest starts
    /// it (INIT-SIPI-SIPI through the in-kernel LAPIC, or the `VcpuUp` call). Pause,
    /// snapshot and migration hold every vCPU.
    pub vcpus: u32,
    /// Per-exit records: exits by guest `RIP` (`pvkit run --stats`) and a trace of every
    /// exit (`pvkit run --trace`), in [`RunOutcome::exit_profile`] and [`RunOutcome::trace`]
    /// ([`crate::exit::record`]). Default: none.
    pub record: RecordConfig,
    /// The network: an NE2000 (ports `0x300..=0x31f`, IRQ 9) on a host backend, with KVM's
    /// in-kernel irqchip for its interrupt. `None` (default): no NIC and no irqchip, so
    /// `hlt` and every other exit stay as without a network.
    pub net: Option<NetConfig>,
    /// Which NIC [`VmConfig::net`] is: the emulated NE2000 (default) or the PV NIC (no
    /// NE2000 ports; `NetInfo`, `NetSend` and the net rings, the backend's fd served by an
    /// event loop). Either way the VM has the in-kernel irqchip.
    pub nic: NicModel,
    /// Create KVM's in-kernel irqchip even without a NIC or SMP (`pvkit run --irqchip`), so
    /// that rings can complete by interrupt (`Features::RING_IRQ`). With it `hlt` no longer
    /// exits to userspace.
    pub irqchip: bool,
    /// The interrupt test set-up (`pvkit bench` device `irq`): KVM's in-kernel irqchip
    /// even without a NIC or SMP, and the interrupt test port
    /// ([`pvkit_abi::ports::IRQ_TEST`]) raising GSI [`pvkit_abi::ports::IRQ_TEST_GSI`]
    /// through an irqfd. Default `false`.
    pub irq_test: bool,
    /// Serve the GDB remote protocol for vCPU 0 on this address (`pvkit run --gdb`;
    /// [`crate::debug::gdb`]): the address is bound, printed on stderr as
    /// `pvkit: gdb: waiting for a connection on ADDR`, and the guest waits for the
    /// debugger before its first instruction. The [`VmConfig::timeout`] still applies.
    pub gdb: Option<std::net::SocketAddr>,
    /// Offer the PV console (default `true`). `false` (`pvkit run --no-pv-console`): no
    /// `ConsoleWrite`, no console ring, no `CONSOLE`/`CONSOLE_RING` feature bits in the
    /// `BootInfo` and CPUID, as on a host without it; a guest that checks the bits uses
    /// the UART.
    pub pv_console: bool,
    /// Mark guest RAM `MADV_MERGEABLE` (`pvkit run --mergeable`): the host's KSM, when it
    /// runs, may then merge identical pages within and across VMs copy-on-write. Default
    /// `false`. pvkit never turns KSM itself on.
    pub mergeable: bool,
    /// Restore the snapshot in this directory instead of booting `kernel`
    /// (`pvkit run --restore DIR`, [`crate::snapshot`]): RAM, vCPU and device state, the
    /// command line and the vCPU count come from the snapshot; `kernel`, `mem_mib`,
    /// `cmdline` and `vcpus` are ignored. `disk`, if set, replaces the snapshot's disk (it
    /// must have the same size: a clone's overlay).
    pub restore: Option<PathBuf>,
    /// Called once, before the guest runs, with the VM's control handle (pause, resume,
    /// snapshot, stats): `pvkit run --api` starts its API server here. Default: none.
    pub control: Option<ControlHook>,
    /// Called once after the VM is built and before the guest runs (after
    /// [`VmConfig::control`]); an `Err` ends the run with [`VmError::StartRefused`] and
    /// the guest never runs. The target of a live migration waits here for the source's go
    /// ([`crate::migration::target`]). Default: none.
    pub start_gate: Option<StartGate>,
    /// The pre-shared migration key (`pvkit run --migration-key FILE`, read at start):
    /// an incoming migration requires it, and this VM's outgoing migrations authenticate
    /// their stream with it ([`crate::migration::auth`]). Default: none (unauthenticated).
    pub migration_key: Option<Arc<crate::migration::auth::MigrationKey>>,
}

/// Decides whether a built VM may start ([`VmConfig::start_gate`]).
#[derive(Clone)]
pub struct StartGate(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for StartGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartGate")
    }
}

/// Receives a VM's control handle ([`VmConfig::control`]).
#[derive(Clone)]
pub struct ControlHook(pub Arc<dyn Fn(Arc<control::VmControl>) + Send + Sync>);

impl std::fmt::Debug for ControlHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlHook")
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: KernelSource::Builtin,
            mem_mib: DEFAULT_MEM_MIB,
            cmdline: String::new(),
            console: None,
            capture_console: false,
            timeout: Duration::from_secs(60),
            reg_access: None,
            started_at: None,
            disk: None,
            phase_observer: None,
            seccomp: true,
            vcpus: 1,
            record: RecordConfig::default(),
            net: None,
            nic: NicModel::Ne2000,
            irqchip: false,
            irq_test: false,
            gdb: None,
            pv_console: true,
            mergeable: false,
            restore: None,
            control: None,
            start_gate: None,
            migration_key: None,
        }
    }
}

impl VmConfig {
    /// The command line the guest receives.
    pub fn full_cmdline(&self) -> String {
        let mut tokens = Vec::new();
        if let Some(c) = self.console {
            tokens.push(format!("console={}", c.name()));
        }
        if !self.cmdline.trim().is_empty() {
            tokens.push(self.cmdline.trim().to_owned());
        }
        tokens.join(" ")
    }
}

/// Timings of one run, from [`VmConfig::started_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// Until the vCPU first entered the guest.
    pub to_guest_entry: Duration,
    /// Until the guest's first VM exit of any kind (if there was one).
    pub to_first_exit: Option<Duration>,
    /// Until the guest's first hypercall (if it made one).
    pub to_first_hypercall: Option<Duration>,
    /// Until the guest stopped.
    pub to_stop: Duration,
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Why the guest stopped.
    pub stop: StopReason,
    /// The vCPU whose exit stopped the run: 0, or the AP whose `Exit` call or fault ended
    /// it (its `RIP` is in [`RunOutcome::stop`]; [`RunOutcome::stop_regs`] are only ever
    /// vCPU 0's, so `None` then).
    pub stop_vcpu: u32,
    /// Every exit, by kind.
    pub ledger: LedgerSnapshot,
    /// Console output (when captured).
    pub console: Vec<u8>,
    /// Console bytes dropped: the capture buffer or the stdout buffer was full, stdout
    /// failed, or the stdout writer could not write them within
    /// [`crate::io::console_out::FINISH_GRACE`] at the end of the run.
    pub console_dropped: u64,
    /// Benchmark phases the guest marked.
    pub phases: Vec<PhaseRecord>,
    /// Benchmark samples the guest reported.
    pub samples: Vec<SampleRecord>,
    /// Timings.
    pub timings: Timings,
    /// The host platform.
    pub platform: PlatformInfo,
    /// How hypercall registers were accessed.
    pub reg_access: RegAccess,
    /// The ABI version in the guest's note.
    pub guest_abi: AbiVersion,
    /// The guest ELF's symbols (empty for a stripped file).
    pub symbols: Arc<SymbolTable>,
    /// vCPU 0's registers after a triple fault or a reported fault (for
    /// [`diag::diagnose`]).
    pub stop_regs: Option<StopRegs>,
    /// Exits by guest `RIP`, all vCPUs ([`VmConfig::record`]).
    pub exit_profile: Option<RipProfile>,
    /// Every exit in time order, all vCPUs ([`VmConfig::record`]).
    pub trace: Option<Trace>,
    /// What the NE2000 counted ([`VmConfig::net`]).
    pub net: Option<NicStats>,
    /// What the PV NIC counted ([`VmConfig::nic`] = [`NicModel::Pv`]).
    pub pv_net: Option<PvNetStats>,
    /// Completion interrupts the rings raised (irqfd writes, all GSIs); `None` without the
    /// in-kernel irqchip.
    pub ring_irqs_raised: Option<u64>,
    /// What the memory balloon did (`None`: the VM had no balloon).
    pub balloon: Option<BalloonStats>,
    /// KVM's count of every exit of every vCPU from guest mode, handled in the kernel or
    /// not (`KVM_GET_STATS_FD`); `None` if a vCPU has no binary statistics.
    pub kvm_exits: Option<u64>,
}

/// Errors that keep a VM from running (guest misbehaviour is a [`StopReason`], not this).
#[derive(Debug, Error)]
pub enum VmError {
    /// The kernel file could not be read.
    #[error("cannot read the guest kernel {path}: {source}")]
    ReadKernel {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel path is not a regular file (a FIFO, a device, a directory, a socket).
    #[error("cannot use {path} as the guest kernel: it is {kind}, not a regular file")]
    KernelNotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The kernel file is larger than guest RAM.
    #[error(
        "the guest kernel {path} is {len} bytes, larger than guest RAM ({limit} bytes); \
         strip it or give the guest more --mem"
    )]
    KernelTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size (at least; it may still be growing).
        len: u64,
        /// The limit: guest RAM.
        limit: u64,
    },
    /// There is no built-in kernel.
    #[error(
        "this pvkit was built without a built-in guest kernel ({0}); pass an ELF: pvkit run PATH"
    )]
    NoBuiltinKernel(&'static str),
    /// The ELF was refused.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// KVM is not usable.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// Guest memory could not be prepared.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The boot area could not be written.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The VM could not be created.
    #[error(transparent)]
    VmFd(#[from] VmFdError),
    /// KVM's CPUID table could not be read.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// The vCPU count is outside `1..=` what KVM supports.
    #[error("cannot create {requested} vCPUs: KVM supports 1 to {max}")]
    VcpuCount {
        /// The count asked for.
        requested: u32,
        /// KVM's limit (`KVM_CAP_MAX_VCPUS`).
        max: u32,
    },
    /// The VM or vCPU could not be created or run.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A device could not be placed on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The watchdog could not be set up.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// The vCPU thread could not be started.
    #[error("cannot start the vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The vCPU thread did not answer the watchdog's kicks.
    #[error("the vCPU did not stop within {0:?} after the watchdog expired")]
    VcpuStuck(Duration),
    /// The vCPU thread panicked (a bug in the VMM).
    #[error("the vCPU thread panicked")]
    VcpuPanicked,
    /// The disk image could not be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The PV devices could not be set up (epoll, eventfd, conflicting registrations).
    #[error("cannot set up the PV devices")]
    PvDevices(#[source] crate::devices::AssembleError),
    /// A thread could not be confined with its seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The network could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The start gate refused to let the guest run ([`VmConfig::start_gate`]).
    #[error("the VM was built but not started: {0}")]
    StartRefused(String),
    /// The snapshot could not be restored.
    #[error(transparent)]
    Restore(#[from] crate::snapshot::restore::RestoreError),
    /// The snapshot's memory file could not be mapped.
    #[error(transparent)]
    MemoryFile(#[from] crate::snapshot::memory_file::MemoryFileError),
    /// The in-kernel irqchip or an interrupt line could not be set up.
    #[error(transparent)]
    Irq(#[from] IrqError),
    /// The gdb server could not be started.
    #[error(transparent)]
    Gdb(#[from] crate::debug::gdb::GdbError),
}

/// How long the watchdog keeps kicking after the deadline before giving up on the thread.
const KICK_GRACE: Duration = Duration::from_secs(5);
/// Interval between kicks.
const KICK_INTERVAL: Duration = Duration::from_millis(20);

/// What a file that is not a regular file is, for [`VmError::KernelNotAFile`].
fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads the guest ELF at `path`: a regular file of at most `limit` bytes. Opened with
/// `O_NONBLOCK`, so a FIFO cannot block the open (nor a device the read); the type is
/// checked on the open file, and the read stops one byte past `limit`, so a file that grows
/// meanwhile is refused too. Nothing is read from anything but a regular file.
pub fn read_kernel_file(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, VmError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| VmError::ReadKernel {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(VmError::KernelNotAFile {
            path: path.to_owned(),
            kind: file_kind(meta.file_type()),
        });
    }
    let too_large = |len| VmError::KernelTooLarge {
        path: path.to_owned(),
        len,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

type VcpuResult = Result<(StopReason, VcpuState, Vcpu), VcpuError>;

/// vCPU 0's thread body: runs the guest on `vm` until it stops, then names the stop with
/// the vCPU's `RIP`. The vCPU is handed back, so that the supervising thread (not under
/// the vCPU filter) can read its special registers for [`diag`].
///
/// A pause ([`control`]) returns from the run loop; the vCPU is parked in `gate` (disarmed:
/// the controller may hold it) until resumed, then re-armed and run again.
fn vcpu_loop(mut vcpu: Vcpu, vm: &Vm, mut cpu: VcpuState, gate: &control::PauseGate) -> VcpuResult {
    let stop = loop {
        // SAFETY: the pointer is the `immediate_exit` byte of this vCPU's `kvm_run`
        // mapping, which lives as long as `vcpu`; the guard is dropped right after the
        // run, while this function still owns `vcpu` (before it is parked).
        let armed = unsafe { ArmGuard::new(vcpu.immediate_exit_ptr()) };
        let end = run_vcpu(&mut vcpu, vm, &mut cpu);
        drop(armed);
        match end? {
            VcpuEnd::Stopped(stop) => break stop,
            VcpuEnd::Paused => {
                let stopped;
                (vcpu, stopped) = park_at_pause(gate, 0, vcpu, vm, &cpu);
                if stopped {
                    break gate.final_stop().unwrap_or(StopReason::Timeout {
                        rip: None,
                        disk: crate::runtime::signals::DiskFlush::NoDisk,
                    });
                }
            }
        }
    };
    Ok((with_rip(stop, &vcpu), cpu, vcpu))
}

/// Parks `vcpu` (out of `KVM_RUN` at a pause) in `gate`'s `seat` with its ledger until the
/// VM resumes or stops; returns it, and whether the VM stopped while it was parked
/// (watchdog, signal, a finished migration: the guest does not run again).
fn park_at_pause(
    gate: &control::PauseGate,
    seat: usize,
    vcpu: Vcpu,
    vm: &Vm,
    cpu: &VcpuState,
) -> (Vcpu, bool) {
    let shared = &vm.shared;
    let mut vcpu = gate.park(
        seat,
        vcpu,
        cpu.exits.ledger.snapshot(),
        &shared.pause_requested,
        &shared.stop_requested,
    );
    // A kick that landed between the interrupted exit and the park must not cost the
    // resumed guest another exit.
    vcpu.clear_immediate_exit();
    (vcpu, shared.stop_requested.load(Ordering::Acquire))
}

/// Names a stop with `vcpu`'s `RIP` where the exit handler could not read it (a triple
/// fault, `hlt`, a KVM internal error, the watchdog).
fn with_rip(stop: StopReason, vcpu: &Vcpu) -> StopReason {
    match stop {
        StopReason::Shutdown { rip: None } => StopReason::Shutdown { rip: vcpu.rip() },
        StopReason::Halted { rip: None } => StopReason::Halted { rip: vcpu.rip() },
        StopReason::Timeout { rip: None, disk } => StopReason::Timeout {
            rip: vcpu.rip(),
            disk,
        },
        StopReason::InternalError { detail } => match vcpu.rip() {
            Some(rip) => StopReason::InternalError {
                detail: format!("{detail} at rip {rip:#x}"),
            },
            None => StopReason::InternalError { detail },
        },
        other => other,
    }
}

/// An AP thread's body after its confinement: runs [`machine::run_ap`] armed for kicks
/// (`ready` hears once it is armed the first time), parks the vCPU in `gate` at a pause
/// (disarmed, as vCPU 0 in [`vcpu_loop`]) and runs it again on resume, until it stops.
/// Stopped while paused, it ends with the timeout stop, which reports nothing.
fn ap_loop(
    mut vcpu: Vcpu,
    vm: &Vm,
    cpu: &mut VcpuState,
    up: &VcpuUp,
    gate: &control::PauseGate,
    ready: &mpsc::Sender<()>,
) -> Result<(StopReason, Vcpu), VmError> {
    let seat = usize::try_from(cpu.index).unwrap_or(usize::MAX);
    loop {
        // SAFETY: the `immediate_exit` byte of this vCPU's `kvm_run` mapping, which lives
        // as long as `vcpu`; the guard is dropped right after the run, while this function
        // still owns `vcpu` (before it is parked).
        let armed = unsafe { ArmGuard::new(vcpu.immediate_exit_ptr()) };
        let _ = ready.send(());
        let end = machine::run_ap(&mut vcpu, vm, cpu, up);
        drop(armed);
        match end? {
            VcpuEnd::Stopped(stop) => return Ok((stop, vcpu)),
            VcpuEnd::Paused => {
                let stopped;
                (vcpu, stopped) = park_at_pause(gate, seat, vcpu, vm, cpu);
                if stopped {
                    cpu.stopped = Some(Instant::now());
                    cpu.kvm_exits = vcpu.kvm_exits();
                    let stop = StopReason::Timeout {
                        rip: None,
                        disk: crate::runtime::signals::DiskFlush::NoDisk,
                    };
                    return Ok((stop, vcpu));
                }
            }
        }
    }
}

/// How often the supervising thread refreshes the steal-time pages.
const STEAL_TICK: Duration = Duration::from_millis(pvkit_abi::spinlock::STEAL_UPDATE_MS);

/// The name of vCPU `index`'s thread.
fn vcpu_thread_name(index: u64) -> String {
    format!("pvkit-vcpu{index}")
}

/// How long [`run`] waits for the AP threads to be ready (armed for kicks) before it
/// starts vCPU 0.
const AP_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The vCPUs other than vCPU 0 ([`VmConfig::vcpus`]), each on its own thread in
/// [`machine::run_ap`]: waiting in `KVM_RUN` for INIT-SIPI (the in-kernel LAPIC) or a
/// `VcpuUp` ([`VcpuUp`]), then running the guest until the VM stops.
struct ApThreads {
    threads: Vec<std::thread::JoinHandle<Result<VcpuState, VmError>>>,
}

impl ApThreads {
    /// Starts one thread per vCPU in `vcpus`, each holding the shared VM (and so the VM
    /// fd) as long as its vCPU and confined with the vCPU filter when `seccomp` is set.
    /// Returns once every thread is armed for kicks. An AP that stops the VM (an `Exit`
    /// call, a fault) reports it on `events` ([`Event::ApStopped`]).
    fn start(
        vcpus: Vec<(Vcpu, VcpuState)>,
        vm: &Arc<Vm>,
        up: Option<&Arc<VcpuUp>>,
        gate: &Arc<control::PauseGate>,
        seccomp: bool,
        events: &mpsc::Sender<Event>,
    ) -> Result<Self, VmError> {
        let mut aps = Self {
            threads: Vec::new(),
        };
        let (ready_tx, ready) = mpsc::channel::<()>();
        let count = vcpus.len();
        for (vcpu, mut state) in vcpus {
            let confinement = match seccomp {
                true => Some(Confinement::new(ThreadKind::Vcpu)?),
                false => None,
            };
            let vm = Arc::clone(vm);
            // No way to start it without the device: it waits in KVM_RUN until the stop.
            let up = up.cloned().unwrap_or_else(|| Arc::new(VcpuUp::new(0)));
            let gate = Arc::clone(gate);
            let (events, ready_tx) = (events.clone(), ready_tx.clone());
            let thread = std::thread::Builder::new()
                .name(vcpu_thread_name(vcpu.index()))
                .spawn(move || {
                    vm.pv
                        .vcpu_thread_started(u32::try_from(state.index).unwrap_or(u32::MAX));
                    let seat = usize::try_from(state.index).unwrap_or(usize::MAX);
                    if let Err(e) = confinement.map(Confinement::apply).transpose() {
                        gate.end(seat);
                        return Err(VmError::from(e));
                    }
                    let r = ap_loop(vcpu, &vm, &mut state, &up, &gate, &ready_tx);
                    gate.end(seat);
                    let (r, vcpu) = match r {
                        Ok((stop, vcpu)) => (Ok(stop), Some(vcpu)),
                        Err(e) => (Err(e), None),
                    };
                    match r {
                        Ok(StopReason::Timeout { .. }) => {}
                        Ok(stop) => {
                            let index = u32::try_from(state.index).unwrap_or(u32::MAX);
                            let stop = match &vcpu {
                                Some(v) => with_rip(stop, v),
                                None => stop,
                            };
                            let _ = events.send(Event::ApStopped(index, stop));
                        }
                        Err(e) => {
                            let msg = format!("vCPU {}: {e}", state.index);
                            let _ = events.send(Event::HostFailure(msg));
                        }
                    }
                    // The vCPU fd before the VM's.
                    drop(vcpu);
                    drop(vm);
                    Ok(state)
                })
                .map_err(VmError::Thread)?;
            aps.threads.push(thread);
        }
        drop(ready_tx);
        let deadline = Instant::now() + AP_READY_TIMEOUT;
        for _ in 0..count {
            let wait = deadline.saturating_duration_since(Instant::now());
            if ready.recv_timeout(wait).is_err() {
                // A thread failed before it was armed (its error comes with the join), or
                // it is stuck.
                break;
            }
        }
        Ok(aps)
    }

    /// Kicks AP `index` (1-based vCPU index) out of `KVM_RUN`.
    fn kick(&self, index: u32) -> Result<(), WatchdogError> {
        match index
            .checked_sub(1)
            .and_then(|i| self.threads.get(usize::try_from(i).ok()?))
        {
            Some(t) if !t.is_finished() => watchdog::kick(t),
            _ => Ok(()),
        }
    }

    /// Stops every AP: sets `stop_requested` and kicks each thread until it ends
    /// ([`VmError::VcpuStuck`] after [`KICK_GRACE`]); the vCPUs' states, or the first
    /// error of a thread.
    fn stop(mut self, stop_requested: &AtomicBool) -> Result<Vec<VcpuState>, VmError> {
        stop_requested.store(true, Ordering::Release);
        let since = Instant::now();
        while self.threads.iter().any(|t| !t.is_finished()) {
            if since.elapsed() > KICK_GRACE {
                return Err(VmError::VcpuStuck(KICK_GRACE));
            }
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                watchdog::kick(t)?;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut states = Vec::new();
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            match t.join().map_err(|_| VmError::VcpuPanicked).and_then(|r| r) {
                Ok(s) => states.push(s),
                Err(e) if first.is_ok() => first = Err(e),
                Err(_) => {}
            }
        }
        first.map(|()| states)
    }
}

/// What the watchdog thread hears about.
enum Event {
    /// The vCPU thread ended.
    VcpuDone,
    /// A host thread of the VM failed; the VM must stop.
    HostFailure(String),
    /// `VcpuUp` started this AP: kick its thread out of `KVM_RUN`.
    Wake(u32),
    /// This AP stopped the VM (an `Exit` call, a fault, a triple fault): stop vCPU 0 too.
    ApStopped(u32, StopReason),
    /// The debugger's Ctrl-C: kick vCPU 0 out of `KVM_RUN` (`crate::debug::gdb`).
    DebugInterrupt,
    /// The controller pauses or stops the VM: kick this vCPU out of `KVM_RUN`.
    Kick(u32),
}

/// The watchdog: waits for the vCPU thread to end. At the deadline, or as soon as a host
/// thread of the VM reports a failure, it sets `stop_requested` and kicks the vCPU out of
/// the guest every [`KICK_INTERVAL`] until the thread ends ([`VmError::VcpuStuck`] after
/// [`KICK_GRACE`]). Returns the first host failure reported, if any.
///
/// It also wakes APs started by `VcpuUp` (`kick_ap`) and keeps the first stop of an AP in
/// `ap_stop`, stopping vCPU 0 as for a failure; with `tick`, it calls the function about
/// every given interval (the steal-time refresh of vCPUs that do not exit).
fn supervise<T>(
    rx: &mpsc::Receiver<Event>,
    thread: &std::thread::JoinHandle<T>,
    deadline: Option<Instant>,
    stop_requested: &AtomicBool,
    kick_ap: &dyn Fn(u32) -> Result<(), WatchdogError>,
    ap_stop: &mut Option<(u32, StopReason)>,
    tick: Option<(&dyn Fn(), Duration)>,
) -> Result<Option<String>, VmError> {
    let mut last_tick = Instant::now();
    // Since when the vCPU is being kicked out of the guest.
    let mut kicking: Option<Instant> = None;
    let mut host_failure: Option<String> = None;
    loop {
        let mut wait = match (kicking, deadline) {
            (Some(_), _) => KICK_INTERVAL,
            (None, Some(d)) => d.saturating_duration_since(Instant::now()),
            (None, None) => Duration::from_secs(3600),
        };
        if signals::installed() {
            // SIGINT/SIGTERM only set a flag: look at it often enough.
            wait = wait.min(signals::POLL_INTERVAL);
        }
        if let Some((f, every)) = tick {
            if last_tick.elapsed() >= every {
                f();
                last_tick = Instant::now();
            }
            wait = wait.min(every);
        }
        match rx.recv_timeout(wait) {
            Ok(Event::VcpuDone) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Ok(host_failure)
            }
            Ok(Event::HostFailure(msg)) => {
                host_failure.get_or_insert(msg);
            }
            Ok(Event::Wake(index)) => {
                kick_ap(index)?;
                if kicking.is_none() {
                    continue;
                }
            }
            Ok(Event::ApStopped(index, stop)) => {
                ap_stop.get_or_insert((index, stop));
            }
            Ok(Event::DebugInterrupt) => {
                if !thread.is_finished() {
                    watchdog::kick(thread)?;
                }
                if kicking.is_none() {
                    continue;
                }
            }
            Ok(Event::Kick(0)) => {
                if !thread.is_finished() {
                    watchdog::kick(thread)?;
                }
                if kicking.is_none() {
                    continue;
                }
            }
            Ok(Event::Kick(index)) => {
                kick_ap(index)?;
                if kicking.is_none() {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if kicking.is_none()
                    && signals::pending().is_none()
                    && deadline.is_none_or(|d| Instant::now() < d)
                {
                    continue;
                }
            }
        }
        let since = *kicking.get_or_insert_with(|| {
            stop_requested.store(true, Ordering::Release);
            Instant::now()
        });
        if since.elapsed() > KICK_GRACE {
            return Err(VmError::VcpuStuck(KICK_GRACE));
        }
        watchdog::kick(thread)?;
    }
}

/// Flushes the disk (`fdatasync`) after a stop by a signal or the watchdog. The vCPU and
/// I/O threads have ended: every write the guest saw complete is in the file.
fn flush_disk(disk: Option<&SharedDisk>) -> DiskFlush {
    use pvkit_devices::BlockBackend;
    match disk.cloned().map(|mut d| d.flush()) {
        None => DiskFlush::NoDisk,
        Some(Ok(())) => DiskFlush::Flushed,
        Some(Err(e)) => DiskFlush::Failed(e.to_string()),
    }
}

/// Runs a VM with the PV devices of ABI v1 (console and block rings, PV block device, PV
/// clock page) until the guest stops or the watchdog expires.
pub fn run(config: &VmConfig) -> Result<RunOutcome, VmError> {
    let t0 = config.started_at.unwrap_or_else(Instant::now);
    let (tx, rx) = mpsc::channel();
    let fatal = tx.clone();
    let on_fatal = Arc::new(move |msg| {
        let _ = fatal.send(Event::HostFailure(msg));
    });
    // The vCPU filter is compiled on a helper thread while the VM is built (it takes
    // milliseconds here: most of a restore's time to the guest running).
    let confinement = match config.seccomp {
        true => {
            crate::runtime::seccomp::use_main_arena_only();
            Some(std::thread::spawn(|| Confinement::new(ThreadKind::Vcpu)))
        }
        false => None,
    };
    let built = builder::build(config, on_fatal)?;
    let builder::Built {
        vm,
        mut vcpus,
        console,
        disk,
        io_stopper,
        bench,
        platform,
        reg_access,
        guest_abi,
        symbols,
        mut net,
        mut pv_net,
        ring_irqs,
        balloon,
        free_page_hint: _,
        vcpu_up,
        steal,
        devices,
        info,
    } = built;
    let base_ledger = info.base_ledger.clone();
    let gate = Arc::new(control::PauseGate::new(info.vcpus));
    if let Some(hook) = &config.control {
        let kick = Mutex::new(tx.clone());
        let kick = Box::new(move |index| {
            let tx = kick
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = tx.send(Event::Kick(index));
        });
        let ctl = control::VmControl::new(Arc::clone(&vm), Arc::clone(&gate), kick, devices, info);
        (hook.0)(Arc::new(ctl));
    }
    if let Some(StartGate(gate_fn)) = &config.start_gate {
        if let Err(msg) = gate_fn() {
            if let Some(s) = io_stopper {
                s.stop();
            }
            if let Some(n) = net.as_mut() {
                let _ = n.stop();
            }
            return Err(VmError::StartRefused(msg));
        }
    }
    for (_, state) in &mut vcpus {
        let index = u32::try_from(state.index).unwrap_or(u32::MAX);
        state.recorder = ExitRecorder::new(config.record, t0, index);
    }
    let confinement = match confinement {
        Some(compiling) => Some(compiling.join().map_err(|_| VmError::VcpuPanicked)??),
        None => None,
    };
    let others = vcpus.split_off(1.min(vcpus.len()));
    let (vcpu, boot) = vcpus.pop().ok_or(VmError::VcpuCount {
        requested: 0,
        max: 0,
    })?;
    let stop_requested = Arc::clone(&vm.shared.stop_requested);
    let mut boot = boot;
    if let Some(addr) = config.gdb {
        // Served by its own thread (confined with the gdb filter when seccomp is on); the
        // vCPU thread only waits on a channel.
        let listener = crate::debug::gdb::GdbListener::bind(addr)?;
        if let Some(bound) = listener.local_addr() {
            eprintln!("pvkit: gdb: waiting for a connection on {bound}");
        }
        let fd = vcpu.debug_fd().map_err(crate::debug::gdb::GdbError::Dup)?;
        let kick = Mutex::new(tx.clone());
        let kick = Box::new(move || {
            let tx = kick
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = tx.send(Event::DebugInterrupt);
        });
        boot.debug = Some(listener.serve(fd, vm.mem().clone(), kick, config.seccomp)?);
    }

    if let Some(up) = &vcpu_up {
        let wake = Mutex::new(tx.clone());
        up.set_waker(Box::new(move |i| {
            let tx = wake
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = tx.send(Event::Wake(i));
        }));
    }
    let aps = ApThreads::start(others, &vm, vcpu_up.as_ref(), &gate, config.seccomp, &tx)?;
    let vm0 = Arc::clone(&vm);
    let gate0 = Arc::clone(&gate);
    let thread = std::thread::Builder::new()
        .name(vcpu_thread_name(vcpu.index()))
        .spawn(move || {
            vm0.pv.vcpu_thread_started(0);
            // Confined before the first guest instruction; the filter stays for good.
            let r = match confinement.map(Confinement::apply).transpose() {
                Ok(_) => vcpu_loop(vcpu, &vm0, boot, &gate0).map_err(VmError::from),
                Err(e) => Err(VmError::from(e)),
            };
            gate0.end(0);
            // This thread's reference to the VM; the supervising thread holds another until
            // after it has dropped the vCPU handed back, so the VM fd outlives the vCPU fd.
            drop(vm0);
            let _ = tx.send(Event::VcpuDone);
            r
        })
        .map_err(VmError::Thread)?;

    // A timeout too large to represent means "no deadline".
    let deadline = t0.checked_add(config.timeout);
    let mut ap_stop = None;
    let kick_ap = |i| aps.kick(i);
    // vCPUs that do not exit still get their steal time refreshed.
    let steal_tick = steal.map(|st| {
        let vm = Arc::clone(&vm);
        move || st.refresh_all(vm.mem(), Instant::now())
    });
    let supervised = supervise(
        &rx,
        &thread,
        deadline,
        &stop_requested,
        &kick_ap,
        &mut ap_stop,
        steal_tick.as_ref().map(|f| (f as &dyn Fn(), STEAL_TICK)),
    );
    let mut host_failure = match supervised {
        Ok(failure) => failure,
        Err(e) => {
            if let Some(s) = io_stopper {
                s.stop();
            }
            if let Some(n) = net.as_mut() {
                let _ = n.stop();
            }
            if let Some(n) = pv_net.as_mut() {
                let _ = n.stop();
            }
            let _ = aps.stop(&stop_requested);
            return Err(e);
        }
    };
    let (stop, mut boot, vcpu) = thread.join().map_err(|_| VmError::VcpuPanicked)??;
    let stop_regs = match &stop {
        StopReason::Shutdown { .. } | StopReason::Fault(_) => {
            vcpu.regs_and_sregs().map(|(r, s)| StopRegs {
                rip: r.rip,
                rsp: r.rsp,
                cr2: s.cr2,
                cr3: s.cr3,
            })
        }
        _ => None,
    };
    // The VM outlives the vCPU (this thread holds it).
    drop(vcpu);
    let mut others = aps.stop(&stop_requested)?;
    // An AP's stop (an `Exit` call, a fault) ended the run: vCPU 0 was only kicked out.
    let (stop_vcpu, stop) = match (ap_stop, stop) {
        (Some((index, ap)), StopReason::Timeout { .. }) => (index, ap),
        (_, stop) => (0, stop),
    };
    if let Err(msg) = vm.pv.shutdown() {
        host_failure.get_or_insert(msg);
    }
    if let Some(Err(msg)) = net.as_mut().map(|n| n.stop()) {
        host_failure.get_or_insert(msg);
    }
    if let Some(Err(msg)) = pv_net.as_mut().map(|n| n.stop()) {
        host_failure.get_or_insert(msg);
    }
    let stop = match (host_failure, signals::pending()) {
        (Some(detail), _) => StopReason::InternalError { detail },
        // The watchdog kicked the vCPU out because of SIGINT/SIGTERM.
        (None, Some(signal)) if matches!(stop, StopReason::Timeout { .. }) => StopReason::Signal {
            signal,
            disk: flush_disk(disk.as_ref()),
        },
        // The watchdog expired: flush as for a signal.
        (None, None) if matches!(stop, StopReason::Timeout { .. }) => match stop {
            StopReason::Timeout { rip, .. } => StopReason::Timeout {
                rip,
                disk: flush_disk(disk.as_ref()),
            },
            other => other,
        },
        (None, _) => stop,
    };

    // Every vCPU's exits; only vCPU 0 runs guest code, so its timings are the run's.
    let mut ledger = merge_ledgers(std::iter::once(&boot).chain(&others));
    // A restored VM counts on from the snapshot's exits.
    ledger.merge(&base_ledger);
    let kvm_exits = std::iter::once(&boot)
        .chain(&others)
        .map(|c| c.kvm_exits)
        .sum::<Option<u64>>();
    let timings = Timings {
        to_guest_entry: boot
            .entered
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(t0)),
        to_first_exit: boot
            .exits
            .first_exit
            .map(|t| t.saturating_duration_since(t0)),
        to_first_hypercall: boot
            .exits
            .first_hypercall
            .map(|t| t.saturating_duration_since(t0)),
        to_stop: boot
            .stopped
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(t0)),
    };
    let mut exit_profile: Option<RipProfile> = None;
    let mut trace: Option<Trace> = None;
    for r in std::iter::once(&mut boot)
        .chain(&mut others)
        .filter_map(|c| c.recorder.take())
    {
        if let Some(p) = &r.rips {
            exit_profile.get_or_insert_with(Default::default).merge(p);
        }
        if let Some(t) = r.trace {
            match &mut trace {
                None => trace = Some(t),
                Some(all) => all.merge(&t),
            }
        }
    }
    let (phases, samples) = bench.take();
    // Bounded: the writer thread gets a short grace, what it cannot write is counted.
    console.finish(crate::io::console_out::FINISH_GRACE);
    Ok(RunOutcome {
        stop,
        stop_vcpu,
        ledger,
        console: console.captured(),
        console_dropped: console.dropped(),
        phases,
        samples,
        timings,
        platform,
        reg_access,
        guest_abi,
        symbols,
        stop_regs,
        exit_profile,
        trace,
        net: net.map(|n| n.stats()),
        pv_net: pv_net.map(|n| n.stats()),
        ring_irqs_raised: ring_irqs.map(|r| r.raised()),
        balloon: balloon.map(|b| b.stats()),
        kvm_exits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_assembly() {
        let mut c = VmConfig {
            console: Some(ConsoleKind::Pv),
            cmdline: " print=3 ".into(),
            ..VmConfig::default()
        };
        assert_eq!(c.full_cmdline(), "console=pv print=3");
        c.console = None;
        assert_eq!(c.full_cmdline(), "print=3");
        c.cmdline.clear();
        assert_eq!(c.full_cmdline(), "");
    }

    #[test]
    fn a_host_failure_stops_the_vcpu_at_once() {
        watchdog::install().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (s2, tx2) = (Arc::clone(&stop), tx.clone());
        // A stand-in vCPU thread: runs until asked to stop (the kick signal is harmless
        // on a thread that is not in KVM_RUN).
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = tx2.send(Event::VcpuDone);
        });
        tx.send(Event::HostFailure("the host I/O thread panicked: x".into()))
            .unwrap();
        let t = Instant::now();
        let deadline = Some(Instant::now() + Duration::from_secs(3600));
        let r = supervise(&rx, &thread, deadline, &stop, &|_| Ok(()), &mut None, None).unwrap();
        assert_eq!(r.as_deref(), Some("the host I/O thread panicked: x"));
        assert!(t.elapsed() < Duration::from_secs(2));
        thread.join().unwrap();
        // Without a failure and without a deadline, it just waits for the thread.
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(Event::VcpuDone);
        });
        let never = AtomicBool::new(false);
        assert_eq!(
            supervise(&rx, &thread, None, &never, &|_| Ok(()), &mut None, None).unwrap(),
            None
        );
        assert!(!never.load(Ordering::Acquire));
    }

    #[test]
    fn bad_kernels_are_errors_before_kvm() {
        let c = VmConfig {
            kernel: KernelSource::Bytes(b"not an elf at all, really not".to_vec()),
            ..VmConfig::default()
        };
        assert!(matches!(run(&c), Err(VmError::Elf(_))));
        let c = VmConfig {
            kernel: KernelSource::Path("/nonexistent/pvkit-kernel".into()),
            ..VmConfig::default()
        };
        assert!(matches!(run(&c), Err(VmError::ReadKernel { .. })));
    }
}
