//! The request envelope: the few top-level fields a routing decision needs (`model`, `stream`,
//! `stream_options`), read without parsing the rest, and a splice that rewrites only those
//! fields while every other value passes through byte for byte.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tollgate_core::error::ApiError;

/// Real requests have a few dozen top-level fields; this bounds the work a hostile body causes.
const MAX_TOP_LEVEL_KEYS: usize = 1024;
/// The longest model name accepted (config validation uses the same bound).
const MAX_MODEL_NAME: usize = 256;

/// A top-level JSON object as an ordered list of keys and raw, unparsed values.
pub struct Envelope<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, whichever is set.
    pub max_tokens: Option<i64>,
}

struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    if out.len() == MAX_TOP_LEVEL_KEYS {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_TOP_LEVEL_KEYS} top-level fields"
                        )));
                    }
                    out.push((k, v));
                }
                // Two parsers picking different duplicates is a request-smuggling vector.
                let mut seen: HashSet<&str> = HashSet::with_capacity(out.len());
                for (k, _) in &out {
                    if !seen.insert(k.as_ref()) {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Envelope<'a> {
    /// Parses the top level of a request body. `model` is required.
    pub fn parse(body: &'a [u8]) -> Result<Envelope<'a>, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(
                ApiError::invalid("request body is empty; expected a JSON object")
                    .code("invalid_json"),
            );
        }
        let Fields(fields) = serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))?;
        let mut model = None;
        let mut stream = false;
        let mut include_usage = false;
        let mut max_tokens = None;
        for (k, v) in &fields {
            match k.as_ref() {
                name @ ("max_tokens" | "max_completion_tokens" | "max_output_tokens") => {
                    // Policies compare against it: a value we cannot read must not pass as absent.
                    let n = serde_json::from_str::<Option<i64>>(v.get()).map_err(|_| {
                        ApiError::invalid(format!("`{name}` must be an integer")).param(name)
                    })?;
                    max_tokens = max_tokens.or(n);
                }
                "model" => {
                    model = Some(serde_json::from_str::<String>(v.get()).map_err(|_| {
                        ApiError::invalid("`model` must be a string").param("model")
                    })?)
                }
                "stream" => {
                    stream = serde_json::from_str::<Option<bool>>(v.get())
                        .map_err(|_| {
                            ApiError::invalid("`stream` must be a boolean").param("stream")
                        })?
                        .unwrap_or(false)
                }
                "stream_options" => {
                    #[derive(Deserialize)]
                    struct StreamOptions {
                        include_usage: Option<bool>,
                    }
                    let opts: Option<StreamOptions> =
                        serde_json::from_str(v.get()).map_err(|_| {
                            ApiError::invalid("`stream_options` must be an object")
                                .param("stream_options")
                        })?;
                    include_usage = opts.and_then(|o| o.include_usage).unwrap_or(false);
                }
                _ => {}
            }
        }
        let model = model.filter(|m| !m.is_empty()).ok_or_else(|| {
            ApiError::invalid("`model` is required")
                .param("model")
                .code("missing_model")
        })?;
        if model.len() > MAX_MODEL_NAME {
            return Err(ApiError::invalid(format!(
                "`model` is longer than {MAX_MODEL_NAME} bytes"
            ))
            .param("model"));
        }
        Ok(Envelope {
            fields,
            model,
            stream,
            include_usage,
            max_tokens,
        })
    }

    /// The raw value of a top-level field.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Re-emits the object with `model` replaced. Other values are copied verbatim.
    pub fn with_model(&self, model: &str) -> Vec<u8> {
        self.rebuild(model, &[])
    }

    /// Re-emits the object with `model` replaced and `stream_options.include_usage` set, so
    /// an OpenAI-type upstream reports usage at the end of a stream. Other stream options
    /// the client sent are kept.
    pub fn with_usage_requested(&self, model: &str) -> Vec<u8> {
        let mut opts = self
            .get("stream_options")
            .and_then(|v| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(v.get()).ok()
            })
            .unwrap_or_default();
        opts.insert("include_usage".into(), serde_json::Value::Bool(true));
        let opts = serde_json::Value::Object(opts).to_string();
        let mut out = self.rebuild(model, &["stream_options".to_owned()]);
        // `rebuild` always ends with the closing brace of a non-empty object (`model` is in it).
        out.pop();
        out.extend_from_slice(b",\"stream_options\":");
        out.extend_from_slice(opts.as_bytes());
        out.push(b'}');
        out
    }

    /// Re-emits the object with `model` replaced and the `drop` fields removed.
    pub fn rebuild(&self, model: &str, drop: &[String]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + model.len()
                + 16,
        );
        out.push(b'{');
        let kept = self
            .fields
            .iter()
            .filter(|(k, _)| !drop.iter().any(|d| d == k));
        for (i, (k, v)) in kept.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(&mut out, k);
            out.push(b':');
            if k == "model" {
                write_key(&mut out, model);
            } else {
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        out.push(b'}');
        out
    }
}

