//! `case=hypercalls`: every call with arguments the ABI rejects, and the stop scenarios.
//!
//! Page use: 0 ring header for `RegisterRegion`, 7 clock page, 8 the `BenchSample`, the
//! `BlockRequest` (+0x100) and the op log (+0x800), 10–11 data. Every write the host
//! rejects targets a sector at or above [`crate::disk::FIRST_PROTECTED`], so a host that
//! wrote anyway changes the part of the image the test checksums; accepted writes go to
//! the scratch sectors below it.

use pvkit_abi::bench::{MAX_OP_LOG, MAX_SAMPLES};
use pvkit_abi::block::BlockRequest;
use pvkit_abi::clock::CLOCK_PAGE_REGION;
use pvkit_abi::console::MAX_WRITE;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::NULL;
use pvkit_abi::ring::{BLOCK_QUEUE_ID, CONSOLE_QUEUE_ID, REGION_PER_VCPU};
use pvkit_abi::{Hypercall, Status};

use crate::raw::{call, hc, outb};
use crate::{gpa, page, say, Ctx};

/// A guest-physical address between the end of RAM and 4 GiB: identity-mapped by the boot
/// page tables, but not RAM (the 32-bit device hole).
pub const HOLE: u64 = 0xC000_0000;
/// Far beyond any RAM.
pub const FAR: u64 = 1 << 40;

/// A valid benchmark case id: console / PV hypercall / 64-byte writes.
const CASE: u64 = 1 | (2 << 16) | (1 << 32);

fn nr(h: Hypercall) -> u32 {
    h as u32
}

/// Writes `v` at byte offset `off` of page `p`.
pub fn put<T>(p: usize, off: usize, v: T) {
    // SAFETY: callers pass offsets inside the page, aligned for T; the memory is ours and
    // only accessed through raw pointers.
    unsafe { page(p).add(off).cast::<T>().write_volatile(v) }
}

/// Reads a `T` at byte offset `off` of page `p`.
pub fn get<T>(p: usize, off: usize) -> T {
    // SAFETY: as `put`.
    unsafe { page(p).add(off).cast::<T>().read_volatile() }
}

/// Writes a block request at `at` (a pointer into the scratch pages).
pub fn put_request(at: *mut u8, req: &BlockRequest) {
    // SAFETY: `at` points into the scratch pages with room for a request, 8-byte aligned.
    unsafe { at.cast::<BlockRequest>().write_volatile(*req) }
}

/// A request with `segs` as `(addr, len)` pairs (at most 8 are stored; `nr_segments` is
/// given separately so it can lie).
pub fn request(op: u32, sector: u64, nr_segments: u32, segs: &[(u64, u32)]) -> BlockRequest {
    let mut r = BlockRequest {
        id: 0x1d,
        op,
        nr_segments,
        sector,
        ..BlockRequest::default()
    };
    for (slot, &(addr, len)) in r.segments.iter_mut().zip(segs) {
        slot.addr = addr;
        slot.len = len;
    }
    r
}

