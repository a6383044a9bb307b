//! `elf_load`: see `pvkit_fuzz::elf_load` for the input format and the invariants checked.
//! Needs the `vmm` feature (`--features vmm`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvkit_fuzz::elf_load::run(data));
