//! Serving HTTP on a set of worker threads, each running its own single-threaded event loop.
//!
//! One acceptor owns the listening socket and hands every accepted connection to the worker
//! with the fewest open connections; from then on the connection, its handler and the upstream
//! connections it uses (pooled per thread by the providers) live on that one thread. This avoids
//! the cross-thread wake-ups a work-stealing runtime pays on every proxied request, which on a
//! small machine cost more than the proxying itself. One socket (no `SO_REUSEPORT`) keeps
//! "address in use" a hard error.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use hyper::body::Incoming;
use tollgate_core::http::PeerAddr;

use crate::wire::LineEnds;

/// What every connection is held to (from `limits`; they take effect on restart).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to send a request head; for HTTP/1.1 also the wait for the next request.
    pub header_read_timeout: Duration,
    /// Largest request head.
    pub max_header_size: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
    /// A connection with no bytes moving either way is asked to close (HTTP/2 GOAWAY, or
    /// HTTP/1.1 close once no request is in flight).
    pub idle_timeout: Duration,
}

impl ConnLimits {
    pub fn from_config(l: &tollgate_core::config::LimitsConfig) -> ConnLimits {
        ConnLimits {
            header_read_timeout: l.header_read_timeout,
            max_header_size: usize::try_from(l.max_header_size).unwrap_or(usize::MAX),
            max_headers: l.max_headers,
            idle_timeout: l.idle_timeout,
        }
    }
}

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
        limits: ConnLimits,
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
                        Ok(rt) => rt.block_on(worker(rx, load, app, signals, limits)),
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
    limits: ConnLimits,
) {
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    // Without a timer hyper enforces no header-read deadline: slow-header clients could hold
    // connections forever. hyper answers a head larger than its read buffer with 431.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let mut conns = JoinSet::new();
    let stopped = raised(signals.stop.clone());
    tokio::pin!(stopped);
    let adopt = |conns: &mut JoinSet<()>, std_stream: std::net::TcpStream| {
        let stream = match TcpStream::from_std(std_stream) {
            Ok(s) => s,
            Err(e) => {
                load.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot adopt a connection");
                return;
            }
        };
        // Small request/response exchanges: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (builder, app, load) = (builder.clone(), app.clone(), load.clone());
        let stop = signals.stop.clone();
        conns.spawn(async move {
            serve_connection(&builder, stream, app, stop, limits).await;
            load.fetch_sub(1, Ordering::Relaxed);
        });
    };
    loop {
        let next = tokio::select! {
            // Taken once: a finished future is never polled again.
            _ = &mut stopped => None,
            s = inbox.recv() => s.map(Some),
            // Reap finished connections so the set stays as small as the open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => Some(None),
        };
        match next {
            None => break,
            Some(Some(s)) => adopt(&mut conns, s),
            Some(None) => {}
        }
    }
    // Connections already handed over are still served (briefly: graceful shutdown closes
    // them after their first response).
    while let Ok(s) = inbox.try_recv() {
        adopt(&mut conns, s);
    }
    tokio::select! {
        _ = async { while conns.join_next().await.is_some() {} } => {}
        _ = raised(signals.kill.clone()) => {}
    }
}

/// Serves one connection until it ends; asks it to close gracefully when the server stops or
/// when no byte has moved for `idle`.
async fn serve_connection(
    builder: &ConnBuilder<TokioExecutor>,
    stream: TcpStream,
    app: Router,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
) {
    let idle = limits.idle_timeout;
    let origin = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = ConnIo {
        inner: stream,
        origin,
        last: last.clone(),
        // hyper's own head limit: a longer head is hyper's to refuse.
        line_ends: LineEnds::new(limits.max_header_size.max(8192)),
    };
    let app = WithPeer {
        app,
        peer: io.inner.peer_addr().ok(),
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut closing = false;
    let idle_deadline = || origin + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
    let timer = tokio::time::sleep_until(idle_deadline());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|v| *v), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = &mut timer, if !closing => {
                let deadline = idle_deadline();
                if deadline <= Instant::now() {
                    tracing::debug!("closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

/// The app, with each request marked with the address its connection came from
/// ([`PeerAddr`]; per-address limits such as console sign-in attempts use it).
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: Option<SocketAddr>,
}

impl tower_service::Service<http::Request<Incoming>> for WithPeer {
    type Response = <Router as tower_service::Service<http::Request<Incoming>>>::Response;
    type Error = <Router as tower_service::Service<http::Request<Incoming>>>::Error;
    type Future = <Router as tower_service::Service<http::Request<Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(PeerAddr(peer));
        }
        self.app.call(req)
    }
}

/// A client socket as hyper sees it: records when bytes last moved (milliseconds since
/// `origin`, for the idle timeout; one clock read per read or write that moved bytes), and
/// holds HTTP/1 request heads to CRLF line ends ([`LineEnds`]).
struct ConnIo {
    inner: TcpStream,
    origin: Instant,
    last: Arc<AtomicU64>,
    line_ends: LineEnds,
}

impl ConnIo {
    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
            self.line_ends.scan(&mut buf.filled_mut()[before..]);
        }
        r
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
