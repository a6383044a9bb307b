//! `pvkit`: run a pvkit guest under KVM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pvkit_vmm::devices::legacy::ne2000::{NetBackendConfig, NetConfig};
use pvkit_vmm::runtime::stop::{STATUS_USAGE, STATUS_VMM_ERROR};
use pvkit_vmm::vstate::vcpu::RegAccess;
use pvkit_vmm::{ConsoleKind, DiskConfig, KernelSource, NicModel, StopReason, VmConfig};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  N     the guest called exit(N) (0-255)
  1     VMM error: unreadable or malformed ELF, ABI version mismatch, no usable /dev/kvm
  2     usage error
  123   KVM internal error, or the guest halted with nothing to wake it
  124   the watchdog expired (--timeout); the disk was flushed first
  125   the guest reported a fault or a panic
  126   the guest triple-faulted (shutdown)
  130   stopped by SIGINT (143: SIGTERM); the disk was flushed first
  159   a VMM thread made a system call its seccomp filter forbids (docs/SECURITY.md)";

/// Run paravirtualized and emulated-device guests under KVM.
#[derive(Parser, Debug)]
#[command(name = "pvkit", version, about, after_long_help = EXIT_STATUS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest kernel and run it until it exits.
    #[command(after_long_help = EXIT_STATUS_HELP)]
    Run(RunArgs),
    /// Benchmark emulated against paravirtual devices: exits, cycles and time per op.
    #[command(after_long_help = BENCH_HELP)]
    Bench(BenchArgs),
    /// Create a guest kernel crate that builds with `cargo build --release` and boots with
    /// `pvkit run`.
    New(NewArgs),
    /// Boot N guests at once, each a `pvkit run` process, on one bridge; measure start rate
    /// and memory per VM; run a UDP ring through all of them and verify it. Needs root.
    #[command(after_long_help = FLEET_HELP)]
    Fleet(FleetArgs),
    /// Send a request to a running VM's control API (`pvkit run --api PATH`).
    Ctl(CtlArgs),
}

const FLEET_HELP: &str = "\
The guests run the built-in kernel's net=ring mode on the emulated NE2000, each on a TAP
device that is a port of the bridge pvbr0 (10.88.0.1/16) in a network namespace
pvkit-fleet-<pid> created for the run and deleted after it. Guest K is 10.88.0.(10+K) with
MAC 52:54:00:88:00:K. Once every guest is ready, the host reads each process's PSS
(/proc/PID/smaps_rollup) and guest-RAM PSS (/proc/PID/smaps), then sends a UDP message
around the ring host -> 1 -> ... -> N -> host; each guest adds its id, the last guest and
the host check the sum N(N+1)/2. KSM is reported, never switched on.

Exit status:
  0     every guest started, the ring verified, every guest exited 0
  1     the fleet could not start (no root, no /dev/net/tun, bad options)
  2     usage error
  3     a guest failed to start or exit cleanly, or the ring did not verify";

#[derive(clap::Args, Debug)]
struct FleetArgs {
    /// How many guests (1 to 1000).
    #[arg(value_parser = clap::value_parser!(u32).range(1..=1000))]
    vms: u32,

    /// Guest RAM per VM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    mem: u64,

    /// Each guest writes every page of MIB MiB, then stops using it, before it is ready.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    touch: u64,

    /// With --touch: the guests give that memory back to the host through the balloon.
    #[arg(long, requires = "touch")]
    give_back: bool,

    /// Bound on the whole run, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    timeout: f64,

    /// Also write the results (per guest too) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Guest RAM MADV_MERGEABLE (`pvkit run --mergeable`); when KSM runs, the host waits
    /// for it to settle before it measures.
    #[arg(long)]
    mergeable: bool,

    /// Switch the host's KSM on for this run (/sys/kernel/mm/ksm/run = 1) and back to what
    /// it was afterwards. Without it pvkit never touches KSM.
    #[arg(long, requires = "mergeable")]
    enable_ksm: bool,

    /// Do not confine the guests' VMM threads, nor this process's readers of their output,
    /// with seccomp.
    #[arg(long)]
    no_seccomp: bool,

    /// The guests' NIC: the PV NIC (default; the guests wait for frames in `hlt`,
    /// `pvnet=irq`) or the emulated NE2000.
    #[arg(long, value_enum, value_name = "MODEL", default_value_t = NicArg::Pv)]
    nic: NicArg,
}

/// Exit status of `pvkit fleet` when a guest or the ring failed.
const STATUS_FLEET_FAILED: u8 = 3;

fn timeout_arg(t: f64) -> anyhow::Result<Duration> {
    if !(t.is_finite() && t > 0.0 && t <= 1e6) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(t))
}

fn fleet_config(
    vms: u32,
    mem: u64,
    timeout: Duration,
    seccomp: bool,
) -> anyhow::Result<pvkit_cli::fleet::FleetConfig> {
    let pvkit = std::env::current_exe().context("cannot find the pvkit binary to run guests")?;
    if !(pvkit_vmm::vstate::memory::MIN_MEM_MIB..=pvkit_vmm::vstate::memory::MAX_MEM_MIB)
        .contains(&mem)
    {
        anyhow::bail!(
            "--mem must be {} to {} MiB",
            pvkit_vmm::vstate::memory::MIN_MEM_MIB,
            pvkit_vmm::vstate::memory::MAX_MEM_MIB
        );
    }
    let mut cfg = pvkit_cli::fleet::FleetConfig::new(pvkit, vms, mem);
    cfg.timeout = timeout;
    cfg.seccomp = seccomp;
    Ok(cfg)
}

