//! JWT authentication: RS256, ES256 and EdDSA tokens verified against a JWKS file or URL,
//! every kind of bad token refused with 401, claims mapped to the principal policies see.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tollgate_testkit::{MockUpstream, Reply};

use crate::harness::*;

const ISSUER: &str = "https://issuer.test";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tollgate-testkit/fixtures");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signing keys for the three algorithms, with their public JWKs.
struct Issuer {
    rs: EncodingKey,
    es: EncodingKey,
    ed: EncodingKey,
    other_ed: EncodingKey,
    jwks: Value,
}

impl Issuer {
    fn new() -> Issuer {
        let rng = ring::rand::SystemRandom::new();
        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed_pub = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let other_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let es_pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let es_pub =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, es_pkcs8.as_ref(), &rng)
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec();
        let rs_pem = std::fs::read(format!("{FIXTURES}/jwt-rs256.pem")).unwrap();
        let rs_jwk: Value = serde_json::from_slice(
            &std::fs::read(format!("{FIXTURES}/jwt-rs256.jwk.json")).unwrap(),
        )
        .unwrap();
        Issuer {
            rs: EncodingKey::from_rsa_pem(&rs_pem).unwrap(),
            es: EncodingKey::from_ec_der(es_pkcs8.as_ref()),
            ed: EncodingKey::from_ed_der(ed_pkcs8.as_ref()),
            other_ed: EncodingKey::from_ed_der(other_pkcs8.as_ref()),
            jwks: json!({"keys": [
                rs_jwk,
                {"kty": "EC", "crv": "P-256", "kid": "es", "x": b64(&es_pub[1..33]), "y": b64(&es_pub[33..65])},
                {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(&ed_pub)},
            ]}),
        }
    }

    fn token(&self, alg: Algorithm, kid: &str, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let key = match (alg, kid) {
            (Algorithm::RS256, _) => &self.rs,
            (Algorithm::ES256, _) => &self.es,
            (_, "forged") => &self.other_ed,
            _ => &self.ed,
        };
        let kid_header = if kid == "forged" { "ed" } else { kid };
        header.kid = Some(kid_header.to_owned());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": "tollgate", "sub": "svc-42", "exp": now() + 300, "team": "ml", "roles": ["reader", "writer"], "email": "a@example.com"});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn jwt_yaml(source: &str) -> String {
    format!(
        "{MOCK}auth:\n  jwt:\n    issuer: {ISSUER}\n    audiences: [tollgate]\n    {source}\n    clock_skew: 5s\n    jwks_min_refresh: 1h\n    claims: {{user: email}}\npolicies:\n  - name: tokens\n    applies_to: \"principal.subject != ''\"\n    rules:\n      - name: no-agents\n        when: \"'agent-7' in principal.delegation && principal.delegation.size() == 2\"\n        action: deny\n      - name: ml-team\n        when: \"principal.team == 'ml' && 'writer' in principal.roles && principal.user == 'a@example.com'\"\n        action: allow\n"
    )
}

#[tokio::test]
async fn tokens_are_verified_and_mapped() {
    let issuer = Issuer::new();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks.to_string()).unwrap();
    let t = start(&jwt_yaml(&format!("jwks_file: {}", jwks.display()))).await;
    let chat = |token: String| {
        let client = t.client.clone();
        async move {
            client
                .post_json(
                    "/v1/chat/completions",
                    &token,
                    &chat_body("mock-echo", "hi"),
                )
                .await
        }
    };

    for alg in [
        (Algorithm::RS256, "rs"),
        (Algorithm::ES256, "es"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let res = chat(issuer.token(alg.0, alg.1, claims(json!({})))).await;
        assert_eq!(res.status, 200, "{:?}: {}", alg.0, res.text());
    }
    // A delegated token: the policy sees who acts on whose behalf.
    let delegated = claims(json!({"act": {"sub": "agent-7", "act": {"sub": "orchestrator"}}}));
    let res = chat(issuer.token(Algorithm::EdDSA, "ed", delegated)).await;
    assert_eq!(res.status, 403, "no rule allows agents acting for others");
    assert!(res.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens/no-agents"));

    // The policy sees the mapped claims: another team is denied by default.
    let res = chat(issuer.token(Algorithm::EdDSA, "ed", claims(json!({"team": "web"})))).await;
    assert_eq!(res.status, 403);
    assert!(res.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens/default"));

    let bad: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            issuer.token(Algorithm::EdDSA, "ed", claims(json!({"exp": now() - 3600}))),
            "expired",
        ),
        (
            "audience",
            issuer.token(
                Algorithm::EdDSA,
                "ed",
                claims(json!({"aud": "someone-else"})),
            ),
            "audience",
        ),
        (
            "issuer",
            issuer.token(
                Algorithm::EdDSA,
                "ed",
                claims(json!({"iss": "https://evil.test"})),
            ),
            "issuer",
        ),
        (
            "signature",
            issuer.token(Algorithm::EdDSA, "forged", claims(json!({}))),
            "signature",
        ),
        (
            "kid",
            issuer.token(Algorithm::EdDSA, "nope", claims(json!({}))),
            "unknown signing key",
        ),
    ];
    for (what, token, want) in bad {
        let res = chat(token).await;
        assert_eq!(res.status, 401, "{what}");
        let msg = res.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(want), "{what}: {msg}");
    }
    // alg: none, hand-made: refused before any key is looked at.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(json!({})).to_string().as_bytes())
    );
    let res = chat(none).await;
    assert_eq!(res.status, 401);
    // An HMAC token signed with a public key's bytes (the classic confusion) is refused too.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"k"),
    )
    .unwrap();
    assert_eq!(chat(hs).await.status, 401);
}

