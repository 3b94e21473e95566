//! The model layer: an OpenAI-compatible API (`/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/responses`, `/v1/models`) in front of configured providers.
//!
//! Each request runs the same named phases: authenticate, read the body, parse the envelope,
//! authorize the model, route to a target, call the provider, and hand the response back with a
//! tag for the shell's metrics. Routing state is an immutable snapshot swapped on reload.

pub mod cache;
pub mod envelope;
mod govern;
pub mod prices;
pub mod provider;
pub mod router;
pub mod semantic;
pub mod stream;
pub mod tokens;
pub mod translate;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;
use tollgate_core::audit::AuditEvent;
use tollgate_core::config::{
    pattern_capture, Config, CooldownConfig, HealthCheckConfig, ModelConfig, ProviderConfig,
    RetryConfig, Strategy, TargetConfig,
};
use tollgate_core::context::{RequestContext, TraceContext};
use tollgate_core::error::{ApiError, ErrorKind};
use tollgate_core::http::{json_response, read_body, PathParam, ResponseTag};
use tollgate_core::identity::Principal;
use tollgate_core::ledger::LedgerRecord;
use tollgate_core::metrics::{AttemptLabels, FallbackLabels, UpstreamLabels};
use tollgate_core::policy::{self, Decision, Policy};
use tollgate_core::Core;

use crate::envelope::Envelope;
use crate::provider::{Call, Endpoint, NamedProvider, Provider, ProviderError, StreamOutcome};
use crate::router::{Candidate, Outcome, RetryBudget, TargetHealth};

/// A model group: a public model name (or pattern) and the targets that may serve it.
pub struct ModelRoute {
    pub name: Arc<str>,
    pub aliases: Vec<Arc<str>>,
    pub strategy: Strategy,
    sticky_header: Option<HeaderName>,
    pub targets: Vec<Target>,
    fallbacks: Vec<Arc<str>>,
    context_window_fallbacks: Vec<Arc<str>>,
    content_policy_fallbacks: Vec<Arc<str>>,
    strict_translation: bool,
    cache: Option<tollgate_core::config::RouteCache>,
    retry: RetryConfig,
    cooldown: CooldownConfig,
    budget: RetryBudget,
}

pub struct Target {
    pub provider: Arc<NamedProvider>,
    /// The upstream model; in a pattern group `*` stands for what the pattern matched.
    pub model: Arc<str>,
    pub cfg: TargetConfig,
    pub health: Arc<TargetHealth>,
    /// Blended USD per token, when a price is known for the model.
    price: Option<f64>,
    /// The full price, for costing requests (none for a pattern target: looked up per request).
    cost: Option<prices::Priced>,
    prices: Arc<prices::Prices>,
    provider_kind: &'static str,
    /// Stable across replicas and reloads, for sticky placement.
    id: u64,
}

impl Target {
    fn upstream_model(&self, capture: Option<&str>) -> String {
        match capture {
            Some(c) if self.model.contains('*') => self.model.replacen('*', c, 1),
            _ => self.model.to_string(),
        }
    }
}

/// Why a request moved to a fallback group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FallbackReason {
    Error,
    ContextWindow,
    ContentPolicy,
}

impl FallbackReason {
    fn name(self) -> &'static str {
        match self {
            FallbackReason::Error => "error",
            FallbackReason::ContextWindow => "context_window",
            FallbackReason::ContentPolicy => "content_policy",
        }
    }
}

/// What a failed attempt means for the request, decided by error type and upstream error code,
/// never by message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The client's request is at fault: no retry, no fallback.
    Client,
    ContextWindow,
    ContentPolicy,
    /// 429: retry after the upstream's `Retry-After`, preferably elsewhere.
    Throttled,
    /// Connect errors, timeouts, resets, 408 and 5xx: retry with backoff.
    Retryable,
    /// The target itself is misconfigured or broken (credentials, a non-API answer): try
    /// another target, never this one again for this request.
    TargetFault,
}

fn classify(e: &ProviderError) -> Class {
    match e {
        ProviderError::Connect(_) | ProviderError::Timeout { .. } | ProviderError::Protocol(_) => {
            Class::Retryable
        }
        ProviderError::Invalid(_) => Class::Client,
        ProviderError::Status { status, body, .. } => match status.as_u16() {
            429 => Class::Throttled,
            408 | 500..=599 => Class::Retryable,
            400 | 404 | 409 | 413 | 422 if provider::is_openai_error(body) => {
                match e.upstream_code().as_deref() {
                    Some("context_length_exceeded") => Class::ContextWindow,
                    Some("content_filter" | "content_policy_violation") => Class::ContentPolicy,
                    _ => Class::Client,
                }
            }
            _ => Class::TargetFault,
        },
    }
}

impl Class {
    fn outcome(self, retry_after: Option<Duration>) -> Outcome {
        match self {
            Class::Client | Class::ContextWindow | Class::ContentPolicy => Outcome::Neutral,
            Class::Throttled => Outcome::Throttled { retry_after },
            Class::Retryable | Class::TargetFault => Outcome::Failure,
        }
    }

    fn metric(self) -> &'static str {
        match self {
            Class::Client | Class::ContextWindow | Class::ContentPolicy => "client_error",
            Class::Throttled => "throttled",
            Class::Retryable => "retryable",
            Class::TargetFault => "failed",
        }
    }

    fn fallback(self) -> Option<FallbackReason> {
        match self {
            Class::Client => None,
            Class::ContextWindow => Some(FallbackReason::ContextWindow),
            Class::ContentPolicy => Some(FallbackReason::ContentPolicy),
            Class::Throttled | Class::Retryable | Class::TargetFault => Some(FallbackReason::Error),
        }
    }
}

/// Everything the layer derives from config, swapped whole on reload.
pub struct LlmState {
    policy: Policy,
    /// Each provider with the config it was built from, for reuse across reloads.
    providers: HashMap<String, (ProviderConfig, Arc<NamedProvider>)>,
    /// Exact names and aliases.
    models: HashMap<String, Arc<ModelRoute>>,
    /// Pattern groups, most specific (longest) first.
    patterns: Vec<Arc<ModelRoute>>,
    /// Groups in config order, for `/v1/models` and the health view.
    order: Vec<Arc<ModelRoute>>,
    /// `limits.max_upstream_response_size` the providers were built with.
    max_response: usize,
}

impl LlmState {
    /// The dearest price among the targets that may serve `route` for this request, its
    /// fallbacks included: what a budget reserves against.
    fn max_price(&self, route: &ModelRoute, capture: Option<&str>) -> Option<prices::Price> {
        let mut max: Option<prices::Price> = None;
        let mut add = |r: &ModelRoute, capture: Option<&str>| {
            for t in &r.targets {
                if let Some(p) = t.price_of(&t.upstream_model(capture)) {
                    max = Some(max.map_or(p.price, |m| m.max(&p.price)));
                }
            }
        };
        add(route, capture);
        let chains = [
            &route.fallbacks,
            &route.context_window_fallbacks,
            &route.content_policy_fallbacks,
        ];
        for name in chains.into_iter().flatten() {
            if let Some((r, c)) = self.lookup(name) {
                add(&r, c.as_deref());
            }
        }
        max
    }
}

/// The key that carries a target's health across reloads.
fn health_key(group: &str, t: &TargetConfig) -> String {
    format!("{group}\0{}\0{}", t.provider, t.model)
}