fn fleet(args: &FleetArgs) -> anyhow::Result<u8> {
    use pvkit_cli::fleet::{self, report};
    let mut cfg = fleet_config(
        args.vms,
        args.mem,
        timeout_arg(args.timeout)?,
        !args.no_seccomp,
    )?;
    if args.touch > 0 && args.touch >= args.mem {
        anyhow::bail!("--touch must be less than --mem");
    }
    cfg.touch_mib = args.touch;
    cfg.give_back = args.give_back;
    cfg.mergeable = args.mergeable;
    cfg.nic = match args.nic {
        NicArg::Pv => fleet::FleetNic::Pv,
        NicArg::Ne2000 => fleet::FleetNic::Ne2000,
    };
    let ksm = if args.enable_ksm {
        Some(fleet::ksm::KsmOn::enable()?)
    } else {
        None
    };
    let outcome = fleet::run(&cfg).context("cannot run the fleet");
    drop(ksm);
    let outcome = outcome?;
    print!("{}", report::markdown(&outcome));
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&outcome))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(signal) = pvkit_vmm::runtime::signals::pending() {
        eprintln!("pvkit: fleet stopped by {signal}");
        return Ok(signal.exit_status());
    }
    Ok(if outcome.passed() {
        0
    } else {
        STATUS_FLEET_FAILED
    })
}

#[derive(clap::Args, Debug)]
struct NewArgs {
    /// The crate's name, also its kernel binary's: ASCII letters, digits, `-` and `_`.
    name: String,

    /// The directory to create (or an empty one to fill). Default: ./NAME.
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,

    /// The pvkit checkout whose `abi/` and `crates/guest/` the crate depends on by path.
    /// Default: the checkout around the new directory or the current one, else the one
    /// this pvkit was built from; without any, crates.io versions (not published yet:
    /// edit Cargo.toml as it says).
    #[arg(long, value_name = "DIR")]
    pvkit_path: Option<PathBuf>,
}

fn new_guest(args: &NewArgs) -> anyhow::Result<u8> {
    use pvkit_cli::new_guest::{self, NewOptions, PvkitSource};
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let opts = NewOptions {
        name: args.name.clone(),
        path: args.path.clone(),
        pvkit_path: args.pvkit_path.clone(),
    };
    let created = new_guest::create(&opts, &cwd)?;
    let name = &args.name;
    let dir = created.dir.display();
    match &created.source {
        PvkitSource::Checkout(root) => println!(
            "Created the guest kernel crate `{name}` in {dir}\n\
             (pvkit-abi and pvkit-guest by path from the pvkit checkout {}).",
            root.display()
        ),
        PvkitSource::Version(v) => {
            println!("Created the guest kernel crate `{name}` in {dir}.");
            eprintln!(
                "warning: no pvkit checkout found, so Cargo.toml asks for pvkit-abi and \
                 pvkit-guest {v} from crates.io, where they are not published yet: point them \
                 at a checkout or the git repository (see the comment in Cargo.toml), or run \
                 pvkit new again with --pvkit-path DIR"
            );
        }
    }
    println!(
        "Build and boot it:\n    cd {dir}\n    cargo build --release\n    \
         pvkit run target/x86_64-unknown-none/release/{name}"
    );
    Ok(0)
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

/// `pvkit run --nic` models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NicArg {
    /// The emulated NE2000 (ports 0x300-0x31f, IRQ 9).
    Ne2000,
    /// The PV NIC (NetInfo/NetSend hypercalls, TX and RX rings).
    Pv,
}

