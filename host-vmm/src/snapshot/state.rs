//! The snapshot state file: [`VmState`] (everything of a paused VM except its RAM) and its
//! on-disk framing ([`encode`], [`decode`]).
//!
//! # Format (version [`FORMAT_VERSION`])
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 8    | magic [`MAGIC`] (`"PVKITSNP"`)                              |
//! | 8      | 4    | format version, little endian                                |
//! | 12     | 4    | CRC-32 (IEEE) of the payload, little endian                  |
//! | 16     | 8    | payload length in bytes, little endian, ≤ [`MAX_PAYLOAD`]   |
//! | 24     | len  | payload: [`VmState`] as JSON                                 |
//!
//! A file is hostile input: [`decode`] checks the magic, the version (another version is
//! refused, never guessed at), the length (bounded, and equal to what follows the header),
//! the checksum, then parses the JSON into typed fields and [`VmState::validate`]s what the
//! types alone cannot say (sizes of the raw KVM structures, counts). Every failure is a
//! [`StateFileError`] naming what is wrong.
//!
//! KVM's own structures (registers, LAPIC, irqchip, PIT, clock) are kept as their raw bytes
//! ([`KvmBlob`]): they are plain C data whose every bit pattern is valid, the same host
//! reads them back, and their sizes are checked against the running VMM's types.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use pvkit_devices::{AtaState, Ne2000State, PitState, UartState, VmClockState};
use pvkit_pv::PvClockState;

pub use crate::devices::pv::rings::SavedRing;
pub use crate::devices::pv::vcpu_up::SavedStartSlot;

/// The first 8 bytes of every state file.
pub const MAGIC: [u8; 8] = *b"PVKITSNP";
/// The state-file format this VMM writes and the only one it reads.
///
/// Version 2: every vCPU of an SMP VM (each with its MP state) and the APs' start slots
/// ([`DeviceStates::vcpu_starts`]); the host-set balloon target; the NIC saved as model,
/// backend kind and MAC, with the NE2000's whole model state ([`NicState`]).
pub const FORMAT_VERSION: u32 = 2;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;
/// Largest payload accepted (16 MiB: a one-vCPU state is ~60 KiB of JSON).
pub const MAX_PAYLOAD: u64 = 16 << 20;
/// Largest number of vCPUs a state may hold.
pub const MAX_VCPUS: usize = 256;
/// Largest number of ledger entries or balloon ranges a state may hold.
pub const MAX_ENTRIES: usize = 1 << 16;

/// Why a state file was refused.
#[derive(Debug, Error)]
pub enum StateFileError {
    /// Shorter than the header.
    #[error("snapshot state file is truncated: {0} bytes, the header alone is {HEADER_LEN}")]
    Truncated(usize),
    /// Not a pvkit state file.
    #[error("not a pvkit snapshot state file (bad magic)")]
    BadMagic,
    /// Written by another format version.
    #[error(
        "snapshot state file has format version {found}; this pvkit reads only version \
         {FORMAT_VERSION} (take the snapshot again with this pvkit)"
    )]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// The length field disagrees with the file or exceeds the limit.
    #[error("snapshot state file payload length {declared} is wrong: {actual} bytes follow the header (limit {MAX_PAYLOAD})")]
    Length {
        /// The length in the header.
        declared: u64,
        /// What follows the header.
        actual: u64,
    },
    /// The checksum does not match: the file is corrupt.
    #[error("snapshot state file is corrupt: CRC-32 {found:#010x}, expected {expected:#010x}")]
    Checksum {
        /// Computed over the payload.
        found: u32,
        /// In the header.
        expected: u32,
    },
    /// The payload is not a valid state.
    #[error("snapshot state file payload is invalid: {0}")]
    Payload(String),
    /// The payload parsed but a field is out of range.
    #[error("snapshot state is invalid: {0}")]
    Invalid(String),
    /// The state could not be serialized (a bug).
    #[error("cannot serialize the VM state: {0}")]
    Serialize(String),
}

/// The raw bytes of one KVM structure (`kvm_regs`, `kvm_lapic_state`, …), as KVM filled it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmBlob(pub Vec<u8>);

