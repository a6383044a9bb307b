//! `abi_decode`: every wire decoder and every pure helper of `pvkit-abi`.
//!
//! Invariants:
//! - no decoder panics, for any input;
//! - every `TryFrom` round-trips: `Ok(x)` implies `x as wire == input`, and the error
//!   carries the input back;
//! - `need_notify(new, old, event)` is exactly "event in `(old, new]` modulo 2^32";
//! - for a valid ring size, every slot offset lies inside `ring_bytes`, request slots
//!   before response slots, and slot `i` is `index mod size`;
//! - `parse_abi_note` accepts exactly a `pvkit` name (with or without its NUL), type 1 and an
//!   8-byte descriptor, and returns the descriptor's two little-endian words;
//! - `PvClock::nanoseconds` does not panic; for a scale from `scale_for_khz`, one second of
//!   ticks is one second (±1 µs) and time does not go backwards;
//! - `scale_for_khz(khz)` terminates and does not panic for non-zero `khz`.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::bench::{CaseId, Device, PhaseMark, Variant, Workload};
use pvkit_abi::block::BlockOp;
use pvkit_abi::boot::{BootInfo, MemoryKind, BOOT_INFO_SIZE, MAX_MEMORY_REGIONS, MEMORY_MAP_ADDR};
use pvkit_abi::call::{DeviceClass, Hypercall, UnknownHypercall};
use pvkit_abi::clock::PvClock;
use pvkit_abi::cpuid::Features;
use pvkit_abi::note::parse_abi_note;
use pvkit_abi::ring::{
    is_valid_size, need_notify, request_offset, response_offset, ring_bytes, QueueId, RegionId,
    Transport, HEADER_SIZE,
};
use pvkit_abi::status::{Status, UnknownStatus};
use pvkit_abi::AbiVersion;

use crate::enc::{Enc, Encode};
use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 256;

/// One decoding or arithmetic check.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum AbiOp {
    /// `Hypercall::try_from(u32)`.
    Hypercall(u32),
    /// `Status::try_from(u64)` on any value.
    Status(u64),
    /// `Status::try_from` on a small negative value (hits the errno codes).
    Errno(i8),
    /// `RegionId`, `Transport` from `u64`.
    Region(u64),
    /// `QueueId`, `BlockOp`, `MemoryKind` from `u32`.
    Small(u32),
    /// `CaseId::try_from(u64)`.
    Case(u64),
    /// A `CaseId` from three small parts (hits valid ids).
    CaseParts(u8, u8, u8, u16),
    /// `PhaseMark::try_from(u64)`.
    Phase(u64),
    /// `Device`, `Variant`, `Workload` from `u16`.
    Bench(u16),
    /// `parse_abi_note`.
    Note(NoteInput),
    /// `need_notify`.
    Notify(u32, u32, u32),
    /// Ring offset arithmetic.
    RingMath(RingMath),
    /// `PvClock::nanoseconds` on an arbitrary record.
    Clock(ClockInput),
    /// `PvClock::scale_for_khz` and the record it makes.
    Scale(u64, u64),
    /// `AbiVersion` packing and the compatibility rule; `Features` truncation.
    Version(u64, u64),
    /// `BootInfo::regions` with an arbitrary count.
    BootRegions(u32),
}
encode_enum!(AbiOp, 16;
    AbiOp::Hypercall(v) => 0 [v],
    AbiOp::Status(v) => 1 [v],
    AbiOp::Errno(v) => 2 [v],
    AbiOp::Region(v) => 3 [v],
    AbiOp::Small(v) => 4 [v],
    AbiOp::Case(v) => 5 [v],
    AbiOp::CaseParts(a, b, c, d) => 6 [a, b, c, d],
    AbiOp::Phase(v) => 7 [v],
    AbiOp::Bench(v) => 8 [v],
    AbiOp::Note(n) => 9 [n],
    AbiOp::Notify(a, b, c) => 10 [a, b, c],
    AbiOp::RingMath(r) => 11 [r],
    AbiOp::Clock(c) => 12 [c],
    AbiOp::Scale(k, t) => 13 [k, t],
    AbiOp::Version(a, b) => 14 [a, b],
    AbiOp::BootRegions(n) => 15 [n],
);

