//! `snapshot_state`: see `pvkit_fuzz::snapshot_state` for the input format and the
//! invariants checked. Needs the `vmm` feature (`--features vmm`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::snapshot_state::run(data));
