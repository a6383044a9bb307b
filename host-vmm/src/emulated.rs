//! The emulated legacy devices on the port bus: the ATA disk (primary channel) and the
//! 8254 PIT with port B.
//!
//! The device models are the pure state machines of `pvkit-devices`; the adapters here only
//! translate a bus access (device-relative offset, data slice) into the model's call
//! (absolute port, data, current time). A model that answers on two port ranges (the ATA
//! command block and its control port; the PIT and port `0x61`) is shared by its two bus
//! entries through an `Arc<Mutex<_>>` that only the vCPU thread ever locks.
//!
//! Every access is one exit, counted by the ledger under its port
//! ([`crate::ledger::ExitKind::PortRead`]/[`crate::ledger::ExitKind::PortWrite`]) before it
//! gets here.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use pvkit_devices::ata::{Ata, ATA_PRIMARY_CMD_BASE, ATA_PRIMARY_CMD_LEN, ATA_PRIMARY_CTRL};
use pvkit_devices::pit::{Pit, PIT_PORT_B, PIT_PORT_COUNTER0};
use pvkit_devices::{BlockBackend, StateError, VmClockState};

use crate::bus::{BusError, PortBus, PortDevice};
use crate::sync::lock;

/// First PIT port and the number of PIT ports (`0x40..=0x43`).
pub const PIT_BASE: u16 = PIT_PORT_COUNTER0;
/// Number of PIT ports.
pub const PIT_LEN: u16 = 4;

/// Monotonic nanoseconds since the VM started, for the PIT and the PV clock.
pub trait VmTime: Send + Sync {
    /// Nanoseconds since the VM started (host `CLOCK_MONOTONIC`).
    fn now_ns(&self) -> u64;
}

/// The VM's clock: host `CLOCK_MONOTONIC` (`Instant`) since the VM was created, plus the
/// VM time it was resumed from ([`VmClock::resume`]).
#[derive(Clone, Copy, Debug)]
pub struct VmClock {
    start: Instant,
    /// VM time at `start`: 0, or the saved time of a restored VM.
    base_ns: u64,
}

impl VmClock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            base_ns: 0,
        }
    }

    /// The clock's state (its current time), for a snapshot. Save it after the devices.
    pub fn state(&self) -> VmClockState {
        VmClockState::new(self.now_ns())
    }

    /// A clock continuing from a saved state: it reads the saved time now and counts on
    /// from there, so a restored VM's time never goes backwards.
    pub fn resume(state: &VmClockState) -> Result<Self, StateError> {
        Ok(Self {
            start: Instant::now(),
            base_ns: state.resume_ns()?,
        })
    }

    /// The host instant the clock started (or resumed) counting at.
    pub fn started_at(&self) -> Instant {
        self.start
    }
}

impl VmTime for VmClock {
    fn now_ns(&self) -> u64 {
        // Saturates after 584 years.
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(elapsed)
    }
}

/// One bus entry of the ATA disk: the command block (`0x1F0..=0x1F7`) or the control port
/// (`0x3F6`). Data slices are passed through unchanged, so KVM's batched string PIO
/// (`rep insw` of a whole sector in one exit) moves the whole slice in one call.
pub struct AtaPorts<B: BlockBackend> {
    ata: Arc<Mutex<Ata<B>>>,
    base: u16,
}

impl<B: BlockBackend> PortDevice for AtaPorts<B> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        lock(&self.ata).read(self.base.wrapping_add(offset), data);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        lock(&self.ata).write(self.base.wrapping_add(offset), data);
    }
}

/// Puts the ATA disk over `backend` on the primary channel: `0x1F0..=0x1F7` and `0x3F6`.
/// Returns the shared model (for tests and inspection).
pub fn attach_ata<B: BlockBackend + 'static>(
    bus: &mut PortBus,
    backend: B,
) -> Result<Arc<Mutex<Ata<B>>>, BusError> {
    let ata = Arc::new(Mutex::new(Ata::new(backend)));
    bus.insert(
        ATA_PRIMARY_CMD_BASE,
        ATA_PRIMARY_CMD_LEN,
        Box::new(AtaPorts {
            ata: Arc::clone(&ata),
            base: ATA_PRIMARY_CMD_BASE,
        }),
    )?;
    bus.insert(
        ATA_PRIMARY_CTRL,
        1,
        Box::new(AtaPorts {
            ata: Arc::clone(&ata),
            base: ATA_PRIMARY_CTRL,
        }),
    )?;
    Ok(ata)
}

