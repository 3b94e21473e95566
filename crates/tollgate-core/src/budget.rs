//! Budgets: spend limits per key, user, team, model, conversation, agent or all traffic, per
//! calendar period, enforced by reservation.
//!
//! Before a call, the request reserves an upper bound of its cost against every budget that
//! applies; the reservation is admitted only while each budget's spend plus outstanding
//! reservations is below its limit. Afterwards the real cost is settled (or, on failure,
//! the reservation released). So the final spend never exceeds the limit by more than one
//! request's reservation, however many requests race, and no request is refused while spend
//! plus reservations stay below the limit.
//!
//! Counters live behind [`SpendCounters`]; the in-process engine here is seeded from the spend
//! ledger the first time a counter is used, so budgets survive restarts. The scale-out engine
//! (Redis) implements the same trait with the same atomic check-and-reserve.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde::Serialize;

use crate::config::{BudgetConfig, Period, Scope};
use crate::error::{ApiError, ErrorKind};
use crate::glob::Glob;
use crate::ledger::{Dimension, SpendQuery};
use crate::store::{LedgerStore, Limits, MetaStore, StoreResult};

/// Who and what a request is, as budgets and rate limits see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    pub key: Option<&'a str>,
    pub user: Option<&'a str>,
    pub team: Option<&'a str>,
    /// The model name the client sent.
    pub model: &'a str,
    pub conversation: Option<&'a str>,
    pub agent: Option<&'a str>,
    /// The own limits of the caller's key, user and team records, with their scopes.
    pub own_limits: &'a [(Scope, Arc<Limits>)],
}

/// The id every `global` counter has.
pub const GLOBAL_ID: &str = "*";

impl<'a> Subject<'a> {
    /// The request's id in a scope; `None` when it has none (a JWT principal has no key).
    pub fn id(&self, scope: Scope) -> Option<&'a str> {
        match scope {
            Scope::Key => self.key,
            Scope::User => self.user,
            Scope::Team => self.team,
            Scope::Model => Some(self.model),
            Scope::Conversation => self.conversation,
            Scope::Agent => self.agent,
            Scope::Global => Some(GLOBAL_ID),
        }
    }
}

/// The ledger column a scope's spend is found under (`None`: all records).
pub fn scope_dimension(scope: Scope) -> Option<Dimension> {
    match scope {
        Scope::Key => Some(Dimension::Key),
        Scope::User => Some(Dimension::User),
        Scope::Team => Some(Dimension::Team),
        Scope::Model => Some(Dimension::Model),
        Scope::Conversation => Some(Dimension::Conversation),
        Scope::Agent => Some(Dimension::Agent),
        Scope::Global => None,
    }
}

/// Which ids and models a budget or rate-limit rule covers.
#[derive(Debug)]
pub struct Selector {
    pub scope: Scope,
    matches: Vec<Glob>,
    models: Vec<Glob>,
}

impl Selector {
    pub fn new(scope: Scope, matches: &[String], models: &[String]) -> Selector {
        Selector {
            scope,
            matches: matches.iter().map(Glob::new).collect(),
            models: models.iter().map(Glob::new).collect(),
        }
    }

    /// The subject's id this rule counts it under, if the rule applies.
    pub fn select<'s>(&self, s: &Subject<'s>) -> Option<&'s str> {
        if !self.models.is_empty() && !self.models.iter().any(|g| g.matches(s.model)) {
            return None;
        }
        let id = s.id(self.scope)?;
        self.matches.iter().any(|g| g.matches(id)).then_some(id)
    }

    /// Whether spend on `model` counts under this rule.
    pub fn counts_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| g.matches(model))
    }
}

/// The start of the period containing `now_ms`, and its end (`None` for `total`).
pub fn period_bounds(period: Period, now_ms: i64) -> (i64, Option<i64>) {
    use time::{Date, Month, OffsetDateTime, Time};
    let ms = |d: Date| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp() * 1000;
    let Ok(now) = OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)) else {
        return (0, None);
    };
    let today = now.date();
    match period {
        Period::Total => (0, None),
        Period::Daily => (ms(today), today.next_day().map(ms)),
        Period::Weekly => {
            let back = i64::from(today.weekday().number_days_from_monday());
            let start = today
                .checked_sub(time::Duration::days(back))
                .unwrap_or(today);
            let end = start.checked_add(time::Duration::days(7)).map(ms);
            (ms(start), end)
        }
        Period::Monthly => {
            let start = Date::from_calendar_date(today.year(), today.month(), 1).unwrap_or(today);
            let (y, m) = match today.month() {
                Month::December => (today.year() + 1, Month::January),
                m => (today.year(), m.next()),
            };
            let end = Date::from_calendar_date(y, m, 1).ok().map(ms);
            (ms(start), end)
        }
    }
}

