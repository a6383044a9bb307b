//! A `pvkit run --api` VM whose console lines (stdout) arrive on a channel and whose control
//! API the test drives ([`ApiVm`]); stderr goes to the test's.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pvkit_vmm::api::client::send;
use pvkit_vmm::api::request::{Request, Response};

/// The `pvkit` binary under test.
const PVKIT: &str = env!("CARGO_BIN_EXE_pvkit");

/// A running `pvkit run --api SOCKET …`.
pub struct ApiVm {
    /// The process.
    pub child: Child,
    /// Its API socket.
    pub api: PathBuf,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Bound of every wait ([`ApiVm::wait_for`], the socket's appearance).
    wait: Duration,
}

impl ApiVm {
    /// `pvkit run --timeout TIMEOUT_S --api API ARGS`; returns once the socket is bound (the
    /// VMM binds it before the guest runs). Waits are bounded by `wait`.
    pub fn start(api: PathBuf, timeout_s: u32, args: &[&OsStr], wait: Duration) -> Self {
        let mut child = Command::new(PVKIT)
            .arg("run")
            .arg("--timeout")
            .arg(timeout_s.to_string())
            .arg("--api")
            .arg(&api)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pvkit");
        let lines = super::line_channel(child.stdout.take().unwrap());
        let deadline = Instant::now() + wait;
        while !api.exists() {
            assert!(Instant::now() < deadline, "no API socket {}", api.display());
            if let Some(status) = child.try_wait().unwrap() {
                panic!("pvkit {args:?} ended ({status}) before serving its API");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            api,
            lines,
            seen: Vec::new(),
            wait,
        }
    }

    /// Waits until the guest printed a line starting with `prefix`.
    pub fn wait_for(&mut self, prefix: &str) {
        let deadline = Instant::now() + self.wait;
        while !self.seen.iter().any(|l| l.starts_with(prefix)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(e) => panic!(
                    "no `{prefix}` from the guest ({e}); last lines {:?}",
                    &self.seen[self.seen.len().saturating_sub(5)..]
                ),
            }
        }
    }

    /// One API request and its reply.
    pub fn api(&self, req: &Request) -> Response {
        send(&self.api, req).expect("API reply")
    }

    /// SIGTERM, then every console line the guest printed.
    pub fn terminate(self) -> Vec<String> {
        self.terminate_with_code().1
    }

    /// SIGTERM, then the exit status and every console line the guest printed.
    pub fn terminate_with_code(self) -> (i32, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }

    /// Waits for the process to end; its exit status and every console line.
    pub fn wait_exit(mut self) -> (i32, Vec<String>) {
        let status = self.child.wait().unwrap();
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());
        (status.code().unwrap_or(-1), seen)
    }
}

impl Drop for ApiVm {
    /// A failed test leaves no VM running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
