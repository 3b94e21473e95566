//! A minimal, fast OpenAI-compatible upstream for benchmarks: answers every POST with a fixed
//! ~300-byte chat completion, or, when the body asks for `"stream":true`, with N SSE chunks.
//!
//! Usage: tollgate-bench-upstream [--listen 127.0.0.1:9100] [--chunks 200] [--threads 1]

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22},"system_fingerprint":"fp_bench"}"#;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:9100".parse().unwrap();
    let mut chunks: usize = 200;
    let mut threads: usize = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--listen" => listen = v.parse().expect("--listen IP:PORT"),
            "--chunks" => chunks = v.parse().expect("--chunks N"),
            "--threads" => threads = v.parse().expect("--threads N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap();
        println!("bench upstream listening on http://{}", listener.local_addr().unwrap());
        let chunk: Bytes = Bytes::from(
            r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench","choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}"#.to_owned()
                + "\n\n",
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let chunk = chunk.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let streaming = body.windows(13).any(|w| w == b"\"stream\":true");
                        let res: Response<BoxBody> = if streaming {
                            let frames = (0..chunks)
                                .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())))
                                .chain(std::iter::once(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))));
                            Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))))
                                .unwrap()
                        } else {
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed())
                                .unwrap()
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
