//! DP8390 register offsets and bits, as the NE2000 maps them at its I/O base.
//!
//! Offsets are relative to the I/O base. `0x00..=0x0F` are the DP8390's registers (what
//! each offset means depends on the page selected in `CR`), `0x10..=0x17` the NE2000's
//! data port (remote DMA), `0x18..=0x1F` its reset port.

/// Command register (every page).
pub const CR: u16 = 0x00;
/// Page 0 write: receive ring start page. Page 2 read.
pub const PSTART: u16 = 0x01;
/// Page 0 write: receive ring stop page (first page after the ring). Page 2 read.
pub const PSTOP: u16 = 0x02;
/// Page 0: boundary, the last ring page the host has read.
pub const BNRY: u16 = 0x03;
/// Page 0 read: transmit status. Page 0 write: transmit page start (`TPSR`).
pub const TSR: u16 = 0x04;
/// Page 0 write: transmit page start.
pub const TPSR: u16 = 0x04;
/// Page 0 write: transmit byte count, low byte.
pub const TBCR0: u16 = 0x05;
/// Page 0 write: transmit byte count, high byte.
pub const TBCR1: u16 = 0x06;
/// Page 0: interrupt status (write 1 to clear).
pub const ISR: u16 = 0x07;
/// Page 0 write: remote start address, low byte. Read: current remote DMA address.
pub const RSAR0: u16 = 0x08;
/// Page 0 write: remote start address, high byte.
pub const RSAR1: u16 = 0x09;
/// Page 0 write: remote byte count, low byte.
pub const RBCR0: u16 = 0x0A;
/// Page 0 write: remote byte count, high byte.
pub const RBCR1: u16 = 0x0B;
/// Page 0 read: receive status. Write: receive configuration (`RCR`).
pub const RSR: u16 = 0x0C;
/// Page 0 write: receive configuration.
pub const RCR: u16 = 0x0C;
/// Page 0 read: frame alignment error tally. Write: transmit configuration (`TCR`).
pub const CNTR0: u16 = 0x0D;
/// Page 0 write: transmit configuration.
pub const TCR: u16 = 0x0D;
/// Page 0 read: CRC error tally. Write: data configuration (`DCR`).
pub const CNTR1: u16 = 0x0E;
/// Page 0 write: data configuration.
pub const DCR: u16 = 0x0E;
/// Page 0 read: missed packet tally. Write: interrupt mask (`IMR`).
pub const CNTR2: u16 = 0x0F;
/// Page 0 write: interrupt mask.
pub const IMR: u16 = 0x0F;
/// Page 1: physical address bytes 0..=5 at offsets 1..=6.
pub const PAR0: u16 = 0x01;
/// Page 1: current page, where the next received frame goes.
pub const CURR: u16 = 0x07;
/// Page 1: multicast hash bytes 0..=7 at offsets 8..=15.
pub const MAR0: u16 = 0x08;
/// NE2000 data port (offsets `0x10..=0x17` all decode to it).
pub const DATA: u16 = 0x10;
/// NE2000 reset port (offsets `0x18..=0x1F` all decode to it): a read resets the card.
pub const RESET: u16 = 0x1F;

/// `CR` bits.
pub mod cr {
    /// Stop: the chip is off line; `ISR.RST` is set.
    pub const STP: u8 = 0x01;
    /// Start.
    pub const STA: u8 = 0x02;
    /// Transmit the frame at `TPSR` of `TBCR` bytes.
    pub const TXP: u8 = 0x04;
    /// Remote DMA command field (bits 3..=5).
    pub const RD_MASK: u8 = 0x38;
    /// Remote read.
    pub const RD_READ: u8 = 0x08;
    /// Remote write.
    pub const RD_WRITE: u8 = 0x10;
    /// Send packet: a remote read of the frame at `BNRY`.
    pub const RD_SEND: u8 = 0x18;
    /// Abort or complete remote DMA.
    pub const RD_ABORT: u8 = 0x20;
    /// Page select field (bits 6..=7).
    pub const PS_MASK: u8 = 0xC0;
    /// Page 1.
    pub const PAGE1: u8 = 0x40;
    /// Page 2.
    pub const PAGE2: u8 = 0x80;
}

/// `ISR` / `IMR` bits.
pub mod isr {
    /// Packet received.
    pub const PRX: u8 = 0x01;
    /// Packet transmitted.
    pub const PTX: u8 = 0x02;
    /// Receive error.
    pub const RXE: u8 = 0x04;
    /// Transmit error (here: a transmit byte count above 1514, refused).
    pub const TXE: u8 = 0x08;
    /// Receive ring overwrite warning: a frame did not fit and was dropped.
    pub const OVW: u8 = 0x10;
    /// A tally counter's top bit is set.
    pub const CNT: u8 = 0x20;
    /// Remote DMA complete.
    pub const RDC: u8 = 0x40;
    /// The chip is stopped (status only; not maskable, not cleared by writing 1).
    pub const RST: u8 = 0x80;
}

/// `TSR` bits.
pub mod tsr {
    /// Packet transmitted.
    pub const PTX: u8 = 0x01;
    /// Transmit aborted.
    pub const ABT: u8 = 0x08;
}

/// `RSR` bits (also byte 0 of the receive header).
pub mod rsr {
    /// Packet received intact.
    pub const PRX: u8 = 0x01;
    /// Missed packet: the ring had no room.
    pub const MPA: u8 = 0x10;
    /// Physical (0) or multicast/broadcast (1) destination.
    pub const PHY: u8 = 0x20;
}

/// `RCR` bits.
pub mod rcr {
    /// Accept broadcast.
    pub const AB: u8 = 0x04;
    /// Accept multicast that hashes to a set `MAR` bit.
    pub const AM: u8 = 0x08;
    /// Promiscuous: accept every destination.
    pub const PRO: u8 = 0x10;
    /// Monitor: check and count frames, store none.
    pub const MON: u8 = 0x20;
}

/// `TCR` bits.
pub mod tcr {
    /// Loopback mode field (00 = normal).
    pub const LB_MASK: u8 = 0x06;
}

/// `DCR` bits.
pub mod dcr {
    /// Word-wide remote DMA (16-bit data port transfers).
    pub const WTS: u8 = 0x01;
}
