//! NATS JetStream as the engine behind queues and topics, for meshes that outgrow one node:
//! the same manifest and guest code, with messages kept by a replicated NATS cluster instead
//! of the declaring node's disk.
//!
//! ```toml
//! [messaging]
//! backend = "nats"
//! servers = ["nats://10.0.0.7:4222", "nats://10.0.0.8:4222"]
//! credentials = "node.creds"   # or user + password_file, or token_file
//! tls = { ca = "nats-ca.pem" } # and cert, key for servers that verify clients
//! replicas = 3                 # copies of each stream in the cluster
//! ```
//!
//! How the pieces map:
//! - a queue `q` is the work-queue stream `sy-q` (subjects `sy.q.>`, one per key), a topic
//!   `t` the limits stream `sy-t` whose limits are its retention (`compact`: one message per
//!   subject); every node that declares one makes sure the stream exists with those settings,
//!   and refuses to start beside a stream of the same name with settings it cannot change
//!   (named, with the difference);
//! - a subscription is a durable pull consumer named after its service, pulled by every node
//!   that runs the service ([`consume`]); a message's offset is its stream sequence minus one
//!   (offsets start at 0, as in the embedded log);
//! - a message's id is its `Nats-Msg-Id`, so a message sent twice (an outbox relayed twice) is
//!   stored once within the streams' duplicate window ([`codec`]);
//! - dead letters go to the stream `sy-dead-q`, listed by `GET /queues` and `GET /topics`,
//!   and redriven by `switchyard redrive`;
//! - request/reply and request-all ride core NATS: the reply address is an `_INBOX.` subject
//!   the requester listens on.
//!
//! A NATS server that is down at start does not stop the node: it serves, reconnects in the
//! background, and sends answer `unavailable` meanwhile. Wrong credentials stop it with an
//! error naming the servers.

mod codec;
mod consume;
mod streams;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_nats::connection::State as ConnectionState;
use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use futures_util::StreamExt as _;
use tokio::sync::watch;

use super::topic::{
    DEAD_FOR_HEADER, DeadLetterView, LogSpec, MAX_READ_BYTES, MAX_READ_MESSAGES, QueueView,
    SubscriptionView, TopicView,
};
use super::{QueueChanges, QueueError, RequestError, SendError, Subscribers};
use crate::host::Outgoing;
use crate::manifest::{NatsAuth, NatsSpec, StartAt};
use crate::policy::Policies;
use crate::wire::{Receipt, StoredMessage};
use consume::{Subscription, SubscriptionStats};

/// How long the node waits for NATS at start before it serves without it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often streams that are not ready are tried again, and how fresh the admin API's view
/// of the streams and consumers is kept while someone reads it.
const VIEW_EVERY: Duration = Duration::from_millis(200);
/// How often that view is refreshed while nobody reads it. Each refresh costs the servers
/// two or three JetStream API requests per queue or topic, from every node: at
/// [`VIEW_EVERY`] alone a mesh of many nodes and topics would keep them busy answering.
const VIEW_UNREAD_EVERY: Duration = Duration::from_secs(2);
/// NATS's default `max_payload`, until the servers say theirs.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Dead letters a view shows, the latest.
const RECENT_DEAD: u64 = 5;

/// Whether the view of the streams is refreshed at `now`: at each tick while someone reads it
/// (`read` since the last refresh), else once [`VIEW_UNREAD_EVERY`] has passed since the last
/// (`looked`).
fn view_due(read: bool, looked: Option<tokio::time::Instant>, now: tokio::time::Instant) -> bool {
    read || looked.is_none_or(|looked| now.saturating_duration_since(looked) >= VIEW_UNREAD_EVERY)
}

/// Why the NATS backend could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NatsError {
    #[error(
        "NATS at {servers} refused this node's credentials ({detail})\n  hint: check \
         `credentials`, `user` and `password_file`, or `token_file` in [messaging] against the \
         server's accounts"
    )]
    Credentials { servers: String, detail: String },
    #[error("NATS at {servers}: {detail}\n  hint: {hint}")]
    Connect {
        servers: String,
        detail: String,
        hint: &'static str,
    },
    #[error("reading {file} for [messaging]: {detail}")]
    Secret { file: String, detail: String },
    #[error(
        "NATS stream `{stream}` exists with settings {what} cannot use: {differences}\n  hint: \
         it was made by something else, or for a {other} of the same name; delete it (`nats \
         stream rm {stream}`) or rename the {kind} in the manifest"
    )]
    Incompatible {
        stream: String,
        what: String,
        differences: String,
        other: &'static str,
        kind: &'static str,
    },
    #[error("NATS stream `{stream}`: {detail}")]
    Stream { stream: String, detail: String },
}

