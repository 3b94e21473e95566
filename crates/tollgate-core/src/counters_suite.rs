//! One suite for the shared engines: budget counters, rate-limit and quota windows, running
//! slots and shared blobs, run
//! against the in-process engines and Redis (127.0.0.1:6379, or `TOLLGATE_TEST_REDIS_URL`).
//! When Redis is unreachable the Redis half says so loudly and is skipped, unless
//! `TOLLGATE_REQUIRE_SERVICES=1` (CI), which makes it fail.

use std::sync::Arc;
use std::time::Duration;

use crate::budget::{CounterKey, Hold, LocalCounters, SpendCounters};
use crate::ratelimit::{Admission, BucketCheck, LocalBuckets, RateBuckets};
use crate::redis_store::{RedisBuckets, RedisCounters};

struct Redis {
    con: redis::aio::ConnectionManager,
    prefix: String,
}

impl Redis {
    /// A connection and a key prefix of this test's own, or `None` (skip) when Redis is down.
    async fn open() -> Option<Redis> {
        let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
        match tokio::time::timeout(Duration::from_secs(5), crate::redis_store::connect(&url)).await
        {
            Ok(Ok(con)) => Some(Redis {
                con,
                prefix: format!("tollgate-test:{:016x}:", fastrand::u64(..)),
            }),
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connect timed out".to_owned(),
                };
                assert!(
                    std::env::var("TOLLGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "Redis at {url} is required (TOLLGATE_REQUIRE_SERVICES=1) but unreachable: {why}"
                );
                eprintln!(
                    "!!! SKIPPING the Redis engine tests: Redis at {url} is unreachable: {why}"
                );
                None
            }
        }
    }

    /// Deletes every key this test wrote.
    async fn clean(mut self) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut self.con)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut self.con).await;
        }
    }
}

/// Waits (up to five seconds) until `check` holds: for leases and TTLs to run out.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counter_engines() -> (Vec<(&'static str, Arc<dyn SpendCounters>)>, Option<Redis>) {
    let mut v: Vec<(&'static str, Arc<dyn SpendCounters>)> =
        vec![("local", Arc::new(LocalCounters::default()))];
    let redis = Redis::open().await;
    if let Some(r) = &redis {
        v.push((
            "redis",
            Arc::new(RedisCounters::new(r.con.clone(), &r.prefix)),
        ));
    }
    (v, redis)
}

fn key(budget: &str, id: &str, period: i64) -> CounterKey {
    CounterKey {
        budget: Arc::from(budget),
        id: id.to_owned(),
        period_start_ms: period,
    }
}

#[tokio::test]
async fn counters_reserve_settle_reset_and_list_alike() {
    let (engines, redis) = counter_engines().await;
    for (name, c) in engines {
        let (a, b) = (key("b@1", "a", 5), key("b@1", "x:y", 5));
        assert_eq!(c.known(&[&a, &b]).await.unwrap(), [false, false], "{name}");
        c.seed(&a, 0.5).await.unwrap();
        c.seed(&a, 99.0).await.unwrap(); // seeding twice keeps the first
        let h = Hold::new(Duration::from_secs(30));
        assert_eq!(c.known(&[&a, &b]).await.unwrap(), [true, false], "{name}");
        assert_eq!(
            c.reserve(&[(&a, 1.0), (&b, 10.0)], 0.75, &h).await.unwrap(),
            Ok(()),
            "{name}"
        );
        let refused = c
            .reserve(
                &[(&b, 10.0), (&a, 1.0)],
                0.25,
                &Hold::new(Duration::from_secs(30)),
            )
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.index, 1, "{name}");
        assert_eq!(refused.state.spent_usd, 0.5, "{name}");
        assert_eq!(refused.state.reserved_usd, 0.75, "{name}");
        let moved = c
            .settle(&[a.clone(), b.clone()], &h, 0.75, 0.25)
            .await
            .unwrap();
        assert_eq!(moved, [(0.5, 0.75), (0.0, 0.25)], "{name}");
        c.reset(&a).await.unwrap();
        let listed = c.list("b@1", 5).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|(k, _)| k.id.as_str()).collect();
        assert_eq!(ids, ["a", "x:y"], "{name}");
        assert_eq!(listed[0].1.spent_usd, 0.0, "{name}");
        assert_eq!(listed[0].1.reserved_usd, 0.0, "{name}");
        assert_eq!(listed[1].1.spent_usd, 0.25, "{name}");
        assert!(c.list("b@1", 6).await.unwrap().is_empty(), "{name}");
    }
    if let Some(r) = redis {
        r.clean().await;
    }
}

#[tokio::test]
async fn concurrent_reservations_never_pass_the_limit() {
    let (engines, redis) = counter_engines().await;
    for (name, c) in engines {
        let k = key("race@1", "k", 0);
        c.seed(&k, 0.0).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, k) = (c.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                let h = Hold::new(Duration::from_secs(30));
                c.reserve(&[(&k, 1.0)], 0.125, &h).await.unwrap().is_ok()
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        // 0.125 at a time is admitted while the total is below 1.0: exactly eight.
        assert_eq!(admitted, 8, "{name}");
    }
    if let Some(r) = redis {
        r.clean().await;
    }
}

