//! What a topic keeps for readers and for subscriptions that start later or rewind: the
//! messages within its retention, without I/O and without a clock (`now_ms` is passed in).
//!
//! A message leaves when it is older than `max_age`, or when the topic holds more than
//! `max_bytes` (oldest first). In a `compact` topic a message also leaves once a later message
//! of its key arrives: the topic is then a table of the latest message per key (messages
//! without a key stay until age or size drop them). A subscription that still owes a message
//! the compaction dropped keeps it: the topic keeps what is owed, it only stops offering it
//! to new readers. Age and size drop a message for everyone.
//!
//! Only what these decisions need stays in memory (offset, key, time, weight); a body stays
//! only until the message's record is on disk. Readers read bodies from the log's segments.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::manifest::Retention;
use crate::wire::StoredMessage;

use super::ledger::weight;

#[derive(Default)]
pub(super) struct Retained {
    messages: BTreeMap<u64, Kept>,
    /// What they weigh ([`weight`]).
    bytes: usize,
    /// The latest message of each key (for `compact`).
    latest: HashMap<String, u64>,
}

/// A kept message.
pub(super) struct Kept {
    pub(super) seq: u64,
    key: Option<String>,
    sent_at_ms: u64,
    /// What it weighs ([`weight`]).
    weight: usize,
    /// The message itself, until its record is on disk.
    pub(super) message: Option<Arc<StoredMessage>>,
}

impl Kept {
    /// What it weighs: its body and the rest of its record, near enough.
    pub(super) fn weight(&self) -> usize {
        self.weight
    }
}

/// What a change to the kept messages dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Dropped {
    /// Too old or past the size: gone for every subscription.
    pub(super) expired: Vec<u64>,
    /// A later message of their key came: no longer offered to new readers.
    pub(super) superseded: Vec<u64>,
}

impl Retained {
    /// Keeps `message` (numbered), then drops what the retention says must go at `now_ms`.
    pub(super) fn keep(
        &mut self,
        message: Arc<StoredMessage>,
        retention: &Retention,
        now_ms: u64,
    ) -> Dropped {
        let kept = Kept {
            seq: message.seq,
            key: message.key.clone(),
            sent_at_ms: message.sent_at_ms,
            weight: weight(&message),
            message: Some(message),
        };
        self.insert(kept, retention, now_ms)
    }

    /// [`Retained::keep`] of a stored message whose body (of `body_len` bytes) stays on disk.
    pub(super) fn keep_stored(
        &mut self,
        bodiless: &StoredMessage,
        body_len: usize,
        retention: &Retention,
        now_ms: u64,
    ) -> Dropped {
        let kept = Kept {
            seq: bodiless.seq,
            key: bodiless.key.clone(),
            sent_at_ms: bodiless.sent_at_ms,
            weight: weight(bodiless) + body_len,
            message: None,
        };
        self.insert(kept, retention, now_ms)
    }

    fn insert(&mut self, kept: Kept, retention: &Retention, now_ms: u64) -> Dropped {
        let mut dropped = Dropped::default();
        if retention.compact
            && let Some(key) = &kept.key
            && let Some(earlier) = self.latest.insert(key.clone(), kept.seq)
            && self.remove(earlier)
        {
            dropped.superseded.push(earlier);
        }
        self.bytes += kept.weight;
        self.messages.insert(kept.seq, kept);
        dropped.expired = self.trim(retention, now_ms);
        dropped
    }

