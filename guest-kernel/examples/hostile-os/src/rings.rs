//! `case=rings`: the shared rings, driven by hand so every index and slot can lie.
//!
//! Page use: 0–5 one ring each (a fresh page per registration, as the ABI asks), 10–11
//! data. Accepted writes go to scratch sectors only; rejected ones target protected
//! sectors (see `crate::disk`).

use core::sync::atomic::{fence, AtomicU32, Ordering};

use pvkit_abi::block::{BlockRequest, BlockResponse};
use pvkit_abi::console::{ConsoleRequest, ConsoleResponse, MAX_WRITE};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::DOORBELL as DOORBELL_PORT;
use pvkit_abi::ring::{
    offsets, BLOCK_QUEUE_ID, BROKEN, CONSOLE_QUEUE_ID, HEADER_SIZE, HOST_POLLING,
};
use pvkit_abi::{Hypercall, Status};

use crate::disk::FIRST_PROTECTED;
use crate::hcalls::request;
use crate::raw::{call, inb, ind, outb, outd, outw, rdtsc};
use crate::{gpa, page, Ctx};

const KIND_CONSOLE: u64 = CONSOLE_QUEUE_ID as u64;
const KIND_BLOCK: u64 = BLOCK_QUEUE_ID as u64;
const DOORBELL: u64 = 1;
const EVENTFD: u64 = 2;
const POLL: u64 = 3;
const CONSOLE_RING: u32 = CONSOLE_QUEUE_ID;
const BLOCK_RING: u32 = BLOCK_QUEUE_ID;

/// A ring driven field by field: nothing here trusts or protects anything.
struct RawRing {
    page: usize,
    size: u32,
    req: usize,
    rsp: usize,
    /// Requests written so far (the private producer index).
    prod: u32,
}

impl RawRing {
    /// Writes a fresh header (all indices 0) for `size` slots of `req`/`rsp` bytes.
    fn init(page_index: usize, size: u32, req: usize, rsp: usize) -> Self {
        let r = RawRing {
            page: page_index,
            size,
            req,
            rsp,
            prod: 0,
        };
        for off in (0..HEADER_SIZE as u64).step_by(4) {
            r.hdr(off).store(0, Ordering::Relaxed);
        }
        r.hdr(offsets::SIZE).store(size, Ordering::Release);
        r
    }

    fn base(&self) -> *mut u8 {
        page(self.page)
    }

    fn bytes(&self) -> u64 {
        (HEADER_SIZE + self.size as usize * (self.req + self.rsp)) as u64
    }

    fn hdr(&self, off: u64) -> &AtomicU32 {
        // SAFETY: a 4-byte aligned header field of our own page, shared with the host.
        unsafe { &*self.base().add(off as usize).cast::<AtomicU32>() }
    }

    fn register(&self, kind: u64, transport: u64) -> i64 {
        // SAFETY: the page is ours and from now on only accessed as the ring protocol
        // says (or deliberately not: that is the point).
        unsafe {
            call(
                Hypercall::RegisterRegion as u32,
                [kind, gpa(self.base()), self.bytes(), transport],
            )
        }
        .rax
    }

    fn req_slot(&self, i: u32) -> *mut u8 {
        let off = HEADER_SIZE + (i % self.size) as usize * self.req;
        // SAFETY: inside the ring, which fits its page.
        unsafe { self.base().add(off) }
    }

    fn rsp_slot(&self, i: u32) -> *mut u8 {
        let off = HEADER_SIZE + self.size as usize * self.req + (i % self.size) as usize * self.rsp;
        // SAFETY: inside the ring, which fits its page.
        unsafe { self.base().add(off) }
    }

    fn push_block(&mut self, req: &BlockRequest) {
        crate::hcalls::put_request(self.req_slot(self.prod), req);
        self.prod = self.prod.wrapping_add(1);
    }

