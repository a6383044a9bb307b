//! The PV NIC as a [`Link`]: `pvkit_guest::pv_net` over two rings of [`SLOTS`] slots, one
//! 2 KiB buffer per slot, driven as `pvnet=` says ([`PvPath`]).
//!
//! | `pvnet=`    | transmit                                   | receive                        |
//! |-------------|--------------------------------------------|--------------------------------|
//! | `hypercall` | `NetSend`: one exit per frame              | posted buffers, polled         |
//! | `doorbell`  | TX ring, doorbell exit when the host asks  | posted buffers, polled         |
//! | `eventfd`   | TX ring, doorbell absorbed by an ioeventfd | posted buffers, polled         |
//! | `poll`      | TX ring polled by a host thread: no exit   | RX ring polled by the host too |
//! | `irq`       | as `doorbell`                              | completion interrupt: `hlt`    |
//!
//! With `irq` the receive ring is bound to GSI [`PV_RX_GSI`] (`QueueInterrupt`, feature
//! `RING_IRQ`), routed through the IOAPIC to the NIC vector, and the kernel idles in
//! `sti; hlt`: the handler only counts and acknowledges (LAPIC EOI); the frames are taken
//! after the wake-up, then `rsp_event` is re-armed (event index: one interrupt per batch
//! of frames the kernel waited for, none while it is busy).
//!
//! A frame stays in its buffer until its TX response: the buffer of TX slot `i` is only
//! reused once the ring has a free slot, i.e. once slot `i`'s response was consumed.
//! Frames queued with `more` are published in one batch (one doorbell at most) when the
//! ring is full or the last one is queued. Waiting for a frame spins on the RX ring's
//! `rsp_prod`: the host fills posted buffers by itself (the loopback answers during the
//! transmit, a TAP device's frames arrive from the VMM's event loop).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use pvkit_abi::cpuid::Features;
use pvkit_abi::net::MAX_FRAME_LEN;
use pvkit_abi::ring::Transport;
use pvkit_guest::pv_net::PvNet;

use super::link::{Link, LinkCounts};
use super::proto::Proto;
use super::NetArgs;
use crate::statics::{Exclusive, Pages};

/// Slots per ring (and buffers per direction).
pub const SLOTS: u32 = 32;
/// Bytes per frame buffer (at least `MAX_FRAME_LEN`).
const BUF: usize = 2048;
const BUFS: usize = BUF * SLOTS as usize;
const _: () = assert!(BUF >= MAX_FRAME_LEN as usize);

/// Ring pages: two per [`PvLink::init`] (each registration gets fresh memory, as the ring
/// ABI asks), so a kernel can set the NIC up this many times over.
const RING_PAGES: usize = 16;
static RINGS: [Exclusive<Pages<4096>>; RING_PAGES] =
    [const { Exclusive::new(Pages::zeroed()) }; RING_PAGES];
static NEXT_RING: AtomicUsize = AtomicUsize::new(0);

/// The frame buffers, shared by successive links (one link at a time).
struct Buffers(UnsafeCell<Pages<BUFS>>);
// SAFETY: used by one link at a time on one CPU (see `PvLink::init`).
unsafe impl Sync for Buffers {}
static TX_BUFS: Buffers = Buffers(UnsafeCell::new(Pages::zeroed()));
static RX_BUFS: Buffers = Buffers(UnsafeCell::new(Pages::zeroed()));

/// The next unused ring page.
fn ring_page() -> &'static mut [u8] {
    let i = NEXT_RING.fetch_add(1, Ordering::Relaxed);
    match RINGS.get(i) {
        Some(p) => &mut p.take().0,
        None => panic!("net: out of PV ring pages ({RING_PAGES})"),
    }
}

/// How the PV NIC is driven (`pvnet=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvPath {
    /// `NetSend` per frame.
    Hypercall,
    /// Rings, doorbell exits.
    Doorbell,
    /// Rings, doorbells absorbed by ioeventfds.
    Eventfd,
    /// Rings polled by the host.
    Poll,
    /// Rings with doorbells; received frames interrupt (the kernel halts meanwhile).
    Irq,
}

/// The GSI (IOAPIC pin) the receive ring is bound to with `pvnet=irq`.
pub const PV_RX_GSI: u8 = 16;

impl PvPath {
    /// Parses a `pvnet=` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hypercall" => Some(PvPath::Hypercall),
            "doorbell" => Some(PvPath::Doorbell),
            "eventfd" => Some(PvPath::Eventfd),
            "poll" => Some(PvPath::Poll),
            "irq" => Some(PvPath::Irq),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PvPath::Hypercall => "hypercall",
            PvPath::Doorbell => "doorbell",
            PvPath::Eventfd => "eventfd",
            PvPath::Poll => "poll",
            PvPath::Irq => "irq",
        }
    }

    fn transport(self) -> Transport {
        match self {
            PvPath::Hypercall | PvPath::Doorbell | PvPath::Irq => Transport::Doorbell,
            PvPath::Eventfd => Transport::DoorbellEventfd,
            PvPath::Poll => Transport::HostPoll,
        }
    }
}

