//! KVM state, one file per KVM object: the KVM system fd and the host platform ([`kvm`]),
//! the VM fd and its memory slots ([`vm`]), vCPUs and one `KVM_RUN` step ([`vcpu`]), a
//! vCPU's in-kernel statistics ([`stats`]), guest RAM ([`memory`]) and its dirty-page
//! tracking ([`dirty`]). What goes into registers and RAM for an x86_64 boot is
//! [`crate::arch`]; what an exit means is [`crate::exit`].

pub mod dirty;
pub mod kvm;
pub mod memory;
pub mod stats;
pub mod vcpu;
pub mod vm;
