//! The guest runtime (feature `runtime`): everything between the VMM's entry and your
//! `main`, so that "link and run" is true for a kernel of your own.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use pvkit_guest::{println, rt::BootInfo};
//!
//! pvkit_guest::entry!(main);
//!
//! fn main(boot: &'static BootInfo) -> i32 {
//!     println!("hello, {} bytes of RAM", boot.mem_size);
//!     0 // the exit status of `pvkit run`
//! }
//! ```
//!
//! [`entry!`](crate::entry) emits the ABI note and `_start`, which switches to the
//! runtime's boot stack ([`stack`]) and runs, before `main`:
//!
//! 1. [`gdt::init`]: a GDT with user segments and a TSS whose IST stacks serve the double
//!    fault, NMI and machine check;
//! 2. [`trap::init`]: an IDT in which every exception (0–31) is reported to the host with
//!    its vector, error code, `RIP`, `RSP` and `CR2` ([`crate::fault`]): `pvkit run` exits
//!    125 and prints the report;
//! 3. [`stack::protect`]: the guard page below the boot stack is unmapped, so an overflow
//!    is reported as "stack overflow" instead of silently overwriting memory;
//! 4. the `BootInfo` is validated (address, magic, ABI major version);
//! 5. the console of [`print!`](crate::print) / [`println!`](crate::println): the PV
//!    console when the host offers it, else the 16550 UART;
//! 6. with feature `heap`, the global allocator ([`heap`]).
//!
//! `main` returns an `i32` (the low 8 bits become the exit status) or never returns. A
//! panic is reported to the host by the panic handler `entry!` emits. (The handler lives
//! in your crate, not in this library, so a kernel with its own handler can depend on
//! `pvkit-guest` with the feature on in the same workspace.)
//!
//! Build requirements (as for any pvkit guest): target `x86_64-unknown-none`,
//! `-C relocation-model=static`, a linker script placing the image at or above 1 MiB with
//! the `.note.pvkit` section kept (see the crate README).
//!
//! **On a stock hypervisor.** `entry!(main, pvh)` adds the PVH entry ([`crate::pvh`]): the
//! same ELF boots with `qemu-system-x86_64 -kernel`, through the same set-up with a
//! `BootInfo` built from the loader's `hvm_start_info`. Without the pvkit CPUID signature
//! ([`crate::pvh::stock_host`]) `print!` uses the 16550 UART, and `main`'s return value, a
//! panic and an exception ([`report`], printed on the UART) end the VM through QEMU's
//! `isa-debug-exit`.

pub mod console;
pub mod gdt;
#[cfg(feature = "heap")]
pub mod heap;
pub mod report;
pub mod stack;
pub mod trap;

use core::sync::atomic::{AtomicPtr, Ordering};
pub use pvkit_abi::boot::BootInfo;
use pvkit_abi::boot::{BOOT_MAGIC, IDENTITY_MAP_SIZE};
use pvkit_abi::cpuid::Features;
use pvkit_abi::{AbiVersion, ABI_VERSION};

/// The validated `BootInfo` (null before [`__private::init`]).
static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());

/// The `BootInfo` the VMM passed, once the runtime validated it (`None` before `main`).
pub fn boot_info() -> Option<&'static BootInfo> {
    let p = BOOT_INFO.load(Ordering::Acquire);
    // SAFETY: `BOOT_INFO` is null or a pointer `init` validated, which stays valid: the
    // boot contract places `BootInfo` in the boot area, which nothing writes afterwards.
    unsafe { p.as_ref() }
}

/// Stops the VM; `pvkit run` exits with `code & 0xff`. On a stock hypervisor
/// ([`crate::pvh::stock_host`]) through `isa-debug-exit`: QEMU exits with
/// `((code & 0xff) << 1) | 1`.
pub fn exit(code: i32) -> ! {
    if crate::pvh::stock_host() {
        crate::pvh::debug_exit(code as u8)
    }
    crate::hypercall::exit(code as u8)
}

/// Checks the `BootInfo` pointer the VMM passed in `RDI`: non-null, aligned, inside the
/// boot identity map, the right magic and the same ABI major version. Panics (reported to
/// the host) if any is bad. [`entry!`](crate::entry) calls it; a kernel with its own
/// `_start` can too.
pub fn validate_boot_info(ptr: *const BootInfo) -> &'static BootInfo {
    let addr = ptr as u64;
    let size = core::mem::size_of::<BootInfo>() as u64;
    if addr == 0 || !addr.is_multiple_of(8) || addr > IDENTITY_MAP_SIZE - size {
        panic!("bad BootInfo address {addr:#x}");
    }
    // SAFETY: the address is non-null, aligned and inside the boot identity map, which the
    // VMM backs with RAM; the boot contract says a `BootInfo` is there and nobody writes it.
    let boot = unsafe { &*ptr };
    if boot.magic != BOOT_MAGIC {
        panic!("bad BootInfo magic {:#x}", boot.magic);
    }
    let host = AbiVersion::from_u64(boot.abi_version);
    if host.major != ABI_VERSION.major {
        panic!("host speaks pvkit ABI {host}, this guest {ABI_VERSION}");
    }
    boot
}

