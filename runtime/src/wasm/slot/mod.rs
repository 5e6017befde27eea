//! A [`Slot`]: where one service's requests, deliveries and streams run.
//!
//! A slot holds the service's current [`Generation`] (its component, limits, config and env)
//! behind an `ArcSwap`, so a swap is one store: new work takes the new generation, work in
//! flight keeps the one it started on, and an old generation is freed when its last request
//! ends. Each request gets a store of its own (fresh, or an idle one when
//! `requests_per_instance` > 1), an epoch deadline and a host-side timeout at the smaller of
//! the service's timeout and the caller's `deadline-ms`, and a memory cap; admission counts
//! work in flight and refuses at `max_instances` at once (the caller gets `503`, not a queue).
//! After a swap the new generation is judged by [`super::Probation`] and rolled back if it
//! fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};

use super::probation::SwapState;
mod streams;
mod swap;

use super::{Engine, Instance, LoadedComponent};
use crate::call::{ByteStream, CallError, Deadline, Reply};
use crate::host::{GuestContext, GuestMessage, GuestRequest, GuestResponse, HostState, Outbound};
use crate::telemetry::SpanHandle;

/// What a [`Slot`] needs to know about its service.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlotConfig {
    pub service: String,
    pub version: semver::Version,
    pub max_instances: u32,
    /// Requests one instance serves before it is dropped (1: fresh per request).
    pub requests_per_instance: u32,
    pub timeout: Duration,
    pub memory_limit_bytes: usize,
    /// Bytes of keys and values the service's state may hold.
    pub state_max_bytes: u64,
    pub max_pending_calls: u32,
    pub max_open_streams: u32,
    /// The services it may call; `None`: any.
    pub may_call: Option<Vec<String>>,
    /// The callers it takes (`@ingress`: HTTP clients); `None`: anyone.
    pub accepts_from: Option<Vec<String>>,
    /// Where its outgoing HTTP may go outside the mesh.
    pub outbound: crate::manifest::OutboundSpec,
    pub config: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// One version of a service's code. Requests hold it while they run, so an old generation
/// lives exactly as long as its last in-flight request (and its probation window).
pub(crate) struct Generation {
    number: u64,
    component: LoadedComponent,
    /// Limits, config and env this generation runs with (a config edit is a new generation).
    settings: Arc<SlotConfig>,
    guest: Arc<GuestContext>,
    served: AtomicU64,
    errors: AtomicU64,
    /// The slot's count of generations alive, decremented on drop (a leak check).
    alive: Arc<AtomicU64>,
}

