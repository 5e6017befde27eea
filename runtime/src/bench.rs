//! Entry points for `benches/`: the pieces a benchmark times alone. Not a stable API.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use crate::transport::{Identity, SERVER_NAME};

use crate::policy::{Binding, Code};
use crate::wasm::{Engine, EngineConfig};

/// An engine with room for `max_instances`, and the policy component at `path` loaded into
/// it with `config`.
fn policy_code(
    path: &Path,
    config: &[(&str, &str)],
    max_instances: u32,
) -> Result<(Arc<Engine>, Code), String> {
    let engine = Arc::new(
        Engine::new(&EngineConfig {
            cache_dir: None,
            pool: crate::manifest::PoolPlan {
                max_instances,
                max_memory_bytes: u64::from(max_instances) * (64 << 20),
                max_idle: 1,
                policy_instances: max_instances,
                slot_bytes: 64 << 20,
                per_instance: Default::default(),
            },
        })
        .map_err(|err| err.to_string())?,
    );
    let loaded = engine.load_policy(path).map_err(|err| err.to_string())?;
    let config: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Ok((engine, Code::new(loaded, &config)))
}

/// One policy instance, as a `[[bind]]` would hold it.
pub struct PolicyProbe {
    binding: Binding,
    call: crate::policy::CallInfo,
}

impl PolicyProbe {
    /// Loads the policy component at `path` and configures it with `config`.
    pub async fn load(path: &Path, config: &[(&str, &str)]) -> Result<Self, String> {
        let (engine, code) = policy_code(path, config, 16)?;
        let binding = Binding::start(
            engine,
            code,
            "bench".into(),
            "bench".into(),
            crate::telemetry::Metrics::off(),
        )
        .await
        .map_err(|err| err.to_string())?;
        Ok(Self {
            binding,
            call: crate::policy::CallInfo {
                caller: "bench".into(),
                service: "callee".into(),
                method: "GET /x".into(),
                attempt: 1,
                deadline_ms: 1000,
            },
        })
    }

    /// What the node does around one call: `before-call`, then `after-call` with a reply of
    /// `status`. Returns whether the policy let the call through.
    pub async fn around_call(&self, status: u16) -> bool {
        let through = matches!(
            self.binding.before(&self.call).await,
            crate::policy::BeforeDecision::Proceed
        );
        if through {
            self.binding
                .after(
                    &self.call,
                    &crate::policy::Outcome::Replied(status),
                    Duration::from_micros(50),
                )
                .await;
        }
        through
    }
}

/// A call through `depth` bindings of one policy (as a `[[bind]]` listing it that many times
/// holds them: nested layers, each asked `before-call` and `after-call`) to a callee that
/// answers at once: what the policy chain costs on the call path, routing and the callee
/// left out.
pub struct ChainProbe {
    chain: crate::policy::Chain,
}

/// A callee that answers `200` at once.
struct Answers;

impl crate::call::CallService for Answers {
    fn call(
        &self,
        _call: crate::call::Call,
    ) -> crate::util::BoxFuture<'_, Result<crate::call::Reply, crate::call::CallError>> {
        Box::pin(std::future::ready(Ok(crate::call::Reply {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        })))
    }
}

impl ChainProbe {
    /// Loads the policy component at `path` once and binds it `depth` times.
    pub async fn load(path: &Path, config: &[(&str, &str)], depth: usize) -> Result<Self, String> {
        let (engine, code) = policy_code(path, config, 16 + 3 * depth as u32)?;
        let mut layers = Vec::with_capacity(depth);
        for layer in 0..depth {
            let binding = Binding::start(
                engine.clone(),
                code.clone(),
                format!("bench-{layer}"),
                "bench".into(),
                crate::telemetry::Metrics::off(),
            )
            .await
            .map_err(|err| err.to_string())?;
            layers.push(Arc::new(binding));
        }
        Ok(Self {
            chain: crate::policy::Chain::new(layers),
        })
    }

    /// One call through the chain; its status.
    pub async fn call(&self) -> Result<u16, String> {
        let call = crate::call::Call {
            target: crate::call::Target::any("callee"),
            method: "GET /x".into(),
            body: Vec::new(),
            headers: Vec::new(),
            deadline: crate::call::Deadline::after(Duration::from_secs(1)),
            caller: "bench".into(),
            request_id: "bench".into(),
            spread: None,
            causation: Default::default(),
        };
        self.chain
            .around(call, &Answers)
            .await
            .map(|reply| reply.status)
            .map_err(|err| err.to_string())
    }
}

/// A broker delivering to native subscribers (no guest) that acknowledge at once and answer
/// a message that has a `reply-to`; what the probes below share.
struct Delivering {
    broker: Arc<crate::messaging::Broker>,
    delivered: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<()>,
}

