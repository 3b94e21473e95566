//! The agent registry's admin API (master key): agents registered at run time, beside the
//! config's. `PUT /admin/v1/a2a/agents/{name}` takes an `a2a.agents[]` entry as JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tollgate_core::audit::AuditEvent;
use tollgate_core::error::{ApiError, ErrorKind};
use tollgate_core::http::{json_response, read_body, PathParam};
use tollgate_core::store::AgentRecord;

use crate::A2aLayer;

pub fn router(layer: Arc<A2aLayer>) -> Router {
    Router::new()
        .route("/admin/v1/a2a/agents", get(list))
        .route(
            "/admin/v1/a2a/agents/{name}",
            get(show).put(put).delete(delete),
        )
        .route("/admin/v1/a2a/agents/{name}/card", get(card))
        .with_state(layer)
}

/// An agent as the API shows it: its validated config (secrets redacted) and where it is
/// defined.
fn view(a: &tollgate_core::config::AgentConfig, source: &str, rec: Option<&AgentRecord>) -> Value {
    let mut v = json!({
        "name": a.name,
        "source": source,
        "agent": serde_json::to_value(a).unwrap_or(Value::Null),
    });
    if let Some(r) = rec {
        v["created_ms"] = r.created_ms.into();
        v["updated_ms"] = r.updated_ms.into();
    }
    v
}

async fn records(layer: &A2aLayer) -> Result<Vec<AgentRecord>, ApiError> {
    layer
        .core
        .stores
        .agents
        .list_agents()
        .await
        .map_err(ApiError::from)
}

async fn list(State(layer): State<Arc<A2aLayer>>, headers: HeaderMap) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let recs = match records(&layer).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let state = layer.state.load_full();
    let mut out: Vec<Value> = state
        .config
        .agents
        .iter()
        .map(|a| view(a, "config", None))
        .collect();
    for r in &recs {
        if state.config.agent(&r.name).is_some() {
            continue;
        }
        match tollgate_core::config::agent_from_json(&r.spec) {
            Ok(a) => out.push(view(&a, "admin", Some(r))),
            Err(errors) => out.push(json!({
                "name": r.name,
                "source": "admin",
                "error": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            })),
        }
    }
    json_response(StatusCode::OK, json!({"agents": out}).to_string())
}

async fn show(
    State(layer): State<Arc<A2aLayer>>,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let state = layer.state.load_full();
    if let Some(a) = state.config.agent(&name) {
        return json_response(StatusCode::OK, view(a, "config", None).to_string());
    }
    let recs = match records(&layer).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match recs.iter().find(|r| r.name == name) {
        Some(r) => match tollgate_core::config::agent_from_json(&r.spec) {
            Ok(a) => json_response(StatusCode::OK, view(&a, "admin", Some(r)).to_string()),
            Err(_) => {
                ApiError::internal(format!("stored agent {name:?} is invalid")).into_response()
            }
        },
        None => ApiError::not_found(format!("no agent named {name:?}"))
            .code("agent_not_found")
            .into_response(),
    }
}

/// The agent's card as the gateway serves it at `/a2a/{name}` (its upstream's, fetched or
/// cached, with the gateway's URLs), unfiltered by policy: `{card, error}`.
async fn card(
    State(layer): State<Arc<A2aLayer>>,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let state = layer.state.load_full();
    let Some(agent) = layer.find_agent(&state, &name) else {
        return ApiError::not_found(format!("no agent named {name:?}"))
            .code("agent_not_found")
            .into_response();
    };
    let body = match layer.served_card(&agent, &headers).await {
        Ok(card) => serde_json::json!({"card": card, "error": null}),
        Err(e) => serde_json::json!({"card": null, "error": e.message}),
    };
    json_response(StatusCode::OK, body.to_string())
}

async fn put(
    State(layer): State<Arc<A2aLayer>>,
    headers: HeaderMap,
    PathParam(name): PathParam,
    body: Body,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let limits = layer.core.config().limits.clone();
    let bytes = match read_body(&headers, body, &limits).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut spec: Value = match tollgate_core::http::parse_json(&bytes) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(obj) = spec.as_object_mut() else {
        return ApiError::invalid("the body must be an agent object").into_response();
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), name.clone().into());
        }
        Some(n) if n.as_str() == Some(name.as_str()) => {}
        Some(_) => {
            return ApiError::invalid("the body's name differs from the path's")
                .code("name_mismatch")
                .into_response()
        }
    }
    let agent = match tollgate_core::config::agent_from_json(&spec) {
        Ok(a) => a,
        Err(errors) => {
            return ApiError::invalid(
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
            .code("invalid_agent")
            .into_response()
        }
    };
    if layer.state.load().config.agent(&name).is_some() {
        return ApiError::new(
            ErrorKind::Conflict,
            format!("agent {name:?} is defined in the config file; change it there"),
        )
        .code("agent_in_config")
        .into_response();
    }
    let now = tollgate_core::time::now_ms();
    let rec = AgentRecord {
        name: name.clone(),
        spec,
        created_ms: now,
        updated_ms: now,
    };
    let created = match layer.core.stores.agents.put_agent(&rec).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    layer.registry_changed().await;
    let mut ev = AuditEvent::new(
        if created {
            "a2a.agent.create"
        } else {
            "a2a.agent.update"
        },
        "success",
    );
    ev.principal = Some("master".into());
    ev.target = Some(name.clone());
    ev.detail = json!({"agent": serde_json::to_value(&agent).unwrap_or(Value::Null)});
    layer.core.audit.record(ev).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(status, view(&agent, "admin", Some(&rec)).to_string())
}

async fn delete(
    State(layer): State<Arc<A2aLayer>>,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    if layer.state.load().config.agent(&name).is_some() {
        return ApiError::new(
            ErrorKind::Conflict,
            format!("agent {name:?} is defined in the config file; remove it there"),
        )
        .code("agent_in_config")
        .into_response();
    }
    match layer.core.stores.agents.delete_agent(&name).await {
        Ok(true) => {
            layer.registry_changed().await;
            let mut ev = AuditEvent::new("a2a.agent.delete", "success");
            ev.principal = Some("master".into());
            ev.target = Some(name);
            layer.core.audit.record(ev).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => ApiError::not_found(format!("no agent named {name:?}"))
            .code("agent_not_found")
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
