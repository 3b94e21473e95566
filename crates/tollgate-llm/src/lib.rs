//! The model layer: an OpenAI-compatible API (`/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/responses`, `/v1/models`) in front of configured providers.
//!
//! Each request runs the same named phases: authenticate, read the body, parse the envelope,
//! authorize the model, route to a target, call the provider, and hand the response back with a
//! tag for the shell's metrics. Routing state is an immutable snapshot swapped on reload.

pub mod envelope;
pub mod provider;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::json;
use tollgate_core::audit::AuditEvent;
use tollgate_core::config::{Config, ProviderConfig};
use tollgate_core::context::{RequestContext, TraceContext};
use tollgate_core::error::{ApiError, ErrorKind};
use tollgate_core::http::{json_response, read_body, PathParam, ResponseTag};
use tollgate_core::identity::Principal;
use tollgate_core::policy::{self, Decision, Policy};
use tollgate_core::Core;

use crate::envelope::Envelope;
use crate::provider::{Call, Endpoint, NamedProvider, Provider, StreamOutcome};

/// A public model name and where it may be served.
pub struct ModelRoute {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
}

pub struct Target {
    pub provider: Arc<NamedProvider>,
    pub model: Arc<str>,
}

/// Everything the layer derives from config, swapped whole on reload.
pub struct LlmState {
    policy: Policy,
    /// Each provider with the config it was built from, for reuse across reloads.
    providers: HashMap<String, (ProviderConfig, Arc<NamedProvider>)>,
    models: HashMap<String, Arc<ModelRoute>>,
    /// Model names in config order, for `/v1/models`.
    order: Vec<Arc<ModelRoute>>,
}

impl LlmState {
    /// Builds routing from config. Providers whose config is unchanged from `previous` are
    /// reused, keeping their upstream connection pools (and TLS sessions) across reloads.
    pub fn build(config: &Config, previous: Option<&LlmState>) -> Result<LlmState, String> {
        let mut providers = HashMap::new();
        for p in &config.providers {
            let kept = previous
                .and_then(|prev| prev.providers.get(&p.name))
                .filter(|(cfg, _)| cfg == p)
                .map(|(_, provider)| provider.clone());
            let provider = match kept {
                Some(provider) => provider,
                None => {
                    let built =
                        Provider::build(p).map_err(|e| format!("provider {:?}: {e}", p.name))?;
                    Arc::new(NamedProvider {
                        name: Arc::from(p.name.as_str()),
                        provider: built,
                    })
                }
            };
            providers.insert(p.name.clone(), (p.clone(), provider));
        }
        let mut models = HashMap::new();
        let mut order = Vec::new();
        for m in &config.models {
            let mut targets = Vec::new();
            for t in &m.targets {
                let provider = providers
                    .get(&t.provider)
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| {
                        format!("model {:?}: unknown provider {:?}", m.name, t.provider)
                    })?;
                targets.push(Target {
                    provider,
                    model: Arc::from(t.model.as_str()),
                });
            }
            let route = Arc::new(ModelRoute {
                name: Arc::from(m.name.as_str()),
                targets,
            });
            models.insert(m.name.clone(), route.clone());
            order.push(route);
        }
        let policy = Policy::compile(&config.policies).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(LlmState {
            policy,
            providers,
            models,
            order,
        })
    }
}

pub struct LlmLayer {
    core: Arc<Core>,
    state: ArcSwap<LlmState>,
}

impl LlmLayer {
    pub fn new(core: Arc<Core>, config: &Config) -> Result<Arc<LlmLayer>, String> {
        Ok(Arc::new(LlmLayer {
            core,
            state: ArcSwap::from_pointee(LlmState::build(config, None)?),
        }))
    }

    /// Rebuilds routing from a new config. In-flight requests keep the snapshot they loaded.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let state = LlmState::build(config, Some(&self.state.load()))?;
        self.state.store(Arc::new(state));
        Ok(())
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/responses", post(responses))
            .route("/v1/models", get(list_models))
            .route("/v1/models/{*model}", get(get_model))
            .with_state(self.clone())
    }
}

async fn chat(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    serve(&layer, Endpoint::Chat, req).await
}

async fn embeddings(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    serve(&layer, Endpoint::Embeddings, req).await
}

