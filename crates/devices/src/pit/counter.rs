//! One 8254 counter, modelled in input-clock ticks.
//!
//! Time is not stored as a running count. The counter remembers how many ticks it has
//! counted (`counted`, plus the span since `run_since` while running) and derives the
//! count and OUT from that on demand, so a read at any time is exact and costs O(1).

/// Input clock ticks elapsed between time 0 and `now_ns`.
pub(super) fn ticks(now_ns: u64) -> u64 {
    let t = u128::from(now_ns) * u128::from(super::PIT_FREQ_HZ) / 1_000_000_000;
    // PIT_FREQ_HZ < 1e9, so t < now_ns and always fits.
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// Normalised operating mode (control word values 6 and 7 alias 2 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Mode 0: interrupt on terminal count.
    TerminalCount,
    /// Mode 1: hardware retriggerable one-shot.
    OneShot,
    /// Mode 2: rate generator.
    RateGenerator,
    /// Mode 3: square wave generator.
    SquareWave,
    /// Mode 4: software triggered strobe.
    SoftwareStrobe,
    /// Mode 5: hardware triggered strobe.
    HardwareStrobe,
}

impl Mode {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b111 {
            0 => Self::TerminalCount,
            1 => Self::OneShot,
            2 | 6 => Self::RateGenerator,
            3 | 7 => Self::SquareWave,
            4 => Self::SoftwareStrobe,
            _ => Self::HardwareStrobe,
        }
    }

    fn is_periodic(self) -> bool {
        matches!(self, Self::RateGenerator | Self::SquareWave)
    }

    /// Modes whose GATE is a trigger rather than an enable.
    fn gate_triggers(self) -> bool {
        matches!(self, Self::OneShot | Self::HardwareStrobe)
    }
}

/// Which bytes of the 16-bit count a port access moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    Word,
}

/// Progress through reading a latched count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LatchRead {
    /// One byte (LSB) left.
    Lsb,
    /// One byte (MSB) left.
    Msb,
    /// Both bytes left, LSB first.
    Word,
}

/// Mode 3 half-period lengths: OUT is high for the first `(n + 1) / 2` ticks.
fn square_high_len(n: u64) -> u64 {
    n.div_ceil(2)
}

/// One of the three counters of an 8254.
#[derive(Debug, Clone)]
pub(super) struct Counter {
    /// Bits 5–0 of the last control word (access, mode, BCD), as read-back reports them.
    control: u8,
    mode: Mode,
    access: Access,
    /// Count register: the last fully written count, 1..=65536.
    cr: u32,
    /// Low byte of a two-byte count write, waiting for its high byte.
    write_lsb: Option<u8>,
    /// Two-byte live reads: the next read returns the MSB.
    read_msb_next: bool,
    latch: Option<(u16, LatchRead)>,
    status_latch: Option<u8>,
    null_count: bool,
    /// A count has been loaded since the last control word.
    armed: bool,
    /// Count shown before a count is loaded (frozen when the control word arrived).
    held: u16,
    /// Count of the current period, 1..=65536.
    reload: u32,
    /// Ticks counted while stopped periods are excluded.
    counted: u64,
    /// Absolute tick at which the current running span started.
    run_since: Option<u64>,
    /// `counted` value at which the current period started.
    origin: u64,
    /// Ticks into the period at `origin` (mode 3 may start a count mid-period).
    offset: u64,
    /// Modes 2/3: `cr` takes over when `counted` reaches `.0`, `.1` ticks into it.
    pending: Option<(u64, u64)>,
    /// Mode 0 stops counting between the two bytes of a count write.
    suspended: bool,
    gate: bool,
}

impl Counter {
    /// A counter as after reset: mode 0, two-byte access, no count loaded.
    pub(super) fn new(gate: bool) -> Self {
        Self {
            control: 0x30,
            mode: Mode::TerminalCount,
            access: Access::Word,
            cr: 65536,
            write_lsb: None,
            read_msb_next: false,
            latch: None,
            status_latch: None,
            null_count: true,
            armed: false,
            held: 0,
            reload: 65536,
            counted: 0,
            run_since: None,
            origin: 0,
            offset: 0,
            pending: None,
            suspended: false,
            gate,
        }
    }

    /// Programs the counter from a control word (access bits not `00`).
    pub(super) fn program(&mut self, control: u8, now: u64) {
        self.held = self.count(now);
        self.control = control & 0x3F;
        self.mode = Mode::from_bits(control >> 1);
        self.access = match (control >> 4) & 0b11 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latch = None;
        self.status_latch = None;
        self.null_count = true;
        self.armed = false;
        self.counted = 0;
        self.run_since = None;
        self.pending = None;
        self.suspended = false;
    }

