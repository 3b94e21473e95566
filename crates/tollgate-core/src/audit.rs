//! The tamper-evident audit chain: security-relevant events (key changes, config reloads, and
//! later policy denials, tool and agent calls) appended to the store, each record carrying the
//! SHA-256 of its predecessor.
//!
//! Events leave the request path through a bounded channel and are written in batches by one
//! background task. Chaining happens inside the store's write transaction, so several processes
//! (a server and the `tollgate keys` CLI) can append to one chain. What a crash can lose is the
//! channel's content: events accepted in the last few milliseconds before the batch commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::store::{AuditStore, StoreError};

/// The hash that precedes the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const CHANNEL: usize = 8192;
const BATCH: usize = 256;

/// An event to record. Fields follow the audit schema; `detail` is free-form JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub conversation_id: Option<String>,
    pub principal: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub outcome: String,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(action: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            detail: serde_json::Value::Null,
            ..Default::default()
        }
    }
}

/// A stored record: the event, its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub time_ms: i64,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub conversation_id: Option<String>,
    pub principal: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub outcome: String,
    /// JSON text, hashed exactly as stored.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// Builds the record that follows `prev_hash` at `seq`, computing its hash.
    pub fn chain(seq: i64, time_ms: i64, prev_hash: &str, ev: &AuditEvent) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            time_ms,
            request_id: ev.request_id.clone(),
            trace_id: ev.trace_id.clone(),
            conversation_id: ev.conversation_id.clone(),
            principal: ev.principal.clone(),
            action: ev.action.clone(),
            target: ev.target.clone(),
            decision: ev.decision.clone(),
            rule: ev.rule.clone(),
            outcome: ev.outcome.clone(),
            detail: ev.detail.to_string(),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// SHA-256 over the canonical encoding: a JSON array of every field but `hash`, in schema
    /// order. Arrays have no key-order ambiguity, and strings are escaped one way by serde_json.
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::json!([
            self.seq,
            self.time_ms,
            self.request_id,
            self.trace_id,
            self.conversation_id,
            self.principal,
            self.action,
            self.target,
            self.decision,
            self.rule,
            self.outcome,
            self.detail,
            self.prev_hash,
        ]);
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        crate::hex::encode(&digest)
    }
}

/// The first inconsistency `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// The record's content no longer matches its hash.
    Modified { seq: i64 },
    /// Records are missing before this one.
    Deleted { before_seq: i64 },
    /// This record does not follow its predecessor: inserted, or its predecessor replaced.
    Inserted { seq: i64 },
    /// The chain ends before the recorded head: records at the tail were deleted.
    Truncated { last_seq: i64, head_seq: i64 },
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tamper::Modified { seq } => write!(
                f,
                "record {seq} was modified (its hash does not match its content)"
            ),
            Tamper::Deleted { before_seq } => write!(
                f,
                "records were deleted before record {before_seq} (sequence gap)"
            ),
            Tamper::Inserted { seq } => write!(
                f,
                "record {seq} does not follow its predecessor (inserted or replaced)"
            ),
            Tamper::Truncated { last_seq, head_seq } => write!(
                f,
                "records after {last_seq} were deleted (the chain head says {head_seq})"
            ),
        }
    }
}

/// Walks the chain in pages and returns how many records verified, or the first tampering.
pub async fn verify(store: &dyn AuditStore) -> Result<Result<i64, Tamper>, StoreError> {
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS.to_owned();
    let mut after = 0;
    loop {
        let page = store.read_audit(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if r.seq > expected_seq {
                return Ok(Err(Tamper::Deleted { before_seq: r.seq }));
            }
            if r.compute_hash() != r.hash {
                return Ok(Err(Tamper::Modified { seq: r.seq }));
            }
            if r.prev_hash != prev_hash {
                return Ok(Err(Tamper::Inserted { seq: r.seq }));
            }
            prev_hash.clone_from(&r.hash);
            expected_seq = r.seq + 1;
        }
    }
    let last_seq = expected_seq - 1;
    if let Some((head_seq, head_hash)) = store.audit_head().await? {
        if head_seq > last_seq {
            return Ok(Err(Tamper::Truncated { last_seq, head_seq }));
        }
        if head_seq == last_seq && head_hash != prev_hash {
            return Ok(Err(Tamper::Modified { seq: last_seq }));
        }
    }
    Ok(Ok(last_seq))
}

type Msg = crate::batch::Msg<(AuditEvent, i64)>;

