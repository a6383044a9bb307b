//! The PV block backend: [`pvkit_abi::block`] requests served from a [`BlockBackend`].
//!
//! One [`BlockDevice`] serves both transports: the synchronous `BlockIo` hypercall
//! ([`BlockDevice::handle_gpa`]) and the block ring ([`BlockDevice::service_ring`]).
//! Every request is validated completely — op, segment count, segment lengths, total size,
//! disk range, guest ranges — before the backend is touched, in the order and with the
//! status codes of the [`BlockRequest`] documentation, so a rejected request never writes
//! the disk.
//!
//! # Zero copy
//!
//! The data moves directly between the backend and guest memory: each segment is resolved
//! to vm-memory [`VolatileSlice`]s (one per guest memory region it covers) and handed to
//! [`BlockBackend::read_volatile_at`] / [`BlockBackend::write_volatile_at`], which for a
//! file is one `pread64`/`pwrite64` on the mapped guest memory. No bounce buffer, nothing
//! allocated per request. Before any data moves, the request is validated in full (as
//! above) *and* every segment's slices are resolved, so a request that fails either never
//! touches the disk or guest memory.
//!
//! What is copied once and validated is the *metadata*: the request (`handle_gpa`, the
//! ring) with its segment list. The *data* of a write is read by the backend from guest
//! memory while it writes, as a virtio or Xen backend reads it by DMA: a guest that changes
//! a write buffer before the response arrives races only itself (the disk gets old bytes,
//! new bytes or a mix, within the range it was allowed to write). Likewise a read's
//! destination may be read by the guest while it is being filled. This is the contract of
//! every real disk; the host never depends on the data's value.
//!
//! The segments of one request are separate backend calls: another user of the same
//! backend (the emulated ATA disk on a shared image) may interleave between them, as two
//! controllers on one disk may.

use core::mem::size_of;

use pvkit_abi::block::{
    BlockOp, BlockRequest, BlockResponse, MAX_REQUEST_BYTES, MAX_SEGMENTS, SECTOR_SIZE,
};
use pvkit_abi::Status;
use pvkit_devices::{BackendError, BlockBackend};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestMemory, GuestMemoryError, Permissions, VolatileSlice};

use crate::guest_range::{GuestRange, RangeError};
use crate::ring::{Batch, RingConsumer, RingError};
use crate::wire::Wire;

/// The block ring: [`BlockRequest`]s in, [`BlockResponse`]s out.
pub type BlockRing = RingConsumer<BlockRequest, BlockResponse>;

/// Why a block request failed. [`BlockError::status`] is what the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// `op` is not a [`BlockOp`] (`EINVAL`).
    #[error("unknown block op {0}; use 1 (read), 2 (write) or 3 (flush)")]
    BadOp(u32),
    /// A read or write has no segments (`EINVAL`).
    #[error("read/write request without segments")]
    NoSegments,
    /// More than [`MAX_SEGMENTS`] segments (`E2BIG`).
    #[error("{0} segments; at most {MAX_SEGMENTS} per request")]
    TooManySegments(u32),
    /// A segment length is zero or not a multiple of [`SECTOR_SIZE`] (`EINVAL`).
    #[error("segment {index} has length {len}, not a non-zero multiple of {SECTOR_SIZE}")]
    BadSegmentLength {
        /// Index of the segment in the request.
        index: usize,
        /// Its length.
        len: u32,
    },
    /// The segments add up to more than [`MAX_REQUEST_BYTES`] (`E2BIG`).
    #[error("request moves {0} bytes; at most {MAX_REQUEST_BYTES} per request")]
    TooManyBytes(u64),
    /// The sector range does not fit on the disk (`ERANGE`).
    #[error("sectors {sector}+{sectors} are past the end of the {capacity}-sector disk")]
    OutOfRange {
        /// First sector requested.
        sector: u64,
        /// Number of sectors requested.
        sectors: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// A segment (or the request itself, for `BlockIo`) is not inside guest RAM (`EFAULT`).
    #[error("segment {index}: {source}")]
    Fault {
        /// Index of the segment, or `usize::MAX` for the request structure.
        index: usize,
        /// The range error.
        source: RangeError,
    },
    /// A validated guest range could not be resolved to host memory, e.g. because the
    /// memory map changed (`EFAULT`; found when the segments are resolved, before any data
    /// moves).
    #[error("guest memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
    /// The backend failed (`EIO`; `ENOSPC` when the host is out of space; `EPERM` when the
    /// disk is read-only).
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
}

