//! Rate limits: requests and tokens per minute per key, user, team, model, conversation, agent
//! or all traffic, as sliding windows.
//!
//! Each limit counts what it admitted in the last minute, in two-second slots: a request is
//! admitted if it fits under the limit with everything still in the window, so no span of 60
//! seconds ever admits more than the limit (a burst of the whole limit at once is fine), and
//! capacity comes back two seconds at a time as old slots leave the window. A request
//! needs one request token and its estimated tokens (prompt estimate plus `max_tokens`); the
//! estimate is corrected by the real usage when the call ends. What clients see follows
//! OpenAI's headers: `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and
//! `x-ratelimit-reset-*` (the time until the whole limit is free again), and `Retry-After` on
//! 429 (the time until the request would fit).
//!
//! Windows live behind [`RateBuckets`] (named for the buckets they once were): in process
//! here; the scale-out engine keeps them in Redis with the same arithmetic on Redis's clock.

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

/// One rule's window for one scope id: at most `rpm` requests and `tpm` tokens in any span of
/// `SLOTS - 1` slots of `slot_ms` (a minute of two-second slots for rate limits; execution
/// quotas count hours and days the same way with wider slots).
#[derive(Debug, Clone)]
pub struct BucketCheck {
    pub key: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub slot_ms: i64,
}

impl BucketCheck {
    /// A one-minute window.
    pub fn minute(key: String, rpm: Option<u64>, tpm: Option<u64>) -> BucketCheck {
        BucketCheck {
            key,
            rpm,
            tpm,
            slot_ms: SLOT_MS,
        }
    }

    /// A window `span_ms` long (a multiple of `SLOTS - 1` milliseconds), counting requests.
    pub fn requests_per(key: String, limit: u64, span_ms: i64) -> BucketCheck {
        BucketCheck {
            key,
            rpm: Some(limit),
            tpm: None,
            slot_ms: (span_ms / (SLOTS as i64 - 1)).max(1),
        }
    }
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

/// Width of one slot of a rate limit's one-minute window.
pub const SLOT_MS: i64 = 2_000;
/// Slots a window keeps: a request counts until at least a minute after it was admitted (up
/// to one slot longer), so no span of 60 seconds ever admits more than the limit.
pub const SLOTS: usize = 31;

/// One limit's last minute: requests and tokens admitted per slot, in a ring.
#[derive(Debug, Clone)]
struct Window {
    slot_ms: i64,
    /// The newest slot number (unix ms / `slot_ms`).
    newest: i64,
    requests: [u64; SLOTS],
    tokens: [u64; SLOTS],
}

fn ring(slot: i64) -> usize {
    slot.rem_euclid(SLOTS as i64) as usize
}

/// How long until `need` more fits under `limit`, given what each slot holds (oldest slot
/// first) and their total `used`: slot `s` leaves the window at `(s + SLOTS) * slot_ms`.
fn wait_for(
    slot_ms: i64,
    slots: impl Iterator<Item = (i64, u64)>,
    used: u64,
    need: u64,
    limit: u64,
    now_ms: i64,
) -> Duration {
    if used + need <= limit {
        return Duration::ZERO;
    }
    let mut freed = 0;
    for (slot, n) in slots {
        freed += n;
        if used - freed.min(used) + need <= limit {
            let at = (slot + SLOTS as i64) * slot_ms;
            return Duration::from_millis((at - now_ms).max(0) as u64);
        }
    }
    Duration::from_millis((SLOTS as i64 * slot_ms) as u64)
}

impl Window {
    fn new(slot_ms: i64, now_ms: i64) -> Window {
        Window {
            slot_ms,
            newest: now_ms.div_euclid(slot_ms),
            requests: [0; SLOTS],
            tokens: [0; SLOTS],
        }
    }

