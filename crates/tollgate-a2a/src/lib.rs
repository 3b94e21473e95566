//! tollgate's agent layer: `/a2a/{agent}` fronts a registered A2A agent (protocol 0.3 and
//! 1.0, JSON-RPC and HTTP+JSON bindings). The gateway serves the agent's card rewritten to
//! point at itself, authenticates callers, decides on each call with the shared policy
//! language and quotas, sends the agent a short-lived token it minted (subject = the caller,
//! `act` = the delegation chain), keeps each task and conversation on the replica that owns
//! it, relays push notifications through an SSRF-safe egress, and audits every call.
//! This crate depends on the core only.

mod admin;
pub mod affinity;
pub mod card;
mod error;
pub mod ops;
mod proxy;
pub mod push;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{HOST, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tollgate_core::audit::AuditEvent;
use tollgate_core::config::{A2aConfig, AgentConfig, Config};
use tollgate_core::identity::Principal;
use tollgate_core::policy::{self, Decision, Policy};
use tollgate_core::Core;

use crate::affinity::{LocalRoutes, RouteStore, SharedRoutes};
use crate::error::{A2aError, Shape};

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The largest card or non-streaming answer read from an agent.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The agent layer.
pub struct A2aLayer {
    core: Arc<Core>,
    state: ArcSwap<LayerState>,
    client: HttpClient,
    routes: Arc<dyn RouteStore>,
    cards: moka::sync::Cache<(String, String), card::Shared>,
    /// The last card digest seen per agent, to audit changes.
    digests: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Spreads new conversations over an agent's replicas.
    next_replica: AtomicUsize,
    relay: push::Relay,
    /// Agents registered through the admin API (config agents win on a name clash).
    stored: ArcSwap<Vec<AgentConfig>>,
}

struct LayerState {
    config: A2aConfig,
    policy: Policy,
}

fn http_client() -> HttpClient {
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

impl A2aLayer {
    pub fn new(core: Arc<Core>, config: &Config) -> Result<Arc<A2aLayer>, String> {
        let policy = Policy::from_config(config)?;
        let routes: Arc<dyn RouteStore> = match &core.shared {
            Some(shared) => Arc::new(SharedRoutes(shared.clone())),
            None => Arc::new(LocalRoutes::new(config.a2a.affinity_ttl, 1_000_000)),
        };
        let cards = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(config.a2a.card_ttl)
            .build();
        Ok(Arc::new(A2aLayer {
            relay: push::Relay::new(core.clone()),
            core,
            state: ArcSwap::from_pointee(LayerState {
                config: config.a2a.clone(),
                policy,
            }),
            client: http_client(),
            routes,
            cards,
            digests: std::sync::Mutex::default(),
            next_replica: AtomicUsize::new(0),
            stored: ArcSwap::from_pointee(Vec::new()),
        }))
    }

    /// Loads the admin-registered agents from the store.
    pub async fn refresh_registry(&self) -> Result<(), String> {
        let records = self
            .core
            .stores
            .agents
            .list_agents()
            .await
            .map_err(|e| format!("cannot load the agent registry: {e}"))?;
        let mut agents = Vec::with_capacity(records.len());
        for r in records {
            match tollgate_core::config::agent_from_json(&r.spec) {
                Ok(a) => agents.push(a),
                Err(errors) => tracing::error!(
                    agent = %r.name,
                    errors = ?errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "a stored agent is invalid; it is not served"
                ),
            }
        }
        self.stored.store(Arc::new(agents));
        Ok(())
    }

    /// Re-reads the registry every few seconds (other replicas' admin changes) until `stop`.
    /// After a registry write here: refresh now and tell the other replicas.
    pub async fn registry_changed(&self) {
        if let Err(e) = self.refresh_registry().await {
            tracing::warn!(error = %e, "agent registry refresh failed");
        }
        self.core
            .bus
            .publish(tollgate_core::bus::topic::AGENTS, String::new())
            .await;
    }

    /// Follows registry changes by other replicas: at once on a change notice, every 5 s
    /// regardless. Subscribes before it first runs, then catches up at once.
    pub fn run_registry_refresher(
        self: Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> {
        let notices = self.core.bus.subscribe();
        self.follow_registry(notices, stop)
    }

    async fn follow_registry(
        self: Arc<Self>,
        mut notices: tokio::sync::broadcast::Receiver<tollgate_core::bus::Notice>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use tollgate_core::bus::topic;
        if let Err(e) = self.refresh_registry().await {
            tracing::warn!(error = %e, "agent registry refresh failed");
        }
        // A deadline, not a sleep restarted on every notice: notices of other topics (one per
        // semantic-cache entry) must not postpone the poll.
        let mut next_poll = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_poll) => {}
                n = notices.recv() => {
                    if matches!(&n, Ok(n) if !n.concerns(topic::AGENTS)) {
                        continue;
                    }
                }
                _ = stop.changed() => break,
            }
            next_poll = tokio::time::Instant::now() + Duration::from_secs(5);
            if let Err(e) = self.refresh_registry().await {
                tracing::warn!(error = %e, "agent registry refresh failed");
            }
        }
    }

