//! Durable state behind one trait per concern, with an engine per backend (SQLite for the
//! embedded default, PostgreSQL for several replicas, memory for tests and demos).
//!
//! Every operation is atomic on its own. Nothing here runs on the request hot path: the key
//! cache reads the store on change, never per request.

/// Appends ledger records inside the open transaction `$tx`, with the hourly and conversation
/// rollups in the same transaction (reports never see one without the other): up to
/// [`ledger_sql::MAX_ROWS_PER_INSERT`] rows per INSERT ([`ledger_sql::insert_chunks`]), one
/// round trip per chunk rather than per row. `$flag` is the integer type the engine stores the
/// `failed` and `latency_class` columns as. Written once for both SQL engines (a macro: their
/// sqlx query types differ).
macro_rules! append_ledger {
    ($tx:expr, $records:expr, $dialect:expr, $flag:ty) => {{
        let mut rest: &[crate::ledger::LedgerRecord] = $records;
        for size in crate::store::ledger_sql::insert_chunks(rest.len()) {
            let Some((chunk, tail)) = rest.split_at_checked(size) else {
                break;
            };
            rest = tail;
            let sql = crate::store::ledger_sql::insert_rows($dialect, size);
            let mut q = sqlx::query(&sql);
            for r in chunk {
                let json =
                    serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                q = q
                    .bind(r.time_ms)
                    .bind(&r.key_id)
                    .bind(&r.user)
                    .bind(&r.team)
                    .bind(&r.model)
                    .bind(&r.provider)
                    .bind(r.cost_usd)
                    .bind(&r.conversation_id)
                    .bind(&r.agent)
                    .bind(i64::try_from(r.prompt_tokens).unwrap_or(i64::MAX))
                    .bind(i64::try_from(r.completion_tokens).unwrap_or(i64::MAX))
                    .bind(json)
                    .bind(<$flag>::from(crate::ledger::failed(r)))
                    .bind(crate::ledger::latency_class(r.latency_ms) as $flag);
            }
            q.execute(&mut *$tx).await.map_err(unavailable)?;
        }
        let upsert = crate::store::ledger_sql::hourly_upsert($dialect);
        for ((hour, key, user, team, model, provider), d) in crate::ledger::hourly_deltas($records)
        {
            let mut q = sqlx::query(&upsert)
                .bind(hour)
                .bind(key)
                .bind(user)
                .bind(team)
                .bind(model)
                .bind(provider)
                .bind(d.requests)
                .bind(d.failed)
                .bind(d.prompt_tokens)
                .bind(d.completion_tokens)
                .bind(d.cost_usd);
            for n in d.latency {
                q = q.bind(n);
            }
            q.execute(&mut *$tx).await.map_err(unavailable)?;
        }
        let upsert = crate::store::ledger_sql::conversation_upsert($dialect);
        for c in crate::ledger::conversation_totals($records) {
            sqlx::query(&upsert)
                .bind(c.conversation_id)
                .bind(c.first_ms)
                .bind(c.last_ms)
                .bind(c.requests)
                .bind(c.failed)
                .bind(c.prompt_tokens)
                .bind(c.completion_tokens)
                .bind(c.cost_usd)
                .execute(&mut *$tx)
                .await
                .map_err(unavailable)?;
        }
    }};
}

