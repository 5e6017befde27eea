//! gRPC at the ingress, for routes written `grpc /package.Service/Method`.
//!
//! A gRPC call is an HTTP/2 `POST` with `content-type: application/grpc`: its body holds
//! length-prefixed messages, its answer's status travels in trailers (`grpc-status`,
//! `grpc-message`), never in the HTTP status, which is `200` for every call that reached a
//! gRPC server. Here the node speaks that protocol around the guest's plain request/response
//! handler:
//!
//! - `grpc-timeout` caps the request's deadline (the guest is stopped there and the call ends
//!   `DEADLINE_EXCEEDED`);
//! - the guest's response body is sent as the answer's messages (a server-streaming method
//!   sends them earlier, one by one, through `grpc.send`); its `grpc-status` and
//!   `grpc-message` headers become the trailers, and so does any other header it set once
//!   messages were streamed (the response headers left with the first message);
//! - a guest that answers with an HTTP status instead gets the gRPC code that status means
//!   ([`Code::from_http`]), and what stopped the guest ([`SlotError`]) gets its code too;
//! - an answer without messages is "trailers-only": one HEADERS frame with the status;
//! - a call is counted and logged under the HTTP status its code means, once its code is
//!   known: a streamed answer when its trailers are sent ([`reporting_end`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::Frame;

use super::ingress::{FRAMING_HEADERS, IngressBody};
use crate::wasm::{GuestResponse, SlotError};

/// The content type of a gRPC call and its answer.
pub(super) const CONTENT_TYPE_GRPC: &str = "application/grpc";

/// Whether `headers` are a gRPC call's (`application/grpc`, or `application/grpc+proto` etc.).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value == CONTENT_TYPE_GRPC
                || value
                    .strip_prefix(CONTENT_TYPE_GRPC)
                    .is_some_and(|rest| rest.starts_with('+') || rest.starts_with(';'))
        })
}

/// A gRPC status code (`grpc-status`, 0-16 as the gRPC spec numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code(u8);

#[allow(
    dead_code,
    reason = "the spec's full table; not every code is produced here"
)]
impl Code {
    pub(crate) const OK: Self = Self(0);
    pub(crate) const CANCELLED: Self = Self(1);
    pub(crate) const UNKNOWN: Self = Self(2);
    pub(crate) const INVALID_ARGUMENT: Self = Self(3);
    pub(crate) const DEADLINE_EXCEEDED: Self = Self(4);
    pub(crate) const NOT_FOUND: Self = Self(5);
    pub(crate) const PERMISSION_DENIED: Self = Self(7);
    pub(crate) const RESOURCE_EXHAUSTED: Self = Self(8);
    pub(crate) const UNIMPLEMENTED: Self = Self(12);
    pub(crate) const INTERNAL: Self = Self(13);
    pub(crate) const UNAVAILABLE: Self = Self(14);
    pub(crate) const UNAUTHENTICATED: Self = Self(16);

    /// The HTTP status this code means (the table gRPC gateways use), for the ingress's
    /// metrics and request log: the call itself answers HTTP 200 whatever its code.
    pub(super) fn http_status(self) -> u16 {
        crate::call::grpc_code_http_status(u32::from(self.0))
    }

    /// Its number, as `grpc-status` carries it.
    pub(crate) fn number(self) -> i64 {
        i64::from(self.0)
    }

    /// The code a guest wrote in `grpc-status`; anything but 0-16 is `UNKNOWN`.
    fn parse(text: &str) -> Self {
        match text.trim().parse::<u8>() {
            Ok(number) if number <= 16 => Self(number),
            _ => Self::UNKNOWN,
        }
    }
}

impl Code {
    /// What a handler's HTTP status means as a gRPC code: the inverse of the mapping gRPC
    /// gateways use, so `Error::not_found` in a handler is `NOT_FOUND` to a gRPC client.
    pub(crate) fn from_http(status: u16) -> Self {
        match status {
            200..=299 => Self::OK,
            400 => Self::INVALID_ARGUMENT,
            401 => Self::UNAUTHENTICATED,
            403 => Self::PERMISSION_DENIED,
            404 => Self::NOT_FOUND,
            408 | 504 => Self::DEADLINE_EXCEEDED,
            413 | 429 => Self::RESOURCE_EXHAUSTED,
            499 => Self::CANCELLED,
            501 => Self::UNIMPLEMENTED,
            502 | 503 => Self::UNAVAILABLE,
            500..=599 => Self::INTERNAL,
            _ => Self::UNKNOWN,
        }
    }

