//! Test support: a builder for small synthetic guest ELF images and a few hand-assembled
//! ring-0 programs. Used by the unit tests, the integration tests under `tests/`, and handy
//! for fuzzing the loader. Not used by the VMM itself.
// Builds files from constant, test-chosen values only; no guest data flows through here.
#![allow(clippy::indexing_slicing)]

use pvkit_abi::note::AbiNote;
use pvkit_abi::{AbiVersion, ABI_VERSION};

use crate::loader::elf::{EHDR_SIZE, PHDR_SIZE, SHDR_SIZE};

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

/// A valid image at `addr` without a pvkit note, `size` bytes long (at least 128 KiB),
/// whose `sections` `SHT_NOTE` sections (at most [`crate::loader::elf::MAX_SHNUM`] - 1) each
/// start 4 bytes after the previous one and run to the section headers at the end: the
/// bytes in between are zeros, i.e. empty notes, 12 bytes each. Without a bound on the
/// walk the loader visits every note of the file once per section (issue 7, finding 3).
pub fn note_bomb(addr: u64, code: &[u8], size: usize, sections: u16) -> Vec<u8> {
    let mut f = ElfBuilder::new(addr, code).note(None).build();
    let notes_at = f.len().next_multiple_of(8);
    let sh_bytes = (usize::from(sections) + 1) * SHDR_SIZE;
    let shoff = (size - sh_bytes) & !7;
    f.resize(shoff, 0);
    f.extend_from_slice(&[0u8; SHDR_SIZE]); // SHN_UNDEF
    for i in 0..usize::from(sections) {
        let off = notes_at + 4 * i;
        let mut sh = [0u8; SHDR_SIZE];
        sh[4..8].copy_from_slice(&7u32.to_le_bytes()); // SHT_NOTE
        sh[24..32].copy_from_slice(&(off as u64).to_le_bytes());
        sh[32..40].copy_from_slice(&((shoff - off) as u64).to_le_bytes());
        sh[48..56].copy_from_slice(&4u64.to_le_bytes());
        f.extend_from_slice(&sh);
    }
    f[40..48].copy_from_slice(&(shoff as u64).to_le_bytes()); // e_shoff
    f[58..60].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes()); // e_shentsize
    f[60..62].copy_from_slice(&(sections + 1).to_le_bytes()); // e_shnum
    f
}

/// Hand-assembled ring-0 programs (position independent) for boot tests without the real
/// guest kernel. Load them with [`ElfBuilder::new`] at any address ≥ 1 MiB.
///
/// The device programs read their parameters from [`programs::PARAMS`] bytes after their
/// first byte: build the image with [`programs::with_params`]. In their listings (GNU `as`,
/// Intel syntax), `hypercall N` is `mov eax, N; mov edx, 0x500; out dx, eax` and `exit N`
/// is `mov edi, N; hypercall 3; hlt`.
pub mod programs {
    /// Offset of a device program's parameter block from the program's first byte.
    pub const PARAMS: usize = 0x1000;

    /// `code` followed, at [`PARAMS`], by `params`: an image for [`super::ElfBuilder::new`].
    pub fn with_params(code: &[u8], params: &[u8]) -> Vec<u8> {
        assert!(
            code.len() <= PARAMS,
            "program longer than its parameter offset"
        );
        let mut image = code.to_vec();
        image.resize(PARAMS, 0);
        image.extend_from_slice(params);
        image
    }

    /// Calls `abi_version`, then `exit(7)` if `RAX` = 0 and `RDX` = `2 << 32` (ABI 2.0) on return,
    /// else `exit(99)`. Proves the host's `RAX`/`RDX` writes reach the guest.
    ///
    /// ```text
    /// mov eax, 1; mov edx, 0x500; out dx, eax
    /// test rax, rax; jnz bad; mov rcx, 2<<32; cmp rdx, rcx; jne bad
    /// mov edi, 7; jmp done
    /// bad: mov edi, 99
    /// done: mov eax, 3; mov edx, 0x500; out dx, eax; hlt
    /// ```
    pub const VERSION_CHECK: &[u8] = &[
        0xb8, 0x01, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75,
        0x16, 0x48, 0xb9, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x48, 0x39, 0xca, 0x75,
        0x07, 0xbf, 0x07, 0x00, 0x00, 0x00, 0xeb, 0x05, 0xbf, 0x63, 0x00, 0x00, 0x00, 0xb8, 0x03,
        0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4,
    ];

