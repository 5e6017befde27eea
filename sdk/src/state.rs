//! This service's own durable keys, and transactions that also send messages (the
//! transactional outbox).
//!
//! Keys belong to the service: no other service sees them, and they survive a hot swap and a
//! restart of the node. Every value has a version; a [`Transaction`] remembers the version of
//! each key it reads, and its commit fails with [`StateError::Conflict`] (storing nothing) if
//! one of them changed meanwhile. [`transact`] runs a closure and retries it on a conflict.
//!
//! A transaction can [`send`](Transaction::send) and [`publish`](Transaction::publish): the
//! messages are stored with the writes in one commit, and the node hands them to their queues
//! and topics afterwards, so they go if and only if the writes are stored, even across a crash.
//!
//! ```no_run
//! use switchyard_sdk::{messaging, state, Error, Request, Response};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order { id: String, total_cents: u64 }
//!
//! fn place(req: Request) -> Result<Response, Error> {
//!     let order: Order = req.json()?;
//!     let key = format!("order/{}", order.id);
//!     state::transact(|tx| {
//!         if tx.get(&key)?.is_some() {
//!             return Err(Error::new(409, "that order exists"));
//!         }
//!         tx.put_json(&key, &order)?;
//!         tx.publish("order-events", messaging::Message::json(&order)?.key(&order.id));
//!         Ok(())
//!     })?;
//!     Ok(Response::text("placed\n").with_status(201))
//! }
//! ```
//!
//! A consumer of such messages gets each at least once. To act on each exactly once, check
//! the message's id in the same transaction as the effect with [`Transaction::first_time`]:
//!
//! ```no_run
//! use switchyard_sdk::{state, Error, Message};
//!
//! fn on_message(msg: Message) -> Result<(), Error> {
//!     state::transact(|tx| {
//!         if !tx.first_time(msg.id())? {
//!             return Ok(()); // a duplicate: its effect is stored already
//!         }
//!         let total: u64 = tx.get_json("billed-cents")?.unwrap_or(0);
//!         tx.put_json("billed-cents", &(total + 1250))?;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! The ids it records stay until [`forget_handled`] removes the old ones: call it now and then
//! (say, every thousandth message) with a window longer than a duplicate can arrive late (a
//! relay sends again only after a crash of the sending node, so hours are plenty), or they
//! grow until the service's `state_max_mb`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::switchyard::runtime::state as wit;

pub use wit::StateError;

/// Where [`Transaction::first_time`] keeps the ids it has seen.
pub const HANDLED_PREFIX: &str = "__switchyard/handled/";

/// How often [`transact`] runs its closure before it gives up on conflicts.
pub const MAX_ATTEMPTS: u32 = 16;

/// The value of `key`, if stored.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
    Ok(wit::get(key)?.map(|entry| entry.value))
}

/// The value of `key` decoded from JSON, if stored.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    get(key)?.map(|value| decode(key, &value)).transpose()
}

/// Stores `value` at `key` (one commit); returns its version.
pub fn put(key: &str, value: impl AsRef<[u8]>) -> Result<u64, StateError> {
    wit::put(key, value.as_ref())
}

/// Stores `value` as JSON at `key` (one commit); returns its version.
pub fn put_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<u64, Error> {
    Ok(put(key, encode(key, value)?)?)
}

/// Removes `key` (one commit); whether it was there.
pub fn delete(key: &str) -> Result<bool, StateError> {
    wit::delete(key)
}

/// Every stored `(key, value)` whose key starts with `prefix`, in key order, read a page at a
/// time. Each item is a `Result`: a page can fail to load.
pub fn scan(prefix: &str) -> Scan {
    Scan {
        prefix: prefix.to_owned(),
        after: None,
        page: Vec::new().into_iter(),
        done: false,
    }
}

/// The iterator [`scan`] returns.
#[derive(Debug)]
pub struct Scan {
    prefix: String,
    after: Option<String>,
    page: std::vec::IntoIter<wit::Entry>,
    done: bool,
}

impl Iterator for Scan {
    type Item = Result<(String, Vec<u8>), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok((entry.key, entry.value)));
            }
            if self.done {
                return None;
            }
            match wit::scan(&self.prefix, self.after.as_deref(), 256) {
                Ok(page) => {
                    self.done = page.next.is_none();
                    self.after = page.next;
                    self.page = page.entries.into_iter();
                }
                Err(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
            }
        }
    }
}

/// Reads, writes and messages committed together; see the module docs.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Keys read, and their versions then (0: absent).
    reads: BTreeMap<String, u64>,
    /// The last write of each key (`None`: delete); later reads of it see it.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    messages: Vec<wit::OutboxMessage>,
}

