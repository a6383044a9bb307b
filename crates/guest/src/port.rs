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

/// 16-bit string port I/O (`rep insw` / `rep outsw`), for PIO data ports such as ATA's.
///
/// One call is one string instruction. On KVM a `rep insw` whose buffer stays inside one
/// page is one exit to the VMM; see the ATA driver ([`crate::ata`]) for what this costs.
pub trait StringIo: PortIo {
    /// Reads `buf.len() / 2` 16-bit words from `port` into `buf` (one `rep insw`).
    fn read_words(&mut self, port: u16, buf: &mut [u8]);
    /// Writes `buf.len() / 2` 16-bit words of `buf` to `port` (one `rep outsw`).
    fn write_words(&mut self, port: u16, buf: &[u8]);
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

#[cfg(target_arch = "x86_64")]
impl StringIo for Pio {
    #[inline(always)]
    fn read_words(&mut self, port: u16, buf: &mut [u8]) {
        // SAFETY: permitted by the contract of `Pio::new`. `rep insw` stores exactly
        // `buf.len() / 2` words at ES:RDI upwards (DF is clear, as the ABI guarantees),
        // all inside `buf`, which we borrow mutably.
        unsafe {
            core::arch::asm!("rep insw", in("dx") port,
                inout("rdi") buf.as_mut_ptr() => _, inout("rcx") buf.len() / 2 => _,
                options(nostack, preserves_flags));
        }
    }

    #[inline(always)]
    fn write_words(&mut self, port: u16, buf: &[u8]) {
        // SAFETY: permitted by the contract of `Pio::new`. `rep outsw` loads exactly
        // `buf.len() / 2` words from DS:RSI upwards (DF is clear), all inside `buf`.
        unsafe {
            core::arch::asm!("rep outsw", in("dx") port,
                inout("rsi") buf.as_ptr() => _, inout("rcx") buf.len() / 2 => _,
                options(nostack, preserves_flags, readonly));
        }
    }
}

/// A recording [`PortIo`] for host tests: logs every access, answers reads from a table.
#[cfg(test)]
pub(crate) mod fake {
    use super::{PortIo, StringIo};

    /// One port access.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Access {
        /// A read of the port, and the value returned.
        Read(u16, u8),
        /// A write of the value to the port.
        Write(u16, u8),
        /// A `rep insw` of this many words from the port.
        ReadWords(u16, usize),
        /// A `rep outsw` of this many words to the port.
        WriteWords(u16, usize),
    }

    /// Logs accesses; reads return `reads[port]` (or 0xff, like an absent device): a queue
    /// whose last value repeats. String reads take bytes from `words` (0xff when empty);
    /// string writes append to `written`.
    #[derive(Debug, Default)]
    pub struct Recorder {
        pub log: Vec<Access>,
        pub reads: std::collections::HashMap<u16, Vec<u8>>,
        pub words: std::collections::VecDeque<u8>,
        pub written: Vec<u8>,
    }

    impl StringIo for Recorder {
        fn read_words(&mut self, port: u16, buf: &mut [u8]) {
            let n = buf.len() / 2;
            for b in &mut buf[..n * 2] {
                *b = self.words.pop_front().unwrap_or(0xff);
            }
            self.log.push(Access::ReadWords(port, n));
        }

        fn write_words(&mut self, port: u16, buf: &[u8]) {
            let n = buf.len() / 2;
            self.written.extend_from_slice(&buf[..n * 2]);
            self.log.push(Access::WriteWords(port, n));
        }
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
