//! The gateway's own limits (`limits`), CORS (`cors`) and master key rotation, over real sockets.

use std::time::Duration;

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{chat_body, start, start_yaml, MASTER, MOCK};

/// Sends raw bytes on a fresh connection and reads until the server closes it (or 10 s).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let t = start(&format!(
        "{MOCK}limits:\n  max_header_size: 16KiB\n  max_headers: 20\n"
    ))
    .await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let answer = raw_exchange(t.gw.addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let mut many = String::from("GET /v1/models HTTP/1.1\r\nhost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("connection: close\r\n\r\n");
    let answer = raw_exchange(t.gw.addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Within the limits all is well.
    let key = t.any_key().await;
    assert_eq!(t.client.get("/v1/models", &key).await.status, 200);
}

#[tokio::test]
async fn heads_with_bare_lf_line_ends_get_400() {
    let t = start(MOCK).await;
    let answer = raw_exchange(t.gw.addr, b"GET /healthz HTTP/1.1\nhost: x\n\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A second request pipelined behind a body full of LFs is still checked.
    let pipelined = b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n\n\n\n\
        GET /healthz HTTP/1.1\r\nhost: x\nauthorization: Bearer y\r\n\r\n";
    let answer = raw_exchange(t.gw.addr, pipelined).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 400 Bad Request"), "{answer}");
    // CRLF heads are served as ever.
    let answer = raw_exchange(
        t.gw.addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn deep_json_is_refused_before_parsing_in_each_api_shape() {
    let t = start(&format!("{MOCK}limits:\n  max_json_depth: 8\n")).await;
    let key = t.any_key().await;
    let mut body = chat_body("mock-echo", "hi");
    // 10 levels inside `metadata`: deeper than 8 in all.
    let mut deep = json!(1);
    for _ in 0..10 {
        deep = json!([deep]);
    }
    body["metadata"] = deep.clone();
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(res.json()["error"]["code"], "json_too_deep");

    let res = t
        .client
        .post_json(
            "/v1/messages",
            &key,
            &json!({"model": "mock-echo", "max_tokens": 5, "messages": [], "x": deep}),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(
        res.json()["type"],
        "error",
        "Anthropic's shape: {}",
        res.text()
    );

    let res = t
        .client
        .post_json(
            "/admin/v1/keys",
            MASTER,
            &json!({"name": "x", "metadata": {"a": deep}}),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(res.json()["error"]["code"], "json_too_deep");

    // Nothing was created by the refused request; normal depth still works.
    let keys = t.client.get("/admin/v1/keys", MASTER).await.json();
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("mock-echo", "hi"))
        .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    // The head timeout is long, so only the idle timeout can close the connection.
    let t = start(&format!(
        "{MOCK}limits:\n  idle_timeout: 300ms\n  header_read_timeout: 60s\n"
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(t.gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then idle: the server closes it (EOF), well before the head timeout.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was not closed");
}

#[tokio::test]
async fn open_streams_per_key_are_bounded_and_given_back() {
    // Streams that last: 40 chunks over 6 s.
    let yaml = "providers:\n  - name: slow\n    kind: mock\n    mock: {chunks: 40, latency: 6s}\nmodels:\n  - name: mock-echo\n    targets: [{provider: slow}]\nlimits:\n  max_streams_per_key: 2\n";
    let t = start(yaml).await;
    let (a, b) = (t.any_key().await, t.any_key().await);
    let first = t.open_stream(&a, "mock-echo", "one two three").await;
    let second = t.open_stream(&a, "mock-echo", "one two three").await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = t.open_stream(&a, "mock-echo", "one two three").await;
    assert_eq!(third.status(), 429);
    let body = http_body_util::BodyExt::collect(third.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_streams", "{v}");
    // Another key is not affected; non-streaming calls are not streams.
    assert_eq!(t.open_stream(&b, "mock-echo", "hi").await.status(), 200);
    let res = t
        .client
        .post_json("/v1/chat/completions", &a, &chat_body("mock-echo", "hi"))
        .await;
    assert_eq!(res.status, 200);
    // Closing a stream gives its slot back.
    drop(first);
    crate::harness::eventually("a slot is given back", || async {
        t.open_stream(&a, "mock-echo", "hi").await.status() == 200
    })
    .await;
    drop(second);
}

#[tokio::test]
async fn a_request_is_given_up_after_the_request_timeout_in_each_api_shape() {
    // One provider that never answers in time, one whose stream starts at once and then runs
    // past the limit.
    let yaml = "providers:\n  - name: stuck\n    kind: mock\n    mock: {latency: 1h}\n  - name: slow\n    kind: mock\n    mock: {chunks: 6, latency: 1500ms}\nmodels:\n  - name: stuck\n    targets: [{provider: stuck}]\n  - name: slow\n    targets: [{provider: slow}]\nlimits:\n  request_timeout: 400ms\n";
    let t = start(yaml).await;
    let key = t.any_key().await;
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("stuck", "hi"))
        .await;
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(
        res.json()["error"]["code"],
        "request_timeout",
        "{}",
        res.text()
    );

    let res = t
        .client
        .post_json(
            "/v1/messages",
            &key,
            &json!({"model": "stuck", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(
        res.json()["type"],
        "error",
        "Anthropic's shape: {}",
        res.text()
    );

    // A stream whose answer began in time runs to its end (1.5 s, past the 400 ms limit).
    let stream = t.open_stream(&key, "slow", "one two three").await;
    assert_eq!(stream.status(), 200);
    let body = http_body_util::BodyExt::collect(stream.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // The gateway is still serving; the timed-out call counts as a failed request.
    assert_eq!(t.client.get("/v1/models", &key).await.status, 200);
    let metrics = t.client.get("/metrics", MASTER).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_requests_total")
                && l.contains("route=\"/v1/chat/completions\"")
                && l.contains("status=\"504\"")),
        "{metrics}"
    );
}

/// A GET with a bearer key and a browser `Origin`.
async fn get_from(
    t: &crate::harness::TestGateway,
    path: &str,
    key: &str,
    origin: &str,
) -> tollgate_testkit::TestResponse {
    let auth = format!("Bearer {key}");
    t.client
        .send(
            Method::GET,
            path,
            &[("authorization", &auth), ("origin", origin)],
            "",
        )
        .await
}

const APP: &str = "https://app.example.com";

#[tokio::test]
async fn cors_is_off_by_default_and_scoped_when_on() {
    let t = start(MOCK).await;
    let key = t.any_key().await;
    let res = get_from(&t, "/v1/models", &key, APP).await;
    assert_eq!(res.status, 200);
    assert!(res.header("access-control-allow-origin").is_none());

    let t = start(&format!("{MOCK}cors:\n  allowed_origins: [{APP}]\n")).await;
    let key = t.any_key().await;
    let preflight = t
        .client
        .send(
            Method::OPTIONS,
            "/v1/chat/completions",
            &[
                ("origin", APP),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            "",
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some(APP));
    let res = get_from(&t, "/v1/models", &key, APP).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("access-control-allow-origin"), Some(APP));
    assert!(res
        .header("access-control-expose-headers")
        .is_some_and(|h| h.contains("x-request-id")));
    // Errors carry the headers too, so the page can read them.
    let res = get_from(&t, "/v1/models", "nope", APP).await;
    assert_eq!(res.status, 401);
    assert!(res.header("access-control-allow-origin").is_some());
    // Another origin, and the admin API, never get CORS headers.
    let res = get_from(&t, "/v1/models", &key, "https://evil.example").await;
    assert!(res.header("access-control-allow-origin").is_none());
    let res = get_from(&t, "/admin/v1/keys", MASTER, APP).await;
    assert_eq!(res.status, 200);
    assert!(res.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_generated_master_key_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let yaml = format!(
        "listen: 127.0.0.1:0\nstorage:\n  database_url: sqlite://{}\nlogging:\n  level: warn\n{MOCK}",
        db.display()
    );
    let mut t = start_yaml(&yaml).await;
    // The generated key is printed by `serve`; here the test takes it from the gateway.
    let Some(tollgate_core::keys::MasterKey::Generated(old)) = t.gw.master.take() else {
        panic!("expected a generated master key");
    };
    // An admin-role key may not rotate the master key; the master key itself may.
    let res = t
        .client
        .post_json(
            "/admin/v1/teams",
            &old,
            &json!({"id": "ops", "roles": ["admin"]}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = t
        .client
        .post_json(
            "/admin/v1/keys",
            &old,
            &json!({"name": "op", "team": "ops"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let admin = res.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(t.client.get("/admin/v1/keys", &admin).await.status, 200);
    let res = t
        .client
        .post_json("/admin/v1/master-key/rotate", &admin, &json!({}))
        .await;
    assert_eq!(res.status, 403, "{}", res.text());
    let res = t
        .client
        .post_json("/admin/v1/master-key/rotate", &old, &json!({}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let fresh = res.json()["master_key"].as_str().unwrap().to_owned();
    assert!(fresh.starts_with("tg-master-"));
    assert_eq!(t.client.get("/admin/v1/keys", &old).await.status, 401);
    assert_eq!(t.client.get("/admin/v1/keys", &fresh).await.status, 200);

    // A configured master key is changed in the config instead.
    let c = start(MOCK).await;
    let res = c
        .client
        .post_json("/admin/v1/master-key/rotate", MASTER, &json!({}))
        .await;
    assert_eq!(res.status, 409, "{}", res.text());
}

#[tokio::test]
async fn upstream_answers_over_the_limit_fail_the_call() {
    use tollgate_testkit::{chat_completion, MockUpstream, Reply};
    let up = MockUpstream::start().await;
    let yaml = format!(
        "providers:\n  - name: up\n    kind: openai\n    base_url: {}\n    api_key: k\nmodels:\n  - name: m\n    targets: [{{provider: up}}]\n    retry: {{attempts: 1}}\nlimits:\n  max_upstream_response_size: 64KiB\n",
        up.base_url()
    );
    let t = start(&yaml).await;
    let key = t.any_key().await;
    // Within the limit: served.
    up.push(Reply::raw(
        200,
        &chat_completion("m", "small", 1, 1).to_string(),
    ));
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("m", "hi"))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // 100 KiB of answer: the read stops at the limit and the call fails as an upstream error.
    let big = chat_completion("m", &"x".repeat(100 * 1024), 1, 1).to_string();
    up.push(Reply::raw(200, &big));
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("m", "hi"))
        .await;
    assert_eq!(res.status, 502, "{}", res.text());
    assert_eq!(
        res.json()["error"]["type"],
        "upstream_error",
        "{}",
        res.text()
    );
}
