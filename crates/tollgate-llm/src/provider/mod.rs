//! Providers: where a model call goes. Each provider turns a [`Call`] into a response in the
//! client's dialect, or a [`ProviderError`] that this module alone maps to the gateway's
//! [`ApiError`].

mod mock;
mod remote;
pub mod sigv4;

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use tollgate_core::config::{ProviderConfig, ProviderKind};
use tollgate_core::error::{ApiError, ErrorKind};

use crate::envelope::Envelope;
use crate::translate::{Dialect, Loss};

pub use mock::MockProvider;
pub use remote::{Flavor, HttpProvider};

/// The API endpoints the model layer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Embeddings,
    Responses,
    /// Anthropic's `/v1/messages`.
    Messages,
}

impl Endpoint {
    /// The name policies see as `request.endpoint`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// The wire dialect of a generation endpoint (`None` for embeddings).
    pub fn dialect(self) -> Option<Dialect> {
        match self {
            Endpoint::Chat => Some(Dialect::Chat),
            Endpoint::Responses => Some(Dialect::Responses),
            Endpoint::Messages => Some(Dialect::Messages),
            Endpoint::Embeddings => None,
        }
    }
}

/// One call to a provider.
pub struct Call<'a> {
    pub endpoint: Endpoint,
    /// The name the client sent.
    pub public_model: &'a str,
    /// The name the provider expects.
    pub upstream_model: &'a str,
    pub envelope: &'a Envelope<'a>,
    /// The request body exactly as received.
    pub body: &'a Bytes,
    /// Request id, trace and conversation, propagated upstream.
    pub ctx: &'a tollgate_core::context::RequestContext,
    /// The target's time-to-first-token bound: to the first streamed chunk, or to the response
    /// head when not streaming. Tighter than the provider's `first_byte` timeout.
    pub first_token: Option<Duration>,
    /// Refuse a request that would lose fields in translation instead of reporting the loss.
    pub strict: bool,
    /// The client's `anthropic-beta` header, passed to Anthropic upstreams.
    pub anthropic_beta: Option<&'a http::HeaderValue>,
}

/// Token usage reported by a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens served from the provider's prompt cache (included in `prompt`).
    pub cached: u64,
    /// Reasoning tokens (included in `completion`).
    pub reasoning: u64,
    /// Prompt tokens written to the provider's prompt cache (included in `prompt`).
    pub cache_write: u64,
}

/// A provider's answer: the response to send, and what it cost in time and tokens so far.
pub struct Reply {
    pub response: Response,
    /// Time spent waiting on the upstream before the response head was ready.
    pub upstream: Duration,
    /// Known for non-streaming replies; streams report usage when they end.
    pub usage: Option<Usage>,
    /// The body is a stream whose end hook runs when it finishes.
    pub streamed: bool,
    /// What translation could not carry: request fields by their path in the client's
    /// request, response fields prefixed `response.`.
    pub loss: Loss,
}

/// Called once when a streamed reply ends, with whatever usage its tail reported.
pub type StreamEnd = Box<dyn FnOnce(StreamOutcome) + Send + 'static>;

