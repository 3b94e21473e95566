//! tollgate's tool layer: `/mcp` serves one virtual MCP server federating every configured
//! upstream, `/mcp/{name}` a configured subset. Clients speak Streamable HTTP (MCP 2024-11-05
//! to 2025-11-25); upstreams are Streamable HTTP, HTTP+SSE or stdio processes.
//!
//! The request path has the shape every layer shares: origin check, authenticate, parse the
//! JSON-RPC envelope, find the session, then per method: authorize (policy on the tool and its
//! arguments), route to the owning upstream, relay, and audit. This crate depends on the core
//! only; it never calls an upstream with the client's credentials.

mod admin;
mod approval;
mod calls;
pub mod federation;
mod front;
pub mod jsonrpc;
pub mod pins;
pub mod seal;
pub mod session;
pub mod sse;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tollgate_core::audit::AuditEvent;
use tollgate_core::config::{Config, McpConfig, McpServerConfig};
use tollgate_core::policy::Policy;
use tollgate_core::Core;

use crate::seal::Sealer;
use crate::session::{Session, Sessions, Upstream};
use crate::upstream::{Conn, Connect, HttpClient, Inbound, UpstreamError};

/// Protocol versions the front door speaks, newest first.
pub const VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The tool layer.
pub struct McpLayer {
    core: Arc<Core>,
    state: ArcSwap<State>,
    sessions: Sessions,
    client: HttpClient,
    /// The long-lived runtime: upstream readers, listeners and child processes live here,
    /// not on the serving thread that happened to open the session.
    runtime: tokio::runtime::Handle,
    sealer: Sealer,
    pins: pins::Pins,
    /// Woken when an approval is decided on this replica (held calls also poll the store).
    approvals_changed: tokio::sync::Notify,
    /// OAuth clients by server name.
    tokens: std::sync::Mutex<std::collections::HashMap<String, Arc<upstream::oauth::TokenSource>>>,
    /// Sessions ended here (deleted or expired), so their sealed ids are not reopened.
    ended: session::Ended,
    /// One reopening at a time, so concurrent requests of a moved session share one.
    resuming: tokio::sync::Mutex<()>,
}

/// What a session id carries, sealed for the principal that opened it, so that any replica
/// can reopen the session after the one holding it stopped: the path, the protocol version
/// and the client's `initialize` parameters (to initialize the upstreams again).
#[derive(serde::Serialize, serde::Deserialize)]
struct Resumable {
    /// 128 random bits: ids never repeat.
    n: String,
    t: Option<String>,
    v: String,
    i: Value,
}

/// Longer sealed ids (a client sending huge `initialize` parameters) fall back to a plain
/// random id: such a session is not resumable elsewhere.
const MAX_SESSION_ID: usize = 2048;

/// How long a replica remembers, in Redis, that a session ended.
const ENDED_TTL: Duration = Duration::from_secs(7 * 86_400);

/// What one config generation decides.
struct State {
    config: McpConfig,
    policy: Policy,
    /// The JWT issuer, advertised as the authorization server in the resource metadata.
    issuer: Option<String>,
}

impl State {
    fn new(config: &Config) -> Result<State, String> {
        let policy = Policy::from_config(config)?;
        Ok(State {
            config: config.mcp.clone(),
            policy,
            issuer: config.auth.jwt.as_ref().map(|j| j.issuer.clone()),
        })
    }
}

