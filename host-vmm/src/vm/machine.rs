//! The VM as its vCPU threads share it ([`Vm`], behind an `Arc`), the state each vCPU
//! thread owns ([`VcpuState`]: its ledger shard, bench records and timings), and the loop a
//! vCPU thread runs ([`run_vcpu`]).
//!
//! This is where the layers meet: a [`Vcpu`] hands out each exit, [`handle_exit`] routes it
//! to the buses of [`VmShared`], and hypercalls go to the PV layer through
//! [`PvCalls`] (a call of `hypercall::dispatch` with guest memory and a context).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::VmFd;
use pvkit_abi::call::RawCall;

use crate::debug::gdb::{DebugStop, VcpuDebug};
use crate::devices::pv::vcpu_up::VcpuUp;
use crate::devices::pv::HypercallBus;
use crate::exit::ledger::{ExitKind, ExitLedger, LedgerSnapshot};
use crate::exit::record::ExitRecorder;
use crate::exit::{handle_exit, Exit, ExitAction, Hypercalls, VcpuExits, VmShared};
use crate::hypercall::{self, HypercallContext, Outcome};
use crate::runtime::stop::StopReason;
use crate::vstate::memory::GuestRam;
use crate::vstate::vcpu::{Vcpu, VcpuError};

/// One VM: what every vCPU thread shares (through an `Arc`). RAM, the buses and the PV
/// devices on the hypercall bus are all used through `&self`.
pub struct Vm {
    /// The KVM VM fd (`None` in unit tests that feed synthetic exits without KVM). It
    /// outlives every vCPU fd, as each vCPU thread holds the `Arc<Vm>`.
    pub fd: Option<Arc<VmFd>>,
    /// Guest RAM, the port and MMIO buses, the stop flag.
    pub shared: VmShared,
    /// The PV devices, by hypercall number.
    pub pv: HypercallBus,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// A VM over `shared` with the PV devices on `pv`.
    pub fn new(fd: Option<Arc<VmFd>>, shared: VmShared, pv: HypercallBus) -> Self {
        Self { fd, shared, pv }
    }

    /// Guest RAM.
    pub fn mem(&self) -> &GuestRam {
        &self.shared.mem
    }
}

/// What one vCPU thread owns: its exit state (ledger shard, first-exit times) and its
/// timings. Merged with the other vCPUs' by [`merge_ledgers`].
#[derive(Debug)]
pub struct VcpuState {
    /// The vCPU's index.
    pub index: u64,
    /// Ledger shard and first-exit times.
    pub exits: VcpuExits,
    /// When the vCPU first entered the guest.
    pub entered: Option<Instant>,
    /// When it stopped.
    pub stopped: Option<Instant>,
    /// Per-exit records (`RIP` profile, trace), when asked for.
    pub recorder: Option<ExitRecorder>,
    /// The gdb link (`pvkit run --gdb`), for vCPU 0 only.
    pub debug: Option<VcpuDebug>,
    /// KVM's count of all the vCPU's exits (in-kernel included) when it stopped.
    pub kvm_exits: Option<u64>,
}

impl VcpuState {
    /// The state of vCPU `index`, counting exits in `ledger` (vCPU 0: the VM's ledger;
    /// the others: a [`ExitLedger::shard`] of it).
    pub fn new(index: u64, ledger: ExitLedger) -> Self {
        Self {
            index,
            exits: VcpuExits::new(ledger),
            entered: None,
            stopped: None,
            recorder: None,
            debug: None,
            kvm_exits: None,
        }
    }

    /// Handles one exit of this vCPU on `vm`.
    pub fn handle(&mut self, vm: &Vm, exit: Exit<'_>) -> ExitAction {
        let mut calls = PvCalls {
            bus: &vm.pv,
            vcpu: u32::try_from(self.index).unwrap_or(u32::MAX),
        };
        if let Some(r) = &mut self.recorder {
            r.note(&exit);
        }
        handle_exit(&vm.shared, &mut self.exits, &mut calls, exit)
    }
}

/// The ledgers of every vCPU added up ([`LedgerSnapshot::merge`]): the VM's exit counts.
pub fn merge_ledgers<'a>(cpus: impl IntoIterator<Item = &'a VcpuState>) -> LedgerSnapshot {
    let mut all = LedgerSnapshot::default();
    for c in cpus {
        all.merge(&c.exits.ledger.snapshot());
    }
    all
}

/// Hypercalls of one vCPU, served by the PV layer's dispatch.
pub struct PvCalls<'a> {
    /// The VM's PV devices.
    pub bus: &'a HypercallBus,
    /// The calling vCPU's index.
    pub vcpu: u32,
}

