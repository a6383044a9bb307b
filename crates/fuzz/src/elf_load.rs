//! `elf_load`: `pvkit_vmm::loader::elf::ElfImage::parse` and `load` on hostile guest files.
//!
//! An input is either a structured image — built by the VMM's own `testing::ElfBuilder`
//! from fuzzed parameters (addresses, sizes, entry, note, extra segments) and then patched
//! with fuzzed `(offset, bytes)` writes, so that every header field is reachable from a
//! file that is otherwise valid — or raw file bytes.
//!
//! Invariants:
//! - `parse` never panics; when it accepts a file, the image is consistent: at least one
//!   segment, sorted by address and non-overlapping, each one's file bytes inside the file
//!   and no longer than its memory size, no address overflow, the entry point inside an
//!   executable segment, and an ABI version this host accepts;
//! - `load` never panics; it succeeds exactly when every segment lies in RAM at or above
//!   `KERNEL_MIN_ADDR`; on success guest RAM holds each segment's file bytes followed by
//!   zeros and is unchanged everywhere else; on failure guest RAM is unchanged.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::boot::KERNEL_MIN_ADDR;
use pvkit_abi::{AbiVersion, ABI_VERSION};
use pvkit_vmm::loader::elf::ElfImage;
use pvkit_vmm::testing::ElfBuilder;
use pvkit_vmm::vstate::memory::{create_ram, GuestRam};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::{encode_enum, encode_struct};

/// Most patches per input.
pub const MAX_OPS: usize = 64;
/// Guest RAM (the VMM's minimum).
const RAM_MIB: u64 = 4;
const RAM_BYTES: usize = (RAM_MIB << 20) as usize;

/// A guest-physical address for a segment or an entry point.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `KERNEL_MIN_ADDR + 16 * v`: inside RAM for small `v`, past its end for large ones.
    Kernel(u16),
    /// `16 * v`: below `KERNEL_MIN_ADDR`.
    Low(u16),
    /// Near the end of RAM: `4 MiB - 16 * v`.
    End(u16),
    /// Anything.
    Raw(u64),
}
encode_enum!(Addr, 4;
    Addr::Kernel(v) => 0 [v],
    Addr::Low(v) => 1 [v],
    Addr::End(v) => 2 [v],
    Addr::Raw(v) => 3 [v],
);

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::Kernel(v) => KERNEL_MIN_ADDR + 16 * u64::from(v),
            Addr::Low(v) => 16 * u64::from(v),
            Addr::End(v) => (RAM_BYTES as u64).wrapping_sub(16 * u64::from(v)),
            Addr::Raw(v) => v,
        }
    }
}

/// The ABI note.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// This host's version.
    Current,
    /// Another version.
    Version(u32, u32),
    /// No note.
    Missing,
    /// A note with `name_len % 9` bytes of `"pvkit\0\0\0"`, a type and `desc_len % 13` bytes.
    Raw(u8, u32, u8),
    /// The current note with a `descsz` running past its segment.
    CorruptDescsz,
}
encode_enum!(Note, 5;
    Note::Current => 0 [],
    Note::Version(a, b) => 1 [a, b],
    Note::Missing => 2 [],
    Note::Raw(n, t, d) => 3 [n, t, d],
    Note::CorruptDescsz => 4 [],
);

/// Parameters of a structured image.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Load address of the code segment.
    pub addr: Addr,
    /// Code bytes (`% 257`).
    pub code_len: u16,
    /// Zero-filled bytes after the code.
    pub bss: u32,
    /// Code segment executable.
    pub exec: bool,
    /// Entry point: `addr + delta`, or anywhere.
    pub entry: Option<i16>,
    /// Absolute entry point when `entry` is `None`.
    pub entry_raw: Addr,
    /// The note.
    pub note: Note,
    /// Note also in a `PT_NOTE`.
    pub note_in_phdrs: bool,
    /// Up to two extra zero-filled segments.
    pub extra: [Option<(Addr, u32)>; 2],
}
encode_struct!(Spec {
    addr,
    code_len,
    bss,
    exec,
    entry,
    entry_raw,
    note,
    note_in_phdrs,
    extra
});

