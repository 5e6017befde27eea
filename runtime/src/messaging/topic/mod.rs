//! One queue or topic: its log, what it keeps, its subscriptions (what each owes, in memory,
//! mirrored by the log), and the dispatcher that hands messages to each subscription's
//! service, at most `concurrency` at a time per subscription.
//!
//! A queue and a topic are one thing here. A topic keeps its messages for as long as its
//! retention says and has a subscription per subscribing service, each with its own cursor;
//! a queue is a topic with one subscription whose messages go once it is done with them
//! (acknowledged or dead-lettered), bounded by `max_depth` and `max_bytes` instead of a
//! retention. Their log records differ only in that a topic's name the subscription
//! ([`named`]).
//!
//! A delivery that the subscriber acknowledges is done. One that fails (the guest returned
//! an error, trapped, ran out of time or memory) counts an attempt, and the policies bound to
//! the queue or topic decide: redeliver after a pause, or dead-letter. Without policies the
//! subscription's own rule applies (`redeliver_ms` doubling per attempt, capped at
//! [`MAX_BACKOFF`]); either way a message is dead-lettered once it has failed `max_attempts`
//! times. A subscriber that cannot take a message right now (all instances busy, or not
//! running on any node) does not count an attempt: the message waits and is offered again.

mod ledger;
mod retained;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, field};

use super::log::{self, DeadLetter, Record, Recovered, StoredMessage, Writer};
use super::{Delivered, MessagingError, QueueError, SendError, Subscribers};
use crate::manifest::{QueueSpec, Retention, StartAt, SubscriptionSpec, TopicSpec};
use crate::policy::{self, DeliveryVerdict, Policies};
use crate::telemetry::TraceContext;
use ledger::{Delivery, Ledger};
pub(in crate::messaging) use ledger::{MAX_BACKOFF, after_failure};
use retained::Retained;

/// Resolves once records sent to the writer are on disk.
type LogSync = crate::util::BoxFuture<'static, Result<(), log::LogError>>;

/// The longest reason or error text a dead letter keeps.
const MAX_REASON_BYTES: usize = 4096;
/// How long shutdown waits for deliveries in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Dead letters kept in memory for the admin API (the file keeps all of them).
const RECENT_DEAD_LETTERS: usize = 20;
/// The bounds of a log segment's size: an eighth of what the queue or topic holds at most,
/// so retention drops whole segments of about that size.
const MIN_SEGMENT_BYTES: usize = 64 * 1024;
const MAX_SEGMENT_BYTES: usize = 64 * 1024 * 1024;
/// The header a topic's dead letter names its subscription with.
pub(in crate::messaging) const DEAD_FOR_HEADER: &str = "x-switchyard-subscriber";
/// The most messages one `read` returns, and the bytes of their bodies.
pub(crate) const MAX_READ_MESSAGES: usize = 1000;
pub(crate) const MAX_READ_BYTES: usize = 8 * 1024 * 1024;

/// A queue or a topic, as the broker runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSpec {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) max_causation_depth: u32,
    pub(crate) max_dead_bytes: usize,
    /// A queue has exactly one.
    pub(crate) subscriptions: Vec<SubscriptionSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Messages go once done; a send past these bounds is refused as `full`.
    Queue { max_depth: usize, max_bytes: usize },
    /// Messages stay for as long as the retention says.
    Topic(Retention),
}

impl From<QueueSpec> for LogSpec {
    fn from(spec: QueueSpec) -> Self {
        Self {
            kind: Kind::Queue {
                max_depth: spec.max_depth,
                max_bytes: spec.max_bytes,
            },
            max_causation_depth: spec.max_causation_depth,
            max_dead_bytes: spec.max_dead_bytes,
            subscriptions: vec![SubscriptionSpec {
                service: spec.subscriber,
                start: StartAt::Beginning,
                concurrency: spec.concurrency,
                ordered_by_key: spec.ordered_by_key,
                max_attempts: spec.max_attempts,
                redeliver_after: spec.redeliver_after,
            }],
            name: spec.name,
        }
    }
}

impl From<TopicSpec> for LogSpec {
    fn from(spec: TopicSpec) -> Self {
        Self {
            name: spec.name,
            kind: Kind::Topic(spec.retention),
            max_causation_depth: spec.max_causation_depth,
            max_dead_bytes: spec.max_dead_bytes,
            subscriptions: spec.subscriptions,
        }
    }
}

impl LogSpec {
    pub(crate) fn is_topic(&self) -> bool {
        matches!(self.kind, Kind::Topic(_))
    }

