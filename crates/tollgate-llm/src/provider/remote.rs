//! HTTP providers: `openai` (any OpenAI-compatible API: OpenAI, Azure OpenAI, vLLM, Ollama,
//! Groq, Together, ...) and `anthropic` (the Messages API). A request in the provider's own
//! dialect passes through untouched except for the `model` field; one in another dialect is
//! translated (see [`crate::translate`]) and its response translated back. The client's
//! credentials never reach the upstream.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thread_local::ThreadLocal;
use tollgate_core::config::{HttpSettings, Timeouts};
use tollgate_core::error::ApiError;
use tollgate_core::redact::Echoes;

use super::{error_message, Call, Endpoint, ProviderError, Reply, StreamEnd, Usage};
use crate::stream::{ForwardStream, Prepended, RawUsage};
use crate::translate::{self, Dialect, Loss, Translator};

/// Upstream response headers worth relaying to the client.
fn relay_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "content-type"
        || n == "retry-after"
        || n.starts_with("openai-")
        || n.starts_with("x-ratelimit-")
        || n.starts_with("anthropic-ratelimit-")
}

/// Which API an HTTP provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
    /// Google's Gemini API (`generateContent`).
    Gemini,
    /// Amazon Bedrock's Converse API, SigV4-signed.
    Bedrock,
}