    /// Writes `"hello, pvkit"` with one `console_write` hypercall, then `exit(0)` if it
    /// returned `Ok` with 12 bytes written, else `exit(1)`.
    pub const PV_HELLO: &[u8] = &[
        0x48, 0x8d, 0x3d, 0x30, 0x00, 0x00, 0x00, 0xbe, 0x0c, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x01,
        0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75, 0x0a, 0x48, 0x83,
        0xfa, 0x0c, 0x75, 0x04, 0x31, 0xff, 0xeb, 0x05, 0xbf, 0x01, 0x00, 0x00, 0x00, 0xb8, 0x03,
        0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
        0x2c, 0x20, 0x70, 0x76, 0x6b, 0x69, 0x74,
    ];

    /// Prints `"ab\n"` through the UART (one LSR read and one THR write per byte), then
    /// `exit(0)`.
    pub const UART_AB: &[u8] = &[
        0x48, 0x8d, 0x35, 0x22, 0x00, 0x00, 0x00, 0xb9, 0x03, 0x00, 0x00, 0x00, 0x66, 0xba, 0xfd,
        0x03, 0xec, 0x66, 0xba, 0xf8, 0x03, 0xac, 0xee, 0xff, 0xc9, 0x75, 0xf1, 0x31, 0xff, 0xb8,
        0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0x61, 0x62, 0x0a,
    ];

    /// 2000 `abi_version` hypercalls in a tight loop, then `exit(0)`: the round trip of a
    /// hypercall with register access, for calibration.
    ///
    /// ```text
    /// mov ecx, 2000
    /// 1: mov eax, 1; mov edx, 0x500; out dx, eax; dec ecx; jnz 1b
    /// xor edi, edi; mov eax, 3; mov edx, 0x500; out dx, eax; hlt
    /// ```
    pub const HYPERCALL_LOOP_2000: &[u8] = &[
        0xb9, 0xd0, 0x07, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00,
        0xef, 0xff, 0xc9, 0x75, 0xf1, 0x31, 0xff, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0xf4,
    ];

    /// The same loop writing to the null port (`0x501`) instead: a bare port-I/O exit with
    /// no register access, then `exit(0)`.
    pub const NULL_PORT_LOOP_2000: &[u8] = &[
        0xb9, 0xd0, 0x07, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xba, 0x01, 0x05, 0x00, 0x00,
        0xef, 0xff, 0xc9, 0x75, 0xf1, 0x31, 0xff, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0xf4,
    ];

