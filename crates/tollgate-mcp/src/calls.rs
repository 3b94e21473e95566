//! What each MCP method does inside a session: merged lists filtered by policy and paged with
//! sealed cursors; calls authorized on the tool and its arguments, routed to the owning
//! upstream with a fresh id, relayed (with whatever the upstream sends on the way), audited;
//! and the messages both sides send outside any call, relayed to the right place.
//!
//! A forwarded call runs on its own task, so its audit record is written even if the client
//! goes away mid-call.

use std::sync::{Arc, Weak};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tollgate_core::audit::AuditEvent;
use tollgate_core::config::DriftAction;
use tollgate_core::context::RequestContext;
use tollgate_core::otlp::{self, KeyValue as Kv};
use tollgate_core::policy::{self, Decision};
use tollgate_core::quota::Refusal;

use crate::approval;
use crate::federation::{self, Kind, Merged};
use crate::front::Out;
use crate::jsonrpc::{self, RpcError};
use crate::session::Session;
use crate::upstream::{Conn, Related, UpstreamError};
use crate::McpLayer;

/// Items per page of a merged list.
const PAGE: usize = 100;
/// Pages read from one upstream's list before the gateway stops following its cursors.
const MAX_UPSTREAM_PAGES: usize = 100;

/// The `initialize` result: the upstreams' capabilities merged (a capability is offered when
/// some upstream offers it; `listChanged`/`subscribe` only when one of them does).
pub fn initialize_result(session: &Session, target: Option<&str>) -> Value {
    let mut caps = serde_json::Map::new();
    for cap in ["tools", "prompts", "resources", "logging", "completions"] {
        let offered: Vec<&Value> = session
            .upstreams
            .iter()
            .filter_map(|u| u.init.get("capabilities").and_then(|c| c.get(cap)))
            .filter(|c| !c.is_null())
            .collect();
        if offered.is_empty() {
            continue;
        }
        let mut merged = serde_json::Map::new();
        for flag in ["listChanged", "subscribe"] {
            if offered
                .iter()
                .any(|c| c.get(flag).and_then(Value::as_bool) == Some(true))
            {
                merged.insert(flag.into(), Value::Bool(true));
            }
        }
        caps.insert(cap.into(), Value::Object(merged));
    }
    let instructions: Vec<String> = session
        .upstreams
        .iter()
        .filter_map(|u| {
            u.init
                .get("instructions")
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(|s| format!("[{}] {s}", u.name))
        })
        .collect();
    let mut result = json!({
        "protocolVersion": session.version,
        "capabilities": caps,
        "serverInfo": {
            "name": target.map_or_else(|| "tollgate".to_owned(), |t| format!("tollgate/{t}")),
            "version": env!("CARGO_PKG_VERSION"),
        },
    });
    if !instructions.is_empty() {
        result["instructions"] = Value::String(instructions.join("\n\n"));
    }
    result
}

/// Handles one client request; the receiver yields messages on the way, then the answer.
pub fn request(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    ctx: &RequestContext,
    msg: Value,
) -> mpsc::Receiver<Out> {
    let (tx, rx) = mpsc::channel(64);
    let layer = layer.clone();
    let session = session.clone();
    let ctx = ctx.clone();
    // Its own task: the call's side effects (audit, upstream cancellation) complete even if
    // the client disconnects.
    tokio::spawn(async move {
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&msg).to_owned();
        let answer = match method.as_str() {
            "ping" => Ok(Some(json!({}))),
            "initialize" => Err(RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "this session is already initialized",
            )),
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
                list(&layer, &session, &msg).await.map(Some)
            }
            "logging/setLevel" => set_level(&layer, &session, &msg).await.map(Some),
            _ => {
                route(&layer, &session, &ctx, msg, &tx).await;
                Ok(None)
            }
        };
        match answer {
            Ok(Some(result)) => {
                let _ = tx.send(Out::Final(jsonrpc::result(id, result))).await;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx.send(Out::Final(e.to_message(id))).await;
            }
        }
    });
    rx
}