pub struct HttpProvider {
    flavor: Flavor,
    base_url: String,
    api_version: Option<String>,
    headers: HeaderMap,
    /// One connection pool per serving thread, so a request and the upstream connection it
    /// uses share an event loop.
    clients: ThreadLocal<HttpClient>,
    timeouts: Timeouts,
    /// Largest whole (non-streamed) answer read from the upstream (`limits.max_upstream_response_size`).
    max_response: usize,
    /// Pre-built URIs per endpoint (chat, embeddings, responses, messages) for the non-Azure
    /// scheme.
    uris: Option<[Uri; 4]>,
    /// Bedrock: the credentials and region every request is signed with.
    aws: Option<(super::sigv4::Credentials, String)>,
    /// The credentials above, cut out of the upstream's error answers.
    echoes: Echoes,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn build_client(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

impl HttpProvider {
    pub fn new(
        flavor: Flavor,
        s: &HttpSettings,
        timeouts: &Timeouts,
        max_response: usize,
    ) -> Result<HttpProvider, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &s.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
            let mut value =
                HeaderValue::from_str(v.expose()).map_err(|e| format!("header {k}: {e}"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if flavor == Flavor::Bedrock && s.aws.is_none() {
            return Err("kind: bedrock needs AWS credentials".into());
        }
        if flavor == Flavor::Gemini {
            if let Some(key) = &s.api_key {
                let mut value = HeaderValue::from_str(key.expose())
                    .map_err(|_| "api_key contains invalid characters".to_owned())?;
                value.set_sensitive(true);
                headers.insert(HeaderName::from_static("x-goog-api-key"), value);
            }
        }
        if flavor == Flavor::Anthropic {
            let version = s
                .api_version
                .as_deref()
                .unwrap_or(tollgate_core::config::ANTHROPIC_VERSION);
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_str(version)
                    .map_err(|_| "api_version contains invalid characters".to_owned())?,
            );
        }
        if let Some(key) = s
            .api_key
            .as_ref()
            .filter(|_| !matches!(flavor, Flavor::Gemini | Flavor::Bedrock))
        {
            let (name, value) = if flavor == Flavor::Anthropic {
                (
                    HeaderName::from_static("x-api-key"),
                    key.expose().to_owned(),
                )
            } else if s.api_version.is_some() {
                (HeaderName::from_static("api-key"), key.expose().to_owned())
            } else {
                (
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", key.expose()),
                )
            };
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| "api_key contains invalid characters".to_owned())?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let azure = flavor == Flavor::OpenAi && s.api_version.is_some();
        let uris = if !azure {
            let make = |e: Endpoint| {
                format!("{}/{}", s.base_url, e.path())
                    .parse::<Uri>()
                    .map_err(|err| format!("base_url: {err}"))
            };
            Some([
                make(Endpoint::Chat)?,
                make(Endpoint::Embeddings)?,
                make(Endpoint::Responses)?,
                make(Endpoint::Messages)?,
            ])
        } else {
            None
        };
        let mut echoes = Echoes::from_headers(&headers);
        if let Some(a) = &s.aws {
            echoes.add(a.access_key_id.expose().as_bytes());
            echoes.add(a.secret_access_key.expose().as_bytes());
            if let Some(t) = &a.session_token {
                echoes.add(t.expose().as_bytes());
            }
        }
        Ok(HttpProvider {
            echoes,
            flavor,
            base_url: s.base_url.clone(),
            api_version: azure.then(|| s.api_version.clone()).flatten(),
            headers,
            clients: ThreadLocal::new(),
            timeouts: timeouts.clone(),
            max_response,
            uris,
            aws: s.aws.as_ref().map(|a| {
                (
                    super::sigv4::Credentials {
                        access_key_id: a.access_key_id.expose().to_owned(),
                        secret_access_key: a.secret_access_key.expose().to_owned(),
                        session_token: a.session_token.as_ref().map(|t| t.expose().to_owned()),
                    },
                    a.region.clone(),
                )
            }),
        })
    }

    fn uri(&self, endpoint: Endpoint, model: &str, stream: bool) -> Result<Uri, ProviderError> {
        let invalid = |e: http::uri::InvalidUri| {
            ProviderError::Invalid(ApiError::invalid(format!("cannot build upstream URL: {e}")))
        };
        if self.flavor == Flavor::Bedrock {
            let model = percent_encode_segment(model);
            let method = if stream {
                "converse-stream"
            } else {
                "converse"
            };
            return format!("{}/model/{model}/{method}", self.base_url)
                .parse()
                .map_err(invalid);
        }
        if self.flavor == Flavor::Gemini {
            let model = percent_encode_segment(model.trim_start_matches("models/"));
            let method = if stream {
                "streamGenerateContent?alt=sse"
            } else {
                "generateContent"
            };
            return format!("{}/models/{model}:{method}", self.base_url)
                .parse()
                .map_err(invalid);
        }
        if let Some(uris) = &self.uris {
            let i = match endpoint {
                Endpoint::Chat => 0,
                Endpoint::Embeddings => 1,
                Endpoint::Responses => 2,
                Endpoint::Messages => 3,
            };
            return uris
                .get(i)
                .cloned()
                .ok_or_else(|| ProviderError::Protocol("no uri".into()));
        }
        // Azure: the deployment is in the path, the API version in the query.
        let version = self.api_version.as_deref().unwrap_or_default();
        let deployment = percent_encode_segment(model);
        format!(
            "{}/openai/deployments/{deployment}/{}?api-version={}",
            self.base_url,
            endpoint.path(),
            percent_encode_segment(version)
        )
        .parse()
        .map_err(invalid)
    }

    /// The upstream endpoint a client endpoint is served from, and its dialect (none for
    /// embeddings).
    fn route(&self, endpoint: Endpoint) -> Result<(Endpoint, Option<Dialect>), ProviderError> {
        match (self.flavor, endpoint) {
            (Flavor::OpenAi, e) => Ok(match e {
                Endpoint::Messages => (Endpoint::Chat, Some(Dialect::Chat)),
                e => (e, e.dialect()),
            }),
            (Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock, Endpoint::Embeddings) => {
                Err(ProviderError::Invalid(
                    ApiError::invalid(format!(
                        "this model's provider ({}) serves no embeddings here",
                        self.dialect().name()
                    ))
                    .code("unsupported_endpoint"),
                ))
            }
            (Flavor::Anthropic, _) => Ok((Endpoint::Messages, Some(Dialect::Messages))),
            (Flavor::Gemini, e) => Ok((e, Some(Dialect::Gemini))),
            (Flavor::Bedrock, e) => Ok((e, Some(Dialect::Bedrock))),
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Azure OpenAI's deployment scheme.
    pub fn is_azure(&self) -> bool {
        self.api_version.is_some()
    }

    fn dialect(&self) -> Dialect {
        match self.flavor {
            Flavor::OpenAi => Dialect::Chat,
            Flavor::Anthropic => Dialect::Messages,
            Flavor::Gemini => Dialect::Gemini,
            Flavor::Bedrock => Dialect::Bedrock,
        }
    }

    pub async fn call(&self, call: Call<'_>, on_end: StreamEnd) -> Result<Reply, ProviderError> {
        let (upstream_endpoint, upstream_dialect) = self.route(call.endpoint)?;
        // The client's dialect differs from the upstream's: translate both ways.
        let translate = match (call.endpoint.dialect(), upstream_dialect) {
            (Some(from), Some(to)) if from != to => Some((from, to)),
            _ => None,
        };
        let mut loss = Loss::default();
        // A stream is priced from the usage the upstream reports at its end: ask for it when
        // the client did not (and hide it from the client again).
        let strip_usage = translate.is_none()
            && call.envelope.stream
            && call.endpoint == Endpoint::Chat
            && !call.envelope.include_usage;
        let body = if let Some((from, to)) = translate {
            let (req, mut l) =
                translate::decode_request(from, call.body).map_err(ProviderError::Invalid)?;
            let body = translate::encode_request(to, &req, call.upstream_model, &mut l);
            if call.strict && !l.is_empty() {
                return Err(ProviderError::Invalid(strict_refusal(&l, to)));
            }
            loss = l;
            Bytes::from(body)
        } else if strip_usage {
            Bytes::from(call.envelope.with_usage_requested(call.upstream_model))
        } else if call.upstream_model == call.public_model {
            call.body.clone()
        } else {
            Bytes::from(call.envelope.with_model(call.upstream_model))
        };
        let uri = self.uri(upstream_endpoint, call.upstream_model, call.envelope.stream)?;
        let signed_body = self.aws.as_ref().map(|_| body.clone());
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .body(Full::new(body))
            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let headers = req.headers_mut();
        headers.clone_from(&self.headers);
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static(match (call.envelope.stream, self.flavor) {
                (true, Flavor::Bedrock) => "application/vnd.amazon.eventstream",
                (true, _) => "text/event-stream",
                (false, _) => "application/json",
            }),
        );
        if let (Some((creds, region)), Some(body)) = (&self.aws, &signed_body) {
            if let Some(host) = uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(http::header::HOST, host);
            }
            super::sigv4::sign(
                &Method::POST,
                &uri,
                headers,
                body,
                creds,
                region,
                "bedrock",
                &super::sigv4::amz_now(),
            );
        }
        if self.flavor == Flavor::Anthropic {
            if let Some(beta) = call.anthropic_beta {
                headers.insert("anthropic-beta", beta.clone());
            }
        }
        headers.insert("x-request-id", call.ctx.request_id.clone());
        if let Ok(v) = HeaderValue::from_str(&call.ctx.trace.traceparent()) {
            headers.insert(tollgate_core::context::TRACEPARENT, v);
        }
        if let Some(state) = &call.ctx.trace.tracestate {
            headers.insert(tollgate_core::context::TRACESTATE, state.clone());
        }

        let started = Instant::now();
        let mut head_budget = self.timeouts.first_byte.min(self.timeouts.request);
        if let Some(t) = call.first_token {
            head_budget = head_budget.min(t);
        }
        let client = self.clients.get_or(|| build_client(self.timeouts.connect));
        let res = match tokio::time::timeout(head_budget, client.request(req)).await {
            Err(_) => {
                return Err(ProviderError::Timeout {
                    phase: "first byte",
                    after: head_budget,
                })
            }
            Ok(Err(e)) => return Err(classify_client_error(&e, self.timeouts.connect)),
            Ok(Ok(res)) => res,
        };
        let (parts, incoming) = res.into_parts();

        if !parts.status.is_success() {
            let remaining = self.timeouts.request.saturating_sub(started.elapsed());
            let body = read_limited(incoming, remaining, 1024 * 1024)
                .await
                .unwrap_or_default();
            // Relayed to the client and logged: an upstream quoting our key must not.
            let mut body = self.echoes.scrub_bytes(body);
            let message = error_message(&body);
            if let Some((from, _)) = translate {
                // Relayed in the client's dialect, not the upstream's.
                body = translate::error_body(from, parts.status, &body);
            }
            let headers = parts
                .headers
                .iter()
                .filter(|(name, _)| relay_header(name) && *name != http::header::CONTENT_TYPE)
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            return Err(ProviderError::Status {
                status: parts.status,
                message,
                body,
                headers,
            });
        }

        let mut builder = Response::builder().status(parts.status);
        for (name, value) in &parts.headers {
            if relay_header(name) && !(translate.is_some() && name == http::header::CONTENT_TYPE) {
                builder = builder.header(name, value);
            }
        }

        let is_sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.starts_with("text/event-stream")
                    || v.starts_with("application/vnd.amazon.eventstream")
            });
        if call.envelope.stream && is_sse {
            // Hold the response until the first chunk arrives: a stream that breaks or stalls
            // before its first byte reaches the client can still be retried elsewhere.
            let mut incoming = incoming;
            let first =
                match tokio::time::timeout_at((started + head_budget).into(), incoming.frame())
                    .await
                {
                    Err(_) => {
                        return Err(ProviderError::Timeout {
                            phase: "first token",
                            after: head_budget,
                        })
                    }
                    Ok(None) => {
                        return Err(ProviderError::Protocol(
                            "the stream ended before its first event".into(),
                        ))
                    }
                    Ok(Some(Err(e))) => {
                        return Err(ProviderError::Protocol(format!(
                            "the stream broke before its first event: {e}"
                        )))
                    }
                    Ok(Some(Ok(frame))) => frame,
                };
            let upstream = started.elapsed();
            let mut body = ForwardStream::new(
                Prepended::new(first, incoming),
                call.endpoint,
                self.timeouts.idle,
                on_end,
            )
            .strip_usage(strip_usage);
            if let Some((from, to)) = translate {
                body = body.translate(
                    Translator::new(to, from, call.envelope.include_usage)
                        .model(call.upstream_model),
                );
                builder = builder.header(http::header::CONTENT_TYPE, "text/event-stream");
            } else if self.dialect() == Dialect::Messages {
                body = body.translate(Translator::tap(Dialect::Messages));
            }
            let response = builder
                .header(http::header::CACHE_CONTROL, "no-cache")
                .body(Body::new(body))
                .map_err(|e| ProviderError::Protocol(e.to_string()))?;
            return Ok(Reply {
                response,
                upstream,
                usage: None,
                streamed: true,
                loss,
            });
        }

        let remaining = self.timeouts.request.saturating_sub(started.elapsed());
        let body = read_limited(incoming, remaining, self.max_response).await?;
        let upstream = started.elapsed();
        drop(on_end);
        let (body, usage) = match translate {
            Some((from, to)) => {
                let mut rloss = Loss::default();
                let mut res = translate::decode_response(to, &body, &mut rloss)
                    .map_err(ProviderError::Protocol)?;
                if res.model.is_empty() {
                    res.model = call.upstream_model.to_owned();
                }
                let out = translate::encode_response(from, &res, &mut rloss);
                for p in rloss.paths() {
                    loss.add(format!("response.{p}"));
                }
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                (Bytes::from(out), Some(res.usage))
            }
            None => {
                let usage = match self.dialect() {
                    Dialect::Messages => serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("usage").map(translate::messages::usage_from)),
                    _ => {
                        #[derive(serde::Deserialize)]
                        struct WithUsage {
                            usage: Option<RawUsage>,
                        }
                        serde_json::from_slice::<WithUsage>(&body)
                            .ok()
                            .and_then(|w| w.usage)
                            .map(Usage::from)
                    }
                };
                (body, usage)
            }
        };
        let response = builder
            .body(Body::from(body))
            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
        Ok(Reply {
            response,
            upstream,
            usage,
            streamed: false,
            loss,
        })
    }
}

