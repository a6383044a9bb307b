//! The builder: assembles a VM from a [`VmConfig`] — kernel, RAM and boot area, the KVM VM
//! and its vCPUs, the buses with the legacy devices, the PV devices — without running
//! anything. [`crate::vm::run`] starts the threads and supervises them.

use std::sync::Arc;

use kvm_ioctls::Cap;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::{IRQ_TEST, IRQ_TEST_GSI};
use pvkit_abi::AbiVersion;

use super::control::VmInfo;
use super::machine::{VcpuState, Vm};
use super::{read_kernel_file, KernelSource, VmConfig, VmError};
use crate::arch::x86_64::cpuid::{kvmclock_available, supported_cpuid};
use crate::arch::x86_64::layout::{write_boot_area, BootParams};
use crate::bus::PortBus;
use crate::devices::legacy::ata::attach_ata;
use crate::devices::legacy::irq::{create_irqchip, InterruptLine};
use crate::devices::legacy::ne2000::{
    announce_frame, attach_ne2000, open_backend, NetBackendConfig, NetDevice, NE2000_GSI,
    NE2000_MAC,
};
use crate::devices::legacy::pit::attach_pit;
use crate::devices::legacy::uart::{Uart, COM1_BASE, COM1_LEN};
use crate::devices::legacy::vm_clock::VmClock;
use crate::devices::pseudo::irq_test::IrqTestPort;
use crate::devices::pseudo::markers::BenchMarkers;
use crate::devices::pseudo::null::NullPort;
use crate::devices::pv::balloon::PvBalloon;
use crate::devices::pv::clock::{ClockSource, TscClock};
use crate::devices::pv::doorbell::{IoEventRegistrar, KvmIoEvents, DOORBELL_PORTS};
use crate::devices::pv::ipi::{KvmMsi, PvIpi};
use crate::devices::pv::net::PvNet;
use crate::devices::pv::net_rx::PvNetRunning;
use crate::devices::pv::ring_irq::RingIrqs;
use crate::devices::pv::spinlock::PvSpinlock;
use crate::devices::pv::steal::{PvSteal, ThreadSchedStat};
use crate::devices::pv::vcpu_up::VcpuUp;
use crate::devices::pv::RegionOwner;
use crate::devices::pv::RingsConfig;
use crate::devices::{assemble, PvConfig};
use crate::exit::ledger::ExitLedger;
use crate::exit::ledger::LedgerSnapshot;
use crate::exit::VmShared;
use crate::io::console_out::Console;
use crate::io::disk::DiskConfig;
use crate::io::disk::SharedDisk;
use crate::iothread::IoStopper;
use crate::loader::elf::ElfImage;
use crate::loader::symbols::SymbolTable;
use crate::runtime::sync::lock;
use crate::runtime::watchdog;
use crate::snapshot::capture::{msr_list, DeviceHandles};
use crate::snapshot::memory_file::map_memory_file;
use crate::snapshot::restore::{load_ledger, restore_vcpu, restore_vm, RestoreError};
use crate::snapshot::state::{
    DiskInfo, KernelInfo, NicState, SavedBackend, SavedNicModel, VmState,
};
use crate::snapshot::MEMORY_FILE;
use crate::vstate::kvm::{open_kvm, PlatformInfo};
use crate::vstate::memory::ram_size;
use crate::vstate::memory::{create_fresh_ram, mark_mergeable, MAX_MEM_MIB};
use crate::vstate::vcpu::{RegAccess, Vcpu};
use crate::vstate::vm::create_vm;
use pvkit_devices::{Ata, Ne2000, Pit};
use std::sync::Mutex;

