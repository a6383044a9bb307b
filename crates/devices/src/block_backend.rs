//! Disk backends: the byte store behind the emulated ATA disk and the PV block device.
//!
//! A [`BlockBackend`] is a fixed-size, byte-addressed store with positional reads and
//! writes and an explicit [`flush`](BlockBackend::flush) barrier. Every access is range
//! checked against [`len`](BlockBackend::len) *before* any I/O: an access that does not
//! fit entirely inside the disk fails with [`BackendError::OutOfRange`] and touches
//! nothing. There are no short reads or writes: an access either moves every byte or
//! returns an error.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Errors returned by a [`BlockBackend`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The access `[offset, offset + len)` does not fit inside the `capacity`-byte disk.
    #[error("access of {len} bytes at offset {offset} is outside the {capacity}-byte disk")]
    OutOfRange {
        /// First byte of the rejected access.
        offset: u64,
        /// Length of the rejected access in bytes.
        len: u64,
        /// Size of the disk in bytes.
        capacity: u64,
    },
    /// A write was attempted on a backend opened read-only.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The host operating system reported an I/O error on the disk image.
    #[error("disk image I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl BackendError {
    /// The host `errno` behind this error, if it is an OS-level I/O error.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the host ran out of space (`ENOSPC`) or quota (`EDQUOT`) while writing.
    ///
    /// Sparse images fail this way when the host filesystem fills up; a VMM may want to
    /// pause the guest instead of reporting a disk error.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            Self::Io(e) if matches!(
                e.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            )
        )
    }
}

/// Checks that `[offset, offset + len)` lies within a `capacity`-byte disk.
///
/// Overflow-safe: an `offset + len` that overflows `u64` is out of range.
pub fn check_range(offset: u64, len: usize, capacity: u64) -> Result<(), BackendError> {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(BackendError::OutOfRange {
            offset,
            len,
            capacity,
        }),
    }
}

/// A fixed-size, byte-addressed disk store.
///
/// Implementations must range check every access (see [`check_range`]) and must never
/// report success for a partial transfer.
pub trait BlockBackend: Send {
    /// Size of the disk in bytes.
    fn len(&self) -> u64;

    /// Whether the disk has zero bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `[offset, offset + buf.len())`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError>;

    /// Stores `buf` at `[offset, offset + buf.len())`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError>;

    /// Makes every completed write durable (`fdatasync` for files).
    fn flush(&mut self) -> Result<(), BackendError>;
}

impl<T: BlockBackend + ?Sized> BlockBackend for Box<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        (**self).read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        (**self).write_at(offset, buf)
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        (**self).flush()
    }
}

/// Refuses anything but a regular file or a block device as a disk image.
fn check_disk_type(meta: &std::fs::Metadata) -> Result<(), BackendError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() || t.is_block_device() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or a block device",
        )
        .into())
    }
}

/// A raw disk image file (or host block device) accessed with positional I/O.
///
/// The size is sampled once at open time; the image is expected not to change size
/// underneath the VM. If it shrinks anyway, reads past the new end fail with an I/O
/// error rather than returning short data.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    len: u64,
    read_only: bool,
}

impl FileBackend {
    /// Opens an existing raw image. With `read_only`, writes fail with
    /// [`BackendError::ReadOnly`] and the file is opened without write access.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Self, BackendError> {
        // Only a regular file or a block device is a disk. Checked before opening (a FIFO
        // would block the open) and again on the open file (the path may have changed).
        // Without it a directory opened read-only was accepted as a disk whose every read
        // failed.
        let path = path.as_ref();
        check_disk_type(&std::fs::metadata(path)?)?;
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        check_disk_type(&file.metadata()?)?;
        // Seeking to the end also sizes host block devices, whose metadata length is 0.
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            len,
            read_only,
        })
    }

    /// Creates (or truncates) a sparse, zero-filled read-write image of `size` bytes.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self {
            file,
            len: size,
            read_only: false,
        })
    }

    /// Whether the image was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl BlockBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset)?;
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, buf.len(), self.len)?;
        self.file.write_all_at(buf, offset)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        if self.read_only {
            // Nothing was written through this handle, so there is nothing to sync.
            return Ok(());
        }
        self.file.sync_data()?;
        Ok(())
    }
}

/// An in-memory disk, for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemBackend {
    data: Vec<u8>,
}