    /// Moves to the slot of `now_ms`, emptying the slots that left the window.
    fn advance(&mut self, now_ms: i64) {
        let slot = now_ms.div_euclid(self.slot_ms);
        if slot <= self.newest {
            return;
        }
        let steps = (slot - self.newest).min(SLOTS as i64);
        for s in slot - steps + 1..=slot {
            self.requests[ring(s)] = 0;
            self.tokens[ring(s)] = 0;
        }
        self.newest = slot;
    }

    fn idle(&self, now_ms: i64) -> bool {
        now_ms.div_euclid(self.slot_ms) - self.newest >= SLOTS as i64
    }

    /// The slots oldest first, with what `of` picks from each.
    fn oldest_first<'a>(&'a self, of: &'a [u64; SLOTS]) -> impl Iterator<Item = (i64, u64)> + 'a {
        (self.newest - SLOTS as i64 + 1..=self.newest).map(move |s| (s, of[ring(s)]))
    }

    fn used(&self) -> (u64, u64) {
        (self.requests.iter().sum(), self.tokens.iter().sum())
    }

    fn view(&self, c: &BucketCheck, now_ms: i64) -> BucketView {
        let (r, t) = self.used();
        let empty = |of, used, limit| {
            wait_for(
                self.slot_ms,
                self.oldest_first(of),
                used,
                limit,
                limit,
                now_ms,
            )
        };
        BucketView {
            rpm: c.rpm,
            remaining_requests: c.rpm.map_or(0, |l| l.saturating_sub(r)),
            reset_requests: c
                .rpm
                .map_or(Duration::ZERO, |l| empty(&self.requests, r, l)),
            tpm: c.tpm,
            remaining_tokens: c.tpm.map_or(0, |l| l.saturating_sub(t)),
            reset_tokens: c.tpm.map_or(Duration::ZERO, |l| empty(&self.tokens, t, l)),
        }
    }

