//! The PV block driver ([`pvkit_abi::block`]): synchronous requests with the `BlockIo`
//! hypercall, and a request ring ([`BlockRing`]) for batches.
//!
//! A request covers one physically contiguous buffer of up to
//! [`MAX_REQUEST_BYTES`] (1 MiB), described by up to [`MAX_SEGMENTS`] segments of
//! [`SEGMENT_BYTES`] (128 KiB) each: a 4 KiB request has one segment, a 1 MiB request
//! eight. (Xen's blkfront has one segment per page; 128 KiB segments keep a 1 MiB request
//! to eight descriptors while still exercising the host's scatter-gather path.) Longer
//! synchronous transfers are split into 1 MiB requests.
//!
//! # Costs
//!
//! [`PvBlock`] keeps its request in place between calls and rewrites only the fields of
//! the next request (id, op, sector, count, the used segments): about 10 stores for a
//! 4 KiB request, then one exit. [`BlockRing`] writes requests straight into their ring
//! slots and rings the doorbell once per batch, when the host asks for it.

use crate::addr::virt_to_phys;
use crate::ring::{Full, QueueError, Ring, RingError, WaitError};
use pvkit_abi::block::{
    BlockOp, BlockRequest, BlockResponse, BlockSegment, MAX_REQUEST_BYTES, MAX_SEGMENTS,
    SECTOR_SIZE,
};
use pvkit_abi::ring::{RegionKind, RingId, Transport};
use pvkit_abi::Status;

/// Bytes per segment of a request built here: `MAX_REQUEST_BYTES / MAX_SEGMENTS` (128 KiB).
pub const SEGMENT_BYTES: u32 = (MAX_REQUEST_BYTES / MAX_SEGMENTS as u64) as u32;

/// Checks a transfer length for one request: a non-zero multiple of the sector size
/// (`EINVAL`), at most [`MAX_REQUEST_BYTES`] (`E2BIG`). The host would answer the same.
pub const fn check_len(len: u64) -> Result<(), Status> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        Err(Status::EINVAL)
    } else if len > MAX_REQUEST_BYTES {
        Err(Status::E2BIG)
    } else {
        Ok(())
    }
}

/// Writes a read or write request for `len` bytes (checked with [`check_len`] by the
/// caller) at guest-physical `gpa` into `req`: `ceil(len / SEGMENT_BYTES)` segments,
/// consecutive in memory. Segments past `nr_segments` are left as they were (the host
/// reads only `nr_segments`).
#[inline]
pub fn fill_request(req: &mut BlockRequest, id: u64, op: BlockOp, sector: u64, gpa: u64, len: u32) {
    req.id = id;
    req.op = op as u32;
    req.sector = sector;
    let mut n = 0;
    let mut done = 0;
    while done < len {
        let seg = (len - done).min(SEGMENT_BYTES);
        req.segments[n] = BlockSegment {
            addr: gpa + u64::from(done),
            len: seg,
            reserved: 0,
        };
        done += seg;
        n += 1;
    }
    req.nr_segments = n as u32;
}

/// Writes a flush request into `req` (no segments).
pub fn fill_flush(req: &mut BlockRequest, id: u64) {
    req.id = id;
    req.op = BlockOp::Flush as u32;
    req.nr_segments = 0;
    req.sector = 0;
}

/// The PV block device through the synchronous `BlockIo` hypercall: one exit per request.
#[derive(Debug, Default)]
pub struct PvBlock {
    /// The request handed to the host, reused from call to call.
    req: BlockRequest,
    next_id: u64,
}

#[cfg(target_arch = "x86_64")]
impl PvBlock {
    /// A driver (the device needs no set-up; see [`capacity`]).
    pub const fn new() -> Self {
        PvBlock {
            req: BlockRequest {
                id: 0,
                op: 0,
                nr_segments: 0,
                sector: 0,
                segments: [BlockSegment {
                    addr: 0,
                    len: 0,
                    reserved: 0,
                }; MAX_SEGMENTS],
            },
            next_id: 0,
        }
    }

