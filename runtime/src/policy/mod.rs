//! Resilience policies: components of world `resilience-policy` at the decision points of
//! every call.
//!
//! The manifest declares policies (`[[policy]]`) and binds them, in order, to calls
//! (`[[bind]] policies = ["retry", "breaker"], calls_to = "inventory"`). Each binding gets
//! one [`Binding`]: a long-lived instance shared by every call on the node. For a call, the
//! chain is the caller's `outgoing_from` bindings, then the callee's `calls_to` bindings;
//! [`Chain::around`] asks each `before-call` in order (the first `reject` or `respond` ends it), sends
//! the call, then asks `after-call` of the policies that let it through, innermost first,
//! which may replace the outcome (`respond`: a fallback) or ask for a retry (`retry-after`),
//! honoured only while the call's deadline allows. Timeouts are native (the call's budget).
//!
//! Swapping a policy ([`Policies::swap`]) or its config ([`Policies::reconfigure`]) moves its
//! state with `snapshot` / `restore`, in every binding of the policy or in none, and watches
//! the new version for a probation period: one whose decisions mostly fail is rolled back
//! (see [`binding`]).

mod binding;
mod chain;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::manifest::{BindScope, Manifest};
use crate::telemetry::{Metrics, Traces};
use crate::wasm::{Engine, LoadError, LoadedPolicy};

#[cfg(feature = "bench")]
pub(crate) use binding::{BeforeDecision, CallInfo, Outcome};
pub(crate) use binding::{Binding, BindingView, Code, SwapWatch};
pub(crate) use chain::Chain;

/// Why policies could not start or swap.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The component did not load.
    #[error("policy `{policy}`: {cause}")]
    Load { policy: String, cause: LoadError },
    /// The guest trapped in a step.
    #[error("policy `{policy}` failed in {step}: {reason}")]
    Guest {
        policy: String,
        step: &'static str,
        reason: String,
    },
    /// The guest refused (bad config, unreadable snapshot).
    #[error("policy `{policy}` refused {step}: {reason}")]
    Refused {
        policy: String,
        step: &'static str,
        reason: String,
    },
    /// No binding uses a policy of that name.
    #[error("no binding uses a policy named `{0}`")]
    Unknown(String),
}

/// Every binding of a node, indexed by what it wraps.
///
/// The tables are swapped whole ([`Policies::rebind`]): a call takes its chain from the
/// tables of the moment and keeps it, so a call in flight finishes with the bindings it
/// started with, and a binding dropped from the manifest goes away when its last call ends.
#[derive(Default)]
pub(crate) struct Policies {
    tables: ArcSwap<Tables>,
    /// Each declared policy's code and config as last applied, by name: what a binding added
    /// later starts with. Its lock also serializes every change (swap, config, rebind).
    declared: Mutex<HashMap<String, Declared>>,
    /// What the chains count their decisions into.
    metrics: Metrics,
    /// What the chains record their decisions with.
    traces: Traces,
}

/// A declared policy's code and config, and what it replaced while on probation.
#[derive(Clone)]
struct Declared {
    code: Code,
    on_probation: Option<(Arc<SwapWatch>, Code)>,
}

impl Declared {
    fn new(code: Code) -> Self {
        Self {
            code,
            on_probation: None,
        }
    }

    /// What runs: the previous code if the last swap was rolled back.
    fn current(&self) -> &Code {
        match &self.on_probation {
            Some((watch, previous)) if watch.rolled_back().is_some() => previous,
            _ => &self.code,
        }
    }
}

#[derive(Default)]
struct Tables {
    calls_to: HashMap<String, Vec<Arc<Binding>>>,
    outgoing_from: HashMap<String, Vec<Arc<Binding>>>,
    queues: HashMap<String, Vec<Arc<Binding>>>,
    all: Vec<Arc<Binding>>,
    /// `reserve_ms` of the bindings of calls to a service, and of calls from one.
    reserve_to: HashMap<String, Duration>,
    reserve_from: HashMap<String, Duration>,
}

/// What [`Policies::rebind`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rebound {
    /// Bindings started, as `policy (scope)`.
    pub(crate) started: Vec<String>,
    /// Bindings that kept their instance (and its state).
    pub(crate) kept: usize,
    /// Bindings dropped, as `policy (scope)`.
    pub(crate) dropped: Vec<String>,
}

impl Policies {
    /// Loads each declared policy once and starts one instance per (binding, policy).
    /// Blocking compilation happens on the blocking pool.
    pub(crate) async fn start(
        engine: &Arc<Engine>,
        manifest: &Manifest,
        metrics: Metrics,
        traces: Traces,
    ) -> Result<Self, PolicyError> {
        let policies = Self {
            metrics,
            traces,
            ..Self::default()
        };
        policies.rebind(engine, manifest).await?;
        Ok(policies)
    }