    /// IDENTIFY DEVICE, then `reads` READ SECTORS (LBA28) of `nsect` sectors at `lba`
    /// between bench phase markers, then console-writes the IDENTIFY block and the last read's
    /// data; `exit(0)`, or `exit(2)` on an ATA error. Exits: IDENTIFY 5 (device, command,
    /// status, one `rep insw` of 256 words, status); per read `2 * nsect + 7` (6 task-file
    /// writes, per sector a status read and one `rep insw`, a completion status read).
    ///
    /// Parameters at [`PARAMS`]: `+0` lba `u32`, `+4` nsect `u32` (1–255), `+8` reads `u32`,
    /// `+16` data buffer `u64` (4 KiB aligned), `+24` IDENTIFY buffer `u64`, `+32` case `u64`.
    ///
    /// ```text
    /// start:
    ///     lea rbx, [rip + params]
    ///     # IDENTIFY: device, command, status, 256 words, status (5 exits)
    ///     mov dx, 0x1f6
    ///     mov al, 0xa0
    ///     out dx, al
    ///     mov dx, 0x1f7
    ///     mov al, 0xec
    ///     out dx, al
    ///     in al, dx
    ///     test al, 0x01
    ///     jnz fail
    ///     mov rdi, [rbx + 24]
    ///     mov dx, 0x1f0
    ///     mov ecx, 256
    ///     rep insw
    ///     mov dx, 0x1f7
    ///     in al, dx
    ///     # phase begin
    ///     mov rdi, [rbx + 32]
    ///     mov esi, 1
    ///     hypercall 0xf00
    ///     mov r12d, [rbx + 8]          # reads left
    /// read_loop:
    ///     test r12d, r12d
    ///     jz reads_done
    ///     mov ecx, [rbx + 0]           # lba
    ///     mov dx, 0x1f6
    ///     mov eax, ecx
    ///     shr eax, 24
    ///     and al, 0x0f
    ///     or al, 0xe0
    ///     out dx, al
    ///     mov dx, 0x1f2
    ///     mov al, [rbx + 4]
    ///     out dx, al
    ///     mov dx, 0x1f3
    ///     mov al, cl
    ///     out dx, al
    ///     mov dx, 0x1f4
    ///     mov al, ch
    ///     out dx, al
    ///     mov dx, 0x1f5
    ///     mov eax, ecx
    ///     shr eax, 16
    ///     out dx, al
    ///     mov dx, 0x1f7
    ///     mov al, 0x20
    ///     out dx, al
    ///     mov rdi, [rbx + 16]
    ///     mov r13d, [rbx + 4]          # sectors left
    /// sector_loop:
    ///     mov dx, 0x1f7
    ///     in al, dx                    # status: wait for DRQ
    ///     test al, 0x01
    ///     jnz fail
    ///     test al, 0x08
    ///     jz sector_loop
    ///     mov dx, 0x1f0
    ///     mov ecx, 256
    ///     rep insw                     # rdi advances by 512
    ///     dec r13d
    ///     jnz sector_loop
    ///     mov dx, 0x1f7
    ///     in al, dx                    # completion status
    ///     test al, 0x09
    ///     jnz fail
    ///     dec r12d
    ///     jmp read_loop
    /// reads_done:
    ///     mov rdi, [rbx + 32]
    ///     mov esi, 2
    ///     mov r8d, [rbx + 8]
    ///     hypercall 0xf00
    ///     # console: identify block, then the data
    ///     mov rdi, [rbx + 24]
    ///     mov esi, 512
    ///     hypercall 0x100
    ///     mov rdi, [rbx + 16]
    ///     mov esi, [rbx + 4]
    ///     shl esi, 9
    ///     hypercall 0x100
    ///     exit 0
    /// fail:
    ///     exit 2
    /// ```
    pub const ATA_READ: &[u8] = &[
        0x48, 0x8d, 0x1d, 0xf9, 0x0f, 0x00, 0x00, 0x66, 0xba, 0xf6, 0x01, 0xb0, 0xa0, 0xee, 0x66,
        0xba, 0xf7, 0x01, 0xb0, 0xec, 0xee, 0xec, 0xa8, 0x01, 0x0f, 0x85, 0xef, 0x00, 0x00, 0x00,
        0x48, 0x8b, 0x7b, 0x18, 0x66, 0xba, 0xf0, 0x01, 0xb9, 0x00, 0x01, 0x00, 0x00, 0x66, 0xf3,
        0x6d, 0x66, 0xba, 0xf7, 0x01, 0xec, 0x48, 0x8b, 0x7b, 0x20, 0xbe, 0x01, 0x00, 0x00, 0x00,
        0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x44, 0x8b, 0x63, 0x08,
        0x45, 0x85, 0xe4, 0x74, 0x6b, 0x8b, 0x0b, 0x66, 0xba, 0xf6, 0x01, 0x89, 0xc8, 0xc1, 0xe8,
        0x18, 0x24, 0x0f, 0x0c, 0xe0, 0xee, 0x66, 0xba, 0xf2, 0x01, 0x8a, 0x43, 0x04, 0xee, 0x66,
        0xba, 0xf3, 0x01, 0x88, 0xc8, 0xee, 0x66, 0xba, 0xf4, 0x01, 0x88, 0xe8, 0xee, 0x66, 0xba,
        0xf5, 0x01, 0x89, 0xc8, 0xc1, 0xe8, 0x10, 0xee, 0x66, 0xba, 0xf7, 0x01, 0xb0, 0x20, 0xee,
        0x48, 0x8b, 0x7b, 0x10, 0x44, 0x8b, 0x6b, 0x04, 0x66, 0xba, 0xf7, 0x01, 0xec, 0xa8, 0x01,
        0x75, 0x75, 0xa8, 0x08, 0x74, 0xf3, 0x66, 0xba, 0xf0, 0x01, 0xb9, 0x00, 0x01, 0x00, 0x00,
        0x66, 0xf3, 0x6d, 0x41, 0xff, 0xcd, 0x75, 0xe2, 0x66, 0xba, 0xf7, 0x01, 0xec, 0xa8, 0x09,
        0x75, 0x57, 0x41, 0xff, 0xcc, 0xeb, 0x90, 0x48, 0x8b, 0x7b, 0x20, 0xbe, 0x02, 0x00, 0x00,
        0x00, 0x44, 0x8b, 0x43, 0x08, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00,
        0xef, 0x48, 0x8b, 0x7b, 0x18, 0xbe, 0x00, 0x02, 0x00, 0x00, 0xb8, 0x00, 0x01, 0x00, 0x00,
        0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x8b, 0x7b, 0x10, 0x8b, 0x73, 0x04, 0xc1, 0xe6,
        0x09, 0xb8, 0x00, 0x01, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xbf, 0x00, 0x00,
        0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0xbf,
        0x02, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef,
        0xf4,
    ];

