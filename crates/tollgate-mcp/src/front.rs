//! The Streamable HTTP front door: the transport's checks (origin, credentials, `Accept`,
//! content type, size, session, protocol version) in the order the spec implies, each
//! refusal with its status and a JSON-RPC error body; then the message goes to `calls`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tollgate_core::config::{McpAuth, McpConfig, McpServerConfig};
use tollgate_core::context::RequestContext;
use tollgate_core::http::{read_body, PathParam};
use tollgate_core::identity::Principal;

use crate::jsonrpc::{self, Kind, RpcError};
use crate::session::{parse_event_id, Session};
use crate::{McpLayer, VERSIONS};

pub const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub fn router(layer: Arc<McpLayer>) -> Router {
    Router::new()
        // Every method reaches `serve`, so a wrong one is refused in JSON-RPC's shape.
        .route("/mcp", any(root))
        .route("/mcp/{name}", any(named))
        .route("/.well-known/oauth-protected-resource", get(metadata_root))
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(metadata_root),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{name}",
            get(metadata_named),
        )
        .with_state(layer)
}

async fn root(State(layer): State<Arc<McpLayer>>, req: Request) -> Response {
    serve(layer, None, req).await
}

async fn named(
    State(layer): State<Arc<McpLayer>>,
    name: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> Response {
    match name {
        Ok(axum::extract::Path(name)) => serve(layer, Some(name), req).await,
        Err(e) => refuse(
            RpcError::new(jsonrpc::INVALID_REQUEST, format!("invalid path: {e}"))
                .with_status(StatusCode::BAD_REQUEST),
            Value::Null,
        ),
    }
}

/// A JSON-RPC error as the whole HTTP answer.
pub fn refuse(err: RpcError, id: Value) -> Response {
    let status = if err.status == StatusCode::OK {
        StatusCode::BAD_REQUEST
    } else {
        err.status
    };
    let mut res = tollgate_core::http::json_response(status, err.to_message(id).to_string());
    res.extensions_mut()
        .insert(tollgate_core::error::ErrorMark(kind_for(status)));
    res
}

fn kind_for(status: StatusCode) -> tollgate_core::error::ErrorKind {
    use tollgate_core::error::ErrorKind as K;
    match status.as_u16() {
        401 => K::Unauthenticated,
        403 => K::PermissionDenied,
        404 => K::NotFound,
        405 => K::MethodNotAllowed,
        409 => K::Conflict,
        413 => K::PayloadTooLarge,
        502 => K::Upstream,
        504 => K::UpstreamTimeout,
        500 => K::Internal,
        _ => K::InvalidRequest,
    }
}

/// What a path serves: its upstreams and how callers authenticate.
struct Target {
    name: Option<String>,
    servers: Vec<McpServerConfig>,
    auth: McpAuth,
}

fn target(cfg: &McpConfig, name: Option<String>) -> Result<Target, RpcError> {
    let Some(name) = name else {
        if cfg.servers.is_empty() {
            return Err(RpcError::new(
                jsonrpc::METHOD_NOT_FOUND,
                "the tool layer has no MCP servers configured",
            )
            .with_status(StatusCode::NOT_FOUND));
        }
        return Ok(Target {
            name: None,
            servers: cfg.servers.clone(),
            auth: McpAuth::Required,
        });
    };
    let Some(v) = cfg.virtual_server(&name) else {
        return Err(RpcError::new(
            jsonrpc::METHOD_NOT_FOUND,
            format!("no MCP virtual server named {name:?}"),
        )
        .with_status(StatusCode::NOT_FOUND));
    };
    Ok(Target {
        name: Some(name),
        servers: v
            .servers
            .iter()
            .filter_map(|s| cfg.server(s).cloned())
            .collect(),
        auth: v.auth,
    })
}

/// The externally visible base URL.
fn base_url(cfg: &McpConfig, headers: &HeaderMap) -> String {
    if let Some(u) = &cfg.public_url {
        return u.clone();
    }
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn resource_path(target: Option<&str>) -> String {
    match target {
        Some(n) => format!("/mcp/{n}"),
        None => "/mcp".to_owned(),
    }
}

/// DNS-rebinding protection: a browser page from another origin must not reach the gateway.
/// Requests without `Origin` (non-browser clients) pass; loopback origins, the configured
/// ones and the origin of `mcp.public_url` pass. An origin merely equal to the request's
/// `Host` does not: that is exactly what a rebound name looks like.
fn origin_allowed(headers: &HeaderMap, cfg: &McpConfig) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if cfg.allowed_origins.iter().any(|o| o == "*" || *o == origin) {
        return true;
    }
    let Ok(uri) = origin.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    if matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") {
        return true;
    }
    // The gateway's own public origin (a UI it serves).
    cfg.public_url
        .as_deref()
        .is_some_and(|u| u.to_ascii_lowercase() == origin)
}

