//! `emuload=N [emuload_ms=M]`: the live-migration workload of a guest that uses only
//! emulated devices — the unmodified guest of the migration tests. No hypercall but the
//! final `Exit`: the 16550 UART prints (the console must not be `pv`), the 8254 PIT keeps
//! time, the ATA disk (PIO) stores, the NE2000 (polled) talks UDP to `peer=` (default
//! `10.0.2.2`, the loopback responder) from `ip=` (default `10.0.2.15`).
//!
//! 1. Probes the three devices, resolves the peer by ARP and prints
//!    `emuload: ata SECTORS sectors, ne2000 MAC`.
//! 2. `N` ticks, each at least `M` ms of PIT time (default 0). Tick `i`:
//!    - reads back the sector tick `i - 1` wrote and requires it to hold `i - 1` (the last
//!      acknowledged write, across a migration included), then writes sector
//!      `DISK_LBA + i % DISK_SLOTS` filled with `i` (`u64` little-endian, repeated);
//!    - sends a UDP datagram holding `i` to the peer's echo port and waits for its echo,
//!      sending it again after [`RETRY_MS`] ms of PIT time without one (a frame lost in
//!      flight; counted as a retry; an echo of an older tick is counted as stale);
//!    - prints `tick i lba L ok`: the write is acknowledged and the echo came back.
//!
//!    The PIT clock never goes backwards (checked at every read).
//! 3. `emuload: done N echoes=E retries=R stale=S`, then exit 0.
//!
//! A UART line is one port write per byte, so a migration's pause may fall inside a line:
//! its start is printed by the source, its end by the target. Every tick line ends in
//! `ok`, so a reader can tell a split line.
//!
//! Any failure (no device, a read-back that differs, a disk error, no echo after
//! [`MAX_RETRIES`] sends) panics, which the host reports as a guest fault.

use pvkit_guest::ne2000::{Ne2000, IO_BASE, MAX_FRAME};
use pvkit_guest::pit::PitClock;
use pvkit_guest::port::Pio;

use crate::net::proto::{Proto, ECHO_PORT, UDP_PAYLOAD};
use crate::statics::{Exclusive, Pages};

/// First sector the workload writes.
pub const DISK_LBA: u64 = 16;
/// Sectors it cycles through.
pub const DISK_SLOTS: u64 = 64;
/// PIT milliseconds to wait for an echo (or an ARP reply) before sending again.
pub const RETRY_MS: u64 = 50;
/// Sends of one datagram before the workload gives up.
pub const MAX_RETRIES: u32 = 100;

/// `emuload=` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuloadArgs {
    /// Ticks.
    pub ticks: u64,
    /// Least PIT milliseconds per tick.
    pub tick_ms: u64,
    /// Our IPv4 address.
    pub ip: [u8; 4],
    /// The echo peer's.
    pub peer: [u8; 4],
}

static SECTOR: Exclusive<Pages<4096>> = Exclusive::new(Pages::zeroed());
static FRAME: Exclusive<Pages<2048>> = Exclusive::new(Pages::zeroed());

/// The PIT clock with the monotonicity check.
struct Clock {
    pit: PitClock<Pio>,
    last: u64,
}

impl Clock {
    fn now(&mut self) -> u64 {
        let t = self.pit.nanoseconds();
        if t < self.last {
            panic!("emuload: PIT clock went back from {} to {t}", self.last);
        }
        self.last = t;
        t
    }
}

/// The NIC with its protocol state and counters.
struct Net {
    nic: Ne2000<Pio>,
    proto: Proto,
    retries: u64,
    stale: u64,
}

