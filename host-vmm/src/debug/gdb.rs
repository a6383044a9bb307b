//! `pvkit run --gdb ADDR`: a GDB remote-protocol server (the `gdbstub` crate) for vCPU 0.
//!
//! # Threads and confinement
//!
//! The socket is served by its own thread, `pvkit-gdb`, which (with seccomp on) confines
//! itself first thing with the gdb thread's filter ([`ThreadKind::Gdb`]: the one accept,
//! socket reads and writes, the four vCPU ioctls below, `FIONBIO`); the vCPU thread keeps
//! its own filter and does nothing new but wait on a channel. The
//! vCPU thread ([`VcpuDebug`], hooked into `crate::vm::machine::run_vcpu`) reports a stop
//! (before the first guest instruction, then at each `KVM_EXIT_DEBUG`) and blocks until
//! the gdb thread says "run". While it blocks — and only then — the gdb thread reads and
//! writes the vCPU's registers and sets `KVM_SET_GUEST_DEBUG` through a duplicate of the
//! vCPU fd ([`Vcpu::debug_fd`](crate::vstate::vcpu::Vcpu::debug_fd)); KVM allows vCPU
//! ioctls other than `KVM_RUN` from any thread of the process.
//!
//! # What works (probed on kvm_pvm, see docs/DESIGN.md "Diagnostics")
//!
//! - registers: `g`/`G` (`KVM_GET_REGS`/`KVM_SET_REGS`; segment selectors from
//!   `KVM_GET_SREGS`, read-only; x87/SSE state reads as zero and writes are ignored);
//! - memory: `m`/`M` at guest-physical addresses, which equal virtual ones under the boot
//!   identity map (a guest that builds its own page tables sees other mappings); every
//!   access is bounds-checked through vm-memory, and an address outside RAM is an error;
//! - hardware breakpoints `Z1`/`z1`, up to 4 (DR0–DR3, DR7 local-enable execute);
//! - single-step `s` (`KVM_GUESTDBG_SINGLESTEP`), continue `c` (stepping over a
//!   breakpoint at `RIP` first, as a hardware breakpoint fires again on resume);
//! - detach `D` (or a dropped connection): guest debugging is switched off and the guest
//!   runs on to its exit; kill `k` stops the guest.
//!
//! Software breakpoints (`Z0`) are refused with an error (errno 95, `EOPNOTSUPP`, and a
//! message on stderr): on kvm_pvm an `int3` in guest ring 0 kills the vCPU, so they are
//! refused on every platform (use `hbreak`).
//!
//! # Ctrl-C
//!
//! An interrupt from the client (`0x03`) while the guest runs stops it: the gdb thread
//! raises the link's interrupt flag and asks the VM's supervisor to kick the vCPU thread
//! (the watchdog's signal, `crate::runtime::watchdog`, which sets `kvm_run.immediate_exit`
//! so the kick cannot be lost between two `KVM_RUN`s). `KVM_RUN` returns `EINTR`; the run
//! loop sees the flag and stops for the debugger instead of counting an exit, and the stop
//! is reported as `SIGINT`. A kick that lands after the vCPU stopped for another reason
//! (a breakpoint at the same moment) is dropped: the flag is cleared at every stop.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use kvm_bindings::{
    kvm_guest_debug, kvm_regs, kvm_sregs, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP,
};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::runtime::seccomp::{Confinement, SeccompError, ThreadKind};
use crate::runtime::stop::StopReason;
use crate::vstate::memory::GuestRam;

/// The vCPU ioctl numbers (as kvm-ioctls defines them; its own are private).
#[allow(missing_docs)]
mod ioctls {
    use kvm_bindings::{kvm_guest_debug, kvm_regs, kvm_sregs, KVMIO};
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_GUEST_DEBUG, KVMIO, 0x9b, kvm_guest_debug);
}
use ioctls::{KVM_GET_REGS, KVM_GET_SREGS, KVM_SET_GUEST_DEBUG, KVM_SET_REGS};

