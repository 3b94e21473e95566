//! Forwarding an upstream SSE stream: each frame goes to the client as it arrives (no
//! buffering), the gap between frames is bounded by the idle timeout, usage is read from the
//! stream's tail, and the end hook runs exactly once however the stream ends, including when
//! the client goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::provider::{Endpoint, StreamEnd, StreamOutcome, Usage};

pub struct ForwardStream<B> {
    inner: B,
    /// The client's dialect, for the error event that ends a broken stream.
    dialect: Endpoint,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    on_end: Option<StreamEnd>,
    usage: Option<Usage>,
    done: bool,
    /// The incomplete last line of the previous frame: SSE events may be split across reads.
    partial: Vec<u8>,
    /// The current line outgrew `MAX_LINE`; skip to the next newline.
    skipping: bool,
}

/// The longest SSE line inspected for usage. A Responses API `response.completed` event holds
/// the whole output, so this is generous; longer lines are passed through uninspected.
const MAX_LINE: usize = 1 << 20;

impl<B> ForwardStream<B> {
    pub fn new(inner: B, dialect: Endpoint, idle: Duration, on_end: StreamEnd) -> Self {
        ForwardStream {
            inner,
            dialect,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            on_end: Some(on_end),
            usage: None,
            done: false,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// Feeds one frame to the line scanner.
    fn scan(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = after.get(1..).unwrap_or_default();
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                self.inspect(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.inspect(&whole);
            }
        }
        if !self.skipping {
            if self.partial.len() + rest.len() > MAX_LINE {
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
    }

    fn inspect(&mut self, line: &[u8]) {
        if let Some(u) = usage_in_line(line) {
            self.usage = Some(u);
        }
    }

    fn finish(&mut self, failed: bool) {
        self.done = true;
        if let Some(f) = self.on_end.take() {
            f(StreamOutcome {
                usage: self.usage,
                failed,
                cancelled: false,
            });
        }
    }
}

impl<B> Drop for ForwardStream<B> {
    fn drop(&mut self) {
        // A client that disconnects drops the body: the hook still runs.
        if let Some(f) = self.on_end.take() {
            f(StreamOutcome {
                usage: self.usage,
                failed: false,
                cancelled: !self.done,
            });
        }
    }
}

/// An SSE event telling the client the stream broke, in the client's dialect: an `error`
/// object on a `data:` line for Chat Completions, an `error` event for the Responses API.
pub fn error_event(dialect: Endpoint, message: &str, code: &str) -> Bytes {
    match dialect {
        Endpoint::Responses => {
            let body = serde_json::json!({"type": "error", "code": code, "message": message, "param": null});
            Bytes::from(format!("event: error\ndata: {body}\n\n"))
        }
        Endpoint::Chat | Endpoint::Embeddings => {
            let body = serde_json::json!({"error": {"message": message, "type": "upstream_error", "code": code, "param": null}});
            Bytes::from(format!("data: {body}\n\n"))
        }
    }
}

/// A body whose first frame was already read (to prove the upstream started answering before
/// the response is committed to the client), followed by the rest.
pub struct Prepended<B> {
    first: Option<Frame<Bytes>>,
    rest: B,
}

impl<B> Prepended<B> {
    pub fn new(first: Frame<Bytes>, rest: B) -> Self {
        Prepended {
            first: Some(first),
            rest,
        }
    }
}

impl<B> Body for Prepended<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

impl<B> Body for ForwardStream<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                if let Some(data) = frame.data_ref() {
                    this.scan(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream stream broke");
                this.finish(true);
                Poll::Ready(Some(Ok(Frame::data(error_event(
                    this.dialect,
                    &format!("upstream stream broke: {e}"),
                    "upstream_stream_error",
                )))))
            }
            Poll::Ready(None) => {
                this.finish(false);
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let idle = this.idle;
                    tracing::warn!(
                        idle_ms = idle.as_millis() as u64,
                        "upstream stream went idle"
                    );
                    this.finish(true);
                    Poll::Ready(Some(Ok(Frame::data(error_event(
                        this.dialect,
                        &format!("upstream sent nothing for {}ms", idle.as_millis()),
                        "upstream_idle_timeout",
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Reads usage from one SSE line: `data: {..."usage":{...}}` (chat completions) or
/// `data: {..."response":{..."usage":{...}}}` (Responses API). Lines whose usage is `null` or
/// absent are skipped without parsing.
pub fn usage_in_line(line: &[u8]) -> Option<Usage> {
    let json = line.strip_prefix(b"data:")?.trim_ascii();
    if !has_usage_object(json) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Event {
        usage: Option<RawUsage>,
        response: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        usage: Option<RawUsage>,
    }
    let ev: Event = serde_json::from_slice(json).ok()?;
    ev.usage
        .or(ev.response.and_then(|r| r.usage))
        .map(Usage::from)
}

/// Whether `"usage"` appears followed by an object (not `null`), whitespace allowed.
fn has_usage_object(json: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut from = 0;
    while let Some(pos) = json
        .get(from..)
        .and_then(|s| s.windows(KEY.len()).position(|w| w == KEY))
    {
        let after = from + pos + KEY.len();
        let mut rest = json.get(after..).unwrap_or_default().trim_ascii_start();
        if let Some(r) = rest.strip_prefix(b":") {
            rest = r.trim_ascii_start();
            if rest.first() == Some(&b'{') {
                return true;
            }
        }
        from = after;
    }
    false
}

/// Usage as OpenAI reports it (chat: prompt/completion; responses: input/output), with the
/// cached and reasoning details.
#[derive(serde::Deserialize, Default)]
pub struct RawUsage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
    #[serde(alias = "input_tokens_details")]
    prompt_tokens_details: Option<RawDetails>,
    #[serde(alias = "output_tokens_details")]
    completion_tokens_details: Option<RawDetails>,
}

#[derive(serde::Deserialize, Default)]
struct RawDetails {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Usage {
        Usage {
            prompt: u.prompt_tokens.unwrap_or(0),
            completion: u.completion_tokens.unwrap_or(0),
            cached: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(frames: &[&[u8]]) -> Option<Usage> {
        let mut s = ForwardStream::new(
            http_body_util::Empty::<Bytes>::new(),
            Endpoint::Chat,
            Duration::from_secs(1),
            Box::new(|_| {}),
        );
        for f in frames {
            s.scan(f);
        }
        s.usage
    }

    #[tokio::test]
    async fn reads_usage_from_the_tail_in_every_shape() {
        let chat = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\ndata: [DONE]\n\n";
        let want = Some(Usage {
            prompt: 5,
            completion: 7,
            ..Usage::default()
        });
        assert_eq!(scanned(&[chat]), want);
        // Split across reads, mid-line.
        let (a, b) = chat.split_at(40);
        assert_eq!(scanned(&[a, b]), want);
        // Responses API, with a space after the colon.
        let resp = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\": {\"input_tokens\":3,\"output_tokens\":4}}}\n\n";
        assert_eq!(
            scanned(&[resp]),
            Some(Usage {
                prompt: 3,
                completion: 4,
                ..Usage::default()
            })
        );
        assert_eq!(scanned(&[b"data: {\"usage\":null}\n\n"]), None);
    }
}
