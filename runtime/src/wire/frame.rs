//! The wire format of one call, sans IO: `[u32 big-endian length][u8 version][postcard]`.
//!
//! Each QUIC stream carries one request frame and one response frame, so decoding takes a
//! whole buffer. Lengths are checked before anything is allocated from them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::message::{Delivered, Outgoing, Receipt, SendError, StoredMessage};
use crate::telemetry::CallTraffic;

/// Bumped on any incompatible change; a peer speaking another version gets a clear error.
pub(crate) const PROTOCOL_VERSION: u8 = 8;
/// The largest frame a node accepts (the body limit plus room for headers).
pub(crate) const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024 + 64 * 1024;
const HEADER_BYTES: usize = 5;
/// Room for a call with a few headers and a short body.
const TYPICAL_FRAME_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// Run `method` on `service` at the receiving node.
    Call {
        service: String,
        /// The versions that may answer (a semver range), as the caller wrote it.
        range: Option<String>,
        method: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Milliseconds the caller still allows; the callee never runs longer.
        deadline_ms: u32,
        caller: String,
        request_id: String,
        /// W3C `traceparent` of the caller, if any.
        trace_context: Option<String>,
        /// How many messages, sent by which services, led to the caller's work.
        causation_depth: u32,
        causation_chain: Vec<String>,
    },
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
    /// Membership gossip, asked and answered alike: the sender itself (full TTL) and every
    /// live member it knows (with the time they have left).
    Gossip {
        members: Vec<Member>,
    },
    /// `node` is shutting down: forget this incarnation of it now. Signed by `node`
    /// ([`goodbye_words`]).
    Goodbye {
        node: String,
        address: SocketAddr,
        incarnation: u64,
        proof: Proof,
    },
    /// Nothing to say back; for `OpenStream`: accepted, raw bytes follow both ways.
    Ack,
    /// Open a raw stream to `service`'s `stream-handler`; after the answer frame the QUIC
    /// stream carries the guests' own bytes.
    OpenStream {
        service: String,
        /// The versions that may answer (a semver range), as the caller wrote it.
        range: Option<String>,
        caller: String,
        /// How long the stream may live, in milliseconds.
        deadline_ms: u32,
    },
    /// Append `message` from `sender` to `queue`, which the receiving node declares; answered
    /// `Sent` once it is on disk there, or `NotSent`.
    Send {
        queue: String,
        sender: String,
        trace_context: Option<String>,
        message: Outgoing,
        /// Milliseconds the sender still waits.
        deadline_ms: u32,
    },
    /// The message `Send` stored: its id and offset.
    Sent(Receipt),
    /// Why `Send` stored nothing.
    NotSent(SendError),
    /// Deliver `message` of `queue` to `service` on the receiving node (the `attempt`-th
    /// time); answered `Ack` (acknowledged) or `Failed` (`Unavailable`: not now, the service
    /// is busy or not here; otherwise a failed attempt).
    Deliver {
        service: String,
        queue: String,
        message: StoredMessage,
        attempt: u32,
    },
    /// A reply for the requester waiting at `to` (a reply address of the receiving node);
    /// answered `Ack`, or `NotSent` when nobody waits there any more.
    Answer {
        to: String,
        message: StoredMessage,
    },
    /// Read up to `max` stored messages of `topic` (on the receiving node) from offset `from`;
    /// answered `Messages`, or `NotSent` (unknown topic).
    Read {
        topic: String,
        from: u64,
        max: u32,
    },
    /// What `Read` found, and the offset to read from next.
    Messages {
        messages: Vec<StoredMessage>,
        next: u64,
    },
    /// How many calls the receiving node's services made, by caller and callee; answered
    /// `Traffic` (empty with its metrics off). The live page asks every peer for the mesh's
    /// call graph.
    AskTraffic,
    Traffic {
        calls: Vec<CallTraffic>,
    },
    /// `Deliver` for several messages of `queue` at once, each with its attempt; answered
    /// `Delivered` with one outcome per message, in their order (or `Failed` for all). A node
    /// that predates this frame cannot read it and resets the stream, acting on none of them:
    /// the sender then sends that node one `Deliver` per message.
    DeliverMany {
        service: String,
        queue: String,
        deliveries: Vec<(StoredMessage, u32)>,
    },
    /// The outcomes of a `DeliverMany`.
    Delivered {
        outcomes: Vec<Delivered>,
    },
}

