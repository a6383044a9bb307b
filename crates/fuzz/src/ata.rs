//! `ata`: random port sequences and driver-like command sequences against
//! `Ata<MemBackend>` over a 64-sector disk (plus a trailing partial sector).
//!
//! The harness keeps a shadow of the task-file registers the guest wrote (an independent
//! model of the HOB FIFOs, the device register, SRST and HOB) and, from it, the union of
//! the sector ranges of every WRITE SECTORS (EXT) command that the device could have
//! accepted.
//!
//! Invariants:
//! - no panic, for any port, width and value;
//! - the disk length never changes;
//! - no byte outside the union of `[lba, lba + count)` of the write commands issued
//!   (including the trailing partial sector) ever changes;
//! - the LBA and sector count registers read back what the shadow says they hold;
//! - after a reset, a driver-style READ or WRITE of an in-range LBA is accepted
//!   (`DRDY|DSC|DRQ`), an out-of-range one fails with `ERR` + `IDNF`, the data read is the
//!   disk's and the data written lands exactly at `lba..`; IDENTIFY data checksums to 0
//!   and reports the capacity.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_devices::ata::{command, control, device, error, port, status};
use pvkit_devices::{Ata, BlockBackend, MemBackend, SECTOR_SIZE};

use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 128;
/// Whole sectors on the disk.
pub const SECTORS: u64 = 64;
/// Largest single port access (a `rep insw`/`outsw` batch).
const MAX_ACCESS: usize = 4096;
/// Most sectors a composite sequence moves (keeps one input cheap).
const MAX_SEQ_SECTORS: u32 = 4;

/// Disk setup.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtaSetup {
    /// Bytes after the last whole sector (`% 512`): never addressable.
    pub tail: u16,
    /// Initial disk contents pattern.
    pub seed: u8,
}
encode_struct!(AtaSetup { tail, seed });

/// A port of the primary channel, or any port.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtaPort {
    /// 0x1F0.
    Data,
    /// 0x1F1.
    ErrorFeatures,
    /// 0x1F2.
    Count,
    /// 0x1F3.
    LbaLow,
    /// 0x1F4.
    LbaMid,
    /// 0x1F5.
    LbaHigh,
    /// 0x1F6.
    Device,
    /// 0x1F7.
    StatusCommand,
    /// 0x3F6.
    Control,
    /// Anything.
    Raw(u16),
}
encode_enum!(AtaPort, 10;
    AtaPort::Data => 0 [],
    AtaPort::ErrorFeatures => 1 [],
    AtaPort::Count => 2 [],
    AtaPort::LbaLow => 3 [],
    AtaPort::LbaMid => 4 [],
    AtaPort::LbaHigh => 5 [],
    AtaPort::Device => 6 [],
    AtaPort::StatusCommand => 7 [],
    AtaPort::Control => 8 [],
    AtaPort::Raw(p) => 9 [p],
);

impl AtaPort {
    fn get(self) -> u16 {
        match self {
            AtaPort::Data => port::DATA,
            AtaPort::ErrorFeatures => port::ERROR,
            AtaPort::Count => port::SECTOR_COUNT,
            AtaPort::LbaLow => port::LBA_LOW,
            AtaPort::LbaMid => port::LBA_MID,
            AtaPort::LbaHigh => port::LBA_HIGH,
            AtaPort::Device => port::DEVICE,
            AtaPort::StatusCommand => port::STATUS,
            AtaPort::Control => port::DEVICE_CONTROL,
            AtaPort::Raw(p) => p,
        }
    }
}

/// A command opcode.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// 0x20.
    Read,
    /// 0x24.
    ReadExt,
    /// 0x30.
    Write,
    /// 0x34.
    WriteExt,
    /// 0xE7 / 0xEA.
    Flush(bool),
    /// 0xEC.
    Identify,
    /// 0xEF.
    SetFeatures,
    /// Anything.
    Raw(u8),
}
encode_enum!(Cmd, 8;
    Cmd::Read => 0 [],
    Cmd::ReadExt => 1 [],
    Cmd::Write => 2 [],
    Cmd::WriteExt => 3 [],
    Cmd::Flush(x) => 4 [x],
    Cmd::Identify => 5 [],
    Cmd::SetFeatures => 6 [],
    Cmd::Raw(c) => 7 [c],
);

