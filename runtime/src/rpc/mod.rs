//! Service-to-service calls.
//!
//! A guest calls `rpc.call("inventory@^1", "GET /items/42", body, options)`; the host turns
//! that into a [`Call`] (target parsed, deadline set) and hands it to the [`Client`] through
//! the host's `Calls` port. The call path is a stack of layers, built per call from parts
//! that live as long as the node:
//!
//! 1. the policy [`Chain`] bound to this caller and callee, as one layer (skipped when
//!    nothing is bound);
//! 2. the [route](route): the instances that fit (this node's, from the [`Directory`]; peers',
//!    from discovery), and one of them chosen by the chain's `pick` or the service's balancing
//!    strategy ([`balance`]);
//! 3. the endpoint: this node's slot ([local](local): the callee's own routes resolve the
//!    method, so path parameters work as for HTTP, and no byte is encoded beyond the component
//!    boundary), or a peer ([remote](remote)): one QUIC stream carrying a `Call` frame with
//!    the time left, answered by that node's [`PeerHandler`].
//!
//! The guest cannot tell the two endpoints apart. Raw streams (`quic.connect`) are routed the
//! same way ([streams](streams)).

mod balance;
mod local;
mod peer;
mod remote;
mod route;
mod streams;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use balance::Balancer;

use crate::call::{
    ByteStream, Call, CallError, CallService, Connection, Instance, Pick, Reply, Target,
    split_method,
};
use crate::discovery::Registry;
use crate::host::Calls;
use crate::manifest::BalanceSpec;
use crate::policy::{Chain, Policies};
use crate::telemetry::{
    CallOutcome, KeyValue, Metrics, RequestLog, SpanKind, TraceContext, Traces,
};
use crate::transport::Transport;
use crate::util::BoxFuture;
use crate::wasm::{Callee, Directory};

pub(crate) use peer::PeerHandler;

/// Makes calls on behalf of guests. Cheap to clone; every service's guests hold one.
#[derive(Clone)]
pub(crate) struct Client {
    /// Filled once the node has built every slot (slots hold clients, the directory holds
    /// slots, so it cannot exist first). Weak, because that is a cycle: the node owns the
    /// directory, and dropping the node frees slots, instances and the transport.
    directory: Arc<OnceLock<Weak<Directory>>>,
    /// Other nodes, when this node has a QUIC transport.
    remote: Option<Arc<Remote>>,
    /// `[balance.<service>]` from the manifest, replaced whole by a manifest edit.
    balance: Arc<arc_swap::ArcSwap<BTreeMap<String, BalanceSpec>>>,
    /// `[[bind]]` policies around calls.
    policies: Arc<Policies>,
    /// Counts every call by caller, callee and outcome.
    metrics: Metrics,
    /// Logs a share of them.
    request_log: RequestLog,
    /// Records a client span per call, and a server span where this node serves one.
    traces: Traces,
}

/// The way to other nodes.
pub(crate) struct Remote {
    transport: Arc<Transport>,
    registry: Arc<Registry>,
    balancer: Balancer,
}

impl Remote {
    pub(crate) fn new(transport: Arc<Transport>, registry: Arc<Registry>) -> Self {
        Self {
            transport,
            registry,
            balancer: Balancer::default(),
        }
    }
}

impl Client {
    pub(crate) fn new(
        remote: Option<Arc<Remote>>,
        balance: BTreeMap<String, BalanceSpec>,
        policies: Arc<Policies>,
        metrics: Metrics,
        request_log: RequestLog,
        traces: Traces,
    ) -> Self {
        Self {
            directory: Arc::default(),
            remote,
            balance: Arc::new(arc_swap::ArcSwap::from_pointee(balance)),
            policies,
            metrics,
            request_log,
            traces,
        }
    }

    /// Makes `balance` the settings calls from now on pick instances by.
    pub(crate) fn rebalance(&self, balance: BTreeMap<String, BalanceSpec>) {
        self.balance.store(Arc::new(balance));
    }

    /// Makes `directory` the set of callees, for as long as the caller keeps it. Later calls
    /// are ignored: a node installs it once.
    pub(crate) fn install(&self, directory: &Arc<Directory>) {
        if self.directory.set(Arc::downgrade(directory)).is_err() {
            tracing::warn!("rpc directory installed twice; keeping the first");
        }
    }

    /// Runs `call` through its policy chain and returns the callee's reply.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the callee's instance mid-call; nothing else is affected.
    pub(crate) async fn call(&self, call: Call) -> Result<Reply, CallError> {
        self.call_to(call, None).await
    }

