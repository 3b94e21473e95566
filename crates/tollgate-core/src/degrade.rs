//! What rate limits and budgets do when their shared counter store (Redis) fails:
//! `storage.on_redis_failure: fail_closed` (the default) answers 503 until it is back;
//! `fail_open` serves the request without the limit. Either way every failure is counted
//! (`tollgate_shared_counter_failures_total{what, mode}`) and logged, at most once a second,
//! so a degraded gateway is loud. After a failure the store is not asked again for a second
//! (requests get the failure mode at once instead of each waiting on a dead server); then the
//! next request tries it, and limits apply again on the first call that succeeds.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::error::{ApiError, ErrorKind};
use crate::store::StoreError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `rate_limit`, `budget` or `quota`.
    pub what: &'static str,
    /// `fail_open` or `fail_closed`.
    pub mode: &'static str,
}

/// How long after a failure the store is left alone.
const BACKOFF_MS: i64 = 1000;

pub struct SharedFailures {
    fail_open: AtomicBool,
    last_log_ms: AtomicI64,
    /// Until when (unix ms) calls skip the store.
    tripped_until_ms: AtomicI64,
    failures: Family<FailureLabels, Counter<u64, AtomicU64>>,
}

impl Default for SharedFailures {
    fn default() -> Self {
        SharedFailures::new(false, Family::default())
    }
}

impl SharedFailures {
    pub fn new(fail_open: bool, failures: Family<FailureLabels, Counter<u64, AtomicU64>>) -> Self {
        SharedFailures {
            fail_open: AtomicBool::new(fail_open),
            last_log_ms: AtomicI64::new(0),
            tripped_until_ms: AtomicI64::new(0),
            failures,
        }
    }

    pub fn set_fail_open(&self, open: bool) {
        self.fail_open.store(open, Ordering::Relaxed);
    }

    /// Whether the store failed within the last second; callers then skip it and take
    /// [`SharedFailures::skipped`]'s answer.
    pub fn tripped(&self) -> bool {
        crate::time::now_ms() < self.tripped_until_ms.load(Ordering::Relaxed)
    }

    /// The failure mode's answer for a call that skipped the store.
    pub fn skipped(&self, what: &'static str) -> Result<(), ApiError> {
        self.answer(
            what,
            &StoreError::Unavailable("recently failed; not retried yet".into()),
        )
    }

    /// A counter operation failed: `Ok(())` to serve the request without the limit (fail
    /// open), or the 503 to answer (fail closed).
    pub fn on_failure(&self, what: &'static str, e: &StoreError) -> Result<(), ApiError> {
        self.tripped_until_ms
            .store(crate::time::now_ms() + BACKOFF_MS, Ordering::Relaxed);
        self.answer(what, e)
    }

    fn answer(&self, what: &'static str, e: &StoreError) -> Result<(), ApiError> {
        let open = self.fail_open.load(Ordering::Relaxed);
        let mode = if open { "fail_open" } else { "fail_closed" };
        self.failures
            .get_or_create(&FailureLabels { what, mode })
            .inc();
        let now = crate::time::now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now - last >= 1000
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(
                error = %e,
                limit = what,
                mode,
                "the shared counter store is failing; {}",
                if open {
                    "requests are served without this limit"
                } else {
                    "requests that need this limit are refused"
                }
            );
        }
        if open {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "the {} counters are unavailable; try again shortly",
                    what.replace('_', " ")
                ),
            )
            .code("limits_unavailable"))
        }
    }
}
