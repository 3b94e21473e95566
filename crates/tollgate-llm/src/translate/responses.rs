//! OpenAI Responses, as a client dialect: requests in, `response` objects and the
//! `response.*` event stream out. (Responses requests to OpenAI-type providers pass through.)
//!
//! Another vendor's thinking travels in `reasoning` items: the text as a `summary_text`, the
//! signature in `encrypted_content` (redacted thinking as `redacted:<data>`), so a client that
//! sends the items back (as stateless agents do, with `store: false`) returns it unchanged.
//! Stored conversations (`previous_response_id`) are not kept by the gateway and are reported.

use serde_json::{json, Value};
use tollgate_core::error::ApiError;

use super::sse::write_event;
use super::{
    array, boolean, index, is_empty_value, number, object, path, string, uint, Block, BlockKind,
    Delta, Event, Image, Loss, Message, OutputFormat, Reasoning, Request, Response, Role,
    StartKind, Stop, StreamEncoder, Tool, ToolChoice,
};
use crate::provider::Usage;

const REDACTED: &str = "redacted:";

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
            "input" => match val {
                Value::String(s) => req.messages.push(Message {
                    role: Role::User,
                    content: vec![Block::text(s.clone(), "input")],
                    at: "input".into(),
                }),
                _ => {
                    for (i, item) in array(val, k)?.iter().enumerate() {
                        decode_item(item, &index(k, i), &mut req, loss)?;
                    }
                }
            },
            "instructions" => req.system.insert(0, Block::text(string(val, k)?, k)),
            "max_output_tokens" => {
                req.max_tokens = Some(uint(val, k)?);
                req.at.max_tokens = Some("max_output_tokens");
            }
            "temperature" => req.temperature = Some(number(val, k)?),
            "top_p" => req.top_p = Some(number(val, k)?),
            "stream" => req.stream = boolean(val, k)?,
            "tools" => {
                for (i, t) in array(val, k)?.iter().enumerate() {
                    let at = index(k, i);
                    let o = object(t, &at)?;
                    if o.get("type").and_then(Value::as_str) != Some("function") {
                        // Hosted tools (web search, file search, ...) run only at OpenAI.
                        loss.add(at);
                        continue;
                    }
                    for (tk, tv) in o {
                        if !matches!(
                            tk.as_str(),
                            "type" | "name" | "description" | "parameters" | "strict"
                        ) && !is_empty_value(tv)
                        {
                            loss.add(path(&at, tk));
                        }
                    }
                    req.tools.push(Tool {
                        name: string(o.get("name").unwrap_or(&Value::Null), &path(&at, "name"))?,
                        description: o
                            .get("description")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        schema: o
                            .get("parameters")
                            .cloned()
                            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                        strict: o.get("strict").and_then(Value::as_bool),
                        cache: None,
                        at,
                    });
                }
            }
            "tool_choice" => {
                req.at.tool_choice = Some("tool_choice");
                req.tool_choice = match val {
                    Value::String(s) => match s.as_str() {
                        "auto" => Some(ToolChoice::Auto),
                        "none" => Some(ToolChoice::None),
                        "required" => Some(ToolChoice::Any),
                        _ => {
                            return Err(ApiError::invalid(
                                "`tool_choice` must be auto, none, required or a function",
                            )
                            .param("tool_choice"))
                        }
                    },
                    Value::Object(o)
                        if o.get("type").and_then(Value::as_str) == Some("function") =>
                    {
                        Some(ToolChoice::Tool(string(
                            o.get("name").unwrap_or(&Value::Null),
                            "tool_choice.name",
                        )?))
                    }
                    _ => {
                        loss.add(k);
                        None
                    }
                };
            }
            "parallel_tool_calls" => {
                req.at.parallel_tool_calls = Some("parallel_tool_calls");
                req.parallel_tool_calls = Some(boolean(val, k)?);
            }
            "reasoning" => {
                let o = object(val, k)?;
                req.at.reasoning = Some("reasoning");
                if let Some(e) = o.get("effort").and_then(Value::as_str) {
                    req.reasoning = Some(Reasoning {
                        enabled: e != "none",
                        effort: Some(e.to_owned()),
                        budget_tokens: None,
                    });
                }
                for (rk, rv) in o {
                    if rk != "effort" && rk != "summary" && !is_empty_value(rv) {
                        loss.add(path(k, rk));
                    }
                }
            }
            "text" => {
                let o = object(val, k)?;
                for (tk, tv) in o {
                    match tk.as_str() {
                        "format" => {
                            let f = object(tv, "text.format")?;
                            req.at.output = Some("text.format");
                            req.output = match f.get("type").and_then(Value::as_str) {
                                Some("text") | None => None,
                                Some("json_object") => Some(OutputFormat::Json),
                                Some("json_schema") => Some(OutputFormat::JsonSchema {
                                    name: f.get("name").and_then(Value::as_str).map(str::to_owned),
                                    schema: f.get("schema").cloned().unwrap_or_else(|| json!({})),
                                    strict: f.get("strict").and_then(Value::as_bool),
                                }),
                                Some(_) => {
                                    loss.add("text.format");
                                    None
                                }
                            };
                        }
                        "verbosity" if tv.as_str() == Some("medium") => {}
                        _ if is_empty_value(tv) => {}
                        other => loss.add(path(k, other)),
                    }
                }
            }
            "user" | "safety_identifier" => {
                req.at.user = Some(if k == "user" {
                    "user"
                } else {
                    "safety_identifier"
                });
                req.user = Some(string(val, k)?);
            }
            // The gateway keeps no conversation state: say so when asked to store or resume.
            "store" if val.as_bool() == Some(false) => {}
            "include" | "prompt_cache_key" | "service_tier" | "truncation" | "metadata"
                if is_empty_value(val)
                    || val.as_str().is_some_and(|s| s == "auto" || s == "disabled") => {}
            // `include` only asks for what the gateway always returns (encrypted reasoning).
            "include"
                if val.as_array().is_some_and(|a| {
                    a.iter()
                        .all(|i| i.as_str() == Some("reasoning.encrypted_content"))
                }) => {}
            _ if is_empty_value(val) => {}
            other => loss.add(other),
        }
    }
    Ok(req)
}

