//! `case=net` (run with `--net`, loopback backend): register nonsense on the emulated
//! NE2000 and a receive ring the guest never drains.
//!
//! Remote DMA beyond the 16 KiB buffer (reads float, writes vanish), across the top of the
//! 64 KiB space, with a zero and a maximal `RBCR` (aborted), and a data write during a
//! remote read; `PSTART`/`PSTOP`/`BNRY`/`CURR` nonsense (nothing stored, nothing
//! written), a ring past card memory; transmits of oversize (refused: `TXE`, `ABT`),
//! empty, undersize and out-of-memory frames; a 4-page ring flooded by loopback replies
//! without ever moving `BNRY` (the chip keeps one page free, drops and counts the rest);
//! the reset port. Frames come from the loopback responder: each transmitted ARP request
//! for 10.0.2.2 is answered into the ring before the transmit's `out` returns.
//!
//! The chip runs in byte mode with interrupts masked (`IMR = 0`): every access is one
//! port exit, each handled in O(its length) by the VMM.

use crate::raw::{inb, outb};
use crate::Ctx;

const BASE: u16 = 0x300;
const CR: u16 = BASE;
const PSTART: u16 = BASE + 0x01;
const PSTOP: u16 = BASE + 0x02;
const BNRY: u16 = BASE + 0x03;
const TPSR: u16 = BASE + 0x04;
/// `TSR` (read) shares `TPSR`'s offset.
const TSR: u16 = BASE + 0x04;
const TBCR0: u16 = BASE + 0x05;
const TBCR1: u16 = BASE + 0x06;
const ISR: u16 = BASE + 0x07;
const RSAR0: u16 = BASE + 0x08;
const RSAR1: u16 = BASE + 0x09;
const RBCR0: u16 = BASE + 0x0a;
const RBCR1: u16 = BASE + 0x0b;
const RCR: u16 = BASE + 0x0c;
const TCR: u16 = BASE + 0x0d;
const DCR: u16 = BASE + 0x0e;
const IMR: u16 = BASE + 0x0f;
const CNTR2: u16 = BASE + 0x0f;
const CURR: u16 = BASE + 0x07;
const DATA: u16 = BASE + 0x10;
const RESET: u16 = BASE + 0x1f;

/// `CR` values: page 0 or 1, started or stopped, remote DMA read/write/abort.
const START: u8 = 0x22;
const STOP: u8 = 0x21;
const PAGE1_STOP: u8 = 0x61;
const PAGE1_START: u8 = 0x62;
const DMA_READ: u8 = 0x0a;
const DMA_WRITE: u8 = 0x12;
const TRANSMIT: u8 = 0x26;

const ISR_PRX: u8 = 0x01;
const ISR_PTX: u8 = 0x02;
const ISR_TXE: u8 = 0x08;
const ISR_OVW: u8 = 0x10;
const ISR_RDC: u8 = 0x40;
const ISR_RST: u8 = 0x80;
const TSR_PTX: u64 = 0x01;
const TSR_ABT: u64 = 0x08;

/// The transmit buffer page.
const TX_PAGE: u8 = 0x40;
/// The sane ring.
const RING_START: u8 = 0x46;
const RING_STOP: u8 = 0x80;

fn set(port: u16, v: u8) {
    outb(port, v);
}

fn isr() -> u8 {
    inb(ISR)
}

fn clear_isr() {
    set(ISR, 0xff);
}

fn curr() -> u8 {
    set(CR, PAGE1_START);
    let c = inb(CURR);
    set(CR, START);
    c
}

fn dma_setup(addr: u16, count: u16) {
    set(RBCR0, count as u8);
    set(RBCR1, (count >> 8) as u8);
    set(RSAR0, addr as u8);
    set(RSAR1, (addr >> 8) as u8);
}

/// Remote-reads `n <= 8` bytes at `addr` as a little-endian number.
fn dma_read(addr: u16, n: u16) -> u64 {
    dma_setup(addr, n);
    set(CR, DMA_READ);
    (0..n).fold(0, |v, i| v | u64::from(inb(DATA)) << (8 * i))
}

fn dma_write(addr: u16, bytes: &[u8]) {
    dma_setup(addr, bytes.len() as u16);
    set(CR, DMA_WRITE);
    for &b in bytes {
        set(DATA, b);
    }
}

