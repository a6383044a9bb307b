//! `net=`: the emulated NE2000 driven by interrupts, as a network peer (see [`proto`]).
//!
//! The card is probed with the polling driver of `pvkit-guest` ([`Ne2000`]); then its
//! receive interrupts are unmasked (`IMR = PRX | OVW`), IRQ 9 is routed through the IOAPIC
//! to [`NIC_VECTOR`] (edge-triggered) and the LAPIC enabled (x2APIC when offered, the PIC
//! masked). The kernel idles with `sti; hlt` and the handler does the receive work: it
//! drains the receive ring (which acknowledges `PRX` on the card), answers what asks for an
//! answer, then sends the LAPIC EOI. Everything else runs with interrupts disabled, so the
//! handler (which only runs inside the `sti; hlt` window) and the main code never touch the
//! card at the same time.
//!
//! | mode | what it does |
//! |---|---|
//! | `net=serve` | answers ARP, ICMP echo and UDP echo (port 7) on `ip=`, until a UDP datagram to port 9999 arrives |
//! | `net=echo count=N size=S` | resolves `peer=` by ARP, then `N` times: a UDP datagram of `S` bytes to the peer's port 7, and waits (halted) for its echo |
//! | `net=send count=N size=S` | resolves `peer=`, then sends `N` datagrams of `S` bytes to the peer's discard port (9) back to back and prints the rate |
//! | `net=ring id=K members=N` | one member of a ring of guests ([`ring`]): waits for the ring's message, adds `K`, passes it on to `peer=`; member `N` checks the sum |
//!
//! Defaults: `ip=10.0.2.15`, `peer=10.0.2.2`, `count=10`, `size=18` (a 60-byte frame, the
//! Ethernet minimum). At the end each mode masks the card's interrupts and prints
//! `net: done irqs=K frames=F ...`, `K` being the interrupts the handler took.
//!
//! Port exits of one `net=send` datagram: the driver's transmit, `12 + ceil(L/2)` for a
//! frame of `L >= 60` bytes (a `rep outsw` exits once per word on KVM; see
//! `pvkit_guest::ne2000`). No interrupt is raised by a transmit (`PTX` stays masked).

mod irq;
pub mod proto;
pub mod ring;

use core::cell::UnsafeCell;

use proto::{Proto, DISCARD_PORT, ECHO_PORT};
use pvkit_abi::boot::BootInfo;
use pvkit_guest::ne2000::{Ne2000, Ne2000Error, IMR_RX, IO_BASE, MAX_FRAME};
use pvkit_guest::port::Pio;

/// The IDT vector of the NIC's interrupt.
pub const NIC_VECTOR: u8 = 0x30;
/// The NE2000's ISA IRQ (IOAPIC pin).
pub const NIC_IRQ: u8 = 9;
/// Most frames one interrupt drains before it returns (the ring holds fewer).
const DRAIN_LIMIT: u32 = 1024;

/// The `net=` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer requests until told to stop.
    Serve,
    /// UDP round trips with the peer.
    Echo,
    /// UDP datagrams to the peer's discard port.
    Send,
    /// A member of a ring of guests ([`ring`]).
    Ring,
}

/// `net=… ip=… peer=… count=… size=…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetArgs {
    /// The mode.
    pub mode: Mode,
    /// Our address.
    pub ip: [u8; 4],
    /// The peer's.
    pub peer: [u8; 4],
    /// Datagrams to send.
    pub count: u64,
    /// UDP payload bytes.
    pub size: usize,
    /// `net=ring`: this member's place in the ring, and the ring's memory use.
    pub ring: ring::RingArgs,
}

impl NetArgs {
    /// The defaults for `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            ip: [10, 0, 2, 15],
            peer: [10, 0, 2, 2],
            count: 10,
            size: 18,
            ring: ring::RingArgs::new(),
        }
    }
}

impl Mode {
    /// Parses a `net=` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "serve" => Some(Mode::Serve),
            "echo" => Some(Mode::Echo),
            "send" => Some(Mode::Send),
            "ring" => Some(Mode::Ring),
            _ => None,
        }
    }
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A frame buffer, page-aligned so a `rep insw` of a frame stays in one page.
#[repr(C, align(4096))]
struct Frame([u8; 4096]);

struct State {
    nic: Option<Ne2000<Pio>>,
    proto: Proto,
    rx: Frame,
    tx: Frame,
    irqs: u64,
    frames: u64,
    errors: u64,
}

struct Global(UnsafeCell<State>);
// SAFETY: one vCPU; the state is used by the main code only with interrupts disabled and
// by the handler only inside the main code's `sti; hlt` window (see the module docs).
unsafe impl Sync for Global {}

static STATE: Global = Global(UnsafeCell::new(State {
    nic: None,
    proto: Proto::new([0; 6], [0; 4], [0; 4]),
    rx: Frame([0; 4096]),
    tx: Frame([0; 4096]),
    irqs: 0,
    frames: 0,
    errors: 0,
}));

