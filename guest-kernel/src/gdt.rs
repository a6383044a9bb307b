//! The kernel's GDT and TSS.
//!
//! | selector | descriptor                 |
//! |----------|----------------------------|
//! | `0x08`   | kernel code (64-bit, DPL 0) |
//! | `0x10`   | kernel data (DPL 0)        |
//! | `0x1b`   | user data (DPL 3)          |
//! | `0x23`   | user code (64-bit, DPL 3)  |
//! | `0x28`   | TSS (16 bytes)             |
//!
//! The kernel selectors match the boot GDT's, and the user pair is ordered data-then-code
//! so that `SYSRET` works with `STAR[63:48] = 0x10`. [`crate::user`] enters ring 3 with
//! `iretq` and these selectors.
//!
//! The TSS provides `IST1` ([`DOUBLE_FAULT_IST`]), a separate stack for the double-fault
//! handler so a kernel stack overflow is still reported, and `RSP0`, the stack the CPU
//! switches to on an interrupt or exception from ring 3. There is no I/O permission bitmap
//! (`iomap_base` past the end), so ring 3 reaches ports only through IOPL.

use spin::Once;
use x86_64::{
    instructions::{
        segmentation::{Segment, CS, DS, ES, SS},
        tables::load_tss,
    },
    structures::{
        gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector},
        tss::TaskStateSegment,
    },
    VirtAddr,
};

use crate::Stack;

/// The IST slot (1-based, as in the IDT gate) of the double-fault stack.
pub const DOUBLE_FAULT_IST: u8 = 1;

const IST_STACK_SIZE: usize = 16 * 1024;
const RSP0_STACK_SIZE: usize = 16 * 1024;

/// The double-fault stack (only used through the TSS, never through Rust references).
static mut DOUBLE_FAULT_STACK: Stack<IST_STACK_SIZE> = Stack([0; IST_STACK_SIZE]);
/// The ring-0 stack for interrupts from ring 3 (only used through the TSS).
static mut RSP0_STACK: Stack<RSP0_STACK_SIZE> = Stack([0; RSP0_STACK_SIZE]);

/// The user data selector (`SS` in ring 3), GDT index 3, RPL 3.
pub const USER_DATA: u16 = 0x1b;
/// The user code selector (`CS` in ring 3), GDT index 4, RPL 3.
pub const USER_CODE: u16 = 0x23;
/// The kernel code selector.
pub const KERNEL_CODE: u16 = 0x08;
/// The kernel data selector.
pub const KERNEL_DATA: u16 = 0x10;

/// The selectors of [`GDT`].
#[allow(dead_code, reason = "all selectors are documented; not all are read")]
#[derive(Clone, Copy, Debug)]
pub struct Selectors {
    /// Kernel code, `0x08`.
    pub kernel_code: SegmentSelector,
    /// Kernel data, `0x10`.
    pub kernel_data: SegmentSelector,
    /// User data, `0x1b` (RPL 3).
    pub user_data: SegmentSelector,
    /// User code, `0x23` (RPL 3).
    pub user_code: SegmentSelector,
    /// The TSS, `0x28`.
    pub tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

/// Builds and loads the GDT and TSS and reloads every segment register that matters.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let df = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK) + IST_STACK_SIZE as u64;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = df;
        tss.privilege_stack_table[0] =
            VirtAddr::from_ptr(&raw const RSP0_STACK) + RSP0_STACK_SIZE as u64;
        tss
    });
    let (gdt, sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        let user_data = gdt.append(Descriptor::user_data_segment());
        let user_code = gdt.append(Descriptor::user_code_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        let sel = Selectors {
            kernel_code,
            kernel_data,
            user_data,
            user_code,
            tss,
        };
        assert!(
            sel.user_data.0 == USER_DATA
                && sel.user_code.0 == USER_CODE
                && sel.kernel_data.0 == KERNEL_DATA
                && sel.kernel_code.0 == KERNEL_CODE,
            "GDT layout differs from the selectors ring-3 entry uses"
        );
        (gdt, sel)
    });
    gdt.load();
    // SAFETY: the GDT just loaded is 'static and holds these descriptors: a 64-bit code
    // segment for CS, a writable data segment for SS/DS/ES, and an available TSS whose
    // stacks are 'static. Interrupts are disabled, so nothing runs between the loads.
    unsafe {
        CS::set_reg(sel.kernel_code);
        SS::set_reg(sel.kernel_data);
        DS::set_reg(sel.kernel_data);
        ES::set_reg(sel.kernel_data);
        load_tss(sel.tss);
    }
}
