//! Issue 7, finding 1: a block ring that reloads itself from the disk
//! (`guest-kernel/examples/hostile-os/src/chain.rs`, `case=ring-chain`) on each transport.
//! Every ring service has a budget (`pvkit_pv::ring::SERVICE_REQUESTS`, `SERVICE_BYTES`), so
//! the chain is served in bounded rounds: it still runs to its end (the guest's next doorbell,
//! the I/O thread or the next poll round continues it), while the watchdog (124, disk
//! flushed), SIGTERM (143, disk flushed) and the guest's own exit stop `pvkit` promptly, and
//! a synchronous `BlockIo` does not wait for the chain.
//!
//! Without the budgets, one service of a chain of [`LONG`] images runs for longer than
//! these tests' bounds (the watchdog then gives up on the vCPU with status 1, or the I/O
//! thread is joined only when the chain ends). The bounds are generous: an order of
//! magnitude above what a budgeted run takes.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pvkit_abi::block::{BlockRequest, BlockResponse, MAX_REQUEST_BYTES};
use pvkit_abi::ring::{offsets, request_offset, ring_bytes, HEADER_SIZE};

/// The guest's constants (`chain.rs`): ring and junk addresses, ring size, image stride.
const RING: u64 = 0x80_0000;
const JUNK: u64 = 0x100_0000;
const SIZE: u32 = 256;
const STRIDE: u64 = 96;

/// Images in a chain that outlasts every bound below when served in one go: 256 requests
/// of 1 MiB each per image, 300 GiB in all (about 30 s of page-cache reads here, where the
/// [`SHORT`] chain's 1 GiB takes about 0.1 s).
const LONG: u64 = 1200;

/// From `pvkit`'s start to "chain started" (one budget on the vCPU, or image 0 loaded).
const STARTED: Duration = Duration::from_secs(10);
/// Images in a chain short enough to run to its end in a test: 1024 requests, 1 GiB.
const SHORT: u64 = 4;

/// How long a stop may take (from the signal, or from the guest's exit, to `pvkit`'s exit).
const PROMPT: Duration = Duration::from_secs(5);

fn ready() -> bool {
    common::hostile_ready()
}

fn ring_len() -> u64 {
    let bytes = ring_bytes(SIZE, size_of::<BlockRequest>(), size_of::<BlockResponse>())
        .expect("valid ring") as u64;
    bytes.div_ceil(512) * 512
}

/// The chain request that reads image `image`: the ring first, the rest of 1 MiB to JUNK.
fn chain_request(image: u64) -> [u8; size_of::<BlockRequest>()] {
    let mut r = [0u8; size_of::<BlockRequest>()];
    let ring = ring_len();
    r[0..8].copy_from_slice(&image.to_le_bytes()); // id
    r[8..12].copy_from_slice(&1u32.to_le_bytes()); // read
    r[12..16].copy_from_slice(&2u32.to_le_bytes());
    r[16..24].copy_from_slice(&(image * STRIDE).to_le_bytes());
    r[24..32].copy_from_slice(&RING.to_le_bytes());
    r[32..36].copy_from_slice(&(ring as u32).to_le_bytes());
    r[40..48].copy_from_slice(&JUNK.to_le_bytes());
    r[48..52].copy_from_slice(&((MAX_REQUEST_BYTES - ring) as u32).to_le_bytes());
    r
}

/// A disk of `images` ring images (see `chain.rs`), plus the 1 MiB the last reads cover.
fn chain_image(name: &str, images: u64) -> PathBuf {
    let stride = (STRIDE * 512) as usize;
    let mut disk = vec![0u8; images as usize * stride + MAX_REQUEST_BYTES as usize];
    for p in 0..images {
        let img = &mut disk[p as usize * stride..][..stride];
        let put32 = |img: &mut [u8], off: u64, v: u32| {
            img[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes())
        };
        put32(img, offsets::SIZE, SIZE);
        put32(img, offsets::REQ_PROD, SIZE * (p as u32 + 1));
        for slot in 0..SIZE {
            let next = if slot == SIZE - 1 && p + 1 < images {
                p + 1
            } else {
                p
            };
            let off = request_offset(SIZE, slot, size_of::<BlockRequest>());
            img[off..off + size_of::<BlockRequest>()].copy_from_slice(&chain_request(next));
        }
    }
    assert!(HEADER_SIZE as u64 + 4 <= ring_len());
    common::temp_file(name, &disk)
}

