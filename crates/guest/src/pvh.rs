//! The second way in: the PVH boot protocol, so the same ELF also boots on a
//! stock hypervisor (`qemu-system-x86_64 -kernel`, and any other loader that speaks PVH).
//!
//! [`pvh_entry!`](crate::pvh_entry) emits, into the kernel, a `Xen` ELF note of type
//! [`XEN_ELFNOTE_PHYS32_ENTRY`] (section `.note.Xen`: the linker script gives it its own
//! `PT_NOTE`) naming `pvh_start`, the 32-bit entry. The loader enters it in protected mode,
//! paging off, flat 32-bit segments, interrupts off, with `EBX` = the physical address of an
//! `hvm_start_info` ([`StartInfo`]). `pvh_start`:
//!
//! 1. identity-maps `[0, 4 GiB)` with 2 MiB pages (PML4, one PDPT, four page directories in
//!    `.bss`: the same map the pvkit boot contract gives, `pvkit_abi::boot`);
//! 2. turns on PAE, `EFER.LME` (and `EFER.NXE` when CPUID offers it), paging and `CR0.WP`;
//! 3. loads a three-entry GDT (`0x08` 64-bit code, `0x10` data) and far-jumps to 64-bit code;
//! 4. switches to the kernel's stack and calls the kernel's 64-bit PVH entry with the
//!    `hvm_start_info` address in `RDI`.
//!
//! That entry loads its GDT and IDT and calls [`boot_info`], which builds a `BootInfo` where
//! the pvkit boot contract puts one (RAM entries of the start info's memory map, its command
//! line) so the rest of the kernel cannot tell the two entries apart. The pvkit entry
//! (`_start`, the ELF entry point) is unchanged; pvkit never uses the PVH note.
//!
//! Without the pvkit CPUID signature ([`stock_host`]) the `BootInfo` has **no feature bits**:
//! the kernel uses its emulated drivers (the 16550 UART, ATA PIO, the PIT), and ends the VM
//! through QEMU's `isa-debug-exit` device ([`debug_exit`]) instead of the `Exit` hypercall.
//! With the guest runtime (feature `runtime`) this is automatic: `entry!(main, pvh)` emits
//! the PVH entry too, `print!` falls back to the UART, `main`'s return value, panics and
//! exceptions go through `isa-debug-exit`. The trampoline uses no SSE and no stack before
//! long mode.

use core::sync::atomic::{AtomicBool, Ordering};
use pvkit_abi::boot::{
    BootInfo, MemoryKind, MemoryRegion, BOOT_INFO_ADDR, BOOT_INFO_SIZE, BOOT_MAGIC, CMDLINE_ADDR,
    CMDLINE_MAX, IDENTITY_MAP_SIZE, KERNEL_MIN_ADDR, MAX_MEMORY_REGIONS, MEMORY_MAP_ADDR,
};
use pvkit_abi::ABI_VERSION;

/// The ELF note type of the PVH 32-bit entry point (Xen's `elfnote.h`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `hvm_start_info.magic`: `"xEn3"` with the top bit of the last byte set.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// The `hvm_memmap_table_entry.type` of RAM (the E820 type).
pub const MEMMAP_RAM: u32 = 1;
/// Most memory-map entries read from the start info (a bound on a value we are given).
pub const MAX_MEMMAP_ENTRIES: u32 = 128;
/// The I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The exit code of a panic or an unhandled exception on a stock hypervisor: QEMU exits
/// with `(0x7f << 1) | 1` = 255.
pub const FAILURE_EXIT: u8 = 0x7f;

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

