//! Agent cards: fetched from the upstream (or configured inline), checked against the agent's
//! trusted keys, rewritten so every interface points at the gateway and the gateway's own
//! security scheme is the one advertised, and re-signed with the gateway's key when the
//! upstream card was signed (a rewritten card's old signatures would no longer match).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};
use tollgate_core::config::AgentConfig;
use tollgate_core::signing::GatewayKey;

/// The fields of a 1.0 `AgentCard` (and of its nested messages) that signatures cover: a
/// verifier parses the card into the 1.0 schema first, so 0.3 fields a hybrid card carries
/// are not part of what it checks.
const CARD_FIELDS: [&str; 14] = [
    "name",
    "description",
    "supportedInterfaces",
    "provider",
    "version",
    "documentationUrl",
    "capabilities",
    "securitySchemes",
    "securityRequirements",
    "defaultInputModes",
    "defaultOutputModes",
    "skills",
    "signatures",
    "iconUrl",
];
const CAPABILITY_FIELDS: [&str; 4] = [
    "streaming",
    "pushNotifications",
    "extensions",
    "extendedAgentCard",
];
const INTERFACE_FIELDS: [&str; 4] = ["url", "protocolBinding", "tenant", "protocolVersion"];
const SKILL_FIELDS: [&str; 8] = [
    "id",
    "name",
    "description",
    "tags",
    "examples",
    "inputModes",
    "outputModes",
    "securityRequirements",
];

fn keep(v: &Value, fields: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| fields.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Drops empty strings, lists and objects, as the canonical form wants.
fn clean(v: Value) -> Option<Value> {
    match v {
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let a: Vec<Value> = a.into_iter().filter_map(clean).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        Value::Object(m) => {
            let m: Map<String, Value> = m
                .into_iter()
                .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other),
    }
}

/// The bytes a card signature covers: the card without `signatures`, projected on the 1.0
/// schema when the card has 1.0 interfaces, empty values dropped, in canonical (RFC 8785)
/// form.
pub fn signing_input(card: &Value) -> Vec<u8> {
    let mut c = card.clone();
    if c.get("supportedInterfaces").is_some() {
        c = keep(&c, &CARD_FIELDS);
        if let Some(caps) = c.get("capabilities").map(|v| keep(v, &CAPABILITY_FIELDS)) {
            c["capabilities"] = caps;
        }
        for (field, fields) in [
            ("supportedInterfaces", &INTERFACE_FIELDS[..]),
            ("skills", &SKILL_FIELDS[..]),
        ] {
            if let Some(Value::Array(items)) = c.get_mut(field) {
                for item in items.iter_mut() {
                    *item = keep(item, fields);
                }
            }
        }
    }
    if let Some(m) = c.as_object_mut() {
        m.remove("signatures");
    }
    let c = clean(c).unwrap_or_else(|| json!({}));
    let mut out = Vec::new();
    tollgate_core::canonical::write(&c, &mut out);
    out
}

/// The SHA-256 of a card's canonical form (signatures included), for change detection.
pub fn digest(card: &Value) -> String {
    tollgate_core::canonical::sha256_hex(card)
}

/// Checks that at least one of the card's signatures verifies with a key of `jwks`.
pub fn verify(card: &Value, jwks: &Value) -> Result<(), String> {
    let sigs = card
        .get("signatures")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or("the card is not signed")?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(jwks.clone()).map_err(|e| format!("invalid trusted_keys: {e}"))?;
    let payload = B64.encode(signing_input(card));
    for sig in sigs {
        let (Some(protected), Some(signature)) = (
            sig.get("protected").and_then(Value::as_str),
            sig.get("signature").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some(header) = B64
            .decode(protected)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            continue;
        };
        let Some(alg) = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<jsonwebtoken::Algorithm>().ok())
        else {
            continue;
        };
        // Symmetric algorithms would let anyone holding the "public" key forge cards.
        if matches!(
            alg,
            jsonwebtoken::Algorithm::HS256
                | jsonwebtoken::Algorithm::HS384
                | jsonwebtoken::Algorithm::HS512
        ) {
            continue;
        }
        let kid = header.get("kid").and_then(Value::as_str);
        for jwk in set
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.common.key_id.as_deref() == kid)
        {
            let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let message = format!("{protected}.{payload}");
            if jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg)
                .unwrap_or(false)
            {
                return Ok(());
            }
        }
    }
    Err("no signature on the card verifies with the agent's trusted keys".into())
}

