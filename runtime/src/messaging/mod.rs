//! Messaging: durable queues that one service consumes, and durable topics that every
//! subscribing service reads at its own pace, for the services of a node or of the mesh.
//!
//! The manifest declares a queue and its subscriber:
//!
//! ```toml
//! [[queue]]
//! name = "orders"
//! subscriber = "fulfilment"   # a service of this node (or, with `quic`, of the mesh)
//! concurrency = 1             # deliveries at once (1 keeps the order of sending while none fails)
//! ordered_by_key = false      # true: a key's messages in order, also across failed deliveries
//! max_causation_depth = 32    # loop guard: longer chains of messages are dead-lettered
//! max_attempts = 10           # failed deliveries before a message is dead-lettered
//! redeliver_ms = 100          # the first pause, doubling per attempt, without a policy
//! max_depth = 10000           # messages owed before `send` answers `full`
//! ```
//!
//! and a topic, what it keeps and who subscribes:
//!
//! ```toml
//! [[topic]]
//! name = "order-events"
//! retain_ms = 604800000       # drop messages older than a week (default: no time limit)
//! retain_mb = 64              # and the oldest past 64 MiB (the default)
//! compact = false             # true: keep only the latest message of each key
//!
//! [[topic.subscription]]
//! service = "billing"         # every subscribing service gets every message
//! start = "beginning"         # or "latest" (default), an offset, or an RFC 3339 time
//! concurrency = 4             # and ordered_by_key, max_attempts, redeliver_ms, as a queue
//! ```
//!
//! A queue is a topic with one subscription whose messages go once it is done with them: one
//! implementation ([`topic`]) runs both, and they share one namespace. A topic's subscription
//! has a durable cursor; `switchyard replay` rewinds it, and a guest reads a topic's history
//! with `read(topic, from, max)`.
//!
//! A guest sends with the `messaging` import; `send` and `publish` return once the message
//! is in the log on disk (see [`log`] for the format and the group commit). Delivery is
//! *at least once*: a message is owed until its subscriber acknowledges it (`on-message`
//! returns `ok`), survives a restart of the node, and is dead-lettered (kept, whole, in the
//! queue's dead-letter file and listed by `GET /queues`) once the policies bound to the queue
//! (`[[bind]] queue = "orders"`, their `on-delivery-failure`) or the queue's own rule give up.
//! Subscribers should make handling idempotent with the message id.
//!
//! A queue lives on the node that declares it; its log is under that node's `data_dir`, and a
//! second node on the same files is refused. In a mesh ([`mesh`]) a guest on any node sends
//! to it by name (the send returns once the owner has it on disk, or fails with `unavailable`
//! within the sender's deadline), and its subscriber may run on any node: a service that does
//! not run here (or is busy here) gets its deliveries over QUIC. Editing `[[queue]]` entries of a running node
//! applies them: settings take effect for the next delivery, a new queue opens, a removed one
//! drains and closes (its files keep what it owes).

mod inbox;
mod log;
mod mesh;
mod nats;
mod topic;

use nats::NatsError;

pub(crate) use mesh::MeshQueues;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use log::check_replay;
#[cfg(test)]
pub(crate) use log::sample_log;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use tokio::sync::watch;

use crate::host::{Outgoing, Queues, RequestError, SendError};
use crate::manifest::{QueueSpec, StartAt, TopicSpec};
use crate::policy::Policies;
use crate::util::BoxFuture;
use crate::util::now_ms;
use crate::wire::Receipt;

pub(crate) use log::StoredMessage;
pub(crate) use topic::{QueueView, TopicView};

use topic::{LogSpec, Topic};

/// Why the queues could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MessagingError(Failure);

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(
        "queue `{queue}`: {cause}\n  hint: check [[queue]] and `node.data_dir` in the manifest"
    )]
    Log { queue: String, cause: log::LogError },
    #[error(transparent)]
    Nats(#[from] NatsError),
}

impl MessagingError {
    pub(super) fn log(queue: String, cause: log::LogError) -> Self {
        Self(Failure::Log { queue, cause })
    }
}