    /// Counter latch command: freezes the count until it has been read.
    /// Ignored while a previous latch is still unread.
    pub(super) fn latch_count(&mut self, now: u64) {
        if self.latch.is_none() {
            let state = match self.access {
                Access::Lsb => LatchRead::Lsb,
                Access::Msb => LatchRead::Msb,
                Access::Word => LatchRead::Word,
            };
            self.latch = Some((self.count(now), state));
        }
    }

    /// Read-back status latch. Ignored while a previous status is still unread.
    pub(super) fn latch_status(&mut self, now: u64) {
        if self.status_latch.is_none() {
            let out = self.output(now);
            let status = (u8::from(out) << 7) | (u8::from(self.null_count) << 6) | self.control;
            self.status_latch = Some(status);
        }
    }

    /// A read of the counter's port.
    pub(super) fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status_latch.take() {
            return status;
        }
        if let Some((value, state)) = self.latch {
            let [lsb, msb] = value.to_le_bytes();
            return match state {
                LatchRead::Lsb => {
                    self.latch = None;
                    lsb
                }
                LatchRead::Msb => {
                    self.latch = None;
                    msb
                }
                LatchRead::Word => {
                    self.latch = Some((value, LatchRead::Msb));
                    lsb
                }
            };
        }
        let [lsb, msb] = self.count(now).to_le_bytes();
        match self.access {
            Access::Lsb => lsb,
            Access::Msb => msb,
            Access::Word => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lsb
                } else {
                    msb
                }
            }
        }
    }

    /// A write of the counter's port (one byte of a count).
    pub(super) fn write(&mut self, value: u8, now: u64) {
        match self.access {
            Access::Lsb => self.load(u16::from(value), now),
            Access::Msb => self.load(u16::from(value) << 8, now),
            Access::Word => match self.write_lsb.take() {
                Some(lsb) => self.load(u16::from_le_bytes([lsb, value]), now),
                None => {
                    self.write_lsb = Some(value);
                    if self.mode == Mode::TerminalCount && self.armed {
                        // Mode 0: writing the first byte stops the count.
                        self.suspended = true;
                        self.sync_running(now);
                    }
                }
            },
        }
    }

    /// Sets the GATE input.
    pub(super) fn set_gate(&mut self, gate: bool, now: u64) {
        let rising = gate && !self.gate;
        self.gate = gate;
        if rising && self.armed && (self.mode.is_periodic() || self.mode.gate_triggers()) {
            // Rising edge reloads the count register and restarts the period.
            self.restart(now);
        } else {
            self.sync_running(now);
        }
    }

    /// The GATE input.
    pub(super) fn gate(&self) -> bool {
        self.gate
    }

    /// The OUT pin.
    pub(super) fn output(&mut self, now: u64) -> bool {
        if !self.armed {
            // A control word drives OUT low in mode 0 and high in every other mode.
            return self.mode != Mode::TerminalCount;
        }
        if self.mode.is_periodic() && !self.gate {
            return true;
        }
        let p = self.position(now);
        let n = u64::from(self.reload);
        match self.mode {
            Mode::TerminalCount | Mode::OneShot => p >= n,
            Mode::SoftwareStrobe | Mode::HardwareStrobe => p != n,
            Mode::RateGenerator => p % n != n - 1,
            Mode::SquareWave => p % n < square_high_len(n),
        }
    }

    /// The current value of the counting element.
    pub(super) fn count(&mut self, now: u64) -> u16 {
        if !self.armed {
            return self.held;
        }
        let p = self.position(now);
        let n = u64::from(self.reload);
        // A count of 65536 reads as 0: the truncations below are the 16-bit counter.
        match self.mode {
            Mode::RateGenerator => (n - p % n) as u16,
            Mode::SquareWave => {
                let t = p % n;
                let high = square_high_len(n);
                let into_half = if t < high { t } else { t - high };
                // Odd counts load n - 1; both halves then count down by two.
                ((n & !1) - 2 * into_half) as u16
            }
            // One-shot modes keep counting down through 0 and wrap.
            _ => (n.wrapping_sub(p) & 0xFFFF) as u16,
        }
    }

    /// Loads a new count (0 means 65536) into the count register.
    fn load(&mut self, raw: u16, now: u64) {
        self.cr = if raw == 0 { 65536 } else { u32::from(raw) };
        self.null_count = true;
        self.suspended = false;
        if !self.armed || !self.mode.is_periodic() {
            // First count after a control word, or modes 0/1/4/5: start from it now.
            self.restart(now);
        } else if self.gate {
            // Modes 2/3 while counting: the new count takes over at the end of the
            // current period (mode 2) or half-period (mode 3).
            self.schedule_reload(now);
        } else {
            // GATE low: the next rising edge loads it.
            self.sync_running(now);
        }
    }

    fn schedule_reload(&mut self, now: u64) {
        let p = self.position(now);
        let d = self.counted(now);
        let n = u64::from(self.reload);
        let t = p % n;
        let (wait, offset) = match self.mode {
            Mode::SquareWave if t < square_high_len(n) => {
                // Ends the high half; the new count starts in its low half.
                (square_high_len(n) - t, square_high_len(u64::from(self.cr)))
            }
            _ => (n - t, 0),
        };
        self.pending = Some((d.saturating_add(wait), offset));
    }

    /// Starts a new period from the count register at `now`.
    fn restart(&mut self, now: u64) {
        self.reload = self.cr;
        self.armed = true;
        self.suspended = false;
        self.null_count = false;
        self.counted = 0;
        self.run_since = None;
        self.origin = 0;
        self.offset = 0;
        self.pending = None;
        self.sync_running(now);
    }

    /// Starts or stops the tick accounting to match the gate/suspend state.
    fn sync_running(&mut self, now: u64) {
        let enabled = self.gate || self.mode.gate_triggers();
        let run = self.armed && !self.suspended && enabled;
        match (run, self.run_since) {
            (true, None) => self.run_since = Some(now),
            (false, Some(since)) => {
                self.counted = self.counted.saturating_add(now.saturating_sub(since));
                self.run_since = None;
            }
            _ => {}
        }
    }

    /// Ticks counted so far, including the current running span.
    fn counted(&self, now: u64) -> u64 {
        let running = self.run_since.map_or(0, |since| now.saturating_sub(since));
        self.counted.saturating_add(running)
    }

    /// Ticks into the current period, first applying a scheduled reload that is due.
    fn position(&mut self, now: u64) -> u64 {
        let d = self.counted(now);
        if let Some((at, offset)) = self.pending {
            if d >= at {
                self.reload = self.cr;
                self.origin = at;
                self.offset = offset;
                self.pending = None;
                self.null_count = false;
            }
        }
        d.saturating_sub(self.origin).saturating_add(self.offset)
    }
}

