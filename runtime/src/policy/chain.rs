//! The policies bound to one call, as one layer around the rest of the call path.
//!
//! A chain `[fallback, retry, breaker]` behaves as nested layers, outermost first, the way a
//! tower stack does: `fallback` sees one call, and the outcome `retry` settles on; `retry` sees
//! each of its attempts; `breaker` sees every attempt that reaches the callee. At each layer:
//!
//! 1. `before-call` may let the call in, `reject` it, `respond` in the callee's place, or ask
//!    to `hedge` it (the inner layers run twice, the second copy after a delay; the first
//!    answer wins);
//! 2. the inner layers run (the next policy, or the routed call at the end);
//! 3. `after-call` sees their outcome and may keep it, replace it (`respond`: a fallback), or
//!    ask for a retry after a pause, honoured only while the call's deadline allows. A retry
//!    runs this layer again from `before-call`, so every attempt passes every `before-call`
//!    inside the retrying policy.
//!
//! A policy that rejected or responded in `before-call` is not asked `after-call` (it made the
//! outcome itself). Timing runs on tokio's clock: the tests below run under paused time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::binding::{
    AfterDecision, BeforeDecision, Binding, CallInfo, Candidate as WitCandidate, CannedResponse,
    Outcome,
};
use crate::call::{Call, CallError, CallService, Candidate, Pick, Reply};
use crate::telemetry::{KeyValue, Metrics, PolicyDecision, SpanKind, TraceContext, Traces};
use crate::util::BoxFuture;

/// What a chain asks of each of its policies: a [`Binding`], or a scripted stand-in in tests.
pub(crate) trait Decide: Send + Sync {
    fn before(&self, call: &CallInfo) -> impl Future<Output = BeforeDecision> + Send;
    fn after(
        &self,
        call: &CallInfo,
        outcome: &Outcome,
        elapsed: Duration,
    ) -> impl Future<Output = AfterDecision> + Send;
    fn pick(
        &self,
        call: &CallInfo,
        candidates: &[WitCandidate],
    ) -> impl Future<Output = Option<u32>> + Send;
    /// `policy (scope)`, for errors and logs.
    fn label(&self) -> String;
    /// The `[[policy]]` name and what the binding wraps, for metrics.
    fn names(&self) -> (&str, &str);
}

impl Decide for Binding {
    fn before(&self, call: &CallInfo) -> impl Future<Output = BeforeDecision> + Send {
        Binding::before(self, call)
    }

    fn after(
        &self,
        call: &CallInfo,
        outcome: &Outcome,
        elapsed: Duration,
    ) -> impl Future<Output = AfterDecision> + Send {
        Binding::after(self, call, outcome, elapsed)
    }

    fn pick(
        &self,
        call: &CallInfo,
        candidates: &[WitCandidate],
    ) -> impl Future<Output = Option<u32>> + Send {
        Binding::pick(self, call, candidates)
    }

    fn label(&self) -> String {
        format!("{} ({})", self.policy, self.scope)
    }

    fn names(&self) -> (&str, &str) {
        (&self.policy, &self.scope)
    }
}

/// The bindings around one call, outermost first.
pub(crate) struct Chain<D = Binding> {
    layers: Vec<Arc<D>>,
    /// Counts the decisions that change a call's course.
    metrics: Metrics,
    /// Records them as spans of the call.
    traces: Traces,
}

impl<D: Decide> Chain<D> {
    pub(crate) fn new(layers: Vec<Arc<D>>) -> Self {
        Self {
            layers,
            metrics: Metrics::off(),
            traces: Traces::off(),
        }
    }

    /// The same chain, counting its decisions into `metrics` and recording them as spans.
    pub(crate) fn observed(mut self, metrics: &Metrics, traces: &Traces) -> Self {
        self.metrics = metrics.clone();
        self.traces = traces.clone();
        self
    }

    /// Counts a decision that changed `call`'s course, and records it as a span of the call.
    fn count(&self, policy: &D, decision: PolicyDecision, call: &Call) {
        let (name, scope) = policy.names();
        self.metrics.policy_decision(name, scope, decision);
        if self.traces.is_on() {
            let parent = TraceContext::in_headers(&call.headers);
            // Zero length: the decision is the event; the span ends as it is dropped.
            let _decided = self.traces.start(
                || format!("policy {name}: {}", decision.label()).into(),
                SpanKind::Internal,
                parent.as_ref(),
                || {
                    vec![
                        KeyValue::new("switchyard.policy", name.to_owned()),
                        KeyValue::new("switchyard.policy.scope", scope.to_owned()),
                        KeyValue::new("switchyard.policy.decision", decision.label()),
                    ]
                },
            );
        }
    }

    /// Nothing bound: the caller skips the chain (and its allocations) altogether.
    pub(crate) fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Runs `call` through every layer, with `inner` (the routed call) at the centre.
    pub(crate) async fn around(
        &self,
        call: Call,
        inner: &dyn CallService,
    ) -> Result<Reply, CallError> {
        let attempts = AtomicU32::new(1);
        self.layer(0, call, inner, &attempts).await
    }

