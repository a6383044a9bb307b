//! The guest's CPUID table: KVM's supported leaves with KVM's own paravirtual leaves moved
//! out of the way and the pvkit leaves ([`pvkit_abi::cpuid`]) added.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use pvkit_abi::cpuid::{signature_registers, Features, KVM_LEAF_BASE, LEAF_BASE, LEAF_FEATURES};
use pvkit_abi::ABI_VERSION;
use thiserror::Error;

/// Errors reading KVM's CPUID table or giving one to a vCPU.
#[derive(Debug, Error)]
pub enum CpuidError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// The table does not fit KVM's CPUID structure.
    #[error("cannot build the CPUID table: {0}")]
    Table(String),
}

/// Builds the guest's CPUID table from KVM's supported one: KVM's own paravirtual leaves
/// (`0x4000_0000..0x4000_00ff`, "KVMKVMKVM") move to [`KVM_LEAF_BASE`] (kept for
/// kvmclock; Linux looks for them in steps of 0x100), and the pvkit leaves take
/// [`LEAF_BASE`] and [`LEAF_FEATURES`].
pub fn build_cpuid(supported: &[kvm_cpuid_entry2], features: Features) -> Vec<kvm_cpuid_entry2> {
    let hv = LEAF_BASE..LEAF_BASE + 0x100;
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .map(|e| {
            let mut e = *e;
            if hv.contains(&e.function) {
                e.function += KVM_LEAF_BASE - LEAF_BASE;
                if e.function == KVM_LEAF_BASE && hv.contains(&e.eax) {
                    // The highest KVM leaf moves with the leaves.
                    e.eax += KVM_LEAF_BASE - LEAF_BASE;
                }
            }
            e
        })
        .collect();
    let [sig_b, sig_c, sig_d] = signature_registers();
    let bits = features.bits();
    out.push(kvm_cpuid_entry2 {
        function: LEAF_BASE,
        eax: LEAF_FEATURES,
        ebx: sig_b,
        ecx: sig_c,
        edx: sig_d,
        ..Default::default()
    });
    out.push(kvm_cpuid_entry2 {
        function: LEAF_FEATURES,
        eax: ABI_VERSION.major,
        ebx: ABI_VERSION.minor,
        ecx: bits as u32,
        edx: (bits >> 32) as u32,
        ..Default::default()
    });
    out.sort_by_key(|e| (e.function, e.index));
    out
}

/// KVM's CPUID table for this host (`KVM_GET_SUPPORTED_CPUID`).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| CpuidError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })
}

/// `KVM_FEATURE_CLOCKSOURCE2` in EAX of KVM's leaf `0x4000_0001`: the kvmclock MSRs at
/// `0x4b56_4d00`/`0x4b56_4d01`.
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// Whether KVM offers kvmclock (`"KVMKVMKVM"` at `0x4000_0000` with CLOCKSOURCE2 in
/// `0x4000_0001`) in `supported`. [`build_cpuid`] moves those leaves to
/// [`KVM_LEAF_BASE`], where KVM still finds its own signature (it scans the hypervisor
/// range in steps of 0x100) and the guest's `wrmsr` is handled in the kernel.
pub fn kvmclock_available(supported: &[kvm_cpuid_entry2]) -> bool {
    kvm_pv_features(supported) & KVM_FEATURE_CLOCKSOURCE2 != 0
}

/// `KVM_FEATURE_PV_EOI` in EAX of KVM's leaf `0x4000_0001`: `MSR_KVM_PV_EOI_EN`.
pub const KVM_FEATURE_PV_EOI: u32 = 1 << 6;

