//! tollgate's shared core: configuration, identity (keys and principals), storage, errors,
//! metrics, logging and the HTTP shell. The model, tool and agent layers build on it and never
//! on each other.

pub mod admin;
pub mod audit;
pub mod audit_admin;
mod batch;
pub mod budget;
pub mod bus;
pub mod canonical;
pub mod config;
pub mod console;
pub mod context;
pub mod conversations;
pub mod cors;
#[cfg(test)]
mod counters_suite;
pub mod degrade;
pub mod directory;
pub mod error;
pub mod glob;
pub mod hex;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod net;
pub mod otlp;
pub mod policy;
pub mod quota;
pub mod ratelimit;
pub mod redact;
pub mod redis_store;
pub mod signing;
pub mod spend;
pub mod spill;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod time;
pub mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ::http::{HeaderMap, StatusCode};
use arc_swap::ArcSwap;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::identity::Principal;
use crate::jwt::JwtVerifier;
use crate::keys::{KeyService, MasterKey};
use crate::metrics::Metrics;
use crate::store::Stores;

/// State every layer shares. One per process; the config inside is swapped on reload.
pub struct Core {
    config: ArcSwap<Config>,
    pub stores: Stores,
    pub keys: Arc<KeyService>,
    pub metrics: Metrics,
    /// The audit chain's writer; events are batched off the request path.
    pub audit: AuditLog,
    /// The spend ledger's writer, batched the same way.
    pub ledger: crate::ledger::Ledger,
    /// Spend limits, enforced by reservation.
    pub budgets: Arc<crate::budget::Budgets>,
    /// Requests and tokens per minute.
    pub rate_limits: Arc<crate::ratelimit::RateLimits>,
    /// Execution quotas' counters (MCP tool calls, A2A methods).
    pub quotas: Arc<crate::quota::Quotas>,
    /// What limits do while their shared counters (Redis) fail.
    pub shared_failures: Arc<crate::degrade::SharedFailures>,
    /// Finished spans go here (a no-op unless `telemetry.otlp` is set).
    pub tracer: crate::otlp::Tracer,
    /// Values replicas share (the response cache), when `storage.redis_url` is configured.
    pub shared: Option<Arc<dyn crate::redis_store::SharedBlobs>>,
    /// Change notices between replicas (over Redis when it is configured).
    pub bus: Arc<crate::bus::Bus>,
    /// The gateway's own signing key (identity tokens, re-signed cards, push JWTs).
    pub signer: Arc<crate::signing::GatewayKey>,
    /// Signs admin console session cookies (shared by every replica through the store).
    pub console: crate::console::SessionKey,
    /// The sliding-window counters rate limits and quotas use (in Redis when configured);
    /// also counts failed console sign-ins.
    pub buckets: Arc<dyn crate::ratelimit::RateBuckets>,
    /// Open streams per principal (`limits.max_streams_per_key`).
    pub streams: crate::streams::StreamSlots,
    /// JWT verification, when `auth.jwt` is configured.
    jwt: ArcSwap<Option<Arc<JwtVerifier>>>,
    draining: AtomicBool,
}

