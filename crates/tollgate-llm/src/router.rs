//! Routing inside a model group: which target serves the next attempt.
//!
//! Every target carries a [`TargetHealth`] that outlives config reloads (it is keyed by group,
//! provider and upstream model): requests in flight, a peak-EWMA of latency, a circuit breaker
//! (closed, open for a cooldown, half-open with one probe), a 429 throttle that lowers the
//! target's weight until its window resets, and per-minute request and token counters for the
//! target's RPM/TPM capacity. The state is per process; replicas learn health independently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tollgate_core::config::{CooldownConfig, Strategy, TargetConfig};

/// How fast the latency average forgets: the weight of a sample halves every ~7s.
const EWMA_TAU_SECS: f64 = 10.0;
/// The lowest a run of 429s can push a target's weight, as a fraction of its configured one.
const MIN_THROTTLE_FACTOR: f64 = 1.0 / 16.0;
/// How long a 429 without `Retry-After` lowers the weight.
const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// Live state of one deployment.
#[derive(Default)]
pub struct TargetHealth {
    in_flight: AtomicU32,
    state: Mutex<HealthState>,
}

struct HealthState {
    failures: VecDeque<Instant>,
    circuit: Circuit,
    cooldowns: u64,
    throttle_factor: f64,
    throttle_reset: Option<Instant>,
    /// A `Retry-After` in force: no requests before this.
    blocked_until: Option<Instant>,
    ewma_secs: f64,
    ewma_at: Option<Instant>,
    minute_start: Instant,
    minute_requests: u64,
    minute_tokens: u64,
    last_error: Option<String>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            failures: VecDeque::new(),
            circuit: Circuit::Closed,
            cooldowns: 0,
            throttle_factor: 1.0,
            throttle_reset: None,
            blocked_until: None,
            ewma_secs: 0.0,
            ewma_at: None,
            minute_start: Instant::now(),
            minute_requests: 0,
            minute_tokens: 0,
            last_error: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Why a target cannot take the next request, or that it can.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Availability {
    Ready,
    /// Ready, but as the one probe after a cooldown.
    Probe,
    /// Out after repeated failures until the instant.
    Cooldown(Instant),
    /// A half-open probe is already in flight.
    Probing,
    /// The upstream asked us to wait (`Retry-After`) until the instant.
    Throttled(Instant),
    /// At its concurrency, RPM or TPM capacity.
    AtCapacity(Option<Instant>),
    /// Its provider's active health check is failing.
    ProviderDown,
}

impl Availability {
    fn usable(self) -> bool {
        matches!(self, Availability::Ready | Availability::Probe)
    }

    /// When the target may be usable again, if known.
    fn until(self) -> Option<Instant> {
        match self {
            Availability::Cooldown(t)
            | Availability::Throttled(t)
            | Availability::AtCapacity(Some(t)) => Some(t),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Availability::Ready => "healthy",
            Availability::Probe => "half_open",
            Availability::Cooldown(_) => "cooldown",
            Availability::Probing => "probing",
            Availability::Throttled(_) => "throttled",
            Availability::AtCapacity(_) => "at_capacity",
            Availability::ProviderDown => "provider_down",
        }
    }

    /// The numeric state exported as `tollgate_target_state`.
    pub fn code(self) -> i64 {
        match self {
            Availability::Ready => 0,
            Availability::Cooldown(_) => 1,
            Availability::Probe | Availability::Probing => 2,
            Availability::Throttled(_) => 3,
            Availability::AtCapacity(_) => 4,
            Availability::ProviderDown => 5,
        }
    }
}

/// What a failed attempt tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Counts towards the cooldown threshold.
    Failure,
    /// A 429: lowers the weight, and blocks the target for `retry_after` if given.
    Throttled {
        retry_after: Option<Duration>,
    },
    /// The client's own fault; says nothing about the target's health.
    Neutral,
}

