//! Anthropic Messages: requests, responses and the `message_start` ... `message_stop` stream.
//!
//! Anthropic reports `input_tokens` without the cached part; the intermediate usage counts the
//! whole prompt (`input + cache_read + cache_creation`), as OpenAI does.

use serde_json::{json, Map, Value};
use tollgate_core::error::ApiError;

use super::sse::{write_event, SseEvent, SseHandler};
use super::{
    arguments_value, array, boolean, index, is_empty_value, number, object, path, string, uint,
    Block, BlockKind, Delta, Event, Image, Loss, Message, OutputFormat, Reasoning, Request,
    Response, Role, StartKind, Stop, StreamEncoder, Tool, ToolChoice,
};
use crate::provider::Usage;

/// `max_tokens` is required by Anthropic; used when the client set none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---- requests ----

pub fn decode_request(v: &Value, loss: &mut Loss) -> Result<Request, ApiError> {
    let obj = object(v, "")?;
    let mut req = Request::default();
    for (k, val) in obj {
        let k = k.as_str();
        if val.is_null() {
            continue;
        }
        match k {
            "model" => req.model = string(val, k)?,
            "messages" => {
                for (i, m) in array(val, k)?.iter().enumerate() {
                    req.messages.push(decode_message(m, &index(k, i), loss)?);
                }
            }
            "system" => req.system = decode_content(val, "system", loss)?,
            "max_tokens" => {
                req.max_tokens = Some(uint(val, k)?);
                req.at.max_tokens = Some("max_tokens");
            }
            "stop_sequences" => {
                req.at.stop = Some("stop_sequences");
                for (i, s) in array(val, k)?.iter().enumerate() {
                    req.stop.push(string(s, &index(k, i))?);
                }
            }
            "stream" => req.stream = boolean(val, k)?,
            "temperature" => req.temperature = Some(number(val, k)?),
            "top_p" => req.top_p = Some(number(val, k)?),
            "top_k" => req.top_k = Some(uint(val, k)?),
            "tools" => {
                for (i, t) in array(val, k)?.iter().enumerate() {
                    if let Some(tool) = decode_tool(t, &index(k, i), loss)? {
                        req.tools.push(tool);
                    }
                }
            }
            "tool_choice" => {
                req.at.tool_choice = Some("tool_choice");
                let o = object(val, k)?;
                req.tool_choice = Some(match o.get("type").and_then(Value::as_str) {
                    Some("auto") => ToolChoice::Auto,
                    Some("any") => ToolChoice::Any,
                    Some("none") => ToolChoice::None,
                    Some("tool") => ToolChoice::Tool(string(
                        o.get("name").unwrap_or(&Value::Null),
                        "tool_choice.name",
                    )?),
                    _ => {
                        return Err(ApiError::invalid(
                            "`tool_choice.type` must be auto, any, none or tool",
                        )
                        .param("tool_choice.type"))
                    }
                });
                if let Some(d) = o.get("disable_parallel_tool_use").and_then(Value::as_bool) {
                    req.at.parallel_tool_calls = Some("tool_choice.disable_parallel_tool_use");
                    req.parallel_tool_calls = Some(!d);
                }
            }
            "thinking" => {
                let o = object(val, k)?;
                req.at.reasoning = Some("thinking");
                let enabled = matches!(
                    o.get("type").and_then(Value::as_str),
                    Some("enabled" | "adaptive")
                );
                req.reasoning = Some(Reasoning {
                    enabled,
                    effort: None,
                    budget_tokens: o.get("budget_tokens").and_then(Value::as_u64),
                });
            }
            "metadata" => {
                for (mk, mv) in object(val, k)? {
                    match mk.as_str() {
                        "user_id" if mv.is_string() => {
                            req.at.user = Some("metadata.user_id");
                            req.user = mv.as_str().map(str::to_owned);
                        }
                        _ if is_empty_value(mv) => {}
                        other => loss.add(path(k, other)),
                    }
                }
            }
            "output_config" | "output_format" => {
                let o = object(val, k)?;
                let (format, fat) = if k == "output_format" {
                    (Some(val), k.to_owned())
                } else {
                    for (ok, ov) in o {
                        match ok.as_str() {
                            "format" => {}
                            "effort" if ov.is_string() => {
                                let r = req.reasoning.get_or_insert(Reasoning {
                                    enabled: true,
                                    effort: None,
                                    budget_tokens: None,
                                });
                                r.effort = ov.as_str().map(str::to_owned);
                            }
                            _ if is_empty_value(ov) => {}
                            other => loss.add(path(k, other)),
                        }
                    }
                    (o.get("format").filter(|f| !f.is_null()), path(k, "format"))
                };
                if let Some(f) = format {
                    let fo = object(f, &fat)?;
                    if fo.get("type").and_then(Value::as_str) == Some("json_schema") {
                        req.at.output = Some(if k == "output_format" {
                            "output_format"
                        } else {
                            "output_config.format"
                        });
                        req.output = Some(OutputFormat::JsonSchema {
                            name: None,
                            schema: fo.get("schema").cloned().unwrap_or_else(|| json!({})),
                            strict: None,
                        });
                    } else {
                        loss.add(fat);
                    }
                }
            }
            "service_tier" if val.as_str() == Some("auto") => {}
            _ if is_empty_value(val) => {}
            other => loss.add(other),
        }
    }
    Ok(req)
}

