//! Property tests for the VMM's own decode paths, driven with hostile input and no KVM:
//!
//! - the ELF loader ([`ElfImage`]): valid images from [`ElfBuilder`] mutated by byte
//!   writes, truncations and overwrites of header, program header and note fields, and
//!   fully random files;
//! - hypercall dispatch ([`dispatch`]) with the core devices only (no rings, no block): call numbers biased toward
//!   the defined ones, arguments toward the interesting addresses, and guest structures
//!   (bench samples, op logs, fault reports) placed where the arguments point;
//! - exit handling ([`handle_exit`]): random synthetic exits against a machine with the
//!   UART, the PIT and the ATA disk on the port bus, as `vm::run` builds it.
//!
//! Guest RAM is filled with a pattern without zero bytes, so a stray write (of zeros too)
//! shows up in the before/after comparison. The coverage-guided versions of the first two
//! are the cargo-fuzz targets `elf_load` and `hypercall_dispatch` in `crates/fuzz`; these
//! run with every `cargo test`.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use pvkit_abi::bench::BenchSample;
use pvkit_abi::boot::KERNEL_MIN_ADDR;
use pvkit_abi::call::{CallReturn, Hypercall, RawCall};
use pvkit_abi::console::MAX_WRITE;
use pvkit_abi::fault::FaultReport;
use pvkit_abi::{AbiVersion, Status, ABI_VERSION};
use pvkit_devices::MemBackend;
use vm_memory::{Bytes, GuestAddress};

use crate::bus::PortBus;
use crate::devices::legacy::ata::attach_ata;
use crate::devices::legacy::pit::attach_pit;
use crate::devices::legacy::uart::{Uart, COM1_BASE, COM1_LEN};
use crate::devices::legacy::vm_clock::VmClock;
use crate::devices::pseudo::markers::BenchMarkers;
use crate::devices::pv::HypercallBus;
use crate::exit::ledger::ExitLedger as Ledger;
use crate::exit::ledger::{ExitKind, ExitLedger};
use crate::exit::{Exit, ExitAction, VmShared};
use crate::hypercall::{dispatch, HypercallContext, Outcome};
use crate::io::console_out::Console;
use crate::io::disk::SharedDisk;
use crate::loader::elf::{ElfError, ElfImage, EHDR_SIZE, PHDR_SIZE, SHDR_SIZE};
use crate::runtime::stop::{GuestFault, StopReason};
use crate::testing::ElfBuilder;
use crate::vm::machine::{VcpuState, Vm};
use crate::vstate::memory::{create_ram, GuestRam};

const RAM_MIB: u64 = 4;
const RAM_END: u64 = RAM_MIB << 20;

/// The RAM fill: no zero byte, period 251 (not a power of two, so shifted copies differ).
fn pattern() -> &'static [u8] {
    static FILL: OnceLock<Vec<u8>> = OnceLock::new();
    FILL.get_or_init(|| (0..RAM_END).map(|i| (i % 251) as u8 + 1).collect())
}

/// [`RAM_MIB`] of guest RAM holding [`pattern`]. One mapping per test thread, refilled on
/// every call: faulting in fresh pages would cost more than the test itself.
fn patterned_ram() -> GuestRam {
    thread_local! {
        static RAM: GuestRam = create_ram(RAM_MIB).unwrap();
    }
    let mem = RAM.with(GuestRam::clone);
    mem.write_slice(pattern(), GuestAddress(0)).unwrap();
    mem
}

fn snapshot(mem: &GuestRam) -> Vec<u8> {
    let mut v = vec![0u8; RAM_END as usize];
    mem.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

/// The first offset where `a` and `b` differ (for failure messages: never print 4 MiB).
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Whether `[addr, addr + len)` lies inside guest RAM (restated with u128 arithmetic).
fn in_ram(addr: u64, len: u64) -> bool {
    u128::from(addr) + u128::from(len) <= u128::from(RAM_END)
}

// ---------------------------------------------------------------------------------------
// ELF
// ---------------------------------------------------------------------------------------

/// The ABI note of a built image.
#[derive(Clone, Debug)]
enum NoteSpec {
    Current,
    Version(u32, u32),
    Missing,
    Raw(Vec<u8>, u32, Vec<u8>),
    CorruptDescsz,
}

/// Parameters for [`ElfBuilder`].
#[derive(Clone, Debug)]
struct ElfSpec {
    addr: u64,
    code: Vec<u8>,
    bss: u64,
    exec: bool,
    /// `Ok(delta)`: entry at `addr + delta`; `Err(abs)`: entry at `abs`.
    entry: Result<i16, u64>,
    note: NoteSpec,
    note_in_phdrs: bool,
    extra: Vec<(u64, u64)>,
}

impl ElfSpec {
    fn build(&self) -> Vec<u8> {
        // The builder adds code length and bss without overflow checks (test code).
        let bss = self.bss.min(u64::MAX - self.code.len() as u64);
        let entry = match self.entry {
            Ok(d) => self.addr.wrapping_add(d as i64 as u64),
            Err(abs) => abs,
        };
        let mut b = ElfBuilder::new(self.addr, &self.code)
            .bss(bss)
            .exec(self.exec)
            .entry(entry)
            .note_in_phdrs(self.note_in_phdrs);
        b = match &self.note {
            NoteSpec::Current => b,
            NoteSpec::Version(major, minor) => b.note(Some(AbiVersion {
                major: *major,
                minor: *minor,
            })),
            NoteSpec::Missing => b.note(None),
            NoteSpec::Raw(name, ntype, desc) => b.raw_note(name, *ntype, desc),
            NoteSpec::CorruptDescsz => b.corrupt_note_descsz(),
        };
        for (addr, len) in &self.extra {
            b = b.extra_segment(*addr, *len);
        }
        b.build()
    }
}

/// Load addresses: mostly inside RAM above `KERNEL_MIN_ADDR`, else near its edges.
fn load_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        5 => (0..0x1000u64).prop_map(|p| KERNEL_MIN_ADDR + p * 16),
        2 => (0..=0x2000u64).prop_map(|d| RAM_END - d),
        1 => (KERNEL_MIN_ADDR - 0x100)..=(KERNEL_MIN_ADDR + 0x100),
        1 => 0..KERNEL_MIN_ADDR,
        1 => (0..0x2000u64).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
    ]
}

