//! Replicas tell each other about changes over Redis pub/sub: with polling set to once a
//! minute, a key revoked, an agent registered and a semantic-cache entry stored through one
//! replica reach the other within a second. Skips loudly without Redis unless
//! `TOLLGATE_REQUIRE_SERVICES=1`.

use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::{json, Value};

use crate::harness::*;

/// Waits until `check` holds, failing if that takes a second or more.
async fn within_a_second<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: not within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(text: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn changes_through_one_replica_reach_the_others_at_once() {
    if !redis_up("the change-notice test").await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tollgate-it:{:016x}:", fastrand::u64(..));
    // Polling once a minute: anything faster than that came over the bus.
    let yaml = base_yaml().replace(
        "  database_url: memory://\n",
        &format!(
            "  database_url: sqlite://{}\n  refresh_interval: 60s\n  redis_url: {REDIS_URL}\n  redis_prefix: \"{prefix}\"\n",
            dir.path().join("shared.db").display()
        ),
    ) + "providers:\n  - name: demo\n    kind: mock\nmodels:\n  - name: emb\n    targets: [{provider: demo, model: embedder}]\n  - name: chat\n    targets: [{provider: demo, model: echo}]\n    cache: {ttl: 10m, semantic: {embedder: emb, threshold: 0.99}}\n";
    let a = start_yaml(&yaml).await;
    let b = start_yaml(&yaml).await;
    // A notice sent before a subscription exists is not seen: wait for both.
    eventually("both replicas are subscribed", || async {
        a.gw.core.bus.subscribed() && b.gw.core.bus.subscribed()
    })
    .await;

    // A key made through A works on B at once.
    let (key_id, key) = a.key(json!({"name": "shared"})).await;
    within_a_second("B knows the new key", || async {
        b.client
            .post_json("/v1/chat/completions", &key, &chat("hello"))
            .await
            .status
            == 200
    })
    .await;

    // Revoked through B: refused by A.
    let res = b
        .client
        .post_json(
            &format!("/admin/v1/keys/{key_id}/revoke"),
            MASTER,
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    within_a_second("A refuses the revoked key", || async {
        a.client
            .post_json("/v1/chat/completions", &key, &chat("again"))
            .await
            .status
            == 401
    })
    .await;

    // An agent registered through A is in B's catalog.
    let res = a
        .client
        .send(
            Method::PUT,
            "/admin/v1/a2a/agents/late",
            &[
                ("authorization", &format!("Bearer {MASTER}")),
                ("content-type", "application/json"),
            ],
            json!({"url": "http://127.0.0.1:9"}).to_string(),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    within_a_second("B lists the agent", || async {
        let list = b.client.get("/admin/v1/a2a/agents", MASTER).await.json();
        list["agents"]
            .as_array()
            .is_some_and(|v| v.iter().any(|a| a["name"] == "late"))
    })
    .await;

    // A semantic-cache entry stored by A answers on B (the mock embedder hashes the text, so
    // the same words score exactly 1). The chats above stored some already.
    eventually("the earlier entries are indexed on both", || async {
        let n = b.gw.llm.semantic_cache().len();
        n > 0 && n == a.gw.llm.semantic_cache().len()
    })
    .await;
    let before = b.gw.llm.semantic_cache().len();
    let key = a.any_key().await;
    let first = a
        .client
        .post_json("/v1/chat/completions", &key, &chat("what is shared?"))
        .await;
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    within_a_second("B indexes A's entry", || async {
        b.gw.llm.semantic_cache().len() == before + 1
    })
    .await;
    // The exact cache (also in Redis) would answer an identical request first: a text part
    // is a different request with the same words.
    let parts = json!({"model": "chat", "messages": [{"role": "user",
        "content": [{"type": "text", "text": "what is shared?"}]}]});
    let hit = b
        .client
        .post_json("/v1/chat/completions", &key, &parts)
        .await;
    assert_eq!(hit.status, 200, "{}", hit.text());
    assert_eq!(
        hit.header("x-tollgate-cache"),
        Some("semantic-hit; score=1.00")
    );

    a.gw.shutdown().await;
    b.gw.shutdown().await;
    clean_redis(&prefix).await;
}