/// One budget's counter for one scope id in one period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CounterKey {
    pub budget: Arc<str>,
    pub id: String,
    pub period_start_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CounterState {
    pub spent_usd: f64,
    pub reserved_usd: f64,
}

/// A refused reservation: which check refused, and the counter as it stood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    pub index: usize,
    pub state: CounterState,
}

/// How long a reservation holds in a shared engine unless renewed (`storage.reservation_lease`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// One request's reservation as the engine knows it: an id, and until when it holds unless
/// renewed. A shared engine (Redis) reclaims a hold whose lease ran out, so a replica that
/// dies mid-request leaks nothing; an in-process engine dies with its holds and ignores both.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: String,
    pub expires_ms: i64,
}

impl Hold {
    pub fn new(lease: Duration) -> Hold {
        Hold {
            id: format!("{:032x}", fastrand::u128(..)),
            expires_ms: crate::time::now_ms().saturating_add(lease.as_millis() as i64),
        }
    }
}

/// The counters' engine. Every method is atomic across everything sharing the engine.
#[async_trait]
pub trait SpendCounters: Send + Sync + 'static {
    /// Which of these counters the engine holds.
    async fn known(&self, keys: &[&CounterKey]) -> StoreResult<Vec<bool>>;
    /// Creates a counter with `spent` unless it exists.
    async fn seed(&self, key: &CounterKey, spent: f64) -> StoreResult<()>;
    /// If every counter's spent + reserved is below its limit, adds `amount` to each one's
    /// reservations; otherwise changes nothing and says which refused.
    async fn reserve(
        &self,
        checks: &[(&CounterKey, f64)],
        amount: f64,
        hold: &Hold,
    ) -> StoreResult<Result<(), Refusal>>;
    /// Takes the hold's `reserved` off each counter's reservations (unless its lease ran out
    /// and it was reclaimed already) and adds `actual` to its spend. Returns each counter's
    /// spend before and after.
    async fn settle(
        &self,
        keys: &[CounterKey],
        hold: &Hold,
        reserved: f64,
        actual: f64,
    ) -> StoreResult<Vec<(f64, f64)>>;
    /// Extends a live hold's lease to `hold.expires_ms`.
    async fn renew(&self, _keys: &[CounterKey], _hold: &Hold) -> StoreResult<()> {
        Ok(())
    }
    /// Sets the counter's spend to zero (an operator reset).
    async fn reset(&self, key: &CounterKey) -> StoreResult<()>;
    /// Every counter of a budget in a period.
    async fn list(
        &self,
        budget: &str,
        period_start_ms: i64,
    ) -> StoreResult<Vec<(CounterKey, CounterState)>>;
}

/// The in-process engine: a map under a mutex (held for microseconds, never across awaits).
#[derive(Default)]
pub struct LocalCounters {
    map: Mutex<HashMap<CounterKey, CounterState>>,
}

impl LocalCounters {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<CounterKey, CounterState>) -> R) -> R {
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

#[async_trait]
impl SpendCounters for LocalCounters {
    async fn known(&self, keys: &[&CounterKey]) -> StoreResult<Vec<bool>> {
        Ok(self.with(|m| keys.iter().map(|k| m.contains_key(*k)).collect()))
    }

    async fn seed(&self, key: &CounterKey, spent: f64) -> StoreResult<()> {
        self.with(|m| {
            // A new period's counter makes the previous periods' of the same budget and id
            // stale; drop them so the map stays bounded by live counters.
            if !m.contains_key(key) {
                m.retain(|k, _| {
                    !(k.budget == key.budget
                        && k.id == key.id
                        && k.period_start_ms < key.period_start_ms)
                });
            }
            m.entry(key.clone()).or_insert(CounterState {
                spent_usd: spent,
                reserved_usd: 0.0,
            });
        });
        Ok(())
    }

    async fn reserve(
        &self,
        checks: &[(&CounterKey, f64)],
        amount: f64,
        _hold: &Hold,
    ) -> StoreResult<Result<(), Refusal>> {
        Ok(self.with(|m| {
            for (index, (key, limit)) in checks.iter().enumerate() {
                let state = m.get(*key).copied().unwrap_or_default();
                if state.spent_usd + state.reserved_usd >= *limit {
                    return Err(Refusal { index, state });
                }
            }
            for (key, _) in checks {
                m.entry((*key).clone()).or_default().reserved_usd += amount;
            }
            Ok(())
        }))
    }

