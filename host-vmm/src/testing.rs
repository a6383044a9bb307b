//! Test support: a builder for small synthetic guest ELF images and a few hand-assembled
//! ring-0 programs. Used by the unit tests, the integration tests under `tests/`, and handy
//! for fuzzing the loader. Not used by the VMM itself.
// Builds files from constant, test-chosen values only; no guest data flows through here.
#![allow(clippy::indexing_slicing)]

use pvkit_abi::note::AbiNote;
use pvkit_abi::{AbiVersion, ABI_VERSION};

use crate::elf::{EHDR_SIZE, PHDR_SIZE, SHDR_SIZE};

/// Builds a minimal ET_EXEC x86_64 ELF: one executable `PT_LOAD` holding `code` at `addr`,
/// optional extra segments, and the pvkit ABI note (as a `PT_NOTE` and an `SHT_NOTE`).
#[derive(Clone, Debug)]
pub struct ElfBuilder {
    addr: u64,
    code: Vec<u8>,
    entry: u64,
    bss: u64,
    exec: bool,
    note: Option<Vec<u8>>,
    note_in_phdrs: bool,
    extra: Vec<(u64, u64)>,
}

fn note_bytes(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
    let pad = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(4), 0);
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ntype.to_le_bytes());
    n.extend_from_slice(name);
    pad(&mut n);
    n.extend_from_slice(desc);
    pad(&mut n);
    n
}

fn version_note(v: AbiVersion) -> Vec<u8> {
    let n = AbiNote::new(v);
    let desc = [v.major.to_le_bytes(), v.minor.to_le_bytes()].concat();
    note_bytes(&n.name[..n.namesz as usize], n.note_type, &desc)
}

impl ElfBuilder {
    /// An image whose code is `code` at guest-physical `addr`, entered at `addr`.
    pub fn new(addr: u64, code: &[u8]) -> Self {
        Self {
            addr,
            code: code.to_vec(),
            entry: addr,
            bss: 0,
            exec: true,
            note: Some(version_note(ABI_VERSION)),
            note_in_phdrs: true,
            extra: Vec::new(),
        }
    }

    /// Sets the entry point.
    pub fn entry(mut self, entry: u64) -> Self {
        self.entry = entry;
        self
    }

    /// Adds `len` zero-filled bytes after the code.
    pub fn bss(mut self, len: u64) -> Self {
        self.bss = len;
        self
    }

    /// Marks the code segment executable or not.
    pub fn exec(mut self, exec: bool) -> Self {
        self.exec = exec;
        self
    }

    /// Sets the ABI version note (`None`: no note at all).
    pub fn note(mut self, version: Option<AbiVersion>) -> Self {
        self.note = version.map(version_note);
        self
    }

    /// Uses an arbitrary note instead of the ABI version note.
    pub fn raw_note(mut self, name: &[u8], ntype: u32, desc: &[u8]) -> Self {
        self.note = Some(note_bytes(name, ntype, desc));
        self
    }

