//! The 8254 PIT as a time source: counter 0 in mode 2 with reload 0 (65536), read with the
//! latch command, extended to a monotonic tick count ([`pvkit_guest::pit::PitClock`]).
//!
//! The driver lives in `pvkit-guest` (its port sequence is unit tested there); this module
//! gives the kernel its instance. Port accesses (= exits):
//!
//! | operation | accesses |
//! |---|---|
//! | [`probe`] | 3 writes (program counter 0: `0x34` to `0x43`, `0x00`, `0x00` to `0x40`) + 2 counter reads to see it run (6) + 1 read to start the clock (3): 12 |
//! | one counter read ([`PitClock::ticks`]) | 3: latch (`0x00` to `0x43`), read `0x40` (LSB), read `0x40` (MSB) |
//!
//! The counter wraps every 65536 ticks of 1.193182 MHz (~54.9 ms): sample the clock at
//! least that often.

use pvkit_guest::pit::{Pit, PitClock};
use pvkit_guest::port::Pio;

/// Programs counter 0 and returns a clock over it, or `None` if no PIT answers (a
/// floating bus reads the same value twice).
pub fn probe() -> Option<PitClock<Pio>> {
    // SAFETY: the kernel runs in ring 0 and owns the PIT (nothing else uses counter 0:
    // interrupts are off).
    let mut pit = unsafe { Pit::new() };
    pit.init();
    pit.is_running().then(|| PitClock::new(pit))
}
