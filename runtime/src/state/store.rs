//! The embedded store: one redb database per node (`data_dir/state.redb`).
//!
//! redb because it is a pure-Rust, ACID, copy-on-write B-tree with one writer and MVCC
//! readers, a stable file format and crash safety without a write-ahead log of our own: a
//! commit is one fsync, which is exactly what the transactional outbox needs (the state and
//! the outbox in one commit). fjall (an LSM tree) would write faster but journals per keyspace
//! and has no cross-keyspace commit as simple as redb's.
//!
//! Two tables. `entries` maps (service, key) to (version, value). `book` holds the rest of what
//! commits write, under three sections: `counter` (the last version, the next outbox number,
//! the rows in the outbox, and the store's random id, which outbox message ids start with, so
//! a wiped store never reuses an id a consumer has seen), `usage` (a service's bytes and keys)
//! and `outbox` (a sequence number to an [`OutboxEntry`]).
//!
//! Why one `book` instead of a table each: every redb table has its own root page, and a
//! commit writes each table it changed out whole from the changed leaf up. Every commit bumps
//! the version and the committer's usage; one with messages adds outbox rows, and the relay's
//! removals ride on the next commit. In one table they share a leaf (a few KiB while the
//! outbox drains), so a commit with messages writes no more pages than one without: 8 writes
//! each, where separate tables took 9 for a plain commit and 10 with a message. Files written
//! with the separate tables (`meta`, `usage`, `outbox`) are moved into `book` when opened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::book::{self, BOOK, OUTBOX_NEXT, STORE_ID, VERSION};
use crate::host::{Committed, OutboxMessage, StateEntry, StateError, StatePage, Transaction};

pub(super) const ENTRIES: TableDefinition<(&str, &str), (u64, &[u8])> =
    TableDefinition::new("entries");

/// The longest key a service may store.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// The largest value a service may store.
pub(crate) const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Reads, writes and messages one transaction may hold (each).
pub(crate) const MAX_TRANSACTION_ITEMS: usize = 1000;
/// Messages one transaction may send.
pub(crate) const MAX_TRANSACTION_MESSAGES: usize = 100;
/// Entries one scan page returns at most.
pub(crate) const MAX_SCAN_ENTRIES: usize = 1000;
/// Value bytes one scan page returns at most (it stops early past them).
pub(crate) const MAX_SCAN_BYTES: usize = 8 * 1024 * 1024;

/// A message waiting in the outbox: who committed it, when, and what to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    pub(crate) service: String,
    pub(crate) committed_at_ms: u64,
    /// Its `message.id` is set: the id it keeps however often it is relayed.
    pub(crate) message: OutboxMessage,
}

/// How much one service stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ServiceUsage {
    pub(crate) service: String,
    pub(crate) keys: u64,
    /// Bytes of keys and values, and of its messages waiting in the outbox.
    pub(crate) bytes: u64,
    /// Its `state_max_mb` in bytes, if it runs here.
    pub(crate) max_bytes: Option<u64>,
}

/// The node's state store.
pub(crate) struct Store {
    db: Database,
    path: PathBuf,
    store_id: u64,
    counts: Arc<FileCounts>,
    /// Woken when a commit put messages in the outbox, by its caller once it has the
    /// outcome ([`Store::announce`]).
    pub(super) outbox_filled: tokio::sync::Notify,
    /// Outbox entries relayed but still in the file: the next commit removes them in its own
    /// transaction (no write of their own), or [`Store::remove_relayed`] does when none comes.
    relayed_unremoved: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Outbox entries committed since the relay last looked, in order: the relay takes them
    /// from here instead of reading the file, while it has no backlog.
    fresh: std::sync::Mutex<Fresh>,
    /// Transactions waiting for the next group commit.
    queue: std::sync::Mutex<CommitQueue>,
}

#[derive(Default)]
struct CommitQueue {
    waiting: Vec<Waiting>,
    /// A caller is committing a batch (and will hand the lead on).
    leading: bool,
}

struct Waiting {
    service: String,
    max_bytes: u64,
    transaction: Transaction,
    answer: std::sync::mpsc::SyncSender<Turn>,
}

/// What a waiting caller is told: its outcome, or that it leads the next batch.
enum Turn {
    Done(Result<Committed, StateError>),
    Lead,
}

/// Hands the lead to the first waiting caller, or gives it up, when a leader is done.
struct PassLead<'a>(&'a Store);

