//! The emulated NE2000 NIC on the port bus (`0x300..=0x31f`, IRQ 9 through the IOAPIC):
//! the I/O-free model of `pvkit_devices::ne2000` wired to a host network backend
//! (`pvkit_net`) and an [`InterruptLine`].
//!
//! * Guest → network: after every port access the frames the model transmitted are handed
//!   to the backend ([`NetBackend::send`], non-blocking; a backend that cannot take one
//!   drops and counts it).
//! * Network → guest: a backend with an fd (TAP) is served on the NIC's own event-loop
//!   thread ([`NetDevice`]): when the fd is readable, up to [`RX_BUDGET`] frames go into
//!   the model's receive ring per event (a full ring drops and counts: `rx_overflow`). A
//!   backend without an fd (the loopback responder) answers synchronously inside `send`:
//!   its replies are taken right after the transmit, on the vCPU thread.
//! * Interrupts: after each of those the line follows the model's level
//!   ([`pvkit_devices::Ne2000::irq_level`], `ISR & IMR`); a rising edge is one irqfd write.
//!
//! Nothing here blocks a vCPU: the model's lock is held for one access or one budget of
//! received frames, and every backend call is non-blocking.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use pvkit_devices::ne2000::{
    Ne2000, Ne2000State, Ne2000Stats, MIN_FRAME, NE2000_IO_BASE, NE2000_IO_LEN,
};
use pvkit_net::host_rtt::HostRttLog;
use pvkit_net::loopback::{LoopbackBackend, LoopbackMode, ResponderConfig, DEFAULT_QUEUE_FRAMES};
use pvkit_net::netns::NetNs;
use pvkit_net::tap::{TapBackend, TapConfig};
use pvkit_net::{NetBackend, NetCounters, MAX_FRAME_LEN};
use thiserror::Error;

use super::irq::InterruptLine;
use crate::bus::{BusDevice, BusError, PortBus};
use crate::io::event_loop::{EventLoop, LoopControl, Subscriber};
use crate::runtime::seccomp::{Confinement, ThreadKind};
use crate::runtime::sync::lock;

/// The GSI (ISA IRQ, IOAPIC pin) of the NE2000.
pub const NE2000_GSI: u32 = pvkit_devices::ne2000::NE2000_DEFAULT_IRQ;
/// The station address in the NE2000's PROM.
pub const NE2000_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The guest's default IPv4 address (the guest kernel's `ip=` default).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The host side's IPv4 address (the TAP device's, or the loopback responder's).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The prefix length of the guest network.
pub const PREFIX_LEN: u8 = 24;
/// The loopback responder's MAC address.
pub const LOOPBACK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x02];
/// The UDP port the loopback responder (and the guest's `net=serve`) echoes.
pub const UDP_ECHO_PORT: u16 = 7;
/// Frames moved from a TAP device into the model per readable event.
pub const RX_BUDGET: usize = 64;

/// Which host backend the NIC is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// The in-VMM loopback responder at [`HOST_IP`] / [`LOOPBACK_MAC`]: answers ARP, ICMP
    /// echo and UDP echo on [`UDP_ECHO_PORT`]. Needs no privileges.
    Loopback,
    /// A TAP device with the host side at [`HOST_IP`]/[`PREFIX_LEN`], in network namespace
    /// `netns` (which must exist), or in a new namespace `pvkit-<pid>` that lives as long
    /// as the VM. Needs root (or `CAP_SYS_ADMIN` + `CAP_NET_ADMIN`).
    Tap {
        /// An existing namespace to use.
        netns: Option<String>,
        /// A bridge in that namespace (`pvkit fleet` makes one) to make the TAP device a
        /// port of, instead of giving it [`HOST_IP`]: then the guest shares a subnet with
        /// the other guests on the bridge and the bridge's own address.
        bridge: Option<String>,
    },
}

