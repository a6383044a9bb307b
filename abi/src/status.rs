//! Status codes: negative errno-style values returned in `RAX`.

/// The result of a hypercall, as returned in `RAX`: `0` for success or a negative
/// errno-style value. The numbers are Linux's errno values, negated.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The caller may not do this.
    EPERM = -1,
    /// The host failed to perform the I/O (host read/write/flush error).
    EIO = -5,
    /// An argument list (segment count, batch) is longer than the documented maximum.
    E2BIG = -7,
    /// The resource is busy; retry later.
    EAGAIN = -11,
    /// The host could not allocate what the request needs.
    ENOMEM = -12,
    /// A guest-physical address range is not entirely inside guest RAM.
    EFAULT = -14,
    /// The resource is already in use (e.g. a ring is already registered).
    EBUSY = -16,
    /// An argument is invalid (bad alignment, bad length, bad enum value).
    EINVAL = -22,
    /// The host's backing store is full.
    ENOSPC = -28,
    /// A value is outside the permitted range (e.g. sector past the end of the disk).
    ERANGE = -34,
    /// Unknown hypercall number.
    ENOSYS = -38,
    /// The call is known but this host does not offer it (feature not present).
    EOPNOTSUPP = -95,
}

impl Status {
    /// The value placed in `RAX`.
    pub const fn to_raw(self) -> u64 {
        self as i64 as u64
    }

    /// Whether this is [`Status::Ok`].
    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Ok)
    }

    /// A short name, e.g. `"EFAULT"`.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::EPERM => "EPERM",
            Status::EIO => "EIO",
            Status::E2BIG => "E2BIG",
            Status::EAGAIN => "EAGAIN",
            Status::ENOMEM => "ENOMEM",
            Status::EFAULT => "EFAULT",
            Status::EBUSY => "EBUSY",
            Status::EINVAL => "EINVAL",
            Status::ENOSPC => "ENOSPC",
            Status::ERANGE => "ERANGE",
            Status::ENOSYS => "ENOSYS",
            Status::EOPNOTSUPP => "EOPNOTSUPP",
        }
    }
}

/// A raw status value that is not one of [`Status`]'s codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownStatus(pub u64);

impl TryFrom<u64> for Status {
    type Error = UnknownStatus;

    fn try_from(raw: u64) -> Result<Self, Self::Error> {
        Ok(match raw as i64 {
            0 => Status::Ok,
            -1 => Status::EPERM,
            -5 => Status::EIO,
            -7 => Status::E2BIG,
            -11 => Status::EAGAIN,
            -12 => Status::ENOMEM,
            -14 => Status::EFAULT,
            -16 => Status::EBUSY,
            -22 => Status::EINVAL,
            -28 => Status::ENOSPC,
            -34 => Status::ERANGE,
            -38 => Status::ENOSYS,
            -95 => Status::EOPNOTSUPP,
            _ => return Err(UnknownStatus(raw)),
        })
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 13] = [
        Status::Ok,
        Status::EPERM,
        Status::EIO,
        Status::E2BIG,
        Status::EAGAIN,
        Status::ENOMEM,
        Status::EFAULT,
        Status::EBUSY,
        Status::EINVAL,
        Status::ENOSPC,
        Status::ERANGE,
        Status::ENOSYS,
        Status::EOPNOTSUPP,
    ];

    #[test]
    fn round_trip_every_status() {
        for s in ALL {
            assert_eq!(Status::try_from(s.to_raw()), Ok(s));
        }
    }

    #[test]
    fn errno_values_are_linux_values() {
        assert_eq!(Status::ENOSYS.to_raw() as i64, -38);
        assert_eq!(Status::EFAULT.to_raw() as i64, -14);
        assert_eq!(Status::EINVAL.to_raw() as i64, -22);
        assert_eq!(Status::EIO.to_raw() as i64, -5);
    }

    #[test]
    fn unknown_status_is_an_error() {
        assert_eq!(Status::try_from(1), Err(UnknownStatus(1)));
        assert_eq!(
            Status::try_from(-4096i64 as u64),
            Err(UnknownStatus(-4096i64 as u64))
        );
        assert_eq!(
            Status::try_from(u64::MAX / 2),
            Err(UnknownStatus(u64::MAX / 2))
        );
    }
}
