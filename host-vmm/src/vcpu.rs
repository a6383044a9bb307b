//! The VM and its one vCPU: long-mode boot state, the CPUID table, and one `KVM_RUN` step
//! translated into an [`Exit`] for [`handle_exit`].
//!
//! # Register access for hypercalls
//!
//! A hypercall needs `RDI`/`RSI`/`R8`/`R9` in and `RAX`/`RDX` out. With
//! [`RegAccess::SyncRegs`] (`KVM_CAP_SYNC_REGS`) KVM copies the general registers into the
//! shared `kvm_run` page on every exit and back in on entry when marked dirty, so a
//! hypercall costs no register ioctl at all. This is verified to work on `kvm_pvm` (the
//! `synthetic` integration test `sync_regs_return_values_reach_the_guest` checks that the guest
//! sees the new `RAX`/`RDX`) and is the default. [`RegAccess::Ioctl`] (`KVM_GET_REGS` +
//! `KVM_SET_REGS`, two extra ioctls per hypercall) is the fallback when the capability is
//! missing, and can be forced for comparison.
//!
//! Measured on kvm_pvm (a ring-0 loop of 2000 `abi_version` calls,
//! `testing::programs::HYPERCALL_LOOP_2000`, release build): ~10 µs per hypercall with sync
//! regs, the same as a bare exit to the null port; ~30 µs with `KVM_GET_REGS` +
//! `KVM_SET_REGS` (each ioctl costs ~10 µs here).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use pvkit_abi::boot::{BOOT_INFO_ADDR, ENTRY_RSP, GDT_ADDR, PAGE_TABLES};
use pvkit_abi::call::{CallReturn, RawCall};
use pvkit_abi::cpuid::{signature_registers, Features, KVM_LEAF_BASE, LEAF_BASE, LEAF_FEATURES};
use pvkit_abi::ports::HYPERCALL;
use pvkit_abi::ABI_VERSION;
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::exit::{handle_exit, Exit, ExitAction, Machine};
use crate::memory::{GuestRam, CODE_SELECTOR, DATA_SELECTOR, GDT};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// How hypercall registers are read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegAccess {
    /// Through the `kvm_run` sync-regs area (no extra ioctl).
    SyncRegs,
    /// With `KVM_GET_REGS`/`KVM_SET_REGS`.
    Ioctl,
}

impl RegAccess {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            RegAccess::SyncRegs => "sync-regs",
            RegAccess::Ioctl => "get/set-regs ioctls",
        }
    }
}

/// Errors creating, configuring or running the vCPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// The CPUID table could not be built.
    #[error("cannot build the CPUID table: {0}")]
    Cpuid(String),
    /// Sync regs were requested but KVM does not offer them.
    #[error("KVM_CAP_SYNC_REGS is not available on this host; use the ioctl register access")]
    NoSyncRegs,
}

fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> VcpuError {
    move |source| VcpuError::Kvm { what, source }
}

/// Builds the guest's CPUID table from KVM's supported one: KVM's own paravirtual leaves
/// (`0x4000_0000..0x4000_00ff`, "KVMKVMKVM") move to [`KVM_LEAF_BASE`] (kept for
/// kvmclock; Linux looks for them in steps of 0x100), and the pvkit leaves take
/// [`LEAF_BASE`] and [`LEAF_FEATURES`].
pub fn build_cpuid(supported: &[kvm_cpuid_entry2], features: Features) -> Vec<kvm_cpuid_entry2> {
    let hv = LEAF_BASE..LEAF_BASE + 0x100;
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .map(|e| {
            let mut e = *e;
            if hv.contains(&e.function) {
                e.function += KVM_LEAF_BASE - LEAF_BASE;
                if e.function == KVM_LEAF_BASE && hv.contains(&e.eax) {
                    // The highest KVM leaf moves with the leaves.
                    e.eax += KVM_LEAF_BASE - LEAF_BASE;
                }
            }
            e
        })
        .collect();
    let [sig_b, sig_c, sig_d] = signature_registers();
    let bits = features.bits();
    out.push(kvm_cpuid_entry2 {
        function: LEAF_BASE,
        eax: LEAF_FEATURES,
        ebx: sig_b,
        ecx: sig_c,
        edx: sig_d,
        ..Default::default()
    });
    out.push(kvm_cpuid_entry2 {
        function: LEAF_FEATURES,
        eax: ABI_VERSION.major,
        ebx: ABI_VERSION.minor,
        ecx: bits as u32,
        edx: (bits >> 32) as u32,
        ..Default::default()
    });
    out.sort_by_key(|e| (e.function, e.index));
    out
}

/// KVM's CPUID table for this host (`KVM_GET_SUPPORTED_CPUID`).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
}