impl MemBackend {
    /// A zero-filled disk of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self {
            data: vec![0; size],
        }
    }

    /// A disk holding exactly `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        Self { data }
    }

    /// The disk contents.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// Consumes the backend, returning the disk contents.
    pub fn into_inner(self) -> Vec<u8> {
        self.data
    }

    /// The byte range `[offset, offset + len)` of the disk, after a range check.
    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, BackendError> {
        check_range(offset, len, self.len())?;
        // Both ends are <= data.len(), which is a usize, so the conversion cannot fail.
        let start = usize::try_from(offset).map_err(|_| BackendError::OutOfRange {
            offset,
            len: len as u64,
            capacity: self.len(),
        })?;
        Ok(start..start + len)
    }
}

impl BlockBackend for MemBackend {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        let range = self.range(offset, buf.len())?;
        self.data[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A temporary file path removed on drop.
    pub(crate) struct TempPath(pub(crate) PathBuf);

    impl TempPath {
        pub(crate) fn new(tag: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("pvkit-devices-{tag}-{}-{n}.img", std::process::id());
            Self(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn check_range_bounds() {
        assert!(check_range(0, 0, 0).is_ok());
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(512, 0, 512).is_ok());
        assert!(check_range(1, 512, 512).is_err());
        assert!(check_range(513, 0, 512).is_err());
        assert!(matches!(
            check_range(u64::MAX, 2, u64::MAX),
            Err(BackendError::OutOfRange {
                offset: u64::MAX,
                len: 2,
                capacity: u64::MAX
            })
        ));
    }

    #[test]
    fn mem_backend_round_trip_and_range() {
        let mut b = MemBackend::new(1024);
        assert_eq!(b.len(), 1024);
        assert!(!b.is_empty());
        b.write_at(1000, &[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 4];
        b.read_at(1000, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);

        // Straddling the end: rejected, nothing written.
        let before = b.clone();
        assert!(matches!(
            b.write_at(1022, &[9, 9, 9, 9]),
            Err(BackendError::OutOfRange {
                offset: 1022,
                len: 4,
                capacity: 1024
            })
        ));
        assert_eq!(b, before);
        assert!(b.read_at(1021, &mut buf).is_err());
        assert!(b.read_at(u64::MAX, &mut buf).is_err());
        assert!(b.flush().is_ok());
    }

    #[test]
    fn file_backend_round_trip() {
        let path = TempPath::new("backend");
        let mut b = FileBackend::create(&path.0, 1 << 20).unwrap();
        assert_eq!(b.len(), 1 << 20);
        assert!(!b.is_read_only());
        let data: Vec<u8> = (0..=255).collect();
        b.write_at(4096, &data).unwrap();
        b.flush().unwrap();
        drop(b);

        let mut b = FileBackend::open(&path.0, true).unwrap();
        assert_eq!(b.len(), 1 << 20);
        let mut buf = vec![0u8; 256];
        b.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, data);
        // Sparse region reads as zeroes.
        b.read_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        assert!(matches!(b.write_at(0, &[1]), Err(BackendError::ReadOnly)));
        assert!(b.flush().is_ok());
        assert!(matches!(
            b.read_at((1 << 20) - 1, &mut buf),
            Err(BackendError::OutOfRange { .. })
        ));
    }

    #[test]
    fn file_backend_open_missing_is_io_error() {
        let path = TempPath::new("missing");
        let err = FileBackend::open(&path.0, false).unwrap_err();
        assert!(matches!(err, BackendError::Io(_)));
        assert_eq!(err.raw_os_error(), Some(2)); // ENOENT
        assert!(!err.is_no_space());
    }

    #[test]
    fn file_backend_refuses_directories() {
        let dir = std::env::temp_dir();
        for read_only in [true, false] {
            let err = FileBackend::open(&dir, read_only).unwrap_err();
            assert!(matches!(err, BackendError::Io(_)), "{err}");
        }
    }

    #[test]
    fn no_space_classification() {
        let full = BackendError::Io(io::Error::from_raw_os_error(28)); // ENOSPC
        assert!(full.is_no_space());
        // EDQUOT
        let quota = BackendError::Io(io::Error::from_raw_os_error(122));
        assert!(quota.is_no_space());
        assert!(!BackendError::ReadOnly.is_no_space());
    }
}