    /// Programs PIT counter 0 (mode 2, count 65536: 3 exits), then between bench phase
    /// markers reads it `reads` times with the latch command (3 exits each: latch, LSB, MSB),
    /// storing each 16-bit value, then console-writes the values and `exit(0)`.
    ///
    /// Parameters at [`PARAMS`]: `+0` reads `u32`, `+8` case `u64`, `+16` buffer `u64`.
    ///
    /// ```text
    /// start:
    ///     lea rbx, [rip + params]
    ///     # counter 0, lobyte/hibyte, mode 2, count 0 (65536): 3 exits
    ///     mov al, 0x34
    ///     out 0x43, al
    ///     xor eax, eax
    ///     out 0x40, al
    ///     out 0x40, al
    ///     mov rdi, [rbx + 8]
    ///     mov esi, 1
    ///     hypercall 0xf00
    ///     mov ecx, [rbx + 0]
    ///     mov rdi, [rbx + 16]
    /// 1:
    ///     xor eax, eax
    ///     out 0x43, al                 # latch counter 0
    ///     in al, 0x40                  # LSB
    ///     mov ah, al
    ///     in al, 0x40                  # MSB
    ///     xchg al, ah
    ///     mov [rdi], ax
    ///     add rdi, 2
    ///     dec ecx
    ///     jnz 1b
    ///     mov rdi, [rbx + 8]
    ///     mov esi, 2
    ///     mov r8d, [rbx + 0]
    ///     hypercall 0xf00
    ///     mov rdi, [rbx + 16]
    ///     mov esi, [rbx + 0]
    ///     shl esi, 1
    ///     hypercall 0x100
    ///     exit 0
    /// ```
    pub const PIT_READ: &[u8] = &[
        0x48, 0x8d, 0x1d, 0xf9, 0x0f, 0x00, 0x00, 0xb0, 0x34, 0xe6, 0x43, 0x31, 0xc0, 0xe6, 0x40,
        0xe6, 0x40, 0x48, 0x8b, 0x7b, 0x08, 0xbe, 0x01, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x0f, 0x00,
        0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x8b, 0x0b, 0x48, 0x8b, 0x7b, 0x10, 0x31, 0xc0,
        0xe6, 0x43, 0xe4, 0x40, 0x88, 0xc4, 0xe4, 0x40, 0x86, 0xe0, 0x66, 0x89, 0x07, 0x48, 0x83,
        0xc7, 0x02, 0xff, 0xc9, 0x75, 0xe9, 0x48, 0x8b, 0x7b, 0x08, 0xbe, 0x02, 0x00, 0x00, 0x00,
        0x44, 0x8b, 0x03, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48,
        0x8b, 0x7b, 0x10, 0x8b, 0x33, 0xd1, 0xe6, 0xb8, 0x00, 0x01, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0xbf, 0x00, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00,
        0x05, 0x00, 0x00, 0xef, 0xf4,
    ];

    /// Between bench phase markers, `count` synchronous `block_io` hypercalls on
    /// consecutive `BlockRequest`s (152 bytes apart), then an optional `bench_result` with an
    /// op log; `exit(0)`, or `exit(3)` if a request failed.
    ///
    /// Parameters at [`PARAMS`]: `+0` count `u32`, `+8` first request `u64`, `+16` case `u64`,
    /// `+24` sample `u64` (0: no result), `+32` op log `u64`, `+40` op log entries `u32`.
    ///
    /// ```text
    /// start:
    ///     lea rbx, [rip + params]
    ///     mov rdi, [rbx + 16]
    ///     mov esi, 1
    ///     hypercall 0xf00
    ///     mov r12d, [rbx + 0]
    ///     mov r13, [rbx + 8]
    /// 1:
    ///     mov rdi, r13
    ///     hypercall 0x201
    ///     test rax, rax
    ///     jnz fail
    ///     add r13, 152
    ///     dec r12d
    ///     jnz 1b
    ///     mov rdi, [rbx + 16]
    ///     mov esi, 2
    ///     mov r8d, [rbx + 0]
    ///     hypercall 0xf00
    ///     mov rdi, [rbx + 24]
    ///     test rdi, rdi
    ///     jz 2f
    ///     mov rsi, [rbx + 32]
    ///     mov r8d, [rbx + 40]
    ///     hypercall 0xf01
    /// 2:
    ///     exit 0
    /// fail:
    ///     exit 3
    /// ```
    pub const BLOCK_IO: &[u8] = &[
        0x48, 0x8d, 0x1d, 0xf9, 0x0f, 0x00, 0x00, 0x48, 0x8b, 0x7b, 0x10, 0xbe, 0x01, 0x00, 0x00,
        0x00, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x44, 0x8b, 0x23,
        0x4c, 0x8b, 0x6b, 0x08, 0x4c, 0x89, 0xef, 0xb8, 0x01, 0x02, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75, 0x50, 0x49, 0x81, 0xc5, 0x98, 0x00, 0x00, 0x00,
        0x41, 0xff, 0xcc, 0x75, 0xe1, 0x48, 0x8b, 0x7b, 0x10, 0xbe, 0x02, 0x00, 0x00, 0x00, 0x44,
        0x8b, 0x03, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x8b,
        0x7b, 0x18, 0x48, 0x85, 0xff, 0x74, 0x13, 0x48, 0x8b, 0x73, 0x20, 0x44, 0x8b, 0x43, 0x28,
        0xb8, 0x01, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xbf, 0x00, 0x00, 0x00,
        0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0xbf, 0x03,
        0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4,
    ];

