//! The PV block device: requests carried by [`crate::Hypercall::BlockIo`] or the block ring.

use crate::assert_layout;

/// Bytes per sector. Offsets and lengths are in these units or multiples of them.
pub const SECTOR_SIZE: u64 = 512;
/// Most segments in one request.
pub const MAX_SEGMENTS: usize = 8;
/// Most bytes one request may move (all segments together).
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// A block operation.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockOp {
    /// Read `sector..` into the segments, in order.
    Read = 1,
    /// Write the segments, in order, to `sector..`.
    Write = 2,
    /// Make every completed write durable (fdatasync on the host). No segments.
    Flush = 3,
}

impl TryFrom<u32> for BlockOp {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(BlockOp::Read),
            2 => Ok(BlockOp::Write),
            3 => Ok(BlockOp::Flush),
            other => Err(other),
        }
    }
}

/// One guest buffer of a request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockSegment {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length in bytes: a non-zero multiple of [`SECTOR_SIZE`].
    pub len: u32,
    /// Zero.
    pub reserved: u32,
}
assert_layout!(BlockSegment, size = 16, addr @ 0, len @ 8, reserved @ 12);

/// A block request. The segments are contiguous on disk starting at `sector`.
///
/// The host rejects with `EINVAL` a bad `op`, `nr_segments` of 0 for reads and writes,
/// a segment length that is zero or not a multiple of [`SECTOR_SIZE`]; with `E2BIG` more
/// than [`MAX_SEGMENTS`] segments or more than [`MAX_REQUEST_BYTES`]; with `ERANGE` a range
/// past the end of the disk; with `EFAULT` a segment outside guest RAM; with `EPERM` a write
/// to a read-only disk; with `EIO`/`ENOSPC` a host I/O failure. Nothing is written to the
/// disk unless every check passed. A flush ignores `sector` and the segments; `reserved`
/// fields are ignored in v1 (guests must zero them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockRequest {
    /// Echoed in the response.
    pub id: u64,
    /// A [`BlockOp`] value.
    pub op: u32,
    /// Valid entries in `segments`.
    pub nr_segments: u32,
    /// First sector.
    pub sector: u64,
    /// The buffers.
    pub segments: [BlockSegment; MAX_SEGMENTS],
}
assert_layout!(
    BlockRequest,
    size = 24 + 16 * MAX_SEGMENTS,
    id @ 0,
    op @ 8,
    nr_segments @ 12,
    sector @ 16,
    segments @ 24,
);

/// A block ring response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockResponse {
    /// The request's `id`.
    pub id: u64,
    /// A [`crate::Status`] raw value; read it typed with [`BlockResponse::status`].
    pub status: i64,
    /// Bytes transferred.
    pub bytes: u64,
}
assert_layout!(BlockResponse, size = 24, id @ 0, status @ 8, bytes @ 16);

impl BlockResponse {
    /// The response's status, typed. A value that is not a [`crate::Status`] (a broken or
    /// newer host) is an error carrying the raw value, never a panic.
    pub fn status(&self) -> Result<crate::Status, crate::status::UnknownStatus> {
        crate::Status::try_from(self.status as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_status_is_typed() {
        let mut r = BlockResponse::default();
        assert_eq!(r.status(), Ok(crate::Status::Ok));
        r.status = -5;
        assert_eq!(r.status(), Ok(crate::Status::EIO));
        r.status = -9999;
        assert_eq!(
            r.status(),
            Err(crate::status::UnknownStatus(-9999i64 as u64))
        );
    }

    #[test]
    fn op_decoding() {
        assert_eq!(BlockOp::try_from(1), Ok(BlockOp::Read));
        assert_eq!(BlockOp::try_from(3), Ok(BlockOp::Flush));
        assert_eq!(BlockOp::try_from(0), Err(0));
        assert_eq!(BlockOp::try_from(4), Err(4));
    }
}
