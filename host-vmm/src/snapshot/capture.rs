//! Capturing a paused VM: each vCPU's KVM state ([`capture_vcpu`], after the vCPU left
//! `KVM_RUN` at a clean point: see [`crate::vm::control`]), the VM-wide KVM state
//! ([`capture_vm`]), every device model ([`DeviceHandles::capture`]) and the ledger
//! ([`save_ledger`]). [`write_snapshot`] puts a [`VmState`] and guest RAM into a directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irqchip, kvm_msr_entry, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VmFd};
use pvkit_devices::{Ata, Pit};
use thiserror::Error;

use super::blob::to_blob;
use super::memory_file::{write_memory_file, MemoryFileError, MemoryFileStats};
use super::state::{
    encode, ClockPageState, DeviceStates, IrqchipState, SavedExitKind, StateFileError,
    VcpuKvmState, VmKvmState, VmState,
};
use crate::devices::legacy::uart::Uart;
use crate::devices::legacy::vm_clock::VmClock;
use crate::devices::pv::balloon::PvBalloon;
use crate::devices::pv::clock::PvClock;
use crate::devices::pv::RegionOwner;
use crate::exit::ledger::{ExitKind, LedgerSnapshot};
use crate::io::disk::SharedDisk;
use crate::runtime::sync::lock;
use crate::vstate::memory::GuestRam;
use crate::vstate::vcpu::Vcpu;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "vm.state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "vm.mem";