    async fn settle(
        &self,
        keys: &[CounterKey],
        _hold: &Hold,
        reserved: f64,
        actual: f64,
    ) -> StoreResult<Vec<(f64, f64)>> {
        Ok(self.with(|m| {
            keys.iter()
                .map(|k| {
                    let c = m.entry(k.clone()).or_default();
                    c.reserved_usd -= reserved;
                    // Float residue of many adds and subtracts is not a reservation.
                    if c.reserved_usd < 1e-12 {
                        c.reserved_usd = 0.0;
                    }
                    let before = c.spent_usd;
                    c.spent_usd += actual;
                    (before, c.spent_usd)
                })
                .collect()
        }))
    }

    async fn reset(&self, key: &CounterKey) -> StoreResult<()> {
        self.with(|m| m.entry(key.clone()).or_default().spent_usd = 0.0);
        Ok(())
    }

    async fn list(
        &self,
        budget: &str,
        period_start_ms: i64,
    ) -> StoreResult<Vec<(CounterKey, CounterState)>> {
        Ok(self.with(|m| {
            let mut out: Vec<_> = m
                .iter()
                .filter(|(k, _)| &*k.budget == budget && k.period_start_ms == period_start_ms)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
            out
        }))
    }
}

struct Rule {
    cfg: BudgetConfig,
    /// The counters' name: `name@digest` of what the budget counts.
    name: Arc<str>,
    selector: Selector,
}

/// A budget the request counts against, in the current period.
struct Applied {
    rule: usize,
    key: CounterKey,
    limit: f64,
}

/// The budgets in force, their counters, and the alert sender.
pub struct Budgets {
    rules: ArcSwap<Vec<Arc<Rule>>>,
    counters: Arc<dyn SpendCounters>,
    ledger: Arc<dyn LedgerStore>,
    meta: Arc<dyn MetaStore>,
    /// Counters this process already made sure exist.
    seeded: Mutex<HashSet<CounterKey>>,
    /// One seeding at a time: a burst of first requests reads the ledger once, not once each.
    seeding: tokio::sync::Mutex<()>,
    /// Counts alerts sent (a shared Prometheus counter).
    alerts_sent: prometheus_client::metrics::counter::Counter<u64, std::sync::atomic::AtomicU64>,
    /// What happens while the counters' store fails.
    failures: Arc<crate::degrade::SharedFailures>,
    /// How long a reservation holds in a shared engine unless this process renews it.
    lease_ms: std::sync::atomic::AtomicU64,
    /// Reservations in flight here, by hold id, renewed while they last.
    live: Mutex<HashMap<String, Vec<CounterKey>>>,
}

/// What the request holds until it settles: dropping it unsettled releases the reservation.
pub struct Reservation {
    budgets: Arc<Budgets>,
    rules: Vec<Arc<Rule>>,
    keys: Vec<CounterKey>,
    hold: Hold,
    amount: f64,
    settled: bool,
}

/// The name a budget's counters go by: its name and a digest of what it counts, the same in
/// every process that shares the counters.
fn counter_name(c: &BudgetConfig) -> String {
    use sha2::{Digest, Sha256};
    let what = serde_json::json!([c.scope, c.matches, c.models, c.period]).to_string();
    let digest = Sha256::digest(what.as_bytes());
    let hex = crate::hex::encode(&digest[..4]);
    format!("{}@{hex}", c.name)
}

/// The budget a key's, user's or team's own `limits.budget_usd` sets: a rule of that scope
/// matching only that id, named `{scope}:{id}` (a name no configured budget can have).
fn own_rule(scope: Scope, id: &str, limits: &Limits) -> Option<Arc<Rule>> {
    let cfg = BudgetConfig {
        name: format!("{}:{id}", scope.name()),
        scope,
        matches: vec![id.to_owned()],
        models: Vec::new(),
        period: limits.period(),
        limit_usd: limits.budget_usd?,
        alerts: None,
    };
    Some(Arc::new(Rule {
        name: Arc::from(counter_name(&cfg)),
        selector: Selector::new(cfg.scope, &cfg.matches, &cfg.models),
        cfg,
    }))
}

fn meta_reset_key(budget: &str, id: &str) -> String {
    format!("budget_reset:{budget}:{id}")
}

impl Budgets {
    pub fn new(
        config: &[BudgetConfig],
        counters: Arc<dyn SpendCounters>,
        ledger: Arc<dyn LedgerStore>,
        meta: Arc<dyn MetaStore>,
        alerts_sent: prometheus_client::metrics::counter::Counter<
            u64,
            std::sync::atomic::AtomicU64,
        >,
        failures: Arc<crate::degrade::SharedFailures>,
    ) -> Arc<Budgets> {
        let b = Budgets {
            failures,
            rules: ArcSwap::from_pointee(Vec::new()),
            counters,
            ledger,
            meta,
            seeded: Mutex::new(HashSet::new()),
            seeding: tokio::sync::Mutex::new(()),
            alerts_sent,
            lease_ms: std::sync::atomic::AtomicU64::new(DEFAULT_LEASE.as_millis() as u64),
            live: Mutex::new(HashMap::new()),
        };
        b.reload(config);
        Arc::new(b)
    }

