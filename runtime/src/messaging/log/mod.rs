//! A queue's durable log: append-only files of length-prefixed, checksummed postcard records,
//! written by one thread per queue that commits in groups.
//!
//! `<queue>.log` holds what the queue owes: `Sent` (a message), `Failed` (attempts so far) and
//! `Done` (acknowledged or dead-lettered). Replaying it gives the messages still to deliver,
//! in the order they were sent. `<queue>.dead` is the dead-letter file: each message the queue
//! gave up on, whole, with why; the node never deletes it. `<queue>.lock` is held while a node
//! has the queue open, so two nodes cannot share one log.
//!
//! Every append waits for `fsync`. Appends that arrive while a write is in progress are written
//! and synced together (group commit), so many senders cost one sync. A record is
//! `[u32 length][u32 crc32][postcard]` (little-endian). Replay cuts off a torn tail (a write
//! cut short by a crash), saying how many bytes it dropped. Damage in the middle (a flipped
//! byte, a bad sector) costs only the damaged bytes: replay finds the next whole record after
//! them and goes on, logs an error, keeps the damaged bytes aside in `<file>.damaged` and
//! rewrites the file without them. When most records are settled, the queue asks for a compaction:
//! the live messages are written to a new file that replaces the log atomically.
//!
//! A failed write or sync fails its whole batch: the senders hear `unavailable`, the queue says
//! why (and `/health` with it), and the next batch first cuts both files back to their last
//! good sync, so a half-written record never sits between good ones. The writer tells each
//! append's outcome on its own thread, in the order of the log, so the queue makes a message
//! deliverable only once every message before it is stored or refused.
//!
//! The files are reached through [`Storage`] ([`storage`]): [`Disk`] in the node, a simulated
//! disk that fails and crashes on purpose in the model tests (`queue/model_tests.rs`).

mod storage;

#[cfg(test)]
pub(super) mod sim;

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use storage::LogFile;
#[cfg(feature = "bench")]
pub(crate) use storage::UnsyncedDisk;
pub(crate) use storage::{Disk, Storage};

pub(crate) use crate::wire::StoredMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The largest record accepted: a message body plus its headers.
pub(super) const MAX_RECORD_BYTES: usize = 2 * 1024 * 1024;
const HEADER_BYTES: usize = 8;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) enum Record {
    Sent(StoredMessage),
    /// `attempts` deliveries of `seq` have failed so far.
    Failed {
        seq: u64,
        attempts: u32,
    },
    /// `seq` was acknowledged or dead-lettered: nothing more is owed.
    Done {
        seq: u64,
    },
    // A topic's records name the subscription (its service); a queue's have one subscription
    // and keep the records above, which also let a message go. New variants go at the end:
    // postcard numbers them in order.
    /// `attempts` deliveries of `seq` to `subscription` have failed so far.
    FailedFor {
        subscription: String,
        seq: u64,
        attempts: u32,
    },
    /// `subscription` is done with `seq` (acknowledged or dead-lettered); the topic keeps it.
    DoneFor {
        subscription: String,
        seq: u64,
    },
    /// `subscription` owes every kept message from `seq` on, and nothing before: where a new
    /// subscription starts, where a replay rewinds it to, and a compacted log's cursor.
    StartAt {
        subscription: String,
        seq: u64,
    },
}

/// A topic subscription's place, as its log records left it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    /// It owes the messages from here on.
    pub(super) start: u64,
    /// Messages after `start` it is done with.
    pub(super) done: std::collections::BTreeSet<u64>,
    /// Failed deliveries of messages it still owes.
    pub(super) attempts: std::collections::HashMap<u64, u32>,
}

/// A message the queue gave up on, as the dead-letter file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeadLetter {
    pub(crate) message: StoredMessage,
    pub(crate) attempts: u32,
    /// Who gave up, and why.
    pub(crate) reason: String,
    /// What the last delivery attempt got.
    pub(crate) last_error: String,
    pub(crate) at_ms: u64,
}

/// Why a log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error(
        "{} is held by another running node\n  hint: two nodes cannot share a queue's log; give \
         each node its own `data_dir`, or stop the other node", path.display()
    )]
    Locked { path: PathBuf },
    #[error("the log writer of queue `{0}` stopped after a write error; restart the node")]
    WriterGone(String),
    #[error("a record of {0} bytes is larger than the {MAX_RECORD_BYTES} bytes a log takes")]
    TooLarge(usize),
    #[error(
        "{} holds a topic (its subscriptions' places), and a queue cannot take it over: as a \
         queue it would owe every message the topic kept\n  hint: give the queue another name, \
         or move the topic's files (its .log and .dead) out of the way if their messages are \
         not needed", path.display()
    )]
    HoldsATopic { path: PathBuf },
}

/// What replaying a queue's files found.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Messages still owed (a queue) or kept (a topic), by sequence number, with a queue's
    /// failed attempts.
    pub(super) pending: BTreeMap<u64, (StoredMessage, u32)>,
    /// A topic's subscriptions, by service, as their records left them.
    pub(super) cursors: std::collections::HashMap<String, Cursor>,
    /// The next free sequence number.
    pub(super) next_seq: u64,
    /// Records in the log that no longer describe a pending message.
    pub(super) settled_records: usize,
    /// Every dead letter so far, oldest first.
    pub(super) dead: Vec<DeadLetter>,
    /// The bytes they take in the dead-letter file.
    pub(super) dead_bytes: u64,
}

