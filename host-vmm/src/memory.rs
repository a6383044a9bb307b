//! Guest RAM and the boot area.
//!
//! RAM is one `vm-memory` region starting at guest-physical 0. Every access the VMM makes
//! goes through vm-memory's checked API; [`guest_range`] adds the overflow-checked range
//! test used for every guest-supplied address. The boot area (GDT, page tables, boot info,
//! command line, stack) follows [`pvkit_abi::boot`].

use std::ops::Range;

use pvkit_abi::boot::{
    BootInfo, MemoryKind, MemoryRegion, BOOT_INFO_ADDR, BOOT_MAGIC, CMDLINE_ADDR, CMDLINE_MAX,
    GDT_ADDR, IDENTITY_MAP_SIZE, KERNEL_MIN_ADDR, MAX_MEMORY_REGIONS, PAGE_TABLES,
};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM as the VMM holds it.
pub type GuestRam = GuestMemoryMmap<()>;

/// Default RAM size in MiB.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Smallest RAM size in MiB (room for the boot area and a small kernel).
pub const MIN_MEM_MIB: u64 = 4;
/// Largest RAM size in MiB: RAM must stay below the 4 GiB identity map and the 32-bit
/// device hole.
pub const MAX_MEM_MIB: u64 = 3 * 1024;

/// Selector of the 64-bit code segment in the boot GDT.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment in the boot GDT.
pub const DATA_SELECTOR: u16 = 0x10;
/// The boot GDT: null, 64-bit code (DPL 0, present, L), flat data (DPL 0, present, RW).
pub const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// Page-table entry bits used by the boot tables.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
const PAGE_SIZE: u64 = 0x1000;
const HUGE_PAGE: u64 = 2 << 20;

/// Errors creating or preparing guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The requested size is outside the supported range.
    #[error("guest memory must be between {MIN_MEM_MIB} and {MAX_MEM_MIB} MiB, not {0} MiB")]
    BadSize(u64),
    /// The host could not allocate the guest's RAM.
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate {
        /// Requested size.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
    /// The command line does not fit its slot in the boot area.
    #[error("the kernel command line is {len} bytes; at most {} fit", CMDLINE_MAX - 1)]
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The kernel image range is not inside RAM above the boot area.
    #[error("the kernel image {start:#x}..{end:#x} is not inside guest RAM above the boot area")]
    BadImage {
        /// Start of the image.
        start: u64,
        /// End of the image.
        end: u64,
    },
    /// A write to the boot area failed (RAM too small).
    #[error("cannot write the boot area: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
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
/// yet, so every byte is known to be zero. Only [`crate::elf::ElfImage::load_fresh`]
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

/// Total RAM size in bytes.
pub fn ram_size(mem: &GuestRam) -> u64 {
    mem.iter().map(vm_memory::GuestMemoryRegion::len).sum()
}

/// Checks that `[addr, addr + len)` lies entirely inside guest RAM, with overflow-checked
/// arithmetic. Returns the start address. A zero-length range is valid anywhere in
/// `[0, ram_size]`.
pub fn guest_range<M: GuestMemoryBackend>(mem: &M, addr: u64, len: u64) -> Option<GuestAddress> {
    let end = addr.checked_add(len)?;
    let len = usize::try_from(len).ok()?;
    if len == 0 {
        // vm-memory treats empty ranges as valid anywhere; keep them at or below RAM's end.
        let ok = end == 0 || GuestMemoryBackend::check_range(mem, GuestAddress(end - 1), 1);
        return ok.then_some(GuestAddress(addr));
    }
    GuestMemoryBackend::check_range(mem, GuestAddress(addr), len).then_some(GuestAddress(addr))
}

/// What the boot area tells the guest.
#[derive(Clone, Debug)]
pub struct BootParams<'a> {
    /// The kernel command line (no NUL).
    pub cmdline: &'a [u8],
    /// The span of the loaded kernel image (reserved in the memory map).
    pub kernel: Range<u64>,
    /// The host's feature bits.
    pub features: u64,
    /// TSC frequency in kHz (0 if unknown).
    pub tsc_khz: u64,
}

fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(align_down(v.checked_add(a - 1)?, a))
}

/// The memory map for a RAM size and kernel span: the boot area and the image reserved,
/// the rest usable; sorted, non-overlapping, empty ranges left out.
pub fn memory_map(mem_size: u64, kernel: &Range<u64>) -> Result<Vec<MemoryRegion>, MemoryError> {
    let bad = || MemoryError::BadImage {
        start: kernel.start,
        end: kernel.end,
    };
    let start = align_down(kernel.start, PAGE_SIZE);
    let end = align_up(kernel.end, PAGE_SIZE).ok_or_else(bad)?;
    if start < KERNEL_MIN_ADDR || start >= end || end > mem_size {
        return Err(bad());
    }
    let region = |start: u64, end: u64, kind: MemoryKind| MemoryRegion {
        start,
        len: end - start,
        kind: kind as u32,
        reserved: 0,
    };
    let map: Vec<_> = [
        region(0, KERNEL_MIN_ADDR, MemoryKind::Reserved),
        region(KERNEL_MIN_ADDR, start, MemoryKind::Usable),
        region(start, end, MemoryKind::Reserved),
        region(end, mem_size, MemoryKind::Usable),
    ]
    .into_iter()
    .filter(|r| r.len > 0)
    .collect();
    debug_assert!(map.len() <= MAX_MEMORY_REGIONS);
    Ok(map)
}

/// Serializes a [`BootInfo`] in its wire layout (little-endian, offsets as asserted in
/// the ABI crate).
pub fn boot_info_bytes(info: &BootInfo) -> Vec<u8> {
    let mut b = Vec::with_capacity(std::mem::size_of::<BootInfo>());
    for v in [
        info.magic,
        info.abi_version,
        info.features,
        info.mem_size,
        info.cmdline_addr,
        info.cmdline_len,
        info.tsc_khz,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&info.region_count.to_le_bytes());
    b.extend_from_slice(&info.reserved.to_le_bytes());
    for r in &info.regions {
        b.extend_from_slice(&r.start.to_le_bytes());
        b.extend_from_slice(&r.len.to_le_bytes());
        b.extend_from_slice(&r.kind.to_le_bytes());
        b.extend_from_slice(&r.reserved.to_le_bytes());
    }
    b
}

