//! Upstreams whose answers all arrive on one channel and are matched to requests by id: stdio
//! processes (newline-delimited JSON-RPC) and the 2024-11-05 HTTP+SSE transport (a GET stream
//! that names a POST endpoint in its first `endpoint` event).
//!
//! Stdio processes are spawned only from config, with an explicit environment (the configured
//! variables plus `PATH` and `HOME`), stderr logged line by line, and each spawn reported to
//! the session for the audit chain. A process that exits fails its pending requests; the
//! session reconnects it with backoff on the next call.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Mutex as AsyncMutex};
use tokio::task::JoinHandle;
use tollgate_core::config::Secret;

use super::{id_key, Connect, HttpClient, Inbound, UpstreamError};
use crate::sse;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

pub struct MuxConn {
    waiters: Waiters,
    writer: Writer,
    timeout: Duration,
    closed: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per upstream connection; boxing buys nothing"
)]
enum Writer {
    Stdio {
        stdin: AsyncMutex<ChildStdin>,
        child: Mutex<Option<Child>>,
    },
    Post {
        client: HttpClient,
        endpoint: Uri,
        headers: HeaderMap,
        auth: Option<Arc<super::oauth::TokenSource>>,
    },
}

impl MuxConn {
    pub fn stdio(
        how: Connect<'_>,
        name: &str,
        command: &str,
        args: &[String],
        env: &BTreeMap<String, Secret>,
        cwd: Option<&Path>,
        timeout: Duration,
    ) -> Result<MuxConn, UpstreamError> {
        let mut cmd = Command::new(command);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for inherited in ["PATH", "HOME"] {
            if let Some(v) = std::env::var_os(inherited) {
                cmd.env(inherited, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v.expose());
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        // The child's pipes are driven by tasks on the long-lived runtime; spawning there
        // too keeps the process's reaper on a runtime that outlives this request.
        let _guard = how.runtime.enter();
        let mut child = cmd
            .spawn()
            .map_err(|e| UpstreamError::Closed(format!("cannot start {command:?}: {e}")))?;
        (how.on_spawn)(name, child.id());
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(UpstreamError::Closed(
                "the child's pipes are missing".into(),
            ));
        };
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let server = name.to_owned();
        let log_stderr = how.runtime.spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "tollgate::mcp::stderr", server = %server, "{line}");
            }
        });
        let reader = how.runtime.spawn(read_lines(
            BufReader::new(stdout),
            waiters.clone(),
            how.inbound,
            closed.clone(),
            name.to_owned(),
        ));
        Ok(MuxConn {
            waiters,
            writer: Writer::Stdio {
                stdin: AsyncMutex::new(stdin),
                child: Mutex::new(Some(child)),
            },
            timeout,
            closed,
            tasks: vec![log_stderr, reader],
        })
    }

    pub async fn sse(
        how: Connect<'_>,
        url: &str,
        headers: &BTreeMap<String, Secret>,
        timeout: Duration,
    ) -> Result<MuxConn, UpstreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| UpstreamError::Protocol(format!("url {url:?}: {e}")))?;
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            if let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v.expose()),
            ) {
                value.set_sensitive(true);
                map.insert(name, value);
            }
        }
        let mut req = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
        *req.headers_mut() = map.clone();
        req.headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let open = async {
            super::authorize(&mut req, how.auth.as_deref()).await?;
            how.client
                .request(req)
                .await
                .map_err(|e| UpstreamError::Closed(e.to_string()))
        };
        let res = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        if !res.status().is_success() {
            return Err(UpstreamError::Status(res.status().as_u16(), String::new()));
        }
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let reader = how.runtime.spawn(read_sse(
            res.into_body(),
            waiters.clone(),
            how.inbound,
            closed.clone(),
            endpoint_tx,
        ));
        let endpoint = match tokio::time::timeout(timeout, endpoint_rx).await {
            Ok(Ok(e)) => e,
            _ => {
                reader.abort();
                return Err(UpstreamError::Protocol(
                    "the SSE stream sent no endpoint event".into(),
                ));
            }
        };
        let endpoint = resolve(&uri, &endpoint)
            .ok_or_else(|| UpstreamError::Protocol(format!("bad endpoint {endpoint:?}")))?;
        // The endpoint must stay on the server's origin: a hostile server must not make the
        // gateway post its sessions elsewhere.
        if endpoint.authority() != uri.authority() || endpoint.scheme() != uri.scheme() {
            reader.abort();
            return Err(UpstreamError::Protocol(
                "the endpoint event names another origin".into(),
            ));
        }
        Ok(MuxConn {
            waiters,
            writer: Writer::Post {
                client: how.client.clone(),
                endpoint,
                headers: map,
                auth: how.auth,
            },
            timeout,
            closed,
            tasks: vec![reader],
        })
    }

    async fn write(&self, msg: &Value) -> Result<(), UpstreamError> {
        if self.is_closed() {
            return Err(UpstreamError::Closed("the upstream has exited".into()));
        }
        match &self.writer {
            Writer::Stdio { stdin, .. } => {
                let mut line = msg.to_string().into_bytes();
                line.push(b'\n');
                let mut stdin = stdin.lock().await;
                stdin
                    .write_all(&line)
                    .await
                    .map_err(|e| UpstreamError::Closed(e.to_string()))?;
                stdin
                    .flush()
                    .await
                    .map_err(|e| UpstreamError::Closed(e.to_string()))
            }
            Writer::Post {
                client,
                endpoint,
                headers,
                auth,
            } => {
                let body = Bytes::from(msg.to_string());
                let mut retried = false;
                loop {
                    let mut req = Request::post(endpoint.clone())
                        .body(Full::new(body.clone()))
                        .unwrap_or_default();
                    *req.headers_mut() = headers.clone();
                    req.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    let bearer = super::authorize(&mut req, auth.as_deref()).await?;
                    let res = client
                        .request(req)
                        .await
                        .map_err(|e| UpstreamError::Closed(e.to_string()))?;
                    if res.status().is_success() {
                        return Ok(());
                    }
                    // A refused token is renewed once (the GET stream keeps the one it
                    // opened with; only new sessions need a new one there).
                    if res.status() == http::StatusCode::UNAUTHORIZED && !retried {
                        if let (Some(a), Some(b)) = (auth, &bearer) {
                            a.invalidate(b);
                            retried = true;
                            continue;
                        }
                    }
                    return Err(UpstreamError::Status(res.status().as_u16(), String::new()));
                }
            }
        }
    }

    pub async fn request(&self, msg: &Value) -> Result<Value, UpstreamError> {
        let key = msg.get("id").map(id_key).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(key.clone(), tx);
        }
        // Whatever happens next, the waiter must not outlive the request.
        struct Unfile<'a>(&'a Waiters, String);
        impl Drop for Unfile<'_> {
            fn drop(&mut self) {
                if let Ok(mut w) = self.0.lock() {
                    w.remove(&self.1);
                }
            }
        }
        let _unfile = Unfile(&self.waiters, key);
        self.write(msg).await?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(UpstreamError::Closed("the upstream has exited".into())),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    pub async fn send(&self, msg: Value) -> Result<(), UpstreamError> {
        self.write(&msg).await
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for t in &self.tasks {
            t.abort();
        }
        if let Writer::Stdio { child, .. } = &self.writer {
            if let Some(mut c) = child.lock().ok().and_then(|mut c| c.take()) {
                let _ = c.start_kill();
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for MuxConn {
    fn drop(&mut self) {
        self.close();
    }
}

/// Hands a message from the upstream to its waiter, or to the session.
async fn dispatch(value: Value, waiters: &Waiters, inbound: &Inbound) -> bool {
    if value.get("method").is_none() {
        if let Some(id) = value.get("id") {
            let waiter = waiters.lock().ok().and_then(|mut w| w.remove(&id_key(id)));
            if let Some(tx) = waiter {
                let _ = tx.send(value);
                return true;
            }
        }
    }
    inbound.push(value).await
}

async fn read_lines(
    stdout: BufReader<tokio::process::ChildStdout>,
    waiters: Waiters,
    inbound: Inbound,
    closed: Arc<AtomicBool>,
    server: String,
) {
    let mut lines = stdout.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.len() > super::max_message() {
            tracing::warn!(server = %server, "stdio upstream sent an oversized message; dropped");
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => {
                if !dispatch(v, &waiters, &inbound).await {
                    break;
                }
            }
            Err(_) => {
                tracing::warn!(server = %server, "stdio upstream wrote a line that is not JSON-RPC; skipped")
            }
        }
    }
    tracing::warn!(server = %server, "stdio upstream exited");
    closed.store(true, Ordering::Release);
    // Dropping the senders fails every pending request at once.
    if let Ok(mut w) = waiters.lock() {
        w.clear();
    }
}

async fn read_sse(
    mut body: hyper::body::Incoming,
    waiters: Waiters,
    inbound: Inbound,
    closed: Arc<AtomicBool>,
    endpoint: oneshot::Sender<String>,
) {
    let mut endpoint = Some(endpoint);
    let mut parser = sse::Parser::new(super::max_message());
    'stream: while let Some(Ok(frame)) = body.frame().await {
        let Some(chunk) = frame.data_ref() else {
            continue;
        };
        let Ok(events) = parser.feed(chunk) else {
            break;
        };
        for ev in events {
            if ev.event.as_deref() == Some("endpoint") {
                if let Some(tx) = endpoint.take() {
                    let _ = tx.send(ev.data.trim().to_owned());
                }
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            if !dispatch(value, &waiters, &inbound).await {
                break 'stream;
            }
        }
    }
    closed.store(true, Ordering::Release);
    if let Ok(mut w) = waiters.lock() {
        w.clear();
    }
}

/// Resolves the `endpoint` event's URL (usually a path with a query) against the stream's URL.
fn resolve(base: &Uri, reference: &str) -> Option<Uri> {
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return reference.parse().ok();
    }
    let path = if reference.starts_with('/') {
        reference.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{reference}")
    };
    let authority = base.authority()?;
    let scheme = base.scheme_str()?;
    format!("{scheme}://{authority}{path}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_against_the_stream_url() {
        let base: Uri = "http://127.0.0.1:9/app/sse".parse().unwrap();
        assert_eq!(
            resolve(&base, "/messages/?session_id=ab")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9/messages/?session_id=ab"
        );
        assert_eq!(
            resolve(&base, "messages?s=1").unwrap().to_string(),
            "http://127.0.0.1:9/app/messages?s=1"
        );
    }
}
