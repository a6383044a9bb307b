//! Per-thread seccomp filters: what each VMM thread that handles guest or network data may
//! ask the kernel for once it runs ([`ThreadKind`]: vCPU, I/O, API, console writer, network
//! event loops, gdb stub, migration source and target, `pvkit fleet`'s output readers).
//!
//! Each of these threads runs code that handles hostile input, so each confines itself before
//! it touches any (the vCPU before the first guest instruction, the I/O thread before the
//! first ring it serves, the others first thing after they start) to an allowlist of the
//! system calls it actually makes, with the dangerous ones narrowed by argument: `ioctl` to
//! the KVM requests the thread issues, `clone` to threads (no processes, no namespaces),
//! `mmap`/`mprotect` to non-executable anonymous memory, `futex` to the non-PI operations.
//! Anything else hits the default action, [`SeccompAction::Trap`]: the kernel sends `SIGSYS`
//! and the handler prints one line naming the thread and the system call, then ends the
//! process with [`STATUS_SECCOMP`] (159 = 128 + SIGSYS) without running anything else. The
//! lists, the reason for each entry and why the default is a trap and not `EPERM`:
//! `docs/SECURITY.md`, "Confinement".
//!
//! # Two programs on the vCPU thread
//!
//! glibc creates threads with `clone3`, whose flags sit in a struct BPF cannot read. The vCPU
//! thread therefore gets a first program that answers `clone3` with `ENOSYS` (glibc then
//! falls back to `clone`, whose flags the allowlist checks) and a second one, the allowlist.
//! The kernel runs every installed program and takes the strictest answer.
//!
//! # The I/O thread inherits
//!
//! The I/O thread is started by a hypercall, so on the vCPU thread, and a new thread inherits
//! its creator's filters. [`Confinement::for_new_io_thread`], called by the creator, notes
//! that and the I/O thread adds its own, narrower allowlist on top. Its effective set is the
//! intersection: which is why the vCPU list also holds the few calls only the I/O thread makes
//! (`epoll_wait`, `read`), and the two calls a thread needs to add a filter (`prctl` with
//! `PR_SET_NO_NEW_PRIVS`, `seccomp` with `SECCOMP_SET_MODE_FILTER`; adding a filter can only
//! take rights away). A thread started by an unconfined thread (`--no-seccomp`, or a test
//! driving the devices directly) is not confined.
//!
//! # Threads started by the main thread
//!
//! The console writer, network, gdb, API, migration, incoming-migration and output-reader
//! threads are started by an unconfined thread: it compiles their filter
//! ([`Confinement::when`]) and the new thread applies it first thing. One program each; no
//! thread creation in any of their lists.
//!
//! The lists were found by running the test suite and `pvkit bench` under `strace -f` with
//! the filters in log mode, then tightened (see `docs/SECURITY.md`).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use thiserror::Error;

/// Process exit status after a confined thread made a forbidden system call
/// (128 + `SIGSYS`, what a shell reports for a process killed by `SIGSYS`).
pub const STATUS_SECCOMP: u8 = 159;

/// The kinds of confined threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The vCPU thread: `KVM_RUN`, exit handling, emulated devices, hypercalls.
    Vcpu,
    /// The I/O thread: ioeventfd doorbells and polled rings.
    Io,
    /// The control API thread (`pvkit run --api`): the socket, snapshot files, the KVM
    /// state reads of a paused VM.
    Api,
    /// The console writer thread (`pvkit-console`): guest output to stdout.
    Console,
    /// A network backend's event loop (`pvkit-net`, `pvkit-pvnet`): frames from the TAP
    /// device into the NIC, interrupts through irqfds.
    Net,
    /// The gdb stub thread (`pvkit run --gdb`): one TCP connection, vCPU 0's registers and
    /// debug state through a duplicate of its fd, guest memory.
    Gdb,
    /// The migration thread (`pvkit run --migrate-to`): the TCP stream to the target, the
    /// dirty log, the state reads of the paused VM.
    Migrate,
    /// The receiving thread of an incoming migration (`pvkit run --incoming`): the
    /// stream from the source into a fresh snapshot directory.
    Incoming,
    /// A reader of a child VMM's stdout or stderr (`pvkit fleet`'s `pvkit-fleet-rd`): the
    /// guest's console lines, kept up to a bound.
    OutputReader,
}

/// Every thread kind (docs and tests).
pub const ALL_KINDS: [ThreadKind; 9] = [
    ThreadKind::Vcpu,
    ThreadKind::Io,
    ThreadKind::Api,
    ThreadKind::Console,
    ThreadKind::Net,
    ThreadKind::Gdb,
    ThreadKind::Migrate,
    ThreadKind::Incoming,
    ThreadKind::OutputReader,
];

impl ThreadKind {
    /// The name used in messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Io => "I/O",
            ThreadKind::Api => "API",
            ThreadKind::Console => "console writer",
            ThreadKind::Net => "network",
            ThreadKind::Gdb => "gdb",
            ThreadKind::Migrate => "migration",
            ThreadKind::Incoming => "incoming migration",
            ThreadKind::OutputReader => "output reader",
        }
    }

    fn tag(self) -> u8 {
        match self {
            ThreadKind::Vcpu => 1,
            ThreadKind::Io => 2,
            ThreadKind::Api => 3,
            ThreadKind::Console => 4,
            ThreadKind::Net => 5,
            ThreadKind::Gdb => 6,
            ThreadKind::Migrate => 7,
            ThreadKind::Incoming => 8,
            ThreadKind::OutputReader => 9,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(ThreadKind::Vcpu),
            2 => Some(ThreadKind::Io),
            3 => Some(ThreadKind::Api),
            4 => Some(ThreadKind::Console),
            5 => Some(ThreadKind::Net),
            6 => Some(ThreadKind::Gdb),
            7 => Some(ThreadKind::Migrate),
            8 => Some(ThreadKind::Incoming),
            9 => Some(ThreadKind::OutputReader),
            _ => None,
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// A filter could not be built (a bug in the rules).
    #[error("cannot build the {thread} thread's seccomp filter: {source}")]
    Build {
        /// The thread kind.
        thread: &'static str,
        /// What seccompiler said.
        source: BackendError,
    },
    /// The `SIGSYS` handler could not be installed.
    #[error("cannot install the SIGSYS handler for seccomp violations: {0}")]
    Handler(io::Error),
    /// The kernel refused the filter.
    #[error(
        "cannot confine the {thread} thread with seccomp: {source}; this kernel may lack \
         seccomp filters (CONFIG_SECCOMP_FILTER): run with --no-seccomp"
    )]
    Install {
        /// The thread kind.
        thread: &'static str,
        /// What the kernel said.
        source: seccompiler::Error,
    },
}