mod ledger_sql;
mod memory;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditRecord};
use crate::config::DatabaseUrl;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => {
                crate::error::ApiError::new(crate::error::ErrorKind::Conflict, m)
            }
            // A store that cannot be reached is a 503 the client may retry, not a bug.
            StoreError::Unavailable(_) => {
                crate::error::ApiError::new(crate::error::ErrorKind::Unavailable, e.to_string())
                    .code("store_unavailable")
            }
            other => crate::error::ApiError::internal(other.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A SHA-256 digest of a key secret.
pub type SecretHash = [u8; 32];

/// A virtual key as stored. The secret is never part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    /// Glob patterns (`*`, `?`) over public model names; empty means every model.
    pub models: Vec<String>,
    pub expires_at: Option<i64>,
    pub enabled: bool,
    pub revoked_at: Option<i64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The key's own spend and rate limits, on top of the configured ones.
    #[serde(default)]
    pub limits: Limits,
    pub secret_prefix: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The own limits of a key, user or team, enforced like a `budgets[]` / `rate_limits[]` rule of
/// that scope matching only that id, on top of every configured rule that covers it. Unset: no
/// limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Spend limit in USD per `budget_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// When the budget starts over (calendar periods in UTC); `monthly` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<crate::config::Period>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.budget_usd.is_none() && self.rpm.is_none() && self.tpm.is_none()
    }

    /// The budget's period: `monthly` unless set.
    pub fn period(&self) -> crate::config::Period {
        self.budget_period.unwrap_or(crate::config::Period::Monthly)
    }

    /// A 400 naming the first problem with these limits.
    pub fn check(&self) -> Result<(), crate::error::ApiError> {
        match self.problems().into_iter().next() {
            Some((field, problem)) => {
                Err(crate::error::ApiError::invalid(format!("{field} {problem}")).param(field))
            }
            None => Ok(()),
        }
    }

    /// Every problem with these limits, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self
            .budget_usd
            .is_some_and(|b| !(b.is_finite() && b > 0.0 && b <= 1e12))
        {
            out.push(("limits.budget_usd", "must be a number of USD above 0"));
        }
        if self.budget_period.is_some() && self.budget_usd.is_none() {
            out.push(("limits.budget_period", "needs limits.budget_usd"));
        }
        if self.rpm == Some(0) {
            out.push(("limits.rpm", "must be at least 1"));
        }
        if self.tpm == Some(0) {
            out.push(("limits.tpm", "must be at least 1"));
        }
        out
    }
}

/// One secret of a key; several exist during a rotation's grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySecret {
    pub hash: SecretHash,
    pub expires_at: Option<i64>,
}

/// A partial update: `None` leaves a field alone; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub user: Option<Option<String>>,
    pub team: Option<Option<String>>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<Option<i64>>,
    pub enabled: Option<bool>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Replaces the key's own limits as a whole.
    pub limits: Option<Limits>,
}

impl KeyUpdate {
    /// Applies the update to a stored key, as of `now` (unix seconds).
    pub fn apply(&self, key: &mut KeyRecord, now: i64) {
        if let Some(v) = &self.name {
            key.name = v.clone();
        }
        if let Some(v) = &self.user {
            key.user = v.clone();
        }
        if let Some(v) = &self.team {
            key.team = v.clone();
        }
        if let Some(v) = &self.models {
            key.models = v.clone();
        }
        if let Some(v) = self.expires_at {
            key.expires_at = v;
        }
        if let Some(v) = self.enabled {
            key.enabled = v;
        }
        if let Some(v) = &self.metadata {
            key.metadata = v.clone();
        }
        if let Some(v) = &self.limits {
            key.limits = v.clone();
        }
        key.updated_at = now;
    }
}

/// A key's limits as the `keys.limits` column holds them: JSON, or NULL for none.
fn limits_json(l: &Limits) -> Option<String> {
    (!l.is_empty())
        .then(|| serde_json::to_string(l).ok())
        .flatten()
}

fn limits_from_json(v: Option<&str>) -> StoreResult<Limits> {
    v.map_or(Ok(Limits::default()), |v| {
        serde_json::from_str(v).map_err(|e| StoreError::Corrupt(format!("keys.limits: {e}")))
    })
}

