//! Rate limits: requests and tokens per minute per key, user, team, model, conversation, agent
//! or all traffic, as token buckets.
//!
//! A bucket holds up to the per-minute limit and refills continuously at limit/60 per second,
//! so a client that waits gets capacity back smoothly rather than at a window edge. A request
//! needs one request token and its estimated tokens (prompt estimate plus `max_tokens`); the
//! estimate is corrected by the real usage when the call ends. What clients see follows
//! OpenAI's headers: `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and
//! `x-ratelimit-reset-*` (the time until the bucket is full again), and `Retry-After` on 429.
//!
//! Buckets live behind [`RateBuckets`]: in process here; the scale-out engine keeps them in
//! Redis with the same arithmetic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::budget::{Selector, Subject};
use crate::config::RateLimitConfig;
use crate::error::{ApiError, ErrorKind};
use crate::store::StoreResult;

/// One rule's bucket for one scope id.
#[derive(Debug, Clone)]
pub struct BucketCheck {
    pub key: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// A bucket pair as a response header reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BucketView {
    pub rpm: Option<u64>,
    pub remaining_requests: u64,
    pub reset_requests: Duration,
    pub tpm: Option<u64>,
    pub remaining_tokens: u64,
    pub reset_tokens: Duration,
}

/// The engine's answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Taken from every bucket; each one's state afterwards.
    Admitted(Vec<BucketView>),
    /// Not taken from any: which bucket refused, on what, and when it will have room.
    Refused {
        index: usize,
        tokens: bool,
        view: BucketView,
        retry_after: Duration,
    },
}

#[async_trait]
pub trait RateBuckets: Send + Sync + 'static {
    /// Takes one request and `tokens` from every bucket if all have room, else nothing.
    async fn acquire(
        &self,
        checks: &[BucketCheck],
        tokens: u64,
        now_ms: i64,
    ) -> StoreResult<Admission>;
    /// Corrects the token estimate: positive `delta` takes more, negative gives back.
    async fn adjust(&self, checks: &[BucketCheck], delta: i64, now_ms: i64) -> StoreResult<()>;
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    requests: f64,
    tokens: f64,
    at_ms: i64,
}

/// Refills a level towards `cap` at `cap` per minute.
fn refill(level: f64, cap: Option<u64>, elapsed_ms: i64) -> f64 {
    match cap {
        Some(c) => (level + c as f64 * elapsed_ms.max(0) as f64 / 60_000.0).min(c as f64),
        None => 0.0,
    }
}

/// Time until `level` reaches `target` at `cap` per minute.
fn time_to(level: f64, target: f64, cap: u64) -> Duration {
    if level >= target || cap == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64((target - level) * 60.0 / cap as f64)
}

impl Bucket {
    fn full(c: &BucketCheck, now_ms: i64) -> Bucket {
        Bucket {
            requests: c.rpm.unwrap_or(0) as f64,
            tokens: c.tpm.unwrap_or(0) as f64,
            at_ms: now_ms,
        }
    }

    fn refilled(mut self, c: &BucketCheck, now_ms: i64) -> Bucket {
        let elapsed = now_ms - self.at_ms;
        self.requests = refill(self.requests, c.rpm, elapsed);
        self.tokens = refill(self.tokens, c.tpm, elapsed);
        self.at_ms = now_ms.max(self.at_ms);
        self
    }

    fn view(&self, c: &BucketCheck) -> BucketView {
        BucketView {
            rpm: c.rpm,
            remaining_requests: self.requests.max(0.0) as u64,
            reset_requests: c
                .rpm
                .map_or(Duration::ZERO, |r| time_to(self.requests, r as f64, r)),
            tpm: c.tpm,
            remaining_tokens: self.tokens.max(0.0) as u64,
            reset_tokens: c
                .tpm
                .map_or(Duration::ZERO, |t| time_to(self.tokens, t as f64, t)),
        }
    }
}

/// What a request must find in a token bucket: its estimate, but never more than the whole
/// bucket (a request larger than a minute's tokens still runs on a full bucket).
fn tokens_needed(tokens: u64, tpm: u64) -> f64 {
    tokens.clamp(1, tpm) as f64
}

