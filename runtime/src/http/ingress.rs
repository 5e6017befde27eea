//! The ingress: HTTP requests to services, and the one mapping from what went wrong to a
//! status code.
//!
//! A request is routed (`404`, or `405` with `Allow`) and given a request id (the client's
//! `x-request-id` if short and plain) and a trace context, its body is read within the size
//! limit (`413`), and the service's slot runs it: `503` at `max_instances`, `504` past the
//! timeout, `500` on a trap or the memory limit. Every answer names the request id, and one
//! `request` span per request carries the route, status and duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::{Instrument, field};

use super::admin::ConnectionInfo;
use super::grpc::{self, Code};
use super::server::Handler;
use super::tls::CLIENT_CERT_HEADER;
use crate::manifest::GRPC_METHOD;
use crate::router::Lookup;
use crate::telemetry::{
    KeyValue, Metrics, RequestLog, SpanKind, TRACE_HEADER, TraceContext, Traces,
};
use crate::wasm::Directory;
use crate::wasm::{GuestRequest, GuestResponse, SlotError};

/// What the ingress answers with: a whole body, or a gRPC answer's stream of messages.
pub(super) type IngressBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Request bodies above this get `413`.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// A client-sent `x-request-id` is used only when it is this short and plain.
const MAX_CLIENT_REQUEST_ID: usize = 64;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes requests to services.
pub(crate) struct Ingress {
    /// The node's services; a request is routed with the snapshot of the moment it came.
    services: Arc<Directory>,
    ids: RequestIds,
    /// Bytes of request bodies this node may hold at once (`[node] body_budget_mb`), one
    /// permit a byte, taken as the bytes arrive and given back when the request ends.
    body_budget: Arc<tokio::sync::Semaphore>,
    /// Its size, for the refusal's text.
    body_budget_bytes: usize,
    metrics: Metrics,
    request_log: RequestLog,
    traces: Traces,
}

impl Ingress {
    pub(crate) fn new(
        services: Arc<Directory>,
        body_budget_bytes: usize,
        metrics: Metrics,
        request_log: RequestLog,
        traces: Traces,
    ) -> Self {
        Self {
            services,
            metrics,
            request_log,
            traces,
            ids: RequestIds::new(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                body_budget_bytes.min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            body_budget_bytes,
        }
    }
}

/// Why a request's body was not read.
enum BodyRefused {
    TooLarge,
    Slow(Duration),
    OverBudget,
    Broken(hyper::Error),
}

impl BodyRefused {
    /// The gRPC status of the refusal.
    fn code(&self) -> Code {
        match self {
            Self::TooLarge => Code::RESOURCE_EXHAUSTED,
            Self::Slow(_) => Code::DEADLINE_EXCEEDED,
            Self::OverBudget => Code::UNAVAILABLE,
            Self::Broken(_) => Code::CANCELLED,
        }
    }

    fn text(&self, budget_bytes: usize) -> String {
        match self {
            Self::TooLarge => format!("request body is larger than {MAX_BODY_BYTES} bytes\n"),
            Self::Slow(timeout) => format!(
                "the request body did not arrive within the service's timeout ({} ms)\n",
                timeout.as_millis()
            ),
            Self::OverBudget => format!(
                "this node holds {} MiB of request bodies already (its body_budget_mb); retry\n",
                budget_bytes / (1024 * 1024)
            ),
            Self::Broken(error) => format!("could not read the request body: {error}\n"),
        }
    }

    fn response(&self, budget_bytes: usize) -> Response<Full<Bytes>> {
        let status = match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Slow(_) => StatusCode::REQUEST_TIMEOUT,
            Self::OverBudget => StatusCode::SERVICE_UNAVAILABLE,
            Self::Broken(_) => StatusCode::BAD_REQUEST,
        };
        let response = plain(status, self.text(budget_bytes));
        if matches!(self, Self::OverBudget) {
            retry_soon(response)
        } else {
            response
        }
    }
}