    /// The bytes of records after which its log starts a new segment.
    fn segment_bytes(&self) -> usize {
        let most = match &self.kind {
            Kind::Queue { max_bytes, .. } => *max_bytes,
            Kind::Topic(retention) => retention.max_bytes,
        };
        (most / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
    }

    /// `queue `x`` or `topic `x``, for messages.
    pub(crate) fn what(&self) -> String {
        match self.kind {
            Kind::Queue { .. } => format!("queue `{}`", self.name),
            Kind::Topic(_) => format!("topic `{}`", self.name),
        }
    }
}

/// The loop guard: why `message` is dead-lettered instead of delivered to `subscriber`, when
/// it comes at the end of a longer chain of messages (each sent while handling the one
/// before) than `log` takes.
pub(in crate::messaging) fn loop_guard(
    log: &LogSpec,
    subscriber: &str,
    message: &StoredMessage,
) -> Option<String> {
    let max_depth = log.max_causation_depth;
    let causation = crate::wire::Causation::of(&message.headers);
    if causation.depth <= max_depth {
        return None;
    }
    // A loop between services, most likely: each handler sends the next message.
    let chain = causation.path();
    tracing::warn!(queue = %log.name, %subscriber, id = %message.id, depth = causation.depth, max_causation_depth = max_depth, %chain, "loop guard: a message at the end of too long a chain of messages is dead-lettered, not delivered");
    Some(format!(
        "loop guard: this message comes at depth {} of a chain of messages, each sent while \
         handling the one before (senders: {chain}); {} takes chains of at most {max_depth} \
         (max_causation_depth)",
        causation.depth,
        log.what()
    ))
}

/// The trace a delivery of `message` continues: its sender's, or a new one.
pub(in crate::messaging) fn delivery_trace(message: &StoredMessage) -> TraceContext {
    message
        .trace_context
        .as_deref()
        .and_then(TraceContext::parse)
        .map_or_else(TraceContext::root, |sender| sender.child())
}

/// A log record of subscription `name` (`None`: a queue's only one).
fn named(name: Option<&str>, record: Record) -> Record {
    match (name, record) {
        (Some(name), Record::Failed { seq, attempts }) => Record::FailedFor {
            subscription: name.to_owned(),
            seq,
            attempts,
        },
        (Some(name), Record::Done { seq }) => Record::DoneFor {
            subscription: name.to_owned(),
            seq,
        },
        (_, record) => record,
    }
}

pub(super) struct Topic {
    pub(super) name: String,
    /// Settings a manifest edit may change while it runs.
    spec: arc_swap::ArcSwap<LogSpec>,
    /// Stops its dispatcher (the node stops, or it left the manifest).
    stop: watch::Sender<bool>,
    dispatcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    writer: Writer,
    /// Reads stored messages from the log, beside the writer.
    reader: log::Reader,
    /// Shared with the log writer, which tells it what is stored in the order it was written.
    state: Arc<std::sync::Mutex<State>>,
    /// Wakes the dispatcher: a message is ready, or a delivery slot is free.
    wake: Arc<Notify>,
    /// Set while a message that failed for good found the dead-letter file full.
    dead_full: std::sync::Mutex<Option<String>>,
    /// Messages stored since this node started.
    sent: AtomicU64,
}

/// What the log describes, kept under one lock so the log's order is the state's.
#[derive(Default)]
struct State {
    /// The offset the next message gets.
    next_seq: u64,
    /// The first offset not yet known to be on disk: readers see the messages before it.
    unstored_from: u64,
    /// A topic's kept messages (a queue keeps what its subscription owes).
    retained: Retained,
    subscriptions: Vec<Subscription>,
    /// Bytes of records sent to the log's segment since it started.
    written: usize,
    /// Bytes after which the log starts a new segment (the model tests rotate far more often).
    rotate_after: usize,
    /// Messages that grew too old since the sealed segments were last pruned.
    expired_unpruned: usize,
    recent_dead: VecDeque<DeadLetter>,
    /// What the dead-letter file holds: `max_dead_bytes` bounds it.
    dead_bytes: u64,
    /// Dead letters in the file, from earlier runs too.
    dead_total: u64,
}

struct Subscription {
    /// Its name in the log: the service, for a topic; `None` for a queue's.
    name: Option<String>,
    spec: SubscriptionSpec,
    ledger: Ledger,
    stats: Stats,
    /// Why the last delivery could not be made (the subscriber busy, or running nowhere),
    /// until one is made again.
    waiting_for: Option<String>,
}

#[derive(Default, Clone, Copy)]
struct Stats {
    delivered: u64,
    redelivered: u64,
    dead_lettered: u64,
    /// Messages the loop guard dead-lettered.
    loops_stopped: u64,
    /// Messages the topic's retention dropped before this subscription was done with them.
    expired: u64,
}

/// A queue as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct QueueView {
    pub(crate) name: String,
    pub(crate) subscriber: String,
    /// Messages owed: waiting, paused before a redelivery, or being delivered.
    pub(crate) depth: usize,
    pub(crate) in_flight: usize,
    pub(crate) max_depth: usize,
    /// Since this node started.
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) redelivered: u64,
    pub(crate) dead_lettered: u64,
    /// Of those, stopped by the loop guard (`max_causation_depth`).
    pub(crate) loops_stopped: u64,
    /// All dead letters in the dead-letter file.
    pub(crate) dead_letters_total: u64,
    /// Why the last delivery could not be made (the subscriber busy, or running on no node
    /// this node knows), until one is made again; `null` otherwise.
    pub(crate) waiting_for: Option<String>,
    pub(crate) recent_dead_letters: Vec<DeadLetterView>,
}

/// A topic as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct TopicView {
    pub(crate) name: String,
    /// The oldest offset it keeps (`null`: it keeps none).
    pub(crate) first_offset: Option<u64>,
    /// The offset the next message gets.
    pub(crate) next_offset: u64,
    /// Messages and bytes it keeps.
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    pub(crate) retain_ms: Option<u64>,
    pub(crate) retain_bytes: usize,
    pub(crate) compact: bool,
    /// Messages published since this node started.
    pub(crate) published: u64,
    pub(crate) dead_letters_total: u64,
    pub(crate) subscriptions: Vec<SubscriptionView>,
    pub(crate) recent_dead_letters: Vec<DeadLetterView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SubscriptionView {
    pub(crate) service: String,
    /// The first offset it still owes (or the next to come, when it owes none).
    pub(crate) cursor: u64,
    /// Messages it owes: waiting, paused before a redelivery, or being delivered.
    pub(crate) lag: usize,
    pub(crate) in_flight: usize,
    /// Since this node started.
    pub(crate) delivered: u64,
    pub(crate) redelivered: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) loops_stopped: u64,
    /// Dropped by retention before it was done with them.
    pub(crate) expired: u64,
    pub(crate) waiting_for: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DeadLetterView {
    pub(crate) id: String,
    /// The subscription that gave up on it (for a topic).
    pub(crate) subscriber: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) reason: String,
    pub(crate) last_error: String,
    pub(crate) sender: String,
    /// The first 256 bytes of the body, as text.
    pub(crate) body_preview: String,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(dead: &DeadLetter) -> Self {
        Self {
            id: dead.message.id.clone(),
            subscriber: dead
                .message
                .headers
                .iter()
                .find(|(name, _)| name == DEAD_FOR_HEADER)
                .map(|(_, service)| service.clone()),
            attempts: dead.attempts,
            reason: dead.reason.clone(),
            last_error: dead.last_error.clone(),
            sender: dead.message.sender.clone(),
            body_preview: String::from_utf8_lossy(
                &dead.message.body[..dead.message.body.len().min(256)],
            )
            .into_owned(),
        }
    }
}

/// Messages with their bodies, in order.
type Kept = Vec<Arc<StoredMessage>>;

/// A message stored by a send or publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) id: String,
    pub(crate) offset: u64,
}

