//! The PV network backend: guest frames out through the transmit ring (or `NetSend`) to a
//! host sink, host frames in through the receive ring into buffers the guest posted.
//!
//! I/O-free: [`NetDevice::send`] and [`NetDevice::service_tx`] hand each frame to a
//! `&mut dyn FnMut(&[u8])` sink (the VMM passes its network backend's `send`); frames for
//! the guest are handed in with [`NetDevice::push_rx`] or pulled from a source with
//! [`NetDevice::pull_rx`], and [`NetDevice::service_rx`] copies them into posted buffers.
//!
//! # Bounds (the guest and the host side are hostile)
//!
//! - A transmitted frame is length-checked before anything is read (`EINVAL` below
//!   [`MIN_FRAME_LEN`], `E2BIG` above [`MAX_FRAME_LEN`], counted) and bounced through one
//!   [`MAX_FRAME_LEN`] buffer allocated at creation: the sink never sees guest memory.
//! - Frames for the guest wait in a fixed queue of [`RX_QUEUE_FRAMES`] slots, allocated at
//!   creation. A frame that does not fit (the guest posts no buffers) is dropped and
//!   counted ([`NetStats::rx_dropped_no_buffer`]); oversize and undersize frames from the
//!   host are dropped and counted too. Nothing blocks, nothing grows.
//! - One transmit service handles at most [`SERVICE_FRAMES`] requests; one receive service
//!   fills at most [`SERVICE_FRAMES`] buffers; one [`NetDevice::pull_rx`] takes at most
//!   [`SERVICE_FRAMES`] frames from its source (so a flooding TAP device cannot hold the
//!   caller). Corrupt ring indices mark the ring `BROKEN` ([`crate::ring`]).
//!
//! # The receive ring
//!
//! RX requests are empty buffers; the host consumes one only when it has a frame for it,
//! so a service handles `min(frames waiting, buffers posted, SERVICE_FRAMES)` requests
//! (the ring's request budget is set to the frames waiting). While buffers are posted and
//! no frame waits, `req_event` stays behind: posting more buffers does not notify. When the
//! guest runs out of buffers, the service re-arms `req_event`, so its next post notifies
//! and the frames that waited are delivered. [`Batch::budget_exhausted`] is reported only
//! when frames *and* buffers are left (real work for the caller to continue).

use pvkit_abi::net::{
    NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse, MAX_FRAME_LEN, MIN_FRAME_LEN,
};
use pvkit_abi::Status;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::guest_range::{GuestRange, RangeError};
use crate::ring::{Batch, RingConsumer, RingError};

/// The transmit ring: [`NetTxRequest`]s in, [`NetTxResponse`]s out.
pub type NetTxRing = RingConsumer<NetTxRequest, NetTxResponse>;
/// The receive ring: [`NetRxRequest`]s (empty buffers) in, [`NetRxResponse`]s (frames) out.
pub type NetRxRing = RingConsumer<NetRxRequest, NetRxResponse>;

/// Frames waiting for a guest buffer at most; more are dropped and counted.
pub const RX_QUEUE_FRAMES: usize = 64;
/// Requests (transmit) or buffers (receive) one service handles at most, and frames one
/// [`NetDevice::pull_rx`] takes from its source.
pub const SERVICE_FRAMES: u64 = 256;

const FRAME: usize = MAX_FRAME_LEN as usize;

/// Why a frame was refused. [`NetError::status`] is what the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The frame is shorter than an Ethernet header (`EINVAL`).
    #[error("frame of {0} bytes is shorter than {MIN_FRAME_LEN}")]
    Undersize(u64),
    /// The frame is longer than [`MAX_FRAME_LEN`] (`E2BIG`).
    #[error("frame of {0} bytes is longer than {MAX_FRAME_LEN}")]
    Oversize(u64),
    /// The frame or buffer is not inside guest RAM (`EFAULT`).
    #[error("net buffer: {0}")]
    Range(#[from] RangeError),
    /// Copying from or to guest memory failed after validation (`EFAULT`).
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The posted receive buffer is smaller than the frame (`E2BIG`); the frame is dropped.
    #[error("receive buffer of {capacity} bytes for a frame of {len}")]
    BufferTooSmall {
        /// The buffer's capacity.
        capacity: u32,
        /// The frame's length.
        len: usize,
    },
}

