//! `switchyard:runtime/rpc`: calls to other services through the [`Calls`] port.
//!
//! `start` spawns the call on the runtime, so calls started together run in parallel while
//! the guest keeps going; the `pending-call` resource holds its outcome. Dropping a pending
//! call aborts it.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use wasmtime::component::Resource;

use super::bindings::imports::rpc::{self as wit, CallOptions};
use super::outbound::ExternalEndpoint;
use super::{Calls, HostState};
use crate::call::{self, Call, CallError, Reply, Target};

/// A call in flight, or its outcome once it arrived.
#[allow(
    unreachable_pub,
    reason = "bindgen re-exports it publicly; the module is private"
)]
pub struct PendingCall {
    state: PendingState,
    /// The spawned call; `None` when it was refused before it started.
    task: Option<tokio::task::AbortHandle>,
    /// The instance's count of pending calls, counted down on drop.
    held: Arc<AtomicU32>,
    /// Where the reply's bytes are counted until the call is dropped.
    replies: Arc<ReplyBudget>,
}

/// The bytes of replies that an instance's pending calls hold outside its memory, bounded by
/// its memory limit: a guest that starts many calls and reads none cannot make the host hold
/// more than it could itself.
pub(crate) struct ReplyBudget {
    held: AtomicUsize,
    max: usize,
}

impl ReplyBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Counts `reply` in, or refuses it (the call then answers `unavailable`).
    fn take(&self, reply: &Reply) -> Result<(), CallError> {
        let size = reply_bytes(&reply.headers, &reply.body);
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(size).filter(|after| *after <= self.max)
            })
            .map(drop)
            .map_err(|held| {
                CallError::Unavailable(format!(
                    "a reply of {size} bytes would pass the {} MiB that this instance's pending \
                     calls may hold unread ({held} bytes held; its memory_limit_mb); wait for \
                     or drop pending calls sooner",
                    self.max >> 20
                ))
            })
    }

    fn give_back(&self, size: usize) {
        self.held.fetch_sub(size, Ordering::AcqRel);
    }
}

/// What a reply weighs against [`ReplyBudget`]: its body and headers.
fn reply_bytes(headers: &[(String, String)], body: &[u8]) -> usize {
    body.len()
        + headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
}

enum PendingState {
    Running(oneshot::Receiver<Result<Reply, CallError>>),
    Done(Result<wit::Reply, wit::CallError>),
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.held.fetch_sub(1, Ordering::Relaxed);
        // A reply the task counted in, whether it arrived here or waits in the channel; once
        // the channel is closed, a reply the task still sends comes back to it, and the task
        // gives it back.
        let counted = match &mut self.state {
            PendingState::Done(Ok(reply)) => Some(reply_bytes(&reply.headers, &reply.body)),
            PendingState::Done(Err(_)) => None,
            PendingState::Running(receiver) => {
                receiver.close();
                match receiver.try_recv() {
                    Ok(Ok(reply)) => Some(reply_bytes(&reply.headers, &reply.body)),
                    _ => None,
                }
            }
        };
        if let Some(size) = counted {
            self.replies.give_back(size);
        }
    }
}

impl PendingCall {
    /// Moves an arrived outcome into `Done`; `Pending` while the call runs.
    fn poll_outcome(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if let PendingState::Running(receiver) = &mut self.state {
            let outcome = match std::pin::Pin::new(receiver).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(outcome)) => outcome,
                // The task was aborted or panicked: report it rather than hang.
                Poll::Ready(Err(_)) => Err(CallError::Remote("the call was abandoned".into())),
            };
            self.state = PendingState::Done(outcome.map(Into::into).map_err(Into::into));
        }
        Poll::Ready(())
    }

    fn outcome(&self) -> Option<Result<wit::Reply, wit::CallError>> {
        match &self.state {
            PendingState::Done(outcome) => Some(outcome.clone()),
            PendingState::Running(_) => None,
        }
    }
}

impl HostState {
    /// The guest's call as the host's: its target parsed once, its deadline the smaller of
    /// its `timeout-ms` and what is left of the caller's own less the caller's reserve (the
    /// call's `x-switchyard-reserve-ms` header, else the bindings' `reserve_ms`, else
    /// [`call::default_reserve`]).
    /// The call to `service`: a mesh service (`"name"`, `"name@range"`), or a URL of a host
    /// outside the mesh that the service's `allowed_outbound_hosts` lists (`"https://host"`,
    /// `"http://host:port"`), which also gets the endpoint the call goes to.
    fn prepare_call(
        &mut self,
        service: &str,
        method: String,
        body: Vec<u8>,
        options: CallOptions,
    ) -> Result<(Call, Option<ExternalEndpoint>), CallError> {
        let (target, outside) = match super::http::outside_url(service) {
            Some((https, host, port)) => {
                let endpoint =
                    self.guest
                        .outside
                        .endpoint(&self.guest.service, https, &host, port)?;
                (endpoint.target(), Some(endpoint))
            }
            None => {
                let target = Target::parse(service)?;
                self.guest.may_call(&target.service)?;
                (target, None)
            }
        };
        let asked = asked_reserve(&options.headers)?;
        let headers = super::call_headers(options.headers, &self.span);
        let reserve = match asked {
            Some(reserve) => Some(reserve),
            None => self
                .guest
                .calls
                .reserve(&self.guest.service, &target.service),
        };
        let timeout = options
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms)));
        let deadline = call::call_deadline(self.deadline, timeout, reserve);
        let call = Call {
            target,
            method,
            body,
            headers,
            deadline,
            caller: self.guest.service.clone(),
            request_id: self.next_call_id(),
            spread: None,
            causation: self.causation.clone(),
        };
        Ok((call, outside))
    }
}

