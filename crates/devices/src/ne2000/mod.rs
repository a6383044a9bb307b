//! Emulated NE2000: a National DP8390 network interface controller with 16 KiB of card
//! memory on the ISA bus at I/O base `0x300` (32 ports), as Novell's NE2000 wires it.
//!
//! [`Ne2000`] is an I/O-free state machine like the other models here: the VMM forwards
//! every port access in `0x300..=0x31F` to [`Ne2000::read`] / [`Ne2000::write`] (with the
//! offset from the base), hands frames from its network backend to [`Ne2000::receive`],
//! takes the frames the guest transmitted from [`Ne2000::take_tx`], and after each call
//! drives the interrupt line to [`Ne2000::irq_level`]. No threads, no file descriptors.
//!
//! # What is modelled
//!
//! * `CR`: page select 0/1/2, `STA`/`STP`, `TXP`, the remote DMA commands (read, write,
//!   send packet, abort). Page 3 (and page 2 writes) are ignored; unknown reads are `0xFF`.
//! * `ISR` (write 1 to clear; `RST` is status only) and `IMR`; the interrupt line is the
//!   level of `ISR & IMR` (bits 0..=6).
//! * `DCR` (`WTS`: byte or word remote DMA), `RCR` (broadcast, multicast hash,
//!   promiscuous, monitor), `TCR` (loopback), `TPSR`/`TBCR`, `RSAR`/`RBCR`, the tally
//!   counters (`CNTR2` counts missed frames; cleared on read), `TSR`, `RSR`, page 1's
//!   `PAR0..=5`, `CURR` and `MAR0..=7`, and page 2's read-back of the configuration.
//! * Card memory: the NE2000 address PROM at `0x0000..0x0020` (the MAC address, each byte
//!   doubled, then `0x57 0x57` at bytes 28..=31 as NE2000 probes expect), 16 KiB of RAM at
//!   `0x4000..0x8000` (pages `0x40..0x80`). Other addresses read `0xFF` and drop writes.
//! * Remote DMA through the data port: every access moves bytes at `RSAR`, which wraps
//!   from `PSTOP` to `PSTART` as on the DP8390, while `RBCR` counts down; at zero `ISR.RDC`
//!   is set and the transfer ends. Outside a transfer, data-port reads are `0xFF` and writes
//!   are dropped. Starting a remote read or write with `RBCR == 0` completes at once.
//! * The receive ring `PSTART..PSTOP` with `BNRY`/`CURR` and the 4-byte header (status,
//!   next page, length = frame + 4, little-endian), wrapping at `PSTOP`. See [`ring`] for
//!   the room rule: a frame is stored only if it fits without `CURR` reaching `BNRY`;
//!   otherwise it is dropped, `ISR.OVW` set and `CNTR2` counted. The chip keeps receiving
//!   later frames that fit (the DP8390's overflow recovery sequence is accepted but not
//!   needed).
//! * The NE2000 reset port: a read (or write) resets the chip: stopped, `ISR = RST`,
//!   `IMR = 0`, no remote DMA. Card memory and the PROM survive.
//!
//! # Access widths
//!
//! A port access of `data.len()` bytes. On the data port the bytes are a stream of
//! transfers: in byte mode one per byte (a 16-bit `in` on an 8-bit card is split into two
//! by the ISA bus); in word mode (`DCR.WTS`) one per 2 bytes, and a 1-byte access moves one
//! word and reads its low byte (so a driver's trailing `inb` of an odd count works). A
//! string access (`rep insw`) handed over as one slice is many transfers, in order. Other
//! registers are 8 bits: a write uses `data[0]`, a read fills `data` with the value.
//!
//! # Frames and their limits
//!
//! * From the host ([`Ne2000::receive`]): frames shorter than 60 bytes are zero-padded to
//!   60 (a TAP device does not pad); frames longer than [`MAX_FRAME`] (1514, no FCS) are
//!   dropped and counted. The FCS is neither expected nor stored (the length in the
//!   header is the frame's plus 4, as drivers expect from QEMU and real cards alike).
//! * From the guest (`TXP`): a `TBCR` above [`MAX_FRAME`] is **refused**: nothing is
//!   sent, `TSR.ABT` and `ISR.TXE` are set and `tx_refused` counted. A real DP8390 would
//!   put the over-long frame on the wire, where it is a jabber that receivers discard;
//!   refusing it keeps every frame handed to the backend valid. Frames shorter than 60
//!   bytes are zero-padded to 60 (real drivers pad; the chip does not, and a runt on the
//!   wire is discarded). Bytes outside card RAM read `0xFF`.
//! * Transmit completes within the `CR` write (`TSR.PTX`, `ISR.PTX`). The frame waits in a
//!   queue of at most [`TX_QUEUE_LIMIT`] frames for the backend; a frame that finds the
//!   queue full is dropped and counted (the VMM drains after every write, so this only
//!   happens with a backend that stopped taking frames). In loopback (`TCR.LB != 0`) a
//!   frame completes but goes nowhere (counted).
//!
//! Everything the guest writes is hostile: no access panics, memory use is fixed (card
//! memory plus the bounded transmit queue), and every access is O(length of the access),
//! except a transmit or receive, which is O(frame).