impl State {
    /// What the log said, for `spec`, at `now_ms`; with the records that place subscriptions
    /// the log does not know yet (they start where their spec says).
    /// `load` reads the bodies of stored messages from the log.
    fn recover(
        spec: &LogSpec,
        mut recovered: Recovered,
        now_ms: u64,
        load: &dyn Fn(&[u64]) -> Kept,
    ) -> (Self, Vec<Record>) {
        let mut state = Self {
            next_seq: recovered.next_seq,
            unstored_from: recovered.next_seq,
            rotate_after: spec.segment_bytes(),
            dead_bytes: recovered.dead_bytes,
            dead_total: recovered.dead.len() as u64,
            ..Self::default()
        };
        let skip = recovered.dead.len().saturating_sub(RECENT_DEAD_LETTERS);
        state.recent_dead = std::mem::take(&mut recovered.dead)
            .into_iter()
            .skip(skip)
            .collect();
        let mut placed = Vec::new();
        match &spec.kind {
            Kind::Queue { .. } => {
                let owed = recovered
                    .owed_by(None)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(message, attempts)| (message.clone(), attempts));
                if let Some(first) = spec.subscriptions.first() {
                    state.subscriptions.push(Subscription::new(
                        None,
                        first.clone(),
                        Ledger::recover(owed, recovered.next_seq),
                    ));
                }
            }
            Kind::Topic(retention) => {
                // A queue's files opened as a topic: what the queue was done with is gone.
                let settled = |seq: u64| {
                    recovered
                        .cursors
                        .get(&None)
                        .is_some_and(|queue| !queue.owes(seq))
                };
                let owed = &recovered.messages;
                // What it keeps, in order (compaction by key needs it): the owed messages with
                // their bodies, the others without.
                let mut kept: Vec<u64> = owed
                    .range(recovered.kept_from..)
                    .map(|(seq, _)| *seq)
                    .chain(recovered.kept.keys().copied())
                    .filter(|seq| !settled(*seq))
                    .collect();
                kept.sort_unstable();
                let mut expired = std::collections::HashSet::new();
                for seq in kept {
                    let dropped = match (owed.get(&seq), recovered.kept.get(&seq)) {
                        (Some(message), _) => {
                            state.retained.keep(message.clone(), retention, now_ms)
                        }
                        (None, Some(bodiless)) => state.retained.keep_stored(
                            &bodiless.message,
                            bodiless.body_len,
                            retention,
                            now_ms,
                        ),
                        (None, None) => continue,
                    };
                    expired.extend(dropped.expired);
                }
                // All of it is on disk: readers read it from there.
                state.retained.stored(0..state.next_seq);
                for sub in &spec.subscriptions {
                    let ledger = match recovered.owed_by(Some(&sub.service)) {
                        Some(owes) => {
                            // A subscription owes what it owed, also what the topic no longer
                            // keeps (superseded by a later message of its key), but not what
                            // retention dropped for everyone.
                            let owes = owes
                                .into_iter()
                                .filter(|(message, _)| !expired.contains(&message.seq))
                                .map(|(message, attempts)| (message.clone(), attempts));
                            Ledger::recover(owes, state.next_seq)
                        }
                        None => {
                            let (ledger, record) = state.place(&sub.service, sub.start, load);
                            placed.push(record);
                            ledger
                        }
                    };
                    state.subscriptions.push(Subscription::new(
                        Some(sub.service.clone()),
                        sub.clone(),
                        ledger,
                    ));
                }
            }
        }
        (state, placed)
    }

    /// The offset `start` names now.
    fn offset_of(&self, start: StartAt) -> u64 {
        let first = self.retained.first().unwrap_or(self.next_seq);
        match start {
            StartAt::Latest => self.next_seq,
            StartAt::Beginning => first,
            StartAt::Offset(offset) => offset.max(first),
            StartAt::Time(at_ms) => self.retained.first_since(at_ms).unwrap_or(self.next_seq),
        }
    }

    /// A ledger for subscription `service` of this topic owing the kept messages from
    /// `start` on, and the record that says so; `load` reads the bodies of stored ones.
    fn place(
        &self,
        service: &str,
        start: StartAt,
        load: &dyn Fn(&[u64]) -> Kept,
    ) -> (Ledger, Record) {
        let from = self.offset_of(start);
        let (stored, unstored): (Vec<_>, Vec<_>) = self
            .kept_from(from, load)
            .into_iter()
            .partition(|message| message.seq < self.unstored_from);
        let mut ledger = Ledger::recover(
            stored.into_iter().map(|message| (message, 0)),
            self.unstored_from.max(from),
        );
        // Messages sent but not yet on disk are owed too, ready once stored.
        for message in unstored {
            ledger.owe(message);
        }
        let record = Record::StartAt {
            subscription: service.to_owned(),
            seq: from,
        };
        (ledger, record)
    }

    /// The kept messages from `from` on, in order, with their bodies: from memory while not
    /// yet on disk, read by `load` from the log otherwise.
    fn kept_from(&self, from: u64, load: &dyn Fn(&[u64]) -> Kept) -> Kept {
        let (on_disk, in_memory) = self.kept_split(from);
        // Not yet stored comes after everything stored.
        let mut messages = load(&on_disk);
        messages.extend(in_memory);
        messages
    }

    /// The kept messages from `from` on: the offsets of those on disk, and those not yet.
    fn kept_split(&self, from: u64) -> (Vec<u64>, Kept) {
        let mut on_disk = Vec::new();
        let mut in_memory = Vec::new();
        for kept in self.retained.from(from) {
            match &kept.message {
                Some(message) => in_memory.push(message.clone()),
                None => on_disk.push(kept.seq),
            }
        }
        (on_disk, in_memory)
    }

    fn subscription(&mut self, name: Option<&str>) -> Option<&mut Subscription> {
        self.subscriptions
            .iter_mut()
            .find(|sub| sub.name.as_deref() == name)
    }

    /// The offsets of every message some subscription owes or the topic keeps.
    fn live(&self) -> Vec<std::ops::Range<u64>> {
        let mut seqs: Vec<u64> = self.retained.from(0).map(|message| message.seq).collect();
        for sub in &self.subscriptions {
            seqs.extend(sub.ledger.owed_messages().map(|(message, _)| message.seq));
        }
        log::ranges(seqs)
    }

    /// Once a segment's worth of records is written: a new segment, starting with a
    /// checkpoint of where every subscription is, and what the sealed ones must keep.
    fn rotation(&mut self) -> Option<log::Rotation> {
        if self.written < self.rotate_after {
            return None;
        }
        self.written = 0;
        self.expired_unpruned = 0;
        Some(log::Rotation {
            checkpoint: Some(self.checkpoint().encode()),
            live: self.live(),
        })
    }

    /// Where every subscription is: the first offset it owes, the offsets after it that it
    /// does not owe (the gaps between the ones it does), and its failed attempts.
    fn checkpoint(&self) -> log::Checkpoint<'_> {
        let owes = self
            .subscriptions
            .iter()
            .map(|sub| {
                let start = sub.ledger.cursor();
                let mut done = Vec::new();
                let mut attempts = Vec::new();
                let mut from = start;
                for (message, tried) in sub.ledger.owed_messages() {
                    if message.seq > from {
                        done.push(from..message.seq);
                    }
                    from = from.max(message.seq + 1);
                    if tried > 0 {
                        attempts.push((message.seq, tried));
                    }
                }
                if from < self.next_seq {
                    done.push(from..self.next_seq);
                }
                log::SubscriptionPlace {
                    name: sub.name.as_deref(),
                    start,
                    done,
                    attempts,
                }
            })
            .collect();
        log::Checkpoint {
            next_seq: self.next_seq,
            kept_from: self.retained.first().unwrap_or(self.next_seq),
            owes,
        }
    }

    /// Drops what the retention of a topic says must go at `now_ms` from what it keeps and
    /// from every subscription (they lose it: counted as expired).
    fn expire(&mut self, expired: &[u64]) {
        for sub in &mut self.subscriptions {
            for &seq in expired {
                if sub.ledger.owes(seq) {
                    sub.stats.expired += 1;
                    sub.ledger.forget(seq..seq + 1);
                }
            }
        }
    }

    fn note_dead(&mut self, dead: DeadLetter) {
        if self.recent_dead.len() == RECENT_DEAD_LETTERS {
            self.recent_dead.pop_front();
        }
        self.recent_dead.push_back(dead);
        self.dead_total += 1;
    }
}

