//! Unit tests of the PV dispatch and the I/O thread, without KVM: the guest side of each
//! ring is `pvkit-pv`'s reference producer, KVM's ioeventfd is a fake that lets the test
//! signal the eventfd itself.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pvkit_abi::block::{BlockOp, BlockRequest, BlockResponse, BlockSegment};
use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::clock::CLOCK_PAGE;
use pvkit_abi::clock::{PvClock, TSC_STABLE};
use pvkit_abi::console::{ConsoleRequest, ConsoleResponse};
use pvkit_abi::ring::{
    offsets, RegionId, Transport, BLOCK_QUEUE, BROKEN, CONSOLE_QUEUE, HOST_POLLING, REGION_PER_VCPU,
};
use pvkit_abi::Status;
use pvkit_devices::{BackendError, MemBackend};
use pvkit_pv::test_utils::GuestProducer;
use pvkit_pv::{ClockSample, Wire};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::block::NOTIFY_BLOCK_RING;
use super::clock::{host_tsc, ClockSource, PvClock as PvClockDevice, TscClock};
use super::console::NOTIFY_CONSOLE_RING;
use super::doorbell::{DoorbellPort, IoEventRegistrar};
use super::RegionOwner;
use super::{HypercallBus, RingsConfig};
use crate::bus::PortDevice;
use crate::devices::legacy::vm_clock::VmClock;
use crate::devices::{assemble, PvConfig};
use crate::exit::ledger::ExitLedger;
use crate::io::console_out::Console;
use crate::io::disk::SharedDisk;
use crate::iothread::IoStopper;
use crate::vstate::memory::{create_ram, GuestRam};

/// The assembled devices, called the way the exit handler calls them (vCPU 0).
struct Pv {
    mem: GuestRam,
    bus: HypercallBus,
    clock: Option<Arc<PvClockDevice>>,
    ledger: ExitLedger,
}

impl Pv {
    fn call(&self, mem: &GuestRam, h: Hypercall, args: [u64; 4]) -> CallReturn {
        self.bus.dispatch(mem, &self.ledger, 0, h, args)
    }

    fn features(&self) -> pvkit_abi::cpuid::Features {
        self.bus.features()
    }

    fn register_region(
        &self,
        mem: &GuestRam,
        kind: u64,
        addr: u64,
        len: u64,
        flags: u64,
    ) -> CallReturn {
        self.call(mem, Hypercall::RegisterRegion, [kind, addr, len, flags])
    }

    fn ring_kick(&self, mem: &GuestRam, ring: u64) -> CallReturn {
        self.call(mem, Hypercall::RingKick, [ring, 0, 0, 0])
    }

    fn block_capacity(&self) -> CallReturn {
        self.call(&self.mem, Hypercall::BlockCapacity, [0; 4])
    }

    fn block_io(&self, mem: &GuestRam, addr: u64) -> CallReturn {
        self.call(mem, Hypercall::BlockIo, [addr, 0, 0, 0])
    }

    fn doorbell_ports(&self) -> DoorbellPort {
        self.bus.doorbell_ports().unwrap()
    }

    fn io_thread_running(&self) -> bool {
        self.bus.rings().unwrap().io_thread_running()
    }

    fn shutdown(&self) -> Result<(), String> {
        self.bus.shutdown()
    }

    fn stopper(&self) -> IoStopper {
        self.bus.stopper().unwrap()
    }

    fn clock_page(&self, owner: RegionOwner) -> Option<u64> {
        self.clock.as_ref().and_then(|c| c.page_gpa(owner))
    }

    fn unknown_doorbells(&self) -> u64 {
        self.bus.rings().unwrap().unknown_doorbells()
    }
}

const CONSOLE_RING: u64 = RegionId::Queue(CONSOLE_QUEUE).to_u64();
const BLOCK_RING: u64 = RegionId::Queue(BLOCK_QUEUE).to_u64();
const CLOCK: u64 = RegionId::Page(CLOCK_PAGE).to_u64();
/// The doorbell values (and `RingKick` arguments) of the two queues.
const CONSOLE_BELL: u32 = CONSOLE_QUEUE.to_u32();
const BLOCK_BELL: u32 = BLOCK_QUEUE.to_u32();
const DOORBELL: u64 = Transport::Doorbell as u64;
const EVENTFD: u64 = Transport::DoorbellEventfd as u64;
const POLL: u64 = Transport::HostPoll as u64;
const RING_A: u64 = 0x10_0000;
const RING_B: u64 = 0x11_0000;
const DATA: u64 = 0x20_0000;
const END: u64 = 8 << 20;

struct FixedClock;
impl ClockSource for FixedClock {
    fn sample(&self) -> Option<ClockSample> {
        Some(ClockSample {
            tsc: 1_000_000,
            system_ns: 5_000,
            tsc_khz: 2_000_000,
            stable: true,
        })
    }
}

/// KVM's ioeventfd, faked: remembers a clone of each registered eventfd by port and
/// datamatch value so the test can signal it the way KVM would on a guest doorbell write.
#[derive(Default)]
struct FakeIoEvents {
    live: Mutex<Vec<((u16, u32), EventFd)>>,
    unregistered: AtomicU64,
}