    /// Reads `buf.len()` bytes (a non-zero multiple of 512) from `sector` on: one request
    /// per MiB. Returns the bytes read.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<u64, Status> {
        let gpa = virt_to_phys(buf.as_ptr());
        // SAFETY: the host writes only into `buf`, which is exclusively borrowed for the
        // call and physically contiguous (the `addr` contract).
        unsafe { self.transfer(BlockOp::Read, sector, gpa, buf.len() as u64) }
    }

    /// Writes `buf` (a non-zero multiple of 512 bytes) to `sector` on: one request per MiB.
    /// Returns the bytes written.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<u64, Status> {
        let gpa = virt_to_phys(buf.as_ptr());
        // SAFETY: the host only reads `buf`, which is borrowed for the call.
        unsafe { self.transfer(BlockOp::Write, sector, gpa, buf.len() as u64) }
    }

    /// Makes every completed write durable. One exit.
    pub fn flush(&mut self) -> Result<(), Status> {
        fill_flush(&mut self.req, self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        // SAFETY: a flush names no guest memory.
        unsafe { crate::hypercall::block_io(&self.req) }.map(drop)
    }

    /// One request of at most 1 MiB at guest-physical `gpa`; returns the bytes moved. The
    /// hot path of the benchmarks: about ten stores and one exit.
    ///
    /// # Safety
    ///
    /// `gpa..gpa + len` must be guest memory the host may read (`Write`) or write (`Read`)
    /// during the call, not used by Rust code meanwhile.
    #[inline]
    pub unsafe fn request(
        &mut self,
        op: BlockOp,
        sector: u64,
        gpa: u64,
        len: u32,
    ) -> Result<u64, Status> {
        check_len(u64::from(len))?;
        fill_request(&mut self.req, self.next_id, op, sector, gpa, len);
        self.next_id = self.next_id.wrapping_add(1);
        // SAFETY: the caller's contract covers the segments; `self.req` is borrowed.
        let bytes = unsafe { crate::hypercall::block_io(&self.req) }?;
        if bytes != u64::from(len) {
            return Err(Status::EIO);
        }
        Ok(bytes)
    }

    /// # Safety
    ///
    /// As [`PvBlock::request`], for `len` bytes.
    unsafe fn transfer(
        &mut self,
        op: BlockOp,
        sector: u64,
        gpa: u64,
        len: u64,
    ) -> Result<u64, Status> {
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Status::EINVAL);
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_REQUEST_BYTES);
            // SAFETY: a sub-range of the caller's buffer.
            done += unsafe { self.request(op, sector + done / SECTOR_SIZE, gpa + done, n as u32) }?;
        }
        Ok(done)
    }
}

/// The capacity of the PV block device in 512-byte sectors (one exit).
#[cfg(target_arch = "x86_64")]
pub fn capacity() -> Result<u64, Status> {
    crate::hypercall::block_capacity()
}

/// Why a block ring could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// The memory or size is unusable.
    Ring(RingError),
    /// The host refused the registration (`EOPNOTSUPP`: no such transport or ring).
    Host(Status),
}

/// The PV block request ring: requests are queued in their slots, published together and
/// notified with one doorbell per batch (when the host wants one); completions are polled.
#[derive(Debug)]
pub struct BlockRing {
    ring: Ring<BlockRequest, BlockResponse>,
    transport: Transport,
}

#[cfg(target_arch = "x86_64")]
impl BlockRing {
    /// Sets up a ring of `size` slots in `mem` (4 KiB aligned, at least
    /// [`BlockRing::bytes`]`(size)` long) and registers it with the host
    /// (`RegisterRegion(BlockRing, gpa, len, transport)`). Registering replaces the
    /// previous block ring: give each registration its own memory (an old host poller
    /// must never see a ring re-initialized under it).
    pub fn register(
        mem: &'static mut [u8],
        size: u32,
        transport: Transport,
    ) -> Result<Self, SetupError> {
        let ring = Ring::new(mem, size).map_err(SetupError::Ring)?;
        let gpa = virt_to_phys(ring.as_ptr());
        // SAFETY: the ring memory is 'static and used only by this ring and the host, which
        // accesses it as the ring protocol says.
        unsafe {
            crate::hypercall::register_region(
                RegionKind::BlockRing,
                gpa,
                ring.len() as u64,
                transport as u64,
            )
        }
        .map_err(SetupError::Host)?;
        Ok(BlockRing { ring, transport })
    }

