//! The HTTP server loop shared by the ingress and the admin API: accept, serve HTTP/1.1
//! connections (over TLS when given an acceptor) with a [`Handler`], and on shutdown stop
//! accepting and let open connections finish within a grace period. Each request carries its
//! connection's [`ConnectionInfo`] in its extensions.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::admin::ConnectionInfo;

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one listener holds for its clients at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Connections open at once; a connection past it is closed as soon as it is accepted.
    pub(crate) max_connections: usize,
    /// A connection that sends no request, or not all of a request's headers, for this long
    /// is closed; so is one that takes none of the response's bytes for this long.
    pub(crate) idle_timeout: Duration,
}

/// Something that answers HTTP requests.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Accepts HTTP/1.1 connections on `listener` until `shutdown` flips, then lets open
/// connections finish their requests for up to `grace`. With `tls`, every connection is
/// TLS first.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(
        limits
            .max_connections
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut turned_away = TurnedAway::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            turned_away.one(limits.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let info = ConnectionInfo {
            local,
            peer,
            tls: tls.is_some(),
        };
        let (tls, handler, watcher) = (tls.clone(), handler.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = tls else {
                return run_connection(stream, info, handler, limits, watcher).await;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => run_connection(stream, info, handler, limits, watcher).await,
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

/// Serves one HTTP/1.1 connection on `io`, every request tagged with `info`, until it ends or
/// the shutdown's grace period is over.
async fn run_connection<H: Handler, I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    info: ConnectionInfo,
    handler: Arc<H>,
    limits: ConnectionLimits,
    watcher: Watcher,
) {
    let service = service_fn(move |mut request: Request<Incoming>| {
        let handler = handler.clone();
        request.extensions_mut().insert(info);
        async move { Ok::<_, Infallible>(handler.handle(request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .serve_connection(
            TokioIo::new(write_deadline(io, limits.idle_timeout)),
            service,
        );
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
    }
}

/// `io` whose writes fail once the peer has taken none of them for `timeout`, so a client
/// that stops reading does not hold its connection and its response forever.
fn write_deadline<I: AsyncRead + AsyncWrite>(
    io: I,
    timeout: Duration,
) -> std::pin::Pin<Box<tokio_io_timeout::TimeoutWriter<I>>> {
    let mut io = tokio_io_timeout::TimeoutWriter::new(io);
    io.set_timeout(Some(timeout));
    Box::pin(io)
}

/// Counts connections closed at `max_connections` and says so in the log at most once a
/// second (a flood of them must not flood the log too).
#[derive(Default)]
struct TurnedAway {
    since_said: u64,
    said_at: Option<std::time::Instant>,
}

impl TurnedAway {
    fn one(&mut self, max_connections: usize) {
        self.since_said += 1;
        let now = std::time::Instant::now();
        if self
            .said_at
            .is_none_or(|said| now.duration_since(said) >= Duration::from_secs(1))
        {
            tracing::warn!(
                max_connections,
                closed = self.since_said,
                "connections closed at once: this listener has max_connections open"
            );
            self.since_said = 0;
            self.said_at = Some(now);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_fails_the_write_after_the_deadline() {
        // The peer reads nothing; its side of the pipe holds 64 bytes.
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = write_deadline(ours, Duration::from_secs(30));
        io.write_all(&[0; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let error = io.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buffer = [0; 16];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += tokio::io::AsyncReadExt::read(&mut theirs, &mut buffer)
                    .await
                    .unwrap();
            }
        });
        let mut io = write_deadline(ours, Duration::from_secs(30));
        io.write_all(&[0; 1024]).await.unwrap();
        reader.await.unwrap();
    }
}
