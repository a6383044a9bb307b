//! `net=ring id=K members=N peer=NEXT [touch=MIB [give_back]]`: one member of a ring of
//! guests on a shared subnet (`pvkit fleet` connects them through a host bridge).
//!
//! The ring's message is one UDP datagram to [`RING_PORT`] with a 16-byte payload:
//! `"PVRG"`, the number of members it has passed (`hops`, u32 big-endian) and the sum of
//! their ids (u64 big-endian). The host starts it at member 1 with `hops = 0, sum = 0`.
//! Member `K` waits (halted) for it, checks that it is its turn (`hops == K - 1`), adds
//! its id, resolves `peer=` by ARP and sends it on. The last member (`K == N`) also checks
//! the result: `hops == N` and `sum == N(N+1)/2`, prints `ring: verified ...` and exits 0,
//! or prints `ring: WRONG ...` and exits 1; its `peer=` is the host, which checks again.
//! A message out of turn ends the member with status 1; one without the magic is ignored.
//!
//! Before it says `ring: ready`, a member can use memory the way a workload does
//! (`touch=MIB`: write every page of `MIB` MiB, then stop using it) and, with `give_back`,
//! return that memory to the host through the balloon ([`crate::balloon::give_back`]):
//! the host measures each VM's footprint while the ring waits, with and without it.

use super::link::Link;
use super::proto::{RING_MSG_LEN, RING_PORT, UDP_PAYLOAD};
use pvkit_abi::boot::BootInfo;

/// The magic at the start of a ring message.
pub const MAGIC: [u8; 4] = *b"PVRG";

/// The `net=ring` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingArgs {
    /// This member's id, 1..=`members`.
    pub id: u64,
    /// How many members the ring has.
    pub members: u64,
    /// MiB to touch (then stop using) before the ring starts.
    pub touch_mib: u64,
    /// Give the touched memory back to the host through the balloon.
    pub give_back: bool,
}

impl RingArgs {
    /// The defaults: a ring of one.
    pub const fn new() -> Self {
        Self {
            id: 1,
            members: 1,
            touch_mib: 0,
            give_back: false,
        }
    }
}

impl Default for RingArgs {
    fn default() -> Self {
        Self::new()
    }
}

/// A ring message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// Members passed so far.
    pub hops: u32,
    /// Sum of their ids.
    pub sum: u64,
}

impl Token {
    /// Decodes a payload; `None` without the magic.
    pub fn decode(b: &[u8; RING_MSG_LEN]) -> Option<Self> {
        if b[..4] != MAGIC {
            return None;
        }
        let mut hops = [0u8; 4];
        hops.copy_from_slice(&b[4..8]);
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&b[8..16]);
        Some(Self {
            hops: u32::from_be_bytes(hops),
            sum: u64::from_be_bytes(sum),
        })
    }

    /// Encodes into a payload.
    pub fn encode(&self) -> [u8; RING_MSG_LEN] {
        let mut b = [0u8; RING_MSG_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.hops.to_be_bytes());
        b[8..16].copy_from_slice(&self.sum.to_be_bytes());
        b
    }
}

/// The sum a ring of `members` must end with: `1 + 2 + ... + members`.
pub fn expected_sum(members: u64) -> u64 {
    members * (members + 1) / 2
}

/// Runs this member's part over `link`; returns the exit status (0: done, and verified by
/// the last).
pub fn run(link: &mut dyn Link, a: &RingArgs, boot: &BootInfo) -> u8 {
    if a.id == 0 || a.id > a.members || a.members > u64::from(u32::MAX) {
        println!("ring: bad id={} members={}", a.id, a.members);
        return 1;
    }
    if a.touch_mib > 0 {
        crate::balloon::touch_then_stop_using(a.touch_mib, a.give_back, boot);
    }
    println!("ring: ready id={} members={}", a.id, a.members);
    let token = loop {
        link.wait(&|p| p.ring_msg.is_some());
        if let Some(t) = link.proto().ring_msg.take().and_then(|m| Token::decode(&m)) {
            break t;
        }
    };
    if u64::from(token.hops) != a.id - 1 {
        println!(
            "ring: WRONG turn: member {} got the message after {} hops",
            a.id, token.hops
        );
        return 1;
    }
    let next = Token {
        hops: token.hops + 1,
        sum: token.sum.wrapping_add(a.id),
    };
    // The next member (or the host) is up: the host starts the ring once every member
    // said `ready`.
    link.send(false, &mut |p, f| p.arp_request(f));
    link.wait(&|p| p.peer_mac.is_some());
    link.send(false, &mut |p, f| {
        f[UDP_PAYLOAD..UDP_PAYLOAD + RING_MSG_LEN].copy_from_slice(&next.encode());
        p.udp_datagram(f, RING_PORT, RING_MSG_LEN, next.hops as u16)
    });
    // The frame must have left before the member exits.
    link.drain();
    if a.id < a.members {
        println!(
            "ring: member {} passed hops={} sum={} on",
            a.id, next.hops, next.sum
        );
        return 0;
    }
    let want = expected_sum(a.members);
    if u64::from(next.hops) == a.members && next.sum == want {
        println!("ring: verified sum={} over {} members", next.sum, next.hops);
        0
    } else {
        println!(
            "ring: WRONG sum={} hops={}, expected sum={want} hops={}",
            next.sum, next.hops, a.members
        );
        1
    }
}