/// The 400 a strict route answers when translation would lose fields.
pub fn strict_refusal(loss: &Loss, target: Dialect) -> ApiError {
    ApiError::invalid(format!(
        "this model's route is strict and its provider ({}) cannot express: {}",
        target.name(),
        loss.header()
    ))
    .code("translation_loss")
    .param(loss.paths().first().cloned().unwrap_or_default())
}

impl HttpProvider {
    /// One active health check: `GET {base_url}{path}` with the provider's credentials. Any
    /// 2xx within `timeout` passes.
    pub async fn health_check(&self, path: &str, timeout: Duration) -> Result<(), String> {
        let uri: Uri = format!("{}{path}", self.base_url)
            .parse()
            .map_err(|e| format!("bad health check URL: {e}"))?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        req.headers_mut().clone_from(&self.headers);
        req.headers_mut().remove(http::header::CONTENT_TYPE);
        let client = self.clients.get_or(|| build_client(self.timeouts.connect));
        match tokio::time::timeout(timeout, client.request(req)).await {
            Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
            Ok(Err(e)) => Err(classify_client_error(&e, self.timeouts.connect).to_string()),
            Ok(Ok(res)) if res.status().is_success() => Ok(()),
            Ok(Ok(res)) => Err(format!("answered {}", res.status())),
        }
    }
}

async fn read_limited(
    body: hyper::body::Incoming,
    within: Duration,
    limit: usize,
) -> Result<Bytes, ProviderError> {
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ProviderError::Timeout {
            phase: "whole request",
            after: within,
        }),
        Ok(Err(e)) => Err(ProviderError::Protocol(format!("reading body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn classify_client_error(
    e: &hyper_util::client::legacy::Error,
    connect: Duration,
) -> ProviderError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_connect() {
        if msg.contains("timed out") || msg.contains("timeout") {
            return ProviderError::Timeout {
                phase: "connect",
                after: connect,
            };
        }
        ProviderError::Connect(msg)
    } else {
        ProviderError::Protocol(msg)
    }
}

fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
