//! The emulated ATA disk of `pvkit-devices` over a real image file: writes reach the file
//! and read back through a fresh handle; a read-only image refuses writes with ABRT.

use pvkit_abi::block::SECTOR_SIZE;
use pvkit_backends::FileBackend;
use pvkit_devices::ata::{command, error, port, status, Ata};
use pvkit_devices::BlockBackend;

const SECTOR: usize = SECTOR_SIZE as usize;
const READY: u8 = status::DRDY | status::DSC;
const READY_ERR: u8 = READY | status::ERR;

fn out8<B: BlockBackend>(ata: &mut Ata<B>, port: u16, value: u8) {
    ata.write(port, &[value]);
}

fn in8<B: BlockBackend>(ata: &mut Ata<B>, port: u16) -> u8 {
    let mut b = [0u8; 1];
    ata.read(port, &mut b);
    b[0]
}

fn status_of<B: BlockBackend>(ata: &mut Ata<B>) -> u8 {
    in8(ata, port::STATUS)
}

/// Programs an LBA28 command's task file the way a driver does, then issues `cmd`.
fn lba28<B: BlockBackend>(ata: &mut Ata<B>, cmd: u8, lba: u32, count: u8) {
    out8(ata, port::DEVICE, 0xE0 | ((lba >> 24) as u8 & 0x0F));
    out8(ata, port::SECTOR_COUNT, count);
    out8(ata, port::LBA_LOW, lba as u8);
    out8(ata, port::LBA_MID, (lba >> 8) as u8);
    out8(ata, port::LBA_HIGH, (lba >> 16) as u8);
    out8(ata, port::COMMAND, cmd);
}

/// Programs an LBA48 command through the HOB FIFO (high bytes first), then issues `cmd`.
fn lba48<B: BlockBackend>(ata: &mut Ata<B>, cmd: u8, lba: u64, count: u16) {
    let l = lba.to_le_bytes();
    let c = count.to_le_bytes();
    out8(ata, port::DEVICE, 0x40);
    out8(ata, port::SECTOR_COUNT, c[1]);
    out8(ata, port::LBA_LOW, l[3]);
    out8(ata, port::LBA_MID, l[4]);
    out8(ata, port::LBA_HIGH, l[5]);
    out8(ata, port::SECTOR_COUNT, c[0]);
    out8(ata, port::LBA_LOW, l[0]);
    out8(ata, port::LBA_MID, l[1]);
    out8(ata, port::LBA_HIGH, l[2]);
    out8(ata, port::COMMAND, cmd);
}

/// A temporary file path removed on drop.
struct TempPath(std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn write_then_read_back_file_backend() {
    let path = TempPath(
        std::env::temp_dir().join(format!("pvkit-backends-ata-{}.img", std::process::id())),
    );
    let backend = FileBackend::create(&path.0, 64 * SECTOR_SIZE).unwrap();
    let mut ata = Ata::new(backend);
    assert_eq!(ata.sectors(), 64);
    let data: Vec<u8> = (0..2 * SECTOR).map(|i| (i * 13 + 7) as u8).collect();

    lba48(&mut ata, command::WRITE_SECTORS_EXT, 60, 2);
    ata.write(port::DATA, &data);
    assert_eq!(status_of(&mut ata), READY);
    out8(&mut ata, port::COMMAND, command::FLUSH_CACHE_EXT);
    assert_eq!(status_of(&mut ata), READY);

    // Through a fresh device and file handle.
    drop(ata);
    let mut ata = Ata::new(FileBackend::open(&path.0, true).unwrap());
    lba28(&mut ata, command::READ_SECTORS, 60, 2);
    let mut buf = vec![0u8; 2 * SECTOR];
    ata.read(port::DATA, &mut buf);
    assert_eq!(buf, data);
    lba28(&mut ata, command::READ_SECTORS, 0, 1);
    ata.read(port::DATA, &mut buf[..SECTOR]);
    assert!(buf[..SECTOR].iter().all(|&b| b == 0));

    // Writes to a read-only image fail with ABRT and report the sector.
    lba28(&mut ata, command::WRITE_SECTORS, 9, 1);
    ata.write(port::DATA, &[1; SECTOR]);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::ABRT);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 9);
}