impl Cmd {
    fn get(self) -> u8 {
        match self {
            Cmd::Read => command::READ_SECTORS,
            Cmd::ReadExt => command::READ_SECTORS_EXT,
            Cmd::Write => command::WRITE_SECTORS,
            Cmd::WriteExt => command::WRITE_SECTORS_EXT,
            Cmd::Flush(false) => command::FLUSH_CACHE,
            Cmd::Flush(true) => command::FLUSH_CACHE_EXT,
            Cmd::Identify => command::IDENTIFY_DEVICE,
            Cmd::SetFeatures => command::SET_FEATURES,
            Cmd::Raw(c) => c,
        }
    }
}

/// An LBA: near the disk, or anything (48-bit).
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lba {
    /// 0..=255: around the 64-sector disk and its end.
    Small(u8),
    /// Any value (only the low 28 or 48 bits reach the registers).
    Raw(u64),
}
encode_enum!(Lba, 2; Lba::Small(v) => 0 [v], Lba::Raw(v) => 1 [v]);

impl Lba {
    fn get(self) -> u64 {
        match self {
            Lba::Small(v) => u64::from(v),
            Lba::Raw(v) => v,
        }
    }
}

/// One step.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtaOp {
    /// Read `len % 4097` bytes from a port.
    In {
        /// The port.
        port: AtaPort,
        /// Access length.
        len: u16,
    },
    /// Write `len % 4097` bytes `value, value+1, ...` to a port.
    Out {
        /// The port.
        port: AtaPort,
        /// First byte.
        value: u8,
        /// Access length.
        len: u16,
    },
    /// Write a command opcode.
    Command(Cmd),
    /// Program the task file as a driver does (LBA mode, master), without a command.
    TaskFile {
        /// LBA48 register order (HOB bytes first).
        ext: bool,
        /// The LBA.
        lba: Lba,
        /// Sector count register value(s).
        count: u16,
    },
    /// After an optional software reset, a driver's WRITE SECTORS (EXT): task file,
    /// command, then `min(count, 4)` sectors through the data port in `chunk`-byte accesses.
    WriteSeq(Seq),
    /// The same for READ SECTORS (EXT); the data read must be the disk's.
    ReadSeq(Seq),
    /// Reset, IDENTIFY DEVICE, read 512 bytes in `chunk`-byte accesses.
    Identify {
        /// Access size (`% 513`, at least 1).
        chunk: u16,
    },
    /// Query the interrupt line.
    Irq,
}
encode_enum!(AtaOp, 8;
    AtaOp::In { port, len } => 0 [port, len],
    AtaOp::Out { port, value, len } => 1 [port, value, len],
    AtaOp::Command(c) => 2 [c],
    AtaOp::TaskFile { ext, lba, count } => 3 [ext, lba, count],
    AtaOp::WriteSeq(s) => 4 [s],
    AtaOp::ReadSeq(s) => 5 [s],
    AtaOp::Identify { chunk } => 6 [chunk],
    AtaOp::Irq => 7 [],
);

/// A driver-style transfer.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq {
    /// Pulse SRST first (then the outcome is fully predictable).
    pub reset: bool,
    /// 48-bit command.
    pub ext: bool,
    /// First sector.
    pub lba: Lba,
    /// Sector count register value(s) (0 means 256 / 65536).
    pub count: u16,
    /// Data port access size (`% 1025`, at least 1).
    pub chunk: u16,
    /// Data pattern for writes.
    pub pattern: u8,
}
encode_struct!(Seq {
    reset,
    ext,
    lba,
    count,
    chunk,
    pattern
});