    /// Every agent: the config's, then the admin API's.
    fn agents(&self, state: &LayerState) -> Vec<AgentConfig> {
        let stored = self.stored.load();
        let mut all = state.config.agents.clone();
        all.extend(
            stored
                .iter()
                .filter(|a| state.config.agent(&a.name).is_none())
                .cloned(),
        );
        all
    }

    pub(crate) fn find_agent(&self, state: &LayerState, name: &str) -> Option<AgentConfig> {
        state
            .config
            .agent(name)
            .cloned()
            .or_else(|| self.stored.load().iter().find(|a| a.name == name).cloned())
    }

    /// The agent registry's admin API.
    pub fn admin_router(self: &Arc<Self>) -> Router {
        admin::router(self.clone())
    }

    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let policy = Policy::from_config(config)?;
        self.state.store(Arc::new(LayerState {
            config: config.a2a.clone(),
            policy,
        }));
        self.cards.invalidate_all();
        Ok(())
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/a2a/agents", get(catalog))
            .route("/a2a/.well-known/jwks.json", get(jwks))
            .route("/a2a/_push/{id}", post(push::callback))
            .route("/a2a/{agent}", any(agent_root))
            .route("/a2a/{agent}/{*rest}", any(agent_path))
            .with_state(self.clone())
    }

    /// The externally visible base URL.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.state.load().config.public_url {
            return u.clone();
        }
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    fn jwks_url(&self, headers: &HeaderMap) -> String {
        format!("{}/a2a/.well-known/jwks.json", self.base_url(headers))
    }

    /// Authenticates the caller; agents never see the caller's own credential.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, A2aError> {
        self.core
            .authenticate(headers)
            .await
            .map_err(A2aError::from)
    }

    /// Policy on `agent`/`method` for `principal`.
    fn decide(
        &self,
        state: &LayerState,
        principal: &Principal,
        agent: &AgentConfig,
        method: &str,
        wire: &str,
        version: &str,
    ) -> Result<(), (A2aError, Option<String>)> {
        if !agent.methods.is_empty() && !agent.methods.iter().any(|m| m == method) {
            return Err((
                A2aError::denied(format!(
                    "{method} is not among the operations allowed on agent {:?}",
                    agent.name
                )),
                Some("methods".into()),
            ));
        }
        let request = policy::agent_request_value(
            &agent.name,
            method,
            wire,
            version,
            principal.tenant.as_deref().unwrap_or(""),
        );
        match state
            .policy
            .evaluate(&policy::principal_value(principal), &request)
        {
            Decision::Allow { .. } => Ok(()),
            Decision::Deny { rule, reason } => Err((
                A2aError::denied(format!("denied by policy {rule}: {reason}")),
                Some(rule),
            )),
            Decision::RequireApproval { rule } => Err((
                A2aError::denied(format!(
                    "policy {rule} requires an approval, which the agent layer does not hold calls for"
                )),
                Some(rule),
            )),
        }
    }

    /// Whether `principal` may see `agent` at all (the catalog, cards): policy on the
    /// pseudo-operation `GetAgentCard`.
    fn visible(&self, state: &LayerState, principal: &Principal, agent: &AgentConfig) -> bool {
        let request = policy::agent_request_value(
            &agent.name,
            "GetAgentCard",
            "GET",
            "",
            principal.tenant.as_deref().unwrap_or(""),
        );
        matches!(
            state
                .policy
                .evaluate(&policy::principal_value(principal), &request),
            Decision::Allow { .. }
        )
    }

    /// The upstream card, from memory while fresh. `version` is the caller's `A2A-Version`
    /// (agents may answer each version with another card shape).
    async fn upstream_card(
        &self,
        agent: &AgentConfig,
        version: &str,
    ) -> Result<card::Shared, A2aError> {
        if let Some(c) = &agent.card {
            return Ok(Arc::new(card::Fetched {
                digest: card::digest(c),
                signed: c.get("signatures").is_some(),
                card: c.clone(),
            }));
        }
        let key = (agent.name.clone(), version.to_owned());
        if let Some(c) = self.cards.get(&key) {
            return Ok(c);
        }
        let mut req = http::Request::get(agent.card_url.as_str());
        if !version.is_empty() {
            req = req.header("a2a-version", version);
        }
        for (k, v) in &agent.headers {
            req = req.header(k.as_str(), v.expose());
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| A2aError::upstream(format!("cannot build the card request: {e}")))?;
        let res = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| A2aError::upstream("the agent's card did not arrive within 10s"))?
            .map_err(|e| A2aError::upstream(format!("cannot fetch the agent's card: {e}")))?;
        if !res.status().is_success() {
            return Err(A2aError::upstream(format!(
                "the agent's card endpoint answered HTTP {}",
                res.status().as_u16()
            )));
        }
        let body = http_body_util::Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| A2aError::upstream(format!("cannot read the agent's card: {e}")))?
            .to_bytes();
        let c: Value = serde_json::from_slice(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| A2aError::upstream("the agent's card is not a JSON object"))?;
        if let Some(keys) = &agent.trusted_keys {
            if let Err(e) = card::verify(&c, keys) {
                self.audit_card(
                    agent,
                    "a2a.card.rejected",
                    "denied",
                    json!({"agent": agent.name, "sha256": card::digest(&c), "error": e}),
                );
                return Err(A2aError::upstream(format!(
                    "the agent's card is refused: {e}"
                )));
            }
        }
        let fetched = Arc::new(card::Fetched {
            digest: card::digest(&c),
            signed: c.get("signatures").is_some(),
            card: c,
        });
        // The last digest seen, here or (after a restart, or on another replica) in the store.
        let digest_key = format!("a2a.card_digest:{}:{version}", agent.name);
        let remembered = self
            .digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest_key)
            .cloned();
        let prev = match remembered {
            Some(p) => Some(p),
            None => self
                .core
                .stores
                .meta
                .get_meta(&digest_key)
                .await
                .ok()
                .flatten(),
        };
        if prev.as_deref() != Some(fetched.digest.as_str()) {
            self.digests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(digest_key.clone(), fetched.digest.clone());
            if let Err(e) = self
                .core
                .stores
                .meta
                .set_meta(&digest_key, &fetched.digest)
                .await
            {
                tracing::warn!(error = %e, "cannot record the agent card's digest");
            }
            if let Some(prev) = prev {
                tracing::warn!(agent = %agent.name, "the agent's card changed");
                self.audit_card(
                    agent,
                    "a2a.card.changed",
                    "success",
                    json!({"agent": agent.name, "sha256": fetched.digest, "previous_sha256": prev}),
                );
            }
        }
        self.cards.insert(key, fetched.clone());
        Ok(fetched)
    }

    fn audit_card(&self, agent: &AgentConfig, action: &str, outcome: &str, detail: Value) {
        let mut ev = AuditEvent::new(action, outcome);
        ev.target = Some(agent.name.clone());
        ev.detail = detail;
        self.core.audit.try_record(ev);
    }

    /// The card the gateway serves for `agent`.
    pub(crate) async fn served_card(
        &self,
        agent: &AgentConfig,
        headers: &HeaderMap,
    ) -> Result<Value, A2aError> {
        // Only the versions the gateway speaks: the card cache and the stored digests are keyed
        // on it, so an arbitrary header value must not mint new entries.
        let header = headers.get("a2a-version").and_then(|v| v.to_str().ok());
        let version = match ops::Version::from_header(header) {
            Some(_) => header.map(str::trim).unwrap_or(""),
            None => {
                return Err(A2aError::new(
                    StatusCode::BAD_REQUEST,
                    error::VERSION_NOT_SUPPORTED,
                    "VERSION_NOT_SUPPORTED",
                    format!(
                        "A2A-Version {:?} is not supported; use 0.3 or 1.0",
                        header.unwrap_or_default()
                    ),
                ))
            }
        };
        let fetched = self.upstream_card(agent, version).await?;
        let mut c = card::rewrite(&fetched.card, agent, &self.base_url(headers));
        if fetched.signed {
            card::sign(&mut c, &self.core.signer, &self.jwks_url(headers)).map_err(|e| {
                A2aError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error::INTERNAL,
                    "INTERNAL",
                    e,
                )
            })?;
        }
        Ok(c)
    }
}

