//! Where a log's messages are on disk: a sparse index per segment (the offset of a message
//! about every [`INDEX_EVERY`] bytes, and where its record starts), and the [`Reader`] that
//! uses it to fetch stored messages beside the writer, so a topic keeps no bodies in memory
//! for readers, and a read or a replay from an offset starts near it instead of scanning the
//! log from its start.
//!
//! The writer keeps the index as it appends, rotates, cuts back a failed batch and removes or
//! rewrites segments; it is rebuilt from the records at open, which replay reads (and checks)
//! anyway. A reader may meet a segment the writer rewrote or removed since it looked: it
//! checks that the record at an indexed position is the message the index names, and
//! otherwise reads that segment from its start; a removed segment held nothing wanted.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{HEADER_BYTES, MAX_RECORD_BYTES, Record, Storage, StoredMessage, decode_at};

/// Bytes of records between two index entries of a segment.
pub(super) const INDEX_EVERY: u64 = 4096;
/// Bytes a reader reads at once.
const CHUNK: usize = 256 * 1024;

#[derive(Default)]
pub(super) struct Index {
    /// By segment number.
    segments: BTreeMap<u64, Entries>,
}

#[derive(Default)]
struct Entries {
    path: PathBuf,
    /// `(offset, position)` of some of its messages, in order.
    at: Vec<(u64, u64)>,
}

impl Index {
    /// Segment `number` at `path` holds the messages `entries` name (every message's
    /// `(offset, position)`, in order); entries about [`INDEX_EVERY`] bytes apart are kept.
    pub(super) fn set(
        &mut self,
        number: u64,
        path: PathBuf,
        entries: impl IntoIterator<Item = (u64, u64)>,
    ) {
        let mut segment = Entries {
            path,
            at: Vec::new(),
        };
        for (seq, position) in entries {
            segment.note(seq, position);
        }
        self.segments.insert(number, segment);
    }

    /// Message `seq` starts at `position` of segment `number`.
    pub(super) fn note(&mut self, number: u64, seq: u64, position: u64) {
        if let Some(segment) = self.segments.get_mut(&number) {
            segment.note(seq, position);
        }
    }

    /// Segment `number` was cut back to `len` bytes (a failed batch): what was after is gone.
    pub(super) fn cut(&mut self, number: u64, len: u64) {
        if let Some(segment) = self.segments.get_mut(&number) {
            segment.at.retain(|&(_, position)| position < len);
        }
    }

    pub(super) fn remove(&mut self, number: u64) {
        self.segments.remove(&number);
    }

    /// Where to read for the messages from `seq` on: the segment that holds it and a position
    /// at or before it (with the offset of the message there), then every later segment from
    /// its start.
    fn plan(&self, seq: u64) -> Vec<(PathBuf, u64, Option<u64>)> {
        let holding = self
            .segments
            .iter()
            .rev()
            .find(|(_, segment)| segment.at.first().is_some_and(|&(first, _)| first <= seq))
            .map(|(number, _)| *number);
        let mut plan = Vec::new();
        for (number, segment) in &self.segments {
            match holding {
                Some(holding) if *number < holding => continue,
                Some(holding) if *number == holding => {
                    let at = segment.at.partition_point(|&(first, _)| first <= seq);
                    let (entry, position) = segment.at[at.saturating_sub(1)];
                    plan.push((segment.path.clone(), position, Some(entry)));
                }
                _ => plan.push((segment.path.clone(), 0, None)),
            }
        }
        plan
    }
}

impl Entries {
    fn note(&mut self, seq: u64, position: u64) {
        match self.at.last() {
            Some(&(_, last)) if position < last + INDEX_EVERY => {}
            _ => self.at.push((seq, position)),
        }
    }
}

/// Reads stored messages from a log's segments, beside its writer.
#[derive(Clone)]
pub(crate) struct Reader {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) index: Arc<Mutex<Index>>,
}

