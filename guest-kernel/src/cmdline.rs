//! The kernel's command line: which console, and which mode to run.
//!
//! | token       | meaning                                                               |
//! |-------------|-----------------------------------------------------------------------|
//! | `console=`  | `uart` (16550 at COM1) or `pv` (the PV console); default: `pv` when the pvkit CPUID signature is present, else `uart` |
//! | `exit=N`    | exit status (0–255), default 0                                        |
//! | `print=N`   | instead of the banner, write exactly `N` bytes of `x` in one console write |
//! | `alloc=N`   | before the output: allocate `N` bytes on the heap, touch the first and last, free them |
//! | `writes=K`  | with `print=`: do it `K` times (K writes of N bytes), default 1      |
//! | `flood`     | with `print=`: write for ever (`writes=` ignored); the host's watchdog or a signal ends it |
//! | `ring=`     | with `print=` or `counter=`: write through the console ring, `doorbell`, `eventfd` or `poll` transport, instead of the console |
//! | `fault=`    | after the banner: `ud` (ud2), `pf` (write above the 4 GiB identity map), `gp` (non-canonical access), `de` (divide by zero), `df` (double fault: a stack overflow into unmapped memory) |
//! | `panic`     | after the banner: `panic!("requested panic")`                         |
//! | `spin`      | after the banner: loop forever (watchdog tests)                       |
//! | `triple`    | after the banner: load an empty IDT and `ud2` (triple fault)          |
//! | `user`      | after the banner: run a function in ring 3 that reads the PV clock (when offered) and print what it returned |
//! | `blkirq=N`  | instead of everything else: `N` batches of PV block reads completed by interrupt ([`crate::blkirq`]); `blkirq_transport=eventfd` for ioeventfd doorbells |
//! | `disk`      | after the banner: the ATA disk check ([`crate::diskcheck`]): read, write, read back a few sectors through ATA PIO and print the results |
//! | `balloon=MIB` | after the banner: the memory balloon check ([`crate::balloon`]); `balloon_range=KIB` (default 2048) sets the range size, `balloon_bad` sends invalid calls first |
//! | `bench=`    | instead of everything else: run benchmark cases, see [`crate::bench`]; `all` or a comma-separated list of devices (`console`, `block`, `clock`, `exit`, `irq`) and `device/variant` pairs (e.g. `block/ata-pio`) |
//! | `workload=N` | after the banner: the live-migration workload ([`crate::workload`]): `N` ticks (0: for ever) of a printed counter and a dirtied working set; `hints` adds free-page hints, `workload_disk` acknowledged disk writes, `workload_ms=M` at least M ms per tick |
//! | `smp=`      | after the output: bring up the other CPUs, `emulated` (INIT-SIPI-SIPI) or `pv` (`VcpuUp`), see [`crate::smp`] |
//! | `cpus=N`    | with `smp=`: how many CPUs there are (1–8), default 1                 |
//! | `ipi=`      | with `smp=`: after the bring-up, the IPI workload, `emulated` (x2APIC ICR) or `pv` (`SendIpi`), see [`crate::smp::ipi`]; `ipi_rounds=N` (≥ 1) round trips and broadcasts |
//! | `lock=`     | instead of everything else: the spinlock workload, `plain` or `pv` ([`crate::lock`]), on `cpus=N` CPUs; `iters=K` acquisitions per CPU, `spin=S` spins before a PV wait, `lock_bad` refused calls first, `lock_hang` wait for ever, `lock_bench` benchmark markers and sample |
//! | `quick`     | with `bench=`: small operation counts                                 |
//! | `ops=N`     | with `bench=`: `N` (≥ 1) operations in every case                      |
//! | `counter=N` | instead of everything else: count to `N`, one step per `counter_ms=M` (default 20) ms, checking the PV clock and the disk ([`crate::counter`]); for snapshot tests; with `ring=` it prints through the console ring; with `cpus=N` (2–8) CPU 1 answers every step and CPUs 2.. halt ([`crate::counter`]) |
//! | `balloon_follow` | with `counter=`: at each step, follow the host-set balloon target (`BalloonTarget`) over the free RAM above the heap, at most `balloon_batch=PAGES` (default 2048, 8 MiB) pages a step, printing each move and checking that deflated pages read zero; `balloon_touch` writes every page of that RAM first (so the host backs it) |
//! | `emuload=N` | instead of everything else: the migration workload of an unmodified guest ([`crate::emuload`]): `N` ticks of ATA writes read back, NE2000 UDP echoes to `peer=` from `ip=`, UART lines; `emuload_ms=M` at least M ms of PIT time per tick |
//! | `net=`      | instead of everything else: the NE2000 by interrupts, `serve`, `echo`, `send` or `ring` ([`crate::net`]); with `ip=`, `peer=` (IPv4), `count=N`, `size=N` (UDP payload), `pvnet=` (PV NIC path) |
//! | `id=K`, `members=N` | with `net=ring`: this member's id (1..=N) and the ring's size ([`crate::net::ring`]) |
//! | `touch=MIB` | with `net=ring`: before the ring starts, write every page of `MIB` MiB, then stop using it; `give_back` returns it to the host through the balloon |
//!
//! Unknown tokens are ignored (they may be meant for someone else). When several of
//! `fault=`, `panic`, `spin`, `triple` are given, the last one wins.

