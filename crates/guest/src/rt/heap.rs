//! The optional heap (feature `heap`): `linked_list_allocator` over the largest usable RAM
//! region of the `BootInfo` memory map, clipped to the 4 GiB boot identity map and capped
//! at [`MAX_HEAP`]. The map marks the kernel image and the boot area reserved, so the heap
//! never overlaps them. Initializing writes one free-list node: nothing is zeroed.

use pvkit_abi::boot::{BootInfo, MemoryKind, MemoryRegion, IDENTITY_MAP_SIZE, KERNEL_MIN_ADDR};

/// The most the heap takes.
pub const MAX_HEAP: u64 = 16 << 20;

/// The global allocator (empty until the runtime starts).
#[cfg(target_os = "none")]
#[global_allocator]
static ALLOCATOR: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// The heap region chosen from `boot`, as `(start, len)`: the largest usable region above
/// [`KERNEL_MIN_ADDR`] and below the end of RAM and of the identity map, 16-byte aligned,
/// capped at [`MAX_HEAP`].
pub fn choose(boot: &BootInfo, map: &[MemoryRegion]) -> Option<(u64, u64)> {
    let top = boot.mem_size.min(IDENTITY_MAP_SIZE);
    map.iter()
        .filter(|r| r.kind == MemoryKind::Usable as u32)
        .filter_map(|r| {
            let start = r.start.max(KERNEL_MIN_ADDR).checked_add(15)? & !15;
            let end = r.start.saturating_add(r.len).min(top);
            (end > start).then(|| (start, end - start))
        })
        .max_by_key(|&(_, len)| len)
        .map(|(start, len)| (start, len.min(MAX_HEAP)))
}

/// Hands the chosen region to the allocator; panics (reported) if there is none.
pub(super) fn init(boot: &BootInfo) {
    #[cfg(target_os = "none")]
    let map = boot.memory_map();
    #[cfg(not(target_os = "none"))]
    let map: &[MemoryRegion] = &[];
    let Some((start, len)) = choose(boot, map) else {
        panic!("no usable RAM for the heap in the BootInfo memory map");
    };
    #[cfg(target_os = "none")]
    // SAFETY: the region is RAM the memory map calls usable, inside the identity map, used
    // by nothing else; `init` runs once, before the first allocation.
    unsafe {
        ALLOCATOR.lock().init(start as *mut u8, len as usize)
    };
    #[cfg(not(target_os = "none"))]
    let _ = (start, len);
}