/// An origin `cors.allowed_origins` lets browser apps call from (CORS opens it to every API).
fn cross_origin_allowed(headers: &HeaderMap, cors: &tollgate_core::config::CorsConfig) -> bool {
    headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| cors.allows(o))
}

fn accepts(headers: &HeaderMap, what: &str) -> bool {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    accept.split(',').any(|part| {
        let t = part.split(';').next().unwrap_or_default().trim();
        t == what || t == "*/*" || (t.ends_with("/*") && what.starts_with(&t[..t.len() - 1]))
    })
}

async fn serve(layer: Arc<McpLayer>, name: Option<String>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let state = layer.state.load_full();
    let cors = &layer.core.config().cors;
    if !origin_allowed(&parts.headers, &state.config) && !cross_origin_allowed(&parts.headers, cors)
    {
        return refuse(
            RpcError::new(jsonrpc::INVALID_REQUEST, "this Origin is not allowed")
                .with_status(StatusCode::FORBIDDEN),
            Value::Null,
        );
    }
    let target = match target(&state.config, name) {
        Ok(t) => t,
        Err(e) => return refuse(e, Value::Null),
    };
    let principal = match target.auth {
        McpAuth::None => Arc::new(Principal::anonymous()),
        McpAuth::Required => match layer.core.authenticate(&parts.headers).await {
            Ok(p) => p,
            Err(e) => {
                let mut res = refuse(RpcError::from(e), Value::Null);
                let metadata = format!(
                    "{}/.well-known/oauth-protected-resource{}",
                    base_url(&state.config, &parts.headers),
                    resource_path(target.name.as_deref())
                );
                if let Ok(v) =
                    HeaderValue::from_str(&format!("Bearer resource_metadata=\"{metadata}\""))
                {
                    res.headers_mut().insert(WWW_AUTHENTICATE, v);
                }
                return res;
            }
        },
    };
    let ctx = match parts.extensions.get::<RequestContext>() {
        Some(c) => c.clone(),
        // Only outside the HTTP shell (unit tests of the router): a fresh trace.
        None => RequestContext {
            request_id: HeaderValue::from_static("-"),
            trace: tollgate_core::context::TraceContext::from_headers(&parts.headers),
            conversation_id: None,
        },
    };
    match parts.method {
        Method::POST => post(layer, target, principal, ctx, parts.headers, body).await,
        Method::GET => get_stream(layer, target, principal, &parts.headers).await,
        Method::DELETE => delete(layer, target, principal, &parts.headers).await,
        _ => refuse(
            RpcError::new(jsonrpc::INVALID_REQUEST, "use POST, GET or DELETE")
                .with_status(StatusCode::METHOD_NOT_ALLOWED),
            Value::Null,
        ),
    }
}

/// The session a request names, if it belongs to this caller and path. A session another
/// replica opened (or this one before a restart) is reopened here from its sealed id.
async fn find_session(
    layer: &Arc<McpLayer>,
    target: &Target,
    principal: &Arc<Principal>,
    headers: &HeaderMap,
) -> Result<Arc<Session>, RpcError> {
    let Some(id) = headers.get(SESSION).and_then(|v| v.to_str().ok()) else {
        return Err(RpcError::new(
            jsonrpc::INVALID_REQUEST,
            "missing Mcp-Session-Id: send initialize first",
        )
        .with_status(StatusCode::BAD_REQUEST));
    };
    if let Some(v) = headers.get(VERSION) {
        let v = v.to_str().unwrap_or_default();
        if !VERSIONS.contains(&v) {
            return Err(RpcError::new(
                jsonrpc::INVALID_REQUEST,
                format!("unsupported MCP-Protocol-Version {v:?}"),
            )
            .with_data(json!({"supported": VERSIONS}))
            .with_status(StatusCode::BAD_REQUEST));
        }
    }
    let not_found = || {
        RpcError::new(
            jsonrpc::SESSION_NOT_FOUND,
            "session not found or expired: initialize a new one",
        )
        .with_status(StatusCode::NOT_FOUND)
    };
    let session = match layer.sessions.get(id) {
        Some(s) => s,
        None => layer
            .resume_session(id, principal, target.name.as_deref(), &target.servers)
            .await?
            .ok_or_else(not_found)?,
    };
    // Another principal's or another path's session looks exactly like a missing one.
    if session.owner != principal.label() || session.target != target.name {
        return Err(not_found());
    }
    session.touch();
    Ok(session)
}

