//! Provider mocks in their vendors' wire formats (see `tollgate_testkit::providers`), for the
//! SDK end-to-end tests.
//!
//! Usage: tollgate-provider-mock [--listen 127.0.0.1:0]
//! Prints `provider mock listening on http://ADDR` once it accepts connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

fn main() -> std::process::ExitCode {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().map(|v| v.parse())) {
            ("--listen", Some(Ok(addr))) => listen = addr,
            _ => {
                eprintln!("usage: tollgate-provider-mock [--listen IP:PORT]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {listen}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => println!("provider mock listening on http://{addr}"),
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        tollgate_testkit::providers::serve(listener, Arc::new(Mutex::new(Vec::new()))).await;
        std::process::ExitCode::SUCCESS
    })
}
