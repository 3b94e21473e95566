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
use crate::translate::Translator;

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
    /// Drop the usage-only chunk the gateway asked the upstream for (the client did not ask).
    /// Output is then line-aligned: complete lines go out, a partial line waits for its end.
    strip_usage: bool,
    /// A usage chunk was dropped; the blank line ending its event goes too.
    drop_blank: bool,
    /// Lines to send in strip mode.
    out: Vec<u8>,
    /// The `data:` lines seen, kept (up to `MAX_TRANSCRIPT`) to count generated tokens when
    /// the stream reports no usage.
    transcript: Vec<u8>,
    /// Reads the stream through its dialect's decoder instead of the line scanner: rewriting
    /// it into the client's dialect, or only tapping it for usage.
    translator: Option<Box<Translator>>,
}

const USAGE_NULL: &[u8] = b",\"usage\":null";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The most stream text kept for counting; a longer stream's tail is estimated by size.
const MAX_TRANSCRIPT: usize = 4 << 20;

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
            strip_usage: false,
            drop_blank: false,
            out: Vec::new(),
            transcript: Vec::new(),
            translator: None,
        }
    }

    /// Reads the stream with a translator (see [`Translator`]).
    pub fn translate(mut self, translator: Translator) -> Self {
        self.translator = Some(Box::new(translator));
        self
    }

    /// Removes the final usage-only chunk from what the client sees (the gateway requested
    /// usage for its own accounting; the client did not).
    pub fn strip_usage(mut self, strip: bool) -> Self {
        self.strip_usage = strip;
        self
    }

    /// Feeds one frame to the line scanner.
    fn scan(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = after.get(1..).unwrap_or_default();
            if self.skipping {
                self.skipping = false;
                if self.strip_usage {
                    // Too long to inspect: pass it through untouched.
                    let whole = std::mem::take(&mut self.partial);
                    self.out.extend_from_slice(&whole);
                    self.out.extend_from_slice(line);
                    self.out.push(b'\n');
                }
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                self.inspect(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.inspect(&whole);
                whole.clear();
                self.partial = whole;
            }
        }
        if !self.skipping {
            if self.partial.len() + rest.len() > MAX_LINE {
                self.skipping = true;
                if self.strip_usage {
                    let whole = std::mem::take(&mut self.partial);
                    self.out.extend_from_slice(&whole);
                    self.out.extend_from_slice(rest);
                }
                self.partial.clear();
            } else {
                self.partial.extend_from_slice(rest);
            }
        } else if self.strip_usage {
            self.out.extend_from_slice(rest);
        }
    }

    fn inspect(&mut self, raw: &[u8]) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if self.drop_blank && line.is_empty() {
            self.drop_blank = false;
            return;
        }
        self.drop_blank = false;
        let mut keep = true;
        if line.starts_with(b"data:") {
            if let Some((u, usage_only)) = usage_in_line(line) {
                self.usage = Some(u);
                if usage_only && self.strip_usage {
                    keep = false;
                    self.drop_blank = true;
                }
            } else if self.usage.is_none() && self.transcript.len() + line.len() < MAX_TRANSCRIPT {
                self.transcript.extend_from_slice(line);
                self.transcript.push(b'\n');
            }
        }
        if keep && self.strip_usage {
            // Chunks carry `"usage":null` once usage is requested; the client did not ask.
            match find(raw, USAGE_NULL) {
                Some(at) if line.starts_with(b"data:") => {
                    self.out
                        .extend_from_slice(raw.get(..at).unwrap_or_default());
                    self.out
                        .extend_from_slice(raw.get(at + USAGE_NULL.len()..).unwrap_or_default());
                }
                _ => self.out.extend_from_slice(raw),
            }
            self.out.push(b'\n');
        }
    }

    /// What the client gets for a frame: the frame itself, or in strip mode the complete
    /// lines scanned so far.
    fn emit(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        if !self.strip_usage {
            return frame;
        }
        Frame::data(Bytes::from(std::mem::take(&mut self.out)))
    }

    /// The outcome when the stream ends, with the transcript if usage never came.
    fn outcome(&mut self, failed: bool, cancelled: bool) -> StreamOutcome {
        if let Some(t) = &mut self.translator {
            let usage = t.usage;
            return StreamOutcome {
                usage,
                failed,
                cancelled,
                transcript: None,
                // An unfinished stream's usage (Anthropic's start event) lags what it generated.
                generated: (usage.is_none() || !t.done).then(|| std::mem::take(&mut t.generated)),
                loss: t.loss().cloned().unwrap_or_default(),
            };
        }
        StreamOutcome {
            usage: self.usage,
            failed,
            cancelled,
            transcript: self
                .usage
                .is_none()
                .then(|| std::mem::take(&mut self.transcript)),
            generated: None,
            loss: Default::default(),
        }
    }

    fn finish(&mut self, failed: bool) {
        self.done = true;
        if let Some(f) = self.on_end.take() {
            f(self.outcome(failed, false));
        }
    }
}

