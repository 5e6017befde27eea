//! What a guest's imports reach beyond its own store, as traits: `rpc` implements [`Calls`],
//! `messaging` implements [`Queues`]. The host sits below both and names neither; the node
//! plugs them in when it builds a service's [`super::GuestContext`].

use std::time::Duration;

use crate::call::{ByteStream, Call, CallError, CallService, Connection, Instance, Reply, Target};
use crate::util::BoxFuture;
pub(crate) use crate::wire::{Outgoing, Receipt, SendError, StoredMessage};

/// Calls, lookups and raw streams to other services, on this node or its peers.
pub(crate) trait Calls: Send + Sync {
    /// Runs `call` through the policies bound to it and returns the callee's reply.
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>>;
    /// Runs `call` through the policies bound to it (by its caller, and by its target's name
    /// as the callee) to `endpoint` instead of a routed instance: a guest's request to a host
    /// outside the mesh. Traced, counted and logged as a call.
    fn call_outside<'a>(
        &'a self,
        call: Call,
        endpoint: &'a dyn CallService,
    ) -> BoxFuture<'a, Result<Reply, CallError>>;
    /// The time a call from `caller` to `service` leaves its caller, if the node's bindings
    /// set it (`reserve_ms`).
    fn reserve(&self, caller: &str, service: &str) -> Option<Duration>;
    /// Healthy instances of `target`: this node's first, then peers'.
    fn resolve(&self, target: &Target) -> Vec<Instance>;
    /// Picks the instance a guest's `quic.connect` goes to.
    fn connect(&self, target: Target) -> Result<Connection, CallError>;
    /// Opens a raw stream to `connection`'s instance, for at most `budget`.
    fn open_stream<'a>(
        &'a self,
        connection: &'a Connection,
        caller: &'a str,
        budget: Duration,
    ) -> BoxFuture<'a, Result<ByteStream, CallError>>;
}

/// Durable sends to queues and topics, and reads of topics.
pub(crate) trait Queues: Send + Sync {
    /// Returns the message's id and offset once it is stored (on the node that declares the
    /// queue or topic), or fails within `budget`.
    fn send<'a>(
        &'a self,
        queue: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        budget: Duration,
    ) -> BoxFuture<'a, Result<Receipt, SendError>>;
    /// Up to `max` stored messages of `topic` from offset `from`, and the offset after them,
    /// within `budget`.
    fn read<'a>(
        &'a self,
        topic: &'a str,
        from: u64,
        max: usize,
        budget: Duration,
    ) -> BoxFuture<'a, Result<(Vec<StoredMessage>, u64), SendError>>;
    /// Sends `message` to `destination` with a reply address and returns the first reply
    /// within `timeout`.
    fn request<'a>(
        &'a self,
        destination: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<StoredMessage, RequestError>>;
    /// Publishes `message` to `destination` with a reply address and returns every reply
    /// that arrives within `window`.
    fn request_all<'a>(
        &'a self,
        destination: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        window: Duration,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, RequestError>>;
    /// Answers a message at its `reply-to`, `to` (a waiting requester, or a queue), within
    /// `budget`.
    fn reply<'a>(
        &'a self,
        to: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
        budget: Duration,
    ) -> BoxFuture<'a, Result<(), SendError>>;
}

/// Why a request over messages got no reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error(transparent)]
    NotSent(SendError),
    #[error("{0}")]
    Timeout(String),
}

/// A service's durable key-value state and its outbox (the `state` module implements it).
/// Every method names the service: a guest reaches only its own keys because the host passes
/// its service's name, never one the guest chose.
pub(crate) trait StateStore: Send + Sync {
    /// The value of `key`, if stored.
    fn get(&self, service: &str, key: &str) -> Result<Option<StateEntry>, StateError>;
    /// Up to `limit` keys of `service` starting with `prefix`, after `after`, in key order.
    fn scan(
        &self,
        service: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatePage, StateError>;
    /// Stores `transaction` atomically (writes and outbox, one fsync), keeping `service`'s
    /// state within `max_bytes`.
    fn commit<'a>(
        &'a self,
        service: &'a str,
        max_bytes: u64,
        transaction: Transaction,
    ) -> BoxFuture<'a, Result<Committed, StateError>>;
}

/// A stored key, its value and the commit that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateEntry {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) version: u64,
}

/// One page of a scan; `next` is the `after` of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct StatePage {
    pub(crate) entries: Vec<StateEntry>,
    pub(crate) next: Option<String>,
}

/// What a guest commits: the versions it read, its writes and its outbox messages.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transaction {
    /// Keys read and their versions then (0: absent); a changed one fails the commit.
    pub(crate) reads: Vec<(String, u64)>,
    /// New values, or `None` to delete.
    pub(crate) writes: Vec<(String, Option<Vec<u8>>)>,
    pub(crate) messages: Vec<OutboxMessage>,
}

/// A message a transaction sends once it commits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OutboxMessage {
    /// A queue or topic, anywhere in the mesh.
    pub(crate) destination: String,
    /// W3C `traceparent` of the work that committed it.
    pub(crate) trace_context: Option<String>,
    pub(crate) message: Outgoing,
}

/// What a commit stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) version: u64,
    /// The ids of its outbox messages, in order.
    pub(crate) message_ids: Vec<String>,
    /// How many of its deletes removed a stored key.
    pub(crate) removed: usize,
}

/// Why a state operation stored nothing. Each message says what and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StateError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}
