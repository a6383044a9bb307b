//! The ELF64 loader.
//!
//! [`ElfImage::parse`] validates every header field and program header of an untrusted
//! file and finds the pvkit ABI note; [`ElfImage::load`] checks each segment against guest
//! RAM and copies it with vm-memory. A malformed file is an [`ElfError`], never a panic or
//! an out-of-bounds access: all offsets are read with checked slicing and all address
//! arithmetic is overflow-checked.

use std::ops::Range;

use pvkit_abi::boot::KERNEL_MIN_ADDR;
use pvkit_abi::note::parse_abi_note;
use pvkit_abi::{AbiVersion, ABI_VERSION};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::vstate::memory::{guest_range, ram_size, GuestRam};

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// Size of an ELF64 section header.
pub const SHDR_SIZE: usize = 64;
/// Most program headers accepted.
pub const MAX_PHNUM: u16 = 64;
/// Most section headers examined when looking for the note.
pub const MAX_SHNUM: u16 = 1024;

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;
const PF_X: u32 = 1;

/// Why an ELF file was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    /// The file is shorter than a structure it must contain.
    #[error("not a valid guest ELF: file is truncated ({what} needs bytes {start}..{end}, file has {len})")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Start offset.
        start: u64,
        /// End offset (saturated).
        end: u64,
        /// File length.
        len: usize,
    },
    /// Not an ELF file.
    #[error("not an ELF file (bad magic number)")]
    BadMagic,
    /// A header field has a value pvkit cannot boot.
    #[error("unsupported guest ELF: {field} is {value:#x}, expected {expected}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What pvkit needs.
        expected: &'static str,
    },
    /// A segment is inconsistent in itself.
    #[error("not a valid guest ELF: program header {index}: {problem}")]
    BadSegment {
        /// Index of the program header.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// The file is a position-independent executable (`ET_DYN`), what
    /// `x86_64-unknown-none` makes by default; pvkit loads fixed-address executables.
    #[error(
        "unsupported guest ELF: e_type is 0x3 (ET_DYN, a position-independent executable), \
         expected 2 (ET_EXEC: a statically linked kernel at a fixed address): build with \
         -C relocation-model=static (x86_64-unknown-none makes a PIE by default) and link at \
         a fixed address ≥ 1 MiB, see `pvkit new`"
    )]
    PositionIndependent,
    /// A segment does not fit guest RAM: below [`KERNEL_MIN_ADDR`] (the boot area) or
    /// beyond the end of RAM. The message names the fix for each.
    #[error(
        "guest ELF segment {index} ({start:#x}..{end:#x}) does not fit guest RAM \
         ({KERNEL_MIN_ADDR:#x}..{ram_end:#x}); {}",
        outside_ram_fix(*start, *end)
    )]
    OutsideRam {
        /// Index of the program header.
        index: usize,
        /// Segment start (guest-physical).
        start: u64,
        /// Segment end (saturated).
        end: u64,
        /// End of guest RAM.
        ram_end: u64,
    },
    /// The file loads nothing.
    #[error("not a valid guest ELF: no loadable segment")]
    NoLoadSegment,
    /// The entry point is not in an executable loaded segment.
    #[error(
        "not a valid guest ELF: entry point {0:#x} is not inside an executable loaded segment"
    )]
    BadEntry(u64),
    /// The note headers name more note bytes than the file could hold (overlapping
    /// ranges walked over and over): refused before the work grows with them.
    #[error(
        "not a valid guest ELF: its note segments and sections would have the loader walk \
         more than {0} times the file's size of notes"
    )]
    NoteWalkTooLong(usize),
    /// No pvkit ABI note.
    #[error(
        "the guest ELF has no pvkit ABI note (section .note.pvkit); build it against \
         pvkit-abi and emit the note with pvkit_abi::abi_note!()"
    )]
    MissingNote,
    /// The note names an ABI this host cannot serve.
    #[error("guest was built for pvkit ABI {guest}, this VMM speaks {host}")]
    AbiMismatch {
        /// The guest's version.
        guest: AbiVersion,
        /// This host's version.
        host: AbiVersion,
    },
    /// Copying into guest memory failed.
    #[error("cannot copy guest ELF segment {index} into guest memory: {detail}")]
    Copy {
        /// Index of the program header.
        index: usize,
        /// The vm-memory error.
        detail: String,
    },
}

