//! What a guest's imports reach beyond its own store, as traits: `rpc` implements [`Calls`],
//! `messaging` implements [`Queues`]. The host sits below both and names neither; the node
//! plugs them in when it builds a service's [`super::GuestContext`].

use std::time::Duration;

use crate::call::{ByteStream, Call, CallError, Connection, Instance, Reply, Target};
use crate::util::BoxFuture;
use crate::wire::MessageKind;

/// Calls, lookups and raw streams to other services, on this node or its peers.
pub(crate) trait Calls: Send + Sync {
    /// Runs `call` through the policies bound to it and returns the callee's reply.
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>>;
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

/// Durable sends to queues.
pub(crate) trait Queues: Send + Sync {
    /// Returns the message's id once it is stored.
    fn send<'a>(
        &'a self,
        queue: &'a str,
        sender: &'a str,
        trace_context: Option<String>,
        message: Outgoing,
    ) -> BoxFuture<'a, Result<String, SendError>>;
}

/// What a guest asks to send.
pub(crate) struct Outgoing {
    pub(crate) kind: MessageKind,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) reply_to: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// Why a `send` was refused. Each message names the queue and what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("{0}")]
    UnknownQueue(String),
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
}
