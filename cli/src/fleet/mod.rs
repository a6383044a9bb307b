//! `pvkit fleet N` and `pvkit bench --only fleet`: many guests on one host.
//!
//! [`run`] boots `N` guests at once, each a `pvkit run` process of its own ([`member`]),
//! their NE2000s on TAP devices that are ports of one bridge in a network namespace pvkit
//! creates ([`network`]). Each guest runs the built-in kernel's `net=ring` mode: it
//! (optionally uses and frees memory, then) says `ring: ready` and waits. Once all are
//! ready the host measures what each VM costs it ([`memory`]), then starts a message around
//! the ring host → 1 → 2 → … → N → host in which each guest adds its id; the last guest
//! and then the host check the sum. Every guest must exit 0.
//!
//! Measured: the start rate (guests ready per second of wall time from the first spawn to
//! the last ready), each VM process's PSS, the part of it that is guest RAM the guest
//! touched, the difference (the VMM's own overhead), the growth of the host's kernel memory
//! per VM (KVM's objects and page tables, the TAP devices, thread stacks: not in any
//! process's PSS), and the ring's time.

pub mod bench;
pub mod ksm;
pub mod member;
pub mod memory;
pub mod network;
pub mod report;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use member::FleetNic;
use member::{Event, Member, MemberSpec};
use network::{FleetNet, Token};

/// Errors that keep a fleet from starting (a fleet that starts reports its failures in
/// [`FleetOutcome::problems`]).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The namespace, bridge or host socket could not be set up.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// Reading the host's memory state failed.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
}

/// A fleet to run.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The `pvkit` binary to run each guest with.
    pub pvkit: PathBuf,
    /// How many guests.
    pub vms: u32,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// MiB each guest touches and stops using before it is ready (0: none).
    pub touch_mib: u64,
    /// Guests give the touched memory back through the balloon.
    pub give_back: bool,
    /// Bound on the whole run (start, ring, exit).
    pub timeout: Duration,
    /// Confine the VMM threads with seccomp.
    pub seccomp: bool,
    /// Guest RAM `MADV_MERGEABLE` (`pvkit run --mergeable`); when KSM runs, the host waits
    /// for it to settle before it measures.
    pub mergeable: bool,
    /// The guests' NIC.
    pub nic: FleetNic,
}

impl FleetConfig {
    /// `vms` guests of `mem_mib` MiB run by `pvkit`, no memory workload, 300 s bound.
    pub fn new(pvkit: PathBuf, vms: u32, mem_mib: u64) -> Self {
        Self {
            pvkit,
            vms,
            mem_mib,
            touch_mib: 0,
            give_back: false,
            timeout: Duration::from_secs(300),
            seccomp: true,
            mergeable: false,
            nic: FleetNic::Pv,
        }
    }
}

/// One guest's results.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VmResult {
    /// Its id in the ring.
    pub id: u32,
    /// Its process id.
    pub pid: u32,
    /// Seconds from its spawn to `ring: ready`, if it got there.
    pub ready_s: Option<f64>,
    /// Its process's PSS in KiB while all were ready.
    pub pss_kib: Option<u64>,
    /// Its guest RAM's PSS in KiB (what the guest touched, as the host backs it).
    pub guest_ram_kib: Option<u64>,
    /// Its exit status (`None`: killed by a signal or not collected).
    pub exit: Option<i32>,
    /// Its console.
    pub console: String,
    /// Its stderr.
    pub stderr: String,
}

impl VmResult {
    /// PSS minus guest RAM: the VMM's own memory.
    pub fn overhead_kib(&self) -> Option<u64> {
        Some(self.pss_kib?.saturating_sub(self.guest_ram_kib?))
    }
}

