//! The VM's disk: one raw image shared by the emulated ATA disk and the PV block device.
//!
//! [`SharedDisk`] is a cloneable handle to one [`BlockBackend`] behind a mutex. Every
//! consumer holds a clone: the ATA model on the port bus (vCPU thread), the PV block device
//! (vCPU thread for `BlockIo` and doorbells, the I/O thread for eventfd and polled rings)
//! and the op-log verifier ([`crate::bench::DiskReader`]). All of them therefore see the
//! same bytes, and each access is atomic with respect to the others.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use pvkit_abi::block::SECTOR_SIZE;
pub use pvkit_backends::{create_overlay, OverlayKind};
use pvkit_backends::{FileBackend, OverlayBackend};
use pvkit_devices::{BackendError, BlockBackend};
use thiserror::Error;

/// A disk image to attach to the VM (`pvkit run --disk FILE [--disk-ro]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// A raw image file (or a host block device). Its size is the disk's size; a trailing
    /// partial sector is not addressable.
    pub path: PathBuf,
    /// Open without write access: guest writes fail (ATA `ERR`/`ABRT`, PV `EPERM`).
    pub read_only: bool,
    /// `path` is a block-level copy-on-write overlay over this base image
    /// ([`pvkit_backends::overlay`]: a clone's disk): reads of blocks the guest never wrote
    /// come from the base, which is never written.
    pub base: Option<PathBuf>,
}

/// The disk image could not be opened.
#[derive(Debug, Error)]
#[error("cannot open the disk image {path}: {source}")]
pub struct DiskError {
    /// The image.
    pub path: PathBuf,
    /// Why.
    pub source: BackendError,
}

/// A cloneable, thread-safe handle to one disk backend. Implements [`BlockBackend`] (so the
/// ATA model and the PV block device can both own one) and `bench::DiskReader` (for
/// op-log verification, implemented next to that trait).
#[derive(Clone)]
pub struct SharedDisk {
    backend: Arc<Mutex<Box<dyn BlockBackend>>>,
    /// Cached: a backend's size does not change while the VM runs.
    len: u64,
}

impl std::fmt::Debug for SharedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDisk")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SharedDisk {
    /// Shares `backend`.
    pub fn new(backend: Box<dyn BlockBackend>) -> Self {
        let len = backend.len();
        Self {
            backend: Arc::new(Mutex::new(backend)),
            len,
        }
    }

    /// Opens the image of `config`.
    pub fn open(config: &DiskConfig) -> Result<Self, DiskError> {
        if let Some(base) = &config.base {
            let overlay = OverlayBackend::open(base, &config.path).map_err(|source| DiskError {
                path: config.path.clone(),
                source,
            })?;
            return Ok(Self::new(Box::new(overlay)));
        }
        let file =
            FileBackend::open(&config.path, config.read_only).map_err(|source| DiskError {
                path: config.path.clone(),
                source,
            })?;
        Ok(Self::new(Box::new(file)))
    }

    /// Capacity in whole 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.len / SECTOR_SIZE
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn BlockBackend>> {
        crate::runtime::sync::lock(&self.backend)
    }
}

impl BlockBackend for SharedDisk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.lock().read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.lock().write_at(offset, buf)
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.lock().flush()
    }

    // Forwarded so that the PV block device reaches the image's zero-copy path instead of
    // the trait's bounce-buffer default.
    fn read_volatile_at(
        &mut self,
        offset: u64,
        dst: &vm_memory::VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        self.lock().read_volatile_at(offset, dst)
    }

    fn write_volatile_at(
        &mut self,
        offset: u64,
        src: &vm_memory::VolatileSlice<'_>,
    ) -> Result<(), BackendError> {
        self.lock().write_volatile_at(offset, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::DiskReader;
    use pvkit_devices::MemBackend;

    #[test]
    fn clones_share_one_backend() {
        let a = SharedDisk::new(Box::new(MemBackend::new(4096)));
        let mut b = a.clone();
        assert_eq!(a.sectors(), 8);
        b.write_at(512, &[7; 512]).unwrap();
        let mut s = [0u8; 512];
        let mut a2 = a.clone();
        a2.read_sector(1, &mut s).unwrap();
        assert_eq!(s, [7; 512]);
        assert!(a2.read_sector(8, &mut s).is_err());
        assert!(a2.read_sector(u64::MAX, &mut s).is_err());
        assert!(a2.flush().is_ok());
    }

    #[test]
    fn open_errors_name_the_image() {
        let e = SharedDisk::open(&DiskConfig {
            path: "/nonexistent/pvkit.img".into(),
            read_only: true,
            base: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pvkit.img"), "{e}");
    }
}
