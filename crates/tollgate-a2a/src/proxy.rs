//! The protocol path: classify the call (binding, version, operation), authenticate, decide,
//! admit, route (task and context affinity), rewrite push registrations, forward with the
//! gateway's identity token, and relay the answer (streams event by event), recording the
//! task's owner and auditing the call when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Map, Value};
use tollgate_core::audit::AuditEvent;
use tollgate_core::config::AgentConfig;
use tollgate_core::context::{RequestContext, TraceContext, CONVERSATION_ID};
use tollgate_core::identity::Principal;
use tollgate_core::otlp::{self, KeyValue as Kv};
use tollgate_core::quota::Refusal;
use tollgate_core::redact::Echoes;

use crate::affinity::{Kind, Route};
use crate::error::{self, A2aError, Shape};
use crate::ops::{self, Version};
use crate::{A2aLayer, LayerState as State, MAX_BODY};

/// Request headers passed to the agent; everything else (the caller's credentials, cookies,
/// identity headers it might try to spoof) stays at the gateway.
const FORWARDED: [&str; 5] = [
    "content-type",
    "accept",
    "a2a-version",
    "a2a-extensions",
    "x-a2a-extensions",
];
/// Response headers passed back.
const RETURNED: [&str; 5] = [
    "content-type",
    "a2a-version",
    "a2a-extensions",
    "x-a2a-extensions",
    "cache-control",
];

/// One call in flight: what the audit record and span will say.
struct Call {
    layer: Arc<A2aLayer>,
    ctx: RequestContext,
    principal: Arc<Principal>,
    agent: String,
    op: &'static str,
    wire: String,
    version: Version,
    binding: &'static str,
    replica: Option<usize>,
    task: Option<String>,
    context: Option<String>,
    state: Option<String>,
    decision: &'static str,
    rule: Option<String>,
    error: Option<String>,
    status: u16,
    events: u64,
    start: Instant,
    start_ns: u64,
    /// Record routes for ids first seen in the answer.
    record: Option<(usize, String, Duration)>,
}

impl Call {
    fn observe(&mut self, seen: ops::Seen) {
        if seen.task.is_some() {
            self.task = seen.task;
        }
        if seen.context.is_some() {
            self.context = seen.context;
        }
        if seen.state.is_some() {
            self.state = seen.state;
        }
    }

    /// Records who owns the task and context the answer named.
    fn remember(&mut self) {
        let Some((replica, owner, ttl)) = self.record.clone() else {
            return;
        };
        let route = Route { replica, owner };
        let routes = self.layer.routes.clone();
        let agent = self.agent.clone();
        let (task, context) = (self.task.clone(), self.context.clone());
        tollgate_core::run_or_spawn(async move {
            if let Some(t) = task {
                routes.put(&agent, Kind::Task, &t, &route, ttl).await;
            }
            if let Some(c) = context {
                routes.put(&agent, Kind::Context, &c, &route, ttl).await;
            }
        });
        // One write per id is enough; later events only refresh the audit fields.
        if self.task.is_some() {
            self.record = None;
        }
    }

