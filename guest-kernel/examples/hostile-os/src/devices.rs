//! `case=devices`: register nonsense on the emulated ATA disk, the 16550 and the 8254, and
//! accesses to unclaimed and reserved ports.
//!
//! Page use: 12–14 sector buffers. The only ATA write that completes goes to scratch
//! sector 4; the aborted half-sector write targets protected sector 200.

use pvkit_abi::ports::{HYPERCALL, NULL};
use pvkit_abi::{Hypercall, Status};

use crate::hcalls::{get, put, put_request, request};
use crate::raw::{call, inb, ind, insw, inw, outb, outd, outsw, outw};
use crate::{gpa, page, Ctx};

const DATA: u16 = 0x1f0;
const ERROR: u16 = 0x1f1;
const COUNT: u16 = 0x1f2;
const LBA0: u16 = 0x1f3;
const LBA1: u16 = 0x1f4;
const LBA2: u16 = 0x1f5;
const DEVICE: u16 = 0x1f6;
const STATUS: u16 = 0x1f7;
const CONTROL: u16 = 0x3f6;

const READ: u8 = 0x20;
const READ_EXT: u8 = 0x24;
const WRITE: u8 = 0x30;
const WRITE_EXT: u8 = 0x34;
const FLUSH: u8 = 0xe7;
const IDENTIFY: u8 = 0xec;

/// DRDY | DSC: idle.
const IDLE: u64 = 0x50;
/// DRDY | DSC | DRQ: data phase.
const DRQ: u64 = 0x58;
/// DRDY | DSC | ERR: the last command failed.
const ERR: u64 = 0x51;
const ABRT: u64 = 0x04;
const IDNF: u64 = 0x10;

/// The hostile sector the aborted ATA write aims at (protected: in the checksummed part).
const ATA_VICTIM: u64 = 200;

fn issue28(cmd: u8, lba: u64, count: u8) {
    outb(DEVICE, 0xe0 | ((lba >> 24) as u8 & 0x0f));
    outb(COUNT, count);
    outb(LBA0, lba as u8);
    outb(LBA1, (lba >> 8) as u8);
    outb(LBA2, (lba >> 16) as u8);
    outb(STATUS, cmd);
}

fn issue48(cmd: u8, lba: u64, count: u16) {
    outb(DEVICE, 0x40);
    outb(COUNT, (count >> 8) as u8);
    outb(LBA0, (lba >> 24) as u8);
    outb(LBA1, (lba >> 32) as u8);
    outb(LBA2, (lba >> 40) as u8);
    outb(COUNT, count as u8);
    outb(LBA0, lba as u8);
    outb(LBA1, (lba >> 8) as u8);
    outb(LBA2, (lba >> 16) as u8);
    outb(STATUS, cmd);
}

fn st() -> u64 {
    u64::from(inb(STATUS))
}

fn err() -> u64 {
    u64::from(inb(ERROR))
}

/// One PV block read of `sector` into page `p` (the reference the ATA results are compared
/// with).
fn pv_read(sector: u64, p: usize) -> i64 {
    let at = crate::req_at();
    put_request(at, &request(1, sector, 1, &[(gpa(page(p)), 512)]));
    // SAFETY: the request names our page `p`.
    unsafe { call(Hypercall::BlockIo as u32, [gpa(at), 0, 0, 0]) }.rax
}

/// Whether the first `len` bytes of pages `a` and `b` are equal.
fn same(a: usize, b: usize, len: usize) -> bool {
    (0..len / 8).all(|i| get::<u64>(a, i * 8) == get::<u64>(b, i * 8))
}