/// The files of one queue.
struct Paths {
    log: PathBuf,
    dead: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn new(dir: &Path, queue: &str) -> Self {
        Self {
            log: dir.join(format!("{queue}.log")),
            dead: dir.join(format!("{queue}.dead")),
            lock: dir.join(format!("{queue}.lock")),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |cause| LogError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Encodes one record with its length and checksum.
pub(super) fn encode<T: Serialize>(record: &T, into: &mut Vec<u8>) -> Result<(), LogError> {
    let payload = postcard::to_stdvec(record).map_err(|err| LogError::Io {
        path: PathBuf::from("<encode>"),
        cause: io::Error::other(err),
    })?;
    if payload.len() > MAX_RECORD_BYTES {
        return Err(LogError::TooLarge(payload.len()));
    }
    into.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    into.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    into.extend_from_slice(&payload);
    Ok(())
}

/// The record at `at` in `bytes` and where the next one starts, if one is whole there: its
/// length fits, its checksum matches and it decodes.
fn decode_at<T: serde::de::DeserializeOwned>(bytes: &[u8], at: usize) -> Option<(T, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER_BYTES)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let end = at + HEADER_BYTES + len;
    let payload = bytes.get(at + HEADER_BYTES..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let record = postcard::from_bytes(payload).ok()?;
    Some((record, end))
}

/// Decodes the records at the front of `bytes`; returns them and how many bytes they took.
/// Stops at the first record that is cut short, too large, fails its checksum or does not
/// decode.
pub(super) fn decode_all<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, next)) = decode_at(bytes, at) {
        records.push(record);
        at = next;
    }
    (records, at)
}

/// What replaying a file found: its whole records, and the bytes that were not one.
struct Scan<T> {
    records: Vec<T>,
    /// Byte ranges of the whole records, in order.
    kept: Vec<Range<usize>>,
    /// Damage with whole records after it: skipped, kept aside for an operator.
    damaged: Vec<Range<usize>>,
    /// Where a tail with no whole record in it starts (a write torn by a crash).
    torn_from: Option<usize>,
}

impl<T> Scan<T> {
    /// The bytes of the whole records of `bytes` (the file this scanned), in order.
    fn whole_records(&self, bytes: &[u8]) -> Vec<u8> {
        self.kept
            .iter()
            .flat_map(|range| &bytes[range.clone()])
            .copied()
            .collect()
    }
}

/// Replays `bytes`: where a record is damaged, looks for the next whole record after it and
/// goes on from there, so damage in the middle costs the damaged bytes only. What follows the
/// last whole record is a torn tail. A whole record is a length that fits, a matching CRC-32
/// and a payload that decodes: bytes that pass all three by chance are rare enough to take.
fn scan<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Scan<T> {
    let mut scan = Scan {
        records: Vec::new(),
        kept: Vec::new(),
        damaged: Vec::new(),
        torn_from: None,
    };
    let mut at = 0;
    while at < bytes.len() {
        if let Some((record, next)) = decode_at(bytes, at) {
            scan.records.push(record);
            match scan.kept.last_mut() {
                Some(last) if last.end == at => last.end = next,
                _ => scan.kept.push(at..next),
            }
            at = next;
            continue;
        }
        match (at + 1..bytes.len()).find(|&from| decode_at::<T>(bytes, from).is_some()) {
            Some(resume) => {
                scan.damaged.push(at..resume);
                at = resume;
            }
            None => {
                scan.torn_from = Some(at);
                break;
            }
        }
    }
    scan
}

/// Reads a whole file (missing: empty). A torn tail is cut off; damaged bytes in the middle
/// are appended to `<file>.damaged` (for an operator to look at) and the file is rewritten
/// without them, keeping every whole record after them.
fn read_valid<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    path: &Path,
    queue: &str,
) -> Result<Vec<T>, LogError> {
    let Some(bytes) = storage.read(path).map_err(io_error(path))? else {
        return Ok(Vec::new());
    };
    let scan = scan::<T>(&bytes);
    if let Some(torn_from) = scan.torn_from {
        tracing::warn!(
            queue,
            file = %path.display(),
            dropped_bytes = bytes.len() - torn_from,
            kept_records = scan.records.len(),
            "the end of a queue file was torn (a crash mid-write?); cut it off"
        );
    }
    if !scan.damaged.is_empty() {
        let aside = keep_aside(storage, path, &bytes, &scan.damaged).map_err(io_error(path))?;
        let damaged_bytes: usize = scan.damaged.iter().map(ExactSizeIterator::len).sum();
        tracing::error!(
            queue,
            file = %path.display(),
            damaged_bytes,
            damaged_spans = scan.damaged.len(),
            kept_records = scan.records.len(),
            kept_aside = %aside.display(),
            "a queue file is damaged in the middle (disk or filesystem fault?): skipped the \
             damaged bytes, kept every whole record around them; the damaged bytes are kept \
             aside, and any message in them is lost"
        );
        storage
            .replace(path, &scan.whole_records(&bytes))
            .and_then(|_| sync_parent(storage, path))
            .map_err(io_error(path))?;
    } else if let Some(torn_from) = scan.torn_from {
        let mut file = storage.append(path).map_err(io_error(path))?;
        file.set_len(torn_from as u64).map_err(io_error(path))?;
        file.sync_data().map_err(io_error(path))?;
    }
    Ok(scan.records)
}

