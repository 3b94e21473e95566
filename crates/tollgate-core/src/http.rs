//! The HTTP shell shared by every layer: request ids, the in-flight gauge, request metrics,
//! access logs, bounded body reading and credential extraction. Layers' handlers are plain
//! async functions; this is the only middleware.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;

use crate::context::{RequestContext, TraceContext};
use crate::error::{ApiError, ErrorKind, ErrorMark};
use crate::metrics::{Label, RequestLabels, RouteLabels};
use crate::Core;

pub const REQUEST_ID: &str = "x-request-id";
/// The trace this request belongs to, for finding it in a tracing backend.
pub const TRACE_ID: &str = "x-tollgate-trace-id";

/// Left on a response by a layer so the shell can label metrics and logs.
#[derive(Debug, Clone, Default)]
pub struct ResponseTag {
    pub model: Option<Arc<str>>,
    pub provider: Option<Arc<str>>,
    /// Time spent waiting on the upstream before the response head was ready.
    pub upstream: Duration,
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID) {
        let ok =
            v.len() <= 128 && !v.is_empty() && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The address a request's connection came from (set by the listener; absent in tests that
/// call the router directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// A fixed label for each known path, so metrics cardinality stays bounded.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/responses" => "/v1/responses",
        "/v1/messages" => "/v1/messages",
        "/v1/messages/count_tokens" => "/v1/messages/count_tokens",
        "/v1/models" => "/v1/models",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/mcp" => "/mcp",
        "/a2a" => "/a2a",
        p if p.starts_with("/a2a/") => "/a2a",
        p if p.starts_with("/v1/models/") => "/v1/models/{model}",
        p if p.starts_with("/mcp/") => "/mcp/{server}",
        p if p.starts_with("/.well-known/") => "/.well-known",
        p if p.starts_with("/admin/") => "/admin",
        p if p == "/ui" || p.starts_with("/ui/") => "/ui",
        p if p.starts_with("/v1/") => "/v1/other",
        _ => "other",
    }
}

/// The shell around every request.
pub async fn shell(State(core): State<Arc<Core>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let rid = request_id(req.headers());
    let trace = TraceContext::from_headers(req.headers());
    let trace_header = HeaderValue::from_str(&trace.trace_id).ok();
    let conversation_id = crate::context::conversation_id(req.headers());
    req.extensions_mut().insert(RequestContext {
        request_id: rid.clone(),
        trace,
        conversation_id,
    });
    let route = route_label(req.uri().path());
    let method = req.method().clone();
    let gauge = core
        .metrics
        .in_flight
        .get_or_create(&RouteLabels { route })
        .clone();
    gauge.inc();
    // Built before the handler runs: if the client goes away mid-request the handler's future
    // is dropped, and so is this guard.
    let guard = InFlight(gauge);
    let cors = crate::cors::check(
        &core.config().cors,
        req.method(),
        req.uri().path(),
        req.headers(),
    );
    let http1 = req.version() < http::Version::HTTP_2;
    let mut res = match refusal(&req) {
        Some(res) => res,
        None => {
            let limit = core.config().limits.request_timeout;
            let (added, run) = match cors {
                crate::cors::Cors::Preflight(res) => (None, Err(res)),
                crate::cors::Cors::Allow(added) => (Some(added), Ok(next.run(req))),
                crate::cors::Cors::None => (None, Ok(next.run(req))),
            };
            let mut res = match run {
                Err(preflight) => preflight,
                Ok(run) => match tokio::time::timeout(limit, run).await {
                    Ok(res) => res,
                    // The handler is dropped, as if the client had gone away.
                    Err(_) => shaped_error(
                        route,
                        ApiError::new(
                            crate::error::ErrorKind::UpstreamTimeout,
                            format!(
                                "the gateway gave up on this request after {} s (limits.request_timeout)",
                                limit.as_secs_f64()
                            ),
                        )
                        .code("request_timeout"),
                    ),
                },
            };
            if let Some(added) = added {
                res.headers_mut().extend(added);
            }
            res
        }
    };
    let elapsed = start.elapsed();
    res.headers_mut().insert(REQUEST_ID, rid.clone());
    if let Some(t) = trace_header {
        res.headers_mut().insert(TRACE_ID, t);
    }

    let status = res.status();
    // A body refused for its size or slowness was not read to its end, so the connection
    // cannot carry another request: say so rather than closing it unannounced.
    if http1 && matches!(status.as_u16(), 408 | 413) {
        res.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let tag = res
        .extensions()
        .get::<ResponseTag>()
        .cloned()
        .unwrap_or_default();
    let labels = RequestLabels {
        route,
        model: tag.model.as_ref().map_or_else(Label::empty, Label::from),
        provider: tag.provider.as_ref().map_or_else(Label::empty, Label::from),
        status: status.as_u16(),
    };
    core.metrics.requests.get_or_create(&labels).inc();
    core.metrics
        .request_duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    if tag.provider.is_some() {
        core.metrics
            .overhead
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.saturating_sub(tag.upstream).as_secs_f64());
    }
    let error = res.extensions().get::<ErrorMark>().map(|m| m.0);
    let rid_str = rid.to_str().unwrap_or("-");
    match error {
        Some(kind) if kind.fault() != crate::error::Fault::Client => tracing::warn!(
            target: "tollgate::access", request_id = rid_str, %method, route, status = status.as_u16(),
            model = tag.model.as_deref(), provider = tag.provider.as_deref(),
            duration_us = elapsed.as_micros() as u64, error = ?kind, "request failed"
        ),
        _ => tracing::info!(
            target: "tollgate::access", request_id = rid_str, %method, route, status = status.as_u16(),
            model = tag.model.as_deref(), provider = tag.provider.as_deref(),
            duration_us = elapsed.as_micros() as u64, "request"
        ),
    }
    // The in-flight gauge drops when the body is done, so streams count until they end.
    hold_while_body(res, guard)
}