/// The in-process engine.
#[derive(Default)]
pub struct LocalBuckets {
    map: Mutex<HashMap<String, Bucket>>,
}

impl LocalBuckets {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Bucket>) -> R) -> R {
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// Buckets idle this long are full again and can be forgotten.
const IDLE_MS: i64 = 120_000;
const SWEEP_AT: usize = 100_000;

#[async_trait]
impl RateBuckets for LocalBuckets {
    async fn acquire(
        &self,
        checks: &[BucketCheck],
        tokens: u64,
        now_ms: i64,
    ) -> StoreResult<Admission> {
        Ok(self.with(|m| {
            if m.len() >= SWEEP_AT {
                m.retain(|_, b| now_ms - b.at_ms < IDLE_MS);
            }
            let mut next = Vec::with_capacity(checks.len());
            for (index, c) in checks.iter().enumerate() {
                let b = m
                    .get(&c.key)
                    .map_or_else(|| Bucket::full(c, now_ms), |b| b.refilled(c, now_ms));
                if let Some(rpm) = c.rpm {
                    if b.requests < 1.0 {
                        return Admission::Refused {
                            index,
                            tokens: false,
                            view: b.view(c),
                            retry_after: time_to(b.requests, 1.0, rpm),
                        };
                    }
                }
                if let Some(tpm) = c.tpm {
                    let need = tokens_needed(tokens, tpm);
                    if b.tokens < need {
                        return Admission::Refused {
                            index,
                            tokens: true,
                            view: b.view(c),
                            retry_after: time_to(b.tokens, need, tpm),
                        };
                    }
                }
                next.push(b);
            }
            let mut views = Vec::with_capacity(checks.len());
            for (c, mut b) in checks.iter().zip(next) {
                if c.rpm.is_some() {
                    b.requests -= 1.0;
                }
                if c.tpm.is_some() {
                    b.tokens -= tokens as f64;
                }
                views.push(b.view(c));
                m.insert(c.key.clone(), b);
            }
            Admission::Admitted(views)
        }))
    }

    async fn adjust(&self, checks: &[BucketCheck], delta: i64, now_ms: i64) -> StoreResult<()> {
        self.with(|m| {
            for c in checks.iter().filter(|c| c.tpm.is_some()) {
                if let Some(b) = m.get_mut(&c.key) {
                    let mut r = b.refilled(c, now_ms);
                    r.tokens = (r.tokens - delta as f64).min(c.tpm.unwrap_or(0) as f64);
                    *b = r;
                }
            }
        });
        Ok(())
    }
}

struct Rule {
    cfg: RateLimitConfig,
    selector: Selector,
}

/// The rate limits in force and their buckets.
pub struct RateLimits {
    rules: ArcSwap<Vec<Rule>>,
    buckets: Arc<dyn RateBuckets>,
    failures: Arc<crate::degrade::SharedFailures>,
}

/// An admitted request's hold on its buckets: the token estimate to correct when it ends, and
/// the headers to answer with.
pub struct Permit {
    limits: Arc<RateLimits>,
    checks: Vec<BucketCheck>,
    estimate: u64,
    view: Option<BucketView>,
}

impl RateLimits {
    pub fn new(
        config: &[RateLimitConfig],
        buckets: Arc<dyn RateBuckets>,
        failures: Arc<crate::degrade::SharedFailures>,
    ) -> Arc<RateLimits> {
        let r = RateLimits {
            rules: ArcSwap::from_pointee(Vec::new()),
            buckets,
            failures,
        };
        r.reload(config);
        Arc::new(r)
    }

    pub fn reload(&self, config: &[RateLimitConfig]) {
        self.rules.store(Arc::new(
            config
                .iter()
                .map(|c| Rule {
                    selector: Selector::new(c.scope, &c.matches, &c.models),
                    cfg: c.clone(),
                })
                .collect(),
        ));
    }

    pub fn is_empty(&self) -> bool {
        self.rules.load().is_empty()
    }

