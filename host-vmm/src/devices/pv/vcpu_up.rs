//! PV vCPU bring-up: the `VcpuUp` hypercall ([`Hypercall::VcpuUp`]) and the start
//! mailboxes of the application processors (vCPUs 1..N-1).
//!
//! The call only validates and posts a [`Start`] in the target's slot, then asks the
//! VMM to wake the target's thread ([`VcpuUp::set_waker`]; the supervising thread kicks
//! it out of `KVM_RUN`, where it waits for INIT/SIPI). The target's own thread takes the
//! start ([`VcpuUp::take_start`]) and puts its vCPU in long mode at the entry point with
//! `KVM_SET_SREGS`/`KVM_SET_REGS`/`KVM_SET_MP_STATE(RUNNABLE)`: vCPU ioctls are only made
//! by the thread that runs the vCPU.

use std::sync::{Mutex, OnceLock};

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::Status;

use super::{CallCtx, PvDevice};

/// Where and how an AP starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// Entry `RIP`.
    pub rip: u64,
    /// `RSP`.
    pub rsp: u64,
    /// `RDI`.
    pub arg: u64,
}

/// The state of one vCPU's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Not started: waiting for INIT/SIPI or a `VcpuUp`.
    Waiting,
    /// A `VcpuUp` was accepted; its thread has not taken it yet.
    Pending(Start),
    /// Running guest code (started by `VcpuUp` or by INIT-SIPI).
    Running,
}

/// One vCPU's start slot as a snapshot keeps it ([`VcpuUp::save`], [`VcpuUp::restore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SavedStartSlot {
    /// Not started.
    Waiting,
    /// A `VcpuUp` was accepted but the AP's thread had not taken it: the restored AP's
    /// thread takes it.
    Pending {
        /// Entry `RIP`.
        rip: u64,
        /// `RSP`.
        rsp: u64,
        /// `RDI`.
        arg: u64,
    },
    /// Running guest code.
    Running,
}

impl SavedStartSlot {
    /// Checks a slot read from a state file (hostile input): a pending start's addresses
    /// are canonical, as [`VcpuUp::up`] required when it accepted them.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            SavedStartSlot::Pending { rip, rsp, .. } if !canonical(rip) || !canonical(rsp) => Err(
                format!("a pending vCPU start at non-canonical rip {rip:#x} / rsp {rsp:#x}"),
            ),
            _ => Ok(()),
        }
    }
}

impl Slot {
    fn saved(self) -> SavedStartSlot {
        match self {
            Slot::Waiting => SavedStartSlot::Waiting,
            Slot::Pending(Start { rip, rsp, arg }) => SavedStartSlot::Pending { rip, rsp, arg },
            Slot::Running => SavedStartSlot::Running,
        }
    }

    fn restored(s: SavedStartSlot) -> Self {
        match s {
            SavedStartSlot::Waiting => Slot::Waiting,
            SavedStartSlot::Pending { rip, rsp, arg } => Slot::Pending(Start { rip, rsp, arg }),
            SavedStartSlot::Running => Slot::Running,
        }
    }
}

/// The waker: called with the index of a vCPU whose thread must leave `KVM_RUN`.
type Waker = Box<dyn Fn(u32) + Send + Sync>;

/// The `VcpuUp` device of a VM with `count` vCPUs.
pub struct VcpuUp {
    slots: Vec<Mutex<Slot>>,
    waker: OnceLock<Waker>,
}

impl std::fmt::Debug for VcpuUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuUp")
            .field("vcpus", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// A canonical 48-bit virtual address.
fn canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == (1 << 17) - 1
}

impl VcpuUp {
    /// The device for `count` vCPUs; vCPU 0 counts as running.
    pub fn new(count: u32) -> Self {
        let slots = (0..count)
            .map(|i| Mutex::new(if i == 0 { Slot::Running } else { Slot::Waiting }))
            .collect();
        Self {
            slots,
            waker: OnceLock::new(),
        }
    }

