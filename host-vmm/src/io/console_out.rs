//! The console sink shared by the emulated UART and the PV console: bytes go to stdout or
//! into a capture buffer (tests and benchmarks compare the printed text exactly).
//!
//! # Stdout never blocks a guest-facing thread
//!
//! Stdout may be a pipe nobody reads. The vCPU and I/O threads therefore never write to
//! it: [`Console::write_bytes`] copies the bytes into a bounded buffer of
//! [`STDOUT_BUFFER`] bytes (allocated once, up front, so a confined thread never calls the
//! allocator for it) and wakes a writer thread with a condition variable (a `futex` wake,
//! allowed by both seccomp filters). The writer thread, `pvkit-console`, is started by
//! [`Console::stdout`] on the main thread before any vCPU exists and, when seccomp is on,
//! confines itself first thing with the console writer's filter
//! ([`ThreadKind::Console`]: `write` to stdout and stderr only, locks, memory); it is the
//! only thread that calls `write(1, …)`, and it never holds the buffer's lock while it does. When the buffer is full the bytes that do not fit are
//! dropped and counted ([`Console::dropped`]), and the guest's write still succeeds: the
//! console is lossy by design, never a way to stall the host.
//!
//! At the end of a run, [`Console::finish`] gives the writer a bounded time to empty the
//! buffer and counts what is still unwritten as dropped; nothing ever joins the writer (a
//! writer blocked on a full pipe is left behind and ends with the process).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::seccomp::{Confinement, ThreadKind};
use crate::runtime::sync::lock;

/// The most bytes a capture buffer keeps; later bytes are counted as dropped, so a guest
/// that prints forever cannot exhaust host memory.
pub const CAPTURE_LIMIT: usize = 64 << 20;

/// Bytes of guest output waiting for the stdout writer thread; more are dropped and counted.
pub const STDOUT_BUFFER: usize = 256 << 10;

/// How long [`Console::finish`] lets the writer thread drain the buffer at the end of a run.
pub const FINISH_GRACE: Duration = Duration::from_millis(500);

/// Bytes the writer thread takes out of the buffer per `write`: `PIPE_BUF`, so a write to
/// a pipe is all or nothing and a write still blocked when the run ends has put none of its
/// bytes in the pipe (the dropped count is then exact: written + dropped = offered).
const WRITE_CHUNK: usize = 4096;

/// The state shared by the writers (vCPU, I/O thread) and the writer thread.
#[derive(Debug)]
struct PipeState {
    /// Bytes accepted, not yet taken by the writer thread. Never grows past `capacity`.
    buf: VecDeque<u8>,
    /// [`STDOUT_BUFFER`] (smaller in unit tests).
    capacity: usize,
    /// Bytes the writer thread took out of `buf` and is writing now.
    in_flight: usize,
    /// Bytes dropped: buffer full, output failed, or not written by the end of the run.
    dropped: u64,
    /// Bytes the writer thread wrote.
    written: u64,
    /// No more bytes will come: the writer thread exits once `buf` is empty.
    closed: bool,
    /// The output failed (a closed stdout): later writes fail with this kind.
    failed: Option<io::ErrorKind>,
}

/// A bounded buffer drained by its own writer thread.
#[derive(Debug)]
struct Pipe {
    state: Mutex<PipeState>,
    /// Signalled when bytes arrive or the pipe closes (wakes the writer thread).
    ready: Condvar,
    /// Signalled when the writer thread finished a write (wakes [`Pipe::finish`]).
    progress: Condvar,
}