impl Subscription {
    fn new(name: Option<String>, spec: SubscriptionSpec, ledger: Ledger) -> Self {
        Self {
            name,
            spec,
            ledger,
            stats: Stats::default(),
            waiting_for: None,
        }
    }

    fn view(&self) -> SubscriptionView {
        SubscriptionView {
            service: self.spec.service.clone(),
            cursor: self.ledger.cursor(),
            lag: self.ledger.owed(),
            in_flight: self.ledger.in_flight(),
            delivered: self.stats.delivered,
            redelivered: self.stats.redelivered,
            dead_lettered: self.stats.dead_lettered,
            loops_stopped: self.stats.loops_stopped,
            expired: self.stats.expired,
            waiting_for: self.waiting_for.clone(),
        }
    }
}

impl Topic {
    /// Opens its log under `dir` and takes back what it keeps and owes.
    pub(super) fn open(
        storage: &Arc<dyn log::Storage>,
        dir: &std::path::Path,
        spec: LogSpec,
    ) -> Result<Self, log::LogError> {
        let (writer, recovered) = log::open(storage, dir, &spec.name)?;
        if !spec.is_topic() && recovered.cursors.keys().any(Option::is_some) {
            // The files do not say what they were; a named subscription's record says a topic.
            return Err(log::LogError::HoldsATopic {
                path: dir.join(&spec.name),
            });
        }
        let reader = writer.reader();
        let load = |seqs: &[u64]| load_from(&reader, &spec.name, seqs);
        let (state, placed) = State::recover(&spec, recovered, super::now_ms(), &load);
        let owed: usize = state.subscriptions.iter().map(|s| s.ledger.owed()).sum();
        if owed > 0 {
            tracing::info!(queue = %spec.name, owed, "recovered messages from the log");
        }
        if !placed.is_empty() {
            let mut bytes = Vec::new();
            for record in &placed {
                let _ = log::encode(record, &mut bytes);
            }
            // Queued for the writer now; a crash before it is on disk places them again.
            drop(writer.append(Vec::new(), bytes));
        }
        let (state, wake) = (
            Arc::new(std::sync::Mutex::new(state)),
            Arc::new(Notify::new()),
        );
        writer.on_stored(stored_hook(state.clone(), wake.clone()));
        Ok(Self {
            name: spec.name.clone(),
            spec: arc_swap::ArcSwap::from_pointee(spec),
            stop: watch::channel(false).0,
            dispatcher: std::sync::Mutex::new(None),
            reader: writer.reader(),
            writer,
            state,
            wake,
            dead_full: std::sync::Mutex::new(None),
            sent: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Whether it is a topic (not a queue).
    pub(super) fn is_topic(&self) -> bool {
        self.spec.load().is_topic()
    }

    /// Appends a message; resolves once it is on disk, with its id and offset.
    pub(super) async fn send(&self, message: StoredMessage) -> Result<Stored, SendError> {
        let fixed_id = (!message.id.is_empty()).then(|| message.id.clone());
        let (synced, seqs) = {
            let mut state = self.lock();
            let spec = self.spec.load();
            let weight = ledger::weight(&message);
            match &spec.kind {
                Kind::Queue {
                    max_depth,
                    max_bytes,
                } => {
                    let (owed, owed_bytes) = state
                        .subscriptions
                        .first()
                        .map_or((0, 0), |sub| (sub.ledger.owed(), sub.ledger.owed_bytes()));
                    let subscriber = spec
                        .subscriptions
                        .first()
                        .map_or("", |sub| sub.service.as_str());
                    if owed >= *max_depth {
                        return Err(SendError::Full(format!(
                            "queue `{}` holds {owed} messages, its max_depth; its subscriber \
                             `{subscriber}` is behind (retry later, or raise max_depth)",
                            self.name
                        )));
                    }
                    if owed_bytes + weight > *max_bytes {
                        return Err(SendError::Full(format!(
                            "queue `{}` holds {owed_bytes} bytes of messages, and this one \
                             ({weight} bytes) would pass its max_bytes_mb ({}); its subscriber \
                             `{subscriber}` is behind (retry later, or raise max_bytes_mb)",
                            self.name,
                            max_bytes / (1024 * 1024),
                        )));
                    }
                }
                Kind::Topic(retention) => {
                    if weight > retention.max_bytes {
                        return Err(SendError::TooLarge(format!(
                            "a message of {weight} bytes is larger than all that topic `{}` \
                             keeps (retain_mb = {}); raise retain_mb or send a smaller message",
                            self.name,
                            retention.max_bytes / (1024 * 1024)
                        )));
                    }
                }
            }
            self.enqueue_locked(&mut state, vec![message])
                .map_err(|err| SendError::TooLarge(err.to_string()))?
        };
        self.sent.fetch_add(1, Ordering::Relaxed);
        synced.await.map_err(|err| {
            SendError::Unavailable(format!(
                "{} could not store the message: {err}",
                self.spec.load().what()
            ))
        })?;
        Ok(Stored {
            id: fixed_id.unwrap_or_else(|| self.id(seqs.start)),
            offset: seqs.start,
        })
    }

    /// The id of the message at `seq`.
    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.name)
    }

    /// Numbers `messages` from the next offset, gives them their ids, sends their records to
    /// the writer, keeps them (a topic) and owes them to every subscription; call with the
    /// state locked, so the log has records in the order of the state's changes.
    fn enqueue_locked(
        &self,
        state: &mut State,
        messages: Vec<StoredMessage>,
    ) -> Result<(LogSync, std::ops::Range<u64>), log::LogError> {
        let spec = self.spec.load();
        let mut bytes = Vec::new();
        let mut numbered = Vec::with_capacity(messages.len());
        for (seq, mut message) in (state.next_seq..).zip(messages) {
            message.seq = seq;
            if message.id.is_empty() {
                message.id = self.id(seq);
            }
            log::encode_sent(&message, &mut bytes)?;
            numbered.push(Arc::new(message));
        }
        let seqs = state.next_seq..state.next_seq + numbered.len() as u64;
        state.next_seq = seqs.end;
        let now_ms = super::now_ms();
        let mut early = false;
        for message in numbered {
            // A requester waits for the reply, not for the disk.
            let waited_for = message
                .reply_to
                .as_deref()
                .is_some_and(|to| super::inbox::parse(to).is_some());
            early |= waited_for;
            for sub in &mut state.subscriptions {
                if waited_for {
                    sub.ledger.owe_now(message.clone());
                } else {
                    sub.ledger.owe(message.clone());
                }
            }
            if let Kind::Topic(retention) = &spec.kind {
                let dropped = state.retained.keep(message, retention, now_ms);
                state.expire(&dropped.expired);
            }
        }
        // The writer tells `stored_hook` whether they are on disk.
        let written = bytes.len();
        let synced = self.writer.append_sent(bytes, seqs.clone());
        self.wrote_locked(state, written);
        if early {
            self.wake.notify_one();
        }
        Ok((Box::pin(synced), seqs))
    }

    /// Up to `max` stored messages from offset `from` on (and at most [`MAX_READ_BYTES`] of
    /// bodies, but always one if there is one), and the offset after the last; for a queue,
    /// the messages it still owes. A topic's are read from its log.
    pub(super) async fn read(
        &self,
        from: u64,
        max: usize,
    ) -> Result<(Vec<StoredMessage>, u64), log::LogError> {
        let max = max.clamp(1, MAX_READ_MESSAGES);
        let (wanted, next) = {
            let state = self.lock();
            let mut next = from.max(state.retained.first().unwrap_or(state.next_seq));
            let mut wanted = Vec::new();
            let mut bytes = 0;
            match self.spec.load().kind {
                Kind::Queue { .. } => {
                    let owed = state
                        .subscriptions
                        .iter()
                        .take(1)
                        .flat_map(|sub| sub.ledger.owed_messages().map(|(m, _)| m))
                        .filter(|m| m.seq >= from && m.seq < state.unstored_from);
                    let mut messages = Vec::new();
                    for message in owed.take(max) {
                        bytes += message.body.len();
                        if bytes > MAX_READ_BYTES && !messages.is_empty() {
                            break;
                        }
                        next = message.seq + 1;
                        messages.push(StoredMessage::clone(message));
                    }
                    return Ok((messages, next.min(state.unstored_from)));
                }
                Kind::Topic(_) => {
                    let kept = state
                        .retained
                        .from(from)
                        .take_while(|kept| kept.seq < state.unstored_from);
                    for kept in kept.take(max) {
                        bytes += kept.weight();
                        if bytes > MAX_READ_BYTES && !wanted.is_empty() {
                            break;
                        }
                        next = kept.seq + 1;
                        wanted.push(kept.seq);
                    }
                }
            }
            (wanted, next.min(state.unstored_from))
        };
        Ok((self.read_stored(wanted).await?, next))
    }

    /// The stored messages `seqs` (ascending) that the log still holds, read off the runtime's
    /// threads.
    async fn read_stored(&self, seqs: Vec<u64>) -> Result<Vec<StoredMessage>, log::LogError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let reader = self.reader.clone();
        let read = tokio::task::spawn_blocking(move || reader.read(&seqs)).await;
        read.map_err(std::io::Error::other)
            .and_then(|read| read)
            .map_err(|cause| log::LogError::Io {
                path: format!("topic `{}`", self.name).into(),
                cause,
            })
    }

