//! The snapshot's memory file: guest RAM as a sparse file ([`write_memory_file`]: zero pages
//! and ballooned pages are holes, never written) and RAM mapped from it copy-on-write
//! ([`map_memory_file`]: `MAP_PRIVATE`, so a restore reads only the pages the guest
//! touches and its writes never reach the file; N restores share the file's page cache).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use crate::vstate::memory::{ram_size, GuestRam};

/// The page size of the memory file's holes.
pub const PAGE: usize = 4096;

/// Why the memory file could not be written or mapped.
#[derive(Debug, Error)]
pub enum MemoryFileError {
    /// A file operation failed.
    #[error("memory file {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The file's size is not the RAM size the state declares.
    #[error(
        "memory file {path} is {found} bytes, the state says the guest has {expected} bytes of RAM"
    )]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The state's RAM size.
        expected: u64,
    },
    /// Guest RAM could not be read or mapped.
    #[error("memory file {path}: guest RAM: {detail}")]
    Ram {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// What [`write_memory_file`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryFileStats {
    /// Guest RAM in bytes (the file's size).
    pub ram_bytes: u64,
    /// Bytes of data written (non-zero, non-ballooned pages).
    pub written_bytes: u64,
    /// Pages left as holes because they were ballooned.
    pub ballooned_pages: u64,
    /// Pages left as holes because they were all zeros.
    pub zero_pages: u64,
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> MemoryFileError + 'a {
    move |source| MemoryFileError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Writes guest RAM to a new file at `path`, sparse: pages for which `ballooned(gpa)` holds,
/// and pages of zeros, are skipped (holes: `set_len` first, then only data pages written).
/// Call with the vCPUs paused and every PV ring held still.
pub fn write_memory_file(
    path: &Path,
    mem: &GuestRam,
    ballooned: &dyn Fn(u64) -> bool,
) -> Result<MemoryFileStats, MemoryFileError> {
    let file = File::create(path).map_err(io_err(path, "create"))?;
    let ram = ram_size(mem);
    file.set_len(ram).map_err(io_err(path, "set length"))?;
    let mut stats = MemoryFileStats {
        ram_bytes: ram,
        ..Default::default()
    };
    for region in mem.iter() {
        let base = region.start_addr().0;
        let len = usize::try_from(region.len()).map_err(|_| MemoryFileError::Ram {
            path: path.to_owned(),
            detail: "region too large".into(),
        })?;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryFileError::Ram {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        // SAFETY: `[host, host + len)` is the region's live mapping, owned by `mem` for the
        // whole call. The vCPUs are paused and the rings held still (the caller's contract:
        // `VmControl` writes the file inside `Rings::frozen`; the only NIC that can be
        // snapshotted is the PV NIC on loopback, which has no receive thread and writes
        // guest RAM only from ring services and `NetSend`), so no thread writes guest RAM
        // meanwhile and reading it as bytes races with no writer.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        // Anonymous RAM without swap: a page that is not resident was never written (or was
        // released by the balloon) and reads as zeros, so it is a hole without being read.
        let resident = match region.file_offset() {
            None if !swap_enabled() => resident_pages(host.cast_const(), len),
            _ => None,
        };
        // Runs of data pages are written with one `pwrite` each.
        let mut run: Option<usize> = None;
        let flush = |start: usize, end: usize| -> Result<(), MemoryFileError> {
            let data = bytes.get(start..end).unwrap_or(&[]);
            file.write_all_at(data, base + start as u64)
                .map_err(io_err(path, "write"))
        };
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            let off = i * PAGE;
            let gpa = base + off as u64;
            let untouched = resident
                .as_ref()
                .is_some_and(|r| r.get(i).is_some_and(|&b| b & 1 == 0));
            let hole = if ballooned(gpa) {
                stats.ballooned_pages += 1;
                true
            } else if untouched || is_zero(page) {
                stats.zero_pages += 1;
                true
            } else {
                false
            };
            match (hole, run) {
                (true, Some(start)) => {
                    flush(start, off)?;
                    run = None;
                }
                (false, None) => run = Some(off),
                _ => {}
            }
            if !hole {
                stats.written_bytes += page.len() as u64;
            }
        }
        if let Some(start) = run {
            flush(start, len)?;
        }
    }
    Ok(stats)
}

/// Whether the host has swap: then a non-resident anonymous page may hold data.
fn swap_enabled() -> bool {
    // Header line only: no swap. Unreadable: assume swap.
    std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() > 1)
}

