//! `hypercall_dispatch`: `pvkit_vmm::hypercall::dispatch` with arbitrary register values,
//! interleaved with guest stores that place structures (fault reports, bench samples and op
//! logs, block requests, ring headers) where the arguments point, against either the core
//! devices only (console, bench markers) or every device as `pvkit_vmm::devices::assemble`
//! registers them (block device over a 64-sector in-memory disk, console and block rings
//! with the `Doorbell` transport, optionally the clock page).
//!
//! The `HostPoll` transport is mapped to `Doorbell` (it starts the I/O thread, which would
//! touch guest memory concurrently with the checks; its ring logic is `pv_ring`'s), and
//! `DoorbellEventfd` answers `EOPNOTSUPP` because the backend has no ioeventfd registrar.
//! So that arbitrary inputs reach the known regions, a `RegisterRegion` region id below 4
//! is read as a selector (1 console queue, 2 block queue, 3 clock page; 0 stays the core
//! class's queue 0) and a `RingKick` id below 2 as a queue (0 console, 1 block); every other
//! value goes to the VMM as it is.
//!
//! Invariants:
//! - `dispatch` never panics;
//! - an unknown call number is `ENOSYS`; `AbiVersion`, `Features`, `Exit` and `ReportFault`
//!   answer exactly as `pvkit_abi::call` documents; `ConsoleWrite` is `E2BIG` above
//!   `MAX_WRITE`, `EFAULT` unless the range is in RAM, and otherwise writes exactly the
//!   guest bytes to the console;
//! - every failure has value 0;
//! - without PV devices, the PV calls are `EOPNOTSUPP` and no call ever writes guest RAM;
//! - with the backend, `BlockIo` has exactly the status, byte count, RAM and disk effects
//!   of the `BlockRequest` rules (same oracle as `pv_block`); `RegisterRegion` writes only
//!   the region it registers; `RingKick` writes only the ring and the buffers of block
//!   reads it may serve.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::block::BlockRequest;
use pvkit_abi::call::{CallReturn, Hypercall, RawCall};
use pvkit_abi::clock::CLOCK_PAGE_REGION;
use pvkit_abi::console::MAX_WRITE;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::{ring_bytes, BLOCK_QUEUE_ID, CONSOLE_QUEUE_ID, HEADER_SIZE};
use pvkit_abi::{Status, ABI_VERSION};
use pvkit_devices::{BlockBackend, MemBackend};
use pvkit_pv::{ClockSample, Wire};
use pvkit_vmm::devices::pv::clock::ClockSource;
use pvkit_vmm::devices::pv::spinlock::PvSpinlock;
use pvkit_vmm::devices::pv::{HypercallBus, RingsConfig};
use pvkit_vmm::devices::{assemble, PvConfig};
use pvkit_vmm::exit::ledger::ExitLedger;
use pvkit_vmm::hypercall::{dispatch, HypercallContext, Outcome};
use pvkit_vmm::io::console_out::Console;
use pvkit_vmm::io::disk::SharedDisk;
use pvkit_vmm::StopReason;
use vm_memory::ByteValued;

use crate::mem::{Gpa, Layout, Ram, RamSetup};
use crate::pv_block::{expect, parse_request, Expect, ReqSpec};
use crate::{encode_enum, encode_struct};

/// Most operations per input.
pub const MAX_OPS: usize = 24;
const DISK_SECTORS: usize = 64;

/// Which PV devices the VM has.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pv {
    /// The core devices only (console, bench markers): no rings, no block device.
    None,
    /// Every device: block over a disk, rings, with or without a clock source.
    Backend {
        /// A clock source for the clock page.
        clock: bool,
        /// The bench recorder verifies op logs against the disk.
        verify: bool,
    },
}
encode_enum!(Pv, 2;
    Pv::None => 0 [],
    Pv::Backend { clock, verify } => 1 [clock, verify],
);

/// Setup.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HcSetup {
    /// Guest RAM.
    pub ram: RamSetup,
    /// PV devices.
    pub pv: Pv,
}
encode_struct!(HcSetup { ram, pv });

/// A call number.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nr {
    /// `Hypercall::ALL[v % Hypercall::ALL.len()]`.
    Known(u8),
    /// Anything.
    Raw(u32),
}
encode_enum!(Nr, 2; Nr::Known(v) => 0 [v], Nr::Raw(v) => 1 [v]);

