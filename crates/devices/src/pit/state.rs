//! Saved state of the 8254: [`PitState`], [`Pit::state`] and [`Pit::from_state`].
//!
//! Times in the state are input-clock ticks on the VM clock (ticks since the VM started),
//! so a PIT restored into a VM whose clock resumed at the saved time keeps counting as if
//! nothing had happened.

use serde::{Deserialize, Serialize};

use super::counter::Counter;
use super::Pit;
use crate::state::{check_version, ensure, StateError};

const DEVICE: &str = "PIT";

/// Saved state of a [`Pit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    /// [`PitState::VERSION`].
    pub version: u32,
    /// Counters 0, 1 and 2.
    pub counters: [CounterState; 3],
    /// Port B speaker data enable bit.
    pub speaker: bool,
}

impl PitState {
    /// The version of this structure.
    pub const VERSION: u32 = 1;
}

/// Which byte of a latched count the next read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LatchNext {
    /// Only the LSB is left.
    Lsb,
    /// Only the MSB is left.
    Msb,
    /// Both bytes are left, LSB first.
    Word,
}

/// A latched count waiting to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatchState {
    /// The latched count.
    pub value: u16,
    /// What the next reads return.
    pub next: LatchNext,
}

/// Saved state of one 8254 counter. Times are input-clock ticks on the VM clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    /// Bits 5–0 of the last control word (access, mode, BCD); access is never `00`.
    pub control: u8,
    /// Count register, 1..=65536.
    pub cr: u32,
    /// LSB of a two-byte count write waiting for its MSB.
    pub write_lsb: Option<u8>,
    /// Two-byte live reads: the next read returns the MSB.
    pub read_msb_next: bool,
    /// Latched count not read yet.
    pub latch: Option<LatchState>,
    /// Latched read-back status not read yet.
    pub status_latch: Option<u8>,
    /// Status NULL COUNT bit.
    pub null_count: bool,
    /// A count has been loaded since the last control word.
    pub armed: bool,
    /// Count shown before a count is loaded.
    pub held: u16,
    /// Count of the current period, 1..=65536.
    pub reload: u32,
    /// Ticks counted, running span excluded.
    pub counted: u64,
    /// Tick at which the running span started, if counting.
    pub run_since: Option<u64>,
    /// `counted` at the start of the current period.
    pub origin: u64,
    /// Ticks into the period at `origin`.
    pub offset: u64,
    /// Modes 2/3: `(counted at which cr takes over, ticks into that period)`.
    pub pending: Option<(u64, u64)>,
    /// Mode 0 stopped between the two bytes of a count write.
    pub suspended: bool,
    /// GATE input.
    pub gate: bool,
}

impl CounterState {
    fn validate(&self) -> Result<(), StateError> {
        ensure(
            DEVICE,
            self.control & !0x3F == 0,
            "control word above bit 5",
        )?;
        ensure(
            DEVICE,
            self.control & 0x30 != 0,
            "control word with a latch access mode",
        )?;
        let count = 1..=65536;
        ensure(
            DEVICE,
            count.contains(&self.cr),
            "count register not in 1..=65536",
        )?;
        ensure(
            DEVICE,
            count.contains(&self.reload),
            "reload not in 1..=65536",
        )?;
        ensure(
            DEVICE,
            self.armed || (self.run_since.is_none() && self.pending.is_none() && !self.suspended),
            "counting without a count loaded",
        )?;
        let mode = (self.control >> 1) & 0b111;
        ensure(
            DEVICE,
            !self.suspended || (mode == 0 && self.write_lsb.is_some()),
            "suspended outside a mode 0 two-byte write",
        )?;
        let periodic = matches!(mode, 2 | 3 | 6 | 7);
        ensure(
            DEVICE,
            self.pending.is_none() || periodic,
            "scheduled reload in a one-shot mode",
        )?;
        ensure(
            DEVICE,
            self.status_latch.is_none_or(|s| s & 0x3F == self.control),
            "status latch does not match the control word",
        )?;
        Ok(())
    }
}

impl Pit {
    /// The state of the PIT, to rebuild it with [`Pit::from_state`].
    pub fn state(&self) -> PitState {
        let [c0, c1, c2] = &self.counters;
        PitState {
            version: PitState::VERSION,
            counters: [c0.state(), c1.state(), c2.state()],
            speaker: self.speaker,
        }
    }

