//! What the unmodified guest's workload (`emuload=N`, guest-kernel/src/emuload.rs) leaves
//! behind, and the checks a snapshot or live migration of it must pass: the UART's
//! `tick I lba L ok` lines (a line the pause cut in two is joined), the `emuload: done`
//! line with its echo counts, the sectors of acknowledged ATA writes on the disk, and the
//! exits of the whole run where the guest's work fixes them.

use pvkit_abi::call::Hypercall;
use pvkit_vmm::exit::ledger::{ExitKind, LedgerSnapshot};

/// First sector the workload writes (the guest's `DISK_LBA`).
pub const FIRST_LBA: u64 = 16;
/// Sectors it cycles through (the guest's `DISK_SLOTS`).
pub const SLOTS: u64 = 64;
/// The 16550 UART's line status port (read once per byte printed).
pub const UART_STATUS: u16 = 0x3fd;
/// The UART's data port (written once per byte printed, and once at set-up).
pub const UART_DATA: u16 = 0x3f8;
/// The ATA command port (written once per command).
pub const ATA_COMMAND: u16 = 0x1f7;
/// The NE2000's data port (a word per access of its remote DMA).
pub const NE2000_DATA: u16 = 0x310;

/// The sector tick `i` writes.
pub fn sector_of(tick: u64) -> u64 {
    FIRST_LBA + tick % SLOTS
}

/// `tick I lba L ok` → I (checking L).
pub fn tick(line: &str) -> Option<u64> {
    let w: Vec<&str> = line.split(' ').collect();
    match w[..] {
        ["tick", i, "lba", l, "ok"] => {
            let i: u64 = i.parse().ok()?;
            (l.parse::<u64>().ok()? == sector_of(i)).then_some(i)
        }
        _ => None,
    }
}

/// The lines of a captured console (a last line without its newline included).
pub fn lines(console: &str) -> Vec<String> {
    console.lines().map(str::to_owned).collect()
}

/// The lines of a run handed over from `before` to `after`: the last line of `before` is
/// joined with the first of `after` when the pause cut it (a UART line is printed byte by
/// byte; every tick line ends in `ok`).
pub fn joined(before: &[String], after: &[String]) -> Vec<String> {
    let mut all = before.to_vec();
    let mut rest = after;
    if let (Some(last), Some(first)) = (all.last_mut(), after.first()) {
        // Cut inside the line, wherever (`t`, `tic`, `tick 27` …: the source printed a
        // piece of a tick line), or just before its newline (the target's first line is
        // then empty: `emuload` prints no empty line).
        let piece_of_tick = "tick ".starts_with(last.as_str()) || last.starts_with("tick ");
        if piece_of_tick && (tick(last).is_none() || first.is_empty()) {
            last.push_str(first);
            rest = &after[1..];
        }
    }
    all.extend(rest.iter().cloned());
    all
}

/// A handed-over run of `ticks_total` ticks checked (`all` its [`joined`] lines, `resumed`
/// the lines the restored or migrated guest printed, `disk` the image after the run):
/// every tick once and in order; the resumed guest did not start over and printed at
/// least one tick; every echo came back exactly once and none was resent; every slot
/// holds its last acknowledged write.
pub fn check_continuity(
    all: &[String],
    resumed: &[String],
    ticks_total: u64,
    disk: &[u8],
) -> Result<(), String> {
    let ticks: Vec<u64> = all.iter().filter_map(|l| tick(l)).collect();
    if ticks != (0..ticks_total).collect::<Vec<_>>() {
        // Where it broke, with the lines around it.
        let at = (0..ticks_total)
            .position(|i| ticks.get(i as usize) != Some(&i))
            .unwrap_or(0);
        let line = all
            .iter()
            .position(|l| tick(l) == Some(at as u64 + 1))
            .unwrap_or(0);
        return Err(format!(
            "the ticks are not 0..{ticks_total} once each and in order ({} printed; tick \
             {at} is not where it belongs; lines around it: {:?})",
            ticks.len(),
            &all[line.saturating_sub(3)..(line + 2).min(all.len())]
        ));
    }
    if resumed.iter().any(|l| l.starts_with("emuload: ata")) {
        return Err(format!(
            "the guest started over: {:?}",
            &resumed[..resumed.len().min(3)]
        ));
    }
    if !resumed.iter().any(|l| tick(l).is_some()) {
        return Err("the hand-over came after the last tick".into());
    }
    let done = format!("emuload: done {ticks_total} echoes={ticks_total} retries=0 stale=0");
    if all.last() != Some(&done) {
        return Err(format!(
            "not every echo came back exactly once: the last line is {:?}",
            all.last()
        ));
    }
    for slot in 0..SLOTS.min(ticks_total) {
        let last = (0..ticks_total)
            .rev()
            .find(|t| t % SLOTS == slot)
            .unwrap_or_default();
        let at = usize::try_from(sector_of(last) * 512).unwrap_or(usize::MAX);
        let held = disk.get(at..at.saturating_add(512));
        if held != Some(&last.to_le_bytes().repeat(64)[..]) {
            return Err(format!(
                "sector {} does not hold the write acknowledged at tick {last}",
                sector_of(last)
            ));
        }
    }
    Ok(())
}

