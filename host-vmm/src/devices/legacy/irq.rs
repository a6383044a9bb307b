//! Device interrupts through KVM's in-kernel interrupt controller.
//!
//! [`create_irqchip`] gives the VM the in-kernel PIC, IOAPIC and LAPICs
//! (`KVM_CREATE_IRQCHIP`; before any vCPU exists). The PIC then owns ports `0x20`/`0x21`,
//! `0xa0`/`0xa1` and `0x4d0`/`0x4d1`, the IOAPIC the MMIO page at `0xfec0_0000` and each
//! LAPIC `0xfee0_0000`: accesses to them never reach userspace. The userspace PIT
//! (`0x40..=0x43`, `0x61`) stays ours, as no in-kernel PIT is created.
//!
//! An [`InterruptLine`] is one GSI raised through an irqfd (`KVM_IRQFD`): an eventfd
//! registered with KVM, whose every write injects one edge on the GSI (KVM routes GSIs
//! 0–15 to the PIC and the IOAPIC pin of the same number, 16–23 to the IOAPIC). A device
//! model with a level-triggered line (the NE2000's `ISR & IMR`) drives it with
//! [`InterruptLine::set_level`] after every change: a low→high transition is one edge, one
//! eventfd write, one interrupt the guest sees (it programs the IOAPIC pin edge-triggered).
//! The writes are counted ([`InterruptLine::raised`]) so tests can match them against the
//! interrupts the guest handled.

use std::io;

use kvm_ioctls::VmFd;
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors setting up interrupts.
#[derive(Debug, Error)]
pub enum IrqError {
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("cannot create the in-kernel interrupt controller (KVM_CREATE_IRQCHIP): {0}")]
    CreateIrqchip(kvm_ioctls::Error),
    /// The eventfd of a line could not be created.
    #[error("cannot create the eventfd of GSI {gsi}: {source}")]
    EventFd {
        /// The GSI.
        gsi: u32,
        /// Why.
        source: io::Error,
    },
    /// `KVM_IRQFD` failed.
    #[error("cannot register the irqfd of GSI {gsi} (KVM_IRQFD): {source}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

/// Creates the in-kernel PIC, IOAPIC and LAPICs of `vm` (before its vCPUs).
pub fn create_irqchip(vm: &VmFd) -> Result<(), IrqError> {
    vm.create_irq_chip().map_err(IrqError::CreateIrqchip)
}

/// One interrupt line (GSI) of a device, raised by eventfd writes (see the module
/// documentation). Owned by the device, used under the device's lock.
#[derive(Debug)]
pub struct InterruptLine {
    fd: EventFd,
    gsi: u32,
    level: bool,
    raised: u64,
    failed: u64,
}

impl InterruptLine {
    /// A line on `gsi` of `vm`'s in-kernel irqchip ([`create_irqchip`] first).
    pub fn irqfd(vm: &VmFd, gsi: u32) -> Result<Self, IrqError> {
        let line = Self::unconnected(gsi)?;
        vm.register_irqfd(&line.fd, gsi)
            .map_err(|source| IrqError::Irqfd { gsi, source })?;
        Ok(line)
    }

    /// A line whose eventfd is not registered with KVM (device tests read it with
    /// [`InterruptLine::take_signals`]).
    pub fn unconnected(gsi: u32) -> Result<Self, IrqError> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|source| IrqError::EventFd { gsi, source })?;
        Ok(Self {
            fd,
            gsi,
            level: false,
            raised: 0,
            failed: 0,
        })
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Follows the device's level: a low→high transition raises one edge (one eventfd
    /// write). Returns whether it did.
    pub fn set_level(&mut self, level: bool) -> bool {
        let rising = level && !self.level;
        self.level = level;
        if rising {
            self.trigger();
        }
        rising
    }

    /// Raises one edge now.
    pub fn trigger(&mut self) {
        // An eventfd write fails only when the counter would overflow (2^64 - 2
        // pending edges, never) — counted, not fatal.
        match self.fd.write(1) {
            Ok(()) => self.raised = self.raised.saturating_add(1),
            Err(_) => self.failed = self.failed.saturating_add(1),
        }
    }

    /// Edges raised so far (eventfd writes that succeeded).
    pub fn raised(&self) -> u64 {
        self.raised
    }

    /// Eventfd writes that failed.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Reads and resets the eventfd counter: the edges KVM has not consumed (always 0 on
    /// a registered line once KVM has injected them). For tests of unconnected lines.
    pub fn take_signals(&self) -> u64 {
        self.fd.read().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rising_edges_raise_the_line() {
        let mut line = InterruptLine::unconnected(9).unwrap();
        assert!(!line.set_level(false));
        assert!(line.set_level(true));
        assert!(!line.set_level(true));
        assert!(!line.set_level(false));
        assert!(line.set_level(true));
        assert_eq!(line.raised(), 2);
        assert_eq!(line.take_signals(), 2);
        assert_eq!(line.take_signals(), 0);
        line.trigger();
        assert_eq!(line.raised(), 3);
        assert_eq!(line.gsi(), 9);
    }
}