impl Generation {
    fn new(
        number: u64,
        component: LoadedComponent,
        settings: Arc<SlotConfig>,
        outbound: &Outbound,
        alive: Arc<AtomicU64>,
    ) -> Self {
        alive.fetch_add(1, Ordering::Relaxed);
        let guest = Arc::new(GuestContext {
            service: settings.service.clone(),
            calls: outbound.calls.clone(),
            queues: outbound.queues.clone(),
            state: outbound.state.clone(),
            traces: outbound.traces.clone(),
            state_max_bytes: settings.state_max_bytes,
            config: settings.config.clone(),
            max_pending_calls: settings.max_pending_calls,
            max_open_streams: settings.max_open_streams,
            may_call: settings.may_call.clone(),
            outside: Arc::new(crate::host::OutboundHosts::new(settings.outbound.clone())),
            env: settings
                .env
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        });
        Self {
            number,
            component,
            settings,
            guest,
            served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            alive,
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last swap of a slot or of a policy binding, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SwapEvent {
    pub from_generation: u64,
    pub to_generation: u64,
    pub from_hash: String,
    pub to_hash: String,
    pub state: SwapState,
    pub reason: Option<String>,
    /// How long the swap took, in whole microseconds.
    pub swap_us: u64,
}

/// Where one service's requests run: its current component and its limits.
pub(crate) struct Slot {
    engine: Arc<Engine>,
    /// The service's name, and the settings it started with: a new generation may change
    /// limits, config and env, but not what the engine's pool was sized for.
    started: SlotConfig,
    outbound: Outbound,
    current: arc_swap::ArcSwap<Generation>,
    /// The generation before the last swap, kept through probation for a rollback.
    previous: std::sync::Mutex<Option<Arc<Generation>>>,
    last_swap: std::sync::Mutex<Option<SwapEvent>>,
    /// Serializes swaps.
    swapping: tokio::sync::Mutex<()>,
    /// Generations not yet freed: the current one, plus old ones still draining.
    generations_alive: Arc<AtomicU64>,
    /// Instances that finished a request cleanly and may serve another
    /// (only when `requests_per_instance` > 1).
    idle: IdleInstances,
    stats: Counters,
}

/// A store and, once instantiated, its instance.
struct LiveInstance {
    store: Store<HostState>,
    instance: Option<Instance>,
    served: u32,
    generation: u64,
}

#[derive(Default)]
struct Counters {
    /// Requests and streams running; admission keeps it at most `max_instances`.
    in_flight: Arc<AtomicU64>,
    served: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
    /// New generations installed, and of those, rolled back after probation.
    swaps: AtomicU64,
    rollbacks: AtomicU64,
}

/// A snapshot of a slot for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SlotStats {
    pub name: String,
    pub version: String,
    pub component_hash: String,
    /// 1 at start, +1 per swap.
    pub generation: u64,
    /// Generations in memory: 1, plus old ones while their requests drain or their
    /// probation runs.
    pub generations_alive: u64,
    pub last_swap: Option<SwapEvent>,
    pub max_instances: u32,
    pub in_flight: u64,
    /// Requests the guest answered (any status it chose).
    pub served: u64,
    /// Requests that ended in a trap, a timeout or the memory limit.
    pub errors: u64,
    /// Requests refused with 503 at `max_instances`.
    pub rejected: u64,
    /// New generations installed since the node started (a refused swap installs none).
    pub swaps: u64,
    /// Of those, rolled back after failing their probation.
    pub rollbacks: u64,
}

/// Why a swap was refused; the old generation keeps serving.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SwapError {
    /// The new generation failed its trial instantiation.
    #[error("service `{service}`: {reason}")]
    DoesNotInstantiate { service: String, reason: String },
    /// New settings the slot cannot take while it runs.
    #[error("service `{service}`: new settings refused: {reason}")]
    Settings { service: String, reason: String },
}

/// Why a request got no answer from the guest. The ingress maps each to a status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SlotError {
    /// All `max_instances` are busy, or the node's budget is full: retry later, or raise
    /// the limit the reason names.
    #[error("service `{service}` {reason}")]
    Busy { service: String, reason: String },
    /// The guest ran past `timeout_ms`.
    #[error("service `{service}` did not answer within {timeout:?}")]
    Timeout { service: String, timeout: Duration },
    /// The guest tried to grow its memory past `memory_limit_mb`.
    #[error("service `{service}` exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimit { service: String, limit_mb: usize },
    /// The guest trapped (a panic, an invalid operation) or could not be instantiated.
    #[error("service `{service}` failed: {reason}")]
    Trap { service: String, reason: String },
    /// The caller is not in the service's `accepts_from`.
    #[error(
        "service `{service}` does not take calls from {caller}; its accepts_from lists: {accepted}"
    )]
    NotAccepted {
        service: String,
        caller: String,
        accepted: String,
    },
    /// A stream was opened to a component without a `stream-handler` export.
    #[error(
        "service `{service}` does not accept streams: its component does not export \
         `stream-handler` (build it with switchyard-sdk and implement `Service::stream`)"
    )]
    NoStreams { service: String },
}

impl From<SlotError> for CallError {
    /// What a caller learns when its callee on this node gave no answer.
    fn from(error: SlotError) -> Self {
        match error {
            SlotError::Busy { .. } | SlotError::NoStreams { .. } => {
                Self::Unavailable(error.to_string())
            }
            SlotError::NotAccepted { .. } => Self::Rejected(error.to_string()),
            SlotError::Timeout { .. } => Self::Timeout,
            SlotError::MemoryLimit { .. } | SlotError::Trap { .. } => {
                Self::Remote(error.to_string())
            }
        }
    }
}

impl From<GuestResponse> for Reply {
    fn from(response: GuestResponse) -> Self {
        Self {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }
    }
}

impl Slot {
    pub(crate) fn new(
        engine: Arc<Engine>,
        settings: SlotConfig,
        component: LoadedComponent,
        outbound: Outbound,
    ) -> Self {
        let generations_alive = Arc::new(AtomicU64::new(0));
        Self {
            idle: IdleInstances {
                list: std::sync::Mutex::new(Vec::new()),
                budget: engine.budget().clone(),
            },
            engine,
            current: arc_swap::ArcSwap::from_pointee(Generation::new(
                1,
                component,
                Arc::new(settings.clone()),
                &outbound,
                generations_alive.clone(),
            )),
            started: settings,
            outbound,
            generations_alive,
            previous: std::sync::Mutex::new(None),
            last_swap: std::sync::Mutex::new(None),
            swapping: tokio::sync::Mutex::new(()),
            stats: Counters::default(),
        }
    }

