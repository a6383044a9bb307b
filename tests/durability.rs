//! Acknowledged writes survive a SIGKILL of the VMM.
//!
//! The hostile guest (`case=durability`) writes rounds of distinct sector patterns and
//! flushes after each round, printing `flushed <k>` once the flush completed. The test reads
//! the guest's console until it sees `flushed 3`, SIGKILLs `pvkit`, and then checks the
//! image: every sector of rounds 1–3 (acknowledged by a completed flush) holds exactly its
//! pattern, and every other sector holds either its original zeros or a complete pattern
//! of the right round (writes after the last acknowledged flush may be lost, never torn
//! into garbage or misplaced). Done for the PV block device (`BlockIo` hypercall), the
//! block ring and the emulated ATA disk (FLUSH CACHE), three runs each.
//!
//! What a SIGKILL proves: the VMM keeps no write-back cache of its own (a completed write
//! is in the host kernel before it is acknowledged), so a VMM crash loses nothing the guest
//! was told is stored. It cannot prove power-loss durability (the page cache survives a
//! process kill); that rests on the flush being an `fdatasync`, which `pvkit-devices`
//! unit-tests.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::temp_file;

/// The hostile guest ELF built with the VMM.
const HOSTILE: &str = common::HOSTILE_ELF;
/// Sectors per round (the guest's `per=`).
const PER: u64 = 8;
/// The flush the test waits for before killing the VMM.
const KILL_AFTER: u64 = 3;
/// Runs per transport.
const RUNS: usize = 3;
/// Image size: 8192 sectors, room for 1023 rounds.
const IMAGE: u64 = 4 << 20;

/// `hostile-os/src/disk.rs`: the first word of every pattern sector.
const MAGIC: u64 = u64::from_le_bytes(*b"PVKDURA1");

fn body(k: u64) -> u64 {
    0x9e37_79b9_7f4a_7c15u64.wrapping_mul(k + 1)
}

/// The 64 words of sector `sector` written in round `round`.
fn pattern(round: u64, sector: u64) -> [u64; 64] {
    let mut w = [0u64; 64];
    w[0] = MAGIC;
    w[1] = round;
    w[2] = sector;
    for (k, v) in w.iter_mut().enumerate().skip(3) {
        *v = body(k as u64);
    }
    w
}

fn words(sector: &[u8]) -> Vec<u64> {
    sector
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

/// Whether the guests this file boots are built and KVM is usable (under CI: must be).
fn ready() -> bool {
    common::hostile_ready()
}

/// One run: boot, wait for `flushed 3`, SIGKILL, verify. Returns (acknowledged rounds
/// verified, later rounds found complete on disk).
fn one_run(via: &str, run: usize) -> (u64, u64) {
    let img = temp_file(&format!("durability-{via}-{run}.img"), b"");
    std::fs::File::options()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(IMAGE))
        .expect("size the image");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(["run", HOSTILE, "--mem", "32", "--timeout", "60", "--disk"])
        .arg(&img)
        .args(["--", "case=durability", &format!("via={via}"), "per=8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvkit");
    let stdout = child.stdout.take().expect("piped stdout");
    let t0 = Instant::now();
    let mut acked = 0;
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(k) = line.strip_prefix("flushed ") {
            acked = k.parse().expect("a round number");
            if acked >= KILL_AFTER {
                break;
            }
        }
        seen.push(line);
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{via}: no `flushed {KILL_AFTER}` in time: {seen:?}"
        );
    }
    // SIGKILL: no chance to flush anything on the way out.
    child.kill().expect("SIGKILL pvkit");
    let status = child.wait().expect("reap pvkit");
    assert_eq!(
        acked, KILL_AFTER,
        "{via} run {run}: the guest stopped early ({status:?}): {seen:?}"
    );

    let bytes = std::fs::read(&img).expect("read the image");
    assert_eq!(bytes.len() as u64, IMAGE, "the image changed size");
    let mut later = 0;
    for (s, sector) in bytes.chunks_exact(512).enumerate() {
        let s = s as u64;
        let round = s / PER;
        let w = words(sector);
        if (1..=acked).contains(&round) {
            assert_eq!(
                w,
                pattern(round, s),
                "{via} run {run}: sector {s} of acknowledged round {round} is not on disk"
            );
        } else if w.iter().any(|&v| v != 0) {
            assert!(
                round >= 1 && w == pattern(round, s),
                "{via} run {run}: sector {s} holds neither zeros nor its round-{round} pattern"
            );
            if s.is_multiple_of(PER) {
                later += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&img);
    (acked, later)
}

fn durability(via: &str) {
    if !ready() {
        return;
    }
    for run in 0..RUNS {
        let (acked, later) = one_run(via, run);
        eprintln!(
            "durability via={via} run {run}: {acked} acknowledged rounds intact, \
             {later} later rounds (at least partly) on disk, 0 acknowledged writes lost"
        );
    }
}

#[test]
fn pv_block_acknowledged_writes_survive_sigkill() {
    durability("pv");
}

#[test]
fn block_ring_acknowledged_writes_survive_sigkill() {
    durability("ring");
}

#[test]
fn ata_acknowledged_writes_survive_sigkill() {
    durability("ata");
}