impl From<NatsError> for MessagingError {
    fn from(err: NatsError) -> Self {
        Self(Failure::Nats(err))
    }
}

/// Why an operation on a running node's queues did not happen (or only in part).
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueError {
    #[error("this node has no queue or topic named `{name}` (it has: {known})")]
    Unknown { name: String, known: String },
    #[error(transparent)]
    Log(#[from] MessagingError),
    #[error(
        "queue `{queue}`: {redriven} dead letters were sent again, but could not be removed from \
         the dead-letter file (a later redrive would send them once more): {cause}"
    )]
    DeadLettersKept {
        queue: String,
        redriven: usize,
        cause: log::LogError,
    },
    #[error(
        "`{0}` is a topic: its messages stay, nothing to redrive\n  hint: rewind a subscription with `switchyard replay {0} --subscriber <service> --from <offset>`"
    )]
    NotAQueue(String),
    #[error(
        "`{0}` is a queue: it has one subscription and keeps no history to replay\n  hint: declare a [[topic]] to replay messages"
    )]
    NotATopic(String),
    #[error(
        "`{0}` is a topic on this node; a queue of that name would owe every message the topic \
         kept, so the change is refused and the topic goes on\n  hint: give the queue another \
         name"
    )]
    TopicIntoQueue(String),
    #[error("topic `{topic}` has no subscription of service `{service}` (it has: {known})")]
    UnknownSubscription {
        topic: String,
        service: String,
        known: String,
    },
    #[error("opening the new queues was cut off: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

pub(crate) use crate::wire::Delivered;

/// Hands a message to a service's `subscriber.on-message` (implemented by the node).
pub(crate) trait Subscribers: Send + Sync {
    /// `attempt`: 1 for the first delivery.
    fn deliver<'a>(
        &'a self,
        service: &'a str,
        queue: &'a str,
        message: &'a StoredMessage,
        attempt: u32,
    ) -> BoxFuture<'a, Delivered>;

    /// Whether `service` runs on this node: a node pulls a shared subscription (NATS) only
    /// for the services it runs.
    fn runs_here(&self, service: &str) -> bool {
        let _ = service;
        true
    }
}

/// The node's queues and topics. A manifest edit adds, removes and reconfigures them
/// ([`Broker::apply`]).
pub(crate) struct Broker {
    /// Where their files are.
    dir: PathBuf,
    storage: Arc<dyn log::Storage>,
    queues: ArcSwap<HashMap<String, Arc<Topic>>>,
    /// Set once delivery runs: what queues added later deliver with.
    delivery: OnceLock<(Arc<dyn Subscribers>, Arc<Policies>)>,
    /// Serializes [`Broker::apply`].
    changing: tokio::sync::Mutex<()>,
    /// The queues and subscribers of other nodes, when this node is part of a mesh.
    mesh: OnceLock<Arc<MeshQueues>>,
    /// This node's guests' requests that wait for a reply.
    inboxes: inbox::Inboxes,
    /// Set: NATS JetStream keeps the queues and topics, not this node's logs.
    nats: Option<Arc<nats::Jetstream>>,
}

/// What [`Broker::apply`] changed, as `queue `x` ...` lines.
pub(crate) type QueueChanges = Vec<String>;

impl Broker {
    /// Opens every queue's and topic's log under `data_dir/queues` and takes back what it
    /// keeps and owes, for node `node`. Blocking (file I/O): call it off the executor.
    pub(crate) fn open(
        data_dir: &Path,
        node: &str,
        queues: &[QueueSpec],
        topics: &[TopicSpec],
    ) -> Result<Self, MessagingError> {
        Self::open_on(Arc::new(log::Disk), data_dir, node, queues, topics)
    }

    /// [`Broker::open`] on a log that does not wait for the disk: the benchmarks' baseline.
    #[cfg(feature = "bench")]
    pub(crate) fn open_unsynced(
        data_dir: &Path,
        node: &str,
        queues: &[QueueSpec],
        topics: &[TopicSpec],
    ) -> Result<Self, MessagingError> {
        Self::open_on(Arc::new(log::UnsyncedDisk), data_dir, node, queues, topics)
    }

