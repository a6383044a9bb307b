//! `pv_net`: the PV net backend (`pvkit_pv::net::NetDevice`) driven by a hostile guest and a
//! hostile host side at once: `NetSend`-style sends of arbitrary `(addr, len)`, TX and RX
//! ring requests of arbitrary addresses, lengths and capacities, publishes, corrupt
//! `req_prod` values, frames of any length from the host, and a source that never runs dry.
//!
//! Invariants:
//! - no panic;
//! - a send is `EINVAL` below 14 bytes, `E2BIG` above 1514, `EFAULT` outside RAM, and then
//!   the sink receives nothing; otherwise it returns `len` and the sink got exactly the
//!   guest's bytes;
//! - frames waiting for buffers never exceed `RX_QUEUE_FRAMES`; one pull takes at most
//!   `SERVICE_FRAMES` frames; one service handles at most `SERVICE_FRAMES` requests;
//! - every frame handed in is accounted for exactly once: delivered, dropped (length,
//!   no buffer, bad buffer) or still waiting;
//! - a ring whose `req_prod` runs more than its size ahead is broken and stays broken.

use arbitrary::{Arbitrary, Unstructured};
use pvkit_abi::net::{NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse};
use pvkit_abi::ring::offsets;
use pvkit_abi::Status;
use pvkit_pv::net::{NetDevice, NetRxRing, NetTxRing, RX_QUEUE_FRAMES, SERVICE_FRAMES};
use pvkit_pv::test_utils::GuestProducer;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Most operations per input.
pub const MAX_OPS: usize = 64;

const RAM: u64 = 1 << 20;
const TX: u64 = 0x1000;
const RX: u64 = 0x2000;
const SIZE: u32 = 8;

/// One step.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetOp {
    /// `send(addr, len)` into a recording sink.
    Send(u32, u16),
    /// Queue a TX request (not published).
    TxReq(u32, u16, u32),
    /// Post an RX buffer (not published).
    RxReq(u32, u16, u32),
    /// Publish the TX (`true`) or RX ring.
    Publish(bool),
    /// Overwrite the TX or RX ring's `req_prod`.
    Corrupt(bool, u32),
    /// Hand one frame of this length to the device.
    PushRx(u16),
    /// Pull from a source that yields `n` frames of `len` bytes (or without end for 0).
    Pull(u8, u16),
    /// Service the TX ring.
    ServiceTx,
    /// Service the RX ring.
    ServiceRx,
}

crate::encode_enum!(NetOp, 9;
    NetOp::Send(a, l) => 0 [a, l],
    NetOp::TxReq(a, l, id) => 1 [a, l, id],
    NetOp::RxReq(a, c, id) => 2 [a, c, id],
    NetOp::Publish(t) => 3 [t],
    NetOp::Corrupt(t, v) => 4 [t, v],
    NetOp::PushRx(l) => 5 [l],
    NetOp::Pull(n, l) => 6 [n, l],
    NetOp::ServiceTx => 7 [],
    NetOp::ServiceRx => 8 [],
);

/// `addr()` inputs: inside RAM at `offset`, `back` bytes before its end, far outside it.
const fn in_ram(offset: u32) -> u32 {
    offset
}
const fn near_end(back: u32) -> u32 {
    0x8000_0000 | back
}
const FAR: u32 = 0xC000_0001;

/// Encodes an operation sequence (this harness has no setup).
fn encode(ops: &[NetOp]) -> Vec<u8> {
    let mut e = crate::enc::Enc::new();
    for op in ops {
        crate::enc::Encode::encode(op, &mut e);
    }
    e.finish()
}

