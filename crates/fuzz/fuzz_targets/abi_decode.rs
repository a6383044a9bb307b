//! `abi_decode`: see `pvkit_fuzz::abi_decode` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::abi_decode::run(data));
