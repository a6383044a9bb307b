//! Verifying the console cases against the bytes the VMM captured.
//!
//! Each console write of a benchmark case sends the same buffer: byte `i` is
//! `b'a' + (i % 26)`. The VM API captures all console output in one stream without phase
//! offsets, so the check is by order: the cases' expected byte runs (`ops` copies of the
//! buffer) must appear in the captured stream in the order the phases ended, each after the
//! previous one, with nothing dropped from the capture. A case that wrote too little, too
//! much (overlapping the next case's run) or the wrong bytes fails.

/// The buffer a console case writes `len` bytes of.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// One console case to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Bytes per write.
    pub write_len: usize,
    /// Writes.
    pub ops: u64,
}

/// Checks `expected` (in phase order) against `captured`. Returns one result per case.
pub fn verify(captured: &[u8], dropped: u64, expected: &[Expected]) -> Vec<Result<(), String>> {
    if dropped > 0 {
        let why = format!("{dropped} console bytes were dropped by the capture buffer");
        return expected.iter().map(|_| Err(why.clone())).collect();
    }
    let mut cursor = 0usize;
    expected
        .iter()
        .map(|e| {
            let unit = pattern(e.write_len);
            let Some(total) = usize::try_from(e.ops)
                .ok()
                .and_then(|n| n.checked_mul(e.write_len))
            else {
                return Err("the case's byte count does not fit in memory".into());
            };
            if total == 0 {
                return Err("the case wrote no bytes".into());
            }
            let rest = captured.get(cursor..).unwrap_or_default();
            let found = rest
                .windows(unit.len())
                .position(|w| w == unit.as_slice())
                .ok_or_else(|| {
                    format!(
                        "console capture: no {}-byte pattern write after byte {cursor}",
                        e.write_len
                    )
                })?;
            let start = cursor + found;
            let run = captured.get(start..start + total).ok_or_else(|| {
                format!(
                    "console capture: {} bytes expected from byte {start}, {} captured",
                    total,
                    captured.len().saturating_sub(start)
                )
            })?;
            if let Some(bad) = run.chunks(unit.len()).position(|c| c != unit.as_slice()) {
                return Err(format!(
                    "console capture: write {bad} of {} (from byte {}) does not match the pattern",
                    e.ops,
                    start + bad * unit.len()
                ));
            }
            cursor = start + total;
            Ok(())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: &[(usize, u64)]) -> Vec<u8> {
        let mut v = b"banner\n".to_vec();
        for (len, n) in parts {
            for _ in 0..*n {
                v.extend(pattern(*len));
            }
        }
        v
    }

    #[test]
    fn pattern_bytes() {
        let p = pattern(28);
        assert_eq!(&p[..3], b"abc");
        assert_eq!(p[25], b'z');
        assert_eq!(&p[26..], b"ab");
    }

    #[test]
    fn matching_runs_verify_in_order() {
        let s = stream(&[(64, 3), (64, 2), (4096, 2)]);
        let exp = [
            Expected {
                write_len: 64,
                ops: 3,
            },
            Expected {
                write_len: 64,
                ops: 2,
            },
            Expected {
                write_len: 4096,
                ops: 2,
            },
        ];
        assert!(verify(&s, 0, &exp).iter().all(Result::is_ok));
        assert!(verify(&s, 5, &exp).iter().all(Result::is_err));
    }

    #[test]
    fn short_and_corrupt_runs_fail() {
        // The first case wrote one write too few: the second then runs short.
        let s = stream(&[(64, 2), (64, 2)]);
        let exp = [
            Expected {
                write_len: 64,
                ops: 3,
            },
            Expected {
                write_len: 64,
                ops: 2,
            },
        ];
        let r = verify(&s, 0, &exp);
        assert!(r[0].is_ok() && r[1].is_err(), "{r:?}");
        let mut s = stream(&[(64, 3)]);
        let n = s.len();
        s[n - 10] = b'!';
        let r = verify(&s, 0, &exp[..1]);
        assert!(r[0].as_ref().unwrap_err().contains("write 2"), "{r:?}");
        assert!(verify(b"", 0, &exp[..1])[0].is_err());
    }
}
