//! What a guest's imports do: one file per WIT interface, acting on the store state of its
//! world: [`HostState`] for a service's instance (one request's, or a few in a row), and
//! [`PolicyState`] for a policy's (which imports only WASI, `log` and `report`). The `bindgen!` output
//! for every world is [`bindings`]'s. What reaches beyond the store (other services, queues)
//! goes through the [`ports`] that `rpc` and `messaging` implement.
//!
//! WASI is locked down: no preopened directories, no sockets, no environment beyond the
//! manifest's `env`, no arguments. Guest stdout and stderr are kept (bounded) and written to
//! the node's log with the request id, so a guest's panic message is not lost.

mod bindings;
mod config;
mod discovery;
mod grpc;
mod http;
mod log;
mod messaging;
mod outbound;
mod output;
mod ports;
mod quic;
mod report;
mod rpc;
mod state;
mod types;

pub(crate) use bindings::policy as policy_bindings;
pub(crate) use bindings::streams::StreamServicePre;
pub(crate) use bindings::{GuestMessage, GuestRequest, GuestResponse, Service, ServicePre};
pub(crate) use grpc::{ANSWER_STREAM_DEPTH, AnswerStream};
pub(crate) use http::{MAX_RESPONSE_BYTES, Proxy, ProxyPre, serve as serve_http};
pub(crate) use log::{MAX_DECISION_LOG_BYTES, MAX_REQUEST_LOG_BYTES};
pub(crate) use messaging::{Received, guest_message};
pub(crate) use outbound::OutboundHosts;
pub(crate) use ports::{
    Calls, Committed, OutboxMessage, Outgoing, Queues, Receipt, RequestError, SendError,
    StateEntry, StateError, StatePage, StateStore, Transaction,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::call::Deadline;
use output::GuestOutput;

/// What a service's guests reach out to: other services, and queues.
#[derive(Clone)]
pub(crate) struct Outbound {
    pub(crate) calls: Arc<dyn Calls>,
    pub(crate) queues: Arc<dyn Queues>,
    pub(crate) state: Arc<dyn StateStore>,
    /// Records a producer span per message sent.
    pub(crate) traces: crate::telemetry::Traces,
}

/// What every instance of one service generation shares.
pub(crate) struct GuestContext {
    pub(crate) service: String,
    /// Makes this service's outgoing calls.
    pub(crate) calls: Arc<dyn Calls>,
    /// Takes the messages it sends.
    pub(crate) queues: Arc<dyn Queues>,
    /// Keeps its state and outbox.
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) traces: crate::telemetry::Traces,
    /// How many bytes of keys and values its state may hold.
    pub(crate) state_max_bytes: u64,
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) env: Vec<(String, String)>,
    /// Calls an instance may hold started and not dropped.
    pub(crate) max_pending_calls: u32,
    /// Streams an instance may hold open.
    pub(crate) max_open_streams: u32,
    /// The services it may call or open streams to; `None`: any.
    pub(crate) may_call: Option<Vec<String>>,
    /// The hosts outside the mesh its outgoing HTTP may reach.
    pub(crate) outside: Arc<OutboundHosts>,
}

