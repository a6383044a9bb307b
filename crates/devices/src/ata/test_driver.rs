//! A minimal ATA driver for tests: register accesses as a real driver makes them, on an
//! [`Ata`] model directly (no KVM). The unit tests of this crate and the file-backed tests
//! of other crates (`pvkit-backends`) share it; other crates get it with the `test-utils`
//! feature.

use super::{port, Ata};
use crate::block_backend::BlockBackend;

/// Writes one byte to `port`.
pub fn out8<B: BlockBackend>(ata: &mut Ata<B>, port: u16, value: u8) {
    ata.write(port, &[value]);
}

/// Reads one byte from `port`.
pub fn in8<B: BlockBackend>(ata: &mut Ata<B>, port: u16) -> u8 {
    let mut b = [0u8; 1];
    ata.read(port, &mut b);
    let [v] = b;
    v
}

/// Reads one 16-bit word from `port` (the data port in word mode).
pub fn in16<B: BlockBackend>(ata: &mut Ata<B>, port: u16) -> u16 {
    let mut b = [0u8; 2];
    ata.read(port, &mut b);
    u16::from_le_bytes(b)
}

/// The status register (reading it acknowledges the interrupt, as on hardware).
pub fn status_of<B: BlockBackend>(ata: &mut Ata<B>) -> u8 {
    in8(ata, port::STATUS)
}

/// Programs an LBA28 command's task file the way a driver does, then issues `cmd`.
pub fn lba28<B: BlockBackend>(ata: &mut Ata<B>, cmd: u8, lba: u32, count: u8) {
    let [l0, l1, l2, l3] = lba.to_le_bytes();
    out8(ata, port::DEVICE, 0xE0 | (l3 & 0x0F));
    out8(ata, port::SECTOR_COUNT, count);
    out8(ata, port::LBA_LOW, l0);
    out8(ata, port::LBA_MID, l1);
    out8(ata, port::LBA_HIGH, l2);
    out8(ata, port::COMMAND, cmd);
}

/// Programs an LBA48 command through the HOB FIFO (high bytes first), then issues `cmd`.
pub fn lba48<B: BlockBackend>(ata: &mut Ata<B>, cmd: u8, lba: u64, count: u16) {
    let [l0, l1, l2, l3, l4, l5, _, _] = lba.to_le_bytes();
    let [c0, c1] = count.to_le_bytes();
    out8(ata, port::DEVICE, 0x40);
    out8(ata, port::SECTOR_COUNT, c1);
    out8(ata, port::LBA_LOW, l3);
    out8(ata, port::LBA_MID, l4);
    out8(ata, port::LBA_HIGH, l5);
    out8(ata, port::SECTOR_COUNT, c0);
    out8(ata, port::LBA_LOW, l0);
    out8(ata, port::LBA_MID, l1);
    out8(ata, port::LBA_HIGH, l2);
    out8(ata, port::COMMAND, cmd);
}