/// Reads `body` by `deadline`, at most [`MAX_BODY_BYTES`], taking a permit of `budget` for
/// every byte; the permits are held until the request ends.
async fn read_body(
    mut body: Incoming,
    budget: &Arc<tokio::sync::Semaphore>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>), BodyRefused> {
    let mut bytes = Vec::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyRefused::Slow(timeout)),
            Ok(None) => return Ok((bytes, held)),
            Ok(Some(Err(error))) => return Err(BodyRefused::Broken(error)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // Trailers: the guest interface has no place for them.
        };
        if bytes.len() + data.len() > MAX_BODY_BYTES {
            return Err(BodyRefused::TooLarge);
        }
        let wanted = u32::try_from(data.len()).map_err(|_| BodyRefused::TooLarge)?;
        let permit = budget
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| BodyRefused::OverBudget)?;
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        bytes.extend_from_slice(&data);
    }
}

impl Handler for Ingress {
    type Body = IngressBody;

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<IngressBody> {
        let started = Instant::now();
        let request_id = client_request_id(&request).unwrap_or_else(|| self.ids.next());
        let parent = request
            .headers()
            .get(TRACE_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(TraceContext::parse);
        // Named "{method} {route}" once routed (HTTP's convention: never the raw path).
        let exported = self.traces.start(
            || "request".into(),
            SpanKind::Server,
            parent.as_ref(),
            || {
                vec![
                    KeyValue::new("http.request.method", request.method().as_str().to_owned()),
                    KeyValue::new("url.path", request.uri().path().to_owned()),
                    KeyValue::new("switchyard.request_id", request_id.clone()),
                ]
            },
        );
        let trace = *exported.trace();
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            trace_id = %trace.trace_id(),
            method = %request.method(),
            path = request.uri().path(),
            service = field::Empty,
            route = field::Empty,
            status = field::Empty,
            duration_us = field::Empty,
        );
        let method = request.method().clone();
        let mut routed = None;
        let mut response = self
            .route(request, started, &request_id, &exported, &mut routed)
            .instrument(span.clone())
            .await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        let done = Done {
            started,
            method,
            routed,
            request_id,
            exported,
            span,
        };
        // A streamed gRPC answer is done when its trailers are sent: it is counted then,
        // under its code, with the time it took to send.
        if response.extensions().get::<grpc::Streaming>().is_some() {
            let ingress = self.clone();
            let (parts, body) = response.into_parts();
            let body = grpc::reporting_end(
                body,
                Box::new(move |code: Code| {
                    done.exported.record(|| grpc_status_attribute(code));
                    ingress.done(done, code.http_status());
                }),
            );
            return Response::from_parts(parts, body);
        }
        // A gRPC call answered whole is counted and logged under the HTTP status its code
        // means.
        let status = response
            .extensions()
            .get::<Code>()
            .map_or(response.status().as_u16(), |code| code.http_status());
        self.done(done, status);
        response
    }
}

/// What the request log, metrics and trace need once a request is answered.
struct Done {
    started: Instant,
    method: Method,
    routed: Option<crate::router::Target<Arc<crate::wasm::Slot>>>,
    request_id: String,
    exported: crate::telemetry::Span,
    span: tracing::Span,
}

impl Ingress {
    /// Counts, logs and ends the trace span of a request answered with `status`.
    fn done(&self, done: Done, status: u16) {
        let took = done.started.elapsed();
        let duration_us = took.as_micros() as u64;
        let span = &done.span;
        span.record("status", status);
        span.record("duration_us", duration_us);
        span.in_scope(|| tracing::debug!(status, duration_us, "request done"));
        done.exported.answered(status);
        let trace_id = done.exported.trace().trace_id();
        drop(done.exported);
        if let Some(target) = done.routed {
            let service = target.value.name();
            let method = done.method.as_str();
            self.metrics
                .request(service, method, &target.pattern, status, took);
            if self.request_log.sampled(service) {
                tracing::info!(
                    target: "switchyard::requests",
                    kind = "request",
                    service,
                    method,
                    route = &*target.pattern,
                    status,
                    duration_us,
                    request_id = %done.request_id,
                    trace_id = %trace_id,
                    "request"
                );
            }
        }
    }
}