    /// A call that goes through the policies, traces, metrics and request log like any other
    /// and then to `outside` (a host beyond the mesh) instead of a routed instance, or, with
    /// `None`, routed.
    async fn call_to(
        &self,
        mut call: Call,
        outside: Option<&dyn CallService>,
    ) -> Result<Reply, CallError> {
        let span = self.traces.start(
            || format!("call {}", call.target.service).into(),
            SpanKind::Client,
            TraceContext::in_headers(&call.headers).as_ref(),
            || {
                vec![
                    KeyValue::new("switchyard.caller", call.caller.clone()),
                    KeyValue::new("switchyard.callee", call.target.service.clone()),
                    KeyValue::new("switchyard.method", call.method.clone()),
                    KeyValue::new("switchyard.request_id", call.request_id.clone()),
                ]
            },
        );
        span.trace().set_in(&mut call.headers);
        let logged = self.request_log.sampled(&call.caller);
        if !self.metrics.is_on() && !logged {
            let result = self.call_through_policies(call, outside).await;
            record_outcome(&span, &result);
            return result;
        }
        let started = std::time::Instant::now();
        let (caller, callee) = (call.caller.clone(), call.target.service.clone());
        let about = logged.then(|| (call.method.clone(), call.request_id.clone()));
        let result = self.call_through_policies(call, outside).await;
        record_outcome(&span, &result);
        let outcome = CallOutcome::from(&result);
        let took = started.elapsed();
        self.metrics.call(&caller, &callee, outcome, took);
        if let Some((method, request_id)) = about {
            tracing::info!(
                target: "switchyard::requests",
                kind = "call",
                caller = %caller,
                callee = %callee,
                method = %method,
                outcome = outcome.label(),
                status = result.as_ref().ok().map(|reply| reply.status),
                duration_us = took.as_micros() as u64,
                request_id = %request_id,
                trace_id = %span.trace().trace_id(),
                "call"
            );
        }
        result
    }

    async fn call_through_policies(
        &self,
        call: Call,
        outside: Option<&dyn CallService>,
    ) -> Result<Reply, CallError> {
        split_method(&call.method)?;
        let chain = self.policies.chain(&call.caller, &call.target.service);
        match (outside, chain.is_empty()) {
            (Some(outside), true) => outside.call(call).await,
            (Some(outside), false) => chain.around(call, outside).await,
            (None, true) => self.routed(call, None).await,
            (None, false) => {
                let routed = Routed {
                    client: self,
                    chain: &chain,
                };
                chain.around(call, &routed).await
            }
        }
    }

    fn directory(&self) -> Option<Arc<Directory>> {
        self.directory.get().and_then(Weak::upgrade)
    }

    fn running_directory(&self) -> Result<Arc<Directory>, CallError> {
        self.directory()
            .ok_or_else(|| CallError::Unavailable("the node is still starting".into()))
    }

    /// This node's name, as guests and policies see it.
    fn node_name(&self) -> String {
        self.directory()
            .map(|d| d.node().to_owned())
            .unwrap_or_default()
    }
}

/// Marks a call's span with its outcome.
fn record_outcome(span: &crate::telemetry::Span, result: &Result<Reply, CallError>) {
    match result {
        Ok(reply) => span.answered(reply.status),
        Err(err) => span.fail(|| err.to_string()),
    }
}

/// The rest of the call path inside a policy chain: route (asking the chain's `pick`) and send.
struct Routed<'a> {
    client: &'a Client,
    chain: &'a Chain,
}

impl CallService for Routed<'_> {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(self.client.routed(call, Some(self.chain as &dyn Pick)))
    }
}

impl Calls for Client {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(Client::call(self, call))
    }

    fn call_outside<'a>(
        &'a self,
        call: Call,
        endpoint: &'a dyn CallService,
    ) -> BoxFuture<'a, Result<Reply, CallError>> {
        Box::pin(self.call_to(call, Some(endpoint)))
    }

    fn reserve(&self, caller: &str, service: &str) -> Option<Duration> {
        self.policies.reserve(caller, service)
    }

    fn resolve(&self, target: &Target) -> Vec<Instance> {
        Client::resolve(self, target)
    }

    fn connect(&self, target: Target) -> Result<Connection, CallError> {
        Client::connect(self, target)
    }

    fn open_stream<'a>(
        &'a self,
        connection: &'a Connection,
        caller: &'a str,
        budget: Duration,
    ) -> BoxFuture<'a, Result<ByteStream, CallError>> {
        Box::pin(Client::open_stream(self, connection, caller, budget))
    }
}
