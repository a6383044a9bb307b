//! VM exit handling: one plain function from an exit value to an action, and the exit
//! ledger ([`ledger`]).
//!
//! The run loop gets each KVM exit as an [`Exit`] from
//! [`Vcpu::run`](crate::vstate::vcpu::Vcpu::run), calls [`handle_exit`], and applies the
//! returned [`ExitAction`]. Port and MMIO exits go to the buses ([`crate::bus`]),
//! hypercalls to the [`Hypercalls`] handler the caller passes (the PV layer's dispatch):
//! this layer imports no device. Nothing here touches KVM, so every path is unit tested
//! with synthetic exits.
//!
//! State is split as the threads share it: [`VmShared`] (guest RAM, buses, the stop flag)
//! is read by every vCPU thread through `&self`; [`VcpuExits`] (the ledger shard, first-exit
//! times) belongs to one vCPU thread and is merged for reports.

pub mod ledger;
pub mod record;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pvkit_abi::call::{CallReturn, Hypercall, RawCall};

use crate::bus::{MmioBus, PortBus};
use crate::runtime::stop::StopReason;
use crate::vstate::memory::GuestRam;
use ledger::{ExitKind, ExitLedger};

pub use crate::vstate::vcpu::{decode_hypercall, Exit};

/// What the run loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Resume the guest.
    Continue,
    /// Put a hypercall's results in `RAX`/`RDX`, then resume.
    Return(CallReturn),
    /// Stop the VM.
    Stop(StopReason),
}

/// Serves hypercalls: the seam between exit handling and the PV layer (which implements
/// it over `hypercall::dispatch`).
pub trait Hypercalls {
    /// Serves `raw` on the calling vCPU; its exit is already counted in `ledger`.
    fn hypercall(&mut self, mem: &GuestRam, raw: RawCall, ledger: &ExitLedger) -> ExitAction;
}

/// The VM-wide part of exit handling, shared by every vCPU thread: guest RAM, the port and
/// MMIO buses, and the stop flag.
#[derive(Debug)]
pub struct VmShared {
    /// Guest RAM.
    pub mem: GuestRam,
    /// Port devices.
    pub pio: PortBus,
    /// MMIO devices (the ledger counts MMIO exits under their region's name).
    pub mmio: MmioBus,
    /// Set by the watchdog before it kicks the vCPUs: an interrupted `KVM_RUN` then means
    /// "time is up", otherwise it was spurious and the guest resumes.
    pub stop_requested: Arc<AtomicBool>,
    /// Set by the VM's controller before it kicks vCPU 0 to pause it
    /// (`crate::vm::control`): an interrupted `KVM_RUN` then parks the vCPU.
    pub pause_requested: Arc<AtomicBool>,
}

