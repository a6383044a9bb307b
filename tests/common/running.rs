//! A `pvkit run` child whose output the test reads as it comes ([`Running`]), and a free
//! loopback port for a migration target ([`free_port`]).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `pvkit` binary under test.
pub const PVKIT: &str = env!("CARGO_BIN_EXE_pvkit");
/// Wall-clock bound for waits (≥ 10× what they take on this machine).
pub const WAIT: Duration = Duration::from_secs(120);

/// A free loopback port (bound and released: the target binds it again at once).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `pvkit run` whose stdout and stderr lines arrive on channels as they are printed.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    err_lines: mpsc::Receiver<String>,
    err_seen: Vec<String>,
}

impl Running {
    /// Starts `pvkit ARGS`.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(PVKIT)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pvkit");
        let lines = super::line_channel(child.stdout.take().unwrap());
        let err_lines = super::line_channel(child.stderr.take().unwrap());
        Self {
            child,
            lines,
            seen: Vec::new(),
            err_lines,
            err_seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`.
    pub fn wait_for(&mut self, prefix: &str) {
        let t = Instant::now();
        while t.elapsed() < WAIT {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let hit = l.starts_with(prefix);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no line {prefix:?}; seen: {:?}", self.seen.last());
    }

    /// Waits until a `pvkit run --incoming` target listens (its stderr says so), so that a
    /// source started next cannot try to connect before the port is bound again.
    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !self
            .err_seen
            .iter()
            .any(|l| l.starts_with("pvkit: incoming migration: waiting on"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err_lines.recv_timeout(left) {
                Ok(l) => self.err_seen.push(l),
                Err(e) => panic!("the target never listened ({e}): {:?}", self.err_seen),
            }
        }
    }

    /// Sends SIGTERM (the run ends as after `--timeout`).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits for the process; all its stdout lines and its stderr.
    pub fn finish(mut self) -> (i32, Vec<String>, String) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The reader threads end with the pipes.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(l);
                }
                while let Ok(l) = self.err_lines.recv_timeout(Duration::from_secs(5)) {
                    self.err_seen.push(l);
                }
                let err: String = self.err_seen.iter().map(|l| format!("{l}\n")).collect();
                return (st.code().expect("exit status"), self.seen, err);
            }
            assert!(t.elapsed() < WAIT, "pvkit did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
