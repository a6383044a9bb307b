//! `pv_ring`: ring registration with arbitrary `(gpa, len)` and header contents, then
//! arbitrary interleavings of guest-side actions (the reference producer's push / publish /
//! take, raw scribbles anywhere in the ring, `req_prod` corruption, stores anywhere in RAM)
//! with host-side `poll`s, polling-flag changes and budgets, on a console ring or a block
//! ring.
//!
//! The harness models the host side exactly for the console ring (whose handler never
//! writes guest memory): which requests are handled, the bytes that reach the sink, every
//! response, `rsp_prod`, `req_event`, `host_flags`, the broken state and the returned
//! `Batch`; and it compares the whole of guest RAM with the model after every host
//! action. For the block ring (whose read requests write guest memory, possibly the ring
//! itself) it checks the weaker, documented bounds.
//!
//! Invariants:
//! - no panic; no hang: one poll handles at most `size` requests per batch, and a console
//!   poll at most `size` requests in all (checked), a block poll at most 2^16;
//! - registration succeeds exactly when the ABI's rules say so (alignment, RAM, header,
//!   size, ring fits, indices), writes only `req_event` and `host_flags` on success and
//!   nothing on failure;
//! - a host action never changes guest RAM outside the ring region, except the data
//!   buffers of block reads the device accepted;
//! - console ring: RAM, sink, result and batch equal the model's;
//! - a broken ring stays broken and is not touched again by `poll`.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::block::{BlockRequest, BlockResponse, BlockSegment};
use pvkit_abi::console::{ConsoleRequest, ConsoleResponse};
use pvkit_abi::ring::{need_notify, ring_bytes, BROKEN, HEADER_SIZE, HOST_POLLING};
use pvkit_abi::Status;
use pvkit_devices::MemBackend;
use pvkit_pv::console;
use pvkit_pv::ring::{Batch, RingConsumer, RingError};
use pvkit_pv::test_utils::GuestProducer;
use pvkit_pv::{BlockDevice, Wire};
use vm_memory::ByteValued;

use crate::mem::{Gpa, Len, Ram, RamSetup};
use crate::pv_block::{disk_pattern, Num32, OpSel, SectorSel};
use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 48;
/// Disk of the block ring's device, in sectors.
const DISK_SECTORS: usize = 64;
/// A block poll handling more requests than this is treated as a hang.
const MAX_BLOCK_POLL: u64 = 1 << 16;

const CON_REQ: usize = core::mem::size_of::<ConsoleRequest>();
const CON_RSP: usize = core::mem::size_of::<ConsoleResponse>();
const BLK_REQ: usize = core::mem::size_of::<BlockRequest>();
const BLK_RSP: usize = core::mem::size_of::<BlockResponse>();

/// Which ring.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ConsoleRequest` / `ConsoleResponse`.
    Console,
    /// `BlockRequest` / `BlockResponse`.
    Block,
}
encode_enum!(Kind, 2; Kind::Console => 0 [], Kind::Block => 1 []);

/// Setup.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSetup {
    /// Guest RAM.
    pub ram: RamSetup,
    /// The ring's device.
    pub kind: Kind,
}
encode_struct!(RingSetup { ram, kind });

/// A ring size.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeSel {
    /// `1 << (v % 9)`: valid.
    Pow2(u8),
    /// Anything.
    Raw(u32),
}
encode_enum!(SizeSel, 2; SizeSel::Pow2(v) => 0 [v], SizeSel::Raw(v) => 1 [v]);

impl SizeSel {
    fn get(self) -> u32 {
        match self {
            SizeSel::Pow2(v) => 1 << (v % 9),
            SizeSel::Raw(v) => v,
        }
    }
}

/// A new value for `req_prod`.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxSel {
    /// The current `req_prod` in guest memory plus `d`.
    Ahead(i16),
    /// Anything.
    Abs(u32),
}
encode_enum!(IdxSel, 2; IdxSel::Ahead(d) => 0 [d], IdxSel::Abs(v) => 1 [v]);