/// A fleet run's results.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FleetOutcome {
    /// Guests.
    pub vms: u32,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// `touch=` MiB.
    pub touch_mib: u64,
    /// `give_back`.
    pub give_back: bool,
    /// Seconds from the first spawn to the last guest ready.
    pub start_s: f64,
    /// Guests ready per second over [`Self::start_s`].
    pub start_rate: f64,
    /// The growth of the host's kernel memory ([`memory::KERNEL_FIELDS`]) per VM in KiB
    /// once all were ready (host-wide, so other processes add noise).
    pub kernel_per_vm_kib: Option<u64>,
    /// Whether KSM was running (`None`: no KSM in this kernel).
    pub ksm_running: Option<bool>,
    /// Guest RAM was `MADV_MERGEABLE`.
    pub mergeable: bool,
    /// The guests' NIC.
    pub nic: FleetNic,
    /// KSM's `pages_sharing` when the host measured (with `mergeable` and KSM running).
    pub ksm_pages_sharing: Option<u64>,
    /// The message the host got back from the ring.
    pub ring: Option<Token>,
    /// Seconds from starting the ring to its message coming back.
    pub ring_s: Option<f64>,
    /// Guests that exited with status 0.
    pub clean_exits: u32,
    /// Per guest.
    pub members: Vec<VmResult>,
    /// Everything that went wrong; empty when the run passed.
    pub problems: Vec<String>,
}

impl FleetOutcome {
    /// Every guest started, the ring verified and every guest exited 0.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    fn collect(&self, f: impl Fn(&VmResult) -> Option<u64>) -> Vec<u64> {
        self.members.iter().filter_map(f).collect()
    }

    /// Mean PSS per VM in KiB.
    pub fn mean_pss_kib(&self) -> Option<u64> {
        mean(&self.collect(|m| m.pss_kib))
    }

    /// Mean guest-RAM PSS per VM in KiB.
    pub fn mean_guest_ram_kib(&self) -> Option<u64> {
        mean(&self.collect(|m| m.guest_ram_kib))
    }

    /// Mean VMM overhead per VM in KiB.
    pub fn mean_overhead_kib(&self) -> Option<u64> {
        mean(&self.collect(VmResult::overhead_kib))
    }

    /// Largest VMM overhead of one VM in KiB.
    pub fn max_overhead_kib(&self) -> Option<u64> {
        self.collect(VmResult::overhead_kib).into_iter().max()
    }

    /// Median seconds from spawn to ready.
    pub fn median_ready_s(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.members.iter().filter_map(|m| m.ready_s).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// What one VM costs the host in KiB: its mean PSS plus its share of the kernel memory
    /// the fleet added.
    pub fn host_kib_per_vm(&self) -> Option<u64> {
        Some(self.mean_pss_kib()? + self.kernel_per_vm_kib.unwrap_or(0))
    }

    /// How many VMs of this run's cost ([`Self::host_kib_per_vm`]) fit in `budget_mib` MiB.
    pub fn vms_in_budget(&self, budget_mib: u64) -> Option<u64> {
        let per_vm = self.host_kib_per_vm()?.max(1);
        Some(budget_mib * 1024 / per_vm)
    }
}

fn mean(v: &[u64]) -> Option<u64> {
    (!v.is_empty()).then(|| v.iter().sum::<u64>() / v.len() as u64)
}

