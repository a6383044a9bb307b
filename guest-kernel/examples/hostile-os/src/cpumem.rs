//! `case=cpu-mem` (run with `--vcpus 2`): nonsense for the CPU and memory calls —
//! `VcpuUp`, `SendIpi`, `LockWait`/`LockKick` and the balloon — and one good use of each,
//! with every documented status checked. `case=ap-garbage` starts vCPU 1 into unmapped
//! memory: the VMM must stop the VM naming the AP's triple fault (the guest never gets to
//! report anything after that; if it does, the VM survived the AP's fault and it fails).
//!
//! The counts of each call are the constants below, so the host test can assert the exact
//! exits of the run (`tests/hostile.rs`).

use pvkit_abi::balloon::BalloonRange;
use pvkit_abi::cpuid::Features;
use pvkit_abi::{Hypercall, Status};
use pvkit_guest::tsc::rdtsc;

use crate::out::Line;
use crate::raw::{call, Ret};
use crate::{gpa, page, Ctx};

/// `VcpuUp` calls this scenario makes.
pub const VCPU_UP_CALLS: u64 = 10;
/// `SendIpi` calls: 13 refused and the storm.
pub const SEND_IPI_CALLS: u64 = 13 + IPI_STORM;
/// Good `SendIpi` calls in a row (each names both vCPUs: bounded work per call).
pub const IPI_STORM: u64 = 500;
/// `LockWait` calls.
pub const LOCK_WAIT_CALLS: u64 = 4;
/// `LockKick` calls: 3 refused, the two storms and one more to the AP.
pub const LOCK_KICK_CALLS: u64 = 4 + 2 * KICK_STORM;
/// Kicks in a row, to oneself and to the AP.
pub const KICK_STORM: u64 = 200;
/// `BalloonInflate` calls: 5 bad arrays, 18 bad ranges, count 0, 3 good and 2 busy.
pub const INFLATE_CALLS: u64 = 29;
/// `BalloonDeflate` calls: 3 good, 3 refused.
pub const DEFLATE_CALLS: u64 = 6;
/// `BalloonInfo` calls.
pub const INFO_CALLS: u64 = 4;
/// Successful inflates (and deflates): the page after the image, the 5-page one and the
/// 512-range one.
pub const GOOD_RESIZES: u64 = 3;
/// Pages inflated (and deflated) in all.
pub const PAGES_RESIZED: u64 = 1 + 5 + 512;

/// Page of the balloon range arrays (two pages: 512 ranges are 8 KiB).
const ARRAY: usize = 10;
/// Page of the AP's stack.
const AP_STACK: usize = 13;
/// Where the good ranges go: 16 MiB (above the image, below the end of 32 MiB of RAM).
const HIGH: u64 = 16 << 20;
/// Where the 512 single-page ranges go: 8 MiB + 8 KiB × i.
const SPARSE: u64 = 8 << 20;
/// What the AP writes to its mailbox: its `RDI`.
const AP_MAGIC: u64 = 0x005e_eda9_0001;
/// A canonical address the boot page tables do not map (they map `[0, 4 GiB)`).
const UNMAPPED: u64 = 1 << 32;

/// Written by the AP (its `RDI`), read by vCPU 0.
static mut AP_MAILBOX: u64 = 0;

unsafe extern "C" {
    /// The end of the loaded image (`linker.ld`).
    static __image_end: u8;
}

/// The AP's code: store `RDI` in [`AP_MAILBOX`], then halt with interrupts off (in the
/// in-kernel LAPIC: no exit) until the VM stops.
#[unsafe(naked)]
extern "C" fn ap_entry() -> ! {
    core::arch::naked_asm!(
        "mov qword ptr [rip + {mb}], rdi",
        "2:",
        "cli",
        "hlt",
        "jmp 2b",
        mb = sym AP_MAILBOX,
    )
}

fn hc(h: Hypercall, args: [u64; 4]) -> Ret {
    // SAFETY: the CPU calls touch no guest memory; the balloon calls read only the range
    // arrays this module writes (page ARRAY, not used through references) and release
    // only pages this program never uses (above its image, or refused).
    unsafe { call(h as u32, args) }
}

