//! Completion interrupts of the rings (`Features::RING_IRQ`, `QueueInterrupt`): one
//! irqfd line per GSI a queue may be bound to (IOAPIC pins
//! [`RING_IRQ_GSI_FIRST`]`..+`[`RING_IRQ_GSIS`]), created when the VM has the in-kernel
//! irqchip. A queue bound to a line raises one edge after a service whose responses
//! crossed the guest's `rsp_event` ([`pvkit_pv::Batch::notify`]); the guest re-arms
//! `rsp_event` when it wants the next one, so a busy ring raises one interrupt per batch
//! the guest waited for, not one per response.
//!
//! Lines may be shared by several queues (the guest chooses); each edge is counted on its
//! line ([`RingIrqs::raised`]) so tests can match them against the interrupts handled.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use pvkit_abi::ring::{RING_IRQ_GSIS, RING_IRQ_GSI_FIRST};

use crate::devices::legacy::irq::{InterruptLine, IrqError};
use crate::runtime::sync::lock;

/// One GSI a queue can be bound to.
#[derive(Debug)]
pub struct RingIrqLine {
    line: Mutex<InterruptLine>,
}

impl RingIrqLine {
    /// Raises one edge (one eventfd write).
    pub fn raise(&self) {
        lock(&self.line).trigger();
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        lock(&self.line).gsi()
    }

    /// Edges raised so far.
    pub fn raised(&self) -> u64 {
        lock(&self.line).raised()
    }

    /// For tests of unconnected lines: edges not consumed by KVM (read and reset).
    pub fn take_signals(&self) -> u64 {
        lock(&self.line).take_signals()
    }
}

/// The GSIs queues can be bound to.
#[derive(Debug)]
pub struct RingIrqs {
    lines: Vec<Arc<RingIrqLine>>,
}

impl RingIrqs {
    /// One irqfd per GSI of the range, on `vm`'s in-kernel irqchip (created first).
    pub fn irqfds(vm: &VmFd) -> Result<Self, IrqError> {
        Self::build(|gsi| InterruptLine::irqfd(vm, gsi))
    }

    /// Lines not connected to KVM (device tests read them with
    /// [`RingIrqLine::take_signals`]).
    pub fn unconnected() -> Result<Self, IrqError> {
        Self::build(InterruptLine::unconnected)
    }

    fn build(
        mut make: impl FnMut(u32) -> Result<InterruptLine, IrqError>,
    ) -> Result<Self, IrqError> {
        let lines = (RING_IRQ_GSI_FIRST..RING_IRQ_GSI_FIRST + RING_IRQ_GSIS)
            .map(|gsi| {
                make(gsi).map(|line| {
                    Arc::new(RingIrqLine {
                        line: Mutex::new(line),
                    })
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { lines })
    }

    /// The line of `gsi`, if it is in the range.
    pub fn line(&self, gsi: u64) -> Option<Arc<RingIrqLine>> {
        let i = gsi.checked_sub(u64::from(RING_IRQ_GSI_FIRST))?;
        self.lines.get(usize::try_from(i).ok()?).cloned()
    }

    /// Edges raised on every line so far.
    pub fn raised(&self) -> u64 {
        self.lines.iter().map(|l| l.raised()).sum()
    }
}