/// Extra segments: mostly page-aligned in the upper half of RAM, clear of the code.
fn extra_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0..0x200u64).prop_map(|p| RAM_END / 2 + p * 0x1000),
        1 => load_addr(),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        5 => Just(0u64),
        8 => 0..0x4000u64,
        1 => (RAM_END - 0x1000)..(RAM_END + 0x1000),
        1 => (0..0x100u64).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
    ]
}

fn note_spec() -> impl Strategy<Value = NoteSpec> {
    prop_oneof![
        16 => Just(NoteSpec::Current),
        1 => (0..3u32, 0..3u32).prop_map(|(a, b)| NoteSpec::Version(a, b)),
        1 => Just(NoteSpec::Missing),
        1 => (0..=8usize, any::<u32>(), vec(any::<u8>(), 0..13)).prop_map(|(n, t, d)| {
            NoteSpec::Raw(b"pvkit\0\0\0".get(..n).unwrap_or_default().to_vec(), t, d)
        }),
        1 => Just(NoteSpec::CorruptDescsz),
    ]
}

fn elf_spec() -> impl Strategy<Value = ElfSpec> {
    (
        load_addr(),
        vec(any::<u8>(), 0..300),
        size(),
        prop::bool::weighted(0.9),
        prop_oneof![
            16 => (0..8i16).prop_map(Ok),
            1 => any::<i16>().prop_map(Ok),
            1 => prop_oneof![load_addr(), any::<u64>()].prop_map(Err),
        ],
        note_spec(),
        prop::bool::weighted(0.8),
        vec(
            (extra_addr(), prop_oneof![6 => 0..0x4000u64, 1 => size()]),
            0..=2,
        ),
    )
        .prop_map(
            |(addr, code, bss, exec, entry, note, note_in_phdrs, extra)| ElfSpec {
                addr,
                code,
                bss,
                exec,
                entry,
                note,
                note_in_phdrs,
                extra,
            },
        )
}

/// Where the fields of a file built by [`ElfBuilder`] are (read before mutating it).
struct Layout {
    phnum: usize,
    /// File offset of the note (its `SHT_NOTE` section's `sh_offset`).
    note: Option<usize>,
    /// File offset of the `SHT_NOTE` section header.
    note_sh: Option<usize>,
}