/// Acknowledges every delivery; answers one that has a `reply-to`.
struct AckAndAnswer {
    delivered: Arc<std::sync::atomic::AtomicU64>,
    broker: std::sync::OnceLock<std::sync::Weak<crate::messaging::Broker>>,
}

impl crate::messaging::Subscribers for AckAndAnswer {
    fn deliver<'a>(
        &'a self,
        _service: &'a str,
        _queue: &'a str,
        message: &'a crate::messaging::StoredMessage,
        _attempt: u32,
    ) -> crate::util::BoxFuture<'a, crate::messaging::Delivered> {
        self.delivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let broker = self.broker.get().and_then(std::sync::Weak::upgrade);
            if let (Some(to), Some(broker)) = (&message.reply_to, broker) {
                let answer = outgoing(message.body.clone());
                if let Err(err) = broker
                    .reply(to, "bench", None, answer, Duration::from_secs(1))
                    .await
                {
                    return crate::messaging::Delivered::Failed(err.to_string());
                }
            }
            crate::messaging::Delivered::Acked
        })
    }
}

fn outgoing(body: Vec<u8>) -> crate::host::Outgoing {
    crate::host::Outgoing {
        id: None,
        kind: crate::wire::MessageKind::Event,
        key: None,
        headers: Vec::new(),
        reply_to: None,
        body,
    }
}

impl Delivering {
    /// Opens the broker (`open`, off the executor) and delivers until [`Delivering::close`].
    async fn start(
        open: impl FnOnce() -> Result<crate::messaging::Broker, crate::messaging::MessagingError>
        + Send
        + 'static,
    ) -> Result<Self, String> {
        let broker = tokio::task::spawn_blocking(open)
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| err.to_string())?;
        let broker = Arc::new(broker);
        let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let subscribers = Arc::new(AckAndAnswer {
            delivered: delivered.clone(),
            broker: std::sync::OnceLock::new(),
        });
        let _ = subscribers.broker.set(Arc::downgrade(&broker));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(broker.clone().run(
            subscribers,
            Arc::new(crate::policy::Policies::default()),
            stopped,
        ));
        Ok(Self {
            broker,
            delivered,
            stop,
            running,
        })
    }

    async fn send(&self, to: &str, body: Vec<u8>) -> Result<crate::wire::Receipt, String> {
        self.broker
            .send_here(to, "bench", None, outgoing(body))
            .await
            .map_err(|err| err.to_string())
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.running.await;
    }
}

/// One durable queue whose subscriber acknowledges at once (natively, no guest): what the
/// broker costs per message, the log's fsync included.
pub struct QueueProbe(Delivering);

impl QueueProbe {
    /// Opens queue `bench` with its log under `data_dir`, delivering `concurrency` at a time.
    pub async fn open(data_dir: &Path, concurrency: u32) -> Result<Self, String> {
        let spec = crate::manifest::QueueSpec {
            name: "bench".into(),
            subscriber: "bench".into(),
            concurrency,
            ordered_by_key: false,
            max_causation_depth: 32,
            max_attempts: 1,
            redeliver_after: Duration::from_millis(100),
            max_depth: usize::MAX,
            max_bytes: usize::MAX,
            max_dead_bytes: usize::MAX,
        };
        let dir = data_dir.to_path_buf();
        Delivering::start(move || {
            crate::messaging::Broker::open(&dir, "bench", std::slice::from_ref(&spec), &[])
        })
        .await
        .map(Self)
    }

    /// Sends `body`; resolves once it is on disk.
    pub async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        self.0.send("bench", body).await.map(drop)
    }

    /// Messages acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.0.delivered()
    }

    /// Stops delivering and closes the log.
    pub async fn close(self) {
        self.0.close().await;
    }
}

/// A durable topic `bench` with `subscribers` subscriptions, each acknowledging at once
/// (natively, no guest), and a queue `ask` whose subscriber answers each request at once:
/// what the broker costs per message, the log's fsync included (or not: `fsync = false` runs
/// the same code on a log that does not wait for the disk).
pub struct TopicProbe(Delivering);

