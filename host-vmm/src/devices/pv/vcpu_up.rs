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
}
