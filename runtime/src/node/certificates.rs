//! Renewed certificate files are picked up while the node runs: the files named by
//! `[node.tls]` (and by `[node] http_tls`, with its `client_ca`) are looked at every
//! [`CHECK_EVERY`], and when one changed, the pair is loaded, checked (the key matches; a node
//! certificate also chains to the cluster CA, is valid now and names the node role) and swapped
//! in for every TLS configuration that presents it (QUIC both ways, the admin API; the
//! ingress). Connections open keep the certificate they shook hands with; the next handshake
//! uses the new one. A pair that fails the checks is logged and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::transport::NodeCert;

/// How often the certificate files are looked at: two `stat`s.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What a file looked like: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Something that presents a certificate and takes a renewed one from its files.
pub(super) trait Presenter: Send + Sync + 'static {
    /// Loads and checks the pair and presents it from now on; an error leaves the old one.
    fn reload(&self, cert: &Path, key: &Path) -> Result<(), String>;

    /// Other files it reads on a reload (the ingress's client CAs), watched with the pair.
    fn also_reads(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

impl Presenter for NodeCert {
    fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        NodeCert::reload(self, cert, key).map_err(|error| error.to_string())
    }
}

impl Presenter for crate::http::EdgeCert {
    fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        crate::http::EdgeCert::reload(self, cert, key).map_err(|error| error.to_string())
    }

    fn also_reads(&self) -> Vec<PathBuf> {
        self.client_ca_file()
            .map(Path::to_owned)
            .into_iter()
            .collect()
    }
}

/// Which certificate files are watched, for the log lines.
#[derive(Clone, Copy)]
pub(super) enum Files {
    /// `[node.tls]`: the node's certificate.
    Node,
    /// `[node] http_tls`: the ingress's.
    Ingress,
}

/// Watches `cert` and `key` until `shutdown`, reloading `presenters` when they change. The
/// files are first looked at now, not when the task first runs: a change right after the
/// node started is a change.
pub(super) fn watch(
    files: Files,
    presenters: Vec<Arc<dyn Presenter>>,
    cert: PathBuf,
    key: PathBuf,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let seen = stamps(&presenters, &cert, &key);
    watch_from(files, seen, presenters, cert, key, shutdown)
}

/// What every watched file looks like now: the pair's, then those the presenters also read.
fn stamps(presenters: &[Arc<dyn Presenter>], cert: &Path, key: &Path) -> Vec<Stamp> {
    [cert.to_path_buf(), key.to_path_buf()]
        .into_iter()
        .chain(
            presenters
                .iter()
                .flat_map(|presenter| presenter.also_reads()),
        )
        .map(|path| stamp(&path))
        .collect()
}

async fn watch_from(
    files: Files,
    mut seen: Vec<Stamp>,
    presenters: Vec<Arc<dyn Presenter>>,
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
        let now = stamps(&presenters, &cert, &key);
        if now == seen {
            continue;
        }
        seen = now;
        // Reading and checking a certificate is quick, but it is file I/O.
        let pair = (presenters.clone(), cert.clone(), key.clone());
        let reloaded = tokio::task::spawn_blocking(move || {
            let (presenters, cert, key) = pair;
            presenters
                .iter()
                .try_for_each(|presenter| presenter.reload(&cert, &key))
        })
        .await;
        let (what, key_name) = match files {
            Files::Node => ("node certificate", "[node.tls]"),
            Files::Ingress => ("ingress certificate", "[node] http_tls"),
        };
        match reloaded {
            Ok(Ok(())) => tracing::info!(
                cert = %cert.display(),
                "{what} reloaded; new connections use it"
            ),
            Ok(Err(error)) => tracing::error!(
                %error,
                "the changed {key_name} files were not taken; the node keeps its old \
                 {what} (write the certificate and its key, then check them with \
                 `openssl x509 -noout -dates -in <cert>`)"
            ),
            Err(error) => tracing::error!(%error, "reloading the {what} was cut off"),
        }
    }
}