/// `pvkit run --net` backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetArg {
    /// The in-VMM loopback responder.
    Loopback,
    /// A TAP device in a network namespace.
    Tap,
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

    /// Hide the PV console: no ConsoleWrite call, no console ring, no CONSOLE and
    /// CONSOLE_RING feature bits, as on a host without it. A guest on the pvkit-guest
    /// runtime then prints through the emulated 16550 UART.
    #[arg(long)]
    no_pv_console: bool,

    /// Guest RAM in MiB (4 to 3072).
    #[arg(long, value_name = "MIB", default_value_t = pvkit_vmm::vstate::memory::DEFAULT_MEM_MIB)]
    mem: u64,

    /// Stop the guest after this many seconds (fractions allowed) and exit with status 124.
    /// Default: 60, or no timeout with --gdb (a session may sit at a breakpoint for long).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,

    /// Serve the GDB remote protocol on ADDR (e.g. 127.0.0.1:1234; port 0 picks one,
    /// printed on stderr): the guest waits for the debugger before its first instruction.
    /// Registers, memory (guest-physical = virtual under the boot identity map), hardware
    /// breakpoints (hbreak, at most 4), step, continue, Ctrl-C, detach. Software
    /// breakpoints are refused: an int3 in guest ring 0 kills the vCPU on kvm_pvm.
    #[arg(long, value_name = "ADDR")]
    gdb: Option<std::net::SocketAddr>,

    /// Print a report to stderr at the end: platform (KVM kind, CPU, TSC rate), every VM
    /// exit by kind sorted by count, total exits, console bytes dropped (stdout did not
    /// keep up), the 10 guest code locations (RIP, symbolized) with the most exits, time to
    /// the first hypercall and to the stop, and peak RSS.
    #[arg(long)]
    stats: bool,

    /// How the VMM reads and writes hypercall registers.
    #[arg(long, value_enum, default_value_t = RegAccessArg::Auto)]
    reg_access: RegAccessArg,

    /// A raw disk image: the emulated ATA disk (ports 0x1f0-0x1f7, 0x3f6) and the PV block
    /// device both serve it, so both see the same bytes.
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,

    /// Open the --disk image read-only: guest writes fail.
    #[arg(long, requires = "disk")]
    disk_ro: bool,

    /// Create N KVM vCPUs. vCPU 0 runs the guest; each other one waits on its own thread
    /// (pvkit-vcpu1, ...) until the guest starts it (INIT-SIPI-SIPI or the VcpuUp call).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    vcpus: u32,

    /// Do not confine the VMM's threads (vCPU, I/O, console writer, network, gdb, API,
    /// migration) with their seccomp filters (for debugging the VMM, or a kernel without
    /// seccomp; see docs/SECURITY.md).
    #[arg(long)]
    no_seccomp: bool,

    /// Write every VM exit (time in µs since start, kind, port or address, guest RIP and
    /// its symbol) to FILE as Chrome trace-event JSON (open it in https://ui.perfetto.dev).
    /// At most 1,000,000 exits are kept; the rest are counted in otherData.dropped_events.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    /// An emulated NE2000 NIC (ports 0x300-0x31f, IRQ 9 through the IOAPIC) on a host
    /// backend: `loopback` (the default when no value is given) is an in-VMM peer at
    /// 10.0.2.2 answering ARP, ping and UDP echo on port 7, no privileges needed; `tap` is a
    /// TAP device whose host side is 10.0.2.2/24 in a network namespace (--netns NAME, or a
    /// new `pvkit-<pid>` removed at exit), needs root. The built-in guest's `net=` modes use it.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "loopback",
          value_name = "BACKEND")]
    net: Option<NetArg>,

    /// With --net tap: the existing network namespace to put the TAP device in.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,

    /// With --net tap --netns NAME: make the TAP device a port of this existing bridge in
    /// the namespace (no address on the TAP device; the bridge has the host's), so guests
    /// on the same bridge reach each other (`pvkit fleet` uses it).
    #[arg(long, value_name = "BRIDGE", requires = "netns")]
    bridge: Option<String>,

    /// With --net: the NIC's MAC address (six hex bytes, `52:54:00:12:34:57`), unicast.
    /// Default 52:54:00:12:34:56; guests on one bridge each need their own.
    #[arg(long, value_name = "MAC", value_parser = parse_mac, requires = "net")]
    mac: Option<[u8; 6]>,

    /// Mark guest RAM MADV_MERGEABLE so the host's KSM, when it runs, may share identical
    /// pages between VMs copy-on-write. pvkit does not turn KSM on
    /// (/sys/kernel/mm/ksm/run).
    #[arg(long)]
    mergeable: bool,

    /// With --net: which NIC the guest gets, the emulated NE2000 (the default, as before
    /// --nic existed) or the PV NIC (hypercalls and TX/RX rings; the built-in guest's
    /// `net=` modes use whichever is present).
    #[arg(long, value_enum, value_name = "MODEL", requires = "net")]
    nic: Option<NicArg>,

    /// Create KVM's in-kernel interrupt controller (LAPIC, IOAPIC, PIC) even without --net
    /// or SMP, so that the guest can bind rings to completion interrupts (QueueInterrupt,
    /// feature RING_IRQ). With it, `hlt` no longer exits to userspace.
    #[arg(long)]
    irqchip: bool,

    /// Serve the control API on the Unix socket PATH (must not exist): line-delimited
    /// JSON requests pause, resume, snapshot, stats, balloon, migrate (see `pvkit ctl`).
    #[arg(long, value_name = "PATH")]
    api: Option<PathBuf>,

    /// Restore the snapshot in DIR (written by `pvkit ctl PATH snapshot DIR`) instead of
    /// booting a kernel: the guest continues where it was paused. Its RAM is mapped
    /// copy-on-write from DIR/vm.mem. --disk replaces the snapshot's disk (same size: a
    /// clone's own copy, see --overlay); the kernel, --mem, --vcpus and the command line
    /// come from the snapshot. A snapshot of a VM with a NIC needs the same NIC
    /// again: the same --nic, the same kind of --net (a TAP device is opened anew, in
    /// --netns if given) and the same --mac.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["elf", "cmdline", "gdb"])]
    restore: Option<PathBuf>,

    /// With --restore: give this clone its own copy-on-write disk FILE over the snapshot's
    /// disk (reflink where the filesystem offers it, else a sparse block-level overlay
    /// file); writes go to FILE only, never to the base image.
    #[arg(
        long,
        value_name = "FILE",
        requires = "restore",
        conflicts_with = "disk"
    )]
    overlay: Option<PathBuf>,

    /// Wait on ADDR (TCP, e.g. 127.0.0.1:4000) for a live-migrated VM instead of booting
    /// one: receive its RAM and state (a refused stream changes nothing and exits 1), rebuild
    /// it, take over from the source and run the guest to its end. --mem must equal the
    /// source's; the disk is the source's (shared storage) unless --disk names it. A VM
    /// with a NIC needs the same NIC here: the same --nic, the same kind of --net (a TAP
    /// device is opened here, in --netns if given) and the same --mac.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["elf", "cmdline", "restore", "gdb", "migrate_to"])]
    incoming: Option<std::net::SocketAddr>,

    /// Live-migrate the VM to ADDR (a `pvkit run --incoming ADDR`) --migrate-after-ms after
    /// it starts (the control API's `pvkit ctl PATH migrate HOST:PORT` does the same on
    /// request). On success this pvkit exits 0 with the figures on stderr; on a failure the
    /// VM runs on here.
    #[arg(long, value_name = "ADDR")]
    migrate_to: Option<std::net::SocketAddr>,

    /// A pre-shared key authenticating live migrations (HMAC-SHA256; not encrypted): with
    /// --incoming only a source started with the same key is accepted; with --migrate-to
    /// or the control API's `migrate` the stream is authenticated with it. Both sides need
    /// it, or neither. FILE: at least 32 random bytes, mode 600 (make one with
    /// `head -c 32 /dev/urandom > key; chmod 600 key`). Read at start, never sent.
    #[arg(long, value_name = "FILE")]
    migration_key: Option<PathBuf>,

    /// With --migrate-to: milliseconds after the start.
    #[arg(long, value_name = "MS", default_value_t = 0, requires = "migrate_to")]
    migrate_after_ms: u64,

    /// With --migrate-to: at most this many pre-copy rounds while the guest runs.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "migrate_to",
          value_parser = clap::value_parser!(u32).range(1..=63))]
    migrate_rounds: u32,

    /// The guest kernel command line (after `--`), e.g. `-- print=10 exit=3`.
    #[arg(last = true, value_name = "KERNEL-CMDLINE")]
    cmdline: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct CtlArgs {
    /// The API socket of a `pvkit run --api PATH`.
    socket: PathBuf,
    #[command(subcommand)]
    op: CtlOp,
}

