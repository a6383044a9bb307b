//! The guest side of a pvkit request/response ring ([`pvkit_abi::ring`]): the producer of
//! requests and the consumer of responses, generic over the device's request and response
//! types.
//!
//! Like Xen's `FRONT_RING` (`io/ring.h`): the shared header holds the published indices;
//! the producer keeps its private ones (`req_prod_pvt`, `rsp_cons`) in this structure, so
//! the host can never make the guest misindex its own slots. The cycle of one batch:
//!
//! 1. [`Ring::push`] (or [`Ring::push_with`]) writes up to [`Ring::free`] requests into
//!    their slots; nothing is visible to the host yet;
//! 2. [`Ring::publish`] stores `req_prod` (release), executes a full fence, reads
//!    `req_event` and `host_flags`, and says whether the host wants a notification
//!    ([`pvkit_abi::ring::need_notify`], and never while [`HOST_POLLING`] is set);
//! 3. if it said so, [`kick`] the ring's doorbell: one `out` to
//!    [`pvkit_abi::ports::DOORBELL`] with the queue id as the value;
//! 4. [`Ring::poll_responses`] (acquire load of `rsp_prod`) hands each new response to a
//!    closure, or [`Ring::wait_idle`] spins until every request has its response.
//!
//! Shared fields are only accessed as atomics; slots are written before the release
//! store that publishes them and read after the acquire load that published them.
//!
//! # Batches and templates
//!
//! A driver that queues many requests of one shape fills them faster in place:
//! [`Ring::fill_free`] writes a *template* into every free slot once (op, lengths, an id
//! per slot), then per batch [`Ring::slots_mut`] lends the next free slots as (at most
//! two) contiguous slices in which only the fields that change are stored (a sector and a
//! buffer address), and [`Ring::commit`] pushes them all with one index update. Nothing
//! is computed per request: no index masking, no bounds check, no full-request copy.
//!
//! # Costs
//!
//! Publishing is a store, a locked `or` (the full fence; `mfence` works too but is not
//! guaranteed to be emulated everywhere), two loads and the index arithmetic: about 15
//! instructions. A doorbell is one `out`: one exit to the VMM (transport `Doorbell`), an
//! in-kernel ioeventfd signal (`DoorbellEventfd`), or nothing (`HostPoll`). Taking
//! responses ([`Ring::poll_responses`]) is one acquire load per call, then per response
//! only the closure and a pointer increment (slots are walked in at most two contiguous
//! runs). Where ring-0 code is interpreted (kvm_pvm) every instruction here costs about a
//! microsecond; in ring 3 the same code runs natively.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use pvkit_abi::ring::{
    is_valid_size, need_notify, offsets, request_offset, response_offset, ring_bytes, BROKEN,
    HOST_POLLING,
};

/// Alignment the ABI requires of a ring region (its GPA must be 4 KiB aligned).
pub const RING_ALIGN: usize = 4096;

/// A request or response type that may live in ring memory.
///
/// # Safety
///
/// The type must be `#[repr(C)]` plain old data: every bit pattern is a valid value (only
/// integer fields, no padding that matters, no references), because ring memory holds
/// whatever the host or an earlier use left there.
pub unsafe trait RingItem: Copy {}

// SAFETY: all four are `#[repr(C)]` structures of integer fields (see `pvkit_abi`).
unsafe impl RingItem for pvkit_abi::block::BlockRequest {}
// SAFETY: as above.
unsafe impl RingItem for pvkit_abi::block::BlockResponse {}
// SAFETY: as above.
unsafe impl RingItem for pvkit_abi::console::ConsoleRequest {}
// SAFETY: as above.
unsafe impl RingItem for pvkit_abi::console::ConsoleResponse {}
// SAFETY: as above.
unsafe impl RingItem for pvkit_abi::net::NetTxRequest {}
// SAFETY: as above.
unsafe impl RingItem for pvkit_abi::net::NetTxResponse {}
// SAFETY: as above.
unsafe impl RingItem for pvkit_abi::net::NetRxRequest {}
// SAFETY: as above.
unsafe impl RingItem for pvkit_abi::net::NetRxResponse {}

