//! PV spinlocks and steal time: the CPU-class calls and page that help a guest whose vCPUs
//! outnumber the host's CPUs.
//!
//! # PV spinlocks ([`crate::cpuid::Features::PV_SPINLOCK`])
//!
//! The KVM `KVM_HC_KICK_CPU` idea. A waiter spins on its lock a bounded number of times;
//! then it publishes what it waits for (for a ticket lock: the ticket, in a per-CPU slot
//! the unlocker can scan), re-checks the lock, and calls [`crate::Hypercall::LockWait`],
//! which blocks its vCPU thread on the host until a [`crate::Hypercall::LockKick`] names
//! it or at most [`LOCK_WAIT_MAX_US`] pass. The unlocker, after releasing, looks for a CPU
//! that published the next ticket and kicks it. A kick that reaches a vCPU not blocked in
//! `LockWait` is remembered (one pending kick per vCPU, as KVM does) and ends its next
//! `LockWait` at once, so the window between the waiter's last check and its call loses
//! no wake-up. Every return of `LockWait` (kick, pending kick, timeout, a spurious return
//! when the VM stops) requires the waiter to re-check the lock: the calls only ever cost
//! time, never correctness.
//!
//! Exits: `LockWait` and `LockKick` are one hypercall exit each; the wake-up costs none
//! (the waiter is blocked in the VMM, not in the guest).
//!
//! # Steal time ([`crate::cpuid::Features::STEAL_TIME`])
//!
//! A vCPU registers a 4 KiB page with [`crate::Hypercall::RegisterRegion`]
//! ([`STEAL_PAGE_REGION`], flags [`crate::ring::REGION_PER_VCPU`]: the page is always the
//! calling vCPU's; flags 0 are `EINVAL`). The host writes one [`StealTime`] at offset 0:
//! the nanoseconds the vCPU's thread was runnable but not running on the host (the
//! scheduler's run-queue wait, `/proc/self/task/TID/schedstat` on Linux), refreshed when
//! the vCPU enters the guest at most every [`STEAL_UPDATE_MS`] ms and when it registers
//! the page. The guest reads it with the same version protocol as the clock page
//! ([`crate::clock`]): read `version` (odd: retry), read the fields, read `version` again
//! (changed: retry). `steal_ns` never decreases.

use crate::assert_layout;
use crate::call::DeviceClass;
use crate::ring::PageId;

/// The longest a [`crate::Hypercall::LockWait`] blocks without a kick, in microseconds.
pub const LOCK_WAIT_MAX_US: u64 = 10_000;

/// The steal-time page's region id: page 1 of the CPU class.
pub const STEAL_PAGE: PageId = PageId::new(DeviceClass::Cpu, 1);
/// [`STEAL_PAGE`] as arg0 of `RegisterRegion` (a literal, for the C header).
pub const STEAL_PAGE_REGION: u64 = 0x4_8001;
const _: () = assert!(STEAL_PAGE_REGION == crate::ring::RegionId::Page(STEAL_PAGE).to_u64());

/// The host refreshes a registered steal page at most this often (per vCPU).
pub const STEAL_UPDATE_MS: u64 = 10;

/// The steal-time record at offset 0 of a vCPU's steal page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StealTime {
    /// Odd while the host updates the record.
    pub version: u32,
    /// Zero.
    pub flags: u32,
    /// Nanoseconds the vCPU was runnable on the host but not running, since the VM
    /// started. Never decreases.
    pub steal_ns: u64,
    /// Nanoseconds the vCPU's thread ran on a host CPU, since the VM started.
    pub run_ns: u64,
    /// How many times the host wrote the record.
    pub updates: u64,
}
assert_layout!(
    StealTime,
    size = 32,
    version @ 0,
    flags @ 4,
    steal_ns @ 8,
    run_ns @ 16,
    updates @ 24,
);
