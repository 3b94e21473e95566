//! Spend governance: budgets enforced by reservation under concurrency, rate limits with
//! OpenAI's headers, streamed and cancelled requests priced, alerts, resets and reports that
//! agree with the ledger.

use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tollgate_testkit::{chunk, MockUpstream, Reply, TestClient, TestResponse};

use crate::harness::{
    base_yaml, chat_body, clean_redis, eventually, redis_up, sse_data, start, start_yaml,
    TestGateway, MASTER, REDIS_URL,
};

/// The mock provider's `echo` at $1000 / $2000 per million tokens: a token in costs $0.001,
/// a token out $0.002.
const PRICED_MOCK: &str = "providers:\n  - name: demo\n    kind: mock\n    mock: {latency: 20ms}\nmodels:\n  - name: mock-echo\n    targets: [{provider: demo, model: echo}]\nprices:\n  - model: echo\n    provider: demo\n    input_per_mtok: 1000\n    output_per_mtok: 2000\n";
const IN: f64 = 0.001;
const OUT: f64 = 0.002;

async fn chat(t: &TestGateway, key: &str, body: &Value) -> TestResponse {
    post_chat(&t.client, key, body).await
}

async fn post_chat(client: &TestClient, key: &str, body: &Value) -> TestResponse {
    client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {key}"))],
            body.to_string(),
        )
        .await
}

fn ask_body(max_tokens: u64) -> Value {
    let mut b = chat_body("mock-echo", "hello there");
    b["max_tokens"] = json!(max_tokens);
    b
}

/// The three dollar amounts of a `budget_exceeded` message: spent, reserved, limit.
fn amounts(message: &str) -> (f64, f64, f64) {
    let nums: Vec<f64> = message
        .split('$')
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert_eq!(nums.len(), 3, "{message}");
    (nums[0], nums[1], nums[2])
}

