//! Model groups: the public model names clients send, and how each is routed (targets with
//! their weights and capacities, the strategy that picks one, retries, cooldowns, fallbacks).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::raw::{RawModel, RawStrategy};
use super::{units, FieldError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The public name, or a pattern with one `*` (`anthropic/*`).
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub strategy: Strategy,
    /// For `strategy: sticky`: the request header whose value pins a deployment. Without it,
    /// the conversation id does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    pub targets: Vec<TargetConfig>,
    /// Other model groups tried, in order, after every target of this one failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Tried instead when the upstream says the prompt exceeds the context window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub context_window_fallbacks: Vec<String>,
    /// Tried instead when the upstream refuses the content on policy grounds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub content_policy_fallbacks: Vec<String>,
    /// Refuse (400) a request that would lose a field in translation to a target's dialect,
    /// instead of serving it and reporting the loss in `x-tollgate-translation-loss`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict_translation: bool,
    /// The exact response cache for this group; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCache>,
    pub retry: RetryConfig,
    pub cooldown: CooldownConfig,
}

impl ModelConfig {
    pub fn is_pattern(&self) -> bool {
        self.name.contains('*')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Random, in proportion to each target's weight.
    Weighted,
    /// The lowest `priority` number that is available; weighted among equals.
    Priority,
    /// The fewest requests in flight.
    LeastBusy,
    /// Peak-EWMA latency with the power of two random choices.
    Latency,
    /// The cheapest available target by the price table.
    Cost,
    /// The same deployment for the same conversation (or sticky header value).
    Sticky,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::Priority => "priority",
            Strategy::LeastBusy => "least_busy",
            Strategy::Latency => "latency",
            Strategy::Cost => "cost",
            Strategy::Sticky => "sticky",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetConfig {
    pub provider: String,
    /// The upstream model; in a pattern group, `*` stands for what the pattern's `*` matched.
    pub model: String,
    pub weight: u32,
    pub priority: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Requests per minute this deployment accepts; at capacity it is skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute this deployment accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Time to the first streamed chunk (or response head) before the attempt is abandoned.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "units::opt_duration::serialize"
    )]
    pub ttft_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryConfig {
    /// Upstream calls per model group, the first included.
    pub attempts: u32,
    /// The first backoff; doubled each retry, with full jitter.
    #[serde(with = "units::duration")]
    pub backoff: Duration,
    #[serde(with = "units::duration")]
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not waited for.
    #[serde(with = "units::duration")]
    pub max_retry_after: Duration,
    /// Retries allowed as a fraction of requests (plus a small reserve), so a failing
    /// provider does not multiply load.
    pub budget: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
            budget: 0.2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CooldownConfig {
    /// Failures within `window` that take a target out.
    pub failures: u32,
    #[serde(with = "units::duration")]
    pub window: Duration,
    /// How long a target stays out before one probe request may try it.
    #[serde(with = "units::duration")]
    pub duration: Duration,
}

impl Default for CooldownConfig {
    fn default() -> Self {
        CooldownConfig {
            failures: 3,
            window: Duration::from_secs(30),
            duration: Duration::from_secs(30),
        }
    }
}

/// Whether `pattern` (one `*`) matches `name`; returns what the `*` matched.
pub fn pattern_capture<'a>(pattern: &str, name: &'a str) -> Option<&'a str> {
    let (prefix, suffix) = pattern.split_once('*')?;
    if name.len() < prefix.len() + suffix.len() {
        return None;
    }
    let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (!middle.is_empty()).then_some(middle)
}

fn valid_model_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c == '?')
}

