//! Translation between API dialects through one intermediate form.
//!
//! Each dialect has a codec: it decodes a request or response in its wire format into the
//! [`Request`] / [`Response`] here, encodes them back, and turns its stream framing into
//! [`Event`]s and back. Translating X to Y is `decode_X` then `encode_Y`; adding a dialect adds
//! one codec, not one translator per pair.
//!
//! Nothing is dropped silently. A decoder reports every field it cannot carry, an encoder every
//! field its target cannot express, as JSON paths in the client's terms, into a [`Loss`]. The
//! caller puts them in `x-tollgate-translation-loss`, the span and the ledger, or refuses the
//! request when the route is strict.

pub mod bedrock;
pub mod chat;
pub mod gemini;
pub mod messages;
pub mod replay;
pub mod responses;
mod sse;

use serde_json::{Map, Value};
use tollgate_core::error::ApiError;

use crate::provider::Usage;

pub use sse::SseParser;

/// The wire formats tollgate speaks, in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI Chat Completions.
    Chat,
    /// OpenAI Responses.
    Responses,
    /// Anthropic Messages.
    Messages,
    /// Google Gemini `generateContent` (providers only).
    Gemini,
    /// Amazon Bedrock Converse (providers only).
    Bedrock,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Chat => "chat",
            Dialect::Responses => "responses",
            Dialect::Messages => "messages",
            Dialect::Gemini => "gemini",
            Dialect::Bedrock => "bedrock",
        }
    }
}

/// Fields lost in translation, as JSON paths. Bounded: a hostile request cannot grow it
/// without limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loss(Vec<String>);

const MAX_LOSS: usize = 64;

impl Loss {
    pub fn add(&mut self, path: impl Into<String>) {
        let path = path.into();
        if self.0.len() < MAX_LOSS && !self.0.contains(&path) {
            self.0.push(path);
        }
    }

