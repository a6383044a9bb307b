//! The memory balloon ([`pvkit_abi::balloon`]): `BalloonInflate` releases guest pages to
//! the host with `madvise(MADV_DONTNEED)` on their host mapping and tracks them in a
//! bitmap of RAM pages; `BalloonDeflate` untracks them (the guest's next touch gets a
//! zero-filled page); `BalloonInfo` says how many pages are ballooned; `BalloonTarget`
//! tells the guest the host-set target ([`PvBalloon::set_target`], the control API's
//! `balloon`), which the guest follows on its own (the host only counts).
//!
//! Every call is validated completely before anything changes ([`validate`]): a call with
//! one bad range is refused with a status and changes nothing. The bitmap is bounded by
//! the RAM size (one bit per 4 KiB page: 96 KiB for the 3 GiB maximum).
//!
//! Seccomp: the vCPU threads already allow `madvise` with `MADV_DONTNEED` only (the
//! allocator and glibc's thread stacks need it, [`crate::runtime::seccomp`]); that is the
//! only advice used here. The host RSS is read (for the statistics) with `pread64` on
//! `/proc/self/statm`, opened when the device is built, before any thread is confined.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::Instant;

use pvkit_abi::balloon::{BalloonRange, BalloonTarget, BALLOON_MAX_RANGES, BALLOON_PAGE_SIZE};
use pvkit_abi::boot::KERNEL_MIN_ADDR;
use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::Status;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{CallCtx, PvDevice};
use crate::hypercall::call_return;
use crate::runtime::sync::lock;
use crate::vstate::memory::{guest_range, ram_size, GuestRam};

const CALLS: &[Hypercall] = &[
    Hypercall::BalloonInflate,
    Hypercall::BalloonDeflate,
    Hypercall::BalloonInfo,
    Hypercall::BalloonTarget,
];

/// Inflate or deflate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Give pages to the host.
    Inflate,
    /// Take them back.
    Deflate,
}

/// Errors building the balloon.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The RAM is too large for the page bitmap (never for RAM this VMM creates).
    #[error("guest RAM of {0} bytes is too large for the balloon bitmap")]
    RamTooLarge(u64),
    /// A saved ballooned range is outside guest RAM.
    #[error("saved ballooned pages {first}+{count} are outside guest RAM")]
    SavedRange {
        /// First page.
        first: u64,
        /// Page count.
        count: u64,
    },
    /// A target larger than guest RAM.
    #[error(
        "balloon target of {target_pages} pages ({} MiB) is larger than the guest's RAM of \
         {ram_pages} pages ({} MiB); nothing changed",
        target_pages / 256,
        ram_pages / 256
    )]
    TargetAboveRam {
        /// The target asked for.
        target_pages: u64,
        /// Guest RAM.
        ram_pages: u64,
    },
    /// A target larger than what the guest could ever give: its RAM less the boot area and
    /// the kernel image, which are never ballooned.
    #[error(
        "balloon target of {target_pages} pages is more than the guest can give: at most \
         {max_pages} pages (RAM less the boot area and the kernel image); nothing changed"
    )]
    TargetAboveMax {
        /// The target asked for.
        target_pages: u64,
        /// The largest target.
        max_pages: u64,
    },
}

/// One bit per 4 KiB page of guest RAM: set = ballooned.
#[derive(Clone, Debug)]
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
    set: u64,
}

impl PageBitmap {
    /// A bitmap of `pages` pages, none set.
    pub fn new(pages: u64) -> Option<Self> {
        let words = usize::try_from(pages.div_ceil(64)).ok()?;
        Some(Self {
            words: vec![0; words],
            pages,
            set: 0,
        })
    }

    /// How many pages are set.
    pub fn count(&self) -> u64 {
        self.set
    }

    fn word_bit(&self, page: u64) -> Option<(usize, u64)> {
        (page < self.pages).then(|| ((page / 64) as usize, 1u64 << (page % 64)))
    }

    /// Whether page `page` is set (`false` outside the bitmap).
    pub fn get(&self, page: u64) -> bool {
        self.word_bit(page)
            .and_then(|(w, b)| self.words.get(w).map(|&x| x & b != 0))
            .unwrap_or(false)
    }

    /// Whether any page of `pages` is set.
    pub fn any(&self, pages: Range<u64>) -> bool {
        pages.into_iter().any(|p| self.get(p))
    }

    /// Whether every page of `pages` is set (`true` for an empty range).
    pub fn all(&self, pages: Range<u64>) -> bool {
        pages.into_iter().all(|p| self.get(p))
    }

