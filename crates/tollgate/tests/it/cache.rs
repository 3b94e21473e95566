//! The exact response cache: hits per tenant, request controls, TTL, streams replayed in any
//! client API, the ledger's saved cost, and the policy still deciding on a hit.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::{chat_completion, chunk, MockUpstream, Reply};

use crate::harness::*;

fn yaml(up: &MockUpstream, cache: &str) -> String {
    format!(
        "providers:\n  - name: up\n    kind: openai\n    base_url: {}\nmodels:\n  - name: cached\n    targets: [{{provider: up, model: gpt-upstream}}]\n    cache: {cache}\n  - name: uncached\n    targets: [{{provider: up, model: gpt-upstream}}]\nprices:\n  - model: gpt-upstream\n    input_per_mtok: 1000\n    output_per_mtok: 2000\n",
        up.base_url()
    )
}

async fn ask(
    t: &TestGateway,
    key: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> tollgate_testkit::TestResponse {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    t.client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &headers,
            body.to_string(),
        )
        .await
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache_and_costs_nothing() {
    let up = MockUpstream::start().await;
    let t = start(&yaml(&up, "{ttl: 10m}")).await;
    let key = t.any_key().await;
    up.push(Reply::json(
        200,
        chat_completion("gpt-upstream", "Paris.", 20, 2),
    ));
    let body = json!({"model": "cached", "messages": [{"role": "user", "content": "capital of France?"}], "user": "alice"});
    let first = ask(&t, &key, &body, &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    // Who asks (`user`) is not part of the question.
    let mut again = body.clone();
    again["user"] = json!("bob");
    let second = ask(&t, &key, &again, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(second.json()["choices"][0]["message"]["content"], "Paris.");
    assert_eq!(second.json()["usage"]["prompt_tokens"], 20);
    assert_eq!(up.count(), 1, "the upstream was asked once");

    let rows = ledger_rows(&t, 2).await;
    assert_eq!(rows[0]["cache_hit"], false);
    let paid = rows[0]["cost_usd"].as_f64().unwrap();
    assert!(paid > 0.0);
    assert_eq!(rows[1]["cache_hit"], true);
    assert_eq!(rows[1]["cost_usd"], 0.0);
    assert_eq!(rows[1]["cost_saved_usd"].as_f64().unwrap(), paid);

    // A different question, or a group without a cache, goes upstream.
    up.push(Reply::json(
        200,
        chat_completion("gpt-upstream", "Rome.", 20, 2),
    ));
    let other =
        json!({"model": "cached", "messages": [{"role": "user", "content": "capital of Italy?"}]});
    assert_eq!(
        ask(&t, &key, &other, &[]).await.header("x-tollgate-cache"),
        Some("miss")
    );
    up.push(Reply::json(
        200,
        chat_completion("gpt-upstream", "Paris.", 20, 2),
    ));
    let mut plain = body.clone();
    plain["model"] = json!("uncached");
    assert_eq!(
        ask(&t, &key, &plain, &[]).await.header("x-tollgate-cache"),
        None
    );
    assert_eq!(up.count(), 3);

    let metrics = t.client.get("/metrics", MASTER).await.text();
    assert!(
        metrics.contains(r#"tollgate_cache_lookups_total{model="cached",result="hit"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn tenants_never_share_answers_unless_configured() {
    let up = MockUpstream::start().await;
    let t = start(&yaml(&up, "{}")).await;
    t.team("red", &[]).await;
    t.team("blue", &[]).await;
    let red1 = t.key(json!({"name": "r1", "team": "red"})).await.1;
    let red2 = t.key(json!({"name": "r2", "team": "red"})).await.1;
    let blue = t.key(json!({"name": "b", "team": "blue"})).await.1;
    let body =
        json!({"model": "cached", "messages": [{"role": "user", "content": "secret plans"}]});
    for _ in 0..3 {
        up.push(Reply::json(
            200,
            chat_completion("gpt-upstream", "ok", 5, 1),
        ));
    }
    assert_eq!(
        ask(&t, &red1, &body, &[]).await.header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        ask(&t, &red2, &body, &[]).await.header("x-tollgate-cache"),
        Some("hit"),
        "same team"
    );
    assert_eq!(
        ask(&t, &blue, &body, &[]).await.header("x-tollgate-cache"),
        Some("miss"),
        "another team"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn clients_control_the_cache_per_request() {
    let up = MockUpstream::start().await;
    let t = start(&yaml(&up, "{}")).await;
    let key = t.any_key().await;
    let body = json!({"model": "cached", "messages": [{"role": "user", "content": "hello"}]});
    for text in ["one", "two", "three"] {
        up.push(Reply::json(
            200,
            chat_completion("gpt-upstream", text, 5, 1),
        ));
    }
    // no-store: neither read nor kept.
    let res = ask(&t, &key, &body, &[("cache-control", "no-store")]).await;
    assert_eq!(res.header("x-tollgate-cache"), None);
    let res = ask(&t, &key, &body, &[]).await;
    assert_eq!(res.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(res.json()["choices"][0]["message"]["content"], "two");
    // refresh (or no-cache): ask upstream, and keep the new answer.
    let res = ask(&t, &key, &body, &[("x-tollgate-cache", "refresh")]).await;
    assert_eq!(res.header("x-tollgate-cache"), Some("miss"));
    let res = ask(&t, &key, &body, &[]).await;
    assert_eq!(res.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(res.json()["choices"][0]["message"]["content"], "three");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn only_qualifying_requests_are_cached_and_entries_expire() {
    let up = MockUpstream::start().await;
    let t = start(&yaml(&up, "{ttl: 1s, when: temperature_zero}")).await;
    let key = t.any_key().await;
    let warm = json!({"model": "cached", "temperature": 0.7, "messages": [{"role": "user", "content": "poem"}]});
    up.push(Reply::json(
        200,
        chat_completion("gpt-upstream", "roses", 5, 1),
    ));
    assert_eq!(
        ask(&t, &key, &warm, &[]).await.header("x-tollgate-cache"),
        None
    );
    let cold = json!({"model": "cached", "temperature": 0, "messages": [{"role": "user", "content": "2+2"}]});
    up.push(Reply::json(200, chat_completion("gpt-upstream", "4", 5, 1)));
    assert_eq!(
        ask(&t, &key, &cold, &[]).await.header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        ask(&t, &key, &cold, &[]).await.header("x-tollgate-cache"),
        Some("hit")
    );
    // After the TTL the answer is gone.
    for _ in 0..100 {
        up.push(Reply::json(200, chat_completion("gpt-upstream", "4", 5, 1)));
    }
    eventually("the entry expires", || async {
        ask(&t, &key, &cold, &[("cache-control", "max-age=0")])
            .await
            .header("x-tollgate-cache")
            == Some("miss")
    })
    .await;
}

#[tokio::test]
async fn a_streamed_answer_is_replayed_as_a_stream_or_as_json_in_any_api() {
    let up = MockUpstream::start().await;
    let t = start(&yaml(&up, "{}")).await;
    let key = t.any_key().await;
    let usage = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}});
    let mut finish = chunk("");
    finish["choices"][0]["delta"] = json!({});
    finish["choices"][0]["finish_reason"] = json!("stop");
    up.push(Reply::sse(
        &[chunk("Hel"), chunk("lo "), chunk("there"), finish, usage],
        Duration::ZERO,
    ));
    let body = json!({"model": "cached", "stream": true, "messages": [{"role": "user", "content": "greet me"}]});
    let text_of = |raw: &str| -> String {
        sse_data(raw)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    let first = ask(&t, &key, &body, &[]).await;
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(text_of(&first.text()), "Hello there");
    // The stream was kept once it completed.
    let second = ask(&t, &key, &body, &[]).await;
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(second.header("content-type"), Some("text/event-stream"));
    let replay = second.text();
    assert_eq!(text_of(&replay), "Hello there");
    assert_eq!(sse_data(&replay).last().map(String::as_str), Some("[DONE]"));
    assert!(replay.contains(r#""finish_reason":"stop""#));
    // The same question without streaming gets the same answer as JSON.
    let mut json_body = body.clone();
    json_body["stream"] = json!(false);
    let res = ask(&t, &key, &json_body, &[]).await;
    assert_eq!(res.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(
        res.json()["choices"][0]["message"]["content"],
        "Hello there"
    );
    assert_eq!(res.json()["usage"]["completion_tokens"], 3);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn anthropic_clients_hit_too_and_the_policy_still_decides() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        "{}policies:\n  - name: interns\n    applies_to: \"principal.team == 'interns'\"\n    rules:\n      - name: no-cached\n        when: \"request.model == 'cached'\"\n        action: deny\n        reason: interns may not use cached\n      - name: rest\n        when: \"true\"\n        action: allow\n",
        yaml(&up, "{scope: global}")
    );
    let t = start(&yaml).await;
    t.team("interns", &[]).await;
    let key = t.any_key().await;
    let intern = t.key(json!({"name": "i", "team": "interns"})).await.1;
    up.push(Reply::json(
        200,
        chat_completion("gpt-upstream", "Bonjour", 5, 1),
    ));
    let body = json!({"model": "cached", "max_tokens": 20, "messages": [{"role": "user", "content": "say hi in French"}]});
    let send = |k: String| {
        let t = &t;
        let body = body.clone();
        async move {
            t.client
                .send(
                    Method::POST,
                    "/v1/messages",
                    &[("x-api-key", &k)],
                    body.to_string(),
                )
                .await
        }
    };
    let res = send(key.clone()).await;
    assert_eq!(
        res.header("x-tollgate-cache"),
        Some("miss"),
        "{}",
        res.text()
    );
    let res = send(key.clone()).await;
    assert_eq!(res.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(res.json()["content"][0]["text"], "Bonjour");
    assert_eq!(res.json()["type"], "message");
    // Scope global shares the answer, but a denied caller is still denied.
    let res = send(intern).await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert_eq!(res.json()["error"]["type"], "permission_error");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn replicas_share_answers_through_redis() {
    let url = "redis://127.0.0.1:6379/";
    if tollgate_core::redis_store::connect(url).await.is_err() {
        assert!(
            std::env::var("TOLLGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "Redis at {url} is required (TOLLGATE_REQUIRE_SERVICES=1) but unreachable"
        );
        eprintln!("!!! SKIPPING the shared cache test: Redis at {url} is unreachable");
        return;
    }
    let prefix = format!("tollgate-it:{:016x}:", fastrand::u64(..));
    let up = MockUpstream::start().await;
    let config = base_yaml().replace(
        "  database_url: memory://\n",
        &format!("  database_url: memory://\n  redis_url: {url}\n  redis_prefix: \"{prefix}\"\n"),
    ) + &yaml(&up, "{ttl: 1m}");
    let a = start_yaml(&config).await;
    let b = start_yaml(&config).await;
    up.push(Reply::json(
        200,
        chat_completion("gpt-upstream", "shared answer", 7, 2),
    ));
    let body =
        json!({"model": "cached", "messages": [{"role": "user", "content": "one question"}]});
    let first = ask(&a, MASTER, &body, &[]).await;
    assert_eq!(
        first.header("x-tollgate-cache"),
        Some("miss"),
        "{}",
        first.text()
    );
    // The entry is shared off the request path: wait until Redis holds it.
    let mut con = tollgate_core::redis_store::connect(url).await.unwrap();
    let keys = std::sync::Mutex::new(Vec::<String>::new());
    eventually("the entry reaches Redis", || async {
        let mut con = con.clone();
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}cache:*"))
            .query_async(&mut con)
            .await
            .unwrap();
        let any = !found.is_empty();
        *keys.lock().unwrap() = found;
        any
    })
    .await;
    let keys = keys.into_inner().unwrap();
    // The other replica answers from it.
    let res = ask(&b, MASTER, &body, &[]).await;
    assert_eq!(res.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(
        res.json()["choices"][0]["message"]["content"],
        "shared answer"
    );
    assert_eq!(up.count(), 1, "one upstream call for both replicas");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// The built-in model's directory (`TOLLGATE_TEST_EMBEDDING_MODEL`, set by scripts/test.sh);
/// without it the test says so and skips, unless services are required.
fn embedding_model() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_EMBEDDING_MODEL") {
        Ok(d) => Some(d),
        Err(_) if std::env::var("TOLLGATE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("TOLLGATE_TEST_EMBEDDING_MODEL is not set")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: TOLLGATE_TEST_EMBEDDING_MODEL is not set (scripts/test.sh sets it)"
            );
            None
        }
    }
}

fn chat_parts(model: &str, content: Value) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": content}]})
}

#[tokio::test]
async fn a_semantic_cache_can_embed_through_a_model_group_billed_to_the_caller() {
    let t = start(
        "providers:\n  - name: demo\n    kind: mock\nmodels:\n  - name: emb\n    targets: [{provider: demo, model: embedder}]\n  - name: chat\n    targets: [{provider: demo, model: echo}]\n    cache: {ttl: 10m, semantic: {embedder: emb, threshold: 0.99}}\n",
    )
    .await;
    let (key_id, key) = t.key(json!({"name": "k"})).await;
    let first = ask(&t, &key, &chat_parts("chat", json!("hello there")), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    // The answer is indexed off the request path.
    eventually("the answer is in the semantic index", || async {
        t.gw.llm.semantic_cache().len() == 1
    })
    .await;
    // The same words as text parts: a different request to the exact cache, the same meaning
    // (the mock embedder hashes the text, so the similarity is exactly 1).
    let parts = json!([{"type": "text", "text": "hello there"}]);
    let hit = ask(&t, &key, &chat_parts("chat", parts), &[]).await;
    assert_eq!(hit.status, 200, "{}", hit.text());
    assert_eq!(
        hit.header("x-tollgate-cache"),
        Some("semantic-hit; score=1.00")
    );
    assert_eq!(
        hit.json()["choices"][0]["message"]["content"],
        first.json()["choices"][0]["message"]["content"]
    );
    let other = ask(&t, &key, &chat_parts("chat", json!("something else")), &[]).await;
    assert_eq!(other.header("x-tollgate-cache"), Some("miss"));
    // The embedding calls were made as the caller: in the ledger under its key.
    // Three embeddings, two answers from upstream, one from the cache.
    let rows = ledger_rows(&t, 6).await;
    assert!(
        rows.iter().any(|r| r["endpoint"] == "embeddings"
            && r["model"] == "emb"
            && r["key_id"] == key_id.as_str()),
        "{rows:?}"
    );
}

#[tokio::test]
async fn semantic_entries_survive_a_restart() {
    let Some(model) = embedding_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nmaster_key: {MASTER}\nstorage:\n  database_url: sqlite://{}\nlogging:\n  level: warn\ncache:\n  embedding_model: {model}\nproviders:\n  - name: demo\n    kind: mock\nmodels:\n  - name: chat\n    targets: [{{provider: demo, model: echo}}]\n    cache: {{ttl: 10m, semantic: {{threshold: 0.85}}}}\n",
        dir.path().join("t.db").display()
    );
    let t = start_yaml(&yaml).await;
    let key = t.any_key().await;
    let q = |text: &str| chat_parts("chat", json!(text));
    let first = ask(&t, &key, &q("What is the capital of France?"), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    eventually("the answer is in the semantic index", || async {
        t.gw.llm.semantic_cache().len() == 1
    })
    .await;
    let TestGateway {
        gw,
        dir: config_dir,
        ..
    } = t;
    // Shutting down flushes the cache's store writes.
    gw.shutdown().await;
    drop(config_dir);

    let t = start_yaml(&yaml).await;
    eventually("the stored entries are loaded", || async {
        t.gw.llm.semantic_cache().len() == 1
    })
    .await;
    let hit = ask(&t, &key, &q("Tell me France's capital city"), &[]).await;
    assert_eq!(hit.status, 200, "{}", hit.text());
    let mark = hit
        .header("x-tollgate-cache")
        .unwrap_or_default()
        .to_owned();
    let score: f64 = mark
        .strip_prefix("semantic-hit; score=")
        .unwrap_or_else(|| panic!("not a semantic hit: {mark}"))
        .parse()
        .unwrap();
    assert!((0.85..=1.0).contains(&score), "{score}");
    assert_eq!(
        hit.json()["choices"][0]["message"]["content"],
        first.json()["choices"][0]["message"]["content"]
    );
    let unrelated = ask(&t, &key, &q("How do I bake sourdough bread?"), &[]).await;
    assert_eq!(unrelated.header("x-tollgate-cache"), Some("miss"));
    // The ledger says which answer was a near repeat, and how near (three rows: the first
    // gateway's miss, the hit, the unrelated miss).
    let rows = ledger_rows(&t, 3).await;
    let hit_row = rows
        .iter()
        .find(|r| r["cache_hit"] == true)
        .unwrap_or_else(|| panic!("{rows:?}"));
    let similarity = hit_row["cache_similarity"].as_f64().unwrap();
    assert!((similarity - score).abs() < 0.01, "{similarity} vs {score}");
    assert!(rows
        .iter()
        .filter(|r| r["cache_hit"] == false)
        .all(|r| r.get("cache_similarity").is_none()));
}