pub(super) fn validate_models(
    raw: Vec<RawModel>,
    provider_names: &HashSet<String>,
    errors: &mut Vec<FieldError>,
) -> Vec<ModelConfig> {
    let mut models = Vec::new();
    // Every public name (group names and aliases) and where it was declared.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut claim = |name: &str, at: String, errors: &mut Vec<FieldError>| {
        if let Some(first) = names.get(name) {
            errors.push(FieldError::new(
                at,
                format!("model name {name:?} is already used at {first}"),
            ));
        } else {
            names.insert(name.to_owned(), at);
        }
    };
    for (i, m) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("models[{i}].{field}");
        let stars = m.name.matches('*').count();
        if !valid_model_name(&m.name) || stars > 1 {
            errors.push(FieldError::new(
                at("name"),
                "must be 1-256 characters with no control characters or '?', and at most one '*'",
            ));
        }
        claim(&m.name, at("name"), errors);
        let aliases = m.aliases.unwrap_or_default();
        for (j, a) in aliases.iter().enumerate() {
            if !valid_model_name(a) || a.contains('*') {
                errors.push(FieldError::new(
                    at(&format!("aliases[{j}]")),
                    "must be 1-256 characters with no control characters, '*' or '?'",
                ));
            }
            claim(a, at(&format!("aliases[{j}]")), errors);
        }
        if m.targets.is_empty() {
            errors.push(FieldError::new(at("targets"), "needs at least one target"));
        }
        let mut targets = Vec::new();
        for (j, t) in m.targets.into_iter().enumerate() {
            let tat = |field: &str| at(&format!("targets[{j}].{field}"));
            if !provider_names.contains(&t.provider) {
                errors.push(FieldError::new(
                    tat("provider"),
                    format!("unknown provider {:?}", t.provider),
                ));
            }
            let model = t.model.unwrap_or_else(|| m.name.clone());
            if model.is_empty() || model.len() > 256 {
                errors.push(FieldError::new(tat("model"), "must be 1-256 characters"));
            }
            if model.contains('*') && stars != 1 {
                errors.push(FieldError::new(
                    tat("model"),
                    "'*' in a target model needs a pattern group name with one '*'",
                ));
            }
            let weight = t.weight.unwrap_or(1);
            if !(1..=1_000_000).contains(&weight) {
                errors.push(FieldError::new(tat("weight"), "must be 1-1000000"));
            }
            if t.max_concurrency == Some(0) {
                errors.push(FieldError::new(
                    tat("max_concurrency"),
                    "must be at least 1",
                ));
            }
            if t.rpm == Some(0) {
                errors.push(FieldError::new(tat("rpm"), "must be at least 1"));
            }
            if t.tpm == Some(0) {
                errors.push(FieldError::new(tat("tpm"), "must be at least 1"));
            }
            if t.ttft_timeout.is_some_and(|d| d.is_zero()) {
                errors.push(FieldError::new(
                    tat("ttft_timeout"),
                    "must be greater than 0",
                ));
            }
            targets.push(TargetConfig {
                provider: t.provider,
                model,
                weight,
                priority: t.priority.unwrap_or(0),
                max_concurrency: t.max_concurrency,
                rpm: t.rpm,
                tpm: t.tpm,
                ttft_timeout: t.ttft_timeout,
            });
        }
        let strategy = match m.strategy.unwrap_or(RawStrategy::Weighted) {
            RawStrategy::Weighted => Strategy::Weighted,
            RawStrategy::Priority => Strategy::Priority,
            RawStrategy::LeastBusy => Strategy::LeastBusy,
            RawStrategy::Latency => Strategy::Latency,
            RawStrategy::Cost => Strategy::Cost,
            RawStrategy::Sticky => Strategy::Sticky,
        };
        if let Some(h) = &m.sticky_header {
            if strategy != Strategy::Sticky {
                errors.push(FieldError::new(
                    at("sticky_header"),
                    "only valid with strategy: sticky",
                ));
            }
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errors.push(FieldError::new(
                    at("sticky_header"),
                    format!("{h:?} is not a valid header name"),
                ));
            }
        }
        let r = m.retry.unwrap_or_default();
        let d = RetryConfig::default();
        let retry = RetryConfig {
            attempts: r.attempts.unwrap_or(d.attempts),
            backoff: r.backoff.unwrap_or(d.backoff),
            max_backoff: r.max_backoff.unwrap_or(d.max_backoff),
            max_retry_after: r.max_retry_after.unwrap_or(d.max_retry_after),
            budget: r.budget.unwrap_or(d.budget),
        };
        if !(1..=10).contains(&retry.attempts) {
            errors.push(FieldError::new(at("retry.attempts"), "must be 1-10"));
        }
        if !(0.0..=10.0).contains(&retry.budget) {
            errors.push(FieldError::new(at("retry.budget"), "must be 0.0-10.0"));
        }
        if retry.max_backoff < retry.backoff {
            errors.push(FieldError::new(
                at("retry.max_backoff"),
                "must be at least retry.backoff",
            ));
        }
        let c = m.cooldown.unwrap_or_default();
        let d = CooldownConfig::default();
        let cooldown = CooldownConfig {
            failures: c.failures.unwrap_or(d.failures),
            window: c.window.unwrap_or(d.window),
            duration: c.duration.unwrap_or(d.duration),
        };
        if cooldown.failures == 0 {
            errors.push(FieldError::new(
                at("cooldown.failures"),
                "must be at least 1",
            ));
        }
        if cooldown.window.is_zero() || cooldown.duration.is_zero() {
            errors.push(FieldError::new(
                at("cooldown"),
                "window and duration must be greater than 0",
            ));
        }
        models.push(ModelConfig {
            name: m.name,
            aliases,
            strategy,
            sticky_header: m.sticky_header.map(|h| h.to_ascii_lowercase()),
            targets,
            fallbacks: m.fallbacks.unwrap_or_default(),
            context_window_fallbacks: m.context_window_fallbacks.unwrap_or_default(),
            content_policy_fallbacks: m.content_policy_fallbacks.unwrap_or_default(),
            strict_translation: m.strict_translation.unwrap_or(false),
            cache: route_cache(m.cache, &at("cache"), errors),
            retry,
            cooldown,
        });
    }
    // Fallbacks must name a group that exists (directly, by alias or through a pattern) and
    // not the group itself.
    for (i, m) in models.iter().enumerate() {
        for (field, list) in [
            ("fallbacks", &m.fallbacks),
            ("context_window_fallbacks", &m.context_window_fallbacks),
            ("content_policy_fallbacks", &m.content_policy_fallbacks),
        ] {
            for (j, f) in list.iter().enumerate() {
                let at = format!("models[{i}].{field}[{j}]");
                match resolve(&models, f) {
                    None => errors.push(FieldError::new(at, format!("unknown model {f:?}"))),
                    Some(k) if k == i => {
                        errors.push(FieldError::new(at, "a group cannot fall back to itself"))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    models
}

/// The index of the group serving `name`: exact names and aliases first, then the pattern
/// with the longest literal part.
pub fn resolve(models: &[ModelConfig], name: &str) -> Option<usize> {
    if let Some(i) = models
        .iter()
        .position(|m| !m.is_pattern() && (m.name == name || m.aliases.iter().any(|a| a == name)))
    {
        return Some(i);
    }
    models
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_pattern() && pattern_capture(&m.name, name).is_some())
        .max_by_key(|(i, m)| (m.name.len(), std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_the_star() {
        assert_eq!(
            pattern_capture("anthropic/*", "anthropic/claude-3"),
            Some("claude-3")
        );
        assert_eq!(pattern_capture("anthropic/*", "anthropic/"), None);
        assert_eq!(pattern_capture("*-latest", "gpt-latest"), Some("gpt"));
        assert_eq!(pattern_capture("a*a", "a"), None);
        assert_eq!(pattern_capture("x/*", "y/z"), None);
    }
}

/// Who shares cached answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Callers of one team (a caller without a team: its key alone).
    Team,
    /// One key (or JWT subject).
    Key,
    /// One user (a caller without a user: its key alone).
    User,
    /// Everyone: answers are shared across tenants.
    Global,
}

/// Which requests the cache answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheWhen {
    Always,
    /// Only requests with `temperature: 0` (the answers that are meant to repeat).
    TemperatureZero,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteCache {
    #[serde(with = "units::duration")]
    pub ttl: Duration,
    pub scope: CacheScope,
    pub when: CacheWhen,
    /// Near-repeats answered too; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticCache>,
}

/// The semantic cache of a group: a request whose last user turn means nearly the same as a
/// cached one (and whose everything else is identical) gets its answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SemanticCache {
    /// The least cosine similarity served, in (0, 1].
    pub threshold: f64,
    pub embedder: Embedder,
    /// Also serve requests that offer tools or carry tool calls and results.
    pub tools: bool,
}

/// Where the semantic cache's embeddings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Embedder {
    /// The in-process model from `cache.embedding_model`.
    Builtin,
    /// A model group of this gateway that serves `/v1/embeddings`.
    Group(String),
}

impl Embedder {
    /// A stable name, part of what keeps vectors of different models apart.
    pub fn id(&self) -> String {
        match self {
            Embedder::Builtin => "builtin".to_owned(),
            Embedder::Group(g) => format!("group:{g}"),
        }
    }
}

impl Serialize for Embedder {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Embedder::Builtin => s.serialize_str("builtin"),
            Embedder::Group(g) => s.serialize_str(g),
        }
    }
}

