//! Integration tests. Guests come from `cargo xtask build-guests` (run by `cargo xtask test`);
//! the CLI tests run the release `switchyard` binary that `cargo xtask test` builds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on purpose"
)]

mod support;

mod admin;
mod admission;
mod allow;
mod architecture;
mod cache;
mod cli;
mod crash;
mod etcd;
mod grpc;
mod http2;
mod ingress;
mod languages;
mod limits;
mod live;
mod mesh;
mod messaging;
mod metrics;
mod nats;
mod outbound;
mod policies;
mod pool;
mod request_logs;
mod rpc;
mod scaffold;
mod shop;
mod state;
mod streams;
mod swap;
mod topics;
mod traces;
mod wasi_http;
