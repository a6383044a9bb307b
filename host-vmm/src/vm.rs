//! The library entry point: configure a VM, run it to the end under the watchdog, get a
//! [`RunOutcome`].
//!
//! Threads: the caller's thread builds the VM, then waits as the watchdog; the guest runs
//! on a dedicated vCPU thread that owns the [`Machine`] and hands it back when the guest
//! stops.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pvkit_abi::AbiVersion;
use thiserror::Error;

use crate::bench::{PhaseRecord, SampleRecord};
use crate::bus::{BusError, PortBus};
use crate::console::Console;
use crate::elf::{ElfError, ElfImage};
use crate::exit::{ExitAction, Machine};
use crate::hypercall::{NoPvDevices, PvDevices, BASE_FEATURES};
use crate::ledger::LedgerSnapshot;
use crate::memory::{create_ram, write_boot_area, BootParams, MemoryError, DEFAULT_MEM_MIB};
use crate::platform::{open_kvm, PlatformError, PlatformInfo};
use crate::serial::{Uart, COM1_BASE, COM1_LEN};
use crate::stop::StopReason;
use crate::vcpu::{create_vm, RegAccess, Vcpu, VcpuError};
use crate::watchdog::{self, ArmGuard, WatchdogError};

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
    /// Every exit, by kind.
    pub ledger: LedgerSnapshot,
    /// Console output (when captured).
    pub console: Vec<u8>,
    /// Console bytes dropped because the capture buffer was full.
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
}

/// How long the watchdog keeps kicking after the deadline before giving up on the thread.
const KICK_GRACE: Duration = Duration::from_secs(5);
/// Interval between kicks.
const KICK_INTERVAL: Duration = Duration::from_millis(20);

fn kernel_bytes(src: &KernelSource) -> Result<std::borrow::Cow<'static, [u8]>, VmError> {
    Ok(match src {
        KernelSource::Builtin => crate::guests::builtin_kernel()
            .ok_or(VmError::NoBuiltinKernel(crate::guests::BUILD_STATUS))?
            .into(),
        KernelSource::Path(p) => std::fs::read(p)
            .map_err(|source| VmError::ReadKernel {
                path: p.clone(),
                source,
            })?
            .into(),
        KernelSource::Bytes(b) => b.clone().into(),
    })
}

type VcpuResult = Result<(StopReason, Machine, Instant, Instant), VcpuError>;

fn vcpu_loop(mut vcpu: Vcpu, mut m: Machine) -> VcpuResult {
    // SAFETY: the pointer is the `immediate_exit` byte of this vCPU's `kvm_run` mapping,
    // which lives as long as `vcpu`; the guard is dropped at the end of this function,
    // before `vcpu`.
    let _armed = unsafe { ArmGuard::new(vcpu.immediate_exit_ptr()) };
    let entered = Instant::now();
    let stop = loop {
        match vcpu.step(&mut m)? {
            ExitAction::Continue | ExitAction::Return(_) => {}
            ExitAction::Stop(reason) => break reason,
        }
    };
    let stopped = Instant::now();
    let stop = match stop {
        StopReason::Shutdown { rip: None } => StopReason::Shutdown { rip: vcpu.rip() },
        StopReason::Halted { rip: None } => StopReason::Halted { rip: vcpu.rip() },
        StopReason::Timeout { rip: None } => StopReason::Timeout { rip: vcpu.rip() },
        StopReason::InternalError { detail } => match vcpu.rip() {
            Some(rip) => StopReason::InternalError {
                detail: format!("{detail} at rip {rip:#x}"),
            },
            None => StopReason::InternalError { detail },
        },
        other => other,
    };
    Ok((stop, m, entered, stopped))
}

/// Runs a VM with no PV block/ring devices.
pub fn run(config: &VmConfig) -> Result<RunOutcome, VmError> {
    run_with(config, Box::new(NoPvDevices))
}

/// Runs a VM with the given PV devices until the guest stops or the watchdog expires.
pub fn run_with(config: &VmConfig, pv: Box<dyn PvDevices>) -> Result<RunOutcome, VmError> {
    let t0 = config.started_at.unwrap_or_else(Instant::now);
    let bytes = kernel_bytes(&config.kernel)?;
    let image = ElfImage::parse(&bytes)?;
    let kvm = open_kvm()?;
    watchdog::install()?;

    let mem = create_ram(config.mem_mib)?;
    let kernel = image.load(&mem)?;
    let features = BASE_FEATURES | pv.features();
    let vm = create_vm(&kvm, &mem)?;
    let vcpu = Vcpu::new(&kvm, &vm, kernel.entry, features, config.reg_access)?;
    let tsc_khz = vcpu.tsc_khz();
    let cmdline = config.full_cmdline();
    write_boot_area(
        &mem,
        &BootParams {
            cmdline: cmdline.as_bytes(),
            kernel: kernel.span.clone(),
            features: features.bits(),
            tsc_khz: tsc_khz.map_or(0, u64::from),
        },
    )?;

    let console = if config.capture_console {
        Console::capture()
    } else {
        Console::stdout()
    };
    let mut bus = PortBus::new();
    bus.insert(COM1_BASE, COM1_LEN, Box::new(Uart::new(console.clone())))?;
    let machine = Machine::new(mem, bus, console.clone(), pv);
    let stop_requested = machine.stop_requested.clone();
    let platform = crate::platform::info(tsc_khz);
    let reg_access = vcpu.reg_access();

    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("pvkit-vcpu0".into())
        .spawn(move || {
            // The VM fd must outlive the vCPU: keep it on this thread.
            let _vm = vm;
            let r = vcpu_loop(vcpu, machine);
            let _ = tx.send(());
            r
        })
        .map_err(VmError::Thread)?;

    // A timeout too large to represent means "no deadline".
    let deadline = t0.checked_add(config.timeout);
    let mut expired = false;
    loop {
        let wait = match deadline {
            _ if expired => KICK_INTERVAL,
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Some(deadline) = deadline else {
                    continue;
                };
                if !expired {
                    expired = true;
                    stop_requested.store(true, Ordering::Release);
                }
                if deadline.elapsed() > KICK_GRACE {
                    return Err(VmError::VcpuStuck(KICK_GRACE));
                }
                watchdog::kick(&thread)?;
            }
        }
    }
    let (stop, machine, entered, stopped) = thread.join().map_err(|_| VmError::VcpuPanicked)??;

    let (phases, samples) = machine.bench.into_parts();
    Ok(RunOutcome {
        stop,
        ledger: machine.ledger.snapshot(),
        console: console.captured(),
        console_dropped: console.dropped(),
        phases,
        samples,
        timings: Timings {
            to_guest_entry: entered.saturating_duration_since(t0),
            to_first_exit: machine.first_exit.map(|t| t.saturating_duration_since(t0)),
            to_first_hypercall: machine
                .first_hypercall
                .map(|t| t.saturating_duration_since(t0)),
            to_stop: stopped.saturating_duration_since(t0),
        },
        platform,
        reg_access,
        guest_abi: kernel.abi,
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
