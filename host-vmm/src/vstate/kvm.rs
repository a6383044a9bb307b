//! The host platform: which KVM implementation runs the guest, the CPU, the TSC rate, and
//! opening `/dev/kvm` with an error that says what to do.

use std::fmt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};
use thiserror::Error;

/// The KVM implementation behind `/dev/kvm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformKind {
    /// `kvm_pvm`: software virtualization inside a VM. Guest ring 0 is interpreted by
    /// KVM's instruction emulator; every number measured on it is far slower than hardware.
    KvmPvm,
    /// Hardware KVM on Intel VMX.
    KvmIntel,
    /// Hardware KVM on AMD SVM.
    KvmAmd,
    /// None of the above could be identified.
    Unknown,
}

impl PlatformKind {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            PlatformKind::KvmPvm => "kvm_pvm",
            PlatformKind::KvmIntel => "kvm_intel",
            PlatformKind::KvmAmd => "kvm_amd",
            PlatformKind::Unknown => "unknown",
        }
    }

    /// Detects the platform from the loaded kernel modules (`/sys/module`). `kvm_pvm` wins
    /// when it is loaded: it is the one that serves `/dev/kvm` on such hosts.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    /// [`PlatformKind::detect`] against another module directory (for tests).
    pub fn detect_in(modules: &Path) -> Self {
        if modules.join("kvm_pvm").exists() {
            PlatformKind::KvmPvm
        } else if modules.join("kvm_intel").exists() {
            PlatformKind::KvmIntel
        } else if modules.join("kvm_amd").exists() {
            PlatformKind::KvmAmd
        } else {
            PlatformKind::Unknown
        }
    }
}

impl fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the host is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformInfo {
    /// The KVM implementation.
    pub kind: PlatformKind,
    /// The CPU model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The vCPU TSC rate in kHz (`KVM_GET_TSC_KHZ`), if known.
    pub tsc_khz: Option<u32>,
}

impl fmt::Display for PlatformInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}, TSC ", self.kind, self.cpu_model)?;
        match self.tsc_khz {
            Some(khz) => write!(f, "{khz} kHz"),
            None => f.write_str("unknown"),
        }
    }
}

/// Errors opening KVM.
#[derive(Debug, Error)]
pub enum PlatformError {
    /// `/dev/kvm` does not exist.
    #[error(
        "/dev/kvm does not exist: KVM is not available. Enable virtualization in the \
         firmware and load the module (sudo modprobe kvm_intel, or kvm_amd)"
    )]
    NoKvm,
    /// `/dev/kvm` exists but may not be opened.
    #[error(
        "permission denied opening /dev/kvm: add your user to the kvm group \
         (sudo usermod -aG kvm $USER, then log in again) or run with access to /dev/kvm"
    )]
    Permission,
    /// Another error.
    #[error("cannot open /dev/kvm: {0}")]
    Open(vmm_sys_util::errno::Error),
    /// The KVM API version is not 12.
    #[error("/dev/kvm speaks KVM API version {0}, pvkit needs 12")]
    ApiVersion(i32),
    /// A capability pvkit needs is missing.
    #[error("this KVM lacks a capability pvkit needs: {0}")]
    MissingCap(&'static str),
}

/// Opens `/dev/kvm` and checks the API version and the capabilities pvkit relies on.
pub fn open_kvm() -> Result<Kvm, PlatformError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => PlatformError::NoKvm,
        libc::EACCES | libc::EPERM => PlatformError::Permission,
        _ => PlatformError::Open(e),
    })?;
    let v = kvm.get_api_version();
    if v != 12 {
        return Err(PlatformError::ApiVersion(v));
    }
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(PlatformError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// The first `model name` in `/proc/cpuinfo`, or `"unknown CPU"`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| parse_cpu_model(&s))
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Extracts the first `model name` value from `/proc/cpuinfo` text.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_owned())
    })
}

/// Gathers [`PlatformInfo`]; `tsc_khz` comes from a vCPU (pass `None` if there is none yet).
pub fn info(tsc_khz: Option<u32>) -> PlatformInfo {
    PlatformInfo {
        kind: PlatformKind::detect(),
        cpu_model: cpu_model(),
        tsc_khz,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_parsing() {
        let s = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) X\nflags\t: a";
        assert_eq!(parse_cpu_model(s).as_deref(), Some("Intel(R) Xeon(R) X"));
        assert_eq!(parse_cpu_model("nothing"), None);
    }

    #[test]
    fn detection_order() {
        let dir = std::env::temp_dir().join(format!("pvkit-platform-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(PlatformKind::detect_in(&dir), PlatformKind::Unknown);
        std::fs::create_dir(dir.join("kvm_amd")).unwrap();
        assert_eq!(PlatformKind::detect_in(&dir), PlatformKind::KvmAmd);
        std::fs::create_dir(dir.join("kvm_intel")).unwrap();
        assert_eq!(PlatformKind::detect_in(&dir), PlatformKind::KvmIntel);
        std::fs::create_dir(dir.join("kvm_pvm")).unwrap();
        assert_eq!(PlatformKind::detect_in(&dir), PlatformKind::KvmPvm);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn display() {
        let i = PlatformInfo {
            kind: PlatformKind::KvmPvm,
            cpu_model: "X".into(),
            tsc_khz: Some(2_596_000),
        };
        assert_eq!(i.to_string(), "kvm_pvm on X, TSC 2596000 kHz");
    }
}