impl FakeIoEvents {
    /// A 32-bit write of `value` to the doorbell port, `times` times, as KVM handles it.
    fn ring(&self, value: u32, times: u64) {
        let live = self.live.lock().unwrap();
        let key = (pvkit_abi::ports::DOORBELL, value);
        let (_, fd) = live.iter().find(|(k, _)| *k == key).expect("registered");
        for _ in 0..times {
            fd.write(1).unwrap();
        }
    }
}

impl IoEventRegistrar for FakeIoEvents {
    fn register(&self, fd: &EventFd, port: u16, value: u32) -> io::Result<()> {
        let mut live = self.live.lock().unwrap();
        if live.iter().any(|(k, _)| *k == (port, value)) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        live.push(((port, value), fd.try_clone()?));
        Ok(())
    }

    fn unregister(&self, _fd: &EventFd, port: u16, value: u32) -> io::Result<()> {
        self.live
            .lock()
            .unwrap()
            .retain(|(k, _)| *k != (port, value));
        self.unregistered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A disk whose reads panic: to see the I/O thread report a panic.
struct PanickingDisk;
impl pvkit_devices::BlockBackend for PanickingDisk {
    fn len(&self) -> u64 {
        1 << 20
    }
    fn read_at(&mut self, _: u64, _: &mut [u8]) -> Result<(), BackendError> {
        panic!("disk exploded");
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

struct Harness {
    pv: Pv,
    mem: GuestRam,
    console: Console,
    io: Arc<FakeIoEvents>,
    fatal: Arc<Mutex<Vec<String>>>,
    disk: Option<SharedDisk>,
}

#[derive(Default)]
struct Opts {
    disk: Option<Box<dyn pvkit_devices::BlockBackend>>,
    clock: bool,
    eventfd: bool,
    kvmclock: bool,
}

fn harness(o: Opts) -> Harness {
    let mem = create_ram(8).unwrap();
    let console = Console::capture();
    let mut ledger = ExitLedger::new();
    let io = Arc::new(FakeIoEvents::default());
    let fatal = Arc::new(Mutex::new(Vec::new()));
    let f2 = Arc::clone(&fatal);
    let disk = o.disk.map(SharedDisk::new);
    let devices = assemble(
        PvConfig {
            disk: disk.clone(),
            clock: o
                .clock
                .then(|| Arc::new(FixedClock) as Arc<dyn ClockSource>),
            kvmclock: o.kvmclock,
            rings: Some((
                mem.clone(),
                RingsConfig {
                    ioevents: o
                        .eventfd
                        .then(|| Arc::clone(&io) as Arc<dyn IoEventRegistrar>),
                    on_fatal: Arc::new(move |m| f2.lock().unwrap().push(m)),
                },
            )),
            ..PvConfig::core(console.clone(), true)
        },
        &mut ledger,
    )
    .unwrap();
    let pv = Pv {
        mem: mem.clone(),
        bus: devices.bus,
        clock: devices.clock,
        ledger,
    };
    Harness {
        pv,
        mem,
        console,
        io,
        fatal,
        disk,
    }
}

fn with_disk() -> Opts {
    // Sector n holds the byte n.
    let bytes: Vec<u8> = (0..256 * 512).map(|i| (i / 512) as u8).collect();
    Opts {
        disk: Some(Box::new(MemBackend::from_vec(bytes))),
        ..Opts::default()
    }
}

fn all() -> Opts {
    Opts {
        clock: true,
        eventfd: true,
        kvmclock: true,
        ..with_disk()
    }
}

impl Harness {
    fn register(&mut self, kind: u64, addr: u64, len: u64, flags: u64) -> CallReturn {
        let mem = self.mem.clone();
        self.pv.register_region(&mem, kind, addr, len, flags)
    }

    fn kick(&mut self, ring: u64) -> CallReturn {
        let mem = self.mem.clone();
        self.pv.ring_kick(&mem, ring)
    }

    fn notifications(&self, name: &str) -> u64 {
        self.pv
            .ledger
            .snapshot()
            .notifications
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn header(&self, gpa: u64, field: u64) -> u32 {
        self.mem
            .load(GuestAddress(gpa + field), Ordering::Acquire)
            .unwrap()
    }
}

type ConsoleProducer = GuestProducer<ConsoleRequest, ConsoleResponse>;
type BlockProducer = GuestProducer<BlockRequest, BlockResponse>;

const RING_LEN: u64 = 0x1_0000;

fn console_ring(h: &Harness, gpa: u64, size: u32) -> ConsoleProducer {
    GuestProducer::init(&h.mem, gpa, size, 0).unwrap()
}

fn block_ring(h: &Harness, gpa: u64, size: u32) -> BlockProducer {
    GuestProducer::init(&h.mem, gpa, size, 0).unwrap()
}

fn say(h: &Harness, p: &mut ConsoleProducer, at: u64, text: &[u8], id: u32) {
    h.mem.write_slice(text, GuestAddress(at)).unwrap();
    p.push(
        &h.mem,
        ConsoleRequest {
            addr: at,
            len: text.len() as u32,
            id,
        },
    )
    .unwrap();
}

fn read_req(id: u64, sector: u64, addr: u64, sectors: u32) -> BlockRequest {
    let mut segments = [BlockSegment::default(); 8];
    segments[0] = BlockSegment {
        addr,
        len: sectors * 512,
        reserved: 0,
    };
    BlockRequest {
        id,
        op: BlockOp::Read as u32,
        nr_segments: 1,
        sector,
        segments,
    }
}

fn ok(v: u64) -> CallReturn {
    CallReturn::ok(v)
}

fn err(s: Status) -> CallReturn {
    CallReturn::err(s)
}

/// Waits (up to 5 s) for `n` responses on `p`.
fn wait_responses<Q: pvkit_pv::AbiPod, R: pvkit_pv::AbiPod>(
    h: &Harness,
    p: &mut GuestProducer<Q, R>,
    n: usize,
) -> Vec<R> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(p.take_responses(&h.mem).unwrap());
        assert!(
            Instant::now() < deadline,
            "only {} of {n} responses",
            got.len()
        );
        std::thread::yield_now();
    }
    got
}

/// Expected feature bits written out from docs/ABI.md's bit table (CONSOLE_RING 1 << 1,
/// BLOCK 1 << 2, BLOCK_RING 1 << 3, RING_EVENTFD 1 << 4, RING_POLL 1 << 5, CLOCK 1 << 6,
/// KVMCLOCK 1 << 8), not computed by the code under test.
const BASE_PV: u64 = 0x22;
/// The bits of the devices every VM has: CONSOLE (1 << 0) and BENCH (1 << 7).
const CORE: u64 = 0x81;

#[test]
fn features_follow_what_is_there() {
    let one = |o: Opts| harness(o).pv.features().bits() & !CORE;
    assert_eq!(harness(all()).pv.features().bits() & CORE, CORE);
    assert_eq!(one(Opts::default()), BASE_PV);
    assert_eq!(one(with_disk()), 0x2e);
    let eventfd = Opts {
        eventfd: true,
        ..Opts::default()
    };
    assert_eq!(one(eventfd), 0x32);
    let clock = Opts {
        clock: true,
        ..Opts::default()
    };
    assert_eq!(one(clock), 0x62);
    let kvmclock = Opts {
        kvmclock: true,
        ..Opts::default()
    };
    assert_eq!(one(kvmclock), 0x122);
    assert_eq!(one(all()), 0x17e);
}

#[test]
fn features_for_every_configuration() {
    // (block, eventfd, clock, kvmclock, expected bits): what the VM puts in CPUID and the
    // boot info, derived from the registered devices.
    for (block, eventfd, clock, kvmclock, want) in [
        (false, false, false, false, BASE_PV),
        (true, false, false, false, 0x02e),
        (false, true, false, false, 0x032),
        (true, true, false, false, 0x03e),
        (false, false, true, false, 0x062),
        (true, false, true, false, 0x06e),
        (false, true, true, false, 0x072),
        (true, true, true, false, 0x07e),
        (false, false, false, true, 0x122),
        (true, false, false, true, 0x12e),
        (false, true, false, true, 0x132),
        (true, true, false, true, 0x13e),
        (false, false, true, true, 0x162),
        (true, false, true, true, 0x16e),
        (false, true, true, true, 0x172),
        (true, true, true, true, 0x17e),
    ] {
        let o = Opts {
            clock,
            eventfd,
            kvmclock,
            ..if block { with_disk() } else { Opts::default() }
        };
        assert_eq!(
            harness(o).pv.features().bits(),
            want | CORE,
            "block {block} eventfd {eventfd} clock {clock} kvmclock {kvmclock}"
        );
    }
}

#[test]
fn registration_refuses_bad_arguments_and_missing_devices() {
    let mut h = harness(Opts::default());
    console_ring(&h, RING_A, 8);
    for (kind, addr, len, flags, want) in [
        (0x7_0000, RING_A, RING_LEN, DOORBELL, Status::EINVAL), // unknown class
        (
            CONSOLE_RING | 1 << 32,
            RING_A,
            RING_LEN,
            DOORBELL,
            Status::EINVAL,
        ),
        (u64::MAX, RING_A, RING_LEN, DOORBELL, Status::EINVAL),
        (0x1_0001, RING_A, RING_LEN, DOORBELL, Status::EOPNOTSUPP), // console queue 1
        (0x3_0000, RING_A, RING_LEN, DOORBELL, Status::EOPNOTSUPP), // no net device
        (0x1_8000, RING_A, RING_LEN, 0, Status::EOPNOTSUPP),        // no console page
        (CONSOLE_RING, RING_A, RING_LEN, 1 << 9 | 1, Status::EINVAL), // unknown flag
        (
            CONSOLE_RING,
            RING_A,
            RING_LEN,
            REGION_PER_VCPU | 1,
            Status::EINVAL,
        ), // per vCPU
        (CONSOLE_RING, RING_A, RING_LEN, 0, Status::EINVAL),        // unknown transport
        (CONSOLE_RING, RING_A, RING_LEN, 4, Status::EINVAL),
        (CONSOLE_RING, RING_A, RING_LEN, 1 << 32 | 1, Status::EINVAL),
        (CONSOLE_RING, RING_A, RING_LEN, EVENTFD, Status::EOPNOTSUPP), // no ioeventfd
        (BLOCK_RING, RING_A, RING_LEN, DOORBELL, Status::EOPNOTSUPP),  // no disk
        (CLOCK, 0x30_0000, 4096, 0, Status::EOPNOTSUPP),               // no clock source
        (CONSOLE_RING, RING_A + 8, RING_LEN, DOORBELL, Status::EINVAL), // misaligned
        (CONSOLE_RING, END, RING_LEN, DOORBELL, Status::EFAULT),       // outside RAM
        (CONSOLE_RING, END - 4096, 8192, DOORBELL, Status::EFAULT),    // crosses the end
        (CONSOLE_RING, !0xfff, 8192, DOORBELL, Status::EFAULT),        // wraps
        (CONSOLE_RING, RING_A, 100, DOORBELL, Status::EINVAL),         // too small for 8 slots
    ] {
        assert_eq!(
            h.register(kind, addr, len, flags),
            err(want),
            "kind {kind} addr {addr:#x} len {len} flags {flags:#x}"
        );
    }
    // An invalid ring size in the header.
    GuestProducer::<ConsoleRequest, ConsoleResponse>::init_raw_size(&h.mem, RING_B, 3, 0).unwrap();
    assert_eq!(
        h.register(CONSOLE_RING, RING_B, RING_LEN, DOORBELL),
        err(Status::EINVAL)
    );
    // Nothing was registered, and no thread started.
    assert_eq!(h.kick(CONSOLE_BELL.into()), err(Status::EINVAL));
    assert!(!h.pv.io_thread_running());
    // The same ring, valid, registers.
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, DOORBELL), ok(0));
    assert!(!h.pv.io_thread_running(), "a doorbell ring needs no thread");
}

#[test]
fn block_calls_need_a_disk() {
    let mut h = harness(Opts::default());
    let mem = h.mem.clone();
    assert_eq!(h.pv.block_capacity(), err(Status::EOPNOTSUPP));
    assert_eq!(h.pv.block_io(&mem, DATA), err(Status::EOPNOTSUPP));
    assert_eq!(h.kick(BLOCK_BELL.into()), err(Status::EOPNOTSUPP));
    for ring in [
        0x7_0000,
        0x2_8000,
        0x1_0000_0000 | u64::from(BLOCK_BELL),
        u64::MAX,
    ] {
        assert_eq!(h.kick(ring), err(Status::EINVAL), "ring {ring}");
    }
}

#[test]
fn block_io_reads_and_writes_the_shared_disk() {
    let mut h = harness(with_disk());
    let mem = h.mem.clone();
    assert_eq!(h.pv.block_capacity(), ok(256));
    // Read sectors 3..5 into DATA.
    let req = read_req(7, 3, DATA, 2);
    mem.write_obj(Wire(req), GuestAddress(0x30_0000)).unwrap();
    assert_eq!(h.pv.block_io(&mem, 0x30_0000), ok(1024));
    let mut buf = [0u8; 1024];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 3) && buf[512..].iter().all(|&b| b == 4));
    // Write sector 9 from a buffer of 0xee: the shared disk (what ATA and the op-log
    // verifier read) has it.
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    let mut w = read_req(8, 9, DATA, 1);
    w.op = BlockOp::Write as u32;
    mem.write_obj(Wire(w), GuestAddress(0x30_0000)).unwrap();
    assert_eq!(h.pv.block_io(&mem, 0x30_0000), ok(512));
    let mut s = [0u8; 512];
    crate::bench::DiskReader::read_sector(h.disk.as_mut().unwrap(), 9, &mut s).unwrap();
    assert_eq!(s, [0xee; 512]);
    // Hostile requests: statuses, no panic.
    assert_eq!(h.pv.block_io(&mem, END - 8), err(Status::EFAULT));
    assert_eq!(h.pv.block_io(&mem, u64::MAX), err(Status::EFAULT));
    let past = read_req(9, 256, DATA, 1);
    mem.write_obj(Wire(past), GuestAddress(0x30_0000)).unwrap();
    assert_eq!(h.pv.block_io(&mem, 0x30_0000), err(Status::ERANGE));
}

