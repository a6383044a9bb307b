//! x86_64: the CPUID table ([`cpuid`]), the long-mode boot registers and segments
//! ([`regs`]), the boot area in guest RAM ([`layout`]) and the host TSC ([`tsc`]).

pub mod cpuid;
pub mod layout;
pub mod regs;
pub mod tsc;
