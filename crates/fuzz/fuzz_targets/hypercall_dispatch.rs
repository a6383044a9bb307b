//! `hypercall_dispatch`: see `pvkit_fuzz::hypercall_dispatch` for the input format and the invariants checked.
//! Needs the `vmm` feature (`--features vmm`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::hypercall_dispatch::run(data));
