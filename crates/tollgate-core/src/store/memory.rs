//! The in-memory engine: everything behind one mutex, nothing survives a restart. Used by
//! `memory://` and as the reference the shared store suite holds every engine to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    ApprovalBinding, ApprovalRecord, AuditStore, DirectoryStore, KeyRecord, KeySecret, KeyStore,
    KeyUpdate, McpStore, MetaStore, Page, SecretHash, StoreError, StoreResult, TeamRecord, ToolPin,
    UserRecord,
};
use crate::audit::{AuditEvent, AuditRecord, GENESIS};

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    audit: Vec<AuditRecord>,
    ledger: Vec<crate::ledger::LedgerRecord>,
    teams: BTreeMap<String, TeamRecord>,
    users: BTreeMap<String, UserRecord>,
    keys: BTreeMap<String, KeyRecord>,
    secrets: HashMap<SecretHash, (String, Option<i64>)>,
    meta: HashMap<String, String>,
    semantic: BTreeMap<String, super::SemanticRow>,
    pins: BTreeMap<(String, String), ToolPin>,
    approvals: BTreeMap<String, ApprovalRecord>,
    agents: BTreeMap<String, super::AgentRecord>,
    seq: i64,
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> StoreResult<T>) -> StoreResult<T> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        f(&mut state)
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_key(&self, key: &KeyRecord, secret: &KeySecret) -> StoreResult<()> {
        self.with(|s| {
            if s.keys.contains_key(&key.id) || s.secrets.contains_key(&secret.hash) {
                return Err(StoreError::Conflict(format!(
                    "key {} already exists",
                    key.id
                )));
            }
            s.keys.insert(key.id.clone(), key.clone());
            s.secrets
                .insert(secret.hash, (key.id.clone(), secret.expires_at));
            s.seq += 1;
            Ok(())
        })
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        self.with(|s| Ok(s.keys.get(id).cloned()))
    }

    async fn list_keys(&self, page: &Page) -> StoreResult<Vec<KeyRecord>> {
        self.with(|s| {
            let mut all: Vec<&KeyRecord> = s.keys.values().collect();
            all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let start = match &page.after {
                Some(after) => match s.keys.get(after) {
                    Some(k) => {
                        all.partition_point(|x| (x.created_at, &x.id) <= (k.created_at, &k.id))
                    }
                    None => all.len(),
                },
                None => 0,
            };
            Ok(all
                .into_iter()
                .skip(start)
                .take(page.limit.clamp(1, 1000) as usize)
                .cloned()
                .collect())
        })
    }

    async fn update_key(
        &self,
        id: &str,
        update: &KeyUpdate,
        now: i64,
    ) -> StoreResult<Option<KeyRecord>> {
        self.with(|s| {
            let Some(key) = s.keys.get_mut(id) else {
                return Ok(None);
            };
            update.apply(key, now);
            let out = key.clone();
            s.seq += 1;
            Ok(Some(out))
        })
    }

    async fn revoke_key(&self, id: &str, now: i64) -> StoreResult<Option<KeyRecord>> {
        self.with(|s| {
            let Some(key) = s.keys.get_mut(id) else {
                return Ok(None);
            };
            if key.revoked_at.is_some() {
                return Err(StoreError::Conflict(format!("key {id} is already revoked")));
            }
            key.revoked_at = Some(now);
            key.enabled = false;
            key.updated_at = now;
            let out = key.clone();
            s.secrets.retain(|_, (kid, _)| kid != id);
            s.seq += 1;
            Ok(Some(out))
        })
    }

    async fn rotate_key(
        &self,
        id: &str,
        new_secret: &KeySecret,
        new_prefix: &str,
        old_expire_at: i64,
        now: i64,
    ) -> StoreResult<Option<KeyRecord>> {
        self.with(|s| {
            let Some(key) = s.keys.get_mut(id) else {
                return Ok(None);
            };
            if key.revoked_at.is_some() {
                return Err(StoreError::Conflict(format!(
                    "key {id} is revoked and cannot be rotated"
                )));
            }
            key.secret_prefix = new_prefix.to_owned();
            key.updated_at = now;
            let out = key.clone();
            for (kid, exp) in s.secrets.values_mut() {
                if kid == id {
                    *exp = Some(exp.map_or(old_expire_at, |e| e.min(old_expire_at)));
                }
            }
            s.secrets
                .retain(|_, (kid, exp)| kid != id || exp.is_none_or(|e| e > now));
            s.secrets
                .insert(new_secret.hash, (id.to_owned(), new_secret.expires_at));
            s.seq += 1;
            Ok(Some(out))
        })
    }

    async fn load_active(&self, now: i64) -> StoreResult<Vec<(KeyRecord, Vec<KeySecret>)>> {
        self.with(|s| {
            let mut by_key: HashMap<&str, Vec<KeySecret>> = HashMap::new();
            for (hash, (kid, exp)) in &s.secrets {
                if exp.is_none_or(|e| e > now) {
                    by_key.entry(kid.as_str()).or_default().push(KeySecret {
                        hash: *hash,
                        expires_at: *exp,
                    });
                }
            }
            Ok(s.keys
                .values()
                .filter(|k| k.revoked_at.is_none())
                .map(|k| (k.clone(), by_key.remove(k.id.as_str()).unwrap_or_default()))
                .collect())
        })
    }

    async fn change_seq(&self) -> StoreResult<i64> {
        self.with(|s| Ok(s.seq))
    }
}

