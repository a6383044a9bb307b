//! Authentication of a migration stream with a pre-shared key (`--migration-key FILE` on
//! both sides): the key file ([`MigrationKey::load`]), the challenge-response of the
//! handshake ([`source_proof`], [`target_proof`]) and the running record MAC
//! ([`RecordMac`]). Authenticity and integrity only: the stream is not encrypted.
//!
//! The target opens with a [`Hello`] carrying a fresh nonce `Nt`. The source answers with
//! the stream header, its own nonce `Ns`, an echo of `Nt` and
//! `HMAC(K, "pvkit-migration source" || Nt || Ns || header)`; the target checks it (a
//! stream recorded from another session echoes another `Nt`: refused as replayed), and
//! proves the key back with `HMAC(K, "pvkit-migration target" || Nt || Ns || header)`.
//! Every record then ends with a 32-byte tag: the running
//! `HMAC(Ks, every record byte so far)` under the session key
//! `Ks = HMAC(K, "pvkit-migration session" || Nt || Ns)`, so a changed, dropped,
//! reordered or cut record is refused at the next boundary, before its pages are stored.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: u64 = 32;
/// Longest key file read, in bytes.
pub const MAX_KEY_LEN: u64 = 4096;
/// Length of a nonce, a proof and a record tag.
pub const TAG_LEN: usize = 32;
/// How to make a key file (printed with every key-file error).
pub const MAKE_KEY_HINT: &str =
    "make one with: head -c 32 /dev/urandom > KEYFILE; chmod 600 KEYFILE (copy it to both hosts)";

/// Errors loading a key file.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("migration key {path}: {source}; {MAKE_KEY_HINT}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error(
        "migration key {path} is accessible by group or others (mode {mode:03o}); \
         run chmod 600 {path}"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Too short or too long.
    #[error(
        "migration key {path} has {len} bytes; it must hold {MIN_KEY_LEN} to {MAX_KEY_LEN} \
         bytes of random data; {MAKE_KEY_HINT}"
    )]
    Length {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// No randomness for the nonces.
    #[error("migration key: cannot read random bytes for nonces: {0}")]
    Random(String),
}

/// A pre-shared migration key, read once when the VMM starts (before any thread is
/// confined), with a random seed from which [`MigrationKey::nonce`] derives fresh nonces
/// without a system call.
pub struct MigrationKey {
    key: Vec<u8>,
    seed: [u8; TAG_LEN],
    counter: AtomicU64,
}

impl std::fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MigrationKey(..)")
    }
}

impl MigrationKey {
    /// Reads the key file `path`: refused if group or others may access it, or if it
    /// holds fewer than [`MIN_KEY_LEN`] or more than [`MAX_KEY_LEN`] bytes.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        if !meta.is_file() {
            return Err(read(std::io::Error::other("not a regular file")));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut key = Vec::new();
        file.take(MAX_KEY_LEN + 1)
            .read_to_end(&mut key)
            .map_err(read)?;
        let len = key.len() as u64;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&len) {
            return Err(KeyError::Length {
                path: path.to_owned(),
                len,
            });
        }
        let mut seed = [0u8; TAG_LEN];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_parts(key, seed))
    }

    /// A key from its bytes and a nonce seed (tests, the fuzz target).
    pub fn from_parts(key: Vec<u8>, seed: [u8; TAG_LEN]) -> Self {
        Self {
            key,
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// A fresh nonce: `HMAC(seed, counter)`, never the same twice in this process.
    pub fn nonce(&self) -> [u8; TAG_LEN] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        mac(&self.seed, &[b"pvkit-migration nonce", &n.to_le_bytes()])
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        mac(&self.key, parts)
    }
}

/// An HMAC-SHA256 keyed with `key`, through the infallible fixed-size constructor: the
/// key padded to the 64-byte block, or hashed first when longer (RFC 2104's rule, so the
/// same MAC as `new_from_slice`).
fn keyed(key: &[u8]) -> HmacSha256 {
    let mut block = [0u8; 64];
    let hashed;
    let src = match key.len() > block.len() {
        true => {
            hashed = <Sha256 as sha2::Digest>::digest(key);
            hashed.as_slice()
        }
        false => key,
    };
    for (b, k) in block.iter_mut().zip(src) {
        *b = *k;
    }
    <HmacSha256 as hmac::digest::KeyInit>::new(&block.into())
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let mut m = keyed(key);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two tags.
pub fn tags_equal(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The source's answer to the challenge `nt`: proves the key over both nonces and the
/// header.
pub fn source_proof(
    key: &MigrationKey,
    nt: &[u8; TAG_LEN],
    ns: &[u8; TAG_LEN],
    header: &[u8],
) -> [u8; TAG_LEN] {
    key.mac(&[b"pvkit-migration source", nt, ns, header])
}

/// The target's proof back (the source streams nothing to a target without the key).
pub fn target_proof(
    key: &MigrationKey,
    nt: &[u8; TAG_LEN],
    ns: &[u8; TAG_LEN],
    header: &[u8],
) -> [u8; TAG_LEN] {
    key.mac(&[b"pvkit-migration target", nt, ns, header])
}

/// The running MAC of the records of one session.
#[derive(Clone)]
pub struct RecordMac(HmacSha256);

impl std::fmt::Debug for RecordMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordMac(..)")
    }
}

