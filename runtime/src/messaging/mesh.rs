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
//!
//! Deliveries to one peer's service go in batches, a `DeliverMany` frame each: a QUIC stream
//! per message cost more than the delivery itself. A delivery joins the queue of its peer,
//! service and queue; up to [`FRAMES_IN_FLIGHT`] frames are on their way at once, each with
//! whatever queued up meanwhile (up to [`BATCH_MESSAGES`] messages, [`BATCH_BYTES`] of
//! bodies), so a lone delivery goes at once and a busy subscription fills its frames. A peer
//! that runs an older switchyard cannot read the frame (it resets the stream, acting on
//! none of it): it gets one `Deliver` per message for [`SINGLES_FOR`], then is tried again.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Delivered;
use crate::discovery::Registry;
use crate::transport::{Transport, TransportError};
use crate::wire::{FailureKind, Frame, Outgoing, Receipt, SendError, StoredMessage};

/// How long a delivery to another node may take, answer included: past the longest
/// `timeout_ms` a service is likely to have.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// `DeliverMany` frames on their way at once to one peer's service, per queue.
const FRAMES_IN_FLIGHT: usize = 4;
/// The most messages, and bytes of bodies (but always one message), one frame carries.
const BATCH_MESSAGES: usize = 64;
const BATCH_BYTES: usize = 1024 * 1024;
/// How long a peer that could not read a `DeliverMany` gets one `Deliver` per message.
const SINGLES_FOR: Duration = Duration::from_secs(60);

/// This node's way to the queues and subscribers of its peers.
pub(crate) struct MeshQueues {
    transport: Arc<Transport>,
    registry: Arc<Registry>,
    /// Deliveries take the nodes that run a subscriber in turn.
    next: AtomicUsize,
    batches: Arc<Batches>,
}