mod regs;
pub mod ring;
mod state;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

pub use regs::*;
use ring::{Ring, RX_HEADER};
pub use state::{DmaState, Ne2000State, Ne2000Stats};

/// First I/O port of the NE2000.
pub const NE2000_IO_BASE: u16 = 0x300;
/// Number of I/O ports, from [`NE2000_IO_BASE`].
pub const NE2000_IO_LEN: u16 = 0x20;
/// The ISA interrupt line an NE2000 is commonly jumpered to (and QEMU's default).
pub const NE2000_DEFAULT_IRQ: u32 = 9;
/// Largest frame without FCS: 14-byte header + 1500-byte MTU.
pub const MAX_FRAME: usize = 1514;
/// Smallest frame without FCS; shorter frames are zero-padded to it.
pub const MIN_FRAME: usize = 60;
/// Bytes of card RAM.
pub const MEM_SIZE: usize = 0x4000;
/// First card address of RAM (page `0x40`).
pub const MEM_START: u16 = 0x4000;
/// Bytes of the address PROM window at card address 0.
pub const PROM_SIZE: usize = 32;
/// Most transmitted frames kept for the backend.
pub const TX_QUEUE_LIMIT: usize = 32;

const MEM_START_U32: u32 = MEM_START as u32;
const MEM_END_U32: u32 = MEM_START_U32 + MEM_SIZE as u32;

/// What became of a frame handed to [`Ne2000::receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Stored in the receive ring; `ISR.PRX` set.
    Stored,
    /// Longer than [`MAX_FRAME`]: dropped (`rx_oversize`).
    Oversize,
    /// The chip is stopped: dropped.
    Stopped,
    /// The destination address is not one `RCR`/`PAR`/`MAR` accept: dropped.
    Filtered,
    /// Accepted in monitor mode: checked and counted, not stored.
    Monitored,
    /// The ring had no room: dropped, `ISR.OVW` set, `CNTR2` counted.
    Overflow,
    /// The ring registers are nonsense (`PSTART >= PSTOP`, `CURR`/`BNRY` outside it):
    /// dropped, `CNTR2` counted.
    BadRing,
}

/// Remote DMA in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dma {
    Idle,
    Read,
    Write,
}