/// Syncs the directory `path` is in, so its name (created, renamed) survives a crash.
fn sync_parent(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => storage.sync_dir(dir),
        _ => Ok(()),
    }
}

/// Appends the `damaged` spans of `bytes` (read from `path`) to `<path>.damaged`, each after a
/// line saying where it was; returns that file's path.
fn keep_aside(
    storage: &dyn Storage,
    path: &Path,
    bytes: &[u8],
    damaged: &[Range<usize>],
) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(".damaged");
    let aside = PathBuf::from(name);
    let mut kept = Vec::new();
    for range in damaged {
        kept.extend_from_slice(
            format!(
                "# {} bytes at offset {} of {}, found at {} ms since the epoch\n",
                range.len(),
                range.start,
                path.display(),
                super::now_ms()
            )
            .as_bytes(),
        );
        kept.extend_from_slice(&bytes[range.clone()]);
        kept.push(b'\n');
    }
    let mut file = storage.append(&aside)?;
    sync_parent(storage, &aside)?;
    file.write_all(&kept)?;
    file.sync_data()?;
    Ok(aside)
}

/// Opens queue `queue`'s files in `dir` on `storage` (creating them), takes its lock and
/// replays it.
pub(super) fn open(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    queue: &str,
) -> Result<(Writer, Recovered), LogError> {
    storage.create_dir_all(dir).map_err(io_error(dir))?;
    let paths = Paths::new(dir, queue);
    let lock = match storage.lock(&paths.lock).map_err(io_error(&paths.lock))? {
        Some(lock) => lock,
        None => return Err(LogError::Locked { path: paths.lock }),
    };

    let mut recovered = Recovered::default();
    for record in read_valid::<Record>(&**storage, &paths.log, queue)? {
        match record {
            Record::Sent(message) => {
                recovered.next_seq = recovered.next_seq.max(message.seq + 1);
                recovered.pending.insert(message.seq, (message, 0));
            }
            Record::Failed { seq, attempts } => {
                recovered.settled_records += 1;
                if let Some((_, known)) = recovered.pending.get_mut(&seq) {
                    *known = attempts;
                }
            }
            Record::Done { seq } => {
                // The `Sent` it settles is settled too.
                recovered.settled_records += 2;
                recovered.pending.remove(&seq);
            }
            // A seq a record names is never given to a new message: a cursor may point past
            // messages whose writes failed, and a message that reused their offsets would be
            // skipped.
            Record::FailedFor {
                subscription,
                seq,
                attempts,
            } => {
                recovered.next_seq = recovered.next_seq.max(seq + 1);
                recovered.settled_records += 1;
                let cursor = recovered.cursors.entry(subscription).or_default();
                cursor.attempts.insert(seq, attempts);
            }
            Record::DoneFor { subscription, seq } => {
                recovered.next_seq = recovered.next_seq.max(seq + 1);
                recovered.settled_records += 1;
                let cursor = recovered.cursors.entry(subscription).or_default();
                cursor.attempts.remove(&seq);
                if seq >= cursor.start {
                    cursor.done.insert(seq);
                }
            }
            Record::StartAt { subscription, seq } => {
                recovered.next_seq = recovered.next_seq.max(seq);
                recovered.settled_records += 1;
                recovered.cursors.insert(
                    subscription,
                    Cursor {
                        start: seq,
                        ..Cursor::default()
                    },
                );
            }
        }
    }
    recovered.dead = read_valid::<DeadLetter>(&**storage, &paths.dead, queue)?;
    for dead in &recovered.dead {
        recovered.next_seq = recovered.next_seq.max(dead.message.seq + 1);
    }

    let append = |path: &Path| storage.append(path).map_err(io_error(path));
    let (log, dead) = (append(&paths.log)?, append(&paths.dead)?);
    recovered.dead_bytes = dead.len().map_err(io_error(&paths.dead))?;
    let files = Files {
        log_good: log.len().map_err(io_error(&paths.log))?,
        dead_good: recovered.dead_bytes,
        log,
        dead,
        dir_unsynced: false,
        paths,
        storage: storage.clone(),
        _lock: lock,
    };
    // The files may be new: their names must survive a crash as their records will.
    storage.sync_dir(dir).map_err(io_error(dir))?;
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        storage.sync_dir(parent).map_err(io_error(parent))?;
    }
    let broken = Arc::new(std::sync::Mutex::new(None));
    let (commands, inbox) = mpsc::channel();
    let name = queue.to_owned();
    std::thread::Builder::new()
        .name(format!("queue-log-{queue}"))
        .spawn({
            let broken = broken.clone();
            move || write_loop(files, inbox, &name, &broken)
        })
        .map_err(io_error(dir))?;
    Ok((
        Writer {
            queue: queue.to_owned(),
            commands,
            broken,
        },
        recovered,
    ))
}

