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

/// Header: how many messages led to this one (1 for one sent while handling no message).
pub(crate) const CAUSATION_DEPTH_HEADER: &str = "x-switchyard-causation-depth";
/// Header: the services that sent each message of the chain, first first, comma-separated.
pub(crate) const CAUSATION_CHAIN_HEADER: &str = "x-switchyard-causation-chain";

/// Where a message comes from in a chain of messages, each sent while handling the one before:
/// the loop guard stops a chain that grows past a limit (a loop between services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Causation {
    /// 0 for work that no message caused (an HTTP request).
    pub(crate) depth: u32,
    /// The services that sent each message of the chain.
    pub(crate) chain: Vec<String>,
}

impl Causation {
    /// The causation a message's node headers carry (none: depth 0).
    pub(crate) fn of(headers: &[(String, String)]) -> Self {
        let value = |name: &str| {
            headers
                .iter()
                .find(|(header, _)| header == name)
                .map(|(_, value)| value.as_str())
        };
        let depth = value(CAUSATION_DEPTH_HEADER)
            .and_then(|depth| depth.parse().ok())
            .unwrap_or(0);
        let chain = value(CAUSATION_CHAIN_HEADER)
            .map(|chain| chain.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        Self { depth, chain }
    }

    /// The causation of a message that `sender` sends while handling work of this one.
    pub(crate) fn then(&self, sender: &str) -> Self {
        let mut chain = self.chain.clone();
        chain.push(sender.to_owned());
        Self {
            depth: self.depth.saturating_add(1),
            chain,
        }
    }

    /// Sets this causation's headers on a message (after the sender's node headers were
    /// dropped).
    pub(crate) fn stamp(&self, headers: &mut Vec<(String, String)>) {
        headers.push((CAUSATION_DEPTH_HEADER.into(), self.depth.to_string()));
        headers.push((CAUSATION_CHAIN_HEADER.into(), self.chain.join(",")));
    }

    /// The chain as a log line and a dead letter name it: `a → b → a`.
    pub(crate) fn path(&self) -> String {
        self.chain.join(" → ")
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

/// What a guest asks to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outgoing {
    pub(crate) kind: MessageKind,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) reply_to: Option<String>,
    pub(crate) body: Vec<u8>,
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

    #[test]
    fn a_chain_grows_by_one_sender_per_message_and_reads_back_from_its_headers() {
        let first = Causation::default().then("orders");
        let second = first.then("billing");
        let mut headers = vec![("x-other".to_owned(), "1".to_owned())];
        second.stamp(&mut headers);
        let read = Causation::of(&headers);
        assert_eq!(read, second);
        assert_eq!(read.depth, 2);
        assert_eq!(read.path(), "orders → billing");
        assert_eq!(Causation::of(&[]), Causation::default());
    }
}
