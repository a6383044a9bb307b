//! `workload=N [workload_ms=M] [hints] [workload_disk]`: a guest that keeps working while it
//! is migrated. With `workload_ms=M` each tick lasts at least `M` ms of PV clock time (the
//! clock page is registered, and survives the migration with the VM state), so a run takes
//! at least `N·M` ms whatever the host's speed.
//!
//! 1. The free region: RAM above the kernel and the heap (2 MiB aligned, as the balloon
//!    check takes it) up to the end of RAM. One word is written in each of its pages, as a
//!    guest's free memory holds old data, so a migration that does not know it is free must
//!    send it. Prints `workload: free START..END MIB MiB hints=on|off`.
//! 2. `N` ticks (0: until the host stops the VM). Tick `i` writes one word in
//!    [`DIRTY_PER_TICK`] pages of a 256 KiB working set (pages the migration must resend)
//!    and prints `tick i`. With `workload_disk`, every [`DISK_EVERY`]th tick writes sector
//!    `DISK_LBA + (i / DISK_EVERY) % DISK_SLOTS` through the PV block call, filled with the
//!    tick number (`u64` little-endian, repeated), and prints `ack i lba L` once the host
//!    has answered: an acknowledged write.
//! 3. With `hints` (and the host's `FREE_PAGE_HINT`), each tick names the free region in
//!    one `FreePageHint` call (2 MiB ranges). The host records hints only while a migration
//!    tracks dirty pages, so they are repeated; without `hints` the same guest stands for
//!    an unmodified one.
//! 4. After `N` ticks: `workload: done N`, then exit 0.
//!
//! The console must be the PV console: one line is one hypercall, so a line is printed
//! entirely before or entirely after a migration's pause.

use crate::heap::MAX_HEAP;
use crate::statics::{Exclusive, Pages};
use pvkit_abi::balloon::{BalloonRange, BALLOON_MAX_RANGES, BALLOON_PAGE_SIZE};
use pvkit_abi::boot::{BootInfo, IDENTITY_MAP_SIZE};
use pvkit_abi::cpuid::Features;
use pvkit_guest::balloon::{Batch, Hypercalls, Op};
use pvkit_guest::block::PvBlock;

/// The `workload=` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadArgs {
    /// Ticks to run (0: for ever).
    pub ticks: u64,
    /// Send free-page hints.
    pub hints: bool,
    /// Write the disk every [`DISK_EVERY`] ticks.
    pub disk: bool,
    /// Least milliseconds per tick (0: as fast as it goes).
    pub tick_ms: u64,
}

/// Pages of the working set written per tick.
pub const DIRTY_PER_TICK: usize = 8;
/// A disk write every this many ticks.
pub const DISK_EVERY: u64 = 4;
/// First sector the workload writes.
pub const DISK_LBA: u64 = 16;
/// Sectors it cycles through.
pub const DISK_SLOTS: u64 = 64;

const WORKING_SET: usize = 256 << 10;
static WORKING: Exclusive<Pages<WORKING_SET>> = Exclusive::new(Pages::zeroed());
static SECTOR: Exclusive<Pages<4096>> = Exclusive::new(Pages::zeroed());
static CLOCK: pvkit_guest::clock::ClockPage = pvkit_guest::clock::ClockPage::new();
static RANGES: Exclusive<[BalloonRange; BALLOON_MAX_RANGES as usize]> =
    Exclusive::new([BalloonRange { gpa: 0, pages: 0 }; BALLOON_MAX_RANGES as usize]);

extern "C" {
    static __kernel_end: u8;
}

/// Runs the workload and exits.
pub fn run(a: WorkloadArgs, boot: &BootInfo) -> ! {
    const TWO_MIB: u64 = 2 << 20;
    let kernel_end = (&raw const __kernel_end) as u64;
    let start = (kernel_end + MAX_HEAP).div_ceil(TWO_MIB) * TWO_MIB;
    let end = boot.mem_size.min(IDENTITY_MAP_SIZE) / TWO_MIB * TWO_MIB;
    let end = end.max(start);
    let offered = Features::from_bits_truncate(boot.features).contains(Features::FREE_PAGE_HINT);
    let hints = a.hints && offered;
    for (i, gpa) in (start..end).step_by(BALLOON_PAGE_SIZE as usize).enumerate() {
        // SAFETY: `gpa` is RAM above the kernel image and the heap, under the identity
        // map; nothing else in this kernel uses it.
        unsafe { (gpa as *mut u64).write_volatile(0xf4ee_0000_0000_0000 | i as u64) };
    }
    println!(
        "workload: free {start:#x}..{end:#x} {} MiB hints={}",
        (end - start) >> 20,
        if hints { "on" } else { "off" }
    );
    let working = WORKING.take();
    let sector = SECTOR.take();
    let ranges = RANGES.take();
    let mut disk = PvBlock::new();
    let pages = WORKING_SET / 4096;
    let clock = match a.tick_ms {
        0 => None,
        _ if !Features::from_bits_truncate(boot.features).contains(Features::CLOCK) => {
            panic!("workload: workload_ms needs the PV clock")
        }
        _ => match pvkit_guest::clock::register(&CLOCK) {
            Ok(c) => Some(c),
            Err(e) => panic!("workload: clock registration failed: {e:?}"),
        },
    };
    let tick_ns = a.tick_ms.saturating_mul(1_000_000);
    let mut next = clock.as_ref().map_or(0, |c| c.nanoseconds());
    let mut i = 0u64;
    while a.ticks == 0 || i < a.ticks {
        if let Some(c) = &clock {
            next = next.saturating_add(tick_ns);
            while c.nanoseconds() < next {
                core::hint::spin_loop();
            }
        }
        for k in 0..DIRTY_PER_TICK {
            let page = (i as usize * DIRTY_PER_TICK + k) % pages;
            let at = page * 4096 + (i as usize % 512) * 8;
            // SAFETY: `at + 8 ≤ WORKING_SET`: `page < pages` and the word index < 512.
            unsafe { (working.0.as_mut_ptr().add(at) as *mut u64).write_volatile(i) };
        }
        println!("tick {i}");
        if a.disk && i.is_multiple_of(DISK_EVERY) {
            let lba = DISK_LBA + (i / DISK_EVERY) % DISK_SLOTS;
            for w in sector.0[..512].chunks_exact_mut(8) {
                w.copy_from_slice(&i.to_le_bytes());
            }
            match disk.write(lba, &sector.0[..512]) {
                Ok(_) => println!("ack {i} lba {lba}"),
                Err(s) => panic!("workload: disk write of tick {i} failed: {s}"),
            }
        }
        if hints && end > start {
            let mut b = Batch::new(Op::Hint, &mut ranges[..], Hypercalls);
            if let Err(s) = b
                .push_region(start, end - start, TWO_MIB)
                .and_then(|()| b.flush())
            {
                panic!("workload: free-page hint failed: {s}");
            }
        }
        i += 1;
    }
    println!("workload: done {i}");
    crate::exit(0)
}