async fn responses(State(layer): State<Arc<LlmLayer>>, req: Request) -> Response {
    serve(&layer, Endpoint::Responses, req).await
}

async fn serve(layer: &LlmLayer, endpoint: Endpoint, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The shell always provides the context; a bare router (in tests) gets a fresh one.
    let ctx = parts
        .extensions
        .get::<RequestContext>()
        .cloned()
        .unwrap_or_else(|| RequestContext {
            request_id: http::HeaderValue::from_static("-"),
            trace: TraceContext::from_headers(&parts.headers),
            conversation_id: None,
        });
    match call_model(layer, endpoint, &parts.headers, body, &ctx).await {
        Ok(res) => res,
        Err((err, tag)) => {
            let mut res = err.into_response();
            if let Some(tag) = tag {
                res.extensions_mut().insert(tag);
            }
            res
        }
    }
}

type Failure = (ApiError, Option<ResponseTag>);

/// authenticate -> read -> parse -> authorize (key patterns, then policy) -> route -> call.
async fn call_model(
    layer: &LlmLayer,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    ctx: &RequestContext,
) -> Result<Response, Failure> {
    let request_id = ctx.request_id();
    let start_ns = tollgate_core::otlp::now_ns();
    let core = &layer.core;
    let principal = core.authenticate(headers).await.map_err(|e| (e, None))?;
    let config = core.config();
    let bytes = read_body(headers, body, &config.limits)
        .await
        .map_err(|e| (e, None))?;
    let envelope = Envelope::parse(&bytes).map_err(|e| (e, None))?;
    let state = layer.state.load_full();
    let route = authorize(&state, &principal, &envelope.model).map_err(|e| (e, None))?;
    let Some(target) = route.targets.first() else {
        return Err((
            ApiError::internal(format!("model {:?} has no targets", route.name)),
            None,
        ));
    };
    let tag = ResponseTag {
        model: Some(route.name.clone()),
        provider: Some(target.provider.name.clone()),
        upstream: Default::default(),
    };
    let redact = decide(
        core,
        &state.policy,
        &principal,
        endpoint,
        &route,
        target,
        &envelope,
        bytes.len(),
        ctx,
    )
    .map_err(|e| (e, Some(tag.clone())))?;
    // Redaction changes the body: rebuild it, then read the envelope of what is actually sent.
    let rebuilt = redact.map(|paths| Bytes::from(envelope.rebuild(&envelope.model, &paths)));
    let (body, envelope) = match &rebuilt {
        Some(b) => (b, Envelope::parse(b).map_err(|e| (e, None))?),
        None => (&bytes, envelope),
    };
    if endpoint == Endpoint::Embeddings && envelope.stream {
        return Err((
            ApiError::invalid("embeddings cannot be streamed").param("stream"),
            Some(tag),
        ));
    }

    let started = Instant::now();
    let span = core.tracer.sampled(&ctx.trace).then(|| SpanStart {
        trace: ctx.trace.clone(),
        start_ns,
        endpoint,
        model: route.name.clone(),
        upstream_model: target.model.clone(),
        provider: target.provider.name.clone(),
        provider_kind: target.provider.provider.otel_name(),
        key_id: principal.label(),
        team: principal.team.clone(),
        conversation_id: ctx.conversation_id.clone(),
    });
    let on_end = {
        let core = core.clone();
        let model = route.name.clone();
        let provider = target.provider.name.clone();
        let span = span.clone();
        Box::new(move |outcome: StreamOutcome| {
            if let Some(span) = span {
                let error = (outcome.failed || outcome.cancelled).then(|| {
                    if outcome.failed {
                        "upstream stream failed"
                    } else {
                        "client cancelled"
                    }
                    .to_owned()
                });
                core.tracer.record(span.finish(outcome.usage, 200, error));
            }
            if let Some(u) = outcome.usage {
                core.metrics
                    .record_tokens(&model, &provider, u.prompt, u.completion);
            }
            let labels = tollgate_core::metrics::UpstreamLabels {
                provider: (&provider).into(),
                model: (&model).into(),
            };
            if outcome.failed {
                core.metrics.stream_errors.get_or_create(&labels).inc();
            }
            if outcome.cancelled {
                core.metrics.streams_cancelled.get_or_create(&labels).inc();
            }
        })
    };
    let call = Call {
        endpoint,
        public_model: &route.name,
        upstream_model: &target.model,
        envelope: &envelope,
        body,
        ctx,
    };
    match target.provider.provider.call(call, on_end).await {
        Ok(reply) => {
            let mut res = reply.response;
            core.metrics
                .record_upstream(&target.provider.name, &route.name, reply.upstream);
            // Streams finish their span when they end (see `on_end`).
            if let (Some(span), false) = (&span, reply.streamed) {
                core.tracer
                    .record(span.finish(reply.usage, res.status().as_u16(), None));
            }
            if let Some(u) = reply.usage {
                core.metrics.record_tokens(
                    &route.name,
                    &target.provider.name,
                    u.prompt,
                    u.completion,
                );
            }
            res.extensions_mut().insert(ResponseTag {
                upstream: reply.upstream,
                ..tag
            });
            Ok(res)
        }
        Err(e) => {
            let upstream = started.elapsed();
            core.metrics
                .record_upstream(&target.provider.name, &route.name, upstream);
            let err = e.into_api_error(&target.provider.name);
            if let Some(span) = &span {
                core.tracer.record(span.finish(
                    None,
                    err.status().as_u16(),
                    Some(err.message.clone()),
                ));
            }
            if err.kind != ErrorKind::InvalidRequest {
                tracing::warn!(request_id, provider = %target.provider.name, model = %route.name, error = %err.message, "upstream call failed");
            }
            Err((err, Some(ResponseTag { upstream, ..tag })))
        }
    }
}