async fn ledger_cost(t: &TestGateway, filter: &str) -> (f64, u64) {
    let res = t
        .client
        .get(&format!("/admin/v1/spend?{filter}"), MASTER)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    (
        v["total_cost_usd"].as_f64().unwrap(),
        v["total_requests"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn two_hundred_concurrent_requests_never_overspend_a_budget() {
    const LIMIT: f64 = 0.25;
    let t = start(&format!(
        "{PRICED_MOCK}budgets:\n  - name: per-key\n    scope: key\n    period: daily\n    limit_usd: {LIMIT}\n"
    ))
    .await;
    let (key_id, key) = t.key(json!({"name": "spender"})).await;
    let body = ask_body(5);
    // The most one request may cost: every body byte a prompt token, `max_tokens` out.
    let max_request = body.to_string().len() as f64 * IN + 5.0 * OUT;

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (client, key, body) = (t.client.clone(), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_chat(&client, &key, &body).await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let res = task.await.unwrap();
        match res.status.as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                let err = &res.json()["error"];
                assert_eq!(err["type"], "budget_exceeded", "{}", res.text());
                assert_eq!(err["code"], "budget_exceeded");
                // Refused only when spend plus outstanding reservations reached the limit.
                let (spent, reserved, limit) = amounts(err["message"].as_str().unwrap());
                assert_eq!(limit, LIMIT);
                assert!(
                    spent + reserved >= LIMIT - 1e-6,
                    "refused below the limit: {err}"
                );
                assert!(res.header("retry-after").is_some());
                assert!(res
                    .header("x-tollgate-budget-reset")
                    .unwrap()
                    .ends_with("T00:00:00Z"));
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    assert_eq!(ok + refused, 200);
    assert!(ok >= 1 && refused >= 1, "{ok} served, {refused} refused");

    // Keep spending one at a time until the budget says no: it must fill up, never overflow.
    let mut more = 0;
    loop {
        let res = chat(&t, &key, &body).await;
        if res.status == 429 {
            break;
        }
        assert_eq!(res.status, 200, "{}", res.text());
        more += 1;
        assert!(more < 1000, "the budget never ran out");
    }
    let (spent, requests) = ledger_cost(&t, &format!("filter_by=key&filter={key_id}")).await;
    assert_eq!(requests, (ok + more) as u64);
    assert!(
        spent <= LIMIT + max_request + 1e-9,
        "spent {spent} > limit {LIMIT} + one request {max_request}"
    );
    assert!(spent >= LIMIT - max_request, "stopped early at {spent}");

    // The admin view agrees.
    let v = t.client.get("/admin/v1/budgets", MASTER).await.json();
    let b = &v["data"][0];
    assert_eq!(b["name"], "per-key");
    assert_eq!(b["counters"][0]["id"], key_id.as_str());
    eventually("reservations settle", || async {
        let v = t.client.get("/admin/v1/budgets", MASTER).await.json();
        let c = &v["data"][0]["counters"][0];
        c["reserved_usd"].as_f64().unwrap() < 1e-9
            && (c["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-9
    })
    .await;

    // Another key has its own budget.
    let other = t.any_key().await;
    assert_eq!(chat(&t, &other, &body).await.status, 200);
}

#[tokio::test]
async fn alerts_fire_once_per_threshold_and_a_reset_restarts_spend() {
    let hook = MockUpstream::start().await;
    let t = start(&format!(
        "{PRICED_MOCK}budgets:\n  - name: team-cap\n    scope: team\n    match: [ml]\n    period: monthly\n    limit_usd: 0.05\n    alerts: {{thresholds: [0.5, 0.9], webhook: \"{}/hook\"}}\n",
        hook.base_url()
    ))
    .await;
    t.team("ml", &[]).await;
    t.team("ops", &[]).await;
    let (_, ml) = t.key(json!({"name": "ml", "team": "ml"})).await;
    let (_, ops) = t.key(json!({"name": "ops", "team": "ops"})).await;
    let body = ask_body(1);
    let mut served = 0;
    while chat(&t, &ml, &body).await.status == 200 {
        served += 1;
        assert!(served < 100);
    }
    // The team's budget does not touch another team.
    assert_eq!(chat(&t, &ops, &body).await.status, 200);

    // Alerts are decided when a request settles, before its answer: by now every one that
    // will be sent has been counted, so exactly two means no duplicate is on its way.
    let metrics = t.client.get("/metrics", MASTER).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "tollgate_budget_alerts_total 2"),
        "{metrics}"
    );
    hook.wait_for_requests(2).await;
    let calls: Vec<Value> = hook.requests().iter().map(|r| r.json()).collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0]["type"], "budget.threshold_reached");
    assert_eq!(calls[0]["budget"], "team-cap");
    assert_eq!(calls[0]["scope"], "team");
    assert_eq!(calls[0]["id"], "ml");
    assert_eq!(calls[0]["threshold"], 0.5);
    assert_eq!(calls[1]["threshold"], 0.9);
    assert!(calls[1]["spent_usd"].as_f64().unwrap() >= 0.045);
    drop(calls);

    // An operator reset lets the team spend again, and is audited.
    let res = t
        .client
        .post_json(
            "/admin/v1/budgets/team-cap/reset",
            MASTER,
            &json!({"id": "ml"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(chat(&t, &ml, &body).await.status, 200);
    let missing = t
        .client
        .post_json("/admin/v1/budgets/nope/reset", MASTER, &json!({"id": "ml"}))
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn budgets_survive_a_restart_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let yaml = base_yaml().replace("memory://", &format!("sqlite://{}", db.display()))
        + PRICED_MOCK
        + "budgets:\n  - name: all\n    scope: global\n    period: total\n    limit_usd: 0.03\n";
    let t = start_yaml(&yaml).await;
    let key = t.any_key().await;
    let body = ask_body(1);
    let mut served = 0;
    while chat(&t, &key, &body).await.status == 200 {
        served += 1;
        assert!(served < 100);
    }
    let TestGateway {
        gw, dir: cfg_dir, ..
    } = t;
    gw.shutdown().await;
    drop(cfg_dir);

    // A new process reads the spend back from the ledger and keeps refusing.
    let t = start_yaml(&yaml).await;
    let res = chat(&t, &key, &body).await;
    assert_eq!(res.status, 429, "{}", res.text());
    let msg = res.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("does not reset"), "{msg}");
    let (spent, _, _) = amounts(&msg);
    assert!(spent >= 0.03, "{msg}");
}

#[tokio::test]
async fn rate_limits_answer_with_openai_headers() {
    let t = start(&format!(
        "{PRICED_MOCK}rate_limits:\n  - name: per-key\n    scope: key\n    rpm: 3\n    tpm: 10000\n  - name: model-wide\n    scope: model\n    match: [mock-echo]\n    rpm: 100\n"
    ))
    .await;
    let key = t.any_key().await;
    let body = ask_body(10);
    let estimate = body.to_string().len() as u64 / 4 + 10;
    for remaining in [2, 1, 0] {
        let res = chat(&t, &key, &body).await;
        assert_eq!(res.status, 200, "{}", res.text());
        // The tighter of the two rules is reported.
        assert_eq!(res.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(
            res.header("x-ratelimit-remaining-requests"),
            Some(remaining.to_string().as_str())
        );
        let reset = res.header("x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "{reset}");
        assert_eq!(res.header("x-ratelimit-limit-tokens"), Some("10000"));
        let left: u64 = res
            .header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!(left <= 10_000 - estimate, "{left}");
        assert!(res.header("x-ratelimit-reset-tokens").is_some());
    }
    let res = chat(&t, &key, &body).await;
    assert_eq!(res.status, 429, "{}", res.text());
    let err = &res.json()["error"];
    assert_eq!(err["type"], "requests");
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(err["message"].as_str().unwrap().contains("per-key"));
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    // The three requests leave the one-minute window together, 58 to 62 s from now.
    assert!((58..=62).contains(&retry), "{retry}");
    assert_eq!(res.header("x-ratelimit-remaining-requests"), Some("0"));

    // Another key has its own bucket; the model-wide one still has room.
    let other = t.any_key().await;
    let res = chat(&t, &other, &body).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-ratelimit-remaining-requests"), Some("2"));
}

#[tokio::test]
async fn token_limits_refuse_a_request_the_bucket_cannot_hold() {
    let t = start(&format!(
        "{PRICED_MOCK}rate_limits:\n  - name: tokens\n    scope: key\n    tpm: 100\n"
    ))
    .await;
    let key = t.any_key().await;
    // 80 tokens of max output plus the prompt estimate: the first fits, the second does not.
    let res = chat(&t, &key, &ask_body(80)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.header("x-ratelimit-limit-requests").is_none());
    let res = chat(&t, &key, &ask_body(80)).await;
    assert_eq!(res.status, 429, "{}", res.text());
    assert_eq!(res.json()["error"]["type"], "tokens");
}

/// An upstream that streams `n` chunks, then waits (so a client can leave mid-stream).
fn slow_stream(n: usize) -> Reply {
    let mut events: Vec<Value> = (0..n).map(|i| chunk(&format!("word{i} "))).collect();
    events.push(json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}}));
    Reply::sse(&events, Duration::from_millis(300))
}

#[tokio::test]
async fn streams_are_priced_with_usage_requested_upstream_and_hidden_from_the_client() {
    let up = MockUpstream::start().await;
    let t = start(&format!(
        "providers:\n  - name: a\n    kind: openai\n    base_url: {}\nmodels:\n  - name: m\n    targets: [{{provider: a, model: gpt-4o-mini}}]\n",
        up.base_url()
    ))
    .await;
    let key = t.any_key().await;

    // The client does not ask for usage: the gateway asks, prices from it, and hides it.
    let usage_chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}});
    up.push(Reply::sse(
        &[chunk("hi"), usage_chunk.clone()],
        Duration::ZERO,
    ));
    let mut body = chat_body("m", "hi");
    body["stream"] = json!(true);
    let res = chat(&t, &key, &body).await;
    assert_eq!(res.status, 200);
    let sent = up.requests()[0].json();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let events = sse_data(&res.text());
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "{events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // A client that asks gets the usage chunk.
    up.push(Reply::sse(&[chunk("hi"), usage_chunk], Duration::ZERO));
    body["stream_options"] = json!({"include_usage": true});
    let res = chat(&t, &key, &body).await;
    assert!(sse_data(&res.text())
        .iter()
        .any(|e| e.contains("\"prompt_tokens\":10")));

    // A client that leaves mid-stream is still charged, for what was generated so far.
    up.push(slow_stream(20));
    let mut stream = t.open_stream(&key, "m", "count to twenty please").await;
    let mut got = String::new();
    while !got.contains("word2") {
        let frame = stream.body_mut().frame().await.unwrap().unwrap();
        if let Some(d) = frame.data_ref() {
            got.push_str(&String::from_utf8_lossy(d));
        }
    }
    drop(stream);

    let rows = eventually_rows(&t, 3).await;
    for r in &rows[..2] {
        assert_eq!(r["streamed"], true);
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["prompt_tokens"], 10);
        assert_eq!(r["completion_tokens"], 20);
        assert_eq!(r["estimated"], false);
        assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
    }
    let cancelled = &rows[2];
    assert_eq!(cancelled["outcome"], "cancelled");
    assert_eq!(cancelled["estimated"], true);
    let generated = cancelled["completion_tokens"].as_u64().unwrap();
    // "word0 word1 word2 " (and perhaps one more) were generated, counted by the tokenizer.
    assert!((3..=12).contains(&generated), "{cancelled}");
    assert!(cancelled["prompt_tokens"].as_u64().unwrap() >= 4);
    assert!(cancelled["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(cancelled["price_version"]
        .as_str()
        .unwrap()
        .starts_with("litellm-"));
}

