//! Small things every layer shares.
//!
//! [`BoxFuture`] lets an async method sit behind `dyn Trait` (ports, backends, layers).
//!
//! Time: logic that decides by time either takes `now` as an argument (the pure state
//! machines: registry expiry, ejection, probation) or runs on tokio's clock
//! ([`tokio::time::Instant`], `sleep`, `timeout`), so tests run it under
//! `#[tokio::test(start_paused = true)]` in milliseconds. The wall clock is read only at the
//! edges (timestamps stored in logs, JSON for operators).

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The wall clock in milliseconds since the Unix epoch, for timestamps that are stored or
/// shown (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Makes the creation, rename or removal of files in `dir` durable: a file's own fsync does
/// not write the directory entry that names it.
pub(crate) fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