impl RecordMac {
    /// The MAC of the session with nonces `nt` (target) and `ns` (source).
    pub fn new(key: &MigrationKey, nt: &[u8; TAG_LEN], ns: &[u8; TAG_LEN]) -> Self {
        let ks = key.mac(&[b"pvkit-migration session", nt, ns]);
        Self(keyed(&ks))
    }

    /// Adds record bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    /// The tag of everything so far (the running MAC goes on).
    pub fn tag(&self) -> [u8; TAG_LEN] {
        self.0.clone().finalize().into_bytes().into()
    }
}

/// The target's opening message: 8-byte magic, `u32` stream version, `u32` flags (bit 0:
/// the target requires a key), the target's nonce (zero without a key). 48 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The target's stream version.
    pub version: u32,
    /// The target has a key and requires an authenticated stream.
    pub keyed: bool,
    /// The challenge.
    pub nonce: [u8; TAG_LEN],
}

/// The hello's first 8 bytes.
pub const HELLO_MAGIC: [u8; 8] = *b"PVKHELO\n";
/// Length of an encoded [`Hello`].
pub const HELLO_LEN: usize = 48;

impl Hello {
    /// The wire form.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(&HELLO_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&u32::from(self.keyed).to_le_bytes());
        b[16..].copy_from_slice(&self.nonce);
        b
    }

    /// Parses a hello; `None` if it is not one (bad magic, unknown flags).
    pub fn decode(b: &[u8; HELLO_LEN]) -> Option<Self> {
        if b[..8] != HELLO_MAGIC {
            return None;
        }
        let flags = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if flags > 1 {
            return None;
        }
        let mut nonce = [0u8; TAG_LEN];
        nonce.copy_from_slice(&b[16..]);
        Some(Self {
            version: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            keyed: flags == 1,
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MigrationKey {
        MigrationKey::from_parts(vec![b; 32], [b; 32])
    }

    #[test]
    fn nonces_are_fresh_and_proofs_depend_on_every_input() {
        let k = key(1);
        let (a, b) = (k.nonce(), k.nonce());
        assert_ne!(a, b);
        let h = [7u8; 32];
        let p = source_proof(&k, &a, &b, &h);
        assert_ne!(p, source_proof(&key(2), &a, &b, &h), "another key");
        assert_ne!(p, source_proof(&k, &b, &b, &h), "another challenge");
        assert_ne!(p, source_proof(&k, &a, &a, &h), "another source nonce");
        assert_ne!(p, source_proof(&k, &a, &b, &[8u8; 32]), "another header");
        assert_ne!(
            p,
            target_proof(&k, &a, &b, &h),
            "the target's proof differs"
        );
        assert!(tags_equal(&p, &source_proof(&k, &a, &b, &h)));
        let mut m = RecordMac::new(&k, &a, &b);
        let t0 = m.tag();
        m.update(b"record");
        assert_ne!(t0, m.tag());
        let mut other = RecordMac::new(&k, &b, &a);
        other.update(b"record");
        assert_ne!(
            m.tag(),
            other.tag(),
            "the session key depends on both nonces"
        );
    }

    #[test]
    fn the_fixed_size_key_is_rfc_2104s() {
        for len in [32, 64, 65, 4096] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut a = keyed(&key);
            let mut b = HmacSha256::new_from_slice(&key).unwrap();
            a.update(b"data");
            b.update(b"data");
            assert_eq!(
                a.finalize().into_bytes(),
                b.finalize().into_bytes(),
                "{len}"
            );
        }
    }

    #[test]
    fn hello_round_trips_and_rejects_garbage() {
        let h = Hello {
            version: 2,
            keyed: true,
            nonce: [9; 32],
        };
        assert_eq!(Hello::decode(&h.encode()), Some(h));
        let mut b = h.encode();
        b[0] = b'X';
        assert_eq!(Hello::decode(&b), None);
        let mut b = h.encode();
        b[12] = 2;
        assert_eq!(Hello::decode(&b), None);
    }

    #[test]
    fn key_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("pvkit-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, len: usize, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, vec![0x5a; len]).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let ok = write("ok", 32, 0o600);
        assert!(MigrationKey::load(&ok).is_ok());
        let short = write("short", 31, 0o600);
        let e = MigrationKey::load(&short).unwrap_err();
        assert!(matches!(e, KeyError::Length { len: 31, .. }), "{e}");
        assert!(e.to_string().contains("head -c 32 /dev/urandom"), "{e}");
        let long = write("long", MAX_KEY_LEN as usize + 1, 0o400);
        assert!(matches!(
            MigrationKey::load(&long),
            Err(KeyError::Length { .. })
        ));
        let open = write("open", 32, 0o644);
        let e = MigrationKey::load(&open).unwrap_err();
        assert!(
            matches!(e, KeyError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(matches!(
            MigrationKey::load(&dir.join("missing")),
            Err(KeyError::Read { .. })
        ));
        assert!(matches!(
            MigrationKey::load(&dir),
            Err(KeyError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