    fn finish(&mut self) {
        self.remember();
        let outcome = match (self.decision, &self.error) {
            ("allow", None) => "success",
            ("allow", Some(_)) => "failed",
            _ => "denied",
        };
        let latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let mut ev = AuditEvent::new("a2a.call", outcome);
        ev.request_id = Some(self.ctx.request_id().to_owned());
        ev.trace_id = Some(self.ctx.trace.trace_id.clone());
        ev.conversation_id = self.context.clone().or(self.ctx.conversation_id.clone());
        ev.principal = Some(self.principal.label());
        ev.target = Some(format!("{}/{}", self.agent, self.op));
        ev.decision = Some(self.decision.to_owned());
        ev.rule = self.rule.clone();
        ev.detail = json!({
            "agent": self.agent,
            "method": self.op,
            "wire_method": self.wire,
            "version": self.version.as_str(),
            "binding": self.binding,
            "subject": self.principal.subject.clone().unwrap_or_else(|| self.principal.label()),
            "actors": self.principal.delegation,
            "task_id": self.task,
            "context_id": self.context,
            "task_state": self.state,
            "replica": self.replica,
            "status": self.status,
            "events": self.events,
            "latency_ms": (latency_ms * 1000.0).round() / 1000.0,
            "error": self.error,
        });
        if !self.layer.core.audit.try_record(ev) {
            tracing::error!("audit queue full: an A2A call went unrecorded");
        }
        if self.layer.core.tracer.sampled(&self.ctx.trace) {
            let mut attrs = vec![
                Kv::string("gen_ai.operation.name", "invoke_agent"),
                Kv::string("gen_ai.agent.name", &self.agent),
                Kv::string("a2a.method", self.op),
                Kv::string("a2a.protocol.version", self.version.as_str()),
                Kv::string("tollgate.principal", self.principal.label()),
                Kv::string("tollgate.decision", self.decision),
            ];
            if let Some(c) = &self.context {
                attrs.push(Kv::string("gen_ai.conversation.id", c));
            }
            if let Some(t) = &self.task {
                attrs.push(Kv::string("a2a.task.id", t));
            }
            if let Some(s) = &self.state {
                attrs.push(Kv::string("a2a.task.state", ops::state_name(s)));
            }
            if let Some(e) = &self.error {
                attrs.push(Kv::string("error.type", e));
            }
            self.layer.core.tracer.record(otlp::span_for(
                &self.ctx.trace,
                format!("invoke_agent {}", self.agent),
                self.start_ns,
                otlp::now_ns(),
                attrs,
                self.error.clone(),
            ));
        }
    }
}

/// How the request arrived.
enum Parsed {
    Rpc {
        id: Value,
        method: String,
        params: Value,
    },
    Rest {
        path_task: Option<String>,
        body: Value,
    },
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("application/json")
                || t.eq_ignore_ascii_case("application/a2a+json")
        })
}