    /// The bodies of the stored messages `seqs` (ascending), read from the log.
    fn load(&self, seqs: &[u64]) -> Kept {
        load_from(&self.reader, &self.name, seqs)
    }

    /// Makes subscription `service` owe exactly the kept messages from `from` on (a replay,
    /// or a skip forward); returns the offset it starts from.
    pub(super) async fn rewind(&self, service: &str, from: StartAt) -> Result<u64, QueueError> {
        if !self.is_topic() {
            return Err(QueueError::NotATopic(self.name.clone()));
        }
        let (offset, (on_disk, in_memory)) = {
            let mut state = self.lock();
            if state.subscription(Some(service)).is_none() {
                return Err(self.unknown_subscription(service));
            }
            let offset = state.offset_of(from);
            (offset, state.kept_split(offset))
        };
        // Read from the log without the lock; what arrives meanwhile is owed already.
        let stored = self
            .read_stored(on_disk)
            .await
            .map_err(|cause| MessagingError::log(self.name.clone(), cause))?;
        let mut messages: Kept = stored.into_iter().map(Arc::new).collect();
        messages.extend(in_memory);
        let (synced, offset) = {
            let mut state = self.lock();
            let Some(sub) = state.subscription(Some(service)) else {
                return Err(self.unknown_subscription(service));
            };
            sub.ledger.rewind(offset, messages);
            let record = Record::StartAt {
                subscription: service.to_owned(),
                seq: offset,
            };
            (self.write_locked(&mut state, Vec::new(), &record), offset)
        };
        self.wake.notify_one();
        synced
            .await
            .map_err(|cause| MessagingError::log(self.name.clone(), cause))?;
        tracing::info!(topic = %self.name, subscriber = service, offset, "subscription rewound");
        Ok(offset)
    }

    fn unknown_subscription(&self, service: &str) -> QueueError {
        let known: Vec<String> = self
            .spec
            .load()
            .subscriptions
            .iter()
            .map(|s| s.service.clone())
            .collect();
        QueueError::UnknownSubscription {
            topic: self.name.clone(),
            service: service.to_owned(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        }
    }

    /// Starts delivering (once; later calls do nothing).
    pub(super) fn start(
        self: &Arc<Self>,
        subscribers: Arc<dyn Subscribers>,
        policies: Arc<Policies>,
    ) {
        let mut dispatcher = self
            .dispatcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if dispatcher.is_none() {
            let stop = self.stop.subscribe();
            *dispatcher = Some(tokio::spawn(self.clone().dispatch(
                subscribers,
                policies,
                stop,
            )));
        }
    }

    /// Stops delivering, lets deliveries in flight end (a while) and closes the log; what is
    /// owed stays in it.
    pub(super) async fn stop(&self) {
        self.stop.send_replace(true);
        let running = self
            .dispatcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match running {
            Some(running) => {
                let _ = running.await;
            }
            None => self.writer.close().await,
        }
    }

    /// Stops delivering at once, without draining (the node was dropped, not shut down).
    pub(super) fn abort(&self) {
        let running = self
            .dispatcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            running.abort();
        }
    }

