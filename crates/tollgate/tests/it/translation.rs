//! Any dialect to any provider: `/v1/messages` served by an OpenAI upstream, chat served by an
//! Anthropic upstream, Anthropic pass-through, translation loss reported or refused, errors in
//! the client's shape. The upstreams are the testkit's provider mocks, in each vendor's wire
//! format.

use http::Method;
use serde_json::{json, Value};
use tollgate_testkit::providers::ProviderMock;

use crate::harness::*;

async fn gateway(up: &ProviderMock) -> TestGateway {
    start(&format!(
        "providers:
  - name: oai
    kind: openai
    base_url: {}
    api_key: sk-openai-upstream
  - name: ant
    kind: anthropic
    base_url: {}
    api_key: sk-ant-upstream
  - name: demo
    kind: mock
models:
  - name: claude-on-openai
    targets: [{{provider: oai, model: gpt-upstream}}]
  - name: gpt-on-anthropic
    targets: [{{provider: ant, model: claude-upstream}}]
  - name: strict-on-openai
    strict_translation: true
    targets: [{{provider: oai, model: gpt-upstream}}]
  - name: echo
    targets: [{{provider: demo, model: echo}}]
prices:
  - model: gpt-upstream
    input_per_mtok: 1000
    output_per_mtok: 2000
  - model: claude-upstream
    input_per_mtok: 3000
    output_per_mtok: 15000
    cache_read_per_mtok: 300
",
        up.openai_url(),
        up.anthropic_url()
    ))
    .await
}

async fn messages(t: &TestGateway, key: &str, body: &Value) -> tollgate_testkit::TestResponse {
    t.client
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
            body.to_string(),
        )
        .await
}

fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_owned();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_default();
            (name, serde_json::from_str(data).unwrap_or(Value::Null))
        })
        .collect()
}

