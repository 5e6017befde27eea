//! A log's segments: the files its records go to, one after another, and what the writer
//! knows of each to decide when one can go.
//!
//! A segment is `<queue>/<number>.seg` (twenty digits, so names sort in order). It is created
//! whole by [`super::Storage::replace`] with a checkpoint as its first records (what every
//! subscription owes as of that moment), so replay reads state records from the last segment
//! alone and only the messages (`Sent` records) from the ones before it. The writer keeps, per
//! segment, the offsets of the messages it holds: once none of them is kept or owed any more,
//! the segment is removed whole; once fewer than half are, it is rewritten with the live ones
//! (a `compact` topic's superseded messages, a queue's acknowledged ones around a stuck one).

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Record, Storage, encode, scan};

const SUFFIX: &str = ".seg";

/// One segment file, as the writer keeps track of it.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) number: u64,
    pub(super) path: PathBuf,
    /// The first and last offsets of the messages it holds, if it holds any.
    sent: Option<(u64, u64)>,
    /// How many messages it holds.
    messages: usize,
}

impl Segment {
    pub(super) fn new(dir: &Path, number: u64) -> Self {
        Self {
            number,
            path: dir.join(format!("{number:020}{SUFFIX}")),
            sent: None,
            messages: 0,
        }
    }

    /// It holds the messages numbered `seqs` too.
    pub(super) fn note_sent(&mut self, seqs: Range<u64>) {
        if seqs.is_empty() {
            return;
        }
        let last = seqs.end - 1;
        self.sent = Some(match self.sent {
            Some((first, _)) => (first, last),
            None => (seqs.start, last),
        });
        self.messages += (seqs.end - seqs.start) as usize;
    }

    /// How many of the offsets its messages span are in `live` (sorted, disjoint ranges).
    /// Offsets are handed out in order, so none of them is in another segment.
    fn live_in(&self, live: &[Range<u64>]) -> usize {
        let Some((first, last)) = self.sent else {
            return 0;
        };
        let from = live.partition_point(|range| range.end <= first);
        live[from..]
            .iter()
            .take_while(|range| range.start <= last)
            .map(|range| {
                let start = range.start.max(first);
                let end = range.end.min(last + 1);
                end.saturating_sub(start) as usize
            })
            .sum()
    }

    /// What to do with it, a sealed segment, now that `live` is what is kept or owed.
    pub(super) fn fate(&self, live: &[Range<u64>]) -> Fate {
        match self.live_in(live) {
            0 => Fate::Remove,
            live if live * 2 < self.messages => Fate::Rewrite,
            _ => Fate::Keep,
        }
    }

    /// Rewrites it with its live messages only (its other records describe a past that the
    /// newest checkpoint sums up); the rewrite replaces it atomically. Returns the offset and
    /// position of each message it keeps.
    pub(super) fn rewrite(
        &mut self,
        storage: &dyn Storage,
        live: &[Range<u64>],
    ) -> io::Result<Vec<(u64, u64)>> {
        let bytes = storage.read(&self.path)?.unwrap_or_default();
        let mut kept = Vec::new();
        let mut rewritten = Self {
            number: self.number,
            path: self.path.clone(),
            sent: None,
            messages: 0,
        };
        let mut positions = Vec::new();
        for record in scan::<Record>(&bytes).records {
            if let Record::Sent(message) = &record
                && contains(live, message.seq)
            {
                positions.push((message.seq, kept.len() as u64));
                encode(&record, &mut kept).map_err(io::Error::other)?;
                rewritten.note_sent(message.seq..message.seq + 1);
            }
        }
        storage.replace(&self.path, &kept)?;
        *self = rewritten;
        Ok(positions)
    }
}

/// What happens to a sealed segment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fate {
    Keep,
    Rewrite,
    Remove,
}

fn contains(live: &[Range<u64>], seq: u64) -> bool {
    let at = live.partition_point(|range| range.end <= seq);
    live.get(at).is_some_and(|range| range.contains(&seq))
}

/// The numbers of the segments in `dir`, in order. Other files (a replacement in progress,
/// damaged bytes kept aside) are not segments.
pub(super) fn list(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers: Vec<u64> = storage
        .list(dir)?
        .iter()
        .filter_map(|path| {
            path.file_name()?
                .to_str()?
                .strip_suffix(SUFFIX)?
                .parse()
                .ok()
        })
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Whether `records` (a segment's) open with a whole checkpoint.
pub(super) fn opens_with_checkpoint<'a>(records: impl IntoIterator<Item = &'a Record>) -> bool {
    let mut records = records.into_iter().peekable();
    matches!(records.peek(), Some(Record::Checkpoint { .. }))
        && records
            .take_while(|record| !matches!(record, Record::Sent(_)))
            .any(|record| matches!(record, Record::CheckpointEnd))
}

/// `seqs` (in any order, repeats allowed) as sorted, disjoint ranges.
pub(crate) fn ranges(mut seqs: Vec<u64>) -> Vec<Range<u64>> {
    seqs.sort_unstable();
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for seq in seqs {
        match ranges.last_mut() {
            Some(last) if seq <= last.end => last.end = last.end.max(seq + 1),
            _ => ranges.push(seq..seq + 1),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(seqs: Range<u64>) -> Segment {
        let mut segment = Segment::new(Path::new("/q"), 3);
        segment.note_sent(seqs);
        segment
    }

    #[test]
    fn a_segment_goes_when_nothing_in_it_is_live_and_is_rewritten_when_little_is() {
        let segment = holding(10..20);
        assert_eq!(segment.fate(&ranges(vec![1, 2, 25])), Fate::Remove);
        assert_eq!(segment.fate(&[]), Fate::Remove);
        assert_eq!(segment.fate(&ranges(vec![12, 30])), Fate::Rewrite);
        assert_eq!(segment.fate(&ranges((0..15).collect())), Fate::Keep);
        assert_eq!(segment.fate(&ranges((19..40).collect())), Fate::Rewrite);
        // A segment of state records only holds nothing anyone needs.
        assert_eq!(
            Segment::new(Path::new("/q"), 4).fate(&ranges((0..100).collect())),
            Fate::Remove
        );
    }

    #[test]
    fn ranges_merge_neighbours_and_repeats() {
        assert_eq!(ranges(vec![5, 1, 2, 2, 3, 9]), [1..4, 5..6, 9..10]);
        assert!(contains(&ranges(vec![5, 1, 2]), 2));
        assert!(!contains(&ranges(vec![5, 1, 2]), 4));
        assert_eq!(
            segment_names(&[
                "00000000000000000002.seg",
                "x.seg.replacing",
                "7.seg",
                "a.dead"
            ]),
            [2, 7]
        );
    }

    fn segment_names(names: &[&str]) -> Vec<u64> {
        let sim = super::super::sim::SimDisk::new(1);
        for name in names {
            let _ = sim.replace(&Path::new("/q").join(name), b"");
        }
        list(&sim, Path::new("/q")).unwrap_or_default()
    }
}
