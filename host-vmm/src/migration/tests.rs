//! Source and target over loopback TCP with a real KVM VM (RAM and dirty log, no vCPU)
//! behind a stand-in control handle.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};

use super::auth::MigrationKey;
use super::precopy::PrecopyConfig;
use super::source::{migrate_to, MigrationError, MigrationSource};
use super::target::{receive, TargetError};
use crate::devices::pv::free_page_hint::PvFreePageHint;
use crate::snapshot::{MEMORY_FILE, STATE_FILE};
use crate::vstate::memory::{create_ram, GuestRam};

struct Fake {
    fd: Arc<VmFd>,
    mem: GuestRam,
    pauses: AtomicU32,
    resumes: AtomicU32,
    finished: Mutex<Option<String>>,
    key: Option<Arc<MigrationKey>>,
}

impl MigrationSource for Fake {
    fn vm_fd(&self) -> Option<Arc<VmFd>> {
        Some(Arc::clone(&self.fd))
    }
    fn mem(&self) -> &GuestRam {
        &self.mem
    }
    fn migration_key(&self) -> Option<Arc<MigrationKey>> {
        self.key.clone()
    }
    fn hints(&self) -> Option<Arc<PvFreePageHint>> {
        None
    }
    fn pause(&self) -> Result<(), String> {
        self.pauses.fetch_add(1, Ordering::SeqCst);
        // A device model writes guest RAM while the VM is paused for the final round:
        // tracked by the host bitmap, so the final round carries it.
        self.mem
            .write_slice(b"written at pause", GuestAddress(0x30_0000))
            .map_err(|e| e.to_string())
    }
    fn resume(&self) -> Result<(), String> {
        self.resumes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn capture_state(&self) -> Result<Vec<u8>, String> {
        Ok(b"the state file".to_vec())
    }
    fn finish(&self, report: &super::source::MigrationReport) {
        *self.finished.lock().unwrap() = Some(report.to.clone());
    }
}

fn fake(mib: u64) -> Fake {
    let kvm = Kvm::new().expect("/dev/kvm");
    let mem = create_ram(mib).unwrap();
    let fd = crate::vstate::vm::create_vm(&kvm, &mem).unwrap();
    for (i, gpa) in [0x1000u64, 0x20_0000, 0x7f_f000].iter().enumerate() {
        mem.write_slice(&[i as u8 + 1; 4096], GuestAddress(*gpa))
            .unwrap();
    }
    Fake {
        fd: Arc::new(fd),
        mem,
        pauses: AtomicU32::new(0),
        resumes: AtomicU32::new(0),
        finished: Mutex::new(None),
        key: None,
    }
}

/// A fresh directory under the temp dir, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("pvkit-mig-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ram_bytes(mem: &GuestRam, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

#[test]
fn a_vm_moves_over_loopback_and_the_source_stops() {
    let src = fake(8);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir::new("ok");
    let d = dir.path().to_owned();
    let target = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut inc = receive(conn, 8 << 20, &d, None)?;
        inc.ready()?;
        Ok::<_, TargetError>(inc.received)
    });
    let report = migrate_to(&src, addr, PrecopyConfig::default()).unwrap();
    let got = target.join().unwrap().unwrap();
    assert_eq!(*src.finished.lock().unwrap(), Some(addr.to_string()));
    assert_eq!(
        (
            src.pauses.load(Ordering::SeqCst),
            src.resumes.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
    assert_eq!(got.state, b"the state file");
    assert_eq!(got.bytes, report.bytes);
    assert!(report.ram.rounds.len() >= 2, "{report:?}");
    let file = std::fs::read(dir.path().join(MEMORY_FILE)).unwrap();
    assert_eq!(file, ram_bytes(&src.mem, 8 << 20));
    assert_eq!(&file[0x30_0000..0x30_0010], b"written at pause");
    assert_eq!(
        std::fs::read(dir.path().join(STATE_FILE)).unwrap(),
        b"the state file"
    );
    // Only pages with content were sent with content: 3 written + 1 at pause.
    assert_eq!(report.ram.data_pages(), 4, "{report:?}");
}

#[test]
fn a_refused_migration_resumes_the_source() {
    let src = fake(8);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir::new("refused");
    let d = dir.path().to_owned();
    // The target has 16 MiB: the header is refused.
    let target = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        receive(conn, 16 << 20, &d, None).map(|_| ())
    });
    let err = migrate_to(&src, addr, PrecopyConfig::default()).unwrap_err();
    let terr = target.join().unwrap().unwrap_err();
    assert!(
        matches!(
            terr,
            TargetError::Stream(super::stream::StreamError::RamMismatch { .. })
        ),
        "{terr}"
    );
    // The source learns why (never a reset connection), and its VM runs on.
    assert!(
        matches!(&err, MigrationError::Refused(m) if m.contains("RAM")),
        "{err}"
    );
    assert_eq!(*src.finished.lock().unwrap(), None);
    assert_eq!(
        src.pauses.load(Ordering::SeqCst),
        src.resumes.load(Ordering::SeqCst)
    );
    assert!(!dir.path().join(MEMORY_FILE).exists());
    // Nobody listening: a connect error, the VM untouched.
    let err = migrate_to(&src, addr, PrecopyConfig::default()).unwrap_err();
    assert!(matches!(err, MigrationError::Connect { .. }), "{err}");
}