impl Ingress {
    async fn route(
        &self,
        request: Request<Incoming>,
        started: Instant,
        request_id: &str,
        exported: &crate::telemetry::Span,
        routed: &mut Option<crate::router::Target<Arc<crate::wasm::Slot>>>,
    ) -> Response<IngressBody> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let grpc_call = request.method() == Method::POST && grpc::is_grpc(request.headers());
        let looked_up = if grpc_call { GRPC_METHOD } else { &method };
        let (target, params) = match self.services.guard().router.lookup(looked_up, &path) {
            Lookup::Found { target, params } => (target, params),
            Lookup::NotFound | Lookup::WrongMethod(_) if grpc_call => {
                return grpc::trailers_only(
                    Code::UNIMPLEMENTED,
                    &format!(
                        "no gRPC method {path} here (a service takes one with the route \
                         \"grpc {path}\")"
                    ),
                );
            }
            Lookup::NotFound => {
                return whole(plain(
                    StatusCode::NOT_FOUND,
                    format!("no route for {method} {path}\n"),
                ));
            }
            Lookup::WrongMethod(allowed) if allowed == [GRPC_METHOD] => {
                return whole(plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "{path} is a gRPC method: call it with a gRPC client (HTTP/2, POST, \
                         content-type application/grpc)\n"
                    ),
                ));
            }
            Lookup::WrongMethod(allowed) => {
                let mut response = plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!(
                        "{path} does not accept {method}; it accepts {}\n",
                        allowed.join(", ")
                    ),
                );
                if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                    response.headers_mut().insert(http::header::ALLOW, value);
                }
                return whole(response);
            }
        };
        // A gRPC call to a plain route (a wasi:http component serving gRPC on `* /...`) is
        // plain HTTP to the node: the component speaks gRPC itself.
        let grpc_route = &*target.method == GRPC_METHOD;
        if grpc_route && request.version() != http::Version::HTTP_2 {
            return grpc::trailers_only(
                Code::INTERNAL,
                "gRPC needs HTTP/2 (its status travels in trailers); connect with HTTP/2",
            );
        }
        // What is refused before the guest runs: as an HTTP answer, or a gRPC status.
        let refuse = |code: Code, message: String, response: Response<Full<Bytes>>| {
            if grpc_route {
                grpc::trailers_only(code, &message)
            } else {
                whole(response)
            }
        };
        *routed = Some(target.clone());
        let span = tracing::Span::current();
        span.record("service", target.value.name());
        span.record("route", &*target.pattern);
        exported.rename(|| format!("{method} {}", target.pattern));
        exported.record(|| {
            vec![
                KeyValue::new("http.route", target.pattern.to_string()),
                KeyValue::new("switchyard.service", target.value.name().to_owned()),
            ]
        });

        // Admitted before a byte of the body is read: a full service answers at once.
        let admission = match target
            .value
            .accepts(crate::manifest::INGRESS_CALLER)
            .and_then(|()| target.value.admit())
        {
            Ok(admission) => admission,
            Err(error) => {
                return refuse(
                    Code::of(&error),
                    error.to_string(),
                    error_response(&error, request_id),
                );
            }
        };
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            let refused = BodyRefused::TooLarge;
            let response = refused.response(self.body_budget_bytes);
            return refuse(
                refused.code(),
                refused.text(self.body_budget_bytes),
                response,
            );
        }
        // The body arrives within the request's own timeout (a gRPC client's `grpc-timeout`
        // may shorten it); the guest gets what is left.
        let mut timeout = target.value.timeout();
        if grpc_route {
            match grpc::timeout(&parts.headers) {
                Ok(asked) => timeout = asked.map_or(timeout, |asked| asked.min(timeout)),
                Err(malformed) => return grpc::trailers_only(Code::INVALID_ARGUMENT, &malformed),
            }
        }
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        let (body, body_permits) = match read_body(body, &self.body_budget, deadline, timeout).await
        {
            Ok(read) => read,
            Err(refused) => {
                let response = refused.response(self.body_budget_bytes);
                return refuse(
                    refused.code(),
                    refused.text(self.body_budget_bytes),
                    response,
                );
            }
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let guest_request = GuestRequest {
            method: parts.method.as_str().to_owned(),
            path,
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .filter(|(name, _)| {
                    name.as_str() != TRACE_HEADER && !crate::call::is_node_header(name.as_str())
                })
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .chain(std::iter::once((
                    TRACE_HEADER.to_owned(),
                    exported.trace().header(),
                )))
                .chain(
                    parts
                        .extensions
                        .get::<ConnectionInfo>()
                        .and_then(|connection| connection.client_cert.as_deref())
                        .map(|identity| (CLIENT_CERT_HEADER.to_owned(), identity.to_owned())),
                )
                .collect(),
            params,
            body,
            request_id: request_id.to_owned(),
            deadline_ms: crate::call::budget_ms(remaining),
        };
        if grpc_route {
            let (sender, frames) = tokio::sync::mpsc::channel(crate::host::ANSWER_STREAM_DEPTH);
            let (slot, span) = (target.value.clone(), exported.handle());
            let call: grpc::Call = Box::pin(async move {
                let _body_permits = body_permits;
                slot.handle_admitted(admission, guest_request, span, Some(sender))
                    .await
            });
            let (response, code) = grpc::answer(call, frames).await;
            if let Some(code) = code {
                exported.record(|| grpc_status_attribute(code));
            }
            return response;
        }
        let _body_permits = body_permits;
        whole(
            match target
                .value
                .handle_admitted(admission, guest_request, exported.handle(), None)
                .await
            {
                Ok(response) => into_http(response, parts.method == Method::HEAD),
                Err(error) => error_response(&error, request_id),
            },
        )
    }
}