/// The number of hardware breakpoints (DR0–DR3).
pub const HW_BREAKPOINTS: usize = 4;

/// `EOPNOTSUPP`, the errno of the error reply to `Z0`.
const EOPNOTSUPP: u8 = 95;

/// How often the vCPU thread, waiting for the debugger, looks at the VM's stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often the gdb thread, while the guest runs, looks for data from the client.
const CONN_POLL: Duration = Duration::from_millis(5);

/// Errors of the gdb server.
#[derive(Debug, Error)]
pub enum GdbError {
    /// The address could not be bound.
    #[error("cannot listen for gdb on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The vCPU fd could not be duplicated.
    #[error("cannot duplicate the vCPU fd for gdb: {0}")]
    Dup(std::io::Error),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        source: std::io::Error,
    },
    /// The vCPU thread has gone.
    #[error("the vCPU thread ended")]
    VcpuGone,
    /// The gdb thread's seccomp filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The gdb thread could not be started.
    #[error("cannot start the gdb thread: {0}")]
    Thread(std::io::Error),
}

/// Why the vCPU stopped for the debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugStop {
    /// Before the first instruction, or at a `KVM_EXIT_DEBUG` (breakpoint, step).
    Debug,
    /// Kicked out of the guest by the debugger's interrupt (Ctrl-C).
    Interrupt,
}

/// What the vCPU thread tells the gdb thread.
#[derive(Debug)]
enum VcpuEvent {
    /// The vCPU stopped and waits.
    Stopped(DebugStop),
    /// The guest stopped for good: its exit status, if it exited.
    Exited(Option<u8>),
}

/// What the gdb thread tells a waiting vCPU thread.
#[derive(Debug)]
enum Resume {
    /// Enter the guest again.
    Run,
    /// Stop the guest.
    Kill,
}

/// The vCPU thread's end of the debugger link.
#[derive(Debug)]
pub struct VcpuDebug {
    events: Sender<VcpuEvent>,
    resume: Receiver<Resume>,
    interrupt: Arc<AtomicBool>,
    /// Disconnected when the gdb thread has ended (its sender is dropped with it).
    done: Receiver<()>,
}