/// An argument register.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// An address.
    Addr(Gpa),
    /// A small number.
    Small(u16),
    /// Anything.
    Raw(u64),
}
encode_enum!(Arg, 3; Arg::Addr(g) => 0 [g], Arg::Small(v) => 1 [v], Arg::Raw(v) => 2 [v]);

impl Arg {
    fn get(self) -> u64 {
        match self {
            Arg::Addr(g) => g.get(),
            Arg::Small(v) => u64::from(v),
            Arg::Raw(v) => v,
        }
    }
}

/// A logged block operation for `BenchResult`.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpSpec {
    /// Sector.
    pub sector: u8,
    /// Buffer.
    pub addr: Gpa,
    /// Sectors (`len * 512`).
    pub len: u8,
    /// 1 read, 2 write, else raw.
    pub op: u8,
}
encode_struct!(OpSpec {
    sector,
    addr,
    len,
    op
});

/// One step.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HcOp {
    /// A hypercall.
    Call(Nr, [Arg; 4]),
    /// The guest stores `n % 17` bytes.
    Store(Gpa, [u8; 16], u8),
    /// The guest places a `BlockRequest`.
    Block(Gpa, ReqSpec),
    /// The guest places a ring header (`size = 1 << (log % 9)`, indices `start`).
    Ring(Gpa, u8, u32),
    /// The guest places a `BenchSample` (`case` parts, sample count, samples address).
    Sample(Gpa, [u8; 3], u16, Gpa),
    /// The guest places an op log of four records.
    OpLog(Gpa, [OpSpec; 4]),
    /// The guest places a fault report with `message_len` and message byte.
    Fault(Gpa, u32, u32, u8),
}
encode_enum!(HcOp, 7;
    HcOp::Call(n, a) => 0 [n, a],
    HcOp::Store(g, b, n) => 1 [g, b, n],
    HcOp::Block(g, r) => 2 [g, r],
    HcOp::Ring(g, l, s) => 3 [g, l, s],
    HcOp::Sample(g, c, n, s) => 4 [g, c, n, s],
    HcOp::OpLog(g, o) => 5 [g, o],
    HcOp::Fault(g, v, l, b) => 6 [g, v, l, b],
);

struct FixedClock;

impl ClockSource for FixedClock {
    fn sample(&self) -> Option<ClockSample> {
        Some(ClockSample {
            tsc: 1_000_000,
            system_ns: 5_000,
            tsc_khz: 2_596_000,
            stable: true,
        })
    }
}

struct Harness {
    ram: Ram,
    console: Console,
    ledger: ExitLedger,
    pv: HypercallBus,
    backend: bool,
    disk: SharedDisk,
    disk_model: Vec<u8>,
    /// Registered rings: `(id, gpa, ring bytes)`.
    rings: [Option<(u64, usize)>; 2],
    /// vCPU 0 has a pending `LockKick` (the model of the spinlock device's one bit).
    kick_pending: bool,
}

impl Harness {
    fn read_disk(&self) -> Vec<u8> {
        let mut d = self.disk.clone();
        let mut v = vec![0; DISK_SECTORS * 512];
        d.read_at(0, &mut v).expect("disk read");
        v
    }

