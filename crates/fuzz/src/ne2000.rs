//! `ne2000`: random port accesses (registers, data port, reset port, any offset and
//! width), frames from the host of any length and destination, and save/restore, against
//! the NE2000 model.
//!
//! Invariants:
//! - no panic, for any access sequence (the model's memory is fixed; the transmit queue
//!   never holds more than 32 frames);
//! - `CR` always reads exactly one of `STA`/`STP` and never `TXP`;
//! - the interrupt line is `ISR & IMR & 0x7F != 0`;
//! - a host frame is `Oversize` exactly when longer than 1514 bytes, `Stopped` exactly
//!   when the chip is stopped; a stored frame lands byte-exact at the old `CURR` (header,
//!   frame, zero padding to 60, wrapping at `PSTOP`), `CURR` moves inside the ring and
//!   does not land on `BNRY`; a dropped frame changes no card memory;
//! - every transmitted frame is 60..=1514 bytes;
//! - `from_state(state())` is accepted and yields the same state.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_devices::ne2000::{Ne2000, Ne2000State, RxOutcome, MAX_FRAME, MIN_FRAME};

use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 256;

/// A destination address.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dst {
    /// The setup's MAC.
    Mine,
    /// ff:ff:ff:ff:ff:ff.
    Broadcast,
    /// Any address.
    Raw([u8; 6]),
}
encode_enum!(Dst, 3;
    Dst::Mine => 0 [],
    Dst::Broadcast => 1 [],
    Dst::Raw(a) => 2 [a],
);

/// One operation.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeOp {
    /// `read(offset, width % 8)`.
    Read(u16, u8),
    /// `write(offset, [value])`.
    Write(u16, u8),
    /// A `CR` write.
    Command(u8),
    /// A data-port write of `len % 2048` pattern bytes.
    DataWrite(u16, u8),
    /// A data-port read of `len % 2048` bytes.
    DataRead(u16),
    /// A frame of `len % 2048` bytes from the host.
    Receive(u16, Dst, u8),
    /// The backend takes a transmitted frame.
    TakeTx,
    /// Save and rebuild the card.
    SaveRestore,
}
encode_enum!(NeOp, 8;
    NeOp::Read(o, w) => 0 [o, w],
    NeOp::Write(o, v) => 1 [o, v],
    NeOp::Command(v) => 2 [v],
    NeOp::DataWrite(n, s) => 3 [n, s],
    NeOp::DataRead(n) => 4 [n],
    NeOp::Receive(n, d, s) => 5 [n, d, s],
    NeOp::TakeTx => 6 [],
    NeOp::SaveRestore => 7 [],
);

/// The card's MAC, and whether to run a driver's init sequence first.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeSetup {
    /// Station address in the PROM.
    pub mac: [u8; 6],
    /// Run Linux's init sequence (ring 0x46..0x80, started) before the operations.
    pub init: bool,
}
encode_struct!(NeSetup { mac, init });

/// Linux's `NS8390_init`: word mode, ring `0x46..0x80`, PAR = `mac`, started, broadcast.
fn init(nic: &mut Ne2000, mac: [u8; 6]) {
    let mut seq = vec![
        (0x00, 0x21),
        (0x0E, 0x49),
        (0x0A, 0),
        (0x0B, 0),
        (0x0C, 0x20),
        (0x0D, 0x02),
        (0x04, 0x40),
        (0x01, 0x46),
        (0x03, 0x46),
        (0x02, 0x80),
        (0x07, 0xFF),
        (0x0F, 0x7F),
        (0x00, 0x61),
    ];
    seq.extend((0..6u16).map(|i| (1 + i, mac[usize::from(i)])));
    seq.extend([(0x07, 0x47), (0x00, 0x22), (0x0D, 0), (0x0C, 0x04)]);
    for (reg, value) in seq {
        nic.write(reg, &[value]);
    }
}

fn check(nic: &mut Ne2000) -> Ne2000State {
    let mut cr = [0];
    nic.read(0, &mut cr);
    let run = cr[0] & 0x07;
    assert!(run == 0x01 || run == 0x02, "CR {:#x}", cr[0]);
    let s = nic.state();
    assert_eq!(nic.irq_level(), s.isr & s.imr & 0x7F != 0);
    assert!(s.tx.len() <= 32);
    s
}