/// Every slot holds a request that has no consumed response yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Why a request could not be queued on a device ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Every slot is in use.
    Full,
    /// The request is invalid (the status the host would have answered: `EINVAL`,
    /// `E2BIG`); nothing was queued.
    Invalid(pvkit_abi::Status),
}

impl From<Full> for QueueError {
    fn from(Full: Full) -> Self {
        QueueError::Full
    }
}

/// Why a ring could not be set up over a piece of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The size is not a power of two in `1..=MAX_RING_SIZE`.
    InvalidSize(u32),
    /// The memory is shorter than the ring needs.
    TooSmall {
        /// Bytes the ring needs.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The memory does not start on a 4 KiB boundary.
    Misaligned(usize),
}

/// Why [`Ring::wait_idle`] stopped before every response arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The host marked the ring [`BROKEN`].
    Broken,
    /// The deadline passed; `outstanding` requests have no response.
    Timeout {
        /// Requests still without a response.
        outstanding: u32,
    },
}

/// The guest end of one ring: producer of `Req`, consumer of `Rsp`.
///
/// Not `Sync`: one CPU drives a ring (as with Xen's front rings, callers serialize).
#[derive(Debug)]
pub struct Ring<Req: RingItem, Rsp: RingItem> {
    base: NonNull<u8>,
    size: u32,
    /// Next request index to fill.
    req_prod_pvt: u32,
    /// `req_prod` as last published.
    published: u32,
    /// Next response index to consume.
    rsp_cons: u32,
    _items: PhantomData<(*mut Req, *const Rsp)>,
}

// SAFETY: the ring owns its memory exclusively (with the host) per `Ring::init`'s contract;
// moving the handle to another CPU moves that ownership. It is not `Sync`.
unsafe impl<Req: RingItem, Rsp: RingItem> Send for Ring<Req, Rsp> {}

impl<Req: RingItem, Rsp: RingItem> Ring<Req, Rsp> {
    /// Bytes a ring of `size` slots occupies, if `size` is valid.
    pub const fn bytes(size: u32) -> Option<usize> {
        ring_bytes(size, size_of::<Req>(), size_of::<Rsp>())
    }

    /// Sets up a ring of `size` slots at `mem` and initializes its header: `size`, all
    /// indices 0, `req_event = rsp_event = 1` (as Xen's `SHARED_RING_INIT`: the first
    /// request is notified even before the host writes `req_event` at registration),
    /// `host_flags` and the reserved words 0. Slots are left as they are (never zeroed:
    /// a request slot is fully written by its producer, a response slot by the host).
    /// Register the ring with the host afterwards.
    ///
    /// # Safety
    ///
    /// `mem` must be valid for reads and writes of `len` bytes for as long as this ring or
    /// the host's registration of it lives, and used by nothing but this ring and the host
    /// (no Rust reference to it may be used meanwhile).
    pub unsafe fn init(mem: *mut u8, len: usize, size: u32) -> Result<Self, RingError> {
        // SAFETY: forwarded to the caller's contract.
        unsafe { Self::init_at(mem, len, size, 0) }
    }

    /// [`Ring::init`] with every index starting at `start` (the ABI allows any start; the
    /// tests use it to cross the `u32` wrap-around).
    ///
    /// # Safety
    ///
    /// As [`Ring::init`].
    pub(crate) unsafe fn init_at(
        mem: *mut u8,
        len: usize,
        size: u32,
        start: u32,
    ) -> Result<Self, RingError> {
        if !is_valid_size(size) {
            return Err(RingError::InvalidSize(size));
        }
        let need = Self::bytes(size).ok_or(RingError::InvalidSize(size))?;
        if len < need {
            return Err(RingError::TooSmall { need, have: len });
        }
        if !(mem as usize).is_multiple_of(RING_ALIGN) {
            return Err(RingError::Misaligned(mem as usize));
        }
        let base = NonNull::new(mem).ok_or(RingError::Misaligned(0))?;
        let ring = Ring {
            base,
            size,
            req_prod_pvt: start,
            published: start,
            rsp_cons: start,
            _items: PhantomData,
        };
        ring.field(offsets::REQ_PROD)
            .store(start, Ordering::Relaxed);
        ring.field(offsets::REQ_EVENT)
            .store(start.wrapping_add(1), Ordering::Relaxed);
        ring.field(offsets::RSP_PROD)
            .store(start, Ordering::Relaxed);
        ring.field(offsets::RSP_EVENT)
            .store(start.wrapping_add(1), Ordering::Relaxed);
        ring.field(offsets::HOST_FLAGS).store(0, Ordering::Relaxed);
        for word in 0..10 {
            ring.field(24 + 4 * word).store(0, Ordering::Relaxed);
        }
        // `size` last, with release: the header is complete before anyone trusts it.
        ring.field(offsets::SIZE).store(size, Ordering::Release);
        Ok(ring)
    }