fn decode_message(v: &Value, at: &str, loss: &mut Loss) -> Result<Message, ApiError> {
    let obj = object(v, at)?;
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(
                ApiError::invalid(format!("`{at}.role` must be user or assistant"))
                    .param(path(at, "role")),
            )
        }
    };
    for (k, val) in obj {
        if !matches!(k.as_str(), "role" | "content") && !is_empty_value(val) {
            loss.add(path(at, k));
        }
    }
    let content = decode_content(
        obj.get("content").unwrap_or(&Value::Null),
        &path(at, "content"),
        loss,
    )?;
    Ok(Message {
        role,
        content,
        at: at.to_owned(),
    })
}

fn decode_content(v: &Value, at: &str, loss: &mut Loss) -> Result<Vec<Block>, ApiError> {
    match v {
        Value::String(s) => Ok(vec![Block::text(s.clone(), at)]),
        Value::Array(items) => {
            let mut out = Vec::new();
            for (j, b) in items.iter().enumerate() {
                if let Some(block) = decode_block(b, &index(at, j), loss)? {
                    out.push(block);
                }
            }
            Ok(out)
        }
        Value::Null => Ok(Vec::new()),
        _ => Err(
            ApiError::invalid(format!("`{at}` must be a string or an array of blocks")).param(at),
        ),
    }
}