impl BlockError {
    /// The status returned to the guest.
    pub fn status(&self) -> Status {
        match self {
            BlockError::BadOp(_) | BlockError::NoSegments | BlockError::BadSegmentLength { .. } => {
                Status::EINVAL
            }
            BlockError::TooManySegments(_) | BlockError::TooManyBytes(_) => Status::E2BIG,
            BlockError::OutOfRange { .. } => Status::ERANGE,
            BlockError::Fault { .. } | BlockError::Memory(_) => Status::EFAULT,
            BlockError::Backend(e) if e.is_no_space() => Status::ENOSPC,
            BlockError::Backend(pvkit_devices::BackendError::ReadOnly) => Status::EPERM,
            BlockError::Backend(_) => Status::EIO,
        }
    }
}

/// A fully validated read or write: the disk offset and the guest ranges, in order.
struct Transfer {
    op: BlockOp,
    offset: u64,
    total: usize,
    segments: [Option<GuestRange>; MAX_SEGMENTS],
}

/// The PV block device over a backend `B`.
#[derive(Debug)]
pub struct BlockDevice<B: BlockBackend> {
    backend: B,
}

impl<B: BlockBackend> BlockDevice<B> {
    /// A device serving `backend`. Allocates nothing: data moves directly between the
    /// backend and guest memory.
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// Capacity in whole 512-byte sectors (a trailing partial sector is not addressable).
    pub fn capacity_sectors(&self) -> u64 {
        self.backend.len() / SECTOR_SIZE
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Consumes the device, returning the backend.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Executes `req` (already copied out of guest memory) and returns its status and the
    /// bytes transferred (0 on failure and for flushes).
    pub fn handle<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &BlockRequest,
    ) -> (Status, u64) {
        match self.execute(mem, req) {
            Ok(bytes) => (Status::Ok, bytes),
            Err(e) => (e.status(), 0),
        }
    }

    /// The synchronous `BlockIo` hypercall: copies the [`BlockRequest`] at `req_gpa` out of
    /// guest memory once (`EFAULT` if it is not entirely inside RAM), then [`handle`]s the
    /// copy.
    ///
    /// [`handle`]: Self::handle
    pub fn handle_gpa<M: GuestMemory + ?Sized>(&mut self, mem: &M, req_gpa: u64) -> (Status, u64) {
        match read_request(mem, req_gpa) {
            Ok(req) => self.handle(mem, &req),
            Err(e) => (e.status(), 0),
        }
    }

