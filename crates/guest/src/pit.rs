//! An Intel 8254 PIT driver used as a time source: counter 0 free-running in mode 2, read
//! with the counter latch command, extended to a monotonic tick count by [`PitClock`].
//!
//! # Port accesses (each one VM exit on a VMM)
//!
//! | operation | accesses |
//! |---|---|
//! | [`Pit::init`] | 3 writes: control `0x34` to `0x43` (counter 0, LSB then MSB, mode 2, binary), then `0x00`, `0x00` to `0x40` (reload 0 = 65536) |
//! | [`Pit::read_counter`] | 3: write `0x00` to `0x43` (latch counter 0), read `0x40` (LSB), read `0x40` (MSB) |
//! | [`PitClock::new`], [`PitClock::ticks`] | one [`Pit::read_counter`] each (3) |
//!
//! The counter runs at [`PIT_HZ`] (1.193182 MHz) and wraps every 65536 ticks (~54.9 ms):
//! [`PitClock`] must be sampled at least that often, or whole periods are lost (it cannot
//! tell).

use crate::port::PortIo;

/// The PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Counter 0 data port.
pub const COUNTER0: u16 = 0x40;
/// Mode/command port.
pub const CONTROL: u16 = 0x43;
/// Control word: counter 0, access LSB then MSB, mode 2 (rate generator), binary.
pub const CW_COUNTER0_MODE2: u8 = 0x34;
/// Control word: latch counter 0.
pub const CW_LATCH0: u8 = 0x00;
/// Ticks per wrap of the 16-bit counter with reload 0.
pub const PERIOD_TICKS: u64 = 65536;

/// Nanoseconds in `ticks` PIT ticks (exact up to rounding down).
pub const fn ticks_to_ns(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000_000 / PIT_HZ as u128) as u64
}

/// PIT ticks in `ns` nanoseconds (rounded down).
pub const fn ns_to_ticks(ns: u64) -> u64 {
    (ns as u128 * PIT_HZ as u128 / 1_000_000_000) as u64
}

/// The 8254 PIT, counter 0.
#[derive(Debug)]
pub struct Pit<P: PortIo> {
    io: P,
}

#[cfg(target_arch = "x86_64")]
impl Pit<crate::port::Pio> {
    /// The PIT at its standard ports, with real port I/O.
    ///
    /// # Safety
    ///
    /// As [`crate::port::Pio::new`]: the caller may access ports `0x40..=0x43` and owns the
    /// PIT's counter 0.
    pub const unsafe fn new() -> Self {
        // SAFETY: forwarded to the caller's contract.
        Self::with_io(unsafe { crate::port::Pio::new() })
    }
}

impl<P: PortIo> Pit<P> {
    /// The PIT driven through `io`.
    pub const fn with_io(io: P) -> Self {
        Pit { io }
    }

    /// The port-I/O backend.
    pub fn io(&self) -> &P {
        &self.io
    }

    /// Programs counter 0 as a free-running down-counter: mode 2, reload 0 (65536).
    /// 3 port writes.
    pub fn init(&mut self) {
        self.io.write_u8(CONTROL, CW_COUNTER0_MODE2);
        self.io.write_u8(COUNTER0, 0);
        self.io.write_u8(COUNTER0, 0);
    }

    /// Latches and reads counter 0: 3 port accesses. The counter counts down; 0 reads as
    /// the reload value (65536) in mode 2 only at the reload instant.
    #[inline]
    pub fn read_counter(&mut self) -> u16 {
        self.io.write_u8(CONTROL, CW_LATCH0);
        let lo = self.io.read_u8(COUNTER0);
        let hi = self.io.read_u8(COUNTER0);
        u16::from_le_bytes([lo, hi])
    }

    /// Whether a running PIT answers: two reads differ (a floating bus reads `0xFFFF`
    /// twice; a running counter moves by at least one tick, 838 ns, between two reads,
    /// which take longer than that even on hardware). 6 accesses.
    pub fn is_running(&mut self) -> bool {
        let a = self.read_counter();
        let b = self.read_counter();
        a != b
    }
}

