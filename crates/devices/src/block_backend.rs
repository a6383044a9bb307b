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
//! bounce through a small stack buffer; [`MemBackend`] and the file backend of
//! `pvkit-backends` (`FileBackend`) override them to copy once (`pread`/`pwrite` into or
//! out of the mapped guest memory), which is what makes large PV block requests cheap.
//!
//! This crate does no I/O: backends that do (the image file, TAP next) live in
//! `pvkit-backends`.

use std::io;

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

/// A bounce chunk longer than the bounce buffer: cannot happen (`n <= BOUNCE_CHUNK`), but
/// an error rather than a panic if it ever did.
fn bounce_overrun() -> io::Error {
    io::Error::other("bounce chunk larger than the bounce buffer")
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
#[cfg(test)]
mod tests {
    use super::*;

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
    fn no_space_classification() {
        let full = BackendError::Io(io::Error::from_raw_os_error(28)); // ENOSPC
        assert!(full.is_no_space());
        // EDQUOT
        let quota = BackendError::Io(io::Error::from_raw_os_error(122));
        assert!(quota.is_no_space());
        assert!(!BackendError::ReadOnly.is_no_space());
    }
}
