//! `net/<variant>/<workload>`: the emulated NE2000 against the PV NIC, over the VMM's
//! loopback backends (the host boots this guest with both NICs, each on its own loopback
//! peer at `10.0.2.2`), through the same protocol code as `net=` ([`crate::net`]).
//!
//! | workload     | what one operation is                                             |
//! |--------------|-------------------------------------------------------------------|
//! | `tx64`       | one 64-byte UDP frame to the peer's discard port                  |
//! | `tx1500`     | one 1514-byte frame (a 1500-byte IP packet) to the discard port    |
//! | `rx64`       | one 64-byte UDP echo received, in a pipelined stream: a window of requests sent back to back, then their echoes taken (each echo also costs its request's transmit) |
//! | `rx1500`     | as `rx64` with 1514-byte frames                                   |
//! | `udpecho64`  | one UDP echo round trip of a 64-byte frame (send, wait for the echo) |
//! | `hostecho64` | one UDP echo round trip of a 64-byte frame originated by the host: the guest sends one start datagram to the peer's `HOST_RTT_PORT` and serves its echo responder until the peer's "done"; the host times each round trip with its own clock (`pvkit_net::host_rtt`) |
//!
//! Variants: `ne2000` (port I/O and remote DMA, receive by IRQ 9), `pv-hypercall`
//! (`NetSend` per frame), `pv-ring` (rings, doorbell exits), `pv-ioeventfd`, `pv-poll`
//! (rings polled by the host), `pv-irq` (rings with doorbells, receive by completion
//! interrupt while the guest halts; receive workloads only: its transmit is `pv-ring`'s).
//! Each case's frame is built once before its begin marker (a datagram with a fixed IP id)
//! and every operation sends it as it is ([`Link::send_static`]): the NE2000 copies it
//! into card memory, the PV rings point at it (zero copy), `NetSend` names it. So the
//! cases measure the NIC path, not the building of frames in interpreted ring 0. Frames
//! sent back to back ([`Link::send_repeated`]) go as a PV driver with rings sends them: in
//! batches of up to 32 (the ring) from request templates, one index update and at most one
//! doorbell per batch, no store per frame; the NE2000 and `NetSend` send them one by one.
//! A transmit operation ends when the frame left the guest (the timed loop waits for the
//! last completions before its end marker). The UDP echo case has a latency pass (one
//! sample per round trip, before the begin marker). Each case is verified by the guest:
//! no transmit or receive error, and every echo arrived.

use super::{begin, case, end, latency_ops, Outcome, Runner, Scratch};
use crate::net::link::Link;
use crate::net::proto::{
    DISCARD_PORT, ECHO_PORT, HOST_RTT_MAGIC, HOST_RTT_PORT, HOST_RTT_START_LEN, UDP_PAYLOAD,
};
use crate::net::pv::{PvLink, PvPath};
use crate::net::{Mode, NetArgs};
use crate::statics::{Exclusive, Pages};
use pvkit_abi::bench::{Device, Variant, Workload, SAMPLE_LATENCY_PASS};
use pvkit_abi::cpuid::Features;
use pvkit_guest::tsc::rdtsc;

/// Variants in run order and how each is driven (`None`: the NE2000).
const VARIANTS: [(Variant, Option<PvPath>); 6] = [
    (Variant::Ne2000, None),
    (Variant::PvHypercall, Some(PvPath::Hypercall)),
    (Variant::PvRing, Some(PvPath::Doorbell)),
    (Variant::PvEventfd, Some(PvPath::Eventfd)),
    (Variant::PvPoll, Some(PvPath::Poll)),
    (Variant::PvIrq, Some(PvPath::Irq)),
];

/// UDP payload of a 64-byte and of a 1514-byte frame.
const PAYLOAD_64: usize = 64 - 42;
const PAYLOAD_1500: usize = 1514 - 42;

/// The case's frame (built outside the timed loop).
static FRAME: Exclusive<Pages<2048>> = Exclusive::new(Pages::zeroed());

