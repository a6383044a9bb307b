//! The built-in guest's `net=echo` summary, and the check that an echo run moved to another
//! VMM (a restore, a migration target) continued there rather than starting over.

/// `net: done ... echoes=E frames=F errors=X` → (E, F, X).
pub fn net_done(lines: &[String]) -> Option<(u64, u64, u64)> {
    let l = lines.iter().find(|l| l.starts_with("net: done "))?;
    let field = |k: &str| -> Option<u64> {
        l.split(' ')
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    Some((field("echoes=")?, field("frames=")?, field("errors=")?))
}

/// `after`, the lines the continued guest printed, show it went on rather than starting
/// over (no second `net: PV NIC ` banner), and every one of the `count` echoes was answered
/// exactly once (a lost frame would hang the guest, a duplicate would count twice), one ARP
/// reply before them.
pub fn assert_echoes_continued(what: &str, after: &[String], count: u64) {
    assert!(
        !after.iter().any(|l| l.starts_with("net: PV NIC ")),
        "{what}: the guest started over: {after:?}"
    );
    assert_eq!(
        net_done(after),
        Some((count, count + 1, 0)),
        "{what}: {after:?}"
    );
}