impl Drop for PassLead<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        match queue.waiting.first() {
            Some(next) => {
                let _ = next.answer.send(Turn::Lead);
            }
            None => queue.leading = false,
        }
    }
}

fn poisoned() -> StateError {
    StateError::Unavailable(
        "a commit of the state store was cut off (a thread panicked); retry".into(),
    )
}

/// [`Store::fresh`]: at most [`MAX_FRESH`] entries; past it they are only in the file, and
/// `overflowed` sends the relay there.
#[derive(Debug, Default)]
pub(crate) struct Fresh {
    pub(crate) entries: Vec<(u64, OutboxEntry)>,
    pub(crate) overflowed: bool,
}

/// Entries the relay may find in memory; more wait in the file.
const MAX_FRESH: usize = 4096;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Every redb failure, named with the store's file and what to do.
fn unavailable(path: &Path, doing: &str, err: impl Into<redb::Error>) -> StateError {
    StateError::Unavailable(format!(
        "the state store {} failed while {doing}: {}; check the disk (space, permissions) and \
         the node's log",
        path.display(),
        err.into()
    ))
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, StateError> {
        let counts = Arc::new(FileCounts::default());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|err| {
                StateError::Unavailable(format!(
                    "cannot open the state store {}: {err}; check that `node.data_dir` is a \
                     writable directory",
                    path.display()
                ))
            })?;
        let backend = CountingBackend {
            inner: redb::backends::FileBackend::new(file),
            counts: counts.clone(),
        };
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .map_err(|err| match err {
                redb::DatabaseError::DatabaseAlreadyOpen => StateError::Unavailable(format!(
                    "the state store {} is open in another process: another node runs with \
                     this `node.data_dir`; stop it or give this node its own data_dir",
                    path.display()
                )),
                err => unavailable(path, "opening", err),
            })?;
        let write = db
            .begin_write()
            .map_err(|err| unavailable(path, "opening", err))?;
        let store_id = {
            let opened = (|| -> Result<u64, redb::Error> {
                write.open_table(ENTRIES)?;
                book::take_in_old_tables(&write)?;
                let mut book = write.open_table(BOOK)?;
                Ok(match book::counter(&book, STORE_ID)? {
                    Some(id) => id,
                    None => {
                        let id = fastrand::u64(1..);
                        book::set_counter(&mut book, STORE_ID, id)?;
                        id
                    }
                })
            })();
            opened.map_err(|err| unavailable(path, "opening", err))?
        };
        write
            .commit()
            .map_err(|err| unavailable(path, "opening", err))?;
        Ok(Self {
            db,
            path: path.to_owned(),
            store_id,
            counts,
            outbox_filled: tokio::sync::Notify::new(),
            relayed_unremoved: std::sync::Mutex::default(),
            fresh: std::sync::Mutex::default(),
            queue: std::sync::Mutex::default(),
        })
    }

    /// fsyncs the store's file has had since it opened.
    pub(crate) fn fsyncs(&self) -> u64 {
        self.counts.fsyncs.load(Ordering::Relaxed)
    }

    /// Writes to the store's file since it opened.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn writes(&self) -> u64 {
        self.counts.writes.load(Ordering::Relaxed)
    }

    /// Where the store's file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn failed<'a>(&'a self, doing: &'a str) -> impl Fn(redb::Error) -> StateError + 'a {
        move |err| unavailable(&self.path, doing, err)
    }

    /// The value of `service`'s `key`.
    pub(crate) fn get(&self, service: &str, key: &str) -> Result<Option<StateEntry>, StateError> {
        check_key(key)?;
        let read = (|| -> Result<_, redb::Error> {
            let txn = self.db.begin_read()?;
            let entries = txn.open_table(ENTRIES)?;
            Ok(entries.get((service, key))?.map(|found| {
                let (version, value) = found.value();
                StateEntry {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    version,
                }
            }))
        })();
        read.map_err(self.failed("reading"))
    }

    /// Up to `limit` of `service`'s keys that start with `prefix`, after `after`.
    pub(crate) fn scan(
        &self,
        service: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatePage, StateError> {
        let limit = limit.clamp(1, MAX_SCAN_ENTRIES);
        let read = (|| -> Result<_, redb::Error> {
            let txn = self.db.begin_read()?;
            let entries = txn.open_table(ENTRIES)?;
            let start = match after {
                Some(after) if after >= prefix => after,
                _ => prefix,
            };
            let mut page = StatePage::default();
            let mut bytes = 0;
            each_key(&entries, service, start, |key, version, value| {
                if !key.starts_with(prefix) {
                    return false;
                }
                if Some(key) == after {
                    return true;
                }
                if page.entries.len() == limit || bytes + value.len() > MAX_SCAN_BYTES {
                    page.next = page.entries.last().map(|last| last.key.clone());
                    return false;
                }
                bytes += value.len();
                page.entries.push(StateEntry {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    version,
                });
                true
            })?;
            Ok(page)
        })();
        read.map_err(self.failed("scanning"))
    }

    /// [`Store::commit_unannounced`] and [`Store::announce`] on the calling thread, for tests
    /// that commit from plain threads.
    #[cfg(test)]
    pub(crate) fn commit(
        &self,
        service: &str,
        max_bytes: u64,
        transaction: Transaction,
    ) -> Result<Committed, StateError> {
        let committed = self.commit_unannounced(service, max_bytes, transaction)?;
        self.announce(&committed);
        Ok(committed)
    }

    /// Wakes the relay if `committed` put messages in the outbox.
    pub(super) fn announce(&self, committed: &Committed) {
        if !committed.message_ids.is_empty() {
            self.outbox_filled.notify_one();
        }
    }

    /// Stores `transaction` for `service`, durably, or nothing. The caller wakes the relay
    /// with [`Store::announce`] once it has the outcome (see [`super::commit_off_executor`]
    /// for why not here).
    ///
    /// Group commit: the first caller to find no commit under way leads; it takes every
    /// transaction waiting, applies each (one that fails leaves no trace) in one redb commit,
    /// one fsync, answers them all, and hands the lead to a caller that queued meanwhile. So
    /// one caller alone pays one fsync, and many at once share them.
    pub(super) fn commit_unannounced(
        &self,
        service: &str,
        max_bytes: u64,
        transaction: Transaction,
    ) -> Result<Committed, StateError> {
        check_transaction(&transaction)?;
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let lead = {
            let mut queue = self.queue();
            queue.waiting.push(Waiting {
                service: service.to_owned(),
                max_bytes,
                transaction,
                answer,
            });
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            self.lead();
        }
        loop {
            match answered.recv() {
                Ok(Turn::Done(result)) => return result,
                Ok(Turn::Lead) => self.lead(),
                Err(_) => return Err(poisoned()),
            }
        }
    }

    /// The commit queue; a panic while it was held leaves it whole (a list and a flag), so a
    /// poisoned lock is used as it is.
    fn queue(&self) -> std::sync::MutexGuard<'_, CommitQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits what waits as one batch, then passes the lead on (or gives it up).
    fn lead(&self) {
        // Passes the lead on however the batch ends, a panic included: else every later
        // commit would wait for a leader that never comes.
        let _pass_on = PassLead(self);
        let batch = std::mem::take(&mut self.queue().waiting);
        self.commit_batch(batch);
    }

    /// Applies `batch` in one redb commit and answers each caller. Only the leader runs it,
    /// one batch at a time, so outbox entries reach `fresh` in commit order.
    fn commit_batch(&self, batch: Vec<Waiting>) {
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(err) => {
                let err = unavailable(&self.path, "starting a commit", err);
                for waiting in batch {
                    let _ = waiting.answer.send(Turn::Done(Err(err.clone())));
                }
                return;
            }
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut fresh = Vec::new();
        for waiting in batch {
            let applied = self.apply(
                &txn,
                &waiting.service,
                waiting.max_bytes,
                waiting.transaction,
            );
            let applied = applied.map(|(committed, entries)| {
                fresh.extend(entries);
                committed
            });
            outcomes.push((waiting.answer, applied));
        }
        // A failure of the store itself may come after some writes of its transaction: then
        // nothing of the batch is committed.
        if let Some(err) = outcomes.iter().find_map(|(_, applied)| match applied {
            Err(err @ StateError::Unavailable(_)) => Some(err.clone()),
            _ => None,
        }) {
            drop(txn);
            for (answer, _) in outcomes {
                let _ = answer.send(Turn::Done(Err(err.clone())));
            }
            return;
        }
        let any_applied = outcomes.iter().any(|(_, applied)| applied.is_ok());
        let stored = self.carry_removals(&txn).and_then(|carried| {
            if !any_applied && carried.is_empty() {
                // Nothing to store: no commit, no fsync.
                drop(txn);
                return Ok(carried);
            }
            txn.commit()
                .map_err(|err| unavailable(&self.path, "committing", err))?;
            Ok(carried)
        });
        let stored = stored.map(|carried| self.removed(&carried));
        let filled = stored.is_ok() && !fresh.is_empty();
        if filled && let Ok(mut waiting) = self.fresh.lock() {
            if waiting.entries.len() + fresh.len() > MAX_FRESH {
                waiting.overflowed = true;
            } else {
                waiting.entries.extend(fresh);
            }
        }
        for (answer, applied) in outcomes {
            let result = match (&stored, applied) {
                (Ok(()), applied) => applied,
                (Err(err), _) => Err(err.clone()),
            };
            let _ = answer.send(Turn::Done(result));
        }
    }

    /// Checks the reads and the service's limit, then applies the writes and fills the outbox
    /// in `txn`. An error comes before any change to `txn`, so the other transactions of its
    /// batch commit without a trace of this one.
    fn apply(
        &self,
        txn: &redb::WriteTransaction,
        service: &str,
        max_bytes: u64,
        transaction: Transaction,
    ) -> Result<(Committed, Vec<(u64, OutboxEntry)>), StateError> {
        let failed = self.failed("committing");
        let redb = |err: redb::StorageError| failed(err.into());
        let mut entries = txn.open_table(ENTRIES).map_err(|err| failed(err.into()))?;
        for (key, read_version) in &transaction.reads {
            let now = entries
                .get((service, key.as_str()))
                .map_err(redb)?
                .map_or(0, |found| found.value().0);
            if now != *read_version {
                return Err(StateError::Conflict(format!(
                    "key `{key}` of service `{service}` is at version {now}, the transaction \
                     read it at version {read_version}: nothing was stored; read it again and \
                     retry (the SDK's state::transact does)"
                )));
            }
        }
        let mut book = txn.open_table(BOOK).map_err(|err| failed(err.into()))?;
        let (mut bytes, mut keys) = book::usage(&book, service).map_err(redb)?;
        // What the writes do to the service's size, before any is made (keys are distinct).
        let mut removed = 0;
        for (key, value) in &transaction.writes {
            let old = entries
                .get((service, key.as_str()))
                .map_err(redb)?
                .map(|old| old.value().1.len());
            if let Some(old_len) = old {
                bytes = bytes.saturating_sub((key.len() + old_len) as u64);
                keys = keys.saturating_sub(1);
                removed += usize::from(value.is_none());
            }
            if let Some(value) = value {
                bytes += (key.len() + value.len()) as u64;
                keys += 1;
            }
        }
        let mut bytes_after = bytes;
        let mut outbox_entries = Vec::with_capacity(transaction.messages.len());
        let mut encoded = Vec::with_capacity(transaction.messages.len());
        let mut next = book::counter(&book, OUTBOX_NEXT)
            .map_err(redb)?
            .unwrap_or(0);
        let committed_at_ms = crate::util::now_ms();
        for mut message in transaction.messages {
            message.message.id = Some(format!("{:016x}-{next}", self.store_id));
            let entry = OutboxEntry {
                service: service.to_owned(),
                committed_at_ms,
                message,
            };
            let bytes = postcard::to_stdvec(&entry).map_err(|err| {
                StateError::Invalid(format!("an outbox message cannot be encoded: {err}"))
            })?;
            // A message waiting in the outbox counts against the service's limit.
            bytes_after += bytes.len() as u64;
            encoded.push((next, bytes));
            outbox_entries.push((next, entry));
            next += 1;
        }
        if bytes_after > max_bytes {
            return Err(StateError::TooLarge(format!(
                "service `{service}` would store {bytes_after} bytes of keys, values and outbox messages, past its \
                 state_max_mb ({} MiB): nothing was stored; delete keys, let its outbox drain (GET /state), or raise \
                 state_max_mb in its [[service]] entry",
                max_bytes / (1024 * 1024)
            )));
        }
        // Checked; from here on only writes.
        let version = book::counter(&book, VERSION).map_err(redb)?.unwrap_or(0) + 1;
        book::set_counter(&mut book, VERSION, version).map_err(redb)?;
        for (key, value) in &transaction.writes {
            match value {
                Some(value) => {
                    entries
                        .insert((service, key.as_str()), (version, value.as_slice()))
                        .map_err(redb)?;
                }
                None => {
                    entries.remove((service, key.as_str())).map_err(redb)?;
                }
            }
        }
        book::set_usage(&mut book, service, (bytes_after, keys)).map_err(redb)?;
        if !encoded.is_empty() {
            for (seq, bytes) in &encoded {
                book::add_outbox(&mut book, *seq, bytes).map_err(redb)?;
            }
            book::set_counter(&mut book, OUTBOX_NEXT, next).map_err(redb)?;
        }
        let message_ids = outbox_entries
            .iter()
            .filter_map(|(_, entry)| entry.message.message.id.clone())
            .collect();
        Ok((
            Committed {
                version,
                message_ids,
                removed,
            },
            outbox_entries,
        ))
    }

    /// The entries committed since the last call, in order, and whether some went only to
    /// the file (read it then).
    pub(crate) fn take_fresh(&self) -> Fresh {
        self.fresh
            .lock()
            .map(|mut fresh| std::mem::take(&mut *fresh))
            .unwrap_or(Fresh {
                entries: Vec::new(),
                overflowed: true,
            })
    }

    /// Removes the relayed entries from the outbox in `txn`; which ones (they stay noted as
    /// relayed until `txn` is committed, so the relay never reads them as pending).
    fn carry_removals(&self, txn: &redb::WriteTransaction) -> Result<Vec<u64>, StateError> {
        let carried: Vec<u64> = match self.relayed_unremoved.lock() {
            Ok(relayed) => relayed.iter().copied().collect(),
            Err(_) => Vec::new(),
        };
        if carried.is_empty() {
            return Ok(carried);
        }
        let removed = (|| -> Result<(), redb::Error> {
            let mut book = txn.open_table(BOOK)?;
            // Each service's usage loses its relayed messages' bytes.
            let mut freed: std::collections::HashMap<String, u64> = Default::default();
            for seq in &carried {
                if let Some(bytes) = book::remove_outbox(&mut book, *seq)? {
                    // The service is the entry's first field.
                    if let Ok((service, _)) = postcard::take_from_bytes::<String>(&bytes) {
                        *freed.entry(service).or_default() += bytes.len() as u64;
                    }
                }
            }
            for (service, bytes) in freed {
                let (used, keys) = book::usage(&book, &service)?;
                book::set_usage(&mut book, &service, (used.saturating_sub(bytes), keys))?;
            }
            Ok(())
        })();
        removed.map_err(self.failed("removing relayed outbox entries"))?;
        Ok(carried)
    }

    fn removed(&self, seqs: &[u64]) {
        if let Ok(mut relayed) = self.relayed_unremoved.lock() {
            for seq in seqs {
                relayed.remove(seq);
            }
        }
    }

    /// Notes outbox entries the broker has stored: they are no longer pending, and leave the
    /// file with the next commit. A crash before that relays them again, with the same ids.
    pub(crate) fn note_relayed(&self, seqs: &[u64]) {
        if let Ok(mut relayed) = self.relayed_unremoved.lock() {
            relayed.extend(seqs);
        }
    }

    /// Whether relayed entries wait to be removed from the file.
    pub(crate) fn has_relayed_unremoved(&self) -> bool {
        self.relayed_unremoved
            .lock()
            .is_ok_and(|relayed| !relayed.is_empty())
    }

    /// Up to `max` outbox entries not yet relayed and not for a destination in `skip`,
    /// oldest first, with their numbers.
    pub(crate) fn pending(
        &self,
        max: usize,
        skip: &std::collections::HashSet<String>,
    ) -> Result<Vec<(u64, OutboxEntry)>, StateError> {
        let relayed = self
            .relayed_unremoved
            .lock()
            .map(|relayed| relayed.clone())
            .unwrap_or_default();
        let mut pending = Vec::new();
        let mut undecodable = None;
        let read = (|| -> Result<(), redb::Error> {
            let txn = self.db.begin_read()?;
            let book = txn.open_table(BOOK)?;
            book::each_outbox(&book, |seq, bytes| {
                if relayed.contains(&seq) {
                    return Ok::<_, redb::Error>(true);
                }
                let entry: OutboxEntry = match postcard::from_bytes(bytes) {
                    Ok(entry) => entry,
                    Err(err) => {
                        undecodable = Some(StateError::Unavailable(format!(
                            "outbox entry {seq} of the state store {} does not decode: {err}; \
                             the file is damaged or was written by a newer switchyard",
                            self.path.display()
                        )));
                        return Ok(false);
                    }
                };
                if !skip.contains(&entry.message.destination) {
                    pending.push((seq, entry));
                }
                Ok(pending.len() < max)
            })
        })();
        read.map_err(self.failed("reading the outbox"))?;
        if let Some(err) = undecodable {
            return Err(err);
        }
        Ok(pending)
    }

    /// Removes the relayed entries from the file in a commit of their own, when no other
    /// commit came to carry them: not synced unless `sync` (the next commit's fsync makes it
    /// durable; until then a crash only relays them again, with the same ids).
    pub(crate) fn remove_relayed(&self, sync: bool) -> Result<(), StateError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|err| unavailable(&self.path, "removing relayed outbox entries", err))?;
        if !sync {
            txn.set_durability(redb::Durability::None).map_err(|err| {
                StateError::Unavailable(format!(
                    "the state store {} refused a non-durable commit: {err}",
                    self.path.display()
                ))
            })?;
        }
        let carried = self.carry_removals(&txn)?;
        txn.commit()
            .map_err(|err| unavailable(&self.path, "removing relayed outbox entries", err))?;
        self.removed(&carried);
        Ok(())
    }

    /// Messages in the outbox not yet relayed, and when the oldest was committed (ms since
    /// the epoch).
    pub(crate) fn outbox_depth(&self) -> Result<(u64, Option<u64>), StateError> {
        let read = (|| -> Result<_, redb::Error> {
            let txn = self.db.begin_read()?;
            let book = txn.open_table(BOOK)?;
            Ok(book::outbox_rows(&book)?)
        })();
        let stored = read.map_err(self.failed("reading the outbox"))?;
        let relayed = self
            .relayed_unremoved
            .lock()
            .map_or(0, |relayed| relayed.len() as u64);
        let oldest = self
            .pending(1, &std::collections::HashSet::new())?
            .first()
            .map(|(_, entry)| entry.committed_at_ms);
        Ok((stored.saturating_sub(relayed), oldest))
    }

    /// What each service stores, by name.
    pub(crate) fn usage(&self) -> Result<Vec<ServiceUsage>, StateError> {
        let read = (|| -> Result<_, redb::Error> {
            let txn = self.db.begin_read()?;
            let book = txn.open_table(BOOK)?;
            let all = book::usages(&book)?
                .into_iter()
                .map(|(service, bytes, keys)| ServiceUsage {
                    service,
                    keys,
                    bytes,
                    max_bytes: None,
                })
                .collect();
            Ok(all)
        })();
        read.map_err(self.failed("reading usage"))
    }

    /// Every key of `service`, in key order (for a backup).
    pub(crate) fn export(&self, service: &str) -> Result<Vec<StateEntry>, StateError> {
        let read = (|| -> Result<_, redb::Error> {
            let txn = self.db.begin_read()?;
            let entries = txn.open_table(ENTRIES)?;
            let mut all = Vec::new();
            each_key(&entries, service, "", |key, version, value| {
                all.push(StateEntry {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    version,
                });
                true
            })?;
            Ok(all)
        })();
        read.map_err(self.failed("exporting"))
    }

    /// Makes `entries` the whole state of `service` (a restore: keys not among them go), in
    /// one commit, within `max_bytes`. Returns how many keys it stored.
    pub(crate) fn import(
        &self,
        service: &str,
        max_bytes: u64,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<usize, StateError> {
        for (key, value) in &entries {
            check_write(key, Some(value))?;
        }
        let txn = self
            .db
            .begin_write()
            .map_err(|err| unavailable(&self.path, "importing", err))?;
        // Read inside the write transaction, so a commit cannot slip a key in between.
        let old = (|| -> Result<Vec<String>, redb::Error> {
            let table = txn.open_table(ENTRIES)?;
            let mut old = Vec::new();
            each_key(&table, service, "", |key, _, _| {
                old.push(key.to_owned());
                true
            })?;
            Ok(old)
        })()
        .map_err(self.failed("importing"))?;
        let count = entries.len();
        let keep: std::collections::HashSet<&str> =
            entries.iter().map(|(key, _)| key.as_str()).collect();
        let writes = old
            .iter()
            .filter(|key| !keep.contains(key.as_str()))
            .map(|key| (key.clone(), None))
            .chain(
                entries
                    .iter()
                    .map(|(key, value)| (key.clone(), Some(value.clone()))),
            )
            .collect();
        let transaction = Transaction {
            writes,
            ..Transaction::default()
        };
        self.apply(&txn, service, max_bytes, transaction)?;
        txn.commit()
            .map_err(|err| unavailable(&self.path, "importing", err))?;
        Ok(count)
    }

    /// The size of the store's file.
    pub(crate) fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |meta| meta.len())
    }
}

fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() {
        return Err(StateError::Invalid(
            "a state key is empty; give every key at least one character".into(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StateError::TooLarge(format!(
            "a state key of {} bytes is longer than the {MAX_KEY_BYTES} a key may have; hash \
             or shorten it",
            key.len()
        )));
    }
    Ok(())
}

/// A write of `value` (none: a delete) at `key`: the key's and the value's sizes.
fn check_write(key: &str, value: Option<&Vec<u8>>) -> Result<(), StateError> {
    check_key(key)?;
    match value {
        Some(value) if value.len() > MAX_VALUE_BYTES => Err(StateError::TooLarge(format!(
            "the value of key `{key}` has {} bytes, more than the {MAX_VALUE_BYTES} a value may \
             have; split it over several keys or store a reference",
            value.len()
        ))),
        _ => Ok(()),
    }
}

/// Calls `each(key, version, value)` for `service`'s keys from `start` on, in key order,
/// while it answers `true`.
fn each_key(
    entries: &impl ReadableTable<(&'static str, &'static str), (u64, &'static [u8])>,
    service: &str,
    start: &str,
    mut each: impl FnMut(&str, u64, &[u8]) -> bool,
) -> Result<(), redb::Error> {
    for found in entries.range((service, start)..)? {
        let (key, value) = found?;
        let (owner, key) = key.value();
        let (version, value) = value.value();
        if owner != service || !each(key, version, value) {
            break;
        }
    }
    Ok(())
}

fn check_transaction(transaction: &Transaction) -> Result<(), StateError> {
    for (what, count, max) in [
        ("reads", transaction.reads.len(), MAX_TRANSACTION_ITEMS),
        ("writes", transaction.writes.len(), MAX_TRANSACTION_ITEMS),
        (
            "messages",
            transaction.messages.len(),
            MAX_TRANSACTION_MESSAGES,
        ),
    ] {
        if count > max {
            return Err(StateError::Invalid(format!(
                "a transaction holds {count} {what}, more than the {max} one may hold; split \
                 it into several transactions"
            )));
        }
    }
    for (key, _) in &transaction.reads {
        check_key(key)?;
    }
    let mut written = std::collections::HashSet::with_capacity(transaction.writes.len());
    for (key, value) in &transaction.writes {
        check_write(key, value.as_ref())?;
        if !written.insert(key.as_str()) {
            return Err(StateError::Invalid(format!(
                "a transaction writes key `{key}` twice; write each key once (the last value)"
            )));
        }
    }
    for message in &transaction.messages {
        if message.destination.is_empty() {
            return Err(StateError::Invalid(
                "a transaction's message has no destination; name a queue or topic".into(),
            ));
        }
    }
    Ok(())
}

/// What the store's file has been asked to do: a commit's cost, which `GET /state` shows and
/// the benchmark checks.
#[derive(Debug, Default)]
struct FileCounts {
    fsyncs: AtomicU64,
    /// Page runs written (a commit writes each changed page and the header).
    writes: AtomicU64,
}

/// The file, counting its fsyncs and writes.
#[derive(Debug)]
struct CountingBackend {
    inner: redb::backends::FileBackend,
    counts: Arc<FileCounts>,
}

type BackendResult<T> = Result<T, redb::BackendError>;
type Bound = std::ops::Bound<u64>;

impl redb::StorageBackend for CountingBackend {
    fn len(&self) -> BackendResult<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> BackendResult<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> BackendResult<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> BackendResult<()> {
        self.counts.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> BackendResult<()> {
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(offset, data)
    }
    fn close(&self) -> BackendResult<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound, end: Bound) -> BackendResult<bool> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound, end: Bound) -> BackendResult<bool> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound, end: Bound) -> BackendResult<()> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound, end: Bound) -> BackendResult<()> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound, end: Bound) -> BackendResult<()> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound, end: Bound) -> BackendResult<bool> {
        self.inner.query_lock_range(start, end)
    }
}