/// What delivery needs, set once the node runs.
struct Delivery {
    subscribers: Arc<dyn Subscribers>,
    policies: Arc<Policies>,
}

/// A running subscription: its task and how to stop it.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A queue or topic this node declares.
struct Log {
    spec: Arc<ArcSwap<LogSpec>>,
    /// Messages sent to it from this node since it started.
    sent: AtomicU64,
    stats: std::sync::Mutex<HashMap<String, Arc<SubscriptionStats>>>,
    problems: std::sync::Mutex<HashMap<String, Arc<std::sync::Mutex<Option<String>>>>>,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
    /// The servers' view of its streams and consumers, refreshed every [`VIEW_EVERY`].
    seen: std::sync::Mutex<Seen>,
}

#[derive(Default, Clone)]
struct Seen {
    messages: u64,
    bytes: u64,
    first_seq: u64,
    last_seq: u64,
    /// Per subscription: `(ack floor, pending, ack pending)`.
    consumers: HashMap<String, (u64, u64, u64)>,
    dead_total: u64,
    recent_dead: Vec<DeadLetterView>,
}

impl Log {
    fn new(spec: LogSpec) -> Self {
        Self {
            spec: Arc::new(ArcSwap::from_pointee(spec)),
            sent: AtomicU64::new(0),
            stats: std::sync::Mutex::default(),
            problems: std::sync::Mutex::default(),
            running: tokio::sync::Mutex::default(),
            seen: std::sync::Mutex::default(),
        }
    }

