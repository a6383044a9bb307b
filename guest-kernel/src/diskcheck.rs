//! `disk`: the ATA disk check, the same on pvkit (`pvkit run --disk`) and on a stock
//! hypervisor (QEMU's IDE disk): emulated devices only, so it proves the emulated path.
//!
//! 1. probe the primary master (IDENTIFY); it must have at least [`MIN_SECTORS`] sectors;
//! 2. read sectors `0..4` and print their FNV-1a 64 hash (the host knows what it put there);
//! 3. write sectors `8..12` with [`pattern`], flush, read them back (timed), compare;
//! 4. print one line per step:
//!
//! ```text
//! disk: ata 2048 sectors lba48=true
//! disk: read lba 0+4 fnv1a64=0123456789abcdef
//! disk: wrote lba 8+4, flushed, read back equal
//! disk: read back in 1234 us (clock=pit)
//! ```
//!
//! The time source is the PV clock when the host offers it (feature `CLOCK`), else the PIT.
//! Any failure panics (reported to the host, or on a stock hypervisor printed on the UART
//! with exit status [`pvkit_guest::pvh::FAILURE_EXIT`]).

use crate::statics::{Exclusive, Pages};
use pvkit_abi::boot::BootInfo;
use pvkit_abi::cpuid::Features;
use pvkit_guest::ata::SECTOR_SIZE;
use pvkit_guest::clock::ClockPage;

/// Sectors read first.
pub const READ_LBA: u64 = 0;
/// Sectors written, flushed and read back.
pub const WRITE_LBA: u64 = 8;
/// Sectors per step.
pub const SECTORS: usize = 4;
/// The smallest disk the check runs on.
pub const MIN_SECTORS: u64 = WRITE_LBA + SECTORS as u64;

/// Byte `i` of the sector at `lba` as the check writes it (docs/DESIGN.md "Booting on
/// QEMU" states the same formula, which the QEMU test checks on the image).
pub const fn pattern(lba: u64, i: usize) -> u8 {
    (lba as u8).wrapping_mul(31) ^ (i as u8) ^ ((i >> 8) as u8).wrapping_mul(0x55)
}

/// FNV-1a, 64-bit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Two sector buffers of [`SECTORS`] sectors each.
static BUFFERS: Exclusive<Pages<{ 2 * SECTORS * SECTOR_SIZE }>> = Exclusive::new(Pages::zeroed());
/// The PV clock page, when the host offers the PV clock.
static CLOCK: ClockPage = ClockPage::new();

/// The time source of the check.
enum Clock {
    Pv(pvkit_guest::clock::ClockReader),
    Pit(pvkit_guest::pit::PitClock<pvkit_guest::port::Pio>),
}

impl Clock {
    /// The PV clock if offered (and registered), else the PIT; `None` without either.
    fn pick(features: Features) -> Option<Clock> {
        if features.contains(Features::CLOCK) {
            if let Ok(reader) = pvkit_guest::clock::register(&CLOCK) {
                return Some(Clock::Pv(reader));
            }
        }
        crate::pit::probe().map(Clock::Pit)
    }

    fn name(&self) -> &'static str {
        match self {
            Clock::Pv(_) => "pv",
            Clock::Pit(_) => "pit",
        }
    }

    fn ns(&mut self) -> u64 {
        match self {
            Clock::Pv(r) => r.nanoseconds(),
            Clock::Pit(p) => p.nanoseconds(),
        }
    }
}

/// Runs the check (see the module documentation). Panics on any failure.
pub fn run(boot: &BootInfo) {
    let mut ata = match crate::ata::probe() {
        Ok(ata) => ata,
        Err(e) => panic!("disk: no usable ATA disk: {e:?}"),
    };
    let id = ata.identity();
    println!("disk: ata {} sectors lba48={}", id.sectors, id.lba48);
    if id.sectors < MIN_SECTORS {
        panic!(
            "disk: {} sectors, the check needs {MIN_SECTORS}",
            id.sectors
        );
    }

    let bufs = &mut BUFFERS.take().0;
    let (a, b) = bufs.split_at_mut(SECTORS * SECTOR_SIZE);
    if let Err(e) = ata.read(READ_LBA, a) {
        panic!("disk: reading lba {READ_LBA}+{SECTORS}: {e:?}");
    }
    println!(
        "disk: read lba {READ_LBA}+{SECTORS} fnv1a64={:016x}",
        fnv1a64(a)
    );

    for (s, sector) in a.chunks_exact_mut(SECTOR_SIZE).enumerate() {
        for (i, byte) in sector.iter_mut().enumerate() {
            *byte = pattern(WRITE_LBA + s as u64, i);
        }
    }
    if let Err(e) = ata.write(WRITE_LBA, a) {
        panic!("disk: writing lba {WRITE_LBA}+{SECTORS}: {e:?}");
    }
    if let Err(e) = ata.flush() {
        panic!("disk: flush: {e:?}");
    }
    let mut clock = Clock::pick(Features::from_bits_truncate(boot.features));
    let t0 = clock.as_mut().map(Clock::ns);
    if let Err(e) = ata.read(WRITE_LBA, b) {
        panic!("disk: reading back lba {WRITE_LBA}+{SECTORS}: {e:?}");
    }
    let t1 = clock.as_mut().map(Clock::ns);
    if a != b {
        let at = a
            .iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        panic!(
            "disk: read back differs at byte {at}: wrote {:#04x}, read {:#04x}",
            a[at], b[at]
        );
    }
    println!("disk: wrote lba {WRITE_LBA}+{SECTORS}, flushed, read back equal");
    match (clock, t0, t1) {
        (Some(c), Some(t0), Some(t1)) => println!(
            "disk: read back in {} us (clock={})",
            t1.saturating_sub(t0) / 1000,
            c.name()
        ),
        _ => println!("disk: no clock to time the read"),
    }
}
