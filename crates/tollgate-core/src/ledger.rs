//! The spend ledger: one record per model request (who, what, where it was served, how many
//! attempts, tokens, cost, latency, outcome), written in batches off the request path.
//!
//! Records leave the request path through a bounded channel; one writer task appends them in
//! batches. A full channel drops the record and counts it (`dropped`), so a stalled store never
//! stalls requests. What a crash can lose is what sits in the channel and the batch being
//! written: at most the channel's capacity, in practice the last few milliseconds of traffic.
//! Graceful shutdown flushes everything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::store::LedgerStore;

const CHANNEL: usize = 16_384;
const BATCH: usize = 512;

/// One model request as the ledger keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerRecord {
    /// Assigned by the store; 0 before it is written.
    #[serde(default)]
    pub id: i64,
    pub time_ms: i64,
    pub request_id: String,
    pub trace_id: String,
    pub conversation_id: Option<String>,
    pub key_id: Option<String>,
    /// The principal's label (key id, `jwt:sub` or `master`).
    pub principal: String,
    pub user: Option<String>,
    pub team: Option<String>,
    /// The principal's agent (JWT principals with an agent claim).
    #[serde(default)]
    pub agent: Option<String>,
    /// `chat`, `embeddings`, `responses` or `messages`.
    pub endpoint: String,
    /// The model name the client asked for.
    pub model: String,
    /// The name that served: the requested one, or a fallback's.
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub upstream_model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache (part of `prompt_tokens`).
    pub cached_tokens: u64,
    /// Reasoning tokens (part of `completion_tokens`).
    pub reasoning_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (part of `prompt_tokens`).
    #[serde(default)]
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    /// What the answer cost when it was first bought: a cache hit's cost not spent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost_saved_usd: f64,
    /// The cost is an estimate: usage was not reported (a stream cut short) or no price is
    /// known for the model.
    pub estimated: bool,
    /// The price table version that priced the record.
    pub price_version: Option<String>,
    pub latency_ms: u64,
    /// Time to the first byte of the answer (streams: the first event).
    pub ttft_ms: Option<u64>,
    /// The HTTP status the client got (200 for a stream that started).
    pub status: u16,
    /// `ok`, `error`, `stream_failed` or `cancelled`.
    pub outcome: String,
    pub streamed: bool,
    pub cache_hit: bool,
    /// A semantic cache hit: the similarity of the prompt to the one whose answer was served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_similarity: Option<f32>,
    /// Upstream calls made for the request, retries and fallbacks included.
    pub attempts: u32,
    /// Why a fallback group served: `error`, `context_window` or `content_policy`.
    pub fallback: Option<String>,
    /// What translating between the client's API and the provider's could not carry: request
    /// fields by their JSON path, response fields prefixed `response.`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translation_loss: Vec<String>,
}

/// Which records to read, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    /// Records with `id > after` (keyset pagination).
    pub after: i64,
    pub limit: u32,
    /// Only this conversation's records.
    pub conversation: Option<String>,
}

impl Default for LedgerQuery {
    fn default() -> Self {
        LedgerQuery {
            since_ms: 0,
            until_ms: i64::MAX,
            after: 0,
            limit: 1000,
            conversation: None,
        }
    }
}

/// What spend is grouped by (or filtered on) in reports and budget accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Key,
    User,
    Team,
    /// The model name the client asked for.
    Model,
    Provider,
    Conversation,
    Agent,
    /// The UTC calendar day (`2026-11-24`).
    Day,
}