/// One allowed system call, for docs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The system call's name (x86_64).
    pub name: &'static str,
    /// Its number.
    pub nr: i64,
    /// Which arguments are checked, in words ("" when none are).
    pub only: &'static str,
    /// Why the thread needs it.
    pub why: &'static str,
}

// --- ioctl request numbers (include/uapi/linux/kvm.h; _IO/_IOR/_IOW of asm-generic/ioctl.h).

const KVMIO: u64 = 0xAE;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// `KVM_RUN`.
pub const KVM_RUN: u64 = ioc(0, 0x80, 0);
/// `KVM_GET_REGS`.
pub const KVM_GET_REGS: u64 = ioc(IOC_READ, 0x81, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_SET_REGS`.
pub const KVM_SET_REGS: u64 = ioc(IOC_WRITE, 0x82, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_SET_SREGS`.
pub const KVM_SET_SREGS: u64 = ioc(IOC_WRITE, 0x84, size_of::<kvm_bindings::kvm_sregs>());
/// `KVM_SET_MP_STATE`.
pub const KVM_SET_MP_STATE: u64 = ioc(IOC_WRITE, 0x99, size_of::<kvm_bindings::kvm_mp_state>());
/// `KVM_IOEVENTFD`.
pub const KVM_IOEVENTFD: u64 = ioc(IOC_WRITE, 0x79, size_of::<kvm_bindings::kvm_ioeventfd>());

/// `KVM_GET_SREGS`.
pub const KVM_GET_SREGS: u64 = ioc(IOC_READ, 0x83, size_of::<kvm_bindings::kvm_sregs>());
/// `KVM_SET_GUEST_DEBUG`.
pub const KVM_SET_GUEST_DEBUG: u64 =
    ioc(IOC_WRITE, 0x9b, size_of::<kvm_bindings::kvm_guest_debug>());

/// `KVM_SIGNAL_MSI` (a VM ioctl).
pub const KVM_SIGNAL_MSI: u64 = ioc(IOC_WRITE, 0xa5, size_of::<kvm_bindings::kvm_msi>());

/// The ioctl requests the vCPU thread may make, with their names.
pub const VCPU_IOCTLS: &[(u64, &str)] = &[
    (KVM_RUN, "KVM_RUN"),
    (KVM_GET_REGS, "KVM_GET_REGS"),
    (KVM_SET_REGS, "KVM_SET_REGS"),
    (KVM_IOEVENTFD, "KVM_IOEVENTFD"),
    (KVM_SET_SREGS, "KVM_SET_SREGS"),
    (KVM_SET_MP_STATE, "KVM_SET_MP_STATE"),
    (KVM_SIGNAL_MSI, "KVM_SIGNAL_MSI"),
];

const IOC_RW: u64 = IOC_READ | IOC_WRITE;

/// The ioctl requests the API thread may make: the state reads of a paused vCPU and of the
/// VM for a snapshot (`crate::snapshot::capture`), with their names, and `FIONBIO`.
pub const API_IOCTLS: &[(u64, &str)] = &[
    (KVM_GET_REGS, "KVM_GET_REGS"),
    (KVM_GET_SREGS, "KVM_GET_SREGS"),
    (
        ioc(IOC_READ, 0xa4, size_of::<kvm_bindings::kvm_xsave>()),
        "KVM_GET_XSAVE",
    ),
    (
        ioc(IOC_READ, 0xa6, size_of::<kvm_bindings::kvm_xcrs>()),
        "KVM_GET_XCRS",
    ),
    (
        ioc(IOC_READ, 0x8e, size_of::<kvm_bindings::kvm_lapic_state>()),
        "KVM_GET_LAPIC",
    ),
    (
        ioc(IOC_READ, 0x98, size_of::<kvm_bindings::kvm_mp_state>()),
        "KVM_GET_MP_STATE",
    ),
    (
        ioc(IOC_READ, 0x9f, size_of::<kvm_bindings::kvm_vcpu_events>()),
        "KVM_GET_VCPU_EVENTS",
    ),
    (
        ioc(IOC_RW, 0x88, size_of::<kvm_bindings::kvm_msrs>()),
        "KVM_GET_MSRS",
    ),
    (
        ioc(IOC_RW, 0x62, size_of::<kvm_bindings::kvm_irqchip>()),
        "KVM_GET_IRQCHIP",
    ),
    (
        ioc(IOC_READ, 0x9f, size_of::<kvm_bindings::kvm_pit_state2>()),
        "KVM_GET_PIT2",
    ),
    (
        ioc(IOC_READ, 0x7c, size_of::<kvm_bindings::kvm_clock_data>()),
        "KVM_GET_CLOCK",
    ),
    (libc::FIONBIO, "FIONBIO"),
    // A live migration (the API's `migrate` request): dirty logging on the RAM slot, and
    // the dirty log read each round.
    (
        ioc(
            IOC_WRITE,
            0x46,
            size_of::<kvm_bindings::kvm_userspace_memory_region>(),
        ),
        "KVM_SET_USER_MEMORY_REGION",
    ),
    (
        ioc(IOC_WRITE, 0x42, size_of::<kvm_bindings::kvm_dirty_log>()),
        "KVM_GET_DIRTY_LOG",
    ),
];

/// The ioctl requests the gdb thread may make on its duplicate of vCPU 0's fd (registers,
/// segment selectors, breakpoints and single-step) and `FIONBIO` (peeking at the client's
/// socket without blocking).
pub const GDB_IOCTLS: &[(u64, &str)] = &[
    (KVM_GET_REGS, "KVM_GET_REGS"),
    (KVM_SET_REGS, "KVM_SET_REGS"),
    (KVM_GET_SREGS, "KVM_GET_SREGS"),
    (KVM_SET_GUEST_DEBUG, "KVM_SET_GUEST_DEBUG"),
    (libc::FIONBIO, "FIONBIO"),
];

// --- Other argument values.

const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;
/// What every thread-creating `clone` sets.
const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD) as u64;
/// The `clone` flags that are checked: the thread flags must be set, the rest clear.
const CLONE_CHECKED: u64 = CLONE_THREAD_FLAGS
    | CLONE_NAMESPACES
    | (libc::CLONE_PTRACE | libc::CLONE_VFORK | libc::CLONE_PARENT | libc::CLONE_UNTRACED) as u64;