async fn eventually_rows(t: &TestGateway, n: usize) -> Vec<Value> {
    let read = || async {
        let res = t.client.get("/admin/v1/ledger?limit=1000", MASTER).await;
        res.json()["data"].as_array().unwrap().clone()
    };
    eventually("ledger rows", || async { read().await.len() >= n }).await;
    read().await
}

#[tokio::test]
async fn spend_reports_agree_with_the_ledger() {
    let t = start(PRICED_MOCK).await;
    t.team("ml", &[]).await;
    t.team("ops", &[]).await;
    let mut keys = Vec::new();
    for (i, team) in ["ml", "ml", "ops"].iter().enumerate() {
        keys.push(t.key(json!({"name": format!("k{i}"), "team": team})).await);
    }
    for (i, (_, key)) in keys.iter().enumerate() {
        for n in 0..=i {
            assert_eq!(chat(&t, key, &ask_body(3 + n as u64)).await.status, 200);
        }
    }
    let rows = eventually_rows(&t, 6).await;
    let sum = |f: &dyn Fn(&Value) -> bool| -> f64 {
        rows.iter()
            .filter(|r| f(r))
            .map(|r| r["cost_usd"].as_f64().unwrap())
            .sum()
    };

    let by_key = t
        .client
        .get("/admin/v1/spend?group_by=key", MASTER)
        .await
        .json();
    assert_eq!(by_key["rows"].as_array().unwrap().len(), 3);
    for row in by_key["rows"].as_array().unwrap() {
        let id = row["group"].as_str().unwrap();
        let want = sum(&|r| r["key_id"] == id);
        assert!(
            (row["cost_usd"].as_f64().unwrap() - want).abs() < 1e-9,
            "{row}"
        );
    }
    // Top spender first: the third key made the most requests.
    assert_eq!(by_key["rows"][0]["group"], keys[2].0.as_str());
    assert_eq!(by_key["rows"][0]["requests"], 3);

    let by_team = t
        .client
        .get("/admin/v1/spend?group_by=team&limit=1", MASTER)
        .await
        .json();
    assert_eq!(by_team["rows"].as_array().unwrap().len(), 1);
    let total = sum(&|_| true);
    assert!((by_key["total_cost_usd"].as_f64().unwrap() - total).abs() < 1e-9);

    let today = t
        .client
        .get("/admin/v1/spend?group_by=day&since=1d&format=csv", MASTER)
        .await;
    assert_eq!(today.status, 200);
    assert!(today
        .header("content-type")
        .unwrap()
        .starts_with("text/csv"));
    let text = today.text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("day,requests,prompt_tokens,completion_tokens,cost_usd")
    );
    let day: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(day[1], "6");
    assert!((day[4].parse::<f64>().unwrap() - total).abs() < 1e-9);

    let model = t
        .client
        .get(
            "/admin/v1/spend?group_by=model&filter_by=team&filter=ops",
            MASTER,
        )
        .await
        .json();
    assert_eq!(model["rows"][0]["group"], "mock-echo");
    assert_eq!(model["rows"][0]["requests"], 3);

    let bad = t
        .client
        .get("/admin/v1/spend?group_by=colour", MASTER)
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "group_by");
    let (_, key) = &keys[0];
    assert_eq!(t.client.get("/admin/v1/spend", key).await.status, 403);
}

