//! The second way in: the PVH boot protocol, so the same ELF boots on a stock hypervisor
//! (`qemu-system-x86_64 -kernel`, and any other loader that speaks PVH).
//!
//! The kernel carries a `Xen` ELF note of type [`XEN_ELFNOTE_PHYS32_ENTRY`] (in its own
//! `PT_NOTE`, see `linker.ld`) naming `pvh_start`, the 32-bit entry. The loader enters it in
//! protected mode, paging off, flat 32-bit segments, interrupts off, with `EBX` = the
//! physical address of an `hvm_start_info` ([`StartInfo`]). `pvh_start`:
//!
//! 1. identity-maps `[0, 4 GiB)` with 2 MiB pages (PML4, one PDPT, four page directories in
//!    `.bss`: the same map the pvkit boot contract gives, `pvkit_abi::boot`);
//! 2. turns on PAE, `EFER.LME` (and `EFER.NXE` when CPUID offers it), paging and `CR0.WP`;
//! 3. loads a three-entry GDT (`0x08` 64-bit code, `0x10` data) and far-jumps to 64-bit code;
//! 4. switches to the kernel stack and calls [`pvh_main`] with the `hvm_start_info` address.
//!
//! [`pvh_main`] loads the kernel's own GDT/TSS and IDT, builds a [`BootInfo`] from the start
//! info ([`boot_info`]: RAM entries of its memory map, version ≥ 1; its command line, copied
//! into the kernel) with **no feature bits**, and runs the kernel as from the pvkit entry.
//! The pvkit entry (`_start`, the ELF entry point) is unchanged.
//!
//! With no pvkit host the kernel uses its emulated drivers only (the 16550 UART, ATA PIO, the
//! PIT), as the feature bits and the CPUID signature say, and it exits through QEMU's
//! `isa-debug-exit` device ([`debug_exit`]) instead of the `Exit` hypercall. The trampoline
//! uses no SSE and no stack before long mode.

use crate::statics::Exclusive;
use core::sync::atomic::{AtomicBool, Ordering};
use pvkit_abi::boot::{
    BootInfo, MemoryKind, MemoryRegion, BOOT_INFO_ADDR, BOOT_INFO_SIZE, BOOT_MAGIC, CMDLINE_ADDR,
    CMDLINE_MAX, IDENTITY_MAP_SIZE, MAX_MEMORY_REGIONS, MEMORY_MAP_ADDR,
};
use pvkit_abi::ABI_VERSION;

/// The ELF note type of the PVH 32-bit entry point (Xen's `elfnote.h`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `hvm_start_info.magic`: `"xEn3"` with the top bit of the last byte set.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// The `hvm_memmap_table_entry.type` of RAM (the E820 type).
pub const MEMMAP_RAM: u32 = 1;
/// Most memory-map entries read from the start info (a bound on a value we are given).
const MAX_MEMMAP_ENTRIES: u32 = 128;
/// The I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// `struct hvm_start_info` (Xen `public/arch-x86/hvm/start_info.h`), version 1.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u32,
    /// 0, or 1 when the memory-map fields are valid.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of boot modules.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version ≥ 1).
    pub memmap_paddr: u64,
    /// Entries in the memory map (version ≥ 1).
    pub memmap_entries: u32,
    /// Zero.
    pub reserved: u32,
}
pvkit_abi::assert_layout!(StartInfo, size = 56, cmdline_paddr @ 24, memmap_paddr @ 40, memmap_entries @ 48);

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemmapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type ([`MEMMAP_RAM`] for RAM).
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}
pvkit_abi::assert_layout!(MemmapEntry, size = 24, addr @ 0, size @ 8, kind @ 16);

// The PVH entry note: name "Xen", type 18, the 32-bit entry address as a 64-bit value (QEMU
// reads the descriptor as a native word on a 64-bit ELF; the high half is zero).
core::arch::global_asm!(
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long {ty}",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start",
    ".popsection",
    ty = const XEN_ELFNOTE_PHYS32_ENTRY,
);

/// A 4 KiB page table.
#[repr(C, align(4096))]
pub struct PageTable([u64; 512]);

/// PML4, PDPT and the four page directories of the identity map, built by `pvh_start`.
/// Only ever written by the trampoline (paging off) and then read by the CPU.
static mut PVH_TABLES: [PageTable; 6] = [const { PageTable([0; 512]) }; 6];

