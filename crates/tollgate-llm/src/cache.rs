//! The exact response cache: an answer is kept, per tenant, under the hash of the normalised
//! request, and replayed (as JSON or as a stream, in the client's API) when the same request
//! comes again.
//!
//! Answers are stored in the intermediate form ([`crate::translate::Response`]), so a streamed
//! answer can answer a JSON request and the other way round. Bounded by memory (TinyLFU
//! admission, `moka`), each entry living its route's TTL. With Redis configured, entries are
//! also shared by every replica (the local cache in front, filled for what an entry has left to
//! live); Redis failing makes lookups miss, never fail.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_core::config::{CacheScope, CacheWhen, RouteCache};
use tollgate_core::identity::Principal;
use tollgate_core::redis_store::SharedBlobs;

use crate::provider::Endpoint;
use crate::translate::{self, replay::Assembler, Dialect, Event, StreamDecoder};

/// `x-tollgate-cache` on requests (`no-cache`, `no-store`, `refresh`) and responses (`hit`,
/// `miss`).
pub const HEADER: HeaderName = HeaderName::from_static("x-tollgate-cache");

/// Request fields that do not change the answer: who asked, how it is delivered, what is
/// stored about it.
pub(crate) const IGNORED: &[&str] = &[
    "model",
    "user",
    "metadata",
    "stream",
    "stream_options",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];

pub struct Entry {
    pub response: translate::Response,
    /// What the answer cost when it was bought.
    pub cost_usd: f64,
    ttl: Duration,
    size: u32,
}

struct Ttl;

impl moka::Expiry<[u8; 32], Arc<Entry>> for Ttl {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct ResponseCache {
    entries: moka::sync::Cache<[u8; 32], Arc<Entry>>,
    max_size: u64,
    shared: Option<Arc<dyn SharedBlobs>>,
}

/// An entry as replicas share it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Stored {
    pub response: translate::Response,
    pub cost_usd: f64,
}

fn shared_key(key: &[u8; 32]) -> String {
    let mut s = String::with_capacity(6 + 64);
    s.push_str("cache:");
    tollgate_core::hex::push(&mut s, key);
    s
}

impl ResponseCache {
    pub fn new(max_size: u64, shared: Option<Arc<dyn SharedBlobs>>) -> ResponseCache {
        ResponseCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_size)
                .weigher(|_, e: &Arc<Entry>| e.size)
                .expire_after(Ttl)
                .build(),
            max_size,
            shared,
        }
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// This replica's entry, else the shared one (kept here for what it has left to live).
    pub async fn get(&self, key: &[u8; 32]) -> Option<Arc<Entry>> {
        if let Some(e) = self.entries.get(key) {
            return Some(e);
        }
        let shared = self.shared.as_ref()?;
        let (bytes, left) = match shared.get(&shared_key(key)).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(error = %e, "shared response cache unavailable: answering from upstream");
                return None;
            }
        };
        let stored: Stored = serde_json::from_slice(&bytes).ok()?;
        Some(self.keep(*key, stored.response, stored.cost_usd, left))
    }

    fn keep(
        &self,
        key: [u8; 32],
        response: translate::Response,
        cost_usd: f64,
        ttl: Duration,
    ) -> Arc<Entry> {
        let size = approximate_size(&response);
        let entry = Arc::new(Entry {
            response,
            cost_usd,
            ttl,
            size,
        });
        self.entries.insert(key, entry.clone());
        entry
    }

    /// Keeps an answer here and, off the request path, for every replica.
    pub fn insert(
        &self,
        key: [u8; 32],
        response: translate::Response,
        cost_usd: f64,
        ttl: Duration,
    ) {
        let entry = self.keep(key, response, cost_usd, ttl);
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&Stored {
            response: entry.response.clone(),
            cost_usd,
        }) else {
            return;
        };
        let put = async move {
            if let Err(e) = shared.put(&shared_key(&key), &bytes, ttl).await {
                tracing::warn!(error = %e, "could not share a cached response");
            }
        };
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(put);
        }
    }
}

fn approximate_size(r: &translate::Response) -> u32 {
    use translate::BlockKind;
    let mut n = 256 + r.id.len() + r.model.len();
    for b in &r.content {
        n += 64
            + match &b.kind {
                BlockKind::Text(t) => t.len(),
                BlockKind::Thinking { text, signature } => {
                    text.len() + signature.as_ref().map_or(0, String::len)
                }
                BlockKind::RedactedThinking { data } => data.len(),
                BlockKind::ToolCall {
                    id,
                    name,
                    arguments,
                } => id.len() + name.len() + arguments.len(),
                BlockKind::Image(_) | BlockKind::ToolResult { .. } => 0,
            };
    }
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What the cache does for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub key: [u8; 32],
    /// Answer from the cache if it can.
    pub read: bool,
    /// Keep the answer if the upstream gives one.
    pub write: bool,
    pub ttl: Duration,
}

/// The plan for a request to a group with a cache, or none when the request does not qualify
/// or the client said `no-store`.
pub fn plan(
    cfg: &RouteCache,
    route: &str,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    principal: &Principal,
) -> Option<Plan> {
    // Responses API answers are not decoded by the gateway; embeddings are not generated text.
    if !matches!(endpoint, Endpoint::Chat | Endpoint::Messages) {
        return None;
    }
    let (mut read, mut write) = (true, true);
    for directive in headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .chain(headers.get_all(&HEADER))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        match directive.to_ascii_lowercase().as_str() {
            "no-store" => (read, write) = (false, false),
            "no-cache" | "refresh" => read = false,
            _ => {}
        }
    }
    if !read && !write {
        return None;
    }
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    if cfg.when == CacheWhen::TemperatureZero
        && req.get("temperature").and_then(Value::as_f64) != Some(0.0)
    {
        return None;
    }
    for field in IGNORED {
        req.remove(*field);
    }
    let mut canonical = Vec::with_capacity(body.len());
    tollgate_core::canonical::write(&Value::Object(req), &mut canonical);
    let key = digest(&[
        namespace(cfg.scope, principal).as_bytes(),
        route.as_bytes(),
        endpoint.name().as_bytes(),
        &canonical,
    ]);
    Some(Plan {
        key,
        read,
        write,
        ttl: cfg.ttl,
    })
}

