//! Execution quotas: how many calls of a tool (or of a server's tools), or of an agent's A2A
//! method (or of all its methods), a principal, user, team, agent or everyone may make per
//! minute, hour and day, and how many may run at once.
//!
//! Each window is a sliding window like a rate limit's (see [`crate::ratelimit`]): 30 slots
//! of a minute, an hour or a day, so no such span ever admits more than the limit. Calls
//! running at once are leased slots: the replica running a call renews its lease
//! (`storage.reservation_lease`) and releases it when the call ends, however it ends; a
//! replica that dies leaks nothing past the lease. With `storage.redis_url` both live in
//! Redis and hold across every replica; otherwise in process. A call is admitted only if
//! every matching quota has room, and then takes from all of them at once; a refusal takes
//! nothing. While Redis fails, quotas follow `storage.on_redis_failure` like rate limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{QuotaConfig, QuotaPer, Scope};
use crate::degrade::SharedFailures;
use crate::error::ApiError;
use crate::glob::Glob;
use crate::identity::Principal;
use crate::ratelimit::{Admission, BucketCheck, LocalBuckets, RateBuckets};
use crate::store::StoreResult;

/// Calls running at once, as leased slots.
#[async_trait]
pub trait RunningSlots: Send + Sync + 'static {
    /// Takes a slot of every `(key, limit)` for `holder`, leased for `lease_ms`, if all have
    /// room; else takes nothing and names the first that is full.
    async fn take(
        &self,
        slots: &[(String, u64)],
        holder: &str,
        lease_ms: u64,
    ) -> StoreResult<Option<usize>>;
    /// Extends `holder`'s leases on `keys`.
    async fn renew(&self, keys: &[String], holder: &str, lease_ms: u64) -> StoreResult<()>;
    /// Gives `holder`'s slots back.
    async fn release(&self, keys: &[String], holder: &str) -> StoreResult<()>;
}

/// The in-process engine: counts (a call's slot goes back when its permit drops, so no lease
/// is needed).
#[derive(Default)]
pub struct LocalSlots {
    running: Mutex<HashMap<String, u64>>,
}

#[async_trait]
impl RunningSlots for LocalSlots {
    async fn take(
        &self,
        slots: &[(String, u64)],
        _holder: &str,
        _lease_ms: u64,
    ) -> StoreResult<Option<usize>> {
        let mut m = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (key, limit)) in slots.iter().enumerate() {
            if m.get(key).copied().unwrap_or(0) >= *limit {
                return Ok(Some(i));
            }
        }
        for (key, _) in slots {
            *m.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(None)
    }

    async fn renew(&self, _keys: &[String], _holder: &str, _lease_ms: u64) -> StoreResult<()> {
        Ok(())
    }

    async fn release(&self, keys: &[String], _holder: &str) -> StoreResult<()> {
        let mut m = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            if let Some(n) = m.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
        Ok(())
    }
}

/// The quotas in force are in the config each call passes; this holds their counters.
pub struct Quotas {
    windows: Arc<dyn RateBuckets>,
    running: Arc<dyn RunningSlots>,
    failures: Arc<SharedFailures>,
    lease_ms: AtomicU64,
    /// This process's running calls (holder id to slot keys), whose leases the renewer extends.
    live: Mutex<HashMap<String, Vec<String>>>,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::new(
            Arc::new(LocalBuckets::default()),
            Arc::new(LocalSlots::default()),
            Arc::default(),
        )
    }
}

/// A quota that refused a call.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub quota: String,
    pub limit: u64,
    /// `minute`, `hour`, `day` or `concurrent`.
    pub window: &'static str,
    pub retry_after: Duration,
}

/// Why a call was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// A quota is used up.
    Quota(Refused),
    /// The shared counters failed and quotas fail closed: the 503 to answer.
    Unavailable(ApiError),
}

/// Admission: gives its running slots back when dropped (when the call ends, however it
/// ends).
pub struct Permit {
    quotas: Arc<Quotas>,
    holder: String,
    running: Vec<String>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.running.is_empty() {
            return;
        }
        self.quotas
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.holder);
        let quotas = self.quotas.clone();
        let keys = std::mem::take(&mut self.running);
        let holder = std::mem::take(&mut self.holder);
        crate::run_or_spawn(async move {
            if let Err(e) = quotas.running.release(&keys, &holder).await {
                // The lease lapses on its own.
                tracing::warn!(error = %e, "could not release a quota's running slot");
            }
        });
    }
}