    /// Rebuilds a PIT from a saved state, refusing a state no PIT could have been in.
    /// The VM clock must resume at or after the time the state was saved at (see
    /// [`crate::state`]).
    pub fn from_state(state: &PitState) -> Result<Self, StateError> {
        check_version(DEVICE, state.version, PitState::VERSION)?;
        let [s0, s1, s2] = &state.counters;
        ensure(
            DEVICE,
            s0.gate && s1.gate,
            "counters 0 and 1 are always gated on",
        )?;
        for s in &state.counters {
            s.validate()?;
        }
        Ok(Self {
            counters: [
                Counter::from_state(s0),
                Counter::from_state(s1),
                Counter::from_state(s2),
            ],
            speaker: state.speaker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PIT_PORT_B, PIT_PORT_CONTROL, PIT_PORT_COUNTER0};
    use super::*;
    use proptest::prelude::*;

    /// One guest access, `dt` ns after the previous one.
    #[derive(Debug, Clone)]
    enum Op {
        Write { port: u16, value: u8, dt: u64 },
        Read { port: u16, dt: u64 },
    }

    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![
            (PIT_PORT_COUNTER0..=PIT_PORT_CONTROL),
            Just(PIT_PORT_B),
            Just(0x44u16),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        // Up to ~60 ms between accesses: several periods of short counts, a fraction of
        // a 65536 count.
        let dt = prop_oneof![Just(0u64), 0u64..10_000, 0u64..60_000_000];
        // Control words: any counter, any access/mode, and the latch/read-back commands;
        // count bytes mostly small so that periods end within a sequence.
        let value = prop_oneof![any::<u8>(), 0u8..8];
        prop_oneof![
            (port(), value, dt.clone()).prop_map(|(port, value, dt)| Op::Write { port, value, dt }),
            (port(), dt).prop_map(|(port, dt)| Op::Read { port, dt }),
        ]
    }

    /// Applies `op` at `*now + dt` and returns what the guest sees: the byte read (or
    /// `None` for a write) and the three OUT pins.
    fn apply(pit: &mut Pit, op: &Op, now: &mut u64) -> (Option<u8>, [Option<bool>; 3]) {
        let seen = match *op {
            Op::Write { port, value, dt } => {
                *now += dt;
                pit.write(port, value, *now);
                None
            }
            Op::Read { port, dt } => {
                *now += dt;
                Some(pit.read(port, *now))
            }
        };
        let outs = [0, 1, 2].map(|c| pit.output(c, *now));
        (seen, outs)
    }

    proptest! {
        /// Drive a PIT, save it (through JSON), rebuild it, and drive both with the same
        /// accesses at the same VM times: the rebuilt PIT reads and drives OUT exactly as
        /// the original does.
        #[test]
        fn rebuilt_pit_behaves_like_the_original(
            before in prop::collection::vec(op(), 0..60),
            after in prop::collection::vec(op(), 1..60),
        ) {
            let mut original = Pit::new();
            let mut now = 0;
            for o in &before {
                apply(&mut original, o, &mut now);
            }
            let json = serde_json::to_string(&original.state()).unwrap();
            let state: PitState = serde_json::from_str(&json).unwrap();
            let mut rebuilt = Pit::from_state(&state).unwrap();
            let mut now2 = now;
            for o in &after {
                let want = apply(&mut original, o, &mut now);
                prop_assert_eq!(apply(&mut rebuilt, o, &mut now2), want, "{:?}", o);
            }
        }

        /// Any counter state is refused or yields a PIT that survives any accesses.
        #[test]
        fn arbitrary_states_never_panic(
            control in any::<u8>(),
            cr in prop_oneof![0u32..4, 65530u32..65540, any::<u32>()],
            reload in prop_oneof![0u32..4, 65530u32..65540, any::<u32>()],
            flags in any::<[bool; 6]>(),
            times in any::<[u64; 5]>(),
            small in any::<[u8; 4]>(),
            ops in prop::collection::vec(op(), 0..30),
        ) {
            let c = CounterState {
                control,
                cr,
                write_lsb: flags[0].then_some(small[0]),
                read_msb_next: flags[1],
                latch: flags[2].then_some(LatchState { value: u16::from(small[1]), next: LatchNext::Word }),
                status_latch: flags[3].then_some(small[2]),
                null_count: flags[4],
                armed: flags[5],
                held: u16::from(small[3]),
                reload,
                counted: times[0],
                run_since: flags[5].then_some(times[1]),
                origin: times[2],
                offset: times[3],
                pending: flags[1].then_some((times[4], times[0])),
                suspended: flags[0] && flags[5],
                gate: true,
            };
            let state = PitState { version: PitState::VERSION, counters: [c.clone(), c.clone(), c], speaker: false };
            if let Ok(mut pit) = Pit::from_state(&state) {
                let mut now = times[1] / 2;
                for o in &ops {
                    apply(&mut pit, o, &mut now);
                }
            }
        }
    }

    #[test]
    fn corrupt_states_are_refused() {
        let good = Pit::new().state();
        Pit::from_state(&good).unwrap();
        let with = |f: &dyn Fn(&mut CounterState)| {
            let mut s = good.clone();
            f(&mut s.counters[2]);
            Pit::from_state(&s)
        };
        let bad: [&dyn Fn(&mut CounterState); 8] = [
            &|c| c.cr = 0,
            &|c| c.reload = 65537,
            &|c| c.control = 0x40,
            &|c| c.control = 0x04,
            &|c| c.run_since = Some(5),
            &|c| c.suspended = true,
            &|c| c.status_latch = Some(0x3F),
            &|c| {
                c.armed = true;
                c.pending = Some((1, 0));
            },
        ];
        for (i, f) in bad.iter().enumerate() {
            assert!(
                matches!(with(f), Err(StateError::Invalid { .. })),
                "rule {i} not enforced"
            );
        }
        let mut ungated = good.clone();
        ungated.counters[0].gate = false;
        assert!(Pit::from_state(&ungated).is_err());
        let future = PitState { version: 2, ..good };
        assert!(matches!(
            Pit::from_state(&future),
            Err(StateError::Version { .. })
        ));
    }

    /// A periodic counter saved mid-count continues from where it was on a clock that
    /// resumed at the saved time.
    #[test]
    fn counting_continues_across_a_save() {
        let mut pit = Pit::new();
        // Counter 0, LSB then MSB, mode 2, count 1000, loaded at 0.
        pit.write(PIT_PORT_CONTROL, 0x34, 0);
        pit.write(PIT_PORT_COUNTER0, 0xE8, 0);
        pit.write(PIT_PORT_COUNTER0, 0x03, 0);
        let saved_at = 1_000_000; // 1193 ticks: 193 into the second period.
        let state = pit.state();
        let mut rebuilt = Pit::from_state(&state).unwrap();
        rebuilt.write(PIT_PORT_CONTROL, 0x00, saved_at);
        let lo = rebuilt.read(PIT_PORT_COUNTER0, saved_at);
        let hi = rebuilt.read(PIT_PORT_COUNTER0, saved_at);
        assert_eq!(u16::from_le_bytes([lo, hi]), 1000 - 193);
    }
}
