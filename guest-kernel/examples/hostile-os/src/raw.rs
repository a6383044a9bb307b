//! Raw machine access: hypercalls with any register contents, port I/O of every width.
//!
//! `pvkit_abi::guest::hypercall4` decodes `RAX` and only takes a 32-bit number; a hostile
//! guest wants the raw `RAX` back and a full 64-bit `RAX` in.

use pvkit_abi::ports::HYPERCALL;

/// `RAX` (as a signed status) and `RDX` after a hypercall.
#[derive(Clone, Copy)]
pub struct Ret {
    /// `RAX`.
    pub rax: i64,
    /// `RDX`.
    pub rdx: u64,
}

/// One hypercall with `RAX = rax` (all 64 bits) and the four argument registers.
///
/// # Safety
///
/// The host may read or write guest memory the arguments name, as the call's contract
/// says; for a hostile guest that memory is either outside RAM (nothing happens) or a
/// buffer this program owns and does not use through Rust references during the call.
#[inline(never)]
pub unsafe fn hc(rax: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> Ret {
    let out_rax: u64;
    let out_rdx: u64;
    // SAFETY: a port write to the hypercall port; per the ABI only RAX and RDX change, and
    // memory effects are covered by this function's contract.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            inout("rax") rax => out_rax,
            inout("rdx") u64::from(HYPERCALL) => out_rdx,
            in("rdi") a0,
            in("rsi") a1,
            in("r8") a2,
            in("r9") a3,
            options(nostack, preserves_flags),
        );
    }
    Ret {
        rax: out_rax as i64,
        rdx: out_rdx,
    }
}

/// [`hc`] with a call number and up to four arguments, `RAX`'s upper half zero.
///
/// # Safety
///
/// As [`hc`].
pub unsafe fn call(nr: u32, args: [u64; 4]) -> Ret {
    // SAFETY: forwarded.
    unsafe { hc(u64::from(nr), args[0], args[1], args[2], args[3]) }
}

/// `in al, dx`.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: ring 0 port I/O; no memory is touched. The devices are the VMM's emulated
    // ones, which do no DMA.
    unsafe { core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nostack)) };
    v
}

/// `in ax, dx`.
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as `inb`.
    unsafe { core::arch::asm!("in ax, dx", out("ax") v, in("dx") port, options(nostack)) };
    v
}

/// `in eax, dx`.
pub fn ind(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as `inb`.
    unsafe { core::arch::asm!("in eax, dx", out("eax") v, in("dx") port, options(nostack)) };
    v
}

/// `out dx, al`.
pub fn outb(port: u16, v: u8) {
    // SAFETY: as `inb`.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nostack)) };
}

/// `out dx, ax`.
pub fn outw(port: u16, v: u16) {
    // SAFETY: as `inb`.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") v, options(nostack)) };
}

/// `out dx, eax`.
pub fn outd(port: u16, v: u32) {
    // SAFETY: as `inb`.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack)) };
}

/// `rep insw`: `buf.len() / 2` words from `port` into `buf`.
pub fn insw(port: u16, buf: &mut [u8]) {
    // SAFETY: stores exactly `buf.len() / 2` words at RDI upwards (DF clear), inside the
    // exclusively borrowed `buf`.
    unsafe {
        core::arch::asm!("rep insw", in("dx") port,
            inout("rdi") buf.as_mut_ptr() => _, inout("rcx") buf.len() / 2 => _,
            options(nostack, preserves_flags));
    }
}

/// `rep outsw`: `buf.len() / 2` words of `buf` to `port`.
pub fn outsw(port: u16, buf: &[u8]) {
    // SAFETY: loads exactly `buf.len() / 2` words from RSI upwards (DF clear), inside `buf`.
    unsafe {
        core::arch::asm!("rep outsw", in("dx") port,
            inout("rsi") buf.as_ptr() => _, inout("rcx") buf.len() / 2 => _,
            options(nostack, preserves_flags, readonly));
    }
}

/// The TSC.
pub fn rdtsc() -> u64 {
    pvkit_guest::tsc::rdtsc()
}
