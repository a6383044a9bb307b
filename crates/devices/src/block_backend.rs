//! Disk backends: the byte store behind the emulated ATA disk and the PV block device.
//!
//! A [`BlockBackend`] is a fixed-size, byte-addressed store with positional reads and
//! writes and an explicit [`flush`](BlockBackend::flush) barrier. Every access is range
//! checked against [`len`](BlockBackend::len) *before* any I/O: an access that does not
//! fit entirely inside the disk fails with [`BackendError::OutOfRange`] and touches
//! nothing. There are no short reads or writes: an access either moves every byte or
//! returns an error.
//!
//! Besides byte slices, a backend moves data straight between the disk and memory outside
//! Rust's ownership, guest RAM, given as a vm-memory [`VolatileSlice`]:
//! [`read_volatile_at`](BlockBackend::read_volatile_at) and
//! [`write_volatile_at`](BlockBackend::write_volatile_at). Their default implementations
//! bounce through a small stack buffer; [`FileBackend`] and [`MemBackend`] override them to
//! copy once (`pread`/`pwrite` into or out of the mapped guest memory), which is what
//! makes large PV block requests cheap.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use vm_memory::VolatileSlice;

/// Bytes of the stack buffer the default [`BlockBackend::read_volatile_at`] and
/// [`BlockBackend::write_volatile_at`] bounce through.
pub const BOUNCE_CHUNK: usize = 16 * 1024;

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

    /// Fills `dst` (typically guest memory) with the bytes at `[offset, offset + dst.len())`.
    ///
    /// Range checked before any I/O, like [`read_at`](Self::read_at). Others may access
    /// `dst` concurrently (a running vCPU): its content is then whatever the interleaving
    /// gives, never undefined behaviour in the host. On an error part of `dst` may have
    /// been written.
    ///
    /// The default implementation bounces through a [`BOUNCE_CHUNK`]-byte stack buffer
    /// ([`read_at`](Self::read_at) per chunk); backends that can, copy directly.
    fn read_volatile_at(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        check_range(offset, dst.len(), self.len())?;
        let mut buf = [0u8; BOUNCE_CHUNK];
        let mut done = 0;
        while done < dst.len() {
            let n = (dst.len() - done).min(BOUNCE_CHUNK);
            let chunk = buf.get_mut(..n).ok_or_else(bounce_overrun)?;
            // `done < dst.len() <= u64::MAX` and the range was checked: no overflow.
            self.read_at(offset + done as u64, chunk)?;
            dst.subslice(done, n)
                .map_err(io::Error::other)?
                .copy_from(chunk);
            done += n;
        }
        Ok(())
    }

    /// Stores `src` (typically guest memory) at `[offset, offset + src.len())`.
    ///
    /// Range checked before any I/O, like [`write_at`](Self::write_at). If others write
    /// `src` concurrently, the disk receives some interleaving of old and new bytes (the
    /// writer only races itself, as with a virtio disk). On an I/O error part of the range
    /// may have been written, as with any disk.
    ///
    /// The default implementation bounces through a [`BOUNCE_CHUNK`]-byte stack buffer
    /// ([`write_at`](Self::write_at) per chunk); backends that can, copy directly.
    fn write_volatile_at(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        check_range(offset, src.len(), self.len())?;
        let mut buf = [0u8; BOUNCE_CHUNK];
        let mut done = 0;
        while done < src.len() {
            let n = (src.len() - done).min(BOUNCE_CHUNK);
            let chunk = buf.get_mut(..n).ok_or_else(bounce_overrun)?;
            src.subslice(done, n)
                .map_err(io::Error::other)?
                .copy_to(chunk);
            self.write_at(offset + done as u64, chunk)?;
            done += n;
        }
        Ok(())
    }
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

    fn read_volatile_at(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        (**self).read_volatile_at(offset, dst)
    }

    fn write_volatile_at(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        (**self).write_volatile_at(offset, src)
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

/// A bounce chunk longer than the bounce buffer: cannot happen (`n <= BOUNCE_CHUNK`), but
/// an error rather than a panic if it ever did.
fn bounce_overrun() -> io::Error {
    io::Error::other("bounce chunk larger than the bounce buffer")
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
    /// What [`BlockBackend::flush`] calls: `File::sync_data` (`fdatasync`). A field so that a
    /// test can observe that every acknowledged flush synced the file.
    sync_data: fn(&File) -> std::io::Result<()>,
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
            sync_data: File::sync_data,
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
            sync_data: File::sync_data,
        })
    }

    /// Replaces the `fdatasync` that [`BlockBackend::flush`] performs (tests only).
    #[cfg(test)]
    fn with_sync(mut self, sync_data: fn(&File) -> std::io::Result<()>) -> Self {
        self.sync_data = sync_data;
        self
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
        (self.sync_data)(&self.file)?;
        Ok(())
    }

    /// One `pread64` per call (more only if the kernel returns short), straight into the
    /// mapped memory of `dst`: no intermediate copy.
    fn read_volatile_at(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        check_range(offset, dst.len(), self.len)?;
        let guard = dst.ptr_guard_mut();
        let base = guard.as_ptr();
        let fd = self.file.as_raw_fd();
        positional_io(
            offset,
            dst.len(),
            io::ErrorKind::UnexpectedEof,
            |done, pos| {
                // SAFETY: `base + done .. base + dst.len()` lies inside `dst`, which is valid for
                // writes of `dst.len()` bytes while `dst` (and the guard) lives (the contract of
                // `VolatileSlice`). The kernel writes it like a DMA engine would: no Rust
                // reference to that memory exists, and concurrent guest accesses only race the
                // guest against itself. `done < dst.len()`, so the count is non-zero.
                unsafe { libc::pread64(fd, base.add(done).cast(), dst.len() - done, pos) }
            },
        )
    }

    /// One `pwrite64` per call (more only if the kernel writes short), straight from the
    /// mapped memory of `src`: no intermediate copy. Others writing `src` meanwhile (the
    /// guest) decide which of their bytes reach the disk.
    fn write_volatile_at(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, src.len(), self.len)?;
        let guard = src.ptr_guard();
        let base = guard.as_ptr();
        let fd = self.file.as_raw_fd();
        positional_io(offset, src.len(), io::ErrorKind::WriteZero, |done, pos| {
            // SAFETY: `base + done .. base + src.len()` lies inside `src`, valid for reads
            // of `src.len()` bytes while `src` (and the guard) lives; the kernel only reads
            // it. `done < src.len()`, so the count is non-zero.
            unsafe { libc::pwrite64(fd, base.add(done).cast(), src.len() - done, pos) }
        })
    }
}