/// One node as the mesh knows it: what the node says of itself, signed by it, so a relay
/// passes it on but cannot change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) node: String,
    /// Where its QUIC transport listens.
    pub(crate) address: SocketAddr,
    /// Changes on every start, so a goodbye or an old rumour never hides a restarted node.
    pub(crate) incarnation: u64,
    /// Counts up each time the node signs its record anew (every gossip round): only a newer
    /// beat, which only the node can sign, renews it, so a relay cannot keep a dead node alive.
    pub(crate) beat: u64,
    /// `(name, version)` of every service it runs.
    pub(crate) services: Vec<(String, String)>,
    /// The queues it declares (a guest on any node sends to them by name).
    pub(crate) queues: Vec<String>,
    /// How much longer this news is good for, in milliseconds; relays count it down, so it is
    /// not signed.
    pub(crate) ttl_ms: u32,
    /// The node's signature over [`Member::signed_words`].
    pub(crate) proof: Proof,
}

/// What a signature of a [`Member`] is for.
pub(crate) const MEMBER_PURPOSE: &str = "switchyard member record 1";
/// What a signature of a goodbye is for.
pub(crate) const GOODBYE_PURPOSE: &str = "switchyard goodbye 1";

impl Member {
    /// The words the node signs: everything but the relayed `ttl_ms` and the proof itself.
    pub(crate) fn signed_words(&self) -> Result<Vec<u8>, FrameError> {
        postcard::to_allocvec(&(
            &self.node,
            &self.address,
            self.incarnation,
            self.beat,
            &self.services,
            &self.queues,
        ))
        .map_err(|err| FrameError::Malformed(err.to_string()))
    }
}

/// The words a goodbye's signature covers.
pub(crate) fn goodbye_words(
    node: &str,
    address: SocketAddr,
    incarnation: u64,
) -> Result<Vec<u8>, FrameError> {
    postcard::to_allocvec(&(node, address, incarnation))
        .map_err(|err| FrameError::Malformed(err.to_string()))
}

/// A node's signature over words about itself, with the certificate chain (DER, the node's
/// own first) that shows which node signed and that the cluster's CA vouches for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proof {
    /// A TLS `SignatureScheme` code.
    pub(crate) scheme: u16,
    pub(crate) signature: Vec<u8>,
    pub(crate) chain: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FailureKind {
    Timeout,
    Unavailable,
    Remote,
    BadRequest,
    Rejected,
}

impl Frame {
    /// The frame's kind, for error text: a frame is never formatted whole into a message,
    /// which would copy a peer's body (of up to 16 MiB) into logs and guests' errors.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Call { .. } => "call",
            Self::Reply { .. } => "reply",
            Self::Failed { .. } => "failed",
            Self::Gossip { .. } => "gossip",
            Self::Goodbye { .. } => "goodbye",
            Self::Ack => "ack",
            Self::OpenStream { .. } => "open-stream",
            Self::Send { .. } => "send",
            Self::Sent { .. } => "sent",
            Self::NotSent(_) => "not-sent",
            Self::Deliver { .. } => "deliver",
            Self::Answer { .. } => "answer",
            Self::Read { .. } => "read",
            Self::Messages { .. } => "messages",
            Self::AskTraffic => "ask-traffic",
            Self::Traffic { .. } => "traffic",
            Self::DeliverMany { .. } => "deliver-many",
            Self::Delivered { .. } => "delivered",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    #[error("frame is truncated: {0} bytes")]
    Truncated(usize),
    #[error("frame says {declared} bytes but carries {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("frame does not decode: {0}")]
    Malformed(String),
}

pub(crate) fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    // Serialise straight after a placeholder header: one buffer, sized for a typical call so
    // it rarely grows, instead of a payload vector grown from empty and then copied.
    let mut out = Vec::with_capacity(TYPICAL_FRAME_BYTES);
    out.extend_from_slice(&[0; HEADER_BYTES]);
    let mut out =
        postcard::to_extend(frame, out).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if out.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(out.len()));
    }
    let length = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&length.to_be_bytes());
    out[4] = PROTOCOL_VERSION;
    Ok(out)
}