    fn push_console(&mut self, req: ConsoleRequest) {
        // SAFETY: a request slot of our ring, aligned for the request.
        unsafe {
            self.req_slot(self.prod)
                .cast::<ConsoleRequest>()
                .write_volatile(req)
        };
        self.prod = self.prod.wrapping_add(1);
    }

    /// Stores `req_prod` (release) and fences, as a producer publishes.
    fn publish(&self) {
        self.set_req_prod(self.prod);
    }

    fn set_req_prod(&self, v: u32) {
        fence(Ordering::Release);
        self.hdr(offsets::REQ_PROD).store(v, Ordering::Release);
        pvkit_guest::ring::full_fence();
    }

    fn rsp_prod(&self) -> u32 {
        self.hdr(offsets::RSP_PROD).load(Ordering::Acquire)
    }

    fn flags(&self) -> u32 {
        self.hdr(offsets::HOST_FLAGS).load(Ordering::Acquire)
    }

    fn block_rsp(&self, i: u32) -> BlockResponse {
        // SAFETY: a response slot of our ring.
        unsafe { self.rsp_slot(i).cast::<BlockResponse>().read_volatile() }
    }

    fn console_rsp(&self, i: u32) -> ConsoleResponse {
        // SAFETY: a response slot of our ring.
        unsafe { self.rsp_slot(i).cast::<ConsoleResponse>().read_volatile() }
    }

    /// Spins until `rsp_prod == target` or a flag in `flags` is set, for at most `ms`.
    fn wait(&self, ctx: &Ctx, target: u32, flags: u32, ms: u64) -> bool {
        let deadline = rdtsc().wrapping_add(ctx.tsc_per_ms.saturating_mul(ms));
        loop {
            if self.rsp_prod() == target || self.flags() & flags != 0 {
                return true;
            }
            if (rdtsc().wrapping_sub(deadline) as i64) > 0 {
                return false;
            }
            core::hint::spin_loop();
        }
    }
}

/// Rings queue `queue`'s doorbell: its id, 32 bits, to the one doorbell port.
fn kick(queue: u32) {
    outd(DOORBELL_PORT, queue);
}

fn ring_kick(id: u64) -> (i64, u64) {
    // SAFETY: the host accesses only registered rings.
    let r = unsafe { call(Hypercall::RingKick as u32, [id, 0, 0, 0]) };
    (r.rax, r.rdx)
}

fn alive(ctx: &mut Ctx, name: &str) {
    // SAFETY: touches no memory.
    let r = unsafe { call(Hypercall::AbiVersion as u32, [0; 4]) };
    ctx.checks.status(name, r.rax, Status::Ok);
}

/// Checks a block response's status; a response carrying the wrong id is reported as the
/// non-status `raw=0x8000000000000000` (a mismatch).
fn rsp_check(ctx: &mut Ctx, name: &str, rsp: BlockResponse, id: u64, want: Status) {
    let got = if rsp.id == id { rsp.status } else { i64::MIN };
    ctx.checks.status(name, got, want);
}