/// `FUTEX_CMD_MASK` of the kernel: every bit but `FUTEX_PRIVATE_FLAG` and
/// `FUTEX_CLOCK_REALTIME` (the operation argument is an `int`: 32 bits are compared).
const FUTEX_CMD_MASK: u64 =
    0xffff_ffff & !((libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME) as u64);
/// The futex operations std and glibc use: wait and wake, plain and with a bitset.
const FUTEX_OPS: &[u64] = &[
    libc::FUTEX_WAIT as u64,
    libc::FUTEX_WAKE as u64,
    libc::FUTEX_WAIT_BITSET as u64,
    libc::FUTEX_WAKE_BITSET as u64,
];

fn cond(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// Argument rules of one system call.
type Rules = Result<Vec<SeccompRule>, BackendError>;

fn any() -> Rules {
    Ok(Vec::new())
}

/// Argument `index` is one of `values`.
fn one_of(index: u8, values: impl IntoIterator<Item = u64>) -> Rules {
    values
        .into_iter()
        .map(|v| SeccompRule::new(vec![cond(index, SeccompCmpOp::Eq, v)?]))
        .collect()
}

fn ioctl_rules() -> Rules {
    // The kernel reads the request as an `unsigned int`: a 32-bit compare is exact.
    one_of(1, VCPU_IOCTLS.iter().map(|(r, _)| *r))
}

fn api_ioctl_rules() -> Rules {
    one_of(1, API_IOCTLS.iter().map(|(r, _)| *r))
}

fn gdb_ioctl_rules() -> Rules {
    one_of(1, GDB_IOCTLS.iter().map(|(r, _)| *r))
}

/// `write` only to stderr (messages, a panic's report).
fn stderr_only_rules() -> Rules {
    one_of(0, [libc::STDERR_FILENO as u64])
}

/// `write` only to stdout (the guest's console) and stderr.
fn stdout_stderr_rules() -> Rules {
    one_of(0, [libc::STDOUT_FILENO as u64, libc::STDERR_FILENO as u64])
}

fn api_socket_rules() -> Rules {
    one_of(0, [libc::AF_INET as u64, libc::AF_INET6 as u64])
}

fn api_fcntl_rules() -> Rules {
    one_of(
        1,
        [
            libc::F_GETFD as u64,
            libc::F_DUPFD_CLOEXEC as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
        ],
    )
}

fn futex_rules() -> Rules {
    FUTEX_OPS
        .iter()
        .map(|op| SeccompRule::new(vec![cond(1, SeccompCmpOp::MaskedEq(FUTEX_CMD_MASK), *op)?]))
        .collect()
}

fn mmap_rules() -> Rules {
    Ok(vec![SeccompRule::new(vec![
        cond(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?,
        cond(
            3,
            SeccompCmpOp::MaskedEq(libc::MAP_ANONYMOUS as u64),
            libc::MAP_ANONYMOUS as u64,
        )?,
    ])?])
}

fn mprotect_rules() -> Rules {
    Ok(vec![SeccompRule::new(vec![cond(
        2,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?])
}

fn clone_rules() -> Rules {
    Ok(vec![SeccompRule::new(vec![cond(
        0,
        SeccompCmpOp::MaskedEq(CLONE_CHECKED),
        CLONE_THREAD_FLAGS,
    )?])?])
}

fn madvise_rules() -> Rules {
    one_of(2, [libc::MADV_DONTNEED as u64])
}

fn fcntl_rules() -> Rules {
    one_of(1, [libc::F_GETFD as u64])
}

fn prctl_rules() -> Rules {
    one_of(
        0,
        [libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
    )
}

fn seccomp_rules() -> Rules {
    Ok(vec![SeccompRule::new(vec![
        cond(
            0,
            SeccompCmpOp::Eq,
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
        )?,
        cond(1, SeccompCmpOp::Eq, 0)?,
    ])?])
}

/// One allowlist entry: the documented facts and the argument rules.
struct Entry {
    doc: Allowed,
    rules: fn() -> Rules,
}

macro_rules! allow {
    ($sys:ident, $why:expr $(,)?) => {
        allow!($sys, any, "", $why)
    };
    ($sys:ident, $rules:expr, $only:expr, $why:expr $(,)?) => {
        Entry {
            doc: Allowed {
                name: syscall_label(stringify!($sys)),
                nr: libc::$sys,
                only: $only,
                why: $why,
            },
            rules: $rules,
        }
    };
}

fn syscall_label(sys: &'static str) -> &'static str {
    sys.strip_prefix("SYS_").unwrap_or(sys)
}

/// `fcntl(F_GETFD)`: std's check, in builds with debug assertions, that a descriptor is open
/// before it is closed (the threads that close descriptors).
fn std_fd_check() -> Entry {
    allow!(
        SYS_fcntl,
        fcntl_rules,
        "arg1: F_GETFD",
        "std's check, in builds with debug assertions, that a descriptor is open before \
            it is closed",
    )
}

/// Entries every confined thread needs: memory, locks, time, signal return, thread end.
fn base_entries() -> Vec<Entry> {
    vec![
        allow!(
            SYS_futex,
            futex_rules,
            "arg1: FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET (±PRIVATE, \
                ±CLOCK_REALTIME)",
            "mutexes (rings, disk, console, ledger), the channel to the watchdog, joining threads",
        ),
        allow!(
            SYS_mmap,
            mmap_rules,
            "arg2 without PROT_EXEC, arg3 with MAP_ANONYMOUS",
            "the allocator (large blocks, per-thread arenas), thread stacks",
        ),
        allow!(
            SYS_mprotect,
            mprotect_rules,
            "arg2 without PROT_EXEC",
            "the allocator growing a per-thread arena, stack guard pages",
        ),
        allow!(
            SYS_munmap,
            "the allocator, thread stacks and signal stacks when a thread ends"
        ),
        allow!(
            SYS_mremap,
            "the allocator growing large buffers (console capture, op logs)"
        ),
        allow!(
            SYS_madvise,
            madvise_rules,
            "arg2: MADV_DONTNEED",
            "the allocator returning memory; glibc releasing a finished thread's stack; the \
             balloon releasing inflated guest RAM (vCPU thread)",
        ),
        allow!(SYS_brk, "the allocator (main arena)"),
        allow!(
            SYS_clock_gettime,
            "`Instant::now` when the vDSO falls back to the system call"
        ),
        allow!(
            SYS_rt_sigreturn,
            "returning from a signal handler (the watchdog's kick, SIGINT/SIGTERM)",
        ),
        allow!(
            SYS_sigaltstack,
            "std's stack-overflow handler: the alternate signal stack of a thread, removed when it \
                ends",
        ),
        allow!(
            SYS_rt_sigprocmask,
            "glibc blocks signals while a thread ends (and around `clone` when the vCPU thread \
                starts the I/O thread)",
        ),
        allow!(SYS_exit, "the thread ends"),
        allow!(
            SYS_exit_group,
            "the process ends (including the SIGSYS handler's exit)"
        ),
    ]
}

/// Entries of the threads that serve devices (vCPU, I/O, API): output, disk I/O, yielding.
fn device_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(
            SYS_write,
            "console output to stdout (UART, PV console, console ring), messages on stderr, waking \
                the I/O thread (eventfd)",
        ),
        allow!(
            SYS_pread64,
            "disk reads (ATA, PV block: `FileExt::read_exact_at`); the balloon reading the RSS \
             from `/proc/self/statm` (opened before confinement); a vCPU reading its KVM `exits` \
             statistic when it stops (`KVM_GET_STATS_FD`, opened at vCPU creation)"
        ),
        allow!(SYS_pwrite64, "disk writes (ATA, PV block)"),
        allow!(SYS_fdatasync, "PV block flush requests (`File::sync_data`)"),
        allow!(
            SYS_sched_yield,
            "the polling I/O thread yields its core every 64 spins (`thread::yield_now`)",
        ),
    ];
    v.extend(base_entries());
    v
}

fn vcpu_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(
            SYS_ioctl,
            ioctl_rules,
            "arg1: KVM_RUN, KVM_GET_REGS, KVM_SET_REGS, KVM_IOEVENTFD, KVM_SET_SREGS, \
                KVM_SET_MP_STATE, KVM_SIGNAL_MSI",
            "running the guest; hypercall registers without sync regs and RIP in stop reports; \
                attaching and detaching doorbell ioeventfds when the guest registers a ring; \
                starting an AP in long mode (VcpuUp, on the AP's own thread); delivering a PV \
                IPI to the in-kernel LAPICs (SendIpi, on the caller's thread)",
        ),
        allow!(
            SYS_eventfd2,
            "the doorbell eventfd of a ring registered with the eventfd transport",
        ),
        allow!(
            SYS_epoll_ctl,
            "adding and removing that eventfd in the I/O thread's epoll set"
        ),
        allow!(
            SYS_close,
            "closing a replaced doorbell eventfd; the vCPU fd when the thread ends"
        ),
        allow!(
            SYS_fcntl,
            fcntl_rules,
            "arg1: F_GETFD",
            "std's check, in builds with debug assertions, that a file descriptor is open before \
                closing it",
        ),
        allow!(
            SYS_clone,
            clone_rules,
            "arg0: CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD set, no namespace, \
                ptrace, vfork or parent flags",
            "starting the I/O thread (the first ring with the eventfd or polling transport): \
                threads only",
        ),
        allow!(
            SYS_clone3,
            "answered ENOSYS by the first program (its flags cannot be checked), so glibc falls \
                back to `clone`",
        ),
        allow!(
            SYS_set_robust_list,
            "the new I/O thread registers its robust futex list (glibc), before it confines itself",
        ),
        allow!(
            SYS_rseq,
            "the new I/O thread registers restartable sequences (glibc), before it confines itself",
        ),
        allow!(
            SYS_sched_getaffinity,
            "the new I/O thread reads its stack bounds for std's stack guard \
                (`pthread_getattr_np`), before it confines itself",
        ),
        allow!(
            SYS_gettid,
            "std notes the new I/O thread's id as it starts, before it confines itself",
        ),
        allow!(
            SYS_prctl,
            prctl_rules,
            "arg0: PR_SET_NAME, PR_SET_NO_NEW_PRIVS",
            "the new I/O thread names itself and sets no-new-privs before adding its filter",
        ),
        allow!(
            SYS_seccomp,
            seccomp_rules,
            "arg0: SECCOMP_SET_MODE_FILTER, arg1 (flags): 0",
            "the new I/O thread adds its own, narrower filter (a filter can only remove rights)",
        ),
        allow!(
            SYS_epoll_wait,
            "only for the I/O thread, which is started from this thread and inherits this list",
        ),
        allow!(
            SYS_clock_nanosleep,
            "only for the I/O thread (inherits this list): its sleeps between poll steps of an \
                idle polled ring",
        ),
        allow!(SYS_nanosleep, "as `clock_nanosleep` (older glibc)"),
        allow!(
            SYS_read,
            "counting the doorbells an eventfd absorbed when its ring is registered anew; the I/O \
                thread (which inherits this list) reads its eventfds",
        ),
    ];
    v.extend(device_entries());
    v
}

fn io_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(
            SYS_epoll_wait,
            "waiting for doorbell eventfds and the wake eventfd; one non-blocking look per 64 \
                polling spins",
        ),
        allow!(
            SYS_read,
            "reading an eventfd's counter (doorbell notifications, wake-ups)"
        ),
        allow!(
            SYS_clock_nanosleep,
            "sleeping between poll steps once a polled ring is idle (`thread::sleep`, at most \
                500 µs; src/io/poll_pacer.rs)",
        ),
        allow!(SYS_nanosleep, "as `clock_nanosleep` (older glibc)"),
    ];
    v.extend(device_entries());
    v
}

fn api_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(
            SYS_ioctl,
            api_ioctl_rules,
            "arg1: KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_XSAVE, KVM_GET_XCRS, KVM_GET_LAPIC, \
                KVM_GET_MP_STATE, KVM_GET_VCPU_EVENTS, KVM_GET_MSRS, KVM_GET_IRQCHIP, \
                KVM_GET_PIT2, KVM_GET_CLOCK, FIONBIO, KVM_SET_USER_MEMORY_REGION, \
                KVM_GET_DIRTY_LOG",
            "a snapshot reads the paused vCPU's and the VM's state; a connection is made \
                blocking; a live migration logs dirty pages",
        ),
        allow!(SYS_accept4, "accepting a connection on the API socket"),
        allow!(
            SYS_socket,
            api_socket_rules,
            "arg0: AF_INET, AF_INET6",
            "a live migration's TCP connection to its target",
        ),
        allow!(SYS_connect, "a live migration connecting to its target"),
        allow!(
            SYS_poll,
            "connecting with a timeout (std's `connect_timeout`)"
        ),
        allow!(SYS_ppoll, "as `poll` (newer glibc)"),
        allow!(
            SYS_getsockopt,
            "the connection's error after a connect with a timeout"
        ),
        allow!(SYS_read, "reading requests; `/proc/swaps` (a snapshot)"),
        allow!(SYS_recvfrom, "reading requests (std's socket reads)"),
        allow!(SYS_sendto, "writing replies (std's socket writes)"),
        allow!(SYS_setsockopt, "the connection's read and write timeouts"),
        allow!(
            SYS_fcntl,
            api_fcntl_rules,
            "arg1: F_GETFD, F_DUPFD_CLOEXEC, F_GETFL, F_SETFL",
            "duplicating a connection for its writer; std's debug check of a descriptor",
        ),
        allow!(SYS_close, "closing connections and snapshot files"),
        allow!(
            SYS_openat,
            "creating the snapshot's files; reading `/proc/swaps`"
        ),
        allow!(SYS_mkdir, "creating the snapshot directory"),
        allow!(
            SYS_statx,
            "`create_dir_all` checking an existing directory; sizing a file read"
        ),
        allow!(SYS_newfstatat, "as `statx` (older glibc)"),
        allow!(SYS_fstat, "as `statx` (older glibc)"),
        allow!(SYS_lseek, "std reading a file to its end"),
        allow!(SYS_ftruncate, "sizing the memory file (holes)"),
        allow!(SYS_rename, "putting the state file in place atomically"),
        allow!(
            SYS_unlink,
            "removing a stale state file; the socket at the end"
        ),
        allow!(
            SYS_mincore,
            "finding guest pages that were never resident (holes without reading)"
        ),
        allow!(
            SYS_clock_nanosleep,
            "the accept loop's sleep between looks (`thread::sleep`)"
        ),
        allow!(SYS_nanosleep, "as `clock_nanosleep` (older glibc)"),
    ];
    v.extend(device_entries());
    v
}

