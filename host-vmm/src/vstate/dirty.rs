//! Dirty-page tracking for live migration: which 4 KiB pages of guest RAM changed since
//! the last look.
//!
//! Two writers change guest RAM, and both are tracked:
//! - the guest (and KVM on its behalf: kvmclock, steal time): KVM's dirty log
//!   (`KVM_MEM_LOG_DIRTY_PAGES` on each RAM slot, read and cleared with
//!   `KVM_GET_DIRTY_LOG`; exact at page granularity on this platform, docs/PLATFORM.md 5a);
//! - the VMM itself (device models writing rings, completions, DMA data, the balloon
//!   releasing pages): every such write goes through vm-memory, whose region bitmap
//!   ([`super::memory::GuestRam`] is `GuestMemoryMmap<AtomicBitmap>`) marks the page.
//!   A host write that bypasses vm-memory (the balloon's `madvise`, the block device's
//!   plain slice) marks its pages by hand.
//!
//! [`DirtyLog::fetch`] returns the union of both since the previous fetch, as a
//! [`PageBitmap`] over all of RAM; [`merge_words`] is the pure part, tested without KVM.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::memory::GuestRam;

/// The tracking granularity (the host page size KVM's log and vm-memory's bitmap use).
pub const PAGE_SIZE: u64 = 4096;

/// Errors of dirty tracking.
#[derive(Debug, Error)]
pub enum DirtyError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// A RAM region has no host mapping, or is not page aligned.
    #[error("guest memory region {slot} cannot be tracked: {why}")]
    Region {
        /// The memory slot.
        slot: u32,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// One bit per 4 KiB page of guest RAM (page `n` is guest-physical `n * 4096`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl PageBitmap {
    /// A bitmap of `pages` pages, none set.
    pub fn new(pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        Self {
            words: vec![0; words],
            pages,
        }
    }

    /// A bitmap of `pages` pages, all set.
    pub fn full(pages: u64) -> Self {
        let mut b = Self::new(pages);
        b.set_range(0, pages);
        b
    }

    /// How many pages it covers.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether page `page` is set (`false` outside the bitmap).
    pub fn get(&self, page: u64) -> bool {
        page < self.pages
            && self
                .words
                .get((page / 64) as usize)
                .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Sets page `page` (ignored outside the bitmap).
    pub fn set(&mut self, page: u64) {
        if page < self.pages {
            if let Some(w) = self.words.get_mut((page / 64) as usize) {
                *w |= 1 << (page % 64);
            }
        }
    }

    /// Clears page `page` (ignored outside the bitmap).
    pub fn clear(&mut self, page: u64) {
        if let Some(w) = self.words.get_mut((page / 64) as usize) {
            *w &= !(1 << (page % 64));
        }
    }

    /// Sets `count` pages from `first` (clipped to the bitmap).
    pub fn set_range(&mut self, first: u64, count: u64) {
        let end = first.saturating_add(count).min(self.pages);
        for p in first..end {
            self.set(p);
        }
    }

    /// Clears `count` pages from `first` (clipped to the bitmap).
    pub fn clear_range(&mut self, first: u64, count: u64) {
        let end = first.saturating_add(count).min(self.pages);
        for p in first..end {
            self.clear(p);
        }
    }

    /// The words, bit `i` of word `w` being page `64 w + i`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// How many pages are set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Clears every page set in `other` (same size; extra pages of `other` are ignored).
    pub fn subtract(&mut self, other: &PageBitmap) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w &= !o;
        }
    }

    /// The set pages, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let base = i as u64 * 64;
            let mut rest = w;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                Some(base + bit)
            })
        })
    }

    /// ORs `words` (bit `i` = page `first_page + i`, the layout of both KVM's log and
    /// vm-memory's bitmap) into this bitmap; bits beyond the bitmap are dropped.
    pub fn or_words(&mut self, first_page: u64, words: &[u64]) {
        for (i, &w) in words.iter().enumerate() {
            let mut rest = w;
            while rest != 0 {
                let bit = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                self.set(first_page + i as u64 * 64 + bit);
            }
        }
    }
}

