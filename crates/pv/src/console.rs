//! The PV console backend: guest bytes to a host sink, by hypercall or by ring.
//!
//! [`write()`] serves the `ConsoleWrite` hypercall; [`handle_request`] and [`service_ring`]
//! serve the console ring. Bytes are copied out of guest memory through a fixed 4 KiB stack
//! buffer, so no allocation depends on the guest's length, and the whole range is validated
//! before the first byte reaches the sink.
//!
//! # Byte budget
//!
//! One service moves at most [`SERVICE_BYTE_BUDGET`] bytes: a hypercall carries at most
//! [`MAX_WRITE`] (64 KiB, below the budget), and one [`service_ring`] writes requests in
//! ring order until the next one would take the total past the budget; that request and
//! every later one in the same service are answered `EAGAIN` with `written = 0` and nothing
//! of them is copied (the guest resubmits them; its next kick is a new service). The
//! refused requests cost a slot read and a response write each, so one service is bounded
//! by the budget plus the ring's size.

use pvkit_abi::console::{ConsoleRequest, ConsoleResponse, MAX_WRITE};
use pvkit_abi::Status;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::guest_range::{GuestRange, RangeError};
use crate::ring::{Batch, RingConsumer, RingError};

/// The console ring: [`ConsoleRequest`]s in, [`ConsoleResponse`]s out.
pub type ConsoleRing = RingConsumer<ConsoleRequest, ConsoleResponse>;

/// Bytes copied from guest memory per sink write.
const CHUNK: usize = 4096;

/// The most bytes one console service writes: one [`service_ring`] call (one doorbell,
/// one eventfd wake-up, one poll round). Later requests of that service get `EAGAIN`.
pub const SERVICE_BYTE_BUDGET: u64 = 256 << 10;
const _: () = assert!(MAX_WRITE <= SERVICE_BYTE_BUDGET);

/// Why a console write failed. [`ConsoleError::status`] is what the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// More than [`MAX_WRITE`] bytes (`E2BIG`); split the write.
    #[error("console write of {0} bytes; at most {MAX_WRITE} per call")]
    TooBig(u64),
    /// The buffer is not inside guest RAM (`EFAULT`).
    #[error("console buffer: {0}")]
    Range(#[from] RangeError),
    /// Copying from guest memory failed after validation (`EFAULT`).
    #[error("guest memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
    /// The host sink failed (`EIO`). The bytes before the failing chunk were written.
    #[error("console sink failed after {written} bytes: {source}")]
    Sink {
        /// Bytes the sink accepted before the error.
        written: usize,
        /// The sink's error.
        source: std::io::Error,
    },
}

impl ConsoleError {
    /// The status returned to the guest.
    pub fn status(&self) -> Status {
        match self {
            ConsoleError::TooBig(_) => Status::E2BIG,
            ConsoleError::Range(_) | ConsoleError::Memory(_) => Status::EFAULT,
            ConsoleError::Sink { .. } => Status::EIO,
        }
    }
}

/// Writes the `len` guest bytes at `addr` to `sink` (the `ConsoleWrite` hypercall) and
/// returns `len`.
///
/// Fails with `E2BIG` above [`MAX_WRITE`] and with `EFAULT` unless the whole range is in
/// guest RAM; in both cases nothing is written to the sink. A sink error is `EIO`.
pub fn write<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: u64,
    len: u64,
    sink: &mut dyn std::io::Write,
) -> Result<usize, Status> {
    write_checked(mem, addr, len, sink).map_err(|e| e.status())
}

/// [`write()`] with the detailed error, for logging.
pub fn write_checked<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: u64,
    len: u64,
    sink: &mut dyn std::io::Write,
) -> Result<usize, ConsoleError> {
    if len > MAX_WRITE {
        return Err(ConsoleError::TooBig(len));
    }
    let range = GuestRange::new(mem, addr, len)?;
    let mut buf = [0u8; CHUNK];
    let mut done = 0usize;
    while done < range.len() {
        let n = (range.len() - done).min(CHUNK);
        let chunk = buf.get_mut(..n).unwrap_or(&mut []);
        // `done + n <= len`, and `addr + len` was checked not to wrap.
        let at = GuestAddress(addr.wrapping_add(done as u64));
        mem.read_slice(chunk, at)?;
        sink.write_all(chunk).map_err(|source| ConsoleError::Sink {
            written: done,
            source,
        })?;
        done += n;
    }
    sink.flush().map_err(|source| ConsoleError::Sink {
        written: done,
        source,
    })?;
    Ok(done)
}