    /// Takes new settings (a manifest edit); deliveries from now on follow them. A topic's
    /// new subscription starts where its spec says; a removed one is forgotten (its cursor
    /// goes at the log's next rotation).
    pub(super) fn reconfigure(&self, spec: LogSpec) {
        let placed = {
            let mut state = self.lock();
            let mut placed = Vec::new();
            if spec.is_topic() {
                state.subscriptions.retain(|sub| {
                    spec.subscriptions
                        .iter()
                        .any(|s| Some(s.service.as_str()) == sub.name.as_deref())
                });
                for sub_spec in &spec.subscriptions {
                    match state.subscription(Some(&sub_spec.service)) {
                        Some(sub) => sub.spec = sub_spec.clone(),
                        None => {
                            let load = |seqs: &[u64]| self.load(seqs);
                            let (ledger, record) =
                                state.place(&sub_spec.service, sub_spec.start, &load);
                            placed.push(self.write_locked(&mut state, Vec::new(), &record));
                            state.subscriptions.push(Subscription::new(
                                Some(sub_spec.service.clone()),
                                sub_spec.clone(),
                                ledger,
                            ));
                        }
                    }
                }
            } else if let (Some(sub), Some(sub_spec)) =
                (state.subscriptions.first_mut(), spec.subscriptions.first())
            {
                sub.spec = sub_spec.clone();
            }
            state.rotate_after = spec.segment_bytes();
            self.spec.store(Arc::new(spec));
            placed
        };
        // Waited for by nobody: a crash before they are on disk places them again.
        drop(placed);
        self.wake.notify_one();
    }

    /// The settings it runs with.
    pub(super) fn spec(&self) -> Arc<LogSpec> {
        self.spec.load_full()
    }

    /// Sends every dead letter of a queue again as a new message (attempts from zero, header
    /// `x-switchyard-redriven-from` naming the old id) and removes them from the dead-letter
    /// file once the new messages are on disk. Returns how many. A crash between the two steps
    /// redrives them twice, never loses one. A topic keeps its messages: rewind the
    /// subscription instead.
    pub(super) async fn redrive(&self) -> Result<usize, QueueError> {
        if self.is_topic() {
            return Err(QueueError::NotAQueue(self.name.clone()));
        }
        let failed = |cause| MessagingError::log(self.name.clone(), cause);
        let (letters, read) = self.writer.read_dead().await.map_err(failed)?;
        if letters.is_empty() {
            return Ok(0);
        }
        let resent = letters
            .iter()
            .map(|letter| {
                let mut message = letter.message.clone();
                // A redriven message is a new message (with a new id) that names the old one.
                message.id.clear();
                message
                    .headers
                    .retain(|(name, _)| name != "x-switchyard-redriven-from");
                message.headers.push((
                    "x-switchyard-redriven-from".into(),
                    letter.message.id.clone(),
                ));
                message
            })
            .collect();
        let (synced, _) = self
            .enqueue_locked(&mut self.lock(), resent)
            .map_err(failed)?;
        synced.await.map_err(failed)?;
        let redriven = letters.len();
        self.writer
            .drop_dead(read)
            .await
            .map_err(|cause| QueueError::DeadLettersKept {
                queue: self.name.clone(),
                redriven,
                cause,
            })?;
        let ids: Vec<&str> = letters.iter().map(|l| l.message.id.as_str()).collect();
        {
            let mut state = self.lock();
            state.dead_bytes = state.dead_bytes.saturating_sub(read.len());
            state
                .recent_dead
                .retain(|dead| !ids.contains(&dead.message.id.as_str()));
            state.dead_total = state.dead_total.saturating_sub(redriven as u64);
        }
        self.set_dead_full(None);
        tracing::info!(queue = %self.name, redriven, "dead letters sent again");
        Ok(redriven)
    }

