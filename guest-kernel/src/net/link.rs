//! The NIC-independent part of the `net=` modes: a [`Link`] is a NIC driven by the kernel
//! (the NE2000 by interrupts, [`super`]; the PV NIC, [`super::pv`]), and [`drive`] runs a
//! mode over it with the shared protocol code ([`super::proto`]).

use super::proto::{Proto, DISCARD_PORT, ECHO_PORT};
use super::{Mode, NetArgs};
use pvkit_abi::boot::BootInfo;

/// What a NIC counted, for the `net: done` line.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounts {
    /// Interrupts the kernel handled.
    pub irqs: u64,
    /// Frames received.
    pub frames: u64,
    /// Transmit or receive errors.
    pub errors: u64,
}

/// A NIC the `net=` modes run over.
pub trait Link {
    /// The protocol state (answers and counters).
    fn proto(&mut self) -> &mut Proto;
    /// Builds a frame with `build` (which returns its length) in a transmit buffer and
    /// sends it; `more`: another frame follows at once, so the NIC may hold this one back
    /// to send both in one batch.
    fn send(&mut self, more: bool, build: &mut dyn FnMut(&Proto, &mut [u8]) -> usize);
    /// Sends `frame` as it is (no copy where the NIC can avoid one: the PV rings point at
    /// it); it must stay unchanged until [`Link::drain`]. `more` as for [`Link::send`].
    fn send_static(&mut self, more: bool, frame: &'static [u8]);
    /// Sends `frame` `n` times, as [`Link::send_static`] does (a NIC with rings may queue
    /// them in batches, one index update per batch).
    fn send_repeated(&mut self, frame: &'static [u8], n: u64) {
        for i in 0..n {
            self.send_static(i + 1 < n, frame);
        }
    }
    /// Waits until `done` holds, receiving (and answering) frames meanwhile.
    fn wait(&mut self, done: &dyn Fn(&Proto) -> bool);
    /// Waits until every frame sent so far has left the guest (its buffer is free again).
    fn drain(&mut self) {}
    /// The counters so far.
    fn counts(&self) -> LinkCounts;
    /// Stops the NIC's interrupts; its counters.
    fn finish(&mut self) -> LinkCounts;
}

/// Runs `args.mode` over `link`, prints the `net: done` line; returns the exit status
/// (0, or 1 when a `net=ring` member found the ring wrong).
pub fn drive(link: &mut dyn Link, args: &NetArgs, boot: &BootInfo) -> u8 {
    let mut status = 0;
    match args.mode {
        Mode::Serve => link.wait(&|p| p.done),
        Mode::Ring => status = super::ring::run(link, &args.ring, boot),
        Mode::Echo | Mode::Send => {
            link.send(false, &mut |p, f| p.arp_request(f));
            link.wait(&|p| p.peer_mac.is_some());
            let (port, echo) = match args.mode {
                Mode::Echo => (ECHO_PORT, true),
                _ => (DISCARD_PORT, false),
            };
            let t0 = pvkit_guest::tsc::rdtsc();
            for i in 0..args.count {
                let more = !echo && i + 1 < args.count;
                link.send(more, &mut |p, f| {
                    p.udp_datagram(f, port, args.size, i as u16)
                });
                if echo {
                    link.wait(&|p| p.counts.echoes > i);
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
    let l = link.finish();
    let c = link.proto().counts;
    println!(
        "net: done irqs={} frames={} arp={} icmp={} udp={} echoes={} no_reply={} errors={}",
        l.irqs, l.frames, c.arp, c.icmp, c.udp, c.echoes, c.no_reply, l.errors
    );
    status
}
