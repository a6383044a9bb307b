//! PV IPIs: the `SendIpi` hypercall ([`Hypercall::SendIpi`]): one exit sends a fixed
//! interrupt to every vCPU of a bitmap.
//!
//! The device validates the whole call first (bitmap not empty, every target exists,
//! vector `0x20..=0xff`, reserved argument 0) and only then hands each target to its
//! [`IpiSink`]: nothing is sent for a refused call. On KVM the sink is [`KvmMsi`]: one
//! `KVM_SIGNAL_MSI` per target (physical destination = the target's APIC ID, which KVM
//! makes equal to the vCPU index; fixed delivery, edge), injected by the in-kernel LAPIC.
//! A call costs one userspace exit however many targets it names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::Status;

use super::{CallCtx, PvDevice};

/// The lowest vector a guest may send: 0–31 are exceptions.
pub const MIN_VECTOR: u64 = 0x20;
/// The highest vector.
pub const MAX_VECTOR: u64 = 0xff;

/// Delivers one interrupt to one vCPU.
pub trait IpiSink: Send + Sync {
    /// Sends `vector` to vCPU `cpu`; `false` if it could not be sent.
    fn deliver(&self, cpu: u32, vector: u8) -> bool;
}

/// Delivery through KVM's in-kernel LAPICs: `KVM_SIGNAL_MSI`.
pub struct KvmMsi(pub Arc<VmFd>);

impl KvmMsi {
    /// The MSI of a fixed, edge-triggered `vector` to physical APIC ID `cpu`.
    pub fn msi(cpu: u32, vector: u8) -> kvm_msi {
        kvm_msi {
            address_lo: 0xfee0_0000 | ((cpu & 0xff) << 12),
            address_hi: 0,
            data: u32::from(vector),
            ..Default::default()
        }
    }
}

impl IpiSink for KvmMsi {
    fn deliver(&self, cpu: u32, vector: u8) -> bool {
        // KVM answers > 0 when the interrupt was delivered, 0 when the LAPIC refused it
        // (e.g. software-disabled).
        matches!(self.0.signal_msi(Self::msi(cpu, vector)), Ok(n) if n > 0)
    }
}

/// The `SendIpi` device of a VM with `vcpus` vCPUs.
pub struct PvIpi {
    vcpus: u32,
    sink: Arc<dyn IpiSink>,
    sent: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for PvIpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvIpi")
            .field("vcpus", &self.vcpus)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// The targets of a valid call, in order: `(vCPU, vector)`. `None`: the call is refused.
pub fn targets(vcpus: u32, args: [u64; 4]) -> Option<(Vec<u32>, u8)> {
    let [bitmap, vector, base, reserved] = args;
    if bitmap == 0 || reserved != 0 || !(MIN_VECTOR..=MAX_VECTOR).contains(&vector) {
        return None;
    }
    // Highest target = base + index of the top set bit; must be a vCPU.
    let top = base.checked_add(u64::from(63 - bitmap.leading_zeros()))?;
    if top >= u64::from(vcpus) {
        return None;
    }
    let cpus = (0..64u64)
        .filter(|i| bitmap & (1 << i) != 0)
        .map(|i| (base + i) as u32)
        .collect();
    Some((cpus, vector as u8))
}

impl PvIpi {
    /// The device for `vcpus` vCPUs, delivering through `sink`.
    pub fn new(vcpus: u32, sink: Arc<dyn IpiSink>) -> Self {
        Self {
            vcpus,
            sink,
            sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Interrupts delivered so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Handles `SendIpi`: validates all of it, then delivers to each target.
    pub fn send(&self, args: [u64; 4]) -> CallReturn {
        let Some((cpus, vector)) = targets(self.vcpus, args) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return CallReturn::err(Status::EINVAL);
        };
        let delivered = cpus
            .into_iter()
            .filter(|&c| self.sink.deliver(c, vector))
            .count() as u64;
        self.sent.fetch_add(delivered, Ordering::Relaxed);
        CallReturn::ok(delivered)
    }
}

impl PvDevice for PvIpi {
    fn name(&self) -> &'static str {
        "ipi"
    }

    fn features(&self) -> Features {
        Features::PV_IPI
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        &[Hypercall::SendIpi]
    }

    fn call(&self, _ctx: &CallCtx<'_>, _call: Hypercall, args: [u64; 4]) -> CallReturn {
        self.send(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u32, u8)>>);

    impl IpiSink for Recorder {
        fn deliver(&self, cpu: u32, vector: u8) -> bool {
            self.0.lock().unwrap().push((cpu, vector));
            true
        }
    }

    fn device() -> (PvIpi, Arc<Recorder>) {
        let r = Arc::new(Recorder::default());
        (PvIpi::new(4, r.clone()), r)
    }

    #[test]
    fn a_bitmap_reaches_exactly_its_vcpus() {
        let (d, r) = device();
        assert_eq!(d.send([0b1010, 0xf0, 0, 0]), CallReturn::ok(2));
        assert_eq!(d.send([0b11, 0x40, 2, 0]), CallReturn::ok(2));
        assert_eq!(d.send([0b1111, 0xff, 0, 0]), CallReturn::ok(4));
        assert_eq!(
            *r.0.lock().unwrap(),
            [
                (1, 0xf0),
                (3, 0xf0),
                (2, 0x40),
                (3, 0x40),
                (0, 0xff),
                (1, 0xff),
                (2, 0xff),
                (3, 0xff)
            ]
        );
        assert_eq!(d.sent(), 8);
    }

    #[test]
    fn bad_bitmaps_and_vectors_send_nothing() {
        let (d, r) = device();
        let einval = CallReturn::err(Status::EINVAL);
        for args in [
            [0, 0xf0, 0, 0],          // empty
            [0b10000, 0xf0, 0, 0],    // vCPU 4 of 4
            [1 << 63, 0xf0, 0, 0],    // vCPU 63
            [0b1, 0xf0, 4, 0],        // base past the end
            [0b1, 0xf0, u64::MAX, 0], // base + bit overflows
            [0b1000_0001, 0xf0, 0, 0],
            [0b1, 0x1f, 0, 0], // exception vector
            [0b1, 0, 0, 0],
            [0b1, 0x100, 0, 0],
            [0b1, u64::MAX, 0, 0],
            [0b1, 0xf0, 0, 1], // reserved
        ] {
            assert_eq!(d.send(args), einval, "{args:x?}");
        }
        assert!(r.0.lock().unwrap().is_empty());
        assert_eq!(d.sent(), 0);
    }

    #[test]
    fn the_msi_names_the_apic_and_the_vector() {
        let m = KvmMsi::msi(3, 0xf1);
        assert_eq!(m.address_lo, 0xfee0_3000);
        assert_eq!(m.data, 0xf1);
        assert_eq!(m.flags, 0);
    }
}