/// Runs a fleet (see the module docs). Needs root (namespace, bridge, TAP devices).
pub fn run(cfg: &FleetConfig) -> Result<FleetOutcome, FleetError> {
    if cfg.vms == 0 || cfg.vms > network::MAX_VMS {
        return Err(FleetError::Config(format!(
            "a fleet has 1 to {} guests, not {}",
            network::MAX_VMS,
            cfg.vms
        )));
    }
    if cfg.give_back && cfg.touch_mib == 0 {
        return Err(FleetError::Config(
            "give-back needs a touch size (the memory to give back)".into(),
        ));
    }
    let net = FleetNet::create()?;
    let spec = MemberSpec {
        mem_mib: cfg.mem_mib,
        touch_mib: cfg.touch_mib,
        give_back: cfg.give_back,
        timeout_s: cfg.timeout.as_secs_f64(),
        seccomp: cfg.seccomp,
        members: cfg.vms,
        mergeable: cfg.mergeable,
        nic: cfg.nic,
    };
    let mut out = FleetOutcome {
        vms: cfg.vms,
        mem_mib: cfg.mem_mib,
        touch_mib: cfg.touch_mib,
        give_back: cfg.give_back,
        ksm_running: ksm::running(),
        mergeable: cfg.mergeable,
        nic: cfg.nic,
        members: (1..=cfg.vms)
            .map(|id| VmResult {
                id,
                ..VmResult::default()
            })
            .collect(),
        ..FleetOutcome::default()
    };
    let kernel_before = memory::kernel_kib()?;
    let deadline = Instant::now() + cfg.timeout;
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let mut members: Vec<Member> = Vec::with_capacity(cfg.vms as usize);
    for id in 1..=cfg.vms {
        match Member::spawn(&cfg.pvkit, id, &spec, net.netns_name(), tx.clone()) {
            Ok(m) => members.push(m),
            Err(e) => {
                out.problems.push(format!(
                    "cannot start guest {id} ({}): {e}",
                    cfg.pvkit.display()
                ));
                break;
            }
        }
    }
    drop(tx);
    if out.problems.is_empty() {
        wait_ready(&rx, &members, &mut out, deadline);
    }
    if out.problems.is_empty() {
        out.start_s = t0.elapsed().as_secs_f64();
        out.start_rate = f64::from(cfg.vms) / out.start_s.max(1e-9);
        if cfg.mergeable && out.ksm_running == Some(true) {
            // KSM merges at its own pace (pages_to_scan per sleep_millisecs): measure once
            // it has made its passes over the guests' memory.
            out.ksm_pages_sharing = Some(ksm::wait_settled(KSM_POLL, deadline));
        }
        measure(&members, cfg.mem_mib << 20, &mut out);
        if let Ok(after) = memory::kernel_kib() {
            out.kernel_per_vm_kib = Some(after.saturating_sub(kernel_before) / u64::from(cfg.vms));
        }
        ring(&net, &mut members, deadline, &mut out);
    }
    finish(members, deadline, &mut out);
    Ok(out)
}

/// Waits until every member said ready; a member whose console closes first, the deadline
/// or a stop signal is a problem.
fn wait_ready(
    rx: &mpsc::Receiver<Event>,
    members: &[Member],
    out: &mut FleetOutcome,
    deadline: Instant,
) {
    let mut ready = 0;
    while ready < members.len() {
        if pvkit_vmm::runtime::signals::pending().is_some() {
            out.problems
                .push("stopped by a signal while the guests started".into());
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out.problems.push(format!(
                "only {ready} of {} guests were ready before the time limit",
                members.len()
            ));
            return;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(Event::Ready(id, at)) => {
                if let (Some(m), Some(r)) = (
                    members.get(id as usize - 1),
                    out.members.get_mut(id as usize - 1),
                ) {
                    if r.ready_s.is_none() {
                        r.ready_s = Some(at.duration_since(m.spawned).as_secs_f64());
                        ready += 1;
                    }
                }
            }
            Ok(Event::Closed(id)) => {
                let was_ready = out
                    .members
                    .get(id as usize - 1)
                    .is_some_and(|r| r.ready_s.is_some());
                if !was_ready {
                    out.problems
                        .push(format!("guest {id} ended before it was ready"));
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                out.problems.push("every guest's console closed".into());
                return;
            }
        }
    }
}

/// Reads each member's PSS and guest-RAM PSS.
fn measure(members: &[Member], ram_bytes: u64, out: &mut FleetOutcome) {
    for (m, r) in members.iter().zip(out.members.iter_mut()) {
        r.pid = m.pid();
        match memory::pss_kib(r.pid) {
            Ok(k) => r.pss_kib = Some(k),
            Err(e) => out.problems.push(format!("guest {}: {e}", r.id)),
        }
        match memory::process_guest_ram_pss_kib(r.pid, ram_bytes) {
            Ok(k) => r.guest_ram_kib = Some(k),
            Err(e) => out.problems.push(format!("guest {}: {e}", r.id)),
        }
    }
}

/// How often the host looks at KSM's progress.
const KSM_POLL: Duration = Duration::from_millis(500);

/// How long the host still waits for the ring's message once every guest has exited.
const RING_GRACE: Duration = Duration::from_secs(2);

/// Starts the ring and checks the message that comes back; gives up at the deadline, or
/// [`RING_GRACE`] after the last guest exited.
fn ring(net: &FleetNet, members: &mut [Member], deadline: Instant, out: &mut FleetOutcome) {
    let vms = out.vms;
    let t = Instant::now();
    if let Err(e) = net.start_ring() {
        out.problems.push(format!("cannot start the ring: {e}"));
        return;
    }
    let mut all_gone: Option<Instant> = None;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = net.ring_result(vms, left.min(Duration::from_millis(500)));
        if !matches!(r, Ok(None)) || left.is_zero() {
            break r;
        }
        if pvkit_vmm::runtime::signals::pending().is_some() {
            break Ok(None);
        }
        let running = members
            .iter_mut()
            .any(|m| matches!(m.child.try_wait(), Ok(None)));
        let gone = *all_gone.get_or_insert_with(Instant::now);
        if running {
            all_gone = None;
        } else if gone.elapsed() >= RING_GRACE {
            break Ok(None);
        }
    };
    match result {
        Ok(Some(token)) => {
            out.ring_s = Some(t.elapsed().as_secs_f64());
            out.ring = Some(token);
            let want = Token {
                hops: vms,
                sum: u64::from(vms) * (u64::from(vms) + 1) / 2,
            };
            if token != want {
                out.problems
                    .push(format!("the ring returned {token:?}, expected {want:?}"));
            }
        }
        Ok(None) => out
            .problems
            .push("the ring's message did not come back in time".into()),
        Err(e) => out.problems.push(format!("the ring: {e}")),
    }
}

