//! The control API's messages: a [`Request`] is one JSON object on one line, a
//! [`Response`] one JSON object on one line back.
//!
//! ```text
//! {"op":"pause"}                      {"ok":true,"paused_in_us":812}
//! {"op":"resume"}                     {"ok":true}
//! {"op":"snapshot","dir":"/abs/dir"}  {"ok":true,"snapshot":{...}}
//! {"op":"stats"}                      {"ok":true,"stats":{...}}
//! {"op":"balloon","target_mib":64}    {"ok":true,"balloon":{...}}
//! {"op":"migrate","dest":"host:port"} {"ok":false,"error":"..."}
//! ```
//!
//! The shape follows Firecracker's API (pause/resume as a VM state change, snapshot
//! create with a path, balloon target in MiB), as line-delimited JSON instead of HTTP.
//! A request is hostile input: [`parse`] bounds its size ([`MAX_REQUEST`]), refuses unknown
//! operations and fields, and checks every value before anything is done; a refused
//! request changes nothing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest request line in bytes (newline included).
pub const MAX_REQUEST: usize = 4096;
/// Largest path in a request.
pub const MAX_PATH: usize = 1024;
/// Largest balloon target (the VMM's largest RAM).
pub const MAX_TARGET_MIB: u64 = crate::vstate::memory::MAX_MEM_MIB;

/// One control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Pause the VM (vCPUs out of the guest and held).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Write a snapshot into `dir` (an absolute path; created if missing).
    Snapshot {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// The VM's statistics.
    Stats,
    /// Set the balloon's target size (the guest follows it when it reads
    /// `BalloonTarget`, [`pvkit_abi::balloon`]).
    Balloon {
        /// Target in MiB.
        target_mib: u64,
    },
    /// Live-migrate the VM to `dest` (`HOST:PORT`).
    Migrate {
        /// Where to.
        dest: String,
    },
}

/// One reply: `ok` and either the result fields or an `error` message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request was carried out.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Pause: how long the vCPUs took to stop (the last of them to park), in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_in_us: Option<u64>,
    /// Snapshot: what was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotReply>,
    /// Stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsReply>,
    /// Balloon: the target now set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonReply>,
    /// Migrate: what the migration did (the VM now runs on the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationReply>,
}

/// The figures of a live migration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReply {
    /// The target.
    pub to: String,
    /// From the request to the hand-over, µs.
    pub total_us: u64,
    /// From the pause to the hand-over (the guest ran nowhere), µs.
    pub downtime_us: u64,
    /// Bytes of the stream.
    pub bytes: u64,
    /// Rounds, the stop-and-copy round included.
    pub rounds: u64,
    /// Pages sent with content.
    pub data_pages: u64,
    /// Pages skipped as hinted free.
    pub hinted_pages: u64,
    /// Pages dirty in the stop-and-copy round.
    pub final_round_pages: u64,
    /// Bytes of the VM state.
    pub state_bytes: u64,
}

impl Response {
    /// Success with no fields.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// Failure with `error`.
    pub fn err(error: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(error.to_string()),
            ..Self::default()
        }
    }
}

/// What a snapshot wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// The directory.
    pub dir: PathBuf,
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Bytes of RAM written (the rest are holes).
    pub written_bytes: u64,
    /// Zero pages skipped.
    pub zero_pages: u64,
    /// Ballooned pages skipped.
    pub ballooned_pages: u64,
    /// State file size.
    pub state_bytes: u64,
    /// Time to pause, µs (0: the VM was paused already).
    pub pause_us: u64,
    /// Time to capture and write, µs.
    pub write_us: u64,
}

/// The VM's statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Paused now.
    pub paused: bool,
    /// Since the VM (or its restore) started, ms.
    pub uptime_ms: u64,
    /// Exits counted up to the last pause (live counts are not read while running).
    pub exits_at_last_pause: u64,
    /// VM clock, ns.
    pub vm_clock_ns: u64,
    /// Guest RAM, bytes.
    pub mem_bytes: u64,
    /// Pages ballooned now (absent: no balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ballooned_pages: Option<u64>,
    /// The balloon: target and actual (absent: no balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonReply>,
}

/// The balloon's target and actual size (Firecracker's balloon statistics: target and
/// actual pages and MiB).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonReply {
    /// The host-set target in 4 KiB pages.
    pub target_pages: u64,
    /// The target in MiB.
    pub target_mib: u64,
    /// Pages the guest has ballooned now.
    pub actual_pages: u64,
    /// The actual size in MiB (rounded down).
    pub actual_mib: u64,
    /// The target's generation (incremented on every `balloon` request).
    pub generation: u32,
    /// The guest has read this target (`BalloonTarget`); a guest that does not follow
    /// the target never does.
    pub target_read: bool,
    /// The guest's successful inflate and deflate calls so far.
    pub inflate_calls: u64,
    /// See `inflate_calls`.
    pub deflate_calls: u64,
}

