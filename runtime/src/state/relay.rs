//! The outbox relay: hands committed outbox messages to the broker, oldest first, and removes
//! each once its queue or topic has stored it.
//!
//! It wakes when a commit fills the outbox, and at start for whatever a crash left there. A
//! destination that refuses (its node is down, the queue is full or unknown) cools down: its
//! messages wait in the file, in order, and it is tried again after a pause that doubles with
//! each refusal (at most [`MAX_BACKOFF`]), while the other destinations' messages go on as
//! they are committed. A message
//! is removed only after the broker stored it, so a crash in between sends it again, with the
//! same id: at-least-once, and a consumer drops the duplicate by its id.
//!
//! Removing relayed messages from the file costs no commit of its own while guests commit:
//! the next commit carries the removals. Only when none comes within [`REMOVE_AFTER`] does the
//! relay commit them itself (without an fsync; the next commit's makes it durable).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::store::Store;
use crate::host::Queues;

/// Messages read from the outbox per round.
const BATCH: usize = 256;
/// How long one send may take before the relay counts it failed.
const SEND_BUDGET: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// How long relayed messages wait for a guest's commit to remove them from the file.
pub(crate) const REMOVE_AFTER: Duration = Duration::from_millis(200);
/// The longest the relay waits before retrying a destination that refused.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the relay did, for `GET /state`.
#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    relayed: AtomicU64,
    failed: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl RelayStats {
    /// Messages relayed since the node started.
    pub(crate) fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Sends that failed (and will be retried) since the node started.
    pub(crate) fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Why the last failed send failed, if one did since the last success.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    fn note_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }
}

