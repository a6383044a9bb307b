//! `pit`: see `pvkit_fuzz::pit` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::pit::run(data));