/// Runs the selected net cases.
pub fn run(r: &mut Runner, scratch: &mut Scratch) {
    let frame: &'static mut [u8] = &mut FRAME.take().0;
    let frame: *mut u8 = frame.as_mut_ptr();
    for (variant, path) in VARIANTS {
        if !r.wants(Device::Net, variant) {
            continue;
        }
        let mut args = NetArgs::new(Mode::Echo);
        let id = |w| case(Device::Net, variant, w);
        let workloads: &[Workload] = if variant == Variant::PvIrq {
            &[
                Workload::Rx64,
                Workload::Rx1500,
                Workload::UdpEcho64,
                Workload::HostEcho64,
            ]
        } else {
            &[
                Workload::Tx64,
                Workload::Tx1500,
                Workload::Rx64,
                Workload::Rx1500,
                Workload::UdpEcho64,
                Workload::HostEcho64,
            ]
        };
        let missing = match path {
            None => None,
            Some(_) if !crate::net::pv::offered() => Some("no PV NIC (NET, NET_RING)"),
            Some(PvPath::Eventfd) if !r.has(Features::RING_EVENTFD) => Some("no RING_EVENTFD"),
            Some(PvPath::Poll) if !r.has(Features::RING_POLL) => Some("no RING_POLL"),
            Some(PvPath::Irq) if !r.has(Features::RING_IRQ) => Some("no RING_IRQ"),
            Some(_) => None,
        };
        if let Some(why) = missing {
            for &w in workloads {
                r.skip(id(w), format_args!("{why}"));
            }
            continue;
        }
        let mut ne;
        let mut pv;
        let link: &mut dyn Link = match path {
            None => match crate::net::ne2000_link(&args) {
                Some(l) => {
                    ne = l;
                    &mut ne
                }
                None => {
                    for &w in workloads {
                        r.skip(id(w), format_args!("no NE2000 at 0x300"));
                    }
                    continue;
                }
            },
            Some(p) => {
                args.pv = p;
                pv = PvLink::init(&args);
                &mut pv
            }
        };
        // Resolve the peer outside the cases.
        link.send(false, &mut |p, f| p.arp_request(f));
        link.wait(&|p| p.peer_mac.is_some());
        for &w in workloads {
            run_case(r, scratch, link, id(w), variant == Variant::Ne2000, frame);
        }
        link.finish();
    }
}