#[derive(Subcommand, Debug)]
enum CtlOp {
    /// Pause the VM (its vCPU out of the guest and held).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Write a snapshot (vm.state, vm.mem) into DIR; a running VM is paused for it and
    /// resumed after.
    Snapshot {
        /// The snapshot directory (created if missing).
        dir: PathBuf,
    },
    /// Print the VM's statistics.
    Stats,
    /// Set the balloon's target: the guest (if it follows the target, e.g. the built-in
    /// guest's `balloon_follow`) inflates or deflates toward it; `stats` shows target and
    /// actual. Refused above what the guest's RAM allows.
    Balloon {
        /// Target size in MiB.
        target_mib: u64,
    },
    /// Live-migrate the VM to HOST:PORT, where a `pvkit run --incoming` waits; the reply
    /// (after the hand-over) has the figures. On an error the VM runs on.
    Migrate {
        /// The destination.
        dest: String,
    },
}

/// `pvkit run --incoming ADDR`: one migrated VM, run to its end. A refused stream is a
/// VMM error (status 1) and nothing ran.
fn incoming(
    addr: std::net::SocketAddr,
    mem_mib: u64,
    cfg: &VmConfig,
) -> Result<pvkit_vmm::RunOutcome, pvkit_vmm::VmError> {
    use pvkit_vmm::vm::migrate::{default_incoming_dir, run_incoming, IncomingError};
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| pvkit_vmm::VmError::StartRefused(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    if cfg.migration_key.is_none() {
        eprintln!(
            "pvkit: warning: incoming migration on {bound} is unauthenticated (no \
             --migration-key): anyone who can connect can send a VM to run here"
        );
    }
    eprintln!("pvkit: incoming migration: waiting on {bound}");
    match run_incoming(&listener, mem_mib << 20, cfg, &default_incoming_dir()) {
        Ok(o) => {
            eprintln!(
                "pvkit: incoming migration: {} bytes, {} rounds received",
                o.received.bytes, o.received.rounds
            );
            Ok(o.outcome)
        }
        Err(IncomingError::Vm(e)) => Err(e),
        Err(e) => Err(pvkit_vmm::VmError::StartRefused(e.to_string())),
    }
}

/// `pvkit ctl`: one request, its JSON reply on stdout; status 0 when it succeeded.
fn ctl(args: &CtlArgs) -> anyhow::Result<u8> {
    use pvkit_vmm::api::request::Request;
    let req = match &args.op {
        CtlOp::Pause => Request::Pause,
        CtlOp::Resume => Request::Resume,
        CtlOp::Snapshot { dir } => Request::Snapshot {
            dir: std::path::absolute(dir)
                .with_context(|| format!("bad snapshot directory {}", dir.display()))?,
        },
        CtlOp::Stats => Request::Stats,
        CtlOp::Balloon { target_mib } => Request::Balloon {
            target_mib: *target_mib,
        },
        // Resolved here: the VM's API thread takes addresses only.
        CtlOp::Migrate { dest } => {
            use std::net::ToSocketAddrs;
            let addr = dest
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve the migration target {dest}"))?
                .next()
                .with_context(|| format!("{dest} resolves to no address"))?;
            Request::Migrate {
                dest: addr.to_string(),
            }
        }
    };
    let reply = pvkit_vmm::api::client::send(&args.socket, &req)
        .with_context(|| format!("no answer from the API socket {}", args.socket.display()))?;
    println!("{}", serde_json::to_string(&reply)?);
    Ok(if reply.ok { 0 } else { 1 })
}

fn config(args: &RunArgs, started_at: Instant) -> anyhow::Result<VmConfig> {
    let timeout = match (args.timeout, args.gdb) {
        (Some(t), _) => t,
        (None, None) => 60.0,
        // No deadline in practice (31 years): a session may sit at a breakpoint.
        (None, Some(_)) => 1e9,
    };
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 1e9) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    if args.no_pv_console && matches!(args.console, Some(ConsoleArg::Pv)) {
        anyhow::bail!("--console pv asks for the PV console, which --no-pv-console hides");
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
        timeout: Duration::from_secs_f64(timeout),
        reg_access: match args.reg_access {
            RegAccessArg::Auto => None,
            RegAccessArg::Sync => Some(RegAccess::SyncRegs),
            RegAccessArg::Ioctl => Some(RegAccess::Ioctl),
        },
        started_at: Some(started_at),
        disk: args.disk.as_ref().map(|path| DiskConfig {
            path: path.clone(),
            read_only: args.disk_ro,
            base: None,
        }),
        phase_observer: None,
        seccomp: !args.no_seccomp,
        vcpus: args.vcpus,
        record: pvkit_vmm::exit::record::RecordConfig {
            rips: args.stats,
            trace: args.trace.is_some(),
        },
        net: net_config(args)?,
        nic: match args.nic {
            Some(NicArg::Pv) => NicModel::Pv,
            Some(NicArg::Ne2000) | None => NicModel::Ne2000,
        },
        irqchip: args.irqchip,
        irq_test: false,
        gdb: args.gdb,
        pv_console: !args.no_pv_console,
        mergeable: args.mergeable,
        restore: args.restore.clone(),
        control: None,
        start_gate: None,
        // Read now, before any thread is confined.
        migration_key: match &args.migration_key {
            Some(p) => Some(std::sync::Arc::new(
                pvkit_vmm::migration::auth::MigrationKey::load(p)?,
            )),
            None => None,
        },
    })
}

