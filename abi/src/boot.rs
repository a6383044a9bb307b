//! The boot contract: the state in which the VMM starts a guest, and the boot-info structure.
//!
//! The VMM loads the guest ELF's `PT_LOAD` segments at their physical addresses (the part of
//! each segment beyond its file size, `p_memsz - p_filesz`, is zero-filled) and enters
//! the ELF entry point on the bootstrap vCPU with:
//!
//! - 64-bit long mode, paging on, CR0.PE|PG|WP, CR4.PAE, EFER.LME|LMA|NXE; no SSE state is
//!   promised (guests must be soft-float: the `x86_64-unknown-none` target is);
//! - page tables at [`PAGE_TABLES`] identity-mapping guest-physical `[0, IDENTITY_MAP_SIZE)`
//!   with 2 MiB pages, present + writable + user (a guest that wants tighter rules builds
//!   its own tables);
//! - a flat GDT at [`GDT_ADDR`]: selector `0x08` 64-bit code, `0x10` data; CS = `0x08`,
//!   DS/ES/SS/FS/GS = `0x10`;
//! - `RSP` = [`ENTRY_RSP`] = [`BOOT_STACK_TOP`] − 8, the alignment a function sees just after
//!   a `call` (so a Rust `extern "C"` entry point is correctly aligned); the stack grows down
//!   to [`BOOT_STACK_BOTTOM`];
//! - `RDI` = guest-physical address of a [`BootInfo`] (so a Rust entry point is
//!   `extern "C" fn _start(boot_info: &'static BootInfo) -> !`);
//! - `RFLAGS` = `0x2` (interrupts off); all other general registers zero.
//!
//! Guest kernels must link at or above [`KERNEL_MIN_ADDR`]; everything below it is the
//! VMM's boot area (listed in the memory map as reserved).

use crate::assert_layout;

/// The boot GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// The [`BootInfo`] structure.
pub const BOOT_INFO_ADDR: u64 = 0x2000;
/// The kernel command line (NUL-terminated, at most [`CMDLINE_MAX`] bytes with the NUL).
pub const CMDLINE_ADDR: u64 = 0x3000;
/// Room for the command line.
pub const CMDLINE_MAX: u64 = 0x1000;
/// The boot page tables (PML4, then one PDPT, then page directories).
pub const PAGE_TABLES: u64 = 0x9000;
/// Lowest address of the boot stack.
pub const BOOT_STACK_BOTTOM: u64 = 0x1_0000;
/// Top of the boot stack (16-byte aligned).
pub const BOOT_STACK_TOP: u64 = 0x8_0000;
/// Initial `RSP`: as just after a `call`, so `(RSP + 8) % 16 == 0` as the SysV ABI expects.
pub const ENTRY_RSP: u64 = BOOT_STACK_TOP - 8;
/// Guest kernels load at or above this address.
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;
/// The boot page tables identity-map this much (4 GiB).
pub const IDENTITY_MAP_SIZE: u64 = 0x1_0000_0000;

/// The memory map: an array of [`MemoryRegion`] ([`BootInfo::memory_map_addr`]).
pub const MEMORY_MAP_ADDR: u64 = 0x4000;
/// Room for the memory map in the boot area (bytes).
pub const MEMORY_MAP_MAX: u64 = 0x1000;

/// `BootInfo::magic`: `"PVKITBI2"` as a little-endian `u64` (a literal, for the C header).
pub const BOOT_MAGIC: u64 = 0x3249_4254_494b_5650;
const _: () = assert!(BOOT_MAGIC == u64::from_le_bytes(*b"PVKITBI2"));
/// Most entries the memory map holds (a balloon fragments the map; the host never writes
/// more).
pub const MAX_MEMORY_REGIONS: usize = 128;

/// The type of a [`MemoryRegion`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM the guest may use.
    Usable = 1,
    /// RAM in use by the boot area, or by the loaded kernel image.
    Reserved = 2,
}

impl TryFrom<u32> for MemoryKind {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(MemoryKind::Usable),
            2 => Ok(MemoryKind::Reserved),
            other => Err(other),
        }
    }
}

/// One entry of the memory map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// A [`MemoryKind`] value.
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}
assert_layout!(MemoryRegion, size = 24, start @ 0, len @ 8, kind @ 16, reserved @ 20);

