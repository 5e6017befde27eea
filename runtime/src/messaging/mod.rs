//! Messaging: durable queues that a node's services send to and one service consumes.
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
//! A guest sends with the `messaging` import; `send` returns once the message is in the
//! queue's log on disk (see [`log`] for the format and the group commit). Delivery is
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

pub(crate) use mesh::MeshQueues;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use log::check_replay;
#[cfg(test)]
pub(crate) use log::sample_log;
mod queue;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use tokio::sync::watch;

use crate::host::{Outgoing, Queues, RequestError, SendError};
use crate::manifest::QueueSpec;
use crate::policy::Policies;
use crate::util::BoxFuture;

pub(crate) use log::StoredMessage;
pub(crate) use queue::QueueView;

use queue::Queue;

/// Why the queues could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("queue `{queue}`: {cause}")]
pub struct MessagingError {
    queue: String,
    cause: log::LogError,
}

/// Why an operation on a running node's queues did not happen (or only in part).
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueError {
    #[error("this node has no queue named `{name}` (it has: {known})")]
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
    #[error("opening the new queues was cut off: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

/// How one delivery went.
pub(crate) enum Delivered {
    /// The subscriber acknowledged it.
    Acked,
    /// The subscriber refused it or failed on it (counts an attempt).
    Failed(String),
    /// The subscriber cannot take it right now (busy, not running); it waits, no attempt.
    NotNow(String),
}

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
}

/// The node's queues. A manifest edit adds, removes and reconfigures them ([`Broker::apply`]).
pub(crate) struct Broker {
    /// Where the queues' files are.
    dir: PathBuf,
    storage: Arc<dyn log::Storage>,
    queues: ArcSwap<HashMap<String, Arc<Queue>>>,
    /// Set once delivery runs: what queues added later deliver with.
    delivery: OnceLock<(Arc<dyn Subscribers>, Arc<Policies>)>,
    /// Serializes [`Broker::apply`].
    changing: tokio::sync::Mutex<()>,
    /// The queues and subscribers of other nodes, when this node is part of a mesh.
    mesh: OnceLock<Arc<MeshQueues>>,
    /// This node's guests' requests that wait for a reply.
    inboxes: inbox::Inboxes,
}

/// What [`Broker::apply`] changed, as `queue `x` ...` lines.
pub(crate) type QueueChanges = Vec<String>;

impl Broker {
    /// Opens every queue's log under `data_dir/queues` and takes back what it owes, for node
    /// `node`. Blocking (file I/O): call it off the executor.
    pub(crate) fn open(
        data_dir: &Path,
        node: &str,
        specs: &[QueueSpec],
    ) -> Result<Self, MessagingError> {
        let dir = data_dir.join("queues");
        let storage: Arc<dyn log::Storage> = Arc::new(log::Disk);
        let mut queues = HashMap::new();
        for spec in specs {
            queues.insert(
                spec.name.clone(),
                Arc::new(open_queue(&storage, &dir, spec)?),
            );
        }
        Ok(Self {
            dir,
            storage,
            queues: ArcSwap::from_pointee(queues),
            delivery: OnceLock::new(),
            changing: tokio::sync::Mutex::new(()),
            mesh: OnceLock::new(),
            inboxes: inbox::Inboxes::new(node),
        })
    }

    /// Reaches the queues and subscribers of other nodes through `mesh` from now on.
    pub(crate) fn join_mesh(&self, mesh: Arc<MeshQueues>) {
        let _ = self.mesh.set(mesh);
    }

    /// The other nodes' queues and subscribers, when this node is part of a mesh.
    pub(crate) fn mesh(&self) -> Option<&Arc<MeshQueues>> {
        self.mesh.get()
    }