/// `mincore` of `[addr, addr + len)`: one byte per page, bit 0 set when resident.
fn resident_pages(addr: *const u8, len: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `[addr, addr + len)` is one live, page-aligned mapping (a guest RAM region);
    // mincore only writes `v`, which has one byte per page of the range.
    let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, v.as_mut_ptr()) };
    (r == 0).then_some(v)
}

/// Whether `page` is all zeros (word at a time).
fn is_zero(page: &[u8]) -> bool {
    let (pre, words, post) = {
        // SAFETY: `align_to` only reinterprets the aligned middle of a byte slice as `u64`s,
        // which every bit pattern is.
        unsafe { page.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// Guest RAM of `bytes` bytes at guest-physical 0, mapped from the memory file at `path`
/// with `MAP_PRIVATE | MAP_NORESERVE`: pages are read from the file on first touch, and a
/// write makes a private copy (the file never changes).
pub fn map_memory_file(path: &Path, bytes: u64) -> Result<GuestRam, MemoryFileError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let found = file.metadata().map_err(io_err(path, "stat"))?.len();
    if found != bytes {
        return Err(MemoryFileError::Size {
            path: path.to_owned(),
            found,
            expected: bytes,
        });
    }
    let ram_err = |detail: String| MemoryFileError::Ram {
        path: path.to_owned(),
        detail,
    };
    let len = usize::try_from(bytes).map_err(|_| ram_err("too large".into()))?;
    let region = MmapRegion::<vm_memory::bitmap::AtomicBitmap>::build(
        Some(FileOffset::new(file, 0)),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    )
    .map_err(|e| ram_err(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| ram_err("bad region".into()))?;
    GuestRam::from_regions(vec![region]).map_err(|e| ram_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_ram;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    #[test]
    fn sparse_write_and_private_map() {
        let dir = std::env::temp_dir().join(format!("pvkit-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let mem = create_ram(4).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"ballooned", GuestAddress(0x3000)).unwrap();
        mem.write_slice(b"end", GuestAddress((4 << 20) - 3))
            .unwrap();
        let stats = write_memory_file(&path, &mem, &|gpa| gpa == 0x3000).unwrap();
        assert_eq!(stats.ram_bytes, 4 << 20);
        assert_eq!(stats.written_bytes, 2 * PAGE as u64);
        assert_eq!(stats.ballooned_pages, 1);
        assert_eq!(stats.zero_pages, 1024 - 3);
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), 4 << 20);
        assert!(
            md.blocks() * 512 <= 64 * 1024,
            "not sparse: {} blocks",
            md.blocks()
        );

        let a = map_memory_file(&path, 4 << 20).unwrap();
        let b = map_memory_file(&path, 4 << 20).unwrap();
        let mut buf = [0u8; 5];
        a.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        a.read_slice(&mut buf, GuestAddress(0x3000)).unwrap();
        assert_eq!(buf, [0; 5], "a ballooned page restores as zeros");
        // Copy-on-write: a write in one mapping is seen neither by the other nor the file.
        a.write_slice(b"HELLO", GuestAddress(0x1000)).unwrap();
        b.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        let mut f = [0u8; 5];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut f, 0x1000)
            .unwrap();
        assert_eq!(&f, b"hello");
        assert!(matches!(
            map_memory_file(&path, 8 << 20),
            Err(MemoryFileError::Size { .. })
        ));
        // A snapshot of restored RAM (file-backed, mostly never touched) keeps the file's
        // data and the clone's own write.
        let again = dir.join("mem2");
        let stats = write_memory_file(&again, &a, &|_| false).unwrap();
        assert_eq!(stats.written_bytes, 2 * PAGE as u64);
        let c = map_memory_file(&again, 4 << 20).unwrap();
        c.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"HELLO");
        let mut end = [0u8; 3];
        c.read_slice(&mut end, GuestAddress((4 << 20) - 3)).unwrap();
        assert_eq!(&end, b"end");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
