//! One `[[bind]]` entry's policy: a long-lived instance shared by every call on the node.
//!
//! Calls into it are serialized by an async mutex, which is what makes its counters exact
//! (no per-thread copies to reconcile). Each call has a short epoch budget
//! ([`DECISION_BUDGET`]); a policy that traps or overruns is logged, replaced by a fresh
//! instance (its state is lost, so the log says so) and treated as having let the call through:
//! a broken policy must not take the service down with it.
//!
//! A swap (new code or new config) keeps the instance it replaced through probation (the
//! rule `wasm::Probation` applies to services too). If the new one's decisions fail (trap,
//! overrun, cannot restart) more often than they succeed in that time, at least five times,
//! the binding goes back to the old
//! instance, with the state it had at the swap, and the log and the admin API say so. Every
//! binding swapped together shares one [`SwapWatch`], so they roll back together.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};
use wasmtime::Store;

use super::PolicyError;
use crate::host::PolicyState;
use crate::host::policy_bindings::ResiliencePolicy;
use crate::host::policy_bindings::exports::switchyard::runtime::policy as wit;
use crate::telemetry::Metrics;
use crate::wasm::{Engine, LoadedPolicy, Probation, SwapEvent, SwapState, Verdict, epoch_ticks};

pub(crate) use wit::{
    AfterDecision, BeforeDecision, CallInfo, Candidate, CannedResponse, Delivery, DeliveryDecision,
    Outcome,
};

/// How long one decision may run.
const DECISION_BUDGET: Duration = Duration::from_millis(100);
/// A policy's linear memory cap.
const POLICY_MEMORY_BYTES: usize = 32 * 1024 * 1024;

/// A policy bound to some calls.
pub(crate) struct Binding {
    /// The `[[policy]]` name.
    pub(crate) policy: String,
    /// What it wraps, for logs and the admin API.
    pub(crate) scope: String,
    engine: Arc<Engine>,
    live: Mutex<Live>,
    /// Counts the changes of the state the policy reports.
    metrics: Metrics,
}

/// The most distinct states one binding may report: each is a metric label value.
const MAX_STATES: usize = 8;

/// What a binding runs: a policy's code and its config.
#[derive(Clone)]
pub(crate) struct Code {
    pub(crate) loaded: LoadedPolicy,
    pub(crate) config: Vec<(String, String)>,
}

impl Code {
    pub(crate) fn new(loaded: LoadedPolicy, config: &BTreeMap<String, String>) -> Self {
        Self {
            loaded,
            config: config.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

struct Live {
    code: Code,
    instance: Option<Instance>,
    generation: u64,
    /// What the last swap replaced, while the new code is on probation.
    probation: Option<Previous>,
    last_swap: Option<SwapEvent>,
    /// The state the policy last reported (`report.set-state`), and every one it reported.
    state: Option<String>,
    states: Vec<String>,
}

/// The generation a swap replaced, kept to go back to.
struct Previous {
    watch: Arc<SwapWatch>,
    code: Code,
    /// `None` if the old instance had already failed (a rollback restarts the old code).
    instance: Option<Instance>,
    generation: u64,
}

/// The decisions of one swap's new code, across every binding it was swapped into.
pub(crate) struct SwapWatch {
    probation: Probation,
    decided: AtomicU64,
    failed: AtomicU64,
    rolled_back: OnceLock<String>,
}

impl SwapWatch {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            probation: Probation::start(tokio::time::Instant::now()),
            decided: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rolled_back: OnceLock::new(),
        })
    }

    /// Why this swap was rolled back, once it was.
    pub(crate) fn rolled_back(&self) -> Option<&str> {
        self.rolled_back.get().map(String::as_str)
    }

    fn over(&self) -> bool {
        self.probation.over(tokio::time::Instant::now())
    }

    /// Counts one decision; after a failed one, returns the rollback reason if the swap is (now)
    /// rolled back.
    fn count(&self, failed: bool) -> Option<String> {
        let decided = self.decided.fetch_add(1, Ordering::Relaxed) + 1;
        if !failed {
            return None;
        }
        let failures = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        let now = tokio::time::Instant::now();
        let succeeded = decided.saturating_sub(failures);
        if let Verdict::RollBack(reason) =
            self.probation.judge(failures, succeeded, "decisions", now)
        {
            let _ = self.rolled_back.set(reason);
        }
        self.rolled_back.get().cloned()
    }
}

