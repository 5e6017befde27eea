//! Request/response over messages. A requester waits at a reply address of its own node,
//! `inbox/<node>/<token>`, given to the request as its `reply-to`; a consumer's `reply` to that
//! address reaches the waiting requester here, or from another node as an `Answer` frame.
//! A `request` takes the first reply only; a `request-all` takes every reply that comes within
//! its window (up to [`MAX_REPLIES`]). A reply to an address nobody waits at any more (the
//! request timed out, or was answered) is refused, so the replier learns it was too late. The token is 128 random bits:
//! only a service that got the request can answer it, not one that guesses addresses.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::wire::{SendError, StoredMessage};

const PREFIX: &str = "inbox/";
/// The most replies one `request-all` collects.
pub(crate) const MAX_REPLIES: usize = 1024;

/// The requests of this node's guests that wait for a reply.
pub(crate) struct Inboxes {
    node: String,
    waiting: Mutex<HashMap<String, Waiter>>,
}

struct Waiter {
    replies: mpsc::Sender<StoredMessage>,
    /// Takes only the first reply (`request`); else every one until dropped (`request-all`).
    first_only: bool,
}

/// One request's reply address, waited at until it is dropped.
pub(crate) struct Waiting<'a> {
    inboxes: &'a Inboxes,
    token: String,
    pub(crate) address: String,
    replies: mpsc::Receiver<StoredMessage>,
}

impl Waiting<'_> {
    /// The next reply (pending forever if none comes: the caller bounds the wait).
    pub(crate) async fn reply(&mut self) -> Option<StoredMessage> {
        self.replies.recv().await
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.inboxes.lock().remove(&self.token);
    }
}

/// The node and token of a reply address, if `address` is one.
pub(crate) fn parse(address: &str) -> Option<(&str, &str)> {
    address.strip_prefix(PREFIX)?.split_once('/')
}

impl Inboxes {
    pub(crate) fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// The node whose requesters wait here.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new reply address to wait at for the first reply.
    pub(crate) fn open(&self) -> Result<Waiting<'_>, SendError> {
        self.open_for(true)
    }

    /// A new reply address to wait at for every reply, until the [`Waiting`] is dropped.
    pub(crate) fn open_for_all(&self) -> Result<Waiting<'_>, SendError> {
        self.open_for(false)
    }

    fn open_for(&self, first_only: bool) -> Result<Waiting<'_>, SendError> {
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random)
            .map_err(|err| SendError::Unavailable(format!("cannot make a reply address: {err}")))?;
        let token = hex::encode(random);
        let (sender, receiver) = mpsc::channel(if first_only { 1 } else { MAX_REPLIES });
        let waiter = Waiter {
            replies: sender,
            first_only,
        };
        self.lock().insert(token.clone(), waiter);
        Ok(Waiting {
            inboxes: self,
            address: format!("{PREFIX}{}/{token}", self.node),
            token,
            replies: receiver,
        })
    }

    /// Hands `reply` to the requester waiting at `address` (of this node).
    pub(crate) fn answer(&self, address: &str, reply: StoredMessage) -> Result<(), SendError> {
        let gone = || {
            SendError::Unavailable(format!(
                "nobody waits for a reply at `{address}` any more (the request timed out, or \
                 was answered already)"
            ))
        };
        let Some((_, token)) = parse(address).filter(|(node, _)| *node == self.node) else {
            return Err(gone());
        };
        let mut waiting = self.lock();
        let Some(waiter) = waiting.get(token) else {
            return Err(gone());
        };
        let sent = waiter.replies.try_send(reply);
        if waiter.first_only {
            waiting.remove(token);
        }
        sent.map_err(|refused| match refused {
            mpsc::error::TrySendError::Full(_) => SendError::Full(format!(
                "the requester waiting at `{address}` has {MAX_REPLIES} replies already; it \
                 takes no more"
            )),
            mpsc::error::TrySendError::Closed(_) => gone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "tests fail loudly on purpose")]
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
        let mut waiting = inboxes.open().expect("an address");
        let (node, token) = parse(&waiting.address).expect("a reply address");
        assert_eq!((node, token.len()), ("node-a", 32));
        // Guessing a neighbour's address does not work.
        let other = inboxes.open().expect("an address");
        assert_ne!(parse(&other.address), parse(&waiting.address));
        assert!(inboxes.answer("inbox/node-a/0", reply("guess")).is_err());
        assert!(inboxes.answer(&waiting.address, reply("one")).is_ok());
        let late = inboxes.answer(&waiting.address, reply("two"));
        assert!(matches!(late, Err(SendError::Unavailable(_))), "{late:?}");
        assert_eq!(waiting.reply().await.map(|r| r.body), Some(b"one".to_vec()));

        // Waiting for all: every reply counts until it stops waiting.
        let mut all = inboxes.open_for_all().expect("an address");
        for body in ["a", "b"] {
            assert!(inboxes.answer(&all.address, reply(body)).is_ok());
        }
        assert_eq!(all.reply().await.map(|r| r.body), Some(b"a".to_vec()));
        assert_eq!(all.reply().await.map(|r| r.body), Some(b"b".to_vec()));
        let address = all.address.clone();
        drop(all);
        assert!(inboxes.answer(&address, reply("c")).is_err());

        // Stopped waiting: its address is gone.
        let address = inboxes.open().expect("an address").address.clone();
        assert!(inboxes.answer(&address, reply("x")).is_err());
        assert!(inboxes.answer("inbox/node-b/1", reply("x")).is_err());
        assert_eq!(parse("orders"), None);
    }
}
