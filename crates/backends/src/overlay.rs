//! Copy-on-write disks for clones: [`create_overlay`] makes a clone's own disk file over a
//! base image, a reflink (`FICLONE`) where the filesystem offers one, else a sparse
//! block-level overlay that [`OverlayBackend`] serves.
//!
//! # Block-level overlay
//! The overlay file has the base's size and starts as one hole. It holds the 4 KiB blocks
//! the clone wrote, each complete (a partial first write copies the rest of the block from
//! the base); every other block is read from the base, which is opened read-only and never
//! written. Which blocks the overlay holds is its allocation map (`SEEK_DATA`/`SEEK_HOLE`),
//! read once at open and kept as a bitmap. Filesystems that allocate only whole blocks of
//! at most 4 KiB (ext4, xfs, btrfs with 4 KiB blocks) give that map exactly; a filesystem
//! that reports larger data extents makes a block read from the overlay that the clone never
//! wrote, i.e. zeros instead of base bytes, so [`OverlayBackend::open`] refuses a
//! filesystem block size above 4 KiB.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use pvkit_devices::block_backend::check_range;
use pvkit_devices::{BackendError, BlockBackend};

/// The overlay's block size.
pub const BLOCK: u64 = 4096;

/// How [`create_overlay`] made the clone's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlayKind {
    /// A reflink copy (`FICLONE`): an ordinary image file sharing the base's blocks.
    Reflink,
    /// A sparse block-level overlay: open it with [`OverlayBackend::open`] over the base.
    Block,
}

impl std::fmt::Display for OverlayKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OverlayKind::Reflink => "reflink copy",
            OverlayKind::Block => "block-level copy-on-write overlay",
        })
    }
}

/// `FICLONE` (`_IOW(0x94, 9, int)`).
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Creates `overlay` (which must not exist) as a copy-on-write disk over `base`.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<OverlayKind, BackendError> {
    let src = File::open(base)?;
    let len = src.metadata()?.len();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(overlay)?;
    // SAFETY: FICLONE takes the source fd as its argument and touches no memory of ours;
    // both fds are open for the whole call.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        return Ok(OverlayKind::Reflink);
    }
    dst.set_len(len)?;
    Ok(OverlayKind::Block)
}

/// A clone's disk: reads from the overlay where the clone wrote, else from the base.
#[derive(Debug)]
pub struct OverlayBackend {
    base: File,
    overlay: File,
    len: u64,
    /// Bit per [`BLOCK`]: the overlay holds it.
    written: Vec<u64>,
}

impl OverlayBackend {
    /// Opens the block-level overlay `overlay` (made by [`create_overlay`]) over `base`.
    pub fn open(base: &Path, overlay: &Path) -> Result<Self, BackendError> {
        let base = File::open(base)?;
        let overlay = OpenOptions::new().read(true).write(true).open(overlay)?;
        let len = base.metadata()?.len();
        let meta = overlay.metadata()?;
        let invalid = |m: &str| {
            BackendError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                m.to_owned(),
            ))
        };
        if meta.len() != len {
            return Err(invalid("the overlay's size differs from its base image's"));
        }
        if meta.blksize() > BLOCK {
            return Err(invalid(
                "the overlay's filesystem block size is above 4 KiB",
            ));
        }
        let blocks = usize::try_from(len.div_ceil(BLOCK)).map_err(|_| invalid("too large"))?;
        let mut written = vec![0u64; blocks.div_ceil(64)];
        // Walk the overlay's data extents.
        let fd = overlay.as_raw_fd();
        let mut pos: i64 = 0;
        let end = i64::try_from(len).map_err(|_| invalid("too large"))?;
        while pos < end {
            // SAFETY: lseek on our own open fd; no memory is involved.
            let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
            if data < 0 {
                break; // ENXIO: no data after `pos`.
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            let hole = if hole < 0 { end } else { hole.min(end) };
            let (first, last) = (data as u64 / BLOCK, (hole as u64).div_ceil(BLOCK));
            for b in first..last {
                if let Some(w) = written.get_mut((b / 64) as usize) {
                    *w |= 1 << (b % 64);
                }
            }
            pos = hole;
        }
        Ok(Self {
            base,
            overlay,
            len,
            written,
        })
    }

    fn is_written(&self, block: u64) -> bool {
        self.written
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn mark(&mut self, block: u64) {
        if let Some(w) = self.written.get_mut((block / 64) as usize) {
            *w |= 1 << (block % 64);
        }
    }

    /// Blocks the clone has written (held by the overlay).
    pub fn written_blocks(&self) -> u64 {
        self.written.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// The pieces of `[offset, offset + len)` within one block each: (block, offset, length).
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, u64, usize)> {
    let end = offset + len as u64;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let block = at / BLOCK;
        let n = ((block + 1) * BLOCK).min(end) - at;
        let piece = (block, at, n as usize);
        at += n;
        Some(piece)
    })
}

