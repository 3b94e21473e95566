//! Admin console sessions: a signed, stateless cookie standing for the secret an
//! administrator signed in with, and the CSRF token bound to it.
//!
//! The cookie (`tollgate_session`) holds `v2.{issued}.{expires}.{secret hash}.{mac}`: when it
//! was issued (unix milliseconds), its expiry (unix seconds), the SHA-256 of the master key or
//! virtual key used to sign in, and an HMAC-SHA256 over all three under a key kept in the store
//! (`console.session_key`), so every replica accepts it. Each request resolves the hash again,
//! so rotating the master key, or revoking, disabling or rotating away the virtual key, ends
//! its sessions at once. Signing out records the time in the store
//! (`console.signed_out.{hash}`): every session of that secret issued until then ends, on
//! every replica (the cookie itself cannot be recalled). Sign-in attempts that fail are
//! counted per client address: [`SIGN_IN_FAILURES`] in [`SIGN_IN_WINDOW_MS`], then 429. The cookie is
//! `HttpOnly` and `SameSite=Strict`, and `Secure` unless the console is reached on a loopback
//! name over plain HTTP. A cookie alone authorizes nothing: every request it authenticates
//! must also carry `x-tollgate-csrf`, a second HMAC over the cookie that only the console's own
//! pages can read (from the sign-in answer or `GET /ui/api/session`).

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::store::SecretHash;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";
/// The header every cookie-authenticated request must carry.
pub const CSRF_HEADER: &str = "x-tollgate-csrf";
/// How long a session lasts.
pub const LIFETIME_SECS: i64 = 12 * 3600;

/// The store's meta entry holding the signing key.
pub const KEY_META: &str = "console.session_key";
/// Failed sign-ins one client address may make in [`SIGN_IN_WINDOW_MS`] before it must wait.
pub const SIGN_IN_FAILURES: u64 = 10;
/// The window failed sign-ins are counted over.
pub const SIGN_IN_WINDOW_MS: i64 = 5 * 60 * 1000;

/// The store's meta entry recording when the secret hashing to `hash` last signed out.
pub fn signed_out_meta(hash: &SecretHash) -> String {
    format!("console.signed_out.{}", crate::hex::encode(hash))
}

pub struct SessionKey([u8; 32]);

/// A verified session cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub hash: SecretHash,
    /// When the cookie was issued, in unix milliseconds.
    pub issued_ms: i64,
    pub expires: i64,
    pub csrf: String,
}

impl SessionKey {
    pub fn new(key: [u8; 32]) -> SessionKey {
        SessionKey(key)
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length: this cannot fail.
        let mut m = match <HmacSha256 as Mac>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return [0; 32],
        };
        for p in parts {
            m.update(p);
            m.update(b"|");
        }
        m.finalize().into_bytes().into()
    }

    /// A cookie value for the secret hashing to `hash`, issued at `issued_ms` and valid until
    /// `expires`.
    pub fn issue(&self, hash: &SecretHash, issued_ms: i64, expires: i64) -> (String, Session) {
        let (iat, exp) = (issued_ms.to_string(), expires.to_string());
        let h = crate::hex::encode(hash);
        let mac =
            crate::hex::encode(&self.mac(&[b"v2", iat.as_bytes(), exp.as_bytes(), h.as_bytes()]));
        let value = format!("v2.{iat}.{exp}.{h}.{mac}");
        let csrf = self.csrf(&value);
        (
            value,
            Session {
                hash: *hash,
                issued_ms,
                expires,
                csrf,
            },
        )
    }

    fn csrf(&self, cookie: &str) -> String {
        crate::hex::encode(&self.mac(&[b"csrf", cookie.as_bytes()]))
    }

    /// The session a cookie value stands for, if its signature holds and it has not expired.
    pub fn verify(&self, value: &str, now: i64) -> Option<Session> {
        let mut it = value.split('.');
        let (Some("v2"), Some(iat), Some(exp), Some(h), Some(mac), None) = (
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
        ) else {
            return None;
        };
        let expected =
            crate::hex::encode(&self.mac(&[b"v2", iat.as_bytes(), exp.as_bytes(), h.as_bytes()]));
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let expires: i64 = exp.parse().ok()?;
        if expires <= now {
            return None;
        }
        let hash = crate::hex::decode32(h)?;
        Some(Session {
            hash,
            issued_ms: iat.parse().ok()?,
            expires,
            csrf: self.csrf(value),
        })
    }
}

/// The session cookie's value among a request's cookies.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v.trim())
}

