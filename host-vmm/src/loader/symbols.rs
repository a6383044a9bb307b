//! The guest's symbol table, for naming guest code addresses (`function+0xoff`) in fault
//! diagnostics, the exit profile and traces.
//!
//! [`SymbolTable::from_elf`] reads `.symtab` and its `.strtab` from the untrusted file
//! bytes before the loader drops them, and keeps a compact sorted copy: at most
//! [`MAX_SYMBOLS`] symbols and [`MAX_NAME_BYTES`] bytes of (demangled) names, each name at
//! most [`MAX_NAME_LEN`] bytes. Every offset and count comes from the file and is
//! bounds-checked: a hostile table (huge counts, offsets past the end, names without a NUL,
//! overflowing sizes) yields fewer symbols or an error, never a panic or an unbounded
//! allocation. A file without a symbol table (stripped) is an empty table.

use std::fmt;

use thiserror::Error;

/// Most symbols kept (functions and data objects; the rest are skipped).
pub const MAX_SYMBOLS: usize = 65_536;
/// Most bytes of names kept, all symbols together.
pub const MAX_NAME_BYTES: usize = 4 << 20;
/// Longest name kept (longer names are cut at a character boundary).
pub const MAX_NAME_LEN: usize = 256;
/// How far past a symbol of unknown size (`st_size` 0) an address is still named after it.
pub const UNSIZED_REACH: u64 = 4096;

const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;
const STT_NOTYPE: u8 = 0;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const SHN_UNDEF: u16 = 0;
/// Section headers examined, at most.
const MAX_SECTIONS: usize = 4096;

/// Why a symbol table could not be read (the caller then goes without symbols).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SymbolError {
    /// The ELF or section header table is not inside the file.
    #[error("the section headers are not inside the file")]
    BadSectionHeaders,
    /// `.symtab` or its string table is not inside the file, or inconsistent.
    #[error("the symbol table is malformed: {0}")]
    BadSymtab(&'static str),
}

/// What a symbol names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolKind {
    /// Code (`STT_FUNC`, or `STT_NOTYPE` in an executable section such as an assembly label).
    Code,
    /// Data (`STT_OBJECT`), e.g. a stack array.
    Data,
}

#[derive(Clone, Copy, Debug)]
struct Sym {
    addr: u64,
    size: u64,
    name_start: u32,
    name_len: u16,
    kind: SymbolKind,
}

/// A compact, sorted symbol table of the guest ELF.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    syms: Vec<Sym>,
    names: String,
    /// Symbols the file had beyond [`MAX_SYMBOLS`] or [`MAX_NAME_BYTES`] (not kept).
    pub dropped: usize,
}

/// A symbol an address falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// Its (demangled) name.
    pub name: &'a str,
    /// Its address.
    pub addr: u64,
    /// Its size (0 when the file does not say).
    pub size: u64,
    /// Code or data.
    pub kind: SymbolKind,
}

/// An address with the symbol it falls in: displays as `name+0xoff`, or the bare hex
/// address without a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located<'a> {
    /// The address.
    pub addr: u64,
    /// The symbol, if any.
    pub symbol: Option<Symbol<'a>>,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.symbol {
            Some(s) => write!(f, "{}+{:#x}", s.name, self.addr.wrapping_sub(s.addr)),
            None => write!(f, "{:#x}", self.addr),
        }
    }
}

