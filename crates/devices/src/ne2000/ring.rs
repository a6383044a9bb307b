//! Receive ring arithmetic and the destination address filter: pure functions of the
//! page registers and the frame, shared by the model and its tests.
//!
//! The ring is the pages `PSTART..PSTOP` of card memory (256 bytes each). The chip writes
//! a frame at `CURR` and moves `CURR` past it; the host reads frames after `BNRY` and
//! moves `BNRY` behind them.

/// Bytes in a buffer page.
pub const PAGE: usize = 256;
/// Bytes of the header the chip writes before each received frame.
pub const RX_HEADER: usize = 4;

/// The page registers of a usable ring, or `None` when the guest programmed nonsense
/// (`PSTART >= PSTOP`, or `CURR`/`BNRY` outside the ring): no frame is stored then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    /// First page of the ring.
    pub start: u8,
    /// First page after the ring.
    pub stop: u8,
}

impl Ring {
    /// The ring `start..stop`, if it holds at least one page and `curr` and `bnry` are
    /// inside it.
    pub fn new(start: u8, stop: u8, curr: u8, bnry: u8) -> Option<Ring> {
        let ring = Ring { start, stop };
        (start < stop && ring.contains(curr) && ring.contains(bnry)).then_some(ring)
    }

    /// Pages in the ring (at least 1).
    pub fn pages(self) -> u8 {
        self.stop.saturating_sub(self.start)
    }

    /// Whether `page` is a ring page.
    pub fn contains(self, page: u8) -> bool {
        (self.start..self.stop).contains(&page)
    }

    /// The page `n` pages after `page` (a ring page), wrapping from `stop` to `start`.
    pub fn advance(self, page: u8, n: usize) -> u8 {
        let size = usize::from(self.pages()).max(1);
        let from = usize::from(page.saturating_sub(self.start));
        let to = (from + n % size) % size;
        // `to < size <= 255 - start`: the sum fits in a page number.
        self.start
            .saturating_add(u8::try_from(to).unwrap_or(u8::MAX))
    }

    /// Pages the chip may fill from `curr` without reaching `bnry`.
    ///
    /// The chip never lets `CURR` land on `BNRY` after a frame, so `CURR == BNRY` always
    /// means "nothing stored since `BNRY` was set", the ring's whole size is free, and
    /// both driver conventions work: `BNRY` one page behind the next frame to read
    /// (Linux: `BNRY = PSTART`, `CURR = PSTART + 1`) and `BNRY` on it (`BNRY == CURR`).
    /// The cost is one page that is never filled.
    pub fn free_pages(self, curr: u8, bnry: u8) -> usize {
        let size = usize::from(self.pages());
        let c = usize::from(curr.saturating_sub(self.start));
        let b = usize::from(bnry.saturating_sub(self.start));
        let gap = (b + size - c) % size;
        let gap = if gap == 0 { size } else { gap };
        gap - 1
    }

    /// The byte address of `offset` bytes into the ring from the start of `page`,
    /// wrapping from `stop` to `start`.
    pub fn address(self, page: u8, offset: usize) -> u32 {
        let page = self.advance(page, offset / PAGE);
        (u32::from(page) << 8) | u32::try_from(offset % PAGE).unwrap_or(0)
    }
}

/// Ring pages a received frame of `len` bytes takes, header included.
pub fn pages_for(len: usize) -> usize {
    (len + RX_HEADER).div_ceil(PAGE)
}

/// The DP8390's multicast hash index of a destination address: the top six bits of its
/// Ethernet CRC-32 (bits fed least significant first, no final inversion), as Linux's
/// `ether_crc` computes it. `MAR[index / 8]` bit `index % 8` accepts the address.
pub fn multicast_index(addr: &[u8; 6]) -> u8 {
    let mut crc: u32 = 0xFFFF_FFFF;
    for &byte in addr {
        let mut octet = byte;
        for _ in 0..8 {
            let carry = ((crc >> 31) ^ u32::from(octet & 1)) & 1;
            crc <<= 1;
            if carry != 0 {
                crc ^= 0x04C1_1DB7;
            }
            octet >>= 1;
        }
    }
    u8::try_from(crc >> 26).unwrap_or(0)
}

/// The receive status to report for a destination address: [`super::regs::rsr::PHY`] for a
/// group (multicast or broadcast) address.
pub fn is_group(addr: &[u8; 6]) -> bool {
    addr[0] & 1 != 0
}
