//! Sending messages to durable queues and publishing them to topics (on this node or any node
//! of the mesh), reading a topic's history ([`read`]), and request/response over messages:
//! [`Message::request`] waits for the first reply, which a consumer sends with
//! [`crate::Message::reply`]; [`Message::request_all`] collects every reply within a window.
//!
//! ```no_run
//! use switchyard_sdk::{messaging, Error, Request, Response};
//!
//! fn place(req: Request) -> Result<Response, Error> {
//!     // Returns once the message is on disk; `?` answers 503 when the queue is full.
//!     let id = messaging::Message::new(req.body().to_vec())
//!         .key("customer-42")
//!         .header("content-type", "application/json")
//!         .send("orders")?;
//!     Ok(Response::text(id).with_status(202))
//! }
//! ```
//!
//! A topic keeps its messages and every subscribing service gets each one:
//!
//! ```no_run
//! use switchyard_sdk::{messaging, Error};
//!
//! #[derive(serde::Serialize)]
//! struct OrderPlaced { order: u64, total_cents: u64 }
//!
//! fn placed(order: u64) -> Result<u64, Error> {
//!     let offset = messaging::Message::json(&OrderPlaced { order, total_cents: 1250 })?
//!         .key(&order.to_string())
//!         .publish("order-events")?;
//!     Ok(offset)
//! }
//!
//! /// Rebuilds a total from the whole history, a page at a time.
//! fn total() -> Result<u64, Error> {
//!     let (mut from, mut orders) = (0, 0);
//!     loop {
//!         let page = messaging::read("order-events", from, 500)?;
//!         let Some(last) = page.last() else { return Ok(orders) };
//!         from = last.offset().unwrap_or(from) + 1;
//!         orders += page.len() as u64;
//!     }
//! }
//! ```
//!
//! A queue's subscriber (a service named in the manifest's `[[queue]]`) gets each message in
//! [`crate::Service::on_message`] at least once: return `Ok` to acknowledge it, `Err` to have
//! the queue's policies decide on a redelivery. Make handling idempotent with the message id.

use serde::Serialize;

use crate::Error;
use crate::bindings::switchyard::runtime::messaging as wit;
use crate::bindings::switchyard::runtime::types::MessageKind;

pub use wit::{RequestError, SendError};

/// A message to build and send; see the module docs.
#[derive(Debug, Clone)]
pub struct Message {
    inner: wit::OutgoingMessage,
}

