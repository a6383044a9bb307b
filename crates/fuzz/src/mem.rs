//! Guest RAM for the PV harnesses: two fixed layouts, a flat image of RAM for the models,
//! and guest-physical address / length selectors that hit the interesting places.
//!
//! The `GuestMemoryMmap`s are created once per process (mmap per execution would dominate
//! the run time) and refilled with a seeded pattern at the start of every execution, so
//! every execution starts from the same state and crashes reproduce.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::{encode_enum, encode_struct};

/// Bytes of guest-physical address space covered by both layouts (RAM ends here).
pub const RAM_END: u64 = 1 << 20;
const Q: u64 = RAM_END / 4;

/// The guest memory map.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One region `[0, 1 MiB)`.
    Flat,
    /// `[0, 256K)` and `[256K, 512K)` (two adjacent regions: a range may span them), a hole
    /// `[512K, 768K)`, and `[768K, 1M)`.
    Holes,
}
encode_enum!(Layout, 2; Layout::Flat => 0 [], Layout::Holes => 1 []);

impl Layout {
    /// The vm-memory regions `(start, len)`.
    pub fn regions(self) -> &'static [(u64, usize)] {
        match self {
            Layout::Flat => &[(0, RAM_END as usize)],
            Layout::Holes => &[(0, Q as usize), (Q, Q as usize), (3 * Q, Q as usize)],
        }
    }

    /// The maximal contiguous RAM spans `[start, end)`: the model of "inside guest RAM",
    /// written independently of vm-memory.
    pub fn spans(self) -> &'static [(u64, u64)] {
        match self {
            Layout::Flat => &[(0, RAM_END)],
            Layout::Holes => &[(0, 2 * Q), (3 * Q, RAM_END)],
        }
    }

    /// Whether every byte of `[addr, addr + len)` is RAM; a range whose end overflows `u64`
    /// is not. An empty range must start in RAM or one past the end of a span (the ABI's
    /// rule, docs/ABI.md "Guest ranges").
    pub fn contains(self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return self.spans().iter().any(|&(s, e)| addr >= s && addr <= e);
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.spans().iter().any(|&(s, e)| addr >= s && end <= e)
    }

    /// The memory object for this layout, one per thread (libFuzzer runs the harness on
    /// one thread; `cargo test` runs tests on several, which must not share RAM).
    pub fn memory(self) -> &'static GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap> {
        thread_local! {
            static FLAT: &'static GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap> = Layout::Flat.create();
            static HOLES: &'static GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap> = Layout::Holes.create();
        }
        match self {
            Layout::Flat => FLAT.with(|m| *m),
            Layout::Holes => HOLES.with(|m| *m),
        }
    }

    fn create(self) -> &'static GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap> {
        let ranges: Vec<(GuestAddress, usize)> = self
            .regions()
            .iter()
            .map(|&(s, l)| (GuestAddress(s), l))
            .collect();
        // Leaked on purpose: lives as long as the thread, and threads are few.
        Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"),
        ))
    }
}

/// A deterministic byte pattern, `RAM_END + 256` bytes long, so that a seeded fill is one
/// `memcpy` of a window of it.
pub fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..RAM_END as usize + 256)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
            .collect()
    })
}

/// One RAM region as host memory.
struct HostRegion {
    start: u64,
    ptr: *mut u8,
    len: usize,
}

