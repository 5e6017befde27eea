//! What one subscription owes and which message goes out next: the delivery state machine,
//! without I/O and without a clock.
//!
//! The topic's task shell ([`super::Topic`]) keeps one per subscription (a queue has one) and
//! feeds it events (a message sent, a delivery
//! acknowledged, failed, or turned away because the subscriber is busy) together with the
//! time they happened, and asks it what to deliver now and when to look again. Each event
//! that changes what is owed returns the log [`Record`] that describes it; the shell writes
//! it while it still holds the ledger, so the log's order is the ledger's (a checkpoint relies
//! on it); a topic's subscription names itself in it ([`super::named`]).
//!
//! The rules it keeps:
//! - a sent message is delivered only once its record is on disk ([`Ledger::stored`]), so a
//!   subscriber never acts on a message a crash could take back; but a request whose
//!   requester waits for its reply ([`Ledger::owe_now`]) is ready at once: the requester
//!   waits for the reply, not for the disk, and a crash ends its wait anyway;
//! - at most `concurrency` deliveries at a time;
//! - a failed delivery counts an attempt and waits its pause with its slot freed, then goes to
//!   the back of the line;
//! - a busy subscriber ([`Ledger::not_now`]) is not charged an attempt: the message keeps its
//!   slot and its place at the front, so a queue delivered one at a time stays in order;
//! - with `ordered_by_key`, only the first owed message of a key may be delivered: the later
//!   ones of that key wait while it is delivered, waits for its redelivery or is turned away,
//!   until it is acknowledged or dead-lettered; other keys and messages without a key go on;
//! - the pause after a failure is [`after_failure`]'s: the policies' verdict, or the queue's
//!   own doubling rule, and never a redelivery past `max_attempts`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::manifest::SubscriptionSpec;
use crate::messaging::log::{Record, StoredMessage};
use crate::policy::DeliveryVerdict;

/// The longest pause the default rule waits before a redelivery.
pub(in crate::messaging) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a message waits when the subscriber cannot take it now.
pub(super) const NOT_NOW_PAUSE: Duration = Duration::from_millis(50);

#[derive(Default)]
pub(super) struct Ledger {
    /// Every message still owed, by sequence number.
    owed: BTreeMap<u64, Owed>,
    /// The owed messages of each key, by sequence number (for `ordered_by_key`).
    by_key: HashMap<String, BTreeSet<u64>>,
    /// Ready messages taken out of line because an earlier message of their key is owed;
    /// the first of them goes back to the front when that one is settled.
    parked: HashSet<u64>,
    /// Sequence numbers ready to be delivered now, in order.
    ready: VecDeque<u64>,
    /// Messages waiting for a moment, by when it comes.
    waiting: BTreeSet<(Instant, u64, Resume)>,
    /// Deliveries holding a slot: being delivered, or turned away and waiting to be offered
    /// again.
    in_flight: usize,
    next_seq: u64,
    /// What the owed messages weigh ([`weight`]): `max_bytes` bounds it.
    owed_bytes: usize,
    /// The first sequence number not yet known to be on disk (not ready before it is).
    unstored_from: u64,
    /// Messages made ready before their records are on disk ([`Ledger::owe_now`]).
    early: HashSet<u64>,
}

struct Owed {
    message: Arc<StoredMessage>,
    /// Failed deliveries so far.
    attempts: u32,
}

/// Where a waiting message goes when its moment comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Resume {
    /// Back of the line; it waited with its slot freed (a redelivery).
    Back,
    /// Front of the line, freeing the slot it kept (the subscriber was busy).
    Front,
}

/// One delivery to make now.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) seq: u64,
    pub(super) message: Arc<StoredMessage>,
    /// Failed deliveries before this one.
    pub(super) attempts: u32,
}

impl Ledger {
    /// Owes `owed` (what the log said, with failed attempts, in order), all of it ready;
    /// messages sent from now on are numbered from `next_seq`.
    pub(super) fn recover(
        owed: impl IntoIterator<Item = (Arc<StoredMessage>, u32)>,
        next_seq: u64,
    ) -> Self {
        let mut ledger = Self {
            next_seq,
            unstored_from: next_seq,
            ..Self::default()
        };
        for (message, attempts) in owed {
            ledger.ready.push_back(message.seq);
            ledger.insert_owed(message, attempts);
        }
        ledger
    }

    /// Whether `seq` is owed.
    pub(super) fn owes(&self, seq: u64) -> bool {
        self.owed.contains_key(&seq)
    }

    /// The owed messages in order, with their failed attempts.
    pub(super) fn owed_messages(&self) -> impl Iterator<Item = (&Arc<StoredMessage>, u32)> {
        self.owed
            .values()
            .map(|owed| (&owed.message, owed.attempts))
    }

