//! A queue's or topic's durable log: segment files of length-prefixed, checksummed postcard
//! records, written by one thread per log that commits in groups.
//!
//! The records say what the log owes: `Sent` (a message), `Failed`/`FailedFor` (attempts so
//! far) and `Done`/`DoneFor` (acknowledged or dead-lettered), per subscription for a topic.
//! They go to the log's newest segment, `<queue>/<number>.seg` ([`segments`]). When the topic
//! shell has written a segment's worth of records it asks for a rotation: the writer starts a
//! new segment whose first records are a checkpoint of what every subscription owes, so replay
//! reads the state records of the newest segment only, and the messages of the segments before
//! it. A sealed segment none of whose messages is kept or owed any more is removed whole
//! (retention, and a queue's acknowledged messages, cost no rewriting); one that holds only a
//! few live messages among many settled ones is rewritten with the live ones. A log written
//! before segments existed (`<queue>.log`) becomes the first segment when it is opened.
//!
//! `<queue>.dead` is the dead-letter file: each message the queue gave up on, whole, with why;
//! the node never deletes it. `<queue>.lock` is held while a node has the log open, so two
//! nodes cannot share one.
//!
//! Every append waits for `fsync`. Appends that arrive while a write is in progress are written
//! and synced together (group commit), so many senders cost one sync. A record is
//! `[u32 length][u32 crc32][postcard]` (little-endian). Replay cuts off a torn tail (a write
//! cut short by a crash), saying how many bytes it dropped. Damage in the middle (a flipped
//! byte, a bad sector) costs only the damaged bytes: replay finds the next whole record after
//! them and goes on, logs an error, keeps the damaged bytes aside in `<file>.damaged` and
//! rewrites the file without them.
//!
//! A failed write or sync fails its whole batch: the senders hear `unavailable`, the queue says
//! why (and `/health` with it), and the next batch first cuts both files back to their last
//! good sync, so a half-written record never sits between good ones. The writer tells each
//! append's outcome on its own thread, in the order of the log, so the queue makes a message
//! deliverable only once every message before it is stored or refused.
//!
//! The files are reached through [`Storage`] ([`storage`]): [`Disk`] in the node, a simulated
//! disk that fails and crashes on purpose in the model tests (`topic/model_tests.rs`).

mod index;
mod segments;
mod storage;

#[cfg(test)]
pub(super) mod sim;

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use index::Index;
pub(crate) use index::Reader;
pub(super) use segments::ranges;
use segments::{Fate, Segment};
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
    /// subscription starts, where a replay rewinds it to.
    StartAt {
        subscription: String,
        seq: u64,
    },
    /// Opens a checkpoint, the first records of every segment: what each subscription owes
    /// as of the records before it, which replay need not read again. Offsets from `next_seq`
    /// on are new; a topic keeps none before `kept_from`.
    Checkpoint {
        next_seq: u64,
        kept_from: u64,
    },
    /// In a checkpoint: `subscription` (`None`: a queue's) owes the messages from `start` on,
    /// but for those a `DoneRanges` names.
    Owes {
        subscription: Option<String>,
        start: u64,
    },
    /// In a checkpoint: offsets after its start that `subscription` is done with.
    DoneRanges {
        subscription: Option<String>,
        ranges: Vec<(u64, u64)>,
    },
    /// In a checkpoint: failed deliveries of messages `subscription` still owes.
    Attempts {
        subscription: Option<String>,
        attempts: Vec<(u64, u32)>,
    },
    /// Closes a checkpoint.
    CheckpointEnd,
}

/// Entries per checkpoint record: a checkpoint of any size stays within [`MAX_RECORD_BYTES`].
const CHECKPOINT_CHUNK: usize = 4096;

/// The checkpoint of a log whose subscriptions owe `owes`, for [`Writer::rotate`].
pub(super) struct Checkpoint<'a> {
    pub(super) next_seq: u64,
    pub(super) kept_from: u64,
    pub(super) owes: Vec<SubscriptionPlace<'a>>,
}

/// Where one subscription is, as a checkpoint says it.
pub(super) struct SubscriptionPlace<'a> {
    /// `None`: a queue's.
    pub(super) name: Option<&'a str>,
    pub(super) start: u64,
    /// Offsets from `start` on it is done with.
    pub(super) done: Vec<Range<u64>>,
    pub(super) attempts: Vec<(u64, u32)>,
}

impl Checkpoint<'_> {
    /// Its records.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        // Each record is small (chunks of CHECKPOINT_CHUNK entries): it always fits.
        let mut put = |record: Record| {
            let _ = encode(&record, &mut bytes);
        };
        put(Record::Checkpoint {
            next_seq: self.next_seq,
            kept_from: self.kept_from,
        });
        for place in &self.owes {
            let subscription = place.name.map(str::to_owned);
            put(Record::Owes {
                subscription: subscription.clone(),
                start: place.start,
            });
            for chunk in place.done.chunks(CHECKPOINT_CHUNK) {
                put(Record::DoneRanges {
                    subscription: subscription.clone(),
                    ranges: chunk.iter().map(|range| (range.start, range.end)).collect(),
                });
            }
            for chunk in place.attempts.chunks(CHECKPOINT_CHUNK) {
                put(Record::Attempts {
                    subscription: subscription.clone(),
                    attempts: chunk.to_vec(),
                });
            }
        }
        put(Record::CheckpointEnd);
        bytes
    }
}

/// A new segment and what may be removed: for [`Writer::rotate`].
pub(super) struct Rotation {
    /// The new segment's first records ([`Checkpoint::encode`]); `None`: only remove.
    pub(super) checkpoint: Option<Vec<u8>>,
    /// The offsets still kept or owed (sorted, disjoint): a sealed segment holding none of
    /// them is removed.
    pub(super) live: Vec<Range<u64>>,
}

/// A topic subscription's place, as its log records left it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    /// It owes the messages from here on.
    pub(super) start: u64,
    /// Messages after `start` it is done with.
    pub(super) done: std::collections::BTreeSet<u64>,
    /// Offsets after `start` it is done with, as a checkpoint says them (sorted).
    pub(super) done_ranges: Vec<Range<u64>>,
    /// Failed deliveries of messages it still owes.
    pub(super) attempts: std::collections::HashMap<u64, u32>,
}

impl Cursor {
    /// Whether it owes message `seq`.
    pub(super) fn owes(&self, seq: u64) -> bool {
        let at = self.done_ranges.partition_point(|range| range.end <= seq);
        seq >= self.start
            && !self.done.contains(&seq)
            && !self
                .done_ranges
                .get(at)
                .is_some_and(|range| range.contains(&seq))
    }
}

