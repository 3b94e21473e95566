//! Lower-case hexadecimal, for digests and ids.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lower-case hex to `out`.
pub fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::new();
    push(&mut s, bytes);
    s
}

/// 64 hex digits (either case) back into 32 bytes; none for anything else.
pub fn decode32(s: &str) -> Option<[u8; 32]> {
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let value = |d: u8| char::from(d).to_digit(16).map(|v| v as u8);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_what_is_not_32_bytes_of_hex() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let s = encode(&bytes);
        assert_eq!(s.len(), 64);
        assert_eq!(&s[..6], "00254a");
        assert_eq!(decode32(&s), Some(bytes));
        assert_eq!(decode32(&s.to_uppercase()), Some(bytes));
        assert_eq!(decode32(&s[..62]), None);
        assert_eq!(decode32(&format!("{}zz", &s[..62])), None);
        assert_eq!(decode32(&"é".repeat(32)), None);
    }
}