/// Whose calls a quota counts together; `None` when the principal has no such attribute
/// (the quota does not apply to it).
fn subject(scope: Scope, p: &Principal) -> Option<String> {
    match scope {
        Scope::Key => Some(p.label()),
        Scope::User => p.user.clone(),
        Scope::Team => p.team.clone(),
        Scope::Agent => p.agent.clone(),
        Scope::Global => Some(String::new()),
        Scope::Model | Scope::Conversation => None,
    }
}

fn matches(rule: &QuotaConfig, target: &str) -> bool {
    rule.matches.is_empty()
        || rule
            .matches
            .iter()
            .any(|m| Glob::new(m.as_str()).matches(target))
}

impl Quotas {
    pub fn new(
        windows: Arc<dyn RateBuckets>,
        running: Arc<dyn RunningSlots>,
        failures: Arc<SharedFailures>,
    ) -> Quotas {
        Quotas {
            windows,
            running,
            failures,
            lease_ms: AtomicU64::new(30_000),
            live: Mutex::default(),
        }
    }

    pub fn set_lease(&self, lease: Duration) {
        let ms = lease.as_millis().clamp(100, u64::MAX as u128) as u64;
        self.lease_ms.store(ms, Ordering::Relaxed);
    }

    fn lease_ms(&self) -> u64 {
        self.lease_ms.load(Ordering::Relaxed)
    }

    /// Admits a call of `server`'s tool `tool` (its upstream name), or of agent `server`'s
    /// method `tool`, by `principal`, or names the first quota that refuses it.
    pub async fn admit(
        self: &Arc<Self>,
        rules: &[QuotaConfig],
        principal: &Principal,
        server: &str,
        tool: &str,
        now_ms: i64,
    ) -> Result<Permit, Refusal> {
        let target = format!("{server}/{tool}");
        // Per window: the check and which rule and window it counts.
        let mut windows = Vec::new();
        let mut counted = Vec::new();
        let mut slots = Vec::new();
        let mut slot_rules = Vec::new();
        for rule in rules.iter().filter(|r| matches(r, &target)) {
            let Some(who) = subject(rule.scope, principal) else {
                continue;
            };
            let what = match rule.per {
                QuotaPer::Tool | QuotaPer::Method => target.as_str(),
                QuotaPer::Server | QuotaPer::Agent => server,
            };
            let key = format!("quota\u{1f}{}\u{1f}{who}\u{1f}{what}", rule.name);
            for (limit, window, ms) in [
                (rule.per_minute, "minute", 60_000),
                (rule.per_hour, "hour", 3_600_000),
                (rule.per_day, "day", 86_400_000),
            ] {
                if let Some(limit) = limit {
                    windows.push(BucketCheck::requests_per(
                        format!("{key}\u{1f}{window}"),
                        limit,
                        ms,
                    ));
                    counted.push((rule, window));
                }
            }
            if let Some(limit) = rule.concurrent {
                slots.push((key, limit));
                slot_rules.push(rule);
            }
        }
        let mut permit = Permit {
            quotas: self.clone(),
            holder: String::new(),
            running: Vec::new(),
        };
        if windows.is_empty() && slots.is_empty() {
            return Ok(permit);
        }
        if self.failures.tripped() {
            self.failures
                .skipped("quota")
                .map_err(Refusal::Unavailable)?;
            return Ok(permit);
        }
        // Running slots first: they can be given back if a window then refuses.
        if !slots.is_empty() {
            let holder = format!("{:032x}", fastrand::u128(..));
            match self.running.take(&slots, &holder, self.lease_ms()).await {
                Ok(None) => {
                    let keys: Vec<String> = slots.into_iter().map(|(k, _)| k).collect();
                    self.live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(holder.clone(), keys.clone());
                    permit.holder = holder;
                    permit.running = keys;
                }
                Ok(Some(i)) => {
                    let (quota, limit) = slot_rules.get(i).map_or((String::new(), 0), |r| {
                        (r.name.clone(), r.concurrent.unwrap_or(0))
                    });
                    return Err(Refusal::Quota(Refused {
                        quota,
                        limit,
                        window: "concurrent",
                        // No time to promise: a running call ends when it ends.
                        retry_after: Duration::from_secs(1),
                    }));
                }
                Err(e) => {
                    self.failures
                        .on_failure("quota", &e)
                        .map_err(Refusal::Unavailable)?;
                }
            }
        }
        if windows.is_empty() {
            return Ok(permit);
        }
        match self.windows.acquire(&windows, 0, now_ms).await {
            Ok(Admission::Admitted(_)) => Ok(permit),
            Ok(Admission::Refused {
                index, retry_after, ..
            }) => {
                let (quota, window) = counted
                    .get(index)
                    .map_or((String::new(), "minute"), |(r, w)| (r.name.clone(), *w));
                let limit = windows.get(index).and_then(|c| c.rpm).unwrap_or(0);
                // Dropping the permit gives its running slots back.
                Err(Refusal::Quota(Refused {
                    quota,
                    limit,
                    window,
                    retry_after,
                }))
            }
            Err(e) => {
                self.failures
                    .on_failure("quota", &e)
                    .map_err(Refusal::Unavailable)?;
                Ok(permit)
            }
        }
    }