async fn post(
    layer: Arc<McpLayer>,
    target: Target,
    principal: Arc<Principal>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !(accepts(&headers, "application/json") && accepts(&headers, "text/event-stream")) {
        return refuse(
            RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "Accept must include application/json and text/event-stream",
            )
            .with_status(StatusCode::NOT_ACCEPTABLE),
            Value::Null,
        );
    }
    let json_body = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json_body {
        return refuse(
            RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "Content-Type must be application/json",
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            Value::Null,
        );
    }
    let limits = layer.core.config().limits.clone();
    let bytes = match read_body(&headers, body, &limits).await {
        Ok(b) => b,
        Err(e) => return refuse(RpcError::from(e), Value::Null),
    };
    // A repeated key is refused: the policy and the upstream could read different values.
    if let Err(e) = tollgate_core::http::check_duplicate_keys(&bytes) {
        return refuse(
            RpcError::new(jsonrpc::INVALID_REQUEST, e.message),
            Value::Null,
        );
    }
    let msg: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                RpcError::new(jsonrpc::PARSE_ERROR, format!("invalid JSON: {e}")),
                Value::Null,
            )
        }
    };
    if let Value::Array(batch) = msg {
        return post_batch(layer, target, principal, ctx, &headers, batch).await;
    }
    let kind = match jsonrpc::classify(&msg) {
        Ok(k) => k,
        Err(why) => {
            let id = msg.get("id").cloned().unwrap_or(Value::Null);
            return refuse(RpcError::new(jsonrpc::INVALID_REQUEST, why), id);
        }
    };
    if kind == Kind::Request && jsonrpc::method(&msg) == "initialize" {
        return initialize(layer, target, principal, msg).await;
    }
    let session = match find_session(&layer, &target, &principal, &headers).await {
        Ok(s) => s,
        Err(e) => return refuse(e, msg.get("id").cloned().unwrap_or(Value::Null)),
    };
    match kind {
        Kind::Response => {
            crate::calls::client_response(&session, msg).await;
            accepted()
        }
        Kind::Notification => {
            crate::calls::client_notification(&layer, &session, msg).await;
            accepted()
        }
        Kind::Request => {
            // A tool call may run long: from 2025-11-25 its answer is a stream from the start,
            // primed with an event id, so a client that loses the connection can resume it.
            let eager =
                jsonrpc::method(&msg) == "tools/call" && session.version.as_str() >= "2025-11-25";
            respond(
                &session,
                crate::calls::request(&layer, &session, &ctx, msg),
                eager,
            )
            .await
        }
    }
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// Batches exist only in protocol version 2025-03-26; answers come back as one JSON array.
async fn post_batch(
    layer: Arc<McpLayer>,
    target: Target,
    principal: Arc<Principal>,
    ctx: RequestContext,
    headers: &HeaderMap,
    batch: Vec<Value>,
) -> Response {
    let session = match find_session(&layer, &target, &principal, headers).await {
        Ok(s) => s,
        Err(e) => return refuse(e, Value::Null),
    };
    if session.version != "2025-03-26" || batch.is_empty() {
        return refuse(
            RpcError::new(
                jsonrpc::INVALID_REQUEST,
                format!(
                    "JSON-RPC batches are not allowed in protocol version {}",
                    session.version
                ),
            ),
            Value::Null,
        );
    }
    let mut answers = Vec::new();
    for msg in batch {
        match jsonrpc::classify(&msg) {
            Err(why) => answers.push(
                RpcError::new(jsonrpc::INVALID_REQUEST, why)
                    .to_message(msg.get("id").cloned().unwrap_or(Value::Null)),
            ),
            Ok(Kind::Response) => crate::calls::client_response(&session, msg).await,
            Ok(Kind::Notification) => {
                crate::calls::client_notification(&layer, &session, msg).await
            }
            Ok(Kind::Request) => {
                let mut rx = crate::calls::request(&layer, &session, &ctx, msg);
                // Messages on the way go to the standalone stream; the answer to the batch.
                while let Some(out) = rx.recv().await {
                    match out {
                        Out::Message(m) => session.standalone().push(&m),
                        Out::Final(v) => {
                            answers.push(v);
                            break;
                        }
                    }
                }
            }
        }
    }
    if answers.is_empty() {
        return accepted();
    }
    with_session(
        tollgate_core::http::json_response(StatusCode::OK, Value::Array(answers).to_string()),
        &session.id,
    )
}