/// The state. Callers keep to the rule of the module docs, so there is only ever one
/// reference in use.
#[allow(clippy::mut_from_ref)]
fn state() -> &'static mut State {
    // SAFETY: see `Global`: the main code and the handler never run at the same time.
    unsafe { &mut *STATE.0.get() }
}

impl State {
    /// Drains the receive ring, answering what asks for it.
    fn service(&mut self) {
        let State {
            nic,
            proto,
            rx,
            frames,
            errors,
            ..
        } = self;
        let Some(nic) = nic.as_mut() else { return };
        for _ in 0..DRAIN_LIMIT {
            match nic.receive(&mut rx.0[..MAX_FRAME]) {
                Ok(Some(n)) => {
                    *frames += 1;
                    if let Some(len) = proto.handle(&mut rx.0[..n]) {
                        if nic.transmit(&rx.0[..len]).is_err() {
                            *errors += 1;
                        }
                    }
                }
                Ok(None) => return,
                Err(Ne2000Error::Overflow) => {
                    // The driver re-initialised the card, which masked its interrupts.
                    *errors += 1;
                    nic.set_interrupt_mask(IMR_RX);
                }
                Err(_) => *errors += 1,
            }
        }
    }

    fn send(&mut self, len: usize) {
        let State {
            nic, tx, errors, ..
        } = self;
        if let Some(nic) = nic.as_mut() {
            if nic.transmit(&tx.0[..len]).is_err() {
                *errors += 1;
            }
        }
    }
}

/// The NIC's interrupt handler (called by the entry stub in [`irq`]).
extern "C" fn nic_interrupt() {
    let s = state();
    s.irqs += 1;
    s.service();
    irq::eoi();
}

/// Halts until `done` holds, woken by interrupts.
fn wait_until(done: impl Fn(&State) -> bool) {
    while !done(state()) {
        irq::wait_for_interrupt();
    }
}

/// Runs `net=` and ends the VM.
pub fn run(args: NetArgs, boot: &BootInfo) -> ! {
    irq::cli();
    // SAFETY: ring 0; the ports 0x300..0x320 belong to the NE2000, whose remote DMA only
    // touches card memory.
    let nic = match Ne2000::probe(unsafe { Pio::new() }, IO_BASE) {
        Ok(nic) => nic,
        Err(e) => panic!("net: no NE2000 at {IO_BASE:#x}: {e:?}"),
    };
    let mac = nic.mac();
    irq::install(NIC_VECTOR);
    let x2apic = irq::init_lapic();
    irq::route_irq(NIC_IRQ, NIC_VECTOR);
    let s = state();
    s.proto = Proto::new(mac, args.ip, args.peer);
    s.nic = Some(nic);
    if let Some(nic) = s.nic.as_mut() {
        nic.set_interrupt_mask(IMR_RX);
    }
    let [a, b, c, d] = args.ip;
    println!(
        "net: NE2000 {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} ip {a}.{b}.{c}.{d} irq {NIC_IRQ} vector {NIC_VECTOR:#x} {}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
        if x2apic { "x2apic" } else { "xapic" }
    );
    let mut status = 0;
    match args.mode {
        Mode::Serve => wait_until(|s| s.proto.done),
        Mode::Ring => status = ring::run(&args.ring, boot),
        Mode::Echo | Mode::Send => {
            let s = state();
            let len = s.proto.arp_request(&mut s.tx.0);
            s.send(len);
            wait_until(|s| s.proto.peer_mac.is_some());
            let (port, echo) = match args.mode {
                Mode::Echo => (ECHO_PORT, true),
                _ => (DISCARD_PORT, false),
            };
            let t0 = pvkit_guest::tsc::rdtsc();
            for i in 0..args.count {
                let s = state();
                let len = s.proto.udp_datagram(&mut s.tx.0, port, args.size, i as u16);
                s.send(len);
                if echo {
                    wait_until(|s| s.proto.counts.echoes > i);
                }
            }
            let cycles = pvkit_guest::tsc::rdtsc().saturating_sub(t0).max(1);
            let per_s = args.count * boot.tsc_khz * 1000 / cycles;
            println!(
                "net: {} {} datagrams of {} bytes in {cycles} TSC cycles: {per_s} per second",
                if echo { "echoed" } else { "sent" },
                args.count,
                args.size
            );
        }
    }
    let s = state();
    if let Some(nic) = s.nic.as_mut() {
        nic.set_interrupt_mask(0);
    }
    let c = s.proto.counts;
    println!(
        "net: done irqs={} frames={} arp={} icmp={} udp={} echoes={} no_reply={} errors={}",
        s.irqs, s.frames, c.arp, c.icmp, c.udp, c.echoes, c.no_reply, s.errors
    );
    crate::exit(status)
}
