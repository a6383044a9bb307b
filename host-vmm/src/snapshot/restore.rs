//! Restoring a snapshot's KVM state into a freshly built VM: [`read_state`] (the checked
//! state file), [`restore_vm`] (irqchip, in-kernel PIT, kvmclock base), [`restore_vcpu`]
//! (registers, FPU/XSAVE, MSRs, LAPIC, events, MP state) and [`load_ledger`]. The device
//! models are rebuilt by the builder from [`super::state::DeviceStates`]; guest RAM is the
//! memory file mapped copy-on-write ([`super::memory_file::map_memory_file`]).

use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VmFd;
use pvkit_abi::call::Hypercall;
use thiserror::Error;

use super::blob::{from_blob, KvmPod};
use super::capture::STATE_FILE;
use super::state::{
    decode, KvmBlob, KvmSizes, SavedExitKind, StateFileError, VcpuKvmState, VmKvmState, VmState,
};
use crate::exit::ledger::{ExitKind, LedgerSnapshot};
use crate::vstate::vcpu::Vcpu;

/// Why a snapshot could not be restored.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The state file could not be read.
    #[error("cannot read the snapshot state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file was refused.
    #[error("{path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        source: StateFileError,
    },
    /// A KVM ioctl refused the saved state.
    #[error("restore: KVM {what} failed: {source}")]
    Kvm {
        /// Which.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// The saved state does not fit this VM.
    #[error("restore: {0}")]
    Mismatch(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> RestoreError {
    move |source| RestoreError::Kvm { what, source }
}

/// The state file of the snapshot in `dir`, read (at most
/// [`super::state::MAX_PAYLOAD`] plus the header) and checked.
pub fn read_state(dir: &Path) -> Result<VmState, RestoreError> {
    use std::io::Read;
    let path = dir.join(STATE_FILE);
    let read = |source| RestoreError::Read {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(read)?;
    let limit = super::state::MAX_PAYLOAD + super::state::HEADER_LEN as u64 + 1;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).map_err(read)?;
    decode(&bytes, &KvmSizes::host()).map_err(|source| RestoreError::State {
        path: path.clone(),
        source,
    })
}

fn blob<T: KvmPod>(b: &KvmBlob, what: &str) -> Result<T, RestoreError> {
    // Sizes were checked by `VmState::validate`; this is the typed read.
    from_blob(b).ok_or_else(|| RestoreError::Mismatch(format!("{what}: wrong size")))
}

/// Sets the VM-wide KVM state: kvmclock's base, the in-kernel PIT and the irqchip. The VM
/// must have an irqchip exactly when the state has one.
pub fn restore_vm(fd: &VmFd, state: &VmKvmState) -> Result<(), RestoreError> {
    if let Some(p) = &state.pit2 {
        fd.set_pit2(&blob(p, "PIT2")?)
            .map_err(kvm_err("KVM_SET_PIT2"))?;
    }
    let mut clock: kvm_bindings::kvm_clock_data = blob(&state.clock, "clock")?;
    // Only `clock` (and `flags` KVM accepts on a set) matter; the realtime/host_tsc pair
    // would ask KVM to advance the clock by the time the VM was not running.
    clock.flags = 0;
    fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    if let Some(c) = &state.irqchip {
        for (what, b) in [
            ("PIC master", &c.pic_master),
            ("PIC slave", &c.pic_slave),
            ("IOAPIC", &c.ioapic),
        ] {
            fd.set_irqchip(&blob(b, what)?)
                .map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
    }
    Ok(())
}

/// Sets a vCPU's KVM state (its CPUID table must already be the saved VM's): MP state,
/// registers, special registers, XSAVE, XCRs, LAPIC, MSRs, then pending events. Before the
/// vCPU first runs.
pub fn restore_vcpu(vcpu: &mut Vcpu, state: &VcpuKvmState) -> Result<(), RestoreError> {
    if vcpu.index() != state.index {
        return Err(RestoreError::Mismatch(format!(
            "vCPU {} given the state of vCPU {}",
            vcpu.index(),
            state.index
        )));
    }
    let fd = vcpu.fd();
    fd.set_mp_state(kvm_bindings::kvm_mp_state {
        mp_state: state.mp_state,
    })
    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    let regs: kvm_bindings::kvm_regs = blob(&state.regs, "regs")?;
    fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    fd.set_sregs(&blob(&state.sregs, "sregs")?)
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    let xsave: kvm_bindings::kvm_xsave = blob(&state.xsave, "xsave")?;
    // SAFETY: `kvm_xsave` of exactly the size KVM_GET_XSAVE fills on this host (checked
    // against this build's structure); KVM validates the contents.
    unsafe { fd.set_xsave(&xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&blob(&state.xcrs, "xcrs")?)
        .map_err(kvm_err("KVM_SET_XCRS"))?;
    if let Some(l) = &state.lapic {
        fd.set_lapic(&blob(l, "lapic")?)
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
    }
    set_msrs(fd, &state.msrs)?;
    fd.set_vcpu_events(&blob(&state.events, "events")?)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    vcpu.sync_restored_regs(regs);
    Ok(())
}

/// Sets the saved MSRs. `KVM_SET_MSRS` stops at the first MSR it refuses: KVM refuses a
/// write to an MSR the guest's CPUID does not offer (e.g. `MSR_KVM_POLL_CONTROL` without
/// its PV feature bit) even though it reads it. Such an MSR is skipped only if the new vCPU
/// already holds the saved value; otherwise the restore fails.
fn set_msrs(fd: &kvm_ioctls::VcpuFd, saved: &[(u32, u64)]) -> Result<(), RestoreError> {
    let entry = |&(index, data): &(u32, u64)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let mut rest = saved;
    while !rest.is_empty() {
        let chunk = rest.get(..rest.len().min(256)).unwrap_or(rest);
        let entries: Vec<kvm_msr_entry> = chunk.iter().map(entry).collect();
        let msrs = Msrs::from_entries(&entries)
            .map_err(|_| RestoreError::Mismatch("too many MSRs".into()))?;
        let n = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            let &(index, want) = chunk.get(n).unwrap_or(&(0, 0));
            let mut one = Msrs::from_entries(&[entry(&(index, 0))])
                .map_err(|_| RestoreError::Mismatch("MSR buffer".into()))?;
            let has = match fd.get_msrs(&mut one) {
                Ok(1) => one.as_slice().first().map(|e| e.data),
                _ => None,
            };
            if has != Some(want) {
                return Err(RestoreError::Mismatch(format!(
                    "KVM refused MSR {index:#x} = {want:#x} (the new vCPU has {has:x?})"
                )));
            }
        }
        let done = if n < chunk.len() { n + 1 } else { n };
        rest = rest.get(done..).unwrap_or(&[]);
    }
    Ok(())
}

/// The saved ledger as counts to continue from.
pub fn load_ledger(saved: &[(SavedExitKind, u64)]) -> Result<LedgerSnapshot, RestoreError> {
    let mut l = LedgerSnapshot::default();
    for (kind, n) in saved {
        let k = match *kind {
            SavedExitKind::PortRead(p) => ExitKind::PortRead(p),
            SavedExitKind::PortWrite(p) => ExitKind::PortWrite(p),
            SavedExitKind::Hypercall(nr) => ExitKind::Hypercall(
                Hypercall::try_from(nr)
                    .map_err(|_| RestoreError::Mismatch(format!("unknown hypercall {nr:#x}")))?,
            ),
            SavedExitKind::UnknownHypercall => ExitKind::UnknownHypercall,
            SavedExitKind::MmioReadUnmapped => ExitKind::MmioRead("unmapped"),
            SavedExitKind::MmioWriteUnmapped => ExitKind::MmioWrite("unmapped"),
            SavedExitKind::Hlt => ExitKind::Hlt,
            SavedExitKind::Shutdown => ExitKind::Shutdown,
            SavedExitKind::InternalError => ExitKind::InternalError,
            SavedExitKind::Interrupted => ExitKind::Interrupted,
            SavedExitKind::Other => ExitKind::Other,
        };
        let c = l.counts.entry(k).or_insert(0);
        *c = c.saturating_add(*n);
        l.total = l.total.saturating_add(*n);
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::capture::save_ledger;

    #[test]
    fn ledger_round_trip() {
        let mut l = LedgerSnapshot::default();
        l.counts
            .insert(ExitKind::Hypercall(Hypercall::ConsoleWrite), 5);
        l.counts.insert(ExitKind::PortWrite(0x3f8), 2);
        l.counts.insert(ExitKind::MmioRead("unmapped"), 1);
        l.total = 8;
        let back = load_ledger(&save_ledger(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        assert!(load_ledger(&[(SavedExitKind::Hypercall(0xdead), 1)]).is_err());
    }

    #[test]
    fn missing_state_file_is_a_clear_error() {
        let e = read_state(Path::new("/nonexistent/pvkit-snap")).unwrap_err();
        assert!(e.to_string().contains("vm.state"), "{e}");
    }
}