/// One vCPU's KVM state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuKvmState {
    /// The vCPU index.
    pub index: u64,
    /// `kvm_regs`.
    pub regs: KvmBlob,
    /// `kvm_sregs`.
    pub sregs: KvmBlob,
    /// `kvm_xsave` (the FPU, SSE and AVX state).
    pub xsave: KvmBlob,
    /// `kvm_xcrs`.
    pub xcrs: KvmBlob,
    /// `kvm_lapic_state` (`None`: no in-kernel LAPIC).
    pub lapic: Option<KvmBlob>,
    /// `kvm_mp_state`.
    pub mp_state: u32,
    /// `kvm_vcpu_events`.
    pub events: KvmBlob,
    /// Every MSR KVM could read of its save list (index, value), TSC and kvmclock included.
    pub msrs: Vec<(u32, u64)>,
}

/// The in-kernel irqchip: the two PICs and the IOAPIC, each a `kvm_irqchip`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqchipState {
    /// PIC master.
    pub pic_master: KvmBlob,
    /// PIC slave.
    pub pic_slave: KvmBlob,
    /// IOAPIC.
    pub ioapic: KvmBlob,
}

/// VM-wide KVM state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmKvmState {
    /// The in-kernel irqchip, if the VM has one.
    pub irqchip: Option<IrqchipState>,
    /// `kvm_pit_state2` of an in-kernel PIT, if the VM has one.
    pub pit2: Option<KvmBlob>,
    /// `kvm_clock_data` (kvmclock's base).
    pub clock: KvmBlob,
}

/// The guest image the state belongs to (the kernel is in RAM; this is what the VMM kept of
/// its ELF).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Entry point.
    pub entry: u64,
    /// Guest-physical span of the loaded image (the balloon refuses it).
    pub span: (u64, u64),
    /// ABI version in the guest's note (major, minor).
    pub abi: (u32, u32),
}

/// Where a PV clock page is registered: for the VM (`None`) or for vCPU `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockPageState {
    /// `None`: the VM's page; `Some(n)`: vCPU `n`'s.
    pub vcpu: Option<u32>,
    /// The page.
    pub page: PvClockState,
}

/// The state of every device model of the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStates {
    /// The VM clock (saved last: the time of the snapshot).
    pub vm_clock: VmClockState,
    /// The COM1 UART.
    pub uart: UartState,
    /// The emulated 8254 PIT.
    pub pit: PitState,
    /// The ATA disk, if the VM has a disk.
    pub ata: Option<AtaState>,
    /// PV block capacity in sectors, if the VM has a disk.
    pub pv_block_sectors: Option<u64>,
    /// Registered PV clock pages.
    pub clock_pages: Vec<ClockPageState>,
    /// Ballooned page ranges (first page, page count), in 4 KiB pages.
    pub ballooned: Vec<(u64, u64)>,
    /// The host-set balloon target, if the VM has a balloon (format version 2).
    pub balloon_target: Option<BalloonTargetState>,
    /// Registered PV rings (saved while every ring was held still).
    pub rings: Vec<SavedRing>,
    /// The NIC, if the VM had one ([`NicState`]).
    pub net: Option<NicState>,
    /// The `VcpuUp` start slot of every vCPU, vCPU 0 first (an AP not started, one whose
    /// start was posted but not yet taken, or running); empty for a one-vCPU VM.
    #[serde(default)]
    pub vcpu_starts: Vec<SavedStartSlot>,
}

/// The host-set balloon target ([`pvkit_abi::balloon::BalloonTarget`]): the guest sees
/// the same target and generation after a restore or a migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonTargetState {
    /// Target in 4 KiB pages.
    pub pages: u32,
    /// Its generation.
    pub generation: u32,
}

/// The NIC model a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavedNicModel {
    /// The PV NIC: its rings are in [`DeviceStates::rings`]; frames that waited for a
    /// receive buffer and the device's counters are not kept (a NIC may lose frames).
    Pv,
    /// The emulated NE2000: its whole model is in [`NicState::ne2000`].
    Ne2000,
}

/// The kind of host backend the NIC was on. The backend itself is not saved: the
/// restoring VM opens its own of the same kind (`--net loopback`, or `--net tap` with its
/// namespace, which may differ: the target of a migration is another host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavedBackend {
    /// The in-VMM loopback responder (stateless: it answers each frame as it is sent).
    Loopback,
    /// A TAP device. Frames in flight in the host's stack when the VM was saved are lost,
    /// as a real NIC's are when it moves; the new device gets an announcement
    /// ([`crate::devices::legacy::ne2000::announce_frame`]).
    Tap,
}