// The 32-bit entry. AT&T syntax (far jumps read naturally). Registers: EBX = start info
// (kept in ESI), EDI = table cursor, ECX = counter, EAX/EDX scratch. No stack is used.
core::arch::global_asm!(
    ".pushsection .text.pvh_start, \"ax\", @progbits",
    ".code32",
    ".global pvh_start",
    ".type pvh_start, @function",
    "pvh_start:",
    "    cli",
    "    cld",
    "    movl %ebx, %esi",
    // PML4[0] -> PDPT; PDPT[0..4] -> the four page directories.
    "    movl ${tables}, %edi",
    "    leal 0x1007(%edi), %eax",
    "    movl %eax, (%edi)",
    "    movl $0, 4(%edi)",
    "    leal 0x2007(%edi), %eax",
    "    xorl %ecx, %ecx",
    "1:  movl %eax, 0x1000(%edi,%ecx,8)",
    "    movl $0, 0x1004(%edi,%ecx,8)",
    "    addl $0x1000, %eax",
    "    incl %ecx",
    "    cmpl $4, %ecx",
    "    jb 1b",
    // 2048 page-directory entries of 2 MiB: present, writable, user, PS (as pvkit's map).
    "    addl $0x2000, %edi",
    "    movl $0x87, %eax",
    "    xorl %ecx, %ecx",
    "2:  movl %eax, (%edi,%ecx,8)",
    "    movl $0, 4(%edi,%ecx,8)",
    "    addl $0x200000, %eax",
    "    incl %ecx",
    "    cmpl $2048, %ecx",
    "    jb 2b",
    // CR4.PAE; CR3 = PML4.
    "    movl %cr4, %eax",
    "    orl $0x20, %eax",
    "    movl %eax, %cr4",
    "    movl ${tables}, %eax",
    "    movl %eax, %cr3",
    // EFER.LME, and EFER.NXE when CPUID 0x8000_0001 EDX bit 20 says NX exists.
    "    movl $0x80000000, %eax",
    "    cpuid",
    "    xorl %edi, %edi",
    "    cmpl $0x80000001, %eax",
    "    jb 3f",
    "    movl $0x80000001, %eax",
    "    cpuid",
    "    btl $20, %edx",
    "    jnc 3f",
    "    movl $0x800, %edi",
    "3:  movl $0xc0000080, %ecx",
    "    rdmsr",
    "    orl $0x100, %eax",
    "    orl %edi, %eax",
    "    wrmsr",
    // CR0.PG | WP | PE: long mode (compatibility mode until the far jump).
    "    movl %cr0, %eax",
    "    orl $0x80010001, %eax",
    "    movl %eax, %cr0",
    // The GDT pointer's base is written here (paging is identity, so virtual = physical).
    "    lgdt pvh_gdt_ptr",
    "    ljmp $0x08, $pvh_start64",
    ".code64",
    "pvh_start64:",
    "    movl $0x10, %eax",
    "    movl %eax, %ds",
    "    movl %eax, %es",
    "    movl %eax, %ss",
    "    movl %eax, %fs",
    "    movl %eax, %gs",
    "    leaq {stack} + {size}(%rip), %rsp",
    "    xorl %ebp, %ebp",
    "    movl %esi, %edi",
    "    call {main}",
    "    ud2",
    ".size pvh_start, . - pvh_start",
    ".popsection",
    // The trampoline's GDT: null, 0x08 64-bit code, 0x10 flat data; the `lgdt` operand with
    // a 32-bit base (the kernel loads its own GDT from 64-bit code later).
    ".pushsection .rodata.pvh_gdt, \"a\", @progbits",
    ".balign 16",
    "pvh_gdt:",
    "    .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff",
    "pvh_gdt_ptr:",
    "    .word . - pvh_gdt - 1",
    "    .long pvh_gdt",
    ".popsection",
    tables = sym PVH_TABLES,
    stack = sym crate::KERNEL_STACK,
    size = const crate::STACK_SIZE,
    main = sym pvh_main,
    options(att_syntax),
);

/// Whether the kernel came in through `pvh_start` (so: not on pvkit).
static BOOTED_PVH: AtomicBool = AtomicBool::new(false);

/// Whether the kernel was booted through the PVH entry, not by pvkit.
#[inline]
pub fn booted_pvh() -> bool {
    BOOTED_PVH.load(Ordering::Relaxed)
}

/// The `BootInfo` synthesized from the start info.
static BOOT_INFO: Exclusive<BootInfo> = Exclusive::new(BootInfo {
    magic: 0,
    size: 0,
    reserved0: 0,
    abi_version: 0,
    features: 0,
    mem_size: 0,
    cmdline_addr: 0,
    cmdline_len: 0,
    tsc_khz: 0,
    memory_map_addr: 0,
    memory_map_len: 0,
    reserved1: 0,
});

/// The command line, copied out of the loader's memory (room for the NUL kept).
static CMDLINE: Exclusive<[u8; CMDLINE_MAX as usize]> = Exclusive::new([0; CMDLINE_MAX as usize]);

/// The 64-bit Rust entry of the PVH path, called by `pvh_start` with the start info's
/// physical address.
extern "C" fn pvh_main(start_info: u64) -> ! {
    BOOTED_PVH.store(true, Ordering::Relaxed);
    crate::gdt::init();
    crate::interrupts::init();
    let boot = boot_info(start_info);
    crate::kernel_run(boot)
}

