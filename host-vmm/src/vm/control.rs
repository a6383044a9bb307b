//! Pause, resume and snapshot of a running VM ([`VmControl`]), for the control API.
//!
//! # Pausing at a clean point
//! [`VmControl::pause`] sets the VM's `pause_requested` flag and kicks vCPU 0's thread out
//! of `KVM_RUN` (the watchdog's signal). An interrupted `KVM_RUN` has completed any port or
//! MMIO access the previous exit left pending (KVM finishes it on entry, before it notices
//! the signal or `immediate_exit`), so at that [`Exit::Interrupted`](crate::vstate::vcpu::Exit)
//! the vCPU's registers are exactly the guest's: the run loop returns, and the thread parks
//! its [`Vcpu`] in the [`PauseGate`] and waits. While parked, the controller reads (or, for a
//! snapshot, captures) the vCPU's state through the gate, on its own thread: the vCPU
//! thread's seccomp filter allows none of the `KVM_GET_*` state ioctls. [`VmControl::resume`]
//! clears the flag; the vCPU thread takes its `Vcpu` back and re-enters the guest. A pause
//! costs the guest one `Interrupted` exit in the ledger.
//!
//! A VM stopping while paused (watchdog, signal) ends the wait: the thread takes the vCPU
//! back and stops as usual. Only single-vCPU VMs can be paused (the APs have no gate yet).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::machine::Vm;
use crate::devices::pv::balloon::BalloonStats;
use crate::exit::ledger::LedgerSnapshot;
use crate::runtime::sync::lock;
use crate::snapshot::capture::{
    capture_vcpu, capture_vm, save_ledger, write_snapshot, CaptureError, DeviceHandles,
    SnapshotStats,
};
use crate::snapshot::state::{DiskInfo, KernelInfo, VmState};
use crate::vstate::vcpu::Vcpu;

/// How long [`VmControl::pause`] waits for the vCPU to reach a clean point.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the vCPU is kicked again while a pause waits.
const REKICK: Duration = Duration::from_millis(20);
/// How often a parked vCPU thread looks at the VM's stop flag.
const PARK_POLL: Duration = Duration::from_millis(10);

/// Why a control request failed (the VM is unchanged, except as the message says).
#[derive(Debug, Error)]
pub enum ControlError {
    /// The VM has stopped.
    #[error("the VM is not running (it stopped)")]
    Stopped,
    /// Pause asked of a paused VM, or resume of a running one.
    #[error("the VM is already {0}")]
    AlreadyIn(&'static str),
    /// The vCPU did not reach a clean point in time.
    #[error("the vCPU did not answer (pause or resume) within {0:?}")]
    PauseTimeout(Duration),
    /// The VM has something pause or snapshot cannot handle yet.
    #[error("not supported for this VM: {0}")]
    Unsupported(String),
    /// The snapshot failed (the VM is left as it was: paused or running).
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

/// Where a paused vCPU waits, and what it left for the controller.
#[derive(Default)]
struct Parked {
    vcpu: Option<Vcpu>,
    /// vCPU 0's ledger shard when it parked.
    ledger: LedgerSnapshot,
    /// The vCPU thread has ended: nothing will park any more.
    ended: bool,
}

/// The meeting point of a controller and vCPU 0's thread (see the module doc).
#[derive(Default)]
pub struct PauseGate {
    parked: Mutex<Parked>,
    cv: Condvar,
    /// How the run ends when the controller ended it (a migration): the parked vCPU does
    /// not re-enter the guest.
    final_stop: Mutex<Option<crate::StopReason>>,
}

impl std::fmt::Debug for PauseGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseGate").finish_non_exhaustive()
    }
}