/// What a model call's span needs, captured when the call starts.
#[derive(Clone)]
struct SpanStart {
    trace: TraceContext,
    start_ns: u64,
    endpoint: Endpoint,
    model: Arc<str>,
    upstream_model: Arc<str>,
    provider: Arc<str>,
    provider_kind: &'static str,
    key_id: String,
    team: Option<String>,
    conversation_id: Option<String>,
}

impl SpanStart {
    /// The GenAI-convention span: `chat {model}` (or `embeddings {model}`).
    fn finish(
        &self,
        usage: Option<provider::Usage>,
        status: u16,
        error: Option<String>,
    ) -> tollgate_core::otlp::Span {
        use tollgate_core::otlp::KeyValue as Kv;
        let operation = match self.endpoint {
            Endpoint::Embeddings => "embeddings",
            Endpoint::Chat | Endpoint::Responses => "chat",
        };
        let mut attrs = vec![
            Kv::string("gen_ai.operation.name", operation),
            Kv::string("gen_ai.provider.name", self.provider_kind),
            Kv::string("gen_ai.request.model", &*self.model),
            Kv::string("gen_ai.response.model", &*self.upstream_model),
            Kv::string("tollgate.provider", &*self.provider),
            Kv::string("tollgate.key_id", &self.key_id),
            Kv::int("http.response.status_code", i64::from(status)),
        ];
        if let Some(u) = usage {
            attrs.push(Kv::int(
                "gen_ai.usage.input_tokens",
                i64::try_from(u.prompt).unwrap_or(i64::MAX),
            ));
            attrs.push(Kv::int(
                "gen_ai.usage.output_tokens",
                i64::try_from(u.completion).unwrap_or(i64::MAX),
            ));
        }
        if let Some(team) = &self.team {
            attrs.push(Kv::string("tollgate.team", team));
        }
        if let Some(c) = &self.conversation_id {
            attrs.push(Kv::string("gen_ai.conversation.id", c));
            attrs.push(Kv::string("tollgate.conversation_id", c));
        }
        if let Some(e) = &error {
            attrs.push(Kv::string("error.type", e));
        }
        tollgate_core::otlp::span_for(
            &self.trace,
            format!("{operation} {}", self.model),
            self.start_ns,
            tollgate_core::otlp::now_ns(),
            attrs,
            error,
        )
    }
}

