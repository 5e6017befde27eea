//! `wasi:http`: serving standard `wasi:http/proxy` components, and where any guest's
//! outgoing HTTP requests go.
//!
//! A component built with wstd, Spin's SDK, componentize-py or jco exports
//! `wasi:http/incoming-handler` instead of our `handler`. The node serves it behind the same
//! routes, limits, deadline, swap and policies as an SDK guest: [`serve`] turns the node's
//! [`GuestRequest`] into a `wasi:http` incoming request, calls `handle`, and reads the response
//! the guest sets (its body too, while the guest writes it, up to [`MAX_RESPONSE_BYTES`])
//! back into a [`GuestResponse`]. On a `grpc` route a `application/grpc` body is not
//! collected: its bytes go to the ingress as the guest writes them (a server stream stays a
//! stream) and its trailers become the answer's status. Everything around the call stays the
//! node's.
//!
//! Outgoing requests (`wasi:http/outgoing-handler`, so JS `fetch`, Python's and Rust's HTTP
//! clients) to `http://<service>/...` become mesh calls from the guest's service: its
//! `may_call`, the policies bound to the call, what is left of its deadline, its trace and
//! its causation chain, as `rpc.call` would. A call that fails answers as a proxy would
//! (`504` timeout, `503` unavailable, `403` rejected, `400` bad request, `502` the callee
//! failed; `x-switchyard-error` names which); `http://inventory@1/`, or a request header
//! `x-switchyard-version: ^1`, adds a version range. A
//! request to any other host goes out only if the service's `allowed_outbound_hosts` lists it
//! (see [`super::outbound`]), through the same policies; otherwise it is refused
//! (`HttpRequestDenied`, and a log line naming the URL and the manifest key).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

pub(crate) use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use super::{GuestContext, GuestRequest, GuestResponse, HostState};
use crate::call::{self, Call, CallError, Deadline, Target};
use crate::telemetry::SpanHandle;

/// The largest response body the node takes from a `wasi:http` guest, as for SDK guests'
/// bodies (the ingress's request limit).
pub(crate) const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// The header of an outgoing request that names the versions of the mesh service that may
/// answer (a semver range, as in `rpc.call("inventory@^1", ..)`); the node removes it.
const VERSION_HEADER: &str = "x-switchyard-version";
/// The largest request body a guest's outgoing request may carry into a mesh call.
const MAX_OUTGOING_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Serves `request` on `proxy`: the guest's `handle` and the reading of its response run
/// together, so a guest that streams its body (writes after setting the response) is read as
/// it writes, and one that never sets a response fails when `handle` returns.
pub(crate) async fn serve(
    proxy: &Proxy,
    store: &mut Store<HostState>,
    request: &GuestRequest,
) -> wasmtime::Result<GuestResponse> {
    let incoming = incoming_request(request)?;
    // On a `grpc` route the ingress takes the answer's messages as they are written.
    let answer_stream = store.data().answer_stream.clone();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (incoming, out) = {
        let mut view = store.data_mut().http();
        (
            view.new_incoming_request(Scheme::Http, incoming)?,
            view.new_response_outparam(sender)?,
        )
    };
    let handled = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, incoming, out);
    let read = async {
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                return Err(wasmtime::format_err!(
                    "the guest answered with the error {code:?} instead of a response"
                ));
            }
            // The guest returned (or trapped) without `response-outparam.set`.
            Err(_) => return Ok(None),
        };
        let (parts, body) = response.into_parts();
        // A gRPC answer's status is in its trailers; the ingress's gRPC layer reads it from
        // the guest's headers (and sends it as trailers again), as it does for SDK guests.
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let (body, trailers) = match answer_stream.filter(|_| grpc) {
            Some(stream) => (Bytes::new(), stream_answer(body, &stream).await?),
            None => {
                let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES);
                let body = limited.collect().await.map_err(|error| {
                    wasmtime::format_err!("reading the guest's response body failed: {error}")
                })?;
                let trailers = body
                    .trailers()
                    .filter(|_| grpc)
                    .cloned()
                    .unwrap_or_default();
                (body.to_bytes(), trailers)
            }
        };
        Ok(Some(GuestResponse {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .chain(trailers.iter())
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
            body: body.to_vec(),
        }))
    };
    let (handled, read) = tokio::join!(handled, read);
    handled?;
    read?.ok_or_else(|| {
        wasmtime::format_err!(
            "the guest's `wasi:http/incoming-handler.handle` returned without setting a \
             response (`response-outparam.set`)"
        )
    })
}

