//! Routing inside model groups: strategies, retries, cooldowns, fallbacks and streaming
//! failover, driven by fault injection in the testkit's upstreams.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::{chunk, MockUpstream, Reply, TestResponse};

use crate::harness::{chat_body, eventually, sse_data, start, TestGateway, MASTER};

/// Providers `a`, `b`, `c`... one per upstream, then `models`.
fn yaml(ups: &[&MockUpstream], models: &str) -> String {
    let mut y = String::from("providers:\n");
    for (i, up) in ups.iter().enumerate() {
        let name = (b'a' + i as u8) as char;
        y.push_str(&format!(
            "  - name: {name}\n    kind: openai\n    base_url: {}\n",
            up.base_url()
        ));
    }
    y.push_str("models:\n");
    y.push_str(models);
    y
}

async fn upstreams(n: usize) -> Vec<MockUpstream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(MockUpstream::start().await);
    }
    v
}

const FAST_RETRY: &str = "    retry: {backoff: 1ms, max_backoff: 5ms}\n";

async fn ask(t: &TestGateway, key: &str, model: &str) -> TestResponse {
    ask_with(t, key, model, ("x-none", "")).await
}

/// A chat request with one extra header.
async fn ask_with(
    t: &TestGateway,
    key: &str,
    model: &str,
    (name, value): (&str, &str),
) -> TestResponse {
    t.client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {key}")), (name, value)],
            chat_body(model, "hi").to_string(),
        )
        .await
}

fn served(res: &TestResponse) -> (String, String) {
    (
        res.header("x-tollgate-provider").unwrap_or("-").to_owned(),
        res.header("x-tollgate-attempts").unwrap_or("-").to_owned(),
    )
}

fn error_500() -> Reply {
    Reply::json(
        500,
        json!({"error": {"message": "internal error", "type": "server_error"}}),
    )
}

