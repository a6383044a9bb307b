//! The x86_64 boot area of [`pvkit_abi::boot`]: the boot GDT and its selectors, the 4 GiB
//! identity map of 2 MiB pages, the memory map and the boot info with the command line.
//! Written into guest RAM before the first vCPU runs; the vCPU's boot registers
//! ([`super::regs`]) point at it.

use std::ops::Range;

use pvkit_abi::boot::{
    BootInfo, MemoryKind, MemoryRegion, BOOT_INFO_ADDR, BOOT_INFO_SIZE, BOOT_MAGIC, CMDLINE_ADDR,
    CMDLINE_MAX, GDT_ADDR, IDENTITY_MAP_SIZE, KERNEL_MIN_ADDR, MAX_MEMORY_REGIONS, MEMORY_MAP_ADDR,
    PAGE_TABLES,
};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM as the VMM holds it (the same type as `vstate::memory::GuestRam`; named here
/// so that `arch` does not depend on `vstate`).
type GuestRam = GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

fn ram_size(mem: &GuestRam) -> u64 {
    mem.iter().map(vm_memory::GuestMemoryRegion::len).sum()
}

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

/// Errors writing the boot area.
#[derive(Debug, Error)]
pub enum LayoutError {
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
pub fn memory_map(mem_size: u64, kernel: &Range<u64>) -> Result<Vec<MemoryRegion>, LayoutError> {
    let bad = || LayoutError::BadImage {
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
    b.extend_from_slice(&info.magic.to_le_bytes());
    b.extend_from_slice(&info.size.to_le_bytes());
    b.extend_from_slice(&info.reserved0.to_le_bytes());
    for v in [
        info.abi_version,
        info.features,
        info.mem_size,
        info.cmdline_addr,
        info.cmdline_len,
        info.tsc_khz,
        info.memory_map_addr,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&info.memory_map_len.to_le_bytes());
    b.extend_from_slice(&info.reserved1.to_le_bytes());
    b
}

/// Serializes memory-map entries in their wire layout (24 bytes each).
pub fn memory_map_bytes(map: &[MemoryRegion]) -> Vec<u8> {
    let mut b = Vec::with_capacity(std::mem::size_of_val(map));
    for r in map {
        b.extend_from_slice(&r.start.to_le_bytes());
        b.extend_from_slice(&r.len.to_le_bytes());
        b.extend_from_slice(&r.kind.to_le_bytes());
        b.extend_from_slice(&r.reserved.to_le_bytes());
    }
    b
}

/// Writes the boot area: GDT, identity page tables, command line and boot info.
pub fn write_boot_area(mem: &GuestRam, params: &BootParams<'_>) -> Result<(), LayoutError> {
    let cmdline = params.cmdline;
    if cmdline.contains(&0) {
        return Err(LayoutError::CmdlineNul);
    }
    if cmdline.len() as u64 >= CMDLINE_MAX {
        return Err(LayoutError::CmdlineTooLong { len: cmdline.len() });
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

    // Memory map, then the boot info that points at it.
    let map = memory_map(mem_size, &params.kernel)?;
    let map = map.get(..MAX_MEMORY_REGIONS).unwrap_or(&map);
    mem.write_slice(&memory_map_bytes(map), GuestAddress(MEMORY_MAP_ADDR))?;
    let info = BootInfo {
        magic: BOOT_MAGIC,
        size: BOOT_INFO_SIZE,
        reserved0: 0,
        abi_version: pvkit_abi::ABI_VERSION.to_u64(),
        features: params.features,
        mem_size,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len: cmdline.len() as u64,
        tsc_khz: params.tsc_khz,
        memory_map_addr: MEMORY_MAP_ADDR,
        memory_map_len: map.len() as u32,
        reserved1: 0,
    };
    mem.write_slice(&boot_info_bytes(&info), GuestAddress(BOOT_INFO_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(mib: u64) -> GuestRam {
        let bytes = usize::try_from(mib << 20).unwrap();
        GuestRam::from_ranges(&[(GuestAddress(0), bytes)]).unwrap()
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
            size: BOOT_INFO_SIZE,
            reserved0: 0,
            abi_version: 0,
            features: 0,
            mem_size: 0,
            cmdline_addr: 0,
            cmdline_len: 0,
            tsc_khz: 0,
            memory_map_addr: MEMORY_MAP_ADDR,
            memory_map_len: 0,
            reserved1: 0,
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
        // Offsets as docs/ABI.md states them.
        let size: u32 = m.read_obj(GuestAddress(BOOT_INFO_ADDR + 8)).unwrap();
        assert_eq!(size, 80);
        let mem_size: u64 = m.read_obj(GuestAddress(BOOT_INFO_ADDR + 32)).unwrap();
        assert_eq!(mem_size, 8 << 20);
        let map_addr: u64 = m.read_obj(GuestAddress(BOOT_INFO_ADDR + 64)).unwrap();
        assert_eq!(map_addr, 0x4000);
        let count: u32 = m.read_obj(GuestAddress(BOOT_INFO_ADDR + 72)).unwrap();
        assert_eq!(count, 3);
        // The third entry: the usable RAM above the kernel image.
        let start: u64 = m.read_obj(GuestAddress(0x4000 + 2 * 24)).unwrap();
        let len: u64 = m.read_obj(GuestAddress(0x4000 + 2 * 24 + 8)).unwrap();
        let kind: u32 = m.read_obj(GuestAddress(0x4000 + 2 * 24 + 16)).unwrap();
        assert_eq!((start, len, kind), (0x10_1000, (8 << 20) - 0x10_1000, 1));
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
            Err(LayoutError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            write_boot_area(&m, &p(b"a\0b")),
            Err(LayoutError::CmdlineNul)
        ));
        assert!(write_boot_area(&m, &p(&long[1..])).is_ok());
    }
}