/// Writes `ranges` as a `BalloonRange` array at page [`ARRAY`]; returns its address.
fn array(ranges: &[(u64, u64)]) -> u64 {
    let base = page(ARRAY).cast::<BalloonRange>();
    for (i, &(gpa, pages)) in ranges.iter().enumerate().take(512) {
        // SAFETY: at most 512 × 16 bytes = pages ARRAY and ARRAY + 1, inside `MEMORY`.
        unsafe { base.add(i).write_volatile(BalloonRange { gpa, pages }) };
    }
    gpa(page(ARRAY))
}

/// A refused balloon call: its check's name, its ranges, its status.
type Refused<'a> = (&'a str, &'a [(u64, u64)], Status);

/// Inflate or deflate with an array of `ranges`.
fn resize(h: Hypercall, ranges: &[(u64, u64)]) -> Ret {
    let a = array(ranges);
    hc(h, [a, ranges.len() as u64, 0, 0])
}

fn info() -> u64 {
    hc(Hypercall::BalloonInfo, [0; 4]).rdx
}

/// The CPU and memory calls; needs `--vcpus 2`.
pub fn run(ctx: &mut Ctx) {
    let need = Features::PV_IPI | Features::PV_SPINLOCK | Features::BALLOON;
    ctx.checks.that(
        "cm.features",
        ctx.features.bits(),
        ctx.features.contains(need),
    );
    vcpu_up(ctx);
    send_ipi(ctx);
    lock(ctx);
    balloon(ctx);
    let r = hc(Hypercall::AbiVersion, [0; 4]);
    ctx.checks.status("cm.alive", r.rax, Status::Ok);
    // What the host should have counted (tests/hostile.rs pins the same numbers).
    Line::new()
        .s("cpu-mem calls vcpu_up=")
        .dec(VCPU_UP_CALLS)
        .s(" send_ipi=")
        .dec(SEND_IPI_CALLS)
        .s(" lock_wait=")
        .dec(LOCK_WAIT_CALLS)
        .s(" lock_kick=")
        .dec(LOCK_KICK_CALLS)
        .s(" inflate=")
        .dec(INFLATE_CALLS)
        .s(" deflate=")
        .dec(DEFLATE_CALLS)
        .s(" info=")
        .dec(INFO_CALLS)
        .s(" good_resizes=")
        .dec(GOOD_RESIZES)
        .s(" pages=")
        .dec(PAGES_RESIZED)
        .emit();
}

fn vcpu_up(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    let rip = ap_entry as *const () as u64;
    let rsp = gpa(page(AP_STACK)) + 4096;
    let up = |t: u64, rip: u64, rsp: u64| hc(Hypercall::VcpuUp, [t, rip, rsp, AP_MAGIC]).rax;
    c.status("up.self", up(0, rip, rsp), Status::EINVAL);
    c.status("up.range", up(2, rip, rsp), Status::EINVAL);
    c.status("up.range-max", up(u64::MAX, rip, rsp), Status::EINVAL);
    // 2^32 + 1 must not be taken for vCPU 1 (a truncating host would start it).
    c.status(
        "up.range-alias",
        up((1 << 32) + 1, rip, rsp),
        Status::EINVAL,
    );
    c.status("up.rip-noncanonical", up(1, 1 << 47, rsp), Status::EINVAL);
    c.status(
        "up.rip-high-hole",
        up(1, 0x8000_0000_0000_0000, rsp),
        Status::EINVAL,
    );
    c.status(
        "up.rsp-noncanonical",
        up(1, rip, 0x0000_8000_0000_0000),
        Status::EINVAL,
    );
    c.status("up.ok", up(1, rip, rsp), Status::Ok);
    // Pending or already running: either way a second start is refused.
    c.status("up.twice", up(1, rip, rsp), Status::EBUSY);
    let deadline = rdtsc().wrapping_add(ctx.tsc_per_ms.saturating_mul(5000));
    // SAFETY: a plain read of a static the AP writes once; no reference is created.
    let seen = || unsafe { (&raw const AP_MAILBOX).read_volatile() };
    while seen() != AP_MAGIC && (rdtsc().wrapping_sub(deadline) as i64) < 0 {
        core::hint::spin_loop();
    }
    c.value("up.ap-ran", seen(), AP_MAGIC);
    c.status("up.running", up(1, rip, rsp), Status::EBUSY);
}