/// The NIC a snapshot keeps: which model on which kind of backend with which MAC, and
/// the NE2000's model state. The restoring VM must be given the same NIC again (the
/// same `--nic`, the same kind of `--net`, the same `--mac`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicState {
    /// The MAC address the guest was told.
    pub mac: [u8; 6],
    /// The model.
    pub model: SavedNicModel,
    /// The kind of backend.
    pub backend: SavedBackend,
    /// The NE2000's state: present exactly when `model` is [`SavedNicModel::Ne2000`].
    pub ne2000: Option<Ne2000State>,
}

impl NicState {
    /// The NIC without its model state: what a restoring VM's configuration must match.
    pub fn spec(&self) -> NicState {
        NicState {
            ne2000: None,
            ..self.clone()
        }
    }

    /// Checks what the types cannot: the NE2000 state is there exactly for the NE2000,
    /// has this MAC in its PROM, and is one a card could be in
    /// ([`pvkit_devices::Ne2000::from_state`]).
    pub fn validate(&self) -> Result<(), StateFileError> {
        let bad = |m: String| Err(StateFileError::Invalid(m));
        match (self.model, &self.ne2000) {
            (SavedNicModel::Pv, None) => Ok(()),
            (SavedNicModel::Pv, Some(_)) => bad("an NE2000 state for the PV NIC".into()),
            (SavedNicModel::Ne2000, None) => bad("the NE2000 has no saved state".into()),
            (SavedNicModel::Ne2000, Some(n)) => {
                if n.mac != self.mac {
                    return bad("the NE2000's PROM holds another MAC than the NIC's".into());
                }
                pvkit_devices::Ne2000::from_state(n)
                    .map(|_| ())
                    .map_err(|e| StateFileError::Invalid(e.to_string()))
            }
        }
    }
}

/// The disk the VM had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The image path when the snapshot was taken.
    pub path: std::path::PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// Opened read-only.
    pub read_only: bool,
    /// `path` is a block-level overlay over this base image.
    pub base: Option<std::path::PathBuf>,
}

/// One exit count of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavedExitKind {
    /// A port read.
    PortRead(u16),
    /// A port write.
    PortWrite(u16),
    /// A known hypercall, by number.
    Hypercall(u32),
    /// An unknown hypercall.
    UnknownHypercall,
    /// An MMIO read outside every region.
    MmioReadUnmapped,
    /// An MMIO write outside every region.
    MmioWriteUnmapped,
    /// `hlt`.
    Hlt,
    /// Shutdown.
    Shutdown,
    /// KVM internal error.
    InternalError,
    /// Interrupted by a signal.
    Interrupted,
    /// Anything else.
    Other,
}

/// Everything of a paused VM except its RAM (which is the memory file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// Guest RAM size in bytes (the memory file's size).
    pub mem_bytes: u64,
    /// The command line the guest booted with.
    pub cmdline: String,
    /// What the VMM kept of the kernel ELF.
    pub kernel: KernelInfo,
    /// The pvkit feature bits the guest saw in CPUID.
    pub features: u64,
    /// Each vCPU's KVM state, vCPU 0 first.
    pub vcpus: Vec<VcpuKvmState>,
    /// VM-wide KVM state.
    pub vm: VmKvmState,
    /// Device models.
    pub devices: DeviceStates,
    /// The disk, if any.
    pub disk: Option<DiskInfo>,
    /// Exit counts so far (all vCPUs merged).
    pub ledger: Vec<(SavedExitKind, u64)>,
}