#[tokio::test]
async fn anthropic_client_served_by_an_openai_upstream() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    let res = messages(
        &t,
        &key,
        &json!({"model": "claude-on-openai", "max_tokens": 100, "system": "Be brief.",
                "messages": [{"role": "user", "content": "hello there"}]}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0],
        json!({"type": "text", "text": "You said: hello there"})
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(res.header("x-tollgate-provider"), Some("oai"));
    assert!(res.header("x-tollgate-cost-usd").is_some());
    assert!(res.header("x-tollgate-translation-loss").is_none());

    // The upstream got an OpenAI request with the gateway's credentials, not the client's.
    let sent = &up.requests()[0];
    assert_eq!(sent["path"], "/openai/v1/chat/completions");
    assert_eq!(
        sent["headers"]["authorization"],
        "Bearer sk-openai-upstream"
    );
    assert!(sent["headers"].get("x-api-key").is_none());
    assert_eq!(sent["body"]["model"], "gpt-upstream");
    assert_eq!(
        sent["body"]["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["body"]["max_completion_tokens"], 100);
}

#[tokio::test]
async fn anthropic_stream_from_an_openai_upstream_is_priced() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    let res = messages(
        &t,
        &key,
        &json!({"model": "claude-on-openai", "max_tokens": 100, "stream": true,
                "messages": [{"role": "user", "content": "stream this please"}]}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    let evs = events(&res.text());
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "You said: stream this please");
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "end_turn");
    assert!(delta.1["usage"]["output_tokens"].as_u64().unwrap() > 0);
    // The gateway asked the OpenAI upstream for usage, and priced the stream with it.
    assert_eq!(
        up.requests()[0]["body"]["stream_options"],
        json!({"include_usage": true})
    );
    let ledger = ledger_rows(&t, 1).await;
    assert_eq!(ledger[0]["endpoint"], "messages");
    assert_eq!(ledger[0]["estimated"], false);
    assert!(ledger[0]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn chat_client_calls_tools_through_an_anthropic_upstream() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut body = json!({"model": "gpt-on-anthropic", "tools": tools,
        "messages": [{"role": "user", "content": "weather in Paris and Rome?"}]});
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    let msg = &v["choices"][0]["message"];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);

    let sent = &up.requests()[0];
    assert_eq!(sent["path"], "/anthropic/v1/messages");
    assert_eq!(sent["headers"]["x-api-key"], "sk-ant-upstream");
    assert_eq!(sent["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(
        sent["body"]["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );

    // The results go back; the answer uses them.
    let mut history = body["messages"].as_array().unwrap().clone();
    history.push(msg.clone());
    for c in calls {
        history.push(json!({"role": "tool", "tool_call_id": c["id"], "content": "sunny"}));
    }
    body["messages"] = Value::Array(history);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json()["choices"][0]["message"]["content"],
        "The tool said: sunny"
    );
    let sent = &up.requests()[1]["body"]["messages"];
    let results = sent[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2, "both results in one user turn: {sent}");
    assert_eq!(results[0]["type"], "tool_result");
}

#[tokio::test]
async fn thinking_signatures_round_trip_for_a_chat_client() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    let mut body = json!({"model": "gpt-on-anthropic", "reasoning_effort": "low", "max_tokens": 2000,
        "messages": [{"role": "user", "content": "what is 2+2"}]});
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let msg = res.json()["choices"][0]["message"].clone();
    assert!(msg["reasoning_content"].as_str().unwrap().contains("think"));
    assert!(msg["thinking_blocks"][0]["signature"]
        .as_str()
        .unwrap()
        .starts_with("sig-"));
    assert_eq!(
        up.requests()[0]["body"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    // The upstream refuses a thinking block whose signature does not match: this passes only
    // if the signature came back unchanged.
    let mut history = body["messages"].as_array().unwrap().clone();
    history.push(msg);
    history.push(json!({"role": "user", "content": "are you sure"}));
    body["messages"] = Value::Array(history);
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn lost_fields_are_reported_and_strict_routes_refuse_them() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 50, "top_k": 5,
            "system": [{"type": "text", "text": "a long document", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}]})
    };
    let res = messages(&t, &key, &body("claude-on-openai")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.header("x-tollgate-translation-loss"),
        Some("system[0].cache_control,top_k")
    );
    let ledger = ledger_rows(&t, 1).await;
    assert_eq!(
        ledger[0]["translation_loss"],
        json!(["system[0].cache_control", "top_k"])
    );

    let before = up.requests().len();
    let res = messages(&t, &key, &body("strict-on-openai")).await;
    assert_eq!(res.status, 400, "{}", res.text());
    let v = res.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "translation_loss");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("system[0].cache_control"), "{message}");
    assert_eq!(up.requests().len(), before, "nothing reached the upstream");
}

