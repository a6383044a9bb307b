//! The console sink shared by the emulated UART and the PV console: bytes go to stdout or
//! into a capture buffer (tests and benchmarks compare the printed text exactly).

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

/// The most bytes a capture buffer keeps; later bytes are counted as dropped, so a guest
/// that prints forever cannot exhaust host memory.
pub const CAPTURE_LIMIT: usize = 64 << 20;

#[derive(Debug)]
enum Sink {
    Stdout,
    Capture { bytes: Vec<u8>, dropped: u64 },
}

/// A cloneable handle to the console output. Every clone writes to the same sink.
#[derive(Clone, Debug)]
pub struct Console {
    sink: Arc<Mutex<Sink>>,
}

impl Console {
    /// A console that writes to the process's stdout.
    pub fn stdout() -> Self {
        Self {
            sink: Arc::new(Mutex::new(Sink::Stdout)),
        }
    }

    /// A console that keeps everything written (up to [`CAPTURE_LIMIT`] bytes).
    pub fn capture() -> Self {
        Self {
            sink: Arc::new(Mutex::new(Sink::Capture {
                bytes: Vec::new(),
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sink> {
        crate::sync::lock(&self.sink)
    }

    /// Writes `bytes`. Output errors (a closed stdout) are returned, never fatal to the VM.
    pub fn write_bytes(&self, bytes: &[u8]) -> io::Result<()> {
        match &mut *self.lock() {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::Capture {
                bytes: buf,
                dropped,
            } => {
                let room = CAPTURE_LIMIT.saturating_sub(buf.len());
                let take = bytes.len().min(room);
                buf.extend_from_slice(bytes.get(..take).unwrap_or_default());
                *dropped += (bytes.len() - take) as u64;
                Ok(())
            }
        }
    }

    /// The captured bytes so far (empty for a stdout console).
    pub fn captured(&self) -> Vec<u8> {
        match &*self.lock() {
            Sink::Stdout => Vec::new(),
            Sink::Capture { bytes, .. } => bytes.clone(),
        }
    }

    /// Bytes dropped because the capture buffer was full.
    pub fn dropped(&self) -> u64 {
        match &*self.lock() {
            Sink::Stdout => 0,
            Sink::Capture { dropped, .. } => *dropped,
        }
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_capture() {
        let c = Console::capture();
        let mut d = c.clone();
        c.write_bytes(b"ab").unwrap();
        d.write_all(b"cd").unwrap();
        assert_eq!(c.captured(), b"abcd");
        assert_eq!(c.dropped(), 0);
    }

    #[test]
    fn stdout_console_captures_nothing() {
        assert!(Console::stdout().captured().is_empty());
    }
}
