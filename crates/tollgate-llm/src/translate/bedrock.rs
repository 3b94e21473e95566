//! Amazon Bedrock Converse (`/model/{id}/converse`, `/converse-stream`), as a provider dialect:
//! requests out, responses and the binary AWS event stream in.
//!
//! Prompt-cache breakpoints become `cachePoint` blocks after the block they mark (the bug that
//! only shows on the bill when dropped). Thinking travels as `reasoningContent` with its
//! signature, which Bedrock's Anthropic models issue and check like Anthropic's own.

use serde_json::{json, Map, Value};

use super::{
    arguments_value, path, Block, BlockKind, Blocks, Delta, Event, Image, Loss, OutputFormat,
    Request, Response, Role, StartKind, Stop, StreamDecoder, ToolChoice,
};
use crate::provider::Usage;

// ---- requests ----

fn cache_point(b: &Block, loss: &mut Loss) -> Option<Value> {
    let c = b.cache.as_ref()?;
    if c.get("ttl")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "5m")
    {
        loss.add(path(&b.at, "cache_control.ttl"));
    }
    Some(json!({"cachePoint": {"type": "default"}}))
}

/// `png` from `image/png`; Bedrock takes png, jpeg, gif and webp.
fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

fn content(blocks: &[Block], loss: &mut Loss) -> Vec<Value> {
    let mut out = Vec::new();
    for b in blocks {
        let v = match &b.kind {
            BlockKind::Text(t) => json!({"text": t}),
            BlockKind::Image(Image::Base64 { media_type, data }) => {
                match image_format(media_type) {
                    Some(f) => json!({"image": {"format": f, "source": {"bytes": data}}}),
                    None => {
                        loss.add(b.at.clone());
                        continue;
                    }
                }
            }
            // Bedrock takes image bytes or S3 locations, not URLs.
            BlockKind::Image(Image::Url(_)) => {
                loss.add(b.at.clone());
                continue;
            }
            BlockKind::ToolCall {
                id,
                name,
                arguments,
            } => json!({"toolUse": {
                "toolUseId": id, "name": name, "input": arguments_value(arguments, &b.at, loss),
            }}),
            BlockKind::ToolResult {
                id,
                content: inner,
                is_error,
            } => {
                let parts = content(inner, loss);
                json!({"toolResult": {
                    "toolUseId": id,
                    "content": parts,
                    "status": if *is_error { "error" } else { "success" },
                }})
            }
            BlockKind::Thinking {
                text,
                signature: Some(sig),
            } if !sig.starts_with(super::gemini::SIGNATURE_PREFIX) => {
                json!({"reasoningContent": {"reasoningText": {"text": text, "signature": sig}}})
            }
            BlockKind::Thinking { .. } => {
                loss.add(b.at.clone());
                continue;
            }
            BlockKind::RedactedThinking { data } => {
                json!({"reasoningContent": {"redactedContent": data}})
            }
        };
        out.push(v);
        if let Some(cp) = cache_point(b, loss) {
            out.push(cp);
        }
    }
    out
}