impl Hypercalls for PvCalls<'_> {
    fn hypercall(&mut self, mem: &GuestRam, raw: RawCall, ledger: &ExitLedger) -> ExitAction {
        let ctx = HypercallContext {
            ledger,
            bus: self.bus,
            vcpu: self.vcpu,
        };
        match hypercall::dispatch(mem, raw, &ctx) {
            Outcome::Return(r) => ExitAction::Return(r),
            Outcome::Stop(s) => ExitAction::Stop(s),
        }
    }
}

/// A vCPU index as the PV devices name it.
fn pv_index(index: u64) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// An application processor's loop (vCPUs 1..N-1): the vCPU waits in `KVM_RUN` for
/// INIT-SIPI from the in-kernel LAPIC (the emulated start), or for a `VcpuUp` start in
/// `up`, which the VMM delivers by kicking this thread out of `KVM_RUN` (the kick counts as
/// one [`Exit::Interrupted`]); then it runs like vCPU 0 until an exit stops it. The kick
/// that stops it at the end of the run (`stop_requested` set) is not counted: an AP that
/// never started exits nothing.
///
/// A pause (`VmShared::pause_requested`) returns [`VcpuEnd::Paused`] at the interrupted
/// `KVM_RUN` it kicked, started AP or not (counted: one [`Exit::Interrupted`]); the thread
/// parks the vCPU and calls this again on resume (a start posted before the pause is then
/// taken).
pub fn run_ap(
    vcpu: &mut Vcpu,
    vm: &Vm,
    cpu: &mut VcpuState,
    up: &VcpuUp,
) -> Result<VcpuEnd, VcpuError> {
    let index = cpu.index;
    let stop = loop {
        let mut teardown = false;
        if let Some(s) = up.take_start(index) {
            vcpu.start_long_mode(s.rip, s.rsp, s.arg)?;
            cpu.entered.get_or_insert_with(Instant::now);
        }
        vm.pv.before_run(vm.mem(), pv_index(index));
        let action = vcpu.run(|exit| {
            if matches!(exit, Exit::Interrupted) {
                if vm.shared.stop_requested.load(Ordering::Acquire) {
                    teardown = true;
                    return ExitAction::Stop(StopReason::Timeout {
                        rip: None,
                        disk: crate::runtime::signals::DiskFlush::NoDisk,
                    });
                }
            } else {
                // Guest code runs: INIT-SIPI started this AP if `VcpuUp` did not.
                up.mark_running(index);
                cpu.entered.get_or_insert_with(Instant::now);
            }
            cpu.handle(vm, exit)
        })?;
        if let (Some(r), false) = (&mut cpu.recorder, teardown) {
            r.record(cpu.exits.ledger.last(), vcpu.exit_rip());
        }
        match action {
            ExitAction::Continue => {
                let interrupted = cpu.exits.ledger.last() == Some(ExitKind::Interrupted);
                if interrupted && vm.shared.pause_requested.load(Ordering::Acquire) {
                    return Ok(VcpuEnd::Paused);
                }
            }
            ExitAction::Return(ret) => vcpu.set_return(ret)?,
            ExitAction::Stop(reason) => break reason,
        }
    };
    cpu.stopped = Some(Instant::now());
    cpu.kvm_exits = vcpu.kvm_exits();
    Ok(VcpuEnd::Stopped(stop))
}

/// Why [`run_vcpu`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The guest stopped.
    Stopped(StopReason),
    /// A pause was requested (`VmShared::pause_requested`) and the vCPU is out of
    /// `KVM_RUN` at a clean point: interrupted, with no I/O pending
    /// ([`crate::vm::control`]).
    Paused,
}

