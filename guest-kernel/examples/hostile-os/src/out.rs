//! Output without `core::fmt` (ring 0 is interpreted on kvm_pvm: every instruction counts):
//! a fixed line buffer written with one `ConsoleWrite` per line, and the check ledger.
//!
//! Every check prints exactly one line the host test parses:
//!
//! ```text
//! check <name> status=<STATUS> ok
//! check <name> status=<STATUS> want=<STATUS> FAIL
//! ```
//!
//! `<STATUS>` is a [`Status`] name (`OK`, `EFAULT`, …), or `raw=0x…` for a value that is
//! not a status, or `val=0x…` for checks on a value rather than a status.

use pvkit_abi::Status;
use pvkit_guest::PvConsole;

/// One output line, written with one hypercall.
pub struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 200],
            len: 0,
        }
    }

    /// Appends bytes (cut at the buffer's end).
    pub fn s(&mut self, text: &str) -> &mut Self {
        for &b in text.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends `v` in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            if self.len < self.buf.len() {
                self.buf[self.len] = digits[n];
                self.len += 1;
            }
        }
        self
    }

    /// Appends `0x` and `v` in hexadecimal.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        self.s("0x");
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            if d != 0 || started || i == 0 {
                started = true;
                let c = if d < 10 { b'0' + d } else { b'a' + d - 10 };
                if self.len < self.buf.len() {
                    self.buf[self.len] = c;
                    self.len += 1;
                }
            }
        }
        self
    }

    /// Appends a raw status value: its name, or `raw=0x…`.
    pub fn status(&mut self, raw: i64) -> &mut Self {
        match Status::try_from(raw as u64) {
            Ok(s) => self.s(s.name()),
            Err(_) => self.s("raw=").hex(raw as u64),
        }
    }

    /// Writes the line and a newline to the PV console, and empties the buffer.
    pub fn emit(&mut self) {
        self.s("\n");
        let _ = PvConsole::new().write(&self.buf[..self.len]);
        self.len = 0;
    }
}

/// Prints `text` and a newline.
pub fn say(text: &str) {
    Line::new().s(text).emit();
}

/// Counts checks and mismatches; the guest exits with the number of mismatches.
pub struct Checks {
    /// Checks made.
    pub total: u32,
    /// Checks whose outcome was not the expected one.
    pub failed: u32,
}

impl Checks {
    /// No checks yet.
    pub const fn new() -> Self {
        Self {
            total: 0,
            failed: 0,
        }
    }

    /// A hypercall (or ring response) status `got` against the expected status.
    pub fn status(&mut self, name: &str, got: i64, want: Status) {
        self.total += 1;
        let mut l = Line::new();
        l.s("check ").s(name).s(" status=").status(got);
        if got == want as i64 {
            l.s(" ok");
        } else {
            self.failed += 1;
            l.s(" want=").s(want.name()).s(" FAIL");
        }
        l.emit();
    }

    /// A status that may be any of `wants` (racy cases with several defined outcomes).
    pub fn status_any(&mut self, name: &str, got: i64, wants: &[Status]) {
        self.total += 1;
        let mut l = Line::new();
        l.s("check ").s(name).s(" status=").status(got);
        if wants.iter().any(|w| *w as i64 == got) {
            l.s(" ok");
        } else {
            self.failed += 1;
            l.s(" want=one-of");
            for w in wants {
                l.s(",").s(w.name());
            }
            l.s(" FAIL");
        }
        l.emit();
    }

    /// A value `got` against the expected value.
    pub fn value(&mut self, name: &str, got: u64, want: u64) {
        self.total += 1;
        let mut l = Line::new();
        l.s("check ").s(name).s(" val=").hex(got);
        if got == want {
            l.s(" ok");
        } else {
            self.failed += 1;
            l.s(" want=").hex(want).s(" FAIL");
        }
        l.emit();
    }

    /// A condition that must hold; `got` is printed for the record.
    pub fn that(&mut self, name: &str, got: u64, ok: bool) {
        self.total += 1;
        let mut l = Line::new();
        l.s("check ").s(name).s(" val=").hex(got);
        if ok {
            l.s(" ok");
        } else {
            self.failed += 1;
            l.s(" FAIL");
        }
        l.emit();
    }

    /// Prints the summary line `summary checks=N failed=M`.
    pub fn summary(&self) {
        Line::new()
            .s("summary checks=")
            .dec(u64::from(self.total))
            .s(" failed=")
            .dec(u64::from(self.failed))
            .emit();
    }
}