impl Dimension {
    pub fn parse(s: &str) -> Option<Dimension> {
        Some(match s {
            "key" => Dimension::Key,
            "user" => Dimension::User,
            "team" => Dimension::Team,
            "model" => Dimension::Model,
            "provider" => Dimension::Provider,
            "conversation" => Dimension::Conversation,
            "agent" => Dimension::Agent,
            "day" => Dimension::Day,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Key => "key",
            Dimension::User => "user",
            Dimension::Team => "team",
            Dimension::Model => "model",
            Dimension::Provider => "provider",
            Dimension::Conversation => "conversation",
            Dimension::Agent => "agent",
            Dimension::Day => "day",
        }
    }

    /// The record's value for this dimension.
    pub fn of(self, r: &LedgerRecord) -> Option<String> {
        match self {
            Dimension::Key => r.key_id.clone(),
            Dimension::User => r.user.clone(),
            Dimension::Team => r.team.clone(),
            Dimension::Model => Some(r.model.clone()),
            Dimension::Provider => r.provider.clone(),
            Dimension::Conversation => r.conversation_id.clone(),
            Dimension::Agent => r.agent.clone(),
            Dimension::Day => Some(utc_day(r.time_ms)),
        }
    }
}

/// `2026-11-24` for a unix-millisecond time.
pub fn utc_day(time_ms: i64) -> String {
    crate::time::rfc3339(time_ms.div_euclid(1000))
        .get(..10)
        .unwrap_or_default()
        .to_owned()
}

/// Spend over a time range, grouped by one dimension, optionally only where another equals a
/// value. Rows come most expensive first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    /// `None`: one row with the total.
    pub group_by: Option<Dimension>,
    pub filter: Option<(Dimension, String)>,
    pub limit: u32,
}

impl Default for SpendQuery {
    fn default() -> Self {
        SpendQuery {
            since_ms: 0,
            until_ms: i64::MAX,
            group_by: None,
            filter: None,
            limit: 1000,
        }
    }
}

/// One group's spend. `group` is `None` for records without a value (e.g. no team).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpendRow {
    pub group: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// Groups records the way the stores' `spend` does (the memory engine, and tests' reference).
pub fn aggregate<'a>(
    records: impl Iterator<Item = &'a LedgerRecord>,
    q: &SpendQuery,
) -> Vec<SpendRow> {
    let mut groups: std::collections::HashMap<Option<String>, SpendRow> =
        std::collections::HashMap::new();
    for r in records {
        if r.time_ms < q.since_ms || r.time_ms >= q.until_ms {
            continue;
        }
        if let Some((dim, value)) = &q.filter {
            if dim.of(r).as_deref() != Some(value.as_str()) {
                continue;
            }
        }
        let group = q.group_by.and_then(|d| d.of(r));
        let row = groups.entry(group.clone()).or_insert_with(|| SpendRow {
            group,
            ..SpendRow::default()
        });
        row.requests += 1;
        row.prompt_tokens += r.prompt_tokens;
        row.completion_tokens += r.completion_tokens;
        row.cost_usd += r.cost_usd;
    }
    let mut rows: Vec<SpendRow> = groups.into_values().collect();
    sort_rows(&mut rows);
    rows.truncate(q.limit.clamp(1, 100_000) as usize);
    rows
}

/// Most expensive first; ties by group so output is stable.
pub fn sort_rows(rows: &mut [SpendRow]) {
    rows.sort_by(|a, b| {
        b.cost_usd
            .total_cmp(&a.cost_usd)
            .then_with(|| a.group.cmp(&b.group))
    });
}

type Msg = crate::batch::Msg<LedgerRecord>;

/// The handle layers record through. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Ledger {
    /// Starts the writer task on the current runtime. With `spill_dir`, batches the store
    /// refuses go to a local spill file there and are replayed, in order, when it is back.
    pub fn start(store: Arc<dyn LedgerStore>, spill_dir: Option<&std::path::Path>) -> Ledger {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let spill = spill_dir.map(|d| crate::spill::Spill::open(d, "ledger"));
        tokio::spawn(crate::batch::run(
            LedgerSink(store),
            rx,
            BATCH,
            spill,
            "ledger",
        ));
        Ledger {
            tx,
            dropped: Arc::default(),
        }
    }

    /// Queues a record without waiting. A full queue drops it and counts it.
    pub fn record(&self, r: LedgerRecord) {
        if self.tx.try_send(Msg::Item(Box::new(r))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "ledger queue full: records dropped");
            }
        }
    }

    /// Records that could not be queued.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything recorded before this call is committed.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

struct LedgerSink(Arc<dyn LedgerStore>);