impl GuestContext {
    /// Refuses a call or stream to `service` that the service's `may_call` does not list.
    pub(crate) fn may_call(&self, service: &str) -> Result<(), crate::call::CallError> {
        match &self.may_call {
            Some(allowed) if !allowed.iter().any(|name| name == service) => {
                Err(crate::call::CallError::Rejected(format!(
                    "service `{}` may not call `{service}`: its may_call lists {}",
                    self.service,
                    if allowed.is_empty() {
                        "nothing".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The data of one store: one request's instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    /// Where its outgoing `wasi:http` requests go.
    outgoing: http::OutgoingHttp,
    pub(crate) limiter: MemoryLimiter,
    guest: Arc<GuestContext>,
    request_id: String,
    /// When the current request's time is up; calls it makes get what is left.
    deadline: Deadline,
    /// Numbers the calls of the current request (their ids are `<request id>.<n>`).
    calls_made: u32,
    /// The span of the current work: its log lines are the span's events, its calls and
    /// messages continue its trace.
    span: crate::telemetry::SpanHandle,
    /// The chain of messages that led to the current work (empty for an HTTP request);
    /// messages it sends continue it.
    causation: crate::wire::Causation,
    output: GuestOutput,
    /// The current request's log budget.
    log_budget: log::LogBudget,
    /// Pending calls this instance holds (each one's drop counts it down).
    pending_calls: Arc<std::sync::atomic::AtomicU32>,
    /// Streams this instance opened and holds (each one's drop counts it down).
    open_streams: Arc<std::sync::atomic::AtomicU32>,
    /// Bytes of replies its pending calls hold, bounded by its memory limit.
    replies: Arc<rpc::ReplyBudget>,
    /// Set while it answers a gRPC call: where `grpc.send` puts the answer's messages.
    answer_stream: Option<AnswerStream>,
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
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            outgoing: http::OutgoingHttp::new(guest.clone()),
            limiter: MemoryLimiter {
                limit: memory_limit_bytes,
                exceeded: false,
            },
            guest,
            request_id: String::new(),
            deadline: Deadline::after(std::time::Duration::ZERO),
            calls_made: 0,
            span: crate::telemetry::SpanHandle::default(),
            causation: crate::wire::Causation::default(),
            output,
            log_budget: log::LogBudget::default(),
            pending_calls: Arc::default(),
            open_streams: Arc::default(),
            replies: Arc::new(rpc::ReplyBudget::new(memory_limit_bytes)),
            answer_stream: None,
        }
    }

    /// Tags what the guest does next (log lines, output, calls) with `request_id`, and sets
    /// the deadline its outgoing calls must finish by.
    pub(crate) fn begin_request(
        &mut self,
        request_id: &str,
        deadline: Deadline,
        span: crate::telemetry::SpanHandle,
    ) {
        request_id.clone_into(&mut self.request_id);
        self.deadline = deadline;
        self.outgoing.begin(request_id, deadline, &span);
        self.span = span;
        self.causation = crate::wire::Causation::default();
        self.calls_made = 0;
        self.limiter.exceeded = false;
        self.log_budget = log::LogBudget::default();
        self.answer_stream = None;
    }

    /// The current request is a gRPC call whose streamed messages go to `stream`.
    pub(crate) fn answer_into(&mut self, stream: AnswerStream) {
        self.answer_stream = Some(stream);
    }

    /// The gRPC call's stream, if any, ends: its answer may be completed.
    pub(crate) fn end_answer(&mut self) {
        self.answer_stream = None;
    }

    /// Log lines and bytes the current request dropped past its budget, if any.
    pub(crate) fn log_dropped(&self) -> Option<(u64, u64)> {
        self.log_budget.dropped()
    }

    /// The current work handles a message that `causation` led to.
    pub(crate) fn caused_by(&mut self, causation: crate::wire::Causation) {
        self.outgoing.caused_by(&causation);
        self.causation = causation;
    }

    /// When the current request's time is up.
    pub(crate) fn deadline(&self) -> Deadline {
        self.deadline
    }

    fn next_call_id(&mut self) -> String {
        self.calls_made += 1;
        format!("{}.{}", self.request_id, self.calls_made)
    }

    /// What the guest wrote to stdout/stderr since the last call, if anything.
    /// The current request's id.
    pub(crate) fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The message of the last panic the guest printed, if it printed one.
    pub(crate) fn panic_message(&self) -> Option<String> {
        self.output.panic_message()
    }

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

/// Adds WASI (`wasi:http` included) and the `switchyard:runtime` imports of the `service`
/// world to `linker`: one linker serves SDK guests and standard `wasi:http/proxy` components.
/// The headers a guest's call carries on: none of the node's own (`x-switchyard-*`: the
/// node sets those), and the trace context of the guest's current work in place of any the
/// guest wrote, so the call's span is a child of that work.
fn call_headers(
    mut headers: Vec<(String, String)>,
    span: &crate::telemetry::SpanHandle,
) -> Vec<(String, String)> {
    use crate::telemetry::TRACE_HEADER;
    crate::call::drop_node_headers(&mut headers);
    headers.retain(|(name, _)| !name.eq_ignore_ascii_case(TRACE_HEADER));
    if let Some(trace) = span.trace() {
        headers.push((TRACE_HEADER.to_owned(), trace.header()));
    }
    headers
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    Service::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

/// The data of one policy instance's store: WASI (nothing opened), its memory cap, its name
/// for the log.
pub(crate) struct PolicyState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// `policy:<name>`, as its log lines say.
    name: String,
    /// The current decision's log budget.
    log_budget: log::LogBudget,
    /// The last state the policy reported (`report.set-state`), until the binding takes it.
    reported_state: Option<String>,
}

impl PolicyState {
    pub(crate) fn new(policy: &str, memory_limit_bytes: usize) -> Self {
        Self {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit_bytes,
                exceeded: false,
            },
            name: format!("policy:{policy}"),
            log_budget: log::LogBudget::new(log::MAX_DECISION_LOG_BYTES),
            reported_state: None,
        }
    }

    /// The state the policy reported since the last call of this, if it reported one.
    pub(crate) fn take_reported_state(&mut self) -> Option<String> {
        self.reported_state.take()
    }

    /// Starts a decision with a fresh log budget.
    pub(crate) fn begin_decision(&mut self) {
        self.log_budget = log::LogBudget::new(log::MAX_DECISION_LOG_BYTES);
    }

    /// Log lines and bytes the current decision dropped past its budget, if any.
    pub(crate) fn log_dropped(&self) -> Option<(u64, u64)> {
        self.log_budget.dropped()
    }
}

impl WasiView for PolicyState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds WASI and the `log` import of the `resilience-policy` world to `linker`.
pub(crate) fn add_policy_to_linker(linker: &mut Linker<PolicyState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    policy_bindings::ResiliencePolicy::add_to_linker::<PolicyState, HasSelf<PolicyState>>(
        linker,
        |state| state,
    )
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