fn console_entries() -> Vec<Entry> {
    let mut v = vec![allow!(
        SYS_write,
        stdout_stderr_rules,
        "arg0: 1 (stdout), 2 (stderr)",
        "the guest's console output to stdout; a panic's message on stderr",
    )];
    v.extend(base_entries());
    v
}

fn net_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(
            SYS_epoll_wait,
            "waiting for the backend's fd (the TAP device) and the loop's wake eventfd"
        ),
        allow!(SYS_read, "the wake eventfd's counter"),
        allow!(
            SYS_readv,
            "one frame from the TAP device (head buffer plus overflow, `TapBackend::recv`)"
        ),
        allow!(
            SYS_write,
            "raising the NIC's interrupt (an irqfd) or a PV ring's completion interrupt; a \
                panic's message on stderr",
        ),
    ];
    v.extend(base_entries());
    v
}

fn gdb_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(
            SYS_ioctl,
            gdb_ioctl_rules,
            "arg1: KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_GUEST_DEBUG, FIONBIO",
            "the stopped vCPU's registers (g/G), its segment selectors, hardware breakpoints \
                and single-step; switching the connection between blocking and non-blocking \
                to peek for the client's Ctrl-C",
        ),
        allow!(SYS_accept4, "accepting the one client connection"),
        allow!(SYS_setsockopt, "`TCP_NODELAY` on the connection"),
        allow!(
            SYS_recvfrom,
            "reading packets (std's socket reads); peeking for Ctrl-C (`MSG_PEEK`)"
        ),
        allow!(SYS_sendto, "writing replies (std's socket writes)"),
        allow!(
            SYS_write,
            stderr_only_rules,
            "arg0: 2 (stderr)",
            "messages on stderr (a failed session, a refused software breakpoint)",
        ),
        allow!(
            SYS_close,
            "the listener after the accept, the connection and the vCPU fd's duplicate at \
                the end"
        ),
        std_fd_check(),
    ];
    v.extend(base_entries());
    v
}