/// A kept message no subscription owes, as replay leaves it: without its body (readers read
/// that from the log), with its length.
#[derive(Debug)]
pub(super) struct Bodiless {
    pub(super) message: StoredMessage,
    pub(super) body_len: usize,
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
         or move the topic's files (that folder of segments and its .dead) out of the way if \
         their messages are not needed", path.display()
    )]
    HoldsATopic { path: PathBuf },
}

/// What replaying a log's files found.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// The messages some subscription owes (or every message, while the log has no
    /// subscription's record: a queue's from before checkpoints), by sequence number.
    pub(super) messages: BTreeMap<u64, Arc<StoredMessage>>,
    /// The other messages from `kept_from` on, without their bodies: what a topic keeps.
    pub(super) kept: BTreeMap<u64, Bodiless>,
    /// The subscriptions, as their records left them: a topic's by service, a queue's as
    /// `None` (missing: it owes every message).
    pub(super) cursors: std::collections::HashMap<Option<String>, Cursor>,
    /// A topic keeps no message before this.
    pub(super) kept_from: u64,
    /// The next free sequence number.
    pub(super) next_seq: u64,
    /// Every dead letter so far, oldest first.
    pub(super) dead: Vec<DeadLetter>,
    /// The bytes they take in the dead-letter file.
    pub(super) dead_bytes: u64,
}

impl Recovered {
    /// Takes in what `record` says, on top of the records replayed before it. A sequence
    /// number any record names is never given to a new message: a cursor may point past
    /// messages whose writes failed, and a message that reused their offsets would be skipped.
    pub(super) fn apply(&mut self, record: Record) {
        match record {
            Record::Sent(message) => {
                self.next_seq = self.next_seq.max(message.seq + 1);
                self.messages.insert(message.seq, Arc::new(message));
            }
            Record::Failed { seq, attempts } => self.failed(None, seq, attempts),
            Record::FailedFor {
                subscription,
                seq,
                attempts,
            } => self.failed(Some(subscription), seq, attempts),
            Record::Done { seq } => self.done(None, seq),
            Record::DoneFor { subscription, seq } => self.done(Some(subscription), seq),
            Record::StartAt { subscription, seq } => self.start(Some(subscription), seq),
            Record::Checkpoint {
                next_seq,
                kept_from,
            } => {
                self.cursors.clear();
                self.next_seq = self.next_seq.max(next_seq);
                self.kept_from = kept_from;
            }
            Record::Owes {
                subscription,
                start,
            } => self.start(subscription, start),
            Record::DoneRanges {
                subscription,
                ranges,
            } => {
                let cursor = self.cursors.entry(subscription).or_default();
                cursor
                    .done_ranges
                    .extend(ranges.into_iter().map(|(from, to)| from..to.max(from)));
            }
            Record::Attempts {
                subscription,
                attempts,
            } => {
                let cursor = self.cursors.entry(subscription).or_default();
                cursor.attempts.extend(attempts);
            }
            Record::CheckpointEnd => {}
        }
    }

    fn failed(&mut self, subscription: Option<String>, seq: u64, attempts: u32) {
        self.next_seq = self.next_seq.max(seq + 1);
        let cursor = self.cursors.entry(subscription).or_default();
        cursor.attempts.insert(seq, attempts);
    }

    fn done(&mut self, subscription: Option<String>, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
        let cursor = self.cursors.entry(subscription).or_default();
        cursor.attempts.remove(&seq);
        if seq >= cursor.start {
            cursor.done.insert(seq);
        }
    }

    fn start(&mut self, subscription: Option<String>, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
        self.cursors.insert(
            subscription,
            Cursor {
                start: seq,
                ..Cursor::default()
            },
        );
    }

    /// The messages subscription `name` owes, in order, with its failed attempts; `None` for
    /// a topic's subscription the log does not know.
    pub(super) fn owed_by(&self, name: Option<&str>) -> Option<Vec<(&Arc<StoredMessage>, u32)>> {
        let cursor = self.cursors.get(&name.map(str::to_owned));
        // A queue with no cursor owes every message (a log from before checkpoints).
        let default = Cursor::default();
        let cursor = match (cursor, name) {
            (Some(cursor), _) => cursor,
            (None, None) => &default,
            (None, Some(_)) => return None,
        };
        Some(
            self.messages
                .range(cursor.start..)
                .filter(|(seq, _)| cursor.owes(**seq))
                .map(|(seq, message)| (message, cursor.attempts.get(seq).copied().unwrap_or(0)))
                .collect(),
        )
    }

    /// Takes in `message` once every cursor is as the log left it: with its body if some
    /// subscription owes it, without if it is only kept, not at all if it is settled.
    fn take(&mut self, mut message: StoredMessage) {
        let seq = message.seq;
        self.next_seq = self.next_seq.max(seq + 1);
        // No subscription's record yet: a queue from before checkpoints owes everything.
        let owed = self.cursors.is_empty() || self.cursors.values().any(|c| c.owes(seq));
        if owed {
            self.messages.insert(seq, Arc::new(message));
        } else if seq >= self.kept_from {
            let body_len = message.body.len();
            message.body = Vec::new();
            self.kept.insert(seq, Bodiless { message, body_len });
        }
    }
}

