//! The emulated legacy PC devices, one file per device: the COM1 UART ([`uart`]), the ATA
//! disk ([`ata`]), the 8254 PIT with port B ([`pit`]), the NE2000 NIC ([`ne2000`]), and the
//! VM clock the time-dependent ones read ([`vm_clock`]); device interrupts through the
//! in-kernel irqchip ([`irq`]).

pub mod ata;
pub mod irq;
pub mod ne2000;
pub mod pit;
pub mod uart;
pub mod vm_clock;