/// The network of a VM: an NE2000 on a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The backend.
    pub backend: NetBackendConfig,
    /// The NIC's station address; `None`: [`NE2000_MAC`]. Guests sharing a bridge each
    /// need their own.
    pub mac: Option<[u8; 6]>,
    /// Loopback only: where the peer logs the UDP echo round trips it originates and
    /// times itself (`pvkit bench`'s host-side round trips); `None`: it originates none.
    pub host_rtt: Option<HostRttLog>,
}

/// Errors setting up the NIC.
#[derive(Debug, Error)]
pub enum NetError {
    /// The loopback backend refused its configuration.
    #[error("cannot set up the loopback network backend: {0}")]
    Loopback(#[from] pvkit_net::loopback::LoopbackError),
    /// The namespace could not be created or opened.
    #[error("cannot set up network namespace {name}: {source} (--net tap needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)")]
    Netns {
        /// The namespace.
        name: String,
        /// Why.
        source: pvkit_net::netns::NetNsError,
    },
    /// The TAP device could not be opened.
    #[error("cannot open the TAP device: {0} (--net tap needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)")]
    Tap(#[from] pvkit_net::tap::TapError),
    /// The NIC's ports are taken.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The NIC's event loop could not be set up or started.
    #[error("cannot start the NIC's event loop: {0}")]
    EventLoop(io::Error),
}

/// What the NIC counted in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    /// The model's counters.
    pub model: Ne2000Stats,
    /// The backend's counters.
    pub backend: NetCounters,
    /// Interrupts raised (irqfd writes).
    pub irqs_raised: u64,
    /// Backend receive errors.
    pub recv_errors: u64,
}

/// Opens the backend of `config`.
pub fn open_backend(
    config: &NetBackendConfig,
    host_rtt: Option<&HostRttLog>,
) -> Result<Box<dyn NetBackend>, NetError> {
    Ok(match config {
        NetBackendConfig::Loopback => {
            let b = LoopbackBackend::new(
                LoopbackMode::Responder(ResponderConfig {
                    mac: LOOPBACK_MAC,
                    ip: HOST_IP,
                    udp_echo_port: UDP_ECHO_PORT,
                }),
                DEFAULT_QUEUE_FRAMES,
            )?;
            Box::new(match host_rtt {
                Some(log) => b.with_host_rtt(log.clone()),
                None => b,
            })
        }
        NetBackendConfig::Tap { netns, bridge } => {
            let ns = match netns {
                Some(name) => NetNs::open(name).map_err(|source| NetError::Netns {
                    name: name.clone(),
                    source,
                })?,
                None => {
                    let name = format!("pvkit-{}", std::process::id());
                    NetNs::create(&name).map_err(|source| NetError::Netns { name, source })?
                }
            };
            let mut tap = TapConfig::new(HOST_IP, PREFIX_LEN);
            tap.bridge = bridge.clone();
            Box::new(TapBackend::open(ns, &tap)?)
        }
    })
}

struct Nic {
    model: Ne2000,
    backend: Box<dyn NetBackend>,
    line: InterruptLine,
    buf: Box<[u8; MAX_FRAME_LEN]>,
    recv_errors: u64,
}

impl Nic {
    /// After a guest access: transmitted frames to the backend, a synchronous backend's
    /// answers into the model, the line to the model's level.
    fn after_access(&mut self) {
        let mut sent = false;
        while let Some(frame) = self.model.take_tx() {
            // A drop is counted by the backend; the guest sees a lost packet.
            let _ = self.backend.send(&frame);
            sent = true;
        }
        if sent && self.backend.raw_fd().is_none() {
            self.pull(DEFAULT_QUEUE_FRAMES);
        }
        self.update_line();
    }

    /// Moves up to `budget` frames from the backend into the model. Returns whether the
    /// backend may have more.
    fn pull(&mut self, budget: usize) -> bool {
        for _ in 0..budget {
            match self.backend.recv(&mut self.buf[..]) {
                Ok(Some(n)) => {
                    if let Some(frame) = self.buf.get(..n) {
                        // A frame the ring has no room for is dropped and counted.
                        let _ = self.model.receive(frame);
                    }
                }
                Ok(None) => return false,
                Err(_) => {
                    self.recv_errors = self.recv_errors.saturating_add(1);
                    return false;
                }
            }
        }
        true
    }