/// Emits the PVH entry note and the 32-bit trampoline `pvh_start` into the kernel (once per
/// kernel; the runtime's `entry!(main, pvh)` does it for you).
///
/// - `stack`: a `static` whose end is the stack the kernel runs on (16-byte aligned);
/// - `stack_size`: the offset of the initial `RSP` from the start of `stack`;
/// - `main`: `extern "C" fn(start_info: u64) -> !`, the 64-bit PVH entry. It should load
///   the kernel's GDT and IDT, then call [`boot_info`] with `start_info`.
///
/// The linker script must keep `.note.Xen` in a `PT_NOTE` (`KEEP(*(.note.Xen))`) and place
/// the image below 4 GiB (it is entered with 32-bit addresses).
#[cfg(target_arch = "x86_64")]
#[macro_export]
macro_rules! pvh_entry {
    (stack = $stack:path, stack_size = $size:expr, main = $main:path $(,)?) => {
        // The PVH entry note: name "Xen", type 18, the 32-bit entry address as a 64-bit
        // value (QEMU reads the descriptor as a native word on a 64-bit ELF).
        ::core::arch::global_asm!(
            ".pushsection .note.Xen, \"a\", @note",
            ".balign 4",
            ".long 4",
            ".long 8",
            ".long {ty}",
            ".asciz \"Xen\"",
            ".balign 4",
            ".quad pvh_start",
            ".popsection",
            ty = const $crate::pvh::XEN_ELFNOTE_PHYS32_ENTRY,
        );
        // The 32-bit entry. AT&T syntax (far jumps read naturally). Registers: EBX = start
        // info (kept in ESI), EDI = table cursor, ECX = counter, EAX/EDX scratch. No stack
        // is used before long mode.
        ::core::arch::global_asm!(
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
            // 2048 page-directory entries of 2 MiB: present, writable, user, PS (as pvkit's).
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
            // Paging is the identity here, so the GDT pointer's 32-bit base is valid.
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
            // The trampoline's GDT: null, 0x08 64-bit code, 0x10 flat data; the `lgdt`
            // operand with a 32-bit base (the kernel loads its own GDT later).
            ".pushsection .rodata.pvh_gdt, \"a\", @progbits",
            ".balign 16",
            "pvh_gdt:",
            "    .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff",
            "pvh_gdt_ptr:",
            "    .word . - pvh_gdt - 1",
            "    .long pvh_gdt",
            ".popsection",
            tables = sym $crate::pvh::__private::TABLES,
            stack = sym $stack,
            size = const $size,
            main = sym $main,
            options(att_syntax),
        );
    };
}

/// Used by [`crate::pvh_entry!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use core::cell::UnsafeCell;

    /// A 4 KiB page table.
    #[repr(C, align(4096))]
    pub struct PageTable(UnsafeCell<[u64; 512]>);

    /// PML4, PDPT and the four page directories of the identity map `pvh_start` builds.
    #[repr(C, align(4096))]
    pub struct Tables([PageTable; 6]);
    // SAFETY: written only by `pvh_start` (paging off, one CPU) and then read by the CPU;
    // Rust code never touches them.
    unsafe impl Sync for Tables {}

    /// The trampoline's page tables (in `.bss`).
    pub static TABLES: Tables = Tables([const { PageTable(UnsafeCell::new([0; 512])) }; 6]);
}

/// Whether the kernel came in through `pvh_start` ([`boot_info`] sets it).
static BOOTED_PVH: AtomicBool = AtomicBool::new(false);
/// Whether the kernel runs without the pvkit CPUID signature ([`boot_info`] sets it).
static STOCK_HOST: AtomicBool = AtomicBool::new(false);

/// Whether the kernel was booted through the PVH entry, not by pvkit's `_start`.
#[inline]
pub fn booted_pvh() -> bool {
    BOOTED_PVH.load(Ordering::Relaxed)
}

