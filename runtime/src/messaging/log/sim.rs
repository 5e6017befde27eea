//! A simulated disk for the model tests: files in memory that fail on purpose and crash.
//!
//! Each file keeps what a reader sees beside what a crash would keep (the bytes as of its last
//! successful sync); each directory keeps its names beside the names as of its last successful
//! sync. Faults come from a seeded generator (a share of all operations) or a script (the next
//! operation of a kind): a write that fails after writing part of its bytes (a full disk, an
//! I/O error, a short write), a sync that fails after writing back part of the file, a failed
//! cut, replace, read, removal or directory sync. A crash keeps, per file, its synced bytes plus any
//! prefix of the rest (a torn write), brings back the synced names, and fences off the process
//! that ran before it: its handles and its disk ([`SimDisk::restarted`] is the next process's)
//! fail every operation from then on, as a killed process does nothing more. Without that, a
//! writer thread still running after the crash could remove or rewrite the next life's segments.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::storage::{LogFile, Storage};

/// An operation the disk can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Write,
    Sync,
    SetLen,
    Replace,
    SyncDir,
    Read,
    Open,
    Remove,
}

/// Every disk operation waits while this lives ([`SimDisk::hold`]).
pub(crate) struct Held<'a>(#[allow(dead_code, reason = "held for its lock")] MutexGuard<'a, State>);

/// The simulated disk as one process sees it; clones share it.
#[derive(Clone)]
pub(crate) struct SimDisk {
    state: Arc<Mutex<State>>,
    /// The crashes before this process started: once another comes, it can do nothing more.
    epoch: u64,
}

struct State {
    files: Vec<SimFile>,
    names: BTreeMap<PathBuf, usize>,
    synced_names: BTreeMap<PathBuf, usize>,
    /// Bumped by each crash: handles from an earlier epoch fail.
    epoch: u64,
    rng: fastrand::Rng,
    /// Chance per thousand that an operation fails.
    fault_per_mille: u32,
    /// Failures to come: an op, how many of it pass first, the error.
    scripted: VecDeque<(Op, usize, io::ErrorKind)>,
    faults: u64,
}

#[derive(Default)]
struct SimFile {
    seen: Vec<u8>,
    synced: Vec<u8>,
}

impl SimDisk {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                files: Vec::new(),
                names: BTreeMap::new(),
                synced_names: BTreeMap::new(),
                epoch: 0,
                rng: fastrand::Rng::with_seed(seed),
                fault_per_mille: 0,
                scripted: VecDeque::new(),
                faults: 0,
            })),
            epoch: 0,
        }
    }

    /// The same disk as a process started after the last crash sees it.
    pub(crate) fn restarted(&self) -> Self {
        Self {
            state: self.state.clone(),
            epoch: self.state().epoch,
        }
    }

    /// The disk's state for an operation of this process, or an error if the disk crashed
    /// since it started.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state();
        if state.epoch != self.epoch {
            return Err(io::Error::other(
                "this process crashed: the disk takes nothing more from it",
            ));
        }
        Ok(state)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds every disk operation back until the returned guard is dropped: lets a test queue
    /// commands while a writer waits, so that they reach it as one batch.
    pub(crate) fn hold(&self) -> Held<'_> {
        Held(self.state())
    }

    /// From now on, this share (per thousand) of all operations fails.
    pub(crate) fn set_fault_rate(&self, per_mille: u32) {
        self.state().fault_per_mille = per_mille;
    }

    /// The next `op` fails with `kind` (a write after writing half its bytes).
    pub(crate) fn fail_next(&self, op: Op, kind: io::ErrorKind) {
        self.fail_after(op, 0, kind);
    }

    /// The `op` after the next `passing` ones fails with `kind`.
    pub(crate) fn fail_after(&self, op: Op, passing: usize, kind: io::ErrorKind) {
        self.state().scripted.push_back((op, passing, kind));
    }

    /// How many operations failed on purpose so far.
    pub(crate) fn faults(&self) -> u64 {
        self.state().faults
    }

    /// Loses power: every file keeps its synced bytes and maybe part of the rest, every
    /// directory its synced names; the processes before it (their disks and handles) fail
    /// from now on.
    pub(crate) fn crash(&self) {
        let mut state = self.state();
        let State { files, rng, .. } = &mut *state;
        for file in files.iter_mut() {
            let kept = if file.seen.starts_with(&file.synced) {
                let torn = rng.usize(..=file.seen.len() - file.synced.len());
                file.seen[..file.synced.len() + torn].to_vec()
            } else if rng.bool() {
                // Cut (or rewritten) since its last sync: either state may be on the platter.
                file.seen.clone()
            } else {
                file.synced.clone()
            };
            file.synced.clone_from(&kept);
            file.seen = kept;
        }
        state.names = state.synced_names.clone();
        state.epoch += 1;
    }

    /// The bytes a reader sees at `path`, if it exists.
    pub(crate) fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state();
        state
            .names
            .get(path)
            .map(|&at| state.files[at].seen.clone())
    }
}