fn rest_error(e: &A2aError) -> Response {
    let mut res = e.response(Shape::Rest, &Value::Null);
    if e.status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

async fn jwks(State(layer): State<Arc<A2aLayer>>) -> Response {
    tollgate_core::http::json_response(StatusCode::OK, layer.core.signer.jwks().to_string())
}

/// `GET /a2a/agents`: the agents the caller may see, with their cards as served.
async fn catalog(State(layer): State<Arc<A2aLayer>>, headers: HeaderMap) -> Response {
    let principal = match layer.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return rest_error(&e),
    };
    let asked = headers.get("a2a-version").and_then(|v| v.to_str().ok());
    if ops::Version::from_header(asked).is_none() {
        return rest_error(&A2aError::new(
            StatusCode::BAD_REQUEST,
            error::VERSION_NOT_SUPPORTED,
            "VERSION_NOT_SUPPORTED",
            format!(
                "A2A-Version {:?} is not supported; use 0.3 or 1.0",
                asked.unwrap_or_default()
            ),
        ));
    }
    let state = layer.state.load_full();
    let base = layer.base_url(&headers);
    let all = layer.agents(&state);
    let visible: Vec<&AgentConfig> = all
        .iter()
        .filter(|a| layer.visible(&state, &principal, a))
        .collect();
    let cards =
        futures_util::future::join_all(visible.iter().map(|a| layer.served_card(a, &headers)))
            .await;
    let agents: Vec<Value> = visible
        .iter()
        .zip(cards)
        .map(|(a, c)| {
            let mut entry = json!({
                "name": a.name,
                "url": format!("{base}/a2a/{}", a.name),
                "card_url": format!("{base}/a2a/{}/.well-known/agent-card.json", a.name),
            });
            match c {
                Ok(c) => entry["card"] = c,
                Err(e) => entry["error"] = e.message.into(),
            }
            entry
        })
        .collect();
    tollgate_core::http::json_response(StatusCode::OK, json!({"agents": agents}).to_string())
}