/// Cross-checks semantic caches against the groups and the built-in model they name.
pub(super) fn validate_semantic(
    models: &[ModelConfig],
    cache: &super::CacheConfig,
    errors: &mut Vec<FieldError>,
) {
    for (i, m) in models.iter().enumerate() {
        let Some(s) = m.cache.as_ref().and_then(|c| c.semantic.as_ref()) else {
            continue;
        };
        let at = format!("models[{i}].cache.semantic.embedder");
        match &s.embedder {
            Embedder::Builtin => match &cache.embedding_model {
                None => errors.push(FieldError::new(
                    at,
                    "the builtin embedder needs cache.embedding_model (the model's directory)",
                )),
                Some(dir) => {
                    for file in ["model.safetensors", "tokenizer.json"] {
                        if !dir.join(file).is_file() {
                            errors.push(FieldError::new(
                                "cache.embedding_model",
                                format!("{} has no {file}", dir.display()),
                            ));
                        }
                    }
                }
            },
            Embedder::Group(g) => {
                if g == &m.name {
                    errors.push(FieldError::new(at, "a group cannot embed through itself"));
                } else if !models.iter().any(|o| &o.name == g) {
                    errors.push(FieldError::new(
                        at,
                        format!("must be builtin or a model group, got {g:?}"),
                    ));
                }
            }
        }
    }
}

