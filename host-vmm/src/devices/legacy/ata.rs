//! The emulated ATA disk (primary channel) on the port bus: the pure state machine of
//! `pvkit_devices::ata` behind one [`BusDevice`] on two ranges, the command block
//! (`0x1F0..=0x1F7`) and the control port (`0x3F6`).
//!
//! Every access is one exit, counted by the ledger under its port
//! ([`crate::exit::ledger::ExitKind::PortRead`]/[`crate::exit::ledger::ExitKind::PortWrite`])
//! before it gets here.

use std::sync::{Arc, Mutex};

use pvkit_devices::ata::{Ata, ATA_PRIMARY_CMD_BASE, ATA_PRIMARY_CMD_LEN, ATA_PRIMARY_CTRL};
use pvkit_devices::BlockBackend;

use crate::bus::{BusDevice, BusError, PortBus};
use crate::runtime::sync::lock;

/// The ATA disk as a bus device. Data slices are passed through unchanged, so KVM's
/// batched string PIO (`rep insw` of a whole sector in one exit) moves the whole slice in
/// one call. The model is locked for each access, so any vCPU thread may call it.
pub struct AtaPorts<B: BlockBackend> {
    ata: Arc<Mutex<Ata<B>>>,
}

/// The absolute port of an access at `offset` into the range starting at `base`.
fn port(base: u64, offset: u64) -> Option<u16> {
    u16::try_from(base.checked_add(offset)?).ok()
}

impl<B: BlockBackend> BusDevice for AtaPorts<B> {
    fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
        match port(base, offset) {
            Some(p) => lock(&self.ata).read(p, data),
            None => data.fill(0xff),
        }
    }

    fn write(&self, base: u64, offset: u64, data: &[u8]) {
        if let Some(p) = port(base, offset) {
            lock(&self.ata).write(p, data);
        }
    }
}

/// Puts the ATA disk over `backend` on the primary channel: `0x1F0..=0x1F7` and `0x3F6`.
/// Returns the shared model (for tests and inspection).
pub fn attach_ata<B: BlockBackend + 'static>(
    bus: &mut PortBus,
    backend: B,
) -> Result<Arc<Mutex<Ata<B>>>, BusError> {
    let ata = Arc::new(Mutex::new(Ata::new(backend)));
    let dev = Arc::new(AtaPorts {
        ata: Arc::clone(&ata),
    });
    bus.insert(
        ATA_PRIMARY_CMD_BASE.into(),
        ATA_PRIMARY_CMD_LEN.into(),
        "ata",
        dev.clone(),
    )?;
    bus.insert(ATA_PRIMARY_CTRL.into(), 1, "ata control", dev)?;
    Ok(ata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_devices::ata::{command, port, status};
    use pvkit_devices::MemBackend;

    fn disk() -> MemBackend {
        // Sector n holds the byte n everywhere.
        MemBackend::from_vec((0..64 * 512).map(|i| (i / 512) as u8).collect())
    }

    fn inb(bus: &PortBus, port: u16) -> u8 {
        let mut b = [0u8];
        assert!(bus.read(port.into(), &mut b), "port {port:#x} unclaimed");
        b[0]
    }

    #[test]
    fn ata_identify_and_read_through_the_bus() {
        let mut bus = PortBus::new();
        let ata = attach_ata(&mut bus, disk()).unwrap();
        assert_eq!(ata.lock().unwrap().sectors(), 64);
        // IDENTIFY: device, command, status, one 512-byte string read.
        bus.write(u64::from(port::DEVICE), &[0xa0]);
        bus.write(u64::from(port::COMMAND), &[command::IDENTIFY_DEVICE]);
        assert_ne!(inb(&bus, port::STATUS) & status::DRQ, 0);
        let mut id = [0u8; 512];
        bus.read(u64::from(port::DATA), &mut id);
        // Words 60-61: LBA28 sector count.
        assert_eq!(u32::from_le_bytes([id[120], id[121], id[122], id[123]]), 64);
        assert_eq!(inb(&bus, port::STATUS) & status::DRQ, 0);
        // READ SECTORS of 2 sectors at LBA 5: the string read crosses a sector boundary.
        for (p, v) in [
            (port::DEVICE, 0xe0),
            (port::SECTOR_COUNT, 2),
            (port::LBA_LOW, 5),
            (port::LBA_MID, 0),
            (port::LBA_HIGH, 0),
            (port::COMMAND, command::READ_SECTORS),
        ] {
            bus.write(u64::from(p), &[v]);
        }
        // The control port reaches the same device: alternate status shows DRQ.
        assert_ne!(inb(&bus, ATA_PRIMARY_CTRL) & status::DRQ, 0);
        let mut data = [0u8; 1024];
        bus.read(u64::from(port::DATA), &mut data[..512]);
        // Word by word, as a non-batched driver would.
        for w in data[512..].chunks_mut(2) {
            bus.read(u64::from(port::DATA), w);
        }
        assert!(data[..512].iter().all(|&b| b == 5));
        assert!(data[512..].iter().all(|&b| b == 6));
        assert_eq!(inb(&bus, port::STATUS) & (status::DRQ | status::ERR), 0);
    }

    #[test]
    fn ata_write_reaches_the_backend_and_errors_are_status() {
        let mut bus = PortBus::new();
        let ata = attach_ata(&mut bus, disk()).unwrap();
        for (p, v) in [
            (port::DEVICE, 0xe0),
            (port::SECTOR_COUNT, 1),
            (port::LBA_LOW, 3),
            (port::LBA_MID, 0),
            (port::LBA_HIGH, 0),
            (port::COMMAND, command::WRITE_SECTORS),
        ] {
            bus.write(u64::from(p), &[v]);
        }
        bus.write(u64::from(port::DATA), &[0xab; 512]);
        assert_eq!(inb(&bus, port::STATUS) & status::ERR, 0);
        let got = ata.lock().unwrap().backend().as_slice()[3 * 512..4 * 512].to_vec();
        assert_eq!(got, vec![0xab; 512]);
        // Past the end of the disk: an ATA error, not a panic.
        for (p, v) in [
            (port::SECTOR_COUNT, 1),
            (port::LBA_LOW, 200),
            (port::COMMAND, command::READ_SECTORS),
        ] {
            bus.write(u64::from(p), &[v]);
        }
        assert_ne!(inb(&bus, port::STATUS) & status::ERR, 0);
        // Odd widths and empty accesses are harmless.
        bus.write(u64::from(port::COMMAND), &[]);
        bus.read(u64::from(port::STATUS), &mut []);
        bus.write(u64::from(ATA_PRIMARY_CTRL), &[0, 0, 0, 0]);
    }
}
