//! What a guest's imports do: one file per WIT interface, all acting on [`HostState`], the
//! per-store data a request's instance owns.
//!
//! WASI is locked down: no preopened directories, no sockets, no environment beyond the
//! manifest's `env`, no arguments. Guest stdout and stderr are kept (bounded) and written to
//! the node's log with the request id, so a guest's panic message is not lost.

mod config;
mod discovery;
mod log;
mod messaging;
mod output;
mod quic;
mod rpc;
mod types;

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use output::GuestOutput;
#[allow(
    unreachable_pub,
    reason = "bindgen re-exports it publicly; the module is private"
)]
pub use quic::{GuestConnection, GuestStream};
#[allow(
    unreachable_pub,
    reason = "bindgen re-exports it publicly; the module is private"
)]
pub use rpc::PendingCall;

/// What a service's guests reach out to: other services, and this node's queues.
#[derive(Clone)]
pub(crate) struct Outbound {
    pub(crate) rpc: crate::rpc::Client,
    pub(crate) messaging: Arc<crate::messaging::Broker>,
}

/// What every instance of one service generation shares.
pub(crate) struct GuestContext {
    pub(crate) service: String,
    /// Makes this service's outgoing calls.
    pub(crate) rpc: crate::rpc::Client,
    /// Takes the messages it sends.
    pub(crate) messaging: Arc<crate::messaging::Broker>,
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) env: Vec<(String, String)>,
}

/// The data of one store: one request's instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    guest: Arc<GuestContext>,
    request_id: String,
    /// When the current request's time is up; calls it makes get what is left.
    deadline: std::time::Instant,
    /// Numbers the calls of the current request (their ids are `<request id>.<n>`).
    calls_made: u32,
    /// The current request's trace; its calls continue it.
    trace: Option<crate::telemetry::TraceContext>,
    output: GuestOutput,
}

impl HostState {
    pub(crate) fn new(guest: Arc<GuestContext>, memory_limit_bytes: usize) -> Self {
        let output = GuestOutput::default();
        let mut wasi = WasiCtx::builder();
        wasi.envs(&guest.env)
            .stdout(output.clone())
            .stderr(output.clone());
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit_bytes,
                exceeded: false,
            },
            guest,
            request_id: String::new(),
            deadline: std::time::Instant::now(),
            calls_made: 0,
            trace: None,
            output,
        }
    }

    /// Tags what the guest does next (log lines, output, calls) with `request_id`, and sets
    /// the deadline its outgoing calls must finish by.
    pub(crate) fn begin_request(
        &mut self,
        request_id: &str,
        deadline: std::time::Instant,
        traceparent: Option<&str>,
    ) {
        request_id.clone_into(&mut self.request_id);
        self.deadline = deadline;
        self.trace = traceparent.and_then(crate::telemetry::TraceContext::parse);
        self.calls_made = 0;
        self.limiter.exceeded = false;
    }

    /// When the current request's time is up.
    pub(crate) fn deadline(&self) -> std::time::Instant {
        self.deadline
    }

    fn remaining(&self) -> std::time::Duration {
        self.deadline
            .saturating_duration_since(std::time::Instant::now())
    }

    fn next_call_id(&mut self) -> String {
        self.calls_made += 1;
        format!("{}.{}", self.request_id, self.calls_made)
    }

    /// What the guest wrote to stdout/stderr since the last call, if anything.
    pub(crate) fn take_output(&self) -> Option<(String, usize)> {
        self.output.take()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds WASI and the `switchyard:runtime` imports to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    crate::wasm::Service::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

/// Caps one instance's linear memory; remembers a refused growth so the caller can tell
/// "out of memory" from any other trap.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: bool,
}

/// Tables hold function references; a guest needing more than this is broken, not big.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