    /// Renews the leases of this process's running calls, three times per lease, until `stop`
    /// resolves: a long call keeps its slot; a dead process's lapse.
    pub async fn run_renewer(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.lease_ms() / 3)) => {}
                _ = stop.changed() => return,
            }
            let live: Vec<(String, Vec<String>)> = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(id, keys)| (id.clone(), keys.clone()))
                .collect();
            for (holder, keys) in live {
                if let Err(e) = self.running.renew(&keys, &holder, self.lease_ms()).await {
                    tracing::warn!(error = %e, "could not renew a running quota slot's lease");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, matches: &[&str], per: QuotaPer) -> QuotaConfig {
        QuotaConfig {
            name: name.into(),
            matches: matches.iter().map(|s| s.to_string()).collect(),
            per,
            scope: Scope::Key,
            per_minute: None,
            per_hour: None,
            per_day: None,
            concurrent: None,
        }
    }

    fn key(id: &str) -> Principal {
        let mut p = Principal::anonymous();
        p.key_id = Some(id.into());
        p
    }

    fn refused(r: Result<Permit, Refusal>) -> Refused {
        match r {
            Err(Refusal::Quota(q)) => q,
            Err(Refusal::Unavailable(e)) => panic!("unavailable: {e:?}"),
            Ok(_) => panic!("admitted"),
        }
    }

    #[tokio::test]
    async fn windows_refuse_and_come_back_as_their_slots_leave() {
        let q = Arc::new(Quotas::default());
        let rules = [QuotaConfig {
            per_minute: Some(2),
            per_hour: Some(3),
            ..rule("calls", &["files/*"], QuotaPer::Tool)
        }];
        let a = key("a");
        assert!(q.admit(&rules, &a, "files", "read", 0).await.is_ok());
        assert!(q.admit(&rules, &a, "files", "read", 1_000).await.is_ok());
        let r = refused(q.admit(&rules, &a, "files", "read", 1_000).await);
        assert_eq!((r.window, r.limit), ("minute", 2));
        // The first two-second slot leaves the minute's window at 62 s.
        assert_eq!(r.retry_after, Duration::from_secs(61));
        // Another tool, another key, another server: their own counters or none.
        assert!(q.admit(&rules, &a, "files", "write", 0).await.is_ok());
        assert!(q.admit(&rules, &key("b"), "files", "read", 0).await.is_ok());
        assert!(q.admit(&rules, &a, "other", "read", 0).await.is_ok());
        // A minute on, the minute window is free; the hour has one call left.
        assert!(q.admit(&rules, &a, "files", "read", 62_000).await.is_ok());
        let r = refused(q.admit(&rules, &a, "files", "read", 124_000).await);
        assert_eq!(r.window, "hour", "{r:?}");
        // The hour's first two-minute slot leaves its window at 62 minutes.
        assert_eq!(r.retry_after, Duration::from_millis(3_720_000 - 124_000));
        assert!(q
            .admit(&rules, &a, "files", "read", 3_720_000)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn concurrency_is_released_when_the_call_ends_and_refusals_take_nothing() {
        let q = Arc::new(Quotas::default());
        let rules = [
            QuotaConfig {
                concurrent: Some(1),
                ..rule("one-at-a-time", &[], QuotaPer::Server)
            },
            QuotaConfig {
                per_minute: Some(2),
                ..rule("per-minute", &[], QuotaPer::Server)
            },
        ];
        let a = key("a");
        let first = q.admit(&rules, &a, "files", "read", 0).await.unwrap();
        let r = refused(q.admit(&rules, &a, "files", "write", 0).await);
        assert_eq!(r.window, "concurrent");
        drop(first);
        // The refused call took nothing from the minute window: one call is left.
        let second = q.admit(&rules, &a, "files", "write", 0).await.unwrap();
        drop(second);
        assert_eq!(
            refused(q.admit(&rules, &a, "files", "x", 0).await).window,
            "minute"
        );
        // A call the minute refused gave its running slot back.
        let third = q.admit(&rules[..1], &a, "files", "x", 0).await;
        assert!(third.is_ok());
    }
}
