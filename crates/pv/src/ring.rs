//! The host consumer of a [`pvkit_abi::ring`] request/response ring.
//!
//! [`RingConsumer`] is validated once, at registration ([`RingConsumer::new`]), and from
//! then on keeps everything it needs in host memory: the ring's base address, its size and
//! its consumer index. The guest's copy of `size` is never read again and the guest's
//! indices are never trusted: `req_prod` is read once per check and bounded against the
//! private consumer index, and `rsp_prod`/`req_event`/`host_flags` are only ever written.
//! A guest that moves `req_prod` more than `size` past the consumer gets the ring marked
//! [`BROKEN`] and serviced no more until it registers a ring again.
//!
//! # Memory ordering
//!
//! The guest and the host run concurrently on different CPUs (with the eventfd and polling
//! transports), so every shared index access is an atomic access through vm-memory
//! (`Bytes::load`/`Bytes::store`, which are bounds- and alignment-checked) and the slots are
//! copied with vm-memory's volatile copies. The pairs are:
//!
//! | guest (producer)                               | host (this module)                          |
//! |------------------------------------------------|---------------------------------------------|
//! | write request slots; release fence; store `req_prod` | load `req_prod` with **Acquire**, then copy the slots |
//! | load `rsp_prod` (acquire), then read responses | write response slots; store `rsp_prod` with **Release** |
//! | store `req_prod`; **full fence**; load `req_event`, `host_flags` | store `req_event`; **full fence** (`fence(SeqCst)`); load `req_prod` |
//! | (same)                                         | store `host_flags`; full fence; load `req_prod` ([`RingConsumer::set_polling`]) |
//!
//! The first two rows are plain message passing: acquire/release makes the slot contents
//! visible before the index that publishes them. The last two are the store-buffer
//! ("Dekker") pattern that makes notification suppression safe: each side stores its own
//! word, executes a full fence (a release or acquire alone does not order a store before a
//! later load; on x86 this is `mfence`), then loads the other side's word. At least one of
//! the two loads observes the other's store, so either the host sees the new `req_prod` in
//! its final re-check and keeps working, or the guest sees the new `req_event` (or the
//! cleared [`HOST_POLLING`]) and rings the doorbell. A notification is never lost.

use core::marker::PhantomData;
use core::mem::size_of;
use std::sync::atomic::{fence, Ordering};

use pvkit_abi::ring::{
    need_notify, offsets, request_offset, response_offset, ring_bytes, BROKEN, HEADER_SIZE,
    HOST_POLLING,
};
use pvkit_abi::Status;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::guest_range::{GuestRange, RangeError};
use crate::wire::{AbiPod, Wire};

pub(crate) mod state;

/// Alignment required of every registered region (rings and the clock page): 4 KiB.
pub const REGION_ALIGN: u64 = 4096;

/// Requests one service of a ring handles at most, when the host sets the service budget
/// ([`RingConsumer::set_budget`]): twice the largest ring, so a service never splits what a
/// guest can publish between two doorbells, while a ring that refills itself (requests
/// whose data lands on its own header and slots) is served in bounded rounds.
pub const SERVICE_REQUESTS: u64 = 2 * pvkit_abi::ring::MAX_RING_SIZE as u64;

/// Bytes one service of a ring moves at most ([`RingConsumer::set_byte_budget`]): a full
/// ring of the largest block requests (256 × 1 MiB). Checked after each request, so one
/// service moves at most this plus one request.
pub const SERVICE_BYTES: u64 = pvkit_abi::ring::MAX_RING_SIZE as u64 * (1 << 20);

/// Errors from registering or servicing a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The ring's guest-physical address is not 4 KiB aligned; register a page-aligned ring.
    #[error("ring address {gpa:#x} is not 4 KiB aligned")]
    Misaligned {
        /// The address the guest registered.
        gpa: u64,
    },
    /// The registered region is not inside guest RAM.
    #[error("ring region: {0}")]
    Range(#[from] RangeError),
    /// The registered region is shorter than the ring its header describes; register
    /// `ring_bytes(size, ..)` bytes or more.
    #[error("ring region of {len} bytes is too small: the ring needs {need} bytes")]
    TooSmall {
        /// Length the guest registered.
        len: u64,
        /// Bytes the ring needs (header plus all slots).
        need: u64,
    },
    /// The header's `size` is not a power of two in `1..=MAX_RING_SIZE`; fix the guest's
    /// ring initialization.
    #[error("ring size {size} is not a power of two in 1..=256")]
    InvalidSize {
        /// The size the guest wrote in the header.
        size: u32,
    },
    /// At registration, `req_prod` is more than `size` ahead of `rsp_prod`; initialize
    /// both indices to the same value before registering.
    #[error(
        "ring registered with req_prod {req_prod} more than {size} ahead of rsp_prod {rsp_prod}"
    )]
    CorruptIndices {
        /// The guest's `req_prod`.
        req_prod: u32,
        /// The guest's `rsp_prod`.
        rsp_prod: u32,
        /// The ring size.
        size: u32,
    },
    /// The guest moved `req_prod` more than `size` past the host's consumer index. The ring
    /// is now marked [`BROKEN`]; the guest must register a fresh ring.
    #[error("req_prod {req_prod} is more than {size} past consumer index {consumed}: ring marked broken")]
    Overrun {
        /// The `req_prod` value read.
        req_prod: u32,
        /// The host's consumer index.
        consumed: u32,
        /// The ring size.
        size: u32,
    },
    /// The ring was marked [`BROKEN`] earlier and is not serviced; the guest must register a
    /// fresh ring.
    #[error("ring is broken; re-register it")]
    Broken,
    /// A guest memory access inside the validated ring failed (the memory map changed
    /// under the ring). The ring is marked [`BROKEN`].
    #[error("ring memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
}