    /// The time a call from `caller` to `service` leaves its caller, if a binding sets it
    /// (`reserve_ms`; the larger one when both the caller's and the callee's do).
    pub(crate) fn reserve(&self, caller: &str, service: &str) -> Option<Duration> {
        let tables = self.tables.load();
        let to = tables.reserve_to.get(service);
        let from = tables.reserve_from.get(caller);
        to.max(from).copied()
    }

    /// The chain around a call from `caller` to `service`, outermost first.
    pub(crate) fn chain(&self, caller: &str, service: &str) -> Chain {
        let tables = self.tables.load();
        let mut chain = Vec::new();
        if let Some(outgoing) = tables.outgoing_from.get(caller) {
            chain.extend(outgoing.iter().cloned());
        }
        if let Some(incoming) = tables.calls_to.get(service) {
            chain.extend(incoming.iter().cloned());
        }
        Chain::new(chain).observed(&self.metrics, &self.traces)
    }

    /// The bindings asked when a delivery of `queue` fails, in order.
    pub(crate) fn delivery_chain(&self, queue: &str) -> Vec<Arc<Binding>> {
        self.tables
            .load()
            .queues
            .get(queue)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) async fn views(&self) -> Vec<BindingView> {
        let tables = self.tables.load_full();
        let mut views = Vec::with_capacity(tables.all.len());
        for binding in &tables.all {
            views.push(binding.view().await);
        }
        views
    }

    /// Makes the manifest's `[[policy]]` and `[[bind]]` entries what runs: a policy not yet
    /// declared is loaded from its file; a binding of the same policy to the same scope keeps
    /// its instance and state (the first such, for each one in the manifest); others start
    /// fresh with the policy's current code and config; bindings the manifest no longer has
    /// are dropped once their calls end. On any failure nothing changes.
    ///
    /// Config changes of a declared policy are [`Policies::reconfigure`]'s job: a kept
    /// binding runs what it ran.
    pub(crate) async fn rebind(
        &self,
        engine: &Arc<Engine>,
        manifest: &Manifest,
    ) -> Result<Rebound, PolicyError> {
        let mut declared = self.declared.lock().await;
        let mut next_declared = HashMap::new();
        for spec in &manifest.policies {
            let entry = match declared.get(&spec.name) {
                Some(entry) => entry.clone(),
                None => Declared::new(Code::new(
                    load(engine, &spec.name, LoadFrom::File(spec.component.clone())).await?,
                    &spec.config,
                )),
            };
            next_declared.insert(spec.name.clone(), entry);
        }
        let current = self.tables.load_full();
        let mut unclaimed: Vec<Option<&Arc<Binding>>> = current.all.iter().map(Some).collect();
        let mut next = Tables::default();
        let mut rebound = Rebound::default();
        for bind in &manifest.bindings {
            let scope = bind.scope.to_string();
            let mut chain = Vec::new();
            for name in &bind.policies {
                let kept = unclaimed
                    .iter_mut()
                    .find_map(|slot| slot.take_if(|b| b.policy == *name && b.scope == scope));
                let binding = match kept {
                    Some(binding) => {
                        rebound.kept += 1;
                        binding.clone()
                    }
                    None => {
                        let Some(code) = next_declared.get(name).map(Declared::current) else {
                            return Err(PolicyError::Unknown(name.clone()));
                        };
                        rebound.started.push(format!("{name} ({scope})"));
                        Arc::new(
                            Binding::start(
                                engine.clone(),
                                code.clone(),
                                name.clone(),
                                scope.clone(),
                                self.metrics.clone(),
                            )
                            .await?,
                        )
                    }
                };
                next.all.push(binding.clone());
                chain.push(binding);
            }
            if let Some(reserve) = bind.reserve {
                let reserves = match &bind.scope {
                    BindScope::CallsTo(service) => Some((&mut next.reserve_to, service)),
                    BindScope::OutgoingFrom(service) => Some((&mut next.reserve_from, service)),
                    BindScope::Queue(_) | BindScope::Topic(_) => None,
                };
                if let Some((reserves, service)) = reserves {
                    let kept = reserves.entry(service.clone()).or_default();
                    *kept = (*kept).max(reserve);
                }
            }
            let table = match &bind.scope {
                BindScope::CallsTo(service) => next.calls_to.entry(service.clone()),
                BindScope::OutgoingFrom(service) => next.outgoing_from.entry(service.clone()),
                // Queues and topics share one namespace: one table of delivery chains.
                BindScope::Queue(name) | BindScope::Topic(name) => next.queues.entry(name.clone()),
            };
            table.or_default().extend(chain);
        }
        rebound.dropped = unclaimed
            .into_iter()
            .flatten()
            .map(|b| format!("{} ({})", b.policy, b.scope))
            .collect();
        self.tables.store(Arc::new(next));
        *declared = next_declared;
        Ok(rebound)
    }