/// A VM assembled and ready to run: the shared [`Vm`], its vCPUs with their states, and what
/// the run needs at the end.
pub struct Built {
    /// The VM every vCPU thread shares.
    pub vm: Arc<Vm>,
    /// The vCPUs, vCPU 0 first, each with the state its thread owns.
    pub vcpus: Vec<(Vcpu, VcpuState)>,
    /// The console sink.
    pub console: Console,
    /// The disk image, if any.
    pub disk: Option<SharedDisk>,
    /// Stops the host I/O thread (when the VM has rings).
    pub io_stopper: Option<IoStopper>,
    /// The benchmark markers (their records are read after the run).
    pub bench: Arc<BenchMarkers>,
    /// The host platform.
    pub platform: PlatformInfo,
    /// How hypercall registers are accessed.
    pub reg_access: RegAccess,
    /// The ABI version in the guest's note.
    pub guest_abi: AbiVersion,
    /// The guest ELF's symbols, kept from the file before its bytes are dropped.
    pub symbols: Arc<SymbolTable>,
    /// The NE2000 ([`VmConfig::net`] with [`super::NicModel::Ne2000`]), with its receive
    /// thread running.
    pub net: Option<NetDevice>,
    /// The PV NIC ([`VmConfig::net`] with [`super::NicModel::Pv`]), its backend served.
    pub pv_net: Option<PvNetRunning>,
    /// The rings' completion interrupt lines (VMs with the in-kernel irqchip).
    pub ring_irqs: Option<Arc<RingIrqs>>,
    /// The memory balloon (its statistics are read after the run).
    pub balloon: Option<Arc<PvBalloon>>,
    /// The steal-time device, if the host shows scheduler statistics.
    pub steal: Option<Arc<PvSteal>>,
    /// The free-page hints (a migration reads them).
    pub free_page_hint: Option<Arc<crate::devices::pv::free_page_hint::PvFreePageHint>>,
    /// The `VcpuUp` device (more than one vCPU).
    pub vcpu_up: Option<Arc<VcpuUp>>,
    /// The device models a snapshot saves.
    pub devices: DeviceHandles,
    /// What a snapshot needs to know of the VM ([`crate::vm::control`]).
    pub info: VmInfo,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("vm", &self.vm)
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// The guest ELF's bytes. A file may be at most as large as guest RAM (`mem_mib`): no
/// loadable image is larger, and the VMM never holds more than that for it.
fn kernel_bytes(
    src: &KernelSource,
    mem_mib: u64,
) -> Result<std::borrow::Cow<'static, [u8]>, VmError> {
    Ok(match src {
        KernelSource::Builtin => crate::guests::builtin_kernel()
            .ok_or(VmError::NoBuiltinKernel(crate::guests::BUILD_STATUS))?
            .into(),
        KernelSource::Path(p) => {
            let limit = mem_mib.min(MAX_MEM_MIB) << 20;
            read_kernel_file(p, limit)?.into()
        }
        KernelSource::Bytes(b) => b.clone().into(),
    })
}