    fn call(&mut self, nr: u32, args: [u64; 4]) {
        let raw = RawCall { nr, args };
        let known = Hypercall::try_from(nr).ok();
        let before_console = self.console.captured().len();
        let block_req = (known == Some(Hypercall::BlockIo) && self.backend)
            .then(|| args[0])
            .filter(|&a| self.ram.layout.contains(a, crate::pv_block::REQUEST_BYTES))
            .map(|a| parse_request(self.ram.model(a, crate::pv_block::REQUEST_BYTES as usize)));
        let kick_allow = (known == Some(Hypercall::RingKick)).then(|| self.kick_allowance(args[0]));

        let ctx = HypercallContext {
            ledger: &self.ledger,
            bus: &self.pv,
            vcpu: 0,
        };
        let features = self.pv.features();
        let out = dispatch(self.ram.mem, raw, &ctx);

        if let Outcome::Return(r) = &out {
            if r.status != Status::Ok {
                assert_eq!(r.value, 0, "failure with a value: {r:?}");
            }
        }
        let ret = |s: Status, v: u64| {
            Outcome::Return(CallReturn {
                status: s,
                value: v,
            })
        };
        let Some(h) = known else {
            assert_eq!(out, ret(Status::ENOSYS, 0), "unknown call {nr}");
            self.ram.check(&[], "unknown call");
            return;
        };
        let layout = self.ram.layout;
        let mut allowed: Vec<(u64, u64)> = Vec::new();
        match h {
            Hypercall::AbiVersion => assert_eq!(out, ret(Status::Ok, ABI_VERSION.to_u64())),
            Hypercall::Features => {
                assert_eq!(out, ret(Status::Ok, features.bits()));
                // The devices every VM has: the console and the bench markers.
                let core = Features::CONSOLE | Features::BENCH;
                assert!(features.contains(core));
                if !self.backend {
                    assert_eq!(features, core);
                }
            }
            Hypercall::Exit => {
                assert_eq!(out, Outcome::Stop(StopReason::Exit((args[0] & 0xff) as u8)));
            }
            Hypercall::ReportFault => {
                let size = core::mem::size_of::<pvkit_abi::fault::FaultReport>() as u64;
                match &out {
                    Outcome::Stop(StopReason::Fault(f)) => {
                        assert!(layout.contains(args[0], size));
                        let vector =
                            u32::from_le_bytes(self.ram.model(args[0], 4).try_into().unwrap());
                        assert_eq!(f.vector, vector);
                        assert!(f.message.chars().count() <= pvkit_abi::fault::MESSAGE_MAX);
                    }
                    Outcome::Stop(StopReason::UnreadableFault { addr }) => {
                        assert_eq!(*addr, args[0]);
                        assert!(!layout.contains(args[0], size));
                    }
                    other => panic!("report_fault returned {other:?}"),
                }
            }
            Hypercall::ConsoleWrite => {
                let (addr, len) = (args[0], args[1]);
                let now = self.console.captured();
                if len > MAX_WRITE {
                    assert_eq!(out, ret(Status::E2BIG, 0));
                } else if !layout.contains(addr, len) {
                    assert_eq!(out, ret(Status::EFAULT, 0), "{addr:#x}+{len:#x}");
                } else {
                    assert_eq!(out, ret(Status::Ok, len));
                    if len > 0 {
                        assert!(
                            now[before_console..] == *self.ram.model(addr, len as usize),
                            "console got other bytes than the guest's"
                        );
                    }
                }
                if !matches!(
                    out,
                    Outcome::Return(CallReturn {
                        status: Status::Ok,
                        ..
                    })
                ) {
                    assert_eq!(
                        now.len(),
                        before_console,
                        "failed write reached the console"
                    );
                }
            }
            Hypercall::BenchPhase | Hypercall::BenchResult => {
                assert!(matches!(out, Outcome::Return(_)), "{out:?}");
            }
            Hypercall::RegisterRegion | Hypercall::BlockCapacity | Hypercall::RingKick
                if !self.backend =>
            {
                assert_eq!(out, ret(Status::EOPNOTSUPP, 0));
            }
            Hypercall::BlockIo if !self.backend => assert_eq!(out, ret(Status::EOPNOTSUPP, 0)),
            // No PV NIC in the assembled devices.
            Hypercall::NetInfo | Hypercall::NetSend => {
                assert_eq!(out, ret(Status::EOPNOTSUPP, 0))
            }
            // No interrupt controller in this harness: no completion interrupts.
            Hypercall::QueueInterrupt => assert_eq!(out, ret(Status::EOPNOTSUPP, 0)),
            // No vCPUs to start in this harness: the device is not registered.
            Hypercall::VcpuUp | Hypercall::SendIpi => {
                assert_eq!(out, ret(Status::EOPNOTSUPP, 0))
            }
            Hypercall::LockWait | Hypercall::LockKick if !self.backend => {
                assert_eq!(out, ret(Status::EOPNOTSUPP, 0))
            }
            // The caller is vCPU 0 of 2; a wait never blocks here (bound 0) and ends with
            // 1 exactly when a kick to vCPU 0 was pending.
            Hypercall::LockWait => {
                if args[0] != 0 {
                    assert_eq!(out, ret(Status::EINVAL, 0));
                } else {
                    let pending = std::mem::take(&mut self.kick_pending);
                    assert_eq!(out, ret(Status::Ok, u64::from(pending)));
                }
                self.ram.check(&[], "LockWait");
            }
            Hypercall::LockKick => {
                if args[0] >= 2 || args[1] != 0 {
                    assert_eq!(out, ret(Status::EINVAL, 0));
                } else {
                    self.kick_pending |= args[0] == 0;
                    assert_eq!(out, ret(Status::Ok, 0));
                }
                self.ram.check(&[], "LockKick");
            }
            // No balloon in the assembled devices either (`balloon: None`).
            Hypercall::BalloonInflate
            | Hypercall::BalloonDeflate
            | Hypercall::BalloonInfo
            | Hypercall::BalloonTarget
            | Hypercall::FreePageHint => {
                assert_eq!(out, ret(Status::EOPNOTSUPP, 0))
            }
            Hypercall::BlockCapacity => {
                assert_eq!(out, ret(Status::Ok, DISK_SECTORS as u64));
            }
            Hypercall::BlockIo => {
                let Some(req) = block_req else {
                    assert_eq!(out, ret(Status::EFAULT, 0), "request at {:#x}", args[0]);
                    self.ram.check(&[], "BlockIo of an unreadable request");
                    return;
                };
                let Outcome::Return(r) = out else {
                    panic!("BlockIo stopped the VM: {out:?}")
                };
                let disk = self.read_disk();
                let got = (r.status, r.value);
                crate::pv_block::check_outcome(
                    &mut self.ram,
                    &mut self.disk_model,
                    &disk,
                    &req,
                    got,
                );
                return;
            }
            Hypercall::RegisterRegion => {
                let (kind, addr, len) = (args[0], args[1], args[2]);
                if let Outcome::Return(CallReturn {
                    status: Status::Ok, ..
                }) = out
                {
                    const CONSOLE: u64 = CONSOLE_QUEUE_ID as u64;
                    const BLOCK: u64 = BLOCK_QUEUE_ID as u64;
                    match kind {
                        CONSOLE | BLOCK => {
                            let size = u32::from_le_bytes(
                                self.ram.model(addr + 16, 4).try_into().unwrap(),
                            );
                            let (rq, rs) = if kind == CONSOLE { (16, 16) } else { (152, 24) };
                            let bytes = ring_bytes(size, rq, rs).expect("accepted ring size");
                            assert!(bytes as u64 <= len);
                            self.rings[usize::from(kind == BLOCK)] = Some((addr, bytes));
                            allowed.push((addr, addr + HEADER_SIZE as u64));
                        }
                        CLOCK_PAGE_REGION => allowed.push((addr, addr + 32)),
                        _ => panic!("region {kind:#x} accepted"),
                    }
                }
            }
            Hypercall::RingKick => {
                allowed = match kick_allow.expect("computed") {
                    Some(a) => a,
                    None => {
                        // A read may have rewritten the ring itself: adopt whatever happened.
                        self.ram.check(&[(0, u64::MAX)], "ring kick");
                        return;
                    }
                };
            }
        }
        self.ram.check(&allowed, h.name());
        if self.backend {
            // Only BlockIo and RingKick write the disk; both model it.
            if !matches!(h, Hypercall::RingKick) {
                assert!(
                    self.read_disk() == self.disk_model,
                    "{} changed the disk",
                    h.name()
                );
            } else {
                self.disk_model = self.read_disk();
            }
        }
    }