/// The harness's model of the registers the guest can set.
#[derive(Clone, Copy, Debug, Default)]
struct Shadow {
    count: [u8; 2],
    lba_low: [u8; 2],
    lba_mid: [u8; 2],
    lba_high: [u8; 2],
    device: u8,
    control: u8,
}

impl Shadow {
    /// As after power-on or a software reset (control is not touched by a reset).
    fn reset(&mut self) {
        self.count = [1, 0];
        self.lba_low = [1, 0];
        self.lba_mid = [0, 0];
        self.lba_high = [0, 0];
        self.device = 0;
    }

    fn in_reset(&self) -> bool {
        self.control & control::SRST != 0
    }

    fn master(&self) -> bool {
        self.device & device::DEV == 0
    }

    /// `(lba, count)` of a read/write command, as ATA defines it.
    fn range(&self, ext: bool) -> (u64, u64) {
        if ext {
            let lba = u64::from(self.lba_low[0])
                | u64::from(self.lba_mid[0]) << 8
                | u64::from(self.lba_high[0]) << 16
                | u64::from(self.lba_low[1]) << 24
                | u64::from(self.lba_mid[1]) << 32
                | u64::from(self.lba_high[1]) << 40;
            let c = u64::from(self.count[0]) | u64::from(self.count[1]) << 8;
            (lba, if c == 0 { 65536 } else { c })
        } else {
            let lba = u64::from(self.lba_low[0])
                | u64::from(self.lba_mid[0]) << 8
                | u64::from(self.lba_high[0]) << 16
                | u64::from(self.device & device::HEAD_MASK) << 24;
            let c = u64::from(self.count[0]);
            (lba, if c == 0 { 256 } else { c })
        }
    }
}

struct Harness {
    ata: Ata<MemBackend>,
    disk_len: u64,
    shadow: Shadow,
    /// Sectors some accepted-looking write command could touch.
    writable: [bool; SECTORS as usize],
    buf: Vec<u8>,
}

