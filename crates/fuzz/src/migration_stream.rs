//! `migration_stream`: `pvkit_vmm::migration::stream::read_stream` on hostile streams (the
//! target of a live migration reads them from a TCP peer).
//!
//! The input is the stream itself (raw bytes; the seeds are valid streams written by
//! `StreamWriter`, unauthenticated and authenticated, and truncated, altered or replayed
//! ones). The target has 64 pages of RAM. Every input is read twice: by a target without a
//! key (`read_stream`) and by one with [`KEY`] that sent [`CHALLENGE`] (`read_stream_with`
//! and `Keyed`: the handshake and every record's MAC are checked).
//!
//! Invariants:
//! - neither reader panics or reads past the end record; at most one accepts;
//! - a refused stream is an error (the caller drops the RAM the pages went to);
//! - an accepted stream is consistent: its byte count is the prefix of the input up to the
//!   end record, and the RAM equals an independent replay of its records (pages written,
//!   zero runs zeroed, everything else still the initial pattern).

use pvkit_vmm::migration::auth::{source_proof, MigrationKey, RecordMac, TAG_LEN};
use pvkit_vmm::migration::stream::{
    read_stream, read_stream_with, Header, Keyed, Received, StreamError, StreamWriter, VecSink,
    MAX_PAGES_PER_RECORD, PAGE_SIZE,
};

const PAGES: u64 = 64;
const RAM: u64 = PAGES * PAGE_SIZE;
const FILL: u8 = 0x5c;
/// The keyed target's key bytes.
pub const KEY: [u8; 32] = [0x4b; 32];
/// The keyed target's challenge.
pub const CHALLENGE: [u8; TAG_LEN] = [0xc4; TAG_LEN];

fn key() -> MigrationKey {
    MigrationKey::from_parts(KEY.to_vec(), [7; 32])
}

/// Replays the records of an accepted stream `s` onto a RAM image (the model); `keyed`:
/// skip the handshake answer and each record's tag.
fn replay(s: &[u8], keyed: bool) -> Vec<u8> {
    let mut ram = vec![FILL; RAM as usize];
    let quad = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    let tag_len = if keyed { TAG_LEN } else { 0 };
    let mut at = 32 + 3 * tag_len;
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
        at += tag_len;
    }
}

fn check(data: &[u8], got: Result<Received, StreamError>, sink: VecSink, keyed: bool) -> bool {
    let Ok(got) = got else {
        return false;
    };
    assert!(got.bytes as usize <= data.len());
    assert!(got.pages <= PAGES * 64 * u64::from(MAX_PAGES_PER_RECORD));
    assert_eq!(sink.0, replay(&data[..got.bytes as usize], keyed));
    true
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut sink = VecSink(vec![FILL; RAM as usize]);
    let got = read_stream(data, RAM, &mut sink);
    let plain = check(data, got, sink, false);
    let k = key();
    let mut gate = Keyed {
        key: &k,
        challenge: CHALLENGE,
    };
    let mut sink = VecSink(vec![FILL; RAM as usize]);
    let got = read_stream_with(data, RAM, &mut sink, &mut gate);
    let keyed = check(data, got, sink, true);
    assert!(!(plain && keyed), "both readers accepted");
}

/// A stream; with `auth`, authenticated with [`KEY`] for the challenge given.
fn stream(extra_round: bool, auth: Option<[u8; TAG_LEN]>) -> Vec<u8> {
    let header = Header {
        ram_bytes: RAM,
        authenticated: auth.is_some(),
    };
    let mut w = StreamWriter::new(Vec::new(), header).expect("header");
    if let Some(challenge) = auth {
        let k = key();
        let ns = [0x55; TAG_LEN];
        let proof = source_proof(&k, &challenge, &ns, &header.encode());
        w.answer(&challenge, &ns, &proof).expect("answer");
        w.authenticate(RecordMac::new(&k, &challenge, &ns));
    }
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

fn valid(extra_round: bool) -> Vec<u8> {
    stream(extra_round, None)
}

/// The seeds: valid streams, one truncated, one of another version; authenticated ones:
/// valid, a flipped bit in a record, a replay of another session, a cut MAC.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let good = valid(true);
    let mut version = valid(false);
    version[8] = 9;
    let keyed = stream(true, Some(CHALLENGE));
    let mut flipped = keyed.clone();
    flipped[32 + 3 * TAG_LEN + 20 + 7] ^= 1;
    let cut = 32 + 3 * TAG_LEN + 20 + 2 * PAGE_SIZE as usize + TAG_LEN / 2;
    vec![
        ("one_round", valid(false)),
        ("two_rounds", good.clone()),
        ("truncated", good[..good.len() - 5].to_vec()),
        ("version", version),
        ("keyed", keyed.clone()),
        ("keyed_flipped", flipped),
        ("keyed_replayed", stream(false, Some([0x99; TAG_LEN]))),
        ("keyed_cut_mac", keyed[..cut].to_vec()),
    ]
}