fn decode_block(v: &Value, at: &str, loss: &mut Loss) -> Result<Option<Block>, ApiError> {
    let o = object(v, at)?;
    let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
    let text = |field: &str| -> Result<String, ApiError> {
        o.get(field)
            .map(|t| string(t, &path(at, field)))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let (block, known): (BlockKind, &[&str]) = match kind {
        "text" => (BlockKind::Text(text("text")?), &["text"]),
        "image" => {
            let sat = path(at, "source");
            let s = object(o.get("source").unwrap_or(&Value::Null), &sat)?;
            let image = match s.get("type").and_then(Value::as_str) {
                Some("base64") => Image::Base64 {
                    media_type: string(
                        s.get("media_type").unwrap_or(&Value::Null),
                        &path(&sat, "media_type"),
                    )?,
                    data: string(s.get("data").unwrap_or(&Value::Null), &path(&sat, "data"))?,
                },
                Some("url") => Image::Url(string(
                    s.get("url").unwrap_or(&Value::Null),
                    &path(&sat, "url"),
                )?),
                _ => {
                    loss.add(at.to_owned());
                    return Ok(None);
                }
            };
            (BlockKind::Image(image), &["source"])
        }
        "tool_use" => (
            BlockKind::ToolCall {
                id: text("id")?,
                name: text("name")?,
                arguments: o
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into()),
            },
            &["id", "name", "input"],
        ),
        "tool_result" => {
            let content = match o.get("content") {
                Some(c) => decode_content(c, &path(at, "content"), loss)?,
                None => Vec::new(),
            };
            (
                BlockKind::ToolResult {
                    id: text("tool_use_id")?,
                    content,
                    is_error: o.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                },
                &["tool_use_id", "content", "is_error"],
            )
        }
        "thinking" => (
            BlockKind::Thinking {
                text: text("thinking")?,
                signature: o
                    .get("signature")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
            &["thinking", "signature"],
        ),
        "redacted_thinking" => (
            BlockKind::RedactedThinking {
                data: text("data")?,
            },
            &["data"],
        ),
        _ => {
            loss.add(at.to_owned());
            return Ok(None);
        }
    };
    for (k, val) in o {
        if k != "type"
            && k != "cache_control"
            && !known.contains(&k.as_str())
            && !is_empty_value(val)
        {
            loss.add(path(at, k));
        }
    }
    let mut b = Block::new(block, at);
    b.cache = o.get("cache_control").filter(|c| !c.is_null()).cloned();
    Ok(Some(b))
}

fn decode_tool(v: &Value, at: &str, loss: &mut Loss) -> Result<Option<Tool>, ApiError> {
    let o = object(v, at)?;
    if o.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "custom")
    {
        // A server tool (web search, code execution, ...): only Anthropic runs it.
        loss.add(at.to_owned());
        return Ok(None);
    }
    for (k, val) in o {
        if !matches!(
            k.as_str(),
            "type" | "name" | "description" | "input_schema" | "cache_control" | "strict"
        ) && !is_empty_value(val)
        {
            loss.add(path(at, k));
        }
    }
    Ok(Some(Tool {
        name: string(o.get("name").unwrap_or(&Value::Null), &path(at, "name"))?,
        description: o
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        schema: o
            .get("input_schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"})),
        strict: o.get("strict").and_then(Value::as_bool),
        cache: o.get("cache_control").filter(|c| !c.is_null()).cloned(),
        at: at.to_owned(),
    }))
}

