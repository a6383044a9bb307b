//! Source and target over loopback TCP with a real KVM VM (RAM and dirty log, no vCPU)
//! behind a stand-in control handle.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};

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
}

impl MigrationSource for Fake {
    fn vm_fd(&self) -> Option<Arc<VmFd>> {
        Some(Arc::clone(&self.fd))
    }
    fn mem(&self) -> &GuestRam {
        &self.mem
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
        let mut inc = receive(conn, 8 << 20, &d)?;
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
        receive(conn, 16 << 20, &d).map(|_| ())
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
        receive(conn, 8 << 20, &d).map(|_| ())
    });
    let conn = std::net::TcpStream::connect(addr).unwrap();
    // A header for 16 MiB (refused: the target has 8), then far more than the sockets
    // buffer on loopback.
    super::stream::StreamWriter::new(
        &conn,
        super::stream::Header {
            ram_bytes: 16 << 20,
        },
    )
    .unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut c = &conn;
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