impl BlockBackend for OverlayBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len(), self.len)?;
        let mut done = 0;
        for (block, at, n) in pieces(offset, buf.len()) {
            let dst = buf.get_mut(done..done + n).unwrap_or(&mut []);
            let file = if self.is_written(block) {
                &self.overlay
            } else {
                &self.base
            };
            file.read_exact_at(dst, at)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len(), self.len)?;
        let mut done = 0;
        for (block, at, n) in pieces(offset, buf.len()) {
            let src = buf.get(done..done + n).unwrap_or(&[]);
            if !self.is_written(block) && n as u64 != BLOCK {
                // First write to a block, partial: the block's other bytes come from the base.
                let start = block * BLOCK;
                let size = (self.len - start).min(BLOCK) as usize;
                let mut whole = vec![0u8; size];
                self.base.read_exact_at(&mut whole, start)?;
                let off = (at - start) as usize;
                if let Some(d) = whole.get_mut(off..off + n) {
                    d.copy_from_slice(src);
                }
                self.overlay.write_all_at(&whole, start)?;
            } else {
                self.overlay.write_all_at(src, at)?;
            }
            self.mark(block);
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.overlay.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_see_the_base_and_only_their_own_writes() {
        let dir = std::env::temp_dir().join(format!("pvkit-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.img");
        let data: Vec<u8> = (0..5 * BLOCK + 512).map(|i| (i % 251) as u8).collect();
        std::fs::write(&base, &data).unwrap();
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        let kind = create_overlay(&base, &a).unwrap();
        create_overlay(&base, &b).unwrap();
        assert!(
            create_overlay(&base, &a).is_err(),
            "an existing file is never replaced"
        );
        if kind == OverlayKind::Block {
            let mut ca = OverlayBackend::open(&base, &a).unwrap();
            let mut buf = vec![0u8; 600];
            ca.read_at(BLOCK - 100, &mut buf).unwrap();
            assert_eq!(
                &buf[..],
                &data[(BLOCK - 100) as usize..(BLOCK + 500) as usize]
            );
            // A write across a block boundary, and one in the short last block.
            ca.write_at(BLOCK - 10, &[0xee; 20]).unwrap();
            ca.write_at(5 * BLOCK + 500, &[0xdd; 12]).unwrap();
            assert_eq!(ca.written_blocks(), 3);
            ca.read_at(BLOCK - 100, &mut buf).unwrap();
            let mut want = data[(BLOCK - 100) as usize..(BLOCK + 500) as usize].to_vec();
            want[90..110].fill(0xee);
            assert_eq!(buf, want);
            ca.flush().unwrap();
            drop(ca);
            // Reopened: the allocation map gives the same blocks.
            let mut ca = OverlayBackend::open(&base, &a).unwrap();
            assert_eq!(ca.written_blocks(), 3);
            let mut tail = [0u8; 12];
            ca.read_at(5 * BLOCK + 500, &mut tail).unwrap();
            assert_eq!(tail, [0xdd; 12]);
            // The other clone and the base are unchanged.
            let mut cb = OverlayBackend::open(&base, &b).unwrap();
            cb.read_at(BLOCK - 100, &mut buf).unwrap();
            assert_eq!(
                &buf[..],
                &data[(BLOCK - 100) as usize..(BLOCK + 500) as usize]
            );
            assert_eq!(std::fs::read(&base).unwrap(), data);
            assert!(ca.read_at(5 * BLOCK + 500, &mut [0u8; 13]).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