/// Raw parts of one ELF note.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct NoteInput {
    /// Name bytes; the first `name_len % 9` are used.
    pub name: [u8; 8],
    /// Name length.
    pub name_len: u8,
    /// Note type.
    pub note_type: u32,
    /// Descriptor bytes; the first `desc_len % 13` are used.
    pub desc: [u8; 12],
    /// Descriptor length.
    pub desc_len: u8,
}
encode_struct!(NoteInput {
    name,
    name_len,
    note_type,
    desc,
    desc_len
});

/// A ring geometry.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct RingMath {
    /// Ring size: `1 << (size_log % 9)` when `pow2`, else `size_raw`.
    pub pow2: bool,
    /// Exponent for a valid size.
    pub size_log: u8,
    /// Any size.
    pub size_raw: u32,
    /// Free-running index.
    pub index: u32,
    /// Request slot size in bytes (`% 4097`).
    pub request_size: u16,
    /// Response slot size in bytes (`% 4097`).
    pub response_size: u16,
}
encode_struct!(RingMath {
    pow2,
    size_log,
    size_raw,
    index,
    request_size,
    response_size
});

/// A clock record and a TSC value.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct ClockInput {
    /// `tsc_timestamp`.
    pub tsc_timestamp: u64,
    /// `system_time`.
    pub system_time: u64,
    /// `tsc_to_system_mul`.
    pub mul: u32,
    /// `tsc_shift`.
    pub shift: i8,
    /// The TSC to convert.
    pub tsc: u64,
}
encode_struct!(ClockInput {
    tsc_timestamp,
    system_time,
    mul,
    shift,
    tsc
});

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    crate::for_each_op(&mut u, MAX_OPS, apply);
}

fn apply(op: AbiOp) {
    match op {
        AbiOp::Hypercall(nr) => match Hypercall::try_from(nr) {
            Ok(h) => {
                assert_eq!(h as u32, nr);
                assert!(Hypercall::ALL.contains(&h));
                assert!(!h.name().is_empty());
                // Every call lies in its class's range.
                assert_eq!(DeviceClass::of_call(nr), Some(h.class()));
            }
            Err(UnknownHypercall(back)) => {
                assert_eq!(back, nr);
                assert!(Hypercall::ALL.iter().all(|&h| h as u32 != nr));
            }
        },
        AbiOp::Status(raw) => status(raw),
        AbiOp::Errno(e) => status(i64::from(e) as u64),
        AbiOp::Region(v) => {
            match RegionId::from_u64(v) {
                Ok(r) => {
                    assert_eq!(r.to_u64(), v);
                    if let RegionId::Queue(q) = r {
                        assert_eq!(QueueId::from_u32(q.to_u32()), Ok(q));
                    }
                }
                Err(back) => assert_eq!(back, v),
            }
            match Transport::try_from(v) {
                Ok(t) => assert_eq!(t as u32 as u64, v),
                Err(back) => assert_eq!(back, v),
            }
        }
        AbiOp::Small(v) => {
            match QueueId::from_u32(v) {
                Ok(q) => {
                    assert_eq!(q.to_u32(), v);
                    assert_eq!(RegionId::from_u64(u64::from(v)), Ok(RegionId::Queue(q)));
                }
                Err(back) => assert_eq!(back, v),
            }
            match BlockOp::try_from(v) {
                Ok(op) => assert_eq!(op as u32, v),
                Err(back) => assert_eq!(back, v),
            }
            match MemoryKind::try_from(v) {
                Ok(k) => assert_eq!(k as u32, v),
                Err(back) => assert_eq!(back, v),
            }
            let _ = pvkit_abi::fault::vector_name(v);
        }
        AbiOp::Case(v) => case(v),
        AbiOp::CaseParts(d, var, w, hi) => {
            case(u64::from(d) | u64::from(var) << 16 | u64::from(w) << 32 | u64::from(hi) << 48)
        }
        AbiOp::Phase(v) => match PhaseMark::try_from(v) {
            Ok(p) => assert_eq!(p as u64, v),
            Err(back) => assert_eq!(back, v),
        },
        AbiOp::Bench(v) => {
            match Device::try_from(v) {
                Ok(x) => assert_eq!(x as u16, v),
                Err(back) => assert_eq!(back, v),
            }
            match Variant::try_from(v) {
                Ok(x) => assert_eq!(x as u16, v),
                Err(back) => assert_eq!(back, v),
            }
            match Workload::try_from(v) {
                Ok(x) => assert_eq!(x as u16, v),
                Err(back) => assert_eq!(back, v),
            }
        }
        AbiOp::Note(n) => note(&n),
        AbiOp::Notify(new, old, event) => {
            // Model: `event` lies in (old, new] walking forward from `old`.
            let dist_event = event.wrapping_sub(old);
            let dist_new = new.wrapping_sub(old);
            let model = dist_event != 0 && dist_event <= dist_new;
            assert_eq!(need_notify(new, old, event), model, "{new} {old} {event}");
        }
        AbiOp::RingMath(r) => ring_math(&r),
        AbiOp::Clock(c) => clock(&c),
        AbiOp::Scale(khz, ticks) => scale(khz, ticks),
        AbiOp::Version(a, b) => {
            let (va, vb) = (AbiVersion::from_u64(a), AbiVersion::from_u64(b));
            assert_eq!(va.to_u64(), a);
            // Same major, any minor: feature bits are the gate within a major.
            assert_eq!(va.host_accepts(vb), va.major == vb.major);
            let f = Features::from_bits_truncate(a);
            assert_eq!(f.bits() & !Features::all().bits(), 0);
        }
        AbiOp::BootRegions(n) => {
            let info = BootInfo {
                magic: pvkit_abi::boot::BOOT_MAGIC,
                size: BOOT_INFO_SIZE,
                reserved0: 0,
                abi_version: 0,
                features: 0,
                mem_size: 0,
                cmdline_addr: 0,
                cmdline_len: 0,
                tsc_khz: 0,
                memory_map_addr: MEMORY_MAP_ADDR,
                memory_map_len: n,
                reserved1: 0,
            };
            let want = (n as usize <= MAX_MEMORY_REGIONS).then_some((MEMORY_MAP_ADDR, n as usize));
            assert_eq!(info.memory_map_range(), want);
        }
    }
}

