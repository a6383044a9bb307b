//! A guest-side reference producer for ring tests (feature `test-utils`).
//!
//! [`GuestProducer`] plays the guest's half of the [`pvkit_abi::ring`] protocol over a
//! `GuestMemory`, exactly as the ABI documents it: slots, release fence, `req_prod`, full
//! fence, `req_event`/`host_flags`, [`need_notify`]. Other crates' tests (the VMM's ring
//! dispatch, an I/O thread) can drive a [`crate::ring::RingConsumer`] with it, without a
//! guest. It trusts the host's `rsp_prod` only as far as a test double needs to: it never
//! reads more than `size` responses per call.

use core::marker::PhantomData;
use core::mem::size_of;
use std::sync::atomic::{fence, Ordering};

use pvkit_abi::ring::{
    is_valid_size, need_notify, offsets, request_offset, response_offset, RingHeader, HOST_POLLING,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::wire::{AbiPod, Wire};

/// Errors from the test producer.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// All `size` slots hold requests whose responses the producer has not taken yet; call
    /// [`GuestProducer::take_responses`] first.
    #[error("ring full")]
    Full,
    /// The ring size is not a valid ring size (use [`GuestProducer::init_raw_size`] to
    /// write such a header on purpose).
    #[error("invalid ring size {0}")]
    InvalidSize(u32),
    /// The host published a `rsp_prod` beyond the requests produced.
    #[error("host published rsp_prod {rsp_prod} beyond req_prod {req_prod}")]
    BadRspProd {
        /// The host's `rsp_prod`.
        rsp_prod: u32,
        /// The producer's `req_prod`.
        req_prod: u32,
    },
    /// A guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// The guest side of a ring of `Req` requests and `Rsp` responses at a fixed address.
#[derive(Debug)]
pub struct GuestProducer<Req: AbiPod, Rsp: AbiPod> {
    gpa: u64,
    size: u32,
    /// Requests written into slots (published or not).
    req_prod: u32,
    /// Requests published (the value last stored to `req_prod`).
    published: u32,
    /// Responses taken.
    rsp_cons: u32,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<Req: AbiPod, Rsp: AbiPod> GuestProducer<Req, Rsp> {
    /// Writes a fresh header at `gpa` for a ring of `size` slots whose indices start at
    /// `start` (`req_prod = rsp_prod = start`, `req_event = rsp_event = start + 1`) and
    /// returns the producer for it. Register the ring with the host afterwards.
    pub fn init<M: GuestMemory + ?Sized>(
        mem: &M,
        gpa: u64,
        size: u32,
        start: u32,
    ) -> Result<Self, ProducerError> {
        if !is_valid_size(size) {
            return Err(ProducerError::InvalidSize(size));
        }
        Self::init_raw_size(mem, gpa, size, start)?;
        Ok(Self {
            gpa,
            size,
            req_prod: start,
            published: start,
            rsp_cons: start,
            _types: PhantomData,
        })
    }

    /// Writes the same header as [`init`](Self::init) with any `size`, valid or not, for
    /// registration tests.
    pub fn init_raw_size<M: GuestMemory + ?Sized>(
        mem: &M,
        gpa: u64,
        size: u32,
        start: u32,
    ) -> Result<(), ProducerError> {
        let header = RingHeader {
            req_prod: start,
            req_event: start.wrapping_add(1),
            rsp_prod: start,
            rsp_event: start.wrapping_add(1),
            size,
            host_flags: 0,
            reserved: [0; 10],
        };
        mem.write_obj(Wire(header), GuestAddress(gpa))?;
        Ok(())
    }

    /// Writes `req` into the next free slot without publishing it.
    pub fn push<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: Req,
    ) -> Result<(), ProducerError> {
        if self.req_prod.wrapping_sub(self.rsp_cons) >= self.size {
            return Err(ProducerError::Full);
        }
        let off = request_offset(self.size, self.req_prod, size_of::<Req>()) as u64;
        mem.write_obj(Wire(req), GuestAddress(self.gpa + off))?;
        self.req_prod = self.req_prod.wrapping_add(1);
        Ok(())
    }

    /// Publishes every pushed request and returns whether the guest must ring the doorbell:
    /// [`need_notify`]`(new, old, req_event)` and the host is not polling.
    pub fn publish<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, ProducerError> {
        let old = self.published;
        let new = self.req_prod;
        // Release: the slots are visible before the index that publishes them.
        fence(Ordering::Release);
        mem.store(new, self.field(offsets::REQ_PROD), Ordering::Relaxed)?;
        self.published = new;
        // Full fence: the `req_prod` store is ordered before the `req_event` load (the
        // host mirrors this in its final check).
        fence(Ordering::SeqCst);
        let event: u32 = mem.load(self.field(offsets::REQ_EVENT), Ordering::Relaxed)?;
        let flags: u32 = mem.load(self.field(offsets::HOST_FLAGS), Ordering::Relaxed)?;
        Ok(need_notify(new, old, event) && flags & HOST_POLLING == 0)
    }

    /// Reads every response the host published since the last call.
    pub fn take_responses<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Vec<Rsp>, ProducerError> {
        // Acquire pairs with the host's release store of `rsp_prod`.
        let rsp_prod: u32 = mem.load(self.field(offsets::RSP_PROD), Ordering::Acquire)?;
        let n = rsp_prod.wrapping_sub(self.rsp_cons);
        if n > self.req_prod.wrapping_sub(self.rsp_cons) {
            return Err(ProducerError::BadRspProd {
                rsp_prod,
                req_prod: self.req_prod,
            });
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let off = response_offset(self.size, self.rsp_cons, size_of::<Req>(), size_of::<Rsp>());
            let Wire(rsp) = mem.read_obj::<Wire<Rsp>>(GuestAddress(self.gpa + off as u64))?;
            out.push(rsp);
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
        }
        Ok(out)
    }

    /// The guest's current `req_prod` (including unpublished requests).
    pub fn req_prod(&self) -> u32 {
        self.req_prod
    }

    fn field(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.gpa + offset)
    }
}