#[test]
fn doorbell_ring_is_serviced_in_the_port_write() {
    let mut h = harness(Opts::default());
    let mut p = console_ring(&h, RING_A, 8);
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, DOORBELL), ok(0));
    say(&h, &mut p, DATA, b"one ", 1);
    say(&h, &mut p, DATA + 64, b"two\n", 2);
    assert!(p.publish(&h.mem).unwrap(), "idle host asks for a doorbell");
    let mut bell = h.pv.doorbell_ports();
    // The console's queue id, 32 bits, to the one doorbell port.
    bell.write(0, &CONSOLE_BELL.to_le_bytes());
    // Responses are ready when the `out` retires: no waiting.
    let rsp = p.take_responses(&h.mem).unwrap();
    assert_eq!(rsp.len(), 2);
    assert_eq!((rsp[0].id, rsp[0].status, rsp[0].written), (1, 0, 4));
    assert_eq!(h.console.captured(), b"one two\n");
    // The block doorbell (no disk: no such queue) and unknown values or widths are
    // counted and ignored; reads float.
    assert_eq!(h.pv.unknown_doorbells(), 0);
    bell.write(0, &BLOCK_BELL.to_le_bytes());
    bell.write(0, &0x7_0000u32.to_le_bytes());
    bell.write(0, &0x1_8000u32.to_le_bytes());
    bell.write(0, &[0, 0]);
    bell.write(0, &[1]);
    assert_eq!(h.pv.unknown_doorbells(), 5);
    let mut d = [0u8; 2];
    bell.read(0, &mut d);
    assert_eq!(d, [0xff; 2]);
    // Nothing else was serviced.
    assert_eq!(
        h.console.captured(),
        b"one two
"
    );
    assert_eq!(
        h.notifications(NOTIFY_CONSOLE_RING),
        0,
        "no in-kernel notification"
    );
}

