//! The gateway's own signing key (ECDSA P-256, ES256): it mints the short-lived identity
//! tokens upstream agents receive, re-signs agent cards it rewrites, and signs push
//! notifications. The key lives in the store (so every replica signs with the same one) and
//! its public half is served as a JWKS for agents to verify with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::identity::Principal;

/// Accepted clock skew when checking a token's times.
const LEEWAY_S: i64 = 30;
/// The longest `act` chain accepted or minted.
const MAX_CHAIN: usize = 16;

pub struct GatewayKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    public: Vec<u8>,
}

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl GatewayKey {
    /// A fresh key's PKCS#8 document, base64url-encoded (what the store keeps).
    pub fn generate() -> Result<String, String> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "cannot generate a signing key".to_owned())?;
        Ok(B64.encode(doc.as_ref()))
    }

    /// Loads a key from its stored form.
    pub fn from_stored(stored: &str) -> Result<GatewayKey, String> {
        let der = B64
            .decode(stored.trim())
            .map_err(|_| "the stored signing key is not base64url".to_owned())?;
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|_| "the stored signing key is not a P-256 PKCS#8 key".to_owned())?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = B64.encode(&sha2::Sha256::digest(&public)[..12]);
        Ok(GatewayKey {
            pair,
            rng,
            kid,
            public,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWKS.
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04, then x and y (32 bytes each).
        let (x, y) = self.public[1..].split_at(32);
        json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(x),
            "y": B64.encode(y),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        }]})
    }

    fn sign(&self, input: &[u8]) -> Result<String, String> {
        self.pair
            .sign(&self.rng, input)
            .map(|s| B64.encode(s.as_ref()))
            .map_err(|_| "signing failed".to_owned())
    }

    /// A compact JWS over `payload` with `header` (to which `alg` and `kid` are added):
    /// `(protected, payload, signature)`, each base64url.
    pub fn jws(&self, header: Map<String, Value>, payload: &[u8]) -> Result<[String; 3], String> {
        let mut header = header;
        header.insert("alg".into(), "ES256".into());
        header.insert("kid".into(), self.kid.clone().into());
        let protected = B64.encode(Value::Object(header).to_string());
        let payload = B64.encode(payload);
        let signature = self.sign(format!("{protected}.{payload}").as_bytes())?;
        Ok([protected, payload, signature])
    }

    /// A signed JWT with these claims.
    pub fn mint(&self, claims: &Value) -> Result<String, String> {
        let mut header = Map::new();
        header.insert("typ".into(), "JWT".into());
        let [h, p, s] = self.jws(header, claims.to_string().as_bytes())?;
        Ok(format!("{h}.{p}.{s}"))
    }

    /// Whether `token` names this key in its header (so it is ours to verify).
    pub fn issued(&self, token: &str) -> bool {
        let Some(h) = token.split('.').next() else {
            return false;
        };
        B64.decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|h| h.get("kid").and_then(Value::as_str) == Some(&self.kid))
    }

    /// Checks a token this key minted: signature, algorithm, times and issuer.
    pub fn verify(&self, token: &str, issuer: &str, now_s: i64) -> Result<Value, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed token".into());
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed token header")?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err("unexpected token algorithm".into());
        }
        let sig = B64.decode(s).map_err(|_| "malformed token signature")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| "invalid token signature")?;
        let claims: Value = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed token claims")?;
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if exp + LEEWAY_S < now_s {
            return Err("the token has expired".into());
        }
        if claims.get("nbf").and_then(Value::as_i64).unwrap_or(0) > now_s + LEEWAY_S {
            return Err("the token is not valid yet".into());
        }
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err("the token has another issuer".into());
        }
        Ok(claims)
    }
}