fn block_doorbell(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let buf = gpa(page(10));
    let p = FIRST_PROTECTED;
    let mut a = RawRing::init(0, 8, size_of::<BlockRequest>(), size_of::<BlockResponse>());
    ctx.checks.status(
        "ring.a.register",
        a.register(KIND_BLOCK, DOORBELL),
        Status::Ok,
    );
    ctx.checks.value(
        "ring.a.req-event-armed",
        u64::from(a.hdr(offsets::REQ_EVENT).load(Ordering::Acquire)),
        1,
    );
    let with_id = |mut r: BlockRequest, id: u64| {
        r.id = id;
        r
    };
    let batch = [
        (with_id(request(1, 0, 1, &[(buf, 512)]), 1), Status::Ok),
        (with_id(request(2, p, 1, &[(mem, 512)]), 2), Status::EFAULT),
        (
            with_id(request(2, p, 1, &[(u64::MAX - 511, 512)]), 3),
            Status::EFAULT,
        ),
        (with_id(request(9, p, 1, &[(buf, 512)]), 4), Status::EINVAL),
        (with_id(request(2, p, 9, &[(buf, 512)]), 5), Status::E2BIG),
        (with_id(request(3, 0, 0, &[]), 6), Status::Ok),
        (
            with_id(request(1, u64::MAX, 1, &[(buf, 512)]), u64::MAX),
            Status::ERANGE,
        ),
    ];
    for (r, _) in batch.iter() {
        a.push_block(r);
    }
    a.publish();
    kick(BLOCK_RING);
    // The doorbell transport serves the ring inside the port write's exit.
    ctx.checks
        .value("ring.a.doorbell-sync", u64::from(a.rsp_prod()), 7);
    const NAMES: [&str; 7] = [
        "ring.a.rsp.read-ok",
        "ring.a.rsp.seg-beyond-ram",
        "ring.a.rsp.seg-wrap",
        "ring.a.rsp.bad-op",
        "ring.a.rsp.nseg9",
        "ring.a.rsp.flush",
        "ring.a.rsp.sector-max-id-max",
    ];
    for (i, ((r, want), name)) in batch.iter().zip(NAMES).enumerate() {
        let rsp = a.block_rsp(i as u32);
        rsp_check(ctx, name, rsp, r.id, *want);
    }
    ctx.checks
        .value("ring.a.rsp.read-ok.bytes", a.block_rsp(0).bytes, 512);

    // A slot rewritten after it was published: the host copies it once when it services
    // the ring (here: at the kick) and validates the copy.
    a.push_block(&with_id(request(2, 2, 1, &[(buf, 512)]), 7));
    a.publish();
    crate::hcalls::put(0, HEADER_SIZE + 7 * size_of::<BlockRequest>() + 8, 9u32);
    let (st, n) = ring_kick(KIND_BLOCK);
    ctx.checks.status("ring.a.kick", st, Status::Ok);
    ctx.checks.value("ring.a.kick.serviced", n, 1);
    rsp_check(
        ctx,
        "ring.a.rsp.rewritten-slot",
        a.block_rsp(7),
        7,
        Status::EINVAL,
    );

    // Requests pushed but never published are not serviced.
    a.push_block(&with_id(request(1, 0, 1, &[(buf, 512)]), 8));
    let (st, n) = ring_kick(KIND_BLOCK);
    ctx.checks.status("ring.a.kick-unpublished", st, Status::Ok);
    ctx.checks.value("ring.a.kick-unpublished.serviced", n, 0);

    // req_prod far ahead of the host's consumer: the ring is BROKEN, the VMM carries on.
    a.set_req_prod(a.prod.wrapping_add(1000));
    kick(BLOCK_RING);
    ctx.checks.value(
        "ring.a.broken-flag",
        u64::from(a.flags() & BROKEN),
        u64::from(BROKEN),
    );
    ctx.checks.value(
        "ring.a.broken.rsp-prod-unchanged",
        u64::from(a.rsp_prod()),
        8,
    );
    ctx.checks
        .status("ring.a.broken.kick", ring_kick(KIND_BLOCK).0, Status::EIO);
    kick(BLOCK_RING);
    // Putting req_prod back does not revive a broken ring.
    a.set_req_prod(a.prod);
    ctx.checks.status(
        "ring.a.broken.kick-after-repair",
        ring_kick(KIND_BLOCK).0,
        Status::EIO,
    );
    // The synchronous path and other calls still work.
    let r = request(1, 0, 1, &[(buf, 512)]);
    let at = crate::req_at();
    crate::hcalls::put_request(at, &r);
    // SAFETY: a valid request into our data page.
    let st = unsafe { call(Hypercall::BlockIo as u32, [gpa(at), 0, 0, 0]) }.rax;
    ctx.checks
        .status("ring.a.broken.block-io-still-ok", st, Status::Ok);
    alive(ctx, "ring.a.broken.vmm-alive");

    // A fresh registration replaces the broken ring; a failed one changes nothing.
    let mut b = RawRing::init(1, 8, size_of::<BlockRequest>(), size_of::<BlockResponse>());
    ctx.checks.status(
        "ring.b.register",
        b.register(KIND_BLOCK, DOORBELL),
        Status::Ok,
    );
    ctx.checks.value("ring.b.flags", u64::from(b.flags()), 0);
    b.push_block(&with_id(request(1, 1, 1, &[(buf, 512)]), 20));
    b.publish();
    kick(BLOCK_RING);
    rsp_check(ctx, "ring.b.rsp.read", b.block_rsp(0), 20, Status::Ok);
    let bad = RawRing::init(2, 3, size_of::<BlockRequest>(), size_of::<BlockResponse>());
    ctx.checks.status(
        "ring.bad-size.register",
        bad.register(KIND_BLOCK, DOORBELL),
        Status::EINVAL,
    );
    b.push_block(&with_id(request(1, 2, 1, &[(buf, 512)]), 21));
    b.publish();
    kick(BLOCK_RING);
    ctx.checks.value(
        "ring.b.after-failed-registration",
        u64::from(b.rsp_prod()),
        2,
    );
    rsp_check(ctx, "ring.b.rsp.read2", b.block_rsp(1), 21, Status::Ok);
    // Wrap the slots several times (32 requests through 8 slots).
    for round in 0..4u64 {
        for i in 0..8u64 {
            b.push_block(&with_id(
                request(1, i, 1, &[(buf, 512)]),
                100 + round * 8 + i,
            ));
        }
        b.publish();
        kick(BLOCK_RING);
    }
    ctx.checks
        .value("ring.b.wrapped", u64::from(b.rsp_prod()), 34);
    rsp_check(ctx, "ring.b.rsp.last", b.block_rsp(33), 131, Status::Ok);
}