impl Pipe {
    /// A pipe of `capacity` bytes drained into `out` by a new thread, which applies
    /// `confinement` (if any) before it takes its first byte.
    fn spawn<W: Write + Send + 'static>(
        out: W,
        capacity: usize,
        confinement: Option<Confinement>,
    ) -> io::Result<Arc<Pipe>> {
        let pipe = Arc::new(Pipe {
            state: Mutex::new(PipeState {
                buf: VecDeque::with_capacity(capacity),
                capacity,
                in_flight: 0,
                dropped: 0,
                written: 0,
                closed: false,
                failed: None,
            }),
            ready: Condvar::new(),
            progress: Condvar::new(),
        });
        let p = Arc::clone(&pipe);
        std::thread::Builder::new()
            .name("pvkit-console".into())
            .spawn(move || {
                if let Some(c) = confinement {
                    if let Err(e) = c.apply() {
                        // Unreachable where the vCPU thread could be confined: the same
                        // kernel, the same kind of filter. Output then fails, loudly.
                        eprintln!("pvkit: console writer: {e}; no console output");
                        p.fail(io::ErrorKind::PermissionDenied);
                        return;
                    }
                }
                p.drain_into(out)
            })?;
        Ok(pipe)
    }

    /// Marks the output failed: every byte offered from now on is dropped and counted.
    fn fail(&self, kind: io::ErrorKind) {
        let mut s = lock(&self.state);
        let lost = s.buf.len() as u64;
        s.dropped = s.dropped.saturating_add(lost);
        s.buf.clear();
        s.failed = Some(kind);
        drop(s);
        self.progress.notify_all();
    }

    /// Takes what fits, drops and counts the rest. Never waits for the writer thread.
    fn push(&self, bytes: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.state);
        if let Some(kind) = s.failed {
            s.dropped = s.dropped.saturating_add(bytes.len() as u64);
            return Err(io::Error::new(kind, "console output failed"));
        }
        let room = s.capacity.saturating_sub(s.buf.len());
        let take = bytes.len().min(room);
        // No allocation: `buf` was created with `capacity` and never holds more.
        s.buf.extend(bytes.get(..take).unwrap_or_default());
        s.dropped = s.dropped.saturating_add((bytes.len() - take) as u64);
        drop(s);
        if take > 0 {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The writer thread: writes chunks out of the buffer, the lock released meanwhile,
    /// until the pipe is closed and empty or the output fails.
    fn drain_into<W: Write>(&self, mut out: W) {
        let mut chunk = vec![0u8; WRITE_CHUNK];
        loop {
            let n = {
                let mut s = lock(&self.state);
                while s.buf.is_empty() && !s.closed {
                    s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
                }
                if s.buf.is_empty() {
                    return;
                }
                let n = s.buf.len().min(chunk.len());
                for (dst, src) in chunk.iter_mut().zip(s.buf.drain(..n)) {
                    *dst = src;
                }
                s.in_flight = n;
                n
            };
            let r = out
                .write_all(chunk.get(..n).unwrap_or_default())
                .and_then(|()| out.flush());
            let mut s = lock(&self.state);
            s.in_flight = 0;
            let stop = match r {
                Ok(()) => {
                    s.written = s.written.saturating_add(n as u64);
                    false
                }
                Err(e) => {
                    let lost = n.saturating_add(s.buf.len()) as u64;
                    s.dropped = s.dropped.saturating_add(lost);
                    s.buf.clear();
                    s.failed = Some(e.kind());
                    true
                }
            };
            drop(s);
            self.progress.notify_all();
            if stop {
                return;
            }
        }
    }

    /// Closes the pipe and waits at most `grace` for the writer thread to empty it; what
    /// is still unwritten then is counted as dropped. Returns the bytes so given up.
    fn finish(&self, grace: Duration) -> u64 {
        let deadline = Instant::now() + grace;
        let mut s = lock(&self.state);
        s.closed = true;
        self.ready.notify_one();
        while !s.buf.is_empty() || s.in_flight > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self
                .progress
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let lost = s.buf.len().saturating_add(s.in_flight) as u64;
        s.buf.clear();
        s.in_flight = 0;
        s.dropped = s.dropped.saturating_add(lost);
        lost
    }

    /// Closes the pipe without waiting: the writer thread ends once the buffer is empty.
    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }
}

