//! Connections to upstream MCP servers, one per client session and server: Streamable HTTP
//! (`http.rs`), and the transports whose responses arrive on a shared channel, stdio processes
//! and the 2024-11-05 HTTP+SSE transport (`mux.rs`).
//!
//! A connection never sees the client's credentials: HTTP upstreams get the headers from their
//! own config entry, stdio processes the environment from config.

mod http;
mod mux;
pub mod oauth;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;
use tollgate_core::config::{McpServerConfig, McpTransport};

pub use self::http::HttpConn;
pub use self::mux::MuxConn;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The most bytes one upstream message may take: `limits.max_upstream_response_size`, set by
/// the layer from the config it runs (one tool layer per process).
static MAX_MESSAGE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(16 * 1024 * 1024);

pub fn max_message() -> usize {
    MAX_MESSAGE.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn set_max_message(limits: &tollgate_core::config::LimitsConfig) {
    let n = usize::try_from(limits.max_upstream_response_size).unwrap_or(usize::MAX);
    MAX_MESSAGE.store(n, std::sync::atomic::Ordering::Relaxed);
}

pub fn http_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// Why an upstream exchange failed.
#[derive(Debug, Clone)]
pub enum UpstreamError {
    Timeout,
    /// The connection or process is gone.
    Closed(String),
    /// The upstream forgot our session (HTTP 404): reconnect.
    SessionExpired,
    /// An HTTP status other than success.
    Status(u16, String),
    /// The upstream answered something that is not MCP.
    Protocol(String),
    /// The gateway could not get its own token for the upstream.
    Auth(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Timeout => f.write_str("the upstream did not answer in time"),
            UpstreamError::Closed(why) => write!(f, "the upstream connection closed: {why}"),
            UpstreamError::SessionExpired => f.write_str("the upstream ended the session"),
            UpstreamError::Status(s, body) => write!(f, "the upstream answered HTTP {s}: {body}"),
            UpstreamError::Protocol(why) => write!(f, "the upstream broke the protocol: {why}"),
            UpstreamError::Auth(why) => write!(f, "no token for the upstream: {why}"),
        }
    }
}

/// Messages an upstream sends on its own (not as part of a request's answer): they go to the
/// session, tagged with the upstream's index.
#[derive(Clone)]
pub struct Inbound {
    pub index: usize,
    pub tx: mpsc::Sender<(usize, Value)>,
}

impl Inbound {
    pub async fn push(&self, msg: Value) -> bool {
        self.tx.send((self.index, msg)).await.is_ok()
    }
}

/// Where messages related to one request go while it runs (progress, server requests).
pub type Related = mpsc::Sender<Value>;

/// A connected upstream.
pub enum Conn {
    Http(HttpConn),
    Mux(MuxConn),
}

/// Called with the server name and process id of each stdio spawn.
pub type OnSpawn = Arc<dyn Fn(&str, Option<u32>) + Send + Sync>;

/// What connecting needs besides the server's config.
pub struct Connect<'a> {
    pub client: &'a HttpClient,
    pub inbound: Inbound,
    /// Long-lived tasks (readers, listeners) run here, not on the request's runtime.
    pub runtime: &'a tokio::runtime::Handle,
    /// Told each time a stdio process is spawned (for the audit chain).
    pub on_spawn: OnSpawn,
    /// The gateway's OAuth client for this server, when it has one.
    pub auth: Option<Arc<oauth::TokenSource>>,
}

/// Sets the gateway's bearer token on a request, when the upstream uses OAuth; returns it so
/// a refusal can invalidate it.
pub(crate) async fn authorize<B>(
    req: &mut ::http::Request<B>,
    auth: Option<&oauth::TokenSource>,
) -> Result<Option<::http::HeaderValue>, UpstreamError> {
    let Some(source) = auth else {
        return Ok(None);
    };
    let bearer = source.bearer().await?;
    req.headers_mut()
        .insert(::http::header::AUTHORIZATION, bearer.clone());
    Ok(Some(bearer))
}

impl Conn {
    pub async fn connect(cfg: &McpServerConfig, how: Connect<'_>) -> Result<Conn, UpstreamError> {
        match &cfg.transport {
            McpTransport::StreamableHttp { url, headers } => Ok(Conn::Http(HttpConn::new(
                how.client.clone(),
                url,
                headers,
                how.auth,
                cfg.timeout,
            )?)),
            McpTransport::Sse { url, headers } => Ok(Conn::Mux(
                MuxConn::sse(how, url, headers, cfg.timeout).await?,
            )),
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => Ok(Conn::Mux(MuxConn::stdio(
                how,
                &cfg.name,
                command,
                args,
                env,
                cwd.as_deref(),
                cfg.timeout,
            )?)),
        }
    }

    /// Sends a request (its id already the upstream's) and waits for its response; messages
    /// that belong to it on the way go to `related`.
    pub async fn request(&self, msg: &Value, related: &Related) -> Result<Value, UpstreamError> {
        match self {
            Conn::Http(c) => c.request(msg, related).await,
            Conn::Mux(c) => c.request(msg).await,
        }
    }

    /// Sends a notification or a response to one of the upstream's requests.
    pub async fn send(&self, msg: Value) -> Result<(), UpstreamError> {
        match self {
            Conn::Http(c) => c.send(msg).await,
            Conn::Mux(c) => c.send(msg).await,
        }
    }

    /// Called once the session is initialized: HTTP upstreams get the negotiated version on
    /// every request and open their GET stream.
    pub async fn initialized(
        &self,
        version: &str,
        inbound: Inbound,
        runtime: &tokio::runtime::Handle,
    ) {
        if let Conn::Http(c) = self {
            c.initialized(version, inbound, runtime).await;
        }
    }

    /// Ends the upstream session (HTTP `DELETE`, the process killed).
    pub async fn close(&self) {
        match self {
            Conn::Http(c) => c.close().await,
            Conn::Mux(c) => c.close(),
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Conn::Http(_) => false,
            Conn::Mux(c) => c.is_closed(),
        }
    }
}

/// The id of a response, as the key its waiter was filed under.
pub(crate) fn id_key(id: &Value) -> String {
    id.to_string()
}
