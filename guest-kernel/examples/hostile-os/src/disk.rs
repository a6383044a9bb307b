//! Disk scenarios: `case=durability` (acknowledged flushes under a SIGKILL) and
//! `case=enospc` (the host filesystem fills up under the guest).
//!
//! # Disk layout used by the hostile scenarios
//!
//! Sectors `0..FIRST_PROTECTED` are scratch: the hostile scenarios may write them (and
//! only them) with requests the host accepts. Every request meant to be *rejected* aims at
//! a sector at or above `FIRST_PROTECTED`, the part of the image the host test checksums.
//!
//! # Durability pattern
//!
//! Round `r` (from 1) writes sectors `r * per .. (r + 1) * per` (`per` from the command
//! line, default 8), then flushes, then prints `flushed <r>`. Sector `s` of round `r` holds
//! the 64-bit little-endian words `[MAGIC, r, s, body(3), …, body(63)]` with
//! `body(k) = 0x9e37_79b9_7f4a_7c15 * (k + 1)` (wrapping): the test recomputes it.

use pvkit_abi::block::BlockOp;
use pvkit_abi::ring::Transport;
use pvkit_abi::Status;
use pvkit_guest::ata::Ata;
use pvkit_guest::block::{BlockRing, PvBlock};
use pvkit_guest::port::Pio;

use crate::hcalls::put;
use crate::out::Line;
use crate::raw::{inb, outb, outsw};
use crate::{gpa, page, say, Ctx};

/// First sector of the part of the image the hostile scenarios must never change.
pub const FIRST_PROTECTED: u64 = 16;

/// First word of every durability sector: `"PVKDURA1"`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PVKDURA1");

/// Word `k` (3..64) of every durability sector.
pub const fn body(k: u64) -> u64 {
    0x9e37_79b9_7f4a_7c15u64.wrapping_mul(k + 1)
}