pub fn encode_request(req: &Request, loss: &mut Loss) -> Value {
    let mut out = Map::new();
    if !req.system.is_empty() {
        let mut system = Vec::new();
        for b in &req.system {
            match &b.kind {
                BlockKind::Text(t) => system.push(json!({"text": t})),
                _ => {
                    loss.add(b.at.clone());
                    continue;
                }
            }
            if let Some(cp) = cache_point(b, loss) {
                system.push(cp);
            }
        }
        out.insert("system".into(), Value::Array(system));
    }
    let mut messages: Vec<Value> = Vec::new();
    for m in &req.messages {
        let role = if m.role == Role::User {
            "user"
        } else {
            "assistant"
        };
        let parts = content(&m.content, loss);
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["content"].as_array_mut() {
                    existing.extend(parts);
                }
            }
            _ => messages.push(json!({"role": role, "content": parts})),
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    let mut inference = Map::new();
    if let Some(n) = req.max_tokens {
        inference.insert("maxTokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        inference.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        inference.insert("topP".into(), json!(p));
    }
    if !req.stop.is_empty() {
        inference.insert("stopSequences".into(), json!(req.stop));
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    let mut extra = Map::new();
    if let Some(k) = req.top_k {
        extra.insert("top_k".into(), json!(k));
    }
    if let Some(r) = &req.reasoning {
        if r.enabled {
            extra.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": r.budget().max(1024)}),
            );
        }
    }
    if !extra.is_empty() {
        out.insert("additionalModelRequestFields".into(), Value::Object(extra));
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
    if req.parallel_tool_calls == Some(false) {
        loss.add(req.at.parallel_tool_calls.unwrap_or("parallel_tool_calls"));
    }
    if !req.tools.is_empty() {
        let mut tools = Vec::new();
        for t in &req.tools {
            let mut spec = json!({"name": t.name, "inputSchema": {"json": t.schema}});
            if let Some(d) = &t.description {
                spec["description"] = json!(d);
            }
            tools.push(json!({"toolSpec": spec}));
            if t.cache.is_some() {
                tools.push(json!({"cachePoint": {"type": "default"}}));
            }
        }
        let mut config = json!({"tools": tools});
        match &req.tool_choice {
            Some(ToolChoice::Auto) => config["toolChoice"] = json!({"auto": {}}),
            Some(ToolChoice::Any) => config["toolChoice"] = json!({"any": {}}),
            Some(ToolChoice::Tool(name)) => config["toolChoice"] = json!({"tool": {"name": name}}),
            // Converse has no "none": the tools are offered and the choice is reported.
            Some(ToolChoice::None) => loss.add(req.at.tool_choice.unwrap_or("tool_choice")),
            None => {}
        }
        out.insert("toolConfig".into(), config);
    }
    if let Some(f) = &req.output {
        match f {
            OutputFormat::Json | OutputFormat::JsonSchema { .. } => {
                loss.add(req.at.output.unwrap_or("response_format"))
            }
        }
    }
    if req.user.is_some() {
        loss.add(req.at.user.unwrap_or("user"));
    }
    Value::Object(out)
}

// ---- responses ----

fn stop_from(reason: &str) -> Stop {
    match reason {
        "end_turn" => Stop::End,
        "tool_use" => Stop::ToolUse,
        "max_tokens" | "model_context_window_exceeded" => Stop::MaxTokens,
        "stop_sequence" => Stop::StopSequence(None),
        "guardrail_intervened" | "content_filtered" => Stop::ContentFilter,
        other => Stop::Other(other.to_owned()),
    }
}

pub fn usage_from(u: &Value) -> Usage {
    super::uncached_usage(
        u,
        [
            "inputTokens",
            "outputTokens",
            "cacheReadInputTokens",
            "cacheWriteInputTokens",
        ],
    )
}

fn decode_blocks(items: &[Value], at: &str, loss: &mut Loss) -> Vec<Block> {
    let mut out = Vec::new();
    for (i, b) in items.iter().enumerate() {
        let pat = super::index(at, i);
        let kind = if let Some(t) = b.get("text").and_then(Value::as_str) {
            BlockKind::Text(t.to_owned())
        } else if let Some(u) = b.get("toolUse") {
            BlockKind::ToolCall {
                id: super::str_field(u, "toolUseId"),
                name: super::str_field(u, "name"),
                arguments: u
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into()),
            }
        } else if let Some(r) = b.get("reasoningContent") {
            match (
                r.get("reasoningText"),
                r.get("redactedContent").and_then(Value::as_str),
            ) {
                (Some(t), _) => BlockKind::Thinking {
                    text: super::str_field(t, "text"),
                    signature: t
                        .get("signature")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                },
                (None, Some(data)) => BlockKind::RedactedThinking {
                    data: data.to_owned(),
                },
                (None, None) => {
                    loss.add(pat);
                    continue;
                }
            }
        } else {
            loss.add(pat);
            continue;
        };
        out.push(Block::new(kind, pat));
    }
    out
}

pub fn decode_response(v: &Value, loss: &mut Loss) -> Result<Response, String> {
    let items = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or("no `output.message.content` in the response")?;
    Ok(Response {
        id: String::new(),
        model: String::new(),
        content: decode_blocks(items, "output.message.content", loss),
        stop: stop_from(
            v.get("stopReason")
                .and_then(Value::as_str)
                .unwrap_or("end_turn"),
        ),
        usage: v.get("usage").map(usage_from).unwrap_or_default(),
        created: None,
    })
}

// ---- the AWS event stream ----

/// One decoded event-stream message: its headers that matter and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub event_type: Option<String>,
    pub message_type: Option<String>,
    pub exception_type: Option<String>,
    pub payload: Vec<u8>,
}