/// A snapshot for `/admin/v1/models/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    pub state: &'static str,
    pub in_flight: u32,
    pub latency_ewma_ms: f64,
    pub failures_in_window: usize,
    pub cooldowns: u64,
    pub weight_factor: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_in_ms: Option<u64>,
    pub requests_this_minute: u64,
    pub tokens_this_minute: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn lock(m: &Mutex<HealthState>) -> MutexGuard<'_, HealthState> {
    // A poisoned lock only means a panic elsewhere; the counters are still meaningful.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TargetHealth {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the target can take a request now. Rolls the minute window and expires
    /// throttles and cooldowns as a side effect.
    pub fn availability(&self, cfg: &TargetConfig, now: Instant) -> Availability {
        let mut s = lock(&self.state);
        s.roll(now);
        match s.circuit {
            Circuit::Open { until } if now < until => return Availability::Cooldown(until),
            Circuit::Open { .. } => s.circuit = Circuit::HalfOpen { probing: false },
            Circuit::HalfOpen { probing: true } => return Availability::Probing,
            _ => {}
        }
        if let Some(until) = s.blocked_until {
            if now < until {
                return Availability::Throttled(until);
            }
            s.blocked_until = None;
        }
        if cfg
            .max_concurrency
            .is_some_and(|max| self.in_flight() >= max)
        {
            return Availability::AtCapacity(None);
        }
        let next_minute = s.minute_start + Duration::from_secs(60);
        if cfg.rpm.is_some_and(|rpm| s.minute_requests >= rpm)
            || cfg.tpm.is_some_and(|tpm| s.minute_tokens >= tpm)
        {
            return Availability::AtCapacity(Some(next_minute));
        }
        if s.circuit == (Circuit::HalfOpen { probing: false }) {
            Availability::Probe
        } else {
            Availability::Ready
        }
    }

    /// Claims the target for one attempt: counts it against RPM and takes the half-open probe
    /// slot. Fails if another request took the probe first.
    fn claim(&self, now: Instant) -> bool {
        let mut s = lock(&self.state);
        s.roll(now);
        match s.circuit {
            Circuit::HalfOpen { probing: true } => return false,
            Circuit::HalfOpen { probing: false } => s.circuit = Circuit::HalfOpen { probing: true },
            _ => {}
        }
        s.minute_requests += 1;
        drop(s);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn weight_factor(&self, now: Instant) -> f64 {
        let mut s = lock(&self.state);
        if s.throttle_reset.is_some_and(|t| now >= t) {
            s.throttle_reset = None;
            s.throttle_factor = 1.0;
        }
        s.throttle_factor
    }

    fn ewma(&self, now: Instant) -> f64 {
        let s = lock(&self.state);
        match s.ewma_at {
            Some(at) => {
                let w = (-(now.saturating_duration_since(at).as_secs_f64()) / EWMA_TAU_SECS).exp();
                s.ewma_secs * w
            }
            None => 0.0,
        }
    }

    /// Records how an attempt went. Returns true when this failure opened the circuit.
    pub fn record(
        &self,
        outcome: Outcome,
        latency: Option<Duration>,
        error: Option<&str>,
        cooldown: &CooldownConfig,
        now: Instant,
    ) -> bool {
        let mut s = lock(&self.state);
        if let Some(e) = error {
            s.last_error = Some(e.chars().take(300).collect());
        }
        match outcome {
            Outcome::Success => {
                s.circuit = Circuit::Closed;
                s.failures.clear();
                if let Some(l) = latency {
                    s.observe(l.as_secs_f64(), now);
                }
                false
            }
            Outcome::Neutral => {
                // A probe that ended neutrally proves the target answers.
                if let Circuit::HalfOpen { .. } = s.circuit {
                    s.circuit = Circuit::Closed;
                }
                false
            }
            Outcome::Throttled { retry_after } => {
                s.throttle_factor = (s.throttle_factor / 2.0).max(MIN_THROTTLE_FACTOR);
                s.throttle_reset = Some(now + retry_after.unwrap_or(THROTTLE_WINDOW));
                if let Some(d) = retry_after {
                    s.blocked_until = Some(now + d);
                }
                if let Circuit::HalfOpen { .. } = s.circuit {
                    s.circuit = Circuit::Closed;
                }
                false
            }
            Outcome::Failure => {
                // Failures are slow by nature; feed a penalty into the latency average so the
                // latency strategy backs off before the breaker trips.
                if let Some(l) = latency {
                    s.observe(l.as_secs_f64().max(1.0), now);
                }
                if let Circuit::HalfOpen { .. } = s.circuit {
                    s.circuit = Circuit::Open {
                        until: now + cooldown.duration,
                    };
                    s.cooldowns += 1;
                    return true;
                }
                while s
                    .failures
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > cooldown.window)
                {
                    s.failures.pop_front();
                }
                s.failures.push_back(now);
                if s.failures.len() >= cooldown.failures as usize {
                    s.failures.clear();
                    s.circuit = Circuit::Open {
                        until: now + cooldown.duration,
                    };
                    s.cooldowns += 1;
                    return true;
                }
                false
            }
        }
    }

    /// Adds tokens a finished request used to this minute's TPM count.
    pub fn add_tokens(&self, n: u64, now: Instant) {
        let mut s = lock(&self.state);
        s.roll(now);
        s.minute_tokens = s.minute_tokens.saturating_add(n);
    }

    pub fn view(&self, cfg: &TargetConfig, provider_down: bool, now: Instant) -> HealthView {
        let availability = if provider_down {
            Availability::ProviderDown
        } else {
            self.availability(cfg, now)
        };
        let factor = self.weight_factor(now);
        let ewma = self.ewma(now);
        let s = lock(&self.state);
        HealthView {
            state: availability.name(),
            in_flight: self.in_flight(),
            latency_ewma_ms: (ewma * 1000.0 * 1000.0).round() / 1000.0,
            failures_in_window: s.failures.len(),
            cooldowns: s.cooldowns,
            weight_factor: factor,
            available_in_ms: availability
                .until()
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
            requests_this_minute: s.minute_requests,
            tokens_this_minute: s.minute_tokens,
            last_error: s.last_error.clone(),
        }
    }

    pub fn cooldowns(&self) -> u64 {
        lock(&self.state).cooldowns
    }
}

