//! The migration stream, version 2: what the source sends the target over TCP.
//!
//! All integers little-endian. The target speaks first: a [`Hello`] (48 bytes: magic,
//! version, whether it requires a key, its challenge nonce). The source sends a [`Header`]
//! (32 bytes; bit 0 of the `u32` at offset 24: authenticated); when authenticated, 96
//! bytes follow: the echoed challenge, the source's nonce and its proof of the key
//! ([`super::auth`]). The target admits the stream or refuses it ([`Gate`]; the reply is
//! [`super::target`]'s), then records follow, each a `u32` tag, and in an authenticated
//! stream each record ends with a 32-byte tag: the running HMAC of all record bytes so
//! far, checked before the record's pages are stored:
//!
//! | tag | record | body |
//! |-----|--------|------|
//! | 1 | pages | `first_page u64, count u32, 0u32`, then `count` × 4096 bytes (1 ≤ count ≤ [`MAX_PAGES_PER_RECORD`]) |
//! | 2 | zero pages | `first_page u64, count u64` (a run of pages that are all zero; count ≥ 1) |
//! | 3 | round end | `round u32, 0u32, pages u64` (rounds count 1, 2, …; at most [`MAX_ROUNDS`]) |
//! | 4 | VM state | `len u64`, then `len` bytes (≤ [`MAX_STATE_LEN`]; exactly once, after the last page) |
//! | 5 | end | (record tag, when authenticated), then `crc32 u32, 0u32`: CRC-32 of every byte before the checksum field |
//!
//! The target treats the stream as hostile input ([`read_stream`]): every size is bounded,
//! every page lies inside the RAM the target created (the header's RAM size must equal
//! it), records come in the order above, and anything else (another magic or version, an
//! unknown tag, a truncated record, a bad checksum) is a [`StreamError`]. Pages go into a
//! [`PageSink`] as they arrive, which on the target is the RAM of a VM that has not run:
//! on any error the target drops that VM, so a refused stream changes nothing.

use std::io::{Read, Write};

use thiserror::Error;

pub use super::auth::Hello;
use super::auth::{source_proof, tags_equal, MigrationKey, RecordMac, TAG_LEN};

/// The stream's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"PVKMIGR\n";
/// The stream version this VMM writes and reads.
pub const VERSION: u32 = 2;
/// Page size of the stream.
pub const PAGE_SIZE: u64 = 4096;
/// Most pages in one pages record (1 MiB): the target's receive buffer.
pub const MAX_PAGES_PER_RECORD: u32 = 256;
/// Largest VM-state blob accepted: a snapshot state file of the largest payload.
pub const MAX_STATE_LEN: u64 =
    crate::snapshot::state::MAX_PAYLOAD + crate::snapshot::state::HEADER_LEN as u64;
/// Most rounds a stream may carry.
pub const MAX_ROUNDS: u32 = 64;
/// Largest RAM a stream may describe (the VMM's own limit, 3 GiB).
pub const MAX_RAM_BYTES: u64 = 3 << 30;

const TAG_PAGES: u32 = 1;
const TAG_ZEROS: u32 = 2;
const TAG_ROUND: u32 = 3;
const TAG_STATE: u32 = 4;
const TAG_END: u32 = 5;