/// The network of `--net` / `--netns`.
fn net_config(args: &RunArgs) -> anyhow::Result<Option<NetConfig>> {
    let backend = match (args.net, &args.netns) {
        (None, None) => return Ok(None),
        (Some(NetArg::Tap), ns) => NetBackendConfig::Tap {
            netns: ns.clone(),
            bridge: args.bridge.clone(),
        },
        (Some(NetArg::Loopback), None) => NetBackendConfig::Loopback,
        (_, Some(_)) => anyhow::bail!("--netns needs --net tap"),
    };
    Ok(Some(NetConfig {
        backend,
        mac: args.mac,
        host_rtt: None,
    }))
}

/// Parses `--mac`: six colon-separated hex bytes, not multicast (the low bit of the first
/// byte clear) and not all zero.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or("a MAC address has six bytes")?;
        if p.len() != 2 {
            return Err(format!("{p:?} is not a two-digit hex byte"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("{p:?} is not a hex byte"))?;
    }
    if parts.next().is_some() {
        return Err("a MAC address has six bytes".into());
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err("the MAC address must be unicast and not all zero".into());
    }
    Ok(mac)
}

fn run(args: &RunArgs, started_at: Instant) -> anyhow::Result<u8> {
    let mut cfg = config(args, started_at)?;
    if let (Some(dir), Some(overlay)) = (&args.restore, &args.overlay) {
        let state = pvkit_vmm::snapshot::restore::read_state(dir)?;
        let base = state
            .disk
            .as_ref()
            .context("--overlay: the snapshot has no disk")?;
        if base.base.is_some() {
            anyhow::bail!("--overlay: the snapshot's disk is itself an overlay; clone from a snapshot of a VM on a plain image");
        }
        let (disk, kind) = pvkit_cli::lifecycle::clone_disk(&base.path, overlay)?;
        eprintln!(
            "pvkit: disk {}: {kind} over {}",
            overlay.display(),
            base.path.display()
        );
        cfg.disk = Some(disk);
    }
    let mut hooks: Vec<pvkit_vmm::vm::ControlHook> = Vec::new();
    // Bound before the guest runs: a path in use fails at once.
    if let Some(path) = &args.api {
        let server = std::sync::Mutex::new(Some(pvkit_vmm::api::server::ApiServer::bind(path)?));
        let confine = !args.no_seccomp;
        hooks.push(pvkit_vmm::vm::ControlHook(std::sync::Arc::new(
            move |ctl| {
                let server = server.lock().ok().and_then(|mut s| s.take());
                if let Some(server) = server {
                    if let Err(e) = server.serve(ctl, confine) {
                        eprintln!("pvkit: cannot start the API thread: {e}");
                    }
                }
            },
        )));
    }
    if let Some(to) = args.migrate_to {
        let m = pvkit_vmm::vm::migrate::MigrateAfter {
            to,
            after: Duration::from_millis(args.migrate_after_ms),
            precopy: pvkit_vmm::migration::precopy::PrecopyConfig {
                max_rounds: args.migrate_rounds,
                ..Default::default()
            },
            report: Default::default(),
            seccomp: !args.no_seccomp,
        };
        hooks.push(m.hook());
    }
    if !hooks.is_empty() {
        cfg.control = Some(pvkit_vmm::vm::ControlHook(std::sync::Arc::new(
            move |ctl: std::sync::Arc<pvkit_vmm::vm::control::VmControl>| {
                for h in &hooks {
                    (h.0)(std::sync::Arc::clone(&ctl));
                }
            },
        )));
    }
    // Created before the guest runs: a path that cannot be written fails at once.
    let trace_file = match &args.trace {
        Some(p) => Some((
            p,
            std::fs::File::create(p)
                .with_context(|| format!("cannot create the trace file {}", p.display()))?,
        )),
        None => None,
    };
    let result = match args.incoming {
        Some(addr) => incoming(addr, args.mem, &cfg),
        None => pvkit_vmm::run(&cfg),
    };
    if let Some(path) = &args.api {
        // The API thread also removes it when it notices the end; the process may exit first.
        let _ = std::fs::remove_file(path);
    }
    let outcome = match result {
        Ok(o) => o,
        // A SIGINT/SIGTERM that arrived while the VM was being set up (reading and
        // loading the ELF) is the reason to stop, whatever the setup then did.
        Err(e) => match pvkit_vmm::runtime::signals::pending() {
            Some(signal) => {
                eprintln!("pvkit: stopped by {signal} while starting the VM ({e})");
                return Ok(signal.exit_status());
            }
            None => return Err(anyhow::Error::new(e).context("cannot run the guest")),
        },
    };
    let _ = std::io::stdout().flush();
    match &outcome.stop {
        StopReason::Exit(_) => {}
        StopReason::Signal { .. } | StopReason::Migrated { .. } => {
            eprintln!("pvkit: {}", outcome.stop)
        }
        // An AP's stop names the AP: its fault is not vCPU 0's.
        other if outcome.stop_vcpu != 0 => eprintln!("vCPU {}: {other}", outcome.stop_vcpu),
        other => eprintln!("{other}"),
    }
    if let Some(d) =
        pvkit_vmm::vm::diag::diagnose(&outcome.stop, outcome.stop_regs.as_ref(), &outcome.symbols)
    {
        eprint!("{d}");
    }
    if let (Some((path, file)), Some(trace)) = (trace_file, &outcome.trace) {
        let mut w = std::io::BufWriter::new(file);
        pvkit_vmm::exit::record::write_chrome_trace(trace, &outcome.symbols, &mut w)
            .with_context(|| format!("cannot write the trace file {}", path.display()))?;
        if trace.dropped > 0 {
            eprintln!(
                "pvkit: trace truncated: {} exits written to {}, {} more not kept",
                trace.events.len(),
                path.display(),
                trace.dropped
            );
        }
    }
    if outcome.console_dropped > 0 {
        // The console never waits for stdout (host-vmm/src/io/console_out.rs): say what did not get out.
        eprintln!(
            "pvkit: {} console bytes dropped (stdout did not keep up)",
            outcome.console_dropped
        );
    }
    if let (true, Some(n)) = (args.stats, &outcome.net) {
        eprintln!(
            "NE2000: {} frames sent, {} received, {} dropped by the backend, {} dropped by \
             the card (ring full), {} interrupts raised",
            n.backend.tx_frames,
            n.model.rx_frames,
            n.backend.dropped(),
            n.model.rx_overflow,
            n.irqs_raised
        );
    }
    if let (true, Some(n)) = (args.stats, &outcome.pv_net) {
        eprintln!(
            "PV NIC: {} frames sent, {} received ({} from the backend), {} dropped by the \
             backend, {} dropped (no guest buffer), {} interrupts raised",
            n.device.tx_frames,
            n.device.rx_frames,
            n.backend.rx_frames,
            n.backend.dropped(),
            n.device.rx_dropped_no_buffer,
            n.irqs_raised
        );
    }
    if args.stats {
        eprint!(
            "{}",
            pvkit_cli::stats_report::report(&outcome, pvkit_cli::stats_report::peak_rss_kib())
        );
    }
    Ok(outcome.stop.exit_status())
}