/// `KVM_FEATURE_CLOCKSOURCE2` in EAX of KVM's leaf `0x4000_0001`: the kvmclock MSRs at
/// `0x4b56_4d00`/`0x4b56_4d01`.
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// Whether KVM offers kvmclock (`"KVMKVMKVM"` at `0x4000_0000` with CLOCKSOURCE2 in
/// `0x4000_0001`) in `supported`. [`build_cpuid`] moves those leaves to
/// [`KVM_LEAF_BASE`], where KVM still finds its own signature (it scans the hypervisor
/// range in steps of 0x100) and the guest's `wrmsr` is handled in the kernel.
pub fn kvmclock_available(supported: &[kvm_cpuid_entry2]) -> bool {
    let leaf = |f: u32| supported.iter().find(|e| e.function == f);
    let signed = leaf(LEAF_BASE).is_some_and(|e| {
        [e.ebx, e.ecx, e.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .eq(*b"KVMKVMKVM\0\0\0")
    });
    signed && leaf(LEAF_FEATURES).is_some_and(|e| e.eax & KVM_FEATURE_CLOCKSOURCE2 != 0)
}

/// The model-specific register of the time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;

fn segment(selector: u16, code: bool) -> kvm_segment {
    // The descriptor in the boot GDT, decoded into KVM's form.
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

/// Creates the VM with `mem` as its RAM.
pub fn create_vm(kvm: &Kvm, mem: &GuestRam) -> Result<VmFd, VcpuError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| VcpuError::Cpuid("guest memory region has no host mapping".into()))?;
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM: the
        // caller keeps `mem` (in the `Machine`) alive for as long as the VM runs, and the
        // range [host, host + len) is exactly that mapping.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    // Intel needs a TSS range below 4 GiB it can use for real-mode emulation; keep it
    // far above any RAM we offer (RAM ≤ 3 GiB).
    vm.set_tss_address(0xfffb_d000)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    Ok(vm)
}

/// The bootstrap vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    access: RegAccess,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("access", &self.access)
            .finish()
    }
}