/// Errors reading or writing a stream.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The transport failed.
    #[error("migration stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended inside the header or a record.
    #[error("migration stream truncated (in {0})")]
    Truncated(&'static str),
    /// Not a pvkit migration stream.
    #[error("not a pvkit migration stream (bad magic)")]
    BadMagic,
    /// Another stream version.
    #[error(
        "migration stream version {found} is not supported (this pvkit reads version {VERSION})"
    )]
    Version {
        /// The stream's version.
        found: u32,
    },
    /// The header is malformed (page size, reserved fields, RAM size out of range).
    #[error("bad migration stream header: {0}")]
    BadHeader(&'static str),
    /// The source VM's RAM size differs from the target's.
    #[error("the source VM has {source_bytes} bytes of RAM, this target {target_bytes}")]
    RamMismatch {
        /// RAM in the stream.
        source_bytes: u64,
        /// RAM of the target.
        target_bytes: u64,
    },
    /// A record tag that this version does not have.
    #[error("unknown record tag {0} in migration stream")]
    UnknownTag(u32),
    /// A record's fields are out of bounds or out of order.
    #[error("bad {record} record in migration stream: {why}")]
    BadRecord {
        /// Which record.
        record: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The received pages could not be stored.
    #[error("cannot store received pages: {0}")]
    Sink(#[source] std::io::Error),
    /// The source sent no MAC: an unauthenticated stream to a target with a key.
    #[error(
        "the stream carries no MAC (the source has no migration key) but this target \
         requires one: start the source with --migration-key and the same key file"
    )]
    NoMac,
    /// The source authenticates the stream but this target has no key.
    #[error(
        "the source authenticates the stream with a migration key but this target has \
         none: start the target with --migration-key and the same key file"
    )]
    UnexpectedKey,
    /// The handshake answers another session's challenge: a replayed stream.
    #[error("replayed migration stream: the handshake answers another session's challenge")]
    Replayed,
    /// The handshake MAC is wrong: the source's key is not this target's.
    #[error("wrong migration key: the handshake MAC does not match this target's key")]
    WrongKey,
    /// A record's MAC is wrong: the stream was altered (or cut and spliced) in transit.
    #[error("record {record} of the migration stream has a wrong MAC (altered in transit)")]
    RecordMac {
        /// Which record (1-based).
        record: u64,
    },
    /// The checksum does not match.
    #[error("migration stream checksum mismatch (stream says {stated:#010x}, content is {computed:#010x})")]
    Checksum {
        /// The checksum in the end record.
        stated: u32,
        /// The checksum of what was received.
        computed: u32,
    },
}

fn bad(record: &'static str, why: &'static str) -> StreamError {
    StreamError::BadRecord { record, why }
}

/// The stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// RAM size of the source VM in bytes.
    pub ram_bytes: u64,
    /// The source has a migration key: the handshake answer and record MACs follow.
    pub authenticated: bool,
}

impl Header {
    /// The wire form (32 bytes).
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.ram_bytes.to_le_bytes());
        b[24..28].copy_from_slice(&u32::from(self.authenticated).to_le_bytes());
        b
    }
}

/// Decides, once the header is read and checked, whether the records that follow are
/// authenticated and with which running MAC. `more` reads what follows the header (the
/// handshake answer).
pub trait Gate {
    /// Admits the stream (`Some`: records carry MACs) or refuses it.
    fn admit(
        &mut self,
        header: &Header,
        raw: &[u8; 32],
        more: &mut dyn FnMut(&mut [u8]) -> Result<(), StreamError>,
    ) -> Result<Option<RecordMac>, StreamError>;
}

/// A reader without a key: admits unauthenticated streams only.
#[derive(Clone, Copy, Debug)]
pub struct NoKey;

impl Gate for NoKey {
    fn admit(
        &mut self,
        header: &Header,
        _: &[u8; 32],
        _: &mut dyn FnMut(&mut [u8]) -> Result<(), StreamError>,
    ) -> Result<Option<RecordMac>, StreamError> {
        match header.authenticated {
            true => Err(StreamError::UnexpectedKey),
            false => Ok(None),
        }
    }
}

/// What an admitted authenticated stream's handshake carried.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The running MAC of the records.
    pub mac: RecordMac,
    /// The source's nonce.
    pub source_nonce: [u8; TAG_LEN],
}

/// Checks the source's handshake answer (echoed challenge, source nonce, proof) read by
/// `more` against `key` and the `challenge` this target sent.
pub fn admit_keyed(
    key: &MigrationKey,
    challenge: &[u8; TAG_LEN],
    header: &Header,
    raw: &[u8; 32],
    more: &mut dyn FnMut(&mut [u8]) -> Result<(), StreamError>,
) -> Result<Admitted, StreamError> {
    if !header.authenticated {
        return Err(StreamError::NoMac);
    }
    let mut answer = [0u8; 3 * TAG_LEN];
    more(&mut answer)?;
    let mut parts = answer
        .chunks_exact(TAG_LEN)
        .map(|c| <[u8; TAG_LEN]>::try_from(c).unwrap_or([0; TAG_LEN]));
    let mut part = || parts.next().unwrap_or([0; TAG_LEN]);
    let (echo, ns, proof) = (part(), part(), part());
    if !tags_equal(&echo, challenge) {
        return Err(StreamError::Replayed);
    }
    if !tags_equal(&proof, &source_proof(key, challenge, &ns, raw)) {
        return Err(StreamError::WrongKey);
    }
    Ok(Admitted {
        mac: RecordMac::new(key, challenge, &ns),
        source_nonce: ns,
    })
}

