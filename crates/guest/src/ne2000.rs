//! A polling NE2000 (DP8390) driver, written as for the ISA card (Linux's `ne.c`/`8390.c`
//! sequences), for the emulated NIC and for hardware.
//!
//! Word-wide remote DMA (`DCR = 0x49`); every frame moves through the data port with one
//! `rep outsw` / `rep insw`. No interrupts are needed (`IMR = 0`): the driver polls `ISR`.
//!
//! # Card memory
//!
//! Pages `0x40..0x46` (1536 bytes) are the transmit buffer, `0x46..0x80` the receive ring
//! (58 pages). The ring follows Linux's convention: `BNRY` is the page before the next
//! frame to read, so `CURR == BNRY + 1` (mod the ring) means empty.
//!
//! # Port accesses (each one VM exit on a VMM; string ops as counted below)
//!
//! Between operations the chip is started, page 0 selected, no remote DMA (`CR = 0x22`).
//!
//! | operation | accesses |
//! |---|---|
//! | [`Ne2000::transmit`] | ack `RDC`, `RBCR0/1`, `RSAR0/1`, `CR` remote write, 1 `rep outsw` (2 for an odd length >= 60), `ISR` read (`RDC`), `TBCR0/1`, `CR` `TXP`, `ISR` read (`PTX`), ack: **13** |
//! | [`Ne2000::receive`], nothing waiting | `ISR` read: **1** |
//! | [`Ne2000::receive`], one frame waiting | `ISR` read, ack `PRX`, `CR` page 1, `CURR`, `CR` page 0, `RBCR0/1`, `RSAR0/1`, `CR` remote read, `rep insw` header, `rep insw` frame (+1 `inb` for an odd length), `CR` abort, `BNRY`: **14** |
//! | each further frame already known from `CURR` | **9** |
//!
//! The header and the frame come in one remote read: `RBCR` is set to the largest frame
//! and the transfer is aborted when the frame has been read, which saves the five writes
//! of a second set-up. The remote read wraps from `PSTOP` to `PSTART` by itself (as Linux's
//! `ne.c` relies on), so a frame across the end of the ring is still one `rep insw`.
//!
//! On KVM a `rep insw` inside one page is one exit, but every element of a `rep outsw` is
//! its own exit (see [`crate::ata`]): a transmit of `n` bytes is `12 + ceil(n/2)` exits,
//! a receive stays at 14 (15 for an odd length; buffers page-aligned).

use crate::port::StringIo;

/// The usual I/O base of an ISA NE2000.
pub const IO_BASE: u16 = 0x300;
/// Largest frame without FCS.
pub const MAX_FRAME: usize = 1514;
/// Smallest frame without FCS; the driver pads shorter ones.
pub const MIN_FRAME: usize = 60;
/// Most `ISR` reads one wait makes before giving up.
pub const POLL_LIMIT: u32 = 100_000;

/// `IMR` bits for an interrupt-driven receive: frame received (`PRX`) and ring overflow
/// (`OVW`). Transmit stays polled.
pub const IMR_RX: u8 = ISR_PRX | ISR_OVW;

/// First transmit buffer page.
pub const TX_START: u8 = 0x40;
/// First receive ring page.
pub const RX_START: u8 = 0x46;
/// First page after the receive ring.
pub const RX_STOP: u8 = 0x80;

// Register offsets from the I/O base (page 0 unless noted).
const CR: u16 = 0x00;
const PSTART: u16 = 0x01;
const PSTOP: u16 = 0x02;
const BNRY: u16 = 0x03;
const TPSR: u16 = 0x04;
const TBCR0: u16 = 0x05;
const TBCR1: u16 = 0x06;
const ISR: u16 = 0x07;
const RSAR0: u16 = 0x08;
const RSAR1: u16 = 0x09;
const RBCR0: u16 = 0x0A;
const RBCR1: u16 = 0x0B;
const RCR: u16 = 0x0C;
const TCR: u16 = 0x0D;
const DCR: u16 = 0x0E;
const IMR: u16 = 0x0F;
/// Page 1.
const PAR0: u16 = 0x01;
/// Page 1.
const CURR: u16 = 0x07;
/// Page 1.
const MAR0: u16 = 0x08;
const DATA: u16 = 0x10;
const RESET: u16 = 0x1F;

const CR_STOP: u8 = 0x21; // page 0, no DMA, stop
const CR_START: u8 = 0x22; // page 0, no DMA, start
const CR_PAGE1_STOP: u8 = 0x61;
const CR_PAGE1_START: u8 = 0x62;
const CR_RREAD: u8 = 0x0A; // remote read, start
const CR_RWRITE: u8 = 0x12; // remote write, start
const CR_TRANSMIT: u8 = 0x26; // no DMA, TXP, start

