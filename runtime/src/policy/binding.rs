//! One `[[bind]]` entry's policy: a long-lived instance shared by every call on the node.
//!
//! Calls into it are serialized by an async mutex, which is what makes its counters exact
//! (no per-thread copies to reconcile). Each call has a short epoch budget
//! ([`DECISION_BUDGET`]); a policy that traps or overruns is logged, replaced by a fresh
//! instance (its state is lost, so the log says so) and treated as having let the call through:
//! a broken policy must not take the service down with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use wasmtime::Store;

use super::PolicyError;
use crate::host::{GuestContext, HostState};
use crate::wasm::policy_bindings::ResiliencePolicy;
use crate::wasm::policy_bindings::exports::switchyard::runtime::policy as wit;
use crate::wasm::{Engine, LoadedPolicy, epoch_ticks};

pub(crate) use wit::{AfterDecision, BeforeDecision, CallInfo, Candidate, CannedResponse, Outcome};

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
}

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
}

struct Instance {
    store: Store<HostState>,
    policy: ResiliencePolicy,
}

/// What the admin API shows of a binding.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BindingView {
    pub(crate) policy: String,
    pub(crate) scope: String,
    pub(crate) component_hash: String,
    pub(crate) generation: u64,
}

impl Binding {
    /// Instantiates and configures the policy; fails with the policy's own message.
    pub(crate) async fn start(
        engine: Arc<Engine>,
        code: Code,
        policy: String,
        scope: String,
    ) -> Result<Self, PolicyError> {
        let instance = new_instance(&engine, &code, &policy).await?;
        Ok(Self {
            policy,
            scope,
            engine,
            live: Mutex::new(Live {
                code,
                instance: Some(instance),
                generation: 1,
            }),
        })
    }

    pub(crate) async fn view(&self) -> BindingView {
        let live = self.live.lock().await;
        BindingView {
            policy: self.policy.clone(),
            scope: self.scope.clone(),
            component_hash: live.code.loaded.hash.clone(),
            generation: live.generation,
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

    /// Runs one export with the decision budget; on failure, logs, replaces the instance and
    /// answers `fallback`.
    async fn decide<T>(
        &self,
        what: &str,
        fallback: T,
        call: impl AsyncFnOnce(&ResiliencePolicy, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> T {
        let mut live = self.live.lock().await;
        if live.instance.is_none() {
            match new_instance(&self.engine, &live.code, &self.policy).await {
                Ok(instance) => live.instance = Some(instance),
                Err(error) => {
                    tracing::error!(policy = %self.policy, scope = %self.scope, %error, "policy cannot restart; letting calls through");
                    return fallback;
                }
            }
        }
        let Some(instance) = live.instance.as_mut() else {
            return fallback;
        };
        instance.store.set_epoch_deadline(budget_ticks());
        let outcome = tokio::time::timeout(
            DECISION_BUDGET * 2,
            call(&instance.policy, &mut instance.store),
        )
        .await;
        match outcome {
            Ok(Ok(decision)) => decision,
            Ok(Err(error)) => {
                tracing::error!(policy = %self.policy, scope = %self.scope, what, error = %format!("{error:#}"), "policy failed; its state is lost, the call goes through");
                live.instance = None;
                fallback
            }
            Err(_) => {
                tracing::error!(policy = %self.policy, scope = %self.scope, what, "policy overran its budget; its state is lost, the call goes through");
                live.instance = None;
                fallback
            }
        }
    }

    /// Replaces the policy's code or config: a new instance is configured and given the old
    /// one's snapshot, then takes over, all while calls wait on the lock (so none sees a
    /// half-swap). On any failure the old instance stays and the error says why.
    pub(crate) async fn swap(&self, code: Code) -> Result<u64, PolicyError> {
        let mut live = self.live.lock().await;
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
        live.instance = Some(next);
        live.code = code;
        live.generation += 1;
        Ok(live.generation)
    }
}

fn budget_ticks() -> u64 {
    epoch_ticks(DECISION_BUDGET)
}

async fn new_instance(engine: &Engine, code: &Code, policy: &str) -> Result<Instance, PolicyError> {
    let context = Arc::new(GuestContext {
        service: format!("policy:{policy}"),
        rpc: crate::rpc::Client::default(),
        config: BTreeMap::new(),
        env: Vec::new(),
    });
    let mut store = Store::new(
        engine.wasmtime(),
        HostState::new(context, POLICY_MEMORY_BYTES),
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
