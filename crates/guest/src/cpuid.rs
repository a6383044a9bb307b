//! Detecting pvkit through the CPUID hypervisor leaves ([`pvkit_abi::cpuid`]).
//!
//! CPUID is answered by KVM in the kernel, never by the VMM in userspace, so detection
//! costs no exit to the VMM (it is still an exit to KVM: ~16k cycles from ring 0 here).
//! On bare metal, leaves above the basic range return the data of the highest basic
//! leaf, which never spells the signature, so detection is safe there too.

use pvkit_abi::{
    cpuid::{Features, LEAF_BASE, LEAF_FEATURES},
    AbiVersion,
};

/// What the pvkit CPUID leaves say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvkitInfo {
    /// The highest pvkit leaf (EAX of [`LEAF_BASE`]).
    pub max_leaf: u32,
    /// The host's ABI version.
    pub version: AbiVersion,
    /// The host's feature bits (unknown bits dropped).
    pub features: Features,
}

/// Whether the hypervisor leaves carry the pvkit signature (one `cpuid`), and if so the
/// highest pvkit leaf.
pub fn signature() -> Option<u32> {
    let r = core::arch::x86_64::__cpuid(LEAF_BASE);
    matches_signature(r.ebx, r.ecx, r.edx).then_some(r.eax)
}

/// Detects pvkit and reads its version and features (two `cpuid`s).
pub fn detect() -> Option<PvkitInfo> {
    let max_leaf = signature()?;
    if max_leaf < LEAF_FEATURES {
        return Some(PvkitInfo {
            max_leaf,
            version: AbiVersion { major: 0, minor: 0 },
            features: Features::empty(),
        });
    }
    let r = core::arch::x86_64::__cpuid(LEAF_FEATURES);
    Some(PvkitInfo {
        max_leaf,
        version: AbiVersion {
            major: r.eax,
            minor: r.ebx,
        },
        features: Features::from_bits_truncate(u64::from(r.ecx) | u64::from(r.edx) << 32),
    })
}

/// Whether EBX, ECX, EDX of [`LEAF_BASE`] spell [`pvkit_abi::cpuid::SIGNATURE`].
pub fn matches_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
    const EXPECTED: [u32; 3] = pvkit_abi::cpuid::signature_registers();
    [ebx, ecx, edx] == EXPECTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_registers_match() {
        let [b, c, d] = pvkit_abi::cpuid::signature_registers();
        assert!(matches_signature(b, c, d));
        assert!(!matches_signature(c, b, d));
        // KVM's own signature is not ours.
        let kvm = *b"KVMKVMKVM\0\0\0";
        let w = |i: usize| u32::from_le_bytes([kvm[i], kvm[i + 1], kvm[i + 2], kvm[i + 3]]);
        assert!(!matches_signature(w(0), w(4), w(8)));
    }
}
