//! `ata`: see `pvkit_fuzz::ata` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::ata::run(data));