/// The handle layers record events through. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime. With `spill_dir`, batches the store
    /// refuses go to a local spill file there and are replayed, in order, when it is back.
    pub fn start(
        store: Arc<dyn AuditStore>,
        spill_dir: Option<&std::path::Path>,
    ) -> (AuditLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let spill = spill_dir.map(|d| crate::spill::Spill::open(d, "audit"));
        let handle = tokio::spawn(crate::batch::run(
            AuditSink(store),
            rx,
            BATCH,
            spill,
            "audit",
        ));
        (
            AuditLog {
                tx,
                dropped: Arc::default(),
            },
            handle,
        )
    }

    /// Records an event, waiting for room if the writer is behind. Never drops.
    pub async fn record(&self, ev: AuditEvent) {
        let now = crate::time::now_ms();
        if self.tx.send(Msg::Item(Box::new((ev, now)))).await.is_err() {
            tracing::error!("audit writer is gone; event not recorded");
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records without waiting (for hot paths). A full channel drops the event and counts it.
    pub fn try_record(&self, ev: AuditEvent) -> bool {
        let now = crate::time::now_ms();
        let ok = self.tx.try_send(Msg::Item(Box::new((ev, now)))).is_ok();
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Events that could not be queued.
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

struct AuditSink(Arc<dyn AuditStore>);

#[async_trait::async_trait]
impl crate::batch::Sink<(AuditEvent, i64)> for AuditSink {
    async fn append(&self, items: &[(AuditEvent, i64)]) -> crate::store::StoreResult<()> {
        self.0.append_audit(items).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field() {
        let ev = AuditEvent {
            principal: Some("p".into()),
            detail: serde_json::json!({"a": 1}),
            ..AuditEvent::new("key.create", "success")
        };
        let r = AuditRecord::chain(1, 1000, GENESIS, &ev);
        assert_eq!(r.hash, r.compute_hash());
        let mut changed = r.clone();
        changed.principal = Some("q".into());
        assert_ne!(changed.compute_hash(), r.hash);
        let mut changed = r.clone();
        changed.detail = "{\"a\":2}".into();
        assert_ne!(changed.compute_hash(), r.hash);
        let mut changed = r.clone();
        changed.seq = 2;
        assert_ne!(changed.compute_hash(), r.hash);
    }
}

/// A field condition of an audit search: equal, or (written with a trailing `*`) starting with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldMatch {
    Exact(String),
    Prefix(String),
}

impl FieldMatch {
    /// `mcp.*` is a prefix; anything else is exact.
    pub fn parse(s: &str) -> FieldMatch {
        match s.strip_suffix('*') {
            Some(p) => FieldMatch::Prefix(p.to_owned()),
            None => FieldMatch::Exact(s.to_owned()),
        }
    }

    pub fn matches(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (FieldMatch::Exact(e), Some(v)) => e == v,
            (FieldMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (_, None) => false,
        }
    }

    /// SQLite's `GLOB` pattern for a prefix (case-sensitive, like the other engines):
    /// `*`, `?` and `[` stand for themselves in brackets.
    pub fn glob_pattern(prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            match c {
                '*' | '?' | '[' => {
                    out.push('[');
                    out.push(c);
                    out.push(']');
                }
                c => out.push(c),
            }
        }
        out.push('*');
        out
    }

    /// PostgreSQL's `LIKE` pattern for a prefix (with `\` escaping `%`, `_` and itself).
    pub fn like_pattern(prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            if matches!(c, '%' | '_' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('%');
        out
    }
}

/// An audit search, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub action: Option<FieldMatch>,
    pub principal: Option<FieldMatch>,
    pub target: Option<FieldMatch>,
    pub decision: Option<String>,
    pub outcome: Option<String>,
    pub conversation: Option<String>,
    pub request_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Records with `seq < before` (keyset pagination, newest first).
    pub before: Option<i64>,
    pub limit: u32,
}

impl AuditQuery {
    /// Whether `r` is one of the records this query asks for (the memory engine, and tests).
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let eq =
            |want: &Option<String>, v: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == v);
        let like =
            |want: &Option<FieldMatch>, v: Option<&str>| want.as_ref().is_none_or(|m| m.matches(v));
        like(&self.action, Some(&r.action))
            && like(&self.principal, r.principal.as_deref())
            && like(&self.target, r.target.as_deref())
            && eq(&self.decision, r.decision.as_deref())
            && eq(&self.outcome, Some(&r.outcome))
            && eq(&self.conversation, r.conversation_id.as_deref())
            && eq(&self.request_id, r.request_id.as_deref())
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_ms < t)
            && self.before.is_none_or(|b| r.seq < b)
    }

    /// The SQL condition for this query and its binds in order: SQLite's (`?`, `GLOB`) or,
    /// with `postgres`, PostgreSQL's (`$1`..., `LIKE`). Column names are fixed here; values
    /// are bound.
    pub fn sql_where(&self, postgres: bool) -> (String, Vec<SqlBind>) {
        let numbered = postgres;
        let first = 1;
        let mut conds = Vec::new();
        let mut binds = Vec::new();
        let mut next = first;
        let mut ph = || {
            let p = if numbered {
                format!("${next}")
            } else {
                "?".to_owned()
            };
            next += 1;
            p
        };
        for (col, m) in [
            ("action", &self.action),
            ("principal", &self.principal),
            ("target", &self.target),
        ] {
            match m {
                Some(FieldMatch::Exact(v)) => {
                    conds.push(format!("{col} = {}", ph()));
                    binds.push(SqlBind::Text(v.clone()));
                }
                Some(FieldMatch::Prefix(p)) if postgres => {
                    conds.push(format!("{col} LIKE {} ESCAPE '\\'", ph()));
                    binds.push(SqlBind::Text(FieldMatch::like_pattern(p)));
                }
                Some(FieldMatch::Prefix(p)) => {
                    conds.push(format!("{col} GLOB {}", ph()));
                    binds.push(SqlBind::Text(FieldMatch::glob_pattern(p)));
                }
                None => {}
            }
        }
        for (col, v) in [
            ("decision", &self.decision),
            ("outcome", &self.outcome),
            ("conversation_id", &self.conversation),
            ("request_id", &self.request_id),
        ] {
            if let Some(v) = v {
                conds.push(format!("{col} = {}", ph()));
                binds.push(SqlBind::Text(v.clone()));
            }
        }
        for (cond, v) in [
            ("time_ms >=", self.since_ms),
            ("time_ms <", self.until_ms),
            ("seq <", self.before),
        ] {
            if let Some(v) = v {
                conds.push(format!("{cond} {}", ph()));
                binds.push(SqlBind::Int(v));
            }
        }
        let sql = if conds.is_empty() {
            "TRUE".to_owned()
        } else {
            conds.join(" AND ")
        };
        (sql, binds)
    }
}

/// A value bound into a search's SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlBind {
    Text(String),
    Int(i64),
}
