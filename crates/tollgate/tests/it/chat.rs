//! The model API against the built-in mock provider: content, usage, streaming, errors.

use http::Method;
use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn mock_chat_echoes_with_usage_and_request_id() {
    let t = start(MOCK).await;
    let key = t.any_key().await;
    let res = t
        .client
        .post_json(
            "/v1/chat/completions",
            &key,
            &chat_body("mock-echo", "hello brave new world"),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "mock-echo");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "hello brave new world"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // hello(2) brave(2) new(1) world(2) = 7; prompt = 3 + 7 + 3.
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["prompt_tokens"], 13);
    assert_eq!(v["usage"]["total_tokens"], 20);
    assert_eq!(res.header("x-request-id").map(str::len), Some(32));

    let auth = format!("Bearer {key}");
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &auth), ("x-request-id", "client-id-1")],
            chat_body("mock-echo", "x").to_string(),
        )
        .await;
    assert_eq!(res.header("x-request-id"), Some("client-id-1"));
}

#[tokio::test]
async fn mock_stream_honours_include_usage_and_chunk_count() {
    let t = start("providers:\n  - name: demo\n    kind: mock\n    mock: {chunks: 5}\nmodels:\n  - name: m\n    targets: [{provider: demo}]\n").await;
    let key = t.any_key().await;
    let mut body = chat_body("m", "one two three four five six");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    let events = sse_data(&res.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // role chunk, 5 content chunks, finish chunk, usage chunk
    assert_eq!(chunks.len(), 8);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three four five six");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[7];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 7);

    body["stream_options"] = json!({"include_usage": false});
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    let events = sse_data(&res.text());
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "no usage unless asked"
    );
}

#[tokio::test]
async fn error_statuses_and_shapes() {
    let t = start(&format!("{MOCK}limits:\n  max_body_size: 2KiB\n")).await;
    let (_, restricted) = t.key(json!({"name": "r", "models": ["mock-e*"]})).await;
    let key = t.any_key().await;
    let cases: Vec<(String, Value, u16, &str)> = vec![
        (
            "tg-not-a-key".into(),
            chat_body("mock-echo", "x"),
            401,
            "invalid_api_key",
        ),
        (
            restricted.clone(),
            chat_body("mock-other", "x"),
            403,
            "model_not_allowed",
        ),
        (key.clone(), chat_body("nope", "x"), 404, "model_not_found"),
        (
            restricted.clone(),
            chat_body("nope", "x"),
            403,
            "model_not_allowed",
        ),
        (key.clone(), json!({"messages": []}), 400, "missing_model"),
        (
            key.clone(),
            chat_body("mock-echo", &"x".repeat(4096)),
            413,
            "body_too_large",
        ),
    ];
    for (k, body, status, code) in cases {
        let res = t.client.post_json("/v1/chat/completions", &k, &body).await;
        assert_eq!(res.status, status, "{}", res.text());
        let v = res.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(v["error"].get("type").is_some() && v["error"].get("param").is_some());
        assert!(res.header("x-request-id").is_some());
    }

    // Malformed JSON: 400 with the position.
    let auth = format!("Bearer {key}");
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            "{\"model\": \"mock-echo\",\n \"messages\": [}",
        )
        .await;
    assert_eq!(res.status, 400);
    let msg = res.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("line 2 column"), "{msg}");

    // No credential at all, and x-api-key accepted like Bearer.
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[],
            chat_body("mock-echo", "x").to_string(),
        )
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["error"]["code"], "missing_api_key");
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("x-api-key", &key)],
            chat_body("mock-echo", "x").to_string(),
        )
        .await;
    assert_eq!(res.status, 200);

    // Wrong method: JSON 405, not a bare body.
    let res = t.client.get("/v1/chat/completions", &key).await;
    assert_eq!(res.status, 405);
    assert_eq!(res.json()["error"]["code"], "method_not_allowed");

    // Unknown route: JSON 404, not a bare body.
    let res = t.client.get("/v1/nothing-here", &key).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["error"]["code"], "route_not_found");
}

