//! The HTTP server loop shared by the ingress and the admin API: accept, serve HTTP/1.1 and
//! HTTP/2 connections (over TLS when given an acceptor, the protocol picked by ALPN; in clear
//! text by the client's first bytes, so an HTTP/2 client with prior knowledge is served too)
//! with a [`Handler`], and on shutdown stop accepting and let open connections finish within a
//! grace period. Each request carries its connection's [`ConnectionInfo`] in its extensions.
//!
//! An HTTP/2 connection multiplexes requests, so its bounds are per connection and per stream:
//! streams open at once, the header list, both flow-control windows, and the streams a client
//! may reset before the node took them (the "rapid reset" flood: past it the connection gets
//! `GOAWAY` with `ENHANCE_YOUR_CALM`). Every request on a stream gets the same body limits and
//! deadlines as one on its own connection.

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
    /// A connection that has no request in progress for this long is closed (HTTP/2: `GOAWAY`,
    /// then closed); so is an HTTP/1.1 one that sends not all of a request's headers for this
    /// long, and one that takes none of the response's bytes for this long.
    pub(crate) idle_timeout: Duration,
    /// Bytes of one request's headers (HTTP/1.1: the read buffer; HTTP/2: the header list).
    pub(crate) max_header_bytes: u32,
    /// HTTP/2 streams open at once on one connection.
    pub(crate) max_concurrent_streams: u32,
    /// HTTP/2 flow-control window of each stream, in bytes.
    pub(crate) stream_window: u32,
    /// HTTP/2 flow-control window of the whole connection, in bytes.
    pub(crate) connection_window: u32,
    /// HTTP/2 streams a client may open and reset before the node takes them up.
    pub(crate) max_pending_resets: u32,
    /// An HTTP/2 connection is pinged this often; a ping unanswered for as long closes it.
    pub(crate) keepalive: Duration,
}

impl ConnectionLimits {
    /// hyper's and h2's own defaults for what a public edge does not name.
    pub(crate) const fn with(max_connections: usize, idle_timeout: Duration) -> Self {
        Self {
            max_connections,
            idle_timeout,
            max_header_bytes: 16 * 1024,
            max_concurrent_streams: 100,
            stream_window: 1024 * 1024,
            connection_window: 1024 * 1024,
            max_pending_resets: 20,
            keepalive: Duration::from_secs(20),
        }
    }
}

/// Something that answers HTTP requests.
pub(crate) trait Handler: Send + Sync + 'static {
    /// The response body: whole, or a stream of frames that may end with trailers.
    type Body: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static;

    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// A response body sent whole.
pub(crate) type WholeBody = Full<Bytes>;

/// The TLS config a listener accepts connections with. A handshake starts with the config of
/// the moment; [`ServerTls::replace`] swaps it whole for the ones after (what a config holds
/// by value, such as the client CAs it names, changes only that way).
#[derive(Debug)]
pub(crate) struct ServerTls {
    current: arc_swap::ArcSwap<rustls::ServerConfig>,
}

