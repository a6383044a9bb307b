//! The VMM process around the VMs: why a guest stopped and the exit status for it
//! ([`stop`]), kicking a vCPU out of `KVM_RUN` ([`watchdog`]), SIGINT/SIGTERM ([`signals`]),
//! the per-thread system call filters ([`seccomp`]) and the one poison-tolerant lock
//! ([`sync`]). Nothing here imports another layer of this crate.

pub mod seccomp;
pub mod signals;
pub mod stop;
pub mod sync;
pub mod watchdog;