    /// Delivers until `shutdown`, then waits (a while) for deliveries in flight. What is not
    /// delivered stays in the log for the next start.
    async fn dispatch(
        self: Arc<Self>,
        subscribers: Arc<dyn Subscribers>,
        policies: Arc<Policies>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut deliveries = JoinSet::new();
        loop {
            let now = Instant::now();
            let (due, expiry) = {
                let mut state = self.lock();
                let mut due: Option<Instant> = None;
                for sub in &mut state.subscriptions {
                    let (concurrency, ordered_by_key) =
                        (sub.spec.concurrency as usize, sub.spec.ordered_by_key);
                    while let Some(delivery) = sub.ledger.next(now, concurrency, ordered_by_key) {
                        let topic = self.clone();
                        let subscribers = subscribers.clone();
                        let policies = policies.clone();
                        let (name, spec) = (sub.name.clone(), sub.spec.clone());
                        deliveries.spawn(async move {
                            topic
                                .deliver(name, spec, delivery, &*subscribers, &policies)
                                .await;
                        });
                    }
                    if let Some(next) = sub.ledger.next_due() {
                        due = Some(due.map_or(next, |due| due.min(next)));
                    }
                }
                (due, self.expire_due(&mut state))
            };
            let moment = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            let expiring = async {
                match expiry {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = moment => {}
                () = expiring => {}
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
                _ = shutdown.changed() => break,
            }
        }
        let drained = tokio::time::timeout(DRAIN_GRACE, async {
            while deliveries.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(queue = %self.name, "deliveries still running at shutdown were cut off; they will be delivered again");
        }
        self.writer.close().await;
    }

    /// Drops a topic's messages that grew too old, and says how long until the next one does.
    fn expire_due(&self, state: &mut State) -> Option<Duration> {
        let spec = self.spec.load();
        // Size is kept as messages arrive; only age needs the clock.
        let Kind::Topic(
            retention @ Retention {
                max_age: Some(_), ..
            },
        ) = &spec.kind
        else {
            return None;
        };
        let now_ms = super::now_ms();
        let expired = state.retained.trim(retention, now_ms);
        if !expired.is_empty() {
            tracing::debug!(topic = %self.name, expired = expired.len(), "retention dropped messages");
            state.expire(&expired);
            // Segments of nothing but expired messages go before the next rotation, once
            // about a segment's worth (an eighth of what is kept) has expired: `live` walks
            // every kept offset, too much for each expiry.
            state.expired_unpruned += expired.len();
            if state.expired_unpruned * 8 >= state.retained.len() + state.expired_unpruned {
                state.expired_unpruned = 0;
                self.writer.rotate(log::Rotation {
                    checkpoint: None,
                    live: state.live(),
                });
            }
        }
        let next = state.retained.next_expiry(retention)?;
        // At least a few ms apart: the wall clock may lag the timer.
        Some(Duration::from_millis(next.saturating_sub(now_ms).max(5)))
    }

    async fn deliver(
        self: &Arc<Self>,
        name: Option<String>,
        spec: SubscriptionSpec,
        delivery: Delivery,
        subscribers: &dyn Subscribers,
        policies: &Policies,
    ) {
        let Delivery {
            seq,
            message,
            attempts,
        } = delivery;
        let log_spec = self.spec.load_full();
        let subscriber = spec.service.clone();
        if let Some(reason) = loop_guard(&log_spec, &subscriber, &message) {
            self.with_subscription(name.as_deref(), |sub| sub.stats.loops_stopped += 1);
            self.dead_letter(
                name.as_deref(),
                seq,
                &message,
                attempts,
                reason,
                "not delivered".into(),
            )
            .await;
            return;
        }
        let trace = delivery_trace(&message);
        let span = tracing::info_span!(
            "delivery",
            queue = %self.name,
            id = %message.id,
            attempt = attempts + 1,
            subscriber = %subscriber,
            trace_id = %trace.trace_id(),
            outcome = field::Empty,
            duration_us = field::Empty,
        );
        let started = std::time::Instant::now();
        let outcome = subscribers
            .deliver(&subscriber, &self.name, &message, attempts + 1)
            .instrument(span.clone())
            .await;
        let duration_us = started.elapsed().as_micros() as u64;
        let label = match &outcome {
            Delivered::Acked => "acked",
            Delivered::Failed(_) => "failed",
            Delivered::NotNow(_) => "not-now",
        };
        span.record("outcome", label);
        span.record("duration_us", duration_us);
        span.in_scope(|| tracing::debug!(outcome = label, duration_us, "delivery done"));
        // Each outcome's one lock also notes why the subscriber is waited for, if it is.
        match outcome {
            Delivered::Acked => {
                self.settle(name.as_deref(), |sub| {
                    sub.waiting_for = None;
                    sub.stats.delivered += 1;
                    Some(sub.ledger.acked(seq))
                });
            }
            Delivered::NotNow(reason) => {
                tracing::debug!(queue = %self.name, %subscriber, id = %message.id, %reason, "subscriber cannot take the message now; offering it again shortly");
                self.with_subscription(name.as_deref(), |sub| {
                    sub.ledger.not_now(seq, Instant::now());
                    sub.waiting_for = Some(reason);
                });
                self.wake.notify_one();
            }
            Delivered::Failed(error) => {
                let attempts = attempts + 1;
                let chain = policies.delivery_chain(&self.name);
                // Boxed, as is a dead letter: every delivery's future is moved into its task,
                // and the state of these rare paths would make it several times larger.
                let verdict = Box::pin(policy::on_delivery_failure(
                    &chain,
                    &self.name,
                    &message.id,
                    attempts,
                ))
                .await;
                let what = match &name {
                    Some(service) => format!("{}, subscription `{service}`", log_spec.what()),
                    None => log_spec.what(),
                };
                match after_failure(&what, &spec, verdict, attempts) {
                    DeliveryVerdict::RedeliverAfter(pause) => {
                        tracing::info!(queue = %self.name, %subscriber, id = %message.id, attempts, %error, pause_ms = pause.as_millis() as u64, "delivery failed; redelivering");
                        self.settle(name.as_deref(), |sub| {
                            sub.waiting_for = None;
                            sub.stats.redelivered += 1;
                            Some(sub.ledger.failed(seq, attempts, pause, Instant::now()))
                        });
                    }
                    DeliveryVerdict::DeadLetter(reason) => {
                        self.with_subscription(name.as_deref(), |sub| sub.waiting_for = None);
                        self.dead_letter(name.as_deref(), seq, &message, attempts, reason, error)
                            .await;
                    }
                }
            }
        }
    }

    /// Runs `change` on subscription `name`, if it is still there (a manifest edit may have
    /// removed it while a delivery ran).
    fn with_subscription(&self, name: Option<&str>, change: impl FnOnce(&mut Subscription)) {
        if let Some(sub) = self.lock().subscription(name) {
            change(sub);
        }
    }

    /// Writes the dead letter, then lets the message go for subscription `name`. Boxed: a
    /// rare path of every delivery, whose future its state would make several times larger.
    fn dead_letter<'a>(
        self: &'a Arc<Self>,
        name: Option<&'a str>,
        seq: u64,
        message: &'a StoredMessage,
        attempts: u32,
        reason: String,
        error: String,
    ) -> crate::util::BoxFuture<'a, ()> {
        Box::pin(async move {
            tracing::warn!(queue = %self.name, subscriber = name, id = %message.id, attempts, %reason, last_error = %error, "message dead-lettered");
            let mut kept = message.clone();
            if let Some(name) = name {
                kept.headers.retain(|(header, _)| header != DEAD_FOR_HEADER);
                kept.headers
                    .push((DEAD_FOR_HEADER.to_owned(), name.to_owned()));
            }
            let dead = DeadLetter {
                message: kept,
                attempts,
                reason: clip(reason),
                last_error: clip(error),
                at_ms: super::now_ms(),
            };
            let retry_later = |state: &mut State| {
                if let Some(sub) = state.subscription(name) {
                    sub.ledger.retry_later(seq, MAX_BACKOFF, Instant::now());
                }
            };
            let mut dead_bytes = Vec::new();
            if let Err(err) = log::encode(&dead, &mut dead_bytes) {
                // Only a message already at the record limit gets here; keep it owed.
                tracing::error!(queue = %self.name, id = %message.id, error = %err, "cannot write the dead letter; the message stays owed");
                retry_later(&mut self.lock());
                self.wake.notify_one();
                return;
            }
            let size = dead_bytes.len() as u64;
            // Written before the ledger lets the message go: if the write fails, the repair cuts
            // the letter off again, and the message must still be owed.
            let synced = {
                let mut state = self.lock();
                let spec = self.spec.load();
                let max = spec.max_dead_bytes;
                if state.dead_bytes.saturating_add(size) > max as u64 {
                    let problem = format!(
                        "{}: its dead-letter file holds {} bytes and its max_dead_mb is {}; \
                         messages that fail for good stay owed (and count against max_depth) until \
                         `switchyard redrive {}` makes room, or max_dead_mb is raised",
                        spec.what(),
                        state.dead_bytes,
                        max / (1024 * 1024),
                        self.name
                    );
                    tracing::error!(queue = %self.name, id = %message.id, %problem, "dead-letter file full; the message stays owed and is offered again later");
                    retry_later(&mut state);
                    self.set_dead_full(Some(problem));
                    self.wake.notify_one();
                    return;
                }
                state.dead_bytes += size;
                let record = named(name, Record::Done { seq });
                self.write_locked(&mut state, dead_bytes, &record)
            };
            if let Err(err) = synced.await {
                tracing::error!(queue = %self.name, id = %message.id, error = %err, "could not write the dead letter; the message stays owed and is offered again later");
                let mut state = self.lock();
                state.dead_bytes = state.dead_bytes.saturating_sub(size);
                retry_later(&mut state);
                self.wake.notify_one();
                return;
            }
            self.set_dead_full(None);
            {
                // Its `Done` record is on disk already.
                let mut state = self.lock();
                if let Some(sub) = state.subscription(name) {
                    let _done = sub.ledger.dead_lettered(seq);
                    sub.stats.dead_lettered += 1;
                }
                state.note_dead(dead);
            }
            self.wake.notify_one();
        })
    }