/// A reader with `key` that sent `challenge`: admits authenticated streams only.
#[derive(Debug)]
pub struct Keyed<'a> {
    /// The key.
    pub key: &'a MigrationKey,
    /// The nonce of the hello.
    pub challenge: [u8; TAG_LEN],
}

impl Gate for Keyed<'_> {
    fn admit(
        &mut self,
        header: &Header,
        raw: &[u8; 32],
        more: &mut dyn FnMut(&mut [u8]) -> Result<(), StreamError>,
    ) -> Result<Option<RecordMac>, StreamError> {
        admit_keyed(self.key, &self.challenge, header, raw, more).map(|a| Some(a.mac))
    }
}

/// Writes a stream, counting bytes and keeping the checksum.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    bytes: u64,
    mac: Option<RecordMac>,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream on `out` with its header.
    pub fn new(out: W, header: Header) -> Result<Self, StreamError> {
        let mut w = Self {
            out,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            mac: None,
        };
        w.put(&header.encode())?;
        Ok(w)
    }

    /// The handshake answer after the header of an authenticated stream: the echoed
    /// challenge, the source's nonce and its proof; flushed, as the target replies to it.
    pub fn answer(
        &mut self,
        challenge: &[u8; TAG_LEN],
        nonce: &[u8; TAG_LEN],
        proof: &[u8; TAG_LEN],
    ) -> Result<(), StreamError> {
        self.put(challenge)?;
        self.put(nonce)?;
        self.put(proof)?;
        self.flush()
    }

    /// Flushes the transport (after the header: the target answers before records).
    pub fn flush(&mut self) -> Result<(), StreamError> {
        Ok(self.out.flush()?)
    }

    /// From now on every record ends with its tag under `mac`.
    pub fn authenticate(&mut self, mac: RecordMac) {
        self.mac = Some(mac);
    }

    fn put(&mut self, b: &[u8]) -> Result<(), StreamError> {
        self.out.write_all(b)?;
        self.crc.update(b);
        if let Some(m) = &mut self.mac {
            m.update(b);
        }
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// Ends a record: its tag, when the stream is authenticated.
    fn seal(&mut self) -> Result<(), StreamError> {
        if let Some(t) = self.mac.as_ref().map(RecordMac::tag) {
            self.out.write_all(&t)?;
            self.crc.update(&t);
            self.bytes += t.len() as u64;
        }
        Ok(())
    }

    fn tag(&mut self, tag: u32, a: u64, b: u64) -> Result<(), StreamError> {
        let mut r = [0u8; 20];
        r[..4].copy_from_slice(&tag.to_le_bytes());
        r[4..12].copy_from_slice(&a.to_le_bytes());
        r[12..].copy_from_slice(&b.to_le_bytes());
        self.put(&r)
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pages `first_page..` with their contents (`data.len()` a multiple of 4096, at most
    /// [`MAX_PAGES_PER_RECORD`] pages).
    pub fn pages(&mut self, first_page: u64, data: &[u8]) -> Result<(), StreamError> {
        let count = data.len() as u64 / PAGE_SIZE;
        if count == 0
            || count > u64::from(MAX_PAGES_PER_RECORD)
            || !(data.len() as u64).is_multiple_of(PAGE_SIZE)
        {
            return Err(bad("pages", "writer given a bad page count"));
        }
        self.tag(TAG_PAGES, first_page, count)?;
        self.put(data)?;
        self.seal()
    }

    /// A run of `count` zero pages from `first_page`.
    pub fn zeros(&mut self, first_page: u64, count: u64) -> Result<(), StreamError> {
        self.tag(TAG_ZEROS, first_page, count)?;
        self.seal()
    }

    /// The end of round `round`, which sent `pages` pages.
    pub fn round(&mut self, round: u32, pages: u64) -> Result<(), StreamError> {
        self.tag(TAG_ROUND, u64::from(round), pages)?;
        self.seal()
    }

    /// The VM state blob.
    pub fn state(&mut self, blob: &[u8]) -> Result<(), StreamError> {
        let mut r = [0u8; 12];
        r[..4].copy_from_slice(&TAG_STATE.to_le_bytes());
        r[4..].copy_from_slice(&(blob.len() as u64).to_le_bytes());
        self.put(&r)?;
        self.put(blob)?;
        self.seal()
    }

    /// The end record; flushes and returns the transport and the bytes written.
    pub fn end(mut self) -> Result<(W, u64), StreamError> {
        self.put(&TAG_END.to_le_bytes())?;
        self.seal()?;
        let crc = self.crc.clone().finalize();
        let mut r = [0u8; 8];
        r[..4].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&r)?;
        self.bytes += 8;
        self.out.flush()?;
        Ok((self.out, self.bytes))
    }
}

/// Where received pages go.
pub trait PageSink {
    /// Page `page` (already checked to lie inside RAM) has content `data` (4096 bytes).
    fn page(&mut self, page: u64, data: &[u8]) -> std::io::Result<()>;
    /// Pages `first..first + count` (inside RAM) are zero.
    fn zeros(&mut self, first: u64, count: u64) -> std::io::Result<()>;
}

/// What a complete, valid stream carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The VM state blob.
    pub state: Vec<u8>,
    /// Rounds.
    pub rounds: u32,
    /// Page records' pages (with content).
    pub pages: u64,
    /// Pages sent as zero runs.
    pub zero_pages: u64,
    /// Bytes of the whole stream.
    pub bytes: u64,
}

