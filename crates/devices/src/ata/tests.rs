use super::test_driver::{in16, in8, lba28, lba48, out8, status_of};
use super::*;
use crate::block_backend::{BackendError, MemBackend};
use std::io;

const READY: u8 = status::DRDY | status::DSC;
const READY_DRQ: u8 = READY | status::DRQ;
const READY_ERR: u8 = READY | status::ERR;

/// A MemBackend that counts calls and can be told to fail.
#[derive(Debug, Default)]
struct TestBackend {
    mem: MemBackend,
    flushes: u32,
    reads: u32,
    writes: u32,
    fail_read_offset: Option<u64>,
    fail_writes: bool,
    fail_flush: bool,
}

impl TestBackend {
    fn new(sectors: usize) -> Self {
        Self {
            mem: MemBackend::from_vec(pattern(sectors * SECTOR_SIZE)),
            ..Self::default()
        }
    }
}

impl BlockBackend for TestBackend {
    fn len(&self) -> u64 {
        self.mem.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.reads += 1;
        if self.fail_read_offset == Some(offset) {
            return Err(io::Error::other("injected read failure").into());
        }
        self.mem.read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.writes += 1;
        if self.fail_writes {
            return Err(io::Error::from_raw_os_error(28).into());
        }
        self.mem.write_at(offset, buf)
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.flushes += 1;
        if self.fail_flush {
            return Err(io::Error::other("injected flush failure").into());
        }
        Ok(())
    }
}

/// A large, mostly-zero disk that stores only the sectors written to it.
#[derive(Debug)]
struct SparseBackend {
    len: u64,
    sectors: std::collections::BTreeMap<u64, Vec<u8>>,
}

impl SparseBackend {
    fn new(len: u64) -> Self {
        Self {
            len,
            sectors: Default::default(),
        }
    }
}

impl BlockBackend for SparseBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        crate::block_backend::check_range(offset, buf.len(), self.len)?;
        for (i, b) in buf.iter_mut().enumerate() {
            let pos = offset + i as u64;
            let sector = self.sectors.get(&(pos / SECTOR_BYTES));
            *b = sector.map_or(0, |s| s[(pos % SECTOR_BYTES) as usize]);
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        crate::block_backend::check_range(offset, buf.len(), self.len)?;
        for (i, &b) in buf.iter().enumerate() {
            let pos = offset + i as u64;
            let sector = self
                .sectors
                .entry(pos / SECTOR_BYTES)
                .or_insert_with(|| vec![0; SECTOR_SIZE]);
            sector[(pos % SECTOR_BYTES) as usize] = b;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Deterministic, position-dependent disk contents (distinct per sector).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / SECTOR_SIZE) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

fn sector_bytes(mem: &[u8], lba: usize, count: usize) -> Vec<u8> {
    mem[lba * SECTOR_SIZE..(lba + count) * SECTOR_SIZE].to_vec()
}

/// Reads `sectors` sectors one 16-bit `inw` at a time, checking DRQ before each sector.
fn read_wordwise<B: BlockBackend>(ata: &mut Ata<B>, sectors: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..sectors {
        assert_eq!(status_of(ata), READY_DRQ);
        for _ in 0..SECTOR_SIZE / 2 {
            out.extend_from_slice(&in16(ata, port::DATA).to_le_bytes());
        }
    }
    out
}

/// Writes `data` (whole sectors) one 16-bit `outw` at a time, checking DRQ per sector.
fn write_wordwise<B: BlockBackend>(ata: &mut Ata<B>, data: &[u8]) {
    for sector in data.chunks(SECTOR_SIZE) {
        assert_eq!(status_of(ata), READY_DRQ);
        for word in sector.chunks(2) {
            ata.write(port::DATA, word);
        }
    }
}

fn words(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect()
}

fn ata_string(id: &[u16]) -> String {
    id.iter()
        .flat_map(|w| w.to_be_bytes())
        .map(char::from)
        .collect::<String>()
}

#[test]
fn power_on_state_is_ready_with_signature() {
    let mut ata = Ata::new(MemBackend::new(8 * SECTOR_SIZE));
    assert_eq!(ata.sectors(), 8);
    assert_eq!(in8(&mut ata, port::ALT_STATUS), READY);
    assert_eq!(in8(&mut ata, port::ERROR), error::DIAG_PASSED);
    assert_eq!(in8(&mut ata, port::SECTOR_COUNT), 1);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 1);
    assert_eq!(in8(&mut ata, port::LBA_MID), 0);
    assert_eq!(in8(&mut ata, port::LBA_HIGH), 0);
    assert!(!ata.irq_pending());
}

