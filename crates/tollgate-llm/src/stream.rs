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

use crate::provider::{StreamEnd, StreamOutcome, Usage};

pub struct ForwardStream<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    on_end: Option<StreamEnd>,
    usage: Option<Usage>,
    done: bool,
}

impl<B> ForwardStream<B> {
    pub fn new(inner: B, idle: Duration, on_end: StreamEnd) -> Self {
        ForwardStream {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            on_end: Some(on_end),
            usage: None,
            done: false,
        }
    }

    fn finish(&mut self, failed: bool) {
        self.done = true;
        if let Some(f) = self.on_end.take() {
            f(StreamOutcome {
                usage: self.usage,
                failed,
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
                failed: !self.done,
            });
        }
    }
}

/// An SSE event telling the client the stream broke, in the OpenAI error shape.
pub fn error_event(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": "upstream_error", "code": code, "param": null}});
    Bytes::from(format!("data: {body}\n\n"))
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
                    if let Some(u) = sniff_usage(data) {
                        this.usage = Some(u);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream stream broke");
                this.finish(true);
                Poll::Ready(Some(Ok(Frame::data(error_event(
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

/// Reads `usage` from the SSE events in one frame, if one carries it. Frames that do not
/// mention a usage object are skipped with one substring search.
pub fn sniff_usage(data: &[u8]) -> Option<Usage> {
    const NEEDLE: &[u8] = b"\"usage\":{";
    if !data.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Chunk {
        usage: Option<RawUsage>,
    }
    let mut found = None;
    for line in data.split(|&b| b == b'\n') {
        let Some(json) = line.strip_prefix(b"data:") else {
            continue;
        };
        if let Ok(Chunk { usage: Some(u) }) = serde_json::from_slice::<Chunk>(json.trim_ascii()) {
            found = Some(u.into());
        }
    }
    found
}

/// Usage as OpenAI reports it (chat: prompt/completion; responses: input/output).
#[derive(serde::Deserialize, Default)]
pub struct RawUsage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Usage {
        Usage {
            prompt: u.prompt_tokens.unwrap_or(0),
            completion: u.completion_tokens.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_usage_from_final_chunk() {
        let frame = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            sniff_usage(frame),
            Some(Usage {
                prompt: 5,
                completion: 7
            })
        );
        assert_eq!(sniff_usage(b"data: {\"usage\":null}\n\n"), None);
    }
}
