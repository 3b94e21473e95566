//! The built-in `mock` provider: deterministic, offline. It echoes the last user message,
//! counts tokens with a simple word-piece rule (one token per started four characters of each
//! word), streams in a configurable number of chunks, and can be told to be slow or to fail.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_core::config::MockSettings;
use tollgate_core::error::ApiError;

use super::{Call, Endpoint, ProviderError, Reply, StreamEnd, Usage};
use crate::stream::ForwardStream;

pub struct MockProvider {
    settings: MockSettings,
}

/// Counts tokens the mock's way: each whitespace-separated word costs one token per started
/// four characters.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace()
        .map(|w| (w.chars().count() as u64).div_ceil(4).max(1))
        .sum()
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// The text of a message's content: a string, or the `text` of each part of an array.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn invalid(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::Invalid(ApiError::invalid(message).param(param))
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", fastrand::u128(..) >> 32)
}

/// Truncates `text` to at most `budget` tokens. Returns the text and whether it was cut.
fn truncate(text: &str, budget: Option<u64>) -> (String, bool) {
    let Some(budget) = budget else {
        return (text.to_owned(), false);
    };
    let mut used = 0;
    let mut out = String::new();
    for piece in text.split_inclusive(char::is_whitespace) {
        let cost = count_tokens(piece);
        if used + cost > budget {
            return (out, true);
        }
        used += cost;
        out.push_str(piece);
    }
    (out, false)
}

/// Splits text into `n` pieces of near-equal length (or one per word when `n` is 0).
fn split_chunks(text: &str, n: u32) -> Vec<String> {
    if n == 0 {
        let words: Vec<String> = text
            .split_inclusive(char::is_whitespace)
            .map(str::to_owned)
            .collect();
        return if words.is_empty() {
            vec![String::new()]
        } else {
            words
        };
    }
    let chars: Vec<char> = text.chars().collect();
    let n = n as usize;
    (0..n)
        .map(|i| {
            let start = chars.len() * i / n;
            let end = chars.len() * (i + 1) / n;
            chars
                .get(start..end)
                .map(|c| c.iter().collect())
                .unwrap_or_default()
        })
        .collect()
}