fn ata(ctx: &mut Ctx, cap: u64) {
    let c = &mut ctx.checks;
    outb(CONTROL, 0x02);
    outb(DEVICE, 0xe0);
    c.value("ata.idle", st(), IDLE);
    // Data port with no command: floats; writes are dropped.
    c.value("ata.data-read-no-command", u64::from(inw(DATA)), 0xffff);
    outw(DATA, 0x1234);
    outd(DATA, 0xdead_beef);
    c.value("ata.data-write-no-command", st(), IDLE);
    put(12, 0, 0u64);
    insw(DATA, crate::bytes(12, 512));
    c.value("ata.string-read-no-command", get::<u64>(12, 0), u64::MAX);
    c.value(
        "ata.string-read-no-command.last",
        get::<u64>(12, 504),
        u64::MAX,
    );

    // A new command while DRQ is set aborts the data phase.
    issue28(READ, 5, 2);
    c.value("ata.read-drq", st(), DRQ);
    outb(STATUS, IDENTIFY);
    c.value("ata.command-during-drq", st(), ERR);
    c.value("ata.command-during-drq.error", err(), ABRT);
    c.value("ata.data-after-abort", u64::from(inw(DATA)), 0xffff);

    // Half a sector of a write, then another command: nothing reaches the disk.
    let before = pv_read(ATA_VICTIM, 12);
    c.status("ata.victim-before", before, Status::Ok);
    for i in 0..64 {
        put(13, i * 8, 0xeeee_eeee_eeee_eeeeu64);
    }
    issue28(WRITE, ATA_VICTIM, 1);
    c.value("ata.write-drq", st(), DRQ);
    outsw(DATA, crate::bytes(13, 256));
    outb(STATUS, FLUSH);
    c.value("ata.write-aborted", st(), ERR);
    c.value("ata.write-aborted.error", err(), ABRT);
    outsw(DATA, crate::bytes(13, 512));
    c.value("ata.write-after-abort-dropped", st(), ERR);
    c.status("ata.victim-after", pv_read(ATA_VICTIM, 14), Status::Ok);
    c.value(
        "ata.partial-write-not-stored",
        u64::from(same(12, 14, 512)),
        1,
    );

    // Ranges outside the disk: IDNF before any I/O.
    for (name, cmd, lba, count) in [
        ("ata.lba28-at-end", READ, cap, 1u8),
        ("ata.lba28-max", READ, 0x0fff_ffff, 1),
        ("ata.lba28-256-cross-end", WRITE, cap - 10, 0),
    ] {
        issue28(cmd, lba, count);
        c.value(name, st(), ERR);
        c.value(name, err(), IDNF);
    }
    for (name, cmd, lba, count) in [
        ("ata.lba48-max", READ_EXT, 0xffff_ffff_ffff, 1u16),
        ("ata.lba48-65536-at-end", WRITE_EXT, cap, 0),
        ("ata.lba48-cross-end", READ_EXT, cap - 1, 2),
    ] {
        issue48(cmd, lba, count);
        c.value(name, st(), ERR);
        c.value(name, err(), IDNF);
    }
    // Unknown and unsupported commands abort.
    for (name, cmd) in [
        ("ata.cmd-0xff", 0xffu8),
        ("ata.cmd-0x00", 0x00),
        ("ata.cmd-0x91", 0x91),
        ("ata.cmd-read-dma", 0xc8),
    ] {
        outb(DEVICE, 0xe0);
        outb(STATUS, cmd);
        c.value(name, st(), ERR);
        c.value(name, err(), ABRT);
    }
    // CHS addressing (LBA bit clear) is refused.
    outb(DEVICE, 0xa0);
    outb(STATUS, READ);
    c.value("ata.chs", st(), ERR);
    c.value("ata.chs.error", err(), ABRT);

    // A good IDENTIFY still works and reports the capacity.
    outb(DEVICE, 0xe0);
    outb(STATUS, IDENTIFY);
    c.value("ata.identify-drq", st(), DRQ);
    insw(DATA, crate::bytes(12, 512));
    c.value("ata.identify-sectors", u64::from(get::<u32>(12, 120)), cap);
    c.value("ata.identify-done", st(), IDLE);

    // The absent slave: status 0, commands ignored, data floats.
    outb(DEVICE, 0xf0);
    c.value("ata.slave-status", st(), 0);
    c.value("ata.slave-error", err(), 0);
    outb(STATUS, IDENTIFY);
    c.value("ata.slave-command-ignored", st(), 0);
    c.value("ata.slave-data", u64::from(inw(DATA)), 0xffff);
    outb(DEVICE, 0xe0);
    c.value("ata.master-again", st(), IDLE);

    // Software reset, and wide register reads.
    outb(CONTROL, 0x06);
    c.value("ata.srst-busy", st(), 0x80);
    outb(STATUS, IDENTIFY); // ignored while in reset
    outb(CONTROL, 0x02);
    c.value("ata.srst-done", st(), IDLE);
    c.value("ata.srst-diag", err(), 0x01);
    c.value("ata.status-32bit", u64::from(ind(STATUS)), 0x5050_5050);

    // Data reads past the end of a 1-sector command float.
    issue28(READ, 6, 1);
    insw(DATA, crate::bytes(12, 1024));
    c.value(
        "ata.read-past-command",
        u64::from(get::<u16>(12, 512)),
        0xffff,
    );
    c.value(
        "ata.read-past-command.last",
        u64::from(get::<u16>(12, 1022)),
        0xffff,
    );
    c.value("ata.read-past-command.status", st(), IDLE);

    // And the disk still reads and writes correctly (scratch sector 4).
    issue28(READ, 7, 1);
    insw(DATA, crate::bytes(12, 512));
    c.status("ata.pv-read-7", pv_read(7, 14), Status::Ok);
    c.value("ata.read-matches-pv", u64::from(same(12, 14, 512)), 1);
    issue28(WRITE, 4, 1);
    outsw(DATA, crate::bytes(13, 512));
    c.value("ata.write-done", st(), IDLE);
    outb(STATUS, FLUSH);
    c.value("ata.flush-done", st(), IDLE);
    c.status("ata.pv-read-4", pv_read(4, 14), Status::Ok);
    c.value("ata.write-matches-pv", u64::from(same(13, 14, 512)), 1);
}

