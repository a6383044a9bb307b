//! Loading the guest: the validating ELF loader and ABI-note check ([`elf`]).

pub mod elf;
