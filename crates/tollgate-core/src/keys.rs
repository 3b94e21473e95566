//! Virtual keys and the master key: minting secrets, hashing them, and authenticating requests
//! from an in-memory snapshot.
//!
//! Secrets are 256 random bits shown once and stored only as SHA-256. Authentication never
//! touches the store: it hashes the presented secret and looks it up in an immutable snapshot
//! (`arc-swap`) that is rebuilt whenever a key changes, in this process or (noticed through the
//! store's change counter) in another one such as `tollgate keys create`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};
use crate::glob::Glob;
use crate::identity::Principal;
use crate::store::{
    DirectoryStore, KeyRecord, KeySecret, KeyStore, KeyUpdate, Limits, MetaStore, Page, SecretHash,
    StoreError, TeamRecord, UserRecord,
};

/// Every virtual key secret starts with this, so leaked keys are recognisable by scanners.
pub const KEY_PREFIX: &str = "tg-";
const MASTER_HASH_META: &str = "master_key_sha256";
const PREFIX_SHOWN: usize = 10;

pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)
        .map_err(|e| ApiError::internal(format!("no randomness available: {e}")))?;
    Ok(buf)
}

/// A new random secret: the prefix and 43 base64url characters (256 bits).
pub fn mint_secret(prefix: &str) -> Result<String, ApiError> {
    let bytes = random_bytes::<32>()?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn mint_id() -> Result<String, ApiError> {
    let bytes = random_bytes::<10>()?;
    let mut id = String::from("key_");
    crate::hex::push(&mut id, &bytes);
    Ok(id)
}

fn shown_prefix(secret: &str) -> String {
    secret.chars().take(PREFIX_SHOWN).collect()
}

/// The secret digests are uniformly random, so their first eight bytes are already a good hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (i * 8);
        }
    }
}

struct Entry {
    principal: Arc<Principal>,
    secret_expires_at: Option<i64>,
    key_expires_at: Option<i64>,
    enabled: bool,
}

#[derive(Default)]
struct Snapshot {
    by_hash: HashMap<SecretHash, Entry, BuildHasherDefault<DigestHasher>>,
}

/// What a caller asks for when creating a key.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    pub models: Vec<String>,
    pub expires_at: Option<i64>,
    pub enabled: bool,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub limits: Limits,
}

pub struct KeyService {
    store: Arc<dyn KeyStore>,
    directory: Arc<dyn DirectoryStore>,
    snapshot: ArcSwap<Snapshot>,
    master_hash: ArcSwap<Option<SecretHash>>,
    master: Arc<Principal>,
    seen_seq: AtomicI64,
    /// Serialises refreshes: a slow refresh must never install a snapshot older than one a
    /// faster, later refresh (say, right after a revoke) already installed.
    refreshing: tokio::sync::Mutex<()>,
    /// Tells the other replicas about writes made here.
    bus: Arc<crate::bus::Bus>,
    /// Where the master key's hash lives, when this process follows a stored (not configured)
    /// master key: a rotation by another process or replica is picked up on refresh.
    stored_master: ArcSwap<Option<Arc<dyn MetaStore>>>,
}

/// The outcome of settling which master key a process uses.
pub enum MasterKey {
    /// From config or `TOLLGATE_MASTER_KEY`.
    Configured,
    /// A hash stored by an earlier run.
    Stored,
    /// Freshly generated: show it once, it is stored only as a hash.
    Generated(String),
}

impl KeyService {
    pub async fn new(
        store: Arc<dyn KeyStore>,
        directory: Arc<dyn DirectoryStore>,
    ) -> Result<KeyService, StoreError> {
        let svc = KeyService {
            store,
            directory,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            master_hash: ArcSwap::from_pointee(None),
            master: Arc::new(Principal::master()),
            seen_seq: AtomicI64::new(-1),
            refreshing: tokio::sync::Mutex::new(()),
            bus: crate::bus::Bus::local(),
            stored_master: ArcSwap::from_pointee(None),
        };
        svc.refresh().await?;
        Ok(svc)
    }