#[test]
fn re_registration_replaces_the_ring() {
    let mut h = harness(Opts::default());
    let mut a = console_ring(&h, RING_A, 4);
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, DOORBELL), ok(0));
    let mut b = console_ring(&h, RING_B, 8);
    assert_eq!(h.register(CONSOLE_RING, RING_B, RING_LEN, DOORBELL), ok(0));
    say(&h, &mut a, DATA, b"old", 1);
    a.publish(&h.mem).unwrap();
    say(&h, &mut b, DATA + 64, b"new", 2);
    b.publish(&h.mem).unwrap();
    assert_eq!(
        h.kick(CONSOLE_BELL.into()),
        ok(1),
        "only the new ring is serviced"
    );
    assert_eq!(h.console.captured(), b"new");
    assert!(a.take_responses(&h.mem).unwrap().is_empty());
    // A failed re-registration keeps the current ring.
    assert_eq!(
        h.register(CONSOLE_RING, RING_A + 1, RING_LEN, DOORBELL),
        err(Status::EINVAL)
    );
    say(&h, &mut b, DATA, b"!", 3);
    b.publish(&h.mem).unwrap();
    assert_eq!(h.kick(CONSOLE_BELL.into()), ok(1));
    assert_eq!(h.console.captured(), b"new!");
}