/// A shared engine outlives the processes using it: a hold whose lease ran out (its process
/// died mid-request) is reclaimed, a renewed one stays, and settling a reclaimed hold still
/// records the spend without taking its reservation off twice.
#[tokio::test]
async fn lapsed_holds_are_reclaimed_and_renewed_ones_kept() {
    let Some(r) = Redis::open().await else {
        return;
    };
    let c = RedisCounters::new(r.con.clone(), &r.prefix);
    let k = key("lease@1", "k", 0);
    c.seed(&k, 0.0).await.unwrap();
    let short = Hold::new(Duration::from_millis(150));
    let kept = Hold::new(Duration::from_millis(150));
    assert_eq!(c.reserve(&[(&k, 1.0)], 0.5, &short).await.unwrap(), Ok(()));
    assert_eq!(c.reserve(&[(&k, 1.0)], 0.25, &kept).await.unwrap(), Ok(()));
    // The second hold is renewed; the first lapses.
    let renewed = Hold {
        id: kept.id.clone(),
        expires_ms: crate::time::now_ms() + 60_000,
    };
    c.renew(std::slice::from_ref(&k), &renewed).await.unwrap();
    // Reading the counter reclaims lapsed holds too: wait until only the kept one is left.
    until("the unrenewed hold lapses", || async {
        c.list("lease@1", 0).await.unwrap()[0].1.reserved_usd == 0.25
    })
    .await;
    // Reserving reclaims lapsed holds first: 0.25 (kept) + 0.5 (new) = 0.75 reserved.
    let fresh = Hold::new(Duration::from_secs(30));
    assert_eq!(c.reserve(&[(&k, 1.0)], 0.5, &fresh).await.unwrap(), Ok(()));
    let state = c.list("lease@1", 0).await.unwrap()[0].1;
    assert_eq!(state.reserved_usd, 0.75);
    // Settling the reclaimed hold records its spend; reservations stay as they are.
    c.settle(std::slice::from_ref(&k), &short, 0.5, 0.125)
        .await
        .unwrap();
    c.settle(std::slice::from_ref(&k), &renewed, 0.25, 0.25)
        .await
        .unwrap();
    c.settle(std::slice::from_ref(&k), &fresh, 0.5, 0.0)
        .await
        .unwrap();
    let state = c.list("lease@1", 0).await.unwrap()[0].1;
    assert_eq!(state.reserved_usd, 0.0);
    assert_eq!(state.spent_usd, 0.375);
    r.clean().await;
}

#[tokio::test]
async fn buckets_admit_refuse_and_correct_alike() {
    let mut engines: Vec<(&str, Arc<dyn RateBuckets>)> =
        vec![("local", Arc::new(LocalBuckets::default()))];
    let redis = Redis::open().await;
    if let Some(r) = &redis {
        engines.push((
            "redis",
            Arc::new(RedisBuckets::new(r.con.clone(), &r.prefix)),
        ));
    }
    let now = crate::time::now_ms();
    for (name, b) in engines {
        let both = [
            BucketCheck::minute("rpm:k".into(), Some(3), Some(1000)),
            BucketCheck::minute("tpm:k".into(), None, Some(500)),
        ];
        for left in [2, 1, 0] {
            let Admission::Admitted(v) = b.acquire(&both, 100, now).await.unwrap() else {
                panic!("{name}: refused");
            };
            assert_eq!(v[0].remaining_requests, left, "{name}");
            assert!(v[0].reset_requests > Duration::ZERO, "{name}");
        }
        let Admission::Refused {
            index,
            tokens,
            retry_after,
            view,
        } = b.acquire(&both, 100, now).await.unwrap()
        else {
            panic!("{name}: a fourth request in a minute of three was admitted");
        };
        assert_eq!((index, tokens), (0, false), "{name}");
        // The requests' slot leaves the window a minute (and up to one slot) after them.
        assert!(
            retry_after > Duration::from_secs(57) && retry_after <= Duration::from_secs(62),
            "{name}: {retry_after:?}"
        );
        assert_eq!(view.reset_requests, retry_after, "{name}");
        assert_eq!(view.remaining_requests, 0, "{name}");
        // The token-only bucket: 300 of 500 taken; the three calls really used 10 each.
        for _ in 0..3 {
            b.adjust(&both, 10 - 100, now).await.unwrap();
        }
        let Admission::Admitted(v) = b.acquire(&both[1..], 400, now).await.unwrap() else {
            panic!("{name}: refused after the correction");
        };
        // 500 - 3 x 10 - 400: nothing comes back within the minute.
        assert_eq!(v[0].remaining_tokens, 70, "{name}");
        let Admission::Refused { tokens, .. } = b.acquire(&both[1..], 400, now).await.unwrap()
        else {
            panic!("{name}: admitted past the token limit");
        };
        assert!(tokens, "{name}");
    }
    if let Some(r) = redis {
        r.clean().await;
    }
}

