//! Devices the guest talks to: the emulated legacy devices on the port bus ([`legacy`]),
//! the paravirtual ones on the hypercall bus ([`pv`]) and the pseudo-devices that exist for
//! measurement ([`pseudo`]).
//!
//! A device here only adapts a bus access (or a hypercall) to a model of `pvkit-devices` or
//! `pvkit-pv`; the models themselves do no I/O and know nothing of KVM.

pub mod legacy;
pub mod pseudo;
pub mod pv;

use std::sync::Arc;

use crate::exit::ledger::ExitLedger;
use crate::io::console_out::Console;
use crate::io::disk::SharedDisk;
use crate::vstate::memory::GuestRam;
use pseudo::markers::BenchMarkers;
use pv::balloon::{BalloonError, PvBalloon};
use pv::block::PvBlock;
use pv::clock::{ClockSource, PvClock};
use pv::console::PvConsole;
use pv::free_page_hint::PvFreePageHint;
use pv::ipi::PvIpi;
use pv::net::PvNet;
use pv::spinlock::PvSpinlock;
use pv::steal::PvSteal;
use pv::vcpu_up::VcpuUp;
use pv::{BusError, HypercallBus, RingsConfig};

/// What the PV devices of a VM are built from.
pub struct PvConfig {
    /// The console sink (shared with the UART).
    pub console: Console,
    /// Whether the PV console device (`ConsoleWrite`, the console ring, feature bits
    /// `CONSOLE` and `CONSOLE_RING`) exists; without it a guest sees no PV console and
    /// falls back to the UART (`pvkit run --no-pv-console`).
    pub pv_console: bool,
    /// The disk behind the PV block device; `None`: no block device, no block ring.
    pub disk: Option<SharedDisk>,
    /// The time source of the PV clock page; `None`: no clock page.
    pub clock: Option<Arc<dyn ClockSource>>,
    /// KVM's kvmclock is available to the guest (advertised as
    /// [`pvkit_abi::cpuid::Features::KVMCLOCK`]).
    pub kvmclock: bool,
    /// Guest RAM and the loaded kernel image's span, for the memory balloon and the
    /// free-page hints; `None`: neither.
    pub balloon: Option<(GuestRam, std::ops::Range<u64>)>,
    /// Guest RAM and how rings are served; `None`: no rings (no `RegisterRegion` of a
    /// ring, no `RingKick`, no doorbells).
    pub rings: Option<(GuestRam, RingsConfig)>,
    /// The `VcpuUp` device (VMs with more than one vCPU); `None`: the call is `EOPNOTSUPP`.
    pub vcpu_up: Option<Arc<VcpuUp>>,
    /// The PV NIC (`pvkit run --net … --nic pv`); `None`: no `NetInfo`/`NetSend`, no net
    /// rings.
    pub net: Option<Arc<PvNet>>,
    /// The `SendIpi` device (VMs with more than one vCPU); `None`: the call is `EOPNOTSUPP`.
    pub ipi: Option<Arc<PvIpi>>,
    /// The PV spinlock wait/kick device (VMs with more than one vCPU).
    pub spinlock: Option<Arc<PvSpinlock>>,
    /// The steal-time device (one page per vCPU); `None`: no steal page.
    pub steal: Option<Arc<PvSteal>>,
}

impl PvConfig {
    /// Only the core calls: no device beyond the (optional) PV console; the fields to add
    /// are set over it (`PvConfig { disk: …, ..PvConfig::core(console, true) }`).
    pub fn core(console: Console, pv_console: bool) -> Self {
        Self {
            console,
            pv_console,
            disk: None,
            clock: None,
            kvmclock: false,
            balloon: None,
            rings: None,
            vcpu_up: None,
            net: None,
            ipi: None,
            spinlock: None,
            steal: None,
        }
    }
}