fn receive(nic: &mut Ne2000, frame: &[u8]) {
    let before = nic.state();
    let outcome = nic.receive(frame);
    let after = nic.state();
    assert_eq!(outcome == RxOutcome::Oversize, frame.len() > MAX_FRAME);
    let stopped = before.cr & 0x01 != 0;
    if frame.len() <= MAX_FRAME {
        assert_eq!(outcome == RxOutcome::Stopped, stopped);
    }
    if outcome != RxOutcome::Stored {
        assert!(after.mem == before.mem, "{outcome:?} changed card memory");
        assert_eq!(after.curr, before.curr);
        return;
    }
    let (start, stop) = (before.pstart, before.pstop);
    assert!((start..stop).contains(&after.curr));
    assert!(after.curr != before.bnry || before.curr == before.bnry);
    // Where each byte of header + frame + padding must be: wrap at PSTOP.
    let len = frame.len().max(MIN_FRAME);
    let count = (len + 4) as u16;
    let header = [0, after.curr, count as u8, (count >> 8) as u8];
    let mut page = before.curr;
    let mut offset = 0usize;
    let padding = std::iter::repeat_n(0u8, len - frame.len());
    for (i, byte) in header
        .into_iter()
        .chain(frame.iter().copied())
        .chain(padding)
        .enumerate()
    {
        let addr = usize::from(page) * 256 + offset;
        if i > 0 && (0x4000..0x8000).contains(&addr) {
            assert_eq!(after.mem[addr - 0x4000], byte, "received byte {i}");
        }
        offset += 1;
        if offset == 256 {
            offset = 0;
            page += 1;
            if page == stop {
                page = start;
            }
        }
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = NeSetup::arbitrary(&mut u) else {
        return;
    };
    let mut nic = Ne2000::new(setup.mac);
    if setup.init {
        init(&mut nic, setup.mac);
    }
    crate::for_each_op(&mut u, MAX_OPS, |op: NeOp| {
        match op {
            NeOp::Read(o, w) => nic.read(o, &mut vec![0; usize::from(w % 8)]),
            NeOp::Write(o, v) => nic.write(o, &[v]),
            NeOp::Command(v) => nic.write(0, &[v]),
            NeOp::DataWrite(n, s) => {
                let d: Vec<u8> = (0..n % 2048).map(|i| (i as u8) ^ s).collect();
                nic.write(0x10, &d);
            }
            NeOp::DataRead(n) => nic.read(0x10, &mut vec![0; usize::from(n % 2048)]),
            NeOp::Receive(n, dst, s) => {
                let mut f: Vec<u8> = (0..n % 2048)
                    .map(|i| (i as u8).wrapping_mul(3) ^ s)
                    .collect();
                let dst = match dst {
                    Dst::Mine => setup.mac,
                    Dst::Broadcast => [0xFF; 6],
                    Dst::Raw(a) => a,
                };
                for (d, s) in f.iter_mut().zip(dst) {
                    *d = s;
                }
                receive(&mut nic, &f);
            }
            NeOp::TakeTx => {
                if let Some(f) = nic.take_tx() {
                    assert!((MIN_FRAME..=MAX_FRAME).contains(&f.len()));
                }
            }
            NeOp::SaveRestore => {
                let s = nic.state();
                nic = Ne2000::from_state(&s).expect("a saved state is accepted");
                assert!(nic.state() == s);
            }
        }
        check(&mut nic);
    });
}

/// Seeds: a driver's transmit (remote write + TXP); receives that wrap the ring and
/// overflow it; PROM read in byte mode, reset port, save/restore.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    let setup = NeSetup {
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        init: true,
    };
    let transmit = [
        NeOp::Write(0x0A, 64),
        NeOp::Write(0x0B, 0),
        NeOp::Write(0x08, 0),
        NeOp::Write(0x09, 0x40),
        NeOp::Command(0x12),
        NeOp::DataWrite(64, 7),
        NeOp::Read(0x07, 1),
        NeOp::Write(0x05, 64),
        NeOp::Write(0x06, 0),
        NeOp::Command(0x26),
        NeOp::TakeTx,
        NeOp::Write(0x06, 0x06),
        NeOp::Command(0x26),
    ];
    let mut ring = vec![];
    for i in 0..12u8 {
        ring.push(NeOp::Receive(1514 - u16::from(i) * 97, Dst::Mine, i));
        if i % 3 == 2 {
            ring.push(NeOp::Write(0x03, 0x46 + 6 * (i / 3)));
        }
    }
    ring.extend([
        NeOp::Receive(30, Dst::Broadcast, 1),
        NeOp::Receive(1515, Dst::Mine, 0),
    ]);
    let prom = [
        NeOp::Read(0x1F, 1),
        NeOp::Write(0x1F, 0),
        NeOp::Write(0x0E, 0x48),
        NeOp::Write(0x0A, 32),
        NeOp::Write(0x08, 0),
        NeOp::Write(0x09, 0),
        NeOp::Command(0x0A),
        NeOp::DataRead(32),
        NeOp::SaveRestore,
        NeOp::Command(0x62),
        NeOp::Read(0x07, 2),
        NeOp::Command(0x18),
        NeOp::DataRead(100),
    ];
    vec![
        ("transmit", program(&setup, &transmit)),
        ("ring_wrap_overflow", program(&setup, &ring)),
        ("prom_reset_state", program(&setup, &prom)),
        ("dma_beyond_ram", program(&setup, &dma_beyond_ram())),
        ("ring_nonsense", program(&setup, &ring_nonsense())),
        ("tx_oversize_runt", program(&setup, &tx_oversize_runt())),
        ("undrained_flood", program(&setup, &undrained_flood())),
    ]
}