/// Keyset pagination over keys ordered by `(created_at, id)`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Return keys after this id.
    pub after: Option<String>,
    pub limit: u32,
}

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts a new key with its first secret.
    async fn insert_key(&self, key: &KeyRecord, secret: &KeySecret) -> StoreResult<()>;
    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    async fn list_keys(&self, page: &Page) -> StoreResult<Vec<KeyRecord>>;
    async fn update_key(
        &self,
        id: &str,
        update: &KeyUpdate,
        now: i64,
    ) -> StoreResult<Option<KeyRecord>>;
    /// Marks a key revoked and drops its secrets. Revoking twice is a conflict.
    async fn revoke_key(&self, id: &str, now: i64) -> StoreResult<Option<KeyRecord>>;
    /// Adds `new_secret`, caps every existing secret of the key at `old_expire_at`, and records
    /// the new display prefix. Revoked keys cannot be rotated (conflict).
    async fn rotate_key(
        &self,
        id: &str,
        new_secret: &KeySecret,
        new_prefix: &str,
        old_expire_at: i64,
        now: i64,
    ) -> StoreResult<Option<KeyRecord>>;
    /// Every non-revoked key with its unexpired secrets, for the in-memory cache.
    async fn load_active(&self, now: i64) -> StoreResult<Vec<(KeyRecord, Vec<KeySecret>)>>;
    /// A counter that grows on every key change, so other processes' writes are noticed.
    async fn change_seq(&self) -> StoreResult<i64>;
}

/// A team: a first-class record keys and users belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamRecord {
    pub id: String,
    pub name: String,
    /// The tenant the team (and so its keys) belongs to.
    pub tenant: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub roles: Vec<String>,
    /// Spend and rate limits of its own, shared by all its keys.
    #[serde(default)]
    pub limits: Limits,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A user, optionally in a team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub team: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub roles: Vec<String>,
    /// Spend and rate limits of its own, shared by all its keys.
    #[serde(default)]
    pub limits: Limits,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Teams, users and their role assignments. Every change bumps the key change counter, since
/// principals carry roles.
#[async_trait]
pub trait DirectoryStore: Send + Sync + 'static {
    /// Inserts a team; an existing id is a conflict.
    async fn insert_team(&self, team: &TeamRecord) -> StoreResult<()>;
    /// Replaces a team's fields and roles; false if it does not exist.
    async fn replace_team(&self, team: &TeamRecord) -> StoreResult<bool>;
    async fn list_teams(&self) -> StoreResult<Vec<TeamRecord>>;
    /// Deletes a team; a conflict while users or live keys refer to it.
    async fn delete_team(&self, id: &str) -> StoreResult<bool>;
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn replace_user(&self, user: &UserRecord) -> StoreResult<bool>;
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;
    /// Deletes a user; a conflict while live keys refer to it.
    async fn delete_user(&self, id: &str) -> StoreResult<bool>;
}

/// The audit chain's storage. Appends are atomic and chain onto whatever head the store has at
/// that moment, so concurrent writers (processes) keep one chain.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends events (with their times in unix ms) after the current head, in order.
    async fn append_audit(&self, events: &[(AuditEvent, i64)]) -> StoreResult<()>;
    /// Records with `seq > after`, in order, at most `limit`.
    async fn read_audit(&self, after: i64, limit: u32) -> StoreResult<Vec<AuditRecord>>;
    /// One conversation's records, in order, at most `limit`.
    async fn conversation_audit(
        &self,
        conversation: &str,
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// The head recorded by the last append: `(seq, hash)`.
    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>>;
    /// Records matching a search, newest first, at most `q.limit` (1-1000).
    async fn search_audit(&self, q: &crate::audit::AuditQuery) -> StoreResult<Vec<AuditRecord>>;
}

/// The spend ledger's storage: appends in batches, reads in time order.
#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    async fn append_ledger(&self, records: &[crate::ledger::LedgerRecord]) -> StoreResult<()>;
    async fn read_ledger(
        &self,
        q: &crate::ledger::LedgerQuery,
    ) -> StoreResult<Vec<crate::ledger::LedgerRecord>>;
    /// Spend grouped by a dimension, most expensive first.
    async fn spend(
        &self,
        q: &crate::ledger::SpendQuery,
    ) -> StoreResult<Vec<crate::ledger::SpendRow>>;
    /// Requests, errors, tokens, cost and latency classes per time bucket (the console).
    async fn ledger_stats(
        &self,
        q: &crate::ledger::StatsQuery,
    ) -> StoreResult<Vec<crate::ledger::StatsBucket>>;
    /// The conversations with a model call in a range, with their totals, most expensive first.
    async fn conversations(
        &self,
        q: &crate::ledger::ConversationQuery,
    ) -> StoreResult<Vec<crate::ledger::ConversationSummary>>;
}

