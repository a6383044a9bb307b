//! Discovery: the pvkit CPUID leaves and feature bits.
//!
//! A guest learns that it runs on pvkit, and what the host offers, without a single VM exit
//! to userspace (CPUID is answered by KVM in the kernel from the table the VMM installed):
//!
//! | leaf          | EAX                          | EBX, ECX, EDX                        |
//! |---------------|------------------------------|--------------------------------------|
//! | `0x4000_0000` | highest pvkit leaf           | signature `"pvkitpvkitpv"`           |
//! | `0x4000_0001` | ABI major version            | EBX = ABI minor, ECX = features low 32 bits, EDX = features high 32 bits |
//!
//! The same information is available through [`crate::Hypercall::AbiVersion`] and
//! [`crate::Hypercall::Features`]. When the host also exposes KVM's own paravirtual
//! interface (kvmclock), its leaves start at [`KVM_LEAF_BASE`], as Linux expects when two
//! hypervisor interfaces are present.

use bitflags::bitflags;

/// The pvkit base leaf.
pub const LEAF_BASE: u32 = 0x4000_0000;
/// The pvkit version and feature leaf.
pub const LEAF_FEATURES: u32 = 0x4000_0001;
/// Where KVM's own paravirtual leaves are placed when offered alongside pvkit's.
pub const KVM_LEAF_BASE: u32 = 0x4000_0100;
/// The 12-byte signature in EBX, ECX, EDX of [`LEAF_BASE`].
pub const SIGNATURE: [u8; 12] = *b"pvkitpvkitpv";

/// The signature as the three registers EBX, ECX, EDX.
pub const fn signature_registers() -> [u32; 3] {
    let s = SIGNATURE;
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}

bitflags! {
    /// What the host offers. Unknown bits are reserved and must be ignored by guests.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// [`crate::Hypercall::ConsoleWrite`].
        const CONSOLE = 1 << 0;
        /// The console request ring ([`crate::ring::CONSOLE_QUEUE`]).
        const CONSOLE_RING = 1 << 1;
        /// The PV block device: [`crate::Hypercall::BlockIo`] and
        /// [`crate::Hypercall::BlockCapacity`]. Set only when the VM has a disk
        /// (`pvkit run --disk`).
        const BLOCK = 1 << 2;
        /// The block request ring ([`crate::ring::BLOCK_QUEUE`]). Set only with a disk.
        const BLOCK_RING = 1 << 3;
        /// Ring doorbells served by an ioeventfd ([`crate::ring::Transport::DoorbellEventfd`]).
        const RING_EVENTFD = 1 << 4;
        /// Rings polled by a host thread ([`crate::ring::Transport::HostPoll`]).
        const RING_POLL = 1 << 5;
        /// The PV clock page ([`crate::clock::PvClock`]).
        const CLOCK = 1 << 6;
        /// Benchmark phase markers and results.
        const BENCH = 1 << 7;
        /// KVM's own kvmclock is exposed at [`KVM_LEAF_BASE`].
        const KVMCLOCK = 1 << 8;
        /// The PV network device: [`crate::Hypercall::NetInfo`] and
        /// [`crate::Hypercall::NetSend`]. Set only when the VM has a PV NIC.
        const NET = 1 << 9;
        /// The network rings ([`crate::ring::NET_TX_QUEUE`], [`crate::ring::NET_RX_QUEUE`]).
        /// Set only with a PV NIC.
        const NET_RING = 1 << 10;
        /// The memory balloon: [`crate::Hypercall::BalloonInflate`],
        /// [`crate::Hypercall::BalloonDeflate`], [`crate::Hypercall::BalloonInfo`]
        /// ([`crate::balloon`]).
        const BALLOON = 1 << 12;
        /// Ring completions by interrupt: [`crate::Hypercall::QueueInterrupt`] binds a
        /// queue to a GSI of the in-kernel IOAPIC, and the host honours the guest's
        /// `rsp_event` (event-index suppression: one interrupt per batch of responses).
        /// Set when the VM has an in-kernel interrupt controller and rings.
        const RING_IRQ = 1 << 16;
        /// PV IPIs: [`crate::Hypercall::SendIpi`] (a CPU bitmap per call). Set only with
        /// more than one vCPU.
        const PV_IPI = 1 << 13;
        /// PV spinlocks: [`crate::Hypercall::LockWait`] and [`crate::Hypercall::LockKick`]
        /// ([`crate::spinlock`]). Set only with more than one vCPU.
        const PV_SPINLOCK = 1 << 14;
        /// The per-vCPU steal-time page ([`crate::spinlock::STEAL_PAGE`]).
        const STEAL_TIME = 1 << 15;
        /// Free-page hints for live migration: [`crate::Hypercall::FreePageHint`].
        const FREE_PAGE_HINT = 1 << 18;
        /// The host-set balloon target: [`crate::Hypercall::BalloonTarget`]
        /// ([`crate::balloon::BalloonTarget`]). Offered with [`Features::BALLOON`].
        const BALLOON_TARGET = 1 << 19;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_registers_spell_the_signature() {
        let regs = signature_registers();
        let mut bytes = [0u8; 12];
        for (i, r) in regs.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&bytes, b"pvkitpvkitpv");
    }

    #[test]
    fn unknown_feature_bits_are_dropped_not_fatal() {
        let f = Features::from_bits_truncate(u64::MAX);
        assert!(f.contains(Features::CONSOLE | Features::BLOCK | Features::CLOCK));
        assert_eq!(Features::from_bits(1 << 63), None);
    }
}