struct Instance {
    store: Store<PolicyState>,
    policy: ResiliencePolicy,
}

/// What the admin API shows of a binding.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BindingView {
    pub(crate) policy: String,
    pub(crate) scope: String,
    pub(crate) component_hash: String,
    pub(crate) generation: u64,
    pub(crate) last_swap: Option<SwapEvent>,
    /// The state the policy last reported (a breaker's `open`), if it reports one.
    pub(crate) state: Option<String>,
}

/// A binding locked with its next instance ready: committing it cannot fail, so a policy bound
/// in several places changes in all of them or in none.
pub(crate) struct Prepared<'a> {
    binding: &'a Binding,
    live: MutexGuard<'a, Live>,
    next: Instance,
    code: Code,
    started: Instant,
}

impl Binding {
    /// Instantiates and configures the policy; fails with the policy's own message.
    pub(crate) async fn start(
        engine: Arc<Engine>,
        code: Code,
        policy: String,
        scope: String,
        metrics: Metrics,
    ) -> Result<Self, PolicyError> {
        let mut instance = new_instance(&engine, &code, &policy).await?;
        let state = instance.store.data_mut().take_reported_state();
        Ok(Self {
            policy,
            scope,
            engine,
            live: Mutex::new(Live {
                code,
                instance: Some(instance),
                generation: 1,
                probation: None,
                last_swap: None,
                states: state.iter().cloned().collect(),
                state,
            }),
            metrics,
        })
    }

    /// Takes the state the live instance reported, if any, and counts a change.
    fn take_state(&self, live: &mut Live) {
        let Some(reported) = live
            .instance
            .as_mut()
            .and_then(|instance| instance.store.data_mut().take_reported_state())
        else {
            return;
        };
        if live.state.as_ref() == Some(&reported) {
            return;
        }
        if !live.states.contains(&reported) {
            if live.states.len() >= MAX_STATES {
                tracing::warn!(target: "guest", policy = %self.policy, scope = %self.scope, state = %reported, "report.set-state ignored: a binding takes at most {MAX_STATES} distinct states ({})", live.states.join(", "));
                return;
            }
            live.states.push(reported.clone());
        }
        tracing::info!(policy = %self.policy, scope = %self.scope, from = live.state.as_deref().unwrap_or("-"), to = %reported, "policy state changed");
        self.metrics
            .policy_transition(&self.policy, &self.scope, &reported);
        live.state = Some(reported);
    }

    pub(crate) async fn view(&self) -> BindingView {
        let mut live = self.live.lock().await;
        self.settle(&mut live);
        BindingView {
            policy: self.policy.clone(),
            scope: self.scope.clone(),
            component_hash: live.code.loaded.hash.clone(),
            generation: live.generation,
            last_swap: live.last_swap.clone(),
            state: live.state.clone(),
        }
    }

    /// Ends a probation that is over (the old instance is freed) or goes back to the old
    /// instance if this swap was rolled back (here or in another binding of the same swap).
    fn settle(&self, live: &mut Live) {
        let Some(probation) = &live.probation else {
            return;
        };
        if let Some(reason) = probation.watch.rolled_back() {
            let reason = reason.to_owned();
            self.roll_back(live, reason);
        } else if probation.watch.over() {
            live.probation = None;
            if let Some(record) = live.last_swap.as_mut() {
                record.state = SwapState::Serving;
            }
        }
    }

    fn roll_back(&self, live: &mut Live, reason: String) {
        let Some(old) = live.probation.take() else {
            return;
        };
        tracing::error!(policy = %self.policy, scope = %self.scope, from = live.generation, back_to = old.generation, %reason, "policy rolled back to its previous version and state");
        live.code = old.code;
        live.instance = old.instance;
        live.generation = old.generation;
        if let Some(record) = live.last_swap.as_mut() {
            record.state = SwapState::RolledBack;
            record.reason = Some(reason);
        }
    }

    pub(crate) async fn before(&self, call: &CallInfo) -> BeforeDecision {
        self.decide("before-call", BeforeDecision::Proceed, async |p, s| {
            p.switchyard_runtime_policy()
                .call_before_call(s, call)
                .await
        })
        .await
    }

    pub(crate) async fn after(
        &self,
        call: &CallInfo,
        outcome: &Outcome,
        elapsed: Duration,
    ) -> AfterDecision {
        let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.decide("after-call", AfterDecision::Done, async |p, s| {
            p.switchyard_runtime_policy()
                .call_after_call(s, call, outcome, elapsed_us)
                .await
        })
        .await
    }

