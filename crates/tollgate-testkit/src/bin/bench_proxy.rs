//! The floor for the benchmarks: a bare HTTP/1.1 reverse proxy built from the same parts as
//! tollgate (hyper server, hyper-util's pooled client, one single-threaded runtime per thread,
//! each with its own upstream pool) and nothing else: no keys, no parsing, no metrics, no
//! ledger. What it costs over direct-to-mock is what any proxy on this stack pays for the
//! second hop; tollgate's own work is what it adds above this.
//!
//! Usage: tollgate-bench-proxy --listen 127.0.0.1:9200 --upstream http://127.0.0.1:9100 [--threads 2]

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:9200".parse().unwrap();
    let mut upstream = String::from("http://127.0.0.1:9100");
    let mut threads: usize = 2;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--listen" => listen = v.parse().expect("--listen IP:PORT"),
            "--upstream" => upstream = v.trim_end_matches('/').to_owned(),
            "--threads" => threads = v.parse().expect("--threads N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let listener = std::net::TcpListener::bind(listen).unwrap();
    listener.set_nonblocking(true).unwrap();
    println!(
        "bench proxy listening on http://{} -> {upstream}",
        listener.local_addr().unwrap()
    );
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.try_clone().unwrap();
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(serve(listener, upstream));
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

async fn serve(listener: std::net::TcpListener, upstream: String) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a listening socket");
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