/// Two replicas sharing one SQLite file and one Redis key prefix. `None` (skip) when Redis is
/// unreachable and not required.
async fn replicas(extra: &str) -> Option<(TestGateway, TestGateway, tempfile::TempDir, String)> {
    let url = REDIS_URL;
    if !redis_up("the multi-replica test").await {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tollgate-it:{:016x}:", fastrand::u64(..));
    let yaml = base_yaml().replace(
        "  database_url: memory://\n",
        &format!(
            "  database_url: sqlite://{}\n  refresh_interval: 50ms\n  redis_url: {url}\n  redis_prefix: \"{prefix}\"\n",
            dir.path().join("shared.db").display()
        ),
    ) + PRICED_MOCK
        + extra;
    let a = start_yaml(&yaml).await;
    let b = start_yaml(&yaml).await;
    Some((a, b, dir, prefix))
}

#[tokio::test]
async fn replicas_share_one_budget_and_one_rate_limit_through_redis() {
    const LIMIT: f64 = 0.25;
    let Some((a, b, _dir, prefix)) = replicas(&format!(
        "budgets:\n  - name: per-key\n    scope: key\n    period: daily\n    limit_usd: {LIMIT}\nrate_limits:\n  - name: per-key-rate\n    scope: key\n    rpm: 1000000\n  - name: ten\n    scope: team\n    match: [slow]\n    rpm: 10\n"
    ))
    .await
    else {
        return;
    };
    let (key_id, key) = a.key(json!({"name": "shared"})).await;
    let body = ask_body(5);
    eventually("the second replica knows the key", || async {
        chat(&b, &key, &body).await.status != 401
    })
    .await;
    let max_request = body.to_string().len() as f64 * IN + 5.0 * OUT;

    // 200 concurrent requests spread over both replicas.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = if i % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        let (key, body) = (key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_chat(&client, &key, &body).await.status.as_u16()
        }));
    }
    for t in tasks {
        assert!([200, 429].contains(&t.await.unwrap()));
    }
    // Then one at a time, alternating, until both say no.
    let mut i = 0;
    loop {
        let t = if i % 2 == 0 { &a } else { &b };
        let res = chat(t, &key, &body).await;
        i += 1;
        if res.status == 429
            && chat(if i % 2 == 0 { &a } else { &b }, &key, &body)
                .await
                .status
                == 429
        {
            break;
        }
        assert!(i < 1000, "the shared budget never ran out");
    }
    // Each replica flushes its own ledger; both write the same database.
    let _ = ledger_cost(&b, &format!("filter_by=key&filter={key_id}")).await;
    let (spent, _) = ledger_cost(&a, &format!("filter_by=key&filter={key_id}")).await;
    assert!(
        spent <= LIMIT + max_request + 1e-9,
        "two replicas spent {spent} of a {LIMIT} budget (one request: {max_request})"
    );
    assert!(spent >= LIMIT - max_request, "stopped early at {spent}");

    // Ten requests a minute for the team, across both replicas together.
    a.team("slow", &[]).await;
    let (_, slow) = a.key(json!({"name": "slow", "team": "slow"})).await;
    let small = ask_body(1);
    eventually("the second replica knows the new key", || async {
        chat(&b, &slow, &small).await.status != 401
    })
    .await;
    // The request that proved the second replica knows the key was the first admitted.
    let mut admitted = 1;
    for i in 0..30 {
        let t = if i % 2 == 0 { &a } else { &b };
        let res = chat(t, &slow, &small).await;
        if res.status == 200 {
            admitted += 1;
        } else {
            assert_eq!(res.status, 429, "{}", res.text());
            assert_eq!(res.json()["error"]["type"], "requests");
        }
    }
    assert_eq!(admitted, 10);
    clean_redis(&prefix).await;
}