impl<B> Drop for ForwardStream<B> {
    fn drop(&mut self) {
        // A client that disconnects drops the body: the hook still runs.
        if let Some(f) = self.on_end.take() {
            let cancelled = !self.done;
            f(self.outcome(false, cancelled));
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
        Endpoint::Messages => {
            let body = serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}});
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
        // Loops only in strip mode, past frames that completed no line.
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                    if let (Some(t), Some(data)) = (&mut this.translator, frame.data_ref()) {
                        let out = t.feed(data);
                        if !t.rewrites() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    if let Some(data) = frame.data_ref() {
                        this.scan(data);
                        let out = this.emit(frame);
                        if out.data_ref().is_some_and(Bytes::is_empty) {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(out)));
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    this.finish(true);
                    return Poll::Ready(Some(Ok(Frame::data(error_event(
                        this.dialect,
                        &format!("upstream stream broke: {e}"),
                        "upstream_stream_error",
                    )))));
                }
                Poll::Ready(None) => {
                    if let Some(t) = &mut this.translator {
                        let out = t.finish();
                        let complete = t.done;
                        let rewrites = t.rewrites();
                        let mut tail = if rewrites { out } else { Vec::new() };
                        if !complete && rewrites {
                            // The upstream closed mid-answer: say so in the client's dialect.
                            tail.extend_from_slice(&error_event(
                                this.dialect,
                                "upstream stream ended before the response was complete",
                                "upstream_stream_error",
                            ));
                        }
                        this.finish(!complete);
                        return if tail.is_empty() {
                            Poll::Ready(None)
                        } else {
                            Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))))
                        };
                    }
                    // In strip mode a last line without its newline is still owed to the client.
                    let tail = if this.strip_usage && !this.partial.is_empty() {
                        Some(std::mem::take(&mut this.partial))
                    } else {
                        None
                    };
                    this.finish(false);
                    return match tail {
                        Some(t) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(t))))),
                        None => Poll::Ready(None),
                    };
                }
                Poll::Pending => {
                    return match this.timer.as_mut().poll(cx) {
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
                    }
                }
            }
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
/// absent are skipped without parsing. The flag says the line is a usage-only chat chunk
/// (`"choices": []`), the one `stream_options.include_usage` adds.
pub fn usage_in_line(line: &[u8]) -> Option<(Usage, bool)> {
    let json = line.strip_prefix(b"data:")?.trim_ascii();
    if !has_usage_object(json) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Event {
        usage: Option<RawUsage>,
        response: Option<Inner>,
        choices: Option<Vec<serde::de::IgnoredAny>>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        usage: Option<RawUsage>,
    }
    let ev: Event = serde_json::from_slice(json).ok()?;
    let usage_only = ev.usage.is_some() && ev.choices.as_ref().is_some_and(Vec::is_empty);
    ev.usage
        .or(ev.response.and_then(|r| r.usage))
        .map(|u| (Usage::from(u), usage_only))
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
            cache_write: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(frames: &[&[u8]]) -> Option<Usage> {
        scanned_raw(frames)
    }

    fn scanned_raw(frames: &[&[u8]]) -> Option<Usage> {
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

    /// Runs frames through a stream and returns what the client got and the outcome.
    async fn forwarded(frames: Vec<&'static [u8]>, strip: bool) -> (String, StreamOutcome) {
        use http_body_util::BodyExt;
        let outcome = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = outcome.clone();
        let upstream = http_body_util::StreamBody::new(futures_util::stream::iter(
            frames
                .into_iter()
                .map(|f| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(f)))),
        ));
        let s = ForwardStream::new(
            upstream,
            Endpoint::Chat,
            Duration::from_secs(5),
            Box::new(move |o| *seen.lock().unwrap() = Some(o)),
        )
        .strip_usage(strip);
        let body = s.collect().await.unwrap().to_bytes();
        let o = outcome.lock().unwrap().take().unwrap();
        (String::from_utf8(body.to_vec()).unwrap(), o)
    }

    #[tokio::test]
    async fn strips_the_usage_chunk_the_client_did_not_ask_for() {
        let frames: Vec<&'static [u8]> = vec![
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\nda",
            b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\r\n\r\n",
            b"data: [DONE]\n\n",
        ];
        let (body, o) = forwarded(frames.clone(), true).await;
        assert_eq!(
            body,
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(o.usage.map(|u| u.prompt), Some(5));
        assert_eq!(o.transcript, None);
        // Without stripping the bytes pass through untouched.
        let (body, _) = forwarded(frames.clone(), false).await;
        assert_eq!(body.as_bytes(), frames.concat());
    }

    #[tokio::test]
    async fn a_stream_without_usage_counts_what_it_generated() {
        let frames: Vec<&'static [u8]> = vec![
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\n",
            b"data: [DONE]",
        ];
        let (body, o) = forwarded(frames, true).await;
        assert!(body.ends_with("data: [DONE]"), "{body}");
        assert!(o.usage.is_none());
        let text = crate::tokens::generated_text(&o.transcript.unwrap());
        assert_eq!(crate::tokens::count(&text), 2);
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