fn addr(a: u32) -> u64 {
    // Mostly inside RAM, sometimes just past it or far away.
    match a >> 30 {
        0 | 1 => u64::from(a) % RAM,
        2 => RAM - u64::from(a % 64),
        _ => u64::from(a) << 20,
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    // Data pattern outside the rings.
    let pattern: Vec<u8> = (0..RAM as usize).map(|i| (i * 31 % 251) as u8).collect();
    mem.write_slice(&pattern[0x4000..], GuestAddress(0x4000))
        .unwrap();
    let mut txp = GuestProducer::<NetTxRequest, NetTxResponse>::init(&mem, TX, SIZE, 0).unwrap();
    let mut rxp = GuestProducer::<NetRxRequest, NetRxResponse>::init(&mem, RX, SIZE, 0).unwrap();
    let mut tx = NetTxRing::new(&mem, TX, 0x1000).unwrap();
    let mut rx = NetRxRing::new(&mem, RX, 0x1000).unwrap();
    let mut dev = NetDevice::new();
    let mut handed_in = 0u64;
    crate::for_each_op(&mut u, MAX_OPS, |op: NetOp| match op {
        NetOp::Send(a, l) => {
            let (addr, len) = (addr(a), u64::from(l));
            let mut sent: Vec<Vec<u8>> = Vec::new();
            let got = dev.send(&mem, addr, len, &mut |f| sent.push(f.to_vec()));
            let in_ram = addr.checked_add(len).is_some_and(|e| e <= RAM);
            let want = if len < 14 {
                Err(Status::EINVAL)
            } else if len > 1514 {
                Err(Status::E2BIG)
            } else if !in_ram {
                Err(Status::EFAULT)
            } else {
                Ok(len as u32)
            };
            assert_eq!(got.map_err(|e| e.status()), want, "{addr:#x}+{len}");
            match want {
                Ok(_) => {
                    let mut bytes = vec![0u8; len as usize];
                    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
                    assert_eq!(sent, vec![bytes]);
                }
                Err(_) => assert!(sent.is_empty()),
            }
        }
        NetOp::TxReq(a, len, id) => {
            let req = NetTxRequest {
                addr: addr(a),
                len: u32::from(len),
                id,
            };
            let _ = txp.push(&mem, req);
        }
        NetOp::RxReq(a, capacity, id) => {
            let req = NetRxRequest {
                addr: addr(a),
                capacity: u32::from(capacity),
                id,
            };
            let _ = rxp.push(&mem, req);
        }
        NetOp::Publish(t) => {
            let _ = if t {
                txp.publish(&mem)
            } else {
                rxp.publish(&mem)
            };
        }
        NetOp::Corrupt(t, v) => {
            let base = if t { TX } else { RX };
            mem.store(
                v,
                GuestAddress(base + offsets::REQ_PROD),
                std::sync::atomic::Ordering::Release,
            )
            .unwrap();
        }
        NetOp::PushRx(len) => {
            handed_in += 1;
            dev.push_rx(&vec![0x5a; usize::from(len)]);
        }
        NetOp::Pull(n, len) => {
            let mut left = n;
            let len = usize::from(len);
            let taken = dev.pull_rx(&mut |buf| {
                if n != 0 {
                    if left == 0 {
                        return None;
                    }
                    left -= 1;
                }
                if let Some(b) = buf.get_mut(..len) {
                    b.fill(0xa5);
                }
                Some(len)
            });
            assert!(taken <= SERVICE_FRAMES);
            if n != 0 {
                assert_eq!(taken, u64::from(n));
            }
            handed_in += taken;
        }
        NetOp::ServiceTx => {
            let was_broken = tx.is_broken();
            let r = dev.service_tx(&mem, &mut tx, &mut |_| {});
            if let Ok(b) = r {
                assert!(!was_broken && b.requests <= SERVICE_FRAMES);
            }
            if was_broken {
                assert!(tx.is_broken());
            }
        }
        NetOp::ServiceRx => {
            let was_broken = rx.is_broken();
            let waiting = dev.rx_waiting() as u64;
            let r = dev.service_rx(&mem, &mut rx);
            if let Ok(b) = r {
                assert!(!was_broken && b.requests <= waiting);
            }
            if was_broken {
                assert!(rx.is_broken());
            }
        }
    });
    assert!(dev.rx_waiting() <= RX_QUEUE_FRAMES);
    let s = dev.stats();
    let accounted = s.rx_frames
        + s.rx_dropped_len
        + s.rx_dropped_no_buffer
        + s.rx_dropped_bad_buffer
        + dev.rx_waiting() as u64;
    assert_eq!(accounted, handed_in, "{s:?}");
}

/// Seeds: raw op streams (the arbitrary encoding): a TX batch, RX buffers with frames, a
/// flood with no buffers, corrupt indices.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "tx_batch",
            vec![1, 0, 0x50, 0, 0, 60, 0, 1, 0, 0, 0, 3, 1, 7],
        ),
        (
            "rx_frames",
            vec![2, 0, 0x60, 0, 0, 0xea, 5, 9, 0, 0, 0, 3, 0, 5, 60, 0, 8],
        ),
        ("flood", vec![6, 0, 64, 0, 6, 0, 64, 0, 8]),
        ("corrupt", vec![4, 1, 0xff, 0, 0, 0, 7, 4, 0, 9, 0, 0, 0, 8]),
        ("tx_bad_descriptors", encode(&tx_bad_descriptors())),
        ("rx_bad_buffers", encode(&rx_bad_buffers())),
        ("rx_never_drained", encode(&rx_never_drained())),
        ("corrupt_both_indices", encode(&corrupt_both_indices())),
        ("host_oversize", encode(&host_oversize())),
    ]
}

