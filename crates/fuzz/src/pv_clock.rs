//! `pv_clock`: arbitrary clock page registrations (`PvClockPage::new`) and updates, with
//! the guest scribbling on the page in between.
//!
//! Invariants:
//! - no panic;
//! - registration succeeds exactly when the address is 4 KiB aligned, the length holds a
//!   `PvClock` (32 bytes) and the region is in RAM, and writes nothing; the first version
//!   is the page's version rounded up to even;
//! - an update fails exactly when `tsc_khz` is 0 or above `MAX_TSC_KHZ`, and then writes
//!   nothing; otherwise it writes exactly the 32-byte record (nothing else in RAM), the
//!   record read back is the one returned, its version is the previous one plus 2, and
//!   the guest's formula gives `system_ns` at `tsc` and does not go backwards after it.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::clock::{PvClock, TSC_STABLE};
use pvkit_pv::clock::MAX_TSC_KHZ;
use pvkit_pv::{ClockSample, PvClockPage, Wire};
use vm_memory::ByteValued;

use crate::mem::{Gpa, Len, Ram, RamSetup};
use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 32;
const RECORD: u64 = core::mem::size_of::<PvClock>() as u64;

/// A TSC frequency.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Khz {
    /// 1 MHz .. ~5.3 GHz, realistic.
    Real(u16),
    /// Any 32-bit value (0 and `MAX_TSC_KHZ` included).
    U32(u32),
    /// Anything.
    Raw(u64),
}
encode_enum!(Khz, 3; Khz::Real(v) => 0 [v], Khz::U32(v) => 1 [v], Khz::Raw(v) => 2 [v]);

impl Khz {
    fn get(self) -> u64 {
        match self {
            Khz::Real(v) => 1_000_000 + u64::from(v) * 65,
            Khz::U32(v) => u64::from(v),
            Khz::Raw(v) => v,
        }
    }
}

/// A sample to publish.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleSpec {
    /// Guest TSC.
    pub tsc: u64,
    /// Host ns.
    pub ns: u64,
    /// Frequency.
    pub khz: Khz,
    /// TSC_STABLE.
    pub stable: bool,
    /// Ticks after `tsc` at which the guest reads the clock.
    pub later: u32,
}
encode_struct!(SampleSpec {
    tsc,
    ns,
    khz,
    stable,
    later
});