    pub fn extend(&mut self, other: Loss) {
        for p in other.0 {
            self.add(p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn paths(&self) -> &[String] {
        &self.0
    }

    /// The header value: comma-separated paths.
    pub fn header(&self) -> String {
        self.0.join(",")
    }
}

/// A child path: `at` + `.field` (or the field alone at the top).
pub fn path(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// A path into an array: `at[i]`.
pub fn index(at: &str, i: usize) -> String {
    format!("{at}[{i}]")
}

/// One request in the intermediate form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub model: String,
    /// System instructions, in order; text blocks (with their cache markers).
    pub system: Vec<Block>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `Some(false)` forbids several tool calls in one turn.
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stream: bool,
    /// The client asked for usage in the stream (OpenAI `stream_options.include_usage`).
    pub include_usage: bool,
    pub output: Option<OutputFormat>,
    pub reasoning: Option<Reasoning>,
    /// The end user, for abuse tracking (`user`, `metadata.user_id`).
    pub user: Option<String>,
    /// Where each top-level field came from, for loss paths (`temperature`, ...).
    pub at: Origins,
}

/// The client's names for fields whose name differs between dialects, for loss paths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origins {
    pub max_tokens: Option<&'static str>,
    pub stop: Option<&'static str>,
    pub tool_choice: Option<&'static str>,
    pub parallel_tool_calls: Option<&'static str>,
    pub output: Option<&'static str>,
    pub reasoning: Option<&'static str>,
    pub user: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
    /// The message's path in the client request.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Block {
    pub kind: BlockKind,
    /// The prompt-cache breakpoint on this block, as Anthropic spells it
    /// (`{"type":"ephemeral","ttl":"1h"}`).
    pub cache: Option<Value>,
    /// The block's path in the client request or upstream response.
    pub at: String,
}

impl Block {
    pub fn new(kind: BlockKind, at: impl Into<String>) -> Block {
        Block {
            kind,
            cache: None,
            at: at.into(),
        }
    }

    pub fn text(text: impl Into<String>, at: impl Into<String>) -> Block {
        Block::new(BlockKind::Text(text.into()), at)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum BlockKind {
    Text(String),
    Image(Image),
    ToolCall {
        id: String,
        name: String,
        /// The arguments as JSON text.
        arguments: String,
    },
    ToolResult {
        id: String,
        content: Vec<Block>,
        is_error: bool,
    },
    Thinking {
        text: String,
        /// The provider's signature over the thinking; must come back unchanged.
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Image {
    Url(String),
    Base64 { media_type: String, data: String },
}

impl Image {
    /// A `data:` URL becomes inline base64; anything else stays a URL.
    pub fn from_url(url: &str) -> Image {
        if let Some(rest) = url.strip_prefix("data:") {
            if let Some((meta, data)) = rest.split_once(',') {
                if let Some(media_type) = meta.strip_suffix(";base64") {
                    return Image::Base64 {
                        media_type: media_type.to_owned(),
                        data: data.to_owned(),
                    };
                }
            }
        }
        Image::Url(url.to_owned())
    }

    pub fn to_url(&self) -> String {
        match self {
            Image::Url(u) => u.clone(),
            Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub schema: Value,
    pub strict: Option<bool>,
    pub cache: Option<Value>,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    /// Some tool must be called.
    Any,
    None,
    /// This tool must be called.
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object.
    Json,
    JsonSchema {
        name: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reasoning {
    /// `false`: thinking explicitly off.
    pub enabled: bool,
    /// OpenAI's `low` / `medium` / `high` (and `minimal`).
    pub effort: Option<String>,
    /// Anthropic's thinking budget.
    pub budget_tokens: Option<u64>,
}

impl Reasoning {
    /// A token budget for an effort level, for targets that take budgets.
    pub fn budget(&self) -> u64 {
        self.budget_tokens.unwrap_or(match self.effort.as_deref() {
            Some("minimal" | "low") => 1024,
            Some("high") => 8192,
            _ => 4096,
        })
    }

    /// An effort level for a budget, for targets that take efforts.
    pub fn effort(&self) -> String {
        if let Some(e) = &self.effort {
            return e.clone();
        }
        match self.budget_tokens {
            Some(b) if b <= 2048 => "low",
            Some(b) if b >= 8192 => "high",
            _ => "medium",
        }
        .to_owned()
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stop {
    End,
    MaxTokens,
    StopSequence(Option<String>),
    ToolUse,
    ContentFilter,
    /// Anthropic's `pause_turn`, or any reason without an equivalent: kept by name.
    Other(String),
}

/// One non-streamed response in the intermediate form.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Response {
    pub id: String,
    pub model: String,
    pub content: Vec<Block>,
    pub stop: Stop,
    pub usage: Usage,
    /// Unix seconds, when the upstream said.
    pub created: Option<u64>,
}

/// One step of a streamed response.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        id: String,
        model: String,
    },
    /// A content block opens; blocks are numbered from 0 in order.
    BlockStart {
        index: usize,
        kind: StartKind,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    BlockStop {
        index: usize,
    },
    /// Usage so far; later reports replace earlier ones field by field.
    Usage(Usage),
    Finish(Stop),
    /// The upstream reported an error mid-stream.
    Error {
        kind: String,
        message: String,
    },
    /// The stream is complete.
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StartKind {
    Text,
    Thinking,
    RedactedThinking { data: String },
    ToolCall { id: String, name: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    Thinking(String),
    Signature(String),
    ToolArguments(String),
}

/// Usage reported Anthropic's way (also Bedrock's): uncached input apart from cache reads and
/// writes, under the given field names. The intermediate usage counts the whole prompt.
pub(crate) fn uncached_usage(u: &Value, names: [&str; 4]) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let [input, output, read, write] = names;
    let (cached, written) = (n(read), n(write));
    Usage {
        prompt: n(input) + cached + written,
        completion: n(output),
        cached,
        reasoning: 0,
        cache_write: written,
    }
}

/// Merges a usage report into what is known: reported fields win, zero fields keep the old.
pub fn merge_usage(into: &mut Usage, u: Usage) {
    let keep = |old: u64, new: u64| if new > 0 { new } else { old };
    into.prompt = keep(into.prompt, u.prompt);
    into.completion = keep(into.completion, u.completion);
    into.cached = keep(into.cached, u.cached);
    into.reasoning = keep(into.reasoning, u.reasoning);
    into.cache_write = keep(into.cache_write, u.cache_write);
}

/// The block a stream decoder has open, and the numbering of blocks: for upstream streams that
/// do not frame their blocks themselves (chat deltas, Gemini parts, Bedrock text), a block opens
/// on its first delta and closes when another kind of content starts.
#[derive(Debug)]
pub(crate) struct Blocks<K> {
    open: Option<(K, usize)>,
    next: usize,
}

impl<K> Default for Blocks<K> {
    fn default() -> Self {
        Blocks {
            open: None,
            next: 0,
        }
    }
}

impl<K: PartialEq + Copy> Blocks<K> {
    pub fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((_, i)) = self.open.take() {
            out.push(Event::BlockStop { index: i });
        }
    }

    /// The open block's index if it is `key`'s; else the previous block closes and a new one
    /// opens as `kind`.
    pub fn open(&mut self, key: K, kind: StartKind, out: &mut Vec<Event>) -> usize {
        if let Some((k, i)) = self.open {
            if k == key {
                return i;
            }
        }
        let i = self.fresh(out);
        self.open = Some((key, i));
        out.push(Event::BlockStart { index: i, kind });
        i
    }

    /// The next index, for a block the caller opens and closes itself; the open one closes.
    pub fn fresh(&mut self, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let i = self.next;
        self.next += 1;
        i
    }

    pub fn is_open(&self, key: K) -> bool {
        self.open.is_some_and(|(k, _)| k == key)
    }
}

/// Decodes a stream's wire framing into events.
pub trait StreamDecoder: Send {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>);
    /// The upstream closed; emit what remains (an unterminated stream gets no `Done`).
    fn finish(&mut self, out: &mut Vec<Event>);
}

/// Encodes events into a client's stream framing.
pub trait StreamEncoder: Send {
    fn encode(&mut self, ev: &Event, out: &mut Vec<u8>);
    /// Fields of the stream the client's dialect cannot carry.
    fn loss(&self) -> &Loss;
}

/// Reads a request body in `dialect`.
pub fn decode_request(dialect: Dialect, body: &[u8]) -> Result<(Request, Loss), ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))?;
    let mut loss = Loss::default();
    let req = match dialect {
        Dialect::Chat => chat::decode_request(&value, &mut loss)?,
        Dialect::Messages => messages::decode_request(&value, &mut loss)?,
        Dialect::Responses => responses::decode_request(&value, &mut loss)?,
        Dialect::Gemini | Dialect::Bedrock => {
            return Err(ApiError::invalid(format!(
                "the {} API is not served to clients",
                dialect.name()
            ))
            .code("unsupported_dialect"))
        }
    };
    Ok((req, loss))
}

/// Writes a request for `dialect`, naming the model the upstream expects.
///
/// No provider is sent Responses requests by translation: OpenAI-type providers take them as
/// they come, and requests in other dialects reach them as Chat Completions.
pub fn encode_request(dialect: Dialect, req: &Request, model: &str, loss: &mut Loss) -> Vec<u8> {
    let value = match dialect {
        Dialect::Messages => messages::encode_request(req, model, loss),
        Dialect::Gemini => gemini::encode_request(req, loss),
        Dialect::Bedrock => bedrock::encode_request(req, loss),
        Dialect::Chat | Dialect::Responses => chat::encode_request(req, model, loss),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Reads a non-streamed response body in `dialect`.
pub fn decode_response(dialect: Dialect, body: &[u8], loss: &mut Loss) -> Result<Response, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("response is not JSON: {e}"))?;
    match dialect {
        Dialect::Chat => chat::decode_response(&value, loss),
        Dialect::Messages => messages::decode_response(&value, loss),
        Dialect::Gemini => gemini::decode_response(&value, loss),
        Dialect::Bedrock => bedrock::decode_response(&value, loss),
        Dialect::Responses => Err("Responses API responses are not translated".into()),
    }
}

/// Writes a non-streamed response for a client of `dialect`.
pub fn encode_response(dialect: Dialect, res: &Response, loss: &mut Loss) -> Vec<u8> {
    let value = match dialect {
        Dialect::Chat => chat::encode_response(res, loss),
        Dialect::Messages => messages::encode_response(res, loss),
        Dialect::Responses => responses::encode_response(res, loss),
        // Not client dialects: no client is ever answered in them.
        Dialect::Gemini | Dialect::Bedrock => Value::Null,
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// An upstream's error body rewritten into the error shape of a client of `to`, keeping its
/// message and kind.
pub fn error_body(to: Dialect, status: http::StatusCode, upstream: &[u8]) -> bytes::Bytes {
    let v: Value = serde_json::from_slice(upstream).unwrap_or_default();
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| crate::provider::error_message(upstream));
    let kind = v
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or(match status.as_u16() {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        });
    let body = match to {
        Dialect::Messages => serde_json::json!({
            "type": "error",
            "error": {"type": messages::anthropic_error_type(kind), "message": message},
        }),
        Dialect::Chat | Dialect::Responses | Dialect::Gemini | Dialect::Bedrock => {
            let code = v.pointer("/error/code").cloned().unwrap_or(Value::Null);
            serde_json::json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
        }
    };
    bytes::Bytes::from(body.to_string())
}

pub fn stream_decoder(dialect: Dialect) -> Box<dyn StreamDecoder> {
    match dialect {
        Dialect::Messages => Box::new(sse::SseDecoder::new(messages::Decoder::default())),
        Dialect::Gemini => Box::new(sse::SseDecoder::new(gemini::Decoder::default())),
        Dialect::Bedrock => Box::new(bedrock::Decoder::default()),
        Dialect::Chat | Dialect::Responses => {
            Box::new(sse::SseDecoder::new(chat::Decoder::default()))
        }
    }
}

/// A stream encoder for a client of `dialect`. `include_usage`: the client asked for the
/// usage chunk (OpenAI); Anthropic streams always carry usage.
pub fn stream_encoder(dialect: Dialect, include_usage: bool) -> Box<dyn StreamEncoder> {
    match dialect {
        Dialect::Messages => Box::new(messages::Encoder::default()),
        Dialect::Responses => Box::new(responses::Encoder::default()),
        // Gemini and Bedrock are not client dialects; Chat stands in.
        Dialect::Chat | Dialect::Gemini | Dialect::Bedrock => {
            Box::new(chat::Encoder::new(include_usage))
        }
    }
}

/// Translates a stream: the upstream's framing in, the client's out, usage and generated text
/// collected on the way for pricing.
pub struct Translator {
    decoder: Box<dyn StreamDecoder>,
    /// `None`: tap only, the bytes pass through unchanged.
    encoder: Option<Box<dyn StreamEncoder>>,
    events: Vec<Event>,
    pub usage: Option<Usage>,
    /// Generated text (text, thinking, tool arguments), for counting when usage never comes.
    pub generated: String,
    pub done: bool,
    /// The model named when the upstream's stream names none (Bedrock).
    model: String,
}

/// The most generated text kept for counting.
const MAX_GENERATED: usize = 4 << 20;

impl Translator {
    pub fn new(from: Dialect, to: Dialect, include_usage: bool) -> Translator {
        Translator {
            decoder: stream_decoder(from),
            encoder: Some(stream_encoder(to, include_usage)),
            events: Vec::new(),
            usage: None,
            generated: String::new(),
            done: false,
            model: String::new(),
        }
    }

    /// The model to name when the upstream's stream does not.
    pub fn model(mut self, model: &str) -> Translator {
        self.model = model.to_owned();
        self
    }

    /// Reads a stream without changing it: usage and generated text only.
    pub fn tap(dialect: Dialect) -> Translator {
        Translator {
            decoder: stream_decoder(dialect),
            encoder: None,
            events: Vec::new(),
            usage: None,
            generated: String::new(),
            done: false,
            model: String::new(),
        }
    }

    pub fn rewrites(&self) -> bool {
        self.encoder.is_some()
    }

    /// Feeds upstream bytes; returns what goes to the client (empty in tap mode).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut events = std::mem::take(&mut self.events);
        self.decoder.feed(bytes, &mut events);
        let out = self.emit(&events);
        events.clear();
        self.events = events;
        out
    }

    /// The upstream ended.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut events = std::mem::take(&mut self.events);
        self.decoder.finish(&mut events);
        let out = self.emit(&events);
        events.clear();
        self.events = events;
        out
    }

    fn emit(&mut self, events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        for ev in events {
            match ev {
                Event::Usage(u) => merge_usage(self.usage.get_or_insert_with(Usage::default), *u),
                Event::Delta { delta, .. } if self.generated.len() < MAX_GENERATED => match delta {
                    Delta::Text(s) | Delta::Thinking(s) | Delta::ToolArguments(s) => {
                        self.generated.push_str(s)
                    }
                    Delta::Signature(_) => {}
                },
                Event::Done => self.done = true,
                _ => {}
            }
            if let Some(enc) = &mut self.encoder {
                match ev {
                    Event::Start { id, model } if model.is_empty() => enc.encode(
                        &Event::Start {
                            id: id.clone(),
                            model: self.model.clone(),
                        },
                        &mut out,
                    ),
                    _ => enc.encode(ev, &mut out),
                }
            }
        }
        out
    }

    /// What the client's dialect could not carry.
    pub fn loss(&self) -> Option<&Loss> {
        self.encoder.as_ref().map(|e| e.loss())
    }
}

// ---- helpers shared by the codecs ----

/// A JSON object, or a 400 naming where.
pub(crate) fn object<'v>(v: &'v Value, at: &str) -> Result<&'v Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| {
        ApiError::invalid(format!(
            "`{}` must be an object",
            if at.is_empty() { "body" } else { at }
        ))
        .param(at)
    })
}

pub(crate) fn string(v: &Value, at: &str) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid(format!("`{at}` must be a string")).param(at))
}

