//! The SQLite engine: the embedded default. WAL mode, one file, schema created and upgraded by
//! the numbered migrations in `migrations/sqlite/`. All SQL uses binds.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::ledger_sql::Table;

use crate::audit::{AuditEvent, AuditRecord, GENESIS};

use super::{
    format_head, parse_head, ApprovalBinding, ApprovalRecord, AuditStore, DirectoryStore,
    KeyRecord, KeySecret, KeyStore, KeyUpdate, LedgerStore, McpStore, MetaStore, Page, SemanticRow,
    SemanticStore, StoreError, StoreResult, TeamRecord, ToolPin, UserRecord, AUDIT_HEAD,
};

/// Migrations in order. A released migration is never edited; add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "keys", include_str!("migrations/sqlite/0001_keys.sql")),
    (2, "audit", include_str!("migrations/sqlite/0002_audit.sql")),
    (
        3,
        "directory",
        include_str!("migrations/sqlite/0003_directory.sql"),
    ),
    (
        4,
        "team_tenant",
        include_str!("migrations/sqlite/0004_team_tenant.sql"),
    ),
    (
        5,
        "ledger",
        include_str!("migrations/sqlite/0005_ledger.sql"),
    ),
    (
        6,
        "ledger_dimensions",
        include_str!("migrations/sqlite/0006_ledger_dimensions.sql"),
    ),
    (
        7,
        "semantic_cache",
        include_str!("migrations/sqlite/0007_semantic_cache.sql"),
    ),
    (8, "mcp", include_str!("migrations/sqlite/0008_mcp.sql")),
    (
        9,
        "audit_conversation",
        include_str!("migrations/sqlite/0009_audit_conversation.sql"),
    ),
    (
        10,
        "a2a_agents",
        include_str!("migrations/sqlite/0010_a2a_agents.sql"),
    ),
    (
        11,
        "ledger_stats",
        include_str!("migrations/sqlite/0011_ledger_stats.sql"),
    ),
    (
        12,
        "limits",
        include_str!("migrations/sqlite/0012_limits.sql"),
    ),
    (
        13,
        "ledger_conversations",
        include_str!("migrations/sqlite/0013_ledger_conversations.sql"),
    ),
];

const KEYS_SEQ: &str = "keys_seq";
const DIALECT: super::ledger_sql::Dialect = super::ledger_sql::Dialect::Sqlite;
/// Audit records per INSERT: 14 binds each, well under SQLite's 32,766 variables.
const AUDIT_ROWS_PER_INSERT: usize = 500;

pub struct SqliteStore {
    pool: SqlitePool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL's usual setting: commits do not wait for fsync (checkpoints do). A crash of
            // the process loses nothing; a power cut may lose the last commits, never the
            // database or the audit chain's integrity.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS tollgate_migrations (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        for (version, name, sql) in MIGRATIONS {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(unavailable)?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM tollgate_migrations WHERE version = ?")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|e| {
                StoreError::Unavailable(format!("migration {version} ({name}) failed: {e}"))
            })?;
            sqlx::query(
                "INSERT INTO tollgate_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            )
            .bind(version)
            .bind(name)
            .bind(crate::time::now())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
        }
        Ok(())
    }
}

fn bump_seq_sql() -> &'static str {
    "INSERT INTO tollgate_meta (k, v) VALUES ('keys_seq', '1')
     ON CONFLICT (k) DO UPDATE SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT)"
}

const KEY_COLUMNS: &str = "id, name, user_id, team_id, models, expires_at, enabled, revoked_at, \
                           metadata, limits, secret_prefix, created_at, updated_at";

fn key_from_row(row: &SqliteRow) -> StoreResult<KeyRecord> {
    let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    let models: String = row.try_get("models").map_err(get)?;
    let metadata: String = row.try_get("metadata").map_err(get)?;
    let limits: Option<String> = row.try_get("limits").map_err(get)?;
    Ok(KeyRecord {
        id: row.try_get("id").map_err(get)?,
        name: row.try_get("name").map_err(get)?,
        user: row.try_get("user_id").map_err(get)?,
        team: row.try_get("team_id").map_err(get)?,
        models: serde_json::from_str(&models)
            .map_err(|e| StoreError::Corrupt(format!("keys.models: {e}")))?,
        expires_at: row.try_get("expires_at").map_err(get)?,
        enabled: row.try_get("enabled").map_err(get)?,
        revoked_at: row.try_get("revoked_at").map_err(get)?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("keys.metadata: {e}")))?,
        limits: super::limits_from_json(limits.as_deref())?,
        secret_prefix: row.try_get("secret_prefix").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
    })
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