pub fn encode_request(req: &Request, model: &str, loss: &mut Loss) -> Value {
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let reasoning = req.reasoning.as_ref();
    let mut max_tokens = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if let Some(r) = reasoning.filter(|r| r.enabled) {
        // The thinking budget counts against max_tokens and must stay below it.
        let budget = r.budget().max(1024);
        if max_tokens <= budget {
            max_tokens += budget;
        }
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    } else if reasoning.is_some() {
        out.insert("thinking".into(), json!({"type": "disabled"}));
    }
    out.insert("max_tokens".into(), json!(max_tokens));
    if !req.system.is_empty() {
        out.insert("system".into(), content_json(&req.system, true, loss));
    }
    // Anthropic wants roles to alternate: consecutive messages of one role become one.
    let mut messages: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let blocks = match content_json(&m.content, false, loss) {
            Value::Array(b) => b,
            Value::String(t) => vec![json!({"type": "text", "text": t})],
            other => vec![other],
        };
        match messages.last_mut() {
            Some((role, existing)) if *role == m.role => existing.extend(blocks),
            _ => messages.push((m.role, blocks)),
        }
    }
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|(role, blocks)| {
            let role = if role == Role::User {
                "user"
            } else {
                "assistant"
            };
            // One plain text is sent as a string.
            let content = match blocks.as_slice() {
                [b] if b.get("type") == Some(&json!("text"))
                    && b.as_object().is_some_and(|o| o.len() == 2) =>
                {
                    b.get("text").cloned().unwrap_or_default()
                }
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();
    out.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({"name": t.name, "input_schema": t.schema});
                if let Some(d) = &t.description {
                    tool["description"] = json!(d);
                }
                if let Some(s) = t.strict {
                    tool["strict"] = json!(s);
                }
                if let Some(c) = &t.cache {
                    tool["cache_control"] = c.clone();
                }
                tool
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = req.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Any => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
    });
    if req.parallel_tool_calls == Some(false) && !req.tools.is_empty() {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c.get("type") != Some(&json!("none")) {
            c["disable_parallel_tool_use"] = json!(true);
        }
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    if let Some(t) = req.temperature {
        if t > 1.0 {
            // Anthropic's range is 0..1; OpenAI's is 0..2.
            loss.add("temperature");
            out.insert("temperature".into(), json!(1.0));
        } else {
            out.insert("temperature".into(), json!(t));
        }
    }
    if let Some(p) = req.top_p {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(k) = req.top_k {
        out.insert("top_k".into(), json!(k));
    }
    for (name, set) in [
        ("seed", req.seed.is_some()),
        ("presence_penalty", req.presence_penalty.is_some()),
        ("frequency_penalty", req.frequency_penalty.is_some()),
    ] {
        if set {
            loss.add(name);
        }
    }
    if !req.stop.is_empty() {
        out.insert("stop_sequences".into(), json!(req.stop));
    }
    match &req.output {
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            out.insert(
                "output_config".into(),
                json!({"format": {"type": "json_schema", "schema": schema}}),
            );
        }
        Some(OutputFormat::Json) => loss.add(req.at.output.unwrap_or("response_format")),
        None => {}
    }
    if let Some(u) = &req.user {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    if req.stream {
        out.insert("stream".into(), json!(true));
    }
    Value::Object(out)
}

/// Blocks in Anthropic's form. `text_only`: the system prompt, which takes text blocks only.
fn content_json(blocks: &[Block], text_only: bool, loss: &mut Loss) -> Value {
    if let [Block {
        kind: BlockKind::Text(t),
        cache: None,
        ..
    }] = blocks
    {
        return json!(t);
    }
    let mut out = Vec::new();
    for b in blocks {
        let mut v = match &b.kind {
            BlockKind::Text(t) => json!({"type": "text", "text": t}),
            _ if text_only => {
                loss.add(b.at.clone());
                continue;
            }
            BlockKind::Image(Image::Base64 { media_type, data }) => json!({
                "type": "image", "source": {"type": "base64", "media_type": media_type, "data": data},
            }),
            BlockKind::Image(Image::Url(url)) => {
                json!({"type": "image", "source": {"type": "url", "url": url}})
            }
            BlockKind::ToolCall {
                id,
                name,
                arguments,
            } => json!({
                "type": "tool_use", "id": id, "name": name,
                "input": arguments_value(arguments, &b.at, loss),
            }),
            BlockKind::ToolResult {
                id,
                content,
                is_error,
            } => {
                let mut r = json!({"type": "tool_result", "tool_use_id": id, "content": content_json(content, false, loss)});
                if *is_error {
                    r["is_error"] = json!(true);
                }
                r
            }
            BlockKind::Thinking {
                text,
                signature: Some(sig),
            } => {
                json!({"type": "thinking", "thinking": text, "signature": sig})
            }
            // Anthropic refuses thinking without its signature.
            BlockKind::Thinking {
                signature: None, ..
            } => {
                loss.add(b.at.clone());
                continue;
            }
            BlockKind::RedactedThinking { data } => {
                json!({"type": "redacted_thinking", "data": data})
            }
        };
        if let Some(c) = &b.cache {
            v["cache_control"] = c.clone();
        }
        out.push(v);
    }
    Value::Array(out)
}

// ---- responses ----

fn stop_from(reason: Option<&str>, sequence: Option<&str>) -> Stop {
    match reason {
        Some("end_turn") | None => Stop::End,
        Some("max_tokens") => Stop::MaxTokens,
        Some("stop_sequence") => Stop::StopSequence(sequence.map(str::to_owned)),
        Some("tool_use") => Stop::ToolUse,
        Some("refusal") => Stop::ContentFilter,
        Some(other) => Stop::Other(other.to_owned()),
    }
}

fn stop_reason(stop: &Stop) -> (&str, Option<&str>) {
    match stop {
        Stop::End => ("end_turn", None),
        Stop::MaxTokens => ("max_tokens", None),
        Stop::StopSequence(s) => ("stop_sequence", s.as_deref()),
        Stop::ToolUse => ("tool_use", None),
        Stop::ContentFilter => ("refusal", None),
        Stop::Other(o) => (o.as_str(), None),
    }
}

pub fn usage_from(u: &Value) -> Usage {
    super::uncached_usage(
        u,
        [
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ],
    )
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt.saturating_sub(u.cached + u.cache_write),
        "output_tokens": u.completion,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached,
    })
}