fn parse(ctx: &Ctx, key: &str, default: u64) -> u64 {
    ctx.cmdline
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pages 10–11: `per` (≤ 16) sectors of pattern; the body is written once.
fn fill_body(per: u64) {
    for s in 0..per as usize {
        for k in 3..64u64 {
            put(10 + s / 8, (s % 8) * 512 + k as usize * 8, body(k));
        }
    }
}

fn stamp(per: u64, round: u64) {
    for s in 0..per as usize {
        let off = (s % 8) * 512;
        put(10 + s / 8, off, MAGIC);
        put(10 + s / 8, off + 8, round);
        put(10 + s / 8, off + 16, round * per + s as u64);
    }
}

fn sector_ptr(s: u64) -> *mut u8 {
    // SAFETY: s < 16: inside pages 10–11.
    unsafe { page(10 + s as usize / 8).add((s as usize % 8) * 512) }
}

fn fail(what: &str, round: u64, code: i64) -> ! {
    Line::new()
        .s("durability error ")
        .s(what)
        .s(" round=")
        .dec(round)
        .s(" status=")
        .status(code)
        .emit();
    pvkit_guest::hypercall::exit(1)
}

/// `case=durability via=pv|ring|ata rounds=N per=K`.
pub fn durability(ctx: &mut Ctx) {
    let via = ctx.cmdline.get("via").unwrap_or("pv");
    let per = parse(ctx, "per", 8).clamp(1, 15);
    let rounds = parse(ctx, "rounds", 100_000);
    fill_body(per);
    let cap = match pvkit_guest::hypercall::block_capacity() {
        Ok(c) => c,
        Err(s) => fail("capacity", 0, s as i64),
    };
    let last = (cap / per).saturating_sub(1).min(rounds);
    let mut pv = PvBlock::new();
    let mut ring = None;
    let mut ata = None;
    match via {
        "pv" => {}
        "ring" => {
            // SAFETY: pages 0..2 are used by nothing else in this scenario.
            let mem = crate::bytes(0, 8192);
            match BlockRing::register(mem, 16, Transport::Doorbell) {
                Ok(r) => ring = Some(r),
                Err(_) => fail("ring registration", 0, Status::EIO as i64),
            }
        }
        "ata" => {
            // SAFETY: ring 0; the ATA ports belong to the VMM's emulated disk, which does
            // no DMA.
            match Ata::probe(unsafe { Pio::new() }) {
                Ok(a) => ata = Some(a),
                Err(_) => fail("ata probe", 0, Status::EIO as i64),
            }
        }
        _ => fail("unknown via", 0, Status::EINVAL as i64),
    }
    for round in 1..=last {
        stamp(per, round);
        let first = round * per;
        if let Some(r) = ring.as_mut() {
            for s in 0..per {
                // SAFETY: the data pages stay untouched until the responses are in.
                let q = unsafe { r.queue(s, BlockOp::Write, first + s, gpa(sector_ptr(s)), 512) };
                if q.is_err() {
                    fail("ring full", round, Status::EAGAIN as i64);
                }
            }
            if r.queue_flush(per).is_err() {
                fail("ring full", round, Status::EAGAIN as i64);
            }
            r.submit();
            let mut bad = 0i64;
            let waited = r.wait(ctx.tsc_per_ms.saturating_mul(5000), |rsp| {
                if rsp.status != 0 && bad == 0 {
                    bad = rsp.status;
                }
            });
            if waited.is_err() {
                fail("ring wait", round, Status::EIO as i64);
            }
            if bad != 0 {
                fail("ring request", round, bad);
            }
        } else if let Some(a) = ata.as_mut() {
            for s in 0..per {
                // SAFETY: a 512-byte sector of pages 10–11, not otherwise borrowed.
                let buf = unsafe { core::slice::from_raw_parts(sector_ptr(s), 512) };
                if let Err(e) = a.write(first + s, buf) {
                    fail("ata write", round, i64::from(e.error));
                }
            }
            if let Err(e) = a.flush() {
                fail("ata flush", round, i64::from(e.error));
            }
        } else {
            for s in 0..per {
                // SAFETY: as above.
                let buf = unsafe { core::slice::from_raw_parts(sector_ptr(s), 512) };
                if let Err(e) = pv.write(first + s, buf) {
                    fail("pv write", round, e as i64);
                }
            }
            if let Err(e) = pv.flush() {
                fail("pv flush", round, e as i64);
            }
        }
        Line::new().s("flushed ").dec(round).emit();
    }
    Line::new().s("durability done rounds=").dec(last).emit();
}

/// `case=enospc`: PV writes of 64 KiB until the host's filesystem is full, then an ATA
/// write into a part of the (sparse) image that was never allocated.
pub fn enospc(ctx: &mut Ctx) {
    let cap = match pvkit_guest::hypercall::block_capacity() {
        Ok(c) => c,
        Err(s) => fail("capacity", 0, s as i64),
    };
    // 64 KiB of RAM nobody uses (upper half of memory).
    let src = (ctx.mem / 2) & !0xffff;
    let mut pv = PvBlock::new();
    let mut last = Status::Ok;
    let mut written = 0u64;
    let chunk = 128u64;
    let mut sector = 0;
    while sector + chunk <= cap {
        // SAFETY: the host only reads the 64 KiB at `src`, free RAM.
        match unsafe { pv.request(BlockOp::Write, sector, src, (chunk * 512) as u32) } {
            Ok(_) => written += 1,
            Err(s) => {
                last = s;
                break;
            }
        }
        sector += chunk;
    }
    Line::new()
        .s("info enospc after chunks=")
        .dec(written)
        .s(" status=")
        .s(last.name())
        .emit();
    ctx.checks
        .status("enospc.pv-write", last as i64, Status::ENOSPC);
    // The VMM keeps serving: a flush (whatever the full filesystem says) and a read.
    let st = match pv.flush() {
        Ok(()) => 0,
        Err(s) => s as i64,
    };
    ctx.checks.status_any(
        "enospc.flush",
        st,
        &[Status::Ok, Status::ENOSPC, Status::EIO],
    );
    // SAFETY: a read into our data page.
    let st = unsafe { pv.request(BlockOp::Read, 0, gpa(page(10)), 512) };
    ctx.checks.status(
        "enospc.read-still-ok",
        st.map_or_else(|s| s as i64, |_| 0),
        Status::Ok,
    );
    // ATA: write the last sector, far into the unallocated part of the image.
    let lba = cap - 1;
    outb(0x3f6, 0x02);
    outb(0x1f6, 0xe0 | ((lba >> 24) as u8 & 0x0f));
    outb(0x1f2, 1);
    outb(0x1f3, lba as u8);
    outb(0x1f4, (lba >> 8) as u8);
    outb(0x1f5, (lba >> 16) as u8);
    outb(0x1f7, 0x30);
    ctx.checks
        .value("enospc.ata-drq", u64::from(inb(0x1f7)), 0x58);
    // SAFETY: 512 bytes of RAM at `src` (identity-mapped), only read.
    let data = unsafe { core::slice::from_raw_parts(src as *const u8, 512) };
    outsw(0x1f0, data);
    ctx.checks
        .value("enospc.ata-write-err", u64::from(inb(0x1f7)), 0x51);
    ctx.checks
        .value("enospc.ata-write-abrt", u64::from(inb(0x1f1)), 0x04);
    say("enospc done");
}