/// One case over `link`.
///
/// `buf` is [`FRAME`]: the previous case drained every frame that pointed at it.
fn run_case(
    r: &mut Runner,
    scratch: &mut Scratch,
    link: &mut dyn Link,
    id: pvkit_abi::bench::CaseId,
    ne2000: bool,
    buf: *mut u8,
) {
    let errors0 = link.counts().errors;
    let (payload, frame) = match id.workload {
        Workload::Tx1500 | Workload::Rx1500 => (PAYLOAD_1500, 1514u64),
        _ => (PAYLOAD_64, 64u64),
    };
    let port = match id.workload {
        Workload::Tx64 | Workload::Tx1500 => DISCARD_PORT,
        _ => ECHO_PORT,
    };
    let len = {
        // SAFETY: FRAME is this module's for ever, and no frame in flight points at it
        // (see above): a unique borrow for the build.
        let f = unsafe { core::slice::from_raw_parts_mut(buf, 2048) };
        link.proto().udp_datagram(f, port, payload, 0)
    };
    // SAFETY: not written again until the next case, after this one drained.
    let tx: &'static [u8] = unsafe { core::slice::from_raw_parts(buf, len) };
    // (default, quick) counts: the NE2000 costs 12 + frame/2 exits per transmitted frame.
    let ops = match (id.workload, ne2000) {
        (Workload::Tx64, true) => r.count(200, 20),
        (Workload::Tx1500, true) => r.count(40, 8),
        (Workload::Rx64, true) => r.count(128, 16),
        (Workload::Rx1500, true) => r.count(32, 8),
        (Workload::UdpEcho64, true) => r.count(100, 10),
        (Workload::HostEcho64, true) => r.count(100, 10),
        (Workload::Tx64, false) => r.count(4000, 200),
        (Workload::Tx1500, false) => r.count(1000, 64),
        (Workload::Rx64, false) => r.count(2000, 128),
        (Workload::Rx1500, false) => r.count(500, 32),
        _ => r.count(500, 50),
    };
    // Echo requests in flight at most: what the NE2000's 58-page receive ring holds
    // (a 1514-byte frame takes 6 pages), half the PV RX ring.
    let window = match (id.workload, ne2000) {
        (Workload::Rx1500, true) => 4,
        _ => 16,
    };
    let mut samples = scratch.samples();
    let mut flags = 0;
    let mut failed = false;
    let echoes0 = link.proto().counts.echoes;
    let cycles_total = match id.workload {
        Workload::Tx64 | Workload::Tx1500 => {
            let t0 = begin(id);
            link.send_repeated(tx, ops);
            link.drain();
            end(id, t0, ops)
        }
        Workload::Rx64 | Workload::Rx1500 => {
            let t0 = begin(id);
            let mut sent = 0;
            while sent < ops {
                let n = window.min(ops - sent);
                link.send_repeated(tx, n);
                sent += n;
                link.wait(&|p| p.counts.echoes >= echoes0 + sent);
            }
            link.drain();
            end(id, t0, ops)
        }
        Workload::HostEcho64 => {
            // The host originates `ops` requests, one after each echo, and times them; the
            // guest only answers (its echo responder in `Link::wait`).
            let udp0 = link.proto().counts.udp;
            link.proto().done = false;
            let case_id = id.to_u64();
            let t0 = begin(id);
            link.send(false, &mut |p, f| {
                let s = &mut f[UDP_PAYLOAD..UDP_PAYLOAD + HOST_RTT_START_LEN];
                s[..4].copy_from_slice(&HOST_RTT_MAGIC);
                s[4..12].copy_from_slice(&case_id.to_le_bytes());
                s[12..16].copy_from_slice(&(ops as u32).to_le_bytes());
                s[16..18].copy_from_slice(&(payload as u16).to_le_bytes());
                p.udp_datagram(f, HOST_RTT_PORT, HOST_RTT_START_LEN, 0)
            });
            link.wait(&|p| p.done);
            let c = end(id, t0, ops);
            failed |= link.proto().counts.udp != udp0 + ops;
            c
        }
        _ => {
            // Latency pass: one sample per round trip.
            let lat = latency_ops(ops);
            for i in 0..lat {
                let s = rdtsc();
                link.send(false, &mut |p, f| {
                    p.udp_datagram(f, ECHO_PORT, payload, i as u16)
                });
                link.wait(&|p| p.counts.echoes > echoes0 + i);
                samples.push(rdtsc().wrapping_sub(s));
            }
            flags |= SAMPLE_LATENCY_PASS;
            let base = echoes0 + lat;
            let t0 = begin(id);
            for i in 0..ops {
                link.send(false, &mut |p, f| {
                    p.udp_datagram(f, ECHO_PORT, payload, i as u16)
                });
                link.wait(&|p| p.counts.echoes > base + i);
            }
            let c = end(id, t0, ops);
            failed |= link.proto().counts.echoes != base + ops;
            c
        }
    };
    if matches!(id.workload, Workload::Rx64 | Workload::Rx1500) {
        failed |= link.proto().counts.echoes != echoes0 + ops;
    }
    failed |= link.counts().errors != errors0;
    let n = samples.len();
    let outcome = Outcome {
        ops,
        bytes: ops * frame,
        cycles_total,
        flags: flags | Outcome::checked(failed),
        samples: n,
        ..Outcome::default()
    };
    r.report(id, &outcome, scratch);
}