/// One bus entry of the PIT: the counters and control word (`0x40..=0x43`) or port B
/// (`0x61`). The 8254 is an 8-bit device: each byte of an access is one byte access to the
/// port, in order (which is what a `rep insb`/`rep outsb` batched by KVM means; a 16- or
/// 32-bit access to these ports is treated the same way).
pub struct PitPorts<C: VmTime> {
    pit: Arc<Mutex<Pit>>,
    base: u16,
    clock: C,
}

impl<C: VmTime> PortDevice for PitPorts<C> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let port = self.base.wrapping_add(offset);
        let now = self.clock.now_ns();
        let mut pit = lock(&self.pit);
        for b in data {
            *b = pit.read(port, now);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let port = self.base.wrapping_add(offset);
        let now = self.clock.now_ns();
        let mut pit = lock(&self.pit);
        for b in data {
            pit.write(port, *b, now);
        }
    }
}

/// Puts a PIT on `0x40..=0x43` and port B on `0x61`, both reading time from `clock`.
pub fn attach_pit<C: VmTime + Clone + 'static>(
    bus: &mut PortBus,
    clock: C,
) -> Result<Arc<Mutex<Pit>>, BusError> {
    let pit = Arc::new(Mutex::new(Pit::new()));
    bus.insert(
        PIT_BASE,
        PIT_LEN,
        Box::new(PitPorts {
            pit: Arc::clone(&pit),
            base: PIT_BASE,
            clock: clock.clone(),
        }),
    )?;
    bus.insert(
        PIT_PORT_B,
        1,
        Box::new(PitPorts {
            pit: Arc::clone(&pit),
            base: PIT_PORT_B,
            clock,
        }),
    )?;
    Ok(pit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_devices::ata::{command, port, status};
    use pvkit_devices::MemBackend;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn disk() -> MemBackend {
        // Sector n holds the byte n everywhere.
        MemBackend::from_vec((0..64 * 512).map(|i| (i / 512) as u8).collect())
    }

    fn inb(bus: &mut PortBus, port: u16) -> u8 {
        let mut b = [0u8];
        assert!(bus.read(port, &mut b), "port {port:#x} unclaimed");
        b[0]
    }

    #[test]
    fn ata_identify_and_read_through_the_bus() {
        let mut bus = PortBus::new();
        let ata = attach_ata(&mut bus, disk()).unwrap();
        assert_eq!(ata.lock().unwrap().sectors(), 64);
        // IDENTIFY: device, command, status, one 512-byte string read.
        bus.write(port::DEVICE, &[0xa0]);
        bus.write(port::COMMAND, &[command::IDENTIFY_DEVICE]);
        assert_ne!(inb(&mut bus, port::STATUS) & status::DRQ, 0);
        let mut id = [0u8; 512];
        bus.read(port::DATA, &mut id);
        // Words 60-61: LBA28 sector count.
        assert_eq!(u32::from_le_bytes([id[120], id[121], id[122], id[123]]), 64);
        assert_eq!(inb(&mut bus, port::STATUS) & status::DRQ, 0);
        // READ SECTORS of 2 sectors at LBA 5: the string read crosses a sector boundary.
        for (p, v) in [
            (port::DEVICE, 0xe0),
            (port::SECTOR_COUNT, 2),
            (port::LBA_LOW, 5),
            (port::LBA_MID, 0),
            (port::LBA_HIGH, 0),
            (port::COMMAND, command::READ_SECTORS),
        ] {
            bus.write(p, &[v]);
        }
        // The control port reaches the same device: alternate status shows DRQ.
        assert_ne!(inb(&mut bus, ATA_PRIMARY_CTRL) & status::DRQ, 0);
        let mut data = [0u8; 1024];
        bus.read(port::DATA, &mut data[..512]);
        // Word by word, as a non-batched driver would.
        for w in data[512..].chunks_mut(2) {
            bus.read(port::DATA, w);
        }
        assert!(data[..512].iter().all(|&b| b == 5));
        assert!(data[512..].iter().all(|&b| b == 6));
        assert_eq!(inb(&mut bus, port::STATUS) & (status::DRQ | status::ERR), 0);
    }

    #[test]
    fn ata_write_reaches_the_backend_and_errors_are_status() {
        let mut bus = PortBus::new();
        let ata = attach_ata(&mut bus, disk()).unwrap();
        for (p, v) in [
            (port::DEVICE, 0xe0),
            (port::SECTOR_COUNT, 1),
            (port::LBA_LOW, 3),
            (port::LBA_MID, 0),
            (port::LBA_HIGH, 0),
            (port::COMMAND, command::WRITE_SECTORS),
        ] {
            bus.write(p, &[v]);
        }
        bus.write(port::DATA, &[0xab; 512]);
        assert_eq!(inb(&mut bus, port::STATUS) & status::ERR, 0);
        let got = ata.lock().unwrap().backend().as_slice()[3 * 512..4 * 512].to_vec();
        assert_eq!(got, vec![0xab; 512]);
        // Past the end of the disk: an ATA error, not a panic.
        for (p, v) in [
            (port::SECTOR_COUNT, 1),
            (port::LBA_LOW, 200),
            (port::COMMAND, command::READ_SECTORS),
        ] {
            bus.write(p, &[v]);
        }
        assert_ne!(inb(&mut bus, port::STATUS) & status::ERR, 0);
        // Odd widths and empty accesses are harmless.
        bus.write(port::COMMAND, &[]);
        bus.read(port::STATUS, &mut []);
        bus.write(ATA_PRIMARY_CTRL, &[0, 0, 0, 0]);
    }

    #[derive(Clone, Default)]
    struct FakeTime(Arc<AtomicU64>);
    impl VmTime for FakeTime {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn read_counter0(bus: &mut PortBus) -> u16 {
        bus.write(0x43, &[0x00]); // latch counter 0
        let lo = inb(bus, 0x40);
        let hi = inb(bus, 0x40);
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn pit_counts_down_with_the_vm_clock() {
        let t = FakeTime::default();
        let mut bus = PortBus::new();
        attach_pit(&mut bus, t.clone()).unwrap();
        // Counter 0, lobyte/hibyte, mode 2, count 0 (65536).
        bus.write(0x43, &[0x34]);
        bus.write(0x40, &[0]);
        bus.write(0x40, &[0]);
        let a = read_counter0(&mut bus);
        // 1 ms = 1193 ticks.
        t.0.store(1_000_000, Ordering::Relaxed);
        let b = read_counter0(&mut bus);
        let ticks = a.wrapping_sub(b);
        assert!((1192..=1194).contains(&ticks), "{a} -> {b}: {ticks} ticks");
        // A 2-byte read of the counter port is two byte reads (LSB then MSB).
        bus.write(0x43, &[0x00]);
        let mut w = [0u8; 2];
        bus.read(0x40, &mut w);
        assert_eq!(u16::from_le_bytes(w), b);
        // Port B: gate 2 on, then read back bit 0.
        bus.write(0x61, &[0x01]);
        assert_eq!(inb(&mut bus, 0x61) & 1, 1);
        // Nothing else claimed around it.
        let mut x = [0u8];
        assert!(!bus.read(0x44, &mut x));
        assert!(!bus.read(0x60, &mut x));
    }

    #[test]
    fn vm_clock_is_monotonic_from_zero() {
        let c = VmClock::start();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        assert!(a < 1_000_000_000);
        assert!(c.started_at() <= Instant::now());
    }

    #[test]
    fn resumed_vm_clock_continues_from_the_saved_time() {
        let c = VmClock::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let saved = c.state();
        assert!(saved.now_ns >= 2_000_000);
        let r = VmClock::resume(&saved).unwrap();
        let (a, b) = (r.now_ns(), r.now_ns());
        assert!(a >= saved.now_ns && b >= a);
        // Generous: the resumed clock did not jump ahead either.
        assert!(a - saved.now_ns < 10_000_000_000);
        let future = VmClockState {
            version: 9,
            ..saved
        };
        assert!(VmClock::resume(&future).is_err());
    }

    /// A PIT saved mid-count and rebuilt on a resumed VM clock reads the count it would
    /// have read without the save (up to the time spent saving).
    #[test]
    fn pit_keeps_counting_on_a_resumed_clock() {
        let t = FakeTime::default();
        let mut bus = PortBus::new();
        let pit = attach_pit(&mut bus, t.clone()).unwrap();
        bus.write(0x43, &[0x34]);
        bus.write(0x40, &[0]);
        bus.write(0x40, &[0]);
        t.0.store(10_000_000, Ordering::Relaxed);
        let before = read_counter0(&mut bus);
        let state = pit.lock().unwrap().state();
        let clock = VmClock::resume(&VmClockState::new(10_000_000)).unwrap();
        let mut bus2 = PortBus::new();
        let pit2 = attach_pit(&mut bus2, clock).unwrap();
        *pit2.lock().unwrap() = Pit::from_state(&state).unwrap();
        let after = read_counter0(&mut bus2);
        // Less than 10 ms (11932 ticks) passed between the resume and the read.
        assert!(before.wrapping_sub(after) < 11_932, "{before} -> {after}");
    }
}