/// Stdout as the writer thread sees it: `write(1, …)` on the raw descriptor, so no lock
/// of Rust's `io::stdout()` is ever held while a write blocks.
struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid slice for the duration of the call; the kernel only
            // reads `buf.len()` bytes from it. Descriptor 1 is not owned by any Rust object
            // that could close it meanwhile; a closed fd 1 is an error, not UB.
            let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n.unsigned_abs());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
enum Sink {
    Stdout(Arc<Pipe>),
    Capture(Mutex<Capture>),
}

#[derive(Debug)]
struct Capture {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Drop for Sink {
    fn drop(&mut self) {
        // The last clone is gone: let the writer thread end once the buffer is empty.
        if let Sink::Stdout(pipe) = self {
            pipe.close();
        }
    }
}

/// A cloneable handle to the console output. Every clone writes to the same sink.
#[derive(Clone, Debug)]
pub struct Console {
    sink: Arc<Sink>,
}

impl Console {
    /// A console that writes to the process's stdout through a [`STDOUT_BUFFER`]-byte
    /// buffer and its own writer thread (see the module documentation). Call it on an
    /// unconfined thread: it starts that thread, which confines itself with the console
    /// writer's seccomp filter when `seccomp` is set.
    pub fn stdout(seccomp: bool) -> io::Result<Self> {
        let confinement =
            Confinement::when(seccomp, ThreadKind::Console).map_err(io::Error::other)?;
        Ok(Self {
            sink: Arc::new(Sink::Stdout(Pipe::spawn(
                RawStdout,
                STDOUT_BUFFER,
                confinement,
            )?)),
        })
    }

    /// A console whose (unconfined) writer thread writes to `out` through a buffer of
    /// `capacity` bytes.
    pub fn with_writer<W: Write + Send + 'static>(out: W, capacity: usize) -> io::Result<Self> {
        Ok(Self {
            sink: Arc::new(Sink::Stdout(Pipe::spawn(out, capacity, None)?)),
        })
    }

    /// A console that keeps everything written (up to [`CAPTURE_LIMIT`] bytes).
    pub fn capture() -> Self {
        Self {
            sink: Arc::new(Sink::Capture(Mutex::new(Capture {
                bytes: Vec::new(),
                dropped: 0,
            }))),
        }
    }

    /// Writes `bytes`, never waiting for the output: what does not fit in the buffer is
    /// dropped and counted ([`Console::dropped`]). An output error (a closed stdout) is
    /// returned by the writes after it, never fatal to the VM.
    pub fn write_bytes(&self, bytes: &[u8]) -> io::Result<()> {
        match &*self.sink {
            Sink::Stdout(pipe) => pipe.push(bytes),
            Sink::Capture(c) => {
                let mut c = lock(c);
                let room = CAPTURE_LIMIT.saturating_sub(c.bytes.len());
                let take = bytes.len().min(room);
                c.bytes
                    .extend_from_slice(bytes.get(..take).unwrap_or_default());
                c.dropped += (bytes.len() - take) as u64;
                Ok(())
            }
        }
    }

    /// The end of the run: gives the writer thread at most `grace` to write out what is
    /// buffered and returns the bytes it did not write in time (counted as dropped from
    /// then on). Never waits longer than `grace`; 0 for a capture console.
    pub fn finish(&self, grace: Duration) -> u64 {
        match &*self.sink {
            Sink::Stdout(pipe) => pipe.finish(grace),
            Sink::Capture(_) => 0,
        }
    }

    /// The captured bytes so far (empty for a stdout console).
    pub fn captured(&self) -> Vec<u8> {
        match &*self.sink {
            Sink::Stdout(_) => Vec::new(),
            Sink::Capture(c) => lock(c).bytes.clone(),
        }
    }

    /// Bytes dropped: the capture or stdout buffer was full, the output failed, or (after
    /// [`Console::finish`]) they were not written in time.
    pub fn dropped(&self) -> u64 {
        match &*self.sink {
            Sink::Stdout(pipe) => lock(&pipe.state).dropped,
            Sink::Capture(c) => lock(c).dropped,
        }
    }