/// Whether the request's CSRF header matches the session's token.
pub fn csrf_ok(headers: &HeaderMap, session: &Session) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(session.csrf.as_bytes())))
}

/// The `Set-Cookie` value for a session (or, with `None`, one that removes it).
pub fn set_cookie(value: Option<(&str, i64)>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some((v, max_age)) => {
            format!("{COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
        }
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_expire_and_resist_tampering() {
        let key = SessionKey::new([7; 32]);
        let (value, s) = key.issue(&[1; 32], 500_123, 1_000);
        assert_eq!(key.verify(&value, 999), Some(s.clone()));
        assert_eq!(s.issued_ms, 500_123);
        assert_eq!(key.verify(&value, 1_000), None, "expired");
        // Another key, a longer life, a later issue time, another hash: all refused.
        assert_eq!(SessionKey::new([8; 32]).verify(&value, 0), None);
        let longer = value.replacen(".1000.", ".9999.", 1);
        assert_eq!(key.verify(&longer, 0), None);
        let later = value.replacen("500123", "900123", 1);
        assert_eq!(key.verify(&later, 0), None);
        let other = value.replacen(&"01".repeat(32), &"02".repeat(32), 1);
        assert_eq!(key.verify(&other, 0), None);
        assert_eq!(key.verify("v2.1.1000", 0), None);
        assert_eq!(key.verify(&format!("{value}.x"), 0), None);
        // The CSRF token is bound to the cookie.
        let (value2, s2) = key.issue(&[1; 32], 500_123, 2_000);
        assert_ne!(s.csrf, s2.csrf);
        assert_ne!(value, value2);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_csrf_must_match() {
        let key = SessionKey::new([7; 32]);
        let (value, s) = key.issue(&[1; 32], 0, 1_000);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("a=b; {COOKIE}={value}; c=d").parse().unwrap(),
        );
        assert_eq!(cookie(&h), Some(value.as_str()));
        assert!(!csrf_ok(&h, &s));
        h.insert(CSRF_HEADER, "nope".parse().unwrap());
        assert!(!csrf_ok(&h, &s));
        h.insert(CSRF_HEADER, s.csrf.parse().unwrap());
        assert!(csrf_ok(&h, &s));
    }
}

/// `/ui/api/login`, `/ui/api/session` and `/ui/api/logout`.
pub fn router(core: std::sync::Arc<crate::Core>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/ui/api/login", post(api::login))
        .route("/ui/api/session", get(api::session))
        .route("/ui/api/logout", post(api::logout))
        .with_state(core)
}

mod api {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    use axum::Extension;
    use http::{HeaderMap, HeaderValue, StatusCode};
    use serde::Deserialize;
    use serde_json::json;

    use super::{Session, LIFETIME_SECS};
    use crate::admin::{body_json, respond};
    use crate::audit::AuditEvent;
    use crate::context::RequestContext;
    use crate::error::{ApiError, ErrorKind};
    use crate::http::PeerAddr;
    use crate::identity::Principal;
    use crate::ratelimit::{Admission, BucketCheck};
    use crate::Core;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Login {
        #[serde(default)]
        key: String,
    }

    /// Plain HTTP on a loopback name is the one place a browser keeps a cookie without
    /// `Secure`; everywhere else the cookie is `Secure`.
    fn secure(headers: &HeaderMap) -> bool {
        let proto_https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n,
            _ => host,
        };
        let loopback =
            matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.ends_with(".localhost");
        proto_https || !loopback
    }

    fn view(session: &Session, principal: &Principal) -> serde_json::Value {
        json!({
            "principal": principal.label(),
            "csrf": session.csrf,
            "expires_at": crate::time::rfc3339(session.expires),
        })
    }

    fn audited(
        rid: &Option<Extension<RequestContext>>,
        action: &str,
        who: &str,
        ok: bool,
    ) -> AuditEvent {
        let mut ev = AuditEvent::new(action, if ok { "success" } else { "failure" });
        if let Some(Extension(ctx)) = rid {
            ev.request_id = Some(ctx.request_id().to_owned());
            ev.trace_id = Some(ctx.trace.trace_id.clone());
        }
        ev.principal = Some(who.to_owned());
        ev
    }

    pub(super) async fn login(
        State(core): State<Arc<Core>>,
        rid: Option<Extension<RequestContext>>,
        peer: Option<Extension<PeerAddr>>,
        headers: HeaderMap,
        body: Body,
    ) -> Response {
        respond(
            async {
                let req: Login = body_json(&core, &headers, body).await?;
                let secret = req.key.trim();
                if secret.is_empty() {
                    return Err(ApiError::invalid(
                        "key is required: the master key or an admin's API key",
                    )
                    .param("key"));
                }
                // Every attempt takes one from the address's allowance of failures; one that
                // succeeds gives it back.
                let address =
                    peer.map_or_else(|| "unknown".to_owned(), |p| p.0 .0.ip().to_string());
                let attempts = [BucketCheck {
                    key: format!("console-sign-in\u{1f}{address}"),
                    rpm: None,
                    tpm: Some(super::SIGN_IN_FAILURES),
                    slot_ms: super::SIGN_IN_WINDOW_MS / (crate::ratelimit::SLOTS as i64 - 1),
                }];
                let now_ms = crate::time::now_ms();
                match core.buckets.acquire(&attempts, 1, now_ms).await {
                    Ok(Admission::Admitted(_)) => {}
                    Ok(Admission::Refused { retry_after, .. }) => {
                        core.audit
                            .record(audited(&rid, "console.login", "unknown", false))
                            .await;
                        let secs = retry_after.as_secs().max(1);
                        return Err(ApiError::new(
                            ErrorKind::LimitExceeded,
                            format!(
                                "too many failed sign-ins from this address; try again in {secs} s"
                            ),
                        )
                        .code("too_many_sign_ins")
                        .with_upstream_headers(vec![(
                            http::header::RETRY_AFTER,
                            HeaderValue::from(secs),
                        )]));
                    }
                    // The counter is defence in depth; its store failing must not lock
                    // administrators out.
                    Err(e) => tracing::warn!(error = %e, "cannot count console sign-in attempts"),
                }
                let now = crate::time::now();
                let principal = match core.keys.authenticate(secret, now) {
                    Ok(p) => p,
                    Err(e) => {
                        core.audit
                            .record(audited(&rid, "console.login", "unknown", false))
                            .await;
                        return Err(e);
                    }
                };
                if !principal.is_admin() {
                    core.audit
                        .record(audited(&rid, "console.login", &principal.label(), false))
                        .await;
                    return Err(ApiError::new(
                        ErrorKind::PermissionDenied,
                        "the console is for the master key and principals with the admin role",
                    )
                    .code("master_key_required"));
                }
                let _ = core.buckets.adjust(&attempts, -1, now_ms).await;
                let hash = crate::keys::hash_secret(secret);
                let (cookie, session) =
                    core.console
                        .issue(&hash, crate::time::now_ms(), now + LIFETIME_SECS);
                core.audit
                    .record(audited(&rid, "console.login", &principal.label(), true))
                    .await;
                let mut res = axum::Json(view(&session, &principal)).into_response();
                let set = super::set_cookie(Some((&cookie, LIFETIME_SECS)), secure(&headers));
                if let Ok(v) = HeaderValue::from_str(&set) {
                    res.headers_mut().insert(http::header::SET_COOKIE, v);
                }
                res.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                Ok(res)
            }
            .await,
        )
    }

    pub(super) async fn session(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
        match core.console_session(&headers).await {
            Ok((session, principal)) => {
                let mut res = axum::Json(view(&session, &principal)).into_response();
                res.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                res
            }
            Err(e) => e.into_response(),
        }
    }

    pub(super) async fn logout(
        State(core): State<Arc<Core>>,
        rid: Option<Extension<RequestContext>>,
        headers: HeaderMap,
    ) -> Response {
        let (session, who) = match core.console_session(&headers).await {
            Ok((session, principal)) if super::csrf_ok(&headers, &session) => {
                (session, principal.label())
            }
            Ok(_) => {
                return ApiError::new(
                    ErrorKind::PermissionDenied,
                    "a console request must carry the session's x-tollgate-csrf header",
                )
                .code("csrf_failed")
                .into_response()
            }
            Err(e) => return e.into_response(),
        };
        // Every session of this secret issued until now ends, on every replica.
        let now_ms = crate::time::now_ms().max(session.issued_ms);
        if let Err(e) = core
            .stores
            .meta
            .set_meta(&super::signed_out_meta(&session.hash), &now_ms.to_string())
            .await
        {
            return ApiError::from(e).into_response();
        }
        core.audit
            .record(audited(&rid, "console.logout", &who, true))
            .await;
        let mut res = StatusCode::NO_CONTENT.into_response();
        if let Ok(v) = HeaderValue::from_str(&super::set_cookie(None, secure(&headers))) {
            res.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        res
    }
}
