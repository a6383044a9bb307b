//! The bridge of `pvkit fleet` against the real Linux network stack: two TAP devices made
//! ports of one bridge in a namespace the test creates. A broadcast from one reaches the
//! other unchanged, and the bridge answers ARP for its own address with the MAC it was
//! given.
//!
//! Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and /dev/net/tun. Without them it skips
//! with a note, except under `CI=true`, where it fails.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pvkit_net::netns::NetNs;
use pvkit_net::tap::{TapBackend, TapConfig};
use pvkit_net::NetBackend;

const BRIDGE_MAC: [u8; 6] = [0x02, 0x70, 0x76, 0xb0, 0, 0x01];
const A_MAC: [u8; 6] = [0x02, 0x70, 0x76, 0xb0, 0, 0x0a];
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);

/// A broadcast ARP request from `A_MAC`/`A_IP` for `BRIDGE_IP`, padded to 60 bytes.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&A_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&A_MAC);
    f.extend_from_slice(&A_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&BRIDGE_IP.octets());
    f.resize(60, 0);
    f
}

/// Frames `tap` receives within `wait`, until `want` says enough.
fn receive(tap: &mut TapBackend, wait: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut buf = vec![0u8; pvkit_net::MAX_FRAME_LEN];
    while start.elapsed() < wait {
        while let Some(n) = tap.recv(&mut buf).unwrap() {
            if want(&buf[..n]) {
                return Some(buf[..n].to_vec());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn two_bridged_taps_see_each_others_broadcasts_and_the_bridge_answers_arp() {
    let name = format!("pvkit-br-test-{}", std::process::id());
    let ns = match NetNs::create(&name) {
        Ok(ns) => ns,
        Err(e) => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true: the bridge test must run here, but: {e}"
            );
            eprintln!("note: skipping the bridge test: {e}");
            return;
        }
    };
    pvkit_net::bridge::create(&ns, "br0", BRIDGE_MAC, BRIDGE_IP, 24).expect("bridge");
    let mut cfg = TapConfig::new(Ipv4Addr::UNSPECIFIED, 24);
    cfg.bridge = Some("br0".into());
    let mut a = TapBackend::open(NetNs::open(&name).unwrap(), &cfg).expect("tap a");
    let mut b = TapBackend::open(NetNs::open(&name).unwrap(), &cfg).expect("tap b");
    let req = arp_request();
    // The port may take a moment to forward: send until both answers are in.
    let start = Instant::now();
    let (mut seen_by_b, mut reply) = (None, None);
    while (seen_by_b.is_none() || reply.is_none()) && start.elapsed() < Duration::from_secs(30) {
        a.send(&req);
        if seen_by_b.is_none() {
            seen_by_b = receive(&mut b, Duration::from_millis(200), |f| f == &req[..]);
        }
        if reply.is_none() {
            reply = receive(&mut a, Duration::from_millis(200), |f| {
                f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
            });
        }
    }
    assert!(
        seen_by_b.is_some(),
        "the broadcast did not cross the bridge"
    );
    let reply = reply.expect("the bridge answered ARP");
    assert_eq!(reply[0..6], A_MAC, "to A");
    assert_eq!(reply[6..12], BRIDGE_MAC, "from the bridge's fixed MAC");
    assert_eq!(reply[22..28], BRIDGE_MAC, "sender hardware address");
    assert_eq!(reply[28..32], BRIDGE_IP.octets(), "sender protocol address");
    drop((a, b));
    drop(ns);
}