/// The exits of a whole run of `ticks_total` ticks whose console (all of it, over every
/// host) is `uart_bytes` long, exactly: one UART status read and one data write per byte
/// printed, plus the divisor-latch write of the UART's set-up; one ATA command per read
/// and write; on the NE2000 each frame sent once (the ARP request, then one 60-byte
/// datagram per tick: 30 word writes of a `rep outsw` that exits per word) and each reply
/// read once (a `rep insw` for its header and one for its body, after the PROM's at the
/// probe); and one `Exit` hypercall.
pub fn exact_exits(ticks_total: u64, uart_bytes: u64) -> [(ExitKind, u64); 6] {
    let frames = ticks_total + 1;
    [
        (ExitKind::PortRead(UART_STATUS), uart_bytes),
        (ExitKind::PortWrite(UART_DATA), uart_bytes + 1),
        (ExitKind::PortWrite(ATA_COMMAND), 2 * ticks_total),
        (ExitKind::PortWrite(NE2000_DATA), 30 * frames),
        (ExitKind::PortRead(NE2000_DATA), 2 * frames + 1),
        (ExitKind::Hypercall(Hypercall::Exit), 1),
    ]
}

/// The whole run's ledger (it travels with the state) against [`exact_exits`], and no
/// hypercall but the exit.
pub fn check_exits(
    ledger: &LedgerSnapshot,
    ticks_total: u64,
    uart_bytes: u64,
) -> Result<(), String> {
    for (kind, n) in exact_exits(ticks_total, uart_bytes) {
        let got = ledger.count(kind);
        if got != n {
            return Err(format!("{got} exits of {kind}, expected exactly {n}"));
        }
    }
    let hypercalls: Vec<String> = ledger
        .counts
        .iter()
        .filter(|(k, n)| {
            matches!(k, ExitKind::Hypercall(_) | ExitKind::UnknownHypercall)
                && **k != ExitKind::Hypercall(Hypercall::Exit)
                && **n > 0
        })
        .map(|(k, n)| format!("{n} × {k}"))
        .collect();
    match hypercalls.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "the unmodified guest made hypercalls: {}",
            hypercalls.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(range: std::ops::Range<u64>) -> Vec<String> {
        range
            .map(|i| format!("tick {i} lba {} ok", sector_of(i)))
            .collect()
    }

    fn disk(ticks: u64) -> Vec<u8> {
        let mut d = vec![0u8; 1 << 20];
        for t in 0..ticks {
            let at = (sector_of(t) * 512) as usize;
            d[at..at + 512].copy_from_slice(&t.to_le_bytes().repeat(64));
        }
        d
    }

    #[test]
    fn a_cut_line_is_joined_and_a_continuous_run_passes() {
        let mut before = vec!["emuload: ata 2048 sectors, ne2000 52:54:00:12:34:56".into()];
        before.extend(console(0..5));
        before.push("tick 5 lba 2".into());
        let mut after = vec!["1 ok".to_owned()];
        after.extend(console(6..100));
        after.push("emuload: done 100 echoes=100 retries=0 stale=0".into());
        let all = joined(&before, &after);
        assert_eq!(all[6], "tick 5 lba 21 ok");
        assert_eq!(check_continuity(&all, &after, 100, &disk(100)), Ok(()));
        // Cut just before the newline.
        let (b, a) = (
            console(0..3),
            vec![String::new(), "tick 3 lba 19 ok".into()],
        );
        assert_eq!(joined(&b, &a), console(0..4));
        // Cut at every byte of a tick line (a run once failed on `tic` + `k 274 …`).
        let line = "tick 3 lba 19 ok";
        for at in 1..line.len() {
            let mut b = console(0..3);
            b.push(line[..at].to_owned());
            let mut a = vec![line[at..].to_owned()];
            a.extend(console(4..6));
            assert_eq!(joined(&b, &a), console(0..6), "cut after {at} bytes");
        }
        // A lost write, a resend, a repeat, a restart.
        assert!(check_continuity(&all, &after, 100, &disk(99)).is_err());
        let mut resent = all.clone();
        *resent.last_mut().unwrap() = "emuload: done 100 echoes=100 retries=1 stale=0".into();
        assert!(check_continuity(&resent, &after, 100, &disk(100)).is_err());
        let mut repeat = all.clone();
        repeat.insert(3, "tick 2 lba 18 ok".into());
        assert!(check_continuity(&repeat, &after, 100, &disk(100)).is_err());
        assert!(check_continuity(&all, &before, 100, &disk(100)).is_err());
    }

    #[test]
    fn exits_must_be_exact_and_hypercalls_absent() {
        let mut l = LedgerSnapshot::default();
        for (k, n) in exact_exits(10, 500) {
            l.counts.insert(k, n);
        }
        assert_eq!(check_exits(&l, 10, 500), Ok(()));
        assert!(check_exits(&l, 10, 501).is_err());
        assert!(check_exits(&l, 11, 500).is_err());
        l.counts
            .insert(ExitKind::Hypercall(Hypercall::ConsoleWrite), 1);
        assert!(check_exits(&l, 10, 500).is_err());
    }
}