const ISR_PRX: u8 = 0x01;
const ISR_PTX: u8 = 0x02;
const ISR_TXE: u8 = 0x08;
const ISR_OVW: u8 = 0x10;
const ISR_RDC: u8 = 0x40;
const ISR_RST: u8 = 0x80;

const DCR_WORD: u8 = 0x49; // word-wide, normal, FIFO threshold 8 bytes
const RCR_MONITOR: u8 = 0x20;
const RCR_BROADCAST: u8 = 0x04;
const TCR_LOOPBACK: u8 = 0x02;
const RSR_PRX: u8 = 0x01;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ne2000Error {
    /// Nothing answers at the I/O base (`CR` reads `0xFF`), or reset never completed.
    NoDevice,
    /// Something answers, but its PROM lacks the NE2000 signature (`0x57 0x57`).
    NotNe2000,
    /// A wait for `ISR` bits gave up after [`POLL_LIMIT`] reads.
    Timeout,
    /// The frame to send is longer than [`MAX_FRAME`].
    FrameTooLong,
    /// The card reported a transmit error (`ISR.TXE`).
    TransmitError,
    /// The receive buffer is smaller than the frame waiting (the frame is dropped).
    BufferTooSmall,
    /// A receive header made no sense (bad next page or length): the ring was reset and
    /// the frames in it dropped.
    BadHeader,
    /// The ring overflowed (`ISR.OVW`): the card was re-initialised, frames were lost.
    Overflow,
}

/// An NE2000 at `base`, initialised, started and receiving.
#[derive(Debug)]
pub struct Ne2000<P: StringIo> {
    io: P,
    base: u16,
    mac: [u8; 6],
    /// Page of the next frame to read.
    next: u8,
    /// `CURR` as last read.
    curr: u8,
}

impl<P: StringIo> Ne2000<P> {
    /// Resets the card at `base`, reads its station address from the PROM and starts it
    /// (unicast to that address and broadcast accepted).
    pub fn probe(io: P, base: u16) -> Result<Self, Ne2000Error> {
        let mut nic = Ne2000 {
            io,
            base,
            mac: [0; 6],
            next: RX_START + 1,
            curr: RX_START + 1,
        };
        if nic.inb(CR) == 0xFF {
            return Err(Ne2000Error::NoDevice);
        }
        // Reset: read the reset port and write the value back (as ne.c), wait for RST.
        let v = nic.inb(RESET);
        nic.outb(RESET, v);
        nic.wait(ISR_RST).map_err(|_| Ne2000Error::NoDevice)?;
        nic.outb(ISR, 0xFF);
        // Read the 32-byte PROM with word-wide remote DMA (ne.c's probe sequence).
        for (reg, value) in [
            (CR, CR_STOP),
            (DCR, DCR_WORD),
            (RBCR0, 0),
            (RBCR1, 0),
            (IMR, 0),
            (ISR, 0xFF),
            (RCR, RCR_MONITOR),
            (TCR, TCR_LOOPBACK),
            (RBCR0, 32),
            (RBCR1, 0),
            (RSAR0, 0),
            (RSAR1, 0),
            (CR, CR_RREAD),
        ] {
            nic.outb(reg, value);
        }
        let mut prom = [0u8; 32];
        nic.io.read_words(nic.base + DATA, &mut prom);
        nic.outb(ISR, ISR_RDC);
        // Each PROM byte is doubled on a 16-bit card; bytes 14 and 15 read 0x57.
        if prom[28] != 0x57 || prom[30] != 0x57 {
            return Err(Ne2000Error::NotNe2000);
        }
        for (i, b) in nic.mac.iter_mut().enumerate() {
            *b = prom[2 * i];
        }
        nic.init();
        Ok(nic)
    }

    /// The station address read from the PROM.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The port I/O.
    pub fn io(&self) -> &P {
        &self.io
    }

    /// The port I/O, mutably.
    pub fn io_mut(&mut self) -> &mut P {
        &mut self.io
    }