/// A response whose body keeps `guard` alive until the body is done or dropped (a stream slot,
/// say: it is held for as long as the client reads).
pub fn hold_while_body<G: Send + Unpin + 'static>(res: Response, guard: G) -> Response {
    let (parts, body) = res.into_parts();
    Response::from_parts(
        parts,
        Body::new(GuardedBody {
            inner: body,
            _guard: guard,
        }),
    )
}

struct InFlight(Gauge<i64, std::sync::atomic::AtomicI64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct GuardedBody<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the shell refuses before any handler sees the request, in the shape of the API the
/// path belongs to.
fn refusal(req: &Request) -> Option<Response> {
    // RFC 9112 3.2: an HTTP/1.1 request with no Host, several, or an invalid one is a 400 (the
    // Host is used to build URLs the gateway hands out, such as agent card endpoints).
    if req.version() == http::Version::HTTP_11 && !host_ok(req.headers()) {
        let e =
            ApiError::invalid("the request needs exactly one valid Host header").code("bad_host");
        let mut res = shaped_error(req.uri().path(), e);
        res.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    // A path or query whose percent-escapes do not decode to UTF-8 names nothing: refuse it
    // here, once, in the API's shape (rather than each extractor's plain-text rejection or a
    // lossy decode).
    if !decodes_to_utf8(req.uri().path()) || !req.uri().query().is_none_or(decodes_to_utf8) {
        let e =
            ApiError::invalid("the URL's percent-escapes are not valid UTF-8").code("invalid_path");
        return Some(shaped_error(req.uri().path(), e));
    }
    None
}

/// An error in the shape of the API `path` belongs to: JSON-RPC for `/mcp` and `/a2a`,
/// Anthropic's for `/v1/messages`, otherwise the OpenAI-style `{"error": {...}}` the admin API
/// shares.
pub fn shaped_error(path: &str, e: ApiError) -> Response {
    let under = |p: &str| {
        path.strip_prefix(p)
            .is_some_and(|r| r.is_empty() || r.starts_with('/'))
    };
    if under("/mcp") || under("/a2a") {
        let status = e.status();
        let code = if status == http::StatusCode::BAD_REQUEST {
            -32600
        } else {
            -32603
        };
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": code, "message": e.message},
        });
        let mut res = json_response(status, body.to_string());
        res.extensions_mut().insert(ErrorMark(e.kind));
        return res;
    }
    if under("/v1/messages") {
        return e.into_anthropic_response();
    }
    e.into_response()
}

/// Whether every `%XX` escape in `s` decodes, and the result is UTF-8.
fn decodes_to_utf8(s: &str) -> bool {
    if !s.contains('%') {
        return true;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Exactly one Host header, holding a host and optional port (no user info, no path).
fn host_ok(headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    host.to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty())
}

/// Reads a whole request body within the configured size (413) and time (408) limits, and
/// refuses JSON nested deeper than `limits.max_json_depth` (400).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &crate::config::LimitsConfig,
) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(
        limits.body_read_timeout,
        read_limited(headers, body, limits.max_body_size),
    )
    .await
    {
        Ok(Ok(bytes)) => {
            check_json_depth(&bytes, limits.max_json_depth)?;
            Ok(bytes)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(
            ErrorKind::RequestTimeout,
            format!(
                "request body not received within {}ms",
                limits.body_read_timeout.as_millis()
            ),
        )
        .code("body_timeout")),
    }
}

async fn read_limited(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .code("body_too_large")
    };
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::invalid(format!("cannot read request body: {e}")).code("bad_body")),
    }
}

/// Refuses a body whose arrays and objects nest deeper than `max`. One pass over the bytes,
/// before any parser recurses into them; text that is not JSON passes (its parser reports it).
pub fn check_json_depth(bytes: &[u8], max: usize) -> Result<(), ApiError> {
    match json_depth_exceeds(bytes, max) {
        None => Ok(()),
        Some(at) => Err(ApiError::invalid(format!(
            "JSON nests deeper than the limit of {max} levels (at byte {at})"
        ))
        .code("json_too_deep")),
    }
}

