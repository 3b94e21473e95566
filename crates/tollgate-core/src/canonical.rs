//! Canonical JSON: every object's keys sorted, whatever order the client sent them in (and
//! whatever map order serde_json was built with). Cache keys, argument digests and approval
//! bindings hash this form, so two encodings of one value hash alike.

use serde_json::Value;

/// Appends `v` in canonical form to `out`.
pub fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if serde_json::to_writer(&mut *out, k).is_err() {
                    out.extend_from_slice(b"\"\"");
                }
                out.push(b':');
                if let Some(child) = map.get(k) {
                    write(child, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        scalar => {
            if serde_json::to_writer(&mut *out, scalar).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}

/// The SHA-256 of `v`'s canonical form, in hex.
pub fn sha256_hex(v: &Value) -> String {
    use sha2::Digest;
    let mut buf = Vec::new();
    write(v, &mut buf);
    crate::hex::encode(&sha2::Sha256::digest(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `card` fuzz target: without correctly rounded float parsing, a long number
    /// re-read from its canonical form printed differently, so one value had two digests.
    #[test]
    fn canonical_numbers_survive_a_round_trip() {
        let text = format!("{}{}2{}", "4".repeat(77), "0".repeat(17), "0".repeat(4));
        let v: Value = serde_json::from_str(&text).unwrap();
        let mut once = Vec::new();
        write(&v, &mut once);
        let back: Value = serde_json::from_slice(&once).unwrap();
        let mut twice = Vec::new();
        write(&back, &mut twice);
        assert_eq!(once, twice);
        assert_eq!(sha256_hex(&v), sha256_hex(&back));
    }

    #[test]
    fn key_order_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,"x"],"x":null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#).unwrap();
        let mut out = Vec::new();
        write(&a, &mut out);
        assert_eq!(out, br#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
        assert_eq!(sha256_hex(&a), sha256_hex(&b));
    }
}