/// Fetches (or reuses) a merged list: every page of every upstream that offers it.
async fn merged(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    kind: Kind,
) -> Result<Arc<Merged>, RpcError> {
    if let Some(m) = session.list(kind) {
        return Ok(m);
    }
    let fetches = session.upstreams.iter().enumerate().map(|(i, u)| async move {
        if !u.has(kind.capability()) {
            return Vec::new();
        }
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_UPSTREAM_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => Value::Null,
            };
            let req = jsonrpc::request(session.upstream_id(), kind.method(), params);
            let (related, _) = mpsc::channel(16);
            match call_upstream(layer, session, i, &req, &related).await {
                Ok(res) => {
                    let result = res.get("result").cloned().unwrap_or(Value::Null);
                    if let Some(list) = result.get(kind.field()).and_then(Value::as_array) {
                        items.extend(list.iter().cloned());
                    }
                    match result.get("nextCursor") {
                        Some(c) if !c.is_null() => cursor = Some(c.clone()),
                        _ => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %u.name, list = kind.method(), error = %e, "upstream list failed; it is left out");
                    break;
                }
            }
        }
        if kind == Kind::Tools {
            let cfg = layer.state.load().config.server(&u.name).cloned();
            if let Some(cfg) = cfg {
                crate::pins::check(layer, &cfg, &items, &session.owner).await;
            }
        }
        items
    });
    let lists = futures_util::future::join_all(fetches).await;
    let names: Vec<&str> = session.upstreams.iter().map(|u| u.name.as_str()).collect();
    let mode = layer.state.load().config.prefix;
    let merged = Arc::new(federation::merge(kind, mode, &names, lists));
    session.set_list(kind, merged.clone());
    Ok(merged)
}

/// The policy's view of a request on this session.
#[expect(
    clippy::too_many_arguments,
    reason = "the request's attributes, passed as borrowed pieces"
)]
fn decide(
    layer: &McpLayer,
    session: &Session,
    method: &str,
    server: &str,
    name: &str,
    args: &Value,
    annotations: &Value,
    listing: bool,
) -> Option<Decision> {
    let state = layer.state.load();
    if state.policy.is_empty() {
        return None;
    }
    let principal = policy::principal_value(&session.principal);
    let request = policy::tool_request_value(
        method,
        server,
        session.target.as_deref().unwrap_or_default(),
        name,
        args,
        annotations,
    );
    if listing {
        return Some(if state.policy.might_allow(&principal, &request) {
            Decision::Allow { redact: Vec::new() }
        } else {
            Decision::Deny {
                rule: String::new(),
                reason: String::new(),
            }
        });
    }
    Some(state.policy.evaluate(&principal, &request))
}

async fn list(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    msg: &Value,
) -> Result<Value, RpcError> {
    let method = jsonrpc::method(msg);
    let Some(kind) = Kind::from_method(method) else {
        return Err(RpcError::new(jsonrpc::METHOD_NOT_FOUND, method.to_owned()));
    };
    let binding = format!("{}|{}|{}", session.owner, session.id, kind.method());
    let offset = match jsonrpc::params(msg).get("cursor") {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => layer
            .sealer
            .open(&binding, c)
            .and_then(|p| String::from_utf8(p).ok())
            .and_then(|p| p.parse::<usize>().ok())
            .ok_or_else(|| RpcError::invalid_params("invalid or foreign cursor"))?,
        Some(_) => return Err(RpcError::invalid_params("cursor must be a string")),
    };
    let merged = merged(layer, session, kind).await?;
    let call_method = match kind {
        Kind::Tools => "tools/call",
        Kind::Prompts => "prompts/get",
        Kind::Resources | Kind::Templates => "resources/read",
    };
    let visible: Vec<&Value> = merged
        .entries
        .iter()
        .filter(|e| {
            let server = &session.upstreams[e.upstream].name;
            if drift(layer, server, e) == Some(DriftAction::Hide) {
                return false;
            }
            let annotations = e.exposed.get("annotations").cloned().unwrap_or(Value::Null);
            !matches!(
                decide(
                    layer,
                    session,
                    call_method,
                    server,
                    &e.original,
                    &Value::Null,
                    &annotations,
                    true
                ),
                Some(Decision::Deny { .. })
            )
        })
        .map(|e| &e.exposed)
        .collect();
    let page: Vec<Value> = visible
        .iter()
        .skip(offset)
        .take(PAGE)
        .map(|v| (*v).clone())
        .collect();
    let mut result = json!({ kind.field(): page });
    if offset + PAGE < visible.len() {
        result["nextCursor"] = Value::String(
            layer
                .sealer
                .seal(&binding, (offset + PAGE).to_string().as_bytes()),
        );
    }
    Ok(result)
}