fn block_poll(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let buf = gpa(page(10));
    let mut c = RawRing::init(3, 8, size_of::<BlockRequest>(), size_of::<BlockResponse>());
    let st = c.register(KIND_BLOCK, POLL);
    ctx.checks.status("ring.poll.register", st, Status::Ok);
    if st != 0 {
        return;
    }
    ctx.checks.value(
        "ring.poll.host-polling",
        u64::from(c.flags() & HOST_POLLING),
        u64::from(HOST_POLLING),
    );
    // Publish a valid write to scratch sector 3, then keep rewriting the slot while the
    // host's polling thread may be copying it: whatever copy it took is validated as a
    // whole, so the outcome is one of the three defined ones, never a crash or a write
    // outside sector 3.
    let mut r = request(2, 3, 1, &[(buf, 512)]);
    r.id = 30;
    c.push_block(&r);
    c.publish();
    let slot = HEADER_SIZE;
    for i in 0..24u32 {
        let (op, addr) = if i % 2 == 0 { (9u32, mem) } else { (2, buf) };
        crate::hcalls::put(3, slot + 8, op);
        crate::hcalls::put(3, slot + 24, addr);
    }
    let done = c.wait(ctx, 1, 0, 2000);
    ctx.checks.value("ring.poll.serviced", u64::from(done), 1);
    ctx.checks.status_any(
        "ring.poll.rsp.raced-slot",
        c.block_rsp(0).status,
        &[Status::Ok, Status::EINVAL, Status::EFAULT],
    );
    let mut r = request(1, 4, 1, &[(buf, 512)]);
    r.id = 31;
    c.push_block(&r);
    c.publish();
    let done = c.wait(ctx, 2, 0, 2000);
    ctx.checks.value("ring.poll.serviced2", u64::from(done), 1);
    rsp_check(ctx, "ring.poll.rsp.read", c.block_rsp(1), 31, Status::Ok);
    // Corrupt indices on a polled ring: the polling thread marks it BROKEN.
    c.set_req_prod(c.prod.wrapping_add(0x8000_0000));
    let seen = c.wait(ctx, u32::MAX, BROKEN, 2000);
    ctx.checks.value(
        "ring.poll.broken-flag",
        u64::from(seen && c.flags() & BROKEN != 0),
        1,
    );
    ctx.checks.status(
        "ring.poll.broken.kick",
        ring_kick(KIND_BLOCK).0,
        Status::EIO,
    );
    alive(ctx, "ring.poll.vmm-alive");
}

