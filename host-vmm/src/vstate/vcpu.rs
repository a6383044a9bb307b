//! A vCPU: creation (with the CPUID table and boot registers of [`crate::arch::x86_64`]),
//! TSC-offset calibration, and one `KVM_RUN` step translated into an [`Exit`] value that
//! [`Vcpu::run`] hands to the caller's handler (the run loop passes it on to
//! `crate::exit::handle_exit`; this module knows nothing of exit handling).
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

use kvm_bindings::{kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use pvkit_abi::call::{CallReturn, RawCall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::HYPERCALL;
use thiserror::Error;

use crate::arch::x86_64::cpuid::{set_cpuid, CpuidError};
use crate::arch::x86_64::regs::{setup_boot_regs, RegsError};
use crate::arch::x86_64::tsc::host_tsc;

/// A VM exit, translated from `kvm_ioctls::VcpuExit` by [`Vcpu::run`] for the exit handler
/// (`crate::exit::handle_exit`).
#[derive(Debug)]
pub enum Exit<'a> {
    /// `out` to `port` (not a hypercall).
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: &'a [u8],
    },
    /// `in` from `port`; the handler fills `data`.
    IoIn {
        /// The port.
        port: u16,
        /// The bytes to return to the guest.
        data: &'a mut [u8],
    },
    /// A 32-bit `out` to the hypercall port, with the argument registers.
    Hypercall(RawCall),
    /// An MMIO read; the handler fills `data`.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// The bytes to return to the guest.
        data: &'a mut [u8],
    },
    /// An MMIO write.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// `hlt`.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// KVM failed to emulate or run the guest.
    InternalError {
        /// `kvm_run.internal.suberror`.
        suberror: u32,
    },
    /// The hardware refused to enter the guest.
    FailEntry {
        /// The hardware reason.
        reason: u64,
    },
    /// `KVM_RUN` returned early because of a signal (the watchdog's kick).
    Interrupted,
    /// Any other exit reason.
    Other {
        /// The `KVM_EXIT_*` number.
        reason: u32,
    },
}

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

/// Errors creating, configuring or running a vCPU.
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
    /// The CPUID table could not be read or set.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// The boot registers could not be set.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// Sync regs were requested but KVM does not offer them.
    #[error("KVM_CAP_SYNC_REGS is not available on this host; use the ioctl register access")]
    NoSyncRegs,
}

fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> VcpuError {
    move |source| VcpuError::Kvm { what, source }
}

/// The model-specific register of the time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;

/// One vCPU: its KVM fd and how hypercall registers are accessed.
pub struct Vcpu {
    fd: VcpuFd,
    index: u64,
    access: RegAccess,
    /// With [`RegAccess::Ioctl`]: the registers read for the last hypercall, kept for
    /// [`Vcpu::set_return`] (one `KVM_GET_REGS` and one `KVM_SET_REGS` per hypercall).
    call_regs: Option<kvm_regs>,
    /// The special registers of the boot state, read once at creation, for
    /// [`Vcpu::start_long_mode`] (the vCPU filter allows `KVM_SET_SREGS`, not the get).
    boot_sregs: kvm_bindings::kvm_sregs,
    /// KVM's count of all this vCPU's exits, in-kernel ones included (if KVM offers it).
    kvm_exits: Option<super::stats::VcpuStats>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("index", &self.index)
            .field("access", &self.access)
            .finish()
    }
}

