//! The TAP backend against the real Linux network stack. Each test creates its own network
//! namespace (`pvkit-test-<pid>-<n>`) with the TAP device's host side at 10.200.<n>.1/24;
//! the test plays the guest at 10.200.<n>.2 with the loopback [`Responder`], so traffic
//! stays inside namespaces the test created.
//!
//! They need root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and /dev/net/tun. Without them they
//! skip with a note, except under `CI=true`, where they fail.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pvkit_net::loopback::{Responder, ResponderConfig};
use pvkit_net::netns::{NetNs, NetNsError, NETNS_RUN_DIR};
use pvkit_net::ping::Pinger;
use pvkit_net::tap::{TapBackend, TapConfig, TapError};
use pvkit_net::{DropReason, NetBackend, TxOutcome, MAX_FRAME_LEN};

const HOST_MAC: [u8; 6] = [0x02, 0x70, 0x76, 0, 0, 0x01];
const GUEST_MAC: [u8; 6] = [0x02, 0x70, 0x76, 0, 0, 0x02];
const ECHO_PORT: u16 = 7;
/// Generous: each exchange takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(1);

struct Net {
    tap: TapBackend,
    name: String,
    host_ip: Ipv4Addr,
    guest_ip: Ipv4Addr,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A namespace and TAP device for one test, or `None` (skip) when the machine cannot run
/// it outside CI.
fn setup() -> Option<Net> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("pvkit-test-{}-{n}", std::process::id());
    let host_ip = Ipv4Addr::new(10, 200, n as u8, 1);
    let guest_ip = Ipv4Addr::new(10, 200, n as u8, 2);
    let mut cfg = TapConfig::new(host_ip, 24);
    cfg.host_mac = Some(HOST_MAC);
    let r = NetNs::create(&name)
        .map_err(TapError::from)
        .and_then(|ns| TapBackend::open(ns, &cfg));
    match r {
        Ok(tap) => Some(Net {
            tap,
            name,
            host_ip,
            guest_ip,
        }),
        Err(
            e @ (TapError::TunMissing
            | TapError::PermissionDenied { .. }
            | TapError::Netns(NetNsError::PermissionDenied { .. })),
        ) => {
            assert!(!in_ci(), "CI=true: the TAP tests must run here, but: {e}");
            eprintln!("note: skipping a TAP test: {e}");
            None
        }
        Err(e) => panic!("TAP setup failed: {e}"),
    }
}

fn poll_readable(fd: i32, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one live pollfd; the result only paces the loop.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Plays the guest: every frame from the TAP device is recorded and answered by the
/// responder, until `done` is set or the deadline passes. Returns the frames seen.
fn pump(net: &mut Net, done: &AtomicBool) -> Vec<Vec<u8>> {
    let responder = Responder::new(ResponderConfig {
        mac: GUEST_MAC,
        ip: net.guest_ip,
        udp_echo_port: ECHO_PORT,
    })
    .unwrap();
    let fd = net.tap.raw_fd().expect("a TAP backend has an fd");
    let mut seen = Vec::new();
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut out = [0u8; MAX_FRAME_LEN];
    let start = Instant::now();
    while !done.load(Ordering::Acquire) && start.elapsed() < DEADLINE {
        poll_readable(fd, 20);
        while let Some(n) = net.tap.recv(&mut buf).unwrap() {
            seen.push(buf[..n].to_vec());
            if let Ok(reply) = responder.respond(&buf[..n], &mut out) {
                assert_eq!(net.tap.send(&out[..reply.len()]), TxOutcome::Sent);
            }
        }
    }
    seen
}

fn is_arp_request_for(f: &[u8], ip: Ipv4Addr) -> bool {
    f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 1] && f[38..42] == ip.octets()
}

fn is_ipv4_to(f: &[u8], proto: u8, ip: Ipv4Addr) -> bool {
    f.len() >= 34 && f[12..14] == [8, 0] && f[14 + 9] == proto && f[30..34] == ip.octets()
}

