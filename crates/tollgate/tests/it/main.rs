//! Integration tests: the real gateway on 127.0.0.1:0 against in-process mock upstreams, and the
//! real binary for the CLI, signals and the embedded default. One test binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod a2a;
mod admin;
mod audit;
mod bus;
mod cache;
mod chat;
mod cli;
mod console;
mod directory;
mod harness;
mod jwt;
mod limits;
mod ops;
mod passthrough;
mod policy;
mod postgres;
mod redis_failure;
mod routing;
mod spend;
mod tracing;
mod translation;
