//! Spend reporting and budget administration under `/admin/v1`: spend grouped by key, user,
//! team, model, provider, conversation, agent or day over a time range (JSON or CSV), and the
//! budgets with their live counters. Every route needs the master key.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::http::json_response;
use crate::ledger::{Dimension, SpendQuery, SpendRow};
use crate::Core;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/admin/v1/spend", get(spend))
        .route("/admin/v1/stats", get(stats))
        .route("/admin/v1/budgets", get(budgets))
        .route("/admin/v1/budgets/{name}/reset", post(reset_budget))
        .with_state(core)
}

/// The query of `GET /admin/v1/spend`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SpendParams {
    /// `key`, `user`, `team`, `model`, `provider`, `conversation`, `agent` or `day`; absent:
    /// one total row.
    pub group_by: Option<String>,
    /// Start of the range (inclusive): RFC 3339, a date, or a duration back from now (`7d`).
    pub since: Option<String>,
    /// End of the range (exclusive), in the same forms.
    pub until: Option<String>,
    /// Only records whose `filter_by` dimension equals `filter`.
    pub filter_by: Option<String>,
    pub filter: Option<String>,
    /// Rows to return, most expensive first (top spenders). Default 1000.
    pub limit: Option<u32>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// A spend report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpendReport {
    pub group_by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub rows: Vec<SpendRowView>,
    pub total_cost_usd: f64,
    pub total_requests: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpendRowView {
    /// The group's value (`null`: records without one, e.g. no team).
    pub group: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

fn dimension(name: &str, param: &str) -> Result<Dimension, ApiError> {
    Dimension::parse(name).ok_or_else(|| {
        ApiError::invalid(format!(
            "{param} must be key, user, team, model, provider, conversation, agent or day, not {name:?}"
        ))
        .param(param)
    })
}

pub(crate) fn instant(v: Option<&str>, param: &str) -> Result<Option<i64>, ApiError> {
    v.map(|s| crate::time::parse_instant(s).map_err(|e| ApiError::invalid(e).param(param)))
        .transpose()
}

impl SpendParams {
    /// The store query these parameters ask for.
    pub fn query(&self) -> Result<SpendQuery, ApiError> {
        let filter = match (&self.filter_by, &self.filter) {
            (Some(d), Some(v)) => Some((dimension(d, "filter_by")?, v.clone())),
            (None, None) => None,
            _ => return Err(ApiError::invalid("filter_by and filter go together").param("filter")),
        };
        Ok(SpendQuery {
            since_ms: instant(self.since.as_deref(), "since")?.unwrap_or(0),
            until_ms: instant(self.until.as_deref(), "until")?.unwrap_or(i64::MAX),
            group_by: self
                .group_by
                .as_deref()
                .map(|g| dimension(g, "group_by"))
                .transpose()?,
            filter,
            limit: self.limit.unwrap_or(1000).clamp(1, 100_000),
        })
    }
}

/// Runs a report: flushes the ledger first, so it includes every finished request.
pub async fn report(core: &Core, p: &SpendParams) -> Result<SpendReport, ApiError> {
    let q = p.query()?;
    core.ledger.flush().await;
    let rows = core.stores.ledger.spend(&q).await?;
    Ok(build_report(&q, rows))
}

pub fn build_report(q: &SpendQuery, rows: Vec<SpendRow>) -> SpendReport {
    let time = |ms: i64| crate::time::rfc3339(ms.div_euclid(1000));
    SpendReport {
        group_by: q.group_by.map(|d| d.name().to_owned()),
        since: (q.since_ms > 0).then(|| time(q.since_ms)),
        until: (q.until_ms < i64::MAX).then(|| time(q.until_ms)),
        // Not `sum()`: an empty f64 sum is -0.0.
        total_cost_usd: rows.iter().map(|r| r.cost_usd).fold(0.0, |a, b| a + b),
        total_requests: rows.iter().map(|r| r.requests).sum(),
        rows: rows
            .into_iter()
            .map(|r| SpendRowView {
                group: r.group,
                requests: r.requests,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                cost_usd: r.cost_usd,
            })
            .collect(),
    }
}

/// The report as CSV: a header naming the group column, then one line per row.
pub fn to_csv(r: &SpendReport) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let mut out = format!(
        "{},requests,prompt_tokens,completion_tokens,cost_usd\n",
        r.group_by.as_deref().unwrap_or("total")
    );
    for row in &r.rows {
        out.push_str(&format!(
            "{},{},{},{},{:.10}\n",
            field(row.group.as_deref().unwrap_or("")),
            row.requests,
            row.prompt_tokens,
            row.completion_tokens,
            row.cost_usd
        ));
    }
    out
}

