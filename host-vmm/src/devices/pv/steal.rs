//! Steal time: each vCPU's registered page ([`pvkit_abi::spinlock::STEAL_PAGE`]) gets the
//! nanoseconds its host thread was runnable but not running, read from the thread's
//! `schedstat` (`/proc/thread-self/schedstat`: run time, run-queue wait, timeslices).
//!
//! Cheap by construction: the `schedstat` file is opened once per vCPU thread when the
//! thread starts (before its seccomp filter; afterwards only `pread64` is needed), and the
//! page is refreshed when the vCPU is about to enter the guest ([`PvDevice::before_run`]),
//! at most every [`STEAL_UPDATE_MS`] ms (one clock read per `KVM_RUN` otherwise), and by
//! the VMM's supervising thread every [`STEAL_UPDATE_MS`] ms ([`PvSteal::refresh_all`]),
//! for vCPUs that run without exiting.
//!
//! The record is written with the version protocol of the clock page: odd version, fields,
//! even version. `steal_ns` is published as the maximum of what was read and what was
//! published before, so it never decreases whatever the file says.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{fence, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::PageId;
use pvkit_abi::spinlock::{StealTime, STEAL_PAGE, STEAL_UPDATE_MS};
use pvkit_abi::Status;
use pvkit_pv::REGION_ALIGN;
use vm_memory::{Bytes, GuestAddress};

use super::{CallCtx, PvDevice, RegionOwner};
use crate::runtime::sync::lock;
use crate::vstate::memory::{guest_range, GuestRam};

/// Run time and run-queue wait of one thread, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStat {
    /// Time spent running on a CPU.
    pub run_ns: u64,
    /// Time spent runnable, waiting on a run queue (stolen from the vCPU).
    pub wait_ns: u64,
}

impl SchedStat {
    /// Parses the first two fields of a `schedstat` line (`"run wait slices\n"`).
    pub fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?;
        let mut fields = text.split_ascii_whitespace();
        let run_ns = fields.next()?.parse().ok()?;
        let wait_ns = fields.next()?.parse().ok()?;
        Some(Self { run_ns, wait_ns })
    }
}

/// Where a vCPU thread's [`SchedStat`] comes from.
pub trait SchedStatSource: Send {
    /// The thread's figures now, or `None` if they cannot be read.
    fn read(&self) -> Option<SchedStat>;
}

/// The calling thread's `/proc/thread-self/schedstat`, opened once.
#[derive(Debug)]
pub struct ThreadSchedStat(File);

impl ThreadSchedStat {
    /// Opens the calling thread's file (before the thread is confined: `openat` is not in
    /// the vCPU filter).
    pub fn open_current() -> std::io::Result<Self> {
        File::open("/proc/thread-self/schedstat").map(Self)
    }
}

impl SchedStatSource for ThreadSchedStat {
    fn read(&self) -> Option<SchedStat> {
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        SchedStat::parse(buf.get(..n)?)
    }
}

/// A registered steal page and what was last published there.
#[derive(Debug, Clone, Copy)]
struct StealPage {
    gpa: u64,
    version: u32,
    steal_ns: u64,
    updates: u64,
    at: Instant,
}

/// One vCPU's state: its schedstat source and page.
#[derive(Default)]
struct VcpuSteal {
    source: Option<Box<dyn SchedStatSource>>,
    page: Option<StealPage>,
}

/// The steal-time device.
pub struct PvSteal {
    vcpus: Vec<Mutex<VcpuSteal>>,
    every: Duration,
}

impl std::fmt::Debug for PvSteal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvSteal")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// Writes `record` at `gpa` with the version protocol (`record.version` is the even
/// version to end with).
fn publish(mem: &GuestRam, gpa: u64, record: StealTime) -> Result<(), Status> {
    let at = GuestAddress(gpa);
    let fault = |_| Status::EFAULT;
    mem.store(record.version.wrapping_sub(1), at, Ordering::Relaxed)
        .map_err(fault)?;
    fence(Ordering::Release);
    mem.write_obj(record.flags, GuestAddress(gpa + 4))
        .map_err(fault)?;
    mem.write_obj(record.steal_ns, GuestAddress(gpa + 8))
        .map_err(fault)?;
    mem.write_obj(record.run_ns, GuestAddress(gpa + 16))
        .map_err(fault)?;
    mem.write_obj(record.updates, GuestAddress(gpa + 24))
        .map_err(fault)?;
    mem.store(record.version, at, Ordering::Release)
        .map_err(fault)?;
    Ok(())
}