    fn update_line(&mut self) {
        let level = self.model.irq_level();
        self.line.set_level(level);
    }

    fn stats(&self) -> NicStats {
        NicStats {
            model: *self.model.stats(),
            backend: self.backend.counters(),
            irqs_raised: self.line.raised(),
            recv_errors: self.recv_errors,
        }
    }
}

/// The NE2000's port range on the bus.
struct Ne2000Ports {
    nic: Arc<Mutex<Nic>>,
}

impl BusDevice for Ne2000Ports {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let Ok(off) = u16::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        let mut nic = lock(&self.nic);
        nic.model.read(off, data);
        nic.after_access();
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        let Ok(off) = u16::try_from(offset) else {
            return;
        };
        let mut nic = lock(&self.nic);
        nic.model.write(off, data);
        nic.after_access();
    }
}

/// Receives from a backend with an fd on the NIC's event loop.
struct RxSubscriber {
    nic: Arc<Mutex<Nic>>,
}

impl Subscriber for RxSubscriber {
    fn ready(&mut self, _token: u32, ctl: &LoopControl) -> io::Result<()> {
        if ctl.stopping() {
            return Ok(());
        }
        let mut nic = lock(&self.nic);
        // Frames beyond the budget keep the (level-triggered) fd readable: the next turn
        // takes them, after the stop flag was looked at.
        nic.pull(RX_BUDGET);
        nic.update_line();
        Ok(())
    }
}

/// The NIC of a running VM: its shared state and, for a backend with an fd, the event
/// loop that receives from it.
pub struct NetDevice {
    nic: Arc<Mutex<Nic>>,
    event_loop: Option<EventLoop>,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("event_loop", &self.event_loop)
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    /// What the NIC counted so far.
    pub fn stats(&self) -> NicStats {
        lock(&self.nic).stats()
    }

    /// Stops and joins the receive thread (if any). Returns its failure, if it had one.
    pub fn stop(&mut self) -> Result<(), String> {
        match self.event_loop.as_mut() {
            Some(l) => l.stop(),
            None => Ok(()),
        }
    }
}

/// A handle on a running NE2000's model, for a snapshot or a migration to save it.
#[derive(Clone)]
pub struct Ne2000Handle(Arc<Mutex<Nic>>);

impl std::fmt::Debug for Ne2000Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ne2000Handle")
    }
}

impl Ne2000Handle {
    /// The model's state now (registers, card memory, ring pointers, transmit queue), taken
    /// under the NIC's lock: consistent with itself, whatever the receive thread does next.
    pub fn state(&self) -> Ne2000State {
        lock(&self.0).model.state()
    }
}

impl NetDevice {
    /// A handle that saves the model's state.
    pub fn handle(&self) -> Ne2000Handle {
        Ne2000Handle(Arc::clone(&self.nic))
    }
}

/// The announcement a NIC's backend sends after a restore or an incoming migration, as
/// QEMU's `announce` does: a RARP request ("who is `mac`?") from `mac` to the broadcast
/// address, 60 bytes. A switch or bridge learns the guest's new port from it; nothing
/// answers it and the host's ARP table does not take it.
pub fn announce_frame(mac: [u8; 6]) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    // EtherType RARP; hardware Ethernet, protocol IPv4, lengths 6 and 4, op 3 (request
    // reverse); sender and target hardware address `mac`, both IP addresses 0.
    f[12..22].copy_from_slice(&[0x80, 0x35, 0, 1, 0x08, 0x00, 6, 4, 0, 3]);
    f[22..28].copy_from_slice(&mac);
    f[32..38].copy_from_slice(&mac);
    f
}