/// The action that applies to a tool whose definition drifted from its pin, if it did.
fn drift(layer: &McpLayer, server: &str, e: &federation::Entry) -> Option<DriftAction> {
    let digest = e.digest.as_deref()?;
    layer
        .pins
        .drifted(server, &e.original, digest)
        .then(|| crate::pins::action(layer, server))
}

async fn set_level(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    msg: &Value,
) -> Result<Value, RpcError> {
    let params = jsonrpc::params(msg).clone();
    for (i, u) in session.upstreams.iter().enumerate() {
        if !u.has("logging") {
            continue;
        }
        let req = jsonrpc::request(session.upstream_id(), "logging/setLevel", params.clone());
        let (related, _) = mpsc::channel(16);
        if let Err(e) = call_upstream(layer, session, i, &req, &related).await {
            tracing::warn!(server = %u.name, error = %e, "logging/setLevel failed upstream");
        }
    }
    Ok(json!({}))
}

/// Sends a request to upstream `i`, restarting a dead stdio process first (with backoff). An
/// upstream that has ended its session (HTTP 404 to the session id: it restarted, or expired
/// the session) gets a new one, initialized as the first was, and the request is sent once
/// more there: the spec has the client start a new session, and the upstream never ran the
/// request. What the old session held upstream (subscriptions, log level) is gone with it.
async fn call_upstream(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    i: usize,
    msg: &Value,
    related: &Related,
) -> Result<Value, UpstreamError> {
    let up = &session.upstreams[i];
    let mut conn = up.conn.load_full();
    if conn.is_closed() {
        restart(layer, session, i).await?;
        conn = up.conn.load_full();
    }
    match conn.request(msg, related).await {
        Err(UpstreamError::SessionExpired) => {
            let conn = reopen(layer, session, i, &conn).await?;
            conn.request(msg, related).await
        }
        answer => answer,
    }
}

async fn restart(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    i: usize,
) -> Result<(), UpstreamError> {
    let up = &session.upstreams[i];
    {
        let Ok(mut r) = up.restart.lock() else {
            return Err(UpstreamError::Closed("restart state poisoned".into()));
        };
        let now = Instant::now();
        if now < r.0 {
            return Err(UpstreamError::Closed(format!(
                "the upstream exited; restarting in {}ms",
                (r.0 - now).as_millis()
            )));
        }
        r.0 = now + r.1;
        r.1 = (r.1 * 2).min(std::time::Duration::from_secs(30));
    }
    tracing::warn!(server = %up.name, session = %session.id, "restarting MCP upstream");
    open_again(layer, session, i).await.map(drop)
}

/// Replaces the connection to upstream `i` whose session the upstream ended, unless another
/// call already has; returns the connection to use.
async fn reopen(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    i: usize,
    ended: &Arc<Conn>,
) -> Result<Arc<Conn>, UpstreamError> {
    let up = &session.upstreams[i];
    let _one = up.reopening.lock().await;
    let current = up.conn.load_full();
    if !Arc::ptr_eq(&current, ended) {
        return Ok(current);
    }
    tracing::warn!(server = %up.name, session = %session.id, "the MCP upstream ended its session; opening a new one");
    let conn = open_again(layer, session, i).await?;
    // Stops the old connection's listening stream (its DELETE is answered 404, harmlessly).
    ended.close().await;
    Ok(conn)
}

/// Opens upstream `i` afresh with the session's handshake and makes it the session's.
async fn open_again(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    i: usize,
) -> Result<Arc<Conn>, UpstreamError> {
    let up = &session.upstreams[i];
    let Some(cfg) = layer.state.load().config.server(&up.name).cloned() else {
        return Err(UpstreamError::Closed(
            "the server was removed from the config".into(),
        ));
    };
    let inbound = crate::upstream::Inbound {
        index: i,
        tx: session.inbound.clone(),
    };
    let (conn, _) = layer
        .open_upstream(
            &cfg,
            &session.client_init,
            &session.version,
            inbound,
            &session.owner,
        )
        .await?;
    let conn = Arc::new(conn);
    up.conn.store(conn.clone());
    Ok(conn)
}

