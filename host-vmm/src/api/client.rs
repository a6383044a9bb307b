//! The control API's client side (`pvkit ctl`): one request, one reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::request::{Request, Response};

/// How long the client waits for a reply (a snapshot of a large guest takes a while).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest reply accepted.
const MAX_REPLY: u64 = 64 * 1024;

/// Sends `req` to the API socket at `path` and reads the reply.
pub fn send(path: &Path, req: &Request) -> std::io::Result<Response> {
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    send_raw(path, &line).and_then(|r| serde_json::from_str(&r).map_err(std::io::Error::other))
}

/// Sends raw bytes (tests send malformed requests) and returns the reply line.
pub fn send_raw(path: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    s.write_all(bytes)?;
    let mut reply = String::new();
    BufReader::new(s.take(MAX_REPLY)).read_line(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}
