//! The emulated 16550 UART at COM1 (`0x3f8..=0x3ff`), built on `vm_superio::Serial`.
//!
//! Output goes to the shared [`Console`]. The VM has no interrupt controller in ABI v1, so
//! the interrupt line is a no-op; guests poll LSR. The behaviour guests rely on is pinned by
//! the unit tests below: the divisor latch behind LCR.DLAB, LSR.THRE|TEMT always set, and
//! IER/IIR reporting a THR-empty interrupt once it is enabled.

use std::convert::Infallible;

use pvkit_devices::uart::UartState;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::bus::PortDevice;
use crate::io::console_out::Console;

/// First port of COM1.
pub const COM1_BASE: u16 = pvkit_abi::ports::COM1;
/// Number of COM1 ports.
pub const COM1_LEN: u16 = 8;

/// Register offsets (from the UART's base port).
pub mod reg {
    /// THR (write) / RBR (read); divisor latch low when LCR.DLAB is set.
    pub const DATA: u16 = 0;
    /// Interrupt enable; divisor latch high when LCR.DLAB is set.
    pub const IER: u16 = 1;
    /// Interrupt identification (read) / FIFO control (write).
    pub const IIR: u16 = 2;
    /// Line control.
    pub const LCR: u16 = 3;
    /// Modem control.
    pub const MCR: u16 = 4;
    /// Line status.
    pub const LSR: u16 = 5;
    /// Modem status.
    pub const MSR: u16 = 6;
    /// Scratch.
    pub const SCR: u16 = 7;
}

/// An interrupt line that goes nowhere (no interrupt controller in ABI v1).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// The COM1 UART as a port-bus device.
pub struct Uart {
    serial: Serial<NoIrq, NoEvents, Console>,
}

impl std::fmt::Debug for Uart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uart").finish_non_exhaustive()
    }
}

impl Uart {
    /// A UART whose transmitted bytes go to `console`.
    pub fn new(console: Console) -> Self {
        Self {
            serial: Serial::new(NoIrq, console),
        }
    }
}