    /// Sets the waker (once; later calls are ignored).
    pub fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    fn slot(&self, index: u64) -> Option<std::sync::MutexGuard<'_, Slot>> {
        let s = self.slots.get(usize::try_from(index).ok()?)?;
        Some(s.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Takes vCPU `index`'s pending start, if any (the slot becomes running).
    pub fn take_start(&self, index: u64) -> Option<Start> {
        let mut s = self.slot(index)?;
        match *s {
            Slot::Pending(start) => {
                *s = Slot::Running;
                Some(start)
            }
            _ => None,
        }
    }

    /// Notes that vCPU `index` runs guest code without a `VcpuUp` (INIT-SIPI started it).
    pub fn mark_running(&self, index: u64) {
        if let Some(mut s) = self.slot(index) {
            if *s == Slot::Waiting {
                *s = Slot::Running;
            }
        }
    }

    /// Every vCPU's slot, vCPU 0 first (the vCPUs are paused: no slot changes meanwhile).
    pub fn save(&self) -> Vec<SavedStartSlot> {
        (0..self.slots.len() as u64)
            .filter_map(|i| self.slot(i).map(|s| s.saved()))
            .collect()
    }

    /// Sets every slot from a snapshot (before any vCPU runs): one per vCPU, vCPU 0
    /// running, each [`SavedStartSlot::check`]ed. On error nothing is changed.
    pub fn restore(&self, saved: &[SavedStartSlot]) -> Result<(), String> {
        if saved.len() != self.slots.len() {
            return Err(format!(
                "{} vCPU start slots saved for {} vCPUs",
                saved.len(),
                self.slots.len()
            ));
        }
        if saved.first() != Some(&SavedStartSlot::Running) {
            return Err("vCPU 0's start slot is not `running`".into());
        }
        saved.iter().try_for_each(SavedStartSlot::check)?;
        for (i, s) in (0u64..).zip(saved) {
            if let Some(mut slot) = self.slot(i) {
                *slot = Slot::restored(*s);
            }
        }
        Ok(())
    }

    /// Handles `VcpuUp` from vCPU `caller`.
    pub fn up(&self, caller: u32, args: [u64; 4]) -> Status {
        let [target, rip, rsp, arg] = args;
        if target == u64::from(caller) || !canonical(rip) || !canonical(rsp) {
            return Status::EINVAL;
        }
        let Some(mut s) = self.slot(target) else {
            return Status::EINVAL;
        };
        if *s != Slot::Waiting {
            return Status::EBUSY;
        }
        *s = Slot::Pending(Start { rip, rsp, arg });
        drop(s);
        if let (Some(w), Ok(t)) = (self.waker.get(), u32::try_from(target)) {
            w(t);
        }
        Status::Ok
    }
}

impl PvDevice for VcpuUp {
    fn name(&self) -> &'static str {
        "vcpu_up"
    }

    fn features(&self) -> Features {
        Features::empty()
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        &[Hypercall::VcpuUp]
    }

    fn call(&self, ctx: &CallCtx<'_>, _call: Hypercall, args: [u64; 4]) -> CallReturn {
        match self.up(ctx.vcpu, args) {
            Status::Ok => CallReturn::ok(0),
            s => CallReturn::err(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bad_targets_are_refused_and_a_start_is_taken_once() {
        let up = VcpuUp::new(3);
        let woken = Arc::new(Mutex::new(Vec::new()));
        let w = Arc::clone(&woken);
        up.set_waker(Box::new(move |i| w.lock().unwrap().push(i)));
        assert_eq!(up.up(0, [0, 0x1000, 0x2000, 0]), Status::EINVAL, "self");
        assert_eq!(up.up(0, [3, 0x1000, 0x2000, 0]), Status::EINVAL, "range");
        assert_eq!(up.up(0, [u64::MAX, 0x1000, 0, 0]), Status::EINVAL);
        assert_eq!(up.up(0, [1, 1 << 47, 0x2000, 0]), Status::EINVAL, "rip");
        assert_eq!(up.up(0, [1, 0x1000, 1 << 63, 0]), Status::EINVAL, "rsp");
        assert!(woken.lock().unwrap().is_empty());
        assert_eq!(up.take_start(1), None);
        assert_eq!(up.up(0, [1, 0x1000, 0x2000, 7]), Status::Ok);
        assert_eq!(up.up(2, [1, 0x1000, 0x2000, 7]), Status::EBUSY, "pending");
        assert_eq!(
            up.take_start(1),
            Some(Start {
                rip: 0x1000,
                rsp: 0x2000,
                arg: 7
            })
        );
        assert_eq!(up.take_start(1), None);
        assert_eq!(up.up(0, [1, 0x1000, 0x2000, 7]), Status::EBUSY, "running");
        up.mark_running(2);
        assert_eq!(up.up(0, [2, 0x1000, 0x2000, 7]), Status::EBUSY, "INIT-SIPI");
        assert_eq!(up.up(1, [0, 0x1000, 0x2000, 7]), Status::EBUSY, "vCPU 0");
        assert_eq!(*woken.lock().unwrap(), [1]);
    }

    #[test]
    fn slots_are_saved_and_restored_and_bad_saves_change_nothing() {
        let up = VcpuUp::new(3);
        assert_eq!(up.up(0, [2, 0x1000, 0x2000, 5]), Status::Ok);
        up.mark_running(1);
        let saved = up.save();
        assert_eq!(
            saved,
            [
                SavedStartSlot::Running,
                SavedStartSlot::Running,
                SavedStartSlot::Pending {
                    rip: 0x1000,
                    rsp: 0x2000,
                    arg: 5
                }
            ]
        );
        let back = VcpuUp::new(3);
        let bad_rip = SavedStartSlot::Pending {
            rip: 1 << 47,
            rsp: 0,
            arg: 0,
        };
        for bad in [
            &saved[..2],
            &[SavedStartSlot::Waiting, saved[1], saved[2]][..],
            &[saved[0], saved[1], bad_rip][..],
        ] {
            assert!(back.restore(bad).is_err(), "{bad:?}");
            assert_eq!(back.save(), VcpuUp::new(3).save(), "unchanged");
        }
        back.restore(&saved).unwrap();
        assert_eq!(back.save(), saved);
        // The restored pending start is taken by its AP; the running AP cannot be started.
        assert_eq!(back.up(0, [1, 0x1000, 0x2000, 7]), Status::EBUSY);
        assert_eq!(
            back.take_start(2),
            Some(Start {
                rip: 0x1000,
                rsp: 0x2000,
                arg: 5
            })
        );
    }
}
