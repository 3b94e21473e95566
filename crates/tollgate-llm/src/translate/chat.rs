//! OpenAI Chat Completions: requests, responses and `chat.completion.chunk` streams.
//!
//! Thinking travels in two fields OpenAI-compatible servers use: `reasoning_content` (the text)
//! and `thinking_blocks` (each block with its signature, so a client can send it back and the
//! signature round-trips). Prompt-cache breakpoints are read from `cache_control` on content
//! parts, messages and tools, the convention OpenAI-compatible gateways accept for Anthropic
//! models; OpenAI itself has no such field, so encoding one for an OpenAI upstream reports it.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use tollgate_core::error::ApiError;

use super::sse::{write_event, SseEvent, SseHandler};
use super::Blocks;
use super::{
    array, boolean, index, is_empty_value, number, object, path, string, uint, Block, BlockKind,
    Delta, Event, Image, Loss, Message, OutputFormat, Reasoning, Request, Response, Role,
    StartKind, Stop, StreamEncoder, Tool, ToolChoice,
};
use crate::provider::Usage;

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
            "messages" => decode_messages(array(val, k)?, &mut req, loss)?,
            "stream" => req.stream = boolean(val, k)?,
            "stream_options" => {
                for (ok, ov) in object(val, k)? {
                    match ok.as_str() {
                        "include_usage" => {
                            req.include_usage = boolean(ov, "stream_options.include_usage")?
                        }
                        other if !is_empty_value(ov) => loss.add(path(k, other)),
                        _ => {}
                    }
                }
            }
            "max_tokens" => {
                req.max_tokens = Some(uint(val, k)?);
                req.at.max_tokens = Some("max_tokens");
            }
            "max_completion_tokens" => {
                req.max_tokens = Some(uint(val, k)?);
                req.at.max_tokens = Some("max_completion_tokens");
            }
            "temperature" => req.temperature = Some(number(val, k)?),
            "top_p" => req.top_p = Some(number(val, k)?),
            "seed" => {
                req.seed =
                    Some(val.as_i64().ok_or_else(|| {
                        ApiError::invalid("`seed` must be an integer").param("seed")
                    })?)
            }
            "presence_penalty" => req.presence_penalty = Some(number(val, k)?),
            "frequency_penalty" => req.frequency_penalty = Some(number(val, k)?),
            "stop" => {
                req.at.stop = Some("stop");
                match val {
                    Value::String(s) => req.stop.push(s.clone()),
                    Value::Array(items) => {
                        for (i, s) in items.iter().enumerate() {
                            req.stop.push(string(s, &index(k, i))?);
                        }
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "`stop` must be a string or an array of strings",
                        )
                        .param("stop"))
                    }
                }
            }
            "tools" => {
                for (i, t) in array(val, k)?.iter().enumerate() {
                    if let Some(tool) = decode_tool(t, &index(k, i), loss)? {
                        req.tools.push(tool);
                    }
                }
            }
            "tool_choice" => {
                req.at.tool_choice = Some("tool_choice");
                req.tool_choice = decode_tool_choice(val, loss)?;
            }
            "parallel_tool_calls" => {
                req.at.parallel_tool_calls = Some("parallel_tool_calls");
                req.parallel_tool_calls = Some(boolean(val, k)?);
            }
            "response_format" => {
                req.at.output = Some("response_format");
                req.output = decode_response_format(val, loss)?;
            }
            "reasoning_effort" => {
                let effort = string(val, k)?;
                req.at.reasoning = Some("reasoning_effort");
                req.reasoning = Some(Reasoning {
                    enabled: effort != "none",
                    effort: Some(effort),
                    budget_tokens: None,
                });
            }
            "user" => {
                req.at.user = Some("user");
                req.user = Some(string(val, k)?);
            }
            "n" if val.as_u64() == Some(1) => {}
            _ if is_empty_value(val) => {}
            other => loss.add(other),
        }
    }
    Ok(req)
}