    /// Admits a request estimated at `tokens`, or refuses it with a 429 in OpenAI's shape.
    /// `Ok(None)`: no limit applies.
    pub async fn acquire(
        self: &Arc<Self>,
        s: &Subject<'_>,
        tokens: u64,
    ) -> Result<Option<Permit>, ApiError> {
        let rules = self.rules.load();
        if rules.is_empty() {
            return Ok(None);
        }
        let checks: Vec<BucketCheck> = rules
            .iter()
            .filter_map(|r| {
                let id = r.selector.select(s)?;
                Some(BucketCheck {
                    key: format!("{}\u{1f}{id}", r.cfg.name),
                    rpm: r.cfg.rpm,
                    tpm: r.cfg.tpm,
                })
            })
            .collect();
        if checks.is_empty() {
            return Ok(None);
        }
        let now_ms = crate::time::now_ms();
        if self.failures.tripped() {
            self.failures.skipped("rate_limit")?;
            return Ok(None);
        }
        let admission = match self.buckets.acquire(&checks, tokens, now_ms).await {
            Ok(a) => a,
            Err(e) => {
                self.failures.on_failure("rate_limit", &e)?;
                return Ok(None);
            }
        };
        match admission {
            Admission::Admitted(views) => Ok(Some(Permit {
                limits: self.clone(),
                checks,
                estimate: tokens,
                view: tightest(&views),
            })),
            Admission::Refused {
                index,
                tokens: on_tokens,
                view,
                retry_after,
            } => {
                let name = rules
                    .iter()
                    .filter(|r| r.selector.select(s).is_some())
                    .nth(index)
                    .map_or("?", |r| r.cfg.name.as_str());
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let (what, limit, unit) = if on_tokens {
                    ("tokens per min (TPM)", view.tpm.unwrap_or(0), "tokens")
                } else {
                    ("requests per min (RPM)", view.rpm.unwrap_or(0), "requests")
                };
                let mut headers = vec![(http::header::RETRY_AFTER, HeaderValue::from(secs))];
                let mut map = HeaderMap::new();
                write_headers(&mut map, &view);
                headers.extend(map.into_iter().filter_map(|(k, v)| k.map(|k| (k, v))));
                Err(ApiError::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "rate limit {name:?} reached on {what}: limit {limit}; try again in {}",
                        go_duration(retry_after)
                    ),
                )
                .code("rate_limit_exceeded")
                .error_type(unit)
                .with_headers(headers))
            }
        }
    }
}

/// For the headers: the bucket with the fewest requests left, and separately the fewest
/// tokens left.
fn tightest(views: &[BucketView]) -> Option<BucketView> {
    let req = views
        .iter()
        .filter(|v| v.rpm.is_some())
        .min_by_key(|v| v.remaining_requests);
    let tok = views
        .iter()
        .filter(|v| v.tpm.is_some())
        .min_by_key(|v| v.remaining_tokens);
    if req.is_none() && tok.is_none() {
        return None;
    }
    let mut out = BucketView::default();
    if let Some(r) = req {
        out.rpm = r.rpm;
        out.remaining_requests = r.remaining_requests;
        out.reset_requests = r.reset_requests;
    }
    if let Some(t) = tok {
        out.tpm = t.tpm;
        out.remaining_tokens = t.remaining_tokens;
        out.reset_tokens = t.reset_tokens;
    }
    Some(out)
}

impl Permit {
    /// OpenAI's rate-limit headers for this request.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        if let Some(v) = &self.view {
            write_headers(h, v);
        }
    }

    /// Corrects the token estimate with what the request really used (in the background).
    pub fn settle(self, used_tokens: u64) {
        let delta = used_tokens as i64 - self.estimate as i64;
        if delta == 0 || self.checks.iter().all(|c| c.tpm.is_none()) {
            return;
        }
        let Permit { limits, checks, .. } = self;
        crate::run_or_spawn(async move {
            if let Err(e) = limits
                .buckets
                .adjust(&checks, delta, crate::time::now_ms())
                .await
            {
                tracing::warn!(error = %e, "rate limit token correction failed");
            }
        });
    }
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