impl State {
    /// The error `op` fails with now, if it fails.
    fn fault(&mut self, op: Op) -> Option<io::Error> {
        let kind = match self.scripted.front_mut() {
            Some((next, passing, _)) if *next == op && *passing > 0 => {
                *passing -= 1;
                None
            }
            Some(&mut (next, _, kind)) if next == op => {
                self.scripted.pop_front();
                Some(kind)
            }
            _ if self.fault_per_mille > 0 && self.rng.u32(..1000) < self.fault_per_mille => {
                Some(if op == Op::Write && self.rng.bool() {
                    io::ErrorKind::StorageFull
                } else {
                    io::ErrorKind::Other
                })
            }
            _ => None,
        }?;
        self.faults += 1;
        Some(io::Error::new(kind, format!("simulated fault in {op:?}")))
    }

    fn create(&mut self, path: &Path, contents: Vec<u8>) -> usize {
        self.files.push(SimFile {
            seen: contents.clone(),
            synced: contents,
        });
        let at = self.files.len() - 1;
        self.names.insert(path.to_path_buf(), at);
        at
    }
}

impl Storage for SimDisk {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let mut state = self.live()?;
        if let Some(err) = state.fault(Op::Read) {
            return Err(err);
        }
        Ok(state
            .names
            .get(path)
            .map(|&at| state.files[at].seen.clone()))
    }

    fn read_at(&self, path: &Path, at: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut state = self.live()?;
        if let Some(err) = state.fault(Op::Read) {
            return Err(err);
        }
        Ok(state.names.get(path).map(|&file| {
            let seen = &state.files[file].seen;
            let from = (at as usize).min(seen.len());
            seen[from..from.saturating_add(len).min(seen.len())].to_vec()
        }))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let mut state = self.live()?;
        if let Some(err) = state.fault(Op::Open) {
            return Err(err);
        }
        let at = match state.names.get(path) {
            Some(&at) => at,
            None => state.create(path, Vec::new()),
        };
        Ok(Box::new(Handle {
            disk: self.clone(),
            at,
        }))
    }

    fn replace(&self, path: &Path, contents: &[u8]) -> io::Result<Box<dyn LogFile>> {
        let mut state = self.live()?;
        if let Some(err) = state.fault(Op::Replace) {
            return Err(err);
        }
        let at = state.create(path, contents.to_vec());
        Ok(Box::new(Handle {
            disk: self.clone(),
            at,
        }))
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        drop(self.live()?);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut state = self.live()?;
        if let Some(err) = state.fault(Op::Read) {
            return Err(err);
        }
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        if let Some(err) = state.fault(Op::Remove) {
            return Err(err);
        }
        match state.names.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            )),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        if let Some(err) = state.fault(Op::SyncDir) {
            return Err(err);
        }
        let in_dir = |path: &PathBuf| path.parent() == Some(dir);
        state.synced_names.retain(|path, _| !in_dir(path));
        let names: Vec<_> = state
            .names
            .iter()
            .filter(|(path, _)| in_dir(path))
            .map(|(path, &at)| (path.clone(), at))
            .collect();
        state.synced_names.extend(names);
        Ok(())
    }

    fn lock(&self, _path: &Path) -> io::Result<Option<Box<dyn Send>>> {
        drop(self.live()?);
        Ok(Some(Box::new(())))
    }
}

/// An open file of the simulated disk.
struct Handle {
    /// The process that opened it: once the disk crashes, every operation fails.
    disk: SimDisk,
    at: usize,
}

impl LogFile for Handle {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.disk.live()?;
        if let Some(err) = state.fault(Op::Write) {
            let part = if err.kind() == io::ErrorKind::Other && state.rng.bool() {
                state.rng.usize(..=bytes.len())
            } else {
                bytes.len() / 2
            };
            state.files[self.at].seen.extend_from_slice(&bytes[..part]);
            return Err(err);
        }
        state.files[self.at].seen.extend_from_slice(bytes);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.disk.live()?;
        if let Some(err) = state.fault(Op::Sync) {
            // Part of the file may have been written back before the error.
            let seen_len = state.files[self.at].seen.len();
            let part = state.rng.usize(..=seen_len);
            let file = &mut state.files[self.at];
            if file.seen.starts_with(&file.synced) && part > file.synced.len() {
                file.synced = file.seen[..part].to_vec();
            }
            return Err(err);
        }
        let file = &mut state.files[self.at];
        file.synced.clone_from(&file.seen);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.disk.live()?;
        Ok(state.files[self.at].seen.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.disk.live()?;
        if let Some(err) = state.fault(Op::SetLen) {
            return Err(err);
        }
        state.files[self.at].seen.resize(len as usize, 0);
        Ok(())
    }
}
