//! The push-notification relay. A caller's webhook registration never reaches the agent as
//! is: the gateway checks the caller's URL against its egress rules (after resolving it),
//! keeps it with the caller's token and credentials, and hands the agent its own callback
//! (`/a2a/_push/{id}`) and a fresh token instead. Notifications the agent posts there are
//! checked against that token and delivered to the caller's URL, at the addresses checked
//! (never re-resolved), without following redirects, with the caller's credentials or a
//! gateway-signed JWT, retried with backoff, and audited.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};
use tollgate_core::audit::AuditEvent;
use tollgate_core::config::{A2aConfig, AgentConfig};
use tollgate_core::identity::Principal;
use tollgate_core::net::{EgressGuard, SystemResolver};
use tollgate_core::Core;

use crate::error::{self, A2aError};
use crate::A2aLayer;

/// Where the caller wants notifications, as the relay keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Registration {
    agent: String,
    owner: String,
    task: Option<String>,
    url: String,
    /// The caller's token, sent back with each notification.
    client_token: Option<String>,
    /// `Authorization: {scheme} {credentials}` for the caller's webhook, if given.
    auth: Option<(String, String)>,
    /// What the agent must present.
    relay_token: String,
}

pub struct Relay {
    core: Arc<Core>,
    local: moka::sync::Cache<String, String>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    if getrandom::fill(&mut b).is_err() {
        // No system randomness: fall back to the process's PRNG rather than fail the call.
        b.iter_mut().for_each(|x| *x = fastrand::u8(..));
    }
    tollgate_core::hex::encode(&b)
}