/// The files of one log.
struct Paths {
    /// Where its segments are.
    segments: PathBuf,
    /// The single file a log was before segments.
    legacy: PathBuf,
    dead: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn new(dir: &Path, queue: &str) -> Self {
        Self {
            segments: dir.join(queue),
            legacy: dir.join(format!("{queue}.log")),
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

/// `Record::Sent(message)` encoded without a copy of the message: the same bytes, as postcard
/// writes a variant's index and then its content.
pub(super) fn encode_sent(message: &StoredMessage, into: &mut Vec<u8>) -> Result<(), LogError> {
    #[derive(Serialize)]
    enum SentRef<'a> {
        Sent(&'a StoredMessage),
    }
    encode(&SentRef::Sent(message), into)
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
    /// Where each record starts.
    starts: Vec<usize>,
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
        starts: Vec::new(),
        kept: Vec::new(),
        damaged: Vec::new(),
        torn_from: None,
    };
    let mut at = 0;
    while at < bytes.len() {
        if let Some((record, next)) = decode_at(bytes, at) {
            scan.records.push(record);
            scan.starts.push(at);
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
    Ok(read_valid_at(storage, path, queue)?
        .into_iter()
        .map(|(_, record)| record)
        .collect())
}

/// [`read_valid`], with where each record starts in the file as it is left.
fn read_valid_at<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    path: &Path,
    queue: &str,
) -> Result<Vec<(u64, T)>, LogError> {
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
        let whole = scan.whole_records(&bytes);
        storage
            .replace(path, &whole)
            .and_then(|_| sync_parent(storage, path))
            .map_err(io_error(path))?;
        // The records moved up over the damage.
        let moved = self::scan::<T>(&whole);
        return Ok(positioned(moved.starts, moved.records));
    } else if let Some(torn_from) = scan.torn_from {
        let mut file = storage.append(path).map_err(io_error(path))?;
        file.set_len(torn_from as u64).map_err(io_error(path))?;
        file.sync_data().map_err(io_error(path))?;
    }
    Ok(positioned(scan.starts, scan.records))
}

fn positioned<T>(starts: Vec<usize>, records: Vec<T>) -> Vec<(u64, T)> {
    starts
        .into_iter()
        .map(|start| start as u64)
        .zip(records)
        .collect()
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

/// Opens log `queue`'s files in `dir` on `storage` (creating them), takes its lock and
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
    storage
        .create_dir_all(&paths.segments)
        .map_err(io_error(&paths.segments))?;
    migrate(&**storage, &paths, queue)?;

    let numbers = segments::list(&**storage, &paths.segments).map_err(io_error(&paths.segments))?;
    tracing::debug!(queue, segments = ?numbers, "replaying the log");
    // The newest segments first, back to the last whole checkpoint: every segment is created
    // whole with its checkpoint, so only damage takes one away; then replay goes on from the
    // one before, and the state records after it.
    let mut newest = Vec::new();
    let mut older = numbers.len();
    while older > 0 {
        older -= 1;
        let segment = Segment::new(&paths.segments, numbers[older]);
        let records = read_valid_at::<Record>(&**storage, &segment.path, queue)?;
        let whole = segments::opens_with_checkpoint(records.iter().map(|(_, record)| record));
        newest.push((segment, records));
        if whole {
            break;
        }
    }
    newest.reverse();
    if newest.len() > 1 {
        tracing::error!(
            queue,
            "the newest segment of the log lost its checkpoint to damage; replaying from the \
             checkpoint before it"
        );
    }
    let mut recovered = Recovered::default();
    let mut index = Index::default();
    let mut sealed = Vec::with_capacity(numbers.len());
    // Their state records say where every subscription is; their messages are taken once
    // that is known.
    let mut recent = Vec::new();
    let mut newest_segments = Vec::with_capacity(newest.len());
    for (mut segment, records) in newest {
        let mut positions = Vec::new();
        for (position, record) in records {
            match record {
                Record::Sent(message) => {
                    segment.note_sent(message.seq..message.seq + 1);
                    positions.push((message.seq, position));
                    recent.push(message);
                }
                record => recovered.apply(record),
            }
        }
        index.set(segment.number, segment.path.clone(), positions);
        newest_segments.push(segment);
    }
    // The older segments' messages, one segment in memory at a time.
    for &number in &numbers[..older] {
        let mut segment = Segment::new(&paths.segments, number);
        let mut positions = Vec::new();
        for (position, record) in read_valid_at::<Record>(&**storage, &segment.path, queue)? {
            if let Record::Sent(message) = record {
                segment.note_sent(message.seq..message.seq + 1);
                positions.push((message.seq, position));
                recovered.take(message);
            }
        }
        index.set(segment.number, segment.path.clone(), positions);
        sealed.push(segment);
    }
    for message in recent {
        recovered.take(message);
    }
    sealed.extend(newest_segments);
    recovered.dead = read_valid::<DeadLetter>(&**storage, &paths.dead, queue)?;
    for dead in &recovered.dead {
        recovered.next_seq = recovered.next_seq.max(dead.message.seq + 1);
    }

    let (log, active) = match sealed.pop() {
        Some(active) => (
            storage
                .append(&active.path)
                .map_err(io_error(&active.path))?,
            active,
        ),
        None => {
            let active = Segment::new(&paths.segments, 0);
            let first = Checkpoint {
                next_seq: recovered.next_seq,
                kept_from: recovered.next_seq,
                owes: Vec::new(),
            };
            let file = storage
                .replace(&active.path, &first.encode())
                .map_err(io_error(&active.path))?;
            index.set(active.number, active.path.clone(), []);
            (file, active)
        }
    };
    let index = Arc::new(std::sync::Mutex::new(index));
    let dead = storage.append(&paths.dead).map_err(io_error(&paths.dead))?;
    recovered.dead_bytes = dead.len().map_err(io_error(&paths.dead))?;
    let log_len = log.len().map_err(io_error(&active.path))?;
    let files = Files {
        log_good: log_len,
        log_len,
        pending: Vec::new(),
        index: index.clone(),
        dead_good: recovered.dead_bytes,
        log,
        active,
        sealed,
        dead,
        dir_unsynced: false,
        paths,
        storage: storage.clone(),
        _lock: lock,
    };
    // The files may be new: their names must survive a crash as their records will.
    for dir in [files.paths.segments.as_path(), dir] {
        storage.sync_dir(dir).map_err(io_error(dir))?;
    }
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
            reader: Reader {
                storage: storage.clone(),
                index,
            },
        },
        recovered,
    ))
}

/// Makes a log written before segments (`<queue>.log`) its first segment: an empty checkpoint
/// and then its records, whose meaning is the same. A crash before the old file is removed
/// leaves both; the segment is then the truth and the old file goes.
fn migrate(storage: &dyn Storage, paths: &Paths, queue: &str) -> Result<(), LogError> {
    if storage
        .read(&paths.legacy)
        .map_err(io_error(&paths.legacy))?
        .is_none()
    {
        return Ok(());
    }
    let existing = segments::list(storage, &paths.segments).map_err(io_error(&paths.segments))?;
    if existing.is_empty() {
        let records = read_valid::<Record>(storage, &paths.legacy, queue)?;
        let mut contents = Checkpoint {
            next_seq: 0,
            kept_from: 0,
            owes: Vec::new(),
        }
        .encode();
        for record in &records {
            encode(record, &mut contents)?;
        }
        let first = Segment::new(&paths.segments, 0);
        storage
            .replace(&first.path, &contents)
            .and_then(|_| storage.sync_dir(&paths.segments))
            .map_err(io_error(&first.path))?;
        tracing::info!(
            queue,
            records = records.len(),
            "moved the log's records into its first segment"
        );
    }
    storage
        .remove(&paths.legacy)
        .and_then(|()| sync_parent(storage, &paths.legacy))
        .map_err(io_error(&paths.legacy))
}

