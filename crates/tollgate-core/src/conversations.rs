//! `GET /admin/v1/conversations/{id}`: one conversation across the three layers (and
//! `GET /admin/v1/conversations`, the most expensive ones of a time range). The agent
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
use crate::ledger::ConversationQuery;
use crate::Core;

/// The most records of each kind one answer holds.
const LIMIT: u32 = 10_000;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/admin/v1/conversations", get(list))
        .route("/admin/v1/conversations/{id}", get(conversation))
        .with_state(core)
}

pub(crate) fn audit_json(r: &AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "time": crate::time::rfc3339(r.time_ms.div_euclid(1000)),
        "time_ms": r.time_ms,
        "conversation_id": r.conversation_id,
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
}

/// Conversations with a model call in a time range (default the last 7 days), most expensive
/// first: id, first and last model call, and their model calls, tokens and cost in all. Read
/// from the conversation rollup: one row per conversation, however many calls it made.
async fn list(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    params: Result<axum::extract::Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    let p = match params {
        Ok(axum::extract::Query(p)) => p,
        Err(e) => return crate::error::ApiError::invalid(e.body_text()).into_response(),
    };
    let q = match (
        crate::spend::instant(Some(p.since.as_deref().unwrap_or("7d")), "since"),
        crate::spend::instant(p.until.as_deref(), "until"),
    ) {
        (Ok(since), Ok(until)) => ConversationQuery {
            since_ms: since.unwrap_or(0),
            until_ms: until.unwrap_or(i64::MAX),
            limit: p.limit.unwrap_or(50).clamp(1, 1000),
        },
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    core.ledger.flush().await;
    match core.stores.ledger.conversations(&q).await {
        Ok(rows) => {
            let time = |ms: i64| crate::time::rfc3339(ms.div_euclid(1000));
            let data: Vec<Value> = rows
                .iter()
                .map(|c| {
                    json!({
                        "conversation_id": c.conversation_id,
                        "first_at": time(c.first_ms),
                        "last_at": time(c.last_ms),
                        "model_calls": c.requests,
                        "failed": c.failed,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        "cost_usd": c.cost_usd,
                    })
                })
                .collect();
            json_response(StatusCode::OK, json!({ "data": data }).to_string())
        }
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
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
