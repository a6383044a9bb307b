//! Network namespaces without an `ip` binary: create one (optionally named in
//! `/run/netns/NAME`, where `ip netns exec NAME ...` finds it), open a named one, and run
//! code inside one.
//!
//! Namespaces are per thread in Linux, so nothing here moves the caller's threads: a new
//! namespace is made by `unshare(CLONE_NEWNET)` in a short-lived helper thread, which opens
//! `/proc/thread-self/ns/net` (the descriptor keeps the namespace alive) and, for a named
//! one, bind-mounts that file onto `/run/netns/NAME` as iproute2 does. [`NetNs::run_in`]
//! runs a closure on a scoped helper thread that `setns`'d into the namespace; descriptors
//! it opens (a TAP device, a socket) stay bound to that namespace after the thread ends.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where named namespaces live (the iproute2 convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The caller lacks the privilege for `op`.
    #[error(
        "{op}: permission denied; network namespaces and TAP devices need root \
         (CAP_SYS_ADMIN to create or enter a namespace, CAP_NET_ADMIN for the device)"
    )]
    PermissionDenied {
        /// The operation that failed.
        op: &'static str,
    },
    /// The name is not usable as a file name in [`NETNS_RUN_DIR`].
    #[error("namespace name {0:?} must be 1..=64 characters of [A-Za-z0-9._-], not . or ..")]
    InvalidName(String),
    /// A namespace of that name exists already; pick another name or delete it
    /// (`ip netns delete NAME`).
    #[error("network namespace {0:?} already exists in {NETNS_RUN_DIR}")]
    AlreadyExists(String),
    /// No namespace of that name exists.
    #[error("network namespace {0:?} does not exist in {NETNS_RUN_DIR}")]
    NotFound(String),
    /// Another system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The error from the kernel.
        source: io::Error,
    },
    /// The helper thread panicked.
    #[error("network namespace helper thread panicked")]
    ThreadPanicked,
}

impl NetNsError {
    /// Maps an OS error of `op`, turning `EPERM`/`EACCES` into [`NetNsError::PermissionDenied`].
    pub(crate) fn from_io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::PermissionDenied { op },
            _ => Self::Io { op, source },
        }
    }
}

/// A network namespace held open by a descriptor. One that this process created is
/// deleted when the value is dropped (its `/run/netns` entry unmounted and removed; the
/// namespace itself ends with its last descriptor and process).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    name: Option<String>,
    /// The bind mount this value created and must remove.
    owned_mount: Option<PathBuf>,
}

fn check_name(name: &str) -> Result<(), NetNsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetNsError::InvalidName(name.to_owned()))
    }
}

fn os(op: &'static str) -> impl FnOnce(io::Error) -> NetNsError {
    move |e| NetNsError::from_io(op, e)
}

fn join<T>(r: std::thread::Result<T>) -> Result<T, NetNsError> {
    r.map_err(|_| NetNsError::ThreadPanicked)
}

impl NetNs {
    /// Creates a new network namespace, named `name` in [`NETNS_RUN_DIR`] so other tools
    /// see it, with its loopback interface up. Deleted on drop.
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        check_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let name = name.to_owned();
        let ns = std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("pvkit-netns".into())
                .spawn_scoped(s, || Self::create_on_this_thread(Some((name, path))))
                .map_err(os("spawn namespace thread"))?;
            join(h.join())?
        })?;
        Ok(ns)
    }

    /// Creates a new, unnamed network namespace with its loopback up; it lives as long as
    /// this value (and whatever descriptors were opened inside it).
    pub fn create_anonymous() -> Result<Self, NetNsError> {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("pvkit-netns".into())
                .spawn_scoped(s, || Self::create_on_this_thread(None))
                .map_err(os("spawn namespace thread"))?;
            join(h.join())?
        })
    }

    /// Opens the existing namespace `name` in [`NETNS_RUN_DIR`]; it is not deleted on drop.
    pub fn open(name: &str) -> Result<Self, NetNsError> {
        check_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NetNsError::NotFound(name.to_owned()),
            _ => NetNsError::from_io("open namespace", e),
        })?;
        Ok(Self {
            file,
            name: Some(name.to_owned()),
            owned_mount: None,
        })
    }

    /// Runs on a fresh thread: unshares its network namespace, brings `lo` up, and for a
    /// named namespace bind-mounts it into [`NETNS_RUN_DIR`].
    fn create_on_this_thread(named: Option<(String, PathBuf)>) -> Result<Self, NetNsError> {
        // SAFETY: unshare(2) with a constant flag; it affects only this helper thread,
        // which ends right after. The result is checked.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetNsError::from_io(
                "unshare(CLONE_NEWNET)",
                io::Error::last_os_error(),
            ));
        }
        let file =
            File::open("/proc/thread-self/ns/net").map_err(os("open /proc/thread-self/ns/net"))?;
        crate::ifconfig::set_up("lo").map_err(os("bring up lo in the new namespace"))?;
        let Some((name, path)) = named else {
            return Ok(Self {
                file,
                name: None,
                owned_mount: None,
            });
        };
        fs::create_dir_all(NETNS_RUN_DIR).map_err(os("create /run/netns"))?;
        // The mount point: an empty file, created exclusively so an existing namespace of
        // the same name is never shadowed.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    NetNsError::AlreadyExists(name.clone())
                } else {
                    NetNsError::from_io("create the namespace mount point", e)
                }
            })?;
        if let Err(e) = bind_mount(Path::new("/proc/thread-self/ns/net"), &path) {
            let _ = fs::remove_file(&path);
            return Err(NetNsError::from_io("bind-mount the namespace", e));
        }
        Ok(Self {
            file,
            name: Some(name),
            owned_mount: Some(path),
        })
    }

    /// The name in [`NETNS_RUN_DIR`], if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Runs `f` on a helper thread inside this namespace and returns its result. File
    /// descriptors and sockets `f` opens belong to this namespace for their whole life.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("pvkit-netns".into())
                .spawn_scoped(s, move || -> Result<T, NetNsError> {
                    enter(fd)?;
                    Ok(f())
                })
                .map_err(os("spawn namespace thread"))?;
            join(h.join())?
        })
    }
}

/// Moves the calling thread into the network namespace `fd`.
pub fn enter(fd: BorrowedFd<'_>) -> Result<(), NetNsError> {
    // SAFETY: setns(2) on a borrowed, open namespace descriptor; it changes only the
    // calling thread's namespace. The result is checked.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetNsError::from_io(
            "setns(CLONE_NEWNET)",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    let (src, dst) = (cstring(src)?, cstring(dst)?);
    // SAFETY: mount(2) with two valid NUL-terminated paths that outlive the call, a null
    // filesystem type and data (ignored for MS_BIND); the result is checked.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let Some(path) = self.owned_mount.take() else {
            return;
        };
        if let Ok(c) = cstring(&path) {
            // SAFETY: umount2(2) on a valid NUL-terminated path that outlives the call; a
            // failure (already unmounted by `ip netns delete`) is harmless and ignored.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_file(&path);
    }
}