/// Hands the messages of a gRPC answer to the ingress as the guest writes them (the client's
/// flow control holds the guest back through the bounded stream) and returns its trailers.
async fn stream_answer<B>(mut body: B, stream: &super::AnswerStream) -> wasmtime::Result<HeaderMap>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            wasmtime::format_err!("reading the guest's gRPC answer failed: {error}")
        })?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => stream
                .send(data)
                .await
                .map_err(|_| wasmtime::format_err!("the client of this gRPC call went away"))?,
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.extend(more);
                }
            }
        }
    }
    Ok(trailers)
}

/// The node's request as a `wasi:http` one: same method, path, query, headers and body; the
/// authority is the service's name (what `http://<service>/` calls it by).
fn incoming_request(
    request: &GuestRequest,
) -> wasmtime::Result<hyper::Request<http_body_util::combinators::BoxBody<Bytes, HttpError>>> {
    let target = match &request.query {
        Some(query) => format!("{}?{query}", request.path),
        None => request.path.clone(),
    };
    let mut builder = hyper::Request::builder()
        .method(request.method.as_str())
        .uri(target);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !request
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        builder = builder.header("host", "localhost");
    }
    // A copy: the slot holds the request by reference while the guest runs.
    let body = Full::new(Bytes::from(request.body.clone()))
        .map_err(|never| match never {})
        .boxed();
    builder
        .body(body)
        .map_err(|error| wasmtime::format_err!("the request does not fit wasi:http: {error}"))
}

/// The `wasi:http` hooks of one instance: where its outgoing requests go.
pub(crate) struct OutgoingHttp {
    guest: Arc<GuestContext>,
    /// Of the current request: its id, deadline, span and causation (see [`OutgoingHttp::begin`]).
    request_id: String,
    deadline: Deadline,
    span: SpanHandle,
    causation: crate::wire::Causation,
    sent: Arc<AtomicU32>,
}

impl OutgoingHttp {
    pub(crate) fn new(guest: Arc<GuestContext>) -> Self {
        Self {
            guest,
            request_id: String::new(),
            deadline: Deadline::after(std::time::Duration::ZERO),
            span: SpanHandle::default(),
            causation: crate::wire::Causation::default(),
            sent: Arc::default(),
        }
    }

    /// The instance starts work `request_id`, due by `deadline`, traced by `span`.
    pub(crate) fn begin(&mut self, request_id: &str, deadline: Deadline, span: &SpanHandle) {
        request_id.clone_into(&mut self.request_id);
        self.deadline = deadline;
        self.span = span.clone();
        self.causation = crate::wire::Causation::default();
        self.sent = Arc::default();
    }

    /// The current work handles a message that `causation` led to.
    pub(crate) fn caused_by(&mut self, causation: &crate::wire::Causation) {
        self.causation = causation.clone();
    }

    /// The mesh service `target` names, narrowed by an `x-switchyard-version` header, if
    /// `may_call` lets the guest call it.
    fn mesh_target(&self, target: Target, headers: &http::HeaderMap) -> Result<Target, CallError> {
        let mut target = target;
        if let Some(range) = headers.get(VERSION_HEADER) {
            // For clients whose URL parser cannot carry a range (a WHATWG parser, as in JS
            // `fetch`, reads `http://inventory@1/` as the address 0.0.0.1).
            let range = range
                .to_str()
                .map_err(|_| CallError::BadRequest(format!("{VERSION_HEADER} is not text")))?;
            if target.range.is_some() {
                return Err(CallError::BadRequest(format!(
                    "the URL and {VERSION_HEADER} both give a version range for `{}`; give one",
                    target.service
                )));
            }
            target = Target::parse(&format!("{}@{range}", target.service))?;
        }
        self.guest.may_call(&target.service)?;
        Ok(target)
    }