    /// Registers a ring (queue id, transport) whose header and request slots the test
    /// prepared (indices 0), then between bench phase markers publishes `batches` batches of
    /// `k` requests, each time following the ABI's rule (full fence, then a 32-bit doorbell write of
    /// the queue id to `port` only if `need_notify(new, old, req_event)` and not `HOST_POLLING`) and spinning
    /// on `rsp_prod` until the batch is answered; then an optional `bench_result`; `exit(0)`,
    /// or `exit(4)` if the registration failed.
    ///
    /// Parameters at [`PARAMS`]: `+0` region id `u32` (the queue id), `+4` transport `u32`,
    /// `+8` ring `u64`, `+16` ring length `u64`, `+24` k `u32`, `+28` batches `u32`, `+32`
    /// case `u64`, `+40` doorbell port `u32`, `+44` doorbell value `u32` (the queue id), `+48`
    /// sample `u64` (0: none), `+56` op log `u64`, `+64` op log entries `u32`.
    ///
    /// ```text
    /// start:
    ///     lea rbx, [rip + params]
    ///     mov edi, [rbx + 0]
    ///     mov rsi, [rbx + 8]
    ///     mov r8, [rbx + 16]
    ///     mov r9d, [rbx + 4]
    ///     hypercall 5
    ///     test rax, rax
    ///     jnz fail
    ///     mov rdi, [rbx + 32]
    ///     mov esi, 1
    ///     hypercall 0xf00
    ///     mov r14, [rbx + 8]           # ring
    ///     xor r12d, r12d               # req_prod
    ///     mov r13d, [rbx + 28]         # batches left
    /// batch:
    ///     add r12d, [rbx + 24]
    ///     mov [r14], r12d              # publish req_prod (x86 stores are release)
    ///     lock or dword ptr [rsp], 0   # full fence
    ///     mov ecx, [r14 + 20]          # host_flags
    ///     test ecx, 1                  # HOST_POLLING: never ring
    ///     jnz wait
    ///     mov eax, [r14 + 4]           # req_event
    ///     mov ecx, r12d
    ///     sub ecx, eax                 # new - event
    ///     cmp ecx, [rbx + 24]          # < new - old ?
    ///     jae wait
    ///     mov edx, [rbx + 40]
    ///     mov eax, [rbx + 44]          # the queue id
    ///     out dx, eax                  # the doorbell
    /// wait:
    ///     mov eax, [r14 + 8]           # rsp_prod
    ///     cmp eax, r12d
    ///     je done_batch
    ///     pause
    ///     jmp wait
    /// done_batch:
    ///     dec r13d
    ///     jnz batch
    ///     mov rdi, [rbx + 32]
    ///     mov esi, 2
    ///     mov r8d, [rbx + 24]
    ///     imul r8d, [rbx + 28]
    ///     hypercall 0xf00
    ///     mov rdi, [rbx + 48]
    ///     test rdi, rdi
    ///     jz 2f
    ///     mov rsi, [rbx + 56]
    ///     mov r8d, [rbx + 64]
    ///     hypercall 0xf01
    /// 2:
    ///     exit 0
    /// fail:
    ///     exit 4
    /// ```
    pub const RING_BATCHES: &[u8] = &[
        0x48, 0x8d, 0x1d, 0xf9, 0x0f, 0x00, 0x00, 0x8b, 0x3b, 0x48, 0x8b, 0x73, 0x08, 0x4c, 0x8b,
        0x43, 0x10, 0x44, 0x8b, 0x4b, 0x04, 0xb8, 0x05, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00,
        0x00, 0xef, 0x48, 0x85, 0xc0, 0x0f, 0x85, 0xa8, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x7b, 0x20,
        0xbe, 0x01, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00,
        0xef, 0x4c, 0x8b, 0x73, 0x08, 0x45, 0x31, 0xe4, 0x44, 0x8b, 0x6b, 0x1c, 0x44, 0x03, 0x63,
        0x18, 0x45, 0x89, 0x26, 0xf0, 0x83, 0x0c, 0x24, 0x00, 0x41, 0x8b, 0x4e, 0x14, 0xf7, 0xc1,
        0x01, 0x00, 0x00, 0x00, 0x75, 0x15, 0x41, 0x8b, 0x46, 0x04, 0x44, 0x89, 0xe1, 0x29, 0xc1,
        0x3b, 0x4b, 0x18, 0x73, 0x07, 0x8b, 0x53, 0x28, 0x8b, 0x43, 0x2c, 0xef, 0x41, 0x8b, 0x46,
        0x08, 0x44, 0x39, 0xe0, 0x74, 0x04, 0xf3, 0x90, 0xeb, 0xf3, 0x41, 0xff, 0xcd, 0x75, 0xc1,
        0x48, 0x8b, 0x7b, 0x20, 0xbe, 0x02, 0x00, 0x00, 0x00, 0x44, 0x8b, 0x43, 0x18, 0x44, 0x0f,
        0xaf, 0x43, 0x1c, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48,
        0x8b, 0x7b, 0x30, 0x48, 0x85, 0xff, 0x74, 0x13, 0x48, 0x8b, 0x73, 0x38, 0x44, 0x8b, 0x43,
        0x40, 0xb8, 0x01, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xbf, 0x00, 0x00,
        0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0xbf,
        0x04, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef,
        0xf4,
    ];