    /// A ring over a `'static` buffer (see [`Ring::init`]; the buffer is never used as a
    /// Rust reference again).
    pub fn new(mem: &'static mut [u8], size: u32) -> Result<Self, RingError> {
        let len = mem.len();
        // SAFETY: the buffer is 'static and exclusively borrowed for ever, so nothing else
        // uses it; it is valid for `len` bytes.
        unsafe { Self::init(mem.as_mut_ptr(), len, size) }
    }

    /// The start of the ring memory (its GPA under the identity map; translate it with
    /// [`crate::addr::virt_to_phys`] before registering).
    pub fn as_ptr(&self) -> *const u8 {
        self.base.as_ptr()
    }

    /// Bytes the ring occupies (the length to register).
    pub fn len(&self) -> usize {
        Self::bytes(self.size).unwrap_or(0)
    }

    /// Never true: a ring has at least one slot (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Requests pushed (published or not) whose responses have not been consumed.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Requests pushed but not yet published.
    pub fn unpublished(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.published)
    }

    /// Slots free for [`Ring::push`].
    pub fn free(&self) -> u32 {
        self.size - self.outstanding()
    }

    /// The private producer index: the index the next pushed request gets.
    pub fn next_index(&self) -> u32 {
        self.req_prod_pvt
    }

    /// `host_flags` (relaxed load).
    pub fn host_flags(&self) -> u32 {
        self.field(offsets::HOST_FLAGS).load(Ordering::Relaxed)
    }

    /// Whether the host marked the ring [`BROKEN`].
    pub fn is_broken(&self) -> bool {
        self.host_flags() & BROKEN != 0
    }

    /// Writes `req` into the next slot (not yet visible to the host: see
    /// [`Ring::publish`]).
    #[inline]
    pub fn push(&mut self, req: Req) -> Result<(), Full> {
        self.push_with(|slot| *slot = req)
    }

    /// Lets `fill` write the next request in place, in its slot. The slot holds whatever
    /// was there before (an old request or, at first, what the memory held): `fill` must
    /// write every field the host reads. Writing in place saves copying a whole request,
    /// which matters where ring-0 code is interpreted.
    #[inline]
    pub fn push_with(&mut self, fill: impl FnOnce(&mut Req)) -> Result<(), Full> {
        if self.outstanding() >= self.size {
            return Err(Full);
        }
        let off = request_offset(self.size, self.req_prod_pvt, size_of::<Req>());
        // SAFETY: `off` is a request slot inside the ring memory (`init` checked the
        // length), aligned for `Req` (the base is 4 KiB aligned, the header is 64 bytes and
        // slots are `size_of::<Req>()` apart, a multiple of its alignment). The slot is
        // not published (index >= published) and not in use by the host (its previous
        // occupant's response was consumed), so nobody else accesses it; `Req: RingItem`
        // makes any old content a valid value.
        let slot = unsafe { &mut *self.base.as_ptr().add(off).cast::<Req>() };
        fill(slot);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes every pushed request and decides whether the host must be notified:
    /// stores `req_prod` (release), full fence, reads `req_event` and `host_flags`.
    /// Returns `true` if the doorbell should be rung: the host asked to hear about an index
    /// in `(old, new]` and is not polling. Returns `false` when nothing was pushed.
    #[inline]
    pub fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        self.field(offsets::REQ_PROD).store(new, Ordering::Release);
        full_fence();
        let event = self.field(offsets::REQ_EVENT).load(Ordering::Relaxed);
        let flags = self.field(offsets::HOST_FLAGS).load(Ordering::Relaxed);
        self.published = new;
        flags & HOST_POLLING == 0 && need_notify(new, old, event)
    }

    /// Hands each response published since the last call to `f`, in order; returns how
    /// many. Each response is read once, after an acquire load of `rsp_prod`. The host is
    /// not trusted to stay within bounds: responses are consumed only up to the last
    /// published request.
    #[inline]
    pub fn poll_responses(&mut self, mut f: impl FnMut(&Rsp)) -> u32 {
        let rsp_prod = self.field(offsets::RSP_PROD).load(Ordering::Acquire);
        let available = rsp_prod.wrapping_sub(self.rsp_cons);
        let n = available.min(self.published.wrapping_sub(self.rsp_cons));
        if n == 0 {
            return 0;
        }
        let first = self.rsp_cons & (self.size - 1);
        // The responses from slot `first` on, then (if they wrap) from slot 0 on.
        let run = n.min(self.size - first);
        let slots = self.response_slot(0);
        for (start, len) in [(first, run), (0, n - run)] {
            // SAFETY: `start + len <= size` (`run <= size - first`, and `n - run <= first`
            // when the responses wrap, as `n <= size`), so every slot read is a response
            // slot inside the ring memory, aligned for `Rsp` (as in `push_with`). The acquire
            // load above made the host's writes of them visible; the host writes a response
            // slot only before publishing it, and `Rsp: RingItem` makes any content a valid
            // value. Each is copied out with `read`: no reference to shared memory is made.
            unsafe {
                let p = slots.add(start as usize);
                for i in 0..len as usize {
                    f(&p.add(i).read());
                }
            }
        }
        self.rsp_cons = self.rsp_cons.wrapping_add(n);
        n
    }

    /// Asks for a notification (the completion interrupt of a queue bound with
    /// [`crate::hypercall::queue_interrupt`]) at the next response: stores
    /// `rsp_event = rsp_cons + 1`, full fence, re-reads `rsp_prod`. Returns whether responses
    /// are already waiting (they may or may not have raised the interrupt): consume them
    /// before sleeping. Until re-armed, later responses raise nothing (one interrupt per
    /// batch).
    #[inline]
    pub fn arm_responses(&mut self) -> bool {
        self.field(offsets::RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        full_fence();
        let rsp_prod = self.field(offsets::RSP_PROD).load(Ordering::Acquire);
        rsp_prod != self.rsp_cons
    }

    /// Writes `fill(slot number, slot)` into every free request slot (those [`Ring::push`]
    /// or [`Ring::slots_mut`] would hand out next): the set-up of request templates, so
    /// that a batch only stores what changes. Slots in use (pushed, their response not yet
    /// consumed) are left alone.
    pub fn fill_free(&mut self, mut fill: impl FnMut(u32, &mut Req)) {
        let (next, mask) = (self.req_prod_pvt, self.size - 1);
        let (a, b) = self.free_runs(self.free());
        for (i, req) in a.iter_mut().chain(b.iter_mut()).enumerate() {
            fill(next.wrapping_add(i as u32) & mask, req);
        }
    }

    /// The next `n` free request slots, in order, as two slices: the slots from the next
    /// one on, and (when the `n` slots wrap past the last slot) the rest from slot 0. Fill
    /// them in place, then [`Ring::commit`] them; until then the host does not see them.
    /// The slots hold what they held before (a template from [`Ring::fill_free`], an old
    /// request): write every field the host reads, or rely on the template. `Full` if
    /// fewer than `n` slots are free.
    #[inline]
    #[allow(clippy::type_complexity)]
    pub fn slots_mut(&mut self, n: u32) -> Result<(&mut [Req], &mut [Req]), Full> {
        if n > self.free() {
            return Err(Full);
        }
        Ok(self.free_runs(n))
    }

    /// Pushes the next `n` slots (filled through [`Ring::slots_mut`] or by a template):
    /// one index update for the whole batch. `Full` (nothing pushed) if fewer than `n` are
    /// free.
    #[inline]
    pub fn commit(&mut self, n: u32) -> Result<(), Full> {
        if n > self.free() {
            return Err(Full);
        }
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(n);
        Ok(())
    }

    /// The next `n` (≤ [`Ring::free`]) request slots as two slices (see [`Ring::slots_mut`]).
    #[inline]
    fn free_runs(&mut self, n: u32) -> (&mut [Req], &mut [Req]) {
        debug_assert!(n <= self.free());
        let first = self.req_prod_pvt & (self.size - 1);
        let run = n.min(self.size - first);
        let slots = self
            .base
            .as_ptr()
            .wrapping_add(request_offset(self.size, 0, size_of::<Req>()));
        let slots = slots.cast::<Req>();
        // SAFETY: slots `first .. first + run` and `0 .. n - run` are request slots inside
        // the ring memory (`first + run <= size`; `n - run <= first` when they wrap, as
        // `n <= free <= size`), aligned for `Req` (see `push_with`), and disjoint. They are
        // free: not published (index >= published) and their previous requests' responses
        // were consumed, so the host no longer reads them and nothing else uses them while
        // `self` is mutably borrowed; `Req: RingItem` makes any content a valid value.
        unsafe {
            (
                core::slice::from_raw_parts_mut(slots.add(first as usize), run as usize),
                core::slice::from_raw_parts_mut(slots, (n - run) as usize),
            )
        }
    }

    /// The response slot `slot` (`< size`).
    #[inline]
    fn response_slot(&self, slot: u32) -> *const Rsp {
        let off = response_offset(self.size, slot, size_of::<Req>(), size_of::<Rsp>());
        self.base.as_ptr().wrapping_add(off).cast::<Rsp>()
    }

    /// Spins until every published request has its response, handing each to `f`. Stops
    /// with [`WaitError::Broken`] if the host breaks the ring, or [`WaitError::Timeout`]
    /// once `timeout` TSC cycles have passed (the TSC is read every 256 empty polls, so the
    /// fast path costs no `rdtsc`). Unpublished requests are not waited for.
    #[cfg(target_arch = "x86_64")]
    pub fn wait_idle(&mut self, timeout: u64, mut f: impl FnMut(&Rsp)) -> Result<(), WaitError> {
        let mut start = None;
        let mut spins = 0u32;
        while self.published != self.rsp_cons {
            if self.poll_responses(&mut f) != 0 {
                continue;
            }
            if self.is_broken() {
                return Err(WaitError::Broken);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                let now = crate::tsc::rdtsc();
                let t0 = *start.get_or_insert(now);
                if now.wrapping_sub(t0) > timeout {
                    return Err(WaitError::Timeout {
                        outstanding: self.published.wrapping_sub(self.rsp_cons),
                    });
                }
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    fn field(&self, offset: u64) -> &AtomicU32 {
        // SAFETY: every offset passed here is a 4-byte aligned header field inside the
        // ring memory (64-byte header at a 4 KiB aligned base), which lives as long as
        // `self` (contract of `init`); the host accesses it concurrently, hence atomics.
        unsafe { &*self.base.as_ptr().add(offset as usize).cast::<AtomicU32>() }
    }
}

/// A full memory fence: a locked `or` of 0 into the top of the stack, as Linux's
/// `smp_mb()` on x86_64. Orders the `req_prod` store before the `req_event` load (a
/// store–load order plain x86 stores and loads do not give).
#[inline(always)]
pub fn full_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: atomically ORs 0 into the qword at RSP, which is this function's own valid,
    // in-use stack slot: its value does not change. No `nomem`: a compiler barrier too.
    unsafe {
        core::arch::asm!("lock or dword ptr [rsp], 0", options(preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Rings the doorbell of queue `id`: one 32-bit `out` of its id
/// ([`pvkit_abi::ring::QueueId::to_u32`]) to [`pvkit_abi::ports::DOORBELL`].
///
/// Ring 0 (or IOPL 3). Rings nothing harmful when the queue is unregistered: the host
/// counts the write and ignores it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn kick(id: pvkit_abi::ring::QueueId) {
    // SAFETY: a port write to the pvkit doorbell port: the host reads nothing from it but
    // the value, and touches no guest memory except the registered ring's. No `nomem`: the
    // slots and `req_prod` written before must not be moved after it.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") pvkit_abi::ports::DOORBELL,
            in("eax") id.to_u32(), options(nostack, preserves_flags));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Req {
        id: u64,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Rsp {
        id: u64,
        value: u64,
    }
    // SAFETY: integer fields only.
    unsafe impl RingItem for Req {}
    // SAFETY: integer fields only.
    unsafe impl RingItem for Rsp {}

    /// 4 KiB-aligned, zeroed memory for a ring, leaked (a ring needs 'static memory).
    fn memory() -> &'static mut [u8] {
        #[repr(C, align(4096))]
        struct Page([u8; 4096]);
        let page: &'static mut Page = Box::leak(Box::new(Page([0; 4096])));
        &mut page.0
    }

    /// A minimal host: the consumer rules of the ABI, with a private consumer index.
    struct Host {
        base: *mut u8,
        size: u32,
        consumed: u32,
    }

    impl Host {
        fn attach(ring: &Ring<Req, Rsp>) -> Self {
            let host = Host {
                base: ring.base.as_ptr(),
                size: ring.size,
                consumed: ring.field(offsets::RSP_PROD).load(Ordering::Relaxed),
            };
            host.store(offsets::REQ_EVENT, host.consumed.wrapping_add(1));
            host
        }

        fn hdr(&self, off: u64) -> &AtomicU32 {
            // SAFETY: test memory, a header field.
            unsafe { &*self.base.add(off as usize).cast::<AtomicU32>() }
        }

        fn load(&self, off: u64) -> u32 {
            self.hdr(off).load(Ordering::SeqCst)
        }

        fn store(&self, off: u64, v: u32) {
            self.hdr(off).store(v, Ordering::SeqCst)
        }

        /// Consumes up to `max` requests, answering `value = id * 10`; then re-arms
        /// `req_event` as the ABI says.
        fn service(&mut self, max: u32) -> u32 {
            let req_prod = self.load(offsets::REQ_PROD);
            let mut n = 0;
            while self.consumed != req_prod && n < max {
                let roff = request_offset(self.size, self.consumed, size_of::<Req>());
                // SAFETY: test memory, a request slot.
                let req = unsafe { self.base.add(roff).cast::<Req>().read() };
                let soff =
                    response_offset(self.size, self.consumed, size_of::<Req>(), size_of::<Rsp>());
                // SAFETY: test memory, a response slot.
                unsafe {
                    self.base.add(soff).cast::<Rsp>().write(Rsp {
                        id: req.id,
                        value: req.id * 10,
                    })
                };
                self.consumed = self.consumed.wrapping_add(1);
                self.store(offsets::RSP_PROD, self.consumed);
                n += 1;
            }
            self.store(offsets::REQ_EVENT, self.consumed.wrapping_add(1));
            n
        }
    }

    #[test]
    fn init_checks_and_writes_the_header() {
        let mem = memory();
        let ptr = mem.as_mut_ptr();
        mem.fill(0xaa);
        // SAFETY: test memory, 4096 bytes.
        unsafe {
            assert_eq!(
                Ring::<Req, Rsp>::init(ptr, 4096, 3).unwrap_err(),
                RingError::InvalidSize(3)
            );
            assert_eq!(
                Ring::<Req, Rsp>::init(ptr, 100, 8).unwrap_err(),
                RingError::TooSmall {
                    need: 64 + 8 * 24,
                    have: 100
                }
            );
            assert_eq!(
                Ring::<Req, Rsp>::init(ptr.add(8), 4000, 8).unwrap_err(),
                RingError::Misaligned(ptr as usize + 8)
            );
        }
        let ring = Ring::<Req, Rsp>::new(mem, 8).unwrap();
        // SAFETY: test memory; the ring is not used concurrently.
        let header = unsafe { core::slice::from_raw_parts(ptr.cast::<u32>(), 16) };
        assert_eq!(&header[..6], &[0, 1, 0, 1, 8, 0]);
        assert!(header[6..].iter().all(|&w| w == 0));
        assert_eq!(ring.len(), 64 + 8 * 24);
        assert_eq!(ring.free(), 8);
    }

    #[test]
    fn full_after_size_pushes_until_responses_are_consumed() {
        let mut ring = Ring::<Req, Rsp>::new(memory(), 4).unwrap();
        let mut host = Host::attach(&ring);
        for id in 0..4 {
            ring.push(Req { id }).unwrap();
        }
        assert_eq!(ring.push(Req { id: 9 }), Err(Full));
        assert!(ring.publish());
        assert_eq!(host.service(u32::MAX), 4);
        // Responses published but not consumed: still full.
        assert_eq!(ring.push(Req { id: 9 }), Err(Full));
        let mut seen = Vec::new();
        assert_eq!(ring.poll_responses(|r| seen.push(*r)), 4);
        assert_eq!(
            seen.iter().map(|r| r.value).collect::<Vec<_>>(),
            [0, 10, 20, 30]
        );
        assert_eq!(ring.free(), 4);
    }

    #[test]
    fn wraps_around_the_u32_indices_and_the_slots() {
        let mem = memory();
        let ptr = mem.as_mut_ptr();
        // SAFETY: leaked test memory, used only by this ring and the test host.
        let mut ring = unsafe { Ring::<Req, Rsp>::init_at(ptr, 4096, 8, u32::MAX - 20) }.unwrap();
        let mut host = Host::attach(&ring);
        let mut next_id = 0u64;
        let mut expected = 0u64;
        for round in 0..20 {
            let batch = 1 + round % 8;
            for _ in 0..batch {
                ring.push(Req { id: next_id }).unwrap();
                next_id += 1;
            }
            ring.publish();
            host.service(u32::MAX);
            ring.poll_responses(|r| {
                assert_eq!(r.id, expected);
                assert_eq!(r.value, expected * 10);
                expected += 1;
            });
            assert_eq!(ring.outstanding(), 0);
        }
        assert_eq!(expected, next_id);
        assert!(ring.next_index() < 200, "the indices wrapped");
    }

    #[test]
    fn one_notification_per_batch_and_none_while_the_host_works() {
        let mut ring = Ring::<Req, Rsp>::new(memory(), 8).unwrap();
        let mut host = Host::attach(&ring);
        // Idle host (req_event = 1): the first batch notifies, once.
        ring.push(Req { id: 0 }).unwrap();
        ring.push(Req { id: 1 }).unwrap();
        assert!(ring.publish());
        // The host has not run yet: more requests need no second doorbell.
        ring.push(Req { id: 2 }).unwrap();
        assert!(!ring.publish());
        // Nothing pushed: nothing to notify.
        assert!(!ring.publish());
        // The host drains and re-arms req_event: the next batch notifies again.
        host.service(u32::MAX);
        ring.poll_responses(|_| {});
        ring.push(Req { id: 3 }).unwrap();
        assert!(ring.publish());
        // A host that stopped part-way (req_event = consumed + 1 = 4) hears about index 4.
        host.service(0);
        ring.push(Req { id: 4 }).unwrap();
        assert!(!ring.publish(), "req_event 4 is not in (4, 5]");
    }

    #[test]
    fn a_polling_host_is_never_notified() {
        let mut ring = Ring::<Req, Rsp>::new(memory(), 8).unwrap();
        let host = Host::attach(&ring);
        host.store(offsets::HOST_FLAGS, HOST_POLLING);
        ring.push(Req { id: 0 }).unwrap();
        assert!(!ring.publish());
        // The host stops polling: it clears the flag, re-arms req_event and re-checks.
        let mut host = host;
        host.store(offsets::HOST_FLAGS, 0);
        assert_eq!(host.service(u32::MAX), 1);
        ring.push(Req { id: 1 }).unwrap();
        assert!(ring.publish());
    }

    #[test]
    fn responses_beyond_what_was_published_are_not_consumed() {
        let mut ring = Ring::<Req, Rsp>::new(memory(), 8).unwrap();
        let host = Host::attach(&ring);
        ring.push(Req { id: 0 }).unwrap();
        ring.publish();
        // A lying host claims 5 responses.
        host.store(offsets::RSP_PROD, 5);
        assert_eq!(ring.poll_responses(|_| {}), 1);
        assert_eq!(ring.outstanding(), 0);
    }

    #[test]
    fn batches_through_templates_and_slots_mut_wrap_like_pushes() {
        let mem = memory();
        let ptr = mem.as_mut_ptr();
        // SAFETY: leaked test memory, used only by this ring and the test host.
        let mut ring = unsafe { Ring::<Req, Rsp>::init_at(ptr, 4096, 8, u32::MAX - 5) }.unwrap();
        let mut host = Host::attach(&ring);
        // Templates: every free slot gets 1000 + its slot number.
        ring.fill_free(|slot, req| req.id = 1000 + u64::from(slot));
        let mut seen = Vec::new();
        let mut expected = Vec::new();
        for round in 0..12u64 {
            let n = 1 + (round % 8) as u32;
            let first = ring.next_index();
            let (a, b) = ring.slots_mut(n).unwrap();
            assert_eq!(a.len() + b.len(), n as usize);
            // The runs are the next slots in order, wrapping at slot 8.
            for (i, req) in a.iter().chain(b.iter()).enumerate() {
                let slot = first.wrapping_add(i as u32) & 7;
                assert_eq!(req.id % 1000, u64::from(slot), "round {round}");
            }
            // Leave odd rounds on the template, rewrite even ones.
            if round % 2 == 0 {
                for req in a.iter_mut().chain(b.iter_mut()) {
                    req.id = 1000 + req.id % 1000;
                }
            }
            for i in 0..n {
                expected.push(1000 + u64::from(first.wrapping_add(i) & 7));
            }
            ring.commit(n).unwrap();
            assert_eq!(ring.unpublished(), n);
            ring.publish();
            host.service(u32::MAX);
            assert_eq!(ring.poll_responses(|r| seen.push(r.id)), n);
            assert_eq!(ring.outstanding(), 0);
        }
        assert_eq!(seen, expected);
        assert!(ring.next_index() < 100, "the indices wrapped");
    }

    #[test]
    fn slots_mut_and_commit_respect_free_slots() {
        let mut ring = Ring::<Req, Rsp>::new(memory(), 4).unwrap();
        let mut host = Host::attach(&ring);
        assert_eq!(ring.slots_mut(5).unwrap_err(), Full);
        assert_eq!(ring.commit(5), Err(Full));
        ring.push(Req { id: 1 }).unwrap();
        assert_eq!(ring.slots_mut(4).unwrap_err(), Full);
        let (a, b) = ring.slots_mut(3).unwrap();
        assert_eq!((a.len(), b.len()), (3, 0));
        ring.commit(3).unwrap();
        assert_eq!(ring.commit(1), Err(Full));
        assert_eq!(ring.free(), 0);
        // A full ring has no free slots to template.
        let mut calls = 0;
        ring.fill_free(|_, _| calls += 1);
        assert_eq!(calls, 0);
        ring.publish();
        host.service(2);
        // Responses are consumed in two steps, across the slot wrap.
        assert_eq!(ring.poll_responses(|_| {}), 2);
        let (a, b) = ring.slots_mut(2).unwrap();
        assert_eq!((a.len(), b.len()), (2, 0));
        ring.commit(2).unwrap();
        ring.publish();
        host.service(u32::MAX);
        let mut ids = Vec::new();
        assert_eq!(ring.poll_responses(|r| ids.push(r.id)), 4);
        assert_eq!(ring.outstanding(), 0);
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn wait_idle_reports_broken_and_timeout() {
        let mut ring = Ring::<Req, Rsp>::new(memory(), 8).unwrap();
        let host = Host::attach(&ring);
        ring.push(Req { id: 0 }).unwrap();
        ring.publish();
        assert_eq!(
            ring.wait_idle(1000, |_| {}),
            Err(WaitError::Timeout { outstanding: 1 })
        );
        host.store(offsets::HOST_FLAGS, BROKEN);
        assert_eq!(ring.wait_idle(u64::MAX, |_| {}), Err(WaitError::Broken));
    }
}