impl HealthState {
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.minute_start) >= Duration::from_secs(60) {
            self.minute_start = now;
            self.minute_requests = 0;
            self.minute_tokens = 0;
        }
    }

    /// Peak-EWMA: a slower sample is taken at once, a faster one decays in.
    fn observe(&mut self, sample: f64, now: Instant) {
        self.ewma_secs = match self.ewma_at {
            None => sample,
            Some(at) => {
                let w = (-(now.saturating_duration_since(at).as_secs_f64()) / EWMA_TAU_SECS).exp();
                let decayed = self.ewma_secs * w;
                if sample > decayed {
                    sample
                } else {
                    decayed * w + sample * (1.0 - w)
                }
            }
        };
        self.ewma_at = Some(now);
    }
}

/// One attempt's hold on a target: counted in flight until dropped (for streams, when the
/// stream ends).
pub struct Lease {
    health: Arc<TargetHealth>,
    /// This attempt holds the half-open probe slot.
    probe: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            // A probe abandoned without an outcome (the client went away mid-attempt) frees
            // the slot, or the target would wait for a verdict that never comes. An outcome
            // recorded first has already moved the circuit on, and this is a no-op.
            let mut s = lock(&self.health.state);
            if s.circuit == (Circuit::HalfOpen { probing: true }) {
                s.circuit = Circuit::HalfOpen { probing: false };
            }
        }
    }
}

/// What a strategy needs to know about each target.
pub struct Candidate<'a> {
    pub cfg: &'a TargetConfig,
    pub health: &'a Arc<TargetHealth>,
    /// The provider's active health check is failing.
    pub down: bool,
    /// Blended USD per token, for the cost strategy.
    pub price: Option<f64>,
    /// A stable identity for rendezvous hashing.
    pub id: u64,
}

/// No target could take the request.
#[derive(Debug, Clone, Copy)]
pub struct Unavailable {
    /// The earliest instant some target may be usable again.
    pub until: Option<Instant>,
    /// The state of the first unusable target, for the error message.
    pub why: &'static str,
}