/// The pure part of a fetch: the union of KVM's log and the host's bitmap for a slot that
/// starts at page `first_page`, ORed into `into`.
pub fn merge_words(into: &mut PageBitmap, first_page: u64, kvm: &[u64], host: &[u64]) {
    into.or_words(first_page, kvm);
    into.or_words(first_page, host);
}

/// Marks `[gpa, gpa + len)` as written by the host, for a write that bypasses vm-memory
/// (the balloon's `madvise`, which zeroes pages). Parts outside RAM are ignored.
pub fn mark_host_write(mem: &GuestRam, gpa: u64, len: u64) {
    for region in mem.iter() {
        let start = region.start_addr().0;
        let end = start.saturating_add(region.len());
        let (a, b) = (gpa.max(start), gpa.saturating_add(len).min(end));
        if a < b {
            if let (Ok(off), Ok(n)) = (usize::try_from(a - start), usize::try_from(b - a)) {
                host_bitmap(region).set_addr_range(off, n);
            }
        }
    }
}

/// The guest's free-page hints as the sender sees them (the `FreePageHint` device
/// implements it; the migration sender reads it).
pub trait FreePageHints {
    /// Whether page `page` is hinted free now.
    fn is_hinted(&self, page: u64) -> bool;
    /// Drops the hint of every page in `dirty` (written after its hint, or before it in the
    /// same round: sent either way).
    fn clear_dirtied(&self, dirty: &PageBitmap);
}

/// No hints: every page is sent.
#[derive(Debug)]
pub struct NoHints;

impl FreePageHints for NoHints {
    fn is_hinted(&self, _: u64) -> bool {
        false
    }
    fn clear_dirtied(&self, _: &PageBitmap) {}
}

/// One tracked RAM slot.
#[derive(Clone, Copy, Debug)]
struct Slot {
    slot: u32,
    gpa: u64,
    len: u64,
    host: u64,
}

/// The RAM slots as they are registered ([`super::vm::create_vm`]: slot `i` is region
/// `i`).
fn slots(mem: &GuestRam) -> Result<Vec<Slot>, DirtyError> {
    (0u32..)
        .zip(mem.iter())
        .map(|(slot, region)| {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| DirtyError::Region {
                    slot,
                    why: "no host mapping",
                })?;
            let gpa = region.start_addr().0;
            if !gpa.is_multiple_of(PAGE_SIZE) {
                return Err(DirtyError::Region {
                    slot,
                    why: "not page aligned",
                });
            }
            Ok(Slot {
                slot,
                gpa,
                len: region.len(),
                host: host as u64,
            })
        })
        .collect()
}

