//! pvkit-kvm-probe: measures, with tiny real guests, which KVM features work on this host's
//! `/dev/kvm` (on kvm_pvm most of the in-kernel machinery is unknown territory): the
//! in-kernel irqchip and interrupt delivery, the LAPIC in xAPIC and x2APIC mode, KVM's PV
//! features, SMP bring-up and IPIs, dirty logging and memory release, and vCPU/VM state
//! save and restore. Every probe builds its own VM; results are rows of
//! (probe, [`Status`], detail). See docs/PLATFORM.md for the results on kvm_pvm.

pub mod guest_code;
pub mod harness;
pub mod probes;

pub use probes::{is_kvm_pvm, run_all, ProbeResult, Status};