impl Core {
    /// Opens the store, loads the key cache and settles the master key.
    pub async fn open(config: Config) -> Result<(Arc<Core>, MasterKey), ApiError> {
        let stores = Stores::open(&config.storage.database_url).await?;
        let redis = match &config.storage.redis_url {
            Some(url) => Some(crate::redis_store::connect(url.expose()).await?),
            None => None,
        };
        let bus = match (&config.storage.redis_url, &redis) {
            (Some(url), Some(con)) => {
                crate::bus::Bus::redis(url.expose(), con.clone(), &config.storage.redis_prefix)
                    .await
            }
            _ => crate::bus::Bus::local(),
        };
        let keys = Arc::new(
            KeyService::new(stores.keys.clone(), stores.directory.clone())
                .await?
                .with_bus(bus.clone()),
        );
        let master = keys
            .settle_master(config.master_key.as_ref().map(|k| k.expose()), &stores.meta)
            .await?;
        // The writer task lives as long as the runtime; `flush` at shutdown commits its queue.
        let spill = Some(config.storage.spill_dir.as_path());
        let (audit, _writer) = AuditLog::start(stores.audit.clone(), spill);
        let ledger = crate::ledger::Ledger::start(stores.ledger.clone(), spill);
        let tracer = crate::otlp::Tracer::start(config.telemetry.otlp.as_ref());
        let jwt = match &config.auth.jwt {
            Some(cfg) => Some(Arc::new(
                JwtVerifier::new(cfg.clone())
                    .await
                    .map_err(|e| ApiError::internal(format!("auth.jwt: {e}")))?,
            )),
            None => None,
        };
        // Counters every replica shares live in Redis when it is configured.
        struct Engines {
            counters: Arc<dyn crate::budget::SpendCounters>,
            buckets: Arc<dyn crate::ratelimit::RateBuckets>,
            running: Arc<dyn crate::quota::RunningSlots>,
            shared: Option<Arc<dyn crate::redis_store::SharedBlobs>>,
        }
        let Engines {
            counters,
            buckets,
            running,
            shared,
        } = match redis {
            Some(con) => {
                let prefix = &config.storage.redis_prefix;
                Engines {
                    counters: Arc::new(crate::redis_store::RedisCounters::new(con.clone(), prefix)),
                    buckets: Arc::new(crate::redis_store::RedisBuckets::new(con.clone(), prefix)),
                    running: Arc::new(crate::redis_store::RedisSlots::new(con.clone(), prefix)),
                    shared: Some(Arc::new(crate::redis_store::RedisBlobs::new(con, prefix))),
                }
            }
            None => Engines {
                counters: Arc::new(crate::budget::LocalCounters::default()),
                buckets: Arc::new(crate::ratelimit::LocalBuckets::default()),
                running: Arc::new(crate::quota::LocalSlots::default()),
                shared: None,
            },
        };
        let stored = stores
            .meta
            .set_meta_if_absent(
                "gateway.signing_key",
                &crate::signing::GatewayKey::generate().map_err(ApiError::internal)?,
            )
            .await?;
        let signer =
            Arc::new(crate::signing::GatewayKey::from_stored(&stored).map_err(ApiError::internal)?);
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh)
            .map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
        let stored = stores
            .meta
            .set_meta_if_absent(crate::console::KEY_META, &crate::hex::encode(&fresh))
            .await?;
        let console = crate::console::SessionKey::new(
            crate::hex::decode32(&stored)
                .ok_or_else(|| ApiError::internal("the stored console session key is corrupt"))?,
        );
        let metrics = Metrics::new();
        let failures = Arc::new(crate::degrade::SharedFailures::new(
            config.storage.on_redis_failure == crate::config::RedisFailure::FailOpen,
            metrics.shared_counter_failures.clone(),
        ));
        let budgets = crate::budget::Budgets::new(
            &config.budgets,
            counters,
            stores.ledger.clone(),
            stores.meta.clone(),
            metrics.budget_alerts.clone(),
            failures.clone(),
        );
        budgets.set_lease(config.storage.reservation_lease);
        let quotas = Arc::new(crate::quota::Quotas::new(
            buckets.clone(),
            running,
            failures.clone(),
        ));
        quotas.set_lease(config.storage.reservation_lease);
        let rate_limits = crate::ratelimit::RateLimits::new(
            &config.rate_limits,
            buckets.clone(),
            failures.clone(),
        );
        let core = Arc::new(Core {
            buckets,
            shared_failures: failures,
            budgets,
            rate_limits,
            quotas,
            config: ArcSwap::from_pointee(config),
            stores,
            keys,
            metrics,
            audit,
            ledger,
            tracer,
            shared,
            bus,
            signer,
            console,
            streams: Default::default(),
            jwt: ArcSwap::from_pointee(jwt),
            draining: AtomicBool::new(false),
        });
        Ok((core, master))
    }

    /// Takes one of `principal`'s stream slots (`limits.max_streams_per_key`).
    pub fn open_stream(
        &self,
        principal: &Principal,
    ) -> Result<crate::streams::StreamSlot, ApiError> {
        let max = self.config().limits.max_streams_per_key;
        self.streams.open(principal, max)
    }

    /// The current configuration. Hold the returned `Arc` for the whole request so a reload
    /// mid-request does not mix two configs.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the configuration atomically; in-flight requests keep the one they loaded.
    pub async fn swap_config(&self, config: Config) -> Result<(), ApiError> {
        // Build the new JWT verifier first: a JWKS that cannot be loaded rejects the reload.
        let new_jwt = if config.auth.jwt != self.config().auth.jwt {
            let jwt = match &config.auth.jwt {
                Some(cfg) => Some(Arc::new(
                    JwtVerifier::new(cfg.clone())
                        .await
                        .map_err(|e| ApiError::internal(format!("auth.jwt: {e}")))?,
                )),
                None => None,
            };
            Some(jwt)
        } else {
            None
        };
        match (&config.master_key, &self.config().master_key) {
            (Some(new), old) if old.as_ref() != Some(new) => {
                self.keys
                    .settle_master(Some(new.expose()), &self.stores.meta)
                    .await?;
            }
            // Falling back to a stored or generated key on reload could lock operators out
            // (a generated key would be shown to no one): keep the current one until restart.
            (None, Some(_)) => tracing::warn!(
                "master_key was removed from the config; the current master key stays in force until restart"
            ),
            _ => {}
        }
        if let Some(jwt) = new_jwt {
            self.jwt.store(Arc::new(jwt));
        }
        let old = self.config();
        if old.budgets != config.budgets {
            self.budgets.reload(&config.budgets);
        }
        self.budgets.set_lease(config.storage.reservation_lease);
        self.quotas.set_lease(config.storage.reservation_lease);
        if old.rate_limits != config.rate_limits {
            self.rate_limits.reload(&config.rate_limits);
        }
        self.shared_failures.set_fail_open(
            config.storage.on_redis_failure == crate::config::RedisFailure::FailOpen,
        );
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// Authenticates a request from its headers: a virtual key, the master key, or (when
    /// configured) a JWT.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
        let Some(secret) = http::credential(headers) else {
            return Err(ApiError::new(
                ErrorKind::Unauthenticated,
                "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
            )
            .code("missing_api_key"));
        };
        if jwt::looks_like_jwt(secret) {
            if self.signer.issued(secret) {
                return self.own_token(secret);
            }
            if let Some(verifier) = self.jwt.load_full().as_ref() {
                return verifier.verify(secret).await.map(Arc::new);
            }
        }
        self.keys.authenticate(secret, time::now())
    }

    /// The `iss` of tokens this gateway mints: `a2a.public_url`, or `tollgate`.
    pub fn issuer(&self) -> String {
        self.config()
            .a2a
            .public_url
            .clone()
            .unwrap_or_else(|| "tollgate".to_owned())
    }

    /// A token this gateway minted for an agent: the agent acting for the token's subject.
    fn own_token(&self, token: &str) -> Result<Arc<Principal>, ApiError> {
        let unauthenticated =
            |m: String| ApiError::new(ErrorKind::Unauthenticated, m).code("invalid_token");
        let claims = self
            .signer
            .verify(token, &self.issuer(), time::now())
            .map_err(unauthenticated)?;
        crate::signing::principal_from_claims(&claims)
            .map(Arc::new)
            .map_err(unauthenticated)
    }

    /// Requires an administrator (admin routes): the master key, a principal holding the
    /// `admin` role, or an admin console session (its cookie and CSRF header).
    pub async fn require_master(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let principal = match (http::credential(headers), crate::console::cookie(headers)) {
            (None, Some(_)) => {
                let (session, principal) = self.console_session(headers).await?;
                if !crate::console::csrf_ok(headers, &session) {
                    return Err(ApiError::new(
                        ErrorKind::PermissionDenied,
                        "a console request must carry the session's x-tollgate-csrf header",
                    )
                    .code("csrf_failed"));
                }
                principal
            }
            _ => self.authenticate(headers).await?,
        };
        if principal.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::PermissionDenied,
                "this endpoint requires the master key or an admin principal",
            )
            .code("master_key_required"))
        }
    }

    /// The admin console session a request's cookie stands for, and its principal (still
    /// valid now). The CSRF header is not checked here.
    pub async fn console_session(
        &self,
        headers: &HeaderMap,
    ) -> Result<(crate::console::Session, Arc<Principal>), ApiError> {
        let expired = || {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "the console session is missing, expired or no longer valid; sign in again",
            )
            .code("session_expired")
        };
        let cookie = crate::console::cookie(headers).ok_or_else(expired)?;
        let now = time::now();
        let session = self.console.verify(cookie, now).ok_or_else(expired)?;
        let principal = self
            .keys
            .principal_by_hash(&session.hash, now)
            .map_err(|_| expired())?;
        // Signed out since this session began (on any replica).
        let signed_out = self
            .stores
            .meta
            .get_meta(&crate::console::signed_out_meta(&session.hash))
            .await?
            .and_then(|v| v.parse::<i64>().ok());
        if signed_out.is_some_and(|at| session.issued_ms <= at) {
            return Err(expired());
        }
        Ok((session, principal))
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Runs bookkeeping that need not delay anyone: inline when it completes at once (the
/// in-process engines), otherwise on a task (a store round trip). Outside a runtime a future
/// that would wait is dropped with an error log.
pub fn run_or_spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    use futures_util::FutureExt;
    let mut fut = Box::pin(fut);
    if (&mut fut).now_or_never().is_some() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn(fut)),
        Err(_) => tracing::error!("background bookkeeping dropped: no runtime"),
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn ops_router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(core)
}

