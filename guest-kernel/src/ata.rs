//! The emulated (or real) ATA disk: the primary channel's master, through the polling PIO
//! driver [`pvkit_guest::ata`].
//!
//! The driver itself lives in `pvkit-guest` so that its exact port-access sequence is unit
//! tested there with a recording port backend; this module gives the kernel its instance,
//! on real port I/O. Port accesses per operation, on the emulated disk, and the VM exits
//! they make on KVM (where each element of a `rep outsw` exits on its own, while a
//! `rep insw` of one sector inside one page is a single exit):
//!
//! | operation | port accesses | exits on KVM |
//! |---|---|---|
//! | [`probe`] | 7: control, device, status, IDENTIFY, status, `rep insw` ×256, status | 7 |
//! | `n`-sector read, LBA28 (`lba + n <= 2^28`, `n <= 256`) | `2n + 7`: 6 task-file writes; per sector 1 status read + 1 `rep insw`; 1 completion status read | `2n + 7` |
//! | `n`-sector write, LBA28 | `2n + 7`, with `rep outsw` | `257n + 7` |
//! | `n`-sector read / write, LBA48 (`n > 256` or past `2^28`; one command per 65536 sectors) | `2n + 11` | `2n + 11` / `257n + 11` |
//! | flush (FLUSH CACHE EXT on LBA48 disks) | 3: device write, command write, status read | 3 |
//!
//! So a 4 KiB read is 23 exits and a 4 KiB write 2063; a 1 MiB read (2048 sectors, one EXT
//! command) 4107 exits and a 1 MiB write 526 347. Our buffers are 4 KiB aligned, so no
//! sector straddles a page.

use pvkit_guest::ata::{Ata, ProbeError};
use pvkit_guest::port::Pio;

/// Probes the primary master and identifies it (7 port accesses when a disk is there;
/// 3 when the bus floats).
pub fn probe() -> Result<Ata<Pio>, ProbeError> {
    // SAFETY: the kernel runs in ring 0 and owns the primary ATA channel; the driver uses
    // PIO only (no DMA), so its port accesses cannot write memory other than its buffers.
    Ata::probe(unsafe { Pio::new() })
}