impl Net {
    /// Receives every waiting frame: the protocol answers what asks for an answer, and
    /// the result says whether an echo of `want` (8 payload bytes) came.
    fn drain(&mut self, frame: &mut [u8], want: Option<u64>) -> bool {
        let mut hit = false;
        loop {
            let n = match self.nic.receive(frame) {
                Ok(Some(n)) => n,
                Ok(None) => return hit,
                // Frames were dropped (a bad header, an overflow): a resend recovers.
                Err(_) => continue,
            };
            let Some(f) = frame.get_mut(..n) else {
                continue;
            };
            let echoes = self.proto.counts.echoes;
            if let Some(len) = self.proto.handle(f) {
                if let Some(reply) = frame.get(..len) {
                    // A reply that cannot be sent is a lost frame for the peer.
                    let _ = self.nic.transmit(reply);
                }
                continue;
            }
            if self.proto.counts.echoes > echoes {
                let got = frame
                    .get(UDP_PAYLOAD..UDP_PAYLOAD + 8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                match (got, want) {
                    (Some(g), Some(w)) if g == w => hit = true,
                    _ => self.stale += 1,
                }
            }
        }
    }

    /// Sends what `build` puts into the frame until `done` holds after a drain, waiting
    /// [`RETRY_MS`] between sends.
    fn exchange(
        &mut self,
        clock: &mut Clock,
        frame: &mut [u8],
        what: &str,
        build: &dyn Fn(&Proto, &mut [u8]) -> usize,
        want: Option<u64>,
        done: &dyn Fn(&Proto) -> bool,
    ) {
        for attempt in 0..MAX_RETRIES {
            if attempt > 0 {
                self.retries += 1;
            }
            let len = build(&self.proto, frame);
            if let Some(f) = frame.get(..len) {
                if let Err(e) = self.nic.transmit(f) {
                    panic!("emuload: {what}: transmit failed: {e:?}");
                }
            }
            let deadline = clock.now().saturating_add(RETRY_MS * 1_000_000);
            loop {
                if self.drain(frame, want) || done(&self.proto) {
                    return;
                }
                if clock.now() >= deadline {
                    break;
                }
            }
        }
        panic!("emuload: {what}: no answer after {MAX_RETRIES} sends");
    }
}

/// Fills the sector with `tick`.
fn fill(sector: &mut [u8], tick: u64) {
    for w in sector.chunks_exact_mut(8) {
        w.copy_from_slice(&tick.to_le_bytes());
    }
}

/// Runs the workload (see the module doc) and exits.
pub fn run(a: EmuloadArgs) -> ! {
    let mut ata = match crate::ata::probe() {
        Ok(d) => d,
        Err(e) => panic!("emuload: no ATA disk: {e:?}"),
    };
    if ata.sectors() < DISK_LBA + DISK_SLOTS {
        panic!("emuload: the disk has {} sectors", ata.sectors());
    }
    let Some(pit) = crate::pit::probe() else {
        panic!("emuload: no PIT");
    };
    let mut clock = Clock { pit, last: 0 };
    // SAFETY: the kernel runs in ring 0 and owns the NE2000's ports; the driver moves
    // frames by port I/O only (no DMA into guest memory).
    let nic = match Ne2000::probe(unsafe { Pio::new() }, IO_BASE) {
        Ok(n) => n,
        Err(e) => panic!("emuload: no NE2000: {e:?}"),
    };
    let mac = nic.mac();
    let mut net = Net {
        nic,
        proto: Proto::new(mac, a.ip, a.peer),
        retries: 0,
        stale: 0,
    };
    let frame = &mut FRAME.take().0[..MAX_FRAME];
    net.exchange(
        &mut clock,
        frame,
        "ARP",
        &|p, f| p.arp_request(f),
        None,
        &|p| p.peer_mac.is_some(),
    );
    println!(
        "emuload: ata {} sectors, ne2000 {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        ata.sectors(),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let sector = &mut SECTOR.take().0[..512];
    let tick_ns = a.tick_ms.saturating_mul(1_000_000);
    let mut next = clock.now();
    for i in 0..a.ticks {
        next = next.saturating_add(tick_ns);
        while clock.now() < next {}
        let lba = DISK_LBA + i % DISK_SLOTS;
        if i > 0 {
            let prev = DISK_LBA + (i - 1) % DISK_SLOTS;
            if let Err(e) = ata.read(prev, sector) {
                panic!("emuload: tick {i}: read of sector {prev} failed: {e:?}");
            }
            let held = u64::from_le_bytes(sector[..8].try_into().unwrap_or([0; 8]));
            let mut want = [0u8; 512];
            fill(&mut want, i - 1);
            if sector[..] != want[..] {
                panic!(
                    "emuload: tick {i}: sector {prev} holds {held}, not tick {}'s write",
                    i - 1
                );
            }
        }
        fill(sector, i);
        if let Err(e) = ata.write(lba, sector) {
            panic!("emuload: tick {i}: write of sector {lba} failed: {e:?}");
        }
        let id = i as u16;
        net.exchange(
            &mut clock,
            frame,
            "UDP echo",
            &|p, f| {
                f[UDP_PAYLOAD..UDP_PAYLOAD + 8].copy_from_slice(&i.to_le_bytes());
                p.udp_datagram(f, ECHO_PORT, 8, id)
            },
            Some(i),
            &|_| false,
        );
        println!("tick {i} lba {lba} ok");
    }
    println!(
        "emuload: done {} echoes={} retries={} stale={}",
        a.ticks, net.proto.counts.echoes, net.retries, net.stale
    );
    crate::exit(0)
}