fn migrate_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(
            SYS_ioctl,
            api_ioctl_rules,
            "arg1: as for the API thread",
            "dirty logging on the RAM slot and the dirty log each round; the paused VM's \
                state; `FIONBIO` around the connect with a timeout",
        ),
        allow!(
            SYS_socket,
            api_socket_rules,
            "arg0: AF_INET, AF_INET6",
            "the TCP connection to the target",
        ),
        allow!(SYS_connect, "connecting to the target"),
        allow!(
            SYS_poll,
            "connecting with a timeout (std's `connect_timeout`)"
        ),
        allow!(SYS_ppoll, "as `poll` (newer glibc)"),
        allow!(
            SYS_getsockopt,
            "the connection's error after a connect with a timeout"
        ),
        allow!(
            SYS_setsockopt,
            "the connection's timeouts and `TCP_NODELAY`"
        ),
        allow!(SYS_recvfrom, "the target's verdict (std's socket reads)"),
        allow!(SYS_sendto, "the stream (std's socket writes)"),
        allow!(
            SYS_write,
            stderr_only_rules,
            "arg0: 2 (stderr)",
            "the outcome on stderr",
        ),
        allow!(SYS_close, "the connection at the end"),
        std_fd_check(),
        allow!(
            SYS_clock_nanosleep,
            "the wait before the migration starts (`thread::sleep`)"
        ),
        allow!(SYS_nanosleep, "as `clock_nanosleep` (older glibc)"),
    ];
    v.extend(base_entries());
    v
}

/// `shutdown(fd, SHUT_WR)` only: the end of the verdict on a refused stream.
fn shutdown_write_rules() -> Rules {
    one_of(1, [libc::SHUT_WR as u64])
}

/// `setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, …)` only: the bound on draining a refused stream.
fn receive_timeout_rules() -> Rules {
    Ok(vec![SeccompRule::new(vec![
        cond(1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64)?,
        cond(2, SeccompCmpOp::Eq, libc::SO_RCVTIMEO as u64)?,
    ])?])
}

fn incoming_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(SYS_recvfrom, "reading the stream (std's socket reads)"),
        allow!(
            SYS_read,
            "glibc reading `/proc/sys/vm/overcommit_memory` when it first trims a thread \
                arena's heap (this thread may open files, so that open is not refused)"
        ),
        allow!(
            SYS_sendto,
            "the verdict on a refused stream (std's socket writes)"
        ),
        allow!(
            SYS_shutdown,
            shutdown_write_rules,
            "arg1: SHUT_WR",
            "ending the target's side after the verdict on a refused stream",
        ),
        allow!(
            SYS_setsockopt,
            receive_timeout_rules,
            "arg1: SOL_SOCKET, arg2: SO_RCVTIMEO",
            "the time bound on draining a refused stream before the close",
        ),
        allow!(
            SYS_mkdir,
            "creating the snapshot directory (`create_dir_all`)"
        ),
        allow!(SYS_statx, "`create_dir_all` on an existing directory"),
        allow!(SYS_newfstatat, "as `statx` (older glibc)"),
        allow!(
            SYS_openat,
            "creating the memory file and the state file in that directory"
        ),
        allow!(
            SYS_ftruncate,
            "sizing the memory file to the RAM size (holes)"
        ),
        allow!(SYS_pwrite64, "pages into the memory file at their offsets"),
        allow!(SYS_write, "the state file; messages on stderr"),
        allow!(SYS_close, "the files; the connection of a refused stream"),
        allow!(SYS_unlink, "removing the files of a refused stream"),
        std_fd_check(),
    ];
    v.extend(base_entries());
    v
}