    /// What stopped the guest, as the call's status.
    pub(super) fn of(error: &SlotError) -> Self {
        match error {
            SlotError::Busy { .. } => Self::UNAVAILABLE,
            SlotError::Timeout { .. } => Self::DEADLINE_EXCEEDED,
            SlotError::MemoryLimit { .. } => Self::RESOURCE_EXHAUSTED,
            SlotError::NotAccepted { .. } => Self::PERMISSION_DENIED,
            SlotError::Trap { .. } | SlotError::NoStreams { .. } => Self::INTERNAL,
        }
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (`H`ours, `M`inutes, `S`econds, `m`illi-,
/// `u`micro-, `n`anoseconds). `None`: absent; `Err`: malformed, with the value.
pub(super) fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, String> {
    let Some(value) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let bad = || format!("grpc-timeout {value:?} is not 1-8 digits and a unit (H, M, S, m, u, n)");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(bad()),
    }))
}

/// An answer with no messages: HTTP `200` whose headers carry the status.
pub(super) fn trailers_only(code: Code, message: &str) -> Response<IngressBody> {
    let mut response = Response::new(http_body_util::Empty::new().boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_GRPC));
    status_into(headers, code, message);
    response.extensions_mut().insert(code);
    response
}

/// `grpc-status` and, when there is one, the percent-encoded `grpc-message`.
fn status_into(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert("grpc-status", HeaderValue::from(u16::from(code.0)));
    if message.is_empty() {
        return;
    }
    // The spec's encoding: bytes outside printable ASCII, and `%`, as %XX.
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    let encoded = percent_encoding::utf8_percent_encode(message.trim_end(), ESCAPED).to_string();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
}

/// How a call ended, from the guest's answer or what stopped it: the status, and the headers
/// the guest set besides (the call's metadata).
fn ending(outcome: &Result<GuestResponse, SlotError>) -> (Code, String, HeaderMap) {
    let response = match outcome {
        Ok(response) => response,
        // A trap's text can reveal guest internals; the log has it under the request id.
        Err(error @ SlotError::Trap { service, .. }) => {
            tracing::error!(%error, "gRPC call failed");
            return (
                Code::INTERNAL,
                format!("service `{service}` failed"),
                HeaderMap::new(),
            );
        }
        Err(error) => {
            if matches!(
                error,
                SlotError::Busy { .. } | SlotError::NotAccepted { .. }
            ) {
                tracing::debug!(%error, "gRPC call refused");
            } else {
                tracing::error!(%error, "gRPC call failed");
            }
            return (Code::of(error), error.to_string(), HeaderMap::new());
        }
    };
    let mut metadata = HeaderMap::new();
    let mut status: Option<Code> = None;
    let mut message = None;
    for (name, value) in &response.headers {
        match name.to_ascii_lowercase().as_str() {
            "grpc-status" => status = Some(Code::parse(value)),
            "grpc-message" => message = Some(value.clone()),
            "content-type" => {}
            lower if FRAMING_HEADERS.contains(&lower) => {}
            lower => {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(lower.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    metadata.append(name, value);
                }
            }
        }
    }
    let code = status.unwrap_or_else(|| Code::from_http(response.status));
    let message = match (message, code) {
        (Some(message), _) => message,
        (None, Code::OK) => String::new(),
        // A handler that failed with an HTTP status: its body is the reason.
        (None, _) => String::from_utf8_lossy(&response.body).trim().to_owned(),
    };
    (code, message, metadata)
}

/// The running guest call, as the ingress holds it while it answers.
pub(super) type Call = Pin<Box<dyn Future<Output = Result<GuestResponse, SlotError>> + Send>>;

/// Runs `call` until it sends its first message or ends, and answers accordingly: an ended
/// call whole (its headers as the response's metadata), a streaming one with the messages as
/// they come and the status after the last.
pub(super) async fn answer(
    mut call: Call,
    mut frames: tokio::sync::mpsc::Receiver<Bytes>,
) -> (Response<IngressBody>, Option<Code>) {
    let first = tokio::select! {
        biased;
        outcome = &mut call => Err(outcome),
        Some(frame) = frames.recv() => Ok(frame),
    };
    match first {
        Err(outcome) => {
            let mut streamed = Vec::new();
            while let Ok(frame) = frames.try_recv() {
                streamed.push(frame);
            }
            let (code, message, metadata) = ending(&outcome);
            let body = match &outcome {
                Ok(response) if code == Code::OK => Bytes::from(response.body.clone()),
                _ => Bytes::new(),
            };
            if streamed.is_empty() && body.is_empty() {
                let mut response = trailers_only(code, &message);
                response.headers_mut().extend(metadata);
                return (response, Some(code));
            }
            let mut trailers = HeaderMap::new();
            status_into(&mut trailers, code, &message);
            streamed.push(body);
            let mut response = Response::new(
                Streamed {
                    first: streamed.into(),
                    call: None,
                    frames,
                    ended: Some(trailers),
                }
                .boxed_unsync(),
            );
            grpc_headers(response.headers_mut());
            response.headers_mut().extend(metadata);
            response.extensions_mut().insert(code);
            (response, Some(code))
        }
        Ok(frame) => {
            let mut response = Response::new(
                Streamed {
                    first: vec![frame].into(),
                    call: Some(call),
                    frames,
                    ended: None,
                }
                .boxed_unsync(),
            );
            grpc_headers(response.headers_mut());
            response.extensions_mut().insert(Streaming);
            (response, None)
        }
    }
}