struct Files {
    log: Box<dyn LogFile>,
    dead: Box<dyn LogFile>,
    /// Each file's length at its last good sync: a failed batch is cut back to it before
    /// the writer tries again, so a half-written record never sits between good ones.
    log_good: u64,
    dead_good: u64,
    /// A file was replaced but the directory sync that makes the new name durable failed:
    /// until one succeeds, a crash may bring the old file back, so nothing written to the new
    /// one counts as stored.
    dir_unsynced: bool,
    paths: Paths,
    storage: Arc<dyn Storage>,
    /// Held (locked) for as long as the writer runs.
    _lock: Box<dyn Send>,
}

impl Files {
    /// Cuts both files back to their last good sync and syncs them (and their directory, if a
    /// replacement is not yet durable).
    fn repair(&mut self) -> io::Result<()> {
        self.log.set_len(self.log_good)?;
        self.dead.set_len(self.dead_good)?;
        self.log.sync_data()?;
        self.dead.sync_data()?;
        self.sync_dir_if_needed()
    }

    fn sync_dir_if_needed(&mut self) -> io::Result<()> {
        if self.dir_unsynced {
            sync_parent(&*self.storage, &self.paths.log)?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Both files are on disk as they are now.
    fn mark_good(&mut self) -> io::Result<()> {
        self.log_good = self.log.len()?;
        self.dead_good = self.dead.len()?;
        Ok(())
    }

    /// Replaces the file `which` with `contents` (synced); the handle and its good length
    /// follow the new file once the rename happened, even if the directory sync then fails.
    fn replace(&mut self, which: Which, contents: &[u8]) -> io::Result<()> {
        let path = match which {
            Which::Log => &self.paths.log,
            Which::Dead => &self.paths.dead,
        };
        let file = self.storage.replace(path, contents)?;
        match which {
            Which::Log => (self.log, self.log_good) = (file, contents.len() as u64),
            Which::Dead => (self.dead, self.dead_good) = (file, contents.len() as u64),
        }
        self.dir_unsynced = true;
        self.sync_dir_if_needed()
    }
}

#[derive(Clone, Copy)]
enum Which {
    Log,
    Dead,
}

enum Command {
    /// Records for the dead-letter file (first) and the log, synced before `done` is told.
    Append {
        dead: Vec<u8>,
        log: Vec<u8>,
        done: Told,
    },
    /// Replace the log with these records (the live messages).
    Compact { log: Vec<u8> },
    /// Sync, release the files and their lock, then say so; later appends fail.
    Close { done: oneshot::Sender<()> },
    /// Read every dead letter, and which bytes of the dead-letter file they are.
    ReadDead {
        done: oneshot::Sender<Result<(Vec<DeadLetter>, DeadPrefix), String>>,
    },
    /// Drop these first bytes of the dead-letter file (the letters a redrive re-sent);
    /// letters written since stay.
    DropDead {
        prefix: DeadPrefix,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Told on the writer thread whether an append is on disk (`Err`: why not).
type Told = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Sends records to a queue's writer thread. Commands are written in the order they are sent.
#[derive(Clone)]
pub(super) struct Writer {
    queue: String,
    commands: mpsc::Sender<Command>,
    /// Why the last write failed, while the files are not writable.
    broken: Arc<std::sync::Mutex<Option<String>>>,
}

impl Writer {
    /// Queues `log` (and `dead`) records for writing and returns a future that resolves once
    /// they are on disk. Sending is synchronous, so callers that order their sends under a lock
    /// get that order in the file.
    pub(super) fn append(
        &self,
        dead: Vec<u8>,
        log: Vec<u8>,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        self.append_then(dead, log, |_| ())
    }

    /// [`Writer::append`], and `then` is told whether the records are on disk: on the writer
    /// thread, in the order of the appends, before the future resolves, and even if the
    /// future is dropped. What depends on the order of outcomes (a message may be delivered
    /// only once every message sent before it is stored or refused) belongs in `then`. If the
    /// writer is gone (the queue closed), `then` is never told: nothing will be stored again.
    pub(super) fn append_then(
        &self,
        dead: Vec<u8>,
        log: Vec<u8>,
        then: impl FnOnce(bool) + Send + 'static,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        let (tell, synced) = oneshot::channel();
        let done: Told = Box::new(move |outcome: Result<(), String>| {
            then(outcome.is_ok());
            let _ = tell.send(outcome);
        });
        // Not told here if the writer is gone: the caller may hold the lock `then` takes.
        let sent = self.commands.send(Command::Append { dead, log, done });
        let queue = self.queue.clone();
        async move {
            sent.map_err(|_| LogError::WriterGone(queue.clone()))?;
            match synced.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(LogError::Io {
                    path: PathBuf::from(format!("queue `{queue}`")),
                    cause: io::Error::other(reason),
                }),
                Err(_) => Err(LogError::WriterGone(queue)),
            }
        }
    }

    /// Why the queue's files cannot be written now, if they cannot (the writer retries with
    /// every new write and clears this once one succeeds).
    pub(super) fn unwritable(&self) -> Option<String> {
        self.broken.lock().ok()?.clone()
    }

    /// Writes what is queued, releases the files (and the lock) and resolves once they are
    /// released, so another node (or a restart) can open the queue.
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close { done }).is_ok() {
            let _ = closed.await;
        }
    }

    /// Every dead letter in the file, and the bytes they take (for [`Writer::drop_dead`]).
    pub(super) async fn read_dead(&self) -> Result<(Vec<DeadLetter>, DeadPrefix), LogError> {
        let (done, read) = oneshot::channel();
        self.commands
            .send(Command::ReadDead { done })
            .map_err(|_| LogError::WriterGone(self.queue.clone()))?;
        self.answer(read.await)
    }

    /// Removes the letters [`Writer::read_dead`] read from the dead-letter file, keeping
    /// letters written since; refused if the file no longer starts with them.
    pub(super) async fn drop_dead(&self, prefix: DeadPrefix) -> Result<(), LogError> {
        let (done, dropped) = oneshot::channel();
        self.commands
            .send(Command::DropDead { prefix, done })
            .map_err(|_| LogError::WriterGone(self.queue.clone()))?;
        self.answer(dropped.await)
    }

    fn answer<T>(
        &self,
        answer: Result<Result<T, String>, oneshot::error::RecvError>,
    ) -> Result<T, LogError> {
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(reason)) => Err(LogError::Io {
                path: PathBuf::from(format!("queue `{}`", self.queue)),
                cause: io::Error::other(reason),
            }),
            Err(_) => Err(LogError::WriterGone(self.queue.clone())),
        }
    }

    /// Asks the writer to replace the log with `live` (encoded `Sent`/`Failed` records of every
    /// message still owed). Must be sent in order with the appends it summarizes.
    pub(super) fn compact(&self, live: Vec<u8>) {
        let _ = self.commands.send(Command::Compact { log: live });
    }
}