    /// Sets or clears every page of `pages` (pages outside the bitmap are ignored).
    pub fn assign(&mut self, pages: Range<u64>, value: bool) {
        for p in pages {
            if let Some((w, b)) = self.word_bit(p) {
                if let Some(word) = self.words.get_mut(w) {
                    let was = *word & b != 0;
                    if value && !was {
                        *word |= b;
                        self.set += 1;
                    } else if !value && was {
                        *word &= !b;
                        self.set -= 1;
                    }
                }
            }
        }
    }
}

/// Where the balloon may not go: the RAM size, and the kernel image span as the loader
/// reported it (the boot area below [`KERNEL_MIN_ADDR`] is always refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Guest RAM size in bytes.
    pub ram: u64,
    /// The loaded kernel image (rounded out to pages when checked).
    pub kernel: Range<u64>,
}

/// A validated range, as page numbers.
type Pages = Range<u64>;

/// Checks one call's ranges against every rule of [`pvkit_abi::balloon`], in its order,
/// without changing anything. Returns the ranges as page-number ranges, sorted.
pub fn validate(
    op: Op,
    ranges: &[BalloonRange],
    limits: &Limits,
    ballooned: &PageBitmap,
) -> Result<Vec<Pages>, Status> {
    if ranges.len() as u64 > BALLOON_MAX_RANGES {
        return Err(Status::E2BIG);
    }
    let kernel_start = limits.kernel.start & !(BALLOON_PAGE_SIZE - 1);
    let kernel_end = limits
        .kernel
        .end
        .checked_add(BALLOON_PAGE_SIZE - 1)
        .map_or(u64::MAX, |e| e & !(BALLOON_PAGE_SIZE - 1));
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if !r.gpa.is_multiple_of(BALLOON_PAGE_SIZE) || r.pages == 0 {
            return Err(Status::EINVAL);
        }
        let end = r.end().ok_or(Status::EFAULT)?;
        if end > limits.ram {
            return Err(Status::EFAULT);
        }
        let in_boot_area = r.gpa < KERNEL_MIN_ADDR;
        let in_kernel = r.gpa < kernel_end && end > kernel_start;
        if in_boot_area || in_kernel {
            return Err(Status::EPERM);
        }
        out.push(r.gpa / BALLOON_PAGE_SIZE..end / BALLOON_PAGE_SIZE);
    }
    out.sort_unstable_by_key(|p| p.start);
    if out.windows(2).any(|w| match w {
        [a, b] => b.start < a.end,
        _ => false,
    }) {
        return Err(Status::EINVAL);
    }
    match op {
        Op::Inflate if out.iter().any(|p| ballooned.any(p.clone())) => Err(Status::EBUSY),
        Op::Deflate if !out.iter().all(|p| ballooned.all(p.clone())) => Err(Status::EINVAL),
        _ => Ok(out),
    }
}

/// What the balloon did during the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Pages ballooned now.
    pub ballooned_pages: u64,
    /// The most pages ballooned at once.
    pub peak_ballooned_pages: u64,
    /// Successful inflate calls.
    pub inflate_calls: u64,
    /// Successful deflate calls.
    pub deflate_calls: u64,
    /// Calls refused (any status but OK).
    pub refused_calls: u64,
    /// Pages inflated, over all calls.
    pub pages_inflated: u64,
    /// Pages deflated, over all calls.
    pub pages_deflated: u64,
    /// Host time spent releasing memory (`madvise`), in ns.
    pub release_ns: u64,
    /// The VMM's resident set (KiB, `/proc/self/statm`) just before the first inflate.
    pub rss_before_first_inflate_kib: Option<u64>,
    /// The VMM's resident set just after the last inflate.
    pub rss_after_last_inflate_kib: Option<u64>,
    /// The VMM's resident set given back by the inflates: the sum over inflate calls of
    /// the RSS just before minus the RSS just after (KiB).
    pub rss_released_kib: u64,
}

impl BalloonStats {
    /// MiB currently ballooned.
    pub fn ballooned_mib(&self) -> f64 {
        (self.ballooned_pages * BALLOON_PAGE_SIZE) as f64 / f64::from(1u32 << 20)
    }
}

/// The host-set target and whether the guest has read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetStatus {
    /// The target and its generation, as `BalloonTarget` returns them.
    pub target: BalloonTarget,
    /// The guest has called `BalloonTarget` since this target was set (a guest that
    /// follows the target reads it; one that never reads it keeps its memory).
    pub read: bool,
    /// `BalloonTarget` calls so far.
    pub reads: u64,
}

impl TargetStatus {
    /// The target in pages.
    pub fn pages(&self) -> u64 {
        u64::from(self.target.pages)
    }
}

