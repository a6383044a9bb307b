//! Tokenizing the boot command line: whitespace-separated `key=value` pairs and bare flags.
//!
//! No allocation and one pass: [`Cmdline::tokens`] yields each token as it is found. A
//! kernel matches the keys it knows and ignores the rest (the VMM or a user may pass
//! options meant for someone else). Quoting is not supported.

/// One token: `key=value` (value may be empty) or a bare `flag` (value `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token<'a> {
    /// The text before the first `=`, or the whole token.
    pub key: &'a str,
    /// The text after the first `=`, if there is one.
    pub value: Option<&'a str>,
}

/// A command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    /// A command line over `text`.
    pub const fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// Decodes the raw bytes of a command line (as found at `BootInfo::cmdline_addr`),
    /// stopping at the first NUL. `None` if they are not UTF-8.
    pub fn from_bytes(bytes: &'a [u8]) -> Option<Self> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        core::str::from_utf8(&bytes[..end]).ok().map(Self::new)
    }

    /// The whole text.
    pub const fn as_str(&self) -> &'a str {
        self.text
    }

    /// The tokens, in order.
    pub fn tokens(&self) -> impl Iterator<Item = Token<'a>> + 'a {
        self.text
            .split_ascii_whitespace()
            .map(|t| match t.split_once('=') {
                Some((key, value)) => Token {
                    key,
                    value: Some(value),
                },
                None => Token {
                    key: t,
                    value: None,
                },
            })
    }

    /// The value of the last `key=value` token for `key` (later tokens override earlier
    /// ones, as on Linux). Each call scans the line; kernels with many keys should make one
    /// pass over [`Cmdline::tokens`] instead.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.tokens()
            .filter(|t| t.key == key)
            .filter_map(|t| t.value)
            .last()
    }

    /// Whether the bare flag `name` is present.
    pub fn has_flag(&self, name: &str) -> bool {
        self.tokens().any(|t| t.key == name && t.value.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_flags_and_overrides() {
        let c = Cmdline::new("  console=uart print=64\twrites=2 panic x= exit=1 exit=3 ");
        let tokens: Vec<Token<'_>> = c.tokens().collect();
        assert_eq!(tokens.len(), 7);
        assert_eq!(
            tokens[3],
            Token {
                key: "panic",
                value: None
            }
        );
        assert_eq!(
            tokens[4],
            Token {
                key: "x",
                value: Some("")
            }
        );
        assert_eq!(c.get("console"), Some("uart"));
        assert_eq!(c.get("exit"), Some("3"));
        assert_eq!(c.get("missing"), None);
        assert!(c.has_flag("panic"));
        assert!(!c.has_flag("console"));
    }

    #[test]
    fn from_bytes_stops_at_nul_and_rejects_bad_utf8() {
        assert_eq!(Cmdline::from_bytes(b"a=1\0junk").unwrap().as_str(), "a=1");
        assert_eq!(Cmdline::from_bytes(b"").unwrap().tokens().count(), 0);
        assert!(Cmdline::from_bytes(b"\xff").is_none());
    }

    #[test]
    fn value_keeps_later_equals_signs() {
        let c = Cmdline::new("k=a=b");
        assert_eq!(c.get("k"), Some("a=b"));
    }
}