    /// Applies a settling event to subscription `name` and sends its record to the writer,
    /// under one lock so the log's order is the state's; wakes the dispatcher for the slot
    /// it freed.
    ///
    /// Nobody waits for the record to be on disk: the next delivery goes as soon as a slot is
    /// free, consumers go as fast as the log syncs in groups, and a crash before the record is
    /// on disk means one more delivery of a handled message, which at-least-once allows (the
    /// writer logs a failed batch).
    fn settle(&self, name: Option<&str>, event: impl FnOnce(&mut Subscription) -> Option<Record>) {
        let mut state = self.lock();
        if let Some(record) = state.subscription(name).and_then(event) {
            let bytes = encoded(&named(name, record));
            let len = bytes.len();
            self.writer.append_unawaited(bytes);
            self.wrote_locked(&mut state, len);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Sends `record` (after `dead`, if any) to the writer, and starts a new segment if one is
    /// due; call with the state locked.
    fn write_locked(&self, state: &mut State, dead: Vec<u8>, record: &Record) -> LogSync {
        let bytes = encoded(record);
        let len = bytes.len();
        let synced = Box::pin(self.writer.append(dead, bytes));
        self.wrote_locked(state, len);
        synced
    }

    /// `bytes` of records went to the writer: starts a new segment if one is due. Under the
    /// state's lock, so no record reaches the writer between the checkpoint and the new
    /// segment it starts.
    fn wrote_locked(&self, state: &mut State, bytes: usize) {
        state.written += bytes;
        if let Some(rotation) = state.rotation() {
            self.writer.rotate(rotation);
        }
    }

    /// What is wrong with it now, if anything: its log cannot be written, or its dead-letter
    /// file is full.
    pub(super) fn problems(&self) -> Vec<String> {
        let what = self.spec.load().what();
        let unwritable = self
            .writer
            .unwritable()
            .map(|reason| format!("{what} cannot write its log: {reason}"));
        let dead_full = self
            .dead_full
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        unwritable.into_iter().chain(dead_full).collect()
    }

    fn set_dead_full(&self, problem: Option<String>) {
        *self
            .dead_full
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = problem;
    }

    /// How it looks as a queue (`None` for a topic).
    pub(super) fn queue_view(&self) -> Option<QueueView> {
        let spec = self.spec.load();
        let Kind::Queue { max_depth, .. } = spec.kind else {
            return None;
        };
        let state = self.lock();
        let sub = state.subscriptions.first()?;
        Some(QueueView {
            name: self.name.clone(),
            subscriber: sub.spec.service.clone(),
            depth: sub.ledger.owed(),
            in_flight: sub.ledger.in_flight(),
            max_depth,
            sent: self.sent.load(Ordering::Relaxed),
            delivered: sub.stats.delivered,
            redelivered: sub.stats.redelivered,
            dead_lettered: sub.stats.dead_lettered,
            loops_stopped: sub.stats.loops_stopped,
            dead_letters_total: state.dead_total,
            waiting_for: sub.waiting_for.clone(),
            recent_dead_letters: state.recent_dead.iter().map(Into::into).collect(),
        })
    }

    /// How it looks as a topic (`None` for a queue).
    pub(super) fn topic_view(&self) -> Option<TopicView> {
        let spec = self.spec.load();
        let Kind::Topic(retention) = &spec.kind else {
            return None;
        };
        let state = self.lock();
        Some(TopicView {
            name: self.name.clone(),
            first_offset: state.retained.first(),
            next_offset: state.next_seq,
            messages: state.retained.len(),
            bytes: state.retained.bytes(),
            retain_ms: retention.max_age.map(|age| age.as_millis() as u64),
            retain_bytes: retention.max_bytes,
            compact: retention.compact,
            published: self.sent.load(Ordering::Relaxed),
            dead_letters_total: state.dead_total,
            subscriptions: state.subscriptions.iter().map(Subscription::view).collect(),
            recent_dead_letters: state.recent_dead.iter().map(Into::into).collect(),
        })
    }

    /// Starts a new log segment after `bytes` of records instead of megabytes.
    #[cfg(test)]
    fn rotate_after(&self, bytes: usize) {
        self.lock().rotate_after = bytes;
    }
}

/// What the writer tells, on its thread and in the order of the log, once a batch of sent
/// messages is on disk (or never will be): a message becomes deliverable (and readable) only
/// after every message before it is stored or refused, whichever sender task runs first (and
/// even if a sender stops waiting).
fn stored_hook(shared: Arc<std::sync::Mutex<State>>, wake: Arc<Notify>) -> log::StoredHook {
    Box::new(move |told, stored| {
        let mut state = lock(&shared);
        for sub in &mut state.subscriptions {
            if stored {
                sub.ledger.stored(told.clone());
            } else {
                sub.ledger.forget(told.clone());
            }
        }
        if stored {
            state.unstored_from = state.unstored_from.max(told.end);
            state.retained.stored(told.clone());
        } else {
            for seq in told {
                state.retained.remove(seq);
            }
        }
        drop(state);
        if stored {
            wake.notify_one();
        }
    })
}

/// The bodies of the stored messages `seqs` (ascending) of log `name`, read by `reader`; what
/// cannot be read is said and left out.
fn load_from(reader: &log::Reader, name: &str, seqs: &[u64]) -> Kept {
    if seqs.is_empty() {
        return Vec::new();
    }
    match reader.read(seqs) {
        Ok(found) => {
            if found.len() < seqs.len() {
                tracing::warn!(topic = %name, wanted = seqs.len(), found = found.len(), "some kept messages were no longer in the log (retention dropped them meanwhile?)");
            }
            found.into_iter().map(Arc::new).collect()
        }
        Err(err) => {
            tracing::error!(topic = %name, error = %err, wanted = seqs.len(), "could not read kept messages from the log; the subscription does not get them");
            Vec::new()
        }
    }
}

/// A record that holds no body: it always fits.
fn encoded(record: &Record) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = log::encode(record, &mut bytes);
    bytes
}

fn lock(state: &std::sync::Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `text`, cut to [`MAX_REASON_BYTES`] at a character boundary.
fn clip(mut text: String) -> String {
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;