fn output_reader_entries() -> Vec<Entry> {
    let mut v = vec![
        allow!(SYS_read, "the child's stdout or stderr pipe"),
        allow!(
            SYS_write,
            stderr_only_rules,
            "arg0: 2 (stderr)",
            "a panic's message on stderr",
        ),
        allow!(SYS_close, "the pipe at its end"),
        std_fd_check(),
    ];
    v.extend(base_entries());
    v
}

fn entries(kind: ThreadKind) -> Vec<Entry> {
    match kind {
        ThreadKind::Vcpu => vcpu_entries(),
        ThreadKind::Io => io_entries(),
        ThreadKind::Api => api_entries(),
        ThreadKind::Console => console_entries(),
        ThreadKind::Net => net_entries(),
        ThreadKind::Gdb => gdb_entries(),
        ThreadKind::Migrate => migrate_entries(),
        ThreadKind::Incoming => incoming_entries(),
        ThreadKind::OutputReader => output_reader_entries(),
    }
}

/// The allowlist of `kind`, sorted by name.
pub fn allowlist(kind: ThreadKind) -> Vec<Allowed> {
    let mut v: Vec<Allowed> = entries(kind).into_iter().map(|e| e.doc).collect();
    v.sort_by_key(|a| a.name);
    v
}

/// The default action for a system call outside the allowlist: `SIGSYS` to the thread
/// ([`sigsys`] reports it and ends the process). To survey a new code path, make this
/// [`SeccompAction::Log`] in a local build: every call the allowlist lacks is then logged
/// by the kernel (`audit: type=1326 … comm="pvkit-vcpu0" … syscall=N` in `dmesg`) and
/// allowed (docs/SECURITY.md, "How the lists were made").
fn default_action() -> SeccompAction {
    SeccompAction::Trap
}

fn arch() -> TargetArch {
    TargetArch::x86_64
}

fn compile(kind: ThreadKind) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |source| SeccompError::Build {
        thread: kind.name(),
        source,
    };
    let mut programs = Vec::new();
    if kind == ThreadKind::Vcpu {
        let clone3: BTreeMap<i64, Vec<SeccompRule>> =
            [(libc::SYS_clone3, Vec::new())].into_iter().collect();
        let f = SeccompFilter::new(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch(),
        )
        .map_err(err)?;
        programs.push(f.try_into().map_err(err)?);
    }
    let entries = entries(kind);
    let opens_files = entries.iter().any(|e| e.doc.nr == libc::SYS_openat);
    if !opens_files {
        programs.push(glibc_open_refusal().map_err(err)?);
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for e in entries {
        rules.insert(e.doc.nr, (e.rules)().map_err(err)?);
    }
    if !opens_files {
        // Passed on to `glibc_open_refusal`'s program, which answers it with `EACCES`;
        // an `openat` of any other shape still traps here.
        rules.insert(
            libc::SYS_openat,
            one_of(2, [(libc::O_RDONLY | libc::O_CLOEXEC) as u64]).map_err(err)?,
        );
    }
    let f =
        SeccompFilter::new(rules, default_action(), SeccompAction::Allow, arch()).map_err(err)?;
    programs.push(f.try_into().map_err(err)?);
    Ok(programs)
}

/// For a thread that opens no files: every `openat` fails with `EACCES` instead of killing
/// the process.
///
/// glibc may open `/proc/sys/vm/overcommit_memory` (`O_RDONLY | O_CLOEXEC`) from any
/// thread, the first time a thread arena's heap shrinks (`check_may_shrink_heap`), which
/// cloud-hypervisor also met (its issue 3609). Refused, glibc trims that heap with
/// `madvise(MADV_DONTNEED)` instead, which is allowed. [`use_main_arena_only`] avoids
/// thread arenas in the `pvkit` binary, but a VM run inside a process whose threads already
/// made arenas (a test harness, the lifecycle bench) may still reuse one. Seccomp takes the
/// strictest action of all filters, so the thread's main filter passes exactly that
/// `openat` shape (any other still traps) and this one answers it with `EACCES`: no file is
/// ever opened.
fn glibc_open_refusal() -> Result<BpfProgram, BackendError> {
    let openat: BTreeMap<i64, Vec<SeccompRule>> =
        [(libc::SYS_openat, Vec::new())].into_iter().collect();
    SeccompFilter::new(
        openat,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch(),
    )?
    .try_into()
}

thread_local! {
    // Const-initialized, no drop glue: readable from the SIGSYS handler.
    static CONFINED: Cell<u8> = const { Cell::new(0) };
}

/// The filter the current thread was confined with by [`Confinement::apply`], if any.
pub fn confined() -> Option<ThreadKind> {
    ThreadKind::from_tag(CONFINED.with(Cell::get))
}

/// Compiled filters for one thread, built before the thread starts and applied by it.
#[derive(Clone, Debug)]
pub struct Confinement {
    kind: ThreadKind,
    programs: Vec<BpfProgram>,
}

impl Confinement {
    /// Compiles the filters of `kind`.
    pub fn new(kind: ThreadKind) -> Result<Self, SeccompError> {
        Ok(Self {
            kind,
            programs: compile(kind)?,
        })
    }

    /// For the thread about to start the I/O thread: the I/O thread's filter if the current
    /// thread is confined (the new thread inherits that confinement and narrows it), else
    /// `None` (seccomp is off for this VM).
    pub fn for_new_io_thread() -> Result<Option<Self>, SeccompError> {
        match confined() {
            Some(_) => Self::new(ThreadKind::Io).map(Some),
            None => Ok(None),
        }
    }

    /// The filters of `kind` when `on` (seccomp is on for this VM), else `None`: for a
    /// thread about to be started by an unconfined thread, which applies them first thing.
    pub fn when(on: bool, kind: ThreadKind) -> Result<Option<Self>, SeccompError> {
        match on {
            true => Self::new(kind).map(Some),
            false => Ok(None),
        }
    }