/// The claims of an identity token for calling `audience` on behalf of `principal`: the
/// subject is whoever the principal ultimately acts for; when the principal is itself an
/// agent (it presented a token minted for it), it becomes the newest actor of the `act`
/// chain (RFC 8693).
pub fn identity_claims(
    principal: &Principal,
    issuer: &str,
    audience: &str,
    now_s: i64,
    ttl_s: i64,
    extra: Map<String, Value>,
) -> Value {
    let subject = principal
        .subject
        .clone()
        .unwrap_or_else(|| principal.label());
    let mut act: Option<Value> = None;
    for actor in principal.delegation.iter().take(MAX_CHAIN).rev() {
        let mut a = Map::new();
        a.insert("sub".into(), actor.clone().into());
        if let Some(prev) = act.take() {
            a.insert("act".into(), prev);
        }
        act = Some(Value::Object(a));
    }
    let mut jti = [0u8; 16];
    if getrandom::fill(&mut jti).is_err() {
        jti = fastrand::u128(..).to_le_bytes();
    }
    let mut c = Map::new();
    c.insert("iss".into(), issuer.into());
    c.insert("aud".into(), audience.into());
    c.insert("sub".into(), subject.into());
    c.insert("iat".into(), now_s.into());
    c.insert("nbf".into(), now_s.into());
    c.insert("exp".into(), (now_s + ttl_s).into());
    c.insert("jti".into(), crate::hex::encode(&jti).into());
    c.insert("name".into(), principal.name.clone().into());
    for (k, v) in [
        ("user", &principal.user),
        ("team", &principal.team),
        ("tenant", &principal.tenant),
    ] {
        if let Some(v) = v {
            c.insert(k.into(), v.clone().into());
        }
    }
    if !principal.roles.is_empty() {
        c.insert("roles".into(), principal.roles.clone().into());
    }
    if let Some(a) = act {
        c.insert("act".into(), a);
    }
    c.extend(extra);
    Value::Object(c)
}

/// The principal presenting a token the gateway minted: the agent it was minted for (its
/// audience) acting for the token's subject, after the actors already in its chain.
pub fn principal_from_claims(claims: &Value) -> Result<Principal, String> {
    let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let sub = text("sub").ok_or("the token has no subject")?;
    let agent = text("aud").ok_or("the token has no audience")?;
    let roles = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut p = Principal::from_token(
        sub,
        text("user"),
        text("team"),
        roles,
        text("tenant"),
        Some(agent.clone()),
    );
    if let Some(name) = text("name") {
        p.name = name;
    }
    p.delegation.push(agent);
    let mut act = claims.get("act");
    while let Some(Value::Object(a)) = act {
        if p.delegation.len() >= MAX_CHAIN {
            break;
        }
        if let Some(s) = a.get("sub").and_then(Value::as_str) {
            p.delegation.push(s.to_owned());
        }
        act = a.get("act");
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> GatewayKey {
        GatewayKey::from_stored(&GatewayKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn minted_tokens_verify_and_carry_the_chain() {
        let k = key();
        let user =
            Principal::from_token("alice".into(), None, Some("t1".into()), vec![], None, None);
        let t1 = k
            .mint(&identity_claims(
                &user,
                "tollgate",
                "planner",
                1000,
                300,
                Map::new(),
            ))
            .unwrap();
        assert!(k.issued(&t1));
        let claims = k.verify(&t1, "tollgate", 1100).unwrap();
        assert_eq!(claims["aud"], "planner");
        assert!(claims.get("act").is_none());
        // The planner calls on with that token: it becomes the actor.
        let planner = principal_from_claims(&claims).unwrap();
        assert_eq!(planner.agent.as_deref(), Some("planner"));
        assert_eq!(planner.subject.as_deref(), Some("alice"));
        assert_eq!(planner.team.as_deref(), Some("t1"));
        let t2 = k
            .mint(&identity_claims(
                &planner,
                "tollgate",
                "coder",
                1100,
                300,
                Map::new(),
            ))
            .unwrap();
        let c2 = k.verify(&t2, "tollgate", 1100).unwrap();
        assert_eq!(c2["sub"], "alice");
        assert_eq!(c2["act"], json!({"sub": "planner"}));
        let coder = principal_from_claims(&c2).unwrap();
        assert_eq!(coder.delegation, vec!["coder", "planner"]);
        let t3 = k
            .mint(&identity_claims(
                &coder,
                "tollgate",
                "tester",
                1100,
                300,
                Map::new(),
            ))
            .unwrap();
        let c3 = k.verify(&t3, "tollgate", 1100).unwrap();
        assert_eq!(
            c3["act"],
            json!({"sub": "coder", "act": {"sub": "planner"}})
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        let k = key();
        let p = Principal::from_token("bob".into(), None, None, vec![], None, None);
        let t = k
            .mint(&identity_claims(&p, "tollgate", "a", 1000, 60, Map::new()))
            .unwrap();
        assert!(k.verify(&t, "tollgate", 2000).is_err(), "expired");
        assert!(k.verify(&t, "other", 1000).is_err(), "issuer");
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] =
            B64.encode(b"{\"sub\":\"mallory\",\"aud\":\"a\",\"iss\":\"tollgate\",\"exp\":99999}");
        assert!(
            k.verify(&parts.join("."), "tollgate", 1000).is_err(),
            "tampered"
        );
        let other = key();
        assert!(other.verify(&t, "tollgate", 1000).is_err(), "another key");
        assert!(!other.issued(&t));
    }
}