/// The length a frame's 4-byte prefix declares, checked against the bound, so a reader knows
/// how much to read before it allocates.
pub(crate) fn declared_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let declared = u32::from_be_bytes(prefix) as usize;
    if declared + 4 > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(declared + 4));
    }
    if declared < HEADER_BYTES - 4 {
        return Err(FrameError::Truncated(declared + 4));
    }
    Ok(declared)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FrameError::Truncated(bytes.len()));
    }
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let declared = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if declared != bytes.len() - 4 {
        return Err(FrameError::LengthMismatch {
            declared,
            actual: bytes.len() - 4,
        });
    }
    if bytes[4] != PROTOCOL_VERSION {
        return Err(FrameError::Version(bytes[4]));
    }
    postcard::from_bytes(&bytes[HEADER_BYTES..])
        .map_err(|err| FrameError::Malformed(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Frame {
        Frame::Call {
            service: "inventory".into(),
            range: Some("^1".into()),
            method: "GET /items/42".into(),
            headers: vec![("x-a".into(), "b".into())],
            body: b"hello".to_vec(),
            deadline_ms: 250,
            caller: "orders".into(),
            request_id: "abc.1".into(),
            trace_context: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            causation_depth: 2,
            causation_chain: vec!["orders".into(), "billing".into()],
        }
    }

    fn stored(seq: u64) -> StoredMessage {
        StoredMessage {
            seq,
            id: format!("orders-{seq}"),
            kind: super::super::MessageKind::Event,
            key: Some("order-1".into()),
            headers: vec![("x-a".into(), "b".into())],
            reply_to: None,
            trace_context: None,
            body: b"placed".to_vec(),
            sender: "orders".into(),
            sent_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn frames_round_trip() {
        for frame in [
            call(),
            Frame::Reply {
                status: 200,
                headers: vec![],
                body: vec![1, 2, 3],
            },
            Frame::Failed {
                kind: FailureKind::Timeout,
                message: "late".into(),
            },
            Frame::Gossip {
                members: vec![Member {
                    node: "a".into(),
                    address: SocketAddr::from(([127, 0, 0, 1], 7000)),
                    incarnation: 42,
                    beat: 7,
                    services: vec![("hello".into(), "1.0.0".into())],
                    queues: vec!["orders".into()],
                    ttl_ms: 2000,
                    proof: Proof {
                        scheme: 0x0403,
                        signature: vec![1, 2],
                        chain: vec![vec![3, 4]],
                    },
                }],
            },
            Frame::Goodbye {
                node: "a".into(),
                address: SocketAddr::from(([127, 0, 0, 1], 7000)),
                incarnation: 42,
                proof: Proof::default(),
            },
            Frame::Ack,
            Frame::OpenStream {
                service: "chat".into(),
                range: None,
                caller: "edge".into(),
                deadline_ms: 5000,
            },
            Frame::DeliverMany {
                service: "billing".into(),
                queue: "orders".into(),
                deliveries: vec![(stored(7), 1), (stored(8), 3)],
            },
            Frame::Delivered {
                outcomes: vec![
                    Delivered::Acked,
                    Delivered::NotNow("busy".into()),
                    Delivered::Failed("refused".into()),
                ],
            },
        ] {
            let bytes = encode(&frame).unwrap_or_default();
            assert_eq!(decode(&bytes), Ok(frame));
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let good = encode(&call()).unwrap_or_default();
        assert_eq!(decode(&good[..3]), Err(FrameError::Truncated(3)));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(FrameError::LengthMismatch { .. })
        ));
        let mut other_version = good.clone();
        other_version[4] = 9;
        assert_eq!(decode(&other_version), Err(FrameError::Version(9)));
        let mut garbage = good.clone();
        for byte in garbage.iter_mut().skip(5) {
            *byte = 0xff;
        }
        assert!(matches!(decode(&garbage), Err(FrameError::Malformed(_))));
        let huge = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(decode(&huge), Err(FrameError::TooLarge(_))));
        // Every prefix and a cheap deterministic scramble of a real frame: never a panic.
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
            let mut scrambled = good.clone();
            scrambled[cut] = scrambled[cut].wrapping_mul(31).wrapping_add(7);
            let _ = decode(&scrambled);
        }
    }
}
