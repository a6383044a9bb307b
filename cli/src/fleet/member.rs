//! One guest of the fleet: a `pvkit run` child process of its own (one VMM per VM, as
//! Firecracker runs one process per microVM: a VMM crash, a seccomp kill or a guest that
//! runs away takes down one VM only, each VM's memory is one process's to measure and to
//! reclaim, and the kernel schedules the VMs as ordinary processes), with threads that
//! read its console (stdout) and its stderr.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Instant;

use pvkit_vmm::runtime::seccomp::{Confinement, ThreadKind};

use super::network::{guest_ip, guest_mac, HOST_IP};

/// The console line a ring member prints once it waits for the message.
pub const READY_PREFIX: &str = "ring: ready";
/// Most console or stderr bytes kept per guest (the rest is counted, not kept).
pub const MAX_KEPT: usize = 64 * 1024;

/// What a member's reader threads report.
#[derive(Debug)]
pub enum Event {
    /// Member `id` printed [`READY_PREFIX`] at this time.
    Ready(u32, Instant),
    /// Member `id`'s console closed (its process is ending).
    Closed(u32),
}

/// The NIC each guest gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetNic {
    /// The PV NIC (`pvkit run --nic pv`), driven with `pvnet=irq`: TX ring with doorbell,
    /// RX completion interrupt, the guest halts while it waits.
    #[default]
    Pv,
    /// The emulated NE2000 (`--nic ne2000`), by interrupt.
    Ne2000,
}

/// How to start the members.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// `touch=` MiB (0: none).
    pub touch_mib: u64,
    /// `give_back`.
    pub give_back: bool,
    /// `pvkit run --timeout` in seconds.
    pub timeout_s: f64,
    /// Confine the VMM threads with seccomp.
    pub seccomp: bool,
    /// The fleet's size.
    pub members: u32,
    /// `pvkit run --mergeable`.
    pub mergeable: bool,
    /// The NIC.
    pub nic: FleetNic,
}

/// A running member.
#[derive(Debug)]
pub struct Member {
    /// Its id, 1..=members.
    pub id: u32,
    /// Its process.
    pub child: Child,
    /// When it was spawned.
    pub spawned: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// The `pvkit run` arguments of member `id` in namespace `netns`.
pub fn run_args(id: u32, spec: &MemberSpec, netns: &str) -> Vec<String> {
    let next = if id == spec.members {
        HOST_IP
    } else {
        guest_ip(id + 1)
    };
    let mut a: Vec<String> = vec![
        "run".into(),
        "--mem".into(),
        spec.mem_mib.to_string(),
        "--timeout".into(),
        spec.timeout_s.to_string(),
        "--net".into(),
        "tap".into(),
        "--netns".into(),
        netns.into(),
        "--bridge".into(),
        super::network::BRIDGE.into(),
        "--mac".into(),
        guest_mac(id),
        "--nic".into(),
        match spec.nic {
            FleetNic::Pv => "pv",
            FleetNic::Ne2000 => "ne2000",
        }
        .into(),
    ];
    if !spec.seccomp {
        a.push("--no-seccomp".into());
    }
    if spec.mergeable {
        a.push("--mergeable".into());
    }
    a.extend([
        "--".into(),
        "net=ring".into(),
        format!("ip={}", guest_ip(id)),
        format!("peer={next}"),
        format!("id={id}"),
        format!("members={}", spec.members),
    ]);
    if spec.nic == FleetNic::Pv {
        a.push("pvnet=irq".into());
    }
    if spec.touch_mib > 0 {
        a.push(format!("touch={}", spec.touch_mib));
        if spec.give_back {
            a.push("give_back".into());
        }
    }
    a
}

/// Reads `r` to the end, keeping at most [`MAX_KEPT`] bytes; for the console, reports the
/// ready line and the end on `events`. The thread first applies `confinement` (the output
/// reader's seccomp filter): what it reads is the guest's console.
fn reader(
    r: impl Read + Send + 'static,
    console: Option<(u32, Sender<Event>)>,
    confinement: Option<Confinement>,
) -> std::io::Result<JoinHandle<String>> {
    std::thread::Builder::new()
        .name("pvkit-fleet-rd".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Some(c) = confinement {
                if let Err(e) = c.apply() {
                    // The pipe is left unread: the member counts as ended, never unconfined.
                    if let Some((id, tx)) = console {
                        let _ = tx.send(Event::Closed(id));
                    }
                    return format!("pvkit fleet: {e}");
                }
            }
            let mut kept = String::new();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                if let Some((id, tx)) = &console {
                    if text.starts_with(READY_PREFIX) {
                        let _ = tx.send(Event::Ready(*id, Instant::now()));
                    }
                }
                if kept.len() + text.len() <= MAX_KEPT {
                    kept.push_str(&text);
                }
            }
            if let Some((id, tx)) = console {
                let _ = tx.send(Event::Closed(id));
            }
            kept
        })
}

impl Member {
    /// Spawns member `id` of `spec` from the `pvkit` binary `pvkit`.
    pub fn spawn(
        pvkit: &Path,
        id: u32,
        spec: &MemberSpec,
        netns: &str,
        events: Sender<Event>,
    ) -> std::io::Result<Self> {
        let confinement = Confinement::when(spec.seccomp, ThreadKind::OutputReader)
            .map_err(std::io::Error::other)?;
        let spawned = Instant::now();
        let mut child = Command::new(pvkit)
            .args(run_args(id, spec, netns))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .map(|o| reader(o, Some((id, events)), confinement.clone()));
        let err = child.stderr.take().map(|e| reader(e, None, confinement));
        let (stdout, stderr) = match (out.transpose(), err.transpose()) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Self {
            id,
            child,
            spawned,
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process and its readers; returns its status, console and stderr.
    pub fn finish(mut self) -> (std::io::Result<ExitStatus>, String, String) {
        let status = self.child.wait();
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        let console = join(self.stdout.take());
        let stderr = join(self.stderr.take());
        (status, console, stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_member_sends_to_the_host_and_the_others_to_the_next() {
        let spec = MemberSpec {
            mem_mib: 64,
            touch_mib: 0,
            give_back: false,
            timeout_s: 60.0,
            seccomp: true,
            members: 3,
            mergeable: false,
            nic: FleetNic::Ne2000,
        };
        let a = run_args(1, &spec, "ns").join(" ");
        assert!(a.contains("--mac 52:54:00:88:00:01 --nic ne2000"), "{a}");
        let p = run_args(
            1,
            &MemberSpec {
                nic: FleetNic::Pv,
                ..spec.clone()
            },
            "ns",
        )
        .join(" ");
        assert!(
            p.contains("--nic pv") && p.ends_with("members=3 pvnet=irq"),
            "{p}"
        );
        assert!(
            a.ends_with("-- net=ring ip=10.88.0.11 peer=10.88.0.12 id=1 members=3"),
            "{a}"
        );
        let c = run_args(3, &spec, "ns").join(" ");
        assert!(
            c.ends_with("ip=10.88.0.13 peer=10.88.0.1 id=3 members=3"),
            "{c}"
        );
        let d = run_args(
            2,
            &MemberSpec {
                touch_mib: 96,
                give_back: true,
                ..spec
            },
            "ns",
        )
        .join(" ");
        assert!(d.ends_with("members=3 touch=96 give_back"), "{d}");
    }
}
