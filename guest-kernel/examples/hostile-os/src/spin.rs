//! `case=hypercalls`, CPU class: the PV spinlock calls and the steal-time page with
//! arguments the ABI rejects, and one good use of each. Without the feature (one vCPU: no
//! `PV_SPINLOCK`; no schedstat on the host: no `STEAL_TIME`) every call is `EOPNOTSUPP`.

use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::REGION_PER_VCPU;
use pvkit_abi::spinlock::STEAL_PAGE_REGION;
use pvkit_abi::{Hypercall, Status};

use crate::raw::call;
use crate::{gpa, page, Ctx};

/// The page registered as this vCPU's steal page (used for nothing else).
const STEAL: usize = 9;

/// The spinlock calls and the steal page.
pub fn run(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let spin = ctx.features.contains(Features::PV_SPINLOCK);
    let steal = ctx.features.contains(Features::STEAL_TIME);
    let c = &mut ctx.checks;
    let lock = |h: Hypercall, args: [u64; 4]| {
        // SAFETY: LockWait and LockKick touch no guest memory; a wait is bounded (10 ms).
        unsafe { call(h as u32, args) }
    };
    let want = |on: bool, s: Status| if on { s } else { Status::EOPNOTSUPP };
    let r = lock(Hypercall::LockWait, [1, 0, 0, 0]);
    c.status("lock.wait-flags", r.rax, want(spin, Status::EINVAL));
    let r = lock(Hypercall::LockKick, [0, 1, 0, 0]);
    c.status("lock.kick-flags", r.rax, want(spin, Status::EINVAL));
    let r = lock(Hypercall::LockKick, [u64::MAX, 0, 0, 0]);
    c.status("lock.kick-target-max", r.rax, want(spin, Status::EINVAL));
    // Kick oneself: the kick is left pending, and the next wait returns at once with 1.
    let r = lock(Hypercall::LockKick, [0, 0, 0, 0]);
    c.status("lock.kick-self", r.rax, want(spin, Status::Ok));
    let r = lock(Hypercall::LockWait, [0, 0, 0, 0]);
    c.value("lock.wait-pending", r.rdx, u64::from(spin));

    let p = gpa(page(STEAL));
    let rr = |addr: u64, len: u64, flags: u64| {
        // SAFETY: refused registrations change nothing; the good one names page STEAL,
        // which nothing else uses (the host writes its first 32 bytes from then on).
        unsafe {
            call(
                Hypercall::RegisterRegion as u32,
                [STEAL_PAGE_REGION, addr, len, flags],
            )
        }
        .rax
    };
    let v = REGION_PER_VCPU;
    c.status("steal.vm-form", rr(p, 4096, 0), want(steal, Status::EINVAL));
    c.status(
        "steal.misaligned",
        rr(p + 8, 4096, v),
        want(steal, Status::EINVAL),
    );
    c.status("steal.short", rr(p, 16, v), want(steal, Status::EINVAL));
    c.status(
        "steal.transport",
        rr(p, 4096, v | 1),
        want(steal, Status::EINVAL),
    );
    c.status(
        "steal.beyond-ram",
        rr(mem, 4096, v),
        want(steal, Status::EFAULT),
    );
    c.status(
        "steal.wrap",
        rr(0xffff_ffff_ffff_f000, 4096, v),
        want(steal, Status::EFAULT),
    );
    c.status("steal.ok", rr(p, 4096, v), want(steal, Status::Ok));
}