#[test]
fn identify_sequence_and_contents() {
    // 2 GiB + a partial sector: 4_194_304 whole sectors.
    let sectors: u64 = 4 * 1024 * 1024;
    let mut ata = Ata::new(SparseBackend::new(sectors * SECTOR_BYTES + 100));
    assert_eq!(ata.sectors(), sectors);

    out8(&mut ata, port::DEVICE, 0xA0);
    out8(&mut ata, port::SECTOR_COUNT, 0);
    out8(&mut ata, port::LBA_LOW, 0);
    out8(&mut ata, port::LBA_MID, 0);
    out8(&mut ata, port::LBA_HIGH, 0);
    out8(&mut ata, port::COMMAND, command::IDENTIFY_DEVICE);
    assert!(ata.irq_pending(), "IDENTIFY raises INTRQ with DRQ");
    assert_eq!(status_of(&mut ata), READY_DRQ);
    assert!(!ata.irq_pending());
    // An ATA (not ATAPI) device leaves LBA mid/high at zero.
    assert_eq!(in8(&mut ata, port::LBA_MID), 0);
    assert_eq!(in8(&mut ata, port::LBA_HIGH), 0);

    let raw = read_wordwise(&mut ata, 1);
    assert_eq!(status_of(&mut ata), READY, "DRQ drops after 256 words");
    assert!(
        !ata.irq_pending(),
        "no interrupt after the last data-in block"
    );
    let id = words(&raw);

    assert_eq!(id[0] & 0x8000, 0, "ATA device");
    assert_eq!(ata_string(&id[27..47]).trim_end(), "PVKIT ATA DISK");
    // Byte-swapped: the first character is in the high byte.
    assert_eq!(id[27], u16::from_be_bytes([b'P', b'V']));
    assert_eq!(ata_string(&id[10..20]).trim_end(), identify::SERIAL);
    assert_eq!(ata_string(&id[23..27]).trim_end(), identify::FIRMWARE);
    assert_eq!(id[47] & 0xFF, 0, "no READ/WRITE MULTIPLE");
    assert_ne!(id[49] & (1 << 9), 0, "LBA supported");
    assert_eq!(id[59] & 0x1FF, 0);
    assert_eq!(
        u32::from(id[60]) | (u32::from(id[61]) << 16),
        sectors as u32
    );
    assert_ne!(id[80] & (1 << 6), 0, "ATA-6 (48-bit) or later");
    assert_ne!(id[83] & (1 << 10), 0, "LBA48 supported");
    assert_ne!(id[86] & (1 << 10), 0, "LBA48 enabled");
    assert_eq!(id[83] & 0xC000, 0x4000, "word 83 valid");
    let lba48 = id[100..104]
        .iter()
        .rev()
        .fold(0u64, |acc, &w| (acc << 16) | u64::from(w));
    assert_eq!(lba48, sectors);
    // Integrity word: signature and checksum.
    assert_eq!(id[255] & 0xFF, 0xA5);
    assert_eq!(raw.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);

    // Extra data reads after the transfer float.
    assert_eq!(in16(&mut ata, port::DATA), 0xFFFF);
}

#[test]
fn identify_caps_lba28_capacity() {
    let id = words(&identify::identify_data(0x1_0000_0000));
    assert_eq!(id[60], 0xFFFF);
    assert_eq!(id[61], 0x0FFF);
    assert_eq!(id[100], 0);
    assert_eq!(id[101], 0);
    assert_eq!(id[102], 1);
    assert_eq!(id[1], 16383, "CHS cylinders capped");
}

#[test]
fn lba28_read_wordwise() {
    let mut ata = Ata::new(TestBackend::new(16));
    let expected = sector_bytes(ata.backend().mem.as_slice(), 3, 4);
    lba28(&mut ata, command::READ_SECTORS, 3, 4);
    assert!(ata.irq_pending());
    assert_eq!(ata.backend().reads, 1, "one sector loaded at a time");
    let got = read_wordwise(&mut ata, 4);
    assert_eq!(got, expected);
    assert_eq!(ata.backend().reads, 4);
    assert_eq!(status_of(&mut ata), READY);
    assert_eq!(in8(&mut ata, port::ERROR), 0);
}

