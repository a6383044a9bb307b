//! The shared request/response ring, its indices, and the notification-suppression rules.
//!
//! A ring is one region of guest memory registered with
//! [`crate::Hypercall::RegisterRegion`] as a device's queue ([`QueueId`]: device class and
//! queue index; a device may have several). Its layout:
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
//! (write the queue's [`QueueId`] to the doorbell port) only if [`need_notify`]`(new, old, req_event)` and the host is not
//! polling (`host_flags & HOST_POLLING == 0`). This is Xen's `req_event` hold-off, the
//! same rule as virtio's `EVENT_IDX`: one notification per batch, none while the host is
//! already working.
//!
//! **Consuming requests (host).** Process every request up to `req_prod`, publish each
//! response (slot, release fence, `rsp_prod`), then set `req_event = consumed + 1` and
//! re-read `req_prod` to close the race with a guest that published meanwhile.
//!
//! **Responses (guest).** The guest polls `rsp_prod`. With
//! [`crate::cpuid::Features::RING_IRQ`] it may instead bind the queue to an interrupt
//! ([`crate::Hypercall::QueueInterrupt`]) and use `rsp_event` symmetrically: to be
//! interrupted at the next response it stores `rsp_event = rsp_cons + 1`, then a full fence,
//! then re-reads `rsp_prod` (responses published meanwhile may or may not have raised the
//! interrupt: consume them). The host, after publishing a run of responses that moved
//! `rsp_prod` from `old` to `new`, issues a full fence, reads `rsp_event` and raises the
//! interrupt only if [`need_notify`]`(new, old, rsp_event)`: one interrupt per batch, none
//! while the guest has not re-armed. `rsp_event` starts at `rsp_prod + 1` (armed).

use crate::assert_layout;
use crate::call::DeviceClass;

/// The first GSI (IOAPIC pin) a queue may be bound to with
/// [`crate::Hypercall::QueueInterrupt`]: the pins above the 16 ISA IRQs.
pub const RING_IRQ_GSI_FIRST: u32 = 16;
/// How many GSIs, from [`RING_IRQ_GSI_FIRST`], queues may be bound to (pins 16–23 of the
/// 24-pin IOAPIC).
pub const RING_IRQ_GSIS: u32 = 8;

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
    /// Guest: notify me when `rsp_prod` passes this value (reserved in 2.0).
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

/// A queue (a ring) of a device: the device's class and the queue's index within it.
/// Multi-queue devices number their queues from 0 (the PV network device will have `rx`
/// and `tx`).
///
/// On the wire it is one `u32`, `device << 16 | queue` ([`QueueId::to_u32`]): the value a
/// guest writes to the doorbell port [`crate::ports::DOORBELL`] to notify the queue, and
/// arg0 of [`crate::Hypercall::RingKick`]. Queue indices are below [`PAGE_REGION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    /// The device.
    pub device: DeviceClass,
    /// The queue's index within the device (`< PAGE_REGION`).
    pub queue: u16,
}

/// A device page that is not a ring (e.g. the PV clock page): the device's class and the
/// page's index within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageId {
    /// The device.
    pub device: DeviceClass,
    /// The page's index within the device (`< PAGE_REGION`).
    pub page: u16,
}

/// Bit 15 of a region id's index: set for a device page ([`PageId`]), clear for a queue
/// ([`QueueId`]).
pub const PAGE_REGION: u16 = 0x8000;

/// The console's queue: [`crate::console::ConsoleRequest`] / [`crate::console::ConsoleResponse`].
pub const CONSOLE_QUEUE: QueueId = QueueId::new(DeviceClass::Console, 0);
/// The block device's queue: [`crate::block::BlockRequest`] / [`crate::block::BlockResponse`].
pub const BLOCK_QUEUE: QueueId = QueueId::new(DeviceClass::Block, 0);

/// [`CONSOLE_QUEUE`]'s wire value (doorbell value, `RegisterRegion` arg0; a literal for the
/// C header).
pub const CONSOLE_QUEUE_ID: u32 = 0x1_0000;
/// [`BLOCK_QUEUE`]'s wire value.
pub const BLOCK_QUEUE_ID: u32 = 0x2_0000;
/// The network device's transmit queue: [`crate::net::NetTxRequest`] /
/// [`crate::net::NetTxResponse`].
pub const NET_TX_QUEUE: QueueId = QueueId::new(DeviceClass::Net, 0);
/// The network device's receive queue: [`crate::net::NetRxRequest`] (empty buffers) /
/// [`crate::net::NetRxResponse`] (frames).
pub const NET_RX_QUEUE: QueueId = QueueId::new(DeviceClass::Net, 1);
/// [`NET_TX_QUEUE`]'s wire value.
pub const NET_TX_QUEUE_ID: u32 = 0x3_0000;
/// [`NET_RX_QUEUE`]'s wire value.
pub const NET_RX_QUEUE_ID: u32 = 0x3_0001;
const _: () = assert!(NET_TX_QUEUE_ID == NET_TX_QUEUE.to_u32());
const _: () = assert!(NET_RX_QUEUE_ID == NET_RX_QUEUE.to_u32());
const _: () = assert!(CONSOLE_QUEUE_ID == CONSOLE_QUEUE.to_u32());
const _: () = assert!(BLOCK_QUEUE_ID == BLOCK_QUEUE.to_u32());