/// Signs `card` with the gateway's key, replacing whatever signatures it had.
pub fn sign(card: &mut Value, key: &GatewayKey, jku: &str) -> Result<(), String> {
    let input = signing_input(card);
    let mut header = Map::new();
    header.insert("typ".into(), "JOSE".into());
    header.insert("jku".into(), jku.into());
    let [protected, _, signature] = key.jws(header, &input)?;
    card["signatures"] = json!([{"protected": protected, "signature": signature}]);
    Ok(())
}

/// Where an upstream URL lands at the gateway: under `/a2a/{agent}`, keeping the path below
/// the replica base it belongs to. `None` for URLs on another origin (they are not proxied).
fn gateway_url(upstream: &str, agent: &AgentConfig, base: &str) -> Option<String> {
    let origin_of = |u: &str| {
        let uri: http::Uri = u.parse().ok()?;
        Some((
            uri.scheme_str()?.to_owned(),
            uri.authority()?.as_str().to_ascii_lowercase(),
            uri.path().trim_end_matches('/').to_owned(),
        ))
    };
    let (scheme, authority, path) = origin_of(upstream)?;
    let owned = agent
        .urls
        .iter()
        .any(|u| origin_of(u).is_some_and(|(s, a, _)| s == scheme && a == authority));
    if !owned {
        return None;
    }
    // Below the replica base's path when the URL is under it; the upstream's whole path
    // otherwise (a base `http://h/agent` with an interface at `http://h/rpc`).
    let below = agent
        .urls
        .iter()
        .filter_map(|u| origin_of(u))
        .find_map(|(_, _, p)| {
            if p.is_empty() {
                return None;
            }
            path.strip_prefix(&p)
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                .map(str::to_owned)
        })
        .unwrap_or(path);
    Some(format!("{base}/a2a/{}{below}", agent.name))
}

/// The card as the gateway serves it: interfaces point at the gateway (ones it cannot proxy
/// are dropped), and the gateway's bearer scheme replaces the upstream's security schemes.
pub fn rewrite(card: &Value, agent: &AgentConfig, base: &str) -> Value {
    let mut c = card.clone();
    let Some(m) = c.as_object_mut() else {
        return c;
    };
    let v1 = m.contains_key("supportedInterfaces");
    if let Some(Value::Array(ifaces)) = m.get_mut("supportedInterfaces") {
        ifaces.retain_mut(|i| {
            let binding = i
                .get("protocolBinding")
                .and_then(Value::as_str)
                .unwrap_or("");
            if binding.eq_ignore_ascii_case("GRPC") {
                return false;
            }
            match i
                .get("url")
                .and_then(Value::as_str)
                .and_then(|u| gateway_url(u, agent, base))
            {
                Some(u) => {
                    i["url"] = u.into();
                    true
                }
                None => false,
            }
        });
    }
    if let Some(u) = m.get("url").and_then(Value::as_str) {
        let new =
            gateway_url(u, agent, base).unwrap_or_else(|| format!("{base}/a2a/{}", agent.name));
        m.insert("url".into(), new.into());
    }
    if let Some(Value::Array(ifaces)) = m.get_mut("additionalInterfaces") {
        ifaces.retain_mut(|i| {
            let transport = i.get("transport").and_then(Value::as_str).unwrap_or("");
            if transport.eq_ignore_ascii_case("GRPC") {
                return false;
            }
            match i
                .get("url")
                .and_then(Value::as_str)
                .and_then(|u| gateway_url(u, agent, base))
            {
                Some(u) => {
                    i["url"] = u.into();
                    true
                }
                None => false,
            }
        });
    }
    // Callers authenticate to the gateway, never to the agent.
    let scheme = if v1 {
        json!({"tollgate": {"httpAuthSecurityScheme": {
            "scheme": "Bearer",
            "description": "a tollgate virtual key or a token tollgate accepts",
        }}})
    } else {
        json!({"tollgate": {"type": "http", "scheme": "bearer",
            "description": "a tollgate virtual key or a token tollgate accepts"}})
    };
    m.insert("securitySchemes".into(), scheme);
    if v1 {
        m.insert(
            "securityRequirements".into(),
            json!([{"schemes": {"tollgate": {}}}]),
        );
    }
    if m.contains_key("security") || !v1 {
        m.insert("security".into(), json!([{"tollgate": []}]));
    }
    if let Some(Value::Array(skills)) = m.get_mut("skills") {
        for s in skills.iter_mut().filter_map(Value::as_object_mut) {
            s.remove("security");
            s.remove("securityRequirements");
        }
    }
    m.remove("signatures");
    c
}