#[test]
fn lba28_read_string_pio_single_slice() {
    let mut ata = Ata::new(TestBackend::new(16));
    let expected = sector_bytes(ata.backend().mem.as_slice(), 5, 3);
    lba28(&mut ata, command::READ_SECTORS, 5, 3);
    // One exit for `rep insw` of all 768 words.
    let mut buf = vec![0u8; 3 * SECTOR_SIZE];
    ata.read(port::DATA, &mut buf);
    assert_eq!(buf, expected);
    assert_eq!(status_of(&mut ata), READY);

    // Odd-sized and unaligned chunks (rep insd, then stray bytes) cross sectors too.
    let expected = sector_bytes(ata.backend().mem.as_slice(), 0, 2);
    lba28(&mut ata, command::READ_SECTORS, 0, 2);
    let mut got = Vec::new();
    for len in [4usize, 300, 2, 510, 100, 108] {
        let mut chunk = vec![0u8; len];
        ata.read(port::DATA, &mut chunk);
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), 1024);
    assert_eq!(got, expected);
    assert_eq!(status_of(&mut ata), READY);

    // A batched read longer than the command pads with 0xFF and ends the command.
    lba28(&mut ata, command::READ_SECTORS, 7, 1);
    let mut buf = vec![0u8; SECTOR_SIZE + 6];
    ata.read(port::DATA, &mut buf);
    assert_eq!(
        &buf[..SECTOR_SIZE],
        &sector_bytes(ata.backend().mem.as_slice(), 7, 1)[..]
    );
    assert_eq!(&buf[SECTOR_SIZE..], &[0xFF; 6]);
    assert_eq!(status_of(&mut ata), READY);
}

#[test]
fn interrupt_per_data_in_block() {
    let mut ata = Ata::new(TestBackend::new(4));
    lba28(&mut ata, command::READ_SECTORS, 0, 2);
    assert!(ata.irq_pending());
    assert_eq!(status_of(&mut ata), READY_DRQ);
    assert!(!ata.irq_pending());
    let mut buf = [0u8; SECTOR_SIZE];
    ata.read(port::DATA, &mut buf);
    assert!(ata.irq_pending(), "next block is ready");
    assert_eq!(status_of(&mut ata), READY_DRQ);
    ata.read(port::DATA, &mut buf);
    assert!(!ata.irq_pending(), "no interrupt after the last block");
    assert_eq!(status_of(&mut ata), READY);
}

#[test]
fn lba48_via_hob_fifo_and_readback() {
    // Every one of the six LBA bytes distinct and non-zero.
    let lba: u64 = 0x0102_0304_0506;
    let mut backend = SparseBackend::new((lba + 8) * SECTOR_BYTES);
    let expected: Vec<u8> = (0..2 * SECTOR_SIZE).map(|i| (i * 7) as u8).collect();
    backend.write_at(lba * SECTOR_BYTES, &expected).unwrap();
    let mut ata = Ata::new(backend);

    lba48(&mut ata, command::READ_SECTORS_EXT, lba, 2);
    assert_eq!(status_of(&mut ata), READY_DRQ);
    let mut buf = vec![0u8; 2 * SECTOR_SIZE];
    ata.read(port::DATA, &mut buf);
    assert_eq!(buf, expected);
    assert_eq!(status_of(&mut ata), READY);

    // Read back the task file: HOB=0 gives the current bytes, HOB=1 the previous ones.
    assert_eq!(in8(&mut ata, port::SECTOR_COUNT), 2);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 0x06);
    assert_eq!(in8(&mut ata, port::LBA_MID), 0x05);
    assert_eq!(in8(&mut ata, port::LBA_HIGH), 0x04);
    out8(&mut ata, port::DEVICE_CONTROL, control::HOB);
    assert_eq!(in8(&mut ata, port::SECTOR_COUNT), 0);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 0x03);
    assert_eq!(in8(&mut ata, port::LBA_MID), 0x02);
    assert_eq!(in8(&mut ata, port::LBA_HIGH), 0x01);
    // Status is not affected by HOB.
    assert_eq!(in8(&mut ata, port::ALT_STATUS), READY);
    // A write to a command block register clears HOB.
    out8(&mut ata, port::FEATURES, 0);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 0x06);

    // LBA28 cannot express the high bytes: the truncated address is a different
    // (unwritten) sector, not an alias of the LBA48 one.
    lba28(
        &mut ata,
        command::READ_SECTORS,
        (lba & 0x0FFF_FFFF) as u32,
        1,
    );
    assert_eq!(status_of(&mut ata), READY_DRQ);
    let mut buf = [0u8; SECTOR_SIZE];
    ata.read(port::DATA, &mut buf);
    assert_eq!(buf, [0u8; SECTOR_SIZE]);

    // Written through LBA48 at a high address, read back.
    let data = [0x3C; SECTOR_SIZE];
    lba48(&mut ata, command::WRITE_SECTORS_EXT, lba + 7, 1);
    ata.write(port::DATA, &data);
    assert_eq!(status_of(&mut ata), READY);
    lba48(&mut ata, command::READ_SECTORS_EXT, lba + 7, 1);
    ata.read(port::DATA, &mut buf);
    assert_eq!(buf, data);
    // One past the end.
    lba48(&mut ata, command::READ_SECTORS_EXT, lba + 7, 2);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
}