#[async_trait::async_trait]
impl crate::batch::Sink<LedgerRecord> for LedgerSink {
    async fn append(&self, items: &[LedgerRecord]) -> crate::store::StoreResult<()> {
        self.0.append_ledger(items).await
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Upper bounds (exclusive, ms) of the latency classes the ledger keeps per record for the
/// console's percentiles; the last class holds everything from the last bound up.
pub const LATENCY_BOUNDS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];
/// Latency classes: one per bound, and one above them.
pub const LATENCY_CLASSES: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The latency class of `ms` (stored with each record).
pub fn latency_class(ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms < *b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Whether a record counts as an error in the console's error rate: the request failed or its
/// stream broke (a client cancelling is not the gateway's error).
pub fn failed(r: &LedgerRecord) -> bool {
    matches!(r.outcome.as_str(), "error" | "stream_failed")
}

/// Requests over time: `[since_ms, until_ms)` cut into buckets of `bucket_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
}

/// One bucket's totals, and its latencies by class.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatsBucket {
    /// The bucket's number from `since_ms`.
    pub index: i64,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency: [u64; LATENCY_CLASSES],
}

impl StatsBucket {
    pub fn add(&mut self, other: &StatsBucket) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd += other.cost_usd;
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
    }

    /// The latency at quantile `q` (0-1), interpolated within its class; `None` without
    /// requests. The top class is reported at its lower bound.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (class, n) in self.latency.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lo = if class == 0 {
                    0
                } else {
                    LATENCY_BOUNDS_MS[class - 1]
                };
                let Some(hi) = LATENCY_BOUNDS_MS.get(class) else {
                    return Some(lo as f64);
                };
                let within = (rank - seen as f64) / *n as f64;
                return Some(lo as f64 + within * (*hi - lo) as f64);
            }
            seen += n;
        }
        None
    }
}

/// [`StatsBucket`]s from records in memory (the memory engine; the SQL engines group in SQL).
pub fn stats_of<'a>(
    records: impl Iterator<Item = &'a LedgerRecord>,
    q: &StatsQuery,
) -> Vec<StatsBucket> {
    let mut buckets: std::collections::BTreeMap<i64, StatsBucket> = Default::default();
    for r in records.filter(|r| r.time_ms >= q.since_ms && r.time_ms < q.until_ms) {
        let index = (r.time_ms - q.since_ms) / q.bucket_ms.max(1);
        let b = buckets.entry(index).or_insert_with(|| StatsBucket {
            index,
            ..StatsBucket::default()
        });
        b.requests += 1;
        b.errors += u64::from(failed(r));
        b.prompt_tokens += r.prompt_tokens;
        b.completion_tokens += r.completion_tokens;
        b.cost_usd += r.cost_usd;
        b.latency[latency_class(r.latency_ms)] += 1;
    }
    buckets.into_values().collect()
}

/// One SQL row of a stats query: bucket, latency class, requests, errors, prompt and
/// completion tokens, cost.
pub type StatsRow = (i64, Option<i64>, i64, i64, i64, i64, f64);

/// Folds SQL rows into buckets.
pub fn stats_from_rows(rows: Vec<StatsRow>) -> Vec<StatsBucket> {
    let mut buckets: std::collections::BTreeMap<i64, StatsBucket> = Default::default();
    for (index, class, n, errors, p, c, cost) in rows {
        let b = buckets.entry(index).or_insert_with(|| StatsBucket {
            index,
            ..StatsBucket::default()
        });
        b.requests += n.max(0) as u64;
        b.errors += errors.max(0) as u64;
        b.prompt_tokens += p.max(0) as u64;
        b.completion_tokens += c.max(0) as u64;
        b.cost_usd += cost;
        // Records from before the column existed have no class: count them, no latency.
        if let Some(class) = class {
            let i = (class.max(0) as usize).min(LATENCY_CLASSES - 1);
            b.latency[i] += n.max(0) as u64;
        }
    }
    buckets.into_values().collect()
}

/// The hourly rollup (`ledger_hourly`): the SQL engines keep, in the same transaction as each
/// append, per hour and (key, user, team, model, provider) the requests, errors, tokens, cost
/// and latency classes, so reports over long ranges read thousands of rows, not millions.
pub const HOUR_MS: i64 = 3_600_000;