/// Assembles the VM of `config` with the PV devices of ABI v1 (console and block rings, PV
/// block device, PV clock page). `on_fatal` hears about a host thread's failure.
pub fn build(
    config: &VmConfig,
    on_fatal: Arc<dyn Fn(String) + Send + Sync>,
) -> Result<Built, VmError> {
    // A restore reads and checks the whole state file before anything else is set up.
    let restore = config
        .restore
        .as_deref()
        .map(crate::snapshot::restore::read_state)
        .transpose()?;
    let guest = match &restore {
        Some(state) => restored_guest(config, state)?,
        None => fresh_guest(config)?,
    };
    let Guest {
        mem,
        entry,
        span,
        abi,
        symbols,
        disk_config,
    } = guest;
    let disk = disk_config.as_ref().map(SharedDisk::open).transpose()?;
    let kvm = open_kvm()?;
    let vcpu_count = match &restore {
        Some(state) => u32::try_from(state.vcpus.len()).unwrap_or(u32::MAX),
        None => config.vcpus,
    };
    let max_vcpus = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
    if !(1..=max_vcpus).contains(&vcpu_count) {
        return Err(VmError::VcpuCount {
            requested: vcpu_count,
            max: max_vcpus,
        });
    }
    watchdog::install()?;
    let vm_fd = Arc::new(create_vm(&kvm, &mem)?);
    // KVM's in-kernel irqchip, created before any vCPU, only when something needs it: the
    // NIC's interrupt (IOAPIC), or SMP (LAPICs for INIT-SIPI-SIPI and IPIs, so the APs start
    // in KVM's wait-for-SIPI state). With it, `hlt` no longer exits to userspace.
    let irqchip = config.net.is_some() || vcpu_count > 1 || config.irq_test || config.irqchip;
    if irqchip {
        create_irqchip(&vm_fd)?;
    }
    if let Some(state) = &restore {
        if state.vm.irqchip.is_some() != irqchip {
            return Err(mismatch("the snapshot's irqchip does not match this VM's"));
        }
        restore_vm(&vm_fd, &state.vm)?;
    }
    // Completion interrupts of the rings need the IOAPIC.
    let ring_irqs = irqchip
        .then(|| RingIrqs::irqfds(&vm_fd))
        .transpose()?
        .map(Arc::new);
    let irq_test = config
        .irq_test
        .then(|| InterruptLine::irqfd(&vm_fd, IRQ_TEST_GSI.into()))
        .transpose()?;
    // A restored NIC's backend is new (a TAP device may be on another host): it announces
    // the guest's MAC once, before the guest runs.
    let saved_net = restore.as_ref().and_then(|s| s.devices.net.as_ref());
    let open_nic_backend = |net: &super::NetConfig, mac: [u8; 6]| {
        open_backend(&net.backend, net.host_rtt.as_ref()).map(|mut b| {
            if saved_net.is_some_and(|n| n.backend == SavedBackend::Tap) {
                // A frame the device cannot take now is lost, like any frame.
                let _ = b.send(&announce_frame(mac));
            }
            b
        })
    };
    let (net_backend, pv_net) = match &config.net {
        Some(net) => {
            let mac = net.mac.unwrap_or(NE2000_MAC);
            let ne2000 = match config.nic.has_ne2000() {
                true => {
                    let model = match saved_net.and_then(|n| n.ne2000.as_ref()) {
                        Some(saved) => Ne2000::from_state(saved).map_err(mismatch)?,
                        None => Ne2000::new(mac),
                    };
                    let line = InterruptLine::irqfd(&vm_fd, NE2000_GSI)?;
                    Some((open_nic_backend(net, mac)?, model, line))
                }
                false => None,
            };
            let pv = config
                .nic
                .has_pv()
                .then(|| open_nic_backend(net, mac).map(|b| Arc::new(PvNet::new(b, mac))))
                .transpose()?;
            (ne2000, pv)
        }
        None => (None, None),
    };
    let vcpu_up = (vcpu_count > 1).then(|| Arc::new(VcpuUp::new(vcpu_count)));
    // PV IPIs go to the in-kernel LAPICs (created above with more than one vCPU).
    let ipi = (vcpu_count > 1)
        .then(|| Arc::new(PvIpi::new(vcpu_count, Arc::new(KvmMsi(Arc::clone(&vm_fd))))));
    let steal = schedstat_available().then(|| Arc::new(PvSteal::new(vcpu_count)));
    let clock = match &restore {
        Some(state) => VmClock::resume(&state.devices.vm_clock).map_err(mismatch)?,
        None => VmClock::start(),
    };
    let supported = supported_cpuid(&kvm)?;
    let kvmclock = kvmclock_available(supported.as_slice());
    let eventfd = kvm.check_extension(Cap::Ioeventfd);
    let clock_possible = kvm.check_extension(Cap::GetTscKhz);
    // vCPU 0 first: the PV clock needs its TSC rate and offset. Its CPUID table (with the
    // feature bits, once the devices are registered) and boot registers come below, so
    // `KVM_SET_CPUID2` is done once. A restored vCPU gets the saved feature bits at once:
    // its state is set before the devices are registered, and its CPUID must be in place
    // before that.
    let saved_features = restore
        .as_ref()
        .map(|s| Features::from_bits_retain(s.features));
    let mut vcpu = Vcpu::create(&kvm, &vm_fd, 0, config.reg_access)?;
    if let (Some(state), Some(saved_features)) = (&restore, saved_features) {
        vcpu.setup_boot(&supported, saved_features, entry)?;
        let saved = state
            .vcpus
            .first()
            .ok_or_else(|| mismatch("no vCPU state"))?;
        restore_vcpu(&mut vcpu, saved)?;
    }
    let tsc_khz = vcpu.tsc_khz();
    let tsc_clock = match (clock_possible, tsc_khz, vcpu.guest_tsc_offset()) {
        (true, Some(khz), Some(offset)) => Some(TscClock::new(clock, khz, offset)),
        // KVM cannot tell the TSC rate or value: no clock page.
        _ => None,
    };

    let console = if config.capture_console {
        Console::capture()
    } else {
        Console::stdout(config.seccomp).map_err(VmError::Thread)?
    };
    let mut pio = PortBus::new();
    let uart = match &restore {
        Some(state) => Uart::from_state(&state.devices.uart, console.clone()).map_err(mismatch)?,
        None => Uart::new(console.clone()),
    };
    let uart = Arc::new(Mutex::new(uart));
    pio.insert(COM1_BASE.into(), COM1_LEN.into(), "com1", uart.clone())?;
    pio.insert_mut(pvkit_abi::ports::NULL.into(), 1, "null", NullPort)?;
    let pit = attach_pit(&mut pio, clock)?;
    let ata = disk
        .as_ref()
        .map(|d| attach_ata(&mut pio, d.clone()))
        .transpose()?;
    if let Some(state) = &restore {
        *lock(&pit) = Pit::from_state(&state.devices.pit).map_err(mismatch)?;
        match (&ata, &disk, &state.devices.ata) {
            (Some(a), Some(d), Some(saved)) => {
                *lock(a) = Ata::from_state(saved, d.clone()).map_err(mismatch)?;
            }
            (None, None, None) => {}
            _ => {
                return Err(mismatch(
                    "the snapshot's VM had a disk exactly when this one has",
                ))
            }
        }
        if state.devices.pv_block_sectors != disk.as_ref().map(SharedDisk::sectors) {
            return Err(mismatch("the disk's size differs from the snapshot's disk"));
        }
    }
    if let Some(line) = irq_test {
        pio.insert_mut(IRQ_TEST.into(), 1, "irq-test", IrqTestPort::new(line))?;
    }
    let net = net_backend
        .map(|(backend, model, line)| {
            attach_ne2000(
                &mut pio,
                model,
                backend,
                line,
                on_fatal.clone(),
                config.seccomp,
            )
        })
        .transpose()?;
    let mut ledger = ExitLedger::new();
    let mut pv = assemble(
        PvConfig {
            console: console.clone(),
            pv_console: config.pv_console,
            disk: disk.clone(),
            clock: tsc_clock.map(|c| Arc::new(c) as Arc<dyn ClockSource>),
            kvmclock,
            balloon: Some((mem.clone(), span.clone())),
            rings: Some((
                mem.clone(),
                RingsConfig {
                    ioevents: eventfd.then(|| {
                        Arc::new(KvmIoEvents(Arc::clone(&vm_fd))) as Arc<dyn IoEventRegistrar>
                    }),
                    on_fatal: on_fatal.clone(),
                },
            )),
            vcpu_up: vcpu_up.clone(),
            net: pv_net.clone(),
            ipi,
            spinlock: (vcpu_count > 1).then(|| Arc::new(PvSpinlock::new(vcpu_count))),
            steal: steal.clone(),
        },
        &mut ledger,
    )
    .map_err(VmError::PvDevices)?;
    if let Some(irqs) = &ring_irqs {
        pv.bus.set_ring_irqs(Arc::clone(irqs));
    }
    let (base, len) = DOORBELL_PORTS;
    if let Some(doorbells) = pv.bus.doorbell_ports() {
        pio.insert_mut(base.into(), len.into(), "doorbells", doorbells)?;
    }
    let pv_net = pv_net
        .map(|n| PvNetRunning::start(n, mem.clone(), on_fatal, config.seccomp))
        .transpose()
        .map_err(VmError::Thread)?;
    let io_stopper = pv.bus.stopper();
    let bench = pv.bench;
    let balloon = pv.balloon;
    let free_page_hint = pv.free_page_hint;
    let pv_clock = pv.clock;
    if let Some(state) = &restore {
        if let (Some(c), pages) = (&pv_clock, &state.devices.clock_pages) {
            let pages: Vec<_> = pages
                .iter()
                .map(|p| {
                    let owner = p.vcpu.map_or(RegionOwner::Vm, RegionOwner::Vcpu);
                    (owner, p.page)
                })
                .collect();
            c.restore_pages(&mem, &pages).map_err(mismatch)?;
        } else if !state.devices.clock_pages.is_empty() {
            return Err(mismatch(
                "the snapshot has PV clock pages, this VM has no PV clock",
            ));
        }
        if let Some(b) = &balloon {
            b.restore_ballooned(&state.devices.ballooned)
                .map_err(mismatch)?;
            if let Some(t) = state.devices.balloon_target {
                b.restore_target(pvkit_abi::balloon::BalloonTarget {
                    pages: t.pages,
                    generation: t.generation,
                })
                .map_err(mismatch)?;
            }
        }
        for ring in &state.devices.rings {
            pv.bus.restore_ring(&mem, ring).map_err(mismatch)?;
        }
        match &vcpu_up {
            Some(up) => up.restore(&state.devices.vcpu_starts).map_err(mismatch)?,
            None if state.devices.vcpu_starts.is_empty() => {}
            None => {
                return Err(mismatch(
                    "the snapshot has vCPU start slots, this VM one vCPU",
                ))
            }
        }
    }
    if let Some(d) = &disk {
        bench.set_disk(Box::new(d.clone()));
    }
    if let Some(obs) = &config.phase_observer {
        bench.set_observer(obs.clone());
    }

    // The features the guest sees: derived from the registered devices, in one place.
    let features = pv.bus.features();
    match saved_features {
        // Already in vCPU 0's CPUID; it must be what these devices offer.
        Some(saved) if saved != features => {
            return Err(mismatch(format!(
                "the snapshot's guest saw features {:#x}, this VM offers {:#x}",
                saved.bits(),
                features.bits()
            )))
        }
        Some(_) => {}
        None => vcpu.setup_boot(&supported, features, entry)?,
    }
    // The other vCPUs, with the final feature bits and vCPU 0's register access.
    let mut others: Vec<Vcpu> = (1..vcpu_count)
        .map(|i| {
            let access = Some(vcpu.reg_access());
            Vcpu::new(
                &kvm,
                &vm_fd,
                u64::from(i),
                entry,
                &supported,
                features,
                access,
            )
        })
        .collect::<Result<_, _>>()?;
    let cmdline = match &restore {
        Some(state) => state.cmdline.clone(),
        None => config.full_cmdline(),
    };
    if restore.is_none() {
        write_boot_area(
            &mem,
            &BootParams {
                cmdline: cmdline.as_bytes(),
                kernel: span.clone(),
                features: features.bits(),
                tsc_khz: tsc_khz.map_or(0, u64::from),
            },
        )?;
    }
    if let Some(state) = &restore {
        for (v, saved) in others.iter_mut().zip(state.vcpus.iter().skip(1)) {
            restore_vcpu(v, saved)?;
        }
    }
    let info = VmInfo {
        mem_bytes: ram_size(&mem),
        cmdline,
        kernel: KernelInfo {
            entry,
            span: (span.start, span.end),
            abi: (abi.major, abi.minor),
        },
        features: features.bits(),
        irqchip,
        disk: match (&disk_config, &disk) {
            (Some(c), Some(d)) => Some(DiskInfo {
                path: c.path.clone(),
                len: d.sectors() * pvkit_abi::block::SECTOR_SIZE,
                read_only: c.read_only,
                base: c.base.clone(),
            }),
            _ => None,
        },
        vcpus: vcpu_count,
        net_refusal: saved_nic(config).err(),
        msrs: msr_list(&kvm).unwrap_or_default(),
        base_ledger: match &restore {
            Some(state) => load_ledger(&state.ledger)?,
            None => LedgerSnapshot::default(),
        },
        migration_key: config.migration_key.clone(),
    };
    let devices = DeviceHandles {
        uart,
        pit,
        ata,
        disk: disk.clone(),
        vm_clock: clock,
        pv_clock,
        balloon: balloon.clone(),
        free_page_hint: free_page_hint.clone(),
        net: saved_nic(config).ok().flatten(),
        vcpu_up: vcpu_up.clone(),
        ne2000: net.as_ref().map(NetDevice::handle),
    };

    let shards: Vec<ExitLedger> = others.iter().map(|_| ledger.shard()).collect();
    // vCPU 0's in-kernel counters (KVM's binary stats) go into every snapshot of its ledger,
    // so benchmark phases see the exits KVM handled without us; without them (an older
    // kernel), phases report userspace exits only.
    if let Ok(stats) = vcpu.stats() {
        ledger.set_kernel_counters(Box::new(stats));
    }
    let boot = VcpuState::new(0, ledger);
    let platform = crate::vstate::kvm::info(tsc_khz);
    let reg_access = vcpu.reg_access();
    let mut vcpus = vec![(vcpu, boot)];
    vcpus.extend(others.into_iter().zip(shards).map(|(v, ledger)| {
        let index = v.index();
        (v, VcpuState::new(index, ledger))
    }));
    let vm = Vm::new(Some(vm_fd), VmShared::new(mem, pio), pv.bus);
    Ok(Built {
        vm: Arc::new(vm),
        vcpus,
        console,
        disk,
        io_stopper,
        bench,
        platform,
        reg_access,
        guest_abi: abi,
        symbols,
        net,
        pv_net,
        ring_irqs,
        balloon,
        steal,
        free_page_hint,
        vcpu_up,
        devices,
        info,
    })
}

