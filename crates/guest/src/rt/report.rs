//! Where the runtime's fatal reports go: to the host with `ReportFault` on pvkit; on a
//! stock hypervisor ([`crate::pvh::stock_host`]) printed on the 16550 UART,
//! then the VM ends through `isa-debug-exit` with [`crate::pvh::FAILURE_EXIT`].

use core::fmt;

/// Reports CPU exception `vector` and stops the VM (see the module documentation).
pub(super) fn exception(
    vector: u32,
    error_code: u64,
    rip: u64,
    cr2: u64,
    message: fmt::Arguments<'_>,
) -> ! {
    if crate::pvh::stock_host() {
        super::console::ensure_uart();
        crate::println!(
            "EXCEPTION: vector {vector} error code {error_code:#x} at rip {rip:#x} cr2 {cr2:#x}: \
             {message}"
        );
        crate::pvh::debug_exit(crate::pvh::FAILURE_EXIT)
    }
    crate::fault::report_exception(vector, error_code, rip, cr2, message)
}

/// Reports a panic and stops the VM (see the module documentation). The panic handler
/// [`crate::entry!`] emits calls it.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if crate::pvh::stock_host() {
        super::console::ensure_uart();
        crate::println!("PANIC: {info}");
        crate::pvh::debug_exit(crate::pvh::FAILURE_EXIT)
    }
    crate::fault::report_panic(info)
}