    /// The call an outgoing request to `target` is. The body is left empty: the caller reads
    /// it into the call.
    fn prepare_call(&self, target: Target, request: &http::request::Parts) -> Call {
        let path = request
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str());
        let headers = request
            .headers
            .iter()
            .filter(|(name, _)| !is_hop_by_hop(name.as_str()) && *name != http::header::HOST)
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let headers = super::call_headers(headers, &self.span);
        let reserve = self
            .guest
            .calls
            .reserve(&self.guest.service, &target.service);
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        Call {
            target,
            method: format!("{} {path}", request.method),
            body: Vec::new(),
            headers,
            deadline: call::call_deadline(self.deadline, None, reserve),
            caller: self.guest.service.clone(),
            request_id: format!("{}.http{n}", self.request_id),
            spread: None,
            causation: self.causation.clone(),
        }
    }
}

/// Whether `name` is for one connection only (RFC 9110 §7.6.1), not for the callee.
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// Where an outgoing request goes.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// A mesh service: `http://inventory/...`, or with a semver range as the URL's user part
    /// and the range as its host, `http://inventory@1/...`, `http://inventory@~1.2/...`
    /// (`^` cannot be written in a URL's host; a bare version means `^`).
    Mesh(String),
    /// A host outside the mesh, allowed or not by the service's `allowed_outbound_hosts`.
    Outside {
        https: bool,
        host: String,
        port: u16,
    },
}

/// `service` when an rpc call names a URL of a host outside the mesh (`https://host[:port]`,
/// `http://host:port`): its scheme, host and port. Mesh names (and `http://<service>`) are
/// `None`.
pub(super) fn outside_url(service: &str) -> Option<(bool, String, u16)> {
    if !service.starts_with("http://") && !service.starts_with("https://") {
        return None;
    }
    let uri = service.parse::<http::Uri>().ok()?;
    match destination(&uri)? {
        Destination::Outside { https, host, port } => Some((https, host, port)),
        Destination::Mesh(_) => None,
    }
}