#[tokio::test]
async fn expired_key_is_rejected() {
    let t = start(MOCK).await;
    let (id, secret) = t
        .key(json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}))
        .await;
    let res = t
        .client
        .post_json(
            "/v1/chat/completions",
            &secret,
            &chat_body("mock-echo", "x"),
        )
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["error"]["code"], "expired_api_key");
    let view = t
        .client
        .get(&format!("/admin/v1/keys/{id}"), MASTER)
        .await
        .json();
    assert_eq!(view["status"], "expired");
}

#[tokio::test]
async fn models_list_only_what_the_key_may_use() {
    let t = start(MOCK).await;
    let (_, restricted) = t.key(json!({"name": "r", "models": ["mock-echo"]})).await;
    let all = t.any_key().await;
    let ids = |v: Value| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(t.client.get("/v1/models", &restricted).await.json()),
        ["mock-echo"]
    );
    assert_eq!(
        ids(t.client.get("/v1/models", &all).await.json()),
        ["mock-echo", "mock-other"]
    );
    assert_eq!(
        t.client
            .get("/v1/models/mock-echo", &restricted)
            .await
            .json()["id"],
        "mock-echo"
    );
    assert_eq!(
        t.client
            .get("/v1/models/mock-other", &restricted)
            .await
            .status,
        403
    );
    assert_eq!(t.client.get("/v1/models", "bad").await.status, 401);
}

#[tokio::test]
async fn mock_embeddings_float_and_base64() {
    let t = start(MOCK).await;
    let key = t.any_key().await;
    let res = t
        .client
        .post_json(
            "/v1/embeddings",
            &key,
            &json!({"model": "mock-echo", "input": ["a", "b"], "dimensions": 4}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_ne!(v["data"][0]["embedding"], v["data"][1]["embedding"]);
    let b64 = t.client.post_json("/v1/embeddings", &key, &json!({"model": "mock-echo", "input": "a", "encoding_format": "base64", "dimensions": 4})).await.json();
    assert_eq!(
        b64["data"][0]["embedding"].as_str().unwrap().len(),
        24,
        "4 f32 = 16 bytes = 24 base64 chars"
    );
    let bad = t
        .client
        .post_json(
            "/v1/embeddings",
            &key,
            &json!({"model": "mock-echo", "input": 5}),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "input");
}

#[tokio::test]
async fn mock_responses_api() {
    let t = start(MOCK).await;
    let key = t.any_key().await;
    let v = t
        .client
        .post_json(
            "/v1/responses",
            &key,
            &json!({"model": "mock-echo", "input": "hi there"}),
        )
        .await
        .json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], "hi there");
    assert_eq!(v["usage"]["output_tokens"], 3, "hi(1) + there(2)");
    let res = t
        .client
        .post_json(
            "/v1/responses",
            &key,
            &json!({"model": "mock-echo", "input": "hi there", "stream": true}),
        )
        .await;
    let text = res.text();
    assert!(
        text.contains("event: response.created") && text.contains("event: response.completed"),
        "{text}"
    );
}

#[tokio::test]
async fn mock_injected_errors_map_to_gateway_statuses() {
    let t = start("providers:\n  - name: down\n    kind: mock\n    mock: {error_rate: 1.0, error_status: 503}\n  - name: limited\n    kind: mock\n    mock: {error_rate: 1.0, error_status: 429}\nmodels:\n  - name: a\n    targets: [{provider: down}]\n  - name: b\n    targets: [{provider: limited}]\n").await;
    let key = t.any_key().await;
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("a", "x"))
        .await;
    assert_eq!(res.status, 502);
    let v = res.json();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream status 503"),
        "{v}"
    );
    assert_eq!(v["error"]["code"], "upstream_error");
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("b", "x"))
        .await;
    assert_eq!(res.status, 429);
}