async fn patch_key(t: &TestGateway, id: &str, body: &Value) -> TestResponse {
    t.client
        .send(
            Method::PATCH,
            &format!("/admin/v1/keys/{id}"),
            &[("authorization", &format!("Bearer {MASTER}"))],
            body.to_string(),
        )
        .await
}

async fn key_budget(t: &TestGateway, id: &str) -> Value {
    let res = t
        .client
        .get(&format!("/admin/v1/keys/{id}/budget"), MASTER)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["data"].clone()
}

#[tokio::test]
async fn a_key_s_own_limits_are_enforced_edited_and_reset_through_the_admin_api() {
    let t = start(PRICED_MOCK).await;
    let body = ask_body(1);

    // Requests per minute of its own: two pass, the third is refused with OpenAI's shape.
    let (limited_id, limited) = t
        .key(json!({"name": "limited", "limits": {"rpm": 2}}))
        .await;
    for remaining in ["1", "0"] {
        let res = chat(&t, &limited, &body).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(
            res.header("x-ratelimit-remaining-requests"),
            Some(remaining)
        );
    }
    let res = chat(&t, &limited, &body).await;
    assert_eq!(res.status, 429, "{}", res.text());
    let err = &res.json()["error"];
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(&format!("key:{limited_id}")),
        "{err}"
    );
    // A key without limits is not limited, and carries no rate-limit headers.
    let free = t.any_key().await;
    let res = chat(&t, &free, &body).await;
    assert_eq!(res.status, 200);
    assert!(res.header("x-ratelimit-limit-requests").is_none());
    // Lifting the limit applies to the next request, without a restart.
    let res = patch_key(&t, &limited_id, &json!({"limits": {}})).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["limits"], json!({}));
    assert_eq!(chat(&t, &limited, &body).await.status, 200);

    // A daily budget of its own: spent until refused, then raised, then reset.
    let (id, key) = t
        .key(json!({"name": "capped", "limits": {"budget_usd": 0.05, "budget_period": "daily"}}))
        .await;
    let mut served = 0;
    let refusal = loop {
        let res = chat(&t, &key, &body).await;
        if res.status != 200 {
            break res;
        }
        served += 1;
        assert!(served < 100);
    };
    assert_eq!(refusal.status, 429, "{}", refusal.text());
    let err = &refusal.json()["error"];
    assert_eq!(err["code"], "budget_exceeded");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains(&format!("key:{id}")), "{msg}");
    assert!(refusal.header("x-tollgate-budget-reset").is_some());
    let (spent, _, limit) = amounts(msg);
    assert_eq!(limit, 0.05);
    assert!(spent >= 0.05, "{msg}");
    let report = key_budget(&t, &id).await;
    assert_eq!(report["period"], "daily");
    assert_eq!(report["limit_usd"], 0.05);
    assert_eq!(report["counters"][0]["id"], id.as_str());
    assert!(report["counters"][0]["spent_usd"].as_f64().unwrap() >= 0.05);
    // The key's spend also stays inside every other key's budget: `free` was never capped.
    assert_eq!(chat(&t, &free, &body).await.status, 200);

    // A higher limit applies to the spend so far.
    let res = patch_key(
        &t,
        &id,
        &json!({"limits": {"budget_usd": 10, "budget_period": "daily", "rpm": 1000}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["limits"]["budget_usd"], 10.0);
    assert_eq!(chat(&t, &key, &body).await.status, 200);
    assert!(
        key_budget(&t, &id).await["counters"][0]["spent_usd"]
            .as_f64()
            .unwrap()
            > 0.05
    );
    // An operator reset starts it from zero, and is audited.
    let res = t
        .client
        .post_json(
            &format!("/admin/v1/keys/{id}/budget/reset"),
            MASTER,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        key_budget(&t, &id).await["counters"][0]["spent_usd"].as_f64(),
        Some(0.0)
    );
    eventually("the reset in the audit log", || async {
        let res = t
            .client
            .get("/admin/v1/audit?action=budget.reset", MASTER)
            .await;
        res.text().contains(&format!("key:{id}:{id}"))
    })
    .await;
    // Without a budget there is nothing to report or reset.
    assert_eq!(key_budget(&t, &limited_id).await, Value::Null);
    let res = t
        .client
        .post_json(
            &format!("/admin/v1/keys/{limited_id}/budget/reset"),
            MASTER,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 404, "{}", res.text());

    // Bad limits are refused (with the field that is wrong, where it is one); nothing is
    // created or changed.
    for (limits, param) in [
        (json!({"budget_usd": -1}), Some("limits.budget_usd")),
        (json!({"budget_usd": 0}), Some("limits.budget_usd")),
        (json!({"rpm": 0}), Some("limits.rpm")),
        (json!({"tpm": 0}), Some("limits.tpm")),
        (
            json!({"budget_period": "weekly"}),
            Some("limits.budget_period"),
        ),
        (json!({"rpm": -1}), None),
        (json!({"budget_period": "hourly", "budget_usd": 1}), None),
        (json!({"burst": 3}), None),
    ] {
        let res = t
            .client
            .post_json(
                "/admin/v1/keys",
                MASTER,
                &json!({"name": "bad", "limits": limits}),
            )
            .await;
        assert_eq!(res.status, 400, "{limits}: {}", res.text());
        if let Some(param) = param {
            assert_eq!(res.json()["error"]["param"], param, "{limits}");
        }
        let res = patch_key(&t, &id, &json!({ "limits": limits })).await;
        assert_eq!(res.status, 400, "{limits}: {}", res.text());
    }
    assert_eq!(
        t.client
            .get(&format!("/admin/v1/keys/{id}"), MASTER)
            .await
            .json()["limits"]["budget_usd"],
        10.0
    );
    let list = t.client.get("/admin/v1/keys", MASTER).await.json();
    assert!(
        !list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "bad"),
        "{list}"
    );
}

