//! The local endpoint: a callee on this node, run in-process by its slot.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::{Callee, Client, Directory};
use crate::call::{ByteStream, Call, CallError, Reply, Target, budget_ms, split_method};
use crate::router::Lookup;
use crate::telemetry::{KeyValue, SpanKind, TraceContext};
use crate::wasm::{GuestRequest, GuestResponse, Slot, SlotError};

/// Bytes buffered each way in a stream between two guests on one node.
const STREAM_BUFFER: usize = 64 * 1024;

impl Client {
    /// Runs `call` on this node only.
    pub(super) async fn call_local(&self, call: Call) -> Result<Reply, CallError> {
        self.call_local_from(call, None).await
    }

    /// Runs `call` on this node only; `peer` is the node it came from, if another node.
    pub(super) async fn call_local_from(
        &self,
        call: Call,
        peer: Option<&str>,
    ) -> Result<Reply, CallError> {
        let name = call.target.service.as_str();
        let (method, path, query) = split_method(&call.method)?;
        let directory = self.running_directory()?;
        let callee = local_callee(&directory, &call.target)?;
        let (target, params) = match callee.routes.lookup(method, path) {
            Lookup::Found { target, params } => (target, params),
            Lookup::WrongMethod(allowed) => {
                return Err(CallError::BadRequest(format!(
                    "service `{name}` has no route for {method} {path}; that path takes {}",
                    allowed.join(", ")
                )));
            }
            Lookup::NotFound => {
                return Err(CallError::BadRequest(format!(
                    "service `{name}` has no route for {method} {path}"
                )));
            }
        };
        let slot = &target.value;
        slot.accepts(&call.caller)?;
        if let Some(node) = peer {
            self.vouch(slot, node, &call.caller)?;
        }
        let budget = call.deadline.remaining().min(slot.timeout());
        let served = self.traces.start(
            || format!("{method} {}", target.pattern).into(),
            SpanKind::Server,
            TraceContext::in_headers(&call.headers).as_ref(),
            || {
                let mut attributes = vec![
                    KeyValue::new("switchyard.service", name.to_owned()),
                    KeyValue::new("switchyard.caller", call.caller.clone()),
                    KeyValue::new("http.request.method", method.to_owned()),
                    KeyValue::new("http.route", target.pattern.to_string()),
                    KeyValue::new("switchyard.request_id", call.request_id.clone()),
                ];
                if let Some(node) = peer {
                    attributes.push(KeyValue::new("switchyard.peer", node.to_owned()));
                }
                attributes
            },
        );
        let mut headers = call.headers;
        served.trace().set_in(&mut headers);
        // Calls from peers too: only this node says who the caller is.
        crate::call::drop_node_headers(&mut headers);
        headers.push(("x-switchyard-caller".into(), call.caller));
        if call.causation.depth > 0 {
            call.causation.stamp(&mut headers);
        }
        let request = GuestRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            headers,
            params,
            body: call.body,
            request_id: call.request_id,
            deadline_ms: budget_ms(budget),
        };
        // The slot stops the callee at the request's `deadline_ms`, which is this budget.
        let span = tracing::debug_span!("rpc", callee = name, route = &*target.pattern);
        let response = if method == crate::manifest::GRPC_METHOD {
            collecting_streamed(slot, request, served.handle())
                .instrument(span)
                .await
        } else {
            slot.handle(request, served.handle()).instrument(span).await
        };
        match &response {
            Ok(answer) => served.answered(answer.status),
            Err(err) => served.fail(|| err.to_string()),
        }
        Ok(response?.into())
    }

    /// A peer's call or stream names its caller. A service that picks its callers
    /// (`accepts_from`) believes that name only if the calling node, as its certificate names
    /// it, announces that service: a node calls only as a service it runs.
    pub(super) fn vouch(&self, slot: &Slot, node: &str, caller: &str) -> Result<(), CallError> {
        if !slot.picks_callers() || caller == crate::manifest::INGRESS_CALLER {
            return Ok(());
        }
        let announced = self
            .remote
            .as_ref()
            .is_some_and(|remote| remote.registry.runs(node, caller));
        if announced {
            return Ok(());
        }
        Err(CallError::Rejected(format!(
            "service `{}` takes calls only from the services it lists, and the calling node \
             `{node}` does not announce `{caller}`: a node calls only as a service it runs \
             (a node that just started is believed once its gossip arrived, within a second)",
            slot.name()
        )))
    }

    /// The slot that serves `target`'s streams on this node.
    pub(super) fn local_stream_slot(&self, target: &Target) -> Result<Arc<Slot>, CallError> {
        let directory = self.running_directory()?;
        Ok(local_callee(&directory, target)?.slot.clone())
    }
}

