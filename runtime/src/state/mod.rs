//! State: each service's own durable keys, and the transactional outbox.
//!
//! A guest reads and writes its keys through the `state` WIT interface (the host's
//! [`crate::host::StateStore`] port, which [`Store`] implements). A transaction carries the
//! versions of the keys it read, its writes, and the messages it sends; [`commit_off_executor`]
//! checks the versions (optimistic concurrency: a changed key is a `conflict` and nothing is
//! stored), then writes the values and the messages into the outbox in one redb commit, one
//! fsync. The [`relay`] then hands the outbox to the broker. So a message is sent if and only
//! if the state change it announces is stored, and a crash between the two loses nothing: the
//! relay sends what it finds at start.
//!
//! Keys are namespaced by service inside the store; the host passes the calling service's name,
//! so no guest can name another's keys. Each service's bytes (keys, values, and its messages
//! still in the outbox) are counted in the same commit and capped by its `state_max_mb`.
//!
//! Commits are grouped: transactions that arrive while one commits wait and go together in
//! the next redb commit, one fsync for all (see [`Store::commit_unannounced`]).

mod book;
mod relay;
mod store;

pub(crate) use relay::{RelayStats, run as run_relay};
pub(crate) use store::{ServiceUsage, Store};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::host::{Committed, StateEntry, StateError, StatePage, StateStore, Transaction};
use crate::util::BoxFuture;

/// `GET /state`: the store's size, each service's usage, and the outbox's lag.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StateView {
    pub(crate) file: std::path::PathBuf,
    pub(crate) file_bytes: u64,
    /// fsyncs of the store's file since the node started: one per commit, and one when the
    /// relay stops.
    pub(crate) fsyncs: u64,
    pub(crate) services: Vec<ServiceUsage>,
    pub(crate) outbox: OutboxView,
}

/// What waits in the outbox and how the relay fares.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct OutboxView {
    /// Messages committed and not yet handed to their queue or topic.
    pub(crate) pending: u64,
    /// How long the oldest of them has waited, in ms (0 when none waits).
    pub(crate) lag_ms: u64,
    /// Messages relayed since the node started.
    pub(crate) relayed: u64,
    /// Sends that failed since the node started (each is retried).
    pub(crate) failed: u64,
    /// Why the last send failed, while the relay is failing.
    pub(crate) last_error: Option<String>,
}

/// The view of `store` and its relay, each service's limit from `limit_of`.
pub(crate) fn view(
    store: &Store,
    relay: &RelayStats,
    limit_of: impl Fn(&str) -> Option<u64>,
) -> Result<StateView, StateError> {
    let mut services = store.usage()?;
    for usage in &mut services {
        usage.max_bytes = limit_of(&usage.service);
    }
    let (pending, oldest_ms) = store.outbox_depth()?;
    Ok(StateView {
        file: store.path().to_owned(),
        file_bytes: store.file_bytes(),
        fsyncs: store.fsyncs(),
        services,
        outbox: OutboxView {
            pending,
            lag_ms: oldest_ms.map_or(0, |oldest| crate::util::now_ms().saturating_sub(oldest)),
            relayed: relay.relayed(),
            failed: relay.failed(),
            last_error: relay.last_error(),
        },
    })
}

/// The store behind the guests' `state` imports: reads inline, commits off the executor
/// (each waits for its fsync).
///
/// It holds the store weakly: the node owns it, and guests' contexts can outlive a stopped
/// node (an instance finishing, or the services' own reference cycles), which must not keep
/// the file locked against the next start.
#[derive(Debug, Clone)]
pub(crate) struct SharedStore(std::sync::Weak<Store>);

impl SharedStore {
    pub(crate) fn new(store: &Arc<Store>) -> Self {
        Self(Arc::downgrade(store))
    }

    fn store(&self) -> Result<Arc<Store>, StateError> {
        self.0.upgrade().ok_or_else(|| {
            StateError::Unavailable("the node is stopping; its state store is closed".into())
        })
    }
}

impl StateStore for SharedStore {
    fn get(&self, service: &str, key: &str) -> Result<Option<StateEntry>, StateError> {
        self.store()?.get(service, key)
    }

    fn scan(
        &self,
        service: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatePage, StateError> {
        self.store()?.scan(service, prefix, after, limit)
    }

    fn commit<'a>(
        &'a self,
        service: &'a str,
        max_bytes: u64,
        transaction: Transaction,
    ) -> BoxFuture<'a, Result<Committed, StateError>> {
        let (store, service) = (self.store(), service.to_owned());
        Box::pin(async move { commit_off_executor(store?, service, max_bytes, transaction).await })
    }
}

/// Commits `transaction` on a blocking thread (it waits for its fsync) and wakes the relay
/// from the calling task once it has the outcome.
///
/// Why not from the blocking thread that committed: waking the relay there wakes a parked
/// runtime worker (a futex wake and two context switches per commit, about a tenth of a lone
/// commit's latency on two cores), while a task woken from a worker goes to that worker's own
/// queue and runs when the caller yields. A caller whose future is dropped before the outcome
/// arrives must not leave the messages unannounced: whichever side comes second, the commit or
/// the caller's [`Announcer`], wakes the relay.
pub(crate) async fn commit_off_executor(
    store: Arc<Store>,
    service: String,
    max_bytes: u64,
    transaction: Transaction,
) -> Result<Committed, StateError> {
    let announcer = Announcer {
        store: store.clone(),
        handover: Arc::default(),
    };
    let handover = announcer.handover.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let committed = store.commit_unannounced(&service, max_bytes, transaction);
        if let Ok(committed) = &committed
            && !handover.hand_over(committed)
        {
            store.announce(committed);
        }
        committed
    })
    .await;
    // Announces here, on this task's worker, if the commit put messages in the outbox.
    drop(announcer);
    committed.map_err(|err| StateError::Unavailable(format!("a commit was interrupted: {err}")))?
}

/// Who wakes the relay for a commit with messages: the waiting task, or, once it is gone, the
/// committing thread.
#[derive(Default)]
struct Handover(std::sync::atomic::AtomicU8);

const WAITING: u8 = 0;
/// Committed with messages, for the waiter to announce.
const COMMITTED: u8 = 1;
const GONE: u8 = 2;

impl Handover {
    /// Called by the committer: whether the waiter takes `committed` over (it is still there
    /// and there is something to announce).
    fn hand_over(&self, committed: &Committed) -> bool {
        committed.message_ids.is_empty()
            || self
                .0
                .compare_exchange(WAITING, COMMITTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Called when the waiter goes: whether a commit with messages was handed to it.
    fn leave(&self) -> bool {
        self.0
            .compare_exchange(WAITING, GONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }
}

/// The waiting side of a [`Handover`]: dropped when the outcome arrived, or with the caller's
/// future before that.
struct Announcer {
    store: Arc<Store>,
    handover: Arc<Handover>,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if self.handover.leave() {
            self.store.outbox_filled.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
