//! The golden corpus (`crates/tollgate-llm/golden/*.json`) and focused translation tests.
//!
//! Each corpus file holds one input (a request, a response or a stream in one dialect) and,
//! under `expected`, what every other dialect gets from it, with the loss reported. Run with
//! `UPDATE_SNAPSHOTS=1` to rewrite `expected` after a deliberate change, then review the diff.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;

/// The dialects providers are sent by translation.
const UPSTREAMS: [Dialect; 4] = [
    Dialect::Chat,
    Dialect::Messages,
    Dialect::Gemini,
    Dialect::Bedrock,
];
/// The dialects clients speak.
const CLIENTS: [Dialect; 3] = [Dialect::Chat, Dialect::Messages, Dialect::Responses];

fn dialect(name: &str) -> Dialect {
    match name {
        "chat" => Dialect::Chat,
        "messages" => Dialect::Messages,
        "responses" => Dialect::Responses,
        "gemini" => Dialect::Gemini,
        "bedrock" => Dialect::Bedrock,
        other => unreachable!("unknown dialect {other}"),
    }
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Ids and timestamps the gateway invents are replaced so snapshots are stable.
fn stabilise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match k.as_str() {
                    "created" if val.is_number() => *val = json!(0),
                    "created_at" if val.is_number() => *val = json!(0),
                    "id" | "item_id"
                        if val.as_str().is_some_and(|s| {
                            ["chatcmpl-", "msg_", "resp_", "rs_", "fc_"]
                                .iter()
                                .any(|p| s.starts_with(p))
                        }) =>
                    {
                        *val = json!("<id>")
                    }
                    _ => stabilise(val),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(stabilise),
        _ => {}
    }
}

fn stable_sse(raw: &[u8]) -> Vec<Value> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    parser.feed(raw, &mut events);
    parser.finish(&mut events);
    events
        .into_iter()
        .map(|e| {
            let mut data = serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data));
            stabilise(&mut data);
            match e.event {
                Some(name) => json!({"event": name, "data": data}),
                None => json!({"data": data}),
            }
        })
        .collect()
}

/// What a case's input becomes in every other dialect.
fn run_case(case: &Value) -> Value {
    let mut expected = serde_json::Map::new();
    if let Some(req) = case.get("request") {
        let from = dialect(req["dialect"].as_str().unwrap_or_default());
        let body = serde_json::to_vec(&req["body"]).unwrap_or_default();
        for to in UPSTREAMS.into_iter().filter(|d| *d != from) {
            let out = match decode_request(from, &body) {
                Ok((ir, mut loss)) => {
                    let encoded = encode_request(to, &ir, "upstream-model", &mut loss);
                    json!({
                        "body": serde_json::from_slice::<Value>(&encoded).unwrap_or_default(),
                        "loss": loss.paths(),
                    })
                }
                Err(e) => json!({"error": e.message, "status": e.status().as_u16()}),
            };
            expected.insert(to.name().to_owned(), out);
        }
    } else if let Some(res) = case.get("response") {
        let from = dialect(res["dialect"].as_str().unwrap_or_default());
        let body = serde_json::to_vec(&res["body"]).unwrap_or_default();
        for to in CLIENTS.into_iter().filter(|d| *d != from) {
            let mut loss = Loss::default();
            let out = match decode_response(from, &body, &mut loss) {
                Ok(ir) => {
                    let encoded = encode_response(to, &ir, &mut loss);
                    let mut body = serde_json::from_slice::<Value>(&encoded).unwrap_or_default();
                    stabilise(&mut body);
                    json!({"body": body, "loss": loss.paths()})
                }
                Err(e) => json!({"error": e}),
            };
            expected.insert(to.name().to_owned(), out);
        }
    } else if let Some(stream) = case.get("stream") {
        let from = dialect(stream["dialect"].as_str().unwrap_or_default());
        // Bedrock's stream is binary: the case lists its messages, framed here.
        let framed: Vec<u8> = stream["eventstream"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| {
                let payload = m["payload"].to_string();
                let headers: Vec<(&str, &str)> = match m["exception"].as_str() {
                    Some(e) => vec![(":message-type", "exception"), (":exception-type", e)],
                    None => vec![
                        (":message-type", "event"),
                        (":event-type", m["event"].as_str().unwrap_or_default()),
                        (":content-type", "application/json"),
                    ],
                };
                bedrock::encode_message(&headers, payload.as_bytes())
            })
            .collect();
        let raw = match stream["sse"].as_str() {
            Some(sse) => sse.as_bytes(),
            None => framed.as_slice(),
        };
        let include_usage = stream["include_usage"].as_bool().unwrap_or(false);
        for to in CLIENTS.into_iter().filter(|d| *d != from) {
            // Fed in small pieces: events split across reads must not matter.
            let mut t = Translator::new(from, to, include_usage);
            let mut out = Vec::new();
            for piece in raw.chunks(7) {
                out.extend(t.feed(piece));
            }
            out.extend(t.finish());
            let usage = t.usage.map(|u| {
                json!({"prompt": u.prompt, "completion": u.completion, "cached": u.cached,
                       "reasoning": u.reasoning, "cache_write": u.cache_write})
            });
            expected.insert(
                to.name().to_owned(),
                json!({"events": stable_sse(&out), "usage": usage, "complete": t.done}),
            );
        }
    }
    Value::Object(expected)
}