use crate::bench::Selection;
use crate::console::ConsoleKind;
use crate::smp::ipi::{IpiArgs, DEFAULT_ROUNDS};
use crate::smp::SmpMode;
use pvkit_abi::ring::Transport;
use pvkit_guest::cmdline::Cmdline;

/// A CPU exception the kernel can raise on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `ud2`: #UD.
    InvalidOpcode,
    /// A write above the 4 GiB identity map: #PF.
    PageFault,
    /// A load from a non-canonical address: #GP.
    GeneralProtection,
    /// `div` by zero: #DE.
    DivideError,
    /// `RSP` pointed at unmapped memory, then `ud2`: pushing the #UD frame page-faults, and
    /// so does pushing the #PF frame, which is a double fault, delivered on its IST stack.
    DoubleFault,
}

/// What to do after the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Raise a CPU exception.
    Fault(FaultKind),
    /// Panic.
    Panic,
    /// Loop forever.
    Spin,
    /// Triple fault.
    Triple,
}

/// `print=N writes=K`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Print {
    /// Bytes per write.
    pub bytes: usize,
    /// Number of writes.
    pub writes: usize,
    /// `flood`: for ever.
    pub flood: bool,
    /// `ring=`: through the console ring with this transport.
    pub ring: Option<Transport>,
}

/// `bench=<list> [quick] [ops=N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bench {
    /// The devices and variants to benchmark.
    pub selection: Selection,
    /// Small operation counts.
    pub quick: bool,
    /// Operations per case, overriding every default.
    pub ops: Option<u64>,
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Args {
    /// The console asked for, if any.
    pub console: Option<ConsoleKind>,
    /// Exit status.
    pub exit_code: u8,
    /// `print=` (replaces the banner).
    pub print: Option<Print>,
    /// `alloc=N`: a heap allocation to make (and free) first.
    pub alloc: Option<usize>,
    /// What to do instead of exiting.
    pub action: Option<Action>,
    /// `user`: run the ring-3 check after the banner.
    pub user: bool,
    /// `bench=`: run benchmarks instead of everything else.
    pub bench: Option<Bench>,
    /// `disk`: run the ATA disk check after the banner.
    pub disk: bool,
    /// `blkirq=N [blkirq_transport=eventfd]`: PV block completions by interrupt
    /// ([`crate::blkirq`]): batches, and whether the doorbell is an ioeventfd.
    pub blkirq: Option<(u64, bool)>,
    /// `net=`: the network modes.
    pub net: Option<crate::net::NetArgs>,
    /// `balloon=MIB`: run the balloon check after the banner.
    pub balloon: Option<crate::balloon::BalloonArgs>,
    /// `smp=` with `cpus=`: bring up the other CPUs after the output.
    pub smp: Option<(SmpMode, usize)>,
    /// `ipi=` with `ipi_rounds=`: the IPI workload after the SMP bring-up.
    pub ipi: Option<IpiArgs>,
    /// `lock=`: the spinlock workload instead of everything else.
    pub lock: Option<crate::lock::LockArgs>,
    /// `workload=N`: the migration workload after the banner.
    pub workload: Option<crate::workload::WorkloadArgs>,
    /// `counter=N`: the snapshot tests' counter instead of everything else.
    pub counter: Option<crate::counter::CounterArgs>,
    /// `emuload=N`: the emulated-device migration workload instead of everything else.
    pub emuload: Option<crate::emuload::EmuloadArgs>,
}