impl RingError {
    /// The status reported to the guest for this error (e.g. as the result of
    /// `RegisterRegion` or `RingKick`).
    pub fn status(&self) -> Status {
        match self {
            RingError::Misaligned { .. }
            | RingError::TooSmall { .. }
            | RingError::InvalidSize { .. }
            | RingError::CorruptIndices { .. } => Status::EINVAL,
            RingError::Range(e) => e.status(),
            RingError::Overrun { .. } | RingError::Broken => Status::EIO,
            RingError::Memory(_) => Status::EFAULT,
        }
    }
}

/// What one [`RingConsumer::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Requests handled (each got a response).
    pub requests: u64,
    /// Times `rsp_prod` was published (one per run of requests found available).
    pub batches: u64,
    /// The cost the handler reported for the requests handled
    /// ([`RingConsumer::poll_metered`]; 0 with [`RingConsumer::poll`]): bytes moved.
    pub bytes: u64,
    /// The poll stopped because it reached its budget ([`RingConsumer::set_budget`],
    /// [`RingConsumer::set_byte_budget`]) while requests were still available. `req_event`
    /// was not re-armed, so the guest will not notify: the caller must poll again.
    pub budget_exhausted: bool,
    /// The guest asked to be notified of a response published by this poll: its
    /// `rsp_event` lies in the range of responses published (the event-index rule,
    /// `pvkit_abi::ring`). A queue bound to an interrupt raises it once.
    pub notify: bool,
}

/// The host side of one registered ring carrying `Req` requests and `Rsp` responses.
///
/// Holds no reference to guest memory: every method takes the memory it works on, and
/// every access through it is bounds-checked by vm-memory in addition to the registration
/// checks.
#[derive(Debug)]
pub struct RingConsumer<Req: AbiPod, Rsp: AbiPod> {
    /// `[gpa, gpa + ring_bytes)`, validated at registration. Every host access lies inside.
    region: GuestRange,
    /// Number of slots, read once at registration.
    size: u32,
    /// Requests consumed, which is also responses produced (every request is answered
    /// before the next is read). Private: never read back from the guest.
    consumed: u32,
    /// The host's value of `host_flags`; the guest's copy is only ever overwritten.
    host_flags: u32,
    /// Set once the ring was found corrupt; never cleared.
    broken: bool,
    /// Most requests one `poll` handles, `None` for no limit.
    budget: Option<u64>,
    /// Most bytes (handler-reported cost) one `poll` moves, `None` for no limit.
    byte_budget: Option<u64>,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<Req: AbiPod, Rsp: AbiPod> RingConsumer<Req, Rsp> {
    /// Validates and adopts the ring the guest registered at `[gpa, gpa + len)`.
    ///
    /// Checks, in order: `gpa` is 4 KiB aligned ([`RingError::Misaligned`]); the region is
    /// inside guest RAM ([`RingError::Range`]); it holds a header ([`RingError::TooSmall`]);
    /// the header's `size` is valid ([`RingError::InvalidSize`]); the whole ring fits in
    /// `len` ([`RingError::TooSmall`]); `req_prod - rsp_prod <= size`
    /// ([`RingError::CorruptIndices`]).
    ///
    /// The consumer index starts at the guest's `rsp_prod` (any value: indices are
    /// free-running), so requests published before registration are serviced by the first
    /// [`poll`](Self::poll). On success the host writes `req_event = rsp_prod + 1` and
    /// `host_flags = 0`; nothing is written on failure.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, len: u64) -> Result<Self, RingError> {
        if !gpa.is_multiple_of(REGION_ALIGN) {
            return Err(RingError::Misaligned { gpa });
        }
        let registered = GuestRange::new(mem, gpa, len)?;
        let need_header = HEADER_SIZE as u64;
        if len < need_header {
            return Err(RingError::TooSmall {
                len,
                need: need_header,
            });
        }
        let base = registered.guest_addr();
        // The hypercall that registers the ring is a VM exit, which orders the guest's
        // header initialization before these reads; relaxed loads suffice.
        let size: u32 = mem.load(field(base, offsets::SIZE), Ordering::Relaxed)?;
        let Some(bytes) = ring_bytes(size, size_of::<Req>(), size_of::<Rsp>()) else {
            return Err(RingError::InvalidSize { size });
        };
        let need = bytes as u64;
        let region = registered
            .subrange(0, bytes)
            .ok_or(RingError::TooSmall { len, need })?;
        let req_prod: u32 = mem.load(field(base, offsets::REQ_PROD), Ordering::Relaxed)?;
        let rsp_prod: u32 = mem.load(field(base, offsets::RSP_PROD), Ordering::Relaxed)?;
        if req_prod.wrapping_sub(rsp_prod) > size {
            return Err(RingError::CorruptIndices {
                req_prod,
                rsp_prod,
                size,
            });
        }
        let ring = Self {
            region,
            size,
            consumed: rsp_prod,
            host_flags: 0,
            broken: false,
            budget: None,
            byte_budget: None,
            _types: PhantomData,
        };
        mem.store(
            ring.host_flags,
            ring.field(offsets::HOST_FLAGS),
            Ordering::Release,
        )?;
        mem.store(
            ring.consumed.wrapping_add(1),
            ring.field(offsets::REQ_EVENT),
            Ordering::Release,
        )?;
        Ok(ring)
    }

