//! The VM fd: creation, guest RAM registered as KVM memory slots, the TSS range.

use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::GuestRam;

/// Where KVM on Intel may put the three pages of its real-mode TSS (`KVM_SET_TSS_ADDR`):
/// below 4 GiB and far above any RAM a pvkit guest gets (at most 3 GiB,
/// [`super::memory::MAX_MEM_MIB`]).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Errors creating the VM.
#[derive(Debug, Error)]
pub enum VmFdError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// A guest RAM region has no host mapping to give KVM.
    #[error("guest memory region {slot} has no host mapping")]
    NoHostMapping {
        /// The memory slot.
        slot: u32,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> VmFdError {
    move |source| VmFdError::Kvm { what, source }
}

/// Creates the VM with `mem` as its RAM (one memory slot per region).
pub fn create_vm(kvm: &Kvm, mem: &GuestRam) -> Result<VmFd, VmFdError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| VmFdError::NoHostMapping { slot })?;
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM: the
        // caller keeps `mem` (in the `Machine`) alive for as long as the VM runs, and the
        // range [host, host + len) is exactly that mapping.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    Ok(vm)
}