impl Vcpu {
    /// Creates vCPU 0 in the boot state of [`pvkit_abi::boot`]: long mode, the boot GDT and
    /// page tables, `RIP` = `entry`, `RSP` = [`ENTRY_RSP`], `RDI` = boot info.
    /// `access` `None` picks sync regs when available.
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        entry: u64,
        features: Features,
        access: Option<RegAccess>,
    ) -> Result<Self, VcpuError> {
        let supported = supported_cpuid(kvm)?;
        Self::with_cpuid(kvm, vm, entry, &supported, features, access)
    }

    /// [`Vcpu::new`] with KVM's CPUID table already read ([`supported_cpuid`]).
    pub fn with_cpuid(
        kvm: &Kvm,
        vm: &VmFd,
        entry: u64,
        supported: &CpuId,
        features: Features,
        access: Option<RegAccess>,
    ) -> Result<Self, VcpuError> {
        let mut fd = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        set_cpuid(&fd, supported, features)?;

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
        fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

        let has_sync = kvm.check_extension(Cap::SyncRegs);
        let access = match access {
            Some(RegAccess::SyncRegs) if !has_sync => return Err(VcpuError::NoSyncRegs),
            Some(a) => a,
            None if has_sync => RegAccess::SyncRegs,
            None => RegAccess::Ioctl,
        };
        if access == RegAccess::SyncRegs {
            fd.set_sync_valid_reg(SyncReg::Register);
        }
        Ok(Self { fd, access })
    }

    /// Replaces the CPUID table (pvkit leaves with `features`). Only before the first run.
    pub fn set_features(&mut self, supported: &CpuId, features: Features) -> Result<(), VcpuError> {
        set_cpuid(&self.fd, supported, features)
    }

    /// The guest's TSC offset: guest TSC = host TSC + offset (wrapping), for a VM without
    /// TSC scaling, calibrated with `KVM_GET_MSRS` (`IA32_TSC`) bracketed by two host TSC
    /// reads, the tightest of 4 tries. The offset lies in `[guest - after, guest - before]`;
    /// when 0 is in that bracket the guest reads the host TSC directly (kvm_pvm, whose
    /// ring-3 `rdtsc` runs natively) and the offset is exactly 0; otherwise the bracket's
    /// midpoint is used (within half a `KVM_GET_MSRS` round trip, ~1–4 µs). Call before the
    /// guest runs: a guest that writes its TSC later moves its own clock.
    pub fn guest_tsc_offset(&self) -> Option<u64> {
        let mut best: Option<(u64, u64, u64)> = None; // (width, before, guest)
        for _ in 0..4 {
            let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
                index: MSR_IA32_TSC,
                ..Default::default()
            }])
            .ok()?;
            let before = crate::paravirt::host_tsc();
            let n = self.fd.get_msrs(&mut msrs).ok()?;
            let after = crate::paravirt::host_tsc();
            let guest = msrs.as_slice().first().filter(|_| n == 1)?.data;
            let width = after.wrapping_sub(before);
            if best.is_none_or(|(w, _, _)| width < w) {
                best = Some((width, before, guest));
            }
        }
        let (width, before, guest) = best?;
        // As signed offsets: lo = guest - after, hi = guest - before.
        let hi = guest.wrapping_sub(before) as i64;
        let lo = hi.wrapping_sub(width as i64);
        if lo <= 0 && 0 <= hi {
            return Some(0);
        }
        Some(lo.wrapping_add((width / 2) as i64) as u64)
    }

    /// How this vCPU reads and writes hypercall registers.
    pub fn reg_access(&self) -> RegAccess {
        self.access
    }

    /// The vCPU's TSC rate in kHz, if KVM knows it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|k| *k > 0)
    }

    /// The current `RIP` (one ioctl).
    pub fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    /// The address of `kvm_run.immediate_exit`, for the watchdog's signal handler.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit as *mut u8
    }

    /// Reads the hypercall argument registers. With ioctls, the registers are kept for
    /// [`Vcpu::set_return`] so a hypercall costs one `KVM_GET_REGS` and one `KVM_SET_REGS`.
    fn hypercall_args(
        &mut self,
        written: u32,
    ) -> Result<(Option<RawCall>, Option<kvm_regs>), VcpuError> {
        let (r, keep) = match self.access {
            RegAccess::SyncRegs => (self.fd.sync_regs().regs, None),
            RegAccess::Ioctl => {
                let r = self.fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
                (r, Some(r))
            }
        };
        // The number is EAX (upper half 0); a dword that is not EAX (a string `outsd` from
        // memory) is not a call: `crate::exit::decode_hypercall`.
        let raw = crate::exit::decode_hypercall(written, r.rax, [r.rdi, r.rsi, r.r8, r.r9]);
        Ok((raw, keep))
    }

    fn set_return(&mut self, ret: CallReturn, regs: Option<kvm_regs>) -> Result<(), VcpuError> {
        match (self.access, regs) {
            (RegAccess::SyncRegs, _) => {
                let regs = &mut self.fd.sync_regs_mut().regs;
                regs.rax = ret.status.to_raw();
                regs.rdx = ret.value;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
            }
            (RegAccess::Ioctl, regs) => {
                let mut regs = match regs {
                    Some(r) => r,
                    None => self.fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
                };
                regs.rax = ret.status.to_raw();
                regs.rdx = ret.value;
                self.fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
            }
        }
        Ok(())
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so the
        // `internal` member is the active member of the union; it is plain data.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// Runs the guest until the next exit, hands the exit to [`handle_exit`], and applies
    /// a hypercall's return values. Returns the action for the run loop.
    pub fn step(&mut self, m: &mut Machine) -> Result<ExitAction, VcpuError> {
        let mut hypercall = None;
        let mut internal = false;
        let mut interrupted = false;
        let action = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if let (HYPERCALL, Ok(eax)) = (port, <[u8; 4]>::try_from(data)) {
                    hypercall = Some(u32::from_le_bytes(eax));
                    None
                } else {
                    Some(handle_exit(m, Exit::IoOut { port, data }))
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => Some(handle_exit(m, Exit::IoIn { port, data })),
            Ok(VcpuExit::MmioRead(addr, data)) => {
                Some(handle_exit(m, Exit::MmioRead { addr, data }))
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                Some(handle_exit(m, Exit::MmioWrite { addr, data }))
            }
            Ok(VcpuExit::Hlt) => Some(handle_exit(m, Exit::Hlt)),
            Ok(VcpuExit::Shutdown) => Some(handle_exit(m, Exit::Shutdown)),
            Ok(VcpuExit::InternalError) => {
                internal = true;
                None
            }
            Ok(VcpuExit::FailEntry(reason, _cpu)) => {
                Some(handle_exit(m, Exit::FailEntry { reason }))
            }
            Ok(VcpuExit::Intr) => Some(handle_exit(m, Exit::Interrupted)),
            Ok(other) => {
                let reason = exit_reason_number(&other);
                Some(handle_exit(m, Exit::Other { reason }))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                interrupted = true;
                None
            }
            Err(e) => {
                return Err(VcpuError::Kvm {
                    what: "KVM_RUN",
                    source: e,
                })
            }
        };
        if let Some(a) = action {
            return Ok(a);
        }
        if interrupted {
            // A kick may have set immediate_exit; clear it so a resumed guest really runs
            // (if the watchdog fired, the handler stops the VM anyway).
            self.fd.set_kvm_immediate_exit(0);
            return Ok(handle_exit(m, Exit::Interrupted));
        }
        if internal {
            let suberror = self.internal_suberror();
            return Ok(handle_exit(m, Exit::InternalError { suberror }));
        }
        let Some(nr) = hypercall else {
            return Ok(ExitAction::Continue);
        };
        let (raw, regs) = self.hypercall_args(nr)?;
        let Some(raw) = raw else {
            let data = nr.to_le_bytes();
            return Ok(handle_exit(
                m,
                Exit::IoOut {
                    port: HYPERCALL,
                    data: &data,
                },
            ));
        };
        let action = handle_exit(m, Exit::Hypercall(raw));
        if let ExitAction::Return(ret) = action {
            self.set_return(ret, regs)?;
        }
        Ok(action)
    }
}