/// Spend grouped by a dimension over a time range, most expensive first.
#[utoipa::path(get, path = "/admin/v1/spend", params(SpendParams),
    responses((status = 200, description = "The report (CSV with `format=csv`)", body = SpendReport),
              (status = 400, description = "Bad parameter", body = crate::admin::ErrorBody)),
    tag = "spend")]
pub async fn spend(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    params: Result<Query<SpendParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return ApiError::invalid(e.body_text()).into_response(),
    };
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return ApiError::invalid(format!("format must be json or csv, not {other:?}"))
                .param("format")
                .into_response()
        }
    };
    match report(&core, &p).await {
        Ok(r) if csv => {
            let mut res = (StatusCode::OK, to_csv(&r)).into_response();
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            res
        }
        Ok(r) => json_response(
            StatusCode::OK,
            serde_json::to_string(&r).unwrap_or_default(),
        ),
        Err(e) => e.into_response(),
    }
}

/// The query of `GET /admin/v1/stats`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    /// Start of the range: RFC 3339, a date, or a duration back from now. Default `24h`.
    pub since: Option<String>,
    /// End of the range (exclusive), in the same forms. Default now.
    pub until: Option<String>,
    /// How many buckets to cut the range into, 1-500. Default 24.
    pub buckets: Option<u32>,
}

fn latency_view(b: &crate::ledger::StatsBucket) -> serde_json::Value {
    let q = |x| b.latency_quantile(x).map(|v| (v * 100.0).round() / 100.0);
    serde_json::json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)})
}

/// Model requests over a time range from the ledger: totals (requests per second, error rate,
/// latency percentiles, tokens, cost), a series of buckets, and spend today and this month
/// (UTC). Percentiles are estimated from latency classes (see `ledger::LATENCY_BOUNDS_MS`).
#[utoipa::path(get, path = "/admin/v1/stats", params(StatsParams),
    responses((status = 200, description = "Totals and a time series"),
              (status = 400, description = "Bad parameter", body = crate::admin::ErrorBody)),
    tag = "spend")]
pub async fn stats(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    params: Result<Query<StatsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return ApiError::invalid(e.body_text()).into_response(),
    };
    let result = async {
        let now_ms = crate::time::now_ms();
        let since_ms = instant(Some(p.since.as_deref().unwrap_or("24h")), "since")?.unwrap_or(0);
        let until_ms = instant(p.until.as_deref(), "until")?.unwrap_or(now_ms);
        if until_ms <= since_ms {
            return Err(ApiError::invalid("until must be after since").param("until"));
        }
        let n = i64::from(p.buckets.unwrap_or(24));
        if !(1..=500).contains(&n) {
            return Err(ApiError::invalid("buckets must be 1-500").param("buckets"));
        }
        // Whole seconds, so bucket starts read cleanly.
        let per = (until_ms - since_ms + n - 1) / n;
        let mut bucket_ms = ((per + 999) / 1000).max(1) * 1000;
        // Buckets of an hour or more start on whole hours: the store answers those from its
        // hourly rollup instead of every record.
        let (mut since_ms, mut until_ms) = (since_ms, until_ms);
        let h = crate::ledger::HOUR_MS;
        if bucket_ms >= h {
            bucket_ms = (bucket_ms + h - 1) / h * h;
            since_ms = since_ms.div_euclid(h) * h;
            until_ms = until_ms.saturating_add(h - 1).div_euclid(h) * h;
        }
        core.ledger.flush().await;
        let q = crate::ledger::StatsQuery {
            since_ms,
            until_ms,
            bucket_ms,
        };
        let buckets = core.stores.ledger.ledger_stats(&q).await?;
        let mut total = crate::ledger::StatsBucket::default();
        for b in &buckets {
            total.add(b);
        }
        let mut by_index: std::collections::HashMap<i64, &crate::ledger::StatsBucket> =
            buckets.iter().map(|b| (b.index, b)).collect();
        let count = (until_ms - since_ms + bucket_ms - 1) / bucket_ms;
        let empty = crate::ledger::StatsBucket::default();
        let series: Vec<serde_json::Value> = (0..count)
            .map(|i| {
                let b = by_index.remove(&i).unwrap_or(&empty);
                serde_json::json!({
                    "t": crate::time::rfc3339((since_ms + i * bucket_ms).div_euclid(1000)),
                    "requests": b.requests,
                    "errors": b.errors,
                    "cost_usd": b.cost_usd,
                    "latency_ms": latency_view(b),
                })
            })
            .collect();
        let spent_since = |from_ms: i64| {
            let core = core.clone();
            async move {
                let rows = core
                    .stores
                    .ledger
                    .spend(&SpendQuery {
                        since_ms: from_ms,
                        ..SpendQuery::default()
                    })
                    .await?;
                Ok::<f64, ApiError>(rows.iter().map(|r| r.cost_usd).fold(0.0, |a, b| a + b))
            }
        };
        let today = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
            .map_err(|e| ApiError::internal(e.to_string()))?
            .date();
        let midnight = |d: time::Date| d.midnight().assume_utc().unix_timestamp() * 1000;
        let month_start = today
            .replace_day(1)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let seconds = (until_ms - since_ms) as f64 / 1000.0;
        Ok(serde_json::json!({
            "since": crate::time::rfc3339(since_ms.div_euclid(1000)),
            "until": crate::time::rfc3339(until_ms.div_euclid(1000)),
            "bucket_seconds": bucket_ms / 1000,
            "totals": {
                "requests": total.requests,
                "errors": total.errors,
                "error_rate": if total.requests == 0 { 0.0 } else { total.errors as f64 / total.requests as f64 },
                "requests_per_s": total.requests as f64 / seconds,
                "cost_usd": total.cost_usd,
                "prompt_tokens": total.prompt_tokens,
                "completion_tokens": total.completion_tokens,
                "latency_ms": latency_view(&total),
            },
            "series": series,
            "spend_today_usd": spent_since(midnight(today)).await?,
            "spend_month_usd": spent_since(midnight(month_start)).await?,
        }))
    }
    .await;
    match result {
        Ok(v) => json_response(StatusCode::OK, v.to_string()),
        Err(e) => e.into_response(),
    }
}