const BENCH_HELP: &str = "\
Each device gets its own guest boot (bench=<device> on the guest command line), so a device
whose guest crashes loses only its own cases. The Markdown report goes to stdout; the guest's
console output is captured and checked, never printed. Cases the guest skipped (a host
feature or device it needs is missing) are listed as unavailable on stderr and in results.md;
they do not fail the run. After the devices, `snapshot` and `migrate` measure the VM
lifecycle in this process (snapshot, restore, clones; live migration with free-page hints
against without), each case checked against what the guest did. `--only migrate` also
migrates the unmodified guest on emulated devices only (seconds of ticks: not in the default
run). Method: docs/BENCHMARKS.md.

Exit status:
  0     every case verified and every guest exited cleanly
  1     the run could not start (no usable /dev/kvm, disk image, output directory)
  2     usage error
  3     a case FAILED (its data did not verify) or a device's guest crashed, timed out or
        ran none of its cases; the reasons are printed on stderr";

/// Exit status of `pvkit bench` when a case failed or a guest crashed.
const STATUS_BENCH_FAILED: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// Console writes of 64 B and 4 KiB: UART vs PV hypercall, ring, ioeventfd, polled ring.
    Console,
    /// 4 KiB random and 1 MiB sequential reads and writes: ATA PIO vs the PV block variants.
    Block,
    /// Time reads: PIT vs the PV clock page and kvmclock.
    Clock,
    /// Bare exit round trips (null port), for calibration.
    Exit,
    /// Many VMs on one host (`pvkit fleet`): start rate, memory per VM, density with and
    /// without the balloon, a UDP ring through all guests. Needs root; only when asked for.
    Fleet,
    /// Network frames over in-VMM loopback peers: 64 B and 1514 B transmit and receive,
    /// UDP echo round trips; NE2000 vs PV NetSend, ring, ioeventfd, polled ring, ring with
    /// completion interrupts.
    Net,
    /// IPIs in a 4-vCPU boot: x2APIC ICR vs PV SendIpi, ping-pong and one-to-all.
    Ipi,
    /// AP bring-up of 3 APs: INIT-SIPI-SIPI vs the PV VcpuUp (one 4-vCPU boot each).
    Smp,
    /// Freeing 256 MiB: the unmodified guest vs the balloon; host RSS (one boot each).
    Balloon,
    /// Interrupt delivery + acknowledge: x2APIC, IOAPIC and PIC EOIs vs KVM's PV EOI.
    Irq,
    /// One spinlock contended by 2, 4 and 8 vCPUs: plain ticket lock vs the PV lock.
    Spinlock,
    /// Snapshot (pause, sparse write, resume), restore to running, and N clones sharing
    /// the memory file, of a running 128 MiB guest; each checked to continue.
    Snapshot,
    /// Live migration of a 128 MiB guest over loopback: free-page hints on vs off (total
    /// time, bytes, rounds, downtime); continuity and exact exits checked. Named, also the
    /// unmodified guest on emulated devices (UART, PIT, ATA, NE2000), which the default run
    /// leaves out.
    Migrate,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Run only these devices (repeat or comma-separate). Default: every device but `fleet` (`fleet`
    /// runs only when named: it needs root and writes fleet.json and fleet.md instead).
    /// `snapshot` and `migrate` run after the device boots, in the same report.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "DEVICE")]
    only: Vec<DeviceArg>,

    /// Fewer operations per case (passes `quick` to the guest): well under a minute.
    #[arg(long)]
    quick: bool,

    /// Guest boots per device; the cases of all boots are pooled (ops, exits and time
    /// summed, cycle samples merged).
    #[arg(long, value_name = "N", default_value_t = 1)]
    iterations: u32,

    /// Directory for results.json, results.md, chart.svg and chart.png (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,

    /// Run the block cases against this existing raw image. The write cases WRITE TO IT.
    /// Default: a 64 MiB temporary image filled with a known non-zero pattern, never left
    /// behind.
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,

    /// Watchdog per guest boot, in seconds (fractions allowed). Default: 90 (300 for the
    /// spinlock boots, whose plain lock under overcommit runs for minutes), or 30 with
    /// --quick.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,

    /// Guest RAM per boot in MiB.
    #[arg(long, value_name = "MIB", default_value_t = pvkit_cli::bench_runner::DEFAULT_MEM_MIB)]
    mem: u64,

    /// Do not confine the VMM's threads with their seccomp filters.
    #[arg(long)]
    no_seccomp: bool,

    /// With --only fleet: guests of the start run (64 MiB each). Default: 50, 8 with --quick.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    fleet_vms: Option<u32>,

    /// With --only fleet: guests of each density run (128 MiB each). Default: 8, 3 with
    /// --quick.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    fleet_density_vms: Option<u32>,

    /// With --only fleet: switch the host's KSM on for the KSM density run and back to what
    /// it was afterwards. Without it the KSM run happens only when KSM is already on.
    #[arg(long)]
    enable_ksm: bool,

    /// With --only fleet: the host memory budget the density figure is for, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..))]
    fleet_budget: u64,
}