/// How the file is made.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfSetup {
    /// From a [`Spec`], then patched by the operations.
    Built(Spec),
    /// The rest of the input is the file.
    Raw,
}
encode_enum!(ElfSetup, 2; ElfSetup::Built(s) => 0 [s], ElfSetup::Raw => 1 []);

/// A write into the built file.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patch {
    /// Offset (`% file length`).
    pub off: u16,
    /// Bytes written: `len % 8 + 1` low bytes of `value`.
    pub len: u8,
    /// Value (little-endian).
    pub value: u64,
}
encode_struct!(Patch { off, len, value });

/// Builds the file of a [`Spec`] with the VMM's test builder.
pub fn build(spec: &Spec) -> Vec<u8> {
    let addr = spec.addr.get();
    let code: Vec<u8> = (0..usize::from(spec.code_len % 257))
        .map(|i| [0xf4, 0xeb, 0xfd][i % 3])
        .collect();
    let mut b = ElfBuilder::new(addr, &code)
        .bss(u64::from(spec.bss))
        .exec(spec.exec)
        .note_in_phdrs(spec.note_in_phdrs)
        .entry(match spec.entry {
            Some(d) => addr.wrapping_add(d as i64 as u64),
            None => spec.entry_raw.get(),
        });
    b = match spec.note {
        Note::Current => b,
        Note::Version(major, minor) => b.note(Some(AbiVersion { major, minor })),
        Note::Missing => b.note(None),
        Note::Raw(n, t, d) => {
            let name = b"pvkit\0\0\0";
            let desc = [1u8, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9];
            b.raw_note(&name[..usize::from(n % 9)], t, &desc[..usize::from(d % 13)])
        }
        Note::CorruptDescsz => b.corrupt_note_descsz(),
    };
    for (a, len) in spec.extra.iter().flatten() {
        b = b.extra_segment(a.get(), u64::from(*len));
    }
    b.build()
}

fn ram() -> &'static GuestRam {
    thread_local! {
        // Zero-filled at creation; every execution restores the zeros it overwrote.
        static RAM: &'static GuestRam = Box::leak(Box::new(create_ram(RAM_MIB).expect("RAM")));
    }
    RAM.with(|r| *r)
}

/// Whether `b` is all zeros (memcmp per page: a byte loop would be instrumented per byte).
fn is_zero(b: &[u8]) -> bool {
    const ZERO: [u8; 4096] = [0; 4096];
    b.chunks(4096).all(|c| c == &ZERO[..c.len()])
}

fn host_ram(mem: &GuestRam) -> *mut u8 {
    mem.get_host_address(GuestAddress(0)).expect("RAM at 0")
}