/// A request the guest pushes (one segment for block).
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushSpec {
    /// Buffer address.
    pub addr: Gpa,
    /// Buffer length.
    pub len: Num32,
    /// Request id.
    pub id: u32,
    /// Block op.
    pub op: OpSel,
    /// Block sector.
    pub sector: SectorSel,
}
encode_struct!(PushSpec {
    addr,
    len,
    id,
    op,
    sector
});

/// One step.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingOp {
    /// The guest writes a header at `gpa` (if `fresh`: a clean one with indices `start`,
    /// `req_prod = start + ahead`), then registers `[gpa, gpa + len)`.
    Register {
        /// Ring address.
        gpa: Gpa,
        /// Registered length.
        len: Len,
        /// Header size field.
        size: SizeSel,
        /// Write a fresh header first.
        fresh: bool,
        /// Initial indices.
        start: u32,
        /// `req_prod - rsp_prod` at registration.
        ahead: u16,
    },
    /// The reference producer pushes a request (unpublished).
    Push(PushSpec),
    /// The reference producer publishes.
    Publish,
    /// The reference producer takes responses.
    Take,
    /// The guest writes `n % 9` bytes of `bytes` at `off % ring_bytes` in the ring.
    Scribble {
        /// Offset in the ring.
        off: u16,
        /// Data.
        bytes: [u8; 8],
        /// Count.
        n: u8,
    },
    /// The guest stores `value` at any address.
    Poke(Gpa, u64),
    /// The guest sets `req_prod`.
    ReqProd(IdxSel),
    /// The host sets or clears `HOST_POLLING`.
    Polling(bool),
    /// The host sets a poll budget (`Some(v % 16)`).
    Budget(Option<u8>),
    /// The host services the ring.
    Poll,
}
encode_enum!(RingOp, 10;
    RingOp::Register { gpa, len, size, fresh, start, ahead } => 0 [gpa, len, size, fresh, start, ahead],
    RingOp::Push(p) => 1 [p],
    RingOp::Publish => 2 [],
    RingOp::Take => 3 [],
    RingOp::Scribble { off, bytes, n } => 4 [off, bytes, n],
    RingOp::Poke(g, v) => 5 [g, v],
    RingOp::ReqProd(i) => 6 [i],
    RingOp::Polling(b) => 7 [b],
    RingOp::Budget(b) => 8 [b],
    RingOp::Poll => 9 [],
);

enum Consumer {
    Console(RingConsumer<ConsoleRequest, ConsoleResponse>),
    Block(RingConsumer<BlockRequest, BlockResponse>),
}

enum Producer {
    Console(GuestProducer<ConsoleRequest, ConsoleResponse>),
    Block(GuestProducer<BlockRequest, BlockResponse>),
}

/// The harness's model of the host side of the registered ring.
#[derive(Clone, Copy, Debug)]
struct Model {
    gpa: u64,
    bytes: usize,
    size: u32,
    consumed: u32,
    host_flags: u32,
    broken: bool,
    budget: Option<u64>,
}

struct Ring {
    consumer: Consumer,
    producer: Option<Producer>,
    model: Model,
}

struct Harness {
    ram: Ram,
    kind: Kind,
    dev: BlockDevice<MemBackend>,
    ring: Option<Ring>,
}

fn rd32(img: &[u8], at: u64) -> u32 {
    let a = at as usize;
    u32::from_le_bytes(img[a..a + 4].try_into().unwrap())
}

fn wr32(img: &mut [u8], at: u64, v: u32) {
    let a = at as usize;
    img[a..a + 4].copy_from_slice(&v.to_le_bytes());
}

/// Outcome kinds compared between the model and the code.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(Batch),
    Overrun,
    Broken,
}

fn outcome(r: Result<Batch, RingError>) -> Outcome {
    match r {
        Ok(b) => Outcome::Ok(b),
        Err(RingError::Overrun { .. }) => Outcome::Overrun,
        Err(RingError::Broken) => Outcome::Broken,
        Err(e) => panic!("unexpected poll error on a ring inside RAM: {e}"),
    }
}