/// One step.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockOp {
    /// The guest puts `version` at `gpa` (if `Some`), then registers `[gpa, gpa + len)`.
    Register(Gpa, Len, Option<u32>),
    /// The host publishes a sample.
    Update(SampleSpec),
    /// The guest overwrites the record's first bytes (e.g. the version).
    Scribble(u8, u64),
}
encode_enum!(ClockOp, 3;
    ClockOp::Register(g, l, v) => 0 [g, l, v],
    ClockOp::Update(s) => 1 [s],
    ClockOp::Scribble(o, v) => 2 [o, v],
);

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = RamSetup::arbitrary(&mut u) else {
        return;
    };
    let mut ram = Ram::new(setup.layout, setup.seed);
    let mut page: Option<PvClockPage> = None;
    crate::for_each_op(&mut u, MAX_OPS, |op: ClockOp| match op {
        ClockOp::Register(g, l, version) => {
            let (gpa, len) = (g.get(), l.get());
            if let Some(v) = version {
                ram.guest_write(gpa, &v.to_le_bytes());
            }
            let ok = gpa.is_multiple_of(4096) && len >= RECORD && ram.layout.contains(gpa, len);
            let got = PvClockPage::new(ram.mem, gpa, len);
            assert_eq!(got.is_ok(), ok, "register {gpa:#x}+{len:#x}: {got:?}");
            ram.check(&[], "clock registration writes nothing");
            if let Ok(p) = got {
                let current = u32::from_le_bytes(ram.model(gpa, 4).try_into().unwrap());
                assert_eq!(p.version(), current.wrapping_add(1) & !1);
                assert_eq!(p.gpa(), gpa);
                page = Some(p);
            }
        }
        ClockOp::Update(s) => {
            let Some(p) = page.as_mut() else {
                return;
            };
            let khz = s.khz.get();
            let sample = ClockSample {
                tsc: s.tsc,
                system_ns: s.ns,
                tsc_khz: khz,
                stable: s.stable,
            };
            let before = p.version();
            let got = p.update(ram.mem, sample);
            let gpa = p.gpa();
            if khz == 0 || khz > MAX_TSC_KHZ {
                assert!(got.is_err(), "{khz} kHz accepted");
                assert_eq!(p.version(), before);
                ram.check(&[], "rejected clock update writes nothing");
                return;
            }
            let record = got.expect("valid update");
            ram.check(&[(gpa, gpa + RECORD)], "clock update");
            assert!(
                ram.model(gpa, RECORD as usize) == Wire(record).as_slice(),
                "record in RAM differs from the one returned"
            );
            assert_eq!(record.version, before.wrapping_add(2));
            assert_eq!(record.version % 2, 0);
            assert_eq!(p.version(), record.version);
            assert_eq!(record.flags, if s.stable { TSC_STABLE } else { 0 });
            assert_eq!((record.pad0, record.pad), (0, [0; 2]));
            assert_eq!(record.nanoseconds(s.tsc), s.ns);
            let t = s.tsc.wrapping_add(u64::from(s.later));
            let later = record.nanoseconds(t);
            // Elapsed time from the guest's formula, against the exact value.
            let elapsed = later.wrapping_sub(s.ns);
            let exact = u128::from(s.later) * 1_000_000 / u128::from(khz);
            assert!(
                u128::from(elapsed).abs_diff(exact) <= exact / 1_000_000 + 2,
                "{khz} kHz, {} ticks: {elapsed} ns, exact {exact}",
                s.later
            );
        }
        ClockOp::Scribble(off, v) => {
            if let Some(p) = &page {
                ram.guest_write(p.gpa() + u64::from(off % 32), &v.to_le_bytes());
            }
        }
    });
}

/// Seeds: register and update at a realistic frequency; bad registrations; a zero and an
/// oversized frequency; an odd version left by the guest.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    use crate::mem::{Anchor, Layout};
    let setup = RamSetup {
        layout: Layout::Holes,
        seed: 4,
    };
    let sample = |khz, later| SampleSpec {
        tsc: 1_000_000,
        ns: 77,
        khz,
        stable: true,
        later,
    };
    vec![
        (
            "register_update",
            program(
                &setup,
                &[
                    ClockOp::Register(Gpa::Page(5, 0), Len::Pages(1), Some(7)),
                    ClockOp::Update(sample(Khz::Real(24_554), 2_596_000)),
                    ClockOp::Update(sample(Khz::Real(24_554), u32::MAX)),
                    ClockOp::Scribble(0, 3),
                    ClockOp::Update(sample(Khz::U32(1), 1000)),
                ],
            ),
        ),
        (
            "bad_registrations",
            program(
                &setup,
                &[
                    ClockOp::Register(Gpa::Page(5, 8), Len::Pages(1), None),
                    ClockOp::Register(Gpa::Page(5, 0), Len::Bytes(31), None),
                    ClockOp::Register(Gpa::Near(Anchor::HoleStart, -4096), Len::Pages(2), None),
                    ClockOp::Register(Gpa::Near(Anchor::End, -4096), Len::Pages(1), Some(u32::MAX)),
                    ClockOp::Update(sample(Khz::U32(0), 0)),
                    ClockOp::Update(sample(Khz::Raw(u64::from(u32::MAX) + 1), 0)),
                    ClockOp::Update(sample(Khz::U32(u32::MAX), 1 << 20)),
                ],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::decode_program;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let (_, ops): (RamSetup, Vec<ClockOp>) = decode_program(&bytes, MAX_OPS);
            assert!(ops.len() >= 5, "{name}");
            run(&bytes);
        }
    }
}