/// Whether reports grouped and filtered by these dimensions can read the rollup (not by
/// conversation or agent, which it does not keep; not for an empty filter value, which the
/// rollup cannot tell from a missing one).
pub fn rollup_serves(q: &SpendQuery) -> bool {
    let kept = |d: Dimension| !matches!(d, Dimension::Conversation | Dimension::Agent);
    q.group_by.is_none_or(kept)
        && q.filter
            .as_ref()
            .is_none_or(|(d, v)| kept(*d) && !v.is_empty())
}

/// A range cut at whole hours: the raw rows before the first whole hour, the whole hours (read
/// from the rollup), and the raw rows after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourSplit {
    pub head: Option<(i64, i64)>,
    pub hours: Option<(i64, i64)>,
    pub tail: Option<(i64, i64)>,
}

pub fn split_hours(since_ms: i64, until_ms: i64) -> HourSplit {
    let up = |t: i64| {
        t.checked_add(HOUR_MS - 1)
            .map_or(i64::MAX, |v| v.div_euclid(HOUR_MS) * HOUR_MS)
    };
    let a = up(since_ms);
    let b = if until_ms == i64::MAX {
        i64::MAX
    } else {
        until_ms.div_euclid(HOUR_MS) * HOUR_MS
    };
    if a >= b {
        return HourSplit {
            head: (since_ms < until_ms).then_some((since_ms, until_ms)),
            hours: None,
            tail: None,
        };
    }
    HourSplit {
        head: (since_ms < a).then_some((since_ms, a)),
        hours: Some((a, b)),
        tail: (b < until_ms).then_some((b, until_ms)),
    }
}

/// Adds report rows of the same query over adjacent ranges, group by group, then orders and
/// cuts them as one report.
pub fn merge_spend(parts: Vec<Vec<SpendRow>>, limit: u32) -> Vec<SpendRow> {
    let mut groups: std::collections::HashMap<Option<String>, SpendRow> = Default::default();
    for row in parts.into_iter().flatten() {
        let g = groups.entry(row.group.clone()).or_insert_with(|| SpendRow {
            group: row.group.clone(),
            ..SpendRow::default()
        });
        g.requests += row.requests;
        g.prompt_tokens += row.prompt_tokens;
        g.completion_tokens += row.completion_tokens;
        g.cost_usd += row.cost_usd;
    }
    let mut rows: Vec<SpendRow> = groups.into_values().filter(|r| r.requests > 0).collect();
    sort_rows(&mut rows);
    rows.truncate(limit.clamp(1, 100_000) as usize);
    rows
}

/// One rollup row's increments, keyed by hour and dimensions (`""` for a missing one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourlyDelta {
    pub requests: i64,
    pub failed: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub latency: [i64; LATENCY_CLASSES],
}

/// The key of a rollup row: hour, key, user, team, model, provider.
pub type HourlyKey = (i64, String, String, String, String, String);

/// A batch of records folded into rollup increments.
pub fn hourly_deltas(records: &[LedgerRecord]) -> Vec<(HourlyKey, HourlyDelta)> {
    let mut out: std::collections::HashMap<HourlyKey, HourlyDelta> = Default::default();
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    for r in records {
        let key = (
            r.time_ms.div_euclid(HOUR_MS) * HOUR_MS,
            s(&r.key_id),
            s(&r.user),
            s(&r.team),
            r.model.clone(),
            s(&r.provider),
        );
        let d = out.entry(key).or_default();
        d.requests += 1;
        d.failed += i64::from(failed(r));
        d.prompt_tokens += i64::try_from(r.prompt_tokens).unwrap_or(i64::MAX);
        d.completion_tokens += i64::try_from(r.completion_tokens).unwrap_or(i64::MAX);
        d.cost_usd += r.cost_usd;
        d.latency[latency_class(r.latency_ms)] += 1;
    }
    // In key order: concurrent appends (replicas sharing PostgreSQL) lock rows in one order.
    let mut out: Vec<_> = out.into_iter().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The conversations active in `[since_ms, until_ms)` (a model call in it, by their first and
/// last), most expensive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: u32,
}

/// One conversation's model calls, all of them (not only those in the queried range).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conversation_id: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub requests: i64,
    pub failed: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

impl ConversationSummary {
    fn add(&mut self, r: &LedgerRecord) {
        if self.requests == 0 {
            self.first_ms = r.time_ms;
            self.last_ms = r.time_ms;
        }
        self.first_ms = self.first_ms.min(r.time_ms);
        self.last_ms = self.last_ms.max(r.time_ms);
        self.requests += 1;
        self.failed += i64::from(failed(r));
        self.prompt_tokens += i64::try_from(r.prompt_tokens).unwrap_or(i64::MAX);
        self.completion_tokens += i64::try_from(r.completion_tokens).unwrap_or(i64::MAX);
        self.cost_usd += r.cost_usd;
    }
}

/// A batch of records folded per conversation (records without one are left out): the
/// increments of the conversation rollup, or (over every record) the conversations themselves.
pub fn conversation_totals<'a>(
    records: impl IntoIterator<Item = &'a LedgerRecord>,
) -> Vec<ConversationSummary> {
    let mut out: std::collections::HashMap<&str, ConversationSummary> = Default::default();
    for r in records {
        let Some(id) = r.conversation_id.as_deref() else {
            continue;
        };
        out.entry(id)
            .or_insert_with(|| ConversationSummary {
                conversation_id: id.to_owned(),
                ..Default::default()
            })
            .add(r);
    }
    // In id order: concurrent appends lock rollup rows in one order.
    let mut out: Vec<_> = out.into_values().collect();
    out.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
    out
}

