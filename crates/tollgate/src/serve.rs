//! Serving HTTP on a set of worker threads, each running its own single-threaded event loop.
//!
//! One acceptor owns the listening socket and hands every accepted connection to the worker
//! with the fewest open connections; from then on the connection, its handler and the upstream
//! connections it uses (pooled per thread by the providers) live on that one thread. This avoids
//! the cross-thread wake-ups a work-stealing runtime pays on every proxied request, which on a
//! small machine cost more than the proxying itself. One socket (no `SO_REUSEPORT`) keeps
//! "address in use" a hard error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// A running set of serving threads.
pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    threads: Vec<Worker>,
    acceptor: tokio::task::JoinHandle<()>,
}

struct Worker {
    thread: std::thread::JoinHandle<()>,
    done: oneshot::Receiver<()>,
}

/// Graceful stop (`stop`): no new connections; open ones finish their requests. Hard stop
/// (`kill`): open connections are closed.
#[derive(Clone)]
pub struct Signals {
    pub stop: watch::Receiver<bool>,
    pub kill: watch::Receiver<bool>,
}

async fn raised(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

impl Server {
    /// Binds `addr` and starts `workers` serving threads.
    pub async fn start(
        name: &'static str,
        addr: SocketAddr,
        workers: usize,
        header_read_timeout: Duration,
        app: Router,
        signals: Signals,
    ) -> anyhow::Result<Server> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;

        let mut inboxes = Vec::new();
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
            let load = Arc::new(AtomicUsize::new(0));
            inboxes.push((tx, load.clone()));
            let (done_tx, done) = oneshot::channel();
            let (app, signals) = (app.clone(), signals.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{name}-worker-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(worker(rx, load, app, signals, header_read_timeout)),
                        Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
                    }
                    // The runtime is dropped here, closing whatever a hard stop left open.
                    let _ = done_tx.send(());
                })
                .context("cannot spawn a worker thread")?;
            threads.push(Worker { thread, done });
        }

        // The acceptor runs on the caller's runtime: accepting is rare next to serving, since
        // clients keep connections alive.
        let listener = TcpListener::from_std(listener)?;
        let acceptor = tokio::spawn(accept(listener, inboxes, signals.stop.clone()));
        Ok(Server {
            name,
            addr,
            threads,
            acceptor,
        })
    }

    /// Waits for the workers to drain until `deadline`, then hard-stops them via `kill`.
    pub async fn wait(self, deadline: tokio::time::Instant, kill: &watch::Sender<bool>) {
        if let Err(e) = self.acceptor.await {
            tracing::warn!(server = self.name, error = %e, "acceptor ended abnormally");
        }
        for w in self.threads {
            let mut done = w.done;
            if tokio::time::timeout_at(deadline, &mut done).await.is_err() {
                tracing::warn!(
                    server = self.name,
                    "drain deadline passed; closing remaining connections"
                );
                let _ = kill.send(true);
                let _ = done.await;
            }
            let _ = tokio::task::spawn_blocking(move || w.thread.join()).await;
        }
    }
}

type Inbox = (mpsc::UnboundedSender<std::net::TcpStream>, Arc<AtomicUsize>);

async fn accept(listener: TcpListener, inboxes: Vec<Inbox>, stop: watch::Receiver<bool>) {
    let stopped = raised(stop);
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((tx, load)) = inboxes
            .iter()
            .min_by_key(|(_, load)| load.load(Ordering::Relaxed))
        else {
            return;
        };
        match stream.into_std() {
            Ok(s) => {
                load.fetch_add(1, Ordering::Relaxed);
                if tx.send(s).is_err() {
                    load.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand over a connection"),
        }
    }
}

async fn worker(
    mut inbox: mpsc::UnboundedReceiver<std::net::TcpStream>,
    load: Arc<AtomicUsize>,
    app: Router,
    signals: Signals,
    header_read_timeout: Duration,
) {
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    // Without a timer hyper enforces no header-read deadline: slow-header clients could hold
    // connections forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let stopped = raised(signals.stop.clone());
    tokio::pin!(stopped);
    loop {
        let std_stream = tokio::select! {
            // Connections already handed over are still served (briefly: graceful shutdown
            // closes them after their first response).
            _ = &mut stopped => match inbox.try_recv() {
                Ok(s) => s,
                Err(_) => break,
            },
            s = inbox.recv() => match s {
                Some(s) => s,
                None => break,
            },
        };
        let stream = match TcpStream::from_std(std_stream) {
            Ok(s) => s,
            Err(e) => {
                load.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot adopt a connection");
                continue;
            }
        };
        // Small request/response exchanges: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let load = load.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            load.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = raised(signals.kill.clone()) => {}
    }
}