/// Runs a gRPC call for a guest, which waits for one reply: the messages a server-streaming
/// method sends as it goes are collected, in order, ahead of its final answer's body. Past
/// [`crate::host::MAX_RESPONSE_BYTES`] (a guest's largest answer) the callee's next send
/// fails (as if its client left) and the call ends `RESOURCE_EXHAUSTED`.
async fn collecting_streamed(
    slot: &Slot,
    request: GuestRequest,
    span: crate::telemetry::SpanHandle,
) -> Result<GuestResponse, SlotError> {
    let (sender, mut frames) = tokio::sync::mpsc::channel(crate::host::ANSWER_STREAM_DEPTH);
    let handled = async {
        slot.handle_admitted(slot.admit()?, request, span, Some(sender))
            .await
    };
    let collected = async move {
        let mut collected = Vec::new();
        while let Some(frame) = frames.recv().await {
            if collected.len() + frame.len() > crate::host::MAX_RESPONSE_BYTES {
                return None;
            }
            collected.extend_from_slice(&frame);
        }
        Some(collected)
    };
    let (handled, collected) = tokio::join!(handled, collected);
    let mut response = handled?;
    match collected {
        Some(mut collected) => {
            collected.append(&mut response.body);
            response.body = collected;
        }
        None => {
            response.headers.retain(|(name, _)| {
                !name.eq_ignore_ascii_case("grpc-status")
                    && !name.eq_ignore_ascii_case("grpc-message")
            });
            response.headers.push(("grpc-status".into(), "8".into()));
            response.headers.push((
                "grpc-message".into(),
                format!(
                    "the streamed answer of {} is over {} MiB, the most a calling guest takes \
                     at once",
                    slot.name(),
                    crate::host::MAX_RESPONSE_BYTES / (1024 * 1024)
                ),
            ));
            response.body.clear();
        }
    }
    Ok(response)
}

/// `target`'s service on this node, if it runs at a version that fits.
fn local_callee(directory: &Directory, target: &Target) -> Result<Arc<Callee>, CallError> {
    let name = &target.service;
    let callee = directory
        .get(name)
        .ok_or_else(|| CallError::Unavailable(format!("no service named `{name}` is running")))?;
    if let Some(range) = &target.range
        && !range.matches(&callee.spec.version)
    {
        return Err(CallError::Unavailable(format!(
            "service `{name}` runs version {}, which does not match `{range}`",
            callee.spec.version
        )));
    }
    Ok(callee)
}

/// An in-memory stream to a `stream-handler` of `slot`, admitted (or refused) at once.
pub(super) fn local_pipe(
    slot: &Arc<Slot>,
    caller: String,
    budget: Duration,
) -> Result<ByteStream, SlotError> {
    let (ours, theirs) = tokio::io::duplex(STREAM_BUFFER);
    let (their_reader, their_writer) = tokio::io::split(theirs);
    slot.serve_stream(
        ByteStream {
            reader: Box::new(their_reader),
            writer: Box::new(their_writer),
        },
        caller,
        budget,
    )?;
    let (reader, writer) = tokio::io::split(ours);
    Ok(ByteStream {
        reader: Box::new(reader),
        writer: Box::new(writer),
    })
}
