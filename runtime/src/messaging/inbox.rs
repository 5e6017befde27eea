//! Request/response over messages. A requester waits at a reply address of its own node,
//! `inbox/<node>/<n>`, given to the request as its `reply-to`; a consumer's `reply` to that
//! address reaches the waiting requester here, or from another node as an `Answer` frame.
//! Only the first reply counts; a reply to an address nobody waits at any more (the request
//! timed out) is refused, so the replier learns it was too late.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use crate::wire::{SendError, StoredMessage};

const PREFIX: &str = "inbox/";

/// The requests of this node's guests that wait for a reply.
pub(crate) struct Inboxes {
    node: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<StoredMessage>>>,
}

/// One request's reply address, waited at until it is dropped.
pub(crate) struct Waiting<'a> {
    inboxes: &'a Inboxes,
    id: u64,
    pub(crate) address: String,
    reply: Option<oneshot::Receiver<StoredMessage>>,
}

impl Waiting<'_> {
    /// The first reply (pending forever if none comes: the caller bounds the wait).
    pub(crate) async fn reply(&mut self) -> Option<StoredMessage> {
        self.reply.take()?.await.ok()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.inboxes.lock().remove(&self.id);
    }
}

/// The node and number of a reply address, if `address` is one.
pub(crate) fn parse(address: &str) -> Option<(&str, u64)> {
    let (node, id) = address.strip_prefix(PREFIX)?.split_once('/')?;
    Some((node, id.parse().ok()?))
}

impl Inboxes {
    pub(crate) fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            next: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// The node whose requesters wait here.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<StoredMessage>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new reply address to wait at.
    pub(crate) fn open(&self) -> Waiting<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(id, sender);
        Waiting {
            inboxes: self,
            id,
            address: format!("{PREFIX}{}/{id}", self.node),
            reply: Some(receiver),
        }
    }

    /// Hands `reply` to the requester waiting at `address` (of this node).
    pub(crate) fn answer(&self, address: &str, reply: StoredMessage) -> Result<(), SendError> {
        let waiting = parse(address)
            .filter(|(node, _)| *node == self.node)
            .and_then(|(_, id)| self.lock().remove(&id));
        let gone = || {
            SendError::Unavailable(format!(
                "nobody waits for a reply at `{address}` any more (the request timed out, or \
                 was answered already)"
            ))
        };
        waiting.ok_or_else(gone)?.send(reply).map_err(|_| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: &str) -> StoredMessage {
        StoredMessage {
            seq: 0,
            id: "r".into(),
            kind: crate::wire::MessageKind::Event,
            key: None,
            headers: Vec::new(),
            reply_to: None,
            trace_context: None,
            body: body.as_bytes().to_vec(),
            sender: "billing".into(),
            sent_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn the_first_reply_reaches_the_requester_and_a_late_one_is_refused() {
        let inboxes = Inboxes::new("node-a");
        let mut waiting = inboxes.open();
        assert_eq!(parse(&waiting.address), Some(("node-a", 0)));
        assert!(inboxes.answer(&waiting.address, reply("one")).is_ok());
        let late = inboxes.answer(&waiting.address, reply("two"));
        assert!(matches!(late, Err(SendError::Unavailable(_))), "{late:?}");
        assert_eq!(waiting.reply().await.map(|r| r.body), Some(b"one".to_vec()));

        // Stopped waiting: its address is gone.
        let address = inboxes.open().address.clone();
        assert!(inboxes.answer(&address, reply("x")).is_err());
        assert!(inboxes.answer("inbox/node-b/1", reply("x")).is_err());
        assert_eq!(parse("orders"), None);
    }
}
