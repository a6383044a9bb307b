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
//! When the host offers the PV NIC (`pvkit run --nic pv`), the same modes run over it
//! instead ([`pv`]), driven as `pvnet=hypercall|doorbell|eventfd|poll|irq` says.
//!
//! Defaults: `ip=10.0.2.15`, `peer=10.0.2.2`, `count=10`, `size=18` (a 60-byte frame, the
//! Ethernet minimum). At the end each mode masks the card's interrupts and prints
//! `net: done irqs=K frames=F ...`, `K` being the interrupts the handler took.
//!
//! Port exits of one `net=send` datagram: the driver's transmit, `12 + ceil(L/2)` for a
//! frame of `L >= 60` bytes (a `rep outsw` exits once per word on KVM; see
//! `pvkit_guest::ne2000`). No interrupt is raised by a transmit (`PTX` stays masked).

pub mod irq;
pub mod link;
pub mod proto;
pub mod pv;
pub mod ring;

pub use pv::PvPath;

use core::cell::UnsafeCell;

use link::{Link, LinkCounts};
use proto::Proto;
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
    /// How the PV NIC is driven (`pvnet=`), when the host offers one.
    pub pv: pv::PvPath,
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
            pv: pv::PvPath::Doorbell,
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

/// The NE2000 as a [`Link`]: its state is [`STATE`], shared with the interrupt handler.
#[derive(Clone, Copy, Debug)]
pub struct Ne2000Link;

impl Link for Ne2000Link {
    fn proto(&mut self) -> &mut Proto {
        &mut state().proto
    }

    fn send(&mut self, _more: bool, build: &mut dyn FnMut(&Proto, &mut [u8]) -> usize) {
        let s = state();
        let len = build(&s.proto, &mut s.tx.0);
        s.send(len);
    }

    fn send_static(&mut self, _more: bool, frame: &'static [u8]) {
        let s = state();
        if let Some(nic) = s.nic.as_mut() {
            if nic.transmit(frame).is_err() {
                s.errors += 1;
            }
        }
    }

    fn wait(&mut self, done: &dyn Fn(&Proto) -> bool) {
        wait_until(|s| done(&s.proto));
    }

    fn counts(&self) -> LinkCounts {
        let s = state();
        LinkCounts {
            irqs: s.irqs,
            frames: s.frames,
            errors: s.errors,
        }
    }

    fn finish(&mut self) -> LinkCounts {
        let s = state();
        if let Some(nic) = s.nic.as_mut() {
            nic.set_interrupt_mask(0);
        }
        // Done with the card: the shared interrupt handler no longer drains it (another
        // NIC may raise the same vector next).
        s.nic = None;
        LinkCounts {
            irqs: s.irqs,
            frames: s.frames,
            errors: s.errors,
        }
    }
}

/// Routes IOAPIC pin `gsi` to [`NIC_VECTOR`], whose handler counts and acknowledges (and
/// drains the NE2000 if one is in use): the interrupt plumbing of the `net=` modes, for
/// other devices that complete by interrupt (`blkirq`).
pub fn route_interrupt(gsi: u8) {
    irq::cli();
    irq::install(NIC_VECTOR);
    irq::init_lapic();
    irq::route_irq(gsi, NIC_VECTOR);
}

/// Interrupts the [`NIC_VECTOR`] handler took so far.
pub fn interrupts_handled() -> u64 {
    state().irqs
}

/// `sti; hlt; cli`: waits for an interrupt.
pub fn wait_for_interrupt() {
    irq::wait_for_interrupt();
}

/// Probes the NE2000 and sets it up for interrupts (IRQ 9 → [`NIC_VECTOR`], receive
/// interrupts unmasked); `None` if there is no card.
pub fn ne2000_link(args: &NetArgs) -> Option<Ne2000Link> {
    irq::cli();
    // SAFETY: ring 0; the ports 0x300..0x320 belong to the NE2000, whose remote DMA only
    // touches card memory.
    let nic = Ne2000::probe(unsafe { Pio::new() }, IO_BASE).ok()?;
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
    Some(Ne2000Link)
}

/// Runs `net=` over the PV NIC when the host offers one, else over the NE2000, and ends
/// the VM (with status 1 when a `net=ring` member found the ring wrong).
pub fn run(args: NetArgs, boot: &BootInfo) -> ! {
    irq::cli();
    if pv::offered() {
        let mut link = pv::PvLink::init(&args);
        let status = link::drive(&mut link, &args, boot);
        crate::exit(status)
    }
    let Some(mut link) = ne2000_link(&args) else {
        panic!("net: no NE2000 at {IO_BASE:#x} and no PV NIC");
    };
    let status = link::drive(&mut link, &args, boot);
    crate::exit(status)
}
