//! `pvkit`: run a pvkit guest under KVM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pvkit_vmm::stop::{STATUS_USAGE, STATUS_VMM_ERROR};
use pvkit_vmm::vcpu::RegAccess;
use pvkit_vmm::{ConsoleKind, KernelSource, StopReason, VmConfig};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  N     the guest called exit(N) (0-255)
  1     VMM error: unreadable or malformed ELF, ABI version mismatch, no usable /dev/kvm
  2     usage error
  123   KVM internal error, or the guest halted with nothing to wake it
  124   the watchdog expired (--timeout)
  125   the guest reported a fault or a panic
  126   the guest triple-faulted (shutdown)";

/// Run paravirtualized and emulated-device guests under KVM.
#[derive(Parser, Debug)]
#[command(name = "pvkit", version, about, after_long_help = EXIT_STATUS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest kernel and run it until it exits.
    #[command(after_long_help = EXIT_STATUS_HELP)]
    Run(RunArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ConsoleArg {
    /// The emulated 16550 UART at COM1 (one exit per register access).
    Uart,
    /// The PV console (one hypercall per write).
    Pv,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RegAccessArg {
    /// Sync regs when KVM offers them, else ioctls.
    Auto,
    /// KVM sync regs through the shared kvm_run page (no extra ioctl per hypercall).
    Sync,
    /// KVM_GET_REGS/KVM_SET_REGS per hypercall.
    Ioctl,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The guest kernel: a statically linked x86_64 ELF carrying the pvkit ABI note.
    /// Without it, the guest kernel built into pvkit runs.
    elf: Option<PathBuf>,

    /// The console the guest should use; passed to it as `console=uart|pv` on its command
    /// line. Without it, the guest picks.
    #[arg(long, value_enum)]
    console: Option<ConsoleArg>,

    /// Guest RAM in MiB (4 to 3072).
    #[arg(long, value_name = "MIB", default_value_t = pvkit_vmm::memory::DEFAULT_MEM_MIB)]
    mem: u64,

    /// Stop the guest after this many seconds (fractions allowed) and exit with status 124.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    timeout: f64,

    /// Print a report to stderr at the end: platform (KVM kind, CPU, TSC rate), every VM
    /// exit by kind sorted by count, total exits, time to the first hypercall and to the
    /// stop, and peak RSS.
    #[arg(long)]
    stats: bool,

    /// How the VMM reads and writes hypercall registers.
    #[arg(long, value_enum, default_value_t = RegAccessArg::Auto)]
    reg_access: RegAccessArg,

    /// The guest kernel command line (after `--`), e.g. `-- print=10 exit=3`.
    #[arg(last = true, value_name = "KERNEL-CMDLINE")]
    cmdline: Vec<String>,
}

fn config(args: &RunArgs, started_at: Instant) -> anyhow::Result<VmConfig> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 1e9) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    Ok(VmConfig {
        kernel: match &args.elf {
            Some(p) => KernelSource::Path(p.clone()),
            None => KernelSource::Builtin,
        },
        mem_mib: args.mem,
        cmdline: args.cmdline.join(" "),
        console: args.console.map(|c| match c {
            ConsoleArg::Uart => ConsoleKind::Uart,
            ConsoleArg::Pv => ConsoleKind::Pv,
        }),
        capture_console: false,
        timeout: Duration::from_secs_f64(args.timeout),
        reg_access: match args.reg_access {
            RegAccessArg::Auto => None,
            RegAccessArg::Sync => Some(RegAccess::SyncRegs),
            RegAccessArg::Ioctl => Some(RegAccess::Ioctl),
        },
        started_at: Some(started_at),
    })
}

fn run(args: &RunArgs, started_at: Instant) -> anyhow::Result<u8> {
    let cfg = config(args, started_at)?;
    let outcome = pvkit_vmm::run(&cfg).context("cannot run the guest")?;
    let _ = std::io::stdout().flush();
    if !matches!(outcome.stop, StopReason::Exit(_)) {
        eprintln!("{}", outcome.stop);
    }
    if args.stats {
        eprint!(
            "{}",
            pvkit_vmm::stats::report(&outcome, pvkit_vmm::stats::peak_rss_kib())
        );
    }
    Ok(outcome.stop.exit_status())
}

fn main() -> ExitCode {
    let started_at = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { STATUS_USAGE } else { 0 });
        }
    };
    let result = match &cli.command {
        Command::Run(args) => run(args, started_at),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the context, then the cause.
            eprintln!("error: {e:#}");
            ExitCode::from(STATUS_VMM_ERROR)
        }
    }
}