/// The fix [`ElfError::OutsideRam`] names: a segment below [`KERNEL_MIN_ADDR`] must be
/// linked higher (more RAM would not help); one beyond the end of RAM needs more `--mem`
/// if the most RAM pvkit gives a guest would hold it, else a lower link address.
fn outside_ram_fix(start: u64, end: u64) -> String {
    let max_ram = crate::vstate::memory::MAX_MEM_MIB << 20;
    if start < KERNEL_MIN_ADDR {
        format!(
            "link at or above {KERNEL_MIN_ADDR:#x} ({} MiB); the boot area lies below it",
            KERNEL_MIN_ADDR >> 20
        )
    } else if end <= max_ram {
        format!(
            "use more --mem (at least {} MiB) or link the kernel lower",
            end.div_ceil(1 << 20)
        )
    } else {
        format!(
            "link the kernel lower: it ends beyond {max_ram:#x}, the most guest RAM \
             (--mem {})",
            crate::vstate::memory::MAX_MEM_MIB
        )
    }
}

/// One validated `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Index of its program header.
    pub index: usize,
    /// Guest-physical load address (= virtual address).
    pub addr: u64,
    /// Bytes in memory.
    pub mem_size: u64,
    /// File range of the initialized bytes.
    pub file_offset: usize,
    /// Initialized bytes (≤ `mem_size`); the rest is zero-filled.
    pub file_size: usize,
    /// Executable.
    pub exec: bool,
}

/// A parsed and validated guest image borrowing the file's bytes.
#[derive(Clone, Debug)]
pub struct ElfImage<'a> {
    bytes: &'a [u8],
    /// The entry point.
    pub entry: u64,
    /// The loadable segments, sorted by address, non-overlapping.
    pub segments: Vec<Segment>,
    /// The ABI version from the note.
    pub abi: AbiVersion,
}

/// What was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The entry point.
    pub entry: u64,
    /// The span of all segments (for the memory map).
    pub span: Range<u64>,
    /// The guest's ABI version.
    pub abi: AbiVersion,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn slice(&self, what: &'static str, start: u64, len: u64) -> Result<&'a [u8], ElfError> {
        let truncated = || ElfError::Truncated {
            what,
            start,
            end: start.saturating_add(len),
            len: self.bytes.len(),
        };
        let s = usize::try_from(start).map_err(|_| truncated())?;
        let l = usize::try_from(len).map_err(|_| truncated())?;
        let e = s.checked_add(l).ok_or_else(truncated)?;
        self.bytes.get(s..e).ok_or_else(truncated)
    }
}

/// The `N` bytes at `off`, or zeros if they are not all inside `b` (callers check the
/// structure's size first). The one little-endian reader behind the `*_at` helpers.
fn bytes_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    off.checked_add(N)
        .and_then(|end| b.get(off..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(bytes_at(b, off))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(bytes_at(b, off))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes_at(b, off))
}

fn unsupported(field: &'static str, value: u64, expected: &'static str) -> ElfError {
    ElfError::Unsupported {
        field,
        value,
        expected,
    }
}

/// Bounds the note walk: program and section headers may name the same bytes (or
/// overlapping ranges) many times over, so the walk keeps the ranges it already walked and
/// a byte budget of [`NOTE_WALK_FACTOR`] times the file size. Each byte of the file is thus
/// visited a small constant number of times, whatever the headers say.
struct NoteWalk {
    walked: Vec<(usize, usize, usize)>,
    budget: usize,
}

/// Bytes of notes walked, as a multiple of the file size, before the loader gives up.
pub const NOTE_WALK_FACTOR: usize = 2;

impl NoteWalk {
    fn new(file_len: usize) -> Self {
        Self {
            walked: Vec::new(),
            budget: file_len.saturating_mul(NOTE_WALK_FACTOR),
        }
    }

    /// Walks the notes at `data` (which starts `start` bytes into the file) unless that
    /// exact range was walked before.
    fn walk(
        &mut self,
        start: usize,
        data: &[u8],
        align: usize,
    ) -> Result<Option<AbiVersion>, ElfError> {
        let key = (start, data.len(), align);
        if self.walked.contains(&key) {
            return Ok(None);
        }
        self.walked.push(key);
        find_note(data, align, &mut self.budget)
    }
}