impl Harness {
    fn req_size(&self) -> (usize, usize) {
        match self.kind {
            Kind::Console => (CON_REQ, CON_RSP),
            Kind::Block => (BLK_REQ, BLK_RSP),
        }
    }

    fn register(&mut self, gpa: u64, len: u64, size: u32, fresh: bool, start: u32, ahead: u16) {
        let (rq, rs) = self.req_size();
        let mut producer = None;
        if fresh {
            // The reference producer writes the header (valid sizes only); adopt it.
            let header_in_ram = self.ram.layout.contains(gpa, HEADER_SIZE as u64);
            let mem = self.ram.mem;
            producer = match self.kind {
                Kind::Console => GuestProducer::init(mem, gpa, size, start)
                    .ok()
                    .map(Producer::Console),
                Kind::Block => GuestProducer::init(mem, gpa, size, start)
                    .ok()
                    .map(Producer::Block),
            };
            if producer.is_none() && header_in_ram {
                let _ = GuestProducer::<ConsoleRequest, ConsoleResponse>::init_raw_size(
                    mem, gpa, size, start,
                );
            }
            self.ram.check(
                &[(gpa, gpa.saturating_add(HEADER_SIZE as u64))],
                "producer init",
            );
            if ahead != 0 && header_in_ram {
                self.ram
                    .guest_write(gpa, &start.wrapping_add(u32::from(ahead)).to_le_bytes());
            }
        }

        // The oracle, in the documented order.
        let img = &self.ram.image;
        let expect: Result<(u32, u32, usize), &str> = if !gpa.is_multiple_of(4096) {
            Err("misaligned")
        } else if !self.ram.layout.contains(gpa, len) {
            Err("range")
        } else if len < HEADER_SIZE as u64 {
            Err("too small")
        } else {
            let size = rd32(img, gpa + 16);
            match ring_bytes(size, rq, rs) {
                None => Err("invalid size"),
                Some(b) if b as u64 > len => Err("too small"),
                Some(b) => {
                    let (req_prod, rsp_prod) = (rd32(img, gpa), rd32(img, gpa + 8));
                    if req_prod.wrapping_sub(rsp_prod) > size {
                        Err("corrupt indices")
                    } else {
                        Ok((size, rsp_prod, b))
                    }
                }
            }
        };
        let got = match self.kind {
            Kind::Console => RingConsumer::new(self.ram.mem, gpa, len).map(Consumer::Console),
            Kind::Block => RingConsumer::new(self.ram.mem, gpa, len).map(Consumer::Block),
        };
        let kind_of = |e: &RingError| match e {
            RingError::Misaligned { .. } => "misaligned",
            RingError::Range(_) => "range",
            RingError::TooSmall { .. } => "too small",
            RingError::InvalidSize { .. } => "invalid size",
            RingError::CorruptIndices { .. } => "corrupt indices",
            _ => "other",
        };
        match (expect, got) {
            (Err(want), Err(e)) => {
                assert_eq!(kind_of(&e), want, "{gpa:#x}+{len:#x}: {e}");
                assert_ne!(e.status(), Status::Ok);
                self.ram.check(&[], "failed registration writes nothing");
            }
            (Ok((size, rsp_prod, bytes)), Ok(consumer)) => {
                wr32(&mut self.ram.image, gpa + 4, rsp_prod.wrapping_add(1));
                wr32(&mut self.ram.image, gpa + 20, 0);
                self.ram
                    .check(&[], "registration writes req_event and host_flags");
                let (c_gpa, c_size, c_consumed, c_bytes) = match &consumer {
                    Consumer::Console(c) => (c.gpa(), c.size(), c.consumed(), c.ring_bytes()),
                    Consumer::Block(c) => (c.gpa(), c.size(), c.consumed(), c.ring_bytes()),
                };
                assert_eq!(
                    (c_gpa, c_size, c_consumed, c_bytes),
                    (gpa, size, rsp_prod, bytes)
                );
                self.ring = Some(Ring {
                    consumer,
                    // The producer only tracks a ring it initialized and that was accepted.
                    producer: if rd32(&self.ram.image, gpa) == start {
                        producer
                    } else {
                        None
                    },
                    model: Model {
                        gpa,
                        bytes,
                        size,
                        consumed: rsp_prod,
                        host_flags: 0,
                        broken: false,
                        budget: None,
                    },
                });
            }
            (want, got) => panic!(
                "registration {gpa:#x}+{len:#x}: oracle {want:?}, got {:?}",
                got.map(|_| ()).map_err(|e| e.to_string())
            ),
        }
    }