    /// The first message it owes, or else the next it will: its cursor.
    pub(super) fn cursor(&self) -> u64 {
        self.owed.keys().next().copied().unwrap_or(self.next_seq)
    }

    /// Owes exactly the messages of `from` (a rewind, or a move forward): what it owed before
    /// them is dropped, what it did not owe among them is owed again, ready in order.
    pub(super) fn rewind(&mut self, from: u64, messages: Vec<Arc<StoredMessage>>) {
        let before: Vec<u64> = self.owed.range(..from).map(|(seq, _)| *seq).collect();
        for seq in before {
            self.drop_owed(seq);
        }
        for message in messages {
            let seq = message.seq;
            if seq < self.unstored_from && !self.owed.contains_key(&seq) {
                self.insert_owed(message, 0);
                self.ready.push_back(seq);
            }
        }
        let mut ready: Vec<u64> = self.ready.drain(..).collect();
        ready.sort_unstable();
        ready.dedup();
        self.ready = ready.into();
        self.next_seq = self.next_seq.max(from);
        self.unstored_from = self.unstored_from.max(from);
    }

    /// Messages owed: ready, waiting, or being delivered.
    pub(super) fn owed(&self) -> usize {
        self.owed.len()
    }

    /// What the owed messages weigh, for `max_bytes`.
    pub(super) fn owed_bytes(&self) -> usize {
        self.owed_bytes
    }

    fn insert_owed(&mut self, message: Arc<StoredMessage>, attempts: u32) {
        let seq = message.seq;
        self.owed_bytes += weight(&message);
        if let Some(key) = &message.key {
            self.by_key.entry(key.clone()).or_default().insert(seq);
        }
        self.owed.insert(seq, Owed { message, attempts });
    }

    fn drop_owed(&mut self, seq: u64) {
        if let Some(owed) = self.owed.remove(&seq) {
            self.owed_bytes = self.owed_bytes.saturating_sub(weight(&owed.message));
            self.parked.remove(&seq);
            if let Some(key) = &owed.message.key
                && let Some(seqs) = self.by_key.get_mut(key)
            {
                seqs.remove(&seq);
                match seqs.first() {
                    None => {
                        self.by_key.remove(key);
                    }
                    // The next of its key, if it was taken out of line, goes first now.
                    Some(&next) => {
                        if self.parked.remove(&next) {
                            self.ready.push_front(next);
                        }
                    }
                }
            }
        }
    }