    /// Bytes a block ring of `size` slots needs.
    pub const fn bytes(size: u32) -> Option<usize> {
        Ring::<BlockRequest, BlockResponse>::bytes(size)
    }

    /// The transport chosen at registration.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The ring itself (indices, flags).
    pub fn ring(&self) -> &Ring<BlockRequest, BlockResponse> {
        &self.ring
    }

    /// Queues a read or write of `len` bytes at guest-physical `gpa` (checked with
    /// [`check_len`]: `Invalid(EINVAL | E2BIG)`, nothing queued), with `id` echoed in the
    /// response. Not visible to the host before [`BlockRing::submit`].
    ///
    /// # Safety
    ///
    /// From [`BlockRing::submit`] until its response is consumed, the host may read
    /// (`Write`) or write (`Read`) `gpa..gpa + len` at any time: that memory must stay
    /// valid and must not be used by Rust code meanwhile.
    #[inline]
    pub unsafe fn queue(
        &mut self,
        id: u64,
        op: BlockOp,
        sector: u64,
        gpa: u64,
        len: u32,
    ) -> Result<(), QueueError> {
        check_len(u64::from(len)).map_err(QueueError::Invalid)?;
        self.ring
            .push_with(|slot| fill_request(slot, id, op, sector, gpa, len))?;
        Ok(())
    }

    /// Queues a flush (completes after every write published before it).
    pub fn queue_flush(&mut self, id: u64) -> Result<(), Full> {
        self.ring.push_with(|slot| fill_flush(slot, id))
    }

    /// Publishes the queued requests and rings the doorbell if the host asked for it
    /// (never with `HostPoll`). Returns whether the doorbell was rung.
    #[inline]
    pub fn submit(&mut self) -> bool {
        let notify = self.ring.publish();
        if notify {
            crate::ring::kick(RingId::Block);
        }
        notify
    }

    /// Spins until every submitted request has its response, handing each to `f`.
    /// `timeout` is in TSC cycles.
    #[inline]
    pub fn wait(&mut self, timeout: u64, f: impl FnMut(&BlockResponse)) -> Result<(), WaitError> {
        self.ring.wait_idle(timeout, f)
    }

    /// Hands the responses available now to `f`; returns how many.
    pub fn poll(&mut self, f: impl FnMut(&BlockResponse)) -> u32 {
        self.ring.poll_responses(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(check_len(0), Err(Status::EINVAL));
        assert_eq!(check_len(4095), Err(Status::EINVAL));
        assert_eq!(check_len(512), Ok(()));
        assert_eq!(check_len(1 << 20), Ok(()));
        assert_eq!(check_len((1 << 20) + 512), Err(Status::E2BIG));
    }

    #[test]
    fn a_4k_request_has_one_segment() {
        let mut req = BlockRequest::default();
        fill_request(&mut req, 7, BlockOp::Read, 1000, 0x40_0000, 4096);
        assert_eq!(
            (req.id, req.op, req.sector, req.nr_segments),
            (7, 1, 1000, 1)
        );
        assert_eq!(
            req.segments[0],
            BlockSegment {
                addr: 0x40_0000,
                len: 4096,
                reserved: 0
            }
        );
    }

    #[test]
    fn a_1m_request_has_eight_128k_segments() {
        let mut req = BlockRequest::default();
        req.segments[7].reserved = 99; // stale content is overwritten
        fill_request(&mut req, 1, BlockOp::Write, 0, 0x100_0000, 1 << 20);
        assert_eq!(req.nr_segments, 8);
        for (i, s) in req.segments.iter().enumerate() {
            assert_eq!(s.addr, 0x100_0000 + i as u64 * 0x2_0000);
            assert_eq!((s.len, s.reserved), (0x2_0000, 0));
        }
        // An uneven length: the last segment is the remainder.
        fill_request(&mut req, 2, BlockOp::Read, 0, 0, 0x2_0000 + 512);
        assert_eq!(req.nr_segments, 2);
        assert_eq!(req.segments[1].len, 512);
    }

    #[test]
    fn flush_has_no_segments() {
        let mut req = BlockRequest::default();
        fill_request(&mut req, 1, BlockOp::Write, 5, 0x1000, 4096);
        fill_flush(&mut req, 2);
        assert_eq!((req.id, req.op, req.nr_segments, req.sector), (2, 3, 0, 0));
    }
}