    /// Appends a message from `sender` to `queue`, on this node or on the peer that declares
    /// it; resolves with its id once it is on disk there, or fails within `budget`.
    pub(crate) async fn send(
        &self,
        queue: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
        budget: std::time::Duration,
    ) -> Result<String, SendError> {
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
    /// peer's `Send` frame); resolves with its id once it is on disk.
    pub(crate) async fn send_here(
        &self,
        queue: &str,
        sender: &str,
        trace_context: Option<String>,
        outgoing: Outgoing,
    ) -> Result<String, SendError> {
        let queues = self.queues.load();
        let Some(target) = queues.get(queue).cloned() else {
            let mut known: Vec<&str> = queues.keys().map(String::as_str).collect();
            known.sort_unstable();
            let mesh = if self.mesh.get().is_some() {
                " nor does a node of the mesh that is up;"
            } else {
                ";"
            };
            return Err(SendError::UnknownQueue(format!(
                "this node has no queue named `{queue}` (it has: {}){mesh} declare it with \
                 [[queue]] in a manifest",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        drop(queues);
        target.send(stored(sender, trace_context, outgoing)).await
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
        let started = tokio::time::Instant::now();
        let mut waiting = self.inboxes.open().map_err(RequestError::NotSent)?;
        outgoing.reply_to = Some(waiting.address.clone());
        self.send(destination, sender, trace_context, outgoing, timeout)
            .await
            .map_err(RequestError::NotSent)?;
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, waiting.reply()).await {
            Ok(Some(reply)) => Ok(reply),
            _ => Err(RequestError::Timeout(format!(
                "no reply to the request sent to `{destination}` came within {} ms",
                timeout.as_millis()
            ))),
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

    /// Makes `specs` the node's queues: new ones are opened (taking back what their files
    /// owe) and start delivering, removed ones stop taking sends, finish their deliveries in
    /// flight and close their files (what they owe stays there for when they come back), and
    /// the others take their new settings. If a new queue cannot open, nothing changes.
    pub(crate) async fn apply(&self, specs: &[QueueSpec]) -> Result<QueueChanges, QueueError> {
        let _one_at_a_time = self.changing.lock().await;
        let current = self.queues.load_full();
        let added: Vec<QueueSpec> = specs
            .iter()
            .filter(|spec| !current.contains_key(&spec.name))
            .cloned()
            .collect();
        let (dir, storage) = (self.dir.clone(), self.storage.clone());
        let opened = tokio::task::spawn_blocking(move || {
            added
                .iter()
                .map(|spec| open_queue(&storage, &dir, spec).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;

        let mut changes = Vec::new();
        let mut next = HashMap::new();
        for spec in specs {
            if let Some(queue) = current.get(&spec.name) {
                if *queue.spec() != *spec {
                    queue.reconfigure(spec.clone());
                    changes.push(format!("queue `{}`: settings changed", spec.name));
                }
                next.insert(spec.name.clone(), queue.clone());
            }
        }
        for queue in opened {
            changes.push(format!("queue `{}` added", queue.name));
            if let Some((subscribers, policies)) = self.delivery.get() {
                queue.start(subscribers.clone(), policies.clone());
            }
            next.insert(queue.name.clone(), queue);
        }
        let removed: Vec<Arc<Queue>> = current
            .iter()
            .filter(|(name, _)| !next.contains_key(*name))
            .map(|(_, queue)| queue.clone())
            .collect();
        self.queues.store(Arc::new(next));
        for queue in removed {
            queue.stop().await;
            changes.push(format!(
                "queue `{}` removed (what it owes stays in its files)",
                queue.name
            ));
        }
        changes.sort();
        Ok(changes)
    }

    /// Sends queue `name`'s dead letters again; returns how many.
    pub(crate) async fn redrive(&self, name: &str) -> Result<usize, QueueError> {
        let queues = self.queues.load_full();
        match queues.get(name) {
            Some(queue) => queue.redrive().await,
            None => {
                let mut known: Vec<&str> = queues.keys().map(String::as_str).collect();
                known.sort_unstable();
                Err(QueueError::Unknown {
                    name: name.to_owned(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                })
            }
        }
    }

    /// What is wrong with the queues now, one line each: a log that cannot be written (sends
    /// answer `unavailable` until a write succeeds again), a full dead-letter file.
    pub(crate) fn problems(&self) -> Vec<String> {
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
        let mut names: Vec<String> = self.queues.load().keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn views(&self) -> Vec<QueueView> {
        let mut views: Vec<QueueView> = self.queues.load().values().map(|q| q.view()).collect();
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
    ) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(Broker::send(
            self,
            queue,
            sender,
            trace_context,
            message,
            budget,
        ))
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

fn open_queue(
    storage: &Arc<dyn log::Storage>,
    dir: &Path,
    spec: &QueueSpec,
) -> Result<Queue, MessagingError> {
    Queue::open(storage, dir, spec.clone()).map_err(|cause| MessagingError {
        queue: spec.name.clone(),
        cause,
    })
}

/// A message from `sender` as a queue stores it (its queue numbers it and gives it its id).
fn stored(sender: &str, trace_context: Option<String>, outgoing: Outgoing) -> StoredMessage {
    StoredMessage {
        seq: 0,
        id: String::new(),
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