impl SqliteStore {
    async fn fetch_key<'e, E>(&self, exec: E, id: &str) -> StoreResult<Option<KeyRecord>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
    {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(exec)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(key_from_row).transpose()
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &KeyRecord, secret: &KeySecret) -> StoreResult<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO keys (id, name, user_id, team_id, models, expires_at, enabled, revoked_at,
                               metadata, secret_prefix, created_at, updated_at, limits)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.user)
        .bind(&key.team)
        .bind(json(&key.models))
        .bind(key.expires_at)
        .bind(key.enabled)
        .bind(key.revoked_at)
        .bind(json(&key.metadata))
        .bind(&key.secret_prefix)
        .bind(key.created_at)
        .bind(key.updated_at)
        .bind(super::limits_json(&key.limits))
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("key {} already exists", key.id))
            }
            _ => unavailable(e),
        })?;
        sqlx::query(
            "INSERT INTO key_secrets (hash, key_id, expires_at, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&secret.hash[..])
        .bind(&key.id)
        .bind(secret.expires_at)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(bump_seq_sql())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        self.fetch_key(&self.pool, id).await
    }

    async fn list_keys(&self, page: &Page) -> StoreResult<Vec<KeyRecord>> {
        let limit = i64::from(page.limit.clamp(1, 1000));
        let rows = match &page.after {
            None => {
                let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id LIMIT ?");
                sqlx::query(&sql).bind(limit).fetch_all(&self.pool).await
            }
            Some(after) => {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM keys
                     WHERE (created_at, id) > (SELECT created_at, id FROM keys WHERE id = ?)
                     ORDER BY created_at, id LIMIT ?"
                );
                sqlx::query(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(unavailable)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn update_key(
        &self,
        id: &str,
        update: &KeyUpdate,
        now: i64,
    ) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let Some(mut key) = self.fetch_key(&mut *tx, id).await? else {
            return Ok(None);
        };
        update.apply(&mut key, now);
        sqlx::query(
            "UPDATE keys SET name = ?, user_id = ?, team_id = ?, models = ?, expires_at = ?,
                             enabled = ?, metadata = ?, updated_at = ?, limits = ?
             WHERE id = ?",
        )
        .bind(&key.name)
        .bind(&key.user)
        .bind(&key.team)
        .bind(json(&key.models))
        .bind(key.expires_at)
        .bind(key.enabled)
        .bind(json(&key.metadata))
        .bind(key.updated_at)
        .bind(super::limits_json(&key.limits))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(bump_seq_sql())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(key))
    }

    async fn revoke_key(&self, id: &str, now: i64) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let Some(mut key) = self.fetch_key(&mut *tx, id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!("key {id} is already revoked")));
        }
        key.revoked_at = Some(now);
        key.enabled = false;
        key.updated_at = now;
        sqlx::query("UPDATE keys SET revoked_at = ?, enabled = 0, updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query("DELETE FROM key_secrets WHERE key_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(bump_seq_sql())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(key))
    }

    async fn rotate_key(
        &self,
        id: &str,
        new_secret: &KeySecret,
        new_prefix: &str,
        old_expire_at: i64,
        now: i64,
    ) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let Some(mut key) = self.fetch_key(&mut *tx, id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "key {id} is revoked and cannot be rotated"
            )));
        }
        sqlx::query(
            "UPDATE key_secrets SET expires_at = MIN(COALESCE(expires_at, ?1), ?1) WHERE key_id = ?2",
        )
        .bind(old_expire_at)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Secrets whose grace has passed are of no use; drop them so the table stays small.
        sqlx::query("DELETE FROM key_secrets WHERE key_id = ? AND expires_at <= ?")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO key_secrets (hash, key_id, expires_at, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&new_secret.hash[..])
        .bind(id)
        .bind(new_secret.expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        key.secret_prefix = new_prefix.to_owned();
        key.updated_at = now;
        sqlx::query("UPDATE keys SET secret_prefix = ?, updated_at = ? WHERE id = ?")
            .bind(new_prefix)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(bump_seq_sql())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(key))
    }

    async fn load_active(&self, now: i64) -> StoreResult<Vec<(KeyRecord, Vec<KeySecret>)>> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE revoked_at IS NULL");
        let rows = sqlx::query(&sql)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        let secrets = sqlx::query(
            "SELECT hash, key_id, expires_at FROM key_secrets
             WHERE expires_at IS NULL OR expires_at > ?",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let mut by_key: std::collections::HashMap<String, Vec<KeySecret>> = Default::default();
        for row in &secrets {
            let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
            let hash: Vec<u8> = row.try_get("hash").map_err(get)?;
            let key_id: String = row.try_get("key_id").map_err(get)?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("key_secrets.hash is not 32 bytes".into()))?;
            by_key.entry(key_id).or_default().push(KeySecret {
                hash,
                expires_at: row.try_get("expires_at").map_err(get)?,
            });
        }
        rows.iter()
            .map(|row| {
                let key = key_from_row(row)?;
                let secrets = by_key.remove(&key.id).unwrap_or_default();
                Ok((key, secrets))
            })
            .collect()
    }

    async fn change_seq(&self) -> StoreResult<i64> {
        let v: Option<String> = sqlx::query_scalar("SELECT v FROM tollgate_meta WHERE k = ?")
            .bind(KEYS_SEQ)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn get_meta(&self, key: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT v FROM tollgate_meta WHERE k = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        sqlx::query("INSERT INTO tollgate_meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let v: String = sqlx::query_scalar("SELECT v FROM tollgate_meta WHERE k = ?")
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(v)
    }

    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO tollgate_meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, events: &[(AuditEvent, i64)]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        // IMMEDIATE takes the write lock before the head is read, so two processes can never
        // chain onto the same record. Dropping the transaction on error rolls it back.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_owned()));
        let mut records = Vec::with_capacity(events.len());
        for (ev, time_ms) in events {
            seq += 1;
            let r = AuditRecord::chain(seq, *time_ms, &prev, ev);
            prev.clone_from(&r.hash);
            records.push(r);
        }
        // One multi-row INSERT per chunk: a batch is a few statements, not one per record.
        for chunk in records.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_log (seq, time_ms, request_id, trace_id, conversation_id, principal,
                    action, target, decision, rule, outcome, detail, prev_hash, hash) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.seq)
                    .push_bind(r.time_ms)
                    .push_bind(&r.request_id)
                    .push_bind(&r.trace_id)
                    .push_bind(&r.conversation_id)
                    .push_bind(&r.principal)
                    .push_bind(&r.action)
                    .push_bind(&r.target)
                    .push_bind(&r.decision)
                    .push_bind(&r.rule)
                    .push_bind(&r.outcome)
                    .push_bind(&r.detail)
                    .push_bind(&r.prev_hash)
                    .push_bind(&r.hash);
            });
            q.build().execute(&mut *tx).await.map_err(unavailable)?;
        }
        sqlx::query(
            "INSERT INTO tollgate_meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        )
        .bind(AUDIT_HEAD)
        .bind(format_head(seq, &prev))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn read_audit(&self, after: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT seq, time_ms, request_id, trace_id, conversation_id, principal, action, target,
                    decision, rule, outcome, detail, prev_hash, hash
             FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(audit_row).collect()
    }

    async fn conversation_audit(
        &self,
        conversation: &str,
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT seq, time_ms, request_id, trace_id, conversation_id, principal, action, target,
                    decision, rule, outcome, detail, prev_hash, hash
             FROM audit_log WHERE conversation_id = ? ORDER BY seq LIMIT ?",
        )
        .bind(conversation)
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>> {
        let v: Option<String> = sqlx::query_scalar("SELECT v FROM tollgate_meta WHERE k = ?")
            .bind(AUDIT_HEAD)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        v.as_deref().map(parse_head).transpose()
    }

    async fn search_audit(&self, q: &crate::audit::AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let (cond, binds) = q.sql_where(false);
        let limit = "?".to_owned();
        let sql = format!(
            "SELECT seq, time_ms, request_id, trace_id, conversation_id, principal, action, target,
                    decision, rule, outcome, detail, prev_hash, hash
             FROM audit_log WHERE {cond} ORDER BY seq DESC LIMIT {limit}"
        );
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = match b {
                crate::audit::SqlBind::Text(t) => query.bind(t),
                crate::audit::SqlBind::Int(i) => query.bind(i),
            };
        }
        let rows = query
            .bind(i64::from(q.limit.clamp(1, 1000)))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(audit_row).collect()
    }
}