impl Harness {
    fn new(setup: AtaSetup) -> Self {
        let len = SECTORS as usize * SECTOR_SIZE + usize::from(setup.tail % 512);
        let disk: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ setup.seed ^ (i >> 9) as u8)
            .collect();
        let ata = Ata::new(MemBackend::from_vec(disk));
        assert_eq!(ata.sectors(), SECTORS);
        let mut shadow = Shadow::default();
        shadow.reset();
        Self {
            ata,
            disk_len: len as u64,
            shadow,
            writable: [false; SECTORS as usize],
            buf: vec![0; MAX_ACCESS],
        }
    }

    fn disk(&self) -> &[u8] {
        self.ata.backend().as_slice()
    }

    /// A guest write, mirrored into the shadow.
    fn out(&mut self, p: u16, data: &[u8]) {
        if let Some(&v) = data.first() {
            let s = &mut self.shadow;
            if (port::DATA..=port::COMMAND).contains(&p) {
                s.control &= !control::HOB;
            }
            match p {
                port::SECTOR_COUNT => s.count = [v, s.count[0]],
                port::LBA_LOW => s.lba_low = [v, s.lba_low[0]],
                port::LBA_MID => s.lba_mid = [v, s.lba_mid[0]],
                port::LBA_HIGH => s.lba_high = [v, s.lba_high[0]],
                port::DEVICE => s.device = v,
                port::DEVICE_CONTROL => {
                    let was = s.in_reset();
                    s.control = v;
                    if was != s.in_reset() {
                        s.reset();
                    }
                }
                port::COMMAND => self.note_command(v),
                _ => {}
            }
        }
        self.ata.write(p, data);
    }

    /// Records the sectors a write command may touch, before the device sees it.
    fn note_command(&mut self, cmd: u8) {
        let ext = match cmd {
            command::WRITE_SECTORS => false,
            command::WRITE_SECTORS_EXT => true,
            _ => return,
        };
        let s = self.shadow;
        if s.in_reset() || !s.master() || s.device & device::LBA == 0 {
            return; // ignored, or CHS (aborted)
        }
        let (lba, count) = s.range(ext);
        let end = lba.saturating_add(count);
        if end <= SECTORS {
            for w in &mut self.writable[lba as usize..end as usize] {
                *w = true;
            }
        }
    }

    fn inp(&mut self, p: u16, len: usize) -> &[u8] {
        let buf = &mut self.buf[..len];
        self.ata.read(p, buf);
        buf
    }

    fn status(&mut self) -> u8 {
        self.inp(port::STATUS, 1)[0]
    }

    /// Reads the LBA/count registers back and compares them with the shadow.
    fn check_registers(&mut self) {
        let s = self.shadow;
        let hob = usize::from(s.control & control::HOB != 0);
        for (p, want) in [
            (port::SECTOR_COUNT, s.count[hob]),
            (port::LBA_LOW, s.lba_low[hob]),
            (port::LBA_MID, s.lba_mid[hob]),
            (port::LBA_HIGH, s.lba_high[hob]),
            (port::DEVICE, s.device),
        ] {
            let mut b = [0u8; 1];
            self.ata.read(p, &mut b);
            assert_eq!(b[0], want, "register {p:#x} (HOB {hob}): shadow {s:?}");
        }
    }

    fn reset(&mut self) {
        self.out(port::DEVICE_CONTROL, &[control::SRST]);
        assert_eq!(self.status(), status::BSY, "SRST holds BSY");
        self.out(port::DEVICE_CONTROL, &[0]);
        assert_eq!(
            self.status(),
            status::DRDY | status::DSC,
            "ready after reset"
        );
    }

    fn task_file(&mut self, ext: bool, lba: u64, count: u16) {
        let b = lba.to_le_bytes();
        let [c0, c1] = count.to_le_bytes();
        if ext {
            self.out(port::DEVICE, &[device::LBA]);
            self.out(port::SECTOR_COUNT, &[c1]);
            self.out(port::LBA_LOW, &[b[3]]);
            self.out(port::LBA_MID, &[b[4]]);
            self.out(port::LBA_HIGH, &[b[5]]);
        } else {
            self.out(port::DEVICE, &[device::LBA | (b[3] & device::HEAD_MASK)]);
        }
        self.out(port::SECTOR_COUNT, &[c0]);
        self.out(port::LBA_LOW, &[b[0]]);
        self.out(port::LBA_MID, &[b[1]]);
        self.out(port::LBA_HIGH, &[b[2]]);
    }

    fn seq(&mut self, s: Seq, write: bool) {
        if s.reset {
            self.reset();
        }
        self.task_file(s.ext, s.lba.get(), s.count);
        let (lba, count) = self.shadow.range(s.ext);
        let cmd = match (write, s.ext) {
            (false, false) => command::READ_SECTORS,
            (false, true) => command::READ_SECTORS_EXT,
            (true, false) => command::WRITE_SECTORS,
            (true, true) => command::WRITE_SECTORS_EXT,
        };
        self.out(port::COMMAND, &[cmd]);
        let st = self.status();
        if !s.reset {
            return; // a data phase may have been in progress: only "no panic" holds
        }
        let in_range = lba.checked_add(count).is_some_and(|e| e <= SECTORS);
        if !in_range {
            assert_eq!(st, status::DRDY | status::DSC | status::ERR, "out of range");
            assert_eq!(self.inp(port::ERROR, 1)[0], error::IDNF);
            return;
        }
        assert_eq!(st, status::DRDY | status::DSC | status::DRQ, "accepted");
        let n = count.min(u64::from(MAX_SEQ_SECTORS)) as usize;
        let bytes = n * SECTOR_SIZE;
        let chunk = usize::from(s.chunk % 1025).max(1);
        let start = lba as usize * SECTOR_SIZE;
        if write {
            let data: Vec<u8> = (0..bytes)
                .map(|i| s.pattern ^ (i as u8).wrapping_mul(7) ^ (i >> 9) as u8)
                .collect();
            for c in data.chunks(chunk) {
                self.out(port::DATA, c);
            }
            assert_eq!(
                &self.disk()[start..start + bytes],
                &data[..],
                "written data"
            );
        } else {
            let mut got = Vec::with_capacity(bytes);
            let mut left = bytes;
            while left > 0 {
                let k = left.min(chunk);
                got.extend_from_slice(self.inp(port::DATA, k));
                left -= k;
            }
            assert_eq!(&got[..], &self.disk()[start..start + bytes], "read data");
        }
        let done = n as u64 == count;
        let st = self.inp(port::ALT_STATUS, 1)[0];
        let want = if done {
            status::DRDY | status::DSC
        } else {
            status::DRDY | status::DSC | status::DRQ
        };
        assert_eq!(st, want, "status after {n} of {count} sectors");
    }

    fn identify(&mut self, chunk: u16) {
        self.reset();
        self.out(port::COMMAND, &[command::IDENTIFY_DEVICE]);
        assert_eq!(self.status(), status::DRDY | status::DSC | status::DRQ);
        let chunk = usize::from(chunk % 513).max(1);
        let mut id = Vec::with_capacity(512);
        while id.len() < 512 {
            let k = (512 - id.len()).min(chunk);
            id.extend_from_slice(self.inp(port::DATA, k));
        }
        assert_eq!(
            id.iter().fold(0u8, |a, &b| a.wrapping_add(b)),
            0,
            "checksum"
        );
        assert_eq!(id[510], 0xA5);
        let word = |i: usize| u64::from(u16::from_le_bytes([id[2 * i], id[2 * i + 1]]));
        assert_eq!(word(60) | word(61) << 16, SECTORS);
        assert_eq!(
            word(100) | word(101) << 16 | word(102) << 32 | word(103) << 48,
            SECTORS
        );
        assert_eq!(
            self.status(),
            status::DRDY | status::DSC,
            "DRQ drops after 512"
        );
    }

    fn apply(&mut self, op: AtaOp) {
        match op {
            AtaOp::In { port: p, len } => {
                let p = p.get();
                let len = usize::from(len) % (MAX_ACCESS + 1);
                if p != port::STATUS && p != port::DATA && len > 0 {
                    // Plain register reads have no side effect except the shadow check.
                    if matches!(
                        p,
                        port::SECTOR_COUNT | port::LBA_LOW | port::LBA_MID | port::LBA_HIGH
                    ) {
                        self.check_registers();
                    }
                }
                let _ = self.inp(p, len);
            }
            AtaOp::Out {
                port: p,
                value,
                len,
            } => {
                let len = usize::from(len) % (MAX_ACCESS + 1);
                let data: Vec<u8> = (0..len).map(|i| value.wrapping_add(i as u8)).collect();
                self.out(p.get(), &data);
            }
            AtaOp::Command(c) => self.out(port::COMMAND, &[c.get()]),
            AtaOp::TaskFile { ext, lba, count } => self.task_file(ext, lba.get(), count),
            AtaOp::WriteSeq(s) => self.seq(s, true),
            AtaOp::ReadSeq(s) => self.seq(s, false),
            AtaOp::Identify { chunk } => self.identify(chunk),
            AtaOp::Irq => {
                let _ = self.ata.irq_pending();
            }
        }
    }

    /// Sectors outside every possible write range are unchanged; the length is unchanged.
    fn check_disk(&self, original: &[u8]) {
        let disk = self.disk();
        assert_eq!(
            self.ata.backend().len(),
            self.disk_len,
            "disk length changed"
        );
        assert_eq!(disk.len(), original.len());
        // Sector by sector with memcmp; the byte loop only runs to report a violation.
        for (i, (now, was)) in disk
            .chunks(SECTOR_SIZE)
            .zip(original.chunks(SECTOR_SIZE))
            .enumerate()
        {
            if now == was || self.writable.get(i).copied().unwrap_or(false) {
                continue;
            }
            let at = now.iter().zip(was).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "byte {} (sector {i}) changed {:#04x} -> {:#04x} but no accepted write command \
                 covered it; writable: {:?}",
                i * SECTOR_SIZE + at,
                was[at],
                now[at],
                self.writable
            );
        }
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = AtaSetup::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness::new(setup);
    let original = h.disk().to_vec();
    crate::for_each_op(&mut u, MAX_OPS, |op| {
        h.apply(op);
        // Writes never un-happen, so checking after each op only localizes the culprit.
        if matches!(op, AtaOp::Out { .. } | AtaOp::WriteSeq(_)) {
            h.check_disk(&original);
        }
    });
    h.check_disk(&original);
    assert_eq!(h.ata.sectors(), SECTORS);
}