/// Writes the boot area: GDT, identity page tables, command line and boot info.
pub fn write_boot_area(mem: &GuestRam, params: &BootParams<'_>) -> Result<(), MemoryError> {
    let cmdline = params.cmdline;
    if cmdline.contains(&0) {
        return Err(MemoryError::CmdlineNul);
    }
    if cmdline.len() as u64 >= CMDLINE_MAX {
        return Err(MemoryError::CmdlineTooLong { len: cmdline.len() });
    }
    let mem_size = ram_size(mem);

    // GDT.
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(GDT_ADDR))?;

    // Page tables: PML4, one PDPT, then one page directory per GiB, 2 MiB pages.
    let flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    let pml4 = PAGE_TABLES;
    let pdpt = pml4 + PAGE_SIZE;
    let pd_base = pdpt + PAGE_SIZE;
    mem.write_obj(pdpt | flags, GuestAddress(pml4))?;
    let gibs = IDENTITY_MAP_SIZE >> 30;
    for g in 0..gibs {
        let pd = pd_base + g * PAGE_SIZE;
        mem.write_obj(pd | flags, GuestAddress(pdpt + g * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((g << 30) + i * HUGE_PAGE) | flags | PTE_HUGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }

    // Command line, NUL-terminated.
    let mut line = cmdline.to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_ADDR))?;

    // Boot info.
    let map = memory_map(mem_size, &params.kernel)?;
    let mut regions = [MemoryRegion::default(); MAX_MEMORY_REGIONS];
    for (slot, r) in regions.iter_mut().zip(&map) {
        *slot = *r;
    }
    let info = BootInfo {
        magic: BOOT_MAGIC,
        abi_version: pvkit_abi::ABI_VERSION.to_u64(),
        features: params.features,
        mem_size,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len: cmdline.len() as u64,
        tsc_khz: params.tsc_khz,
        region_count: map.len().min(MAX_MEMORY_REGIONS) as u32,
        reserved: 0,
        regions,
    };
    mem.write_slice(&boot_info_bytes(&info), GuestAddress(BOOT_INFO_ADDR))?;
    Ok(())
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

    #[test]
    fn memory_map_layout() {
        let map = memory_map(128 << 20, &(0x20_0000..0x20_3456)).unwrap();
        let usable = MemoryKind::Usable as u32;
        let reserved = MemoryKind::Reserved as u32;
        let got: Vec<_> = map.iter().map(|r| (r.start, r.len, r.kind)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0x10_0000, reserved),
                (0x10_0000, 0x10_0000, usable),
                (0x20_0000, 0x4000, reserved),
                (0x20_4000, (128 << 20) - 0x20_4000, usable),
            ]
        );
        let tight = memory_map(0x20_4000, &(0x10_0000..0x20_4000)).unwrap();
        assert_eq!(tight.len(), 2);
        assert!(memory_map(128 << 20, &(0x1000..0x2000)).is_err());
        assert!(memory_map(1 << 20, &(0x10_0000..0x20_0000)).is_err());
        assert!(memory_map(128 << 20, &(0x10_0000..u64::MAX)).is_err());
    }

    #[test]
    fn boot_info_wire_size() {
        let info = BootInfo {
            magic: BOOT_MAGIC,
            abi_version: 0,
            features: 0,
            mem_size: 0,
            cmdline_addr: 0,
            cmdline_len: 0,
            tsc_khz: 0,
            region_count: 0,
            reserved: 0,
            regions: [MemoryRegion::default(); MAX_MEMORY_REGIONS],
        };
        assert_eq!(
            boot_info_bytes(&info).len(),
            std::mem::size_of::<BootInfo>()
        );
    }

    #[test]
    fn boot_area_contents() {
        let m = ram(8);
        let params = BootParams {
            cmdline: b"console=pv exit=3",
            kernel: 0x10_0000..0x10_1000,
            features: 0x81,
            tsc_khz: 2_596_000,
        };
        write_boot_area(&m, &params).unwrap();
        let d: u64 = m.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(d, GDT[1]);
        let pml4e: u64 = m.read_obj(GuestAddress(PAGE_TABLES)).unwrap();
        assert_eq!(pml4e, (PAGE_TABLES + 0x1000) | 7);
        // The PD entry mapping 3 GiB + 2 MiB.
        let pde: u64 = m
            .read_obj(GuestAddress(PAGE_TABLES + 0x1000 * (2 + 3) + 8))
            .unwrap();
        assert_eq!(pde, ((3 << 30) + (2 << 20)) | 0x87);
        let mut line = [0u8; 18];
        m.read_slice(&mut line, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&line, b"console=pv exit=3\0");
        let magic: u64 = m.read_obj(GuestAddress(BOOT_INFO_ADDR)).unwrap();
        assert_eq!(magic, BOOT_MAGIC);
        let mem_size: u64 = m.read_obj(GuestAddress(BOOT_INFO_ADDR + 24)).unwrap();
        assert_eq!(mem_size, 8 << 20);
        let count: u32 = m.read_obj(GuestAddress(BOOT_INFO_ADDR + 56)).unwrap();
        assert_eq!(count, 3);
    }

    #[test]
    fn cmdline_limits() {
        let m = ram(4);
        let long = vec![b'a'; CMDLINE_MAX as usize];
        let p = |c| BootParams {
            cmdline: c,
            kernel: 0x10_0000..0x10_1000,
            features: 0,
            tsc_khz: 0,
        };
        assert!(matches!(
            write_boot_area(&m, &p(&long)),
            Err(MemoryError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            write_boot_area(&m, &p(b"a\0b")),
            Err(MemoryError::CmdlineNul)
        ));
        assert!(write_boot_area(&m, &p(&long[1..])).is_ok());
    }
}