/// The offset at which nesting first goes past `max`, if it does.
pub fn json_depth_exceeds(bytes: &[u8], max: usize) -> Option<usize> {
    // Depth never exceeds the count of opening brackets (strings included): most bodies have
    // few, and counting them is one vectorised pass, cheaper than following strings.
    if bytes.iter().filter(|&&b| b == b'{' || b == b'[').count() <= max {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Refuses a JSON document in which an object names the same key twice. Parsers disagree on
/// which copy wins (serde keeps the last, others the first), so a message like
/// `{"method":"ping","method":"tools/call"}` could mean one thing to a policy and another to the
/// upstream. Text that is not JSON passes (its parser reports it).
pub fn check_duplicate_keys(bytes: &[u8]) -> Result<(), ApiError> {
    match serde_json::from_slice::<NoDuplicates>(bytes) {
        Err(e) if e.to_string().starts_with(DUPLICATE) => {
            Err(ApiError::invalid(e.to_string()).code("duplicate_key"))
        }
        _ => Ok(()),
    }
}

const DUPLICATE: &str = "duplicate key";

/// Walks any JSON value, failing on the first object with a repeated key.
struct NoDuplicates;

impl<'de> serde::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            map.next_value::<NoDuplicates>()?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "{DUPLICATE} {key:?} in a JSON object"
                )));
            }
        }
        Ok(NoDuplicates)
    }
}

/// Parses a JSON body into `T`, reporting the position of malformed input.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::from_json(&e))
}

/// The credential a client presented: `Authorization: Bearer ...` or `x-api-key`.
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A single path parameter; a malformed one (bad percent-encoding) is a JSON 400, not axum's
/// plain-text rejection.
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| PathParam(p))
            .map_err(|e| ApiError::invalid(format!("invalid path: {e}")).code("invalid_path"))
    }
}

/// A JSON response with the right content type.
pub fn json_response(status: http::StatusCode, body: impl Into<Bytes>) -> Response {
    let mut res = (status, body.into()).into_response();
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_must_decode_to_utf8() {
        assert!(decodes_to_utf8("/admin/v1/keys") && decodes_to_utf8("a%20b%C3%A9"));
        assert!(
            decodes_to_utf8("100%") && decodes_to_utf8("%zz"),
            "not escapes: literal"
        );
        assert!(!decodes_to_utf8("/a2a/%ff/x") && !decodes_to_utf8("after=%C3"));
    }

    #[test]
    fn hosts_must_be_one_valid_authority() {
        let h = |values: &[&'static str]| {
            let mut m = HeaderMap::new();
            for v in values {
                m.append(http::header::HOST, HeaderValue::from_static(v));
            }
            host_ok(&m)
        };
        assert!(h(&["gw.example.com"]) && h(&["127.0.0.1:4000"]) && h(&["[::1]:80"]));
        assert!(!h(&[]) && !h(&["a", "b"]) && !h(&["a b/c"]) && !h(&["user@host"]) && !h(&[""]));
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        assert!(check_duplicate_keys(br#"{"a":1,"b":{"a":2},"c":[{"x":1},{"x":2}]}"#).is_ok());
        let e = check_duplicate_keys(br#"{"method":"ping","method":"tools/call"}"#).unwrap_err();
        assert_eq!(e.code, Some("duplicate_key"));
        assert!(check_duplicate_keys(br#"[{"p":{"q":1,"q":2}}]"#).is_err());
        // Escaped spellings of the same key are the same key.
        assert!(check_duplicate_keys(br#"{"id":1,"\u0069d":2}"#).is_err());
        // Not JSON: left to the parser.
        assert!(check_duplicate_keys(b"{nope").is_ok());
    }

    #[test]
    fn json_depth_counts_structure_not_strings() {
        assert_eq!(json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 3), None);
        assert_eq!(json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 2), Some(8));
        // Brackets and escaped quotes inside strings are text.
        assert_eq!(json_depth_exceeds(br#"{"a":"[[[[\"{{{{"}"#, 1), None);
        assert_eq!(json_depth_exceeds(br#"["\\",[[]]]"#, 2), Some(7));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check_json_depth(deep.as_bytes(), 64).is_err());
        assert!(check_json_depth(deep.as_bytes(), 65).is_ok());
        // Not JSON at all: left to the parser.
        assert_eq!(json_depth_exceeds(b"hello", 1), None);
    }

    #[test]
    fn credentials() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("tg-a"));
        assert_eq!(credential(&h), Some("tg-a"));
        h.insert("authorization", HeaderValue::from_static("Bearer tg-b"));
        assert_eq!(credential(&h), Some("tg-b"));
        h.insert("authorization", HeaderValue::from_static("Basic xyz"));
        assert_eq!(
            credential(&h),
            None,
            "a non-bearer Authorization is not a key"
        );
    }

    #[test]
    fn request_ids_keep_clean_client_ids_only() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }
}