fn write_key(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str to JSON cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_drops_fields() {
        let e = Envelope::parse(br#"{"model":"m","user":"alice","max_tokens":5,"x":1}"#).unwrap();
        assert_eq!(e.max_tokens, Some(5));
        let out = e.rebuild("up", &["user".to_owned()]);
        assert_eq!(out, br#"{"model":"up","max_tokens":5,"x":1}"#);
        assert!(Envelope::parse(br#"{"model":"m","max_tokens":1.5}"#).is_err());
    }

    #[test]
    fn requests_usage_keeping_other_stream_options() {
        let e = Envelope::parse(
            br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false},"x":1}"#,
        )
        .unwrap();
        let out = e.with_usage_requested("up");
        assert_eq!(
            out,
            br#"{"model":"up","stream":true,"x":1,"stream_options":{"include_obfuscation":false,"include_usage":true}}"#
        );
        let again = Envelope::parse(&out).unwrap();
        assert!(again.include_usage);
        let bare = Envelope::parse(br#"{"model":"m","stream":true}"#).unwrap();
        assert_eq!(
            bare.with_usage_requested("m"),
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn reads_routing_fields() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"x":1}"#;
        let e = Envelope::parse(body).unwrap();
        assert_eq!(e.model, "m");
        assert!(e.stream && e.include_usage);
    }

    #[test]
    fn rewrites_model_and_keeps_everything_else_verbatim() {
        let body = br#"{ "temperature" : 1.00000000000000000001, "model": "public", "weird_\u00e9": [1,  2, {"deep": "v\n"}], "n": 12345678901234567890 }"#;
        let e = Envelope::parse(body).unwrap();
        let out = String::from_utf8(e.with_model("upstream")).unwrap();
        assert_eq!(
            out,
            r#"{"temperature":1.00000000000000000001,"model":"upstream","weird_é":[1,  2, {"deep": "v\n"}],"n":12345678901234567890}"#
        );
    }

    #[test]
    fn many_fields_are_bounded() {
        let mut body = String::from("{\"model\":\"m\"");
        for i in 0..2000 {
            body.push_str(&format!(",\"k{i}\":0"));
        }
        body.push('}');
        let Err(err) = Envelope::parse(body.as_bytes()) else {
            panic!("accepted 2000 fields");
        };
        assert!(err.message.contains("top-level fields"), "{}", err.message);
        let long = format!("{{\"model\":\"{}\"}}", "a".repeat(300));
        let Err(err) = Envelope::parse(long.as_bytes()) else {
            panic!("accepted a 300-byte model name");
        };
        assert!(err.message.contains("longer than"), "{}", err.message);
    }

    #[test]
    fn errors() {
        for (body, want) in [
            (&b"[]"[..], "a JSON object"),
            (b"{\"model\": 3}", "must be a string"),
            (b"{}", "`model` is required"),
            (b"{\"model\":\"a\",\"model\":\"b\"}", "duplicate key"),
            (
                b"{\"model\":\"a\",\"stream\":\"yes\"}",
                "`stream` must be a boolean",
            ),
            (b"{\"model\": \"a\"", "line 1"),
            (b"", "empty"),
        ] {
            let Err(err) = Envelope::parse(body) else {
                panic!("accepted {:?}", String::from_utf8_lossy(body));
            };
            assert!(
                err.message.contains(want),
                "{} should mention {want}",
                err.message
            );
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        }
    }
}