impl TopicProbe {
    /// Opens topic `bench` (with `subscribers` subscriptions, `concurrency` deliveries at once
    /// each) and queue `ask` under `data_dir`.
    pub async fn open(
        data_dir: &Path,
        subscribers: usize,
        concurrency: u32,
        fsync: bool,
    ) -> Result<Self, String> {
        let subscription = |n: usize| crate::manifest::SubscriptionSpec {
            service: format!("sub-{n}"),
            start: crate::manifest::StartAt::Latest,
            concurrency,
            ordered_by_key: false,
            max_attempts: 1,
            redeliver_after: Duration::from_millis(100),
        };
        let topic = crate::manifest::TopicSpec {
            name: "bench".into(),
            retention: crate::manifest::Retention {
                max_age: None,
                max_bytes: 4 << 30,
                compact: false,
            },
            max_causation_depth: 32,
            max_dead_bytes: usize::MAX,
            subscriptions: (0..subscribers).map(subscription).collect(),
        };
        let ask = crate::manifest::QueueSpec {
            name: "ask".into(),
            subscriber: "answers".into(),
            concurrency: 64,
            ordered_by_key: false,
            max_causation_depth: 32,
            max_attempts: 1,
            redeliver_after: Duration::from_millis(100),
            max_depth: usize::MAX,
            max_bytes: usize::MAX,
            max_dead_bytes: usize::MAX,
        };
        let dir = data_dir.to_path_buf();
        Delivering::start(move || {
            let (queues, topics) = (std::slice::from_ref(&ask), std::slice::from_ref(&topic));
            match fsync {
                true => crate::messaging::Broker::open(&dir, "bench", queues, topics),
                false => crate::messaging::Broker::open_unsynced(&dir, "bench", queues, topics),
            }
        })
        .await
        .map(Self)
    }

    /// Publishes `body` to `bench`; its offset once it is on disk.
    pub async fn publish(&self, body: Vec<u8>) -> Result<u64, String> {
        self.0
            .send("bench", body)
            .await
            .map(|receipt| receipt.offset)
    }

    /// Sends `body` to `ask` as a request; resolves with the reply's body.
    pub async fn request(&self, body: Vec<u8>) -> Result<Vec<u8>, String> {
        self.0
            .broker
            .request("ask", "bench", None, outgoing(body), Duration::from_secs(5))
            .await
            .map(|reply| reply.body)
            .map_err(|err| err.to_string())
    }

    /// Deliveries acknowledged so far, all subscriptions together (requests included).
    pub fn delivered(&self) -> u64 {
        self.0.delivered()
    }

    /// Stops delivering and closes the logs.
    pub async fn close(self) {
        self.0.close().await;
    }
}

/// Publishes through a running node's broker natively (no guest), the way a guest's `publish`
/// goes once past the WIT call: to a topic of that node or of a peer. What a publish across
/// the mesh costs, without HTTP and a guest in front of it.
pub struct NodePublisher(std::sync::Arc<crate::messaging::Broker>);

impl NodePublisher {
    /// Publishes through `node`'s broker.
    pub fn of(node: &crate::node::Node) -> Self {
        Self(node.broker())
    }

    /// Publishes `body` to `topic`; its offset once the owner has it on disk.
    pub async fn publish(&self, topic: &str, body: Vec<u8>) -> Result<u64, String> {
        self.0
            .send(
                topic,
                "bench",
                None,
                outgoing(body),
                Duration::from_secs(10),
            )
            .await
            .map(|receipt| receipt.offset)
            .map_err(|err| err.to_string())
    }

    /// Publishes `body` to `topic` with the id `id` fixed, as the outbox relay publishes an
    /// outbox entry (a message relayed twice keeps its id); its offset.
    pub async fn publish_as(&self, topic: &str, id: &str, body: Vec<u8>) -> Result<u64, String> {
        let mut outgoing = outgoing(body);
        outgoing.id = Some(id.to_owned());
        self.0
            .send(topic, "bench", None, outgoing, Duration::from_secs(10))
            .await
            .map(|receipt| receipt.offset)
            .map_err(|err| err.to_string())
    }

    /// Deliveries of `topic` (a topic of this node) acknowledged so far, all subscriptions.
    pub fn delivered(&self, topic: &str) -> u64 {
        self.0
            .topic_views()
            .iter()
            .filter(|view| view.name == topic)
            .flat_map(|view| &view.subscriptions)
            .map(|sub| sub.delivered)
            .sum()
    }
}

/// Sends one call to the node at `peer` as the node `identity` names, claiming it comes from
/// service `caller`: what a node that lies about its callers would send (the tests use it to
/// show that such a claim is checked). `Ok((status, body))` for a reply, `Err` with the
/// failure's kind and message otherwise.
pub async fn call_claiming(
    identity: &Identity,
    peer: std::net::SocketAddr,
    service: &str,
    method: &str,
    caller: &str,
) -> Result<(u16, String), String> {
    use crate::wire::Frame;
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let transport =
        crate::transport::Transport::bind(local, identity).map_err(|err| err.to_string())?;
    let call = Frame::Call {
        service: service.to_owned(),
        range: None,
        method: method.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
        deadline_ms: 5_000,
        caller: caller.to_owned(),
        request_id: "claimed.1".to_owned(),
        trace_context: None,
        causation_depth: 0,
        causation_chain: Vec::new(),
    };
    let answer = transport
        .request(peer, &call, Duration::from_secs(5))
        .await
        .map_err(|err| err.to_string());
    transport.close(Duration::from_millis(100)).await;
    match answer? {
        Frame::Reply { status, body, .. } => Ok((status, String::from_utf8_lossy(&body).into())),
        Frame::Failed { kind, message } => Err(format!("{kind:?}: {message}")),
        other => Err(format!("answered with a {} frame", other.kind())),
    }
}

