//! The PV network device: Ethernet frames carried by [`crate::Hypercall::NetSend`] (one
//! frame per exit, the synchronous baseline) or by two rings, transmit
//! ([`crate::ring::NET_TX_QUEUE`]) and receive ([`crate::ring::NET_RX_QUEUE`]).
//!
//! A frame is a bare Ethernet frame: destination MAC, source MAC, EtherType, payload; no
//! FCS, no 802.1Q tag. Its length lies in [`MIN_FRAME_LEN`]`..=`[`MAX_FRAME_LEN`]
//! (MTU [`MTU`] plus the 14-byte header).
//!
//! **Transmit.** The guest publishes [`NetTxRequest`]s (one frame each); the host copies the
//! frame out of guest memory once, hands it to its backend and answers [`NetTxResponse`]
//! (`EINVAL` below the minimum, `E2BIG` above the maximum, `EFAULT` outside RAM; a frame
//! the backend drops is still `Ok`, as a frame lost on a wire).
//!
//! **Receive.** The guest posts empty buffers ([`NetRxRequest`]); the host answers one only
//! when a frame arrived for it ([`NetRxResponse`] with the frame's length), so RX responses
//! lag their requests. A buffer smaller than the frame, or outside RAM, is answered with
//! an error and the frame is dropped. Frames that arrive while no buffer is posted wait
//! in a fixed host queue; when that is full they are dropped and counted (the host never
//! blocks and never grows).

use crate::assert_layout;

/// The link MTU: the largest IP packet in one frame.
pub const MTU: u32 = 1500;
/// Length of the Ethernet header (destination, source, EtherType).
pub const ETH_HEADER_LEN: u32 = 14;
/// The largest frame: [`MTU`] plus the Ethernet header.
pub const MAX_FRAME_LEN: u32 = MTU + ETH_HEADER_LEN;
/// The smallest frame: a bare Ethernet header.
pub const MIN_FRAME_LEN: u32 = ETH_HEADER_LEN;

/// A transmit ring request: send the frame of `len` bytes at guest-physical `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTxRequest {
    /// Guest-physical address of the frame.
    pub addr: u64,
    /// Frame length in bytes ([`MIN_FRAME_LEN`]`..=`[`MAX_FRAME_LEN`]).
    pub len: u32,
    /// Echoed in the response.
    pub id: u32,
}
assert_layout!(NetTxRequest, size = 16, addr @ 0, len @ 8, id @ 12);

/// A transmit ring response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTxResponse {
    /// A [`crate::Status`] raw value.
    pub status: i64,
    /// The request's `id`.
    pub id: u32,
    /// Bytes taken (the frame length; 0 on failure).
    pub len: u32,
}
assert_layout!(NetTxResponse, size = 16, status @ 0, id @ 8, len @ 12);

/// A receive ring request: an empty buffer of `capacity` bytes at guest-physical `addr`
/// for the host to fill with one frame. Post buffers of [`MAX_FRAME_LEN`] bytes or more.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRxRequest {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Buffer capacity in bytes.
    pub capacity: u32,
    /// Echoed in the response.
    pub id: u32,
}
assert_layout!(NetRxRequest, size = 16, addr @ 0, capacity @ 8, id @ 12);

/// A receive ring response: the frame now in the buffer, or why the buffer was refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRxResponse {
    /// A [`crate::Status`] raw value: `Ok`, `E2BIG` (the frame was larger than the
    /// buffer; frame dropped), `EFAULT` (buffer outside RAM; frame dropped).
    pub status: i64,
    /// The request's `id`.
    pub id: u32,
    /// Bytes written (the frame length; 0 on failure).
    pub len: u32,
}
assert_layout!(NetRxResponse, size = 16, status @ 0, id @ 8, len @ 12);

macro_rules! typed_status {
    ($ty:ty) => {
        impl $ty {
            /// The response's status, typed; a value that is not a [`crate::Status`] is an
            /// error carrying the raw value, never a panic.
            pub fn status(&self) -> Result<crate::Status, crate::status::UnknownStatus> {
                crate::Status::try_from(self.status as u64)
            }
        }
    };
}
typed_status!(NetTxResponse);
typed_status!(NetRxResponse);

/// The value of [`crate::Hypercall::NetInfo`] (`RDX`): the MAC address in bits 0–47 (byte
/// 0 of the address in bits 0–7) and the MTU in bits 48–63.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetInfo {
    /// The guest NIC's MAC address.
    pub mac: [u8; 6],
    /// The link MTU ([`MTU`]).
    pub mtu: u16,
}

impl NetInfo {
    /// The wire form (`RDX`).
    pub const fn to_u64(self) -> u64 {
        let m = self.mac;
        (m[0] as u64)
            | (m[1] as u64) << 8
            | (m[2] as u64) << 16
            | (m[3] as u64) << 24
            | (m[4] as u64) << 32
            | (m[5] as u64) << 40
            | (self.mtu as u64) << 48
    }

    /// Decodes the wire form. `Err(v)` if the MTU is 0 or larger than [`MTU`], or the MAC is
    /// a multicast address (bit 0 of byte 0).
    pub fn from_u64(v: u64) -> Result<Self, u64> {
        let b = v.to_le_bytes();
        let mac = [b[0], b[1], b[2], b[3], b[4], b[5]];
        let mtu = (v >> 48) as u16;
        if mtu == 0 || u32::from(mtu) > MTU || mac[0] & 1 != 0 {
            return Err(v);
        }
        Ok(Self { mac, mtu })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_rejects_nonsense() {
        let i = NetInfo {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            mtu: 1500,
        };
        assert_eq!(i.to_u64(), 0x05dc_5634_1200_5452);
        assert_eq!(NetInfo::from_u64(i.to_u64()), Ok(i));
        assert_eq!(NetInfo::from_u64(0x5452), Err(0x5452)); // MTU 0
        let big = 0x05dd_5634_1200_5452;
        assert_eq!(NetInfo::from_u64(big), Err(big)); // MTU 1501
        let mcast = 0x05dc_5634_1200_5453;
        assert_eq!(NetInfo::from_u64(mcast), Err(mcast));
    }

    #[test]
    fn frame_limits() {
        assert_eq!(MAX_FRAME_LEN, 1514);
        assert_eq!(MIN_FRAME_LEN, 14);
    }

    #[test]
    fn response_status_is_typed() {
        let mut r = NetRxResponse {
            status: -7,
            ..Default::default()
        };
        assert_eq!(r.status(), Ok(crate::Status::E2BIG));
        r.status = -9999;
        assert!(r.status().is_err());
        assert_eq!(NetTxResponse::default().status(), Ok(crate::Status::Ok));
    }
}