#[test]
fn requests_published_before_registration_are_served() {
    let mut h = harness(Opts::default());
    let mut p = console_ring(&h, RING_A, 8);
    say(&h, &mut p, DATA, b"early", 1);
    p.publish(&h.mem).unwrap();
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, DOORBELL), ok(0));
    assert_eq!(p.take_responses(&h.mem).unwrap().len(), 1);
    assert_eq!(h.console.captured(), b"early");
}

#[test]
fn a_broken_ring_is_not_serviced_and_does_not_panic() {
    let mut h = harness(Opts::default());
    let mut p = console_ring(&h, RING_A, 4);
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, DOORBELL), ok(0));
    say(&h, &mut p, DATA, b"x", 1);
    p.publish(&h.mem).unwrap();
    // The guest moves req_prod far past the host's consumer.
    h.mem
        .store(
            1000u32,
            GuestAddress(RING_A + offsets::REQ_PROD),
            Ordering::Release,
        )
        .unwrap();
    assert_eq!(h.kick(CONSOLE_BELL.into()), err(Status::EIO));
    assert_ne!(h.header(RING_A, offsets::HOST_FLAGS) & BROKEN, 0);
    assert_eq!(
        h.kick(CONSOLE_BELL.into()),
        err(Status::EIO),
        "stays broken"
    );
    h.pv.doorbell_ports().write(0, &CONSOLE_BELL.to_le_bytes());
    assert!(h.console.captured().is_empty());
    // Registering a fresh ring recovers.
    let mut q = console_ring(&h, RING_B, 4);
    assert_eq!(h.register(CONSOLE_RING, RING_B, RING_LEN, DOORBELL), ok(0));
    say(&h, &mut q, DATA, b"ok", 2);
    q.publish(&h.mem).unwrap();
    assert_eq!(h.kick(CONSOLE_BELL.into()), ok(1));
    assert_eq!(h.console.captured(), b"ok");
}