fn set_logging(vm: &VmFd, s: &Slot, on: bool) -> Result<(), DirtyError> {
    let r = kvm_bindings::kvm_userspace_memory_region {
        slot: s.slot,
        flags: if on {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: s.gpa,
        memory_size: s.len,
        userspace_addr: s.host,
    };
    // SAFETY: the same slot, guest range and host mapping as registered by `create_vm`
    // (read back from the live `GuestRam` that owns the mapping and outlives the VM);
    // only the flags change.
    unsafe { vm.set_user_memory_region(r) }.map_err(|source| DirtyError::Kvm {
        what: "KVM_SET_USER_MEMORY_REGION (dirty logging)",
        source,
    })
}

/// The host bitmap of one region.
fn host_bitmap(region: &vm_memory::GuestRegionMmap<AtomicBitmap>) -> &AtomicBitmap {
    let mmap: &MmapRegion<AtomicBitmap> = region;
    mmap.bitmap()
}

/// Dirty logging switched on for every RAM slot of a VM. Dropping it does not switch it
/// off; [`DirtyLog::stop`] does.
#[derive(Debug)]
pub struct DirtyLog {
    vm: Arc<VmFd>,
    mem: GuestRam,
    slots: Vec<Slot>,
    pages: u64,
}

impl DirtyLog {
    /// Switches on KVM's dirty log for every slot of `mem` and clears the host bitmap: the
    /// first [`DirtyLog::fetch`] reports what changed from now on.
    pub fn start(vm: Arc<VmFd>, mem: &GuestRam) -> Result<Self, DirtyError> {
        let slots = slots(mem)?;
        for region in mem.iter() {
            host_bitmap(region).reset();
        }
        for (i, s) in slots.iter().enumerate() {
            if let Err(e) = set_logging(&vm, s, true) {
                for done in slots.iter().take(i) {
                    let _ = set_logging(&vm, done, false);
                }
                return Err(e);
            }
        }
        let pages = slots
            .iter()
            .map(|s| (s.gpa + s.len).div_ceil(PAGE_SIZE))
            .max()
            .unwrap_or(0);
        Ok(Self {
            vm,
            mem: mem.clone(),
            slots,
            pages,
        })
    }

    /// Pages of RAM covered (RAM starts at guest-physical 0).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The pages written by the guest or the VMM since the previous fetch (or since
    /// [`DirtyLog::start`]); reading clears both logs.
    pub fn fetch(&self) -> Result<PageBitmap, DirtyError> {
        let mut out = PageBitmap::new(self.pages);
        for (s, region) in self.slots.iter().zip(self.mem.iter()) {
            let len = usize::try_from(s.len).map_err(|_| DirtyError::Region {
                slot: s.slot,
                why: "too large",
            })?;
            let kvm = self
                .vm
                .get_dirty_log(s.slot, len)
                .map_err(|source| DirtyError::Kvm {
                    what: "KVM_GET_DIRTY_LOG",
                    source,
                })?;
            let host = host_bitmap(region).get_and_reset();
            merge_words(&mut out, s.gpa / PAGE_SIZE, &kvm, &host);
        }
        Ok(out)
    }

    /// Switches dirty logging off again (a failed migration: the VM runs on untracked).
    pub fn stop(self) -> Result<(), DirtyError> {
        let mut first = Ok(());
        for s in &self.slots {
            if let Err(e) = set_logging(&self.vm, s, false) {
                first = first.and(Err(e));
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_ram;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn bitmap_basics() {
        let mut b = PageBitmap::new(130);
        b.set(0);
        b.set(64);
        b.set(129);
        b.set(130); // outside: ignored
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert_eq!(b.count(), 3);
        b.clear_range(60, 10);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 129]);
        let full = PageBitmap::full(130);
        assert_eq!(full.count(), 130);
        let mut f = full.clone();
        f.subtract(&b);
        assert_eq!(f.count(), 128);
        assert!(!f.get(0) && f.get(1) && !f.get(129));
    }

    #[test]
    fn merge_is_the_union_at_the_slot_offset() {
        let mut b = PageBitmap::new(256);
        merge_words(&mut b, 64, &[0b101, 1 << 63], &[0b110, 0, 1]);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![64, 65, 66, 191, 192]);
        // Bits beyond RAM are dropped, not wrapped.
        let mut small = PageBitmap::new(4);
        merge_words(&mut small, 0, &[u64::MAX], &[]);
        assert_eq!(small.count(), 4);
    }

    /// The host side of tracking: a write through vm-memory marks its pages in the region
    /// bitmap; reading it clears it.
    #[test]
    fn host_writes_through_vm_memory_are_marked() {
        let mem = create_ram(4).unwrap();
        let region = mem.iter().next().unwrap();
        host_bitmap(region).reset();
        mem.write_slice(&[1u8; 10], GuestAddress(5 * 4096 + 4090))
            .unwrap();
        mem.write_obj(7u64, GuestAddress(100 * 4096)).unwrap();
        let mut b = PageBitmap::new(1024);
        merge_words(&mut b, 0, &[], &host_bitmap(region).get_and_reset());
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![5, 6, 100]);
        let mut again = PageBitmap::new(1024);
        merge_words(&mut again, 0, &[], &host_bitmap(region).get_and_reset());
        assert_eq!(again.count(), 0);
    }
}
