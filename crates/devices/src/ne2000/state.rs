//! Saved state of the NE2000: [`Ne2000State`], [`Ne2000::state`] and
//! [`Ne2000::from_state`], and its counters, [`Ne2000Stats`].

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Dma, Ne2000, MAX_FRAME, MEM_SIZE, MIN_FRAME, TX_QUEUE_LIMIT};
use crate::state::{check_version, ensure, StateError};

const DEVICE: &str = "NE2000";

/// What an [`Ne2000`] counted since it was created (saturating).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ne2000Stats {
    /// Frames stored in the receive ring.
    pub rx_frames: u64,
    /// Frames from the host longer than 1514 bytes, dropped.
    pub rx_oversize: u64,
    /// Frames that arrived while the chip was stopped, dropped.
    pub rx_stopped: u64,
    /// Frames to a destination the filter rejects, dropped.
    pub rx_filtered: u64,
    /// Frames seen in monitor mode (not stored).
    pub rx_monitored: u64,
    /// Frames dropped because the receive ring was full (the guest did not drain it).
    pub rx_overflow: u64,
    /// Frames dropped because the ring registers were nonsense.
    pub rx_bad_ring: u64,
    /// Frames queued for the backend.
    pub tx_frames: u64,
    /// Transmits refused for a byte count above 1514.
    pub tx_refused: u64,
    /// Frames dropped because the transmit queue was full.
    pub tx_dropped: u64,
    /// Frames transmitted in loopback mode (not sent).
    pub tx_loopback: u64,
}

/// Remote DMA direction in a saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DmaState {
    /// No transfer.
    Idle,
    /// Remote read (card to host).
    Read,
    /// Remote write (host to card).
    Write,
}

/// Saved state of an [`Ne2000`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ne2000State {
    /// [`Ne2000State::VERSION`].
    pub version: u32,
    /// The station address in the PROM.
    pub mac: [u8; 6],
    /// `CR` (never with `TXP`; exactly one of `STA`/`STP`).
    pub cr: u8,
    /// `ISR`.
    pub isr: u8,
    /// `IMR` (bits 0..=6).
    pub imr: u8,
    /// `DCR` (bits 0..=6).
    pub dcr: u8,
    /// `RCR` (bits 0..=5).
    pub rcr: u8,
    /// `TCR` (bits 0..=4).
    pub tcr: u8,
    /// `TSR`.
    pub tsr: u8,
    /// `RSR`.
    pub rsr: u8,
    /// `PSTART`.
    pub pstart: u8,
    /// `PSTOP`.
    pub pstop: u8,
    /// `BNRY`.
    pub bnry: u8,
    /// `CURR`.
    pub curr: u8,
    /// `TPSR`.
    pub tpsr: u8,
    /// `TBCR`.
    pub tbcr: u16,
    /// `RSAR` (the current remote DMA address).
    pub rsar: u16,
    /// `RBCR` (bytes left in the remote DMA).
    pub rbcr: u16,
    /// Remote DMA in progress; not idle only with `rbcr > 0`.
    pub dma: DmaState,
    /// `PAR0..=5`.
    pub par: [u8; 6],
    /// `MAR0..=7`.
    pub mar: [u8; 8],
    /// `CNTR0..=2`.
    pub cntr: [u8; 3],
    /// Card RAM, exactly 16384 bytes.
    pub mem: Vec<u8>,
    /// Transmitted frames the backend has not taken (at most 32, each 60..=1514 bytes).
    pub tx: Vec<Vec<u8>>,
    /// Counters.
    pub stats: Ne2000Stats,
}

impl Ne2000State {
    /// The version of this structure.
    pub const VERSION: u32 = 1;
}

impl Ne2000 {
    /// The state of the card, to rebuild it with [`Ne2000::from_state`].
    pub fn state(&self) -> Ne2000State {
        Ne2000State {
            version: Ne2000State::VERSION,
            mac: self.mac,
            cr: self.cr,
            isr: self.isr,
            imr: self.imr,
            dcr: self.dcr,
            rcr: self.rcr,
            tcr: self.tcr,
            tsr: self.tsr,
            rsr: self.rsr,
            pstart: self.pstart,
            pstop: self.pstop,
            bnry: self.bnry,
            curr: self.curr,
            tpsr: self.tpsr,
            tbcr: self.tbcr,
            rsar: self.rsar,
            rbcr: self.rbcr,
            dma: match self.dma {
                Dma::Idle => DmaState::Idle,
                Dma::Read => DmaState::Read,
                Dma::Write => DmaState::Write,
            },
            par: self.par,
            mar: self.mar,
            cntr: self.cntr,
            mem: self.mem.to_vec(),
            tx: self.tx.iter().cloned().collect(),
            stats: self.stats,
        }
    }

    /// Rebuilds a card from a saved state, refusing a state no card could have been in.
    pub fn from_state(state: &Ne2000State) -> Result<Self, StateError> {
        check_version(DEVICE, state.version, Ne2000State::VERSION)?;
        let run = state.cr & 0x07;
        ensure(
            DEVICE,
            run == super::cr::STA || run == super::cr::STP,
            "CR is not exactly one of STA and STP, or has TXP set",
        )?;
        ensure(DEVICE, state.imr & 0x80 == 0, "IMR bit 7 set")?;
        ensure(DEVICE, state.dcr & 0x80 == 0, "DCR bit 7 set")?;
        ensure(DEVICE, state.rcr & 0xC0 == 0, "RCR bits 6..=7 set")?;
        ensure(DEVICE, state.tcr & 0xE0 == 0, "TCR bits 5..=7 set")?;
        ensure(
            DEVICE,
            state.dma == DmaState::Idle || state.rbcr > 0,
            "remote DMA in progress with no bytes left",
        )?;
        let mem: Box<[u8; MEM_SIZE]> =
            state
                .mem
                .clone()
                .into_boxed_slice()
                .try_into()
                .map_err(|_| StateError::Invalid {
                    device: DEVICE,
                    what: "card memory is not 16384 bytes",
                })?;
        ensure(
            DEVICE,
            state.tx.len() <= TX_QUEUE_LIMIT,
            "more queued frames than the transmit queue holds",
        )?;
        ensure(
            DEVICE,
            state
                .tx
                .iter()
                .all(|f| (MIN_FRAME..=MAX_FRAME).contains(&f.len())),
            "a queued frame is shorter than 60 or longer than 1514 bytes",
        )?;
        Ok(Self {
            mac: state.mac,
            cr: state.cr,
            isr: state.isr,
            imr: state.imr,
            dcr: state.dcr,
            rcr: state.rcr,
            tcr: state.tcr,
            tsr: state.tsr,
            rsr: state.rsr,
            pstart: state.pstart,
            pstop: state.pstop,
            bnry: state.bnry,
            curr: state.curr,
            tpsr: state.tpsr,
            tbcr: state.tbcr,
            rsar: state.rsar,
            rbcr: state.rbcr,
            dma: match state.dma {
                DmaState::Idle => Dma::Idle,
                DmaState::Read => Dma::Read,
                DmaState::Write => Dma::Write,
            },
            par: state.par,
            mar: state.mar,
            cntr: state.cntr,
            mem,
            tx: state.tx.iter().cloned().collect::<VecDeque<_>>(),
            stats: state.stats,
        })
    }
}
