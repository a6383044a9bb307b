//! Emulated ATA/IDE disk: the master device on the legacy primary channel, PIO only.
//!
//! [`Ata`] is a synchronous state machine over a [`BlockBackend`]: the VMM forwards every
//! port exit in `0x1F0..=0x1F7` and `0x3F6` to [`Ata::read`] / [`Ata::write`], and the
//! device answers from its task-file registers and sector buffer. Backend I/O completes
//! inside the call, so the guest never observes `BSY` except while it holds `SRST`; the
//! `DRQ`/`ERR`/`DRDY` sequencing and the `INTRQ` line follow the ATA PIO protocols.
//!
//! # Protocol summary
//!
//! * **PIO data-in** (IDENTIFY DEVICE, READ SECTORS (EXT)): the first sector is loaded when
//!   the command is written; `DRQ` is set and `INTRQ` asserted for every sector. When the
//!   last byte of a sector has been read the next sector is loaded from the backend.
//!   After the last sector `DRQ` clears with no further interrupt.
//! * **PIO data-out** (WRITE SECTORS (EXT)): `DRQ` is set immediately (no interrupt for
//!   the first sector). Each sector is written to the backend when its last byte
//!   arrives; `INTRQ` is asserted for each following sector and on completion.
//! * **Non-data** (FLUSH CACHE (EXT), SET FEATURES): complete at once with `INTRQ`.
//!
//! # Errors reported to the guest
//!
//! | condition                                               | status | error  |
//! |---------------------------------------------------------|--------|--------|
//! | unknown command, CHS addressing, command during data phase | `ERR`  | `ABRT` |
//! | LBA range not inside the disk (checked before any I/O)  | `ERR`  | `IDNF` |
//! | backend read failure                                    | `ERR`  | `UNC`  |
//! | backend write or flush failure (including read-only)    | `ERR`  | `ABRT` |
//!
//! Write failures use `ABRT`, as ATA8-ACS lists it for a write the device could not
//! complete (and as QEMU does); `DF` is never set. On read/write failures the LBA
//! registers are set to the failing sector, as the standard requires.
//!
//! # Access widths
//!
//! KVM batches string I/O (`rep insw` / `rep outsw`) into one exit whose data holds every
//! element, so the data port moves `data.len()` bytes through the sector buffer, in
//! order, crossing sector boundaries within a multi-sector command. 8-, 16- and 32-bit
//! accesses therefore all work. Data-port reads with no data-in phase read `0xFF`;
//! data-port writes with no data-out phase are dropped.
//!
//! The other registers are 8 bits wide. A wider or repeated access is treated as a single
//! access: a write uses the low byte (`data[0]`) and ignores the rest, a read returns the
//! register value in every byte of `data` (its side effects, such as clearing `INTRQ`,
//! happen once). Unknown ports read `0xFF` and ignore writes, like a floating bus.
//!
//! # Device 1
//!
//! Only the master exists. With the slave selected (`DEV` bit set in the device
//! register) the status, alternate status and error registers read 0, data-port accesses
//! float, and commands are ignored; the other registers are shared and stay readable.
//! Drivers detect the absent slave from the zero status.

mod identify;
mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_driver;
#[cfg(test)]
mod tests;

pub use state::{AtaState, HobState, TransferState};

use crate::block_backend::BlockBackend;

/// Size of an ATA logical sector in bytes.
pub const SECTOR_SIZE: usize = 512;
const SECTOR_BYTES: u64 = SECTOR_SIZE as u64;

/// Highest sector count addressable by 28-bit commands (IDENTIFY words 60–61 cap).
pub const LBA28_MAX_SECTORS: u64 = 0x0FFF_FFFF;
/// Highest sector count addressable by 48-bit commands (IDENTIFY words 100–103 cap).
pub const LBA48_MAX_SECTORS: u64 = 0xFFFF_FFFF_FFFF;

/// First port of the primary channel's command block (`0x1F0..=0x1F7`).
pub const ATA_PRIMARY_CMD_BASE: u16 = 0x1F0;
/// Number of ports in the command block.
pub const ATA_PRIMARY_CMD_LEN: u16 = 8;
/// The primary channel's control block port (alternate status / device control).
pub const ATA_PRIMARY_CTRL: u16 = 0x3F6;
/// The legacy ISA interrupt line of the primary channel.
pub const ATA_PRIMARY_IRQ: u32 = 14;