pub fn decode_response(v: &Value, loss: &mut Loss) -> Result<Response, String> {
    if v.get("type").and_then(Value::as_str) != Some("message") {
        return Err("not an Anthropic message".into());
    }
    let mut content = Vec::new();
    if let Some(items) = v.get("content").and_then(Value::as_array) {
        for (i, b) in items.iter().enumerate() {
            if let Some(block) =
                decode_block(b, &index("content", i), loss).map_err(|e| e.message)?
            {
                content.push(block);
            }
        }
    }
    Ok(Response {
        id: super::str_field(v, "id"),
        model: super::str_field(v, "model"),
        content,
        stop: stop_from(
            v.get("stop_reason").and_then(Value::as_str),
            v.get("stop_sequence").and_then(Value::as_str),
        ),
        usage: v.get("usage").map(usage_from).unwrap_or_default(),
        created: None,
    })
}

pub fn encode_response(res: &Response, loss: &mut Loss) -> Value {
    let content = match content_json(&res.content, false, loss) {
        Value::String(t) => json!([{"type": "text", "text": t}]),
        other => other,
    };
    let (reason, sequence) = stop_reason(&res.stop);
    json!({
        "id": message_id(&res.id),
        "type": "message",
        "role": "assistant",
        "model": res.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_json(&res.usage),
    })
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else if id.is_empty() {
        super::new_id("msg_")
    } else {
        format!("msg_{id}")
    }
}

// ---- streams ----

/// Reads Anthropic's event stream into events.
#[derive(Default)]
pub struct Decoder {
    finished: bool,
    done: bool,
}

impl Decoder {
    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return;
        };
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                out.push(Event::Start {
                    id: s("/message/id"),
                    model: s("/message/model"),
                });
                if let Some(u) = v.pointer("/message/usage") {
                    out.push(Event::Usage(usage_from(u)));
                }
            }
            "content_block_start" => {
                let b = v.get("content_block").cloned().unwrap_or_default();
                let bs = |k: &str| {
                    b.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let kind = match b.get("type").and_then(Value::as_str) {
                    Some("text") => StartKind::Text,
                    Some("thinking") => StartKind::Thinking,
                    Some("redacted_thinking") => StartKind::RedactedThinking { data: bs("data") },
                    Some("tool_use") => StartKind::ToolCall {
                        id: bs("id"),
                        name: bs("name"),
                    },
                    _ => return,
                };
                out.push(Event::BlockStart { index: idx, kind });
                let initial = bs("text");
                if !initial.is_empty() {
                    out.push(Event::Delta {
                        index: idx,
                        delta: Delta::Text(initial),
                    });
                }
            }
            "content_block_delta" => {
                let delta = match v.pointer("/delta/type").and_then(Value::as_str) {
                    Some("text_delta") => Delta::Text(s("/delta/text")),
                    Some("thinking_delta") => Delta::Thinking(s("/delta/thinking")),
                    Some("signature_delta") => Delta::Signature(s("/delta/signature")),
                    Some("input_json_delta") => Delta::ToolArguments(s("/delta/partial_json")),
                    _ => return,
                };
                if let Delta::Text(t) | Delta::Thinking(t) | Delta::ToolArguments(t) = &delta {
                    if t.is_empty() {
                        return;
                    }
                }
                out.push(Event::Delta { index: idx, delta });
            }
            "content_block_stop" => out.push(Event::BlockStop { index: idx }),
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    out.push(Event::Usage(usage_from(u)));
                }
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.finished = true;
                    out.push(Event::Finish(stop_from(
                        Some(r),
                        v.pointer("/delta/stop_sequence").and_then(Value::as_str),
                    )));
                }
            }
            "message_stop" => {
                self.done = true;
                out.push(Event::Done);
            }
            "error" => out.push(Event::Error {
                kind: s("/error/type"),
                message: s("/error/message"),
            }),
            _ => {}
        }
    }
}

