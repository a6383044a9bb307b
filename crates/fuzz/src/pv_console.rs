//! `pv_console`: arbitrary `(addr, len)` console writes (`console::write`, which is what the
//! VMM's `ConsoleWrite` hypercall calls) and ring requests (`console::handle_request`, what
//! the VMM's console ring calls) into a `Vec` sink, and into a sink that fails after a
//! chosen number of bytes.
//!
//! Invariants:
//! - no panic;
//! - `len > MAX_WRITE` is `E2BIG`, a range not entirely in RAM is `EFAULT` (for `len == 0`:
//!   an address neither in RAM nor one past its end), and in both cases the sink receives nothing;
//! - otherwise the result is `Ok(len)` and the sink received exactly the guest bytes;
//! - a sink failing after `k` bytes makes every write longer than `k` fail with `EIO`;
//! - guest RAM is never written;
//! - a ring response echoes the id and reports the status and the bytes written.

use std::io;

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::console::{ConsoleRequest, MAX_WRITE};
use pvkit_abi::Status;
use pvkit_pv::console;

use crate::encode_enum;
use crate::mem::{Gpa, Len, Ram, RamSetup};

/// Most operations per input.
pub const MAX_OPS: usize = 32;

/// One console write.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleOp {
    /// `write(mem, addr, len, &mut Vec)`.
    Write(Gpa, Len),
    /// `write` into a sink that accepts `limit` bytes, then fails.
    Failing(Gpa, Len, u16),
    /// `handle_request` for a ring request (`len` is 32-bit there).
    Request(Gpa, u32, u32),
}
encode_enum!(ConsoleOp, 3;
    ConsoleOp::Write(a, l) => 0 [a, l],
    ConsoleOp::Failing(a, l, k) => 1 [a, l, k],
    ConsoleOp::Request(a, l, id) => 2 [a, l, id],
);

/// A sink that accepts `limit` bytes in total and then fails, possibly mid-buffer.
struct Limited {
    out: Vec<u8>,
    limit: usize,
}

impl io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit - self.out.len();
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::other("sink full"));
        }
        let n = room.min(buf.len());
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The documented outcome of writing `[addr, addr + len)`.
fn expect(ram: &Ram, addr: u64, len: u64) -> Result<Vec<u8>, Status> {
    if len > MAX_WRITE {
        return Err(Status::E2BIG);
    }
    if !ram.layout.contains(addr, len) {
        return Err(Status::EFAULT);
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    Ok(ram.model(addr, len as usize).to_vec())
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = RamSetup::arbitrary(&mut u) else {
        return;
    };
    let mut ram = Ram::new(setup.layout, setup.seed);
    crate::for_each_op(&mut u, MAX_OPS, |op: ConsoleOp| match op {
        ConsoleOp::Write(a, l) => {
            let (addr, len) = (a.get(), l.get());
            let mut sink = Vec::new();
            let got = console::write(ram.mem, addr, len, &mut sink);
            match expect(&ram, addr, len) {
                Ok(bytes) => {
                    assert_eq!(got, Ok(len as usize), "{addr:#x}+{len:#x}");
                    assert!(sink == bytes, "sink got other bytes than the guest's");
                }
                Err(s) => {
                    assert_eq!(got, Err(s), "{addr:#x}+{len:#x}");
                    assert!(sink.is_empty(), "rejected write reached the sink");
                }
            }
        }
        ConsoleOp::Failing(a, l, limit) => {
            let (addr, len) = (a.get(), l.get());
            let mut sink = Limited {
                out: Vec::new(),
                limit: usize::from(limit),
            };
            let got = console::write(ram.mem, addr, len, &mut sink);
            match expect(&ram, addr, len) {
                Ok(bytes) if bytes.len() <= sink.limit => {
                    assert_eq!(got, Ok(len as usize));
                    assert!(sink.out == bytes);
                }
                Ok(bytes) => {
                    assert_eq!(got, Err(Status::EIO), "sink failed");
                    assert!(bytes.starts_with(&sink.out), "prefix of the guest bytes");
                }
                Err(s) => {
                    assert_eq!(got, Err(s));
                    assert!(sink.out.is_empty());
                }
            }
        }
        ConsoleOp::Request(a, len, id) => {
            let addr = a.get();
            let req = ConsoleRequest { addr, len, id };
            let mut sink = Vec::new();
            let rsp = console::handle_request(ram.mem, &req, &mut sink);
            assert_eq!(rsp.id, id);
            match expect(&ram, addr, u64::from(len)) {
                Ok(bytes) => {
                    assert_eq!((rsp.status, rsp.written), (0, len));
                    assert!(sink == bytes);
                }
                Err(s) => {
                    assert_eq!((rsp.status, rsp.written), (s as i64, 0));
                    assert!(sink.is_empty());
                }
            }
        }
    });
    // Console writes only read guest memory; one comparison at the end suffices.
    ram.check(&[], "console writes");
}

/// Seeds: a short write, a 64 KiB write crossing chunks, a write across adjacent regions,
/// one into the hole, a failing sink, ring requests.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    use crate::mem::{Anchor, Layout};
    let flat = RamSetup {
        layout: Layout::Flat,
        seed: 0,
    };
    let holes = RamSetup {
        layout: Layout::Holes,
        seed: 9,
    };
    vec![
        (
            "hello",
            program(
                &flat,
                &[
                    ConsoleOp::Write(Gpa::Page(1, 0x234), Len::Bytes(13)),
                    ConsoleOp::Write(Gpa::Page(2, 1), Len::Bytes(u16::MAX)),
                    ConsoleOp::Write(Gpa::Raw(u64::MAX), Len::Bytes(0)),
                ],
            ),
        ),
        (
            "holes",
            program(
                &holes,
                &[
                    ConsoleOp::Write(Gpa::Near(Anchor::Adjacent, -100), Len::Bytes(200)),
                    ConsoleOp::Write(Gpa::Near(Anchor::HoleStart, -100), Len::Bytes(200)),
                    ConsoleOp::Write(Gpa::Near(Anchor::End, -4), Len::Bytes(5)),
                ],
            ),
        ),
        (
            "failing_and_ring",
            program(
                &flat,
                &[
                    ConsoleOp::Failing(Gpa::Page(0, 0), Len::Pages(2), 5000),
                    ConsoleOp::Request(Gpa::Page(3, 0), 100, 42),
                    ConsoleOp::Request(Gpa::Raw(u64::MAX - 1), 3, 43),
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
            let (_, ops): (RamSetup, Vec<ConsoleOp>) = decode_program(&bytes, MAX_OPS);
            assert_eq!(ops.len(), 3, "{name}");
            run(&bytes);
        }
    }
}