impl McpLayer {
    /// Builds the layer; the sealing key comes from the store so every replica shares it.
    pub async fn new(core: Arc<Core>, config: &Config) -> Result<Arc<McpLayer>, String> {
        upstream::set_max_message(&config.limits);
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| format!("no randomness: {e}"))?;
        let stored = core
            .stores
            .meta
            .set_meta_if_absent("mcp.seal_key", &tollgate_core::hex::encode(&fresh))
            .await
            .map_err(|e| format!("cannot load the MCP sealing key: {e}"))?;
        let key = tollgate_core::hex::decode32(&stored)
            .ok_or("the stored MCP sealing key is malformed")?;
        let layer = Arc::new(McpLayer {
            core,
            state: ArcSwap::from_pointee(State::new(config)?),
            sessions: Sessions::default(),
            client: upstream::http_client(),
            runtime: tokio::runtime::Handle::current(),
            sealer: Sealer::new(key),
            tokens: std::sync::Mutex::default(),
            pins: pins::Pins::default(),
            approvals_changed: tokio::sync::Notify::new(),
            ended: session::Ended::default(),
            resuming: tokio::sync::Mutex::new(()),
        });
        layer
            .core
            .metrics
            .register_collector(Box::new(SessionCollector(Arc::downgrade(&layer))));
        layer.runtime.spawn(McpLayer::follow_notices(
            Arc::downgrade(&layer),
            layer.core.bus.subscribe(),
        ));
        Ok(layer)
    }

    /// Swaps in a new config. Open sessions keep the upstreams they were opened with; new
    /// sessions and every policy decision use the new one.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        upstream::set_max_message(&config.limits);
        self.state.store(Arc::new(State::new(config)?));
        Ok(())
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        front::router(self.clone())
    }

    /// The approval queue and tool pins, for the admin listener.
    pub fn admin_router(self: &Arc<Self>) -> axum::Router {
        admin::router(self.clone())
    }

    /// Open sessions (for tests and metrics).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Ends sessions idle longer than `mcp.session_idle_timeout`, every few seconds, until
    /// `stop`; then ends all of them.
    pub async fn run_sweeper(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.changed() => break,
            }
            let idle = self.state.load().config.session_idle_timeout;
            for s in self.sessions.expired(idle) {
                tracing::info!(session = %s.id, "MCP session expired");
                // Not reopened here; a client that comes back through another replica may
                // still reopen it (only a DELETE ends a session everywhere).
                self.ended.insert(&s.id);
                s.close().await;
            }
        }
        for s in self.sessions.drain() {
            s.close().await;
        }
    }

    /// The shared OAuth client of a server that has one (replaced when its config changes).
    fn token_source(&self, cfg: &McpServerConfig) -> Option<Arc<upstream::oauth::TokenSource>> {
        let oauth = cfg.oauth.as_ref()?;
        let mut tokens = self.tokens.lock().ok()?;
        match tokens.get(&cfg.name) {
            Some(t) if &t.cfg == oauth => Some(t.clone()),
            _ => {
                let t = Arc::new(upstream::oauth::TokenSource::new(
                    oauth.clone(),
                    self.client.clone(),
                ));
                tokens.insert(cfg.name.clone(), t.clone());
                Some(t)
            }
        }
    }

    /// Connects to one upstream and runs its `initialize` handshake with the client's
    /// capabilities (so the upstream may ask for sampling or elicitation only when the client
    /// can answer).
    async fn open_upstream(
        &self,
        cfg: &McpServerConfig,
        client_init: &Value,
        version: &str,
        inbound: Inbound,
        principal: &str,
    ) -> Result<(Conn, Value), UpstreamError> {
        let audit = self.core.audit.clone();
        let who = principal.to_owned();
        let command = match &cfg.transport {
            tollgate_core::config::McpTransport::Stdio { command, .. } => command.clone(),
            _ => String::new(),
        };
        let on_spawn = Arc::new(move |server: &str, pid: Option<u32>| {
            let mut ev = AuditEvent::new("mcp.spawn", "success");
            ev.principal = Some(who.clone());
            ev.target = Some(server.to_owned());
            ev.detail = json!({"command": command, "pid": pid});
            if !audit.try_record(ev) {
                tracing::error!(server, "audit queue full: a stdio spawn went unrecorded");
            }
        });
        let conn = Conn::connect(
            cfg,
            Connect {
                client: &self.client,
                inbound: inbound.clone(),
                runtime: &self.runtime,
                on_spawn,
                auth: self.token_source(cfg),
            },
        )
        .await?;
        let init = jsonrpc::request(
            json!(0),
            "initialize",
            json!({
                "protocolVersion": version,
                "capabilities": client_init.get("capabilities").cloned().unwrap_or_else(|| json!({})),
                "clientInfo": client_init.get("clientInfo").cloned().unwrap_or_else(|| json!({"name": "tollgate", "version": env!("CARGO_PKG_VERSION")})),
            }),
        );
        // Nothing may arrive before the handshake completes; anything that does is dropped.
        let (related, _ignored) = mpsc::channel(16);
        let res = conn.request(&init, &related).await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                conn.close().await;
                return Err(e);
            }
        };
        let Some(result) = res.get("result").cloned() else {
            conn.close().await;
            return Err(UpstreamError::Protocol(format!(
                "initialize failed: {}",
                res.get("error").cloned().unwrap_or(Value::Null)
            )));
        };
        conn.send(jsonrpc::notification(
            "notifications/initialized",
            Value::Null,
        ))
        .await?;
        let negotiated = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(version)
            .to_owned();
        conn.initialized(&negotiated, inbound, &self.runtime).await;
        Ok((conn, result))
    }

    /// Opens a session: every upstream of the target is initialized concurrently; those that
    /// fail are left out (and logged) unless all fail.
    async fn open_session(
        self: &Arc<Self>,
        principal: Arc<tollgate_core::identity::Principal>,
        target: Option<String>,
        servers: &[McpServerConfig],
        version: String,
        client_init: Value,
        resumed_id: Option<String>,
    ) -> Result<Arc<Session>, jsonrpc::RpcError> {
        let (tx, rx) = mpsc::channel(256);
        let label = principal.label();
        let opened = futures_util::future::join_all(servers.iter().enumerate().map(|(i, cfg)| {
            self.open_upstream(
                cfg,
                &client_init,
                &version,
                Inbound {
                    index: i,
                    tx: tx.clone(),
                },
                &label,
            )
        }))
        .await;
        drop(tx);
        let mut upstreams = Vec::new();
        let mut failures = Vec::new();
        // Upstream indexes must match the inbound tags: keep failed ones out by remapping.
        let (remap_tx, remap_rx) = mpsc::channel(256);
        let mut index_map = Vec::new();
        for (cfg, r) in servers.iter().zip(opened) {
            match r {
                Ok((conn, init)) => {
                    index_map.push(Some(upstreams.len()));
                    upstreams.push(Upstream {
                        name: cfg.name.clone(),
                        conn: ArcSwap::from_pointee(conn),
                        init,
                        restart: std::sync::Mutex::new((
                            std::time::Instant::now(),
                            Duration::from_millis(500),
                        )),
                        reopening: tokio::sync::Mutex::new(()),
                    });
                }
                Err(e) => {
                    index_map.push(None);
                    tracing::warn!(server = %cfg.name, error = %e, "MCP upstream unavailable; the session goes on without it");
                    failures.push(format!("{}: {e}", cfg.name));
                }
            }
        }
        if upstreams.is_empty() {
            return Err(jsonrpc::RpcError::new(
                jsonrpc::UPSTREAM_ERROR,
                format!(
                    "no upstream MCP server is reachable ({})",
                    failures.join("; ")
                ),
            )
            .with_status(http::StatusCode::BAD_GATEWAY));
        }
        let id = match resumed_id {
            Some(id) => id,
            None => self
                .mint_session_id(&label, target.as_deref(), &version, &client_init)
                .ok_or_else(|| {
                    jsonrpc::RpcError::new(
                        jsonrpc::INTERNAL_ERROR,
                        "no randomness for a session id",
                    )
                    .with_status(http::StatusCode::INTERNAL_SERVER_ERROR)
                })?,
        };
        let session = Arc::new(Session::new(
            id,
            principal,
            target,
            version,
            client_init,
            upstreams,
            remap_tx.clone(),
        ));
        self.runtime.spawn(remap(rx, index_map, remap_tx));
        self.runtime.spawn(calls::route_inbound(
            self.clone(),
            Arc::downgrade(&session),
            remap_rx,
        ));
        self.sessions.insert(session.clone());
        Ok(session)
    }

    /// A new session's id: what reopening it needs, sealed for its principal.
    fn mint_session_id(
        &self,
        principal: &str,
        target: Option<&str>,
        version: &str,
        client_init: &Value,
    ) -> Option<String> {
        let nonce = session_id()?;
        let payload = serde_json::to_vec(&Resumable {
            n: nonce.clone(),
            t: target.map(str::to_owned),
            v: version.to_owned(),
            i: client_init.clone(),
        })
        .ok()?;
        let sealed = self.sealer.seal(principal, &payload);
        Some(if sealed.len() <= MAX_SESSION_ID {
            sealed
        } else {
            nonce
        })
    }

    /// Reopens a session this replica does not hold from its sealed id: the upstreams are
    /// initialized again with the client's original parameters. `None`: not a session of this
    /// caller on this path, or one that ended.
    async fn resume_session(
        self: &Arc<Self>,
        id: &str,
        principal: &Arc<tollgate_core::identity::Principal>,
        target: Option<&str>,
        servers: &[McpServerConfig],
    ) -> Result<Option<Arc<Session>>, jsonrpc::RpcError> {
        let Some(payload) = self.sealer.open(&principal.label(), id) else {
            return Ok(None);
        };
        let Ok(r) = serde_json::from_slice::<Resumable>(&payload) else {
            return Ok(None);
        };
        if r.t.as_deref() != target {
            return Ok(None);
        }
        let _one = self.resuming.lock().await;
        if let Some(s) = self.sessions.get(id) {
            return Ok(Some(s));
        }
        if self.has_ended(id).await {
            return Ok(None);
        }
        let session = self
            .open_session(
                principal.clone(),
                r.t,
                servers,
                r.v,
                r.i,
                Some(id.to_owned()),
            )
            .await?;
        tracing::info!(session = %session.id, principal = %session.owner, upstreams = session.upstreams.len(), "MCP session reopened on this replica");
        Ok(Some(session))
    }

    /// Ends a session at the client's request: closed here, dropped by every replica that
    /// holds a copy (it may have moved), and never reopened.
    async fn end_session(&self, session: &Session) {
        self.sessions.remove(&session.id);
        self.ended.insert(&session.id);
        if let Some(shared) = &self.core.shared {
            if let Err(e) = shared.put(&ended_key(&session.id), b"1", ENDED_TTL).await {
                tracing::warn!(error = %e, "could not record an ended MCP session in Redis; another replica could reopen it");
            }
        }
        self.core
            .bus
            .publish(
                tollgate_core::bus::topic::MCP_SESSION_ENDED,
                session.id.clone(),
            )
            .await;
        session.close().await;
    }

    /// Acts on other replicas' changes as their notices arrive: drops the copies of sessions
    /// ended there, wakes calls held for an approval decided there, and takes in tool
    /// definitions approved there. After a resync (notices may have been missed) held calls
    /// look again and the known pins are read from the store.
    async fn follow_notices(
        this: std::sync::Weak<Self>,
        mut notices: tokio::sync::broadcast::Receiver<tollgate_core::bus::Notice>,
    ) {
        use tollgate_core::bus::topic;
        loop {
            let n = match notices.recv().await {
                Ok(n) => n,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    tollgate_core::bus::Notice {
                        topic: topic::RESYNC.to_owned(),
                        payload: String::new(),
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(layer) = this.upgrade() else {
                return;
            };
            match n.topic.as_str() {
                topic::MCP_SESSION_ENDED => {
                    layer.ended.insert(&n.payload);
                    if let Some(s) = layer.sessions.remove(&n.payload) {
                        tracing::info!(session = %s.id, "MCP session ended through another replica");
                        s.close().await;
                    }
                }
                topic::MCP_APPROVALS => layer.approvals_changed.notify_waiters(),
                topic::MCP_PINS => match serde_json::from_str::<pins::Approved>(&n.payload) {
                    Ok(a) => layer.pins.approved(&a.server, &a.tool, &a.sha256),
                    Err(e) => tracing::warn!(error = %e, "malformed pin notice ignored"),
                },
                topic::RESYNC => {
                    layer.approvals_changed.notify_waiters();
                    match layer.core.stores.mcp.tool_pins(None).await {
                        Ok(stored) => layer.pins.refresh(&stored),
                        Err(e) => tracing::warn!(error = %e, "cannot reread tool pins"),
                    }
                }
                _ => {}
            }
        }
    }

    async fn has_ended(&self, id: &str) -> bool {
        if self.ended.contains(id) {
            return true;
        }
        match &self.core.shared {
            Some(shared) => match shared.get(&ended_key(id)).await {
                Ok(found) => found.is_some(),
                // Unknown: refusing is the safe side (the client initializes again).
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell whether an MCP session ended (Redis); not reopening it");
                    true
                }
            },
            None => false,
        }
    }
}

