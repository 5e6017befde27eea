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
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
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
            let Some(acceptor) = tls else {
                return run_connection(stream, info, handler, watcher).await;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => run_connection(stream, info, handler, watcher).await,
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
    watcher: Watcher,
) {
    let service = service_fn(move |mut request: Request<Incoming>| {
        let handler = handler.clone();
        request.extensions_mut().insert(info);
        async move { Ok::<_, Infallible>(handler.handle(request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
    }
}