impl NetError {
    /// The status returned to the guest.
    pub fn status(&self) -> Status {
        match self {
            NetError::Undersize(_) => Status::EINVAL,
            NetError::Oversize(_) | NetError::BufferTooSmall { .. } => Status::E2BIG,
            NetError::Range(_) | NetError::Memory(_) => Status::EFAULT,
        }
    }
}

/// Counters of one PV NIC. "tx" is guest → host, "rx" host → guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the sink.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Transmit requests refused: bad length or outside RAM (answered with an error).
    pub tx_refused: u64,
    /// Frames copied into guest buffers.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Host frames dropped for their length (oversize or undersize).
    pub rx_dropped_len: u64,
    /// Host frames dropped because the wait queue was full (the guest posts no buffers).
    pub rx_dropped_no_buffer: u64,
    /// Host frames dropped because the buffer they were given was refused (too small,
    /// outside RAM).
    pub rx_dropped_bad_buffer: u64,
}

/// A fixed ring of frames waiting for guest buffers.
struct RxQueue {
    frames: Box<[[u8; FRAME]]>,
    lens: [u16; RX_QUEUE_FRAMES],
    head: usize,
    len: usize,
}

impl RxQueue {
    fn new() -> Self {
        Self {
            frames: vec![[0u8; FRAME]; RX_QUEUE_FRAMES].into_boxed_slice(),
            lens: [0; RX_QUEUE_FRAMES],
            head: 0,
            len: 0,
        }
    }