/// Port numbers of the primary channel's registers.
pub mod port {
    /// Data register (16-bit PIO transfers).
    pub const DATA: u16 = 0x1F0;
    /// Error register (read).
    pub const ERROR: u16 = 0x1F1;
    /// Features register (write).
    pub const FEATURES: u16 = 0x1F1;
    /// Sector count register.
    pub const SECTOR_COUNT: u16 = 0x1F2;
    /// LBA bits 0–7 (LBA48: also 24–31 in the HOB copy).
    pub const LBA_LOW: u16 = 0x1F3;
    /// LBA bits 8–15 (LBA48: also 32–39 in the HOB copy).
    pub const LBA_MID: u16 = 0x1F4;
    /// LBA bits 16–23 (LBA48: also 40–47 in the HOB copy).
    pub const LBA_HIGH: u16 = 0x1F5;
    /// Drive/head (device) register.
    pub const DEVICE: u16 = 0x1F6;
    /// Status register (read; clears `INTRQ`).
    pub const STATUS: u16 = 0x1F7;
    /// Command register (write).
    pub const COMMAND: u16 = 0x1F7;
    /// Alternate status register (read; leaves `INTRQ` alone).
    pub const ALT_STATUS: u16 = 0x3F6;
    /// Device control register (write).
    pub const DEVICE_CONTROL: u16 = 0x3F6;
}

/// Status register bits.
pub mod status {
    /// Busy.
    pub const BSY: u8 = 0x80;
    /// Device ready.
    pub const DRDY: u8 = 0x40;
    /// Device fault (never set by this model).
    pub const DF: u8 = 0x20;
    /// Device seek complete.
    pub const DSC: u8 = 0x10;
    /// Data request: the data port is ready for a transfer.
    pub const DRQ: u8 = 0x08;
    /// Error: see the error register.
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod error {
    /// Uncorrectable data error (backend read failure).
    pub const UNC: u8 = 0x40;
    /// ID not found: the LBA range is not inside the disk.
    pub const IDNF: u8 = 0x10;
    /// Command aborted.
    pub const ABRT: u8 = 0x04;
    /// Diagnostic code "device 0 passed", left in the error register by a reset.
    pub const DIAG_PASSED: u8 = 0x01;
}

/// Device control register bits.
pub mod control {
    /// High order byte: reads of `0x1F2..=0x1F5` return the previous (HOB) values.
    pub const HOB: u8 = 0x80;
    /// Software reset.
    pub const SRST: u8 = 0x04;
    /// Interrupt disable (`INTRQ` is not driven while set).
    pub const NIEN: u8 = 0x02;
}

/// Device (drive/head) register bits.
pub mod device {
    /// LBA addressing (clear = CHS, which this model rejects).
    pub const LBA: u8 = 0x40;
    /// Device select: 0 = master, 1 = slave.
    pub const DEV: u8 = 0x10;
    /// LBA28 bits 24–27.
    pub const HEAD_MASK: u8 = 0x0F;
}

/// Supported command opcodes; everything else is aborted.
pub mod command {
    /// READ SECTORS (LBA28, PIO data-in).
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS EXT (LBA48, PIO data-in).
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// WRITE SECTORS (LBA28, PIO data-out).
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS EXT (LBA48, PIO data-out).
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// FLUSH CACHE.
    pub const FLUSH_CACHE: u8 = 0xE7;
    /// FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    /// IDENTIFY DEVICE (PIO data-in of 256 words).
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
    /// SET FEATURES (accepted as a no-op).
    pub const SET_FEATURES: u8 = 0xEF;
}

/// An 8-bit command-block register with its LBA48 "previous content" copy.
///
/// Each write pushes the current value into the HOB copy, forming a two-deep FIFO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HobRegister {
    cur: u8,
    hob: u8,
}

impl HobRegister {
    const fn new(cur: u8) -> Self {
        Self { cur, hob: 0 }
    }

    fn push(&mut self, value: u8) {
        self.hob = self.cur;
        self.cur = value;
    }

    fn get(self, hob: bool) -> u8 {
        if hob {
            self.hob
        } else {
            self.cur
        }
    }
}

/// The data phase in progress, if any. `DRQ` is set exactly when this is not `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// No data phase.
    None,
    /// IDENTIFY data is in the buffer.
    Identify,
    /// Sector `lba` is in the buffer; `remaining` sectors (including it) are left.
    /// `ext` records a 48-bit command, for reporting a failing LBA.
    Read { lba: u64, remaining: u32, ext: bool },
    /// The buffer collects sector `lba`; `remaining` sectors (including it) are left.
    Write { lba: u64, remaining: u32, ext: bool },
}

