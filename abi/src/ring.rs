//! The shared request/response ring, its indices, and the notification-suppression rules.
//!
//! A ring is one region of guest memory registered with
//! [`crate::Hypercall::RegisterRegion`] (the kind names the device). Its layout:
//!
//! ```text
//! offset 0                         RingHeader (64 bytes)
//! offset 64                        size × Request  (the device's request type)
//! offset 64 + size*sizeof(Request) size × Response (the device's response type)
//! ```
//!
//! `size` is a power of two between 1 and [`MAX_RING_SIZE`]. Indices are free-running
//! `u32` counters; slot = index mod `size`. The guest owns `req_prod` and `rsp_event`; the
//! host owns `req_event`, `rsp_prod` and `host_flags`. The host keeps its consumer index
//! private and never trusts the guest's indices: if `req_prod - consumed > size`, the ring
//! is corrupt and the host stops servicing it (the guest sees `host_flags & BROKEN`).
//! The host copies each request out of the ring once before validating it, so a guest that
//! changes a slot after publishing it cannot race the host's checks.
//!
//! **Producing requests (guest).** Write the requests into their slots, then a release
//! fence, then store the new `req_prod`, then a full fence, then read `req_event`. Notify
//! (ring the doorbell) only if [`need_notify`]`(new, old, req_event)` and the host is not
//! polling (`host_flags & HOST_POLLING == 0`). This is Xen's `req_event` hold-off, the
//! same rule as virtio's `EVENT_IDX`: one notification per batch, none while the host is
//! already working.
//!
//! **Consuming requests (host).** Process every request up to `req_prod`, publish each
//! response (slot, release fence, `rsp_prod`), then set `req_event = consumed + 1` and
//! re-read `req_prod` to close the race with a guest that published meanwhile.
//!
//! **Responses (guest).** The guest polls `rsp_prod` (or uses `rsp_event` symmetrically when
//! the host offers completion interrupts; v1 hosts do not interrupt).

use crate::assert_layout;

/// Largest ring size the host accepts (slots). Bounds host memory and work per batch.
pub const MAX_RING_SIZE: u32 = 256;

/// Size of [`RingHeader`]; request slots start at this offset.
pub const HEADER_SIZE: usize = 64;

/// `host_flags`: a host thread polls `req_prod`; the guest must not ring the doorbell.
pub const HOST_POLLING: u32 = 1 << 0;
/// `host_flags`: the host found the ring corrupt and stopped servicing it.
pub const BROKEN: u32 = 1 << 1;

/// The ring header, at offset 0 of the region.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingHeader {
    /// Guest: number of requests published (free-running).
    pub req_prod: u32,
    /// Host: notify me when `req_prod` passes this value.
    pub req_event: u32,
    /// Host: number of responses published (free-running).
    pub rsp_prod: u32,
    /// Guest: notify me when `rsp_prod` passes this value (reserved in v1).
    pub rsp_event: u32,
    /// Guest, before registration: number of slots (power of two, ≤ [`MAX_RING_SIZE`]).
    pub size: u32,
    /// Host: [`HOST_POLLING`], [`BROKEN`].
    pub host_flags: u32,
    /// Zero.
    pub reserved: [u32; 10],
}
assert_layout!(
    RingHeader,
    size = HEADER_SIZE,
    req_prod @ 0,
    req_event @ 4,
    rsp_prod @ 8,
    rsp_event @ 12,
    size @ 16,
    host_flags @ 20,
    reserved @ 24,
);

/// Byte offsets of the header fields, for volatile/atomic access by either side.
pub mod offsets {
    /// `RingHeader::req_prod`.
    pub const REQ_PROD: u64 = 0;
    /// `RingHeader::req_event`.
    pub const REQ_EVENT: u64 = 4;
    /// `RingHeader::rsp_prod`.
    pub const RSP_PROD: u64 = 8;
    /// `RingHeader::rsp_event`.
    pub const RSP_EVENT: u64 = 12;
    /// `RingHeader::size`.
    pub const SIZE: u64 = 16;
    /// `RingHeader::host_flags`.
    pub const HOST_FLAGS: u64 = 20;
}

/// The Xen/virtio event-index rule: after moving a producer index from `old` to `new`, the
/// other side asked to be notified if its `event` index lies in `(old, new]`.
/// Wrap-around safe.
pub const fn need_notify(new: u32, old: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Total bytes of a ring of `size` slots with the given request and response sizes, or
/// `None` if `size` is not a valid ring size or the total does not fit in `usize`.
pub const fn ring_bytes(size: u32, request_size: usize, response_size: usize) -> Option<usize> {
    if !is_valid_size(size) {
        return None;
    }
    let Some(slot) = request_size.checked_add(response_size) else {
        return None;
    };
    let Some(slots) = (size as usize).checked_mul(slot) else {
        return None;
    };
    HEADER_SIZE.checked_add(slots)
}

/// Byte offset of request slot `index mod size`. `size` must be a valid ring size
/// ([`is_valid_size`]); for any other value the result is meaningless but the function
/// does not panic (arithmetic wraps).
pub const fn request_offset(size: u32, index: u32, request_size: usize) -> usize {
    let slot = (index & size.wrapping_sub(1)) as usize;
    HEADER_SIZE.wrapping_add(slot.wrapping_mul(request_size))
}

/// Byte offset of response slot `index mod size`. Same precondition as [`request_offset`].
pub const fn response_offset(
    size: u32,
    index: u32,
    request_size: usize,
    response_size: usize,
) -> usize {
    let slot = (index & size.wrapping_sub(1)) as usize;
    HEADER_SIZE
        .wrapping_add((size as usize).wrapping_mul(request_size))
        .wrapping_add(slot.wrapping_mul(response_size))
}

/// Whether `size` is a power of two in `1..=MAX_RING_SIZE`.
pub const fn is_valid_size(size: u32) -> bool {
    size != 0 && size <= MAX_RING_SIZE && size.is_power_of_two()
}

/// Which device a ring belongs to. Also selects the ring's doorbell port
/// ([`crate::ports::doorbell`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingId {
    /// Console ring: [`crate::console::ConsoleRequest`] / [`crate::console::ConsoleResponse`].
    Console = 0,
    /// Block ring: [`crate::block::BlockRequest`] / [`crate::block::BlockResponse`].
    Block = 1,
}