#[test]
fn hob_fifo_is_two_deep() {
    let mut ata = Ata::new(MemBackend::new(SECTOR_SIZE));
    for (i, p) in [
        port::SECTOR_COUNT,
        port::LBA_LOW,
        port::LBA_MID,
        port::LBA_HIGH,
    ]
    .into_iter()
    .enumerate()
    {
        let base = 0x10 * (i as u8 + 1);
        out8(&mut ata, p, base);
        out8(&mut ata, p, base + 1);
        out8(&mut ata, p, base + 2);
        assert_eq!(in8(&mut ata, p), base + 2);
        out8(&mut ata, port::DEVICE_CONTROL, control::HOB);
        assert_eq!(in8(&mut ata, p), base + 1, "HOB holds the previous write");
        out8(&mut ata, port::DEVICE_CONTROL, 0);
    }
}

#[test]
fn lba48_count_zero_means_65536_and_range_checked() {
    let mut ata = Ata::new(TestBackend::new(4));
    // 65536 sectors from LBA 0 does not fit a 4-sector disk.
    lba48(&mut ata, command::READ_SECTORS_EXT, 0, 0);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
    assert_eq!(ata.backend().reads, 0);

    // Maximal 48-bit LBA and count: no overflow, just IDNF.
    lba48(&mut ata, command::WRITE_SECTORS_EXT, (1 << 48) - 1, 0xFFFF);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
}

#[test]
fn write_then_read_back_mem_backend() {
    let mut ata = Ata::new(TestBackend::new(8));
    let before = ata.backend().mem.as_slice().to_vec();
    let data: Vec<u8> = (0..3 * SECTOR_SIZE).map(|i| (i % 251) as u8).collect();

    lba28(&mut ata, command::WRITE_SECTORS, 2, 3);
    assert!(
        !ata.irq_pending(),
        "no interrupt before the first data-out block"
    );
    write_wordwise(&mut ata, &data[..SECTOR_SIZE]);
    assert_eq!(
        ata.backend().writes,
        1,
        "sector written when its last word arrives"
    );
    assert!(ata.irq_pending(), "interrupt for the next data-out block");
    // The rest as one `rep outsw` exit.
    assert_eq!(status_of(&mut ata), READY_DRQ);
    ata.write(port::DATA, &data[SECTOR_SIZE..]);
    assert_eq!(ata.backend().writes, 3);
    assert!(ata.irq_pending(), "completion interrupt");
    assert_eq!(
        status_of(&mut ata),
        READY,
        "DRQ drops after the last sector"
    );

    let mem = ata.backend().mem.as_slice();
    assert_eq!(sector_bytes(mem, 2, 3), data);
    assert_eq!(sector_bytes(mem, 0, 2), sector_bytes(&before, 0, 2));
    assert_eq!(sector_bytes(mem, 5, 3), sector_bytes(&before, 5, 3));

    lba28(&mut ata, command::READ_SECTORS, 2, 3);
    assert_eq!(read_wordwise(&mut ata, 3), data);
}

#[test]
fn partial_sector_is_not_written() {
    let mut ata = Ata::new(TestBackend::new(2));
    let before = ata.backend().mem.clone();
    lba28(&mut ata, command::WRITE_SECTORS, 0, 1);
    ata.write(port::DATA, &[0xAB; SECTOR_SIZE - 2]);
    assert_eq!(ata.backend().writes, 0);
    assert_eq!(ata.backend().mem, before);
    assert_eq!(status_of(&mut ata), READY_DRQ);
    // Extra data beyond the command is dropped.
    ata.write(port::DATA, &[0xCD; 6]);
    assert_eq!(ata.backend().writes, 1);
    assert_eq!(status_of(&mut ata), READY);
    let mem = ata.backend().mem.as_slice();
    assert_eq!(&mem[..SECTOR_SIZE - 2], &[0xAB; SECTOR_SIZE - 2][..]);
    assert_eq!(&mem[SECTOR_SIZE - 2..SECTOR_SIZE], &[0xCD, 0xCD]);
    assert_eq!(&mem[SECTOR_SIZE..], &before.as_slice()[SECTOR_SIZE..]);
}

#[test]
fn sector_count_zero_is_256_sectors_lba28() {
    let mut ata = Ata::new(TestBackend::new(256));
    let expected = ata.backend().mem.as_slice().to_vec();
    lba28(&mut ata, command::READ_SECTORS, 0, 0);
    let mut buf = vec![0u8; 256 * SECTOR_SIZE];
    ata.read(port::DATA, &mut buf);
    assert_eq!(buf, expected);
    assert_eq!(ata.backend().reads, 256);
    assert_eq!(status_of(&mut ata), READY);

    // From LBA 1, 256 sectors run one past the end.
    lba28(&mut ata, command::READ_SECTORS, 1, 0);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
}

