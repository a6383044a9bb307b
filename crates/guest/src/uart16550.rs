//! A real 8250/16550 UART driver (polled transmit).
//!
//! [`Uart16550::init`] programs the chip exactly as on hardware: interrupts off, divisor
//! latch for 115200 baud, 8 data bits / no parity / 1 stop bit, FIFOs enabled and cleared,
//! DTR | RTS | OUT2. [`Uart16550::write_byte`] polls the line status register until the
//! transmit holding register is empty (LSR bit 5, THRE) and then writes the byte.
//!
//! # Exit accounting
//!
//! On a VMM every port access is a VM exit. This driver is written so the count is exact:
//!
//! - [`Uart16550::init`]: [`INIT_WRITES`] port writes, no reads;
//! - [`Uart16550::write_byte`]: exactly one LSR read and one THR write when the transmitter
//!   is ready (as an emulated UART always is), plus one LSR read per extra poll otherwise;
//! - no translation of any kind: `\n` is sent as one byte (no `\r\n`), so writing `n` bytes
//!   costs `2 * n` accesses. Terminals that want CR LF must be sent CR LF.

use crate::port::PortIo;

/// Transmit holding register (write, DLAB = 0).
pub const THR: u16 = 0;
/// Interrupt enable register (DLAB = 0).
pub const IER: u16 = 1;
/// Divisor latch low byte (DLAB = 1).
pub const DLL: u16 = 0;
/// Divisor latch high byte (DLAB = 1).
pub const DLM: u16 = 1;
/// FIFO control register (write).
pub const FCR: u16 = 2;
/// Line control register.
pub const LCR: u16 = 3;
/// Modem control register.
pub const MCR: u16 = 4;
/// Line status register.
pub const LSR: u16 = 5;

/// `LCR`: divisor latch access bit.
pub const LCR_DLAB: u8 = 0x80;
/// `LCR`: 8 data bits, no parity, 1 stop bit.
pub const LCR_8N1: u8 = 0x03;
/// `FCR`: enable the FIFOs and clear both of them.
pub const FCR_ENABLE_CLEAR: u8 = 0x07;
/// `MCR`: DTR | RTS | OUT2.
pub const MCR_DTR_RTS_OUT2: u8 = 0x0b;
/// `LSR`: transmit holding register empty.
pub const LSR_THRE: u8 = 0x20;

/// The divisor for 115200 baud from the standard 1.8432 MHz clock (115200 / 115200).
pub const DIVISOR_115200: u16 = 1;

/// Number of port writes [`Uart16550::init`] performs.
pub const INIT_WRITES: usize = 7;

/// A 16550 UART at an I/O port base (COM1 is [`pvkit_abi::ports::COM1`]).
#[derive(Debug)]
pub struct Uart16550<P: PortIo> {
    base: u16,
    io: P,
}

#[cfg(target_arch = "x86_64")]
impl Uart16550<crate::port::Pio> {
    /// A UART at `base`, driven with real port I/O.
    ///
    /// # Safety
    ///
    /// As [`crate::port::Pio::new`]: the caller may access ports `base..base + 8` and owns
    /// the UART there (or nothing is there).
    pub const unsafe fn new(base: u16) -> Self {
        // SAFETY: forwarded to the caller's contract.
        Self::with_io(base, unsafe { crate::port::Pio::new() })
    }
}

impl<P: PortIo> Uart16550<P> {
    /// A UART at `base`, driven through `io`.
    pub const fn with_io(base: u16, io: P) -> Self {
        Self { base, io }
    }

    /// The I/O port base.
    pub const fn base(&self) -> u16 {
        self.base
    }

    /// The port-I/O backend (tests inspect their recorder through it).
    pub fn io(&self) -> &P {
        &self.io
    }

    /// Programs the UART for 115200 8N1 with FIFOs, and interrupts off.
    /// Costs [`INIT_WRITES`] port writes.
    pub fn init(&mut self) {
        let [dll, dlm] = DIVISOR_115200.to_le_bytes();
        self.out(IER, 0x00); // interrupts off (DLAB is 0 after reset or the last init)
        self.out(LCR, LCR_DLAB);
        self.out(DLL, dll);
        self.out(DLM, dlm);
        self.out(LCR, LCR_8N1); // also clears DLAB
        self.out(FCR, FCR_ENABLE_CLEAR);
        self.out(MCR, MCR_DTR_RTS_OUT2);
    }

    /// Waits for THRE, then writes `byte` to THR. Sent as is (no `\n` translation).
    #[inline]
    pub fn write_byte(&mut self, byte: u8) {
        while self.io.read_u8(self.base + LSR) & LSR_THRE == 0 {
            core::hint::spin_loop();
        }
        self.io.write_u8(self.base + THR, byte);
    }

    /// Writes every byte of `bytes` with [`Uart16550::write_byte`].
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }

    fn out(&mut self, reg: u16, value: u8) {
        self.io.write_u8(self.base + reg, value);
    }
}

impl<P: PortIo> crate::writer::ByteSink for Uart16550<P> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), pvkit_abi::Status> {
        self.write(bytes);
        Ok(())
    }
}

impl<P: PortIo> core::fmt::Write for Uart16550<P> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::fake::{Access, Recorder};
    use pvkit_abi::ports::COM1;

    fn uart() -> Uart16550<Recorder> {
        let mut io = Recorder::default();
        io.reads.insert(COM1 + LSR, vec![LSR_THRE]);
        Uart16550::with_io(COM1, io)
    }

    #[test]
    fn init_programs_115200_8n1_fifo_dtr_rts_out2() {
        let mut u = uart();
        u.init();
        assert_eq!(
            u.io().log,
            [
                Access::Write(COM1 + IER, 0),
                Access::Write(COM1 + LCR, 0x80),
                Access::Write(COM1 + DLL, 1),
                Access::Write(COM1 + DLM, 0),
                Access::Write(COM1 + LCR, 0x03),
                Access::Write(COM1 + FCR, 0x07),
                Access::Write(COM1 + MCR, 0x0b),
            ]
        );
        assert_eq!(u.io().log.len(), INIT_WRITES);
    }

    #[test]
    fn one_lsr_read_and_one_thr_write_per_byte_no_translation() {
        let mut u = uart();
        u.write(b"a\nb");
        let expected: Vec<Access> = b"a\nb"
            .iter()
            .flat_map(|&b| {
                [
                    Access::Read(COM1 + LSR, LSR_THRE),
                    Access::Write(COM1 + THR, b),
                ]
            })
            .collect();
        assert_eq!(u.io().log, expected);
    }

    #[test]
    fn waits_for_thre() {
        let mut u = uart();
        u.io.reads.insert(COM1 + LSR, vec![0x00, 0x00, LSR_THRE]);
        u.write_byte(b'z');
        assert_eq!(
            u.io().log,
            [
                Access::Read(COM1 + LSR, 0),
                Access::Read(COM1 + LSR, 0),
                Access::Read(COM1 + LSR, LSR_THRE),
                Access::Write(COM1 + THR, b'z'),
            ]
        );
    }
}
