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