#[test]
fn out_of_range_write_is_idnf_and_writes_nothing() {
    let mut ata = Ata::new(TestBackend::new(8));
    let before = ata.backend().mem.clone();
    // Straddles the end: sectors 6..10 of an 8-sector disk.
    lba28(&mut ata, command::WRITE_SECTORS, 6, 4);
    assert!(ata.irq_pending());
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
    // The driver (wrongly) pushes data anyway: it is dropped.
    ata.write(port::DATA, &[0x5A; 4 * SECTOR_SIZE]);
    assert_eq!(ata.backend().writes, 0);
    assert_eq!(ata.backend().mem, before);

    // Entirely past the end, and LBA48 past the end.
    lba28(&mut ata, command::WRITE_SECTORS, 0x0FFF_FFFF, 1);
    assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
    lba48(&mut ata, command::WRITE_SECTORS_EXT, 8, 1);
    assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
    ata.write(port::DATA, &[0x5A; SECTOR_SIZE]);
    assert_eq!(ata.backend().mem, before);
}

#[test]
fn chs_addressing_is_aborted() {
    let mut ata = Ata::new(TestBackend::new(8));
    out8(&mut ata, port::DEVICE, 0xA0); // LBA bit clear
    out8(&mut ata, port::SECTOR_COUNT, 1);
    out8(&mut ata, port::COMMAND, command::READ_SECTORS);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::ABRT);
    assert_eq!(ata.backend().reads, 0);
}

#[test]
fn unknown_command_aborts() {
    let mut ata = Ata::new(TestBackend::new(8));
    for cmd in [0x00, 0x08, 0xA1, 0xC8, 0xCA, 0xFF] {
        out8(&mut ata, port::COMMAND, cmd);
        assert!(ata.irq_pending());
        assert_eq!(status_of(&mut ata), READY_ERR, "command {cmd:#x}");
        assert_eq!(in8(&mut ata, port::ERROR), error::ABRT);
    }
    // The next good command clears the error.
    out8(&mut ata, port::COMMAND, command::SET_FEATURES);
    assert!(ata.irq_pending());
    assert_eq!(status_of(&mut ata), READY);
    assert_eq!(in8(&mut ata, port::ERROR), 0);
}

#[test]
fn command_during_data_phase_aborts_and_cancels() {
    let mut ata = Ata::new(TestBackend::new(8));
    let before = ata.backend().mem.clone();
    lba28(&mut ata, command::WRITE_SECTORS, 0, 2);
    ata.write(port::DATA, &[0x11; 100]);
    out8(&mut ata, port::COMMAND, command::READ_SECTORS);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::ABRT);
    // The data phase is gone: further data is dropped, nothing hits the disk.
    ata.write(port::DATA, &[0x22; 2 * SECTOR_SIZE]);
    assert_eq!(ata.backend().writes, 0);
    assert_eq!(ata.backend().mem, before);
    assert_eq!(status_of(&mut ata), READY_ERR);

    // Same during a read, including a second IDENTIFY.
    out8(&mut ata, port::COMMAND, command::IDENTIFY_DEVICE);
    in16(&mut ata, port::DATA);
    out8(&mut ata, port::COMMAND, command::IDENTIFY_DEVICE);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in16(&mut ata, port::DATA), 0xFFFF);

    // And the device works normally afterwards.
    lba28(&mut ata, command::READ_SECTORS, 1, 1);
    assert_eq!(status_of(&mut ata), READY_DRQ);
    assert_eq!(
        read_wordwise(&mut ata, 1),
        sector_bytes(before.as_slice(), 1, 1)
    );
}

#[test]
fn backend_read_error_reports_unc_and_lba() {
    let mut backend = TestBackend::new(8);
    backend.fail_read_offset = Some(5 * SECTOR_SIZE as u64);
    let mut ata = Ata::new(backend);
    lba28(&mut ata, command::READ_SECTORS, 4, 3);
    let mut buf = [0u8; SECTOR_SIZE];
    ata.read(port::DATA, &mut buf); // sector 4 fine; loading 5 fails
    assert!(ata.irq_pending());
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::UNC);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 5);
    assert_eq!(in16(&mut ata, port::DATA), 0xFFFF);
}

#[test]
fn backend_write_error_sets_err_abrt() {
    let mut backend = TestBackend::new(8);
    backend.fail_writes = true;
    let mut ata = Ata::new(backend);
    lba48(&mut ata, command::WRITE_SECTORS_EXT, 3, 2);
    ata.write(port::DATA, &[7; 2 * SECTOR_SIZE]);
    assert_eq!(
        ata.backend().writes,
        1,
        "the command stops at the failing sector"
    );
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::ABRT);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 3);
}