/// A state store under a directory, committing as a guest's `state.commit` does (off the
/// executor, one fsync each), with its outbox relay running against a broker that takes every
/// message at once: what a commit costs, and what its outbox adds.
pub struct StateProbe {
    store: Arc<crate::state::Store>,
    stop: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
    relayed: Arc<crate::state::RelayStats>,
}

impl StateProbe {
    /// Opens the store at `data_dir/state.redb` and starts its relay (unless `relay` is
    /// false: then the messages stay in the outbox, which shows what storing them costs).
    pub async fn open(data_dir: &Path, relay: bool) -> Result<Self, String> {
        let path = data_dir.join("state.redb");
        let store = tokio::task::spawn_blocking(move || crate::state::Store::open(&path))
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| err.to_string())?;
        let store = Arc::new(store);
        let relayed = Arc::new(crate::state::RelayStats::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let relay = match relay {
            true => tokio::spawn(crate::state::run_relay(
                store.clone(),
                Arc::new(TakesEverything),
                relayed.clone(),
                stopped,
            )),
            false => tokio::spawn(async {}),
        };
        Ok(Self {
            store,
            stop,
            relay,
            relayed,
        })
    }

    /// Commits `value` at `key` for service `bench`, and with `message` a message of that
    /// many bytes to topic `events` through the outbox.
    pub async fn commit(
        &self,
        key: String,
        value: Vec<u8>,
        message: Option<usize>,
    ) -> Result<(), String> {
        let transaction = crate::host::Transaction {
            reads: Vec::new(),
            writes: vec![(key, Some(value))],
            messages: message
                .map(|bytes| crate::host::OutboxMessage {
                    destination: "events".into(),
                    trace_context: None,
                    message: outgoing(vec![b'm'; bytes]),
                })
                .into_iter()
                .collect(),
        };
        let store = self.store.clone();
        crate::state::commit_off_executor(store, "bench".into(), u64::MAX, transaction)
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }

    /// fsyncs of the store's file so far.
    pub fn fsyncs(&self) -> u64 {
        self.store.fsyncs()
    }

    /// Writes to the store's file so far (a commit writes each page it changed).
    pub fn writes(&self) -> u64 {
        self.store.writes()
    }

    /// Messages the relay has handed over so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.relayed()
    }

    /// Stops the relay.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.relay.await;
    }
}

/// A broker that stores nothing and takes every send at once.
struct TakesEverything;

type Sent<'a, T> = crate::util::BoxFuture<'a, Result<T, crate::host::SendError>>;
type Asked<'a, T> = crate::util::BoxFuture<'a, Result<T, crate::host::RequestError>>;

impl crate::host::Queues for TakesEverything {
    fn send<'a>(
        &'a self,
        _queue: &'a str,
        _sender: &'a str,
        _trace_context: Option<String>,
        message: crate::host::Outgoing,
        _budget: Duration,
    ) -> Sent<'a, crate::wire::Receipt> {
        let id = message.id.unwrap_or_default();
        Box::pin(async move { Ok(crate::wire::Receipt { id, offset: 0 }) })
    }

    fn read<'a>(
        &'a self,
        _topic: &'a str,
        _from: u64,
        _max: usize,
        _budget: Duration,
    ) -> Sent<'a, (Vec<crate::wire::StoredMessage>, u64)> {
        Box::pin(async { Ok((Vec::new(), 0)) })
    }

    fn request<'a>(
        &'a self,
        _destination: &'a str,
        _sender: &'a str,
        _trace_context: Option<String>,
        _message: crate::host::Outgoing,
        _timeout: Duration,
    ) -> Asked<'a, crate::wire::StoredMessage> {
        Box::pin(async { Err(crate::host::RequestError::Timeout("no replies here".into())) })
    }

    fn request_all<'a>(
        &'a self,
        _destination: &'a str,
        _sender: &'a str,
        _trace_context: Option<String>,
        _message: crate::host::Outgoing,
        _window: Duration,
    ) -> Asked<'a, Vec<crate::wire::StoredMessage>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn reply<'a>(
        &'a self,
        _to: &'a str,
        _sender: &'a str,
        _trace_context: Option<String>,
        _message: crate::host::Outgoing,
        _budget: Duration,
    ) -> Sent<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}
