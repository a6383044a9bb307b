//! What the built-in guest's migration workload (guest-kernel/src/workload.rs) leaves
//! behind, and the checks a live migration must pass on it: the console's `tick I` and
//! `ack I lba L` lines, the `workload: free … N MiB …` line, the sectors of acknowledged
//! writes on the disk, and the exits of the whole run.

use std::collections::BTreeMap;

use pvkit_abi::call::Hypercall;
use pvkit_vmm::exit::ledger::{ExitKind, LedgerSnapshot};

/// A disk write every this many ticks (the guest's `DISK_EVERY`).
pub const DISK_EVERY: u64 = 4;
/// First sector the workload writes (the guest's `DISK_LBA`).
pub const DISK_LBA: u64 = 16;
/// Sectors it cycles through (the guest's `DISK_SLOTS`).
pub const DISK_SLOTS: u64 = 64;
/// Console lines besides ticks and acks: the banner, the free line, the done line.
pub const OTHER_LINES: u64 = 3;

/// The ticks printed on `console`, in order.
pub fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

/// The `ack TICK lba LBA` lines: the last acknowledged tick per sector.
pub fn acks(console: &str) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for l in console.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let ["ack", t, "lba", s] = w[..] {
            if let (Ok(t), Ok(s)) = (t.parse(), s.parse()) {
                m.insert(s, t);
            }
        }
    }
    m
}

/// MiB of free RAM the workload declared (`workload: free START..END MIB MiB hints=…`).
pub fn free_mib(console: &str) -> Option<u64> {
    console.lines().find_map(|l| {
        let rest = l.strip_prefix("workload: free ")?;
        rest.split_whitespace().nth(1)?.parse().ok()
    })
}

/// The sector tick `i` writes.
pub fn sector_of(tick: u64) -> u64 {
    DISK_LBA + (tick / DISK_EVERY) % DISK_SLOTS
}

/// The tick whose write sector `lba` of `disk` holds (`None`: not a workload sector).
pub fn tick_in_sector(disk: &[u8], lba: u64) -> Option<u64> {
    let at = usize::try_from(lba).ok()?.checked_mul(512)?;
    let sector = disk.get(at..at.checked_add(512)?)?;
    let first = &sector[..8];
    sector
        .chunks_exact(8)
        .all(|w| w == first)
        .then(|| u64::from_le_bytes(first.try_into().unwrap_or_default()))
}

/// A migrated run of `ticks` ticks checked: every tick exactly once and in order across the
/// source (`before`) and the target (`after`), the target finished, the target printed at
/// least one tick (the migration happened mid-run), and every acknowledged write, on
/// either host, is on the disk.
pub fn check_continuity(
    before: &str,
    after: &str,
    ticks_total: u64,
    disk: &[u8],
) -> Result<(), String> {
    let (b, a) = (ticks(before), ticks(after));
    let first_after = *a.first().ok_or("the target printed no tick")?;
    let last_before = b.last().copied();
    if last_before.map_or(0, |t| t + 1) != first_after {
        return Err(format!(
            "a gap or a repeat at the hand-over: last tick on the source {last_before:?}, \
             first on the target {first_after}"
        ));
    }
    let all: Vec<u64> = b.into_iter().chain(a).collect();
    if all != (0..ticks_total).collect::<Vec<_>>() {
        return Err(format!(
            "the ticks are not 0..{ticks_total} once each ({} printed)",
            all.len()
        ));
    }
    let done = format!("workload: done {ticks_total}");
    if !after.lines().any(|l| l == done) {
        return Err("the target did not finish the workload".into());
    }
    let mut acked = acks(before);
    acked.extend(acks(after));
    for (lba, tick) in &acked {
        if tick_in_sector(disk, *lba) != Some(*tick) {
            return Err(format!(
                "sector {lba} does not hold the write acknowledged at tick {tick}"
            ));
        }
    }
    Ok(())
}

