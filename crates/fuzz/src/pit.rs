//! `pit`: random port reads and writes against the 8254 model, with time that moves
//! forward by small or huge steps or jumps anywhere (including backwards).
//!
//! Invariants:
//! - no panic and no hang, for any port, value and time (every access is O(1));
//! - the device is a pure function of its state and the access: replaying the access on a
//!   clone gives the same result and the same following state (checked by a second read);
//! - unknown ports and the control port read `0xFF`; `output` of a channel above 2 is
//!   `None`;
//! - port `0x61` reads back the GATE 2 and speaker bits last written, and its bits 2, 3, 6
//!   and 7 read 0.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_devices::pit::{
    PIT_PORT_B, PIT_PORT_CONTROL, PIT_PORT_COUNTER0, PIT_PORT_COUNTER1, PIT_PORT_COUNTER2,
};
use pvkit_devices::Pit;

use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 512;

/// A PIT port, or any port.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PitPort {
    /// 0x40.
    C0,
    /// 0x41.
    C1,
    /// 0x42.
    C2,
    /// 0x43.
    Control,
    /// 0x61.
    PortB,
    /// Anything.
    Raw(u16),
}
encode_enum!(PitPort, 6;
    PitPort::C0 => 0 [],
    PitPort::C1 => 1 [],
    PitPort::C2 => 2 [],
    PitPort::Control => 3 [],
    PitPort::PortB => 4 [],
    PitPort::Raw(p) => 5 [p],
);

impl PitPort {
    fn get(self) -> u16 {
        match self {
            PitPort::C0 => PIT_PORT_COUNTER0,
            PitPort::C1 => PIT_PORT_COUNTER1,
            PitPort::C2 => PIT_PORT_COUNTER2,
            PitPort::Control => PIT_PORT_CONTROL,
            PitPort::PortB => PIT_PORT_B,
            PitPort::Raw(p) => p,
        }
    }
}

/// How time moves before an access.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    /// Stays.
    Same,
    /// `+n` input clock ticks (~838 ns each).
    Ticks(u16),
    /// `+n` ns, up to ~4 s.
    Ns(u32),
    /// `+n` ns, any step (saturating at `u64::MAX`).
    Big(u64),
    /// Jumps to an absolute time, possibly backwards.
    At(u64),
}
encode_enum!(Time, 5;
    Time::Same => 0 [],
    Time::Ticks(n) => 1 [n],
    Time::Ns(n) => 2 [n],
    Time::Big(n) => 3 [n],
    Time::At(t) => 4 [t],
);

impl Time {
    fn advance(self, now: u64) -> u64 {
        match self {
            Time::Same => now,
            Time::Ticks(n) => now.saturating_add(u64::from(n) * 838),
            Time::Ns(n) => now.saturating_add(u64::from(n)),
            Time::Big(n) => now.saturating_add(n),
            Time::At(t) => t,
        }
    }
}

/// One access.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PitOp {
    /// `read(port, now)`.
    Read(PitPort, Time),
    /// `write(port, value, now)`.
    Write(PitPort, u8, Time),
    /// A control word for counter `sel % 3`, mode `mode % 8`, access `acc % 4` (0 = latch).
    Program {
        /// Counter.
        sel: u8,
        /// Access mode.
        acc: u8,
        /// Counting mode.
        mode: u8,
        /// Time step.
        t: Time,
    },
    /// A two-byte count for counter `sel % 3`.
    Count(u8, u16, Time),
    /// `output(channel, now)`.
    Output(u8, Time),
}
encode_enum!(PitOp, 5;
    PitOp::Read(p, t) => 0 [p, t],
    PitOp::Write(p, v, t) => 1 [p, v, t],
    PitOp::Program { sel, acc, mode, t } => 2 [sel, acc, mode, t],
    PitOp::Count(s, c, t) => 3 [s, c, t],
    PitOp::Output(c, t) => 4 [c, t],
);

/// Start time.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PitSetup {
    /// Time of the first access, ns.
    pub start: u64,
}
encode_struct!(PitSetup { start });

struct Harness {
    pit: Pit,
    now: u64,
    /// Last value written to port 0x61.
    port_b: u8,
}

