//! Saved state of the 16550 UART.
//!
//! The UART model itself is vm-superio's `Serial` (wired in the VMM); its `SerialState` is
//! not serde, so [`UartState`] is the same registers as a plain serde structure, plus the
//! validation vm-superio leaves to its caller: vm-superio only bounds the receive FIFO,
//! [`UartState::validate`] also refuses register values its `Serial` never produces.

use serde::{Deserialize, Serialize};

use crate::state::{check_version, ensure, StateError};

const DEVICE: &str = "UART";

/// Receive FIFO depth of the 16550A.
pub const FIFO_SIZE: usize = 64;
/// IER bits of a 16550 (the model keeps only these).
pub const IER_VALID: u8 = 0x0F;
/// IIR: no interrupt pending.
pub const IIR_NONE: u8 = 0x01;
/// IIR: pending interrupt bits the model sets (THR empty, received data).
pub const IIR_PENDING: u8 = 0x02 | 0x04;
/// LSR: data ready.
pub const LSR_DR: u8 = 0x01;
/// LSR: THR empty and transmitter idle, always set by the model.
pub const LSR_IDLE: u8 = 0x20 | 0x40;
/// MSR as the model presents it: DCD, DSR, CTS (never written by the guest).
pub const MSR_DEFAULT: u8 = 0x80 | 0x20 | 0x10;

/// Saved state of the 16550 UART (the fields of vm-superio's `SerialState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// [`UartState::VERSION`].
    pub version: u32,
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register (without the FIFO bits).
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes not read yet, oldest first; at most [`FIFO_SIZE`].
    pub in_buffer: Vec<u8>,
}

impl UartState {
    /// The version of this structure.
    pub const VERSION: u32 = 1;

    /// Checks the version and that every register holds a value the model can produce.
    pub fn validate(&self) -> Result<(), StateError> {
        check_version(DEVICE, self.version, Self::VERSION)?;
        ensure(
            DEVICE,
            self.in_buffer.len() <= FIFO_SIZE,
            "receive FIFO over 64 bytes",
        )?;
        ensure(
            DEVICE,
            self.interrupt_enable & !IER_VALID == 0,
            "IER bits above bit 3",
        )?;
        let iir = self.interrupt_identification;
        ensure(
            DEVICE,
            iir == IIR_NONE || (iir & !IIR_PENDING == 0 && iir != 0),
            "IIR neither 'none pending' nor a set of pending interrupts",
        )?;
        let data_ready = if self.in_buffer.is_empty() { 0 } else { LSR_DR };
        ensure(
            DEVICE,
            self.line_status == LSR_IDLE | data_ready,
            "LSR does not match the receive FIFO",
        )?;
        ensure(
            DEVICE,
            self.modem_status == MSR_DEFAULT,
            "MSR other than DCD|DSR|CTS",
        )
    }
}