#[tokio::test]
async fn a_failing_target_is_retried_elsewhere_and_then_cooled_down() {
    let ups = upstreams(3).await;
    let (a, b, c) = (&ups[0], &ups[1], &ups[2]);
    let t = start(&yaml(
        &[a, b, c],
        &format!("  - name: m\n    strategy: priority\n    targets:\n      - {{provider: a, priority: 0}}\n      - {{provider: b, priority: 1}}\n      - {{provider: c, priority: 2}}\n{FAST_RETRY}    cooldown: {{failures: 2, window: 30s, duration: 60s}}\n"),
    ))
    .await;
    let key = t.any_key().await;
    for _ in 0..10 {
        a.push(error_500());
    }
    // Two requests each fail once on `a`, then succeed on `b`.
    for _ in 0..2 {
        let res = ask(&t, &key, "m").await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(served(&res), ("b".into(), "2".into()));
        assert_eq!(res.header("x-tollgate-model"), Some("m"));
        assert!(res.header("x-tollgate-fallback").is_none());
    }
    // `a` is now cooling down: traffic goes straight to `b`, none to `a`.
    for _ in 0..5 {
        let res = ask(&t, &key, "m").await;
        assert_eq!(served(&res), ("b".into(), "1".into()));
    }
    assert_eq!(a.count(), 2, "no request reached a target in cooldown");
    assert_eq!(b.count(), 7);
    assert_eq!(c.count(), 0);

    let health = t.client.get("/admin/v1/models/health", MASTER).await;
    assert_eq!(health.status, 200);
    let targets = &health.json()["models"][0]["targets"];
    assert_eq!(targets[0]["health"]["state"], "cooldown", "{targets}");
    assert_eq!(targets[0]["health"]["cooldowns"], 1);
    assert!(targets[0]["health"]["last_error"]
        .as_str()
        .unwrap()
        .contains("500"));
    assert_eq!(targets[1]["health"]["state"], "healthy");
    let key_health = t.client.get("/admin/v1/models/health", &key).await;
    assert_eq!(key_health.status, 403, "master only");

    let metrics = t.client.get("/metrics", MASTER).await.text();
    assert!(
        metrics.contains(r#"tollgate_target_state{model="m",provider="a",target="m"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tollgate_target_cooldowns_total{model="m",provider="a",target="m"} 1"#)
    );
    assert!(metrics.contains(
        r#"tollgate_upstream_attempts_total{model="m",provider="a",outcome="retryable"} 2"#
    ));
    assert!(metrics
        .contains(r#"tollgate_upstream_attempts_total{model="m",provider="b",outcome="ok"} 7"#));
}

#[tokio::test]
async fn after_the_cooldown_one_probe_brings_a_target_back() {
    let ups = upstreams(2).await;
    let (a, b) = (&ups[0], &ups[1]);
    let t = start(&yaml(
        &[a, b],
        &format!("  - name: m\n    strategy: priority\n    targets:\n      - {{provider: a, priority: 0}}\n      - {{provider: b, priority: 1}}\n{FAST_RETRY}    cooldown: {{failures: 1, window: 30s, duration: 300ms}}\n"),
    ))
    .await;
    let key = t.any_key().await;
    a.push(error_500());
    assert_eq!(served(&ask(&t, &key, "m").await), ("b".into(), "2".into()));
    // While `a` cools down, `b` serves; once the cooldown ends, a probe goes to `a`, which
    // answers and takes the traffic back.
    eventually("a serves again after its cooldown", || async {
        ask(&t, &key, "m").await.header("x-tollgate-provider") == Some("a")
    })
    .await;
    assert_eq!(a.count(), 2, "one failure, then exactly one probe");
    assert_eq!(served(&ask(&t, &key, "m").await), ("a".into(), "1".into()));
}

#[tokio::test]
async fn rate_limited_targets_are_avoided_for_their_retry_after() {
    let ups = upstreams(3).await;
    let (a, b, solo) = (&ups[0], &ups[1], &ups[2]);
    let t = start(&yaml(
        &[a, b, solo],
        &format!("  - name: m\n    strategy: priority\n    targets:\n      - {{provider: a, priority: 0}}\n      - {{provider: b, priority: 1}}\n{FAST_RETRY}  - name: solo\n    targets: [{{provider: c}}]\n{FAST_RETRY}"),
    ))
    .await;
    let key = t.any_key().await;
    a.push(Reply::throttled(30));
    let res = ask(&t, &key, "m").await;
    assert_eq!(served(&res), ("b".into(), "2".into()));
    // `a` asked for 30s: the next requests go straight to `b`.
    for _ in 0..3 {
        assert_eq!(served(&ask(&t, &key, "m").await), ("b".into(), "1".into()));
    }
    assert_eq!(a.count(), 1);

    // With nowhere else to go, a short Retry-After is waited out, then the target is retried.
    solo.push(Reply::throttled(1));
    let started = Instant::now();
    let res = ask(&t, &key, "solo").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(served(&res), ("c".into(), "2".into()));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    // A Retry-After beyond max_retry_after (10s by default) is not waited for: the client
    // gets the 429 with the upstream's Retry-After.
    solo.push(Reply::throttled(60));
    let res = ask(&t, &key, "solo").await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), Some("60"));
    assert_eq!(res.header("x-tollgate-attempts"), Some("1"));
}

#[tokio::test]
async fn resets_and_hangs_fail_over_before_the_first_byte() {
    let ups = upstreams(2).await;
    let (a, b) = (&ups[0], &ups[1]);
    let t = start(&yaml(
        &[a, b],
        &format!("  - name: m\n    strategy: priority\n    targets:\n      - {{provider: a, priority: 0, ttft_timeout: 300ms}}\n      - {{provider: b, priority: 1}}\n{FAST_RETRY}    cooldown: {{failures: 100}}\n"),
    ))
    .await;
    let key = t.any_key().await;

    // Connection reset with no answer.
    a.push(Reply::Reset);
    let res = ask(&t, &key, "m").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(served(&res), ("b".into(), "2".into()));

    // A non-streaming answer that does not start within the TTFT timeout.
    a.push(Reply::json(200, json!({})).delayed(Duration::from_secs(10)));
    let res = ask(&t, &key, "m").await;
    assert_eq!(served(&res), ("b".into(), "2".into()));

    // A stream whose head arrives but whose first event hangs past the TTFT timeout.
    a.push(Reply::Sse {
        chunks: vec![(Duration::from_secs(10), Bytes::from("data: {}\n\n"))],
        drop_after: None,
    });
    b.push(Reply::sse(&[chunk("from b")], Duration::ZERO));
    let mut body = chat_body("m", "hi");
    body["stream"] = json!(true);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(served(&res), ("b".into(), "2".into()));
    let events = sse_data(&res.text());
    assert!(events[0].contains("from b"), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // A stream that breaks before its first event.
    a.push(Reply::Sse {
        chunks: vec![(Duration::ZERO, Bytes::from("data: {}\n\n"))],
        drop_after: Some(0),
    });
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(served(&res), ("b".into(), "2".into()));
    assert_eq!(a.count(), 4);
}

#[tokio::test]
async fn a_stream_that_breaks_after_the_first_byte_ends_with_an_error_event() {
    let ups = upstreams(2).await;
    let (a, b) = (&ups[0], &ups[1]);
    let t = start(&yaml(
        &[a, b],
        &format!("  - name: m\n    strategy: priority\n    targets:\n      - {{provider: a, priority: 0}}\n      - {{provider: b, priority: 1}}\n{FAST_RETRY}"),
    ))
    .await;
    let key = t.any_key().await;
    let broken = || Reply::Sse {
        chunks: vec![
            (
                Duration::ZERO,
                Bytes::from(format!("data: {}\n\n", chunk("one"))),
            ),
            (
                Duration::ZERO,
                Bytes::from(format!("data: {}\n\n", chunk("two"))),
            ),
            (
                Duration::ZERO,
                Bytes::from(format!("data: {}\n\n", chunk("three"))),
            ),
        ],
        drop_after: Some(2),
    };
    a.push(broken());
    let mut body = chat_body("m", "hi");
    body["stream"] = json!(true);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200);
    let events = sse_data(&res.text());
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[1].contains("two"));
    let err: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(err["error"]["code"], "upstream_stream_error", "{err}");
    assert_eq!(b.count(), 0, "no replay after the first byte");

    // The Responses API gets its own error event.
    a.push(broken());
    let res = t
        .client
        .post_json(
            "/v1/responses",
            &key,
            &json!({"model": "m", "input": "hi", "stream": true}),
        )
        .await;
    let text = res.text();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    let err: Value = serde_json::from_str(last.split("data: ").nth(1).unwrap()).unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "upstream_stream_error");
}