fn destination(uri: &http::Uri) -> Option<Destination> {
    let authority = uri.authority()?;
    let https = match uri.scheme_str() {
        None | Some("http") => false,
        Some("https") => true,
        Some(_) => return None,
    };
    let bare = |host: &str| {
        !host.is_empty()
            && !host.contains(['.', ':', '[', '@'])
            && host != "localhost"
            && host.parse::<std::net::IpAddr>().is_err()
    };
    if !https {
        if let Some((service, range)) = authority.as_str().split_once('@')
            && bare(service)
        {
            return Some(Destination::Mesh(format!("{service}@{range}")));
        }
        if bare(authority.host()) && authority.port().is_none() && !authority.as_str().contains('@')
        {
            return Some(Destination::Mesh(authority.host().to_owned()));
        }
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some(Destination::Outside {
        https,
        host: host.to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
    })
}

/// The answer a guest's HTTP client gets for a call that failed: what a proxy in front of
/// the callee would answer (Envoy and linkerd do the same), with the reason as the body and
/// its kind in `x-switchyard-error`, so `fetch` and friends see an HTTP status, not a broken
/// connection.
fn failed_call_response(error: &CallError) -> (http::StatusCode, &'static str) {
    use http::StatusCode;
    match error {
        CallError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        CallError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        CallError::Rejected(_) => (StatusCode::FORBIDDEN, "rejected"),
        CallError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
        CallError::Remote(_) => (StatusCode::BAD_GATEWAY, "remote"),
    }
}

fn response(
    status: u16,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<http::Response<WasiBody>, HttpError> {
    let mut response = http::Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(name.as_str(), value.as_str());
    }
    response
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|error| HttpError::InternalError(Some(error.to_string())))
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let service = self.guest.service.clone();
        let request_id = self.request_id.clone();
        let refuse = |why: &str| {
            tracing::warn!(
                service = %service,
                request_id = %request_id,
                url = %request.uri(),
                "outgoing HTTP refused: {why}"
            );
            Box::new(async { Err(HttpError::HttpRequestDenied) }) as SendFuture
        };
        // The call's target (or why the guest may not make it: answered as a failed call)
        // and, for a host outside the mesh, where it goes instead of a routed instance.
        let (target, callee, outside) = match destination(request.uri()) {
            None => {
                return refuse(
                    "only http and https URLs with a host are sent: http://<service>/<path> \
                     for the mesh, or a host the service's allowed_outbound_hosts lists",
                );
            }
            Some(Destination::Mesh(target)) => match Target::parse(&target) {
                Ok(target) => {
                    let callee = target.service.clone();
                    (self.mesh_target(target, request.headers()), callee, None)
                }
                Err(error) => return refuse(&error.to_string()),
            },
            Some(Destination::Outside { https, host, port }) => {
                match self.guest.outside.endpoint(&service, https, &host, port) {
                    Ok(endpoint) => {
                        let target = endpoint.target();
                        (Ok(target.clone()), target.service, Some(endpoint))
                    }
                    Err(error) => return refuse(&error.to_string()),
                }
            }
        };
        let calls = self.guest.calls.clone();
        let (parts, body) = request.into_parts();
        // Prepared now, while `self` is here to do it with; the body is read in the future.
        let prepared = target.map(|target| self.prepare_call(target, &parts));
        Box::new(async move {
            let result = match prepared {
                Ok(mut call) => {
                    let body = http_body_util::Limited::new(body, MAX_OUTGOING_BODY_BYTES)
                        .collect()
                        .await
                        .map_err(|_| {
                            HttpError::HttpRequestBodySize(Some(MAX_OUTGOING_BODY_BYTES as u64))
                        })?;
                    call.body = body.to_bytes().to_vec();
                    match &outside {
                        Some(endpoint) => calls.call_outside(call, endpoint).await,
                        None => calls.call(call).await,
                    }
                }
                Err(refused) => Err(refused),
            };
            let response = match result {
                Ok(reply) => response(reply.status, &reply.headers, reply.body)?,
                Err(error) => {
                    tracing::warn!(service = %service, request_id = %request_id, callee = %callee, %error, "outgoing HTTP call failed");
                    let (status, kind) = failed_call_response(&error);
                    response(
                        status.as_u16(),
                        &[
                            ("content-type".into(), "text/plain; charset=utf-8".into()),
                            ("x-switchyard-error".into(), kind.into()),
                        ],
                        format!("{error}\n").into_bytes(),
                    )?
                }
            };
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(std::future::ready(Ok(())));
            Ok((response, done))
        })
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::{Destination, destination};

    #[test]
    fn bare_names_over_plain_http_are_mesh_calls_and_the_rest_goes_outside() {
        let of = |url: &str| destination(&url.parse().unwrap());
        let mesh = |name: &str| Some(Destination::Mesh(name.to_owned()));
        let outside = |https: bool, host: &str, port: u16| {
            Some(Destination::Outside {
                https,
                host: host.to_owned(),
                port,
            })
        };
        assert_eq!(of("http://inventory/items/42"), mesh("inventory"));
        assert_eq!(of("http://inventory@1/items/42"), mesh("inventory@1"));
        assert_eq!(of("http://inventory@~1.2/items"), mesh("inventory@~1.2"));
        assert_eq!(of("/relative"), None);
        assert_eq!(of("ftp://files/x"), None);
        assert_eq!(
            of("https://inventory/items"),
            outside(true, "inventory", 443)
        );
        assert_eq!(of("http://Example.com/"), outside(false, "example.com", 80));
        assert_eq!(of("http://localhost/"), outside(false, "localhost", 80));
        assert_eq!(of("http://127.0.0.1/"), outside(false, "127.0.0.1", 80));
        assert_eq!(of("http://[::1]:8080/"), outside(false, "::1", 8080));
        assert_eq!(
            of("http://inventory:8080/"),
            outside(false, "inventory", 8080)
        );
        assert_eq!(
            of("https://api.example.com:8443/v1"),
            outside(true, "api.example.com", 8443)
        );
    }
}