fn send_ipi(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    let ipi = |bitmap: u64, vector: u64, base: u64, reserved: u64| {
        hc(Hypercall::SendIpi, [bitmap, vector, base, reserved]).rax
    };
    let bad = [
        ("ipi.empty", [0, 0x40, 0, 0]),
        ("ipi.vector-0", [1, 0, 0, 0]),
        ("ipi.vector-nmi", [1, 2, 0, 0]),
        ("ipi.vector-31", [1, 0x1f, 0, 0]),
        ("ipi.vector-256", [1, 0x100, 0, 0]),
        ("ipi.vector-max", [1, u64::MAX, 0, 0]),
        ("ipi.target-2", [0b100, 0x40, 0, 0]),
        ("ipi.target-63", [1 << 63, 0x40, 0, 0]),
        ("ipi.base-past", [1, 0x40, 2, 0]),
        ("ipi.base-overflow", [1, 0x40, u64::MAX, 0]),
        ("ipi.base-top-overflow", [1 << 63, 0x40, u64::MAX - 62, 0]),
        ("ipi.reserved", [1, 0x40, 0, 1]),
        ("ipi.reserved-max", [0b11, 0xf0, 0, u64::MAX]),
    ];
    for (name, [b, v, base, r]) in bad {
        c.status(name, ipi(b, v, base, r), Status::EINVAL);
    }
    // The storm: every call valid, both vCPUs, one exit each. Neither LAPIC is enabled
    // (this guest never sets the spurious-vector enable bit), so KVM accepts none: the
    // count delivered is 0, and nothing is left pending to interrupt anyone.
    let (mut ok, mut delivered) = (0, 0);
    for _ in 0..IPI_STORM {
        let r = hc(Hypercall::SendIpi, [0b11, 0xf0, 0, 0]);
        ok += u64::from(r.rax == Status::Ok as i64);
        delivered += r.rdx;
    }
    c.value("ipi.storm-ok", ok, IPI_STORM);
    c.value("ipi.storm-delivered", delivered, 0);
}

fn lock(ctx: &mut Ctx) {
    let tsc_per_ms = ctx.tsc_per_ms;
    let c = &mut ctx.checks;
    let wait = |flags: u64| hc(Hypercall::LockWait, [flags, 0, 0, 0]);
    let kick = |t: u64, flags: u64| hc(Hypercall::LockKick, [t, flags, 0, 0]);
    c.status("lock.wait-flags-max", wait(u64::MAX).rax, Status::EINVAL);
    c.status("lock.kick-2", kick(2, 0).rax, Status::EINVAL);
    c.status("lock.kick-alias", kick(1 << 32, 0).rax, Status::EINVAL);
    c.status("lock.kick-flags-max", kick(1, u64::MAX).rax, Status::EINVAL);
    // Never kicked: the wait ends by its bound (10 ms), reporting a timeout (0).
    let t0 = rdtsc();
    let r = wait(0);
    let ms = rdtsc().wrapping_sub(t0) / tsc_per_ms.max(1);
    c.status("lock.wait-unkicked", r.rax, Status::Ok);
    c.value("lock.wait-timed-out", r.rdx, 0);
    c.that("lock.wait-bounded-ms", ms, ms < 1000);
    // A storm of kicks to oneself is one pending bit: one wait returns at once, the next
    // times out.
    let mut ok = 0;
    for _ in 0..KICK_STORM {
        ok += u64::from(kick(0, 0).rax == Status::Ok as i64);
    }
    c.value("lock.kick-self-storm", ok, KICK_STORM);
    c.value("lock.wait-after-storm", wait(0).rdx, 1);
    c.value("lock.wait-storm-spent", wait(0).rdx, 0);
    // The AP halts and never waits: every kick is left pending, none is an error.
    let mut ok = 0;
    for _ in 0..KICK_STORM {
        let r = kick(1, 0);
        ok += u64::from(r.rax == Status::Ok as i64 && r.rdx == 0);
    }
    c.value("lock.kick-ap-storm", ok, KICK_STORM);
    c.status("lock.kick-ap", kick(1, 0).rax, Status::Ok);
}