impl Harness {
    fn read(&mut self, port: u16) -> u8 {
        let mut twin = self.pit.clone();
        let v = self.pit.read(port, self.now);
        assert_eq!(
            twin.read(port, self.now),
            v,
            "read of {port:#x} is deterministic"
        );
        // Same state afterwards: the next read agrees too.
        assert_eq!(
            twin.read(port, self.now),
            self.pit.clone().read(port, self.now),
            "state after a read of {port:#x} is deterministic"
        );
        match port {
            PIT_PORT_COUNTER0..=PIT_PORT_COUNTER2 => {}
            PIT_PORT_B => {
                assert_eq!(v & 0b1100_1100, 0, "port B reserved bits: {v:#x}");
                assert_eq!(v & 0b11, self.port_b & 0b11, "GATE2/speaker read back");
            }
            _ => assert_eq!(v, 0xFF, "port {port:#x} floats"),
        }
        v
    }

    fn write(&mut self, port: u16, value: u8) {
        self.pit.write(port, value, self.now);
        if port == PIT_PORT_B {
            self.port_b = value;
        }
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = PitSetup::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness {
        pit: Pit::new(),
        now: setup.start,
        port_b: 0,
    };
    crate::for_each_op(&mut u, MAX_OPS, |op: PitOp| match op {
        PitOp::Read(p, t) => {
            h.now = t.advance(h.now);
            h.read(p.get());
        }
        PitOp::Write(p, v, t) => {
            h.now = t.advance(h.now);
            h.write(p.get(), v);
        }
        PitOp::Program { sel, acc, mode, t } => {
            h.now = t.advance(h.now);
            let word = (sel % 3) << 6 | (acc % 4) << 4 | (mode % 8) << 1;
            h.write(PIT_PORT_CONTROL, word);
        }
        PitOp::Count(sel, count, t) => {
            h.now = t.advance(h.now);
            let port = PIT_PORT_COUNTER0 + u16::from(sel % 3);
            let [lo, hi] = count.to_le_bytes();
            h.write(port, lo);
            h.write(port, hi);
        }
        PitOp::Output(ch, t) => {
            h.now = t.advance(h.now);
            let out = h.pit.output(usize::from(ch), h.now);
            assert_eq!(out.is_some(), ch < 3);
        }
    });
}

/// Seeds: mode 2 rate generator on counter 0 with latched reads; mode 3 on counter 2 gated
/// through port 0x61; a read-back command; time jumping backwards.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    let setup = PitSetup { start: 1_000_000 };
    let rate = [
        PitOp::Program {
            sel: 0,
            acc: 3,
            mode: 2,
            t: Time::Same,
        },
        PitOp::Count(0, 1193, Time::Same),
        PitOp::Program {
            sel: 0,
            acc: 0,
            mode: 0,
            t: Time::Ticks(100),
        },
        PitOp::Read(PitPort::C0, Time::Same),
        PitOp::Read(PitPort::C0, Time::Same),
        PitOp::Output(0, Time::Ticks(1100)),
    ];
    let speaker = [
        PitOp::Program {
            sel: 2,
            acc: 3,
            mode: 3,
            t: Time::Same,
        },
        PitOp::Count(2, 1357, Time::Same),
        PitOp::Write(PitPort::PortB, 0x03, Time::Ns(1000)),
        PitOp::Read(PitPort::PortB, Time::Ticks(600)),
        PitOp::Write(PitPort::PortB, 0x00, Time::Ns(1000)),
        PitOp::Read(PitPort::C2, Time::Same),
    ];
    let readback = [
        PitOp::Program {
            sel: 1,
            acc: 1,
            mode: 0,
            t: Time::Same,
        },
        PitOp::Write(PitPort::C1, 50, Time::Same),
        PitOp::Write(PitPort::Control, 0xC2 | 0x04 | 0x08, Time::Ticks(10)),
        PitOp::Read(PitPort::C1, Time::Same),
        PitOp::Read(PitPort::C1, Time::Same),
        PitOp::Read(PitPort::Control, Time::At(5)),
        PitOp::Read(PitPort::C1, Time::Big(u64::MAX)),
    ];
    vec![
        ("rate_generator", program(&setup, &rate)),
        ("speaker_gate", program(&setup, &speaker)),
        ("readback_and_time_travel", program(&setup, &readback)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::decode_program;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let (_, ops): (PitSetup, Vec<PitOp>) = decode_program(&bytes, MAX_OPS);
            assert!(ops.len() >= 6, "{name}");
            run(&bytes);
        }
    }
}