/// What the VMM tells the guest at entry. Pointed to by `RDI`.
///
/// The structure can grow: `size` is its size as the host wrote it. A later minor version
/// appends fields; a guest reads a field only if `size` covers it, and ignores bytes
/// beyond the fields it knows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// The size of this structure in bytes as the host wrote it (`size_of::<BootInfo>()`
    /// for this version; more in a later minor).
    pub size: u32,
    /// Zero.
    pub reserved0: u32,
    /// The host's ABI version ([`crate::AbiVersion::to_u64`]).
    pub abi_version: u64,
    /// The host's feature bits ([`crate::cpuid::Features`]).
    pub features: u64,
    /// Total guest RAM in bytes (RAM is one range starting at 0).
    pub mem_size: u64,
    /// GPA of the command line (NUL-terminated).
    pub cmdline_addr: u64,
    /// Length of the command line in bytes, without the NUL.
    pub cmdline_len: u64,
    /// The TSC frequency in kHz as the host knows it (0 if unknown).
    pub tsc_khz: u64,
    /// GPA of the memory map: `memory_map_len` [`MemoryRegion`]s, sorted by address,
    /// non-overlapping, inside the slot `[MEMORY_MAP_ADDR, MEMORY_MAP_ADDR + MEMORY_MAP_MAX)`.
    pub memory_map_addr: u64,
    /// Number of entries of the memory map (at most [`MAX_MEMORY_REGIONS`]).
    pub memory_map_len: u32,
    /// Zero.
    pub reserved1: u32,
}
assert_layout!(
    BootInfo,
    size = 80,
    magic @ 0,
    size @ 8,
    reserved0 @ 12,
    abi_version @ 16,
    features @ 24,
    mem_size @ 32,
    cmdline_addr @ 40,
    cmdline_len @ 48,
    tsc_khz @ 56,
    memory_map_addr @ 64,
    memory_map_len @ 72,
    reserved1 @ 76,
);

/// Size of [`BootInfo`] in this version (its `size` field as this host writes it).
pub const BOOT_INFO_SIZE: u32 = core::mem::size_of::<BootInfo>() as u32;

impl BootInfo {
    /// Where the memory map is, as `(address, entries)`, when `memory_map_addr` and
    /// `memory_map_len` describe entries inside the slot the boot contract reserves for it
    /// (at most [`MAX_MEMORY_REGIONS`]); `None` otherwise: the values are checked, never
    /// trusted. An empty map is `Some((addr, 0))`.
    pub fn memory_map_range(&self) -> Option<(u64, usize)> {
        let n = self.memory_map_len as usize;
        let bytes = (n as u64).checked_mul(core::mem::size_of::<MemoryRegion>() as u64)?;
        let end = self.memory_map_addr.checked_add(bytes)?;
        (n <= MAX_MEMORY_REGIONS
            && self.memory_map_addr >= MEMORY_MAP_ADDR
            && self.memory_map_addr.is_multiple_of(8)
            && end <= MEMORY_MAP_ADDR + MEMORY_MAP_MAX)
            .then_some((self.memory_map_addr, n))
    }

    /// The memory map's entries; empty when [`BootInfo::memory_map_range`] rejects it.
    ///
    /// Reads guest memory at the memory-map slot, so it exists only in a guest (`guest`
    /// feature, `x86_64-unknown-none`), and only the `BootInfo` the VMM placed at
    /// [`BOOT_INFO_ADDR`] reads anything. It relies on the boot identity map still mapping
    /// the boot area.
    #[cfg(all(feature = "guest", target_arch = "x86_64", target_os = "none"))]
    pub fn memory_map(&self) -> &[MemoryRegion] {
        let at_boot_addr = core::ptr::eq(self, BOOT_INFO_ADDR as *const BootInfo);
        match self.memory_map_range() {
            Some((addr, n)) if at_boot_addr && n > 0 => {
                // SAFETY: this is the VMM's `BootInfo`, so the boot contract holds: the
                // entries lie inside the memory-map slot (checked), which the identity map
                // maps and the VMM filled before entry, aligned for `MemoryRegion`.
                unsafe { core::slice::from_raw_parts(addr as *const MemoryRegion, n) }
            }
            _ => &[],
        }
    }

    /// Where the command line is, as `(address, length)`, when `cmdline_addr` and
    /// `cmdline_len` describe a range inside the command-line slot
    /// `[CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX)` that the boot contract reserves for it
    /// (room left for the NUL). `None` for an empty or out-of-slot command line: the values
    /// are checked, never trusted.
    pub fn cmdline_range(&self) -> Option<(u64, usize)> {
        let (addr, len) = (self.cmdline_addr, self.cmdline_len);
        let end = addr.checked_add(len)?;
        (len != 0 && addr >= CMDLINE_ADDR && end < CMDLINE_ADDR + CMDLINE_MAX)
            .then_some((addr, len as usize))
    }