#[tokio::test]
async fn jwks_url_is_fetched_and_refreshed_on_unknown_kid_at_most_once() {
    let issuer = Issuer::new();
    let up = MockUpstream::start().await;
    // First fetch (at start): only the RSA key.
    up.push(Reply::json(
        200,
        json!({"keys": [issuer.jwks["keys"][0].clone()]}),
    ));
    let url = format!("http://{}/jwks.json", up.addr);
    let t = start(&jwt_yaml(&format!("jwks_url: {url}"))).await;
    assert_eq!(up.requests().len(), 1);
    // A token signed by a key published later: one refresh, then accepted.
    up.push(Reply::json(200, issuer.jwks.clone()));
    let res = t
        .client
        .post_json(
            "/v1/chat/completions",
            &issuer.token(Algorithm::EdDSA, "ed", claims(json!({}))),
            &chat_body("mock-echo", "x"),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.requests().len(), 2);
    // Unknown kids do not hammer the issuer: no new fetch within jwks_min_refresh.
    for _ in 0..3 {
        let res = t
            .client
            .post_json(
                "/v1/chat/completions",
                &issuer.token(Algorithm::EdDSA, "nope", claims(json!({}))),
                &chat_body("mock-echo", "x"),
            )
            .await;
        assert_eq!(res.status, 401);
    }
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn bad_jwt_config_is_reported_with_paths() {
    let err = tollgate_core::config::Config::parse(
        "auth:\n  jwt:\n    issuer: x\n    audiences: []\n    algorithms: [HS256]\n",
        "t",
        &|_| None,
    )
    .unwrap_err();
    let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["auth.jwt", "auth.jwt.algorithms[0]", "auth.jwt.audiences"]
    );
}

#[tokio::test]
async fn agents_from_tokens_have_their_own_budgets_and_ledger_rows() {
    let issuer = Issuer::new();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks.to_string()).unwrap();
    let yaml = jwt_yaml(&format!("jwks_file: {}", jwks.display()))
        + "prices:\n  - model: echo\n    input_per_mtok: 1000\n    output_per_mtok: 1000\nbudgets:\n  - name: per-agent\n    scope: agent\n    period: daily\n    limit_usd: 0.02\n";
    let t = start(&yaml).await;
    let chat = |agent: &str| {
        let token = issuer.token(Algorithm::EdDSA, "ed", claims(json!({"agent": agent})));
        let client = t.client.clone();
        async move {
            client
                .post_json(
                    "/v1/chat/completions",
                    &token,
                    &chat_body("mock-echo", "hi"),
                )
                .await
        }
    };
    let mut served = 0;
    let refused = loop {
        let res = chat("planner").await;
        if res.status != 200 {
            break res;
        }
        served += 1;
        assert!(served < 100, "the agent's budget never ran out");
    };
    assert_eq!(refused.status, 429, "{}", refused.text());
    let msg = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("agent \"planner\""), "{msg}");
    // Another agent has its own budget.
    assert_eq!(chat("writer").await.status, 200);
    let rows = t.client.get("/admin/v1/ledger", MASTER).await.json();
    let agents: Vec<&str> = rows["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["agent"].as_str())
        .collect();
    assert_eq!(agents.iter().filter(|a| **a == "planner").count(), served);
    assert!(agents.contains(&"writer"));
}
