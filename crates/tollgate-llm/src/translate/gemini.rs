//! Google Gemini (`generateContent`, `streamGenerateContent?alt=sse`), as a provider dialect:
//! requests out, responses and streamed chunks in.
//!
//! Gemini signs its reasoning with a `thoughtSignature` on the part that follows it. It travels
//! in the intermediate form as a thinking block's signature, prefixed `gemini:` so it is never
//! sent to another vendor (and another vendor's signature is never sent to Gemini): both are
//! reported instead.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::sse::{SseEvent, SseHandler};
use super::Blocks;
use super::{
    arguments_value, index, path, Block, BlockKind, Delta, Event, Image, Loss, OutputFormat,
    Request, Response, Role, StartKind, Stop, ToolChoice,
};
use crate::provider::Usage;

/// Marks a signature as Gemini's.
pub const SIGNATURE_PREFIX: &str = "gemini:";

// ---- requests ----

pub fn encode_request(req: &Request, loss: &mut Loss) -> Value {
    let mut out = Map::new();
    if !req.system.is_empty() {
        let parts: Vec<Value> = req
            .system
            .iter()
            .filter_map(|b| match &b.kind {
                BlockKind::Text(t) => {
                    cache_loss(b, loss);
                    Some(json!({"text": t}))
                }
                _ => {
                    loss.add(b.at.clone());
                    None
                }
            })
            .collect();
        out.insert("systemInstruction".into(), json!({"parts": parts}));
    }
    // Gemini answers a function by name: remember each call's name by its id.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for m in &req.messages {
        for b in &m.content {
            if let BlockKind::ToolCall { id, name, .. } = &b.kind {
                names.insert(id, name);
            }
        }
    }
    let mut contents: Vec<Value> = Vec::new();
    for m in &req.messages {
        let role = if m.role == Role::User {
            "user"
        } else {
            "model"
        };
        let mut parts = Vec::new();
        // A Gemini signature rides on the part after its thinking block.
        let mut signature: Option<String> = None;
        for b in &m.content {
            cache_loss(b, loss);
            let mut part = match &b.kind {
                BlockKind::Text(t) => json!({"text": t}),
                BlockKind::Image(Image::Base64 { media_type, data }) => {
                    json!({"inlineData": {"mimeType": media_type, "data": data}})
                }
                BlockKind::Image(Image::Url(url)) => {
                    json!({"fileData": {"mimeType": mime_for(url), "fileUri": url}})
                }
                BlockKind::ToolCall {
                    id,
                    name,
                    arguments,
                } => json!({"functionCall": {
                    "id": id, "name": name, "args": arguments_value(arguments, &b.at, loss),
                }}),
                BlockKind::ToolResult {
                    id,
                    content,
                    is_error,
                } => {
                    let text: String = content
                        .iter()
                        .filter_map(|c| match &c.kind {
                            BlockKind::Text(t) => Some(t.as_str()),
                            _ => {
                                loss.add(c.at.clone());
                                None
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    let key = if *is_error { "error" } else { "output" };
                    json!({"functionResponse": {
                        "id": id,
                        "name": names.get(id.as_str()).copied().unwrap_or_default(),
                        "response": {key: text},
                    }})
                }
                // Gemini's own thought summaries are not sent back; its signature is.
                BlockKind::Thinking { signature: sig, .. } => {
                    match sig
                        .as_deref()
                        .and_then(|s| s.strip_prefix(SIGNATURE_PREFIX))
                    {
                        Some(s) => signature = Some(s.to_owned()),
                        // Unsigned or another vendor's thinking means nothing to Gemini.
                        None => loss.add(b.at.clone()),
                    }
                    continue;
                }
                BlockKind::RedactedThinking { .. } => {
                    loss.add(b.at.clone());
                    continue;
                }
            };
            if let Some(s) = signature.take() {
                part["thoughtSignature"] = json!(s);
            }
            parts.push(part);
        }
        if let Some(s) = signature {
            // A signature with nothing after it: keep it on an empty text part.
            parts.push(json!({"text": "", "thoughtSignature": s}));
        }
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["parts"].as_array_mut() {
                    existing.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    out.insert("contents".into(), Value::Array(contents));
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                if t.cache.is_some() {
                    loss.add(path(&t.at, "cache_control"));
                }
                let mut d = json!({"name": t.name, "parametersJsonSchema": t.schema});
                if let Some(desc) = &t.description {
                    d["description"] = json!(desc);
                }
                d
            })
            .collect();
        out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(c) = &req.tool_choice {
        let config = match c {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::Any => json!({"mode": "ANY"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        out.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    if req.parallel_tool_calls == Some(false) {
        loss.add(req.at.parallel_tool_calls.unwrap_or("parallel_tool_calls"));
    }
    let mut gen = Map::new();
    if let Some(n) = req.max_tokens {
        gen.insert("maxOutputTokens".into(), json!(n));
    }
    for (name, v) in [
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("presencePenalty", req.presence_penalty),
        ("frequencyPenalty", req.frequency_penalty),
    ] {
        if let Some(v) = v {
            gen.insert(name.into(), json!(v));
        }
    }
    if let Some(k) = req.top_k {
        gen.insert("topK".into(), json!(k));
    }
    if let Some(s) = req.seed {
        gen.insert("seed".into(), json!(s));
    }
    if !req.stop.is_empty() {
        gen.insert("stopSequences".into(), json!(req.stop));
    }
    match &req.output {
        Some(OutputFormat::Json) => {
            gen.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            gen.insert("responseMimeType".into(), json!("application/json"));
            gen.insert("responseJsonSchema".into(), schema.clone());
        }
        None => {}
    }
    if let Some(r) = &req.reasoning {
        let budget = if r.enabled { r.budget() as i64 } else { 0 };
        gen.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": r.enabled}),
        );
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    if req.user.is_some() {
        loss.add(req.at.user.unwrap_or("user"));
    }
    Value::Object(out)
}

fn cache_loss(b: &Block, loss: &mut Loss) {
    if b.cache.is_some() {
        // Gemini caches through explicit `cachedContents` resources, not inline markers.
        loss.add(path(&b.at, "cache_control"));
    }
}

/// A media type for an image URL, from its extension.
fn mime_for(url: &str) -> &'static str {
    let lower = url.to_ascii_lowercase();
    let ext = lower.split(['?', '#']).next().unwrap_or_default();
    if ext.ends_with(".png") {
        "image/png"
    } else if ext.ends_with(".gif") {
        "image/gif"
    } else if ext.ends_with(".webp") {
        "image/webp"
    } else {
        "image/jpeg"
    }
}

// ---- responses ----

fn stop_from(reason: &str, called: bool) -> Stop {
    match reason {
        "STOP" if called => Stop::ToolUse,
        "STOP" | "FINISH_REASON_UNSPECIFIED" => Stop::End,
        "MAX_TOKENS" => Stop::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            Stop::ContentFilter
        }
        other => Stop::Other(other.to_ascii_lowercase()),
    }
}

pub fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Usage {
        prompt: n("promptTokenCount") + n("toolUsePromptTokenCount"),
        completion: n("candidatesTokenCount") + thoughts,
        cached: n("cachedContentTokenCount"),
        reasoning: thoughts,
        cache_write: 0,
    }
}

/// The blocks of one candidate's parts.
fn blocks_of(parts: &[Value], at: &str, loss: &mut Loss) -> Vec<Block> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let pat = index(at, i);
        if let Some(sig) = p.get("thoughtSignature").and_then(Value::as_str) {
            out.push(Block::new(
                BlockKind::Thinking {
                    text: String::new(),
                    signature: Some(format!("{SIGNATURE_PREFIX}{sig}")),
                },
                pat.clone(),
            ));
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                out.push(Block::new(
                    BlockKind::Thinking {
                        text: t.to_owned(),
                        signature: None,
                    },
                    pat,
                ));
            } else if !t.is_empty() {
                out.push(Block::text(t, pat));
            }
        } else if let Some(f) = p.get("functionCall") {
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            out.push(Block::new(
                BlockKind::ToolCall {
                    id: f
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("call_{i}_{name}")),
                    name: name.to_owned(),
                    arguments: f
                        .get("args")
                        .map(Value::to_string)
                        .unwrap_or_else(|| "{}".into()),
                },
                pat,
            ));
        } else if p.get("thoughtSignature").is_none() {
            loss.add(pat);
        }
    }
    out
}

