//! The gateway's own OAuth 2.1 client for upstreams that want a bearer token: the client
//! credentials grant (RFC 6749 §4.4), the token cached until shortly before it expires and
//! shared by every session to that server. The client's own token is never involved.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tollgate_core::config::OAuthClientConfig;

use super::{HttpClient, UpstreamError};

/// A token is renewed this long before the server says it expires.
const EARLY: Duration = Duration::from_secs(30);
/// Used when the token endpoint does not say how long a token lives.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

pub struct TokenSource {
    pub cfg: OAuthClientConfig,
    client: HttpClient,
    cached: std::sync::Mutex<Option<(HeaderValue, Instant)>>,
    /// One refresh at a time; the others wait for its result.
    refresh: tokio::sync::Mutex<()>,
}

impl TokenSource {
    pub fn new(cfg: OAuthClientConfig, client: HttpClient) -> TokenSource {
        TokenSource {
            cfg,
            client,
            cached: std::sync::Mutex::default(),
            refresh: tokio::sync::Mutex::default(),
        }
    }

    pub(crate) fn current(&self) -> Option<HeaderValue> {
        let c = self.cached.lock().ok()?;
        c.as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    /// The `Authorization` value to send now.
    pub async fn bearer(&self) -> Result<HeaderValue, UpstreamError> {
        if let Some(v) = self.current() {
            return Ok(v);
        }
        let _one = self.refresh.lock().await;
        if let Some(v) = self.current() {
            return Ok(v);
        }
        let (value, lifetime) = self.fetch().await?;
        let until = Instant::now() + lifetime.saturating_sub(EARLY).max(Duration::from_secs(1));
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((value.clone(), until));
        }
        Ok(value)
    }

    /// Forgets `stale` after the upstream refused it (a revoked or rotated token), so the
    /// next call gets a fresh one.
    pub fn invalidate(&self, stale: &HeaderValue) {
        if let Ok(mut c) = self.cached.lock() {
            if c.as_ref().is_some_and(|(v, _)| v == stale) {
                *c = None;
            }
        }
    }

    async fn fetch(&self) -> Result<(HeaderValue, Duration), UpstreamError> {
        let cfg = &self.cfg;
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = &cfg.scope {
            form.push(("scope", s));
        }
        if let Some(a) = &cfg.audience {
            form.push(("resource", a));
            form.push(("audience", a));
        }
        let body = serde_urlencoded::to_string(&form)
            .map_err(|e| UpstreamError::Protocol(format!("token request: {e}")))?;
        // client_secret_basic: both parts form-encoded, then base64 (RFC 6749 §2.3.1).
        let enc = |s: &str| {
            serde_urlencoded::to_string([("", s)])
                .map(|p| p.trim_start_matches('=').to_owned())
                .unwrap_or_default()
        };
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&cfg.client_id),
            enc(cfg.client_secret.expose())
        ));
        let mut auth = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|e| UpstreamError::Protocol(format!("client credentials: {e}")))?;
        auth.set_sensitive(true);
        let req = Request::post(&cfg.token_url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, auth)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| UpstreamError::Protocol(format!("token request: {e}")))?;
        let res = tokio::time::timeout(Duration::from_secs(15), self.client.request(req))
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(|e| UpstreamError::Auth(format!("the token endpoint is unreachable: {e}")))?;
        let status = res.status();
        let bytes = Limited::new(res.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| UpstreamError::Closed(format!("token endpoint: {e}")))?
            .to_bytes();
        let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            // The error code and description, never the body verbatim (it may echo secrets).
            let code = parsed.get("error").and_then(Value::as_str).unwrap_or("?");
            return Err(UpstreamError::Auth(format!(
                "the token endpoint answered HTTP {} ({code})",
                status.as_u16()
            )));
        }
        let token = parsed
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                UpstreamError::Protocol("token endpoint answered without access_token".into())
            })?;
        let kind = parsed
            .get("token_type")
            .and_then(Value::as_str)
            .unwrap_or("Bearer");
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(UpstreamError::Protocol(format!(
                "token endpoint issued a {kind:?} token; only bearer tokens are supported"
            )));
        }
        let lifetime = parsed
            .get("expires_in")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| UpstreamError::Protocol("token is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok((value, lifetime))
    }
}