/// A call to audit when it ends.
struct Record {
    action: &'static str,
    server: String,
    name: String,
    args_digest: Option<String>,
    /// The arguments, redacted, when `mcp.audit.arguments` is on.
    arguments: Option<Value>,
    /// The approval the call ran under (or is waiting for).
    approval: Option<String>,
    decision: &'static str,
    rule: Option<String>,
    start: Instant,
    start_ns: u64,
}

impl Record {
    fn finish(self, layer: &McpLayer, session: &Session, ctx: &RequestContext, answer: &Value) {
        let latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let is_error = answer
            .get("result")
            .and_then(|r| r.get("isError"))
            .and_then(Value::as_bool)
            == Some(true);
        let outcome = if !matches!(self.decision, "allow" | "approved") {
            "denied"
        } else if answer.get("error").is_some() {
            "failed"
        } else if is_error {
            "tool_error"
        } else {
            "success"
        };
        let bytes = answer.get("result").map_or(0, |r| r.to_string().len());
        let mut ev = AuditEvent::new(self.action, outcome);
        ev.request_id = Some(ctx.request_id().to_owned());
        ev.trace_id = Some(ctx.trace.trace_id.clone());
        ev.conversation_id = ctx.conversation_id.clone();
        ev.principal = Some(session.owner.clone());
        ev.target = Some(format!("{}/{}", self.server, self.name));
        ev.decision = Some(self.decision.to_owned());
        ev.rule = self.rule.clone();
        ev.detail = json!({
            "session": session.id,
            "virtual_server": session.target,
            "server": self.server,
            "name": self.name,
            "args_sha256": self.args_digest,
            "arguments": self.arguments,
            "approval": self.approval,
            "latency_ms": (latency_ms * 1000.0).round() / 1000.0,
            "result_bytes": bytes,
            "error": answer.get("error").and_then(|e| e.get("message")).cloned(),
        });
        if !layer.core.audit.try_record(ev) {
            tracing::error!(
                action = self.action,
                "audit queue full: an MCP call went unrecorded"
            );
        }
        if self.action == "mcp.tools/call" && layer.core.tracer.sampled(&ctx.trace) {
            let mut attrs = vec![
                Kv::string("gen_ai.operation.name", "execute_tool"),
                Kv::string("gen_ai.tool.name", &self.name),
                Kv::string("mcp.server", &self.server),
                Kv::string("mcp.session.id", &session.id),
                Kv::string("tollgate.principal", &session.owner),
                Kv::string("tollgate.decision", self.decision),
            ];
            if let Some(c) = &ctx.conversation_id {
                attrs.push(Kv::string("gen_ai.conversation.id", c));
            }
            let error = match outcome {
                "failed" | "tool_error" | "denied" => Some(outcome.to_owned()),
                _ => None,
            };
            if let Some(e) = &error {
                attrs.push(Kv::string("error.type", e));
            }
            layer.core.tracer.record(otlp::span_for(
                &ctx.trace,
                format!("execute_tool {}", self.name),
                self.start_ns,
                otlp::now_ns(),
                attrs,
                error,
            ));
        }
    }
}

