//! The tool layer's admin API (master key only): the approval queue and tool pins.
//!
//! - `GET  /admin/v1/mcp/approvals?status=pending&limit=100`
//! - `GET  /admin/v1/mcp/approvals/{id}`
//! - `POST /admin/v1/mcp/approvals/{id}/approve` and `/deny`, body `{"note": "..."}` (optional)
//! - `GET  /admin/v1/mcp/pins?server=files`
//! - `POST /admin/v1/mcp/pins/{server}/{tool}/approve`, body `{"sha256": "<pending digest>"}`

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::audit::AuditEvent;
use tollgate_core::error::ApiError;
use tollgate_core::http::json_response;
use tollgate_core::store::{ApprovalRecord, ToolPin};

use crate::McpLayer;

pub fn router(layer: Arc<McpLayer>) -> Router {
    Router::new()
        .route("/admin/v1/mcp/approvals", get(list_approvals))
        .route("/admin/v1/mcp/approvals/{id}", get(get_approval))
        .route("/admin/v1/mcp/approvals/{id}/approve", post(approve))
        .route("/admin/v1/mcp/approvals/{id}/deny", post(deny))
        .route("/admin/v1/mcp/servers", get(list_servers))
        .route("/admin/v1/mcp/pins", get(list_pins))
        .route(
            "/admin/v1/mcp/pins/{server}/{tool}/approve",
            post(approve_pin),
        )
        .with_state(layer)
}

/// The configured upstream servers: transport and address (never credentials), drift action,
/// and how many of their tools are pinned and how many drifted; open sessions on this replica.
async fn list_servers(State(layer): State<Arc<McpLayer>>, headers: HeaderMap) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let pins = match layer.core.stores.mcp.tool_pins(None).await {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let state = layer.state.load();
    let servers: Vec<Value> = state
        .config
        .servers
        .iter()
        .map(|s| {
            use tollgate_core::config::McpTransport;
            let address = match &s.transport {
                McpTransport::StreamableHttp { url, .. } | McpTransport::Sse { url, .. } => {
                    url.clone()
                }
                McpTransport::Stdio { command, .. } => command.clone(),
            };
            let mine = pins.iter().filter(|p| p.server == s.name);
            json!({
                "name": s.name,
                "transport": s.transport.kind(),
                "address": address,
                "timeout_ms": s.timeout.as_millis() as u64,
                "on_drift": s.on_drift.unwrap_or(state.config.on_drift),
                "oauth": s.oauth.is_some(),
                "tools": mine.clone().count(),
                "drifted": mine.filter(|p| p.pending_sha256.is_some()).count(),
            })
        })
        .collect();
    ok(&json!({"servers": servers, "sessions": layer.session_count()}))
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v.to_string())
}

/// An approval as the API shows it: a pending or approved one past its expiry is `expired`.
fn approval_view(a: &ApprovalRecord, now_ms: i64) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if matches!(a.status.as_str(), "pending" | "approved") && a.expires_ms <= now_ms {
        v["status"] = json!("expired");
    }
    v
}

