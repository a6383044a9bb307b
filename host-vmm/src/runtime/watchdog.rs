//! The watchdog's kick: a real-time signal that forces the vCPU thread out of `KVM_RUN`.
//!
//! The vCPU thread registers the address of its `kvm_run.immediate_exit` byte in a
//! thread-local ([`ArmGuard`]). The signal handler, which runs on the vCPU thread, sets that
//! byte, so the signal cannot be lost in the window between the run loop's check and the
//! next `KVM_RUN`: if it lands outside the kernel, the next `KVM_RUN` returns `EINTR` at
//! once. The watchdog side ([`kick`]) sets the machine's `stop_requested` flag first and
//! then signals, repeatedly, until the vCPU thread reports back.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

use thiserror::Error;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Errors setting up the kick signal.
#[derive(Debug, Error, Clone)]
pub enum WatchdogError {
    /// The signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Install(vmm_sys_util::errno::Error),
    /// The vCPU thread could not be signalled.
    #[error("cannot signal the vCPU thread: {0}")]
    Kick(vmm_sys_util::errno::Error),
}

thread_local! {
    // Const-initialized and without drop glue: safe to touch from a signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick the vCPU thread.
pub fn kick_signal() -> c_int {
    SIGRTMIN() + 1
}

extern "C" fn handle_kick(_num: c_int, _info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` was registered by `ArmGuard::new` on this very thread (the handler
        // runs on the thread the signal was sent to) and points to the `immediate_exit`
        // byte of a `kvm_run` mapping that stays alive until the guard is dropped, which
        // clears the pointer first. A volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the kick signal handler (once per process).
pub fn install() -> Result<(), WatchdogError> {
    static INSTALLED: OnceLock<Result<(), WatchdogError>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            register_signal_handler(kick_signal(), handle_kick).map_err(WatchdogError::Install)
        })
        .clone()
}

/// While alive, a kick on this thread sets the registered `immediate_exit` byte.
#[derive(Debug)]
pub struct ArmGuard {
    _not_send: std::marker::PhantomData<*mut u8>,
}

impl ArmGuard {
    /// Arms the current thread.
    ///
    /// # Safety
    ///
    /// `immediate_exit` must point to the `immediate_exit` byte of a live `kvm_run`
    /// mapping and stay valid until the returned guard is dropped on this thread.
    pub unsafe fn new(immediate_exit: *mut u8) -> Self {
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        Self {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for ArmGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// Sends the kick signal to the vCPU thread.
pub fn kick<T>(thread: &std::thread::JoinHandle<T>) -> Result<(), WatchdogError> {
    thread.kill(kick_signal()).map_err(WatchdogError::Kick)
}
