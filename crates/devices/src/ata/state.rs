//! Saved state of the ATA disk: [`AtaState`], [`Ata::state`] and [`Ata::from_state`].
//!
//! The state holds the task file, the data phase in progress and the sector buffer (a
//! sector half read or half written survives a save). The disk image is not part of it: the
//! caller re-attaches the backend, which must have the size the state was saved with.

use serde::{Deserialize, Serialize};

use super::{status, Ata, HobRegister, Transfer, LBA28_MAX_SECTORS, LBA48_MAX_SECTORS};
use super::{SECTOR_BYTES, SECTOR_SIZE};
use crate::block_backend::BlockBackend;
use crate::state::{check_version, ensure, StateError};

const DEVICE: &str = "ATA";

/// An 8-bit task-file register and its LBA48 previous ("HOB") content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HobState {
    /// Current value.
    pub cur: u8,
    /// Previous value.
    pub hob: u8,
}

/// The data phase in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferState {
    /// No data phase.
    None,
    /// IDENTIFY data is in the buffer.
    Identify,
    /// PIO data-in: sector `lba` is in the buffer, `remaining` sectors (it included) left.
    Read {
        /// Sector in the buffer.
        lba: u64,
        /// Sectors left, this one included.
        remaining: u32,
        /// 48-bit command.
        ext: bool,
    },
    /// PIO data-out: the buffer collects sector `lba`, `remaining` sectors left.
    Write {
        /// Sector being collected.
        lba: u64,
        /// Sectors left, this one included.
        remaining: u32,
        /// 48-bit command.
        ext: bool,
    },
}

/// Saved state of an [`Ata`] disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtaState {
    /// [`AtaState::VERSION`].
    pub version: u32,
    /// Addressable sectors of the disk when saved; the re-attached disk must match.
    pub sectors: u64,
    /// Features register.
    pub features: u8,
    /// Sector count register.
    pub sector_count: HobState,
    /// LBA low register.
    pub lba_low: HobState,
    /// LBA mid register.
    pub lba_mid: HobState,
    /// LBA high register.
    pub lba_high: HobState,
    /// Device register.
    pub device: u8,
    /// Error register.
    pub error: u8,
    /// Status without `DRQ` and `BSY` (those derive from the transfer and `SRST`).
    pub status: u8,
    /// Device control register.
    pub control: u8,
    /// `INTRQ` pending.
    pub intrq: bool,
    /// Data phase in progress.
    pub transfer: TransferState,
    /// The sector buffer, exactly [`SECTOR_SIZE`] bytes.
    pub buf: Vec<u8>,
    /// Next byte of `buf` to transfer, below [`SECTOR_SIZE`]; 0 without a data phase.
    pub pos: u32,
}

impl AtaState {
    /// The version of this structure.
    pub const VERSION: u32 = 1;
}

fn hob_state(r: HobRegister) -> HobState {
    HobState {
        cur: r.cur,
        hob: r.hob,
    }
}

fn hob_register(s: HobState) -> HobRegister {
    HobRegister {
        cur: s.cur,
        hob: s.hob,
    }
}

/// Checks a saved data phase against a disk of `sectors` sectors.
fn transfer(state: TransferState, sectors: u64) -> Result<Transfer, StateError> {
    let range = |lba: u64, remaining: u32, ext: bool| {
        let limit = sectors.min(if ext {
            LBA48_MAX_SECTORS
        } else {
            LBA28_MAX_SECTORS
        });
        let most = if ext { 65536 } else { 256 };
        ensure(
            DEVICE,
            (1..=most).contains(&remaining),
            "data phase sector count out of range",
        )?;
        ensure(
            DEVICE,
            lba.checked_add(u64::from(remaining))
                .is_some_and(|end| end <= limit),
            "data phase past the end of the disk",
        )
    };
    Ok(match state {
        TransferState::None => Transfer::None,
        TransferState::Identify => Transfer::Identify,
        TransferState::Read {
            lba,
            remaining,
            ext,
        } => {
            range(lba, remaining, ext)?;
            Transfer::Read {
                lba,
                remaining,
                ext,
            }
        }
        TransferState::Write {
            lba,
            remaining,
            ext,
        } => {
            range(lba, remaining, ext)?;
            Transfer::Write {
                lba,
                remaining,
                ext,
            }
        }
    })
}