/// Reads a `T` at physical address `addr` if it lies in the identity map. Panics otherwise.
fn read_phys<T: Copy>(addr: u64, what: &str) -> T {
    let size = core::mem::size_of::<T>() as u64;
    if addr == 0 || addr > IDENTITY_MAP_SIZE - size {
        panic!("PVH: bad {what} address {addr:#x}");
    }
    // SAFETY: the address is inside the identity map `pvh_start` built (so mapped); the
    // loader put the structure there before entry. Unaligned reads are fine on x86; `T` is
    // plain old data (integers only), so any bytes are a valid value.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Builds the kernel's [`BootInfo`] from the `hvm_start_info` at `addr`: the RAM entries of
/// its memory map (at most [`MAX_MEMORY_REGIONS`], as [`MemoryKind::Usable`]; `mem_size` is
/// the end of the highest one, capped at 4 GiB), its command line (copied, at most
/// `CMDLINE_MAX - 1` bytes), no feature bits and no TSC rate. Panics (reported on the UART
/// and through `isa-debug-exit`) when the start info is malformed or has no memory map.
/// The structures are written where the pvkit boot contract puts them (`BOOT_INFO_ADDR`,
/// `CMDLINE_ADDR`, `MEMORY_MAP_ADDR`), so the rest of the kernel cannot tell the two entries
/// apart.
pub fn boot_info(addr: u64) -> &'static BootInfo {
    let si: StartInfo = read_phys(addr, "hvm_start_info");
    if si.magic != START_INFO_MAGIC {
        panic!("PVH: bad hvm_start_info magic {:#x}", si.magic);
    }
    if si.version < 1 || si.memmap_paddr == 0 || si.memmap_entries == 0 {
        panic!(
            "PVH: hvm_start_info version {} has no memory map; this kernel needs version 1",
            si.version
        );
    }
    let boot = BOOT_INFO.take();
    boot.magic = BOOT_MAGIC;
    boot.abi_version = ABI_VERSION.to_u64();
    boot.size = BOOT_INFO_SIZE;
    // Gathered first, written to the boot contract's memory-map slot afterwards: the
    // loader's own map may lie anywhere in low memory, that slot included.
    let mut map = [MemoryRegion {
        start: 0,
        len: 0,
        kind: 0,
        reserved: 0,
    }; MAX_MEMORY_REGIONS];
    let mut n = 0;
    for i in 0..si.memmap_entries.min(MAX_MEMMAP_ENTRIES) {
        let e: MemmapEntry = read_phys(si.memmap_paddr + u64::from(i) * 24, "memory map");
        if e.kind != MEMMAP_RAM || e.size == 0 || n == MAX_MEMORY_REGIONS {
            continue;
        }
        let end = e.addr.saturating_add(e.size).min(IDENTITY_MAP_SIZE);
        if end <= e.addr {
            continue;
        }
        map[n] = MemoryRegion {
            start: e.addr,
            len: end - e.addr,
            kind: MemoryKind::Usable as u32,
            reserved: 0,
        };
        boot.mem_size = boot.mem_size.max(end);
        n += 1;
    }
    let buf = CMDLINE.take();
    if si.cmdline_paddr != 0 {
        let mut len = 0;
        while len < buf.len() - 1 {
            let b: u8 = read_phys(si.cmdline_paddr + len as u64, "command line");
            if b == 0 {
                break;
            }
            buf[len] = b;
            len += 1;
        }
        boot.cmdline_len = len as u64;
    }
    boot.memory_map_addr = MEMORY_MAP_ADDR;
    boot.memory_map_len = n as u32;
    let cmdline = buf;
    let cmdline_len = boot.cmdline_len as usize;
    if cmdline_len > 0 {
        boot.cmdline_addr = CMDLINE_ADDR;
    }
    // SAFETY: the boot area the pvkit boot contract describes — BootInfo at
    // BOOT_INFO_ADDR, the command line at CMDLINE_ADDR (< CMDLINE_MAX bytes, NUL
    // included), the memory map at MEMORY_MAP_ADDR (room for MAX_MEMORY_REGIONS entries,
    // asserted in pvkit-abi) — is low RAM inside the identity map `pvh_start` built, below
    // the kernel image and away from its page tables (in .bss). Everything the loader left
    // there (start info, its memory map, the command line) was copied out above. So the
    // kernel finds its boot information where it does on pvkit, and the accessors that
    // check the contract (`BootInfo::memory_map`, `cmdline`) accept it.
    unsafe {
        core::ptr::copy_nonoverlapping(map.as_ptr(), MEMORY_MAP_ADDR as *mut MemoryRegion, n);
        core::ptr::copy_nonoverlapping(cmdline.as_ptr(), CMDLINE_ADDR as *mut u8, cmdline_len);
        (CMDLINE_ADDR as *mut u8).add(cmdline_len).write(0);
        (BOOT_INFO_ADDR as *mut BootInfo).write(*boot);
        &*(BOOT_INFO_ADDR as *const BootInfo)
    }
}

/// Ends the VM through QEMU's `isa-debug-exit` device: QEMU exits with status
/// `(code << 1) | 1`. Without that device the write goes nowhere and this CPU halts.
pub fn debug_exit(code: u8) -> ! {
    // SAFETY: a port write to the debug-exit device; it touches no memory. Without the
    // device the write is ignored.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") DEBUG_EXIT_PORT, in("eax") u32::from(code),
            options(nomem, nostack));
    }
    pvkit_guest::halt_forever()
}