#[async_trait]
impl MetaStore for MemoryStore {
    async fn get_meta(&self, key: &str) -> StoreResult<Option<String>> {
        self.with(|s| Ok(s.meta.get(key).cloned()))
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        self.with(|s| {
            Ok(s.meta
                .entry(key.to_owned())
                .or_insert_with(|| value.to_owned())
                .clone())
        })
    }

    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        self.with(|s| {
            s.meta.insert(key.to_owned(), value.to_owned());
            Ok(())
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.with(|_| Ok(()))
    }
}

#[async_trait]
impl super::LedgerStore for MemoryStore {
    async fn append_ledger(&self, records: &[crate::ledger::LedgerRecord]) -> StoreResult<()> {
        self.with(|s| {
            for r in records {
                let id = s.ledger.last().map_or(1, |l| l.id + 1);
                s.ledger
                    .push(crate::ledger::LedgerRecord { id, ..r.clone() });
            }
            Ok(())
        })
    }

    async fn read_ledger(
        &self,
        q: &crate::ledger::LedgerQuery,
    ) -> StoreResult<Vec<crate::ledger::LedgerRecord>> {
        self.with(|s| {
            Ok(s.ledger
                .iter()
                .filter(|r| r.id > q.after && r.time_ms >= q.since_ms && r.time_ms < q.until_ms)
                .filter(|r| {
                    q.conversation.is_none()
                        || r.conversation_id.as_deref() == q.conversation.as_deref()
                })
                .take(q.limit.clamp(1, 10_000) as usize)
                .cloned()
                .collect())
        })
    }

    async fn spend(
        &self,
        q: &crate::ledger::SpendQuery,
    ) -> StoreResult<Vec<crate::ledger::SpendRow>> {
        self.with(|s| Ok(crate::ledger::aggregate(s.ledger.iter(), q)))
    }

    async fn ledger_stats(
        &self,
        q: &crate::ledger::StatsQuery,
    ) -> StoreResult<Vec<crate::ledger::StatsBucket>> {
        self.with(|s| Ok(crate::ledger::stats_of(s.ledger.iter(), q)))
    }