#[test]
fn flush_calls_backend_flush() {
    let mut ata = Ata::new(TestBackend::new(8));
    out8(&mut ata, port::COMMAND, command::FLUSH_CACHE);
    assert_eq!(ata.backend().flushes, 1);
    assert!(ata.irq_pending());
    assert_eq!(status_of(&mut ata), READY);
    out8(&mut ata, port::COMMAND, command::FLUSH_CACHE_EXT);
    assert_eq!(ata.backend().flushes, 2);
    assert_eq!(status_of(&mut ata), READY);

    ata.backend_mut().fail_flush = true;
    out8(&mut ata, port::COMMAND, command::FLUSH_CACHE);
    assert_eq!(ata.backend().flushes, 3);
    assert_eq!(status_of(&mut ata), READY_ERR);
    assert_eq!(in8(&mut ata, port::ERROR), error::ABRT);
}

#[test]
fn slave_selected_reads_zero_status_and_ignores_commands() {
    let mut ata = Ata::new(TestBackend::new(8));
    out8(&mut ata, port::DEVICE, 0xF0); // LBA | DEV=1
    assert_eq!(status_of(&mut ata), 0);
    assert_eq!(in8(&mut ata, port::ALT_STATUS), 0);
    assert_eq!(in8(&mut ata, port::ERROR), 0);
    out8(&mut ata, port::SECTOR_COUNT, 1);
    out8(&mut ata, port::COMMAND, command::READ_SECTORS);
    out8(&mut ata, port::COMMAND, command::FLUSH_CACHE);
    assert_eq!(status_of(&mut ata), 0);
    assert!(!ata.irq_pending());
    assert_eq!(ata.backend().reads, 0);
    assert_eq!(ata.backend().flushes, 0);
    // Shared task file registers still read back (drivers' devchk pattern).
    out8(&mut ata, port::SECTOR_COUNT, 0x55);
    assert_eq!(in8(&mut ata, port::SECTOR_COUNT), 0x55);
    // Back to the master: nothing happened there.
    out8(&mut ata, port::DEVICE, 0xE0);
    assert_eq!(status_of(&mut ata), READY);
}

#[test]
fn srst_resets_to_signature() {
    let mut ata = Ata::new(TestBackend::new(8));
    lba28(&mut ata, command::READ_SECTORS, 2, 2);
    out8(&mut ata, port::FEATURES, 3);
    assert!(ata.irq_pending());

    out8(
        &mut ata,
        port::DEVICE_CONTROL,
        control::SRST | control::NIEN,
    );
    assert_eq!(in8(&mut ata, port::ALT_STATUS), status::BSY);
    // Commands are ignored while BSY.
    out8(&mut ata, port::COMMAND, command::IDENTIFY_DEVICE);
    assert_eq!(in8(&mut ata, port::ALT_STATUS), status::BSY);
    out8(&mut ata, port::DEVICE_CONTROL, control::NIEN);

    assert_eq!(in8(&mut ata, port::ALT_STATUS), READY);
    assert_eq!(in8(&mut ata, port::ERROR), error::DIAG_PASSED);
    assert_eq!(in8(&mut ata, port::SECTOR_COUNT), 1);
    assert_eq!(in8(&mut ata, port::LBA_LOW), 1);
    assert_eq!(in8(&mut ata, port::LBA_MID), 0);
    assert_eq!(in8(&mut ata, port::LBA_HIGH), 0);
    assert_eq!(in8(&mut ata, port::DEVICE) & device::DEV, 0);
    assert!(!ata.irq_pending());
    // The data phase was cancelled.
    assert_eq!(in16(&mut ata, port::DATA), 0xFFFF);
    assert_eq!(ata.backend().reads, 1);
}

#[test]
fn status_clears_irq_alt_status_does_not() {
    let mut ata = Ata::new(TestBackend::new(8));
    out8(&mut ata, port::COMMAND, command::SET_FEATURES);
    assert!(ata.irq_pending());
    assert_eq!(in8(&mut ata, port::ALT_STATUS), READY);
    assert_eq!(in8(&mut ata, port::ALT_STATUS), READY);
    assert!(ata.irq_pending(), "alternate status leaves INTRQ alone");
    assert_eq!(in8(&mut ata, port::STATUS), READY);
    assert!(!ata.irq_pending(), "status read acknowledges INTRQ");
}