/// Why a saved UART state was refused.
#[derive(Debug, thiserror::Error)]
pub enum UartStateError {
    /// The version or a register is invalid.
    #[error(transparent)]
    State(#[from] pvkit_devices::StateError),
    /// vm-superio refused the state (its receive FIFO is over 64 bytes).
    #[error("vm-superio refused the UART state: {0}")]
    Serial(String),
}

impl Uart {
    /// The UART's registers and receive FIFO, to rebuild it with [`Uart::from_state`].
    pub fn state(&self) -> UartState {
        let s = self.serial.state();
        UartState {
            version: UartState::VERSION,
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Rebuilds the UART from a validated `state`, its output re-attached to `console`.
    pub fn from_state(state: &UartState, console: Console) -> Result<Self, UartStateError> {
        state.validate()?;
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let serial = Serial::from_state(&s, NoIrq, NoEvents, console)
            .map_err(|e| UartStateError::Serial(e.to_string()))?;
        Ok(Self { serial })
    }
}

impl PortDevice for Uart {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // The UART has byte registers; a wider access reads the register at `offset` in
        // the low byte and zeros above it (as an 8-bit device on a wider bus does).
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // Output errors (stdout closed) lose the byte, as a disconnected line would.
            let _ = self.serial.write(off, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSR_THRE: u8 = 1 << 5;
    const LSR_TEMT: u8 = 1 << 6;
    const LCR_DLAB: u8 = 1 << 7;

    fn uart() -> (Uart, Console) {
        let c = Console::capture();
        (Uart::new(c.clone()), c)
    }

    fn rd(u: &mut Uart, off: u16) -> u8 {
        let mut b = [0u8];
        u.read(off, &mut b);
        b[0]
    }

    #[test]
    fn thr_writes_reach_the_console() {
        let (mut u, c) = uart();
        for b in b"hi\n" {
            u.write(reg::DATA, &[*b]);
        }
        assert_eq!(c.captured(), b"hi\n");
    }

    #[test]
    fn lsr_always_reports_thr_empty_and_idle() {
        let (mut u, _c) = uart();
        assert_eq!(
            rd(&mut u, reg::LSR) & (LSR_THRE | LSR_TEMT),
            LSR_THRE | LSR_TEMT
        );
        u.write(reg::DATA, b"x");
        assert_eq!(
            rd(&mut u, reg::LSR) & (LSR_THRE | LSR_TEMT),
            LSR_THRE | LSR_TEMT
        );
        assert_eq!(rd(&mut u, reg::LSR) & 1, 0, "no received data");
    }

    #[test]
    fn dlab_selects_the_divisor_latch() {
        let (mut u, c) = uart();
        u.write(reg::LCR, &[LCR_DLAB | 0x03]);
        u.write(reg::DATA, &[0x01]); // divisor low: 115200 baud
        u.write(reg::IER, &[0x00]); // divisor high
        assert_eq!(rd(&mut u, reg::DATA), 0x01);
        assert_eq!(rd(&mut u, reg::IER), 0x00);
        u.write(reg::LCR, &[0x03]);
        assert_eq!(rd(&mut u, reg::LCR), 0x03);
        // With DLAB clear, offset 0 is THR again and the divisor write printed nothing.
        assert!(c.captured().is_empty());
        u.write(reg::DATA, b"A");
        assert_eq!(c.captured(), b"A");
        // IER is the interrupt enable register again (reset value 0).
        assert_eq!(rd(&mut u, reg::IER), 0);
    }

    #[test]
    fn ier_and_iir() {
        let (mut u, _c) = uart();
        // No interrupt pending; FIFO bits set (16550A).
        assert_eq!(rd(&mut u, reg::IIR), 0xc1);
        // Enabling the THR-empty interrupt raises it at once (THR is always empty).
        u.write(reg::IER, &[0x02]);
        assert_eq!(rd(&mut u, reg::IER), 0x02);
        assert_eq!(rd(&mut u, reg::IIR), 0xc2);
        // Reading IIR acknowledged it.
        assert_eq!(rd(&mut u, reg::IIR), 0xc1);
        // Only the 16550 IER bits are kept.
        u.write(reg::IER, &[0xff]);
        assert_eq!(rd(&mut u, reg::IER), 0x0f);
    }

    /// The power-on state is a valid saved state (and vm-superio's defaults are the
    /// values `UartState::validate` expects).
    #[test]
    fn power_on_state_is_valid() {
        let (u, _c) = uart();
        let s = u.state();
        s.validate().unwrap();
        assert_eq!(s.modem_status, SerialState::default().modem_status);
        assert_eq!(s.line_status, SerialState::default().line_status);
    }

    /// One guest access: a write of `value` or a read, at `offset`.
    fn access() -> impl proptest::strategy::Strategy<Value = (u16, Option<u8>)> {
        use proptest::prelude::*;
        // Loopback (MCR bit 4) and DLAB (LCR bit 7) appear often enough to matter.
        let value = prop_oneof![any::<u8>(), Just(0x10u8), Just(0x80u8), Just(0x03u8)];
        (0u16..9, proptest::option::of(value))
    }

    fn apply(u: &mut Uart, (offset, value): (u16, Option<u8>)) -> Option<u8> {
        match value {
            Some(v) => {
                u.write(offset, &[v]);
                None
            }
            None => Some(rd(u, offset)),
        }
    }

    proptest::proptest! {
        /// Drive a UART, save it (through JSON), rebuild it on another console, then give
        /// both the same accesses: same reads, same bytes out.
        #[test]
        fn rebuilt_uart_behaves_like_the_original(
            before in proptest::collection::vec(access(), 0..80),
            after in proptest::collection::vec(access(), 1..80),
        ) {
            let (mut original, out) = uart();
            for &a in &before {
                apply(&mut original, a);
            }
            let json = serde_json::to_string(&original.state()).unwrap();
            let state: UartState = serde_json::from_str(&json).unwrap();
            let copy = Console::capture();
            let mut rebuilt = Uart::from_state(&state, copy.clone()).unwrap();
            let sent_before = out.captured().len();
            for &a in &after {
                proptest::prop_assert_eq!(apply(&mut rebuilt, a), apply(&mut original, a), "{:?}", a);
            }
            proptest::prop_assert_eq!(copy.captured(), out.captured()[sent_before..].to_vec());
        }
    }

    #[test]
    fn corrupt_states_are_refused() {
        let (u, _c) = uart();
        let good = u.state();
        let bad = [
            UartState {
                in_buffer: vec![0; 65],
                line_status: 0x61,
                ..good.clone()
            },
            UartState {
                interrupt_enable: 0x10,
                ..good.clone()
            },
            UartState {
                interrupt_identification: 0x00,
                ..good.clone()
            },
            UartState {
                interrupt_identification: 0x03,
                ..good.clone()
            },
            UartState {
                line_status: 0x61,
                ..good.clone()
            },
            UartState {
                in_buffer: vec![1],
                ..good.clone()
            },
            UartState {
                modem_status: 0,
                ..good.clone()
            },
            UartState {
                version: 2,
                ..good.clone()
            },
        ];
        for s in bad {
            assert!(Uart::from_state(&s, Console::capture()).is_err(), "{s:?}");
        }
        // Received bytes survive: the rebuilt UART hands them to the guest.
        let with_input = UartState {
            in_buffer: vec![b'o', b'k'],
            line_status: 0x61,
            ..good
        };
        let mut r = Uart::from_state(&with_input, Console::capture()).unwrap();
        assert_eq!(rd(&mut r, reg::LSR) & 1, 1);
        assert_eq!([rd(&mut r, reg::DATA), rd(&mut r, reg::DATA)], *b"ok");
        assert_eq!(rd(&mut r, reg::LSR) & 1, 0);
    }

    #[test]
    fn scratch_and_out_of_range_offsets() {
        let (mut u, _c) = uart();
        u.write(reg::SCR, &[0x5a]);
        assert_eq!(rd(&mut u, reg::SCR), 0x5a);
        let mut wide = [0xffu8; 4];
        u.read(reg::SCR, &mut wide);
        assert_eq!(wide, [0x5a, 0, 0, 0]);
        u.write(reg::DATA, &[]);
        u.write(0x1234, &[1]);
        assert_eq!(rd(&mut u, 0x1234), 0);
    }
}