/// The conversations a query lists, from their totals (the memory engine, and tests' reference).
pub fn list_conversations(
    mut all: Vec<ConversationSummary>,
    q: &ConversationQuery,
) -> Vec<ConversationSummary> {
    all.retain(|c| c.last_ms >= q.since_ms && c.first_ms < q.until_ms);
    all.sort_by(|a, b| {
        b.cost_usd
            .total_cmp(&a.cost_usd)
            .then_with(|| a.conversation_id.cmp(&b.conversation_id))
    });
    all.truncate(q.limit as usize);
    all
}

/// The rollup's latency columns, `l0` to `l15`.
pub fn latency_columns() -> Vec<String> {
    (0..LATENCY_CLASSES).map(|i| format!("l{i}")).collect()
}

impl LedgerQuery {
    /// The SQL condition for this query, naming only the bounds it sets (so the engine can pick
    /// the index that fits: the id for plain paging, the conversation or the time otherwise),
    /// and its binds in order: `after`, then `since_ms` and `until_ms` if set, then the
    /// conversation if set. `$n` placeholders with `numbered`, else `?`.
    pub fn sql_where(&self, numbered: bool) -> (String, Vec<crate::audit::SqlBind>) {
        use crate::audit::SqlBind;
        let mut n = 0;
        let mut ph = || {
            n += 1;
            if numbered {
                format!("${n}")
            } else {
                "?".to_owned()
            }
        };
        let mut conds = vec![format!("id > {}", ph())];
        let mut binds = vec![SqlBind::Int(self.after)];
        if self.since_ms > 0 {
            conds.push(format!("time_ms >= {}", ph()));
            binds.push(SqlBind::Int(self.since_ms));
        }
        if self.until_ms < i64::MAX {
            conds.push(format!("time_ms < {}", ph()));
            binds.push(SqlBind::Int(self.until_ms));
        }
        if let Some(c) = &self.conversation {
            conds.push(format!("conversation_id = {}", ph()));
            binds.push(SqlBind::Text(c.clone()));
        }
        (conds.join(" AND "), binds)
    }
}

#[cfg(test)]
mod rollup_tests {
    use super::*;

    #[test]
    fn ranges_split_at_whole_hours() {
        const H: i64 = HOUR_MS;
        assert_eq!(
            split_hours(0, i64::MAX),
            HourSplit {
                head: None,
                hours: Some((0, i64::MAX)),
                tail: None
            }
        );
        assert_eq!(
            split_hours(10, 3 * H + 5),
            HourSplit {
                head: Some((10, H)),
                hours: Some((H, 3 * H)),
                tail: Some((3 * H, 3 * H + 5))
            }
        );
        // Within one hour: raw rows only.
        assert_eq!(
            split_hours(H + 1, 2 * H - 1),
            HourSplit {
                head: Some((H + 1, 2 * H - 1)),
                hours: None,
                tail: None
            }
        );
        assert_eq!(split_hours(5, 5).head, None);
    }
}