fn write_loop(
    mut files: Files,
    inbox: mpsc::Receiver<Command>,
    queue: &str,
    shared: &std::sync::Mutex<Option<String>>,
) {
    let mut broken: Option<String> = None;
    let mut closing = None;
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        batch.extend(inbox.try_iter());
        // A failed batch left the files as they were at the last good sync plus whatever
        // was half-written: cut that off and try again with this batch.
        if broken.is_some() {
            match files.repair() {
                Ok(()) => {
                    tracing::info!(queue, "queue log writable again");
                    broken = None;
                }
                Err(err) => broken = Some(format!("still cannot write: {err}")),
            }
        }
        let mut waiting = Vec::new();
        let mut wrote_dead = false;
        for command in batch {
            match command {
                Command::Close { done } => closing = Some(done),
                Command::Append { done, .. } if closing.is_some() => {
                    done(Err("the queue is closed (the node is stopping)".into()));
                }
                Command::Compact { .. } if closing.is_some() => {}
                // While the files are unwritable the dead-letter file may still hold letters
                // the repair will cut off: not a file to redrive from.
                Command::ReadDead { done } => {
                    let _ = done.send(match &broken {
                        Some(reason) => Err(reason.clone()),
                        None => read_dead(&mut files).map_err(|err| err.to_string()),
                    });
                }
                Command::DropDead { prefix, done } => {
                    let _ = done.send(match &broken {
                        Some(reason) => Err(reason.clone()),
                        None => drop_dead(&mut files, prefix),
                    });
                }
                Command::Append { dead, log, done } => {
                    if broken.is_none()
                        && let Err(err) = write_pair(&mut files, &dead, &log)
                    {
                        broken = Some(err.to_string());
                    }
                    wrote_dead |= !dead.is_empty();
                    waiting.push(done);
                }
                Command::Compact { log } => {
                    if broken.is_none() {
                        // Earlier appends of this batch are in the old file; sync them first so
                        // the replacement summarizes what is on disk.
                        let compacted = files
                            .log
                            .sync_data()
                            .and_then(|()| files.replace(Which::Log, &log));
                        match compacted {
                            Ok(()) => {
                                tracing::debug!(queue, bytes = log.len(), "queue log compacted")
                            }
                            // Either the old log is intact (the new one replaces it only once it
                            // is whole) and the next compaction tries again, or the new one is
                            // in place but its name not yet durable, which the batch's sync
                            // below retries.
                            Err(err) => {
                                tracing::warn!(queue, error = %err, "queue log compaction failed")
                            }
                        }
                    }
                }
            }
        }
        if broken.is_none() {
            let synced = files.log.sync_data().and_then(|()| {
                if wrote_dead {
                    files.dead.sync_data()
                } else {
                    Ok(())
                }
            });
            let synced = synced
                .and_then(|()| files.sync_dir_if_needed())
                .and_then(|()| files.mark_good());
            match synced {
                Ok(()) => {}
                Err(err) => broken = Some(err.to_string()),
            }
        }
        if let Some(reason) = &broken {
            tracing::error!(queue, %reason, "queue log write failed; this batch's sends fail, the next write tries again");
        }
        if let Ok(mut shared) = shared.lock() {
            shared.clone_from(&broken);
        }
        for done in waiting {
            done(match &broken {
                None => Ok(()),
                Some(reason) => Err(reason.clone()),
            });
        }
        if let Some(done) = closing {
            drop(files);
            let _ = done.send(());
            return;
        }
    }
}

fn write_pair(files: &mut Files, dead: &[u8], log: &[u8]) -> io::Result<()> {
    if !dead.is_empty() {
        // The dead letter is synced before the `Done` that drops the message from the log, so a
        // crash between them keeps the message (delivered again, not lost).
        files.dead.write_all(dead)?;
        files.dead.sync_data()?;
    }
    files.log.write_all(log)
}

