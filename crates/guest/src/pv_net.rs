//! The PV network driver ([`pvkit_abi::net`]): frames out through the transmit ring
//! ([`NET_TX_QUEUE`]), frames in through buffers posted on the receive ring
//! ([`NET_RX_QUEUE`]), and the synchronous [`crate::hypercall::net_send`] (one exit per
//! frame, the Solo5-style baseline).
//!
//! # Batching and notifications
//!
//! [`PvNet::queue_tx`] writes a request into its slot; [`PvNet::flush_tx`] publishes every
//! queued frame with one index store and rings the doorbell only if the host asked for it
//! (event index: one doorbell per batch, none while the host is working or polling).
//! Receive buffers are posted the same way ([`PvNet::post_rx`], [`PvNet::flush_rx`]); the
//! host asks for a notification only when it ran out of buffers. Completions and received
//! frames are polled ([`PvNet::poll_tx`], [`PvNet::poll_rx`]). [`PvNet::kick_rx`] asks the
//! host to pull frames from its backend now (a guest waiting for a frame on the
//! `Doorbell` transport calls it; with `HostPoll` the host pulls by itself).
//!
//! Buffers are handed to the host by address: a frame must stay unchanged until its TX
//! response, and an RX buffer must not be touched until its RX response.

use crate::ring::{QueueError, Ring};
use pvkit_abi::net::{
    NetInfo, NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse, MAX_FRAME_LEN, MIN_FRAME_LEN,
};
use pvkit_abi::ring::{Transport, NET_RX_QUEUE, NET_TX_QUEUE};
use pvkit_abi::Status;

/// Why the PV NIC could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetSetupError {
    /// The host offers no PV NIC rings (`Features::NET | NET_RING` missing).
    NoDevice,
    /// A ring could not be set up or registered.
    Ring(crate::block::SetupError),
    /// `NetInfo` failed.
    Info(Status),
}

/// The PV NIC over its two rings.
#[derive(Debug)]
pub struct PvNet {
    tx: Ring<NetTxRequest, NetTxResponse>,
    rx: Ring<NetRxRequest, NetRxResponse>,
    info: NetInfo,
    next_tx_id: u32,
}

impl PvNet {
    /// Checks the features, reads the MAC and MTU, and registers a transmit ring in
    /// `tx_mem` and a receive ring in `rx_mem`, `size` slots each (4 KiB aligned memory of
    /// at least [`PvNet::bytes`]`(size)`), on `transport`.
    #[cfg(target_arch = "x86_64")]
    pub fn init(
        tx_mem: &'static mut [u8],
        rx_mem: &'static mut [u8],
        size: u32,
        transport: Transport,
    ) -> Result<Self, NetSetupError> {
        use pvkit_abi::cpuid::Features;
        let need = Features::NET | Features::NET_RING;
        if !crate::hypercall::features().contains(need) {
            return Err(NetSetupError::NoDevice);
        }
        let info = crate::hypercall::net_info().map_err(NetSetupError::Info)?;
        let tx = crate::block::register_ring(tx_mem, size, NET_TX_QUEUE, transport)
            .map_err(NetSetupError::Ring)?;
        let rx = crate::block::register_ring(rx_mem, size, NET_RX_QUEUE, transport)
            .map_err(NetSetupError::Ring)?;
        Ok(Self::from_rings(tx, rx, info))
    }

    /// A driver over rings already registered (or, in tests, attached to a model host).
    pub fn from_rings(
        tx: Ring<NetTxRequest, NetTxResponse>,
        rx: Ring<NetRxRequest, NetRxResponse>,
        info: NetInfo,
    ) -> Self {
        Self {
            tx,
            rx,
            info,
            next_tx_id: 0,
        }
    }

    /// Bytes one ring of `size` slots needs (both rings have the same slot sizes).
    pub const fn bytes(size: u32) -> Option<usize> {
        Ring::<NetTxRequest, NetTxResponse>::bytes(size)
    }

    /// The MAC address and MTU.
    pub fn info(&self) -> NetInfo {
        self.info
    }

    /// The transmit ring (indices, flags).
    pub fn tx_ring(&self) -> &Ring<NetTxRequest, NetTxResponse> {
        &self.tx
    }

    /// The receive ring.
    pub fn rx_ring(&self) -> &Ring<NetRxRequest, NetRxResponse> {
        &self.rx
    }

    /// Queues `frame` for transmission (not visible before [`PvNet::flush_tx`]); returns the
    /// id its response will carry. `Invalid(EINVAL/E2BIG)` for a length outside
    /// `MIN_FRAME_LEN..=MAX_FRAME_LEN`, `Full` when every slot is in flight.
    pub fn queue_tx(&mut self, frame: &'static [u8]) -> Result<u32, QueueError> {
        // SAFETY: a 'static frame stays valid; the caller does not change it (it is shared).
        unsafe { self.queue_tx_raw(frame.as_ptr(), frame.len()) }
    }