fn le<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    le(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    le(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    le(b, off).map(u64::from_le_bytes)
}

/// `bytes[off..off + len]` from file-given 64-bit values, or `None`.
fn range(bytes: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let s = usize::try_from(off).ok()?;
    let l = usize::try_from(len).ok()?;
    bytes.get(s..s.checked_add(l)?)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

impl SymbolTable {
    /// Reads the symbol table of the ELF `bytes` (not validated otherwise: this runs on
    /// the same untrusted bytes as the loader). `Ok` with an empty table when the file has
    /// no `.symtab`.
    pub fn from_elf(bytes: &[u8]) -> Result<Self, SymbolError> {
        let bad = SymbolError::BadSectionHeaders;
        if bytes.get(0..4) != Some(b"\x7fELF".as_slice()) {
            return Err(bad);
        }
        let shoff = u64_at(bytes, 40).ok_or(SymbolError::BadSectionHeaders)?;
        let shentsize = u16_at(bytes, 58).ok_or(SymbolError::BadSectionHeaders)?;
        let shnum = usize::from(u16_at(bytes, 60).ok_or(SymbolError::BadSectionHeaders)?);
        if shnum == 0 || shoff == 0 {
            return Ok(Self::default());
        }
        if usize::from(shentsize) != SHDR_SIZE {
            return Err(bad);
        }
        let shnum = shnum.min(MAX_SECTIONS);
        let table = range(bytes, shoff, (shnum * SHDR_SIZE) as u64).ok_or(bad)?;
        let header = |i: usize| table.get(i * SHDR_SIZE..(i + 1) * SHDR_SIZE);
        let Some(symtab) = (0..shnum)
            .filter_map(header)
            .find(|h| u32_at(h, 4) == Some(SHT_SYMTAB))
        else {
            return Ok(Self::default());
        };
        let malformed = SymbolError::BadSymtab;
        let field = |h: &[u8], off| u64_at(h, off).ok_or(malformed("short header"));
        if field(symtab, 56)? != SYM_SIZE as u64 {
            return Err(malformed("sh_entsize is not 24"));
        }
        let syms = range(bytes, field(symtab, 24)?, field(symtab, 32)?)
            .ok_or(malformed("symbols outside the file"))?;
        let link = u32_at(symtab, 40).ok_or(malformed("short header"))?;
        let strtab = usize::try_from(link)
            .ok()
            .filter(|l| *l < shnum)
            .and_then(header)
            .ok_or(malformed("sh_link names no section"))?;
        if u32_at(strtab, 4) != Some(SHT_STRTAB) {
            return Err(malformed("sh_link is not a string table"));
        }
        let strings = range(bytes, field(strtab, 24)?, field(strtab, 32)?)
            .ok_or(malformed("strings outside the file"))?;
        let exec_section = |shndx: u16| {
            header(usize::from(shndx))
                .filter(|_| usize::from(shndx) < shnum)
                .and_then(|h| u64_at(h, 8))
                .is_some_and(|flags| flags & 0x4 != 0)
        };

        let mut out = Self::default();
        for sym in syms.chunks_exact(SYM_SIZE) {
            let (Some(name), Some(info), Some(shndx), Some(addr), Some(size)) = (
                u32_at(sym, 0),
                sym.get(4).copied(),
                u16_at(sym, 6),
                u64_at(sym, 8),
                u64_at(sym, 16),
            ) else {
                continue;
            };
            let kind = match info & 0xf {
                STT_FUNC => SymbolKind::Code,
                STT_OBJECT => SymbolKind::Data,
                STT_NOTYPE if exec_section(shndx) => SymbolKind::Code,
                _ => continue,
            };
            if shndx == SHN_UNDEF || name == 0 || addr.checked_add(size).is_none() {
                continue;
            }
            // The name must end with a NUL inside the string table.
            let Some(raw) = usize::try_from(name)
                .ok()
                .and_then(|n| strings.get(n..))
                .and_then(|s| s.iter().position(|b| *b == 0).and_then(|e| s.get(..e)))
            else {
                continue;
            };
            if raw.is_empty() || raw.starts_with(b"$") || raw.starts_with(b".L") {
                continue;
            }
            if out.syms.len() >= MAX_SYMBOLS {
                out.dropped += 1;
                continue;
            }
            let text = String::from_utf8_lossy(cut_bytes(raw, 4 * MAX_NAME_LEN));
            let demangled = format!("{:#}", rustc_demangle::demangle(&text));
            let name = cut(&demangled, MAX_NAME_LEN);
            if out.names.len() + name.len() > MAX_NAME_BYTES {
                out.dropped += 1;
                continue;
            }
            let (Ok(name_start), Ok(name_len)) =
                (u32::try_from(out.names.len()), u16::try_from(name.len()))
            else {
                out.dropped += 1;
                continue;
            };
            out.names.push_str(name);
            out.syms.push(Sym {
                addr,
                size,
                name_start,
                name_len,
                kind,
            });
        }
        // By address; at one address, sized symbols before unsized ones, code before data.
        out.syms
            .sort_by_key(|s| (s.addr, s.size == 0, s.kind == SymbolKind::Data));
        Ok(out)
    }

    /// Symbols kept.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// Whether no symbol was kept (a stripped file).
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Bytes held for names.
    pub fn name_bytes(&self) -> usize {
        self.names.len()
    }

    fn symbol(&self, s: &Sym) -> Symbol<'_> {
        let start = s.name_start as usize;
        Symbol {
            name: self
                .names
                .get(start..start + usize::from(s.name_len))
                .unwrap_or_default(),
            addr: s.addr,
            size: s.size,
            kind: s.kind,
        }
    }

    /// The symbol `addr` falls in: the nearest symbol at or below it whose size covers it,
    /// or, for a symbol of unknown size, that lies at most [`UNSIZED_REACH`] bytes below.
    pub fn lookup(&self, addr: u64) -> Option<Symbol<'_>> {
        let upto = self.syms.partition_point(|s| s.addr <= addr);
        // Look back over a few symbols: a small one may sit between a large one's start
        // and `addr` (or several share an address).
        self.syms
            .get(upto.saturating_sub(16)..upto)?
            .iter()
            .rev()
            .find(|s| match s.size {
                0 => addr - s.addr < UNSIZED_REACH,
                n => addr - s.addr < n,
            })
            .map(|s| self.symbol(s))
    }

    /// `addr` with its symbol, for display (`name+0xoff`).
    pub fn locate(&self, addr: u64) -> Located<'_> {
        Located {
            addr,
            symbol: self.lookup(addr),
        }
    }
}