#[test]
fn polled_ring_is_served_by_the_io_thread_without_doorbells() {
    let mut h = harness(with_disk());
    let mut p = block_ring(&h, RING_A, 16);
    assert_eq!(h.register(BLOCK_RING, RING_A, RING_LEN, POLL), ok(0));
    assert!(h.pv.io_thread_running());
    assert_eq!(h.header(RING_A, offsets::HOST_FLAGS), HOST_POLLING);
    let mut rung = 0;
    for batch in 0..4u64 {
        for i in 0..3u64 {
            let n = batch * 3 + i;
            p.push(&h.mem, read_req(n, n, DATA + n * 512, 1)).unwrap();
        }
        if p.publish(&h.mem).unwrap() {
            rung += 1;
        }
        let rsp = wait_responses(&h, &mut p, 3);
        assert!(rsp.iter().all(|r| r.status == 0 && r.bytes == 512));
    }
    assert_eq!(rung, 0, "the guest never rings a polled ring");
    let mut buf = [0u8; 12 * 512];
    h.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    for (n, s) in buf.chunks(512).enumerate() {
        assert!(s.iter().all(|&b| b == n as u8), "sector {n}");
    }
    // Re-registered with a doorbell: the thread stops polling it.
    let mut q = block_ring(&h, RING_B, 4);
    assert_eq!(h.register(BLOCK_RING, RING_B, RING_LEN, DOORBELL), ok(0));
    assert_eq!(h.header(RING_B, offsets::HOST_FLAGS), 0);
    q.push(&h.mem, read_req(1, 1, DATA, 1)).unwrap();
    assert!(q.publish(&h.mem).unwrap(), "not polled any more: ring");
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        q.take_responses(&h.mem).unwrap().is_empty(),
        "nobody polls it"
    );
    h.pv.doorbell_ports().write(0, &BLOCK_BELL.to_le_bytes());
    assert_eq!(q.take_responses(&h.mem).unwrap().len(), 1);
    assert_eq!(h.pv.shutdown(), Ok(()));
    assert!(h.fatal.lock().unwrap().is_empty());
}

#[test]
fn eventfd_ring_counts_exact_notifications() {
    let mut h = harness(all());
    let mut p = console_ring(&h, RING_A, 8);
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, EVENTFD), ok(0));
    assert!(h.pv.io_thread_running());
    let port = CONSOLE_BELL;
    for round in 0..3u32 {
        say(&h, &mut p, DATA, b"ab", round);
        assert!(p.publish(&h.mem).unwrap(), "idle host asks for a doorbell");
        // What KVM does on the guest's `out`: signal the eventfd, in the kernel.
        h.io.ring(port, 1);
        let rsp = wait_responses(&h, &mut p, 1);
        assert_eq!(rsp[0].id, round);
    }
    assert_eq!(h.console.captured(), b"ababab");
    // The counter is bumped before the responses are published.
    assert_eq!(h.notifications(NOTIFY_CONSOLE_RING), 3);
    assert_eq!(h.notifications(NOTIFY_BLOCK_RING), 0);
    // Several signals before the thread reads the counter are all counted.
    say(&h, &mut p, DATA, b"c", 9);
    p.publish(&h.mem).unwrap();
    h.io.ring(port, 2);
    wait_responses(&h, &mut p, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.notifications(NOTIFY_CONSOLE_RING) < 5 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    // Doorbells the thread has not read yet when the guest switches transports are still
    // counted, exactly once.
    h.io.ring(port, 4);
    let mut r = console_ring(&h, RING_B, 8);
    assert_eq!(h.register(CONSOLE_RING, RING_B, RING_LEN, DOORBELL), ok(0));
    assert_eq!(h.notifications(NOTIFY_CONSOLE_RING), 9);
    assert_eq!(h.io.unregistered.load(Ordering::Relaxed), 1);
    say(&h, &mut r, DATA, b"-", 1);
    r.publish(&h.mem).unwrap();
    h.pv.doorbell_ports().write(0, &CONSOLE_BELL.to_le_bytes());
    assert_eq!(r.take_responses(&h.mem).unwrap().len(), 1);
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, EVENTFD), ok(0));
    // Re-registering with the same transport keeps the ioeventfd.
    let mut q = console_ring(&h, RING_B, 8);
    assert_eq!(h.register(CONSOLE_RING, RING_B, RING_LEN, EVENTFD), ok(0));
    assert_eq!(h.io.unregistered.load(Ordering::Relaxed), 1);
    say(&h, &mut q, DATA, b"d", 1);
    q.publish(&h.mem).unwrap();
    h.io.ring(port, 1);
    wait_responses(&h, &mut q, 1);
    // Switching to a doorbell unregisters it.
    assert_eq!(h.register(CONSOLE_RING, RING_B, RING_LEN, DOORBELL), ok(0));
    assert_eq!(h.io.unregistered.load(Ordering::Relaxed), 2);
    assert!(h.io.live.lock().unwrap().is_empty());
    // And back: registered again.
    assert_eq!(h.register(CONSOLE_RING, RING_B, RING_LEN, EVENTFD), ok(0));
    assert_eq!(h.io.live.lock().unwrap().len(), 1);
    assert_eq!(h.pv.shutdown(), Ok(()));
    assert!(h.io.live.lock().unwrap().is_empty(), "unregistered at stop");
}

