//! What a queue's log needs from the disk, and nothing more: whole-file reads, append handles
//! that write, sync and cut back, an atomic replace, a directory's names, removal, directory
//! syncs and a lock.
//!
//! The log runs on [`Disk`], the real files. Being a trait, the same writer and replay also run
//! on the simulated disk of the model tests (`sim.rs`), which fails writes and syncs on purpose
//! (a full disk, an I/O error, a write cut short) and crashes, keeping only what was synced.
//! What the log promises (an acknowledged send survives anything) is checked against that.
//!
//! The contract the log relies on, which both implementations keep:
//! - bytes written to a [`LogFile`] survive a crash only once a later `sync_data` succeeds;
//!   until then any prefix of them may survive, or none;
//! - [`Storage::replace`] leaves the old contents or the new, never a mix, but which of the two
//!   a crash keeps is only settled by a successful [`Storage::sync_dir`]; the same goes for a
//!   file's creation and its removal.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The file system under a queue's log.
pub(crate) trait Storage: Send + Sync + 'static {
    /// The whole file; `None` if it does not exist.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Up to `len` bytes of the file from byte `at` on (fewer at its end); `None` if it does
    /// not exist. Called beside the writer, on bytes it synced before.
    fn read_at(&self, path: &Path, at: u64, len: usize) -> io::Result<Option<Vec<u8>>>;
    /// The file opened for appending, created if missing.
    fn append(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Makes `path` hold `contents` (written and synced to a new file that is renamed over
    /// it) and returns it opened for appending. The rename is durable after [`Storage::sync_dir`].
    fn replace(&self, path: &Path, contents: &[u8]) -> io::Result<Box<dyn LogFile>>;
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The paths of the files in `dir` (none if it does not exist), in no order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Removes the file at `path`; durable after [`Storage::sync_dir`].
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` (created, renamed) survive a crash.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the lock file at `path` for as long as the returned guard lives; `Ok(None)` if
    /// another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn Send>>>;
}

/// One file opened for appending.
pub(crate) trait LogFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Cuts the file to `len` bytes (appends go on from there).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The real file system.
pub(crate) struct Disk;

impl Storage for Disk {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    fn read_at(&self, path: &Path, at: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        file.seek(SeekFrom::Start(at))?;
        let mut bytes = Vec::new();
        file.take(len as u64).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(file))
    }

    fn replace(&self, path: &Path, contents: &[u8]) -> io::Result<Box<dyn LogFile>> {
        let mut name = path.as_os_str().to_owned();
        name.push(".replacing");
        let next = PathBuf::from(name);
        let mut file = File::create(&next)?;
        Write::write_all(&mut file, contents)?;
        file.sync_all()?;
        // Opened before the rename, so the handle is the new file whatever fails after it: a
        // handle to the replaced file would write into an unlinked inode.
        let mut reopened = OpenOptions::new().append(true).open(&next)?;
        reopened.seek(SeekFrom::End(0))?;
        std::fs::rename(&next, path)?;
        Ok(Box::new(reopened))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                paths.push(entry.path());
            }
        }
        Ok(paths)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::util::sync_dir(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn Send>>> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match lock.try_lock() {
            Ok(()) => Ok(Some(Box::new(lock))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        }
    }
}

impl LogFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// The real file system, without `fsync`: what a log costs when it does not wait for the disk
/// (the benchmarks' baseline for what durability costs). Never used by a node.
#[cfg(feature = "bench")]
pub(crate) struct UnsyncedDisk;

#[cfg(feature = "bench")]
struct Unsynced(File);

#[cfg(feature = "bench")]
impl Storage for UnsyncedDisk {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Disk.read(path)
    }

    fn read_at(&self, path: &Path, at: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        Disk.read_at(path, at, len)
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(Unsynced(file)))
    }

    fn replace(&self, path: &Path, contents: &[u8]) -> io::Result<Box<dyn LogFile>> {
        Disk.replace(path, contents)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        Disk.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Disk.list(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        Disk.remove(path)
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn Send>>> {
        Disk.lock(path)
    }
}

#[cfg(feature = "bench")]
impl LogFile for Unsynced {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(&mut self.0, bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}
