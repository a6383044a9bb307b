//! The emulated 8254 PIT with port B (`0x61`) on the port bus: the pure state machine of
//! `pvkit_devices::pit` behind one [`BusDevice`] on two ranges, reading time from the VM
//! clock ([`VmTime`]).
//!
//! Every access is one exit, counted by the ledger under its port before it gets here.

use std::sync::{Arc, Mutex};

use pvkit_devices::pit::{Pit, PIT_PORT_B, PIT_PORT_COUNTER0};

use super::vm_clock::VmTime;
use crate::bus::{BusDevice, BusError, PortBus};
use crate::runtime::sync::lock;

/// First PIT port and the number of PIT ports (`0x40..=0x43`).
pub const PIT_BASE: u16 = PIT_PORT_COUNTER0;
/// Number of PIT ports.
pub const PIT_LEN: u16 = 4;

/// The PIT and port B as a bus device. The 8254 is an 8-bit device: each byte of an access
/// is one byte access to the port, in order (which is what a `rep insb`/`rep outsb`
/// batched by KVM means; a 16- or 32-bit access to these ports is treated the same way).
pub struct PitPorts<C: VmTime> {
    pit: Arc<Mutex<Pit>>,
    clock: C,
}

impl<C: VmTime> BusDevice for PitPorts<C> {
    fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
        let Some(port) = base.checked_add(offset).and_then(|p| u16::try_from(p).ok()) else {
            data.fill(0xff);
            return;
        };
        let now = self.clock.now_ns();
        let mut pit = lock(&self.pit);
        for b in data {
            *b = pit.read(port, now);
        }
    }

    fn write(&self, base: u64, offset: u64, data: &[u8]) {
        let Some(port) = base.checked_add(offset).and_then(|p| u16::try_from(p).ok()) else {
            return;
        };
        let now = self.clock.now_ns();
        let mut pit = lock(&self.pit);
        for b in data {
            pit.write(port, *b, now);
        }
    }
}

/// Puts a PIT on `0x40..=0x43` and port B on `0x61`, both reading time from `clock`.
pub fn attach_pit<C: VmTime + 'static>(
    bus: &mut PortBus,
    clock: C,
) -> Result<Arc<Mutex<Pit>>, BusError> {
    let pit = Arc::new(Mutex::new(Pit::new()));
    let dev = Arc::new(PitPorts {
        pit: Arc::clone(&pit),
        clock,
    });
    bus.insert(PIT_BASE.into(), PIT_LEN.into(), "pit", dev.clone())?;
    bus.insert(PIT_PORT_B.into(), 1, "pit port b", dev)?;
    Ok(pit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::vm_clock::VmClock;
    use pvkit_devices::VmClockState;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn inb(bus: &PortBus, port: u16) -> u8 {
        let mut b = [0u8];
        assert!(bus.read(port.into(), &mut b), "port {port:#x} unclaimed");
        b[0]
    }

    #[derive(Clone, Default)]
    struct FakeTime(Arc<AtomicU64>);
    impl VmTime for FakeTime {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn read_counter0(bus: &PortBus) -> u16 {
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
        let a = read_counter0(&bus);
        // 1 ms = 1193 ticks.
        t.0.store(1_000_000, Ordering::Relaxed);
        let b = read_counter0(&bus);
        let ticks = a.wrapping_sub(b);
        assert!((1192..=1194).contains(&ticks), "{a} -> {b}: {ticks} ticks");
        // A 2-byte read of the counter port is two byte reads (LSB then MSB).
        bus.write(0x43, &[0x00]);
        let mut w = [0u8; 2];
        bus.read(0x40, &mut w);
        assert_eq!(u16::from_le_bytes(w), b);
        // Port B: gate 2 on, then read back bit 0.
        bus.write(0x61, &[0x01]);
        assert_eq!(inb(&bus, 0x61) & 1, 1);
        // Nothing else claimed around it.
        let mut x = [0u8];
        assert!(!bus.read(0x44, &mut x));
        assert!(!bus.read(0x60, &mut x));
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
        let before = read_counter0(&bus);
        let state = pit.lock().unwrap().state();
        let clock = VmClock::resume(&VmClockState::new(10_000_000)).unwrap();
        let mut bus2 = PortBus::new();
        let pit2 = attach_pit(&mut bus2, clock).unwrap();
        *pit2.lock().unwrap() = Pit::from_state(&state).unwrap();
        let after = read_counter0(&bus2);
        // Less than 10 ms (11932 ticks) passed between the resume and the read.
        assert!(before.wrapping_sub(after) < 11_932, "{before} -> {after}");
    }
}
