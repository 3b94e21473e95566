//! A Streamable HTTP upstream (MCP 2025-03-26 and later): each request is a POST answered with
//! JSON or with an SSE stream that carries related messages before the response; the GET
//! stream carries what the server sends on its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tokio::task::JoinHandle;
use tollgate_core::config::Secret;
use tollgate_core::redact::Echoes;

use super::oauth::TokenSource;
use super::{authorize, id_key, HttpClient, Inbound, Related, UpstreamError};
use crate::sse;

const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub struct HttpConn {
    client: HttpClient,
    uri: Uri,
    headers: HeaderMap,
    auth: Option<Arc<TokenSource>>,
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    session: Option<HeaderValue>,
    version: Option<HeaderValue>,
    listener: Option<JoinHandle<()>>,
}

impl HttpConn {
    pub fn new(
        client: HttpClient,
        url: &str,
        headers: &BTreeMap<String, Secret>,
        auth: Option<Arc<TokenSource>>,
        timeout: Duration,
    ) -> Result<HttpConn, UpstreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| UpstreamError::Protocol(format!("url {url:?}: {e}")))?;
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v.expose()),
            ) else {
                continue;
            };
            value.set_sensitive(true);
            map.insert(name, value);
        }
        Ok(HttpConn {
            client,
            uri,
            headers: map,
            auth,
            timeout,
            state: Mutex::default(),
        })
    }

    /// POSTs a message; with OAuth, a refused token is renewed and the POST sent once more.
    async fn post(
        &self,
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        let mut retried = false;
        loop {
            let mut req = self.build(
                Method::POST,
                "application/json, text/event-stream",
                body.clone(),
            );
            let bearer = authorize(&mut req, self.auth.as_deref()).await?;
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| UpstreamError::Closed(e.to_string()))?;
            if res.status() == StatusCode::UNAUTHORIZED && !retried {
                if let (Some(auth), Some(b)) = (&self.auth, &bearer) {
                    auth.invalidate(b);
                    retried = true;
                    continue;
                }
            }
            return Ok(res);
        }
    }

    fn build(&self, method: Method, accept: &'static str, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .unwrap_or_default();
        let h = req.headers_mut();
        h.extend(self.headers.clone());
        h.insert(ACCEPT, HeaderValue::from_static(accept));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(state) = self.state.lock() {
            if let Some(s) = &state.session {
                h.insert(SESSION, s.clone());
            }
            if let Some(v) = &state.version {
                h.insert(VERSION, v.clone());
            }
        }
        req
    }

    /// An error answer's text, without the credentials this connection sends (an upstream
    /// quoting them would put them in the gateway's logs and the client's error).
    async fn error_text(&self, res: http::Response<hyper::body::Incoming>) -> String {
        let text = read_text(res).await;
        let mut echoes = Echoes::from_headers(&self.headers);
        if let Some(bearer) = self.auth.as_ref().and_then(|a| a.current()) {
            echoes.add_header_value(bearer.as_bytes());
        }
        echoes.scrub(&text).into_owned()
    }

    fn has_session(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.session.is_some())
            .unwrap_or(false)
    }

    pub async fn request(&self, msg: &Value, related: &Related) -> Result<Value, UpstreamError> {
        let id = msg.get("id").map(id_key).unwrap_or_default();
        let exchange = async {
            let res = self.post(Bytes::from(msg.to_string())).await?;
            let status = res.status();
            if let Some(s) = res.headers().get(SESSION) {
                if let Ok(mut state) = self.state.lock() {
                    state.session = Some(s.clone());
                }
            }
            if status == StatusCode::NOT_FOUND && self.has_session() {
                return Err(UpstreamError::SessionExpired);
            }
            if !status.is_success() {
                return Err(UpstreamError::Status(
                    status.as_u16(),
                    self.error_text(res).await,
                ));
            }
            if status == StatusCode::ACCEPTED {
                return Err(UpstreamError::Protocol(
                    "a request was answered with 202 and no response".into(),
                ));
            }
            let is_sse = res
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if !is_sse {
                let body = Limited::new(res.into_body(), super::max_message())
                    .collect()
                    .await
                    .map_err(|e| UpstreamError::Closed(e.to_string()))?
                    .to_bytes();
                let value: Value = serde_json::from_slice(&body)
                    .map_err(|e| UpstreamError::Protocol(format!("invalid JSON: {e}")))?;
                return Ok(value);
            }
            let mut parser = sse::Parser::new(super::max_message());
            let mut body = res.into_body();
            let mut resumed = 0;
            loop {
                if let Some(answer) = read_answer(&mut body, &mut parser, &id, related).await? {
                    release(body);
                    return Ok(answer);
                }
                // The server ended the stream early (SSE polling, MCP 2025-11-25): resume it
                // with a GET from the last event id, after the delay it asked for.
                let Some(last) = parser.last_id.clone().filter(|_| resumed < MAX_RESUMES) else {
                    return Err(UpstreamError::Closed(
                        "the SSE stream ended before the response".into(),
                    ));
                };
                resumed += 1;
                let delay = parser.retry.unwrap_or(0).min(MAX_RETRY_MS);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                body = self.resume(&last).await?;
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// Reopens a response stream the server closed, from event `last`.
    async fn resume(&self, last: &str) -> Result<hyper::body::Incoming, UpstreamError> {
        let mut req = self.build(Method::GET, "text/event-stream", Bytes::new());
        let id = HeaderValue::from_str(last)
            .map_err(|_| UpstreamError::Protocol("unusable SSE event id".into()))?;
        req.headers_mut().insert(LAST_EVENT_ID, id);
        authorize(&mut req, self.auth.as_deref()).await?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Closed(e.to_string()))?;
        if !res.status().is_success() {
            return Err(UpstreamError::Status(
                res.status().as_u16(),
                self.error_text(res).await,
            ));
        }
        Ok(res.into_body())
    }

    pub async fn send(&self, msg: Value) -> Result<(), UpstreamError> {
        let res = tokio::time::timeout(self.timeout, self.post(Bytes::from(msg.to_string())))
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        let status = res.status();
        if status == StatusCode::NOT_FOUND && self.has_session() {
            return Err(UpstreamError::SessionExpired);
        }
        if !status.is_success() {
            return Err(UpstreamError::Status(
                status.as_u16(),
                self.error_text(res).await,
            ));
        }
        Ok(())
    }

    pub async fn initialized(
        &self,
        version: &str,
        inbound: Inbound,
        runtime: &tokio::runtime::Handle,
    ) {
        if let Ok(v) = HeaderValue::from_str(version) {
            if let Ok(mut state) = self.state.lock() {
                state.version = Some(v);
            }
        }
        let (parts, _) = self
            .build(Method::GET, "text/event-stream", Bytes::new())
            .into_parts();
        let listener = Listener {
            client: self.client.clone(),
            uri: parts.uri,
            headers: parts.headers,
            auth: self.auth.clone(),
            inbound,
        };
        let task = runtime.spawn(listener.run());
        if let Ok(mut state) = self.state.lock() {
            state.listener = Some(task);
        }
    }

    pub async fn close(&self) {
        let (listener, session) = match self.state.lock() {
            Ok(mut s) => (s.listener.take(), s.session.clone()),
            Err(_) => (None, None),
        };
        if let Some(task) = listener {
            task.abort();
        }
        if session.is_some() {
            let mut req = self.build(Method::DELETE, "application/json", Bytes::new());
            let end = async {
                authorize(&mut req, self.auth.as_deref()).await?;
                self.client
                    .request(req)
                    .await
                    .map_err(|e| UpstreamError::Closed(e.to_string()))
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), end).await;
        }
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(task) = s.listener.take() {
                task.abort();
            }
        }
    }
}