const COM1: u16 = 0x3f8;

fn uart(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    // Divisor latch.
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x34);
    outb(COM1 + 1, 0x12);
    c.value("uart.dll", u64::from(inb(COM1)), 0x34);
    c.value("uart.dlm", u64::from(inb(COM1 + 1)), 0x12);
    for i in 0..16u8 {
        outb(COM1 + 3, if i % 2 == 0 { 0x03 } else { 0x80 | 0x1f });
    }
    // Every register, DLAB on and off.
    for lcr in [0x80u8, 0x03] {
        outb(COM1 + 3, lcr);
        for off in 0..8 {
            let _ = inb(COM1 + off);
        }
    }
    // Writes to read-only registers (LSR, MSR) and garbage FCR/IER.
    outb(COM1 + 5, 0x00);
    outb(COM1 + 6, 0xff);
    outb(COM1 + 2, 0xff);
    outb(COM1 + 2, 0x00);
    outb(COM1 + 1, 0xff);
    let _ = inb(COM1 + 2);
    outb(COM1 + 1, 0x00);
    c.value("uart.lsr-thre-temt", u64::from(inb(COM1 + 5) & 0x60), 0x60);
    outb(COM1 + 7, 0xa5);
    c.value("uart.scratch", u64::from(inb(COM1 + 7)), 0xa5);
    // Loopback: transmitted bytes come back as received data, not on the console.
    outb(COM1 + 4, 0x10);
    for &b in b"LOOPLEAK" {
        outb(COM1, b);
    }
    c.value("uart.loopback-data-ready", u64::from(inb(COM1 + 5) & 1), 1);
    c.value("uart.loopback-rbr", u64::from(inb(COM1)), u64::from(b'L'));
    for _ in 0..16 {
        let _ = inb(COM1);
    }
    outb(COM1 + 4, 0x00);
    // Wide accesses: the low byte is the register.
    outw(COM1 + 7, 0x11ff);
    c.value("uart.scratch-16bit-write", u64::from(inb(COM1 + 7)), 0xff);
    c.value(
        "uart.lsr-32bit",
        u64::from(ind(COM1 + 5) & 0xffff_ff60),
        0x60,
    );
    // The UART still transmits.
    outb(COM1 + 3, 0x03);
    for &b in b"[uart ok]\n" {
        let mut spins = 0;
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100 {
            spins += 1;
        }
        outb(COM1, b);
    }
}

