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

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, field};

use super::log::{self, DeadLetter, Record, StoredMessage, Writer};
use super::{Delivered, SendError, Subscribers};
use crate::manifest::QueueSpec;
use crate::policy::{self, DeliveryVerdict, Policies};
use crate::telemetry::TraceContext;

/// Resolves once records sent to the writer are on disk.
type LogSync = crate::util::BoxFuture<'static, Result<(), log::LogError>>;

/// The longest pause the default rule waits before a redelivery.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest reason or error text a dead letter keeps.
const MAX_REASON_BYTES: usize = 4096;
/// How long a message waits when the subscriber cannot take it now.
const NOT_NOW_PAUSE: Duration = Duration::from_millis(50);
/// How long shutdown waits for deliveries in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Dead letters the admin API lists (the file keeps all of them).
const RECENT_DEAD_LETTERS: usize = 20;
/// Settled log records before a compaction is considered.
const COMPACT_AFTER_SETTLED: usize = 4096;

pub(super) struct Queue {
    pub(super) name: String,
    /// Settings a manifest edit may change while the queue runs.
    spec: arc_swap::ArcSwap<QueueSpec>,
    /// Stops this queue's dispatcher (the node stops, or the queue left the manifest).
    stop: watch::Sender<bool>,
    dispatcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    writer: Writer,
    state: std::sync::Mutex<State>,
    /// Wakes the dispatcher: a message is ready, or a delivery slot is free.
    wake: Notify,
    stats: Stats,
}

#[derive(Default)]
struct State {
    /// Every message still owed, by sequence number.
    owed: BTreeMap<u64, Owed>,
    /// Sequence numbers ready to be delivered now, in order.
    ready: VecDeque<u64>,
    in_flight: usize,
    next_seq: u64,
    /// Log records that no longer describe an owed message (compaction's trigger).
    settled_records: usize,
    recent_dead: VecDeque<DeadLetter>,
}

