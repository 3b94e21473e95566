//! `GET /admin/v1/audit`: the audit chain searched newest first (by action, principal or
//! target, exactly or by prefix with a trailing `*`; decision, outcome, conversation, request
//! id, time), paged by `before`; and `GET /admin/v1/audit/verify`, the whole chain checked.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::{AuditQuery, FieldMatch};
use crate::error::ApiError;
use crate::http::json_response;
use crate::Core;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/admin/v1/audit", get(search))
        .route("/admin/v1/audit/verify", get(verify))
        .with_state(core)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    action: Option<String>,
    principal: Option<String>,
    target: Option<String>,
    decision: Option<String>,
    outcome: Option<String>,
    conversation: Option<String>,
    request_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

fn instant(v: Option<&str>, param: &str) -> Result<Option<i64>, ApiError> {
    v.map(|s| crate::time::parse_instant(s).map_err(|e| ApiError::invalid(e).param(param)))
        .transpose()
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

async fn search(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    let p = match params {
        Ok(Query(p)) => p,
        Err(e) => return ApiError::invalid(e.body_text()).into_response(),
    };
    let result = async {
        let limit = p.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::invalid("limit must be 1-500").param("limit"));
        }
        let q = AuditQuery {
            action: nonempty(p.action).map(|s| FieldMatch::parse(&s)),
            principal: nonempty(p.principal).map(|s| FieldMatch::parse(&s)),
            target: nonempty(p.target).map(|s| FieldMatch::parse(&s)),
            decision: nonempty(p.decision),
            outcome: nonempty(p.outcome),
            conversation: nonempty(p.conversation),
            request_id: nonempty(p.request_id),
            since_ms: instant(p.since.as_deref(), "since")?,
            until_ms: instant(p.until.as_deref(), "until")?,
            before: p.before,
            limit,
        };
        core.audit.flush().await;
        let records = core.stores.audit.search_audit(&q).await?;
        let next_before = (records.len() == limit as usize)
            .then(|| records.last().map(|r| r.seq))
            .flatten();
        let data: Vec<Value> = records
            .iter()
            .map(|r| {
                let mut v = crate::conversations::audit_json(r);
                v["hash"] = json!(r.hash);
                v
            })
            .collect();
        Ok(json!({"data": data, "next_before": next_before}))
    }
    .await;
    match result {
        Ok(v) => json_response(StatusCode::OK, v.to_string()),
        Err(e) => e.into_response(),
    }
}

/// Walks the whole chain (every record's hash and link, and the recorded head).
async fn verify(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    core.audit.flush().await;
    let head = match core.stores.audit.audit_head().await {
        Ok(h) => h.map(|h| h.0),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let body = match crate::audit::verify(core.stores.audit.as_ref()).await {
        Ok(Ok(records)) => json!({
            "status": "intact", "records": records, "head_seq": head, "problem": null,
            "checked_at": crate::time::rfc3339(crate::time::now()),
        }),
        Ok(Err(tamper)) => json!({
            "status": "broken", "records": null, "head_seq": head,
            "problem": tamper.to_string(),
            "checked_at": crate::time::rfc3339(crate::time::now()),
        }),
        Err(e) => return ApiError::from(e).into_response(),
    };
    json_response(StatusCode::OK, body.to_string())
}
