//! Sealing the opaque values the gateway mints (list cursors): an HMAC-SHA-256 tag over the
//! value and the principal it was minted for, so a client can neither forge one nor replay
//! another principal's. The key lives in the store (`mcp.seal_key`), so every replica and
//! every restart opens the same values.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the tag kept: 128 bits is beyond guessing.
const TAG: usize = 16;

#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { key }
    }

    fn tag(&self, binding: &str, payload: &[u8]) -> Option<[u8; 32]> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding.as_bytes());
        mac.update(payload);
        Some(mac.finalize().into_bytes().into())
    }

    /// `payload` sealed for `binding` (the principal and session it belongs to).
    pub fn seal(&self, binding: &str, payload: &[u8]) -> String {
        let tag = self.tag(binding, payload).unwrap_or_default();
        let mut out = B64.encode(payload);
        out.push('.');
        out.push_str(&B64.encode(&tag[..TAG]));
        out
    }

    /// The payload, if `token` was sealed by this key for `binding`.
    pub fn open(&self, binding: &str, token: &str) -> Option<Vec<u8>> {
        let (payload, tag) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        let expected = self.tag(binding, &payload)?;
        let ok: bool = subtle::ConstantTimeEq::ct_eq(tag.as_slice(), &expected[..TAG]).into();
        ok.then_some(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_binding() {
        let s = Sealer::new([7; 32]);
        let token = s.seal("key-a", b"tools:100");
        assert_eq!(s.open("key-a", &token).as_deref(), Some(&b"tools:100"[..]));
        assert_eq!(s.open("key-b", &token), None, "another principal");
        assert_eq!(
            Sealer::new([8; 32]).open("key-a", &token),
            None,
            "another key"
        );
        let forged = format!(
            "{}.{}",
            B64.encode(b"tools:0"),
            token.split_once('.').unwrap().1
        );
        assert_eq!(s.open("key-a", &forged), None, "a changed payload");
        assert_eq!(s.open("key-a", "garbage"), None);
    }
}