/// How long the vCPU thread, once the guest stopped for good, waits for the gdb thread to
/// send the client its last stop reply (`W` or `X`) and end, before the run (and perhaps
/// the process) ends under it.
const LAST_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl VcpuDebug {
    /// Whether the debugger asked to stop the running guest (Ctrl-C); clears the request.
    /// The run loop asks on each interrupted `KVM_RUN`.
    pub fn take_interrupt(&self) -> bool {
        self.interrupt.swap(false, Ordering::AcqRel)
    }

    /// Called on the vCPU thread when the vCPU stopped for the debugger: reports it and
    /// waits until told to run on (`None`), or to stop (`Some`: the debugger killed the
    /// guest, or the VM's `stop` flag was raised by the watchdog or a signal). A debugger
    /// that has gone lets the guest run.
    pub fn stopped(&self, why: DebugStop, stop: &AtomicBool) -> Option<StopReason> {
        // An interrupt requested now would be for a guest that is already stopped.
        self.interrupt.store(false, Ordering::Release);
        if self.events.send(VcpuEvent::Stopped(why)).is_err() {
            return None;
        }
        loop {
            match self.resume.recv_timeout(STOP_POLL) {
                Ok(Resume::Run) | Err(RecvTimeoutError::Disconnected) => return None,
                Ok(Resume::Kill) => {
                    return Some(StopReason::InternalError {
                        detail: "killed by the debugger".into(),
                    })
                }
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Acquire) => {
                    return Some(StopReason::Timeout {
                        rip: None,
                        disk: crate::runtime::signals::DiskFlush::NoDisk,
                    })
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Called on the vCPU thread when the guest stopped for good.
    pub fn exited(&self, stop: &StopReason) {
        let code = match stop {
            StopReason::Exit(c) => Some(*c),
            _ => None,
        };
        let _ = self.events.send(VcpuEvent::Exited(code));
        // The client is told before the process can end (the gdb thread is not joined).
        let _ = self.done.recv_timeout(LAST_REPLY_WAIT);
    }
}

/// A bound gdb listener, before the VM runs.
#[derive(Debug)]
pub struct GdbListener {
    listener: TcpListener,
}

impl GdbListener {
    /// Binds `addr` (port 0 picks a free port: see [`GdbListener::local_addr`]).
    pub fn bind(addr: std::net::SocketAddr) -> Result<Self, GdbError> {
        let listener = TcpListener::bind(addr).map_err(|source| GdbError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Starts the `pvkit-gdb` thread serving vCPU `fd` (a duplicate of vCPU 0's fd) over
    /// guest RAM `mem`; returns the vCPU thread's end of the link. The thread accepts one
    /// connection, serves it until detach, kill, disconnect or the guest's end, and exits.
    /// `kick` forces the vCPU thread out of `KVM_RUN` (on Ctrl-C). With `seccomp`, the
    /// thread confines itself with the gdb filter ([`ThreadKind::Gdb`]) before it waits
    /// for the vCPU or accepts the client.
    pub fn serve(
        self,
        fd: OwnedFd,
        mem: GuestRam,
        kick: Box<dyn Fn() + Send>,
        seccomp: bool,
    ) -> Result<VcpuDebug, GdbError> {
        let confinement = Confinement::when(seccomp, ThreadKind::Gdb)?;
        let (events_tx, events_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel();
        let interrupt = Arc::new(AtomicBool::new(false));
        let target = GdbTarget {
            fd,
            mem,
            events: events_rx,
            resume: resume_tx,
            interrupt: Arc::clone(&interrupt),
            kick,
            bps: [None; HW_BREAKPOINTS],
            stepping: false,
            running: false,
            exited: None,
        };
        let (done_tx, done) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("pvkit-gdb".into())
            .spawn(move || {
                let _ended = done_tx;
                serve(self.listener, target, confinement)
            })
            .map_err(GdbError::Thread)?;
        Ok(VcpuDebug {
            events: events_tx,
            resume: resume_rx,
            interrupt,
            done,
        })
    }
}

/// The gdb thread body.
fn serve(listener: TcpListener, mut target: GdbTarget, confinement: Option<Confinement>) {
    if let Some(c) = confinement {
        if let Err(e) = c.apply() {
            // Unreachable where the vCPU thread could be confined (same kernel): no
            // debugger then, and the guest is stopped rather than run unobserved.
            eprintln!("pvkit: gdb: {e}; stopping the guest");
            if target.wait_stop().is_ok() {
                target.release(true);
            }
            return;
        }
    }
    // Wait for the vCPU's first stop (before its first instruction).
    if target.wait_stop().is_err() {
        return;
    }
    let stream = match listener.accept() {
        Ok((s, _)) => s,
        Err(e) => {
            eprintln!("pvkit: gdb: accept failed: {e}; the guest runs on");
            target.release(false);
            return;
        }
    };
    drop(listener);
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; PACKET_BUFFER];
    let stub = match GdbStub::builder(Tcp(stream))
        .with_packet_buffer(&mut buf)
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pvkit: gdb: cannot start: {e}; the guest runs on");
            target.release(false);
            return;
        }
    };
    let reason = stub.run_blocking::<EventLoop>(&mut target);
    match reason {
        Ok(DisconnectReason::Kill) => target.release(true),
        Ok(_) => target.release(false),
        Err(e) => {
            eprintln!("pvkit: gdb: session ended: {e}; the guest runs on");
            target.release(false);
        }
    }
}

/// The packet buffer's size (a `g` reply of `X86_64_SSE` is ~1.1 KiB of hex).
const PACKET_BUFFER: usize = 4096;

/// The client's TCP stream as a gdbstub connection (gdbstub's own impl needs its `std`
/// feature, whose `managed/alloc` would change `smoltcp`'s no-alloc build in this
/// workspace).
struct Tcp(std::net::TcpStream);

impl Connection for Tcp {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        std::io::Write::write_all(&mut self.0, &[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        std::io::Write::write_all(&mut self.0, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        std::io::Write::flush(&mut self.0)
    }
}

impl ConnectionExt for Tcp {
    fn read(&mut self) -> Result<u8, Self::Error> {
        self.0.set_nonblocking(false)?;
        let mut b = [0u8];
        std::io::Read::read_exact(&mut self.0, &mut b)?;
        let [byte] = b;
        Ok(byte)
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        self.0.set_nonblocking(true)?;
        let mut b = [0u8];
        let r = match self.0.peek(&mut b) {
            // End of stream: let `read` report it.
            Ok(0) => Ok(Some(0)),
            Ok(_) => Ok(Some(b).map(|[byte]| byte)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        };
        self.0.set_nonblocking(false)?;
        r
    }
}

/// The target: vCPU 0 through its duplicated fd, and guest RAM.
struct GdbTarget {
    fd: OwnedFd,
    mem: GuestRam,
    events: Receiver<VcpuEvent>,
    resume: Sender<Resume>,
    /// Raised on Ctrl-C, taken by the vCPU's run loop.
    interrupt: Arc<AtomicBool>,
    /// Kicks the vCPU thread out of `KVM_RUN`.
    kick: Box<dyn Fn() + Send>,
    bps: [Option<u64>; HW_BREAKPOINTS],
    /// The last resume was a single step.
    stepping: bool,
    /// The vCPU is in the guest (not waiting for us).
    running: bool,
    /// The guest has stopped for good (its exit status, if it exited).
    exited: Option<Option<u8>>,
}

fn io_err(what: &'static str) -> impl FnOnce(i32) -> GdbError {
    move |_| GdbError::Kvm {
        what,
        source: std::io::Error::last_os_error(),
    }
}

impl GdbTarget {
    fn get_regs(&self) -> Result<kvm_regs, GdbError> {
        let mut r = kvm_regs::default();
        // SAFETY: KVM_GET_REGS writes exactly one `kvm_regs` into `r`, which lives for the call.
        let ret =
            unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.fd, KVM_GET_REGS(), &mut r) };
        if ret < 0 {
            return Err(io_err("KVM_GET_REGS")(ret));
        }
        Ok(r)
    }

    fn set_regs(&self, r: &kvm_regs) -> Result<(), GdbError> {
        // SAFETY: KVM_SET_REGS reads one `kvm_regs` from `r`.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_SET_REGS(), r) };
        if ret < 0 {
            return Err(io_err("KVM_SET_REGS")(ret));
        }
        Ok(())
    }

    fn get_sregs(&self) -> Result<kvm_sregs, GdbError> {
        let mut s = kvm_sregs::default();
        // SAFETY: KVM_GET_SREGS writes exactly one `kvm_sregs` into `s`.
        let ret =
            unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.fd, KVM_GET_SREGS(), &mut s) };
        if ret < 0 {
            return Err(io_err("KVM_GET_SREGS")(ret));
        }
        Ok(s)
    }

    /// Sets `KVM_SET_GUEST_DEBUG`: single-step or not, with the breakpoints (unless
    /// `without_bps`, for stepping over one).
    fn set_debug(&self, enable: bool, step: bool, without_bps: bool) -> Result<(), GdbError> {
        let mut dbg = kvm_guest_debug::default();
        if enable {
            dbg.control = KVM_GUESTDBG_ENABLE;
            if step {
                dbg.control |= KVM_GUESTDBG_SINGLESTEP;
            }
            let mut dr7 = 0u64;
            if !without_bps {
                for (i, (bp, dr)) in self.bps.iter().zip(&mut dbg.arch.debugreg).enumerate() {
                    if let Some(addr) = bp {
                        *dr = *addr;
                        dr7 |= 1 << (2 * i); // Ln: local enable; R/W = 00, LEN = 00: execute.
                    }
                }
            }
            if dr7 != 0 {
                dbg.control |= KVM_GUESTDBG_USE_HW_BP;
                if let Some(d) = dbg.arch.debugreg.get_mut(7) {
                    *d = dr7;
                }
            }
        }
        // SAFETY: KVM_SET_GUEST_DEBUG reads one `kvm_guest_debug` from `dbg`.
        let ret =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_SET_GUEST_DEBUG(), &dbg) };
        if ret < 0 {
            return Err(io_err("KVM_SET_GUEST_DEBUG")(ret));
        }
        Ok(())
    }

    /// Lets the waiting vCPU run.
    fn run(&mut self) -> Result<(), GdbError> {
        self.resume
            .send(Resume::Run)
            .map_err(|_| GdbError::VcpuGone)?;
        self.running = true;
        Ok(())
    }

    /// Waits (blocking) for the vCPU's next report.
    fn wait_stop(&mut self) -> Result<(), GdbError> {
        match self.events.recv() {
            Ok(VcpuEvent::Stopped(_)) => {
                self.running = false;
                self.interrupt.store(false, Ordering::Release);
                Ok(())
            }
            Ok(VcpuEvent::Exited(code)) => {
                self.running = false;
                self.exited = Some(code);
                Ok(())
            }
            Err(_) => Err(GdbError::VcpuGone),
        }
    }

    /// Resumes the guest for gdb's `c` (`step` false) or `s` (`step` true). With `RIP` at
    /// a breakpoint, the instruction there is stepped with the breakpoints off (a hardware
    /// breakpoint fires again on resume otherwise), then `c` goes on with them on.
    fn resume_guest(&mut self, step: bool) -> Result<(), GdbError> {
        self.stepping = step;
        let rip = self.get_regs()?.rip;
        let at_bp = self.bps.contains(&Some(rip));
        if step {
            // A breakpoint at `RIP` would fire again before the instruction runs.
            self.set_debug(true, true, at_bp)?;
            return self.run();
        }
        if at_bp {
            self.set_debug(true, true, true)?;
            self.run()?;
            self.wait_stop()?;
            if self.exited.is_some() {
                return Ok(());
            }
        }
        self.set_debug(true, false, false)?;
        self.run()
    }

    /// Ends the session: guest debugging off, and the vCPU let go (`kill`: stopped).
    fn release(&mut self, kill: bool) {
        if self.exited.is_some() {
            return;
        }
        let _ = self.set_debug(false, false, false);
        if !self.running {
            let _ = self
                .resume
                .send(if kill { Resume::Kill } else { Resume::Run });
        }
    }
}

impl Target for GdbTarget {
    type Arch = X86_64_SSE;
    type Error = GdbError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        let r = self.get_regs().map_err(TargetError::Fatal)?;
        let s = self.get_sregs().map_err(TargetError::Fatal)?;
        regs.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        regs.rip = r.rip;
        regs.eflags = r.rflags as u32;
        regs.segments.cs = u32::from(s.cs.selector);
        regs.segments.ss = u32::from(s.ss.selector);
        regs.segments.ds = u32::from(s.ds.selector);
        regs.segments.es = u32::from(s.es.selector);
        regs.segments.fs = u32::from(s.fs.selector);
        regs.segments.gs = u32::from(s.gs.selector);
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
        let mut r = self.get_regs().map_err(TargetError::Fatal)?;
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15] =
            regs.regs;
        r = kvm_regs {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rbp,
            rsp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            rip: regs.rip,
            rflags: (r.rflags & !0xffff_ffff) | u64::from(regs.eflags),
        };
        self.set_regs(&r).map_err(TargetError::Fatal)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        // Guest-physical = virtual (the boot identity map); vm-memory checks the bounds.
        self.mem
            .read_slice(data, GuestAddress(start))
            .map(|()| data.len())
            .map_err(|_| TargetError::Errno(14)) // EFAULT
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        self.mem
            .write_slice(data, GuestAddress(start))
            .map_err(|_| TargetError::Errno(14))
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for GdbTarget {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume_guest(false)
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for GdbTarget {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume_guest(true)
    }
}

impl Breakpoints for GdbTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for GdbTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        eprintln!(
            "pvkit: gdb: software breakpoint at {addr:#x} refused: an int3 in guest ring 0 \
             kills the vCPU on kvm_pvm; use a hardware breakpoint (hbreak, at most {HW_BREAKPOINTS})"
        );
        Err(TargetError::Errno(EOPNOTSUPP))
    }

    fn remove_sw_breakpoint(&mut self, _addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Err(TargetError::Errno(EOPNOTSUPP))
    }
}