/// Serves one console ring request: the response carries the request's `id`, the status
/// and the bytes written (0 on failure).
pub fn handle_request<M: GuestMemory + ?Sized>(
    mem: &M,
    req: &ConsoleRequest,
    sink: &mut dyn std::io::Write,
) -> ConsoleResponse {
    let (status, written) = match write(mem, req.addr, u64::from(req.len), sink) {
        // `written <= MAX_WRITE` fits in u32.
        Ok(n) => (Status::Ok, u32::try_from(n).unwrap_or(u32::MAX)),
        Err(s) => (s, 0),
    };
    ConsoleResponse {
        status: status as i64,
        id: req.id,
        written,
    }
}

/// Services every available request on the console ring (up to the ring's budgets; a
/// request costs the bytes written), writing to `sink`, at most [`SERVICE_BYTE_BUDGET`]
/// bytes in all: a request that would go past that, and every request after it in this
/// service, is answered `EAGAIN` with nothing written.
pub fn service_ring<M: GuestMemory + ?Sized>(
    mem: &M,
    ring: &mut ConsoleRing,
    sink: &mut dyn std::io::Write,
) -> Result<Batch, RingError> {
    let mut left = SERVICE_BYTE_BUDGET;
    ring.poll_metered(mem, |req| {
        let len = u64::from(req.len);
        // Oversized requests (> MAX_WRITE) still get their own E2BIG from `write`.
        if len <= MAX_WRITE && len > left {
            left = 0;
            let rsp = ConsoleResponse {
                status: Status::EAGAIN as i64,
                id: req.id,
                written: 0,
            };
            return (rsp, 0);
        }
        let rsp = handle_request(mem, &req, sink);
        left = left.saturating_sub(u64::from(rsp.written));
        (rsp, u64::from(rsp.written))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::GuestProducer;
    use vm_memory::GuestMemoryMmap;

    const RAM: usize = 1 << 20;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    #[test]
    fn writes_bytes() {
        let m = mem();
        m.write_slice(b"hello, pvkit\n", GuestAddress(0x1234))
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(write(&m, 0x1234, 13, &mut out), Ok(13));
        assert_eq!(out, b"hello, pvkit\n");
        assert_eq!(write(&m, RAM as u64, 0, &mut out), Ok(0));
        // Empty writes follow the range rule too: the hypercall and the ring agree.
        assert_eq!(write(&m, 1 << 40, 0, &mut out), Err(Status::EFAULT));
    }

    #[test]
    fn large_write_crosses_chunks() {
        let m = mem();
        let data: Vec<u8> = (0..MAX_WRITE as usize).map(|i| (i % 251) as u8).collect();
        m.write_slice(&data, GuestAddress(0x1_0001)).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            write(&m, 0x1_0001, MAX_WRITE, &mut out),
            Ok(MAX_WRITE as usize)
        );
        assert_eq!(out, data);
    }

    #[test]
    fn rejections_write_nothing() {
        let m = mem();
        let mut out = Vec::new();
        assert_eq!(write(&m, 0, MAX_WRITE + 1, &mut out), Err(Status::E2BIG));
        assert_eq!(write(&m, 0, u64::MAX, &mut out), Err(Status::E2BIG));
        assert_eq!(write(&m, RAM as u64 - 4, 5, &mut out), Err(Status::EFAULT));
        assert_eq!(write(&m, u64::MAX - 2, 5, &mut out), Err(Status::EFAULT));
        assert!(out.is_empty());
    }

    #[test]
    fn empty_request_outside_ram_is_efault_like_the_hypercall() {
        let m = mem();
        let mut out = Vec::new();
        let req = ConsoleRequest {
            addr: 1 << 40,
            len: 0,
            id: 9,
        };
        let rsp = handle_request(&m, &req, &mut out);
        assert_eq!(
            (rsp.id, rsp.status, rsp.written),
            (9, Status::EFAULT as i64, 0)
        );
    }

    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sink_error_is_eio() {
        let m = mem();
        assert_eq!(write(&m, 0, 10, &mut Broken), Err(Status::EIO));
    }

    #[test]
    fn ring_service_stops_writing_at_the_byte_budget() {
        let m = mem();
        let gpa = 0x2_0000;
        let data: Vec<u8> = (0..MAX_WRITE as usize).map(|i| (i % 251) as u8).collect();
        m.write_slice(&data, GuestAddress(0x4_0000)).unwrap();
        let per = SERVICE_BYTE_BUDGET / MAX_WRITE;
        let mut p = GuestProducer::<ConsoleRequest, ConsoleResponse>::init(&m, gpa, 16, 0).unwrap();
        let mut ring = ConsoleRing::new(&m, gpa, 0x1000).unwrap();
        let full = ConsoleRequest {
            addr: 0x4_0000,
            len: MAX_WRITE as u32,
            id: 0,
        };
        for id in 0..per + 2 {
            p.push(
                &m,
                ConsoleRequest {
                    id: id as u32,
                    ..full
                },
            )
            .unwrap();
        }
        // A small one after the refusal is refused too: ring order is kept.
        p.push(
            &m,
            ConsoleRequest {
                len: 1,
                id: 99,
                ..full
            },
        )
        .unwrap();
        p.publish(&m).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            service_ring(&m, &mut ring, &mut out).unwrap().requests,
            per + 3
        );
        assert_eq!(out.len() as u64, SERVICE_BYTE_BUDGET);
        let rsps = p.take_responses(&m).unwrap();
        let ok = rsps.iter().filter(|r| r.status == 0).count() as u64;
        assert_eq!(ok, per);
        assert!(rsps
            .iter()
            .skip(per as usize)
            .all(|r| r.status == Status::EAGAIN as i64 && r.written == 0));
        // The next service (the guest's next kick) writes again.
        p.push(&m, ConsoleRequest { id: 100, ..full }).unwrap();
        p.publish(&m).unwrap();
        out.clear();
        service_ring(&m, &mut ring, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn ring_adapter() {
        let m = mem();
        let gpa = 0x2_0000;
        m.write_slice(b"abcdef", GuestAddress(0x100)).unwrap();
        let mut p = GuestProducer::<ConsoleRequest, ConsoleResponse>::init(&m, gpa, 8, 0).unwrap();
        let mut ring = ConsoleRing::new(&m, gpa, 0x1000).unwrap();
        p.push(
            &m,
            ConsoleRequest {
                addr: 0x100,
                len: 3,
                id: 1,
            },
        )
        .unwrap();
        p.push(
            &m,
            ConsoleRequest {
                addr: u64::MAX,
                len: 3,
                id: 2,
            },
        )
        .unwrap();
        p.push(
            &m,
            ConsoleRequest {
                addr: 0x103,
                len: 3,
                id: 3,
            },
        )
        .unwrap();
        p.push(
            &m,
            ConsoleRequest {
                addr: 0,
                len: u32::MAX,
                id: 4,
            },
        )
        .unwrap();
        p.publish(&m).unwrap();
        let mut out = Vec::new();
        assert_eq!(service_ring(&m, &mut ring, &mut out).unwrap().requests, 4);
        assert_eq!(out, b"abcdef");
        let rsps = p.take_responses(&m).unwrap();
        let summary: Vec<_> = rsps.iter().map(|r| (r.id, r.status, r.written)).collect();
        assert_eq!(
            summary,
            vec![
                (1, 0, 3),
                (2, Status::EFAULT as i64, 0),
                (3, 0, 3),
                (4, Status::E2BIG as i64, 0)
            ]
        );
    }
}