fn refuse(e: &A2aError, shape: Shape, id: &Value) -> Response {
    let mut res = e.response(shape, id);
    if e.status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

pub async fn handle(
    layer: Arc<A2aLayer>,
    state: Arc<State>,
    agent: AgentConfig,
    rest: String,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let ctx = parts
        .extensions
        .get::<RequestContext>()
        .cloned()
        .unwrap_or_else(|| RequestContext {
            request_id: HeaderValue::from_static("-"),
            trace: TraceContext::from_headers(&parts.headers),
            conversation_id: None,
        });
    let header_version = parts
        .headers
        .get("a2a-version")
        .and_then(|v| v.to_str().ok());
    let version = Version::from_header(header_version);

    // Classify: a REST path, else JSON-RPC (a POST of a JSON-RPC object).
    let rest_op = ops::rest(&parts.method, &rest);
    let limits = layer.core.config().limits.clone();
    let bytes = if parts.method == Method::GET || parts.method == Method::DELETE {
        Bytes::new()
    } else {
        // A repeated key is refused: the gateway and the agent could read different values.
        let read = match tollgate_core::http::read_body(&parts.headers, body, &limits).await {
            Ok(b) => tollgate_core::http::check_duplicate_keys(&b).map(|()| b),
            Err(e) => Err(e),
        };
        match read {
            Ok(b) => b,
            Err(e) => {
                let shape = if rest_op.is_some() {
                    Shape::Rest
                } else {
                    Shape::JsonRpc(version.unwrap_or(Version::V03))
                };
                return refuse(&A2aError::from(e), shape, &Value::Null);
            }
        }
    };
    let (op, parsed, shape) = match rest_op {
        Some((op, path_task)) => {
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        return refuse(
                            &A2aError::new(
                                StatusCode::BAD_REQUEST,
                                error::PARSE_ERROR,
                                "INVALID_JSON",
                                format!("invalid JSON: {e}"),
                            ),
                            Shape::Rest,
                            &Value::Null,
                        )
                    }
                }
            };
            (op, Parsed::Rest { path_task, body }, Shape::Rest)
        }
        None => {
            let v03 = Shape::JsonRpc(version.unwrap_or(Version::V03));
            if parts.method != Method::POST {
                return refuse(
                    &A2aError::new(
                        StatusCode::NOT_FOUND,
                        error::METHOD_NOT_FOUND,
                        "METHOD_NOT_FOUND",
                        format!("{} {rest} is not an A2A operation", parts.method),
                    ),
                    Shape::Rest,
                    &Value::Null,
                );
            }
            if !is_json(&parts.headers) {
                return refuse(
                    &A2aError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        error::INVALID_REQUEST,
                        "CONTENT_TYPE_NOT_SUPPORTED",
                        "Content-Type must be application/json",
                    ),
                    v03,
                    &Value::Null,
                );
            }
            let msg: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return refuse(
                        &A2aError::new(
                            StatusCode::OK,
                            error::PARSE_ERROR,
                            "PARSE_ERROR",
                            format!("invalid JSON: {e}"),
                        ),
                        v03,
                        &Value::Null,
                    )
                }
            };
            let id = msg.get("id").cloned().unwrap_or(Value::Null);
            let method = msg.get("method").and_then(Value::as_str);
            let valid_id = matches!(id, Value::String(_) | Value::Number(_) | Value::Null);
            let (Some(method), true, Some("2.0")) =
                (method, valid_id, msg.get("jsonrpc").and_then(Value::as_str))
            else {
                return refuse(
                    &A2aError::new(
                        StatusCode::OK,
                        error::INVALID_REQUEST,
                        "INVALID_REQUEST",
                        "not a JSON-RPC 2.0 request (one object with jsonrpc, method and id)",
                    ),
                    v03,
                    &id,
                );
            };
            let Some((op, generation)) = ops::jsonrpc(method) else {
                return refuse(
                    &A2aError::new(
                        StatusCode::OK,
                        error::METHOD_NOT_FOUND,
                        "METHOD_NOT_FOUND",
                        format!("method {method:?} is not an A2A operation"),
                    ),
                    v03,
                    &id,
                );
            };
            let params = msg.get("params").cloned().unwrap_or(Value::Null);
            (
                op,
                Parsed::Rpc {
                    id,
                    method: method.to_owned(),
                    params,
                },
                Shape::JsonRpc(generation),
            )
        }
    };
    let rpc_id = match &parsed {
        Parsed::Rpc { id, .. } => id.clone(),
        Parsed::Rest { .. } => Value::Null,
    };
    let Some(version) = version else {
        return refuse(
            &A2aError::new(
                StatusCode::BAD_REQUEST,
                error::VERSION_NOT_SUPPORTED,
                "VERSION_NOT_SUPPORTED",
                format!(
                    "A2A-Version {:?} is not supported; use 0.3 or 1.0",
                    header_version.unwrap_or("")
                ),
            ),
            shape,
            &rpc_id,
        );
    };

    let principal = match layer.authenticate(&parts.headers).await {
        Ok(p) => p,
        Err(e) => return refuse(&e, shape, &rpc_id),
    };
    let wire = match &parsed {
        Parsed::Rpc { method, .. } => method.clone(),
        Parsed::Rest { .. } => format!("{} {rest}", parts.method),
    };
    let mut call = Call {
        layer: layer.clone(),
        ctx: ctx.clone(),
        principal: principal.clone(),
        agent: agent.name.clone(),
        op: op.name,
        wire: wire.clone(),
        version,
        binding: if matches!(shape, Shape::Rest) {
            "HTTP+JSON"
        } else {
            "JSONRPC"
        },
        replica: None,
        task: None,
        context: None,
        state: None,
        decision: "allow",
        rule: None,
        error: None,
        status: 200,
        events: 0,
        start: Instant::now(),
        start_ns: otlp::now_ns(),
        record: None,
    };
    let (req_task, req_context) = match &parsed {
        Parsed::Rpc { params, .. } => ops::request_ids(op, params),
        Parsed::Rest { path_task, body } => {
            let (t, c) = ops::request_ids(op, body);
            // `GET .../tasks?contextId=...` names its context in the query.
            let c = c.or_else(|| query_param(parts.uri.query(), "contextId"));
            (path_task.clone().or(t), c)
        }
    };
    call.task.clone_from(&req_task);
    call.context.clone_from(&req_context);

    if let Err((e, rule)) =
        layer.decide(&state, &principal, &agent, op.name, &wire, version.as_str())
    {
        call.decision = "deny";
        call.rule = rule;
        call.error = Some(e.message.clone());
        call.status = e.status.as_u16();
        call.finish();
        return refuse(&e, shape, &rpc_id);
    }
    let refusal = match layer
        .core
        .quotas
        .admit(
            &state.config.quotas,
            &principal,
            &agent.name,
            op.name,
            tollgate_core::time::now_ms(),
        )
        .await
    {
        Ok(p) => Ok(p),
        Err(Refusal::Quota(refused)) => {
            let secs = refused.retry_after.as_secs().max(1);
            let e = A2aError::new(
                StatusCode::TOO_MANY_REQUESTS,
                error::GATEWAY_REFUSED,
                "RESOURCE_EXHAUSTED",
                format!(
                    "quota {:?} exceeded: {} calls per {}; retry in {secs}s",
                    refused.quota, refused.limit, refused.window
                ),
            )
            .with_data(json!({"quota": refused.quota, "retryAfterSeconds": secs}));
            Err((e, Some(refused.quota), secs))
        }
        Err(Refusal::Unavailable(api)) => {
            let e = A2aError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error::GATEWAY_REFUSED,
                "UNAVAILABLE",
                api.message.clone(),
            )
            .with_data(json!({"retryAfterSeconds": 1}));
            Err((e, None, 1))
        }
    };
    let _permit = match refusal {
        Ok(p) => p,
        Err((e, rule, secs)) => {
            call.decision = "quota";
            call.rule = rule;
            call.error = Some(e.message.clone());
            call.status = e.status.as_u16();
            call.finish();
            let mut res = refuse(&e, shape, &rpc_id);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            return res;
        }
    };
    // A streaming method holds one of the caller's stream slots while the stream is open.
    let slot = if op.streams {
        match layer.core.open_stream(&principal) {
            Ok(s) => Some(s),
            Err(e) => {
                let e = A2aError::from(e);
                call.decision = "limit";
                call.error = Some(e.message.clone());
                call.status = e.status.as_u16();
                call.finish();
                return refuse(&e, shape, &rpc_id);
            }
        }
    } else {
        None
    };

    // Route: the owner of the task, else of the conversation, else a new replica.
    let owner = principal
        .subject
        .clone()
        .unwrap_or_else(|| principal.label());
    let known = match (&req_task, &req_context) {
        (Some(t), _) => match layer.routes.get(&agent.name, Kind::Task, t).await {
            Some(r) => Some(r),
            None => match &req_context {
                Some(c) => layer.routes.get(&agent.name, Kind::Context, c).await,
                None => None,
            },
        },
        (None, Some(c)) => layer.routes.get(&agent.name, Kind::Context, c).await,
        (None, None) => None,
    };
    let known_route = known.is_some();
    let replica = match known {
        Some(r) if r.owner != owner => {
            // Another caller's task looks exactly like a missing one.
            let e = A2aError::task_not_found();
            call.decision = "deny";
            call.rule = Some("owner".into());
            call.error = Some("the task belongs to another caller".into());
            call.status = 404;
            call.finish();
            return refuse(&e, shape, &rpc_id);
        }
        Some(r) if r.replica < agent.urls.len() => r.replica,
        _ => layer.pick_replica(&agent),
    };
    call.replica = Some(replica);
    // Routes are recorded for what a call creates, and refreshed for what it follows up; a
    // call naming a task the gateway never saw does not make the caller its owner.
    if op.creates || known_route {
        call.record = Some((replica, owner.clone(), state.config.affinity_ttl));
    }

    // Push registrations go through the relay: the agent gets the gateway's callback.
    let base = layer.base_url(&parts.headers);
    let mut parsed = parsed;
    {
        let target = match &mut parsed {
            Parsed::Rpc { params, .. } => params,
            Parsed::Rest { body, .. } => body,
        };
        if let Err(e) = layer
            .relay
            .intercept(
                &state.config,
                &agent,
                &principal,
                &base,
                req_task.as_deref(),
                target,
            )
            .await
        {
            call.decision = "deny";
            call.rule = Some("push".into());
            call.error = Some(e.message.clone());
            call.status = e.status.as_u16();
            call.finish();
            return refuse(&e, shape, &rpc_id);
        }
    }
    let out_body = match &parsed {
        Parsed::Rpc { id, method, params } => {
            let mut m = Map::new();
            m.insert("jsonrpc".into(), "2.0".into());
            m.insert("id".into(), id.clone());
            m.insert("method".into(), method.clone().into());
            if !params.is_null() {
                m.insert("params".into(), params.clone());
            }
            Bytes::from(Value::Object(m).to_string())
        }
        Parsed::Rest { body, .. } if !body.is_null() => Bytes::from(body.to_string()),
        Parsed::Rest { .. } => Bytes::new(),
    };

    // The identity token: audience the agent, subject the caller, `act` the chain.
    let mut extra = Map::new();
    if let Some(c) = &call.context {
        extra.insert("conversation_id".into(), c.clone().into());
    }
    let claims = tollgate_core::signing::identity_claims(
        &principal,
        &layer.core.issuer(),
        &agent.audience,
        tollgate_core::time::now(),
        state.config.token_ttl.as_secs() as i64,
        extra,
    );
    let token = match layer.core.signer.mint(&claims) {
        Ok(t) => t,
        Err(e) => {
            let e = A2aError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                error::INTERNAL,
                "INTERNAL",
                e,
            );
            call.error = Some(e.message.clone());
            call.finish();
            return refuse(&e, shape, &rpc_id);
        }
    };

    let Some(base_url) = agent.urls.get(replica) else {
        return refuse(&A2aError::upstream("the agent has no URL"), shape, &rpc_id);
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("{base_url}{rest}{query}");
    // What the gateway sends the agent as credentials, cut out of its whole answers.
    let mut echoes = Echoes::default();
    echoes.add(token.as_bytes());
    for v in agent.headers.values() {
        echoes.add_header_value(v.expose().as_bytes());
    }
    let mut up = http::Request::builder()
        .method(parts.method.clone())
        .uri(url.as_str());
    if let Some(h) = up.headers_mut() {
        for name in FORWARDED {
            if let Some(v) = parts.headers.get(name) {
                h.insert(HeaderName::from_static(name), v.clone());
            }
        }
        for (k, v) in &agent.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v.expose()),
            ) {
                h.insert(k, v);
            }
        }
        let identity = if agent.identity_header == "authorization" {
            format!("Bearer {token}")
        } else {
            token
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(agent.identity_header.as_bytes()),
            HeaderValue::from_str(&identity),
        ) {
            h.insert(k, v);
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.trace.traceparent()) {
            h.insert("traceparent", v);
        }
        if let Some(ts) = &ctx.trace.tracestate {
            h.insert("tracestate", ts.clone());
        }
        if let Some(c) = call.context.as_ref().or(ctx.conversation_id.as_ref()) {
            if let Ok(v) = HeaderValue::from_str(c) {
                h.insert(CONVERSATION_ID, v);
            }
        }
        h.insert("x-request-id", ctx.request_id.clone());
        if !out_body.is_empty() && !h.contains_key(CONTENT_TYPE) {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    let up = match up.body(Full::new(out_body)) {
        Ok(r) => r,
        Err(e) => {
            let e = A2aError::upstream(format!("cannot build the upstream request: {e}"));
            call.error = Some(e.message.clone());
            call.finish();
            return refuse(&e, shape, &rpc_id);
        }
    };
    let timeout = agent.timeout.unwrap_or(state.config.request_timeout);
    let res = match tokio::time::timeout(timeout, layer.client.request(up)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let e = A2aError::upstream(format!("agent {:?} is unreachable: {e}", agent.name));
            call.error = Some(e.message.clone());
            call.status = 502;
            call.finish();
            return refuse(&e, shape, &rpc_id);
        }
        Err(_) => {
            let e = A2aError::new(
                StatusCode::GATEWAY_TIMEOUT,
                error::INTERNAL,
                "DEADLINE_EXCEEDED",
                format!(
                    "agent {:?} did not answer within {}s",
                    agent.name,
                    timeout.as_secs()
                ),
            );
            call.error = Some(e.message.clone());
            call.status = 504;
            call.finish();
            return refuse(&e, shape, &rpc_id);
        }
    };
    let (rparts, rbody) = res.into_parts();
    call.status = rparts.status.as_u16();
    let mut out = Response::builder().status(rparts.status);
    if let Some(h) = out.headers_mut() {
        for name in RETURNED {
            if let Some(v) = rparts.headers.get(name) {
                h.insert(HeaderName::from_static(name), v.clone());
            }
        }
    }
    let sse = rparts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let rpc = matches!(shape, Shape::JsonRpc(_));
    if sse {
        if let Some(h) = out.headers_mut() {
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        let tap = Tap {
            inner: rbody,
            scan: SseScan::default(),
            call: Some(call),
            rpc,
        };
        let res = out
            .body(Body::new(tap))
            .unwrap_or_else(|_| Response::new(Body::empty()));
        return match slot {
            Some(s) => tollgate_core::http::hold_while_body(res, s),
            None => res,
        };
    }
    // A whole answer: read it (bounded), learn the ids, pass it on unchanged.
    let max = usize::try_from(layer.core.config().limits.max_upstream_response_size)
        .unwrap_or(usize::MAX);
    let bytes = match http_body_util::Limited::new(rbody, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let e = A2aError::new(
                StatusCode::BAD_GATEWAY,
                error::INVALID_AGENT_RESPONSE,
                "INVALID_AGENT_RESPONSE",
                format!("cannot read the agent's answer: {e}"),
            );
            call.error = Some(e.message.clone());
            call.finish();
            return refuse(&e, shape, &rpc_id);
        }
    };
    let mut bytes = echoes.scrub_bytes(bytes);
    if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) {
        inspect(&mut call, &v, rpc);
        // Answers that would show the caller more than its own: other callers' tasks, the
        // relay's callback and token instead of its own webhook.
        let scoped = op.name == "ListTasks" || op.name.contains("PushNotificationConfig");
        let target = if rpc {
            v.get_mut("result")
        } else {
            Some(&mut v)
        };
        if let (true, Some(t)) = (scoped && rparts.status.is_success(), target) {
            let changed = if op.name == "ListTasks" {
                layer.scope_tasks(&agent.name, &owner, t).await
            } else {
                layer.relay.restore(t).await
            };
            if changed {
                bytes = Bytes::from(v.to_string());
            }
        }
    }
    if !rparts.status.is_success() && call.error.is_none() {
        call.error = Some(format!("HTTP {}", rparts.status.as_u16()));
    }
    call.finish();
    out.body(Body::from(bytes))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// One query parameter's value (percent-decoded).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