impl LlmState {
    /// Builds routing from config. Providers whose config is unchanged from `previous` are
    /// reused, keeping their upstream connection pools (and TLS sessions) across reloads, and
    /// targets keep their health.
    pub fn build(config: &Config, previous: Option<&LlmState>) -> Result<LlmState, String> {
        let mut providers = HashMap::new();
        let max_response =
            usize::try_from(config.limits.max_upstream_response_size).unwrap_or(usize::MAX);
        for p in &config.providers {
            let kept = previous
                .filter(|prev| prev.max_response == max_response)
                .and_then(|prev| prev.providers.get(&p.name))
                .filter(|(cfg, _)| cfg == p)
                .map(|(_, provider)| provider.clone());
            let provider = match kept {
                Some(provider) => provider,
                None => {
                    let built = Provider::build(p, max_response)
                        .map_err(|e| format!("provider {:?}: {e}", p.name))?;
                    let named = Arc::new(NamedProvider {
                        name: Arc::from(p.name.as_str()),
                        provider: built,
                        down: Arc::default(),
                    });
                    if let Some(check) = &p.health_check {
                        spawn_health_checks(&named, check.clone());
                    }
                    named
                }
            };
            providers.insert(p.name.clone(), (p.clone(), provider));
        }
        let old_health: HashMap<String, Arc<TargetHealth>> = previous
            .map(|prev| {
                prev.order
                    .iter()
                    .flat_map(|r| {
                        r.targets
                            .iter()
                            .map(|t| (health_key(&r.name, &t.cfg), t.health.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut models = HashMap::new();
        let mut patterns = Vec::new();
        let mut order = Vec::new();
        let prices = Arc::new(prices::Prices::new(&config.prices));
        for m in &config.models {
            let route = Arc::new(build_route(m, &providers, &old_health, &prices)?);
            if m.is_pattern() {
                patterns.push(route.clone());
            } else {
                models.insert(m.name.clone(), route.clone());
                for a in &m.aliases {
                    models.insert(a.clone(), route.clone());
                }
            }
            order.push(route);
        }
        // Most specific pattern first; config order among equals (the sort is stable).
        patterns.sort_by_key(|r| std::cmp::Reverse(r.name.len()));
        let policy = Policy::from_config(config)?;
        Ok(LlmState {
            policy,
            providers,
            models,
            patterns,
            order,
            max_response,
        })
    }

    /// The group serving a public name, and what a pattern's `*` matched.
    fn lookup(&self, name: &str) -> Option<(Arc<ModelRoute>, Option<String>)> {
        if let Some(r) = self.models.get(name) {
            return Some((r.clone(), None));
        }
        self.patterns
            .iter()
            .find_map(|r| pattern_capture(&r.name, name).map(|c| (r.clone(), Some(c.to_owned()))))
    }
}

fn build_route(
    m: &ModelConfig,
    providers: &HashMap<String, (ProviderConfig, Arc<NamedProvider>)>,
    old_health: &HashMap<String, Arc<TargetHealth>>,
    prices: &Arc<prices::Prices>,
) -> Result<ModelRoute, String> {
    let mut targets = Vec::new();
    for t in &m.targets {
        let (pcfg, provider) = providers
            .get(&t.provider)
            .ok_or_else(|| format!("model {:?}: unknown provider {:?}", m.name, t.provider))?;
        let cost = (!t.model.contains('*'))
            .then(|| prices.lookup(&t.provider, pcfg.kind.name(), &t.model))
            .flatten();
        let price = cost.as_ref().map(|p| p.price.blended());
        targets.push(Target {
            provider: provider.clone(),
            model: Arc::from(t.model.as_str()),
            cfg: t.clone(),
            health: old_health
                .get(&health_key(&m.name, t))
                .cloned()
                .unwrap_or_default(),
            price,
            cost,
            prices: prices.clone(),
            provider_kind: pcfg.kind.name(),
            id: router::hash_pair(&format!("{}\0{}", t.provider, t.model), 0),
        });
    }
    let names = |v: &[String]| v.iter().map(|s| Arc::from(s.as_str())).collect();
    Ok(ModelRoute {
        name: Arc::from(m.name.as_str()),
        aliases: names(&m.aliases),
        strategy: m.strategy,
        sticky_header: m
            .sticky_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        targets,
        fallbacks: names(&m.fallbacks),
        context_window_fallbacks: names(&m.context_window_fallbacks),
        content_policy_fallbacks: names(&m.content_policy_fallbacks),
        strict_translation: m.strict_translation,
        cache: m.cache.clone(),
        retry: m.retry.clone(),
        cooldown: m.cooldown.clone(),
        budget: RetryBudget::new(m.retry.budget),
    })
}

/// Probes a provider on its interval for as long as the provider is in use. A failing check
/// takes every target on the provider out of rotation until a check passes.
fn spawn_health_checks(provider: &Arc<NamedProvider>, check: HealthCheckConfig) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<NamedProvider> = Arc::downgrade(provider);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(p) = weak.upgrade() else { return };
            let result = p.provider.health_check(&check.path, check.timeout).await;
            let was_down = p.down.swap(result.is_err(), Ordering::Relaxed);
            match result {
                Err(e) if !was_down => {
                    tracing::warn!(provider = %p.name, error = %e, "health check failed: provider taken out of rotation")
                }
                Ok(()) if was_down => {
                    tracing::info!(provider = %p.name, "health check passed: provider back in rotation")
                }
                _ => {}
            }
        }
    });
}

pub struct LlmLayer {
    core: Arc<Core>,
    state: ArcSwap<LlmState>,
    /// The response cache; rebuilt (emptied) when a reload changes its size.
    cache: ArcSwap<cache::ResponseCache>,
    /// Near-repeat answers, persisted in the store.
    semantic: Arc<semantic::SemanticCache>,
    /// The built-in embedding model, when `cache.embedding_model` names one.
    embedder: arc_swap::ArcSwapOption<LoadedEmbedder>,
}

struct LoadedEmbedder {
    dir: std::path::PathBuf,
    model: semantic::embed::LocalEmbedder,
}

/// How often expired semantic-cache entries are swept from memory and the store.
const SEMANTIC_SWEEP: Duration = Duration::from_secs(60);

impl LlmLayer {
    /// Call within a Tokio runtime: the semantic cache loads its entries and sweeps them in
    /// the background.
    pub fn new(core: Arc<Core>, config: &Config) -> Result<Arc<LlmLayer>, String> {
        let cache = cache::ResponseCache::new(config.cache.max_size, core.shared.clone());
        let semantic = Arc::new(semantic::SemanticCache::shared(
            core.stores.semantic.clone(),
            config.cache.max_semantic_entries,
            core.bus.clone(),
        ));
        let layer = Arc::new(LlmLayer {
            core,
            state: ArcSwap::from_pointee(LlmState::build(config, None)?),
            cache: ArcSwap::from_pointee(cache),
            semantic,
            embedder: arc_swap::ArcSwapOption::empty(),
        });
        layer.load_embedder(config)?;
        layer
            .core
            .metrics
            .register_collector(Box::new(RoutingCollector(Arc::downgrade(&layer))));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(layer.semantic.clone().follow(layer.core.bus.subscribe()));
            let semantic = layer.semantic.clone();
            rt.spawn(async move {
                match semantic.load().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(entries = n, "semantic cache loaded"),
                    Err(e) => tracing::warn!(error = %e, "could not load the semantic cache"),
                }
                let mut tick = tokio::time::interval(SEMANTIC_SWEEP);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    semantic.sweep().await;
                }
            });
        }
        Ok(layer)
    }

    /// Loads the built-in embedding model when the config names a directory it has not loaded.
    fn load_embedder(&self, config: &Config) -> Result<(), String> {
        let Some(dir) = &config.cache.embedding_model else {
            self.embedder.store(None);
            return Ok(());
        };
        if self.embedder.load().as_ref().is_some_and(|e| &e.dir == dir) {
            return Ok(());
        }
        let model = semantic::embed::load(dir)?;
        self.embedder.store(Some(Arc::new(LoadedEmbedder {
            dir: dir.clone(),
            model,
        })));
        Ok(())
    }

    /// Rebuilds routing from a new config. In-flight requests keep the snapshot they loaded.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let state = LlmState::build(config, Some(&self.state.load()))?;
        self.load_embedder(config)?;
        self.state.store(Arc::new(state));
        if self.cache.load().max_size() != config.cache.max_size {
            self.cache.store(Arc::new(cache::ResponseCache::new(
                config.cache.max_size,
                self.core.shared.clone(),
            )));
        }
        self.semantic
            .set_max_entries(config.cache.max_semantic_entries);
        Ok(())
    }

    /// The semantic cache (for tests and benchmarks).
    pub fn semantic_cache(&self) -> &Arc<semantic::SemanticCache> {
        &self.semantic
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/responses", post(responses))
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/models", get(list_models))
            .route("/v1/models/{*model}", get(get_model))
            .with_state(self.clone())
    }

    /// Admin routes of the model layer, mounted wherever the admin API is.
    pub fn admin_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin/v1/models/health", get(models_health))
            .route("/admin/v1/ledger", get(read_ledger))
            .with_state(self.clone())
    }

    /// Every group's targets with their live routing state.
    pub fn health(&self) -> serde_json::Value {
        let state = self.state.load();
        let now = Instant::now();
        let models: Vec<_> = state
            .order
            .iter()
            .map(|r| {
                let targets: Vec<_> = r
                    .targets
                    .iter()
                    .map(|t| {
                        let down = t.provider.down.load(Ordering::Relaxed);
                        json!({
                            "provider": &*t.provider.name,
                            "model": &*t.model,
                            "weight": t.cfg.weight,
                            "priority": t.cfg.priority,
                            "max_concurrency": t.cfg.max_concurrency,
                            "rpm": t.cfg.rpm,
                            "tpm": t.cfg.tpm,
                            "provider_healthy": !down,
                            "health": t.health.view(&t.cfg, down, now),
                        })
                    })
                    .collect();
                json!({
                    "name": &*r.name,
                    "aliases": r.aliases.iter().map(|a| &**a).collect::<Vec<_>>(),
                    "strategy": r.strategy.name(),
                    "targets": targets,
                })
            })
            .collect();
        json!({ "models": models })
    }
}