    pub(crate) async fn pick(&self, call: &CallInfo, candidates: &[Candidate]) -> Option<u32> {
        self.decide("pick", None, async |p, s| {
            p.switchyard_runtime_policy()
                .call_pick(s, call, candidates)
                .await
        })
        .await
    }

    /// `None` if the policy failed (the queue's own rule then applies).
    pub(crate) async fn on_delivery_failure(
        &self,
        delivery: &Delivery,
        attempts: u32,
    ) -> Option<DeliveryDecision> {
        self.decide("on-delivery-failure", None, async |p, s| {
            p.switchyard_runtime_policy()
                .call_on_delivery_failure(s, delivery, attempts)
                .await
                .map(Some)
        })
        .await
    }

    /// Runs one export with the decision budget; on failure, logs, replaces the instance and
    /// answers `fallback`.
    async fn decide<T>(
        &self,
        what: &str,
        fallback: T,
        call: impl AsyncFnOnce(&ResiliencePolicy, &mut Store<PolicyState>) -> wasmtime::Result<T>,
    ) -> T {
        let mut live = self.live.lock().await;
        self.settle(&mut live);
        let decision = self.run_decision(&mut live, what, call).await;
        self.take_state(&mut live);
        if let Some(probation) = &live.probation {
            let failed = decision.is_none();
            if let Some(reason) = probation.watch.count(failed) {
                self.roll_back(&mut live, reason);
            }
        }
        decision.unwrap_or(fallback)
    }

    /// One decision on the live instance (restarted first if it failed before); `None` if it
    /// failed, which is logged here.
    async fn run_decision<T>(
        &self,
        live: &mut Live,
        what: &str,
        call: impl AsyncFnOnce(&ResiliencePolicy, &mut Store<PolicyState>) -> wasmtime::Result<T>,
    ) -> Option<T> {
        if live.instance.is_none() {
            match new_instance(&self.engine, &live.code, &self.policy).await {
                Ok(instance) => live.instance = Some(instance),
                Err(error) => {
                    tracing::error!(policy = %self.policy, scope = %self.scope, %error, "policy cannot restart; letting calls through");
                    return None;
                }
            }
        }
        let instance = live.instance.as_mut()?;
        instance.store.set_epoch_deadline(budget_ticks());
        instance.store.data_mut().begin_decision();
        let outcome = tokio::time::timeout(
            DECISION_BUDGET * 2,
            call(&instance.policy, &mut instance.store),
        )
        .await;
        if let Some((lines, bytes)) = instance.store.data().log_dropped() {
            tracing::warn!(
                target: "guest",
                policy = %self.policy,
                scope = %self.scope,
                what,
                dropped_lines = lines,
                dropped_bytes = bytes,
                "the policy logged more than its per-decision budget of {} KiB; the rest was dropped",
                crate::host::MAX_DECISION_LOG_BYTES / 1024
            );
        }
        match outcome {
            Ok(Ok(decision)) => Some(decision),
            Ok(Err(error)) => {
                tracing::error!(policy = %self.policy, scope = %self.scope, what, error = %format!("{error:#}"), "policy failed; its state is lost, the call goes through");
                live.instance = None;
                None
            }
            Err(_) => {
                tracing::error!(policy = %self.policy, scope = %self.scope, what, "policy overran its budget; its state is lost, the call goes through");
                live.instance = None;
                None
            }
        }
    }

    /// Readies a swap to `code`: locks the binding (its calls wait, so none sees a half-swap),
    /// configures a new instance and gives it the old one's snapshot. Nothing changes until
    /// [`Prepared::commit`]; dropping the result leaves the binding as it was.
    pub(crate) async fn prepare(&self, code: Code) -> Result<Prepared<'_>, PolicyError> {
        let started = Instant::now();
        let mut live = self.live.lock().await;
        self.settle(&mut live);
        let mut next = new_instance(&self.engine, &code, &self.policy).await?;
        let snapshot = match live.instance.as_mut() {
            Some(old) => {
                old.store.set_epoch_deadline(budget_ticks());
                old.policy
                    .switchyard_runtime_policy()
                    .call_snapshot(&mut old.store)
                    .await
                    .map_err(|err| PolicyError::Guest {
                        policy: self.policy.clone(),
                        step: "snapshot",
                        reason: format!("{err:#}"),
                    })?
            }
            None => Vec::new(),
        };
        next.store.set_epoch_deadline(budget_ticks());
        let restored = next
            .policy
            .switchyard_runtime_policy()
            .call_restore(&mut next.store, &snapshot)
            .await
            .map_err(|err| PolicyError::Guest {
                policy: self.policy.clone(),
                step: "restore",
                reason: format!("{err:#}"),
            })?;
        if let Err(reason) = restored {
            return Err(PolicyError::Refused {
                policy: self.policy.clone(),
                step: "restore",
                reason,
            });
        }
        Ok(Prepared {
            binding: self,
            live,
            next,
            code,
            started,
        })
    }
}