#[test]
fn golden_corpus() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    assert!(files.len() >= 60, "the corpus has {} cases", files.len());
    let mut failures = Vec::new();
    let mut checks = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut case: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| unreachable!("{}: {e}", file.display()));
        let got = run_case(&case);
        checks += got.as_object().map_or(0, |o| o.len());
        if update {
            case["expected"] = got;
            let mut pretty = serde_json::to_string_pretty(&case).unwrap_or_default();
            pretty.push('\n');
            std::fs::write(file, pretty).unwrap_or_else(|e| unreachable!("{e}"));
        } else if case.get("expected") != Some(&got) {
            failures.push(format!(
                "{}:\n  expected {}\n  got      {}",
                file.display(),
                case.get("expected").cloned().unwrap_or_default(),
                got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) differ (UPDATE_SNAPSHOTS=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checks >= files.len());
}

fn chat_to_messages(body: Value) -> (Value, Loss) {
    let (ir, mut loss) = decode_request(Dialect::Chat, body.to_string().as_bytes())
        .unwrap_or_else(|e| unreachable!("{e}"));
    let out = encode_request(Dialect::Messages, &ir, "claude", &mut loss);
    (serde_json::from_slice(&out).unwrap_or_default(), loss)
}

fn messages_to_chat(body: Value) -> (Value, Loss) {
    let (ir, mut loss) = decode_request(Dialect::Messages, body.to_string().as_bytes())
        .unwrap_or_else(|e| unreachable!("{e}"));
    let out = encode_request(Dialect::Chat, &ir, "gpt", &mut loss);
    (serde_json::from_slice(&out).unwrap_or_default(), loss)
}

#[test]
fn cache_markers_reach_anthropic_and_are_reported_when_openai_cannot_take_them() {
    let (out, loss) = chat_to_messages(json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "long context", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
            {"role": "user", "content": "hi"},
        ],
    }));
    assert!(loss.is_empty(), "{loss:?}");
    assert_eq!(
        out["system"][0]["cache_control"],
        json!({"type": "ephemeral", "ttl": "1h"})
    );

    let (out, loss) = messages_to_chat(json!({
        "model": "m", "max_tokens": 10,
        "system": [{"type": "text", "text": "ctx", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
    }));
    assert_eq!(
        loss.paths(),
        [
            "system[0].cache_control",
            "messages[0].content[0].cache_control"
        ]
    );
    assert_eq!(
        out["messages"][0],
        json!({"role": "system", "content": "ctx"})
    );
}

#[test]
fn thinking_signatures_round_trip_through_a_chat_client() {
    // An Anthropic answer with signed thinking, served to a chat client...
    let anthropic = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "let me see", "signature": "SIG=="},
            {"type": "text", "text": "4"},
        ],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    });
    let mut loss = Loss::default();
    let ir = decode_response(
        Dialect::Messages,
        anthropic.to_string().as_bytes(),
        &mut loss,
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let chat: Value =
        serde_json::from_slice(&encode_response(Dialect::Chat, &ir, &mut loss)).unwrap_or_default();
    let message = chat["choices"][0]["message"].clone();
    assert_eq!(message["reasoning_content"], "let me see");
    assert!(loss.is_empty());
    // ...which sends the message back next turn: the signature reaches Anthropic unchanged.
    let (out, loss) = chat_to_messages(json!({
        "model": "m",
        "messages": [{"role": "user", "content": "2+2?"}, message, {"role": "user", "content": "sure?"}],
    }));
    assert!(loss.is_empty(), "{loss:?}");
    assert_eq!(
        out["messages"][1]["content"][0],
        json!({"type": "thinking", "thinking": "let me see", "signature": "SIG=="})
    );
}