    /// [`PvNet::queue_tx`] for a frame at `ptr`.
    ///
    /// # Safety
    ///
    /// `len` bytes at `ptr` stay valid and unchanged until the frame's TX response.
    pub unsafe fn queue_tx_raw(&mut self, ptr: *const u8, len: usize) -> Result<u32, QueueError> {
        if len < MIN_FRAME_LEN as usize {
            return Err(QueueError::Invalid(Status::EINVAL));
        }
        if len > MAX_FRAME_LEN as usize {
            return Err(QueueError::Invalid(Status::E2BIG));
        }
        let id = self.next_tx_id;
        let addr = crate::addr::virt_to_phys(ptr);
        let len = len as u32;
        self.tx
            .push_with(|slot| *slot = NetTxRequest { addr, len, id })?;
        self.next_tx_id = id.wrapping_add(1);
        Ok(id)
    }

    /// Points every free TX slot at the frame of `len` bytes at `ptr` (request
    /// templates, id = slot number), so that [`PvNet::commit_tx`] queues frames with one
    /// index update per batch and no store per frame. Slots in flight keep their request.
    ///
    /// # Safety
    ///
    /// As [`PvNet::queue_tx_raw`], for every frame later committed from these slots.
    pub unsafe fn set_tx_template(&mut self, ptr: *const u8, len: usize) -> Result<(), QueueError> {
        if len < MIN_FRAME_LEN as usize {
            return Err(QueueError::Invalid(Status::EINVAL));
        }
        if len > MAX_FRAME_LEN as usize {
            return Err(QueueError::Invalid(Status::E2BIG));
        }
        let addr = crate::addr::virt_to_phys(ptr);
        let len = len as u32;
        self.tx.fill_free(|slot, req| {
            *req = NetTxRequest {
                addr,
                len,
                id: slot,
            }
        });
        Ok(())
    }

    /// Queues the next `n` TX slots as their templates hold them
    /// ([`PvNet::set_tx_template`]); not visible before [`PvNet::flush_tx`]. `Full`
    /// (nothing queued) if fewer than `n` slots are free.
    pub fn commit_tx(&mut self, n: u32) -> Result<(), crate::ring::Full> {
        self.tx.commit(n)
    }

    /// Publishes the queued frames; returns whether the host asked for the doorbell.
    pub fn publish_tx(&mut self) -> bool {
        self.tx.publish()
    }

    /// Publishes the queued frames and rings the TX doorbell if the host asked for it:
    /// one doorbell per batch at most. Returns whether it rang. Ring 0.
    #[cfg(target_arch = "x86_64")]
    pub fn flush_tx(&mut self) -> bool {
        let notify = self.tx.publish();
        if notify {
            crate::ring::kick(NET_TX_QUEUE);
        }
        notify
    }

    /// Queues and flushes one frame. Ring 0.
    #[cfg(target_arch = "x86_64")]
    pub fn send(&mut self, frame: &'static [u8]) -> Result<u32, QueueError> {
        let id = self.queue_tx(frame)?;
        self.flush_tx();
        Ok(id)
    }

    /// Hands each new TX completion to `f` as `(id, result)`; returns how many.
    pub fn poll_tx(&mut self, mut f: impl FnMut(u32, Result<u32, Status>)) -> u32 {
        self.tx.poll_responses(|r| f(r.id, result(r.status, r.len)))
    }

    /// Posts an empty receive buffer (not visible before [`PvNet::flush_rx`]) under `id`
    /// (echoed in its response). `Full` when every slot holds a buffer.
    ///
    /// # Safety
    ///
    /// `capacity` bytes at `ptr` stay valid until the buffer's RX response, and the guest
    /// does not access them meanwhile (the host writes them at any time).
    pub unsafe fn post_rx(
        &mut self,
        id: u32,
        ptr: *mut u8,
        capacity: u32,
    ) -> Result<(), QueueError> {
        let addr = crate::addr::virt_to_phys(ptr);
        self.rx
            .push_with(|slot| *slot = NetRxRequest { addr, capacity, id })?;
        Ok(())
    }

    /// Publishes the posted buffers; returns whether the host asked for the doorbell.
    pub fn publish_rx(&mut self) -> bool {
        self.rx.publish()
    }

    /// Publishes the posted buffers and rings the RX doorbell if the host asked for it.
    #[cfg(target_arch = "x86_64")]
    pub fn flush_rx(&mut self) -> bool {
        let notify = self.rx.publish();
        if notify {
            crate::ring::kick(NET_RX_QUEUE);
        }
        notify
    }

    /// Rings the RX doorbell unconditionally: the host pulls frames from its backend now
    /// and fills posted buffers. One exit (transport `Doorbell`).
    #[cfg(target_arch = "x86_64")]
    pub fn kick_rx(&self) {
        crate::ring::kick(NET_RX_QUEUE);
    }

    /// Hands each received frame (or refused buffer) to `f` as `(id, result)`, `Ok(len)`
    /// being the frame length now in buffer `id`; returns how many.
    pub fn poll_rx(&mut self, mut f: impl FnMut(u32, Result<u32, Status>)) -> u32 {
        self.rx.poll_responses(|r| f(r.id, result(r.status, r.len)))
    }