/// The first bytes of the dead-letter file as a redrive read them.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeadPrefix {
    len: u64,
    crc: u32,
}

impl DeadPrefix {
    /// How many bytes.
    pub(super) fn len(self) -> u64 {
        self.len
    }
}

fn read_dead(files: &mut Files) -> io::Result<(Vec<DeadLetter>, DeadPrefix)> {
    files.dead.sync_data()?;
    let bytes = files.storage.read(&files.paths.dead)?.unwrap_or_default();
    let (letters, valid) = decode_all::<DeadLetter>(&bytes);
    let prefix = DeadPrefix {
        len: valid as u64,
        crc: crc32fast::hash(&bytes[..valid]),
    };
    Ok((letters, prefix))
}

fn drop_dead(files: &mut Files, prefix: DeadPrefix) -> Result<(), String> {
    let bytes = files
        .storage
        .read(&files.paths.dead)
        .map_err(|err| err.to_string())?
        .unwrap_or_default();
    let read = usize::try_from(prefix.len)
        .ok()
        .and_then(|len| bytes.get(..len));
    match read {
        Some(read) if crc32fast::hash(read) == prefix.crc => files
            .replace(Which::Dead, &bytes[read.len()..])
            .map_err(|err| err.to_string()),
        _ => Err("the dead-letter file changed since the redrive read it".into()),
    }
}

/// The fuzz target's check of [`scan`]: whatever the bytes, replay returns; whole records,
/// damage and a torn tail are disjoint spans inside the file, in order; what replay kept
/// replays again to the same records.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_replay(bytes: &[u8]) {
    let first = scan::<Record>(bytes);
    let mut spans: Vec<&Range<usize>> = first.kept.iter().chain(&first.damaged).collect();
    spans.sort_by_key(|span| span.start);
    let mut end = 0;
    for span in spans {
        assert!(
            span.start >= end && span.end <= bytes.len() && span.start < span.end,
            "{span:?}"
        );
        end = span.end;
    }
    if let Some(torn_from) = first.torn_from {
        assert!(torn_from >= end && torn_from <= bytes.len());
    }
    let again = scan::<Record>(&first.whole_records(bytes));
    assert_eq!(again.records, first.records);
    assert!(again.damaged.is_empty() && again.torn_from.is_none());
}

