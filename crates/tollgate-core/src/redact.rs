//! Cutting the gateway's own upstream credentials out of what upstreams say back.
//!
//! An upstream that refuses a request sometimes quotes what it was sent ("invalid API key
//! sk-..."), and its error text goes into the gateway's logs and, as a message or a relayed
//! body, to the client. Each upstream client keeps the credentials it sends in an [`Echoes`]
//! and passes every upstream error text through it.

use std::borrow::Cow;

use bytes::Bytes;
use http::HeaderMap;

/// What replaces a credential.
pub const REDACTED: &str = "[redacted]";

/// Credentials shorter than this are not looked for: cutting every `abc` out of a message
/// would garble it, and a secret that short protects nothing anyway.
const MIN_LEN: usize = 8;

/// The credentials one upstream client sends.
#[derive(Debug, Clone, Default)]
pub struct Echoes {
    secrets: Vec<Box<[u8]>>,
}

impl Echoes {
    /// The sensitive values among `headers` (see [`Echoes::add_header_value`]).
    pub fn from_headers(headers: &HeaderMap) -> Echoes {
        let mut e = Echoes::default();
        for v in headers.values().filter(|v| v.is_sensitive()) {
            e.add_header_value(v.as_bytes());
        }
        e
    }

    /// A credential as sent in a header: the whole value and, for `Scheme token`, the token.
    pub fn add_header_value(&mut self, bytes: &[u8]) {
        self.add(bytes);
        if let Some(space) = bytes.iter().position(|&b| b == b' ') {
            self.add(bytes[space + 1..].trim_ascii());
        }
    }

    /// One credential, as it would appear in text.
    pub fn add(&mut self, secret: &[u8]) {
        if secret.len() >= MIN_LEN && !self.secrets.iter().any(|s| **s == *secret) {
            self.secrets.push(secret.into());
            // Longest first, so a whole `Bearer token` goes before its token.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// These credentials and `more`'s.
    pub fn with(&self, more: &Echoes) -> Echoes {
        let mut e = self.clone();
        for s in &more.secrets {
            e.add(s);
        }
        e
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every credential replaced by [`REDACTED`].
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            let Ok(s) = std::str::from_utf8(s) else {
                continue;
            };
            if out.contains(s) {
                out = Cow::Owned(out.replace(s, REDACTED));
            }
        }
        out
    }

    /// `body` with every credential replaced by [`REDACTED`] (a JSON body stays JSON: the
    /// credentials are visible characters without quotes or backslashes, or they would not be
    /// found as they were sent).
    pub fn scrub_bytes(&self, body: Bytes) -> Bytes {
        if !self.secrets.iter().any(|s| find(&body, s).is_some()) {
            return body;
        }
        let mut out = body.to_vec();
        for s in &self.secrets {
            let mut from = 0;
            while let Some(at) = find(&out[from..], s) {
                let at = from + at;
                out.splice(at..at + s.len(), REDACTED.bytes());
                from = at + REDACTED.len();
            }
        }
        Bytes::from(out)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn sensitive(v: &str) -> HeaderValue {
        let mut v = HeaderValue::from_str(v).unwrap();
        v.set_sensitive(true);
        v
    }

    #[test]
    fn credentials_sent_in_headers_are_cut_from_answers() {
        let mut h = HeaderMap::new();
        h.insert("authorization", sensitive("Bearer sk-live-0123456789"));
        h.insert("x-api-key", sensitive("key-abcdefgh"));
        h.insert("x-short", sensitive("abc"));
        h.insert("x-org", HeaderValue::from_static("acme-corporation"));
        let e = Echoes::from_headers(&h);
        let text = "bad key sk-live-0123456789 (sent as Bearer sk-live-0123456789); key-abcdefgh; abc; acme-corporation";
        assert_eq!(
            e.scrub(text),
            "bad key [redacted] (sent as [redacted]); [redacted]; abc; acme-corporation"
        );
        let body = Bytes::from(format!(r#"{{"error":{{"message":"{text}"}}}}"#));
        let out = e.scrub_bytes(body);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["message"], e.scrub(text).as_ref());
        // Nothing to cut: the same bytes come back.
        let clean = Bytes::from_static(b"{\"error\":\"nope\"}");
        assert_eq!(e.scrub_bytes(clean.clone()).as_ptr(), clean.as_ptr());
        assert!(matches!(e.scrub("fine"), Cow::Borrowed(_)));
    }
}