/// Times one response stream may be resumed after the server closed it.
const MAX_RESUMES: u32 = 16;
/// The longest reconnection delay honoured (a larger `retry` is capped).
const MAX_RETRY_MS: u64 = 5_000;

/// Reads one SSE stream until the response with `id` (returned) or the stream's end (`None`);
/// everything else on it goes to `related`.
async fn read_answer(
    body: &mut hyper::body::Incoming,
    parser: &mut sse::Parser,
    id: &str,
    related: &Related,
) -> Result<Option<Value>, UpstreamError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UpstreamError::Closed(e.to_string()))?;
        let Some(chunk) = frame.data_ref() else {
            continue;
        };
        let events = parser
            .feed(chunk)
            .map_err(|_| UpstreamError::Protocol("SSE event too large".into()))?;
        for ev in events {
            if ev.data.trim().is_empty() {
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(&ev.data) else {
                tracing::debug!("upstream sent an SSE event that is not JSON; skipped");
                continue;
            };
            let is_ours =
                value.get("method").is_none() && value.get("id").map(id_key).as_deref() == Some(id);
            if is_ours {
                return Ok(Some(value));
            }
            // The client may have gone; the request still runs to its end.
            let _ = related.send(value).await;
        }
    }
    Ok(None)
}

/// How long the rest of a response stream is read after its answer, so that its connection
/// can serve another request.
const DRAIN: Duration = Duration::from_secs(5);

/// Gives a response's connection back to the pool: hyper reuses a connection only once its
/// response has been read to the end, and an upstream closes a request's stream just after the
/// answer (usually in the same read). What is already there is read at once; a stream still
/// open is read to its end in the background (for at most `DRAIN` and one message's bytes), so
/// the answer never waits for it. Without this, most calls would open a new connection.
fn release(mut body: hyper::body::Incoming) {
    use futures_util::FutureExt;
    let mut left = super::max_message();
    loop {
        match body.frame().now_or_never() {
            None => break,
            Some(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                let Some(rest) = left.checked_sub(n) else {
                    return;
                };
                left = rest;
            }
            Some(None | Some(Err(_))) => return,
        }
    }
    tokio::spawn(async move {
        let rest = async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, Bytes::len);
                let Some(r) = left.checked_sub(n) else {
                    return;
                };
                left = r;
            }
        };
        let _ = tokio::time::timeout(DRAIN, rest).await;
    });
}

