//! Queues across the mesh. A queue lives on the node that declares it (no central broker);
//! peers learn which node that is from its signed member record. A guest on another node sends
//! to it by name: the send goes to the owner as a `Send` frame and returns once the owner has
//! the message on disk. A queue's subscriber may run on any node: a delivery to a service that
//! does not run here goes to a node that runs it as a `Deliver` frame, and its answer settles
//! the message like a local one.
//!
//! Both ride the mesh's QUIC transport and are bounded in time: a send within the sender's
//! deadline (an owner that is down makes it fail with `unavailable`, never hang), a delivery
//! within [`DELIVERY_TIMEOUT`]. A delivery whose answer is lost (the peer went away mid-way)
//! is offered again without counting an attempt: at least once, as on one node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Delivered;
use crate::discovery::Registry;
use crate::transport::Transport;
use crate::wire::{FailureKind, Frame, Outgoing, Receipt, SendError, StoredMessage};

/// How long a delivery to another node may take, answer included: past the longest
/// `timeout_ms` a service is likely to have.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// This node's way to the queues and subscribers of its peers.
pub(crate) struct MeshQueues {
    transport: Arc<Transport>,
    registry: Arc<Registry>,
    /// Deliveries take the nodes that run a subscriber in turn.
    next: AtomicUsize,
}

impl MeshQueues {
    pub(crate) fn new(transport: Arc<Transport>, registry: Arc<Registry>) -> Self {
        Self {
            transport,
            registry,
            next: AtomicUsize::new(0),
        }
    }

    /// The peer that declares `queue`, if one does.
    pub(crate) fn owner_of(&self, queue: &str) -> Option<SocketAddr> {
        self.registry.owner_of(queue)
    }

    /// Sends `message` to `queue` on `owner`, the node that declares it; returns its id once
    /// that node has it on disk, or why not, within `budget`.
    pub(crate) async fn send(
        &self,
        owner: SocketAddr,
        queue: &str,
        sender: &str,
        trace_context: Option<String>,
        message: Outgoing,
        budget: Duration,
    ) -> Result<Receipt, SendError> {
        let frame = Frame::Send {
            queue: queue.to_owned(),
            sender: sender.to_owned(),
            trace_context,
            message,
            deadline_ms: u32::try_from(budget.as_millis()).unwrap_or(u32::MAX),
        };
        let unavailable = |why: String| {
            SendError::Unavailable(format!(
                "queue `{queue}` lives on the node at {owner}, which did not take the message: \
                 {why}"
            ))
        };
        match taken(
            self.transport.request(owner, &frame, budget).await,
            &unavailable,
        )? {
            Frame::Sent(receipt) => Ok(receipt),
            other => Err(unavailable(format!(
                "it answered with a {} frame",
                other.kind()
            ))),
        }
    }

    /// Reads up to `max` stored messages of `topic` on `owner` from offset `from`, within
    /// `budget`.
    pub(crate) async fn read(
        &self,
        owner: SocketAddr,
        topic: &str,
        from: u64,
        max: u32,
        budget: Duration,
    ) -> Result<(Vec<StoredMessage>, u64), SendError> {
        let frame = Frame::Read {
            topic: topic.to_owned(),
            from,
            max,
        };
        let unavailable = |why: String| {
            SendError::Unavailable(format!(
                "topic `{topic}` lives on the node at {owner}, which did not answer the read: \
                 {why}"
            ))
        };
        match taken(
            self.transport.request(owner, &frame, budget).await,
            &unavailable,
        )? {
            Frame::Messages { messages, next } => Ok((messages, next)),
            other => Err(unavailable(format!(
                "it answered with a {} frame",
                other.kind()
            ))),
        }
    }

    /// Hands `reply` to the requester waiting at `to` on `node`, within `budget`.
    pub(crate) async fn answer(
        &self,
        node: &str,
        to: &str,
        reply: StoredMessage,
        budget: Duration,
    ) -> Result<(), SendError> {
        let Some(peer) = self.registry.address_of(node) else {
            return Err(SendError::Unavailable(format!(
                "`{to}` is a reply address of node `{node}`, which this node does not know (it \
                 may be down)"
            )));
        };
        let frame = Frame::Answer {
            to: to.to_owned(),
            message: reply,
        };
        let unavailable =
            |why: String| SendError::Unavailable(format!("node `{node}` at {peer}: {why}"));
        match taken(
            self.transport.request(peer, &frame, budget).await,
            &unavailable,
        )? {
            Frame::Ack => Ok(()),
            other => Err(unavailable(format!(
                "it answered with a {} frame",
                other.kind()
            ))),
        }
    }

    /// Delivers `message` of `queue` to `service` on a peer that runs it (the peers that do,
    /// in turn).
    pub(crate) async fn deliver(
        &self,
        service: &str,
        queue: &str,
        message: &StoredMessage,
        attempt: u32,
    ) -> Delivered {
        let peers = self.registry.candidates(service, None);
        if peers.is_empty() {
            return Delivered::NotNow(format!(
                "`{service}` runs neither on this node nor on a peer it knows"
            ));
        }
        let peer = peers[self.next.fetch_add(1, Ordering::Relaxed) % peers.len()];
        let frame = Frame::Deliver {
            service: service.to_owned(),
            queue: queue.to_owned(),
            message: message.clone(),
            attempt,
        };
        match self.transport.request(peer, &frame, DELIVERY_TIMEOUT).await {
            Ok(Frame::Ack) => Delivered::Acked,
            Ok(Frame::Failed {
                kind: FailureKind::Unavailable,
                message,
            }) => Delivered::NotNow(format!("`{service}` on {peer}: {message}")),
            Ok(Frame::Failed { message, .. }) => Delivered::Failed(message),
            Ok(other) => Delivered::NotNow(format!(
                "`{service}` on {peer} answered a delivery with a {} frame",
                other.kind()
            )),
            // It may have handled it; offered again without an attempt, as at-least-once allows.
            Err(error) => Delivered::NotNow(format!("`{service}` on {peer}: {error}")),
        }
    }
}

/// A peer's answer to a `Send` or an `Answer` frame, or why it did not take the message:
/// its refusal, or `unavailable` (a failure, or no answer).
fn taken(
    answer: Result<Frame, crate::transport::TransportError>,
    unavailable: &impl Fn(String) -> SendError,
) -> Result<Frame, SendError> {
    match answer {
        Ok(Frame::NotSent(refused)) => Err(refused),
        Ok(Frame::Failed { message, .. }) => Err(unavailable(message)),
        Ok(frame) => Ok(frame),
        Err(error) => Err(unavailable(error.to_string())),
    }
}
