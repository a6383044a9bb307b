//! A polling ATA PIO driver for the master disk of the primary channel (`0x1F0..=0x1F7`,
//! control `0x3F6`), written like a real one (the osdev/Linux libata PIO protocols), for
//! the emulated disk and for hardware.
//!
//! No interrupts (`nIEN` is set once), no DMA: every sector goes through the data port with
//! one `rep insw` / `rep outsw` of 256 words.
//!
//! # Commands
//!
//! A transfer of `count` sectors at `lba` uses
//! - READ/WRITE SECTORS (`0x20`/`0x30`, LBA28) when `lba + count <= 2^28` and
//!   `count <= 256`;
//! - otherwise READ/WRITE SECTORS EXT (`0x24`/`0x34`, LBA48) if the disk supports LBA48
//!   (IDENTIFY word 83 bit 10), in commands of up to 65536 sectors;
//! - otherwise LBA28 commands of up to 256 sectors (still within `2^28`).
//!
//! So a 4 KiB transfer is one LBA28 command and a 1 MiB one a single EXT command (as
//! libata: LBA28 when it fits, LBA48 when the range or count needs it).
//! FLUSH CACHE uses `0xEA` (EXT) on LBA48 disks, `0xE7` otherwise.
//!
//! # Port accesses (each one VM exit on a VMM)
//!
//! The driver keeps one invariant: between commands the device is idle (not `BSY`, no
//! `DRQ`). It is established by [`Ata::probe`] and checked at the end of every command, so
//! no command needs a status poll before it is issued. Counted on the emulated disk (which
//! is never `BSY` and raises `DRQ` at once):
//!
//! | operation | LBA28 | LBA48 (EXT) |
//! |---|---|---|
//! | issue a command (task file + command) | 6 writes | 10 writes |
//! | each sector | 1 status read + 1 `rep insw`/`rep outsw` | same |
//! | completion (after the last sector) | 1 status read | same |
//! | **`n`-sector read or write, one command** | **`2n + 7`** | **`2n + 11`** |
//! | FLUSH CACHE (EXT) | 2 writes + 1 status read = **3** | **3** |
//!
//! The task file of an LBA28 command: device (`0xE0 | lba[27:24]`), sector count,
//! LBA low, mid, high, command. Of an EXT command: device (`0xE0`), then the "previous"
//! bytes (`count[15:8]`, `lba[31:24]`, `lba[39:32]`, `lba[47:40]`), then the current ones
//! (`count[7:0]`, `lba[7:0]`, `lba[15:8]`, `lba[23:16]`), then the command. A flush writes
//! the device register and the command. [`Ata::probe`] costs 1 control write (`nIEN`),
//! 1 device write, 1 status read (idle check), the IDENTIFY command write, 1 status read,
//! 1 `rep insw` of 256 words and 1 completion status read: 7 accesses.
//!
//! On real hardware the counts grow only by extra status reads while the disk is `BSY` or
//! has not raised `DRQ` yet (each poll is bounded by [`POLL_LIMIT`] reads). The 400 ns a
//! device may take to raise `BSY` after a command is written is not waited for separately
//! (Linux reads the alternate status once for it): in a VM the command write is itself an
//! exit of microseconds; a bare-metal port of this driver should add that read.
//!
//! Per sector the string instruction is one access as the driver sees it; how many VM
//! exits it becomes is the hypervisor's business. Measured on KVM (kvm_pvm, and KVM's
//! instruction emulator does the same on hardware): a `rep insw` of 256 words that stays
//! inside one page is **one** exit (KVM reads ahead for string input), but every element
//! of a `rep outsw` is its **own** exit, 256 per sector. So on KVM an `n`-sector read is
//! `2n + 7` exits (LBA28) and an `n`-sector write `257n + 7` (`257n + 11` for EXT): 2063
//! for 4 KiB, 526 347 for 1 MiB. Buffers should be 512-byte aligned so that no sector
//! straddles a page (which would split a `rep insw` into two exits).
//!
//! Errors come back as [`AtaError`] with the status and error registers (the error
//! register is read only on the error path). Driver-side argument checks report
//! `status == 0`.

use crate::port::StringIo;

/// Bytes per sector.
pub const SECTOR_SIZE: usize = 512;
/// Most status reads one poll makes before giving up (≈ 1 s on real hardware).
pub const POLL_LIMIT: u32 = 1_000_000;

