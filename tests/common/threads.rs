//! The threads of a running process and their seccomp status, from `/proc/PID/task/*`.

use std::path::Path;

/// One thread: its name (`comm`), `Seccomp` (mode: 2 = filter) and `Seccomp_filters`, and
/// whether it is a kernel worker that only lives in the process's thread group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadStatus {
    /// The thread's id (`TID`).
    pub tid: u32,
    /// `/proc/PID/task/TID/comm`.
    pub name: String,
    /// `Seccomp:` (0 none, 2 filter).
    pub mode: u32,
    /// `Seccomp_filters:`.
    pub filters: u32,
    /// A kernel worker (`PF_KTHREAD` or `PF_USER_WORKER`, e.g. KVM's `kvm-nx-lpage-re`):
    /// it never returns to user space, so no filter applies to it.
    pub kernel_worker: bool,
}

/// `PF_USER_WORKER | PF_KTHREAD` (include/linux/sched.h).
const KERNEL_WORKER_FLAGS: u64 = 0x0000_4000 | 0x0020_0000;

fn status(task: &Path) -> Option<ThreadStatus> {
    let name = std::fs::read_to_string(task.join("comm")).ok()?;
    let status = std::fs::read_to_string(task.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    // `stat`: "tid (comm) state ppid pgrp session tty_nr tpgid flags ...".
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    let flags: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()?;
    Some(ThreadStatus {
        tid: task.file_name()?.to_str()?.parse().ok()?,
        name: name.trim().to_owned(),
        mode: field("Seccomp:")?,
        filters: field("Seccomp_filters:")?,
        kernel_worker: flags & KERNEL_WORKER_FLAGS != 0,
    })
}

/// The threads of `pid` (empty once it has gone).
pub fn threads(pid: u32) -> Vec<ThreadStatus> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| status(&e.ok()?.path())).collect()
}

/// One line per thread, for failure messages: `name: Seccomp=M filters=N`.
pub fn describe(ts: &[ThreadStatus]) -> String {
    ts.iter()
        .map(|t| {
            format!(
                "{}: Seccomp={} filters={}{}",
                t.name,
                t.mode,
                t.filters,
                if t.kernel_worker {
                    " (kernel worker)"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