fn console(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    let text = b"[console ok]\n";
    let t = gpa(text.as_ptr());
    let cw = |a: u64, l: u64| {
        // SAFETY: the host only reads guest memory for ConsoleWrite.
        unsafe { call(nr(Hypercall::ConsoleWrite), [a, l, 0, 0]) }
    };
    let r = cw(t, text.len() as u64);
    c.status("console.ok", r.rax, Status::Ok);
    c.value("console.ok.bytes", r.rdx, text.len() as u64);
    let r = cw(t, 0);
    c.status("console.len0", r.rax, Status::Ok);
    c.value("console.len0.bytes", r.rdx, 0);
    // An empty range is accepted only at or below the end of RAM (memory::guest_range).
    c.status("console.len0-far", cw(FAR, 0).rax, Status::EFAULT);
    c.status("console.beyond-ram", cw(ctx.mem, 16).rax, Status::EFAULT);
    c.status("console.far", cw(FAR, 16).rax, Status::EFAULT);
    c.status("console.hole", cw(HOLE, 16).rax, Status::EFAULT);
    c.status("console.cross-end", cw(ctx.mem - 8, 16).rax, Status::EFAULT);
    c.status("console.wrap", cw(u64::MAX - 1, 16).rax, Status::EFAULT);
    c.status(
        "console.wrap-max",
        cw(u64::MAX, u64::MAX).rax,
        Status::E2BIG,
    );
    c.status("console.len-huge", cw(t, u64::MAX).rax, Status::E2BIG);
    c.status("console.len-cap+1", cw(t, MAX_WRITE + 1).rax, Status::E2BIG);
    c.status(
        "console.len-cap+1-far",
        cw(FAR, MAX_WRITE + 1).rax,
        Status::E2BIG,
    );
    // The last bytes of RAM are fine.
    let edge = b"<edge of ram>\n";
    let at = ctx.mem - edge.len() as u64;
    for (i, &b) in edge.iter().enumerate() {
        // SAFETY: identity map; the top of RAM is not used by anything else.
        unsafe { ((at + i as u64) as *mut u8).write_volatile(b) };
    }
    let r = cw(at, edge.len() as u64);
    c.status("console.end-of-ram", r.rax, Status::Ok);
}

fn unknown(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    for (name, n) in [
        ("hc.unknown.0", 0u64),
        ("hc.unknown.12", 12),
        ("hc.unknown.0xffff", 0xffff),
        ("hc.unknown.0x80000001", 0x8000_0001),
        ("hc.unknown.0xffffffff", 0xffff_ffff),
        // RAX's upper half must be 0: 1 | 1 << 32 is not `AbiVersion`.
        ("hc.unknown.rax-upper-abi-version", 1 | (1 << 32)),
        ("hc.unknown.rax-upper-features", 2 | (0xdead << 40)),
    ] {
        // SAFETY: arguments name no memory the host may touch for an unknown call.
        let r = unsafe { hc(n, u64::MAX, u64::MAX, u64::MAX, u64::MAX) };
        c.status(name, r.rax, Status::ENOSYS);
    }
}

fn bench(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let c = &mut ctx.checks;
    let sample = |case: u64, count: u32, samples_addr: u64| {
        put(8, 0, case);
        put(8, 8, 1u64); // ops
        put(8, 48, 0u32); // flags
        put(8, 52, count);
        put(8, 56, samples_addr);
        gpa(page(8))
    };
    let br = |a0: u64, a1: u64, a2: u64| {
        // SAFETY: the host only reads guest memory for BenchResult.
        unsafe { call(nr(Hypercall::BenchResult), [a0, a1, a2, 0]) }.rax
    };
    let s = sample(CASE, 0, 0);
    c.status("bench.sample-beyond-ram", br(mem, 0, 0), Status::EFAULT);
    c.status("bench.sample-cross-end", br(mem - 40, 0, 0), Status::EFAULT);
    c.status("bench.sample-wrap", br(u64::MAX - 8, 0, 0), Status::EFAULT);
    sample(0, 0, 0);
    c.status("bench.bad-case", br(s, 0, 0), Status::EINVAL);
    sample(CASE, 4, mem);
    c.status("bench.samples-beyond-ram", br(s, 0, 0), Status::EFAULT);
    sample(CASE, 8, u64::MAX - 16);
    c.status("bench.samples-wrap", br(s, 0, 0), Status::EFAULT);
    sample(CASE, MAX_SAMPLES + 1, s);
    c.status("bench.samples-over-cap", br(s, 0, 0), Status::E2BIG);
    sample(CASE, u32::MAX, s);
    c.status("bench.samples-u32max", br(s, 0, 0), Status::E2BIG);
    sample(CASE, 0, 0);
    c.status("bench.log-beyond-ram", br(s, mem, 1), Status::EFAULT);
    c.status("bench.log-wrap", br(s, u64::MAX - 10, 2), Status::EFAULT);
    c.status(
        "bench.log-over-cap",
        br(s, s, MAX_OP_LOG + 1),
        Status::E2BIG,
    );
    c.status("bench.log-huge", br(s, s, u64::MAX), Status::E2BIG);
    // Op logs whose entries are nonsense: the call succeeds and the host's verification
    // of the sample fails (the test asserts that on the host side).
    let log = gpa(page(8)) + 0x800;
    put(8, 0x800, 0u64); // sector
    put(8, 0x808, mem); // addr: beyond RAM
    put(8, 0x810, 512u32);
    put(8, 0x814, 1u32); // read
    c.status("bench.log-entry-beyond-ram", br(s, log, 1), Status::Ok);
    put(8, 0x808, gpa(page(10)));
    put(8, 0x810, u32::MAX); // len
    c.status("bench.log-entry-len-max", br(s, log, 1), Status::Ok);
    put(8, 0x810, 512u32);
    put(8, 0x800, u64::MAX); // sector + 1 overflows
    c.status("bench.log-entry-sector-max", br(s, log, 1), Status::Ok);
    c.status("bench.ok", br(s, 0, 0), Status::Ok);
}

