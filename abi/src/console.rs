//! The PV console: one hypercall per buffer, or a request ring.

use crate::assert_layout;

/// Largest buffer accepted by one [`crate::Hypercall::ConsoleWrite`] or one console ring
/// request. Longer writes fail with `E2BIG`; guests split them.
pub const MAX_WRITE: u64 = 64 * 1024;

/// A console ring request: write `len` bytes at guest-physical `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleRequest {
    /// Guest-physical address of the bytes.
    pub addr: u64,
    /// Number of bytes (at most [`MAX_WRITE`]).
    pub len: u32,
    /// Echoed in the response.
    pub id: u32,
}
assert_layout!(ConsoleRequest, size = 16, addr @ 0, len @ 8, id @ 12);

/// A console ring response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleResponse {
    /// A [`crate::Status`] raw value.
    pub status: i64,
    /// The request's `id`.
    pub id: u32,
    /// Bytes written.
    pub written: u32,
}
assert_layout!(ConsoleResponse, size = 16, status @ 0, id @ 8, written @ 12);