/// Requests that go to one upstream: find the owner, authorize, forward, relay.
async fn route(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    ctx: &RequestContext,
    mut msg: Value,
    out: &mpsc::Sender<Out>,
) {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let method = jsonrpc::method(&msg).to_owned();
    let fail = |e: RpcError| {
        let answer = e.to_message(id.clone());
        async move {
            let _ = out.send(Out::Final(answer)).await;
        }
    };
    let params = jsonrpc::params(&msg).clone();
    let start = Instant::now();
    let start_ns = otlp::now_ns();
    let (upstream, record, permit) = match method.as_str() {
        "tools/call" | "prompts/get" => {
            let kind = if method == "tools/call" {
                Kind::Tools
            } else {
                Kind::Prompts
            };
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return fail(RpcError::invalid_params("params.name is required")).await;
            };
            let list = match merged(layer, session, kind).await {
                Ok(l) => l,
                Err(e) => return fail(e).await,
            };
            let server_of = |e: &federation::Entry| session.upstreams[e.upstream].name.clone();
            let drifted = list.get(name).and_then(|e| drift(layer, &server_of(e), e));
            let Some(entry) = list
                .get(name)
                .filter(|_| drifted != Some(DriftAction::Hide))
            else {
                let what = if kind == Kind::Tools {
                    "tool"
                } else {
                    "prompt"
                };
                return fail(RpcError::invalid_params(format!("unknown {what}: {name}"))).await;
            };
            let server = server_of(entry);
            let args = params
                .get("arguments")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let annotations = entry
                .exposed
                .get("annotations")
                .cloned()
                .unwrap_or(Value::Null);
            let mut record = Record {
                action: if kind == Kind::Tools {
                    "mcp.tools/call"
                } else {
                    "mcp.prompts/get"
                },
                server: server.clone(),
                name: entry.original.clone(),
                args_digest: Some(tollgate_core::canonical::sha256_hex(&args)),
                arguments: audited_arguments(layer, &args),
                approval: None,
                decision: "allow",
                rule: None,
                start,
                start_ns,
            };
            if drifted == Some(DriftAction::Block) {
                record.decision = "drift_block";
                let text = format!(
                    "tool {name} is blocked: its definition changed since it was pinned, and an administrator must approve the new one"
                );
                let answer = jsonrpc::result(
                    id.clone(),
                    json!({"content": [{"type": "text", "text": text}], "isError": true}),
                );
                record.finish(layer, session, ctx, &answer);
                let _ = out.send(Out::Final(answer)).await;
                return;
            }
            match decide(
                layer,
                session,
                &method,
                &server,
                &entry.original,
                &args,
                &annotations,
                false,
            ) {
                None => {}
                Some(Decision::Allow { redact }) => {
                    if let Some(a) = msg.pointer_mut("/params/arguments") {
                        for path in &redact {
                            remove_path(a, path);
                        }
                    }
                    // What policy keeps from the upstream stays out of the audit record too.
                    if let Some(a) = record.arguments.as_mut() {
                        for path in &redact {
                            remove_path(a, path);
                        }
                    }
                }
                Some(Decision::Deny { rule, reason }) => {
                    record.decision = "deny";
                    record.rule = Some(rule.clone());
                    return deny(layer, session, ctx, record, kind, &id, &rule, &reason, out).await;
                }
                Some(Decision::RequireApproval { rule }) if kind == Kind::Tools => {
                    record.rule = Some(rule.clone());
                    let redact = layer.state.load().config.audit.redact.clone();
                    let shown = redacted(&args, &redact);
                    let call = approval::Call {
                        rule: &rule,
                        server: &server,
                        tool: &entry.original,
                        args_sha256: record.args_digest.as_deref().unwrap_or_default(),
                        shown: &shown,
                    };
                    match approval::obtain(layer, session, out, call).await {
                        approval::Outcome::Approved { id } => {
                            record.decision = "approved";
                            record.approval = Some(id);
                        }
                        approval::Outcome::Refused {
                            id: aid,
                            text,
                            status,
                        } => {
                            record.decision = "require_approval";
                            record.approval.clone_from(&aid);
                            let answer = jsonrpc::result(
                                id.clone(),
                                json!({
                                    "content": [{"type": "text", "text": text}],
                                    "isError": true,
                                    "_meta": {"tollgate/approval": {"id": aid, "status": status}},
                                }),
                            );
                            record.finish(layer, session, ctx, &answer);
                            let _ = out.send(Out::Final(answer)).await;
                            return;
                        }
                    }
                }
                Some(Decision::RequireApproval { rule }) => {
                    record.decision = "require_approval";
                    record.rule = Some(rule.clone());
                    let reason = "prompts cannot be approved; only tool calls can";
                    return deny(layer, session, ctx, record, kind, &id, &rule, reason, out).await;
                }
            }
            let mut permit = None;
            if kind == Kind::Tools {
                let quotas = &layer.state.load().config.quotas;
                match layer
                    .core
                    .quotas
                    .admit(
                        quotas,
                        &session.principal,
                        &server,
                        &entry.original,
                        tollgate_core::time::now_ms(),
                    )
                    .await
                {
                    Ok(p) => permit = Some(p),
                    Err(Refusal::Unavailable(e)) => {
                        record.decision = "quota";
                        let answer = RpcError::new(jsonrpc::INTERNAL_ERROR, e.message.clone())
                            .with_data(json!({"retryAfterSeconds": 1}))
                            .to_message(id.clone());
                        record.finish(layer, session, ctx, &answer);
                        let _ = out.send(Out::Final(answer)).await;
                        return;
                    }
                    Err(Refusal::Quota(refused)) => {
                        record.decision = "quota";
                        record.rule = Some(refused.quota.clone());
                        let secs = refused.retry_after.as_secs_f64().ceil() as u64;
                        let per = if refused.window == "concurrent" {
                            "running at once".to_owned()
                        } else {
                            format!("per {}", refused.window)
                        };
                        let answer = RpcError::new(
                            jsonrpc::QUOTA_EXCEEDED,
                            format!(
                                "quota {:?} exceeded: {} calls {per}; retry in {secs}s",
                                refused.quota, refused.limit
                            ),
                        )
                        .with_data(json!({
                            "quota": refused.quota,
                            "limit": refused.limit,
                            "window": refused.window,
                            "retryAfterSeconds": secs,
                        }))
                        .to_message(id.clone());
                        record.finish(layer, session, ctx, &answer);
                        let _ = out.send(Out::Final(answer)).await;
                        return;
                    }
                }
            }
            msg["params"]["name"] = Value::String(entry.original.clone());
            (entry.upstream, Some(record), permit)
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let Some(uri) = params.get("uri").and_then(Value::as_str) else {
                return fail(RpcError::invalid_params("params.uri is required")).await;
            };
            let Some(upstream) = owner_of_uri(layer, session, uri).await else {
                return fail(
                    RpcError::new(
                        jsonrpc::RESOURCE_NOT_FOUND,
                        format!("resource not found: {uri}"),
                    )
                    .with_data(json!({"uri": uri})),
                )
                .await;
            };
            let server = session.upstreams[upstream].name.clone();
            let mut record = Record {
                action: "mcp.resources/read",
                server: server.clone(),
                name: uri.to_owned(),
                args_digest: None,
                arguments: None,
                approval: None,
                decision: "allow",
                rule: None,
                start,
                start_ns,
            };
            let refused = match decide(
                layer,
                session,
                "resources/read",
                &server,
                uri,
                &json!({}),
                &Value::Null,
                false,
            ) {
                Some(Decision::Deny { rule, reason }) => Some((rule, reason)),
                Some(Decision::RequireApproval { rule }) => {
                    Some((rule, "resource reads cannot be approved".to_owned()))
                }
                _ => None,
            };
            if let Some((rule, reason)) = refused {
                record.decision = "deny";
                record.rule = Some(rule.clone());
                return deny(
                    layer,
                    session,
                    ctx,
                    record,
                    Kind::Resources,
                    &id,
                    &rule,
                    &reason,
                    out,
                )
                .await;
            }
            let record = (method == "resources/read").then_some(record);
            (upstream, record, None)
        }
        "completion/complete" => {
            let reference = params.get("ref").cloned().unwrap_or(Value::Null);
            let upstream = match reference.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => {
                    let name = reference
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    match merged(layer, session, Kind::Prompts).await {
                        Ok(l) => match l.get(name) {
                            Some(e) => {
                                msg["params"]["ref"]["name"] = Value::String(e.original.clone());
                                Some(e.upstream)
                            }
                            None => None,
                        },
                        Err(e) => return fail(e).await,
                    }
                }
                Some("ref/resource") => {
                    let uri = reference
                        .get("uri")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    owner_of_uri(layer, session, uri).await
                }
                _ => None,
            };
            let Some(upstream) = upstream else {
                return fail(RpcError::invalid_params("unknown completion reference")).await;
            };
            (upstream, None, None)
        }
        _ if session.upstreams.len() == 1 => (0, None, None),
        _ => {
            return fail(RpcError::new(
                jsonrpc::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
            ))
            .await
        }
    };
    forward(layer, session, ctx, upstream, msg, record, out).await;
    // The call has ended: its concurrency slots are free again.
    drop(permit);
}