    /// Drops the messages too old at `now_ms` or past the size, oldest first; returns them.
    pub(super) fn trim(&mut self, retention: &Retention, now_ms: u64) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some((&seq, oldest)) = self.messages.first_key_value() {
            let too_old = retention.max_age.is_some_and(|age| {
                oldest.sent_at_ms.saturating_add(age.as_millis() as u64) <= now_ms
            });
            if !too_old && self.bytes <= retention.max_bytes {
                break;
            }
            self.remove(seq);
            expired.push(seq);
        }
        expired
    }

    /// When (ms since the epoch) the oldest message becomes too old, if a time limit is set.
    pub(super) fn next_expiry(&self, retention: &Retention) -> Option<u64> {
        let age = retention.max_age?;
        let (_, oldest) = self.messages.first_key_value()?;
        Some(oldest.sent_at_ms.saturating_add(age.as_millis() as u64))
    }

    /// The messages `seqs` are on disk: their bodies are read from there from now on.
    pub(super) fn stored(&mut self, seqs: std::ops::Range<u64>) {
        for (_, kept) in self.messages.range_mut(seqs) {
            kept.message = None;
        }
    }

    /// Forgets `seq` (its record never reached the disk); whether it was kept.
    pub(super) fn remove(&mut self, seq: u64) -> bool {
        let Some(message) = self.messages.remove(&seq) else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(message.weight);
        if let Some(key) = &message.key
            && self.latest.get(key) == Some(&seq)
        {
            self.latest.remove(key);
        }
        true
    }

    /// The kept messages from `from` on, in order.
    pub(super) fn from(&self, from: u64) -> impl Iterator<Item = &Kept> {
        self.messages.range(from..).map(|(_, kept)| kept)
    }

    /// The oldest kept offset.
    pub(super) fn first(&self) -> Option<u64> {
        self.messages.first_key_value().map(|(seq, _)| *seq)
    }

    /// The first kept offset of a message published at or after `at_ms`.
    pub(super) fn first_since(&self, at_ms: u64) -> Option<u64> {
        self.messages
            .values()
            .find(|message| message.sent_at_ms >= at_ms)
            .map(|message| message.seq)
    }

    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::MessageKind;

    fn message(seq: u64, key: Option<&str>, at_ms: u64, body: usize) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            seq,
            id: format!("t-{seq}"),
            kind: MessageKind::Event,
            key: key.map(str::to_owned),
            headers: Vec::new(),
            reply_to: None,
            trace_context: None,
            body: vec![b'x'; body],
            sender: "test".into(),
            sent_at_ms: at_ms,
        })
    }

    fn retention(max_age_ms: Option<u64>, max_bytes: usize, compact: bool) -> Retention {
        Retention {
            max_age: max_age_ms.map(Duration::from_millis),
            max_bytes,
            compact,
        }
    }

    #[test]
    fn size_drops_the_oldest_messages_first_and_age_drops_the_old_ones() {
        let by_size = retention(None, 30, false);
        let mut kept = Retained::default();
        for seq in 0..3 {
            assert_eq!(
                kept.keep(message(seq, None, 0, 10), &by_size, 0),
                Dropped::default()
            );
        }
        let dropped = kept.keep(message(3, None, 0, 10), &by_size, 0);
        assert_eq!(dropped.expired, [0]);
        assert_eq!((kept.first(), kept.len(), kept.bytes()), (Some(1), 3, 30));

        let by_age = retention(Some(1000), usize::MAX, false);
        let mut kept = Retained::default();
        kept.keep(message(0, None, 100, 1), &by_age, 100);
        kept.keep(message(1, None, 600, 1), &by_age, 600);
        assert_eq!(kept.next_expiry(&by_age), Some(1100));
        assert!(kept.trim(&by_age, 1099).is_empty());
        assert_eq!(kept.trim(&by_age, 1100), [0]);
        assert_eq!(kept.trim(&by_age, 1600), [1]);
        assert_eq!(kept.next_expiry(&by_age), None);
    }

    #[test]
    fn compaction_keeps_the_latest_message_of_each_key_and_every_keyless_one() {
        let compact = retention(None, usize::MAX, true);
        let mut kept = Retained::default();
        kept.keep(message(0, Some("a"), 0, 1), &compact, 0);
        kept.keep(message(1, Some("b"), 0, 1), &compact, 0);
        kept.keep(message(2, None, 0, 1), &compact, 0);
        let dropped = kept.keep(message(3, Some("a"), 0, 1), &compact, 0);
        assert_eq!(dropped.superseded, [0]);
        let seqs: Vec<u64> = kept.from(0).map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(kept.first_since(0), Some(1));
        // A forgotten latest message (its write failed) does not let an old one stand in.
        assert!(kept.remove(3));
        let dropped = kept.keep(message(4, Some("a"), 0, 1), &compact, 0);
        assert!(dropped.superseded.is_empty());
    }
}
