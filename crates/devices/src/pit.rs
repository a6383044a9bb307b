//! Intel 8254 programmable interval timer on ports `0x40..=0x43`, plus the counter 2
//! GATE/OUT bits of system control port B (`0x61`).
//!
//! [`Pit`] is pure: every access takes the current time in nanoseconds, so the VMM passes
//! a monotonic clock and tests pass a fake one. Counting starts when a count is fully
//! written, at the time of that write, and each counter derives its value from the input
//! clock ticks ([`PIT_FREQ_HZ`]) elapsed since then; nothing needs to be ticked.
//!
//! # Fidelity
//!
//! * Control word: counter select 0–2, access mode (latch / LSB / MSB / LSB then MSB),
//!   mode 0–5 (6 and 7 alias 2 and 3), BCD. The BCD flag is stored and reported by
//!   read-back, but counting is always binary.
//! * Counting: modes 0 and 4 count down once and wrap through 0xFFFF; mode 2 counts
//!   `n..=1` and reloads; mode 3 counts down by two, with odd counts spending one more
//!   tick in the high half, as on the 8254. Modes 1 and 5 count like modes 0 and 4, as
//!   if their GATE had been triggered by the count write. A count of 0 means 65536.
//!   The one-tick delay between writing a count and the counter loading it is not
//!   modelled.
//! * Rewriting the count: modes 0, 1, 4 and 5 restart from the new count (mode 0 stops
//!   between the two bytes of a two-byte write); modes 2 and 3 keep the current period
//!   (mode 3: half-period) and reload the new count at its end.
//! * Reading: counter latch command (a second latch is ignored until the first is read),
//!   read-back command with count and/or status latch, independent LSB/MSB flip-flops
//!   for reads and writes. Reading the control port returns `0xFF`.
//! * GATE: counters 0 and 1 are always gated on. Counter 2's GATE is bit 0 of port
//!   `0x61`; low GATE stops modes 0, 2, 3 and 4 (forcing OUT high in 2 and 3), and a
//!   rising edge restarts modes 1, 2, 3 and 5 from the count register. Port `0x61` reads
//!   return GATE 2 (bit 0), the speaker data bit (bit 1), a refresh toggle flipping
//!   every ~15 µs (bit 4) and OUT 2 (bit 5); the NMI-related bits read 0.
//!
//! Unknown ports read `0xFF` and ignore writes.

mod counter;
mod state;
#[cfg(test)]
mod tests;

use counter::{ticks, Counter};
pub use state::{CounterState, LatchNext, LatchState, PitState};

/// Input clock of the 8254, in Hz.
pub const PIT_FREQ_HZ: u64 = 1_193_182;
/// Port of counter 0 (wired to IRQ 0).
pub const PIT_PORT_COUNTER0: u16 = 0x40;
/// Port of counter 1 (historically DRAM refresh).
pub const PIT_PORT_COUNTER1: u16 = 0x41;
/// Port of counter 2 (PC speaker, gated by port `0x61`).
pub const PIT_PORT_COUNTER2: u16 = 0x42;
/// Control word port (write only).
pub const PIT_PORT_CONTROL: u16 = 0x43;
/// System control port B: counter 2 GATE and speaker enable, OUT 2 status.
pub const PIT_PORT_B: u16 = 0x61;
/// The ISA interrupt line driven by counter 0's OUT.
pub const PIT_IRQ: u32 = 0;

/// Port B bit: counter 2 GATE.
const PORT_B_GATE2: u8 = 0x01;
/// Port B bit: speaker data enable.
const PORT_B_SPEAKER: u8 = 0x02;
/// Port B bit: refresh request toggle.
const PORT_B_REFRESH: u8 = 0x10;
/// Port B bit: counter 2 OUT.
const PORT_B_OUT2: u8 = 0x20;
/// Input clock ticks per refresh toggle (~15.09 µs).
const REFRESH_TICKS: u64 = 18;

/// An Intel 8254 PIT. See the [module documentation](self) for what is modelled.
#[derive(Debug, Clone)]
pub struct Pit {
    counters: [Counter; 3],
    speaker: bool,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// A PIT after reset: no counts loaded, counter 2 GATE low.
    pub fn new() -> Self {
        Self {
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            speaker: false,
        }
    }

    /// Handles a guest byte read of `port` at time `now_ns`.
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        let now = ticks(now_ns);
        match port {
            PIT_PORT_COUNTER0..=PIT_PORT_COUNTER2 => {
                self.counter_for_port(port).map_or(0xFF, |c| c.read(now))
            }
            PIT_PORT_B => {
                let refresh = (now / REFRESH_TICKS) & 1 == 1;
                let [.., c2] = &mut self.counters;
                let mut value = 0;
                if c2.gate() {
                    value |= PORT_B_GATE2;
                }
                if self.speaker {
                    value |= PORT_B_SPEAKER;
                }
                if refresh {
                    value |= PORT_B_REFRESH;
                }
                if c2.output(now) {
                    value |= PORT_B_OUT2;
                }
                value
            }
            _ => 0xFF,
        }
    }

    /// Handles a guest byte write of `value` to `port` at time `now_ns`.
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        let now = ticks(now_ns);
        match port {
            PIT_PORT_COUNTER0..=PIT_PORT_COUNTER2 => {
                if let Some(c) = self.counter_for_port(port) {
                    c.write(value, now);
                }
            }
            PIT_PORT_CONTROL => self.control_word(value, now),
            PIT_PORT_B => {
                self.speaker = value & PORT_B_SPEAKER != 0;
                let [.., c2] = &mut self.counters;
                c2.set_gate(value & PORT_B_GATE2 != 0, now);
            }
            _ => {}
        }
    }

    /// The OUT pin of `channel` (0–2) at `now_ns`, or `None` for another channel.
    ///
    /// Counter 0's OUT drives IRQ 0: the VMM can raise the interrupt on its rising edge.
    pub fn output(&mut self, channel: usize, now_ns: u64) -> Option<bool> {
        let now = ticks(now_ns);
        self.counters.get_mut(channel).map(|c| c.output(now))
    }

    fn counter_for_port(&mut self, port: u16) -> Option<&mut Counter> {
        let index = usize::from(port.checked_sub(PIT_PORT_COUNTER0)?);
        self.counters.get_mut(index)
    }

    fn control_word(&mut self, value: u8, now: u64) {
        let select = usize::from(value >> 6);
        if select == 3 {
            // Read-back: bit 5 = !COUNT, bit 4 = !STATUS, bits 3..1 = counters 2..0.
            let latch_count = value & 0x20 == 0;
            let latch_status = value & 0x10 == 0;
            for (i, c) in self.counters.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                // Status first: it reports the state at the moment of the command.
                if latch_status {
                    c.latch_status(now);
                }
                if latch_count {
                    c.latch_count(now);
                }
            }
            return;
        }
        let Some(c) = self.counters.get_mut(select) else {
            return;
        };
        if value & 0x30 == 0 {
            c.latch_count(now);
        } else {
            c.program(value, now);
        }
    }
}
