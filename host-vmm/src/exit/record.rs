//! Where exits come from: per-exit records of one vCPU, kept only when asked for
//! (`pvkit run --stats` / `--trace`).
//!
//! An [`ExitRecorder`] sees every exit the vCPU thread handles, after the ledger counted
//! it: the exit's kind (the ledger's [`ExitLedger::last`](super::ledger::ExitLedger::last)),
//! its port or address, and the guest `RIP` at the exit. It keeps
//! - a [`RipProfile`]: exits by `RIP`, at most [`MAX_RIPS`] distinct addresses (exits at
//!   further addresses are counted as overflow), and
//! - a [`Trace`]: one [`TraceEvent`] per exit, at most [`MAX_TRACE_EVENTS`] (the rest are
//!   counted as dropped),
//!
//! all in memory on the vCPU thread (which may not write files under its seccomp filter);
//! [`write_chrome_trace`] writes the trace afterwards on the caller's thread.
//!
//! Cost: with sync regs the `RIP` is read from the `kvm_run` page KVM already filled (no
//! ioctl); with the ioctl register access it costs one `KVM_GET_REGS` per exit, paid only
//! when a recorder exists.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Instant;

use super::ledger::ExitKind;
use super::Exit;
use crate::loader::symbols::SymbolTable;

/// Most distinct `RIP`s a [`RipProfile`] counts.
pub const MAX_RIPS: usize = 4096;
/// Most events a [`Trace`] keeps.
pub const MAX_TRACE_EVENTS: usize = 1_000_000;

/// What to record per exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordConfig {
    /// Count exits by `RIP` ([`RipProfile`]).
    pub rips: bool,
    /// Keep every exit ([`Trace`]).
    pub trace: bool,
}

/// Exits counted by the guest `RIP` at the exit, bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RipProfile {
    /// Exits by `RIP`.
    pub counts: HashMap<u64, u64>,
    /// Exits at a `RIP` not counted because [`MAX_RIPS`] addresses already were.
    pub overflow: u64,
    /// Exits whose `RIP` could not be read.
    pub unknown: u64,
}

impl RipProfile {
    /// Counts one exit at `rip`.
    pub fn record(&mut self, rip: Option<u64>) {
        let Some(rip) = rip else {
            self.unknown += 1;
            return;
        };
        if let Some(c) = self.counts.get_mut(&rip) {
            *c += 1;
        } else if self.counts.len() < MAX_RIPS {
            self.counts.insert(rip, 1);
        } else {
            self.overflow += 1;
        }
    }

    /// Adds another vCPU's profile (the address cap applies to the sum).
    pub fn merge(&mut self, other: &RipProfile) {
        for (rip, n) in &other.counts {
            if let Some(c) = self.counts.get_mut(rip) {
                *c += n;
            } else if self.counts.len() < MAX_RIPS {
                self.counts.insert(*rip, *n);
            } else {
                self.overflow += n;
            }
        }
        self.overflow += other.overflow;
        self.unknown += other.unknown;
    }

    /// Exits counted (including overflow and unknown).
    pub fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.overflow + self.unknown
    }

    /// The `n` addresses with the most exits, most first (ties: lower address first).
    pub fn top(&self, n: usize) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self.counts.iter().map(|(r, c)| (*r, *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// One exit in a [`Trace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// Microseconds since the run's start instant.
    pub t_us: u64,
    /// The vCPU.
    pub vcpu: u32,
    /// The kind, as the ledger counted it.
    pub kind: ExitKind,
    /// The port (port I/O, hypercalls) or guest-physical address (MMIO).
    pub addr: Option<u64>,
    /// The guest `RIP` at the exit.
    pub rip: Option<u64>,
}

/// Every exit, in order, bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The events kept (the first [`MAX_TRACE_EVENTS`]).
    pub events: Vec<TraceEvent>,
    /// Events not kept.
    pub dropped: u64,
}