/// A fetched card and its digest.
#[derive(Debug)]
pub struct Fetched {
    pub card: Value,
    pub digest: String,
    pub signed: bool,
}

pub type Shared = Arc<Fetched>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn agent() -> AgentConfig {
        AgentConfig {
            name: "echo".into(),
            urls: vec![
                "http://127.0.0.1:9001".into(),
                "http://127.0.0.1:9002".into(),
            ],
            card_url: "http://127.0.0.1:9001/.well-known/agent-card.json".into(),
            card: None,
            headers: BTreeMap::new(),
            identity_header: "authorization".into(),
            audience: "echo".into(),
            methods: vec![],
            trusted_keys: None,
            timeout: None,
        }
    }

    fn hybrid() -> Value {
        json!({
            "name": "echo", "version": "1.0.0",
            "supportedInterfaces": [
                {"url": "http://127.0.0.1:9001/a2a/jsonrpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": "http://127.0.0.1:9001/a2a/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
                {"url": "127.0.0.1:50051", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
                {"url": "http://elsewhere:80/rpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
            ],
            "capabilities": {"streaming": true, "stateTransitionHistory": false},
            "skills": [{"id": "echo", "name": "Echo", "security": [{"x": []}]}],
            "url": "http://127.0.0.1:9001/a2a/jsonrpc",
            "additionalInterfaces": [{"transport": "HTTP+JSON", "url": "http://127.0.0.1:9001/a2a/rest"}],
            "protocolVersion": "0.3", "preferredTransport": "JSONRPC",
            "securitySchemes": {"upstream": {"apiKeySecurityScheme": {"name": "x"}}},
            "signatures": [{"protected": "e30", "signature": "AA"}]
        })
    }

    #[test]
    fn rewrite_points_every_interface_at_the_gateway() {
        let c = rewrite(&hybrid(), &agent(), "http://gw:4000");
        let urls: Vec<&str> = c["supportedInterfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "http://gw:4000/a2a/echo/a2a/jsonrpc",
                "http://gw:4000/a2a/echo/a2a/rest"
            ]
        );
        assert_eq!(c["url"], "http://gw:4000/a2a/echo/a2a/jsonrpc");
        assert_eq!(
            c["additionalInterfaces"][0]["url"],
            "http://gw:4000/a2a/echo/a2a/rest"
        );
        assert!(c["securitySchemes"].get("upstream").is_none());
        assert!(c["skills"][0].get("security").is_none());
        assert!(c.get("signatures").is_none());
    }

    #[test]
    fn base_paths_are_stripped() {
        let mut a = agent();
        a.urls = vec!["http://h:1/agents/echo".into()];
        assert_eq!(
            gateway_url("http://h:1/agents/echo/rpc", &a, "https://gw").as_deref(),
            Some("https://gw/a2a/echo/rpc")
        );
        assert_eq!(
            gateway_url("http://h:1/other", &a, "https://gw").as_deref(),
            Some("https://gw/a2a/echo/other")
        );
        assert_eq!(gateway_url("http://h:2/rpc", &a, "https://gw"), None);
    }

    #[test]
    fn signed_cards_verify_and_tampering_breaks_them() {
        let key = GatewayKey::from_stored(&GatewayKey::generate().unwrap()).unwrap();
        let mut c = rewrite(&hybrid(), &agent(), "http://gw");
        sign(&mut c, &key, "http://gw/a2a/.well-known/jwks.json").unwrap();
        verify(&c, &key.jwks()).unwrap();
        // 0.3 fields are outside what the signature covers; 1.0 fields are inside.
        let mut legacy = c.clone();
        legacy["preferredTransport"] = "HTTP+JSON".into();
        verify(&legacy, &key.jwks()).unwrap();
        let mut moved = c.clone();
        moved["supportedInterfaces"][0]["url"] = "http://evil/rpc".into();
        assert!(verify(&moved, &key.jwks()).is_err());
        let other = GatewayKey::from_stored(&GatewayKey::generate().unwrap()).unwrap();
        assert!(verify(&c, &other.jwks()).is_err());
    }
}
