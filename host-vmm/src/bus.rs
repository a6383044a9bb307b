//! The port I/O bus: routes `in`/`out` accesses to devices by port range.

use thiserror::Error;

/// A device on the port bus. Offsets are relative to the start of the device's range.
pub trait PortDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset`; fills `data`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Errors building the bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping port ranges.
    #[error("port range {base:#x}+{len} overlaps a device already on the bus")]
    Overlap {
        /// First port of the rejected range.
        base: u16,
        /// Number of ports in the rejected range.
        len: u16,
    },
    /// The range is empty or runs past port 0xffff.
    #[error("port range {base:#x}+{len} is empty or runs past 0xffff")]
    BadRange {
        /// First port of the rejected range.
        base: u16,
        /// Number of ports in the rejected range.
        len: u16,
    },
}

struct Entry {
    base: u16,
    /// Last port of the range (inclusive), so a range may end at 0xffff.
    last: u16,
    device: Box<dyn PortDevice>,
}

/// Devices by port range. Ranges never overlap.
#[derive(Default)]
pub struct PortBus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for PortBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .entries
            .iter()
            .map(|e| format!("{:#x}..={:#x}", e.base, e.last))
            .collect();
        f.debug_struct("PortBus").field("ranges", &ranges).finish()
    }
}

impl PortBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` on ports `base..base + len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Box<dyn PortDevice>,
    ) -> Result<(), BusError> {
        let last = len
            .checked_sub(1)
            .and_then(|l| base.checked_add(l))
            .ok_or(BusError::BadRange { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base <= e.last && e.base <= last)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, last, device });
        Ok(())
    }

    fn find(&mut self, port: u16) -> Option<(&mut (dyn PortDevice + 'static), u16)> {
        let i = self
            .entries
            .partition_point(|e| e.base <= port)
            .checked_sub(1)?;
        let e = self.entries.get_mut(i)?;
        (port <= e.last).then(|| (e.device.as_mut(), port - e.base))
    }

    /// Routes a read. Returns `false` (and fills `data` with `0xff`, as an open bus reads)
    /// when no device owns `port`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a write. Returns `false` (and drops the data) when no device owns `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((dev, offset)) => {
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<(char, u16, Vec<u8>)>>>;

    struct Probe(Log, u8);
    impl PortDevice for Probe {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.1);
            self.0.lock().unwrap().push(('r', offset, data.to_vec()));
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.lock().unwrap().push(('w', offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let log = Log::default();
        let mut bus = PortBus::new();
        bus.insert(0x3f8, 8, Box::new(Probe(log.clone(), 0xaa)))
            .unwrap();
        bus.insert(0x40, 4, Box::new(Probe(log.clone(), 0xbb)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [0xaa]);
        assert!(bus.write(0x43, &[7]));
        assert!(!bus.write(0x3f7, &[1]));
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(
            *log.lock().unwrap(),
            vec![('r', 5, vec![0xaa]), ('w', 3, vec![7])]
        );
    }

    #[test]
    fn rejects_overlap_and_bad_ranges() {
        let log = Log::default();
        let mut bus = PortBus::new();
        bus.insert(0x10, 0x10, Box::new(Probe(log.clone(), 0)))
            .unwrap();
        assert_eq!(
            bus.insert(0x1f, 2, Box::new(Probe(log.clone(), 0))),
            Err(BusError::Overlap { base: 0x1f, len: 2 })
        );
        assert_eq!(
            bus.insert(0x08, 9, Box::new(Probe(log.clone(), 0))),
            Err(BusError::Overlap { base: 0x08, len: 9 })
        );
        assert!(bus.insert(0x08, 8, Box::new(Probe(log.clone(), 0))).is_ok());
        assert_eq!(
            bus.insert(0x100, 0, Box::new(Probe(log.clone(), 0))),
            Err(BusError::BadRange {
                base: 0x100,
                len: 0
            })
        );
        assert_eq!(
            bus.insert(0xfff0, 0x11, Box::new(Probe(log.clone(), 0))),
            Err(BusError::BadRange {
                base: 0xfff0,
                len: 0x11
            })
        );
        assert!(bus.insert(0xfff0, 0x10, Box::new(Probe(log, 0))).is_ok());
        let mut b = [0u8; 2];
        assert!(bus.read(0xffff, &mut b));
    }
}