    /// A frame of checked length; false if full.
    fn push(&mut self, frame: &[u8]) -> bool {
        if self.len >= RX_QUEUE_FRAMES {
            return false;
        }
        let i = (self.head + self.len) % RX_QUEUE_FRAMES;
        match (self.frames.get_mut(i), self.lens.get_mut(i)) {
            (Some(slot), Some(l)) if frame.len() <= FRAME => {
                if let Some(dst) = slot.get_mut(..frame.len()) {
                    dst.copy_from_slice(frame);
                }
                *l = frame.len() as u16;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    fn front(&self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let l = usize::from(*self.lens.get(self.head)?);
        self.frames.get(self.head)?.get(..l)
    }

    fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % RX_QUEUE_FRAMES;
            self.len -= 1;
        }
    }
}

/// The host side of one PV NIC: the transmit bounce buffer, the receive wait queue and the
/// counters. The rings are the caller's (they are registered and replaced by the guest).
pub struct NetDevice {
    bounce: Box<[u8; FRAME]>,
    rx: RxQueue,
    stats: NetStats,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("rx_waiting", &self.rx.len)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for NetDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl NetDevice {
    /// A device with an empty wait queue (allocates its fixed buffers, ~100 KiB).
    pub fn new() -> Self {
        Self {
            bounce: Box::new([0u8; FRAME]),
            rx: RxQueue::new(),
            stats: NetStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Frames waiting for a guest buffer.
    pub fn rx_waiting(&self) -> usize {
        self.rx.len
    }

    /// Sends the frame of `len` guest bytes at `addr` to `sink` (`NetSend`, and each
    /// transmit request); returns `len`. Refused frames (length, range) reach no sink and
    /// are counted in [`NetStats::tx_refused`].
    pub fn send<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<u32, NetError> {
        let r = self.send_inner(mem, addr, len, sink);
        if r.is_err() {
            self.stats.tx_refused = self.stats.tx_refused.saturating_add(1);
        }
        r
    }

    fn send_inner<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<u32, NetError> {
        if len < u64::from(MIN_FRAME_LEN) {
            return Err(NetError::Undersize(len));
        }
        if len > u64::from(MAX_FRAME_LEN) {
            return Err(NetError::Oversize(len));
        }
        let range = GuestRange::new(mem, addr, len)?;
        let buf = self.bounce.get_mut(..range.len()).unwrap_or(&mut []);
        mem.read_slice(buf, range.guest_addr())?;
        sink(buf);
        self.stats.tx_frames = self.stats.tx_frames.saturating_add(1);
        self.stats.tx_bytes = self.stats.tx_bytes.saturating_add(len);
        // `len <= MAX_FRAME_LEN`.
        Ok(len as u32)
    }

    /// Services the transmit ring: each request's frame goes to `sink`, at most
    /// [`SERVICE_FRAMES`] requests (a ring left with requests reports
    /// [`Batch::budget_exhausted`]).
    pub fn service_tx<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        ring: &mut NetTxRing,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Batch, RingError> {
        ring.set_budget(Some(SERVICE_FRAMES));
        ring.poll_metered(mem, |req| {
            let (status, len) = match self.send(mem, req.addr, u64::from(req.len), sink) {
                Ok(n) => (Status::Ok, n),
                Err(e) => (e.status(), 0),
            };
            let rsp = NetTxResponse {
                status: status as i64,
                id: req.id,
                len,
            };
            (rsp, u64::from(len))
        })
    }

    /// Queues one frame from the host for the guest. Returns false (and counts) if it was
    /// dropped: its length is outside `MIN_FRAME_LEN..=MAX_FRAME_LEN`, or the wait queue is
    /// full.
    pub fn push_rx(&mut self, frame: &[u8]) -> bool {
        let len = frame.len();
        if len < MIN_FRAME_LEN as usize || len > FRAME {
            self.stats.rx_dropped_len = self.stats.rx_dropped_len.saturating_add(1);
            return false;
        }
        if !self.rx.push(frame) {
            self.stats.rx_dropped_no_buffer = self.stats.rx_dropped_no_buffer.saturating_add(1);
            return false;
        }
        true
    }

    /// Takes frames from `source` (which copies the next frame into the buffer it is given,
    /// [`MAX_FRAME_LEN`] bytes, and returns its length, or `None` when there is none) into
    /// the wait queue, at most [`SERVICE_FRAMES`] of them; frames that do not fit are
    /// dropped and counted. Returns the frames taken from the source.
    pub fn pull_rx(&mut self, source: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> u64 {
        let mut taken = 0;
        while taken < SERVICE_FRAMES {
            let Some(len) = source(self.bounce.as_mut_slice()) else {
                break;
            };
            taken += 1;
            match self.bounce.get(..len) {
                Some(frame) => {
                    let ok_len = (MIN_FRAME_LEN as usize..=FRAME).contains(&frame.len());
                    if !ok_len {
                        self.stats.rx_dropped_len = self.stats.rx_dropped_len.saturating_add(1);
                    } else if !self.rx.push(frame) {
                        self.stats.rx_dropped_no_buffer =
                            self.stats.rx_dropped_no_buffer.saturating_add(1);
                    }
                }
                None => {
                    // A source claiming more than the buffer holds: oversize.
                    self.stats.rx_dropped_len = self.stats.rx_dropped_len.saturating_add(1);
                }
            }
        }
        taken
    }

    /// Copies waiting frames into the buffers the guest posted on `ring`, one frame per
    /// buffer, at most [`SERVICE_FRAMES`]. A buffer that is too small or outside RAM is
    /// answered with an error and its frame is dropped (counted).
    pub fn service_rx<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        ring: &mut NetRxRing,
    ) -> Result<Batch, RingError> {
        let deliver = (self.rx.len as u64).min(SERVICE_FRAMES);
        ring.set_budget(Some(deliver));
        let mut batch = ring.poll_metered(mem, |req| {
            let Some(frame) = self.rx.front() else {
                // Unreachable: the budget is the number of waiting frames.
                let rsp = NetRxResponse {
                    status: Status::EAGAIN as i64,
                    id: req.id,
                    len: 0,
                };
                return (rsp, 0);
            };
            let r = deliver_frame(mem, &req, frame);
            let flen = frame.len();
            self.rx.pop();
            let (status, len) = match r {
                Ok(()) => {
                    self.stats.rx_frames = self.stats.rx_frames.saturating_add(1);
                    self.stats.rx_bytes = self.stats.rx_bytes.saturating_add(flen as u64);
                    (Status::Ok, flen as u32)
                }
                Err(e) => {
                    self.stats.rx_dropped_bad_buffer =
                        self.stats.rx_dropped_bad_buffer.saturating_add(1);
                    (e.status(), 0)
                }
            };
            let rsp = NetRxResponse {
                status: status as i64,
                id: req.id,
                len,
            };
            (rsp, u64::from(len))
        })?;
        // Stopped for want of frames, not for the service bound: nothing to continue.
        if self.rx.len == 0 {
            batch.budget_exhausted = false;
        }
        Ok(batch)
    }
}

/// Writes `frame` into the buffer of `req`, after checking its capacity and range.
fn deliver_frame<M: GuestMemory + ?Sized>(
    mem: &M,
    req: &NetRxRequest,
    frame: &[u8],
) -> Result<(), NetError> {
    if (req.capacity as usize) < frame.len() {
        return Err(NetError::BufferTooSmall {
            capacity: req.capacity,
            len: frame.len(),
        });
    }
    let range = GuestRange::new(mem, req.addr, frame.len() as u64)?;
    mem.write_slice(frame, GuestAddress(range.addr()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::GuestProducer;
    use pvkit_abi::ring::{offsets, BROKEN};
    use std::sync::atomic::Ordering;
    use vm_memory::GuestMemoryMmap;

    const RAM: usize = 1 << 20;
    const TX: u64 = 0x1_0000;
    const RX: u64 = 0x2_0000;
    const BUFS: u64 = 0x4_0000;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    type TxP = GuestProducer<NetTxRequest, NetTxResponse>;
    type RxP = GuestProducer<NetRxRequest, NetRxResponse>;

    #[test]
    fn tx_ring_sends_frames_in_order_and_refuses_bad_lengths() {
        let m = mem();
        let a = frame(60, 1);
        let b = frame(1514, 2);
        m.write_slice(&a, GuestAddress(BUFS)).unwrap();
        m.write_slice(&b, GuestAddress(BUFS + 0x1000)).unwrap();
        let mut p = TxP::init(&m, TX, 8, 0).unwrap();
        let mut ring = NetTxRing::new(&m, TX, 0x1000).unwrap();
        let reqs = [
            (BUFS, 60, 1),
            (BUFS, 13, 2),
            (BUFS + 0x1000, 1514, 3),
            (BUFS, 1515, 4),
            (RAM as u64 - 10, 20, 5),
        ];
        for (addr, len, id) in reqs {
            p.push(&m, NetTxRequest { addr, len, id }).unwrap();
        }
        p.publish(&m).unwrap();
        let mut dev = NetDevice::new();
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let batch = dev
            .service_tx(&m, &mut ring, &mut |f| sent.push(f.to_vec()))
            .unwrap();
        assert_eq!(batch.requests, 5);
        assert_eq!(sent, vec![a, b]);
        let rsps: Vec<_> = p
            .take_responses(&m)
            .unwrap()
            .iter()
            .map(|r| (r.id, r.status, r.len))
            .collect();
        assert_eq!(
            rsps,
            vec![
                (1, 0, 60),
                (2, Status::EINVAL as i64, 0),
                (3, 0, 1514),
                (4, Status::E2BIG as i64, 0),
                (5, Status::EFAULT as i64, 0),
            ]
        );
        let s = dev.stats();
        assert_eq!((s.tx_frames, s.tx_bytes, s.tx_refused), (2, 1574, 3));
    }

    #[test]
    fn rx_fills_posted_buffers_only_when_frames_wait() {
        let m = mem();
        let mut p = RxP::init(&m, RX, 4, 0).unwrap();
        let mut ring = NetRxRing::new(&m, RX, 0x1000).unwrap();
        for id in 0..4u32 {
            let addr = BUFS + u64::from(id) * 0x800;
            p.push(
                &m,
                NetRxRequest {
                    addr,
                    capacity: 1514,
                    id,
                },
            )
            .unwrap();
        }
        p.publish(&m).unwrap();
        let mut dev = NetDevice::new();
        // No frame: nothing consumed, no work reported, req_event not re-armed.
        let b = dev.service_rx(&m, &mut ring).unwrap();
        assert_eq!((b.requests, b.budget_exhausted), (0, false));
        assert!(p.take_responses(&m).unwrap().is_empty());
        let f1 = frame(42, 9);
        let f2 = frame(1514, 3);
        assert!(dev.push_rx(&f1));
        assert!(dev.push_rx(&f2));
        let b = dev.service_rx(&m, &mut ring).unwrap();
        assert_eq!((b.requests, b.budget_exhausted), (2, false));
        let rsps = p.take_responses(&m).unwrap();
        let got: Vec<_> = rsps.iter().map(|r| (r.id, r.status, r.len)).collect();
        assert_eq!(got, vec![(0, 0, 42), (1, 0, 1514)]);
        let mut buf = vec![0u8; 42];
        m.read_slice(&mut buf, GuestAddress(BUFS)).unwrap();
        assert_eq!(buf, f1);
        let mut buf = vec![0u8; 1514];
        m.read_slice(&mut buf, GuestAddress(BUFS + 0x800)).unwrap();
        assert_eq!(buf, f2);
        assert_eq!(ring.consumed(), 2);
        assert_eq!(dev.rx_waiting(), 0);
    }

    #[test]
    fn a_guest_that_never_posts_buffers_gets_drops_not_growth() {
        let mut dev = NetDevice::new();
        let f = frame(100, 0);
        let mut n = 0u64;
        let taken = dev.pull_rx(&mut |buf| {
            n += 1;
            buf[..100].copy_from_slice(&f);
            Some(100)
        });
        // The source never runs dry: one pull is still bounded.
        assert_eq!(taken, SERVICE_FRAMES);
        assert_eq!(n, SERVICE_FRAMES);
        assert_eq!(dev.rx_waiting(), RX_QUEUE_FRAMES);
        assert_eq!(
            dev.stats().rx_dropped_no_buffer,
            SERVICE_FRAMES - RX_QUEUE_FRAMES as u64
        );
        // Hostile lengths from the host side.
        assert!(!dev.push_rx(&[0u8; 13]));
        assert!(!dev.push_rx(&[0u8; 1515]));
        // A source that claims 5000-byte frames forever: dropped, and bounded too.
        assert_eq!(dev.pull_rx(&mut |_| Some(5000)), SERVICE_FRAMES);
        assert_eq!(dev.stats().rx_dropped_len, 2 + SERVICE_FRAMES);
    }

    #[test]
    fn bad_rx_buffers_drop_their_frame_and_later_buffers_work() {
        let m = mem();
        let mut p = RxP::init(&m, RX, 4, 0).unwrap();
        let mut ring = NetRxRing::new(&m, RX, 0x1000).unwrap();
        let reqs = [(BUFS, 50, 1), (u64::MAX - 4, 1514, 2), (BUFS, 1514, 3)];
        for (addr, capacity, id) in reqs {
            p.push(&m, NetRxRequest { addr, capacity, id }).unwrap();
        }
        p.publish(&m).unwrap();
        let mut dev = NetDevice::new();
        for seed in 0..3 {
            assert!(dev.push_rx(&frame(60, seed)));
        }
        assert_eq!(dev.service_rx(&m, &mut ring).unwrap().requests, 3);
        let got: Vec<_> = p
            .take_responses(&m)
            .unwrap()
            .iter()
            .map(|r| (r.id, r.status, r.len))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Status::E2BIG as i64, 0),
                (2, Status::EFAULT as i64, 0),
                (3, 0, 60)
            ]
        );
        let mut buf = vec![0u8; 60];
        m.read_slice(&mut buf, GuestAddress(BUFS)).unwrap();
        assert_eq!(buf, frame(60, 2));
        assert_eq!(dev.stats().rx_dropped_bad_buffer, 2);
    }

    #[test]
    fn rx_ring_run_dry_re_arms_the_notification() {
        let m = mem();
        let mut p = RxP::init(&m, RX, 2, 0).unwrap();
        let mut ring = NetRxRing::new(&m, RX, 0x1000).unwrap();
        p.push(
            &m,
            NetRxRequest {
                addr: BUFS,
                capacity: 1514,
                id: 0,
            },
        )
        .unwrap();
        p.publish(&m).unwrap();
        let mut dev = NetDevice::new();
        for seed in 0..3 {
            dev.push_rx(&frame(64, seed));
        }
        let b = dev.service_rx(&m, &mut ring).unwrap();
        // One buffer, three frames: the buffers ran out, so no work is "left" for the
        // caller, and req_event asks for the next post.
        assert_eq!((b.requests, b.budget_exhausted), (1, false));
        let ev: u32 = m
            .load(GuestAddress(RX + offsets::REQ_EVENT), Ordering::Relaxed)
            .unwrap();
        assert_eq!(ev, 2);
        assert_eq!(dev.rx_waiting(), 2);
    }

    #[test]
    fn corrupt_rx_indices_break_the_ring() {
        let m = mem();
        RxP::init(&m, RX, 4, 0).unwrap();
        let mut ring = NetRxRing::new(&m, RX, 0x1000).unwrap();
        m.store(
            100u32,
            GuestAddress(RX + offsets::REQ_PROD),
            Ordering::Relaxed,
        )
        .unwrap();
        let mut dev = NetDevice::new();
        dev.push_rx(&frame(64, 0));
        assert!(matches!(
            dev.service_rx(&m, &mut ring),
            Err(RingError::Overrun { .. })
        ));
        let flags: u32 = m
            .load(GuestAddress(RX + offsets::HOST_FLAGS), Ordering::Relaxed)
            .unwrap();
        assert_eq!(flags & BROKEN, BROKEN);
        assert!(matches!(
            dev.service_rx(&m, &mut ring),
            Err(RingError::Broken)
        ));
        // The frame was not consumed by the broken ring.
        assert_eq!(dev.rx_waiting(), 1);
    }

    #[test]
    fn tx_service_is_bounded_against_a_guest_that_refills_without_pause() {
        let m = mem();
        m.write_slice(&frame(64, 0), GuestAddress(BUFS)).unwrap();
        let mut p = TxP::init(&m, TX, 1, 0).unwrap();
        let mut ring = NetTxRing::new(&m, TX, 0x1000).unwrap();
        p.push(
            &m,
            NetTxRequest {
                addr: BUFS,
                len: 64,
                id: 0,
            },
        )
        .unwrap();
        p.publish(&m).unwrap();
        let mut dev = NetDevice::new();
        let mut count = 0u32;
        // Each frame sent, the "guest" republishes slot 0 at once.
        let b = dev
            .service_tx(&m, &mut ring, &mut |_| {
                count += 1;
                m.store(
                    count + 1,
                    GuestAddress(TX + offsets::REQ_PROD),
                    Ordering::Release,
                )
                .unwrap();
            })
            .unwrap();
        assert_eq!(b.requests, SERVICE_FRAMES);
        assert_eq!(u64::from(count), SERVICE_FRAMES);
        assert!(b.budget_exhausted);
    }
}