impl MeshQueues {
    pub(crate) fn new(transport: Arc<Transport>, registry: Arc<Registry>) -> Self {
        Self {
            batches: Arc::new(Batches {
                transport: transport.clone(),
                queued: Mutex::default(),
                singles: Mutex::default(),
            }),
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
        if !self.batches.batches_to(peer, Instant::now()) {
            return deliver_one(
                &self.transport,
                peer,
                service,
                queue,
                message.clone(),
                attempt,
            )
            .await;
        }
        let (told, outcome) = oneshot::channel();
        let key = (peer, service.to_owned(), queue.to_owned());
        Batches::queue(
            &self.batches,
            key,
            Queued {
                message: message.clone(),
                attempt,
                told,
            },
        );
        outcome.await.unwrap_or_else(|_| {
            Delivered::NotNow(format!("the delivery to `{service}` on {peer} was cut off"))
        })
    }
}

/// A delivery waiting for its batch, and where its outcome goes.
struct Queued {
    message: StoredMessage,
    attempt: u32,
    told: oneshot::Sender<Delivered>,
}

/// Peer, service, queue.
type BatchKey = (SocketAddr, String, String);

/// One peer's service's deliveries of one queue: those waiting, and the tasks sending them.
#[derive(Default)]
struct Batch {
    queued: VecDeque<Queued>,
    senders: usize,
}

impl Batch {
    /// The deliveries the next frame carries, oldest first.
    fn next_frame(&mut self) -> Vec<Queued> {
        let mut taken = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.queued.front() {
            let size = next.message.body.len();
            if taken.len() == BATCH_MESSAGES || (!taken.is_empty() && bytes + size > BATCH_BYTES) {
                break;
            }
            bytes += size;
            taken.extend(self.queued.pop_front());
        }
        taken
    }
}

struct Batches {
    transport: Arc<Transport>,
    queued: Mutex<HashMap<BatchKey, Batch>>,
    /// Peers that could not read a `DeliverMany`, and until when they get single frames.
    singles: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Batches {
    fn batches_to(&self, peer: SocketAddr, now: Instant) -> bool {
        self.singles.lock().map_or(true, |singles| {
            singles.get(&peer).is_none_or(|until| now >= *until)
        })
    }

    /// Queues `delivery`, and starts a sender for its batch if fewer than
    /// [`FRAMES_IN_FLIGHT`] run. Under one lock with a sender's last look, so a delivery is
    /// never left without one.
    fn queue(batches: &Arc<Self>, key: BatchKey, delivery: Queued) {
        let Ok(mut queued) = batches.queued.lock() else {
            let _ = delivery.told.send(Delivered::NotNow(
                "this node's delivery batches are poisoned".into(),
            ));
            return;
        };
        let batch = queued.entry(key.clone()).or_default();
        batch.queued.push_back(delivery);
        if batch.senders < FRAMES_IN_FLIGHT {
            batch.senders += 1;
            tokio::spawn(batches.clone().send(key));
        }
    }

    /// Sends frames of `key`'s deliveries until none are queued.
    async fn send(self: Arc<Self>, key: BatchKey) {
        loop {
            let deliveries = {
                let Ok(mut queued) = self.queued.lock() else {
                    return;
                };
                let Some(batch) = queued.get_mut(&key) else {
                    return;
                };
                let deliveries = batch.next_frame();
                if deliveries.is_empty() {
                    batch.senders -= 1;
                    if batch.senders == 0 {
                        queued.remove(&key);
                    }
                    return;
                }
                deliveries
            };
            self.send_frame(&key, deliveries).await;
        }
    }

    async fn send_frame(&self, key: &BatchKey, deliveries: Vec<Queued>) {
        let (peer, service, queue) = key;
        let (deliveries, tells): (Vec<_>, Vec<_>) = deliveries
            .into_iter()
            .map(|queued| ((queued.message, queued.attempt), queued.told))
            .unzip();
        let frame = Frame::DeliverMany {
            service: service.clone(),
            queue: queue.clone(),
            deliveries,
        };
        let answer = self
            .transport
            .request(*peer, &frame, DELIVERY_TIMEOUT)
            .await;
        match batch_outcomes(service, *peer, tells.len(), answer) {
            BatchAnswer::Each(outcomes) => {
                for (told, outcome) in tells.into_iter().zip(outcomes) {
                    let _ = told.send(outcome);
                }
            }
            BatchAnswer::All(outcome) => {
                for told in tells {
                    let _ = told.send(outcome.clone());
                }
            }
            BatchAnswer::OneByOne => {
                tracing::info!(%peer, "peer cannot read batched deliveries (an older switchyard?); sending it one message per frame");
                if let Ok(mut singles) = self.singles.lock() {
                    singles.insert(*peer, Instant::now() + SINGLES_FOR);
                }
                let Frame::DeliverMany { deliveries, .. } = frame else {
                    return;
                };
                for ((message, attempt), told) in deliveries.into_iter().zip(tells) {
                    let (transport, peer, service, queue) = (
                        self.transport.clone(),
                        *peer,
                        service.clone(),
                        queue.clone(),
                    );
                    tokio::spawn(async move {
                        let outcome =
                            deliver_one(&transport, peer, &service, &queue, message, attempt).await;
                        let _ = told.send(outcome);
                    });
                }
            }
        }
    }
}

/// What a peer's answer to a `DeliverMany` of `count` deliveries says became of them.
#[derive(Debug, PartialEq)]
enum BatchAnswer {
    /// One outcome per delivery, in their order.
    Each(Vec<Delivered>),
    /// The same for every one of them.
    All(Delivered),
    /// The peer could not read the frame and acted on none: send them one by one.
    OneByOne,
}

fn batch_outcomes(
    service: &str,
    peer: SocketAddr,
    count: usize,
    answer: Result<Frame, TransportError>,
) -> BatchAnswer {
    match answer {
        Ok(Frame::Delivered { outcomes }) if outcomes.len() == count => BatchAnswer::Each(outcomes),
        Ok(Frame::Delivered { outcomes }) => BatchAnswer::All(Delivered::NotNow(format!(
            "`{service}` on {peer} answered {} outcomes for {count} deliveries",
            outcomes.len()
        ))),
        Err(TransportError::Unreadable { .. }) => BatchAnswer::OneByOne,
        // An acknowledgement of what? Nothing is let go on it.
        Ok(Frame::Ack) => BatchAnswer::All(Delivered::NotNow(format!(
            "`{service}` on {peer} answered batched deliveries with an ack frame"
        ))),
        answer => BatchAnswer::All(outcome_of(service, peer, answer)),
    }
}

/// Delivers `message` to `service` on `peer` in a `Deliver` frame of its own.
async fn deliver_one(
    transport: &Transport,
    peer: SocketAddr,
    service: &str,
    queue: &str,
    message: StoredMessage,
    attempt: u32,
) -> Delivered {
    let frame = Frame::Deliver {
        service: service.to_owned(),
        queue: queue.to_owned(),
        message,
        attempt,
    };
    outcome_of(
        service,
        peer,
        transport.request(peer, &frame, DELIVERY_TIMEOUT).await,
    )
}

/// What a peer's answer to a delivery says became of it.
fn outcome_of(service: &str, peer: SocketAddr, answer: Result<Frame, TransportError>) -> Delivered {
    match answer {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(body_bytes: usize) -> Queued {
        let (told, _) = oneshot::channel();
        Queued {
            message: StoredMessage {
                seq: 0,
                id: "orders-0".into(),
                kind: crate::wire::MessageKind::Event,
                key: None,
                headers: Vec::new(),
                reply_to: None,
                trace_context: None,
                body: vec![b'm'; body_bytes],
                sender: "orders".into(),
                sent_at_ms: 0,
            },
            attempt: 1,
            told,
        }
    }

    #[test]
    fn a_batch_answer_settles_each_delivery_or_all_or_falls_back_to_one_by_one() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 7000));
        let outcomes = vec![Delivered::Acked, Delivered::Failed("refused".into())];
        assert_eq!(
            batch_outcomes(
                "billing",
                peer,
                2,
                Ok(Frame::Delivered {
                    outcomes: outcomes.clone()
                })
            ),
            BatchAnswer::Each(outcomes.clone())
        );
        // An older node: it reset the stream without acting on any of them.
        assert_eq!(
            batch_outcomes("billing", peer, 2, Err(TransportError::Unreadable { peer })),
            BatchAnswer::OneByOne
        );
        // Nothing is let go on an answer that does not account for every delivery.
        let not_now = |answer| {
            matches!(
                batch_outcomes("billing", peer, 3, answer),
                BatchAnswer::All(Delivered::NotNow(_))
            )
        };
        assert!(not_now(Ok(Frame::Delivered { outcomes })));
        assert!(not_now(Ok(Frame::Ack)));
        assert!(not_now(Err(TransportError::TimedOut { peer })));
        assert!(not_now(Ok(Frame::Failed {
            kind: FailureKind::Unavailable,
            message: "stopping".into()
        })));
        // A refusal of the frame as a whole counts an attempt for each, as for one `Deliver`.
        assert_eq!(
            batch_outcomes(
                "billing",
                peer,
                3,
                Ok(Frame::Failed {
                    kind: FailureKind::Remote,
                    message: "broken".into()
                })
            ),
            BatchAnswer::All(Delivered::Failed("broken".into()))
        );
    }