/// Picks a target by `strategy` among those available and not in `exclude`, and claims it.
pub fn pick(
    strategy: Strategy,
    candidates: &[Candidate<'_>],
    exclude: &[usize],
    sticky: Option<&str>,
    now: Instant,
) -> Result<(usize, Lease, bool), Unavailable> {
    let mut usable: Vec<(usize, bool)> = Vec::with_capacity(candidates.len());
    let mut until: Option<Instant> = None;
    let mut why = "unavailable";
    for (i, c) in candidates.iter().enumerate() {
        if exclude.contains(&i) {
            continue;
        }
        let a = if c.down {
            Availability::ProviderDown
        } else {
            c.health.availability(c.cfg, now)
        };
        if a.usable() {
            usable.push((i, a == Availability::Probe));
        } else {
            if usable.is_empty() && why == "unavailable" {
                why = a.name();
            }
            if let Some(t) = a.until() {
                until = Some(until.map_or(t, |u| u.min(t)));
            }
        }
    }
    // A claim can lose a race for a half-open probe; try the next choice.
    while !usable.is_empty() {
        let k = choose(strategy, candidates, &usable, sticky, now);
        let (i, probe) = usable.swap_remove(k);
        let Some(c) = candidates.get(i) else { break };
        if c.health.claim(now) {
            let lease = Lease {
                health: c.health.clone(),
                probe,
            };
            return Ok((i, lease, probe));
        }
    }
    Err(Unavailable { until, why })
}

/// The index into `usable` the strategy picks.
fn choose(
    strategy: Strategy,
    candidates: &[Candidate<'_>],
    usable: &[(usize, bool)],
    sticky: Option<&str>,
    now: Instant,
) -> usize {
    if usable.len() == 1 {
        return 0;
    }
    let get = |k: usize| usable.get(k).and_then(|(i, _)| candidates.get(*i));
    let weight = |k: usize| {
        get(k).map_or(0.0, |c| {
            f64::from(c.cfg.weight.max(1)) * c.health.weight_factor(now)
        })
    };
    let all: Vec<usize> = (0..usable.len()).collect();
    match strategy {
        Strategy::Weighted => weighted(&all, weight),
        Strategy::Priority => {
            let best = all
                .iter()
                .filter_map(|&k| get(k).map(|c| c.cfg.priority))
                .min()
                .unwrap_or(0);
            let tied: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&k| get(k).is_some_and(|c| c.cfg.priority == best))
                .collect();
            weighted(&tied, weight)
        }
        Strategy::LeastBusy => {
            let busy = |k: usize| get(k).map_or(u32::MAX, |c| c.health.in_flight());
            let least = all.iter().map(|&k| busy(k)).min().unwrap_or(0);
            let tied: Vec<usize> = all.iter().copied().filter(|&k| busy(k) == least).collect();
            weighted(&tied, weight)
        }
        Strategy::Latency => {
            // Power of two choices over peak-EWMA latency scaled by load. An untried target
            // scores zero, so new targets get explored.
            let a = fastrand::usize(..usable.len());
            let mut b = fastrand::usize(..usable.len() - 1);
            if b >= a {
                b += 1;
            }
            let score = |k: usize| {
                get(k).map_or(f64::MAX, |c| {
                    c.health.ewma(now) * f64::from(c.health.in_flight() + 1)
                })
            };
            if score(b) < score(a) {
                b
            } else {
                a
            }
        }
        Strategy::Cost => {
            let price = |k: usize| get(k).and_then(|c| c.price).unwrap_or(f64::INFINITY);
            let cheapest = all.iter().map(|&k| price(k)).fold(f64::INFINITY, f64::min);
            let tied: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&k| price(k) <= cheapest)
                .collect();
            weighted(&tied, weight)
        }
        Strategy::Sticky => match sticky {
            // Weighted rendezvous hashing: a key keeps its target while that target is
            // available, and only the keys of a departed target move.
            Some(key) => {
                let score = |k: usize| {
                    get(k).map_or(f64::MIN, |c| {
                        let h = hash_pair(key, c.id);
                        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                        -weight(k) / u.ln()
                    })
                };
                all.iter()
                    .copied()
                    .max_by(|&x, &y| score(x).total_cmp(&score(y)))
                    .unwrap_or(0)
            }
            None => weighted(&all, weight),
        },
    }
}