impl SqliteStore {
    /// Raw access for tests that tamper with the database behind the store's back.
    #[cfg(test)]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn roles_of(
    exec: &mut sqlx::SqliteConnection,
    kind: &str,
) -> StoreResult<std::collections::HashMap<String, Vec<String>>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT subject_id, role FROM role_assignments WHERE subject_kind = ? ORDER BY role",
    )
    .bind(kind)
    .fetch_all(exec)
    .await
    .map_err(unavailable)?;
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (id, role) in rows {
        out.entry(id).or_default().push(role);
    }
    Ok(out)
}

async fn set_roles(
    tx: &mut sqlx::SqliteConnection,
    kind: &str,
    id: &str,
    roles: &[String],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM role_assignments WHERE subject_kind = ? AND subject_id = ?")
        .bind(kind)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    for role in roles {
        sqlx::query("INSERT OR IGNORE INTO role_assignments (subject_kind, subject_id, role) VALUES (?, ?, ?)")
            .bind(kind)
            .bind(id)
            .bind(role)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    sqlx::query(bump_seq_sql())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn conflict_or_unavailable(what: String) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what.clone()),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            StoreError::Conflict(format!("{what}: refers to a missing team"))
        }
        _ => unavailable(e),
    }
}

#[async_trait]
impl DirectoryStore for SqliteStore {
    async fn insert_team(&self, t: &TeamRecord) -> StoreResult<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO teams (id, name, metadata, created_at, updated_at, tenant, limits) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(json(&t.metadata))
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(&t.tenant)
        .bind(super::limits_json(&t.limits))
        .execute(&mut *tx)
        .await
        .map_err(conflict_or_unavailable(format!(
            "team {} already exists",
            t.id
        )))?;
        set_roles(&mut tx, "team", &t.id, &t.roles).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn replace_team(&self, t: &TeamRecord) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let done =
            sqlx::query("UPDATE teams SET name = ?, metadata = ?, updated_at = ?, tenant = ?, limits = ? WHERE id = ?")
                .bind(&t.name)
                .bind(json(&t.metadata))
                .bind(t.updated_at)
                .bind(&t.tenant)
                .bind(super::limits_json(&t.limits))
                .bind(&t.id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        set_roles(&mut tx, "team", &t.id, &t.roles).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn list_teams(&self) -> StoreResult<Vec<TeamRecord>> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        type Row = (
            String,
            String,
            Option<String>,
            String,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, name, tenant, metadata, created_at, updated_at, limits FROM teams ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let mut roles = roles_of(&mut conn, "team").await?;
        rows.into_iter()
            .map(
                |(id, name, tenant, metadata, created_at, updated_at, limits)| {
                    Ok(TeamRecord {
                        roles: roles.remove(&id).unwrap_or_default(),
                        id,
                        name,
                        tenant,
                        metadata: serde_json::from_str(&metadata)
                            .map_err(|e| StoreError::Corrupt(format!("teams.metadata: {e}")))?,
                        limits: super::limits_from_json(limits.as_deref())?,
                        created_at,
                        updated_at,
                    })
                },
            )
            .collect()
    }

    async fn delete_team(&self, id: &str) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE team_id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        let keys: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM keys WHERE team_id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if users + keys > 0 {
            return Err(StoreError::Conflict(format!(
                "team {id} still has {users} user(s) and {keys} live key(s)"
            )));
        }
        let done = sqlx::query("DELETE FROM teams WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        set_roles(&mut tx, "team", id, &[]).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_user(&self, u: &UserRecord) -> StoreResult<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        sqlx::query("INSERT INTO users (id, name, email, team_id, metadata, created_at, updated_at, limits) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&u.id)
            .bind(&u.name)
            .bind(&u.email)
            .bind(&u.team)
            .bind(json(&u.metadata))
            .bind(u.created_at)
            .bind(u.updated_at)
            .bind(super::limits_json(&u.limits))
            .execute(&mut *tx)
            .await
            .map_err(conflict_or_unavailable(format!("user {} already exists", u.id)))?;
        set_roles(&mut tx, "user", &u.id, &u.roles).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn replace_user(&self, u: &UserRecord) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let done = sqlx::query("UPDATE users SET name = ?, email = ?, team_id = ?, metadata = ?, updated_at = ?, limits = ? WHERE id = ?")
            .bind(&u.name)
            .bind(&u.email)
            .bind(&u.team)
            .bind(json(&u.metadata))
            .bind(u.updated_at)
            .bind(super::limits_json(&u.limits))
            .bind(&u.id)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or_unavailable(format!("user {}", u.id)))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        set_roles(&mut tx, "user", &u.id, &u.roles).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, name, email, team_id, metadata, created_at, updated_at, limits FROM users ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let mut roles = roles_of(&mut conn, "user").await?;
        rows.into_iter()
            .map(
                |(id, name, email, team, metadata, created_at, updated_at, limits)| {
                    Ok(UserRecord {
                        roles: roles.remove(&id).unwrap_or_default(),
                        id,
                        name,
                        email,
                        team,
                        metadata: serde_json::from_str(&metadata)
                            .map_err(|e| StoreError::Corrupt(format!("users.metadata: {e}")))?,
                        limits: super::limits_from_json(limits.as_deref())?,
                        created_at,
                        updated_at,
                    })
                },
            )
            .collect()
    }

    async fn delete_user(&self, id: &str) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let keys: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM keys WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if keys > 0 {
            return Err(StoreError::Conflict(format!(
                "user {id} still has {keys} live key(s)"
            )));
        }
        let done = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        set_roles(&mut tx, "user", id, &[]).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn append_ledger(&self, records: &[crate::ledger::LedgerRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        append_ledger!(tx, records, DIALECT, i64);
        tx.commit().await.map_err(unavailable)
    }

    async fn read_ledger(
        &self,
        q: &crate::ledger::LedgerQuery,
    ) -> StoreResult<Vec<crate::ledger::LedgerRecord>> {
        let (cond, binds) = q.sql_where(false);
        let limit = "?".to_owned();
        let sql = format!("SELECT id, record FROM ledger WHERE {cond} ORDER BY id LIMIT {limit}");
        let mut query = sqlx::query_as::<_, (i64, String)>(&sql);
        for b in binds {
            query = match b {
                crate::audit::SqlBind::Text(t) => query.bind(t),
                crate::audit::SqlBind::Int(i) => query.bind(i),
            };
        }
        let rows = query
            .bind(i64::from(q.limit.clamp(1, 10_000)))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(id, json)| {
                let mut r: crate::ledger::LedgerRecord = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("ledger row {id}: {e}")))?;
                r.id = id;
                Ok(r)
            })
            .collect()
    }

    async fn spend(
        &self,
        q: &crate::ledger::SpendQuery,
    ) -> StoreResult<Vec<crate::ledger::SpendRow>> {
        if !crate::ledger::rollup_serves(q) {
            return self
                .spend_part(q, (q.since_ms, q.until_ms), Table::Rows)
                .await;
        }
        let split = crate::ledger::split_hours(q.since_ms, q.until_ms);
        let mut parts = Vec::new();
        for (since_ms, until_ms) in [split.head, split.tail].into_iter().flatten() {
            parts.push(
                self.spend_part(q, (since_ms, until_ms), Table::Rows)
                    .await?,
            );
        }
        if let Some(hours) = split.hours {
            parts.push(self.spend_part(q, hours, Table::Hourly).await?);
        }
        Ok(crate::ledger::merge_spend(parts, q.limit))
    }

    async fn ledger_stats(
        &self,
        q: &crate::ledger::StatsQuery,
    ) -> StoreResult<Vec<crate::ledger::StatsBucket>> {
        let h = crate::ledger::HOUR_MS;
        if q.since_ms % h == 0 && q.bucket_ms % h == 0 && q.until_ms % h == 0 {
            return self.stats_hourly(q).await;
        }
        let rows = sqlx::query_as(&super::ledger_sql::stats_rows(DIALECT))
            .bind(q.since_ms)
            .bind(q.bucket_ms.max(1))
            .bind(q.until_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(crate::ledger::stats_from_rows(rows))
    }

    async fn conversations(
        &self,
        q: &crate::ledger::ConversationQuery,
    ) -> StoreResult<Vec<crate::ledger::ConversationSummary>> {
        let rows = sqlx::query_as(&super::ledger_sql::conversation_list(DIALECT))
            .bind(q.since_ms)
            .bind(q.until_ms)
            .bind(i64::from(q.limit.clamp(1, 10_000)))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(super::ledger_sql::conversation_rows(rows))
    }
}

