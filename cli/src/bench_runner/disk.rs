//! The disk image the block cases run against, and the host's own read of it (the page-cache
//! baseline).
//!
//! By default `pvkit bench` creates a temporary raw image in [`std::env::temp_dir`], fills it
//! with a deterministic non-zero pattern (every 8-byte word differs, so a read that returns
//! zeros, stale data or the wrong sector cannot verify by accident) and removes it when the
//! [`TempDisk`] guard is dropped, on success, error or panic alike.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default size of the temporary image.
pub const DEFAULT_DISK_BYTES: u64 = 64 << 20;

/// The chunk of the host baseline read (the size of the guest's sequential reads).
pub const BASELINE_CHUNK: usize = 1 << 20;

/// The least time the baseline spends reading (whole passes over the image are repeated
/// until at least this much time has passed).
const BASELINE_MIN_TIME: Duration = Duration::from_millis(300);

/// At most this many timed passes over the image.
const BASELINE_MAX_PASSES: u32 = 16;

/// The pattern's 8-byte word number `w` (splitmix64 of the word index, never zero).
pub fn pattern_word(w: u64) -> u64 {
    let mut z = w.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// Fills `buf`, which starts at byte `offset` of the image (a multiple of 8), with the pattern.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    let first = offset / 8;
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = pattern_word(first + i as u64).to_le_bytes();
        let n = chunk.len();
        chunk.copy_from_slice(word.get(..n).unwrap_or(&word));
    }
}

/// A raw image in the temp directory that never outlives the run.
///
/// Once filled, the file is unlinked at once and kept open: the VM opens it again through
/// `/proc/self/fd/N`, so nothing is left behind even if the process is killed. Where
/// `/proc/self/fd` is missing, the file keeps its name and is removed on drop (on success,
/// error or panic).
#[derive(Debug)]
pub struct TempDisk {
    /// Keeps the inode alive while unlinked.
    file: File,
    /// The name it was created under.
    created: PathBuf,
    /// The path the VM opens: `/proc/self/fd/N`, or `created`.
    path: PathBuf,
}

impl TempDisk {
    /// Creates `temp_dir()/pvkit-bench-<pid>-<nanos>.img` of `bytes` bytes (rounded up to
    /// 1 MiB) filled with the pattern. A partly written file is removed on error.
    pub fn create(bytes: u64) -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let created =
            std::env::temp_dir().join(format!("pvkit-bench-{}-{nanos:09}.img", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&created)?;
        // From here on the guard owns the file: any error below removes it.
        let mut disk = TempDisk {
            file,
            path: created.clone(),
            created,
        };
        let chunk = BASELINE_CHUNK as u64;
        let mut buf = vec![0u8; BASELINE_CHUNK];
        let mut off = 0;
        while off < bytes {
            fill_pattern(&mut buf, off);
            disk.file.write_all(&buf)?;
            off += chunk;
        }
        disk.file.sync_data()?;
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", disk.file.as_raw_fd()));
        if by_fd.exists() && std::fs::remove_file(&disk.created).is_ok() {
            disk.path = by_fd;
        }
        Ok(disk)
    }

    /// The path to open the image by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image still has a name in the temp directory (only where
    /// `/proc/self/fd` is missing).
    pub fn is_named(&self) -> bool {
        self.path == self.created
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        if self.is_named() {
            let _ = std::fs::remove_file(&self.created);
        }
    }
}

/// The host's own sequential read of `path` from the page cache, in 1 MiB `pread`s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PageCacheRead {
    /// Megabytes (10⁶ bytes) per second.
    pub mb_per_s: f64,
    /// Bytes read in the timed passes.
    pub bytes: u64,
    /// Time of the timed passes.
    pub elapsed: Duration,
}

/// Reads the image's first 64 MiB (the area the guest's block cases use; all of a
/// smaller image) once to warm the page cache, then times whole passes of 1 MiB `pread`s
/// over it until at least 300 ms have passed (at most 16 passes).
pub fn page_cache_read(path: &Path) -> io::Result<PageCacheRead> {
    let file = File::open(path)?;
    let len = file.metadata()?.len().min(DEFAULT_DISK_BYTES);
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty image"));
    }
    let mut buf = vec![0u8; BASELINE_CHUNK];
    let pass = |buf: &mut [u8]| -> io::Result<u64> {
        let mut off = 0;
        while off < len {
            let n = file.read_at(buf, off)?;
            if n == 0 {
                break;
            }
            off += n as u64;
        }
        Ok(off)
    };
    pass(&mut buf)?;
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..BASELINE_MAX_PASSES {
        bytes += pass(&mut buf)?;
        if start.elapsed() >= BASELINE_MIN_TIME {
            break;
        }
    }
    let elapsed = start.elapsed();
    Ok(PageCacheRead {
        mb_per_s: bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6,
        bytes,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_non_zero() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        fill_pattern(&mut a, 8192);
        fill_pattern(&mut b, 8192);
        assert_eq!(a, b);
        assert!(a.chunks(8).all(|w| w != [0; 8]));
        // Different sectors hold different data.
        let mut c = vec![0u8; 512];
        fill_pattern(&mut c, 8192 + 512);
        assert_ne!(&a[512..1024], &a[..512]);
        assert_eq!(&a[512..1024], &c[..]);
    }

    #[test]
    fn temp_disk_is_filled_and_leaves_nothing_behind() {
        let d = TempDisk::create(3 << 20).unwrap();
        assert!(!d.is_named(), "unlinked at once where /proc/self/fd exists");
        assert!(!d.created.exists());
        let data = std::fs::read(d.path()).unwrap();
        assert_eq!(data.len(), 3 << 20);
        let mut expect = vec![0u8; 1 << 20];
        fill_pattern(&mut expect, 2 << 20);
        assert_eq!(&data[2 << 20..], &expect[..]);
        // Writes through the /proc path reach the same image.
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.path())
            .unwrap()
            .write_all_at(b"hi", 0)
            .unwrap();
        assert_eq!(&std::fs::read(d.path()).unwrap()[..2], b"hi");
        let r = page_cache_read(d.path()).unwrap();
        assert!(r.mb_per_s > 0.0 && r.bytes >= 3 << 20);
        let path = d.path().to_path_buf();
        drop(d);
        assert!(std::fs::read(&path).map_or(true, |b| b.len() != 3 << 20));
    }

    #[test]
    fn temp_disk_is_gone_after_unwind() {
        let path = std::panic::catch_unwind(|| {
            let d = TempDisk::create(1 << 20).unwrap();
            let p = d.created.clone();
            std::panic::panic_any(p);
        })
        .unwrap_err()
        .downcast::<PathBuf>()
        .unwrap();
        assert!(!path.exists());
    }
}
