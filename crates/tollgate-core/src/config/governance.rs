//! Spend governance: operator price overrides, budgets and rate limits.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::raw::{RawBudget, RawPeriod, RawPrice, RawRateLimit, RawScope};
use super::FieldError;

/// A price for upstream models, replacing the vendored table's. Later entries win.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceOverride {
    /// The upstream model name, or a pattern with `*`.
    pub model: String,
    /// Only for this provider's targets; all providers when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_per_mtok: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_per_mtok: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_request: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
}

/// What a budget or rate limit counts separately: each key, each user, ... or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Key,
    User,
    Team,
    /// The model group the client asked for.
    Model,
    /// The conversation id (`x-tollgate-conversation-id`).
    Conversation,
    /// The principal's agent (from a JWT claim).
    Agent,
    /// One counter for all traffic.
    Global,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::User => "user",
            Scope::Team => "team",
            Scope::Model => "model",
            Scope::Conversation => "conversation",
            Scope::Agent => "agent",
            Scope::Global => "global",
        }
    }
}

impl From<RawScope> for Scope {
    fn from(s: RawScope) -> Scope {
        match s {
            RawScope::Key => Scope::Key,
            RawScope::User => Scope::User,
            RawScope::Team => Scope::Team,
            RawScope::Model => Scope::Model,
            RawScope::Conversation => Scope::Conversation,
            RawScope::Agent => Scope::Agent,
            RawScope::Global => Scope::Global,
        }
    }
}

/// When a budget starts over. Periods are calendar periods in UTC; weeks start on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
    /// Never resets (except by an operator).
    Total,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetConfig {
    pub name: String,
    pub scope: Scope,
    /// Which ids of the scope the budget applies to (patterns with `*`); each id gets its own
    /// budget. `["*"]` (the default): every id.
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    /// Only requests for these model names count and are limited; all when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    pub period: Period,
    pub limit_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertConfig>,
}

/// Soft alerts: a webhook called once per period when spend first reaches each threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertConfig {
    /// Fractions of the limit, ascending (`0.8` = 80%).
    pub thresholds: Vec<f64>,
    pub webhook: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    pub name: String,
    pub scope: Scope,
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

fn per_mtok(v: Option<f64>, at: String, errors: &mut Vec<FieldError>) -> Option<f64> {
    if let Some(x) = v {
        if !(x.is_finite() && x >= 0.0) {
            errors.push(FieldError::new(at, "must be a price of 0 or more"));
        }
    }
    v
}

pub(super) fn validate_prices(
    raw: Vec<RawPrice>,
    errors: &mut Vec<FieldError>,
) -> Vec<PriceOverride> {
    raw.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let at = |f: &str| format!("prices[{i}].{f}");
            if p.model.is_empty() || p.model.len() > 256 {
                errors.push(FieldError::new(at("model"), "must be 1-256 characters"));
            }
            if p.input_per_mtok.is_none() && p.output_per_mtok.is_none() && p.per_request.is_none()
            {
                errors.push(FieldError::new(
                    at("input_per_mtok"),
                    "set input_per_mtok, output_per_mtok or per_request",
                ));
            }
            PriceOverride {
                input_per_mtok: per_mtok(p.input_per_mtok, at("input_per_mtok"), errors)
                    .unwrap_or(0.0),
                output_per_mtok: per_mtok(p.output_per_mtok, at("output_per_mtok"), errors)
                    .unwrap_or(0.0),
                cache_read_per_mtok: per_mtok(
                    p.cache_read_per_mtok,
                    at("cache_read_per_mtok"),
                    errors,
                ),
                cache_write_per_mtok: per_mtok(
                    p.cache_write_per_mtok,
                    at("cache_write_per_mtok"),
                    errors,
                ),
                reasoning_per_mtok: per_mtok(
                    p.reasoning_per_mtok,
                    at("reasoning_per_mtok"),
                    errors,
                ),
                per_request: per_mtok(p.per_request, at("per_request"), errors),
                max_output_tokens: p.max_output_tokens,
                model: p.model,
                provider: p.provider,
            }
        })
        .collect()
}