/// Whether the kernel runs on a stock hypervisor: booted through the PVH entry and the
/// CPUID hypervisor leaves do not carry the pvkit signature. Then there is no host to take
/// hypercalls: exit through [`debug_exit`], print on the UART.
#[inline]
pub fn stock_host() -> bool {
    STOCK_HOST.load(Ordering::Relaxed)
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

/// The RAM entries of a PVH memory map as pvkit memory regions, with the `reserved`
/// ranges (`[start, end)`, sorted, not overlapping) cut out: at most [`MAX_MEMORY_REGIONS`]
/// (later pieces are dropped), cut at the 4 GiB identity map, empty ones skipped. Returns
/// the number of regions written to `out` and the end of RAM (of the highest RAM entry).
pub fn ram_regions(
    entries: impl Iterator<Item = MemmapEntry>,
    reserved: &[(u64, u64)],
    out: &mut [MemoryRegion; MAX_MEMORY_REGIONS],
) -> (usize, u64) {
    let (mut n, mut top) = (0, 0);
    let mut push = |start: u64, end: u64| {
        if end > start && n < MAX_MEMORY_REGIONS {
            out[n] = MemoryRegion {
                start,
                len: end - start,
                kind: MemoryKind::Usable as u32,
                reserved: 0,
            };
            n += 1;
        }
    };
    for e in entries {
        if e.kind != MEMMAP_RAM {
            continue;
        }
        let end = e.addr.saturating_add(e.size).min(IDENTITY_MAP_SIZE);
        if end <= e.addr {
            continue;
        }
        top = top.max(end);
        let mut cur = e.addr;
        for &(rs, re) in reserved {
            if re <= cur || rs >= end {
                continue;
            }
            push(cur, rs.max(cur));
            cur = cur.max(re);
        }
        push(cur, end);
    }
    (n, top)
}

/// Builds the kernel's `BootInfo` from the `hvm_start_info` at `addr` and records that the
/// kernel came in through PVH. Call it once, from the kernel's PVH entry, after loading the
/// GDT and IDT. `image` is the kernel image `[start, end)` (`.bss` included).
///
/// The `BootInfo` has the RAM entries of the start info's memory map without the boot area
/// below [`KERNEL_MIN_ADDR`] and without `image` ([`ram_regions`]; `mem_size` is the end of
/// RAM), as pvkit's map leaves them out, its command line (copied, at most
/// `CMDLINE_MAX - 1` bytes) and no TSC rate. Its feature bits are those of the pvkit CPUID
/// leaves when the signature is there, else none ([`stock_host`]). Panics when the start
/// info is malformed or has no memory map. The structures are written where the pvkit boot
/// contract puts them (`BOOT_INFO_ADDR`, `CMDLINE_ADDR`, `MEMORY_MAP_ADDR`), so accessors
/// that check the contract (`BootInfo::memory_map`, `cmdline`) accept them.
#[cfg(target_arch = "x86_64")]
pub fn boot_info(addr: u64, image: (u64, u64)) -> &'static BootInfo {
    BOOTED_PVH.store(true, Ordering::Relaxed);
    let pvkit = crate::cpuid::detect();
    STOCK_HOST.store(pvkit.is_none(), Ordering::Relaxed);
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
    // Gathered first, written to the boot contract's slots afterwards: the loader's own
    // structures may lie anywhere in low memory, those slots included.
    let mut map = [MemoryRegion {
        start: 0,
        len: 0,
        kind: 0,
        reserved: 0,
    }; MAX_MEMORY_REGIONS];
    let entries = (0..si.memmap_entries.min(MAX_MEMMAP_ENTRIES))
        .map(|i| read_phys::<MemmapEntry>(si.memmap_paddr + u64::from(i) * 24, "memory map"));
    let reserved = [
        (0, KERNEL_MIN_ADDR),
        (image.0.max(KERNEL_MIN_ADDR), image.1),
    ];
    let (n, mem_size) = ram_regions(entries, &reserved, &mut map);
    let mut cmdline = [0u8; CMDLINE_MAX as usize];
    let mut len = 0;
    if si.cmdline_paddr != 0 {
        while len < cmdline.len() - 1 {
            let b: u8 = read_phys(si.cmdline_paddr + len as u64, "command line");
            if b == 0 {
                break;
            }
            cmdline[len] = b;
            len += 1;
        }
    }
    let boot = BootInfo {
        magic: BOOT_MAGIC,
        size: BOOT_INFO_SIZE,
        reserved0: 0,
        abi_version: ABI_VERSION.to_u64(),
        features: pvkit.map_or(0, |p| p.features.bits()),
        mem_size,
        cmdline_addr: if len > 0 { CMDLINE_ADDR } else { 0 },
        cmdline_len: len as u64,
        tsc_khz: 0,
        memory_map_addr: MEMORY_MAP_ADDR,
        memory_map_len: n as u32,
        reserved1: 0,
    };
    // SAFETY: the boot area the pvkit boot contract describes — BootInfo at
    // BOOT_INFO_ADDR, the command line at CMDLINE_ADDR (< CMDLINE_MAX bytes, NUL
    // included), the memory map at MEMORY_MAP_ADDR (room for MAX_MEMORY_REGIONS entries,
    // asserted in pvkit-abi) — is low RAM inside the identity map `pvh_start` built, below
    // the kernel image (linked at ≥ 1 MiB) and away from its page tables (in .bss).
    // Everything the loader left there was copied out above.
    unsafe {
        core::ptr::copy_nonoverlapping(map.as_ptr(), MEMORY_MAP_ADDR as *mut MemoryRegion, n);
        core::ptr::copy_nonoverlapping(cmdline.as_ptr(), CMDLINE_ADDR as *mut u8, len);
        (CMDLINE_ADDR as *mut u8).add(len).write(0);
        (BOOT_INFO_ADDR as *mut BootInfo).write(boot);
        &*(BOOT_INFO_ADDR as *const BootInfo)
    }
}