    fn push(&mut self, p: PushSpec) {
        let Some(ring) = &mut self.ring else { return };
        let Some(prod) = &mut ring.producer else {
            return;
        };
        let mem = self.ram.mem;
        let _ = match prod {
            Producer::Console(pr) => pr
                .push(
                    mem,
                    ConsoleRequest {
                        addr: p.addr.get(),
                        len: p.len.get(),
                        id: p.id,
                    },
                )
                .is_ok(),
            Producer::Block(pr) => {
                let spec = crate::pv_block::ReqSpec {
                    id: u64::from(p.id),
                    op: p.op,
                    nr: Num32::Small(1),
                    sector: p.sector,
                    segs: [crate::pv_block::SegSpec {
                        addr: p.addr,
                        len: p.len,
                        reserved: 0,
                    }; 8],
                };
                let mut req = spec.build();
                req.segments[1..].fill(BlockSegment::default());
                pr.push(mem, req).is_ok()
            }
        };
        let m = ring.model;
        self.ram
            .check(&[(m.gpa, m.gpa + m.bytes as u64)], "producer push");
    }

    fn publish(&mut self) {
        let Some(ring) = &mut self.ring else { return };
        let Some(prod) = &mut ring.producer else {
            return;
        };
        let mem = self.ram.mem;
        let _ = match prod {
            Producer::Console(pr) => pr.publish(mem).is_ok(),
            Producer::Block(pr) => pr.publish(mem).is_ok(),
        };
        let m = ring.model;
        self.ram
            .check(&[(m.gpa, m.gpa + HEADER_SIZE as u64)], "producer publish");
    }

    fn take(&mut self) {
        let Some(ring) = &mut self.ring else { return };
        let Some(prod) = &mut ring.producer else {
            return;
        };
        let mem = self.ram.mem;
        let _ = match prod {
            Producer::Console(pr) => pr.take_responses(mem).map(|v| v.len()),
            Producer::Block(pr) => pr.take_responses(mem).map(|v| v.len()),
        };
    }

    fn set_polling(&mut self, on: bool) {
        let Some(ring) = &mut self.ring else { return };
        let mem = self.ram.mem;
        let r = match &mut ring.consumer {
            Consumer::Console(c) => c.set_polling(mem, on),
            Consumer::Block(c) => c.set_polling(mem, on),
        };
        assert!(r.is_ok(), "set_polling on a ring inside RAM: {r:?}");
        let m = &mut ring.model;
        m.host_flags = if on {
            m.host_flags | HOST_POLLING
        } else {
            m.host_flags & !HOST_POLLING
        };
        wr32(&mut self.ram.image, m.gpa + 20, m.host_flags);
        self.ram.check(&[], "set_polling writes host_flags only");
    }

    fn set_budget(&mut self, b: Option<u8>) {
        let Some(ring) = &mut self.ring else { return };
        let budget = b.map(|v| u64::from(v % 16));
        match &mut ring.consumer {
            Consumer::Console(c) => c.set_budget(budget),
            Consumer::Block(c) => c.set_budget(budget),
        }
        ring.model.budget = budget;
    }