#[test]
fn udp_datagram_from_the_host_stack_is_echoed_back_through_tap() {
    let Some(mut net) = setup() else { return };
    // A second handle on the namespace, by name, as `--netns NAME` would open it.
    let ns = NetNs::open(&net.name).unwrap();
    let (host_ip, guest_ip) = (net.host_ip, net.guest_ip);
    let done = AtomicBool::new(false);
    let (seen, got) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let r = ns.run_in(|| {
                let sock = UdpSocket::bind(SocketAddrV4::new(host_ip, 0)).unwrap();
                sock.set_read_timeout(Some(DEADLINE)).unwrap();
                sock.send_to(
                    b"hello from the host stack",
                    SocketAddrV4::new(guest_ip, ECHO_PORT),
                )
                .unwrap();
                let mut b = [0u8; 2048];
                let r = sock
                    .recv_from(&mut b)
                    .map(|(n, from)| (b[..n].to_vec(), from));
                done.store(true, Ordering::Release);
                r
            });
            done.store(true, Ordering::Release);
            r
        });
        let seen = pump(&mut net, &done);
        (seen, client.join().unwrap())
    });
    let (data, from) = got.unwrap().expect("the echo arrives at the host's socket");
    assert_eq!(data, b"hello from the host stack");
    assert_eq!(
        from,
        std::net::SocketAddr::V4(SocketAddrV4::new(guest_ip, ECHO_PORT))
    );
    // The host stack resolved the guest by ARP, then sent the datagram, both through TAP.
    let arp = seen
        .iter()
        .position(|f| is_arp_request_for(f, guest_ip))
        .expect("an ARP request");
    assert_eq!(seen[arp][6..12], HOST_MAC);
    let udp = seen
        .iter()
        .position(|f| is_ipv4_to(f, 17, guest_ip))
        .expect("the UDP datagram");
    assert!(arp < udp);
    let c = net.tap.counters();
    assert_eq!(c.rx_frames, seen.len() as u64);
    assert_eq!(
        c.tx_frames, 2,
        "exactly the ARP reply and the UDP echo went to the host"
    );
    assert_eq!(c.dropped(), 0);
}

#[test]
fn host_pings_the_guest_through_tap_and_gets_the_reply() {
    let Some(mut net) = setup() else { return };
    let ns = NetNs::open(&net.name).unwrap();
    let guest_ip = net.guest_ip;
    let done = AtomicBool::new(false);
    let (seen, got) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let r = ns.run_in(|| -> std::io::Result<Vec<u8>> {
                let p = Pinger::new()?;
                p.ping(guest_ip, 0x7076, 1, b"pvkit ping payload", DEADLINE)?
                    .ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo reply")
                    })
            });
            done.store(true, Ordering::Release);
            r
        });
        let seen = pump(&mut net, &done);
        (seen, client.join().unwrap())
    });
    let payload = got.unwrap().expect("the host gets the guest's echo reply");
    assert_eq!(payload, b"pvkit ping payload");
    assert!(seen.iter().any(|f| is_arp_request_for(f, guest_ip)));
    assert_eq!(
        seen.iter().filter(|f| is_ipv4_to(f, 1, guest_ip)).count(),
        1,
        "one echo request"
    );
    assert_eq!(net.tap.counters().tx_frames, 2, "ARP reply and echo reply");
}

