//! What a message is, wherever it is stored or sent.

use serde::{Deserialize, Serialize};

/// What a message means to its receiver (the WIT `message-kind`). Stored as one byte, the
/// same byte the logs held before this was an enum: 0 document, 1 command, 2 event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub(crate) enum MessageKind {
    Document,
    Command,
    Event,
}

impl From<MessageKind> for u8 {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Document => 0,
            MessageKind::Command => 1,
            MessageKind::Event => 2,
        }
    }
}

impl TryFrom<u8> for MessageKind {
    type Error = String;

    fn try_from(byte: u8) -> Result<Self, String> {
        match byte {
            0 => Ok(Self::Document),
            1 => Ok(Self::Command),
            2 => Ok(Self::Event),
            other => Err(format!(
                "message kind {other} is not 0 (document), 1 (command) or 2 (event)"
            )),
        }
    }
}

/// A message as the log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    /// Position in the queue; ids and replay order come from it.
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) kind: MessageKind,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) reply_to: Option<String>,
    pub(crate) trace_context: Option<String>,
    pub(crate) body: Vec<u8>,
    /// The service that sent it.
    pub(crate) sender: String,
    pub(crate) sent_at_ms: u64,
}

/// Where a sent or published message was stored: its id and its offset in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) id: String,
    pub(crate) offset: u64,
}

/// What a guest asks to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outgoing {
    /// The id its sender fixed (an outbox entry's, so that a message relayed twice keeps it
    /// and its consumer can drop the duplicate); none: the log gives it one.
    pub(crate) id: Option<String>,
    pub(crate) kind: MessageKind,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) reply_to: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// How one delivery went (a peer tells it for each message of a `DeliverMany` frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Delivered {
    /// The subscriber acknowledged it.
    Acked,
    /// The subscriber refused it or failed on it (counts an attempt).
    Failed(String),
    /// The subscriber cannot take it right now (busy, not running); it waits, no attempt.
    NotNow(String),
}

/// Why a `send` was refused. Each message names the queue and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_the_byte_it_always_was_and_an_unknown_byte_is_refused() {
        for (kind, byte) in [
            (MessageKind::Document, 0u8),
            (MessageKind::Command, 1),
            (MessageKind::Event, 2),
        ] {
            assert_eq!(postcard::to_stdvec(&kind).ok(), Some(vec![byte]));
            assert_eq!(
                postcard::from_bytes::<MessageKind>(&[byte]).ok(),
                Some(kind)
            );
        }
        assert!(postcard::from_bytes::<MessageKind>(&[3]).is_err());
    }
}