fn phases(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    let bp = |case: u64, mark: u64, ops: u64| {
        // SAFETY: touches no memory.
        unsafe { call(nr(Hypercall::BenchPhase), [case, mark, ops, 0]) }.rax
    };
    c.status("phase.bad-case", bp(0, 1, 0), Status::EINVAL);
    c.status(
        "phase.bad-case-upper",
        bp(CASE | 1 << 48, 1, 0),
        Status::EINVAL,
    );
    c.status("phase.bad-mark", bp(CASE, 3, 0), Status::EINVAL);
    c.status("phase.end-without-begin", bp(CASE, 2, 0), Status::EINVAL);
    // At most 16 open phases; a 17th is refused, re-beginning an open one restarts it.
    let id = |v: u64| 1 | (v % 10 + 1) << 16 | (v / 10 + 1) << 32;
    let mut opened = 0;
    for v in 0..16 {
        if bp(id(v), 1, 0) == 0 {
            opened += 1;
        }
    }
    c.value("phase.open-16", opened, 16);
    c.status("phase.open-17th", bp(id(16), 1, 0), Status::EBUSY);
    c.status("phase.reopen", bp(id(3), 1, 0), Status::Ok);
    let mut closed = 0;
    for v in 0..16 {
        if bp(id(v), 2, u64::MAX) == 0 {
            closed += 1;
        }
    }
    c.value("phase.close-16", closed, 16);
}

