//! Host I/O: the console output sink shared by the UART and the PV console
//! ([`console_out`]), the disk image shared by the ATA disk and the PV block device
//! ([`disk`]), and the event loop that serves host I/O events on the VM's I/O thread
//! ([`event_loop`]): ring doorbells now, TAP fds and timers next.

pub mod console_out;
pub mod disk;
pub mod event_loop;
pub mod poll_pacer;