#[expect(
    clippy::too_many_arguments,
    reason = "the denial's parts, passed as borrowed pieces"
)]
async fn deny(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    ctx: &RequestContext,
    record: Record,
    kind: Kind,
    id: &Value,
    rule: &str,
    reason: &str,
    out: &mpsc::Sender<Out>,
) {
    let text = format!("denied by policy rule {rule}: {reason}");
    // A denied tool call is a tool result the model can read and react to; prompts and
    // resources have no such channel and get a JSON-RPC error.
    let answer = if kind == Kind::Tools {
        jsonrpc::result(
            id.clone(),
            json!({"content": [{"type": "text", "text": text}], "isError": true}),
        )
    } else {
        RpcError::new(jsonrpc::FORBIDDEN, text).to_message(id.clone())
    };
    record.finish(layer, session, ctx, &answer);
    let _ = out.send(Out::Final(answer)).await;
}

async fn owner_of_uri(layer: &Arc<McpLayer>, session: &Arc<Session>, uri: &str) -> Option<usize> {
    let resources = merged(layer, session, Kind::Resources).await.ok()?;
    let templates = merged(layer, session, Kind::Templates).await.ok()?;
    if let Some(i) = federation::route_uri(&resources, &templates, uri) {
        return Some(i);
    }
    let mut with_resources = session
        .upstreams
        .iter()
        .enumerate()
        .filter(|(_, u)| u.has("resources"));
    match (with_resources.next(), with_resources.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// The arguments as audit records carry them, when the config says they should.
fn audited_arguments(layer: &McpLayer, args: &Value) -> Option<Value> {
    let state = layer.state.load();
    let audit = &state.config.audit;
    audit.arguments.then(|| redacted(args, &audit.redact))
}

/// A copy of `args` with fields replaced by `"[redacted]"`: a pattern with a dot is a path
/// (`args.card.number` or `card.number`), one without a key name matched at any depth,
/// ignoring case.
pub fn redacted(args: &Value, patterns: &[String]) -> Value {
    const MARK: &str = "[redacted]";
    fn walk(v: &mut Value, names: &[String]) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if names.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                        *x = Value::String(MARK.to_owned());
                    } else {
                        walk(x, names);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, names)),
            _ => {}
        }
    }
    let mut v = args.clone();
    let (paths, names): (Vec<&String>, Vec<&String>) =
        patterns.iter().partition(|p| p.contains('.'));
    let names: Vec<String> = names.into_iter().cloned().collect();
    walk(&mut v, &names);
    for path in paths {
        let path = path.strip_prefix("args.").unwrap_or(path);
        let mut cur = &mut v;
        let mut parts = path.split('.').peekable();
        while let Some(p) = parts.next() {
            let Some(next) = cur.get_mut(p) else {
                break;
            };
            if parts.peek().is_none() {
                *next = Value::String(MARK.to_owned());
                break;
            }
            cur = next;
        }
    }
    v
}