/// Data register (16-bit PIO).
pub const DATA: u16 = 0x1F0;
/// Error register (read).
pub const ERROR: u16 = 0x1F1;
/// Sector count register.
pub const SECTOR_COUNT: u16 = 0x1F2;
/// LBA bits 7:0 (EXT previous: 31:24).
pub const LBA_LOW: u16 = 0x1F3;
/// LBA bits 15:8 (EXT previous: 39:32).
pub const LBA_MID: u16 = 0x1F4;
/// LBA bits 23:16 (EXT previous: 47:40).
pub const LBA_HIGH: u16 = 0x1F5;
/// Device (drive/head) register.
pub const DEVICE: u16 = 0x1F6;
/// Status register (read) / command register (write).
pub const STATUS: u16 = 0x1F7;
/// Command register (write).
pub const COMMAND: u16 = 0x1F7;
/// Device control register (write) / alternate status (read).
pub const CONTROL: u16 = 0x3F6;

/// Status: busy.
pub const ST_BSY: u8 = 0x80;
/// Status: device ready.
pub const ST_DRDY: u8 = 0x40;
/// Status: device fault.
pub const ST_DF: u8 = 0x20;
/// Status: data request.
pub const ST_DRQ: u8 = 0x08;
/// Status: error (see the error register).
pub const ST_ERR: u8 = 0x01;

/// Error register: ID not found (LBA out of range).
pub const ERR_IDNF: u8 = 0x10;
/// Error register: command aborted.
pub const ERR_ABRT: u8 = 0x04;

/// Device register: master, LBA addressing (bits 7 and 5 are obsolete and set).
pub const DEV_MASTER_LBA: u8 = 0xE0;
/// Device control: interrupts disabled.
pub const CTL_NIEN: u8 = 0x02;

/// READ SECTORS.
pub const CMD_READ: u8 = 0x20;
/// READ SECTORS EXT.
pub const CMD_READ_EXT: u8 = 0x24;
/// WRITE SECTORS.
pub const CMD_WRITE: u8 = 0x30;
/// WRITE SECTORS EXT.
pub const CMD_WRITE_EXT: u8 = 0x34;
/// FLUSH CACHE.
pub const CMD_FLUSH: u8 = 0xE7;
/// FLUSH CACHE EXT.
pub const CMD_FLUSH_EXT: u8 = 0xEA;
/// IDENTIFY DEVICE.
pub const CMD_IDENTIFY: u8 = 0xEC;

/// Sectors addressable by LBA28 commands.
pub const LBA28_LIMIT: u64 = 1 << 28;

/// An ATA error: the status register and, when `ERR` or `DF` was set, the error register.
///
/// `status == 0` marks a check made by the driver before touching the device (bad buffer
/// length, range past the end of the disk: `error` = [`ERR_IDNF`]). A poll that gave up
/// reports the last status it read (`BSY` set, or neither `DRQ` nor `ERR`) with
/// `error == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtaError {
    /// The status register.
    pub status: u8,
    /// The error register.
    pub error: u8,
}

impl AtaError {
    const BAD_LENGTH: AtaError = AtaError {
        status: 0,
        error: ERR_ABRT,
    };
    const OUT_OF_RANGE: AtaError = AtaError {
        status: 0,
        error: ERR_IDNF,
    };
}

/// Why [`Ata::probe`] found no usable disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Status reads `0xFF` (floating bus) or `0` (no device): nothing there.
    NoDevice,
    /// The device is there but failed IDENTIFY (e.g. an ATAPI device aborts it).
    Identify(AtaError),
    /// IDENTIFY says the disk has no LBA support or no sectors.
    NoLba,
}

/// What IDENTIFY DEVICE said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Addressable sectors (LBA48 count when supported, else the LBA28 count).
    pub sectors: u64,
    /// Whether the 48-bit commands are supported (word 83 bit 10).
    pub lba48: bool,
}