    /// Makes the note's `descsz` run past its segment.
    pub fn corrupt_note_descsz(mut self) -> Self {
        if let Some(n) = self.note.as_mut() {
            n[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        }
        self
    }

    /// Whether the note also gets a `PT_NOTE` program header (default: yes; it is always
    /// in a `SHT_NOTE` section).
    pub fn note_in_phdrs(mut self, yes: bool) -> Self {
        self.note_in_phdrs = yes;
        self
    }

    /// Adds a read-write `PT_LOAD` of `len` zero bytes (no file data) at `addr`.
    pub fn extra_segment(mut self, addr: u64, len: u64) -> Self {
        self.extra.push((addr, len));
        self
    }

    /// The file bytes.
    pub fn build(&self) -> Vec<u8> {
        let note_ph = self.note.is_some() && self.note_in_phdrs;
        let phnum = 1 + self.extra.len() + usize::from(note_ph);
        let code_off = EHDR_SIZE + phnum * PHDR_SIZE;
        let note_off = code_off + self.code.len().next_multiple_of(4);
        let note = self.note.clone().unwrap_or_default();
        let sh_off = (note_off + note.len()).next_multiple_of(8);
        let shnum: u16 = if self.note.is_some() { 2 } else { 0 };

        let mut f = Vec::new();
        // ELF header.
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&self.entry.to_le_bytes());
        f.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
        let shoff = if shnum > 0 { sh_off as u64 } else { 0 };
        f.extend_from_slice(&shoff.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        f.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        f.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        f.extend_from_slice(&(phnum as u16).to_le_bytes());
        f.extend_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        f.extend_from_slice(&shnum.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        let phdr = |f: &mut Vec<u8>,
                    t: u32,
                    flags: u32,
                    off: u64,
                    addr: u64,
                    fsz: u64,
                    msz: u64,
                    al: u64| {
            f.extend_from_slice(&t.to_le_bytes());
            f.extend_from_slice(&flags.to_le_bytes());
            f.extend_from_slice(&off.to_le_bytes());
            f.extend_from_slice(&addr.to_le_bytes());
            f.extend_from_slice(&addr.to_le_bytes());
            f.extend_from_slice(&fsz.to_le_bytes());
            f.extend_from_slice(&msz.to_le_bytes());
            f.extend_from_slice(&al.to_le_bytes());
        };
        let flags = 4 | 2 | if self.exec { 1 } else { 0 };
        let len = self.code.len() as u64;
        phdr(
            &mut f,
            1,
            flags,
            code_off as u64,
            self.addr,
            len,
            len + self.bss,
            0x1000,
        );
        for (addr, len) in &self.extra {
            phdr(&mut f, 1, 6, code_off as u64, *addr, 0, *len, 0x1000);
        }
        if note_ph {
            phdr(&mut f, 4, 4, note_off as u64, 0, note.len() as u64, 0, 4);
        }
        f.extend_from_slice(&self.code);
        f.resize(note_off, 0);
        f.extend_from_slice(&note);
        if shnum > 0 {
            f.resize(sh_off, 0);
            f.extend_from_slice(&[0u8; SHDR_SIZE]); // SHN_UNDEF
            let mut sh = [0u8; SHDR_SIZE];
            sh[4..8].copy_from_slice(&7u32.to_le_bytes()); // SHT_NOTE
            sh[24..32].copy_from_slice(&(note_off as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
            sh[48..56].copy_from_slice(&4u64.to_le_bytes());
            f.extend_from_slice(&sh);
        }
        f
    }
}

/// Hand-assembled ring-0 programs (position independent) for boot tests without the real
/// guest kernel. Load them with [`ElfBuilder::new`] at any address ≥ 1 MiB.
pub mod programs {
    /// Calls `abi_version`, then `exit(7)` if `RAX` = 0 and `RDX` = `1 << 32` on return,
    /// else `exit(99)`. Proves the host's `RAX`/`RDX` writes reach the guest.
    ///
    /// ```text
    /// mov eax, 1; mov edx, 0x500; out dx, eax
    /// test rax, rax; jnz bad; mov rcx, 1<<32; cmp rdx, rcx; jne bad
    /// mov edi, 7; jmp done
    /// bad: mov edi, 99
    /// done: mov eax, 4; mov edx, 0x500; out dx, eax; hlt
    /// ```
    pub const VERSION_CHECK: &[u8] = &[
        0xb8, 0x01, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75,
        0x16, 0x48, 0xb9, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x48, 0x39, 0xca, 0x75,
        0x07, 0xbf, 0x07, 0x00, 0x00, 0x00, 0xeb, 0x05, 0xbf, 0x63, 0x00, 0x00, 0x00, 0xb8, 0x04,
        0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4,
    ];

    /// Writes `"hello, pvkit"` with one `console_write` hypercall, then `exit(0)` if it
    /// returned `Ok` with 12 bytes written, else `exit(1)`.
    pub const PV_HELLO: &[u8] = &[
        0x48, 0x8d, 0x3d, 0x30, 0x00, 0x00, 0x00, 0xbe, 0x0c, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00,
        0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75, 0x0a, 0x48, 0x83,
        0xfa, 0x0c, 0x75, 0x04, 0x31, 0xff, 0xeb, 0x05, 0xbf, 0x01, 0x00, 0x00, 0x00, 0xb8, 0x04,
        0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
        0x2c, 0x20, 0x70, 0x76, 0x6b, 0x69, 0x74,
    ];

    /// Prints `"ab\n"` through the UART (one LSR read and one THR write per byte), then
    /// `exit(0)`.
    pub const UART_AB: &[u8] = &[
        0x48, 0x8d, 0x35, 0x22, 0x00, 0x00, 0x00, 0xb9, 0x03, 0x00, 0x00, 0x00, 0x66, 0xba, 0xfd,
        0x03, 0xec, 0x66, 0xba, 0xf8, 0x03, 0xac, 0xee, 0xff, 0xc9, 0x75, 0xf1, 0x31, 0xff, 0xb8,
        0x04, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0x61, 0x62, 0x0a,
    ];

    /// 2000 `abi_version` hypercalls in a tight loop, then `exit(0)`: the round trip of a
    /// hypercall with register access, for calibration.
    ///
    /// ```text
    /// mov ecx, 2000
    /// 1: mov eax, 1; mov edx, 0x500; out dx, eax; dec ecx; jnz 1b
    /// xor edi, edi; mov eax, 4; mov edx, 0x500; out dx, eax; hlt
    /// ```
    pub const HYPERCALL_LOOP_2000: &[u8] = &[
        0xb9, 0xd0, 0x07, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00,
        0xef, 0xff, 0xc9, 0x75, 0xf1, 0x31, 0xff, 0xb8, 0x04, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0xf4,
    ];

    /// The same loop writing to the null port (`0x501`) instead: a bare port-I/O exit with
    /// no register access, then `exit(0)`.
    pub const NULL_PORT_LOOP_2000: &[u8] = &[
        0xb9, 0xd0, 0x07, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xba, 0x01, 0x05, 0x00, 0x00,
        0xef, 0xff, 0xc9, 0x75, 0xf1, 0x31, 0xff, 0xb8, 0x04, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0xf4,
    ];

    /// `jmp $`: spins forever.
    pub const SPIN: &[u8] = &[0xeb, 0xfe];

    /// `ud2` with no IDT: #UD → #GP → double fault → triple fault.
    pub const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];

    /// `hlt` with interrupts off.
    pub const HLT: &[u8] = &[0xf4];
}