impl VmState {
    /// Checks what the types cannot: counts, bounds, and each raw KVM structure's size
    /// against `sizes` (the running VMM's structure sizes).
    pub fn validate(&self, sizes: &KvmSizes) -> Result<(), StateFileError> {
        let bad = |m: String| Err(StateFileError::Invalid(m));
        if self.vcpus.is_empty() || self.vcpus.len() > MAX_VCPUS {
            return bad(format!("{} vCPUs (1 to {MAX_VCPUS})", self.vcpus.len()));
        }
        if self.mem_bytes == 0 || !self.mem_bytes.is_multiple_of(1 << 20) {
            return bad(format!(
                "RAM size {} is not a whole number of MiB",
                self.mem_bytes
            ));
        }
        if self.devices.rings.len() > 32 {
            return bad(format!("{} rings", self.devices.rings.len()));
        }
        if self.ledger.len() > MAX_ENTRIES || self.devices.ballooned.len() > MAX_ENTRIES {
            return bad("too many ledger entries or balloon ranges".into());
        }
        let starts = &self.devices.vcpu_starts;
        let want_starts = if self.vcpus.len() > 1 {
            self.vcpus.len()
        } else {
            0
        };
        if starts.len() != want_starts {
            return bad(format!(
                "{} vCPU start slots for {} vCPUs",
                starts.len(),
                self.vcpus.len()
            ));
        }
        if let Some(e) = starts.iter().find_map(|s| s.check().err()) {
            return bad(e);
        }
        if starts
            .first()
            .is_some_and(|s| *s != SavedStartSlot::Running)
        {
            return bad("vCPU 0's start slot is not `running`".into());
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.index != i as u64 {
                return bad(format!("vCPU {i} has index {}", v.index));
            }
            if v.msrs.len() > 4096 {
                return bad(format!("vCPU {i}: {} MSRs", v.msrs.len()));
            }
            let blobs = [
                ("regs", &v.regs, sizes.regs),
                ("sregs", &v.sregs, sizes.sregs),
                ("xsave", &v.xsave, sizes.xsave),
                ("xcrs", &v.xcrs, sizes.xcrs),
                ("events", &v.events, sizes.events),
            ];
            for (name, blob, size) in blobs {
                check_size(&format!("vCPU {i} {name}"), blob, size)?;
            }
            if let Some(l) = &v.lapic {
                check_size(&format!("vCPU {i} lapic"), l, sizes.lapic)?;
            }
        }
        if let Some(c) = &self.vm.irqchip {
            check_size("PIC master", &c.pic_master, sizes.irqchip)?;
            check_size("PIC slave", &c.pic_slave, sizes.irqchip)?;
            check_size("IOAPIC", &c.ioapic, sizes.irqchip)?;
        }
        if let Some(p) = &self.vm.pit2 {
            check_size("PIT2", p, sizes.pit2)?;
        }
        check_size("clock", &self.vm.clock, sizes.clock)?;
        let pages = self.mem_bytes / 4096;
        if let Some(t) = &self.devices.balloon_target {
            if u64::from(t.pages) > pages {
                return bad(format!("balloon target {} pages above RAM", t.pages));
            }
        }
        for &(first, count) in &self.devices.ballooned {
            if count == 0 || first.checked_add(count).is_none_or(|end| end > pages) {
                return bad(format!("ballooned range {first}+{count} outside RAM"));
            }
        }
        if let Some(n) = &self.devices.net {
            n.validate()?;
        }
        if self.kernel.span.0 > self.kernel.span.1 || self.kernel.span.1 > self.mem_bytes {
            return bad("kernel span outside RAM".into());
        }
        Ok(())
    }
}

fn check_size(what: &str, blob: &KvmBlob, size: usize) -> Result<(), StateFileError> {
    if blob.0.len() == size {
        Ok(())
    } else {
        Err(StateFileError::Invalid(format!(
            "{what} is {} bytes, this VMM's structure is {size}",
            blob.0.len()
        )))
    }
}

/// The sizes of KVM's structures in this build (what a [`KvmBlob`] must have).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmSizes {
    /// `kvm_regs`.
    pub regs: usize,
    /// `kvm_sregs`.
    pub sregs: usize,
    /// `kvm_xsave`.
    pub xsave: usize,
    /// `kvm_xcrs`.
    pub xcrs: usize,
    /// `kvm_lapic_state`.
    pub lapic: usize,
    /// `kvm_vcpu_events`.
    pub events: usize,
    /// `kvm_irqchip`.
    pub irqchip: usize,
    /// `kvm_pit_state2`.
    pub pit2: usize,
    /// `kvm_clock_data`.
    pub clock: usize,
}

impl KvmSizes {
    /// The sizes of this build's kvm-bindings.
    pub fn host() -> Self {
        use kvm_bindings::*;
        use std::mem::size_of;
        Self {
            regs: size_of::<kvm_regs>(),
            sregs: size_of::<kvm_sregs>(),
            xsave: size_of::<kvm_xsave>(),
            xcrs: size_of::<kvm_xcrs>(),
            lapic: size_of::<kvm_lapic_state>(),
            events: size_of::<kvm_vcpu_events>(),
            irqchip: size_of::<kvm_irqchip>(),
            pit2: size_of::<kvm_pit_state2>(),
            clock: size_of::<kvm_clock_data>(),
        }
    }
}

