//! Building and sending fault reports ([`pvkit_abi::fault::FaultReport`]), no allocation.
//!
//! [`build_report`] fills a report from a vector, error code, `RIP`, `CR2` and a formatted
//! message; the message is written straight into the report's fixed buffer and truncated
//! (at a UTF-8 character boundary) when it does not fit. [`report_exception`] and
//! [`report_panic`] build one on the stack and send it with the `ReportFault` hypercall; they
//! never return.
//!
//! A fault or panic raised while a report is being built (a broken `Display`, a fault in the
//! formatter) does not recurse: the second report carries a fixed message and is sent
//! without formatting anything.

use core::fmt;
use pvkit_abi::fault::{FaultReport, MESSAGE_MAX, VECTOR_PANIC};

/// A [`fmt::Write`] into a fixed byte buffer that truncates instead of failing halfway
/// through a character.
#[derive(Debug)]
pub struct MessageBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
    truncated: bool,
}

impl<'a> MessageBuf<'a> {
    /// An empty message over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            len: 0,
            truncated: false,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some text did not fit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Write for MessageBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len();
        if n > room {
            n = room;
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            self.truncated = true;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        // Stop the formatter once full: nothing more would be kept.
        if self.truncated {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// A report for `vector` (0–31, or [`VECTOR_PANIC`]) with `message` formatted into it,
/// truncated to [`MESSAGE_MAX`] bytes.
pub fn build_report(
    vector: u32,
    error_code: u64,
    rip: u64,
    cr2: u64,
    message: fmt::Arguments<'_>,
) -> FaultReport {
    let mut report = FaultReport {
        vector,
        message_len: 0,
        error_code,
        rip,
        cr2,
        message: [0; MESSAGE_MAX],
    };
    let mut msg = MessageBuf::new(&mut report.message);
    // An error only means the message was truncated (or a `Display` failed): keep what we got.
    let _ = fmt::write(&mut msg, message);
    report.message_len = msg.len() as u32;
    report
}

/// Set while a report is being built, so that a fault inside it cannot recurse.
#[cfg(target_arch = "x86_64")]
static REPORTING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Sends a fixed report without formatting: used when reporting itself failed.
#[cfg(target_arch = "x86_64")]
fn report_nested(vector: u32, error_code: u64, rip: u64, cr2: u64) -> ! {
    let mut report = FaultReport {
        vector,
        message_len: 0,
        error_code,
        rip,
        cr2,
        message: [0; MESSAGE_MAX],
    };
    const TEXT: &[u8] = b"fault while reporting an earlier fault or panic";
    report.message[..TEXT.len()].copy_from_slice(TEXT);
    report.message_len = TEXT.len() as u32;
    crate::hypercall::report_fault(&report)
}

/// Reports CPU exception `vector` and stops the VM. `cr2` is meaningful for `#PF` (14) only;
/// pass 0 otherwise.
#[cfg(target_arch = "x86_64")]
pub fn report_exception(
    vector: u32,
    error_code: u64,
    rip: u64,
    cr2: u64,
    message: fmt::Arguments<'_>,
) -> ! {
    if REPORTING.swap(true, core::sync::atomic::Ordering::Relaxed) {
        report_nested(vector, error_code, rip, cr2);
    }
    crate::hypercall::report_fault(&build_report(vector, error_code, rip, cr2, message))
}

/// Reports a panic (`"panicked at file:line:col: message"`) and stops the VM. Call it from
/// the kernel's `#[panic_handler]`.
#[cfg(target_arch = "x86_64")]
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if REPORTING.swap(true, core::sync::atomic::Ordering::Relaxed) {
        report_nested(VECTOR_PANIC, 0, 0, 0);
    }
    let report = match info.location() {
        Some(l) => build_report(
            VECTOR_PANIC,
            0,
            0,
            0,
            format_args!(
                "panicked at {}:{}:{}: {}",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            ),
        ),
        None => build_report(
            VECTOR_PANIC,
            0,
            0,
            0,
            format_args!("panicked: {}", info.message()),
        ),
    };
    crate::hypercall::report_fault(&report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn fields_and_message() {
        let r = build_report(
            14,
            2,
            0x20_1000,
            0xdead_0000,
            format_args!("#PF at {:#x}", 7),
        );
        assert_eq!(
            (r.vector, r.error_code, r.rip, r.cr2),
            (14, 2, 0x20_1000, 0xdead_0000)
        );
        assert_eq!(&r.message[..r.message_len as usize], b"#PF at 0x7");
        assert!(r.message[r.message_len as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn long_messages_are_truncated_at_a_char_boundary() {
        let long = "é".repeat(MESSAGE_MAX); // 2 bytes per char
        let r = build_report(VECTOR_PANIC, 0, 0, 0, format_args!("x{long}"));
        // "x" + 127 "é" = 255 bytes; a 128th "é" would need 257.
        assert_eq!(r.message_len as usize, MESSAGE_MAX - 1);
        let text = core::str::from_utf8(&r.message[..r.message_len as usize]).unwrap();
        assert!(text.starts_with("xé"));
    }

    #[test]
    fn message_buf_reports_truncation() {
        let mut buf = [0u8; 4];
        let mut m = MessageBuf::new(&mut buf);
        assert!(m.write_str("abc").is_ok());
        assert!(m.write_str("de").is_err());
        assert!(m.truncated());
        assert_eq!(m.len(), 4);
        assert_eq!(&buf, b"abcd");
    }
}
