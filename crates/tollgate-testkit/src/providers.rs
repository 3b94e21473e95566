//! Provider mocks that speak each vendor's real wire format, for translation tests: OpenAI
//! Chat Completions at `/openai/v1/chat/completions`, Anthropic Messages at
//! `/anthropic/v1/messages` and Gemini at `/gemini/v1beta/models/{model}:generateContent`
//! (and `:streamGenerateContent?alt=sse`), Bedrock Converse at `/bedrock/model/{id}/converse`
//! (and `/converse-stream`, in AWS's binary event-stream framing), JSON and streamed.
//!
//! The mock "model" is deterministic, and written apart from tollgate's translator so a
//! translation bug cannot cancel itself out:
//! - the last user text is echoed as `You said: <text>`;
//! - a message mentioning `weather` with tools offered gets a call to the first tool with
//!   `{"city":"Paris"}` (and a second with `{"city":"Rome"}` when it also says `Rome`);
//! - a tool result gets `The tool said: <result>`;
//! - Anthropic with thinking enabled thinks first and signs its thinking; a signed thinking
//!   block sent back whose signature does not match is refused with a 400, so a signature
//!   that did not round-trip fails loudly;
//! - Anthropic requests carrying `cache_control` report cache reads in their usage;
//! - Gemini with thoughts included thinks first and puts a `thoughtSignature` on its answer's
//!   first part; a signature sent back that is not the one it gave is refused with a 400, and
//!   so is a `functionResponse` naming no offered function;
//! - Bedrock refuses a request without a SigV4 `Authorization` for region `us-east-1` and
//!   service `bedrock`, signs its reasoning like Anthropic, and reports cache reads when the
//!   request carries a `cachePoint`;
//! - a message saying `fail with 400` (or `529`) gets that error in the vendor's shape.
//!
//! Every request is recorded; `GET /requests` returns them (path and JSON body), newest last.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A running provider mock.
pub struct ProviderMock {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProviderMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProviderMock {
    pub async fn start() -> ProviderMock {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| unreachable!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| unreachable!("addr: {e}"));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, recorded.clone()));
        ProviderMock {
            addr,
            recorded,
            task,
        }
    }

    /// `http://127.0.0.1:port/openai/v1`
    pub fn openai_url(&self) -> String {
        format!("http://{}/openai/v1", self.addr)
    }

    /// `http://127.0.0.1:port/anthropic/v1`
    pub fn anthropic_url(&self) -> String {
        format!("http://{}/anthropic/v1", self.addr)
    }

    /// `http://127.0.0.1:port/gemini/v1beta`
    pub fn gemini_url(&self) -> String {
        format!("http://{}/gemini/v1beta", self.addr)
    }

    /// `http://127.0.0.1:port/bedrock`
    pub fn bedrock_url(&self) -> String {
        format!("http://{}/bedrock", self.addr)
    }

    /// Requests received: `{"path", "headers", "body"}`.
    pub fn requests(&self) -> Vec<Value> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, recorded: Arc<Mutex<Vec<Value>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let recorded = recorded.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, recorded.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    recorded: Arc<Mutex<Vec<Value>>>,
) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or_default())))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path == "/requests" {
        let all = recorded.lock().map(|r| r.clone()).unwrap_or_default();
        return Ok(json_reply(200, &Value::Array(all)));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut r) = recorded.lock() {
        r.push(json!({"path": path, "query": query, "headers": headers, "body": body}));
    }
    if let Some(rest) = path.strip_prefix("/bedrock/model/") {
        return Ok(match rest.rsplit_once('/') {
            Some((_, "converse")) => bedrock(&body, &headers, false),
            Some((_, "converse-stream")) => bedrock(&body, &headers, true),
            _ => json_reply(404, &json!({"message": "no such operation"})),
        });
    }
    if let Some(rest) = path.strip_prefix("/gemini/v1beta/models/") {
        return Ok(match rest.rsplit_once(':') {
            Some((model, "generateContent")) => gemini(model, &body, &headers, false),
            Some((model, "streamGenerateContent")) if query == "alt=sse" => {
                gemini(model, &body, &headers, true)
            }
            _ => json_reply(
                404,
                &json!({"error": {"code": 404, "message": "no such method", "status": "NOT_FOUND"}}),
            ),
        });
    }
    Ok(match path.as_str() {
        "/openai/v1/chat/completions" => openai_chat(&body),
        "/anthropic/v1/messages" => anthropic_messages(&body, &headers),
        "/openai/v1/models" | "/anthropic/v1/models" => json_reply(200, &json!({"data": []})),
        _ => json_reply(
            404,
            &json!({"error": {"message": "no such route", "type": "not_found"}}),
        ),
    })
}

