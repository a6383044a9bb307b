//! `pv_ipi`: see `pvkit_fuzz::pv_ipi` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::pv_ipi::run(data));