impl SseHandler for Decoder {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        self.on_event(ev, out);
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if !self.done && self.finished {
            self.done = true;
            out.push(Event::Done);
        }
    }
}

/// Writes events as Anthropic's event stream.
#[derive(Default)]
pub struct Encoder {
    id: String,
    model: String,
    /// `message_start` waits for the first content, so usage reported at the start is in it.
    started: bool,
    pending_start: bool,
    usage: Usage,
    stop: Option<Stop>,
    /// Block index in, index out (the client's blocks are numbered in order).
    open: Option<usize>,
    next: usize,
    stopped: bool,
    loss: Loss,
}

impl Encoder {
    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started || !self.pending_start {
            return;
        }
        self.started = true;
        let msg = json!({
            "type": "message_start",
            "message": {
                "id": message_id(&self.id), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": usage_json(&self.usage),
            },
        });
        write_event(out, Some("message_start"), &msg.to_string());
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some(i) = self.open.take() {
            let ev = json!({"type": "content_block_stop", "index": i});
            write_event(out, Some("content_block_stop"), &ev.to_string());
        }
    }
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, ev: &Event, out: &mut Vec<u8>) {
        if self.stopped {
            return;
        }
        match ev {
            Event::Start { id, model } => {
                self.id = id.clone();
                self.model = model.clone();
                self.pending_start = true;
            }
            Event::Usage(u) => super::merge_usage(&mut self.usage, *u),
            Event::BlockStart { kind, .. } => {
                self.ensure_started(out);
                self.close(out);
                let i = self.next;
                self.next += 1;
                self.open = Some(i);
                let block = match kind {
                    StartKind::Text => json!({"type": "text", "text": ""}),
                    StartKind::Thinking => {
                        json!({"type": "thinking", "thinking": "", "signature": ""})
                    }
                    StartKind::RedactedThinking { data } => {
                        json!({"type": "redacted_thinking", "data": data})
                    }
                    StartKind::ToolCall { id, name } => {
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}})
                    }
                };
                let ev = json!({"type": "content_block_start", "index": i, "content_block": block});
                write_event(out, Some("content_block_start"), &ev.to_string());
            }
            Event::Delta { delta, .. } => {
                self.ensure_started(out);
                let Some(i) = self.open else {
                    return;
                };
                let d = match delta {
                    Delta::Text(t) => json!({"type": "text_delta", "text": t}),
                    Delta::Thinking(t) => json!({"type": "thinking_delta", "thinking": t}),
                    Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
                    Delta::ToolArguments(a) => {
                        json!({"type": "input_json_delta", "partial_json": a})
                    }
                };
                let ev = json!({"type": "content_block_delta", "index": i, "delta": d});
                write_event(out, Some("content_block_delta"), &ev.to_string());
            }
            Event::BlockStop { .. } => self.close(out),
            Event::Finish(stop) => self.stop = Some(stop.clone()),
            Event::Error { kind, message } => {
                let ev = json!({"type": "error", "error": {"type": anthropic_error_type(kind), "message": message}});
                write_event(out, Some("error"), &ev.to_string());
            }
            Event::Done => {
                self.ensure_started(out);
                self.close(out);
                let (reason, sequence) = stop_reason(self.stop.as_ref().unwrap_or(&Stop::End));
                let ev = json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage_json(&self.usage),
                });
                write_event(out, Some("message_delta"), &ev.to_string());
                write_event(out, Some("message_stop"), r#"{"type":"message_stop"}"#);
                self.stopped = true;
            }
        }
    }

    fn loss(&self) -> &Loss {
        &self.loss
    }
}

/// Anthropic's error `type` for an error kind from another dialect.
pub fn anthropic_error_type(kind: &str) -> &str {
    match kind {
        "invalid_request_error"
        | "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "request_too_large"
        | "rate_limit_error"
        | "api_error"
        | "overloaded_error" => kind,
        "server_error" | "upstream_error" => "api_error",
        _ => "api_error",
    }
}