/// A source still writing a long stream when the target refuses its header: the target
/// drains what it sends (bounded) before closing, so the source's writes all succeed and
/// it reads the refusal, not a reset connection.
#[test]
fn a_refusing_target_drains_so_a_source_still_writing_reads_the_verdict() {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir::new("drain");
    let d = dir.path().to_owned();
    let target = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        receive(conn, 8 << 20, &d, None).map(|_| ())
    });
    let conn = std::net::TcpStream::connect(addr).unwrap();
    let mut c = &conn;
    // The target's hello, then a header for 16 MiB (refused: the target has 8), then far
    // more than the sockets buffer on loopback.
    let mut hello = [0u8; super::auth::HELLO_LEN];
    std::io::Read::read_exact(&mut c, &mut hello).unwrap();
    super::stream::StreamWriter::new(
        &conn,
        super::stream::Header {
            ram_bytes: 16 << 20,
            authenticated: false,
        },
    )
    .unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..32 {
        c.write_all(&chunk)
            .unwrap_or_else(|e| panic!("write {i} MiB into the refusing target: {e}"));
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let verdict = super::target::read_verdict(&mut c).unwrap();
    assert!(
        matches!(&verdict, super::target::Verdict::Refused(m) if m.contains("RAM")),
        "{verdict:?}"
    );
    let terr = target.join().unwrap().unwrap_err();
    assert!(matches!(terr, TargetError::Stream(_)), "{terr}");
}

/// A target that refuses and closes with the source's bytes unread (the kernel resets the
/// connection): the source's write fails, and it still reads the refusal sent before the
/// reset.
#[test]
fn a_source_whose_stream_write_fails_still_reads_the_refusal() {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let target = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut header = [0u8; 16];
        conn.read_exact(&mut header).unwrap();
        let why = b"the source VM has the wrong RAM";
        let mut v = vec![super::target::REFUSED];
        v.extend_from_slice(&(why.len() as u32).to_le_bytes());
        v.extend_from_slice(why);
        conn.write_all(&v).unwrap();
        // Closed with unread data: a reset.
    });
    let conn = std::net::TcpStream::connect(addr).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut c = &conn;
    let failed = (0..256).find_map(|_| c.write_all(&chunk).err());
    target.join().unwrap();
    let e = failed.expect("writing 256 MiB to a closed connection failed");
    let err = super::source::refusal_behind(
        &conn,
        MigrationError::Stream(super::stream::StreamError::Io(e)),
    );
    assert!(
        matches!(&err, MigrationError::Refused(m) if m.contains("wrong RAM")),
        "{err}"
    );
}
/// A source that connects and then sends nothing is dropped after the idle limit, and the
/// target leaves no files behind.
#[test]
fn a_silent_source_is_dropped_after_the_idle_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir::new("silent");
    let d = dir.path().to_owned();
    let target = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let t = std::time::Instant::now();
        let r = super::target::receive_with_idle_limit(
            conn,
            8 << 20,
            &d,
            None,
            std::time::Duration::from_millis(200),
        )
        .map(|_| ());
        (r, t.elapsed())
    });
    let _conn = std::net::TcpStream::connect(addr).unwrap();
    let (r, took) = target.join().unwrap();
    let e = r.unwrap_err();
    assert!(matches!(e, TargetError::Stream(_)), "{e}");
    assert!(e.to_string().contains("sent nothing for"), "{e}");
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    assert!(!dir.path().join(MEMORY_FILE).exists());
}

