//! The semantic cache: a request whose last user turn means nearly the same as one answered
//! before gets that answer, when everything else about the two requests is identical.
//!
//! What is compared:
//! - exactly (the *partition*): the tenant (the route's cache scope), the model group, the
//!   endpoint, the embedder, the system prompt, every earlier turn, the tools offered and
//!   every parameter that changes the output (the exact cache's normalisation);
//! - by meaning: the text of the last user turn, embedded to a unit vector and searched by
//!   cosine similarity in the partition's HNSW index; the nearest entry at or above the
//!   route's threshold answers.
//!
//! Requests that offer tools or carry tool calls or results are left alone unless the route
//! allows them (`tools: true`), and so is a last user turn that is not plain text. Entries
//! persist in the store (the index is rebuilt from them at start) and live the route's TTL.

pub mod embed;
pub mod hnsw;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tollgate_core::bus::{topic, Bus, Notice};
use tollgate_core::config::{RouteCache, SemanticCache as SemanticConfig};
use tollgate_core::hex;
use tollgate_core::identity::Principal;
use tollgate_core::store::{SemanticRow, SemanticStore};

use crate::cache::{digest, namespace, Stored, IGNORED};
use crate::provider::Endpoint;
use crate::translate;
use hnsw::Hnsw;

/// Nearest neighbours looked at per lookup (the best live one above the threshold answers).
const CANDIDATES: usize = 8;
/// How wide the search is; higher finds the true nearest more often, slower.
const EF_SEARCH: usize = 64;

/// What the semantic cache does for one request: where to look and what to embed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub partition: [u8; 32],
    /// The last user turn's text.
    pub text: String,
}

/// The plan for a request, or none when it does not qualify (see the module docs).
pub fn plan(
    cache: &RouteCache,
    semantic: &SemanticConfig,
    route: &str,
    endpoint: Endpoint,
    body: &[u8],
    principal: &Principal,
) -> Option<Plan> {
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    for field in IGNORED {
        req.remove(*field);
    }
    let Some(Value::Array(mut messages)) = req.remove("messages") else {
        return None;
    };
    if !semantic.tools && carries_tools(&req, &messages) {
        return None;
    }
    let last = messages.pop()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let text = plain_text(last.get("content")?)?;
    if text.trim().is_empty() {
        return None;
    }
    // Everything but the last turn's content must match exactly, its other fields included.
    let mut last_rest = match last {
        Value::Object(m) => m,
        _ => return None,
    };
    last_rest.remove("content");
    messages.push(Value::Object(last_rest));
    req.insert("messages".into(), Value::Array(messages));
    let mut canonical = Vec::with_capacity(body.len());
    tollgate_core::canonical::write(&Value::Object(req), &mut canonical);
    let partition = digest(&[
        b"semantic",
        semantic.embedder.id().as_bytes(),
        namespace(cache.scope, principal).as_bytes(),
        route.as_bytes(),
        endpoint.name().as_bytes(),
        &canonical,
    ]);
    Some(Plan { partition, text })
}

/// Tools offered, or tool calls or results in the conversation, in any dialect.
fn carries_tools(req: &Map<String, Value>, messages: &[Value]) -> bool {
    let offered = ["tools", "functions"].iter().any(|f| {
        req.get(*f)
            .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()))
    });
    offered
        || messages.iter().any(|m| {
            matches!(
                m.get("role").and_then(Value::as_str),
                Some("tool" | "function")
            ) || m.get("tool_calls").is_some()
                || m.get("function_call").is_some()
                || m.get("content")
                    .and_then(Value::as_array)
                    .is_some_and(|parts| {
                        parts.iter().any(|p| {
                            matches!(
                                p.get("type").and_then(Value::as_str),
                                Some("tool_use" | "tool_result" | "server_tool_use")
                            )
                        })
                    })
        })
}

