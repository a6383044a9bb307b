//! `snapshot_state`: `pvkit_vmm::snapshot::state::decode` on hostile state files.
//!
//! An input is raw bytes, or a valid header (magic, version, correct length and CRC)
//! around fuzzed payload bytes, so that the JSON parser and the validation behind the
//! checksum are reached.
//!
//! Invariants: `decode` never panics; what it accepts passes `VmState::validate` again, and
//! re-encoding it decodes to the same state.

use pvkit_vmm::snapshot::state::{decode, encode, KvmSizes, FORMAT_VERSION, MAGIC};

/// Runs one input: byte 0 selects raw (odd) or framed (even).
pub fn run(data: &[u8]) {
    let sizes = KvmSizes::host();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 1 {
        rest.to_vec()
    } else {
        let mut b = Vec::from(MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
        b.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        b.extend_from_slice(rest);
        b
    };
    if let Ok(state) = decode(&bytes, &sizes) {
        state.validate(&sizes).expect("accepted state validates");
        let again = encode(&state).expect("accepted state encodes");
        assert_eq!(
            decode(&again, &sizes).expect("re-encoded state decodes"),
            state
        );
    }
}

/// Seed inputs: a framed empty object, a framed partial state, raw header-only bytes, a
/// framed NIC with a (truncated) NE2000 state.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let framed = |json: &str| {
        let mut v = vec![0u8];
        v.extend_from_slice(json.as_bytes());
        v
    };
    let mut raw = vec![1u8];
    raw.extend_from_slice(&MAGIC);
    raw.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    raw.extend_from_slice(&[0; 12]);
    vec![
        ("framed_empty", framed("{}")),
        (
            "framed_partial",
            framed(r#"{"mem_bytes":134217728,"cmdline":"counter=5","vcpus":[]}"#),
        ),
        ("raw_header", raw),
        (
            "framed_nic",
            framed(
                r#"{"devices":{"net":{"mac":[82,84,0,18,52,86],"model":"Ne2000","backend":"Tap","ne2000":{"version":1,"cr":1,"mem":[]}}}}"#,
            ),
        ),
    ]
}
