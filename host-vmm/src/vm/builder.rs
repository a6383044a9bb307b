//! The builder: assembles a VM from a [`VmConfig`] — kernel, RAM and boot area, the KVM VM
//! and its vCPUs, the buses with the legacy devices, the PV devices — without running
//! anything. [`crate::vm::run`] starts the threads and supervises them.

use std::sync::Arc;

use kvm_ioctls::Cap;
use pvkit_abi::ports::{IRQ_TEST, IRQ_TEST_GSI};
use pvkit_abi::AbiVersion;

use super::machine::{VcpuState, Vm};
use super::{read_kernel_file, KernelSource, VmConfig, VmError};
use crate::arch::x86_64::cpuid::{kvmclock_available, supported_cpuid};
use crate::arch::x86_64::layout::{write_boot_area, BootParams};
use crate::bus::PortBus;
use crate::devices::legacy::ata::attach_ata;
use crate::devices::legacy::irq::{create_irqchip, InterruptLine};
use crate::devices::legacy::ne2000::{
    attach_ne2000, open_backend, NetDevice, NE2000_GSI, NE2000_MAC,
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
use crate::devices::pv::RingsConfig;
use crate::devices::{assemble, PvConfig};
use crate::exit::ledger::ExitLedger;
use crate::exit::VmShared;
use crate::io::console_out::Console;
use crate::io::disk::SharedDisk;
use crate::iothread::IoStopper;
use crate::loader::elf::ElfImage;
use crate::loader::symbols::SymbolTable;
use crate::runtime::watchdog;
use crate::vstate::kvm::{open_kvm, PlatformInfo};
use crate::vstate::memory::{create_fresh_ram, mark_mergeable, MAX_MEM_MIB};
use crate::vstate::vcpu::{RegAccess, Vcpu};
use crate::vstate::vm::create_vm;

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
    /// The NE2000 ([`VmConfig::net`] with [`NicModel::Ne2000`]), with its receive thread
    /// running.
    pub net: Option<NetDevice>,
    /// The PV NIC ([`VmConfig::net`] with [`NicModel::Pv`]), its backend served.
    pub pv_net: Option<PvNetRunning>,
    /// The rings' completion interrupt lines (VMs with the in-kernel irqchip).
    pub ring_irqs: Option<Arc<RingIrqs>>,
    /// The memory balloon (its statistics are read after the run).
    pub balloon: Option<Arc<PvBalloon>>,
    /// The steal-time device, if the host shows scheduler statistics.
    pub steal: Option<Arc<PvSteal>>,
    /// The `VcpuUp` device (more than one vCPU).
    pub vcpu_up: Option<Arc<VcpuUp>>,
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
    let bytes = kernel_bytes(&config.kernel, config.mem_mib)?;
    let image = ElfImage::parse(&bytes)?;
    let disk = config.disk.as_ref().map(SharedDisk::open).transpose()?;
    let kvm = open_kvm()?;
    let max_vcpus = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
    if !(1..=max_vcpus).contains(&config.vcpus) {
        return Err(VmError::VcpuCount {
            requested: config.vcpus,
            max: max_vcpus,
        });
    }
    watchdog::install()?;

    // Fresh RAM: the loader skips zero-filling what mmap already zeroed.
    let (mem, kernel) = image.load_fresh(create_fresh_ram(config.mem_mib)?)?;
    if config.mergeable {
        mark_mergeable(&mem)?;
    }
    // A compact copy of the symbol table (bounded, see `loader::symbols`) is all that is
    // kept of the file; a malformed one means no symbols, not a refused guest.
    let symbols = Arc::new(SymbolTable::from_elf(&bytes).unwrap_or_default());
    // The image is in guest RAM: the file's bytes are not kept for the run.
    drop(image);
    drop(bytes);
    let vm_fd = Arc::new(create_vm(&kvm, &mem)?);
    // KVM's in-kernel irqchip, created before any vCPU, only when something needs it: the
    // NIC's interrupt (IOAPIC), or SMP (LAPICs for INIT-SIPI-SIPI and IPIs, so the APs start
    // in KVM's wait-for-SIPI state). With it, `hlt` no longer exits to userspace.
    let irqchip = config.net.is_some() || config.vcpus > 1 || config.irq_test || config.irqchip;
    if irqchip {
        create_irqchip(&vm_fd)?;
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
    let (net_backend, pv_net) = match &config.net {
        Some(net) => {
            let mac = net.mac.unwrap_or(NE2000_MAC);
            let ne2000 = match config.nic.has_ne2000() {
                true => {
                    let line = InterruptLine::irqfd(&vm_fd, NE2000_GSI)?;
                    Some((
                        open_backend(&net.backend, net.host_rtt.as_ref())?,
                        mac,
                        line,
                    ))
                }
                false => None,
            };
            let pv = config
                .nic
                .has_pv()
                .then(|| {
                    open_backend(&net.backend, net.host_rtt.as_ref())
                        .map(|b| Arc::new(PvNet::new(b, mac)))
                })
                .transpose()?;
            (ne2000, pv)
        }
        None => (None, None),
    };
    let vcpu_up = (config.vcpus > 1).then(|| Arc::new(VcpuUp::new(config.vcpus)));
    // PV IPIs go to the in-kernel LAPICs (created above with more than one vCPU).
    let ipi = (config.vcpus > 1).then(|| {
        Arc::new(PvIpi::new(
            config.vcpus,
            Arc::new(KvmMsi(Arc::clone(&vm_fd))),
        ))
    });
    let steal = schedstat_available().then(|| Arc::new(PvSteal::new(config.vcpus)));
    let clock = VmClock::start();
    let supported = supported_cpuid(&kvm)?;
    let kvmclock = kvmclock_available(supported.as_slice());
    let eventfd = kvm.check_extension(Cap::Ioeventfd);
    let clock_possible = kvm.check_extension(Cap::GetTscKhz);
    // vCPU 0 first: the PV clock needs its TSC rate and offset. Its CPUID table (with the
    // feature bits, once the devices are registered) and boot registers come below, so
    // `KVM_SET_CPUID2` is done once.
    let mut vcpu = Vcpu::create(&kvm, &vm_fd, 0, config.reg_access)?;
    let tsc_khz = vcpu.tsc_khz();
    let tsc_clock = match (clock_possible, tsc_khz, vcpu.guest_tsc_offset()) {
        (true, Some(khz), Some(offset)) => Some(TscClock::new(clock, khz, offset)),
        // KVM cannot tell the TSC rate or value: no clock page.
        _ => None,
    };

    let console = if config.capture_console {
        Console::capture()
    } else {
        Console::stdout().map_err(VmError::Thread)?
    };
    let mut pio = PortBus::new();
    pio.insert_mut(
        COM1_BASE.into(),
        COM1_LEN.into(),
        "com1",
        Uart::new(console.clone()),
    )?;
    pio.insert_mut(pvkit_abi::ports::NULL.into(), 1, "null", NullPort)?;
    attach_pit(&mut pio, clock)?;
    if let Some(d) = &disk {
        attach_ata(&mut pio, d.clone())?;
    }
    if let Some(line) = irq_test {
        pio.insert_mut(IRQ_TEST.into(), 1, "irq-test", IrqTestPort::new(line))?;
    }
    let net = net_backend
        .map(|(backend, mac, line)| attach_ne2000(&mut pio, mac, backend, line, on_fatal.clone()))
        .transpose()?;
    let mut ledger = ExitLedger::new();
    let mut pv = assemble(
        PvConfig {
            console: console.clone(),
            pv_console: config.pv_console,
            disk: disk.clone(),
            clock: tsc_clock.map(|c| Arc::new(c) as Arc<dyn ClockSource>),
            kvmclock,
            balloon: Some((mem.clone(), kernel.span.clone())),
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
            spinlock: (config.vcpus > 1).then(|| Arc::new(PvSpinlock::new(config.vcpus))),
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
        .map(|n| PvNetRunning::start(n, mem.clone(), on_fatal))
        .transpose()
        .map_err(VmError::Thread)?;
    let io_stopper = pv.bus.stopper();
    let bench = pv.bench;
    let balloon = pv.balloon;
    if let Some(d) = &disk {
        bench.set_disk(Box::new(d.clone()));
    }
    if let Some(obs) = &config.phase_observer {
        bench.set_observer(obs.clone());
    }

    // The features the guest sees: derived from the registered devices, in one place.
    let features = pv.bus.features();
    vcpu.setup_boot(&supported, features, kernel.entry)?;
    // The other vCPUs, with the final feature bits and vCPU 0's register access.
    let others: Vec<Vcpu> = (1..config.vcpus)
        .map(|i| {
            let access = Some(vcpu.reg_access());
            let entry = kernel.entry;
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
        guest_abi: kernel.abi,
        symbols,
        net,
        pv_net,
        ring_irqs,
        balloon,
        vcpu_up,
        steal,
    })
}

/// Whether this host shows a thread's scheduler statistics (`/proc/thread-self/schedstat`,
/// the steal-time source).
fn schedstat_available() -> bool {
    ThreadSchedStat::open_current().is_ok()
}