struct Owed {
    message: Arc<StoredMessage>,
    /// Failed deliveries so far.
    attempts: u32,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    delivered: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
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
    /// All dead letters in the dead-letter file.
    pub(crate) dead_letters_total: u64,
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
    pub(super) fn open(dir: &std::path::Path, spec: QueueSpec) -> Result<Self, log::LogError> {
        let (writer, recovered) = log::open(dir, &spec.name)?;
        let dead_total = recovered.dead.len() as u64;
        let mut state = State {
            next_seq: recovered.next_seq,
            settled_records: recovered.settled_records,
            ..State::default()
        };
        for (seq, (message, attempts)) in recovered.pending {
            state.ready.push_back(seq);
            state.owed.insert(
                seq,
                Owed {
                    message: Arc::new(message),
                    attempts,
                },
            );
        }
        let skip = recovered.dead.len().saturating_sub(RECENT_DEAD_LETTERS);
        state.recent_dead = recovered.dead.into_iter().skip(skip).collect();
        if !state.owed.is_empty() {
            tracing::info!(queue = %spec.name, owed = state.owed.len(), "queue recovered messages from its log");
        }
        let queue = Self {
            name: spec.name.clone(),
            spec: arc_swap::ArcSwap::from_pointee(spec),
            stop: watch::channel(false).0,
            dispatcher: std::sync::Mutex::new(None),
            writer,
            state: std::sync::Mutex::new(state),
            wake: Notify::new(),
            stats: Stats::default(),
        };
        queue.stats.dead_total.store(dead_total, Ordering::Relaxed);
        Ok(queue)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a message; resolves once it is on disk, with its id.
    pub(super) async fn send(&self, message: StoredMessage) -> Result<String, SendError> {
        let (synced, seqs) = {
            let mut state = self.lock();
            let spec = self.spec.load();
            if state.owed.len() >= spec.max_depth {
                return Err(SendError::Full(format!(
                    "queue `{}` holds {} messages, its max_depth; its subscriber `{}` is behind \
                     (retry later, or raise max_depth)",
                    self.name, spec.max_depth, spec.subscriber
                )));
            }
            self.enqueue_locked(&mut state, vec![message])
                .map_err(|err| SendError::TooLarge(err.to_string()))?
        };
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        self.stored(synced, seqs.clone()).await.map_err(|err| {
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

    /// Gives `messages` the next sequence numbers and their ids, sends their records to the
    /// writer and makes them owed and ready; call with the state locked, so the log has records
    /// in the order of the state changes they describe (compaction relies on it).
    fn enqueue_locked(
        &self,
        state: &mut State,
        messages: Vec<StoredMessage>,
    ) -> Result<(LogSync, std::ops::Range<u64>), log::LogError> {
        let first = state.next_seq;
        let mut bytes = Vec::new();
        let mut numbered = Vec::with_capacity(messages.len());
        for (seq, mut message) in (first..).zip(messages) {
            message.seq = seq;
            message.id = self.id(seq);
            log::encode(&Record::Sent(message.clone()), &mut bytes)?;
            numbered.push(message);
        }
        let seqs = first..first + numbered.len() as u64;
        state.next_seq = seqs.end;
        let synced = Box::pin(self.writer.append(Vec::new(), bytes));
        for message in numbered {
            state.ready.push_back(message.seq);
            state.owed.insert(
                message.seq,
                Owed {
                    message: Arc::new(message),
                    attempts: 0,
                },
            );
        }
        self.wake.notify_one();
        Ok((synced, seqs))
    }

    /// Waits for the records of `seqs` to be on disk; if they did not get there, the messages
    /// are not owed (their senders are told and may send again).
    async fn stored(
        &self,
        synced: LogSync,
        seqs: std::ops::Range<u64>,
    ) -> Result<(), log::LogError> {
        let outcome = synced.await;
        if outcome.is_err() {
            let mut state = self.lock();
            for seq in seqs {
                state.owed.remove(&seq);
            }
        }
        outcome
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
    pub(super) async fn redrive(&self) -> Result<usize, String> {
        let (letters, upto) = self
            .writer
            .read_dead()
            .await
            .map_err(|err| err.to_string())?;
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
        let (synced, seqs) = self
            .enqueue_locked(&mut self.lock(), resent)
            .map_err(|err| err.to_string())?;
        self.stored(synced, seqs)
            .await
            .map_err(|err| format!("the dead letters could not be sent again: {err}"))?;
        let redriven = letters.len();
        self.writer.drop_dead(upto).await.map_err(|err| {
            format!(
                "{redriven} dead letters were sent again, but could not be removed from the \
                 dead-letter file (a later redrive would send them once more): {err}"
            )
        })?;
        {
            let mut state = self.lock();
            state
                .recent_dead
                .retain(|dead| !letters.iter().any(|l| l.message.id == dead.message.id));
        }
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
            while let Some((seq, message, attempts)) = self.next_ready() {
                let queue = self.clone();
                let subscribers = subscribers.clone();
                let policies = policies.clone();
                deliveries.spawn(async move {
                    queue
                        .deliver(seq, message, attempts, &*subscribers, &policies)
                        .await;
                });
            }
            tokio::select! {
                () = self.wake.notified() => {}
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

    fn next_ready(&self) -> Option<(u64, Arc<StoredMessage>, u32)> {
        let mut state = self.lock();
        if state.in_flight >= self.spec.load().concurrency as usize {
            return None;
        }
        while let Some(seq) = state.ready.pop_front() {
            if let Some(owed) = state.owed.get(&seq) {
                let next = (seq, owed.message.clone(), owed.attempts);
                state.in_flight += 1;
                return Some(next);
            }
        }
        None
    }

    async fn deliver(
        self: &Arc<Self>,
        seq: u64,
        message: Arc<StoredMessage>,
        attempts: u32,
        subscribers: &dyn Subscribers,
        policies: &Policies,
    ) {
        let subscriber = self.spec.load().subscriber.clone();
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
        match outcome {
            Delivered::Acked => {
                let synced = self.settle_locked(&mut self.lock(), Vec::new(), Record::Done { seq });
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.finish(synced).await;
            }
            Delivered::NotNow(reason) => {
                tracing::debug!(queue = %self.name, id = %message.id, %reason, "subscriber cannot take the message now; offering it again shortly");
                // It keeps its delivery slot and its place at the front, so a queue delivered
                // one at a time stays in order while its subscriber is busy.
                tokio::time::sleep(NOT_NOW_PAUSE).await;
                {
                    let mut state = self.lock();
                    state.ready.push_front(seq);
                    state.in_flight -= 1;
                }
                self.wake.notify_one();
            }
            Delivered::Failed(error) => {
                let attempts = attempts + 1;
                let chain = policies.delivery_chain(&self.name);
                let verdict =
                    policy::on_delivery_failure(&chain, &self.name, &message.id, attempts).await;
                let verdict = after_failure(&self.spec.load(), verdict, attempts);
                match verdict {
                    DeliveryVerdict::RedeliverAfter(pause) => {
                        tracing::info!(queue = %self.name, id = %message.id, attempts, %error, pause_ms = pause.as_millis() as u64, "delivery failed; redelivering");
                        let synced = self.settle_locked(
                            &mut self.lock(),
                            Vec::new(),
                            Record::Failed { seq, attempts },
                        );
                        self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                        if let Err(err) = synced.await {
                            tracing::error!(queue = %self.name, error = %err, "could not record a failed delivery");
                        }
                        self.release_after(seq, pause);
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
            self.release_after(seq, MAX_BACKOFF);
            return;
        }
        let synced = {
            let mut state = self.lock();
            if state.recent_dead.len() == RECENT_DEAD_LETTERS {
                state.recent_dead.pop_front();
            }
            state.recent_dead.push_back(dead);
            self.settle_locked(&mut state, dead_bytes, Record::Done { seq })
        };
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.stats.dead_total.fetch_add(1, Ordering::Relaxed);
        self.finish(synced).await;
    }

    /// Applies a `Failed` or `Done` record to the state and sends it (after `dead`, if any) to
    /// the writer; call with the state locked so the log's order is the state's.
    fn settle_locked(&self, state: &mut State, dead: Vec<u8>, record: Record) -> LogSync {
        match &record {
            Record::Failed { seq, attempts } => {
                if let Some(owed) = state.owed.get_mut(seq) {
                    owed.attempts = *attempts;
                }
                state.settled_records += 1;
            }
            Record::Done { seq } => {
                state.owed.remove(seq);
                // The `Sent` it settles is settled too.
                state.settled_records += 2;
            }
            Record::Sent(_) => {}
        }
        let mut bytes = Vec::new();
        // These records hold no body; they always fit.
        let _ = log::encode(&record, &mut bytes);
        Box::pin(self.writer.append(dead, bytes))
    }

    /// Frees the delivery slot, compacts the log if it is mostly settled records, then waits
    /// for `synced`. The next delivery does not wait for this one's `Done` to be on disk: a
    /// crash before it is means one more delivery of a handled message, which at-least-once
    /// allows, and consumers go as fast as the log syncs in groups.
    async fn finish(&self, synced: LogSync) {
        {
            let mut state = self.lock();
            state.in_flight -= 1;
            if state.settled_records >= COMPACT_AFTER_SETTLED
                && state.settled_records >= 2 * state.owed.len()
            {
                let mut live = Vec::new();
                for owed in state.owed.values() {
                    let _ = log::encode(&Record::Sent((*owed.message).clone()), &mut live);
                    if owed.attempts > 0 {
                        let _ = log::encode(
                            &Record::Failed {
                                seq: owed.message.seq,
                                attempts: owed.attempts,
                            },
                            &mut live,
                        );
                    }
                }
                self.writer.compact(live);
                state.settled_records = 0;
            }
        }
        self.wake.notify_one();
        if let Err(err) = synced.await {
            tracing::error!(queue = %self.name, error = %err, "could not record a settled message; it may be delivered again after a restart");
        }
    }

    /// Frees the delivery slot now and makes `seq` ready again after `pause`.
    fn release_after(self: &Arc<Self>, seq: u64, pause: Duration) {
        self.lock().in_flight -= 1;
        self.wake.notify_one();
        // Weak: a stopped node's queue (and the lock on its files) must not wait for timers.
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            if let Some(queue) = queue.upgrade() {
                queue.lock().ready.push_back(seq);
                queue.wake.notify_one();
            }
        });
    }

    pub(super) fn view(&self) -> QueueView {
        let state = self.lock();
        let spec = self.spec.load();
        QueueView {
            name: self.name.clone(),
            subscriber: spec.subscriber.clone(),
            depth: state.owed.len(),
            in_flight: state.in_flight,
            max_depth: spec.max_depth,
            sent: self.stats.sent.load(Ordering::Relaxed),
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            redelivered: self.stats.redelivered.load(Ordering::Relaxed),
            dead_lettered: self.stats.dead_lettered.load(Ordering::Relaxed),
            dead_letters_total: self.stats.dead_total.load(Ordering::Relaxed),
            recent_dead_letters: state
                .recent_dead
                .iter()
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

/// What follows the `attempts`-th failed delivery of a message of the queue `spec`: the
/// policies' verdict, or the queue's own rule when none decided (`redeliver_ms` doubling per
/// attempt, at most [`MAX_BACKOFF`]); never a redelivery past `max_attempts`. Pure, so the
/// rule is tested without a clock.
fn after_failure(
    spec: &QueueSpec,
    verdict: Option<DeliveryVerdict>,
    attempts: u32,
) -> DeliveryVerdict {
    if attempts >= spec.max_attempts {
        if let Some(DeliveryVerdict::DeadLetter(reason)) = verdict {
            return DeliveryVerdict::DeadLetter(reason);
        }
        return DeliveryVerdict::DeadLetter(format!(
            "queue `{}`: failed {attempts} times, its max_attempts",
            spec.name
        ));
    }
    verdict.unwrap_or_else(|| {
        let doubling = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        let pause = spec.redeliver_after.saturating_mul(doubling);
        DeliveryVerdict::RedeliverAfter(pause.min(MAX_BACKOFF))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_attempts: u32) -> QueueSpec {
        QueueSpec {
            name: "orders".into(),
            subscriber: "fulfilment".into(),
            concurrency: 1,
            max_attempts,
            redeliver_after: Duration::from_millis(100),
            max_depth: 10,
        }
    }

    #[test]
    fn without_policies_redelivery_backs_off_doubling_up_to_its_cap_then_dead_letters() {
        let spec = spec(12);
        let pauses: Vec<_> = (1..12)
            .map(|attempts| match after_failure(&spec, None, attempts) {
                DeliveryVerdict::RedeliverAfter(pause) => pause.as_millis(),
                DeliveryVerdict::DeadLetter(reason) => panic!("dead at {attempts}: {reason}"),
            })
            .collect();
        assert_eq!(
            pauses,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        assert_eq!(
            after_failure(&spec, None, 12),
            DeliveryVerdict::DeadLetter("queue `orders`: failed 12 times, its max_attempts".into())
        );
    }

    #[test]
    fn a_policy_decides_within_max_attempts_and_its_dead_letter_reason_is_kept() {
        let spec = spec(3);
        let redeliver = Some(DeliveryVerdict::RedeliverAfter(Duration::from_secs(7)));
        assert_eq!(
            after_failure(&spec, redeliver.clone(), 2),
            DeliveryVerdict::RedeliverAfter(Duration::from_secs(7))
        );
        assert!(matches!(
            after_failure(&spec, redeliver, 3),
            DeliveryVerdict::DeadLetter(reason) if reason.contains("max_attempts")
        ));
        let gave_up = Some(DeliveryVerdict::DeadLetter("policy `retry`: enough".into()));
        assert_eq!(
            after_failure(&spec, gave_up.clone(), 1),
            DeliveryVerdict::DeadLetter("policy `retry`: enough".into())
        );
        assert_eq!(
            after_failure(&spec, gave_up, 3),
            DeliveryVerdict::DeadLetter("policy `retry`: enough".into())
        );
    }
}
