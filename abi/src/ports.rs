//! I/O ports the pvkit VMM reserves. All other ports belong to emulated devices.
//!
//! The pvkit range is `0x0500..=0x051f`. It lies outside every legacy PC device range
//! (Solo5's `hvt` uses the same neighbourhood for the same reason).

/// The hypercall port: a 32-bit `out dx, eax` here is a hypercall. See [`crate::call`].
pub const HYPERCALL: u16 = 0x0500;

/// The null port: a write of any width exits to the VMM, which counts it and does nothing
/// else. Benchmarks use it to measure the bare round trip of one port-I/O exit.
pub const NULL: u16 = 0x0501;

/// First doorbell port. The doorbell of ring `id` ([`crate::ring::RingId`]) is
/// `DOORBELL_BASE + id`. Any write of any width to a doorbell port rings it; the value is
/// ignored. A doorbell may be served by the VMM in userspace or by an ioeventfd, depending
/// on the transport the guest chose when registering the ring.
pub const DOORBELL_BASE: u16 = 0x0510;

/// One past the last doorbell port.
pub const DOORBELL_END: u16 = 0x0520;

/// The 16550 UART (COM1) base port used by the emulated console.
pub const COM1: u16 = 0x03f8;

/// The doorbell port of ring `id`.
pub const fn doorbell(id: crate::ring::RingId) -> u16 {
    DOORBELL_BASE + id as u16
}