#[test]
fn ring_kick_services_any_transport_and_reports_counts() {
    let mut h = harness(with_disk());
    let mut p = block_ring(&h, RING_A, 8);
    assert_eq!(h.register(BLOCK_RING, RING_A, RING_LEN, DOORBELL), ok(0));
    assert_eq!(h.kick(BLOCK_BELL.into()), ok(0));
    for n in 0..5 {
        p.push(&h.mem, read_req(n, n, DATA + n * 512, 1)).unwrap();
    }
    p.publish(&h.mem).unwrap();
    assert_eq!(h.kick(BLOCK_BELL.into()), ok(5));
    assert_eq!(p.take_responses(&h.mem).unwrap().len(), 5);
}

#[test]
fn clock_page_is_written_at_registration() {
    let mut h = harness(all());
    assert_eq!(h.register(CLOCK, 0x30_0008, 4096, 0), err(Status::EINVAL));
    assert_eq!(h.register(CLOCK, 0x30_0000, 16, 0), err(Status::EINVAL));
    assert_eq!(h.register(CLOCK, END, 4096, 0), err(Status::EFAULT));
    assert!(h.pv.clock_page(RegionOwner::Vm).is_none());
    // A transport on a page, unknown flags: refused.
    assert_eq!(h.register(CLOCK, 0x30_0000, 4096, 1), err(Status::EINVAL));
    assert_eq!(h.register(CLOCK, 0x30_0000, 4096, 7), err(Status::EINVAL));
    assert_eq!(
        h.register(CLOCK, 0x30_0000, 4096, 1 << 9),
        err(Status::EINVAL)
    );
    assert_eq!(h.register(CLOCK, 0x30_0000, 4096, 0), ok(0));
    let c = h
        .mem
        .read_obj::<Wire<PvClock>>(GuestAddress(0x30_0000))
        .unwrap()
        .0;
    let (mul, shift) = PvClock::scale_for_khz(2_000_000);
    assert_eq!(c.version % 2, 0);
    assert!(c.version >= 2);
    assert_eq!((c.tsc_timestamp, c.system_time), (1_000_000, 5_000));
    assert_eq!((c.tsc_to_system_mul, c.tsc_shift), (mul, shift));
    assert_eq!(c.flags, TSC_STABLE);
    // 2 GHz: 2000 ticks later is 1 µs later.
    assert_eq!(c.nanoseconds(1_002_000), 6_000);
    // Re-registration moves it.
    assert_eq!(h.register(CLOCK, 0x31_0000, 4096, 0), ok(0));
    assert_eq!(h.pv.clock_page(RegionOwner::Vm), Some(0x31_0000));
    assert_eq!(h.pv.clock_page(RegionOwner::Vcpu(0)), None);
}

#[test]
fn per_vcpu_clock_pages_are_kept_by_the_calling_vcpu() {
    let h = harness(all());
    // vCPU 0 and vCPU 1 each register their own clock page; the VM's page is separate.
    let from = |vcpu: u32, addr: u64, flags: u64| {
        h.pv.bus.dispatch(
            &h.mem,
            &h.pv.ledger,
            vcpu,
            Hypercall::RegisterRegion,
            [CLOCK, addr, 4096, flags],
        )
    };
    assert_eq!(from(0, 0x30_0000, REGION_PER_VCPU), ok(0));
    assert_eq!(from(1, 0x31_0000, REGION_PER_VCPU), ok(0));
    assert_eq!(h.pv.clock_page(RegionOwner::Vcpu(0)), Some(0x30_0000));
    assert_eq!(h.pv.clock_page(RegionOwner::Vcpu(1)), Some(0x31_0000));
    assert_eq!(h.pv.clock_page(RegionOwner::Vm), None);
    // Both pages were written.
    for at in [0x30_0000, 0x31_0000] {
        let c = h.mem.read_obj::<Wire<PvClock>>(GuestAddress(at)).unwrap().0;
        assert_eq!(
            (c.tsc_timestamp, c.system_time),
            (1_000_000, 5_000),
            "{at:#x}"
        );
    }
    // vCPU 1 re-registering moves only its own page; a failed registration changes nothing.
    assert_eq!(from(1, 0x32_0000, REGION_PER_VCPU), ok(0));
    assert_eq!(from(1, END, REGION_PER_VCPU), err(Status::EFAULT));
    assert_eq!(h.pv.clock_page(RegionOwner::Vcpu(1)), Some(0x32_0000));
    assert_eq!(h.pv.clock_page(RegionOwner::Vcpu(0)), Some(0x30_0000));
    // Without the flag, vCPU 1 registers the VM's page, not its own.
    assert_eq!(from(1, 0x33_0000, 0), ok(0));
    assert_eq!(h.pv.clock_page(RegionOwner::Vm), Some(0x33_0000));
    assert_eq!(h.pv.clock_page(RegionOwner::Vcpu(1)), Some(0x32_0000));
    // Queues are the VM's: a per-vCPU ring is refused from any vCPU.
    for vcpu in [0, 1] {
        assert_eq!(
            h.pv.bus.dispatch(
                &h.mem,
                &h.pv.ledger,
                vcpu,
                Hypercall::RegisterRegion,
                [CONSOLE_RING, RING_A, RING_LEN, REGION_PER_VCPU | DOORBELL],
            ),
            err(Status::EINVAL)
        );
    }
}