/// Whether the host offers the PV NIC with its rings.
pub fn offered() -> bool {
    pvkit_guest::hypercall::features().contains(Features::NET | Features::NET_RING)
}

/// The PV NIC driven by the kernel.
pub struct PvLink {
    nic: PvNet,
    path: PvPath,
    proto: Proto,
    tx: *mut u8,
    rx: *mut u8,
    /// Buffers reposted since the last RX flush.
    reposted: bool,
    /// The frame every free TX slot's template points at ([`PvLink::send_repeated`]);
    /// `None` once another send wrote a slot.
    template: Option<(*const u8, usize)>,
    counts: LinkCounts,
}

impl PvLink {
    /// Registers fresh rings (replacing earlier ones), posts every receive buffer; panics
    /// (ends the VM) if the host refuses. One link at a time: the previous one must have
    /// been [finished](Link::finish) (its frames sent, its buffers no longer posted).
    pub fn init(args: &NetArgs) -> Self {
        let transport = args.pv.transport();
        let nic = match PvNet::init(ring_page(), ring_page(), SLOTS, transport) {
            Ok(n) => n,
            Err(e) => panic!("net: PV NIC set-up failed: {e:?}"),
        };
        let mac = nic.info().mac;
        let mut link = PvLink {
            nic,
            path: args.pv,
            proto: Proto::new(mac, args.ip, args.peer),
            tx: TX_BUFS.0.get().cast(),
            rx: RX_BUFS.0.get().cast(),
            reposted: false,
            template: None,
            counts: LinkCounts::default(),
        };
        if link.path == PvPath::Irq {
            if !pvkit_guest::hypercall::features().contains(Features::RING_IRQ) {
                panic!("net: pvnet=irq but the host offers no RING_IRQ");
            }
            super::irq::install(super::NIC_VECTOR);
            super::irq::init_lapic();
            super::irq::route_irq(PV_RX_GSI, super::NIC_VECTOR);
            if let Err(e) = link.nic.bind_rx_interrupt(u32::from(PV_RX_GSI)) {
                panic!("net: QueueInterrupt refused: {e:?}");
            }
        }
        for id in 0..SLOTS {
            link.repost(id);
        }
        link.flush_rx();
        let [a, b, c, d] = args.ip;
        println!(
            "net: PV NIC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} ip {a}.{b}.{c}.{d} path {}",
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5],
            link.path.name()
        );
        link
    }

    /// Posts receive buffer `id` again (published by [`PvLink::flush_rx`]).
    fn repost(&mut self, id: u32) {
        let off = (id % SLOTS) as usize * BUF;
        // SAFETY: buffer `id` lies inside RX_BUFS (taken for ever by this link); the kernel
        // does not touch it again until its RX response.
        let r = unsafe { self.nic.post_rx(id % SLOTS, self.rx.add(off), BUF as u32) };
        if r.is_err() {
            self.counts.errors += 1;
        }
        self.reposted = true;
    }

    fn flush_rx(&mut self) {
        if core::mem::take(&mut self.reposted) {
            self.nic.flush_rx();
        }
    }

    /// Consumes TX completions (their slots become free); errors are counted.
    fn reclaim(&mut self) -> u32 {
        let mut errors = 0;
        let n = self.nic.poll_tx(|_, r| errors += u64::from(r.is_err()));
        self.counts.errors += errors;
        n
    }

    /// Sends the `len` bytes now in TX buffer `slot` (ring paths) or at `frame` (`NetSend`).
    fn transmit(&mut self, build: &mut dyn FnMut(&Proto, &mut [u8]) -> usize, more: bool) {
        if self.path == PvPath::Hypercall {
            // SAFETY: TX buffer 0 (NetSend reads it during the call only).
            let buf = unsafe { core::slice::from_raw_parts_mut(self.tx, BUF) };
            let len = build(&self.proto, buf);
            if pvkit_guest::hypercall::net_send(&buf[..len]).is_err() {
                self.counts.errors += 1;
            }
            return;
        }
        self.free_slot();
        self.template = None;
        let slot = (self.nic.tx_ring().next_index() % SLOTS) as usize;
        // SAFETY: TX buffer `slot` lies inside TX_BUFS and is free: its ring slot's response
        // was consumed (the ring has a free slot, and buffers follow slots).
        let buf = unsafe { core::slice::from_raw_parts_mut(self.tx.add(slot * BUF), BUF) };
        let len = build(&self.proto, buf);
        let ptr = buf.as_ptr();
        // SAFETY: TX buffer `slot` is not reused before this frame's response (its ring
        // slot is in flight until then, see the module docs).
        if unsafe { self.nic.queue_tx_raw(ptr, len) }.is_err() {
            self.counts.errors += 1;
            return;
        }
        if !more || self.nic.tx_ring().free() == 0 {
            self.nic.flush_tx();
        }
    }

    /// Waits for a free TX slot (reclaiming completions, publishing what is queued).
    fn free_slot(&mut self) {
        self.reclaim();
        while self.nic.tx_ring().free() == 0 {
            self.nic.flush_tx();
            if self.reclaim() == 0 {
                core::hint::spin_loop();
            }
        }
    }

    /// Handles every received frame (answering what asks for it) and reposts its buffer.
    fn receive(&mut self) -> u32 {
        // (buffer, frame length; `None`: the host refused the buffer).
        let mut got = [(0u32, None); SLOTS as usize];
        let mut n = 0usize;
        self.nic.poll_rx(|id, r| {
            if let Some(g) = got.get_mut(n) {
                *g = (id % SLOTS, r.ok().map(|len| len.min(BUF as u32)));
                n += 1;
            }
        });
        for &(id, len) in got.iter().take(n) {
            let Some(len) = len else {
                self.counts.errors += 1;
                self.repost(id);
                continue;
            };
            self.counts.frames += 1;
            let off = id as usize * BUF;
            // SAFETY: the host answered buffer `id`, so it no longer writes it: the kernel
            // owns these bytes until it reposts the buffer below.
            let frame = unsafe { core::slice::from_raw_parts_mut(self.rx.add(off), len as usize) };
            if let Some(reply) = self.proto.handle(frame) {
                let reply = &frame[..reply];
                self.transmit(
                    &mut |_, f| {
                        f[..reply.len()].copy_from_slice(reply);
                        reply.len()
                    },
                    false,
                );
            }
            self.repost(id);
        }
        self.flush_rx();
        n as u32
    }
}

