//! Prometheus metrics. Recording is a few atomic operations behind a label lookup; rendering
//! happens only when `/metrics` is scraped.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label value shared by reference: recording a metric clones a pointer, not a string.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

static EMPTY: LazyLock<Label> = LazyLock::new(|| Label(Arc::from("")));

impl Label {
    pub fn empty() -> Label {
        EMPTY.clone()
    }
}

impl From<&Arc<str>> for Label {
    fn from(s: &Arc<str>) -> Label {
        Label(s.clone())
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub model: Label,
    pub provider: Label,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub provider: Label,
    pub model: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Label,
    pub provider: Label,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub model: Label,
    pub provider: Label,
    /// `ok`, `retryable`, `throttled`, `failed` or `client_error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub model: Label,
    pub fallback: Label,
    /// `error`, `context_window` or `content_policy`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub model: Label,
    /// `hit` or `miss`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    /// Locked only to register collectors and to render a scrape.
    registry: std::sync::Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram>,
    pub upstream_duration: Family<UpstreamLabels, Histogram>,
    pub overhead: Family<RouteLabels, Histogram>,
    pub in_flight: Family<RouteLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub tokens: Family<TokenLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub stream_errors: Family<UpstreamLabels, Counter<u64, AtomicU64>>,
    pub streams_cancelled: Family<UpstreamLabels, Counter<u64, AtomicU64>>,
    pub upstream_attempts: Family<AttemptLabels, Counter<u64, AtomicU64>>,
    pub fallbacks: Family<FallbackLabels, Counter<u64, AtomicU64>>,
    /// Budget threshold alerts sent (one per threshold, id and period).
    pub budget_alerts: Counter<u64, AtomicU64>,
    /// Response cache lookups by model group and result.
    pub cache_lookups: Family<CacheLabels, Counter<u64, AtomicU64>>,
    /// USD not spent because the cache answered.
    pub cache_saved_usd: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Counter operations that failed on the shared store, by limit and mode.
    pub shared_counter_failures: Family<crate::degrade::FailureLabels, Counter<u64, AtomicU64>>,
}

fn latency_histogram() -> Histogram {
    // 100µs .. ~105s
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

fn overhead_histogram() -> Histogram {
    // 5µs .. ~80ms: the gateway's own time should sit at the bottom of this range.
    Histogram::new(exponential_buckets(0.000005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_duration = Family::<UpstreamLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let overhead = Family::<RouteLabels, Histogram>::new_with_constructor(
            overhead_histogram as fn() -> Histogram,
        );
        let in_flight = Family::default();
        let tokens = Family::default();
        let config_reloads = Family::default();
        let stream_errors = Family::default();
        let streams_cancelled = Family::default();
        let upstream_attempts = Family::default();
        let fallbacks = Family::default();
        registry.register(
            "upstream_attempts",
            "Calls to upstream targets, retries included, by outcome",
            upstream_attempts.clone(),
        );
        registry.register(
            "fallbacks",
            "Requests handed to a fallback model group, by reason",
            fallbacks.clone(),
        );
        registry.register("requests", "HTTP requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time spent waiting on the upstream provider: to the whole body, or to the response head for streams and errors",
            upstream_duration.clone(),
        );
        registry.register(
            "overhead_seconds",
            "The gateway's own time per request: total minus upstream",
            overhead.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests and streams in progress",
            in_flight.clone(),
        );
        registry.register("tokens", "Tokens reported by providers", tokens.clone());
        registry.register(
            "config_reloads",
            "Configuration reload attempts",
            config_reloads.clone(),
        );
        registry.register(
            "stream_errors",
            "Streams that ended with an upstream error or idle timeout",
            stream_errors.clone(),
        );
        registry.register(
            "streams_cancelled",
            "Streams the client abandoned before the end",
            streams_cancelled.clone(),
        );
        let budget_alerts = Counter::<u64, AtomicU64>::default();
        registry.register(
            "budget_alerts",
            "Budget threshold alerts sent to webhooks",
            budget_alerts.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "cache_lookups",
            "Response cache lookups by model group and result (hit or miss)",
            cache_lookups.clone(),
        );
        let cache_saved_usd = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cache_saved_usd",
            "USD not spent upstream because the response cache answered",
            cache_saved_usd.clone(),
        );
        let shared_counter_failures =
            Family::<crate::degrade::FailureLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "shared_counter_failures",
            "Rate-limit and budget counter operations that failed on the shared store (Redis), by limit and failure mode",
            shared_counter_failures.clone(),
        );
        Metrics {
            shared_counter_failures,
            cache_lookups,
            cache_saved_usd,
            budget_alerts,
            registry: std::sync::Mutex::new(registry),
            upstream_attempts,
            fallbacks,
            streams_cancelled,
            requests,
            request_duration,
            upstream_duration,
            overhead,
            in_flight,
            tokens,
            config_reloads,
            stream_errors,
        }
    }

    /// Adds metrics computed at scrape time (live routing state, for one).
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .register_collector(collector);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot render metrics");
        }
        out
    }

    pub fn record_tokens(
        &self,
        model: &Arc<str>,
        provider: &Arc<str>,
        prompt: u64,
        completion: u64,
    ) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model.into(),
                        provider: provider.into(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
    }

    pub fn record_upstream(&self, provider: &Arc<str>, model: &Arc<str>, d: Duration) {
        self.upstream_duration
            .get_or_create(&UpstreamLabels {
                provider: provider.into(),
                model: model.into(),
            })
            .observe(d.as_secs_f64());
    }
}
