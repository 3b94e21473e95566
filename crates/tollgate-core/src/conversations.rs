//! `GET /admin/v1/conversations/{id}`: one conversation across the three layers. The agent
//! layer records every hop under the A2A `contextId`; agents calling models and tools through
//! the gateway pass the same id (`x-tollgate-conversation-id`, which the agent layer sends them),
//! so the ledger's model calls and the audit chain's tool calls join on it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::audit::AuditRecord;
use crate::http::{json_response, PathParam};
use crate::Core;

/// The most records of each kind one answer holds.
const LIMIT: u32 = 10_000;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/admin/v1/conversations/{id}", get(conversation))
        .with_state(core)
}

fn audit_json(r: &AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "time_ms": r.time_ms,
        "request_id": r.request_id,
        "trace_id": r.trace_id,
        "principal": r.principal,
        "action": r.action,
        "target": r.target,
        "decision": r.decision,
        "rule": r.rule,
        "outcome": r.outcome,
        "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
    })
}

async fn conversation(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    // Records still in the writers' queues belong in the answer.
    core.audit.flush().await;
    core.ledger.flush().await;
    let audit = match core.stores.audit.conversation_audit(&id, LIMIT).await {
        Ok(a) => a,
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    let q = crate::ledger::LedgerQuery {
        conversation: Some(id.clone()),
        limit: LIMIT,
        ..Default::default()
    };
    let ledger = match core.stores.ledger.read_ledger(&q).await {
        Ok(l) => l,
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    let agent_calls: Vec<Value> = audit
        .iter()
        .filter(|r| r.action.starts_with("a2a."))
        .map(audit_json)
        .collect();
    let tool_calls: Vec<Value> = audit
        .iter()
        .filter(|r| r.action.starts_with("mcp."))
        .map(audit_json)
        .collect();
    let (mut prompt, mut completion, mut cost) = (0u64, 0u64, 0f64);
    for r in &ledger {
        prompt += r.prompt_tokens;
        completion += r.completion_tokens;
        cost += r.cost_usd;
    }
    let body = json!({
        "conversation_id": id,
        "agent_calls": agent_calls,
        "model_calls": ledger,
        "tool_calls": tool_calls,
        "totals": {
            "agent_calls": agent_calls.len(),
            "model_calls": ledger.len(),
            "tool_calls": tool_calls.len(),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": cost,
        },
    });
    json_response(StatusCode::OK, body.to_string())
}
