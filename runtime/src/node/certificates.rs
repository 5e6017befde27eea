//! Renewed certificate files are picked up while the node runs: the files named by
//! `[node.tls]` are looked at every [`CHECK_EVERY`], and when either changed, the pair is
//! loaded, checked (the key matches, the certificate chains to the cluster CA, is valid now and
//! names the node role) and swapped in for every TLS configuration that presents it (QUIC both
//! ways, the admin API). Connections open keep the certificate they shook hands with; the next
//! handshake uses the new one. A pair that fails the checks is logged and the old one stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::transport::NodeCert;

/// How often the certificate files are looked at: two `stat`s.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What a file looked like: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Watches `cert` and `key` until `shutdown`, reloading `presenters` when they change. The
/// files are first looked at now, not when the task first runs: a change right after the
/// node started is a change.
pub(super) fn watch(
    presenters: Vec<Arc<NodeCert>>,
    cert: PathBuf,
    key: PathBuf,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let seen = (stamp(&cert), stamp(&key));
    watch_from(seen, presenters, cert, key, shutdown)
}

async fn watch_from(
    mut seen: (Stamp, Stamp),
    presenters: Vec<Arc<NodeCert>>,
    cert: PathBuf,
    key: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        seen = now;
        // Reading and checking a certificate is quick, but it is file I/O.
        let files = (presenters.clone(), cert.clone(), key.clone());
        let reloaded = tokio::task::spawn_blocking(move || {
            let (presenters, cert, key) = files;
            presenters
                .iter()
                .try_for_each(|presenter| presenter.reload(&cert, &key))
        })
        .await;
        match reloaded {
            Ok(Ok(())) => tracing::info!(
                cert = %cert.display(),
                "node certificate reloaded; new connections use it"
            ),
            Ok(Err(error)) => tracing::error!(
                %error,
                "the changed [node.tls] files were not taken; the node keeps its old \
                 certificate (write the certificate and its key, then check them with \
                 `openssl x509 -noout -dates -in <cert>`)"
            ),
            Err(error) => tracing::error!(%error, "reloading the node certificate was cut off"),
        }
    }
}
