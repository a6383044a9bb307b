//! The byte-sink trait both consoles implement, and a fixed-buffer formatter on top of it.
//!
//! Formatting (`write!`) calls `write_str` once per literal piece and per argument. On the
//! PV console each `write_str` would be one hypercall — one VM exit. [`BufferedWriter`]
//! collects the pieces in a stack buffer and hands the device one write per buffer-full, so
//! a formatted line costs one exit (if it fits in the buffer). On the UART buffering changes
//! nothing: the cost is per byte either way.

use core::fmt;
use pvkit_abi::Status;

/// A device that accepts whole buffers of bytes.
pub trait ByteSink {
    /// Writes all of `bytes`, or fails with the device's status.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Status>;
}

impl<S: ByteSink + ?Sized> ByteSink for &mut S {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Status> {
        (**self).write_all(bytes)
    }
}

/// A [`fmt::Write`] adapter that buffers up to `N` bytes before writing to a [`ByteSink`].
///
/// The buffer is flushed when it would overflow, by [`BufferedWriter::flush`], and on drop
/// (errors on drop are dropped with it; call `flush` to see them). A single piece longer
/// than the buffer goes to the sink directly, unsplit.
pub struct BufferedWriter<S: ByteSink, const N: usize> {
    sink: S,
    buf: [u8; N],
    len: usize,
    error: Option<Status>,
}

impl<S: ByteSink, const N: usize> BufferedWriter<S, N> {
    /// An empty buffer in front of `sink` (pass `&mut sink` to keep ownership).
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            buf: [0; N],
            len: 0,
            error: None,
        }
    }

    /// Bytes currently buffered.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes out the buffered bytes (nothing if empty). Returns the first error seen by
    /// this writer, including errors of earlier implicit flushes.
    pub fn flush(&mut self) -> Result<(), Status> {
        if self.len != 0 {
            let r = self.sink.write_all(&self.buf[..self.len]);
            self.len = 0;
            if let Err(e) = r {
                self.error.get_or_insert(e);
            }
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Status> {
        if bytes.len() > N - self.len {
            if self.len != 0 {
                let r = self.sink.write_all(&self.buf[..self.len]);
                self.len = 0;
                r?;
            }
            if bytes.len() >= N {
                return self.sink.write_all(bytes);
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

impl<S: ByteSink, const N: usize> fmt::Write for BufferedWriter<S, N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes()).map_err(|e| {
            self.error.get_or_insert(e);
            fmt::Error
        })
    }
}

impl<S: ByteSink, const N: usize> Drop for BufferedWriter<S, N> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl ByteSink for Calls {
        fn write_all(&mut self, bytes: &[u8]) -> Result<(), Status> {
            self.0.push(bytes.to_vec());
            Ok(())
        }
    }

    struct Failing;

    impl ByteSink for Failing {
        fn write_all(&mut self, _: &[u8]) -> Result<(), Status> {
            Err(Status::EFAULT)
        }
    }

    #[test]
    fn a_formatted_line_is_one_write() {
        let mut sink = Calls::default();
        {
            let mut w = BufferedWriter::<_, 64>::new(&mut sink);
            let version = "0.1.0";
            writeln!(w, "pvkit {version} ({}.{})", 1, 0).unwrap();
        }
        assert_eq!(sink.0, [b"pvkit 0.1.0 (1.0)\n".to_vec()]);
    }

    #[test]
    fn overflow_flushes_and_long_pieces_go_straight_through() {
        let mut sink = Calls::default();
        let mut w = BufferedWriter::<_, 4>::new(&mut sink);
        w.write_str("ab").unwrap();
        w.write_str("cde").unwrap(); // does not fit: "ab" flushed, "cde" buffered
        w.write_str("0123456789").unwrap(); // longer than the buffer: "cde", then direct
        w.write_str("x").unwrap();
        w.flush().unwrap();
        w.flush().unwrap(); // empty: no call
        drop(w);
        let calls: Vec<&[u8]> = sink.0.iter().map(|v| v.as_slice()).collect();
        assert_eq!(calls, [&b"ab"[..], b"cde", b"0123456789", b"x"]);
    }

    #[test]
    fn errors_are_kept_until_flush() {
        let mut w = BufferedWriter::<_, 4>::new(Failing);
        assert!(w.write_str("0123456789").is_err());
        assert_eq!(w.flush(), Err(Status::EFAULT));
        assert_eq!(w.flush(), Ok(()));
    }
}
