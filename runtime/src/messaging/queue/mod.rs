//! One queue: what it owes (in memory, mirrored by its log), and the dispatcher that hands
//! messages to its subscriber, at most `concurrency` at a time.
//!
//! A delivery that the subscriber acknowledges is `Done`. One that fails (the guest returned
//! an error, trapped, ran out of time or memory) counts an attempt, and the policies bound to
//! the queue decide: redeliver after a pause, or dead-letter. Without policies the queue's own
//! rule applies (`redeliver_ms` doubling per attempt, capped at [`MAX_BACKOFF`]); either way a
//! message is dead-lettered once it has failed `max_attempts` times. A subscriber that cannot
//! take a message right now (all instances busy, or not running on this node) does not count
//! an attempt: the message waits and is offered again.

mod ledger;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, field};

use super::log::{self, DeadLetter, Record, StoredMessage, Writer};
use super::{Delivered, MessagingError, QueueError, SendError, Subscribers};
use crate::manifest::QueueSpec;
use crate::policy::{self, DeliveryVerdict, Policies};
use crate::telemetry::TraceContext;
use ledger::{Delivery, Ledger, MAX_BACKOFF, after_failure};

/// Resolves once records sent to the writer are on disk.
type LogSync = crate::util::BoxFuture<'static, Result<(), log::LogError>>;

/// The longest reason or error text a dead letter keeps.
const MAX_REASON_BYTES: usize = 4096;
/// How long shutdown waits for deliveries in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

pub(super) struct Queue {
    pub(super) name: String,
    /// Settings a manifest edit may change while the queue runs.
    spec: arc_swap::ArcSwap<QueueSpec>,
    /// Stops this queue's dispatcher (the node stops, or the queue left the manifest).
    stop: watch::Sender<bool>,
    dispatcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    writer: Writer,
    /// Shared with the log writer, which tells it what is stored in the order it was written.
    ledger: Arc<std::sync::Mutex<Ledger>>,
    /// Wakes the dispatcher: a message is ready, or a delivery slot is free.
    wake: Arc<Notify>,
    /// Set while a message that failed for good found the dead-letter file full.
    dead_full: std::sync::Mutex<Option<String>>,
    /// Why the last delivery could not be made (the subscriber busy, or running nowhere),
    /// until one is made again.
    waiting_for: std::sync::Mutex<Option<String>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    delivered: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
    /// Messages the loop guard dead-lettered.
    loops_stopped: AtomicU64,
    /// Dead letters in the file, from earlier runs too.
    dead_total: AtomicU64,
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

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DeadLetterView {
    pub(crate) id: String,
    pub(crate) attempts: u32,
    pub(crate) reason: String,
    pub(crate) last_error: String,
    pub(crate) sender: String,
    /// The first 256 bytes of the body, as text.
    pub(crate) body_preview: String,
}

impl Queue {
    /// Opens the queue's log under `dir` and takes back what it owes.
    pub(super) fn open(
        storage: &Arc<dyn log::Storage>,
        dir: &std::path::Path,
        spec: QueueSpec,
    ) -> Result<Self, log::LogError> {
        let (writer, recovered) = log::open(storage, dir, &spec.name)?;
        let dead_total = recovered.dead.len() as u64;
        let ledger = Ledger::recover(recovered);
        if ledger.owed() > 0 {
            tracing::info!(queue = %spec.name, owed = ledger.owed(), "queue recovered messages from its log");
        }
        let queue = Self {
            name: spec.name.clone(),
            spec: arc_swap::ArcSwap::from_pointee(spec),
            stop: watch::channel(false).0,
            dispatcher: std::sync::Mutex::new(None),
            writer,
            ledger: Arc::new(std::sync::Mutex::new(ledger)),
            wake: Arc::new(Notify::new()),
            dead_full: std::sync::Mutex::new(None),
            waiting_for: std::sync::Mutex::new(None),
            stats: Stats::default(),
        };
        queue.stats.dead_total.store(dead_total, Ordering::Relaxed);
        Ok(queue)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    /// Appends a message; resolves once it is on disk, with its id.
    pub(super) async fn send(&self, message: StoredMessage) -> Result<String, SendError> {
        let (synced, seqs) = {
            let mut ledger = self.lock();
            let spec = self.spec.load();
            if ledger.owed() >= spec.max_depth {
                return Err(SendError::Full(format!(
                    "queue `{}` holds {} messages, its max_depth; its subscriber `{}` is behind \
                     (retry later, or raise max_depth)",
                    self.name, spec.max_depth, spec.subscriber
                )));
            }
            if ledger.owed_bytes() + ledger::weight(&message) > spec.max_bytes {
                return Err(SendError::Full(format!(
                    "queue `{}` holds {} bytes of messages, and this one ({} bytes) would pass \
                     its max_bytes_mb ({}); its subscriber `{}` is behind (retry later, or raise \
                     max_bytes_mb)",
                    self.name,
                    ledger.owed_bytes(),
                    ledger::weight(&message),
                    spec.max_bytes / (1024 * 1024),
                    spec.subscriber
                )));
            }
            self.enqueue_locked(&mut ledger, vec![message])
                .map_err(|err| SendError::TooLarge(err.to_string()))?
        };
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        synced.await.map_err(|err| {
            SendError::Unavailable(format!(
                "queue `{}` could not store the message: {err}",
                self.name
            ))
        })?;
        Ok(self.id(seqs.start))
    }

    /// The id of the message at `seq`.
    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.name)
    }