impl VmShared {
    /// `mem` with the port bus `pio`, an empty MMIO bus and a clear stop flag.
    pub fn new(mem: GuestRam, pio: PortBus) -> Self {
        Self {
            mem,
            pio,
            mmio: MmioBus::new(),
            stop_requested: Arc::new(AtomicBool::new(false)),
            pause_requested: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// One vCPU's part of exit handling: its ledger shard and first-exit times.
#[derive(Debug, Default)]
pub struct VcpuExits {
    /// This vCPU's exit counts ([`ExitLedger::shard`] of the VM's ledger).
    pub ledger: ExitLedger,
    /// When this vCPU's first exit happened.
    pub first_exit: Option<Instant>,
    /// When this vCPU's guest code made its first hypercall.
    pub first_hypercall: Option<Instant>,
}

impl VcpuExits {
    /// Counts exits in `ledger`.
    pub fn new(ledger: ExitLedger) -> Self {
        Self {
            ledger,
            first_exit: None,
            first_hypercall: None,
        }
    }
}

/// The ledger name of the MMIO region holding `addr` (`"unmapped"` outside every region,
/// where reads return all ones and writes are dropped).
fn mmio_name(mmio: &MmioBus, addr: u64) -> &'static str {
    mmio.name(addr).unwrap_or("unmapped")
}

/// Handles one exit: counts it in the ledger, then routes it.
pub fn handle_exit(
    vm: &VmShared,
    cpu: &mut VcpuExits,
    calls: &mut dyn Hypercalls,
    exit: Exit<'_>,
) -> ExitAction {
    cpu.first_exit.get_or_insert_with(Instant::now);
    match exit {
        Exit::IoOut { port, data } => {
            cpu.ledger.record(ExitKind::PortWrite(port));
            vm.pio.write(port.into(), data);
            ExitAction::Continue
        }
        Exit::IoIn { port, data } => {
            cpu.ledger.record(ExitKind::PortRead(port));
            vm.pio.read(port.into(), data);
            ExitAction::Continue
        }
        Exit::Hypercall(raw) => {
            cpu.first_hypercall.get_or_insert_with(Instant::now);
            cpu.ledger.record(match Hypercall::try_from(raw.nr) {
                Ok(h) => ExitKind::Hypercall(h),
                Err(_) => ExitKind::UnknownHypercall,
            });
            calls.hypercall(&vm.mem, raw, &cpu.ledger)
        }
        Exit::MmioRead { addr, data } => {
            cpu.ledger
                .record(ExitKind::MmioRead(mmio_name(&vm.mmio, addr)));
            vm.mmio.read(addr, data);
            ExitAction::Continue
        }
        Exit::MmioWrite { addr, data } => {
            cpu.ledger
                .record(ExitKind::MmioWrite(mmio_name(&vm.mmio, addr)));
            vm.mmio.write(addr, data);
            ExitAction::Continue
        }
        Exit::Hlt => {
            // No interrupt controller and no interrupt sources in ABI v1: nothing can
            // ever wake a halted vCPU.
            cpu.ledger.record(ExitKind::Hlt);
            ExitAction::Stop(StopReason::Halted { rip: None })
        }
        Exit::Shutdown => {
            cpu.ledger.record(ExitKind::Shutdown);
            ExitAction::Stop(StopReason::Shutdown { rip: None })
        }
        Exit::InternalError { suberror } => {
            cpu.ledger.record(ExitKind::InternalError);
            let what = match suberror {
                kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
                    " (instruction emulation failed; SSE or another unsupported instruction?)"
                }
                kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => " (simultaneous exceptions)",
                kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => " (delivery event)",
                kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => {
                    " (unexpected exit reason)"
                }
                _ => "",
            };
            ExitAction::Stop(StopReason::InternalError {
                detail: format!("suberror {suberror}{what}"),
            })
        }
        Exit::FailEntry { reason } => {
            cpu.ledger.record(ExitKind::InternalError);
            ExitAction::Stop(StopReason::InternalError {
                detail: format!("entry failed, hardware reason {reason:#x}"),
            })
        }
        Exit::Interrupted => {
            cpu.ledger.record(ExitKind::Interrupted);
            if vm.stop_requested.load(Ordering::Acquire) {
                ExitAction::Stop(StopReason::Timeout {
                    rip: None,
                    disk: crate::runtime::signals::DiskFlush::NoDisk,
                })
            } else {
                ExitAction::Continue
            }
        }
        Exit::Other { reason } => {
            cpu.ledger.record(ExitKind::Other);
            ExitAction::Stop(StopReason::InternalError {
                detail: format!("unexpected exit reason {reason}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::legacy::uart::{Uart, COM1_BASE, COM1_LEN};
    use crate::io::console_out::Console;
    use crate::vstate::memory::create_ram;

    /// A stand-in for the PV layer: records each call with the ledger total it saw and
    /// returns that total (or stops with it).
    #[derive(Default)]
    struct Calls {
        seen: Vec<(u32, u64)>,
        stop: bool,
    }

    impl Hypercalls for Calls {
        fn hypercall(&mut self, _mem: &GuestRam, raw: RawCall, ledger: &ExitLedger) -> ExitAction {
            self.seen.push((raw.nr, ledger.total()));
            match self.stop {
                true => ExitAction::Stop(StopReason::Exit(ledger.total() as u8)),
                false => ExitAction::Return(CallReturn::ok(ledger.total())),
            }
        }
    }

    struct M {
        vm: VmShared,
        cpu: VcpuExits,
        calls: Calls,
        console: Console,
    }

    /// Reads all ones, ignores writes (a named region without a device model).
    struct Unbacked;
    impl BusDevice for Unbacked {
        fn read(&self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn write(&self, _base: u64, _offset: u64, _data: &[u8]) {}
    }

    fn machine() -> M {
        let console = Console::capture();
        let mut bus = PortBus::new();
        bus.insert_mut(
            COM1_BASE.into(),
            COM1_LEN.into(),
            "com1",
            Uart::new(console.clone()),
        )
        .unwrap();
        M {
            vm: VmShared::new(create_ram(4).unwrap(), bus),
            cpu: VcpuExits::default(),
            calls: Calls::default(),
            console,
        }
    }

    fn handle_exit(m: &mut M, exit: Exit<'_>) -> ExitAction {
        super::handle_exit(&m.vm, &mut m.cpu, &mut m.calls, exit)
    }

    #[test]
    fn uart_output_and_counts() {
        let mut m = machine();
        for b in b"ok" {
            let mut lsr = [0u8];
            let a = handle_exit(
                &mut m,
                Exit::IoIn {
                    port: 0x3fd,
                    data: &mut lsr,
                },
            );
            assert_eq!(a, ExitAction::Continue);
            assert_ne!(lsr[0] & 0x20, 0);
            let a = handle_exit(
                &mut m,
                Exit::IoOut {
                    port: 0x3f8,
                    data: &[*b],
                },
            );
            assert_eq!(a, ExitAction::Continue);
        }
        assert_eq!(m.console.captured(), b"ok");
        assert_eq!(m.cpu.ledger.count(ExitKind::PortRead(0x3fd)), 2);
        assert_eq!(m.cpu.ledger.count(ExitKind::PortWrite(0x3f8)), 2);
        assert_eq!(m.cpu.ledger.total(), 4);
    }

    #[test]
    fn unclaimed_ports_read_all_ones() {
        let mut m = machine();
        let mut d = [0u8; 4];
        handle_exit(
            &mut m,
            Exit::IoIn {
                port: 0x80,
                data: &mut d,
            },
        );
        assert_eq!(d, [0xff; 4]);
        handle_exit(
            &mut m,
            Exit::IoOut {
                port: 0x80,
                data: &[1],
            },
        );
        assert_eq!(m.cpu.ledger.count(ExitKind::PortWrite(0x80)), 1);
    }

    #[test]
    fn string_writes_to_the_hypercall_port_are_not_calls() {
        let args = [1, 2, 3, 4];
        // `out dx, eax`: the dword is EAX.
        assert_eq!(decode_hypercall(4, 4, args), Some(RawCall { nr: 4, args }));
        // Upper half of RAX set: number 0 (ENOSYS), never an alias of the call in EAX.
        assert_eq!(
            decode_hypercall(4, 1 << 32 | 4, args),
            Some(RawCall { nr: 0, args })
        );
        // `rep outsd` of one dword from memory (EXIT) while EAX holds ABI_VERSION: refused.
        assert_eq!(decode_hypercall(Hypercall::Exit as u32, 1, args), None);
        // The refused write is an ordinary port write: counted, ignored, guest resumes.
        let mut m = machine();
        let data = (Hypercall::Exit as u32).to_le_bytes();
        assert_eq!(
            handle_exit(
                &mut m,
                Exit::IoOut {
                    port: pvkit_abi::ports::HYPERCALL,
                    data: &data,
                },
            ),
            ExitAction::Continue
        );
        assert_eq!(m.cpu.ledger.count(ExitKind::PortWrite(0x500)), 1);
        assert_eq!(m.cpu.ledger.count(ExitKind::Hypercall(Hypercall::Exit)), 0);
        assert_eq!(m.cpu.ledger.total(), 1);
        assert!(m.cpu.first_hypercall.is_none());
        assert!(m.calls.seen.is_empty());
    }

    #[test]
    fn hypercalls_are_counted_then_routed_to_the_handler() {
        let mut m = machine();
        let a = handle_exit(
            &mut m,
            Exit::Hypercall(RawCall {
                nr: Hypercall::ConsoleWrite as u32,
                args: [0x20_0000, 3, 0, 0],
            }),
        );
        assert_eq!(a, ExitAction::Return(CallReturn::ok(1)));
        assert!(m.cpu.first_hypercall.is_some());
        let a = handle_exit(
            &mut m,
            Exit::Hypercall(RawCall {
                nr: 77,
                args: [0; 4],
            }),
        );
        assert_eq!(a, ExitAction::Return(CallReturn::ok(2)));
        m.calls.stop = true;
        let a = handle_exit(
            &mut m,
            Exit::Hypercall(RawCall {
                nr: Hypercall::Exit as u32,
                args: [42, 0, 0, 0],
            }),
        );
        assert_eq!(a, ExitAction::Stop(StopReason::Exit(3)));
        // The handler saw each call with the ledger already counting its exit.
        assert_eq!(
            m.calls.seen,
            vec![
                (Hypercall::ConsoleWrite as u32, 1),
                (77, 2),
                (Hypercall::Exit as u32, 3)
            ]
        );
        assert_eq!(
            m.cpu
                .ledger
                .count(ExitKind::Hypercall(Hypercall::ConsoleWrite)),
            1
        );
        assert_eq!(m.cpu.ledger.count(ExitKind::UnknownHypercall), 1);
        assert_eq!(m.cpu.ledger.count(ExitKind::PortWrite(0x500)), 0);
    }

    #[test]
    fn mmio_is_counted_and_reads_all_ones() {
        let mut m = machine();
        m.vm.mmio
            .insert(0xfee0_0000, 0x1000, "lapic", Arc::new(Unbacked))
            .unwrap();
        let mut d = [0u8; 4];
        assert_eq!(
            handle_exit(
                &mut m,
                Exit::MmioRead {
                    addr: 0xfee0_0020,
                    data: &mut d
                }
            ),
            ExitAction::Continue
        );
        assert_eq!(d, [0xff; 4]);
        handle_exit(
            &mut m,
            Exit::MmioWrite {
                addr: 0xd000_0000,
                data: &[1],
            },
        );
        assert_eq!(m.cpu.ledger.count(ExitKind::MmioRead("lapic")), 1);
        assert_eq!(m.cpu.ledger.count(ExitKind::MmioWrite("unmapped")), 1);
    }

    #[test]
    fn terminal_exits() {
        let mut m = machine();
        assert_eq!(
            handle_exit(&mut m, Exit::Hlt),
            ExitAction::Stop(StopReason::Halted { rip: None })
        );
        assert_eq!(
            handle_exit(&mut m, Exit::Shutdown),
            ExitAction::Stop(StopReason::Shutdown { rip: None })
        );
        assert!(matches!(
            handle_exit(
                &mut m,
                Exit::InternalError {
                    suberror: kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
                }
            ),
            ExitAction::Stop(StopReason::InternalError { detail }) if detail.contains("emulation")
        ));
        assert!(matches!(
            handle_exit(&mut m, Exit::FailEntry { reason: 7 }),
            ExitAction::Stop(StopReason::InternalError { .. })
        ));
        assert!(matches!(
            handle_exit(&mut m, Exit::Other { reason: 24 }),
            ExitAction::Stop(StopReason::InternalError { .. })
        ));
        assert_eq!(m.cpu.ledger.count(ExitKind::Hlt), 1);
        assert_eq!(m.cpu.ledger.count(ExitKind::Shutdown), 1);
    }

    #[test]
    fn interrupts_resume_unless_the_watchdog_fired() {
        let mut m = machine();
        assert_eq!(handle_exit(&mut m, Exit::Interrupted), ExitAction::Continue);
        m.vm.stop_requested.store(true, Ordering::Release);
        assert_eq!(
            handle_exit(&mut m, Exit::Interrupted),
            ExitAction::Stop(StopReason::Timeout {
                rip: None,
                disk: crate::runtime::signals::DiskFlush::NoDisk,
            })
        );
    }
}