fn regions(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let clock = ctx.features.contains(Features::CLOCK);
    let c = &mut ctx.checks;
    let ring = gpa(page(0));
    let header = |size: u32, req_prod: u32, rsp_prod: u32| {
        put(0, 0, req_prod);
        put(0, 4, 0u32);
        put(0, 8, rsp_prod);
        put(0, 12, 0u32);
        put(0, 16, size);
        put(0, 20, 0u32);
    };
    const BLK: u64 = BLOCK_QUEUE_ID as u64;
    const CON: u64 = CONSOLE_QUEUE_ID as u64;
    const CLK: u64 = CLOCK_PAGE_REGION;
    let rr = |kind: u64, addr: u64, len: u64, flags: u64| {
        // SAFETY: registrations the host refuses change nothing; the one that succeeds
        // (the clock page) names page 7, used for nothing else.
        unsafe { call(nr(Hypercall::RegisterRegion), [kind, addr, len, flags]) }.rax
    };
    header(8, 0, 0);
    c.status(
        "region.misaligned",
        rr(BLK, ring + 8, 4096, 1),
        Status::EINVAL,
    );
    c.status(
        "region.misaligned-1",
        rr(BLK, ring + 1, 4096, 1),
        Status::EINVAL,
    );
    c.status("region.beyond-ram", rr(BLK, mem, 4096, 1), Status::EFAULT);
    c.status("region.hole", rr(BLK, HOLE, 4096, 1), Status::EFAULT);
    c.status(
        "region.cross-end",
        rr(BLK, mem - 4096, 8192, 1),
        Status::EFAULT,
    );
    c.status(
        "region.wrap",
        rr(BLK, 0xffff_ffff_ffff_f000, 0x2000, 1),
        Status::EFAULT,
    );
    c.status(
        "region.len-huge",
        rr(BLK, ring, u64::MAX, 1),
        Status::EFAULT,
    );
    c.status("region.len0", rr(BLK, ring, 0, 1), Status::EINVAL);
    c.status(
        "region.len-header-only",
        rr(BLK, ring, 64, 1),
        Status::EINVAL,
    );
    for (name, size) in [
        ("region.size3", 3u32),
        ("region.size0", 0),
        ("region.size512", 512),
        ("region.size-u32max", u32::MAX),
    ] {
        header(size, 0, 0);
        c.status(name, rr(BLK, ring, 4096, 1), Status::EINVAL);
    }
    header(8, 100, 0);
    c.status(
        "region.corrupt-indices",
        rr(BLK, ring, 4096, 1),
        Status::EINVAL,
    );
    header(8, 0, 0);
    for (name, kind) in [
        ("region.class7", 0x7_0000u64),
        ("region.upper-bits", BLK | 1 << 32),
        ("region.kind-max", u64::MAX),
    ] {
        c.status(name, rr(kind, ring, 4096, 1), Status::EINVAL);
    }
    for (name, transport) in [
        ("region.transport0", 0u64),
        ("region.transport4", 4),
        ("region.transport-max", u64::MAX),
        ("region.flags-unknown", 1 | 1 << 9),
        ("region.ring-per-vcpu", 1 | REGION_PER_VCPU),
    ] {
        c.status(name, rr(BLK, ring, 4096, transport), Status::EINVAL);
    }
    c.status(
        "region.console-misaligned",
        rr(CON, ring + 64, 4096, 1),
        Status::EINVAL,
    );
    header(16, 0, 0);
    c.status(
        "region.console-too-short",
        rr(CON, ring, 100, 1),
        Status::EINVAL,
    );
    let clk = gpa(page(7));
    let want = |s: Status| if clock { s } else { Status::EOPNOTSUPP };
    c.status(
        "region.clock-misaligned",
        rr(CLK, clk + 4, 4096, 0),
        want(Status::EINVAL),
    );
    c.status(
        "region.clock-beyond-ram",
        rr(CLK, mem, 4096, 0),
        want(Status::EFAULT),
    );
    c.status(
        "region.clock-wrap",
        rr(CLK, 0xffff_ffff_ffff_f000, 0x2000, 0),
        want(Status::EFAULT),
    );
    c.status(
        "region.clock-len0",
        rr(CLK, clk, 0, 0),
        want(Status::EINVAL),
    );
    c.status(
        "region.clock-transport",
        rr(CLK, clk, 4096, 1),
        want(Status::EINVAL),
    );
    c.status("region.clock-ok", rr(CLK, clk, 4096, 0), want(Status::Ok));
    c.status(
        "region.clock-per-vcpu",
        rr(CLK, clk, 4096, REGION_PER_VCPU),
        want(Status::Ok),
    );
}

