//! JWT bearer authentication beside virtual keys: signatures checked against a JWKS (from a URL,
//! cached and refreshed on an unknown `kid` at most once per `jwks_min_refresh`, or from a
//! file), issuer, audience and expiry checked with a clock skew, and claims mapped to a
//! [`Principal`] by configuration.
//!
//! Only RS256, ES256 and EdDSA are accepted; `alg: none` and HMAC never are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{JwksSource, JwtConfig};
use crate::error::{ApiError, ErrorKind};
use crate::identity::Principal;

const MAX_JWKS: usize = 1024 * 1024;

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid`, tried in order when the token names none.
    unnamed: Vec<(DecodingKey, Algorithm)>,
}

pub struct JwtVerifier {
    cfg: JwtConfig,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<Keys>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, message).code("invalid_token")
}

/// Whether a presented credential looks like a JWT rather than a virtual key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|&b| b == b'.').count() == 2
}

fn algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn parse_jwks(body: &[u8]) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("invalid JWKS: {e}"))?;
    let mut keys = Keys {
        by_kid: HashMap::new(),
        unnamed: Vec::new(),
    };
    for jwk in &set.keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            // Symmetric keys have no place in a JWKS we trust.
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => continue,
        };
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), (key, alg));
            }
            None => keys.unnamed.push((key, alg)),
        }
    }
    Ok(keys)
}

impl JwtVerifier {
    /// Loads the JWKS (file or URL) once; later fetches happen on unknown `kid`s.
    pub async fn new(cfg: JwtConfig) -> Result<JwtVerifier, String> {
        let algorithms = cfg.algorithms.iter().filter_map(|a| algorithm(a)).collect();
        let keys = match (&cfg.jwks, load(&cfg.jwks).await) {
            (_, Ok(keys)) => keys,
            // An issuer that is down must not keep the gateway from starting: start with no
            // keys and fetch again on the first token.
            (JwksSource::JwksUrl(url), Err(e)) => {
                tracing::warn!(url, error = %e, "JWKS not loaded at start; will retry on the first token");
                Keys {
                    by_kid: HashMap::new(),
                    unnamed: Vec::new(),
                }
            }
            (JwksSource::JwksFile(_), Err(e)) => return Err(e),
        };
        Ok(JwtVerifier {
            cfg,
            algorithms,
            keys: ArcSwap::from_pointee(keys),
            // The first unknown `kid` may always trigger a fetch: a key rotated just after start
            // must not wait out the rate limit.
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &JwtConfig {
        &self.cfg
    }

    /// Verifies a token and maps its claims to a principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("malformed token: {e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(unauthorized(format!(
                "token algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = match self.find(header.kid.as_deref(), header.alg) {
            Some(k) => k,
            None => {
                self.refresh().await;
                self.find(header.kid.as_deref(), header.alg)
                    .ok_or_else(|| {
                        unauthorized(format!(
                            "unknown signing key {:?}",
                            header.kid.as_deref().unwrap_or("")
                        ))
                    })?
            }
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.cfg.clock_skew.as_secs();
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind as K;
                    let why = match e.kind() {
                        K::ExpiredSignature => "token has expired".to_owned(),
                        K::InvalidSignature => "token signature is invalid".to_owned(),
                        K::InvalidAudience => "token audience is not accepted".to_owned(),
                        K::InvalidIssuer => "token issuer is not accepted".to_owned(),
                        K::ImmatureSignature => "token is not valid yet".to_owned(),
                        K::MissingRequiredClaim(c) => format!("token lacks the {c:?} claim"),
                        other => format!("invalid token: {other:?}"),
                    };
                    unauthorized(why)
                })?;
        Ok(self.principal(&data.claims))
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys
                .by_kid
                .get(kid)
                .filter(|(_, a)| *a == alg)
                .map(|(k, _)| k.clone()),
            None => keys
                .unnamed
                .iter()
                .find(|(_, a)| *a == alg)
                .map(|(k, _)| k.clone()),
        }
    }

    /// Re-fetches a URL JWKS, at most once per `jwks_min_refresh`.
    async fn refresh(&self) {
        if !matches!(self.cfg.jwks, JwksSource::JwksUrl(_)) {
            return;
        }
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.cfg.jwks_min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        match load(&self.cfg.jwks).await {
            Ok(keys) => self.keys.store(Arc::new(keys)),
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys"),
        }
    }

    fn principal(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Principal {
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let roles = match claims.get(&self.cfg.claims.roles) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect(),
            // OAuth `scope` style: space-separated.
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut p = Principal::from_token(
            text("sub").unwrap_or_default(),
            text(&self.cfg.claims.user),
            text(&self.cfg.claims.team),
            roles,
            text(&self.cfg.claims.tenant),
            text(&self.cfg.claims.agent),
        );
        // RFC 8693 `act`: {"sub": current actor, "act": {"sub": prior actor, ...}}. Bounded so
        // a hostile token cannot make us walk forever.
        let mut act = claims.get("act");
        while let Some(serde_json::Value::Object(a)) = act {
            if p.delegation.len() == 16 {
                break;
            }
            match a.get("sub").and_then(|s| s.as_str()) {
                Some(sub) => p.delegation.push(sub.to_owned()),
                None => break,
            }
            act = a.get("act");
        }
        p
    }
}

async fn load(source: &JwksSource) -> Result<Keys, String> {
    match source {
        JwksSource::JwksFile(path) => {
            let body = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
            parse_jwks(&body)
        }
        JwksSource::JwksUrl(url) => parse_jwks(&fetch(url).await?),
    }
}

async fn fetch(url: &str) -> Result<Bytes, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let uri: http::Uri = url.parse().map_err(|e| format!("JWKS URL {url:?}: {e}"))?;
    let get = async {
        let res = client
            .get(uri)
            .await
            .map_err(|e| format!("fetching JWKS: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("fetching JWKS: status {}", res.status()));
        }
        Limited::new(res.into_body(), MAX_JWKS)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("reading JWKS: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .map_err(|_| "fetching JWKS timed out".to_owned())?
}