/// One semantic-cache entry as stored (and as published to the other replicas).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SemanticRow {
    pub id: String,
    /// The hex digest of what must match exactly (tenant, group, embedder, everything in the
    /// request but its last user turn).
    pub partition: String,
    pub route: String,
    /// The unit embedding of the last user turn.
    pub vector: Vec<f32>,
    /// The cached answer and what it cost, as JSON.
    pub entry: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// The semantic cache's persistence: entries survive restarts (the index is rebuilt from them).
#[async_trait]
pub trait SemanticStore: Send + Sync + 'static {
    async fn put_semantic(&self, row: &SemanticRow) -> StoreResult<()>;
    /// Entries alive at `now_ms`, oldest first.
    async fn load_semantic(&self, now_ms: i64) -> StoreResult<Vec<SemanticRow>>;
    async fn delete_semantic(&self, ids: &[String]) -> StoreResult<()>;
    /// Drops entries expired at `now_ms`; returns how many.
    async fn purge_semantic(&self, now_ms: i64) -> StoreResult<u64>;
}

/// A tool definition the tool layer pinned for one upstream server, and the changed
/// definition the upstream serves since, if any, awaiting an administrator's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolPin {
    pub server: String,
    pub tool: String,
    /// SHA-256 (hex) of the canonical definition.
    pub sha256: String,
    /// The pinned definition as canonical JSON.
    pub definition: String,
    pub pinned_ms: i64,
    pub pending_sha256: Option<String>,
    pub pending_definition: Option<String>,
    pub pending_ms: Option<i64>,
}

/// What an approval is bound to: one exact call under one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalBinding {
    pub principal: String,
    pub server: String,
    pub tool: String,
    /// SHA-256 (hex) of the canonical arguments.
    pub args_sha256: String,
    pub policy_version: String,
}

/// A request to run one held tool call, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalRecord {
    pub id: String,
    #[serde(flatten)]
    pub binding: ApprovalBinding,
    /// The policy rule that asked for the approval.
    pub rule: String,
    pub session: String,
    /// The arguments as the approver sees them (configured fields redacted).
    pub arguments: serde_json::Value,
    /// `pending`, `approved`, `denied` or `used` (a pending or approved one past
    /// `expires_ms` is expired, whatever it says).
    pub status: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub decided_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub note: Option<String>,
    pub used_ms: Option<i64>,
}