pub fn decode_response(v: &Value, loss: &mut Loss) -> Result<Response, String> {
    let candidates = v.get("candidates").and_then(Value::as_array);
    let Some(c) = candidates.and_then(|c| c.first()) else {
        let blocked = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str);
        return match blocked {
            Some(reason) => Ok(Response {
                id: super::str_field(v, "responseId"),
                model: super::str_field(v, "modelVersion"),
                content: Vec::new(),
                stop: Stop::ContentFilter,
                usage: v.get("usageMetadata").map(usage_from).unwrap_or_default(),
                created: None,
            })
            .inspect(|_| tracing::debug!(reason, "gemini blocked the prompt")),
            None => Err("no `candidates` in the response".into()),
        };
    };
    for i in 1..candidates.map_or(0, Vec::len) {
        loss.add(index("candidates", i));
    }
    let parts = c
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let content = blocks_of(&parts, "candidates[0].content.parts", loss);
    let called = content
        .iter()
        .any(|b| matches!(b.kind, BlockKind::ToolCall { .. }));
    Ok(Response {
        id: super::str_field(v, "responseId"),
        model: super::str_field(v, "modelVersion"),
        content,
        stop: stop_from(
            c.get("finishReason")
                .and_then(Value::as_str)
                .unwrap_or("STOP"),
            called,
        ),
        usage: v.get("usageMetadata").map(usage_from).unwrap_or_default(),
        created: None,
    })
}