    /// Numbers `messages` from the ledger's next sequence number, gives them their ids, sends
    /// their records to the writer and owes them; call with the ledger locked, so the log has
    /// records in the order of the ledger's changes.
    fn enqueue_locked(
        &self,
        ledger: &mut Ledger,
        messages: Vec<StoredMessage>,
    ) -> Result<(LogSync, std::ops::Range<u64>), log::LogError> {
        let mut bytes = Vec::new();
        let mut numbered = Vec::with_capacity(messages.len());
        for (seq, mut message) in (ledger.next_seq()..).zip(messages) {
            message.seq = seq;
            message.id = self.id(seq);
            log::encode(&Record::Sent(message.clone()), &mut bytes)?;
            numbered.push(message);
        }
        let seqs = ledger.owe(numbered);
        // Told on the writer thread, in the order of the log: a message becomes deliverable
        // only after every message before it is stored or refused, whichever sender task
        // runs first (and even if a sender stops waiting).
        let (ledger, wake, told) = (self.ledger.clone(), self.wake.clone(), seqs.clone());
        let synced = self.writer.append_then(Vec::new(), bytes, move |stored| {
            if stored {
                lock(&ledger).stored(told);
                wake.notify_one();
            } else {
                lock(&ledger).forget(told);
            }
        });
        Ok((Box::pin(synced), seqs))
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

    /// Takes new settings (a manifest edit); deliveries from now on follow them.
    pub(super) fn reconfigure(&self, spec: QueueSpec) {
        self.spec.store(Arc::new(spec));
        self.wake.notify_one();
    }

    /// The settings it runs with.
    pub(super) fn spec(&self) -> Arc<QueueSpec> {
        self.spec.load_full()
    }

    /// Sends every dead letter again as a new message (attempts from zero, header
    /// `x-switchyard-redriven-from` naming the old id) and removes them from the dead-letter
    /// file once the new messages are on disk. Returns how many. A crash between the two steps
    /// redrives them twice, never loses one.
    pub(super) async fn redrive(&self) -> Result<usize, QueueError> {
        let failed = |cause| MessagingError {
            queue: self.name.clone(),
            cause,
        };
        let (letters, read) = self.writer.read_dead().await.map_err(failed)?;
        if letters.is_empty() {
            return Ok(0);
        }
        let resent = letters
            .iter()
            .map(|letter| {
                let mut message = letter.message.clone();
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
        self.lock().forget_dead(&ids, read.len());
        self.set_dead_full(None);
        self.stats
            .dead_total
            .fetch_sub(redriven as u64, Ordering::Relaxed);
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
            let (concurrency, ordered_by_key) = {
                let spec = self.spec.load();
                (spec.concurrency as usize, spec.ordered_by_key)
            };
            let now = Instant::now();
            while let Some(delivery) = self.lock().next(now, concurrency, ordered_by_key) {
                let queue = self.clone();
                let subscribers = subscribers.clone();
                let policies = policies.clone();
                deliveries.spawn(async move {
                    queue.deliver(delivery, &*subscribers, &policies).await;
                });
            }
            let due = self.lock().next_due();
            let moment = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = moment => {}
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

    async fn deliver(
        self: &Arc<Self>,
        delivery: Delivery,
        subscribers: &dyn Subscribers,
        policies: &Policies,
    ) {
        let Delivery {
            seq,
            message,
            attempts,
        } = delivery;
        let (subscriber, max_depth) = {
            let spec = self.spec.load();
            (spec.subscriber.clone(), spec.max_causation_depth)
        };
        let causation = crate::wire::Causation::of(&message.headers);
        if causation.depth > max_depth {
            // A loop between services, most likely: each handler sends the next message.
            let chain = causation.path();
            tracing::warn!(queue = %self.name, id = %message.id, depth = causation.depth, max_causation_depth = max_depth, %chain, "loop guard: a message at the end of too long a chain of messages is dead-lettered, not delivered");
            self.stats.loops_stopped.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "loop guard: this message comes at depth {} of a chain of messages, each sent \
                 while handling the one before (senders: {chain}); queue `{}` takes chains \
                 of at most {max_depth} (max_causation_depth)",
                causation.depth, self.name
            );
            self.dead_letter(seq, &message, attempts, reason, "not delivered".into())
                .await;
            return;
        }
        let trace = message
            .trace_context
            .as_deref()
            .and_then(TraceContext::parse)
            .map_or_else(TraceContext::root, |sender| sender.child());
        let span = tracing::info_span!(
            "delivery",
            queue = %self.name,
            id = %message.id,
            attempt = attempts + 1,
            subscriber = %subscriber,
            trace_id = trace.trace_id(),
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
        *self
            .waiting_for
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = match &outcome {
            Delivered::NotNow(reason) => Some(reason.clone()),
            Delivered::Acked | Delivered::Failed(_) => None,
        };
        match outcome {
            Delivered::Acked => {
                let synced = self.settle(|ledger| ledger.acked(seq));
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.finish(synced).await;
            }
            Delivered::NotNow(reason) => {
                tracing::debug!(queue = %self.name, id = %message.id, %reason, "subscriber cannot take the message now; offering it again shortly");
                self.lock().not_now(seq, Instant::now());
                self.wake.notify_one();
            }
            Delivered::Failed(error) => {
                let attempts = attempts + 1;
                let chain = policies.delivery_chain(&self.name);
                let verdict =
                    policy::on_delivery_failure(&chain, &self.name, &message.id, attempts).await;
                match after_failure(&self.spec.load(), verdict, attempts) {
                    DeliveryVerdict::RedeliverAfter(pause) => {
                        tracing::info!(queue = %self.name, id = %message.id, attempts, %error, pause_ms = pause.as_millis() as u64, "delivery failed; redelivering");
                        let synced = self
                            .settle(|ledger| ledger.failed(seq, attempts, pause, Instant::now()));
                        self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                        self.finish(synced).await;
                    }
                    DeliveryVerdict::DeadLetter(reason) => {
                        self.dead_letter(seq, &message, attempts, reason, error)
                            .await;
                    }
                }
            }
        }
    }

    async fn dead_letter(
        self: &Arc<Self>,
        seq: u64,
        message: &StoredMessage,
        attempts: u32,
        reason: String,
        error: String,
    ) {
        tracing::warn!(queue = %self.name, id = %message.id, attempts, %reason, last_error = %error, "message dead-lettered");
        let dead = DeadLetter {
            message: message.clone(),
            attempts,
            reason: clip(reason),
            last_error: clip(error),
            at_ms: super::now_ms(),
        };
        let mut dead_bytes = Vec::new();
        if let Err(err) = log::encode(&dead, &mut dead_bytes) {
            // Only a message already at the record limit gets here; keep it owed.
            tracing::error!(queue = %self.name, id = %message.id, error = %err, "cannot write the dead letter; the message stays in the queue");
            self.lock().retry_later(seq, MAX_BACKOFF, Instant::now());
            self.wake.notify_one();
            return;
        }
        let size = dead_bytes.len();
        // Written before the ledger lets the message go: if the write fails, the repair cuts
        // the letter off again, and the message must still be owed.
        let synced = {
            let mut ledger = self.lock();
            let max = self.spec.load().max_dead_bytes;
            if !ledger.reserve_dead(size, max) {
                let problem = format!(
                    "queue `{}`: its dead-letter file holds {} bytes and its max_dead_mb is {}; \
                     messages that fail for good stay in the queue (and count against \
                     max_depth) until `switchyard redrive {}` makes room, or max_dead_mb is \
                     raised",
                    self.name,
                    ledger.dead_bytes(),
                    max / (1024 * 1024),
                    self.name
                );
                tracing::error!(queue = %self.name, id = %message.id, %problem, "dead-letter file full; the message stays in the queue and is offered again later");
                ledger.retry_later(seq, MAX_BACKOFF, Instant::now());
                self.set_dead_full(Some(problem));
                self.wake.notify_one();
                return;
            }
            self.write_locked(dead_bytes, &Record::Done { seq })
        };
        if let Err(err) = synced.await {
            tracing::error!(queue = %self.name, id = %message.id, error = %err, "could not write the dead letter; the message stays in the queue and is offered again later");
            let mut ledger = self.lock();
            ledger.release_dead(size);
            ledger.retry_later(seq, MAX_BACKOFF, Instant::now());
            self.wake.notify_one();
            return;
        }
        self.set_dead_full(None);
        // Its `Done` record is on disk already.
        let _done = self.lock().dead_lettered(seq, dead);
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.stats.dead_total.fetch_add(1, Ordering::Relaxed);
        self.compact_if_due_and_wake();
    }

    /// Applies a settling event to the ledger and sends its record to the writer, under one
    /// lock so the log's order is the ledger's.
    fn settle(&self, event: impl FnOnce(&mut Ledger) -> Record) -> LogSync {
        let mut ledger = self.lock();
        let record = event(&mut ledger);
        self.write_locked(Vec::new(), &record)
    }

    /// Sends `record` (after `dead`, if any) to the writer; call with the ledger locked.
    fn write_locked(&self, dead: Vec<u8>, record: &Record) -> LogSync {
        let mut bytes = Vec::new();
        // These records hold no body; they always fit.
        let _ = log::encode(record, &mut bytes);
        Box::pin(self.writer.append(dead, bytes))
    }

    /// Wakes the dispatcher for the freed slot, compacts the log if it is mostly settled
    /// records, then waits for `synced`. The next delivery does not wait for this one's record
    /// to be on disk: a crash before it is means one more delivery of a handled message, which
    /// at-least-once allows, and consumers go as fast as the log syncs in groups.
    async fn finish(&self, synced: LogSync) {
        self.compact_if_due_and_wake();
        if let Err(err) = synced.await {
            tracing::error!(queue = %self.name, error = %err, "could not record a settled message; it may be delivered again after a restart");
        }
    }

    fn compact_if_due_and_wake(&self) {
        {
            // Under the lock: no record may reach the writer between the snapshot and the
            // compaction that replaces the log with it.
            let mut ledger = self.lock();
            if let Some(live) = ledger.compaction() {
                self.writer.compact(live);
            }
        }
        self.wake.notify_one();
    }

    /// What is wrong with this queue now, if anything: its log cannot be written, or its
    /// dead-letter file is full.
    pub(super) fn problems(&self) -> Vec<String> {
        let unwritable = self
            .writer
            .unwritable()
            .map(|reason| format!("queue `{}` cannot write its log: {reason}", self.name));
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

    pub(super) fn view(&self) -> QueueView {
        let ledger = self.lock();
        let spec = self.spec.load();
        QueueView {
            name: self.name.clone(),
            subscriber: spec.subscriber.clone(),
            depth: ledger.owed(),
            in_flight: ledger.in_flight(),
            max_depth: spec.max_depth,
            sent: self.stats.sent.load(Ordering::Relaxed),
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            redelivered: self.stats.redelivered.load(Ordering::Relaxed),
            dead_lettered: self.stats.dead_lettered.load(Ordering::Relaxed),
            loops_stopped: self.stats.loops_stopped.load(Ordering::Relaxed),
            dead_letters_total: self.stats.dead_total.load(Ordering::Relaxed),
            waiting_for: self
                .waiting_for
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            recent_dead_letters: ledger
                .recent_dead()
                .map(|dead| DeadLetterView {
                    id: dead.message.id.clone(),
                    attempts: dead.attempts,
                    reason: dead.reason.clone(),
                    last_error: dead.last_error.clone(),
                    sender: dead.message.sender.clone(),
                    body_preview: String::from_utf8_lossy(
                        &dead.message.body[..dead.message.body.len().min(256)],
                    )
                    .into_owned(),
                })
                .collect(),
        }
    }
}

fn lock(ledger: &std::sync::Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    ledger
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
mod tests;