impl PvSteal {
    /// The device for `count` vCPUs, refreshing every [`STEAL_UPDATE_MS`] ms.
    pub fn new(count: u32) -> Self {
        Self::with_interval(count, Duration::from_millis(STEAL_UPDATE_MS))
    }

    /// The device with another refresh interval (tests).
    pub fn with_interval(count: u32, every: Duration) -> Self {
        Self {
            vcpus: (0..count).map(|_| Mutex::default()).collect(),
            every,
        }
    }

    /// Gives vCPU `index` its schedstat source (called on the vCPU's thread).
    pub fn attach(&self, index: u32, source: Box<dyn SchedStatSource>) {
        if let Some(v) = usize::try_from(index).ok().and_then(|i| self.vcpus.get(i)) {
            lock(v).source = Some(source);
        }
    }

    /// The steal time last published for vCPU `index` (0 if none).
    pub fn published(&self, index: u32) -> u64 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.vcpus.get(i))
            .and_then(|v| lock(v).page.map(|p| p.steal_ns))
            .unwrap_or(0)
    }

    /// Reads the source and publishes on `v`'s page.
    fn update(v: &mut VcpuSteal, mem: &GuestRam, now: Instant) -> Result<(), Status> {
        let stat = v
            .source
            .as_ref()
            .and_then(|s| s.read())
            .ok_or(Status::EIO)?;
        let page = v.page.as_mut().ok_or(Status::EINVAL)?;
        let version = page.version.wrapping_add(2);
        let steal_ns = page.steal_ns.max(stat.wait_ns);
        let updates = page.updates + 1;
        publish(
            mem,
            page.gpa,
            StealTime {
                version,
                flags: 0,
                steal_ns,
                run_ns: stat.run_ns,
                updates,
            },
        )?;
        *page = StealPage {
            version,
            steal_ns,
            updates,
            at: now,
            ..*page
        };
        Ok(())
    }

    /// Refreshes vCPU `index`'s page if it is registered and the last refresh is older
    /// than the interval.
    pub fn refresh(&self, mem: &GuestRam, index: u32, now: Instant) {
        let Some(v) = usize::try_from(index).ok().and_then(|i| self.vcpus.get(i)) else {
            return;
        };
        let mut v = lock(v);
        let due = v
            .page
            .is_some_and(|p| now.saturating_duration_since(p.at) >= self.every);
        if due {
            // A failure (the page became unreadable) leaves the old record; the guest
            // sees no update, which it tolerates.
            let _ = Self::update(&mut v, mem, now);
        }
    }
}

impl PvSteal {
    /// [`PvSteal::refresh`] of every vCPU (from the supervising thread: a vCPU that runs
    /// guest code without exiting gets no entry refresh).
    pub fn refresh_all(&self, mem: &GuestRam, now: Instant) {
        for i in 0..self.vcpus.len() {
            self.refresh(mem, u32::try_from(i).unwrap_or(u32::MAX), now);
        }
    }
}