impl A2aLayer {
    /// Keeps in a ListTasks answer only the tasks `owner` created through the gateway;
    /// true if anything was removed.
    async fn scope_tasks(&self, agent: &str, owner: &str, result: &mut Value) -> bool {
        let Some(Value::Array(tasks)) = result.get_mut("tasks") else {
            return false;
        };
        let before = tasks.len();
        let mut keep = Vec::with_capacity(before);
        for t in tasks.drain(..) {
            let Some(id) = t.get("id").and_then(Value::as_str) else {
                continue;
            };
            if let Some(r) = self.routes.get(agent, Kind::Task, id).await {
                if r.owner == owner {
                    keep.push(t);
                }
            }
        }
        let removed = before - keep.len();
        *tasks = keep;
        if removed > 0 {
            if let Some(total) = result.get("totalSize").and_then(Value::as_u64) {
                result["totalSize"] = json!(total.saturating_sub(removed as u64));
            }
        }
        removed > 0
    }
}

/// Learns from one answer or event: ids, state, or the error it carries.
fn inspect(call: &mut Call, v: &Value, rpc: bool) {
    if rpc {
        if let Some(e) = v.get("error") {
            let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            call.error = Some(format!("{code} {msg}"));
            return;
        }
        if let Some(r) = v.get("result") {
            call.observe(ops::seen(r));
        }
    } else if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        call.error = Some(
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
        );
    } else {
        call.observe(ops::seen(v));
    }
}