    /// Services the block ring: every available request (up to the ring's budgets) is
    /// handled and answered with a [`BlockResponse`] carrying its `id`, status and byte
    /// count. Against the byte budget a request costs the bytes it moved, and a flush
    /// costs [`MAX_REQUEST_BYTES`] (it may write back that much and more).
    pub fn service_ring<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        ring: &mut BlockRing,
    ) -> Result<Batch, RingError> {
        ring.poll_metered(mem, |req| {
            let (status, bytes) = self.handle(mem, &req);
            let cost = if req.op == BlockOp::Flush as u32 {
                MAX_REQUEST_BYTES
            } else {
                bytes
            };
            let rsp = BlockResponse {
                id: req.id,
                status: status as i64,
                bytes,
            };
            (rsp, cost)
        })
    }

    /// Executes `req`, returning the bytes transferred or why it failed.
    pub fn execute<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &BlockRequest,
    ) -> Result<u64, BlockError> {
        let op = BlockOp::try_from(req.op).map_err(BlockError::BadOp)?;
        if op == BlockOp::Flush {
            // A flush carries no data; `sector` and the segments are ignored.
            self.backend.flush()?;
            return Ok(0);
        }
        let xfer = self.validate(mem, op, req)?;
        // Every rule passed. Resolve every segment to host memory before any data moves:
        // a failure here leaves both the disk and guest memory untouched.
        let access = match xfer.op {
            BlockOp::Read => Permissions::Write,
            _ => Permissions::Read,
        };
        for range in xfer.segments.iter().flatten() {
            for slice in mem.get_slices(range.guest_addr(), range.len(), access)? {
                slice?;
            }
        }
        // Only now touch the backend: segment after segment, each slice (one per guest
        // memory region the segment covers) straight to or from the backend.
        let mut offset = xfer.offset;
        for range in xfer.segments.iter().flatten() {
            for slice in mem.get_slices(range.guest_addr(), range.len(), access)? {
                let slice = slice?;
                match xfer.op {
                    BlockOp::Read => with_plain_slice(&slice, true, |s| {
                        self.backend.read_volatile_at(offset, s)
                    })?,
                    _ => with_plain_slice(&slice, false, |s| {
                        self.backend.write_volatile_at(offset, s)
                    })?,
                }
                // At most MAX_REQUEST_BYTES past a validated offset: no overflow.
                offset += slice.len() as u64;
            }
        }
        Ok(xfer.total as u64)
    }

    /// Applies every rejection rule of [`BlockRequest`] to a read or write, in order.
    fn validate<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        op: BlockOp,
        req: &BlockRequest,
    ) -> Result<Transfer, BlockError> {
        let n = req.nr_segments;
        if n == 0 {
            return Err(BlockError::NoSegments);
        }
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_SEGMENTS)
            .ok_or(BlockError::TooManySegments(n))?;
        let segments = req.segments.iter().take(n);

        let mut total: u64 = 0;
        for (index, seg) in segments.clone().enumerate() {
            if seg.len == 0 || !u64::from(seg.len).is_multiple_of(SECTOR_SIZE) {
                return Err(BlockError::BadSegmentLength {
                    index,
                    len: seg.len,
                });
            }
            // At most 8 × u32::MAX: cannot overflow, but stay checked.
            total = total.saturating_add(u64::from(seg.len));
        }
        if total > MAX_REQUEST_BYTES {
            return Err(BlockError::TooManyBytes(total));
        }

        let sectors = total / SECTOR_SIZE;
        let capacity = self.capacity_sectors();
        let out_of_range = BlockError::OutOfRange {
            sector: req.sector,
            sectors,
            capacity,
        };
        match req.sector.checked_add(sectors) {
            Some(end) if end <= capacity => {}
            _ => return Err(out_of_range),
        }
        // `sector + sectors <= capacity <= len / 512`, so this cannot overflow.
        let offset = req.sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range)?;

        let mut ranges = [None; MAX_SEGMENTS];
        for ((index, seg), slot) in segments.enumerate().zip(ranges.iter_mut()) {
            let range = GuestRange::new(mem, seg.addr, u64::from(seg.len))
                .map_err(|source| BlockError::Fault { index, source })?;
            *slot = Some(range);
        }
        Ok(Transfer {
            op,
            offset,
            // total <= MAX_REQUEST_BYTES (1 MiB) fits in usize.
            total: total as usize,
            segments: ranges,
        })
    }
}

/// Copies the `BlockRequest` at `gpa` out of guest memory.
fn read_request<M: GuestMemory + ?Sized>(mem: &M, gpa: u64) -> Result<BlockRequest, BlockError> {
    let fault = |source| BlockError::Fault {
        index: usize::MAX,
        source,
    };
    let range = GuestRange::new(mem, gpa, size_of::<BlockRequest>() as u64).map_err(fault)?;
    Ok(mem.read_obj::<Wire<BlockRequest>>(range.guest_addr())?.0)
}