impl Message {
    /// An event message with `body`.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            inner: wit::OutgoingMessage {
                kind: MessageKind::Event,
                key: None,
                headers: Vec::new(),
                reply_to: None,
                body: body.into(),
            },
        }
    }

    /// A message whose body is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|err| Error::internal(format!("cannot encode the message: {err}")))?;
        Ok(Self::new(body).header("content-type", "application/json"))
    }

    /// A message whose body is `value` as postcard (compact binary; the subscriber reads it
    /// with [`crate::Message::postcard`]).
    pub fn postcard<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        let body = postcard::to_stdvec(value)
            .map_err(|err| Error::internal(format!("cannot encode the message: {err}")))?;
        Ok(Self::new(body).header("content-type", "application/postcard"))
    }

    /// Document, command or event (the default).
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.inner.kind = kind;
        self
    }

    /// The partitioning / ordering key.
    pub fn key(mut self, key: &str) -> Self {
        self.inner.key = Some(key.to_owned());
        self
    }

    /// Adds a header (names are lower-cased).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.inner
            .headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Where a reply should go.
    pub fn reply_to(mut self, to: &str) -> Self {
        self.inner.reply_to = Some(to.to_owned());
        self
    }

    /// The message as the WIT interfaces take it.
    pub(crate) fn into_outgoing(self) -> wit::OutgoingMessage {
        self.inner
    }

    /// Appends it to `queue`; returns its id once it is stored.
    pub fn send(self, queue: &str) -> Result<String, SendError> {
        #[cfg(target_arch = "wasm32")]
        return wit::send(queue, &self.inner);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::send(queue, &self.inner);
    }

    /// Publishes it to `topic` (a queue takes it too); returns its offset once it is stored.
    pub fn publish(self, topic: &str) -> Result<u64, SendError> {
        #[cfg(target_arch = "wasm32")]
        return wit::publish(topic, &self.inner);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::publish(topic, &self.inner);
    }

    /// Publishes it to `topic` as a request and returns every reply that arrives within
    /// `window` (none: an empty list). Each subscriber answers with
    /// [`crate::Message::reply`].
    pub fn request_all(
        self,
        topic: &str,
        window: std::time::Duration,
    ) -> Result<Vec<crate::Message>, RequestError> {
        let window_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
        #[cfg(target_arch = "wasm32")]
        let replies = wit::request_all(topic, &self.inner, window_ms)?;
        #[cfg(not(target_arch = "wasm32"))]
        let replies = {
            let _ = window_ms;
            crate::testing::request_all(topic, &self.inner)
        };
        Ok(replies.into_iter().map(crate::Message::from_wit).collect())
    }

    /// Sends it to `queue` as a request and waits at most `timeout` for the first reply
    /// (request/response over messages; the consumer answers with
    /// [`crate::Message::reply`]).
    pub fn request(
        self,
        queue: &str,
        timeout: std::time::Duration,
    ) -> Result<crate::Message, RequestError> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        #[cfg(target_arch = "wasm32")]
        let reply = wit::request(queue, &self.inner, timeout_ms)?;
        #[cfg(not(target_arch = "wasm32"))]
        let reply = {
            let _ = timeout_ms;
            crate::testing::request(queue, &self.inner)?
        };
        Ok(crate::Message::from_wit(reply))
    }

    /// Sends it as the answer to a message whose `reply-to` is `to`.
    pub fn reply(self, to: &str) -> Result<(), SendError> {
        #[cfg(target_arch = "wasm32")]
        return wit::reply(to, &self.inner);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::reply_with(to, &self.inner);
    }
}

/// Sends `body` to `queue` as a request and waits at most `timeout` for the first reply.
pub fn request(
    queue: &str,
    body: impl Into<Vec<u8>>,
    timeout: std::time::Duration,
) -> Result<crate::Message, RequestError> {
    Message::new(body).request(queue, timeout)
}

/// Up to `max` stored messages of `topic` from offset `from` on, in order (see the module
/// docs); empty when there is nothing from there on yet.
pub fn read(topic: &str, from: u64, max: u32) -> Result<Vec<crate::Message>, SendError> {
    #[cfg(target_arch = "wasm32")]
    let messages = wit::read(topic, from, max)?;
    #[cfg(not(target_arch = "wasm32"))]
    let messages = crate::testing::read(topic, from, max);
    Ok(messages.into_iter().map(crate::Message::from_wit).collect())
}

/// Publishes `body` as an event to `topic`; returns its offset once it is stored.
pub fn publish(topic: &str, body: impl Into<Vec<u8>>) -> Result<u64, SendError> {
    Message::new(body).publish(topic)
}

/// Sends `body` as an event to `queue`; returns its id once it is stored.
pub fn send(queue: &str, body: impl Into<Vec<u8>>) -> Result<String, SendError> {
    Message::new(body).send(queue)
}

impl From<SendError> for Error {
    /// Full or unavailable: 503 (the client may retry); unknown queue or too large: 500 (the
    /// service or the manifest needs fixing).
    fn from(err: SendError) -> Self {
        let status = match &err {
            SendError::Full(_) | SendError::Unavailable(_) => 503,
            SendError::UnknownQueue(_) | SendError::TooLarge(_) => 500,
        };
        let reason = match err {
            SendError::UnknownQueue(why) => format!("unknown queue or topic: {why}"),
            SendError::Full(why) => format!("queue full: {why}"),
            SendError::TooLarge(why) => format!("message too large: {why}"),
            SendError::Unavailable(why) => format!("queue unavailable: {why}"),
        };
        Error::new(status, reason)
    }
}

impl From<RequestError> for Error {
    /// No reply in time: 504; not sent: as a failed send.
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::NotSent(send) => send.into(),
            RequestError::Timeout(why) => Error::new(504, format!("no reply: {why}")),
        }
    }
}