fn pit(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    c.value("pit.control-read", u64::from(inb(0x43)), 0xff);
    // Reads with nothing programmed or latched.
    let _ = inb(0x40);
    let _ = inb(0x41);
    let _ = inb(0x42);
    // Modes 6 and 7 (aliases of 2 and 3); read-back reports the control bits as written.
    outb(0x43, 0x3c);
    outb(0x40, 0);
    outb(0x40, 0);
    outb(0x43, 0xe2);
    c.value("pit.mode6-readback", u64::from(inb(0x40) & 0x3f), 0x3c);
    outb(0x43, 0x7e);
    outb(0x41, 0x10);
    outb(0x41, 0x00);
    outb(0x43, 0xe4);
    c.value("pit.mode7-readback", u64::from(inb(0x41) & 0x3f), 0x3e);
    // Read-back commands with reserved or empty selections.
    for cmd in [0xc1u8, 0xff, 0xf1, 0xc0, 0xdf] {
        outb(0x43, cmd);
    }
    // Double latch, half reads, LSB-only and MSB-only access, BCD.
    outb(0x43, 0x00);
    outb(0x43, 0x00);
    let _ = inb(0x40);
    outb(0x43, 0x10);
    outb(0x40, 0x55);
    let _ = inb(0x40);
    outb(0x43, 0x20);
    outb(0x40, 0x66);
    let _ = inb(0x40);
    outb(0x43, 0x31);
    outb(0x40, 0x99);
    outb(0x40, 0x99);
    let _ = inb(0x40);
    // Only one byte of a two-byte count, then a new control word.
    outb(0x43, 0x30);
    outb(0x40, 0x01);
    outb(0x43, 0x34);
    // Port B and counter 2's gate, toggled.
    for v in [0xffu8, 0x00, 0x03, 0x01, 0x00, 0x02] {
        outb(0x61, v);
        let _ = inb(0x61);
    }
    // Wide accesses: each byte is one access.
    outw(0x43, 0xffff);
    let _ = ind(0x40);
    // A sane program afterwards still counts: mode 2, count 65536.
    outb(0x43, 0x34);
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let read = || {
        outb(0x43, 0x00);
        let lo = u64::from(inb(0x40));
        lo | u64::from(inb(0x40)) << 8
    };
    let v1 = read();
    let v2 = read();
    c.that("pit.counts", v1 << 16 | v2, v1 != v2);
}

fn ports(ctx: &mut Ctx) {
    let c = &mut ctx.checks;
    c.value("port.unclaimed-8", u64::from(inb(0x80)), 0xff);
    outb(0x80, 0x55);
    c.value("port.unclaimed-32", u64::from(ind(0x2f8)), 0xffff_ffff);
    c.value("port.unclaimed-0xffff", u64::from(inw(0xffff)), 0xffff);
    outd(0xfffc, 0);
    // Narrow writes to the hypercall port are not hypercalls: AL = 4 is not `Exit`.
    // SAFETY: plain port writes.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") HYPERCALL, in("al") 4u8, options(nostack));
        core::arch::asm!("out dx, ax", in("dx") HYPERCALL, in("ax") 4u16, options(nostack));
    }
    c.value(
        "port.hypercall-read",
        u64::from(ind(HYPERCALL)),
        0xffff_ffff,
    );
    outb(NULL, 1);
    outw(NULL, 2);
    outd(NULL, 3);
    c.value("port.null-read", u64::from(inb(NULL)), 0xff);
    // SAFETY: touches no memory.
    let r = unsafe { call(Hypercall::AbiVersion as u32, [0; 4]) };
    c.status("port.vmm-alive", r.rax, Status::Ok);
}

/// The whole `devices` scenario.
pub fn run(ctx: &mut Ctx) {
    // SAFETY: touches no memory.
    let cap = unsafe { call(Hypercall::BlockCapacity as u32, [0; 4]) };
    ctx.checks.status("devices.capacity", cap.rax, Status::Ok);
    ata(ctx, cap.rdx);
    uart(ctx);
    pit(ctx);
    ports(ctx);
}
