//! I/O ports the pvkit VMM reserves. All other ports belong to emulated devices.
//!
//! The pvkit range is `0x0500..=0x051f`. It lies outside every legacy PC device range
//! (Solo5's `hvt` uses the same neighbourhood for the same reason).

/// The hypercall port: a 32-bit `out dx, eax` here is a hypercall. See [`crate::call`].
pub const HYPERCALL: u16 = 0x0500;

/// The null port: a write of any width exits to the VMM, which counts it and does nothing
/// else. Benchmarks use it to measure the bare round trip of one port-I/O exit.
pub const NULL: u16 = 0x0501;

/// The interrupt test port: a byte write here makes the VMM raise one edge on the GSI
/// [`IRQ_TEST_GSI`] through its irqfd, when the VM has the in-kernel interrupt controller
/// (`pvkit bench` device `irq`). Writes of other values or widths are counted and ignored;
/// reads return all ones. Each write is one exit and at most one interrupt.
pub const IRQ_TEST: u16 = 0x0502;

/// The GSI the interrupt test port raises: ISA IRQ 5 (PIC master line 5, IOAPIC pin 5).
pub const IRQ_TEST_GSI: u8 = 5;

/// The doorbell port: a 32-bit `out dx, eax` here notifies the queue whose
/// [`crate::ring::QueueId`] wire value ([`crate::ring::QueueId::to_u32`],
/// `device << 16 | queue`) is in `EAX`. One port serves every queue of every device. A
/// doorbell may be served by the VMM in userspace or by an ioeventfd that matches the value,
/// depending on the transport the guest chose when registering the queue. Writes of other
/// widths or of values that name no registered queue are counted and ignored; reads return
/// all ones.
pub const DOORBELL: u16 = 0x0510;

/// One past the last port of the pvkit range (`0x0500..0x0520`); the ports of the range
/// that this version does not define are reserved.
pub const PVKIT_PORTS_END: u16 = 0x0520;

/// The 16550 UART (COM1) base port used by the emulated console.
pub const COM1: u16 = 0x03f8;