/// Lends `slice` to `f` as a bitmap-less [`VolatileSlice`] (what the object-safe
/// [`BlockBackend`] methods take), holding its pointer guard meanwhile; afterwards, if
/// `dirty` (the backend wrote the memory), marks all of `slice` dirty in its bitmap, whatever
/// `f` returned (a failed read may have written part of it).
fn with_plain_slice<S: BitmapSlice, R>(
    slice: &VolatileSlice<'_, S>,
    dirty: bool,
    f: impl FnOnce(&VolatileSlice<'_>) -> R,
) -> R {
    let guard = slice.ptr_guard_mut();
    // SAFETY: the guard's pointer is valid for `slice.len()` bytes for as long as `slice`
    // (which borrows guest memory) and the guard (which keeps a transient mapping alive
    // where there is one) live; `plain` is only lent to `f` inside this function, so it
    // cannot outlive either. Every other user of that memory (the guest, other vm-memory
    // accesses) already treats it as volatile, the contract `VolatileSlice::new` asks for.
    let plain = unsafe { VolatileSlice::new(guard.as_ptr(), slice.len()) };
    let r = f(&plain);
    if dirty {
        slice.bitmap().mark_dirty(0, slice.len());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::GuestProducer;
    use pvkit_abi::block::BlockSegment;
    use pvkit_devices::MemBackend;
    use std::io;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const RAM: usize = 1 << 20;
    const DISK: usize = 64 * 1024;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    fn patterned_disk() -> MemBackend {
        MemBackend::from_vec((0..DISK).map(|i| (i * 7 + i / 512) as u8).collect())
    }

    fn seg(addr: u64, len: u32) -> BlockSegment {
        BlockSegment {
            addr,
            len,
            reserved: 0,
        }
    }

    fn request(op: u32, sector: u64, segs: &[BlockSegment]) -> BlockRequest {
        let mut r = BlockRequest {
            id: 42,
            op,
            nr_segments: segs.len() as u32,
            sector,
            ..Default::default()
        };
        r.segments[..segs.len()].copy_from_slice(segs);
        r
    }

    #[test]
    fn capacity() {
        let d = BlockDevice::new(MemBackend::new(DISK + 100));
        assert_eq!(d.capacity_sectors(), (DISK / 512) as u64);
    }

    #[test]
    fn read_scatters_into_segments_in_order() {
        let m = mem();
        let mut d = BlockDevice::new(patterned_disk());
        let req = request(1, 3, &[seg(0x8000, 1024), seg(0x2000, 512)]);
        assert_eq!(d.handle(&m, &req), (Status::Ok, 1536));
        let disk = d.backend().as_slice();
        let mut a = vec![0u8; 1024];
        let mut b = vec![0u8; 512];
        m.read_slice(&mut a, GuestAddress(0x8000)).unwrap();
        m.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(a, &disk[3 * 512..5 * 512]);
        assert_eq!(b, &disk[5 * 512..6 * 512]);
    }

    #[test]
    fn write_gathers_from_segments_in_order() {
        let m = mem();
        m.write_slice(&[0xaa; 512], GuestAddress(0x3000)).unwrap();
        m.write_slice(&[0xbb; 1024], GuestAddress(0x1000)).unwrap();
        let mut d = BlockDevice::new(MemBackend::new(DISK));
        let req = request(2, 127, &[seg(0x3000, 512)]);
        assert_eq!(d.handle(&m, &req), (Status::Ok, 512));
        let req = request(2, 1, &[seg(0x1000, 1024), seg(0x3000, 512)]);
        assert_eq!(d.handle(&m, &req), (Status::Ok, 1536));
        let disk = d.backend().as_slice();
        assert!(disk[..512].iter().all(|&x| x == 0));
        assert!(disk[512..1536].iter().all(|&x| x == 0xbb));
        assert!(disk[1536..2048].iter().all(|&x| x == 0xaa));
        assert!(disk[127 * 512..].iter().all(|&x| x == 0xaa));
    }

    #[test]
    fn flush_ignores_segments() {
        let m = mem();
        let mut d = BlockDevice::new(MemBackend::new(DISK));
        let mut req = request(3, u64::MAX, &[]);
        req.nr_segments = 1000;
        assert_eq!(d.handle(&m, &req), (Status::Ok, 0));
    }

    #[test]
    fn every_rejection_rule() {
        let m = mem();
        let ok = seg(0x1000, 512);
        let cases: Vec<(BlockRequest, Status)> = vec![
            (request(0, 0, &[ok]), Status::EINVAL),
            (request(4, 0, &[ok]), Status::EINVAL),
            (request(u32::MAX, 0, &[ok]), Status::EINVAL),
            (request(1, 0, &[]), Status::EINVAL),
            (request(2, 0, &[]), Status::EINVAL),
            (
                BlockRequest {
                    nr_segments: 9,
                    ..request(2, 0, &[ok; 8])
                },
                Status::E2BIG,
            ),
            (
                BlockRequest {
                    nr_segments: u32::MAX,
                    ..request(2, 0, &[ok; 8])
                },
                Status::E2BIG,
            ),
            (request(2, 0, &[ok, seg(0x1000, 0)]), Status::EINVAL),
            (request(2, 0, &[seg(0x1000, 511)]), Status::EINVAL),
            (request(2, 0, &[seg(0x1000, 513)]), Status::EINVAL),
            (request(2, 0, &[seg(0, 1 << 20), ok]), Status::E2BIG),
            (request(2, 0, &[seg(0, u32::MAX - 511)]), Status::E2BIG),
            (request(2, 128, &[ok]), Status::ERANGE),
            (request(2, 127, &[seg(0x1000, 1024)]), Status::ERANGE),
            (request(2, u64::MAX, &[ok]), Status::ERANGE),
            (request(2, u64::MAX / 512 + 1, &[ok]), Status::ERANGE),
            (
                request(2, 0, &[ok, seg(RAM as u64 - 512, 1024)]),
                Status::EFAULT,
            ),
            (request(2, 0, &[seg(u64::MAX - 511, 1024)]), Status::EFAULT),
            (request(2, 0, &[seg(0x1_0000_0000, 512)]), Status::EFAULT),
            (request(1, 0, &[seg(RAM as u64, 512)]), Status::EFAULT),
            // Order: a bad length is reported before a range or fault problem.
            (request(2, u64::MAX, &[seg(u64::MAX, 7)]), Status::EINVAL),
            // E2BIG (total) before ERANGE and EFAULT.
            (
                request(2, u64::MAX, &[seg(u64::MAX, 1 << 20), seg(0, 512)]),
                Status::E2BIG,
            ),
            // ERANGE before EFAULT.
            (request(2, 200, &[seg(u64::MAX, 512)]), Status::ERANGE),
        ];
        for (req, want) in cases {
            let mut d = BlockDevice::new(patterned_disk());
            let before = d.backend().clone();
            assert_eq!(d.handle(&m, &req), (want, 0), "{req:?}");
            assert_eq!(d.backend(), &before, "rejected request changed the disk");
        }
    }

    #[test]
    fn the_largest_request_is_accepted() {
        let m = mem();
        let mut d = BlockDevice::new(MemBackend::new(2 << 20));
        let segs = [seg(0, 128 * 1024); 8];
        assert_eq!(
            d.handle(&m, &request(2, 0, &segs)),
            (Status::Ok, MAX_REQUEST_BYTES)
        );
        assert_eq!(
            d.handle(&m, &request(1, 2048, &segs)),
            (Status::Ok, MAX_REQUEST_BYTES)
        );
        assert_eq!(
            d.handle(&m, &request(2, 0, &[seg(0, 1 << 20)])),
            (Status::Ok, MAX_REQUEST_BYTES)
        );
    }

    #[test]
    fn handle_gpa_reads_the_request_once() {
        let m = mem();
        m.write_slice(&[0x5a; 512], GuestAddress(0x4000)).unwrap();
        let req = request(2, 2, &[seg(0x4000, 512)]);
        m.write_obj(Wire(req), GuestAddress(0x100)).unwrap();
        let mut d = BlockDevice::new(MemBackend::new(DISK));
        assert_eq!(d.handle_gpa(&m, 0x100), (Status::Ok, 512));
        assert!(d.backend().as_slice()[1024..1536]
            .iter()
            .all(|&x| x == 0x5a));

        let at_end = RAM as u64 - size_of::<BlockRequest>() as u64 + 1;
        assert_eq!(d.handle_gpa(&m, at_end), (Status::EFAULT, 0));
        assert_eq!(d.handle_gpa(&m, u64::MAX - 8), (Status::EFAULT, 0));
    }

    /// Guest memory of two adjacent regions, `[0, 64 KiB)` and `[64 KiB, 128 KiB)` (two
    /// separate host mappings), or with a 64 KiB hole between them (`hole`).
    fn two_regions(hole: bool) -> GuestMemoryMmap<()> {
        let second = if hole { 0x2_0000 } else { 0x1_0000 };
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(second), 0x1_0000),
        ])
        .unwrap()
    }

    /// A file-backed disk (the zero-copy `pread`/`pwrite` path), removed on drop.
    struct TempDisk(std::path::PathBuf);

    impl TempDisk {
        fn new(tag: &str, data: &[u8]) -> (Self, pvkit_backends::FileBackend) {
            let path = std::env::temp_dir()
                .join(format!("pvkit-pv-block-{tag}-{}.img", std::process::id()));
            std::fs::write(&path, data).unwrap();
            let b = pvkit_backends::FileBackend::open(&path, false).unwrap();
            (TempDisk(path), b)
        }
    }

    impl Drop for TempDisk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn disk_pattern() -> Vec<u8> {
        (0..DISK).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    /// A read whose segments cross the boundary between two guest memory regions lands in
    /// both, in order, with the memory and the file backend.
    fn read_across_regions<B: BlockBackend>(mut d: BlockDevice<B>) {
        let m = two_regions(false);
        let disk = disk_pattern();
        // 8 KiB straddling 64 KiB, then 1 KiB at the start of RAM.
        let req = request(1, 10, &[seg(0x1_0000 - 4096, 8192), seg(0, 1024)]);
        assert_eq!(d.handle(&m, &req), (Status::Ok, 9216));
        let mut a = vec![0u8; 8192];
        let mut b = vec![0u8; 1024];
        m.read_slice(&mut a, GuestAddress(0x1_0000 - 4096)).unwrap();
        m.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert_eq!(a, &disk[10 * 512..26 * 512]);
        assert_eq!(b, &disk[26 * 512..28 * 512]);
        // The same bytes written back elsewhere from the straddling buffer.
        let req = request(2, 100, &[seg(0x1_0000 - 4096, 8192)]);
        assert_eq!(d.handle(&m, &req), (Status::Ok, 8192));
        let mut back = vec![0u8; 8192];
        d.backend_mut().read_at(100 * 512, &mut back).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn a_read_lands_across_two_guest_memory_regions() {
        read_across_regions(BlockDevice::new(MemBackend::from_vec(disk_pattern())));
        let (_tmp, file) = TempDisk::new("regions", &disk_pattern());
        read_across_regions(BlockDevice::new(file));
    }

    #[test]
    fn a_segment_over_a_hole_is_refused_before_any_io() {
        let m = two_regions(true);
        m.write_slice(&[0x77; 4096], GuestAddress(0)).unwrap();
        let (_tmp, file) = TempDisk::new("hole", &disk_pattern());
        let mut d = BlockDevice::new(file);
        // A good first segment, then one that runs from RAM into the hole.
        for op in [1, 2] {
            let req = request(op, 0, &[seg(0, 4096), seg(0x1_0000 - 512, 1024)]);
            assert_eq!(d.handle(&m, &req), (Status::EFAULT, 0), "op {op}");
            // Entirely inside the hole, or in the second region's last bytes and beyond.
            let req = request(op, 0, &[seg(0x1_8000, 512)]);
            assert_eq!(d.handle(&m, &req), (Status::EFAULT, 0));
            let req = request(op, 0, &[seg(0x3_0000 - 512, 1024)]);
            assert_eq!(d.handle(&m, &req), (Status::EFAULT, 0));
        }
        let mut disk = vec![0u8; DISK];
        d.backend_mut().read_at(0, &mut disk).unwrap();
        assert_eq!(disk, disk_pattern(), "a refused request changed the disk");
        let mut ram = vec![0u8; 4096];
        m.read_slice(&mut ram, GuestAddress(0)).unwrap();
        assert_eq!(ram, [0x77; 4096], "a refused read changed guest memory");
    }

    #[test]
    fn file_backend_zero_copy_round_trip() {
        let m = mem();
        let (_tmp, file) = TempDisk::new("zero-copy", &vec![0u8; 2 << 20]);
        let mut d = BlockDevice::new(file);
        let data: Vec<u8> = (0..MAX_REQUEST_BYTES as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        m.write_slice(&data, GuestAddress(0)).unwrap();
        // The largest request: 8 × 128 KiB, written then read back elsewhere in reverse
        // segment order.
        let segs: Vec<BlockSegment> = (0..8).map(|i| seg(i * 0x2_0000, 0x2_0000)).collect();
        assert_eq!(
            d.handle(&m, &request(2, 7, &segs)),
            (Status::Ok, MAX_REQUEST_BYTES)
        );
        let rev: Vec<BlockSegment> = (0..8).rev().map(|i| seg(i * 0x2_0000, 0x2_0000)).collect();
        m.write_slice(&vec![0u8; data.len()], GuestAddress(0))
            .unwrap();
        assert_eq!(
            d.handle(&m, &request(1, 7, &rev)),
            (Status::Ok, MAX_REQUEST_BYTES)
        );
        let mut got = vec![0u8; data.len()];
        m.read_slice(&mut got, GuestAddress(0)).unwrap();
        for (i, chunk) in got.chunks(0x2_0000).enumerate() {
            let j = 7 - i;
            assert_eq!(
                chunk,
                &data[j * 0x2_0000..(j + 1) * 0x2_0000],
                "segment {i}"
            );
        }
        // Flush, and a request past the end of the 2 MiB image.
        assert_eq!(d.handle(&m, &request(3, 0, &[])), (Status::Ok, 0));
        assert_eq!(
            d.handle(&m, &request(1, 4096, &[seg(0, 512)])),
            (Status::ERANGE, 0)
        );
    }

    /// A backend whose every operation fails with a chosen OS error.
    struct Failing(i32);

    impl BlockBackend for Failing {
        fn len(&self) -> u64 {
            DISK as u64
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> Result<(), BackendError> {
            Err(io::Error::from_raw_os_error(self.0).into())
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> Result<(), BackendError> {
            Err(io::Error::from_raw_os_error(self.0).into())
        }
        fn flush(&mut self) -> Result<(), BackendError> {
            Err(io::Error::from_raw_os_error(self.0).into())
        }
    }

    #[test]
    fn backend_errors_map_to_eio_and_enospc() {
        let m = mem();
        let w = request(2, 0, &[seg(0, 512)]);
        let r = request(1, 0, &[seg(0, 512)]);
        let f = request(3, 0, &[]);
        let mut eio = BlockDevice::new(Failing(5));
        let mut full = BlockDevice::new(Failing(28));
        assert_eq!(eio.handle(&m, &w), (Status::EIO, 0));
        assert_eq!(eio.handle(&m, &r), (Status::EIO, 0));
        assert_eq!(eio.handle(&m, &f), (Status::EIO, 0));
        assert_eq!(full.handle(&m, &w), (Status::ENOSPC, 0));
        assert_eq!(full.handle(&m, &f), (Status::ENOSPC, 0));
        // Validation still comes first.
        assert_eq!(
            eio.handle(&m, &request(2, 500, &[seg(0, 512)])),
            (Status::ERANGE, 0)
        );
    }

    /// A [`MemBackend`] whose `fail_at`-th data call (0-based, reads and writes counted
    /// together) fails with `EIO`; the others go through.
    struct FailNth {
        inner: MemBackend,
        calls: usize,
        fail_at: usize,
    }

    impl FailNth {
        fn tick(&mut self) -> Result<(), BackendError> {
            self.calls += 1;
            if self.calls - 1 == self.fail_at {
                return Err(io::Error::from_raw_os_error(5).into());
            }
            Ok(())
        }
    }

    impl BlockBackend for FailNth {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn read_at(&mut self, o: u64, b: &mut [u8]) -> Result<(), BackendError> {
            self.inner.read_at(o, b)
        }
        fn write_at(&mut self, o: u64, b: &[u8]) -> Result<(), BackendError> {
            self.inner.write_at(o, b)
        }
        fn flush(&mut self) -> Result<(), BackendError> {
            self.inner.flush()
        }
        fn read_volatile_at(
            &mut self,
            o: u64,
            dst: &vm_memory::VolatileSlice<'_>,
        ) -> Result<(), BackendError> {
            self.tick()?;
            self.inner.read_volatile_at(o, dst)
        }
        fn write_volatile_at(
            &mut self,
            o: u64,
            src: &vm_memory::VolatileSlice<'_>,
        ) -> Result<(), BackendError> {
            self.tick()?;
            self.inner.write_volatile_at(o, src)
        }
    }

    /// docs/ABI.md, "Block": a request that fails with a host I/O error may have been
    /// carried out in part — one backend call per segment, in order, so the segments before
    /// the failing one are written (or read), the failing one and those after it may not
    /// be, and `bytes` is 0 — as on a real disk. The guest must treat the whole range as
    /// undefined after a failed write (and the whole buffer after a failed read).
    #[test]
    fn a_failed_multi_segment_request_may_be_partly_done() {
        let m = mem();
        m.write_slice(&[0xaa; 512], GuestAddress(0x1000)).unwrap();
        m.write_slice(&[0xbb; 512], GuestAddress(0x2000)).unwrap();
        m.write_slice(&[0xcc; 512], GuestAddress(0x3000)).unwrap();
        let original = patterned_disk().into_inner();
        let mut d = BlockDevice::new(FailNth {
            inner: patterned_disk(),
            calls: 0,
            fail_at: 1,
        });
        let segs = [seg(0x1000, 512), seg(0x2000, 512), seg(0x3000, 512)];
        assert_eq!(d.handle(&m, &request(2, 8, &segs)), (Status::EIO, 0));
        assert_eq!(
            d.backend().calls,
            2,
            "the segments after the failure are not tried"
        );
        let disk = d.backend().inner.as_slice();
        assert!(
            disk[8 * 512..9 * 512].iter().all(|&x| x == 0xaa),
            "segment 0 written"
        );
        assert_eq!(disk[9 * 512..11 * 512], original[9 * 512..11 * 512]);
        assert_eq!(
            disk[..8 * 512],
            original[..8 * 512],
            "nothing outside the range"
        );
        assert_eq!(disk[11 * 512..], original[11 * 512..]);
        // A read failing at its second segment filled the first buffer only.
        d.backend_mut().calls = 0;
        assert_eq!(d.handle(&m, &request(1, 0, &segs)), (Status::EIO, 0));
        let mut got = vec![0u8; 512];
        m.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, original[..512]);
        m.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert!(got.iter().all(|&x| x == 0xbb));
        m.read_slice(&mut got, GuestAddress(0x3000)).unwrap();
        assert!(got.iter().all(|&x| x == 0xcc));
    }

    #[test]
    fn ring_adapter() {
        let m = mem();
        let gpa = 0x8_0000;
        let mut p = GuestProducer::<BlockRequest, BlockResponse>::init(&m, gpa, 4, 7).unwrap();
        let mut ring = BlockRing::new(&m, gpa, 0x1000).unwrap();
        let mut d = BlockDevice::new(MemBackend::new(DISK));
        m.write_slice(&[0x11; 512], GuestAddress(0x1000)).unwrap();
        let mut w = request(2, 4, &[seg(0x1000, 512)]);
        w.id = 1;
        let mut r = request(1, 4, &[seg(0x2000, 512)]);
        r.id = 2;
        let mut bad = request(9, 0, &[]);
        bad.id = 3;
        for q in [w, r, bad] {
            p.push(&m, q).unwrap();
        }
        assert!(p.publish(&m).unwrap());
        let b = d.service_ring(&m, &mut ring).unwrap();
        assert_eq!((b.requests, b.batches), (3, 1));
        let rsps = p.take_responses(&m).unwrap();
        assert_eq!(
            rsps,
            vec![
                BlockResponse {
                    id: 1,
                    status: 0,
                    bytes: 512
                },
                BlockResponse {
                    id: 2,
                    status: 0,
                    bytes: 512
                },
                BlockResponse {
                    id: 3,
                    status: Status::EINVAL as i64,
                    bytes: 0
                },
            ]
        );
        let mut back = [0u8; 512];
        m.read_slice(&mut back, GuestAddress(0x2000)).unwrap();
        assert_eq!(back, [0x11; 512]);
    }
}