fn weighted(ks: &[usize], weight: impl Fn(usize) -> f64) -> usize {
    let total: f64 = ks.iter().map(|&k| weight(k)).sum();
    if ks.len() <= 1 || total <= 0.0 {
        return ks.first().copied().unwrap_or(0);
    }
    let mut r = fastrand::f64() * total;
    for &k in ks {
        r -= weight(k);
        if r < 0.0 {
            return k;
        }
    }
    ks.last().copied().unwrap_or(0)
}

/// FNV-1a over the key and the target id, then a final mix: stable across processes, so
/// replicas agree on sticky placement.
pub fn hash_pair(key: &str, id: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(id.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A retry budget: each request deposits `ratio` tokens (up to a reserve), each retry spends
/// one. Under a full outage retries stay near `ratio` of traffic instead of multiplying it.
pub struct RetryBudget {
    /// Thousandths of a token.
    balance: AtomicI64,
    deposit: i64,
}

const BUDGET_RESERVE: i64 = 10_000;

impl RetryBudget {
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            balance: AtomicI64::new(BUDGET_RESERVE),
            deposit: (ratio * 1000.0).round() as i64,
        }
    }

    pub fn deposit(&self) {
        let d = self.deposit;
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < BUDGET_RESERVE).then(|| (b + d).min(BUDGET_RESERVE))
            });
    }

    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