struct State {
    bitmap: PageBitmap,
    stats: BalloonStats,
    target: TargetStatus,
}

/// The balloon device.
pub struct PvBalloon {
    limits: Limits,
    state: Mutex<State>,
    statm: Option<File>,
}

impl std::fmt::Debug for PvBalloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvBalloon")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The resident set of this process in KiB, read from `statm` (second field, pages).
pub fn read_rss_kib(statm: &File) -> Option<u64> {
    let mut buf = [0u8; 128];
    let n = statm.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()? / 1024)
}

impl PvBalloon {
    /// A balloon over `mem`, refusing the boot area and the kernel image `kernel`.
    pub fn new(mem: &GuestRam, kernel: Range<u64>) -> Result<Self, BalloonError> {
        let ram = ram_size(mem);
        let bitmap =
            PageBitmap::new(ram / BALLOON_PAGE_SIZE).ok_or(BalloonError::RamTooLarge(ram))?;
        Ok(Self {
            limits: Limits { ram, kernel },
            state: Mutex::new(State {
                bitmap,
                stats: BalloonStats::default(),
                target: TargetStatus::default(),
            }),
            statm: File::open("/proc/self/statm").ok(),
        })
    }

    /// What the balloon did so far.
    pub fn stats(&self) -> BalloonStats {
        lock(&self.state).stats
    }

    /// The host-set target, its generation and whether the guest read it.
    pub fn target(&self) -> TargetStatus {
        lock(&self.state).target
    }

    /// The largest target: the RAM pages outside the boot area (below
    /// [`KERNEL_MIN_ADDR`]) and the kernel image (rounded out to pages), which the balloon
    /// refuses.
    pub fn max_target_pages(&self) -> u64 {
        let page = BALLOON_PAGE_SIZE;
        let ram = self.limits.ram / page;
        let boot = KERNEL_MIN_ADDR.div_ceil(page).min(ram);
        let k_start = (self.limits.kernel.start / page).max(boot).min(ram);
        let k_end = self.limits.kernel.end.div_ceil(page).max(k_start).min(ram);
        ram - boot - (k_end - k_start)
    }

    /// Sets the target to `pages` (the control API's `balloon`): the guest reads it with
    /// `BalloonTarget` and moves toward it. Every set increments the generation (the same
    /// value included: a new request). Refused, changing nothing, above
    /// [`PvBalloon::max_target_pages`].
    pub fn set_target(&self, pages: u64) -> Result<TargetStatus, BalloonError> {
        let ram_pages = self.limits.ram / BALLOON_PAGE_SIZE;
        if pages > ram_pages {
            return Err(BalloonError::TargetAboveRam {
                target_pages: pages,
                ram_pages,
            });
        }
        let max_pages = self.max_target_pages();
        let value = match u32::try_from(pages) {
            Ok(v) if pages <= max_pages => v,
            _ => {
                return Err(BalloonError::TargetAboveMax {
                    target_pages: pages,
                    max_pages,
                })
            }
        };
        let mut state = lock(&self.state);
        let t = &mut state.target;
        t.target = BalloonTarget {
            pages: value,
            generation: t.target.generation.wrapping_add(1),
        };
        t.read = false;
        Ok(*t)
    }

    /// Sets a saved target and generation on a restored VM (checked as
    /// [`PvBalloon::set_target`]); the guest sees the same generation it may have read.
    pub fn restore_target(&self, saved: BalloonTarget) -> Result<(), BalloonError> {
        let pages = u64::from(saved.pages);
        let max_pages = self.max_target_pages();
        if pages > max_pages {
            return Err(BalloonError::TargetAboveMax {
                target_pages: pages,
                max_pages,
            });
        }
        lock(&self.state).target.target = saved;
        Ok(())
    }

    /// `BalloonTarget`: the target, packed; the guest has now read it.
    pub fn read_target(&self) -> u64 {
        let mut state = lock(&self.state);
        let t = &mut state.target;
        t.read = true;
        t.reads = t.reads.saturating_add(1);
        t.target.to_u64()
    }

    /// Whether the page at `gpa` is ballooned.
    pub fn is_ballooned(&self, gpa: u64) -> bool {
        lock(&self.state).bitmap.get(gpa / BALLOON_PAGE_SIZE)
    }

    /// The ballooned pages as runs (first page, count), for a snapshot.
    pub fn ballooned_ranges(&self) -> Vec<(u64, u64)> {
        let state = lock(&self.state);
        let pages = self.limits.ram / BALLOON_PAGE_SIZE;
        let mut out = Vec::new();
        let mut run: Option<u64> = None;
        for p in 0..=pages {
            match (p < pages && state.bitmap.get(p), run) {
                (true, None) => run = Some(p),
                (false, Some(start)) => {
                    out.push((start, p - start));
                    run = None;
                }
                _ => {}
            }
        }
        out
    }