/// Runs one positional transfer of `len` bytes at file `offset` to completion: calls
/// `step(done, file_position)` (one `pread64`/`pwrite64` of the remaining bytes) until
/// `len` bytes moved, retrying on `EINTR`. A step that moves 0 bytes fails with `on_zero`
/// (end of file for reads, a write that makes no progress for writes).
fn positional_io(
    offset: u64,
    len: usize,
    on_zero: io::ErrorKind,
    mut step: impl FnMut(usize, i64) -> isize,
) -> Result<(), BackendError> {
    let mut done = 0usize;
    while done < len {
        match step(done, file_offset(offset, done)?) {
            0 => return Err(io::Error::from(on_zero).into()),
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
        }
    }
    Ok(())
}

/// `offset + done` as the `off64_t` of `pread64`/`pwrite64`. Both were range checked
/// against the file's length (which the kernel keeps below `i64::MAX`), so this fails only
/// on a broken invariant.
fn file_offset(offset: u64, done: usize) -> Result<i64, BackendError> {
    (done as u64)
        .checked_add(offset)
        .and_then(|p| i64::try_from(p).ok())
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput).into())
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

    /// The bytes `[offset, offset + len)` of the disk, after a range check.
    fn bytes(&self, offset: u64, len: usize) -> Result<&[u8], BackendError> {
        let range = self.range(offset, len)?;
        self.data
            .get(range)
            .ok_or_else(|| self.out_of_range(offset, len))
    }

    /// [`bytes`](Self::bytes), writable.
    fn bytes_mut(&mut self, offset: u64, len: usize) -> Result<&mut [u8], BackendError> {
        let range = self.range(offset, len)?;
        let err = self.out_of_range(offset, len);
        self.data.get_mut(range).ok_or(err)
    }

    fn out_of_range(&self, offset: u64, len: usize) -> BackendError {
        BackendError::OutOfRange {
            offset,
            len: len as u64,
            capacity: self.len(),
        }
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
        buf.copy_from_slice(self.bytes(offset, buf.len())?);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.bytes_mut(offset, buf.len())?.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn read_volatile_at(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        dst.copy_from(self.bytes(offset, dst.len())?);
        Ok(())
    }

    fn write_volatile_at(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        src.copy_to(self.bytes_mut(offset, src.len())?);
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

    thread_local! {
        /// `(syncs so far, the file's bytes at offset 512 when the last sync ran)`.
        static SYNCS: std::cell::RefCell<(u32, Vec<u8>)> = const {
            std::cell::RefCell::new((0, Vec::new()))
        };
    }

    /// The real `fdatasync`, counted, with what the file held when it ran.
    fn counting_sync(f: &File) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut seen = vec![0u8; 4];
        f.read_exact_at(&mut seen, 512)?;
        f.sync_data()?;
        SYNCS.with(|s| {
            let mut s = s.borrow_mut();
            *s = (s.0 + 1, seen);
        });
        Ok(())
    }

    fn failing_sync(_: &File) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }

    #[test]
    fn an_acknowledged_flush_was_preceded_by_fdatasync_of_the_written_data() {
        let tmp = TempPath::new("fdatasync");
        let mut b = FileBackend::create(&tmp.0, 4096)
            .unwrap()
            .with_sync(counting_sync);
        SYNCS.with(|s| *s.borrow_mut() = (0, Vec::new()));
        b.write_at(512, b"data").unwrap();
        assert_eq!(
            SYNCS.with(|s| s.borrow().0),
            0,
            "a write alone does not sync"
        );
        // `Ok` is what the PV block device turns into the guest's flush acknowledgement.
        b.flush().unwrap();
        assert_eq!(
            SYNCS.with(|s| s.borrow().clone()),
            (1, b"data".to_vec()),
            "one fdatasync, after the write"
        );
        b.flush().unwrap();
        assert_eq!(SYNCS.with(|s| s.borrow().0), 2, "every flush syncs");
        // A failed sync is not acknowledged.
        let mut failing = FileBackend::open(&tmp.0, false)
            .unwrap()
            .with_sync(failing_sync);
        assert!(matches!(failing.flush(), Err(BackendError::Io(_))));
        // Read-only: nothing written through this handle, nothing to sync.
        let mut ro = FileBackend::open(&tmp.0, true)
            .unwrap()
            .with_sync(failing_sync);
        assert!(ro.flush().is_ok());
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

    /// A backend with only the required methods: exercises the default (bounce) volatile
    /// methods.
    struct Plain(MemBackend);

    impl BlockBackend for Plain {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
            self.0.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
            self.0.write_at(offset, buf)
        }
        fn flush(&mut self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    /// Round trips through the volatile methods of `b` (a disk of at least 64 KiB + 1
    /// sector): a write from "guest memory" and a read back into another buffer, lengths
    /// around the bounce chunk, plus the range and read-only checks.
    fn volatile_round_trip(b: &mut dyn BlockBackend) {
        for len in [
            512,
            BOUNCE_CHUNK - 512,
            BOUNCE_CHUNK,
            3 * BOUNCE_CHUNK + 512,
        ] {
            let mut src: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            let mut dst = vec![0u8; len];
            // SAFETY: both vectors outlive the slices and are not used through references
            // while the slices are.
            let (s, d) = unsafe {
                (
                    VolatileSlice::new(src.as_mut_ptr(), len),
                    VolatileSlice::new(dst.as_mut_ptr(), len),
                )
            };
            b.write_volatile_at(512, &s).unwrap();
            b.read_volatile_at(512, &d).unwrap();
            assert_eq!(dst, src, "len {len}");
            // The bytes also arrive through the plain path.
            let mut plain = vec![0u8; len];
            b.read_at(512, &mut plain).unwrap();
            assert_eq!(plain, src);
        }
        let mut buf = [7u8; 1024];
        // SAFETY: as above.
        let v = unsafe { VolatileSlice::new(buf.as_mut_ptr(), buf.len()) };
        let end = b.len();
        for off in [end - 512, end, u64::MAX - 10] {
            assert!(matches!(
                b.read_volatile_at(off, &v),
                Err(BackendError::OutOfRange { .. })
            ));
            assert!(matches!(
                b.write_volatile_at(off, &v),
                Err(BackendError::OutOfRange { .. })
            ));
        }
        assert_eq!(buf, [7; 1024], "a rejected read wrote memory");
    }

    #[test]
    fn volatile_methods_of_every_backend() {
        volatile_round_trip(&mut MemBackend::new(1 << 17));
        volatile_round_trip(&mut Plain(MemBackend::new(1 << 17)));
        let path = TempPath::new("volatile");
        let mut f = FileBackend::create(&path.0, 1 << 17).unwrap();
        volatile_round_trip(&mut f);
        let mut boxed: Box<dyn BlockBackend> = Box::new(FileBackend::open(&path.0, false).unwrap());
        volatile_round_trip(&mut boxed);

        // Read-only: refused before the range check, nothing written.
        let mut ro = FileBackend::open(&path.0, true).unwrap();
        let mut buf = [1u8; 512];
        // SAFETY: `buf` outlives the slice and is not otherwise used meanwhile.
        let v = unsafe { VolatileSlice::new(buf.as_mut_ptr(), buf.len()) };
        assert!(matches!(
            ro.write_volatile_at(0, &v),
            Err(BackendError::ReadOnly)
        ));
        ro.read_volatile_at(0, &v).unwrap();
        assert_eq!(
            buf, [0; 512],
            "the sparse start of the image reads as zeroes"
        );
    }

    #[test]
    fn file_backend_volatile_read_past_a_shrunk_end_fails() {
        let path = TempPath::new("shrunk");
        let mut b = FileBackend::create(&path.0, 8192).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path.0)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let mut buf = [0u8; 8192];
        // SAFETY: `buf` outlives the slice and is not otherwise used meanwhile.
        let v = unsafe { VolatileSlice::new(buf.as_mut_ptr(), buf.len()) };
        let e = b.read_volatile_at(0, &v).unwrap_err();
        assert!(
            matches!(&e, BackendError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e}"
        );
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
