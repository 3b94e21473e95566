//! Redis failing under the gateway: rate limits fail closed (503) or open (served without the
//! limit) as configured, loudly in metrics, and apply again once Redis is back. Redis is the
//! local server behind a TCP proxy the test can cut, so other tests sharing it are unaffected.

use crate::harness::*;

const REDIS: &str = "127.0.0.1:6379";

async fn chat(t: &TestGateway, key: &str) -> tollgate_testkit::TestResponse {
    t.client
        .post_json("/v1/chat/completions", key, &chat_body("mock-echo", "hi"))
        .await
}

#[tokio::test]
async fn limits_fail_closed_or_open_while_redis_is_down_and_recover() {
    if !redis_up("the Redis failure test").await {
        return;
    }
    let proxy = Cuttable::start(REDIS).await;
    let prefix = format!("tollgate-it:{:016x}:", fastrand::u64(..));
    let config = |mode: &str| {
        base_yaml().replace(
            "  database_url: memory://\n",
            &format!(
                "  database_url: memory://\n  redis_url: redis://127.0.0.1:{}/\n  redis_prefix: \"{prefix}\"\n  on_redis_failure: {mode}\n",
                proxy.port
            ),
        ) + MOCK
            + "rate_limits:\n  - name: per-key\n    scope: key\n    rpm: 3\n"
    };
    let closed = start_yaml(&config("fail_closed")).await;
    let open = start_yaml(&config("fail_open")).await;
    let (_, ck) = closed.key(serde_json::json!({"name": "c"})).await;
    let (_, ok) = open.key(serde_json::json!({"name": "o"})).await;
    assert_eq!(chat(&closed, &ck).await.status, 200);
    assert_eq!(chat(&open, &ok).await.status, 200);

    proxy.cut();
    let refused = std::sync::Mutex::new(None);
    eventually("fail_closed refuses while Redis is down", || async {
        let res = chat(&closed, &ck).await;
        let done = res.status == 503;
        if done {
            *refused.lock().unwrap() = Some(res.json());
        }
        done
    })
    .await;
    let refused = refused.into_inner().unwrap().unwrap();
    assert_eq!(refused["error"]["code"], "limits_unavailable", "{refused}");
    // Fail open serves, even past the limit it can no longer count.
    for _ in 0..5 {
        assert_eq!(chat(&open, &ok).await.status, 200);
    }
    let metrics = closed.client.get("/metrics", MASTER).await.text();
    assert!(
        metrics.contains(
            "tollgate_shared_counter_failures_total{what=\"rate_limit\",mode=\"fail_closed\"}"
        ),
        "{metrics}"
    );
    let metrics = open.client.get("/metrics", MASTER).await.text();
    assert!(metrics.contains("mode=\"fail_open\""), "{metrics}");

    // Back: served again, and the limit counts again (3 per minute for a fresh key).
    proxy.restore();
    let (_, fresh) = open.key(serde_json::json!({"name": "fresh"})).await;
    eventually("the limit applies again", || async {
        chat(&open, &fresh).await.status == 429
    })
    .await;
    eventually("fail_closed serves again", || async {
        chat(&closed, &ck).await.status == 200
    })
    .await;

    clean_redis(&prefix).await;
}