fn decode_messages(items: &[Value], req: &mut Request, loss: &mut Loss) -> Result<(), ApiError> {
    let mut conversation_started = false;
    for (i, m) in items.iter().enumerate() {
        let at = index("messages", i);
        let obj = object(m, &at)?;
        let role = obj
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(format!("`{at}.role` is required")).param(&at))?;
        let message_cache = obj.get("cache_control").filter(|v| !v.is_null()).cloned();
        for (k, v) in obj {
            let known = match role {
                "system" | "developer" | "user" => {
                    matches!(k.as_str(), "role" | "content" | "cache_control")
                }
                "assistant" => matches!(
                    k.as_str(),
                    "role"
                        | "content"
                        | "cache_control"
                        | "tool_calls"
                        | "reasoning_content"
                        | "thinking_blocks"
                        | "refusal"
                ),
                "tool" => matches!(
                    k.as_str(),
                    "role" | "content" | "cache_control" | "tool_call_id"
                ),
                _ => true,
            };
            if !known && !is_empty_value(v) {
                loss.add(path(&at, k));
            }
        }
        let mut content = match role {
            "system" | "developer" => {
                let blocks = decode_content(obj.get("content"), &path(&at, "content"), loss)?;
                if conversation_started {
                    // Moved to the top-level system prompt: its place in the conversation is lost.
                    loss.add(path(&at, "role"));
                }
                let mut blocks = blocks;
                apply_cache(&mut blocks, message_cache);
                req.system.extend(blocks);
                continue;
            }
            "user" => decode_content(obj.get("content"), &path(&at, "content"), loss)?,
            "assistant" => decode_assistant(obj, &at, loss)?,
            "tool" => {
                let id = obj
                    .get("tool_call_id")
                    .map(|v| string(v, &path(&at, "tool_call_id")))
                    .transpose()?
                    .unwrap_or_default();
                let result = decode_content(obj.get("content"), &path(&at, "content"), loss)?;
                vec![Block::new(
                    BlockKind::ToolResult {
                        id,
                        content: result,
                        is_error: false,
                    },
                    at.clone(),
                )]
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "`{at}.role` must be system, developer, user, assistant or tool, got {other:?}"
                ))
                .param(&at))
            }
        };
        conversation_started = true;
        apply_cache(&mut content, message_cache);
        let role = if role == "assistant" {
            Role::Assistant
        } else {
            Role::User
        };
        req.messages.push(Message { role, content, at });
    }
    Ok(())
}

/// A message-level cache breakpoint applies to the message's last block.
fn apply_cache(blocks: &mut [Block], cache: Option<Value>) {
    if let (Some(c), Some(last)) = (cache, blocks.last_mut()) {
        last.cache.get_or_insert(c);
    }
}

fn decode_content(v: Option<&Value>, at: &str, loss: &mut Loss) -> Result<Vec<Block>, ApiError> {
    let mut out = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.push(Block::text(s.clone(), at)),
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                let pat = index(at, j);
                let obj = object(p, &pat)?;
                let kind = obj.get("type").and_then(Value::as_str).unwrap_or("text");
                let mut block = match kind {
                    "text" | "input_text" | "output_text" | "refusal" => {
                        let field = if kind == "refusal" { "refusal" } else { "text" };
                        let text = obj
                            .get(field)
                            .map(|t| string(t, &path(&pat, field)))
                            .transpose()?
                            .unwrap_or_default();
                        for (k, v) in obj {
                            if !matches!(k.as_str(), "type" | "text" | "refusal" | "cache_control")
                                && !is_empty_value(v)
                            {
                                loss.add(path(&pat, k));
                            }
                        }
                        Block::text(text, pat.clone())
                    }
                    "image_url" => {
                        let image = obj.get("image_url").ok_or_else(|| {
                            ApiError::invalid(format!("`{pat}.image_url` is required")).param(&pat)
                        })?;
                        let url = match image {
                            Value::String(s) => s.clone(),
                            _ => {
                                let io = object(image, &path(&pat, "image_url"))?;
                                if io
                                    .get("detail")
                                    .and_then(Value::as_str)
                                    .is_some_and(|d| d != "auto")
                                {
                                    loss.add(path(&pat, "image_url.detail"));
                                }
                                string(
                                    io.get("url").unwrap_or(&Value::Null),
                                    &path(&pat, "image_url.url"),
                                )?
                            }
                        };
                        Block::new(BlockKind::Image(Image::from_url(&url)), pat.clone())
                    }
                    _ => {
                        loss.add(pat);
                        continue;
                    }
                };
                block.cache = obj.get("cache_control").filter(|v| !v.is_null()).cloned();
                out.push(block);
            }
        }
        Some(_) => {
            return Err(
                ApiError::invalid(format!("`{at}` must be a string or an array of parts"))
                    .param(at),
            )
        }
    }
    Ok(out)
}

