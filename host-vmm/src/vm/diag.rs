//! Fault diagnostics that name the cause: for a triple fault (shutdown) or a reported
//! exception, the registers that matter (`RIP`, `RSP`, `CR2`, `CR3`), the symbol of the
//! faulting instruction, and whether `RSP` says the stack overflowed.

use std::fmt::Write as _;

use pvkit_abi::boot::{BOOT_STACK_BOTTOM, BOOT_STACK_TOP};

use crate::loader::symbols::{SymbolKind, SymbolTable};
use crate::runtime::stop::StopReason;

/// The registers read from vCPU 0 after it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopRegs {
    /// `RIP`.
    pub rip: u64,
    /// `RSP`.
    pub rsp: u64,
    /// `CR2` (the last page-fault address).
    pub cr2: u64,
    /// `CR3` (the page-table root).
    pub cr3: u64,
}

/// Size of a guard page.
const PAGE: u64 = 4096;

/// Where `rsp` points, in words, and whether that means a stack overflow.
pub fn classify_rsp(rsp: u64, symbols: &SymbolTable) -> (String, bool) {
    if (BOOT_STACK_BOTTOM..=BOOT_STACK_TOP).contains(&rsp) {
        return (
            format!("inside the boot stack ({BOOT_STACK_BOTTOM:#x}..{BOOT_STACK_TOP:#x})"),
            false,
        );
    }
    if let Some(s) = symbols
        .lookup(rsp)
        .filter(|s| s.kind == SymbolKind::Data && s.name.to_ascii_lowercase().contains("stack"))
    {
        // The lowest page of a stack is its guard page (the runtime's boot stack) or the
        // last page before it runs out: either way the stack is (about to be) exhausted.
        if rsp - s.addr < PAGE && s.size > PAGE {
            return (
                format!(
                    "in the lowest page (guard page) of {} ({:#x}..{:#x}): likely stack overflow",
                    s.name,
                    s.addr,
                    s.addr.saturating_add(s.size)
                ),
                true,
            );
        }
        return (format!("inside {}", s.name), false);
    }
    if (BOOT_STACK_BOTTOM - PAGE..BOOT_STACK_BOTTOM).contains(&rsp) {
        return (
            format!(
                "just below the boot stack ({BOOT_STACK_BOTTOM:#x}..{BOOT_STACK_TOP:#x}), over \
                 the page tables: likely stack overflow"
            ),
            true,
        );
    }
    (
        format!(
            "outside the boot stack ({BOOT_STACK_BOTTOM:#x}..{BOOT_STACK_TOP:#x}) and every \
             stack symbol: likely stack overflow (or a corrupted RSP)"
        ),
        true,
    )
}

/// The interrupted `RSP` as the `pvkit-guest` runtime writes it in its fault message
/// (`rsp 0x…`): the report itself has no `RSP` field. Guest text: only hex digits are taken.
fn rsp_in_message(message: &str) -> Option<u64> {
    let at = message.find("rsp 0x")? + "rsp 0x".len();
    let digits: String = message
        .get(at..)?
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    u64::from_str_radix(&digits, 16).ok()
}

/// The diagnosis of `stop`: indented lines naming the registers and the faulting
/// instruction's symbol, or `None` when the stop is not a fault. `regs` are vCPU 0's
/// registers after the stop; for a reported fault the guest's `RIP` and `CR2` are used
/// (its `RSP` is not in the report: the vCPU's is the exception handler's).
pub fn diagnose(
    stop: &StopReason,
    regs: Option<&StopRegs>,
    symbols: &SymbolTable,
) -> Option<String> {
    let mut out = String::new();
    let sym = |rip: u64| match symbols.lookup(rip) {
        Some(_) => format!(" in {}", symbols.locate(rip)),
        None if symbols.is_empty() => " (the guest ELF has no symbol table)".to_owned(),
        None => " (no symbol)".to_owned(),
    };
    match stop {
        StopReason::Shutdown { .. } => {
            let r = regs?;
            let _ = writeln!(out, "  rip {:#x}{}", r.rip, sym(r.rip));
            let (where_, _) = classify_rsp(r.rsp, symbols);
            let _ = writeln!(out, "  rsp {:#x}: {where_}", r.rsp);
            let _ = writeln!(out, "  cr2 {:#x}, cr3 {:#x}", r.cr2, r.cr3);
        }
        StopReason::Fault(f) if !f.is_panic() => {
            let _ = writeln!(out, "  rip {:#x}{}", f.rip, sym(f.rip));
            match rsp_in_message(&f.message) {
                Some(rsp) => {
                    let (where_, _) = classify_rsp(rsp, symbols);
                    let _ = writeln!(out, "  rsp {rsp:#x} (from the guest's message): {where_}");
                }
                None => {
                    let _ = writeln!(out, "  rsp: not in the fault report");
                }
            }
            let _ = write!(out, "  cr2 {:#x}", f.cr2);
            if let Some(r) = regs {
                // The report's CR2 is the guest's choice (0 outside #PF); the vCPU's is the
                // last page-fault address, e.g. the #PF that became a #DF.
                if r.cr2 != f.cr2 {
                    let _ = write!(out, " (reported; the vCPU's cr2 is {:#x})", r.cr2);
                }
                let _ = write!(out, ", cr3 {:#x}", r.cr3);
            }
            out.push('\n');
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsp_in_and_out_of_the_boot_stack() {
        let t = SymbolTable::default();
        assert!(!classify_rsp(0x7_fff8, &t).1);
        assert!(!classify_rsp(BOOT_STACK_TOP, &t).1);
        let (s, overflow) = classify_rsp(BOOT_STACK_BOTTOM - 8, &t);
        assert!(overflow && s.contains("likely stack overflow"), "{s}");
        let (s, overflow) = classify_rsp(0x1234_5678, &t);
        assert!(overflow && s.contains("likely stack overflow"), "{s}");
    }

    #[test]
    fn diagnoses_only_faults() {
        let t = SymbolTable::default();
        let regs = StopRegs {
            rip: 0x20_0000,
            rsp: 0x8000,
            cr2: 0x10,
            cr3: 0x9000,
        };
        let d = diagnose(&StopReason::Shutdown { rip: None }, Some(&regs), &t).unwrap();
        assert!(
            d.contains("rip 0x200000 (the guest ELF has no symbol table)"),
            "{d}"
        );
        assert!(
            d.contains("rsp 0x8000: ") && d.contains("likely stack overflow"),
            "{d}"
        );
        assert!(d.contains("cr2 0x10, cr3 0x9000"), "{d}");
        assert_eq!(diagnose(&StopReason::Exit(0), Some(&regs), &t), None);
        assert_eq!(
            diagnose(&StopReason::Shutdown { rip: None }, None, &t),
            None
        );
    }

    #[test]
    fn rsp_from_the_guest_message() {
        assert_eq!(rsp_in_message("x (cs 0x8, rsp 0x221fe0)"), Some(0x22_1fe0));
        assert_eq!(rsp_in_message("rsp 0xZZ"), None);
        assert_eq!(rsp_in_message("no stack pointer"), None);
        assert_eq!(rsp_in_message("rsp 0xffffffffffffffffff"), Some(u64::MAX));
    }
}
