//! The host side of the TAP tests: their network namespace ([`netns`]), and ICMP pings and
//! UDP echoes (run inside it) to the built-in guest's `net=serve` mode at [`GUEST_IP`].

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use pvkit_net::ping::Pinger;
use pvkit_vmm::devices::legacy::ne2000::GUEST_IP;

/// The payload of the tests' pings.
const PING_DATA: &[u8] = b"pvkit tap test ping";

/// Sends one ICMP echo request with `seq` to the guest and waits up to `wait` for its
/// reply. A send that fails (the VMM has not brought the TAP device up yet: ENETUNREACH)
/// is a lost ping.
pub fn ping(p: &Pinger, seq: u16, wait: Duration) -> bool {
    match p.ping(GUEST_IP, 0x7076, seq, PING_DATA, wait) {
        Ok(reply) => reply.as_deref() == Some(PING_DATA),
        Err(_) => {
            std::thread::sleep(wait);
            false
        }
    }
}

/// Pings until the guest answers (it boots meanwhile; ARP included), then 5 pings and 3
/// UDP echoes (payloads tagged with `tag`), then "bye" to port 9999, which ends the guest's
/// serve mode. Returns (ping replies, UDP echoes).
pub fn host_side(tag: u8) -> (u32, u32) {
    let sock = Pinger::new().expect("a raw ICMP socket");
    let start = Instant::now();
    let mut seq = 0u16;
    loop {
        seq += 1;
        if ping(&sock, seq, Duration::from_millis(500)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the guest never answered a ping"
        );
    }
    let mut replies = 0;
    for _ in 0..5 {
        seq += 1;
        replies += u32::from(ping(&sock, seq, Duration::from_secs(10)));
    }
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let guest = SocketAddrV4::new(GUEST_IP, 7);
    let mut echoes = 0;
    for i in 0..3u8 {
        let msg = [b'p', b'v', tag, i, 0xee, 0xff];
        udp.send_to(&msg, guest).unwrap();
        let mut b = [0u8; 64];
        if let Ok((n, from)) = udp.recv_from(&mut b) {
            if b[..n] == msg && from == std::net::SocketAddr::V4(guest) {
                echoes += 1;
            }
        }
    }
    udp.send_to(b"bye", SocketAddrV4::new(GUEST_IP, 9999))
        .unwrap();
    (replies, echoes)
}

/// A network namespace `<prefix>-<pid>-<tag>` for a TAP test, or `None` (skip) without
/// privileges; under `CI=true` a failure. The VMM opens it by name; it is deleted when the
/// returned value is dropped.
pub fn netns(prefix: &str, tag: &str) -> Option<pvkit_net::netns::NetNs> {
    let name = format!("{prefix}-{}-{tag}", std::process::id());
    match pvkit_net::netns::NetNs::create(&name) {
        Ok(ns) => Some(ns),
        Err(e) => {
            if super::ci() {
                panic!("CI=true but the TAP test cannot create a network namespace: {e}");
            }
            eprintln!("note: skipping a TAP test (needs root): {e}");
            None
        }
    }
}