/// Waits for every member to exit (killing the ones still running at the deadline, or
/// all of them after a problem), collects statuses and consoles, checks the exits.
fn finish(mut members: Vec<Member>, deadline: Instant, out: &mut FleetOutcome) {
    let failed = !out.problems.is_empty();
    if failed {
        for m in &mut members {
            let _ = m.child.kill();
        }
    }
    loop {
        let running = members
            .iter_mut()
            .map(|m| matches!(m.child.try_wait(), Ok(None)))
            .filter(|&r| r)
            .count();
        if running == 0 {
            break;
        }
        if Instant::now() >= deadline {
            out.problems.push(format!(
                "{running} guests still ran at the time limit: killed"
            ));
            for m in &mut members {
                if let Ok(None) = m.child.try_wait() {
                    let _ = m.child.kill();
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for m in members {
        let id = m.id;
        let (status, console, stderr) = m.finish();
        let Some(r) = out.members.get_mut(id as usize - 1) else {
            continue;
        };
        r.exit = status.ok().and_then(|s| s.code());
        r.console = console;
        r.stderr = stderr;
    }
    out.clean_exits = out.members.iter().filter(|r| r.exit == Some(0)).count() as u32;
    if !failed {
        for r in &out.members {
            if r.exit != Some(0) {
                out.problems.push(format!(
                    "guest {} exited with {:?}: {}{}",
                    r.id,
                    r.exit,
                    r.console.lines().last().unwrap_or(""),
                    r.stderr.lines().last().unwrap_or("")
                ));
            }
        }
        let last = out.members.last();
        if !last.is_some_and(|r| r.console.contains("ring: verified")) {
            out.problems
                .push("the last guest did not verify the ring's sum".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(pss: u64, ram: u64) -> VmResult {
        VmResult {
            pss_kib: Some(pss),
            guest_ram_kib: Some(ram),
            ..VmResult::default()
        }
    }

    #[test]
    fn density_divides_the_budget_by_pss_plus_kernel_memory() {
        let o = FleetOutcome {
            members: vec![vm(1000, 200), vm(3000, 400)],
            kernel_per_vm_kib: Some(48),
            ..FleetOutcome::default()
        };
        assert_eq!(o.mean_pss_kib(), Some(2000));
        assert_eq!(o.mean_overhead_kib(), Some(1700));
        assert_eq!(o.max_overhead_kib(), Some(2600));
        assert_eq!(o.host_kib_per_vm(), Some(2048));
        assert_eq!(o.vms_in_budget(4096), Some(2048));
        assert_eq!(FleetOutcome::default().vms_in_budget(4096), None);
    }
}
