//! Starting the workload's CPUs: the PV way (`VcpuUp`), each AP on its own stack in
//! [`super::ap_main`]. Kept apart from [`crate::smp`] (the bring-up benchmark), whose APs
//! halt once they reported in.

use crate::smp::MAX_CPUS;
use crate::Stack;

/// Stack size per AP.
const AP_STACK_SIZE: usize = 16 * 1024;

/// The APs' stacks, by CPU index (index 0 unused). Only used through `RSP`.
static mut AP_STACKS: [Stack<AP_STACK_SIZE>; MAX_CPUS] =
    [const { Stack([0; AP_STACK_SIZE]) }; MAX_CPUS];

/// The initial `RSP` of CPU `cpu`'s stack (aligned as just after a `call`).
fn stack_top(cpu: usize) -> u64 {
    (&raw const AP_STACKS) as u64 + ((cpu + 1) * AP_STACK_SIZE) as u64 - 8
}

/// Starts CPUs `1..cpus` at [`super::ap_main`] with `RDI` = the CPU index. Returns the
/// first refusal.
pub fn start(cpus: usize) -> Result<(), (usize, pvkit_abi::Status)> {
    for cpu in 1..cpus.min(MAX_CPUS) {
        pvkit_guest::hypercall::vcpu_up(
            cpu as u64,
            super::ap_main as *const () as u64,
            stack_top(cpu),
            cpu as u64,
        )
        .map_err(|s| (cpu, s))?;
    }
    Ok(())
}