fn semantic_cache(
    raw: Option<super::raw::RawSemanticCache>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<SemanticCache> {
    let raw = raw?;
    if raw.enabled == Some(false) {
        return None;
    }
    let threshold = raw.threshold.unwrap_or(0.9);
    if !(threshold > 0.0 && threshold <= 1.0) {
        errors.push(FieldError::new(
            format!("{at}.threshold"),
            "must be greater than 0 and at most 1",
        ));
    }
    let embedder = match raw.embedder.as_deref().unwrap_or("builtin") {
        "builtin" => Embedder::Builtin,
        group => Embedder::Group(group.to_owned()),
    };
    Some(SemanticCache {
        threshold,
        embedder,
        tools: raw.tools.unwrap_or(false),
    })
}

fn route_cache(
    raw: Option<super::raw::RawRouteCache>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<RouteCache> {
    let raw = raw?;
    if raw.enabled == Some(false) {
        return None;
    }
    let scope = match raw.scope.as_deref().unwrap_or("team") {
        "team" => CacheScope::Team,
        "key" => CacheScope::Key,
        "user" => CacheScope::User,
        "global" => CacheScope::Global,
        other => {
            errors.push(FieldError::new(
                format!("{at}.scope"),
                format!("must be team, key, user or global, got {other:?}"),
            ));
            CacheScope::Team
        }
    };
    let when = match raw.when.as_deref().unwrap_or("always") {
        "always" => CacheWhen::Always,
        "temperature_zero" => CacheWhen::TemperatureZero,
        other => {
            errors.push(FieldError::new(
                format!("{at}.when"),
                format!("must be always or temperature_zero, got {other:?}"),
            ));
            CacheWhen::Always
        }
    };
    let ttl = raw.ttl.unwrap_or(Duration::from_secs(300));
    if ttl.is_zero() {
        errors.push(FieldError::new(
            format!("{at}.ttl"),
            "must be greater than 0",
        ));
    }
    Some(RouteCache {
        ttl,
        scope,
        when,
        semantic: semantic_cache(raw.semantic, &format!("{at}.semantic"), errors),
    })
}