impl HwBreakpoint for GdbTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.bps.contains(&Some(addr)) {
            return Ok(true);
        }
        match self.bps.iter_mut().find(|b| b.is_none()) {
            Some(slot) => {
                *slot = Some(addr);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        match self.bps.iter_mut().find(|b| **b == Some(addr)) {
            Some(slot) => {
                *slot = None;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The blocking event loop: polls the vCPU's channel and the connection in turn.
enum EventLoop {}

impl BlockingEventLoop for EventLoop {
    type Target = GdbTarget;
    type Connection = Tcp;
    type StopReason = SingleThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut GdbTarget,
        conn: &mut Self::Connection,
    ) -> Result<
        Event<Self::StopReason>,
        WaitForStopReasonError<GdbError, <Self::Connection as Connection>::Error>,
    > {
        loop {
            if let Some(code) = target.exited {
                return Ok(Event::TargetStopped(exit_reason(code)));
            }
            match target.events.recv_timeout(CONN_POLL) {
                Ok(VcpuEvent::Stopped(why)) => {
                    target.running = false;
                    target.interrupt.store(false, Ordering::Release);
                    return Ok(Event::TargetStopped(match (why, target.stepping) {
                        (DebugStop::Interrupt, _) => SingleThreadStopReason::Signal(Signal::SIGINT),
                        (DebugStop::Debug, true) => SingleThreadStopReason::DoneStep,
                        (DebugStop::Debug, false) => SingleThreadStopReason::HwBreak(()),
                    }));
                }
                Ok(VcpuEvent::Exited(code)) => {
                    target.running = false;
                    target.exited = Some(code);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(WaitForStopReasonError::Target(GdbError::VcpuGone))
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(byte) = conn.peek().map_err(WaitForStopReasonError::Connection)? {
                        let _ = byte;
                        let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                        return Ok(Event::IncomingData(b));
                    }
                }
            }
        }
    }

    /// Ctrl-C: the vCPU is kicked out of the guest; its stop (`SIGINT`) is reported by
    /// [`Self::wait_for_stop_reason`] when the vCPU thread says it stopped.
    fn on_interrupt(target: &mut GdbTarget) -> Result<Option<Self::StopReason>, GdbError> {
        if target.running && target.exited.is_none() {
            target.interrupt.store(true, Ordering::Release);
            (target.kick)();
        }
        Ok(None)
    }
}

/// The stop reply for a guest that stopped for good.
fn exit_reason(code: Option<u8>) -> SingleThreadStopReason<u64> {
    match code {
        Some(c) => SingleThreadStopReason::Exited(c),
        None => SingleThreadStopReason::Terminated(Signal::SIGKILL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::seccomp::GDB_IOCTLS;

    /// Every vCPU ioctl this thread makes is in the gdb thread's seccomp filter.
    #[test]
    fn the_gdb_filter_allows_exactly_the_ioctls_used_here() {
        let used = [
            (KVM_GET_REGS(), "KVM_GET_REGS"),
            (KVM_SET_REGS(), "KVM_SET_REGS"),
            (KVM_GET_SREGS(), "KVM_GET_SREGS"),
            (KVM_SET_GUEST_DEBUG(), "KVM_SET_GUEST_DEBUG"),
        ];
        for (nr, name) in used {
            assert!(
                GDB_IOCTLS.contains(&(nr, name)),
                "{name} ({nr:#x}) is not in GDB_IOCTLS"
            );
        }
        // And FIONBIO (`set_nonblocking` for the Ctrl-C peek); nothing else.
        assert_eq!(GDB_IOCTLS.len(), used.len() + 1);
    }
}