    /// Registers the PV clock page at A, reads the TSC, registers it again at B,
    /// reads the TSC, then console-writes 80 bytes: TSC 1, A's `PvClock`, TSC 2, B's
    /// `PvClock`; `exit(0)`, or `exit(5)` if a registration failed.
    ///
    /// Parameters at [`PARAMS`]: `+0` page A `u64`, `+8` page B `u64`, `+16` buffer `u64`.
    ///
    /// ```text
    /// start:
    ///     lea rbx, [rip + params]
    ///     mov r12, [rbx + 16]
    ///     mov edi, 0x48000             # the clock page (CPU class, page 0)
    ///     mov rsi, [rbx + 0]
    ///     mov r8d, 4096
    ///     xor r9d, r9d
    ///     hypercall 5
    ///     test rax, rax
    ///     jnz fail
    ///     rdtsc
    ///     shl rdx, 32
    ///     or rax, rdx
    ///     mov [r12], rax
    ///     mov edi, 0x48000
    ///     mov rsi, [rbx + 8]
    ///     mov r8d, 4096
    ///     hypercall 5
    ///     test rax, rax
    ///     jnz fail
    ///     rdtsc
    ///     shl rdx, 32
    ///     or rax, rdx
    ///     mov [r12 + 40], rax
    ///     mov rsi, [rbx + 0]
    ///     lea rdi, [r12 + 8]
    ///     mov ecx, 4
    ///     rep movsq
    ///     mov rsi, [rbx + 8]
    ///     lea rdi, [r12 + 48]
    ///     mov ecx, 4
    ///     rep movsq
    ///     mov rdi, r12
    ///     mov esi, 80
    ///     hypercall 0x100
    ///     exit 0
    /// fail:
    ///     exit 5
    /// ```
    pub const PV_CLOCK: &[u8] = &[
        0x48, 0x8d, 0x1d, 0xf9, 0x0f, 0x00, 0x00, 0x4c, 0x8b, 0x63, 0x10, 0xbf, 0x00, 0x80, 0x04,
        0x00, 0x48, 0x8b, 0x33, 0x41, 0xb8, 0x00, 0x10, 0x00, 0x00, 0x45, 0x31, 0xc9, 0xb8, 0x05,
        0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75, 0x7f, 0x0f,
        0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x49, 0x89, 0x04, 0x24, 0xbf, 0x00, 0x80,
        0x04, 0x00, 0x48, 0x8b, 0x73, 0x08, 0x41, 0xb8, 0x00, 0x10, 0x00, 0x00, 0xb8, 0x05, 0x00,
        0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75, 0x53, 0x0f, 0x31,
        0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x49, 0x89, 0x44, 0x24, 0x28, 0x48, 0x8b, 0x33,
        0x49, 0x8d, 0x7c, 0x24, 0x08, 0xb9, 0x04, 0x00, 0x00, 0x00, 0xf3, 0x48, 0xa5, 0x48, 0x8b,
        0x73, 0x08, 0x49, 0x8d, 0x7c, 0x24, 0x30, 0xb9, 0x04, 0x00, 0x00, 0x00, 0xf3, 0x48, 0xa5,
        0x4c, 0x89, 0xe7, 0xbe, 0x50, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x01, 0x00, 0x00, 0xba, 0x00,
        0x05, 0x00, 0x00, 0xef, 0xbf, 0x00, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba,
        0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0xbf, 0x05, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00,
        0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4,
    ];