pub(crate) fn array<'v>(v: &'v Value, at: &str) -> Result<&'v Vec<Value>, ApiError> {
    v.as_array()
        .ok_or_else(|| ApiError::invalid(format!("`{at}` must be an array")).param(at))
}

pub(crate) fn number(v: &Value, at: &str) -> Result<f64, ApiError> {
    v.as_f64()
        .ok_or_else(|| ApiError::invalid(format!("`{at}` must be a number")).param(at))
}

pub(crate) fn uint(v: &Value, at: &str) -> Result<u64, ApiError> {
    v.as_u64().ok_or_else(|| {
        ApiError::invalid(format!("`{at}` must be a non-negative integer")).param(at)
    })
}

pub(crate) fn boolean(v: &Value, at: &str) -> Result<bool, ApiError> {
    v.as_bool()
        .ok_or_else(|| ApiError::invalid(format!("`{at}` must be a boolean")).param(at))
}

/// An error object from an upstream stream, as an event: its kind under `kind_field`
/// (`type`, or Gemini's `status`) and its message.
pub(crate) fn upstream_error(err: &Value, kind_field: &str) -> Event {
    let field = |k: &str, default: &str| {
        err.get(k)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    Event::Error {
        kind: field(kind_field, "api_error"),
        message: field("message", "upstream error"),
    }
}

/// Something with named members: a JSON value or object.
pub(crate) trait Members {
    fn member(&self, key: &str) -> Option<&Value>;
}

impl Members for Value {
    fn member(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl Members for Map<String, Value> {
    fn member(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// A string member, or empty.
pub(crate) fn str_field(v: &impl Members, key: &str) -> String {
    v.member(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A value that says nothing: `null`, `false`, `0`, `""`, `[]` or `{}`. Dropping such a field
/// loses nothing.
pub(crate) fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Parses tool-call arguments text into a JSON value for targets that take objects. Text that
/// is not a JSON object becomes `{}` (and is reported).
pub(crate) fn arguments_value(text: &str, at: &str, loss: &mut Loss) -> Value {
    if text.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            loss.add(path(at, "arguments"));
            Value::Object(Map::new())
        }
    }
}

/// A random id with a prefix, for responses the gateway writes.
pub(crate) fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

#[cfg(test)]
mod tests;
