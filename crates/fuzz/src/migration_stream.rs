//! `migration_stream`: `pvkit_vmm::migration::stream::read_stream` on hostile streams (the
//! target of a live migration reads them from a TCP peer).
//!
//! The input is the stream itself (raw bytes; the seeds are valid streams written by
//! `StreamWriter`, and truncated or altered ones). The target has 64 pages of RAM.
//!
//! Invariants:
//! - `read_stream` never panics and never reads past the end record;
//! - a refused stream is an error (the caller drops the RAM the pages went to);
//! - an accepted stream is consistent: its byte count is the prefix of the input up to the
//!   end record, and the RAM equals an independent replay of its records (pages written,
//!   zero runs zeroed, everything else still the initial pattern).

use pvkit_vmm::migration::stream::{
    read_stream, Header, StreamWriter, VecSink, MAX_PAGES_PER_RECORD, PAGE_SIZE,
};

const PAGES: u64 = 64;
const RAM: u64 = PAGES * PAGE_SIZE;
const FILL: u8 = 0x5c;

/// Replays the records of an accepted stream `s` onto a RAM image (the model).
fn replay(s: &[u8]) -> Vec<u8> {
    let mut ram = vec![FILL; RAM as usize];
    let quad = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    let mut at = 32;
    loop {
        let tag = u32::from_le_bytes(s[at..at + 4].try_into().unwrap());
        at += 4;
        match tag {
            1 => {
                let (first, count) = (quad(at), quad(at + 8));
                at += 16;
                let n = (count * PAGE_SIZE) as usize;
                let dst = (first * PAGE_SIZE) as usize;
                ram[dst..dst + n].copy_from_slice(&s[at..at + n]);
                at += n;
            }
            2 => {
                let (first, count) = (quad(at), quad(at + 8));
                at += 16;
                ram[(first * PAGE_SIZE) as usize..((first + count) * PAGE_SIZE) as usize].fill(0);
            }
            3 => at += 16,
            4 => at += 8 + quad(at) as usize,
            5 => return ram,
            t => panic!("accepted stream has tag {t}"),
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut sink = VecSink(vec![FILL; RAM as usize]);
    let Ok(got) = read_stream(data, RAM, &mut sink) else {
        return;
    };
    assert!(got.bytes as usize <= data.len());
    assert!(got.pages <= PAGES * 64 * u64::from(MAX_PAGES_PER_RECORD));
    assert_eq!(sink.0, replay(&data[..got.bytes as usize]));
}

fn valid(extra_round: bool) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), Header { ram_bytes: RAM }).expect("header");
    let mut two = vec![0x11u8; 2 * PAGE_SIZE as usize];
    two[PAGE_SIZE as usize] = 0x22;
    w.pages(1, &two).expect("pages");
    w.zeros(10, 4).expect("zeros");
    w.round(1, 6).expect("round");
    if extra_round {
        w.pages(2, &[0x33; PAGE_SIZE as usize]).expect("pages");
        w.zeros(1, 1).expect("zeros");
        w.round(2, 2).expect("round");
    }
    w.state(b"opaque vm state").expect("state");
    w.end().expect("end").0
}

/// The seeds: valid streams, one truncated, one of another version.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let good = valid(true);
    let mut version = valid(false);
    version[8] = 9;
    vec![
        ("one_round", valid(false)),
        ("two_rounds", good.clone()),
        ("truncated", good[..good.len() - 5].to_vec()),
        ("version", version),
    ]
}