    /// The thread kind.
    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// Confines the calling thread (for good: filters cannot be removed). Installs the
    /// process's `SIGSYS` handler first if that was not done yet.
    pub fn apply(self) -> Result<(), SeccompError> {
        install_sigsys_handler()?;
        for p in &self.programs {
            seccompiler::apply_filter(p).map_err(|source| SeccompError::Install {
                thread: self.kind.name(),
                source,
            })?;
            // From the first program on, the thread is confined: name it in a violation.
            CONFINED.with(|c| c.set(self.kind.tag()));
        }
        Ok(())
    }
}

/// Makes every thread allocate from glibc's main arena. Call before the VM's threads start.
///
/// A thread arena's heap-trimming path (`shrink_heap`) reads
/// `/proc/sys/vm/overcommit_memory` with `openat` the first time it runs, which a confined
/// thread may not do (seen as a SIGSYS kill of the vCPU thread in a long block benchmark).
/// The main arena trims with `brk`/`madvise`, which are allowed. One arena costs nothing
/// here: the VM has one vCPU thread and one I/O thread.
pub fn use_main_arena_only() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `mallopt` only changes allocator tuning; `M_ARENA_MAX` with a positive value
        // is a documented, always-valid setting. Its return value (1 on success) is not
        // needed: on failure threads keep their own arenas, as before.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    });
}

/// `siginfo_t` of a `SIGSYS` from seccomp (`_sigsys` of include/uapi/asm-generic/siginfo.h,
/// x86_64 layout: three ints, padding, then the union).
#[repr(C)]
struct SigsysInfo {
    signo: c_int,
    errno: c_int,
    code: c_int,
    _pad: c_int,
    call_addr: *mut c_void,
    syscall: c_int,
    arch: u32,
}

/// `si_code` of a `SIGSYS` sent by seccomp.
const SYS_SECCOMP: c_int = 1;

/// A fixed-size buffer for the `SIGSYS` message: no allocation in a signal handler.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for b in s {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = *b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        self.push(digits.get(i..).unwrap_or_default());
    }
}

/// The `SIGSYS` handler: one line on stderr naming the thread and the system call, then
/// `_exit(STATUS_SECCOMP)`. Nothing else runs: the thread may be under the guest's
/// control, so no destructor, flush or unwinding is trusted. Only async-signal-safe calls
/// (`write`, `_exit`), both allowed by every filter.
extern "C" fn sigsys(_num: c_int, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    line.push(b"pvkit: seccomp: the ");
    let thread = ThreadKind::from_tag(CONFINED.with(Cell::get)).map_or("unconfined", |k| k.name());
    line.push(thread.as_bytes());
    line.push(b" thread made a forbidden system call: ");
    // SAFETY: the kernel passes a valid `siginfo_t` (128 bytes, SA_SIGINFO), of which
    // `SigsysInfo` is a prefix with the kernel's layout; only plain integers are read.
    let (code, nr) = unsafe {
        let i = &*(info as *const SigsysInfo);
        (i.code, i.syscall)
    };
    if code == SYS_SECCOMP {
        match syscall_name(i64::from(nr)) {
            Some(name) => {
                line.push(name.as_bytes());
                line.push(b" (");
                line.push_num(u64::from(nr.unsigned_abs()));
                line.push(b")");
            }
            None => {
                line.push(b"number ");
                line.push_num(u64::from(nr.unsigned_abs()));
            }
        }
    } else {
        line.push(b"(SIGSYS not sent by seccomp)");
    }
    line.push(b"; stopping (see docs/SECURITY.md)\n");
    let out = line.buf.get(..line.len).unwrap_or_default();
    // SAFETY: `write` and `_exit` are async-signal-safe; `out` is a valid byte slice.
    unsafe {
        libc::write(libc::STDERR_FILENO, out.as_ptr().cast(), out.len());
        libc::_exit(c_int::from(STATUS_SECCOMP));
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: a zeroed `sigaction` is a valid value (empty mask, no flags).
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction = sigsys as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            // SAFETY: `act` is fully initialized and `sigsys` has the SA_SIGINFO signature;
            // the old action is not requested. The return value is checked.
            let r = unsafe {
                libc::sigemptyset(&mut act.sa_mask);
                libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
            }
        })
        .map_err(|e| SeccompError::Handler(io::Error::from_raw_os_error(e)))
}