fn upstream_error(status: u16, code: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"message": format!("upstream says {code}"), "type": "invalid_request_error", "code": code, "param": null}}),
    )
}

#[tokio::test]
async fn fallbacks_follow_the_failure_class() {
    let ups = upstreams(4).await;
    let (a, b, c, d) = (&ups[0], &ups[1], &ups[2], &ups[3]);
    let t = start(&yaml(
        &[a, b, c, d],
        &format!(
            "  - name: main\n    targets: [{{provider: a}}]\n    fallbacks: [backup]\n    context_window_fallbacks: [long]\n    content_policy_fallbacks: [lenient]\n    retry: {{attempts: 1}}\n    cooldown: {{failures: 100}}\n  - name: backup\n    targets: [{{provider: b}}]\n{FAST_RETRY}  - name: long\n    targets: [{{provider: c, model: long-context}}]\n{FAST_RETRY}  - name: lenient\n    targets: [{{provider: d}}]\n{FAST_RETRY}"
        ),
    ))
    .await;
    let key = t.any_key().await;

    a.push(upstream_error(400, "context_length_exceeded"));
    let res = ask(&t, &key, "main").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-tollgate-model"), Some("long"));
    assert_eq!(res.header("x-tollgate-fallback"), Some("context_window"));
    assert_eq!(served(&res), ("c".into(), "2".into()));
    assert_eq!(c.requests()[0].json()["model"], "long-context");

    a.push(upstream_error(400, "content_filter"));
    let res = ask(&t, &key, "main").await;
    assert_eq!(res.header("x-tollgate-model"), Some("lenient"));
    assert_eq!(res.header("x-tollgate-fallback"), Some("content_policy"));

    a.push(error_500());
    let res = ask(&t, &key, "main").await;
    assert_eq!(res.header("x-tollgate-model"), Some("backup"));
    assert_eq!(res.header("x-tollgate-fallback"), Some("error"));

    // The client's own mistake is not retried or fallen back on.
    a.push(upstream_error(400, "invalid_value"));
    let res = ask(&t, &key, "main").await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["code"], "invalid_value");
    assert_eq!(res.header("x-tollgate-attempts"), Some("1"));
    assert_eq!(b.count(), 1);

    let metrics = t.client.get("/metrics", MASTER).await.text();
    assert!(
        metrics.contains(
            r#"tollgate_fallbacks_total{model="main",fallback="long",reason="context_window"} 1"#
        ),
        "{metrics}"
    );

    // A key that may not use a fallback group never reaches it.
    let (_, restricted) = t.key(json!({"name": "r", "models": ["main"]})).await;
    a.push(error_500());
    let res = ask(&t, &restricted, "main").await;
    assert_eq!(res.status, 502);
    assert_eq!(b.count(), 1);
}