fn le(b: &[u8], off: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    if let (Some(d), Some(s)) = (v.get_mut(..width), b.get(off..off + width)) {
        d.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

impl Layout {
    fn of(file: &[u8]) -> Self {
        let shoff = le(file, 40, 8) as usize;
        let shnum = le(file, 60, 2);
        // The builder's sections: SHN_UNDEF, then the note.
        let note_sh = (shnum == 2).then_some(shoff + SHDR_SIZE);
        Self {
            phnum: (le(file, 56, 2) as usize).max(1),
            note: note_sh.map(|sh| le(file, sh + 24, 8) as usize),
            note_sh,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum PhField {
    Type,
    Flags,
    Offset,
    Vaddr,
    Paddr,
    /// `p_vaddr` and `p_paddr` together (keeps VMA = LMA).
    Addr,
    Filesz,
    Memsz,
    Align,
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Entry,
    Phoff,
    Shoff,
    Phentsize,
    Phnum,
    Shentsize,
    Shnum,
    /// A field of program header `i % phnum`.
    Ph(u8, PhField),
    NoteNamesz,
    NoteDescsz,
    NoteType,
    NoteShOffset,
    NoteShSize,
}

impl Field {
    /// `(offset, width)` pairs to write, or none if the file has no such field.
    fn places(self, l: &Layout) -> Vec<(usize, usize)> {
        let ph = |i: u8| EHDR_SIZE + usize::from(i) % l.phnum * PHDR_SIZE;
        let one = |o: Option<usize>, w: usize| o.map(|o| vec![(o, w)]).unwrap_or_default();
        match self {
            Field::Entry => vec![(24, 8)],
            Field::Phoff => vec![(32, 8)],
            Field::Shoff => vec![(40, 8)],
            Field::Phentsize => vec![(54, 2)],
            Field::Phnum => vec![(56, 2)],
            Field::Shentsize => vec![(58, 2)],
            Field::Shnum => vec![(60, 2)],
            Field::Ph(i, f) => {
                let p = ph(i);
                match f {
                    PhField::Type => vec![(p, 4)],
                    PhField::Flags => vec![(p + 4, 4)],
                    PhField::Offset => vec![(p + 8, 8)],
                    PhField::Vaddr => vec![(p + 16, 8)],
                    PhField::Paddr => vec![(p + 24, 8)],
                    PhField::Addr => vec![(p + 16, 8), (p + 24, 8)],
                    PhField::Filesz => vec![(p + 32, 8)],
                    PhField::Memsz => vec![(p + 40, 8)],
                    PhField::Align => vec![(p + 48, 8)],
                }
            }
            Field::NoteNamesz => one(l.note, 4),
            Field::NoteDescsz => one(l.note.map(|n| n + 4), 4),
            Field::NoteType => one(l.note.map(|n| n + 8), 4),
            Field::NoteShOffset => one(l.note_sh.map(|s| s + 24), 8),
            Field::NoteShSize => one(l.note_sh.map(|s| s + 32), 8),
        }
    }
}

fn field() -> impl Strategy<Value = Field> {
    let ph = prop_oneof![
        Just(PhField::Type),
        Just(PhField::Flags),
        Just(PhField::Offset),
        Just(PhField::Vaddr),
        Just(PhField::Paddr),
        Just(PhField::Addr),
        Just(PhField::Filesz),
        Just(PhField::Memsz),
        Just(PhField::Align),
    ];
    prop_oneof![
        1 => Just(Field::Entry),
        1 => Just(Field::Phoff),
        1 => Just(Field::Shoff),
        1 => Just(Field::Phentsize),
        1 => Just(Field::Phnum),
        1 => Just(Field::Shentsize),
        1 => Just(Field::Shnum),
        9 => (0..4u8, ph).prop_map(|(i, f)| Field::Ph(i, f)),
        1 => Just(Field::NoteNamesz),
        1 => Just(Field::NoteDescsz),
        1 => Just(Field::NoteType),
        1 => Just(Field::NoteShOffset),
        1 => Just(Field::NoteShSize),
    ]
}

/// Values for header fields: small (offsets, counts, types), around the kernel area and
/// the end of RAM, near 2^64 and 2^32, anything.
fn field_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..0x200u64,
        2 => (0..0x2000u64).prop_map(|d| KERNEL_MIN_ADDR + d),
        2 => (RAM_END - 0x1000)..(RAM_END + 0x1000),
        1 => (0..0x40u64).prop_map(|d| u64::MAX - d),
        1 => (0..0x40u64).prop_map(|d| (1u64 << 32).wrapping_sub(0x20) + d),
        1 => any::<u64>(),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(Field, u64),
    Byte(Index, u8),
    Truncate(Index),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (field(), field_value()).prop_map(|(f, v)| Mutation::Set(f, v)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
    ]
}

impl Mutation {
    fn apply(&self, file: &mut Vec<u8>, l: &Layout) {
        match self {
            Mutation::Set(f, v) => {
                let bytes = v.to_le_bytes();
                for (off, w) in f.places(l) {
                    if let (Some(d), Some(s)) = (file.get_mut(off..off + w), bytes.get(..w)) {
                        d.copy_from_slice(s);
                    }
                }
            }
            Mutation::Byte(i, b) => {
                if !file.is_empty() {
                    let at = i.index(file.len());
                    file[at] = *b;
                }
            }
            Mutation::Truncate(i) => {
                let len = i.index(file.len() + 1);
                file.truncate(len);
            }
            Mutation::Append(bytes) => file.extend_from_slice(bytes),
        }
    }
}

/// Parses `file`; if it is accepted, checks the image and loads it into fresh patterned RAM.
///
/// - an accepted image is consistent (segments non-empty, sorted, disjoint, file ranges in
///   the file, no address overflow, entry in an executable segment, ABI accepted);
/// - `load` succeeds exactly when every segment lies in RAM at or above
///   `KERNEL_MIN_ADDR`; then RAM holds each segment's file bytes and zeros, and is
///   unchanged elsewhere; a failed load leaves RAM untouched.
fn check_elf(file: &[u8]) -> Result<bool, TestCaseError> {
    let Ok(img) = ElfImage::parse(file) else {
        return Ok(false);
    };
    prop_assert!(!img.segments.is_empty());
    prop_assert!(
        ABI_VERSION.host_accepts(img.abi),
        "accepted ABI {}",
        img.abi
    );
    for s in &img.segments {
        prop_assert!(s.mem_size > 0, "{:?}", s);
        prop_assert!(s.file_size as u64 <= s.mem_size, "{:?}", s);
        prop_assert!(s.addr.checked_add(s.mem_size).is_some(), "{:?}", s);
        prop_assert!(
            s.file_offset
                .checked_add(s.file_size)
                .is_some_and(|e| e <= file.len()),
            "{:?} outside a {}-byte file",
            s,
            file.len()
        );
    }
    for w in img.segments.windows(2) {
        prop_assert!(w[0].addr + w[0].mem_size <= w[1].addr, "{:?}", w);
    }
    prop_assert!(
        img.segments
            .iter()
            .any(|s| s.exec && img.entry >= s.addr && img.entry - s.addr < s.mem_size),
        "entry {:#x} outside the executable segments",
        img.entry
    );

    let fits = img
        .segments
        .iter()
        .all(|s| s.addr >= KERNEL_MIN_ADDR && in_ram(s.addr, s.mem_size));
    let mem = patterned_ram();
    let before = pattern();
    let got = img.load(&mem);
    let after = snapshot(&mem);
    match got {
        Err(e) => {
            prop_assert!(
                first_diff(before, &after).is_none(),
                "failed load ({}) wrote guest RAM at {:#x?}",
                e,
                first_diff(before, &after)
            );
            prop_assert!(!fits, "load refused an image that fits: {}", e);
            prop_assert!(matches!(e, ElfError::OutsideRam { .. }), "{}", e);
        }
        Ok(k) => {
            prop_assert!(fits, "loaded segments outside RAM: {:?}", img.segments);
            let mut want = before.to_vec();
            for s in &img.segments {
                prop_assert!(s.addr >= KERNEL_MIN_ADDR && in_ram(s.addr, s.mem_size));
                let a = s.addr as usize;
                let end = a + s.mem_size as usize;
                want[a..a + s.file_size]
                    .copy_from_slice(&file[s.file_offset..s.file_offset + s.file_size]);
                want[a + s.file_size..end].fill(0);
            }
            prop_assert!(
                first_diff(&want, &after).is_none(),
                "RAM after load differs from the image at {:#x?}",
                first_diff(&want, &after)
            );
            prop_assert_eq!(k.entry, img.entry);
            prop_assert_eq!(k.abi, img.abi);
            let start = img.segments[0].addr;
            let end = img.segments.iter().map(|s| s.addr + s.mem_size).max();
            prop_assert_eq!(Some(k.span), end.map(|e| start..e));
        }
    }
    Ok(true)
}

/// The first 24 bytes of a valid header: ELF64, little-endian, ET_EXEC, x86_64, version 1.
const ELF_PREFIX: [u8; 24] = [
    0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 62, 0, 1, 0, 0, 0,
];

fn random_file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Anything.
        vec(any::<u8>(), 0..512),
        // A valid identification, the rest random.
        vec(any::<u8>(), 0..1024).prop_map(|rest| [&ELF_PREFIX[..], &rest].concat()),
        // Also plausible program header table fields: e_phoff 64, e_phentsize 56,
        // e_phnum 1-4; the program headers and everything after them random.
        (vec(any::<u8>(), 40..1024), 1..=4u8, prop::bool::ANY).prop_map(|(rest, n, load)| {
            let mut f = [&ELF_PREFIX[..], &rest].concat();
            f[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
            f[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
            f[56..58].copy_from_slice(&u16::from(n).to_le_bytes());
            if load && f.len() >= EHDR_SIZE + 4 {
                // The first program header is a PT_LOAD.
                f[EHDR_SIZE..EHDR_SIZE + 4].copy_from_slice(&1u32.to_le_bytes());
            }
            f
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn elf_mutated_images(
        spec in elf_spec(),
        muts in prop_oneof![
            3 => vec(mutation(), 0..=1),
            2 => vec(mutation(), 2..=3),
            1 => vec(mutation(), 4..8),
        ],
    ) {
        let mut file = spec.build();
        let layout = Layout::of(&file);
        for m in &muts {
            m.apply(&mut file, &layout);
        }
        check_elf(&file)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn elf_random_files(file in random_file()) {
        check_elf(&file)?;
    }
}

/// The mutation strategy is not vacuous: unmutated images of common specs load.
#[test]
fn elf_unmutated_images_load() {
    let spec = ElfSpec {
        addr: KERNEL_MIN_ADDR + 0x1000,
        code: vec![0xf4; 17],
        bss: 0x2345,
        exec: true,
        entry: Ok(3),
        note: NoteSpec::Current,
        note_in_phdrs: true,
        extra: vec![(RAM_END - 0x1000, 0x1000)],
    };
    assert!(check_elf(&spec.build()).unwrap());
    let spec = ElfSpec {
        note_in_phdrs: false,
        ..spec
    };
    assert!(check_elf(&spec.build()).unwrap());
}

// ---------------------------------------------------------------------------------------
// Hypercalls
// ---------------------------------------------------------------------------------------

const FAULT_REPORT_SIZE: u64 = std::mem::size_of::<FaultReport>() as u64;
const BENCH_SAMPLE_SIZE: u64 = std::mem::size_of::<BenchSample>() as u64;
const DISK_SECTORS: usize = 64;

/// Guest-physical addresses: 0, page-aligned inside RAM, anywhere in RAM, the end of RAM
/// ± a little, the top of the address space, anything.
fn addr_arg() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        4 => (0..RAM_END / 4096).prop_map(|p| p * 4096),
        2 => 0..RAM_END,
        3 => (RAM_END - 512)..=(RAM_END + 512),
        2 => (0..=512u64).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
    ]
}

/// Packed case ids, mostly valid (device 1-4, variant 1-10, workload 1-8), often one of
/// a few (so that phases begun in a sequence are also ended).
fn case_id() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => prop::sample::select(vec![0x1_0002_0001u64, 0x3_0006_0002, 0x7_0008_0003]),
        2 => (0..=5u64, 0..=11u64, 0..=9u64).prop_map(|(d, v, w)| d | v << 16 | w << 32),
        1 => any::<u64>(),
    ]
}

fn arg() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => addr_arg(),
        // Lengths, counts, marks: around MAX_WRITE and the bench limits.
        3 => 0..=(MAX_WRITE + 0x100),
        2 => case_id(),
        1 => any::<u64>(),
    ]
}

fn call_nr() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 1..=11u32,
        1 => prop_oneof![Just(0u32), Just(12)],
        1 => 13..=0x600u32,
        1 => any::<u32>(),
    ]
}

