//! The second way in: the PVH entry of `pvkit-guest` ([`pvkit_guest::pvh`]), so the same
//! ELF boots with `qemu-system-x86_64 -kernel`. The library's trampoline switches to the
//! kernel stack and calls [`pvh_main`], which loads the kernel's GDT/TSS and IDT, builds a
//! `BootInfo` from the `hvm_start_info` (no feature bits without the pvkit CPUID signature)
//! and runs the kernel as from the pvkit entry. On a stock hypervisor the kernel uses its
//! emulated drivers only and exits through `isa-debug-exit` ([`crate::exit`]).

pvkit_guest::pvh_entry!(
    stack = crate::KERNEL_STACK,
    stack_size = crate::STACK_SIZE,
    main = pvh_main,
);

extern "C" {
    /// Start of the kernel image (`linker.ld`).
    static __kernel_start: u8;
    /// End of the kernel image, `.bss` included (`linker.ld`).
    static __kernel_end: u8;
}

/// The 64-bit Rust entry of the PVH path, called by `pvh_start` with the start info's
/// physical address.
extern "C" fn pvh_main(start_info: u64) -> ! {
    crate::gdt::init();
    crate::interrupts::init();
    let image = (
        (&raw const __kernel_start) as u64,
        (&raw const __kernel_end) as u64,
    );
    crate::kernel_run(pvkit_guest::pvh::boot_info(start_info, image))
}