/// Whether this host shows a thread's scheduler statistics (`/proc/thread-self/schedstat`,
/// the steal-time source).
fn schedstat_available() -> bool {
    ThreadSchedStat::open_current().is_ok()
}

/// The guest's RAM and what the VMM keeps of its kernel, before the VM exists.
struct Guest {
    mem: crate::vstate::memory::GuestRam,
    entry: u64,
    span: std::ops::Range<u64>,
    abi: AbiVersion,
    symbols: Arc<SymbolTable>,
    disk_config: Option<DiskConfig>,
}

/// A new guest: the kernel ELF loaded into fresh RAM.
fn fresh_guest(config: &VmConfig) -> Result<Guest, VmError> {
    let bytes = kernel_bytes(&config.kernel, config.mem_mib)?;
    let image = ElfImage::parse(&bytes)?;
    // Fresh RAM: the loader skips zero-filling what mmap already zeroed.
    let (mem, kernel) = image.load_fresh(create_fresh_ram(config.mem_mib)?)?;
    if config.mergeable {
        mark_mergeable(&mem)?;
    }
    // A compact copy of the symbol table (bounded, see `loader::symbols`) is all that is
    // kept of the file; a malformed one means no symbols, not a refused guest.
    let symbols = Arc::new(SymbolTable::from_elf(&bytes).unwrap_or_default());
    Ok(Guest {
        mem,
        entry: kernel.entry,
        span: kernel.span,
        abi: kernel.abi,
        symbols,
        disk_config: config.disk.clone(),
    })
}

