//! The floor for the benchmarks: a bare HTTP/1.1 reverse proxy built from the same parts as
//! tollgate (hyper server, hyper-util's pooled client, one single-threaded runtime per thread,
//! each with its own upstream pool) and nothing else: no keys, no parsing, no metrics, no
//! ledger. What it costs over direct-to-mock is what any proxy on this stack pays for the
//! second hop; tollgate's own work is what it adds above this.
//!
//! Usage: tollgate-bench-proxy --listen 127.0.0.1:9200 --upstream http://127.0.0.1:9100 [--threads 2]

use std::net::SocketAddr;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9200));
    let mut upstream = String::from("http://127.0.0.1:9100");
    let mut threads: usize = 2;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--listen" => listen = v.parse().map_err(|e| format!("--listen IP:PORT: {e}"))?,
            "--upstream" => upstream = v.trim_end_matches('/').to_owned(),
            "--threads" => threads = v.parse().map_err(|e| format!("--threads N: {e}"))?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    println!(
        "bench proxy listening on http://{} -> {upstream}",
        listener.local_addr()?
    );
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let upstream = upstream.clone();
        handles.push(std::thread::spawn(move || {
            // The std listener becomes a tokio one inside the runtime that polls it.
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, upstream).await,
                    Err(e) => eprintln!("listener: {e}"),
                }
            })
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, upstream: String) {
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        // A current-thread runtime: the connection stays on this thread.
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    // Errors end the connection (hyper's answer to a failed service): the
                    // request path never panics.
                    let (mut parts, body) = req.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = format!("{upstream}{path}")
                        .parse::<Uri>()
                        .map_err(|e| e.to_string())?;
                    parts.headers.remove(http::header::HOST);
                    client
                        .request(Request::from_parts(parts, body))
                        .await
                        .map_err(|e| e.to_string())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