    /// Publishes this service's writes to the other replicas on `bus`.
    pub fn with_bus(mut self, bus: Arc<crate::bus::Bus>) -> KeyService {
        self.bus = bus;
        self
    }

    /// Decides the master key: the configured one if any; else the hash a previous run stored;
    /// else a new random key whose hash is stored.
    pub async fn settle_master(
        &self,
        configured: Option<&str>,
        meta: &Arc<dyn MetaStore>,
    ) -> Result<MasterKey, ApiError> {
        if let Some(k) = configured {
            self.stored_master.store(Arc::new(None));
            let hash = hash_secret(k);
            // Replace any stored (e.g. generated) key: if the configured one is removed later,
            // the last key the operator chose keeps working, not an older one.
            meta.set_meta(MASTER_HASH_META, &crate::hex::encode(&hash))
                .await?;
            self.master_hash.store(Arc::new(Some(hash)));
            return Ok(MasterKey::Configured);
        }
        let fresh = mint_secret("tg-master-")?;
        let fresh_hex = crate::hex::encode(&hash_secret(&fresh));
        let stored = meta
            .set_meta_if_absent(MASTER_HASH_META, &fresh_hex)
            .await?;
        let hash = crate::hex::decode32(&stored)
            .ok_or_else(|| ApiError::internal("stored master key hash is corrupt"))?;
        self.master_hash.store(Arc::new(Some(hash)));
        self.stored_master.store(Arc::new(Some(meta.clone())));
        Ok(if stored == fresh_hex {
            MasterKey::Generated(fresh)
        } else {
            MasterKey::Stored
        })
    }