/// Names of the x86_64 system calls a violation is likely to involve (the allowlists and
/// the usual suspects); others are reported by number.
fn syscall_name(nr: i64) -> Option<&'static str> {
    macro_rules! names {
        ($($sys:ident),* $(,)?) => {
            $(if nr == libc::$sys { return Some(syscall_label(stringify!($sys))); })*
        };
    }
    names!(
        SYS_read,
        SYS_write,
        SYS_open,
        SYS_close,
        SYS_stat,
        SYS_fstat,
        SYS_lstat,
        SYS_poll,
        SYS_lseek,
        SYS_mmap,
        SYS_mprotect,
        SYS_munmap,
        SYS_brk,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_ioctl,
        SYS_pread64,
        SYS_pwrite64,
        SYS_readv,
        SYS_writev,
        SYS_access,
        SYS_pipe,
        SYS_select,
        SYS_sched_yield,
        SYS_mremap,
        SYS_msync,
        SYS_madvise,
        SYS_dup,
        SYS_dup2,
        SYS_nanosleep,
        SYS_getpid,
        SYS_sendfile,
        SYS_socket,
        SYS_connect,
        SYS_accept,
        SYS_sendto,
        SYS_recvfrom,
        SYS_getsockopt,
        SYS_ppoll,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_shutdown,
        SYS_bind,
        SYS_listen,
        SYS_socketpair,
        SYS_clone,
        SYS_fork,
        SYS_vfork,
        SYS_execve,
        SYS_exit,
        SYS_wait4,
        SYS_kill,
        SYS_uname,
        SYS_fcntl,
        SYS_flock,
        SYS_fsync,
        SYS_fdatasync,
        SYS_truncate,
        SYS_ftruncate,
        SYS_getcwd,
        SYS_chdir,
        SYS_rename,
        SYS_mkdir,
        SYS_rmdir,
        SYS_unlink,
        SYS_readlink,
        SYS_chmod,
        SYS_chown,
        SYS_umask,
        SYS_getrlimit,
        SYS_getuid,
        SYS_ptrace,
        SYS_setuid,
        SYS_sigaltstack,
        SYS_prctl,
        SYS_arch_prctl,
        SYS_mount,
        SYS_gettid,
        SYS_tkill,
        SYS_futex,
        SYS_sched_getaffinity,
        SYS_epoll_create,
        SYS_set_tid_address,
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_exit_group,
        SYS_epoll_wait,
        SYS_epoll_ctl,
        SYS_tgkill,
        SYS_openat,
        SYS_mkdirat,
        SYS_newfstatat,
        SYS_unlinkat,
        SYS_set_robust_list,
        SYS_epoll_pwait,
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_pipe2,
        SYS_prlimit64,
        SYS_getrandom,
        SYS_memfd_create,
        SYS_bpf,
        SYS_execveat,
        SYS_statx,
        SYS_rseq,
        SYS_pidfd_open,
        SYS_clone3,
        SYS_seccomp,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_perf_event_open,
        SYS_userfaultfd,
        SYS_keyctl,
        SYS_add_key,
        SYS_unshare,
        SYS_setns,
        SYS_pkey_mprotect,
        SYS_preadv,
        SYS_pwritev,
        SYS_preadv2,
        SYS_pwritev2,
        SYS_sync_file_range,
        SYS_fallocate,
        SYS_accept4,
        SYS_setsockopt,
        SYS_mincore,
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_request_numbers() {
        // As in include/uapi/linux/kvm.h on x86_64 (kvm_regs: 144 bytes, kvm_ioeventfd: 64).
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        // kvm_sregs: 312 bytes, kvm_mp_state: 4.
        assert_eq!(KVM_SET_SREGS, 0x4138_ae84);
        assert_eq!(KVM_SET_MP_STATE, 0x4004_ae99);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        // kvm_guest_debug: 72 bytes.
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_SET_GUEST_DEBUG, 0x4048_ae9b);
    }

    #[test]
    fn threads_started_unconfined_cannot_start_threads_or_add_filters() {
        // Their thread start ran before the filter; nothing after it needs these.
        for kind in ALL_KINDS.into_iter().skip(2) {
            for a in allowlist(kind) {
                assert!(
                    !["clone", "clone3", "prctl", "seccomp", "execve", "kill", "tgkill"]
                        .contains(&a.name),
                    "{kind:?} allows {}",
                    a.name
                );
            }
        }
        // Threads that only print messages write to stderr (the console writer: and stdout).
        for (kind, only) in [
            (ThreadKind::Console, "arg0: 1 (stdout), 2 (stderr)"),
            (ThreadKind::Gdb, "arg0: 2 (stderr)"),
            (ThreadKind::Migrate, "arg0: 2 (stderr)"),
            (ThreadKind::OutputReader, "arg0: 2 (stderr)"),
        ] {
            let write = allowlist(kind).into_iter().find(|a| a.name == "write");
            assert_eq!(write.map(|a| a.only), Some(only), "{kind:?}");
        }
    }

    #[test]
    fn every_filter_compiles() {
        // The vCPU thread's clone3 program; a read-only-open refusal on every thread whose
        // allowlist has no `openat`; the allowlist.
        assert_eq!(compile(ThreadKind::Vcpu).unwrap().len(), 3);
        for kind in ALL_KINDS.into_iter().skip(1) {
            let opens = allowlist(kind).iter().any(|a| a.name == "openat");
            let want = if opens { 1 } else { 2 };
            assert_eq!(compile(kind).unwrap().len(), want, "{kind:?}");
        }
        for kind in ALL_KINDS {
            let c = Confinement::new(kind).unwrap();
            assert_eq!(c.kind(), kind);
            assert!(c.programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
    }

    #[test]
    fn lists_have_no_duplicates_and_every_entry_says_why() {
        for kind in ALL_KINDS {
            let list = allowlist(kind);
            for w in list.windows(2) {
                assert_ne!(w[0].name, w[1].name, "{kind:?}");
            }
            for a in &list {
                assert!(!a.why.is_empty(), "{}", a.name);
                assert_eq!(syscall_name(a.nr), Some(a.name), "{}", a.name);
            }
        }
    }

    #[test]
    fn the_io_list_is_within_the_vcpu_list() {
        // The I/O thread inherits the vCPU filter: a call the vCPU list lacks could never
        // reach the I/O thread's own list.
        let vcpu = allowlist(ThreadKind::Vcpu);
        for a in allowlist(ThreadKind::Io) {
            let v = vcpu.iter().find(|v| v.nr == a.nr);
            let v = v.unwrap_or_else(|| panic!("{} is not in the vCPU list", a.name));
            assert_eq!(v.only, a.only, "{}: the I/O thread would get less", a.name);
        }
    }

    #[test]
    fn an_unconfined_thread_starts_an_unconfined_io_thread() {
        assert_eq!(confined(), None);
        assert!(Confinement::for_new_io_thread().unwrap().is_none());
    }

    #[test]
    fn names_and_numbers_in_the_violation_line() {
        assert_eq!(syscall_name(libc::SYS_socket), Some("socket"));
        assert_eq!(syscall_name(libc::SYS_openat), Some("openat"));
        assert_eq!(syscall_name(100_000), None);
        for (n, s) in [
            (0u64, "0"),
            (7, "7"),
            (41, "41"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut l = Line {
                buf: [0; 160],
                len: 0,
            };
            l.push(b"n=");
            l.push_num(n);
            assert_eq!(&l.buf[..l.len], format!("n={s}").as_bytes());
        }
        // Longer than the buffer: cut, never out of bounds.
        let mut l = Line {
            buf: [0; 160],
            len: 0,
        };
        l.push(&[b'a'; 200]);
        assert_eq!(l.len, 160);
    }

    /// The allowlist table of `kind` in docs/SECURITY.md: the first column of the rows under
    /// the heading `### <kind> thread`.
    fn documented(kind: ThreadKind) -> Vec<String> {
        let doc = include_str!("../../../docs/SECURITY.md");
        let section = doc
            .split("\n## Confinement")
            .nth(1)
            .expect("a Confinement section");
        let heading = format!("### {} thread", kind.name());
        let table = section
            .split(heading.as_str())
            .nth(1)
            .unwrap_or_else(|| panic!("no {heading:?} in the Confinement section"));
        table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .filter_map(|l| l.split('|').nth(1))
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn security_md_lists_exactly_the_allowed_calls() {
        for kind in ALL_KINDS {
            let mut doc = documented(kind);
            doc.sort();
            let mut code: Vec<String> = allowlist(kind).iter().map(|a| a.name.to_owned()).collect();
            code.sort();
            assert_eq!(doc, code, "docs/SECURITY.md, {} thread", kind.name());
        }
    }
}