    /// Enables KVM's kvmclock on a page (`wrmsr` of `MSR_KVM_SYSTEM_TIME_NEW` =
    /// page | 1, handled in the kernel: no exit to the VMM), then console-writes the 32-byte
    /// record KVM wrote there and `exit(0)`.
    ///
    /// Parameters at [`PARAMS`]: `+0` page `u64` (4 KiB aligned).
    ///
    /// ```text
    /// start:
    ///     lea rbx, [rip + params]
    ///     mov rax, [rbx + 0]
    ///     or rax, 1
    ///     mov rdx, rax
    ///     shr rdx, 32
    ///     mov ecx, 0x4b564d01
    ///     wrmsr
    ///     mov rdi, [rbx + 0]
    ///     mov esi, 32
    ///     hypercall 0x100
    ///     exit 0
    /// ```
    pub const KVMCLOCK: &[u8] = &[
        0x48, 0x8d, 0x1d, 0xf9, 0x0f, 0x00, 0x00, 0x48, 0x8b, 0x03, 0x48, 0x83, 0xc8, 0x01, 0x48,
        0x89, 0xc2, 0x48, 0xc1, 0xea, 0x20, 0xb9, 0x01, 0x4d, 0x56, 0x4b, 0x0f, 0x30, 0x48, 0x8b,
        0x3b, 0xbe, 0x20, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x01, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00,
        0x00, 0xef, 0xbf, 0x00, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0xf4,
    ];
    /// Sweeps every port between overlapping benchmark phases: `rounds` times, begins the
    /// 16 cases `Console | variant v << 16 | workload w << 32` (v, w in 1..=4), reads all
    /// 65,536 ports (`in al, dx`), then ends the 16 cases. Counts the answers in its
    /// parameter block and console-writes the five counters (40 bytes, little-endian
    /// `u64`s): begins `OK`, begins `ENOMEM`, ends `OK`, ends `E2BIG`, ends `EINVAL`; then
    /// `exit(0)`, or `exit(9)` on any other status.
    ///
    /// Parameters at [`PARAMS`]: `+0` rounds `u32`; the counters at `+8..+48` (zeroed).
    ///
    /// ```text
    /// start:
    ///     lea rbx, [rip + start + 0x1000]
    ///     mov r12d, [rbx]
    /// round:
    ///     xor r13d, r13d
    /// begin_loop:
    ///     call case_id
    ///     mov esi, 1
    ///     mov eax, 0xf00
    ///     mov edx, 0x500
    ///     out dx, eax
    ///     test rax, rax
    ///     jnz 1f
    ///     inc qword ptr [rbx + 8]
    ///     jmp 2f
    /// 1:  cmp rax, -12
    ///     jne other
    ///     inc qword ptr [rbx + 16]
    /// 2:  inc r13d
    ///     cmp r13d, 16
    ///     jne begin_loop
    ///     xor edx, edx
    /// 3:  in al, dx
    ///     inc edx
    ///     cmp edx, 0x10000
    ///     jne 3b
    ///     xor r13d, r13d
    /// end_loop:
    ///     call case_id
    ///     mov esi, 2
    ///     xor r8d, r8d
    ///     mov eax, 0xf00
    ///     mov edx, 0x500
    ///     out dx, eax
    ///     test rax, rax
    ///     jnz 4f
    ///     inc qword ptr [rbx + 24]
    ///     jmp 5f
    /// 4:  cmp rax, -7
    ///     jne 6f
    ///     inc qword ptr [rbx + 32]
    ///     jmp 5f
    /// 6:  cmp rax, -22
    ///     jne other
    ///     inc qword ptr [rbx + 40]
    /// 5:  inc r13d
    ///     cmp r13d, 16
    ///     jne end_loop
    ///     dec r12d
    ///     jnz round
    ///     lea rdi, [rbx + 8]
    ///     mov esi, 40
    ///     mov eax, 0x100
    ///     mov edx, 0x500
    ///     out dx, eax
    ///     xor edi, edi
    ///     jmp done
    /// other:
    ///     mov edi, 9
    /// done:
    ///     mov eax, 3
    ///     mov edx, 0x500
    ///     out dx, eax
    ///     hlt
    /// case_id:
    ///     mov eax, r13d
    ///     and eax, 3
    ///     inc eax
    ///     shl rax, 16
    ///     mov ecx, r13d
    ///     shr ecx, 2
    ///     inc ecx
    ///     shl rcx, 32
    ///     or rax, rcx
    ///     or rax, 1
    ///     mov rdi, rax
    ///     ret
    /// ```
    pub const PHASE_PORT_SWEEP: &[u8] = &[
        0x48, 0x8d, 0x1d, 0xf9, 0x0f, 0x00, 0x00, 0x44, 0x8b, 0x23, 0x45, 0x31, 0xed, 0xe8, 0xb6,
        0x00, 0x00, 0x00, 0xbe, 0x01, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00,
        0x05, 0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75, 0x06, 0x48, 0xff, 0x43, 0x08, 0xeb, 0x0e,
        0x48, 0x83, 0xf8, 0xf4, 0x0f, 0x85, 0x80, 0x00, 0x00, 0x00, 0x48, 0xff, 0x43, 0x10, 0x41,
        0xff, 0xc5, 0x41, 0x83, 0xfd, 0x10, 0x75, 0xc9, 0x31, 0xd2, 0xec, 0xff, 0xc2, 0x81, 0xfa,
        0x00, 0x00, 0x01, 0x00, 0x75, 0xf5, 0x45, 0x31, 0xed, 0xe8, 0x6f, 0x00, 0x00, 0x00, 0xbe,
        0x02, 0x00, 0x00, 0x00, 0x45, 0x31, 0xc0, 0xb8, 0x00, 0x0f, 0x00, 0x00, 0xba, 0x00, 0x05,
        0x00, 0x00, 0xef, 0x48, 0x85, 0xc0, 0x75, 0x06, 0x48, 0xff, 0x43, 0x18, 0xeb, 0x16, 0x48,
        0x83, 0xf8, 0xf9, 0x75, 0x06, 0x48, 0xff, 0x43, 0x20, 0xeb, 0x0a, 0x48, 0x83, 0xf8, 0xea,
        0x75, 0x2e, 0x48, 0xff, 0x43, 0x28, 0x41, 0xff, 0xc5, 0x41, 0x83, 0xfd, 0x10, 0x75, 0xbe,
        0x41, 0xff, 0xcc, 0x0f, 0x85, 0x6b, 0xff, 0xff, 0xff, 0x48, 0x8d, 0x7b, 0x08, 0xbe, 0x28,
        0x00, 0x00, 0x00, 0xb8, 0x00, 0x01, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0x31,
        0xff, 0xeb, 0x05, 0xbf, 0x09, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xba, 0x00,
        0x05, 0x00, 0x00, 0xef, 0xf4, 0x44, 0x89, 0xe8, 0x83, 0xe0, 0x03, 0xff, 0xc0, 0x48, 0xc1,
        0xe0, 0x10, 0x44, 0x89, 0xe9, 0xc1, 0xe9, 0x02, 0xff, 0xc1, 0x48, 0xc1, 0xe1, 0x20, 0x48,
        0x09, 0xc8, 0x48, 0x83, 0xc8, 0x01, 0x48, 0x89, 0xc7, 0xc3,
    ];

