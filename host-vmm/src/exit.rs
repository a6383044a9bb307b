//! VM exit handling: one plain function from an exit value to an action.
//!
//! The run loop translates each KVM exit into an [`Exit`], calls [`handle_exit`], and
//! applies the returned [`ExitAction`]. Nothing here touches KVM, so every path is unit
//! tested with synthetic exits.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pvkit_abi::call::{CallReturn, Hypercall, RawCall};

use crate::bus::PortBus;
use crate::devices::pv::HypercallBus;
use crate::hypercall::{self, HypercallContext, Outcome};
use crate::ledger::{ExitKind, ExitLedger};
use crate::memory::GuestRam;
use crate::stop::StopReason;

/// A VM exit, as the handler sees it (mirrors `kvm_ioctls::VcpuExit`).
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

/// Names MMIO regions for the ledger. No MMIO devices exist in ABI v1, so every access
/// lands in `"unmapped"` (reads as all ones, writes are dropped).
#[derive(Debug, Default)]
pub struct MmioMap {
    regions: Vec<(Range<u64>, &'static str)>,
}

impl MmioMap {
    /// Names `range` (for the ledger).
    pub fn insert(&mut self, range: Range<u64>, name: &'static str) {
        self.regions.push((range, name));
    }

    /// The name of the region holding `addr`.
    pub fn name(&self, addr: u64) -> &'static str {
        self.regions
            .iter()
            .find(|(r, _)| r.contains(&addr))
            .map_or("unmapped", |(_, n)| n)
    }
}