/// A log of a few records, for the seeded mutation test's seeds.
#[cfg(test)]
pub(crate) fn sample_log() -> Vec<u8> {
    let message = |seq: u64| StoredMessage {
        seq,
        id: format!("orders-{seq}"),
        kind: crate::wire::MessageKind::Command,
        key: Some("k".into()),
        headers: vec![("h".into(), "v".into())],
        reply_to: None,
        trace_context: None,
        body: format!("order {seq}").into_bytes(),
        sender: "shop".into(),
        sent_at_ms: 7,
    };
    let mut bytes = Vec::new();
    for record in [
        Record::Sent(message(0)),
        Record::Sent(message(1)),
        Record::Failed {
            seq: 0,
            attempts: 1,
        },
        Record::Done { seq: 1 },
        Record::Sent(message(2)),
    ] {
        let _ = encode(&record, &mut bytes);
    }
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;
    use crate::wire::MessageKind;

    fn disk() -> Arc<dyn Storage> {
        Arc::new(Disk)
    }

    fn message(seq: u64, body: &str) -> StoredMessage {
        StoredMessage {
            seq,
            id: format!("q-{seq}"),
            kind: MessageKind::Event,
            key: None,
            headers: vec![("a".into(), "b".into())],
            reply_to: None,
            trace_context: None,
            body: body.as_bytes().to_vec(),
            sender: "test".into(),
            sent_at_ms: 1,
        }
    }

    fn records(list: &[Record]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for record in list {
            encode(record, &mut bytes).unwrap();
        }
        bytes
    }

    #[tokio::test]
    async fn replay_keeps_what_is_owed_in_order_with_its_attempts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, recovered) = open(&disk(), dir.path(), "q").unwrap();
            assert!(recovered.pending.is_empty());
            let log = records(&[
                Record::Sent(message(0, "zero")),
                Record::Sent(message(1, "one")),
                Record::Sent(message(2, "two")),
                Record::Done { seq: 1 },
                Record::Failed {
                    seq: 2,
                    attempts: 3,
                },
            ]);
            writer.append(Vec::new(), log).await.unwrap();
        }
        // The writer thread ends when its sender is dropped; wait for its lock to go.
        let recovered = reopen(dir.path()).await;
        let pending: Vec<_> = recovered
            .pending
            .values()
            .map(|(m, attempts)| (m.body.clone(), *attempts))
            .collect();
        assert_eq!(pending, vec![(b"zero".to_vec(), 0), (b"two".to_vec(), 3)]);
        assert_eq!(recovered.next_seq, 3);
    }

    fn bodies(recovered: &Recovered) -> Vec<Vec<u8>> {
        recovered
            .pending
            .values()
            .map(|(m, _)| m.body.clone())
            .collect()
    }

    /// A simulated disk (clone it to fail and crash it) and the log of queue `q` on it.
    fn on_sim(seed: u64) -> (sim::SimDisk, Arc<dyn Storage>, &'static Path, Writer) {
        let sim = sim::SimDisk::new(seed);
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let dir = Path::new("/sim/queues");
        let (writer, _) = open(&storage, dir, "q").unwrap();
        (sim, storage, dir, writer)
    }

    #[tokio::test]
    async fn a_failed_write_fails_its_sends_only_and_the_queue_recovers_by_itself() {
        let (sim, storage, dir, writer) = on_sim(1);
        let good = records(&[Record::Sent(message(0, "before"))]);
        writer.append(Vec::new(), good).await.unwrap();
        assert_eq!(writer.unwritable(), None);
        // The disk fills up mid-record: that send fails, and the queue says why.
        sim.fail_next(sim::Op::Write, io::ErrorKind::StorageFull);
        let lost = records(&[Record::Sent(message(1, "never acknowledged"))]);
        let failed = writer.append(Vec::new(), lost).await;
        assert!(failed.is_err());
        let reason = writer.unwritable().unwrap();
        assert!(reason.contains("simulated fault in Write"), "{reason}");
        // Space again: the next write cuts the half record off and succeeds.
        let after = records(&[Record::Sent(message(2, "after"))]);
        writer.append(Vec::new(), after).await.unwrap();
        assert_eq!(writer.unwritable(), None);
        writer.close().await;
        // The log holds exactly the acknowledged records, with no damage between them.
        let bytes = sim.contents(&dir.join("q.log")).unwrap();
        let scan = scan::<Record>(&bytes);
        assert!(scan.damaged.is_empty() && scan.torn_from.is_none());
        let (_, recovered) = open(&storage, dir, "q").unwrap();
        assert_eq!(
            bodies(&recovered),
            vec![b"before".to_vec(), b"after".to_vec()]
        );
    }

    #[tokio::test]
    async fn a_compaction_whose_rename_is_not_yet_durable_fails_the_sends_after_it_until_it_is() {
        let (sim, storage, dir, writer) = on_sim(2);
        let mut log = records(&[Record::Sent(message(0, "settled"))]);
        encode(&Record::Done { seq: 0 }, &mut log).unwrap();
        encode(&Record::Sent(message(1, "owed")), &mut log).unwrap();
        writer.append(Vec::new(), log).await.unwrap();
        // The new log is renamed into place, but the directory sync fails (and again when the
        // batch ends): until a directory sync succeeds, a crash could bring the old log back,
        // so an append to the new one must not be acknowledged.
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        writer.compact(records(&[Record::Sent(message(1, "owed"))]));
        // In the compaction's batch it fails; in a later one the repair's directory sync
        // succeeds first: either way an acknowledged send must survive the crash.
        let unsure = records(&[Record::Sent(message(2, "unsure"))]);
        let unsure_acked = writer.append(Vec::new(), unsure).await.is_ok();
        let sure = records(&[Record::Sent(message(3, "sure"))]);
        writer.append(Vec::new(), sure).await.unwrap();
        sim.crash();
        let (_, recovered) = open(&storage, dir, "q").unwrap();
        let mut expected = vec![b"owed".to_vec()];
        if unsure_acked {
            expected.push(b"unsure".to_vec());
        }
        expected.push(b"sure".to_vec());
        assert_eq!(bodies(&recovered), expected);
    }

    async fn reopen(dir: &Path) -> Recovered {
        for _ in 0..100 {
            match open(&disk(), dir, "q") {
                Ok((_, recovered)) => return recovered,
                Err(LogError::Locked { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(err) => panic!("{err}"),
            }
        }
        panic!("the writer thread kept its lock");
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_the_records_before_it_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = records(&[Record::Sent(message(0, "kept"))]);
        let torn = records(&[Record::Sent(message(1, "torn"))]);
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(dir.path().join("q.log"), &bytes).unwrap();
        let recovered = reopen(dir.path()).await;
        assert_eq!(recovered.pending.len(), 1);
        assert_eq!(recovered.pending[&0].0.body, b"kept");
        let on_disk = std::fs::metadata(dir.path().join("q.log")).unwrap().len();
        assert_eq!(on_disk as usize, bytes.len() - (torn.len() - 3));
    }

    /// 60 owed messages as a log, and where each record starts.
    fn sixty() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for seq in 0..60 {
            starts.push(bytes.len());
            encode(
                &Record::Sent(message(seq, &format!("body {seq}"))),
                &mut bytes,
            )
            .unwrap();
        }
        (bytes, starts)
    }

    fn owed(recovered: &Recovered) -> Vec<u64> {
        recovered.pending.keys().copied().collect()
    }

    #[tokio::test]
    async fn damage_in_the_middle_costs_only_the_damaged_record_and_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = sixty();
        // A flipped byte inside record 30's payload: its checksum fails, its length holds.
        bytes[starts[30] + HEADER_BYTES + 3] ^= 0x40;
        std::fs::write(dir.path().join("q.log"), &bytes).unwrap();
        let recovered = reopen(dir.path()).await;
        let expected: Vec<u64> = (0..60).filter(|seq| *seq != 30).collect();
        assert_eq!(owed(&recovered), expected);
        assert_eq!(recovered.next_seq, 60);
        let aside = std::fs::read(dir.path().join("q.log.damaged")).unwrap();
        let damaged = &bytes[starts[30]..starts[31]];
        assert!(
            aside.windows(damaged.len()).any(|w| w == damaged),
            "the damaged record is kept aside whole"
        );
        // The log was rewritten without it: the next start finds nothing more to set aside.
        let recovered = reopen(dir.path()).await;
        assert_eq!(owed(&recovered), expected);
        let again = std::fs::read(dir.path().join("q.log.damaged")).unwrap();
        assert_eq!(again.len(), aside.len());
    }

    #[tokio::test]
    async fn a_damaged_length_loses_its_record_not_the_ones_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = sixty();
        // Record 20's length now points far past its end: the scan finds record 21 again.
        bytes[starts[20] + 1] ^= 0x10;
        // And the last record is torn by a crash.
        bytes.truncate(starts[59] + 5);
        std::fs::write(dir.path().join("q.log"), &bytes).unwrap();
        let recovered = reopen(dir.path()).await;
        let expected: Vec<u64> = (0..59).filter(|seq| *seq != 20).collect();
        assert_eq!(owed(&recovered), expected);
        let on_disk = std::fs::read(dir.path().join("q.log")).unwrap();
        assert_eq!(
            on_disk.len(),
            starts[59] - (starts[21] - starts[20]),
            "rewritten with the whole records only"
        );
    }

    #[test]
    fn a_scan_of_zeroed_or_random_bytes_finds_no_records_and_never_panics() {
        let zeros = vec![0u8; 4096];
        let found = scan::<Record>(&zeros);
        assert!(found.records.is_empty());
        assert_eq!(found.torn_from, Some(0));
        let (bytes, starts) = sixty();
        let mut zeroed = bytes.clone();
        zeroed[starts[10]..starts[12]].fill(0);
        let found = scan::<Record>(&zeroed);
        assert_eq!(found.records.len(), 58);
        assert_eq!(found.damaged, vec![starts[10]..starts[12]]);
        assert_eq!(found.torn_from, None);
    }

    #[test]
    fn records_written_when_the_kind_was_a_bare_byte_still_replay() {
        // The layout `StoredMessage` and `Record` had before `MessageKind` was an enum.
        #[derive(Serialize)]
        struct OldMessage {
            seq: u64,
            id: String,
            kind: u8,
            key: Option<String>,
            headers: Vec<(String, String)>,
            reply_to: Option<String>,
            trace_context: Option<String>,
            body: Vec<u8>,
            sender: String,
            sent_at_ms: u64,
        }
        #[derive(Serialize)]
        enum OldRecord {
            Sent(OldMessage),
        }
        let mut bytes = Vec::new();
        for (seq, kind) in [(1, 0u8), (2, 1), (3, 2)] {
            let old = OldRecord::Sent(OldMessage {
                seq,
                id: format!("q-{seq}"),
                kind,
                key: Some("k".into()),
                headers: vec![],
                reply_to: None,
                trace_context: None,
                body: b"x".to_vec(),
                sender: "old".into(),
                sent_at_ms: 7,
            });
            encode(&old, &mut bytes).unwrap();
        }
        let (replayed, valid) = decode_all::<Record>(&bytes);
        assert_eq!(valid, bytes.len(), "every old record decodes");
        let kinds: Vec<_> = replayed
            .iter()
            .map(|record| match record {
                Record::Sent(message) => Some(message.kind),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            [
                Some(MessageKind::Document),
                Some(MessageKind::Command),
                Some(MessageKind::Event)
            ]
        );
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut bytes = records(&[Record::Sent(message(0, "x")), Record::Done { seq: 0 }]);
        let (all, _) = decode_all::<Record>(&bytes);
        assert_eq!(all.len(), 2);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let (some, valid) = decode_all::<Record>(&bytes);
        assert_eq!(some.len(), 1);
        assert!(valid < bytes.len());
    }

    #[tokio::test]
    async fn a_second_opener_is_refused_while_the_first_holds_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, _) = open(&disk(), dir.path(), "q").unwrap();
        match open(&disk(), dir.path(), "q") {
            Err(LogError::Locked { path }) => assert!(path.ends_with("q.lock")),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("two writers on one queue"),
        }
    }

    #[tokio::test]
    async fn compaction_replaces_the_log_with_the_live_messages_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = open(&disk(), dir.path(), "q").unwrap();
            let mut log = Vec::new();
            for seq in 0..50 {
                encode(&Record::Sent(message(seq, "m")), &mut log).unwrap();
                if seq != 7 {
                    encode(&Record::Done { seq }, &mut log).unwrap();
                }
            }
            writer.append(Vec::new(), log).await.unwrap();
            writer.compact(records(&[
                Record::Sent(message(7, "m")),
                Record::Failed {
                    seq: 7,
                    attempts: 2,
                },
            ]));
            writer
                .append(Vec::new(), records(&[Record::Sent(message(50, "after"))]))
                .await
                .unwrap();
        }
        let recovered = reopen(dir.path()).await;
        let seqs: Vec<u64> = recovered.pending.keys().copied().collect();
        assert_eq!(seqs, vec![7, 50]);
        assert_eq!(recovered.pending[&7].1, 2);
        assert_eq!(recovered.settled_records, 1);
    }
}