fn set_cpuid(fd: &VcpuFd, supported: &CpuId, features: Features) -> Result<(), VcpuError> {
    let entries = build_cpuid(supported.as_slice(), features);
    let cpuid = CpuId::from_entries(&entries).map_err(|e| VcpuError::Cpuid(format!("{e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))
}

/// The `KVM_EXIT_*` number of an exit the VMM does not handle, for messages.
fn exit_reason_number(exit: &VcpuExit<'_>) -> u32 {
    use kvm_bindings::*;
    match exit {
        VcpuExit::Unknown => KVM_EXIT_UNKNOWN,
        VcpuExit::Exception => KVM_EXIT_EXCEPTION,
        VcpuExit::Hypercall(_) => KVM_EXIT_HYPERCALL,
        VcpuExit::Debug(_) => KVM_EXIT_DEBUG,
        VcpuExit::IrqWindowOpen => KVM_EXIT_IRQ_WINDOW_OPEN,
        VcpuExit::SystemEvent(..) => KVM_EXIT_SYSTEM_EVENT,
        VcpuExit::X86Rdmsr(_) => KVM_EXIT_X86_RDMSR,
        VcpuExit::X86Wrmsr(_) => KVM_EXIT_X86_WRMSR,
        VcpuExit::MemoryFault { .. } => KVM_EXIT_MEMORY_FAULT,
        VcpuExit::Unsupported(r) => *r,
        _ => KVM_EXIT_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, eax: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_moves_kvm_leaves_and_adds_pvkit() {
        let kvm_sig = u32::from_le_bytes(*b"KVMK");
        let supported = [
            entry(0, 0xd, 0),
            entry(0x4000_0000, 0x4000_0001, kvm_sig),
            entry(0x4000_0001, 0x1234, 0),
            entry(0x8000_0000, 0x8000_0008, 0),
        ];
        let t = build_cpuid(&supported, Features::CONSOLE | Features::BENCH);
        let find = |f: u32| t.iter().find(|e| e.function == f).copied().unwrap();
        let kvm = find(KVM_LEAF_BASE);
        assert_eq!((kvm.eax, kvm.ebx), (KVM_LEAF_BASE + 1, kvm_sig));
        assert_eq!(find(KVM_LEAF_BASE + 1).eax, 0x1234);
        let base = find(LEAF_BASE);
        assert_eq!(base.eax, LEAF_FEATURES);
        let sig: Vec<u8> = [base.ebx, base.ecx, base.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig, b"pvkitpvkitpv");
        let feat = find(LEAF_FEATURES);
        assert_eq!((feat.eax, feat.ebx), (1, 0));
        assert_eq!(
            feat.ecx,
            (Features::CONSOLE | Features::BENCH).bits() as u32
        );
        assert_eq!(feat.edx, 0);
        assert_eq!(find(0).eax, 0xd);
        assert_eq!(find(0x8000_0000).eax, 0x8000_0008);
        assert_eq!(t.len(), 6);
        assert_eq!(t.iter().filter(|e| e.function == LEAF_BASE).count(), 1);
    }

    #[test]
    fn kvmclock_needs_the_signature_and_clocksource2() {
        let [b, c, d] = [*b"KVMK", *b"VMKV", *b"M\0\0\0"].map(u32::from_le_bytes);
        let sig = kvm_cpuid_entry2 {
            function: LEAF_BASE,
            eax: LEAF_FEATURES,
            ebx: b,
            ecx: c,
            edx: d,
            ..Default::default()
        };
        let feat = |eax| entry(LEAF_FEATURES, eax, 0);
        assert!(kvmclock_available(&[sig, feat(0x0100_7efb)]));
        assert!(!kvmclock_available(&[sig, feat(0x1)]));
        assert!(!kvmclock_available(&[sig]));
        let other = kvm_cpuid_entry2 { ebx: 0, ..sig };
        assert!(!kvmclock_available(&[other, feat(0x8)]));
    }

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