    /// Swaps the code of every binding of policy `name` to `bytes`, moving each binding's
    /// state. Returns the new generation numbers. If any binding refuses, none changes.
    pub(crate) async fn swap(
        &self,
        engine: &Arc<Engine>,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u64>, PolicyError> {
        let mut declared = self.declared.lock().await;
        let Some(current) = declared.get(name).map(|d| d.current().clone()) else {
            return Err(PolicyError::Unknown(name.to_owned()));
        };
        let loaded = load(engine, name, LoadFrom::Upload(bytes)).await?;
        let code = Code {
            loaded,
            config: current.config.clone(),
        };
        let (generations, watch) = self.swap_bindings(name, &code, "policy swapped").await?;
        let on_probation = Some((watch, current));
        declared.insert(name.to_owned(), Declared { code, on_probation });
        Ok(generations)
    }

    /// Gives every binding of policy `name` a fresh instance configured with `config`, moving
    /// each binding's state, as a swap does.
    pub(crate) async fn reconfigure(
        &self,
        name: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<Vec<u64>, PolicyError> {
        let mut declared = self.declared.lock().await;
        let Some(current) = declared.get(name).map(|d| d.current().clone()) else {
            return Err(PolicyError::Unknown(name.to_owned()));
        };
        let code = Code::new(current.loaded.clone(), config);
        let (generations, watch) = self
            .swap_bindings(name, &code, "policy reconfigured")
            .await?;
        let on_probation = Some((watch, current));
        declared.insert(name.to_owned(), Declared { code, on_probation });
        Ok(generations)
    }

    /// Swaps every bound instance of `name` to `code`, all or none: each binding is readied
    /// (and locked) first, and only when all are ready do they change. The bindings share one
    /// [`SwapWatch`] for their probation.
    async fn swap_bindings(
        &self,
        name: &str,
        code: &Code,
        what: &'static str,
    ) -> Result<(Vec<u64>, Arc<SwapWatch>), PolicyError> {
        let tables = self.tables.load_full();
        let mut prepared = Vec::new();
        // Calls hold at most one binding's lock and never wait for another while holding it,
        // so holding several here cannot deadlock with them; swaps are serialized by `declared`.
        for binding in tables.all.iter().filter(|b| b.policy == name) {
            prepared.push((binding, binding.prepare(code.clone()).await?));
        }
        let watch = SwapWatch::new();
        let generations = prepared
            .into_iter()
            .map(|(binding, ready)| {
                let generation = ready.commit(&watch);
                tracing::info!(policy = name, scope = %binding.scope, generation, "{what}; state carried over, on probation");
                generation
            })
            .collect();
        Ok((generations, watch))
    }
}

enum LoadFrom {
    File(PathBuf),
    Upload(Vec<u8>),
}

/// Compiles a policy component on the blocking pool.
async fn load(
    engine: &Arc<Engine>,
    name: &str,
    from: LoadFrom,
) -> Result<LoadedPolicy, PolicyError> {
    let engine = engine.clone();
    let label = PathBuf::from(format!("<upload for policy {name}>"));
    tokio::task::spawn_blocking(move || match from {
        LoadFrom::File(path) => engine.load_policy(&path),
        LoadFrom::Upload(bytes) => engine.load_policy_bytes(&label, &bytes),
    })
    .await
    .map_err(|err| PolicyError::Guest {
        policy: name.to_owned(),
        step: "load",
        reason: err.to_string(),
    })?
    .map_err(|cause| PolicyError::Load {
        policy: name.to_owned(),
        cause,
    })
}

/// What to do with a message whose delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeliveryVerdict {
    RedeliverAfter(Duration),
    /// With the reason, naming the policy that gave up.
    DeadLetter(String),
}

/// Asks the chain's policies, in order, about a failed delivery (the `attempts`-th): the first
/// that dead-letters decides; otherwise the longest redelivery pause asked for. `None` when no
/// policy decided (none bound, or each failed), so the queue's own rule applies.
pub(crate) async fn on_delivery_failure(
    chain: &[Arc<Binding>],
    queue: &str,
    id: &str,
    attempts: u32,
) -> Option<DeliveryVerdict> {
    let delivery = binding::Delivery {
        queue: queue.to_owned(),
        id: id.to_owned(),
    };
    let mut pause: Option<u32> = None;
    for binding in chain {
        match binding.on_delivery_failure(&delivery, attempts).await {
            None => {}
            Some(binding::DeliveryDecision::RedeliverAfter(ms)) => {
                pause = Some(pause.map_or(ms, |other| other.max(ms)));
            }
            Some(binding::DeliveryDecision::DeadLetter(reason)) => {
                return Some(DeliveryVerdict::DeadLetter(format!(
                    "policy `{}` ({}): {reason}",
                    binding.policy, binding.scope
                )));
            }
        }
    }
    pause.map(|ms| DeliveryVerdict::RedeliverAfter(Duration::from_millis(u64::from(ms))))
}