    /// Sets how long a reservation holds in a shared engine without renewal
    /// (`storage.reservation_lease`).
    pub fn set_lease(&self, lease: Duration) {
        let ms = lease.as_millis().clamp(100, u64::MAX as u128) as u64;
        self.lease_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Renews the leases of this process's reservations in flight, three times per lease,
    /// until `stop` resolves: a long request keeps its reservation; a dead process's lapse.
    pub async fn run_renewer(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.lease() / 3) => {}
                _ = stop.changed() => return,
            }
            let live: Vec<(String, Vec<CounterKey>)> = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(id, keys)| (id.clone(), keys.clone()))
                .collect();
            for (id, keys) in live {
                let hold = Hold {
                    id,
                    expires_ms: crate::time::now_ms()
                        .saturating_add(self.lease().as_millis() as i64),
                };
                if let Err(e) = self.counters.renew(&keys, &hold).await {
                    tracing::warn!(error = %e, "could not renew a budget reservation's lease");
                }
            }
        }
    }

    fn forget(&self, hold: &Hold) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hold.id);
    }

    /// Installs the budgets of a new config. A budget whose name, scope, match, models and
    /// period are unchanged keeps its counters (a new limit applies to the spend so far); a
    /// budget that now counts something else starts new counters, seeded from the ledger.
    pub fn reload(&self, config: &[BudgetConfig]) {
        let rules = config
            .iter()
            .map(|c| {
                Arc::new(Rule {
                    name: Arc::from(counter_name(c)),
                    selector: Selector::new(c.scope, &c.matches, &c.models),
                    cfg: c.clone(),
                })
            })
            .collect();
        self.rules.store(Arc::new(rules));
        // A changed budget (a new scope or model filter) must be seeded afresh.
        self.seeded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn is_empty(&self) -> bool {
        self.rules.load().is_empty()
    }

    fn applicable(rules: &[Arc<Rule>], s: &Subject<'_>, now_ms: i64) -> Vec<Applied> {
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let id = r.selector.select(s)?;
                Some(Applied {
                    rule: i,
                    key: CounterKey {
                        budget: r.name.clone(),
                        id: id.to_owned(),
                        period_start_ms: period_bounds(r.cfg.period, now_ms).0,
                    },
                    limit: r.cfg.limit_usd,
                })
            })
            .collect()
    }

    /// The spend the ledger holds for a counter: its period, since the last operator reset,
    /// only the models the budget counts.
    async fn ledger_spend(&self, rule: &Rule, key: &CounterKey) -> StoreResult<f64> {
        let reset_at = self
            .meta
            .get_meta(&meta_reset_key(&rule.cfg.name, &key.id))
            .await?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let filter = scope_dimension(rule.cfg.scope).map(|d| (d, key.id.clone()));
        let rows = self
            .ledger
            .spend(&SpendQuery {
                since_ms: key.period_start_ms.max(reset_at),
                until_ms: i64::MAX,
                group_by: Some(Dimension::Model),
                filter,
                limit: 100_000,
            })
            .await?;
        Ok(rows
            .iter()
            .filter(|r| {
                rule.selector
                    .counts_model(r.group.as_deref().unwrap_or_default())
            })
            .map(|r| r.cost_usd)
            // Not `sum()`: an empty f64 sum is -0.0.
            .fold(0.0, |a, b| a + b))
    }

    async fn ensure_seeded(&self, rules: &[Arc<Rule>], applied: &[Applied]) -> StoreResult<()> {
        let unseeded = || -> Vec<&Applied> {
            let seeded = self.seeded.lock().unwrap_or_else(|p| p.into_inner());
            applied
                .iter()
                .filter(|a| !seeded.contains(&a.key))
                .collect()
        };
        if unseeded().is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.seeding.lock().await;
        // Another request may have seeded these while this one waited.
        let missing = unseeded();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<&CounterKey> = missing.iter().map(|a| &a.key).collect();
        let known = self.counters.known(&keys).await?;
        for (a, known) in missing.iter().zip(known) {
            if !known {
                if let Some(rule) = rules.get(a.rule) {
                    let spent = self.ledger_spend(rule, &a.key).await?;
                    self.counters.seed(&a.key, spent).await?;
                }
            }
        }
        let mut seeded = self.seeded.lock().unwrap_or_else(|p| p.into_inner());
        if seeded.len() > 100_000 {
            seeded.clear();
        }
        seeded.extend(missing.into_iter().map(|a| a.key.clone()));
        Ok(())
    }

    /// Reserves `estimate_usd` against every budget that applies. `Ok(None)`: no budget
    /// applies. A refusal is a 429 `budget_exceeded` saying when the budget resets.
    pub async fn reserve(
        self: &Arc<Self>,
        s: &Subject<'_>,
        estimate_usd: f64,
    ) -> Result<Option<Reservation>, ApiError> {
        let mut rules = self.rules.load_full();
        let own: Vec<Arc<Rule>> = s
            .own_limits
            .iter()
            .filter_map(|(scope, limits)| own_rule(*scope, s.id(*scope)?, limits))
            .collect();
        if !own.is_empty() {
            rules = Arc::new(rules.iter().cloned().chain(own).collect());
        }
        if rules.is_empty() {
            return Ok(None);
        }
        let now_ms = crate::time::now_ms();
        let applied = Self::applicable(&rules, s, now_ms);
        if applied.is_empty() {
            return Ok(None);
        }
        if self.failures.tripped() {
            self.failures.skipped("budget")?;
            return Ok(None);
        }
        if let Err(e) = self.ensure_seeded(&rules, &applied).await {
            self.failures.on_failure("budget", &e)?;
            return Ok(None);
        }
        let checks: Vec<(&CounterKey, f64)> = applied.iter().map(|a| (&a.key, a.limit)).collect();
        let amount = estimate_usd.max(0.0);
        let hold = Hold::new(self.lease());
        let reserved = match self.counters.reserve(&checks, amount, &hold).await {
            Ok(r) => r,
            Err(e) => {
                self.failures.on_failure("budget", &e)?;
                return Ok(None);
            }
        };
        match reserved {
            Ok(()) => {
                let keys: Vec<CounterKey> = applied.iter().map(|a| a.key.clone()).collect();
                self.live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(hold.id.clone(), keys.clone());
                Ok(Some(Reservation {
                    budgets: self.clone(),
                    rules: applied
                        .iter()
                        .filter_map(|a| rules.get(a.rule).cloned())
                        .collect(),
                    keys,
                    hold,
                    amount,
                    settled: false,
                }))
            }
            Err(refusal) => {
                let a = applied.get(refusal.index);
                let rule = a.and_then(|a| rules.get(a.rule));
                Err(exceeded(
                    rule.map(|r| &r.cfg),
                    a.map(|a| &a.key),
                    refusal.state,
                    now_ms,
                ))
            }
        }
    }

    /// Every budget with its counters in the current period.
    pub async fn report(&self) -> StoreResult<Vec<BudgetReport>> {
        let now_ms = crate::time::now_ms();
        let rules = self.rules.load_full();
        let mut out = Vec::with_capacity(rules.len());
        for r in rules.iter() {
            out.push(self.report_rule(r, now_ms).await?);
        }
        Ok(out)
    }

    async fn report_rule(&self, r: &Rule, now_ms: i64) -> StoreResult<BudgetReport> {
        let (start, end) = period_bounds(r.cfg.period, now_ms);
        let counters = self.counters.list(&r.name, start).await?;
        Ok(BudgetReport {
            budget: r.cfg.clone(),
            period_start: crate::time::rfc3339(start / 1000),
            resets_at: end.map(|e| crate::time::rfc3339(e / 1000)),
            counters: counters
                .into_iter()
                .map(|(k, s)| CounterReport {
                    id: k.id,
                    spent_usd: s.spent_usd,
                    reserved_usd: s.reserved_usd,
                    remaining_usd: (r.cfg.limit_usd - s.spent_usd).max(0.0),
                })
                .collect(),
        })
    }

    /// The budget a key's, user's or team's own limits set, with its counter in the current
    /// period (read from the ledger if no request has used it yet). `None`: it sets no budget.
    pub async fn own_report(
        &self,
        scope: Scope,
        id: &str,
        limits: &Limits,
    ) -> StoreResult<Option<BudgetReport>> {
        let Some(rule) = own_rule(scope, id, limits) else {
            return Ok(None);
        };
        let now_ms = crate::time::now_ms();
        let rules = [rule];
        let applied = vec![Applied {
            rule: 0,
            key: CounterKey {
                budget: rules[0].name.clone(),
                id: id.to_owned(),
                period_start_ms: period_bounds(rules[0].cfg.period, now_ms).0,
            },
            limit: rules[0].cfg.limit_usd,
        }];
        self.ensure_seeded(&rules, &applied).await?;
        self.report_rule(&rules[0], now_ms).await.map(Some)
    }

    /// An operator reset: the budget's spend for `id` starts from zero now. Persisted, so a
    /// restart (which re-reads spend from the ledger) keeps it.
    pub async fn reset(&self, budget: &str, id: &str) -> Result<(), ApiError> {
        let rules = self.rules.load_full();
        let Some(rule) = rules.iter().find(|r| r.cfg.name == budget) else {
            return Err(
                ApiError::not_found(format!("no budget named {budget:?}")).code("budget_not_found")
            );
        };
        self.reset_rule(rule, id).await
    }

    /// Resets the budget a key's, user's or team's own limits set, like [`Budgets::reset`].
    pub async fn reset_own(&self, scope: Scope, id: &str, limits: &Limits) -> Result<(), ApiError> {
        let Some(rule) = own_rule(scope, id, limits) else {
            return Err(ApiError::not_found(format!(
                "{} {id:?} has no budget of its own",
                scope.name()
            ))
            .code("budget_not_found"));
        };
        self.reset_rule(&rule, id).await
    }

    async fn reset_rule(&self, rule: &Rule, id: &str) -> Result<(), ApiError> {
        let now_ms = crate::time::now_ms();
        self.meta
            .set_meta(&meta_reset_key(&rule.cfg.name, id), &now_ms.to_string())
            .await?;
        let key = CounterKey {
            budget: rule.name.clone(),
            id: id.to_owned(),
            period_start_ms: period_bounds(rule.cfg.period, now_ms).0,
        };
        self.counters.seed(&key, 0.0).await?;
        self.counters.reset(&key).await?;
        Ok(())
    }

    async fn settle_now(
        &self,
        rules: &[Arc<Rule>],
        keys: &[CounterKey],
        hold: &Hold,
        reserved: f64,
        actual: f64,
    ) {
        let settled = self.counters.settle(keys, hold, reserved, actual).await;
        self.forget(hold);
        let moved = match settled {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "budget settlement failed");
                return;
            }
        };
        for ((rule, key), (before, after)) in rules.iter().zip(keys).zip(moved) {
            let Some(alerts) = &rule.cfg.alerts else {
                continue;
            };
            for t in &alerts.thresholds {
                let at = t * rule.cfg.limit_usd;
                if before < at && after >= at {
                    self.alert(rule, key, *t, after).await;
                }
            }
        }
    }

    /// Calls the budget's webhook for a threshold, once per period across every process
    /// sharing the store.
    async fn alert(&self, rule: &Rule, key: &CounterKey, threshold: f64, spent: f64) {
        let Some(alerts) = &rule.cfg.alerts else {
            return;
        };
        let marker = format!(
            "budget_alert:{}:{}:{}:{threshold}",
            key.budget, key.id, key.period_start_ms
        );
        let token = format!("{}-{}", crate::time::now_ms(), fastrand::u64(..));
        match self.meta.set_meta_if_absent(&marker, &token).await {
            Ok(v) if v == token => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "budget alert bookkeeping failed; not sending");
                return;
            }
        }
        let (_, end) = period_bounds(rule.cfg.period, key.period_start_ms);
        let body = serde_json::json!({
            "type": "budget.threshold_reached",
            "budget": rule.cfg.name,
            "scope": rule.cfg.scope.name(),
            "id": key.id,
            "period": rule.cfg.period.name(),
            "period_start": crate::time::rfc3339(key.period_start_ms / 1000),
            "resets_at": end.map(|e| crate::time::rfc3339(e / 1000)),
            "threshold": threshold,
            "limit_usd": rule.cfg.limit_usd,
            "spent_usd": spent,
        });
        let url = alerts.webhook.clone();
        self.alerts_sent.inc();
        tokio::spawn(async move {
            if let Err(e) = crate::webhook::post_json(&url, &body, Duration::from_secs(10)).await {
                tracing::warn!(error = %e, webhook = %url, "budget alert webhook failed");
            }
        });
    }
}

