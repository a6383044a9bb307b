//! Loading the guest: the validating ELF loader and ABI-note check ([`elf`]), and
//! the guest's symbol table for naming code addresses ([`symbols`]).

pub mod elf;
pub mod symbols;