fn balloon(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let c = &mut ctx.checks;
    use Hypercall::{BalloonDeflate as Deflate, BalloonInflate as Inflate};
    // SAFETY: the linker's symbol; only its address is taken.
    let end = (&raw const __image_end) as u64;
    let end_page = end.next_multiple_of(4096);
    c.value("bal.info-start", info(), 0);
    // The array itself.
    let a = array(&[(HIGH, 1)]);
    let raw = |h: Hypercall, addr: u64, count: u64| hc(h, [addr, count, 0, 0]).rax;
    c.status("bal.count-513", raw(Inflate, a, 513), Status::E2BIG);
    c.status("bal.count-max", raw(Inflate, a, u64::MAX), Status::E2BIG);
    c.status("bal.array-beyond-ram", raw(Inflate, mem, 1), Status::EFAULT);
    c.status(
        "bal.array-crossing-end",
        raw(Inflate, mem - 16, 2),
        Status::EFAULT,
    );
    c.status(
        "bal.array-wrap",
        raw(Inflate, u64::MAX - 15, 1),
        Status::EFAULT,
    );
    let refused: [Refused; 18] = [
        ("bal.unaligned", &[(HIGH + 1, 1)], Status::EINVAL),
        ("bal.unaligned-512", &[(HIGH + 512, 1)], Status::EINVAL),
        ("bal.empty-range", &[(HIGH, 0)], Status::EINVAL),
        ("bal.beyond-ram", &[(mem, 1)], Status::EFAULT),
        ("bal.crossing-end", &[(mem - 4096, 2)], Status::EFAULT),
        ("bal.pages-overflow", &[(HIGH, 1 << 52)], Status::EFAULT),
        (
            "bal.gpa-wrap",
            &[(0xffff_ffff_ffff_f000, 1)],
            Status::EFAULT,
        ),
        ("bal.page-0", &[(0, 1)], Status::EPERM),
        ("bal.boot-stack", &[(0x7_0000, 1)], Status::EPERM),
        ("bal.boot-edge", &[(0xf_f000, 2)], Status::EPERM),
        ("bal.kernel-start", &[(0x20_0000, 1)], Status::EPERM),
        ("bal.kernel-scratch", &[(gpa(page(0)), 1)], Status::EPERM),
        ("bal.kernel-end", &[(end_page - 4096, 2)], Status::EPERM),
        ("bal.duplicate", &[(HIGH, 1), (HIGH, 1)], Status::EINVAL),
        (
            "bal.overlap",
            &[(HIGH, 4), (HIGH + 8192, 4)],
            Status::EINVAL,
        ),
        (
            "bal.contained",
            &[(HIGH + 4096, 1), (HIGH, 4)],
            Status::EINVAL,
        ),
        // A good range first: nothing of the call is applied.
        ("bal.good-then-bad", &[(HIGH, 1), (mem, 1)], Status::EFAULT),
        (
            "bal.good-then-kernel",
            &[(HIGH, 1), (0x20_0000, 1)],
            Status::EPERM,
        ),
    ];
    for (name, ranges, want) in refused {
        c.status(name, resize(Inflate, ranges).rax, want);
    }
    c.value("bal.info-after-refusals", info(), 0);
    c.status(
        "bal.deflate-not-inflated",
        resize(Deflate, &[(HIGH, 1)]).rax,
        Status::EINVAL,
    );
    // The first page after the image is free RAM like any other.
    let after: &[(u64, u64)] = &[(end_page, 1)];
    c.status("bal.after-image", resize(Inflate, after).rax, Status::Ok);
    c.status(
        "bal.after-image-back",
        resize(Deflate, after).rax,
        Status::Ok,
    );
    let r = hc(Inflate, [a, 0, 0, 0]);
    c.status("bal.count-0", r.rax, Status::Ok);
    c.value("bal.count-0-pages", r.rdx, 0);

    // A page with content, inflated, deflated: it comes back as zeros.
    let high = HIGH as *mut u64;
    // SAFETY: identity-mapped RAM at 16 MiB, above the image; nothing else uses it.
    unsafe { high.write_volatile(0xa5a5_a5a5_a5a5_a5a5) };
    let good: &[(u64, u64)] = &[(HIGH, 4), (HIGH + (4 << 20), 1)];
    let r = resize(Inflate, good);
    c.status("bal.inflate", r.rax, Status::Ok);
    c.value("bal.inflate-pages", r.rdx, 5);
    c.status(
        "bal.inflate-twice",
        resize(Inflate, good).rax,
        Status::EBUSY,
    );
    c.status(
        "bal.inflate-partly-ballooned",
        resize(Inflate, &[(HIGH + 3 * 4096, 2)]).rax,
        Status::EBUSY,
    );
    c.status(
        "bal.deflate-partly-ballooned",
        resize(Deflate, &[(HIGH, 5)]).rax,
        Status::EINVAL,
    );
    c.value("bal.info-inflated", info(), 5);
    let r = resize(Deflate, good);
    c.status("bal.deflate", r.rax, Status::Ok);
    c.value("bal.deflate-pages", r.rdx, 5);
    c.status(
        "bal.deflate-twice",
        resize(Deflate, good).rax,
        Status::EINVAL,
    );
    // SAFETY: as above; the page was deflated, so the guest may use it again.
    c.value(
        "bal.deflated-reads-zero",
        unsafe { high.read_volatile() },
        0,
    );

    // The most ranges one call may carry, each one page, 8 KiB apart.
    let full = array_sparse();
    let r = hc(Inflate, [full, 512, 0, 0]);
    c.status("bal.inflate-512", r.rax, Status::Ok);
    c.value("bal.inflate-512-pages", r.rdx, 512);
    let r = hc(Deflate, [full, 512, 0, 0]);
    c.status("bal.deflate-512", r.rax, Status::Ok);
    c.value("bal.deflate-512-pages", r.rdx, 512);
    c.value("bal.info-end", info(), 0);
    Line::new().s("cpu-mem image end ").hex(end).emit();
}