/// `SIOCSIFMTU` on the TAP interface, from inside its namespace.
fn set_mtu(ns: &NetNs, ifname: &str, mtu: i32) {
    let name = ifname.to_owned();
    ns.run_in(move || {
        #[repr(C, align(8))]
        struct IfReq {
            name: [u8; 16],
            mtu: i32,
            pad: [u8; 20],
        }
        let mut r = IfReq {
            name: [0; 16],
            mtu,
            pad: [0; 20],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: socket(2) with constant arguments; checked.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(s >= 0);
        // SAFETY: SIOCSIFMTU reads one struct ifreq; `r` has its size and alignment.
        let rc = unsafe { libc::ioctl(s, libc::SIOCSIFMTU as _, &mut r as *mut IfReq) };
        let err = std::io::Error::last_os_error();
        // SAFETY: closes the socket opened above, once.
        unsafe { libc::close(s) };
        assert_eq!(rc, 0, "SIOCSIFMTU: {err}");
    })
    .unwrap();
}

#[test]
fn oversize_frames_are_dropped_and_counted_in_both_directions() {
    let Some(mut net) = setup() else { return };
    // Guest → host: refused before the device sees it.
    let big = vec![0u8; MAX_FRAME_LEN + 1];
    assert_eq!(net.tap.send(&big), TxOutcome::Dropped(DropReason::Oversize));
    assert_eq!(
        net.tap.send(&[0u8; 10]),
        TxOutcome::Dropped(DropReason::Undersize)
    );

    // Host → guest: the host side raises its MTU and sends a 4000-byte datagram (with a
    // static ARP entry, so the only frame is the big one). The backend drops it, counts it,
    // and delivers the small datagram sent after it.
    let ns = NetNs::open(&net.name).unwrap();
    set_mtu(&ns, net.tap.ifname(), 9000);
    let (host_ip, guest_ip) = (net.host_ip, net.guest_ip);
    let ifname = net.tap.ifname().to_owned();
    ns.run_in(move || {
        // SIOCSARP: a permanent neighbour entry for the guest.
        // SAFETY: `arpreq` is plain C data (addresses, flags, a name) for which all zero
        // bytes is a valid value.
        let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
        let pa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(guest_ip.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in the sockaddr field (16 bytes both).
        unsafe { std::ptr::write((&mut req.arp_pa as *mut libc::sockaddr).cast(), pa) };
        req.arp_ha.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.arp_ha.sa_data.iter_mut().zip(GUEST_MAC) {
            *d = s as libc::c_char;
        }
        req.arp_flags = libc::ATF_PERM | libc::ATF_COM;
        for (d, s) in req.arp_dev.iter_mut().zip(ifname.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: socket(2) with constant arguments; checked.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(s >= 0);
        // SAFETY: SIOCSARP reads one struct arpreq, which `req` is.
        let rc = unsafe { libc::ioctl(s, libc::SIOCSARP as _, &mut req as *mut libc::arpreq) };
        let err = std::io::Error::last_os_error();
        // SAFETY: closes the socket opened above, once.
        unsafe { libc::close(s) };
        assert_eq!(rc, 0, "SIOCSARP: {err}");
        let sock = UdpSocket::bind(SocketAddrV4::new(host_ip, 0)).unwrap();
        let to = SocketAddrV4::new(guest_ip, ECHO_PORT);
        sock.send_to(&[0xab; 4000], to).unwrap();
        sock.send_to(b"small", to).unwrap();
    })
    .unwrap();

    let fd = net.tap.raw_fd().unwrap();
    let mut buf = [0u8; MAX_FRAME_LEN];
    let start = Instant::now();
    let mut udp = Vec::new();
    while udp.is_empty() && start.elapsed() < DEADLINE {
        poll_readable(fd, 20);
        while let Some(n) = net.tap.recv(&mut buf).unwrap() {
            if is_ipv4_to(&buf[..n], 17, guest_ip) {
                udp.push(buf[..n].to_vec());
            }
        }
    }
    assert_eq!(udp.len(), 1, "only the small datagram is delivered");
    assert_eq!(&udp[0][udp[0].len() - 5..], b"small");
    let c = net.tap.counters();
    assert_eq!(
        (c.dropped_oversize, c.dropped_undersize, c.tx_frames),
        (2, 1, 0)
    );
}

#[test]
fn named_namespace_is_visible_while_alive_and_removed_on_drop() {
    let Some(net) = setup() else { return };
    let path = Path::new(NETNS_RUN_DIR).join(&net.name);
    assert!(path.exists());
    assert_eq!(net.tap.netns().name(), Some(net.name.as_str()));
    assert!(matches!(
        NetNs::create(&net.name),
        Err(NetNsError::AlreadyExists(_))
    ));
    assert!(matches!(
        NetNs::create("../etc"),
        Err(NetNsError::InvalidName(_))
    ));
    assert!(matches!(
        NetNs::open("pvkit-test-does-not-exist"),
        Err(NetNsError::NotFound(_))
    ));
    drop(net);
    assert!(!path.exists(), "{} removed on drop", path.display());
}

/// `capset(2)` header and data (version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[test]
fn missing_privileges_are_reported_as_such() {
    // Drop CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21) from this thread's effective set
    // (capabilities are per thread; the helper threads inherit them), then try.
    let r = std::thread::spawn(|| {
        let mut hdr = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget/capset(2) with a valid version-3 header and two data structs.
        unsafe {
            assert_eq!(
                libc::syscall(
                    libc::SYS_capget,
                    &mut hdr as *mut CapHeader,
                    data.as_mut_ptr()
                ),
                0
            );
            data[0].effective &= !((1 << 12) | (1 << 21));
            assert_eq!(
                libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()),
                0
            );
        }
        let e = NetNs::create(&format!("pvkit-test-{}-noperm", std::process::id())).unwrap_err();
        let msg = e.to_string();
        (matches!(e, NetNsError::PermissionDenied { .. }), msg)
    })
    .join()
    .unwrap();
    assert!(r.0, "expected PermissionDenied, got: {}", r.1);
    assert!(r.1.contains("need root"), "{}", r.1);
}