impl QueueId {
    /// Queue `queue` of `device`.
    pub const fn new(device: DeviceClass, queue: u16) -> Self {
        Self { device, queue }
    }

    /// The wire form: `device << 16 | queue` (the doorbell value).
    pub const fn to_u32(self) -> u32 {
        ((self.device as u32) << 16) | self.queue as u32
    }

    /// Decodes a wire value; `Err(v)` for an unknown class or a page index.
    pub fn from_u32(v: u32) -> Result<Self, u32> {
        let device = DeviceClass::try_from((v >> 16) as u16).map_err(|_| v)?;
        let queue = v as u16;
        if queue & PAGE_REGION != 0 {
            return Err(v);
        }
        Ok(Self { device, queue })
    }
}

impl PageId {
    /// Page `page` of `device`.
    pub const fn new(device: DeviceClass, page: u16) -> Self {
        Self { device, page }
    }
}

/// What [`crate::Hypercall::RegisterRegion`] registers (arg0): a device's queue or one of
/// its pages. On the wire `device << 16 | index`, with [`PAGE_REGION`] set in the index for
/// a page; the upper 32 bits of arg0 are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegionId {
    /// A ring.
    Queue(QueueId),
    /// A page that is not a ring.
    Page(PageId),
}

impl RegionId {
    /// The wire form (arg0 of `RegisterRegion`).
    pub const fn to_u64(self) -> u64 {
        match self {
            RegionId::Queue(q) => q.to_u32() as u64,
            RegionId::Page(p) => {
                (((p.device as u32) << 16) | (p.page as u32 & 0x7fff) | PAGE_REGION as u32) as u64
            }
        }
    }

    /// Decodes arg0 of `RegisterRegion`; `Err(v)` for an unknown class or non-zero upper
    /// bits.
    pub fn from_u64(v: u64) -> Result<Self, u64> {
        let w = u32::try_from(v).map_err(|_| v)?;
        let device = DeviceClass::try_from((w >> 16) as u16).map_err(|_| v)?;
        let index = w as u16;
        Ok(if index & PAGE_REGION != 0 {
            RegionId::Page(PageId::new(device, index & !PAGE_REGION))
        } else {
            RegionId::Queue(QueueId::new(device, index))
        })
    }

    /// The device the region belongs to.
    pub const fn device(self) -> DeviceClass {
        match self {
            RegionId::Queue(q) => q.device,
            RegionId::Page(p) => p.device,
        }
    }
}

/// `RegisterRegion` flags (arg3): the region belongs to the calling vCPU. The host keeps
/// one such region per vCPU (e.g. each vCPU's clock page); without the flag the region is
/// the VM's. A device that has no per-vCPU form of a region answers `EINVAL`.
pub const REGION_PER_VCPU: u64 = 1 << 8;
/// `RegisterRegion` flags (arg3): the bits that hold a queue's [`Transport`] (0 for pages).
pub const REGION_TRANSPORT_MASK: u64 = 0xff;
/// `RegisterRegion` flags (arg3): every bit this version defines; others are `EINVAL`.
pub const REGION_FLAGS_KNOWN: u64 = REGION_TRANSPORT_MASK | REGION_PER_VCPU;

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
    fn queue_and_region_ids_round_trip() {
        assert_eq!(CONSOLE_QUEUE.to_u32(), 0x1_0000);
        assert_eq!(BLOCK_QUEUE.to_u32(), 0x2_0000);
        let net_tx = QueueId::new(DeviceClass::Net, 1);
        assert_eq!(QueueId::from_u32(net_tx.to_u32()), Ok(net_tx));
        assert_eq!(QueueId::from_u32(0x7_0000), Err(0x7_0000)); // no class 7
        assert_eq!(QueueId::from_u32(0x1_8000), Err(0x1_8000)); // a page, not a queue
        for r in [
            RegionId::Queue(BLOCK_QUEUE),
            RegionId::Queue(net_tx),
            RegionId::Page(PageId::new(DeviceClass::Cpu, 0)),
            RegionId::Page(PageId::new(DeviceClass::Cpu, 0x7fff)),
        ] {
            assert_eq!(RegionId::from_u64(r.to_u64()), Ok(r));
        }
        assert_eq!(
            RegionId::Page(PageId::new(DeviceClass::Cpu, 0)).to_u64(),
            0x4_8000
        );
        assert_eq!(RegionId::from_u64(1 << 32), Err(1 << 32));
        assert_eq!(RegionId::from_u64(0x10_0000), Err(0x10_0000));
    }

    #[test]
    fn transport_decoding() {
        assert_eq!(Transport::try_from(3), Ok(Transport::HostPoll));
        assert_eq!(Transport::try_from(4), Err(4));
        assert_eq!(Transport::try_from(0), Err(0));
    }
}