struct Files {
    /// The active segment, opened for appending.
    log: Box<dyn LogFile>,
    active: Segment,
    /// The segments before it, oldest first.
    sealed: Vec<Segment>,
    dead: Box<dyn LogFile>,
    /// Each file's length at its last good sync: a failed batch is cut back to it before
    /// the writer tries again, so a half-written record never sits between good ones.
    log_good: u64,
    dead_good: u64,
    /// The active segment's length as written (synced or not), with `pending`.
    log_len: u64,
    /// Records for the active segment not yet written: a batch's appends go to the file in
    /// one write.
    pending: Vec<u8>,
    /// Where its messages are, for readers.
    index: Arc<std::sync::Mutex<Index>>,
    /// A file was created or replaced but the directory sync that makes its name durable
    /// failed: until one succeeds, a crash may bring the old file back (or none), so nothing
    /// written to the new one counts as stored.
    dir_unsynced: bool,
    paths: Paths,
    storage: Arc<dyn Storage>,
    /// Held (locked) for as long as the writer runs.
    _lock: Box<dyn Send>,
}

impl Files {
    /// Cuts both files back to their last good sync and syncs them (and their directory, if a
    /// replacement is not yet durable).
    ///
    /// The log is cut, durably, before the dead-letter file: a failed batch may have put a
    /// dead letter and the `Done` that lets its message go on disk both, and if a crash kept
    /// that `Done` but not the letter, the message would be gone. (A cut not yet synced may
    /// or may not survive a crash, each file on its own.)
    fn repair(&mut self) -> io::Result<()> {
        self.index().cut(self.active.number, self.log_good);
        self.log_len = self.log_good;
        self.pending.clear();
        self.log.set_len(self.log_good)?;
        self.log.sync_data()?;
        self.dead.set_len(self.dead_good)?;
        self.dead.sync_data()?;
        self.sync_dir_if_needed()
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `log` to the active segment (its first records are the messages `sent`),
    /// written with the rest of the batch by [`Files::flush`].
    fn append_log(&mut self, log: &[u8], sent: Range<u64>) {
        let position = self.log_len;
        self.pending.extend_from_slice(log);
        self.log_len += log.len() as u64;
        if !sent.is_empty() {
            self.index().note(self.active.number, sent.start, position);
        }
        self.active.note_sent(sent);
    }

    /// Writes what [`Files::append_log`] gathered.
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.log.write_all(&self.pending);
        self.pending.clear();
        written
    }

    fn sync_dir_if_needed(&mut self) -> io::Result<()> {
        if self.dir_unsynced {
            self.storage.sync_dir(&self.paths.segments)?;
            sync_parent(&*self.storage, &self.paths.dead)?;
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

    /// Replaces the dead-letter file with `contents` (synced); the handle and its good length
    /// follow the new file once the rename happened, even if the directory sync then fails.
    fn replace_dead(&mut self, contents: &[u8]) -> io::Result<()> {
        self.dead = self.storage.replace(&self.paths.dead, contents)?;
        self.dead_good = contents.len() as u64;
        self.dir_unsynced = true;
        self.sync_dir_if_needed()
    }

    /// Seals the active segment and starts the next with `checkpoint`. A failure before the
    /// new segment exists leaves the old one active (`Ok(false)`); once it exists, appends go
    /// to it, and a failed directory sync is an error (nothing on it counts as stored before
    /// one succeeds).
    fn rotate(&mut self, checkpoint: &[u8]) -> io::Result<bool> {
        // Every dead letter so far is synced (each is as it is written).
        let dead_len = self.dead.len()?;
        // The checkpoint sums up the records before it: they must be on disk first.
        self.flush()?;
        self.log.sync_data()?;
        let next = Segment::new(&self.paths.segments, self.active.number + 1);
        let file = match self.storage.replace(&next.path, checkpoint) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(file = %next.path.display(), error = %err, "could not start a new log segment; the current one goes on");
                return Ok(false);
            }
        };
        self.index().set(next.number, next.path.clone(), []);
        self.sealed.push(std::mem::replace(&mut self.active, next));
        (self.log, self.log_good) = (file, checkpoint.len() as u64);
        // The sealed segment is out of a repair's reach, `Done`s of this batch's dead letters
        // included: should the batch still fail, those letters must stay.
        self.dead_good = dead_len;
        self.log_len = self.log_good;
        self.dir_unsynced = true;
        self.sync_dir_if_needed()?;
        Ok(true)
    }

    /// Removes the sealed segments that hold nothing in `live` and rewrites those that hold
    /// little. Only after the newest checkpoint is durable: the sealed segments' state records
    /// matter until then. A failure leaves a segment as it was, for the next time.
    fn prune(&mut self, live: &[Range<u64>], queue: &str) {
        if self.dir_unsynced {
            return;
        }
        let mut changed = false;
        let storage = self.storage.clone();
        let index = self.index.clone();
        let index = || {
            index
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        self.sealed.retain_mut(|segment| {
            let fate = segment.fate(live);
            if !matches!(fate, Fate::Keep) {
                tracing::debug!(queue, segment = segment.number, ?fate, "pruning a sealed log segment");
            }
            let done = match fate {
                Fate::Keep => return true,
                Fate::Remove => storage.remove(&segment.path).map(|()| {
                    index().remove(segment.number);
                    false
                }),
                Fate::Rewrite => segment.rewrite(&*storage, live).map(|positions| {
                    index().set(segment.number, segment.path.clone(), positions);
                    true
                }),
            };
            match done {
                Ok(keep) => {
                    changed = true;
                    keep
                }
                Err(err) => {
                    tracing::warn!(queue, file = %segment.path.display(), error = %err, "could not remove or rewrite a settled log segment; trying again later");
                    true
                }
            }
        });
        // A removal that a crash undoes brings back settled messages the checkpoint says
        // are done: harmless, and the next prune removes them again.
        if changed && let Err(err) = self.storage.sync_dir(&self.paths.segments) {
            tracing::warn!(queue, error = %err, "could not sync the log's directory after removing segments");
        }
    }
}

enum Command {
    /// Records for the dead-letter file (first) and the log, synced before `done` is told;
    /// `sent`: the messages among them.
    Append {
        dead: Vec<u8>,
        log: Vec<u8>,
        sent: Range<u64>,
        done: Told,
    },
    /// Start a new segment (if it says so) and remove what is settled.
    Rotate(Rotation),
    /// From now on, tell this whether the messages of each batch are on disk.
    OnStored(StoredHook),
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

/// Told on the writer thread whether the messages numbered so are on disk (`false`: they
/// never will be); see [`Writer::on_stored`].
pub(super) type StoredHook = Box<dyn FnMut(Range<u64>, bool) + Send>;

/// Sends records to a queue's writer thread. Commands are written in the order they are sent.
#[derive(Clone)]
pub(super) struct Writer {
    queue: String,
    commands: mpsc::Sender<Command>,
    /// Why the last write failed, while the files are not writable.
    broken: Arc<std::sync::Mutex<Option<String>>>,
    reader: Reader,
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
        self.append_with(dead, log, 0..0)
    }