    /// The command line's bytes (without the NUL); empty when there is none or when
    /// [`BootInfo::cmdline_range`] rejects it.
    ///
    /// Reads guest memory at the command-line slot, so it exists only in a guest
    /// (`guest` feature, `x86_64-unknown-none`), and only the `BootInfo` the VMM placed at
    /// [`BOOT_INFO_ADDR`] reads anything: a copy elsewhere returns an empty slice. It relies
    /// on the boot identity map still mapping the boot area (true until a kernel replaces
    /// the page tables and unmaps it).
    #[cfg(all(feature = "guest", target_arch = "x86_64", target_os = "none"))]
    pub fn cmdline_bytes(&self) -> &[u8] {
        let at_boot_addr = core::ptr::eq(self, BOOT_INFO_ADDR as *const BootInfo);
        match self.cmdline_range() {
            Some((addr, len)) if at_boot_addr => {
                // SAFETY: this is the VMM's `BootInfo` (its address is `BOOT_INFO_ADDR`), so
                // the boot contract holds: the range lies inside the command-line slot,
                // which the identity map maps and the VMM filled before entry, and which
                // nothing writes afterwards.
                unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
            }
            _ => &[],
        }
    }

    /// The command line as UTF-8 ([`BootInfo::cmdline_bytes`]); `""` when there is none.
    #[cfg(all(feature = "guest", target_arch = "x86_64", target_os = "none"))]
    pub fn cmdline(&self) -> Result<&str, core::str::Utf8Error> {
        core::str::from_utf8(self.cmdline_bytes())
    }
}

// The boot area is ordered, fits below the kernel, and the stack is aligned.
const _: () = {
    assert!(GDT_ADDR < BOOT_INFO_ADDR);
    assert!(BOOT_INFO_ADDR + core::mem::size_of::<BootInfo>() as u64 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX <= MEMORY_MAP_ADDR);
    assert!(
        MAX_MEMORY_REGIONS as u64 * core::mem::size_of::<MemoryRegion>() as u64 <= MEMORY_MAP_MAX
    );
    assert!(MEMORY_MAP_ADDR + MEMORY_MAP_MAX <= PAGE_TABLES);
    // A balloon fragments the map: room for at least 128 entries.
    assert!(MAX_MEMORY_REGIONS >= 128);
    // PML4 + PDPT + 4 page directories (4 GiB of 2 MiB pages).
    assert!(PAGE_TABLES + 6 * 0x1000 <= BOOT_STACK_BOTTOM);
    assert!(BOOT_STACK_TOP <= KERNEL_MIN_ADDR);
    assert!(BOOT_STACK_TOP.is_multiple_of(16));
};

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BootInfo {
        BootInfo {
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
        }
    }

    #[test]
    fn memory_map_range_stays_in_its_slot() {
        let mut info = info();
        assert_eq!(info.memory_map_range(), Some((MEMORY_MAP_ADDR, 0)));
        info.memory_map_len = MAX_MEMORY_REGIONS as u32;
        assert_eq!(
            info.memory_map_range(),
            Some((MEMORY_MAP_ADDR, MAX_MEMORY_REGIONS))
        );
        info.memory_map_len = MAX_MEMORY_REGIONS as u32 + 1;
        assert_eq!(info.memory_map_range(), None);
        info.memory_map_len = u32::MAX;
        assert_eq!(info.memory_map_range(), None);
        info.memory_map_len = 2;
        info.memory_map_addr = MEMORY_MAP_ADDR + MEMORY_MAP_MAX - 24;
        assert_eq!(info.memory_map_range(), None); // the second entry leaves the slot
        info.memory_map_addr = MEMORY_MAP_ADDR - 24;
        assert_eq!(info.memory_map_range(), None);
        info.memory_map_addr = u64::MAX - 8;
        assert_eq!(info.memory_map_range(), None);
        info.memory_map_addr = MEMORY_MAP_ADDR + 4;
        assert_eq!(info.memory_map_range(), None); // misaligned
    }

    #[test]
    fn cmdline_range_stays_in_its_slot() {
        let mut info = info();
        info.cmdline_addr = CMDLINE_ADDR;
        info.cmdline_len = 5;
        assert_eq!(info.cmdline_range(), Some((CMDLINE_ADDR, 5)));
        info.cmdline_len = CMDLINE_MAX - 1;
        assert_eq!(info.cmdline_range(), Some((CMDLINE_ADDR, 4095)));
        info.cmdline_len = CMDLINE_MAX; // no room for the NUL
        assert_eq!(info.cmdline_range(), None);
        info.cmdline_len = 0;
        assert_eq!(info.cmdline_range(), None);
        info.cmdline_len = u64::MAX;
        assert_eq!(info.cmdline_range(), None);
        info.cmdline_addr = 0x10_0000;
        info.cmdline_len = 4;
        assert_eq!(info.cmdline_range(), None);
    }

    #[test]
    fn memory_kind_decoding() {
        assert_eq!(MemoryKind::try_from(1), Ok(MemoryKind::Usable));
        assert_eq!(MemoryKind::try_from(2), Ok(MemoryKind::Reserved));
        assert_eq!(MemoryKind::try_from(0), Err(0));
    }
}