/// `pvkit bench --only fleet`: the fleet runs, written to `fleet.json` and `fleet.md`.
fn fleet_bench(args: &BenchArgs) -> anyhow::Result<u8> {
    use pvkit_cli::fleet::bench::{self, FleetBenchConfig};
    let pvkit = std::env::current_exe().context("cannot find the pvkit binary to run guests")?;
    let cfg = FleetBenchConfig {
        pvkit,
        vms: args.fleet_vms.unwrap_or(if args.quick { 8 } else { 50 }),
        density_vms: args
            .fleet_density_vms
            .unwrap_or(if args.quick { 3 } else { 8 }),
        budget_mib: args.fleet_budget,
        timeout: match args.timeout {
            Some(t) => timeout_arg(t)?,
            None => Duration::from_secs(300),
        },
        seccomp: !args.no_seccomp,
        enable_ksm: args.enable_ksm,
    };
    let result = bench::run(&cfg).context("cannot run the fleet benchmark")?;
    print!("{}", result.markdown());
    let (json, md) = result
        .write(&args.out)
        .with_context(|| format!("cannot write the fleet results to {}", args.out.display()))?;
    eprintln!("pvkit bench: wrote {}, {}", json.display(), md.display());
    if let Some(signal) = pvkit_vmm::runtime::signals::pending() {
        eprintln!("pvkit: bench stopped by {signal}");
        return Ok(signal.exit_status());
    }
    Ok(if result.passed() {
        0
    } else {
        STATUS_BENCH_FAILED
    })
}

