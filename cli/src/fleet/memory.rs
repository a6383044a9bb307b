//! What a VM costs the host, read from procfs: a process's proportional set size
//! (`/proc/PID/smaps_rollup`: shared pages such as the `pvkit` binary's text divided among
//! the processes that map them), the part of it that is guest RAM (the one anonymous
//! mapping of exactly the guest's size in `/proc/PID/smaps`), the host's kernel memory
//! (`/proc/meminfo`).

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A procfs or sysfs file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file did not hold the field.
    #[error("{path} has no {field} line")]
    Missing {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
    },
}

fn read(path: &str) -> Result<String, MemoryError> {
    std::fs::read_to_string(path).map_err(|source| MemoryError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The value in kB of the first `field:` line of `text`.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// PSS of process `pid` in KiB.
pub fn pss_kib(pid: u32) -> Result<u64, MemoryError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = read(&path)?;
    kib_field(&text, "Pss").ok_or(MemoryError::Missing { path, field: "Pss" })
}

/// The PSS in KiB of the guest-RAM mapping in a `/proc/PID/smaps` text: the private
/// anonymous read-write mapping of exactly `ram_bytes`; with several such, the largest PSS
/// (so the VMM's overhead is never overstated). `None` when there is none.
pub fn guest_ram_pss_kib(smaps: &str, ram_bytes: u64) -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut in_ram = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(s), Ok(e)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                let perms = f.next().unwrap_or("");
                let _offset = f.next();
                let _dev = f.next();
                let _inode = f.next();
                let anonymous = f.next().is_none();
                in_ram = e.wrapping_sub(s) == ram_bytes && perms == "rw-p" && anonymous;
                continue;
            }
        }
        if in_ram {
            if let Some(kib) = kib_field(line, "Pss") {
                best = Some(best.map_or(kib, |b| b.max(kib)));
                in_ram = false;
            }
        }
    }
    best
}

/// PSS in KiB of the guest RAM of process `pid` with `ram_bytes` of RAM.
pub fn process_guest_ram_pss_kib(pid: u32, ram_bytes: u64) -> Result<u64, MemoryError> {
    let path = format!("/proc/{pid}/smaps");
    let text = read(&path)?;
    guest_ram_pss_kib(&text, ram_bytes).ok_or(MemoryError::Missing {
        path,
        field: "guest RAM mapping",
    })
}

/// The `/proc/meminfo` fields that are kernel memory a VM adds: unreclaimable slab (KVM's
/// objects, the TAP device), kernel stacks (the VMM's threads), page tables (the VMM's and
/// KVM's secondary ones), vmalloc (KVM's per-VM and per-vCPU areas).
pub const KERNEL_FIELDS: [&str; 5] = [
    "SUnreclaim",
    "KernelStack",
    "PageTables",
    "SecPageTables",
    "VmallocUsed",
];

/// The sum of [`KERNEL_FIELDS`] in a `/proc/meminfo` text, in KiB (a field the kernel
/// does not have counts 0).
pub fn kernel_kib_of(meminfo: &str) -> u64 {
    KERNEL_FIELDS
        .iter()
        .filter_map(|f| kib_field(meminfo, f))
        .sum()
}

/// The host's kernel memory of [`KERNEL_FIELDS`] now, in KiB. Host-wide: other processes'
/// changes show up in it too.
pub fn kernel_kib() -> Result<u64, MemoryError> {
    Ok(kernel_kib_of(&read("/proc/meminfo")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/pvkit
Size:               1024 kB
Pss:                 100 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:                2048 kB
Pss:                2048 kB
7f1000000000-7f1004000000 ---p 00000000 00:00 0 
Size:              65536 kB
Pss:                   0 kB
7f2000000000-7f2000021000 rw-p 00000000 00:00 0 
Size:                132 kB
Pss:                  12 kB
";

    #[test]
    fn finds_the_anonymous_rw_mapping_of_the_guest_size() {
        assert_eq!(guest_ram_pss_kib(SMAPS, 64 << 20), Some(2048));
        assert_eq!(guest_ram_pss_kib(SMAPS, 128 << 20), None);
    }

    #[test]
    fn sums_the_kernel_fields() {
        let m = "MemTotal: 100 kB\nSUnreclaim: 10 kB\nKernelStack: 2 kB\nPageTables: 3 kB\nVmallocUsed: 5 kB\n";
        assert_eq!(kernel_kib_of(m), 20);
    }

    #[test]
    fn reads_kib_fields() {
        let rollup = "00400000-7fff rw-p 0 00:00 0 [rollup]\nRss: 5000 kB\nPss:                3000 kB\nPss_Anon: 10 kB\n";
        assert_eq!(kib_field(rollup, "Pss"), Some(3000));
        assert_eq!(kib_field(rollup, "Pss_Anon"), Some(10));
        assert_eq!(kib_field(rollup, "Swap"), None);
        assert_eq!(kib_field("Pss: lots kB\n", "Pss"), None);
    }
}