fn status(raw: u64) {
    match Status::try_from(raw) {
        Ok(s) => {
            assert_eq!(s.to_raw(), raw);
            assert_eq!(s.is_ok(), raw == 0);
            assert!(!s.name().is_empty());
            // Every status is zero or a negative errno.
            assert!((raw as i64) <= 0 && (raw as i64) > -4096);
        }
        Err(UnknownStatus(back)) => assert_eq!(back, raw),
    }
}

fn case(v: u64) {
    match CaseId::try_from(v) {
        Ok(c) => assert_eq!(c.to_u64(), v),
        Err(e) => assert_eq!(e.0, v),
    }
}

fn note(n: &NoteInput) {
    let name = &n.name[..usize::from(n.name_len % 9)];
    let desc = &n.desc[..usize::from(n.desc_len % 13)];
    let got = parse_abi_note(name, n.note_type, desc);
    let name_ok = name == b"pvkit" || name == b"pvkit\0";
    let expect = (name_ok && n.note_type == 1 && desc.len() == 8).then(|| AbiVersion {
        major: u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]),
        minor: u32::from_le_bytes([desc[4], desc[5], desc[6], desc[7]]),
    });
    assert_eq!(got, expect, "{n:?}");
}

fn ring_math(r: &RingMath) {
    let size = if r.pow2 {
        1u32 << (r.size_log % 9)
    } else {
        r.size_raw
    };
    let req = usize::from(r.request_size % 4097);
    let rsp = usize::from(r.response_size % 4097);
    let bytes = ring_bytes(size, req, rsp);
    if !is_valid_size(size) {
        assert_eq!(bytes, None, "size {size}");
        // The slot offset helpers are meaningless for invalid sizes but must not panic
        // (FINDINGS.md F-3, fixed).
        let _ = request_offset(size, r.index, req);
        let _ = response_offset(size, r.index, req, rsp);
        return;
    }
    let bytes = bytes.expect("valid size has a ring size");
    let n = size as usize;
    assert_eq!(bytes, HEADER_SIZE + n * (req + rsp));
    let slot = (r.index % size) as usize;
    let q = request_offset(size, r.index, req);
    let p = response_offset(size, r.index, req, rsp);
    assert_eq!(q, HEADER_SIZE + slot * req);
    assert_eq!(p, HEADER_SIZE + n * req + slot * rsp);
    assert!(q >= HEADER_SIZE && q + req <= HEADER_SIZE + n * req);
    assert!(p >= HEADER_SIZE + n * req && p + rsp <= bytes);
}

