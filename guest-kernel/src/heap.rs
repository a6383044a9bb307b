//! The kernel heap: `linked_list_allocator` over the largest usable RAM region.
//!
//! The region comes from the `BootInfo` memory map, clipped to what the kernel may touch:
//! above the kernel image, below the end of RAM and of the 4 GiB boot identity map. At most
//! [`MAX_HEAP`] bytes are used. Initializing costs one free-list node written at the start of
//! the region: nothing is zeroed, whatever the size.

use linked_list_allocator::LockedHeap;
use pvkit_abi::boot::{BootInfo, MemoryKind, IDENTITY_MAP_SIZE};

/// The most the heap takes (enough for the largest console and block buffers the modes
/// use).
pub const MAX_HEAP: u64 = 16 << 20;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

extern "C" {
    /// The first page boundary after the kernel image, `.bss` included (linker script).
    static __kernel_end: u8;
}

/// Picks the heap region and hands it to the allocator. Panics if there is no usable RAM.
pub fn init(boot: &BootInfo) {
    let kernel_end = (&raw const __kernel_end) as u64;
    let (start, len) = choose(boot, kernel_end)
        .unwrap_or_else(|| panic!("no usable RAM for the heap in the BootInfo memory map"));
    // SAFETY: `choose` returns RAM the memory map calls usable, above the kernel image and
    // inside the identity map, so it is mapped, and no other code uses it. `init` runs
    // once, before the first allocation.
    unsafe { ALLOCATOR.lock().init(start as *mut u8, len as usize) };
}

/// The largest usable region after clipping, as `(start, len)`, capped at [`MAX_HEAP`].
fn choose(boot: &BootInfo, kernel_end: u64) -> Option<(u64, u64)> {
    let top = boot.mem_size.min(IDENTITY_MAP_SIZE);
    boot.memory_map()
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable as u32)
        .filter_map(|r| {
            // 16-byte aligned, above the kernel, below the top; overflow-safe.
            let start = r.start.max(kernel_end).checked_add(15)? & !15;
            let end = r.start.saturating_add(r.len).min(top);
            (end > start).then(|| (start, end - start))
        })
        .max_by_key(|&(_, len)| len)
        .map(|(start, len)| (start, len.min(MAX_HEAP)))
}