fn block(ctx: &mut Ctx) {
    let mem = ctx.mem;
    let c = &mut ctx.checks;
    c.value(
        "block.feature",
        u64::from(ctx.features.contains(Features::BLOCK)),
        1,
    );
    // SAFETY: touches no memory.
    let cap = unsafe { call(nr(Hypercall::BlockCapacity), [0; 4]) };
    c.status("block.capacity", cap.rax, Status::Ok);
    let cap = cap.rdx;
    crate::out::Line::new().s("info capacity=").dec(cap).emit();
    let at = crate::req_at();
    let req_gpa = gpa(at);
    let buf = gpa(page(10));
    let bio = |req: &BlockRequest| {
        put_request(at, req);
        // SAFETY: the request and its valid segments are our scratch pages (10-11 and the
        // upper half of RAM for the 1 MiB case), not used through references.
        let r = unsafe { call(nr(Hypercall::BlockIo), [req_gpa, 0, 0, 0]) };
        (r.rax, r.rdx)
    };
    let raw = |a: u64| {
        // SAFETY: the request address is outside RAM: nothing is accessed.
        unsafe { call(nr(Hypercall::BlockIo), [a, 0, 0, 0]) }.rax
    };
    c.status("block.req-beyond-ram", raw(mem), Status::EFAULT);
    c.status("block.req-cross-end", raw(mem - 100), Status::EFAULT);
    c.status("block.req-wrap", raw(u64::MAX - 8), Status::EFAULT);
    c.status("block.req-hole", raw(HOLE), Status::EFAULT);

    let p = crate::disk::FIRST_PROTECTED;
    let cases: [(&str, BlockRequest, Status); 25] = [
        ("block.nseg0", request(1, p, 0, &[]), Status::EINVAL),
        ("block.nseg0-write", request(2, p, 0, &[]), Status::EINVAL),
        (
            "block.nseg9",
            request(2, p, 9, &[(buf, 512)]),
            Status::E2BIG,
        ),
        (
            "block.nseg-max",
            request(2, p, u32::MAX, &[(buf, 512)]),
            Status::E2BIG,
        ),
        (
            "block.seglen0",
            request(2, p, 1, &[(buf, 0)]),
            Status::EINVAL,
        ),
        (
            "block.seglen511",
            request(2, p, 1, &[(buf, 511)]),
            Status::EINVAL,
        ),
        (
            "block.seglen1000",
            request(2, p, 1, &[(buf, 1000)]),
            Status::EINVAL,
        ),
        (
            "block.seglen-max",
            request(2, p, 1, &[(buf, u32::MAX)]),
            Status::EINVAL,
        ),
        (
            "block.seg2-len-bad",
            request(2, p, 2, &[(buf, 512), (buf, 100)]),
            Status::EINVAL,
        ),
        (
            "block.total-4g",
            request(2, p, 1, &[(buf, 0xffff_fe00)]),
            Status::E2BIG,
        ),
        (
            "block.total-2m",
            request(2, p, 8, &[(buf, 0x4_0000); 8]),
            Status::E2BIG,
        ),
        (
            "block.total-1m+512",
            request(2, p, 2, &[(buf, 0x10_0000), (buf, 512)]),
            Status::E2BIG,
        ),
        (
            "block.sector-at-end",
            request(1, cap, 1, &[(buf, 512)]),
            Status::ERANGE,
        ),
        (
            "block.sector-cross-end",
            request(2, cap - 1, 1, &[(buf, 1024)]),
            Status::ERANGE,
        ),
        (
            "block.sector-max",
            request(2, u64::MAX, 1, &[(buf, 512)]),
            Status::ERANGE,
        ),
        (
            "block.sector-2^55",
            request(2, 1 << 55, 1, &[(buf, 512)]),
            Status::ERANGE,
        ),
        (
            "block.seg-beyond-ram",
            request(2, p, 1, &[(mem, 512)]),
            Status::EFAULT,
        ),
        (
            "block.seg-hole",
            request(2, p, 1, &[(HOLE, 512)]),
            Status::EFAULT,
        ),
        (
            "block.seg-cross-end",
            request(2, p, 1, &[(mem - 256, 512)]),
            Status::EFAULT,
        ),
        (
            "block.seg-wrap",
            request(2, p, 1, &[(u64::MAX - 511, 512)]),
            Status::EFAULT,
        ),
        (
            "block.seg2-beyond-ram",
            request(2, p, 2, &[(buf, 512), (mem, 512)]),
            Status::EFAULT,
        ),
        (
            "block.read-seg-beyond-ram",
            request(1, p, 1, &[(mem, 512)]),
            Status::EFAULT,
        ),
        ("block.op0", request(0, p, 1, &[(buf, 512)]), Status::EINVAL),
        ("block.op4", request(4, p, 1, &[(buf, 512)]), Status::EINVAL),
        (
            "block.op-max",
            request(u32::MAX, p, 1, &[(buf, 512)]),
            Status::EINVAL,
        ),
    ];
    for (name, req, want) in cases.iter() {
        let (st, bytes) = bio(req);
        c.status(name, st, *want);
        if bytes != 0 {
            c.value("block.failed-request-bytes", bytes, 0);
        }
    }
    // Defined behaviour: overlapping segments are allowed (a write gathers the same bytes
    // twice, a read scatters in order so the last segment wins). Scratch sectors only.
    put(10, 0, 0x1111_2222_3333_4444u64);
    let (st, bytes) = bio(&request(2, 8, 2, &[(buf, 512), (buf, 512)]));
    c.status("block.overlap-write", st, Status::Ok);
    c.value("block.overlap-write.bytes", bytes, 1024);
    let (st, bytes) = bio(&request(1, 8, 2, &[(buf, 512), (buf, 512)]));
    c.status("block.overlap-read", st, Status::Ok);
    c.value("block.overlap-read.bytes", bytes, 1024);
    c.value(
        "block.overlap-read.data",
        get::<u64>(10, 0),
        0x1111_2222_3333_4444,
    );
    // A flush ignores its sector and segments.
    let (st, _) = bio(&request(3, u64::MAX, u32::MAX, &[(mem, 1); 8]));
    c.status("block.flush-garbage", st, Status::Ok);
    // The largest request: 8 × 128 KiB, all into the same 128 KiB of free RAM in the
    // upper half of memory (nothing lives there).
    let big = (mem / 2) & !0xfff;
    let (st, bytes) = bio(&request(1, 0, 8, &[(big, 0x2_0000); 8]));
    c.status("block.max-1mib-read", st, Status::Ok);
    c.value("block.max-1mib-read.bytes", bytes, 1 << 20);
    let (st, bytes) = bio(&request(1, 0, 1, &[(buf, 512)]));
    c.status("block.read-ok", st, Status::Ok);
    c.value("block.read-ok.bytes", bytes, 512);
    // A read whose destination is the request structure itself: the host copied the
    // request before any data moved.
    let (st, _) = bio(&request(1, 0, 1, &[(req_gpa & !0x1ff, 512)]));
    c.status("block.read-into-request", st, Status::Ok);
}