    fn stats(&self, service: &str) -> Arc<SubscriptionStats> {
        match self.stats.lock() {
            Ok(mut stats) => stats.entry(service.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    fn problem_slot(&self, service: &str) -> Arc<std::sync::Mutex<Option<String>>> {
        match self.problems.lock() {
            Ok(mut problems) => problems.entry(service.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    fn seen(&self) -> Seen {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }
}

/// Queues and topics on NATS JetStream.
pub(crate) struct Jetstream {
    client: async_nats::Client,
    js: jetstream::Context,
    /// For messages: `nats://a:4222, nats://b:4222`.
    servers: String,
    replicas: usize,
    node: String,
    logs: ArcSwap<HashMap<String, Arc<Log>>>,
    delivery: OnceLock<Delivery>,
    changing: tokio::sync::Mutex<()>,
    /// Streams that could not be made ready (NATS away at start, or refused): retried.
    unready: std::sync::Mutex<BTreeMap<String, String>>,
    /// The largest message the servers take (refreshed with the view: the client's copy of
    /// the server's info is cloned whole on each read).
    max_payload: std::sync::atomic::AtomicUsize,
    /// Someone read the view since it was last refreshed: the next refresh comes at
    /// [`VIEW_EVERY`] rather than [`VIEW_UNREAD_EVERY`].
    view_read: AtomicBool,
}

impl Jetstream {
    /// Connects to `spec`'s servers and makes the streams of `logs` ready. A server that
    /// cannot be reached is not an error: the node serves and the client reconnects; wrong
    /// credentials, and a stream with settings it cannot use, are.
    pub(crate) async fn connect(
        spec: &NatsSpec,
        node: &str,
        logs: Vec<LogSpec>,
    ) -> Result<Self, NatsError> {
        let servers = spec.servers.join(", ");
        let client = match options(spec, node, false)
            .await?
            .connect(spec.servers.as_slice())
            .await
        {
            Ok(client) => client,
            Err(err) => {
                use async_nats::ConnectErrorKind as Kind;
                match err.kind() {
                    Kind::AuthorizationViolation | Kind::Authentication => {
                        return Err(NatsError::Credentials {
                            servers,
                            detail: err.to_string(),
                        });
                    }
                    // A handshake that fails on the server's certificate comes as I/O.
                    Kind::Io if spec.tls.is_some() && err.to_string().contains("certificate") => {
                        return Err(NatsError::Connect {
                            servers,
                            detail: err.to_string(),
                            hint: "check `tls` in [messaging]: the CA must have signed the \
                                   servers' certificates, for the names in `servers`",
                        });
                    }
                    Kind::Tls => {
                        return Err(NatsError::Connect {
                            servers,
                            detail: err.to_string(),
                            hint: "check `tls` in [messaging]: the CA must have signed the \
                                   servers' certificates, and the servers must speak TLS",
                        });
                    }
                    Kind::ServerParse | Kind::Dns => {
                        return Err(NatsError::Connect {
                            servers,
                            detail: err.to_string(),
                            hint: "check `servers` in [messaging]",
                        });
                    }
                    _ => {
                        tracing::warn!(%servers, error = %err, "NATS is not reachable; the node serves without it (sends answer `unavailable`) and reconnects in the background");
                        options(spec, node, true)
                            .await?
                            .connect(spec.servers.as_slice())
                            .await
                            .map_err(|err| NatsError::Connect {
                                servers: servers.clone(),
                                detail: err.to_string(),
                                hint: "check `servers` in [messaging]",
                            })?
                    }
                }
            }
        };
        let js = jetstream::new(client.clone());
        let backend = Self {
            client,
            js,
            servers,
            replicas: spec.replicas,
            node: node.to_owned(),
            logs: ArcSwap::from_pointee(HashMap::new()),
            delivery: OnceLock::new(),
            changing: tokio::sync::Mutex::new(()),
            unready: std::sync::Mutex::default(),
            view_read: AtomicBool::new(false),
            max_payload: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_PAYLOAD),
        };
        backend.note_max_payload();
        let mut table = HashMap::new();
        for spec in logs {
            if backend.connected() {
                backend.ready(&spec).await?;
            } else {
                backend.note_unready(&spec.name, "NATS is not reachable yet".into());
            }
            table.insert(spec.name.clone(), Arc::new(Log::new(spec)));
        }
        backend.logs.store(Arc::new(table));
        Ok(backend)
    }

    fn note_max_payload(&self) {
        if self.connected() {
            let most = self.client.server_info().max_payload;
            self.max_payload.store(most, Ordering::Relaxed);
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == ConnectionState::Connected
    }

    fn note_unready(&self, name: &str, why: String) {
        if let Ok(mut unready) = self.unready.lock() {
            unready.insert(name.to_owned(), why);
        }
    }

    /// Makes the streams of `spec` exist with its settings (limits are updated in place).
    async fn ready(&self, spec: &LogSpec) -> Result<(), NatsError> {
        let wanted = [
            streams::log_stream(spec, self.replicas),
            streams::dead_stream(spec, self.replicas),
        ];
        for wanted in wanted {
            let name = wanted.name.clone();
            let failed = |detail: String| NatsError::Stream {
                stream: name.clone(),
                // Without JetStream the servers do not answer its API at all.
                detail: if [
                    "jetstream not enabled",
                    "no responders",
                    "jetstream resource does not exist",
                ]
                .iter()
                .any(|sign| detail.to_lowercase().contains(sign))
                {
                    format!(
                        "{detail}\n  hint: the servers at {} must run JetStream (nats-server -js, \
                         or `jetstream {{}}` in its configuration)",
                        self.servers
                    )
                } else {
                    detail
                },
            };
            match self.js.get_stream(&name).await {
                Ok(stream) => {
                    let existing = &stream.cached_info().config;
                    let differences = streams::incompatible(existing, &wanted);
                    if !differences.is_empty() {
                        let topic = spec.is_topic();
                        return Err(NatsError::Incompatible {
                            stream: name,
                            what: spec.what(),
                            differences: differences.join("; "),
                            other: if topic { "queue" } else { "topic" },
                            kind: if topic { "topic" } else { "queue" },
                        });
                    }
                    if streams::outdated(existing, &wanted) {
                        tracing::info!(stream = %name, "updating the stream's limits to the manifest's");
                        self.js
                            .update_stream(&wanted)
                            .await
                            .map_err(|err| failed(err.to_string()))?;
                    }
                }
                Err(err) if stream_not_found(&err) => {
                    self.js
                        .create_stream(wanted)
                        .await
                        .map_err(|err| failed(err.to_string()))?;
                }
                Err(err) => return Err(failed(err.to_string())),
            }
        }
        // Each subscription's cursor exists before the node serves, as an embedded one's
        // does: a `latest` subscription then gets what is published from now on.
        let stream_name = codec::stream(&spec.name);
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|err| NatsError::Stream {
                stream: stream_name.clone(),
                detail: err.to_string(),
            })?;
        for sub in &spec.subscriptions {
            stream
                .get_or_create_consumer::<pull::Config>(
                    &sub.service,
                    consume::consumer_config(sub, sub.start),
                )
                .await
                .map_err(|err| NatsError::Stream {
                    stream: stream_name.clone(),
                    detail: format!("consumer `{}`: {err}", sub.service),
                })?;
        }
        if let Ok(mut unready) = self.unready.lock() {
            unready.remove(&spec.name);
        }
        Ok(())
    }

    fn unavailable(&self, what: &str) -> SendError {
        SendError::Unavailable(format!(
            "{what}: NATS at {} is not connected (the node reconnects by itself); try again \
             later",
            self.servers
        ))
    }

    /// Publishes `message` to queue or topic `name`; resolves once JetStream stored it.
    async fn publish(
        &self,
        name: &str,
        message: &StoredMessage,
        budget: Duration,
    ) -> Result<Receipt, SendError> {
        if !self.connected() {
            return Err(self.unavailable(&format!("cannot send to `{name}`")));
        }
        let max_payload = self.max_payload.load(Ordering::Relaxed);
        if message.body.len() > max_payload {
            return Err(SendError::TooLarge(format!(
                "a message of {} bytes is over the NATS servers' max_payload of {max_payload} \
                 bytes; send a smaller one, or raise max_payload in the servers' configuration",
                message.body.len()
            )));
        }
        let (headers, payload) = codec::encode(message);
        let subject = codec::subject(name, message.key.as_deref());
        let published = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await?;
            ack.await
        };
        let ack = match tokio::time::timeout(budget, published).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(err)) => return Err(self.refused(name, &err)),
            Err(_) => {
                return Err(SendError::Unavailable(format!(
                    "NATS at {} did not store the message for `{name}` within {} ms",
                    self.servers,
                    budget.as_millis()
                )));
            }
        };
        Ok(Receipt {
            id: message.id.clone(),
            offset: ack.sequence.saturating_sub(1),
        })
    }

    fn refused(&self, name: &str, err: &jetstream::context::PublishError) -> SendError {
        use jetstream::context::PublishErrorKind as Kind;
        let text = err.to_string();
        match err.kind() {
            Kind::StreamNotFound => SendError::UnknownQueue(format!(
                "no queue or topic named `{name}` exists on NATS (no stream `{}`); declare it \
                 with [[queue]] or [[topic]] in a manifest",
                codec::stream(name)
            )),
            _ if text.contains("maximum messages") || text.contains("maximum bytes") => {
                SendError::Full(format!(
                    "queue `{name}` is full on NATS ({text}); its subscriber must catch up, \
                     or raise max_depth / max_bytes_mb"
                ))
            }
            Kind::TimedOut | Kind::BrokenPipe => SendError::Unavailable(format!(
                "NATS at {} did not store the message for `{name}`: {text}",
                self.servers
            )),
            _ => SendError::Unavailable(format!(
                "NATS at {} refused the message for `{name}`: {text}",
                self.servers
            )),
        }
    }

    /// A guest's message as it is published: its sender fixed the id, or it gets a new one.
    fn stored(
        &self,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
    ) -> StoredMessage {
        let mut message = super::stored(sender, trace_context, outgoing);
        if message.id.is_empty() {
            message.id = self.new_id();
        }
        message
    }

    /// `<node>-` and 32 random hex digits: unique within JetStream's duplicate window.
    fn new_id(&self) -> String {
        format!("{}-{:032x}", self.node, fastrand::u128(..))
    }

    pub(crate) async fn send(
        &self,
        queue: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
        budget: Duration,
    ) -> Result<Receipt, SendError> {
        let message = self.stored(sender, trace_context, outgoing);
        let receipt = self.publish(queue, &message, budget).await?;
        if let Some(log) = self.logs.load().get(queue) {
            log.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(receipt)
    }

    /// Up to `max` stored messages of `topic` from offset `from`, and the offset after them.
    pub(crate) async fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        budget: Duration,
    ) -> Result<(Vec<StoredMessage>, u64), SendError> {
        if !self.connected() {
            return Err(self.unavailable(&format!("cannot read `{topic}`")));
        }
        let failed = |detail: String| {
            SendError::Unavailable(format!("could not read `{topic}` from NATS: {detail}"))
        };
        let read = async {
            let stream = match self.js.get_stream(codec::stream(topic)).await {
                Ok(stream) => stream,
                Err(err) if stream_not_found(&err) => {
                    return Err(SendError::UnknownQueue(format!(
                        "no topic named `{topic}` exists on NATS (no stream `{}`)",
                        codec::stream(topic)
                    )));
                }
                Err(err) => return Err(failed(err.to_string())),
            };
            let last = stream.cached_info().state.last_sequence;
            let max = max.min(MAX_READ_MESSAGES);
            if max == 0 || from >= last {
                return Ok((Vec::new(), from.max(last)));
            }
            let reader = stream
                .create_consumer(pull::Config {
                    deliver_policy: consume::deliver_policy(StartAt::Offset(from)),
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..pull::Config::default()
                })
                .await
                .map_err(|err| failed(err.to_string()))?;
            let reader_name = reader.cached_info().name.clone();
            let mut batch = reader
                .fetch()
                .max_messages(max)
                .max_bytes(MAX_READ_BYTES)
                .messages()
                .await
                .map_err(|err| failed(err.to_string()))?;
            let mut messages = Vec::new();
            let mut next = from;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|err| failed(err.to_string()))?;
                let seq = message
                    .info()
                    .map_err(|err| failed(err.to_string()))?
                    .stream_sequence;
                let decoded = codec::decode(seq, message.headers.as_ref(), &message.payload)
                    .map_err(|err| failed(format!("the message at offset {}: {err}", seq - 1)))?;
                next = seq;
                messages.push(decoded);
                if messages.len() >= max {
                    break;
                }
            }
            let _ = stream.delete_consumer(&reader_name).await;
            Ok((messages, next))
        };
        tokio::time::timeout(budget, read)
            .await
            .unwrap_or_else(|_| {
                Err(failed(format!(
                    "no answer within {} ms",
                    budget.as_millis()
                )))
            })
    }