impl Vcpu {
    /// Creates vCPU `index` (`KVM_CREATE_VCPU`) with the CPUID table built from KVM's
    /// `supported` one ([`crate::arch::x86_64::cpuid::supported_cpuid`]) and `features`, in
    /// the boot state of [`pvkit_abi::boot`] ([`setup_boot_regs`]: long mode, `RIP` =
    /// `entry`): [`Vcpu::create`], then [`Vcpu::setup_boot`]. `access` `None` picks sync
    /// regs when available.
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        index: u64,
        entry: u64,
        supported: &CpuId,
        features: Features,
        access: Option<RegAccess>,
    ) -> Result<Self, VcpuError> {
        let mut vcpu = Self::create(kvm, vm, index, access)?;
        vcpu.setup_boot(supported, features, entry)?;
        Ok(vcpu)
    }

    /// Creates vCPU `index` (`KVM_CREATE_VCPU`) without a CPUID table or boot registers:
    /// its TSC can be read ([`Vcpu::tsc_khz`], [`Vcpu::guest_tsc_offset`]) before the
    /// feature bits are known. [`Vcpu::setup_boot`] must follow before the first run, so
    /// that `KVM_SET_CPUID2` is done once.
    pub fn create(
        kvm: &Kvm,
        vm: &VmFd,
        index: u64,
        access: Option<RegAccess>,
    ) -> Result<Self, VcpuError> {
        let mut fd = vm.create_vcpu(index).map_err(kvm_err("KVM_CREATE_VCPU"))?;
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
        let kvm_exits = super::stats::VcpuStats::open(&fd).ok();
        Ok(Self {
            fd,
            index,
            access,
            call_regs: None,
            boot_sregs: kvm_bindings::kvm_sregs::default(),
            kvm_exits,
        })
    }

    /// Sets the CPUID table (pvkit leaves with `features`; KVM checks `EFER` against it, so
    /// it comes first) and the boot state at `entry`. Only before the first run.
    pub fn setup_boot(
        &mut self,
        supported: &CpuId,
        features: Features,
        entry: u64,
    ) -> Result<(), VcpuError> {
        let apic_id = u32::try_from(self.index).unwrap_or(u32::MAX);
        set_cpuid(&self.fd, supported, features, apic_id)?;
        setup_boot_regs(&self.fd, entry)?;
        self.boot_sregs = self.fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        Ok(())
    }

    /// Every exit of this vCPU from guest mode so far, handled in the kernel or not
    /// (`KVM_GET_STATS_FD`); `None` without binary statistics.
    pub fn kvm_exits(&self) -> Option<u64> {
        self.kvm_exits.as_ref()?.exits()
    }

    /// Opens the vCPU's in-kernel statistics ([`crate::vstate::stats`]).
    pub fn stats(
        &self,
    ) -> Result<crate::vstate::stats::VcpuStats, crate::vstate::stats::StatsError> {
        crate::vstate::stats::VcpuStats::open(&self.fd)
    }

    /// The vCPU's index (its KVM vCPU id).
    pub fn index(&self) -> u64 {
        self.index
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
            let before = host_tsc();
            let n = self.fd.get_msrs(&mut msrs).ok()?;
            let after = host_tsc();
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

    /// The KVM vCPU fd, for the snapshot's state ioctls ([`crate::snapshot`]) on a vCPU
    /// that is out of `KVM_RUN` (paused, or not yet started).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// After a restore set the registers: keeps the copy in `kvm_run` (sync regs) equal to
    /// them, as [`Vcpu::start_long_mode`] does.
    pub fn sync_restored_regs(&mut self, regs: kvm_regs) {
        if self.access == RegAccess::SyncRegs {
            self.fd.sync_regs_mut().regs = regs;
        }
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

    /// The guest `RIP` at the exit `KVM_RUN` just returned, for the exit recorder
    /// (`crate::exit::record`): with sync regs read from the `kvm_run` page KVM filled (no
    /// ioctl); with ioctls the registers already read for a hypercall, else one
    /// `KVM_GET_REGS`.
    pub fn exit_rip(&mut self) -> Option<u64> {
        match (self.access, &self.call_regs) {
            (RegAccess::SyncRegs, _) => Some(self.fd.sync_regs().regs.rip),
            (RegAccess::Ioctl, Some(r)) => Some(r.rip),
            (RegAccess::Ioctl, None) => self.rip(),
        }
    }

    /// The general and special registers (`KVM_GET_REGS`, `KVM_GET_SREGS`), for fault
    /// diagnostics after the guest stopped. Called on the supervising thread: the vCPU
    /// thread's seccomp filter does not allow `KVM_GET_SREGS`.
    pub fn regs_and_sregs(&self) -> Option<(kvm_regs, kvm_bindings::kvm_sregs)> {
        Some((self.fd.get_regs().ok()?, self.fd.get_sregs().ok()?))
    }

    /// A duplicate of the vCPU fd, for the gdb thread (`crate::debug::gdb`): it reads
    /// registers and sets `KVM_SET_GUEST_DEBUG` while the vCPU thread waits outside
    /// `KVM_RUN`.
    pub fn debug_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the raw fd is this vCPU's open fd, owned by `self.fd` for the whole
        // borrow; it is only duplicated here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) };
        fd.try_clone_to_owned()
    }

    /// Starts this vCPU (an AP waiting for INIT/SIPI) in the long-mode boot state of
    /// [`pvkit_abi::boot`] at `rip` with `RSP` = `rsp`, `RDI` = `rdi`, interrupts off:
    /// `KVM_SET_SREGS`, `KVM_SET_REGS`, `KVM_SET_MP_STATE(RUNNABLE)`. On the vCPU's thread.
    pub fn start_long_mode(&mut self, rip: u64, rsp: u64, rdi: u64) -> Result<(), VcpuError> {
        self.fd
            .set_sregs(&self.boot_sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip,
            rsp,
            rdi,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        if self.access == RegAccess::SyncRegs {
            // The copy KVM keeps in `kvm_run` follows, should a later exit mark it dirty.
            self.fd.sync_regs_mut().regs = regs;
        }
        self.fd
            .set_mp_state(kvm_bindings::kvm_mp_state {
                mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm_err("KVM_SET_MP_STATE"))
    }

    /// Clears `kvm_run.immediate_exit` (a kick that landed while the vCPU was out of
    /// `KVM_RUN` and is no longer wanted: after a pause).
    pub fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// The address of `kvm_run.immediate_exit`, for the watchdog's signal handler.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit as *mut u8
    }

    /// Reads the hypercall argument registers. With ioctls, the registers are kept for
    /// [`Vcpu::set_return`] so a hypercall costs one `KVM_GET_REGS` and one `KVM_SET_REGS`.
    fn hypercall_args(&mut self, written: u32) -> Result<Option<RawCall>, VcpuError> {
        let (r, keep) = match self.access {
            RegAccess::SyncRegs => (self.fd.sync_regs().regs, None),
            RegAccess::Ioctl => {
                let r = self.fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
                (r, Some(r))
            }
        };
        // The number is EAX (upper half 0); a dword that is not EAX (a string `outsd` from
        // memory) is not a call: [`decode_hypercall`].
        let raw = decode_hypercall(written, r.rax, [r.rdi, r.rsi, r.r8, r.r9]);
        self.call_regs = keep;
        Ok(raw)
    }

    /// Puts a hypercall's results in `RAX`/`RDX` for the next entry (after [`Vcpu::run`]
    /// handed out an [`Exit::Hypercall`]).
    pub fn set_return(&mut self, ret: CallReturn) -> Result<(), VcpuError> {
        match (self.access, self.call_regs.take()) {
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

    /// Runs the guest until the next exit and hands the exit, as an [`Exit`] borrowing the
    /// `kvm_run` data, to `handle`; returns what `handle` returned. After an
    /// [`Exit::Hypercall`] the caller puts the results in place with [`Vcpu::set_return`].
    pub fn run<A>(&mut self, mut handle: impl FnMut(Exit<'_>) -> A) -> Result<A, VcpuError> {
        // Exits whose handling needs `self` again (registers, `kvm_run` fields) once the
        // borrow of the exit data has ended.
        enum Deferred {
            Hypercall(u32),
            Internal,
            Interrupted,
        }
        // Registers kept for the previous exit's `set_return` are stale from here on.
        self.call_regs = None;
        let deferred = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if let (HYPERCALL, Ok(eax)) = (port, <[u8; 4]>::try_from(data)) {
                    Deferred::Hypercall(u32::from_le_bytes(eax))
                } else {
                    return Ok(handle(Exit::IoOut { port, data }));
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => return Ok(handle(Exit::IoIn { port, data })),
            Ok(VcpuExit::MmioRead(addr, data)) => return Ok(handle(Exit::MmioRead { addr, data })),
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                return Ok(handle(Exit::MmioWrite { addr, data }))
            }
            Ok(VcpuExit::Hlt) => return Ok(handle(Exit::Hlt)),
            Ok(VcpuExit::Shutdown) => return Ok(handle(Exit::Shutdown)),
            Ok(VcpuExit::InternalError) => Deferred::Internal,
            Ok(VcpuExit::FailEntry(reason, _cpu)) => return Ok(handle(Exit::FailEntry { reason })),
            Ok(VcpuExit::Intr) => return Ok(handle(Exit::Interrupted)),
            Ok(other) => {
                let reason = exit_reason_number(&other);
                return Ok(handle(Exit::Other { reason }));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Deferred::Interrupted
            }
            Err(e) => {
                return Err(VcpuError::Kvm {
                    what: "KVM_RUN",
                    source: e,
                })
            }
        };
        Ok(match deferred {
            Deferred::Interrupted => {
                // A kick may have set immediate_exit; clear it so a resumed guest really
                // runs (if the watchdog fired, the handler stops the VM anyway).
                self.fd.set_kvm_immediate_exit(0);
                handle(Exit::Interrupted)
            }
            Deferred::Internal => {
                let suberror = self.internal_suberror();
                handle(Exit::InternalError { suberror })
            }
            Deferred::Hypercall(written) => match self.hypercall_args(written)? {
                Some(raw) => handle(Exit::Hypercall(raw)),
                None => handle(Exit::IoOut {
                    port: HYPERCALL,
                    data: &written.to_le_bytes(),
                }),
            },
        })
    }
}

/// Decides whether a 4-byte write to the hypercall port is a call. `written` is the
/// dword the port received, `rax` and `args` the registers at the exit.
///
/// A hypercall is `out dx, eax`: the number is `EAX`. KVM reports a one-dword string
/// `outsd` (its dword read from guest memory) exactly like `out dx, eax`, so a write whose
/// dword differs from `EAX` cannot be that instruction: it is not a call (`None`) and the
/// caller handles it as an ordinary port write ([`Exit::IoOut`]: ignored, no register
/// changed, counted as a port `0x0500` write). A string write whose dword equals `EAX`
/// is indistinguishable from the call and is that call: its number comes from `EAX`
/// either way. A number with `RAX`'s upper half set is dispatched as 0, which the ABI
/// never assigns (`ENOSYS`, counted as an unknown hypercall).
pub fn decode_hypercall(written: u32, rax: u64, args: [u64; 4]) -> Option<RawCall> {
    if written != rax as u32 {
        return None;
    }
    Some(RawCall {
        nr: if rax >> 32 == 0 { written } else { 0 },
        args,
    })
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
