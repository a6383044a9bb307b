//! The PV console driver: one `ConsoleWrite` hypercall per buffer.
//!
//! A buffer of up to [`MAX_WRITE`] bytes costs exactly one VM exit, whatever its length;
//! longer buffers are split into `MAX_WRITE`-sized calls. An empty buffer costs nothing.
//! Bytes are passed through untouched (no `\n` translation).

use crate::hypercall;
use pvkit_abi::Status;

/// The largest buffer one hypercall carries ([`pvkit_abi::console::MAX_WRITE`]).
pub const MAX_WRITE: usize = pvkit_abi::console::MAX_WRITE as usize;

/// The pvkit PV console. Stateless: any number of them may exist.
#[derive(Clone, Copy, Debug, Default)]
pub struct PvConsole;

impl PvConsole {
    /// The console.
    pub const fn new() -> Self {
        PvConsole
    }

    /// Writes all of `bytes`: one hypercall per [`MAX_WRITE`] bytes (one in the common
    /// case). Returns the number of bytes written, or the host's status on failure. A host
    /// that accepts nothing without an error gets `EIO` rather than an endless loop.
    #[inline]
    pub fn write(&self, bytes: &[u8]) -> Result<usize, Status> {
        // Fast path, about a dozen instructions around the `out`: one call that the host
        // completes in full. A long buffer or a short write continues in the loop.
        if !bytes.is_empty() && bytes.len() <= MAX_WRITE {
            match hypercall::console_write(bytes)? {
                n if n == bytes.len() => return Ok(n),
                0 => return Err(Status::EIO),
                n => return self.write_rest(bytes, n),
            }
        }
        self.write_rest(bytes, 0)
    }

    /// The general case of [`PvConsole::write`]: `done` bytes are already written.
    #[inline(never)]
    fn write_rest(&self, bytes: &[u8], mut done: usize) -> Result<usize, Status> {
        while done < bytes.len() {
            match hypercall::console_write(&bytes[done..])? {
                0 => return Err(Status::EIO),
                n => done += n,
            }
        }
        Ok(done)
    }
}

impl crate::writer::ByteSink for PvConsole {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Status> {
        self.write(bytes).map(drop)
    }
}

/// Unbuffered: one hypercall per formatted piece. Wrap it in a
/// [`crate::writer::BufferedWriter`] to get one per line.
impl core::fmt::Write for PvConsole {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write(s.as_bytes())
            .map(drop)
            .map_err(|_| core::fmt::Error)
    }
}