/// Marks an answer whose code comes with its trailers, after messages still being sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streaming;

/// Called once with a streamed answer's code.
pub(super) type OnEnd = Box<dyn FnOnce(Code) + Send>;

/// `body`, calling `on_end` with the code in its trailers as they are sent, or with
/// `CANCELLED` if it is dropped before (the client reset the stream or went away).
pub(super) fn reporting_end(body: IngressBody, on_end: OnEnd) -> IngressBody {
    ReportingEnd {
        body,
        on_end: Some(on_end),
    }
    .boxed_unsync()
}

struct ReportingEnd {
    body: IngressBody,
    on_end: Option<OnEnd>,
}

impl ReportingEnd {
    fn end(&mut self, code: Code) {
        if let Some(on_end) = self.on_end.take() {
            on_end(code);
        }
    }
}

impl hyper::body::Body for ReportingEnd {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .map_or(Code::UNKNOWN, Code::parse);
                    this.end(code);
                }
            }
            // Trailers always end a streamed answer; an end without them is not a success.
            Poll::Ready(None) => this.end(Code::UNKNOWN),
            Poll::Ready(Some(Err(never))) => match *never {},
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ReportingEnd {
    fn drop(&mut self) {
        self.end(Code::CANCELLED);
    }
}

fn grpc_headers(headers: &mut HeaderMap) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_GRPC));
}

/// An answer's body once its headers are sent: the messages sent so far, then those the
/// call still sends, then its trailers.
struct Streamed {
    first: std::collections::VecDeque<Bytes>,
    call: Option<Call>,
    frames: tokio::sync::mpsc::Receiver<Bytes>,
    /// The trailers, once the call ended.
    ended: Option<HeaderMap>,
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.first.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(call) = &mut this.call
            && let Poll::Ready(outcome) = call.as_mut().poll(cx)
        {
            this.call = None;
            let (code, message, metadata) = ending(&outcome);
            let mut trailers = metadata;
            status_into(&mut trailers, code, &message);
            if let Ok(response) = &outcome
                && code == Code::OK
                && !response.body.is_empty()
            {
                this.first.push_back(Bytes::from(response.body.clone()));
            }
            this.ended = Some(trailers);
        }
        // Every message the call sent comes before its end.
        if let Poll::Ready(Some(frame)) = this.frames.poll_recv(cx) {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if this.call.is_some() {
            return Poll::Pending;
        }
        if let Some(data) = this.first.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(
            this.ended
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_malformed() {
        let read = |value: &str| timeout(&headers(&[("grpc-timeout", value)]));
        assert_eq!(read("1H").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(read("2M").unwrap(), Some(Duration::from_secs(120)));
        assert_eq!(read("3S").unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(read("250m").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(
            read("99999999u").unwrap(),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(read("7n").unwrap(), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "100", "123456789S", "10s", "-1S", "1.5S"] {
            assert!(read(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(timeout(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn grpc_content_types_are_told_from_others() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=1",
        ] {
            assert!(is_grpc(&headers(&[("content-type", grpc)])), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/json",
            "application/grpcx",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", other)])), "{other}");
        }
    }

    #[test]
    fn a_handler_status_or_its_own_grpc_status_decides_the_code() {
        let answer = |status, headers: Vec<(&str, &str)>, body: &str| {
            ending(&Ok(GuestResponse {
                status,
                headers: headers
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect(),
                body: body.as_bytes().to_vec(),
            }))
        };
        let (code, message, _) = answer(404, vec![], "no order 7\n");
        assert_eq!((code, message.as_str()), (Code::NOT_FOUND, "no order 7"));
        let (code, message, metadata) = answer(
            200,
            vec![
                ("grpc-status", "3"),
                ("grpc-message", "bad id"),
                ("x-shop", "1"),
            ],
            "",
        );
        assert_eq!((code, message.as_str()), (Code::INVALID_ARGUMENT, "bad id"));
        assert_eq!(metadata.get("x-shop").unwrap(), "1");
        let (code, _, _) = answer(200, vec![], "\0\0\0\0\0");
        assert_eq!(code, Code::OK);
        let mut trailers = HeaderMap::new();
        status_into(&mut trailers, Code::INTERNAL, "100% wrong: é");
        assert_eq!(trailers.get("grpc-status").unwrap(), "13");
        assert_eq!(
            trailers.get("grpc-message").unwrap(),
            "100%25 wrong: %C3%A9"
        );
    }
}
