//! Pause, resume and snapshot of a running VM ([`VmControl`]), for the control API.
//!
//! # Pausing at a clean point
//! [`VmControl::pause`] sets the VM's `pause_requested` flag and kicks every vCPU's thread
//! out of `KVM_RUN` (the watchdog's signal), vCPU 0 and the APs alike. An interrupted
//! `KVM_RUN` has completed any port or MMIO access the previous exit left pending (KVM
//! finishes it on entry, before it notices the signal or `immediate_exit`), so at that
//! [`Exit::Interrupted`](crate::vstate::vcpu::Exit) the vCPU's registers are exactly the
//! guest's: the run loop returns, and the thread parks its [`Vcpu`] in its seat of the
//! [`PauseGate`] and waits. The VM is paused when every vCPU is parked; the pause kicks
//! again, every 20 ms, the vCPUs not parked yet, and gives up after [`PAUSE_TIMEOUT`] (the
//! flag is cleared, the vCPUs parked so far go back to the guest).
//!
//! An AP that the guest has not started (waiting for INIT-SIPI or a `VcpuUp`) or that is
//! halted waits inside `KVM_RUN` too (KVM blocks it there); the kick interrupts that wait
//! like any other, so it parks like a running vCPU: every vCPU thread is parked, started
//! or not, and every vCPU's state is captured, its MP state saying what it was doing.
//!
//! While parked, the controller reads (or, for a snapshot, captures) the vCPUs' state
//! through the gate, on its own thread: the vCPU threads' seccomp filter allows none of
//! the `KVM_GET_*` state ioctls. [`VmControl::resume`] clears the flag; each vCPU thread
//! takes its `Vcpu` back and re-enters the guest. A pause costs the guest one
//! `Interrupted` exit per vCPU in the ledger.
//!
//! A VM stopping while paused (watchdog, signal, a finished migration) ends the wait: each
//! thread takes its vCPU back and stops as usual. The VM counts as stopped as soon as one
//! vCPU thread has ended (an AP's thread ends only when the VM stops).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::machine::Vm;
use crate::devices::pv::balloon::{BalloonError, BalloonStats, TargetStatus};
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
    /// The balloon target was refused (the target is unchanged).
    #[error(transparent)]
    Balloon(#[from] BalloonError),
}

/// One vCPU's seat in the gate: what its thread left there when it parked.
struct Seat<V> {
    /// The parked vCPU (`None`: running, or not yet parked).
    vcpu: Option<V>,
    /// The vCPU's ledger shard when it last parked.
    ledger: LedgerSnapshot,
    /// The vCPU's thread has ended: it will not park any more.
    ended: bool,
}

impl<V> Default for Seat<V> {
    fn default() -> Self {
        Self {
            vcpu: None,
            ledger: LedgerSnapshot::default(),
            ended: false,
        }
    }
}

/// Every vCPU's seat, by vCPU index.
struct Parked<V> {
    seats: Vec<Seat<V>>,
}

impl<V> Parked<V> {
    /// Every vCPU is parked: the VM is paused.
    fn all_parked(&self) -> bool {
        self.seats.iter().all(|s| s.vcpu.is_some())
    }

    /// Some vCPU is still parked (a resume waits until none is).
    fn any_parked(&self) -> bool {
        self.seats.iter().any(|s| s.vcpu.is_some())
    }

    /// Some vCPU thread has ended: the VM is stopping (an AP's thread ends only when the
    /// VM stops), nothing can be paused any more.
    fn any_ended(&self) -> bool {
        self.seats.iter().any(|s| s.ended)
    }

    /// The VM's exits at the last pause: every vCPU's shard added up.
    fn ledger(&self) -> LedgerSnapshot {
        let mut all = LedgerSnapshot::default();
        for s in &self.seats {
            all.merge(&s.ledger);
        }
        all
    }
}

/// The meeting point of a controller and the vCPU threads, one seat per vCPU (see the
/// module doc). Generic over what is parked so that its logic is tested without KVM; the
/// VMM parks [`Vcpu`]s.
pub struct PauseGate<V = Vcpu> {
    parked: Mutex<Parked<V>>,
    cv: Condvar,
    /// How the run ends when the controller ended it (a migration): the parked vCPUs do
    /// not re-enter the guest.
    final_stop: Mutex<Option<crate::StopReason>>,
}