/// The largest message accepted (AWS caps messages at 16 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// Frames `application/vnd.amazon.eventstream`: a 12-byte prelude (total length, headers
/// length, prelude CRC32), headers, payload, message CRC32; all big-endian.
#[derive(Default)]
pub struct EventStreamParser {
    buf: Vec<u8>,
    /// The stream is corrupt (bad CRC or length); nothing more is read.
    pub broken: Option<String>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl EventStreamParser {
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Message>) {
        if self.broken.is_some() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let (Some(total), Some(headers_len), Some(prelude_crc)) =
                (be32(&self.buf, 0), be32(&self.buf, 4), be32(&self.buf, 8))
            else {
                return;
            };
            let (total, headers_len) = (total as usize, headers_len as usize);
            if crc32fast::hash(self.buf.get(..8).unwrap_or_default()) != prelude_crc
                || total < 16 + headers_len
                || total > MAX_MESSAGE
            {
                self.broken = Some("bad event-stream prelude".into());
                return;
            }
            if self.buf.len() < total {
                return;
            }
            let msg: Vec<u8> = self.buf.drain(..total).collect();
            let body_end = total - 4;
            if be32(&msg, body_end)
                != Some(crc32fast::hash(msg.get(..body_end).unwrap_or_default()))
            {
                self.broken = Some("bad event-stream message checksum".into());
                return;
            }
            let headers = msg.get(12..12 + headers_len).unwrap_or_default();
            let payload = msg
                .get(12 + headers_len..body_end)
                .unwrap_or_default()
                .to_vec();
            let mut m = Message {
                event_type: None,
                message_type: None,
                exception_type: None,
                payload,
            };
            if let Err(e) = read_headers(headers, &mut m) {
                self.broken = Some(e);
                return;
            }
            out.push(m);
        }
    }
}

/// Reads the string headers that matter; skips the others by their type's size.
fn read_headers(mut h: &[u8], m: &mut Message) -> Result<(), String> {
    let bad = || "bad event-stream header".to_owned();
    while !h.is_empty() {
        let name_len = *h.first().ok_or_else(bad)? as usize;
        let name = std::str::from_utf8(h.get(1..1 + name_len).ok_or_else(bad)?)
            .map_err(|_| bad())?
            .to_owned();
        let kind = *h.get(1 + name_len).ok_or_else(bad)?;
        let rest = h.get(2 + name_len..).ok_or_else(bad)?;
        let (value, used) = match kind {
            0 | 1 => (None, 0),
            2 => (None, 1),
            3 => (None, 2),
            4 => (None, 4),
            5 | 8 => (None, 8),
            9 => (None, 16),
            6 | 7 => {
                let len = u16::from_be_bytes([
                    *rest.first().ok_or_else(bad)?,
                    *rest.get(1).ok_or_else(bad)?,
                ]) as usize;
                let v = rest.get(2..2 + len).ok_or_else(bad)?;
                (
                    (kind == 7).then(|| String::from_utf8_lossy(v).into_owned()),
                    2 + len,
                )
            }
            _ => return Err(bad()),
        };
        match name.as_str() {
            ":event-type" => m.event_type = value,
            ":message-type" => m.message_type = value,
            ":exception-type" => m.exception_type = value,
            _ => {}
        }
        h = rest.get(used..).ok_or_else(bad)?;
    }
    Ok(())
}

/// Writes one event-stream message with string headers (for mocks and tests).
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Reads ConverseStream events.
#[derive(Default)]
pub struct Decoder {
    parser: EventStreamParser,
    started: bool,
    /// Blocks keyed by Bedrock's block index.
    blocks: Blocks<u64>,
    finished: bool,
    done: bool,
    reported_broken: bool,
    scratch: Vec<Message>,
}

impl Decoder {
    fn close(&mut self, out: &mut Vec<Event>) {
        self.blocks.close(out);
    }

    /// Our index for Bedrock's block `k`, opening it as `kind` if it is new.
    fn block(&mut self, k: u64, kind: StartKind, out: &mut Vec<Event>) -> usize {
        self.blocks.open(k, kind, out)
    }