fn validate_matches(
    scope: Scope,
    matches: Option<Vec<String>>,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Vec<String> {
    let matches = matches.unwrap_or_else(|| vec!["*".to_owned()]);
    if matches.is_empty() {
        errors.push(FieldError::new(
            at("match"),
            "needs at least one id or pattern",
        ));
    }
    for (j, m) in matches.iter().enumerate() {
        if m.is_empty() || m.len() > 256 {
            errors.push(FieldError::new(
                at(&format!("match[{j}]")),
                "must be 1-256 characters",
            ));
        }
    }
    if scope == Scope::Global && matches != ["*"] {
        errors.push(FieldError::new(
            at("match"),
            "scope global has one counter: leave match out",
        ));
    }
    matches
}

/// A rule's name: valid, and unique among its kind.
fn check_name(
    name: &str,
    what: &str,
    seen: &mut HashSet<String>,
    at: String,
    errors: &mut Vec<FieldError>,
) {
    if !super::valid_name(name) {
        errors.push(FieldError::new(
            at.clone(),
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if !seen.insert(name.to_owned()) {
        errors.push(FieldError::new(
            at,
            format!("{what} {name:?} is defined twice"),
        ));
    }
}

pub(super) fn validate_budgets(
    raw: Vec<RawBudget>,
    errors: &mut Vec<FieldError>,
) -> Vec<BudgetConfig> {
    let mut names = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, b)| {
            let at = |f: &str| format!("budgets[{i}].{f}");
            check_name(&b.name, "budget", &mut names, at("name"), errors);
            if !(b.limit_usd.is_finite() && b.limit_usd > 0.0) {
                errors.push(FieldError::new(at("limit_usd"), "must be greater than 0"));
            }
            let scope = Scope::from(b.scope);
            let matches = validate_matches(scope, b.matches, &at, errors);
            let alerts = b.alerts.map(|a| {
                if a.thresholds.is_empty() {
                    errors.push(FieldError::new(
                        at("alerts.thresholds"),
                        "needs at least one threshold",
                    ));
                }
                let mut thresholds = a.thresholds;
                for (j, t) in thresholds.iter().enumerate() {
                    if !(t.is_finite() && *t > 0.0 && *t <= 1.0) {
                        errors.push(FieldError::new(
                            at(&format!("alerts.thresholds[{j}]")),
                            "must be a fraction of the limit, above 0 and at most 1",
                        ));
                    }
                }
                thresholds.sort_by(f64::total_cmp);
                thresholds.dedup();
                if !(a.webhook.starts_with("http://") || a.webhook.starts_with("https://")) {
                    errors.push(FieldError::new(
                        at("alerts.webhook"),
                        "must be an http(s) URL",
                    ));
                }
                AlertConfig {
                    thresholds,
                    webhook: a.webhook,
                }
            });
            BudgetConfig {
                name: b.name,
                scope,
                matches,
                models: b.models.unwrap_or_default(),
                period: match b.period {
                    RawPeriod::Daily => Period::Daily,
                    RawPeriod::Weekly => Period::Weekly,
                    RawPeriod::Monthly => Period::Monthly,
                    RawPeriod::Total => Period::Total,
                },
                limit_usd: b.limit_usd,
                alerts,
            }
        })
        .collect()
}

pub(super) fn validate_rate_limits(
    raw: Vec<RawRateLimit>,
    errors: &mut Vec<FieldError>,
) -> Vec<RateLimitConfig> {
    let mut names = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |f: &str| format!("rate_limits[{i}].{f}");
            check_name(&r.name, "rate limit", &mut names, at("name"), errors);
            if r.rpm.is_none() && r.tpm.is_none() {
                errors.push(FieldError::new(at("rpm"), "set rpm, tpm or both"));
            }
            for (field, v) in [("rpm", r.rpm), ("tpm", r.tpm)] {
                if v == Some(0) {
                    errors.push(FieldError::new(at(field), "must be at least 1"));
                }
            }
            let scope = Scope::from(r.scope);
            let matches = validate_matches(scope, r.matches, &at, errors);
            RateLimitConfig {
                name: r.name,
                scope,
                matches,
                models: r.models.unwrap_or_default(),
                rpm: r.rpm,
                tpm: r.tpm,
            }
        })
        .collect()
}