/// The delay before retry `n` (1-based): exponential from `base`, capped, with equal jitter
/// (half fixed, half random) so synchronized clients spread out.
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let cap = exp.min(max);
    let half = cap / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(weight: u32, priority: u32) -> TargetConfig {
        TargetConfig {
            provider: "p".into(),
            model: "m".into(),
            weight,
            priority,
            max_concurrency: None,
            rpm: None,
            tpm: None,
            ttft_timeout: None,
        }
    }

    fn cooldown() -> CooldownConfig {
        CooldownConfig {
            failures: 2,
            window: Duration::from_secs(10),
            duration: Duration::from_secs(5),
        }
    }

    #[test]
    fn breaker_opens_then_half_opens_with_one_probe() {
        let h = Arc::new(TargetHealth::default());
        let cfg = target(1, 0);
        let t0 = Instant::now();
        assert!(!h.record(Outcome::Failure, None, Some("boom"), &cooldown(), t0));
        assert!(h.record(Outcome::Failure, None, None, &cooldown(), t0));
        assert!(matches!(
            h.availability(&cfg, t0),
            Availability::Cooldown(_)
        ));
        let later = t0 + Duration::from_secs(6);
        assert_eq!(h.availability(&cfg, later), Availability::Probe);
        assert!(h.claim(later), "probe");
        assert_eq!(h.availability(&cfg, later), Availability::Probing);
        assert!(!h.claim(later), "only one probe");
        // The probe fails: straight back to cooldown.
        assert!(h.record(Outcome::Failure, None, None, &cooldown(), later));
        let again = later + Duration::from_secs(6);
        assert_eq!(h.availability(&cfg, again), Availability::Probe);
        assert!(h.claim(again), "probe");
        h.record(
            Outcome::Success,
            Some(Duration::from_millis(5)),
            None,
            &cooldown(),
            again,
        );
        assert_eq!(h.availability(&cfg, again), Availability::Ready);
        assert_eq!(h.cooldowns(), 2);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let h = Arc::new(TargetHealth::default());
        let cfg = target(1, 0);
        let t0 = Instant::now();
        h.record(Outcome::Failure, None, None, &cooldown(), t0);
        h.record(Outcome::Failure, None, None, &cooldown(), t0);
        let later = t0 + Duration::from_secs(6);
        let cands = [Candidate {
            cfg: &cfg,
            health: &h,
            down: false,
            price: None,
            id: 1,
        }];
        let (_, lease, probe) = pick(Strategy::Weighted, &cands, &[], None, later).expect("probe");
        assert!(probe);
        assert!(pick(Strategy::Weighted, &cands, &[], None, later).is_err());
        drop(lease);
        assert_eq!(h.availability(&cfg, later), Availability::Probe);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let h = TargetHealth::default();
        let t0 = Instant::now();
        assert!(!h.record(Outcome::Failure, None, None, &cooldown(), t0));
        let later = t0 + Duration::from_secs(11);
        assert!(!h.record(Outcome::Failure, None, None, &cooldown(), later));
        assert_eq!(h.availability(&target(1, 0), later), Availability::Ready);
    }

    #[test]
    fn throttling_halves_weight_and_blocks_for_retry_after() {
        let h = TargetHealth::default();
        let t0 = Instant::now();
        h.record(
            Outcome::Throttled {
                retry_after: Some(Duration::from_secs(2)),
            },
            None,
            None,
            &cooldown(),
            t0,
        );
        assert!(matches!(
            h.availability(&target(1, 0), t0),
            Availability::Throttled(_)
        ));
        assert_eq!(h.weight_factor(t0), 0.5);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(h.availability(&target(1, 0), later), Availability::Ready);
        assert_eq!(h.weight_factor(later), 1.0, "window reset");
    }

    #[test]
    fn capacity_limits_apply() {
        let h = Arc::new(TargetHealth::default());
        let mut cfg = target(1, 0);
        cfg.max_concurrency = Some(1);
        let now = Instant::now();
        let cands = [Candidate {
            cfg: &cfg,
            health: &h,
            down: false,
            price: None,
            id: 1,
        }];
        let (_, lease, _) = pick(Strategy::Weighted, &cands, &[], None, now).expect("first");
        assert!(pick(Strategy::Weighted, &cands, &[], None, now).is_err());
        drop(lease);
        assert!(pick(Strategy::Weighted, &cands, &[], None, now).is_ok());
        let mut rpm = target(1, 0);
        rpm.rpm = Some(2);
        let h2 = Arc::new(TargetHealth::default());
        let cands = [Candidate {
            cfg: &rpm,
            health: &h2,
            down: false,
            price: None,
            id: 1,
        }];
        for _ in 0..2 {
            assert!(pick(Strategy::Weighted, &cands, &[], None, now).is_ok());
        }
        let err = pick(Strategy::Weighted, &cands, &[], None, now)
            .err()
            .expect("at rpm");
        assert_eq!(err.why, "at_capacity");
        assert!(err.until.is_some());
    }

    fn candidates<'a>(
        cfgs: &'a [TargetConfig],
        hs: &'a [Arc<TargetHealth>],
        prices: &[Option<f64>],
    ) -> Vec<Candidate<'a>> {
        cfgs.iter()
            .zip(hs)
            .enumerate()
            .map(|(i, (cfg, health))| Candidate {
                cfg,
                health,
                down: false,
                price: prices.get(i).copied().flatten(),
                id: i as u64,
            })
            .collect()
    }

    fn spread(strategy: Strategy, cfgs: &[TargetConfig], prices: &[Option<f64>]) -> Vec<usize> {
        let hs: Vec<Arc<TargetHealth>> = cfgs.iter().map(|_| Arc::default()).collect();
        let cands = candidates(cfgs, &hs, prices);
        let mut counts = vec![0; cfgs.len()];
        for _ in 0..4000 {
            let (i, _, _) = pick(strategy, &cands, &[], None, Instant::now()).expect("pick");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn strategies_pick_as_documented() {
        let c = spread(Strategy::Weighted, &[target(3, 0), target(1, 0)], &[]);
        assert!(c[0] > 2600 && c[0] < 3400, "3:1 split, got {c:?}");
        let c = spread(Strategy::Priority, &[target(1, 1), target(1, 0)], &[]);
        assert_eq!(c, vec![0, 4000]);
        let c = spread(
            Strategy::Cost,
            &[target(1, 0), target(1, 0), target(1, 0)],
            &[Some(2.0), Some(1.0), None],
        );
        assert_eq!(c, vec![0, 4000, 0]);
    }

    #[test]
    fn least_busy_and_latency_avoid_the_loaded_and_the_slow() {
        let cfgs = [target(1, 0), target(1, 0)];
        let hs: Vec<Arc<TargetHealth>> = cfgs.iter().map(|_| Arc::default()).collect();
        let cands = candidates(&cfgs, &hs, &[]);
        let now = Instant::now();
        let mut held = Vec::new();
        for _ in 0..3 {
            let (i, lease, _) = pick(Strategy::LeastBusy, &cands, &[1], None, now).expect("0");
            assert_eq!(i, 0);
            held.push(lease);
        }
        for _ in 0..20 {
            let (i, _, _) = pick(Strategy::LeastBusy, &cands, &[], None, now).expect("pick");
            assert_eq!(i, 1, "target 0 has 3 in flight");
        }
        drop(held);
        // Target 0 answered in 2s, target 1 in 10ms: with two candidates, the power of two
        // choices always compares both.
        hs[0].record(
            Outcome::Success,
            Some(Duration::from_secs(2)),
            None,
            &cooldown(),
            now,
        );
        hs[1].record(
            Outcome::Success,
            Some(Duration::from_millis(10)),
            None,
            &cooldown(),
            now,
        );
        for _ in 0..20 {
            let (i, _, _) = pick(Strategy::Latency, &cands, &[], None, now).expect("pick");
            assert_eq!(i, 1);
        }
        // Peak-EWMA: one slow answer takes effect at once; fast ones decay it over time.
        hs[1].record(
            Outcome::Success,
            Some(Duration::from_secs(5)),
            None,
            &cooldown(),
            now,
        );
        assert!(hs[1].ewma(now) >= 5.0);
        let later = now + Duration::from_secs(30);
        hs[1].record(
            Outcome::Success,
            Some(Duration::from_millis(10)),
            None,
            &cooldown(),
            later,
        );
        assert!(hs[1].ewma(later) < 1.0, "{}", hs[1].ewma(later));
    }

    #[test]
    fn sticky_keys_stay_put_and_only_a_lost_targets_keys_move() {
        let cfgs = [target(1, 0), target(1, 0), target(1, 0)];
        let hs: Vec<Arc<TargetHealth>> = cfgs.iter().map(|_| Arc::default()).collect();
        let cands = candidates(&cfgs, &hs, &[]);
        let now = Instant::now();
        let mut moved = 0;
        let mut used = [0; 3];
        for k in 0..300 {
            let key = format!("conv-{k}");
            let (a, _, _) = pick(Strategy::Sticky, &cands, &[], Some(&key), now).expect("a");
            let (b, _, _) = pick(Strategy::Sticky, &cands, &[], Some(&key), now).expect("b");
            assert_eq!(a, b, "same key, same target");
            used[a] += 1;
            let (c, _, _) = pick(Strategy::Sticky, &cands, &[2], Some(&key), now).expect("c");
            if a != 2 {
                assert_eq!(a, c, "keys of surviving targets do not move");
            } else {
                moved += 1;
            }
        }
        assert!(used.iter().all(|&n| n > 50), "spread: {used:?}");
        assert_eq!(moved, used[2]);
    }

    #[test]
    fn retry_budget_caps_retries() {
        let b = RetryBudget::new(0.2);
        let mut granted = 0;
        for _ in 0..100 {
            b.deposit();
            if b.try_withdraw() {
                granted += 1;
            }
        }
        // The reserve of 10, plus 0.2 per request.
        assert!((28..=31).contains(&granted), "granted {granted}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for n in 1..8 {
            let d = backoff(base, max, n);
            let cap = (base * (1 << (n - 1))).min(max);
            assert!(d >= cap / 2 && d <= cap, "{n}: {d:?}");
        }
    }
}
