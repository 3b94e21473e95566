//! Assembles the gateway process: the core, the layers, the listeners, the background tasks
//! (key cache refresher, config watcher) and graceful shutdown. The CLI in `main.rs` and the
//! integration tests both start tollgate through [`Gateway::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

mod serve;
mod ui;
mod wire;

use axum::middleware;
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_a2a::A2aLayer;
use tollgate_core::config::Config;
use tollgate_core::keys::MasterKey;
use tollgate_core::metrics::ResultLabels;
use tollgate_core::telemetry::LogHandle;
use tollgate_core::{admin, http, ops_router, Core};
use tollgate_llm::LlmLayer;
use tollgate_mcp::McpLayer;

use crate::serve::{Server, Signals};

/// A running gateway.
pub struct Gateway {
    pub core: Arc<Core>,
    pub llm: Arc<LlmLayer>,
    pub mcp: Arc<McpLayer>,
    pub a2a: Arc<A2aLayer>,
    /// The main listener's bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// How the master key was settled; a generated one is shown once by the caller.
    pub master: Option<MasterKey>,
    config_path: Option<PathBuf>,
    stop: watch::Sender<bool>,
    kill: watch::Sender<bool>,
    servers: Vec<Server>,
    background: Vec<(&'static str, JoinHandle<()>)>,
    log: Option<Arc<LogHandle>>,
    reload_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Where the running config came from, so it can be reloaded.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl Gateway {
    /// Opens the store, binds the listeners and starts serving.
    pub async fn start(
        config: Config,
        source: ConfigSource,
        log: Option<LogHandle>,
    ) -> anyhow::Result<Gateway> {
        let listen = config.listen;
        let admin_listen = config.admin.listen;
        let (core, master) = Core::open(config.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the store: {}", e.message))?;
        let llm = LlmLayer::new(core.clone(), &config).map_err(|e| anyhow::anyhow!(e))?;
        let mcp = McpLayer::new(core.clone(), &config)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let a2a = A2aLayer::new(core.clone(), &config).map_err(|e| anyhow::anyhow!(e))?;
        a2a.refresh_registry()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let (stop, _) = watch::channel(false);
        let (kill, _) = watch::channel(false);
        let signals = Signals {
            stop: stop.subscribe(),
            kill: kill.subscribe(),
        };
        let workers = config.worker_count();
        let conn_limits = serve::ConnLimits::from_config(&config.limits);

        let mut app = Router::new()
            .merge(ops_router(core.clone()))
            .merge(llm.router())
            .merge(mcp.router())
            .merge(a2a.router());
        let admin_routes = || {
            Router::new()
                .merge(admin::router(core.clone()))
                .merge(llm.admin_router())
                .merge(mcp.admin_router())
                .merge(a2a.admin_router())
                .merge(ui::router(core.clone()))
        };
        if admin_listen.is_none() {
            app = app.merge(admin_routes());
        }
        let main = Server::start(
            "http",
            listen,
            workers,
            conn_limits,
            shell(app, &core),
            signals.clone(),
        )
        .await?;
        let addr = main.addr;
        let mut servers = vec![main];
        let mut admin_addr = None;
        if let Some(a) = admin_listen {
            let admin_app = shell(admin_routes().merge(ops_router(core.clone())), &core);
            // Admin traffic is light: one thread.
            let server = Server::start("admin", a, 1, conn_limits, admin_app, signals.clone())
                .await
                .map_err(|e| e.context("admin.listen"))?;
            admin_addr = Some(server.addr);
            servers.push(server);
        }

        let mut gw = Gateway {
            core: core.clone(),
            llm,
            mcp: mcp.clone(),
            a2a: a2a.clone(),
            addr,
            admin_addr,
            master: Some(master),
            config_path: match &source {
                ConfigSource::File(p) => Some(p.clone()),
                ConfigSource::Embedded => None,
            },
            stop,
            kill,
            servers,
            background: Vec::new(),
            log: log.map(Arc::new),
            reload_lock: Arc::default(),
        };

        let cfg_core = core.clone();
        let every = move || cfg_core.config().storage.refresh_interval;
        gw.background.push((
            "key-cache-refresher",
            tokio::spawn(core.keys.clone().run_refresher(every, gw.stop.subscribe())),
        ));
        gw.background.push((
            "budget-lease-renewer",
            tokio::spawn(core.budgets.clone().run_renewer(gw.stop.subscribe())),
        ));
        gw.background.push((
            "quota-lease-renewer",
            tokio::spawn(core.quotas.clone().run_renewer(gw.stop.subscribe())),
        ));
        gw.background.push((
            "a2a-registry-refresher",
            tokio::spawn(a2a.clone().run_registry_refresher(gw.stop.subscribe())),
        ));
        gw.background.push((
            "mcp-session-sweeper",
            tokio::spawn(mcp.run_sweeper(gw.stop.subscribe())),
        ));
        if let Some(path) = gw.config_path.clone() {
            // Snapshot the content now, not inside the task: a change written right after
            // start must count as a change.
            let initial = std::fs::read(&path).ok();
            gw.background.push((
                "config-watcher",
                tokio::spawn(watch_config(
                    gw.reloader(),
                    path,
                    initial,
                    gw.stop.subscribe(),
                )),
            ));
        }
        tracing::info!(%addr, admin = ?admin_addr, "tollgate listening");
        Ok(gw)
    }

    /// A handle that reloads this gateway's config file.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            core: self.core.clone(),
            llm: self.llm.clone(),
            mcp: self.mcp.clone(),
            a2a: self.a2a.clone(),
            path: self.config_path.clone(),
            log: self.log.clone(),
            serial: self.reload_lock.clone(),
        }
    }

    /// Stops accepting, lets in-flight requests and streams finish up to the drain timeout,
    /// then closes what is left and stops the background tasks.
    pub async fn shutdown(self) {
        let drain = self.core.config().shutdown.drain_timeout;
        self.core.set_draining();
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + drain;
        for server in self.servers {
            server.wait(deadline, &self.kill).await;
        }
        // Streams cut by the drain deadline have written their ledger records by now.
        self.core.ledger.flush().await;
        self.core.audit.flush().await;
        self.llm.semantic_cache().flush().await;
        for (name, handle) in self.background {
            if let Err(e) = handle.await {
                tracing::warn!(task = name, error = %e, "background task ended abnormally");
            }
        }
        tracing::info!("tollgate stopped");
    }
}

fn shell(app: Router, core: &Arc<Core>) -> Router {
    app.fallback(tollgate_core::not_found)
        .method_not_allowed_fallback(tollgate_core::method_not_allowed)
        .layer(middleware::from_fn_with_state(core.clone(), http::shell))
}

/// Reloads the config file: a valid file is swapped in atomically; a bad one is logged and the
/// old config keeps serving.
#[derive(Clone)]
pub struct Reloader {
    core: Arc<Core>,
    llm: Arc<LlmLayer>,
    mcp: Arc<McpLayer>,
    a2a: Arc<A2aLayer>,
    path: Option<PathBuf>,
    log: Option<Arc<LogHandle>>,
    /// One reload at a time (SIGHUP and the file watcher run on different tasks): two
    /// overlapping reloads could otherwise leave routing from one file and the rest from another.
    serial: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    pub async fn reload(&self) -> bool {
        let _one_at_a_time = self.serial.lock().await;
        let Some(path) = &self.path else {
            tracing::info!("no config file to reload (running on the embedded default)");
            return false;
        };
        let result = match Config::load(path) {
            Err(e) => Err(e.to_string()),
            Ok(new) => self.apply(new).await,
        };
        let label = match &result {
            Ok(()) => "success",
            Err(_) => "error",
        };
        self.core
            .metrics
            .config_reloads
            .get_or_create(&ResultLabels { result: label })
            .inc();
        let mut ev = tollgate_core::audit::AuditEvent::new(
            "config.reload",
            if result.is_ok() { "success" } else { "failure" },
        );
        ev.target = Some(path.display().to_string());
        if let Err(e) = &result {
            ev.detail = serde_json::json!({ "error": e });
        }
        self.core.audit.record(ev).await;
        match result {
            Ok(()) => {
                tracing::info!(path = %path.display(), "config reloaded");
                true
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "config reload rejected; the previous config keeps serving");
                false
            }
        }
    }