    /// Guest-physical address of the ring.
    pub fn gpa(&self) -> u64 {
        self.region.addr()
    }

    /// Bytes the ring occupies (header and all slots), from [`ring_bytes`].
    pub fn ring_bytes(&self) -> usize {
        self.region.len()
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The host's consumer index: requests consumed, which equals responses published.
    pub fn consumed(&self) -> u32 {
        self.consumed
    }

    /// Whether the ring was found corrupt and is no longer serviced.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Limits how many requests one [`poll`](Self::poll) handles (`None`: no limit, the
    /// default). A host thread serving several rings sets a budget so that one guest
    /// producing without pause cannot starve the others; it must then poll again while
    /// [`Batch::budget_exhausted`] is set.
    pub fn set_budget(&mut self, budget: Option<u64>) {
        self.budget = budget;
    }

    /// Limits the bytes one [`poll_metered`](Self::poll_metered) moves, as the handler
    /// reports them (`None`: no limit, the default). Checked after each request: the poll
    /// stops with [`Batch::budget_exhausted`] once the bytes reach the budget while requests
    /// are still available.
    pub fn set_byte_budget(&mut self, budget: Option<u64>) {
        self.byte_budget = budget;
    }

    /// Whether `batch` used up a budget.
    fn spent(&self, batch: &Batch) -> bool {
        self.budget.is_some_and(|b| batch.requests >= b)
            || self.byte_budget.is_some_and(|b| batch.bytes >= b)
    }

    /// Sets or clears [`HOST_POLLING`] in `host_flags`.
    ///
    /// While it is set, a conforming guest does not ring the doorbell. The store is followed
    /// by a full fence, so a [`poll`](Self::poll) after clearing the flag observes every
    /// request the guest published without notifying; a host thread that stops polling
    /// must therefore call `set_polling(false)` and then `poll` once more before it sleeps.
    pub fn set_polling<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        polling: bool,
    ) -> Result<(), RingError> {
        if polling {
            self.host_flags |= HOST_POLLING;
        } else {
            self.host_flags &= !HOST_POLLING;
        }
        mem.store(
            self.host_flags,
            self.field(offsets::HOST_FLAGS),
            Ordering::Release,
        )?;
        // Store-load barrier: orders the flag store before the next load of `req_prod`.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Writes the host's `host_flags` into the ring header again (after a restore rebuilt
    /// the consumer from its saved state over a header a re-registration rewrote).
    pub fn publish_host_flags<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), RingError> {
        mem.store(
            self.host_flags,
            self.field(offsets::HOST_FLAGS),
            Ordering::Release,
        )?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Services every available request: for each one, copies the request out of its slot
    /// once, calls `handler` with the copy and writes the result to the matching response
    /// slot; publishes `rsp_prod` after each run; when no request is left, re-arms
    /// `req_event = consumed + 1` and re-checks `req_prod` (see the module documentation
    /// for the ordering).
    ///
    /// `req_prod` is bounded against the private consumer index on every read: a value more
    /// than `size` ahead marks the ring [`BROKEN`] and returns [`RingError::Overrun`]
    /// (responses already published stay valid). A broken ring returns
    /// [`RingError::Broken`] without touching guest memory.
    pub fn poll<M, F>(&mut self, mem: &M, mut handler: F) -> Result<Batch, RingError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(Req) -> Rsp,
    {
        self.poll_metered(mem, |req| (handler(req), 0))
    }

    /// [`poll`](Self::poll) with a handler that also returns each request's cost in bytes,
    /// summed in [`Batch::bytes`] and held against the byte budget
    /// ([`set_byte_budget`](Self::set_byte_budget)).
    ///
    /// With a budget, the poll stops at the first check that finds it used up while
    /// requests are still available: the responses handled so far are published,
    /// `req_event` is left behind (the guest does not notify) and
    /// [`Batch::budget_exhausted`] tells the caller to poll again later. Requests are never
    /// lost or handled twice across such a split: the consumer index is private.
    pub fn poll_metered<M, F>(&mut self, mem: &M, mut handler: F) -> Result<Batch, RingError>
    where
        M: GuestMemory + ?Sized,
        F: FnMut(Req) -> (Rsp, u64),
    {
        if self.broken {
            return Err(RingError::Broken);
        }
        let mut batch = Batch::default();
        let start = self.consumed;
        // Acquire pairs with the guest's release fence before its `req_prod` store: the
        // slots of every request counted in `prod` are visible to the copies below.
        let mut prod = self.load_req_prod(mem)?;
        loop {
            let available = prod.wrapping_sub(self.consumed);
            if available > self.size {
                return Err(self.mark_broken(mem, prod));
            }
            if available == 0 {
                // Idle: ask to be notified at the next request, then close the race with a
                // guest that published after our last read but before it could see the new
                // `req_event`. The full fence orders the store before the re-read (the
                // guest does the mirror image: store `req_prod`, full fence, load
                // `req_event`), so one of the two sides sees the other's store.
                self.store_field(mem, offsets::REQ_EVENT, self.consumed.wrapping_add(1))?;
                fence(Ordering::SeqCst);
                prod = self.load_req_prod(mem)?;
                if prod == self.consumed {
                    batch.notify = self.rsp_notify(mem, start)?;
                    return Ok(batch);
                }
                continue;
            }
            if self.spent(&batch) {
                batch.budget_exhausted = true;
                batch.notify = self.rsp_notify(mem, start)?;
                return Ok(batch);
            }
            let mut todo = u64::from(available);
            if let Some(budget) = self.budget {
                // Not spent: at least one request is left.
                todo = todo.min(budget.saturating_sub(batch.requests));
            }
            let mut done = 0u64;
            while done < todo {
                let index = self.consumed;
                // One copy out of the ring: the handler validates and uses this copy, so a
                // guest rewriting the slot now cannot change what was checked.
                let req = self.read_request(mem, index)?;
                let (rsp, cost) = handler(req);
                self.write_response(mem, index, rsp)?;
                self.consumed = index.wrapping_add(1);
                done += 1;
                batch.bytes = batch.bytes.saturating_add(cost);
                if self.byte_budget.is_some_and(|b| batch.bytes >= b) {
                    break;
                }
            }
            // Release: the response slots written above are visible before the new
            // `rsp_prod` (the guest loads `rsp_prod` with acquire, then reads the slots).
            self.store_field(mem, offsets::RSP_PROD, self.consumed)?;
            batch.requests = batch.requests.saturating_add(done);
            batch.batches = batch.batches.saturating_add(1);
            // More may have arrived while we worked; `req_event` is still behind, so the
            // guest is not notifying: look again before re-arming.
            prod = self.load_req_prod(mem)?;
        }
    }

    /// Whether the responses published since `start` (the consumer index before this
    /// poll) cross the guest's `rsp_event`: a full fence orders the `rsp_prod` stores before
    /// the load (the guest mirrors it: store `rsp_event`, full fence, load `rsp_prod`), so
    /// a guest that re-armed either sees the new responses or is notified.
    fn rsp_notify<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        start: u32,
    ) -> Result<bool, RingError> {
        if self.consumed == start {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        let r = mem.load(self.field(offsets::RSP_EVENT), Ordering::Acquire);
        let event: u32 = self.check_mem(mem, r)?;
        Ok(need_notify(self.consumed, start, event))
    }

    /// The guest address of the header field at `offset`.
    fn field(&self, offset: u64) -> GuestAddress {
        field(self.region.guest_addr(), offset)
    }

    fn load_req_prod<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u32, RingError> {
        let r = mem.load(self.field(offsets::REQ_PROD), Ordering::Acquire);
        self.check_mem(mem, r)
    }

    fn store_field<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        offset: u64,
        value: u32,
    ) -> Result<(), RingError> {
        let r = mem.store(value, self.field(offset), Ordering::Release);
        self.check_mem(mem, r)
    }

