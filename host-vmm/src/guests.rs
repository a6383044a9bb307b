//! The guests built with the VMM (see `build.rs`): the pvkit guest kernel, embedded as the
//! built-in guest, and the path of the `hello-os` example guest.

/// The built-in guest kernel (`pvkit-guest-kernel`), or `None` when the VMM was built
/// without the guest workspace.
pub fn builtin_kernel() -> Option<&'static [u8]> {
    static KERNEL: &[u8] = include_bytes!(env!("PVKIT_GUEST_KERNEL_ELF"));
    (!KERNEL.is_empty()).then_some(KERNEL)
}

/// Path of the `hello-os` example guest as built with this VMM, or `None` when the VMM was
/// built without the guest workspace.
pub fn example_guest_path() -> Option<&'static str> {
    builtin_kernel().map(|_| env!("PVKIT_EXAMPLE_GUEST_ELF"))
}

/// `"built"`, or why there is no built-in guest.
pub const BUILD_STATUS: &str = env!("PVKIT_GUEST_STATUS");

/// Path of the `hostile-os` guest (the security tests' guest) as built with this VMM; an
/// empty file when the VMM was built without the guest workspace.
pub const HOSTILE_GUEST_ELF: &str = env!("PVKIT_HOSTILE_GUEST_ELF");
