//! The null port ([`pvkit_abi::ports::NULL`]): a write of any width exits to the VMM, which
//! counts it (the ledger, before routing) and does nothing else; a read returns all ones,
//! as an unmapped port does. Benchmarks use it for the bare round trip of one port exit.

use crate::bus::PortDevice;

/// The null port device; put it on the bus at [`pvkit_abi::ports::NULL`], length 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullPort;

impl PortDevice for NullPort {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u16, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::PortBus;
    use pvkit_abi::ports::NULL;

    #[test]
    fn reads_like_an_open_bus_and_swallows_writes() {
        let mut bus = PortBus::new();
        bus.insert_mut(NULL.into(), 1, "null", NullPort).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(NULL.into(), &mut b), "the port is mapped");
        assert_eq!(b, [0xff; 4]);
        assert!(bus.write(NULL.into(), &[1, 2, 3, 4]));
    }
}