/// Runs the policy. Returns the fields to redact, if any; denials are audited and become 403.
#[expect(
    clippy::too_many_arguments,
    reason = "the request path's parts, passed as borrowed pieces"
)]
fn decide(
    core: &Core,
    policy: &Policy,
    principal: &Principal,
    endpoint: Endpoint,
    route: &ModelRoute,
    target: &Target,
    envelope: &Envelope<'_>,
    body_len: usize,
    ctx: &RequestContext,
) -> Result<Option<Vec<String>>, ApiError> {
    if policy.is_empty() {
        return Ok(None);
    }
    let request = policy::model_request_value(
        endpoint.name(),
        &route.name,
        &target.provider.name,
        envelope.stream,
        envelope.max_tokens,
        // A byte-count estimate: enough for coarse size rules before any tokenizer runs.
        i64::try_from(body_len / 4).unwrap_or(i64::MAX),
    );
    let (rule, decision, err) = match policy.evaluate(&policy::principal_value(principal), &request)
    {
        Decision::Allow { redact } if redact.is_empty() => return Ok(None),
        Decision::Allow { redact } => return Ok(Some(redact)),
        Decision::Deny { rule, reason } => {
            let err = ApiError::new(
                ErrorKind::PermissionDenied,
                format!("denied by policy rule {rule}: {reason}"),
            )
            .code("policy_denied");
            (rule, "deny", err)
        }
        Decision::RequireApproval { rule } => {
            let err = ApiError::new(
                ErrorKind::PermissionDenied,
                format!("policy rule {rule} requires approval, which model calls do not support"),
            )
            .code("approval_required");
            (rule, "require_approval", err)
        }
    };
    let mut ev = AuditEvent::new("policy.deny", "denied");
    ev.request_id = Some(ctx.request_id().to_owned());
    ev.trace_id = Some(ctx.trace.trace_id.clone());
    ev.conversation_id.clone_from(&ctx.conversation_id);
    ev.principal = Some(principal.label().to_owned());
    ev.target = Some(route.name.to_string());
    ev.decision = Some(decision.to_owned());
    ev.rule = Some(rule);
    ev.detail = serde_json::json!({"layer": "model", "endpoint": endpoint.name(), "provider": &*target.provider.name});
    // On the request path: never wait for the audit writer (a full queue is counted).
    core.audit.try_record(ev);
    Err(err)
}

/// 403 if the principal may not use the name, 404 if no such model exists. Checking the
/// permission first keeps restricted keys from probing which models exist.
fn authorize(
    state: &LlmState,
    principal: &Principal,
    model: &str,
) -> Result<Arc<ModelRoute>, ApiError> {
    if !principal.may_use_model(model) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("this key may not use model {model:?}"),
        )
        .code("model_not_allowed")
        .param("model"));
    }
    state.models.get(model).cloned().ok_or_else(|| {
        ApiError::not_found(format!("model {model:?} does not exist"))
            .code("model_not_found")
            .param("model")
    })
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"})
}

async fn list_models(State(layer): State<Arc<LlmLayer>>, headers: HeaderMap) -> Response {
    let principal = match layer.core.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let state = layer.state.load();
    let data: Vec<_> = state
        .order
        .iter()
        .filter(|m| principal.may_use_model(&m.name))
        .map(|m| model_object(&m.name))
        .collect();
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": data}).to_string(),
    )
}

async fn get_model(
    State(layer): State<Arc<LlmLayer>>,
    headers: HeaderMap,
    PathParam(model): PathParam,
) -> Response {
    let principal = match layer.core.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let state = layer.state.load();
    match authorize(&state, &principal, &model) {
        Ok(route) => json_response(StatusCode::OK, model_object(&route.name).to_string()),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_header: &str) -> Config {
        let yaml = format!(
            "providers:\n  - {{name: a, kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\n  - {{name: b, kind: openai, base_url: 'http://127.0.0.1:9/v1', headers: {{x: '{extra_header}'}}}}\nmodels:\n  - name: m\n    targets: [{{provider: a}}, {{provider: b}}]\n"
        );
        Config::parse(&yaml, "t", &|_| None).unwrap()
    }

    #[test]
    fn reload_keeps_unchanged_providers_and_their_pools() {
        let first = LlmState::build(&config("1"), None).unwrap();
        let second = LlmState::build(&config("2"), Some(&first)).unwrap();
        let same = |s: &LlmState, name: &str| s.providers[name].1.clone();
        assert!(
            Arc::ptr_eq(&same(&first, "a"), &same(&second, "a")),
            "unchanged: reused"
        );
        assert!(
            !Arc::ptr_eq(&same(&first, "b"), &same(&second, "b")),
            "changed: rebuilt"
        );
        assert!(Arc::ptr_eq(
            &second.models["m"].targets[0].provider,
            &same(&second, "a")
        ));
    }
}