    /// Replaces a stored master key with a fresh one, returned once (only its hash is kept). The
    /// old key stops working here at once and on other replicas at their next refresh (at once
    /// with a bus). Refused while the master key comes from the config: change it there.
    pub async fn rotate_master(&self, meta: &dyn MetaStore) -> Result<String, ApiError> {
        if self.stored_master.load().is_none() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "the master key comes from the config (master_key or TOLLGATE_MASTER_KEY): change it there and reload",
            )
            .code("master_key_configured"));
        }
        let fresh = mint_secret("tg-master-")?;
        let hash = hash_secret(&fresh);
        meta.set_meta(MASTER_HASH_META, &crate::hex::encode(&hash))
            .await?;
        self.master_hash.store(Arc::new(Some(hash)));
        self.bus
            .publish(crate::bus::topic::KEYS, String::new())
            .await;
        Ok(fresh)
    }

    /// Follows a stored master key's rotation by another process.
    async fn reload_stored_master(&self) -> Result<(), StoreError> {
        let Some(meta) = self.stored_master.load_full().as_ref().clone() else {
            return Ok(());
        };
        if let Some(hash) = meta
            .get_meta(MASTER_HASH_META)
            .await?
            .and_then(|h| crate::hex::decode32(&h))
        {
            if self.master_hash.load().as_ref() != &Some(hash) {
                tracing::info!("the stored master key was rotated; following it");
                self.master_hash.store(Arc::new(Some(hash)));
            }
        }
        Ok(())
    }

    /// Resolves a presented secret to a principal. Never touches the store.
    pub fn authenticate(&self, secret: &str, now: i64) -> Result<Arc<Principal>, ApiError> {
        self.principal_by_hash(&hash_secret(secret), now)
    }

    /// The principal whose secret hashes to `hash` (an admin console session holds the hash of
    /// the secret it was opened with, so a revoked, disabled or rotated-away key ends it).
    pub fn principal_by_hash(
        &self,
        hash: &SecretHash,
        now: i64,
    ) -> Result<Arc<Principal>, ApiError> {
        let hash = *hash;
        if let Some(master) = self.master_hash.load().as_ref() {
            if bool::from(master.ct_eq(&hash)) {
                return Ok(self.master.clone());
            }
        }
        let snap = self.snapshot.load();
        let invalid =
            || ApiError::new(ErrorKind::Unauthenticated, "invalid API key").code("invalid_api_key");
        let Some(entry) = snap.by_hash.get(&hash) else {
            return Err(invalid());
        };
        if entry.secret_expires_at.is_some_and(|t| t <= now) {
            return Err(invalid());
        }
        if entry.key_expires_at.is_some_and(|t| t <= now) {
            return Err(
                ApiError::new(ErrorKind::Unauthenticated, "API key has expired")
                    .code("expired_api_key"),
            );
        }
        if !entry.enabled {
            return Err(
                ApiError::new(ErrorKind::Unauthenticated, "API key is disabled")
                    .code("disabled_api_key"),
            );
        }
        Ok(entry.principal.clone())
    }

    /// Whether `secret` is the master key (for the admin API).
    pub fn is_master(&self, secret: &str) -> bool {
        let hash = hash_secret(secret);
        self.master_hash
            .load()
            .as_ref()
            .is_some_and(|m| bool::from(m.ct_eq(&hash)))
    }

    /// Rebuilds the snapshot from the store.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let seq = self.store.change_seq().await?;
        let now = crate::time::now();
        let active = self.store.load_active(now).await?;
        let users: HashMap<String, UserRecord> = self
            .directory
            .list_users()
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        let teams: HashMap<String, TeamRecord> = self
            .directory
            .list_teams()
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let mut snap = Snapshot::default();
        for (key, secrets) in active {
            let user = key.user.as_ref().and_then(|u| users.get(u));
            let team_id = key.team.as_ref().or(user.and_then(|u| u.team.as_ref()));
            let team = team_id.and_then(|t| teams.get(t));
            let principal = Arc::new(Principal::from_key_in(&key, user, team));
            for s in secrets {
                snap.by_hash.insert(
                    s.hash,
                    Entry {
                        principal: principal.clone(),
                        secret_expires_at: s.expires_at,
                        key_expires_at: key.expires_at,
                        enabled: key.enabled,
                    },
                );
            }
        }
        self.snapshot.store(Arc::new(snap));
        self.seen_seq.store(seq, Ordering::Release);
        Ok(())
    }

    /// Refreshes only if the store changed since the last refresh.
    pub async fn refresh_if_changed(&self) -> Result<bool, StoreError> {
        self.reload_stored_master().await?;
        let seq = self.store.change_seq().await?;
        if seq == self.seen_seq.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.refresh().await?;
        Ok(true)
    }

    /// After a committed write (of keys, users or teams): refresh now and tell the other
    /// replicas. A failure is logged, not returned: the change is in the store (a new secret
    /// must still reach the caller) and the refresher retries.
    pub async fn refresh_after_write(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "key cache refresh after a write failed; the refresher will retry");
        }
        self.bus
            .publish(crate::bus::topic::KEYS, String::new())
            .await;
    }

    /// Follows changes by other processes until `stop` resolves: at once when a change notice
    /// arrives on the bus, and by polling the store's change counter every `every()` (which
    /// also covers processes without a bus, such as `tollgate keys` on the command line).
    ///
    /// Subscribes before it first runs, then catches up at once: nothing written between the
    /// initial load and the subscription is missed.
    pub fn run_refresher(
        self: Arc<Self>,
        every: impl Fn() -> Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> {
        let mut notices = self.bus.subscribe();
        async move {
            if let Err(e) = self.refresh_if_changed().await {
                tracing::warn!(error = %e, "key cache refresh failed; serving the previous snapshot");
            }
            // A deadline, not a sleep restarted on every notice: notices of other topics (one
            // per semantic-cache entry) must not postpone the poll.
            let mut next_poll = tokio::time::Instant::now() + every();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_poll) => {}
                    n = notices.recv() => match n {
                        Ok(n) if !n.concerns(crate::bus::topic::KEYS) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            notices = self.bus.subscribe();
                            continue;
                        }
                        _ => {}
                    },
                    _ = stop.changed() => return,
                }
                next_poll = tokio::time::Instant::now() + every();
                if let Err(e) = self.refresh_if_changed().await {
                    tracing::warn!(error = %e, "key cache refresh failed; serving the previous snapshot");
                }
            }
        }
    }

    /// Keys may only name users and teams that exist.
    async fn check_refs(&self, user: Option<&str>, team: Option<&str>) -> Result<(), ApiError> {
        if let Some(u) = user {
            if !self.directory.list_users().await?.iter().any(|x| x.id == u) {
                return Err(
                    ApiError::invalid(format!("no user {u:?}: create it first")).param("user")
                );
            }
        }
        if let Some(t) = team {
            if !self.directory.list_teams().await?.iter().any(|x| x.id == t) {
                return Err(
                    ApiError::invalid(format!("no team {t:?}: create it first")).param("team")
                );
            }
        }
        Ok(())
    }

    pub async fn create(&self, new: NewKey) -> Result<(KeyRecord, String), ApiError> {
        validate_key_fields(Some(&new.name), new.models.iter(), Some(&new.limits))?;
        self.check_refs(new.user.as_deref(), new.team.as_deref())
            .await?;
        let secret = mint_secret(KEY_PREFIX)?;
        let now = crate::time::now();
        let record = KeyRecord {
            id: mint_id()?,
            name: new.name,
            user: new.user,
            team: new.team,
            models: new.models,
            expires_at: new.expires_at,
            enabled: new.enabled,
            revoked_at: None,
            metadata: new.metadata,
            limits: new.limits,
            secret_prefix: shown_prefix(&secret),
            created_at: now,
            updated_at: now,
        };
        self.store
            .insert_key(
                &record,
                &KeySecret {
                    hash: hash_secret(&secret),
                    expires_at: None,
                },
            )
            .await?;
        self.refresh_after_write().await;
        Ok((record, secret))
    }

    pub async fn get(&self, id: &str) -> Result<KeyRecord, ApiError> {
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| key_not_found(id))
    }

    pub async fn list(&self, page: &Page) -> Result<Vec<KeyRecord>, ApiError> {
        Ok(self.store.list_keys(page).await?)
    }

    pub async fn update(&self, id: &str, update: &KeyUpdate) -> Result<KeyRecord, ApiError> {
        validate_key_fields(
            update.name.as_ref(),
            update.models.iter().flatten(),
            update.limits.as_ref(),
        )?;
        self.check_refs(
            update.user.as_ref().and_then(|u| u.as_deref()),
            update.team.as_ref().and_then(|t| t.as_deref()),
        )
        .await?;
        let key = self
            .store
            .update_key(id, update, crate::time::now())
            .await?
            .ok_or_else(|| key_not_found(id))?;
        self.refresh_after_write().await;
        Ok(key)
    }

    pub async fn revoke(&self, id: &str) -> Result<KeyRecord, ApiError> {
        let key = self
            .store
            .revoke_key(id, crate::time::now())
            .await?
            .ok_or_else(|| key_not_found(id))?;
        self.refresh_after_write().await;
        Ok(key)
    }

    /// Issues a new secret; the old ones keep working for `grace`.
    pub async fn rotate(&self, id: &str, grace: Duration) -> Result<(KeyRecord, String), ApiError> {
        let secret = mint_secret(KEY_PREFIX)?;
        let now = crate::time::now();
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX / 2);
        let key = self
            .store
            .rotate_key(
                id,
                &KeySecret {
                    hash: hash_secret(&secret),
                    expires_at: None,
                },
                &shown_prefix(&secret),
                now.saturating_add(grace),
                now,
            )
            .await?
            .ok_or_else(|| key_not_found(id))?;
        self.refresh_after_write().await;
        Ok((key, secret))
    }
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no key with id {id:?}")).code("key_not_found")
}