fn block_eventfd(ctx: &mut Ctx) {
    let buf = gpa(page(10));
    let mut d = RawRing::init(4, 8, size_of::<BlockRequest>(), size_of::<BlockResponse>());
    let st = d.register(KIND_BLOCK, EVENTFD);
    if !ctx.features.contains(Features::RING_EVENTFD) {
        ctx.checks
            .status("ring.eventfd.register", st, Status::EOPNOTSUPP);
        return;
    }
    ctx.checks.status("ring.eventfd.register", st, Status::Ok);
    let mut r = request(1, 5, 1, &[(buf, 512)]);
    r.id = 40;
    d.push_block(&r);
    d.publish();
    kick(BLOCK_RING);
    let done = d.wait(ctx, 1, 0, 2000);
    ctx.checks
        .value("ring.eventfd.serviced", u64::from(done), 1);
    rsp_check(ctx, "ring.eventfd.rsp.read", d.block_rsp(0), 40, Status::Ok);
    d.set_req_prod(d.prod.wrapping_sub(1000));
    kick(BLOCK_RING);
    let seen = d.wait(ctx, u32::MAX, BROKEN, 2000);
    ctx.checks.value(
        "ring.eventfd.broken-flag",
        u64::from(seen && d.flags() & BROKEN != 0),
        1,
    );
    alive(ctx, "ring.eventfd.vmm-alive");
}

fn console_ring(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let text = b"[ring ok]\n";
    let t = gpa(text.as_ptr());
    let mut e = RawRing::init(
        5,
        4,
        size_of::<ConsoleRequest>(),
        size_of::<ConsoleResponse>(),
    );
    ctx.checks.status(
        "ring.console.register",
        e.register(KIND_CONSOLE, DOORBELL),
        Status::Ok,
    );
    let reqs = [
        (t, text.len() as u32, Status::Ok, "ring.console.rsp.ok"),
        (
            t,
            (MAX_WRITE + 1) as u32,
            Status::E2BIG,
            "ring.console.rsp.too-long",
        ),
        (mem, 16, Status::EFAULT, "ring.console.rsp.beyond-ram"),
        (u64::MAX - 1, 16, Status::EFAULT, "ring.console.rsp.wrap"),
    ];
    for (i, (addr, len, _, _)) in reqs.iter().enumerate() {
        e.push_console(ConsoleRequest {
            addr: *addr,
            len: *len,
            id: 50 + i as u32,
        });
    }
    e.publish();
    kick(CONSOLE_RING);
    ctx.checks
        .value("ring.console.serviced", u64::from(e.rsp_prod()), 4);
    for (i, (_, _, want, name)) in reqs.iter().enumerate() {
        let rsp = e.console_rsp(i as u32);
        let got = if rsp.id == 50 + i as u32 {
            rsp.status
        } else {
            i64::MIN
        };
        ctx.checks.status(name, got, *want);
    }
    ctx.checks.value(
        "ring.console.rsp.ok.written",
        u64::from(e.console_rsp(0).written),
        10,
    );
    // An index jump on the console ring breaks it too.
    e.set_req_prod(e.prod.wrapping_add(5));
    kick(CONSOLE_RING);
    ctx.checks.value(
        "ring.console.broken-flag",
        u64::from(e.flags() & BROKEN),
        u64::from(BROKEN),
    );
}

