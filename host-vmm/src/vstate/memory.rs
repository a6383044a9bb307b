//! Guest RAM: one `vm-memory` region starting at guest-physical 0.
//!
//! Every access the VMM makes goes through vm-memory's checked API; [`guest_range`] adds
//! the overflow-checked range test used for every guest-supplied address. What is written
//! into RAM before boot (GDT, page tables, boot info) is [`crate::arch::x86_64::layout`].

use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM as the VMM holds it: every write the VMM makes through vm-memory (device
/// models, rings, DMA, the loader) sets a bit in the region's [`AtomicBitmap`] (one bit per
/// 4 KiB page), so that live migration ([`super::dirty`]) also resends pages the host wrote;
/// KVM's dirty log covers the guest's own writes.
pub type GuestRam = GuestMemoryMmap<AtomicBitmap>;

/// Default RAM size in MiB.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Smallest RAM size in MiB (room for the boot area and a small kernel).
pub const MIN_MEM_MIB: u64 = 4;
/// Largest RAM size in MiB: RAM must stay below the 4 GiB identity map and the 32-bit
/// device hole.
pub const MAX_MEM_MIB: u64 = 3 * 1024;

/// Errors creating guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The requested size is outside the supported range.
    #[error("guest memory must be between {MIN_MEM_MIB} and {MAX_MEM_MIB} MiB, not {0} MiB")]
    BadSize(u64),
    /// `madvise` refused to mark guest RAM.
    #[error("cannot mark guest memory MADV_MERGEABLE (needs a kernel with KSM): {0}")]
    Mergeable(std::io::Error),
    /// The host could not allocate the guest's RAM.
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate {
        /// Requested size.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Allocates `mib` MiB of guest RAM at guest-physical 0.
pub fn create_ram(mib: u64) -> Result<GuestRam, MemoryError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
        return Err(MemoryError::BadSize(mib));
    }
    // Cannot overflow: mib ≤ MAX_MEM_MIB.
    let bytes = usize::try_from(mib << 20).map_err(|_| MemoryError::BadSize(mib))?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)])
        .map_err(|source| MemoryError::Allocate { mib, source })
}

/// Guest RAM straight from [`create_fresh_ram`]: anonymous memory that nothing has written
/// yet, so every byte is known to be zero. Only [`crate::loader::elf::ElfImage::load_fresh`]
/// consumes it, and skips zero-filling what is already zero (for the built-in guest, a
/// 3 MiB BSS: ~800 page faults and ~2 ms of boot time saved).
#[derive(Debug)]
pub struct FreshRam(GuestRam);

impl FreshRam {
    /// Gives up the "never written" knowledge.
    pub fn into_ram(self) -> GuestRam {
        self.0
    }

    /// The RAM, read-only (reading keeps it fresh).
    pub fn ram(&self) -> &GuestRam {
        &self.0
    }
}

/// [`create_ram`], as [`FreshRam`]: a private anonymous mapping, all zeros until written.
pub fn create_fresh_ram(mib: u64) -> Result<FreshRam, MemoryError> {
    create_ram(mib).map(FreshRam)
}

/// Marks every region of `mem` `MADV_MERGEABLE`, so the host's KSM (when it runs) may merge
/// its identical pages copy-on-write. Done once at setup, before any thread is confined.
pub fn mark_mergeable(mem: &GuestRam) -> Result<(), MemoryError> {
    for r in mem.iter() {
        let len = usize::try_from(vm_memory::GuestMemoryRegion::len(r))
            .map_err(|_| MemoryError::BadSize(0))?;
        let ptr =
            vm_memory::GuestMemoryRegion::get_host_address(r, vm_memory::MemoryRegionAddress(0))
                .map_err(|_| MemoryError::BadSize(0))?;
        // SAFETY: `ptr..ptr + len` is exactly one mapping vm-memory made and owns for the
        // life of `mem`; MADV_MERGEABLE changes no contents, only lets KSM share pages
        // copy-on-write. The result is checked.
        let rc = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_MERGEABLE) };
        if rc != 0 {
            return Err(MemoryError::Mergeable(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Total RAM size in bytes.
pub fn ram_size(mem: &GuestRam) -> u64 {
    mem.iter().map(vm_memory::GuestMemoryRegion::len).sum()
}

/// Checks that `[addr, addr + len)` lies entirely inside guest RAM, with overflow-checked
/// arithmetic. Returns the start address. The rule is [`pvkit_pv::guest_range::GuestRange`]'s
/// (one rule for every path): a zero-length range must start in RAM or one past its end.
pub fn guest_range<M: GuestMemoryBackend>(mem: &M, addr: u64, len: u64) -> Option<GuestAddress> {
    pvkit_pv::guest_range::GuestRange::new(mem, addr, len)
        .ok()
        .map(|r| r.guest_addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(mib: u64) -> GuestRam {
        create_ram(mib).unwrap()
    }

    #[test]
    fn size_limits() {
        assert!(matches!(create_ram(0), Err(MemoryError::BadSize(0))));
        assert!(matches!(create_ram(3073), Err(MemoryError::BadSize(3073))));
        assert_eq!(ram_size(&ram(4)), 4 << 20);
    }

    #[test]
    fn guest_range_checks() {
        let m = ram(4);
        let size = 4u64 << 20;
        assert!(guest_range(&m, 0, size).is_some());
        assert!(guest_range(&m, size - 1, 1).is_some());
        assert!(
            guest_range(&m, size - 1, 2).is_none(),
            "crosses the end of RAM"
        );
        assert!(guest_range(&m, size, 1).is_none(), "beyond RAM");
        assert!(guest_range(&m, u64::MAX, 2).is_none(), "wraps around 2^64");
        assert!(guest_range(&m, 1, u64::MAX).is_none(), "wraps around 2^64");
        assert!(guest_range(&m, 0x1000, 0).is_some());
        assert!(guest_range(&m, size, 0).is_some());
        assert!(guest_range(&m, size + 1, 0).is_none());
        assert!(guest_range(&m, u64::MAX, 0).is_none());
    }
}
