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
//! [`PvBlock`] keeps its request in place between calls as a template: while the op and
//! the length stay the same, a request stores only its sector and, if the buffer moved,
//! the segment addresses (one store for a 4 KiB request), then exits once.
//! [`BlockRing`] writes requests straight into their ring slots and rings the doorbell
//! once per batch, when the host asks for it; with [`BlockRing::set_template`] every slot
//! is pre-filled with the op, the segment lengths and an id (its slot number), so a batch
//! built through [`BlockRing::slots_mut`] stores only a sector and a buffer address per
//! request and is pushed with one [`BlockRing::commit`].

use crate::addr::virt_to_phys;
use crate::ring::{Full, QueueError, Ring, RingError, WaitError};
use pvkit_abi::block::{
    BlockOp, BlockRequest, BlockResponse, BlockSegment, MAX_REQUEST_BYTES, MAX_SEGMENTS,
    SECTOR_SIZE,
};
use pvkit_abi::ring::{RegionId, Transport, BLOCK_QUEUE};
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

/// Writes the segment addresses of a request of `nr_segments` consecutive segments of
/// [`SEGMENT_BYTES`] (the last possibly shorter) for a buffer at `gpa`: the only segment
/// fields that change when a request template is reused for another buffer.
#[inline]
pub fn set_segment_addrs(req: &mut BlockRequest, gpa: u64) {
    req.segments[0].addr = gpa;
    let n = (req.nr_segments as usize).min(MAX_SEGMENTS);
    for i in 1..n {
        req.segments[i].addr = gpa + i as u64 * u64::from(SEGMENT_BYTES);
    }
}