/// Stops the chip and programs it as a driver would (byte mode, broadcast and our
/// address accepted, no loopback, interrupts masked), with the given ring registers.
fn program(mac: &[u8; 6], pstart: u8, pstop: u8, bnry: u8, curr: u8) {
    set(CR, STOP);
    set(DCR, 0x48);
    set(RBCR0, 0);
    set(RBCR1, 0);
    set(RCR, 0x04);
    set(TCR, 0);
    set(PSTART, pstart);
    set(PSTOP, pstop);
    set(BNRY, bnry);
    set(IMR, 0);
    clear_isr();
    set(CR, PAGE1_STOP);
    for (i, &b) in mac.iter().enumerate() {
        set(BASE + 1 + i as u16, b);
    }
    set(CURR, curr);
    set(CR, START);
}

/// Transmits `len` bytes at page `page`.
fn transmit(page: u8, len: u16) {
    set(TPSR, page);
    set(TBCR0, len as u8);
    set(TBCR1, (len >> 8) as u8);
    set(CR, TRANSMIT);
}

/// An ARP request from 10.0.2.15 (`mac`) for 10.0.2.2, the loopback responder, which
/// answers with a 42-byte reply (stored padded to 60) before the transmit returns.
fn arp(mac: &[u8; 6]) {
    let mut f = [0u8; 42];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(mac);
    f[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(mac);
    f[28..32].copy_from_slice(&[10, 0, 2, 15]);
    f[38..42].copy_from_slice(&[10, 0, 2, 2]);
    dma_write(u16::from(TX_PAGE) << 8, &f);
    transmit(TX_PAGE, 42);
}

/// Runs the scenario.
pub fn run(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    // The PROM (byte mode: each address byte once): MAC doubled, signature at 28.
    let _ = inb(RESET);
    set(CR, STOP);
    set(DCR, 0x48);
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = dma_read(2 * i as u16, 1) as u8;
    }
    c.value("ne.prom-signature", dma_read(28, 4), 0x5757_5757);

    // Remote DMA outside card RAM: reads float, writes vanish; RDC at the end.
    program(&mac, RING_START, RING_STOP, RING_START, RING_START + 1);
    clear_isr();
    c.value("ne.dma-read-beyond-ram", dma_read(0x8000, 8), u64::MAX);
    c.value(
        "ne.dma-read-beyond-ram.rdc",
        u64::from(isr() & ISR_RDC),
        0x40,
    );
    dma_write(0xc000, &[0x11; 4]);
    c.value("ne.dma-write-beyond-ram", dma_read(0xc000, 4), 0xffff_ffff);
    dma_write(0x4100, &[1, 2, 3, 4]);
    c.value("ne.dma-write-in-ram", dma_read(0x4100, 4), 0x0403_0201);
    // Across the top of the 64 KiB space into the PROM.
    let m0 = u64::from(mac[0]);
    c.value(
        "ne.dma-wraps-64k-into-prom",
        dma_read(0xfffe, 4),
        0xffff | m0 << 16 | m0 << 24,
    );
    // RBCR = 0 completes at once; the data port then floats.
    clear_isr();
    dma_setup(0x4000, 0);
    set(CR, DMA_READ);
    c.value("ne.rbcr-zero.rdc", u64::from(isr() & ISR_RDC), 0x40);
    c.value("ne.rbcr-zero.data-floats", u64::from(inb(DATA)), 0xff);
    // RBCR = 0xFFFF, 64 bytes read, then aborted: no RDC, the data port floats.
    clear_isr();
    dma_setup(0x4000, 0xffff);
    set(CR, DMA_READ);
    for _ in 0..64 {
        let _ = inb(DATA);
    }
    set(CR, START);
    c.value("ne.rbcr-max.aborted", u64::from(isr() & ISR_RDC), 0);
    c.value("ne.rbcr-max.after-abort", u64::from(inb(DATA)), 0xff);
    // A data write during a remote read is dropped.
    dma_setup(0x4100, 4);
    set(CR, DMA_READ);
    set(DATA, 0x99);
    let mut got = 0u64;
    for i in 0..4 {
        got |= u64::from(inb(DATA)) << (8 * i);
    }
    c.value("ne.write-during-read-dropped", got, 0x0403_0201);

    // Ring nonsense: the loopback's reply is dropped, CURR stays, nothing is stored.
    for (name, pstart, pstop, bnry, cur) in [
        (
            "ne.ring-start-after-stop",
            RING_STOP,
            RING_START,
            0x50,
            0x51,
        ),
        ("ne.ring-empty", 0x50, 0x50, 0x50, 0x50),
        (
            "ne.ring-curr-outside",
            RING_START,
            RING_STOP,
            RING_START,
            0x20,
        ),
        (
            "ne.ring-bnry-outside",
            RING_START,
            RING_STOP,
            0xff,
            RING_START + 1,
        ),
    ] {
        program(&mac, pstart, pstop, bnry, cur);
        arp(&mac);
        c.value(name, u64::from(isr() & ISR_PRX), 0);
        c.value(name, u64::from(curr()), u64::from(cur));
    }
    // A sane ring stores the reply: header (status PRX, next page, 60 + 4 bytes).
    program(&mac, RING_START, RING_STOP, RING_START, RING_START + 1);
    arp(&mac);
    c.value("ne.ring-sane.prx", u64::from(isr() & ISR_PRX), 1);
    let next = RING_START + 2;
    c.value("ne.ring-sane.curr", u64::from(curr()), u64::from(next));
    c.value(
        "ne.ring-sane.header",
        dma_read(u16::from(RING_START + 1) << 8, 4),
        0x01 | u64::from(next) << 8 | 64 << 16,
    );
    // A ring reaching past card memory: the frame "lands" nowhere; reads there float.
    program(&mac, RING_START, 0xff, RING_START, 0xf0);
    arp(&mac);
    c.value("ne.ring-beyond-ram.prx", u64::from(isr() & ISR_PRX), 1);
    c.value("ne.ring-beyond-ram.curr", u64::from(curr()), 0xf1);
    c.value(
        "ne.ring-beyond-ram.floats",
        dma_read(0xf000, 4),
        0xffff_ffff,
    );

    // Transmits: over 1514 bytes refused; empty, runt and out-of-RAM frames padded/sent.
    program(&mac, RING_START, RING_STOP, RING_START, RING_START + 1);
    for (name, len) in [("ne.tx-len-ffff", 0xffffu16), ("ne.tx-len-1515", 1515)] {
        clear_isr();
        transmit(TX_PAGE, len);
        c.value(name, u64::from(isr() & (ISR_TXE | ISR_PTX)), 0x08);
        c.value(name, u64::from(inb(TSR)), TSR_ABT);
    }
    for (name, page, len) in [
        ("ne.tx-len-0", TX_PAGE, 0u16),
        ("ne.tx-len-10", TX_PAGE, 10),
        ("ne.tx-beyond-ram", 0xf0, 60),
    ] {
        clear_isr();
        transmit(page, len);
        c.value(name, u64::from(isr() & (ISR_TXE | ISR_PTX)), 0x02);
        c.value(name, u64::from(inb(TSR)), TSR_PTX);
    }
    // TXP on a stopped chip does nothing.
    set(CR, STOP);
    clear_isr();
    set(CR, 0x25);
    c.value("ne.tx-stopped", u64::from(isr() & ISR_PTX), 0);

    // A 4-page ring the guest never drains: 2 replies fit (one page stays free), the other
    // 8 are dropped with OVW and counted in CNTR2; CURR never reaches BNRY.
    let (start, stop) = (RING_START, RING_START + 4);
    program(&mac, start, stop, start, start + 1);
    let _ = inb(CNTR2);
    for _ in 0..10 {
        arp(&mac);
    }
    c.value("ne.flood.curr", u64::from(curr()), u64::from(start + 3));
    c.value("ne.flood.ovw", u64::from(isr() & ISR_OVW), 0x10);
    c.value("ne.flood.missed", u64::from(inb(CNTR2)), 8);
    c.value("ne.flood.bnry", u64::from(inb(BNRY)), u64::from(start));
    // Reading one frame (BNRY moves) makes room again: the next reply wraps to PSTART.
    set(BNRY, start + 2);
    clear_isr();
    arp(&mac);
    c.value("ne.flood.drained-prx", u64::from(isr() & ISR_PRX), 1);
    c.value("ne.flood.drained-curr", u64::from(curr()), u64::from(start));

    // The reset port stops the chip.
    let _ = inb(RESET);
    c.value("ne.reset.rst", u64::from(isr() & ISR_RST), 0x80);
    c.value("ne.reset.cr", u64::from(inb(CR) & 0x03), 0x01);
}