impl Reader {
    /// The messages among `wanted` (ascending offsets of stored messages) that the segments
    /// hold, in order; an offset no segment holds any more is left out.
    pub(crate) fn read(&self, wanted: &[u64]) -> io::Result<Vec<StoredMessage>> {
        let mut found = Vec::with_capacity(wanted.len());
        let Some(&first) = wanted.first() else {
            return Ok(found);
        };
        let plan = self
            .index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .plan(first);
        let mut wanted = wanted.iter().copied().peekable();
        for (path, position, expected) in plan {
            if wanted.peek().is_none() {
                break;
            }
            let checked = self.read_segment(&path, position, expected, &mut wanted, &mut found)?;
            if !checked {
                // Rewritten since the index was read: its positions moved.
                self.read_segment(&path, 0, None, &mut wanted, &mut found)?;
            }
        }
        Ok(found)
    }

    /// Reads the segment at `path` from `position` on, taking the messages `wanted` names;
    /// `false` if the record there is not message `expected`.
    fn read_segment(
        &self,
        path: &std::path::Path,
        mut position: u64,
        mut expected: Option<u64>,
        wanted: &mut std::iter::Peekable<impl Iterator<Item = u64>>,
        found: &mut Vec<StoredMessage>,
    ) -> io::Result<bool> {
        let mut chunk = CHUNK;
        loop {
            let Some(bytes) = self.storage.read_at(path, position, chunk)? else {
                // Removed: none of its messages was wanted any more.
                return Ok(true);
            };
            let mut used = 0;
            while let Some((record, next)) = decode_at::<Record>(&bytes, used) {
                used = next;
                let Record::Sent(message) = record else {
                    continue;
                };
                if expected.take().is_some_and(|seq| seq != message.seq) {
                    return Ok(false);
                }
                while wanted.next_if(|&seq| seq < message.seq).is_some() {}
                if wanted.next_if_eq(&message.seq).is_some() {
                    found.push(message);
                }
                if wanted.peek().is_none() {
                    return Ok(true);
                }
            }
            if used == 0 {
                if bytes.len() < chunk || chunk > MAX_RECORD_BYTES {
                    // The end of its whole records.
                    return Ok(expected.is_none());
                }
                // A record larger than a chunk.
                chunk = MAX_RECORD_BYTES + HEADER_BYTES;
                continue;
            }
            position += used as u64;
            chunk = CHUNK;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::log::sample_log;
    use crate::messaging::log::sim::SimDisk;

    #[test]
    fn a_reader_whose_index_is_stale_reads_the_segment_from_its_start() {
        let sim = SimDisk::new(7);
        let path = std::path::Path::new("/q/0.seg");
        // Messages 0, 1 and 2 (and state records between them).
        let bytes = sample_log();
        let Ok(_) = sim.replace(path, &bytes) else {
            panic!("the simulated disk refused a file");
        };
        let reader = |entries: Vec<(u64, u64)>| {
            let mut index = Index::default();
            index.segments.insert(
                0,
                Entries {
                    path: path.to_path_buf(),
                    at: entries,
                },
            );
            Reader {
                storage: Arc::new(sim.clone()),
                index: Arc::new(Mutex::new(index)),
            }
        };
        let seqs = |reader: Reader| -> Vec<u64> {
            reader
                .read(&[1, 2])
                .unwrap_or_default()
                .iter()
                .map(|message| message.seq)
                .collect()
        };
        // An entry past the end of the file, and one at another message's record.
        assert_eq!(seqs(reader(vec![(1, 99_999)])), [1, 2]);
        assert_eq!(seqs(reader(vec![(1, 0)])), [1, 2]);
    }

    #[test]
    fn entries_are_sparse_and_a_plan_starts_at_the_entry_before_the_offset() {
        let mut index = Index::default();
        // Messages of 1000 bytes: an entry every fifth (4096 bytes apart at least).
        index.set(0, "/q/0".into(), (0..20).map(|seq| (seq, seq * 1000)));
        index.set(
            1,
            "/q/1".into(),
            (20..30).map(|seq| (seq, (seq - 20) * 1000)),
        );
        let plan = index.plan(12);
        assert_eq!(
            plan,
            [("/q/0".into(), 10_000, Some(10)), ("/q/1".into(), 0, None)]
        );
        assert_eq!(index.plan(25)[0], ("/q/1".into(), 5_000, Some(25)));
        // Before every kept offset: from the first segment's start.
        index.remove(0);
        assert_eq!(index.plan(3), [("/q/1".into(), 0, None)]);
        // A failed batch cut the segment back: its entries past the cut go.
        index.cut(1, 5_000);
        assert_eq!(index.plan(28)[0], ("/q/1".into(), 0, Some(20)));
    }
}