/// Appends an input item: a message, a function call or its output, or a reasoning item.
fn decode_item(v: &Value, at: &str, req: &mut Request, loss: &mut Loss) -> Result<(), ApiError> {
    let o = object(v, at)?;
    let kind = o.get("type").and_then(Value::as_str).unwrap_or("message");
    let push = |req: &mut Request, role: Role, block: Block| match req.messages.last_mut() {
        Some(m) if m.role == role => m.content.push(block),
        _ => req.messages.push(Message {
            role,
            content: vec![block],
            at: at.to_owned(),
        }),
    };
    match kind {
        "message" => {
            let role = o.get("role").and_then(Value::as_str).unwrap_or_default();
            let content = decode_content(
                o.get("content").unwrap_or(&Value::Null),
                &path(at, "content"),
                loss,
            )?;
            for (k, val) in o {
                if !matches!(k.as_str(), "type" | "role" | "content" | "id" | "status")
                    && !is_empty_value(val)
                {
                    loss.add(path(at, k));
                }
            }
            match role {
                "system" | "developer" => {
                    if !req.messages.is_empty() {
                        loss.add(path(at, "role"));
                    }
                    req.system.extend(content);
                }
                "user" => content.into_iter().for_each(|b| push(req, Role::User, b)),
                "assistant" => content
                    .into_iter()
                    .for_each(|b| push(req, Role::Assistant, b)),
                other => {
                    return Err(ApiError::invalid(format!(
                        "`{at}.role` must be user, assistant, system or developer, got {other:?}"
                    ))
                    .param(path(at, "role")))
                }
            }
        }
        "function_call" => push(
            req,
            Role::Assistant,
            Block::new(
                BlockKind::ToolCall {
                    id: string(
                        o.get("call_id").unwrap_or(&Value::Null),
                        &path(at, "call_id"),
                    )?,
                    name: string(o.get("name").unwrap_or(&Value::Null), &path(at, "name"))?,
                    arguments: o
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_owned(),
                },
                at,
            ),
        ),
        "function_call_output" => {
            let output = match o.get("output") {
                Some(Value::String(s)) => vec![Block::text(s.clone(), path(at, "output"))],
                Some(other) => decode_content(other, &path(at, "output"), loss)?,
                None => Vec::new(),
            };
            push(
                req,
                Role::User,
                Block::new(
                    BlockKind::ToolResult {
                        id: string(
                            o.get("call_id").unwrap_or(&Value::Null),
                            &path(at, "call_id"),
                        )?,
                        content: output,
                        is_error: false,
                    },
                    at,
                ),
            )
        }
        "reasoning" => {
            let text: String = o
                .get("summary")
                .and_then(Value::as_array)
                .map(|s| {
                    s.iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            let encrypted = o.get("encrypted_content").and_then(Value::as_str);
            let kind = match encrypted {
                Some(e) if e.starts_with(REDACTED) => BlockKind::RedactedThinking {
                    data: e.trim_start_matches(REDACTED).to_owned(),
                },
                _ => BlockKind::Thinking {
                    text,
                    signature: encrypted.map(str::to_owned),
                },
            };
            push(req, Role::Assistant, Block::new(kind, at));
        }
        _ => loss.add(at.to_owned()),
    }
    Ok(())
}

fn decode_content(v: &Value, at: &str, loss: &mut Loss) -> Result<Vec<Block>, ApiError> {
    let mut out = Vec::new();
    match v {
        Value::String(s) => out.push(Block::text(s.clone(), at)),
        Value::Array(parts) => {
            for (j, p) in parts.iter().enumerate() {
                let pat = index(at, j);
                let o = object(p, &pat)?;
                match o.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => out.push(Block::text(
                        o.get("text").and_then(Value::as_str).unwrap_or_default(),
                        pat.clone(),
                    )),
                    Some("refusal") => out.push(Block::text(
                        o.get("refusal").and_then(Value::as_str).unwrap_or_default(),
                        pat.clone(),
                    )),
                    Some("input_image") => match o.get("image_url").and_then(Value::as_str) {
                        Some(url) => {
                            if o.get("detail")
                                .and_then(Value::as_str)
                                .is_some_and(|d| d != "auto")
                            {
                                loss.add(path(&pat, "detail"));
                            }
                            out.push(Block::new(
                                BlockKind::Image(Image::from_url(url)),
                                pat.clone(),
                            ))
                        }
                        None => loss.add(pat.clone()),
                    },
                    _ => loss.add(pat.clone()),
                }
                if o.get("annotations").is_some_and(|a| !is_empty_value(a)) {
                    loss.add(path(&pat, "annotations"));
                }
            }
        }
        Value::Null => {}
        _ => {
            return Err(
                ApiError::invalid(format!("`{at}` must be a string or an array of parts"))
                    .param(at),
            )
        }
    }
    Ok(out)
}

// ---- responses ----

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.prompt + u.completion,
    })
}