/// An NE2000 (DP8390). See the [module documentation](self) for what is modelled.
#[derive(Debug, Clone)]
pub struct Ne2000 {
    mac: [u8; 6],
    /// `CR` without `TXP` (transmit completes within the write).
    cr: u8,
    isr: u8,
    imr: u8,
    dcr: u8,
    rcr: u8,
    tcr: u8,
    tsr: u8,
    rsr: u8,
    pstart: u8,
    pstop: u8,
    bnry: u8,
    curr: u8,
    tpsr: u8,
    tbcr: u16,
    rsar: u16,
    rbcr: u16,
    dma: Dma,
    par: [u8; 6],
    mar: [u8; 8],
    cntr: [u8; 3],
    mem: Box<[u8; MEM_SIZE]>,
    tx: VecDeque<Vec<u8>>,
    stats: Ne2000Stats,
}

impl Ne2000 {
    /// A card with station address `mac` in its PROM, after a hardware reset (stopped).
    /// The driver copies the PROM into `PAR0..=5`; until then they read 0.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut nic = Self {
            mac,
            cr: 0,
            isr: 0,
            imr: 0,
            dcr: 0,
            rcr: 0,
            tcr: 0,
            tsr: 0,
            rsr: 0,
            pstart: 0,
            pstop: 0,
            bnry: 0,
            curr: 0,
            tpsr: 0,
            tbcr: 0,
            rsar: 0,
            rbcr: 0,
            dma: Dma::Idle,
            par: [0; 6],
            mar: [0; 8],
            cntr: [0; 3],
            mem: Box::new([0; MEM_SIZE]),
            tx: VecDeque::new(),
            stats: Ne2000Stats::default(),
        };
        nic.reset();
        nic
    }

    /// The station address in the PROM.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// What the card counted (frames passed and dropped, by reason).
    pub fn stats(&self) -> &Ne2000Stats {
        &self.stats
    }

    /// The interrupt line: whether an unmasked `ISR` bit is set. Level-triggered; the VMM
    /// reads it after every access and every [`receive`](Self::receive).
    pub fn irq_level(&self) -> bool {
        self.isr & self.imr & 0x7F != 0
    }

    /// The oldest transmitted frame not yet taken by the backend.
    pub fn take_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Frames waiting in the transmit queue.
    pub fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// Handles a guest read of `data.len()` bytes at `offset` from the I/O base.
    pub fn read(&mut self, offset: u16, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        match offset {
            0x10..=0x17 => self.read_data(data),
            0x18..=0x1F => {
                self.reset();
                data.fill(0);
            }
            _ => {
                let value = self.read_register(offset);
                data.fill(value);
            }
        }
    }

    /// Handles a guest write of `data` at `offset` from the I/O base.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            0x10..=0x17 => self.write_data(data),
            0x18..=0x1F => self.reset(),
            _ => self.write_register(offset, value),
        }
    }

    /// Hands the card a frame from the network (without FCS).
    pub fn receive(&mut self, frame: &[u8]) -> RxOutcome {
        let outcome = self.receive_inner(frame);
        let s = &mut self.stats;
        let counter = match outcome {
            RxOutcome::Stored => &mut s.rx_frames,
            RxOutcome::Oversize => &mut s.rx_oversize,
            RxOutcome::Stopped => &mut s.rx_stopped,
            RxOutcome::Filtered => &mut s.rx_filtered,
            RxOutcome::Monitored => &mut s.rx_monitored,
            RxOutcome::Overflow => &mut s.rx_overflow,
            RxOutcome::BadRing => &mut s.rx_bad_ring,
        };
        *counter = counter.saturating_add(1);
        outcome
    }

    fn page(&self) -> u8 {
        self.cr >> 6
    }

    fn started(&self) -> bool {
        self.cr & cr::STP == 0 && self.cr & cr::STA != 0
    }

    /// The chip's reset (reset port or power-on): stopped, no remote DMA, `ISR.RST`.
    fn reset(&mut self) {
        self.cr = cr::STP | cr::RD_ABORT;
        self.isr = isr::RST;
        self.imr = 0;
        self.dma = Dma::Idle;
        self.rbcr = 0;
        self.tsr = 0;
    }

    fn read_register(&mut self, offset: u16) -> u8 {
        if offset == CR {
            return self.cr;
        }
        match (self.page(), offset) {
            // CLDA: the local DMA address, at the start of the page it writes next.
            (0, 0x01) => 0,
            (0, 0x02) => self.curr,
            (0, BNRY) => self.bnry,
            (0, TSR) => self.tsr,
            (0, ISR) => self.isr,
            (0, RSAR0) => self.rsar.to_le_bytes()[0],
            (0, RSAR1) => self.rsar.to_le_bytes()[1],
            (0, RSR) => self.rsr,
            (0, CNTR0..=CNTR2) => {
                let i = usize::from(offset - CNTR0);
                let value = self.cntr.get(i).copied().unwrap_or(0);
                if let Some(c) = self.cntr.get_mut(i) {
                    *c = 0;
                }
                value
            }
            (1, 0x01..=0x06) => self
                .par
                .get(usize::from(offset - PAR0))
                .copied()
                .unwrap_or(0),
            (1, CURR) => self.curr,
            (1, 0x08..=0x0F) => self
                .mar
                .get(usize::from(offset - MAR0))
                .copied()
                .unwrap_or(0),
            (2, PSTART) => self.pstart,
            (2, PSTOP) => self.pstop,
            (2, TPSR) => self.tpsr,
            (2, RCR) => self.rcr | 0xC0,
            (2, TCR) => self.tcr | 0xE0,
            (2, DCR) => self.dcr | 0x80,
            (2, IMR) => self.imr | 0x80,
            _ => 0xFF,
        }
    }

    fn write_register(&mut self, offset: u16, value: u8) {
        if offset == CR {
            self.command(value);
            return;
        }
        match (self.page(), offset) {
            (0, PSTART) => self.pstart = value,
            (0, PSTOP) => self.pstop = value,
            (0, BNRY) => self.bnry = value,
            (0, TPSR) => self.tpsr = value,
            (0, TBCR0) => self.tbcr = (self.tbcr & 0xFF00) | u16::from(value),
            (0, TBCR1) => self.tbcr = (self.tbcr & 0x00FF) | (u16::from(value) << 8),
            (0, ISR) => {
                self.isr &= !(value & 0x7F);
            }
            (0, RSAR0) => self.rsar = (self.rsar & 0xFF00) | u16::from(value),
            (0, RSAR1) => self.rsar = (self.rsar & 0x00FF) | (u16::from(value) << 8),
            (0, RBCR0) => self.rbcr = (self.rbcr & 0xFF00) | u16::from(value),
            (0, RBCR1) => self.rbcr = (self.rbcr & 0x00FF) | (u16::from(value) << 8),
            (0, RCR) => self.rcr = value & 0x3F,
            (0, TCR) => self.tcr = value & 0x1F,
            (0, DCR) => self.dcr = value & 0x7F,
            (0, IMR) => self.imr = value & 0x7F,
            (1, 0x01..=0x06) => {
                if let Some(b) = self.par.get_mut(usize::from(offset - PAR0)) {
                    *b = value;
                }
            }
            (1, CURR) => self.curr = value,
            (1, 0x08..=0x0F) => {
                if let Some(b) = self.mar.get_mut(usize::from(offset - MAR0)) {
                    *b = value;
                }
            }
            _ => {}
        }
    }

    fn command(&mut self, value: u8) {
        // Stop wins over start; neither keeps the current state.
        let run = if value & cr::STP != 0 {
            cr::STP
        } else if value & cr::STA != 0 {
            cr::STA
        } else {
            self.cr & (cr::STP | cr::STA)
        };
        self.cr = (value & (cr::PS_MASK | cr::RD_MASK)) | run;
        if run == cr::STP {
            self.isr |= isr::RST;
        } else {
            self.isr &= !isr::RST;
        }
        match value & cr::RD_MASK {
            cr::RD_READ => self.start_dma(Dma::Read),
            cr::RD_WRITE => self.start_dma(Dma::Write),
            cr::RD_SEND => {
                // Send packet: a remote read of the frame at BNRY, its length from the
                // header there.
                self.rsar = u16::from(self.bnry) << 8;
                let lo = self.mem_read(self.rsar.wrapping_add(2));
                let hi = self.mem_read(self.rsar.wrapping_add(3));
                self.rbcr = u16::from_le_bytes([lo, hi]);
                self.start_dma(Dma::Read);
            }
            _ => self.dma = Dma::Idle,
        }
        if value & cr::TXP != 0 && self.started() {
            self.transmit();
        }
    }

    fn start_dma(&mut self, dma: Dma) {
        if self.rbcr == 0 {
            self.dma = Dma::Idle;
            self.isr |= isr::RDC;
        } else {
            self.dma = dma;
        }
    }

    fn word_mode(&self) -> bool {
        self.dcr & dcr::WTS != 0
    }

    /// One remote DMA byte: `RSAR` advances (wrapping at `PSTOP`) and `RBCR` counts down.
    /// `None` once the transfer has ended.
    fn dma_step(&mut self, want: Dma) -> Option<u16> {
        if self.dma != want || self.rbcr == 0 {
            return None;
        }
        let addr = self.rsar;
        self.rsar = self.rsar.wrapping_add(1);
        if self.pstart < self.pstop && self.rsar == u16::from(self.pstop) << 8 {
            self.rsar = u16::from(self.pstart) << 8;
        }
        self.rbcr -= 1;
        if self.rbcr == 0 {
            self.dma = Dma::Idle;
            self.isr |= isr::RDC;
        }
        Some(addr)
    }

    fn read_data(&mut self, data: &mut [u8]) {
        let word = self.word_mode();
        let mut chunks = data.chunks_mut(if word { 2 } else { 1 });
        for chunk in &mut chunks {
            let transfer = if word { 2 } else { 1 };
            for i in 0..transfer {
                let byte = match self.dma_step(Dma::Read) {
                    Some(addr) => self.mem_read(addr),
                    None => 0xFF,
                };
                if let Some(b) = chunk.get_mut(i) {
                    *b = byte;
                }
            }
        }
    }

    fn write_data(&mut self, data: &[u8]) {
        let word = self.word_mode();
        for chunk in data.chunks(if word { 2 } else { 1 }) {
            let transfer = if word { 2 } else { 1 };
            for i in 0..transfer {
                // A 1-byte access in word mode writes a word whose high byte is 0.
                let byte = chunk.get(i).copied().unwrap_or(0);
                if let Some(addr) = self.dma_step(Dma::Write) {
                    self.mem_write(addr, byte);
                }
            }
        }
    }

    fn mem_read(&self, addr: u16) -> u8 {
        self.mem_read32(u32::from(addr))
    }

    fn mem_read32(&self, addr: u32) -> u8 {
        if addr < PROM_SIZE as u32 {
            self.prom(addr)
        } else if (MEM_START_U32..MEM_END_U32).contains(&addr) {
            let i = (addr - MEM_START_U32) as usize;
            self.mem.get(i).copied().unwrap_or(0xFF)
        } else {
            0xFF
        }
    }

    fn mem_write(&mut self, addr: u16, value: u8) {
        self.mem_write32(u32::from(addr), value);
    }

    fn mem_write32(&mut self, addr: u32, value: u8) {
        if (MEM_START_U32..MEM_END_U32).contains(&addr) {
            let i = (addr - MEM_START_U32) as usize;
            if let Some(b) = self.mem.get_mut(i) {
                *b = value;
            }
        }
    }

    /// PROM byte `addr` (< 32): the MAC address with each byte doubled, bytes 12..=27 zero
    /// and the NE2000 signature `0x57` in 28..=31 (bytes 14 and 15 once undoubled).
    fn prom(&self, addr: u32) -> u8 {
        let i = (addr / 2) as usize;
        match i {
            0..=5 => self.mac.get(i).copied().unwrap_or(0),
            14 | 15 => 0x57,
            _ => 0,
        }
    }

    fn transmit(&mut self) {
        let len = usize::from(self.tbcr);
        if len > MAX_FRAME {
            self.tsr = tsr::ABT;
            self.isr |= isr::TXE;
            self.stats.tx_refused = self.stats.tx_refused.saturating_add(1);
            return;
        }
        let base = u32::from(self.tpsr) << 8;
        let mut frame: Vec<u8> = (0..len as u32).map(|i| self.mem_read32(base + i)).collect();
        if frame.len() < MIN_FRAME {
            frame.resize(MIN_FRAME, 0);
        }
        self.tsr = tsr::PTX;
        self.isr |= isr::PTX;
        let s = &mut self.stats;
        if self.tcr & tcr::LB_MASK != 0 {
            s.tx_loopback = s.tx_loopback.saturating_add(1);
        } else if self.tx.len() >= TX_QUEUE_LIMIT {
            s.tx_dropped = s.tx_dropped.saturating_add(1);
        } else {
            s.tx_frames = s.tx_frames.saturating_add(1);
            self.tx.push_back(frame);
        }
    }

    /// Whether `RCR`, `PAR` and `MAR` accept a frame sent to `dst`.
    fn accepts(&self, dst: &[u8; 6]) -> bool {
        if self.rcr & rcr::PRO != 0 {
            return true;
        }
        if *dst == [0xFF; 6] {
            return self.rcr & rcr::AB != 0;
        }
        if ring::is_group(dst) {
            let index = ring::multicast_index(dst);
            let bit =
                self.mar.get(usize::from(index >> 3)).copied().unwrap_or(0) & (1 << (index & 7));
            return self.rcr & rcr::AM != 0 && bit != 0;
        }
        *dst == self.par
    }

    fn count_missed(&mut self) {
        if let Some(c) = self.cntr.get_mut(2) {
            *c = c.saturating_add(1);
            if *c & 0x80 != 0 {
                self.isr |= isr::CNT;
            }
        }
    }

    fn receive_inner(&mut self, frame: &[u8]) -> RxOutcome {
        if frame.len() > MAX_FRAME {
            return RxOutcome::Oversize;
        }
        if !self.started() {
            return RxOutcome::Stopped;
        }
        let mut dst = [0xFF_u8; 6];
        for (d, s) in dst.iter_mut().zip(frame) {
            *d = *s;
        }
        if !self.accepts(&dst) {
            return RxOutcome::Filtered;
        }
        if self.rcr & rcr::MON != 0 {
            self.count_missed();
            return RxOutcome::Monitored;
        }
        let Some(ring) = Ring::new(self.pstart, self.pstop, self.curr, self.bnry) else {
            self.count_missed();
            return RxOutcome::BadRing;
        };
        let len = frame.len().max(MIN_FRAME);
        let pages = ring::pages_for(len);
        if pages > ring.free_pages(self.curr, self.bnry) {
            self.isr |= isr::OVW;
            self.rsr = rsr::MPA;
            self.count_missed();
            return RxOutcome::Overflow;
        }
        let next = ring.advance(self.curr, pages);
        let status = if ring::is_group(&dst) {
            rsr::PRX | rsr::PHY
        } else {
            rsr::PRX
        };
        let count = u16::try_from(len + RX_HEADER).unwrap_or(u16::MAX);
        let [lo, hi] = count.to_le_bytes();
        let header = [status, next, lo, hi];
        let padding = core::iter::repeat_n(&0u8, len - frame.len());
        let bytes = header.iter().chain(frame).chain(padding);
        for (offset, &byte) in bytes.enumerate() {
            let addr = ring.address(self.curr, offset);
            self.mem_write32(addr, byte);
        }
        self.curr = next;
        self.rsr = status;
        self.isr |= isr::PRX;
        RxOutcome::Stored
    }
}