/// What a request produces: messages on the way (progress, server requests), then its answer.
pub enum Out {
    Message(Value),
    Final(Value),
}

/// Answers with plain JSON when the answer comes first, else switches to an SSE stream that
/// carries the messages on the way and ends with the answer; `eager` streams from the start.
async fn respond(session: &Arc<Session>, mut rx: mpsc::Receiver<Out>, eager: bool) -> Response {
    if eager {
        let stream = session.open_stream();
        let events = stream.attach(None, true);
        tokio::spawn(pump(session.clone(), stream, rx));
        return with_session(sse_response(events), &session.id);
    }
    let first = match rx.recv().await {
        Some(Out::Final(v)) => {
            return with_session(
                tollgate_core::http::json_response(StatusCode::OK, v.to_string()),
                &session.id,
            )
        }
        Some(Out::Message(m)) => m,
        None => {
            return refuse(
                RpcError::new(
                    jsonrpc::INTERNAL_ERROR,
                    "the request ended without an answer",
                )
                .with_status(StatusCode::INTERNAL_SERVER_ERROR),
                Value::Null,
            )
        }
    };
    let stream = session.open_stream();
    let events = stream.attach(None, session.version.as_str() >= "2025-11-25");
    stream.push(&first);
    tokio::spawn(pump(session.clone(), stream, rx));
    with_session(sse_response(events), &session.id)
}

/// Moves a request's messages onto its stream until the answer.
async fn pump(
    session: Arc<Session>,
    stream: Arc<crate::session::Stream>,
    mut rx: mpsc::Receiver<Out>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Message(m) => stream.push(&m),
            Out::Final(v) => {
                stream.push(&v);
                break;
            }
        }
    }
    session.finish_stream(&stream);
}

pub fn sse_response(mut events: mpsc::Receiver<Bytes>) -> Response {
    let body = futures_util::stream::poll_fn(move |cx| {
        events
            .poll_recv(cx)
            .map(|o| o.map(Ok::<Bytes, std::convert::Infallible>))
    });
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

fn with_session(mut res: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        res.headers_mut().insert(SESSION, v);
    }
    res
}

/// The shape `initialize` params must have (MCP's `InitializeRequest`): checked here, before a
/// session is opened or anything reaches an upstream.
fn check_initialize(params: &Value) -> Result<(), &'static str> {
    let Some(p) = params.as_object() else {
        return Err(
            "initialize needs params: an object with protocolVersion, capabilities and clientInfo",
        );
    };
    if !p.get("protocolVersion").is_some_and(Value::is_string) {
        return Err("params.protocolVersion must be a string");
    }
    if p.get("capabilities").is_some_and(|c| !c.is_object()) {
        return Err("params.capabilities must be an object");
    }
    if p.get("clientInfo").is_some_and(|c| !c.is_object()) {
        return Err("params.clientInfo must be an object");
    }
    Ok(())
}

async fn initialize(
    layer: Arc<McpLayer>,
    target: Target,
    principal: Arc<Principal>,
    msg: Value,
) -> Response {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let params = jsonrpc::params(&msg).clone();
    if let Err(why) = check_initialize(&params) {
        return refuse(RpcError::new(jsonrpc::INVALID_PARAMS, why), id);
    }
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The client's version when we speak it, else our newest (the client decides whether
    // it can go on).
    let version = if VERSIONS.contains(&asked) {
        asked
    } else {
        VERSIONS[0]
    }
    .to_owned();
    let session = match layer
        .open_session(
            principal,
            target.name.clone(),
            &target.servers,
            version.clone(),
            params,
            None,
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return refuse(e, id),
    };
    let result = crate::calls::initialize_result(&session, target.name.as_deref());
    let mut res =
        tollgate_core::http::json_response(StatusCode::OK, jsonrpc::result(id, result).to_string());
    if let Ok(v) = HeaderValue::from_str(&session.id) {
        res.headers_mut().insert(SESSION, v);
    }
    tracing::info!(session = %session.id, principal = %session.owner, version = %version, upstreams = session.upstreams.len(), "MCP session opened");
    res
}