/// Every budget with its counters in the current period.
#[utoipa::path(get, path = "/admin/v1/budgets",
    responses((status = 200, description = "Budgets and their counters")), tag = "spend")]
pub async fn budgets(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    match core.budgets.report().await {
        Ok(list) => json_response(
            StatusCode::OK,
            serde_json::json!({ "data": list }).to_string(),
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The scope id whose spend restarts (a key id, team id, ...). Omit for a `global` budget.
    pub id: Option<String>,
}

/// Restarts a budget's spend for one scope id from zero, now.
#[utoipa::path(post, path = "/admin/v1/budgets/{name}/reset", params(("name" = String, Path)),
    request_body = ResetRequest,
    responses((status = 200, description = "Reset"), (status = 404, description = "No such budget", body = crate::admin::ErrorBody)),
    tag = "spend")]
pub async fn reset_budget(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = core.require_master(&headers).await {
        return e.into_response();
    }
    let req: ResetRequest = if body.is_empty() {
        ResetRequest { id: None }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return ApiError::from_json(&e).into_response(),
        }
    };
    let id = req
        .id
        .unwrap_or_else(|| crate::budget::GLOBAL_ID.to_owned());
    let mut ev = crate::audit::AuditEvent::new("budget.reset", "success");
    ev.principal = Some("master".to_owned());
    ev.target = Some(format!("{name}:{id}"));
    match core.budgets.reset(&name, &id).await {
        Ok(()) => {
            core.audit.record(ev).await;
            json_response(
                StatusCode::OK,
                serde_json::json!({"budget": name, "id": id, "reset": true}).to_string(),
            )
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = build_report(
            &SpendQuery {
                group_by: Some(Dimension::Team),
                ..SpendQuery::default()
            },
            vec![
                SpendRow {
                    group: Some("a,\"b\"".into()),
                    requests: 2,
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    cost_usd: 0.5,
                },
                SpendRow {
                    group: None,
                    requests: 1,
                    ..SpendRow::default()
                },
            ],
        );
        assert_eq!(
            to_csv(&r),
            "team,requests,prompt_tokens,completion_tokens,cost_usd\n\"a,\"\"b\"\"\",2,3,4,0.5000000000\n,1,0,0,0.0000000000\n"
        );
        assert_eq!(r.total_requests, 3);
    }

    #[test]
    fn parameters_are_checked() {
        let bad = SpendParams {
            group_by: Some("colour".into()),
            ..SpendParams::default()
        };
        assert!(bad.query().unwrap_err().message.contains("group_by"));
        let half = SpendParams {
            filter_by: Some("team".into()),
            ..SpendParams::default()
        };
        assert!(half.query().is_err());
        let ok = SpendParams {
            group_by: Some("day".into()),
            since: Some("2026-11-01".into()),
            filter_by: Some("team".into()),
            filter: Some("ml".into()),
            ..SpendParams::default()
        };
        let q = ok.query().unwrap();
        assert_eq!(q.group_by, Some(Dimension::Day));
        assert_eq!(q.since_ms, 1_793_491_200_000);
    }
}
