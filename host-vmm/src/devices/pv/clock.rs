//! The PV clock device: the clock page ([`pvkit_pv::PvClockPage`], the backend) filled
//! from a [`ClockSource`], one for the VM and one per vCPU that registered its own
//! (`REGION_PER_VCPU`), and the kvmclock feature bit when KVM offers kvmclock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pvkit_abi::clock::CLOCK_PAGE;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::PageId;
use pvkit_abi::Status;
use pvkit_pv::{ClockSample, PvClockPage};

use super::{CallCtx, PvDevice, RegionOwner};
use crate::devices::legacy::vm_clock::{VmClock, VmTime};
use crate::runtime::sync::lock;

pub use crate::arch::x86_64::tsc::host_tsc;

/// The guest TSC and the VM's monotonic time at one instant, for the PV clock page.
pub trait ClockSource: Send + Sync {
    /// A sample taken now, or `None` if the guest TSC cannot be read.
    fn sample(&self) -> Option<ClockSample>;
}

/// The guest TSC as the host TSC plus a fixed offset (no TSC scaling: the guest runs at the
/// host rate), paired with [`VmClock`] time.
#[derive(Clone, Copy, Debug)]
pub struct TscClock {
    time: VmClock,
    tsc_khz: u32,
    offset: u64,
}

impl TscClock {
    /// A clock for a guest whose TSC is `host TSC + offset` (wrapping) and runs at `tsc_khz`.
    /// See [`crate::vstate::vcpu::Vcpu::guest_tsc_offset`].
    pub fn new(time: VmClock, tsc_khz: u32, offset: u64) -> Self {
        Self {
            time,
            tsc_khz,
            offset,
        }
    }
}

impl ClockSource for TscClock {
    fn sample(&self) -> Option<ClockSample> {
        // Bracket the clock read with two TSC reads (tens of ns apart) and pair it with
        // their midpoint.
        let a = host_tsc();
        let ns = self.time.now_ns();
        let b = host_tsc();
        let host = a.wrapping_add(b.wrapping_sub(a) / 2);
        Some(ClockSample {
            tsc: host.wrapping_add(self.offset),
            system_ns: ns,
            tsc_khz: u64::from(self.tsc_khz),
            stable: true,
        })
    }
}

/// The PV clock: clock pages when there is a time source, and the kvmclock bit.
pub struct PvClock {
    source: Option<Arc<dyn ClockSource>>,
    kvmclock: bool,
    /// The VM's page and the per-vCPU pages, by owner. At most one per vCPU plus one: the
    /// keys come from the VMM (the calling vCPU's index), never from the guest.
    pages: Mutex<BTreeMap<RegionOwner, PvClockPage>>,
}

impl std::fmt::Debug for PvClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvClock")
            .field("source", &self.source.is_some())
            .field("kvmclock", &self.kvmclock)
            .field("pages", &self.pages)
            .finish()
    }
}

impl PvClock {
    /// A clock page filled from `source` (`None`: no clock page), and [`Features::KVMCLOCK`]
    /// if KVM's kvmclock is available to the guest.
    pub fn new(source: Option<Arc<dyn ClockSource>>, kvmclock: bool) -> Self {
        Self {
            source,
            kvmclock,
            pages: Mutex::new(BTreeMap::new()),
        }
    }

    /// The guest-physical address of `owner`'s clock page last registered, if any.
    pub fn page_gpa(&self, owner: RegionOwner) -> Option<u64> {
        lock(&self.pages).get(&owner).map(PvClockPage::gpa)
    }
}

impl PvClock {
    /// Every registered page's state, for a snapshot.
    pub fn page_states(&self) -> Vec<(RegionOwner, pvkit_pv::PvClockState)> {
        lock(&self.pages)
            .iter()
            .map(|(o, p)| (*o, p.state()))
            .collect()
    }

    /// Re-registers saved pages over the restored RAM `mem` and publishes a fresh sample in
    /// each (the restored VM clock's time with the guest TSC now), so the guest's clock
    /// continues from the saved time. Replaces any page registered before.
    pub fn restore_pages(
        &self,
        mem: &crate::vstate::memory::GuestRam,
        pages: &[(RegionOwner, pvkit_pv::PvClockState)],
    ) -> Result<(), String> {
        let mut map = BTreeMap::new();
        for (owner, state) in pages {
            let mut page = PvClockPage::from_state(mem, state).map_err(|e| e.to_string())?;
            if let Some(sample) = self.source.as_ref().and_then(|s| s.sample()) {
                page.update(mem, sample).map_err(|e| e.to_string())?;
            }
            map.insert(*owner, page);
        }
        *lock(&self.pages) = map;
        Ok(())
    }
}

impl PvDevice for PvClock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn features(&self) -> Features {
        let mut f = Features::empty();
        if self.source.is_some() {
            f |= Features::CLOCK;
        }
        if self.kvmclock {
            f |= Features::KVMCLOCK;
        }
        f
    }

    fn pages(&self) -> &'static [PageId] {
        &[CLOCK_PAGE]
    }

    fn register_page(
        &self,
        ctx: &CallCtx<'_>,
        _page: PageId,
        owner: RegionOwner,
        addr: u64,
        len: u64,
    ) -> Result<u64, Status> {
        let source = self.source.as_ref().ok_or(Status::EOPNOTSUPP)?;
        let mut page = PvClockPage::new(ctx.mem, addr, len).map_err(|e| e.status())?;
        // The guest TSC and the host time at the moment of the call.
        let sample = source.sample().ok_or(Status::EIO)?;
        page.update(ctx.mem, sample).map_err(|e| e.status())?;
        lock(&self.pages).insert(owner, page);
        Ok(0)
    }
}