impl Trace {
    /// Adds another vCPU's trace: events merged in time order.
    pub fn merge(&mut self, other: &Trace) {
        let room = MAX_TRACE_EVENTS.saturating_sub(self.events.len());
        let take = other.events.len().min(room);
        self.events.extend(other.events.iter().take(take).copied());
        self.dropped += other.dropped + (other.events.len() - take) as u64;
        self.events.sort_by_key(|e| (e.t_us, e.vcpu));
    }
}

/// One vCPU's exit recorder.
#[derive(Debug)]
pub struct ExitRecorder {
    t0: Instant,
    vcpu: u32,
    pending_addr: Option<u64>,
    /// Exits by `RIP`, if asked for.
    pub rips: Option<RipProfile>,
    /// Every exit, if asked for.
    pub trace: Option<Trace>,
}

impl ExitRecorder {
    /// A recorder for vCPU `vcpu` with times from `t0`; `None` when `config` asks for
    /// nothing.
    pub fn new(config: RecordConfig, t0: Instant, vcpu: u32) -> Option<Self> {
        (config.rips || config.trace).then(|| Self {
            t0,
            vcpu,
            pending_addr: None,
            rips: config.rips.then(RipProfile::default),
            trace: config.trace.then(Trace::default),
        })
    }

    /// Notes the port or address of `exit`, before it is handled.
    pub fn note(&mut self, exit: &Exit<'_>) {
        self.pending_addr = match exit {
            Exit::IoOut { port, .. } | Exit::IoIn { port, .. } => Some(u64::from(*port)),
            Exit::Hypercall(_) => Some(u64::from(pvkit_abi::ports::HYPERCALL)),
            Exit::MmioRead { addr, .. } | Exit::MmioWrite { addr, .. } => Some(*addr),
            _ => None,
        };
    }

    /// Records the exit just handled: `kind` as the ledger counted it, `rip` at the exit.
    pub fn record(&mut self, kind: Option<ExitKind>, rip: Option<u64>) {
        if let Some(p) = &mut self.rips {
            p.record(rip);
        }
        let addr = self.pending_addr.take();
        if let (Some(t), Some(kind)) = (&mut self.trace, kind) {
            if t.events.len() < MAX_TRACE_EVENTS {
                t.events.push(TraceEvent {
                    t_us: u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX),
                    vcpu: self.vcpu,
                    kind,
                    addr,
                    rip,
                });
            } else {
                t.dropped += 1;
            }
        }
    }
}

/// Writes `s` as a JSON string (quoted, escaped).
fn json_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(b"\"")?;
    for c in s.chars() {
        match c {
            '"' => out.write_all(b"\\\"")?,
            '\\' => out.write_all(b"\\\\")?,
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                write!(out, "\\u{:04x}", c as u32)?
            }
            c => write!(out, "{c}")?,
        }
    }
    out.write_all(b"\"")
}