#[derive(Debug, Clone, Default)]
pub struct StreamOutcome {
    pub usage: Option<Usage>,
    /// The upstream failed or went idle mid-stream.
    pub failed: bool,
    /// The client went away before the end.
    pub cancelled: bool,
    /// When the stream reported no usage: its `data:` lines, to count what it generated
    /// (see [`crate::tokens::generated_text`]).
    pub transcript: Option<Vec<u8>>,
    /// When the stream reported no usage and was read by a translator: the text it generated.
    pub generated: Option<String>,
    /// Stream fields the client's dialect could not carry.
    pub loss: Loss,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot reach upstream: {0}")]
    Connect(String),
    #[error("upstream did not answer within {after:?} ({phase})")]
    Timeout {
        phase: &'static str,
        after: Duration,
    },
    #[error("upstream answered {status}: {message}")]
    Status {
        status: StatusCode,
        message: String,
        body: Bytes,
        /// Upstream headers worth relaying (`retry-after`, rate-limit state).
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    #[error("upstream sent an unusable response: {0}")]
    Protocol(String),
    /// The request is invalid for this provider; the client must change it.
    #[error("{0}")]
    Invalid(ApiError),
}

impl ProviderError {
    /// The upstream's `Retry-After`, in seconds or as an HTTP date.
    pub fn retry_after(&self) -> Option<Duration> {
        let ProviderError::Status { headers, .. } = self else {
            return None;
        };
        let value = headers
            .iter()
            .find(|(n, _)| n == http::header::RETRY_AFTER)?
            .1
            .to_str()
            .ok()?
            .trim();
        if let Ok(secs) = value.parse::<f64>() {
            return (secs.is_finite() && secs >= 0.0)
                .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        Some(
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
        )
    }

    /// The machine-readable `error.code` (or `error.type`) of an upstream error body.
    pub fn upstream_code(&self) -> Option<String> {
        let ProviderError::Status { body, .. } = self else {
            return None;
        };
        error_code(body)
    }

    /// The one mapping from provider failures to what the client sees.
    pub fn into_api_error(self, provider: &str) -> ApiError {
        match self {
            ProviderError::Connect(e) => ApiError::new(
                ErrorKind::Upstream,
                format!("provider {provider:?} is unreachable: {e}"),
            )
            .code("upstream_unreachable"),
            ProviderError::Timeout { phase, after } => ApiError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "provider {provider:?} did not answer within {}ms ({phase})",
                    after.as_millis()
                ),
            )
            .code("upstream_timeout"),
            ProviderError::Status {
                status,
                message,
                body,
                headers,
            } => Self::status_error(provider, status, message, body).with_upstream_headers(headers),
            ProviderError::Protocol(e) => ApiError::new(
                ErrorKind::Upstream,
                format!("provider {provider:?} sent an unusable response: {e}"),
            )
            .code("upstream_protocol_error"),
            ProviderError::Invalid(e) => e,
        }
    }

    fn status_error(provider: &str, status: StatusCode, message: String, body: Bytes) -> ApiError {
        // Relay the upstream's own body only when it is an OpenAI-shaped error; an HTML page or
        // an empty body (a wrong base_url, a proxy in the way) is the gateway's problem.
        let relayable = is_openai_error(&body);
        match status.as_u16() {
                429 if relayable => ApiError::relay(ErrorKind::RateLimited, status, message, body),
                429 => ApiError::new(ErrorKind::RateLimited, format!("provider {provider:?} is rate limiting: {message}"))
                    .code("upstream_rate_limited"),
                // The client's request is at fault: relay the upstream's own answer.
                400 | 404 | 409 | 413 | 422 if relayable => {
                    ApiError::relay(ErrorKind::InvalidRequest, status, message, body)
                }
                // The gateway's credentials or configuration are at fault, not the client's.
                401 | 403 => ApiError::new(
                    ErrorKind::Upstream,
                    format!(
                        "provider {provider:?} rejected the gateway's credentials (upstream status {}): {message}",
                        status.as_u16()
                    ),
                )
                .code("upstream_auth_failed"),
                s => ApiError::new(
                    ErrorKind::Upstream,
                    format!("provider {provider:?} failed (upstream status {s}): {message}"),
                )
                .code("upstream_error"),
        }
    }
}

/// Whether a body is a JSON object with an `error` member, the OpenAI error shape.
pub fn is_openai_error(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        error: Option<&'a serde_json::value::RawValue>,
    }
    matches!(
        serde_json::from_slice::<Probe>(body),
        Ok(Probe { error: Some(_) })
    )
}

/// The `error.code` of an OpenAI-shaped error body, or its `error.type` when there is no code.
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: Option<serde_json::Value>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let Outer { error } = serde_json::from_slice(body).ok()?;
    match error.code {
        Some(serde_json::Value::String(c)) => Some(c),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => error.kind,
    }
}

/// Extracts the human message from an OpenAI-shaped error body, or a short excerpt.
pub fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Inner {
        Obj { message: String },
        Str(String),
    }
    /// AWS services answer `{"message": ...}` (or `Message`).
    #[derive(serde::Deserialize)]
    struct Aws {
        #[serde(alias = "Message")]
        message: String,
    }
    if let Ok(Aws { message }) = serde_json::from_slice::<Aws>(body) {
        return message;
    }
    match serde_json::from_slice::<Outer>(body) {
        Ok(Outer {
            error: Inner::Obj { message } | Inner::Str(message),
        }) => message,
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            if text.trim().is_empty() {
                "(empty body)".to_owned()
            } else {
                text.trim().to_owned()
            }
        }
    }
}