    /// (Re)initialises the card (Linux's `NS8390_init`): ring, station address, then
    /// started with broadcast accepted and interrupts masked.
    pub fn init(&mut self) {
        for (reg, value) in [
            (CR, CR_STOP),
            (DCR, DCR_WORD),
            (RBCR0, 0),
            (RBCR1, 0),
            (RCR, RCR_MONITOR),
            (TCR, TCR_LOOPBACK),
            (TPSR, TX_START),
            (PSTART, RX_START),
            (BNRY, RX_START),
            (PSTOP, RX_STOP),
            (ISR, 0xFF),
            (IMR, 0),
            (CR, CR_PAGE1_STOP),
        ] {
            self.outb(reg, value);
        }
        let mac = self.mac;
        for (i, &b) in mac.iter().enumerate() {
            self.outb(PAR0 + i as u16, b);
        }
        for i in 0..8 {
            self.outb(MAR0 + i, 0);
        }
        self.outb(CURR, RX_START + 1);
        self.outb(CR, CR_START);
        self.outb(TCR, 0);
        self.outb(RCR, RCR_BROADCAST);
        self.next = RX_START + 1;
        self.curr = RX_START + 1;
    }

    /// Unmasks the interrupt sources in `mask` (`IMR`; e.g. [`IMR_RX`]), masks the others:
    /// one port write. [`Ne2000::init`] (also run after a ring overflow) masks them all.
    pub fn set_interrupt_mask(&mut self, mask: u8) {
        self.outb(IMR, mask);
    }