/// Reads an unauthenticated stream ([`NoKey`]); see [`read_stream_with`].
pub fn read_stream<R: Read, S: PageSink>(
    r: R,
    ram_bytes: u64,
    sink: &mut S,
) -> Result<Received, StreamError> {
    read_stream_with(r, ram_bytes, sink, &mut NoKey)
}

/// Reads a stream from `r` for a target with `ram_bytes` of RAM, handing pages to `sink`;
/// `gate` admits the header (and reads the handshake answer). In an authenticated stream
/// each record's MAC is checked before its pages reach the sink. Nothing but the sink is
/// touched; on an error the caller must discard what the sink got.
pub fn read_stream_with<R: Read, S: PageSink>(
    r: R,
    ram_bytes: u64,
    sink: &mut S,
    gate: &mut dyn Gate,
) -> Result<Received, StreamError> {
    let mut rd = Reader {
        r,
        crc: crc32fast::Hasher::new(),
        bytes: 0,
        mac: None,
        records: 0,
    };
    let mut h = [0u8; 32];
    rd.take(&mut h, "header")?;
    if h[..8] != MAGIC {
        return Err(StreamError::BadMagic);
    }
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
    let quad = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let version = word(&h[8..12]);
    if version != VERSION {
        return Err(StreamError::Version { found: version });
    }
    if u64::from(word(&h[12..16])) != PAGE_SIZE {
        return Err(StreamError::BadHeader("page size is not 4096"));
    }
    let source_bytes = quad(&h[16..24]);
    let flags = word(&h[24..28]);
    if flags > 1 || h[28..].iter().any(|&b| b != 0) {
        return Err(StreamError::BadHeader("reserved bytes are not zero"));
    }
    if source_bytes == 0 || source_bytes > MAX_RAM_BYTES || !source_bytes.is_multiple_of(PAGE_SIZE)
    {
        return Err(StreamError::BadHeader("RAM size out of range"));
    }
    if source_bytes != ram_bytes {
        return Err(StreamError::RamMismatch {
            source_bytes,
            target_bytes: ram_bytes,
        });
    }
    let header = Header {
        ram_bytes,
        authenticated: flags == 1,
    };
    rd.mac = gate.admit(&header, &h, &mut |b| rd.take(b, "handshake answer"))?;
    let ram_pages = ram_bytes / PAGE_SIZE;
    let in_ram = |first: u64, count: u64| first.checked_add(count).is_some_and(|e| e <= ram_pages);
    let mut out = Received::default();
    let mut state: Option<Vec<u8>> = None;
    let mut buf = vec![0u8; (u64::from(MAX_PAGES_PER_RECORD) * PAGE_SIZE) as usize];
    loop {
        let mut t = [0u8; 4];
        rd.take(&mut t, "record tag")?;
        let tag = u32::from_le_bytes(t);
        if state.is_some() && tag != TAG_END {
            return Err(bad("state", "records after the VM state"));
        }
        match tag {
            TAG_PAGES | TAG_ZEROS | TAG_ROUND => {
                let mut f = [0u8; 16];
                rd.take(&mut f, "record")?;
                let (a, b) = (quad(&f[..8]), quad(&f[8..]));
                match tag {
                    TAG_PAGES => {
                        if b == 0 || b > u64::from(MAX_PAGES_PER_RECORD) {
                            return Err(bad("pages", "count out of range"));
                        }
                        if !in_ram(a, b) {
                            return Err(bad("pages", "pages outside RAM"));
                        }
                        let data = buf
                            .get_mut(..(b * PAGE_SIZE) as usize)
                            .ok_or(bad("pages", "count out of range"))?;
                        rd.take(data, "page data")?;
                        rd.seal()?;
                        for (i, page) in data.chunks_exact(PAGE_SIZE as usize).enumerate() {
                            sink.page(a + i as u64, page).map_err(StreamError::Sink)?;
                        }
                        out.pages += b;
                    }
                    TAG_ZEROS => {
                        if b == 0 || !in_ram(a, b) {
                            return Err(bad("zero pages", "run empty or outside RAM"));
                        }
                        rd.seal()?;
                        sink.zeros(a, b).map_err(StreamError::Sink)?;
                        out.zero_pages += b;
                    }
                    _ => {
                        if a != u64::from(out.rounds) + 1 || a > u64::from(MAX_ROUNDS) {
                            return Err(bad("round", "rounds out of order or too many"));
                        }
                        rd.seal()?;
                        out.rounds += 1;
                    }
                }
            }
            TAG_STATE => {
                let mut f = [0u8; 8];
                rd.take(&mut f, "state length")?;
                let len = u64::from_le_bytes(f);
                if len > MAX_STATE_LEN {
                    return Err(bad("state", "larger than a state file may be"));
                }
                let mut blob = vec![0u8; len as usize];
                rd.take(&mut blob, "state")?;
                rd.seal()?;
                state = Some(blob);
            }
            TAG_END => {
                rd.seal()?;
                let computed = rd.crc.clone().finalize();
                let mut f = [0u8; 8];
                rd.r.read_exact(&mut f)
                    .map_err(|e| eof_as(e, "end record"))?;
                let stated = word(&f[..4]);
                if stated != computed {
                    return Err(StreamError::Checksum { stated, computed });
                }
                if f[4..].iter().any(|&b| b != 0) {
                    return Err(bad("end", "reserved bytes are not zero"));
                }
                out.state = state.ok_or(bad("end", "no VM state before the end"))?;
                out.bytes = rd.bytes + 8;
                return Ok(out);
            }
            other => return Err(StreamError::UnknownTag(other)),
        }
    }
}