async fn healthz() -> Response {
    http::json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

async fn readyz(State(core): State<Arc<Core>>) -> Response {
    if core.is_draining() {
        return http::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"draining","store":"unknown","config":"loaded"}"#,
        );
    }
    match core.stores.meta.ping().await {
        Ok(()) => http::json_response(
            StatusCode::OK,
            r#"{"status":"ready","store":"ok","config":"loaded"}"#,
        ),
        // Still ready: keys and config are in memory, so requests are served, and the
        // ledger and audit records they leave spill to disk until the store is back. Taking
        // every replica out of service for a database outage would turn it into a full one.
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unreachable; serving degraded");
            http::json_response(
                StatusCode::OK,
                serde_json::json!({"status": "degraded", "store": e.to_string(), "config": "loaded"})
                    .to_string(),
            )
        }
    }
}

async fn metrics(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    if !core.config().admin.public_metrics {
        if let Err(e) = core.require_master(&headers).await {
            return e.into_response();
        }
    }
    let mut res = core.metrics.render().into_response();
    res.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// The fallback for paths no layer serves.
pub async fn not_found(uri: ::http::Uri) -> Response {
    let e = ApiError::not_found(format!("no route for {}", uri.path())).code("route_not_found");
    crate::http::shaped_error(uri.path(), e)
}

/// The fallback for a known path called with the wrong method.
pub async fn method_not_allowed(method: ::http::Method, uri: ::http::Uri) -> Response {
    let e = ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .code("method_not_allowed");
    crate::http::shaped_error(uri.path(), e)
}