/// A budget as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetReport {
    #[serde(flatten)]
    pub budget: BudgetConfig,
    pub period_start: String,
    pub resets_at: Option<String>,
    pub counters: Vec<CounterReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CounterReport {
    pub id: String,
    pub spent_usd: f64,
    pub reserved_usd: f64,
    pub remaining_usd: f64,
}

/// 429 `budget_exceeded`, with the reset time in the message, `Retry-After` and
/// `x-tollgate-budget-reset`.
fn exceeded(
    rule: Option<&BudgetConfig>,
    key: Option<&CounterKey>,
    state: CounterState,
    now_ms: i64,
) -> ApiError {
    let (name, scope, limit, period) = match rule {
        Some(r) => (r.name.as_str(), r.scope.name(), r.limit_usd, r.period),
        None => ("?", "?", 0.0, Period::Total),
    };
    let id = key.map_or("?", |k| k.id.as_str());
    let (_, end) = period_bounds(period, now_ms);
    let mut message = format!(
        "budget {name:?} for {scope} {id:?} is exhausted: ${:.6} spent and ${:.6} reserved of ${limit:.6}",
        state.spent_usd, state.reserved_usd
    );
    let mut headers = Vec::new();
    match end {
        Some(end) => {
            let reset = crate::time::rfc3339(end / 1000);
            message.push_str(&format!("; it resets at {reset}"));
            let secs = ((end - now_ms) / 1000).max(1);
            headers.push((http::header::RETRY_AFTER, http::HeaderValue::from(secs)));
            if let Ok(v) = http::HeaderValue::from_str(&reset) {
                headers.push((http::HeaderName::from_static("x-tollgate-budget-reset"), v));
            }
        }
        None => message.push_str("; it does not reset on its own"),
    }
    ApiError::new(ErrorKind::BudgetExceeded, message)
        .code("budget_exceeded")
        .with_headers(headers)
}