/// Why a VM could not be captured.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// A KVM ioctl failed.
    #[error("snapshot: KVM {what} failed: {source}")]
    Kvm {
        /// Which.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// The VM uses something a snapshot cannot hold yet.
    #[error("snapshot: not supported for this VM: {0}")]
    Unsupported(String),
    /// The state could not be encoded.
    #[error(transparent)]
    State(#[from] StateFileError),
    /// The memory file could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// The directory or state file could not be written.
    #[error("snapshot: {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> CaptureError {
    move |source| CaptureError::Kvm { what, source }
}

/// KVM's list of MSRs to save (`KVM_GET_MSR_INDEX_LIST`): TSC, kvmclock's, the syscall and
/// APIC-base MSRs among them.
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, CaptureError> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

/// Reads the MSRs of `indices` that this vCPU has: `KVM_GET_MSRS` stops at the first MSR it
/// cannot read, which is skipped, and the read goes on from the next.
fn read_msrs(vcpu: &Vcpu, indices: &[u32]) -> Result<Vec<(u32, u64)>, CaptureError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = rest.get(..rest.len().min(256)).unwrap_or(rest);
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| CaptureError::Unsupported("too many MSRs".into()))?;
        let n = vcpu
            .fd()
            .get_msrs(&mut msrs)
            .map_err(kvm_err("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice().iter().take(n).map(|e| (e.index, e.data)));
        // `n` read; the one at `n` (if any) failed and is skipped.
        let skip = if n < chunk.len() { n + 1 } else { n };
        rest = rest.get(skip..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The KVM state of `vcpu`, which must be out of `KVM_RUN` with no I/O pending (paused by
/// [`crate::vm::control`]). `msrs` is [`msr_list`]. Called outside the vCPU thread (its
/// seccomp filter allows none of the `KVM_GET_*` state ioctls but `KVM_GET_REGS`).
pub fn capture_vcpu(vcpu: &Vcpu, msrs: &[u32]) -> Result<VcpuKvmState, CaptureError> {
    let fd = vcpu.fd();
    Ok(VcpuKvmState {
        index: vcpu.index(),
        regs: to_blob(&fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?),
        sregs: to_blob(&fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?),
        xsave: to_blob(&fd.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?),
        xcrs: to_blob(&fd.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?),
        // No in-kernel LAPIC without the irqchip: KVM refuses the call.
        lapic: fd.get_lapic().ok().map(|l| to_blob(&l)),
        mp_state: fd
            .get_mp_state()
            .map_err(kvm_err("KVM_GET_MP_STATE"))?
            .mp_state,
        events: to_blob(
            &fd.get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
        ),
        msrs: read_msrs(vcpu, msrs)?,
    })
}

/// The VM-wide KVM state: the irqchip (if `irqchip`), the in-kernel PIT (if KVM has one:
/// pvkit emulates the PIT itself, so normally none) and kvmclock's base.
pub fn capture_vm(fd: &VmFd, irqchip: bool) -> Result<VmKvmState, CaptureError> {
    let chip = |id| -> Result<_, CaptureError> {
        let mut c = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        fd.get_irqchip(&mut c).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        Ok(to_blob(&c))
    };
    let irqchip = match irqchip {
        true => Some(IrqchipState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        }),
        false => None,
    };
    Ok(VmKvmState {
        irqchip,
        pit2: fd.get_pit2().ok().map(|p| to_blob(&p)),
        clock: to_blob(&fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?),
    })
}

/// Handles to every device model whose state a snapshot holds (filled by the builder).
#[derive(Clone)]
pub struct DeviceHandles {
    /// The COM1 UART.
    pub uart: Arc<Mutex<Uart>>,
    /// The emulated PIT.
    pub pit: Arc<Mutex<Pit>>,
    /// The ATA disk model, if the VM has a disk.
    pub ata: Option<Arc<Mutex<Ata<SharedDisk>>>>,
    /// The disk.
    pub disk: Option<SharedDisk>,
    /// The VM clock.
    pub vm_clock: VmClock,
    /// The PV clock, if any.
    pub pv_clock: Option<Arc<PvClock>>,
    /// The balloon, if any.
    pub balloon: Option<Arc<PvBalloon>>,
    /// The free-page hints, if any (not saved: a live migration reads them).
    pub free_page_hint: Option<Arc<crate::devices::pv::free_page_hint::PvFreePageHint>>,
    /// The `VcpuUp` start slots (VMs with more than one vCPU).
    pub vcpu_up: Option<Arc<crate::devices::pv::vcpu_up::VcpuUp>>,
    /// The NIC as a snapshot keeps it (a VM whose NIC cannot be saved is refused before
    /// a capture: [`crate::vm::control::VmInfo::net_refusal`]).
    pub net: Option<super::state::NicState>,
    /// The NE2000, if the VM has one: its model state goes into [`Self::net`]'s.
    pub ne2000: Option<crate::devices::legacy::ne2000::Ne2000Handle>,
}

impl std::fmt::Debug for DeviceHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHandles").finish_non_exhaustive()
    }
}

impl DeviceHandles {
    /// Every model's state; the VM clock last (the time of the snapshot).
    pub fn capture(&self) -> DeviceStates {
        let uart = lock(&self.uart).state();
        let pit = lock(&self.pit).state();
        let ata = self.ata.as_ref().map(|a| lock(a).state());
        let clock_pages = self
            .pv_clock
            .as_ref()
            .map(|c| {
                c.page_states()
                    .into_iter()
                    .map(|(owner, page)| ClockPageState {
                        vcpu: match owner {
                            RegionOwner::Vm => None,
                            RegionOwner::Vcpu(n) => Some(n),
                        },
                        page,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ballooned = self
            .balloon
            .as_ref()
            .map(|b| b.ballooned_ranges())
            .unwrap_or_default();
        let balloon_target = self.balloon.as_ref().map(|b| {
            let t = b.target().target;
            super::state::BalloonTargetState {
                pages: t.pages,
                generation: t.generation,
            }
        });
        DeviceStates {
            uart,
            balloon_target,
            pit,
            ata,
            pv_block_sectors: self.disk.as_ref().map(SharedDisk::sectors),
            clock_pages,
            ballooned,
            // Filled by the caller, which holds the rings still ([`crate::devices::pv::rings::Rings::frozen`]).
            rings: Vec::new(),
            net: self.net.as_ref().map(|n| super::state::NicState {
                ne2000: self.ne2000.as_ref().map(|h| h.state()),
                ..n.clone()
            }),
            vcpu_starts: self.vcpu_up.as_ref().map(|u| u.save()).unwrap_or_default(),
            vm_clock: self.vm_clock.state(),
        }
    }
}

/// The ledger's counts in the state file's form. MMIO exits in named regions cannot be
/// saved (this VMM has none: every MMIO exit is `unmapped`).
pub fn save_ledger(ledger: &LedgerSnapshot) -> Result<Vec<(SavedExitKind, u64)>, CaptureError> {
    ledger
        .counts
        .iter()
        .map(|(kind, n)| {
            let k = match *kind {
                ExitKind::PortRead(p) => SavedExitKind::PortRead(p),
                ExitKind::PortWrite(p) => SavedExitKind::PortWrite(p),
                ExitKind::Hypercall(h) => SavedExitKind::Hypercall(h as u32),
                ExitKind::UnknownHypercall => SavedExitKind::UnknownHypercall,
                ExitKind::MmioRead("unmapped") => SavedExitKind::MmioReadUnmapped,
                ExitKind::MmioWrite("unmapped") => SavedExitKind::MmioWriteUnmapped,
                ExitKind::MmioRead(r) | ExitKind::MmioWrite(r) => {
                    return Err(CaptureError::Unsupported(format!(
                        "MMIO exits counted in region {r}"
                    )))
                }
                ExitKind::Hlt => SavedExitKind::Hlt,
                ExitKind::Shutdown => SavedExitKind::Shutdown,
                ExitKind::InternalError => SavedExitKind::InternalError,
                ExitKind::Interrupted => SavedExitKind::Interrupted,
                ExitKind::Other => SavedExitKind::Other,
            };
            Ok((k, *n))
        })
        .collect()
}

/// What [`write_snapshot`] wrote and how long it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// The memory file.
    pub memory: MemoryFileStats,
    /// The state file's size in bytes.
    pub state_bytes: u64,
}

/// Writes `state` and guest RAM into `dir` (created if missing; existing snapshot files in
/// it are replaced): [`MEMORY_FILE`] first, then [`STATE_FILE`] through a temporary file
/// renamed into place, so a directory with a state file has its memory file complete.
/// `ballooned(gpa)` says which pages to leave as holes. The vCPUs must be paused.
pub fn write_snapshot(
    dir: &Path,
    state: &VmState,
    mem: &GuestRam,
    ballooned: &dyn Fn(u64) -> bool,
) -> Result<SnapshotStats, CaptureError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CaptureError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let state_path = dir.join(STATE_FILE);
    // A stale state must never pair with a new memory file.
    match std::fs::remove_file(&state_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&state_path)(e)),
        _ => {}
    }
    let memory = write_memory_file(&dir.join(MEMORY_FILE), mem, ballooned)?;
    let bytes = encode(state)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io(&state_path))?;
    Ok(SnapshotStats {
        memory,
        state_bytes: bytes.len() as u64,
    })
}