async fn get_stream(
    layer: Arc<McpLayer>,
    target: Target,
    principal: Arc<Principal>,
    headers: &HeaderMap,
) -> Response {
    if !accepts(headers, "text/event-stream") {
        return refuse(
            RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "Accept must include text/event-stream",
            )
            .with_status(StatusCode::NOT_ACCEPTABLE),
            Value::Null,
        );
    }
    let session = match find_session(&layer, &target, &principal, headers).await {
        Ok(s) => s,
        Err(e) => return refuse(e, Value::Null),
    };
    // The GET stream holds one of the key's stream slots while it is open.
    let slot = match layer.core.open_stream(&principal) {
        Ok(s) => s,
        Err(e) => return refuse(e.into(), Value::Null),
    };
    let hold = |res| tollgate_core::http::hold_while_body(res, slot);
    let prime = session.version.as_str() >= "2025-11-25";
    if let Some(last) = headers.get(LAST_EVENT_ID).and_then(|v| v.to_str().ok()) {
        let Some((n, seq)) = parse_event_id(last) else {
            return refuse(
                RpcError::new(jsonrpc::INVALID_REQUEST, "malformed Last-Event-ID"),
                Value::Null,
            );
        };
        let Some(stream) = session.stream(n) else {
            return refuse(
                RpcError::new(
                    jsonrpc::INVALID_REQUEST,
                    "that stream can no longer be resumed",
                )
                .with_status(StatusCode::NOT_FOUND),
                Value::Null,
            );
        };
        return hold(with_session(
            sse_response(stream.attach(Some(seq), false)),
            &session.id,
        ));
    }
    let standalone = session.standalone();
    if standalone.is_attached() {
        return refuse(
            RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "this session already has a GET stream open",
            )
            .with_status(StatusCode::CONFLICT),
            Value::Null,
        );
    }
    hold(with_session(
        sse_response(standalone.attach(None, prime)),
        &session.id,
    ))
}

async fn delete(
    layer: Arc<McpLayer>,
    target: Target,
    principal: Arc<Principal>,
    headers: &HeaderMap,
) -> Response {
    let session = match find_session(&layer, &target, &principal, headers).await {
        Ok(s) => s,
        Err(e) => return refuse(e, Value::Null),
    };
    layer.end_session(&session).await;
    tracing::info!(session = %session.id, "MCP session ended by the client");
    StatusCode::OK.into_response()
}

async fn metadata_root(State(layer): State<Arc<McpLayer>>, headers: HeaderMap) -> Response {
    metadata(&layer, None, &headers)
}

async fn metadata_named(
    State(layer): State<Arc<McpLayer>>,
    PathParam(name): PathParam,
    headers: HeaderMap,
) -> Response {
    metadata(&layer, Some(name), &headers)
}

/// RFC 9728 protected resource metadata: where clients get tokens for this resource.
fn metadata(layer: &McpLayer, name: Option<String>, headers: &HeaderMap) -> Response {
    let state = layer.state.load();
    if let Some(n) = &name {
        if state.config.virtual_server(n).is_none() {
            return tollgate_core::error::ApiError::not_found(format!(
                "no MCP virtual server named {n:?}"
            ))
            .into_response();
        }
    }
    let resource = format!(
        "{}{}",
        base_url(&state.config, headers),
        resource_path(name.as_deref())
    );
    let mut doc = json!({
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": "tollgate MCP gateway",
    });
    if let Some(issuer) = &state.issuer {
        doc["authorization_servers"] = json!([issuer]);
    }
    tollgate_core::http::json_response(StatusCode::OK, doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins() {
        let cfg = McpConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            public_url: Some("https://gw.example.com".into()),
            ..McpConfig::default()
        };
        let ok = |h: &[(&'static str, &'static str)]| origin_allowed(&headers(h), &cfg);
        assert!(ok(&[]), "no Origin: not a browser");
        assert!(ok(&[("origin", "http://localhost:3000")]));
        assert!(ok(&[("origin", "http://127.0.0.1:9")]));
        assert!(ok(&[("origin", "https://app.example.com")]));
        assert!(ok(&[("origin", "https://gw.example.com")]));
        // A rebound name: the attacker's origin and the Host it makes the browser send agree.
        assert!(!ok(&[
            ("origin", "http://evil.example.com:4000"),
            ("host", "evil.example.com:4000")
        ]));
        assert!(!ok(&[
            ("origin", "http://evil.example.com"),
            ("host", "127.0.0.1:4000")
        ]));
        assert!(!ok(&[("origin", "null")]));
    }

    #[test]
    fn accept_headers() {
        let h = headers(&[("accept", "application/json, text/event-stream")]);
        assert!(accepts(&h, "application/json") && accepts(&h, "text/event-stream"));
        let h = headers(&[("accept", "text/html")]);
        assert!(!accepts(&h, "application/json"));
        let h = headers(&[("accept", "*/*")]);
        assert!(accepts(&h, "text/event-stream"));
        assert!(accepts(&HeaderMap::new(), "application/json"));
    }
}
