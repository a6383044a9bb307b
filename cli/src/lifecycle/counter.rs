//! What the built-in guest's `counter` mode (guest-kernel/src/counter.rs) leaves behind, and
//! the checks a snapshot, restore or clone must pass on it: the console's `counter I t=NS`
//! lines and the disk's sector 0 record (`PVCNT`, step, time) the guest writes at each
//! step (and reads back at the next, panicking when it is not its own previous one).

use std::io::Read;
use std::path::Path;

use super::LifecycleError;

/// A step: (number, PV clock time in ns).
pub type Step = (u64, u64);

/// The steps printed on `console`, in order.
pub fn steps(console: &str) -> Vec<Step> {
    console
        .lines()
        .filter_map(|l| {
            let (i, t) = l.strip_prefix("counter ")?.split_once(" t=")?;
            Some((i.parse().ok()?, t.trim().parse().ok()?))
        })
        .collect()
}

/// The record in the first 24 bytes of an image (`None`: not a counter record).
pub fn record(head: &[u8]) -> Option<Step> {
    let word = |at: usize| Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?));
    (head.get(..5)? == b"PVCNT").then_some(())?;
    Some((word(8)?, word(16)?))
}

/// The record on the disk image `path` (through the file: a clone's reflink copy or
/// block-level overlay holds the block once the clone wrote it).
pub fn read_record(path: &Path) -> Result<Option<Step>, LifecycleError> {
    let mut head = [0u8; 24];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(LifecycleError::io("disk image", path))?;
    Ok(record(&head))
}

/// A restored guest continued where the original stopped: its first step is the one after
/// the original's last `before`, the steps follow one by one, and the clock never went
/// back (from the original's last time on).
pub fn check_continued(before: Step, after: &[Step]) -> Result<(), String> {
    let first = after.first().ok_or("the restored guest printed no step")?;
    if first.0 != before.0 + 1 {
        return Err(format!(
            "the restored guest went on at step {} after step {}",
            first.0, before.0
        ));
    }
    let mut last = before;
    for &s in after {
        if s.0 != last.0 + 1 {
            return Err(format!("step {} followed step {}", s.0, last.0));
        }
        if s.1 < last.1 {
            return Err(format!(
                "the clock went back at step {}: {} < {} ns",
                s.0, s.1, last.1
            ));
        }
        last = s;
    }
    Ok(())
}

/// A guest's disk holds its own last step: the one it printed last, or the next one (the
/// guest writes a step's record before its line, and may have stopped in between).
pub fn check_record(on_disk: Option<Step>, printed_last: Step) -> Result<(), String> {
    match on_disk {
        Some(r) if r == printed_last || r.0 == printed_last.0 + 1 => Ok(()),
        Some(r) => Err(format!(
            "the disk holds step {} (t={}) but the guest's last step was {} (t={})",
            r.0, r.1, printed_last.0, printed_last.1
        )),
        None => Err("the disk holds no counter record".into()),
    }
}

/// Clones are isolated: each clone's disk holds a record of its own (their clock times
/// differ), so none saw another's writes.
pub fn check_isolated(records: &[Step]) -> Result<(), String> {
    for (i, a) in records.iter().enumerate() {
        if let Some(j) = records[..i].iter().position(|b| b == a) {
            return Err(format!(
                "clones {j} and {i} hold the same disk record {a:?}: one saw the other's write"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_records_parse() {
        let out = "banner\ncounter 4 t=100\ncounter 5 t=150\ncounter done\ncounter x t=1\n";
        assert_eq!(steps(out), vec![(4, 100), (5, 150)]);
        let mut head = b"PVCNT\0\0\0".to_vec();
        head.extend(7u64.to_le_bytes());
        head.extend(900u64.to_le_bytes());
        assert_eq!(record(&head), Some((7, 900)));
        assert_eq!(record(&[0u8; 24]), None);
        assert_eq!(record(&head[..20]), None);
    }

    #[test]
    fn continuation_is_checked() {
        assert!(check_continued((5, 100), &[(6, 120), (7, 130)]).is_ok());
        // Started over, skipped, repeated, clock back, nothing.
        assert!(check_continued((5, 100), &[(1, 120)]).is_err());
        assert!(check_continued((5, 100), &[(6, 120), (8, 130)]).is_err());
        assert!(check_continued((5, 100), &[(6, 120), (6, 130)]).is_err());
        assert!(check_continued((5, 100), &[(6, 90)]).is_err());
        assert!(check_continued((5, 100), &[]).is_err());
    }

    #[test]
    fn records_and_isolation_are_checked() {
        assert!(check_record(Some((7, 9)), (7, 9)).is_ok());
        assert!(check_record(Some((8, 11)), (7, 9)).is_ok());
        assert!(check_record(Some((6, 5)), (7, 9)).is_err());
        assert!(check_record(None, (7, 9)).is_err());
        assert!(check_isolated(&[(7, 9), (7, 10), (8, 9)]).is_ok());
        assert!(check_isolated(&[(7, 9), (8, 1), (7, 9)]).is_err());
    }
}