impl Link for PvLink {
    fn proto(&mut self) -> &mut Proto {
        &mut self.proto
    }

    fn send(&mut self, more: bool, build: &mut dyn FnMut(&Proto, &mut [u8]) -> usize) {
        self.transmit(build, more);
    }

    fn send_static(&mut self, more: bool, frame: &'static [u8]) {
        if self.path == PvPath::Hypercall {
            if pvkit_guest::hypercall::net_send(frame).is_err() {
                self.counts.errors += 1;
            }
            return;
        }
        if self.nic.tx_ring().free() == 0 {
            self.free_slot();
        }
        self.template = None;
        // SAFETY: the frame is 'static and, by the trait's contract, unchanged until drained.
        if unsafe { self.nic.queue_tx_raw(frame.as_ptr(), frame.len()) }.is_err() {
            self.counts.errors += 1;
            return;
        }
        if !more || self.nic.tx_ring().free() == 0 {
            self.nic.flush_tx();
        }
    }

    fn send_repeated(&mut self, frame: &'static [u8], n: u64) {
        if self.path == PvPath::Hypercall {
            for _ in 0..n {
                self.send_static(false, frame);
            }
            return;
        }
        let key = (frame.as_ptr(), frame.len());
        if self.template != Some(key) {
            // Every slot free, then every slot a template for `frame`.
            self.drain();
            // SAFETY: 'static and unchanged until drained (the trait's contract).
            if unsafe { self.nic.set_tx_template(key.0, key.1) }.is_err() {
                self.counts.errors += n;
                return;
            }
            self.template = Some(key);
        }
        let mut left = n;
        while left > 0 {
            let mut free = self.nic.tx_ring().free();
            if free == 0 {
                self.free_slot();
                free = self.nic.tx_ring().free();
            }
            let k = u64::from(free).min(left);
            // `k <= free`: cannot fail.
            let _ = self.nic.commit_tx(k as u32);
            self.nic.flush_tx();
            left -= k;
        }
    }

    fn wait(&mut self, done: &dyn Fn(&Proto) -> bool) {
        if self.path == PvPath::Irq {
            // Frames are taken only after the interrupt that announced them; the ring is
            // armed from its registration on (`rsp_event = 1`) and re-armed after each
            // drain.
            while !done(&self.proto) {
                super::irq::wait_for_interrupt();
                loop {
                    self.receive();
                    if !self.nic.arm_rx() {
                        break;
                    }
                }
            }
            return;
        }
        loop {
            self.receive();
            if done(&self.proto) {
                return;
            }
            if self.nic.is_broken() {
                panic!("net: the host marked a PV NIC ring broken");
            }
            core::hint::spin_loop();
        }
    }

    fn drain(&mut self) {
        self.nic.flush_tx();
        while self.nic.tx_ring().outstanding() != 0 {
            if self.reclaim() == 0 {
                if self.nic.is_broken() {
                    self.counts.errors += 1;
                    return;
                }
                core::hint::spin_loop();
            }
        }
    }

    fn counts(&self) -> LinkCounts {
        LinkCounts {
            irqs: super::state().irqs,
            ..self.counts
        }
    }

    fn finish(&mut self) -> LinkCounts {
        self.drain();
        if self.path == PvPath::Irq {
            // Back to polling: later registrations of the queue keep no interrupt.
            let _ = self.nic.bind_rx_interrupt(0);
        }
        self.counts()
    }
}
