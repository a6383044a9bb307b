//! Device models wired to the VM: the emulated legacy devices on the port bus
//! ([`legacy`]).
//!
//! A device here only adapts a bus access (or a hypercall) to a model of `pvkit-devices` or
//! `pvkit-pv`; the models themselves do no I/O and know nothing of KVM.

pub mod legacy;