impl Reservation {
    /// Settles with the real cost (in the background: settlement never delays a response).
    pub fn settle(mut self, actual_usd: f64) {
        self.settled = true;
        let budgets = self.budgets.clone();
        let rules = std::mem::take(&mut self.rules);
        let keys = std::mem::take(&mut self.keys);
        let amount = self.amount;
        let hold = self.hold.clone();
        spawn_settlement(budgets, rules, keys, hold, amount, actual_usd.max(0.0));
    }

    /// The amount reserved.
    pub fn amount(&self) -> f64 {
        self.amount
    }
}

fn spawn_settlement(
    budgets: Arc<Budgets>,
    rules: Vec<Arc<Rule>>,
    keys: Vec<CounterKey>,
    hold: Hold,
    reserved: f64,
    actual: f64,
) {
    if keys.is_empty() {
        budgets.forget(&hold);
        return;
    }
    crate::run_or_spawn(async move {
        budgets
            .settle_now(&rules, &keys, &hold, reserved, actual)
            .await
    });
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let rules = std::mem::take(&mut self.rules);
            let keys = std::mem::take(&mut self.keys);
            let hold = self.hold.clone();
            spawn_settlement(self.budgets.clone(), rules, keys, hold, self.amount, 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> CounterKey {
        CounterKey {
            budget: Arc::from("b"),
            id: id.to_owned(),
            period_start_ms: 0,
        }
    }

    #[test]
    fn periods_are_utc_calendar_periods() {
        // 2026-11-25T13:14:15Z, a Wednesday.
        let now = 1_795_612_455_000;
        let day = period_bounds(Period::Daily, now);
        assert_eq!(crate::time::rfc3339(day.0 / 1000), "2026-11-25T00:00:00Z");
        assert_eq!(
            crate::time::rfc3339(day.1.unwrap() / 1000),
            "2026-11-26T00:00:00Z"
        );
        let week = period_bounds(Period::Weekly, now);
        assert_eq!(crate::time::rfc3339(week.0 / 1000), "2026-11-23T00:00:00Z");
        assert_eq!(
            crate::time::rfc3339(week.1.unwrap() / 1000),
            "2026-11-30T00:00:00Z"
        );
        let month = period_bounds(Period::Monthly, now);
        assert_eq!(crate::time::rfc3339(month.0 / 1000), "2026-11-01T00:00:00Z");
        assert_eq!(
            crate::time::rfc3339(month.1.unwrap() / 1000),
            "2026-12-01T00:00:00Z"
        );
        // December rolls into the next year.
        let dec = period_bounds(Period::Monthly, 1_796_083_200_000 + 86_400_000);
        assert_eq!(
            crate::time::rfc3339(dec.1.unwrap() / 1000),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(period_bounds(Period::Total, now), (0, None));
    }

    #[tokio::test]
    async fn reserve_admits_below_the_limit_and_refuses_at_it() {
        let c = LocalCounters::default();
        let (a, b) = (key("a"), key("b"));
        let h = Hold::new(DEFAULT_LEASE);
        c.seed(&a, 0.5).await.unwrap();
        // Spend 0.5 + reserved 0 < 1: admitted, even though 0.5 + 0.7 goes over.
        assert_eq!(
            c.reserve(&[(&a, 1.0), (&b, 10.0)], 0.7, &h).await.unwrap(),
            Ok(())
        );
        // Now 0.5 + 0.7 >= 1: refused by the first check; nothing is reserved on `b`.
        let refused = c.reserve(&[(&b, 10.0), (&a, 1.0)], 0.1, &h).await.unwrap();
        assert_eq!(refused.unwrap_err().index, 1);
        assert_eq!(c.list("b", 0).await.unwrap()[1].1.reserved_usd, 0.7);
        // Settling a cheaper real cost frees room.
        let moved = c
            .settle(&[a.clone(), b.clone()], &h, 0.7, 0.2)
            .await
            .unwrap();
        assert_eq!(moved[0], (0.5, 0.7));
        assert_eq!(c.reserve(&[(&a, 1.0)], 0.1, &h).await.unwrap(), Ok(()));
        c.reset(&a).await.unwrap();
        let state = c.list("b", 0).await.unwrap();
        assert_eq!(state[0].1.spent_usd, 0.0);
        assert!((state[0].1.reserved_usd - 0.1).abs() < 1e-12);
    }

    fn budget(scope: Scope, limit: f64) -> BudgetConfig {
        BudgetConfig {
            name: "b".into(),
            scope,
            matches: vec!["*".into()],
            models: Vec::new(),
            period: Period::Daily,
            limit_usd: limit,
            alerts: None,
        }
    }

    #[tokio::test]
    async fn reloads_keep_spend_unless_the_budget_counts_something_else() {
        let store = Arc::new(crate::store::MemoryStore::default());
        let b = Budgets::new(
            &[budget(Scope::Key, 1.0)],
            Arc::new(LocalCounters::default()),
            store.clone(),
            store,
            Default::default(),
            Default::default(),
        );
        let s = Subject {
            key: Some("k1"),
            team: Some("t1"),
            model: "m",
            ..Subject::default()
        };
        b.reserve(&s, 0.5).await.unwrap().unwrap().settle(1.2);
        assert!(b.reserve(&s, 0.1).await.is_err(), "spent 1.2 of 1.0");
        // A higher limit applies to the spend so far.
        b.reload(&[budget(Scope::Key, 2.0)]);
        b.reserve(&s, 0.1).await.unwrap().unwrap().settle(0.9);
        assert!(b.reserve(&s, 0.1).await.is_err(), "spent 2.1 of 2.0");
        // Counting teams instead is a new budget, however it is named.
        b.reload(&[budget(Scope::Team, 2.0)]);
        let r = b.reserve(&s, 0.1).await.unwrap().unwrap();
        assert_eq!(r.amount(), 0.1);
        drop(r);
        let report = b.report().await.unwrap();
        assert_eq!(report[0].counters[0].id, "t1");
        assert_eq!(
            report[0].counters[0].reserved_usd, 0.0,
            "a dropped reservation is released"
        );
    }

    #[test]
    fn selectors_pick_the_scope_id_and_filter_models() {
        let s = Subject {
            key: Some("key_1"),
            team: Some("ml"),
            model: "gpt-4o",
            ..Subject::default()
        };
        let team = Selector::new(Scope::Team, &["m*".into()], &[]);
        assert_eq!(team.select(&s), Some("ml"));
        let other = Selector::new(Scope::Team, &["ops".into()], &[]);
        assert_eq!(other.select(&s), None);
        let user = Selector::new(Scope::User, &["*".into()], &[]);
        assert_eq!(user.select(&s), None, "no user: the rule does not apply");
        let minis = Selector::new(Scope::Global, &["*".into()], &["*-mini".into()]);
        assert_eq!(minis.select(&s), None);
        assert!(minis.counts_model("gpt-4o-mini"));
        let all = Selector::new(Scope::Global, &["*".into()], &[]);
        assert_eq!(all.select(&s), Some(GLOBAL_ID));
    }
}