/// Removes `a.b.c` from a JSON object (policy redaction of arguments).
fn remove_path(v: &mut Value, path: &str) {
    let path = path.strip_prefix("args.").unwrap_or(path);
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return;
    };
    let mut cur = v;
    for p in parts {
        match cur.get_mut(p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.remove(last);
    }
}

/// Forwards a request to upstream `i` under a fresh id and relays what comes back.
async fn forward(
    layer: &Arc<McpLayer>,
    session: &Arc<Session>,
    ctx: &RequestContext,
    i: usize,
    mut msg: Value,
    record: Option<Record>,
    out: &mpsc::Sender<Out>,
) {
    let client_id = msg.get("id").cloned().unwrap_or(Value::Null);
    let upstream_id = session.upstream_id();
    msg["id"] = upstream_id.clone();
    let token = msg.pointer("/params/_meta/progressToken").cloned();
    let (related_tx, mut related_rx) = mpsc::channel(64);
    let n = session.begin(client_id.clone(), i, upstream_id, token, related_tx.clone());
    let result = {
        let call = call_upstream(layer, session, i, &msg, &related_tx);
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => break r,
                Some(m) = related_rx.recv() => {
                    let _ = out.send(Out::Message(outgoing(session, i, m))).await;
                }
            }
        }
    };
    session.end(n);
    drop(related_tx);
    while let Ok(m) = related_rx.try_recv() {
        let _ = out.send(Out::Message(outgoing(session, i, m))).await;
    }
    let answer = match result {
        Ok(mut v) => {
            v["id"] = client_id;
            v
        }
        Err(e) => {
            let code = match e {
                UpstreamError::Timeout => "timeout",
                _ => "unavailable",
            };
            RpcError::new(
                jsonrpc::UPSTREAM_ERROR,
                format!("{}: {e}", session.upstreams[i].name),
            )
            .with_data(json!({"server": session.upstreams[i].name, "reason": code}))
            .to_message(client_id)
        }
    };
    if let Some(r) = record {
        r.finish(layer, session, ctx, &answer);
    }
    let _ = out.send(Out::Final(answer)).await;
}