/// Exports live target state at scrape time: `tollgate_target_state` (0 healthy, 1 cooldown,
/// 2 half-open, 3 throttled, 4 at capacity, 5 provider down), `tollgate_target_in_flight` and
/// `tollgate_target_cooldowns_total`.
struct RoutingCollector(Weak<LlmLayer>);

impl std::fmt::Debug for RoutingCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoutingCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TargetLabels {
    model: String,
    provider: String,
    target: String,
}

impl prometheus_client::collector::Collector for RoutingCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let Some(layer) = self.0.upgrade() else {
            return Ok(());
        };
        let state = layer.state.load();
        let now = Instant::now();
        let mut rows = Vec::new();
        for r in &state.order {
            for t in &r.targets {
                let down = t.provider.down.load(Ordering::Relaxed);
                let a = if down {
                    router::Availability::ProviderDown
                } else {
                    t.health.availability(&t.cfg, now)
                };
                let labels = TargetLabels {
                    model: r.name.to_string(),
                    provider: t.provider.name.to_string(),
                    target: t.model.to_string(),
                };
                rows.push((labels, a.code(), t.health.in_flight(), t.health.cooldowns()));
            }
        }
        let mut m = encoder.encode_descriptor(
            "target_state",
            "Routing state of each target: 0 healthy, 1 cooldown, 2 half-open, 3 throttled, 4 at capacity, 5 provider down",
            None,
            MetricType::Gauge,
        )?;
        for (labels, code, _, _) in &rows {
            ConstGauge::new(*code).encode(m.encode_family(labels)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "target_in_flight",
            "Requests and streams in flight per target",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _, in_flight, _) in &rows {
            ConstGauge::new(i64::from(*in_flight)).encode(m.encode_family(labels)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "target_cooldowns",
            "Times each target was taken out for a cooldown",
            None,
            MetricType::Counter,
        )?;
        for (labels, _, _, cooldowns) in &rows {
            ConstCounter::new(*cooldowns).encode(m.encode_family(labels)?)?;
        }
        let m = encoder.encode_descriptor(
            "semantic_cache_entries",
            "Answers held by the semantic cache (expired ones until the next sweep)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(layer.semantic.len() as i64).encode(m)?;
        Ok(())
    }
}

async fn models_health(State(layer): State<Arc<LlmLayer>>, headers: HeaderMap) -> Response {
    match layer.core.require_master(&headers).await {
        Ok(()) => json_response(StatusCode::OK, layer.health().to_string()),
        Err(e) => e.into_response(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerParams {
    /// Unix milliseconds, inclusive.
    since: Option<i64>,
    /// Unix milliseconds, exclusive.
    until: Option<i64>,
    /// The last `id` of the previous page.
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /admin/v1/ledger`: spend records oldest first, one page at a time. Everything recorded
/// before the call is flushed first, so a read sees every finished request.
async fn read_ledger(
    State(layer): State<Arc<LlmLayer>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<LedgerParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = layer.core.require_master(&headers).await {
        return e.into_response();
    }
    let Ok(axum::extract::Query(p)) = query else {
        return ApiError::invalid("query parameters are since, until, after (integers) and limit")
            .code("invalid_query")
            .into_response();
    };
    let q = tollgate_core::ledger::LedgerQuery {
        since_ms: p.since.unwrap_or(0),
        until_ms: p.until.unwrap_or(i64::MAX),
        after: p.after.unwrap_or(0),
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
        conversation: None,
    };
    layer.core.ledger.flush().await;
    match layer.core.stores.ledger.read_ledger(&q).await {
        Ok(records) => {
            let next = (records.len() == q.limit as usize)
                .then(|| records.last().map(|r| r.id))
                .flatten();
            json_response(
                StatusCode::OK,
                json!({"data": records, "next_after": next}).to_string(),
            )
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn chat(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    serve(&layer, Endpoint::Chat, req).await
}

async fn embeddings(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    serve(&layer, Endpoint::Embeddings, req).await
}

async fn responses(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    serve(&layer, Endpoint::Responses, req).await
}

async fn messages(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    serve(&layer, Endpoint::Messages, req).await
}

/// Anthropic's token counter: the request's prompt tokens, counted locally with the
/// gateway's tokenizer (an estimate for non-OpenAI models), for any model the key may use.
async fn count_tokens(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        let principal = layer.core.authenticate(&parts.headers).await?;
        let config = layer.core.config();
        let bytes = read_body(&parts.headers, body, &config.limits).await?;
        let envelope = Envelope::parse(&bytes)?;
        let state = layer.state.load_full();
        authorize(&state, &principal, &envelope.model)?;
        // Validates the request the way /v1/messages would read it.
        translate::decode_request(translate::Dialect::Messages, &bytes)?;
        let tokens = tokens::prompt_tokens(&bytes);
        Ok::<_, ApiError>(axum::Json(serde_json::json!({ "input_tokens": tokens })).into_response())
    }
    .await;
    match result {
        Ok(res) => res,
        Err(e) => e.into_anthropic_response(),
    }
}

async fn serve(layer: &LlmLayer, endpoint: Endpoint, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The shell always provides the context; a bare router (in tests) gets a fresh one.
    let ctx = parts
        .extensions
        .get::<RequestContext>()
        .cloned()
        .unwrap_or_else(|| RequestContext {
            request_id: http::HeaderValue::from_static("-"),
            trace: TraceContext::from_headers(&parts.headers),
            conversation_id: None,
        });
    match call_model(layer, endpoint, &parts.headers, body, &ctx).await {
        Ok(res) => res,
        Err(f) => {
            let mut res = if endpoint == Endpoint::Messages {
                f.error.into_anthropic_response()
            } else {
                f.error.into_response()
            };
            if let Some(tag) = f.tag {
                res.extensions_mut().insert(tag);
            }
            if f.attempts > 0 {
                res.headers_mut()
                    .insert(ATTEMPTS, HeaderValue::from(f.attempts));
            }
            res
        }
    }
}

const ATTEMPTS: HeaderName = HeaderName::from_static("x-tollgate-attempts");
const SERVED_MODEL: HeaderName = HeaderName::from_static("x-tollgate-model");
const SERVED_PROVIDER: HeaderName = HeaderName::from_static("x-tollgate-provider");
const FALLBACK: HeaderName = HeaderName::from_static("x-tollgate-fallback");
/// Fields a translation could not carry (comma-separated JSON paths).
const TRANSLATION_LOSS: HeaderName = HeaderName::from_static("x-tollgate-translation-loss");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
const COST: HeaderName = HeaderName::from_static("x-tollgate-cost-usd");
/// Replaces a group's fallbacks for one request: comma-separated model names.
const FALLBACKS_OVERRIDE: HeaderName = HeaderName::from_static("x-tollgate-fallbacks");

struct Failure {
    error: ApiError,
    tag: Option<ResponseTag>,
    attempts: u32,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Failure {
        Failure {
            error,
            tag: None,
            attempts: 0,
        }
    }
}

/// What one request carries through its attempts.
struct Attempts<'a> {
    layer: &'a LlmLayer,
    state: &'a LlmState,
    principal: &'a Principal,
    endpoint: Endpoint,
    headers: &'a HeaderMap,
    ctx: &'a RequestContext,
    /// The body as the client sent it, and its envelope.
    bytes: &'a Bytes,
    envelope: &'a Envelope<'a>,
    start_ns: u64,
    started: Instant,
    count: u32,
    /// The span of the latest failed attempt, exported if the request fails.
    failed_span: Option<tollgate_core::otlp::Span>,
    /// The budget reservation and rate-limit permit, settled by whichever attempt serves.
    hold: Option<govern::SharedHold>,
}

/// A group's failure: the error the client would see, and its class.
struct GroupFailure {
    error: ApiError,
    class: Class,
    tag: Option<ResponseTag>,
}

/// authenticate -> read -> parse -> authorize -> route (with retries) -> fall back.
async fn call_model(
    layer: &LlmLayer,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    ctx: &RequestContext,
) -> Result<Response, Failure> {
    let start_ns = tollgate_core::otlp::now_ns();
    let core = &layer.core;
    let principal = core.authenticate(headers).await?;
    let config = core.config();
    let bytes = read_body(headers, body, &config.limits).await?;
    let envelope = Envelope::parse(&bytes)?;
    let state = layer.state.load_full();
    let (route, capture) = authorize(&state, &principal, &envelope.model)?;
    if endpoint == Endpoint::Embeddings && envelope.stream {
        return Err(ApiError::invalid("embeddings cannot be streamed")
            .param("stream")
            .into());
    }
    // A stream holds one of the key's stream slots for as long as the client reads it.
    let mut slot = if envelope.stream {
        Some(core.open_stream(&principal)?)
    } else {
        None
    };
    let mut held = |res: Response| match slot.take() {
        Some(s) => tollgate_core::http::hold_while_body(res, s),
        None => res,
    };
    let overridden = fallback_override(&state, &principal, headers)?;
    let plan = route
        .cache
        .as_ref()
        .and_then(|c| cache::plan(c, &route.name, endpoint, headers, &bytes, &principal));
    let cached = Cached {
        layer,
        endpoint,
        principal: &principal,
        ctx,
        route: &route,
        envelope: &envelope,
        policy: &state.policy,
        body_len: bytes.len(),
    };
    if let Some(p) = plan.as_ref().filter(|p| p.read) {
        let hit = layer.cache.load_full().get(&p.key).await;
        cached.count(if hit.is_some() { "hit" } else { "miss" });
        if let Some(entry) = hit {
            let mark = HeaderValue::from_static("hit");
            if let Some(res) = cached.serve(&entry.response, entry.cost_usd, mark, None)? {
                return Ok(held(res));
            }
        }
    }
    // Near repeats: embed the last user turn, look in the request's partition.
    let mut semantic_fill = None;
    if let (Some(p), Some((c, s))) = (
        plan.as_ref(),
        route
            .cache
            .as_ref()
            .and_then(|c| c.semantic.as_ref().map(|s| (c, s))),
    ) {
        if let Some(sp) = semantic::plan(c, s, &route.name, endpoint, &bytes, &principal) {
            match embed(layer, &s.embedder, &sp.text, headers, ctx).await {
                Ok(vector) => {
                    if p.read {
                        let found = layer.semantic.lookup(
                            &sp.partition,
                            &vector,
                            s.threshold as f32,
                            tollgate_core::time::now_ms(),
                        );
                        cached.count(if found.is_some() {
                            "semantic_hit"
                        } else {
                            "semantic_miss"
                        });
                        if let Some((entry, score)) = found {
                            let mark =
                                HeaderValue::from_str(&format!("semantic-hit; score={score:.2}"))
                                    .unwrap_or(HeaderValue::from_static("semantic-hit"));
                            if let Some(res) =
                                cached.serve(&entry.response, entry.cost_usd, mark, Some(score))?
                            {
                                return Ok(held(res));
                            }
                        }
                    }
                    if p.write {
                        semantic_fill = Some((sp, vector));
                    }
                }
                Err(e) => {
                    tracing::warn!(model = %route.name, error = %e, "semantic cache skipped: embedding failed");
                }
            }
        }
    }
    let mut limits = HeaderMap::new();
    let hold = govern::admit(
        core,
        &state,
        &route,
        capture.as_deref(),
        &principal,
        ctx,
        &envelope,
        bytes.len(),
        endpoint,
        &mut limits,
    )
    .await?;
    let route_name = route.name.clone();
    let result = serve_groups(
        layer, endpoint, headers, ctx, &principal, &state, &bytes, &envelope, start_ns, route,
        capture, overridden, hold,
    )
    .await;
    // OpenAI's rate-limit headers go on every answer, errors included.
    match result {
        Ok(mut res) => {
            res.headers_mut().extend(limits);
            if let Some(p) = plan {
                res = fill_cache(layer, endpoint, &route_name, p, semantic_fill, res).await;
            }
            Ok(held(res))
        }
        Err(mut f) => {
            if !limits.is_empty() {
                f.error = f.error.with_headers(
                    limits
                        .into_iter()
                        .filter_map(|(k, v)| k.map(|k| (k, v)))
                        .collect(),
                );
            }
            Err(f)
        }
    }
}

/// What serving a request from either cache needs.
struct Cached<'a> {
    layer: &'a LlmLayer,
    endpoint: Endpoint,
    principal: &'a Principal,
    ctx: &'a RequestContext,
    route: &'a ModelRoute,
    envelope: &'a Envelope<'a>,
    policy: &'a Policy,
    body_len: usize,
}

impl Cached<'_> {
    fn count(&self, result: &'static str) {
        self.layer
            .core
            .metrics
            .cache_lookups
            .get_or_create(&tollgate_core::metrics::CacheLabels {
                model: (&self.route.name).into(),
                result,
            })
            .inc();
    }

    /// Serves a cached answer, unless the policy would rewrite the request (which makes it a
    /// different request: ask upstream). The policy still decides: a cached answer is not a
    /// way around it.
    fn serve(
        &self,
        response: &translate::Response,
        cost_usd: f64,
        mark: HeaderValue,
        similarity: Option<f32>,
    ) -> Result<Option<Response>, ApiError> {
        let provider = self
            .route
            .targets
            .first()
            .map(|t| t.provider.name.clone())
            .unwrap_or_else(|| Arc::from("cache"));
        let redact = decide(
            &self.layer.core,
            self.policy,
            self.principal,
            self.endpoint,
            self.route,
            &provider,
            self.envelope,
            self.body_len,
            self.ctx,
        )?;
        if redact.is_some() {
            return Ok(None);
        }
        Ok(Some(serve_hit(self, response, cost_usd, mark, similarity)?))
    }
}

/// Answers from the cache: nothing is spent; the ledger records what the answer cost when it
/// was bought.
fn serve_hit(
    c: &Cached<'_>,
    response: &translate::Response,
    cost_usd: f64,
    mark: HeaderValue,
    similarity: Option<f32>,
) -> Result<Response, ApiError> {
    let Cached {
        layer,
        endpoint,
        principal,
        ctx,
        route,
        envelope,
        ..
    } = *c;
    let started = Instant::now();
    let dialect = cache::dialect(endpoint)
        .ok_or_else(|| ApiError::internal("cached answer for an uncached endpoint"))?;
    let mut res = cache::respond(response, dialect, envelope.stream, envelope.include_usage)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let h = res.headers_mut();
    h.insert(cache::HEADER, mark);
    if let Ok(v) = HeaderValue::from_str(&route.name) {
        h.insert(SERVED_MODEL, v);
    }
    if !envelope.stream {
        h.insert(COST, HeaderValue::from_static("0.0000000000"));
    }
    res.extensions_mut().insert(ResponseTag {
        model: Some(route.name.clone()),
        provider: None,
        upstream: Duration::ZERO,
    });
    let core = &layer.core;
    core.metrics.cache_saved_usd.inc_by(cost_usd);
    core.ledger.record(LedgerRecord {
        time_ms: tollgate_core::time::now_ms(),
        request_id: ctx.request_id().to_owned(),
        trace_id: ctx.trace.trace_id.clone(),
        conversation_id: ctx.conversation_id.clone(),
        key_id: principal.key_id.clone(),
        principal: principal.label(),
        user: principal.user.clone(),
        team: principal.team.clone(),
        agent: principal.agent.clone(),
        endpoint: endpoint.name().to_owned(),
        model: envelope.model.to_string(),
        served_model: Some(route.name.to_string()),
        cost_saved_usd: cost_usd,
        cache_hit: true,
        cache_similarity: similarity,
        streamed: envelope.stream,
        latency_ms: started.elapsed().as_millis() as u64,
        ttft_ms: Some(0),
        status: 200,
        outcome: "ok".to_owned(),
        ..LedgerRecord::default()
    });
    Ok(res)
}

/// Marks a served answer a miss and, when the plan says so, keeps it: a JSON answer now, a
/// stream once it completes.
async fn fill_cache(
    layer: &LlmLayer,
    endpoint: Endpoint,
    route: &Arc<str>,
    plan: cache::Plan,
    semantic: Option<(semantic::Plan, Vec<f32>)>,
    mut res: Response,
) -> Response {
    cache::mark(res.headers_mut(), false);
    let (Some(dialect), true, true) = (
        cache::dialect(endpoint),
        plan.write,
        res.status() == StatusCode::OK,
    ) else {
        return res;
    };
    let price = res
        .extensions()
        .get::<CostBasis>()
        .and_then(|c| c.0.clone());
    let cache = layer.cache.load_full();
    let near = layer.semantic.clone();
    let route = route.clone();
    // Both caches keep the answer; the semantic index insert runs off the request path.
    let keep = move |r: translate::Response| {
        let c = price.as_ref().map_or(0.0, |p| p.price.cost(&r.usage));
        if let (Some((sp, vector)), Ok(rt)) = (semantic, tokio::runtime::Handle::try_current()) {
            let r = r.clone();
            rt.spawn_blocking(move || near.insert(&sp, &route, &vector, r, c, plan.ttl));
        }
        cache.insert(plan.key, r, c, plan.ttl);
    };
    let streamed = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if streamed {
        let reported = res.extensions().get::<StreamUsage>().cloned();
        let fill: cache::Fill = Box::new(move |mut r| {
            if let Some(u) = reported.as_ref().and_then(|s| s.0.get()) {
                r.usage = *u;
            }
            keep(r);
        });
        return res.map(|body| Body::new(cache::StreamFill::new(body, dialect, fill)));
    }
    let (parts, body) = res.into_parts();
    let Ok(collected) = http_body_util::BodyExt::collect(body).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let bytes = collected.to_bytes();
    if let Ok(r) = translate::decode_response(dialect, &bytes, &mut Default::default()) {
        keep(r);
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The unit embedding of a text, from the built-in model or through one of this gateway's
/// embedding groups (called as the requesting principal: governed, billed and recorded).
/// (Boxed: through a group it is a request of its own, so the request path recurses.)
fn embed<'a>(
    layer: &'a LlmLayer,
    embedder: &'a tollgate_core::config::Embedder,
    text: &'a str,
    headers: &'a HeaderMap,
    ctx: &'a RequestContext,
) -> futures_util::future::BoxFuture<'a, Result<Vec<f32>, String>> {
    Box::pin(embed_now(layer, embedder, text, headers, ctx))
}

async fn embed_now(
    layer: &LlmLayer,
    embedder: &tollgate_core::config::Embedder,
    text: &str,
    headers: &HeaderMap,
    ctx: &RequestContext,
) -> Result<Vec<f32>, String> {
    use tollgate_core::config::Embedder;
    match embedder {
        Embedder::Builtin => {
            let loaded = layer
                .embedder
                .load_full()
                .ok_or("no built-in embedding model is loaded")?;
            let text = text.to_owned();
            tokio::task::spawn_blocking(move || loaded.model.embed(&text))
                .await
                .map_err(|e| e.to_string())?
        }
        Embedder::Group(group) => {
            let body = serde_json::to_vec(&json!({"model": group, "input": text}))
                .map_err(|e| e.to_string())?;
            let mut h = headers.clone();
            for name in [
                http::header::CONTENT_LENGTH,
                http::header::TRANSFER_ENCODING,
                http::header::CONTENT_ENCODING,
            ] {
                h.remove(name);
            }
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let res = call_model(layer, Endpoint::Embeddings, &h, Body::from(body), ctx)
                .await
                .map_err(|f| f.error.to_string())?;
            let status = res.status();
            let bytes = http_body_util::BodyExt::collect(res.into_body())
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(format!(
                    "embedding group {group} answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            let mut vector: Vec<f32> = v
                .pointer("/data/0/embedding")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| format!("embedding group {group} returned no embedding"))?
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    format!("embedding group {group} returned a non-numeric embedding")
                })?;
            if vector.is_empty() {
                return Err(format!(
                    "embedding group {group} returned an empty embedding"
                ));
            }
            semantic::hnsw::normalise(&mut vector);
            Ok(vector)
        }
    }
}

/// The price of the target that served an answer, for the cache's record of its cost.
#[derive(Clone)]
struct CostBasis(Option<prices::Priced>);

/// The usage a completed stream reported (the client may not have seen it), for the cache.
#[derive(Clone)]
struct StreamUsage(Arc<std::sync::OnceLock<provider::Usage>>);

/// Serves from the requested group, then walks the fallback chain its failure class picks.
#[expect(
    clippy::too_many_arguments,
    reason = "the request path's parts, passed as borrowed pieces"
)]
async fn serve_groups(
    layer: &LlmLayer,
    endpoint: Endpoint,
    headers: &HeaderMap,
    ctx: &RequestContext,
    principal: &Principal,
    state: &LlmState,
    bytes: &Bytes,
    envelope: &Envelope<'_>,
    start_ns: u64,
    route: Arc<ModelRoute>,
    capture: Option<String>,
    overridden: Option<Vec<Arc<str>>>,
    hold: Option<govern::SharedHold>,
) -> Result<Response, Failure> {
    let core = &layer.core;
    let mut run = Attempts {
        layer,
        state,
        principal,
        endpoint,
        headers,
        ctx,
        bytes,
        envelope,
        start_ns,
        started: Instant::now(),
        count: 0,
        failed_span: None,
        hold,
    };
    let first = match run_group(&mut run, &route, capture.as_deref(), &envelope.model, None).await {
        Ok(res) => return Ok(res),
        Err(f) => f,
    };
    let Some(reason) = first.class.fallback() else {
        return Err(run.failure(first));
    };
    let chain: &[Arc<str>] = match (&overridden, reason) {
        (Some(list), _) => list,
        (None, FallbackReason::ContextWindow) if !route.context_window_fallbacks.is_empty() => {
            &route.context_window_fallbacks
        }
        (None, FallbackReason::ContentPolicy) if !route.content_policy_fallbacks.is_empty() => {
            &route.content_policy_fallbacks
        }
        (None, _) => &route.fallbacks,
    };
    let mut last = first;
    for name in chain {
        // A key never reaches a model it may not use, fallbacks included.
        if !principal.may_use_model(name) {
            continue;
        }
        let Some((fallback, capture)) = state.lookup(name) else {
            continue;
        };
        core.metrics
            .fallbacks
            .get_or_create(&FallbackLabels {
                model: (&route.name).into(),
                fallback: (&fallback.name).into(),
                reason: reason.name(),
            })
            .inc();
        tracing::info!(request_id = ctx.request_id(), model = %route.name, fallback = %fallback.name, reason = reason.name(), "falling back");
        match run_group(&mut run, &fallback, capture.as_deref(), name, Some(reason)).await {
            Ok(res) => return Ok(res),
            Err(f) if f.class == Class::Client => return Err(run.failure(f)),
            Err(f) => last = f,
        }
    }
    Err(run.failure(last))
}

impl Attempts<'_> {
    fn failure(&mut self, f: GroupFailure) -> Failure {
        if let Some(span) = self.failed_span.take() {
            self.layer.core.tracer.record(span);
        }
        let tag = f.tag.as_ref();
        let mut r = self.ledger_record(
            tag.and_then(|t| t.model.as_deref()),
            tag.and_then(|t| t.provider.as_ref()),
            None,
            None,
        );
        r.status = f.error.status().as_u16();
        r.outcome = "error".to_owned();
        self.layer.core.ledger.record(r);
        Failure {
            error: f.error,
            tag: f.tag,
            attempts: self.count,
        }
    }
}

/// The `x-tollgate-fallbacks` header: fallback groups for this request only. Every name must
/// exist and be a model the key may use.
fn fallback_override(
    state: &LlmState,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<Option<Vec<Arc<str>>>, ApiError> {
    let Some(value) = headers.get(&FALLBACKS_OVERRIDE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::invalid("x-tollgate-fallbacks must be comma-separated model names")
            .code("invalid_fallbacks")
    })?;
    let names: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.len() > 5 {
        return Err(
            ApiError::invalid("x-tollgate-fallbacks names at most 5 models")
                .code("invalid_fallbacks"),
        );
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if !principal.may_use_model(name) {
            return Err(ApiError::new(
                ErrorKind::PermissionDenied,
                format!("this key may not fall back to model {name:?}"),
            )
            .code("model_not_allowed"));
        }
        if state.lookup(name).is_none() {
            return Err(
                ApiError::invalid(format!("fallback model {name:?} does not exist"))
                    .code("model_not_found"),
            );
        }
        out.push(Arc::from(name));
    }
    Ok(Some(out))
}

/// Serves a request from one model group: picks a target by the group's strategy, calls it,
/// and on a retryable failure backs off and tries again (another target when one is
/// available), within the group's attempts and retry budget.
async fn run_group(
    run: &mut Attempts<'_>,
    route: &Arc<ModelRoute>,
    capture: Option<&str>,
    requested: &str,
    fallback: Option<FallbackReason>,
) -> Result<Response, GroupFailure> {
    let core = &run.layer.core;
    let sticky = match &route.sticky_header {
        Some(h) => run.headers.get(h).and_then(|v| v.to_str().ok()),
        None => run.ctx.conversation_id.as_deref(),
    };
    let candidates: Vec<Candidate<'_>> = route
        .targets
        .iter()
        .map(|t| Candidate {
            cfg: &t.cfg,
            health: &t.health,
            down: t.provider.down.load(Ordering::Relaxed),
            price: t.price,
            id: t.id,
        })
        .collect();
    // The policy runs once per group; a redaction rewrites the body sent to this group.
    let mut decided = false;
    let mut redacted: Option<Bytes> = None;
    // Targets never to try again for this request, and targets to avoid if others remain.
    let mut exclude: Vec<usize> = Vec::new();
    let mut failed: Vec<usize> = Vec::new();
    let mut last: Option<GroupFailure> = None;
    route.budget.deposit();
    for attempt in 1..=route.retry.attempts {
        if attempt > 1 {
            if !route.budget.try_withdraw() {
                tracing::warn!(model = %route.name, "retry budget exhausted: not retrying");
                break;
            }
            let delay = router::backoff(route.retry.backoff, route.retry.max_backoff, attempt - 1);
            tokio::time::sleep(delay).await;
        }
        let picked = pick_target(route, &candidates, &exclude, &failed, sticky).await;
        let (i, lease) = match picked {
            Ok(p) => p,
            Err(unavailable) => {
                return Err(last.unwrap_or_else(|| no_target(route, unavailable)));
            }
        };
        let Some(target) = route.targets.get(i) else {
            return Err(no_target(
                route,
                router::Unavailable {
                    until: None,
                    why: "unavailable",
                },
            ));
        };
        let tag = ResponseTag {
            model: Some(route.name.clone()),
            provider: Some(target.provider.name.clone()),
            upstream: Default::default(),
        };
        if !decided {
            let redact = decide(
                core,
                &run.state.policy,
                run.principal,
                run.endpoint,
                route,
                &target.provider.name,
                run.envelope,
                run.bytes.len(),
                run.ctx,
            )
            .map_err(|e| GroupFailure {
                error: e,
                class: Class::Client,
                tag: Some(tag.clone()),
            })?;
            redacted =
                redact.map(|paths| Bytes::from(run.envelope.rebuild(&run.envelope.model, &paths)));
            decided = true;
        }
        // Only a redacted body needs its envelope read again.
        let reparsed;
        let (body, envelope) = match &redacted {
            Some(b) => {
                reparsed = Envelope::parse(b).map_err(|e| GroupFailure {
                    error: e,
                    class: Class::Client,
                    tag: None,
                })?;
                (b, &reparsed)
            }
            None => (run.bytes, run.envelope),
        };
        run.count += 1;
        let upstream_model = target.upstream_model(capture);
        let attempt_started = Instant::now();
        let span = core.tracer.sampled(&run.ctx.trace).then(|| SpanStart {
            trace: run.ctx.trace.clone(),
            start_ns: run.start_ns,
            endpoint: run.endpoint,
            model: Arc::from(requested),
            upstream_model: Arc::from(upstream_model.as_str()),
            provider: target.provider.name.clone(),
            provider_kind: target.provider.provider.otel_name(),
            key_id: run.principal.label(),
            team: run.principal.team.clone(),
            conversation_id: run.ctx.conversation_id.clone(),
            attempts: run.count,
            fallback,
        });
        let price = target.price_of(&upstream_model);
        let ttft = Arc::new(std::sync::OnceLock::new());
        let request_loss: Arc<std::sync::OnceLock<Vec<String>>> = Arc::default();
        let ledger = envelope.stream.then(|| StreamLedger {
            record: run.ledger_record(
                Some(requested),
                Some(&target.provider.name),
                Some(&upstream_model),
                fallback,
            ),
            price: price.clone(),
            started: run.started,
            ttft: ttft.clone(),
            loss: request_loss.clone(),
            hold: run.hold.clone(),
            body: body.clone(),
        });
        let stream_usage: StreamUsage = StreamUsage(Arc::default());
        let on_end = stream_end(
            core,
            route,
            target,
            span.clone(),
            lease,
            ledger,
            stream_usage.clone(),
        );
        let call = Call {
            endpoint: run.endpoint,
            public_model: &envelope.model,
            upstream_model: &upstream_model,
            envelope,
            body,
            ctx: run.ctx,
            first_token: target.cfg.ttft_timeout,
            strict: route.strict_translation,
            anthropic_beta: run.headers.get(&ANTHROPIC_BETA),
        };
        let result = target.provider.provider.call(call, on_end).await;
        let now = Instant::now();
        let attempt_labels = |outcome: &'static str| AttemptLabels {
            model: (&route.name).into(),
            provider: (&target.provider.name).into(),
            outcome,
        };
        match result {
            Ok(reply) => {
                target.health.record(
                    Outcome::Success,
                    Some(reply.upstream),
                    None,
                    &route.cooldown,
                    now,
                );
                core.metrics
                    .upstream_attempts
                    .get_or_create(&attempt_labels("ok"))
                    .inc();
                core.metrics
                    .record_upstream(&target.provider.name, &route.name, reply.upstream);
                let mut res = reply.response;
                let loss = reply.loss.paths().to_vec();
                if !loss.is_empty() {
                    tracing::info!(request_id = run.ctx.request_id(), model = %route.name, provider = %target.provider.name, loss = %reply.loss.header(), "translation lost fields");
                    if let Ok(v) = HeaderValue::from_str(&reply.loss.header()) {
                        res.headers_mut().insert(TRANSLATION_LOSS, v);
                    }
                }
                if let (Some(span), false) = (&span, reply.streamed) {
                    let mut s = span.finish(reply.usage, res.status().as_u16(), None);
                    add_loss_attribute(&mut s, &loss);
                    core.tracer.record(s);
                }
                let _ = request_loss.set(loss.clone());
                if let Some(u) = reply.usage {
                    core.metrics.record_tokens(
                        &route.name,
                        &target.provider.name,
                        u.prompt,
                        u.completion,
                    );
                    target.health.add_tokens(u.prompt + u.completion, now);
                }
                let _ = ttft.set(reply.upstream.as_millis() as u64);
                if !reply.streamed {
                    let mut r = run.ledger_record(
                        Some(requested),
                        Some(&target.provider.name),
                        Some(&upstream_model),
                        fallback,
                    );
                    price_usage(&mut r, price.clone(), reply.usage);
                    r.translation_loss = loss;
                    r.status = res.status().as_u16();
                    r.outcome = "ok".to_owned();
                    r.ttft_ms = Some(r.latency_ms);
                    if !r.estimated {
                        if let Ok(v) = HeaderValue::from_str(&format!("{:.10}", r.cost_usd)) {
                            res.headers_mut().insert(COST, v);
                        }
                    }
                    if let Some(h) = &run.hold {
                        govern::settle(h, r.cost_usd, r.prompt_tokens + r.completion_tokens);
                    }
                    core.ledger.record(r);
                }
                let h = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(requested) {
                    h.insert(SERVED_MODEL, v);
                }
                if let Ok(v) = HeaderValue::from_str(&target.provider.name) {
                    h.insert(SERVED_PROVIDER, v);
                }
                h.insert(ATTEMPTS, HeaderValue::from(run.count));
                if let Some(reason) = fallback {
                    h.insert(FALLBACK, HeaderValue::from_static(reason.name()));
                }
                res.extensions_mut().insert(CostBasis(price.clone()));
                res.extensions_mut().insert(stream_usage);
                res.extensions_mut().insert(ResponseTag {
                    // Time the gateway waited on upstreams, backoffs included, so the
                    // overhead metric stays the gateway's own work.
                    upstream: run
                        .started
                        .elapsed()
                        .saturating_sub(attempt_started.elapsed().saturating_sub(reply.upstream)),
                    ..tag
                });
                return Ok(res);
            }
            Err(e) => {
                let class = classify(&e);
                let retry_after = e.retry_after();
                let elapsed = attempt_started.elapsed();
                core.metrics
                    .record_upstream(&target.provider.name, &route.name, elapsed);
                core.metrics
                    .upstream_attempts
                    .get_or_create(&attempt_labels(class.metric()))
                    .inc();
                let err = e.into_api_error(&target.provider.name);
                let opened = target.health.record(
                    class.outcome(retry_after),
                    Some(elapsed),
                    Some(&err.message),
                    &route.cooldown,
                    now,
                );
                if opened {
                    tracing::warn!(model = %route.name, provider = %target.provider.name, target = %target.model, cooldown_ms = route.cooldown.duration.as_millis() as u64, "target taken out for a cooldown");
                }
                // One span per request: a failed attempt's span is kept, and exported only if
                // no later attempt serves the request.
                run.failed_span = span
                    .as_ref()
                    .map(|s| s.finish(None, err.status().as_u16(), Some(err.message.clone())));
                if err.kind != ErrorKind::InvalidRequest {
                    tracing::warn!(request_id = run.ctx.request_id(), provider = %target.provider.name, model = %route.name, attempt, error = %err.message, "upstream attempt failed");
                }
                let tag = ResponseTag {
                    upstream: run.started.elapsed(),
                    ..tag
                };
                match class {
                    Class::Client | Class::ContextWindow | Class::ContentPolicy => {
                        return Err(GroupFailure {
                            error: err,
                            class,
                            tag: Some(tag),
                        })
                    }
                    Class::TargetFault => exclude.push(i),
                    Class::Throttled | Class::Retryable => failed.push(i),
                }
                last = Some(GroupFailure {
                    error: err,
                    class,
                    tag: Some(tag),
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        no_target(
            route,
            router::Unavailable {
                until: None,
                why: "unavailable",
            },
        )
    }))
}

/// Picks the next target: one not yet tried if possible, else one that failed retryably. When
/// none is available but one will be soon (a short `Retry-After`), waits for it.
async fn pick_target(
    route: &ModelRoute,
    candidates: &[Candidate<'_>],
    exclude: &[usize],
    failed: &[usize],
    sticky: Option<&str>,
) -> Result<(usize, router::Lease), router::Unavailable> {
    let mut tried_wait = false;
    loop {
        let now = Instant::now();
        let avoid: Vec<usize> = exclude.iter().chain(failed).copied().collect();
        let first = router::pick(route.strategy, candidates, &avoid, sticky, now);
        let result = match first {
            Err(_) if !failed.is_empty() => {
                router::pick(route.strategy, candidates, exclude, sticky, now)
            }
            other => other,
        };
        match result {
            Ok((i, lease, _)) => return Ok((i, lease)),
            Err(u) => {
                let wait = u.until.map(|t| t.saturating_duration_since(now));
                match wait {
                    Some(w) if !tried_wait && w <= route.retry.max_retry_after => {
                        tried_wait = true;
                        tokio::time::sleep(w).await;
                    }
                    _ => return Err(u),
                }
            }
        }
    }
}

/// No target of the group can take the request now: 503 with when to come back.
fn no_target(route: &ModelRoute, u: router::Unavailable) -> GroupFailure {
    let retry_after = u
        .until
        .map(|t| t.saturating_duration_since(Instant::now()).as_secs().max(1));
    let mut message = format!(
        "no target of model {:?} can take requests now ({})",
        route.name, u.why
    );
    if let Some(s) = retry_after {
        message.push_str(&format!("; retry in {s}s"));
    }
    let mut error = ApiError::new(ErrorKind::Unavailable, message).code("no_healthy_target");
    if let Some(s) = retry_after {
        error =
            error.with_upstream_headers(vec![(http::header::RETRY_AFTER, HeaderValue::from(s))]);
    }
    GroupFailure {
        error,
        class: Class::Retryable,
        tag: Some(ResponseTag {
            model: Some(route.name.clone()),
            provider: None,
            upstream: Default::default(),
        }),
    }
}

/// The hook a streamed reply runs when it ends: finishes the span, counts tokens against the
/// target's TPM, marks a mid-stream failure against its health, and releases its in-flight
/// slot. A reply that is not a stream drops the hook unrun; the slot is released then.
/// A streamed request's ledger record, completed when the stream ends.
struct StreamLedger {
    record: LedgerRecord,
    price: Option<prices::Priced>,
    started: Instant,
    /// Time to the first event, set once the stream starts.
    ttft: Arc<std::sync::OnceLock<u64>>,
    /// What translating the request lost, set once the stream starts.
    loss: Arc<std::sync::OnceLock<Vec<String>>>,
    /// Settled with the stream's cost when it ends.
    hold: Option<govern::SharedHold>,
    /// The request body, to count prompt tokens if the stream reports no usage.
    body: Bytes,
}

fn stream_end(
    core: &Arc<Core>,
    route: &Arc<ModelRoute>,
    target: &Target,
    span: Option<SpanStart>,
    lease: router::Lease,
    ledger: Option<StreamLedger>,
    reported: StreamUsage,
) -> provider::StreamEnd {
    let core = core.clone();
    let route = route.clone();
    let provider = target.provider.name.clone();
    let health = target.health.clone();
    Box::new(move |outcome: StreamOutcome| {
        let _lease = lease;
        if let Some(u) = outcome
            .usage
            .filter(|_| !outcome.failed && !outcome.cancelled)
        {
            let _ = reported.0.set(u);
        }
        let now = Instant::now();
        if let Some(span) = span {
            let error = (outcome.failed || outcome.cancelled).then(|| {
                if outcome.failed {
                    "upstream stream failed"
                } else {
                    "client cancelled"
                }
                .to_owned()
            });
            let mut s = span.finish(outcome.usage, 200, error);
            let mut lost = ledger
                .as_ref()
                .and_then(|l| l.loss.get().cloned())
                .unwrap_or_default();
            lost.extend(outcome.loss.paths().iter().map(|p| format!("response.{p}")));
            add_loss_attribute(&mut s, &lost);
            core.tracer.record(s);
        }
        if let Some(u) = outcome.usage {
            core.metrics
                .record_tokens(&route.name, &provider, u.prompt, u.completion);
            health.add_tokens(u.prompt + u.completion, now);
        }
        let labels = UpstreamLabels {
            provider: (&provider).into(),
            model: (&route.name).into(),
        };
        if outcome.failed {
            core.metrics.stream_errors.get_or_create(&labels).inc();
            health.record(
                Outcome::Failure,
                None,
                Some("stream failed after its first byte"),
                &route.cooldown,
                now,
            );
        }
        if outcome.cancelled {
            core.metrics.streams_cancelled.get_or_create(&labels).inc();
        }
        if let Some(l) = ledger {
            let failed = outcome.failed;
            let cancelled = outcome.cancelled;
            let usage = outcome.usage;
            let transcript = outcome.transcript;
            let generated = outcome.generated;
            let mut lost = l.loss.get().cloned().unwrap_or_default();
            lost.extend(outcome.loss.paths().iter().map(|p| format!("response.{p}")));
            let finish = move |counted: Option<provider::Usage>| {
                let mut r = l.record;
                r.translation_loss = lost;
                price_usage(&mut r, l.price, counted.or(usage));
                if counted.is_some() {
                    r.estimated = true;
                }
                if let Some(h) = &l.hold {
                    govern::settle(h, r.cost_usd, r.prompt_tokens + r.completion_tokens);
                }
                r.latency_ms = l.started.elapsed().as_millis() as u64;
                r.ttft_ms = l.ttft.get().copied();
                r.status = 200;
                r.outcome = if failed {
                    "stream_failed"
                } else if cancelled {
                    "cancelled"
                } else {
                    "ok"
                }
                .to_owned();
                core.ledger.record(r);
            };
            let text = match (transcript, generated) {
                (Some(t), _) => Some(Generated::Transcript(t)),
                (None, Some(g)) => Some(Generated::Text(g)),
                (None, None) => None,
            };
            match text {
                Some(text) if usage.is_none() || failed || cancelled => {
                    // No usage reported, or only the start's (the client left, or the upstream
                    // broke or sent none): count what was generated (and the prompt, when it
                    // was not reported) with the tokenizer, off the serving thread, and mark
                    // the cost estimated.
                    let body = l.body.clone();
                    let count = move || {
                        let generated = match text {
                            Generated::Transcript(t) => crate::tokens::generated_text(&t),
                            Generated::Text(g) => g,
                        };
                        let completion = crate::tokens::count(&generated);
                        finish(Some(match usage {
                            Some(u) => provider::Usage {
                                completion: u.completion.max(completion),
                                ..u
                            },
                            None => provider::Usage {
                                prompt: crate::tokens::prompt_tokens(&body),
                                completion,
                                ..provider::Usage::default()
                            },
                        }));
                    };
                    match tokio::runtime::Handle::try_current() {
                        Ok(h) => drop(h.spawn_blocking(count)),
                        Err(_) => count(),
                    }
                }
                _ => finish(None),
            }
        }
    })
}

/// What a stream generated, when it reported no usage.
enum Generated {
    /// SSE `data:` lines to read the text from.
    Transcript(Vec<u8>),
    Text(String),
}

/// Records translation loss on a span.
fn add_loss_attribute(span: &mut tollgate_core::otlp::Span, loss: &[String]) {
    if !loss.is_empty() {
        span.attributes.push(tollgate_core::otlp::KeyValue::string(
            "tollgate.translation_loss",
            loss.join(","),
        ));
    }
}

impl Target {
    /// The price of the upstream model this attempt used.
    fn price_of(&self, upstream_model: &str) -> Option<prices::Priced> {
        self.cost.clone().or_else(|| {
            self.prices
                .lookup(&self.provider.name, self.provider_kind, upstream_model)
        })
    }
}

impl Attempts<'_> {
    /// A ledger record for this request with what is known so far.
    fn ledger_record(
        &self,
        served: Option<&str>,
        provider: Option<&Arc<str>>,
        upstream_model: Option<&str>,
        fallback: Option<FallbackReason>,
    ) -> LedgerRecord {
        LedgerRecord {
            time_ms: tollgate_core::time::now_ms(),
            request_id: self.ctx.request_id().to_owned(),
            trace_id: self.ctx.trace.trace_id.clone(),
            conversation_id: self.ctx.conversation_id.clone(),
            key_id: self.principal.key_id.clone(),
            principal: self.principal.label(),
            user: self.principal.user.clone(),
            team: self.principal.team.clone(),
            agent: self.principal.agent.clone(),
            endpoint: self.endpoint.name().to_owned(),
            model: self.envelope.model.to_string(),
            served_model: served.map(str::to_owned),
            provider: provider.map(|p| p.to_string()),
            upstream_model: upstream_model.map(str::to_owned),
            attempts: self.count,
            fallback: fallback.map(|f| f.name().to_owned()),
            streamed: self.envelope.stream,
            latency_ms: self.started.elapsed().as_millis() as u64,
            ..LedgerRecord::default()
        }
    }
}

/// Fills tokens and cost from usage. Without usage or a price, the cost is 0 and marked
/// estimated.
fn price_usage(
    r: &mut LedgerRecord,
    price: Option<prices::Priced>,
    usage: Option<provider::Usage>,
) {
    if let Some(u) = usage {
        r.prompt_tokens = u.prompt;
        r.completion_tokens = u.completion;
        r.cached_tokens = u.cached;
        r.reasoning_tokens = u.reasoning;
        r.cache_write_tokens = u.cache_write;
    }
    match (price, usage) {
        (Some(p), Some(u)) => {
            r.cost_usd = p.price.cost(&u);
            r.price_version = Some(p.version.to_string());
        }
        _ => r.estimated = true,
    }
}

/// What a model call's span needs, captured when the call starts.
#[derive(Clone)]
struct SpanStart {
    trace: TraceContext,
    start_ns: u64,
    endpoint: Endpoint,
    model: Arc<str>,
    upstream_model: Arc<str>,
    provider: Arc<str>,
    provider_kind: &'static str,
    key_id: String,
    team: Option<String>,
    conversation_id: Option<String>,
    attempts: u32,
    fallback: Option<FallbackReason>,
}

impl SpanStart {
    /// The GenAI-convention span: `chat {model}` (or `embeddings {model}`).
    fn finish(
        &self,
        usage: Option<provider::Usage>,
        status: u16,
        error: Option<String>,
    ) -> tollgate_core::otlp::Span {
        use tollgate_core::otlp::KeyValue as Kv;
        let operation = match self.endpoint {
            Endpoint::Embeddings => "embeddings",
            Endpoint::Chat | Endpoint::Responses | Endpoint::Messages => "chat",
        };
        let mut attrs = vec![
            Kv::string("gen_ai.operation.name", operation),
            Kv::string("gen_ai.provider.name", self.provider_kind),
            Kv::string("gen_ai.request.model", &*self.model),
            Kv::string("gen_ai.response.model", &*self.upstream_model),
            Kv::string("tollgate.provider", &*self.provider),
            Kv::string("tollgate.key_id", &self.key_id),
            Kv::int("tollgate.attempts", i64::from(self.attempts)),
            Kv::int("http.response.status_code", i64::from(status)),
        ];
        if let Some(u) = usage {
            attrs.push(Kv::int(
                "gen_ai.usage.input_tokens",
                i64::try_from(u.prompt).unwrap_or(i64::MAX),
            ));
            attrs.push(Kv::int(
                "gen_ai.usage.output_tokens",
                i64::try_from(u.completion).unwrap_or(i64::MAX),
            ));
        }
        if let Some(team) = &self.team {
            attrs.push(Kv::string("tollgate.team", team));
        }
        if let Some(f) = self.fallback {
            attrs.push(Kv::string("tollgate.fallback", f.name()));
        }
        if let Some(c) = &self.conversation_id {
            attrs.push(Kv::string("gen_ai.conversation.id", c));
            attrs.push(Kv::string("tollgate.conversation_id", c));
        }
        if let Some(e) = &error {
            attrs.push(Kv::string("error.type", e));
        }
        tollgate_core::otlp::span_for(
            &self.trace,
            format!("{operation} {}", self.model),
            self.start_ns,
            tollgate_core::otlp::now_ns(),
            attrs,
            error,
        )
    }
}

/// Runs the policy. Returns the fields to redact, if any; denials are audited and become 403.
#[expect(
    clippy::too_many_arguments,
    reason = "the request path's parts, passed as borrowed pieces"
)]
fn decide(
    core: &Core,
    policy: &Policy,
    principal: &Principal,
    endpoint: Endpoint,
    route: &ModelRoute,
    provider: &str,
    envelope: &Envelope<'_>,
    body_len: usize,
    ctx: &RequestContext,
) -> Result<Option<Vec<String>>, ApiError> {
    if policy.is_empty() {
        return Ok(None);
    }
    let request = policy::model_request_value(
        endpoint.name(),
        &route.name,
        provider,
        envelope.stream,
        envelope.max_tokens,
        // A byte-count estimate: enough for coarse size rules before any tokenizer runs.
        i64::try_from(body_len / 4).unwrap_or(i64::MAX),
    );
    let (rule, decision, err) = match policy.evaluate(&policy::principal_value(principal), &request)
    {
        Decision::Allow { redact } if redact.is_empty() => return Ok(None),
        Decision::Allow { redact } => return Ok(Some(redact)),
        Decision::Deny { rule, reason } => {
            let err = ApiError::new(
                ErrorKind::PermissionDenied,
                format!("denied by policy rule {rule}: {reason}"),
            )
            .code("policy_denied");
            (rule, "deny", err)
        }
        Decision::RequireApproval { rule } => {
            let err = ApiError::new(
                ErrorKind::PermissionDenied,
                format!("policy rule {rule} requires approval, which model calls do not support"),
            )
            .code("approval_required");
            (rule, "require_approval", err)
        }
    };
    let mut ev = AuditEvent::new("policy.deny", "denied");
    ev.request_id = Some(ctx.request_id().to_owned());
    ev.trace_id = Some(ctx.trace.trace_id.clone());
    ev.conversation_id.clone_from(&ctx.conversation_id);
    ev.principal = Some(principal.label().to_owned());
    ev.target = Some(route.name.to_string());
    ev.decision = Some(decision.to_owned());
    ev.rule = Some(rule);
    ev.detail =
        serde_json::json!({"layer": "model", "endpoint": endpoint.name(), "provider": provider});
    // On the request path: never wait for the audit writer (a full queue is counted).
    core.audit.try_record(ev);
    Err(err)
}

/// 403 if the principal may not use the name, 404 if no such model exists. Checking the
/// permission first keeps restricted keys from probing which models exist.
fn authorize(
    state: &LlmState,
    principal: &Principal,
    model: &str,
) -> Result<(Arc<ModelRoute>, Option<String>), ApiError> {
    if !principal.may_use_model(model) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("this key may not use model {model:?}"),
        )
        .code("model_not_allowed")
        .param("model"));
    }
    state.lookup(model).ok_or_else(|| {
        ApiError::not_found(format!("model {model:?} does not exist"))
            .code("model_not_found")
            .param("model")
    })
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"})
}

async fn list_models(State(layer): State<Arc<LlmLayer>>, headers: HeaderMap) -> Response {
    let principal = match layer.core.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let state = layer.state.load();
    // Group names and aliases; patterns are not names a client can list.
    let data: Vec<_> = state
        .order
        .iter()
        .filter(|m| !m.name.contains('*'))
        .flat_map(|m| std::iter::once(&m.name).chain(&m.aliases))
        .filter(|name| principal.may_use_model(name))
        .map(|name| model_object(name))
        .collect();
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": data}).to_string(),
    )
}

async fn get_model(
    State(layer): State<Arc<LlmLayer>>,
    headers: HeaderMap,
    PathParam(model): PathParam,
) -> Response {
    let principal = match layer.core.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let state = layer.state.load();
    match authorize(&state, &principal, &model) {
        Ok(_) => json_response(StatusCode::OK, model_object(&model).to_string()),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_header: &str) -> Config {
        let yaml = format!(
            "providers:\n  - {{name: a, kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\n  - {{name: b, kind: openai, base_url: 'http://127.0.0.1:9/v1', headers: {{x: '{extra_header}'}}}}\nmodels:\n  - name: m\n    targets: [{{provider: a}}, {{provider: b}}]\n"
        );
        Config::parse(&yaml, "t", &|_| None).unwrap()
    }

    #[test]
    fn reload_keeps_unchanged_providers_and_their_pools() {
        let first = LlmState::build(&config("1"), None).unwrap();
        let second = LlmState::build(&config("2"), Some(&first)).unwrap();
        let same = |s: &LlmState, name: &str| s.providers[name].1.clone();
        assert!(
            Arc::ptr_eq(&same(&first, "a"), &same(&second, "a")),
            "unchanged: reused"
        );
        assert!(
            !Arc::ptr_eq(&same(&first, "b"), &same(&second, "b")),
            "changed: rebuilt"
        );
        assert!(Arc::ptr_eq(
            &second.models["m"].targets[0].provider,
            &same(&second, "a")
        ));
        assert!(
            Arc::ptr_eq(
                &first.models["m"].targets[1].health,
                &second.models["m"].targets[1].health
            ),
            "routing state survives the reload"
        );
    }
}