    async fn apply(&self, new: Config) -> Result<(), String> {
        let old = self.core.config();
        if new.listen != old.listen || new.admin.listen != old.admin.listen {
            tracing::warn!(
                "listen addresses changed in the config file; they take effect on restart"
            );
        }
        if new.storage.database_url != old.storage.database_url {
            tracing::warn!(
                "storage.database_url changed in the config file; it takes effect on restart"
            );
        }
        // Build everything first so a failure leaves the old config fully in place.
        self.llm.reload(&new)?;
        self.mcp.reload(&new)?;
        self.a2a.reload(&new)?;
        if let Some(log) = &self.log {
            if new.logging.level != old.logging.level && std::env::var_os("RUST_LOG").is_none() {
                log.set_level(&new.logging.level);
            }
        }
        self.core.swap_config(new).await.map_err(|e| e.message)?;
        Ok(())
    }
}

/// Watches the config file's content and reloads when it changes. Polling the content (not
/// inotify) also catches the symlink swaps Kubernetes uses for mounted ConfigMaps.
async fn watch_config(
    reloader: Reloader,
    path: PathBuf,
    mut last: Option<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let every = reloader.core.config().reload.interval;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if !reloader.core.config().reload.watch {
            continue;
        }
        let now = tokio::fs::read(&path).await.ok();
        if now.is_some() && now != last {
            last = now;
            reloader.reload().await;
        }
    }
}