/// Everything exit handling reads or changes: memory, devices, the ledger, bench records.
pub struct Machine {
    /// Guest RAM.
    pub mem: GuestRam,
    /// Port devices.
    pub bus: PortBus,
    /// MMIO region names.
    pub mmio: MmioMap,
    /// Exit counts.
    pub ledger: ExitLedger,
    /// The PV devices, by hypercall number.
    pub pv: HypercallBus,
    /// Set by the watchdog before it kicks the vCPU: an interrupted `KVM_RUN` then means
    /// "time is up", otherwise it was spurious and the guest resumes.
    pub stop_requested: Arc<AtomicBool>,
    /// When the guest's first exit happened.
    pub first_exit: Option<Instant>,
    /// When the guest made its first hypercall.
    pub first_hypercall: Option<Instant>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("bus", &self.bus)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A machine with the given memory, port bus and PV devices.
    pub fn new(mem: GuestRam, bus: PortBus, pv: HypercallBus) -> Self {
        Self {
            mem,
            bus,
            mmio: MmioMap::default(),
            ledger: ExitLedger::new(),
            pv,
            stop_requested: Arc::new(AtomicBool::new(false)),
            first_exit: None,
            first_hypercall: None,
        }
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

/// Handles one exit: counts it in the ledger, then routes it.
pub fn handle_exit(m: &mut Machine, exit: Exit<'_>) -> ExitAction {
    m.first_exit.get_or_insert_with(Instant::now);
    match exit {
        Exit::IoOut { port, data } => {
            m.ledger.record(ExitKind::PortWrite(port));
            m.bus.write(port, data);
            ExitAction::Continue
        }
        Exit::IoIn { port, data } => {
            m.ledger.record(ExitKind::PortRead(port));
            m.bus.read(port, data);
            ExitAction::Continue
        }
        Exit::Hypercall(raw) => {
            m.first_hypercall.get_or_insert_with(Instant::now);
            m.ledger.record(match Hypercall::try_from(raw.nr) {
                Ok(h) => ExitKind::Hypercall(h),
                Err(_) => ExitKind::UnknownHypercall,
            });
            let ctx = HypercallContext {
                ledger: &m.ledger,
                bus: &m.pv,
                vcpu: 0,
            };
            match hypercall::dispatch(&m.mem, raw, &ctx) {
                Outcome::Return(r) => ExitAction::Return(r),
                Outcome::Stop(s) => ExitAction::Stop(s),
            }
        }
        Exit::MmioRead { addr, data } => {
            m.ledger.record(ExitKind::MmioRead(m.mmio.name(addr)));
            data.fill(0xff);
            ExitAction::Continue
        }
        Exit::MmioWrite { addr, .. } => {
            m.ledger.record(ExitKind::MmioWrite(m.mmio.name(addr)));
            ExitAction::Continue
        }
        Exit::Hlt => {
            // No interrupt controller and no interrupt sources in ABI v1: nothing can
            // ever wake a halted vCPU.
            m.ledger.record(ExitKind::Hlt);
            ExitAction::Stop(StopReason::Halted { rip: None })
        }
        Exit::Shutdown => {
            m.ledger.record(ExitKind::Shutdown);
            ExitAction::Stop(StopReason::Shutdown { rip: None })
        }
        Exit::InternalError { suberror } => {
            m.ledger.record(ExitKind::InternalError);
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
            m.ledger.record(ExitKind::InternalError);
            ExitAction::Stop(StopReason::InternalError {
                detail: format!("entry failed, hardware reason {reason:#x}"),
            })
        }
        Exit::Interrupted => {
            m.ledger.record(ExitKind::Interrupted);
            if m.stop_requested.load(Ordering::Acquire) {
                ExitAction::Stop(StopReason::Timeout {
                    rip: None,
                    disk: crate::signals::DiskFlush::NoDisk,
                })
            } else {
                ExitAction::Continue
            }
        }
        Exit::Other { reason } => {
            m.ledger.record(ExitKind::Other);
            ExitAction::Stop(StopReason::InternalError {
                detail: format!("unexpected exit reason {reason}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Console;
    use crate::memory::create_ram;
    use crate::serial::{Uart, COM1_BASE, COM1_LEN};
    use pvkit_abi::Status;
    use vm_memory::{Bytes, GuestAddress};

    fn machine() -> (Machine, Console) {
        let console = Console::capture();
        let mut bus = PortBus::new();
        bus.insert(COM1_BASE, COM1_LEN, Box::new(Uart::new(console.clone())))
            .unwrap();
        let pv = crate::devices::core_devices(console.clone()).bus;
        (Machine::new(create_ram(4).unwrap(), bus, pv), console)
    }

    #[test]
    fn uart_output_and_counts() {
        let (mut m, console) = machine();
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
        assert_eq!(console.captured(), b"ok");
        assert_eq!(m.ledger.count(ExitKind::PortRead(0x3fd)), 2);
        assert_eq!(m.ledger.count(ExitKind::PortWrite(0x3f8)), 2);
        assert_eq!(m.ledger.total(), 4);
    }

    #[test]
    fn unclaimed_ports_read_all_ones() {
        let (mut m, _) = machine();
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
        assert_eq!(m.ledger.count(ExitKind::PortWrite(0x80)), 1);
    }

    #[test]
    fn hypercalls_return_and_stop() {
        let (mut m, console) = machine();
        m.mem.write_slice(b"pv!", GuestAddress(0x20_0000)).unwrap();
        let a = handle_exit(
            &mut m,
            Exit::Hypercall(RawCall {
                nr: Hypercall::ConsoleWrite as u32,
                args: [0x20_0000, 3, 0, 0],
            }),
        );
        assert_eq!(a, ExitAction::Return(CallReturn::ok(3)));
        assert!(m.first_hypercall.is_some());
        let a = handle_exit(
            &mut m,
            Exit::Hypercall(RawCall {
                nr: 77,
                args: [0; 4],
            }),
        );
        assert_eq!(a, ExitAction::Return(CallReturn::err(Status::ENOSYS)));
        let a = handle_exit(
            &mut m,
            Exit::Hypercall(RawCall {
                nr: Hypercall::Exit as u32,
                args: [42, 0, 0, 0],
            }),
        );
        assert_eq!(a, ExitAction::Stop(StopReason::Exit(42)));
        assert_eq!(console.captured(), b"pv!");
        assert_eq!(
            m.ledger.count(ExitKind::Hypercall(Hypercall::ConsoleWrite)),
            1
        );
        assert_eq!(m.ledger.count(ExitKind::UnknownHypercall), 1);
        assert_eq!(m.ledger.count(ExitKind::PortWrite(0x500)), 0);
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
        let (mut m, _) = machine();
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
        assert_eq!(m.ledger.count(ExitKind::PortWrite(0x500)), 1);
        assert_eq!(m.ledger.count(ExitKind::Hypercall(Hypercall::Exit)), 0);
        assert_eq!(m.ledger.total(), 1);
        assert!(m.first_hypercall.is_none());
    }

    #[test]
    fn mmio_is_counted_and_reads_all_ones() {
        let (mut m, _) = machine();
        m.mmio.insert(0xfee0_0000..0xfee0_1000, "lapic");
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
        assert_eq!(m.ledger.count(ExitKind::MmioRead("lapic")), 1);
        assert_eq!(m.ledger.count(ExitKind::MmioWrite("unmapped")), 1);
    }

    #[test]
    fn terminal_exits() {
        let (mut m, _) = machine();
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
        assert_eq!(m.ledger.count(ExitKind::Hlt), 1);
        assert_eq!(m.ledger.count(ExitKind::Shutdown), 1);
    }

    #[test]
    fn interrupts_resume_unless_the_watchdog_fired() {
        let (mut m, _) = machine();
        assert_eq!(handle_exit(&mut m, Exit::Interrupted), ExitAction::Continue);
        m.stop_requested.store(true, Ordering::Release);
        assert_eq!(
            handle_exit(&mut m, Exit::Interrupted),
            ExitAction::Stop(StopReason::Timeout {
                rip: None,
                disk: crate::signals::DiskFlush::NoDisk,
            })
        );
    }
}
