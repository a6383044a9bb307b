//! The emulated ATA disk of `pvkit-devices` over a real image file: writes reach the file
//! and read back through a fresh handle; a read-only image refuses writes with ABRT.

use pvkit_abi::block::SECTOR_SIZE;
use pvkit_backends::FileBackend;
use pvkit_devices::ata::test_driver::{in8, lba28, lba48, out8, status_of};
use pvkit_devices::ata::{command, error, port, status, Ata};

const SECTOR: usize = SECTOR_SIZE as usize;
const READY: u8 = status::DRDY | status::DSC;
const READY_ERR: u8 = READY | status::ERR;

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