fn pin_view(p: &ToolPin) -> Value {
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    let pending = p.pending_sha256.as_ref().map(|sha| {
        let new = parse(p.pending_definition.as_deref().unwrap_or_default());
        let old = parse(&p.definition);
        json!({
            "sha256": sha,
            "definition": new,
            "seen_ms": p.pending_ms,
            "diff": if old.is_null() { Value::Null } else { crate::pins::diff(&old, &new) },
        })
    });
    json!({
        "server": p.server,
        "tool": p.tool,
        "sha256": (!p.sha256.is_empty()).then_some(&p.sha256),
        "definition": parse(&p.definition),
        "pinned_ms": p.pinned_ms,
        "drift": pending,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListApprovals {
    status: Option<String>,
    limit: Option<u32>,
}

async fn list_approvals(
    State(layer): State<Arc<McpLayer>>,
    headers: HeaderMap,
    query: Result<Query<ListApprovals>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let Ok(Query(q)) = query else {
        return ApiError::invalid("query parameters are status and limit").into_response();
    };
    if let Some(s) = &q.status {
        if !["pending", "approved", "denied", "used"].contains(&s.as_str()) {
            return ApiError::invalid("status must be pending, approved, denied or used")
                .param("status")
                .into_response();
        }
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match layer
        .core
        .stores
        .mcp
        .list_approvals(q.status.as_deref(), limit)
        .await
    {
        Ok(list) => {
            let now = tollgate_core::time::now_ms();
            let items: Vec<Value> = list.iter().map(|a| approval_view(a, now)).collect();
            ok(&json!({ "approvals": items }))
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn get_approval(
    State(layer): State<Arc<McpLayer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    match layer.core.stores.mcp.get_approval(&id).await {
        Ok(Some(a)) => ok(&approval_view(&a, tollgate_core::time::now_ms())),
        Ok(None) => ApiError::not_found(format!("no approval {id}")).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Decide {
    note: Option<String>,
}

async fn approve(
    State(layer): State<Arc<McpLayer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    decide(layer, headers, id, body, true).await
}

async fn deny(
    State(layer): State<Arc<McpLayer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    decide(layer, headers, id, body, false).await
}

async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    layer: &McpLayer,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let limits = layer.core.config().limits.clone();
    let bytes = tollgate_core::http::read_body(headers, body, &limits).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    tollgate_core::http::parse_json(&bytes)
}

async fn decide(
    layer: Arc<McpLayer>,
    headers: HeaderMap,
    id: String,
    body: Body,
    approve: bool,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let d: Decide = match read_json(&layer, &headers, body).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let store = &layer.core.stores.mcp;
    let now = tollgate_core::time::now_ms();
    match store
        .decide_approval(&id, approve, "master", d.note.as_deref(), now)
        .await
    {
        Ok(Some(a)) => {
            crate::approval::audit(&layer, &a, if approve { "approve" } else { "deny" });
            layer.approvals_changed.notify_waiters();
            layer
                .core
                .bus
                .publish(tollgate_core::bus::topic::MCP_APPROVALS, a.id.clone())
                .await;
            ok(&approval_view(&a, now))
        }
        Ok(None) => match store.get_approval(&id).await {
            Ok(Some(a)) => ApiError::new(
                tollgate_core::error::ErrorKind::Conflict,
                format!(
                    "approval {id} is {}, not pending",
                    approval_view(&a, now)["status"].as_str().unwrap_or("?")
                ),
            )
            .into_response(),
            Ok(None) => ApiError::not_found(format!("no approval {id}")).into_response(),
            Err(e) => ApiError::from(e).into_response(),
        },
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListPins {
    server: Option<String>,
}

async fn list_pins(
    State(layer): State<Arc<McpLayer>>,
    headers: HeaderMap,
    query: Result<Query<ListPins>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let Ok(Query(q)) = query else {
        return ApiError::invalid("the query parameter is server").into_response();
    };
    match layer.core.stores.mcp.tool_pins(q.server.as_deref()).await {
        Ok(pins) => {
            let items: Vec<Value> = pins.iter().map(pin_view).collect();
            ok(&json!({ "pins": items }))
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApprovePin {
    sha256: String,
}

async fn approve_pin(
    State(layer): State<Arc<McpLayer>>,
    headers: HeaderMap,
    Path((server, tool)): Path<(String, String)>,
    body: Body,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let req: ApprovePin = match read_json(&layer, &headers, body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if req.sha256.is_empty() {
        return ApiError::invalid("sha256 (the pending definition's digest) is required")
            .param("sha256")
            .into_response();
    }
    let pinned_in_config = layer
        .state
        .load()
        .config
        .server(&server)
        .is_some_and(|s| s.pins.contains_key(&tool));
    if pinned_in_config {
        return ApiError::new(
            tollgate_core::error::ErrorKind::Conflict,
            format!("{server}/{tool} is pinned in the config; change the pin there"),
        )
        .into_response();
    }
    let now = tollgate_core::time::now_ms();
    let mut ev = AuditEvent::new("mcp.tool.approve", "success");
    ev.principal = Some("master".to_owned());
    ev.target = Some(format!("{server}/{tool}"));
    ev.detail = json!({"server": server, "tool": tool, "sha256": req.sha256});
    let result = layer
        .core
        .stores
        .mcp
        .approve_tool(&server, &tool, &req.sha256, now)
        .await;
    let response = match &result {
        Ok(Some(p)) => {
            layer.pins.approved(&server, &tool, &p.sha256);
            let notice = crate::pins::Approved {
                server: server.clone(),
                tool: tool.clone(),
                sha256: p.sha256.clone(),
            };
            if let Ok(payload) = serde_json::to_string(&notice) {
                layer
                    .core
                    .bus
                    .publish(tollgate_core::bus::topic::MCP_PINS, payload)
                    .await;
            }
            ok(&pin_view(p))
        }
        Ok(None) => {
            ev.outcome = "failure".to_owned();
            ApiError::new(
                tollgate_core::error::ErrorKind::Conflict,
                format!(
                    "{server}/{tool} has no pending definition with sha256 {}",
                    req.sha256
                ),
            )
            .into_response()
        }
        Err(e) => {
            ev.outcome = "failure".to_owned();
            ApiError::internal(e.to_string()).into_response()
        }
    };
    layer.core.audit.record(ev).await;
    response
}
