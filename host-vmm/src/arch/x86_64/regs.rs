//! The long-mode boot state of a vCPU ([`pvkit_abi::boot`]): segments from the boot GDT,
//! control registers for 64-bit paging over the boot page tables, the FPU defaults, and
//! `RIP`/`RSP`/`RDI` for the entry point.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use pvkit_abi::boot::{BOOT_INFO_ADDR, ENTRY_RSP, GDT_ADDR, PAGE_TABLES};
use thiserror::Error;

use super::layout::{CODE_SELECTOR, DATA_SELECTOR, GDT};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Errors setting a vCPU's boot registers.
#[derive(Debug, Error)]
#[error("KVM {what} failed: {source}")]
pub struct RegsError {
    /// Which operation.
    pub what: &'static str,
    /// The errno.
    pub source: vmm_sys_util::errno::Error,
}

fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> RegsError {
    move |source| RegsError { what, source }
}

/// The boot GDT's descriptor for `selector`, decoded into KVM's form.
pub fn segment(selector: u16, code: bool) -> kvm_segment {
    let desc = GDT.get(usize::from(selector >> 3)).copied().unwrap_or(0);
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present: ((desc >> 47) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        db: if code { 0 } else { 1 },
        s: ((desc >> 44) & 1) as u8,
        l: if code { 1 } else { 0 },
        g: ((desc >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the vCPU `fd` in the boot state of [`pvkit_abi::boot`]: long mode, the boot GDT and
/// page tables, no IDT, `RIP` = `entry`, `RSP` = [`ENTRY_RSP`], `RDI` = boot info.
pub fn setup_boot_regs(fd: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let mut sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.cs = segment(CODE_SELECTOR, true);
    let data = segment(DATA_SELECTOR, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    // No IDT: an exception before the guest installs one triple-faults at once,
    // which the VMM reports as a shutdown.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PAGE_TABLES;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;

    let regs = kvm_regs {
        rip: entry,
        rsp: ENTRY_RSP,
        rdi: BOOT_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_segments_match_the_gdt() {
        let cs = segment(CODE_SELECTOR, true);
        assert_eq!(
            (cs.type_, cs.present, cs.s, cs.l, cs.db, cs.dpl),
            (0xb, 1, 1, 1, 0, 0)
        );
        let ds = segment(DATA_SELECTOR, false);
        assert_eq!((ds.type_, ds.present, ds.s, ds.l, ds.db), (0x3, 1, 1, 0, 1));
    }
}
