//! `pv_net`: see `pvkit_fuzz::pv_net` for the operations and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::pv_net::run(data));