impl PvDevice for PvSteal {
    fn name(&self) -> &'static str {
        "steal"
    }

    fn features(&self) -> Features {
        Features::STEAL_TIME
    }

    fn pages(&self) -> &'static [PageId] {
        &[STEAL_PAGE]
    }

    fn register_page(
        &self,
        ctx: &CallCtx<'_>,
        _page: PageId,
        owner: RegionOwner,
        addr: u64,
        len: u64,
    ) -> Result<u64, Status> {
        let RegionOwner::Vcpu(index) = owner else {
            return Err(Status::EINVAL);
        };
        if !addr.is_multiple_of(REGION_ALIGN) || len < size_of::<StealTime>() as u64 {
            return Err(Status::EINVAL);
        }
        guest_range(ctx.mem, addr, size_of::<StealTime>() as u64).ok_or(Status::EFAULT)?;
        let v = usize::try_from(index)
            .ok()
            .and_then(|i| self.vcpus.get(i))
            .ok_or(Status::EINVAL)?;
        let mut v = lock(v);
        if v.source.is_none() {
            return Err(Status::EOPNOTSUPP);
        }
        // Continue from the version the page holds (rounded to even), as the clock does.
        let current: u32 = ctx
            .mem
            .load(GuestAddress(addr), Ordering::Relaxed)
            .map_err(|_| Status::EFAULT)?;
        let old = v.page.take();
        v.page = Some(StealPage {
            gpa: addr,
            version: current.wrapping_add(1) & !1,
            steal_ns: old.map_or(0, |p| p.steal_ns),
            updates: 0,
            at: Instant::now(),
        });
        Self::update(&mut v, ctx.mem, Instant::now()).inspect_err(|_| v.page = None)?;
        Ok(0)
    }

    fn hooks_entry(&self) -> bool {
        true
    }

    fn before_run(&self, mem: &GuestRam, vcpu: u32) {
        self.refresh(mem, vcpu, Instant::now());
    }

    fn vcpu_thread_started(&self, vcpu: u32) {
        if let Ok(s) = ThreadSchedStat::open_current() {
            self.attach(vcpu, Box::new(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ledger::ExitLedger;
    use crate::vstate::memory::create_ram;
    use std::sync::Arc;

    /// A source that returns what the test stores.
    struct Fixed(Arc<Mutex<SchedStat>>);
    impl SchedStatSource for Fixed {
        fn read(&self) -> Option<SchedStat> {
            Some(*self.0.lock().unwrap())
        }
    }

    fn read(mem: &GuestRam, gpa: u64) -> (u32, u64, u64, u64) {
        let v: u32 = mem.read_obj(GuestAddress(gpa)).unwrap();
        let s: u64 = mem.read_obj(GuestAddress(gpa + 8)).unwrap();
        let r: u64 = mem.read_obj(GuestAddress(gpa + 16)).unwrap();
        let u: u64 = mem.read_obj(GuestAddress(gpa + 24)).unwrap();
        (v, s, r, u)
    }

    #[test]
    fn schedstat_lines_parse_and_garbage_does_not() {
        assert_eq!(
            SchedStat::parse(b"123 456 7\n"),
            Some(SchedStat {
                run_ns: 123,
                wait_ns: 456
            })
        );
        assert_eq!(SchedStat::parse(b"123"), None);
        assert_eq!(SchedStat::parse(b"x y z"), None);
        assert_eq!(SchedStat::parse(&[0xff, b' ', b'1']), None);
    }

    #[test]
    fn this_threads_schedstat_is_readable() {
        let s = ThreadSchedStat::open_current().expect("schedstat");
        assert!(s.read().is_some());
    }

    #[test]
    fn the_page_is_per_vcpu_validated_refreshed_at_most_every_interval_and_monotonic() {
        let mem = create_ram(4).unwrap();
        let ledger = ExitLedger::new();
        let ctx = |vcpu| CallCtx {
            mem: &mem,
            ledger: &ledger,
            vcpu,
            waiters: None,
        };
        let d = PvSteal::with_interval(2, Duration::from_millis(10));
        let stat = Arc::new(Mutex::new(SchedStat {
            run_ns: 5,
            wait_ns: 100,
        }));
        let reg = |owner, addr, len| d.register_page(&ctx(0), STEAL_PAGE, owner, addr, len);
        assert_eq!(
            reg(RegionOwner::Vcpu(0), 0x2000, 4096),
            Err(Status::EOPNOTSUPP)
        );
        d.attach(0, Box::new(Fixed(Arc::clone(&stat))));
        assert_eq!(
            reg(RegionOwner::Vm, 0x2000, 4096),
            Err(Status::EINVAL),
            "VM"
        );
        assert_eq!(reg(RegionOwner::Vcpu(0), 0x2008, 4096), Err(Status::EINVAL));
        assert_eq!(reg(RegionOwner::Vcpu(0), 0x2000, 16), Err(Status::EINVAL));
        assert_eq!(
            reg(RegionOwner::Vcpu(0), 4 << 20, 4096),
            Err(Status::EFAULT)
        );
        assert_eq!(reg(RegionOwner::Vcpu(7), 0x2000, 4096), Err(Status::EINVAL));
        assert_eq!(read(&mem, 0x2000), (0, 0, 0, 0), "nothing written");
        assert_eq!(reg(RegionOwner::Vcpu(0), 0x2000, 4096), Ok(0));
        assert_eq!(read(&mem, 0x2000), (2, 100, 5, 1));
        let t0 = Instant::now();
        *stat.lock().unwrap() = SchedStat {
            run_ns: 6,
            wait_ns: 200,
        };
        d.refresh(&mem, 0, t0);
        assert_eq!(read(&mem, 0x2000).1, 100, "not due yet");
        d.refresh(&mem, 0, t0 + Duration::from_millis(20));
        assert_eq!(read(&mem, 0x2000), (4, 200, 6, 2));
        // A source going backwards does not make the published steal time go back.
        *stat.lock().unwrap() = SchedStat {
            run_ns: 7,
            wait_ns: 50,
        };
        d.refresh(&mem, 0, t0 + Duration::from_millis(40));
        assert_eq!(read(&mem, 0x2000), (6, 200, 7, 3));
        assert_eq!(d.published(0), 200);
        // vCPU 1 registered nothing: refreshing it writes nothing.
        d.refresh(&mem, 1, t0 + Duration::from_secs(1));
        assert_eq!(d.published(1), 0);
    }
}