    /// Bytes the stdout writer thread wrote so far (0 for a capture console).
    pub fn written(&self) -> u64 {
        match &*self.sink {
            Sink::Stdout(pipe) => lock(&pipe.state).written,
            Sink::Capture(_) => 0,
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
    use std::sync::mpsc;

    #[test]
    fn clones_share_the_capture() {
        let c = Console::capture();
        let mut d = c.clone();
        c.write_bytes(b"ab").unwrap();
        d.write_all(b"cd").unwrap();
        assert_eq!(c.captured(), b"abcd");
        assert_eq!(c.dropped(), 0);
        assert_eq!(c.finish(FINISH_GRACE), 0);
    }

    #[test]
    fn stdout_console_captures_nothing() {
        assert!(Console::stdout(false).unwrap().captured().is_empty());
    }

    /// An in-memory output whose writes block until the test opens the gate.
    struct Gated {
        gate: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            // Blocks until the test sends a token (or drops the sender: then it fails).
            self.gate
                .recv()
                .map_err(|_| io::Error::other("gate gone"))?;
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn gated(capacity: usize) -> (Console, mpsc::Sender<()>, Arc<Mutex<Vec<u8>>>) {
        let (tx, rx) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let c = Console::with_writer(
            Gated {
                gate: rx,
                out: Arc::clone(&out),
            },
            capacity,
        )
        .unwrap();
        (c, tx, out)
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_blocked_writer_never_blocks_the_guest_side() {
        let (c, tx, out) = gated(16);
        // The writer thread takes the first bytes and blocks in `write`.
        c.write_bytes(b"0123").unwrap();
        wait_until(
            "the writer took the first chunk",
            || matches!(&*c.sink, Sink::Stdout(p) if lock(&p.state).in_flight == 4),
        );
        // 10,000 more writes of 10 bytes, all while the writer is blocked: 16 fit.
        let t0 = Instant::now();
        for _ in 0..10_000 {
            c.write_bytes(b"abcdefghij").unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "writes waited: {:?}",
            t0.elapsed()
        );
        assert_eq!(c.dropped(), 100_000 - 16);
        assert!(out.lock().unwrap().is_empty());
        // Open the gate: the 4 in flight and the 16 buffered reach the output, in order.
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        wait_until("the writer drained", || out.lock().unwrap().len() == 20);
        assert_eq!(&out.lock().unwrap()[..], b"0123abcdefghijabcdef");
        assert_eq!(c.written(), 20);
        assert_eq!(c.finish(FINISH_GRACE), 0);
        assert_eq!(c.dropped(), 100_000 - 16);
    }

    #[test]
    fn finish_gives_up_after_the_grace_and_counts_the_loss() {
        let (c, _tx, out) = gated(64);
        c.write_bytes(&[b'x'; 100]).unwrap();
        assert_eq!(c.dropped(), 36);
        let t0 = Instant::now();
        // The writer is blocked on its first chunk forever (the gate never opens).
        assert_eq!(c.finish(Duration::from_millis(50)), 64);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(c.dropped(), 100);
        assert!(out.lock().unwrap().is_empty());
    }

    #[test]
    fn a_failed_output_is_an_error_and_counted() {
        let (c, tx, _out) = gated(64);
        drop(tx); // every write of the writer thread now fails
        c.write_bytes(b"abc").unwrap();
        wait_until("the writer failed", || c.write_bytes(b"").is_err());
        assert!(c.write_bytes(b"de").is_err());
        assert_eq!(c.dropped(), 5);
        assert_eq!(c.finish(FINISH_GRACE), 0);
    }

    #[test]
    fn stdout_writes_reach_the_writer_and_finish_returns_promptly() {
        let (c, tx, out) = gated(1024);
        for _ in 0..8 {
            tx.send(()).unwrap();
        }
        c.write_bytes(b"hello\n").unwrap();
        assert_eq!(c.finish(Duration::from_secs(10)), 0);
        assert_eq!(&out.lock().unwrap()[..], b"hello\n");
        assert_eq!(c.dropped(), 0);
    }
}
