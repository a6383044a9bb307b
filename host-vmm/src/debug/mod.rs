//! Debugging the guest: the gdb remote-protocol server ([`gdb`]).

pub mod gdb;