    /// Sends `outgoing` with a reply address on core NATS and waits for the first reply.
    pub(crate) async fn request(
        &self,
        destination: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
        timeout: Duration,
    ) -> Result<StoredMessage, RequestError> {
        let mut replies = self
            .request_with(destination, sender, trace_context, outgoing, timeout)
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(reply)) => decode_reply(&reply).map_err(RequestError::NotSent),
            _ => Err(RequestError::Timeout(format!(
                "no reply to the request sent to `{destination}` came within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Publishes `outgoing` with a reply address and collects every reply within `window`.
    pub(crate) async fn request_all(
        &self,
        destination: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
        window: Duration,
    ) -> Result<Vec<StoredMessage>, RequestError> {
        let until = tokio::time::Instant::now() + window;
        let mut replies = self
            .request_with(destination, sender, trace_context, outgoing, window)
            .await?;
        let mut answers = Vec::new();
        while let Ok(Some(reply)) = tokio::time::timeout_at(until, replies.next()).await {
            match decode_reply(&reply) {
                Ok(reply) => answers.push(reply),
                Err(err) => {
                    tracing::warn!(%destination, error = %err, "a reply that is not a switchyard message; dropped")
                }
            }
        }
        Ok(answers)
    }

    /// Listens on a new inbox, then sends `outgoing` with the inbox as its reply address.
    async fn request_with(
        &self,
        destination: &str,
        sender: &str,
        trace_context: Option<String>,
        mut outgoing: Outgoing,
        budget: Duration,
    ) -> Result<async_nats::Subscriber, RequestError> {
        if !self.connected() {
            return Err(RequestError::NotSent(
                self.unavailable(&format!("cannot send to `{destination}`")),
            ));
        }
        let inbox = self.client.new_inbox();
        let replies = self.client.subscribe(inbox.clone()).await.map_err(|err| {
            RequestError::NotSent(SendError::Unavailable(format!(
                "cannot listen for replies on NATS: {err}"
            )))
        })?;
        outgoing.reply_to = Some(inbox);
        self.send(destination, sender, trace_context, outgoing, budget)
            .await
            .map_err(RequestError::NotSent)?;
        Ok(replies)
    }

    /// Answers at `to`: a requester's inbox on core NATS, or else a queue.
    pub(crate) async fn reply(
        &self,
        to: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
        budget: Duration,
    ) -> Result<(), SendError> {
        if !to.starts_with("_INBOX.") {
            return self
                .send(to, sender, trace_context, outgoing, budget)
                .await
                .map(drop);
        }
        if !self.connected() {
            return Err(self.unavailable(&format!("cannot reply to `{to}`")));
        }
        let mut reply = super::stored(sender, trace_context, outgoing);
        reply.id = format!("{to}/reply");
        let (headers, payload) = codec::encode(&reply);
        self.client
            .publish_with_headers(to.to_owned(), headers, payload)
            .await
            .map_err(|err| {
                SendError::Unavailable(format!("NATS did not take the reply to `{to}`: {err}"))
            })
    }

    /// Pulls every subscription until `shutdown`, then lets deliveries in flight end.
    pub(crate) async fn run(
        self: Arc<Self>,
        subscribers: Arc<dyn Subscribers>,
        policies: Arc<Policies>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        {
            let _one_at_a_time = self.changing.lock().await;
            let _ = self.delivery.set(Delivery {
                subscribers,
                policies,
            });
            for log in self.logs.load().values() {
                self.start(log).await;
            }
        }
        let mut tick = tokio::time::interval(VIEW_EVERY);
        let mut looked = None;
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            if stopping {
                break;
            }
            let read = self.view_read.swap(false, Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            let look = view_due(read, looked, now);
            if look {
                looked = Some(now);
            }
            self.refresh(look).await;
        }
        let _one_at_a_time = self.changing.lock().await;
        for log in self.logs.load().values() {
            stop(log).await;
        }
        let _ = self.client.flush().await;
    }

    /// Starts pulling each subscription of `log`.
    async fn start(&self, log: &Arc<Log>) {
        let Some(delivery) = self.delivery.get() else {
            return;
        };
        let spec = log.spec.load_full();
        let mut running = log.running.lock().await;
        for sub in &spec.subscriptions {
            if running.contains_key(&sub.service) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let subscription = Arc::new(Subscription {
                js: self.js.clone(),
                log: log.spec.clone(),
                spec: sub.clone(),
                stats: log.stats(&sub.service),
                subscribers: delivery.subscribers.clone(),
                policies: delivery.policies.clone(),
                problem: log.problem_slot(&sub.service),
            });
            let task = tokio::spawn(subscription.run(stopped));
            running.insert(sub.service.clone(), Running { stop, task });
        }
    }

    /// Streams that were not ready (NATS away at start) are made so; with `look`, the view is
    /// refreshed.
    async fn refresh(&self, look: bool) {
        if !self.connected() {
            return;
        }
        self.note_max_payload();
        let unready: Vec<String> = self
            .unready
            .lock()
            .map(|unready| unready.keys().cloned().collect())
            .unwrap_or_default();
        for name in unready {
            let Some(log) = self.logs.load().get(&name).cloned() else {
                continue;
            };
            if let Err(err) = self.ready(&log.spec.load()).await {
                tracing::error!(queue = %name, error = %err, "stream not ready");
                self.note_unready(&name, err.to_string());
            }
        }
        if !look {
            return;
        }
        for log in self.logs.load().values() {
            let seen = self.look(&log.spec.load()).await;
            if let (Some(seen), Ok(mut slot)) = (seen, log.seen.lock()) {
                *slot = seen;
            }
        }
    }

    /// What the servers say about the streams and consumers of `spec`.
    async fn look(&self, spec: &LogSpec) -> Option<Seen> {
        let stream = self.js.get_stream(codec::stream(&spec.name)).await.ok()?;
        let state = &stream.cached_info().state;
        let mut seen = Seen {
            messages: state.messages,
            bytes: state.bytes,
            first_seq: state.first_sequence,
            last_seq: state.last_sequence,
            ..Seen::default()
        };
        for sub in &spec.subscriptions {
            if let Ok(info) = stream.consumer_info(&sub.service).await {
                seen.consumers.insert(
                    sub.service.clone(),
                    (
                        info.ack_floor.stream_sequence,
                        info.num_pending,
                        info.num_ack_pending as u64,
                    ),
                );
            }
        }
        if let Ok(dead) = self.js.get_stream(codec::dead_stream(&spec.name)).await {
            let state = &dead.cached_info().state;
            seen.dead_total = state.messages;
            let mut seq = state.last_sequence;
            while seq >= state.first_sequence.max(1)
                && (seen.recent_dead.len() as u64) < RECENT_DEAD
            {
                if let Ok(raw) = dead.get_raw_message(seq).await {
                    let message = codec::decode(seq, Some(&raw.headers), &raw.payload);
                    let info = codec::decode_dead(Some(&raw.headers));
                    if let (Ok(message), Some(info)) = (message, info) {
                        seen.recent_dead.push(dead_view(&message, info));
                    }
                }
                seq -= 1;
            }
        }
        Some(seen)
    }

    /// Makes `specs` the node's queues and topics: new ones get their streams and start
    /// pulling, removed ones stop pulling (their streams stay), changed ones take their new
    /// settings (a stream's limits are updated; subscriptions start again).
    pub(crate) async fn apply(&self, specs: Vec<LogSpec>) -> Result<QueueChanges, QueueError> {
        let _one_at_a_time = self.changing.lock().await;
        let current = self.logs.load_full();
        for spec in &specs {
            if current
                .get(&spec.name)
                .is_none_or(|log| *log.spec.load_full() != *spec)
            {
                self.ready(spec)
                    .await
                    .map_err(|err| QueueError::Log(err.into()))?;
            }
        }
        let mut changes = Vec::new();
        let mut next = HashMap::new();
        for spec in specs {
            match current.get(&spec.name) {
                Some(log) if *log.spec.load_full() == spec => {
                    next.insert(spec.name.clone(), log.clone());
                }
                Some(log) => {
                    changes.push(format!("{}: settings changed", spec.what()));
                    stop(log).await;
                    log.spec.store(Arc::new(spec.clone()));
                    self.start(log).await;
                    next.insert(spec.name.clone(), log.clone());
                }
                None => {
                    changes.push(format!("{} added", spec.what()));
                    let log = Arc::new(Log::new(spec.clone()));
                    self.start(&log).await;
                    next.insert(spec.name.clone(), log);
                }
            }
        }
        for (name, log) in current.iter() {
            if !next.contains_key(name) {
                stop(log).await;
                changes.push(format!(
                    "{} removed (its stream keeps its messages)",
                    log.spec.load().what()
                ));
            }
        }
        self.logs.store(Arc::new(next));
        changes.sort();
        Ok(changes)
    }

    /// Makes subscription `service` of `topic` start again at `from`; returns the offset.
    pub(crate) async fn rewind(
        &self,
        topic: &str,
        service: &str,
        from: StartAt,
    ) -> Result<u64, QueueError> {
        let _one_at_a_time = self.changing.lock().await;
        let log = self.log(topic)?;
        let spec = log.spec.load_full();
        if !spec.is_topic() {
            return Err(QueueError::NotATopic(topic.to_owned()));
        }
        let Some(sub) = spec.subscriptions.iter().find(|s| s.service == service) else {
            let known: Vec<&str> = spec
                .subscriptions
                .iter()
                .map(|s| s.service.as_str())
                .collect();
            return Err(QueueError::UnknownSubscription {
                topic: topic.to_owned(),
                service: service.to_owned(),
                known: known.join(", "),
            });
        };
        let failed = |detail: String| {
            QueueError::Log(
                NatsError::Stream {
                    stream: codec::stream(topic),
                    detail,
                }
                .into(),
            )
        };
        stop(&log).await;
        let stream = self
            .js
            .get_stream(codec::stream(topic))
            .await
            .map_err(|err| failed(err.to_string()))?;
        let _ = stream.delete_consumer(service).await;
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(consume::consumer_config(sub, from))
            .await
            .map_err(|err| failed(err.to_string()))?;
        let info = consumer.cached_info();
        let last = stream.cached_info().state.last_sequence;
        let offset = last.saturating_sub(info.num_pending);
        self.start(&log).await;
        Ok(offset)
    }

    /// Sends queue `name`'s dead letters again (with new ids: JetStream would take their old
    /// ones for duplicates); returns how many.
    pub(crate) async fn redrive(&self, name: &str) -> Result<usize, QueueError> {
        let log = self.log(name)?;
        if log.spec.load().is_topic() {
            return Err(QueueError::NotAQueue(name.to_owned()));
        }
        let failed = |detail: String| {
            QueueError::Log(
                NatsError::Stream {
                    stream: codec::dead_stream(name),
                    detail,
                }
                .into(),
            )
        };
        let dead = self
            .js
            .get_stream(codec::dead_stream(name))
            .await
            .map_err(|err| failed(err.to_string()))?;
        let (first, last) = {
            let state = &dead.cached_info().state;
            (state.first_sequence.max(1), state.last_sequence)
        };
        let mut redriven = 0;
        for seq in first..=last {
            let Ok(raw) = dead.get_raw_message(seq).await else {
                continue;
            };
            let mut message =
                codec::decode(seq, Some(&raw.headers), &raw.payload).map_err(failed)?;
            message
                .headers
                .retain(|(header, _)| header != DEAD_FOR_HEADER);
            message.id = self.new_id();
            self.publish(name, &message, Duration::from_secs(5))
                .await
                .map_err(|err| failed(err.to_string()))?;
            dead.delete_message(seq)
                .await
                .map_err(|err| failed(err.to_string()))?;
            redriven += 1;
        }
        Ok(redriven)
    }

    fn log(&self, name: &str) -> Result<Arc<Log>, QueueError> {
        self.logs
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| QueueError::Unknown {
                name: name.to_owned(),
                known: {
                    let names = self.names();
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                },
            })
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.logs.load().keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.connected() {
            problems.push(format!(
                "NATS at {} is not connected: sends answer `unavailable` until it is (the node \
                 reconnects by itself)",
                self.servers
            ));
        }
        if let Ok(unready) = self.unready.lock() {
            for (name, why) in unready.iter() {
                problems.push(format!("`{name}`: its NATS streams are not ready: {why}"));
            }
        }
        for log in self.logs.load().values() {
            if let Ok(slots) = log.problems.lock() {
                problems.extend(slots.values().filter_map(|slot| slot.lock().ok()?.clone()));
            }
        }
        problems.sort();
        problems
    }

    pub(crate) fn views(&self) -> Vec<QueueView> {
        self.view_read.store(true, Ordering::Relaxed);
        let mut views: Vec<QueueView> = self
            .logs
            .load()
            .values()
            .filter_map(|log| {
                let spec = log.spec.load();
                let super::topic::Kind::Queue { max_depth, .. } = spec.kind else {
                    return None;
                };
                let sub = spec.subscriptions.first()?;
                let seen = log.seen();
                let stats = log.stats(&sub.service);
                let (_, _, in_flight) = seen
                    .consumers
                    .get(&sub.service)
                    .copied()
                    .unwrap_or_default();
                Some(QueueView {
                    name: spec.name.clone(),
                    subscriber: sub.service.clone(),
                    depth: seen.messages as usize,
                    in_flight: in_flight as usize,
                    max_depth,
                    sent: log.sent.load(Ordering::Relaxed),
                    delivered: stats.delivered.load(Ordering::Relaxed),
                    redelivered: stats.redelivered.load(Ordering::Relaxed),
                    dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
                    loops_stopped: stats.loops_stopped.load(Ordering::Relaxed),
                    dead_letters_total: seen.dead_total,
                    waiting_for: stats.waiting_for.lock().ok().and_then(|w| w.clone()),
                    recent_dead_letters: seen.recent_dead.clone(),
                })
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    pub(crate) fn topic_views(&self) -> Vec<TopicView> {
        self.view_read.store(true, Ordering::Relaxed);
        let mut views: Vec<TopicView> = self
            .logs
            .load()
            .values()
            .filter_map(|log| {
                let spec = log.spec.load();
                let super::topic::Kind::Topic(retention) = &spec.kind else {
                    return None;
                };
                let seen = log.seen();
                let subscriptions = spec
                    .subscriptions
                    .iter()
                    .map(|sub| {
                        let stats = log.stats(&sub.service);
                        let (floor, pending, in_flight) = seen
                            .consumers
                            .get(&sub.service)
                            .copied()
                            .unwrap_or_default();
                        SubscriptionView {
                            service: sub.service.clone(),
                            cursor: floor,
                            lag: (pending + in_flight) as usize,
                            in_flight: in_flight as usize,
                            delivered: stats.delivered.load(Ordering::Relaxed),
                            redelivered: stats.redelivered.load(Ordering::Relaxed),
                            dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
                            loops_stopped: stats.loops_stopped.load(Ordering::Relaxed),
                            expired: 0,
                            waiting_for: stats.waiting_for.lock().ok().and_then(|w| w.clone()),
                        }
                    })
                    .collect();
                Some(TopicView {
                    name: spec.name.clone(),
                    first_offset: (seen.messages > 0).then(|| seen.first_seq.saturating_sub(1)),
                    next_offset: seen.last_seq,
                    messages: seen.messages as usize,
                    bytes: seen.bytes as usize,
                    retain_ms: retention.max_age.map(|age| age.as_millis() as u64),
                    retain_bytes: retention.max_bytes,
                    compact: retention.compact,
                    published: log.sent.load(Ordering::Relaxed),
                    dead_letters_total: seen.dead_total,
                    subscriptions,
                    recent_dead_letters: seen.recent_dead.clone(),
                })
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }
}

/// Stops pulling every subscription of `log`, letting deliveries in flight end.
async fn stop(log: &Log) {
    let mut running = log.running.lock().await;
    for (_, Running { stop, task }) in running.drain() {
        let _ = stop.send(true);
        let _ = task.await;
    }
}

fn stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn decode_reply(reply: &async_nats::Message) -> Result<StoredMessage, SendError> {
    codec::decode(0, reply.headers.as_ref(), &reply.payload).map_err(|err| {
        SendError::Unavailable(format!("a reply that is not a switchyard message: {err}"))
    })
}

fn dead_view(message: &StoredMessage, dead: codec::DeadInfo) -> DeadLetterView {
    DeadLetterView {
        id: message.id.clone(),
        subscriber: Some(dead.subscriber),
        attempts: dead.attempts,
        reason: dead.reason,
        last_error: dead.last_error,
        sender: message.sender.clone(),
        body_preview: String::from_utf8_lossy(&message.body[..message.body.len().min(256)])
            .into_owned(),
    }
}

/// The connection options of `spec`: its credentials and TLS; `retry`: return at once and
/// connect in the background (NATS was not reachable).
async fn options(
    spec: &NatsSpec,
    node: &str,
    retry: bool,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let secret = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|err| NatsError::Secret {
                file: path.display().to_string(),
                detail: err.to_string(),
            })
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("switchyard node {node}"))
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None);
    options = match &spec.auth {
        NatsAuth::None => options,
        NatsAuth::Credentials(path) => {
            options
                .credentials_file(path)
                .await
                .map_err(|err| NatsError::Secret {
                    file: path.display().to_string(),
                    detail: err.to_string(),
                })?
        }
        NatsAuth::UserPassword {
            user,
            password_file,
        } => options.user_and_password(user.clone(), secret(password_file)?),
        NatsAuth::Token(path) => options.token(secret(path)?),
    };
    if let Some(tls) = &spec.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    if retry {
        options = options.retry_on_initial_connect();
    }
    Ok(options.event_callback(|event| async move {
        match event {
            async_nats::Event::Connected => tracing::info!("connected to NATS"),
            async_nats::Event::Disconnected => {
                tracing::warn!("disconnected from NATS; reconnecting")
            }
            other => tracing::debug!(event = %other, "NATS"),
        }
    }))
}