fn validate_key_fields<'a>(
    name: Option<&String>,
    models: impl Iterator<Item = &'a String>,
    limits: Option<&Limits>,
) -> Result<(), ApiError> {
    if let Some(l) = limits {
        l.check()?;
    }
    if let Some(name) = name {
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "name must be 1-200 characters without control characters",
            )
            .param("name"));
        }
    }
    for m in models {
        if m.is_empty() || m.len() > 256 || m.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!("invalid model pattern {m:?}")).param("models"));
        }
    }
    Ok(())
}

/// Compiles a key's model patterns.
pub fn compile_patterns(models: &[String]) -> Vec<Glob> {
    models.iter().map(|m| Glob::new(m.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    async fn service() -> (KeyService, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::default());
        (
            KeyService::new(store.clone(), store.clone()).await.unwrap(),
            store,
        )
    }

    #[tokio::test]
    async fn secrets_are_random_prefixed_and_stored_hashed() {
        let (svc, store) = service().await;
        let (rec, secret) = svc
            .create(NewKey {
                name: "a".into(),
                enabled: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(secret.starts_with(KEY_PREFIX));
        assert_eq!(secret.len(), KEY_PREFIX.len() + 43);
        assert!(rec.secret_prefix.len() < secret.len());
        let (_, other) = svc
            .create(NewKey {
                name: "b".into(),
                enabled: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_ne!(secret, other);
        for (record, _) in store.load_active(0).await.unwrap() {
            let stored = serde_json::to_string(&record).unwrap();
            assert!(
                !stored.contains(&secret) && !stored.contains(&other),
                "secret stored in clear"
            );
        }
        let p = svc.authenticate(&secret, crate::time::now()).unwrap();
        assert_eq!(p.key_id.as_deref(), Some(rec.id.as_str()));
    }

    #[tokio::test]
    async fn disabled_expired_revoked_and_rotated() {
        let (svc, _) = service().await;
        let now = crate::time::now();
        let (rec, secret) = svc
            .create(NewKey {
                name: "a".into(),
                enabled: true,
                expires_at: Some(now + 100),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(svc.authenticate(&secret, now).is_ok());
        let err = svc.authenticate(&secret, now + 100).unwrap_err();
        assert_eq!(err.code, Some("expired_api_key"));

        svc.update(
            &rec.id,
            &KeyUpdate {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            svc.authenticate(&secret, now).unwrap_err().code,
            Some("disabled_api_key")
        );
        svc.update(
            &rec.id,
            &KeyUpdate {
                enabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();

        let (_, new_secret) = svc.rotate(&rec.id, Duration::from_secs(60)).await.unwrap();
        assert!(svc.authenticate(&new_secret, now).is_ok());
        assert!(
            svc.authenticate(&secret, now).is_ok(),
            "old secret works during grace"
        );
        assert!(
            svc.authenticate(&secret, now + 61).is_err(),
            "and not after"
        );

        svc.revoke(&rec.id).await.unwrap();
        assert!(svc.authenticate(&new_secret, now).is_err());
        assert_eq!(
            svc.authenticate("tg-nope", now).unwrap_err().code,
            Some("invalid_api_key")
        );
    }

    #[tokio::test]
    async fn master_key_generated_once_then_stored() {
        let (svc, store) = service().await;
        let meta: Arc<dyn MetaStore> = store.clone();
        let MasterKey::Generated(k) = svc.settle_master(None, &meta).await.unwrap() else {
            panic!("expected a generated key");
        };
        assert!(svc.is_master(&k));
        assert!(svc.authenticate(&k, 0).unwrap().is_master);
        let svc2 = KeyService::new(store.clone(), store.clone()).await.unwrap();
        assert!(matches!(
            svc2.settle_master(None, &meta).await.unwrap(),
            MasterKey::Stored
        ));
        assert!(svc2.is_master(&k));

        // Rotation: the new key works at once here, and on the other process at its refresh.
        let rotated = svc.rotate_master(meta.as_ref()).await.unwrap();
        assert!(svc.is_master(&rotated) && !svc.is_master(&k));
        assert!(svc2.is_master(&k), "not yet refreshed");
        svc2.refresh_if_changed().await.unwrap();
        assert!(svc2.is_master(&rotated) && !svc2.is_master(&k));

        let svc3 = KeyService::new(store.clone(), store.clone()).await.unwrap();
        svc3.settle_master(Some("configured-master-key"), &meta)
            .await
            .unwrap();
        assert!(svc3.is_master("configured-master-key"));
        assert!(!svc3.is_master(&rotated));
        // A configured master key is rotated in the config, not here.
        let refused = svc3.rotate_master(meta.as_ref()).await.unwrap_err();
        assert_eq!(refused.code, Some("master_key_configured"));
    }

    /// Counts store reads, to prove authentication never touches the store.
    struct Counting {
        inner: MemoryStore,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl KeyStore for Counting {
        async fn insert_key(&self, k: &KeyRecord, s: &KeySecret) -> crate::store::StoreResult<()> {
            self.inner.insert_key(k, s).await
        }
        async fn get_key(&self, id: &str) -> crate::store::StoreResult<Option<KeyRecord>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.get_key(id).await
        }
        async fn list_keys(&self, p: &Page) -> crate::store::StoreResult<Vec<KeyRecord>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.list_keys(p).await
        }
        async fn update_key(
            &self,
            id: &str,
            u: &KeyUpdate,
            now: i64,
        ) -> crate::store::StoreResult<Option<KeyRecord>> {
            self.inner.update_key(id, u, now).await
        }
        async fn revoke_key(
            &self,
            id: &str,
            now: i64,
        ) -> crate::store::StoreResult<Option<KeyRecord>> {
            self.inner.revoke_key(id, now).await
        }
        async fn rotate_key(
            &self,
            id: &str,
            s: &KeySecret,
            p: &str,
            o: i64,
            now: i64,
        ) -> crate::store::StoreResult<Option<KeyRecord>> {
            self.inner.rotate_key(id, s, p, o, now).await
        }
        async fn load_active(
            &self,
            now: i64,
        ) -> crate::store::StoreResult<Vec<(KeyRecord, Vec<KeySecret>)>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.load_active(now).await
        }
        async fn change_seq(&self) -> crate::store::StoreResult<i64> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.change_seq().await
        }
    }

    #[tokio::test]
    async fn authentication_never_reads_the_store() {
        let store = Arc::new(Counting {
            inner: MemoryStore::default(),
            reads: Default::default(),
        });
        let directory = Arc::new(MemoryStore::default());
        let svc = KeyService::new(store.clone(), directory).await.unwrap();
        let (_, secret) = svc
            .create(NewKey {
                name: "x".into(),
                enabled: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let before = store.reads.load(Ordering::SeqCst);
        for _ in 0..1000 {
            assert!(svc.authenticate(&secret, 0).is_ok());
            assert!(svc.authenticate("tg-wrong", 0).is_err());
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn notices_changes_made_by_another_process() {
        let store = Arc::new(MemoryStore::default());
        let a = KeyService::new(store.clone(), store.clone()).await.unwrap();
        let b = KeyService::new(store.clone(), store.clone()).await.unwrap();
        let (_, secret) = a
            .create(NewKey {
                name: "x".into(),
                enabled: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(b.authenticate(&secret, 0).is_err());
        assert!(b.refresh_if_changed().await.unwrap());
        assert!(b.authenticate(&secret, 0).is_ok());
        assert!(!b.refresh_if_changed().await.unwrap());
    }
}