impl Prepared<'_> {
    /// Makes the new instance the one calls use; the old one is kept through `watch`'s
    /// probation. Returns the new generation.
    pub(crate) fn commit(self, watch: &Arc<SwapWatch>) -> u64 {
        let Prepared {
            binding,
            mut live,
            next,
            code,
            started,
        } = self;
        let generation = live.generation + 1;
        let old_instance = live.instance.replace(next);
        let old_code = std::mem::replace(&mut live.code, code);
        live.last_swap = Some(SwapEvent {
            from_generation: live.generation,
            to_generation: generation,
            from_hash: old_code.loaded.hash.clone(),
            to_hash: live.code.loaded.hash.clone(),
            state: SwapState::Probation,
            reason: None,
            swap_us: started.elapsed().as_micros() as u64,
        });
        live.probation = Some(Previous {
            watch: watch.clone(),
            code: old_code,
            instance: old_instance,
            generation: live.generation,
        });
        live.generation = generation;
        // What the new instance reported in `configure` and `restore`.
        binding.take_state(&mut live);
        tracing::debug!(policy = %binding.policy, scope = %binding.scope, generation, "policy instance replaced; the old one is kept through probation");
        generation
    }
}

fn budget_ticks() -> u64 {
    epoch_ticks(DECISION_BUDGET)
}

async fn new_instance(engine: &Engine, code: &Code, policy: &str) -> Result<Instance, PolicyError> {
    let mut store = Store::new(
        engine.wasmtime(),
        PolicyState::new(policy, POLICY_MEMORY_BYTES),
    );
    store.limiter(|state| &mut state.limiter);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(budget_ticks() * 10);
    let guest = |step: &'static str| {
        move |err: wasmtime::Error| PolicyError::Guest {
            policy: policy.to_owned(),
            step,
            reason: format!("{err:#}"),
        }
    };
    let instance = code
        .loaded
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(guest("instantiate"))?;
    let configured = instance
        .switchyard_runtime_policy()
        .call_configure(&mut store, &code.config)
        .await
        .map_err(guest("configure"))?;
    if let Err(reason) = configured {
        return Err(PolicyError::Refused {
            policy: policy.to_owned(),
            step: "configure",
            reason,
        });
    }
    Ok(Instance {
        store,
        policy: instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(watch: &SwapWatch, outcomes: &str) -> Option<String> {
        let mut verdict = None;
        for outcome in outcomes.chars() {
            verdict = watch.count(outcome == 'x');
        }
        verdict
    }

    #[test]
    fn a_swap_is_rolled_back_at_five_failures_when_they_are_most_decisions() {
        // Four failures are not enough, however few successes.
        assert_eq!(decide(&SwapWatch::new(), "xxxx"), None);
        // Five failures out of nine decisions: rolled back, with the count in the reason.
        let watch = SwapWatch::new();
        let reason = decide(&watch, "x.x.x.x.x").unwrap_or_default();
        assert!(
            reason.starts_with("5 of its first 9 decisions failed"),
            "{reason}"
        );
        assert_eq!(watch.rolled_back(), Some(reason.as_str()));
        // Five of ten is not more than half: it stays.
        let watch = SwapWatch::new();
        assert_eq!(decide(&watch, ".x.x.x.x.x"), None);
        assert_eq!(watch.rolled_back(), None);
    }

    #[test]
    fn once_rolled_back_the_verdict_stays_and_later_successes_do_not_undo_it() {
        let watch = SwapWatch::new();
        let first = decide(&watch, "xxxxx");
        assert!(first.is_some());
        assert_eq!(
            decide(&watch, "......."),
            None,
            "successes report nothing new"
        );
        assert_eq!(watch.rolled_back(), first.as_deref());
    }
}