/// Puts `model` (a new card, [`Ne2000::new`], or a restored one) on `bus` at
/// `0x300..=0x31f`, connected to `backend` and raising `line`. The line starts at the
/// model's level without an edge (a restored card's raised edge is in the irqchip's saved
/// state). A backend with an fd gets an event-loop thread (`pvkit-net`), started here and,
/// with `seccomp`, confined with the network thread's filter ([`ThreadKind::Net`]) before
/// it reads a frame; `on_fatal` hears about its failure.
pub fn attach_ne2000(
    bus: &mut PortBus,
    model: Ne2000,
    backend: Box<dyn NetBackend>,
    mut line: InterruptLine,
    on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    seccomp: bool,
) -> Result<NetDevice, NetError> {
    let fd: Option<RawFd> = backend.raw_fd();
    line.assume_level(model.irq_level());
    let nic = Arc::new(Mutex::new(Nic {
        model,
        backend,
        line,
        buf: Box::new([0u8; MAX_FRAME_LEN]),
        recv_errors: 0,
    }));
    bus.insert(
        NE2000_IO_BASE.into(),
        NE2000_IO_LEN.into(),
        "ne2000",
        Arc::new(Ne2000Ports {
            nic: Arc::clone(&nic),
        }),
    )?;
    let event_loop = match fd {
        Some(fd) => {
            let mut l = EventLoop::new("pvkit-net", on_fatal).map_err(NetError::EventLoop)?;
            l.confine_with(
                Confinement::when(seccomp, ThreadKind::Net)
                    .map_err(|e| NetError::EventLoop(io::Error::other(e)))?,
            );
            let id = l
                .subscribe(Box::new(RxSubscriber {
                    nic: Arc::clone(&nic),
                }))
                .map_err(NetError::EventLoop)?;
            l.watch(fd, id, 0).map_err(NetError::EventLoop)?;
            l.ensure_started().map_err(NetError::EventLoop)?;
            Some(l)
        }
        None => None,
    };
    Ok(NetDevice { nic, event_loop })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_devices::ne2000::{cr, isr, CR, IMR, ISR, RBCR0, RBCR1, RSAR0, RSAR1, TBCR0, TBCR1};

    fn out(bus: &PortBus, reg: u16, v: u8) {
        assert!(bus.write(u64::from(NE2000_IO_BASE + reg), &[v]));
    }

    /// A loopback NE2000: the guest's ARP request to the responder comes back as a reply in
    /// the receive ring, and the line rises once (PRX unmasked).
    #[test]
    fn loopback_answer_lands_in_the_ring_and_raises_the_line_once() {
        let mut bus = PortBus::new();
        let line = InterruptLine::unconnected(NE2000_GSI).unwrap();
        let backend = open_backend(&NetBackendConfig::Loopback, None).unwrap();
        let dev = attach_ne2000(
            &mut bus,
            Ne2000::new(NE2000_MAC),
            backend,
            line,
            Arc::new(|_| {}),
            false,
        )
        .unwrap();
        // Minimal init: ring 0x46..0x80, CURR 0x47, accept broadcast + our MAC, PRX unmasked.
        for (r, v) in [
            (CR, 0x21),
            (0x0E, 0x49),
            (0x04, 0x40),
            (0x01, 0x46),
            (0x03, 0x46),
            (0x02, 0x80),
        ] {
            out(&bus, r, v);
        }
        out(&bus, CR, 0x61);
        for (i, b) in NE2000_MAC.iter().enumerate() {
            out(&bus, 1 + i as u16, *b);
        }
        out(&bus, 0x07, 0x47);
        out(&bus, CR, 0x22);
        out(&bus, 0x0D, 0);
        out(&bus, 0x0C, 0x04);
        out(&bus, ISR, 0xff);
        out(&bus, IMR, isr::PRX);
        // ARP request: who has 10.0.2.2, tell 10.0.2.15.
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&NE2000_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&NE2000_MAC);
        f.extend_from_slice(&GUEST_IP.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&HOST_IP.octets());
        f.resize(60, 0);
        out(&bus, RBCR0, 60);
        out(&bus, RBCR1, 0);
        out(&bus, RSAR0, 0);
        out(&bus, RSAR1, 0x40);
        out(&bus, CR, cr::RD_WRITE | cr::STA);
        assert!(bus.write(u64::from(NE2000_IO_BASE + 0x10), &f));
        out(&bus, TBCR0, 60);
        out(&bus, TBCR1, 0);
        out(&bus, CR, cr::TXP | cr::STA | cr::RD_ABORT);
        let s = dev.stats();
        assert_eq!(s.backend.tx_frames, 1);
        assert_eq!(s.model.rx_frames, 1, "the ARP reply is in the ring: {s:?}");
        assert_eq!(s.irqs_raised, 1);
        // Level stays high while PRX is set: no second edge on further accesses.
        out(&bus, ISR, isr::PTX);
        assert_eq!(dev.stats().irqs_raised, 1);
        // Acknowledged, then another reply: a second edge.
        out(&bus, ISR, isr::PRX);
        out(&bus, CR, cr::RD_WRITE | cr::STA);
        out(&bus, RBCR0, 60);
        out(&bus, RSAR1, 0x40);
        out(&bus, CR, cr::RD_WRITE | cr::STA);
        assert!(bus.write(u64::from(NE2000_IO_BASE + 0x10), &f));
        out(&bus, CR, cr::TXP | cr::STA | cr::RD_ABORT);
        assert_eq!(dev.stats().irqs_raised, 2);
        assert_eq!(lock(&dev.nic).line.take_signals(), 2);
    }
    /// A card restored with its line high (an edge the saved irqchip holds) raises no
    /// second edge on the next access; once the guest acknowledges, the next frame does.
    #[test]
    fn a_restored_card_with_its_line_high_raises_no_second_edge() {
        let mut card = Ne2000::new(NE2000_MAC);
        card.write(0x0F, &[isr::PTX]); // IMR (page 0)
        card.write(ISR, &[0xff]);
        // Start, then a transmit: PTX set and unmasked.
        card.write(CR, &[cr::STA | cr::RD_ABORT]);
        card.write(TBCR0, &[60]);
        card.write(CR, &[cr::TXP | cr::STA | cr::RD_ABORT]);
        assert!(card.irq_level());
        let saved = Ne2000::from_state(&card.state()).unwrap();
        let mut bus = PortBus::new();
        let line = InterruptLine::unconnected(NE2000_GSI).unwrap();
        let backend = open_backend(&NetBackendConfig::Loopback, None).unwrap();
        let dev = attach_ne2000(&mut bus, saved, backend, line, Arc::new(|_| {}), false).unwrap();
        out(&bus, CR, cr::STA | cr::RD_ABORT);
        assert_eq!(
            dev.stats().irqs_raised,
            0,
            "the saved edge is not raised again"
        );
        out(&bus, ISR, isr::PTX);
        out(&bus, TBCR0, 60);
        out(&bus, CR, cr::TXP | cr::STA | cr::RD_ABORT);
        assert_eq!(dev.stats().irqs_raised, 1);
        assert_eq!(dev.handle().state().isr & isr::PTX, isr::PTX);
    }

    #[test]
    fn the_announcement_is_a_rarp_request_from_the_guest_mac() {
        let f = announce_frame(NE2000_MAC);
        assert_eq!(f.len(), 60);
        assert_eq!(f[..6], [0xff; 6]);
        assert_eq!(f[6..12], NE2000_MAC);
        assert_eq!(f[12..14], [0x80, 0x35]);
        assert_eq!(f[20..22], [0, 3]);
        assert_eq!(f[22..28], NE2000_MAC);
        assert_eq!(f[32..38], NE2000_MAC);
        assert!(f[28..32].iter().chain(&f[38..]).all(|&b| b == 0));
    }
}