#[test]
fn usage_counts_the_whole_prompt_both_ways() {
    let u = messages::usage_from(&json!({
        "input_tokens": 10, "output_tokens": 7,
        "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20,
    }));
    assert_eq!(
        (u.prompt, u.completion, u.cached, u.cache_write),
        (130, 7, 100, 20)
    );
    let res = Response {
        id: "x".into(),
        model: "m".into(),
        content: vec![Block::text("hi", "content[0]")],
        stop: Stop::End,
        usage: u,
        created: None,
    };
    let back: Value = serde_json::from_slice(&encode_response(
        Dialect::Messages,
        &res,
        &mut Loss::default(),
    ))
    .unwrap_or_default();
    assert_eq!(back["usage"]["input_tokens"], 10);
    assert_eq!(back["usage"]["cache_read_input_tokens"], 100);
    let chat: Value =
        serde_json::from_slice(&encode_response(Dialect::Chat, &res, &mut Loss::default()))
            .unwrap_or_default();
    assert_eq!(chat["usage"]["prompt_tokens"], 130);
    assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
}

#[test]
fn fields_without_an_equivalent_are_reported() {
    let (_, loss) = chat_to_messages(json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "n": 2, "logit_bias": {"50256": -100}, "seed": 7, "temperature": 1.5,
    }));
    for p in ["n", "logit_bias", "seed", "temperature"] {
        assert!(loss.paths().iter().any(|l| l == p), "{p} not in {loss:?}");
    }
    // Defaults that say nothing are not losses.
    let (_, loss) = chat_to_messages(json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1, "logprobs": false,
    }));
    assert!(loss.is_empty(), "{loss:?}");
}

#[test]
fn bad_input_is_a_400_naming_the_field() {
    let err = decode_request(
        Dialect::Messages,
        br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
    )
    .err()
    .unwrap_or_else(|| unreachable!("accepted"));
    assert_eq!(err.status().as_u16(), 400);
    assert_eq!(err.param.as_deref(), Some("messages[0].role"));
    let err = decode_request(Dialect::Chat, br#"{"model":"m","messages":"hi"}"#)
        .err()
        .unwrap_or_else(|| unreachable!("accepted"));
    assert_eq!(err.param.as_deref(), Some("messages"));
}

#[test]
fn a_stream_cut_short_is_not_complete() {
    let mut t = Translator::new(Dialect::Chat, Dialect::Messages, false);
    let out = t.feed(b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("message_start") && text.contains("Hel"),
        "{text}"
    );
    let _ = t.finish();
    assert!(!t.done);
    assert_eq!(t.generated, "Hel");
}