/// Walks the notes in `data` and returns the first pvkit ABI note's version. Malformed
/// notes end the walk (a foreign note cannot make the file unloadable by itself). Each
/// note's bytes (at least its 12-byte header) are charged to `budget`;
/// [`ElfError::NoteWalkTooLong`] when it runs out.
fn find_note(
    data: &[u8],
    align: usize,
    budget: &mut usize,
) -> Result<Option<AbiVersion>, ElfError> {
    let pad = |n: usize| n.checked_add(align - 1).map(|v| v & !(align - 1));
    // One note: where the next starts and whether this one is pvkit's; `None`: malformed.
    let note = |rest: &[u8]| -> Option<(usize, Option<AbiVersion>)> {
        let namesz = usize::try_from(u32_at(rest, 0)).ok()?;
        let descsz = usize::try_from(u32_at(rest, 4)).ok()?;
        let ntype = u32_at(rest, 8);
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let next = desc_start.checked_add(pad(descsz)?)?;
        let name = rest.get(12..name_end)?;
        let desc = rest.get(desc_start..desc_end)?;
        Some((next, parse_abi_note(name, ntype, desc)))
    };
    let mut rest = data;
    while rest.len() >= 12 {
        let Some((next, found)) = note(rest) else {
            return Ok(None);
        };
        *budget = budget
            .checked_sub(next.max(12))
            .ok_or(ElfError::NoteWalkTooLong(NOTE_WALK_FACTOR))?;
        if found.is_some() {
            return Ok(found);
        }
        rest = rest.get(next..).unwrap_or_default();
    }
    Ok(None)
}

impl<'a> ElfImage<'a> {
    /// Parses and validates `bytes` as a pvkit guest kernel.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let r = Reader { bytes };
        let eh = r.slice("the ELF header", 0, EHDR_SIZE as u64)?;
        if eh.get(0..4) != Some(b"\x7fELF".as_slice()) {
            return Err(ElfError::BadMagic);
        }
        let ident = |i: usize| u64::from(eh.get(i).copied().unwrap_or(0));
        if ident(4) != 2 {
            return Err(unsupported("EI_CLASS", ident(4), "2 (64-bit)"));
        }
        if ident(5) != 1 {
            return Err(unsupported("EI_DATA", ident(5), "1 (little-endian)"));
        }
        if ident(6) != 1 {
            return Err(unsupported("EI_VERSION", ident(6), "1"));
        }
        let e_type = u16_at(eh, 16);
        if e_type == ET_DYN {
            return Err(ElfError::PositionIndependent);
        }
        if e_type != ET_EXEC {
            return Err(unsupported(
                "e_type",
                e_type.into(),
                "2 (ET_EXEC: a statically linked kernel at a fixed address)",
            ));
        }
        let machine = u16_at(eh, 18);
        if machine != EM_X86_64 {
            return Err(unsupported("e_machine", machine.into(), "62 (x86_64)"));
        }
        let version = u32_at(eh, 20);
        if version != 1 {
            return Err(unsupported("e_version", version.into(), "1"));
        }
        let entry = u64_at(eh, 24);
        let phoff = u64_at(eh, 32);
        let shoff = u64_at(eh, 40);
        let phentsize = u16_at(eh, 54);
        let phnum = u16_at(eh, 56);
        let shentsize = u16_at(eh, 58);
        let shnum = u16_at(eh, 60);
        if usize::from(phentsize) != PHDR_SIZE {
            return Err(unsupported("e_phentsize", phentsize.into(), "56"));
        }
        if phnum == 0 || phnum > MAX_PHNUM {
            return Err(unsupported(
                "e_phnum",
                phnum.into(),
                "1 to 64 program headers",
            ));
        }
        let phdrs = r.slice(
            "the program headers",
            phoff,
            u64::from(phnum) * PHDR_SIZE as u64,
        )?;

