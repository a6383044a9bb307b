//! The PV console over the console ring ([`pvkit_abi::ring::CONSOLE_QUEUE`]): writes
//! are queued as [`ConsoleRequest`]s, published together and notified with one doorbell per
//! batch (when the host asks for one); the host writes them out in ring order.
//!
//! Buffers are borrowed for `'static`: the host reads a buffer some time after the request
//! is published, possibly while the guest runs on (`DoorbellEventfd`, `HostPoll`), so the
//! bytes must stay put until the response arrives. Static text and `.rodata` patterns are
//! the natural fit.

use crate::addr::virt_to_phys;
use crate::block::{register_ring, SetupError};
use crate::ring::{QueueError, Ring, WaitError};
use pvkit_abi::console::{ConsoleRequest, ConsoleResponse, MAX_WRITE};
use pvkit_abi::ring::{Transport, CONSOLE_QUEUE};
use pvkit_abi::Status;

/// The console request ring.
#[derive(Debug)]
pub struct ConsoleRing {
    ring: Ring<ConsoleRequest, ConsoleResponse>,
    transport: Transport,
    next_id: u32,
}

#[cfg(target_arch = "x86_64")]
impl ConsoleRing {
    /// Sets up a ring of `size` slots in `mem` (4 KiB aligned, at least
    /// [`ConsoleRing::bytes`]`(size)` long) and registers it with the host
    /// (`RegisterRegion(CONSOLE_QUEUE, gpa, len, transport)`). As with the block ring, give
    /// each registration its own memory.
    pub fn register(
        mem: &'static mut [u8],
        size: u32,
        transport: Transport,
    ) -> Result<Self, SetupError> {
        let ring = register_ring(mem, size, CONSOLE_QUEUE, transport)?;
        Ok(ConsoleRing {
            ring,
            transport,
            next_id: 0,
        })
    }

    /// Bytes a console ring of `size` slots needs.
    pub const fn bytes(size: u32) -> Option<usize> {
        Ring::<ConsoleRequest, ConsoleResponse>::bytes(size)
    }

    /// The transport chosen at registration.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The ring itself (indices, flags).
    pub fn ring(&self) -> &Ring<ConsoleRequest, ConsoleResponse> {
        &self.ring
    }

    /// Queues a write of `bytes` (at most [`MAX_WRITE`]; `Invalid(E2BIG)` otherwise,
    /// nothing queued). Not visible to the host before [`ConsoleRing::submit`]. Returns the
    /// id the response will carry.
    #[inline]
    pub fn queue(&mut self, bytes: &'static [u8]) -> Result<u32, QueueError> {
        if bytes.len() as u64 > MAX_WRITE {
            return Err(QueueError::Invalid(Status::E2BIG));
        }
        let id = self.next_id;
        let addr = virt_to_phys(bytes.as_ptr());
        let len = bytes.len() as u32;
        self.ring
            .push_with(|slot| *slot = ConsoleRequest { addr, len, id })?;
        self.next_id = id.wrapping_add(1);
        Ok(id)
    }

    /// Publishes the queued writes without ringing: returns whether the host asked for the
    /// doorbell ([`crate::ring::kick`] with [`CONSOLE_QUEUE`], a port write: ring 0
    /// only). Never with `HostPoll`. This is what ring-3 code polling the ring calls.
    #[inline]
    pub fn publish(&mut self) -> bool {
        self.ring.publish()
    }

    /// Publishes the queued writes and rings the doorbell if the host asked for it (never
    /// with `HostPoll`). Returns whether the doorbell was rung. Ring 0.
    #[inline]
    pub fn submit(&mut self) -> bool {
        let notify = self.ring.publish();
        if notify {
            crate::ring::kick(CONSOLE_QUEUE);
        }
        notify
    }

    /// Spins until every submitted write has its response, handing each to `f`.
    /// `timeout` is in TSC cycles.
    #[inline]
    pub fn wait(&mut self, timeout: u64, f: impl FnMut(&ConsoleResponse)) -> Result<(), WaitError> {
        self.ring.wait_idle(timeout, f)
    }

    /// Writes `bytes` as one request and waits for it: the ring used synchronously.
    /// Returns the bytes written, or the host's status.
    pub fn write(&mut self, bytes: &'static [u8], timeout: u64) -> Result<u32, Status> {
        self.queue(bytes).map_err(|e| match e {
            QueueError::Invalid(s) => s,
            QueueError::Full => Status::EAGAIN,
        })?;
        self.submit();
        let mut result = Ok(0);
        self.wait(timeout, |rsp| {
            result = match Status::try_from(rsp.status as u64) {
                Ok(Status::Ok) => Ok(rsp.written),
                Ok(s) => Err(s),
                Err(_) => Err(Status::EIO),
            }
        })
        .map_err(|_| Status::EIO)?;
        result
    }
}
