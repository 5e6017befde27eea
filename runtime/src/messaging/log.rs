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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use crate::wire::MessageKind;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The largest record accepted: a message body plus its headers.
pub(super) const MAX_RECORD_BYTES: usize = 2 * 1024 * 1024;
const HEADER_BYTES: usize = 8;

/// A message as the log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    /// Position in the queue; ids and replay order come from it.
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) kind: MessageKind,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) reply_to: Option<String>,
    pub(crate) trace_context: Option<String>,
    pub(crate) body: Vec<u8>,
    /// The service that sent it.
    pub(crate) sender: String,
    pub(crate) sent_at_ms: u64,
}

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
}

/// What replaying a queue's files found.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Messages still owed, by sequence number, with their failed attempts.
    pub(super) pending: BTreeMap<u64, (StoredMessage, u32)>,
    /// The next free sequence number.
    pub(super) next_seq: u64,
    /// Records in the log that no longer describe a pending message.
    pub(super) settled_records: usize,
    /// Every dead letter so far, oldest first.
    pub(super) dead: Vec<DeadLetter>,
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
    path: &Path,
    queue: &str,
) -> Result<Vec<T>, LogError> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error(path)(err)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_error(path))?;
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
        let aside = keep_aside(path, &bytes, &scan.damaged).map_err(io_error(path))?;
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
        replace_file(path, &scan.whole_records(&bytes)).map_err(io_error(path))?;
    } else if let Some(torn_from) = scan.torn_from {
        file.set_len(torn_from as u64).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
    }
    Ok(scan.records)
}

/// Appends the `damaged` spans of `bytes` (read from `path`) to `<path>.damaged`, each after a
/// line saying where it was; returns that file's path.
fn keep_aside(path: &Path, bytes: &[u8], damaged: &[Range<usize>]) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(".damaged");
    let aside = PathBuf::from(name);
    let mut file = OpenOptions::new().create(true).append(true).open(&aside)?;
    if let Some(dir) = aside.parent() {
        crate::util::sync_dir(dir)?;
    }
    for range in damaged {
        writeln!(
            file,
            "# {} bytes at offset {} of {}, found at {} ms since the epoch",
            range.len(),
            range.start,
            path.display(),
            super::now_ms()
        )?;
        file.write_all(&bytes[range.clone()])?;
        writeln!(file)?;
    }
    file.sync_all()?;
    Ok(aside)
}

/// Opens queue `queue`'s files in `dir` (creating them), takes its lock and replays it.
pub(super) fn open(dir: &Path, queue: &str) -> Result<(Writer, Recovered), LogError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let broken = Arc::new(std::sync::Mutex::new(None));
    #[cfg(test)]
    let faults = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let paths = Paths::new(dir, queue);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&paths.lock)
        .map_err(io_error(&paths.lock))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(LogError::Locked { path: paths.lock });
        }
        Err(std::fs::TryLockError::Error(err)) => return Err(io_error(&paths.lock)(err)),
    }

    let mut recovered = Recovered::default();
    for record in read_valid::<Record>(&paths.log, queue)? {
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
        }
    }
    recovered.dead = read_valid::<DeadLetter>(&paths.dead, queue)?;
    for dead in &recovered.dead {
        recovered.next_seq = recovered.next_seq.max(dead.message.seq + 1);
    }

    let append = |path: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error(path))
    };
    let (log, dead) = (append(&paths.log)?, append(&paths.dead)?);
    let length =
        |file: &File, path: &Path| file.metadata().map(|m| m.len()).map_err(io_error(path));
    let files = Files {
        log_good: length(&log, &paths.log)?,
        dead_good: length(&dead, &paths.dead)?,
        log,
        dead,
        paths,
        _lock: lock,
        #[cfg(test)]
        faults: faults.clone(),
    };
    // The files may be new: their names must survive a crash as their records will.
    crate::util::sync_dir(dir).map_err(io_error(dir))?;
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        crate::util::sync_dir(parent).map_err(io_error(parent))?;
    }
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
            #[cfg(test)]
            faults,
        },
        recovered,
    ))
}