fn cut_bytes(b: &[u8], max: usize) -> &[u8] {
    b.get(..b.len().min(max)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crafted ELF: header, `.symtab` and `.strtab` contents, then the section headers
    /// (null, symtab, strtab, text).
    struct Crafted {
        syms: Vec<[u8; 24]>,
        strings: Vec<u8>,
    }

    fn sym(name: u32, info: u8, shndx: u16, addr: u64, size: u64) -> [u8; 24] {
        let mut s = [0u8; 24];
        s[0..4].copy_from_slice(&name.to_le_bytes());
        s[4] = info;
        s[6..8].copy_from_slice(&shndx.to_le_bytes());
        s[8..16].copy_from_slice(&addr.to_le_bytes());
        s[16..24].copy_from_slice(&size.to_le_bytes());
        s
    }

    fn shdr(ty: u32, flags: u64, off: u64, size: u64, link: u32, entsize: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&flags.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        h[56..64].copy_from_slice(&entsize.to_le_bytes());
        h
    }

    impl Crafted {
        fn new() -> Self {
            Self {
                syms: vec![[0; 24]],
                strings: vec![0],
            }
        }
        fn name(&mut self, n: &[u8]) -> u32 {
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(n);
            self.strings.push(0);
            at
        }
        fn func(mut self, n: &str, addr: u64, size: u64) -> Self {
            let at = self.name(n.as_bytes());
            self.syms.push(sym(at, STT_FUNC, 3, addr, size));
            self
        }
        /// The file, with `edit` applied to (symtab header, strtab header) first.
        fn build_with(&self, edit: impl FnOnce(&mut [u8; 64], &mut [u8; 64])) -> Vec<u8> {
            let mut b = vec![0u8; 64];
            b[0..4].copy_from_slice(b"\x7fELF");
            let symoff = b.len() as u64;
            for s in &self.syms {
                b.extend_from_slice(s);
            }
            let stroff = b.len() as u64;
            b.extend_from_slice(&self.strings);
            while !b.len().is_multiple_of(8) {
                b.push(0);
            }
            let shoff = b.len() as u64;
            let symsize = (self.syms.len() * 24) as u64;
            let mut symtab = shdr(SHT_SYMTAB, 0, symoff, symsize, 2, 24);
            let mut strtab = shdr(SHT_STRTAB, 0, stroff, self.strings.len() as u64, 0, 0);
            edit(&mut symtab, &mut strtab);
            b.extend_from_slice(&[0; 64]);
            b.extend_from_slice(&symtab);
            b.extend_from_slice(&strtab);
            b.extend_from_slice(&shdr(1, 0x6, 0, 0, 0, 0)); // .text: ALLOC|EXECINSTR
            b[40..48].copy_from_slice(&shoff.to_le_bytes());
            b[58..60].copy_from_slice(&64u16.to_le_bytes());
            b[60..62].copy_from_slice(&4u16.to_le_bytes());
            b
        }
        fn build(&self) -> Vec<u8> {
            self.build_with(|_, _| {})
        }
    }

    #[test]
    fn names_addresses_inside_sized_and_unsized_symbols() {
        let b = Crafted::new()
            .func("outer", 0x20_0000, 0x100)
            .func("inner", 0x20_0040, 0x10)
            .func("_ZN5hello4main17h0123456789abcdefE", 0x20_1000, 0x20)
            .func("label", 0x20_2000, 0)
            .build();
        let t = SymbolTable::from_elf(&b).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.locate(0x20_0000).to_string(), "outer+0x0");
        assert_eq!(t.locate(0x20_0044).to_string(), "inner+0x4");
        // Past the small symbol, still inside the large one.
        assert_eq!(t.locate(0x20_0080).to_string(), "outer+0x80");
        assert_eq!(t.locate(0x20_0100).to_string(), "0x200100");
        // Rust names are demangled, without the hash.
        assert_eq!(t.locate(0x20_1003).to_string(), "hello::main+0x3");
        assert_eq!(t.locate(0x20_2fff).to_string(), "label+0xfff");
        assert_eq!(t.locate(0x20_3000).to_string(), "0x203000");
        assert_eq!(t.locate(0).to_string(), "0x0");
        assert_eq!(t.locate(u64::MAX).to_string(), "0xffffffffffffffff");
    }

    #[test]
    fn stripped_and_non_elf_files() {
        let mut b = Crafted::new().func("f", 0x1000, 1).build();
        // No section headers at all: an empty table.
        b[60..62].copy_from_slice(&0u16.to_le_bytes());
        assert!(SymbolTable::from_elf(&b).unwrap().is_empty());
        assert!(SymbolTable::from_elf(b"").is_err());
        assert!(SymbolTable::from_elf(b"\x7fELF").is_err());
        assert!(SymbolTable::from_elf(&[0u8; 100]).is_err());
    }

    #[test]
    fn hostile_tables_are_refused_or_trimmed_never_a_panic() {
        let c = Crafted::new()
            .func("f", 0x1000, 0x10)
            .func("g", 0x2000, 0x10);
        let huge = |s: &mut [u8; 64], _: &mut [u8; 64]| {
            s[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        };
        assert!(SymbolTable::from_elf(&c.build_with(huge)).is_err());
        let far = |s: &mut [u8; 64], _: &mut [u8; 64]| {
            s[24..32].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        };
        assert!(SymbolTable::from_elf(&c.build_with(far)).is_err());
        let bad_link = |s: &mut [u8; 64], _: &mut [u8; 64]| {
            s[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        };
        assert!(SymbolTable::from_elf(&c.build_with(bad_link)).is_err());
        let bad_entsize = |s: &mut [u8; 64], _: &mut [u8; 64]| {
            s[56..64].copy_from_slice(&7u64.to_le_bytes());
        };
        assert!(SymbolTable::from_elf(&c.build_with(bad_entsize)).is_err());
        // The string table cut short: the last name has no NUL inside it and is skipped.
        let short_strings = |_: &mut [u8; 64], t: &mut [u8; 64]| {
            let len = u64::from_le_bytes(t[32..40].try_into().unwrap());
            t[32..40].copy_from_slice(&(len - 1).to_le_bytes());
        };
        let t = SymbolTable::from_elf(&c.build_with(short_strings)).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.locate(0x1000).to_string(), "f+0x0");
        assert_eq!(t.locate(0x2000).to_string(), "0x2000");
        // Huge section count and an out-of-file header table.
        let mut b = c.build();
        b[60..62].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(SymbolTable::from_elf(&b).is_err());
        let mut b = c.build();
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(SymbolTable::from_elf(&b).is_err());
    }

    #[test]
    fn hostile_symbols_are_skipped() {
        let mut c = Crafted::new();
        let n = c.name(b"ok");
        c.syms.push(sym(n, STT_FUNC, 3, 0x1000, 0x10));
        // Name offset past the strings, wrapping size, undefined, a section symbol.
        c.syms.push(sym(u32::MAX, STT_FUNC, 3, 0x3000, 1));
        c.syms.push(sym(n, STT_FUNC, 3, u64::MAX, 2));
        c.syms.push(sym(n, STT_FUNC, 0, 0x4000, 1));
        c.syms.push(sym(n, 3, 3, 0x5000, 1));
        // A name that is invalid UTF-8 and too long.
        let long = c.name(&[0xff; 5000]);
        c.syms.push(sym(long, STT_FUNC, 3, 0x6000, 1));
        let t = SymbolTable::from_elf(&c.build()).unwrap();
        assert_eq!(t.len(), 2);
        let s = t.lookup(0x6000).unwrap();
        assert!(s.name.len() <= MAX_NAME_LEN && s.name.starts_with('\u{fffd}'));
        assert_eq!(t.locate(0x3000).symbol, None);
        assert_eq!(t.locate(0x4000).symbol, None);
    }

    #[test]
    fn symbol_count_is_capped() {
        let mut c = Crafted::new();
        let n = c.name(b"s");
        for i in 0..(MAX_SYMBOLS + 10) as u64 {
            c.syms.push(sym(n, STT_FUNC, 3, 0x1000 + i * 16, 16));
        }
        let t = SymbolTable::from_elf(&c.build()).unwrap();
        assert_eq!(t.len(), MAX_SYMBOLS);
        assert_eq!(t.dropped, 10);
        assert!(t.name_bytes() <= MAX_NAME_BYTES);
    }
}