fn decode_assistant(
    obj: &Map<String, Value>,
    at: &str,
    loss: &mut Loss,
) -> Result<Vec<Block>, ApiError> {
    let mut out = Vec::new();
    match obj.get("thinking_blocks").filter(|v| !v.is_null()) {
        Some(blocks) => {
            let bat = path(at, "thinking_blocks");
            for (j, b) in array(blocks, &bat)?.iter().enumerate() {
                let pat = index(&bat, j);
                let o = object(b, &pat)?;
                let kind = match o.get("type").and_then(Value::as_str) {
                    Some("redacted_thinking") => BlockKind::RedactedThinking {
                        data: super::str_field(o, "data"),
                    },
                    _ => BlockKind::Thinking {
                        text: super::str_field(o, "thinking"),
                        signature: o
                            .get("signature")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    },
                };
                out.push(Block::new(kind, pat));
            }
        }
        None => {
            if let Some(text) = obj.get("reasoning_content").and_then(Value::as_str) {
                if !text.is_empty() {
                    out.push(Block::new(
                        BlockKind::Thinking {
                            text: text.to_owned(),
                            signature: None,
                        },
                        path(at, "reasoning_content"),
                    ));
                }
            }
        }
    }
    out.extend(decode_content(
        obj.get("content"),
        &path(at, "content"),
        loss,
    )?);
    if let Some(r) = obj.get("refusal").and_then(Value::as_str) {
        out.push(Block::text(r, path(at, "refusal")));
    }
    if let Some(calls) = obj.get("tool_calls").filter(|v| !v.is_null()) {
        let cat = path(at, "tool_calls");
        for (j, c) in array(calls, &cat)?.iter().enumerate() {
            let pat = index(&cat, j);
            let o = object(c, &pat)?;
            let f = object(
                o.get("function").unwrap_or(&Value::Null),
                &path(&pat, "function"),
            )?;
            out.push(Block::new(
                BlockKind::ToolCall {
                    id: super::str_field(o, "id"),
                    name: string(
                        f.get("name").unwrap_or(&Value::Null),
                        &path(&pat, "function.name"),
                    )?,
                    arguments: f
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_owned(),
                },
                pat,
            ));
        }
    }
    Ok(out)
}

fn decode_tool(v: &Value, at: &str, loss: &mut Loss) -> Result<Option<Tool>, ApiError> {
    let obj = object(v, at)?;
    if obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function")
        != "function"
    {
        loss.add(at.to_owned());
        return Ok(None);
    }
    let fat = path(at, "function");
    let f = object(obj.get("function").unwrap_or(&Value::Null), &fat)?;
    for (k, val) in f {
        if !matches!(k.as_str(), "name" | "description" | "parameters" | "strict")
            && !is_empty_value(val)
        {
            loss.add(path(&fat, k));
        }
    }
    Ok(Some(Tool {
        name: string(f.get("name").unwrap_or(&Value::Null), &path(&fat, "name"))?,
        description: f
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        schema: f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        strict: f.get("strict").and_then(Value::as_bool),
        cache: obj.get("cache_control").filter(|v| !v.is_null()).cloned(),
        at: at.to_owned(),
    }))
}

fn decode_tool_choice(v: &Value, loss: &mut Loss) -> Result<Option<ToolChoice>, ApiError> {
    Ok(Some(match v {
        Value::String(s) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Any,
            other => {
                return Err(ApiError::invalid(format!(
                    "`tool_choice` must be auto, none, required or a function, got {other:?}"
                ))
                .param("tool_choice"))
            }
        },
        Value::Object(o) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => ToolChoice::Tool(name.to_owned()),
            None => {
                loss.add("tool_choice");
                return Ok(None);
            }
        },
        _ => {
            return Err(
                ApiError::invalid("`tool_choice` must be a string or an object")
                    .param("tool_choice"),
            )
        }
    }))
}