impl Identity {
    /// Decodes the 256 IDENTIFY words (little-endian bytes): word 49 bit 9 (LBA), words
    /// 60–61 (LBA28 sectors), word 83 bit 10 (LBA48), words 100–103 (LBA48 sectors).
    pub fn parse(data: &[u8; SECTOR_SIZE]) -> Option<Identity> {
        let word = |i: usize| u64::from(u16::from_le_bytes([data[2 * i], data[2 * i + 1]]));
        if word(49) & (1 << 9) == 0 {
            return None;
        }
        let lba28 = word(60) | word(61) << 16;
        let lba48 = word(83) & (1 << 10) != 0;
        let sectors = if lba48 {
            word(100) | word(101) << 16 | word(102) << 32 | word(103) << 48
        } else {
            lba28
        };
        (sectors != 0).then_some(Identity { sectors, lba48 })
    }
}

/// The master disk of the primary ATA channel.
#[derive(Debug)]
pub struct Ata<P: StringIo> {
    io: P,
    identity: Identity,
}

impl<P: StringIo> Ata<P> {
    /// Finds and identifies the disk: sets `nIEN`, selects the master in LBA mode, waits
    /// until it is idle, runs IDENTIFY DEVICE. 7 port accesses on the emulated disk (see
    /// the module documentation).
    pub fn probe(io: P) -> Result<Self, ProbeError> {
        let mut ata = Ata {
            io,
            identity: Identity {
                sectors: 0,
                lba48: false,
            },
        };
        ata.io.write_u8(CONTROL, CTL_NIEN);
        ata.io.write_u8(DEVICE, DEV_MASTER_LBA);
        match ata.io.read_u8(STATUS) {
            0xFF | 0 => return Err(ProbeError::NoDevice),
            s if s & (ST_BSY | ST_DRQ) == 0 => {}
            _ => ata.wait_idle().map_err(ProbeError::Identify)?,
        }
        ata.io.write_u8(COMMAND, CMD_IDENTIFY);
        match ata.wait_drq() {
            Ok(()) => {}
            // A status of 0 right after IDENTIFY also means "no device".
            Err(AtaError { status: 0, .. }) => return Err(ProbeError::NoDevice),
            Err(e) => return Err(ProbeError::Identify(e)),
        }
        let mut data = [0u8; SECTOR_SIZE];
        ata.io.read_words(DATA, &mut data);
        ata.complete().map_err(ProbeError::Identify)?;
        ata.identity = Identity::parse(&data).ok_or(ProbeError::NoLba)?;
        Ok(ata)
    }

    /// What IDENTIFY said.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Addressable sectors.
    pub fn sectors(&self) -> u64 {
        self.identity.sectors
    }

    /// The port-I/O backend (tests inspect their recorder through it).
    pub fn io(&self) -> &P {
        &self.io
    }

    /// The port-I/O backend, mutably.
    pub fn io_mut(&mut self) -> &mut P {
        &mut self.io
    }