/// Seeds: IDENTIFY, a READ SECTORS, a WRITE SECTORS EXT, and a raw register sequence.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    let setup = AtaSetup { tail: 100, seed: 7 };
    let seq = |ext, lba, count, chunk| Seq {
        reset: true,
        ext,
        lba: Lba::Small(lba),
        count,
        chunk,
        pattern: 0x5a,
    };
    let raw_read = [
        // What a minimal driver does by hand: select LBA master, count 1, LBA 3, READ.
        AtaOp::Out {
            port: AtaPort::Device,
            value: 0x40,
            len: 1,
        },
        AtaOp::Out {
            port: AtaPort::Count,
            value: 1,
            len: 1,
        },
        AtaOp::Out {
            port: AtaPort::LbaLow,
            value: 3,
            len: 1,
        },
        AtaOp::Out {
            port: AtaPort::LbaMid,
            value: 0,
            len: 1,
        },
        AtaOp::Out {
            port: AtaPort::LbaHigh,
            value: 0,
            len: 1,
        },
        AtaOp::Command(Cmd::Read),
        AtaOp::In {
            port: AtaPort::StatusCommand,
            len: 1,
        },
        AtaOp::In {
            port: AtaPort::Data,
            len: 512,
        },
        AtaOp::In {
            port: AtaPort::StatusCommand,
            len: 1,
        },
    ];
    let raw_write = [
        AtaOp::TaskFile {
            ext: false,
            lba: Lba::Small(62),
            count: 2,
        },
        AtaOp::Command(Cmd::Write),
        AtaOp::Out {
            port: AtaPort::Data,
            value: 1,
            len: 1024,
        },
        AtaOp::Irq,
        AtaOp::Out {
            port: AtaPort::Control,
            value: 0x80,
            len: 1,
        },
        AtaOp::In {
            port: AtaPort::LbaLow,
            len: 1,
        },
        AtaOp::Command(Cmd::Flush(true)),
    ];
    vec![
        ("identify", program(&setup, &[AtaOp::Identify { chunk: 2 }])),
        (
            "read_sectors",
            program(&setup, &[AtaOp::ReadSeq(seq(false, 5, 2, 2))]),
        ),
        (
            "write_sectors_ext",
            program(&setup, &[AtaOp::WriteSeq(seq(true, 60, 4, 512))]),
        ),
        (
            "read_out_of_range",
            program(&setup, &[AtaOp::ReadSeq(seq(false, 63, 2, 2))]),
        ),
        ("raw_read", program(&setup, &raw_read)),
        ("raw_write", program(&setup, &raw_write)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::{decode_program, Encode};

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let (setup, ops): (AtaSetup, Vec<AtaOp>) = decode_program(&bytes, MAX_OPS);
            assert_eq!(setup, AtaSetup { tail: 100, seed: 7 }, "{name}");
            assert!(!ops.is_empty(), "{name}");
            let mut again = crate::enc::Enc::new();
            setup.encode(&mut again);
            for op in &ops {
                op.encode(&mut again);
            }
            assert_eq!(again.finish(), bytes, "{name} re-encodes identically");
            run(&bytes);
        }
    }

    #[test]
    fn harness_catches_a_write_outside_the_range() {
        let mut h = Harness::new(AtaSetup { tail: 0, seed: 1 });
        let original = h.disk().to_vec();
        h.ata.backend_mut().write_at(0, &[0xff; 1]).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.check_disk(&original)));
        assert!(r.is_err());
    }
}
