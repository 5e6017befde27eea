//! Switchyard: a node that runs microservices written as WebAssembly components.
//!
//! A [`Node`] is started from a checked [`Manifest`]; it compiles each service's component once
//! (with an on-disk cache), routes HTTP requests to a fresh pooled instance per request, and
//! keeps every guest inside its limits (deadline, memory, concurrency).
//!
//! The public surface is small: [`Manifest`] (with its checks, [`manifest`]), [`Node`] (start,
//! reload, shut down, [`node`]), [`cert`] for the mesh's certificates and [`telemetry`] for
//! logging. Everything else is private and layered, each layer using only those below it
//! (`ARCHITECTURE.md` in the repository draws it; a test checks it):
//!
//! - leaves: `call` (a call's vocabulary), `wire` (frames), `manifest`, `util`, `telemetry`;
//! - `host` (the guest's imports, store state per world, ports), `transport` (QUIC, TLS),
//!   `router` (`METHOD /path` matching, generic);
//! - `wasm` (engine, compile cache, slots), `discovery` (registry, gossip, etcd);
//! - `policy` (bindings and the policy chain as one call layer);
//! - `rpc` (route, local, remote, peer, streams), `messaging` (durable queues);
//! - `http` (ingress and admin API);
//! - `node` (lifecycle, wiring, reload).

pub mod manifest;
pub mod node;
pub mod telemetry;

/// Certificates for the mesh's mutual TLS: a cluster CA and node certificates signed by it
/// (what `switchyard cert` writes). The admin API off loopback is served with a node's
/// certificate too, checked against [`cert::SERVER_NAME`].
pub mod cert {
    pub use crate::transport::{
        CA_DAYS, CertPem, NODE_DAYS, SERVER_NAME, generate_ca, generate_ca_for, issue_node_cert,
        issue_node_cert_for,
    };
}

/// Entry points for the benchmarks (feature `bench`), not an API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
/// Entry points for the fuzz targets (feature `fuzzing`), not an API; their seeded tests run
/// in every `cargo test`.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

mod call;
mod discovery;
mod host;
mod http;
mod messaging;
mod policy;
mod router;
mod rpc;
mod state;
mod transport;
mod util;
mod wasm;
mod wire;

pub use manifest::Manifest;
pub use node::{Node, NodeError};