/// The state file's bytes: header and JSON payload.
pub fn encode(state: &VmState) -> Result<Vec<u8>, StateFileError> {
    let payload =
        serde_json::to_vec(state).map_err(|e| StateFileError::Serialize(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses and checks a state file (see the module doc); `sizes` are the KVM structure
/// sizes the state must match ([`KvmSizes::host`]).
pub fn decode(bytes: &[u8], sizes: &KvmSizes) -> Result<VmState, StateFileError> {
    let (header, payload) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or(StateFileError::Truncated(bytes.len()))?;
    let field = |r: std::ops::Range<usize>| header.get(r).unwrap_or(&[]);
    if field(0..8) != MAGIC {
        return Err(StateFileError::BadMagic);
    }
    let u32_at = |r| u32::from_le_bytes(field(r).try_into().unwrap_or([0; 4]));
    let version = u32_at(8..12);
    if version != FORMAT_VERSION {
        return Err(StateFileError::Version { found: version });
    }
    let expected = u32_at(12..16);
    let declared = u64::from_le_bytes(field(16..24).try_into().unwrap_or([0; 8]));
    let actual = payload.len() as u64;
    if declared != actual || declared > MAX_PAYLOAD {
        return Err(StateFileError::Length { declared, actual });
    }
    let found = crc32fast::hash(payload);
    if found != expected {
        return Err(StateFileError::Checksum { found, expected });
    }
    let state: VmState =
        serde_json::from_slice(payload).map_err(|e| StateFileError::Payload(e.to_string()))?;
    state.validate(sizes)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with every blob at its host size.
    pub(crate) fn sample() -> VmState {
        let s = KvmSizes::host();
        let blob = |n| KvmBlob(vec![0xa5; n]);
        VmState {
            mem_bytes: 128 << 20,
            cmdline: "console=pv counter=10".into(),
            kernel: KernelInfo {
                entry: 0x20_0000,
                span: (0x20_0000, 0x40_0000),
                abi: (1, 0),
            },
            features: 0x1f,
            vcpus: vec![VcpuKvmState {
                index: 0,
                regs: blob(s.regs),
                sregs: blob(s.sregs),
                xsave: blob(s.xsave),
                xcrs: blob(s.xcrs),
                lapic: None,
                mp_state: 0,
                events: blob(s.events),
                msrs: vec![(0x10, 12345)],
            }],
            vm: VmKvmState {
                irqchip: None,
                pit2: None,
                clock: blob(s.clock),
            },
            devices: DeviceStates {
                vm_clock: VmClockState::new(1_000_000),
                uart: crate::devices::legacy::uart::Uart::new(
                    crate::io::console_out::Console::capture(),
                )
                .state(),
                pit: pvkit_devices::Pit::new().state(),
                ata: None,
                pv_block_sectors: None,
                net: None,
                clock_pages: vec![],
                ballooned: vec![(100, 4)],
                balloon_target: Some(BalloonTargetState {
                    pages: 4,
                    generation: 2,
                }),
                rings: vec![],
                vcpu_starts: vec![],
            },
            disk: None,
            ledger: vec![(SavedExitKind::Hypercall(1), 7), (SavedExitKind::Hlt, 1)],
        }
    }

    /// [`sample`] with three vCPUs: vCPU 1 running, vCPU 2's start posted.
    pub(crate) fn smp_sample() -> VmState {
        let mut s = sample();
        for i in 1..3 {
            let mut v = s.vcpus[0].clone();
            v.index = i;
            v.mp_state = kvm_bindings::KVM_MP_STATE_HALTED;
            s.vcpus.push(v);
        }
        s.devices.vcpu_starts = vec![
            SavedStartSlot::Running,
            SavedStartSlot::Running,
            SavedStartSlot::Pending {
                rip: 0x20_1000,
                rsp: 0x30_0000,
                arg: 2,
            },
        ];
        s
    }

    /// The sample with an NE2000 on a TAP backend, its card holding a frame.
    fn sample_with_ne2000() -> VmState {
        let mut s = sample();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut card = pvkit_devices::Ne2000::new(mac);
        card.write(0x18, &[0]);
        s.devices.net = Some(NicState {
            mac,
            model: SavedNicModel::Ne2000,
            backend: SavedBackend::Tap,
            ne2000: Some(card.state()),
        });
        s
    }

    #[test]
    fn an_ne2000_state_round_trips_and_a_hostile_one_is_refused() {
        let sizes = KvmSizes::host();
        let s = sample_with_ne2000();
        assert_eq!(decode(&encode(&s).unwrap(), &sizes).unwrap(), s);
        let refused = |f: &dyn Fn(&mut NicState), why: &str| {
            let mut s = sample_with_ne2000();
            f(s.devices.net.as_mut().unwrap());
            let e = decode(&encode(&s).unwrap(), &sizes).unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
        };
        refused(
            &|n| n.ne2000.as_mut().unwrap().mem.pop().map(drop).unwrap(),
            "16384",
        );
        refused(&|n| n.ne2000.as_mut().unwrap().cr = 0x07, "CR");
        refused(
            &|n| n.ne2000.as_mut().unwrap().tx = vec![vec![0; 2000]],
            "1514",
        );
        refused(&|n| n.ne2000.as_mut().unwrap().mac[0] ^= 2, "another MAC");
        refused(&|n| n.ne2000 = None, "no saved state");
        refused(&|n| n.model = SavedNicModel::Pv, "for the PV NIC");
    }

    #[test]
    fn round_trip() {
        for s in [sample(), smp_sample()] {
            let bytes = encode(&s).unwrap();
            assert_eq!(&bytes[..8], b"PVKITSNP");
            assert_eq!(decode(&bytes, &KvmSizes::host()).unwrap(), s);
        }
    }

    #[test]
    fn corrupt_and_foreign_files_are_refused() {
        let sizes = KvmSizes::host();
        let good = encode(&sample()).unwrap();
        assert!(matches!(
            decode(&good[..10], &sizes),
            Err(StateFileError::Truncated(10))
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b, &sizes), Err(StateFileError::BadMagic)));
        // Another version, older (1: before the balloon target and SMP snapshots) or newer,
        // is refused.
        for other in [1, FORMAT_VERSION + 1] {
            let mut b = good.clone();
            b[8..12].copy_from_slice(&other.to_le_bytes());
            let e = decode(&b, &sizes).unwrap_err();
            assert!(
                matches!(e, StateFileError::Version { found } if found == other),
                "{e}"
            );
            assert!(e.to_string().contains(&format!("version {other}")), "{e}");
        }
        let mut b = good.clone();
        let last = b.len() - 2;
        b[last] ^= 1;
        assert!(matches!(
            decode(&b, &sizes),
            Err(StateFileError::Checksum { .. })
        ));
        let b = &good[..good.len() - 1];
        assert!(matches!(
            decode(b, &sizes),
            Err(StateFileError::Length { .. })
        ));
        // A payload with a valid checksum but a wrong structure size.
        let mut s = sample();
        s.vcpus[0].regs.0.pop();
        let e = decode(&encode(&s).unwrap(), &sizes).unwrap_err();
        assert!(matches!(e, StateFileError::Invalid(_)), "{e}");
        let mut s = sample();
        s.devices.ballooned = vec![(u64::MAX, 2)];
        assert!(decode(&encode(&s).unwrap(), &sizes).is_err());
        // Start slots that do not fit the vCPUs, or a hostile start address.
        let mut s = smp_sample();
        s.devices.vcpu_starts.pop();
        let e = decode(&encode(&s).unwrap(), &sizes).unwrap_err();
        assert!(e.to_string().contains("start slots"), "{e}");
        let mut s = smp_sample();
        s.devices.vcpu_starts[1] = SavedStartSlot::Pending {
            rip: 1 << 47,
            rsp: 0x1000,
            arg: 0,
        };
        assert!(decode(&encode(&s).unwrap(), &sizes).is_err());
        let mut s = smp_sample();
        s.devices.vcpu_starts[0] = SavedStartSlot::Waiting;
        assert!(decode(&encode(&s).unwrap(), &sizes).is_err(), "vCPU 0 runs");
        // Valid framing around garbage.
        let mut g = Vec::from(MAGIC);
        g.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        g.extend_from_slice(&crc32fast::hash(b"{}").to_le_bytes());
        g.extend_from_slice(&2u64.to_le_bytes());
        g.extend_from_slice(b"{}");
        assert!(matches!(
            decode(&g, &sizes),
            Err(StateFileError::Payload(_))
        ));
    }
}
