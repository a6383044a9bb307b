//! IDENTIFY DEVICE data: the 256-word self-description a driver reads after probing.

use super::{LBA28_MAX_SECTORS, LBA48_MAX_SECTORS, SECTOR_SIZE};

/// Model number reported in words 27–46.
pub const MODEL: &str = "PVKIT ATA DISK";
/// Serial number reported in words 10–19.
pub const SERIAL: &str = "PVKIT0000000001";
/// Firmware revision reported in words 23–26.
pub const FIRMWARE: &str = "0.1.0";

/// Legacy CHS translation used for the obsolete geometry words.
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;
const MAX_CYLINDERS: u64 = 16383;

/// Stores `s` in `words` using the ATA string convention: space padded, two characters
/// per word with the first character in the high byte.
fn put_string(words: &mut [u16], s: &str) {
    let mut bytes = s.bytes().chain(std::iter::repeat(b' '));
    for w in words {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// Stores `value` little-endian across `words` (low word first).
fn put_u64(words: &mut [u16], value: u64) {
    for (i, w) in words.iter_mut().enumerate() {
        // Truncation to the selected 16 bits is the point.
        *w = (value >> (16 * i)) as u16;
    }
}

/// Builds the IDENTIFY DEVICE block for a disk of `sectors` 512-byte sectors, as the
/// byte stream the data port delivers (each word little-endian).
pub fn identify_data(sectors: u64) -> [u8; SECTOR_SIZE] {
    let mut id = [0u16; SECTOR_SIZE / 2];
    let cylinders = (sectors / (HEADS * SECTORS_PER_TRACK)).min(MAX_CYLINDERS);
    let chs_capacity = cylinders * HEADS * SECTORS_PER_TRACK;

    // 0: fixed, non-removable ATA device.
    id[0] = 0x0040;
    // 1, 3, 6: default CHS geometry (obsolete, still read by old drivers).
    id[1] = cylinders as u16;
    id[3] = HEADS as u16;
    id[6] = SECTORS_PER_TRACK as u16;
    // 2: specific configuration: no SET FEATURES spin-up needed, response complete.
    id[2] = 0xC837;
    put_string(&mut id[10..20], SERIAL);
    put_string(&mut id[23..27], FIRMWARE);
    put_string(&mut id[27..47], MODEL);
    // 47: READ/WRITE MULTIPLE not supported (max 0 sectors per DRQ block).
    id[47] = 0x8000;
    // 49: IORDY supported (bit 11), LBA supported (bit 9). No DMA.
    id[49] = (1 << 11) | (1 << 9);
    // 50: capabilities word valid.
    id[50] = 0x4000;
    // 51: obsolete PIO timing mode 2.
    id[51] = 0x0200;
    // 53: words 54-58, 64-70 and 88 valid.
    id[53] = 0x0007;
    // 54-58: current CHS translation and its capacity.
    id[54] = cylinders as u16;
    id[55] = HEADS as u16;
    id[56] = SECTORS_PER_TRACK as u16;
    put_u64(&mut id[57..59], chs_capacity);
    // 59: no multiple-sector setting.
    id[59] = 0;
    // 60-61: sectors addressable with 28-bit commands.
    put_u64(&mut id[60..62], sectors.min(LBA28_MAX_SECTORS));
    // 64: PIO modes 3 and 4; 67-68: minimum PIO cycle times (ns).
    id[64] = 0x0003;
    id[67] = 120;
    id[68] = 120;
    // 80: major versions ATA-4 .. ATA/ATAPI-7.
    id[80] = 0x00F0;
    // 82-84 supported / 85-87 enabled: write cache (82/85 bit 5), FLUSH CACHE
    // (83/86 bit 12), 48-bit address (bit 10), FLUSH CACHE EXT (bit 13).
    // Writes land in the host page cache, so advertising a volatile write cache makes
    // the guest issue the flushes that reach fdatasync.
    id[82] = 1 << 5;
    id[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10);
    id[84] = 1 << 14;
    id[85] = 1 << 5;
    id[86] = (1 << 13) | (1 << 12) | (1 << 10);
    id[87] = 1 << 14;
    // 100-103: sectors addressable with 48-bit commands.
    put_u64(&mut id[100..104], sectors.min(LBA48_MAX_SECTORS));
    // 106: word valid, one 512-byte logical sector per physical sector.
    id[106] = 0x4000;

    let mut out = [0u8; SECTOR_SIZE];
    for (chunk, word) in out.chunks_exact_mut(2).zip(id) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    // 255: integrity word: signature 0xA5 and a checksum making all 512 bytes sum to 0.
    out[510] = 0xA5;
    let sum = out[..511].iter().fold(0u8, |acc, &b| acc.wrapping_add(b));
    out[511] = sum.wrapping_neg();
    out
}