async fn read_text(res: http::Response<hyper::body::Incoming>) -> String {
    match Limited::new(res.into_body(), 4096).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    }
}

/// The GET stream: reconnects with `Last-Event-ID` after a drop, and stops for good when the
/// server says it offers none (405) or the session is gone.
struct Listener {
    client: HttpClient,
    uri: Uri,
    headers: HeaderMap,
    auth: Option<Arc<TokenSource>>,
    inbound: Inbound,
}

impl Listener {
    async fn run(self) {
        let mut last_id: Option<String> = None;
        let mut backoff = Duration::from_millis(250);
        loop {
            let mut req = Request::get(self.uri.clone())
                .body(Full::new(Bytes::new()))
                .unwrap_or_default();
            *req.headers_mut() = self.headers.clone();
            if let Some(id) = last_id
                .as_deref()
                .and_then(|i| HeaderValue::from_str(i).ok())
            {
                req.headers_mut().insert(LAST_EVENT_ID, id);
            }
            let opened = async {
                authorize(&mut req, self.auth.as_deref()).await?;
                self.client
                    .request(req)
                    .await
                    .map_err(|e| UpstreamError::Closed(e.to_string()))
            };
            let res = match opened.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "upstream GET stream failed to open");
                    if self.inbound.tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if !res.status().is_success() {
                // 405: this server has no GET stream; 404: the session ended.
                return;
            }
            backoff = Duration::from_millis(250);
            let mut body = res.into_body();
            let mut parser = sse::Parser::new(super::max_message());
            while let Some(Ok(frame)) = body.frame().await {
                let Some(chunk) = frame.data_ref() else {
                    continue;
                };
                let Ok(events) = parser.feed(chunk) else {
                    break;
                };
                for ev in events {
                    if ev.id.is_some() {
                        last_id = ev.id.clone();
                    }
                    let Ok(value) = serde_json::from_str::<Value>(&ev.data) else {
                        continue;
                    };
                    if !self.inbound.push(value).await {
                        return;
                    }
                }
            }
            if self.inbound.tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An upstream that refuses every request with 401 and quotes the request head back.
    async fn quoting_upstream() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    head.len()
                );
                let _ = s.write_all(&[answer.as_bytes(), &head].concat()).await;
            }
        });
        format!("http://{addr}/mcp")
    }

    #[tokio::test]
    async fn an_upstream_quoting_the_gateways_credential_is_cut() {
        let url = quoting_upstream().await;
        let headers = BTreeMap::from([
            (
                "authorization".to_owned(),
                Secret::new("Bearer mcp-upstream-secret-1"),
            ),
            ("x-api-key".to_owned(), Secret::new("mcp-api-key-22")),
        ]);
        let conn = HttpConn::new(
            super::super::http_client(),
            &url,
            &headers,
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let err = conn
            .send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await
            .unwrap_err();
        let UpstreamError::Status(401, text) = &err else {
            panic!("{err}");
        };
        assert!(text.contains("[redacted]"), "{text}");
        let shown = err.to_string();
        for secret in ["mcp-upstream-secret-1", "mcp-api-key-22"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    /// An upstream answering every POST on a kept-alive connection with an SSE stream whose
    /// end comes a while after the answer, as a server that flushes each event does. Counts
    /// the connections it accepts.
    async fn late_ending_upstream() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: its head, then Content-Length bytes of body.
                        let (head_end, length) = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                                let length = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                break (i + 4, length);
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        while buf.len() < head_end + length {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Value =
                            serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
                        buf.drain(..head_end + length);
                        let event = format!(
                            "data: {}\n\n",
                            serde_json::json!({"jsonrpc": "2.0", "id": body["id"], "result": {}})
                        );
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                        let first = format!("{head}{:x}\r\n{event}\r\n", event.len());
                        if s.write_all(first.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if s.write_all(b"0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/mcp"), accepted)
    }

    #[tokio::test]
    async fn a_stream_ending_after_its_answer_leaves_the_connection_reusable() {
        let (url, accepted) = late_ending_upstream().await;
        let conn = HttpConn::new(
            super::super::http_client(),
            &url,
            &BTreeMap::new(),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let (related, _) = tokio::sync::mpsc::channel(4);
        for id in 1..=5 {
            let msg = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
            let answer = conn.request(&msg, &related).await.unwrap();
            assert_eq!(answer["id"], id);
            // The next call is made after this stream has ended upstream.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