/// Writes `trace` as Chrome trace-event JSON (the object form, which Perfetto and
/// `chrome://tracing` open): one instant event (`"ph":"i"`) per exit, named after its
/// kind, at its time in µs, `pid` 1, `tid` the vCPU, with `args` `port` or `addr`, `rip`
/// and `sym` (the `RIP`'s symbol in `symbols`). `otherData.dropped_events` says how many
/// exits did not fit.
pub fn write_chrome_trace(
    trace: &Trace,
    symbols: &SymbolTable,
    out: &mut impl Write,
) -> io::Result<()> {
    out.write_all(b"{\"traceEvents\":[")?;
    for (i, e) in trace.events.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        out.write_all(b"{\"name\":")?;
        json_str(out, &e.kind.to_string())?;
        write!(
            out,
            ",\"cat\":\"exit\",\"ph\":\"i\",\"s\":\"t\",\"ts\":{},\"pid\":1,\"tid\":{},\"args\":{{",
            e.t_us, e.vcpu
        )?;
        let mut sep = "";
        if let Some(a) = e.addr {
            let key = match e.kind {
                ExitKind::MmioRead(_) | ExitKind::MmioWrite(_) => "addr",
                _ => "port",
            };
            write!(out, "\"{key}\":\"{a:#x}\"")?;
            sep = ",";
        }
        if let Some(rip) = e.rip {
            write!(out, "{sep}\"rip\":\"{rip:#x}\",\"sym\":")?;
            json_str(out, &symbols.locate(rip).to_string())?;
        }
        out.write_all(b"}}")?;
    }
    write!(
        out,
        "],\"displayTimeUnit\":\"ns\",\"otherData\":{{\"dropped_events\":{}}}}}",
        trace.dropped
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rip_profile_is_bounded_and_sorted() {
        let mut p = RipProfile::default();
        for i in 0..(MAX_RIPS as u64 + 5) {
            p.record(Some(0x1000 + i));
        }
        p.record(Some(0x1000));
        p.record(Some(0x1000));
        p.record(Some(0x1001));
        p.record(None);
        assert_eq!(p.counts.len(), MAX_RIPS);
        assert_eq!(p.overflow, 5);
        assert_eq!(p.unknown, 1);
        assert_eq!(p.total(), MAX_RIPS as u64 + 5 + 3 + 1);
        assert_eq!(p.top(2), vec![(0x1000, 3), (0x1001, 2)]);
        let mut q = RipProfile::default();
        q.record(Some(0x1001));
        q.record(Some(7));
        q.merge(&p);
        assert_eq!(q.counts.len(), MAX_RIPS);
        assert_eq!(q.total(), p.total() + 2);
        assert_eq!(q.top(1), vec![(0x1000, 3)]);
    }

    #[test]
    fn trace_is_bounded_and_written_as_json_with_escaped_names() {
        let mut r = ExitRecorder::new(
            RecordConfig {
                rips: false,
                trace: true,
            },
            Instant::now(),
            0,
        )
        .unwrap();
        r.note(&Exit::IoOut {
            port: 0x3f8,
            data: b"x",
        });
        r.record(Some(ExitKind::PortWrite(0x3f8)), Some(0x20_0010));
        r.note(&Exit::MmioWrite {
            addr: 0xd000_0000,
            data: &[1],
        });
        r.record(Some(ExitKind::MmioWrite("unmapped")), None);
        r.record(Some(ExitKind::Hlt), Some(0x20_0020));
        let mut t = r.trace.take().unwrap();
        assert_eq!(t.events.len(), 3);
        assert_eq!(t.events[0].addr, Some(0x3f8));
        assert_eq!(t.events[2].addr, None);
        t.dropped = 9;
        let mut out = Vec::new();
        write_chrome_trace(&t, &SymbolTable::default(), &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let ev = v["traceEvents"].as_array().unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0]["name"], "port 0x03f8 write");
        assert_eq!(ev[0]["ph"], "i");
        assert_eq!(ev[0]["args"]["port"], "0x3f8");
        assert_eq!(ev[0]["args"]["rip"], "0x200010");
        assert_eq!(ev[1]["args"]["addr"], "0xd0000000");
        assert_eq!(v["otherData"]["dropped_events"], 9);
        let mut s = Vec::new();
        json_str(&mut s, "a\"b\\c\n\u{1}").unwrap();
        assert_eq!(
            serde_json::from_slice::<String>(&s).unwrap(),
            "a\"b\\c\n\u{1}"
        );
        // Merging respects the cap.
        let mut big = Trace {
            events: vec![t.events[0]; MAX_TRACE_EVENTS - 1],
            dropped: 0,
        };
        big.merge(&t);
        assert_eq!(big.events.len(), MAX_TRACE_EVENTS);
        assert_eq!(big.dropped, 9 + 2);
    }

    #[test]
    fn nothing_asked_no_recorder() {
        assert!(ExitRecorder::new(RecordConfig::default(), Instant::now(), 0).is_none());
    }
}