    /// Binds the receive ring's completions to interrupt line `gsi` (0: unbind),
    /// `QueueInterrupt`; needs `Features::RING_IRQ`.
    #[cfg(target_arch = "x86_64")]
    pub fn bind_rx_interrupt(&self, gsi: u32) -> Result<(), Status> {
        crate::hypercall::queue_interrupt(NET_RX_QUEUE, gsi)
    }

    /// Arms the receive interrupt for the next frame; returns whether frames are already
    /// waiting ([`crate::ring::Ring::arm_responses`]).
    pub fn arm_rx(&mut self) -> bool {
        self.rx.arm_responses()
    }

    /// Whether the host marked either ring broken.
    pub fn is_broken(&self) -> bool {
        self.tx.is_broken() || self.rx.is_broken()
    }
}

/// A response's status and length as a result; a status the ABI does not know is `EIO`.
fn result(status: i64, len: u32) -> Result<u32, Status> {
    match Status::try_from(status as u64) {
        Ok(Status::Ok) => Ok(len),
        Ok(s) => Err(s),
        Err(_) => Err(Status::EIO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_abi::ring::{offsets, request_offset, response_offset};

    fn memory() -> &'static mut [u8] {
        #[repr(C, align(4096))]
        struct Page([u8; 4096]);
        let page: &'static mut Page = Box::leak(Box::new(Page([0; 4096])));
        &mut page.0
    }

    const INFO: NetInfo = NetInfo {
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
    };

    fn nic() -> (PvNet, *mut u8, *mut u8) {
        let (t, r) = (memory(), memory());
        let (tp, rp) = (t.as_mut_ptr(), r.as_mut_ptr());
        let tx = Ring::new(t, 4).unwrap();
        let rx = Ring::new(r, 4).unwrap();
        (PvNet::from_rings(tx, rx, INFO), tp, rp)
    }

    fn load(base: *mut u8, off: u64) -> u32 {
        // SAFETY: a header field of a live ring page.
        unsafe { base.add(off as usize).cast::<u32>().read_volatile() }
    }

    fn store(base: *mut u8, off: usize, v: u32) {
        // SAFETY: inside a live ring page.
        unsafe { base.add(off).cast::<u32>().write_volatile(v) }
    }

    static FRAME: [u8; 60] = [0xab; 60];
    static SHORT: [u8; 13] = [0; 13];
    static LONG: [u8; 1515] = [0; 1515];

    #[test]
    fn tx_batch_is_one_notification_and_lengths_are_checked() {
        let (mut n, tp, _) = nic();
        assert_eq!(n.queue_tx(&SHORT), Err(QueueError::Invalid(Status::EINVAL)));
        assert_eq!(n.queue_tx(&LONG), Err(QueueError::Invalid(Status::E2BIG)));
        assert_eq!(n.queue_tx(&FRAME), Ok(0));
        assert_eq!(n.queue_tx(&FRAME), Ok(1));
        assert_eq!(n.queue_tx(&FRAME), Ok(2));
        // The host (registration) armed req_event = 1: the batch of three notifies once.
        store(tp, offsets::REQ_EVENT as usize, 1);
        assert!(n.publish_tx());
        assert_eq!(load(tp, offsets::REQ_PROD), 3);
        // The host has not re-armed: the next batch does not notify.
        n.queue_tx(&FRAME).unwrap();
        assert!(!n.publish_tx());
        // Slot 1 holds the second frame, as the ABI lays it out.
        let off = request_offset(4, 1, 16);
        // SAFETY: slot 1 of the TX ring page.
        let req = unsafe { tp.add(off).cast::<NetTxRequest>().read() };
        assert_eq!(
            req,
            NetTxRequest {
                addr: crate::addr::virt_to_phys(FRAME.as_ptr()),
                len: 60,
                id: 1
            }
        );
        assert_eq!(n.queue_tx(&FRAME), Err(QueueError::Full));
    }

    #[test]
    fn rx_responses_decode_to_results() {
        let (mut n, _, rp) = nic();
        let mut buf = [0u8; 1514];
        // SAFETY: `buf` outlives the test's use of the ring.
        unsafe { n.post_rx(7, buf.as_mut_ptr(), 1514) }.unwrap();
        // SAFETY: as above.
        unsafe { n.post_rx(8, buf.as_mut_ptr(), 1514) }.unwrap();
        n.publish_rx();
        // A model host answers both: a 42-byte frame, and an EFAULT.
        for (i, (status, id, len)) in [(0i64, 7u32, 42u32), (-14, 8, 0)].into_iter().enumerate() {
            let off = response_offset(4, i as u32, 16, 16);
            let rsp = NetRxResponse { status, id, len };
            // SAFETY: response slot `i` of the RX ring page.
            unsafe { rp.add(off).cast::<NetRxResponse>().write(rsp) };
        }
        store(rp, offsets::RSP_PROD as usize, 2);
        let mut got = Vec::new();
        assert_eq!(n.poll_rx(|id, r| got.push((id, r))), 2);
        assert_eq!(got, vec![(7, Ok(42)), (8, Err(Status::EFAULT))]);
        assert_eq!(n.poll_rx(|_, _| panic!("no more")), 0);
    }
}