        let mut segments = Vec::new();
        let mut abi = None;
        let mut notes = NoteWalk::new(bytes.len());
        for (index, ph) in phdrs.chunks_exact(PHDR_SIZE).enumerate() {
            let p_type = u32_at(ph, 0);
            let flags = u32_at(ph, 4);
            let offset = u64_at(ph, 8);
            let vaddr = u64_at(ph, 16);
            let paddr = u64_at(ph, 24);
            let filesz = u64_at(ph, 32);
            let memsz = u64_at(ph, 40);
            let align = u64_at(ph, 48);
            let bad = |problem: String| ElfError::BadSegment { index, problem };
            match p_type {
                PT_LOAD => {
                    if filesz > memsz {
                        return Err(bad(format!(
                            "file size {filesz:#x} is larger than memory size {memsz:#x}"
                        )));
                    }
                    let data = r.slice("a PT_LOAD segment", offset, filesz)?;
                    if memsz == 0 {
                        continue;
                    }
                    if vaddr != paddr {
                        return Err(bad(format!(
                            "virtual address {vaddr:#x} differs from physical address \
                             {paddr:#x}; pvkit boots with an identity map, link with VMA = LMA"
                        )));
                    }
                    if paddr.checked_add(memsz).is_none() {
                        return Err(bad(format!(
                            "address {paddr:#x} + size {memsz:#x} overflows"
                        )));
                    }
                    segments.push(Segment {
                        index,
                        addr: paddr,
                        mem_size: memsz,
                        file_offset: offset as usize,
                        file_size: data.len(),
                        exec: flags & PF_X != 0,
                    });
                }
                PT_NOTE if abi.is_none() => {
                    // A note segment that lies outside the file is malformed.
                    let data = r.slice("a PT_NOTE segment", offset, filesz)?;
                    abi = notes.walk(offset as usize, data, if align == 8 { 8 } else { 4 })?;
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(ElfError::NoLoadSegment);
        }
        segments.sort_by_key(|s| s.addr);
        for pair in segments.windows(2) {
            if let [a, b] = pair {
                // a.addr + a.mem_size cannot overflow: checked above.
                if a.addr + a.mem_size > b.addr {
                    return Err(ElfError::BadSegment {
                        index: b.index,
                        problem: format!("overlaps program header {} at {:#x}", a.index, a.addr),
                    });
                }
            }
        }
        if !segments
            .iter()
            .any(|s| s.exec && entry >= s.addr && entry - s.addr < s.mem_size)
        {
            return Err(ElfError::BadEntry(entry));
        }
        if abi.is_none() && shoff != 0 && shnum != 0 {
            abi = Self::note_from_sections(&r, shoff, shentsize, shnum, &mut notes)?;
        }
        let abi = abi.ok_or(ElfError::MissingNote)?;
        if !ABI_VERSION.host_accepts(abi) {
            return Err(ElfError::AbiMismatch {
                guest: abi,
                host: ABI_VERSION,
            });
        }
        Ok(Self {
            bytes,
            entry,
            segments,
            abi,
        })
    }

    fn note_from_sections(
        r: &Reader<'_>,
        shoff: u64,
        shentsize: u16,
        shnum: u16,
        notes: &mut NoteWalk,
    ) -> Result<Option<AbiVersion>, ElfError> {
        if usize::from(shentsize) != SHDR_SIZE {
            return Err(unsupported("e_shentsize", shentsize.into(), "64"));
        }
        if shnum > MAX_SHNUM {
            return Err(unsupported(
                "e_shnum",
                shnum.into(),
                "at most 1024 sections",
            ));
        }
        let shdrs = r.slice(
            "the section headers",
            shoff,
            u64::from(shnum) * SHDR_SIZE as u64,
        )?;
        for sh in shdrs.chunks_exact(SHDR_SIZE) {
            if u32_at(sh, 4) != SHT_NOTE {
                continue;
            }
            let offset = u64_at(sh, 24);
            let data = r.slice("a note section", offset, u64_at(sh, 32))?;
            let align = if u64_at(sh, 48) == 8 { 8 } else { 4 };
            if let Some(v) = notes.walk(offset as usize, data, align)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The span `[lowest address, highest end)` of the loadable segments.
    pub fn span(&self) -> Range<u64> {
        let start = self.segments.first().map_or(0, |s| s.addr);
        let end = self
            .segments
            .iter()
            .map(|s| s.addr + s.mem_size)
            .max()
            .unwrap_or(start);
        start..end
    }

    /// Checks every segment against guest RAM (at or above [`KERNEL_MIN_ADDR`], below the
    /// end of RAM), then copies the file bytes and zero-fills the rest.
    pub fn load(&self, mem: &GuestRam) -> Result<LoadedKernel, ElfError> {
        self.load_into(mem, true)
    }

    /// [`ElfImage::load`] into RAM that nothing has written yet: the bytes past each
    /// segment's file data are already zero and are not touched (no page faults, no
    /// writes). Correct because the segments do not overlap (checked in
    /// [`ElfImage::parse`]), so no segment's file data lands in another's zero part.
    pub fn load_fresh(
        &self,
        ram: crate::vstate::memory::FreshRam,
    ) -> Result<(GuestRam, LoadedKernel), ElfError> {
        let mem = ram.into_ram();
        let kernel = self.load_into(&mem, false)?;
        Ok((mem, kernel))
    }

    fn load_into(&self, mem: &GuestRam, zero_fill: bool) -> Result<LoadedKernel, ElfError> {
        let ram_end = ram_size(mem);
        for s in &self.segments {
            let end = s.addr.saturating_add(s.mem_size);
            if s.addr < KERNEL_MIN_ADDR || guest_range(mem, s.addr, s.mem_size).is_none() {
                return Err(ElfError::OutsideRam {
                    index: s.index,
                    start: s.addr,
                    end,
                    ram_end,
                });
            }
        }
        const ZEROS: [u8; 4096] = [0; 4096];
        for s in &self.segments {
            let copy_err = |e: vm_memory::GuestMemoryError| ElfError::Copy {
                index: s.index,
                detail: e.to_string(),
            };
            // Validated in parse(): the file range exists.
            let data = self
                .bytes
                .get(s.file_offset..s.file_offset + s.file_size)
                .unwrap_or_default();
            mem.write_slice(data, GuestAddress(s.addr))
                .map_err(copy_err)?;
            let mut at = s.addr + s.file_size as u64;
            let end = if zero_fill { s.addr + s.mem_size } else { at };
            while at < end {
                let n = (end - at).min(ZEROS.len() as u64) as usize;
                mem.write_slice(ZEROS.get(..n).unwrap_or_default(), GuestAddress(at))
                    .map_err(copy_err)?;
                at += n as u64;
            }
        }
        Ok(LoadedKernel {
            entry: self.entry,
            span: self.span(),
            abi: self.abi,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ElfBuilder;
    use crate::vstate::memory::create_ram;

    const CODE: &[u8] = &[0xf4, 0xeb, 0xfd]; // hlt; jmp $-1

    fn good() -> ElfBuilder {
        ElfBuilder::new(0x20_0000, CODE)
    }

    fn set(bytes: &mut [u8], off: usize, v: &[u8]) {
        bytes[off..off + v.len()].copy_from_slice(v);
    }

    /// Offset of program header `i` in files made by `ElfBuilder`.
    fn ph(i: usize) -> usize {
        EHDR_SIZE + i * PHDR_SIZE
    }

    #[test]
    fn loads_a_good_image_and_zero_fills_bss() {
        let mem = create_ram(8).unwrap();
        mem.write_slice(&[0xaa; 64], GuestAddress(0x20_0000 + CODE.len() as u64))
            .unwrap();
        let bytes = good().bss(0x1000).build();
        let img = ElfImage::parse(&bytes).unwrap();
        assert_eq!(img.abi, ABI_VERSION);
        let k = img.load(&mem).unwrap();
        assert_eq!(k.entry, 0x20_0000);
        assert_eq!(k.span, 0x20_0000..0x20_0000 + CODE.len() as u64 + 0x1000);
        let mut got = [0u8; 8];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&got[..3], CODE);
        assert_eq!(&got[3..], &[0; 5]);
    }

    #[test]
    fn overlapping_empty_notes_are_walked_a_bounded_number_of_times() {
        // 8 MiB of empty notes under 1023 overlapping note sections: unbounded, ~7e8 note
        // headers (minutes in a debug build); bounded, at most NOTE_WALK_FACTOR times the
        // file (about a second in a debug build on a loaded machine).
        let bytes = crate::testing::note_bomb(0x20_0000, CODE, 8 << 20, MAX_SHNUM - 1);
        let t = std::time::Instant::now();
        assert_eq!(
            ElfImage::parse(&bytes).map(|i| i.abi),
            Err(ElfError::NoteWalkTooLong(NOTE_WALK_FACTOR))
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            t.elapsed()
        );
        // One walk of the same notes fits the budget: no note, no error of its own.
        let small = crate::testing::note_bomb(0x20_0000, CODE, 1 << 20, 1);
        assert_eq!(
            ElfImage::parse(&small).map(|i| i.abi),
            Err(ElfError::MissingNote)
        );
    }

    #[test]
    fn the_same_note_range_is_walked_once() {
        // A note section and a PT_NOTE naming the same foreign note: walked once, so a
        // budget of one file's worth of notes (the factor applies to the file) suffices.
        let mut walk = NoteWalk::new(64);
        let note = [0u8; 48]; // four empty notes: 48 bytes
        assert_eq!(walk.walk(16, &note, 4), Ok(None));
        assert_eq!(walk.walk(16, &note, 4), Ok(None));
        assert_eq!(walk.budget, 128 - 48);
        assert_eq!(walk.walk(20, &note, 4), Ok(None));
        assert_eq!(
            walk.walk(24, &note, 4),
            Err(ElfError::NoteWalkTooLong(NOTE_WALK_FACTOR))
        );
    }

    /// Minor page faults of the calling thread so far.
    fn thread_minflt() -> i64 {
        // SAFETY: getrusage writes one `rusage` into the zeroed struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_THREAD on the calling thread with a valid out pointer.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
        u.ru_minflt
    }

    #[test]
    fn fresh_ram_bss_is_not_touched() {
        // 3 MiB of BSS (768 pages), like the built-in guest.
        let bytes = good().bss(3 << 20).build();
        let img = ElfImage::parse(&bytes).unwrap();
        let fresh = crate::vstate::memory::create_fresh_ram(8).unwrap();
        let before = thread_minflt();
        let (mem, k) = img.load_fresh(fresh).unwrap();
        let fresh_faults = thread_minflt() - before;
        assert_eq!(k.span, 0x20_0000..0x20_0000 + CODE.len() as u64 + (3 << 20));
        // The BSS reads as zeros all the same (checked through vm-memory, after counting).
        let mut bss = vec![0xaau8; 3 << 20];
        mem.read_slice(&mut bss, GuestAddress(0x20_0000 + CODE.len() as u64))
            .unwrap();
        assert!(bss.iter().all(|&b| b == 0));
        let mut code = [0u8; 3];
        mem.read_slice(&mut code, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(code, CODE);
        // The zero-filling load of the same image into other RAM faults every BSS page.
        let mem2 = create_ram(8).unwrap();
        let before = thread_minflt();
        img.load(&mem2).unwrap();
        let filled_faults = thread_minflt() - before;
        assert!(fresh_faults < 16, "fresh load faulted {fresh_faults} pages");
        assert!(
            filled_faults >= 700,
            "zero-filling load faulted {filled_faults}"
        );
    }

    #[test]
    fn note_found_through_sections_without_pt_note() {
        let bytes = good().note_in_phdrs(false).build();
        assert_eq!(ElfImage::parse(&bytes).unwrap().abi, ABI_VERSION);
    }

    #[test]
    fn truncated_files() {
        let bytes = good().build();
        // Header, program headers, code: each cut short. (The section headers at the end
        // are optional when a PT_NOTE carries the note.)
        for len in [0, 3, 63, EHDR_SIZE + 10, EHDR_SIZE + 2 * PHDR_SIZE + 1] {
            let err = ElfImage::parse(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, ElfError::Truncated { .. } | ElfError::BadMagic),
                "len {len}: {err}"
            );
        }
        assert!(matches!(
            ElfImage::parse(b"MZ\x90\0"),
            Err(ElfError::Truncated { .. })
        ));
        let mut b = bytes.clone();
        b.resize(EHDR_SIZE, 0);
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::Truncated { .. })
        ));
    }

    #[test]
    fn wrong_header_fields() {
        let cases: [(usize, &[u8], &str); 7] = [
            (0, b"\x7fELG", "magic"),
            (4, &[1], "EI_CLASS"),
            (5, &[2], "EI_DATA"),
            (16, &[3, 0], "e_type"),
            (18, &[3, 0], "e_machine"),
            (54, &[32, 0], "e_phentsize"),
            (56, &[0, 0], "e_phnum"),
        ];
        for (off, v, what) in cases {
            let mut b = good().build();
            set(&mut b, off, v);
            let err = ElfImage::parse(&b).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(what) || matches!(err, ElfError::BadMagic),
                "{what}: {msg}"
            );
        }
        let mut b = good().build();
        set(&mut b, 56, &0xffffu16.to_le_bytes());
        assert!(ElfImage::parse(&b).is_err());
        let mut b = good().build();
        set(&mut b, 32, &u64::MAX.to_le_bytes()); // e_phoff
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::Truncated { .. })
        ));
    }

    #[test]
    fn wrong_machine_message() {
        let mut b = good().build();
        set(&mut b, 18, &40u16.to_le_bytes()); // ARM
        assert_eq!(
            ElfImage::parse(&b).unwrap_err().to_string(),
            "unsupported guest ELF: e_machine is 0x28, expected 62 (x86_64)"
        );
    }

    /// A PIE (what x86_64-unknown-none builds by default) is refused with the fix.
    #[test]
    fn pie_refusal_names_the_fix() {
        let mut b = good().build();
        set(&mut b, 16, &3u16.to_le_bytes()); // ET_DYN
        let e = ElfImage::parse(&b).unwrap_err();
        assert_eq!(e, ElfError::PositionIndependent);
        assert_eq!(
            e.to_string(),
            "unsupported guest ELF: e_type is 0x3 (ET_DYN, a position-independent executable), \
             expected 2 (ET_EXEC: a statically linked kernel at a fixed address): build with \
             -C relocation-model=static (x86_64-unknown-none makes a PIE by default) and link \
             at a fixed address ≥ 1 MiB, see `pvkit new`"
        );
        // Other types keep the plain message.
        set(&mut b, 16, &1u16.to_le_bytes()); // ET_REL
        assert_eq!(
            ElfImage::parse(&b).unwrap_err().to_string(),
            "unsupported guest ELF: e_type is 0x1, expected 2 (ET_EXEC: a statically linked \
             kernel at a fixed address)"
        );
    }

    /// Below 1 MiB the fix is the link address, never more RAM; beyond RAM it is --mem,
    /// unless even the most RAM would not reach.
    #[test]
    fn outside_ram_messages_name_the_fix() {
        let mem = create_ram(4).unwrap();
        let msg = |addr: u64| {
            let b = ElfBuilder::new(addr, CODE).build();
            ElfImage::parse(&b)
                .unwrap()
                .load(&mem)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            msg(0x1000),
            "guest ELF segment 0 (0x1000..0x1003) does not fit guest RAM (0x100000..0x400000); \
             link at or above 0x100000 (1 MiB); the boot area lies below it"
        );
        assert_eq!(
            msg(0x40_0000),
            "guest ELF segment 0 (0x400000..0x400003) does not fit guest RAM \
             (0x100000..0x400000); use more --mem (at least 5 MiB) or link the kernel lower"
        );
        assert_eq!(
            msg(1 << 40),
            "guest ELF segment 0 (0x10000000000..0x10000000003) does not fit guest RAM \
             (0x100000..0x400000); link the kernel lower: it ends beyond 0xc0000000, the most \
             guest RAM (--mem 3072)"
        );
        assert!(!msg(0x8_0000).contains("--mem"));
    }

    #[test]
    fn segment_outside_ram() {
        let mem = create_ram(4).unwrap();
        for addr in [0x40_0000u64, 0x3f_ffff, 0x1000, 0x8_0000, 1 << 40] {
            let b = ElfBuilder::new(addr, CODE).build();
            let img = ElfImage::parse(&b).unwrap();
            assert!(
                matches!(img.load(&mem), Err(ElfError::OutsideRam { .. })),
                "addr {addr:#x}"
            );
        }
        // bss running past the end of RAM.
        let b = ElfBuilder::new(0x3f_f000, CODE).bss(0x1000).build();
        let img = ElfImage::parse(&b).unwrap();
        assert!(matches!(img.load(&mem), Err(ElfError::OutsideRam { .. })));
    }

    #[test]
    fn overflowing_sizes() {
        // filesz > memsz.
        let mut b = good().build();
        set(&mut b, ph(0) + 40, &1u64.to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::BadSegment { .. })
        ));
        // paddr + memsz overflows.
        let mut b = good().build();
        set(&mut b, ph(0) + 40, &u64::MAX.to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::BadSegment { .. })
        ));
        // offset + filesz overflows / beyond the file.
        let mut b = good().build();
        set(&mut b, ph(0) + 8, &(u64::MAX - 1).to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::Truncated { .. })
        ));
        let mut b = good().build();
        set(&mut b, ph(0) + 32, &0x10_0000u64.to_le_bytes());
        set(&mut b, ph(0) + 40, &0x10_0000u64.to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_entry_points() {
        for entry in [0u64, 0x1f_ffff, 0x20_0000 + CODE.len() as u64, u64::MAX] {
            let b = good().entry(entry).build();
            assert_eq!(ElfImage::parse(&b).unwrap_err(), ElfError::BadEntry(entry));
        }
        let b = good().exec(false).build();
        assert_eq!(
            ElfImage::parse(&b).unwrap_err(),
            ElfError::BadEntry(0x20_0000)
        );
    }

    #[test]
    fn vaddr_must_equal_paddr() {
        let mut b = good().build();
        set(&mut b, ph(0) + 16, &0xffff_8000_0020_0000u64.to_le_bytes());
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::BadSegment { .. })
        ));
    }

    #[test]
    fn missing_note() {
        let b = good().note(None).build();
        assert_eq!(ElfImage::parse(&b).unwrap_err(), ElfError::MissingNote);
        // A foreign note only.
        let b = good().raw_note(b"GNU\0", 3, &[0; 8]).build();
        assert_eq!(ElfImage::parse(&b).unwrap_err(), ElfError::MissingNote);
        // A malformed note (descsz runs past the segment).
        let b = good()
            .raw_note(b"pvkit\0", 1, &[0; 8])
            .corrupt_note_descsz()
            .build();
        assert_eq!(ElfImage::parse(&b).unwrap_err(), ElfError::MissingNote);
    }

    #[test]
    fn wrong_major_and_newer_minor() {
        let b = good().note(Some(AbiVersion { major: 3, minor: 0 })).build();
        let err = ElfImage::parse(&b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest was built for pvkit ABI 3.0, this VMM speaks 2.0"
        );
        // A guest of a newer minor of the same major runs: feature bits are the gate.
        let b = good().note(Some(AbiVersion { major: 2, minor: 9 })).build();
        assert_eq!(
            ElfImage::parse(&b).unwrap().abi,
            AbiVersion { major: 2, minor: 9 }
        );
        let b = good().note(Some(AbiVersion { major: 0, minor: 1 })).build();
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::AbiMismatch { .. })
        ));
    }

    #[test]
    fn an_abi_1_0_guest_is_refused_with_both_versions() {
        let b = good().note(Some(AbiVersion { major: 1, minor: 0 })).build();
        let err = ElfImage::parse(&b).unwrap_err();
        assert_eq!(
            err,
            ElfError::AbiMismatch {
                guest: AbiVersion { major: 1, minor: 0 },
                host: AbiVersion { major: 2, minor: 0 },
            }
        );
        assert_eq!(
            err.to_string(),
            "guest was built for pvkit ABI 1.0, this VMM speaks 2.0"
        );
    }

    #[test]
    fn overlapping_segments() {
        let b = good().extra_segment(0x20_0001, 0x10).build();
        assert!(matches!(
            ElfImage::parse(&b),
            Err(ElfError::BadSegment { .. })
        ));
        let b = good().extra_segment(0x30_0000, 0x10).build();
        assert_eq!(ElfImage::parse(&b).unwrap().segments.len(), 2);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: flip bytes of a good image and parse/load each.
        let mem = create_ram(4).unwrap();
        let base = good().bss(0x100).build();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            if let Ok(img) = ElfImage::parse(&b) {
                let _ = img.load(&mem);
            }
        }
    }
}