/// Why a request line was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST`].
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    /// Not UTF-8 JSON of a known request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A field's value is out of range.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Parses and checks one request line (without its newline).
pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() >= MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    let malformed = |e: &dyn std::fmt::Display| RequestError::Malformed(e.to_string());
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| malformed(&e))?;
    let req: Request = serde_json::from_value(value.clone()).map_err(|e| malformed(&e))?;
    // serde's `deny_unknown_fields` does not cover the unit variants of an internally
    // tagged enum: every key must be one the request has.
    let known = serde_json::to_value(&req).map_err(|e| malformed(&e))?;
    if let (Some(given), Some(known)) = (value.as_object(), known.as_object()) {
        if let Some(k) = given.keys().find(|k| !known.contains_key(*k)) {
            return Err(malformed(&format!("unknown field `{k}`")));
        }
    }
    let invalid = |m: &str| Err(RequestError::Invalid(m.to_owned()));
    match &req {
        Request::Snapshot { dir } => {
            let s = dir.as_os_str();
            if s.is_empty() || s.len() > MAX_PATH || !dir.is_absolute() {
                return invalid("snapshot dir must be an absolute path of at most 1024 bytes");
            }
            if s.as_encoded_bytes().contains(&0) {
                return invalid("snapshot dir contains a NUL byte");
            }
        }
        Request::Balloon { target_mib } if *target_mib > MAX_TARGET_MIB => {
            return invalid("balloon target above the largest guest RAM");
        }
        Request::Migrate { dest } => {
            let ok = dest.len() <= 256
                && dest
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                return invalid("migrate dest must be HOST:PORT");
            }
        }
        _ => {}
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_requests_parse() {
        assert_eq!(parse(br#"{"op":"pause"}"#), Ok(Request::Pause));
        assert_eq!(parse(br#"{"op":"resume"}"#), Ok(Request::Resume));
        assert_eq!(
            parse(br#"{"op":"snapshot","dir":"/tmp/s"}"#),
            Ok(Request::Snapshot {
                dir: "/tmp/s".into()
            })
        );
        assert_eq!(
            parse(br#"{"op":"migrate","dest":"127.0.0.1:4000"}"#),
            Ok(Request::Migrate {
                dest: "127.0.0.1:4000".into()
            })
        );
        let r = Request::Balloon { target_mib: 64 };
        assert_eq!(parse(&serde_json::to_vec(&r).unwrap()), Ok(r));
        assert_eq!(
            parse(br#"{"op":"balloon","target_mib":0}"#),
            Ok(Request::Balloon { target_mib: 0 })
        );
        // The largest RAM parses; the VM refuses what its own RAM cannot hold.
        let max = format!(r#"{{"op":"balloon","target_mib":{MAX_TARGET_MIB}}}"#);
        assert_eq!(
            parse(max.as_bytes()),
            Ok(Request::Balloon {
                target_mib: MAX_TARGET_MIB
            })
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"pause",
            b"{}",
            br#"{"op":"reboot"}"#,
            br#"{"op":"pause","x":1}"#,
            br#"{"op":"stats","now":true}"#,
            br#"{"op":"snapshot","dir":"/tmp/s","also":1}"#,
            br#"{"op":"snapshot"}"#,
            br#"{"op":"snapshot","dir":"relative"}"#,
            br#"{"op":"snapshot","dir":""}"#,
            br#"{"op":"snapshot","dir":"/a\u0000b"}"#,
            br#"{"op":"balloon","target_mib":-1}"#,
            br#"{"op":"balloon","target_mib":99999999}"#,
            br#"{"op":"balloon"}"#,
            br#"{"op":"balloon","target_mib":"64"}"#,
            br#"{"op":"balloon","target_mib":1.5}"#,
            br#"{"op":"balloon","target_mib":64,"now":true}"#,
            br#"{"op":"balloon","amount_mib":64}"#,
            br#"{"op":"migrate","dest":"nowhere"}"#,
            br#"{"op":"migrate","dest":"h:0"}"#,
            b"\xff\xfe",
        ];
        for b in bad {
            assert!(
                parse(b).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(b)
            );
        }
        let long = format!(
            r#"{{"op":"snapshot","dir":"/{}"}}"#,
            "a".repeat(MAX_REQUEST)
        );
        assert_eq!(parse(long.as_bytes()), Err(RequestError::TooLong));
    }
}