impl<V> std::fmt::Debug for PauseGate<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseGate").finish_non_exhaustive()
    }
}

impl<V> PauseGate<V> {
    /// The gate of a VM with `vcpus` vCPUs (at least one seat).
    pub fn new(vcpus: u32) -> Self {
        let n = usize::try_from(vcpus).unwrap_or(1).max(1);
        Self {
            parked: Mutex::new(Parked {
                seats: (0..n).map(|_| Seat::default()).collect(),
            }),
            cv: Condvar::new(),
            final_stop: Mutex::new(None),
        }
    }

    /// vCPU thread of vCPU `index`: parks `vcpu` (out of `KVM_RUN`, at a clean point) with
    /// its ledger shard and waits until `pause` is cleared or `stop` is set; returns the
    /// vCPU. An index without a seat is handed back at once (never parked).
    pub fn park(
        &self,
        index: usize,
        vcpu: V,
        ledger: LedgerSnapshot,
        pause: &AtomicBool,
        stop: &AtomicBool,
    ) -> V {
        let mut p = lock(&self.parked);
        let Some(seat) = p.seats.get_mut(index) else {
            return vcpu;
        };
        seat.vcpu = Some(vcpu);
        seat.ledger = ledger;
        self.cv.notify_all();
        loop {
            let running = !pause.load(Ordering::Acquire) || stop.load(Ordering::Acquire);
            if running {
                if let Some(v) = p.seats.get_mut(index).and_then(|s| s.vcpu.take()) {
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

    /// vCPU thread of vCPU `index`: it has ended (no more parking).
    pub fn end(&self, index: usize) {
        if let Some(s) = lock(&self.parked).seats.get_mut(index) {
            s.ended = true;
        }
        self.cv.notify_all();
    }

    /// Every vCPU is parked.
    fn is_paused(&self) -> bool {
        lock(&self.parked).all_parked()
    }

    /// Some vCPU thread has ended.
    fn is_stopped(&self) -> bool {
        lock(&self.parked).any_ended()
    }

    /// Controller: sets `pause`, kicks every vCPU (`kick(index)`) and waits until all are
    /// parked, kicking again every [`REKICK`] those that are not yet. On a stop
    /// ([`ControlError::Stopped`]) or after `timeout` ([`ControlError::PauseTimeout`]) it
    /// clears `pause` again: the vCPUs parked so far go back to the guest.
    fn pause_all(
        &self,
        pause: &AtomicBool,
        kick: &dyn Fn(u32),
        timeout: Duration,
    ) -> Result<Duration, ControlError> {
        let t = Instant::now();
        let mut p = lock(&self.parked);
        if p.any_ended() {
            return Err(ControlError::Stopped);
        }
        if p.all_parked() {
            return Err(ControlError::AlreadyIn("paused"));
        }
        pause.store(true, Ordering::Release);
        let unparked = |p: &Parked<V>| -> Vec<u32> {
            (0u32..)
                .zip(&p.seats)
                .filter(|(_, s)| s.vcpu.is_none())
                .map(|(i, _)| i)
                .collect()
        };
        let mut to_kick = unparked(&p);
        let mut last_kick = Instant::now();
        loop {
            if !to_kick.is_empty() {
                // Kicked without the lock: a vCPU thread parking meanwhile must not wait.
                drop(p);
                for &i in &to_kick {
                    kick(i);
                }
                last_kick = Instant::now();
                p = lock(&self.parked);
            }
            if p.any_ended() {
                pause.store(false, Ordering::Release);
                self.cv.notify_all();
                return Err(ControlError::Stopped);
            }
            if p.all_parked() {
                return Ok(t.elapsed());
            }
            if t.elapsed() > timeout {
                pause.store(false, Ordering::Release);
                self.cv.notify_all();
                return Err(ControlError::PauseTimeout(timeout));
            }
            p = self
                .cv
                .wait_timeout(p, Duration::from_millis(2))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            to_kick = match last_kick.elapsed() > REKICK {
                true => unparked(&p),
                false => Vec::new(),
            };
        }
    }

    /// Controller: clears `pause` and waits until every vCPU thread has taken its vCPU
    /// back (or ended).
    fn resume_all(&self, pause: &AtomicBool, timeout: Duration) -> Result<(), ControlError> {
        {
            let p = lock(&self.parked);
            if p.any_ended() {
                return Err(ControlError::Stopped);
            }
            if !p.all_parked() {
                return Err(ControlError::AlreadyIn("running"));
            }
        }
        pause.store(false, Ordering::Release);
        self.cv.notify_all();
        let t = Instant::now();
        let mut p = lock(&self.parked);
        while p.any_parked() && !p.any_ended() {
            if t.elapsed() > timeout {
                return Err(ControlError::PauseTimeout(timeout));
            }
            p = self
                .cv
                .wait_timeout(p, Duration::from_millis(2))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Calls `f` with every parked vCPU (vCPU 0 first) and the ledger they left, while
    /// they stay parked; [`ControlError::AlreadyIn`]`("running")` unless all are.
    fn with_parked<R>(
        &self,
        f: impl FnOnce(&[&V], &LedgerSnapshot) -> Result<R, ControlError>,
    ) -> Result<R, ControlError> {
        let p = lock(&self.parked);
        let vcpus: Option<Vec<&V>> = p.seats.iter().map(|s| s.vcpu.as_ref()).collect();
        let vcpus = vcpus.ok_or(ControlError::AlreadyIn("running"))?;
        f(&vcpus, &p.ledger())
    }

    /// The ledger the vCPUs left at their last pause, added up.
    fn parked_ledger(&self) -> LedgerSnapshot {
        lock(&self.parked).ledger()
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
    /// The migration key the VM was started with ([`super::VmConfig::migration_key`]).
    pub migration_key: Option<Arc<crate::migration::auth::MigrationKey>>,
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
    /// The host-set balloon target, if the VM has a balloon.
    pub balloon_target: Option<TargetStatus>,
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
    kick: Box<dyn Fn(u32) + Send + Sync>,
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
    /// A handle on `vm`, whose vCPUs park in `gate`; `kick(i)` kicks vCPU `i` out of
    /// `KVM_RUN`.
    pub fn new(
        vm: Arc<Vm>,
        gate: Arc<PauseGate>,
        kick: Box<dyn Fn(u32) + Send + Sync>,
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

    /// Whether the VM is paused now (every vCPU parked).
    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// Whether the VM has stopped (a vCPU thread has ended).
    pub fn is_stopped(&self) -> bool {
        self.gate.is_stopped()
    }

    fn pause_locked(&self) -> Result<Duration, ControlError> {
        self.gate
            .pause_all(self.pause_flag(), &*self.kick, PAUSE_TIMEOUT)
    }

    fn resume_locked(&self) -> Result<(), ControlError> {
        self.gate.resume_all(self.pause_flag(), PAUSE_TIMEOUT)
    }

    /// Pauses the VM: every vCPU out of `KVM_RUN` at a clean point and held (module doc).
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
        let (vcpus, parked_ledger) = self.gate.with_parked(|vcpus, ledger| {
            let states = vcpus
                .iter()
                .map(|v| capture_vcpu(v, &self.info.msrs))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((states, ledger.clone()))
        })?;
        let mut ledger = self.info.base_ledger.clone();
        ledger.merge(&parked_ledger);
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
            vcpus,
            vm: vm_state,
            devices: self.devices.capture(),
            disk: self.info.disk.clone(),
            ledger: save_ledger(&ledger)?,
        })
    }

    /// The migration key the VM was started with, if any.
    pub fn migration_key(&self) -> Option<Arc<crate::migration::auth::MigrationKey>> {
        self.info.migration_key.clone()
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
            // Every write the guest saw complete is in the image before the snapshot names it.
            self.flush_disk()?;
            let ballooned = |gpa| self.is_ballooned(gpa);
            Ok(write_snapshot(dir, &state, self.vm.mem(), &ballooned)?)
        })
    }

    /// Flushes the VM's disk, if it has one: every write the guest saw complete reaches the
    /// image.
    fn flush_disk(&self) -> Result<(), ControlError> {
        use pvkit_devices::BlockBackend;
        match &self.devices.disk {
            Some(d) => d
                .clone()
                .flush()
                .map_err(|e| ControlError::Unsupported(format!("disk flush failed: {e}"))),
            None => Ok(()),
        }
    }

    /// The free-page hint device, if the VM has one.
    pub fn free_page_hint(
        &self,
    ) -> Option<Arc<crate::devices::pv::free_page_hint::PvFreePageHint>> {
        self.devices.free_page_hint.clone()
    }

    /// Whether the VM can be live-migrated now: running, and a NIC a snapshot can hold (the
    /// PV NIC or the NE2000, on the loopback or a TAP backend), if any. Registered PV rings
    /// are fine: the migration's pause
    /// drains them ([`VmControl::pause_for_migration`]) before its final round.
    pub fn check_migratable(&self) -> Result<(), ControlError> {
        let _busy = lock(&self.busy);
        if let Some(why) = &self.info.net_refusal {
            return Err(ControlError::Unsupported(why.clone()));
        }
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
        self.flush_disk()?;
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
        for i in 0..self.info.vcpus {
            (self.kick)(i);
        }
    }

    /// The VM's statistics now.
    pub fn stats(&self) -> VmStats {
        use crate::devices::legacy::vm_clock::VmTime;
        let mut ledger = self.info.base_ledger.clone();
        ledger.merge(&self.gate.parked_ledger());
        VmStats {
            paused: self.is_paused(),
            uptime: self.started.elapsed(),
            ledger_total: ledger.total,
            vm_clock_ns: self.devices.vm_clock.now_ns(),
            mem_bytes: self.info.mem_bytes,
            balloon: self.devices.balloon.as_ref().map(|b| b.stats()),
            balloon_target: self.devices.balloon.as_ref().map(|b| b.target()),
        }
    }

    /// Sets the balloon target to `mib` MiB (the guest reads it and moves toward it; see
    /// [`pvkit_abi::balloon`]). Refused, changing nothing, when the VM has stopped, has no
    /// balloon, or the target is above what its RAM allows. Works paused or running.
    pub fn set_balloon_target(&self, mib: u64) -> Result<TargetStatus, ControlError> {
        let _busy = lock(&self.busy);
        if self.is_stopped() {
            return Err(ControlError::Stopped);
        }
        let balloon = self
            .devices
            .balloon
            .as_ref()
            .ok_or_else(|| ControlError::Unsupported("the VM has no balloon".into()))?;
        let pages = mib.saturating_mul((1 << 20) / pvkit_abi::balloon::BALLOON_PAGE_SIZE);
        Ok(balloon.set_target(pages)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ledger::{ExitKind, ExitLedger};
    use std::sync::atomic::AtomicU32;

    /// Stand-in vCPU threads: each "runs" (sleeps 1 ms at a time) until kicked; kicked with
    /// the pause flag set, it counts one interrupted exit and parks its index, else it
    /// goes on. Thread `stuck` (if any) never answers a kick.
    struct Threads {
        gate: Arc<PauseGate<u32>>,
        pause: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        kicked: Arc<Vec<AtomicU32>>,
        threads: Vec<std::thread::JoinHandle<u64>>,
    }

    impl Threads {
        fn start(n: u32, stuck: Option<u32>) -> Self {
            let gate = Arc::new(PauseGate::new(n));
            let pause = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let kicked: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
            let threads = (0..n)
                .map(|i| {
                    let (gate, pause, stop, kicked) = (
                        Arc::clone(&gate),
                        Arc::clone(&pause),
                        Arc::clone(&stop),
                        Arc::clone(&kicked),
                    );
                    std::thread::spawn(move || {
                        let mut ledger = ExitLedger::new();
                        let mut v = i;
                        let seat = i as usize;
                        while !stop.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                            if Some(i) == stuck || kicked[seat].swap(0, Ordering::AcqRel) == 0 {
                                continue;
                            }
                            ledger.record(ExitKind::Interrupted);
                            if pause.load(Ordering::Acquire) {
                                v = gate.park(seat, v, ledger.snapshot(), &pause, &stop);
                                assert_eq!(v, i, "each thread gets its own vCPU back");
                            }
                        }
                        gate.end(seat);
                        ledger.snapshot().total
                    })
                })
                .collect();
            Self {
                gate,
                pause,
                stop,
                kicked,
                threads,
            }
        }

        fn kick(&self) -> impl Fn(u32) + '_ {
            |i| {
                self.kicked[i as usize].fetch_add(1, Ordering::AcqRel);
            }
        }

        fn pause(&self, timeout: Duration) -> Result<Duration, ControlError> {
            self.gate.pause_all(&self.pause, &self.kick(), timeout)
        }

        fn finish(self) -> Vec<u64> {
            self.stop.store(true, Ordering::Release);
            self.gate.cv.notify_all();
            self.threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect()
        }
    }

    #[test]
    fn a_pause_parks_every_vcpu_and_a_resume_releases_them_all() {
        let t = Threads::start(3, None);
        assert!(matches!(
            t.gate.resume_all(&t.pause, PAUSE_TIMEOUT),
            Err(ControlError::AlreadyIn("running"))
        ));
        t.pause(PAUSE_TIMEOUT).unwrap();
        assert!(t.gate.is_paused());
        assert!(matches!(
            t.pause(PAUSE_TIMEOUT),
            Err(ControlError::AlreadyIn("paused"))
        ));
        // Every vCPU, in index order, and the sum of their shards: one exit each.
        let seen = t
            .gate
            .with_parked(|v, l| Ok((v.iter().map(|v| **v).collect::<Vec<_>>(), l.total)))
            .unwrap();
        assert_eq!(seen, (vec![0, 1, 2], 3));
        assert_eq!(t.gate.parked_ledger().count(ExitKind::Interrupted), 3);
        t.gate.resume_all(&t.pause, PAUSE_TIMEOUT).unwrap();
        assert!(!t.gate.is_paused());
        assert!(!lock(&t.gate.parked).any_parked());
        assert!(matches!(
            t.gate.with_parked(|_, _| Ok(())),
            Err(ControlError::AlreadyIn("running"))
        ));
        // A second pause costs each vCPU one more exit.
        t.pause(PAUSE_TIMEOUT).unwrap();
        assert_eq!(t.gate.parked_ledger().total, 6);
        t.gate.resume_all(&t.pause, PAUSE_TIMEOUT).unwrap();
        assert_eq!(t.finish(), [2, 2, 2]);
    }

    #[test]
    fn a_vcpu_that_never_parks_times_the_pause_out_and_the_others_run_again() {
        let t = Threads::start(3, Some(2));
        let e = t.pause(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ControlError::PauseTimeout(_)), "{e}");
        assert!(!t.pause.load(Ordering::Acquire), "the flag is cleared");
        // The two that parked went back to running.
        let since = Instant::now();
        while lock(&t.gate.parked).any_parked() {
            assert!(since.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!t.gate.is_paused());
        t.finish();
    }

    #[test]
    fn a_stop_ends_a_pause_and_releases_parked_vcpus() {
        // Stopped while paused: every parked thread takes its vCPU back and ends.
        let t = Threads::start(2, None);
        t.pause(PAUSE_TIMEOUT).unwrap();
        assert_eq!(t.finish(), [1, 1]);
        // A thread that ends while a pause waits for it: the pause says stopped.
        let t = Threads::start(2, Some(1));
        let gate = Arc::clone(&t.gate);
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            gate.end(1);
        });
        let e = t.pause(Duration::from_secs(30)).unwrap_err();
        assert!(matches!(e, ControlError::Stopped), "{e}");
        ender.join().unwrap();
        assert!(t.gate.is_stopped());
        assert!(matches!(
            t.gate.resume_all(&t.pause, PAUSE_TIMEOUT),
            Err(ControlError::Stopped)
        ));
        t.finish();
    }
}