/// A read whose destination is the ring itself: disk data lands on the header and the
/// slots while the host services the ring. Defined outcome: the request completes, the
/// host then finds whatever indices the data left and carries on or marks the ring
/// BROKEN; the VMM survives either way.
fn self_overwrite(ctx: &mut Ctx) {
    let mut f = RawRing::init(6, 8, size_of::<BlockRequest>(), size_of::<BlockResponse>());
    ctx.checks.status(
        "ring.self.register",
        f.register(KIND_BLOCK, DOORBELL),
        Status::Ok,
    );
    let ring = gpa(page(6));
    f.push_block(&request(1, FIRST_PROTECTED, 1, &[(ring, 4096)]));
    f.publish();
    kick(BLOCK_RING);
    ctx.checks.status_any(
        "ring.self.kick",
        ring_kick(KIND_BLOCK).0,
        &[Status::Ok, Status::EIO],
    );
    alive(ctx, "ring.self.vmm-alive");
}

/// Re-registers rings over and over, cycling through the transports (ioeventfds attached
/// and detached, the I/O thread woken, polling switched on and off), then uses the last.
fn churn(ctx: &mut Ctx) {
    let eventfd = ctx.features.contains(Features::RING_EVENTFD);
    let mut failures = 0u64;
    for i in 0..30u64 {
        let transport = match i % 3 {
            0 => DOORBELL,
            1 if eventfd => EVENTFD,
            1 => DOORBELL,
            _ => POLL,
        };
        let (kind, req, rsp) = if i % 5 == 4 {
            (
                KIND_CONSOLE,
                size_of::<ConsoleRequest>(),
                size_of::<ConsoleResponse>(),
            )
        } else {
            (
                KIND_BLOCK,
                size_of::<BlockRequest>(),
                size_of::<BlockResponse>(),
            )
        };
        let r = RawRing::init(15 + (i % 8) as usize, 8, req, rsp);
        if r.register(kind, transport) != 0 {
            failures += 1;
        }
    }
    ctx.checks
        .value("ring.churn.registrations-failed", failures, 0);
    let buf = gpa(page(10));
    let mut g = RawRing::init(23, 8, size_of::<BlockRequest>(), size_of::<BlockResponse>());
    ctx.checks.status(
        "ring.churn.final-register",
        g.register(KIND_BLOCK, DOORBELL),
        Status::Ok,
    );
    let mut r = request(1, 0, 1, &[(buf, 512)]);
    r.id = 60;
    g.push_block(&r);
    g.publish();
    kick(BLOCK_RING);
    rsp_check(ctx, "ring.churn.final-read", g.block_rsp(0), 60, Status::Ok);
}

fn bad_ids(ctx: &mut Ctx) {
    for (name, id) in [
        ("ring.kick.class7", 0x7_0000u64),
        ("ring.kick.page-index", KIND_BLOCK | 0x8000),
        ("ring.kick.id-max", u64::MAX),
        ("ring.kick.id-upper", KIND_BLOCK | (1 << 32)),
    ] {
        ctx.checks.status(name, ring_kick(id).0, Status::EINVAL);
    }
    // Doorbell values that name no queue (unknown classes, queues no device has, page
    // indices), and doorbells of every width; the reserved ports after the doorbell; reads
    // of the doorbell port.
    for v in [
        0u32,
        0x3_0000,
        0x7_0000,
        0x1_0001,
        0x2_8000,
        0xffff,
        u32::MAX,
    ] {
        outb(DOORBELL_PORT, v as u8);
        outw(DOORBELL_PORT, v as u16);
        outd(DOORBELL_PORT, v);
    }
    for port in DOORBELL_PORT + 1..DOORBELL_PORT + 16 {
        outb(port, 0xff);
        outd(port, BLOCK_RING);
    }
    ctx.checks
        .value("ring.doorbell-read", u64::from(inb(DOORBELL_PORT)), 0xff);
    ctx.checks.value(
        "ring.doorbell-read32",
        u64::from(ind(DOORBELL_PORT)),
        0xffff_ffff,
    );
    alive(ctx, "ring.vmm-alive");
}

/// The whole `rings` scenario.
pub fn run(ctx: &mut Ctx) {
    block_doorbell(ctx);
    block_poll(ctx);
    block_eventfd(ctx);
    console_ring(ctx);
    self_overwrite(ctx);
    churn(ctx);
    bad_ids(ctx);
}