fn raw_call() -> impl Strategy<Value = RawCall> {
    (call_nr(), [arg(), arg(), arg(), arg()]).prop_map(|(nr, args)| RawCall { nr, args })
}

/// One call of a sequence, with what the guest stored for it beforehand: any call, or one
/// of the calls that read guest structures with arguments shaped for it.
fn hc_step() -> impl Strategy<Value = (Option<Store>, RawCall)> {
    let call = |nr: Hypercall, args: [u64; 4]| RawCall {
        nr: nr as u32,
        args,
    };
    let console_len = prop_oneof![
        3 => 0..=64u64,
        2 => 0..=MAX_WRITE,
        1 => (MAX_WRITE - 1)..=(MAX_WRITE + 1),
        1 => any::<u64>(),
    ];
    prop_oneof![
        4 => (prop::option::weighted(0.3, store()), raw_call()),
        2 => (addr_arg(), console_len, arg(), arg())
            .prop_map(move |(a, l, x, y)| (None, call(Hypercall::ConsoleWrite, [a, l, x, y]))),
        2 => (case_id(), prop_oneof![4 => 1..=2u64, 1 => 0..=3u64, 1 => any::<u64>()], arg(), arg())
            .prop_map(move |(c, m, o, x)| (None, call(Hypercall::BenchPhase, [c, m, o, x]))),
        2 => (bench_store(), addr_arg(), addr_arg(), arg())
            .prop_map(move |(s, a, l, x)| (Some(s), call(Hypercall::BenchResult, [a, l, 0, x]))),
        1 => (vec(any::<u8>(), FAULT_REPORT_SIZE as usize), addr_arg(), arg())
            .prop_map(move |(r, a, x)| {
                (Some(Store::Fault(r)), call(Hypercall::ReportFault, [a, x, x, x]))
            }),
    ]
}