/// A key's spelling-insensitive form: the SDKs send both `pushNotificationConfig` and
/// `push_notification_config` (the 0.3 HTTP+JSON binding uses protobuf field names).
fn norm(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn is_push_key(k: &str) -> bool {
    matches!(
        norm(k).as_str(),
        "pushnotificationconfig" | "taskpushnotificationconfig" | "config"
    )
}

/// The push-config objects a request carries: the registration itself, or one inline in a
/// message's configuration, in every spelling either generation and binding uses. Any object
/// with a `url` under a push-config key counts, however deep the wrapping.
fn configs(target: &mut Value) -> Vec<&mut Map<String, Value>> {
    fn walk<'a>(
        m: &'a mut Map<String, Value>,
        depth: usize,
        out: &mut Vec<&'a mut Map<String, Value>>,
    ) {
        if depth > 4 {
            return;
        }
        for (k, v) in m.iter_mut() {
            let push = is_push_key(k);
            let conf = norm(k) == "configuration";
            if !(push || conf) {
                continue;
            }
            if let Some(inner) = v.as_object_mut() {
                if push && inner.get("url").is_some_and(Value::is_string) {
                    out.push(inner);
                } else {
                    walk(inner, depth + 1, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    let Some(m) = target.as_object_mut() else {
        return out;
    };
    if m.get("url").is_some_and(Value::is_string) {
        out.push(m);
        return out;
    }
    walk(m, 0, &mut out);
    out
}

impl Relay {
    pub fn new(core: Arc<Core>) -> Relay {
        Relay {
            core,
            local: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(7 * 24 * 3600))
                .build(),
        }
    }

    async fn put(&self, id: &str, r: &Registration, ttl: Duration) {
        let v = serde_json::to_string(r).unwrap_or_default();
        match &self.core.shared {
            Some(s) => {
                if let Err(e) = s.put(&format!("a2a:push:{id}"), v.as_bytes(), ttl).await {
                    tracing::warn!(error = %e, "cannot record a push registration");
                }
            }
            None => self.local.insert(id.to_owned(), v),
        }
    }

    async fn get(&self, id: &str) -> Option<Registration> {
        let raw = match &self.core.shared {
            Some(s) => s
                .get(&format!("a2a:push:{id}"))
                .await
                .ok()
                .flatten()
                .and_then(|(v, _)| String::from_utf8(v).ok()),
            None => self.local.get(id),
        };
        raw.and_then(|s| serde_json::from_str(&s).ok())
    }

    /// Rewrites every push config in `target` to the gateway's callback, after checking the
    /// caller's URL.
    pub async fn intercept(
        &self,
        config: &A2aConfig,
        agent: &AgentConfig,
        principal: &Principal,
        base: &str,
        task: Option<&str>,
        target: &mut Value,
    ) -> Result<(), A2aError> {
        let found = configs(target);
        if found.is_empty() {
            return Ok(());
        }
        let guard = EgressGuard::new(&config.push.allow);
        for c in found {
            let url = c
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Err(why) = guard.check(&url, &SystemResolver).await {
                return Err(A2aError::new(
                    StatusCode::BAD_REQUEST,
                    error::INVALID_PARAMS,
                    "PUSH_URL_REFUSED",
                    format!("the webhook URL is refused: {why}"),
                ));
            }
            let auth = c.get("authentication").and_then(|a| {
                let creds = a.get("credentials").and_then(Value::as_str)?;
                let scheme = a
                    .get("scheme")
                    .and_then(Value::as_str)
                    .or_else(|| {
                        a.get("schemes")
                            .and_then(Value::as_array)
                            .and_then(|s| s.first())
                            .and_then(Value::as_str)
                    })
                    .unwrap_or("Bearer");
                Some((scheme.to_owned(), creds.to_owned()))
            });
            if let Some((s, cr)) = &auth {
                if s.chars().chain(cr.chars()).any(|ch| ch.is_control()) {
                    return Err(A2aError::new(
                        StatusCode::BAD_REQUEST,
                        error::INVALID_PARAMS,
                        "PUSH_URL_REFUSED",
                        "the webhook credentials contain control characters",
                    ));
                }
            }
            let id = random_hex(16);
            let reg = Registration {
                agent: agent.name.clone(),
                owner: principal
                    .subject
                    .clone()
                    .unwrap_or_else(|| principal.label()),
                task: task
                    .map(str::to_owned)
                    .or_else(|| c.get("taskId").and_then(Value::as_str).map(str::to_owned)),
                url,
                client_token: c.get("token").and_then(Value::as_str).map(str::to_owned),
                auth,
                relay_token: random_hex(24),
            };
            self.put(&id, &reg, config.affinity_ttl).await;
            c.insert("url".into(), format!("{base}/a2a/_push/{id}").into());
            c.insert("token".into(), reg.relay_token.clone().into());
            c.remove("authentication");
        }
        Ok(())
    }
}

impl Relay {
    /// Shows the caller its own webhook again in push-config answers: the relay's callback
    /// URL and token (which the agent alone should hold) become the caller's URL and token.
    /// True if anything was restored.
    pub async fn restore(&self, v: &mut Value) -> bool {
        let mut found = Vec::new();
        collect_callbacks(v, &mut found, 0);
        if found.is_empty() {
            return false;
        }
        let mut regs = std::collections::HashMap::new();
        for id in found {
            if let Some(r) = self.get(&id).await {
                regs.insert(id, r);
            }
        }
        restore_in(v, &regs, 0);
        true
    }
}

/// The relay ids of callback URLs anywhere in `v`.
fn collect_callbacks(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 8 {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(id) = m.get("url").and_then(Value::as_str).and_then(callback_id) {
                out.push(id.to_owned());
            }
            m.values()
                .for_each(|c| collect_callbacks(c, out, depth + 1));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_callbacks(c, out, depth + 1)),
        _ => {}
    }
}

fn callback_id(url: &str) -> Option<&str> {
    url.split_once("/a2a/_push/")
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn restore_in(v: &mut Value, regs: &std::collections::HashMap<String, Registration>, depth: usize) {
    if depth > 8 {
        return;
    }
    match v {
        Value::Object(m) => {
            let id = m
                .get("url")
                .and_then(Value::as_str)
                .and_then(callback_id)
                .map(str::to_owned);
            if let Some(id) = id {
                match regs.get(&id) {
                    Some(r) => {
                        m.insert("url".into(), r.url.clone().into());
                        match &r.client_token {
                            Some(t) => m.insert("token".into(), t.clone().into()),
                            None => m.remove("token"),
                        };
                    }
                    // A registration the relay forgot: at least do not show its token.
                    None => {
                        m.remove("token");
                    }
                }
            }
            m.values_mut().for_each(|c| restore_in(c, regs, depth + 1));
        }
        Value::Array(a) => a.iter_mut().for_each(|c| restore_in(c, regs, depth + 1)),
        _ => {}
    }
}

/// A client that connects only to the addresses the egress check approved.
#[derive(Clone)]
struct Pinned(Arc<Vec<std::net::SocketAddr>>);

impl tower_service::Service<Name> for Pinned {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(self.0.as_ref().clone().into_iter()))
    }
}

fn pinned_client(
    addrs: Vec<std::net::SocketAddr>,
    timeout: Duration,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector<Pinned>>, Full<Bytes>> {
    let mut http = HttpConnector::new_with_resolver(Pinned(Arc::new(addrs)));
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

fn token_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-a2a-notification-token")
        .or_else(|| headers.get("a2a-notification-token"))
        .and_then(|v| v.to_str().ok())
}

/// `POST /a2a/_push/{id}`: an agent's notification for a caller.
pub async fn callback(
    State(layer): State<Arc<A2aLayer>>,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let refuse = |status: StatusCode, why: &str| {
        tollgate_core::http::json_response(status, json!({"error": why}).to_string())
    };
    let Ok(axum::extract::Path(id)) = path else {
        return refuse(StatusCode::BAD_REQUEST, "invalid path");
    };
    let limits = layer.core.config().limits.clone();
    let body = match tollgate_core::http::read_body(&headers, body, &limits).await {
        Ok(b) => b,
        Err(e) => return refuse(e.status(), &e.message),
    };
    let not_found = || {
        tollgate_core::http::json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown push registration"}).to_string(),
        )
    };
    let Some(reg) = layer.relay.get(&id).await else {
        return not_found();
    };
    let presented = token_of(&headers).unwrap_or("");
    if !constant_eq(presented.as_bytes(), reg.relay_token.as_bytes()) {
        return not_found();
    }
    let limit = layer.core.config().limits.max_body_size as usize;
    if body.len() > limit {
        return tollgate_core::http::json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "notification too large"}).to_string(),
        );
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return tollgate_core::http::json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "the notification is not JSON"}).to_string(),
            )
        }
    };
    let seen = crate::ops::seen(&event);
    if let (Some(expected), Some(got)) = (&reg.task, &seen.task) {
        if expected != got {
            return tollgate_core::http::json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "the notification is for another task"}).to_string(),
            );
        }
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let token_header = if headers.contains_key("a2a-notification-token") {
        "a2a-notification-token"
    } else {
        "x-a2a-notification-token"
    };
    let config = layer.state.load().config.push.clone();
    let core = layer.core.clone();
    // Accepted once authentic; delivery (with retries) happens off the agent's request.
    tokio::spawn(async move {
        deliver(core, reg, seen, body, content_type, token_header, config).await;
    });
    tollgate_core::http::json_response(StatusCode::OK, "{}")
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn deliver(
    core: Arc<Core>,
    reg: Registration,
    seen: crate::ops::Seen,
    body: Bytes,
    content_type: HeaderValue,
    token_header: &'static str,
    config: tollgate_core::config::PushConfig,
) {
    let mut attempts = 0;
    let mut last_error = String::new();
    let mut delivered = false;
    let mut backoff = Duration::from_millis(500);
    while attempts < config.attempts {
        attempts += 1;
        // Checked again at every attempt: DNS answers and the rules may have changed.
        let dest = match EgressGuard::new(&config.allow)
            .check(&reg.url, &SystemResolver)
            .await
        {
            Ok(d) => d,
            Err(why) => {
                last_error = format!("refused: {why}");
                break;
            }
        };
        let client = pinned_client(dest.addrs.clone(), config.timeout);
        let mut req = http::Request::post(dest.uri.clone())
            .header(http::header::CONTENT_TYPE, content_type.clone());
        if let Some(t) = &reg.client_token {
            req = req.header(token_header, t.as_str());
        }
        let authorization = match &reg.auth {
            Some((scheme, creds)) => Some(format!("{scheme} {creds}")),
            None => {
                let now = tollgate_core::time::now();
                let claims = json!({
                    "iss": core.issuer(),
                    "aud": reg.url,
                    "iat": now,
                    "exp": now + 300,
                    "jti": random_hex(16),
                    "taskId": seen.task,
                    "agent": reg.agent,
                });
                core.signer
                    .mint(&claims)
                    .ok()
                    .map(|t| format!("Bearer {t}"))
            }
        };
        if let Some(a) = authorization {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let Ok(req) = req.body(Full::new(body.clone())) else {
            last_error = "cannot build the delivery".into();
            break;
        };
        match tokio::time::timeout(config.timeout, client.request(req)).await {
            Ok(Ok(res)) if res.status().is_success() => {
                delivered = true;
                break;
            }
            Ok(Ok(res)) if res.status().is_redirection() => {
                last_error = format!(
                    "HTTP {} (redirects are not followed)",
                    res.status().as_u16()
                );
                break;
            }
            Ok(Ok(res))
                if res.status().is_client_error()
                    && res.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                last_error = format!("HTTP {}", res.status().as_u16());
                break;
            }
            Ok(Ok(res)) => last_error = format!("HTTP {}", res.status().as_u16()),
            Ok(Err(e)) => last_error = format!("cannot connect: {e}"),
            Err(_) => last_error = "timed out".into(),
        }
        if attempts < config.attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    let mut ev = AuditEvent::new("a2a.push", if delivered { "success" } else { "failed" });
    ev.principal = Some(reg.owner.clone());
    ev.target = Some(reg.agent.clone());
    ev.conversation_id = seen.context.clone();
    ev.detail = json!({
        "agent": reg.agent,
        "task_id": seen.task,
        "task_state": seen.state,
        "url": reg.url,
        "attempts": attempts,
        "error": (!delivered).then_some(last_error),
    });
    core.audit.try_record(ev);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(mut v: Value) -> Vec<String> {
        configs(&mut v)
            .into_iter()
            .map(|c| c["url"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn push_configs_are_found_in_every_spelling() {
        let u = "http://h/x";
        assert_eq!(urls(json!({"taskId": "t", "url": u})), [u]);
        assert_eq!(
            urls(json!({"taskId": "t", "pushNotificationConfig": {"url": u}})),
            [u]
        );
        assert_eq!(
            urls(
                json!({"parent": "tasks/t", "config": {"name": "n", "push_notification_config": {"url": u}}})
            ),
            [u]
        );
        assert_eq!(
            urls(
                json!({"message": {}, "configuration": {"taskPushNotificationConfig": {"url": u}}})
            ),
            [u]
        );
        assert_eq!(
            urls(
                json!({"message": {}, "configuration": {"task_push_notification_config": {"url": u}}})
            ),
            [u]
        );
        assert_eq!(
            urls(json!({"request": {}, "configuration": {"push_notification": {"url": u}}})),
            Vec::<String>::new(),
            "not a push-config key"
        );
        assert!(urls(json!({"message": {"parts": [{"url": u}]}})).is_empty());
    }
}