fn response_id(id: &str) -> String {
    if id.starts_with("resp_") {
        id.to_owned()
    } else if id.is_empty() {
        super::new_id("resp_")
    } else {
        format!("resp_{id}")
    }
}

/// `status` and `incomplete_details` for a stop reason.
fn status(stop: &Stop) -> (&'static str, Value) {
    match stop {
        Stop::MaxTokens => ("incomplete", json!({"reason": "max_output_tokens"})),
        Stop::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn reasoning_item(id: &str, text: &str, encrypted: Option<String>) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    let mut item = json!({"type": "reasoning", "id": id, "summary": summary});
    if let Some(e) = encrypted {
        item["encrypted_content"] = json!(e);
    }
    item
}

/// The output items for a response's blocks: reasoning, one message for the text, calls.
fn output_items(res_id: &str, content: &[Block], loss: &mut Loss) -> Vec<Value> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut text_at = None;
    for (i, b) in content.iter().enumerate() {
        match &b.kind {
            BlockKind::Thinking { text: t, signature } => out.push(reasoning_item(
                &format!("rs_{res_id}_{i}"),
                t,
                signature.clone(),
            )),
            BlockKind::RedactedThinking { data } => out.push(reasoning_item(
                &format!("rs_{res_id}_{i}"),
                "",
                Some(format!("{REDACTED}{data}")),
            )),
            BlockKind::Text(t) => {
                text.push_str(t);
                text_at.get_or_insert(out.len());
            }
            BlockKind::ToolCall {
                id,
                name,
                arguments,
            } => out.push(json!({
                "type": "function_call", "id": format!("fc_{id}"), "call_id": id, "name": name,
                "arguments": arguments, "status": "completed",
            })),
            BlockKind::Image(_) | BlockKind::ToolResult { .. } => loss.add(b.at.clone()),
        }
    }
    if let Some(at) = text_at {
        out.insert(
            at,
            json!({
                "type": "message", "id": format!("msg_{res_id}"), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }),
        );
    }
    out
}

