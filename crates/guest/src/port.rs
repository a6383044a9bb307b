//! Port I/O, behind a trait so drivers can be tested with a recorder.
//!
//! Drivers in this crate are generic over [`PortIo`]. In a kernel they use [`Pio`], the
//! real `in`/`out` instructions; host unit tests substitute a recording fake and assert the
//! exact access sequence (which is the exact VM-exit sequence on a VMM).

/// Byte-wide port I/O.
pub trait PortIo {
    /// Reads one byte from `port`.
    fn read_u8(&mut self, port: u16) -> u8;
    /// Writes one byte to `port`.
    fn write_u8(&mut self, port: u16, value: u8);
}

/// The real port-I/O instructions (`in al, dx` / `out dx, al`).
///
/// A capability: whoever holds one may touch any I/O port, so creating one is `unsafe`.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct Pio(());

#[cfg(target_arch = "x86_64")]
impl Pio {
    /// Creates the capability.
    ///
    /// # Safety
    ///
    /// The caller must run at a privilege level allowed to access the ports it will use
    /// (ring 0, or IOPL/I/O-bitmap permission), and every port accessed through this value
    /// must belong to a device the caller owns, so that the accesses cannot break memory
    /// safety (e.g. by starting DMA into memory Rust code is using).
    pub const unsafe fn new() -> Self {
        Pio(())
    }
}

#[cfg(target_arch = "x86_64")]
impl PortIo for Pio {
    #[inline(always)]
    fn read_u8(&mut self, port: u16) -> u8 {
        let value: u8;
        // SAFETY: permitted by the contract of `Pio::new`. No `nomem`: the access is a
        // compiler barrier, so memory a device reads or writes is ordered with it.
        unsafe {
            core::arch::asm!("in al, dx", out("al") value, in("dx") port,
                options(nostack, preserves_flags));
        }
        value
    }

    #[inline(always)]
    fn write_u8(&mut self, port: u16, value: u8) {
        // SAFETY: permitted by the contract of `Pio::new`; a compiler barrier as above.
        unsafe {
            core::arch::asm!("out dx, al", in("dx") port, in("al") value,
                options(nostack, preserves_flags));
        }
    }
}

/// A recording [`PortIo`] for host tests: logs every access, answers reads from a table.
#[cfg(test)]
pub(crate) mod fake {
    use super::PortIo;

    /// One port access.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Access {
        /// A read of the port, and the value returned.
        Read(u16, u8),
        /// A write of the value to the port.
        Write(u16, u8),
    }

    /// Logs accesses; reads return `reads[port]` (or 0xff, like an absent device).
    #[derive(Default)]
    pub struct Recorder {
        pub log: Vec<Access>,
        pub reads: std::collections::HashMap<u16, Vec<u8>>,
    }

    impl PortIo for Recorder {
        fn read_u8(&mut self, port: u16) -> u8 {
            let v = match self.reads.get_mut(&port) {
                Some(q) if q.len() > 1 => q.remove(0),
                Some(q) if q.len() == 1 => q[0],
                _ => 0xff,
            };
            self.log.push(Access::Read(port, v));
            v
        }

        fn write_u8(&mut self, port: u16, value: u8) {
            self.log.push(Access::Write(port, value));
        }
    }
}