/// Transmit descriptors over 1514 bytes, under 14, and outside RAM, around a valid one.
fn tx_bad_descriptors() -> Vec<NetOp> {
    vec![
        NetOp::TxReq(in_ram(0x8000), 1515, 1),
        NetOp::TxReq(in_ram(0x8000), u16::MAX, 2),
        NetOp::TxReq(in_ram(0x8000), 0, 3),
        NetOp::TxReq(in_ram(0x8000), 13, 4),
        NetOp::TxReq(near_end(30), 60, 5),
        NetOp::TxReq(FAR, 60, 6),
        NetOp::TxReq(in_ram(0x8000), 60, 7),
        NetOp::Publish(true),
        NetOp::ServiceTx,
        NetOp::Send(near_end(10), 60),
        NetOp::Send(in_ram(0x9000), 1514),
    ]
}

/// Receive buffers outside RAM, straddling its end, and too small, then frames for them.
fn rx_bad_buffers() -> Vec<NetOp> {
    vec![
        NetOp::RxReq(near_end(10), 1514, 1),
        NetOp::RxReq(FAR, 1514, 2),
        NetOp::RxReq(in_ram(0x8000), 10, 3),
        NetOp::RxReq(in_ram(0x9000), 1514, 4),
        NetOp::Publish(false),
        NetOp::PushRx(60),
        NetOp::PushRx(1514),
        NetOp::PushRx(100),
        NetOp::PushRx(64),
        NetOp::ServiceRx,
    ]
}

/// A source without end and no receive buffers: the wait queue fills, the rest drops.
fn rx_never_drained() -> Vec<NetOp> {
    let mut ops = vec![NetOp::Pull(0, 60); 4];
    ops.extend([NetOp::ServiceRx, NetOp::Pull(0, 1514), NetOp::ServiceRx]);
    ops
}

/// Both rings' `req_prod` far ahead and wrapped behind; the synchronous send still works.
fn corrupt_both_indices() -> Vec<NetOp> {
    vec![
        NetOp::TxReq(in_ram(0x8000), 60, 1),
        NetOp::Publish(true),
        NetOp::Corrupt(true, 1000),
        NetOp::ServiceTx,
        NetOp::ServiceTx,
        NetOp::RxReq(in_ram(0x9000), 1514, 2),
        NetOp::Publish(false),
        NetOp::Corrupt(false, u32::MAX),
        NetOp::PushRx(60),
        NetOp::ServiceRx,
        NetOp::Send(in_ram(0x8000), 60),
    ]
}

/// Frames over the MTU from the host side, handed in and claimed by a source.
fn host_oversize() -> Vec<NetOp> {
    vec![
        NetOp::RxReq(in_ram(0x9000), 1514, 1),
        NetOp::Publish(false),
        NetOp::PushRx(1515),
        NetOp::PushRx(9000),
        NetOp::PushRx(u16::MAX),
        NetOp::Pull(4, 4000),
        NetOp::Pull(2, 1515),
        NetOp::PushRx(13),
        NetOp::ServiceRx,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass() {
        for (_, bytes) in seeds() {
            run(&bytes);
        }
    }

    #[test]
    fn structured_seeds_decode_to_their_operations() {
        for ops in [
            tx_bad_descriptors(),
            rx_bad_buffers(),
            rx_never_drained(),
            corrupt_both_indices(),
            host_oversize(),
        ] {
            let bytes = encode(&ops);
            let mut u = Unstructured::new(&bytes);
            let mut got = Vec::new();
            crate::for_each_op(&mut u, MAX_OPS, |op: NetOp| got.push(op));
            assert_eq!(got, ops);
        }
    }
}