    /// The service's name.
    pub(crate) fn name(&self) -> &str {
        &self.started.service
    }

    /// Whether the current generation takes work from `caller` (a service name, or
    /// [`crate::manifest::INGRESS_CALLER`] for an HTTP client): its `accepts_from`, if set,
    /// must list it.
    pub(crate) fn accepts(&self, caller: &str) -> Result<(), SlotError> {
        let current = self.current.load();
        match &current.settings.accepts_from {
            Some(accepted) if !accepted.iter().any(|name| name == caller) => {
                let caller = if caller == crate::manifest::INGRESS_CALLER {
                    "HTTP clients (add \"@ingress\" to take them)".to_owned()
                } else {
                    format!("`{caller}`")
                };
                Err(SlotError::NotAccepted {
                    service: self.started.service.clone(),
                    caller,
                    accepted: accepted.join(", "),
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether the current generation names the callers it takes (`accepts_from`).
    pub(crate) fn picks_callers(&self) -> bool {
        self.current.load().settings.accepts_from.is_some()
    }

    /// The per-request deadline of the current generation.
    pub(crate) fn timeout(&self) -> Duration {
        self.current.load().settings.timeout
    }

    /// Runs `request` within the service's limits, on a fresh instance or, when
    /// `requests_per_instance` > 1, on an idle one that served earlier requests cleanly. The
    /// request's `deadline-ms` (a caller's remaining budget) caps the service's own timeout:
    /// the guest is stopped at the smaller, and its outgoing calls get what is left of it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the instance mid-call; nothing else is affected.
    pub(crate) async fn handle(
        &self,
        request: GuestRequest,
        span: SpanHandle,
    ) -> Result<GuestResponse, SlotError> {
        self.handle_admitted(self.admit()?, request, span, None)
            .await
    }

    /// [`Slot::handle`] for a request admitted earlier (the ingress admits before it reads
    /// the body, so a full service answers `503` at once instead of after a slow upload).
    /// With `answer`, the request is a gRPC call whose streamed messages go there.
    pub(crate) async fn handle_admitted(
        &self,
        admission: Admission,
        request: GuestRequest,
        span: SpanHandle,
        answer: Option<crate::host::AnswerStream>,
    ) -> Result<GuestResponse, SlotError> {
        let budget = Duration::from_millis(u64::from(request.deadline_ms));
        self.serve(
            admission,
            &request.request_id,
            span,
            budget,
            async |instance, store| {
                // Set by this node (`rpc::local`) when the caller's work came from a message.
                store
                    .data_mut()
                    .caused_by(crate::call::Causation::of(&request.headers));
                if let Some(answer) = answer {
                    store.data_mut().answer_into(answer);
                }
                let answered = match instance {
                    Instance::Service(service) => {
                        service
                            .switchyard_runtime_handler()
                            .call_handle(&mut *store, &request)
                            .await
                    }
                    Instance::HttpProxy(proxy) => {
                        crate::host::serve_http(proxy, store, &request).await
                    }
                };
                // The stream ends with the call, also on an instance kept for reuse.
                store.data_mut().end_answer();
                answered
            },
        )
        .await
    }

    /// Hands `message` to the guest's `subscriber.on-message`, within the same limits as a
    /// request; the inner result is the guest's own: acknowledged, or refused with a reason.
    pub(crate) async fn deliver(
        &self,
        message: GuestMessage,
        span: SpanHandle,
    ) -> Result<Result<(), String>, SlotError> {
        self.serve(
            self.admit()?,
            &message.id,
            span,
            Duration::MAX,
            async |instance, store| {
                store
                    .data_mut()
                    .caused_by(crate::wire::Causation::of(&message.headers));
                match instance {
                    Instance::Service(service) => {
                        service
                            .switchyard_runtime_subscriber()
                            .call_on_message(store, &message)
                            .await
                    }
                    // The manifest check keeps queues and topics from naming one; a swap to
                    // one leaves its messages failing until dead-lettered or swapped back.
                    Instance::HttpProxy(_) => Ok(Err(
                        "this version is a wasi:http/proxy component, which takes no messages \
                         (it exports no `subscriber`); build the subscriber with switchyard-sdk"
                            .to_owned(),
                    )),
                }
            },
        )
        .await
    }

    /// Admits one unit of work, gives it an instance and runs `call` on it for at most
    /// `budget` (capped by the service's timeout); counts the outcome and keeps the instance
    /// for reuse if it ended cleanly.
    async fn serve<T>(
        &self,
        _admission: Admission,
        request_id: &str,
        span: SpanHandle,
        budget: Duration,
        call: impl AsyncFnOnce(&Instance, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, SlotError> {
        let generation = self.current.load_full();
        let mut live = self
            .idle_instance(&generation)
            .unwrap_or_else(|| self.new_instance(&generation));
        let timeout = budget.min(generation.settings.timeout);
        live.store
            .data_mut()
            .begin_request(request_id, Deadline::after(timeout), span);
        let result = self.run(&mut live, &generation, timeout, call).await;
        self.log_output(&live.store, request_id);
        live.served += 1;
        // A failed store may be mid-call or poisoned: only a clean one is reused.
        if result.is_ok() && live.served < generation.settings.requests_per_instance {
            self.idle.keep(live);
        }
        match &result {
            Ok(_) => {
                self.stats.served.fetch_add(1, Ordering::Relaxed);
                generation.served.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                generation.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    /// Counts one more request or stream in flight and takes its instance and memory limit
    /// from the node's budget, or refuses with `Busy` at the current generation's
    /// `max_instances` or when the node's budget is full; both are given back when the
    /// [`Admission`] is dropped.
    pub(crate) fn admit(&self) -> Result<Admission, SlotError> {
        let current = self.current.load();
        let settings = &current.settings;
        let in_flight = &self.stats.in_flight;
        let admitted = in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < u64::from(settings.max_instances)).then_some(n + 1)
        });
        let refused = |reason: String| {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            SlotError::Busy {
                service: self.started.service.clone(),
                reason,
            }
        };
        if admitted.is_err() {
            return Err(refused(format!(
                "is at its limit of {} concurrent requests",
                settings.max_instances
            )));
        }
        let in_flight = InFlight(in_flight.clone());
        match self.engine.budget().take(settings.memory_limit_bytes) {
            Ok(share) => Ok(Admission {
                _in_flight: in_flight,
                _share: share,
            }),
            Err(full) => Err(refused(format!("cannot start an instance: {full}"))),
        }
    }

    fn idle_instance(&self, generation: &Generation) -> Option<LiveInstance> {
        if generation.settings.requests_per_instance <= 1 {
            return None;
        }
        self.idle.take(generation.number)
    }

    fn new_instance(&self, generation: &Generation) -> LiveInstance {
        let state = HostState::new(
            generation.guest.clone(),
            generation.settings.memory_limit_bytes,
        );
        let mut store = Store::new(self.engine.wasmtime(), state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(on_epoch_tick);
        LiveInstance {
            store,
            instance: None,
            served: 0,
            generation: generation.number,
        }
    }

    async fn run<T>(
        &self,
        live: &mut LiveInstance,
        generation: &Generation,
        timeout: Duration,
        call: impl AsyncFnOnce(&Instance, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, SlotError> {
        live.store.set_epoch_deadline(1);
        let LiveInstance {
            store, instance, ..
        } = live;
        let work = async {
            let instance = match instance {
                Some(instance) => instance,
                None => instance.insert(generation.component.instantiate(&mut *store).await?),
            };
            call(instance, &mut *store).await
        };
        // Epoch ticks stop guest code that computes (it yields each tick, so this timer fires
        // on time too); this stops time spent awaiting host calls.
        let outcome = tokio::time::timeout(timeout, work).await;
        self.outcome(outcome, store, timeout, &generation.settings)
    }

    /// Names what ended a guest call: its answer, the deadline, the memory limit or a trap.
    fn outcome<T>(
        &self,
        outcome: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
        store: &Store<HostState>,
        timeout: Duration,
        settings: &SlotConfig,
    ) -> Result<T, SlotError> {
        let service = || self.started.service.clone();
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Err(_elapsed) => Err(SlotError::Timeout {
                service: service(),
                timeout,
            }),
            Ok(Err(err)) => {
                if store.data().limiter.exceeded {
                    return Err(SlotError::MemoryLimit {
                        service: service(),
                        limit_mb: settings.memory_limit_bytes / (1024 * 1024),
                    });
                }
                if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    return Err(SlotError::Timeout {
                        service: service(),
                        timeout,
                    });
                }
                // Callers, clients and dead letters get the panic message or the trap's kind;
                // the wasm backtrace is for the operator.
                tracing::warn!(
                    service = %self.started.service,
                    request_id = store.data().request_id(),
                    error = ?err,
                    "guest trapped"
                );
                let reason = match store.data().panic_message() {
                    Some(message) => format!("panicked: {message}"),
                    None => err.root_cause().to_string(),
                };
                Err(SlotError::Trap {
                    service: service(),
                    reason,
                })
            }
        }
    }

    /// The engine this slot's components are compiled with.
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Writes what the guest printed (if anything) to the log under `request_id`.
    fn log_output(&self, store: &Store<HostState>, request_id: &str) {
        if let Some((lines, bytes)) = store.data().log_dropped() {
            tracing::warn!(
                target: "guest",
                service = %self.started.service,
                request_id,
                dropped_lines = lines,
                dropped_bytes = bytes,
                "the guest logged more than its per-request budget of {} KiB; the rest was dropped",
                crate::host::MAX_REQUEST_LOG_BYTES / 1024
            );
        }
        if let Some((text, dropped)) = store.data().take_output() {
            tracing::info!(
                target: "guest",
                service = %self.started.service,
                request_id,
                dropped_bytes = dropped,
                "guest output:\n{text}"
            );
        }
    }

    /// Counters and identity, for the admin API.
    pub(crate) fn stats(&self) -> SlotStats {
        SlotStats {
            name: self.started.service.clone(),
            version: self.started.version.to_string(),
            component_hash: self.current.load().component.hash.clone(),
            generation: self.current.load().number,
            generations_alive: self.generations_alive.load(Ordering::Relaxed),
            last_swap: self.last_swap.lock().ok().and_then(|last| last.clone()),
            max_instances: self.current.load().settings.max_instances,
            in_flight: self.stats.in_flight.load(Ordering::Relaxed),
            served: self.stats.served.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            rejected: self.stats.rejected.load(Ordering::Relaxed),
            swaps: self.stats.swaps.load(Ordering::Relaxed),
            rollbacks: self.stats.rollbacks.load(Ordering::Relaxed),
        }
    }
}

/// One request or stream counted in flight by [`Slot::admit`], until dropped.
pub(crate) struct Admission {
    _in_flight: InFlight,
    _share: super::budget::BudgetShare,
}

/// One unit of a slot's work in flight, counted down on drop.
struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A slot's idle instances, counted against the node's cap on idle instances.
struct IdleInstances {
    /// Locked briefly, never across an await.
    list: std::sync::Mutex<Vec<LiveInstance>>,
    budget: Arc<super::budget::Budget>,
}

impl IdleInstances {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LiveInstance>> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `live` for reuse, unless the node keeps as many idle instances as it may.
    fn keep(&self, live: LiveInstance) {
        if self.budget.keep_idle() {
            self.lock().push(live);
        }
    }

    /// An idle instance of `generation`; those of older generations are dropped.
    fn take(&self, generation: u64) -> Option<LiveInstance> {
        let mut list = self.lock();
        let before = list.len();
        list.retain(|live| live.generation == generation);
        let taken = list.pop();
        self.budget.idle_gone(before - list.len());
        taken
    }

    fn clear(&self) {
        let mut list = self.lock();
        self.budget.idle_gone(list.len());
        list.clear();
    }
}

impl Drop for IdleInstances {
    fn drop(&mut self) {
        self.clear();
    }
}
/// Runs every epoch tick that guest code runs through without returning. Past the store's
/// deadline the guest is stopped (a `Trap::Interrupt`, reported as a timeout); before it, the
/// guest yields to the executor and carries on at the next tick. A guest computing in a loop
/// thus shares its worker thread (with the node's QUIC drivers, other guests, and streams a
/// connection answers inline) a tick at a time instead of holding it until its deadline.
fn on_epoch_tick(store: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    if store.data().deadline().remaining().is_zero() {
        return Ok(UpdateDeadline::Interrupt);
    }
    Ok(UpdateDeadline::YieldCustom(
        1,
        Box::pin(tokio::task::yield_now()),
    ))
}
