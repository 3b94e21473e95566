//! The `openai` provider against the testkit's mock upstream: lossless pass-through, upstream
//! credentials, streaming without buffering, timeouts and upstream failures.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::Notify;
use tollgate_testkit::{chat_completion, chunk, MockUpstream, Reply};

use crate::harness::*;

fn openai_yaml(upstream: &MockUpstream, extra_provider: &str) -> String {
    format!(
        "providers:\n  - name: up\n    kind: openai\n    base_url: {}\n    api_key: sk-upstream-secret\n    headers: {{x-org: acme}}\n{extra_provider}models:\n  - name: public-name\n    targets: [{{provider: up, model: upstream-name}}]\n  - name: same-name\n    targets: [{{provider: up}}]\n",
        upstream.base_url()
    )
}

#[tokio::test]
async fn request_and_response_pass_through_losslessly() {
    let up = MockUpstream::start().await;
    let t = start(&openai_yaml(&up, "")).await;
    let key = t.any_key().await;
    let upstream_body = chat_completion("upstream-name", "from upstream", 11, 5).to_string();
    up.push(Reply::raw(200, &upstream_body));

    let sent = r#"{"model":"public-name","messages":[{"role":"user","content":"hi"}],"temperature":0.10000000000000000001,"vendor_extension":{"nested":[1,2,3],"big":123456789012345678901234567890}}"#;
    let auth = format!("Bearer {key}");
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[
                ("authorization", &auth),
                ("x-request-id", "rid-42"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "vendor=abc"),
            ],
            sent,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.text(),
        upstream_body,
        "response body relayed byte for byte"
    );
    assert_eq!(res.header("x-ratelimit-remaining-requests"), Some("99"));

    let got = up.wait_for_requests(1).await;
    let r = &got[0];
    assert_eq!(r.path, "/v1/chat/completions");
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(
        body,
        sent.replace("public-name", "upstream-name"),
        "only the model changes"
    );
    assert_eq!(
        r.headers["authorization"], "Bearer sk-upstream-secret",
        "upstream key, never the client's"
    );
    assert_eq!(r.headers["x-org"], "acme");
    assert_eq!(r.headers["x-request-id"], "rid-42");
    // The client's trace continues upstream, with the gateway's span as the parent.
    let upstream_tp = r.headers["traceparent"].to_str().unwrap();
    assert!(
        upstream_tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{upstream_tp}"
    );
    assert!(
        !upstream_tp.contains("00f067aa0ba902b7"),
        "a new span id, not the client's"
    );
    assert_eq!(r.headers["tracestate"], "vendor=abc");
    assert_eq!(
        res.header("x-tollgate-trace-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );

    // Same public and upstream name: the original bytes go up untouched, whitespace included.
    let spaced = "{ \"model\" : \"same-name\",  \"messages\": [ ] }";
    t.client
        .send(
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            spaced,
        )
        .await;
    let got = up.wait_for_requests(2).await;
    assert_eq!(got[1].body, Bytes::from(spaced));
}

#[tokio::test]
async fn azure_deployment_scheme() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        "providers:\n  - name: az\n    kind: openai\n    base_url: http://{}\n    api_key: azure-secret\n    api_version: 2024-10-21\nmodels:\n  - name: gpt\n    targets: [{{provider: az, model: my-deployment}}]\n",
        up.addr
    );
    let t = start(&yaml).await;
    let key = t.any_key().await;
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("gpt", "x"))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let r = &up.wait_for_requests(1).await[0];
    assert_eq!(r.path, "/openai/deployments/my-deployment/chat/completions");
    assert_eq!(r.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(r.headers["api-key"], "azure-secret");
    assert!(r.headers.get("authorization").is_none());
}