fn decode_response_format(v: &Value, loss: &mut Loss) -> Result<Option<OutputFormat>, ApiError> {
    let o = object(v, "response_format")?;
    Ok(match o.get("type").and_then(Value::as_str) {
        Some("text") | None => None,
        Some("json_object") => Some(OutputFormat::Json),
        Some("json_schema") => {
            let js = object(
                o.get("json_schema").unwrap_or(&Value::Null),
                "response_format.json_schema",
            )?;
            if js.get("description").is_some_and(|d| !is_empty_value(d)) {
                loss.add("response_format.json_schema.description");
            }
            Some(OutputFormat::JsonSchema {
                name: js.get("name").and_then(Value::as_str).map(str::to_owned),
                schema: js.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: js.get("strict").and_then(Value::as_bool),
            })
        }
        Some(_) => {
            loss.add("response_format.type");
            None
        }
    })
}

pub fn encode_request(req: &Request, model: &str, loss: &mut Loss) -> Value {
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": text_content(&req.system, loss)}));
    }
    for m in &req.messages {
        match m.role {
            Role::User => {
                let mut rest = Vec::new();
                for b in &m.content {
                    match &b.kind {
                        BlockKind::ToolResult {
                            id,
                            content,
                            is_error,
                        } => {
                            if *is_error {
                                loss.add(path(&b.at, "is_error"));
                            }
                            cache_loss(b, loss);
                            messages.push(json!({
                                "role": "tool", "tool_call_id": id,
                                "content": text_content(content, loss),
                            }));
                        }
                        _ => rest.push(b.clone()),
                    }
                }
                if !rest.is_empty() {
                    messages.push(json!({"role": "user", "content": parts(&rest, loss)}));
                }
            }
            Role::Assistant => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for b in &m.content {
                    cache_loss(b, loss);
                    match &b.kind {
                        BlockKind::Text(t) => text.push_str(t),
                        BlockKind::ToolCall {
                            id,
                            name,
                            arguments,
                        } => calls.push(json!({
                            "id": id, "type": "function",
                            "function": {"name": name, "arguments": arguments},
                        })),
                        // OpenAI takes no thinking back; another vendor's signed thinking is
                        // meaningless to it.
                        BlockKind::Thinking { .. } | BlockKind::RedactedThinking { .. } => {
                            loss.add(b.at.clone())
                        }
                        BlockKind::Image(_) | BlockKind::ToolResult { .. } => {
                            loss.add(b.at.clone())
                        }
                    }
                }
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                messages.push(msg);
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                if t.cache.is_some() {
                    loss.add(path(&t.at, "cache_control"));
                }
                let mut f = json!({"name": t.name, "parameters": t.schema});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                if let Some(s) = t.strict {
                    f["strict"] = json!(s);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = &req.tool_choice {
        out.insert(
            "tool_choice".into(),
            match c {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Any => json!("required"),
                ToolChoice::None => json!("none"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            },
        );
    }
    if let Some(p) = req.parallel_tool_calls {
        if !req.tools.is_empty() {
            out.insert("parallel_tool_calls".into(), json!(p));
        }
    }
    if let Some(n) = req.max_tokens {
        out.insert("max_completion_tokens".into(), json!(n));
    }
    for (name, v) in [
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
    ] {
        if let Some(v) = v {
            out.insert(name.into(), json!(v));
        }
    }
    if let Some(s) = req.seed {
        out.insert("seed".into(), json!(s));
    }
    if req.top_k.is_some() {
        loss.add("top_k");
    }
    if !req.stop.is_empty() {
        out.insert("stop".into(), json!(req.stop));
    }
    if let Some(f) = &req.output {
        out.insert(
            "response_format".into(),
            match f {
                OutputFormat::Json => json!({"type": "json_object"}),
                OutputFormat::JsonSchema {
                    name,
                    schema,
                    strict,
                } => {
                    let mut js =
                        json!({"name": name.as_deref().unwrap_or("response"), "schema": schema});
                    if let Some(s) = strict {
                        js["strict"] = json!(s);
                    }
                    json!({"type": "json_schema", "json_schema": js})
                }
            },
        );
    }
    if let Some(r) = &req.reasoning {
        if r.enabled {
            out.insert("reasoning_effort".into(), json!(r.effort()));
        }
    }
    if let Some(u) = &req.user {
        out.insert("user".into(), json!(u));
    }
    if req.stream {
        out.insert("stream".into(), json!(true));
        // Always: the gateway prices the stream from it (and hides it if the client did not ask).
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(out)
}

fn cache_loss(b: &Block, loss: &mut Loss) {
    if b.cache.is_some() {
        loss.add(path(&b.at, "cache_control"));
    }
}

/// Text-only content (system prompts, tool results): a string.
fn text_content(blocks: &[Block], loss: &mut Loss) -> Value {
    let mut text = String::new();
    for b in blocks {
        cache_loss(b, loss);
        match &b.kind {
            BlockKind::Text(t) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            }
            _ => loss.add(b.at.clone()),
        }
    }
    json!(text)
}

/// User content: a string when it is one plain text, else parts.
fn parts(blocks: &[Block], loss: &mut Loss) -> Value {
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
        cache_loss(b, loss);
        match &b.kind {
            BlockKind::Text(t) => out.push(json!({"type": "text", "text": t})),
            BlockKind::Image(img) => {
                out.push(json!({"type": "image_url", "image_url": {"url": img.to_url()}}))
            }
            _ => loss.add(b.at.clone()),
        }
    }
    Value::Array(out)
}

// ---- responses ----

fn stop_from(reason: Option<&str>) -> Stop {
    match reason {
        Some("stop") | None => Stop::End,
        Some("length") => Stop::MaxTokens,
        Some("tool_calls" | "function_call") => Stop::ToolUse,
        Some("content_filter") => Stop::ContentFilter,
        Some(other) => Stop::Other(other.to_owned()),
    }
}

fn finish_reason(stop: &Stop) -> &str {
    match stop {
        Stop::End | Stop::StopSequence(_) => "stop",
        Stop::MaxTokens => "length",
        Stop::ToolUse => "tool_calls",
        Stop::ContentFilter => "content_filter",
        Stop::Other(o) if o == "pause_turn" => "stop",
        Stop::Other(o) => o,
    }
}

pub fn usage_from(u: &Value) -> Usage {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt: n(u.get("prompt_tokens")),
        completion: n(u.get("completion_tokens")),
        cached: n(u.pointer("/prompt_tokens_details/cached_tokens")),
        reasoning: n(u.pointer("/completion_tokens_details/reasoning_tokens")),
        cache_write: n(u.get("cache_creation_input_tokens")),
    }
}

fn usage_json(u: &Usage) -> Value {
    let mut v = json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    });
    if u.cache_write > 0 {
        v["cache_creation_input_tokens"] = json!(u.cache_write);
    }
    v
}