fn sse(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn sse_event(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn json_response(body: &Value) -> Result<Response, ProviderError> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .map_err(|e| ProviderError::Protocol(e.to_string()))
}

impl MockProvider {
    pub fn new(settings: MockSettings) -> MockProvider {
        MockProvider { settings }
    }

    pub async fn call(&self, call: Call<'_>, on_end: StreamEnd) -> Result<Reply, ProviderError> {
        let s = &self.settings;
        if let Some(limit) = call.first_token {
            let wait = if call.envelope.stream {
                s.ttft
            } else {
                s.latency
            };
            if wait > limit {
                tokio::time::sleep(limit).await;
                return Err(ProviderError::Timeout {
                    phase: "first token",
                    after: limit,
                });
            }
        }
        if s.error_rate > 0.0 && fastrand::f64() < s.error_rate {
            let body = json!({"error": {"message": "error injected by the mock provider", "type": "mock_error", "code": "injected_error", "param": null}});
            return Err(ProviderError::Status {
                status: http::StatusCode::from_u16(s.error_status)
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                message: "error injected by the mock provider".into(),
                body: Bytes::from(body.to_string()),
                headers: Vec::new(),
            });
        }
        match call.endpoint {
            Endpoint::Chat => self.chat(&call, on_end).await,
            Endpoint::Embeddings => self.embeddings(&call).await,
            Endpoint::Responses => self.responses(&call, on_end).await,
            Endpoint::Messages => self.messages(&call, on_end).await,
        }
    }

    /// Anthropic Messages: the same echo, written through the Messages codec.
    async fn messages(&self, call: &Call<'_>, on_end: StreamEnd) -> Result<Reply, ProviderError> {
        use crate::translate::{self, Block, BlockKind, Dialect, Event, Role, StartKind, Stop};
        let (req, _) = translate::decode_request(Dialect::Messages, call.body)
            .map_err(ProviderError::Invalid)?;
        if req.messages.is_empty() {
            return Err(invalid(
                "`messages` must contain at least one message",
                "messages",
            ));
        }
        let text_of = |blocks: &[Block]| {
            blocks
                .iter()
                .filter_map(|b| match &b.kind {
                    BlockKind::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("")
        };
        let prompt_tokens = req
            .messages
            .iter()
            .map(|m| 3 + count_tokens(&text_of(&m.content)))
            .sum::<u64>()
            + count_tokens(&text_of(&req.system))
            + 3;
        let echo = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| text_of(&m.content))
            .unwrap_or_default();
        let (text, cut) = truncate(&echo, req.max_tokens);
        let stop = if cut { Stop::MaxTokens } else { Stop::End };
        let usage = Usage {
            prompt: prompt_tokens,
            completion: count_tokens(&text),
            ..Usage::default()
        };
        let id = random_id("msg_");
        let model = call.public_model.to_owned();
        if !call.envelope.stream {
            tokio::time::sleep(self.settings.latency).await;
            let res = translate::Response {
                id,
                model,
                content: vec![Block::text(text, "content[0]")],
                stop,
                usage,
                created: None,
            };
            let body = translate::encode_response(Dialect::Messages, &res, &mut Default::default());
            let response = Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .map_err(|e| ProviderError::Protocol(e.to_string()))?;
            return Ok(Reply {
                response,
                upstream: Duration::ZERO,
                usage: Some(usage),
                streamed: false,
                loss: Default::default(),
            });
        }
        // Like Anthropic: input tokens at the start, output tokens at the end.
        let mut encoder = translate::stream_encoder(Dialect::Messages, true);
        let mut events = Vec::new();
        let mut emit = |evs: &[Event]| {
            let mut out = Vec::new();
            for ev in evs {
                encoder.encode(ev, &mut out);
            }
            events.push(Bytes::from(out));
        };
        emit(&[
            Event::Start { id, model },
            Event::Usage(Usage {
                prompt: usage.prompt,
                ..Usage::default()
            }),
            Event::BlockStart {
                index: 0,
                kind: StartKind::Text,
            },
        ]);
        for piece in split_chunks(&text, self.settings.chunks) {
            emit(&[Event::Delta {
                index: 0,
                delta: translate::Delta::Text(piece),
            }]);
        }
        emit(&[
            Event::BlockStop { index: 0 },
            Event::Usage(usage),
            Event::Finish(stop),
            Event::Done,
        ]);
        self.stream(call.endpoint, events, on_end, false)
    }

    async fn chat(&self, call: &Call<'_>, on_end: StreamEnd) -> Result<Reply, ProviderError> {
        let req: ChatRequest = serde_json::from_slice(call.body)
            .map_err(|e| invalid(format!("invalid chat request: {e}"), "messages"))?;
        if req.messages.is_empty() {
            return Err(invalid(
                "`messages` must contain at least one message",
                "messages",
            ));
        }
        let prompt_tokens: u64 = req
            .messages
            .iter()
            .map(|m| 3 + count_tokens(&content_text(m.content.as_ref())))
            .sum::<u64>()
            + 3;
        let echo = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| content_text(m.content.as_ref()))
            .unwrap_or_default();
        let (text, cut) = truncate(&echo, req.max_completion_tokens.or(req.max_tokens));
        let finish = if cut { "length" } else { "stop" };
        let usage = Usage {
            prompt: prompt_tokens,
            completion: count_tokens(&text),
            ..Usage::default()
        };
        let usage_json = json!({
            "prompt_tokens": usage.prompt,
            "completion_tokens": usage.completion,
            "total_tokens": usage.prompt + usage.completion,
        });
        let id = random_id("chatcmpl-");
        let created = tollgate_core::time::now();
        let model = call.public_model;

        if !call.envelope.stream {
            tokio::time::sleep(self.settings.latency).await;
            let body = json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "tollgate-mock",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                             "logprobs": null, "finish_reason": finish}],
                "usage": usage_json,
            });
            return Ok(Reply {
                response: json_response(&body)?,
                upstream: Duration::ZERO,
                usage: Some(usage),
                streamed: false,
                loss: Default::default(),
            });
        }

        // Like an OpenAI upstream the gateway asked for usage: the usage chunk always comes,
        // and the stream hides it from a client that did not ask.
        let strip_usage = !call.envelope.include_usage;
        let include_usage = true;
        let chunk = |delta: Value, finish: Option<&str>| {
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "tollgate-mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            sse(&c)
        };
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        for piece in split_chunks(&text, self.settings.chunks) {
            events.push(chunk(json!({"content": piece}), None));
        }
        events.push(chunk(json!({}), Some(finish)));
        if include_usage {
            events.push(sse(&json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "tollgate-mock", "choices": [], "usage": usage_json,
            })));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        self.stream(call.endpoint, events, on_end, strip_usage)
    }

    /// Paces pre-built events: `ttft` before the first, then `latency` spread over the rest.
    fn stream(
        &self,
        dialect: Endpoint,
        events: Vec<Bytes>,
        on_end: StreamEnd,
        strip_usage: bool,
    ) -> Result<Reply, ProviderError> {
        let ttft = self.settings.ttft;
        let gap = self.settings.latency / (events.len().max(2) as u32 - 1);
        let paced = futures_util::stream::iter(events.into_iter().enumerate()).then(
            move |(i, ev)| async move {
                let wait = if i == 0 { ttft } else { gap };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok::<_, std::convert::Infallible>(ev)
            },
        );
        // The idle bound is the mock's own pacing plus slack: the mock never goes idle.
        let idle = ttft.max(gap) + Duration::from_secs(60);
        let mut body = ForwardStream::new(Body::from_stream(paced), dialect, idle, on_end)
            .strip_usage(strip_usage);
        if dialect == Endpoint::Messages {
            body = body.translate(crate::translate::Translator::tap(
                crate::translate::Dialect::Messages,
            ));
        }
        let response = Response::builder()
            .header(http::header::CONTENT_TYPE, "text/event-stream")
            .header(http::header::CACHE_CONTROL, "no-cache")
            .body(Body::new(body))
            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
        Ok(Reply {
            response,
            upstream: Duration::ZERO,
            usage: None,
            streamed: true,
            loss: Default::default(),
        })
    }

    async fn embeddings(&self, call: &Call<'_>) -> Result<Reply, ProviderError> {
        #[derive(Deserialize)]
        struct EmbeddingRequest {
            input: Value,
            dimensions: Option<usize>,
            encoding_format: Option<String>,
        }
        let req: EmbeddingRequest = serde_json::from_slice(call.body)
            .map_err(|e| invalid(format!("invalid embeddings request: {e}"), "input"))?;
        let inputs: Vec<String> = match &req.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) if !items.is_empty() => {
                if items.iter().all(Value::is_string) {
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                } else if items.iter().all(Value::is_number) {
                    vec![req.input.to_string()]
                } else if items.iter().all(Value::is_array) {
                    items.iter().map(Value::to_string).collect()
                } else {
                    return Err(invalid(
                        "`input` must be a string, an array of strings or of token arrays",
                        "input",
                    ));
                }
            }
            _ => {
                return Err(invalid(
                    "`input` must be a non-empty string or array",
                    "input",
                ))
            }
        };
        let dims = req.dimensions.unwrap_or(16);
        if dims == 0 || dims > 4096 {
            return Err(invalid(
                "`dimensions` must be between 1 and 4096",
                "dimensions",
            ));
        }
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(invalid(
                    format!("unknown encoding_format {other:?}"),
                    "encoding_format",
                ))
            }
        };
        tokio::time::sleep(self.settings.latency).await;
        let mut tokens = 0;
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                tokens += count_tokens(text);
                let v = embed(text, dims);
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let body = json!({
            "object": "list", "data": data, "model": call.public_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        Ok(Reply {
            response: json_response(&body)?,
            upstream: Duration::ZERO,
            usage: Some(Usage {
                prompt: tokens,
                completion: 0,
                ..Usage::default()
            }),
            streamed: false,
            loss: Default::default(),
        })
    }

    async fn responses(&self, call: &Call<'_>, on_end: StreamEnd) -> Result<Reply, ProviderError> {
        #[derive(Deserialize)]
        struct ResponsesRequest {
            input: Value,
            instructions: Option<String>,
            max_output_tokens: Option<u64>,
        }
        let req: ResponsesRequest = serde_json::from_slice(call.body)
            .map_err(|e| invalid(format!("invalid responses request: {e}"), "input"))?;
        let (echo, prompt_text) = match &req.input {
            Value::String(s) => (s.clone(), s.clone()),
            Value::Array(items) => {
                let texts: Vec<(String, String)> = items
                    .iter()
                    .map(|it| {
                        let role = it
                            .get("role")
                            .and_then(Value::as_str)
                            .unwrap_or("user")
                            .to_owned();
                        (role, content_text(it.get("content")))
                    })
                    .collect();
                let echo = texts
                    .iter()
                    .rev()
                    .find(|(r, _)| r == "user")
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default();
                (
                    echo,
                    texts
                        .into_iter()
                        .map(|(_, t)| t)
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            }
            _ => {
                return Err(invalid(
                    "`input` must be a string or an array of input items",
                    "input",
                ))
            }
        };
        let prompt =
            count_tokens(&prompt_text) + req.instructions.as_deref().map_or(0, count_tokens);
        let (text, cut) = truncate(&echo, req.max_output_tokens);
        let usage = Usage {
            prompt,
            completion: count_tokens(&text),
            ..Usage::default()
        };
        let id = random_id("resp_");
        let msg_id = random_id("msg_");
        let created = tollgate_core::time::now();
        let response_obj = |status: &str, text: &str| {
            json!({
                "id": id, "object": "response", "created_at": created, "status": status,
                "model": call.public_model, "error": null, "incomplete_details": if cut { json!({"reason": "max_output_tokens"}) } else { Value::Null },
                "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "output": if status == "in_progress" { json!([]) } else { json!([{
                    "type": "message", "id": msg_id, "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }]) },
                "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
                "usage": if status == "in_progress" { Value::Null } else { json!({
                    "input_tokens": usage.prompt, "output_tokens": usage.completion,
                    "total_tokens": usage.prompt + usage.completion,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0},
                }) },
            })
        };
        let done_status = if cut { "incomplete" } else { "completed" };
        if !call.envelope.stream {
            tokio::time::sleep(self.settings.latency).await;
            return Ok(Reply {
                response: json_response(&response_obj(done_status, &text))?,
                upstream: Duration::ZERO,
                usage: Some(usage),
                streamed: false,
                loss: Default::default(),
            });
        }
        let mut seq = 0u64;
        let mut ev = |kind: &str, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(seq);
            seq += 1;
            sse_event(kind, &data)
        };
        let mut events = vec![ev(
            "response.created",
            json!({"response": response_obj("in_progress", "")}),
        )];
        for piece in split_chunks(&text, self.settings.chunks) {
            events.push(ev(
                "response.output_text.delta",
                json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": piece}),
            ));
        }
        events.push(ev(
            "response.output_text.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text}),
        ));
        events.push(ev(
            &format!("response.{done_status}"),
            json!({"response": response_obj(done_status, &text)}),
        ));
        self.stream(call.endpoint, events, on_end, false)
    }
}