/// The Redis key recording that a session ended (ids can be long: a digest).
fn ended_key(id: &str) -> String {
    use sha2::Digest;
    format!(
        "mcp.ended:{}",
        tollgate_core::hex::encode(&sha2::Sha256::digest(id.as_bytes())[..16])
    )
}

/// Renumbers upstream messages from config order to the session's order (which skips
/// upstreams that failed to open).
async fn remap(
    mut rx: mpsc::Receiver<(usize, Value)>,
    map: Vec<Option<usize>>,
    tx: mpsc::Sender<(usize, Value)>,
) {
    while let Some((i, msg)) = rx.recv().await {
        if let Some(Some(j)) = map.get(i) {
            if tx.send((*j, msg)).await.is_err() {
                return;
            }
        }
    }
}

/// 128 random bits in hex: visible ASCII as the spec requires, and unguessable.
fn session_id() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).ok()?;
    Some(tollgate_core::hex::encode(&b))
}

/// Exports `tollgate_mcp_sessions`, the open client sessions, at scrape time.
struct SessionCollector(std::sync::Weak<McpLayer>);

impl std::fmt::Debug for SessionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCollector")
    }
}

impl prometheus_client::collector::Collector for SessionCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Some(layer) = self.0.upgrade() else {
            return Ok(());
        };
        let m = encoder.encode_descriptor(
            "mcp_sessions",
            "Open MCP client sessions on this replica",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(layer.session_count() as i64)
            .encode(m)?;
        Ok(())
    }
}
