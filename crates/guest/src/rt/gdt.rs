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

/// One CPU's GDT and TSS, in the layout of the table above. The runtime's own are the boot
/// CPU's ([`init`]); a kernel that starts more CPUs gives each its own, in memory that
/// lives for good, and loads them on that CPU with [`CpuTables::load`].
#[repr(C, align(16))]
pub struct CpuTables {
    gdt: [u64; 7],
    tss: Tss,
}

impl CpuTables {
    /// Empty tables, to be filled and loaded by [`CpuTables::load`].
    pub const fn new() -> Self {
        Self {
            gdt: [0; 7],
            tss: Tss {
                reserved0: 0,
                rsp: [0; 3],
                reserved1: 0,
                ist: [0; 7],
                reserved2: 0,
                reserved3: 0,
                iomap_base: core::mem::size_of::<Tss>() as u16,
            },
        }
    }

    /// Fills `tables` (the TSS's `RSP0` and the tops of the [`DOUBLE_FAULT_IST`] and
    /// [`NMI_IST`] stacks; 0 leaves a slot unused) and loads them on the calling CPU:
    /// `lgdt`, then `CS`, `SS`, `DS`, `ES` and the task register reloaded.
    ///
    /// # Safety
    ///
    /// `tables` must point at tables that live for the rest of the run and that nothing
    /// else reads or writes now (once loaded only the CPU uses them); the stacks must live
    /// for good too; interrupts must be disabled.
    pub unsafe fn load(tables: *mut CpuTables, rsp0: u64, double_fault_top: u64, nmi_top: u64) {
        // SAFETY: a field address inside the live tables; nothing is read.
        let tss_addr = unsafe { &raw const (*tables).tss } as u64;
        let limit = core::mem::size_of::<Tss>() as u64 - 1;
        let tss_low = (limit & 0xffff)
            | (tss_addr & 0xff_ffff) << 16
            | 0x89 << 40 // present, DPL 0, available 64-bit TSS
            | (limit >> 16 & 0xf) << 48
            | (tss_addr >> 24 & 0xff) << 56;
        // SAFETY: the caller gives us the tables to ourselves until they are loaded.
        let t = unsafe { &mut *tables };
        t.tss.rsp = [rsp0, 0, 0];
        let mut ist = [0; 7];
        ist[usize::from(DOUBLE_FAULT_IST - 1)] = double_fault_top;
        ist[usize::from(NMI_IST - 1)] = nmi_top;
        t.tss.ist = ist;
        t.gdt = [
            0,
            0x00af_9a00_0000_ffff, // kernel code: present, DPL 0, code, L
            0x00cf_9200_0000_ffff, // kernel data: present, DPL 0, writable
            0x00cf_f200_0000_ffff, // user data: present, DPL 3, writable
            0x00af_fa00_0000_ffff, // user code: present, DPL 3, code, L
            tss_low,
            tss_addr >> 32,
        ];
        #[repr(C, packed(2))]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let pointer = Pointer {
            limit: (7 * 8 - 1) as u16,
            base: t.gdt.as_ptr() as u64,
        };
        // SAFETY: the GDT lives for good (the caller's promise) and holds a 64-bit code
        // segment at 0x08, a data segment at 0x10 and an available TSS at 0x28 whose stacks
        // live for good. The far return reloads CS with the same kind of segment the code
        // already runs in; interrupts are off, so nothing runs between the loads.
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
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}

/// The boot CPU's tables, loaded once by [`init`].
struct BootTables(UnsafeCell<CpuTables>);
// SAFETY: written only by `init`, on the boot CPU with interrupts disabled, before the
// tables are loaded; afterwards only the CPU reads them.
unsafe impl Sync for BootTables {}

static TABLES: BootTables = BootTables(UnsafeCell::new(CpuTables::new()));

/// The top of a stack (its end address).
fn top(stack: &Stack) -> u64 {
    stack.0.get() as u64 + IST_STACK_SIZE as u64
}

/// The lowest address of the double-fault stack and its top, for diagnostics.
pub fn double_fault_stack() -> (u64, u64) {
    let top = top(&DOUBLE_FAULT_STACK);
    (top - IST_STACK_SIZE as u64, top)
}

/// Builds and loads the boot CPU's GDT and TSS and reloads `CS`, `SS`, `DS`, `ES` and the
/// task register. Interrupts must be disabled (they are at entry).
pub fn init() {
    // SAFETY: see `impl Sync for BootTables`: nothing else accesses the tables now; they and
    // the stacks are statics; interrupts are off.
    unsafe {
        CpuTables::load(
            TABLES.0.get(),
            top(&RSP0_STACK),
            top(&DOUBLE_FAULT_STACK),
            top(&NMI_STACK),
        );
    }
}