/// The exits of the whole migrated run (the ledger travels with the state; the target's
/// counts on) are exactly the guest's: one console hypercall per line, one block call per
/// acknowledged write, one free-page hint per tick with `hints` (none without), one exit.
pub fn check_exits(ledger: &LedgerSnapshot, ticks_total: u64, hints: bool) -> Result<(), String> {
    let writes = ticks_total.div_ceil(DISK_EVERY);
    let want = [
        (Hypercall::ConsoleWrite, ticks_total + writes + OTHER_LINES),
        (Hypercall::BlockIo, writes),
        (Hypercall::FreePageHint, if hints { ticks_total } else { 0 }),
        (Hypercall::Exit, 1),
    ];
    for (call, n) in want {
        let got = ledger.count(ExitKind::Hypercall(call));
        if got != n {
            return Err(format!(
                "{} exits of hypercall {}, expected exactly {n}",
                got,
                call.name()
            ));
        }
    }
    Ok(())
}

/// The PV pair: the bytes sent with hints are at most those without times the guest's free
/// fraction of RAM left over.
pub fn check_hints_saved(
    bytes_with: u64,
    bytes_without: u64,
    free_fraction: f64,
) -> Result<(), String> {
    if !(0.0..=1.0).contains(&free_fraction) {
        return Err(format!("free fraction {free_fraction} is not in 0..=1"));
    }
    let bound = bytes_without as f64 * (1.0 - free_fraction);
    if bytes_with as f64 > bound {
        return Err(format!(
            "hints saved less than the free fraction {free_fraction:.3}: {bytes_with} bytes \
             with hints, {bytes_without} without"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with(writes: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; 1 << 20];
        for &(lba, tick) in writes {
            let at = lba as usize * 512;
            d[at..at + 512].copy_from_slice(&tick.to_le_bytes().repeat(64));
        }
        d
    }

    fn console(range: std::ops::Range<u64>, done: bool) -> String {
        let mut s = String::new();
        for i in range.clone() {
            s.push_str(&format!("tick {i}\n"));
            if i % DISK_EVERY == 0 {
                s.push_str(&format!("ack {i} lba {}\n", sector_of(i)));
            }
        }
        if done {
            s.push_str(&format!("workload: done {}\n", range.end));
        }
        s
    }

    #[test]
    fn a_continuous_run_passes_and_broken_ones_fail() {
        let disk = disk_with(&[(16, 0), (17, 4), (18, 8)]);
        let before = format!(
            "workload: free 0x1..0x2 106 MiB hints=on\n{}",
            console(0..5, false)
        );
        assert_eq!(free_mib(&before), Some(106));
        assert_eq!(
            check_continuity(&before, &console(5..10, true), 10, &disk),
            Ok(())
        );
        // A repeat, a gap, no done line, a lost write, nothing on the target.
        assert!(check_continuity(&before, &console(4..10, true), 10, &disk).is_err());
        assert!(check_continuity(&before, &console(6..10, true), 10, &disk).is_err());
        assert!(check_continuity(&before, &console(5..10, false), 10, &disk).is_err());
        let lost = disk_with(&[(16, 0), (17, 4)]);
        assert!(check_continuity(&before, &console(5..10, true), 10, &lost).is_err());
        assert!(check_continuity(&before, "", 10, &disk).is_err());
    }

    #[test]
    fn exits_must_be_exact() {
        let mut l = LedgerSnapshot::default();
        let mut set = |c, n| {
            l.counts.insert(ExitKind::Hypercall(c), n);
        };
        set(Hypercall::ConsoleWrite, 10 + 3 + OTHER_LINES);
        set(Hypercall::BlockIo, 3);
        set(Hypercall::FreePageHint, 10);
        set(Hypercall::Exit, 1);
        assert_eq!(check_exits(&l, 10, true), Ok(()));
        assert!(check_exits(&l, 10, false).is_err());
        assert!(check_exits(&l, 11, true).is_err());
    }

    #[test]
    fn hints_must_save_the_free_fraction() {
        assert!(check_hints_saved(10, 100, 0.8).is_ok());
        assert!(check_hints_saved(30, 100, 0.8).is_err());
        assert!(check_hints_saved(0, 100, 1.5).is_err());
    }
}
