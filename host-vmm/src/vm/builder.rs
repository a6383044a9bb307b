//! The builder: assembles a VM from a [`VmConfig`] — kernel, RAM and boot area, the KVM VM
//! and its vCPUs, the buses with the legacy devices, the PV devices — without running
//! anything. [`crate::vm::run`] starts the threads and supervises them.

use std::sync::Arc;

use kvm_ioctls::Cap;
use pvkit_abi::AbiVersion;

use super::machine::{VcpuState, Vm};
use super::{KernelSource, VmConfig, VmError};
use crate::arch::x86_64::cpuid::{kvmclock_available, supported_cpuid};
use crate::arch::x86_64::layout::{write_boot_area, BootParams};
use crate::bus::PortBus;
use crate::devices::legacy::ata::attach_ata;
use crate::devices::legacy::pit::attach_pit;
use crate::devices::legacy::uart::{Uart, COM1_BASE, COM1_LEN};
use crate::devices::legacy::vm_clock::VmClock;
use crate::exit::ledger::ExitLedger;
use crate::exit::VmShared;
use crate::hypercall::BASE_FEATURES;
use crate::io::console_out::Console;
use crate::io::disk::SharedDisk;
use crate::iothread::IoStopper;
use crate::loader::elf::ElfImage;
use crate::paravirt::{
    offered_features, ClockSource, KvmIoEvents, PvBackend, PvConfig, TscClock, DOORBELL_PORTS,
};
use crate::runtime::watchdog;
use crate::vstate::kvm::{open_kvm, PlatformInfo};
use crate::vstate::memory::create_ram;
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
    /// Stops the host I/O thread.
    pub io_stopper: IoStopper,
    /// The host platform.
    pub platform: PlatformInfo,
    /// How hypercall registers are accessed.
    pub reg_access: RegAccess,
    /// The ABI version in the guest's note.
    pub guest_abi: AbiVersion,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("vm", &self.vm)
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

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

/// Assembles the VM of `config` with the PV devices of ABI v1 (console and block rings, PV
/// block device, PV clock page). `on_fatal` hears about a host thread's failure.
pub fn build(
    config: &VmConfig,
    on_fatal: Arc<dyn Fn(String) + Send + Sync>,
) -> Result<Built, VmError> {
    let bytes = kernel_bytes(&config.kernel)?;
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

    let mem = create_ram(config.mem_mib)?;
    let kernel = image.load(&mem)?;
    let vm_fd = Arc::new(create_vm(&kvm, &mem)?);
    let clock = VmClock::start();
    let supported = supported_cpuid(&kvm)?;
    let kvmclock = kvmclock_available(supported.as_slice());
    let eventfd = kvm.check_extension(Cap::Ioeventfd);
    let clock_possible = kvm.check_extension(Cap::GetTscKhz);
    let pv_features = |clock: bool| offered_features(disk.is_some(), eventfd, clock, kvmclock);
    let mut features = BASE_FEATURES | pv_features(clock_possible);
    let mut vcpu = Vcpu::new(
        &kvm,
        &vm_fd,
        0,
        kernel.entry,
        &supported,
        features,
        config.reg_access,
    )?;
    let tsc_khz = vcpu.tsc_khz();
    let tsc_clock = match (tsc_khz, vcpu.guest_tsc_offset()) {
        (Some(khz), Some(offset)) => Some(TscClock::new(clock, khz, offset)),
        _ => None,
    };
    if clock_possible && tsc_clock.is_none() {
        // KVM could not tell the TSC rate or value after all: no clock page.
        features = BASE_FEATURES | pv_features(false);
        vcpu.set_features(&supported, features)?;
    }
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
    attach_pit(&mut pio, clock)?;
    if let Some(d) = &disk {
        attach_ata(&mut pio, d.clone())?;
    }
    let mut ledger = ExitLedger::new();
    let pv = PvBackend::new(
        PvConfig {
            mem: mem.clone(),
            console: console.clone(),
            disk: disk.clone(),
            clock: tsc_clock.map(|c| Arc::new(c) as Arc<dyn ClockSource>),
            ioevents: eventfd.then(|| {
                Arc::new(KvmIoEvents(Arc::clone(&vm_fd)))
                    as Arc<dyn crate::paravirt::IoEventRegistrar>
            }),
            kvmclock,
            on_fatal,
        },
        &mut ledger,
    )
    .map_err(VmError::PvDevices)?;
    let (base, len) = DOORBELL_PORTS;
    pio.insert_mut(base.into(), len.into(), "doorbells", pv.doorbell_ports())?;
    let io_stopper = pv.stopper();
    debug_assert_eq!(
        features,
        BASE_FEATURES | crate::hypercall::PvDevices::features(&pv)
    );

    let shards: Vec<ExitLedger> = others.iter().map(|_| ledger.shard()).collect();
    let mut boot = VcpuState::new(0, ledger);
    if let Some(d) = &disk {
        boot.bench.set_disk(Box::new(d.clone()));
    }
    if let Some(obs) = &config.phase_observer {
        boot.bench.set_observer(obs.clone());
    }
    let platform = crate::vstate::kvm::info(tsc_khz);
    let reg_access = vcpu.reg_access();
    let mut vcpus = vec![(vcpu, boot)];
    vcpus.extend(others.into_iter().zip(shards).map(|(v, ledger)| {
        let index = v.index();
        (v, VcpuState::new(index, ledger))
    }));
    let vm = Vm::new(
        Some(vm_fd),
        VmShared::new(mem, pio),
        console.clone(),
        Box::new(pv),
    );
    Ok(Built {
        vm: Arc::new(vm),
        vcpus,
        console,
        disk,
        io_stopper,
        platform,
        reg_access,
        guest_abi: kernel.abi,
    })
}