impl SqliteStore {
    /// A spend report over `range` from the rows or the rollup (unsorted, uncut).
    async fn spend_part(
        &self,
        q: &crate::ledger::SpendQuery,
        (since_ms, until_ms): (i64, i64),
        table: Table,
    ) -> StoreResult<Vec<crate::ledger::SpendRow>> {
        let sql = super::ledger_sql::spend(q, table, DIALECT);
        let mut query = sqlx::query_as::<_, (Option<String>, i64, i64, i64, f64)>(&sql)
            .bind(since_ms)
            .bind(until_ms);
        if let Some((_, value)) = &q.filter {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        Ok(super::ledger_sql::spend_rows(rows))
    }

    /// Stats from the rollup, for hour-aligned ranges and buckets.
    async fn stats_hourly(
        &self,
        q: &crate::ledger::StatsQuery,
    ) -> StoreResult<Vec<crate::ledger::StatsBucket>> {
        let rows = sqlx::query_as(&super::ledger_sql::stats_hourly(DIALECT))
            .bind(q.since_ms)
            .bind(q.bucket_ms.max(1))
            .bind(q.until_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(super::ledger_sql::hourly_buckets(rows))
    }
}

fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_from(bytes: &[u8]) -> StoreResult<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return Err(StoreError::Corrupt(
            "semantic cache vector of odd length".into(),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[async_trait]
impl SemanticStore for SqliteStore {
    async fn put_semantic(&self, row: &SemanticRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO semantic_cache (id, partition, route, vector, entry, created_ms, expires_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET entry = excluded.entry, expires_ms = excluded.expires_ms",
        )
        .bind(&row.id)
        .bind(&row.partition)
        .bind(&row.route)
        .bind(vector_bytes(&row.vector))
        .bind(&row.entry)
        .bind(row.created_ms)
        .bind(row.expires_ms)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn load_semantic(&self, now_ms: i64) -> StoreResult<Vec<SemanticRow>> {
        let rows = sqlx::query(
            "SELECT id, partition, route, vector, entry, created_ms, expires_ms
             FROM semantic_cache WHERE expires_ms > ? ORDER BY created_ms, id",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let vector: Vec<u8> = r.try_get("vector").map_err(unavailable)?;
                Ok(SemanticRow {
                    id: r.try_get("id").map_err(unavailable)?,
                    partition: r.try_get("partition").map_err(unavailable)?,
                    route: r.try_get("route").map_err(unavailable)?,
                    vector: vector_from(&vector)?,
                    entry: r.try_get("entry").map_err(unavailable)?,
                    created_ms: r.try_get("created_ms").map_err(unavailable)?,
                    expires_ms: r.try_get("expires_ms").map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn delete_semantic(&self, ids: &[String]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        for id in ids {
            sqlx::query("DELETE FROM semantic_cache WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn purge_semantic(&self, now_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM semantic_cache WHERE expires_ms <= ?")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

const PIN_COLUMNS: &str =
    "server, tool, sha256, definition, pinned_ms, pending_sha256, pending_definition, pending_ms";
const APPROVAL_COLUMNS: &str = "id, principal, server, tool, args_sha256, policy_version, rule, \
     session, arguments, status, created_ms, expires_ms, decided_ms, decided_by, note, used_ms";

fn pin_from(r: &SqliteRow) -> StoreResult<ToolPin> {
    Ok(ToolPin {
        server: r.try_get("server").map_err(unavailable)?,
        tool: r.try_get("tool").map_err(unavailable)?,
        sha256: r.try_get("sha256").map_err(unavailable)?,
        definition: r.try_get("definition").map_err(unavailable)?,
        pinned_ms: r.try_get("pinned_ms").map_err(unavailable)?,
        pending_sha256: r.try_get("pending_sha256").map_err(unavailable)?,
        pending_definition: r.try_get("pending_definition").map_err(unavailable)?,
        pending_ms: r.try_get("pending_ms").map_err(unavailable)?,
    })
}

fn approval_from(r: &SqliteRow) -> StoreResult<ApprovalRecord> {
    let arguments: String = r.try_get("arguments").map_err(unavailable)?;
    Ok(ApprovalRecord {
        id: r.try_get("id").map_err(unavailable)?,
        binding: ApprovalBinding {
            principal: r.try_get("principal").map_err(unavailable)?,
            server: r.try_get("server").map_err(unavailable)?,
            tool: r.try_get("tool").map_err(unavailable)?,
            args_sha256: r.try_get("args_sha256").map_err(unavailable)?,
            policy_version: r.try_get("policy_version").map_err(unavailable)?,
        },
        rule: r.try_get("rule").map_err(unavailable)?,
        session: r.try_get("session").map_err(unavailable)?,
        arguments: serde_json::from_str(&arguments)
            .map_err(|e| StoreError::Corrupt(format!("mcp_approvals.arguments: {e}")))?,
        status: r.try_get("status").map_err(unavailable)?,
        created_ms: r.try_get("created_ms").map_err(unavailable)?,
        expires_ms: r.try_get("expires_ms").map_err(unavailable)?,
        decided_ms: r.try_get("decided_ms").map_err(unavailable)?,
        decided_by: r.try_get("decided_by").map_err(unavailable)?,
        note: r.try_get("note").map_err(unavailable)?,
        used_ms: r.try_get("used_ms").map_err(unavailable)?,
    })
}

#[async_trait]
impl super::AgentStore for SqliteStore {
    async fn list_agents(&self) -> StoreResult<Vec<super::AgentRecord>> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT name, spec, created_ms, updated_ms FROM a2a_agents ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(name, spec, created_ms, updated_ms)| {
                let spec = serde_json::from_str(&spec)
                    .map_err(|e| StoreError::Corrupt(format!("agent {name}: {e}")))?;
                Ok(super::AgentRecord {
                    name,
                    spec,
                    created_ms,
                    updated_ms,
                })
            })
            .collect()
    }

    async fn put_agent(&self, agent: &super::AgentRecord) -> StoreResult<bool> {
        // An upsert: a concurrent create of the same name replaces rather than fails.
        let existed: Option<(i64,)> =
            sqlx::query_as("SELECT created_ms FROM a2a_agents WHERE name = ?")
                .bind(&agent.name)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO a2a_agents (name, spec, created_ms, updated_ms) VALUES (?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms",
        )
        .bind(&agent.name)
        .bind(agent.spec.to_string())
        .bind(agent.created_ms)
        .bind(agent.updated_ms)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(existed.is_none())
    }

    async fn delete_agent(&self, name: &str) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM a2a_agents WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(r.rows_affected() > 0)
    }
}

#[async_trait]
impl McpStore for SqliteStore {
    async fn tool_pins(&self, server: Option<&str>) -> StoreResult<Vec<ToolPin>> {
        let rows = sqlx::query(&format!(
            "SELECT {PIN_COLUMNS} FROM mcp_tool_pins WHERE ?1 IS NULL OR server = ?1 ORDER BY server, tool"
        ))
        .bind(server)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(pin_from).collect()
    }

    async fn pin_tool_if_absent(&self, pin: &ToolPin) -> StoreResult<ToolPin> {
        sqlx::query(
            "INSERT INTO mcp_tool_pins (server, tool, sha256, definition, pinned_ms)
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (server, tool) DO NOTHING",
        )
        .bind(&pin.server)
        .bind(&pin.tool)
        .bind(&pin.sha256)
        .bind(&pin.definition)
        .bind(pin.pinned_ms)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let row = sqlx::query(&format!(
            "SELECT {PIN_COLUMNS} FROM mcp_tool_pins WHERE server = ? AND tool = ?"
        ))
        .bind(&pin.server)
        .bind(&pin.tool)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        pin_from(&row)
    }

    async fn set_pending_tool(
        &self,
        server: &str,
        tool: &str,
        sha256: &str,
        definition: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE mcp_tool_pins SET pending_sha256 = ?, pending_definition = ?, pending_ms = ?
             WHERE server = ? AND tool = ? AND pending_sha256 IS NOT ?",
        )
        .bind(sha256)
        .bind(definition)
        .bind(now_ms)
        .bind(server)
        .bind(tool)
        .bind(sha256)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn approve_tool(
        &self,
        server: &str,
        tool: &str,
        sha256: &str,
        now_ms: i64,
    ) -> StoreResult<Option<ToolPin>> {
        let row = sqlx::query(&format!(
            "UPDATE mcp_tool_pins SET sha256 = pending_sha256, definition = pending_definition,
                 pinned_ms = ?, pending_sha256 = NULL, pending_definition = NULL, pending_ms = NULL
             WHERE server = ? AND tool = ? AND pending_sha256 = ? RETURNING {PIN_COLUMNS}"
        ))
        .bind(now_ms)
        .bind(server)
        .bind(tool)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(pin_from).transpose()
    }

    async fn insert_approval(&self, a: &ApprovalRecord) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO mcp_approvals ({APPROVAL_COLUMNS})
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&a.id)
        .bind(&a.binding.principal)
        .bind(&a.binding.server)
        .bind(&a.binding.tool)
        .bind(&a.binding.args_sha256)
        .bind(&a.binding.policy_version)
        .bind(&a.rule)
        .bind(&a.session)
        .bind(a.arguments.to_string())
        .bind(&a.status)
        .bind(a.created_ms)
        .bind(a.expires_ms)
        .bind(a.decided_ms)
        .bind(&a.decided_by)
        .bind(&a.note)
        .bind(a.used_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("approval {} exists", a.id))
            }
            _ => unavailable(e),
        })?;
        Ok(())
    }

    async fn get_approval(&self, id: &str) -> StoreResult<Option<ApprovalRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM mcp_approvals WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(approval_from).transpose()
    }

    async fn list_approvals(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<ApprovalRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM mcp_approvals WHERE ?1 IS NULL OR status = ?1
             ORDER BY created_ms DESC, id DESC LIMIT ?2"
        ))
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(approval_from).collect()
    }

    async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<ApprovalRecord>> {
        let row = sqlx::query(&format!(
            "UPDATE mcp_approvals SET status = ?, decided_ms = ?, decided_by = ?, note = ?
             WHERE id = ? AND status = 'pending' AND expires_ms > ? RETURNING {APPROVAL_COLUMNS}"
        ))
        .bind(if approve { "approved" } else { "denied" })
        .bind(now_ms)
        .bind(by)
        .bind(note)
        .bind(id)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(approval_from).transpose()
    }

    async fn consume_approval(
        &self,
        b: &ApprovalBinding,
        id: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<ApprovalRecord>> {
        // One statement: the row is chosen and marked used under SQLite's write lock.
        let row = sqlx::query(&format!(
            "UPDATE mcp_approvals SET status = 'used', used_ms = ?1
             WHERE id = (SELECT id FROM mcp_approvals
                         WHERE principal = ?2 AND server = ?3 AND tool = ?4 AND args_sha256 = ?5
                           AND policy_version = ?6 AND status = 'approved' AND expires_ms > ?1
                           AND (?7 IS NULL OR id = ?7)
                         ORDER BY created_ms, id LIMIT 1)
               AND status = 'approved'
             RETURNING {APPROVAL_COLUMNS}"
        ))
        .bind(now_ms)
        .bind(&b.principal)
        .bind(&b.server)
        .bind(&b.tool)
        .bind(&b.args_sha256)
        .bind(&b.policy_version)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(approval_from).transpose()
    }
}

fn audit_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<AuditRecord> {
    let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(AuditRecord {
        seq: row.try_get("seq").map_err(get)?,
        time_ms: row.try_get("time_ms").map_err(get)?,
        request_id: row.try_get("request_id").map_err(get)?,
        trace_id: row.try_get("trace_id").map_err(get)?,
        conversation_id: row.try_get("conversation_id").map_err(get)?,
        principal: row.try_get("principal").map_err(get)?,
        action: row.try_get("action").map_err(get)?,
        target: row.try_get("target").map_err(get)?,
        decision: row.try_get("decision").map_err(get)?,
        rule: row.try_get("rule").map_err(get)?,
        outcome: row.try_get("outcome").map_err(get)?,
        detail: row.try_get("detail").map_err(get)?,
        prev_hash: row.try_get("prev_hash").map_err(get)?,
        hash: row.try_get("hash").map_err(get)?,
    })
}