fn eof_as(e: std::io::Error, what: &'static str) -> StreamError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        StreamError::Truncated(what)
    } else {
        StreamError::Io(e)
    }
}

struct Reader<R> {
    r: R,
    crc: crc32fast::Hasher,
    bytes: u64,
    mac: Option<RecordMac>,
    records: u64,
}

impl<R: Read> Reader<R> {
    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
        self.raw(buf, what)?;
        if let Some(m) = &mut self.mac {
            m.update(buf);
        }
        Ok(())
    }

    fn raw(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
        self.r.read_exact(buf).map_err(|e| eof_as(e, what))?;
        self.crc.update(buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// The end of a record: checks its tag in an authenticated stream.
    fn seal(&mut self) -> Result<(), StreamError> {
        self.records += 1;
        let Some(expected) = self.mac.as_ref().map(RecordMac::tag) else {
            return Ok(());
        };
        let mut t = [0u8; TAG_LEN];
        self.raw(&mut t, "record MAC")?;
        match tags_equal(&t, &expected) {
            true => Ok(()),
            false => Err(StreamError::RecordMac {
                record: self.records,
            }),
        }
    }
}

/// A [`PageSink`] into a byte vector (tests, the fuzz target).
#[derive(Debug)]
pub struct VecSink(pub Vec<u8>);

impl PageSink for VecSink {
    fn page(&mut self, page: u64, data: &[u8]) -> std::io::Result<()> {
        let at = (page * PAGE_SIZE) as usize;
        let dst = self
            .0
            .get_mut(at..at + data.len())
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn zeros(&mut self, first: u64, count: u64) -> std::io::Result<()> {
        let (a, b) = (
            (first * PAGE_SIZE) as usize,
            ((first + count) * PAGE_SIZE) as usize,
        );
        let dst = self
            .0
            .get_mut(a..b)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        dst.fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 * PAGE_SIZE;

    fn sample() -> Vec<u8> {
        let mut w = StreamWriter::new(
            Vec::new(),
            Header {
                ram_bytes: RAM,
                authenticated: false,
            },
        )
        .unwrap();
        let mut data = vec![0xabu8; 2 * PAGE_SIZE as usize];
        data[PAGE_SIZE as usize] = 0xcd;
        w.pages(3, &data).unwrap();
        w.zeros(10, 5).unwrap();
        w.round(1, 7).unwrap();
        w.pages(63, &[0x11; PAGE_SIZE as usize]).unwrap();
        w.round(2, 1).unwrap();
        w.state(b"vcpu and device state").unwrap();
        let (bytes, n) = w.end().unwrap();
        assert_eq!(n, bytes.len() as u64);
        bytes
    }

    fn read(bytes: &[u8]) -> (Result<Received, StreamError>, Vec<u8>) {
        let mut sink = VecSink(vec![0x77; RAM as usize]);
        let r = read_stream(bytes, RAM, &mut sink);
        (r, sink.0)
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let (r, ram) = read(&s);
        let r = r.unwrap();
        assert_eq!(r.state, b"vcpu and device state");
        assert_eq!((r.rounds, r.pages, r.zero_pages), (2, 3, 5));
        assert_eq!(r.bytes, s.len() as u64);
        let p = PAGE_SIZE as usize;
        assert!(ram[3 * p..4 * p].iter().all(|&b| b == 0xab));
        assert_eq!(ram[4 * p], 0xcd);
        assert!(ram[10 * p..15 * p].iter().all(|&b| b == 0));
        assert!(ram[63 * p..].iter().all(|&b| b == 0x11));
        assert!(ram[..3 * p].iter().all(|&b| b == 0x77), "untouched");
    }

    #[test]
    fn every_truncation_is_refused() {
        let s = sample();
        for len in 0..s.len() {
            let (r, _) = read(&s[..len]);
            assert!(
                matches!(r, Err(StreamError::Truncated(_))),
                "len {len}: {r:?}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let s = sample();
        // Every byte of the framing and a sample of the page data.
        for i in (0..s.len()).filter(|i| *i < 80 || i % 97 == 0 || *i > s.len() - 80) {
            let mut c = s.clone();
            c[i] ^= 0x10;
            let (r, _) = read(&c);
            assert!(r.is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn header_and_record_errors_are_named() {
        let s = sample();
        let mut c = s.clone();
        c[0] = b'X';
        assert!(matches!(read(&c).0, Err(StreamError::BadMagic)));
        let mut c = s.clone();
        c[8] = 1;
        assert!(matches!(read(&c).0, Err(StreamError::Version { found: 1 })));
        let mut c = s.clone();
        c[24] = 2;
        assert!(matches!(read(&c).0, Err(StreamError::BadHeader(_))));
        let mut sink = VecSink(vec![0; 2 * RAM as usize]);
        assert!(matches!(
            read_stream(&s[..], 2 * RAM, &mut sink),
            Err(StreamError::RamMismatch { .. })
        ));
        // A page outside RAM, a zero run past the end, a bad round number, an oversized
        // state, a record after the state, a missing state, an unknown tag.
        let hdr = Header {
            ram_bytes: RAM,
            authenticated: false,
        };
        type Case = Box<dyn Fn(&mut StreamWriter<Vec<u8>>)>;
        let cases: Vec<Case> = vec![
            Box::new(|w| w.pages(64, &[0; 4096]).unwrap()),
            Box::new(|w| w.zeros(60, 5).unwrap()),
            Box::new(|w| w.zeros(u64::MAX, 2).unwrap()),
            Box::new(|w| w.zeros(0, 0).unwrap()),
            Box::new(|w| w.round(2, 0).unwrap()),
            Box::new(|w| {
                w.state(b"s").unwrap();
                w.zeros(0, 1).unwrap();
            }),
            Box::new(|w| w.tag(9, 0, 0).unwrap()),
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut w = StreamWriter::new(Vec::new(), hdr).unwrap();
            case(&mut w);
            if i != 5 {
                w.state(b"s").unwrap();
            }
            let (bytes, _) = w.end().unwrap();
            let (r, ram) = read(&bytes);
            assert!(
                matches!(
                    r,
                    Err(StreamError::BadRecord { .. } | StreamError::UnknownTag(9))
                ),
                "case {i}: {r:?}"
            );
            let _ = ram;
        }
        let w = StreamWriter::new(Vec::new(), hdr).unwrap();
        let (bytes, _) = w.end().unwrap();
        assert!(matches!(
            read(&bytes).0,
            Err(StreamError::BadRecord { record: "end", .. })
        ));
        // A state length past the limit is refused before anything is allocated.
        let mut w = StreamWriter::new(Vec::new(), hdr).unwrap();
        w.put(&TAG_STATE.to_le_bytes()).unwrap();
        w.put(&(MAX_STATE_LEN + 1).to_le_bytes()).unwrap();
        let (bytes, _) = w.end().unwrap();
        assert!(matches!(
            read(&bytes).0,
            Err(StreamError::BadRecord {
                record: "state",
                ..
            })
        ));
    }

    const CHALLENGE: [u8; TAG_LEN] = [0xc1; TAG_LEN];

    fn key(b: u8) -> MigrationKey {
        MigrationKey::from_parts(vec![b; 32], [b; 32])
    }

    /// [`sample`]'s records, authenticated with `k` for `challenge`.
    fn keyed_sample(k: &MigrationKey, challenge: &[u8; TAG_LEN]) -> Vec<u8> {
        let header = Header {
            ram_bytes: RAM,
            authenticated: true,
        };
        let mut w = StreamWriter::new(Vec::new(), header).unwrap();
        let ns = k.nonce();
        let proof = source_proof(k, challenge, &ns, &header.encode());
        w.answer(challenge, &ns, &proof).unwrap();
        w.authenticate(RecordMac::new(k, challenge, &ns));
        w.pages(3, &[0xab; 2 * PAGE_SIZE as usize]).unwrap();
        w.zeros(10, 5).unwrap();
        w.round(1, 7).unwrap();
        w.state(b"vcpu and device state").unwrap();
        let (bytes, n) = w.end().unwrap();
        assert_eq!(n, bytes.len() as u64);
        bytes
    }

    fn read_keyed(bytes: &[u8], k: &MigrationKey) -> (Result<Received, StreamError>, Vec<u8>) {
        let mut sink = VecSink(vec![0x77; RAM as usize]);
        let mut gate = Keyed {
            key: k,
            challenge: CHALLENGE,
        };
        let r = read_stream_with(bytes, RAM, &mut sink, &mut gate);
        (r, sink.0)
    }

    const HEADER_AND_ANSWER: usize = 32 + 3 * TAG_LEN;

    #[test]
    fn an_authenticated_stream_round_trips() {
        let k = key(1);
        let s = keyed_sample(&k, &CHALLENGE);
        let (r, ram) = read_keyed(&s, &k);
        let r = r.unwrap();
        assert_eq!((r.rounds, r.pages, r.zero_pages), (1, 2, 5));
        assert_eq!(r.bytes, s.len() as u64);
        assert_eq!(ram[3 * PAGE_SIZE as usize], 0xab);
        // 5 records, each with its tag.
        assert_eq!(s.len(), sample_len_without_tags(&s) + 5 * TAG_LEN);
    }

    fn sample_len_without_tags(s: &[u8]) -> usize {
        let (pages, zeros, round, state, end) = (20 + 2 * 4096, 20, 20, 12 + 21, 4 + 8);
        assert!(s.len() > HEADER_AND_ANSWER);
        HEADER_AND_ANSWER + pages + zeros + round + state + end
    }

    #[test]
    fn a_wrong_key_a_replay_or_a_missing_mac_is_refused_by_name() {
        let k = key(1);
        let s = keyed_sample(&k, &CHALLENGE);
        let untouched = |ram: &[u8]| ram.iter().all(|&b| b == 0x77);
        let (r, ram) = read_keyed(&s, &key(2));
        assert!(matches!(r, Err(StreamError::WrongKey)), "{r:?}");
        assert!(untouched(&ram));
        // Recorded from a session with another challenge, replayed to this one.
        let old = keyed_sample(&k, &[0xd2; TAG_LEN]);
        let (r, ram) = read_keyed(&old, &k);
        assert!(matches!(r, Err(StreamError::Replayed)), "{r:?}");
        assert!(untouched(&ram));
        // The replay with the echo rewritten to this session's challenge: the proof was
        // made for the old one.
        let mut forged = old.clone();
        forged[32..32 + TAG_LEN].copy_from_slice(&CHALLENGE);
        assert!(matches!(
            read_keyed(&forged, &k).0,
            Err(StreamError::WrongKey)
        ));
        // No MAC at all: the unauthenticated stream to a keyed target, and back.
        let (r, ram) = read_keyed(&sample(), &k);
        assert!(matches!(r, Err(StreamError::NoMac)), "{r:?}");
        assert!(untouched(&ram));
        assert!(matches!(read(&s).0, Err(StreamError::UnexpectedKey)));
        for e in [StreamError::NoMac, StreamError::UnexpectedKey] {
            assert!(e.to_string().contains("--migration-key"), "{e}");
        }
    }

    #[test]
    fn a_flipped_bit_in_a_record_is_refused_before_its_pages_are_stored() {
        let k = key(1);
        let s = keyed_sample(&k, &CHALLENGE);
        // A bit of the first record's page data, then of the second record's count.
        let mut c = s.clone();
        c[HEADER_AND_ANSWER + 20 + 100] ^= 1;
        let (r, ram) = read_keyed(&c, &k);
        assert!(
            matches!(r, Err(StreamError::RecordMac { record: 1 })),
            "{r:?}"
        );
        assert!(ram.iter().all(|&b| b == 0x77), "no page stored");
        let second = HEADER_AND_ANSWER + 20 + 2 * 4096 + TAG_LEN;
        let mut c = s.clone();
        c[second + 12] ^= 1;
        let (r, _) = read_keyed(&c, &k);
        assert!(
            matches!(r, Err(StreamError::RecordMac { record: 2 })),
            "{r:?}"
        );
        // Every single bit flip anywhere is refused.
        for i in (0..s.len()).filter(|i| *i < 300 || i % 61 == 0 || *i > s.len() - 200) {
            let mut c = s.clone();
            c[i] ^= 0x04;
            assert!(read_keyed(&c, &k).0.is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn a_truncated_mac_is_refused() {
        let k = key(1);
        let s = keyed_sample(&k, &CHALLENGE);
        let first_tag = HEADER_AND_ANSWER + 20 + 2 * 4096;
        for cut in [first_tag, first_tag + 1, first_tag + TAG_LEN - 1] {
            let (r, ram) = read_keyed(&s[..cut], &k);
            assert!(
                matches!(r, Err(StreamError::Truncated("record MAC"))),
                "cut {cut}: {r:?}"
            );
            assert!(ram.iter().all(|&b| b == 0x77));
        }
        // The end record's tag cut: refused before the checksum is read.
        let end_tag = s.len() - 8 - TAG_LEN;
        let (r, _) = read_keyed(&s[..end_tag + 5], &k);
        assert!(
            matches!(r, Err(StreamError::Truncated("record MAC"))),
            "{r:?}"
        );
        for len in 0..s.len() {
            assert!(read_keyed(&s[..len], &k).0.is_err(), "len {len}");
        }
    }

    proptest::proptest! {
        /// Arbitrary edits of a valid stream (byte writes, a cut) never panic; whatever
        /// is accepted stays inside RAM (the sink checks) and accounts for its bytes.
        #[test]
        fn edited_streams_never_panic(
            edits in proptest::collection::vec((0usize..20_000, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..20_000,
        ) {
            let mut s = sample();
            for (at, b) in edits {
                let n = s.len();
                s[at % n] = b;
            }
            s.truncate(cut.max(1).min(s.len()));
            let (r, _) = read(&s);
            if let Ok(got) = r {
                proptest::prop_assert!(got.bytes as usize <= s.len());
            }
        }
    }
}