/// Finds complete `data:` payloads in an SSE byte stream without holding the stream back.
#[derive(Default)]
struct SseScan {
    line: Vec<u8>,
    data: Vec<u8>,
}

impl SseScan {
    /// Feeds bytes; returns each event's data once the event is complete.
    fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        for &b in chunk {
            if b != b'\n' {
                // Lines longer than a body would be are not ours to parse.
                if self.line.len() < MAX_BODY {
                    self.line.push(b);
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    on_event(&self.data);
                    self.data.clear();
                }
            } else if let Some(d) = line.strip_prefix(b"data:") {
                if self.data.len() > MAX_BODY {
                    continue;
                }
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data
                    .extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
            }
        }
    }
}

/// The agent's event stream on its way to the caller, frame by frame, observed on the way.
struct Tap<B> {
    inner: B,
    scan: SseScan,
    call: Option<Call>,
    rpc: bool,
}

impl<B> http_body::Body for Tap<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(call)) = (frame.data_ref(), this.call.as_mut()) {
                    let rpc = this.rpc;
                    this.scan.feed(data, |event| {
                        if let Ok(v) = serde_json::from_slice::<Value>(event) {
                            call.events += 1;
                            inspect(call, &v, rpc);
                            call.remember();
                        }
                    });
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut call) = this.call.take() {
                    call.error = Some(format!("the agent's stream broke: {e}"));
                    call.finish();
                }
                Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
            }
            Poll::Ready(None) => {
                if let Some(mut call) = this.call.take() {
                    call.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<B> Drop for Tap<B> {
    fn drop(&mut self) {
        // The caller went away mid-stream: the record says so.
        if let Some(mut call) = self.call.take() {
            if call.error.is_none() {
                call.error = Some("the caller closed the stream".into());
            }
            call.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_found_across_chunks() {
        let mut s = SseScan::default();
        let mut seen = Vec::new();
        for chunk in [
            &b"data: {\"a\""[..],
            b":1}\r\n\r\ndata: 2\n",
            b"\nevent: x\ndata: 3\n\n",
        ] {
            s.feed(chunk, |e| {
                seen.push(String::from_utf8_lossy(e).into_owned())
            });
        }
        assert_eq!(seen, ["{\"a\":1}", "2", "3"]);
    }
}