/// Which NIC a VM with a network gets (`pvkit run --nic`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NicModel {
    /// The emulated NE2000 (ports `0x300..=0x31f`, IRQ 9): the default.
    #[default]
    Ne2000,
    /// The PV NIC: `NetInfo`, `NetSend` and the TX/RX rings ([`pv::net`]).
    Pv,
    /// Both, each on its own backend of the same kind (`pvkit bench`'s net boot, which
    /// measures one against the other). Meant for the loopback backend: two TAP devices
    /// would need two namespaces (the second `pvkit-<pid>` cannot be created).
    Both,
}

impl NicModel {
    /// Whether the VM gets the NE2000.
    pub fn has_ne2000(self) -> bool {
        matches!(self, NicModel::Ne2000 | NicModel::Both)
    }

    /// Whether the VM gets the PV NIC.
    pub fn has_pv(self) -> bool {
        matches!(self, NicModel::Pv | NicModel::Both)
    }
}

/// The assembled PV devices: the bus, and handles to the devices the VM reads back.
#[derive(Debug)]
pub struct PvDevices {
    /// Every PV device, by hypercall number.
    pub bus: HypercallBus,
    /// The benchmark markers (their records are read after the run).
    pub bench: Arc<BenchMarkers>,
    /// The PV clock, if there is one.
    pub clock: Option<Arc<PvClock>>,
    /// The memory balloon, if there is one (its statistics are read after the run).
    pub balloon: Option<Arc<PvBalloon>>,
    /// The free-page hints (with the balloon), read by a migration.
    pub free_page_hint: Option<Arc<PvFreePageHint>>,
}

/// The PV devices could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Two devices conflict, or the rings could not be set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The balloon could not be built.
    #[error(transparent)]
    Balloon(#[from] BalloonError),
}

/// Builds the PV devices of `config` and registers them on a new hypercall bus, one line
/// per device; then sets up the rings they declared (their notification counters go into
/// `ledger`).
pub fn assemble(config: PvConfig, ledger: &mut ExitLedger) -> Result<PvDevices, AssembleError> {
    let mut bus = HypercallBus::new();
    let bench = Arc::new(BenchMarkers::new());
    let clock = (config.clock.is_some() || config.kvmclock)
        .then(|| Arc::new(PvClock::new(config.clock, config.kvmclock)));

    if config.pv_console {
        bus.insert(Arc::new(PvConsole::new(config.console)))?;
    }
    bus.insert(bench.clone())?;
    if let Some(clock) = &clock {
        bus.insert(clock.clone())?;
    }
    if let Some(disk) = config.disk {
        bus.insert(Arc::new(PvBlock::new(disk)))?;
    }
    let (balloon, free_page_hint) = match config.balloon {
        Some((mem, kernel)) => (
            Some(Arc::new(PvBalloon::new(&mem, kernel.clone())?)),
            Some(Arc::new(PvFreePageHint::new(&mem, kernel))),
        ),
        None => (None, None),
    };
    if let Some(b) = &balloon {
        bus.insert(b.clone())?;
    }
    if let Some(h) = &free_page_hint {
        bus.insert(h.clone())?;
    }
    if let Some(up) = config.vcpu_up {
        bus.insert(up)?;
    }
    if let Some(net) = config.net {
        bus.insert(net)?;
    }
    if let Some(ipi) = config.ipi {
        bus.insert(ipi)?;
    }
    if let Some(s) = config.spinlock {
        bus.insert(s)?;
    }
    if let Some(s) = config.steal {
        bus.insert(s)?;
    }

    if let Some((mem, rings)) = config.rings {
        bus.with_rings(mem, rings, ledger)?;
    }
    Ok(PvDevices {
        bus,
        bench,
        clock,
        balloon,
        free_page_hint,
    })
}

/// The devices every VM has (console, bench markers), with no rings, no block device and
/// no clock: for tests of the dispatch paths.
#[cfg(test)]
pub(crate) fn core_devices(console: Console) -> PvDevices {
    assemble(PvConfig::core(console, true), &mut ExitLedger::new())
        .expect("no conflicts among the core devices")
}