    /// Reads `buf.len() / 512` sectors from `lba` into `buf` (a non-zero multiple of 512
    /// bytes; 512-byte aligned for one exit per sector). `2n + 7` accesses for one LBA28
    /// command, `2n + 11` for one EXT command.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), AtaError> {
        let count = self.check(lba, buf.len())?;
        let mut done = 0;
        while done < count {
            let (cmd_count, ext) = self.plan(lba + done, count - done);
            self.issue(
                if ext { CMD_READ_EXT } else { CMD_READ },
                lba + done,
                cmd_count,
                ext,
            );
            let start = done as usize * SECTOR_SIZE;
            let end = start + cmd_count as usize * SECTOR_SIZE;
            for sector in buf[start..end].chunks_exact_mut(SECTOR_SIZE) {
                self.wait_drq()?;
                self.io.read_words(DATA, sector);
            }
            self.complete()?;
            done += cmd_count;
        }
        Ok(())
    }

    /// Writes `buf` (a non-zero multiple of 512 bytes) to `lba` on. Same accesses as
    /// [`Ata::read`], with `rep outsw`.
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), AtaError> {
        let count = self.check(lba, buf.len())?;
        let mut done = 0;
        while done < count {
            let (cmd_count, ext) = self.plan(lba + done, count - done);
            self.issue(
                if ext { CMD_WRITE_EXT } else { CMD_WRITE },
                lba + done,
                cmd_count,
                ext,
            );
            let start = done as usize * SECTOR_SIZE;
            let end = start + cmd_count as usize * SECTOR_SIZE;
            for sector in buf[start..end].chunks_exact(SECTOR_SIZE) {
                self.wait_drq()?;
                self.io.write_words(DATA, sector);
            }
            self.complete()?;
            done += cmd_count;
        }
        Ok(())
    }

    /// FLUSH CACHE (EXT on LBA48 disks): device write, command write, completion status
    /// read (3 accesses).
    pub fn flush(&mut self) -> Result<(), AtaError> {
        self.io.write_u8(DEVICE, DEV_MASTER_LBA);
        let cmd = if self.identity.lba48 {
            CMD_FLUSH_EXT
        } else {
            CMD_FLUSH
        };
        self.io.write_u8(COMMAND, cmd);
        self.complete()
    }

    /// The sector count of a transfer of `len` bytes at `lba`, if it is valid.
    fn check(&self, lba: u64, len: usize) -> Result<u64, AtaError> {
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(AtaError::BAD_LENGTH);
        }
        let count = (len / SECTOR_SIZE) as u64;
        match lba.checked_add(count) {
            Some(end) if end <= self.identity.sectors => Ok(count),
            _ => Err(AtaError::OUT_OF_RANGE),
        }
    }

    /// How many of `count` sectors at `lba` the next command moves, and whether it is an
    /// EXT command (see the module documentation).
    fn plan(&self, lba: u64, count: u64) -> (u64, bool) {
        if count <= 256 && lba + count <= LBA28_LIMIT {
            (count, false)
        } else if self.identity.lba48 {
            (count.min(65536), true)
        } else {
            // `check` keeps the range inside the disk, which without LBA48 is inside 2^28.
            (count.min(256), false)
        }
    }

    /// Writes the task file and the command: 6 port writes (LBA28) or 10 (EXT).
    #[inline]
    fn issue(&mut self, cmd: u8, lba: u64, count: u64, ext: bool) {
        let b = lba.to_le_bytes();
        let io = &mut self.io;
        if ext {
            io.write_u8(DEVICE, DEV_MASTER_LBA);
            io.write_u8(SECTOR_COUNT, (count >> 8) as u8); // 65536 → 0x0000
            io.write_u8(LBA_LOW, b[3]);
            io.write_u8(LBA_MID, b[4]);
            io.write_u8(LBA_HIGH, b[5]);
            io.write_u8(SECTOR_COUNT, count as u8);
        } else {
            io.write_u8(DEVICE, DEV_MASTER_LBA | (b[3] & 0x0F));
            io.write_u8(SECTOR_COUNT, count as u8); // 256 → 0
        }
        io.write_u8(LBA_LOW, b[0]);
        io.write_u8(LBA_MID, b[1]);
        io.write_u8(LBA_HIGH, b[2]);
        io.write_u8(COMMAND, cmd);
    }

    /// Polls the status register until the device asks for data (`DRQ`, not `BSY`): one
    /// read on the emulated disk. `ERR`/`DF` fail with the error register. A status with
    /// neither `BSY`, `DRQ` nor `ERR` is polled again: on hardware the device may not have
    /// set `BSY` yet right after the command was written.
    #[inline]
    fn wait_drq(&mut self) -> Result<(), AtaError> {
        let mut status = 0;
        for _ in 0..POLL_LIMIT {
            status = self.io.read_u8(STATUS);
            if status & ST_BSY != 0 {
                continue;
            }
            if status & (ST_ERR | ST_DF) != 0 {
                return Err(self.error(status));
            }
            if status & ST_DRQ != 0 {
                return Ok(());
            }
            if status == 0 {
                break; // nothing there (or the device vanished)
            }
        }
        Err(AtaError { status, error: 0 })
    }

    /// The end of a command: polls until not `BSY` (one read on the emulated disk), then
    /// fails on `ERR`/`DF`, or on `DRQ` (the device wants more data than we moved).
    fn complete(&mut self) -> Result<(), AtaError> {
        self.wait_idle()
    }

    fn wait_idle(&mut self) -> Result<(), AtaError> {
        let mut status = ST_BSY;
        for _ in 0..POLL_LIMIT {
            status = self.io.read_u8(STATUS);
            if status & ST_BSY == 0 {
                break;
            }
        }
        if status & (ST_ERR | ST_DF) != 0 {
            return Err(self.error(status));
        }
        if status & (ST_BSY | ST_DRQ) != 0 {
            return Err(AtaError { status, error: 0 });
        }
        Ok(())
    }

    #[cold]
    fn error(&mut self, status: u8) -> AtaError {
        AtaError {
            status,
            error: self.io.read_u8(ERROR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::fake::{Access, Recorder};

    const READY: u8 = ST_DRDY | 0x10; // DRDY | DSC
    const DRQ: u8 = READY | ST_DRQ;

    fn identify_data(sectors: u64, lba48: bool) -> [u8; SECTOR_SIZE] {
        let mut w = [0u16; 256];
        w[49] = 1 << 9;
        let lba28 = sectors.min(LBA28_LIMIT - 1);
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        if lba48 {
            w[83] = 1 << 10;
            for i in 0..4 {
                w[100 + i] = (sectors >> (16 * i)) as u16;
            }
        }
        let mut b = [0u8; SECTOR_SIZE];
        for (i, v) in w.iter().enumerate() {
            b[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// A recorder whose status reads follow `statuses` (the last one repeats).
    fn recorder(statuses: &[u8]) -> Recorder {
        let mut io = Recorder::default();
        io.reads.insert(STATUS, statuses.to_vec());
        io.reads.insert(ERROR, vec![ERR_IDNF]);
        io
    }

    fn probed(sectors: u64, lba48: bool) -> Ata<Recorder> {
        let mut io = recorder(&[READY, DRQ, READY]);
        io.words.extend(identify_data(sectors, lba48));
        let mut ata = Ata::probe(io).unwrap();
        ata.io_mut().log.clear();
        ata
    }

    #[test]
    fn probe_is_seven_accesses_and_parses_identify() {
        let mut io = recorder(&[READY, DRQ, READY]);
        io.words.extend(identify_data(1 << 30, true));
        let ata = Ata::probe(io).unwrap();
        assert_eq!(
            ata.io().log,
            [
                Access::Write(CONTROL, CTL_NIEN),
                Access::Write(DEVICE, 0xE0),
                Access::Read(STATUS, READY),
                Access::Write(COMMAND, CMD_IDENTIFY),
                Access::Read(STATUS, DRQ),
                Access::ReadWords(DATA, 256),
                Access::Read(STATUS, READY),
            ]
        );
        assert_eq!(
            ata.identity(),
            Identity {
                sectors: 1 << 30,
                lba48: true
            }
        );
    }

    #[test]
    fn probe_detects_a_floating_bus_and_lba28_disks() {
        let io = recorder(&[0xFF]);
        assert_eq!(Ata::probe(io).unwrap_err(), ProbeError::NoDevice);
        let ata = probed(131072, false);
        assert_eq!(
            ata.identity(),
            Identity {
                sectors: 131072,
                lba48: false
            }
        );
    }

    #[test]
    fn an_8_sector_lba28_read_is_2n_plus_7_accesses() {
        let mut ata = probed(1 << 30, true);
        ata.io_mut()
            .reads
            .insert(STATUS, vec![DRQ; 8].into_iter().chain([READY]).collect());
        ata.io_mut().words.extend((0..4096).map(|i| i as u8));
        let mut buf = [0u8; 4096];
        ata.read(0x0023_4567, &mut buf).unwrap();
        let log = &ata.io().log;
        assert_eq!(log.len(), 2 * 8 + 7);
        assert_eq!(
            log[..6],
            [
                Access::Write(DEVICE, 0xE0),
                Access::Write(SECTOR_COUNT, 8),
                Access::Write(LBA_LOW, 0x67),
                Access::Write(LBA_MID, 0x45),
                Access::Write(LBA_HIGH, 0x23),
                Access::Write(COMMAND, CMD_READ),
            ]
        );
        for i in 0..8 {
            assert_eq!(log[6 + 2 * i], Access::Read(STATUS, DRQ));
            assert_eq!(log[7 + 2 * i], Access::ReadWords(DATA, 256));
        }
        assert_eq!(log[22], Access::Read(STATUS, READY));
        assert_eq!(buf[4095], (4095 % 256) as u8);
    }

    #[test]
    fn lba28_carries_bits_27_to_24_in_the_device_register() {
        let mut ata = probed(1 << 30, true);
        ata.io_mut().reads.insert(STATUS, vec![DRQ, READY]);
        ata.write(0x0ABC_DEF0, &[7u8; 512]).unwrap();
        assert_eq!(ata.io().log[0], Access::Write(DEVICE, 0xEA));
        assert_eq!(ata.io().log[5], Access::Write(COMMAND, CMD_WRITE));
        assert_eq!(ata.io().written, [7u8; 512]);
        assert_eq!(ata.io().log.len(), 2 + 7);
    }

    #[test]
    fn a_1m_write_is_one_ext_command_with_the_hob_sequence() {
        let mut ata = probed(1 << 40, true);
        ata.io_mut()
            .reads
            .insert(STATUS, vec![DRQ; 2048].into_iter().chain([READY]).collect());
        let buf = vec![1u8; 1 << 20];
        let lba = 0x12_3456_789A;
        ata.write(lba, &buf).unwrap();
        let log = &ata.io().log;
        assert_eq!(log.len(), 2 * 2048 + 11);
        assert_eq!(
            log[..10],
            [
                Access::Write(DEVICE, 0xE0),
                Access::Write(SECTOR_COUNT, 0x08), // 2048 >> 8
                Access::Write(LBA_LOW, 0x34),
                Access::Write(LBA_MID, 0x12),
                Access::Write(LBA_HIGH, 0x00),
                Access::Write(SECTOR_COUNT, 0x00),
                Access::Write(LBA_LOW, 0x9A),
                Access::Write(LBA_MID, 0x78),
                Access::Write(LBA_HIGH, 0x56),
                Access::Write(COMMAND, CMD_WRITE_EXT),
            ]
        );
    }

    #[test]
    fn lba28_only_disks_split_long_transfers_into_256_sector_commands() {
        let mut ata = probed(1 << 20, false);
        let statuses: Vec<u8> = (0..2)
            .flat_map(|n| {
                vec![DRQ; if n == 0 { 256 } else { 44 }]
                    .into_iter()
                    .chain([READY])
            })
            .collect();
        ata.io_mut().reads.insert(STATUS, statuses);
        let mut buf = vec![0u8; 300 * 512];
        ata.read(0, &mut buf).unwrap();
        let log = &ata.io().log;
        assert_eq!(log.len(), (2 * 256 + 7) + (2 * 44 + 7));
        assert_eq!(log[1], Access::Write(SECTOR_COUNT, 0)); // 256
        assert_eq!(log[2 * 256 + 7 + 1], Access::Write(SECTOR_COUNT, 44));
        assert_eq!(log[2 * 256 + 7 + 2], Access::Write(LBA_LOW, 0)); // lba 256
        assert_eq!(log[2 * 256 + 7 + 3], Access::Write(LBA_MID, 1));
    }

    #[test]
    fn errors_carry_status_and_error_registers() {
        let mut ata = probed(1 << 20, true);
        ata.io_mut().reads.insert(STATUS, vec![READY | ST_ERR]);
        let mut buf = [0u8; 512];
        assert_eq!(
            ata.read(5, &mut buf),
            Err(AtaError {
                status: READY | ST_ERR,
                error: ERR_IDNF
            })
        );
        // Driver-side checks touch no port.
        ata.io_mut().log.clear();
        assert_eq!(ata.read(1 << 20, &mut buf), Err(AtaError::OUT_OF_RANGE));
        assert_eq!(ata.read(0, &mut buf[..100]), Err(AtaError::BAD_LENGTH));
        assert!(ata.io().log.is_empty());
    }

    #[test]
    fn busy_is_polled_and_a_stuck_device_times_out() {
        let mut ata = probed(1 << 20, true);
        ata.io_mut()
            .reads
            .insert(STATUS, vec![ST_BSY, ST_BSY, DRQ, ST_BSY, READY]);
        let mut buf = [0u8; 512];
        ata.read(1, &mut buf).unwrap();
        assert_eq!(ata.io().log.len(), 2 + 7 + 3, "3 extra status reads");
        ata.io_mut().reads.insert(STATUS, vec![ST_BSY]);
        assert_eq!(
            ata.read(1, &mut buf),
            Err(AtaError {
                status: ST_BSY,
                error: 0
            })
        );
    }

    #[test]
    fn flush_is_three_accesses() {
        let mut ata = probed(1 << 20, true);
        ata.io_mut().reads.insert(STATUS, vec![READY]);
        ata.flush().unwrap();
        assert_eq!(
            ata.io().log,
            [
                Access::Write(DEVICE, 0xE0),
                Access::Write(COMMAND, CMD_FLUSH_EXT),
                Access::Read(STATUS, READY),
            ]
        );
    }
}