    fn read_request<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        index: u32,
    ) -> Result<Req, RingError> {
        let off = request_offset(self.size, index, size_of::<Req>());
        let r = mem.read_obj::<Wire<Req>>(self.slot(off)).map(|w| w.0);
        self.check_mem(mem, r)
    }

    fn write_response<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        index: u32,
        rsp: Rsp,
    ) -> Result<(), RingError> {
        let off = response_offset(self.size, index, size_of::<Req>(), size_of::<Rsp>());
        let r = mem.write_obj(Wire(rsp), self.slot(off));
        self.check_mem(mem, r)
    }

    /// The guest address of the slot at byte offset `off` of the ring.
    fn slot(&self, off: usize) -> GuestAddress {
        // `off` is a slot offset for a slot index masked by `size - 1`, so the slot lies
        // inside `ring_bytes`, i.e. inside `region`, whose end does not wrap.
        GuestAddress(self.region.addr().wrapping_add(off as u64))
    }

    /// Passes `r` through, marking the ring broken if a memory access failed.
    fn check_mem<M: GuestMemory + ?Sized, T>(
        &mut self,
        mem: &M,
        r: Result<T, GuestMemoryError>,
    ) -> Result<T, RingError> {
        r.map_err(|e| {
            self.set_broken(mem);
            RingError::Memory(e)
        })
    }

    fn mark_broken<M: GuestMemory + ?Sized>(&mut self, mem: &M, req_prod: u32) -> RingError {
        self.set_broken(mem);
        RingError::Overrun {
            req_prod,
            consumed: self.consumed,
            size: self.size,
        }
    }

    fn set_broken<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        self.broken = true;
        self.host_flags |= BROKEN;
        // Best effort: if even this store fails, the ring is unreachable anyway and the
        // host-side `broken` flag already stops all further servicing.
        let _ = mem.store(
            self.host_flags,
            self.field(offsets::HOST_FLAGS),
            Ordering::Release,
        );
    }
}