    fn poll(&mut self) {
        let Some(ring) = &mut self.ring else { return };
        match &mut ring.consumer {
            Consumer::Console(c) => {
                let mut model = ring.model;
                let (want, want_sink) = model_console_poll(&mut self.ram, &mut model);
                let mut sink = Vec::new();
                let mut calls = 0u64;
                // What `console::service_ring` does (below its byte budget, which this
                // RAM cannot reach): each request costs the bytes it wrote.
                let got = c.poll_metered(self.ram.mem, |req| {
                    calls += 1;
                    let rsp = console::handle_request(self.ram.mem, &req, &mut sink);
                    (rsp, u64::from(rsp.written))
                });
                let got = outcome(got);
                assert_eq!(got, want, "console poll: model {model:?}");
                assert!(
                    calls <= u64::from(model.size),
                    "{calls} requests in one poll"
                );
                assert!(sink == want_sink, "console sink differs from the model");
                assert_eq!(c.consumed(), model.consumed);
                assert_eq!(c.is_broken(), model.broken);
                self.ram.check(&[], "console poll");
                ring.model = model;
            }
            Consumer::Block(c) => {
                let m = ring.model;
                let layout = self.ram.layout;
                let mut allowed = vec![(m.gpa, m.gpa + m.bytes as u64)];
                let mut calls = 0u64;
                let dev = &mut self.dev;
                let mem = self.ram.mem;
                let got = c.poll(mem, |req| {
                    calls += 1;
                    assert!(calls <= MAX_BLOCK_POLL, "block poll does not terminate");
                    let (status, bytes) = dev.handle(mem, &req);
                    if status == Status::Ok && req.op == 1 {
                        let n = (req.nr_segments as usize).min(req.segments.len());
                        for s in &req.segments[..n] {
                            assert!(layout.contains(s.addr, u64::from(s.len)));
                            allowed.push((s.addr, s.addr + u64::from(s.len)));
                        }
                    }
                    BlockResponse {
                        id: req.id,
                        status: status as i64,
                        bytes,
                    }
                });
                let broken_before = m.broken;
                let got = outcome(got);
                if broken_before {
                    assert_eq!(got, Outcome::Broken);
                    self.ram.check(&[], "poll of a broken ring touches nothing");
                    return;
                }
                self.ram.check(&allowed, "block poll");
                let model = &mut ring.model;
                model.consumed = c.consumed();
                match got {
                    Outcome::Ok(b) => {
                        assert_eq!(b.requests, calls);
                        assert!(!c.is_broken());
                        if let Some(budget) = m.budget {
                            assert!(b.requests <= budget);
                        }
                        // Unless a read landed on the header, the host's words are there.
                        let header_hit = allowed[1..]
                            .iter()
                            .any(|&(a, e)| a < m.gpa + HEADER_SIZE as u64 && e > m.gpa);
                        if !header_hit && b.batches > 0 {
                            assert_eq!(rd32(&self.ram.image, m.gpa + 8), c.consumed());
                        }
                        if !header_hit && !b.budget_exhausted {
                            assert_eq!(
                                rd32(&self.ram.image, m.gpa + 4),
                                c.consumed().wrapping_add(1)
                            );
                        }
                    }
                    Outcome::Overrun => {
                        assert!(c.is_broken());
                        model.broken = true;
                        model.host_flags |= BROKEN;
                        assert_eq!(rd32(&self.ram.image, m.gpa + 20), model.host_flags);
                    }
                    Outcome::Broken => panic!("Broken from a ring that was not broken"),
                }
            }
        }
    }
}