pub fn decode_response(v: &Value, loss: &mut Loss) -> Result<Response, String> {
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("no `choices` in the response")?;
    for i in 1..choices.len() {
        loss.add(index("choices", i));
    }
    let choice = choices.first().ok_or("`choices` is empty")?;
    if choice.get("logprobs").is_some_and(|l| !l.is_null()) {
        loss.add("choices[0].logprobs");
    }
    let msg = choice
        .get("message")
        .and_then(Value::as_object)
        .ok_or("no `message` in the first choice")?;
    let mut dummy = Loss::default();
    let content = decode_assistant(msg, "choices[0].message", &mut dummy).map_err(|e| e.message)?;
    Ok(Response {
        id: super::str_field(v, "id"),
        model: super::str_field(v, "model"),
        content,
        stop: stop_from(choice.get("finish_reason").and_then(Value::as_str)),
        usage: v.get("usage").map(usage_from).unwrap_or_default(),
        created: v.get("created").and_then(Value::as_u64),
    })
}

/// The assistant message of a response, with thinking in the extension fields.
fn message_json(content: &[Block]) -> Value {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    let mut calls = Vec::new();
    for b in content {
        match &b.kind {
            BlockKind::Text(t) => text.push_str(t),
            BlockKind::Thinking { text: t, signature } => {
                reasoning.push_str(t);
                let mut tb = json!({"type": "thinking", "thinking": t});
                if let Some(s) = signature {
                    tb["signature"] = json!(s);
                }
                thinking_blocks.push(tb);
            }
            BlockKind::RedactedThinking { data } => {
                thinking_blocks.push(json!({"type": "redacted_thinking", "data": data}))
            }
            BlockKind::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(json!({
                "id": id, "type": "function", "function": {"name": name, "arguments": arguments},
            })),
            BlockKind::Image(_) | BlockKind::ToolResult { .. } => {}
        }
    }
    let mut msg = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        msg["reasoning_content"] = json!(reasoning);
    }
    if !thinking_blocks.is_empty() {
        msg["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    msg
}

pub fn encode_response(res: &Response, loss: &mut Loss) -> Value {
    for b in &res.content {
        if matches!(b.kind, BlockKind::Image(_) | BlockKind::ToolResult { .. }) {
            loss.add(b.at.clone());
        }
    }
    json!({
        "id": chat_id(&res.id),
        "object": "chat.completion",
        "created": res.created.unwrap_or_else(|| tollgate_core::time::now().max(0) as u64),
        "model": res.model,
        "choices": [{
            "index": 0,
            "message": message_json(&res.content),
            "logprobs": null,
            "finish_reason": finish_reason(&res.stop),
        }],
        "usage": usage_json(&res.usage),
    })
}

fn chat_id(id: &str) -> String {
    if id.is_empty() {
        super::new_id("chatcmpl-")
    } else {
        id.to_owned()
    }
}

// ---- streams ----

/// Reads `chat.completion.chunk` SSE into events.
#[derive(Default)]
pub struct Decoder {
    started: bool,
    blocks: Blocks<Open>,
    /// Chat tool-call index to block index.
    tools: HashMap<u64, usize>,
    finished: bool,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool(u64),
}

impl Decoder {
    fn close(&mut self, out: &mut Vec<Event>) {
        self.blocks.close(out);
    }

    /// The block for `want`, opened (and the previous closed) if needed.
    fn block(&mut self, want: Open, start: StartKind, out: &mut Vec<Event>) -> usize {
        self.blocks.open(want, start, out)
    }

    fn chunk(&mut self, v: &Value, out: &mut Vec<Event>) {
        if let Some(err) = v.get("error") {
            out.push(super::upstream_error(err, "type"));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: super::str_field(v, "id"),
                model: super::str_field(v, "model"),
            });
        }
        let choice = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        if let Some(d) = choice.and_then(|c| c.get("delta")) {
            if let Some(blocks) = d.get("thinking_blocks").and_then(Value::as_array) {
                for b in blocks {
                    if b.get("type").and_then(Value::as_str) == Some("redacted_thinking") {
                        self.close(out);
                        let i = self.blocks.fresh(out);
                        let data = super::str_field(b, "data");
                        out.push(Event::BlockStart {
                            index: i,
                            kind: StartKind::RedactedThinking { data },
                        });
                        out.push(Event::BlockStop { index: i });
                    } else if let Some(s) = b.get("signature").and_then(Value::as_str) {
                        let i = self.block(Open::Thinking, StartKind::Thinking, out);
                        out.push(Event::Delta {
                            index: i,
                            delta: Delta::Signature(s.to_owned()),
                        });
                    }
                }
            }
            for field in ["reasoning_content", "reasoning"] {
                if let Some(t) = d
                    .get(field)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    let i = self.block(Open::Thinking, StartKind::Thinking, out);
                    out.push(Event::Delta {
                        index: i,
                        delta: Delta::Thinking(t.to_owned()),
                    });
                }
            }
            for field in ["content", "refusal"] {
                if let Some(t) = d
                    .get(field)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    let i = self.block(Open::Text, StartKind::Text, out);
                    out.push(Event::Delta {
                        index: i,
                        delta: Delta::Text(t.to_owned()),
                    });
                }
            }
            if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
                for c in calls {
                    let k = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let f = c.get("function");
                    let i = match self.tools.get(&k) {
                        Some(&i) => i,
                        None => {
                            let start = StartKind::ToolCall {
                                id: super::str_field(c, "id"),
                                name: f
                                    .and_then(|f| f.get("name"))
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_owned(),
                            };
                            let i = self.block(Open::Tool(k), start, out);
                            self.tools.insert(k, i);
                            i
                        }
                    };
                    if let Some(a) = f
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .filter(|a| !a.is_empty())
                    {
                        out.push(Event::Delta {
                            index: i,
                            delta: Delta::ToolArguments(a.to_owned()),
                        });
                    }
                }
            }
        }
        if let Some(reason) = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
        {
            self.close(out);
            self.finished = true;
            out.push(Event::Finish(stop_from(Some(reason))));
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.push(Event::Usage(usage_from(u)));
        }
    }
}