/// Something the guest stores before the calls, where a call's arguments point.
#[derive(Clone, Debug)]
enum Store {
    /// A `BenchSample` at arg0 and an op log at arg1; arg2 becomes the log's length.
    Bench {
        case: u64,
        sample_count: u32,
        samples_addr: u64,
        medians: bool,
        log: Vec<(u32, u64, u64, u32)>,
    },
    /// A `FaultReport` at arg0.
    Fault(Vec<u8>),
    /// Bytes at arg0.
    Bytes(Vec<u8>),
}

fn bench_store() -> impl Strategy<Value = Store> {
    let rec = (
        prop_oneof![4 => 1..=2u32, 1 => any::<u32>()],
        prop_oneof![4 => 0..DISK_SECTORS as u64 + 4, 1 => any::<u64>()],
        addr_arg(),
        prop_oneof![4 => (1..=8u32).prop_map(|k| k * 512), 1 => any::<u32>()],
    );
    (
        case_id(),
        prop_oneof![3 => 0..=16u32, 1 => 8180..=8200u32, 1 => any::<u32>()],
        addr_arg(),
        any::<bool>(),
        vec(rec, 0..6),
    )
        .prop_map(
            |(case, sample_count, samples_addr, medians, log)| Store::Bench {
                case,
                sample_count,
                samples_addr,
                medians,
                log,
            },
        )
}

fn store() -> impl Strategy<Value = Store> {
    prop_oneof![
        3 => bench_store(),
        1 => vec(any::<u8>(), FAULT_REPORT_SIZE as usize).prop_map(Store::Fault),
        1 => vec(any::<u8>(), 1..128).prop_map(Store::Bytes),
    ]
}

impl Store {
    /// Places the structure (as far as it fits RAM: the guest cannot store outside it) and
    /// adjusts the call's arguments.
    fn place(&self, mem: &GuestRam, raw: &mut RawCall) {
        let put = |at: u64, b: &[u8]| {
            let _ = mem.write_slice(b, GuestAddress(at));
        };
        match self {
            Store::Bench {
                case,
                sample_count,
                samples_addr,
                medians,
                log,
            } => {
                let mut s = vec![0u8; BENCH_SAMPLE_SIZE as usize];
                s[0..8].copy_from_slice(&case.to_le_bytes());
                s[8..16].copy_from_slice(&1000u64.to_le_bytes());
                if *medians {
                    s[32..40].copy_from_slice(&7u64.to_le_bytes());
                    s[40..48].copy_from_slice(&9u64.to_le_bytes());
                }
                s[52..56].copy_from_slice(&sample_count.to_le_bytes());
                s[56..64].copy_from_slice(&samples_addr.to_le_bytes());
                put(raw.args[0], &s);
                let mut l = Vec::new();
                for (op, sector, addr, len) in log {
                    l.extend_from_slice(&sector.to_le_bytes());
                    l.extend_from_slice(&addr.to_le_bytes());
                    l.extend_from_slice(&len.to_le_bytes());
                    l.extend_from_slice(&op.to_le_bytes());
                }
                put(raw.args[1], &l);
                raw.args[2] = log.len() as u64;
            }
            Store::Fault(b) | Store::Bytes(b) => put(raw.args[0], b),
        }
    }
}

/// The hypercall context of the `hypercall.rs` unit tests, over patterned RAM.
struct Hc {
    mem: GuestRam,
    console: Console,
    ledger: ExitLedger,
    bench: std::sync::Arc<BenchMarkers>,
    pv: HypercallBus,
}

impl Hc {
    fn new(disk: bool) -> Self {
        let console = Console::capture();
        let devices = crate::devices::core_devices(console.clone());
        let bench = devices.bench;
        if disk {
            let bytes = (0..DISK_SECTORS * 512)
                .map(|i| (i * 7 + i / 512) as u8)
                .collect();
            bench.set_disk(Box::new(SharedDisk::new(Box::new(MemBackend::from_vec(
                bytes,
            )))));
        }
        Self {
            mem: patterned_ram(),
            console,
            ledger: ExitLedger::new(),
            bench,
            pv: devices.bus,
        }
    }

    fn call(&mut self, raw: RawCall) -> Outcome {
        // As the exit handler does: the ledger counts the call before it runs.
        self.ledger.record(match Hypercall::try_from(raw.nr) {
            Ok(h) => ExitKind::Hypercall(h),
            Err(_) => ExitKind::UnknownHypercall,
        });
        let ctx = HypercallContext {
            ledger: &self.ledger,
            bus: &self.pv,
            vcpu: 0,
        };
        dispatch(&self.mem, raw, &ctx)
    }
}