/// Prepares a message from upstream `i` for the client: server requests get a gateway id.
fn outgoing(session: &Session, i: usize, mut msg: Value) -> Value {
    if msg.get("method").is_some() && msg.get("id").is_some() {
        session.file_server_request(i, &mut msg);
    }
    msg
}

/// The client answered one of the upstream's requests (sampling, elicitation, roots).
pub async fn client_response(session: &Session, msg: Value) {
    let Some(mut msg) = session.answer(msg) else {
        return;
    };
    let Some(id) = msg.get("id").cloned() else {
        return;
    };
    let Some((i, original)) = session.take_server_request(&id) else {
        tracing::debug!(session = %session.id, "a response to no pending server request; dropped");
        return;
    };
    msg["id"] = original;
    if let Err(e) = session.upstreams[i].conn.load().send(msg).await {
        tracing::warn!(server = %session.upstreams[i].name, error = %e, "could not relay the client's response upstream");
    }
}

/// A notification from the client: cancellations go to the upstream running the call, the
/// rest to every upstream (`initialized` was already sent to each when it was opened).
pub async fn client_notification(_layer: &Arc<McpLayer>, session: &Arc<Session>, msg: Value) {
    match jsonrpc::method(&msg) {
        "notifications/initialized" => {}
        "notifications/cancelled" => {
            let Some(request_id) = msg.pointer("/params/requestId") else {
                return;
            };
            if let Some((i, upstream_id)) = session.running(request_id) {
                let mut m = msg.clone();
                m["params"]["requestId"] = upstream_id;
                let _ = session.upstreams[i].conn.load().send(m).await;
            }
        }
        _ => {
            for u in &session.upstreams {
                let _ = u.conn.load().send(msg.clone()).await;
            }
        }
    }
}

/// Delivers what upstreams send outside a response stream, for as long as the session lives.
pub async fn route_inbound(
    _layer: Arc<McpLayer>,
    session: Weak<Session>,
    mut rx: mpsc::Receiver<(usize, Value)>,
) {
    while let Some((i, mut msg)) = rx.recv().await {
        let Some(session) = session.upgrade() else {
            return;
        };
        match jsonrpc::method(&msg) {
            "notifications/tools/list_changed" => session.invalidate(Some(Kind::Tools)),
            "notifications/prompts/list_changed" => session.invalidate(Some(Kind::Prompts)),
            "notifications/resources/list_changed" => {
                session.invalidate(Some(Kind::Resources));
                session.invalidate(Some(Kind::Templates));
            }
            "notifications/cancelled" => {
                // The upstream withdrew one of its requests: name it by our id.
                let Some(theirs) = msg.pointer("/params/requestId").cloned() else {
                    continue;
                };
                let Some(ours) = session.our_id_for(i, &theirs) else {
                    continue;
                };
                msg["params"]["requestId"] = Value::String(ours);
            }
            "" => continue, // a stray response
            _ => {}
        }
        match session.related_for(i, &msg) {
            Some(related) => {
                let _ = related.send(msg).await;
            }
            None => session.standalone().push(&outgoing(&session, i, msg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_redaction_matches_names_anywhere_and_paths_exactly() {
        let args = json!({
            "user": "ann",
            "Password": "hunter2",
            "card": {"number": "4111", "exp": "12/30"},
            "items": [{"token": "t1", "sku": "a"}],
            "number": "kept",
        });
        let patterns = vec![
            "password".to_owned(),
            "token".to_owned(),
            "args.card.number".to_owned(),
            "missing.path".to_owned(),
        ];
        assert_eq!(
            redacted(&args, &patterns),
            json!({
                "user": "ann",
                "Password": "[redacted]",
                "card": {"number": "[redacted]", "exp": "12/30"},
                "items": [{"token": "[redacted]", "sku": "a"}],
                "number": "kept",
            })
        );
    }

    #[test]
    fn redaction_removes_nested_arguments() {
        let mut v = json!({"a": {"secret": 1, "keep": 2}, "top": 3});
        remove_path(&mut v, "args.a.secret");
        remove_path(&mut v, "top");
        remove_path(&mut v, "missing.x");
        assert_eq!(v, json!({"a": {"keep": 2}}));
    }
}