/// Parses the command line in one pass. The error names the offending token.
pub fn parse<'a>(cmdline: &Cmdline<'a>) -> Result<Args, &'a str> {
    let mut args = Args {
        console: None,
        exit_code: 0,
        print: None,
        alloc: None,
        action: None,
        user: false,
        bench: None,
        disk: false,
        blkirq: None,
        net: None,
        balloon: None,
        smp: None,
        ipi: None,
        lock: None,
        workload: None,
        counter: None,
        emuload: None,
    };
    let mut lock_iters = crate::lock::DEFAULT_ITERS;
    let mut lock_spin = crate::lock::DEFAULT_SPIN;
    let (mut lock_bad, mut lock_hang, mut lock_bench) = (false, false, false);
    let mut workload_hints = false;
    let mut workload_disk = false;
    let mut workload_ms = 0;
    let mut counter_ms = 20;
    let mut balloon_follow = false;
    let mut balloon_touch = false;
    let mut balloon_batch = crate::counter::DEFAULT_BALLOON_BATCH;
    let mut emuload_ms = 0;
    let mut net = crate::net::NetArgs::new(crate::net::Mode::Serve);
    let mut net_mode = None;
    let mut balloon_range = 2048;
    let mut balloon_bad = false;
    let mut cpus = 1;
    let mut ipi_mode = None;
    let mut ipi_rounds = DEFAULT_ROUNDS;
    let mut writes = 1;
    let mut flood = false;
    let mut ring = None;
    let mut quick = false;
    let mut ops = None;
    for t in cmdline.tokens() {
        let v = t.value;
        match (t.key, v) {
            ("console", Some("uart")) => args.console = Some(ConsoleKind::Uart),
            ("console", Some("pv")) => args.console = Some(ConsoleKind::Pv),
            ("exit", Some(n)) => args.exit_code = n.parse().map_err(|_| n)?,
            ("print", Some(n)) => {
                let bytes = n.parse().map_err(|_| n)?;
                args.print = Some(Print {
                    bytes,
                    writes: 1,
                    flood: false,
                    ring: None,
                });
            }
            ("alloc", Some(n)) => args.alloc = Some(n.parse().map_err(|_| n)?),
            ("writes", Some(n)) => writes = n.parse().map_err(|_| n)?,
            ("flood", None) => flood = true,
            ("ring", Some("doorbell")) => ring = Some(Transport::Doorbell),
            ("ring", Some("eventfd")) => ring = Some(Transport::DoorbellEventfd),
            ("ring", Some("poll")) => ring = Some(Transport::HostPoll),
            ("ring", Some(other)) => return Err(other),
            ("fault", Some(kind)) => {
                args.action = Some(Action::Fault(match kind {
                    "ud" => FaultKind::InvalidOpcode,
                    "pf" => FaultKind::PageFault,
                    "gp" => FaultKind::GeneralProtection,
                    "de" => FaultKind::DivideError,
                    "df" => FaultKind::DoubleFault,
                    other => return Err(other),
                }))
            }
            ("panic", None) => args.action = Some(Action::Panic),
            ("spin", None) => args.action = Some(Action::Spin),
            ("triple", None) => args.action = Some(Action::Triple),
            ("user", None) => args.user = true,
            ("disk", None) => args.disk = true,
            ("blkirq", Some(n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => args.blkirq = Some((n, args.blkirq.is_some_and(|b| b.1))),
                _ => return Err(n),
            },
            ("blkirq_transport", Some("eventfd")) => {
                args.blkirq = Some((args.blkirq.map_or(1, |b| b.0), true))
            }
            ("blkirq_transport", Some("doorbell")) => {}
            ("workload", Some(n)) => {
                args.workload = Some(crate::workload::WorkloadArgs {
                    ticks: n.parse().map_err(|_| n)?,
                    hints: false,
                    disk: false,
                    tick_ms: 0,
                })
            }
            ("hints", None) => workload_hints = true,
            ("workload_disk", None) => workload_disk = true,
            ("workload_ms", Some(n)) => workload_ms = n.parse().map_err(|_| n)?,
            ("balloon", Some(n)) => {
                args.balloon = Some(crate::balloon::BalloonArgs {
                    mib: n.parse().map_err(|_| n)?,
                    range_kib: 2048,
                    bad: false,
                })
            }
            ("balloon_range", Some(n)) => match n.parse::<u64>() {
                Ok(k) if k >= 4 && k % 4 == 0 => balloon_range = k,
                _ => return Err(n),
            },
            ("balloon_bad", None) => balloon_bad = true,
            ("bench", Some(list)) => {
                args.bench = Some(Bench {
                    selection: Selection::parse(list)?,
                    quick: false,
                    ops: None,
                })
            }
            ("quick", None) => quick = true,
            ("ops", Some(n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => ops = Some(n),
                _ => return Err(n),
            },
            ("net", Some(m)) => net_mode = Some(crate::net::Mode::parse(m).ok_or(m)?),
            ("pvnet", Some(v)) => net.pv = crate::net::PvPath::parse(v).ok_or(v)?,
            ("ip", Some(v)) => net.ip = crate::net::parse_ip(v).ok_or(v)?,
            ("peer", Some(v)) => net.peer = crate::net::parse_ip(v).ok_or(v)?,
            ("count", Some(n)) => net.count = n.parse().map_err(|_| n)?,
            ("id", Some(n)) => net.ring.id = n.parse().map_err(|_| n)?,
            ("members", Some(n)) => net.ring.members = n.parse().map_err(|_| n)?,
            ("touch", Some(n)) => net.ring.touch_mib = n.parse().map_err(|_| n)?,
            ("give_back", None) => net.ring.give_back = true,
            ("size", Some(n)) => match n.parse::<usize>() {
                Ok(s) if s <= crate::net::proto::MAX_UDP_PAYLOAD => net.size = s,
                _ => return Err(n),
            },
            ("smp", Some("emulated")) => args.smp = Some((SmpMode::Emulated, 1)),
            ("smp", Some("pv")) => args.smp = Some((SmpMode::Pv, 1)),
            ("smp", Some(other)) => return Err(other),
            ("ipi", Some("emulated")) => ipi_mode = Some(SmpMode::Emulated),
            ("ipi", Some("pv")) => ipi_mode = Some(SmpMode::Pv),
            ("ipi", Some(other)) => return Err(other),
            ("ipi_rounds", Some(n)) => match n.parse::<u32>() {
                Ok(n) if n >= 1 => ipi_rounds = n,
                _ => return Err(n),
            },
            ("cpus", Some(n)) => match n.parse::<usize>() {
                Ok(n) if (1..=crate::smp::MAX_CPUS).contains(&n) => cpus = n,
                _ => return Err(n),
            },
            ("lock", Some(k)) => {
                args.lock = Some(crate::lock::LockArgs {
                    kind: crate::lock::LockKind::parse(k).ok_or(k)?,
                    cpus: 1,
                    iters: 0,
                    spin: 0,
                    bad: false,
                    hang: false,
                    bench: false,
                })
            }
            ("iters", Some(n)) => match n.parse::<u64>() {
                Ok(n) if (1..=1 << 32).contains(&n) => lock_iters = n,
                _ => return Err(n),
            },
            ("spin", Some(n)) => lock_spin = n.parse().map_err(|_| n)?,
            ("lock_bad", None) => lock_bad = true,
            ("lock_hang", None) => lock_hang = true,
            ("lock_bench", None) => lock_bench = true,
            ("counter", Some(n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => {
                    args.counter = Some(crate::counter::CounterArgs {
                        steps: n,
                        step_ms: 0,
                        ring: None,
                        balloon_batch: None,
                        balloon_touch: false,
                        cpus: 1,
                    })
                }
                _ => return Err(n),
            },
            ("counter_ms", Some(n)) => counter_ms = n.parse().map_err(|_| n)?,
            ("balloon_follow", None) => balloon_follow = true,
            ("balloon_touch", None) => balloon_touch = true,
            ("balloon_batch", Some(n)) => match n.parse::<u64>() {
                Ok(n) if (1..=1 << 20).contains(&n) => balloon_batch = n,
                _ => return Err(n),
            },
            ("emuload", Some(n)) => {
                args.emuload = Some(crate::emuload::EmuloadArgs {
                    ticks: n.parse().map_err(|_| n)?,
                    tick_ms: 0,
                    ip: [0; 4],
                    peer: [0; 4],
                })
            }
            ("emuload_ms", Some(n)) => emuload_ms = n.parse().map_err(|_| n)?,
            ("console", Some(other)) => return Err(other),
            _ => {}
        }
    }
    if let Some(p) = &mut args.print {
        p.writes = writes;
        p.flood = flood;
        p.ring = ring;
    }
    if let Some(e) = &mut args.emuload {
        e.tick_ms = emuload_ms;
        e.ip = net.ip;
        e.peer = net.peer;
    }
    if let Some(mode) = net_mode {
        net.mode = mode;
        args.net = Some(net);
    }
    if let Some(w) = &mut args.workload {
        w.hints = workload_hints;
        w.disk = workload_disk;
        w.tick_ms = workload_ms;
    }
    if let Some(b) = &mut args.balloon {
        b.range_kib = balloon_range;
        b.bad = balloon_bad;
    }
    if let Some((_, n)) = &mut args.smp {
        *n = cpus;
    }
    args.ipi = ipi_mode.map(|mode| IpiArgs {
        mode,
        rounds: ipi_rounds,
    });
    if let Some(l) = &mut args.lock {
        l.cpus = cpus;
        l.iters = lock_iters;
        l.spin = lock_spin;
        l.bad = lock_bad;
        l.hang = lock_hang;
        l.bench = lock_bench;
    }
    if let Some(b) = &mut args.bench {
        b.quick = quick;
        b.ops = ops;
    }
    if let Some(c) = &mut args.counter {
        c.step_ms = counter_ms;
        c.ring = ring;
        c.balloon_batch = balloon_follow.then_some(balloon_batch);
        c.balloon_touch = balloon_touch;
        c.cpus = cpus;
    }
    Ok(args)
}