/// The tool layer's durable state: pinned tool definitions and the approval queue.
#[async_trait]
pub trait McpStore: Send + Sync + 'static {
    /// Pins of one server (every server when `None`), ordered by server and tool.
    async fn tool_pins(&self, server: Option<&str>) -> StoreResult<Vec<ToolPin>>;
    /// Pins a definition unless the tool has a pin already; returns the pin now stored.
    async fn pin_tool_if_absent(&self, pin: &ToolPin) -> StoreResult<ToolPin>;
    /// Records a definition that differs from the pin as pending approval (replacing an older
    /// pending one). Does nothing if the tool has no pin.
    async fn set_pending_tool(
        &self,
        server: &str,
        tool: &str,
        sha256: &str,
        definition: &str,
        now_ms: i64,
    ) -> StoreResult<()>;
    /// Makes the pending definition with digest `sha256` the pinned one. `None` when that
    /// definition is not the pending one (nothing changes then).
    async fn approve_tool(
        &self,
        server: &str,
        tool: &str,
        sha256: &str,
        now_ms: i64,
    ) -> StoreResult<Option<ToolPin>>;
    async fn insert_approval(&self, approval: &ApprovalRecord) -> StoreResult<()>;
    async fn get_approval(&self, id: &str) -> StoreResult<Option<ApprovalRecord>>;
    /// Newest first; only those with `status` when given.
    async fn list_approvals(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<ApprovalRecord>>;
    /// Approves or denies a pending, unexpired approval; `None` when it is not one.
    async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<ApprovalRecord>>;
    /// Marks used an approved, unexpired approval bound to exactly this call (the one with
    /// `id` when given, else the oldest), atomically: two calls never use one approval.
    async fn consume_approval(
        &self,
        binding: &ApprovalBinding,
        id: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<ApprovalRecord>>;
}

/// An agent registered through the admin API: its spec is an `a2a.agents[]` entry as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub name: String,
    pub spec: serde_json::Value,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// The agent registry's admin-managed part (config agents are not stored).
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// Every stored agent, by name.
    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>>;
    /// Creates or replaces an agent (its `created_ms` is kept on replace); true if created.
    async fn put_agent(&self, agent: &AgentRecord) -> StoreResult<bool>;
    async fn delete_agent(&self, name: &str) -> StoreResult<bool>;
}

#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    async fn get_meta(&self, key: &str) -> StoreResult<Option<String>>;
    /// Sets `key` only if it has no value; returns the value now stored.
    async fn set_meta_if_absent(&self, key: &str, value: &str) -> StoreResult<String>;
    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()>;
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
}

/// The engines a process uses, one handle per concern.
#[derive(Clone)]
pub struct Stores {
    pub keys: Arc<dyn KeyStore>,
    pub meta: Arc<dyn MetaStore>,
    pub audit: Arc<dyn AuditStore>,
    pub directory: Arc<dyn DirectoryStore>,
    pub ledger: Arc<dyn LedgerStore>,
    pub semantic: Arc<dyn SemanticStore>,
    pub mcp: Arc<dyn McpStore>,
    pub agents: Arc<dyn AgentStore>,
}

impl Stores {
    /// Opens (and migrates) the store a URL names.
    pub async fn open(url: &DatabaseUrl) -> StoreResult<Stores> {
        match url {
            DatabaseUrl::Memory => {
                let s = Arc::new(MemoryStore::default());
                Ok(Stores {
                    keys: s.clone(),
                    meta: s.clone(),
                    audit: s.clone(),
                    directory: s.clone(),
                    ledger: s.clone(),
                    semantic: s.clone(),
                    mcp: s.clone(),
                    agents: s,
                })
            }
            DatabaseUrl::Postgres(url) => {
                let s = Arc::new(postgres::PostgresStore::open(url.expose()).await?);
                Ok(Stores {
                    keys: s.clone(),
                    meta: s.clone(),
                    audit: s.clone(),
                    directory: s.clone(),
                    ledger: s.clone(),
                    semantic: s.clone(),
                    mcp: s.clone(),
                    agents: s,
                })
            }
            DatabaseUrl::Sqlite(path) => {
                let s = Arc::new(SqliteStore::open(path).await?);
                Ok(Stores {
                    keys: s.clone(),
                    meta: s.clone(),
                    audit: s.clone(),
                    directory: s.clone(),
                    ledger: s.clone(),
                    semantic: s.clone(),
                    mcp: s.clone(),
                    agents: s,
                })
            }
        }
    }
}

#[cfg(test)]
mod suite;

const AUDIT_HEAD: &str = "audit_head";

fn format_head(seq: i64, hash: &str) -> String {
    format!("{seq}:{hash}")
}

fn parse_head(v: &str) -> StoreResult<(i64, String)> {
    let (seq, hash) = v
        .split_once(':')
        .ok_or_else(|| StoreError::Corrupt(format!("bad audit head {v:?}")))?;
    let seq = seq
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("bad audit head {v:?}")))?;
    Ok((seq, hash.to_owned()))
}