/// Runs `vcpu` on `vm` until an exit stops it or a pause is requested: each exit is
/// handled by `cpu`, a hypercall's results go back into the vCPU's registers.
pub fn run_vcpu(vcpu: &mut Vcpu, vm: &Vm, cpu: &mut VcpuState) -> Result<VcpuEnd, VcpuError> {
    cpu.entered.get_or_insert_with(Instant::now);
    // Under gdb: stopped before the first instruction; `KVM_EXIT_DEBUG` is the debugger's.
    let debugging = cpu.debug.is_some();
    let stop_flag = &vm.shared.stop_requested;
    let stop = 'run: {
        if let Some(stop) = cpu
            .debug
            .as_ref()
            .and_then(|d| d.stopped(DebugStop::Debug, stop_flag))
        {
            break 'run stop;
        }
        loop {
            vm.pv.before_run(vm.mem(), pv_index(cpu.index));
            let action = vcpu.run(|exit| match exit {
                Exit::Other {
                    reason: kvm_bindings::KVM_EXIT_DEBUG,
                } if debugging => Err(DebugStop::Debug),
                // The debugger's Ctrl-C kicked the vCPU: its stop, not a counted exit.
                Exit::Interrupted if cpu.debug.as_ref().is_some_and(VcpuDebug::take_interrupt) => {
                    Err(DebugStop::Interrupt)
                }
                exit => Ok(cpu.handle(vm, exit)),
            })?;
            let action = match action {
                Ok(action) => action,
                Err(why) => match cpu.debug.as_ref().and_then(|d| d.stopped(why, stop_flag)) {
                    Some(stop) => break 'run stop,
                    None => continue,
                },
            };
            if let Some(r) = &mut cpu.recorder {
                r.record(cpu.exits.ledger.last(), vcpu.exit_rip());
            }
            match action {
                ExitAction::Continue => {
                    // Only at an interrupted `KVM_RUN`: no I/O of the guest is pending.
                    let interrupted = cpu.exits.ledger.last() == Some(ExitKind::Interrupted);
                    if interrupted && vm.shared.pause_requested.load(Ordering::Acquire) {
                        return Ok(VcpuEnd::Paused);
                    }
                }
                ExitAction::Return(ret) => vcpu.set_return(ret)?,
                ExitAction::Stop(reason) => break 'run reason,
            }
        }
    };
    if let Some(d) = &cpu.debug {
        d.exited(&stop);
    }
    cpu.stopped = Some(Instant::now());
    cpu.kvm_exits = vcpu.kvm_exits();
    Ok(VcpuEnd::Stopped(stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::PortBus;
    use crate::exit::ledger::ExitKind;
    use crate::io::console_out::Console;
    use crate::vstate::memory::create_ram;
    use pvkit_abi::call::{CallReturn, Hypercall};
    use pvkit_abi::Status;
    use vm_memory::{Bytes, GuestAddress};

    fn vm() -> (Vm, Console) {
        let shared = VmShared::new(create_ram(4).unwrap(), PortBus::new());
        let console = Console::capture();
        let pv = crate::devices::core_devices(console.clone()).bus;
        (Vm::new(None, shared, pv), console)
    }

    #[test]
    fn hypercalls_reach_the_pv_dispatch_and_return_or_stop() {
        let (vm, console) = vm();
        let mut cpu = VcpuState::new(0, ExitLedger::new());
        vm.mem()
            .write_slice(b"pv!", GuestAddress(0x20_0000))
            .unwrap();
        let a = cpu.handle(
            &vm,
            Exit::Hypercall(RawCall {
                nr: Hypercall::ConsoleWrite as u32,
                args: [0x20_0000, 3, 0, 0],
            }),
        );
        assert_eq!(a, ExitAction::Return(CallReturn::ok(3)));
        assert!(cpu.exits.first_hypercall.is_some());
        let a = cpu.handle(
            &vm,
            Exit::Hypercall(RawCall {
                nr: 77,
                args: [0; 4],
            }),
        );
        assert_eq!(a, ExitAction::Return(CallReturn::err(Status::ENOSYS)));
        let a = cpu.handle(
            &vm,
            Exit::Hypercall(RawCall {
                nr: Hypercall::Exit as u32,
                args: [42, 0, 0, 0],
            }),
        );
        assert_eq!(a, ExitAction::Stop(StopReason::Exit(42)));
        assert_eq!(console.captured(), b"pv!");
        let l = &cpu.exits.ledger;
        assert_eq!(l.count(ExitKind::Hypercall(Hypercall::ConsoleWrite)), 1);
        assert_eq!(l.count(ExitKind::UnknownHypercall), 1);
        assert_eq!(l.count(ExitKind::PortWrite(0x500)), 0);
    }

    /// Two vCPU threads share one `Arc<Vm>`, each counting in its own shard; the merged
    /// ledger has every exit exactly once.
    #[test]
    fn vcpu_threads_share_the_vm_and_their_ledgers_merge_exactly() {
        let vm = Arc::new(vm().0);
        let ledger = ExitLedger::new();
        let shards = [ledger.shard(), ledger];
        let threads: Vec<_> = shards
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let vm = Arc::clone(&vm);
                std::thread::spawn(move || {
                    let mut cpu = VcpuState::new(i as u64, l);
                    for _ in 0..100 * (i + 1) {
                        let a = cpu.handle(
                            &vm,
                            Exit::IoOut {
                                port: 0x80,
                                data: &[1],
                            },
                        );
                        assert_eq!(a, ExitAction::Continue);
                    }
                    cpu.handle(&vm, Exit::Hlt);
                    cpu
                })
            })
            .collect();
        let cpus: Vec<VcpuState> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let all = merge_ledgers(&cpus);
        assert_eq!(all.count(ExitKind::PortWrite(0x80)), 300);
        assert_eq!(all.count(ExitKind::Hlt), 2);
        assert_eq!(all.total, 302);
    }
}
