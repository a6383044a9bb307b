//! The control API of a running VM (`pvkit run --api PATH`): a Unix socket speaking
//! line-delimited JSON ([`request`]), served by [`server`] against the VM's
//! [`crate::vm::control::VmControl`]; [`client`] is `pvkit ctl`'s side.

pub mod client;
pub mod request;
pub mod server;