/// What a commit stored.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The version its writes got.
    pub version: u64,
    /// The ids of the messages it sent, in order: each keeps its id however often the node
    /// relays it.
    pub message_ids: Vec<String>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key` as this transaction sees it: its own write if it made one, else the
    /// stored value (whose version the commit checks).
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(written) = self.writes.get(key) {
            return Ok(written.clone());
        }
        let entry = wit::get(key)?;
        self.reads
            .entry(key.to_owned())
            .or_insert(entry.as_ref().map_or(0, |entry| entry.version));
        Ok(entry.map(|entry| entry.value))
    }

    /// [`Transaction::get`], decoded from JSON.
    pub fn get_json<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, Error> {
        self.get(key)?.map(|value| decode(key, &value)).transpose()
    }

    /// Stores `value` at `key` when the transaction commits.
    pub fn put(&mut self, key: &str, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.to_owned(), Some(value.into()));
    }

    /// Stores `value` as JSON at `key` when the transaction commits.
    pub fn put_json<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        self.put(key, encode(key, value)?);
        Ok(())
    }

    /// Removes `key` when the transaction commits.
    pub fn delete(&mut self, key: &str) {
        self.writes.insert(key.to_owned(), None);
    }

    /// Sends `message` to `queue` if (and once) the transaction commits.
    pub fn send(&mut self, queue: &str, message: crate::messaging::Message) {
        self.messages.push(wit::OutboxMessage {
            destination: queue.to_owned(),
            message: message.into_outgoing(),
        });
    }

    /// Publishes `message` to `topic` if (and once) the transaction commits.
    pub fn publish(&mut self, topic: &str, message: crate::messaging::Message) {
        self.send(topic, message);
    }

    /// Whether this is the first time this service handles the message with id
    /// `message_id`: `true` records it (in this transaction, so the record and the message's
    /// effects are stored together or not at all); `false` means a commit already stored it:
    /// the message is a duplicate, and its effects are stored already.
    pub fn first_time(&mut self, message_id: &str) -> Result<bool, StateError> {
        let key = format!("{HANDLED_PREFIX}{message_id}");
        if self.get(&key)?.is_some() {
            return Ok(false);
        }
        // When it was handled, for forget_handled.
        self.put(&key, now_ms().to_le_bytes().to_vec());
        Ok(true)
    }

    /// Stores the writes and messages atomically, or nothing (`Conflict` if a key it read
    /// changed since).
    pub fn commit(self) -> Result<Committed, StateError> {
        let committed = wit::commit(&wit::Transaction {
            reads: self
                .reads
                .into_iter()
                .map(|(key, version)| wit::ReadVersion { key, version })
                .collect(),
            writes: self
                .writes
                .into_iter()
                .map(|(key, value)| wit::Write { key, value })
                .collect(),
            messages: self.messages,
        })?;
        Ok(Committed {
            version: committed.version,
            message_ids: committed.message_ids,
        })
    }
}

/// Removes the ids [`Transaction::first_time`] recorded more than `older_than` ago; how
/// many. A duplicate of a forgotten message would be handled again, so pick a window longer
/// than a duplicate can come late.
pub fn forget_handled(older_than: std::time::Duration) -> Result<usize, StateError> {
    let cutoff = now_ms().saturating_sub(older_than.as_millis() as u64);
    let mut old = Vec::new();
    for entry in scan(HANDLED_PREFIX) {
        let (key, value) = entry?;
        let handled_at = value
            .get(..8)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        if handled_at < cutoff {
            old.push(key);
        }
    }
    let forgotten = old.len();
    // A transaction holds at most 1000 writes.
    for chunk in old.chunks(1000) {
        let mut transaction = Transaction::new();
        for key in chunk {
            transaction.delete(key);
        }
        transaction.commit()?;
    }
    Ok(forgotten)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Runs `work` in a fresh [`Transaction`] and commits it; on a conflict, runs it again (at
/// most [`MAX_ATTEMPTS`] times). An `Err` from `work` stores nothing and is returned.
pub fn transact<T>(mut work: impl FnMut(&mut Transaction) -> Result<T, Error>) -> Result<T, Error> {
    let mut attempt = 1;
    loop {
        let mut transaction = Transaction::new();
        let value = work(&mut transaction)?;
        match transaction.commit() {
            Ok(_) => return Ok(value),
            Err(StateError::Conflict(_)) if attempt < MAX_ATTEMPTS => attempt += 1,
            Err(err) => return Err(err.into()),
        }
    }
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value)
        .map_err(|err| Error::internal(format!("cannot encode the value of `{key}`: {err}")))
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(value).map_err(|err| {
        Error::internal(format!(
            "the stored value of `{key}` is not the JSON this code expects: {err}"
        ))
    })
}

impl From<StateError> for Error {
    /// A conflict: 409 (retry); too large: 413; invalid: 500 (the service needs fixing);
    /// unavailable: 503.
    fn from(err: StateError) -> Self {
        match err {
            StateError::Conflict(why) => Error::new(409, format!("state conflict: {why}")),
            StateError::TooLarge(why) => Error::new(413, format!("state too large: {why}")),
            StateError::Invalid(why) => Error::new(500, format!("invalid state request: {why}")),
            StateError::Unavailable(why) => Error::new(503, format!("state unavailable: {why}")),
        }
    }
}