/// The PV block device through the synchronous `BlockIo` hypercall: one exit per request.
///
/// Requests carry id 0 (a synchronous call needs no id to match its answer).
#[derive(Debug, Default)]
pub struct PvBlock {
    /// The request handed to the host, reused from call to call as a template: `op`,
    /// `nr_segments` and the segment lengths are those of [`PvBlock::len`].
    req: BlockRequest,
    /// Bytes of the request in `req` (0: no template yet).
    len: u32,
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
            len: 0,
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
        fill_flush(&mut self.req, 0);
        // The template is gone: the next read or write rebuilds it.
        self.len = 0;
        // SAFETY: a flush names no guest memory.
        unsafe { crate::hypercall::block_io(&self.req) }.map(drop)
    }

    /// One request of at most 1 MiB at guest-physical `gpa`; returns the bytes moved. The
    /// hot path of the benchmarks: with the same op and length as the previous request,
    /// two compares, the sector store, the segment address stores if the buffer moved
    /// (one for 4 KiB, none for a 1 MiB request into the same buffer) and one exit.
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
        if len != self.len || op as u32 != self.req.op {
            // A new template (`len` 0 never matches: it fails `check_len`).
            self.retemplate(op, len, gpa)?;
        } else if self.req.segments[0].addr != gpa {
            set_segment_addrs(&mut self.req, gpa);
        }
        self.req.sector = sector;
        // SAFETY: the caller's contract covers the segments; `self.req` is borrowed.
        let bytes = unsafe { crate::hypercall::block_io(&self.req) }?;
        if bytes != u64::from(len) {
            return Err(Status::EIO);
        }
        Ok(bytes)
    }

    /// Rebuilds the template for `op` and `len` at `gpa` (checked with [`check_len`]).
    #[cold]
    fn retemplate(&mut self, op: BlockOp, len: u32, gpa: u64) -> Result<(), Status> {
        check_len(u64::from(len))?;
        fill_request(&mut self.req, 0, op, 0, gpa, len);
        self.len = len;
        Ok(())
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

/// Initializes a ring of `size` slots in `mem` and registers it with the host as queue
/// `queue` (`RegisterRegion(queue, gpa, len, transport)`): the set-up every PV ring driver
/// shares.
#[cfg(target_arch = "x86_64")]
pub(crate) fn register_ring<Req: crate::ring::RingItem, Rsp: crate::ring::RingItem>(
    mem: &'static mut [u8],
    size: u32,
    queue: pvkit_abi::ring::QueueId,
    transport: Transport,
) -> Result<Ring<Req, Rsp>, SetupError> {
    let ring = Ring::new(mem, size).map_err(SetupError::Ring)?;
    let gpa = virt_to_phys(ring.as_ptr());
    // SAFETY: the ring memory is 'static and used only by this ring and the host, which
    // accesses it as the ring protocol says.
    unsafe {
        crate::hypercall::register_region(
            RegionId::Queue(queue),
            gpa,
            ring.len() as u64,
            transport as u64,
        )
    }
    .map_err(SetupError::Host)?;
    Ok(ring)
}

/// Why a ring (block or console) could not be set up.
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
    /// (`RegisterRegion(BLOCK_QUEUE, gpa, len, transport)`). Registering replaces the
    /// previous block ring: give each registration its own memory (an old host poller
    /// must never see a ring re-initialized under it).
    pub fn register(
        mem: &'static mut [u8],
        size: u32,
        transport: Transport,
    ) -> Result<Self, SetupError> {
        let ring = register_ring(mem, size, BLOCK_QUEUE, transport)?;
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

    /// Queues a flush (completes after every write published before it). Overwrites a
    /// slot's template: call [`BlockRing::set_template`] again before relying on one.
    pub fn queue_flush(&mut self, id: u64) -> Result<(), Full> {
        self.ring.push_with(|slot| fill_flush(slot, id))
    }

    /// Pre-fills every free slot with a request template: `op`, the segments of a `len`
    /// byte transfer (checked with [`check_len`]; `Invalid(..)`, nothing written,
    /// otherwise) at guest-physical `gpa(slot)` (the slot's own buffer, or one buffer for
    /// all), and the slot number as the id. Requests built later through
    /// [`BlockRing::slots_mut`] then only need their sector (and, for another buffer than
    /// the slot's, [`set_segment_addrs`], or for a one-segment request just
    /// `segments[0].addr`). Slots in use keep their request: template an idle ring.
    pub fn set_template(
        &mut self,
        op: BlockOp,
        len: u32,
        gpa: impl Fn(u32) -> u64,
    ) -> Result<(), QueueError> {
        check_len(u64::from(len)).map_err(QueueError::Invalid)?;
        self.ring
            .fill_free(|slot, req| fill_request(req, u64::from(slot), op, 0, gpa(slot), len));
        Ok(())
    }

    /// The next `n` free slots to fill in place (see [`Ring::slots_mut`]), then
    /// [`BlockRing::commit`]. Writing slots is harmless; committing them hands their
    /// buffers to the host.
    #[inline]
    #[allow(clippy::type_complexity)]
    pub fn slots_mut(
        &mut self,
        n: u32,
    ) -> Result<(&mut [BlockRequest], &mut [BlockRequest]), Full> {
        self.ring.slots_mut(n)
    }

    /// Pushes the next `n` slots, as they are (filled through [`BlockRing::slots_mut`],
    /// or a template): one index update. Not visible to the host before
    /// [`BlockRing::submit`] or [`BlockRing::publish`].
    ///
    /// # Safety
    ///
    /// As [`BlockRing::queue`], for every buffer the `n` requests name: from the next
    /// submit or publish until a request's response is consumed, the host may read or
    /// write its buffer at any time.
    #[inline]
    pub unsafe fn commit(&mut self, n: u32) -> Result<(), Full> {
        self.ring.commit(n)
    }

    /// Publishes the queued requests without ringing: returns whether the host asked for
    /// the doorbell ([`crate::ring::kick`] with [`BLOCK_QUEUE`], a port write: ring 0
    /// only). Never with `HostPoll`. This is what ring-3 code polling a ring calls.
    #[inline]
    pub fn publish(&mut self) -> bool {
        self.ring.publish()
    }

    /// Publishes the queued requests and rings the doorbell if the host asked for it
    /// (never with `HostPoll`). Returns whether the doorbell was rung. Ring 0.
    #[inline]
    pub fn submit(&mut self) -> bool {
        let notify = self.ring.publish();
        if notify {
            crate::ring::kick(BLOCK_QUEUE);
        }
        notify
    }

    /// Spins until every submitted request has its response, handing each to `f`.
    /// `timeout` is in TSC cycles.
    #[inline]
    pub fn wait(&mut self, timeout: u64, f: impl FnMut(&BlockResponse)) -> Result<(), WaitError> {
        self.ring.wait_idle(timeout, f)
    }

    /// Binds the ring's completions to interrupt line `gsi` (0: unbind),
    /// `QueueInterrupt`; needs `Features::RING_IRQ`.
    #[cfg(target_arch = "x86_64")]
    pub fn bind_interrupt(&self, gsi: u32) -> Result<(), Status> {
        crate::hypercall::queue_interrupt(pvkit_abi::ring::BLOCK_QUEUE, gsi)
    }

    /// Arms the completion interrupt for the next response; returns whether responses are
    /// already waiting ([`Ring::arm_responses`]).
    pub fn arm(&mut self) -> bool {
        self.ring.arm_responses()
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
    fn segment_addresses_follow_the_template() {
        let mut req = BlockRequest::default();
        fill_request(&mut req, 1, BlockOp::Read, 9, 0x100_0000, 0x4_0000 + 512);
        set_segment_addrs(&mut req, 0x200_0000);
        let mut want = BlockRequest::default();
        fill_request(&mut want, 1, BlockOp::Read, 9, 0x200_0000, 0x4_0000 + 512);
        assert_eq!(req, want);
        // Segments past `nr_segments` are not touched.
        req.segments[5].addr = 77;
        set_segment_addrs(&mut req, 0x300_0000);
        assert_eq!(req.segments[5].addr, 77);
        assert_eq!(req.segments[2].addr, 0x300_0000 + 2 * 0x2_0000);
    }

    #[test]
    fn flush_has_no_segments() {
        let mut req = BlockRequest::default();
        fill_request(&mut req, 1, BlockOp::Write, 5, 0x1000, 4096);
        fill_flush(&mut req, 2);
        assert_eq!((req.id, req.op, req.nr_segments, req.sector), (2, 3, 0, 0));
    }
}