fn write_headers(h: &mut HeaderMap, v: &BucketView) {
    let text = |d: Duration| HeaderValue::from_str(&go_duration(d)).ok();
    if let Some(rpm) = v.rpm {
        h.insert(LIMIT_REQUESTS, HeaderValue::from(rpm));
        h.insert(REMAINING_REQUESTS, HeaderValue::from(v.remaining_requests));
        if let Some(t) = text(v.reset_requests) {
            h.insert(RESET_REQUESTS, t);
        }
    }
    if let Some(tpm) = v.tpm {
        h.insert(LIMIT_TOKENS, HeaderValue::from(tpm));
        h.insert(REMAINING_TOKENS, HeaderValue::from(v.remaining_tokens));
        if let Some(t) = text(v.reset_tokens) {
            h.insert(RESET_TOKENS, t);
        }
    }
}

/// A duration the way OpenAI's reset headers write it (Go's format): `20ms`, `1.5s`, `6m0s`,
/// `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total_s = ms / 1000;
    let frac = ms % 1000;
    let secs = if frac == 0 {
        format!("{}s", total_s % 60)
    } else {
        let f = format!("{:03}", frac);
        format!("{}.{}s", total_s % 60, f.trim_end_matches('0'))
    };
    let (h, m) = (total_s / 3600, (total_s / 60) % 60);
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rpm: Option<u64>, tpm: Option<u64>) -> BucketCheck {
        BucketCheck {
            key: "k".into(),
            rpm,
            tpm,
        }
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[tokio::test]
    async fn requests_drain_and_refill_continuously() {
        let b = LocalBuckets::default();
        let c = [check(Some(60), None)];
        for i in 0..60u64 {
            match b.acquire(&c, 0, 1000).await.unwrap() {
                Admission::Admitted(v) => assert_eq!(v[0].remaining_requests, 59 - i),
                other => panic!("request {i} refused: {other:?}"),
            }
        }
        let Admission::Refused {
            retry_after, view, ..
        } = b.acquire(&c, 0, 1000).await.unwrap()
        else {
            panic!("the 61st request in the same instant must be refused");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(view.remaining_requests, 0);
        assert_eq!(view.reset_requests, Duration::from_secs(60));
        // One second later one request's worth has come back.
        assert!(matches!(
            b.acquire(&c, 0, 2000).await.unwrap(),
            Admission::Admitted(_)
        ));
    }

    #[tokio::test]
    async fn tokens_are_estimated_then_corrected_and_refusals_take_nothing() {
        let b = LocalBuckets::default();
        let both = [check(Some(100), Some(1000)), {
            let mut c = check(Some(2), None);
            c.key = "other".into();
            c
        }];
        let Admission::Admitted(v) = b.acquire(&both, 800, 0).await.unwrap() else {
            panic!("refused");
        };
        assert_eq!(v[0].remaining_tokens, 200);
        // The call really used 100: 700 come back.
        b.adjust(&both, 100 - 800, 0).await.unwrap();
        let Admission::Admitted(v) = b.acquire(&both, 100, 0).await.unwrap() else {
            panic!("refused");
        };
        assert_eq!(v[0].remaining_tokens, 800);
        assert_eq!(v[1].remaining_requests, 0);
        // The second bucket refuses; the first keeps its requests.
        let Admission::Refused { index, tokens, .. } = b.acquire(&both, 1, 0).await.unwrap() else {
            panic!("admitted");
        };
        assert_eq!((index, tokens), (1, false));
        let Admission::Admitted(v) = b.acquire(&both[..1], 800, 0).await.unwrap() else {
            panic!("refused");
        };
        assert_eq!(v[0].remaining_requests, 97);
        // The token bucket is empty now; a large request waits for its share.
        let Admission::Refused {
            tokens,
            retry_after,
            ..
        } = b.acquire(&both[..1], 500, 0).await.unwrap()
        else {
            panic!("admitted");
        };
        assert!(tokens);
        assert_eq!(retry_after, Duration::from_secs(30));
    }
}