fn clock(c: &ClockInput) {
    let record = PvClock {
        version: 0,
        pad0: 0,
        tsc_timestamp: c.tsc_timestamp,
        system_time: c.system_time,
        tsc_to_system_mul: c.mul,
        // Any shift, including -128 and magnitudes >= 64 (FINDINGS.md F-2, fixed).
        tsc_shift: c.shift,
        flags: 0,
        pad: [0; 2],
    };
    // Must not panic for any record: the guest computes this from a page it does not own.
    let ns = record.nanoseconds(c.tsc);
    if c.tsc == c.tsc_timestamp {
        assert_eq!(ns, c.system_time);
    }
}

fn scale(khz: u64, ticks: u64) {
    // Any input must return (FINDINGS.md F-1, fixed); only 1..=u32::MAX kHz is meaningful.
    let (mul, shift) = PvClock::scale_for_khz(khz);
    if khz == 0 || khz > u64::from(u32::MAX) {
        // Beyond what the host ever passes (`pvkit_pv::clock::MAX_TSC_KHZ`); only "returns".
        return;
    }
    let c = PvClock {
        tsc_to_system_mul: mul,
        tsc_shift: shift,
        ..PvClock::default()
    };
    // One second of ticks is one second.
    let ns = c.nanoseconds(khz * 1000);
    assert!(
        ns.abs_diff(1_000_000_000) <= 1_000,
        "{khz} kHz: mul {mul} shift {shift}: one second = {ns} ns"
    );
    // Monotonic and proportional over deltas below 2^40 ticks.
    let t1 = ticks % (1 << 40);
    let t2 = t1 + (ticks >> 40);
    let (n1, n2) = (c.nanoseconds(t1), c.nanoseconds(t2));
    assert!(
        n1 <= n2,
        "{khz} kHz: time went back: {t1} -> {n1}, {t2} -> {n2}"
    );
    let exact = u128::from(t1) * 1_000_000 / u128::from(khz);
    let err = u128::from(n1).abs_diff(exact);
    assert!(
        err <= exact / 1_000_000 + 2,
        "{khz} kHz: {t1} ticks = {n1} ns, exact {exact}"
    );
}

/// Seeds: one of each operation, on values that decode.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all_valid = vec![
        AbiOp::Hypercall(3),
        AbiOp::Hypercall(12),
        AbiOp::Status(-14i64 as u64),
        AbiOp::Errno(-38),
        AbiOp::Region(2),
        AbiOp::Small(1),
        AbiOp::CaseParts(2, 5, 5, 0),
        AbiOp::Phase(2),
        AbiOp::Bench(3),
    ];
    let note = vec![AbiOp::Note(NoteInput {
        name: *b"pvkit\0\0\0",
        name_len: 6,
        note_type: 1,
        desc: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        desc_len: 8,
    })];
    let ring = vec![
        AbiOp::Notify(5, 4, 5),
        AbiOp::Notify(2, u32::MAX - 1, u32::MAX),
        AbiOp::RingMath(RingMath {
            pow2: true,
            size_log: 8,
            size_raw: 0,
            index: u32::MAX,
            request_size: 152,
            response_size: 24,
        }),
    ];
    let clock = vec![
        AbiOp::Scale(2_596_000, 2_596_000_000),
        AbiOp::Scale(1, 1000),
        AbiOp::Clock(ClockInput {
            tsc_timestamp: 1000,
            system_time: 5,
            mul: 1 << 31,
            shift: 1,
            tsc: 2000,
        }),
    ];
    let mut out = Vec::new();
    for (name, ops) in [
        ("decoders", all_valid),
        ("note", note),
        ("ring", ring),
        ("clock", clock),
    ] {
        let mut e = Enc::new();
        for op in &ops {
            op.encode(&mut e);
        }
        out.push((name, e.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let mut u = Unstructured::new(&bytes);
            let mut n = 0;
            crate::for_each_op(&mut u, MAX_OPS, |_: AbiOp| n += 1);
            assert!(n > 0, "{name}");
            run(&bytes);
        }
    }
}