fn json_reply(status: u16, v: &Value) -> Response<BoxBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn sse_reply(events: Vec<String>) -> Response<BoxBody> {
    let frames = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Frame::data(Bytes::from(e)))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// What the mock model does for one turn.
struct Answer {
    thinking: Option<String>,
    text: String,
    calls: Vec<(String, String, String)>,
    prompt_tokens: u64,
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// A signature over thinking text: what a real provider's opaque signature stands for.
fn sign(thinking: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in thinking.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("sig-{h:016x}")
}

/// The turn: `last` is the last user text or tool result, `tools` the offered tool names.
fn decide(last: &Turn, tools: &[String], thinking: bool, prompt_tokens: u64) -> Answer {
    let (text, calls) = match last {
        Turn::ToolResult(r) => (format!("The tool said: {r}"), Vec::new()),
        Turn::Text(t) if t.to_lowercase().contains("weather") && !tools.is_empty() => {
            let name = tools.first().cloned().unwrap_or_default();
            let mut calls = vec![(
                "call_paris".to_owned(),
                name.clone(),
                r#"{"city":"Paris"}"#.to_owned(),
            )];
            if t.contains("Rome") {
                calls.push(("call_rome".into(), name, r#"{"city":"Rome"}"#.into()));
            }
            (String::new(), calls)
        }
        Turn::Text(t) => (format!("You said: {t}"), Vec::new()),
    };
    Answer {
        thinking: thinking.then(|| "The user wants an answer; let me think.".to_owned()),
        text,
        calls,
        prompt_tokens,
    }
}

enum Turn {
    Text(String),
    ToolResult(String),
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn error_for(text: &str) -> Option<u16> {
    if text.contains("fail with 400") {
        Some(400)
    } else if text.contains("fail with 529") {
        Some(529)
    } else {
        None
    }
}

// ---- OpenAI ----

fn openai_chat(req: &Value) -> Response<BoxBody> {
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let last = match messages.last() {
        Some(m) if m["role"] == "tool" => Turn::ToolResult(text_of(&m["content"])),
        Some(m) => Turn::Text(text_of(&m["content"])),
        None => {
            return json_reply(
                400,
                &json!({"error": {"message": "messages is empty", "type": "invalid_request_error", "param": "messages", "code": null}}),
            )
        }
    };
    if let Turn::Text(t) = &last {
        if let Some(status) = error_for(t) {
            return json_reply(
                status,
                &json!({"error": {"message": format!("mock failure {status}"), "type": "invalid_request_error", "param": null, "code": "mock_failure"}}),
            );
        }
    }
    let tools: Vec<String> = req["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let prompt_tokens = (req["messages"].to_string().len() as u64).div_ceil(4);
    let a = decide(&last, &tools, false, prompt_tokens);
    let completion = words(&a.text) + 10 * a.calls.len() as u64;
    let usage = json!({
        "prompt_tokens": a.prompt_tokens, "completion_tokens": completion,
        "total_tokens": a.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    });
    let finish = if a.calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let model = req["model"].as_str().unwrap_or("gpt").to_owned();
    if req["stream"] != json!(true) {
        let calls: Vec<Value> = a
            .calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        let mut message = json!({"role": "assistant", "content": if a.text.is_empty() { Value::Null } else { json!(a.text) }, "refusal": null});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        return json_reply(
            200,
            &json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                "usage": usage,
            }),
        );
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for w in a.text.split_inclusive(' ') {
        out.push(chunk(json!({"content": w}), None));
    }
    for (i, (id, name, args)) in a.calls.iter().enumerate() {
        out.push(chunk(
            json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        let (x, y) = args.split_at(args.len() / 2);
        for part in [x, y] {
            out.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                None,
            ));
        }
    }
    out.push(chunk(json!({}), Some(finish)));
    if req["stream_options"]["include_usage"] == json!(true) {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [], "usage": usage});
        out.push(format!("data: {c}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_owned());
    sse_reply(out)
}

// ---- Anthropic ----

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response<BoxBody> {
    json_reply(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn anthropic_messages(req: &Value, headers: &serde_json::Map<String, Value>) -> Response<BoxBody> {
    if headers.get("x-api-key").is_none() || headers.get("anthropic-version").is_none() {
        return anthropic_error(
            401,
            "authentication_error",
            "x-api-key and anthropic-version are required",
        );
    }
    let Some(max_tokens) = req["max_tokens"].as_u64() else {
        return anthropic_error(400, "invalid_request_error", "max_tokens: Field required");
    };
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    // Signed thinking must come back exactly as it was signed.
    for (i, m) in messages.iter().enumerate() {
        for b in m["content"].as_array().into_iter().flatten() {
            if b["type"] == "thinking" {
                let text = b["thinking"].as_str().unwrap_or_default();
                if b["signature"].as_str() != Some(sign(text).as_str()) {
                    return anthropic_error(
                        400,
                        "invalid_request_error",
                        &format!("messages.{i}: invalid signature in thinking block"),
                    );
                }
            }
        }
    }
    let last = match messages.last() {
        Some(m) if m["role"] != "user" => {
            return anthropic_error(
                400,
                "invalid_request_error",
                "the last message must be from the user",
            )
        }
        Some(m) => {
            let blocks = m["content"].as_array().cloned().unwrap_or_default();
            match blocks.iter().rev().find(|b| b["type"] == "tool_result") {
                Some(r) => Turn::ToolResult(text_of(&r["content"])),
                None => Turn::Text(text_of(&m["content"])),
            }
        }
        None => {
            return anthropic_error(
                400,
                "invalid_request_error",
                "messages: at least one message is required",
            )
        }
    };
    if let Turn::Text(t) = &last {
        if let Some(status) = error_for(t) {
            let kind = if status == 529 {
                "overloaded_error"
            } else {
                "invalid_request_error"
            };
            return anthropic_error(status, kind, &format!("mock failure {status}"));
        }
    }
    let tools: Vec<String> = req["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let thinking = req["thinking"]["type"] == "enabled";
    let raw = req.to_string();
    let prompt_tokens = (raw.len() as u64).div_ceil(4);
    let cached = if raw.contains("\"cache_control\"") {
        prompt_tokens / 2
    } else {
        0
    };
    let a = decide(&last, &tools, thinking, prompt_tokens);
    let output =
        (words(&a.text) + 10 * a.calls.len() as u64 + a.thinking.as_deref().map_or(0, words))
            .min(max_tokens);
    let stop = if a.calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let model = req["model"].as_str().unwrap_or("claude").to_owned();
    let input = prompt_tokens - cached;
    let mut content = Vec::new();
    if let Some(t) = &a.thinking {
        content.push(json!({"type": "thinking", "thinking": t, "signature": sign(t)}));
    }
    if !a.text.is_empty() {
        content.push(json!({"type": "text", "text": a.text}));
    }
    for (id, name, args) in &a.calls {
        let input: Value = serde_json::from_str(args).unwrap_or_default();
        content.push(
            json!({"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": input}),
        );
    }
    if req["stream"] != json!(true) {
        return json_reply(
            200,
            &json!({
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output,
                          "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0},
            }),
        );
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for (i, block) in content.iter().enumerate() {
        let delta = |d: Value| {
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": d}),
            )
        };
        match block["type"].as_str() {
            Some("thinking") => {
                out.push(ev("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "thinking", "thinking": ""}})));
                for w in block["thinking"]
                    .as_str()
                    .unwrap_or_default()
                    .split_inclusive(' ')
                {
                    out.push(delta(json!({"type": "thinking_delta", "thinking": w})));
                }
                out.push(delta(
                    json!({"type": "signature_delta", "signature": block["signature"]}),
                ));
            }
            Some("text") => {
                out.push(ev("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})));
                for w in block["text"]
                    .as_str()
                    .unwrap_or_default()
                    .split_inclusive(' ')
                {
                    out.push(delta(json!({"type": "text_delta", "text": w})));
                }
            }
            _ => {
                out.push(ev("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})));
                let args = block["input"].to_string();
                let (x, y) = args.split_at(args.len() / 2);
                for part in [x, y] {
                    out.push(delta(
                        json!({"type": "input_json_delta", "partial_json": part}),
                    ));
                }
            }
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    out.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}}),
    ));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    sse_reply(out)
}

// ---- Gemini ----

fn gemini_error(status: u16, code: &str, message: &str) -> Response<BoxBody> {
    json_reply(
        status,
        &json!({"error": {"code": status, "message": message, "status": code}}),
    )
}

/// The signature the Gemini mock gives its thoughts.
fn gemini_signature() -> String {
    sign("gemini-thought")
}

fn gemini(
    model: &str,
    req: &Value,
    headers: &serde_json::Map<String, Value>,
    stream: bool,
) -> Response<BoxBody> {
    if headers.get("x-goog-api-key").is_none() {
        return gemini_error(403, "PERMISSION_DENIED", "x-goog-api-key is required");
    }
    let contents = req["contents"].as_array().cloned().unwrap_or_default();
    let tools: Vec<String> = req["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t["functionDeclarations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .collect();
    for c in &contents {
        for p in c["parts"].as_array().into_iter().flatten() {
            if let Some(sig) = p["thoughtSignature"].as_str() {
                if sig != gemini_signature() {
                    return gemini_error(400, "INVALID_ARGUMENT", "invalid thought signature");
                }
            }
            if let Some(name) = p["functionResponse"]["name"].as_str() {
                if !tools.iter().any(|t| t == name) {
                    return gemini_error(
                        400,
                        "INVALID_ARGUMENT",
                        &format!("function response for unknown function {name:?}"),
                    );
                }
            }
        }
    }
    let last = match contents.last() {
        Some(c) if c["role"] == "user" => {
            let parts = c["parts"].as_array().cloned().unwrap_or_default();
            match parts.iter().rev().find_map(|p| p.get("functionResponse")) {
                Some(r) => Turn::ToolResult(
                    r["response"]["output"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| r["response"].to_string()),
                ),
                None => Turn::Text(
                    parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(""),
                ),
            }
        }
        _ => {
            return gemini_error(
                400,
                "INVALID_ARGUMENT",
                "the last content must be from the user",
            )
        }
    };
    if let Turn::Text(t) = &last {
        if let Some(status) = error_for(t) {
            return gemini_error(
                status,
                "INVALID_ARGUMENT",
                &format!("mock failure {status}"),
            );
        }
    }
    let thinking = req["generationConfig"]["thinkingConfig"]["includeThoughts"] == json!(true);
    let prompt_tokens = (req.to_string().len() as u64).div_ceil(4);
    let a = decide(&last, &tools, thinking, prompt_tokens);
    let mut parts = Vec::new();
    if let Some(t) = &a.thinking {
        parts.push(json!({"text": t, "thought": true}));
    }
    if !a.text.is_empty() {
        parts.push(json!({"text": a.text}));
    }
    for (_, name, args) in &a.calls {
        // Gemini gives no call ids.
        let args: Value = serde_json::from_str(args).unwrap_or_default();
        parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    if thinking {
        if let Some(first) = parts.iter_mut().find(|p| p["thought"] != json!(true)) {
            first["thoughtSignature"] = json!(gemini_signature());
        }
    }
    let thoughts = a.thinking.as_deref().map_or(0, words);
    let usage = json!({
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": words(&a.text) + 10 * a.calls.len() as u64,
        "thoughtsTokenCount": thoughts,
        "totalTokenCount": prompt_tokens + words(&a.text) + thoughts,
    });
    let chunk = |parts: Vec<Value>, last: bool| {
        let mut c = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": model, "responseId": "gem-mock"});
        if last {
            c["candidates"][0]["finishReason"] = json!("STOP");
            c["usageMetadata"] = usage.clone();
        }
        c
    };
    if !stream {
        return json_reply(200, &chunk(parts, true));
    }
    // Text streams word by word; other parts come whole, as Gemini sends them.
    let mut out = Vec::new();
    for p in parts {
        match p["text"]
            .as_str()
            .filter(|_| p.get("thoughtSignature").is_none())
        {
            Some(text) => {
                for w in text.split_inclusive(' ') {
                    let mut piece = p.clone();
                    piece["text"] = json!(w);
                    out.push(format!("data: {}\n\n", chunk(vec![piece], false)));
                }
            }
            None => out.push(format!("data: {}\n\n", chunk(vec![p], false))),
        }
    }
    out.push(format!("data: {}\n\n", chunk(Vec::new(), true)));
    sse_reply(out)
}

// ---- Bedrock ----

/// One AWS event-stream message with string headers: prelude (total length, headers length,
/// CRC32 of those 8 bytes), headers, payload, CRC32 of everything before it.
fn event_stream_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7); // string
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = (16 + h.len() + payload.len()) as u32;
    let mut m = Vec::new();
    m.extend_from_slice(&total.to_be_bytes());
    m.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude = crc32fast::hash(&m);
    m.extend_from_slice(&prelude.to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(payload);
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

fn bedrock_event(kind: &str, payload: &Value) -> Bytes {
    Bytes::from(event_stream_message(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    ))
}

fn bedrock_error(status: u16, kind: &str, message: &str) -> Response<BoxBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
        .header("content-type", "application/json")
        .header("x-amzn-errortype", kind)
        .body(Full::new(Bytes::from(json!({"message": message}).to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn bedrock(
    req: &Value,
    headers: &serde_json::Map<String, Value>,
    stream: bool,
) -> Response<BoxBody> {
    let auth = headers
        .get("authorization")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let signed = auth.starts_with("AWS4-HMAC-SHA256 Credential=")
        && auth.contains("/us-east-1/bedrock/aws4_request")
        && auth.contains("SignedHeaders=")
        && auth.contains("host")
        && headers.contains_key("x-amz-date");
    if !signed {
        return bedrock_error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    for m in &messages {
        for b in m["content"].as_array().into_iter().flatten() {
            if let Some(r) = b.pointer("/reasoningContent/reasoningText") {
                let text = r["text"].as_str().unwrap_or_default();
                if r["signature"].as_str() != Some(sign(text).as_str()) {
                    return bedrock_error(
                        400,
                        "ValidationException",
                        "invalid signature in reasoning content",
                    );
                }
            }
        }
    }
    let last = match messages.last() {
        Some(m) if m["role"] == "user" => {
            let blocks = m["content"].as_array().cloned().unwrap_or_default();
            match blocks.iter().rev().find_map(|b| b.get("toolResult")) {
                Some(r) => Turn::ToolResult(
                    r["content"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(""),
                ),
                None => Turn::Text(
                    blocks
                        .iter()
                        .filter_map(|b| b["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(""),
                ),
            }
        }
        _ => {
            return bedrock_error(
                400,
                "ValidationException",
                "the last message must be from the user",
            )
        }
    };
    if let Turn::Text(t) = &last {
        if let Some(status) = error_for(t) {
            return bedrock_error(
                status,
                "ValidationException",
                &format!("mock failure {status}"),
            );
        }
    }
    let tools: Vec<String> = req["toolConfig"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["toolSpec"]["name"].as_str().map(str::to_owned))
        .collect();
    let thinking = req["additionalModelRequestFields"]["thinking"]["type"] == "enabled";
    let raw = req.to_string();
    let prompt = (raw.len() as u64).div_ceil(4);
    let cached = if raw.contains("\"cachePoint\"") {
        prompt / 2
    } else {
        0
    };
    let a = decide(&last, &tools, thinking, prompt);
    let mut content = Vec::new();
    if let Some(t) = &a.thinking {
        content.push(
            json!({"reasoningContent": {"reasoningText": {"text": t, "signature": sign(t)}}}),
        );
    }
    if !a.text.is_empty() {
        content.push(json!({"text": a.text}));
    }
    for (id, name, args) in &a.calls {
        let input: Value = serde_json::from_str(args).unwrap_or_default();
        content.push(json!({"toolUse": {"toolUseId": format!("tooluse_{id}"), "name": name, "input": input}}));
    }
    let output =
        words(&a.text) + 10 * a.calls.len() as u64 + a.thinking.as_deref().map_or(0, words);
    let usage = json!({"inputTokens": prompt - cached, "outputTokens": output,
        "totalTokens": prompt + output, "cacheReadInputTokens": cached, "cacheWriteInputTokens": 0});
    let stop = if a.calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    if !stream {
        return json_reply(
            200,
            &json!({"output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}}),
        );
    }
    let mut out = vec![bedrock_event("messageStart", &json!({"role": "assistant"}))];
    for (i, block) in content.iter().enumerate() {
        let delta = |d: Value| {
            bedrock_event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": i, "delta": d}),
            )
        };
        if let Some(r) = block.pointer("/reasoningContent/reasoningText") {
            for w in r["text"].as_str().unwrap_or_default().split_inclusive(' ') {
                out.push(delta(json!({"reasoningContent": {"text": w}})));
            }
            out.push(delta(
                json!({"reasoningContent": {"signature": r["signature"]}}),
            ));
        } else if let Some(t) = block["text"].as_str() {
            for w in t.split_inclusive(' ') {
                out.push(delta(json!({"text": w})));
            }
        } else {
            let u = &block["toolUse"];
            out.push(bedrock_event(
                "contentBlockStart",
                &json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": u["toolUseId"], "name": u["name"]}}}),
            ));
            let args = u["input"].to_string();
            let (x, y) = args.split_at(args.len() / 2);
            for part in [x, y] {
                out.push(delta(json!({"toolUse": {"input": part}})));
            }
        }
        out.push(bedrock_event(
            "contentBlockStop",
            &json!({"contentBlockIndex": i}),
        ));
    }
    out.push(bedrock_event("messageStop", &json!({"stopReason": stop})));
    out.push(bedrock_event(
        "metadata",
        &json!({"usage": usage, "metrics": {"latencyMs": 1}}),
    ));
    let frames =
        futures_util::stream::iter(out.into_iter().map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}