impl<B: BlockBackend> Ata<B> {
    /// The state of the disk model (not of the disk image), to rebuild it with
    /// [`Ata::from_state`].
    pub fn state(&self) -> AtaState {
        AtaState {
            version: AtaState::VERSION,
            sectors: self.sectors,
            features: self.features,
            sector_count: hob_state(self.sector_count),
            lba_low: hob_state(self.lba_low),
            lba_mid: hob_state(self.lba_mid),
            lba_high: hob_state(self.lba_high),
            device: self.device,
            error: self.error,
            status: self.status,
            control: self.control,
            intrq: self.intrq,
            transfer: match self.transfer {
                Transfer::None => TransferState::None,
                Transfer::Identify => TransferState::Identify,
                Transfer::Read {
                    lba,
                    remaining,
                    ext,
                } => TransferState::Read {
                    lba,
                    remaining,
                    ext,
                },
                Transfer::Write {
                    lba,
                    remaining,
                    ext,
                } => TransferState::Write {
                    lba,
                    remaining,
                    ext,
                },
            },
            buf: self.buf.to_vec(),
            // pos < SECTOR_SIZE.
            pos: self.pos as u32,
        }
    }

    /// Rebuilds the disk model from `state` over `backend`, which must be the disk the
    /// state was saved with (at least its size is checked). A state no disk model could
    /// have been in is refused.
    pub fn from_state(state: &AtaState, backend: B) -> Result<Self, StateError> {
        check_version(DEVICE, state.version, AtaState::VERSION)?;
        let attached = backend.len() / SECTOR_BYTES;
        if attached != state.sectors {
            return Err(StateError::DiskSize {
                device: DEVICE,
                saved: state.sectors,
                attached,
            });
        }
        let buf: [u8; SECTOR_SIZE] =
            state
                .buf
                .as_slice()
                .try_into()
                .map_err(|_| StateError::Invalid {
                    device: DEVICE,
                    what: "sector buffer is not 512 bytes",
                })?;
        let transfer = transfer(state.transfer, state.sectors)?;
        let pos = usize::try_from(state.pos).unwrap_or(usize::MAX);
        ensure(DEVICE, pos < SECTOR_SIZE, "buffer position past the sector")?;
        ensure(
            DEVICE,
            transfer != Transfer::None || pos == 0,
            "buffer position without a data phase",
        )?;
        let ready = status::DRDY | status::DSC;
        ensure(
            DEVICE,
            state.status == ready || state.status == ready | status::ERR,
            "status other than DRDY|DSC with or without ERR",
        )?;
        Ok(Self {
            backend,
            sectors: state.sectors,
            features: state.features,
            sector_count: hob_register(state.sector_count),
            lba_low: hob_register(state.lba_low),
            lba_mid: hob_register(state.lba_mid),
            lba_high: hob_register(state.lba_high),
            device: state.device,
            error: state.error,
            status: state.status,
            control: state.control,
            intrq: state.intrq,
            transfer,
            buf,
            pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{command, port};
    use super::*;
    use crate::block_backend::MemBackend;
    use proptest::prelude::*;

    const SECTORS: usize = 64;

    /// Sector n holds the byte n everywhere.
    fn image() -> Vec<u8> {
        (0..SECTORS * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect()
    }

    /// One guest access.
    #[derive(Debug, Clone)]
    enum Op {
        /// Write one byte to a task-file register or the control port.
        Reg(u16, u8),
        /// A command.
        Cmd(u8),
        /// Read `n` bytes from a port.
        Read(u16, usize),
        /// Write `n` bytes of `byte` to the data port.
        Data(u8, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let reg = prop::sample::select(vec![
            port::FEATURES,
            port::SECTOR_COUNT,
            port::LBA_LOW,
            port::LBA_MID,
            port::LBA_HIGH,
            port::DEVICE,
            port::DEVICE_CONTROL,
        ]);
        let cmd = prop::sample::select(vec![
            command::READ_SECTORS,
            command::READ_SECTORS_EXT,
            command::WRITE_SECTORS,
            command::WRITE_SECTORS_EXT,
            command::FLUSH_CACHE,
            command::IDENTIFY_DEVICE,
            command::SET_FEATURES,
            0x00,
        ]);
        // Small register values keep most commands inside the 64-sector disk; the
        // device register is mostly LBA mode, master.
        let value = prop_oneof![0u8..4, Just(0xE0u8), Just(0x40u8), any::<u8>()];
        let rport = prop::sample::select(vec![
            port::DATA,
            port::ERROR,
            port::SECTOR_COUNT,
            port::LBA_LOW,
            port::LBA_MID,
            port::LBA_HIGH,
            port::DEVICE,
            port::STATUS,
            port::ALT_STATUS,
        ]);
        prop_oneof![
            (reg, value).prop_map(|(p, v)| Op::Reg(p, v)),
            cmd.prop_map(Op::Cmd),
            (rport, prop_oneof![Just(1usize), Just(2), 1usize..700])
                .prop_map(|(p, n)| Op::Read(p, n)),
            (any::<u8>(), prop_oneof![Just(2usize), 1usize..700]).prop_map(|(b, n)| Op::Data(b, n)),
        ]
    }

    /// Applies `op` and returns what the guest observed (read data, then IRQ line).
    fn apply<B: BlockBackend>(ata: &mut Ata<B>, op: &Op) -> (Vec<u8>, bool) {
        let mut seen = Vec::new();
        match *op {
            Op::Reg(p, v) => ata.write(p, &[v]),
            Op::Cmd(c) => ata.write(port::COMMAND, &[c]),
            Op::Read(p, n) => {
                seen = vec![0; n];
                ata.read(p, &mut seen);
            }
            Op::Data(b, n) => ata.write(port::DATA, &vec![b; n]),
        }
        (seen, ata.irq_pending())
    }

    proptest! {
        /// Drive a disk, save it (through JSON), rebuild it over a copy of its image, and
        /// drive both with the same accesses: the rebuilt disk answers exactly as the
        /// original does and leaves the same image.
        #[test]
        fn rebuilt_disk_behaves_like_the_original(
            before in prop::collection::vec(op(), 0..40),
            after in prop::collection::vec(op(), 1..40),
        ) {
            let mut original = Ata::new(MemBackend::from_vec(image()));
            for o in &before {
                apply(&mut original, o);
            }
            let json = serde_json::to_string(&original.state()).unwrap();
            let state: AtaState = serde_json::from_str(&json).unwrap();
            let copy = MemBackend::from_vec(original.backend().as_slice().to_vec());
            let mut rebuilt = Ata::from_state(&state, copy).unwrap();
            prop_assert_eq!(rebuilt.state(), original.state());
            for o in &after {
                prop_assert_eq!(apply(&mut rebuilt, o), apply(&mut original, o), "{:?}", o);
            }
            prop_assert_eq!(rebuilt.backend().as_slice(), original.backend().as_slice());
        }

        /// Any state is refused or yields a disk that survives any accesses.
        #[test]
        fn arbitrary_states_never_panic(
            status in any::<u8>(),
            pos in prop_oneof![0u32..512, any::<u32>()],
            lba in prop_oneof![0u64..70, any::<u64>()],
            remaining in prop_oneof![0u32..70, any::<u32>()],
            kind in 0u8..4,
            ext in any::<bool>(),
            buf_len in prop_oneof![Just(512usize), 0usize..1024],
            regs in any::<[u8; 12]>(),
            ops in prop::collection::vec(op(), 0..30),
        ) {
            let transfer = match kind {
                0 => TransferState::None,
                1 => TransferState::Identify,
                2 => TransferState::Read { lba, remaining, ext },
                _ => TransferState::Write { lba, remaining, ext },
            };
            let h = |i: usize| HobState { cur: regs[i], hob: regs[i + 1] };
            let state = AtaState {
                version: AtaState::VERSION,
                sectors: SECTORS as u64,
                features: regs[8],
                sector_count: h(0),
                lba_low: h(2),
                lba_mid: h(4),
                lba_high: h(6),
                device: regs[9],
                error: regs[10],
                status,
                control: regs[11],
                intrq: ext,
                transfer,
                buf: vec![0x5a; buf_len],
                pos,
            };
            if let Ok(mut ata) = Ata::from_state(&state, MemBackend::from_vec(image())) {
                for o in &ops {
                    apply(&mut ata, o);
                }
            }
        }
    }

    /// A write of one sector interrupted by a save: the rebuilt disk takes the rest of the
    /// sector and writes it where the original would have.
    #[test]
    fn half_written_sector_survives_a_save() {
        let mut ata = Ata::new(MemBackend::from_vec(image()));
        for (p, v) in [
            (port::DEVICE, 0xE0),
            (port::SECTOR_COUNT, 1),
            (port::LBA_LOW, 9),
            (port::LBA_MID, 0),
            (port::LBA_HIGH, 0),
            (port::COMMAND, command::WRITE_SECTORS),
        ] {
            ata.write(p, &[v]);
        }
        ata.write(port::DATA, &[0xAB; 200]);
        let state = ata.state();
        assert_eq!(state.pos, 200);
        let image = ata.into_backend().as_slice().to_vec();
        let mut rebuilt = Ata::from_state(&state, MemBackend::from_vec(image)).unwrap();
        rebuilt.write(port::DATA, &[0xCD; 312]);
        let mut st = [0u8];
        rebuilt.read(port::STATUS, &mut st);
        assert_eq!(st[0] & (status::DRQ | status::ERR), 0);
        let sector = &rebuilt.backend().as_slice()[9 * SECTOR_SIZE..10 * SECTOR_SIZE];
        assert!(sector[..200].iter().all(|&b| b == 0xAB));
        assert!(sector[200..].iter().all(|&b| b == 0xCD));
    }

    #[test]
    fn corrupt_states_are_refused() {
        let good = Ata::new(MemBackend::from_vec(image())).state();
        let disk = || MemBackend::from_vec(image());
        let refused = |s: AtaState| Ata::from_state(&s, disk()).unwrap_err();
        assert!(matches!(
            refused(AtaState {
                version: 9,
                ..good.clone()
            }),
            StateError::Version { found: 9, .. }
        ));
        assert!(matches!(
            Ata::from_state(&good, MemBackend::from_vec(vec![0; 8 * SECTOR_SIZE])),
            Err(StateError::DiskSize {
                saved: 64,
                attached: 8,
                ..
            })
        ));
        let invalid = [
            AtaState {
                buf: vec![0; 511],
                ..good.clone()
            },
            AtaState {
                pos: 512,
                transfer: TransferState::Identify,
                ..good.clone()
            },
            AtaState {
                pos: 3,
                ..good.clone()
            },
            AtaState {
                status: status::DRDY | status::DRQ,
                ..good.clone()
            },
            AtaState {
                transfer: TransferState::Read {
                    lba: 63,
                    remaining: 2,
                    ext: false,
                },
                ..good.clone()
            },
            AtaState {
                transfer: TransferState::Write {
                    lba: u64::MAX,
                    remaining: 1,
                    ext: true,
                },
                ..good.clone()
            },
            AtaState {
                transfer: TransferState::Write {
                    lba: 0,
                    remaining: 0,
                    ext: true,
                },
                ..good.clone()
            },
            AtaState {
                transfer: TransferState::Read {
                    lba: 0,
                    remaining: 257,
                    ext: false,
                },
                ..good.clone()
            },
        ];
        for s in invalid {
            assert!(
                matches!(refused(s.clone()), StateError::Invalid { .. }),
                "{s:?}"
            );
        }
        // The last sector exactly is fine.
        let edge = AtaState {
            transfer: TransferState::Read {
                lba: 63,
                remaining: 1,
                ext: false,
            },
            ..good
        };
        Ata::from_state(&edge, disk()).unwrap();
    }
}
