//! The fault report a guest sends with [`crate::Hypercall::ReportFault`].

use crate::assert_layout;

/// Capacity of [`FaultReport::message`].
pub const MESSAGE_MAX: usize = 256;

/// `FaultReport::vector` when the report is a panic, not a CPU exception.
pub const VECTOR_PANIC: u32 = 0xffff_ffff;

/// A fatal guest fault (CPU exception) or panic. The VMM prints it and exits non-zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultReport {
    /// Exception vector (0–31), or [`VECTOR_PANIC`].
    pub vector: u32,
    /// Length of the valid prefix of `message` (clamped to [`MESSAGE_MAX`] by the host).
    pub message_len: u32,
    /// The exception's error code, or 0.
    pub error_code: u64,
    /// `RIP` at the fault (for a panic: 0).
    pub rip: u64,
    /// `CR2` (page faults), or 0.
    pub cr2: u64,
    /// UTF-8 text (invalid sequences are replaced by the host).
    pub message: [u8; MESSAGE_MAX],
}
assert_layout!(
    FaultReport,
    size = 32 + MESSAGE_MAX,
    vector @ 0,
    message_len @ 4,
    error_code @ 8,
    rip @ 16,
    cr2 @ 24,
    message @ 32,
);

impl Default for FaultReport {
    /// An all-zero report (arrays longer than 32 have no derived `Default`).
    fn default() -> Self {
        Self {
            vector: 0,
            message_len: 0,
            error_code: 0,
            rip: 0,
            cr2: 0,
            message: [0; MESSAGE_MAX],
        }
    }
}

/// The name of an x86 exception vector, e.g. `"#PF"`.
pub const fn vector_name(vector: u32) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        VECTOR_PANIC => "panic",
        _ => "reserved vector",
    }
}
