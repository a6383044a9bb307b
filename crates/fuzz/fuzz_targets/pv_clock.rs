//! `pv_clock`: see `pvkit_fuzz::pv_clock` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::pv_clock::run(data));