    /// Whether `owed` (at `seq`) is the first owed message of its key, or has no key.
    fn first_of_its_key(&self, seq: u64, owed: &Owed) -> bool {
        owed.message.key.as_ref().is_none_or(|key| {
            self.by_key
                .get(key)
                .and_then(|seqs| seqs.first())
                .is_none_or(|first| *first == seq)
        })
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The sequence number the next sent message gets.
    #[cfg(test)]
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Owes `message` if it comes at or after [`Ledger::next_seq`] (a subscription that
    /// starts at a later offset skips the ones before); it is ready once [`Ledger::stored`]
    /// says its record is on disk.
    pub(super) fn owe(&mut self, message: Arc<StoredMessage>) {
        let seq = message.seq;
        if seq < self.next_seq {
            return;
        }
        self.next_seq = seq + 1;
        self.insert_owed(message, 0);
    }

    /// [`Ledger::owe`], ready at once instead of once stored: a request whose requester
    /// waits for the reply. If its record then fails to reach the disk it stays owed (it may
    /// be in delivery already; its requester heard that the send failed).
    pub(super) fn owe_now(&mut self, message: Arc<StoredMessage>) {
        let seq = message.seq;
        if seq < self.next_seq {
            return;
        }
        self.owe(message);
        self.early.insert(seq);
        self.ready.push_back(seq);
    }

    /// The records of `seqs` are on disk, and every message before them was stored or
    /// forgotten already (the log writer tells outcomes in the order of the log): those still
    /// owed become ready, in the order they were sent.
    pub(super) fn stored(&mut self, seqs: Range<u64>) {
        for seq in self.unstored_from..seqs.end {
            if !self.early.remove(&seq) && self.owed.contains_key(&seq) {
                self.ready.push_back(seq);
            }
        }
        self.unstored_from = self.unstored_from.max(seqs.end);
    }

    /// Stops owing `seqs` (their records never reached the disk; their senders were told),
    /// but for those delivered early.
    pub(super) fn forget(&mut self, seqs: Range<u64>) {
        for seq in seqs {
            if !self.early.remove(&seq) {
                self.drop_owed(seq);
            }
        }
    }

    /// The next message to deliver at `now`, if a slot is free and one is ready; with
    /// `ordered_by_key`, the first ready one that is the first owed message of its key.
    pub(super) fn next(
        &mut self,
        now: Instant,
        concurrency: usize,
        ordered_by_key: bool,
    ) -> Option<Delivery> {
        self.wake_due(now);
        if !ordered_by_key && !self.parked.is_empty() {
            // The queue no longer keeps keys in order: what waited for its key goes first.
            let mut parked: Vec<u64> = self.parked.drain().collect();
            parked.sort_unstable();
            for seq in parked.into_iter().rev() {
                self.ready.push_front(seq);
            }
        }
        if self.in_flight >= concurrency {
            return None;
        }
        while let Some(seq) = self.ready.pop_front() {
            // A message forgotten or settled while it waited in line is skipped.
            let Some(owed) = self.owed.get(&seq) else {
                continue;
            };
            if ordered_by_key && !self.first_of_its_key(seq, owed) {
                // Out of line until the messages of its key before it are settled; each
                // ready message is looked at once, however long one key holds the others.
                self.parked.insert(seq);
                continue;
            }
            self.in_flight += 1;
            return Some(Delivery {
                seq,
                message: owed.message.clone(),
                attempts: owed.attempts,
            });
        }
        None
    }

    /// When the first waiting message's moment comes (the shell sleeps until then).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.waiting.first().map(|(due, _, _)| *due)
    }

    fn wake_due(&mut self, now: Instant) {
        while let Some(&(due, seq, resume)) = self.waiting.first() {
            if due > now {
                break;
            }
            self.waiting.pop_first();
            match resume {
                Resume::Back => self.ready.push_back(seq),
                Resume::Front => {
                    self.in_flight -= 1;
                    self.ready.push_front(seq);
                }
            }
        }
    }

    /// The subscriber acknowledged `seq`: nothing more is owed.
    pub(super) fn acked(&mut self, seq: u64) -> Record {
        self.in_flight -= 1;
        self.settle(seq)
    }

    /// The subscriber could not take `seq` at `now` (busy, not running): no attempt is
    /// counted; it keeps its slot and is offered again first after [`NOT_NOW_PAUSE`].
    pub(super) fn not_now(&mut self, seq: u64, now: Instant) {
        self.waiting
            .insert((now + NOT_NOW_PAUSE, seq, Resume::Front));
    }

    /// The `attempts`-th delivery of `seq` failed at `now` and `verdict` says to try again
    /// after a pause: the slot is freed, the message waits.
    pub(super) fn failed(
        &mut self,
        seq: u64,
        attempts: u32,
        pause: Duration,
        now: Instant,
    ) -> Record {
        self.in_flight -= 1;
        if let Some(owed) = self.owed.get_mut(&seq) {
            owed.attempts = attempts;
        }
        self.waiting.insert((now + pause, seq, Resume::Back));
        Record::Failed { seq, attempts }
    }

    /// `seq` could not be settled now (its dead letter does not fit a record): it stays owed
    /// and is tried again after `pause`, without counting an attempt.
    pub(super) fn retry_later(&mut self, seq: u64, pause: Duration, now: Instant) {
        self.in_flight -= 1;
        self.waiting.insert((now + pause, seq, Resume::Back));
    }

    /// `seq` was given up on (its dead letter is on disk): nothing more is owed.
    pub(super) fn dead_lettered(&mut self, seq: u64) -> Record {
        self.in_flight -= 1;
        self.settle(seq)
    }

    fn settle(&mut self, seq: u64) -> Record {
        self.drop_owed(seq);
        Record::Done { seq }
    }
}

/// What follows the `attempts`-th failed delivery of a message of `log` (a queue or topic)
/// to the subscription `spec`: the policies' verdict, or the subscription's own rule when
/// none decided (`redeliver_ms` doubling per attempt, at most [`MAX_BACKOFF`]); never a
/// redelivery past `max_attempts`.
pub(in crate::messaging) fn after_failure(
    log: &str,
    spec: &SubscriptionSpec,
    verdict: Option<DeliveryVerdict>,
    attempts: u32,
) -> DeliveryVerdict {
    if attempts >= spec.max_attempts {
        if let Some(DeliveryVerdict::DeadLetter(reason)) = verdict {
            return DeliveryVerdict::DeadLetter(reason);
        }
        return DeliveryVerdict::DeadLetter(format!(
            "{log}: failed {attempts} times, its max_attempts"
        ));
    }
    verdict.unwrap_or_else(|| {
        let doubling = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        let pause = spec.redeliver_after.saturating_mul(doubling);
        DeliveryVerdict::RedeliverAfter(pause.min(MAX_BACKOFF))
    })
}

/// What a message weighs against `max_bytes`: its body, key and headers.
pub(super) fn weight(message: &StoredMessage) -> usize {
    message.body.len()
        + message.key.as_ref().map_or(0, String::len)
        + message
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
}

#[cfg(test)]
pub(super) mod tests;