    #[test]
    fn a_frame_takes_what_queued_up_to_its_bounds_oldest_first() {
        let mut batch = Batch::default();
        batch
            .queued
            .extend((0..BATCH_MESSAGES + 3).map(|_| queued(16)));
        assert_eq!(batch.next_frame().len(), BATCH_MESSAGES);
        assert_eq!(batch.next_frame().len(), 3);
        assert!(batch.next_frame().is_empty());

        // Bodies: up to BATCH_BYTES, but a message larger than that still goes, alone.
        batch.queued.push_back(queued(BATCH_BYTES / 2));
        batch.queued.push_back(queued(BATCH_BYTES / 2));
        batch.queued.push_back(queued(1));
        batch.queued.push_back(queued(2 * BATCH_BYTES));
        batch.queued.push_back(queued(1));
        let sizes = |frame: Vec<Queued>| -> Vec<usize> {
            frame
                .iter()
                .map(|queued| queued.message.body.len())
                .collect()
        };
        assert_eq!(
            sizes(batch.next_frame()),
            vec![BATCH_BYTES / 2, BATCH_BYTES / 2]
        );
        assert_eq!(sizes(batch.next_frame()), vec![1]);
        assert_eq!(sizes(batch.next_frame()), vec![2 * BATCH_BYTES]);
        assert_eq!(sizes(batch.next_frame()), vec![1]);
    }
}