/// The console ring's poll, computed on the RAM model (`ram.image`), which it updates.
/// Returns the outcome and the bytes the sink must have received.
fn model_console_poll(ram: &mut Ram, m: &mut Model) -> (Outcome, Vec<u8>) {
    let mut sink = Vec::new();
    if m.broken {
        return (Outcome::Broken, sink);
    }
    let mut batch = Batch::default();
    let g = m.gpa;
    let start = m.consumed;
    // The event-index rule on responses (`Batch::notify`): did this poll's responses
    // cross the guest's `rsp_event` (offset 12)?
    let notify = |ram: &Ram, m: &Model| {
        m.consumed != start && need_notify(m.consumed, start, rd32(&ram.image, g + 12))
    };
    let mut prod = rd32(&ram.image, g);
    loop {
        let available = prod.wrapping_sub(m.consumed);
        if available > m.size {
            m.broken = true;
            m.host_flags |= BROKEN;
            wr32(&mut ram.image, g + 20, m.host_flags);
            return (Outcome::Overrun, sink);
        }
        if available == 0 {
            wr32(&mut ram.image, g + 4, m.consumed.wrapping_add(1));
            prod = rd32(&ram.image, g);
            if prod == m.consumed {
                batch.notify = notify(ram, m);
                return (Outcome::Ok(batch), sink);
            }
            continue;
        }
        let mut todo = u64::from(available);
        if let Some(budget) = m.budget {
            let left = budget.saturating_sub(batch.requests);
            if left == 0 {
                batch.budget_exhausted = true;
                batch.notify = notify(ram, m);
                return (Outcome::Ok(batch), sink);
            }
            todo = todo.min(left);
        }
        for _ in 0..todo {
            let slot = u64::from(m.consumed & (m.size - 1));
            let q = g + HEADER_SIZE as u64 + slot * CON_REQ as u64;
            let b = ram.model(q, CON_REQ);
            let req = ConsoleRequest {
                addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
                id: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            };
            let len = u64::from(req.len);
            let (status, written) = if len > pvkit_abi::console::MAX_WRITE {
                (Status::E2BIG, 0)
            } else if !ram.layout.contains(req.addr, len) {
                (Status::EFAULT, 0)
            } else {
                if len > 0 {
                    sink.extend_from_slice(ram.model(req.addr, len as usize));
                }
                (Status::Ok, req.len)
            };
            let rsp = ConsoleResponse {
                status: status as i64,
                id: req.id,
                written,
            };
            // The console ring meters the bytes written (no byte budget is set here).
            batch.bytes += u64::from(written);
            let p =
                g + HEADER_SIZE as u64 + u64::from(m.size) * CON_REQ as u64 + slot * CON_RSP as u64;
            let (p, n) = (p as usize, CON_RSP);
            ram.image[p..p + n].copy_from_slice(Wire(rsp).as_slice());
            m.consumed = m.consumed.wrapping_add(1);
        }
        wr32(&mut ram.image, g + 8, m.consumed);
        batch.requests += todo;
        batch.batches += 1;
        prod = rd32(&ram.image, g);
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = RingSetup::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness {
        ram: Ram::new(setup.ram.layout, setup.ram.seed),
        kind: setup.kind,
        dev: crate::pv_block::device(&disk_pattern(DISK_SECTORS * 512, setup.ram.seed)),
        ring: None,
    };
    crate::for_each_op(&mut u, MAX_OPS, |op: RingOp| match op {
        RingOp::Register {
            gpa,
            len,
            size,
            fresh,
            start,
            ahead,
        } => h.register(gpa.get(), len.get(), size.get(), fresh, start, ahead),
        RingOp::Push(p) => h.push(p),
        RingOp::Publish => h.publish(),
        RingOp::Take => h.take(),
        RingOp::Scribble { off, bytes, n } => {
            if let Some(r) = &h.ring {
                let at = r.model.gpa + u64::from(off) % r.model.bytes as u64;
                let n = usize::from(n % 9);
                h.ram.guest_write(at, &bytes[..n]);
            }
        }
        RingOp::Poke(g, v) => h.ram.guest_write(g.get(), &v.to_le_bytes()),
        RingOp::ReqProd(i) => {
            if let Some(r) = &h.ring {
                let g = r.model.gpa;
                let v = match i {
                    IdxSel::Ahead(d) => rd32(&h.ram.image, g).wrapping_add(d as i32 as u32),
                    IdxSel::Abs(v) => v,
                };
                h.ram.guest_write(g, &v.to_le_bytes());
            }
        }
        RingOp::Polling(on) => h.set_polling(on),
        RingOp::Budget(b) => h.set_budget(b),
        RingOp::Poll => h.poll(),
    });
    crate::pv_block::recycle(h.dev);
}

/// Seeds: a console ring round trip; a block ring with a write and a read; a corrupt
/// `req_prod`; registrations the ABI rejects; budgets and the polling flag.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    use crate::mem::Layout;
    let setup = |kind| RingSetup {
        ram: RamSetup {
            layout: Layout::Holes,
            seed: 5,
        },
        kind,
    };
    let reg = |size: u8, start: u32| RingOp::Register {
        gpa: Gpa::Page(16, 0),
        len: Len::Pages(16),
        size: SizeSel::Pow2(size),
        fresh: true,
        start,
        ahead: 0,
    };
    let push = |page: u8, len: Num32, id: u32, op: OpSel, sector: u16| {
        RingOp::Push(PushSpec {
            addr: Gpa::Page(page, 0),
            len,
            id,
            op,
            sector: SectorSel::Small(sector),
        })
    };
    let console = [
        reg(3, u32::MAX - 2),
        push(1, Num32::Small(100), 1, OpSel::Read, 0),
        push(1, Num32::Raw(u32::MAX), 2, OpSel::Read, 0),
        push(2, Num32::Small(3), 3, OpSel::Read, 0),
        RingOp::Publish,
        RingOp::Poll,
        RingOp::Take,
        push(3, Num32::Small(1), 4, OpSel::Read, 0),
        push(3, Num32::Small(1), 5, OpSel::Read, 0),
        RingOp::Publish,
        RingOp::Budget(Some(1)),
        RingOp::Poll,
        RingOp::Polling(true),
        RingOp::Poll,
    ];
    let block = [
        reg(2, 0),
        push(1, Num32::Sectors(2), 1, OpSel::Write, 3),
        push(4, Num32::Sectors(2), 2, OpSel::Read, 3),
        push(4, Num32::Sectors(2), 3, OpSel::Read, 63),
        push(4, Num32::Sectors(1), 4, OpSel::Raw(9), 0),
        RingOp::Publish,
        RingOp::Poll,
        RingOp::Take,
    ];
    let corrupt = [
        reg(3, 10),
        push(1, Num32::Small(1), 1, OpSel::Read, 0),
        RingOp::Publish,
        RingOp::ReqProd(IdxSel::Ahead(9)),
        RingOp::Poll,
        RingOp::Poll,
        RingOp::Scribble {
            off: 16,
            bytes: [0xff; 8],
            n: 4,
        },
        RingOp::Polling(false),
    ];
    let bad = [
        RingOp::Register {
            gpa: Gpa::Page(16, 8),
            len: Len::Pages(1),
            size: SizeSel::Pow2(2),
            fresh: true,
            start: 0,
            ahead: 0,
        },
        RingOp::Register {
            gpa: Gpa::Page(16, 0),
            len: Len::Bytes(63),
            size: SizeSel::Pow2(2),
            fresh: true,
            start: 0,
            ahead: 0,
        },
        RingOp::Register {
            gpa: Gpa::Page(16, 0),
            len: Len::Pages(1),
            size: SizeSel::Raw(3),
            fresh: true,
            start: 0,
            ahead: 0,
        },
        RingOp::Register {
            gpa: Gpa::Page(127, 0),
            len: Len::Pages(2),
            size: SizeSel::Pow2(8),
            fresh: true,
            start: 0,
            ahead: 0,
        },
        RingOp::Register {
            gpa: Gpa::Page(16, 0),
            len: Len::Pages(12),
            size: SizeSel::Pow2(8),
            fresh: true,
            start: 5,
            ahead: 257,
        },
    ];
    vec![
        (
            "console_round_trip",
            program(&setup(Kind::Console), &console),
        ),
        ("block_round_trip", program(&setup(Kind::Block), &block)),
        ("corrupt_req_prod", program(&setup(Kind::Console), &corrupt)),
        ("bad_registrations", program(&setup(Kind::Block), &bad)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::decode_program;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let (_, ops): (RingSetup, Vec<RingOp>) = decode_program(&bytes, MAX_OPS);
            assert!(ops.len() >= 5, "{name}");
            run(&bytes);
        }
    }
}