/// Ends the VM through QEMU's `isa-debug-exit` device: QEMU exits with status
/// `(code << 1) | 1`. Without that device the write goes nowhere and this CPU halts.
#[cfg(target_arch = "x86_64")]
pub fn debug_exit(code: u8) -> ! {
    // SAFETY: a port write to the debug-exit device; it touches no memory. Without the
    // device the write is ignored.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") DEBUG_EXIT_PORT, in("eax") u32::from(code),
            options(nomem, nostack));
    }
    crate::halt_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry {
            addr,
            size,
            kind,
            reserved: 0,
        }
    }

    fn empty() -> [MemoryRegion; MAX_MEMORY_REGIONS] {
        [MemoryRegion {
            start: 0,
            len: 0,
            kind: 0,
            reserved: 0,
        }; MAX_MEMORY_REGIONS]
    }

    #[test]
    fn ram_regions_keep_ram_only_and_cut_at_4_gib() {
        let mut out = empty();
        let map = [
            entry(0, 0x9fc00, MEMMAP_RAM),
            entry(0x9fc00, 0x400, 2),
            entry(0x10_0000, 0, MEMMAP_RAM),
            entry(0x10_0000, 0x7f0_0000, MEMMAP_RAM),
            entry(0xffff_0000, 0x2_0000, MEMMAP_RAM),
            entry(u64::MAX - 1, 4, MEMMAP_RAM),
        ];
        let (n, top) = ram_regions(map.into_iter(), &[], &mut out);
        assert_eq!(n, 3);
        assert_eq!((out[0].start, out[0].len), (0, 0x9fc00));
        assert_eq!((out[1].start, out[1].len), (0x10_0000, 0x7f0_0000));
        assert_eq!((out[2].start, out[2].len), (0xffff_0000, 0x1_0000));
        assert_eq!(top, IDENTITY_MAP_SIZE);
        assert!(out[..n].iter().all(|r| r.kind == MemoryKind::Usable as u32));
    }

    #[test]
    fn ram_regions_leave_out_the_boot_area_and_the_image() {
        let mut out = empty();
        let map = [
            entry(0, 0x9fc00, MEMMAP_RAM),
            entry(0x10_0000, 0x7f0_0000, MEMMAP_RAM),
        ];
        let reserved = [(0, 0x10_0000), (0x10_0000, 0x13_5000)];
        let (n, top) = ram_regions(map.into_iter(), &reserved, &mut out);
        assert_eq!(n, 1);
        assert_eq!(
            (out[0].start, out[0].len),
            (0x13_5000, 0x800_0000 - 0x13_5000)
        );
        assert_eq!(top, 0x800_0000);
        // An image in the middle of a RAM entry splits it in two.
        let map = [entry(0x10_0000, 0x10_0000, MEMMAP_RAM)];
        let (n, _) = ram_regions(map.into_iter(), &[(0x14_0000, 0x15_0000)], &mut out);
        assert_eq!(n, 2);
        assert_eq!((out[0].start, out[0].len), (0x10_0000, 0x4_0000));
        assert_eq!((out[1].start, out[1].len), (0x15_0000, 0xb_0000));
    }

    #[test]
    fn ram_regions_are_bounded() {
        let mut out = empty();
        let many = (0..MAX_MEMORY_REGIONS as u64 + 5).map(|i| entry(i << 20, 4096, MEMMAP_RAM));
        let (n, top) = ram_regions(many, &[], &mut out);
        assert_eq!(n, MAX_MEMORY_REGIONS);
        assert_eq!(top, ((MAX_MEMORY_REGIONS as u64 + 4) << 20) + 4096);
    }
}
