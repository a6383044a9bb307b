//! hello-os: a custom OS in a few dozen lines, built on the pvkit ABI alone.
//!
//! It shares nothing with the pvkit guest kernel: its own entry point, its own linker
//! script, its own panic handler. What it needs from pvkit comes from two crates any kernel
//! can link: `pvkit-abi` (the boot contract and the ABI note) and `pvkit-guest` (the PV
//! console and the hypercalls). It prints one line through the PV console and exits 42.
#![no_std]
#![no_main]

use pvkit_abi::boot::{BootInfo, BOOT_MAGIC};
use pvkit_guest::{hypercall, PvConsole};

// Stamps the ABI version into the binary; the VMM refuses a guest without it.
pvkit_abi::abi_note!();

/// The entry point. The VMM enters with `RSP = 0x7_fff8` (`ENTRY_RSP`: aligned as just after
/// a `call`, docs/ABI.md "Boot contract"), so `main` could be the entry itself; this stub
/// only makes the alignment explicit (`and rsp, -16`, then `call`) and keeps `RDI` untouched.
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!("and rsp, -16", "call {main}", "ud2", main = sym main)
}

/// The OS proper.
extern "C" fn main(boot_info: &'static BootInfo) -> ! {
    if boot_info.magic != BOOT_MAGIC {
        hypercall::exit(1);
    }
    let _ = PvConsole::new().write(b"hello from a custom OS over the pvkit PV console\n");
    hypercall::exit(42)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    pvkit_guest::fault::report_panic(info)
}
