//! KVM's binary statistics of one vCPU (`KVM_GET_STATS_FD`, `KVM_CAP_BINARY_STATS_FD`):
//! the cumulative `exits` counter, every exit from guest mode, handled in the kernel or
//! not (the exit ledger counts only those that reach the VMM). The fd is opened when the
//! vCPU is created (before any thread is confined) and read with `pread64`, which the vCPU
//! filter already allows.
//!
//! Layout (`include/uapi/linux/kvm.h`): a 24-byte header (`flags`, `name_size`,
//! `num_desc`, `id_offset`, `desc_offset`, `data_offset`, all `u32`), then `num_desc`
//! descriptors of `16 + name_size` bytes (`flags: u32`, `exponent: i16`, `size: u16`,
//! `offset: u32`, `bucket_size: u32`, a NUL-padded name); a statistic's `u64` values lie at
//! `data_offset + offset`.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;
/// The statistic read.
const EXITS: &str = "exits";
/// Most descriptors looked at (KVM has ~50 per vCPU).
const MAX_DESCRIPTORS: u32 = 1024;
/// Longest descriptor name accepted.
const MAX_NAME: u32 = 256;

/// The `exits` counter of one vCPU.
#[derive(Debug)]
pub struct ExitCounter {
    file: File,
    offset: u64,
}

/// Where the `u64` of statistic `name` lies, from the header and a reader of the file.
/// `None` if the file does not describe it (or describes it oddly).
pub fn find_stat(
    header: &[u8; 24],
    name: &str,
    read: impl Fn(u64, &mut [u8]) -> bool,
) -> Option<u64> {
    let word = |i: usize| {
        let b = header.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    };
    let (name_size, num_desc) = (word(1)?, word(2)?);
    let (desc_offset, data_offset) = (word(4)?, word(5)?);
    if name_size == 0 || name_size > MAX_NAME || num_desc > MAX_DESCRIPTORS {
        return None;
    }
    let size = 16 + name_size as usize;
    let mut desc = vec![0u8; size];
    for i in 0..u64::from(num_desc) {
        if !read(u64::from(desc_offset) + i * size as u64, &mut desc) {
            return None;
        }
        let text = desc.get(16..)?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        if text.get(..end)? != name.as_bytes() {
            continue;
        }
        let stat_size = u16::from_le_bytes(desc.get(6..8)?.try_into().ok()?);
        let offset = u32::from_le_bytes(desc.get(8..12)?.try_into().ok()?);
        return (stat_size == 1).then(|| u64::from(data_offset) + u64::from(offset));
    }
    None
}

impl ExitCounter {
    /// Opens the statistics of the vCPU `fd`; `None` if KVM does not offer them.
    pub fn open(fd: &impl AsRawFd) -> Option<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; it reads
        // and writes no memory of this process.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        let mut header = [0u8; 24];
        file.read_exact_at(&mut header, 0).ok()?;
        let offset = find_stat(&header, EXITS, |at, buf| {
            file.read_exact_at(buf, at).is_ok()
        })?;
        Some(Self { file, offset })
    }

    /// The vCPU's exits so far.
    pub fn read(&self) -> Option<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, self.offset).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats file with descriptors `names` (name_size 8), data at 1000.
    fn file(names: &[(&str, u16, u32)]) -> ([u8; 24], Vec<u8>) {
        let mut header = [0u8; 24];
        for (i, v) in [0u32, 8, names.len() as u32, 24, 24, 1000]
            .iter()
            .enumerate()
        {
            header[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        let mut body = header.to_vec();
        for (name, size, offset) in names {
            let mut d = vec![0u8; 24];
            d[6..8].copy_from_slice(&size.to_le_bytes());
            d[8..12].copy_from_slice(&offset.to_le_bytes());
            d[16..16 + name.len()].copy_from_slice(name.as_bytes());
            body.extend(d);
        }
        (header, body)
    }

    fn reader(body: &[u8]) -> impl Fn(u64, &mut [u8]) -> bool + '_ {
        move |at, buf| match body.get(at as usize..at as usize + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    #[test]
    fn finds_the_named_u64_and_nothing_else() {
        let (h, body) = file(&[("halt", 1, 0), ("exits_x", 1, 8), ("exits", 1, 16)]);
        assert_eq!(find_stat(&h, "exits", reader(&body)), Some(1016));
        assert_eq!(find_stat(&h, "nope", reader(&body)), None);
        let (h, body) = file(&[("exits", 4, 0)]);
        assert_eq!(find_stat(&h, "exits", reader(&body)), None, "not one u64");
        let (mut h, body) = file(&[("halt", 1, 0)]);
        h[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(find_stat(&h, "exits", reader(&body)), None, "truncated");
        h[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(find_stat(&h, "exits", reader(&body)), None, "no names");
    }
}
