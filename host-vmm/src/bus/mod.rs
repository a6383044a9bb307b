//! The buses: port I/O ([`PortBus`]) and MMIO ([`MmioBus`]) route an access to the device
//! that owns its address, by range, with `u64` addresses on both.
//!
//! Devices are called through `&self` ([`BusDevice`], as cloud-hypervisor's
//! `BusDeviceSync`): a bus is shared by every vCPU thread of a VM (it sits in the `Arc`ed
//! VM), so a device keeps its mutable state behind its own lock. A device written against
//! `&mut self` ([`PortDevice`]) goes on a bus inside a `Mutex` ([`Bus::insert_mut`]).
//!
//! A device may sit on several ranges (the ATA command block and its control port): it gets
//! the base of the range that was hit with each access.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::runtime::sync::lock;

/// A device on a bus, callable from several vCPU threads at once.
pub trait BusDevice: Send + Sync {
    /// Handles a read of `data.len()` bytes at `base + offset` (`base`: the start of the
    /// range that was hit); fills `data`.
    fn read(&self, base: u64, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `base + offset`.
    fn write(&self, base: u64, offset: u64, data: &[u8]);
}

/// A port device with `&mut self` handlers and port offsets; [`Bus::insert_mut`] puts it
/// on a bus behind a `Mutex`. Offsets are relative to the start of the device's range.
pub trait PortDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset`; fills `data`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

impl<T: PortDevice> BusDevice for Mutex<T> {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        match u16::try_from(offset) {
            Ok(off) => lock(self).read(off, data),
            Err(_) => data.fill(0xff),
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        if let Ok(off) = u16::try_from(offset) {
            lock(self).write(off, data);
        }
    }
}

/// An address space a [`Bus`] routes.
pub trait AddressSpace {
    /// Its name in messages.
    const NAME: &'static str;
    /// Its last address (inclusive).
    const LAST: u64;
}

/// The x86 port I/O space, `0..=0xffff`.
#[derive(Debug)]
pub struct Pio;

impl AddressSpace for Pio {
    const NAME: &'static str = "port";
    const LAST: u64 = 0xffff;
}

/// Guest-physical MMIO space.
#[derive(Debug)]
pub struct Mmio;

impl AddressSpace for Mmio {
    const NAME: &'static str = "MMIO";
    const LAST: u64 = u64::MAX;
}

/// Errors building a bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("{space} range {base:#x}+{len} overlaps a device already on the bus")]
    Overlap {
        /// The address space.
        space: &'static str,
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or runs past the end of the address space.
    #[error("{space} range {base:#x}+{len} is empty or runs past the end of the space")]
    BadRange {
        /// The address space.
        space: &'static str,
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

struct Entry {
    base: u64,
    /// Last address of the range (inclusive), so a range may end at the space's end.
    last: u64,
    /// The region's name (the ledger counts MMIO exits under it).
    name: &'static str,
    device: Arc<dyn BusDevice>,
}

/// Devices by address range in one address space. Ranges never overlap. Built with
/// `&mut self` before the vCPUs start, then only read (`&self`) by every vCPU thread.
pub struct Bus<S: AddressSpace> {
    entries: Vec<Entry>,
    space: PhantomData<S>,
}

/// The port I/O bus.
pub type PortBus = Bus<Pio>;
/// The MMIO bus.
pub type MmioBus = Bus<Mmio>;

impl<S: AddressSpace> Default for Bus<S> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            space: PhantomData,
        }
    }
}

impl<S: AddressSpace> std::fmt::Debug for Bus<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .entries
            .iter()
            .map(|e| format!("{}: {:#x}..={:#x}", e.name, e.base, e.last))
            .collect();
        f.debug_struct("Bus")
            .field("space", &S::NAME)
            .field("ranges", &ranges)
            .finish()
    }
}

impl<S: AddressSpace> Bus<S> {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` on `base..base + len`, named `name`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        name: &'static str,
        device: Arc<dyn BusDevice>,
    ) -> Result<(), BusError> {
        let last = len
            .checked_sub(1)
            .and_then(|l| base.checked_add(l))
            .filter(|last| *last <= S::LAST)
            .ok_or(BusError::BadRange {
                space: S::NAME,
                base,
                len,
            })?;
        if self
            .entries
            .iter()
            .any(|e| base <= e.last && e.base <= last)
        {
            return Err(BusError::Overlap {
                space: S::NAME,
                base,
                len,
            });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(
            at,
            Entry {
                base,
                last,
                name,
                device,
            },
        );
        Ok(())
    }

    /// Puts a `&mut self` device on `base..base + len` behind a `Mutex`.
    pub fn insert_mut<D: PortDevice + 'static>(
        &mut self,
        base: u64,
        len: u64,
        name: &'static str,
        device: D,
    ) -> Result<(), BusError> {
        self.insert(base, len, name, Arc::new(Mutex::new(device)))
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        let i = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        self.entries.get(i).filter(|e| addr <= e.last)
    }

    /// The name of the range holding `addr`, if a device owns it.
    pub fn name(&self, addr: u64) -> Option<&'static str> {
        self.find(addr).map(|e| e.name)
    }

    /// Routes a read. Returns `false` (and fills `data` with `0xff`, as an open bus reads)
    /// when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some(e) => {
                e.device.read(e.base, addr - e.base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a write. Returns `false` (and drops the data) when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some(e) => {
                e.device.write(e.base, addr - e.base, data);
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
        bus.insert_mut(0x3f8, 8, "probe", Probe(log.clone(), 0xaa))
            .unwrap();
        bus.insert_mut(0x40, 4, "probe", Probe(log.clone(), 0xbb))
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
        bus.insert_mut(0x10, 0x10, "probe", Probe(log.clone(), 0))
            .unwrap();
        assert_eq!(
            bus.insert_mut(0x1f, 2, "probe", Probe(log.clone(), 0)),
            Err(BusError::Overlap {
                space: "port",
                base: 0x1f,
                len: 2
            })
        );
        assert_eq!(
            bus.insert_mut(0x08, 9, "probe", Probe(log.clone(), 0)),
            Err(BusError::Overlap {
                space: "port",
                base: 0x08,
                len: 9
            })
        );
        assert!(bus
            .insert_mut(0x08, 8, "probe", Probe(log.clone(), 0))
            .is_ok());
        assert_eq!(
            bus.insert_mut(0x100, 0, "probe", Probe(log.clone(), 0)),
            Err(BusError::BadRange {
                space: "port",
                base: 0x100,
                len: 0
            })
        );
        assert_eq!(
            bus.insert_mut(0xfff0, 0x11, "probe", Probe(log.clone(), 0)),
            Err(BusError::BadRange {
                space: "port",
                base: 0xfff0,
                len: 0x11
            })
        );
        assert!(bus.insert_mut(0xfff0, 0x10, "probe", Probe(log, 0)).is_ok());
        let mut b = [0u8; 2];
        assert!(bus.read(0xffff, &mut b));
    }

    /// A `&self` device counting accesses, with the base of the range that was hit.
    #[derive(Default)]
    struct Counter {
        hits: std::sync::atomic::AtomicU64,
        bases: Mutex<Vec<u64>>,
    }
    impl BusDevice for Counter {
        fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.bases.lock().unwrap().push(base);
        }
        fn write(&self, _base: u64, _offset: u64, _data: &[u8]) {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn mmio_bus_has_u64_addresses_and_is_shared_by_threads() {
        let dev = Arc::new(Counter::default());
        let mut bus = MmioBus::new();
        let high = 0xfee0_0000_0000u64;
        bus.insert(high, 0x1000, "high", dev.clone()).unwrap();
        bus.insert(0xd000_0000, 0x10, "low", dev.clone()).unwrap();
        assert!(bus.insert(u64::MAX - 1, 3, "x", dev.clone()).is_err());
        bus.insert(u64::MAX, 1, "top", dev.clone()).unwrap();
        assert_eq!(bus.name(high + 0xfff), Some("high"));
        assert_eq!(bus.name(high + 0x1000), None);
        let mut d = [0u8; 4];
        assert!(bus.read(high + 0x20, &mut d));
        assert_eq!(d, [0x20; 4]);
        assert!(bus.read(0xd000_0003, &mut d));
        assert_eq!(*dev.bases.lock().unwrap(), vec![high, 0xd000_0000]);
        // Four threads write through one shared bus (`&self`).
        let bus = Arc::new(bus);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bus = Arc::clone(&bus);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        assert!(bus.write(high + 8, &[1]));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(dev.hits.load(std::sync::atomic::Ordering::Relaxed), 4000);
        assert!(!bus.write(0x1000, &[1]));
    }
}