#[test]
fn nien_masks_irq() {
    let mut ata = Ata::new(TestBackend::new(8));
    out8(&mut ata, port::DEVICE_CONTROL, control::NIEN);
    out8(&mut ata, port::COMMAND, command::SET_FEATURES);
    assert!(!ata.irq_pending());
    // Unmasking exposes the still-pending interrupt.
    out8(&mut ata, port::DEVICE_CONTROL, 0);
    assert!(ata.irq_pending());
}

#[test]
fn register_access_widths_and_unknown_ports() {
    let mut ata = Ata::new(TestBackend::new(8));
    // A 16-bit write to an 8-bit register uses the low byte only (one FIFO push).
    ata.write(port::SECTOR_COUNT, &[0x12, 0x34]);
    assert_eq!(in8(&mut ata, port::SECTOR_COUNT), 0x12);
    out8(&mut ata, port::DEVICE_CONTROL, control::HOB);
    assert_eq!(
        in8(&mut ata, port::SECTOR_COUNT),
        1,
        "previous value, not 0x34"
    );
    out8(&mut ata, port::DEVICE_CONTROL, 0);
    // A wide read returns the register in every byte.
    assert_eq!(in16(&mut ata, port::SECTOR_COUNT), 0x1212);
    // Empty accesses are no-ops.
    ata.write(port::COMMAND, &[]);
    ata.read(port::STATUS, &mut []);
    // Unknown ports float.
    assert_eq!(in8(&mut ata, 0x1F8), 0xFF);
    assert_eq!(in16(&mut ata, 0x3F7), 0xFFFF);
    ata.write(0x170, &[command::IDENTIFY_DEVICE]);
    assert_eq!(status_of(&mut ata), READY);
    // A wide write to the command port issues one command.
    ata.write(port::COMMAND, &[command::SET_FEATURES, 0xFF]);
    assert_eq!(status_of(&mut ata), READY);
}

mod proptests {
    use super::*;
    use proptest::prelude::*;

    const DISK_SECTORS: usize = 8;

    /// Records every backend access, flagging any that is not a whole, in-range,
    /// sector-aligned transfer. Otherwise behaves like a MemBackend.
    #[derive(Debug)]
    struct Auditor {
        mem: MemBackend,
        violations: Vec<String>,
        writes: u64,
    }

    impl Auditor {
        fn audit(&mut self, what: &str, offset: u64, len: usize) {
            let ok = offset.is_multiple_of(SECTOR_BYTES)
                && len == SECTOR_SIZE
                && offset + len as u64 <= self.mem.len();
            if !ok {
                self.violations
                    .push(format!("{what} {len} bytes at {offset}"));
            }
        }
    }

    impl BlockBackend for Auditor {
        fn len(&self) -> u64 {
            self.mem.len()
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
            self.audit("read", offset, buf.len());
            self.mem.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
            self.audit("write", offset, buf.len());
            self.writes += 1;
            self.mem.write_at(offset, buf)
        }
        fn flush(&mut self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Read {
            port: u16,
            len: usize,
        },
        Write {
            port: u16,
            value: u8,
            len: usize,
        },
        /// A whole driver-style task file setup plus command, so that random traffic
        /// regularly reaches (and interleaves with) real data phases.
        Issue {
            cmd: u8,
            lba: u64,
            count: u16,
            ext: bool,
        },
    }

    fn command_strategy() -> impl Strategy<Value = u8> {
        prop::sample::select(vec![
            command::READ_SECTORS,
            command::READ_SECTORS_EXT,
            command::WRITE_SECTORS,
            command::WRITE_SECTORS_EXT,
            command::FLUSH_CACHE,
            command::IDENTIFY_DEVICE,
            command::SET_FEATURES,
        ])
    }

    fn port_strategy() -> impl Strategy<Value = u16> {
        prop_oneof![
            4 => Just(port::DATA),
            6 => 0x1F1u16..=0x1F7,
            2 => Just(port::DEVICE_CONTROL),
            1 => any::<u16>(),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => 0u8..=(DISK_SECTORS as u8 + 1),
            2 => command_strategy(),
            1 => prop::sample::select(vec![0xE0, 0x40, 0xF0, control::SRST, control::HOB]),
            2 => any::<u8>(),
        ]
    }

