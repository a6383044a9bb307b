//! The runtime's GDT and TSS.
//!
//! | selector | descriptor                  |
//! |----------|-----------------------------|
//! | `0x08`   | kernel code (64-bit, DPL 0) |
//! | `0x10`   | kernel data (DPL 0)         |
//! | `0x1b`   | user data (DPL 3)           |
//! | `0x23`   | user code (64-bit, DPL 3)   |
//! | `0x28`   | TSS (16 bytes)              |
//!
//! The kernel selectors match the boot GDT's; the user pair is ordered data-then-code so
//! that `SYSRET` works with `STAR[63:48] = 0x10`. The TSS gives the double fault its own
//! stack ([`DOUBLE_FAULT_IST`]), NMI and machine check another ([`NMI_IST`]), and `RSP0`,
//! the stack the CPU switches to on an interrupt or exception from ring 3. There is no I/O
//! permission bitmap (`iomap_base` past the end).

use core::cell::UnsafeCell;

/// The kernel code selector.
pub const KERNEL_CODE: u16 = 0x08;
/// The kernel data selector.
pub const KERNEL_DATA: u16 = 0x10;
/// The user data selector (`SS` in ring 3), GDT index 3, RPL 3.
pub const USER_DATA: u16 = 0x1b;
/// The user code selector (`CS` in ring 3), GDT index 4, RPL 3.
pub const USER_CODE: u16 = 0x23;
/// The TSS selector.
pub const TSS_SELECTOR: u16 = 0x28;

/// The IST slot (1-based, as in an IDT gate) of the double-fault stack.
pub const DOUBLE_FAULT_IST: u8 = 1;
/// The IST slot of the NMI and machine-check stack.
pub const NMI_IST: u8 = 2;

/// Size of each IST stack and of the `RSP0` stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// A 16-byte aligned stack, used only through `RSP` (never through Rust references).
#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; IST_STACK_SIZE]>);
// SAFETY: only the CPU uses the stack, through the TSS; Rust code never reads or writes it.
unsafe impl Sync for Stack {}

static DOUBLE_FAULT_STACK: Stack = Stack(UnsafeCell::new([0; IST_STACK_SIZE]));
static NMI_STACK: Stack = Stack(UnsafeCell::new([0; IST_STACK_SIZE]));
static RSP0_STACK: Stack = Stack(UnsafeCell::new([0; IST_STACK_SIZE]));

/// The 64-bit task-state segment.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}
const _: () = assert!(core::mem::size_of::<Tss>() == 104);

/// The tables, written once by [`init`].
#[repr(C, align(16))]
struct Tables {
    gdt: UnsafeCell<[u64; 7]>,
    tss: UnsafeCell<Tss>,
}
// SAFETY: written only by `init`, on the boot CPU with interrupts disabled, before the
// tables are loaded; afterwards only the CPU reads them.
unsafe impl Sync for Tables {}

static TABLES: Tables = Tables {
    gdt: UnsafeCell::new([0; 7]),
    tss: UnsafeCell::new(Tss {
        reserved0: 0,
        rsp: [0; 3],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap_base: core::mem::size_of::<Tss>() as u16,
    }),
};

/// The top of a stack (its end address).
fn top(stack: &Stack) -> u64 {
    stack.0.get() as u64 + IST_STACK_SIZE as u64
}

/// The lowest address of the double-fault stack and its top, for diagnostics.
pub fn double_fault_stack() -> (u64, u64) {
    let top = top(&DOUBLE_FAULT_STACK);
    (top - IST_STACK_SIZE as u64, top)
}

/// Builds and loads the GDT and TSS and reloads `CS`, `SS`, `DS`, `ES` and the task
/// register. Interrupts must be disabled (they are at entry).
pub fn init() {
    let tss_addr = TABLES.tss.get() as u64;
    let limit = core::mem::size_of::<Tss>() as u64 - 1;
    let tss_low = (limit & 0xffff)
        | (tss_addr & 0xff_ffff) << 16
        | 0x89 << 40 // present, DPL 0, available 64-bit TSS
        | (limit >> 16 & 0xf) << 48
        | (tss_addr >> 24 & 0xff) << 56;
    let tss_high = tss_addr >> 32;
    // SAFETY: see `impl Sync for Tables`: nothing else accesses the tables now.
    unsafe {
        let tss = &mut *TABLES.tss.get();
        tss.rsp = [top(&RSP0_STACK), 0, 0];
        let mut ist = [0; 7];
        ist[usize::from(DOUBLE_FAULT_IST - 1)] = top(&DOUBLE_FAULT_STACK);
        ist[usize::from(NMI_IST - 1)] = top(&NMI_STACK);
        tss.ist = ist;
        *TABLES.gdt.get() = [
            0,
            0x00af_9a00_0000_ffff, // kernel code: present, DPL 0, code, L
            0x00cf_9200_0000_ffff, // kernel data: present, DPL 0, writable
            0x00cf_f200_0000_ffff, // user data: present, DPL 3, writable
            0x00af_fa00_0000_ffff, // user code: present, DPL 3, code, L
            tss_low,
            tss_high,
        ];
    }
    #[repr(C, packed(2))]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (7 * 8 - 1) as u16,
        base: TABLES.gdt.get() as u64,
    };
    // SAFETY: the GDT is 'static and holds a 64-bit code segment at 0x08, a data segment at
    // 0x10 and an available TSS at 0x28 whose stacks are 'static. The far return reloads
    // CS with the same kind of segment the code already runs in; interrupts are off, so
    // nothing runs between the loads.
    unsafe {
        core::arch::asm!(
            "lgdt [{ptr}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, {data}",
            "mov ss, {tmp:e}",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov {tmp:e}, {tss}",
            "ltr {tmp:x}",
            ptr = in(reg) &pointer,
            code = const KERNEL_CODE as u64,
            data = const KERNEL_DATA as u32,
            tss = const TSS_SELECTOR as u32,
            tmp = out(reg) _,
        );
    }
}