/// The NIC as a snapshot keeps it (without the NE2000's model state, which the capture
/// adds), or why it cannot: the PV NIC or the NE2000, alone, on the loopback or a TAP
/// backend. Both NICs at once and a loopback peer that times its own round trips
/// (`pvkit bench` only) are not saved.
fn saved_nic(config: &VmConfig) -> Result<Option<NicState>, String> {
    let Some(net) = &config.net else {
        return Ok(None);
    };
    let model = match config.nic {
        super::NicModel::Pv => SavedNicModel::Pv,
        super::NicModel::Ne2000 => SavedNicModel::Ne2000,
        super::NicModel::Both => {
            return Err("both NICs at once (bench only; one NIC, PV or NE2000, is saved)".into())
        }
    };
    if net.host_rtt.is_some() {
        return Err("a loopback peer that times its own round trips (bench only)".into());
    }
    let backend = match net.backend {
        NetBackendConfig::Loopback => SavedBackend::Loopback,
        NetBackendConfig::Tap { .. } => SavedBackend::Tap,
    };
    Ok(Some(NicState {
        mac: net.mac.unwrap_or(NE2000_MAC),
        model,
        backend,
        ne2000: None,
    }))
}

/// How to give a restoring VM the NIC of `nic` again, as `pvkit run` options.
fn nic_options(nic: &NicState) -> String {
    let model = match nic.model {
        SavedNicModel::Pv => "pv",
        SavedNicModel::Ne2000 => "ne2000",
    };
    let backend = match nic.backend {
        SavedBackend::Loopback => "loopback",
        SavedBackend::Tap => "tap",
    };
    let m = nic.mac;
    format!(
        "--net {backend} --nic {model} --mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A restored guest: RAM mapped copy-on-write from the snapshot's memory file; the disk
/// is `config.disk` if given (e.g. a clone's overlay), else the snapshot's.
fn restored_guest(config: &VmConfig, state: &VmState) -> Result<Guest, VmError> {
    let dir = config
        .restore
        .as_deref()
        .unwrap_or(std::path::Path::new("."));
    let nic = saved_nic(config)
        .map_err(|why| mismatch(format!("a snapshot cannot be restored with {why}")))?;
    let saved = state.devices.net.as_ref().map(NicState::spec);
    if nic != saved {
        return Err(mismatch(match (&saved, &nic) {
            (Some(s), Some(n)) if s.model == n.model && s.backend == n.backend => format!(
                "the NIC's MAC address differs from the snapshot's: give it again ({})",
                nic_options(s)
            ),
            (Some(s), _) => format!(
                "the snapshot's VM had another NIC than this one: give it again ({})",
                nic_options(s)
            ),
            (None, _) => "the snapshot's VM had no NIC".to_owned(),
        }));
    }
    let mem = map_memory_file(&dir.join(MEMORY_FILE), state.mem_bytes)?;
    let disk_config = match (&config.disk, &state.disk) {
        (Some(d), Some(_)) => Some(d.clone()),
        (None, Some(saved)) => Some(DiskConfig {
            path: saved.path.clone(),
            read_only: saved.read_only,
            base: saved.base.clone(),
        }),
        (_, None) => None,
    };
    let (major, minor) = state.kernel.abi;
    Ok(Guest {
        mem,
        entry: state.kernel.entry,
        span: state.kernel.span.0..state.kernel.span.1,
        abi: AbiVersion { major, minor },
        symbols: Arc::new(SymbolTable::default()),
        disk_config,
    })
}

fn mismatch(e: impl std::fmt::Display) -> VmError {
    VmError::Restore(RestoreError::Mismatch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::NicModel;
    use crate::vm::NetConfig;

    fn config(nic: NicModel, backend: NetBackendConfig) -> VmConfig {
        VmConfig {
            net: Some(NetConfig {
                backend,
                mac: None,
                host_rtt: None,
            }),
            nic,
            ..VmConfig::default()
        }
    }

    #[test]
    fn the_nic_a_snapshot_keeps_or_why_not() {
        let tap = NetBackendConfig::Tap {
            netns: Some("x".into()),
            bridge: None,
        };
        let n = saved_nic(&config(NicModel::Ne2000, tap)).unwrap().unwrap();
        assert_eq!(
            (n.model, n.backend, n.mac, n.ne2000.clone()),
            (SavedNicModel::Ne2000, SavedBackend::Tap, NE2000_MAC, None)
        );
        assert_eq!(
            nic_options(&n),
            "--net tap --nic ne2000 --mac 52:54:00:12:34:56"
        );
        let n = saved_nic(&config(NicModel::Pv, NetBackendConfig::Loopback));
        assert_eq!(n.unwrap().unwrap().model, SavedNicModel::Pv);
        let both = saved_nic(&config(NicModel::Both, NetBackendConfig::Loopback));
        assert!(both.unwrap_err().contains("both NICs"));
        let mut timed = config(NicModel::Pv, NetBackendConfig::Loopback);
        if let Some(n) = &mut timed.net {
            n.host_rtt = Some(pvkit_net::host_rtt::HostRttLog::default());
        }
        assert!(saved_nic(&timed).unwrap_err().contains("round trips"));
        assert_eq!(saved_nic(&VmConfig::default()), Ok(None));
    }
}
