//! Architecture specifics: what a KVM vCPU and guest RAM must contain for a pvkit guest to
//! boot. Depends on `kvm-ioctls`/`vm-memory` types and [`pvkit_abi`] only, never on
//! [`crate::vstate`] (which calls into it) or on devices.

pub mod x86_64;