#[test]
fn eventfds_match_the_queue_id_on_the_one_doorbell_port() {
    let mut h = harness(all());
    console_ring(&h, RING_A, 8);
    block_ring(&h, RING_B, 8);
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, EVENTFD), ok(0));
    assert_eq!(h.register(BLOCK_RING, RING_B, RING_LEN, EVENTFD), ok(0));
    let mut keys: Vec<(u16, u32)> = h.io.live.lock().unwrap().iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![(0x510, 0x1_0000), (0x510, 0x2_0000)],
        "one ioeventfd per queue, all on port 0x510, datamatch = device << 16 | queue"
    );
    assert_eq!(h.pv.shutdown(), Ok(()));
}

#[test]
fn tsc_clock_pairs_the_tsc_with_vm_time() {
    let c = TscClock::new(VmClock::start(), 2_000_000, 5u64.wrapping_neg());
    let before = host_tsc();
    let s = c.sample().unwrap();
    let after = host_tsc();
    let tsc = s.tsc.wrapping_add(5);
    assert!(before <= tsc && tsc <= after);
    assert!(s.stable);
    assert_eq!(s.tsc_khz, 2_000_000);
    assert!(s.system_ns < 1_000_000_000);
}

#[test]
fn io_thread_panic_is_reported_not_hung() {
    let mut h = harness(Opts {
        disk: Some(Box::new(PanickingDisk)),
        ..Opts::default()
    });
    let mut p = block_ring(&h, RING_A, 4);
    assert_eq!(h.register(BLOCK_RING, RING_A, RING_LEN, POLL), ok(0));
    p.push(&h.mem, read_req(1, 0, DATA, 1)).unwrap();
    p.publish(&h.mem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.fatal.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the panic was not reported");
        std::thread::yield_now();
    }
    let msg = h.fatal.lock().unwrap()[0].clone();
    assert!(
        msg.contains("panicked") && msg.contains("disk exploded"),
        "{msg}"
    );
    assert_eq!(h.pv.shutdown(), Err(msg));
    // The vCPU side keeps working (poisoned locks are recovered).
    assert_eq!(h.pv.block_capacity(), ok(2048));
}

#[test]
fn io_thread_lifecycle() {
    let h = harness(with_disk());
    assert!(!h.pv.io_thread_running());
    assert_eq!(h.pv.shutdown(), Ok(()), "stopping a thread never started");
    let mut h = harness(with_disk());
    block_ring(&h, RING_A, 4);
    assert_eq!(h.register(BLOCK_RING, RING_A, RING_LEN, POLL), ok(0));
    assert!(h.pv.io_thread_running());
    let t = Instant::now();
    assert_eq!(h.pv.shutdown(), Ok(()));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a polling thread stops at once"
    );
    assert_eq!(h.pv.shutdown(), Ok(()), "idempotent");
    // No thread can be started after the stop: the guest is told to retry.
    console_ring(&h, RING_B, 4);
    assert_eq!(
        h.register(CONSOLE_RING, RING_B, RING_LEN, POLL),
        err(Status::EAGAIN)
    );
    // A stopper from another thread ends a waiting thread; dropping joins it.
    let mut h = harness(all());
    console_ring(&h, RING_A, 4);
    assert_eq!(h.register(CONSOLE_RING, RING_A, RING_LEN, EVENTFD), ok(0));
    let s = h.pv.stopper();
    std::thread::spawn(move || s.stop()).join().unwrap();
    drop(h);
}

#[test]
fn a_second_device_for_a_number_or_a_region_is_refused() {
    use super::console::PvConsole;
    use super::BusError;
    let mut bus = HypercallBus::new();
    bus.insert(Arc::new(PvConsole::new(Console::capture())))
        .unwrap();
    let e = bus
        .insert(Arc::new(PvConsole::new(Console::capture())))
        .unwrap_err();
    assert!(
        matches!(
            e,
            BusError::CallTaken {
                call: "console_write",
                first: "console",
                second: "console"
            }
        ),
        "{e:?}"
    );
    bus.insert(Arc::new(PvClockDevice::new(None, false)))
        .unwrap();
    let e = bus
        .insert(Arc::new(PvClockDevice::new(None, true)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            BusError::RegionTaken {
                region: RegionId::Page(CLOCK_PAGE),
                ..
            }
        ),
        "{e:?}"
    );
    // The refused devices left no trace: the features are the first two devices' only.
    assert_eq!(bus.features().bits(), 0x01, "CONSOLE (1 << 0) only");
    let mut ledger = ExitLedger::new();
    let config = RingsConfig {
        ioevents: None,
        on_fatal: Arc::new(|_| {}),
    };
    bus.with_rings(create_ram(8).unwrap(), config, &mut ledger)
        .unwrap();
    // CONSOLE | CONSOLE_RING (1 << 1) | RING_POLL (1 << 5) once the rings exist.
    assert_eq!(bus.features().bits(), 0x23);
    let e = bus
        .insert(Arc::new(PvClockDevice::new(None, true)))
        .unwrap_err();
    assert!(matches!(e, BusError::Late("clock")), "{e:?}");
}