/// 512 single-page ranges at [`SPARSE`] + 8 KiB × i, written at page [`ARRAY`].
fn array_sparse() -> u64 {
    let base = page(ARRAY).cast::<BalloonRange>();
    for i in 0..512u64 {
        let r = BalloonRange {
            gpa: SPARSE + i * 8192,
            pages: 1,
        };
        // SAFETY: 512 × 16 bytes = pages ARRAY and ARRAY + 1, inside `MEMORY`.
        unsafe { base.add(i as usize).write_volatile(r) };
    }
    gpa(page(ARRAY))
}

/// `case=ap-garbage`: starts vCPU 1 at an unmapped address with no stack. Its first fetch
/// faults, it has no IDT, so it shuts down (a triple fault), and the VMM must stop the VM
/// with that stop, naming vCPU 1. vCPU 0 waits up to 5 s; if it is still running then,
/// the AP's fault went unnoticed and it exits with 1.
pub fn ap_garbage(ctx: &mut Ctx) {
    // No check of the call's status: the AP may stop the VM before this vCPU prints it.
    hc(Hypercall::VcpuUp, [1, UNMAPPED, 0, 0]);
    let deadline = rdtsc().wrapping_add(ctx.tsc_per_ms.saturating_mul(5000));
    while (rdtsc().wrapping_sub(deadline) as i64) < 0 {
        core::hint::spin_loop();
    }
    ctx.checks.that("garbage.vm-stopped", 0, false);
}