/// A monotonic tick count built from the 16-bit down-counter: each sample adds the ticks
/// elapsed since the previous one (modulo 65536).
#[derive(Debug)]
pub struct PitClock<P: PortIo> {
    pit: Pit<P>,
    last: u16,
    ticks: u64,
}

impl<P: PortIo> PitClock<P> {
    /// Starts counting from now (one counter read). The PIT must already run
    /// ([`Pit::init`]).
    pub fn new(mut pit: Pit<P>) -> Self {
        let last = pit.read_counter();
        PitClock {
            pit,
            last,
            ticks: 0,
        }
    }

    /// Ticks since [`PitClock::new`] (one counter read). Call at least every ~54.9 ms.
    #[inline]
    pub fn ticks(&mut self) -> u64 {
        let now = self.pit.read_counter();
        self.ticks += u64::from(self.last.wrapping_sub(now));
        self.last = now;
        self.ticks
    }

    /// Nanoseconds since [`PitClock::new`] (one counter read).
    pub fn nanoseconds(&mut self) -> u64 {
        ticks_to_ns(self.ticks())
    }

    /// Spins until at least `ns` nanoseconds have passed since `start_ticks` (a value of
    /// [`PitClock::ticks`]); returns the tick count reached. Each iteration is one read.
    pub fn wait_until(&mut self, start_ticks: u64, ns: u64) -> u64 {
        let target = start_ticks + ns_to_ticks(ns);
        loop {
            let t = self.ticks();
            if t >= target {
                return t;
            }
        }
    }

    /// The underlying PIT.
    pub fn pit(&mut self) -> &mut Pit<P> {
        &mut self.pit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::fake::{Access, Recorder};

    /// A recorder whose counter reads return the little-endian bytes of `values`.
    fn counting(values: &[u16]) -> Recorder {
        let mut io = Recorder::default();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        io.reads.insert(COUNTER0, bytes);
        io
    }

    #[test]
    fn init_is_three_writes_and_a_read_is_latch_lo_hi() {
        let mut pit = Pit::with_io(counting(&[0x1234]));
        pit.init();
        assert_eq!(pit.read_counter(), 0x1234);
        assert_eq!(
            pit.io().log,
            [
                Access::Write(CONTROL, 0x34),
                Access::Write(COUNTER0, 0),
                Access::Write(COUNTER0, 0),
                Access::Write(CONTROL, 0x00),
                Access::Read(COUNTER0, 0x34),
                Access::Read(COUNTER0, 0x12),
            ]
        );
    }

    #[test]
    fn the_clock_extends_the_counter_across_wraps() {
        // Down-counter: 1000 → 10 (990 ticks) → wraps to 65000 (546 ticks) → 0 → 65535.
        let pit = Pit::with_io(counting(&[1000, 10, 65000, 0, 65535, 65535]));
        let mut clock = PitClock::new(pit);
        assert_eq!(clock.ticks(), 990);
        assert_eq!(clock.ticks(), 990 + 546);
        assert_eq!(clock.ticks(), 990 + 546 + 65000);
        assert_eq!(clock.ticks(), 990 + 546 + 65000 + 1);
        assert_eq!(clock.ticks(), 990 + 546 + 65000 + 1, "no time, no ticks");
        assert_eq!(clock.pit().io().log.len(), 6 * 3);
    }

    #[test]
    fn a_floating_bus_is_not_a_running_pit() {
        let mut absent = Pit::with_io(Recorder::default());
        assert!(!absent.is_running());
        let mut present = Pit::with_io(counting(&[500, 480]));
        assert!(present.is_running());
    }

    #[test]
    fn conversions() {
        assert_eq!(ticks_to_ns(PIT_HZ), 1_000_000_000);
        assert_eq!(ns_to_ticks(1_000_000_000), PIT_HZ);
        assert_eq!(ticks_to_ns(PERIOD_TICKS), 54_925_401);
    }

    #[test]
    fn wait_until_polls_until_the_target() {
        // 20 µs ≈ 23 ticks: 100 → 90 → 70 → 60.
        let pit = Pit::with_io(counting(&[100, 90, 70, 60]));
        let mut clock = PitClock::new(pit);
        assert_eq!(clock.wait_until(0, 20_000), 30);
    }
}