fn bench(args: &BenchArgs) -> anyhow::Result<u8> {
    use pvkit_cli::bench_runner::{self as runner, BenchConfig, BenchDevice, LifecycleBench};
    let timeout = match args.timeout {
        None if args.quick => runner::DEFAULT_QUICK_TIMEOUT,
        None => runner::DEFAULT_TIMEOUT,
        Some(t) if t.is_finite() && t > 0.0 && t <= 1e6 => Duration::from_secs_f64(t),
        Some(_) => anyhow::bail!("--timeout must be a positive number of seconds"),
    };
    let spinlock_timeout = match args.timeout {
        None if !args.quick => runner::spinlock::DEFAULT_TIMEOUT,
        _ => timeout,
    };
    let mut devices: Vec<BenchDevice> = Vec::new();
    let mut lifecycle: Vec<LifecycleBench> = Vec::new();
    let mut fleet = false;
    for d in &args.only {
        let d = match d {
            DeviceArg::Console => BenchDevice::Console,
            DeviceArg::Block => BenchDevice::Block,
            DeviceArg::Clock => BenchDevice::Clock,
            DeviceArg::Exit => BenchDevice::Exit,
            DeviceArg::Net => BenchDevice::Net,
            DeviceArg::Ipi => BenchDevice::Ipi,
            DeviceArg::Smp => BenchDevice::Smp,
            DeviceArg::Balloon => BenchDevice::Balloon,
            DeviceArg::Irq => BenchDevice::Irq,
            DeviceArg::Spinlock => BenchDevice::Spinlock,
            DeviceArg::Fleet => {
                fleet = true;
                continue;
            }
            DeviceArg::Snapshot | DeviceArg::Migrate => {
                let name = match d {
                    DeviceArg::Snapshot => "snapshot",
                    _ => "migrate",
                };
                // Named, `migrate` includes the emulated guest's migration (not in the
                // default run: it takes seconds of ticks).
                for l in LifecycleBench::named(name) {
                    if !lifecycle.contains(l) {
                        lifecycle.push(*l);
                    }
                }
                continue;
            }
        };
        if !devices.contains(&d) {
            devices.push(d);
        }
    }
    if fleet {
        // The fleet is its own run with its own files; devices asked for too run after it.
        let status = fleet_bench(args)?;
        if (devices.is_empty() && lifecycle.is_empty()) || status != 0 {
            return Ok(status);
        }
    }
    if devices.is_empty() && lifecycle.is_empty() {
        devices = BenchDevice::ALL.to_vec();
        lifecycle = LifecycleBench::ALL.to_vec();
    }
    let cfg = BenchConfig {
        devices,
        lifecycle,
        quick: args.quick,
        iterations: args.iterations,
        disk: args.disk.clone(),
        timeout,
        spinlock_timeout,
        mem_mib: args.mem,
        seccomp: !args.no_seccomp,
        command: std::iter::once("pvkit".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        ..BenchConfig::default()
    };
    let outcome = runner::run(&cfg).context("cannot run the benchmarks")?;
    if let Some(signal) = pvkit_vmm::runtime::signals::pending() {
        // Each boot since the signal stopped at once (its disk flushed): no partial report.
        eprintln!("pvkit: bench stopped by {signal}; no results written");
        return Ok(signal.exit_status());
    }
    let files = runner::write_outputs(&outcome, &args.out)?;
    print!("{}", outcome.markdown());
    let _ = std::io::stdout().flush();
    eprintln!(
        "pvkit bench: {} cases in {:.1} s; wrote {}, {}, {}, {}",
        outcome.report.cases.len(),
        outcome.report.duration_s,
        files.json.display(),
        files.markdown.display(),
        files.svg.display(),
        files.png.display()
    );
    for line in runner::expected::grouped(&outcome.unavailable) {
        eprintln!("warning: unavailable: {line}");
    }
    if outcome.passed() {
        return Ok(0);
    }
    for p in &outcome.problems {
        eprintln!("error: {p}");
    }
    for f in outcome.failures() {
        eprintln!("FAILED: {f}");
    }
    Ok(STATUS_BENCH_FAILED)
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
    // SIGINT/SIGTERM stop the guest cleanly (host-vmm/src/runtime/signals.rs).
    if let Err(e) = pvkit_vmm::runtime::signals::install() {
        eprintln!("error: {e}");
        return ExitCode::from(STATUS_VMM_ERROR);
    }
    let result = match &cli.command {
        Command::Run(args) => run(args, started_at),
        Command::Bench(args) => bench(args),
        Command::New(args) => new_guest(args),
        Command::Fleet(args) => fleet(args),
        Command::Ctl(args) => ctl(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::from(STATUS_VMM_ERROR)
        }
    }
}

/// One line for an error chain: each layer's message, joined by `": "`, each cause once.
///
/// The library's error messages end with their cause (`"cannot open X: {source}"`) so that
/// `{e}` alone is complete where an error is logged or turned into a string; they also
/// return it from `source()`. anyhow's `{:#}` walks `source()` too and so would print every
/// cause twice or more. Here a layer whose message already ends with the next cause's text
/// swallows that cause.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !last.is_empty() && last.ends_with(&msg) {
            last = msg;
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
        last = msg;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_line;

    /// A layer whose message names its cause, as the library's errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the image: {source}")]
    struct Open {
        source: std::io::Error,
    }

    fn not_found() -> std::io::Error {
        std::fs::File::open("/nonexistent/pvkit-error-line").unwrap_err()
    }

    #[test]
    fn each_cause_is_printed_once() {
        let e = anyhow::Error::new(Open {
            source: not_found(),
        })
        .context("cannot run the guest");
        assert_eq!(
            error_line(&e),
            "cannot run the guest: cannot open the image: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_cause_missing_from_the_message_is_still_printed() {
        let e = anyhow::Error::new(not_found()).context("cannot read the disk");
        assert_eq!(
            error_line(&e),
            "cannot read the disk: No such file or directory (os error 2)"
        );
    }
}