    fn open_on(
        storage: Arc<dyn log::Storage>,
        data_dir: &Path,
        node: &str,
        queues: &[QueueSpec],
        topics: &[TopicSpec],
    ) -> Result<Self, MessagingError> {
        let dir = data_dir.join("queues");
        let mut opened = HashMap::new();
        for spec in log_specs(queues, topics) {
            opened.insert(spec.name.clone(), Arc::new(open_log(&storage, &dir, spec)?));
        }
        let queues = opened;
        Ok(Self {
            dir,
            storage,
            queues: ArcSwap::from_pointee(queues),
            delivery: OnceLock::new(),
            changing: tokio::sync::Mutex::new(()),
            mesh: OnceLock::new(),
            inboxes: inbox::Inboxes::new(node),
            nats: None,
        })
    }

    /// The queues and topics on NATS JetStream (`[messaging] backend = "nats"`): connects,
    /// and makes their streams ready (see [`nats`]).
    pub(crate) async fn connect_nats(
        spec: &crate::manifest::NatsSpec,
        data_dir: &Path,
        node: &str,
        queues: &[QueueSpec],
        topics: &[TopicSpec],
    ) -> Result<Self, MessagingError> {
        let backend = nats::Jetstream::connect(spec, node, log_specs(queues, topics)).await?;
        Ok(Self {
            dir: data_dir.join("queues"),
            storage: Arc::new(log::Disk),
            queues: ArcSwap::from_pointee(HashMap::new()),
            delivery: OnceLock::new(),
            changing: tokio::sync::Mutex::new(()),
            mesh: OnceLock::new(),
            inboxes: inbox::Inboxes::new(node),
            nats: Some(Arc::new(backend)),
        })
    }

    /// Reaches the queues and subscribers of other nodes through `mesh` from now on.
    pub(crate) fn join_mesh(&self, mesh: Arc<MeshQueues>) {
        if self.nats.is_some() {
            // Every node reaches every queue and topic through NATS.
            return;
        }
        let _ = self.mesh.set(mesh);
    }

    /// The other nodes' queues and subscribers, when this node is part of a mesh.
    pub(crate) fn mesh(&self) -> Option<&Arc<MeshQueues>> {
        self.mesh.get()
    }

    /// Appends a message from `sender` to `queue` (a queue or topic), on this node or on the
    /// peer that declares it; resolves with its id and offset once it is on disk there, or
    /// fails within `budget`.
    pub(crate) async fn send(
        &self,
        queue: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
        budget: std::time::Duration,
    ) -> Result<Receipt, SendError> {
        if let Some(nats) = &self.nats {
            return nats
                .send(queue, sender, trace_context, outgoing, budget)
                .await;
        }
        let local = self.queues.load().contains_key(queue);
        if !local
            && let Some(mesh) = self.mesh.get()
            && let Some(owner) = mesh.owner_of(queue)
        {
            return mesh
                .send(owner, queue, sender, trace_context, outgoing, budget)
                .await;
        }
        self.send_here(queue, sender, trace_context, outgoing).await
    }

    /// Appends a message from `sender` to `queue` of this node (a local guest's send, or a
    /// peer's `Send` frame); resolves with its id and offset once it is on disk.
    pub(crate) async fn send_here(
        &self,
        queue: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
    ) -> Result<Receipt, SendError> {
        let target = self.here(queue)?;
        let stored = target.send(stored(sender, trace_context, outgoing)).await?;
        Ok(Receipt {
            id: stored.id,
            offset: stored.offset,
        })
    }

    /// Queue or topic `name` of this node, or the error that names the ones it has.
    fn here(&self, name: &str) -> Result<Arc<Topic>, SendError> {
        if let Some(found) = self.queues.load().get(name) {
            return Ok(found.clone());
        }
        let mesh = if self.mesh.get().is_some() {
            " nor does a node of the mesh that is up;"
        } else {
            ";"
        };
        Err(SendError::UnknownQueue(format!(
            "this node has no queue or topic named `{name}` (it has: {}){mesh} declare it with \
             [[queue]] or [[topic]] in a manifest",
            self.known()
        )))
    }