fn whole(response: Response<Full<Bytes>>) -> Response<IngressBody> {
    response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

/// The span attribute of a gRPC call's status, whether the call was answered whole or
/// streamed (then known only at its trailers).
fn grpc_status_attribute(code: Code) -> Vec<KeyValue> {
    vec![KeyValue::new("rpc.grpc.status_code", code.number())]
}

/// The one place where a failed guest call becomes an HTTP answer.
fn error_response(error: &SlotError, request_id: &str) -> Response<Full<Bytes>> {
    let status = match error {
        SlotError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        SlotError::NotAccepted { .. } => StatusCode::FORBIDDEN,
        SlotError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        SlotError::MemoryLimit { .. } | SlotError::Trap { .. } | SlotError::NoStreams { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    match error {
        SlotError::Busy { .. } | SlotError::NotAccepted { .. } => {
            tracing::debug!(%error, "request refused")
        }
        _ => tracing::error!(%error, "request failed"),
    }
    let detail = match error {
        // The trap text can reveal guest internals; the log has it under the request id.
        SlotError::Trap { service, .. } => format!("service `{service}` failed"),
        other => other.to_string(),
    };
    let response = plain(status, format!("{detail} (request id {request_id})\n"));
    if matches!(error, SlotError::Busy { .. }) {
        retry_soon(response)
    } else {
        response
    }
}

/// Headers that describe the connection or the message's framing: hyper sets them from the
/// body it sends, and a handler's say would make the response lie about itself.
pub(super) const FRAMING_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn into_http(guest: GuestResponse, head: bool) -> Response<Full<Bytes>> {
    if guest.status < 200 {
        tracing::error!(
            status = guest.status,
            "guest answered with an informational status, which a handler cannot send"
        );
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "service answered with status {}; a handler answers with 200-599\n",
                guest.status
            ),
        );
    }
    let Ok(status) = StatusCode::from_u16(guest.status) else {
        tracing::error!(
            status = guest.status,
            "guest answered with an invalid status code"
        );
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("service answered with invalid status {}\n", guest.status),
        );
    };
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(guest.body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in guest.headers {
        if FRAMING_HEADERS
            .iter()
            .any(|framing| name.eq_ignore_ascii_case(framing))
        {
            tracing::debug!(header = %name, "guest set a framing header; dropped it");
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::warn!(header = %name, "guest sent an invalid header; dropped it"),
        }
    }
    response
}

pub(super) fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `response`, telling the client to come back in a second (a refusal for now, not for good).
pub(super) fn retry_soon(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn client_request_id(request: &Request<Incoming>) -> Option<String> {
    let value = request.headers().get(&X_REQUEST_ID)?.to_str().ok()?;
    let sane = !value.is_empty()
        && value.len() <= MAX_CLIENT_REQUEST_ID
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    sane.then(|| value.to_owned())
}

/// Ids unique per node run: the start time and a counter, both hex.
struct RequestIds {
    prefix: String,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        Self {
            prefix: format!("{start:x}"),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }
}