#[tokio::test]
async fn anthropic_passes_through_untouched_and_its_usage_is_priced() {
    let up = ProviderMock::start().await;
    let t = start(&format!(
        "providers:
  - name: ant
    kind: anthropic
    base_url: {}
    api_key: sk-ant-upstream
models:
  - name: claude
    targets: [{{provider: ant, model: claude-upstream}}]
prices:
  - model: claude-upstream
    input_per_mtok: 3000
    output_per_mtok: 15000
    cache_read_per_mtok: 300
",
        up.anthropic_url()
    ))
    .await;
    let key = t.any_key().await;
    let sent = r#"{"model":"claude","max_tokens":64,"system":[{"type":"text","text":"doc","cache_control":{"type":"ephemeral","ttl":"1h"}}],"messages":[{"role":"user","content":"hi"}],"vendor_extension":{"kept":true}}"#;
    let res = t
        .client
        .send(
            Method::POST,
            "/v1/messages",
            &[
                ("x-api-key", &key),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "context-1m-2025-08-07"),
            ],
            sent,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.header("x-tollgate-translation-loss").is_none());
    let got = &up.requests()[0];
    assert_eq!(got["headers"]["anthropic-beta"], "context-1m-2025-08-07");
    assert_eq!(got["body"]["vendor_extension"], json!({"kept": true}));
    assert_eq!(got["body"]["model"], "claude-upstream");
    assert_eq!(
        got["body"]["system"][0]["cache_control"],
        json!({"type": "ephemeral", "ttl": "1h"})
    );
    let usage = &res.json()["usage"];
    let ledger = ledger_rows(&t, 1).await;
    let cached = usage["cache_read_input_tokens"].as_u64().unwrap();
    assert!(cached > 0);
    assert_eq!(ledger[0]["cached_tokens"], cached);
    assert_eq!(
        ledger[0]["prompt_tokens"],
        usage["input_tokens"].as_u64().unwrap() + cached
    );

    // A pass-through stream is forwarded as is and priced from its usage events.
    let mut stream_body: Value = serde_json::from_str(sent).unwrap();
    stream_body["stream"] = json!(true);
    let res = messages(&t, &key, &stream_body).await;
    assert_eq!(res.status, 200);
    assert!(res.text().contains("event: message_start"));
    let ledger = ledger_rows(&t, 2).await;
    assert_eq!(ledger[1]["streamed"], true);
    assert_eq!(ledger[1]["estimated"], false);
    assert!(ledger[1]["cached_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn errors_reach_each_client_in_its_own_shape() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    // An Anthropic upstream's 400, for a chat client.
    let res = t
        .client
        .post_json(
            "/v1/chat/completions",
            &key,
            &chat_body("gpt-on-anthropic", "please fail with 400"),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    let v = res.json();
    assert_eq!(v["error"]["message"], "mock failure 400");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // An OpenAI upstream's 400, for an Anthropic client.
    let res = messages(
        &t,
        &key,
        &json!({"model": "claude-on-openai", "max_tokens": 10,
                "messages": [{"role": "user", "content": "please fail with 400"}]}),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text());
    let v = res.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["message"], "mock failure 400");
    // The gateway's own errors too: no key, unknown model, bad body.
    let res = t
        .client
        .send(Method::POST, "/v1/messages", &[], "{}".to_owned())
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["error"]["type"], "authentication_error");
    let res = messages(
        &t,
        &key,
        &json!({"model": "nope", "max_tokens": 1, "messages": []}),
    )
    .await;
    assert_eq!(res.status, 404, "{}", res.text());
    assert_eq!(res.json()["error"]["type"], "not_found_error");
    let res = messages(
        &t,
        &key,
        &json!({"model": "claude-on-openai", "max_tokens": 1, "messages": [{"role": "robot", "content": "x"}]}),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["type"], "error");
    assert!(res.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("messages[0].role"));
}