fn key(b: u8) -> Arc<MigrationKey> {
    Arc::new(MigrationKey::from_parts(vec![b; 32], [b ^ 0xff; 32]))
}

#[test]
fn with_the_same_key_on_both_sides_the_vm_moves() {
    let mut src = fake(8);
    src.key = Some(key(3));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir::new("keyed");
    let d = dir.path().to_owned();
    let target = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut inc = receive(conn, 8 << 20, &d, Some(&key(3)))?;
        inc.ready()?;
        Ok::<_, TargetError>(inc.received)
    });
    let report = migrate_to(&src, addr, PrecopyConfig::default()).unwrap();
    let got = target.join().unwrap().unwrap();
    assert_eq!(got.bytes, report.bytes);
    assert_eq!(*src.finished.lock().unwrap(), Some(addr.to_string()));
    let file = std::fs::read(dir.path().join(MEMORY_FILE)).unwrap();
    assert_eq!(file, ram_bytes(&src.mem, 8 << 20));
}

/// The source with `source_key` migrates to a target with `target_key`: both refuse,
/// the source never paused and runs on, the target wrote nothing.
fn refused(
    source_key: Option<Arc<MigrationKey>>,
    target_key: Option<Arc<MigrationKey>>,
) -> (MigrationError, TargetError) {
    let mut src = fake(8);
    src.key = source_key;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir::new("key-refused");
    let d = dir.path().to_owned();
    let target = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        receive(conn, 8 << 20, &d, target_key.as_deref()).map(|_| ())
    });
    let err = migrate_to(&src, addr, PrecopyConfig::default()).unwrap_err();
    let terr = target.join().unwrap().unwrap_err();
    assert_eq!(*src.finished.lock().unwrap(), None);
    assert_eq!(
        src.pauses.load(Ordering::SeqCst),
        0,
        "refused before tracking"
    );
    assert!(!dir.path().join(MEMORY_FILE).exists());
    (err, terr)
}

#[test]
fn a_wrong_key_or_a_key_on_one_side_only_is_refused_on_both_sides() {
    use super::stream::StreamError as S;
    let (err, terr) = refused(Some(key(1)), Some(key(2)));
    assert!(matches!(terr, TargetError::Stream(S::WrongKey)), "{terr}");
    assert!(
        matches!(&err, MigrationError::Refused(m) if m.contains("wrong migration key")),
        "{err}"
    );
    let (err, terr) = refused(None, Some(key(1)));
    assert!(matches!(terr, TargetError::Stream(S::NoMac)), "{terr}");
    assert!(
        matches!(&err, MigrationError::Handshake { why, .. } if why.contains("requires a migration key")),
        "{err}"
    );
    let (err, terr) = refused(Some(key(1)), None);
    assert!(
        matches!(terr, TargetError::Stream(S::UnexpectedKey)),
        "{terr}"
    );
    assert!(
        matches!(&err, MigrationError::Handshake { why, .. } if why.contains("started without one")),
        "{err}"
    );
}

#[test]
fn a_target_that_cannot_prove_the_key_gets_nothing() {
    use std::io::{Read, Write};
    let mut src = fake(8);
    src.key = Some(key(4));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // An impostor: a keyed hello, then an accept with a made-up proof.
    let impostor = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let hello = super::auth::Hello {
            version: super::stream::VERSION,
            keyed: true,
            nonce: [0x11; 32],
        };
        conn.write_all(&hello.encode()).unwrap();
        let mut answer = [0u8; 32 + 96];
        conn.read_exact(&mut answer).unwrap();
        let mut reply = vec![super::target::ACCEPT];
        reply.extend_from_slice(&32u32.to_le_bytes());
        reply.extend_from_slice(&[0u8; 32]);
        conn.write_all(&reply).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        rest
    });
    let err = migrate_to(&src, addr, PrecopyConfig::default()).unwrap_err();
    assert!(
        matches!(&err, MigrationError::Handshake { why, .. } if why.contains("did not prove")),
        "{err}"
    );
    assert!(impostor.join().unwrap().is_empty(), "no record was sent");
    assert_eq!(src.pauses.load(Ordering::SeqCst), 0);
    assert_eq!(*src.finished.lock().unwrap(), None);
}