    async fn conversations(
        &self,
        q: &crate::ledger::ConversationQuery,
    ) -> StoreResult<Vec<crate::ledger::ConversationSummary>> {
        self.with(|s| {
            Ok(crate::ledger::list_conversations(
                crate::ledger::conversation_totals(s.ledger.iter()),
                q,
            ))
        })
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_audit(&self, events: &[(AuditEvent, i64)]) -> StoreResult<()> {
        self.with(|s| {
            for (ev, time_ms) in events {
                let (seq, prev) = s
                    .audit
                    .last()
                    .map_or((1, GENESIS.to_owned()), |r| (r.seq + 1, r.hash.clone()));
                s.audit.push(AuditRecord::chain(seq, *time_ms, &prev, ev));
            }
            if let Some(last) = s.audit.last() {
                let head = super::format_head(last.seq, &last.hash);
                s.meta.insert(super::AUDIT_HEAD.to_owned(), head);
            }
            Ok(())
        })
    }

    async fn read_audit(&self, after: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.with(|s| {
            Ok(s.audit
                .iter()
                .filter(|r| r.seq > after)
                .take(limit.clamp(1, 10_000) as usize)
                .cloned()
                .collect())
        })
    }

    async fn conversation_audit(
        &self,
        conversation: &str,
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>> {
        self.with(|s| {
            Ok(s.audit
                .iter()
                .filter(|r| r.conversation_id.as_deref() == Some(conversation))
                .take(limit.clamp(1, 10_000) as usize)
                .cloned()
                .collect())
        })
    }

    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>> {
        self.with(|s| {
            s.meta
                .get(super::AUDIT_HEAD)
                .map(|v| super::parse_head(v))
                .transpose()
        })
    }

    async fn search_audit(&self, q: &crate::audit::AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        self.with(|s| {
            Ok(s.audit
                .iter()
                .rev()
                .filter(|r| q.matches(r))
                .take(q.limit.clamp(1, 1000) as usize)
                .cloned()
                .collect())
        })
    }
}

/// Roles as SQLite returns them: sorted, without duplicates.
fn sorted(roles: &[String]) -> Vec<String> {
    let mut r = roles.to_vec();
    r.sort();
    r.dedup();
    r
}

#[async_trait]
impl DirectoryStore for MemoryStore {
    async fn insert_team(&self, t: &TeamRecord) -> StoreResult<()> {
        self.with(|s| {
            if s.teams.contains_key(&t.id) {
                return Err(StoreError::Conflict(format!(
                    "team {} already exists",
                    t.id
                )));
            }
            s.teams.insert(
                t.id.clone(),
                TeamRecord {
                    roles: sorted(&t.roles),
                    ..t.clone()
                },
            );
            s.seq += 1;
            Ok(())
        })
    }

    async fn replace_team(&self, t: &TeamRecord) -> StoreResult<bool> {
        self.with(|s| {
            let Some(old) = s.teams.get_mut(&t.id) else {
                return Ok(false);
            };
            *old = TeamRecord {
                created_at: old.created_at,
                roles: sorted(&t.roles),
                ..t.clone()
            };
            s.seq += 1;
            Ok(true)
        })
    }

    async fn list_teams(&self) -> StoreResult<Vec<TeamRecord>> {
        self.with(|s| Ok(s.teams.values().cloned().collect()))
    }

    async fn delete_team(&self, id: &str) -> StoreResult<bool> {
        self.with(|s| {
            let users = s
                .users
                .values()
                .filter(|u| u.team.as_deref() == Some(id))
                .count();
            let keys = s
                .keys
                .values()
                .filter(|k| k.team.as_deref() == Some(id) && k.revoked_at.is_none())
                .count();
            if users + keys > 0 {
                return Err(StoreError::Conflict(format!(
                    "team {id} still has {users} user(s) and {keys} live key(s)"
                )));
            }
            s.seq += 1;
            Ok(s.teams.remove(id).is_some())
        })
    }

    async fn insert_user(&self, u: &UserRecord) -> StoreResult<()> {
        self.with(|s| {
            if s.users.contains_key(&u.id) {
                return Err(StoreError::Conflict(format!(
                    "user {} already exists",
                    u.id
                )));
            }
            if u.team.as_ref().is_some_and(|t| !s.teams.contains_key(t)) {
                return Err(StoreError::Conflict(format!(
                    "user {}: refers to a missing team",
                    u.id
                )));
            }
            s.users.insert(
                u.id.clone(),
                UserRecord {
                    roles: sorted(&u.roles),
                    ..u.clone()
                },
            );
            s.seq += 1;
            Ok(())
        })
    }

    async fn replace_user(&self, u: &UserRecord) -> StoreResult<bool> {
        self.with(|s| {
            if u.team.as_ref().is_some_and(|t| !s.teams.contains_key(t)) {
                return Err(StoreError::Conflict(format!(
                    "user {}: refers to a missing team",
                    u.id
                )));
            }
            let Some(old) = s.users.get_mut(&u.id) else {
                return Ok(false);
            };
            *old = UserRecord {
                created_at: old.created_at,
                roles: sorted(&u.roles),
                ..u.clone()
            };
            s.seq += 1;
            Ok(true)
        })
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        self.with(|s| Ok(s.users.values().cloned().collect()))
    }

    async fn delete_user(&self, id: &str) -> StoreResult<bool> {
        self.with(|s| {
            let keys = s
                .keys
                .values()
                .filter(|k| k.user.as_deref() == Some(id) && k.revoked_at.is_none())
                .count();
            if keys > 0 {
                return Err(StoreError::Conflict(format!(
                    "user {id} still has {keys} live key(s)"
                )));
            }
            s.seq += 1;
            Ok(s.users.remove(id).is_some())
        })
    }
}

#[async_trait]
impl super::SemanticStore for MemoryStore {
    async fn put_semantic(&self, row: &super::SemanticRow) -> StoreResult<()> {
        self.with(|s| {
            s.semantic.insert(row.id.clone(), row.clone());
            Ok(())
        })
    }

    async fn load_semantic(&self, now_ms: i64) -> StoreResult<Vec<super::SemanticRow>> {
        self.with(|s| {
            let mut rows: Vec<super::SemanticRow> = s
                .semantic
                .values()
                .filter(|r| r.expires_ms > now_ms)
                .cloned()
                .collect();
            rows.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            Ok(rows)
        })
    }

    async fn delete_semantic(&self, ids: &[String]) -> StoreResult<()> {
        self.with(|s| {
            for id in ids {
                s.semantic.remove(id);
            }
            Ok(())
        })
    }

    async fn purge_semantic(&self, now_ms: i64) -> StoreResult<u64> {
        self.with(|s| {
            let before = s.semantic.len();
            s.semantic.retain(|_, r| r.expires_ms > now_ms);
            Ok((before - s.semantic.len()) as u64)
        })
    }
}

#[async_trait]
impl super::AgentStore for MemoryStore {
    async fn list_agents(&self) -> StoreResult<Vec<super::AgentRecord>> {
        self.with(|s| Ok(s.agents.values().cloned().collect()))
    }

    async fn put_agent(&self, agent: &super::AgentRecord) -> StoreResult<bool> {
        self.with(|s| {
            let mut a = agent.clone();
            let created = match s.agents.get(&agent.name) {
                Some(prev) => {
                    a.created_ms = prev.created_ms;
                    false
                }
                None => true,
            };
            s.agents.insert(a.name.clone(), a);
            Ok(created)
        })
    }

    async fn delete_agent(&self, name: &str) -> StoreResult<bool> {
        self.with(|s| Ok(s.agents.remove(name).is_some()))
    }
}

#[async_trait]
impl McpStore for MemoryStore {
    async fn tool_pins(&self, server: Option<&str>) -> StoreResult<Vec<ToolPin>> {
        self.with(|s| {
            Ok(s.pins
                .values()
                .filter(|p| server.is_none_or(|x| p.server == x))
                .cloned()
                .collect())
        })
    }

    async fn pin_tool_if_absent(&self, pin: &ToolPin) -> StoreResult<ToolPin> {
        self.with(|s| {
            let key = (pin.server.clone(), pin.tool.clone());
            Ok(s.pins
                .entry(key)
                .or_insert_with(|| ToolPin {
                    pending_sha256: None,
                    pending_definition: None,
                    pending_ms: None,
                    ..pin.clone()
                })
                .clone())
        })
    }

    async fn set_pending_tool(
        &self,
        server: &str,
        tool: &str,
        sha256: &str,
        definition: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.with(|s| {
            if let Some(p) = s.pins.get_mut(&(server.to_owned(), tool.to_owned())) {
                if p.pending_sha256.as_deref() != Some(sha256) {
                    p.pending_sha256 = Some(sha256.to_owned());
                    p.pending_definition = Some(definition.to_owned());
                    p.pending_ms = Some(now_ms);
                }
            }
            Ok(())
        })
    }

    async fn approve_tool(
        &self,
        server: &str,
        tool: &str,
        sha256: &str,
        now_ms: i64,
    ) -> StoreResult<Option<ToolPin>> {
        self.with(|s| {
            let Some(p) = s.pins.get_mut(&(server.to_owned(), tool.to_owned())) else {
                return Ok(None);
            };
            if p.pending_sha256.as_deref() != Some(sha256) {
                return Ok(None);
            }
            p.sha256 = p.pending_sha256.take().unwrap_or_default();
            p.definition = p.pending_definition.take().unwrap_or_default();
            p.pending_ms = None;
            p.pinned_ms = now_ms;
            Ok(Some(p.clone()))
        })
    }

    async fn insert_approval(&self, a: &ApprovalRecord) -> StoreResult<()> {
        self.with(|s| {
            if s.approvals.contains_key(&a.id) {
                return Err(StoreError::Conflict(format!("approval {} exists", a.id)));
            }
            s.approvals.insert(a.id.clone(), a.clone());
            Ok(())
        })
    }

    async fn get_approval(&self, id: &str) -> StoreResult<Option<ApprovalRecord>> {
        self.with(|s| Ok(s.approvals.get(id).cloned()))
    }

    async fn list_approvals(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<ApprovalRecord>> {
        self.with(|s| {
            let mut all: Vec<ApprovalRecord> = s
                .approvals
                .values()
                .filter(|a| status.is_none_or(|x| a.status == x))
                .cloned()
                .collect();
            all.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
            all.truncate(limit as usize);
            Ok(all)
        })
    }

    async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<ApprovalRecord>> {
        self.with(|s| {
            let Some(a) = s.approvals.get_mut(id) else {
                return Ok(None);
            };
            if a.status != "pending" || a.expires_ms <= now_ms {
                return Ok(None);
            }
            a.status = if approve { "approved" } else { "denied" }.to_owned();
            a.decided_ms = Some(now_ms);
            a.decided_by = Some(by.to_owned());
            a.note = note.map(str::to_owned);
            Ok(Some(a.clone()))
        })
    }

    async fn consume_approval(
        &self,
        b: &ApprovalBinding,
        id: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<ApprovalRecord>> {
        self.with(|s| {
            let found = s
                .approvals
                .values_mut()
                .filter(|a| {
                    &a.binding == b
                        && a.status == "approved"
                        && a.expires_ms > now_ms
                        && id.is_none_or(|x| a.id == x)
                })
                .min_by(|x, y| (x.created_ms, &x.id).cmp(&(y.created_ms, &y.id)));
            Ok(found.map(|a| {
                a.status = "used".to_owned();
                a.used_ms = Some(now_ms);
                a.clone()
            }))
        })
    }
}