/// `RSAR`/`RBCR` for a remote DMA of `count` bytes at `addr` (page 0).
fn dma(addr: u16, count: u16) -> [NeOp; 4] {
    let [a0, a1] = addr.to_le_bytes();
    let [c0, c1] = count.to_le_bytes();
    [
        NeOp::Write(0x0A, c0),
        NeOp::Write(0x0B, c1),
        NeOp::Write(0x08, a0),
        NeOp::Write(0x09, a1),
    ]
}

/// The hostile guest's remote DMA: past card RAM, across the top of the 64 KiB space into
/// the PROM, `RBCR` 0 and 0xFFFF (aborted), a write past RAM, a data write during a read.
fn dma_beyond_ram() -> Vec<NeOp> {
    let mut ops = vec![NeOp::Write(0x0E, 0x48)];
    ops.extend(dma(0x8000, 8));
    ops.extend([NeOp::Command(0x0A), NeOp::DataRead(8), NeOp::Read(0x07, 1)]);
    ops.extend(dma(0xFFFE, 4));
    ops.extend([NeOp::Command(0x0A), NeOp::DataRead(4)]);
    ops.extend(dma(0x4000, 0));
    ops.extend([NeOp::Command(0x0A), NeOp::DataRead(2)]);
    ops.extend(dma(0x4000, 0xFFFF));
    ops.extend([
        NeOp::Command(0x0A),
        NeOp::DataRead(64),
        NeOp::Command(0x22),
        NeOp::DataRead(1),
    ]);
    ops.extend(dma(0xC000, 4));
    ops.extend([NeOp::Command(0x12), NeOp::DataWrite(4, 0x11)]);
    ops.extend(dma(0x4100, 4));
    ops.extend([
        NeOp::Command(0x0A),
        NeOp::DataWrite(1, 0x99),
        NeOp::DataRead(4),
    ]);
    ops
}

/// Ring registers a driver never writes, each followed by a frame from the host: start
/// after stop, an empty ring, `CURR` and `BNRY` outside the ring, a ring past card RAM.
fn ring_nonsense() -> Vec<NeOp> {
    let mut ops = Vec::new();
    for (pstart, pstop, bnry, curr) in [
        (0x80u8, 0x46u8, 0x50u8, 0x51u8),
        (0x50, 0x50, 0x50, 0x50),
        (0x46, 0x80, 0x46, 0x20),
        (0x46, 0x80, 0xFF, 0x47),
        (0x46, 0xFF, 0x46, 0xF0),
    ] {
        ops.extend([
            NeOp::Command(0x21),
            NeOp::Write(0x01, pstart),
            NeOp::Write(0x02, pstop),
            NeOp::Write(0x03, bnry),
            NeOp::Command(0x61),
            NeOp::Write(0x07, curr),
            NeOp::Command(0x22),
            NeOp::Receive(60, Dst::Broadcast, pstart),
            NeOp::Read(0x07, 1),
        ]);
    }
    ops
}

/// Transmits of 0xFFFF, 1515, 0 and 10 bytes, and one from a page past card RAM.
fn tx_oversize_runt() -> Vec<NeOp> {
    let mut ops = Vec::new();
    for (page, len) in [
        (0x40u8, 0xFFFFu16),
        (0x40, 1515),
        (0x40, 0),
        (0x40, 10),
        (0xF0, 60),
    ] {
        let [l0, l1] = len.to_le_bytes();
        ops.extend([
            NeOp::Write(0x04, page),
            NeOp::Write(0x05, l0),
            NeOp::Write(0x06, l1),
            NeOp::Command(0x26),
            NeOp::Read(0x04, 1),
            NeOp::Write(0x07, 0xFF),
            NeOp::TakeTx,
        ]);
    }
    ops
}

/// A 4-page ring the guest never drains, flooded by the host; then `BNRY` moves once.
fn undrained_flood() -> Vec<NeOp> {
    let mut ops = vec![
        NeOp::Command(0x21),
        NeOp::Write(0x01, 0x46),
        NeOp::Write(0x02, 0x4A),
        NeOp::Write(0x03, 0x46),
        NeOp::Command(0x61),
        NeOp::Write(0x07, 0x47),
        NeOp::Command(0x22),
    ];
    for i in 0..12u8 {
        ops.push(NeOp::Receive(60 + u16::from(i), Dst::Mine, i));
    }
    ops.extend([
        NeOp::Read(0x0F, 1),
        NeOp::Write(0x03, 0x48),
        NeOp::Receive(200, Dst::Mine, 0xAA),
        NeOp::Receive(1514, Dst::Mine, 0xBB),
    ]);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::decode_program;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let (_, ops): (NeSetup, Vec<NeOp>) = decode_program(&bytes, MAX_OPS);
            assert!(ops.len() >= 12, "{name}");
            run(&bytes);
        }
    }
}