impl ServerTls {
    pub(crate) fn new(config: rustls::ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            current: arc_swap::ArcSwap::from_pointee(config),
        })
    }

    pub(crate) fn replace(&self, config: rustls::ServerConfig) {
        self.current.store(Arc::new(config));
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// Accepts HTTP/1.1 and HTTP/2 connections on `listener` until `shutdown` flips, then lets open
/// connections finish their requests for up to `grace`. With `tls`, every connection is
/// TLS first.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tls: Option<Arc<ServerTls>>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let slots = limits
        .max_connections
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    let open = Arc::new(tokio::sync::Semaphore::new(slots));
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
            client_cert: None,
        };
        let (tls, handler, stop) = (tls.clone(), handler.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = tls.map(|tls| tls.acceptor()) else {
                return run_connection(stream, info, handler, limits, stop).await;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(super::tls::client_identity)
                        .map(Arc::from);
                    let info = ConnectionInfo {
                        client_cert,
                        ..info
                    };
                    run_connection(stream, info, handler, limits, stop).await
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    // Every open connection holds a slot: all slots back means all connections closed.
    let all = u32::try_from(slots).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, open.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

/// Serves one HTTP/1.1 or HTTP/2 connection on `io`, every request tagged with `info`, until
/// it ends, has been idle for `idle_timeout`, or the shutdown's grace period is over.
async fn run_connection<H: Handler, I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    info: ConnectionInfo,
    handler: Arc<H>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let peer = info.peer;
    let service = {
        let activity = activity.clone();
        service_fn(move |mut request: Request<Incoming>| {
            let handler = handler.clone();
            let busy = activity.begin();
            request.extensions_mut().insert(info.clone());
            async move {
                let response = handler.handle(request).await;
                // A request is in progress until its answer's body is sent: a streamed answer
                // (a gRPC server stream) keeps its connection from closing as idle. Dropping the
                // body, sent or abandoned, ends it.
                Ok::<_, Infallible>(response.map(|body| WhileSent { body, _busy: busy }))
            }
        })
    };
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        // hyper refuses a buffer under 8 KiB; headers past it get `431`.
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes)
        .initial_stream_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_pending_accept_reset_streams(limits.max_pending_resets as usize)
        .keep_alive_interval(limits.keepalive)
        .keep_alive_timeout(limits.keepalive);
    let connection = builder.serve_connection(
        TokioIo::new(write_deadline(io, limits.idle_timeout)),
        service,
    );
    let mut connection = std::pin::pin!(connection);
    let closing = async {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {}
            () = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!(%peer, "connection idle; closing it");
            }
        }
    };
    // Closing lets the requests in progress finish (HTTP/2: `GOAWAY` first).
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = closing => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        let error = causes(&*error);
        // h2 closes a connection that floods it with resets or bad frames with this reason.
        // ("detected excessive load generating behavior" is how h2 words that reason.)
        if error.contains("ENHANCE_YOUR_CALM") || error.contains("excessive load") {
            tracing::warn!(
                %peer,
                %error,
                "closed an HTTP/2 connection that reset or broke too many streams (a rapid \
                 reset flood?); max_pending_resets in [node] sets how many it may"
            );
        } else {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

/// `error` and its sources, outermost first ("http2 error: ..." says little on its own).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Requests in progress on one connection, and since when it has had none.
struct Activity {
    in_progress: std::sync::Mutex<(usize, Option<tokio::time::Instant>)>,
}

/// One request in progress; dropping it ends it.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            in_progress: std::sync::Mutex::new((0, Some(tokio::time::Instant::now()))),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.change(|(count, _)| *count += 1);
        Busy(self.clone())
    }

    fn change(&self, f: impl FnOnce(&mut (usize, Option<tokio::time::Instant>))) {
        let mut state = self
            .in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state);
        if state.0 == 0 {
            state.1 = Some(tokio::time::Instant::now());
        }
    }

    /// Resolves once no request has been in progress for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let since = {
                let state = self
                    .in_progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match *state {
                    (0, since) => since,
                    _ => None,
                }
            };
            match since {
                Some(since) if since.elapsed() >= timeout => return,
                Some(since) => tokio::time::sleep_until(since + timeout).await,
                // Busy, or not started: look again a timeout later.
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

/// A response body that holds its request in progress until it is sent or dropped.
struct WhileSent<B> {
    body: B,
    _busy: Busy,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for WhileSent<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    // Forwarded so hyper still sees a whole body's length (`Content-Length`) and its end.
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.change(|(count, _)| *count = count.saturating_sub(1));
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
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Answers with five chunks two seconds apart.
    struct Trickle;

    impl Handler for Trickle {
        type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

        async fn handle(self: Arc<Self>, _request: Request<Incoming>) -> Response<Self::Body> {
            let chunks = futures_util::stream::unfold(0, |sent| async move {
                if sent == 5 {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                let chunk = hyper::body::Frame::data(Bytes::from_static(b"x"));
                Some((Ok(chunk), sent + 1))
            });
            Response::new(http_body_util::StreamBody::new(chunks).boxed_unsync())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_busy_until_its_streamed_answer_is_sent_then_idle() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (_stop, stop) = watch::channel(false);
        let limits = ConnectionLimits::with(1, Duration::from_secs(3));
        let address = "127.0.0.1:1".parse().unwrap();
        let info = ConnectionInfo {
            local: address,
            peer: address,
            tls: false,
            client_cert: None,
        };
        let server = tokio::spawn(run_connection(ours, info, Arc::new(Trickle), limits, stop));
        let (mut client, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(theirs))
                .await
                .unwrap();
        let client_connection = tokio::spawn(connection);
        let started = tokio::time::Instant::now();
        for _ in 0..2 {
            // Ten seconds of answer, past the idle timeout of three: the connection stays open
            // for the next request.
            client.ready().await.unwrap();
            let response = client.send_request(Request::new(Full::default())).await;
            let body = response.unwrap().into_body().collect().await.unwrap();
            assert_eq!(body.to_bytes().as_ref(), b"xxxxx");
        }
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        // Then nothing for the idle timeout: the node closes it.
        server.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(23));
        client_connection.await.unwrap().unwrap();
    }

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
