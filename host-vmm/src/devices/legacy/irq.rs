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

    /// Takes `level` as the line's current level without raising an edge: a restored
    /// device whose line was already high when it was saved (its edge is in the saved
    /// irqchip state) must not raise a second one.
    pub fn assume_level(&mut self, level: bool) {
        self.level = level;
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

    // ---- routing through KVM's in-kernel irqchip (needs /dev/kvm; skipped without it,
    // except under CI=true) -------------------------------------------------------------

    use kvm_bindings::{
        kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    };
    use kvm_ioctls::{Kvm, VcpuFd};
    use std::time::{Duration, Instant};

    /// A fresh VM, or `None` (skip) where `/dev/kvm` cannot be opened outside CI.
    fn vm() -> Option<(Kvm, VmFd)> {
        match Kvm::new() {
            Ok(kvm) => {
                let vm = kvm.create_vm().expect("KVM_CREATE_VM");
                Some((kvm, vm))
            }
            Err(e) => {
                assert!(
                    std::env::var("CI").map_or(true, |v| v != "true"),
                    "CI=true: the routing tests need /dev/kvm: {e}"
                );
                eprintln!("note: skipping an irqchip test without /dev/kvm: {e}");
                None
            }
        }
    }

    /// The IRR of PIC `chip` (master or slave).
    fn pic_irr(vm: &VmFd, chip: u32) -> u8 {
        let mut c = kvm_irqchip {
            chip_id: chip,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).expect("KVM_GET_IRQCHIP");
        // SAFETY: for a PIC chip id KVM fills the `pic` member of the union.
        unsafe { c.chip.pic.irr }
    }

    /// Waits (up to 5 s: irqfd injection runs on a kernel worker) until `done` holds.
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn an_irqfd_needs_the_irqchip_and_says_which_gsi() {
        let Some((_kvm, vm)) = vm() else { return };
        let e = InterruptLine::irqfd(&vm, 5).expect_err("no irqchip yet");
        assert!(matches!(e, IrqError::Irqfd { gsi: 5, .. }), "{e}");
        assert!(e.to_string().contains("GSI 5") && e.to_string().contains("KVM_IRQFD"));
        create_irqchip(&vm).unwrap();
        // A second irqchip is refused with its own error.
        let e = create_irqchip(&vm).expect_err("one irqchip per VM");
        assert!(e.to_string().contains("KVM_CREATE_IRQCHIP"), "{e}");
        let line = InterruptLine::irqfd(&vm, 5).unwrap();
        assert_eq!((line.gsi(), line.raised()), (5, 0));
        // Every IOAPIC pin has a route; two lines (two eventfds) may share a GSI.
        for gsi in 0..24 {
            InterruptLine::irqfd(&vm, gsi).unwrap_or_else(|e| panic!("GSI {gsi}: {e}"));
        }
    }

    /// KVM's default routing: ISA GSIs 0–15 go to the PIC (master lines 0–7, slave lines
    /// 8–15) as well as to the IOAPIC; GSIs 16–23 go to the IOAPIC only. The PIC latches
    /// an edge in its IRR even while the line is masked, so the route shows there.
    #[test]
    fn isa_gsis_reach_their_pic_line_and_higher_gsis_do_not() {
        let Some((_kvm, vm)) = vm() else { return };
        create_irqchip(&vm).unwrap();
        let mut lines: Vec<InterruptLine> = Vec::new();
        for (gsi, chip, bit) in [
            (3u32, KVM_IRQCHIP_PIC_MASTER, 3u8),
            (5, KVM_IRQCHIP_PIC_MASTER, 5),
            (9, KVM_IRQCHIP_PIC_SLAVE, 1),
            (14, KVM_IRQCHIP_PIC_SLAVE, 6),
        ] {
            let mut line = InterruptLine::irqfd(&vm, gsi).unwrap();
            assert_eq!(pic_irr(&vm, chip) & (1 << bit), 0, "GSI {gsi} before");
            line.trigger();
            assert!(
                eventually(|| pic_irr(&vm, chip) & (1 << bit) != 0),
                "GSI {gsi} never reached PIC chip {chip} line {bit}"
            );
            lines.push(line);
        }
        let (master, slave) = (
            pic_irr(&vm, KVM_IRQCHIP_PIC_MASTER),
            pic_irr(&vm, KVM_IRQCHIP_PIC_SLAVE),
        );
        let mut high = InterruptLine::irqfd(&vm, 19).unwrap();
        high.trigger();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            pic_irr(&vm, KVM_IRQCHIP_PIC_MASTER),
            master,
            "GSI 19 on the PIC"
        );
        assert_eq!(
            pic_irr(&vm, KVM_IRQCHIP_PIC_SLAVE),
            slave,
            "GSI 19 on the PIC"
        );
        assert_eq!(high.raised(), 1);
    }

    /// Enables vCPU 0's LAPIC in software (SVR) so fixed interrupts are accepted.
    fn enable_lapic(vcpu: &VcpuFd) {
        let mut l = vcpu.get_lapic().expect("KVM_GET_LAPIC");
        l.regs[0xf0] = 0xff_u8 as _;
        l.regs[0xf1] = 1;
        vcpu.set_lapic(&l).expect("KVM_SET_LAPIC");
    }

    /// Whether vector `v` is pending in vCPU 0's LAPIC IRR.
    fn lapic_irr(vcpu: &VcpuFd, v: u8) -> bool {
        let l = vcpu.get_lapic().expect("KVM_GET_LAPIC");
        let reg = 0x200 + 0x10 * usize::from(v / 32);
        let word = u32::from_le_bytes([
            l.regs[reg] as u8,
            l.regs[reg + 1] as u8,
            l.regs[reg + 2] as u8,
            l.regs[reg + 3] as u8,
        ]);
        word & (1 << (v % 32)) != 0
    }

    /// An IOAPIC pin programmed with a vector (edge, unmasked, physical destination
    /// APIC 0) delivers an irqfd edge on its GSI to that vector in the LAPIC; a masked pin
    /// delivers nothing.
    #[test]
    fn ioapic_redirection_entries_route_gsis_to_their_vector() {
        let Some((_kvm, vm)) = vm() else { return };
        create_irqchip(&vm).unwrap();
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        enable_lapic(&vcpu);
        let mut io = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        vm.get_irqchip(&mut io).unwrap();
        // SAFETY: for the IOAPIC chip id KVM fills (and reads) the `ioapic` member.
        unsafe {
            // Pin 16 → vector 0x61 (unmasked); pin 17 → vector 0x62, masked (bit 16).
            io.chip.ioapic.redirtbl[16].bits = 0x61;
            io.chip.ioapic.redirtbl[17].bits = 0x62 | 1 << 16;
        }
        vm.set_irqchip(&io).unwrap();
        let mut a = InterruptLine::irqfd(&vm, 16).unwrap();
        let mut b = InterruptLine::irqfd(&vm, 17).unwrap();
        assert!(!lapic_irr(&vcpu, 0x61));
        a.trigger();
        b.trigger();
        assert!(
            eventually(|| lapic_irr(&vcpu, 0x61)),
            "GSI 16 never reached vector 0x61"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(!lapic_irr(&vcpu, 0x62), "a masked pin delivered");
        assert_eq!((a.raised(), b.raised()), (1, 1));
    }
}
