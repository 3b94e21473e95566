//! Execution quotas: how many calls of a tool (or of a server's tools), or of an agent's A2A
//! method (or of all its methods), a principal, user, team, agent or everyone may make per
//! minute, hour and day, and how many may run at once.
//!
//! Each window is a token bucket holding up to its limit and refilling at limit per window, so
//! capacity comes back smoothly rather than at a window edge. A call is admitted only if every
//! matching bucket has a call left and every concurrency limit has room; then it takes from all
//! of them at once, under one lock. The counters are in process: each replica counts its own
//! calls until a shared engine lands (see issue 10).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{QuotaConfig, QuotaPer, Scope};
use crate::glob::Glob;
use crate::identity::Principal;

/// Full buckets (as good as new) are forgotten when the table grows past this.
const PRUNE_AT: usize = 65_536;

#[derive(Default)]
pub struct Quotas {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    running: HashMap<String, u64>,
}

#[derive(Clone, Copy)]
struct Bucket {
    level: f64,
    at_ms: i64,
    cap: f64,
    window_ms: i64,
}

impl Bucket {
    fn at(&self, now_ms: i64) -> f64 {
        (self.level + self.cap * (now_ms - self.at_ms).max(0) as f64 / self.window_ms as f64)
            .min(self.cap)
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

/// Admission: releases its concurrency slots when dropped (when the call ends, however it
/// ends).
pub struct Permit {
    quotas: Arc<Quotas>,
    running: Vec<String>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.running.is_empty() {
            return;
        }
        if let Ok(mut s) = self.quotas.state.lock() {
            for k in &self.running {
                if let Some(n) = s.running.get_mut(k) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        s.running.remove(k);
                    }
                }
            }
        }
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
    /// Admits a call of `server`'s tool `tool` (its upstream name), or of agent `server`'s
    /// method `tool`, by `principal`, or names the first quota that refuses it.
    pub fn admit(
        self: &Arc<Self>,
        rules: &[QuotaConfig],
        principal: &Principal,
        server: &str,
        tool: &str,
        now_ms: i64,
    ) -> Result<Permit, Refused> {
        let target = format!("{server}/{tool}");
        let mut windows = Vec::new();
        let mut slots = Vec::new();
        for rule in rules.iter().filter(|r| matches(r, &target)) {
            let Some(who) = subject(rule.scope, principal) else {
                continue;
            };
            let what = match rule.per {
                QuotaPer::Tool | QuotaPer::Method => target.as_str(),
                QuotaPer::Server | QuotaPer::Agent => server,
            };
            let key = format!("{}\u{1f}{who}\u{1f}{what}", rule.name);
            for (limit, window, ms) in [
                (rule.per_minute, "minute", 60_000),
                (rule.per_hour, "hour", 3_600_000),
                (rule.per_day, "day", 86_400_000),
            ] {
                if let Some(limit) = limit {
                    windows.push((format!("{key}\u{1f}{window}"), limit, window, ms, rule));
                }
            }
            if let Some(limit) = rule.concurrent {
                slots.push((key, limit, rule));
            }
        }
        if windows.is_empty() && slots.is_empty() {
            return Ok(Permit {
                quotas: self.clone(),
                running: Vec::new(),
            });
        }
        let Ok(mut s) = self.state.lock() else {
            return Ok(Permit {
                quotas: self.clone(),
                running: Vec::new(),
            });
        };
        if s.buckets.len() > PRUNE_AT {
            s.buckets.retain(|_, b| b.at(now_ms) < b.cap);
        }
        // Check everything first: a refusal takes nothing.
        let mut levels = Vec::with_capacity(windows.len());
        for (key, limit, window, ms, rule) in &windows {
            let cap = *limit as f64;
            let level = s.buckets.get(key).map_or(cap, |b| b.at(now_ms));
            if level < 1.0 {
                let wait_ms = (1.0 - level) * *ms as f64 / cap;
                return Err(Refused {
                    quota: rule.name.clone(),
                    limit: *limit,
                    window,
                    retry_after: Duration::from_millis(wait_ms.ceil() as u64),
                });
            }
            levels.push(level);
        }
        for (key, limit, rule) in &slots {
            if s.running.get(key).copied().unwrap_or(0) >= *limit {
                return Err(Refused {
                    quota: rule.name.clone(),
                    limit: *limit,
                    window: "concurrent",
                    // No time to promise: a running call ends when it ends.
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        for ((key, limit, _, ms, _), level) in windows.iter().zip(levels) {
            s.buckets.insert(
                key.clone(),
                Bucket {
                    level: level - 1.0,
                    at_ms: now_ms,
                    cap: *limit as f64,
                    window_ms: *ms,
                },
            );
        }
        let mut running = Vec::with_capacity(slots.len());
        for (key, ..) in slots {
            *s.running.entry(key.clone()).or_insert(0) += 1;
            running.push(key);
        }
        Ok(Permit {
            quotas: self.clone(),
            running,
        })
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

    #[test]
    fn windows_refuse_then_refill() {
        let q = Arc::new(Quotas::default());
        let rules = [QuotaConfig {
            per_minute: Some(2),
            per_hour: Some(3),
            ..rule("calls", &["files/*"], QuotaPer::Tool)
        }];
        let a = key("a");
        assert!(q.admit(&rules, &a, "files", "read", 0).is_ok());
        assert!(q.admit(&rules, &a, "files", "read", 0).is_ok());
        let r = q.admit(&rules, &a, "files", "read", 0).err().unwrap();
        assert_eq!((r.window, r.limit), ("minute", 2));
        assert_eq!(r.retry_after, Duration::from_secs(30));
        // Another tool, another key, another server: their own counters or none.
        assert!(q.admit(&rules, &a, "files", "write", 0).is_ok());
        assert!(q.admit(&rules, &key("b"), "files", "read", 0).is_ok());
        assert!(q.admit(&rules, &a, "other", "read", 0).is_ok());
        // After 30 s one minute-call is back; the hour bucket has one left too.
        assert!(q.admit(&rules, &a, "files", "read", 30_000).is_ok());
        let r = q.admit(&rules, &a, "files", "read", 60_000).err().unwrap();
        assert_eq!(r.window, "hour", "{r:?}");
        let expected = Duration::from_secs(19 * 60);
        assert!(
            r.retry_after.abs_diff(expected) < Duration::from_millis(5),
            "{r:?}"
        );
    }

    #[test]
    fn concurrency_is_released_when_the_call_ends_and_refusals_take_nothing() {
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
        let first = q.admit(&rules, &a, "files", "read", 0).unwrap();
        let r = q.admit(&rules, &a, "files", "write", 0).err().unwrap();
        assert_eq!(r.window, "concurrent");
        drop(first);
        // The refused call took nothing from the minute bucket: one call is left.
        let second = q.admit(&rules, &a, "files", "write", 0).unwrap();
        drop(second);
        assert_eq!(
            q.admit(&rules, &a, "files", "x", 0).err().unwrap().window,
            "minute"
        );
    }
}