impl TryFrom<u32> for RingId {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(RingId::Console),
            1 => Ok(RingId::Block),
            other => Err(other),
        }
    }
}

/// The kind of a shared-memory region ([`crate::Hypercall::RegisterRegion`] arg0).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// The console ring.
    ConsoleRing = 1,
    /// The block ring.
    BlockRing = 2,
    /// The PV clock page ([`crate::clock::PvClock`]), 4 KiB.
    Clock = 3,
}

impl TryFrom<u64> for RegionKind {
    type Error = u64;

    fn try_from(v: u64) -> Result<Self, u64> {
        match v {
            1 => Ok(RegionKind::ConsoleRing),
            2 => Ok(RegionKind::BlockRing),
            3 => Ok(RegionKind::Clock),
            other => Err(other),
        }
    }
}

impl RegionKind {
    /// The ring this region holds, if it is a ring.
    pub const fn ring(self) -> Option<RingId> {
        match self {
            RegionKind::ConsoleRing => Some(RingId::Console),
            RegionKind::BlockRing => Some(RingId::Block),
            RegionKind::Clock => None,
        }
    }
}

/// How the host learns that a ring has new requests (arg3 of
/// [`crate::Hypercall::RegisterRegion`] for a ring).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// The doorbell port exits to the VMM, which services the ring before the vCPU resumes
    /// (responses are ready when the `out` instruction completes). One exit per batch.
    Doorbell = 1,
    /// The doorbell port is an ioeventfd: KVM signals a host I/O thread in the kernel and
    /// the vCPU continues at once, with no exit to userspace. The guest polls `rsp_prod`.
    DoorbellEventfd = 2,
    /// A host I/O thread polls `req_prod`; the host sets [`HOST_POLLING`] and the guest
    /// never rings. Zero exits; costs a host core while the ring is busy.
    HostPoll = 3,
}

impl TryFrom<u64> for Transport {
    type Error = u64;

    fn try_from(v: u64) -> Result<Self, u64> {
        match v {
            1 => Ok(Transport::Doorbell),
            2 => Ok(Transport::DoorbellEventfd),
            3 => Ok(Transport::HostPoll),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rule_matches_xen() {
        // The host asked to hear about request 5 (req_event = 5).
        assert!(need_notify(5, 4, 5));
        assert!(need_notify(8, 4, 5));
        assert!(!need_notify(4, 3, 5));
        // Already notified for this batch: event behind old.
        assert!(!need_notify(9, 6, 5));
    }

    #[test]
    fn notify_rule_survives_wrap_around() {
        let old = u32::MAX - 1;
        let new = old.wrapping_add(4);
        assert!(need_notify(new, old, u32::MAX));
        assert!(need_notify(new, old, 1));
        assert!(!need_notify(new, old, 3));
        assert!(!need_notify(new, old, old));
    }

    #[test]
    fn slot_offsets_wrap() {
        assert_eq!(request_offset(8, 9, 16), HEADER_SIZE + 16);
        assert_eq!(
            response_offset(8, u32::MAX, 16, 32),
            HEADER_SIZE + 8 * 16 + 7 * 32
        );
        assert_eq!(ring_bytes(8, 16, 32), Some(64 + 8 * 48));
    }

    #[test]
    fn offset_math_never_panics() {
        // Fuzzing finding F-3 (crates/fuzz/FINDINGS.md).
        let _ = request_offset(0, 5, usize::MAX);
        let _ = response_offset(0, u32::MAX, usize::MAX, usize::MAX);
        assert_eq!(ring_bytes(MAX_RING_SIZE, usize::MAX, 1), None);
        assert_eq!(
            ring_bytes(MAX_RING_SIZE, usize::MAX / 2, usize::MAX / 2),
            None
        );
    }

    #[test]
    fn ring_sizes() {
        assert!(is_valid_size(1));
        assert!(is_valid_size(MAX_RING_SIZE));
        assert!(!is_valid_size(0));
        assert!(!is_valid_size(3));
        assert!(!is_valid_size(MAX_RING_SIZE * 2));
        assert_eq!(ring_bytes(0, 16, 16), None);
    }

    #[test]
    fn enum_decoding() {
        assert_eq!(RingId::try_from(1), Ok(RingId::Block));
        assert_eq!(RingId::try_from(7), Err(7));
        assert_eq!(RegionKind::try_from(3), Ok(RegionKind::Clock));
        assert_eq!(RegionKind::try_from(0), Err(0));
        assert_eq!(Transport::try_from(3), Ok(Transport::HostPoll));
        assert_eq!(Transport::try_from(4), Err(4));
    }
}