#[tokio::test]
async fn windows_of_any_width_and_running_slots_hold_alike() {
    use crate::quota::{LocalSlots, RunningSlots};
    type Engine = (&'static str, Arc<dyn RateBuckets>, Arc<dyn RunningSlots>);
    let mut engines: Vec<Engine> = vec![(
        "local",
        Arc::new(LocalBuckets::default()),
        Arc::new(LocalSlots::default()),
    )];
    let redis = Redis::open().await;
    if let Some(r) = &redis {
        engines.push((
            "redis",
            Arc::new(RedisBuckets::new(r.con.clone(), &r.prefix)),
            Arc::new(crate::redis_store::RedisSlots::new(
                r.con.clone(),
                &r.prefix,
            )),
        ));
    }
    let now = crate::time::now_ms();
    for (name, windows, slots) in engines {
        // An hour's window (two-minute slots): the third call waits for the first slot to
        // leave, about an hour on.
        let hour = [BucketCheck::requests_per("q:hour".into(), 2, 3_600_000)];
        for _ in 0..2 {
            assert!(
                matches!(
                    windows.acquire(&hour, 0, now).await.unwrap(),
                    Admission::Admitted(_)
                ),
                "{name}"
            );
        }
        let Admission::Refused { retry_after, .. } = windows.acquire(&hour, 0, now).await.unwrap()
        else {
            panic!("{name}: a third call in an hour of two was admitted");
        };
        assert!(
            retry_after > Duration::from_secs(3_600 - 5)
                && retry_after <= Duration::from_secs(3_720),
            "{name}: {retry_after:?}"
        );

        // Two at once on "a"; "b" is full after one; a refusal takes nothing.
        let both = [("run:a".to_owned(), 2), ("run:b".to_owned(), 1)];
        assert_eq!(
            slots.take(&both, "h1", 60_000).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            slots.take(&both, "h2", 60_000).await.unwrap(),
            Some(1),
            "{name}"
        );
        assert_eq!(
            slots.take(&both[..1], "h3", 60_000).await.unwrap(),
            None,
            "{name}: the refused take held a slot of a"
        );
        assert_eq!(
            slots.take(&both[..1], "h4", 60_000).await.unwrap(),
            Some(0),
            "{name}"
        );
        let keys: Vec<String> = both.iter().map(|(k, _)| k.clone()).collect();
        slots.renew(&keys, "h1", 60_000).await.unwrap();
        slots.release(&keys, "h1").await.unwrap();
        assert_eq!(
            slots.take(&both, "h5", 60_000).await.unwrap(),
            None,
            "{name}"
        );
    }
    if let Some(r) = redis {
        // A lease that is not renewed lapses: a dead replica's running calls stop counting.
        let slots = crate::redis_store::RedisSlots::new(r.con.clone(), &r.prefix);
        let one = [("run:lapse".to_owned(), 1)];
        assert_eq!(slots.take(&one, "dead", 150).await.unwrap(), None);
        assert_eq!(slots.take(&one, "next", 150).await.unwrap(), Some(0));
        // A refused take takes nothing, so asking until it is admitted is the check itself.
        until("the dead holder's slot lapses", || async {
            slots.take(&one, "next", 60_000).await.unwrap().is_none()
        })
        .await;
        // Renewing a released (or lapsed) holder does not bring it back.
        slots
            .renew(&["run:lapse".to_owned()], "dead", 60_000)
            .await
            .unwrap();
        assert_eq!(slots.take(&one, "third", 60_000).await.unwrap(), Some(0));
        r.clean().await;
    }
}

#[tokio::test]
async fn shared_blobs_round_trip_and_expire() {
    use crate::redis_store::{RedisBlobs, SharedBlobs};
    let Some(r) = Redis::open().await else {
        return;
    };
    let blobs = RedisBlobs::new(r.con.clone(), &r.prefix);
    assert_eq!(blobs.get("absent").await.unwrap(), None);
    blobs
        .put("entry", b"\x00bytes\xff", Duration::from_secs(60))
        .await
        .unwrap();
    let (value, ttl) = blobs.get("entry").await.unwrap().unwrap();
    assert_eq!(value, b"\x00bytes\xff");
    assert!(
        ttl > Duration::from_secs(55) && ttl <= Duration::from_secs(60),
        "{ttl:?}"
    );
    // A second put replaces the value and its TTL; an expired one is gone.
    blobs
        .put("entry", b"short", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(blobs.get("entry").await.unwrap().unwrap().0, b"short");
    until("the entry expires", || async {
        blobs.get("entry").await.unwrap().is_none()
    })
    .await;
    r.clean().await;
}