    fn start(&mut self, out: &mut Vec<Event>) {
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: String::new(),
                model: String::new(),
            });
        }
    }

    fn message(&mut self, m: &Message, out: &mut Vec<Event>) {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if m.message_type.as_deref() == Some("exception")
            || m.message_type.as_deref() == Some("error")
        {
            out.push(Event::Error {
                kind: m
                    .exception_type
                    .clone()
                    .unwrap_or_else(|| "api_error".into()),
                message: v
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error")
                    .to_owned(),
            });
            return;
        }
        let k = v
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match m.event_type.as_deref() {
            Some("messageStart") => self.start(out),
            Some("contentBlockStart") => {
                self.start(out);
                if let Some(u) = v.pointer("/start/toolUse") {
                    let kind = StartKind::ToolCall {
                        id: super::str_field(u, "toolUseId"),
                        name: super::str_field(u, "name"),
                    };
                    self.close(out);
                    self.block(k, kind, out);
                }
            }
            Some("contentBlockDelta") => {
                self.start(out);
                let d = v.get("delta").cloned().unwrap_or_default();
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    let i = self.block(k, StartKind::Text, out);
                    out.push(Event::Delta {
                        index: i,
                        delta: Delta::Text(t.to_owned()),
                    });
                } else if let Some(a) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    let i = self.block(
                        k,
                        StartKind::ToolCall {
                            id: String::new(),
                            name: String::new(),
                        },
                        out,
                    );
                    if !a.is_empty() {
                        out.push(Event::Delta {
                            index: i,
                            delta: Delta::ToolArguments(a.to_owned()),
                        });
                    }
                } else if let Some(r) = d.get("reasoningContent") {
                    if let Some(data) = r.get("redactedContent").and_then(Value::as_str) {
                        self.close(out);
                        self.block(
                            k,
                            StartKind::RedactedThinking {
                                data: data.to_owned(),
                            },
                            out,
                        );
                    } else {
                        let i = self.block(k, StartKind::Thinking, out);
                        if let Some(t) = r.get("text").and_then(Value::as_str) {
                            out.push(Event::Delta {
                                index: i,
                                delta: Delta::Thinking(t.to_owned()),
                            });
                        }
                        if let Some(s) = r.get("signature").and_then(Value::as_str) {
                            out.push(Event::Delta {
                                index: i,
                                delta: Delta::Signature(s.to_owned()),
                            });
                        }
                    }
                }
            }
            Some("contentBlockStop") if self.blocks.is_open(k) => self.close(out),
            Some("messageStop") => {
                self.close(out);
                self.finished = true;
                out.push(Event::Finish(stop_from(
                    v.get("stopReason")
                        .and_then(Value::as_str)
                        .unwrap_or("end_turn"),
                )));
            }
            Some("metadata") => {
                if let Some(u) = v.get("usage") {
                    out.push(Event::Usage(usage_from(u)));
                }
                // The metadata event is the last: the stream is complete.
                if self.finished && !self.done {
                    self.done = true;
                    out.push(Event::Done);
                }
            }
            _ => {}
        }
    }
}

impl StreamDecoder for Decoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        let mut msgs = std::mem::take(&mut self.scratch);
        self.parser.feed(bytes, &mut msgs);
        for m in msgs.drain(..) {
            self.message(&m, out);
        }
        self.scratch = msgs;
        if let (Some(e), false) = (&self.parser.broken, self.reported_broken) {
            self.reported_broken = true;
            out.push(Event::Error {
                kind: "api_error".into(),
                message: e.clone(),
            });
        }
    }

    fn finish(&mut self, out: &mut Vec<Event>) {
        if self.finished && !self.done {
            self.close(out);
            self.done = true;
            out.push(Event::Done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_frames_round_trip_split_anywhere() {
        let mut wire = encode_message(
            &[
                (":event-type", "contentBlockDelta"),
                (":message-type", "event"),
                (":content-type", "application/json"),
            ],
            br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#,
        );
        wire.extend(encode_message(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        for split in 0..wire.len() {
            let mut p = EventStreamParser::default();
            let mut out = Vec::new();
            p.feed(&wire[..split], &mut out);
            p.feed(&wire[split..], &mut out);
            assert_eq!(out.len(), 2, "split at {split}");
            assert_eq!(out[0].event_type.as_deref(), Some("contentBlockDelta"));
            assert_eq!(
                out[1].exception_type.as_deref(),
                Some("throttlingException")
            );
            assert!(p.broken.is_none());
        }
    }

    #[test]
    fn a_corrupt_frame_stops_the_stream() {
        let mut wire = encode_message(&[(":event-type", "messageStart")], b"{}");
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        let mut p = EventStreamParser::default();
        let mut out = Vec::new();
        p.feed(&wire, &mut out);
        assert!(out.is_empty());
        assert!(p.broken.is_some());
    }
}