impl HostRegion {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is the mmap of a region of a `GuestMemoryMmap` that is
        // leaked (lives for the rest of the thread) and is only touched by this thread: the
        // code under test runs synchronously on it and nothing else has access.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only live view from the harness.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Guest RAM plus the harness's flat model of it (`image[gpa]` for every RAM byte; bytes in
/// holes stay 0 and are never compared).
///
/// The harness reads and writes RAM through host pointers, not through vm-memory, so that
/// comparing 1 MiB after every operation costs a `memcmp` and so that the checks do not
/// depend on the vm-memory code paths the code under test uses.
pub struct Ram {
    /// The layout.
    pub layout: Layout,
    /// The vm-memory object handed to the code under test.
    pub mem: &'static GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>,
    /// What RAM is expected to hold.
    pub image: Vec<u8>,
    host: Vec<HostRegion>,
}

impl Ram {
    /// Refills the layout's RAM with the pattern shifted by `seed` and returns it with its
    /// model.
    pub fn new(layout: Layout, seed: u8) -> Self {
        let mem = layout.memory();
        let p = &pattern()[usize::from(seed)..];
        let mut image = POOL
            .with(|pool| pool.borrow_mut().take())
            .unwrap_or_else(|| vec![0; RAM_END as usize]);
        image.fill(0);
        let mut host: Vec<HostRegion> = layout
            .regions()
            .iter()
            .map(|&(start, len)| HostRegion {
                start,
                ptr: mem.get_host_address(GuestAddress(start)).expect("region"),
                len,
            })
            .collect();
        for r in &mut host {
            let s = r.start as usize;
            let src = &p[s..s + r.len];
            r.bytes_mut().copy_from_slice(src);
            image[s..s + r.len].copy_from_slice(src);
        }
        Self {
            layout,
            mem,
            image,
            host,
        }
    }

    /// The guest writes `bytes` at `addr` (both RAM and model). Bytes outside RAM are
    /// dropped, as a guest store there would not land in RAM.
    pub fn guest_write(&mut self, addr: u64, bytes: &[u8]) {
        for r in &mut self.host {
            let (s, e) = (r.start, r.start + r.len as u64);
            let lo = addr.max(s);
            let hi = addr.saturating_add(bytes.len() as u64).min(e);
            if lo < hi {
                let src = &bytes[(lo - addr) as usize..(hi - addr) as usize];
                r.bytes_mut()[(lo - s) as usize..(hi - s) as usize].copy_from_slice(src);
                self.image[lo as usize..hi as usize].copy_from_slice(src);
            }
        }
    }

    /// Asserts that real RAM equals the model, except inside the `allowed` ranges
    /// `[start, end)`, then adopts the real contents there into the model.
    pub fn check(&mut self, allowed: &[(u64, u64)], what: &str) {
        const CHUNK: usize = 256;
        for r in &self.host {
            let s = r.start as usize;
            let real = r.bytes();
            let model = &mut self.image[s..s + r.len];
            if real == &model[..] {
                continue;
            }
            for (c, (now, was)) in real.chunks(CHUNK).zip(model.chunks_mut(CHUNK)).enumerate() {
                if now == &was[..] {
                    continue;
                }
                for (j, (a, b)) in now.iter().zip(was.iter()).enumerate() {
                    let at = (s + c * CHUNK + j) as u64;
                    if a != b && !allowed.iter().any(|&(lo, hi)| at >= lo && at < hi) {
                        panic!(
                            "{what}: guest RAM at {at:#x} changed ({b:#04x} -> {a:#04x}) \
                             outside the ranges it may change: {allowed:x?}"
                        );
                    }
                }
                was.copy_from_slice(now);
            }
        }
    }

