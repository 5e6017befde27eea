//! Switchyard: a node that runs microservices written as WebAssembly components.
//!
//! A [`Node`] is started from a checked [`Manifest`]; it compiles each service's component once
//! (with an on-disk cache), routes HTTP requests to a fresh pooled instance per request, and
//! keeps every guest inside its limits (deadline, memory, concurrency).
//!
//! Modules, one per subsystem (see `DESIGN.md`): [`manifest`] (schema and checks), [`node`]
//! (lifecycle and wiring), [`wasm`] (engine, compile cache, slots), `host` (the guest's
//! imports), `http` (ingress and admin API), `router` (`METHOD /path` matching), `rpc`
//! (service-to-service calls), `messaging` (durable queues), `policy` (resilience policies),
//! [`telemetry`] (logging).

pub mod manifest;
pub mod node;
pub mod telemetry;
pub mod transport;
pub mod wasm;

#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod fuzzing;

mod discovery;
mod host;
mod http;
mod messaging;
mod policy;
mod router;
mod rpc;

pub use manifest::Manifest;
pub use node::{Node, NodeError};