    fn layer<'a>(
        &'a self,
        index: usize,
        call: Call,
        inner: &'a dyn CallService,
        attempts: &'a AtomicU32,
    ) -> BoxFuture<'a, Result<Reply, CallError>> {
        Box::pin(async move {
            let Some(policy) = self.layers.get(index) else {
                return inner.call(call).await;
            };
            let mut call = call;
            loop {
                let info = info(&call, attempts.load(Ordering::Relaxed));
                let hedge_after = match policy.before(&info).await {
                    BeforeDecision::Proceed => None,
                    BeforeDecision::Hedge(ms) => {
                        self.count(policy, PolicyDecision::Hedge, &call);
                        Some(Duration::from_millis(u64::from(ms)))
                    }
                    BeforeDecision::Reject(reason) => {
                        self.count(policy, PolicyDecision::Reject, &call);
                        return Err(CallError::Rejected(format!("{}: {reason}", policy.label())));
                    }
                    BeforeDecision::Respond(canned) => {
                        self.count(policy, PolicyDecision::Respond, &call);
                        return Ok(canned.into());
                    }
                };
                let started = Instant::now();
                let outcome = match hedge_after {
                    None => self.layer(index + 1, call.clone(), inner, attempts).await,
                    Some(delay) => self.hedged(index + 1, &call, inner, attempts, delay).await,
                };
                let elapsed = started.elapsed();
                let pause = match policy.after(&info, &Outcome::from(&outcome), elapsed).await {
                    AfterDecision::Done => return outcome,
                    AfterDecision::Respond(canned) => {
                        self.count(policy, PolicyDecision::Fallback, &call);
                        return Ok(canned.into());
                    }
                    AfterDecision::RetryAfter(ms) => Duration::from_millis(u64::from(ms)),
                };
                if pause >= call.deadline.remaining() {
                    return outcome;
                }
                self.count(policy, PolicyDecision::Retry, &call);
                tokio::time::sleep(pause).await;
                let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                call.request_id = retry_id(&call.request_id, attempt);
            }
        })
    }

    /// Runs the layers from `index` in, and a second copy if the first has not answered after
    /// `delay`; the first answer wins and dropping the other cancels it.
    async fn hedged(
        &self,
        index: usize,
        call: &Call,
        inner: &dyn CallService,
        attempts: &AtomicU32,
        delay: Duration,
    ) -> Result<Reply, CallError> {
        let mut first = call.clone();
        first.spread = Some(first.spread.take().unwrap_or_default());
        let mut hedge = first.clone();
        hedge.request_id = format!("{}~hedge", call.request_id);
        let first = self.layer(index, first, inner, attempts);
        let second = async {
            tokio::time::sleep(delay).await;
            tracing::debug!(request_id = %hedge.request_id, "hedging a slow call");
            self.layer(index, hedge, inner, attempts).await
        };
        tokio::select! {
            outcome = first => outcome,
            outcome = second => outcome,
        }
    }
}

impl<D: Decide> Pick for Chain<D> {
    /// Asks the policies, outermost first; the first that picks a valid index decides.
    fn pick<'a>(
        &'a self,
        call: &'a Call,
        candidates: &'a [Candidate],
    ) -> BoxFuture<'a, Option<usize>> {
        Box::pin(async move {
            let info = info(call, 1);
            let candidates: Vec<WitCandidate> = candidates.iter().map(Into::into).collect();
            for policy in &self.layers {
                if let Some(index) = policy.pick(&info, &candidates).await
                    && (index as usize) < candidates.len()
                {
                    return Some(index as usize);
                }
            }
            None
        })
    }
}

/// The request id of a retry: the call's own, with `~<attempt>` (once: a retry of a retry
/// replaces the number).
fn retry_id(request_id: &str, attempt: u32) -> String {
    let base = match request_id.rsplit_once('~') {
        Some((base, number)) if number.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => request_id,
    };
    format!("{base}~{attempt}")
}

/// What a policy sees of `call`.
fn info(call: &Call, attempt: u32) -> CallInfo {
    CallInfo {
        caller: call.caller.clone(),
        service: call.target.service.clone(),
        method: call.method.clone(),
        attempt,
        deadline_ms: call.deadline.remaining_ms(),
    }
}

impl From<&Candidate> for WitCandidate {
    fn from(candidate: &Candidate) -> Self {
        Self {
            node: candidate.node.clone(),
            local: candidate.endpoint.peer().is_none(),
            in_flight: candidate.in_flight,
        }
    }
}

impl From<CannedResponse> for Reply {
    /// A policy's answer in the callee's place, as the caller receives it.
    fn from(canned: CannedResponse) -> Self {
        Self {
            status: canned.status,
            headers: canned.headers,
            body: canned.body,
        }
    }
}

impl From<&Result<Reply, CallError>> for Outcome {
    fn from(outcome: &Result<Reply, CallError>) -> Self {
        match outcome {
            Ok(reply) => Self::Replied(reply.status),
            Err(CallError::Timeout) => Self::Timeout,
            Err(CallError::Unavailable(m)) => Self::Unavailable(m.clone()),
            Err(CallError::Rejected(m)) => Self::Rejected(m.clone()),
            Err(CallError::Remote(m)) => Self::Remote(m.clone()),
            Err(CallError::BadRequest(m)) => Self::BadRequest(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