    /// Reads `len` bytes of the model at `addr` (must be RAM).
    pub fn model(&self, addr: u64, len: usize) -> &[u8] {
        &self.image[addr as usize..addr as usize + len]
    }
}

thread_local! {
    /// The 1 MiB model buffer of the last `Ram`, reused: allocating (and page-faulting)
    /// it for every execution would cost more than the harness itself.
    static POOL: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

impl Drop for Ram {
    fn drop(&mut self) {
        let image = std::mem::take(&mut self.image);
        POOL.with(|pool| *pool.borrow_mut() = Some(image));
    }
}

/// A guest-physical address chosen near the places where bugs live.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gpa {
    /// `page * 4096 + offset` with `page < 256`: anywhere in the first MiB, often aligned.
    Page(u8, u16),
    /// `anchor + delta`: around region boundaries, the hole, the end of RAM and the top of
    /// the address space.
    Near(Anchor, i16),
    /// Anything.
    Raw(u64),
}
encode_enum!(Gpa, 3;
    Gpa::Page(p, o) => 0 [p, o],
    Gpa::Near(a, d) => 1 [a, d],
    Gpa::Raw(x) => 2 [x],
);

/// Reference points for [`Gpa::Near`].
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// 0.
    Zero,
    /// 256 KiB: the boundary between two adjacent regions of [`Layout::Holes`].
    Adjacent,
    /// 512 KiB: the start of the hole.
    HoleStart,
    /// 768 KiB: the end of the hole.
    HoleEnd,
    /// 1 MiB: the end of RAM.
    End,
    /// `u64::MAX` (deltas wrap).
    Top,
}
encode_enum!(Anchor, 6;
    Anchor::Zero => 0 [],
    Anchor::Adjacent => 1 [],
    Anchor::HoleStart => 2 [],
    Anchor::HoleEnd => 3 [],
    Anchor::End => 4 [],
    Anchor::Top => 5 [],
);

impl Gpa {
    /// The address.
    pub fn get(self) -> u64 {
        match self {
            Gpa::Page(p, o) => u64::from(p) * 4096 + u64::from(o),
            Gpa::Near(a, d) => {
                let base = match a {
                    Anchor::Zero => 0,
                    Anchor::Adjacent => Q,
                    Anchor::HoleStart => 2 * Q,
                    Anchor::HoleEnd => 3 * Q,
                    Anchor::End => RAM_END,
                    Anchor::Top => u64::MAX,
                };
                base.wrapping_add(d as i64 as u64)
            }
            Gpa::Raw(x) => x,
        }
    }
}

/// A byte length.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Len {
    /// `n * 512`.
    Sectors(u8),
    /// `n * 4096`.
    Pages(u8),
    /// Up to 64 KiB.
    Bytes(u16),
    /// Anything.
    Raw(u64),
}
encode_enum!(Len, 4;
    Len::Sectors(n) => 0 [n],
    Len::Pages(n) => 1 [n],
    Len::Bytes(n) => 2 [n],
    Len::Raw(n) => 3 [n],
);

impl Len {
    /// The length.
    pub fn get(self) -> u64 {
        match self {
            Len::Sectors(n) => u64::from(n) * 512,
            Len::Pages(n) => u64::from(n) * 4096,
            Len::Bytes(n) => u64::from(n),
            Len::Raw(n) => n,
        }
    }
}

/// Setup shared by the PV harnesses.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamSetup {
    /// The memory map.
    pub layout: Layout,
    /// Pattern shift for the initial RAM contents.
    pub seed: u8,
}
encode_struct!(RamSetup { layout, seed });

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_pv::GuestRange;
    use vm_memory::Bytes;

    #[test]
    fn model_of_ram_agrees_with_vm_memory() {
        for layout in [Layout::Flat, Layout::Holes] {
            let m = layout.memory();
            for addr in [
                0,
                Q - 1,
                Q,
                2 * Q - 1,
                2 * Q,
                3 * Q - 1,
                2 * Q + 1,
                3 * Q,
                RAM_END - 1,
                RAM_END,
                RAM_END + 1,
                1 << 40,
            ] {
                for len in [0, 1, 2, 4096, Q, 2 * Q, u64::MAX] {
                    assert_eq!(
                        layout.contains(addr, len),
                        GuestRange::new(m, addr, len).is_ok(),
                        "{layout:?} {addr:#x}+{len:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn check_accepts_allowed_and_rejects_others() {
        let mut ram = Ram::new(Layout::Holes, 3);
        ram.mem
            .write_slice(&[0xee; 4], GuestAddress(0x100))
            .unwrap();
        ram.check(&[(0x100, 0x104)], "allowed");
        assert_eq!(ram.model(0x100, 4), &[0xee; 4]);
        ram.mem.write_slice(&[0x11], GuestAddress(3 * Q)).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ram.check(&[(0x100, 0x104)], "forbidden")
        }));
        assert!(r.is_err());
    }
}