    /// Sends `frame` (destination, source, type, payload; no FCS), padded to 60 bytes.
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), Ne2000Error> {
        if frame.len() > MAX_FRAME {
            return Err(Ne2000Error::FrameTooLong);
        }
        let send_len = frame.len().max(MIN_FRAME);
        // Word-wide DMA moves an even count.
        let dma_len = (send_len + 1) & !1;
        self.outb(ISR, ISR_RDC);
        self.outb(RBCR0, dma_len as u8);
        self.outb(RBCR1, (dma_len >> 8) as u8);
        self.outb(RSAR0, 0);
        self.outb(RSAR1, TX_START);
        self.outb(CR, CR_RWRITE);
        if frame.len() < MIN_FRAME {
            let mut padded = [0u8; MIN_FRAME];
            padded[..frame.len()].copy_from_slice(frame);
            self.io.write_words(self.base + DATA, &padded);
        } else {
            let even = frame.len() & !1;
            self.io.write_words(self.base + DATA, &frame[..even]);
            if let Some(&last) = frame.get(even) {
                self.io.write_words(self.base + DATA, &[last, 0]);
            }
        }
        self.wait(ISR_RDC)?;
        self.outb(TBCR0, send_len as u8);
        self.outb(TBCR1, (send_len >> 8) as u8);
        self.outb(CR, CR_TRANSMIT);
        let isr = self.wait(ISR_PTX | ISR_TXE)?;
        self.outb(ISR, ISR_PTX | ISR_TXE | ISR_RDC);
        if isr & ISR_TXE != 0 {
            return Err(Ne2000Error::TransmitError);
        }
        Ok(())
    }

    /// Receives the next frame into `buf` (which should hold [`MAX_FRAME`] bytes) and
    /// returns its length, or `None` when no frame is waiting.
    pub fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Ne2000Error> {
        if self.next == self.curr {
            let isr = self.inb(ISR);
            if isr & ISR_OVW != 0 {
                self.init();
                return Err(Ne2000Error::Overflow);
            }
            if isr & ISR_PRX == 0 {
                return Ok(None);
            }
            // Acknowledge first, then read CURR: a frame stored after the read raises PRX
            // again.
            self.outb(ISR, ISR_PRX);
            self.outb(CR, CR_PAGE1_START);
            self.curr = self.inb(CURR);
            self.outb(CR, CR_START);
            if self.next == self.curr {
                return Ok(None);
            }
        }
        // Header and frame in one remote read, aborted after the frame.
        let frame_max = 4 + MAX_FRAME + 1;
        self.outb(RBCR0, frame_max as u8);
        self.outb(RBCR1, (frame_max >> 8) as u8);
        self.outb(RSAR0, 0);
        self.outb(RSAR1, self.next);
        self.outb(CR, CR_RREAD);
        let mut header = [0u8; 4];
        self.io.read_words(self.base + DATA, &mut header);
        let [status, next, lo, hi] = header;
        let count = usize::from(u16::from_le_bytes([lo, hi]));
        let len = count.wrapping_sub(4);
        if status & RSR_PRX == 0
            || !(RX_START..RX_STOP).contains(&next)
            || !(MIN_FRAME..=MAX_FRAME).contains(&len)
        {
            self.outb(CR, CR_START);
            // Drop everything up to CURR (as 8390.c does with a bogus header).
            self.skip_to(self.curr);
            return Err(Ne2000Error::BadHeader);
        }
        let result = match buf.get_mut(..len) {
            Some(dst) => {
                let even = len & !1;
                let (words, tail) = dst.split_at_mut(even);
                self.io.read_words(self.base + DATA, words);
                if let Some(b) = tail.first_mut() {
                    *b = self.inb(DATA);
                }
                Ok(Some(len))
            }
            None => Err(Ne2000Error::BufferTooSmall),
        };
        self.outb(CR, CR_START);
        self.skip_to(next);
        result
    }

    /// Marks the frames before `page` read: the next frame is at `page`, `BNRY` one
    /// before it.
    fn skip_to(&mut self, page: u8) {
        self.next = page;
        let bnry = if page <= RX_START {
            RX_STOP - 1
        } else {
            page - 1
        };
        self.outb(BNRY, bnry);
    }

    /// Polls `ISR` until one of `bits` is set; returns the `ISR` value.
    fn wait(&mut self, bits: u8) -> Result<u8, Ne2000Error> {
        for _ in 0..POLL_LIMIT {
            let isr = self.inb(ISR);
            if isr & bits != 0 {
                return Ok(isr);
            }
        }
        Err(Ne2000Error::Timeout)
    }

    fn inb(&mut self, reg: u16) -> u8 {
        self.io.read_u8(self.base + reg)
    }

    fn outb(&mut self, reg: u16, value: u8) {
        self.io.write_u8(self.base + reg, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::PortIo;
    use pvkit_devices::ne2000::{Ne2000 as Model, RxOutcome};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF];

    /// The device model on the port bus at [`IO_BASE`]; counts accesses (VM exits as the
    /// driver sees them; a string instruction counts once).
    struct Bus {
        nic: Model,
        accesses: usize,
    }

    impl Bus {
        fn offset(port: u16) -> u16 {
            port.checked_sub(IO_BASE)
                .filter(|o| *o < 0x20)
                .expect("access outside the NE2000's ports")
        }
    }

    impl PortIo for Bus {
        fn read_u8(&mut self, port: u16) -> u8 {
            self.accesses += 1;
            let mut b = [0];
            self.nic.read(Self::offset(port), &mut b);
            b[0]
        }
        fn write_u8(&mut self, port: u16, value: u8) {
            self.accesses += 1;
            self.nic.write(Self::offset(port), &[value]);
        }
    }

    impl StringIo for Bus {
        fn read_words(&mut self, port: u16, buf: &mut [u8]) {
            self.accesses += 1;
            let n = buf.len() / 2 * 2;
            self.nic.read(Self::offset(port), &mut buf[..n]);
        }
        fn write_words(&mut self, port: u16, buf: &[u8]) {
            self.accesses += 1;
            let n = buf.len() / 2 * 2;
            self.nic.write(Self::offset(port), &buf[..n]);
        }
    }

    fn probed() -> Ne2000<Bus> {
        let bus = Bus {
            nic: Model::new(MAC),
            accesses: 0,
        };
        let mut nic = Ne2000::probe(bus, IO_BASE).unwrap();
        nic.io_mut().accesses = 0;
        nic
    }

    fn frame(dst: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect();
        f[..6].copy_from_slice(&dst);
        f
    }

    #[test]
    fn probe_reads_the_mac_from_the_prom() {
        let nic = probed();
        assert_eq!(nic.mac(), MAC);
        // PAR was programmed: a unicast frame to the MAC is accepted, another is not.
        let mut nic = nic;
        let model = &mut nic.io_mut().nic;
        assert_eq!(model.receive(&frame(MAC, 60, 0)), RxOutcome::Stored);
        assert_eq!(
            model.receive(&frame([2, 0, 0, 0, 0, 1], 60, 0)),
            RxOutcome::Filtered
        );
        assert_eq!(model.receive(&frame([0xFF; 6], 60, 0)), RxOutcome::Stored);
    }

    #[test]
    fn probe_finds_no_device_on_a_floating_bus() {
        let io = crate::port::fake::Recorder::default();
        assert_eq!(
            Ne2000::probe(io, IO_BASE).unwrap_err(),
            Ne2000Error::NoDevice
        );
    }

    #[test]
    fn transmit_is_byte_exact_in_13_accesses() {
        let mut nic = probed();
        for (len, accesses) in [
            (64, 13),
            (1514, 13),
            (60, 13),
            (42, 13),
            (61, 14),
            (1513, 14),
        ] {
            let f = frame([0xFF; 6], len, len as u8);
            nic.transmit(&f).unwrap();
            assert_eq!(nic.io().accesses, accesses, "len {len}");
            nic.io_mut().accesses = 0;
            let mut want = f.clone();
            want.resize(len.max(MIN_FRAME), 0);
            assert_eq!(nic.io_mut().nic.take_tx(), Some(want), "len {len}");
        }
        assert_eq!(
            nic.transmit(&[0; MAX_FRAME + 1]),
            Err(Ne2000Error::FrameTooLong)
        );
        assert_eq!(nic.io().accesses, 0);
    }

    #[test]
    fn receive_is_byte_exact_and_costs_14_then_9_accesses() {
        let mut nic = probed();
        let mut buf = [0u8; MAX_FRAME];
        assert_eq!(nic.receive(&mut buf), Ok(None));
        assert_eq!(nic.io().accesses, 1, "idle poll: one ISR read");
        for len in [64, 1514, 61, 60] {
            nic.io_mut().accesses = 0;
            let f = frame(MAC, len, 3);
            assert_eq!(nic.io_mut().nic.receive(&f), RxOutcome::Stored);
            assert_eq!(nic.receive(&mut buf), Ok(Some(len)));
            assert_eq!(&buf[..len], &f[..]);
            assert_eq!(nic.io().accesses, 14 + len % 2, "len {len}");
        }
        // Three waiting: the first pays for CURR, the others not.
        for seed in 0..3 {
            let f = frame(MAC, 100, seed);
            assert_eq!(nic.io_mut().nic.receive(&f), RxOutcome::Stored);
        }
        let mut costs = vec![];
        for seed in 0..3 {
            nic.io_mut().accesses = 0;
            assert_eq!(nic.receive(&mut buf), Ok(Some(100)));
            assert_eq!(buf[..100], frame(MAC, 100, seed)[..]);
            costs.push(nic.io().accesses);
        }
        assert_eq!(costs, [14, 9, 9]);
        nic.io_mut().accesses = 0;
        assert_eq!(nic.receive(&mut buf), Ok(None));
        // All three arrived before the driver acknowledged PRX: the idle poll is one read.
        assert_eq!(nic.io().accesses, 1);
    }

    #[test]
    fn receive_across_many_ring_wraps() {
        let mut nic = probed();
        let mut buf = [0u8; MAX_FRAME];
        // 600 frames of varying size wrap the 58-page ring dozens of times; up to four are
        // waiting at a time.
        let mut sent = std::collections::VecDeque::new();
        for i in 0..600usize {
            let len = 60 + (i * 97) % (MAX_FRAME - 59);
            let f = frame(MAC, len, i as u8);
            assert_eq!(nic.io_mut().nic.receive(&f), RxOutcome::Stored, "frame {i}");
            sent.push_back(f);
            if i % 4 == 3 {
                while let Some(want) = sent.pop_front() {
                    let n = nic.receive(&mut buf).unwrap().unwrap();
                    assert_eq!(&buf[..n], &want[..]);
                }
                assert_eq!(nic.receive(&mut buf), Ok(None));
            }
        }
        assert_eq!(nic.io().nic.stats().rx_frames, 600);
    }

    #[test]
    fn overflow_reinitialises_and_traffic_resumes() {
        let mut nic = probed();
        let mut buf = [0u8; MAX_FRAME];
        let mut stored = 0;
        while nic.io_mut().nic.receive(&frame(MAC, 1514, 0)) == RxOutcome::Stored {
            stored += 1;
        }
        assert_eq!(
            stored, 9,
            "58-page ring, 6-page frames, one page never filled"
        );
        assert_eq!(nic.receive(&mut buf), Err(Ne2000Error::Overflow));
        assert_eq!(nic.receive(&mut buf), Ok(None));
        let f = frame(MAC, 300, 7);
        assert_eq!(nic.io_mut().nic.receive(&f), RxOutcome::Stored);
        assert_eq!(nic.receive(&mut buf), Ok(Some(300)));
        assert_eq!(&buf[..300], &f[..]);
        nic.transmit(&f).unwrap();
        assert_eq!(nic.io_mut().nic.take_tx(), Some(f));
    }

    #[test]
    fn short_buffer_drops_the_frame() {
        let mut nic = probed();
        let f = frame(MAC, 200, 1);
        nic.io_mut().nic.receive(&f);
        nic.io_mut().nic.receive(&frame(MAC, 80, 2));
        let mut small = [0u8; 100];
        assert_eq!(nic.receive(&mut small), Err(Ne2000Error::BufferTooSmall));
        assert_eq!(nic.receive(&mut small), Ok(Some(80)));
    }
}