    /// A string `rep outsd` of one dword to the hypercall port: `EAX` = 1 (`abi_version`),
    /// the dword in memory 3 (`exit`), `RDI` = 9. If the port took the dword as a call the
    /// guest would exit with 9; refused, `RAX` is still 1 and the guest does `exit(0)`
    /// (`exit(3)` if `RAX` changed).
    ///
    /// ```text
    /// start:
    ///     mov edi, 9
    ///     lea rsi, [rip + value]
    ///     mov eax, 1
    ///     mov edx, 0x500
    ///     mov ecx, 1
    ///     rep outsd
    ///     cmp rax, 1
    ///     jne bad
    ///     xor edi, edi
    ///     jmp done
    /// bad:
    ///     mov edi, 3
    /// done:
    ///     mov eax, 3
    ///     mov edx, 0x500
    ///     out dx, eax
    ///     hlt
    /// value:
    /// ```
    pub const OUTSD_HYPERCALL: &[u8] = &[
        0xbf, 0x09, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x35, 0x2c, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00,
        0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xb9, 0x01, 0x00, 0x00, 0x00, 0xf3, 0x6f, 0x48,
        0x83, 0xf8, 0x01, 0x75, 0x04, 0x31, 0xff, 0xeb, 0x05, 0xbf, 0x03, 0x00, 0x00, 0x00, 0xb8,
        0x03, 0x00, 0x00, 0x00, 0xba, 0x00, 0x05, 0x00, 0x00, 0xef, 0xf4, 0x03, 0x00, 0x00, 0x00,
    ];

    /// `jmp $`: spins forever.
    pub const SPIN: &[u8] = &[0xeb, 0xfe];

    /// `ud2` with no IDT: #UD → #GP → double fault → triple fault.
    pub const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];

    /// `hlt` with interrupts off.
    pub const HLT: &[u8] = &[0xf4];
}