    /// Up to `max` stored messages of `topic` from offset `from` on, and the offset to read
    /// from next: from this node or the peer that declares it, within `budget`.
    pub(crate) async fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        budget: std::time::Duration,
    ) -> Result<(Vec<StoredMessage>, u64), SendError> {
        if let Some(nats) = &self.nats {
            return nats.read(topic, from, max, budget).await;
        }
        let local = self.queues.load().contains_key(topic);
        if !local
            && let Some(mesh) = self.mesh.get()
            && let Some(owner) = mesh.owner_of(topic)
        {
            let max = u32::try_from(max).unwrap_or(u32::MAX);
            return mesh.read(owner, topic, from, max, budget).await;
        }
        self.read_here(topic, from, max).await
    }

    /// [`Broker::read`] of a topic of this node (a local guest's, or a peer's `Read` frame).
    pub(crate) async fn read_here(
        &self,
        topic: &str,
        from: u64,
        max: usize,
    ) -> Result<(Vec<StoredMessage>, u64), SendError> {
        self.here(topic)?
            .read(from, max)
            .await
            .map_err(|err| SendError::Unavailable(format!("could not read `{topic}`: {err}")))
    }

    /// Makes subscription `service` of `topic` owe the kept messages from `from` on; returns
    /// the offset it starts at.
    pub(crate) async fn rewind(
        &self,
        topic: &str,
        service: &str,
        from: StartAt,
    ) -> Result<u64, QueueError> {
        if let Some(nats) = &self.nats {
            return nats.rewind(topic, service, from).await;
        }
        let found = self.queues.load().get(topic).cloned();
        match found {
            Some(found) => found.rewind(service, from).await,
            None => Err(self.unknown(topic)),
        }
    }

    fn unknown(&self, name: &str) -> QueueError {
        QueueError::Unknown {
            name: name.to_owned(),
            known: self.known(),
        }
    }

    /// Its queues and topics for an error message: `a, b`, or `none`.
    fn known(&self) -> String {
        let names = self.names();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// Sends `outgoing` to `destination` with a reply address of this node, and waits at most
    /// `timeout` for the first reply.
    pub(crate) async fn request(
        &self,
        destination: &str,
        sender: &str,
        trace_context: Option<String>,
        mut outgoing: Outgoing,
        timeout: std::time::Duration,
    ) -> Result<StoredMessage, RequestError> {
        if let Some(nats) = &self.nats {
            return nats
                .request(destination, sender, trace_context, outgoing, timeout)
                .await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiting = self.inboxes.open().map_err(RequestError::NotSent)?;
        outgoing.reply_to = Some(waiting.address.clone());
        // A request is delivered before it is on disk: its reply may come first.
        let send = self.send(destination, sender, trace_context, outgoing, timeout);
        tokio::pin!(send);
        let mut stored = false;
        loop {
            tokio::select! {
                sent = &mut send, if !stored => {
                    sent.map_err(RequestError::NotSent)?;
                    stored = true;
                }
                reply = tokio::time::timeout_at(deadline, waiting.reply()) => {
                    return match reply {
                        Ok(Some(reply)) => Ok(reply),
                        _ => Err(RequestError::Timeout(format!(
                            "no reply to the request sent to `{destination}` came within {} ms",
                            timeout.as_millis()
                        ))),
                    };
                }
            }
        }
    }

    /// Publishes `outgoing` to `destination` with a reply address of this node, and collects
    /// every reply that arrives within `window` (publish/async responses: each subscriber of a
    /// topic may answer). No reply is an empty list, not an error.
    pub(crate) async fn request_all(
        &self,
        destination: &str,
        sender: &str,
        trace_context: Option<String>,
        mut outgoing: Outgoing,
        window: std::time::Duration,
    ) -> Result<Vec<StoredMessage>, RequestError> {
        if let Some(nats) = &self.nats {
            return nats
                .request_all(destination, sender, trace_context, outgoing, window)
                .await;
        }
        let until = tokio::time::Instant::now() + window;
        let mut waiting = self.inboxes.open_for_all().map_err(RequestError::NotSent)?;
        outgoing.reply_to = Some(waiting.address.clone());
        // Replies may come before the request is on disk; a failed send still fails it.
        let send = self.send(destination, sender, trace_context, outgoing, window);
        tokio::pin!(send);
        let mut stored = false;
        let mut replies = Vec::new();
        loop {
            tokio::select! {
                sent = &mut send, if !stored => {
                    sent.map_err(RequestError::NotSent)?;
                    stored = true;
                }
                reply = tokio::time::timeout_at(until, waiting.reply()) => match reply {
                    Ok(Some(reply)) => replies.push(reply),
                    _ if stored => return Ok(replies),
                    // The window closed before the send was answered: wait for that answer.
                    _ => {
                        (&mut send).await.map_err(RequestError::NotSent)?;
                        return Ok(replies);
                    }
                },
            }
        }
    }

    /// Answers a message at its `reply-to`, `to`: a requester waiting on this node or another,
    /// or else a queue.
    pub(crate) async fn reply(
        &self,
        to: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
        budget: std::time::Duration,
    ) -> Result<(), SendError> {
        if let Some(nats) = &self.nats {
            return nats
                .reply(to, sender, trace_context, outgoing, budget)
                .await;
        }
        let Some((node, _)) = inbox::parse(to) else {
            return self
                .send(to, sender, trace_context, outgoing, budget)
                .await
                .map(drop);
        };
        let mut reply = stored(sender, trace_context, outgoing);
        reply.id = format!("{to}/reply");
        if node == self.inboxes.node() {
            return self.inboxes.answer(to, reply);
        }
        match self.mesh.get() {
            Some(mesh) => mesh.answer(node, to, reply, budget).await,
            None => Err(SendError::Unavailable(format!(
                "`{to}` is a reply address of node `{node}`, and this node is in no mesh"
            ))),
        }
    }

    /// Hands a peer's reply to the requester waiting at `to` on this node.
    pub(crate) fn answer_here(&self, to: &str, reply: StoredMessage) -> Result<(), SendError> {
        self.inboxes.answer(to, reply)
    }

    /// Delivers every queue's messages (and those of queues added later) until `shutdown`,
    /// then lets deliveries in flight end and closes the logs.
    pub(crate) async fn run(
        self: Arc<Self>,
        subscribers: Arc<dyn Subscribers>,
        policies: Arc<Policies>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Some(nats) = &self.nats {
            return nats.clone().run(subscribers, policies, shutdown).await;
        }
        {
            let _one_at_a_time = self.changing.lock().await;
            let _ = self.delivery.set((subscribers.clone(), policies.clone()));
            for queue in self.queues.load().values() {
                queue.start(subscribers.clone(), policies.clone());
            }
        }
        let _ = shutdown.wait_for(|stop| *stop).await;
        let _one_at_a_time = self.changing.lock().await;
        let mut stopping = tokio::task::JoinSet::new();
        for queue in self.queues.load().values() {
            let queue = queue.clone();
            stopping.spawn(async move { queue.stop().await });
        }
        while stopping.join_next().await.is_some() {}
    }

    /// Makes `queues` and `topics` the node's: new ones are opened (taking back what their
    /// files keep and owe) and start delivering, removed ones stop taking sends, finish their
    /// deliveries in flight and close their files (what they owe stays there for when they
    /// come back), and the others take their new settings. If a new one cannot open, nothing
    /// changes. A queue that becomes a topic (or back) is closed and opened again as the other.
    pub(crate) async fn apply(
        &self,
        queues: &[QueueSpec],
        topics: &[TopicSpec],
    ) -> Result<QueueChanges, QueueError> {
        if let Some(nats) = &self.nats {
            return nats.apply(log_specs(queues, topics)).await;
        }
        let specs = log_specs(queues, topics);
        let _one_at_a_time = self.changing.lock().await;
        let current = self.queues.load_full();
        if let Some(spec) = specs.iter().find(|spec| {
            !spec.is_topic() && current.get(&spec.name).is_some_and(|log| log.is_topic())
        }) {
            return Err(QueueError::TopicIntoQueue(spec.name.clone()));
        }
        let kept = |spec: &LogSpec| {
            current
                .get(&spec.name)
                .filter(|log| log.is_topic() == spec.is_topic())
        };
        let added: Vec<LogSpec> = specs
            .iter()
            .filter(|spec| kept(spec).is_none())
            .cloned()
            .collect();
        let removed: Vec<Arc<Topic>> = current
            .iter()
            .filter(|(name, _)| {
                !specs
                    .iter()
                    .any(|spec| &spec.name == *name && kept(spec).is_some())
            })
            .map(|(_, queue)| queue.clone())
            .collect();
        // One that changes kind closes before it opens again on the same files, and opens
        // again as it was if the new kind cannot open them.
        let changing_kind: Vec<Arc<Topic>> = removed
            .iter()
            .filter(|log| specs.iter().any(|spec| spec.name == log.name))
            .cloned()
            .collect();
        if !changing_kind.is_empty() {
            let mut without: HashMap<String, Arc<Topic>> = (*current).clone();
            for log in &changing_kind {
                without.remove(&log.name);
            }
            self.queues.store(Arc::new(without));
            for log in &changing_kind {
                log.stop().await;
            }
        }
        let (dir, storage) = (self.dir.clone(), self.storage.clone());
        let opened = tokio::task::spawn_blocking(move || {
            added
                .into_iter()
                .map(|spec| open_log(&storage, &dir, spec).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        let opened = match opened {
            Ok(opened) => opened,
            Err(refused) => {
                self.restore(changing_kind).await;
                return Err(refused.into());
            }
        };
        let mut changes = Vec::new();
        let mut next = HashMap::new();
        for spec in &specs {
            if let Some(queue) = kept(spec) {
                if *queue.spec() != *spec {
                    queue.reconfigure(spec.clone());
                    changes.push(format!("{}: settings changed", spec.what()));
                }
                next.insert(spec.name.clone(), queue.clone());
            }
        }
        for queue in opened {
            changes.push(format!("{} added", queue.spec().what()));
            if let Some((subscribers, policies)) = self.delivery.get() {
                queue.start(subscribers.clone(), policies.clone());
            }
            next.insert(queue.name.clone(), queue);
        }
        self.queues.store(Arc::new(next));
        for queue in removed {
            // Stopping twice is harmless: one that changed kind stopped already.
            queue.stop().await;
            changes.push(format!(
                "{} removed (what it owes stays in its files)",
                queue.spec().what()
            ));
        }
        changes.sort();
        Ok(changes)
    }

    /// Opens again, as they were, the queues and topics `closed` to change their kind when
    /// the new kind could not open their files.
    async fn restore(&self, closed: Vec<Arc<Topic>>) {
        let mut table: HashMap<String, Arc<Topic>> = (**self.queues.load()).clone();
        for log in closed {
            let (dir, storage, spec) = (self.dir.clone(), self.storage.clone(), log.spec());
            let name = log.name.clone();
            let reopened = tokio::task::spawn_blocking(move || {
                open_log(&storage, &dir, (*spec).clone()).map(Arc::new)
            })
            .await;
            match reopened {
                Ok(Ok(reopened)) => {
                    if let Some((subscribers, policies)) = self.delivery.get() {
                        reopened.start(subscribers.clone(), policies.clone());
                    }
                    table.insert(name, reopened);
                }
                Ok(Err(err)) => {
                    tracing::error!(queue = %name, error = %err, "could not open it again after its change of kind was refused; it stays closed until the node restarts");
                }
                Err(err) => {
                    tracing::error!(queue = %name, error = %err, "reopening was cut off");
                }
            }
        }
        self.queues.store(Arc::new(table));
    }

    /// Sends queue `name`'s dead letters again; returns how many.
    pub(crate) async fn redrive(&self, name: &str) -> Result<usize, QueueError> {
        if let Some(nats) = &self.nats {
            return nats.redrive(name).await;
        }
        let found = self.queues.load().get(name).cloned();
        match found {
            Some(queue) => queue.redrive().await,
            None => Err(self.unknown(name)),
        }
    }

    /// What is wrong with the queues now, one line each: a log that cannot be written (sends
    /// answer `unavailable` until a write succeeds again), a full dead-letter file.
    pub(crate) fn problems(&self) -> Vec<String> {
        if let Some(nats) = &self.nats {
            return nats.problems();
        }
        let mut problems: Vec<String> = self
            .queues
            .load()
            .values()
            .flat_map(|queue| queue.problems())
            .collect();
        problems.sort();
        problems
    }

    /// The queues it holds, by name.
    pub(crate) fn names(&self) -> Vec<String> {
        if let Some(nats) = &self.nats {
            return nats.names();
        }
        let mut names: Vec<String> = self.queues.load().keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn views(&self) -> Vec<QueueView> {
        if let Some(nats) = &self.nats {
            return nats.views();
        }
        let mut views: Vec<QueueView> = self
            .queues
            .load()
            .values()
            .filter_map(|q| q.queue_view())
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    pub(crate) fn topic_views(&self) -> Vec<TopicView> {
        if let Some(nats) = &self.nats {
            return nats.topic_views();
        }
        let mut views: Vec<TopicView> = self
            .queues
            .load()
            .values()
            .filter_map(|q| q.topic_view())
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }
}

impl Queues for Broker {
    fn send<'a>(
        &'a self,
        queue: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<Receipt, SendError>> {
        Box::pin(Broker::send(
            self,
            queue,
            sender,
            trace_context,
            message,
            budget,
        ))
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        from: u64,
        max: usize,
        budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<(Vec<StoredMessage>, u64), SendError>> {
        Box::pin(Broker::read(self, topic, from, max, budget))
    }

    fn request<'a>(
        &'a self,
        destination: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<StoredMessage, RequestError>> {
        Box::pin(Broker::request(
            self,
            destination,
            sender,
            trace_context,
            message,
            timeout,
        ))
    }

    fn request_all<'a>(
        &'a self,
        destination: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        window: std::time::Duration,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, RequestError>> {
        Box::pin(Broker::request_all(
            self,
            destination,
            sender,
            trace_context,
            message,
            window,
        ))
    }

    fn reply<'a>(
        &'a self,
        to: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(Broker::reply(
            self,
            to,
            sender,
            trace_context,
            message,
            budget,
        ))
    }
}

impl Drop for Broker {
    /// A node dropped without shutting down stops delivering at once, like a crashed one; the
    /// queues' files (and their locks) are released once the dispatchers are gone.
    fn drop(&mut self) {
        for queue in self.queues.load().values() {
            queue.abort();
        }
    }
}

fn open_log(
    storage: &Arc<dyn log::Storage>,
    dir: &Path,
    spec: LogSpec,
) -> Result<Topic, MessagingError> {
    let name = spec.name.clone();
    Topic::open(storage, dir, spec).map_err(|cause| MessagingError::log(name, cause))
}

/// Queues and topics as the broker runs them.
fn log_specs(queues: &[QueueSpec], topics: &[TopicSpec]) -> Vec<LogSpec> {
    queues
        .iter()
        .cloned()
        .map(LogSpec::from)
        .chain(topics.iter().cloned().map(LogSpec::from))
        .collect()
}

/// A message from `sender` as a log stores it (its queue or topic numbers it, and gives it its
/// id unless the sender fixed one).
fn stored(sender: &str, trace_context: Option<String>, outgoing: Outgoing) -> StoredMessage {
    StoredMessage {
        seq: 0,
        id: outgoing.id.unwrap_or_default(),
        kind: outgoing.kind,
        key: outgoing.key,
        headers: outgoing.headers,
        reply_to: outgoing.reply_to,
        trace_context,
        body: outgoing.body,
        sender: sender.to_owned(),
        sent_at_ms: now_ms(),
    }
}
