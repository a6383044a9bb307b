//! The [`NetBackend`] trait every host network backend implements, its counters and limits.

use std::io;
use std::os::fd::RawFd;

/// The MTU every pvkit NIC and backend uses: the largest IP packet in one frame.
pub const MTU: usize = 1500;
/// Length of an Ethernet header (destination MAC, source MAC, EtherType); no 802.1Q tag.
pub const ETH_HEADER_LEN: usize = 14;
/// The largest frame a backend accepts or delivers: [`MTU`] plus the Ethernet header
/// (no FCS: neither the TAP device nor the guest NICs carry it).
pub const MAX_FRAME_LEN: usize = MTU + ETH_HEADER_LEN;
/// The smallest frame a backend accepts: a bare Ethernet header.
pub const MIN_FRAME_LEN: usize = ETH_HEADER_LEN;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Longer than [`MAX_FRAME_LEN`].
    Oversize,
    /// Shorter than [`MIN_FRAME_LEN`].
    Undersize,
    /// The backend's queue (or the TAP device's) was full.
    QueueFull,
    /// The backend reported an error (the TAP device is down, a write failed).
    BackendError,
}

/// What [`NetBackend::send`] did with a frame. Neither variant is an error for the guest: a
/// dropped frame is a lost packet, as on a real wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// The backend took the frame.
    Sent,
    /// The backend dropped the frame (and counted it).
    Dropped(DropReason),
}

/// Frame, byte and drop counters of a backend. "tx" is the guest's transmit direction
/// (guest → backend, [`NetBackend::send`]); "rx" is the guest's receive direction
/// (backend → guest, [`NetBackend::recv`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the backend took from the guest.
    pub tx_frames: u64,
    /// Bytes of those frames (Ethernet header included).
    pub tx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (Ethernet header included).
    pub rx_bytes: u64,
    /// Frames dropped because they were longer than [`MAX_FRAME_LEN`] (either direction).
    pub dropped_oversize: u64,
    /// Frames dropped because they were shorter than [`MIN_FRAME_LEN`] (either direction).
    pub dropped_undersize: u64,
    /// Frames dropped because a queue was full.
    pub dropped_queue_full: u64,
    /// Frames dropped because the backend failed to take them.
    pub dropped_backend_error: u64,
}

impl NetCounters {
    /// Counts one drop for `reason`.
    pub fn count_drop(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Oversize => &mut self.dropped_oversize,
            DropReason::Undersize => &mut self.dropped_undersize,
            DropReason::QueueFull => &mut self.dropped_queue_full,
            DropReason::BackendError => &mut self.dropped_backend_error,
        };
        *c = c.saturating_add(1);
    }

    /// Counts one frame of `len` bytes taken from the guest.
    pub fn count_tx(&mut self, len: usize) {
        self.tx_frames = self.tx_frames.saturating_add(1);
        self.tx_bytes = self.tx_bytes.saturating_add(len as u64);
    }

    /// Counts one frame of `len` bytes delivered to the guest.
    pub fn count_rx(&mut self, len: usize) {
        self.rx_frames = self.rx_frames.saturating_add(1);
        self.rx_bytes = self.rx_bytes.saturating_add(len as u64);
    }

    /// Total frames dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        self.dropped_oversize
            .saturating_add(self.dropped_undersize)
            .saturating_add(self.dropped_queue_full)
            .saturating_add(self.dropped_backend_error)
    }
}

/// The length check every backend applies to a frame before anything else.
pub fn check_frame_len(len: usize) -> Result<(), DropReason> {
    if len > MAX_FRAME_LEN {
        Err(DropReason::Oversize)
    } else if len < MIN_FRAME_LEN {
        Err(DropReason::Undersize)
    } else {
        Ok(())
    }
}

/// Errors of [`NetBackend::recv`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The receive buffer is smaller than [`MAX_FRAME_LEN`]; pass a buffer of at least that
    /// many bytes (no frame was consumed).
    #[error(
        "receive buffer of {len} bytes is smaller than the {MAX_FRAME_LEN}-byte maximum frame"
    )]
    BufferTooSmall {
        /// Length of the buffer that was passed.
        len: usize,
    },
    /// Reading from the backend's device failed.
    #[error("network backend read failed: {0}")]
    Io(#[from] io::Error),
}

/// The host end of a guest NIC. Every method is non-blocking.
pub trait NetBackend: Send {
    /// Hands one frame from the guest to the backend. Never blocks and never queues without
    /// bound: when the frame is malformed in length or the backend cannot take it now, the
    /// frame is dropped, counted, and the reason returned.
    fn send(&mut self, frame: &[u8]) -> TxOutcome;

    /// Copies the next frame for the guest into `buf` and returns its length, or `Ok(None)`
    /// when none is waiting. `buf` must hold at least [`MAX_FRAME_LEN`] bytes. Frames from
    /// the backend that are oversize or undersize are dropped and counted, never delivered.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError>;

    /// A file descriptor that becomes readable when [`recv`](Self::recv) may have a frame,
    /// for the VMM's epoll loop; `None` when frames appear only as a result of
    /// [`send`](Self::send) (poll `recv` after sending).
    fn raw_fd(&self) -> Option<RawFd>;

    /// The counters so far.
    fn counters(&self) -> NetCounters;

    /// The MTU of the link: [`MTU`].
    fn mtu(&self) -> usize {
        MTU
    }
}