/// `pvkit run` of the chain: `via` transport, `then` behaviour, `timeout` seconds.
fn start(img: &PathBuf, via: &str, then: &str, timeout: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args([
            "run",
            common::HOSTILE_ELF,
            "--mem",
            "32",
            "--timeout",
            timeout,
        ])
        .arg("--disk")
        .arg(img)
        .args([
            "--",
            "case=ring-chain",
            &format!("via={via}"),
            &format!("then={then}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pvkit")
}

/// Reads stdout lines until one equals `line` (panics at EOF); returns the lines read.
fn wait_for_line(
    child: &mut Child,
    line: &str,
) -> (Vec<String>, BufReader<std::process::ChildStdout>) {
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        if out.read_line(&mut l).expect("read stdout") == 0 {
            let _ = child.kill();
            panic!("pvkit ended before {line:?}: {seen:?}");
        }
        let l = l.trim_end().to_owned();
        seen.push(l.clone());
        if l == line {
            return (seen, out);
        }
    }
}

/// Waits for the exit, at most `bound`: (code, rest of stdout, stderr, time taken).
fn finish(
    mut child: Child,
    mut out: BufReader<std::process::ChildStdout>,
    bound: Duration,
) -> (Option<i32>, String, String, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let took = t0.elapsed();
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), rest, err, took);
        }
        if t0.elapsed() > bound {
            let _ = child.kill();
            panic!("pvkit did not end within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

const VIAS: [&str; 3] = ["doorbell", "eventfd", "poll"];

/// The chain is served over many bounded rounds and still runs to its end: the next
/// doorbell (doorbell), the I/O thread's own re-queue (eventfd) or the next poll round
/// (poll) continues it, nothing is stranded.
#[test]
fn a_self_reloading_ring_is_served_to_its_end_in_rounds() {
    if !ready() {
        return;
    }
    let img = chain_image("chain-short.img", SHORT);
    for via in VIAS {
        let t0 = Instant::now();
        let mut child = start(&img, via, "spin", "60");
        let (_, out) = wait_for_line(&mut child, "chain started");
        assert!(t0.elapsed() < STARTED, "via={via}: {:?}", t0.elapsed());
        let (code, rest, err, _) = finish(child, out, Duration::from_secs(60));
        assert_eq!(code, Some(0), "via={via}: {rest}\n{err}");
        let done = format!("chain done req_prod={}\n", SHORT * u64::from(SIZE));
        assert!(
            rest.contains(&done),
            "via={via}: the whole chain ran: {rest}"
        );
        assert!(rest.contains("summary checks="), "via={via}: {rest}");
        eprintln!(
            "via={via}: {SHORT}-image chain served in {:?}",
            t0.elapsed()
        );
    }
    let _ = std::fs::remove_file(&img);
}

/// `--timeout` stops a guest whose ring never runs out: status 124, the disk flushed.
#[test]
fn the_watchdog_stops_a_never_ending_ring_and_flushes_the_disk() {
    if !ready() {
        return;
    }
    let img = chain_image("chain-timeout.img", LONG);
    for via in VIAS {
        let t0 = Instant::now();
        let mut child = start(&img, via, "spin", "2");
        let (_, out) = wait_for_line(&mut child, "chain started");
        assert!(t0.elapsed() < STARTED, "via={via}: {:?}", t0.elapsed());
        let (code, rest, err, _) = finish(child, out, Duration::from_secs(30));
        let took = t0.elapsed();
        assert_eq!(code, Some(124), "via={via}: {rest}\n{err}");
        assert!(
            !rest.contains("chain done"),
            "via={via}: the chain must outlast: {rest}"
        );
        assert!(
            err.trim_end()
                .ends_with("raise --timeout if it needs longer; disk flushed"),
            "via={via}: {err}"
        );
        // 2 s of guest time, then one budget and the flush.
        assert!(
            took < Duration::from_secs(2) + PROMPT,
            "via={via}: took {took:?}"
        );
    }
    let _ = std::fs::remove_file(&img);
}

/// SIGTERM stops it: status 143, `pvkit: stopped by SIGTERM; disk flushed`.
#[test]
fn sigterm_stops_a_never_ending_ring_and_flushes_the_disk() {
    if !ready() {
        return;
    }
    let img = chain_image("chain-sigterm.img", LONG);
    for via in VIAS {
        let t0 = Instant::now();
        let mut child = start(&img, via, "spin", "60");
        let (_, out) = wait_for_line(&mut child, "chain started");
        assert!(t0.elapsed() < STARTED, "via={via}: {:?}", t0.elapsed());
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0);
        let (code, rest, err, took) = finish(child, out, Duration::from_secs(30));
        assert_eq!(code, Some(143), "via={via}: {rest}\n{err}");
        assert_eq!(
            err.trim_end(),
            "pvkit: stopped by SIGTERM; disk flushed",
            "via={via}"
        );
        assert!(took < PROMPT, "via={via}: took {took:?}");
    }
    let _ = std::fs::remove_file(&img);
}

/// A guest that exits while its chain runs on the I/O thread ends `pvkit` promptly: the
/// I/O thread is joined after one budget, not after the chain.
#[test]
fn a_guest_that_exits_during_a_never_ending_ring_ends_promptly() {
    if !ready() {
        return;
    }
    let img = chain_image("chain-exit.img", LONG);
    for via in VIAS {
        let t0 = Instant::now();
        let mut child = start(&img, via, "exit", "60");
        let (_, out) = wait_for_line(&mut child, "chain started");
        assert!(t0.elapsed() < STARTED, "via={via}: {:?}", t0.elapsed());
        let (code, rest, err, took) = finish(child, out, Duration::from_secs(30));
        assert_eq!(code, Some(0), "via={via}: {rest}\n{err}");
        assert!(err.is_empty(), "via={via}: {err}");
        assert!(took < PROMPT, "via={via}: took {took:?}");
    }
    let _ = std::fs::remove_file(&img);
}

/// A synchronous `BlockIo` made while the chain runs on the I/O thread waits one budget at
/// most, not for the chain.
#[test]
fn block_io_does_not_wait_for_a_never_ending_ring() {
    if !ready() {
        return;
    }
    let img = chain_image("chain-blockio.img", LONG);
    for via in VIAS {
        let t0 = Instant::now();
        let mut child = start(&img, via, "blockio", "60");
        let (_, out) = wait_for_line(&mut child, "chain started");
        assert!(t0.elapsed() < STARTED, "via={via}: {:?}", t0.elapsed());
        let (code, rest, err, took) = finish(child, out, Duration::from_secs(30));
        assert_eq!(code, Some(0), "via={via}: {rest}\n{err}");
        assert!(
            rest.lines()
                .any(|l| l.starts_with("check chain.blockio status=") && l.ends_with(" ok")),
            "via={via}: {rest}"
        );
        assert!(rest.contains("summary checks="), "via={via}: {rest}");
        assert!(took < PROMPT, "via={via}: took {took:?}");
    }
    let _ = std::fs::remove_file(&img);
}
