//! The disk image file backend: a raw image file or host block device behind the
//! [`BlockBackend`] trait of `pvkit-devices`, with positional I/O (`pread64`/`pwrite64`
//! straight into or out of guest memory) and `fdatasync` on flush.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use pvkit_devices::block_backend::check_range;
use pvkit_devices::{BackendError, BlockBackend};
use vm_memory::VolatileSlice;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pvkit_devices::block_backend::BOUNCE_CHUNK;
    use pvkit_devices::MemBackend;
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
}
