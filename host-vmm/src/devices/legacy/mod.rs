//! The emulated legacy PC devices, one file per device: the COM1 UART ([`uart`]), the ATA
//! disk ([`ata`]), the 8254 PIT with port B ([`pit`]), and the VM clock the time-dependent
//! ones read ([`vm_clock`]).

pub mod ata;
pub mod pit;
pub mod uart;
pub mod vm_clock;
