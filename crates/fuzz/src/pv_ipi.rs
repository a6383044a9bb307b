//! `pv_ipi` (feature `vmm`): arbitrary `SendIpi` calls against `PvIpi` on VMs of 1–64
//! vCPUs, with a sink that records what would reach KVM (and may refuse some targets, as a
//! software-disabled LAPIC does).
//!
//! Invariants, from an independent oracle of docs/ABI.md "SMP: SendIpi":
//! - no panic;
//! - a call is `EINVAL` exactly when the bitmap is 0, the reserved argument is not 0, the
//!   vector is outside `0x20..=0xff`, or a set bit names a vCPU `base + i` that overflows or
//!   is not below the vCPU count; a refused call sends nothing;
//! - otherwise the sink gets exactly the set bits' vCPUs, in ascending order, each once,
//!   with the vector; the call returns `Ok(n)` with `n` = the deliveries the sink accepted.

use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::call::CallReturn;
use pvkit_abi::Status;
use pvkit_vmm::devices::pv::ipi::{IpiSink, PvIpi};

use crate::{encode_enum, encode_struct};

/// Most calls per input.
pub const MAX_OPS: usize = 64;

/// The VM.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpiSetup {
    /// vCPUs: `1 + vcpus % 64`.
    pub vcpus: u8,
    /// The sink refuses deliveries to vCPUs whose bit is set here.
    pub refuse: u64,
}
encode_struct!(IpiSetup { vcpus, refuse });

/// A `SendIpi` call.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiOp {
    /// Any arguments.
    Raw(u64, u64, u64, u64),
    /// A plausible call: bitmap, vector byte, small base.
    Plausible(u64, u8, u8),
}
encode_enum!(IpiOp, 2;
    IpiOp::Raw(a, b, c, d) => 0 [a, b, c, d],
    IpiOp::Plausible(a, v, b) => 1 [a, v, b],
);

struct Recorder {
    refuse: u64,
    got: Mutex<Vec<(u32, u8)>>,
}

impl IpiSink for Recorder {
    fn deliver(&self, cpu: u32, vector: u8) -> bool {
        self.got.lock().unwrap().push((cpu, vector));
        cpu >= 64 || self.refuse & (1 << cpu) == 0
    }
}

/// The oracle: the targets of a valid call, or `None`.
fn oracle(vcpus: u32, [bitmap, vector, base, reserved]: [u64; 4]) -> Option<Vec<(u32, u8)>> {
    if bitmap == 0 || reserved != 0 || !(0x20..=0xff).contains(&vector) {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..64u64 {
        if bitmap >> i & 1 == 1 {
            let cpu = base.checked_add(i)?;
            if cpu >= u64::from(vcpus) {
                return None;
            }
            out.push((cpu as u32, vector as u8));
        }
    }
    Some(out)
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = IpiSetup::arbitrary(&mut u) else {
        return;
    };
    let vcpus = 1 + u32::from(setup.vcpus % 64);
    let sink = Arc::new(Recorder {
        refuse: setup.refuse,
        got: Mutex::new(Vec::new()),
    });
    let dev = PvIpi::new(vcpus, sink.clone());
    crate::for_each_op(&mut u, MAX_OPS, |op: IpiOp| {
        let args = match op {
            IpiOp::Raw(a, b, c, d) => [a, b, c, d],
            IpiOp::Plausible(a, v, b) => [a, u64::from(v), u64::from(b % 8), 0],
        };
        let got = dev.send(args);
        let sent = std::mem::take(&mut *sink.got.lock().unwrap());
        match oracle(vcpus, args) {
            None => {
                assert_eq!(got, CallReturn::err(Status::EINVAL), "{args:x?}");
                assert!(sent.is_empty(), "refused call sent {sent:?}");
            }
            Some(want) => {
                assert_eq!(sent, want, "{args:x?} on {vcpus} vCPUs");
                let accepted = want
                    .iter()
                    .filter(|(c, _)| setup.refuse & (1 << c) == 0)
                    .count() as u64;
                assert_eq!(got, CallReturn::ok(accepted), "{args:x?}");
            }
        }
    });
}

/// Seeds: a valid broadcast, a bitmap past the last vCPU, exception vectors, the reserved
/// argument, an overflowing base, a sink that refuses some targets.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    let four = IpiSetup {
        vcpus: 3,
        refuse: 0,
    };
    vec![
        (
            "valid_and_invalid",
            program(
                &four,
                &[
                    IpiOp::Plausible(0b1110, 0xf0, 0),
                    IpiOp::Plausible(0b1_0000, 0xf0, 0),
                    IpiOp::Plausible(0b1, 0x1f, 0),
                    IpiOp::Raw(1, 0xf0, 0, 1),
                    IpiOp::Raw(1, 0x100, 0, 0),
                    IpiOp::Raw(0b11, 0x40, u64::MAX, 0),
                    IpiOp::Raw(0, 0x40, 0, 0),
                ],
            ),
        ),
        (
            "refusing_sink",
            program(
                &IpiSetup {
                    vcpus: 63,
                    refuse: 0xaaaa,
                },
                &[
                    IpiOp::Raw(u64::MAX, 0xff, 0, 0),
                    IpiOp::Plausible(0xff, 0x20, 7),
                ],
            ),
        ),
    ]
}