    fn len_strategy() -> impl Strategy<Value = usize> {
        prop_oneof![
            4 => 1usize..=4,
            2 => Just(SECTOR_SIZE),
            1 => 0usize..=1100,
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        // Mostly in-range addresses, with the edges (count 0, past the end) mixed in.
        let lba = prop_oneof![4 => 0u64..DISK_SECTORS as u64, 1 => any::<u64>()];
        let count = prop_oneof![4 => 1u16..=4, 1 => 0u16..=(DISK_SECTORS as u16 + 1)];
        prop_oneof![
            3 => (port_strategy(), len_strategy()).prop_map(|(port, len)| Op::Read { port, len }),
            5 => (port_strategy(), value_strategy(), len_strategy())
                .prop_map(|(port, value, len)| Op::Write { port, value, len }),
            1 => (command_strategy(), lba, count, any::<bool>())
                .prop_map(|(cmd, lba, count, ext)| Op::Issue { cmd, lba, count, ext }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn ata_survives_random_port_traffic(ops in prop::collection::vec(op_strategy(), 1..200)) {
            let mem = MemBackend::from_vec(pattern(DISK_SECTORS * SECTOR_SIZE));
            let mut ata = Ata::new(Auditor { mem, violations: Vec::new(), writes: 0 });
            for op in ops {
                let writes_before = ata.backend().writes;
                let data_write = matches!(op, Op::Write { port: port::DATA, len: 1.., .. });
                match op {
                    Op::Read { port, len } => {
                        let mut buf = vec![0u8; len];
                        ata.read(port, &mut buf);
                    }
                    Op::Write { port, value, len } => ata.write(port, &vec![value; len]),
                    Op::Issue { cmd, lba, count, ext: true } => lba48(&mut ata, cmd, lba, count),
                    Op::Issue { cmd, lba, count, ext: false } => {
                        lba28(&mut ata, cmd, lba as u32, count as u8)
                    }
                }
                // Invariants that must hold after every access.
                if !data_write {
                    prop_assert_eq!(ata.backend().writes, writes_before, "write without data");
                }
                prop_assert!(ata.pos <= SECTOR_SIZE);
                let drq = in8(&mut ata, port::ALT_STATUS) & status::DRQ != 0;
                prop_assert_eq!(drq, ata.transfer != Transfer::None && ata.master_selected()
                    && !ata.in_reset());
            }
            let backend = ata.into_backend();
            prop_assert!(backend.violations.is_empty(), "{:?}", backend.violations);
            prop_assert_eq!(backend.mem.len(), (DISK_SECTORS * SECTOR_SIZE) as u64);
        }

        /// A write command fed through arbitrarily split string-PIO exits changes exactly
        /// the sectors it addressed (or nothing, if out of range), and reads back intact.
        #[test]
        fn chunked_write_then_read_matches_model(
            lba in 0u64..=(DISK_SECTORS as u64 + 2),
            count in 0u16..=(DISK_SECTORS as u16 + 2),
            ext in any::<bool>(),
            chunks in prop::collection::vec(1usize..=700, 1..40),
            seed in any::<u8>(),
        ) {
            let original = pattern(DISK_SECTORS * SECTOR_SIZE);
            let mut ata = Ata::new(MemBackend::from_vec(original.clone()));
            let sectors = match (count, ext) {
                (0, true) => 65536,
                (0, false) => 256,
                (n, _) => u64::from(n),
            };
            let in_range = lba + sectors <= DISK_SECTORS as u64;
            let total = if in_range { sectors as usize * SECTOR_SIZE } else { 0 };
            let data: Vec<u8> = (0..total).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();

            let (write, read) = if ext {
                (command::WRITE_SECTORS_EXT, command::READ_SECTORS_EXT)
            } else {
                (command::WRITE_SECTORS, command::READ_SECTORS)
            };
            let issue = |ata: &mut Ata<MemBackend>, cmd| {
                if ext {
                    lba48(ata, cmd, lba, count);
                } else {
                    lba28(ata, cmd, lba as u32, count as u8);
                }
            };

            issue(&mut ata, write);
            let mut sent = 0;
            for &len in chunks.iter().cycle().take(10_000) {
                if sent >= data.len() {
                    break;
                }
                let end = (sent + len).min(data.len());
                ata.write(port::DATA, &data[sent..end]);
                sent = end;
            }
            if in_range {
                prop_assert_eq!(status_of(&mut ata), READY);
                let mut expected = original.clone();
                let start = lba as usize * SECTOR_SIZE;
                expected[start..start + total].copy_from_slice(&data);
                prop_assert_eq!(ata.backend().as_slice(), &expected[..]);

                issue(&mut ata, read);
                let mut got = Vec::new();
                for &len in chunks.iter().rev().cycle().take(10_000) {
                    if got.len() >= total {
                        break;
                    }
                    let mut buf = vec![0u8; len.min(total - got.len())];
                    ata.read(port::DATA, &mut buf);
                    got.extend_from_slice(&buf);
                }
                prop_assert_eq!(got, data);
                prop_assert_eq!(status_of(&mut ata), READY);
            } else {
                prop_assert_eq!(status_of(&mut ata), READY_ERR);
                prop_assert_eq!(in8(&mut ata, port::ERROR), error::IDNF);
                prop_assert_eq!(ata.backend().as_slice(), &original[..]);
            }
        }
    }
}