/// A deterministic unit vector for a text.
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dims);
    let mut counter = 0u32;
    while out.len() < dims {
        let digest = Sha256::new()
            .chain_update(text.as_bytes())
            .chain_update(counter.to_le_bytes())
            .finalize();
        for pair in digest.chunks(2) {
            if out.len() == dims {
                break;
            }
            let raw = u16::from_le_bytes([
                pair.first().copied().unwrap_or(0),
                pair.get(1).copied().unwrap_or(0),
            ]);
            out.push(f32::from(raw) / 32767.5 - 1.0);
        }
        counter += 1;
    }
    let norm = out
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    out.iter_mut().for_each(|x| *x /= norm);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counting_and_truncation() {
        assert_eq!(count_tokens("hello world"), 4);
        assert_eq!(count_tokens("a bb ccc dddd"), 4);
        assert_eq!(count_tokens(""), 0);
        assert_eq!(
            truncate("one two three", Some(2)),
            ("one two ".to_owned(), true)
        );
        assert_eq!(truncate("one", Some(5)), ("one".to_owned(), false));
    }

    #[test]
    fn chunking() {
        assert_eq!(split_chunks("a b c", 0), vec!["a ", "b ", "c"]);
        let parts = split_chunks("abcdefghij", 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.concat(), "abcdefghij");
        assert_eq!(split_chunks("hi", 5).len(), 5);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("x", 32);
        assert_eq!(a, embed("x", 32));
        assert_ne!(a, embed("y", 32));
        let norm: f32 = a.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
