//! Dev-only test kit: a scriptable mock OpenAI-compatible upstream started in process on
//! `127.0.0.1:0`, and a small HTTP client for driving the gateway over real sockets.
//!
//! The upstream records every request and answers from a queue of scripted [`Reply`]s: a body
//! with a status and delay, an SSE chunk sequence with per-chunk delays, or a stream that drops
//! the connection part way. With an empty queue it answers like a plain chat completion echo.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod providers;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One recorded upstream request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole body with a status and content type, after a delay.
    Body {
        status: u16,
        content_type: &'static str,
        body: Bytes,
        delay: Duration,
    },
    /// An SSE response: each chunk is sent after its delay. With `drop_after: Some(n)`, the
    /// connection is cut after `n` chunks.
    Sse {
        chunks: Vec<(Duration, Bytes)>,
        drop_after: Option<usize>,
    },
    /// An SSE response that sends `first`, then waits for `gate` before sending `rest`: proves
    /// the gateway forwards chunks as they arrive instead of buffering.
    SseGated {
        first: Bytes,
        gate: Arc<Notify>,
        rest: Vec<Bytes>,
    },
    /// Closes the connection without answering: what a crashed or reset upstream looks like.
    Reset,
    /// Another reply with extra response headers (`retry-after`, ...).
    WithHeaders(Vec<(&'static str, String)>, Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::Body {
            status,
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, body: &str) -> Reply {
        Reply::Body {
            status,
            content_type: "application/json",
            body: Bytes::from(body.to_owned()),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(self, by: Duration) -> Reply {
        match self {
            Reply::Body {
                status,
                content_type,
                body,
                ..
            } => Reply::Body {
                status,
                content_type,
                body,
                delay: by,
            },
            other => other,
        }
    }

    /// Adds a response header.
    pub fn with_header(self, name: &'static str, value: impl Into<String>) -> Reply {
        match self {
            Reply::WithHeaders(mut h, inner) => {
                h.push((name, value.into()));
                Reply::WithHeaders(h, inner)
            }
            other => Reply::WithHeaders(vec![(name, value.into())], Box::new(other)),
        }
    }

    /// A 429 in OpenAI's shape with `Retry-After: secs`.
    pub fn throttled(retry_after_secs: u64) -> Reply {
        Reply::json(
            429,
            serde_json::json!({"error": {"message": "rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded", "param": null}}),
        )
        .with_header("retry-after", retry_after_secs.to_string())
    }

    /// An SSE stream of `data:` events (each value JSON-encoded), then `data: [DONE]`.
    pub fn sse(events: &[serde_json::Value], gap: Duration) -> Reply {
        let mut chunks: Vec<(Duration, Bytes)> = events
            .iter()
            .map(|e| (gap, Bytes::from(format!("data: {e}\n\n"))))
            .collect();
        chunks.push((gap, Bytes::from_static(b"data: [DONE]\n\n")));
        Reply::Sse {
            chunks,
            drop_after: None,
        }
    }
}

/// A canned chat completion as OpenAI returns it.
pub fn chat_completion(
    model: &str,
    content: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        "upstream_extra": {"kept": true},
    })
}

/// A chat completion chunk with one content delta.
pub fn chunk(content: &str) -> serde_json::Value {
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
}

#[derive(Default)]
struct State {
    queue: VecDeque<Reply>,
    recorded: Vec<Recorded>,
}

/// A mock OpenAI-compatible upstream on `127.0.0.1:0`.
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    killed: tokio::sync::watch::Sender<bool>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let arrived = Arc::new(Notify::new());
        let (st, ar) = (state.clone(), arrived.clone());
        let (killed, kill_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, ar) = (st.clone(), ar.clone());
                let mut kill = kill_rx.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| handle(req, st.clone(), ar.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    // Killing the upstream drops every open connection mid-flight.
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        MockUpstream {
            addr,
            state,
            arrived,
            task,
            killed,
        }
    }

    /// Kills the upstream as a crash would: stops listening (new connections are refused) and
    /// cuts every open connection, answered or not.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.killed.send(true);
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().recorded.len()
    }

    /// The base URL to configure as a provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues the answer to the next request.
    pub fn push(&self, reply: Reply) {
        self.state.lock().unwrap().queue.push_back(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    /// Waits until at least `n` requests have arrived (bounded by a generous timeout).
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "only {} of {n} upstream requests arrived",
                    self.requests().len()
                );
            }
        }
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
) -> Result<Response<BoxBody>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let reply = {
        let mut s = state.lock().unwrap();
        s.recorded.push(Recorded {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        s.queue.pop_front()
    };
    arrived.notify_waiters();
    let reply = reply.unwrap_or_else(|| {
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let model = req["model"].as_str().unwrap_or("unknown");
        Reply::json(200, chat_completion(model, "upstream says hi", 3, 4))
    });
    let (headers, reply) = match reply {
        Reply::WithHeaders(h, inner) => (h, *inner),
        other => (Vec::new(), other),
    };
    let mut res = respond(reply).await?;
    for (name, value) in headers {
        res.headers_mut()
            .insert(name, http::HeaderValue::from_str(&value).unwrap());
    }
    Ok(res)
}

async fn respond(reply: Reply) -> Result<Response<BoxBody>, std::io::Error> {
    Ok(match reply {
        // A service error makes hyper close the connection without a response.
        Reply::Reset => return Err(std::io::Error::other("reset by test")),
        Reply::WithHeaders(_, inner) => return Box::pin(respond(*inner)).await,
        Reply::Body {
            status,
            content_type,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", content_type)
                .header("x-ratelimit-remaining-requests", "99")
                .body(Full::new(body).map_err(|never| match never {}).boxed())
                .unwrap()
        }
        Reply::Sse { chunks, drop_after } => {
            let stream = futures_util::stream::unfold(
                (chunks.into_iter().enumerate(), drop_after),
                |(mut it, drop_after)| async move {
                    let (i, (delay, data)) = it.next()?;
                    tokio::time::sleep(delay).await;
                    if drop_after == Some(i) {
                        return Some((
                            Err(std::io::Error::other("connection dropped by test")),
                            (it, drop_after),
                        ));
                    }
                    Some((Ok(Frame::data(data)), (it, drop_after)))
                },
            );
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        Reply::SseGated { first, gate, rest } => {
            let stream =
                futures_util::stream::once(
                    async move { Ok::<_, std::io::Error>(Frame::data(first)) },
                )
                .chain(futures_util::stream::once(async move {
                    gate.notified().await;
                    Ok(Frame::data(Bytes::from(rest.concat())))
                }));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
    })
}

/// A response read in full.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A plain HTTP/1.1 client for tests.
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl TestClient {
    pub fn new(addr: SocketAddr) -> TestClient {
        TestClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(body.into())).unwrap()
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let res = self
            .client
            .request(self.build(method, path, headers, body))
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends and returns the response head with its body unread, for streaming tests.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response<Incoming> {
        self.client
            .request(self.build(method, path, headers, body))
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, key: &str) -> TestResponse {
        let auth = format!("Bearer {key}");
        self.send(Method::GET, path, &[("authorization", &auth)], Bytes::new())
            .await
    }

    pub async fn post_json(&self, path: &str, key: &str, body: &serde_json::Value) -> TestResponse {
        let auth = format!("Bearer {key}");
        self.send(
            Method::POST,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
    }
}