/// Checks one call's outcome against `pvkit_abi::call` (and the validation order of
/// `hypercall.rs` where the ABI leaves it open). `ram` is guest RAM (unchanged by any call:
/// checked by the caller); `console` and `phases`/`samples` are before → after.
fn check_call(
    raw: RawCall,
    out: &Outcome,
    ram: &[u8],
    console: (&[u8], &[u8]),
    phases: (usize, usize),
    samples: (usize, usize),
) -> Result<(), TestCaseError> {
    let [a0, a1, _, _] = raw.args;
    if let Outcome::Return(r) = out {
        if r.status != Status::Ok {
            prop_assert_eq!(r.value, 0, "failure with a value: {:?}", r);
        }
    }
    let Ok(h) = Hypercall::try_from(raw.nr) else {
        prop_assert_eq!(out, &Outcome::Return(CallReturn::err(Status::ENOSYS)));
        prop_assert_eq!(console.0, console.1);
        return Ok(());
    };
    // Only a successful console write prints.
    if h != Hypercall::ConsoleWrite {
        prop_assert_eq!(console.0.len(), console.1.len(), "{:?} printed", h);
    }
    let ret = |status: Status, value: u64| Outcome::Return(CallReturn { status, value });
    match h {
        Hypercall::AbiVersion => prop_assert_eq!(out, &ret(Status::Ok, ABI_VERSION.to_u64())),
        // CONSOLE (1 << 0) and BENCH (1 << 7), from docs/ABI.md's bit table.
        Hypercall::Features => prop_assert_eq!(out, &ret(Status::Ok, 0x81)),
        Hypercall::ConsoleWrite => {
            if a1 > MAX_WRITE {
                prop_assert_eq!(out, &ret(Status::E2BIG, 0));
            } else if !in_ram(a0, a1) {
                prop_assert_eq!(out, &ret(Status::EFAULT, 0));
            } else {
                prop_assert_eq!(out, &ret(Status::Ok, a1));
                let (before, after) = console;
                let printed = after.get(before.len()..).unwrap_or_default();
                prop_assert!(
                    after.starts_with(before) && printed == &ram[a0 as usize..(a0 + a1) as usize],
                    "console_write({:#x}, {}) printed the wrong bytes",
                    a0,
                    a1
                );
            }
            if !matches!(out, Outcome::Return(r) if r.status == Status::Ok) {
                prop_assert_eq!(console.0, console.1);
            }
        }
        Hypercall::Exit => prop_assert_eq!(out, &Outcome::Stop(StopReason::Exit(a0 as u8))),
        Hypercall::ReportFault => {
            if in_ram(a0, FAULT_REPORT_SIZE) {
                // The oracle decodes the documented layout by hand (docs/ABI.md:
                // vector u32 @0, message_len u32 @4, error_code @8, rip @16, cr2 @24,
                // message @32), independently of the VMM's typed wire read.
                let at = a0 as usize;
                let u32_at =
                    |o: usize| u32::from_le_bytes(ram[at + o..at + o + 4].try_into().unwrap());
                let u64_at =
                    |o: usize| u64::from_le_bytes(ram[at + o..at + o + 8].try_into().unwrap());
                let text_len = (u32_at(4) as usize).min(256);
                let want = GuestFault {
                    vector: u32_at(0),
                    error_code: u64_at(8),
                    rip: u64_at(16),
                    cr2: u64_at(24),
                    message: String::from_utf8_lossy(&ram[at + 32..at + 32 + text_len])
                        .into_owned(),
                };
                prop_assert_eq!(out, &Outcome::Stop(StopReason::Fault(want)));
            } else {
                prop_assert_eq!(
                    out,
                    &Outcome::Stop(StopReason::UnreadableFault { addr: a0 })
                );
            }
        }
        Hypercall::BenchPhase => {
            let Outcome::Return(r) = out else {
                return Err(TestCaseError::fail(format!("bench_phase stopped: {out:?}")));
            };
            let ended = r.status == Status::Ok && a1 == 2;
            prop_assert_eq!(phases.1, phases.0 + usize::from(ended));
            if r.status == Status::Ok {
                prop_assert!(a1 == 1 || a1 == 2, "bench_phase accepted mark {}", a1);
            }
        }
        Hypercall::BenchResult => {
            let Outcome::Return(r) = out else {
                return Err(TestCaseError::fail(format!(
                    "bench_result stopped: {out:?}"
                )));
            };
            if !in_ram(a0, BENCH_SAMPLE_SIZE) {
                prop_assert_eq!(r.status, Status::EFAULT);
            }
            let stored = r.status == Status::Ok;
            prop_assert_eq!(samples.1, samples.0 + usize::from(stored));
        }
        // No rings, no block device, no balloon: the PV calls are not supported.
        Hypercall::RegisterRegion
        | Hypercall::BlockCapacity
        | Hypercall::BlockIo
        | Hypercall::NetInfo
        | Hypercall::NetSend
        | Hypercall::RingKick
        | Hypercall::QueueInterrupt
        | Hypercall::BalloonInflate
        | Hypercall::BalloonDeflate
        | Hypercall::BalloonInfo
        | Hypercall::BalloonTarget
        | Hypercall::VcpuUp
        | Hypercall::SendIpi
        | Hypercall::LockWait
        | Hypercall::LockKick
        | Hypercall::FreePageHint => prop_assert_eq!(out, &ret(Status::EOPNOTSUPP, 0)),
    }
    if h != Hypercall::BenchPhase {
        prop_assert_eq!(phases.0, phases.1);
    }
    if h != Hypercall::BenchResult {
        prop_assert_eq!(samples.0, samples.1);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every call of a sequence answers as the ABI says, and none writes guest RAM: without
    /// PV devices no hypercall writes guest memory (`pvkit_abi::call`: "memory not named
    /// by the call is preserved", and none of calls 1-7 names memory to write; calls 8-11
    /// are `EOPNOTSUPP`). The op-log verifier of `BenchResult` only reads.
    #[test]
    fn hypercall_sequences(
        disk in any::<bool>(),
        steps in vec(hc_step(), 1..16),
    ) {
        let mut hc = Hc::new(disk);
        // The guest's stores first, then the calls: RAM must not change from here on.
        let calls: Vec<RawCall> = steps
            .iter()
            .map(|(store, raw)| {
                let mut raw = *raw;
                if let Some(s) = store {
                    s.place(&hc.mem, &mut raw);
                }
                raw
            })
            .collect();
        let ram = snapshot(&hc.mem);
        for raw in calls {
            let console_before = hc.console.captured();
            let phases = hc.bench.phases().len();
            let samples = hc.bench.samples().len();
            let out = hc.call(raw);
            let console_after = hc.console.captured();
            check_call(
                raw,
                &out,
                &ram,
                (&console_before, &console_after),
                (phases, hc.bench.phases().len()),
                (samples, hc.bench.samples().len()),
            )?;
        }
        let after = snapshot(&hc.mem);
        prop_assert!(
            first_diff(&ram, &after).is_none(),
            "a hypercall wrote guest RAM at {:#x?}",
            first_diff(&ram, &after)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Exits
// ---------------------------------------------------------------------------------------

/// A synthetic exit, owning its data.
#[derive(Clone, Debug)]
enum ExitSpec {
    IoOut(u16, Vec<u8>),
    IoIn(u16, usize),
    Hypercall(RawCall),
    MmioRead(u64, usize),
    MmioWrite(u64, Vec<u8>),
    Hlt,
    Shutdown,
    InternalError(u32),
    FailEntry(u64),
    /// With the watchdog's stop flag set or not.
    Interrupted(bool),
    Other(u32),
    /// An ATA command as a driver issues it: one exit per task-file register (device,
    /// sector count, LBA low/mid/high), one for the command, a status read, then a data
    /// transfer of `transfer` bytes (out for WRITE SECTORS, else in).
    AtaCommand {
        count: u8,
        lba: u32,
        command: u8,
        transfer: usize,
    },
}

/// Whether a device of [`exit_machine`] claims `port`.
fn claimed(port: u16) -> bool {
    matches!(port, 0x3f8..=0x3ff | 0x40..=0x43 | 0x61 | 0x1f0..=0x1f7 | 0x3f6)
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        2 => 0x3f8..=0x3ffu16,
        2 => prop_oneof![0x40..=0x43u16, Just(0x61)],
        3 => prop_oneof![3 => Just(0x1f0u16), 3 => 0x1f1..=0x1f7u16, 1 => Just(0x3f6)],
        1 => 0x500..=0x520u16,
        1 => 0xfff0..=0xffffu16,
        1 => any::<u16>(),
    ]
}

/// Access lengths: mostly 0-4 bytes, sometimes a string I/O batch, sometimes huge.
fn len() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0..=4usize,
        2 => 0..=1024usize,
        1 => prop_oneof![Just(512usize), Just(4096), Just(4097), Just(65536)],
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..=4),
        // ATA commands (READ/WRITE SECTORS, IDENTIFY, FLUSH, ...) and device/LBA values.
        2 => prop::sample::select(vec![
            0x20u8, 0x24, 0x30, 0x34, 0xec, 0xe7, 0xea, 0x91, 0xef, 0xe0, 0xa0, 0x40, 0x01, 0x04,
        ])
        .prop_map(|b| vec![b]),
        2 => (len(), any::<u8>())
            .prop_map(|(n, seed)| (0..n).map(|i| seed.wrapping_add((i * 31) as u8)).collect()),
    ]
}