#[tokio::test]
async fn team_and_user_limits_are_shared_by_their_keys() {
    let t = start(PRICED_MOCK).await;
    let body = ask_body(1);
    let res = t
        .client
        .post_json(
            "/admin/v1/teams",
            MASTER,
            &json!({"id": "ml", "limits": {"rpm": 3}}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.json()["limits"], json!({"rpm": 3}));
    let (_, a) = t.key(json!({"name": "a", "team": "ml"})).await;
    let (_, b) = t.key(json!({"name": "b", "team": "ml"})).await;
    // Three requests a minute for the whole team, whichever key sends them.
    for key in [&a, &b, &a] {
        assert_eq!(chat(&t, key, &body).await.status, 200);
    }
    let res = chat(&t, &b, &body).await;
    assert_eq!(res.status, 429, "{}", res.text());
    let msg = res.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("team:ml"), "{msg}");

    // A user's budget counts every key of theirs; lifting it lets them spend again.
    let res = t
        .client
        .post_json(
            "/admin/v1/users",
            MASTER,
            &json!({"id": "alice", "limits": {"budget_usd": 0.03, "budget_period": "weekly"}}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let (_, c) = t.key(json!({"name": "c", "user": "alice"})).await;
    let (_, d) = t.key(json!({"name": "d", "user": "alice"})).await;
    let mut served = 0;
    let refusal = loop {
        let key = if served % 2 == 0 { &c } else { &d };
        let res = chat(&t, key, &body).await;
        if res.status != 200 {
            break res;
        }
        served += 1;
        assert!(served < 100);
    };
    assert!(served >= 2, "both keys spent before the refusal");
    let err = &refusal.json()["error"];
    assert_eq!(err["code"], "budget_exceeded", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("user:alice"),
        "{err}"
    );
    let budget = t
        .client
        .get("/admin/v1/users/alice/budget", MASTER)
        .await
        .json();
    assert_eq!(budget["data"]["period"], "weekly");
    assert!(budget["data"]["counters"][0]["spent_usd"].as_f64().unwrap() >= 0.03);
    let res = t
        .client
        .post_json("/admin/v1/users/alice/budget/reset", MASTER, &json!({}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(chat(&t, &d, &body).await.status, 200);
    let res = t
        .client
        .send(
            Method::PATCH,
            "/admin/v1/users/alice",
            &[("authorization", &format!("Bearer {MASTER}"))],
            json!({"limits": {}}).to_string(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        t.client
            .get("/admin/v1/users/alice/budget", MASTER)
            .await
            .json()["data"],
        Value::Null
    );
    // The team sets no budget; a bad limit is refused with its field.
    assert_eq!(
        t.client
            .get("/admin/v1/teams/ml/budget", MASTER)
            .await
            .json()["data"],
        Value::Null
    );
    let res = t
        .client
        .send(
            Method::PATCH,
            "/admin/v1/teams/ml",
            &[("authorization", &format!("Bearer {MASTER}"))],
            json!({"limits": {"tpm": 0}}).to_string(),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(res.json()["error"]["param"], "limits.tpm");
    assert_eq!(
        t.client
            .get("/admin/v1/teams/nope/budget", MASTER)
            .await
            .status,
        404
    );
}
