//! Running guest components: one wasmtime [`Engine`] per node, a compiled-component cache on
//! disk, and a [`Slot`] per service that hands each request a fresh pooled instance.
//!
//! Why a fresh instance per request: requests cannot see each other's memory, a trap or a
//! timeout only ever poisons one store, and with the pooling allocator creating and dropping
//! an instance costs about 7-8 us of CPU (`rpc_remote`'s same-node rows, fresh vs reused);
//! services that keep no per-request state can reuse instances (`requests_per_instance`).
//! Limits are enforced per store: an epoch deadline (the engine's ticker advances the epoch
//! every [`EPOCH_TICK`]; at each tick a running guest either yields its thread to other tasks
//! or, past its deadline, is stopped) plus a host-side timeout for time spent awaiting the
//! host, a linear-memory cap through a [`wasmtime::ResourceLimiter`], and a count of work in
//! flight that refuses at once at `max_instances` instead of queueing.

mod budget;
mod cache;
mod engine;
mod probation;
mod slot;
mod table;

pub(crate) use probation::{Probation, SwapState, Verdict};

pub(crate) use crate::host::{GuestRequest, GuestResponse};
use engine::Instance;
pub(crate) use engine::LoadedPolicy;
pub(crate) use engine::{Engine, EngineConfig, LoadedComponent};
pub(crate) use slot::{Slot, SlotConfig, SlotError, SlotStats, SwapError, SwapEvent};
pub(crate) use table::{Callee, Directory, ServiceTable};

use std::path::PathBuf;
use std::time::Duration;

/// How often the epoch advances; deadlines are rounded up to it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The epoch deadline (in ticks from now) that lets a guest run for `limit`, rounded up.
pub(crate) fn epoch_ticks(limit: Duration) -> u64 {
    limit.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1
}

/// Why a component could not be loaded. Each variant says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is gone or unreadable.
    #[error("cannot read component {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error(
        "{} is not a WebAssembly file (it starts with {head:02x?}); point `component` at the \
         .wasm that `cargo xtask build-guests` produced", path.display()
    )]
    NotWasm { path: PathBuf, head: Vec<u8> },
    /// A core module, not a component.
    #[error(
        "{} is a core WebAssembly module, not a component; build the guest for \
         `wasm32-wasip2` (cargo xtask build-guests), or wrap it with `wasm-tools component new`",
        path.display()
    )]
    CoreModule { path: PathBuf },
    /// The bytes say component but do not validate or compile.
    #[error("{} is not a valid component: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// A valid component, but not one of the `service` world.
    #[error(
        "{} does not fit the `switchyard:runtime/service` world: {reason}\n  hint: build it with \
         switchyard-sdk and `switchyard_sdk::export!(YourType)`, or as a standard \
         `wasi:http/proxy` component (exporting `wasi:http/incoming-handler@0.2.x`); a guest \
         may import only switchyard:runtime and wasi interfaces", path.display()
    )]
    WrongWorld { path: PathBuf, reason: String },
    /// A valid component, but not a policy.
    #[error(
        "{} is not a `switchyard:runtime/resilience-policy` component: {reason}\n  hint: build \
         it with switchyard-sdk and `switchyard_sdk::export_policy!(YourType)`", path.display()
    )]
    NotAPolicy { path: PathBuf, reason: String },
    /// A `wasi:http/proxy` component where messages are to be delivered.
    #[error(
        "{} is a wasi:http/proxy component, which takes no messages, but {consumer} names its \
         service as subscriber\n  hint: build the subscriber with switchyard-sdk (it exports \
         `subscriber`), or subscribe another service", path.display()
    )]
    TakesNoMessages { path: PathBuf, consumer: String },
}

/// Why the engine could not be built (a configuration the host cannot satisfy).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasm engine: {reason}")]
pub struct EngineError {
    reason: String,
}