fn mmio_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0xfee0_0000..0xfee0_1000u64,
        1 => (RAM_END - 8)..(RAM_END + 8),
        1 => 0xd000_0000..0xffff_ffffu64,
        1 => any::<u64>(),
    ]
}

fn exit_spec() -> impl Strategy<Value = ExitSpec> {
    prop_oneof![
        8 => (port(), data()).prop_map(|(p, d)| ExitSpec::IoOut(p, d)),
        8 => (port(), len()).prop_map(|(p, n)| ExitSpec::IoIn(p, n)),
        4 => raw_call().prop_map(ExitSpec::Hypercall),
        2 => (mmio_addr(), prop_oneof![0..=8usize, len()]).prop_map(|(a, n)| ExitSpec::MmioRead(a, n)),
        2 => (mmio_addr(), data()).prop_map(|(a, d)| ExitSpec::MmioWrite(a, d)),
        1 => Just(ExitSpec::Hlt),
        1 => Just(ExitSpec::Shutdown),
        1 => any::<u32>().prop_map(ExitSpec::InternalError),
        1 => any::<u64>().prop_map(ExitSpec::FailEntry),
        1 => any::<bool>().prop_map(ExitSpec::Interrupted),
        1 => any::<u32>().prop_map(ExitSpec::Other),
        3 => (
            prop_oneof![4 => 0..=3u8, 1 => any::<u8>()],
            prop_oneof![4 => 0..(DISK_SECTORS as u32 + 4), 1 => any::<u32>()],
            prop_oneof![
                4 => prop::sample::select(vec![0x20u8, 0x30, 0xec, 0xe7]),
                1 => any::<u8>(),
            ],
            prop_oneof![3 => Just(512usize), 1 => Just(1024), 1 => len()],
        )
            .prop_map(|(count, lba, command, transfer)| ExitSpec::AtaCommand {
                count,
                lba,
                command,
                transfer,
            }),
    ]
}

/// A VM and one vCPU's state, as the run loop has them.
struct Machine {
    vm: Vm,
    cpu: VcpuState,
}

/// The machine of the `exit` unit tests, with the PIT and the ATA disk attached as the
/// builder attaches them, and patterned RAM.
fn exit_machine() -> Machine {
    let console = Console::capture();
    let mut bus = PortBus::new();
    bus.insert_mut(
        COM1_BASE.into(),
        COM1_LEN.into(),
        "com1",
        Uart::new(console.clone()),
    )
    .unwrap();
    attach_pit(&mut bus, VmClock::start()).unwrap();
    let disk = (0..DISK_SECTORS * 512).map(|i| (i / 512) as u8).collect();
    attach_ata(&mut bus, MemBackend::from_vec(disk)).unwrap();
    let shared = VmShared::new(patterned_ram(), bus);
    Machine {
        vm: Vm::new(None, shared, crate::devices::core_devices(console).bus),
        cpu: VcpuState::new(0, Ledger::new()),
    }
}

/// Handles `exit` as the vCPU thread does.
fn handle_exit(m: &mut Machine, exit: Exit<'_>) -> ExitAction {
    m.cpu.handle(&m.vm, exit)
}