#[tokio::test]
async fn a_key_may_override_fallbacks_per_request_within_its_models() {
    let ups = upstreams(3).await;
    let (a, b, c) = (&ups[0], &ups[1], &ups[2]);
    let t = start(&yaml(
        &[a, b, c],
        "  - name: main\n    targets: [{provider: a}]\n    fallbacks: [backup]\n    retry: {attempts: 1}\n  - name: backup\n    targets: [{provider: b}]\n  - name: other\n    targets: [{provider: c}]\n",
    ))
    .await;
    let (_, key) = t
        .key(json!({"name": "k", "models": ["main", "other"]}))
        .await;
    a.push(error_500());
    let res = ask_with(&t, &key, "main", ("x-tollgate-fallbacks", "other")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-tollgate-model"), Some("other"));
    assert_eq!(b.count(), 0, "the header replaced the configured fallbacks");

    let res = ask_with(&t, &key, "main", ("x-tollgate-fallbacks", "backup")).await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert_eq!(res.json()["error"]["code"], "model_not_allowed");
    // Permission is checked first, so a restricted key cannot probe which models exist.
    assert_eq!(
        ask_with(&t, &key, "main", ("x-tollgate-fallbacks", "nope"))
            .await
            .status,
        403
    );
    let open_key = t.any_key().await;
    let res = ask_with(&t, &open_key, "main", ("x-tollgate-fallbacks", "nope")).await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"]["code"], "model_not_found");
    assert_eq!(a.count(), 1, "refused before any upstream call");
}

#[tokio::test]
async fn no_available_target_is_a_503_with_retry_after() {
    let up = MockUpstream::start().await;
    let t = start(&yaml(
        &[&up],
        "  - name: m\n    targets: [{provider: a}]\n    retry: {attempts: 1}\n    cooldown: {failures: 1, duration: 60s}\n",
    ))
    .await;
    let key = t.any_key().await;
    up.push(error_500());
    assert_eq!(ask(&t, &key, "m").await.status, 502);
    let res = ask(&t, &key, "m").await;
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.json()["error"]["code"], "no_healthy_target");
    let after: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((50..=60).contains(&after), "{after}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn sticky_cost_aliases_and_patterns() {
    let ups = upstreams(3).await;
    let (a, b, c) = (&ups[0], &ups[1], &ups[2]);
    let t = start(&yaml(
        &[a, b, c],
        "  - name: sticky\n    strategy: sticky\n    sticky_header: x-session-id\n    targets: [{provider: a}, {provider: b}, {provider: c}]\n  - name: convo\n    strategy: sticky\n    targets: [{provider: a}, {provider: b}, {provider: c}]\n  - name: cheap\n    aliases: [thrifty]\n    strategy: cost\n    targets: [{provider: a, model: gpt-4o}, {provider: b, model: gpt-4o-mini}]\n  - name: up/*\n    targets: [{provider: c, model: '*'}]\n",
    ))
    .await;
    let key = t.any_key().await;
    let mut seen = std::collections::HashSet::new();
    for s in 0..12 {
        let first = ask_with(&t, &key, "sticky", ("x-session-id", &format!("s{s}"))).await;
        let p = first.header("x-tollgate-provider").unwrap().to_owned();
        for _ in 0..3 {
            let again = ask_with(&t, &key, "sticky", ("x-session-id", &format!("s{s}"))).await;
            assert_eq!(again.header("x-tollgate-provider"), Some(p.as_str()));
        }
        seen.insert(p);
        let conv = ask_with(
            &t,
            &key,
            "convo",
            ("x-tollgate-conversation-id", &format!("c{s}")),
        )
        .await;
        let again = ask_with(
            &t,
            &key,
            "convo",
            ("x-tollgate-conversation-id", &format!("c{s}")),
        )
        .await;
        assert_eq!(
            conv.header("x-tollgate-provider"),
            again.header("x-tollgate-provider")
        );
    }
    assert!(seen.len() >= 2, "sessions spread over targets: {seen:?}");

    for model in ["cheap", "thrifty"] {
        let res = ask(&t, &key, model).await;
        assert_eq!(served(&res).0, "b", "gpt-4o-mini is cheaper");
        assert_eq!(res.header("x-tollgate-model"), Some(model));
    }

    let before = c.count();
    let res = ask(&t, &key, "up/qwen-2.5").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(c.requests()[before].json()["model"], "qwen-2.5");
    assert_eq!(ask(&t, &key, "up/").await.status, 404);

    let models = t.client.get("/v1/models", &key).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sticky", "convo", "cheap", "thrifty"]);
}

#[tokio::test]
async fn active_health_checks_take_a_dead_provider_out() {
    let ups = upstreams(2).await;
    let (a, b) = (&ups[0], &ups[1]);
    let config = yaml(
        &[a, b],
        &format!("  - name: m\n    strategy: priority\n    targets:\n      - {{provider: a, priority: 0}}\n      - {{provider: b, priority: 1}}\n{FAST_RETRY}"),
    )
    .replace(
        "  - name: b\n",
        "    health_check: {interval: 100ms, timeout: 1s}\n  - name: b\n",
    );
    let t = start(&config).await;
    let key = t.any_key().await;
    let checks = a.wait_for_requests(1).await;
    assert_eq!(checks[0].method, Method::GET);
    assert_eq!(checks[0].path, "/v1/models");
    assert_eq!(served(&ask(&t, &key, "m").await).0, "a");

    a.kill();
    eventually("the health check notices", || async {
        let h = t.client.get("/admin/v1/models/health", MASTER).await.json();
        h["models"][0]["targets"][0]["provider_healthy"] == json!(false)
    })
    .await;
    // Taken out by the check, not by failed requests: one attempt, straight to `b`.
    for _ in 0..3 {
        assert_eq!(served(&ask(&t, &key, "m").await), ("b".into(), "1".into()));
    }
}

/// Steady load over three upstreams; one is killed mid-run. Retries and cooldowns keep the
/// success rate at or above 99.9%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_one_of_three_upstreams_dies_mid_run() {
    let ups = upstreams(3).await;
    let t = start(&yaml(
        &[&ups[0], &ups[1], &ups[2]],
        "  - name: m\n    targets: [{provider: a}, {provider: b}, {provider: c}]\n    retry: {attempts: 3, backoff: 5ms, max_backoff: 50ms}\n    cooldown: {failures: 3, window: 10s, duration: 30s}\n",
    ))
    .await;
    let key = t.any_key().await;
    const TOTAL: usize = 2000;
    const WORKERS: usize = 8;
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (client, key, next, ok) = (t.client.clone(), key.clone(), next.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < TOTAL {
                let res = client
                    .post_json("/v1/chat/completions", &key, &chat_body("m", "hi"))
                    .await;
                if res.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(res.text());
                }
            }
            failures
        }));
    }
    eventually("a third of the run is done", || async {
        next.load(Ordering::Relaxed) >= TOTAL / 3
    })
    .await;
    ups[1].kill();
    let killed_at = ups[1].count();
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        ok * 1000 >= TOTAL * 999,
        "{ok}/{TOTAL} succeeded; failures: {failures:?}"
    );
    // Requests already on the wire when it died may still be recorded; nothing after.
    assert!(
        ups[1].count() <= killed_at + WORKERS,
        "nothing new reached the dead upstream"
    );
    assert!(ups[0].count() + ups[2].count() + killed_at >= ok);
    let health = t.client.get("/admin/v1/models/health", MASTER).await.json();
    assert_eq!(
        health["models"][0]["targets"][1]["health"]["state"],
        "cooldown"
    );
}