pub fn encode_response(res: &Response, loss: &mut Loss) -> Value {
    let id = response_id(&res.id);
    let (status, incomplete) = status(&res.stop);
    let output = output_items(id.trim_start_matches("resp_"), &res.content, loss);
    json!({
        "id": id,
        "object": "response",
        "created_at": res.created.unwrap_or_else(|| tollgate_core::time::now().max(0) as u64),
        "status": status,
        "incomplete_details": incomplete,
        "error": null,
        "model": res.model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage_json(&res.usage),
    })
}

// ---- streams ----

/// Writes events as the Responses API's `response.*` stream.
pub struct Encoder {
    id: String,
    model: String,
    created: u64,
    seq: u64,
    usage: Usage,
    stop: Option<Stop>,
    /// Finished output items, in order.
    items: Vec<Value>,
    /// The open item: its output index, kind and accumulated text or arguments.
    open: Option<OpenItem>,
    loss: Loss,
    finished: bool,
}

struct OpenItem {
    output_index: usize,
    item: Value,
    kind: ItemKind,
    text: String,
    signature: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Message,
    Reasoning,
    Call,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            id: String::new(),
            model: String::new(),
            created: tollgate_core::time::now().max(0) as u64,
            seq: 0,
            usage: Usage::default(),
            stop: None,
            items: Vec::new(),
            open: None,
            loss: Loss::default(),
            finished: false,
        }
    }
}

impl Encoder {
    fn emit(&mut self, mut data: Value, out: &mut Vec<u8>) {
        let kind = super::str_field(&data, "type");
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        write_event(out, Some(&kind), &data.to_string());
    }

    fn response(&self, status: &str) -> Value {
        let (_, incomplete) = self
            .stop
            .as_ref()
            .map(status_of)
            .unwrap_or(("completed", Value::Null));
        json!({
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "incomplete_details": incomplete, "error": null, "model": self.model,
            "output": self.items, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "usage": if status == "in_progress" { Value::Null } else { usage_json(&self.usage) },
        })
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let i = open.output_index;
        let mut item = open.item;
        let item_id = item["id"].clone();
        match open.kind {
            ItemKind::Message => {
                self.emit(json!({"type": "response.output_text.done", "item_id": item_id, "output_index": i, "content_index": 0, "text": open.text, "logprobs": []}), out);
                let part = json!({"type": "output_text", "text": open.text, "annotations": []});
                self.emit(json!({"type": "response.content_part.done", "item_id": item_id, "output_index": i, "content_index": 0, "part": part}), out);
                item["content"] = json!([part]);
            }
            ItemKind::Reasoning => {
                if !open.text.is_empty() {
                    self.emit(json!({"type": "response.reasoning_summary_text.done", "item_id": item_id, "output_index": i, "summary_index": 0, "text": open.text}), out);
                    let part = json!({"type": "summary_text", "text": open.text});
                    self.emit(json!({"type": "response.reasoning_summary_part.done", "item_id": item_id, "output_index": i, "summary_index": 0, "part": part}), out);
                    item["summary"] = json!([part]);
                }
                if let Some(s) = open.signature {
                    item["encrypted_content"] = json!(s);
                }
            }
            ItemKind::Call => {
                self.emit(json!({"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": i, "arguments": open.text}), out);
                item["arguments"] = json!(open.text);
            }
        }
        item["status"] = json!("completed");
        if open.kind == ItemKind::Reasoning {
            if let Some(o) = item.as_object_mut() {
                o.remove("status");
            }
        }
        self.emit(
            json!({"type": "response.output_item.done", "output_index": i, "item": item}),
            out,
        );
        self.items.push(item);
    }

    fn open_item(&mut self, kind: ItemKind, item: Value, out: &mut Vec<u8>) {
        self.close(out);
        let i = self.items.len();
        self.emit(
            json!({"type": "response.output_item.added", "output_index": i, "item": item}),
            out,
        );
        if kind == ItemKind::Message {
            self.emit(json!({"type": "response.content_part.added", "item_id": item["id"], "output_index": i, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}), out);
        }
        self.open = Some(OpenItem {
            output_index: i,
            item,
            kind,
            text: String::new(),
            signature: None,
        });
    }

