//! The ELF note that stamps the ABI version into a guest binary.
//!
//! The VMM reads it at load time and refuses a guest whose major version differs from its
//! own (see [`crate::AbiVersion::host_accepts`]). A guest without the note is refused too.
//!
//! The note lives in section [`SECTION`]; a linker script should give it its own `PT_NOTE`
//! program header (the VMM also finds it through section headers when there is none):
//!
//! ```text
//! PHDRS { text PT_LOAD FLAGS(7); note PT_NOTE FLAGS(4); }
//! SECTIONS { .note.pvkit : { KEEP(*(.note.pvkit)) } :text :note  ... }
//! ```
//!
//! A guest emits it with [`crate::abi_note!`].

use crate::{assert_layout, AbiVersion, ABI_VERSION};

/// The section that holds the note.
pub const SECTION: &str = ".note.pvkit";
/// The note's name field: `"pvkit"` with its NUL terminator.
pub const NAME: [u8; 6] = *b"pvkit\0";
/// The note type of the ABI version note.
pub const TYPE_ABI_VERSION: u32 = 1;

/// The ABI version note exactly as it sits in the ELF file (4-byte aligned).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiNote {
    /// Length of the name including the NUL: 6.
    pub namesz: u32,
    /// Length of the descriptor: 8.
    pub descsz: u32,
    /// [`TYPE_ABI_VERSION`].
    pub note_type: u32,
    /// [`NAME`] padded with zeros to 8 bytes.
    pub name: [u8; 8],
    /// The ABI version the guest was built against.
    pub desc: AbiVersion,
}
assert_layout!(AbiNote, size = 28, namesz @ 0, descsz @ 4, note_type @ 8, name @ 12, desc @ 20);

impl AbiNote {
    /// The note for the ABI version of this crate.
    pub const CURRENT: AbiNote = AbiNote::new(ABI_VERSION);

    /// A note for an arbitrary version (tests use it to build incompatible guests).
    pub const fn new(version: AbiVersion) -> Self {
        AbiNote {
            namesz: NAME.len() as u32,
            descsz: core::mem::size_of::<AbiVersion>() as u32,
            note_type: TYPE_ABI_VERSION,
            name: [b'p', b'v', b'k', b'i', b't', 0, 0, 0],
            desc: version,
        }
    }
}

/// Parses the ABI version out of one note's raw parts. Returns `None` for any note that
/// is not a well-formed pvkit ABI version note.
pub fn parse_abi_note(name: &[u8], note_type: u32, desc: &[u8]) -> Option<AbiVersion> {
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    if name != b"pvkit" || note_type != TYPE_ABI_VERSION || desc.len() != 8 {
        return None;
    }
    let major = u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]);
    let minor = u32::from_le_bytes([desc[4], desc[5], desc[6], desc[7]]);
    Some(AbiVersion { major, minor })
}

/// Emits the ABI version note into the calling guest binary. Use once per guest image.
#[macro_export]
macro_rules! abi_note {
    () => {
        #[used]
        #[link_section = ".note.pvkit"]
        static PVKIT_ABI_NOTE: $crate::note::AbiNote = $crate::note::AbiNote::CURRENT;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_note_parses_back() {
        let n = AbiNote::CURRENT;
        let desc = [n.desc.major.to_le_bytes(), n.desc.minor.to_le_bytes()].concat();
        assert_eq!(
            parse_abi_note(&n.name[..n.namesz as usize], n.note_type, &desc),
            Some(ABI_VERSION)
        );
    }

    #[test]
    fn foreign_notes_are_ignored() {
        assert_eq!(parse_abi_note(b"GNU\0", 1, &[0; 8]), None);
        assert_eq!(parse_abi_note(b"pvkit\0", 2, &[0; 8]), None);
        assert_eq!(parse_abi_note(b"pvkit\0", 1, &[0; 4]), None);
    }
}