impl SseHandler for Decoder {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        self.on_event(ev, out);
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if !self.done && self.finished {
            // Some servers end without `[DONE]` after the finish reason: that is complete.
            self.done = true;
            out.push(Event::Done);
        }
    }
}

impl Decoder {
    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.close(out);
            self.done = true;
            out.push(Event::Done);
            return;
        }
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            self.chunk(&v, out);
        }
    }
}

/// Writes events as `chat.completion.chunk` SSE.
pub struct Encoder {
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    usage: Option<Usage>,
    /// Block index to chat tool-call index.
    tools: HashMap<usize, usize>,
    loss: Loss,
}

impl Encoder {
    pub fn new(include_usage: bool) -> Encoder {
        Encoder {
            include_usage,
            id: String::new(),
            model: String::new(),
            created: tollgate_core::time::now().max(0) as u64,
            usage: None,
            tools: HashMap::new(),
            loss: Loss::default(),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        write_event(out, None, &c.to_string());
    }
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, ev: &Event, out: &mut Vec<u8>) {
        match ev {
            Event::Start { id, model } => {
                self.id = chat_id(id);
                self.model = model.clone();
                self.chunk(json!({"role": "assistant", "content": ""}), None, out);
            }
            Event::BlockStart { index, kind } => match kind {
                StartKind::Text | StartKind::Thinking => {}
                StartKind::RedactedThinking { data } => self.chunk(
                    json!({"thinking_blocks": [{"type": "redacted_thinking", "data": data}]}),
                    None,
                    out,
                ),
                StartKind::ToolCall { id, name } => {
                    let k = self.tools.len();
                    self.tools.insert(*index, k);
                    self.chunk(
                        json!({"tool_calls": [{"index": k, "id": id, "type": "function",
                                               "function": {"name": name, "arguments": ""}}]}),
                        None,
                        out,
                    );
                }
            },
            Event::Delta { index, delta } => match delta {
                Delta::Text(t) => self.chunk(json!({"content": t}), None, out),
                Delta::Thinking(t) => self.chunk(json!({"reasoning_content": t}), None, out),
                Delta::Signature(s) => self.chunk(
                    json!({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": s}]}),
                    None,
                    out,
                ),
                Delta::ToolArguments(a) => {
                    let k = self.tools.get(index).copied().unwrap_or(0);
                    self.chunk(json!({"tool_calls": [{"index": k, "function": {"arguments": a}}]}), None, out);
                }
            },
            Event::BlockStop { .. } => {}
            Event::Usage(u) => super::merge_usage(self.usage.get_or_insert_with(Usage::default), *u),
            Event::Finish(stop) => self.chunk(json!({}), Some(finish_reason(stop)), out),
            Event::Error { kind, message } => {
                let body = json!({"error": {"message": message, "type": kind, "code": null, "param": null}});
                write_event(out, None, &body.to_string());
            }
            Event::Done => {
                if self.include_usage {
                    let c = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [],
                        "usage": usage_json(&self.usage.unwrap_or_default()),
                    });
                    write_event(out, None, &c.to_string());
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
        }
    }

    fn loss(&self) -> &Loss {
        &self.loss
    }
}