    /// The open message item, opened if text arrives outside one.
    fn ensure(&mut self, kind: ItemKind, out: &mut Vec<u8>) {
        if self.open.as_ref().is_some_and(|o| o.kind == kind) {
            return;
        }
        let n = self.items.len();
        let item = match kind {
            ItemKind::Message => {
                json!({"type": "message", "id": format!("msg_{}_{n}", self.short_id()), "status": "in_progress", "role": "assistant", "content": []})
            }
            ItemKind::Reasoning => {
                json!({"type": "reasoning", "id": format!("rs_{}_{n}", self.short_id()), "summary": []})
            }
            ItemKind::Call => {
                json!({"type": "function_call", "id": format!("fc_{}_{n}", self.short_id()), "call_id": "", "name": "", "arguments": "", "status": "in_progress"})
            }
        };
        self.open_item(kind, item, out);
    }

    fn short_id(&self) -> String {
        self.id.trim_start_matches("resp_").to_owned()
    }
}

fn status_of(stop: &Stop) -> (&'static str, Value) {
    status(stop)
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, ev: &Event, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        match ev {
            Event::Start { id, model } => {
                self.id = response_id(id);
                self.model = model.clone();
                let r = self.response("in_progress");
                self.emit(json!({"type": "response.created", "response": r}), out);
                self.emit(json!({"type": "response.in_progress", "response": r}), out);
            }
            Event::BlockStart { kind, .. } => match kind {
                StartKind::Text => self.ensure(ItemKind::Message, out),
                StartKind::Thinking => self.ensure(ItemKind::Reasoning, out),
                StartKind::RedactedThinking { data } => {
                    let n = self.items.len();
                    let item = reasoning_item(&format!("rs_{}_{n}", self.short_id()), "", None);
                    self.open_item(ItemKind::Reasoning, item, out);
                    if let Some(o) = &mut self.open {
                        o.signature = Some(format!("{REDACTED}{data}"));
                    }
                }
                StartKind::ToolCall { id, name } => {
                    let item = json!({"type": "function_call", "id": format!("fc_{id}"), "call_id": id, "name": name, "arguments": "", "status": "in_progress"});
                    self.open_item(ItemKind::Call, item, out);
                }
            },
            Event::Delta { delta, .. } => match delta {
                Delta::Text(t) => {
                    self.ensure(ItemKind::Message, out);
                    let Some(o) = &mut self.open else { return };
                    o.text.push_str(t);
                    let (item_id, i) = (o.item["id"].clone(), o.output_index);
                    self.emit(json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": i, "content_index": 0, "delta": t, "logprobs": []}), out);
                }
                Delta::Thinking(t) => {
                    self.ensure(ItemKind::Reasoning, out);
                    let Some(o) = &mut self.open else { return };
                    let first = o.text.is_empty();
                    o.text.push_str(t);
                    let (item_id, i) = (o.item["id"].clone(), o.output_index);
                    if first {
                        self.emit(json!({"type": "response.reasoning_summary_part.added", "item_id": item_id, "output_index": i, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}), out);
                    }
                    self.emit(json!({"type": "response.reasoning_summary_text.delta", "item_id": item_id, "output_index": i, "summary_index": 0, "delta": t}), out);
                }
                Delta::Signature(s) => {
                    self.ensure(ItemKind::Reasoning, out);
                    if let Some(o) = &mut self.open {
                        o.signature.get_or_insert_with(String::new).push_str(s);
                    }
                }
                Delta::ToolArguments(a) => {
                    self.ensure(ItemKind::Call, out);
                    let Some(o) = &mut self.open else { return };
                    o.text.push_str(a);
                    let (item_id, i) = (o.item["id"].clone(), o.output_index);
                    self.emit(json!({"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": i, "delta": a}), out);
                }
            },
            Event::BlockStop { .. } => self.close(out),
            Event::Usage(u) => super::merge_usage(&mut self.usage, *u),
            Event::Finish(stop) => self.stop = Some(stop.clone()),
            Event::Error { kind, message } => {
                self.emit(
                    json!({"type": "error", "code": kind, "message": message, "param": null}),
                    out,
                );
            }
            Event::Done => {
                self.close(out);
                let (status, _) = self
                    .stop
                    .as_ref()
                    .map(status_of)
                    .unwrap_or(("completed", Value::Null));
                let r = self.response(status);
                let kind = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                self.emit(json!({"type": kind, "response": r}), out);
                self.finished = true;
            }
        }
    }

    fn loss(&self) -> &Loss {
        &self.loss
    }
}
