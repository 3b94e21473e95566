//! Standalone MCP server for the `@modelcontextprotocol/conformance` server
//! suite, built on the official Rust SDK (`rmcp`) and served over Streamable
//! HTTP at `/mcp` on 127.0.0.1.
//!
//! Usage: `tollgate-conformance-server [--port N]` (default 0 = ephemeral).
//! Prints `listening on http://127.0.0.1:PORT/mcp` once bound.

mod server;
mod streams;

use std::{io::Write, sync::Arc};

use axum::serve::ListenerExt;
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use tokio::net::TcpListener;

use crate::{server::ConformanceServer, streams::ControllableSessions};

/// Loopback names accepted in `Host` (any port) — DNS-rebinding protection.
const ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Loopback browser origins accepted in `Origin` (any port).
const ALLOWED_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

fn parse_port() -> Result<u16, String> {
    let mut port = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--port" => args.next().ok_or("--port needs a value")?,
            other => match other.strip_prefix("--port=") {
                Some(value) => value.to_owned(),
                None if other == "-h" || other == "--help" => {
                    println!("usage: tollgate-conformance-server [--port N]");
                    std::process::exit(0);
                }
                None => return Err(format!("unexpected argument: {other}")),
            },
        };
        port = value
            .parse()
            .map_err(|_| format!("invalid port: {value}"))?;
    }
    Ok(port)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = parse_port()?;

    let mut sessions = LocalSessionManager::default();
    sessions.session_config.sse_retry = Some(server::SSE_RETRY);
    let config = StreamableHttpServerConfig::default()
        .with_sse_retry(Some(server::SSE_RETRY))
        .with_allowed_hosts(ALLOWED_HOSTS)
        .with_allowed_origins(ALLOWED_ORIGINS);
    // Cancelling the config's token ends every session and open SSE stream.
    let shutdown = config.cancellation_token.clone();
    let service = StreamableHttpService::new(
        || Ok(ConformanceServer::default()),
        Arc::new(ControllableSessions::new(sessions)),
        config,
    );
    let app = axum::Router::new().nest_service("/mcp", service);

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}/mcp")?;
    stdout.flush()?;
    drop(stdout);

    // Every answer is an SSE stream written as several small events: without TCP_NODELAY the
    // later ones wait for the client's delayed ACK (~40 ms on Linux) on a reused connection.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        })
        .await?;
    Ok(())
}
