//! The interrupt test port ([`pvkit_abi::ports::IRQ_TEST`]): a byte write of the GSI
//! [`pvkit_abi::ports::IRQ_TEST_GSI`] raises one edge on that GSI's [`InterruptLine`]
//! (an irqfd), so a guest can measure a device interrupt's delivery and acknowledge through
//! the IOAPIC or the PIC with exactly one exit (the write) per interrupt. Anything else
//! (another value, another width) is counted as refused and changes nothing; reads return
//! all ones. Each write is bounded: one eventfd write at most.

use pvkit_abi::ports::IRQ_TEST_GSI;

use crate::bus::PortDevice;
use crate::devices::legacy::irq::InterruptLine;

/// The test port's state: its line and what it did.
#[derive(Debug)]
pub struct IrqTestPort {
    line: InterruptLine,
    refused: u64,
}

impl IrqTestPort {
    /// The port raising `line` (which must be on [`IRQ_TEST_GSI`]).
    pub fn new(line: InterruptLine) -> Self {
        Self { line, refused: 0 }
    }

    /// Edges raised.
    pub fn raised(&self) -> u64 {
        self.line.raised()
    }

    /// Writes that raised nothing (wrong value or width).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The line (for tests reading an unconnected line's signals).
    pub fn line(&self) -> &InterruptLine {
        &self.line
    }
}

impl PortDevice for IrqTestPort {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let gsi_ok = u32::from(IRQ_TEST_GSI) == self.line.gsi();
        if offset == 0 && gsi_ok && data == [IRQ_TEST_GSI] {
            self.line.trigger();
        } else {
            self.refused = self.refused.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::PortBus;
    use pvkit_abi::ports::IRQ_TEST;

    fn port() -> IrqTestPort {
        IrqTestPort::new(InterruptLine::unconnected(IRQ_TEST_GSI.into()).unwrap())
    }

    #[test]
    fn each_byte_write_of_the_gsi_is_one_edge() {
        let mut p = port();
        for _ in 0..5 {
            p.write(0, &[IRQ_TEST_GSI]);
        }
        assert_eq!(p.raised(), 5);
        assert_eq!(p.line().take_signals(), 5);
        assert_eq!(p.refused(), 0);
    }

    #[test]
    fn other_values_widths_and_lines_raise_nothing() {
        let mut p = port();
        p.write(0, &[IRQ_TEST_GSI + 1]);
        p.write(0, &[IRQ_TEST_GSI, 0]);
        p.write(0, &[IRQ_TEST_GSI, 0, 0, 0]);
        p.write(0, &[]);
        p.write(1, &[IRQ_TEST_GSI]);
        assert_eq!((p.raised(), p.refused()), (0, 5));
        assert_eq!(p.line().take_signals(), 0);
        // A port built on another GSI never raises it.
        let mut q = IrqTestPort::new(InterruptLine::unconnected(9).unwrap());
        q.write(0, &[IRQ_TEST_GSI]);
        q.write(0, &[9]);
        assert_eq!((q.raised(), q.refused()), (0, 2));
    }

    #[test]
    fn reads_like_an_open_bus_on_the_bus() {
        let mut bus = PortBus::new();
        bus.insert_mut(IRQ_TEST.into(), 1, "irq-test", port())
            .unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(IRQ_TEST.into(), &mut b));
        assert_eq!(b, [0xff; 2]);
        assert!(bus.write(IRQ_TEST.into(), &[IRQ_TEST_GSI]));
    }
}
