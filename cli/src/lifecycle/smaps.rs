//! How much memory this process's mappings of one file take (`/proc/self/smaps`): for the
//! clones, whose guest RAM is the snapshot's memory file mapped `MAP_PRIVATE`, the pages
//! they share (the file's page cache) against the pages each clone wrote (private copies).

use std::path::Path;

/// Sums over every mapping of one file, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMappings {
    /// Mappings of the file.
    pub mappings: u64,
    /// Resident.
    pub rss_kib: u64,
    /// Resident and shared with another mapping (`Shared_Clean` + `Shared_Dirty`).
    pub shared_kib: u64,
    /// Resident and private: copies made on write (`Private_Dirty`).
    pub private_dirty_kib: u64,
}

/// The mappings of `file` in the smaps text `smaps`.
pub fn parse(smaps: &str, file: &Path) -> FileMappings {
    let want = file.to_string_lossy();
    let mut m = FileMappings::default();
    let mut inside = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        // A mapping's header: `start-end perms offset dev inode [path]`.
        if first.contains('-') && !first.ends_with(':') {
            let path = line.find(" /").map(|i| line[i + 1..].trim());
            inside = path == Some(want.as_ref());
            m.mappings += u64::from(inside);
            continue;
        }
        if !inside {
            continue;
        }
        let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Rss:" => m.rss_kib += kib,
            "Shared_Clean:" | "Shared_Dirty:" => m.shared_kib += kib,
            "Private_Dirty:" => m.private_dirty_kib += kib,
            _ => {}
        }
    }
    m
}

/// The mappings of `file` in this process now (`None`: smaps unreadable).
pub fn of_file(file: &Path) -> Option<FileMappings> {
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    Some(parse(&text, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_mappings_of_one_file() {
        let smaps = "\
7f00-7f10 rw-p 00000000 08:01 12          /tmp/s/vm.mem
Rss:                 400 kB
Shared_Clean:        300 kB
Shared_Dirty:          0 kB
Private_Dirty:       100 kB
7f20-7f30 rw-p 00000000 08:01 13 /tmp/s/other
Rss:                 999 kB
Private_Dirty:       999 kB
7f40-7f50 rw-p 00000000 08:01 12 /tmp/s/vm.mem
Rss:                  50 kB
Shared_Clean:         50 kB
Private_Dirty:         0 kB
";
        let m = parse(smaps, Path::new("/tmp/s/vm.mem"));
        assert_eq!(
            m,
            FileMappings {
                mappings: 2,
                rss_kib: 450,
                shared_kib: 350,
                private_dirty_kib: 100
            }
        );
        assert_eq!(parse(smaps, Path::new("/x")).mappings, 0);
        // This process has its own binary mapped.
        let exe = std::env::current_exe().unwrap();
        assert!(of_file(&exe).unwrap().mappings > 0);
    }
}