struct Files {
    log: File,
    dead: File,
    /// Each file's length at its last good sync: a failed batch is cut back to it before
    /// the writer tries again, so a half-written record never sits between good ones.
    log_good: u64,
    dead_good: u64,
    paths: Paths,
    /// Held (locked) for as long as the writer runs.
    _lock: File,
    /// Writes still to fail on purpose (tests of recovery): each writes half, then fails.
    #[cfg(test)]
    faults: Arc<std::sync::atomic::AtomicU32>,
}

impl Files {
    /// Cuts both files back to their last good sync and syncs them.
    fn repair(&mut self) -> io::Result<()> {
        self.log.set_len(self.log_good)?;
        self.dead.set_len(self.dead_good)?;
        self.log.sync_data()?;
        self.dead.sync_data()
    }

    /// Both files are on disk as they are now.
    fn mark_good(&mut self) -> io::Result<()> {
        self.log_good = self.log.metadata()?.len();
        self.dead_good = self.dead.metadata()?.len();
        Ok(())
    }
}

enum Command {
    /// Records for the dead-letter file (first) and the log, synced before `done` is told.
    Append {
        dead: Vec<u8>,
        log: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Replace the log with these records (the live messages).
    Compact { log: Vec<u8> },
    /// Sync, release the files and their lock, then say so; later appends fail.
    Close { done: oneshot::Sender<()> },
    /// Read every dead letter, and how many bytes of the dead-letter file they take.
    ReadDead {
        done: oneshot::Sender<Result<(Vec<DeadLetter>, u64), String>>,
    },
    /// Drop the first `upto` bytes of the dead-letter file (the letters a redrive re-sent);
    /// letters written since stay.
    DropDead {
        upto: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Sends records to a queue's writer thread. Commands are written in the order they are sent.
#[derive(Clone)]
pub(super) struct Writer {
    queue: String,
    commands: mpsc::Sender<Command>,
    /// Why the last write failed, while the files are not writable.
    broken: Arc<std::sync::Mutex<Option<String>>>,
    #[cfg(test)]
    faults: Arc<std::sync::atomic::AtomicU32>,
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
        let (done, synced) = oneshot::channel();
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

    /// Makes the next `count` appends write half their records, then fail as a full disk.
    #[cfg(test)]
    pub(super) fn inject_faults(&self, count: u32) {
        self.faults
            .store(count, std::sync::atomic::Ordering::Relaxed);
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

    /// Every dead letter in the file, and the byte length they take (for [`Writer::drop_dead`]).
    pub(super) async fn read_dead(&self) -> Result<(Vec<DeadLetter>, u64), LogError> {
        let (done, read) = oneshot::channel();
        self.commands
            .send(Command::ReadDead { done })
            .map_err(|_| LogError::WriterGone(self.queue.clone()))?;
        self.answer(read.await)
    }

    /// Removes the first `upto` bytes of the dead-letter file, keeping letters written since.
    pub(super) async fn drop_dead(&self, upto: u64) -> Result<(), LogError> {
        let (done, dropped) = oneshot::channel();
        self.commands
            .send(Command::DropDead { upto, done })
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
                    let _ = done.send(Err("the queue is closed (the node is stopping)".into()));
                }
                Command::Compact { .. } if closing.is_some() => {}
                Command::ReadDead { done } => {
                    let _ = done.send(read_dead(&mut files).map_err(|err| err.to_string()));
                }
                Command::DropDead { upto, done } => {
                    let _ = done.send(drop_dead(&mut files, upto).map_err(|err| err.to_string()));
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
                            .and_then(|()| compact(&mut files, &log));
                        match compacted {
                            Ok(()) => {
                                tracing::debug!(queue, bytes = log.len(), "queue log compacted")
                            }
                            // The old log is intact (the new one replaces it only once
                            // it is whole); the next compaction tries again.
                            Err(err) => {
                                tracing::warn!(queue, error = %err, "queue log compaction failed; the old log stays")
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
            match synced.and_then(|()| files.mark_good()) {
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
            let _ = done.send(match &broken {
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
    #[cfg(test)]
    if files
        .faults
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |left| left.checked_sub(1),
        )
        .is_ok()
    {
        files.log.write_all(&log[..log.len() / 2])?;
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "injected: no space left",
        ));
    }
    if !dead.is_empty() {
        // The dead letter is synced before the `Done` that drops the message from the log, so a
        // crash between them keeps the message (delivered again, not lost).
        files.dead.write_all(dead)?;
        files.dead.sync_data()?;
    }
    files.log.write_all(log)
}

fn read_dead(files: &mut Files) -> io::Result<(Vec<DeadLetter>, u64)> {
    files.dead.sync_data()?;
    let bytes = std::fs::read(&files.paths.dead)?;
    let (letters, valid) = decode_all::<DeadLetter>(&bytes);
    Ok((letters, valid as u64))
}

fn drop_dead(files: &mut Files, upto: u64) -> io::Result<()> {
    let bytes = std::fs::read(&files.paths.dead)?;
    let keep = bytes.get(upto as usize..).unwrap_or_default();
    files.dead = replace_file(&files.paths.dead, keep)?;
    Ok(())
}

/// Writes `contents` to a new file that then replaces `path` atomically; returns it opened
/// for appending.
fn replace_file(path: &Path, contents: &[u8]) -> io::Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".replacing");
    let next = PathBuf::from(name);
    let mut file = File::create(&next)?;
    file.write_all(contents)?;
    file.sync_all()?;
    // Opened before the rename, so the handle is the new file whatever fails after it: a
    // handle to the replaced file would write into an unlinked inode.
    let mut reopened = OpenOptions::new().append(true).open(&next)?;
    reopened.seek(SeekFrom::End(0))?;
    std::fs::rename(&next, path)?;
    if let Some(dir) = path.parent() {
        crate::util::sync_dir(dir)?;
    }
    Ok(reopened)
}

fn compact(files: &mut Files, live: &[u8]) -> io::Result<()> {
    files.log = replace_file(&files.paths.log, live)?;
    Ok(())
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
            let (writer, recovered) = open(dir.path(), "q").unwrap();
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

    #[tokio::test]
    async fn a_failed_write_fails_its_sends_only_and_the_queue_recovers_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = open(dir.path(), "q").unwrap();
            let good = records(&[Record::Sent(message(0, "before"))]);
            writer.append(Vec::new(), good).await.unwrap();
            assert_eq!(writer.unwritable(), None);
            // The disk fills up mid-record: that send fails, and the queue says why.
            writer.inject_faults(1);
            let lost = records(&[Record::Sent(message(1, "never acknowledged"))]);
            let failed = writer.append(Vec::new(), lost).await;
            assert!(failed.is_err());
            assert!(
                writer.unwritable().unwrap().contains("no space"),
                "{:?}",
                writer.unwritable()
            );
            // Space again: the next write cuts the half record off and succeeds.
            let after = records(&[Record::Sent(message(2, "after"))]);
            writer.append(Vec::new(), after).await.unwrap();
            assert_eq!(writer.unwritable(), None);
        }
        // The log holds exactly the acknowledged records, with no damage between them.
        let bytes = std::fs::read(dir.path().join("q.log")).unwrap();
        let scan = scan::<Record>(&bytes);
        assert!(scan.damaged.is_empty() && scan.torn_from.is_none());
        let recovered = reopen(dir.path()).await;
        let bodies: Vec<_> = recovered
            .pending
            .values()
            .map(|(m, _)| m.body.clone())
            .collect();
        assert_eq!(bodies, vec![b"before".to_vec(), b"after".to_vec()]);
    }

    async fn reopen(dir: &Path) -> Recovered {
        for _ in 0..100 {
            match open(dir, "q") {
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
        let (_writer, _) = open(dir.path(), "q").unwrap();
        match open(dir.path(), "q") {
            Err(LogError::Locked { path }) => assert!(path.ends_with("q.lock")),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("two writers on one queue"),
        }
    }

    #[tokio::test]
    async fn compaction_replaces_the_log_with_the_live_messages_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = open(dir.path(), "q").unwrap();
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