    /// [`Writer::append`] of records among which are the messages numbered `sent`: the hook
    /// set with [`Writer::on_stored`] is told whether they are on disk.
    pub(super) fn append_sent(
        &self,
        log: Vec<u8>,
        sent: Range<u64>,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        self.append_with(Vec::new(), log, sent)
    }

    /// Sets what is told whether the messages of [`Writer::append_sent`]s are on disk: on the
    /// writer thread, once per batch (adjacent appends' numbers as one range), in the order
    /// of the appends, before their futures resolve, and even if those are dropped. What
    /// depends on the order of outcomes (a message may be delivered only once every message
    /// sent before it is stored or refused) belongs here; one call per batch takes the
    /// caller's lock once, not once per append. Set it before the first `append_sent`. If
    /// the writer is gone (the queue closed), it is never told: nothing will be stored again.
    pub(super) fn on_stored(&self, hook: StoredHook) {
        let _ = self.commands.send(Command::OnStored(hook));
    }

    fn append_with(
        &self,
        dead: Vec<u8>,
        log: Vec<u8>,
        sent: Range<u64>,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        let (tell, synced) = oneshot::channel();
        let done: Told = Box::new(move |outcome: Result<(), String>| {
            let _ = tell.send(outcome);
        });
        let queued = self.commands.send(Command::Append {
            dead,
            log,
            sent,
            done,
        });
        let queue = self.queue.clone();
        async move {
            queued.map_err(|_| LogError::WriterGone(queue.clone()))?;
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

    /// [`Writer::append`] of records nobody waits for; a failure is logged with its batch.
    pub(super) fn append_unawaited(&self, log: Vec<u8>) {
        let _ = self.commands.send(Command::Append {
            dead: Vec::new(),
            log,
            sent: 0..0,
            // Zero-sized: no allocation.
            done: Box::new(|_| ()),
        });
    }

    /// Reads stored messages from the log's segments.
    pub(super) fn reader(&self) -> Reader {
        self.reader.clone()
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

    /// Asks the writer to start a new segment with a checkpoint and to remove or rewrite the
    /// sealed segments that hold little or nothing live. A checkpoint must be sent in order
    /// with the appends it sums up.
    pub(super) fn rotate(&self, rotation: Rotation) {
        let _ = self.commands.send(Command::Rotate(rotation));
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
    // Kept from batch to batch: grown once to the batch size under load, not every batch.
    let (mut batch, mut waiting) = (Vec::new(), Vec::new());
    let mut on_stored: Option<StoredHook> = None;
    // The numbers of the messages appended in this batch, adjacent ones merged; `true` for
    // those refused outright (the queue closing).
    let mut sent: Vec<(Range<u64>, bool)> = Vec::new();

    while let Ok(first) = inbox.recv() {
        batch.push(first);
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
        let mut wrote_dead = false;
        for command in batch.drain(..) {
            match command {
                Command::Close { done } => closing = Some(done),
                Command::Append {
                    done, sent: range, ..
                } if closing.is_some() => {
                    note_sent(&mut sent, range, true);
                    waiting.push((done, Some("the queue is closed (the node is stopping)")));
                }
                Command::OnStored(hook) => on_stored = Some(hook),
                Command::Rotate(_) if closing.is_some() => {}
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
                Command::Append {
                    dead,
                    log,
                    sent: range,
                    done,
                } => {
                    if broken.is_none()
                        && let Err(err) = write_pair(&mut files, &dead, &log, range.clone())
                    {
                        broken = Some(err.to_string());
                    }
                    wrote_dead |= !dead.is_empty();
                    note_sent(&mut sent, range, false);
                    waiting.push((done, None));
                }
                Command::Rotate(Rotation { checkpoint, live }) => {
                    if broken.is_some() {
                        continue;
                    }
                    if let Some(checkpoint) = checkpoint {
                        match files.rotate(&checkpoint) {
                            Ok(started) => {
                                tracing::debug!(
                                    queue,
                                    started,
                                    segment = files.active.number,
                                    "log segment rotation"
                                )
                            }
                            // The records before it may not be on disk, or the new segment's
                            // name is not durable: this batch fails, the next repairs.
                            Err(err) => {
                                broken = Some(err.to_string());
                                continue;
                            }
                        }
                    }
                    files.prune(&live, queue);
                }
            }
        }
        if broken.is_none() {
            let synced = files
                .flush()
                .and_then(|()| files.log.sync_data())
                .and_then(|()| {
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
        for (range, refused) in sent.drain(..) {
            if let Some(hook) = on_stored.as_mut() {
                hook(range, !refused && broken.is_none());
            }
        }
        for (done, refused) in waiting.drain(..) {
            done(match (refused, &broken) {
                (Some(why), _) => Err(why.to_owned()),
                (None, None) => Ok(()),
                (None, Some(reason)) => Err(reason.clone()),
            });
        }
        if let Some(done) = closing {
            drop(files);
            let _ = done.send(());
            return;
        }
    }
}

/// Adds `range` to a batch's `sent`, merged with the last range if adjacent and alike.
fn note_sent(sent: &mut Vec<(Range<u64>, bool)>, range: Range<u64>, refused: bool) {
    if range.is_empty() {
        return;
    }
    match sent.last_mut() {
        Some((last, was_refused)) if last.end == range.start && *was_refused == refused => {
            last.end = range.end;
        }
        _ => sent.push((range, refused)),
    }
}

fn write_pair(files: &mut Files, dead: &[u8], log: &[u8], sent: Range<u64>) -> io::Result<()> {
    if !dead.is_empty() {
        // The dead letter is synced before the `Done` that drops the message from the log, so a
        // crash between them keeps the message (delivered again, not lost). A dead-letter file
        // that replaced another (a redrive) is the file at its path after a crash only once
        // its directory is synced: until then the letter is not on disk either.
        files.dead.write_all(dead)?;
        files.dead.sync_data()?;
        files.sync_dir_if_needed()?;
    }
    files.append_log(log, sent);
    Ok(())
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
            .replace_dead(&bytes[read.len()..])
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

    /// The first segment's file of log `q` in `dir`.
    fn first_segment(dir: &Path) -> PathBuf {
        Segment::new(&dir.join("q"), 0).path
    }

    /// The first records of a log's first segment.
    fn empty_checkpoint() -> Vec<u8> {
        Checkpoint {
            next_seq: 0,
            kept_from: 0,
            owes: Vec::new(),
        }
        .encode()
    }

    /// Writes `bytes` as the first segment of log `q` in `dir`.
    fn write_first_segment(dir: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(dir.join("q")).unwrap();
        std::fs::write(first_segment(dir), bytes).unwrap();
    }

    /// The messages the queue's subscription owes, by sequence number, with their attempts.
    fn owed_with_attempts(recovered: &Recovered) -> Vec<(u64, Vec<u8>, u32)> {
        recovered
            .owed_by(None)
            .unwrap()
            .into_iter()
            .map(|(message, attempts)| (message.seq, message.body.clone(), attempts))
            .collect()
    }

    #[tokio::test]
    async fn replay_keeps_what_is_owed_in_order_with_its_attempts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, recovered) = open(&disk(), dir.path(), "q").unwrap();
            assert!(owed_with_attempts(&recovered).is_empty());
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
        let pending: Vec<_> = owed_with_attempts(&recovered)
            .into_iter()
            .map(|(_, body, attempts)| (body, attempts))
            .collect();
        assert_eq!(pending, vec![(b"zero".to_vec(), 0), (b"two".to_vec(), 3)]);
        assert_eq!(recovered.next_seq, 3);
    }

    fn bodies(recovered: &Recovered) -> Vec<Vec<u8>> {
        owed_with_attempts(recovered)
            .into_iter()
            .map(|(_, body, _)| body)
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
        let bytes = sim.contents(&first_segment(dir)).unwrap();
        let scan = scan::<Record>(&bytes);
        assert!(scan.damaged.is_empty() && scan.torn_from.is_none());
        let (_, recovered) = open(&storage, dir, "q").unwrap();
        assert_eq!(
            bodies(&recovered),
            vec![b"before".to_vec(), b"after".to_vec()]
        );
    }

    /// A checkpoint of queue `q` that owes `owed` (and nothing else before `next_seq`).
    fn checkpoint_owing(owed: &[u64], next_seq: u64) -> Rotation {
        let start = owed.first().copied().unwrap_or(next_seq);
        let done = (start..next_seq)
            .filter(|seq| !owed.contains(seq))
            .collect();
        Rotation {
            checkpoint: Some(
                Checkpoint {
                    next_seq,
                    kept_from: next_seq,
                    owes: vec![SubscriptionPlace {
                        name: None,
                        start,
                        done: ranges(done),
                        attempts: Vec::new(),
                    }],
                }
                .encode(),
            ),
            live: ranges(owed.to_vec()),
        }
    }

    #[tokio::test]
    async fn a_segment_whose_name_is_not_yet_durable_fails_the_sends_after_it_until_it_is() {
        let (sim, _, dir, writer) = on_sim(2);
        let mut log = records(&[Record::Sent(message(0, "settled"))]);
        encode(&Record::Done { seq: 0 }, &mut log).unwrap();
        encode(&Record::Sent(message(1, "owed")), &mut log).unwrap();
        writer.append(Vec::new(), log).await.unwrap();
        // The new segment is renamed into place, but the directory sync fails (and again when
        // the batch ends): until a directory sync succeeds, a crash could lose the new
        // segment, so an append to it must not be acknowledged.
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        writer.rotate(checkpoint_owing(&[1], 2));
        // Sends fail until a directory sync succeeds (the repair before a later batch tries
        // again); whichever are acknowledged must survive the crash.
        let mut expected = vec![b"owed".to_vec()];
        let mut acknowledged = 0;
        for seq in 2..6 {
            let body = format!("after {seq}");
            let sent = records(&[Record::Sent(message(seq, &body))]);
            if writer.append(Vec::new(), sent).await.is_ok() {
                expected.push(body.into_bytes());
                acknowledged += 1;
            }
        }
        assert!(
            (1..4).contains(&acknowledged),
            "{acknowledged} acknowledged"
        );
        sim.crash();
        let restarted: Arc<dyn Storage> = Arc::new(sim.restarted());
        let (_, recovered) = open(&restarted, dir, "q").unwrap();
        assert_eq!(bodies(&recovered), expected);
    }

    /// The dead-letter record of message `seq` (`body`), as the topic writes it.
    fn dead_letter(seq: u64, body: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode(
            &DeadLetter {
                message: message(seq, body),
                attempts: 3,
                reason: "gave up".into(),
                last_error: "boom".into(),
                at_ms: 0,
            },
            &mut bytes,
        )
        .unwrap();
        bytes
    }

    /// After a crash of `sim`: whether the message `body` of queue `q` is still owed or kept
    /// as a dead letter (else it is lost).
    async fn owed_or_dead_after_restart(sim: &sim::SimDisk, dir: &Path, body: &[u8]) -> bool {
        let restarted: Arc<dyn Storage> = Arc::new(sim.restarted());
        let (writer, recovered) = open(&restarted, dir, "q").unwrap();
        let owed = bodies(&recovered).iter().any(|owed| owed == body);
        let (letters, _) = writer.read_dead().await.unwrap();
        let dead = letters.iter().any(|l| l.message.body == body);
        writer.close().await;
        owed || dead
    }

    #[tokio::test]
    async fn a_dead_letter_whose_done_may_be_on_disk_outlives_a_failed_repair_and_a_crash() {
        // What a crash keeps of a cut that was not synced is drawn per seed.
        for seed in 0..32 {
            let (sim, _, dir, writer) = on_sim(seed);
            let sent = records(&[Record::Sent(message(0, "doomed"))]);
            writer.append(Vec::new(), sent).await.unwrap();
            // The letter and its `Done` are synced (the letter's sync, the log's), then the
            // batch's last sync (the dead-letter file's again) fails: the batch failed.
            sim.fail_after(sim::Op::Sync, 2, io::ErrorKind::Other);
            let done = records(&[Record::Done { seq: 0 }]);
            let dead_lettered = writer.append(dead_letter(0, "doomed"), done);
            assert!(dead_lettered.await.is_err(), "seed {seed}");
            // The repair before the next batch cuts both back, and a sync of it fails; then
            // the power goes.
            sim.fail_next(sim::Op::Sync, io::ErrorKind::Other);
            let later = records(&[Record::Sent(message(1, "later"))]);
            assert!(
                writer.append(Vec::new(), later).await.is_err(),
                "seed {seed}"
            );
            sim.crash();
            assert!(
                owed_or_dead_after_restart(&sim, dir, b"doomed").await,
                "seed {seed}: the message is neither owed nor a dead letter"
            );
        }
    }

    #[tokio::test]
    async fn a_dead_letter_whose_done_a_rotation_sealed_outlives_the_failed_batch() {
        let (sim, _, dir, writer) = on_sim(7);
        let sent = records(&[Record::Sent(message(0, "doomed"))]);
        writer.append(Vec::new(), sent).await.unwrap();
        // The sealed segment (with the `Done`) will be synced and the new one renamed into
        // place, but the directory sync fails, and again in the repair before the next batch.
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        // The letter with its `Done`, then a rotation, in one batch: the writer takes them
        // together once the write it waits on is let through.
        let held = sim.hold();
        let busy = writer.append(Vec::new(), records(&[Record::Sent(message(1, "busy"))]));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let dead_lettered = writer.append(
            dead_letter(0, "doomed"),
            records(&[Record::Done { seq: 0 }]),
        );
        // The checkpoint was taken before the letter was on disk: it still owes message 0.
        writer.rotate(checkpoint_owing(&[0, 1], 2));
        drop(held);
        let _ = busy.await;
        assert!(dead_lettered.await.is_err());
        let later = records(&[Record::Sent(message(2, "later"))]);
        assert!(writer.append(Vec::new(), later).await.is_err());
        // The power goes: the new segment's name was never durable; the sealed segment's
        // `Done` lets message 0 go, so its letter must still be there.
        sim.crash();
        assert!(
            owed_or_dead_after_restart(&sim, dir, b"doomed").await,
            "the message is neither owed nor a dead letter"
        );
    }

    #[tokio::test]
    async fn a_dead_letter_written_after_a_redrive_whose_rename_is_not_durable_is_not_lost() {
        let (sim, _, dir, writer) = on_sim(9);
        let sent = records(&[
            Record::Sent(message(0, "redriven")),
            Record::Sent(message(1, "doomed")),
        ]);
        writer.append(Vec::new(), sent).await.unwrap();
        let done = |seq: u64| records(&[Record::Done { seq }]);
        writer
            .append(dead_letter(0, "redriven"), done(0))
            .await
            .unwrap();
        // In one batch: a redrive replaces the dead-letter file with what is left of it
        // (nothing), the new file is renamed into place, but the directory sync fails (after
        // a crash, the old file is the one at the path); the next letter goes to the new file,
        // and the directory sync at the batch's end fails again.
        let (_, read) = writer.read_dead().await.unwrap();
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        sim.fail_next(sim::Op::SyncDir, io::ErrorKind::Other);
        // Held, the writer waits (on a batch of its own, or with this one) while both
        // commands are queued: they reach it in one batch.
        let held = sim.hold();
        let busy = writer.append(Vec::new(), records(&[Record::Sent(message(2, "busy"))]));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut dropping = Box::pin(writer.drop_dead(read));
        // Polled once: the command is queued.
        assert!(futures_util::FutureExt::now_or_never(&mut dropping).is_none());
        let dead_lettered = writer.append(dead_letter(1, "doomed"), done(1));
        drop(held);
        // (It may have waited in the same batch.)
        let _ = busy.await;
        assert!(dropping.await.is_err());
        assert!(dead_lettered.await.is_err());
        sim.crash();
        assert!(
            owed_or_dead_after_restart(&sim, dir, b"doomed").await,
            "the message is neither owed nor a dead letter"
        );
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
        let mut bytes = empty_checkpoint();
        bytes.extend(records(&[Record::Sent(message(0, "kept"))]));
        let torn = records(&[Record::Sent(message(1, "torn"))]);
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        write_first_segment(dir.path(), &bytes);
        let recovered = reopen(dir.path()).await;
        assert_eq!(bodies(&recovered), [b"kept".to_vec()]);
        let on_disk = std::fs::metadata(first_segment(dir.path())).unwrap().len();
        assert_eq!(on_disk as usize, bytes.len() - (torn.len() - 3));
    }

    /// 60 owed messages as a log, and where each record starts.
    fn sixty() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = empty_checkpoint();
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
        owed_with_attempts(recovered)
            .into_iter()
            .map(|(seq, _, _)| seq)
            .collect()
    }

    fn aside_path(dir: &Path) -> PathBuf {
        let mut name = first_segment(dir).into_os_string();
        name.push(".damaged");
        PathBuf::from(name)
    }

    #[tokio::test]
    async fn damage_in_the_middle_costs_only_the_damaged_record_and_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = sixty();
        // A flipped byte inside record 30's payload: its checksum fails, its length holds.
        bytes[starts[30] + HEADER_BYTES + 3] ^= 0x40;
        write_first_segment(dir.path(), &bytes);
        let recovered = reopen(dir.path()).await;
        let expected: Vec<u64> = (0..60).filter(|seq| *seq != 30).collect();
        assert_eq!(owed(&recovered), expected);
        assert_eq!(recovered.next_seq, 60);
        let aside = std::fs::read(aside_path(dir.path())).unwrap();
        let damaged = &bytes[starts[30]..starts[31]];
        assert!(
            aside.windows(damaged.len()).any(|w| w == damaged),
            "the damaged record is kept aside whole"
        );
        // The log was rewritten without it: the next start finds nothing more to set aside.
        let recovered = reopen(dir.path()).await;
        assert_eq!(owed(&recovered), expected);
        let again = std::fs::read(aside_path(dir.path())).unwrap();
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
        write_first_segment(dir.path(), &bytes);
        let recovered = reopen(dir.path()).await;
        let expected: Vec<u64> = (0..59).filter(|seq| *seq != 20).collect();
        assert_eq!(owed(&recovered), expected);
        let on_disk = std::fs::read(first_segment(dir.path())).unwrap();
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
        // 60 messages and the checkpoint's two records, less the two zeroed.
        assert_eq!(found.records.len(), 60);
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
    fn a_message_encoded_without_a_copy_is_the_same_record() {
        let message = message(3, "body");
        let mut borrowed = Vec::new();
        encode_sent(&message, &mut borrowed).unwrap();
        assert_eq!(borrowed, records(&[Record::Sent(message)]));
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

    /// The segment numbers of log `q` in `dir`.
    fn segment_numbers(dir: &Path) -> Vec<u64> {
        segments::list(&Disk, &dir.join("q")).unwrap()
    }

    #[tokio::test]
    async fn a_rotation_starts_a_segment_and_removes_or_rewrites_the_settled_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = open(&disk(), dir.path(), "q").unwrap();
            // Segment 0: messages 0..50, all done but 7.
            let mut log = Vec::new();
            for seq in 0..50 {
                encode(&Record::Sent(message(seq, "m")), &mut log).unwrap();
                if seq != 7 {
                    encode(&Record::Done { seq }, &mut log).unwrap();
                }
            }
            encode(
                &Record::Failed {
                    seq: 7,
                    attempts: 2,
                },
                &mut log,
            )
            .unwrap();
            writer.append_sent(log, 0..50).await.unwrap();
            // Segment 1: messages 50..60, all done.
            let mut log = Vec::new();
            writer.rotate(checkpoint_owing(&[7], 50));
            for seq in 50..60 {
                encode(&Record::Sent(message(seq, "m")), &mut log).unwrap();
                encode(&Record::Done { seq }, &mut log).unwrap();
            }
            writer.append_sent(log, 50..60).await.unwrap();
            // Segment 2 starts; 7 alone of segment 0 is live (rewritten), nothing of 1 (gone).
            let mut rotation = checkpoint_owing(&[7], 60);
            if let Some(checkpoint) = rotation.checkpoint.as_mut() {
                encode(
                    &Record::Attempts {
                        subscription: None,
                        attempts: vec![(7, 2)],
                    },
                    checkpoint,
                )
                .unwrap();
            }
            writer.rotate(rotation);
            writer
                .append_sent(records(&[Record::Sent(message(60, "after"))]), 60..61)
                .await
                .unwrap();
            writer.close().await;
        }
        assert_eq!(segment_numbers(dir.path()), [0, 2]);
        let rewritten = std::fs::read(first_segment(dir.path())).unwrap();
        let (kept, _) = decode_all::<Record>(&rewritten);
        assert_eq!(
            kept,
            [Record::Sent(message(7, "m"))],
            "the live message alone"
        );
        let recovered = reopen(dir.path()).await;
        let owed: Vec<(u64, u32)> = owed_with_attempts(&recovered)
            .into_iter()
            .map(|(seq, _, attempts)| (seq, attempts))
            .collect();
        assert_eq!(owed, [(7, 2), (60, 0)]);
        assert_eq!(recovered.next_seq, 61);
    }

    #[tokio::test]
    async fn the_reader_finds_stored_messages_through_the_index_across_rotations_and_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = open(&disk(), dir.path(), "q").unwrap();
        let reader = writer.reader();
        let body = "b".repeat(900);
        // Three segments of 30 messages of about 1 KiB: index entries every few messages.
        for segment in 0..3u64 {
            for seq in segment * 30..(segment + 1) * 30 {
                let sent = records(&[Record::Sent(message(seq, &format!("{seq} {body}")))]);
                writer.append_sent(sent, seq..seq + 1).await.unwrap();
            }
            writer.rotate(checkpoint_owing(
                &(0..(segment + 1) * 30).collect::<Vec<_>>(),
                (segment + 1) * 30,
            ));
        }
        let seqs = |found: Vec<StoredMessage>| -> Vec<u64> {
            found.iter().map(|message| message.seq).collect()
        };
        assert_eq!(
            seqs(reader.read(&[17, 18, 44, 89]).unwrap()),
            [17, 18, 44, 89]
        );
        assert_eq!(
            seqs(reader.read(&(25..35).collect::<Vec<_>>()).unwrap()),
            (25..35).collect::<Vec<_>>()
        );
        assert!(reader.read(&[90, 91]).unwrap().is_empty(), "never sent");
        let found = reader.read(&[57]).unwrap();
        assert_eq!(found[0].body, format!("57 {body}").into_bytes());
        // Segment 0 rewritten to 3 and 4 alone, segment 1 removed: positions moved.
        let live: Vec<u64> = [3, 4].into_iter().chain(60..90).collect();
        let mut rotation = checkpoint_owing(&live, 90);
        rotation.live = ranges(live);
        writer.rotate(rotation);
        writer.append(Vec::new(), Vec::new()).await.unwrap();
        // Segment 3 held no message at all: it went too.
        assert_eq!(segment_numbers(dir.path()), [0, 2, 4]);
        assert_eq!(seqs(reader.read(&[3, 4, 20, 45, 61]).unwrap()), [3, 4, 61]);
        writer.close().await;
    }

    #[tokio::test]
    async fn a_restart_holds_bodies_only_of_what_is_owed_and_the_rest_of_what_is_kept_without() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = open(&disk(), dir.path(), "q").unwrap();
            for seq in 0..10 {
                let sent = records(&[Record::Sent(message(seq, &format!("body {seq}")))]);
                writer.append_sent(sent, seq..seq + 1).await.unwrap();
            }
            // A topic that keeps everything from 2 on; billing owes 5 and on, but 7.
            writer.rotate(Rotation {
                checkpoint: Some(
                    Checkpoint {
                        next_seq: 10,
                        kept_from: 2,
                        owes: vec![SubscriptionPlace {
                            name: Some("billing"),
                            start: 5,
                            done: ranges(vec![7]),
                            attempts: Vec::new(),
                        }],
                    }
                    .encode(),
                ),
                live: ranges((2..10).collect()),
            });
            writer.close().await;
        }
        let recovered = reopen(dir.path()).await;
        let owed: Vec<u64> = recovered.messages.keys().copied().collect();
        assert_eq!(owed, [5, 6, 8, 9]);
        let kept: Vec<(u64, usize, usize)> = recovered
            .kept
            .iter()
            .map(|(seq, kept)| (*seq, kept.message.body.len(), kept.body_len))
            .collect();
        assert_eq!(kept, [(2, 0, 6), (3, 0, 6), (4, 0, 6), (7, 0, 6)]);
        let billing = recovered.owed_by(Some("billing")).unwrap();
        let seqs: Vec<u64> = billing.iter().map(|(message, _)| message.seq).collect();
        assert_eq!(seqs, [5, 6, 8, 9]);
    }

    #[tokio::test]
    async fn a_log_from_before_segments_becomes_the_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = records(&[
            Record::Sent(message(0, "done")),
            Record::Sent(message(1, "owed")),
            Record::Done { seq: 0 },
            Record::Failed {
                seq: 1,
                attempts: 2,
            },
        ]);
        std::fs::write(dir.path().join("q.log"), &legacy).unwrap();
        let recovered = reopen(dir.path()).await;
        assert_eq!(owed_with_attempts(&recovered), [(1, b"owed".to_vec(), 2)]);
        assert_eq!(recovered.next_seq, 2);
        assert!(!dir.path().join("q.log").exists(), "the old file is gone");
        assert_eq!(segment_numbers(dir.path()), [0]);
        // And a restart finds the same in the segment.
        let again = reopen(dir.path()).await;
        assert_eq!(owed_with_attempts(&again), [(1, b"owed".to_vec(), 2)]);
    }
}