impl PauseGate {
    /// vCPU thread: parks `vcpu` (out of `KVM_RUN`, at a clean point) with its ledger and
    /// waits until `pause` is cleared or `stop` is set; returns the vCPU.
    pub fn park(
        &self,
        vcpu: Vcpu,
        ledger: LedgerSnapshot,
        pause: &AtomicBool,
        stop: &AtomicBool,
    ) -> Vcpu {
        let mut p = lock(&self.parked);
        p.vcpu = Some(vcpu);
        p.ledger = ledger;
        self.cv.notify_all();
        loop {
            let running = !pause.load(Ordering::Acquire) || stop.load(Ordering::Acquire);
            if running {
                if let Some(v) = p.vcpu.take() {
                    // The controller's resume waits for this.
                    self.cv.notify_all();
                    return v;
                }
            }
            p = self
                .cv
                .wait_timeout(p, PARK_POLL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// The stop the controller set ([`VmControl::finish_migrated`]), if any.
    pub fn final_stop(&self) -> Option<crate::StopReason> {
        lock(&self.final_stop).clone()
    }

    /// vCPU thread: it has ended (no more parking).
    pub fn end(&self) {
        lock(&self.parked).ended = true;
        self.cv.notify_all();
    }
}

/// What a snapshot needs to know of the VM besides its live state.
#[derive(Clone, Debug)]
pub struct VmInfo {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The guest's command line.
    pub cmdline: String,
    /// The kernel image.
    pub kernel: KernelInfo,
    /// pvkit feature bits in CPUID.
    pub features: u64,
    /// The VM has KVM's in-kernel irqchip.
    pub irqchip: bool,
    /// The disk.
    pub disk: Option<DiskInfo>,
    /// vCPU count.
    pub vcpus: u32,
    /// Why the VM's NIC cannot be saved (a snapshot or migration is refused), if it has
    /// one that cannot: both NICs at once, or a self-timing bench peer.
    pub net_refusal: Option<String>,
    /// KVM's MSR save list.
    pub msrs: Vec<u32>,
    /// Exit counts the VM started with (a restored VM: the snapshot's).
    pub base_ledger: LedgerSnapshot,
}

/// What [`VmControl::stats`] reports.
#[derive(Clone, Debug)]
pub struct VmStats {
    /// Paused now.
    pub paused: bool,
    /// Since the VM (or its restore) started.
    pub uptime: Duration,
    /// Exits so far (at the last pause; the live count is not read while running).
    pub ledger_total: u64,
    /// VM clock in ns.
    pub vm_clock_ns: u64,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The balloon's statistics, if the VM has one.
    pub balloon: Option<BalloonStats>,
}

/// What a snapshot wrote and how long its parts took.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotReport {
    /// Files written.
    pub stats: SnapshotStats,
    /// Pausing (zero if the VM was paused already).
    pub pause: Duration,
    /// Capturing the state and writing both files.
    pub write: Duration,
}

/// The control handle of one running VM: pause, resume, snapshot, stats.
pub struct VmControl {
    vm: Arc<Vm>,
    gate: Arc<PauseGate>,
    kick: Box<dyn Fn() + Send + Sync>,
    devices: DeviceHandles,
    info: VmInfo,
    started: Instant,
    /// Serialises control requests (one pause/resume/snapshot at a time).
    busy: Mutex<()>,
    /// A stop decided but not yet applied ([`VmControl::defer_stop`]).
    deferred_stop: Mutex<Option<crate::StopReason>>,
}

impl std::fmt::Debug for VmControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmControl")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl VmControl {
    /// A handle on `vm`, whose vCPU 0 parks in `gate`; `kick` kicks vCPU 0 out of `KVM_RUN`.
    pub fn new(
        vm: Arc<Vm>,
        gate: Arc<PauseGate>,
        kick: Box<dyn Fn() + Send + Sync>,
        devices: DeviceHandles,
        info: VmInfo,
    ) -> Self {
        Self {
            vm,
            gate,
            kick,
            devices,
            info,
            started: Instant::now(),
            busy: Mutex::new(()),
            deferred_stop: Mutex::new(None),
        }
    }

    fn pause_flag(&self) -> &AtomicBool {
        &self.vm.shared.pause_requested
    }

    /// Whether the VM is paused now.
    pub fn is_paused(&self) -> bool {
        lock(&self.gate.parked).vcpu.is_some()
    }

    /// Whether the vCPU thread has ended.
    pub fn is_stopped(&self) -> bool {
        lock(&self.gate.parked).ended
    }

    fn check_pausable(&self) -> Result<(), ControlError> {
        if self.info.vcpus > 1 {
            return Err(ControlError::Unsupported(format!(
                "{} vCPUs (pause holds vCPU 0 only)",
                self.info.vcpus
            )));
        }
        Ok(())
    }

    fn pause_locked(&self) -> Result<Duration, ControlError> {
        self.check_pausable()?;
        let t = Instant::now();
        if self.is_stopped() {
            return Err(ControlError::Stopped);
        }
        if self.is_paused() {
            return Err(ControlError::AlreadyIn("paused"));
        }
        self.pause_flag().store(true, Ordering::Release);
        (self.kick)();
        let mut p = lock(&self.gate.parked);
        let mut last_kick = Instant::now();
        while p.vcpu.is_none() {
            if p.ended {
                self.pause_flag().store(false, Ordering::Release);
                return Err(ControlError::Stopped);
            }
            if t.elapsed() > PAUSE_TIMEOUT {
                self.pause_flag().store(false, Ordering::Release);
                return Err(ControlError::PauseTimeout(PAUSE_TIMEOUT));
            }
            if last_kick.elapsed() > REKICK {
                (self.kick)();
                last_kick = Instant::now();
            }
            p = self
                .gate
                .cv
                .wait_timeout(p, Duration::from_millis(2))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(t.elapsed())
    }

    fn resume_locked(&self) -> Result<(), ControlError> {
        if self.is_stopped() {
            return Err(ControlError::Stopped);
        }
        if !self.is_paused() {
            return Err(ControlError::AlreadyIn("running"));
        }
        self.pause_flag().store(false, Ordering::Release);
        self.gate.cv.notify_all();
        // Resumed when the vCPU thread has taken its vCPU back (then `is_paused` is false).
        let t = Instant::now();
        let mut p = lock(&self.gate.parked);
        while p.vcpu.is_some() && !p.ended {
            if t.elapsed() > PAUSE_TIMEOUT {
                return Err(ControlError::PauseTimeout(PAUSE_TIMEOUT));
            }
            p = self
                .gate
                .cv
                .wait_timeout(p, Duration::from_millis(2))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Pauses the VM: vCPU 0 out of `KVM_RUN` at a clean point and held (module doc).
    /// Returns how long it took.
    pub fn pause(&self) -> Result<Duration, ControlError> {
        let _busy = lock(&self.busy);
        self.pause_locked()
    }

    /// Pauses the VM for a migration's stop-and-copy: [`VmControl::pause`], then every
    /// registered ring drained (the requests the guest posted before the pause served,
    /// their writes to guest RAM made now), so the final round's dirty log sees them.
    /// Afterwards nothing writes guest RAM: the vCPU posts nothing new, and the devices
    /// a migration accepts only answer requests (the loopback NIC answers a frame as it is
    /// sent). The state capture drains again and finds nothing.
    pub fn pause_for_migration(&self) -> Result<Duration, ControlError> {
        let _busy = lock(&self.busy);
        let took = self.pause_locked()?;
        if let Err(e) = self.with_rings_frozen(|_| Ok(())) {
            let _ = self.resume_locked();
            return Err(e);
        }
        Ok(took)
    }

    /// Lets a paused VM continue.
    pub fn resume(&self) -> Result<(), ControlError> {
        let _busy = lock(&self.busy);
        self.resume_locked()
    }

    /// Writes a snapshot of the VM into `dir` (see [`crate::snapshot`]). A running VM is
    /// paused for it and resumed afterwards; a paused one stays paused.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotReport, ControlError> {
        let _busy = lock(&self.busy);
        if let Some(why) = &self.info.net_refusal {
            return Err(ControlError::Unsupported(why.clone()));
        }
        let was_paused = self.is_paused();
        let pause = match was_paused {
            true => Duration::ZERO,
            false => self.pause_locked()?,
        };
        let t = Instant::now();
        let r = self.capture_and_write(dir);
        if !was_paused {
            self.resume_locked()?;
        }
        Ok(SnapshotReport {
            stats: r?,
            pause,
            write: t.elapsed(),
        })
    }

    /// The state of the paused VM (everything but RAM), for a snapshot or a migration
    /// stream. [`ControlError::AlreadyIn`]`("running")` if the VM is not paused.
    pub fn capture_state(&self) -> Result<VmState, ControlError> {
        let _busy = lock(&self.busy);
        self.with_rings_frozen(|rings| {
            let mut state = self.capture_state_locked()?;
            state.devices.rings = rings;
            Ok(state)
        })
    }

    /// Calls `f` with the saved rings while every ring is held still.
    fn with_rings_frozen<R>(
        &self,
        f: impl FnOnce(Vec<crate::snapshot::state::SavedRing>) -> Result<R, ControlError>,
    ) -> Result<R, ControlError> {
        match self.vm.pv.rings() {
            Some(rings) => rings.frozen(f).map_err(ControlError::Unsupported)?,
            None => f(Vec::new()),
        }
    }

    fn capture_state_locked(&self) -> Result<VmState, ControlError> {
        if let Some(why) = &self.info.net_refusal {
            return Err(ControlError::Unsupported(why.clone()));
        }
        let parked = lock(&self.gate.parked);
        let vcpu = parked
            .vcpu
            .as_ref()
            .ok_or(ControlError::AlreadyIn("running"))?;
        let vcpu_state = capture_vcpu(vcpu, &self.info.msrs)?;
        let mut ledger = self.info.base_ledger.clone();
        ledger.merge(&parked.ledger);
        let fd = self
            .vm
            .fd
            .as_ref()
            .ok_or_else(|| ControlError::Unsupported("no KVM VM".into()))?;
        let vm_state = capture_vm(fd, self.info.irqchip)?;
        Ok(VmState {
            mem_bytes: self.info.mem_bytes,
            cmdline: self.info.cmdline.clone(),
            kernel: self.info.kernel.clone(),
            features: self.info.features,
            vcpus: vec![vcpu_state],
            vm: vm_state,
            devices: self.devices.capture(),
            disk: self.info.disk.clone(),
            ledger: save_ledger(&ledger)?,
        })
    }

    /// The VM (guest RAM, the KVM VM fd), e.g. for a migration's dirty-page log.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// Whether a page is ballooned (a snapshot or migration need not copy it).
    pub fn is_ballooned(&self, gpa: u64) -> bool {
        self.devices
            .balloon
            .as_ref()
            .is_some_and(|b| b.is_ballooned(gpa))
    }

    fn capture_and_write(&self, dir: &Path) -> Result<SnapshotStats, ControlError> {
        // The rings are held still from their capture until RAM is written, so both agree.
        self.with_rings_frozen(|rings| {
            let mut state = self.capture_state_locked()?;
            state.devices.rings = rings;
            if let Some(d) = &self.devices.disk {
                use pvkit_devices::BlockBackend;
                // Every write the guest saw complete is in the image before the snapshot
                // names it.
                d.clone()
                    .flush()
                    .map_err(|e| ControlError::Unsupported(format!("disk flush failed: {e}")))?;
            }
            let ballooned = |gpa| self.is_ballooned(gpa);
            Ok(write_snapshot(dir, &state, self.vm.mem(), &ballooned)?)
        })
    }

    /// The free-page hint device, if the VM has one.
    pub fn free_page_hint(
        &self,
    ) -> Option<Arc<crate::devices::pv::free_page_hint::PvFreePageHint>> {
        self.devices.free_page_hint.clone()
    }

    /// Whether the VM can be live-migrated now: running, one vCPU, and a NIC a snapshot
    /// can hold (the PV NIC or the NE2000, on the loopback or a TAP backend). Registered PV rings are fine: the migration's pause
    /// drains them ([`VmControl::pause_for_migration`]) before its final round.
    pub fn check_migratable(&self) -> Result<(), ControlError> {
        let _busy = lock(&self.busy);
        if let Some(why) = &self.info.net_refusal {
            return Err(ControlError::Unsupported(why.clone()));
        }
        self.check_pausable()?;
        if self.is_stopped() {
            return Err(ControlError::Stopped);
        }
        if self.is_paused() {
            return Err(ControlError::AlreadyIn("paused"));
        }
        Ok(())
    }

    /// The paused VM's state as a snapshot state file, the disk flushed first (every write
    /// the guest saw complete is in the image): a migration stream's state record.
    pub fn capture_state_file(&self) -> Result<Vec<u8>, ControlError> {
        let state = self.capture_state()?;
        if let Some(d) = &self.devices.disk {
            use pvkit_devices::BlockBackend;
            d.clone()
                .flush()
                .map_err(|e| ControlError::Unsupported(format!("disk flush failed: {e}")))?;
        }
        crate::snapshot::state::encode(&state)
            .map_err(|e| ControlError::Unsupported(format!("cannot encode the state: {e}")))
    }

    /// Like [`VmControl::finish_migrated`], but applied only by
    /// [`VmControl::apply_deferred_stop`]: the control API answers the `migrate` request
    /// first (the process ends with the VM). The VM stays paused meanwhile.
    pub fn defer_stop(&self, stop: crate::StopReason) {
        *lock(&self.deferred_stop) = Some(stop);
    }

    /// Applies a stop left by [`VmControl::defer_stop`], if any.
    pub fn apply_deferred_stop(&self) {
        let stop = lock(&self.deferred_stop).take();
        if let Some(stop) = stop {
            self.finish_migrated(stop);
        }
    }

    /// The VM was migrated: its paused vCPU never runs again and the run ends with
    /// `stop` ([`crate::StopReason::Migrated`]).
    pub fn finish_migrated(&self, stop: crate::StopReason) {
        let _busy = lock(&self.busy);
        *lock(&self.gate.final_stop) = Some(stop);
        self.vm.shared.stop_requested.store(true, Ordering::Release);
        self.gate.cv.notify_all();
    }

    /// Stops the VM (as its watchdog would: the run ends with a timeout stop). A paused VM
    /// stops without running the guest again.
    pub fn request_stop(&self) {
        self.vm.shared.stop_requested.store(true, Ordering::Release);
        self.gate.cv.notify_all();
        (self.kick)();
    }

    /// The VM's statistics now.
    pub fn stats(&self) -> VmStats {
        use crate::devices::legacy::vm_clock::VmTime;
        let mut ledger = self.info.base_ledger.clone();
        ledger.merge(&lock(&self.gate.parked).ledger);
        VmStats {
            paused: self.is_paused(),
            uptime: self.started.elapsed(),
            ledger_total: ledger.total,
            vm_clock_ns: self.devices.vm_clock.now_ns(),
            mem_bytes: self.info.mem_bytes,
            balloon: self.devices.balloon.as_ref().map(|b| b.stats()),
        }
    }
}