/// Who a cached answer belongs to, as the route's scope says.
pub(crate) fn namespace(scope: CacheScope, principal: &Principal) -> String {
    match scope {
        CacheScope::Global => "global".to_owned(),
        CacheScope::Team => match &principal.team {
            Some(t) => format!("team:{t}"),
            None => format!("key:{}", principal.label()),
        },
        CacheScope::User => match &principal.user {
            Some(u) => format!("user:{u}"),
            None => format!("key:{}", principal.label()),
        },
        CacheScope::Key => format!("key:{}", principal.label()),
    }
}

/// SHA-256 over length-prefixed parts (so no two lists of parts hash alike).
pub(crate) fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The client's dialect for a cached endpoint.
pub fn dialect(endpoint: Endpoint) -> Option<Dialect> {
    match endpoint {
        Endpoint::Chat => Some(Dialect::Chat),
        Endpoint::Messages => Some(Dialect::Messages),
        Endpoint::Responses | Endpoint::Embeddings => None,
    }
}

/// A cached answer as the client asked for it: JSON, or a stream replayed in pieces.
pub fn respond(
    response: &translate::Response,
    dialect: Dialect,
    stream: bool,
    include_usage: bool,
) -> Result<Response, http::Error> {
    if !stream {
        let body = translate::encode_response(dialect, response, &mut Default::default());
        return Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body));
    }
    let mut encoder = translate::stream_encoder(dialect, include_usage);
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
        translate::replay::events(response, 64)
            .iter()
            .map(|ev| {
                let mut out = Vec::new();
                encoder.encode(ev, &mut out);
                Ok(Bytes::from(out))
            })
            .filter(|b| b.as_ref().is_ok_and(|b| !b.is_empty()))
            .collect();
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
}

/// Called with the answer once a response body completes cleanly.
pub type Fill = Box<dyn FnOnce(translate::Response) + Send>;

/// Tees a streamed answer into the cache: the client gets every frame as it comes; if the
/// stream completes, the assembled answer is handed to `fill`.
pub struct StreamFill<B> {
    inner: B,
    decoder: Box<dyn StreamDecoder>,
    assembler: Option<Assembler>,
    events: Vec<Event>,
    fill: Option<Fill>,
}

impl<B> StreamFill<B> {
    pub fn new(inner: B, dialect: Dialect, fill: Fill) -> Self {
        StreamFill {
            inner,
            decoder: translate::stream_decoder(dialect),
            assembler: Some(Assembler::default()),
            events: Vec::new(),
            fill: Some(fill),
        }
    }
}

impl<B> StreamFill<B> {
    /// The stream ended: a complete answer goes to the cache.
    fn complete(&mut self) {
        let Some(mut a) = self.assembler.take() else {
            return;
        };
        self.decoder.finish(&mut self.events);
        for ev in self.events.drain(..) {
            a.push(&ev);
        }
        if let (Some(res), Some(fill)) = (a.finish(), self.fill.take()) {
            fill(res);
        }
    }
}

impl<B> http_body::Body for StreamFill<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(a)) = (frame.data_ref(), this.assembler.as_mut()) {
                    this.decoder.feed(data, &mut this.events);
                    for ev in this.events.drain(..) {
                        a.push(&ev);
                    }
                }
                // A body that knows it has ended is not polled again.
                if this.inner.is_end_stream() {
                    this.complete();
                }
            }
            Poll::Ready(None) => this.complete(),
            Poll::Ready(Some(Err(_))) => this.assembler = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `x-tollgate-cache: hit` or `miss`.
pub fn mark(headers: &mut HeaderMap, hit: bool) {
    headers.insert(
        HEADER,
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(team: Option<&str>) -> Principal {
        let mut p = Principal::master();
        p.team = team.map(str::to_owned);
        p
    }

    fn key(body: &str, team: Option<&str>, headers: &HeaderMap) -> Option<[u8; 32]> {
        let cfg = RouteCache {
            ttl: Duration::from_secs(60),
            scope: CacheScope::Team,
            when: CacheWhen::Always,
            semantic: None,
        };
        plan(
            &cfg,
            "g",
            Endpoint::Chat,
            headers,
            body.as_bytes(),
            &principal(team),
        )
        .map(|p| p.key)
    }

    #[test]
    fn the_key_ignores_order_and_delivery_but_not_content_or_tenant() {
        let h = HeaderMap::new();
        let a = key(
            r#"{"model":"x","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            Some("t"),
            &h,
        );
        let b = key(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0,"stream":true,"user":"u","model":"alias"}"#,
            Some("t"),
            &h,
        );
        assert!(a.is_some());
        assert_eq!(
            a, b,
            "field order, stream, user and model name do not matter"
        );
        let c = key(
            r#"{"model":"x","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#,
            Some("t"),
            &h,
        );
        assert_ne!(a, c, "sampling matters");
        let d = key(
            r#"{"model":"x","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            Some("other"),
            &h,
        );
        assert_ne!(a, d, "another team never shares");
        let mut no_store = HeaderMap::new();
        no_store.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        assert!(key(r#"{"messages":[]}"#, None, &no_store).is_none());
    }
}