// ---- streams ----

/// Reads `streamGenerateContent?alt=sse` chunks into events.
#[derive(Default)]
pub struct Decoder {
    started: bool,
    blocks: Blocks<Open>,
    called: bool,
    finished: bool,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
}

impl Decoder {
    fn close(&mut self, out: &mut Vec<Event>) {
        self.blocks.close(out);
    }

    fn block(&mut self, want: Open, out: &mut Vec<Event>) -> usize {
        let kind = match want {
            Open::Text => StartKind::Text,
            Open::Thinking => StartKind::Thinking,
        };
        self.blocks.open(want, kind, out)
    }

    fn chunk(&mut self, v: &Value, out: &mut Vec<Event>) {
        if let Some(err) = v.get("error") {
            out.push(super::upstream_error(err, "status"));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: super::str_field(v, "responseId"),
                model: super::str_field(v, "modelVersion"),
            });
        }
        let c = v
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        let parts = c
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in &parts {
            if let Some(sig) = p.get("thoughtSignature").and_then(Value::as_str) {
                let i = self.block(Open::Thinking, out);
                out.push(Event::Delta {
                    index: i,
                    delta: Delta::Signature(format!("{SIGNATURE_PREFIX}{sig}")),
                });
                self.close(out);
            }
            if let Some(t) = p
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                let thought = p.get("thought").and_then(Value::as_bool) == Some(true);
                let i = self.block(if thought { Open::Thinking } else { Open::Text }, out);
                let delta = if thought {
                    Delta::Thinking(t.to_owned())
                } else {
                    Delta::Text(t.to_owned())
                };
                out.push(Event::Delta { index: i, delta });
            } else if let Some(f) = p.get("functionCall") {
                self.called = true;
                let i = self.blocks.fresh(out);
                let name = super::str_field(f, "name");
                let id = f
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("call_{i}_{name}"));
                out.push(Event::BlockStart {
                    index: i,
                    kind: StartKind::ToolCall { id, name },
                });
                let args = f
                    .get("args")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into());
                out.push(Event::Delta {
                    index: i,
                    delta: Delta::ToolArguments(args),
                });
                out.push(Event::BlockStop { index: i });
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            out.push(Event::Usage(usage_from(u)));
        }
        if let Some(reason) = c
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            self.close(out);
            self.finished = true;
            out.push(Event::Finish(stop_from(reason, self.called)));
        }
    }
}

impl SseHandler for Decoder {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
            self.chunk(&v, out);
        }
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        // Gemini's stream has no end marker: it is complete once a finish reason came.
        if !self.done && self.finished {
            Decoder::close(self, out);
            self.done = true;
            out.push(Event::Done);
        }
    }
}
