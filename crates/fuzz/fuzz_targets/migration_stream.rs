//! `migration_stream`: see `pvkit_fuzz::migration_stream` for the input format and the
//! invariants checked. Needs the `vmm` feature (`--features vmm`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::migration_stream::run(data));