/// A turn's content when it is only text: a string, or text parts (joined by newlines).
fn plain_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                if p.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(p.get("text")?.as_str()?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// One cached answer.
pub struct Entry {
    id: String,
    partition: [u8; 32],
    pub response: translate::Response,
    /// What the answer cost when it was bought.
    pub cost_usd: f64,
    expires_ms: i64,
    dead: AtomicBool,
}

impl Entry {
    fn alive(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms && !self.dead.load(Ordering::Relaxed)
    }
}

/// The entries that may answer each other, and their index.
struct Partition {
    index: Hnsw,
    /// By node number.
    entries: Vec<Arc<Entry>>,
}

pub struct SemanticCache {
    partitions: RwLock<HashMap<[u8; 32], Arc<RwLock<Partition>>>>,
    /// Entries in the order they came, for evicting the oldest.
    order: Mutex<VecDeque<Arc<Entry>>>,
    max_entries: AtomicU64,
    store: Arc<dyn SemanticStore>,
    /// Store writes, applied in order by one task off the request path.
    writes: Option<tokio::sync::mpsc::Sender<Write>>,
}

enum Write {
    Put(Box<SemanticRow>),
    Delete(Vec<String>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Store writes waiting beyond this are dropped (the entry still serves from memory).
const WRITE_QUEUE: usize = 4096;

/// Applies store writes in order; a stored entry is then published to the other replicas.
async fn write_entries(
    store: Arc<dyn SemanticStore>,
    bus: Arc<Bus>,
    mut rx: tokio::sync::mpsc::Receiver<Write>,
) {
    while let Some(w) = rx.recv().await {
        let result = match w {
            Write::Put(row) => {
                let stored = store.put_semantic(&row).await;
                if stored.is_ok() {
                    if let Ok(text) = serde_json::to_string(&row) {
                        bus.publish(topic::SEMANTIC, text).await;
                    }
                }
                stored
            }
            Write::Delete(ids) => store.delete_semantic(&ids).await,
            Write::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not write the semantic cache to the store");
        }
    }
}

impl SemanticCache {
    /// A cache writing through to `store`; call within a Tokio runtime (without one, nothing
    /// is persisted).
    pub fn new(store: Arc<dyn SemanticStore>, max_entries: u64) -> SemanticCache {
        SemanticCache::shared(store, max_entries, Bus::local())
    }

    /// A cache whose new entries are published on `bus`, for the other replicas to index
    /// (see [`SemanticCache::follow`]).
    pub fn shared(store: Arc<dyn SemanticStore>, max_entries: u64, bus: Arc<Bus>) -> SemanticCache {
        let writes = tokio::runtime::Handle::try_current().ok().map(|h| {
            let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
            h.spawn(write_entries(store.clone(), bus, rx));
            tx
        });
        SemanticCache {
            partitions: RwLock::default(),
            order: Mutex::default(),
            max_entries: AtomicU64::new(max_entries),
            store,
            writes,
        }
    }

    fn write(&self, w: Write) {
        if let Some(tx) = &self.writes {
            if tx.try_send(w).is_err() {
                tracing::warn!("semantic cache store writes are behind: one dropped");
            }
        }
    }

    /// Waits until every store write asked for so far is done.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(w) = &self.writes {
            if w.send(Write::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    pub fn set_max_entries(&self, n: u64) {
        self.max_entries.store(n, Ordering::Relaxed);
    }

    /// Entries held (the dead ones not yet swept included).
    pub fn len(&self) -> usize {
        self.order.lock().map_or(0, |o| o.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most similar live entry of a partition at or above `threshold`, with its score.
    pub fn lookup(
        &self,
        partition: &[u8; 32],
        vector: &[f32],
        threshold: f32,
        now_ms: i64,
    ) -> Option<(Arc<Entry>, f32)> {
        let p = self.partitions.read().ok()?.get(partition)?.clone();
        let p = p.read().ok()?;
        p.index
            .search(vector, CANDIDATES, EF_SEARCH)
            .into_iter()
            .take_while(|(_, score)| *score >= threshold)
            .find_map(|(node, score)| {
                let e = p.entries.get(node as usize)?;
                e.alive(now_ms).then(|| (e.clone(), score.min(1.0)))
            })
    }

    /// Adds an entry in memory (not in the store); returns it, or none for a vector of the
    /// wrong dimension.
    fn add(&self, entry: Entry, vector: &[f32]) -> Option<Arc<Entry>> {
        let entry = Arc::new(entry);
        let partition = {
            let mut map = self.partitions.write().ok()?;
            map.entry(entry.partition)
                .or_insert_with(|| {
                    Arc::new(RwLock::new(Partition {
                        index: Hnsw::new(vector.len()),
                        entries: Vec::new(),
                    }))
                })
                .clone()
        };
        {
            let mut p = partition.write().ok()?;
            if p.index.dim() != vector.len() {
                return None;
            }
            p.index.insert(vector);
            p.entries.push(entry.clone());
        }
        self.order.lock().ok()?.push_back(entry.clone());
        Some(entry)
    }

    /// Keeps an answer: in memory now, in the store off the request path. The oldest entries
    /// go when there are more than the configured most.
    pub fn insert(
        self: &Arc<Self>,
        plan: &Plan,
        route: &str,
        vector: &[f32],
        response: translate::Response,
        cost_usd: f64,
        ttl: Duration,
    ) {
        let now = tollgate_core::time::now_ms();
        let expires_ms = now.saturating_add(ttl.as_millis() as i64);
        let id = hex::encode(&fastrand::u128(..).to_be_bytes());
        let Ok(json) = serde_json::to_string(&Stored { response, cost_usd }) else {
            return;
        };
        let Ok(Stored { response, cost_usd }) = serde_json::from_str(&json) else {
            return;
        };
        let row = SemanticRow {
            id: id.clone(),
            partition: hex::encode(&plan.partition),
            route: route.to_owned(),
            vector: vector.to_vec(),
            entry: json,
            created_ms: now,
            expires_ms,
        };
        let added = self.add(
            Entry {
                id,
                partition: plan.partition,
                response,
                cost_usd,
                expires_ms,
                dead: AtomicBool::new(false),
            },
            vector,
        );
        if added.is_none() {
            return;
        }
        self.write(Write::Put(Box::new(row)));
        let evicted = self.evict_over_limit();
        if !evicted.is_empty() {
            self.write(Write::Delete(evicted));
        }
    }

    /// Marks the oldest entries dead while there are too many; returns their ids.
    fn evict_over_limit(&self) -> Vec<String> {
        let max = self.max_entries.load(Ordering::Relaxed) as usize;
        let Ok(mut order) = self.order.lock() else {
            return Vec::new();
        };
        let mut evicted = Vec::new();
        while order.len() > max {
            if let Some(e) = order.pop_front() {
                if !e.dead.swap(true, Ordering::Relaxed) {
                    evicted.push(e.id.clone());
                }
            }
        }
        evicted
    }

    /// Loads the stored entries alive now and indexes them; returns how many.
    pub async fn load(self: &Arc<Self>) -> Result<usize, String> {
        let rows = self
            .store
            .load_semantic(tollgate_core::time::now_ms())
            .await
            .map_err(|e| e.to_string())?;
        self.add_rows(rows).await
    }

    /// Indexes stored entries (from the store, or from another replica); returns how many.
    async fn add_rows(self: &Arc<Self>, rows: Vec<SemanticRow>) -> Result<usize, String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let now = tollgate_core::time::now_ms();
            let mut n = 0;
            for row in rows {
                let (Some(partition), Ok(stored)) = (
                    hex::decode32(&row.partition),
                    serde_json::from_str::<Stored>(&row.entry),
                ) else {
                    continue;
                };
                if row.expires_ms <= now {
                    continue;
                }
                let entry = Entry {
                    id: row.id,
                    partition,
                    response: stored.response,
                    cost_usd: stored.cost_usd,
                    expires_ms: row.expires_ms,
                    dead: AtomicBool::new(false),
                };
                if this.add(entry, &row.vector).is_some() {
                    n += 1;
                }
            }
            let evicted = this.evict_over_limit();
            (n, evicted)
        })
        .await
        .map_err(|e| e.to_string())
        .map(|(n, evicted)| {
            if !evicted.is_empty() {
                self.write(Write::Delete(evicted));
            }
            n
        })
    }

    /// Indexes the entries other replicas store, as their notices arrive (subscribe before
    /// loading the stored entries, so none falls between), until the bus closes. A notice missed (Redis away for a while) costs only cache hits: the entry is
    /// in the store and every replica indexes it at its next start.
    pub async fn follow(self: Arc<Self>, mut notices: tokio::sync::broadcast::Receiver<Notice>) {
        loop {
            match notices.recv().await {
                Ok(n) if n.topic == topic::SEMANTIC => {
                    match serde_json::from_str::<SemanticRow>(&n.payload) {
                        Ok(row) => {
                            if let Err(e) = self.add_rows(vec![row]).await {
                                tracing::warn!(error = %e, "could not index a shared semantic cache entry");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed semantic cache notice")
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "semantic cache notices fell behind; some shared entries are not indexed here");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Forgets expired and evicted entries: drops them from the store and rebuilds each
    /// partition's index where they have become at least half of it.
    pub async fn sweep(self: &Arc<Self>) {
        let now = tollgate_core::time::now_ms();
        if let Ok(mut order) = self.order.lock() {
            order.retain(|e| e.alive(now));
        }
        if let Err(e) = self.store.purge_semantic(now).await {
            tracing::warn!(error = %e, "could not purge expired semantic cache entries");
        }
        let partitions: Vec<([u8; 32], Arc<RwLock<Partition>>)> = match self.partitions.read() {
            Ok(map) => map.iter().map(|(k, v)| (*k, v.clone())).collect(),
            Err(_) => return,
        };
        for (key, partition) in partitions {
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.compact(key, &partition, now)).await;
        }
    }

    /// Rebuilds one partition's index from its live entries when half of it is dead; drops
    /// the partition when nothing in it lives. Lookups keep using the old index meanwhile.
    fn compact(&self, key: [u8; 32], partition: &RwLock<Partition>, now: i64) {
        let (live, seen, dim) = {
            let Ok(p) = partition.read() else { return };
            let live: Vec<(Arc<Entry>, Vec<f32>)> = p
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.alive(now))
                .filter_map(|(i, e)| Some((e.clone(), p.index.vector_of(i as u32)?.to_vec())))
                .collect();
            if live.len() * 2 > p.entries.len() {
                return;
            }
            (live, p.entries.len(), p.index.dim())
        };
        let mut index = Hnsw::new(dim);
        let mut entries = Vec::with_capacity(live.len());
        for (e, v) in live {
            index.insert(&v);
            entries.push(e);
        }
        let Ok(mut p) = partition.write() else { return };
        // Entries added while the new index was built.
        for i in seen..p.entries.len() {
            if let Some(v) = p.index.vector_of(i as u32).map(<[f32]>::to_vec) {
                index.insert(&v);
                entries.push(p.entries[i].clone());
            }
        }
        p.index = index;
        p.entries = entries;
        if p.entries.is_empty() {
            drop(p);
            if let Ok(mut map) = self.partitions.write() {
                if map
                    .get(&key)
                    .and_then(|p| p.read().ok().map(|p| p.entries.is_empty()))
                    .unwrap_or(false)
                {
                    map.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::config::{CacheScope, CacheWhen, Embedder};

    fn cfgs(tools: bool) -> (RouteCache, SemanticConfig) {
        let s = SemanticConfig {
            threshold: 0.9,
            embedder: Embedder::Builtin,
            tools,
        };
        let c = RouteCache {
            ttl: Duration::from_secs(60),
            scope: CacheScope::Team,
            when: CacheWhen::Always,
            semantic: Some(s.clone()),
        };
        (c, s)
    }

    fn plan_of(body: &str, team: &str, tools: bool) -> Option<Plan> {
        let (c, s) = cfgs(tools);
        let mut p = Principal::master();
        p.team = Some(team.into());
        plan(&c, &s, "g", Endpoint::Chat, body.as_bytes(), &p)
    }

    #[test]
    fn the_partition_is_everything_but_the_last_user_turn() {
        let a = plan_of(r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is the capital of France?"}]}"#, "t", false).unwrap();
        assert_eq!(a.text, "What is the capital of France?");
        let b = plan_of(r#"{"model":"other","stream":true,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"Tell me France's capital city"}]}]}"#, "t", false).unwrap();
        assert_eq!(b.text, "Tell me France's capital city");
        assert_eq!(a.partition, b.partition);
        let other_system = plan_of(r#"{"messages":[{"role":"system","content":"be long"},{"role":"user","content":"What is the capital of France?"}]}"#, "t", false).unwrap();
        assert_ne!(a.partition, other_system.partition);
        let other_team = plan_of(r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is the capital of France?"}]}"#, "u", false).unwrap();
        assert_ne!(a.partition, other_team.partition);
        let other_params = plan_of(r#"{"temperature":1,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is the capital of France?"}]}"#, "t", false).unwrap();
        assert_ne!(a.partition, other_params.partition);
    }

    #[test]
    fn tools_images_and_non_user_turns_do_not_qualify() {
        let with_tools = r#"{"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(plan_of(with_tools, "t", false).is_none());
        assert!(plan_of(with_tools, "t", true).is_some());
        let tool_result = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","tool_calls":[]},{"role":"tool","content":"x"},{"role":"user","content":"and?"}]}"#;
        assert!(plan_of(tool_result, "t", false).is_none());
        let image = r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert!(plan_of(image, "t", true).is_none());
        let assistant_last = r#"{"messages":[{"role":"assistant","content":"hi"}]}"#;
        assert!(plan_of(assistant_last, "t", false).is_none());
        assert!(plan_of(
            r#"{"messages":[{"role":"user","content":"  "}]}"#,
            "t",
            false
        )
        .is_none());
        assert!(plan_of("not json", "t", false).is_none());
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        hnsw::normalise(&mut v);
        v
    }

    fn answer(text: &str) -> translate::Response {
        translate::Response {
            id: "r".into(),
            model: "m".into(),
            content: vec![translate::Block::text(text, "content")],
            stop: translate::Stop::End,
            usage: Default::default(),
            created: None,
        }
    }

    #[tokio::test]
    async fn lookups_honour_threshold_partition_expiry_and_the_entry_limit() {
        let store: Arc<dyn SemanticStore> = Arc::new(tollgate_core::store::MemoryStore::default());
        let cache = Arc::new(SemanticCache::new(store.clone(), 3));
        let p = Plan {
            partition: [1; 32],
            text: String::new(),
        };
        let ttl = Duration::from_secs(60);
        cache.insert(&p, "g", &unit(&[1.0, 0.0, 0.0]), answer("x"), 0.5, ttl);
        let now = tollgate_core::time::now_ms();
        let (hit, score) = cache
            .lookup(&p.partition, &unit(&[1.0, 0.1, 0.0]), 0.9, now)
            .unwrap();
        assert!(score > 0.99 && score <= 1.0, "{score}");
        assert_eq!(hit.cost_usd, 0.5);
        assert!(cache
            .lookup(&p.partition, &unit(&[1.0, 1.0, 0.0]), 0.9, now)
            .is_none());
        assert!(cache
            .lookup(&[2; 32], &unit(&[1.0, 0.0, 0.0]), 0.9, now)
            .is_none());
        assert!(cache
            .lookup(&p.partition, &unit(&[1.0, 0.0, 0.0]), 0.9, now + 61_000)
            .is_none());
        for i in 0..3 {
            cache.insert(&p, "g", &unit(&[0.0, 1.0, i as f32]), answer("y"), 0.0, ttl);
        }
        assert!(
            cache
                .lookup(&p.partition, &unit(&[1.0, 0.0, 0.0]), 0.9, now)
                .is_none(),
            "the oldest entry was evicted"
        );
        // What the store holds comes back after a restart.
        cache.flush().await;
        assert_eq!(store.load_semantic(0).await.unwrap().len(), 3);
        let again = Arc::new(SemanticCache::new(store, 10));
        assert_eq!(again.load().await.unwrap(), 3);
        assert!(again
            .lookup(&p.partition, &unit(&[0.0, 1.0, 0.0]), 0.99, now)
            .is_some());
    }
}