/// Relays `store`'s outbox through `queues` until `shutdown` flips.
pub(crate) async fn run(
    store: Arc<Store>,
    queues: Arc<dyn Queues>,
    stats: Arc<RelayStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Only for the store's own failures; a refusing destination cools down by itself.
    let mut backoff = FIRST_BACKOFF;
    let mut cursor = Cursor {
        backlog: true,
        next_unread: 0,
        cooling: HashMap::new(),
    };
    loop {
        // Registered before reading, so a commit that lands after the read still wakes us.
        let filled = store.outbox_filled.notified();
        let round = relay_round(&store, queues.as_ref(), &stats, &mut cursor).await;
        let wait = match round {
            Round::More => continue,
            Round::Drained => {
                backoff = FIRST_BACKOFF;
                cursor.next_retry()
            }
            Round::StoreFailed => {
                let wait = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(wait)
            }
        };
        let remove = store.has_relayed_unremoved().then_some(REMOVE_AFTER);
        tokio::select! {
            () = filled => {}
            () = sleep_until_or_forever(wait) => {}
            () = sleep_or_forever(remove) => remove_relayed(&store, false).await,
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    // Make what was relayed durable, so a clean stop does not send it again.
    remove_relayed(&store, true).await;
}

async fn remove_relayed(store: &Arc<Store>, sync: bool) {
    let store = store.clone();
    let removed = tokio::task::spawn_blocking(move || store.remove_relayed(sync)).await;
    if let Ok(Err(error)) = removed {
        tracing::warn!(%error, "the outbox relay could not remove relayed messages from the store; if the node stops now, the next start relays them again (same ids)");
    }
}

async fn sleep_until_or_forever(wait: Option<Instant>) {
    match wait {
        Some(wait) => tokio::time::sleep_until(wait).await,
        None => std::future::pending().await,
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

enum Round {
    /// Nothing left to send now (a cooling destination's messages wait for its retry).
    Drained,
    /// A full batch went out: read the next one at once.
    More,
    /// The store could not be read: try again after a backoff.
    StoreFailed,
}

/// Where the relay reads next, and which destinations refused lately.
///
/// With no backlog it takes what commits hand it in memory (no read of the file); after a
/// start, when a destination's cool-down ends, or when more was committed than memory keeps,
/// it reads the file until that is drained. Every entry below `next_unread` was read once
/// already: sent (and noted relayed) or left in the file for a destination that refused,
/// which the file is read again for when that destination's cool-down ends.
struct Cursor {
    backlog: bool,
    next_unread: u64,
    /// Destinations that refused: not tried again before `until`.
    cooling: HashMap<String, Cooling>,
}

struct Cooling {
    until: Instant,
    /// The pause after its last refusal (doubles with each, up to [`MAX_BACKOFF`]).
    backoff: Duration,
}

impl Cursor {
    /// When the first cooling destination may be tried again.
    fn next_retry(&self) -> Option<Instant> {
        self.cooling.values().map(|cooling| cooling.until).min()
    }
}

async fn relay_round(
    store: &Arc<Store>,
    queues: &dyn Queues,
    stats: &RelayStats,
    cursor: &mut Cursor,
) -> Round {
    let now = Instant::now();
    // A destination whose cool-down ended: its messages are in the file, read it.
    let cooled: Vec<String> = cursor
        .cooling
        .iter()
        .filter(|(_, cooling)| cooling.until <= now)
        .map(|(destination, _)| destination.clone())
        .collect();
    let mut retried = HashMap::new();
    for destination in cooled {
        if let Some(cooling) = cursor.cooling.remove(&destination) {
            retried.insert(destination, cooling.backoff);
            cursor.backlog = true;
        }
    }
    let skip: HashSet<String> = cursor.cooling.keys().cloned().collect();
    // Taken before the file is read: every entry taken is then in what the read sees.
    let fresh = store.take_fresh();
    let from_file = cursor.backlog || fresh.overflowed;
    let pending = if from_file {
        let reader = store.clone();
        match tokio::task::spawn_blocking(move || reader.pending(BATCH, &skip)).await {
            Ok(Ok(pending)) => pending,
            failed => {
                if let Ok(Err(error)) = failed {
                    tracing::error!(%error, "the outbox relay cannot read the outbox");
                    stats.note_error(Some(error.to_string()));
                }
                cursor.backlog = true;
                // Not tried: keep their cool-down as it was.
                for (destination, backoff) in retried {
                    cursor.cooling.insert(
                        destination,
                        Cooling {
                            until: now,
                            backoff,
                        },
                    );
                }
                return Round::StoreFailed;
            }
        }
    } else {
        fresh
            .entries
            .into_iter()
            .filter(|(seq, entry)| {
                *seq >= cursor.next_unread && !skip.contains(&entry.message.destination)
            })
            .collect()
    };
    // Read past them all (a skipped one is read again when its destination cools down).
    if let Some((last, _)) = pending.last() {
        cursor.next_unread = cursor.next_unread.max(last + 1);
    }
    let full = from_file && pending.len() == BATCH;
    let mut sent = Vec::with_capacity(pending.len());
    for (seq, entry) in pending {
        let destination = entry.message.destination;
        if cursor.cooling.contains_key(&destination) {
            continue;
        }
        let result = queues
            .send(
                &destination,
                &entry.service,
                entry.message.trace_context,
                entry.message.message,
                SEND_BUDGET,
            )
            .await;
        match result {
            Ok(_) => sent.push(seq),
            Err(error) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let backoff = retried
                    .get(&destination)
                    .map_or(FIRST_BACKOFF, |last| (*last * 2).min(MAX_BACKOFF));
                tracing::warn!(
                    service = %entry.service,
                    %destination,
                    %error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "the outbox relay could not hand a message over; it retries (the message stays in the outbox)"
                );
                stats.note_error(Some(format!(
                    "service `{}`, destination `{destination}`: {error}",
                    entry.service
                )));
                cursor.cooling.insert(
                    destination,
                    Cooling {
                        until: Instant::now() + backoff,
                        backoff,
                    },
                );
            }
        }
    }
    store.note_relayed(&sent);
    stats
        .relayed
        .fetch_add(sent.len() as u64, Ordering::Relaxed);
    if cursor.cooling.is_empty() {
        stats.note_error(None);
    }
    if full {
        Round::More
    } else {
        cursor.backlog = false;
        Round::Drained
    }
}
