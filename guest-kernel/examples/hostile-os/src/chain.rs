//! `case=ring-chain`: a block ring that reloads itself from the disk, so one service of it
//! never runs out of requests (issue 7, finding 1). The host must serve it in bounded
//! rounds and still stop on the watchdog, a signal or the guest's exit.
//!
//! The disk image is prepared by the host test (`tests/ring_chain.rs`): image `p` (at
//! sector `p * 96`, 48 KiB apart) is a full 256-slot block ring as it sits at [`RING`]: `size` 256,
//! `req_prod = 256 * (p + 1)`, and in every request slot a read of [`REQUEST_BYTES`] from
//! sector `p * 96` (slot 255: from the next image) whose first segment covers the ring
//! itself and whose second lands in [`JUNK`]. Each request thus rewrites the ring's header
//! and slots with the next requests; the chain runs for 256 requests per image.
//!
//! This guest only starts it: it initializes the header at [`RING`], registers the ring
//! (`via=doorbell|eventfd|poll`), publishes request 0 (read image 0) and notifies. Then
//! (`then=`):
//! - `spin`: prints `chain started`, keeps ringing the doorbell (`poll`: spins) until the
//!   ring is quiescent past image 0 (`rsp_prod == req_prod ≥ 256`: the chain ran out), prints
//!   `chain done req_prod=<n>` and exits;
//! - `exit`: prints `chain started` and exits at once (status 0) while the chain runs;
//! - `blockio`: prints `chain started`, makes a synchronous `BlockIo` read (which must not
//!   wait for the chain) and exits.
//!
//! "Started" means: for `doorbell`, the first doorbell returned (one service budget ran);
//! for the I/O-thread transports, the host has loaded image 0 (`req_prod` at the ring ≥ 256).

use core::sync::atomic::{AtomicU32, Ordering};

use pvkit_abi::block::{BlockRequest, BlockResponse, MAX_REQUEST_BYTES};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ports::DOORBELL;
use pvkit_abi::ring::{offsets, ring_bytes, BLOCK_QUEUE_ID, HEADER_SIZE};
use pvkit_abi::{Hypercall, Status};

use crate::hcalls::{put_request, request};
use crate::out::Line;
use crate::raw::{call, outd, rdtsc};
use crate::{gpa, page, say, Ctx};

/// Guest-physical address of the ring (12 pages, identity-mapped RAM above the kernel).
pub const RING: u64 = 0x80_0000;
/// Guest-physical address of the second segment of every request.
pub const JUNK: u64 = 0x100_0000;
/// Ring slots.
pub const SIZE: u32 = 256;
/// Bytes every chain request reads.
pub const REQUEST_BYTES: u64 = MAX_REQUEST_BYTES;

const KIND_BLOCK: u64 = BLOCK_QUEUE_ID as u64;

/// Bytes of the ring's first segment: the ring rounded up to whole sectors.
pub fn ring_sectors_bytes() -> u64 {
    let bytes =
        ring_bytes(SIZE, size_of::<BlockRequest>(), size_of::<BlockResponse>()).unwrap_or(0) as u64;
    bytes.div_ceil(512) * 512
}

fn hdr(off: u64) -> &'static AtomicU32 {
    // SAFETY: a 4-byte aligned header field of the ring at RING, in guest RAM (identity
    // map), shared with the host and only accessed atomically.
    unsafe { &*((RING + off) as *const AtomicU32) }
}

fn parse_transport(ctx: &Ctx) -> Option<u64> {
    match ctx.cmdline.get("via") {
        Some("doorbell") => Some(1),
        Some("eventfd") if ctx.features.contains(Features::RING_EVENTFD) => Some(2),
        Some("poll") => Some(3),
        _ => None,
    }
}

/// The scenario.
pub fn run(ctx: &mut Ctx) {
    let Some(transport) = parse_transport(ctx) else {
        say("ring-chain: via=doorbell|eventfd|poll (eventfd needs RING_EVENTFD)");
        ctx.checks.that("chain.transport", 0, false);
        return;
    };
    for off in (0..HEADER_SIZE as u64).step_by(4) {
        hdr(off).store(0, Ordering::Relaxed);
    }
    hdr(offsets::SIZE).store(SIZE, Ordering::Release);
    let ring_len = ring_sectors_bytes();
    // SAFETY: the host reads the header it validates; the region is guest RAM.
    let st = unsafe {
        call(
            Hypercall::RegisterRegion as u32,
            [KIND_BLOCK, RING, ring_len, transport],
        )
    }
    .rax;
    ctx.checks.status("chain.register", st, Status::Ok);
    let first = request(
        1,
        0,
        2,
        &[
            (RING, ring_len as u32),
            (JUNK, (REQUEST_BYTES - ring_len) as u32),
        ],
    );
    put_request((RING + HEADER_SIZE as u64) as *mut u8, &first);
    pvkit_guest::ring::full_fence();
    hdr(offsets::REQ_PROD).store(1, Ordering::Release);
    pvkit_guest::ring::full_fence();
    if transport != 3 {
        outd(DOORBELL, BLOCK_QUEUE_ID);
    }
    if transport != 1 {
        // Wait (at most 10 s) until the host loaded image 0.
        let deadline = rdtsc().wrapping_add(ctx.tsc_per_ms.saturating_mul(10_000));
        let mut started = false;
        while (rdtsc().wrapping_sub(deadline) as i64) < 0 {
            if hdr(offsets::REQ_PROD).load(Ordering::Acquire) >= SIZE {
                started = true;
                break;
            }
            core::hint::spin_loop();
        }
        ctx.checks
            .that("chain.started", u64::from(started), started);
    }
    say("chain started");
    match ctx.cmdline.get("then") {
        Some("exit") => {}
        Some("blockio") => {
            // One sector of image 0 into page 10, synchronously, while the chain runs.
            let req = request(1, 0, 1, &[(gpa(page(10)), 512)]);
            put_request(crate::req_at(), &req);
            // SAFETY: the host reads the request and writes the 512-byte destination.
            let r = unsafe { call(Hypercall::BlockIo as u32, [gpa(crate::req_at()), 0, 0, 0]) };
            ctx.checks.status("chain.blockio", r.rax, Status::Ok);
            ctx.checks.value("chain.blockio.bytes", r.rdx, 512);
        }
        _ => {
            // Until the chain ran out (the ring quiescent: every published request
            // answered, past image 0), then exit.
            let prod = loop {
                if transport == 3 {
                    core::hint::spin_loop();
                } else {
                    outd(DOORBELL, BLOCK_QUEUE_ID);
                }
                // `req_prod` before and after `rsp_prod`: the host may load the next image
                // (a larger `req_prod`) and publish `rsp_prod` between two loads.
                let prod = hdr(offsets::REQ_PROD).load(Ordering::Acquire);
                let rsp = hdr(offsets::RSP_PROD).load(Ordering::Acquire);
                if prod >= SIZE
                    && rsp == prod
                    && hdr(offsets::REQ_PROD).load(Ordering::Acquire) == prod
                {
                    break prod;
                }
            };
            Line::new()
                .s("chain done req_prod=")
                .dec(u64::from(prod))
                .emit();
        }
    }
}