#[tokio::test]
async fn azure_kind_with_an_entra_id_token_serves_anthropic_clients() {
    let up = MockUpstream::start().await;
    let yaml = format!(
        "providers:\n  - name: az\n    kind: azure\n    base_url: http://{}\n    bearer_token: entra-token\nmodels:\n  - name: gpt\n    targets: [{{provider: az, model: my-deployment}}]\n",
        up.addr
    );
    let t = start(&yaml).await;
    let key = t.any_key().await;
    up.push(Reply::json(
        200,
        chat_completion("gpt-4o", "from azure", 7, 3),
    ));
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", &key)],
            json!({"model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}).to_string(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["content"][0]["text"], "from azure");
    let r = &up.wait_for_requests(1).await[0];
    assert_eq!(r.path, "/openai/deployments/my-deployment/chat/completions");
    assert_eq!(r.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(r.headers["authorization"], "Bearer entra-token");
    assert!(r.headers.get("api-key").is_none());
}

#[tokio::test]
async fn stream_is_forwarded_chunk_by_chunk() {
    let up = MockUpstream::start().await;
    let t = start(&openai_yaml(&up, "")).await;
    let key = t.any_key().await;
    let gate = Arc::new(Notify::new());
    up.push(Reply::SseGated {
        first: Bytes::from(format!("data: {}\n\n", chunk("first"))),
        gate: gate.clone(),
        rest: vec![
            Bytes::from(format!("data: {}\n\n", chunk("second"))),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ],
    });
    let res = t.open_stream(&key, "public-name", "x").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut incoming = res.into_body();
    // The upstream holds the rest until the gate opens: this frame can only arrive if the
    // gateway forwards without buffering.
    let first = tokio::time::timeout(Duration::from_secs(10), incoming.frame())
        .await
        .expect("first chunk not forwarded while upstream still streaming")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("first"));
    gate.notify_one();
    let rest = incoming.collect().await.unwrap().to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("second") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
    let sent = up.wait_for_requests(1).await;
    assert_eq!(sent[0].headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn stream_dropped_mid_way_ends_with_an_error_event() {
    let up = MockUpstream::start().await;
    let t = start(&openai_yaml(&up, "")).await;
    let key = t.any_key().await;
    let Reply::Sse { chunks, .. } =
        Reply::sse(&[chunk("a"), chunk("b"), chunk("c")], Duration::ZERO)
    else {
        unreachable!()
    };
    up.push(Reply::Sse {
        chunks,
        drop_after: Some(2),
    });
    let mut body = chat_body("public-name", "x");
    body["stream"] = json!(true);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200);
    let events = sse_data(&res.text());
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[0].contains("\"a\"") && events[1].contains("\"b\""));
    assert!(events[2].contains("upstream_stream_error"), "{}", events[2]);
    // The gateway is unaffected.
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("public-name", "x"))
        .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn idle_stream_is_cut_with_an_error_event() {
    let up = MockUpstream::start().await;
    let t = start(&openai_yaml(&up, "").replace(
        "    headers: {x-org: acme}\n",
        "    timeouts: {idle: 200ms}\n",
    ))
    .await;
    let key = t.any_key().await;
    up.push(Reply::Sse {
        chunks: vec![
            (
                Duration::ZERO,
                Bytes::from(format!("data: {}\n\n", chunk("a"))),
            ),
            (
                Duration::from_secs(30),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ),
        ],
        drop_after: None,
    });
    let mut body = chat_body("public-name", "x");
    body["stream"] = json!(true);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    let events = sse_data(&res.text());
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[1].contains("upstream_idle_timeout"));
}

#[tokio::test]
async fn upstream_failures_map_to_502_504_and_relay_client_errors() {
    let up = MockUpstream::start().await;
    // One attempt and no cooldown: this test is about how each failure maps, not retries.
    let t = start(
        &openai_yaml(&up, "")
            .replace(
                "    headers: {x-org: acme}\n",
                "    timeouts: {first_byte: 300ms}\n",
            )
            .replace(
                "model: upstream-name}]\n",
                "model: upstream-name}]\n    retry: {attempts: 1}\n    cooldown: {failures: 100}\n",
            ),
    )
    .await;
    let key = t.any_key().await;
    let body = chat_body("public-name", "x");
    let call = || t.client.post_json("/v1/chat/completions", &key, &body);

    up.push(Reply::json(
        500,
        json!({"error": {"message": "model overloaded"}}),
    ));
    let res = call().await;
    assert_eq!(res.status, 502);
    let msg = res.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("upstream status 500") && msg.contains("model overloaded"),
        "{msg}"
    );

    let upstream_400 = r#"{"error":{"message":"max_tokens is too large","type":"invalid_request_error","param":"max_tokens","code":null}}"#;
    up.push(Reply::raw(400, upstream_400));
    let res = call().await;
    assert_eq!(res.status, 400);
    assert_eq!(res.text(), upstream_400, "client errors relayed verbatim");

    up.push(Reply::json(429, json!({"error": {"message": "slow down"}})));
    let res = call().await;
    assert_eq!(res.status, 429);
    assert_eq!(
        res.header("x-ratelimit-remaining-requests"),
        Some("99"),
        "rate-limit state relayed"
    );

    // A 404 that is not an OpenAI error (a wrong base_url, a proxy page) is not the client's.
    up.push(Reply::Body {
        status: 404,
        content_type: "text/html",
        body: Bytes::from_static(b"<html>404 page not found</html>"),
        delay: Duration::ZERO,
    });
    let res = call().await;
    assert_eq!(res.status, 502);
    assert!(res.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream status 404"));

    up.push(Reply::json(
        401,
        json!({"error": {"message": "bad upstream key"}}),
    ));
    let res = call().await;
    assert_eq!(
        res.status, 502,
        "an upstream auth failure is not the client's"
    );
    assert_eq!(res.json()["error"]["code"], "upstream_auth_failed");

    // An upstream that quotes the gateway's own key back: neither the message nor a relayed
    // body carries it to the client.
    up.push(Reply::json(
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-upstream-secret"}}),
    ));
    let res = call().await;
    assert_eq!(res.status, 502);
    assert!(!res.text().contains("sk-upstream-secret"), "{}", res.text());
    assert!(res.text().contains("[redacted]"), "{}", res.text());
    up.push(Reply::raw(
        400,
        r#"{"error":{"message":"bad request from Bearer sk-upstream-secret","type":"invalid_request_error"}}"#,
    ));
    let res = call().await;
    assert_eq!(res.status, 400);
    assert_eq!(
        res.json()["error"]["message"],
        "bad request from [redacted]",
        "{}",
        res.text()
    );

    up.push(Reply::json(200, json!({})).delayed(Duration::from_secs(5)));
    let res = call().await;
    assert_eq!(res.status, 504);
    assert_eq!(res.json()["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = start(&format!("providers:\n  - name: gone\n    kind: openai\n    base_url: http://127.0.0.1:{port}/v1\nmodels:\n  - name: m\n    targets: [{{provider: gone}}]\n")).await;
    let key = t.any_key().await;
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &chat_body("m", "x"))
        .await;
    assert_eq!(res.status, 502);
    assert_eq!(res.json()["error"]["code"], "upstream_unreachable");
}

#[tokio::test]
async fn embeddings_and_responses_pass_through() {
    let up = MockUpstream::start().await;
    let t = start(&openai_yaml(&up, "")).await;
    let key = t.any_key().await;
    up.push(Reply::json(200, json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}], "model": "upstream-name", "usage": {"prompt_tokens": 1, "total_tokens": 1}})));
    let res = t
        .client
        .post_json(
            "/v1/embeddings",
            &key,
            &json!({"model": "public-name", "input": "x"}),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["data"][0]["embedding"][0], 0.5);

    up.push(Reply::json(200, json!({"id": "resp_1", "object": "response", "output": [], "usage": {"input_tokens": 1, "output_tokens": 2}})));
    let res = t
        .client
        .post_json(
            "/v1/responses",
            &key,
            &json!({"model": "public-name", "input": "x", "custom": true}),
        )
        .await;
    assert_eq!(res.json()["id"], "resp_1");

    up.push(Reply::sse(
        &[json!({"type": "response.output_text.delta", "delta": "y"})],
        Duration::ZERO,
    ));
    let res = t
        .client
        .post_json(
            "/v1/responses",
            &key,
            &json!({"model": "public-name", "input": "x", "stream": true}),
        )
        .await;
    assert!(res.text().contains("response.output_text.delta"));

    let got = up.wait_for_requests(3).await;
    assert_eq!(got[0].path, "/v1/embeddings");
    assert_eq!(got[1].path, "/v1/responses");
    assert_eq!(got[1].json()["custom"], true);
    assert_eq!(got[1].json()["model"], "upstream-name");
}