/// The master disk on the primary ATA channel.
///
/// See the [module documentation](self) for the emulated protocol.
#[derive(Debug)]
pub struct Ata<B> {
    backend: B,
    /// Whole sectors in the backend; a trailing partial sector is not addressable.
    sectors: u64,
    features: u8,
    sector_count: HobRegister,
    lba_low: HobRegister,
    lba_mid: HobRegister,
    lba_high: HobRegister,
    device: u8,
    error: u8,
    /// Status without `DRQ` (derived from `transfer`) and `BSY` (derived from `SRST`).
    status: u8,
    control: u8,
    intrq: bool,
    transfer: Transfer,
    buf: [u8; SECTOR_SIZE],
    /// Next byte of `buf` to transfer; always `<= SECTOR_SIZE`.
    pos: usize,
}

impl<B: BlockBackend> Ata<B> {
    /// A disk over `backend`, in its power-on state (reset signature, ready).
    pub fn new(backend: B) -> Self {
        let sectors = backend.len() / SECTOR_BYTES;
        let mut ata = Self {
            backend,
            sectors,
            features: 0,
            sector_count: HobRegister::default(),
            lba_low: HobRegister::default(),
            lba_mid: HobRegister::default(),
            lba_high: HobRegister::default(),
            device: 0,
            error: 0,
            status: 0,
            control: 0,
            intrq: false,
            transfer: Transfer::None,
            buf: [0; SECTOR_SIZE],
            pos: 0,
        };
        ata.reset_device();
        ata
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (for example to flush it on VM shutdown).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Consumes the device, returning the backend.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Number of addressable sectors (the backend length divided by [`SECTOR_SIZE`]).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether `INTRQ` is asserted: an interrupt is pending, `nIEN` is clear and the
    /// master is selected.
    pub fn irq_pending(&self) -> bool {
        self.intrq && self.control & control::NIEN == 0 && self.master_selected()
    }

    /// Handles a guest read of `data.len()` bytes from `port`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        if port == port::DATA {
            self.read_data(data);
            return;
        }
        let value = self.read_register(port);
        data.fill(value);
    }

    /// Handles a guest write of `data` to `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if (ATA_PRIMARY_CMD_BASE..ATA_PRIMARY_CMD_BASE + ATA_PRIMARY_CMD_LEN).contains(&port) {
            // ATA: a write to any command block register clears HOB.
            self.control &= !control::HOB;
        }
        match port {
            port::DATA => self.write_data(data),
            port::FEATURES => self.features = value,
            port::SECTOR_COUNT => self.sector_count.push(value),
            port::LBA_LOW => self.lba_low.push(value),
            port::LBA_MID => self.lba_mid.push(value),
            port::LBA_HIGH => self.lba_high.push(value),
            port::DEVICE => self.device = value,
            port::COMMAND => self.command(value),
            port::DEVICE_CONTROL => self.device_control(value),
            _ => {}
        }
    }

    fn master_selected(&self) -> bool {
        self.device & device::DEV == 0
    }

    fn in_reset(&self) -> bool {
        self.control & control::SRST != 0
    }

    /// The master's status register as the guest sees it.
    fn status_value(&self) -> u8 {
        if self.in_reset() {
            status::BSY
        } else if !self.master_selected() {
            0
        } else if self.transfer == Transfer::None {
            self.status
        } else {
            self.status | status::DRQ
        }
    }

    fn read_register(&mut self, port: u16) -> u8 {
        let hob = self.control & control::HOB != 0;
        match port {
            port::ERROR if self.master_selected() => self.error,
            port::ERROR => 0,
            port::SECTOR_COUNT => self.sector_count.get(hob),
            port::LBA_LOW => self.lba_low.get(hob),
            port::LBA_MID => self.lba_mid.get(hob),
            port::LBA_HIGH => self.lba_high.get(hob),
            port::DEVICE => self.device,
            port::STATUS => {
                let value = self.status_value();
                if self.master_selected() {
                    self.intrq = false;
                }
                value
            }
            port::ALT_STATUS => self.status_value(),
            _ => 0xFF,
        }
    }

    /// Whether the data port is live: master selected and not held in reset.
    fn data_port_live(&self) -> bool {
        self.master_selected() && !self.in_reset()
    }

    fn read_data(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            if !self.data_port_live()
                || !matches!(self.transfer, Transfer::Identify | Transfer::Read { .. })
            {
                out.fill(0xFF);
                return;
            }
            let avail = self.buf.get(self.pos..).unwrap_or_default();
            let n = avail.len().min(out.len());
            let (head, tail) = out.split_at_mut(n);
            // `n <= avail.len()`: the zip copies all of `head`.
            head.iter_mut().zip(avail).for_each(|(d, s)| *d = *s);
            out = tail;
            self.pos += n;
            if self.pos >= SECTOR_SIZE {
                self.sector_read_done();
            }
        }
    }

    fn write_data(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            if !self.data_port_live() || !matches!(self.transfer, Transfer::Write { .. }) {
                return;
            }
            let space = self.buf.get_mut(self.pos..).unwrap_or_default();
            let n = space.len().min(input.len());
            let (head, tail) = input.split_at(n);
            // `n <= space.len()`: the zip copies all of `head`.
            space.iter_mut().zip(head).for_each(|(d, s)| *d = *s);
            input = tail;
            self.pos += n;
            if self.pos >= SECTOR_SIZE {
                self.sector_write_done();
            }
        }
    }

    fn device_control(&mut self, value: u8) {
        let was_reset = self.in_reset();
        self.control = value;
        // The device resets when SRST is asserted and completes (leaving the signature)
        // when it is released; the register contents are the same either way.
        if was_reset != self.in_reset() {
            self.reset_device();
        }
    }

    /// Software/power-on reset: cancels any command, leaves the ATA signature.
    fn reset_device(&mut self) {
        self.transfer = Transfer::None;
        self.pos = 0;
        self.intrq = false;
        self.features = 0;
        self.sector_count = HobRegister::new(1);
        self.lba_low = HobRegister::new(1);
        self.lba_mid = HobRegister::new(0);
        self.lba_high = HobRegister::new(0);
        self.device = 0;
        self.error = error::DIAG_PASSED;
        self.status = status::DRDY | status::DSC;
    }

    fn command(&mut self, cmd: u8) {
        if self.in_reset() || !self.master_selected() {
            // BSY, or addressed to the absent slave: the command is ignored.
            return;
        }
        // Writing the command register clears a pending interrupt.
        self.intrq = false;
        if self.transfer != Transfer::None {
            // New command in the middle of a data phase: cancel it.
            self.abort();
            return;
        }
        self.error = 0;
        match cmd {
            command::IDENTIFY_DEVICE => self.identify(),
            command::READ_SECTORS => self.start_read(false),
            command::READ_SECTORS_EXT => self.start_read(true),
            command::WRITE_SECTORS => self.start_write(false),
            command::WRITE_SECTORS_EXT => self.start_write(true),
            command::FLUSH_CACHE | command::FLUSH_CACHE_EXT => match self.backend.flush() {
                Ok(()) => self.complete(),
                Err(_) => self.fail(error::ABRT, None),
            },
            command::SET_FEATURES => self.complete(),
            _ => self.abort(),
        }
    }

    /// Ends the command successfully with an interrupt.
    fn complete(&mut self) {
        self.transfer = Transfer::None;
        self.pos = 0;
        self.status = status::DRDY | status::DSC;
        self.intrq = true;
    }

    /// Ends the command with `ERR` and `bits` in the error register.
    ///
    /// With `at`, the LBA registers report the failing sector.
    fn fail(&mut self, bits: u8, at: Option<(u64, bool)>) {
        self.transfer = Transfer::None;
        self.pos = 0;
        self.error = bits;
        self.status = status::DRDY | status::DSC | status::ERR;
        self.intrq = true;
        if let Some((lba, ext)) = at {
            self.set_lba_registers(lba, ext);
        }
    }

    fn abort(&mut self) {
        self.fail(error::ABRT, None);
    }

    fn set_lba_registers(&mut self, lba: u64, ext: bool) {
        let b = lba.to_le_bytes();
        self.lba_low.cur = b[0];
        self.lba_mid.cur = b[1];
        self.lba_high.cur = b[2];
        if ext {
            self.lba_low.hob = b[3];
            self.lba_mid.hob = b[4];
            self.lba_high.hob = b[5];
        } else {
            self.device = (self.device & !device::HEAD_MASK) | (b[3] & device::HEAD_MASK);
        }
    }

    /// Decodes the LBA and sector count of a read/write command, checking that the
    /// whole range is addressable. `Err` holds the error register bits to report.
    fn decode_range(&self, ext: bool) -> Result<(u64, u32), u8> {
        if self.device & device::LBA == 0 {
            // CHS addressing is not supported.
            return Err(error::ABRT);
        }
        let (lba, count, limit) = if ext {
            let lba = u64::from_le_bytes([
                self.lba_low.cur,
                self.lba_mid.cur,
                self.lba_high.cur,
                self.lba_low.hob,
                self.lba_mid.hob,
                self.lba_high.hob,
                0,
                0,
            ]);
            let count = match u16::from_le_bytes([self.sector_count.cur, self.sector_count.hob]) {
                0 => 65536,
                n => u32::from(n),
            };
            (lba, count, self.sectors.min(LBA48_MAX_SECTORS))
        } else {
            let lba = u32::from_le_bytes([
                self.lba_low.cur,
                self.lba_mid.cur,
                self.lba_high.cur,
                self.device & device::HEAD_MASK,
            ]);
            let count = match self.sector_count.cur {
                0 => 256,
                n => u32::from(n),
            };
            (u64::from(lba), count, self.sectors.min(LBA28_MAX_SECTORS))
        };
        match lba.checked_add(u64::from(count)) {
            Some(end) if end <= limit => Ok((lba, count)),
            _ => Err(error::IDNF),
        }
    }

    fn identify(&mut self) {
        self.buf = identify::identify_data(self.sectors);
        self.pos = 0;
        self.transfer = Transfer::Identify;
        self.status = status::DRDY | status::DSC;
        self.intrq = true;
    }

    fn start_read(&mut self, ext: bool) {
        match self.decode_range(ext) {
            Ok((lba, remaining)) => self.load_sector(lba, remaining, ext),
            Err(bits) => self.fail(bits, None),
        }
    }

    /// Loads sector `lba` for a data-in phase with `remaining` sectors left.
    fn load_sector(&mut self, lba: u64, remaining: u32, ext: bool) {
        let loaded = match lba.checked_mul(SECTOR_BYTES) {
            Some(offset) => self.backend.read_at(offset, &mut self.buf).is_ok(),
            None => false,
        };
        if loaded {
            self.pos = 0;
            self.transfer = Transfer::Read {
                lba,
                remaining,
                ext,
            };
            self.status = status::DRDY | status::DSC;
            self.intrq = true;
        } else {
            self.fail(error::UNC, Some((lba, ext)));
        }
    }

    /// The guest has read the last byte of the buffer.
    fn sector_read_done(&mut self) {
        self.pos = 0;
        match self.transfer {
            Transfer::Read {
                lba,
                remaining,
                ext,
            } if remaining > 1 => {
                // A pending Read always came from a range-checked command, so lba + 1
                // cannot overflow; saturate anyway rather than trust the invariant.
                self.load_sector(lba.saturating_add(1), remaining - 1, ext);
            }
            _ => {
                // Last block of a PIO data-in command: DRQ drops, no interrupt.
                self.transfer = Transfer::None;
                self.status = status::DRDY | status::DSC;
            }
        }
    }

    fn start_write(&mut self, ext: bool) {
        match self.decode_range(ext) {
            Ok((lba, remaining)) => {
                self.pos = 0;
                self.transfer = Transfer::Write {
                    lba,
                    remaining,
                    ext,
                };
                self.status = status::DRDY | status::DSC;
                // PIO data-out: no interrupt before the first block.
            }
            Err(bits) => self.fail(bits, None),
        }
    }

    /// The guest has written the last byte of the buffer.
    fn sector_write_done(&mut self) {
        self.pos = 0;
        let Transfer::Write {
            lba,
            remaining,
            ext,
        } = self.transfer
        else {
            return;
        };
        let written = match lba.checked_mul(SECTOR_BYTES) {
            Some(offset) => self.backend.write_at(offset, &self.buf).is_ok(),
            None => false,
        };
        if !written {
            self.fail(error::ABRT, Some((lba, ext)));
        } else if remaining > 1 {
            self.transfer = Transfer::Write {
                lba: lba.saturating_add(1),
                remaining: remaining - 1,
                ext,
            };
            self.intrq = true;
        } else {
            self.complete();
        }
    }
}