    /// Gives back `n` tokens, newest slots first (where the estimate was taken).
    fn refund(&mut self, mut n: u64) {
        for s in (self.newest - SLOTS as i64 + 1..=self.newest).rev() {
            let slot = &mut self.tokens[ring(s)];
            let back = n.min(*slot);
            *slot -= back;
            n -= back;
            if n == 0 {
                return;
            }
        }
    }
}

/// What a request must find room for in a token limit: its estimate, but never more than the
/// whole limit (a request larger than a minute's tokens still runs on an idle window).
fn tokens_needed(tokens: u64, tpm: u64) -> u64 {
    tokens.clamp(1, tpm.max(1))
}

/// The in-process engine.
#[derive(Default)]
pub struct LocalBuckets {
    map: Mutex<HashMap<String, Window>>,
}

impl LocalBuckets {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Window>) -> R) -> R {
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// Past this many windows the idle ones (empty again) are forgotten.
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
                m.retain(|_, w| !w.idle(now_ms));
            }
            for (index, c) in checks.iter().enumerate() {
                let w = m
                    .entry(c.key.clone())
                    .or_insert_with(|| Window::new(c.slot_ms, now_ms));
                w.advance(now_ms);
                let (r, t) = w.used();
                if let Some(rpm) = c.rpm {
                    if r + 1 > rpm {
                        return Admission::Refused {
                            index,
                            tokens: false,
                            view: w.view(c, now_ms),
                            retry_after: wait_for(
                                w.slot_ms,
                                w.oldest_first(&w.requests),
                                r,
                                1,
                                rpm,
                                now_ms,
                            ),
                        };
                    }
                }
                if let Some(tpm) = c.tpm {
                    let need = tokens_needed(tokens, tpm);
                    if t + need > tpm {
                        return Admission::Refused {
                            index,
                            tokens: true,
                            view: w.view(c, now_ms),
                            retry_after: wait_for(
                                w.slot_ms,
                                w.oldest_first(&w.tokens),
                                t,
                                need,
                                tpm,
                                now_ms,
                            ),
                        };
                    }
                }
            }
            let mut views = Vec::with_capacity(checks.len());
            for c in checks {
                if let Some(w) = m.get_mut(&c.key) {
                    let at = ring(w.newest);
                    if c.rpm.is_some() {
                        w.requests[at] += 1;
                    }
                    if c.tpm.is_some() {
                        w.tokens[at] += tokens;
                    }
                    views.push(w.view(c, now_ms));
                }
            }
            Admission::Admitted(views)
        }))
    }

    async fn adjust(&self, checks: &[BucketCheck], delta: i64, now_ms: i64) -> StoreResult<()> {
        self.with(|m| {
            for c in checks.iter().filter(|c| c.tpm.is_some()) {
                if let Some(w) = m.get_mut(&c.key) {
                    w.advance(now_ms);
                    if delta >= 0 {
                        w.tokens[ring(w.newest)] += delta as u64;
                    } else {
                        w.refund(delta.unsigned_abs());
                    }
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
        // Own limits of the key, user and team: like rules of their scope matching that id.
        let own: Vec<(String, &str, &crate::store::Limits)> = s
            .own_limits
            .iter()
            .filter(|(_, l)| l.rpm.is_some() || l.tpm.is_some())
            .filter_map(|(scope, l)| {
                let id = s.id(*scope)?;
                Some((format!("{}:{id}", scope.name()), id, &**l))
            })
            .collect();
        if rules.is_empty() && own.is_empty() {
            return Ok(None);
        }
        let mut checks: Vec<BucketCheck> = rules
            .iter()
            .filter_map(|r| {
                let id = r.selector.select(s)?;
                Some(BucketCheck::minute(
                    format!("{}\u{1f}{id}", r.cfg.name),
                    r.cfg.rpm,
                    r.cfg.tpm,
                ))
            })
            .collect();
        let configured = checks.len();
        // `key:`, `user:`, `team:` cannot start a configured rule's name.
        checks.extend(own.iter().map(|(name, id, limits)| {
            BucketCheck::minute(format!("{name}\u{1f}{id}"), limits.rpm, limits.tpm)
        }));
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
                // Which rule refused, found only now: the admitted path never needs the name.
                let name = if index < configured {
                    rules
                        .iter()
                        .filter(|r| r.selector.select(s).is_some())
                        .nth(index)
                        .map_or("?", |r| r.cfg.name.as_str())
                } else {
                    own.get(index - configured).map_or("?", |o| o.0.as_str())
                };
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
        BucketCheck::minute("k".into(), rpm, tpm)
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
    async fn a_burst_takes_the_limit_and_capacity_returns_as_its_slot_leaves_the_window() {
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
        // The burst's slot (0-2 s) leaves the window at 62 s.
        assert_eq!(retry_after, Duration::from_secs(61));
        assert_eq!(view.remaining_requests, 0);
        assert_eq!(view.reset_requests, Duration::from_secs(61));
        assert!(matches!(
            b.acquire(&c, 0, 61_999).await.unwrap(),
            Admission::Refused { .. }
        ));
        let Admission::Admitted(v) = b.acquire(&c, 0, 62_000).await.unwrap() else {
            panic!("refused once the burst left the window");
        };
        assert_eq!(v[0].remaining_requests, 59);
    }

    #[tokio::test]
    async fn no_minute_ever_admits_more_than_the_limit() {
        let b = LocalBuckets::default();
        let c = [check(Some(50), None)];
        let mut admitted = Vec::new();
        // A request every 150 ms for four minutes, at uneven offsets.
        let mut t = 0;
        while t < 240_000 {
            if matches!(b.acquire(&c, 0, t).await.unwrap(), Admission::Admitted(_)) {
                admitted.push(t);
            }
            t += 150 + (t % 7);
        }
        for (i, &end) in admitted.iter().enumerate() {
            let in_minute = admitted[..=i].iter().filter(|&&x| x > end - 60_000).count();
            assert!(
                in_minute <= 50,
                "{in_minute} admitted in the minute to {end}"
            );
        }
        // And the limit is used: about 50 a minute over four minutes.
        assert!(admitted.len() >= 180, "{}", admitted.len());
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
        assert_eq!(retry_after, Duration::from_secs(62));
    }
}