pub enum Provider {
    Http(Box<HttpProvider>),
    Mock(MockProvider),
}

impl Provider {
    /// The `gen_ai.provider.name` of this provider's spans.
    pub fn otel_name(&self) -> &'static str {
        match self {
            Provider::Http(p) => match p.flavor() {
                Flavor::OpenAi if p.is_azure() => "azure.ai.openai",
                Flavor::OpenAi => "openai",
                Flavor::Anthropic => "anthropic",
                Flavor::Gemini => "gcp.gemini",
                Flavor::Bedrock => "aws.bedrock",
            },
            Provider::Mock(_) => "tollgate.mock",
        }
    }

    /// `max_response`: the largest whole answer read from an HTTP upstream.
    pub fn build(cfg: &ProviderConfig, max_response: usize) -> Result<Provider, String> {
        Ok(match &cfg.kind {
            ProviderKind::OpenAi(s) | ProviderKind::Azure(s) => Provider::Http(Box::new(
                HttpProvider::new(Flavor::OpenAi, s, &cfg.timeouts, max_response)?,
            )),
            ProviderKind::Bedrock(s) => Provider::Http(Box::new(HttpProvider::new(
                Flavor::Bedrock,
                s,
                &cfg.timeouts,
                max_response,
            )?)),
            ProviderKind::Gemini(s) => Provider::Http(Box::new(HttpProvider::new(
                Flavor::Gemini,
                s,
                &cfg.timeouts,
                max_response,
            )?)),
            ProviderKind::Anthropic(s) => Provider::Http(Box::new(HttpProvider::new(
                Flavor::Anthropic,
                s,
                &cfg.timeouts,
                max_response,
            )?)),
            ProviderKind::Mock(s) => Provider::Mock(MockProvider::new(s.clone())),
        })
    }

    /// An active health check; the mock is always up.
    pub async fn health_check(&self, path: &str, timeout: Duration) -> Result<(), String> {
        match self {
            Provider::Http(p) => p.health_check(path, timeout).await,
            Provider::Mock(_) => Ok(()),
        }
    }

    pub async fn call(&self, call: Call<'_>, on_end: StreamEnd) -> Result<Reply, ProviderError> {
        match self {
            Provider::Http(p) => p.call(call, on_end).await,
            Provider::Mock(p) => p.call(call, on_end).await,
        }
    }
}

/// A provider with its config name, shared by every route that targets it.
pub struct NamedProvider {
    pub name: Arc<str>,
    pub provider: Provider,
    /// Set while the provider's active health check fails.
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let err = |s: u16| {
            ProviderError::Status {
                status: StatusCode::from_u16(s).unwrap(),
                message: "boom".into(),
                body: Bytes::from_static(b"{\"error\":{\"message\":\"boom\"}}"),
                headers: Vec::new(),
            }
            .into_api_error("p")
        };
        let html_404 = ProviderError::Status {
            status: StatusCode::NOT_FOUND,
            message: "404 page not found".into(),
            body: Bytes::from_static(b"404 page not found"),
            headers: Vec::new(),
        }
        .into_api_error("p");
        assert_eq!(
            html_404.status(),
            StatusCode::BAD_GATEWAY,
            "not the client's fault"
        );
        assert!(html_404.relay_body().is_none());
        assert_eq!(err(503).status(), StatusCode::BAD_GATEWAY);
        assert!(err(503).message.contains("503"));
        assert_eq!(err(429).status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err(400).status(), StatusCode::BAD_REQUEST);
        assert!(err(400).relay_body().is_some());
        assert_eq!(err(401).status(), StatusCode::BAD_GATEWAY);
        let t = ProviderError::Timeout {
            phase: "first byte",
            after: Duration::from_secs(1),
        }
        .into_api_error("p");
        assert_eq!(t.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn messages() {
        assert_eq!(error_message(br#"{"error":{"message":"bad"}}"#), "bad");
        assert_eq!(error_message(br#"{"error":"flat"}"#), "flat");
        assert_eq!(error_message(b"<html>oops</html>"), "<html>oops</html>");
    }
}
