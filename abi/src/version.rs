//! The ABI version, separate from the crate's semver.

/// A version of the pvkit ABI.
///
/// Compatibility rule: a host accepts a guest whose `major` equals its own, whatever its
/// `minor`. Feature bits are the only gate within a major version: a guest built for a newer
/// minor checks the features it needs ([`crate::cpuid::Features`]) and does without the
/// rest. A guest built for another major version is refused at load time with both
/// versions in the message.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbiVersion {
    /// Incompatible changes bump this.
    pub major: u32,
    /// Backwards-compatible additions bump this.
    pub minor: u32,
}

crate::assert_layout!(AbiVersion, size = 8, major @ 0, minor @ 4);

/// The major number of [`ABI_VERSION`] (also for C: `PVKIT_ABI_VERSION_MAJOR`).
pub const ABI_VERSION_MAJOR: u32 = 2;
/// The minor number of [`ABI_VERSION`].
pub const ABI_VERSION_MINOR: u32 = 0;

/// The ABI version this crate describes.
pub const ABI_VERSION: AbiVersion = AbiVersion {
    major: ABI_VERSION_MAJOR,
    minor: ABI_VERSION_MINOR,
};

impl AbiVersion {
    /// Packs the version into one register value: `major << 32 | minor`.
    pub const fn to_u64(self) -> u64 {
        ((self.major as u64) << 32) | self.minor as u64
    }

    /// Unpacks a value made by [`AbiVersion::to_u64`].
    pub const fn from_u64(value: u64) -> Self {
        Self {
            major: (value >> 32) as u32,
            minor: value as u32,
        }
    }

    /// Whether a host speaking `self` can run a guest built for `guest`: the same major
    /// (any minor; the guest checks feature bits).
    pub const fn host_accepts(self, guest: AbiVersion) -> bool {
        self.major == guest.major
    }
}

impl core::fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let v = AbiVersion {
            major: 7,
            minor: 0xdead_beef,
        };
        assert_eq!(AbiVersion::from_u64(v.to_u64()), v);
        assert_eq!(ABI_VERSION.to_u64(), 2 << 32);
    }

    #[test]
    fn compatibility_rule() {
        let host = AbiVersion { major: 2, minor: 2 };
        assert!(host.host_accepts(AbiVersion { major: 2, minor: 0 }));
        assert!(host.host_accepts(AbiVersion { major: 2, minor: 2 }));
        // A newer minor runs: feature bits are the gate.
        assert!(host.host_accepts(AbiVersion { major: 2, minor: 3 }));
        assert!(!host.host_accepts(AbiVersion { major: 1, minor: 0 }));
        assert!(!host.host_accepts(AbiVersion { major: 3, minor: 0 }));
        assert!(!host.host_accepts(AbiVersion { major: 0, minor: 9 }));
    }
}