    /// Marks saved runs (first page, count) as ballooned, on a restored VM whose RAM has
    /// them as holes. Refused if a run is outside RAM.
    pub fn restore_ballooned(&self, runs: &[(u64, u64)]) -> Result<(), BalloonError> {
        let pages = self.limits.ram / BALLOON_PAGE_SIZE;
        let mut state = lock(&self.state);
        for &(first, count) in runs {
            match first.checked_add(count) {
                Some(end) if end <= pages => state.bitmap.assign(first..end, true),
                _ => return Err(BalloonError::SavedRange { first, count }),
            }
        }
        state.stats.ballooned_pages = state.bitmap.count();
        Ok(())
    }

    fn rss_kib(&self) -> Option<u64> {
        self.statm.as_ref().and_then(read_rss_kib)
    }

    /// Reads the call's array of ranges (also the free-page hint's).
    pub(crate) fn read_ranges(
        mem: &GuestRam,
        addr: u64,
        count: u64,
    ) -> Result<Vec<BalloonRange>, Status> {
        if count > BALLOON_MAX_RANGES {
            return Err(Status::E2BIG);
        }
        let size = std::mem::size_of::<BalloonRange>() as u64;
        // Cannot overflow: count ≤ 512.
        let len = count * size;
        let at = guest_range(mem, addr, len).ok_or(Status::EFAULT)?;
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, at).map_err(|_| Status::EFAULT)?;
        let word = |c: &[u8]| c.try_into().map(u64::from_le_bytes).unwrap_or(0);
        Ok(bytes
            .chunks_exact(size as usize)
            .map(|c| BalloonRange {
                gpa: word(c.get(0..8).unwrap_or(&[])),
                pages: word(c.get(8..16).unwrap_or(&[])),
            })
            .collect())
    }

    /// Releases the host memory behind the pages `pages`.
    fn release(mem: &GuestRam, pages: &Pages) -> Result<(), Status> {
        let gpa = pages.start * BALLOON_PAGE_SIZE;
        let len = (pages.end - pages.start) * BALLOON_PAGE_SIZE;
        // Validated against the RAM size already; checked again through vm-memory.
        guest_range(mem, gpa, len).ok_or(Status::EFAULT)?;
        let host = mem
            .get_host_address(GuestAddress(gpa))
            .map_err(|_| Status::EFAULT)?;
        let len = usize::try_from(len).map_err(|_| Status::EFAULT)?;
        // SAFETY: `[gpa, gpa + len)` lies inside guest RAM, which is one private anonymous
        // mapping (`vstate::memory::create_ram`), so `[host, host + len)` is inside that
        // mapping and page aligned (gpa is, and the mapping starts page aligned).
        // MADV_DONTNEED drops the pages; the next access by the guest (through KVM's MMU
        // notifier) or by the VMM maps a zero page. No Rust reference into guest RAM
        // exists: the VMM accesses guest RAM only through vm-memory's copying API.
        let r = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
        // The pages now read as zero: a migration in progress must resend them.
        crate::vstate::dirty::mark_host_write(mem, gpa, len as u64);
        if r == 0 {
            Ok(())
        } else {
            Err(Status::EIO)
        }
    }

    /// Inflate or deflate with the array at `addr` of `count` ranges.
    pub fn resize(&self, mem: &GuestRam, op: Op, addr: u64, count: u64) -> Result<u64, Status> {
        let mut state = lock(&self.state);
        let r = self.resize_locked(&mut state, mem, op, addr, count);
        if r.is_err() {
            state.stats.refused_calls += 1;
        }
        r
    }

    fn resize_locked(
        &self,
        state: &mut State,
        mem: &GuestRam,
        op: Op,
        addr: u64,
        count: u64,
    ) -> Result<u64, Status> {
        if count == 0 {
            return Ok(0);
        }
        let ranges = Self::read_ranges(mem, addr, count)?;
        let pages = validate(op, &ranges, &self.limits, &state.bitmap)?;
        let total: u64 = pages.iter().map(|p| p.end - p.start).sum();
        match op {
            Op::Inflate => {
                let before = self.rss_kib();
                let t0 = Instant::now();
                for p in &pages {
                    // A failure here is the host's (the range was valid): the pages
                    // released so far stay tracked, the rest are not.
                    Self::release(mem, p)?;
                    state.bitmap.assign(p.clone(), true);
                }
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let after = self.rss_kib();
                let s = &mut state.stats;
                s.release_ns = s.release_ns.saturating_add(ns);
                s.inflate_calls += 1;
                s.pages_inflated += total;
                if s.rss_before_first_inflate_kib.is_none() {
                    s.rss_before_first_inflate_kib = before;
                }
                s.rss_after_last_inflate_kib = after;
                if let (Some(b), Some(a)) = (before, after) {
                    s.rss_released_kib += b.saturating_sub(a);
                }
            }
            Op::Deflate => {
                for p in &pages {
                    state.bitmap.assign(p.clone(), false);
                }
                state.stats.deflate_calls += 1;
                state.stats.pages_deflated += total;
            }
        }
        let s = &mut state.stats;
        s.ballooned_pages = state.bitmap.count();
        s.peak_ballooned_pages = s.peak_ballooned_pages.max(s.ballooned_pages);
        Ok(total)
    }
}