#[tokio::test]
async fn exhausted_retries_report_their_attempts() {
    let up = MockUpstream::start().await;
    let t = start(&yaml(
        &[&up],
        &format!("  - name: m\n    targets: [{{provider: a}}]\n    cooldown: {{failures: 100}}\n{FAST_RETRY}"),
    ))
    .await;
    let key = t.any_key().await;
    for _ in 0..3 {
        up.push(error_500());
    }
    let res = ask(&t, &key, "m").await;
    assert_eq!(res.status, 502);
    assert_eq!(res.header("x-tollgate-attempts"), Some("3"));
    assert_eq!(up.count(), 3);
}

/// Reads the whole ledger through the admin API.
async fn ledger(t: &TestGateway) -> Vec<Value> {
    let res = t.client.get("/admin/v1/ledger?limit=1000", MASTER).await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_ledger_records_routing_tokens_and_cost() {
    let ups = upstreams(2).await;
    let (a, b) = (&ups[0], &ups[1]);
    let t = start(&yaml(
        &[a, b],
        &format!("  - name: main\n    targets: [{{provider: a, model: gpt-4o-mini}}]\n    fallbacks: [backup]\n    retry: {{attempts: 2, backoff: 1ms}}\n    cooldown: {{failures: 100}}\n  - name: backup\n    targets: [{{provider: b, model: gpt-4o}}]\n    cooldown: {{failures: 100}}\n{FAST_RETRY}"),
    ))
    .await;
    let (key_id, key) = t.key(json!({"name": "spender"})).await;

    // Served first time: priced from the table, cost in the header.
    let res = ask(&t, &key, "main").await;
    let cost: f64 = res.header("x-tollgate-cost-usd").unwrap().parse().unwrap();
    // The upstream reports 3 prompt and 4 completion tokens; gpt-4o-mini costs $0.15/M in and
    // $0.60/M out.
    assert!(
        (cost - (3.0 * 0.15 + 4.0 * 0.60) / 1e6).abs() < 1e-12,
        "{cost}"
    );

    // Both attempts on `a` fail; the fallback serves.
    a.push(error_500());
    a.push(error_500());
    let res = ask(&t, &key, "main").await;
    assert_eq!(res.header("x-tollgate-fallback"), Some("error"));

    // Everything fails: the failure is recorded too.
    a.push(error_500());
    a.push(error_500());
    b.push(error_500());
    b.push(error_500());
    b.push(error_500());
    assert_eq!(ask(&t, &key, "main").await.status, 502);

    // A stream: priced when it ends, from the usage the upstream reported.
    b.push(Reply::sse(
        &[
            chunk("streamed"),
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
                             "prompt_tokens_details": {"cached_tokens": 4}}}),
        ],
        Duration::ZERO,
    ));
    let mut body = chat_body("backup", "hi");
    body["stream"] = json!(true);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200);
    assert!(
        res.header("x-tollgate-cost-usd").is_none(),
        "known only at the end"
    );

    let rows = ledger(&t).await;
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let first = &rows[0];
    assert_eq!(first["key_id"], key_id.as_str());
    assert_eq!(first["model"], "main");
    assert_eq!(first["served_model"], "main");
    assert_eq!(first["provider"], "a");
    assert_eq!(first["upstream_model"], "gpt-4o-mini");
    assert_eq!(first["prompt_tokens"], 3);
    assert_eq!(first["completion_tokens"], 4);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["status"], 200);
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["estimated"], false);
    assert!(first["price_version"]
        .as_str()
        .unwrap()
        .starts_with("litellm-"));
    assert!((first["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
    assert!(first["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    let fell_back = &rows[1];
    assert_eq!(fell_back["model"], "main");
    assert_eq!(fell_back["served_model"], "backup");
    assert_eq!(fell_back["provider"], "b");
    assert_eq!(fell_back["attempts"], 3);
    assert_eq!(fell_back["fallback"], "error");

    let failed = &rows[2];
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["outcome"], "error");
    assert_eq!(failed["attempts"], 5);
    assert_eq!(failed["cost_usd"], 0.0);

    let streamed = &rows[3];
    assert_eq!(streamed["streamed"], true);
    assert_eq!(streamed["outcome"], "ok");
    assert_eq!(streamed["prompt_tokens"], 10);
    assert_eq!(streamed["cached_tokens"], 4);
    let gpt4o = (6.0 * 2.5 + 4.0 * 1.25 + 20.0 * 10.0) / 1e6;
    assert!(
        (streamed["cost_usd"].as_f64().unwrap() - gpt4o).abs() < 1e-12,
        "{streamed}"
    );
    assert!(streamed["ttft_ms"].is_u64());

    let page = t
        .client
        .get("/admin/v1/ledger?limit=2", MASTER)
        .await
        .json();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_i64().unwrap();
    let rest = t
        .client
        .get(&format!("/admin/v1/ledger?after={after}"), MASTER)
        .await
        .json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        t.client
            .get("/admin/v1/ledger?since=soon", MASTER)
            .await
            .status,
        400
    );
    assert_eq!(t.client.get("/admin/v1/ledger", &key).await.status, 403);
}