/// Parses `file`, checks the image, loads it and checks guest RAM.
pub fn check_file(file: &[u8]) {
    let Ok(img) = ElfImage::parse(file) else {
        return;
    };
    // The image is consistent.
    assert!(!img.segments.is_empty());
    assert!(
        ABI_VERSION.host_accepts(img.abi),
        "accepted ABI {}",
        img.abi
    );
    for s in &img.segments {
        assert!(s.file_size as u64 <= s.mem_size, "{s:?}");
        assert!(s.mem_size > 0, "{s:?}");
        assert!(s.addr.checked_add(s.mem_size).is_some(), "{s:?}");
        let end = s.file_offset.checked_add(s.file_size).expect("file range");
        assert!(
            end <= file.len(),
            "{s:?} past the end of a {}-byte file",
            file.len()
        );
    }
    for w in img.segments.windows(2) {
        assert!(w[0].addr + w[0].mem_size <= w[1].addr, "overlap: {w:?}");
    }
    assert!(
        img.segments
            .iter()
            .any(|s| s.exec && img.entry >= s.addr && img.entry - s.addr < s.mem_size),
        "entry {:#x} outside executable segments",
        img.entry
    );

    let mem = ram();
    let fits = img
        .segments
        .iter()
        .all(|s| s.addr >= KERNEL_MIN_ADDR && s.addr + s.mem_size <= RAM_BYTES as u64);
    let got = img.load(mem);
    // SAFETY: the RAM is one leaked `RAM_BYTES` mapping at guest address 0, used only by
    // this thread; `load` has returned, so nothing else accesses it while `host` lives.
    let host = unsafe { std::slice::from_raw_parts_mut(host_ram(mem), RAM_BYTES) };
    match got {
        Ok(k) => {
            assert!(fits, "loaded segments outside RAM: {:?}", img.segments);
            assert_eq!(k.entry, img.entry);
            assert_eq!(k.abi, img.abi);
            let mut covered = Vec::new();
            for s in &img.segments {
                let a = s.addr as usize;
                let data = &file[s.file_offset..s.file_offset + s.file_size];
                assert!(
                    &host[a..a + s.file_size] == data,
                    "segment {} bytes",
                    s.index
                );
                let rest = &host[a + s.file_size..a + s.mem_size as usize];
                assert!(is_zero(rest), "segment {} zero fill", s.index);
                covered.push(a..a + s.mem_size as usize);
            }
            // Nothing else was written: RAM outside the segments is still zero.
            covered.sort_by_key(|r| r.start);
            let mut at = 0;
            for r in covered
                .iter()
                .chain(std::iter::once(&(RAM_BYTES..RAM_BYTES)))
            {
                assert!(
                    is_zero(&host[at..r.start]),
                    "RAM written outside the segments in {at:#x}..{:#x}",
                    r.start
                );
                at = r.end;
            }
            for r in covered {
                host[r].fill(0);
            }
        }
        Err(e) => {
            assert!(!fits, "refused segments that fit RAM: {e}");
            assert!(is_zero(host), "failed load wrote guest RAM: {e}");
        }
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = ElfSetup::arbitrary(&mut u) else {
        return;
    };
    match setup {
        ElfSetup::Raw => check_file(u.take_rest()),
        ElfSetup::Built(spec) => {
            let mut file = build(&spec);
            crate::for_each_op(&mut u, MAX_OPS, |p: Patch| {
                if file.is_empty() {
                    return;
                }
                let off = usize::from(p.off) % file.len();
                let n = (usize::from(p.len % 8) + 1).min(file.len() - off);
                file[off..off + n].copy_from_slice(&p.value.to_le_bytes()[..n]);
            });
            check_file(&file);
        }
    }
}

/// Seeds: a good image with bss and an extra segment; one with the note only in sections;
/// a patched `e_phnum`; an image below `KERNEL_MIN_ADDR`; a raw copy of a good file.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::enc::{program, Enc, Encode};
    let good = Spec {
        addr: Addr::Kernel(0x1000),
        code_len: 3,
        bss: 0x1000,
        exec: true,
        entry: Some(0),
        entry_raw: Addr::Raw(0),
        note: Note::Current,
        note_in_phdrs: true,
        extra: [Some((Addr::Kernel(0x8000), 0x2000)), None],
    };
    let sections = Spec {
        note_in_phdrs: false,
        extra: [None, None],
        ..good
    };
    let low = Spec {
        addr: Addr::Low(0x100),
        ..sections
    };
    let phnum = [Patch {
        off: 56,
        len: 1,
        value: 0x41,
    }];
    let mut raw = Enc::new();
    ElfSetup::Raw.encode(&mut raw);
    raw.bytes(&build(&good));
    vec![
        ("good", program(&ElfSetup::Built(good), &[] as &[Patch])),
        (
            "note_in_sections",
            program(&ElfSetup::Built(sections), &[] as &[Patch]),
        ),
        ("bad_phnum", program(&ElfSetup::Built(good), &phnum)),
        (
            "below_kernel_min",
            program(&ElfSetup::Built(low), &[] as &[Patch]),
        ),
        ("raw_good", raw.finish()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass_and_good_loads() {
        for (_, bytes) in seeds() {
            run(&bytes);
        }
        let (_, bytes) = &seeds()[0];
        let mut u = Unstructured::new(bytes);
        let ElfSetup::Built(spec) = ElfSetup::arbitrary(&mut u).unwrap() else {
            panic!()
        };
        let file = build(&spec);
        let img = ElfImage::parse(&file).expect("the good seed parses");
        assert_eq!(img.segments.len(), 2);
    }
}