impl Counter {
    /// The saved form of this counter.
    pub(super) fn state(&self) -> super::state::CounterState {
        use super::state::{CounterState, LatchNext, LatchState};
        CounterState {
            control: self.control,
            cr: self.cr,
            write_lsb: self.write_lsb,
            read_msb_next: self.read_msb_next,
            latch: self.latch.map(|(value, next)| LatchState {
                value,
                next: match next {
                    LatchRead::Lsb => LatchNext::Lsb,
                    LatchRead::Msb => LatchNext::Msb,
                    LatchRead::Word => LatchNext::Word,
                },
            }),
            status_latch: self.status_latch,
            null_count: self.null_count,
            armed: self.armed,
            held: self.held,
            reload: self.reload,
            counted: self.counted,
            run_since: self.run_since,
            origin: self.origin,
            offset: self.offset,
            pending: self.pending,
            suspended: self.suspended,
            gate: self.gate,
        }
    }

    /// A counter from a state the caller has validated (`cr` and `reload` in
    /// `1..=65536`, access bits of `control` not `00`). Mode and access are derived from
    /// `control`, as [`Counter::program`] sets them.
    pub(super) fn from_state(s: &super::state::CounterState) -> Self {
        use super::state::LatchNext;
        let control = s.control & 0x3F;
        Self {
            control,
            mode: Mode::from_bits(control >> 1),
            access: match (control >> 4) & 0b11 {
                1 => Access::Lsb,
                2 => Access::Msb,
                _ => Access::Word,
            },
            cr: s.cr,
            write_lsb: s.write_lsb,
            read_msb_next: s.read_msb_next,
            latch: s.latch.map(|l| {
                let next = match l.next {
                    LatchNext::Lsb => LatchRead::Lsb,
                    LatchNext::Msb => LatchRead::Msb,
                    LatchNext::Word => LatchRead::Word,
                };
                (l.value, next)
            }),
            status_latch: s.status_latch,
            null_count: s.null_count,
            armed: s.armed,
            held: s.held,
            reload: s.reload,
            counted: s.counted,
            run_since: s.run_since,
            origin: s.origin,
            offset: s.offset,
            pending: s.pending,
            suspended: s.suspended,
            gate: s.gate,
        }
    }
}