type PathResult<T> = Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>;

/// A 400 in the A2A REST shape for a malformed path.
fn bad_path(why: impl Into<String>) -> Response {
    rest_error(&A2aError::new(
        StatusCode::BAD_REQUEST,
        error::INVALID_REQUEST,
        "INVALID_ARGUMENT",
        why,
    ))
}

/// Whether a (decoded) path below an agent may be forwarded to it: no `.` or `..` segments (a
/// decoded `%2e%2e%2f` must not walk out of the agent's base path), nothing that would change
/// the URL's structure (`?`, `#`, `\`), no spaces or control characters.
pub(crate) fn forwardable(rest: &str) -> bool {
    rest.split('/').all(|seg| seg != "." && seg != "..")
        && !rest
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '\\'))
}

async fn agent_root(
    State(layer): State<Arc<A2aLayer>>,
    path: PathResult<String>,
    req: Request,
) -> Response {
    match path {
        Ok(axum::extract::Path(agent)) => serve(layer, agent, String::new(), req).await,
        Err(e) => bad_path(format!("invalid path: {e}")),
    }
}

async fn agent_path(
    State(layer): State<Arc<A2aLayer>>,
    path: PathResult<(String, String)>,
    req: Request,
) -> Response {
    match path {
        Ok(axum::extract::Path((agent, rest))) if forwardable(&rest) => {
            serve(layer, agent, format!("/{rest}"), req).await
        }
        Ok(_) => {
            bad_path("the path has a `.` or `..` segment or characters that cannot be forwarded")
        }
        Err(e) => bad_path(format!("invalid path: {e}")),
    }
}

async fn serve(layer: Arc<A2aLayer>, name: String, rest: String, req: Request) -> Response {
    let state = layer.state.load_full();
    let Some(agent) = layer.find_agent(&state, &name) else {
        return rest_error(&A2aError::new(
            StatusCode::NOT_FOUND,
            error::METHOD_NOT_FOUND,
            "AGENT_NOT_FOUND",
            format!("no agent named {name:?}"),
        ));
    };
    let card_path = matches!(
        rest.as_str(),
        "/.well-known/agent-card.json" | "/.well-known/agent.json"
    );
    if card_path {
        if req.method() != Method::GET {
            return rest_error(&A2aError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                error::INVALID_REQUEST,
                "METHOD_NOT_ALLOWED",
                "the agent card is read with GET",
            ));
        }
        let principal = match layer.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(e) => return rest_error(&e),
        };
        if !layer.visible(&state, &principal, &agent) {
            return rest_error(&A2aError::new(
                StatusCode::NOT_FOUND,
                error::METHOD_NOT_FOUND,
                "AGENT_NOT_FOUND",
                format!("no agent named {name:?}"),
            ));
        }
        return match layer.served_card(&agent, req.headers()).await {
            Ok(c) => {
                let mut res = tollgate_core::http::json_response(StatusCode::OK, c.to_string());
                res.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("private, max-age=60"),
                );
                res
            }
            Err(e) => rest_error(&e),
        };
    }
    proxy::handle(layer.clone(), state, agent, rest, req).await
}

/// How many replicas an agent has, and the next one for a new conversation.
impl A2aLayer {
    fn pick_replica(&self, agent: &AgentConfig) -> usize {
        self.next_replica.fetch_add(1, Ordering::Relaxed) % agent.urls.len().max(1)
    }
}

impl IntoResponse for A2aError {
    fn into_response(self) -> Response {
        rest_error(&self)
    }
}