/// The whole `hypercalls` scenario.
pub fn run(ctx: &mut Ctx) {
    unknown(ctx);
    console(ctx);
    bench(ctx);
    phases(ctx);
    regions(ctx);
    block(ctx);
    crate::spin::run(ctx);
    // SAFETY: touches no memory.
    let r = unsafe { call(nr(Hypercall::AbiVersion), [0; 4]) };
    ctx.checks.status("hc.alive", r.rax, Status::Ok);
    ctx.checks.value("hc.alive.version", r.rdx, 2 << 32);
}

/// `ReportFault` with a report beyond RAM: the VM must stop (status 125) and say so.
pub fn report_fault_wild(ctx: &Ctx) {
    say("reporting a fault at a wild address");
    // SAFETY: the address is outside RAM; the host reads nothing.
    unsafe { call(nr(Hypercall::ReportFault), [ctx.mem + 0x1000, 0, 0, 0]) };
    say("survived report-fault");
    pvkit_guest::hypercall::exit(99)
}

/// `Exit(7)`, `Exit(8)`, … in a loop: only the first may ever run.
pub fn exit_loop() -> ! {
    for code in 7u64..200 {
        // SAFETY: touches no memory.
        unsafe { call(nr(Hypercall::Exit), [code, 0, 0, 0]) };
        say("survived exit");
    }
    pvkit_guest::hypercall::exit(99)
}

/// Null-port writes forever: one exit each; only the watchdog ends this.
pub fn null_loop() -> ! {
    say("null-port loop");
    loop {
        outb(NULL, 0);
    }
}

/// `AbiVersion` hypercalls forever: only the watchdog ends this.
pub fn hypercall_loop() -> ! {
    say("hypercall loop");
    loop {
        // SAFETY: touches no memory.
        unsafe { call(nr(Hypercall::AbiVersion), [0; 4]) };
    }
}