impl PvDevice for PvBalloon {
    fn name(&self) -> &'static str {
        "balloon"
    }

    fn features(&self) -> Features {
        Features::BALLOON | Features::BALLOON_TARGET
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        CALLS
    }

    fn call(&self, ctx: &CallCtx<'_>, call: Hypercall, args: [u64; 4]) -> CallReturn {
        let [addr, count, _, _] = args;
        match call {
            Hypercall::BalloonInflate => {
                call_return(self.resize(ctx.mem, Op::Inflate, addr, count))
            }
            Hypercall::BalloonDeflate => {
                call_return(self.resize(ctx.mem, Op::Deflate, addr, count))
            }
            Hypercall::BalloonInfo => CallReturn::ok(lock(&self.state).bitmap.count()),
            // arg0: flags, none defined yet (reserved for a change-interrupt binding).
            Hypercall::BalloonTarget if addr != 0 => CallReturn::err(Status::EINVAL),
            Hypercall::BalloonTarget => CallReturn::ok(self.read_target()),
            _ => CallReturn::err(Status::EOPNOTSUPP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_ram;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    /// The kernel image of the tests: 2 MiB..3 MiB + 1 byte (rounded out: up to 3 MiB + 4 KiB).
    const KERNEL: Range<u64> = 0x20_0000..0x30_0001;
    /// Where the test writes its range arrays (inside RAM, outside every range used).
    const ARRAY: u64 = 0x8_0000;

    fn r(gpa: u64, pages: u64) -> BalloonRange {
        BalloonRange { gpa, pages }
    }

    struct H {
        mem: GuestRam,
        b: PvBalloon,
    }

    impl H {
        fn new(mib: u64) -> Self {
            let mem = create_ram(mib).unwrap();
            let b = PvBalloon::new(&mem, KERNEL).unwrap();
            Self { mem, b }
        }

        fn call(&self, op: Op, ranges: &[BalloonRange]) -> Result<u64, Status> {
            let bytes: Vec<u8> = ranges
                .iter()
                .flat_map(|r| [r.gpa.to_le_bytes(), r.pages.to_le_bytes()].concat())
                .collect();
            self.mem.write_slice(&bytes, GuestAddress(ARRAY)).unwrap();
            self.b.resize(&self.mem, op, ARRAY, ranges.len() as u64)
        }

        fn fill(&self, gpa: u64, len: usize, byte: u8) {
            self.mem
                .write_slice(&vec![byte; len], GuestAddress(gpa))
                .unwrap();
        }

        fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
            v
        }
    }

    #[test]
    fn inflate_releases_memory_and_deflate_gives_zero_pages() {
        let h = H::new(64);
        h.fill(8 * MIB, (4 * MIB) as usize, 0xab);
        assert_eq!(h.call(Op::Inflate, &[r(8 * MIB, 1024)]), Ok(1024));
        assert!(h.b.is_ballooned(8 * MIB) && h.b.is_ballooned(12 * MIB - 4096));
        assert!(!h.b.is_ballooned(12 * MIB));
        let s = h.b.stats();
        assert_eq!(
            (s.ballooned_pages, s.inflate_calls, s.pages_inflated),
            (1024, 1, 1024)
        );
        // The host dropped the pages: they read as zero even before deflate (the VMM's
        // read maps the zero page).
        assert!(h.read(8 * MIB, (4 * MIB) as usize).iter().all(|&b| b == 0));
        assert_eq!(h.call(Op::Deflate, &[r(8 * MIB, 1024)]), Ok(1024));
        assert!(!h.b.is_ballooned(8 * MIB));
        h.fill(8 * MIB, 4096, 0x5a);
        assert_eq!(h.read(8 * MIB, 4096), vec![0x5a; 4096]);
        let s = h.b.stats();
        assert_eq!((s.ballooned_pages, s.peak_ballooned_pages), (0, 1024));
        assert_eq!(
            (s.deflate_calls, s.pages_deflated, s.refused_calls),
            (1, 1024, 0)
        );
    }

    #[test]
    fn rss_drops_by_the_ballooned_amount() {
        let h = H::new(128);
        h.fill(16 * MIB, (64 * MIB) as usize, 1);
        assert_eq!(h.call(Op::Inflate, &[r(16 * MIB, 64 * 256)]), Ok(64 * 256));
        let s = h.b.stats();
        // /proc/self/statm is the kernel's count; other test threads may allocate in
        // between, so ≥ 90 % of 64 MiB.
        assert!(s.rss_released_kib >= 64 * 1024 * 9 / 10, "{s:?}");
    }

    /// Every refusal changes nothing: same bitmap, same memory, same stats but the count.
    #[test]
    fn bad_calls_are_refused_and_change_nothing() {
        let h = H::new(64);
        let ram = 64 * MIB;
        h.fill(8 * MIB, 8192, 0x77);
        assert_eq!(h.call(Op::Inflate, &[r(20 * MIB, 16)]), Ok(16));
        let good = r(8 * MIB, 2);
        let cases: Vec<(Op, Vec<BalloonRange>, Status)> = vec![
            (Op::Inflate, vec![good, r(8 * MIB + 1, 1)], Status::EINVAL),
            (Op::Inflate, vec![good, r(9 * MIB, 0)], Status::EINVAL),
            (Op::Inflate, vec![good, r(ram - 4096, 2)], Status::EFAULT),
            (Op::Inflate, vec![good, r(ram, 1)], Status::EFAULT),
            (
                Op::Inflate,
                vec![good, r(0xffff_ffff_ffff_f000, 1)],
                Status::EFAULT,
            ),
            (
                Op::Inflate,
                vec![good, r(4096, u64::MAX / 4096)],
                Status::EFAULT,
            ),
            (Op::Inflate, vec![good, r(0, 1)], Status::EPERM),
            (
                Op::Inflate,
                vec![good, r(KERNEL_MIN_ADDR - 4096, 1)],
                Status::EPERM,
            ),
            (
                Op::Inflate,
                vec![good, r(KERNEL.start - 4096, 2)],
                Status::EPERM,
            ),
            (Op::Inflate, vec![good, r(0x30_0000, 1)], Status::EPERM),
            (Op::Inflate, vec![good, good], Status::EINVAL),
            (
                Op::Inflate,
                vec![good, r(8 * MIB + 4096, 4)],
                Status::EINVAL,
            ),
            (
                Op::Inflate,
                vec![r(9 * MIB, 4), good, r(9 * MIB + 8192, 1)],
                Status::EINVAL,
            ),
            (
                Op::Inflate,
                vec![good, r(20 * MIB + 15 * 4096, 2)],
                Status::EBUSY,
            ),
            (Op::Deflate, vec![good], Status::EINVAL),
            (Op::Deflate, vec![r(20 * MIB, 17)], Status::EINVAL),
            (
                Op::Deflate,
                vec![r(20 * MIB, 8), r(20 * MIB + 4 * 4096, 1)],
                Status::EINVAL,
            ),
        ];
        for (i, (op, ranges, status)) in cases.iter().enumerate() {
            let before = h.b.stats();
            assert_eq!(
                h.call(*op, ranges),
                Err(*status),
                "case {i}: {op:?} {ranges:?}"
            );
            let after = h.b.stats();
            assert_eq!(after.refused_calls, before.refused_calls + 1);
            assert_eq!(
                BalloonStats {
                    refused_calls: before.refused_calls,
                    ..after
                },
                before,
                "case {i}"
            );
            assert!(!h.b.is_ballooned(8 * MIB), "case {i}");
            assert_eq!(
                h.read(8 * MIB, 8192),
                vec![0x77; 8192],
                "case {i}: memory released"
            );
        }
        // Too many ranges, and an array outside RAM.
        let n = BALLOON_MAX_RANGES + 1;
        assert_eq!(
            h.b.resize(&h.mem, Op::Inflate, ARRAY, n),
            Err(Status::E2BIG)
        );
        assert_eq!(
            h.b.resize(&h.mem, Op::Inflate, ram - 8, 1),
            Err(Status::EFAULT)
        );
        assert_eq!(h.b.resize(&h.mem, Op::Inflate, u64::MAX, 0), Ok(0));
        assert_eq!(h.b.stats().ballooned_pages, 16);
        // The page just past the kernel's rounded-out end is allowed.
        assert_eq!(h.call(Op::Inflate, &[r(0x30_1000, 1)]), Ok(1));
        assert_eq!(h.call(Op::Inflate, &[r(KERNEL_MIN_ADDR, 1)]), Ok(1));
    }

    #[test]
    fn the_target_is_set_read_and_bounded() {
        let h = H::new(64);
        let ram = 64 * 256;
        // Boot area (1 MiB: 256 pages below KERNEL_MIN_ADDR) and the kernel image rounded
        // out (2 MiB..3 MiB + 4 KiB: 257 pages) are never ballooned.
        assert_eq!(KERNEL_MIN_ADDR, MIB);
        let max = ram - 256 - 257;
        assert_eq!(h.b.max_target_pages(), max);
        assert_eq!(h.b.target(), TargetStatus::default());
        let call = |h: &H| BalloonTarget::from_u64(h.b.read_target());
        // Nothing set: target 0, generation 0.
        assert_eq!(call(&h), BalloonTarget::default());
        let t = h.b.set_target(8 * 256).unwrap();
        assert_eq!(
            (t.target.pages, t.target.generation, t.read),
            (2048, 1, false)
        );
        assert_eq!(
            call(&h),
            BalloonTarget {
                pages: 2048,
                generation: 1
            }
        );
        let s = h.b.target();
        assert!(s.read);
        assert_eq!(s.reads, 2);
        // The same value again is a new request.
        assert_eq!(h.b.set_target(2048).unwrap().target.generation, 2);
        assert!(!h.b.target().read);
        // Refused: above RAM, above what the guest can give; nothing changes.
        let before = h.b.target();
        let e = h.b.set_target(ram + 1).unwrap_err();
        assert!(matches!(e, BalloonError::TargetAboveRam { .. }), "{e}");
        assert!(e.to_string().contains("64 MiB"), "{e}");
        let e = h.b.set_target(max + 1).unwrap_err();
        assert!(matches!(e, BalloonError::TargetAboveMax { .. }), "{e}");
        assert!(h.b.set_target(u64::MAX).is_err());
        assert_eq!(h.b.target(), before);
        // The largest target and 0 are accepted.
        assert_eq!(h.b.set_target(max).unwrap().target.pages as u64, max);
        assert_eq!(h.b.set_target(0).unwrap().target.generation, 4);
        // The target does not touch the balloon itself.
        assert_eq!(h.b.stats(), BalloonStats::default());
    }

    /// Through the hypercall bus, as the exit handler calls it: the feature bit is offered
    /// with the balloon, and `BalloonTarget` returns the packed target; flags other than 0
    /// are refused and count as no read; arguments 1–3 are ignored.
    #[test]
    fn the_bus_offers_and_dispatches_balloon_target() {
        use crate::devices::{assemble, PvConfig};
        use crate::exit::ledger::ExitLedger;
        let mem = create_ram(64).unwrap();
        let mut ledger = ExitLedger::new();
        let pv = assemble(
            PvConfig {
                balloon: Some((mem.clone(), KERNEL)),
                ..PvConfig::core(crate::io::console_out::Console::capture(), false)
            },
            &mut ledger,
        )
        .unwrap();
        assert!(pv
            .bus
            .features()
            .contains(Features::BALLOON | Features::BALLOON_TARGET));
        let b = pv.balloon.unwrap();
        let call = |args| {
            pv.bus
                .dispatch(&mem, &ledger, 0, Hypercall::BalloonTarget, args)
        };
        assert_eq!(call([0; 4]), CallReturn::ok(0));
        b.set_target(300).unwrap();
        let packed = BalloonTarget {
            pages: 300,
            generation: 1,
        }
        .to_u64();
        for flags in [1, u64::MAX] {
            assert_eq!(call([flags, 0, 0, 0]), CallReturn::err(Status::EINVAL));
        }
        assert!(!b.target().read);
        assert_eq!(
            call([0, u64::MAX, u64::MAX, u64::MAX]),
            CallReturn::ok(packed)
        );
        assert_eq!(b.target().reads, 2);
        assert!(b.target().read);
    }

    #[test]
    fn a_restored_target_keeps_its_generation_and_is_checked() {
        let h = H::new(64);
        let saved = BalloonTarget {
            pages: 1000,
            generation: 7,
        };
        h.b.restore_target(saved).unwrap();
        assert_eq!(BalloonTarget::from_u64(h.b.read_target()), saved);
        assert_eq!(h.b.set_target(10).unwrap().target.generation, 8);
        let huge = BalloonTarget {
            pages: u32::MAX,
            generation: 1,
        };
        assert!(h.b.restore_target(huge).is_err());
        assert_eq!(h.b.target().pages(), 10);
    }

    /// A guest following the target through the device: the call returns the target and
    /// the guest's inflates and deflates bring the actual count to it.
    #[test]
    fn a_guest_following_the_target_reaches_it() {
        let h = H::new(64);
        h.b.set_target(4096).unwrap();
        let t = BalloonTarget::from_u64(h.b.read_target());
        // The guest inflates 16 MiB above 8 MiB in two batches of 8 MiB.
        let mut at = 8 * MIB;
        while h.b.stats().ballooned_pages < u64::from(t.pages) {
            let left = u64::from(t.pages) - h.b.stats().ballooned_pages;
            let n = left.min(2048);
            assert_eq!(h.call(Op::Inflate, &[r(at, n)]), Ok(n));
            at += n * 4096;
        }
        let s = h.b.stats();
        assert_eq!((s.ballooned_pages, s.inflate_calls), (4096, 2));
        h.b.set_target(0).unwrap();
        assert_eq!(BalloonTarget::from_u64(h.b.read_target()).pages, 0);
        assert_eq!(h.call(Op::Deflate, &[r(8 * MIB, 4096)]), Ok(4096));
        assert_eq!(h.b.stats().ballooned_pages, 0);
    }

    #[test]
    fn a_full_call_of_single_pages_is_2_mib() {
        let h = H::new(64);
        // 512 discontiguous pages, every other page of 4 MiB.
        let ranges: Vec<_> = (0..BALLOON_MAX_RANGES)
            .map(|i| r(8 * MIB + i * 8192, 1))
            .collect();
        assert_eq!(h.call(Op::Inflate, &ranges), Ok(512));
        assert_eq!(h.call(Op::Deflate, &ranges), Ok(512));
        assert_eq!(h.b.stats().ballooned_pages, 0);
    }

    fn naive(
        op: Op,
        ranges: &[BalloonRange],
        limits: &Limits,
        set: &[bool],
    ) -> Result<u64, Status> {
        // The rules one page at a time, as the ABI table states them.
        if ranges.len() as u64 > BALLOON_MAX_RANGES {
            return Err(Status::E2BIG);
        }
        let ks = limits.kernel.start / 4096 * 4096;
        let ke = limits.kernel.end.div_ceil(4096) * 4096;
        let mut pages = Vec::new();
        for r in ranges {
            if r.gpa % 4096 != 0 || r.pages == 0 {
                return Err(Status::EINVAL);
            }
            let end = (r.gpa as u128) + (r.pages as u128) * 4096;
            if end > limits.ram as u128 {
                return Err(Status::EFAULT);
            }
            let end = end as u64;
            if r.gpa < KERNEL_MIN_ADDR || (r.gpa < ke && end > ks) {
                return Err(Status::EPERM);
            }
            pages.extend(r.gpa / 4096..end / 4096);
        }
        let n = pages.len();
        pages.sort_unstable();
        pages.dedup();
        if pages.len() != n {
            return Err(Status::EINVAL);
        }
        let ballooned = |p: u64| set.get(p as usize).copied().unwrap_or(false);
        match op {
            Op::Inflate if pages.iter().any(|&p| ballooned(p)) => Err(Status::EBUSY),
            Op::Deflate if !pages.iter().all(|&p| ballooned(p)) => Err(Status::EINVAL),
            _ => Ok(n as u64),
        }
    }

    proptest! {
        /// `validate` against a page-by-page model of the rules.
        #[test]
        fn validate_matches_the_page_model(
            op in prop_oneof![Just(Op::Inflate), Just(Op::Deflate)],
            ranges in prop::collection::vec(
                (prop_oneof![0u64..0x80_0000, any::<u64>()], prop_oneof![0u64..64, any::<u64>()])
                    .prop_map(|(g, p)| r(if g % 3 == 0 { g } else { g & !0xfff }, p)),
                0..6,
            ),
            preset in prop::collection::vec(any::<bool>(), 2048),
        ) {
            let limits = Limits { ram: 8 * MIB, kernel: KERNEL };
            let mut bitmap = PageBitmap::new(2048).unwrap();
            for (p, &on) in preset.iter().enumerate() {
                bitmap.assign(p as u64..p as u64 + 1, on);
            }
            let got = validate(op, &ranges, &limits, &bitmap)
                .map(|v| v.iter().map(|p| p.end - p.start).sum::<u64>());
            prop_assert_eq!(got, naive(op, &ranges, &limits, &preset));
        }
    }
}