impl From<Reply> for wit::Reply {
    fn from(reply: Reply) -> Self {
        Self {
            status: reply.status,
            headers: reply.headers,
            body: reply.body,
        }
    }
}

impl From<CallError> for wit::CallError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Timeout => Self::Timeout,
            CallError::Unavailable(m) => Self::Unavailable(m),
            CallError::Remote(m) => Self::Remote(m),
            CallError::BadRequest(m) => Self::BadRequest(m),
            CallError::Rejected(m) => Self::Rejected(m),
        }
    }
}

/// The header a guest sets on a call to choose its reserve for that call. Like every
/// `x-switchyard-*` header it is for the node: [`call::drop_node_headers`] removes it before
/// the callee sees the call.
const RESERVE_HEADER: &str = "x-switchyard-reserve-ms";

/// The reserve a call's headers ask for (the last reserve header, if any).
fn asked_reserve(headers: &[(String, String)]) -> Result<Option<Duration>, CallError> {
    let mut reserve = None;
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case(RESERVE_HEADER) {
            let ms: u64 = value.trim().parse().map_err(|_| {
                CallError::BadRequest(format!(
                    "header `{RESERVE_HEADER}: {value}` is not a number of milliseconds \
                     (the time this caller keeps for itself, e.g. `50`)"
                ))
            })?;
            reserve = Some(Duration::from_millis(ms));
        }
    }
    Ok(reserve)
}

/// Runs `call` through `calls`, or answers the error that stopped it from being made.
async fn run(
    calls: &dyn Calls,
    prepared: Result<(Call, Option<ExternalEndpoint>), CallError>,
) -> Result<Reply, CallError> {
    match prepared? {
        (call, None) => calls.call(call).await,
        (call, Some(endpoint)) => calls.call_outside(call, &endpoint).await,
    }
}

impl wit::Host for HostState {
    async fn call(
        &mut self,
        service: String,
        method: String,
        body: Vec<u8>,
        options: CallOptions,
    ) -> Result<wit::Reply, wit::CallError> {
        let call = self.prepare_call(&service, method, body, options);
        let calls = self.guest.calls.clone();
        let outcome = run(&*calls, call).await;
        outcome.map(Into::into).map_err(Into::into)
    }

    fn start(
        &mut self,
        service: String,
        method: String,
        body: Vec<u8>,
        options: CallOptions,
    ) -> wasmtime::Result<Resource<PendingCall>> {
        let held = self.pending_calls.clone();
        let limit = self.guest.max_pending_calls;
        if held.fetch_add(1, Ordering::Relaxed) >= limit {
            // Refused before it runs; the guest sees an ordinary error it can handle.
            let refused = CallError::Unavailable(format!(
                "this instance holds {limit} pending calls already (max_pending_calls of \
                 service `{}`); wait for or drop some before starting more",
                self.guest.service
            ));
            let pending = PendingCall {
                state: PendingState::Done(Err(refused.into())),
                task: None,
                held,
                replies: self.replies.clone(),
            };
            return Ok(self.table.push(pending)?);
        }
        let call = self.prepare_call(&service, method, body, options);
        let calls = self.guest.calls.clone();
        let (sender, receiver) = oneshot::channel();
        let replies = self.replies.clone();
        let task = tokio::spawn({
            let replies = replies.clone();
            async move {
                let outcome = run(&*calls, call)
                    .await
                    .and_then(|reply| replies.take(&reply).map(|()| reply));
                if let Err(Ok(reply)) = sender.send(outcome) {
                    replies.give_back(reply_bytes(&reply.headers, &reply.body));
                }
            }
        });
        let pending = PendingCall {
            state: PendingState::Running(receiver),
            task: Some(task.abort_handle()),
            held,
            replies,
        };
        Ok(self.table.push(pending)?)
    }

    async fn wait_any(&mut self, calls: Vec<Resource<PendingCall>>) -> wasmtime::Result<u32> {
        if calls.is_empty() {
            wasmtime::bail!("rpc.wait-any needs at least one pending call");
        }
        let table = &mut self.table;
        poll_fn(|cx| {
            for (index, call) in calls.iter().enumerate() {
                let pending = match table.get_mut(call) {
                    Ok(pending) => pending,
                    Err(err) => return Poll::Ready(Err(err.into())),
                };
                if pending.poll_outcome(cx).is_ready() {
                    return Poll::Ready(Ok(u32::try_from(index).unwrap_or(u32::MAX)));
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl wit::HostPendingCall for HostState {
    async fn wait(
        &mut self,
        call: Resource<PendingCall>,
    ) -> wasmtime::Result<Result<wit::Reply, wit::CallError>> {
        let pending = self.table.get_mut(&call)?;
        poll_fn(|cx| pending.poll_outcome(cx)).await;
        pending
            .outcome()
            .ok_or_else(|| wasmtime::format_err!("pending call has no outcome after completing"))
    }

    fn drop(&mut self, call: Resource<PendingCall>) -> wasmtime::Result<()> {
        self.table.delete(call)?;
        Ok(())
    }
}
