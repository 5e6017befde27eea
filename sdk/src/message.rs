use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::switchyard::runtime::types;

pub use types::MessageKind;

/// A message delivered to [`crate::Service::on_message`].
#[derive(Debug, Clone)]
pub struct Message {
    inner: types::Message,
}

impl Message {
    pub(crate) fn from_wit(inner: types::Message) -> Self {
        Self { inner }
    }

    /// The message id (unique per sender; use it to make handling idempotent).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Document, command or event.
    pub fn kind(&self) -> MessageKind {
        self.inner.kind
    }

    /// The topic or queue it arrived on.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The partitioning key, if the sender set one.
    pub fn key(&self) -> Option<&str> {
        self.inner.key.as_deref()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Its place in its queue or topic (delivered and read messages; not replies).
    pub fn offset(&self) -> Option<u64> {
        self.header("x-switchyard-offset")?.parse().ok()
    }

    /// When it was stored, in ms since the Unix epoch (delivered and read messages).
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.header("x-switchyard-timestamp")?.parse().ok()
    }

    /// Where the sender wants a reply, if anywhere.
    pub fn reply_to(&self) -> Option<&str> {
        self.inner.reply_to.as_deref()
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.inner.body).map_err(|err| {
            Error::bad_request(format!("message body is not the expected JSON: {err}"))
        })
    }

    /// Answers this message at its `reply-to`: a requester waiting in
    /// [`crate::messaging::request`] (on any node), or a queue. Fails with `unknown-queue` when
    /// the sender asked for no reply, `unavailable` when the requester stopped waiting.
    pub fn reply(
        &self,
        reply: crate::messaging::Message,
    ) -> Result<(), crate::messaging::SendError> {
        let to = self.reply_to().ok_or_else(|| {
            crate::messaging::SendError::UnknownQueue(format!(
                "message {} asks for no reply (it has no reply-to)",
                self.id()
            ))
        })?;
        reply.reply(to)
    }

    /// The body decoded as postcard.
    pub fn postcard<T: DeserializeOwned>(&self) -> Result<T, Error> {
        postcard::from_bytes(&self.inner.body).map_err(|err| {
            Error::bad_request(format!("message body is not the expected postcard: {err}"))
        })
    }
}