/// KVM's paravirtual feature bits (EAX of its leaf `0x4000_0001`) in KVM's `supported`
/// table, 0 when KVM's signature is missing.
pub fn kvm_pv_features(supported: &[kvm_cpuid_entry2]) -> u32 {
    let leaf = |f: u32| supported.iter().find(|e| e.function == f);
    let signed = leaf(LEAF_BASE).is_some_and(|e| {
        [e.ebx, e.ecx, e.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .eq(*b"KVMKVMKVM\0\0\0")
    });
    match (signed, leaf(LEAF_FEATURES)) {
        (true, Some(e)) => e.eax,
        _ => 0,
    }
}

/// Whether KVM offers PV EOI (`KVM_GET_SUPPORTED_CPUID`). Offered is not effective: on
/// kvm_pvm the MSR is accepted but KVM never sets the flag (`pvkit bench --only irq`
/// measures it at run time).
pub fn pv_eoi_offered(supported: &[kvm_cpuid_entry2]) -> bool {
    kvm_pv_features(supported) & KVM_FEATURE_PV_EOI != 0
}

/// Puts APIC ID `id` where CPUID reports it: leaf 1 `EBX[31:24]` (initial APIC ID) and
/// the x2APIC ID in `EDX` of leaves `0xb` and `0x1f`. KVM gives vCPU `i` APIC ID `i` but
/// reports in CPUID whatever the table says, so each vCPU needs its own.
pub fn set_apic_id(entries: &mut [kvm_cpuid_entry2], id: u32) {
    for e in entries {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | ((id & 0xff) << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
}

/// Gives the vCPU `fd` the CPUID table built from `supported` with the pvkit leaves for
/// `features` ([`build_cpuid`]) and APIC ID `apic_id` ([`set_apic_id`]).
pub fn set_cpuid(
    fd: &VcpuFd,
    supported: &CpuId,
    features: Features,
    apic_id: u32,
) -> Result<(), CpuidError> {
    let mut entries = build_cpuid(supported.as_slice(), features);
    set_apic_id(&mut entries, apic_id);
    let cpuid = CpuId::from_entries(&entries).map_err(|e| CpuidError::Table(format!("{e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(|source| CpuidError::Kvm {
        what: "KVM_SET_CPUID2",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, eax: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_moves_kvm_leaves_and_adds_pvkit() {
        let kvm_sig = u32::from_le_bytes(*b"KVMK");
        let supported = [
            entry(0, 0xd, 0),
            entry(0x4000_0000, 0x4000_0001, kvm_sig),
            entry(0x4000_0001, 0x1234, 0),
            entry(0x8000_0000, 0x8000_0008, 0),
        ];
        let t = build_cpuid(&supported, Features::CONSOLE | Features::BENCH);
        let find = |f: u32| t.iter().find(|e| e.function == f).copied().unwrap();
        let kvm = find(KVM_LEAF_BASE);
        assert_eq!((kvm.eax, kvm.ebx), (KVM_LEAF_BASE + 1, kvm_sig));
        assert_eq!(find(KVM_LEAF_BASE + 1).eax, 0x1234);
        let base = find(LEAF_BASE);
        assert_eq!(base.eax, LEAF_FEATURES);
        let sig: Vec<u8> = [base.ebx, base.ecx, base.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig, b"pvkitpvkitpv");
        let feat = find(LEAF_FEATURES);
        assert_eq!((feat.eax, feat.ebx), (2, 0), "ABI 2.0");
        assert_eq!(
            feat.ecx,
            (Features::CONSOLE | Features::BENCH).bits() as u32
        );
        assert_eq!(feat.edx, 0);
        assert_eq!(find(0).eax, 0xd);
        assert_eq!(find(0x8000_0000).eax, 0x8000_0008);
        assert_eq!(t.len(), 6);
        assert_eq!(t.iter().filter(|e| e.function == LEAF_BASE).count(), 1);
    }

    #[test]
    fn kvmclock_needs_the_signature_and_clocksource2() {
        let [b, c, d] = [*b"KVMK", *b"VMKV", *b"M\0\0\0"].map(u32::from_le_bytes);
        let sig = kvm_cpuid_entry2 {
            function: LEAF_BASE,
            eax: LEAF_FEATURES,
            ebx: b,
            ecx: c,
            edx: d,
            ..Default::default()
        };
        let feat = |eax| entry(LEAF_FEATURES, eax, 0);
        assert!(kvmclock_available(&[sig, feat(0x0100_7efb)]));
        assert!(!kvmclock_available(&[sig, feat(0x1)]));
        assert!(!kvmclock_available(&[sig]));
        let other = kvm_cpuid_entry2 { ebx: 0, ..sig };
        assert!(!kvmclock_available(&[other, feat(0x8)]));
    }

    #[test]
    fn pv_eoi_is_bit_6_of_kvms_feature_leaf_behind_its_signature() {
        let [b, c, d] = [*b"KVMK", *b"VMKV", *b"M\0\0\0"].map(u32::from_le_bytes);
        let sig = kvm_cpuid_entry2 {
            function: LEAF_BASE,
            eax: LEAF_FEATURES,
            ebx: b,
            ecx: c,
            edx: d,
            ..Default::default()
        };
        let feat = |eax| entry(LEAF_FEATURES, eax, 0);
        // kvm_pvm's 0x4000_0001.EAX (docs/PLATFORM.md) has bit 6.
        assert!(pv_eoi_offered(&[sig, feat(0x0100_7efb)]));
        assert!(!pv_eoi_offered(&[sig, feat(0x0100_7efb & !(1 << 6))]));
        assert!(!pv_eoi_offered(&[sig]));
        let other = kvm_cpuid_entry2 { ebx: 0, ..sig };
        assert!(!pv_eoi_offered(&[other, feat(1 << 6)]));
        assert_eq!(kvm_pv_features(&[sig, feat(0x40)]), 0x40);
    }
}