    /// What a ring kick may write: the ring, plus the buffers of every block read the
    /// ring's slots could request. `None` when such a buffer overlaps the ring (then the
    /// requests served may differ from the slots read here).
    fn kick_allowance(&self, ring: u64) -> Option<Vec<(u64, u64)>> {
        let mut allowed = Vec::new();
        for (id, r) in self.rings.iter().enumerate() {
            let Some((gpa, bytes)) = *r else { continue };
            let queue = [CONSOLE_QUEUE_ID, BLOCK_QUEUE_ID][id];
            if ring != u64::from(queue) {
                continue;
            }
            let end = gpa + bytes as u64;
            allowed.push((gpa, end));
            if id == 1 {
                let size = (bytes - HEADER_SIZE) / (152 + 24);
                for slot in 0..size {
                    let at = gpa + (HEADER_SIZE + slot * 152) as u64;
                    let req: BlockRequest = parse_request(self.ram.model(at, 152));
                    if let Expect::Read { segs, .. } =
                        expect(self.ram.layout, DISK_SECTORS as u64, &req)
                    {
                        for (a, l) in segs {
                            let e = a + l as u64;
                            if a < end && e > gpa {
                                return None;
                            }
                            allowed.push((a, e));
                        }
                    }
                }
            }
        }
        Some(allowed)
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = HcSetup::arbitrary(&mut u) else {
        return;
    };
    let ram = Ram::new(setup.ram.layout, setup.ram.seed);
    let disk_model = crate::pv_block::disk_pattern(DISK_SECTORS * 512, setup.ram.seed);
    let disk = SharedDisk::new(Box::new(MemBackend::from_vec(disk_model.clone())));
    let console = Console::capture();
    let mut ledger = ExitLedger::new();
    let (clock, verify, backend) = match setup.pv {
        Pv::None => (false, false, false),
        Pv::Backend { clock, verify } => (clock, verify, true),
    };
    let config = PvConfig {
        console: console.clone(),
        pv_console: true,
        disk: backend.then(|| disk.clone()),
        clock: clock.then(|| Arc::new(FixedClock) as Arc<dyn ClockSource>),
        kvmclock: false,
        balloon: None,
        rings: backend.then(|| {
            let on_fatal: Arc<dyn Fn(String) + Send + Sync> =
                Arc::new(|e| panic!("I/O thread failed: {e}"));
            (
                ram.mem.clone(),
                RingsConfig {
                    ioevents: None,
                    on_fatal,
                },
            )
        }),
        vcpu_up: None,
        // No PV NIC: NetInfo and NetSend answer EOPNOTSUPP (checked below).
        net: None,
        ipi: None,
        // Two vCPUs, waits that never block (the fuzzer is one thread, vCPU 0).
        spinlock: backend.then(|| Arc::new(PvSpinlock::with_max_wait(2, Duration::ZERO))),
        steal: None,
    };
    let devices = assemble(config, &mut ledger).expect("PV devices without KVM");
    if verify {
        devices.bench.set_disk(Box::new(disk.clone()));
    }
    let pv = devices.bus;
    let mut h = Harness {
        ram,
        console,
        ledger,
        pv,
        backend,
        disk,
        disk_model,
        rings: [None, None],
        kick_pending: false,
    };
    crate::for_each_op(&mut u, MAX_OPS, |op: HcOp| match op {
        HcOp::Call(nr, args) => {
            let nr = match nr {
                Nr::Known(v) => Hypercall::ALL[usize::from(v) % Hypercall::ALL.len()] as u32,
                Nr::Raw(v) => v,
            };
            let mut args = args.map(Arg::get);
            if nr == Hypercall::RegisterRegion as u32 {
                if args[3] == 3 {
                    args[3] = 1; // HostPoll would start the I/O thread; see the module docs.
                }
                args[0] = match args[0] {
                    1 => u64::from(CONSOLE_QUEUE_ID),
                    2 => u64::from(BLOCK_QUEUE_ID),
                    3 => CLOCK_PAGE_REGION,
                    other => other,
                };
            }
            if nr == Hypercall::RingKick as u32 && args[0] < 2 {
                args[0] = u64::from([CONSOLE_QUEUE_ID, BLOCK_QUEUE_ID][args[0] as usize]);
            }
            h.call(nr, args);
        }
        HcOp::Store(g, bytes, n) => {
            let n = usize::from(n % 17);
            h.ram.guest_write(g.get(), &bytes[..n]);
        }
        HcOp::Block(g, spec) => h.ram.guest_write(g.get(), Wire(spec.build()).as_slice()),
        HcOp::Ring(g, log, start) => {
            let header = pvkit_abi::ring::RingHeader {
                req_prod: start,
                req_event: start.wrapping_add(1),
                rsp_prod: start,
                rsp_event: start.wrapping_add(1),
                size: 1 << (log % 9),
                host_flags: 0,
                reserved: [0; 10],
            };
            h.ram.guest_write(g.get(), Wire(header).as_slice());
        }
        HcOp::Sample(g, [d, v, w], count, samples) => {
            let case = u64::from(d % 5) | u64::from(v % 12) << 16 | u64::from(w % 10) << 32;
            let mut b = [0u8; 72];
            b[0..8].copy_from_slice(&case.to_le_bytes());
            b[8..16].copy_from_slice(&100u64.to_le_bytes());
            b[52..56].copy_from_slice(&u32::from(count).to_le_bytes());
            b[56..64].copy_from_slice(&samples.get().to_le_bytes());
            h.ram.guest_write(g.get(), &b);
        }
        HcOp::OpLog(g, recs) => {
            let mut b = [0u8; 96];
            for (r, chunk) in recs.iter().zip(b.chunks_mut(24)) {
                chunk[0..8].copy_from_slice(&u64::from(r.sector).to_le_bytes());
                chunk[8..16].copy_from_slice(&r.addr.get().to_le_bytes());
                chunk[16..20].copy_from_slice(&(u32::from(r.len) * 512).to_le_bytes());
                chunk[20..24].copy_from_slice(&u32::from(r.op).to_le_bytes());
            }
            h.ram.guest_write(g.get(), &b);
        }
        HcOp::Fault(g, vector, len, byte) => {
            let mut b = vec![byte; 32 + 256];
            b[0..4].copy_from_slice(&vector.to_le_bytes());
            b[4..8].copy_from_slice(&len.to_le_bytes());
            h.ram.guest_write(g.get(), &b);
        }
    });
    let _ = h.pv.shutdown();
}

/// Seeds: discovery calls; a console write; block capacity and a block read through
/// `BlockIo`; a console ring registered and kicked; a bench phase with a sample and an op
/// log; a fault report.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::program;
    use crate::pv_block::{Num32, OpSel, SectorSel, SegSpec};
    let none = HcSetup {
        ram: RamSetup {
            layout: Layout::Flat,
            seed: 1,
        },
        pv: Pv::None,
    };
    let backend = HcSetup {
        ram: RamSetup {
            layout: Layout::Holes,
            seed: 2,
        },
        pv: Pv::Backend {
            clock: true,
            verify: true,
        },
    };
    let call = |h: Hypercall, a: [Arg; 4]| {
        HcOp::Call(
            Nr::Known(Hypercall::ALL.iter().position(|&x| x == h).unwrap() as u8),
            a,
        )
    };
    let z = Arg::Small(0);
    let page = |p: u8| Arg::Addr(Gpa::Page(p, 0));
    let seg = SegSpec {
        addr: Gpa::Page(8, 0),
        len: Num32::Sectors(2),
        reserved: 0,
    };
    let read = ReqSpec {
        id: 1,
        op: OpSel::Read,
        nr: Num32::Small(1),
        sector: SectorSel::Small(3),
        segs: [seg; 8],
    };
    let discovery = [
        call(Hypercall::AbiVersion, [z; 4]),
        call(Hypercall::Features, [z; 4]),
        HcOp::Call(Nr::Raw(99), [z; 4]),
        call(Hypercall::ConsoleWrite, [page(1), Arg::Small(40), z, z]),
        call(Hypercall::BlockIo, [page(2), z, z, z]),
        call(Hypercall::Exit, [Arg::Raw(0x1_07), z, z, z]),
    ];
    let block = [
        call(Hypercall::Features, [z; 4]),
        call(Hypercall::BlockCapacity, [z; 4]),
        HcOp::Block(Gpa::Page(2, 0), read),
        call(Hypercall::BlockIo, [page(2), z, z, z]),
        HcOp::Ring(Gpa::Page(16, 0), 3, 0),
        call(
            Hypercall::RegisterRegion,
            [Arg::Small(1), page(16), Arg::Small(4096), Arg::Small(1)],
        ),
        call(Hypercall::RingKick, [Arg::Small(0), z, z, z]),
        call(
            Hypercall::RegisterRegion,
            [Arg::Small(3), page(20), Arg::Small(4096), z],
        ),
        // A pending kick ends the next wait (value 1); a bad target is refused.
        call(Hypercall::LockKick, [z, z, z, z]),
        call(Hypercall::LockWait, [z; 4]),
        call(Hypercall::LockKick, [Arg::Small(2), z, z, z]),
    ];
    let bench = [
        call(
            Hypercall::BenchPhase,
            [Arg::Raw(2 | 2 << 16 | 3 << 32), Arg::Small(1), z, z],
        ),
        call(
            Hypercall::BenchPhase,
            [
                Arg::Raw(2 | 2 << 16 | 3 << 32),
                Arg::Small(2),
                Arg::Small(10),
                z,
            ],
        ),
        HcOp::Sample(Gpa::Page(3, 0), [2, 2, 3], 4, Gpa::Page(4, 0)),
        HcOp::OpLog(
            Gpa::Page(5, 0),
            [OpSpec {
                sector: 1,
                addr: Gpa::Page(6, 0),
                len: 1,
                op: 1,
            }; 4],
        ),
        call(Hypercall::BenchResult, [page(3), page(5), Arg::Small(4), z]),
        HcOp::Fault(Gpa::Page(7, 0), 14, 300, b'x'),
        call(Hypercall::ReportFault, [page(7), z, z, z]),
    ];
    vec![
        ("discovery_no_pv", program(&none, &discovery)),
        ("block_ring_clock", program(&backend, &block)),
        ("bench_and_fault", program(&backend, &bench)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass() {
        for (_, bytes) in seeds() {
            run(&bytes);
        }
    }
}