/// Used by [`crate::entry!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use super::stack::BOOT_STACK;
    pub use pvkit_abi::abi_note;

    /// Offset of the initial `RSP` from the start of [`BOOT_STACK`].
    pub const STACK_TOP_OFFSET: usize = super::stack::GUARD_SIZE + super::stack::STACK_SIZE;

    /// The tables and the guard page: first, so that later faults are reported.
    fn early() {
        super::gdt::init();
        super::trap::init();
        if let Err(e) = super::stack::protect() {
            panic!("cannot install the boot stack's guard page: {e:?}");
        }
    }

    /// Everything before `main` (see the module documentation).
    pub fn init(boot: *const super::BootInfo) -> &'static super::BootInfo {
        early();
        finish(super::validate_boot_info(boot))
    }

    /// Everything before `main` when entered through the PVH entry: the `BootInfo` is
    /// built from the `hvm_start_info` at `start_info`, with the kernel image
    /// `[image_start, image_end)` kept out of its usable RAM.
    pub fn init_pvh(start_info: u64, image_start: u64, image_end: u64) -> &'static super::BootInfo {
        early();
        finish(crate::pvh::boot_info(start_info, (image_start, image_end)))
    }

    /// Publishes the `BootInfo`, picks the console, sets up the heap.
    fn finish(boot: &'static super::BootInfo) -> &'static super::BootInfo {
        super::BOOT_INFO.store(
            boot as *const super::BootInfo as *mut super::BootInfo,
            core::sync::atomic::Ordering::Release,
        );
        let features = super::Features::from_bits_truncate(boot.features);
        super::console::init(features.contains(super::Features::CONSOLE));
        #[cfg(feature = "heap")]
        super::heap::init(boot);
        boot
    }
}

/// Declares `main` as the guest's entry point (feature `runtime`).
///
/// `main` is `fn(&'static BootInfo) -> i32` (the exit status) or `-> !`. The macro emits
/// the pvkit ABI note (do not also use `pvkit_abi::abi_note!`), the panic handler (which
/// reports the panic to the host) and `_start`, which switches to the runtime's guarded
/// boot stack and runs the set-up described in [`crate::rt`].
///
/// `entry!(main, pvh)` also emits the PVH entry ([`crate::pvh`]), so the same ELF boots
/// with `qemu-system-x86_64 -kernel`: there, without the pvkit CPUID signature, `print!`
/// uses the 16550 UART, and `main`'s return value, a panic or an exception (printed on
/// the UART) end the VM through `isa-debug-exit`. The linker script must then keep
/// `.note.Xen` in a `PT_NOTE` and define `__pvkit_image_start` and `__pvkit_image_end`
/// around the image (as the `pvkit new` template does).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::rt::__private::abi_note!();

        ::core::arch::global_asm!(
            ".pushsection .text._start, \"ax\", @progbits",
            ".global _start",
            ".type _start, @function",
            "_start:",
            "    lea rsp, [rip + {stack} + {top}]",
            "    xor ebp, ebp",
            "    call {main}",
            "    ud2",
            ".size _start, . - _start",
            ".popsection",
            stack = sym $crate::rt::__private::BOOT_STACK,
            top = const $crate::rt::__private::STACK_TOP_OFFSET,
            main = sym __pvkit_rt_main,
        );

        /// Called by `_start` with the VMM's `RDI`.
        #[allow(unreachable_code)]
        extern "C" fn __pvkit_rt_main(boot: *const $crate::rt::BootInfo) -> ! {
            let boot = $crate::rt::__private::init(boot);
            let code: i32 = $main(boot);
            $crate::rt::exit(code)
        }

        /// Reports the panic to the host (`pvkit run` exits 125).
        #[panic_handler]
        fn __pvkit_rt_panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::report::panic(info)
        }

    };
    ($main:path, pvh) => {
        $crate::entry!($main);
        $crate::__rt_pvh_entry!($main);
    };
}

/// The PVH entry of [`crate::entry!`]`(main, pvh)`: the note and trampoline of
/// [`crate::pvh_entry!`] on the runtime's boot stack, then the same set-up as `_start`.
#[doc(hidden)]
#[macro_export]
macro_rules! __rt_pvh_entry {
    ($main:path) => {
        $crate::pvh_entry!(
            stack = $crate::rt::__private::BOOT_STACK,
            stack_size = $crate::rt::__private::STACK_TOP_OFFSET,
            main = __pvkit_rt_pvh_main,
        );

        extern "C" {
            /// Start of the kernel image (defined by the linker script).
            static __pvkit_image_start: u8;
            /// End of the kernel image, `.bss` included (defined by the linker script).
            static __pvkit_image_end: u8;
        }

        /// Called by `pvh_start` with the `hvm_start_info` address.
        #[allow(unreachable_code)]
        extern "C" fn __pvkit_rt_pvh_main(start_info: u64) -> ! {
            let boot = $crate::rt::__private::init_pvh(
                start_info,
                (&raw const __pvkit_image_start) as u64,
                (&raw const __pvkit_image_end) as u64,
            );
            let code: i32 = $main(boot);
            $crate::rt::exit(code)
        }
    };
}