/// Feeds one exit; checks the action and that it was counted exactly once.
fn check_exit(m: &mut Machine, spec: &ExitSpec) -> Result<(), TestCaseError> {
    let total = m.cpu.exits.ledger.total();
    let action = match spec {
        ExitSpec::IoOut(port, data) => {
            let a = handle_exit(m, Exit::IoOut { port: *port, data });
            prop_assert_eq!(&a, &ExitAction::Continue);
            a
        }
        ExitSpec::IoIn(port, n) => {
            let mut data = vec![0x5au8; *n];
            let a = handle_exit(
                m,
                Exit::IoIn {
                    port: *port,
                    data: &mut data,
                },
            );
            prop_assert_eq!(&a, &ExitAction::Continue);
            if !claimed(*port) {
                prop_assert!(data.iter().all(|&b| b == 0xff), "open bus read {:#x}", port);
            }
            a
        }
        ExitSpec::Hypercall(raw) => {
            let a = handle_exit(m, Exit::Hypercall(*raw));
            match (Hypercall::try_from(raw.nr), &a) {
                (Err(_), a) => {
                    prop_assert_eq!(a, &ExitAction::Return(CallReturn::err(Status::ENOSYS)))
                }
                (Ok(Hypercall::Exit), a) => {
                    prop_assert_eq!(a, &ExitAction::Stop(StopReason::Exit(raw.args[0] as u8)))
                }
                (Ok(Hypercall::ReportFault), ExitAction::Stop(_)) => {}
                (Ok(h), ExitAction::Return(r)) if h != Hypercall::ReportFault => {
                    if r.status != Status::Ok {
                        prop_assert_eq!(r.value, 0, "{:?} failed with a value", h);
                    }
                }
                (h, a) => prop_assert!(false, "{:?} gave {:?}", h, a),
            }
            a
        }
        ExitSpec::MmioRead(addr, n) => {
            let mut data = vec![0x5au8; *n];
            let a = handle_exit(
                m,
                Exit::MmioRead {
                    addr: *addr,
                    data: &mut data,
                },
            );
            prop_assert!(data.iter().all(|&b| b == 0xff));
            prop_assert_eq!(&a, &ExitAction::Continue);
            a
        }
        ExitSpec::MmioWrite(addr, data) => {
            let a = handle_exit(m, Exit::MmioWrite { addr: *addr, data });
            prop_assert_eq!(&a, &ExitAction::Continue);
            a
        }
        ExitSpec::Hlt => {
            let a = handle_exit(m, Exit::Hlt);
            prop_assert_eq!(&a, &ExitAction::Stop(StopReason::Halted { rip: None }));
            a
        }
        ExitSpec::Shutdown => {
            let a = handle_exit(m, Exit::Shutdown);
            prop_assert_eq!(&a, &ExitAction::Stop(StopReason::Shutdown { rip: None }));
            a
        }
        ExitSpec::InternalError(suberror) => {
            let a = handle_exit(
                m,
                Exit::InternalError {
                    suberror: *suberror,
                },
            );
            prop_assert!(
                matches!(&a, ExitAction::Stop(StopReason::InternalError { .. })),
                "{:?}",
                a
            );
            a
        }
        ExitSpec::FailEntry(reason) => {
            let a = handle_exit(m, Exit::FailEntry { reason: *reason });
            prop_assert!(
                matches!(&a, ExitAction::Stop(StopReason::InternalError { .. })),
                "{:?}",
                a
            );
            a
        }
        ExitSpec::Interrupted(stop) => {
            m.vm.shared.stop_requested.store(*stop, Ordering::Release);
            let a = handle_exit(m, Exit::Interrupted);
            let want = if *stop {
                ExitAction::Stop(StopReason::Timeout {
                    rip: None,
                    disk: crate::runtime::signals::DiskFlush::NoDisk,
                })
            } else {
                ExitAction::Continue
            };
            prop_assert_eq!(&a, &want);
            a
        }
        ExitSpec::AtaCommand {
            count,
            lba,
            command,
            transfer,
        } => {
            let [l0, l1, l2, l3] = lba.to_le_bytes();
            for (port, value) in [
                (0x1f6, 0xe0 | (l3 & 0x0f)),
                (0x1f2, *count),
                (0x1f3, l0),
                (0x1f4, l1),
                (0x1f5, l2),
                (0x1f7, *command),
            ] {
                check_exit(m, &ExitSpec::IoOut(port, vec![value]))?;
            }
            check_exit(m, &ExitSpec::IoIn(0x1f7, 1))?;
            let data = if *command == 0x30 {
                ExitSpec::IoOut(0x1f0, vec![0xa5; *transfer])
            } else {
                ExitSpec::IoIn(0x1f0, *transfer)
            };
            return check_exit(m, &data);
        }
        ExitSpec::Other(reason) => {
            let a = handle_exit(m, Exit::Other { reason: *reason });
            prop_assert!(
                matches!(&a, ExitAction::Stop(StopReason::InternalError { .. })),
                "{:?}",
                a
            );
            a
        }
    };
    prop_assert_eq!(
        m.cpu.exits.ledger.total(),
        total + 1,
        "{:?} → {:?} not counted once",
        spec,
        action
    );
    prop_assert!(m.cpu.exits.first_exit.is_some());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random exit sequences (the run loop stops at the first `Stop`; the handler must not
    /// care): every exit gets the action its kind calls for, is counted once, and guest RAM
    /// is untouched (no DMA device, no PV device).
    #[test]
    fn exit_sequences(exits in vec(exit_spec(), 1..24)) {
        let mut m = exit_machine();
        for e in &exits {
            check_exit(&mut m, e)?;
        }
        let after = snapshot(m.vm.mem());
        prop_assert!(
            first_diff(pattern(), &after).is_none(),
            "an exit wrote guest RAM at {:#x?}",
            first_diff(pattern(), &after)
        );
    }
}