/// The guest address of the header field at `offset` of a ring at `base`.
fn field(base: GuestAddress, offset: u64) -> GuestAddress {
    // Header field offsets are < HEADER_SIZE and the region (at least HEADER_SIZE bytes
    // long) was checked not to wrap.
    GuestAddress(base.0.wrapping_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::GuestProducer;
    use pvkit_abi::console::{ConsoleRequest, ConsoleResponse};
    use pvkit_abi::ring::{need_notify, RingHeader};
    use vm_memory::GuestMemoryMmap;

    type Ring = RingConsumer<ConsoleRequest, ConsoleResponse>;
    type Producer = GuestProducer<ConsoleRequest, ConsoleResponse>;

    const RAM: usize = 1 << 20;
    const GPA: u64 = 0x1_0000;
    const LEN: u64 = 0x1000;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    fn req(i: u32) -> ConsoleRequest {
        ConsoleRequest {
            addr: u64::from(i) * 16,
            len: i,
            id: i,
        }
    }

    /// Echoes the request id, `written` = `len`.
    fn echo(r: ConsoleRequest) -> ConsoleResponse {
        ConsoleResponse {
            status: 0,
            id: r.id,
            written: r.len,
        }
    }

    fn header(m: &GuestMemoryMmap<()>) -> RingHeader {
        m.read_obj::<Wire<RingHeader>>(GuestAddress(GPA)).unwrap().0
    }

    fn setup(size: u32, start: u32) -> (GuestMemoryMmap<()>, Producer, Ring) {
        let m = mem();
        let p = Producer::init(&m, GPA, size, start).unwrap();
        let r = Ring::new(&m, GPA, LEN).unwrap();
        (m, p, r)
    }

    #[test]
    fn registration_arms_req_event_and_clears_flags() {
        let m = mem();
        Producer::init(&m, GPA, 8, 100).unwrap();
        m.store(
            BROKEN | HOST_POLLING,
            GuestAddress(GPA + offsets::HOST_FLAGS),
            Ordering::Relaxed,
        )
        .unwrap();
        let r = Ring::new(&m, GPA, LEN).unwrap();
        assert_eq!(r.consumed(), 100);
        assert_eq!(r.size(), 8);
        assert_eq!(r.ring_bytes(), 64 + 8 * 32);
        let h = header(&m);
        assert_eq!(h.req_event, 101);
        assert_eq!(h.host_flags, 0);
    }

    #[test]
    fn round_trip_and_batching() {
        let (m, mut p, mut r) = setup(8, 0);
        for i in 0..5 {
            p.push(&m, req(i)).unwrap();
        }
        assert!(
            p.publish(&m).unwrap(),
            "first request of an idle ring notifies"
        );
        let mut seen = Vec::new();
        let b = r
            .poll(&m, |q| {
                seen.push(q.id);
                echo(q)
            })
            .unwrap();
        assert_eq!(b.requests, 5);
        assert_eq!(b.batches, 1, "k requests, one poll, one batch");
        assert!(!b.budget_exhausted);
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        let rsps = p.take_responses(&m).unwrap();
        assert_eq!(rsps.iter().map(|x| x.id).collect::<Vec<_>>(), seen);
        assert_eq!(header(&m).rsp_prod, 5);
        assert_eq!(header(&m).req_event, 6);
        // An idle poll handles nothing and publishes nothing.
        let b = r.poll(&m, echo).unwrap();
        assert_eq!(b, Batch::default());
    }

    #[test]
    fn indices_wrap_around_u32() {
        let start = u32::MAX - 5;
        let (m, mut p, mut r) = setup(4, start);
        let mut next = 0u32;
        let mut got = Vec::new();
        for _ in 0..6 {
            for _ in 0..3 {
                p.push(&m, req(next)).unwrap();
                next += 1;
            }
            p.publish(&m).unwrap();
            let b = r.poll(&m, echo).unwrap();
            assert_eq!(b.requests, 3);
            got.extend(p.take_responses(&m).unwrap().into_iter().map(|x| x.id));
        }
        assert_eq!(got, (0..18).collect::<Vec<_>>());
        assert_eq!(r.consumed(), start.wrapping_add(18));
        assert_eq!(header(&m).rsp_prod, start.wrapping_add(18));
        assert_eq!(header(&m).req_event, start.wrapping_add(19));
    }

    #[test]
    fn notification_is_suppressed_while_host_has_not_consumed() {
        let (m, mut p, mut r) = setup(8, u32::MAX - 1);
        p.push(&m, req(0)).unwrap();
        assert!(p.publish(&m).unwrap(), "idle host: notify");
        p.push(&m, req(1)).unwrap();
        assert!(
            !p.publish(&m).unwrap(),
            "already notified, host not done: no notify"
        );
        p.push(&m, req(2)).unwrap();
        assert!(!p.publish(&m).unwrap());
        assert_eq!(r.poll(&m, echo).unwrap().requests, 3);
        p.push(&m, req(3)).unwrap();
        assert!(p.publish(&m).unwrap(), "host idle again: notify");
    }

    #[test]
    fn polling_flag_suppresses_notification() {
        let (m, mut p, mut r) = setup(8, 0);
        r.set_polling(&m, true).unwrap();
        assert_eq!(header(&m).host_flags, HOST_POLLING);
        p.push(&m, req(0)).unwrap();
        assert!(!p.publish(&m).unwrap(), "host polls: never notify");
        r.set_polling(&m, false).unwrap();
        assert_eq!(header(&m).host_flags, 0);
        // The request published without a notification is found by the poll that must
        // follow set_polling(false).
        assert_eq!(r.poll(&m, echo).unwrap().requests, 1);
    }

    #[test]
    fn requests_published_during_a_batch_are_handled_in_the_same_poll() {
        let (m, mut p, mut r) = setup(8, 0);
        p.push(&m, req(0)).unwrap();
        p.publish(&m).unwrap();
        let mut pushed = false;
        let b = r
            .poll(&m, |q| {
                if !pushed {
                    pushed = true;
                    // The guest publishes more while the host is busy: no notification.
                    p.push(&m, req(1)).unwrap();
                    p.push(&m, req(2)).unwrap();
                    assert!(!p.publish(&m).unwrap());
                }
                echo(q)
            })
            .unwrap();
        assert_eq!(b.requests, 3);
        assert_eq!(b.batches, 2);
        assert_eq!(header(&m).req_event, 4);
    }

    #[test]
    fn budget_limits_one_poll() {
        let (m, mut p, mut r) = setup(8, 0);
        r.set_budget(Some(3));
        for i in 0..5 {
            p.push(&m, req(i)).unwrap();
        }
        p.publish(&m).unwrap();
        let b = r.poll(&m, echo).unwrap();
        assert_eq!((b.requests, b.budget_exhausted), (3, true));
        assert_eq!(header(&m).rsp_prod, 3);
        let b = r.poll(&m, echo).unwrap();
        assert_eq!((b.requests, b.budget_exhausted), (2, false));
    }

    #[test]
    fn byte_budget_stops_after_the_request_that_reaches_it() {
        let (m, mut p, mut r) = setup(8, 0);
        r.set_byte_budget(Some(10));
        for i in 0..5 {
            p.push(&m, req(i)).unwrap();
        }
        p.publish(&m).unwrap();
        let metered = |q: ConsoleRequest| (echo(q), 4);
        let b = r.poll_metered(&m, metered).unwrap();
        assert_eq!((b.requests, b.bytes, b.budget_exhausted), (3, 12, true));
        assert_eq!(header(&m).rsp_prod, 3, "the handled part is published");
        assert_eq!(
            header(&m).req_event,
            1,
            "not re-armed: the caller polls again"
        );
        let b = r.poll_metered(&m, metered).unwrap();
        assert_eq!((b.requests, b.bytes, b.budget_exhausted), (2, 8, false));
        assert_eq!(header(&m).req_event, 6);
        let ids: Vec<_> = p.take_responses(&m).unwrap().iter().map(|x| x.id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4], "each request once, in order");
    }

    #[test]
    fn a_budget_used_up_with_nothing_left_is_not_exhausted() {
        let (m, mut p, mut r) = setup(8, 0);
        r.set_budget(Some(4));
        r.set_byte_budget(Some(4));
        for i in 0..4 {
            p.push(&m, req(i)).unwrap();
        }
        p.publish(&m).unwrap();
        let b = r.poll_metered(&m, |q| (echo(q), 1)).unwrap();
        assert_eq!((b.requests, b.bytes, b.budget_exhausted), (4, 4, false));
        assert_eq!(header(&m).req_event, 5, "idle: re-armed");
    }

    /// A guest that publishes one more request for every one handled (as a ring whose
    /// reads reload its own slots does) keeps an unbudgeted poll going for ever; the
    /// service budgets end each poll with the work still pending.
    #[test]
    fn a_self_refilling_ring_is_served_in_bounded_rounds() {
        let (m, mut p, mut r) = setup(8, 0);
        r.set_budget(Some(SERVICE_REQUESTS));
        r.set_byte_budget(Some(SERVICE_BYTES));
        p.push(&m, req(0)).unwrap();
        p.publish(&m).unwrap();
        let mut next = 1u32;
        let mut refill = |q: ConsoleRequest, cost: u64| {
            p.take_responses(&m).unwrap();
            p.push(&m, req(next)).unwrap();
            p.publish(&m).unwrap();
            next += 1;
            (echo(q), cost)
        };
        let b = r.poll_metered(&m, |q| refill(q, 0)).unwrap();
        assert_eq!((b.requests, b.budget_exhausted), (SERVICE_REQUESTS, true));
        // 1 MiB requests: the byte budget ends the round first.
        let b = r.poll_metered(&m, |q| refill(q, 1 << 20)).unwrap();
        assert_eq!((b.requests, b.budget_exhausted), (256, true));
        assert_eq!(b.bytes, SERVICE_BYTES);
        assert_eq!(r.consumed(), SERVICE_REQUESTS as u32 + 256);
        assert!(!r.is_broken());
    }

    #[test]
    fn corrupt_req_prod_breaks_the_ring() {
        let (m, mut p, mut r) = setup(8, 0);
        p.push(&m, req(0)).unwrap();
        p.publish(&m).unwrap();
        assert_eq!(r.poll(&m, echo).unwrap().requests, 1);
        // The guest claims 9 new requests on an 8-slot ring.
        m.store(
            10u32,
            GuestAddress(GPA + offsets::REQ_PROD),
            Ordering::Relaxed,
        )
        .unwrap();
        let mut calls = 0;
        let e = r
            .poll(&m, |q| {
                calls += 1;
                echo(q)
            })
            .unwrap_err();
        assert!(matches!(
            e,
            RingError::Overrun {
                req_prod: 10,
                consumed: 1,
                size: 8
            }
        ));
        assert_eq!(e.status(), Status::EIO);
        assert_eq!(calls, 0, "nothing is handled from a corrupt ring");
        assert!(r.is_broken());
        assert_eq!(header(&m).host_flags & BROKEN, BROKEN);
        assert_eq!(header(&m).rsp_prod, 1);
        // Going backwards is as corrupt as going too far.
        m.store(
            1u32,
            GuestAddress(GPA + offsets::REQ_PROD),
            Ordering::Relaxed,
        )
        .unwrap();
        assert!(matches!(r.poll(&m, echo), Err(RingError::Broken)));
        // Broken sticks, also through set_polling.
        r.set_polling(&m, true).unwrap();
        assert_eq!(header(&m).host_flags, BROKEN | HOST_POLLING);
    }

    #[test]
    fn backwards_req_prod_breaks_the_ring() {
        let (m, _p, mut r) = setup(8, 50);
        m.store(
            49u32,
            GuestAddress(GPA + offsets::REQ_PROD),
            Ordering::Relaxed,
        )
        .unwrap();
        assert!(matches!(r.poll(&m, echo), Err(RingError::Overrun { .. })));
    }

    #[test]
    fn registration_errors() {
        let m = mem();
        for size in [0u32, 3, 6, 100, 512, u32::MAX] {
            Producer::init_raw_size(&m, GPA, size, 0).unwrap();
            let e = Ring::new(&m, GPA, LEN).unwrap_err();
            assert!(
                matches!(e, RingError::InvalidSize { size: s } if s == size),
                "{size}"
            );
            assert_eq!(e.status(), Status::EINVAL);
        }
        Producer::init(&m, GPA, 8, 0).unwrap();
        assert!(matches!(
            Ring::new(&m, GPA + 8, LEN),
            Err(RingError::Misaligned { .. })
        ));
        assert!(matches!(
            Ring::new(&m, GPA, 32),
            Err(RingError::TooSmall { len: 32, need: 64 })
        ));
        assert!(matches!(
            Ring::new(&m, GPA, 64 + 8 * 32 - 1),
            Err(RingError::TooSmall { .. })
        ));
        assert!(Ring::new(&m, GPA, 64 + 8 * 32).is_ok());
        // req_prod too far ahead of rsp_prod at registration.
        m.store(
            9u32,
            GuestAddress(GPA + offsets::REQ_PROD),
            Ordering::Relaxed,
        )
        .unwrap();
        assert!(matches!(
            Ring::new(&m, GPA, LEN),
            Err(RingError::CorruptIndices { .. })
        ));
    }

    #[test]
    fn ring_crossing_the_end_of_ram_is_efault() {
        let m = mem();
        let gpa = RAM as u64 - 0x1000;
        // A header that itself fits, describing a ring that does not fit in the last page.
        Producer::init_raw_size(&m, gpa, 256, 0).unwrap();
        let e = Ring::new(&m, gpa, 64 + 256 * 32).unwrap_err();
        assert!(matches!(e, RingError::Range(RangeError::NotInRam { .. })));
        assert_eq!(e.status(), Status::EFAULT);
        // Registered length fits in RAM but the ring does not fit in it.
        assert!(matches!(
            Ring::new(&m, gpa, 0x1000),
            Err(RingError::TooSmall { .. })
        ));
        // Entirely outside RAM, and wrapping.
        assert!(matches!(
            Ring::new(&m, 0x10_0000_0000, 0x1000),
            Err(RingError::Range(_))
        ));
        assert!(matches!(
            Ring::new(&m, u64::MAX - 0xfff, 0x2000),
            Err(RingError::Range(RangeError::Overflow { .. }))
        ));
    }

    /// Stores the guest's `rsp_event`.
    fn arm(m: &GuestMemoryMmap<()>, event: u32) {
        m.store(
            event,
            GuestAddress(GPA + offsets::RSP_EVENT),
            Ordering::SeqCst,
        )
        .unwrap();
    }

    #[test]
    fn responses_notify_once_per_batch_that_crosses_rsp_event() {
        // Start near the u32 wrap: the rule is wrap-around safe.
        let start = u32::MAX - 2;
        let (m, mut p, mut r) = setup(8, start);
        arm(&m, start.wrapping_add(1));
        for i in 0..4 {
            p.push(&m, req(i)).unwrap();
        }
        p.publish(&m).unwrap();
        // Four responses cross rsp_event = start + 1: one notification for the batch.
        let b = r.poll(&m, echo).unwrap();
        assert_eq!((b.requests, b.notify), (4, true));
        // The guest did not re-arm: the next batch is silent.
        p.take_responses(&m).unwrap();
        p.push(&m, req(5)).unwrap();
        p.publish(&m).unwrap();
        assert!(!r.poll(&m, echo).unwrap().notify);
        // Re-armed at rsp_cons + 1: the next response notifies.
        arm(&m, start.wrapping_add(6));
        p.push(&m, req(6)).unwrap();
        p.publish(&m).unwrap();
        assert!(r.poll(&m, echo).unwrap().notify);
        // Armed further ahead than this batch reaches: silent. No requests: silent.
        arm(&m, start.wrapping_add(9));
        p.push(&m, req(7)).unwrap();
        p.publish(&m).unwrap();
        assert!(!r.poll(&m, echo).unwrap().notify);
        assert!(!r.poll(&m, echo).unwrap().notify);
    }

    #[test]
    fn a_slot_rewritten_after_the_copy_does_not_change_the_request() {
        let (m, mut p, mut r) = setup(2, 0);
        p.push(&m, req(7)).unwrap();
        p.publish(&m).unwrap();
        let slot = GuestAddress(GPA + HEADER_SIZE as u64);
        r.poll(&m, |q| {
            // A hostile guest rewrites the slot after the host copied it.
            m.write_obj(Wire(req(99)), slot).unwrap();
            assert_eq!(q, req(7));
            echo(q)
        })
        .unwrap();
    }

    #[test]
    fn need_notify_matches_the_abi_rule_after_registration() {
        let (m, _p, _r) = setup(8, 41);
        let h = header(&m);
        assert!(need_notify(42, 41, h.req_event));
        assert!(!need_notify(41, 40, h.req_event));
    }

    /// A guest thread and a host thread run the full protocol concurrently; the host sleeps
    /// until notified. A lost notification would hang this test (bounded by a timeout).
    #[test]
    fn concurrent_producer_and_consumer_lose_no_notification() {
        use std::sync::mpsc;
        use std::sync::Arc;
        use std::time::Duration;

        const TOTAL: u32 = 20_000;
        let m = Arc::new(mem());
        let mut p = Producer::init(&*m, GPA, 16, u32::MAX - 100).unwrap();
        let mut r = Ring::new(&*m, GPA, LEN).unwrap();
        let (kick_tx, kick_rx) = mpsc::channel::<()>();

        let host_mem = Arc::clone(&m);
        let host = std::thread::spawn(move || {
            let mut handled = 0u32;
            let mut next = 0u32;
            while handled < TOTAL {
                kick_rx
                    .recv_timeout(Duration::from_secs(20))
                    .expect("lost notification: host never woken");
                let b = r
                    .poll(&*host_mem, |q| {
                        assert_eq!(q.id, next, "requests in order, each once");
                        next += 1;
                        echo(q)
                    })
                    .unwrap();
                handled += b.requests as u32;
            }
            (handled, r.consumed())
        });

        let mut sent = 0u32;
        let mut received = 0u32;
        let mut notifies = 0u32;
        while received < TOTAL {
            let mut pushed = 0;
            while sent < TOTAL && pushed < 5 && p.push(&*m, req(sent)).is_ok() {
                sent += 1;
                pushed += 1;
            }
            if pushed > 0 && p.publish(&*m).unwrap() {
                notifies += 1;
                kick_tx.send(()).unwrap();
            }
            for rsp in p.take_responses(&*m).unwrap() {
                assert_eq!(rsp.id, received);
                received += 1;
            }
            std::thread::yield_now();
        }
        let (handled, consumed) = host.join().unwrap();
        assert_eq!(handled, TOTAL);
        assert_eq!(consumed, (u32::MAX - 100).wrapping_add(TOTAL));
        assert!(notifies <= TOTAL);
    }
}
