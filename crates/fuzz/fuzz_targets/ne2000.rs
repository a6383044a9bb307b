//! `ne2000`: see `pvkit_fuzz::ne2000` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::ne2000::run(data));