#[tokio::test]
async fn the_builtin_mock_speaks_messages_and_tokens_are_counted() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    let body = json!({"model": "echo", "max_tokens": 100, "messages": [{"role": "user", "content": "hi there"}]});
    let res = messages(&t, &key, &body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["content"][0]["text"], "hi there");
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let res = messages(&t, &key, &stream).await;
    let evs = events(&res.text());
    assert_eq!(evs.last().map(|e| e.0.as_str()), Some("message_stop"));
    // Usage read from the stream's own events (the echo model has no price).
    let ledger = ledger_rows(&t, 2).await;
    assert_eq!(ledger[1]["completion_tokens"], 3);
    assert_eq!(ledger[1]["outcome"], "ok");

    let res = t
        .client
        .send(
            Method::POST,
            "/v1/messages/count_tokens",
            &[("x-api-key", &key)],
            json!({"model": "echo", "messages": [{"role": "user", "content": "hello world"}]})
                .to_string(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.json()["input_tokens"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn responses_client_served_by_an_anthropic_upstream() {
    let up = ProviderMock::start().await;
    let t = gateway(&up).await;
    let key = t.any_key().await;
    let res = t
        .client
        .post_json(
            "/v1/responses",
            &key,
            &json!({"model": "gpt-on-anthropic", "instructions": "Be brief.", "input": "hi there",
                    "previous_response_id": "resp_earlier"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], "You said: hi there");
    // The gateway keeps no conversation state: the client is told.
    assert_eq!(
        res.header("x-tollgate-translation-loss"),
        Some("previous_response_id")
    );
    let sent = &up.requests()[0]["body"];
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "user", "content": "hi there"})
    );
}

#[tokio::test]
async fn a_translated_stream_cut_short_ends_with_an_error_event_and_is_charged() {
    use std::time::Duration;
    use tollgate_testkit::{chunk, MockUpstream, Reply};
    let up = MockUpstream::start().await;
    let t = start(&format!(
        "providers:\n  - name: oai\n    kind: openai\n    base_url: {}\nmodels:\n  - name: m\n    targets: [{{provider: oai, model: gpt-upstream}}]\nprices:\n  - model: gpt-upstream\n    input_per_mtok: 1000\n    output_per_mtok: 2000\n",
        up.base_url()
    ))
    .await;
    let key = t.any_key().await;
    // Two chunks, then the upstream closes without a finish reason or [DONE].
    up.push(Reply::Sse {
        chunks: vec![
            (Duration::ZERO, format!("data: {}\n\n", chunk("Hel")).into()),
            (Duration::ZERO, format!("data: {}\n\n", chunk("lo")).into()),
        ],
        drop_after: None,
    });
    let res = messages(
        &t,
        &key,
        &json!({"model": "m", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(res.status, 200);
    let evs = events(&res.text());
    let last = evs.last().unwrap();
    assert_eq!(last.0, "error", "{evs:?}");
    assert_eq!(last.1["type"], "error");
    assert!(evs.iter().all(|(n, _)| n != "message_stop"));
    let ledger = ledger_rows(&t, 1).await;
    assert_eq!(ledger[0]["outcome"], "stream_failed");
    // Charged for what it generated, counted, and marked estimated.
    assert_eq!(ledger[0]["estimated"], true);
    assert!(ledger[0]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(ledger[0]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn gemini_serves_chat_clients_with_tools_and_streams() {
    let up = ProviderMock::start().await;
    let t = start(&format!(
        "providers:\n  - name: gem\n    kind: gemini\n    base_url: {}\n    api_key: gemini-key\nmodels:\n  - name: g\n    targets: [{{provider: gem, model: gemini-upstream}}]\nprices:\n  - model: gemini-upstream\n    input_per_mtok: 100\n    output_per_mtok: 400\n",
        up.gemini_url()
    ))
    .await;
    let key = t.any_key().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut body = json!({"model": "g", "tools": tools, "messages": [{"role": "user", "content": "weather in Paris?"}]});
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let msg = res.json()["choices"][0]["message"].clone();
    let call = &msg["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    let sent = &up.requests()[0];
    assert_eq!(
        sent["path"],
        "/gemini/v1beta/models/gemini-upstream:generateContent"
    );
    assert_eq!(sent["headers"]["x-goog-api-key"], "gemini-key");
    assert!(sent["headers"].get("authorization").is_none());
    assert_eq!(
        sent["body"]["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    // Gemini gives calls no ids: the gateway made one, and answers the function by name.
    let mut history = body["messages"].as_array().unwrap().clone();
    history.push(msg.clone());
    history.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "rain"}));
    body["messages"] = Value::Array(history);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = t
        .client
        .post_json("/v1/chat/completions", &key, &body)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let sent = &up.requests()[1];
    assert_eq!(sent["query"], "alt=sse");
    assert_eq!(
        sent["body"]["contents"][2]["parts"][0]["functionResponse"]["name"],
        "get_weather"
    );
    let chunks = sse_data(&res.text());
    let text: String = chunks
        .iter()
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "The tool said: rain");
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    let prompt = usage["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    // Priced from Gemini's own usage metadata, not estimated.
    let ledger = ledger_rows(&t, 2).await;
    assert_eq!(ledger[1]["streamed"], true);
    assert_eq!(ledger[1]["estimated"], false);
    assert_eq!(ledger[1]["prompt_tokens"], prompt);
    assert!(ledger[1]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn bedrock_requests_are_signed_and_keep_their_cache_points() {
    let up = ProviderMock::start().await;
    let t = start(&format!(
        "providers:\n  - name: br\n    kind: bedrock\n    base_url: {}\n    region: us-east-1\n    access_key_id: AKIDTEST\n    secret_access_key: test-secret\n    session_token: test-session\nmodels:\n  - name: claude\n    targets: [{{provider: br, model: \"anthropic.claude-v2:1\"}}]\n",
        up.bedrock_url()
    ))
    .await;
    let key = t.any_key().await;
    let body = json!({"model": "claude", "max_tokens": 100,
        "system": [{"type": "text", "text": "a long document", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hello bedrock"}]});
    let res = messages(&t, &key, &body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["content"][0]["text"], "You said: hello bedrock");
    assert!(v["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 0);
    assert!(res.header("x-tollgate-translation-loss").is_none());
    let sent = &up.requests()[0];
    assert_eq!(
        sent["path"],
        "/bedrock/model/anthropic.claude-v2%3A1/converse"
    );
    let auth = sent["headers"]["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert!(
        auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
        "{auth}"
    );
    assert_eq!(sent["headers"]["x-amz-security-token"], "test-session");
    // The cache breakpoint is not dropped: it becomes a cachePoint after the block it marks.
    assert_eq!(
        sent["body"]["system"],
        json!([{"text": "a long document"}, {"cachePoint": {"type": "default"}}])
    );

    // Streamed: the binary event stream becomes Anthropic's SSE, priced from its metadata.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let res = messages(&t, &key, &stream).await;
    assert_eq!(res.status, 200);
    let evs = events(&res.text());
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "You said: hello bedrock");
    assert_eq!(evs.last().map(|e| e.0.as_str()), Some("message_stop"));
    assert_eq!(
        up.requests()[1]["path"],
        "/bedrock/model/anthropic.claude-v2%3A1/converse-stream"
    );
    let ledger = ledger_rows(&t, 2).await;
    assert!(ledger[1]["cached_tokens"].as_u64().unwrap() > 0);
    assert!(ledger[1]["completion_tokens"].as_u64().unwrap() > 0);

    // A Bedrock error reaches an OpenAI client in OpenAI's shape.
    let res = t
        .client
        .post_json(
            "/v1/chat/completions",
            &key,
            &chat_body("claude", "please fail with 400"),
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(res.json()["error"]["message"], "mock failure 400");
}

#[tokio::test]
async fn a_cancelled_anthropic_stream_is_charged_for_what_it_generated() {
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tollgate_testkit::{MockUpstream, Reply};
    let up = MockUpstream::start().await;
    let t = start(&format!(
        "providers:\n  - name: ant\n    kind: anthropic\n    base_url: {}\n    api_key: k\nmodels:\n  - name: claude\n    targets: [{{provider: ant, model: claude-x}}]\nprices:\n  - model: claude-x\n    input_per_mtok: 1000\n    output_per_mtok: 2000\n",
        up.base_url()
    ))
    .await;
    let key = t.any_key().await;
    // Anthropic reports input tokens (and 1 output token) at the start; the rest only at the
    // end, which this stream never reaches.
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut first = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 50, "output_tokens": 1}}}),
    );
    first += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    for w in [
        "alpha ", "bravo ", "charlie ", "delta ", "echo ", "foxtrot ", "golf ", "hotel ",
    ] {
        first += &ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
        );
    }
    up.push(Reply::SseGated {
        first: first.into(),
        gate: Arc::new(tokio::sync::Notify::new()),
        rest: vec![],
    });
    let body = json!({"model": "claude", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "spell"}]});
    let mut res = t
        .client
        .open(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", &key)],
            body.to_string(),
        )
        .await;
    let mut got = String::new();
    while !got.contains("hotel") {
        let frame = res.body_mut().frame().await.unwrap().unwrap();
        if let Some(d) = frame.data_ref() {
            got.push_str(&String::from_utf8_lossy(d));
        }
    }
    drop(res);
    let ledger = ledger_rows(&t, 1).await;
    let r = &ledger[0];
    assert_eq!(r["outcome"], "cancelled");
    assert_eq!(r["estimated"], true);
    assert_eq!(r["prompt_tokens"], 50, "the reported prompt is kept");
    assert!(
        r["completion_tokens"].as_u64().unwrap() >= 8,
        "what was generated is counted, not the start's single token: {r}"
    );
}
